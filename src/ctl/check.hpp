// SPDX-License-Identifier: MIT
// `iothubctl check`: what `aziotctl check` does for IoT Edge, for iothubd. Each check gives one
// result: ok, warning or error, with a one-line fix for anything that is not ok.
//
// The judges below are pure (facts in, verdict out) and unit-tested; runChecks() gathers the
// facts: the configuration and credentials as the daemon reads them, DNS, TCP, TLS through the
// daemon's own tunnel code, the hub's clock over HTTPS, the daemon on the bus, the outbox's file
// system, the bus policy and the groups.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace iothubd::ctl {

enum class Level { Ok, Warning, Error };
[[nodiscard]] const char* levelName(Level level);

struct CheckResult {
  std::string id;  ///< stable name: "configuration", "dns", "tls", ...
  Level level = Level::Ok;
  std::string message;
  std::string fix;  ///< one line; empty when ok
};

[[nodiscard]] inline CheckResult okResult(std::string id, std::string message) {
  return {std::move(id), Level::Ok, std::move(message), ""};
}
[[nodiscard]] inline CheckResult warningResult(std::string id, std::string message,
                                               std::string fix) {
  return {std::move(id), Level::Warning, std::move(message), std::move(fix)};
}
[[nodiscard]] inline CheckResult errorResult(std::string id, std::string message, std::string fix) {
  return {std::move(id), Level::Error, std::move(message), std::move(fix)};
}

/// The human report: one "ok|warning|error  ID  message" line per check, the fix indented below,
/// and a summary line.
[[nodiscard]] std::string formatCheckReport(const std::vector<CheckResult>& results);
/// {"checks":[{"id","result","message","fix"}...],"ok":N,"warnings":N,"errors":N}
[[nodiscard]] std::string formatCheckReportJson(const std::vector<CheckResult>& results);

// --- judges ---------------------------------------------------------------------------------

/// IoT Hub refuses a SAS token whose times are more than 5 minutes off its own clock.
inline constexpr std::chrono::seconds kMaxClockSkew{300};
/// Beyond this the clock is worth a warning already.
inline constexpr std::chrono::seconds kClockSkewWarning{30};

/// `hubUnix` from the hub's Date header, `localUnix` when it arrived; `where` names the URL.
[[nodiscard]] CheckResult judgeClock(std::int64_t hubUnix, std::int64_t localUnix,
                                     std::string_view where);

/// An RFC 7231 IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") as Unix seconds.
[[nodiscard]] std::optional<std::int64_t> parseHttpDate(std::string_view text);

/// An operator-supplied SAS token (authentication sas-token, or a connection string with
/// SharedAccessSignature=): iothubd cannot renew it.
[[nodiscard]] CheckResult judgeSasTokenExpiry(std::uint64_t expiry, std::uint64_t nowUnix);
/// The X.509 device certificate's validity period.
[[nodiscard]] CheckResult judgeCertificate(std::string_view file, std::int64_t notBefore,
                                           std::int64_t notAfter, std::int64_t nowUnix);

/// One address tried for TCP, and what happened ("" = connected).
struct AddressAttempt {
  std::string address;  ///< "127.0.0.1", "::1"
  std::string error;
};
/// `target` "localhost:8883" or "HTTP proxy proxy.corp:3128"; `viaProxy` changes the fix.
[[nodiscard]] CheckResult judgeTcp(const std::vector<AddressAttempt>& attempts,
                                   std::string_view target, bool viaProxy, bool websockets);

/// The outbox's file system: room for messages while the hub is unreachable.
struct FileSystemSpace {
  std::string directory;
  bool exists = true;
  bool readOnly = false;
  std::uint64_t freeBytes = 0;
  std::uint64_t freeInodes = 0;
};
[[nodiscard]] CheckResult judgeOutboxSpace(const FileSystemSpace& space,
                                           std::uint64_t outboxMaxBytes);

// --- the checks -----------------------------------------------------------------------------

struct CheckOptions {
  std::string configPath;
  /// Where the secrets are read from; empty: $CREDENTIALS_DIRECTORY, else the running service's
  /// /run/credentials/iothubd.service, else the first of /etc/credstore, /run/credstore,
  /// /usr/lib/credstore that holds the credential.
  std::string credentialsDirectory;
  std::chrono::milliseconds timeout{5000};  ///< per network probe
};

/// Runs every check in order; never throws. Needs root to read what the daemon reads.
[[nodiscard]] std::vector<CheckResult> runChecks(const CheckOptions& options);

}  // namespace iothubd::ctl
