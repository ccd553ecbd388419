// SPDX-License-Identifier: MIT
#include "iothubd/proto/sas_token.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <array>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "decimal.hpp"
#include "iothubd/proto/base64.hpp"
#include "iothubd/proto/percent_encoding.hpp"
#include "key_names.hpp"

namespace iothubd::proto {

namespace {

using core::Errc;

core::Result<SasToken> invalidToken(const std::string& reason) {
  return core::fail(Errc::InvalidArgument, "SAS token " + reason);
}

bool equalsIgnoreAsciiCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) {
    return false;
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto lower = [](char c) {
      return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    };
    if (lower(a[i]) != lower(b[i])) {
      return false;
    }
  }
  return true;
}

}  // namespace

std::string sasResourceUri(std::string_view hubHost, std::string_view deviceId,
                           std::string_view moduleId) {
  std::string uri;
  uri.append(hubHost).append("/devices/").append(deviceId);
  if (!moduleId.empty()) {
    uri.append("/modules/").append(moduleId);
  }
  return uri;
}

core::Result<core::Secret<>> makeSasToken(std::string_view resourceUri,
                                          const core::Secret<>& keyBase64, std::uint64_t expiryUnix,
                                          std::string_view policyName) {
  // [py] raises ValueError("Invalid Symmetric Key") for a key it cannot Base64-decode (section 2).
  // An empty key decodes fine but can never be right, so it is rejected the same way.
  auto decoded = base64Decode(keyBase64.reveal());
  if (!decoded || decoded->empty()) {
    return core::fail(Errc::InvalidArgument, "Invalid Symmetric Key");
  }
  const core::Secret<> key(std::move(*decoded));

  // String to sign: enc(resourceUri) + "\n" + se (protocol doc section 2).
  const std::string encodedUri = percentEncode(resourceUri);
  const std::string expiry = std::to_string(expiryUnix);
  const std::string toSign = encodedUri + "\n" + expiry;

  std::array<unsigned char, EVP_MAX_MD_SIZE> mac{};
  unsigned int macLength = 0;
  if (HMAC(EVP_sha256(), key.reveal().data(), static_cast<int>(key.reveal().size()),
           reinterpret_cast<const unsigned char*>(toSign.data()), toSign.size(), mac.data(),
           &macLength) == nullptr) {
    return core::fail(Errc::Internal, "HMAC-SHA256 failed");
  }
  const core::Secret<> signature(
      base64Encode(std::string_view(reinterpret_cast<const char*>(mac.data()), macLength)));
  OPENSSL_cleanse(mac.data(), mac.size());

  std::string token(kSasTokenPrefix);
  token.append("sr=").append(encodedUri);
  token.append("&sig=").append(percentEncode(signature.reveal()));
  token.append("&se=").append(expiry);
  if (!policyName.empty()) {
    // [py] writes the policy name raw; enc() is the identity for valid policy names and keeps a
    // stray `&` or `=` from breaking the token.
    token.append("&skn=").append(percentEncode(policyName));
  }
  return core::Secret<>(std::move(token));
}

core::Result<SasToken> parseSasToken(std::string_view token) {
  if (token.substr(0, kSasTokenPrefix.size()) != kSasTokenPrefix) {
    return invalidToken("does not start with 'SharedAccessSignature '");
  }
  std::string_view rest = token.substr(kSasTokenPrefix.size());
  if (rest.empty()) {
    return invalidToken("has no fields after 'SharedAccessSignature '");
  }

  std::optional<std::string_view> sr, sig, se, skn;
  std::size_t index = 0;
  while (true) {
    ++index;
    const std::size_t amp = rest.find('&');
    const std::string_view field = rest.substr(0, amp);
    const std::size_t eq = field.find('=');
    if (eq == std::string_view::npos) {
      return invalidToken("field " + std::to_string(index) + " has no '='");
    }
    const std::string_view name = field.substr(0, eq);
    const std::string_view value = field.substr(eq + 1);
    if (name.empty()) {
      return invalidToken("field " + std::to_string(index) + " has an empty name");
    }
    std::optional<std::string_view>* slot = nullptr;
    if (name == "sr") {
      slot = &sr;
    } else if (name == "sig") {
      slot = &sig;
    } else if (name == "se") {
      slot = &se;
    } else if (name == "skn") {
      slot = &skn;
    } else {
      return invalidToken("has unexpected field " + detail::quotedKeyName(name));
    }
    if (slot->has_value()) {
      return invalidToken("has duplicate field '" + std::string(name) + "'");
    }
    *slot = value;
    if (amp == std::string_view::npos) {
      break;
    }
    rest = rest.substr(amp + 1);
  }

  const std::pair<const char*, const std::optional<std::string_view>*> required[] = {
      {"sr", &sr}, {"sig", &sig}, {"se", &se}};
  for (const auto& [name, field] : required) {
    if (!field->has_value()) {
      return invalidToken("is missing field '" + std::string(name) + "'");
    }
    if ((*field)->empty()) {
      return invalidToken("field '" + std::string(name) + "' is empty");
    }
  }

  SasToken result;
  auto uri = percentDecode(*sr);
  if (!uri) {
    return invalidToken("field 'sr' has a " + uri.error().message);
  }
  result.resourceUri = std::move(*uri);
  auto signature = percentDecode(*sig);
  if (!signature) {
    return invalidToken("field 'sig' has a " + signature.error().message);
  }
  result.signature = core::Secret<>(std::move(*signature));
  const auto expiry = detail::parseDecimal(*se, detail::Overflow::Refuse);
  if (!expiry) {
    return invalidToken("field 'se' is not a decimal number of seconds");
  }
  result.expiry = *expiry;
  if (skn) {
    auto keyName = percentDecode(*skn);
    if (!keyName) {
      return invalidToken("field 'skn' has a " + keyName.error().message);
    }
    result.keyName = std::move(*keyName);
  }
  return result;
}

