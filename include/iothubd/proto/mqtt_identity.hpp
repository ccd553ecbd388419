// SPDX-License-Identifier: MIT
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "iothubd/core/result.hpp"

namespace iothubd::proto {

/// The api-version sent in the MQTT username: the documented value (protocol doc sections 1.2 and
/// 14.1), which also accepts `model-id`.
inline constexpr std::string_view kApiVersion = "2021-04-12";

/// Longest device or module id IoT Hub accepts.
inline constexpr std::size_t kMaxIdentityIdLength = 128;

/// MQTT ClientId (protocol doc section 1.2): `{deviceId}` or `{deviceId}/{moduleId}`, never
/// encoded.
[[nodiscard]] std::string mqttClientId(std::string_view deviceId, std::string_view moduleId);

/// MQTT username (protocol doc section 1.2): host and client id unencoded, query values encoded:
/// `{hubHost}/{clientId}/?api-version=2021-04-12&DeviceClientType={enc(ua)}` where ua is userAgent,
/// followed by " " + productInfo when productInfo is non-empty. When productInfo starts with
/// "dtmi:" it is an IoT Plug and Play model id instead (as the Python SDK treats product_info):
/// DeviceClientType=enc(userAgent) then `&model-id={enc(productInfo)}`.
/// hubHost is the IoT Hub host, also when connecting through a gateway (section 1.4).
[[nodiscard]] std::string mqttUsername(std::string_view hubHost, std::string_view deviceId,
                                       std::string_view moduleId, std::string_view userAgent,
                                       std::string_view productInfo);

/// Checks a device id against IoT Hub's identity rules: 1..128 characters from
/// `A-Z a-z 0-9 - . % _ * ? ! ( ) , : = @ $ '`. The id goes unencoded into the ClientId, the
/// username and topic names, so `/`, `+`, `#`, spaces or non-ASCII would break them.
/// Errors: Errc::InvalidArgument naming the offending character and its offset.
[[nodiscard]] core::Result<void> validateDeviceId(std::string_view deviceId);

/// Same rules as validateDeviceId, for a module id (messages say "ModuleId").
[[nodiscard]] core::Result<void> validateModuleId(std::string_view moduleId);

/// Checks a host name (HostName, GatewayHostName) before it goes unencoded into the MQTT username
/// and the SAS resource: 1..253 characters from `A-Z a-z 0-9 . - _` plus `: [ ]` for an IPv6
/// literal. `what` names the field in messages.
/// Errors: Errc::InvalidArgument naming the offending character and its offset.
[[nodiscard]] core::Result<void> validateHostName(std::string_view host,
                                                  std::string_view what = "HostName");

}  // namespace iothubd::proto
