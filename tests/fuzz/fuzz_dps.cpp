// SPDX-License-Identifier: MIT
// Fuzzes what the Device Provisioning Service sends (response topics, operation-status and error
// bodies: network input) and what an operator gives it (the custom payload file, the registration
// id), with the properties the provisioning client relies on.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.hpp"
#include "iothubd/core/utf8.hpp"
#include "iothubd/proto/mqtt_identity.hpp"
#include "iothubd/proto/provisioning.hpp"
#include "iothubd/proto/twin.hpp"

using namespace iothubd;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text = fuzz::asText(data, size);

  if (auto topic = proto::parseDpsResponseTopic(text)) {
    FUZZ_CHECK(topic->status >= 100 && topic->status <= 999);
    FUZZ_CHECK(!topic->requestId.empty());
    const auto delay = proto::dpsRetryDelay(topic->retryAfterSeconds);
    FUZZ_CHECK(delay >= proto::kDpsMinRetryAfter && delay <= proto::kDpsMaxRetryAfter);
    FUZZ_CHECK(proto::isDpsResponseTopic(text));
  } else {
    FUZZ_CHECK(topic.error().code == core::Errc::Protocol);
  }

  if (auto op = proto::parseDpsOperation(text)) {
    FUZZ_CHECK(!op->operationId.empty());
    if (op->status == proto::DpsOperationStatus::Assigned) {
      // What the daemon connects to next and the MQTT client id it uses there.
      FUZZ_CHECK(op->registrationState.has_value());
      FUZZ_CHECK(proto::validateHostName(op->registrationState->assignedHub).has_value());
      FUZZ_CHECK(proto::validateDeviceId(op->registrationState->deviceId).has_value());
    }
    if (op->registrationState && !op->registrationState->payload.empty()) {
      FUZZ_CHECK(proto::validateJsonPayload(op->registrationState->payload).has_value());
    }
  } else {
    FUZZ_CHECK(op.error().code == core::Errc::Protocol);
    // Messages go to LastError and the journal: valid UTF-8 (sd-bus refuses anything else).
    FUZZ_CHECK(core::validUtf8(op.error().message, 1 << 20) == op.error().message);
  }

  const auto error = proto::parseDpsServiceError(text);
  const std::string line = proto::describeDpsError(429, error);
  FUZZ_CHECK(core::validUtf8(line, 1 << 20) == line);
  FUZZ_CHECK(line.size() < 400);

  if (auto body = proto::dpsRegisterPayload("gw-1", text, "dtmi:com:example:Thermostat;1")) {
    FUZZ_CHECK(body->rfind(R"({"registrationId":"gw-1","payload":{)", 0) == 0);
    FUZZ_CHECK(proto::validateJsonPayload(*body).has_value());
  } else {
    FUZZ_CHECK(body.error().code == core::Errc::InvalidArgument);
    FUZZ_CHECK(core::validUtf8(body.error().message, 1 << 20) == body.error().message);
  }

  if (proto::validateRegistrationId(text)) {
    FUZZ_CHECK(text.find_first_of("/+#?&= ") == std::string_view::npos);
    FUZZ_CHECK(proto::dpsRegisterPayload(text, "", "").has_value());
  }
  return 0;
}
