// SPDX-License-Identifier: MIT
// iothubctl's output: human text and JSON. Pure functions of their arguments (the clock is a
// parameter), so that unit tests pin every format a script or an operator reads.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "iothubd/core/result.hpp"

namespace iothubd::ctl {

/// "0 B", "512 B", "1.5 KiB", "10.0 MiB", "2.3 GiB".
[[nodiscard]] std::string formatBytes(std::uint64_t bytes);
/// "0 s", "45 s", "3 min 12 s", "2 h 5 min", "3 days 4 h".
[[nodiscard]] std::string formatDuration(std::chrono::seconds duration);
/// "2026-11-27 14:21:16 UTC".
[[nodiscard]] std::string formatUtc(std::uint64_t unixSeconds);

/// One redrawn terminal line for an upload: "report.csv [#####.....]  45%  4.5 MiB of 10.0 MiB".
/// `total` 0 (a pipe whose end is not known yet): no bar, only the bytes so far.
[[nodiscard]] std::string progressBar(std::string_view name, std::uint64_t done,
                                      std::uint64_t total, std::size_t barWidth = 30);
/// The same as a plain log line for pipes and files: "upload report.csv: 4718592 of 10485760
/// bytes (45%)".
[[nodiscard]] std::string progressLine(std::string_view name, std::uint64_t done,
                                       std::uint64_t total);

// --- JSON ----------------------------------------------------------------------------------

/// `text` as a JSON string literal, quotes included. Bytes that are not valid UTF-8 become
/// U+FFFD.
[[nodiscard]] std::string jsonString(std::string_view text);
/// {"k":"v",...} of string values, keys in order.
[[nodiscard]] std::string jsonStringMap(const std::map<std::string, std::string>& map);
/// True for exactly one well-formed JSON value (RFC 8259), surrounding white space allowed.
[[nodiscard]] bool isJson(std::string_view text);
/// `json` indented by two spaces per level; numbers and strings exactly as given.
/// Errc::InvalidArgument if it is not JSON.
[[nodiscard]] core::Result<std::string> prettyJson(std::string_view json);
/// `json` without insignificant white space, e.g. to keep a value on one line.
[[nodiscard]] core::Result<std::string> compactJson(std::string_view json);

// --- status -------------------------------------------------------------------------------

/// A property value as read from org.iothubd.Device1.
using PropertyValue =
    std::variant<bool, std::uint64_t, std::string, std::map<std::string, std::string>>;

/// What `iothubctl status` shows: the properties of org.iothubd.Device1, plus what the bus
/// tells about the daemon's process.
struct DaemonStatus {
  std::map<std::string, PropertyValue> properties;
  std::optional<std::uint32_t> pid;
  std::optional<std::chrono::seconds> uptime;
};

[[nodiscard]] std::string formatStatus(const DaemonStatus& status, std::uint64_t nowUnix);
/// One JSON object: every property under its D-Bus name, plus "Pid" and "UptimeSeconds".
[[nodiscard]] std::string formatStatusJson(const DaemonStatus& status);

// --- method list ----------------------------------------------------------------------------

struct MethodClaim {
  std::string method;
  std::string owner;  ///< unique bus name
  std::optional<std::uint32_t> pid;
  std::string command;  ///< the owner's command line, if readable
};

[[nodiscard]] std::string formatMethodClaims(const std::vector<MethodClaim>& claims);
[[nodiscard]] std::string formatMethodClaimsJson(const std::vector<MethodClaim>& claims);

// --- c2d watch ----------------------------------------------------------------------------------

/// {"body":"...","properties":{...},"systemProperties":{...}}; a body that is not valid UTF-8
/// (or holds NUL) is given as "bodyBase64" instead of "body".
[[nodiscard]] std::string formatCloudMessage(std::string_view body,
                                             const std::map<std::string, std::string>& properties,
                                             const std::map<std::string, std::string>& system);

}  // namespace iothubd::ctl
