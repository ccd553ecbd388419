// SPDX-License-Identifier: MIT
#include "iothubd/proto/mqtt_identity.hpp"

#include <cstdio>

#include "iothubd/proto/percent_encoding.hpp"

namespace iothubd::proto {

namespace {

// IoT Hub identity registry rules for device and module ids: ASCII letters and digits plus
// the special characters in kSpecial below.
bool isIdentityChar(char c) {
  if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
    return true;
  }
  constexpr std::string_view kSpecial = "-.%_*?!(),:=@$'";
  return kSpecial.find(c) != std::string_view::npos;
}

// "'c'" for a printable character, else "0xNN", so a message never carries raw control bytes.
std::string showChar(char ch) {
  const auto c = static_cast<unsigned char>(ch);
  if (c > 0x20 && c < 0x7F) {
    return std::string("'") + ch + "'";
  }
  char hex[8];
  std::snprintf(hex, sizeof hex, "0x%02X", c);
  return hex;
}

core::Result<void> validateIdentityId(std::string_view what, std::string_view id) {
  if (id.empty()) {
    return core::fail(core::Errc::InvalidArgument, std::string(what) + " is empty");
  }
  if (id.size() > kMaxIdentityIdLength) {
    return core::fail(core::Errc::InvalidArgument, std::string(what) + " is longer than " +
                                                       std::to_string(kMaxIdentityIdLength) +
                                                       " characters");
  }
  for (std::size_t i = 0; i < id.size(); ++i) {
    if (!isIdentityChar(id[i])) {
      const std::string shown = showChar(id[i]);
      return core::fail(core::Errc::InvalidArgument, std::string(what) + " contains " + shown +
                                                         " at offset " + std::to_string(i) +
                                                         ", which IoT Hub does not allow in an id");
    }
  }
  return {};
}

bool isHostNameChar(char c) {
  if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
    return true;
  }
  constexpr std::string_view kSpecial = ".-_:[]";
  return kSpecial.find(c) != std::string_view::npos;
}

}  // namespace

std::string mqttClientId(std::string_view deviceId, std::string_view moduleId) {
  std::string id(deviceId);
  if (!moduleId.empty()) {
    id.append("/").append(moduleId);
  }
  return id;
}

std::string mqttUsername(std::string_view hubHost, std::string_view deviceId,
                         std::string_view moduleId, std::string_view userAgent,
                         std::string_view productInfo) {
  // Host and client id unencoded, query values encoded (protocol doc section 1.2).
  std::string username(hubHost);
  username.append("/").append(mqttClientId(deviceId, moduleId));
  username.append("/?api-version=").append(kApiVersion);
  username.append("&DeviceClientType=");
  // [py]: product_info starting with "dtmi" is a Plug and Play model id and goes to model-id.
  if (productInfo.substr(0, 5) == "dtmi:") {
    username.append(percentEncode(userAgent));
    username.append("&model-id=").append(percentEncode(productInfo));
  } else {
    std::string clientType(userAgent);
    if (!productInfo.empty()) {
      clientType.append(" ").append(productInfo);
    }
    username.append(percentEncode(clientType));
  }
  return username;
}

core::Result<void> validateDeviceId(std::string_view deviceId) {
  return validateIdentityId("DeviceId", deviceId);
}

core::Result<void> validateModuleId(std::string_view moduleId) {
  return validateIdentityId("ModuleId", moduleId);
}

core::Result<void> validateHostName(std::string_view host, std::string_view what) {
  // 253 is the longest DNS name (RFC 1035 section 2.3.4 counts 255 octets on the wire).
  constexpr std::size_t kMaxHostNameLength = 253;
  if (host.empty()) {
    return core::fail(core::Errc::InvalidArgument, std::string(what) + " is empty");
  }
  if (host.size() > kMaxHostNameLength) {
    return core::fail(core::Errc::InvalidArgument, std::string(what) + " is longer than " +
                                                       std::to_string(kMaxHostNameLength) +
                                                       " characters");
  }
  for (std::size_t i = 0; i < host.size(); ++i) {
    if (!isHostNameChar(host[i])) {
      return core::fail(core::Errc::InvalidArgument,
                        std::string(what) + " contains " + showChar(host[i]) + " at offset " +
                            std::to_string(i) + ", which is not allowed in a host name");
    }
  }
  return {};
}

}  // namespace iothubd::proto
