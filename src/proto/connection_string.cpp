// SPDX-License-Identifier: MIT
#include "iothubd/proto/connection_string.hpp"

#include <array>
#include <optional>

#include "iothubd/proto/base64.hpp"
#include "iothubd/proto/mqtt_identity.hpp"
#include "iothubd/proto/sas_token.hpp"
#include "key_names.hpp"

namespace iothubd::proto {

namespace {

using core::Errc;

// The [py] prefix, so messages read the same as the SDK's for users who know it.
constexpr std::string_view kPrefix = "Invalid Connection String - ";

enum Key : std::size_t {
  kHostName,
  kDeviceId,
  kModuleId,
  kSharedAccessKey,
  kSharedAccessKeyName,
  kSharedAccessSignature,
  kGatewayHostName,
  kX509,
  kKeyCount,
};

// Keys of protocol doc section 3, case-sensitive. [c]'s UseProvisioning is not supported.
constexpr std::array<std::string_view, kKeyCount> kKeyNames = {"HostName",
                                                               "DeviceId",
                                                               "ModuleId",
                                                               "SharedAccessKey",
                                                               "SharedAccessKeyName",
                                                               "SharedAccessSignature",
                                                               "GatewayHostName",
                                                               "x509"};

core::Result<ConnectionString> invalid(const std::string& reason) {
  return core::fail(Errc::InvalidArgument, std::string(kPrefix) + reason);
}

std::optional<Key> keyFromName(std::string_view name) {
  for (std::size_t i = 0; i < kKeyCount; ++i) {
    if (kKeyNames[i] == name) {
      return static_cast<Key>(i);
    }
  }
  return std::nullopt;
}

std::optional<Key> keyFromNameIgnoringCase(std::string_view name) {
  auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; };
  for (std::size_t i = 0; i < kKeyCount; ++i) {
    const std::string_view known = kKeyNames[i];
    bool same = known.size() == name.size();
    for (std::size_t j = 0; same && j < known.size(); ++j) {
      same = lower(known[j]) == lower(name[j]);
    }
    if (same) {
      return static_cast<Key>(i);
    }
  }
  return std::nullopt;
}

}  // namespace

core::Result<ConnectionString> parseConnectionString(std::string_view text) {
  if (text.empty()) {
    return invalid("empty string");
  }
  // One trailing ';' is tolerated (connection strings are often copied with it).
  if (text.back() == ';') {
    text.remove_suffix(1);
  }

  // Values point into `text`; nothing is copied before the shape is known to be valid, and no
  // value ever reaches a message (it may be a key or token).
  std::array<std::optional<std::string_view>, kKeyCount> values{};
  std::size_t segmentIndex = 0;
  while (true) {
    ++segmentIndex;
    const std::size_t semicolon = text.find(';');
    const std::string_view segment = text.substr(0, semicolon);
    const std::string where = "segment " + std::to_string(segmentIndex);
    if (segment.empty()) {
      return invalid(where + " is empty");
    }
    const std::size_t eq = segment.find('=');
    if (eq == std::string_view::npos) {
      return invalid(where + " has no '='");
    }
    const std::string_view name = segment.substr(0, eq);
    if (name.empty()) {
      return invalid(where + " has an empty key");
    }
    const auto key = keyFromName(name);
    if (!key) {
      if (const auto similar = keyFromNameIgnoringCase(name)) {
        return invalid("unknown key '" + std::string(name) + "' (keys are case-sensitive: did " +
                       "you mean '" + std::string(kKeyNames[*similar]) + "'?)");
      }
      return invalid("unknown key " + detail::quotedKeyName(name) + " in " + where);
    }
    if (values[*key]) {
      return invalid("duplicate key '" + std::string(name) + "'");
    }
    values[*key] = segment.substr(eq + 1);
    if (semicolon == std::string_view::npos) {
      break;
    }
    text = text.substr(semicolon + 1);
  }

  for (std::size_t i = 0; i < kKeyCount; ++i) {
    if (values[i] && values[i]->empty()) {
      return invalid("empty value for " + std::string(kKeyNames[i]));
    }
  }
  if (values[kX509] && *values[kX509] != "true") {
    return invalid("x509 must be 'true' when present");
  }

  const bool hasKey = values[kSharedAccessKey].has_value();
  const bool hasSignature = values[kSharedAccessSignature].has_value();
  const bool hasX509 = values[kX509].has_value();
  if (hasKey && hasX509) {
    return invalid("Mixed authentication scheme: SharedAccessKey together with x509");
  }
  if (hasKey && hasSignature) {
    return invalid(
        "Mixed authentication scheme: SharedAccessKey together with SharedAccessSignature");
  }
  if (hasSignature && hasX509) {
    return invalid("Mixed authentication scheme: SharedAccessSignature together with x509");
  }
  if (!values[kHostName]) {
    return invalid("missing HostName");
  }
  if (!values[kDeviceId]) {
    if (values[kSharedAccessKeyName]) {
      return invalid(
          "missing DeviceId: HostName with SharedAccessKeyName is a service (shared access "
          "policy) connection string, not a device connection string");
    }
    return invalid("missing DeviceId");
  }
  if (values[kSharedAccessKeyName]) {
    return invalid(
        "SharedAccessKeyName is not allowed in a device connection string (shared access policy "
        "keys are for services, not devices)");
  }
  if (!hasKey && !hasSignature && !hasX509) {
    return invalid(
        "no credential: one of SharedAccessKey, SharedAccessSignature or x509=true is "
        "required");
  }
  if (auto ok = validateHostName(*values[kHostName], "HostName"); !ok) {
    return invalid(ok.error().message);
  }
  if (values[kGatewayHostName]) {
    if (auto ok = validateHostName(*values[kGatewayHostName], "GatewayHostName"); !ok) {
      return invalid(ok.error().message);
    }
  }
  if (auto ok = validateDeviceId(*values[kDeviceId]); !ok) {
    return invalid(ok.error().message);
  }
  if (values[kModuleId]) {
    if (auto ok = validateModuleId(*values[kModuleId]); !ok) {
      return invalid(ok.error().message);
    }
  }

  ConnectionString cs;
  cs.hostName = std::string(*values[kHostName]);
  cs.deviceId = std::string(*values[kDeviceId]);
  cs.moduleId = std::string(values[kModuleId].value_or(std::string_view{}));
  cs.gatewayHostName = std::string(values[kGatewayHostName].value_or(std::string_view{}));
  cs.x509 = hasX509;

  if (hasKey) {
    // Checked here so a damaged key is reported at load time, not at the first token renewal.
    if (auto key = base64Decode(*values[kSharedAccessKey]); !key || key->empty()) {
      return invalid("SharedAccessKey is not valid base64");
    }
    cs.sharedAccessKey = core::Secret<>(std::string(*values[kSharedAccessKey]));
  }
  if (hasSignature) {
    auto token = parseSasToken(*values[kSharedAccessSignature]);
    if (!token) {
      // parseSasToken names fields, never values, so its reason is safe to pass on.
      return invalid("SharedAccessSignature is not a valid SAS token: " + token.error().message);
    }
    if (auto ok = checkSasTokenTarget(*token, cs.hostName, cs.deviceId, cs.moduleId); !ok) {
      return invalid("SharedAccessSignature does not match: " + ok.error().message);
    }
    cs.sharedAccessSignature = core::Secret<>(std::string(*values[kSharedAccessSignature]));
  }
  return cs;
}

}  // namespace iothubd::proto
