// SPDX-License-Identifier: MIT
// Fuzzes the SAS token parser (tokens come from credentials, connection strings and, through
// UpdateSasToken, from local apps) and checks makeSasToken -> parseSasToken round trips with
// identities and keys carved out of the same input.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.hpp"
#include "iothubd/core/secret.hpp"
#include "iothubd/proto/base64.hpp"
#include "iothubd/proto/sas_token.hpp"

using namespace iothubd;

namespace {

// The input as a token: parsed, split into its target, and checked against that target.
void checkParsedToken(std::string_view text) {
  auto token = proto::parseSasToken(text);
  if (!token) {
    FUZZ_CHECK(token.error().code == core::Errc::InvalidArgument);
    FUZZ_CHECK(!proto::validateSasTokenFor(text, "h", "d", "", 0).has_value());
    return;
  }
  FUZZ_CHECK(!token->resourceUri.empty() && !token->signature.empty());

  auto target = proto::sasTokenTarget(*token);
  if (!target) {
    FUZZ_CHECK(!proto::validateSasTokenFor(text, "h", "d", "", 0).has_value());
    return;
  }
  FUZZ_CHECK(!target->hubHost.empty() && !target->deviceId.empty());
  FUZZ_CHECK(
      proto::checkSasTokenTarget(*token, target->hubHost, target->deviceId, target->moduleId));
  // Valid for its own target right up to its expiry, then expired.
  const auto valid =
      proto::validateSasTokenFor(text, target->hubHost, target->deviceId, target->moduleId,
                                 token->expiry == 0 ? 0 : token->expiry - 1);
  FUZZ_CHECK(valid.has_value() == (token->expiry > 0));
  FUZZ_CHECK(!proto::validateSasTokenFor(text, target->hubHost, target->deviceId, target->moduleId,
                                         token->expiry));
  // A device token is never accepted for a module of that device, and the reverse.
  const std::string otherModule = target->moduleId.empty() ? "m" : "";
  FUZZ_CHECK(!proto::checkSasTokenTarget(*token, target->hubHost, target->deviceId, otherModule));
}

// makeSasToken -> parseSasToken with fields taken from the input.
void checkRoundTrip(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider provider(data, size);
  const std::string host = provider.ConsumeRandomLengthString(64);
  const std::string device = provider.ConsumeRandomLengthString(64);
  const std::string module = provider.ConsumeRandomLengthString(64);
  const std::string policy = provider.ConsumeRandomLengthString(32);
  const std::uint64_t expiry = provider.ConsumeIntegral<std::uint64_t>();
  const std::string keyBytes = provider.ConsumeRemainingBytesAsString();

  const std::string uri = proto::sasResourceUri(host, device, module);
  auto token =
      proto::makeSasToken(uri, core::Secret<>(proto::base64Encode(keyBytes)), expiry, policy);
  FUZZ_CHECK(token.has_value() == !keyBytes.empty());  // only an empty key is refused
  if (!token) {
    return;
  }
  auto parsed = proto::parseSasToken(token->reveal());
  FUZZ_CHECK(parsed.has_value());
  FUZZ_CHECK(parsed->resourceUri == uri);
  FUZZ_CHECK(parsed->expiry == expiry);
  FUZZ_CHECK(parsed->keyName == policy);
  auto signature = proto::base64Decode(parsed->signature.reveal());
  FUZZ_CHECK(signature.has_value() && signature->size() == 32);  // HMAC-SHA256

  const bool plainIds = !host.empty() && !device.empty() && host.find('/') == std::string::npos &&
                        device.find('/') == std::string::npos &&
                        module.find('/') == std::string::npos;
  if (plainIds) {
    auto target = proto::sasTokenTarget(*parsed);
    FUZZ_CHECK(target.has_value());
    FUZZ_CHECK(target->hubHost == host && target->deviceId == device && target->moduleId == module);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  checkParsedToken(fuzz::asText(data, size));
  checkRoundTrip(data, size);
  return 0;
}
