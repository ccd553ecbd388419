// SPDX-License-Identifier: MIT
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "iothubd/core/result.hpp"
#include "iothubd/core/secret.hpp"

namespace iothubd::proto {

/// The fixed prefix of every SAS token (protocol doc section 2).
inline constexpr std::string_view kSasTokenPrefix = "SharedAccessSignature ";

/// The resource a device or module token is scoped to (protocol doc section 2), always built on
/// the IoT Hub host, also behind a gateway: `{hubHost}/devices/{deviceId}` when moduleId is empty,
/// else `{hubHost}/devices/{deviceId}/modules/{moduleId}`. Not encoded here; makeSasToken does.
[[nodiscard]] std::string sasResourceUri(std::string_view hubHost, std::string_view deviceId,
                                         std::string_view moduleId);

/// Builds `SharedAccessSignature sr={enc(uri)}&sig={enc(sig)}&se={expiry}`, plus
/// `&skn={enc(policyName)}` only when policyName is non-empty (protocol doc section 2), where
/// sig = Base64(HMAC-SHA256(Base64-decode(key), enc(uri) + "\n" + expiry)).
/// `expiryUnix` is absolute (Unix seconds, UTC): the caller adds the TTL to its wall clock.
/// Errors: Errc::InvalidArgument "Invalid Symmetric Key" when the key is empty or not strict
/// Base64 (see base64Decode); Errc::Internal if OpenSSL fails.
[[nodiscard]] core::Result<core::Secret<>> makeSasToken(std::string_view resourceUri,
                                                        const core::Secret<>& keyBase64,
                                                        std::uint64_t expiryUnix,
                                                        std::string_view policyName = {});

/// A parsed SAS token. Field values are percent-decoded.
struct SasToken {
  std::string resourceUri;   ///< decoded `sr`, e.g. "contoso.azure-devices.net/devices/dev1"
  core::Secret<> signature;  ///< decoded `sig` (the Base64 HMAC), a credential
  std::uint64_t expiry = 0;  ///< `se`, Unix seconds
  std::string keyName;       ///< decoded `skn`, empty when absent
};

/// Parses a token by the Python SDK's rules (protocol doc section 2): the text must start with
/// "SharedAccessSignature ", the rest is split on `&` and each field on its first `=`; `sr`, `sig`
/// and `se` are required, `skn` is the only other field allowed; `se` is a decimal number.
/// Stricter than Python where Python silently accepts nonsense: duplicate fields, empty `sr`,
/// `sig` or `se`, and whitespace (the token is sent verbatim as the MQTT password, so stray
/// whitespace would only fail later at the hub) are rejected.
/// Errors: Errc::InvalidArgument, one message per problem, naming the field, never its value.
[[nodiscard]] core::Result<SasToken> parseSasToken(std::string_view token);

/// Identity a device or module token is scoped to.
struct SasTarget {
  std::string hubHost, deviceId, moduleId;  ///< moduleId empty for a device token
};

/// Splits the token's resource URI `{host}/devices/{id}[/modules/{mid}]` (as the Python SDK's
/// `_extract_sas_uri_values`). Errors: Errc::InvalidArgument when the URI has another shape (e.g.
/// a hub-level or DPS token) or an empty component.
[[nodiscard]] core::Result<SasTarget> sasTokenTarget(const SasToken& token);

/// Checks that a token is usable by the identity hubHost/deviceId/moduleId (empty moduleId = a
/// device): its resource is that hub (host compared case-insensitively, as DNS names are), device
/// and module (ids compared exactly; a device identity rejects module tokens and vice versa).
/// No expiry check; see validateSasTokenFor.
[[nodiscard]] core::Result<void> checkSasTokenTarget(const SasToken& token,
                                                     std::string_view hubHost,
                                                     std::string_view deviceId,
                                                     std::string_view moduleId);

/// What UpdateSasToken and sas-token authentication accept ([py] `update_sastoken`): parseable,
/// scoped to this hub/device/module (checkSasTokenTarget) and not expired at nowUnix (a token whose
/// `se` equals nowUnix counts as expired). Messages such as "SAS token is for device 'dev2', not
/// 'dev1'" or "SAS token expired at 1700000000 (now 1700000100)".
[[nodiscard]] core::Result<SasToken> validateSasTokenFor(std::string_view token,
                                                         std::string_view hubHost,
                                                         std::string_view deviceId,
                                                         std::string_view moduleId,
                                                         std::uint64_t nowUnix);

}  // namespace iothubd::proto
