// SPDX-License-Identifier: MIT
// Fuzzes parseConnectionString (the credential most deployments use) and checks what a parsed
// string guarantees, and that an error message never quotes a secret value.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.hpp"
#include "iothubd/proto/base64.hpp"
#include "iothubd/proto/connection_string.hpp"
#include "iothubd/proto/mqtt_identity.hpp"
#include "iothubd/proto/sas_token.hpp"

using namespace iothubd;

namespace {

constexpr std::string_view kPrefix = "Invalid Connection String - ";

// Stand-ins for the secret values: a valid Base64 key and a well-formed token, so the parse goes
// as far with them as with real secrets. The check looks for these, not for the fuzzer's own
// values: an error message legitimately contains fixed text and other parts of the input, and
// libFuzzer learns whatever strings the target compares, so a check for "the input's value
// appears in the message" reports its own echo.
constexpr std::string_view kKeyCanary = "Y2FuYXJ5LWtleS1mb3ItZnV6emluZy0yOTQ3";
constexpr std::string_view kTokenCanary =
    "SharedAccessSignature sr=canary.example%2Fdevices%2Fc4n4ry&sig=Y2FuYXJ5&se=4102444800";

std::size_t occurrences(std::string_view text, std::string_view what) {
  std::size_t count = 0;
  for (std::size_t at = text.find(what); at != std::string_view::npos;
       at = text.find(what, at + 1)) {
    ++count;
  }
  return count;
}

// Parses the input again with every SharedAccessKey and SharedAccessSignature value replaced by
// a canary and checks that the error message, if any, quotes no canary.
void checkSecretsNeverQuoted(std::string_view input) {
  std::string text;
  std::size_t keys = 0;
  std::size_t tokens = 0;
  while (true) {
    const std::size_t semicolon = input.find(';');
    const std::string_view segment = input.substr(0, semicolon);
    if (segment.substr(0, 16) == "SharedAccessKey=") {
      text.append("SharedAccessKey=").append(kKeyCanary);
      ++keys;
    } else if (segment.substr(0, 22) == "SharedAccessSignature=") {
      text.append("SharedAccessSignature=").append(kTokenCanary);
      ++tokens;
    } else {
      text.append(segment);
    }
    if (semicolon == std::string_view::npos) {
      break;
    }
    text.push_back(';');
    input.remove_prefix(semicolon + 1);
  }
  // A canary the fuzzer wrote elsewhere (a key name, say) may be quoted for that reason.
  if (keys + tokens == 0 || occurrences(text, kKeyCanary) != keys ||
      occurrences(text, kTokenCanary) != tokens) {
    return;
  }
  auto cs = proto::parseConnectionString(text);
  if (!cs) {
    FUZZ_CHECK(cs.error().message.find(kKeyCanary) == std::string::npos);
    FUZZ_CHECK(cs.error().message.find(kTokenCanary) == std::string::npos);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input = fuzz::asText(data, size);
  checkSecretsNeverQuoted(input);
  auto cs = proto::parseConnectionString(input);
  if (!cs) {
    FUZZ_CHECK(cs.error().code == core::Errc::InvalidArgument);
    FUZZ_CHECK(cs.error().message.substr(0, kPrefix.size()) == kPrefix);
    return 0;
  }

  FUZZ_CHECK(proto::validateHostName(cs->hostName).has_value());
  FUZZ_CHECK(proto::validateDeviceId(cs->deviceId).has_value());
  FUZZ_CHECK(cs->moduleId.empty() || proto::validateModuleId(cs->moduleId).has_value());
  FUZZ_CHECK(cs->gatewayHostName.empty() ||
             proto::validateHostName(cs->gatewayHostName, "GatewayHostName").has_value());
  FUZZ_CHECK(cs->sharedAccessKeyName.empty());

  const int credentials = static_cast<int>(!cs->sharedAccessKey.empty()) +
                          static_cast<int>(!cs->sharedAccessSignature.empty()) +
                          static_cast<int>(cs->x509);
  FUZZ_CHECK(credentials == 1);
  if (!cs->sharedAccessKey.empty()) {
    auto key = proto::base64Decode(cs->sharedAccessKey.reveal());
    FUZZ_CHECK(key.has_value() && !key->empty());
  }
  if (!cs->sharedAccessSignature.empty()) {
    auto token = proto::parseSasToken(cs->sharedAccessSignature.reveal());
    FUZZ_CHECK(token.has_value());
    FUZZ_CHECK(
        proto::checkSasTokenTarget(*token, cs->hostName, cs->deviceId, cs->moduleId).has_value());
  }
  return 0;
}