core::Result<SasTarget> sasTokenTarget(const SasToken& token) {
  // {host}/devices/{id} or {host}/devices/{id}/modules/{mid}: 3 or 5 segments, as [py]
  // `_extract_sas_uri_values` requires.
  std::vector<std::string_view> parts;
  std::string_view rest = token.resourceUri;
  while (true) {
    const std::size_t slash = rest.find('/');
    parts.push_back(rest.substr(0, slash));
    if (slash == std::string_view::npos) {
      break;
    }
    rest = rest.substr(slash + 1);
  }
  const bool shapeOk = (parts.size() == 3 && parts[1] == "devices") ||
                       (parts.size() == 5 && parts[1] == "devices" && parts[3] == "modules");
  bool componentsOk = shapeOk;
  for (std::size_t i = 0; componentsOk && i < parts.size(); i += 2) {
    componentsOk = !parts[i].empty();
  }
  if (!componentsOk) {
    return core::fail(Errc::InvalidArgument,
                      "SAS token resource '" + token.resourceUri +
                          "' is not of the form {host}/devices/{deviceId}[/modules/{moduleId}]");
  }
  SasTarget target;
  target.hubHost = std::string(parts[0]);
  target.deviceId = std::string(parts[2]);
  if (parts.size() == 5) {
    target.moduleId = std::string(parts[4]);
  }
  return target;
}

core::Result<void> checkSasTokenTarget(const SasToken& token, std::string_view hubHost,
                                       std::string_view deviceId, std::string_view moduleId) {
  auto target = sasTokenTarget(token);
  if (!target) {
    return core::fail(target.error());
  }
  auto mismatch = [](const std::string& what) {
    return core::fail(Errc::InvalidArgument, "SAS token is for " + what);
  };
  if (!equalsIgnoreAsciiCase(target->hubHost, hubHost)) {
    return mismatch("hub '" + target->hubHost + "', not '" + std::string(hubHost) + "'");
  }
  if (target->deviceId != deviceId) {
    return mismatch("device '" + target->deviceId + "', not '" + std::string(deviceId) + "'");
  }
  // [py] update_sastoken: a device client rejects module tokens and vice versa.
  if (moduleId.empty() && !target->moduleId.empty()) {
    return mismatch("module '" + target->moduleId + "', not for the device itself");
  }
  if (!moduleId.empty() && target->moduleId.empty()) {
    return mismatch("the device itself, not module '" + std::string(moduleId) + "'");
  }
  if (target->moduleId != moduleId) {
    return mismatch("module '" + target->moduleId + "', not '" + std::string(moduleId) + "'");
  }
  return {};
}

core::Result<SasToken> validateSasTokenFor(std::string_view token, std::string_view hubHost,
                                           std::string_view deviceId, std::string_view moduleId,
                                           std::uint64_t nowUnix) {
  auto parsed = parseSasToken(token);
  if (!parsed) {
    return parsed;
  }
  if (auto ok = checkSasTokenTarget(*parsed, hubHost, deviceId, moduleId); !ok) {
    return core::fail(ok.error());
  }
  // The hub drops a connection once `se` has passed (section 2), so `se == now` is useless too.
  if (parsed->expiry <= nowUnix) {
    return core::fail(Errc::InvalidArgument, "SAS token expired at " +
                                                 std::to_string(parsed->expiry) + " (now " +
                                                 std::to_string(nowUnix) + ")");
  }
  return parsed;
}

}  // namespace iothubd::proto
