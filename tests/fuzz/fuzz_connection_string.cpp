// SPDX-License-Identifier: MIT
// Fuzzes parseConnectionString (the credential most deployments use) and checks what a parsed
// string guarantees, and that an error message never quotes a secret value.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_check.hpp"
#include "iothubd/proto/base64.hpp"
#include "iothubd/proto/connection_string.hpp"
#include "iothubd/proto/mqtt_identity.hpp"
#include "iothubd/proto/sas_token.hpp"

using namespace iothubd;

namespace {

constexpr std::string_view kPrefix = "Invalid Connection String - ";

// Words that messages legitimately contain and a fuzzer easily puts into a value (they are the
// key names it sees compared): removed from both sides before looking for a leaked value.
constexpr std::string_view kVocabulary[] = {"SharedAccessSignature",
                                            "SharedAccessKeyName",
                                            "SharedAccessKey",
                                            "GatewayHostName",
                                            "HostName",
                                            "DeviceId",
                                            "ModuleId",
                                            "x509"};

std::string withoutVocabulary(std::string text) {
  for (std::string_view word : kVocabulary) {
    for (std::size_t at = text.find(word); at != std::string::npos; at = text.find(word, at)) {
      text.erase(at, word.size());
    }
  }
  return text;
}

// The values of the secret keys, as the parser would split them.
std::vector<std::string_view> secretValues(std::string_view text) {
  std::vector<std::string_view> values;
  while (!text.empty()) {
    const std::size_t semicolon = text.find(';');
    const std::string_view segment = text.substr(0, semicolon);
    for (std::string_view key : {"SharedAccessKey=", "SharedAccessSignature="}) {
      if (segment.substr(0, key.size()) == key) {
        values.push_back(segment.substr(key.size()));
      }
    }
    if (semicolon == std::string_view::npos) {
      break;
    }
    text.remove_prefix(semicolon + 1);
  }
  return values;
}

void checkNoSecretIn(const std::string& message, std::string_view input) {
  const std::string scrubbedMessage = withoutVocabulary(message);
  for (std::string_view value : secretValues(input)) {
    const std::string scrubbed = withoutVocabulary(std::string(value));
    // Short or repeated values can appear for innocent reasons (a key name, a host name).
    if (scrubbed.size() < 8 || input.find(value) != input.rfind(value)) {
      continue;
    }
    FUZZ_CHECK(scrubbedMessage.find(scrubbed) == std::string::npos);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input = fuzz::asText(data, size);
  auto cs = proto::parseConnectionString(input);
  if (!cs) {
    FUZZ_CHECK(cs.error().code == core::Errc::InvalidArgument);
    FUZZ_CHECK(cs.error().message.substr(0, kPrefix.size()) == kPrefix);
    checkNoSecretIn(cs.error().message.substr(kPrefix.size()), input);
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
