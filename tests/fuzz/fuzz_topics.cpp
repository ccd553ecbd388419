// SPDX-License-Identifier: MIT
// Fuzzes the decoders of every topic the hub publishes to the device (C2D, module input, method
// request, twin response, desired patch) with the same bytes, and checks they agree with
// classifyTopic and that decoded requests survive being encoded again.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.hpp"
#include "iothubd/proto/percent_encoding.hpp"
#include "iothubd/proto/topics.hpp"

using namespace iothubd;
using proto::InboundKind;

namespace {

// The identities the seed corpus (tests/unit/proto) uses.
constexpr std::string_view kDevice = "dev1";
constexpr std::string_view kModule = "mod1";

bool startsWith(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

void checkMessageProperties(const proto::C2dProperties& bag) {
  // Hub-reserved keys never reach the application properties (topics.hpp).
  for (const auto& [key, value] : bag.properties) {
    FUZZ_CHECK(!key.empty());
    FUZZ_CHECK(!startsWith(key, "$.") && !startsWith(key, "iothub-"));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view topic = fuzz::asText(data, size);
  const InboundKind kind = proto::classifyTopic(topic, kDevice);

  if (auto c2d = proto::parseC2dTopic(topic, kDevice)) {
    FUZZ_CHECK(kind == InboundKind::C2d);
    checkMessageProperties(*c2d);
  }

  if (auto input = proto::parseModuleInputTopic(topic, kDevice, kModule)) {
    FUZZ_CHECK(kind == InboundKind::Unknown);
    FUZZ_CHECK(!input->inputName.empty());
    checkMessageProperties(input->properties);
  }

  if (auto method = proto::parseMethodRequestTopic(topic)) {
    FUZZ_CHECK(kind == InboundKind::MethodRequest);
    FUZZ_CHECK(!method->methodName.empty() && !method->requestId.empty());
    const std::string rebuilt = "$iothub/methods/POST/" + proto::percentEncode(method->methodName) +
                                "/?$rid=" + proto::percentEncode(method->requestId);
    auto again = proto::parseMethodRequestTopic(rebuilt);
    FUZZ_CHECK(again.has_value());
    FUZZ_CHECK(again->methodName == method->methodName && again->requestId == method->requestId);
  }

  if (auto twin = proto::parseTwinResponseTopic(topic)) {
    FUZZ_CHECK(kind == InboundKind::TwinResponse);
    FUZZ_CHECK(twin->status >= 100 && twin->status <= 999);
    FUZZ_CHECK(!twin->requestId.empty());
  }

  if (auto version = proto::parseDesiredPatchTopic(topic)) {
    FUZZ_CHECK(kind == InboundKind::TwinDesiredPatch);
  }
  return 0;
}
