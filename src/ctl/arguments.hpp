// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "iothubd/core/result.hpp"

namespace iothubd::ctl {

enum class Command {
  Help,
  Version,
  Status,
  Send,
  TwinGet,
  TwinPatch,
  TwinWatch,
  MethodServe,
  MethodList,
  C2dWatch,
  Upload,
  Check,
};

inline constexpr const char* kDefaultConfig = "/etc/iothubd/iothubd.conf";

/// What `send` sends. `body` is "-" for messages read from standard input.
struct SendArguments {
  std::string body;
  std::map<std::string, std::string> properties;        ///< --property K=V
  std::map<std::string, std::string> systemProperties;  ///< --content-type, --message-id, ...
  bool queue = false;                                   ///< --queue: QueueMessage(s)
  bool binary = false;                                  ///< --binary: SendBinaryMessage
  [[nodiscard]] bool fromStdin() const { return body == "-"; }
};

/// One command line, parsed and checked (which options go with which command).
struct Invocation {
  Command command = Command::Help;
  bool json = false;                            ///< --json
  std::optional<std::chrono::seconds> timeout;  ///< --timeout: bus timeout of the long calls
  SendArguments send;
  std::string patch;                   ///< twin patch: JSON, or "-" for standard input
  std::optional<std::uint64_t> count;  ///< watches: exit after this many items
  std::string methodName;              ///< method serve
  std::vector<std::string> methodCommand;
  std::string uploadFile;                   ///< upload: a path, or "-" for standard input
  std::string blobName;                     ///< upload --name
  std::string configPath = kDefaultConfig;  ///< check --config
  std::string credentialsDirectory;         ///< check --credentials-dir
};

/// Parses the arguments after argv[0]. Errc::InvalidArgument with a one-line message (without
/// the program name) for anything a user must change; usage() then helps.
[[nodiscard]] core::Result<Invocation> parseArguments(const std::vector<std::string>& args);

/// The --help text.
[[nodiscard]] std::string usage();

}  // namespace iothubd::ctl
