// SPDX-License-Identifier: MIT
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "iothubd/core/result.hpp"

namespace iothubd::proto {

/// Cloud-to-device subscription (protocol doc section 5):
/// `devices/{deviceId}/messages/devicebound/#`.
[[nodiscard]] std::string c2dSubscribeTopic(std::string_view deviceId);

/// Module input subscription (protocol doc section 10, [py] form):
/// `devices/{deviceId}/modules/{moduleId}/inputs/#`.
[[nodiscard]] std::string moduleInputsSubscribeTopic(std::string_view deviceId,
                                                     std::string_view moduleId);

inline constexpr std::string_view kMethodsSubscribeTopic = "$iothub/methods/POST/#";
inline constexpr std::string_view kTwinResponseSubscribeTopic = "$iothub/twin/res/#";
inline constexpr std::string_view kTwinDesiredSubscribeTopic =
    "$iothub/twin/PATCH/properties/desired/#";

/// `$iothub/methods/res/{status}/?$rid={enc(requestId)}` (protocol doc section 6). The request id
/// is encoded as [py] does; parseMethodRequestTopic decodes it, so an id round-trips unchanged.
[[nodiscard]] std::string methodResponseTopic(int status, std::string_view requestId);

/// `$iothub/twin/GET/?$rid={enc(requestId)}` (protocol doc section 7).
[[nodiscard]] std::string twinGetTopic(std::string_view requestId);

/// `$iothub/twin/PATCH/properties/reported/?$rid={enc(requestId)}` (protocol doc section 7).
[[nodiscard]] std::string twinPatchReportedTopic(std::string_view requestId);

enum class InboundKind { C2d, MethodRequest, TwinResponse, TwinDesiredPatch, Unknown };

/// Classifies a received topic by prefix only (the parse functions check the rest):
/// `devices/{deviceId}/messages/devicebound/`, `$iothub/methods/POST/`, `$iothub/twin/res/`,
/// `$iothub/twin/PATCH/properties/desired/`; anything else (including another device's C2D topic
/// and module inputs) is Unknown.
[[nodiscard]] InboundKind classifyTopic(std::string_view topic, std::string_view deviceId);

/// Properties of a received C2D message, split as dbus-contract-notes "Messages" requires.
struct C2dProperties {
  std::map<std::string, std::string> properties;        ///< application properties
  std::map<std::string, std::string> systemProperties;  ///< keyed by bus name
};

/// Parses `devices/{deviceId}/messages/devicebound/{bag}` (protocol doc section 5). The bag is
/// everything after the prefix (may be empty), parsed by parsePropertyBag. Wire keys map to bus
/// names: `$.mid` message-id, `$.cid` correlation-id, `$.uid` user-id, `$.ct` content-type, `$.ce`
/// content-encoding, `$.exp` expiry-time-utc, `$.to` to, `$.on` output-name, `$.sub`
/// component-name, `$.ctime` and `iothub-creation-time-utc` creation-time-utc, `iothub-ack` ack.
/// Every other `$.` key and every other `iothub-` key (reserved for the hub, never an application
/// property) is a system property under its wire name, e.g. `$.cdid`. A key without `=` gets an
/// empty value. A repeated key: the last one wins ([py] builds a dict).
/// Errors: Errc::Protocol for another prefix or a malformed bag.
[[nodiscard]] core::Result<C2dProperties> parseC2dTopic(std::string_view topic,
                                                        std::string_view deviceId);

/// A message delivered to a module input (protocol doc section 10).
struct ModuleInputMessage {
  std::string inputName;  ///< decoded
  C2dProperties properties;
};

/// Parses `devices/{deviceId}/modules/{moduleId}/inputs/{inputName}/{bag}` (protocol doc section
/// 10); the bag is parsed like C2D. Errors: Errc::Protocol.
[[nodiscard]] core::Result<ModuleInputMessage> parseModuleInputTopic(std::string_view topic,
                                                                     std::string_view deviceId,
                                                                     std::string_view moduleId);

struct MethodRequest {
  std::string methodName;  ///< percent-decoded
  std::string requestId;   ///< percent-decoded; echo it to methodResponseTopic
};

/// Parses `$iothub/methods/POST/{methodName}/?$rid={requestId}` (protocol doc section 6).
/// Errors: Errc::Protocol for another prefix, a missing or empty name, a missing `/?`, a missing
/// or empty `$rid`, or malformed escapes.
[[nodiscard]] core::Result<MethodRequest> parseMethodRequestTopic(std::string_view topic);

struct TwinResponse {
  int status = 0;
  std::string requestId;                 ///< percent-decoded
  std::optional<std::uint64_t> version;  ///< `$version`, sent with the 204 of a reported patch
};

/// Parses `$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]` (protocol doc section 7). The
/// status must be a 3-digit decimal number (100..999); unknown query keys are ignored.
/// Errors: Errc::Protocol, one message per problem.
[[nodiscard]] core::Result<TwinResponse> parseTwinResponseTopic(std::string_view topic);

/// Parses `$iothub/twin/PATCH/properties/desired/?$version={v}` and returns v (protocol doc
/// section 7). Errors: Errc::Protocol.
[[nodiscard]] core::Result<std::uint64_t> parseDesiredPatchTopic(std::string_view topic);

}  // namespace iothubd::proto
