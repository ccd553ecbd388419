// SPDX-License-Identifier: MIT
#include "iothubd/proto/telemetry.hpp"

#include <gtest/gtest.h>

#include <string>

#include "iothubd/proto/property_bag.hpp"
#include "test_helpers.hpp"

namespace iothubd::proto {
namespace {

using core::Errc;
using test::errorOf;
using test::failedWith;

TEST(TelemetryTopic, EncodesPropertiesExactlyAsSection4) {
  OutgoingMessage message;
  message.body = R"({"t":21.5})";
  message.properties = {{"alert level", "high"}, {"path", "a/b&c"}};
  const auto system =
      systemPropertiesFromBus({{"content-type", "application/json"}, {"message-id", "6b82a1"}});
  ASSERT_TRUE(system.has_value()) << errorOf(system);
  message.system = *system;
  EXPECT_EQ(telemetryTopic("dev1", "", message),
            "devices/dev1/messages/events/"
            "%24.mid=6b82a1&%24.ct=application%2Fjson&alert%20level=high&path=a%2Fb%26c");
}

TEST(TelemetryTopic, UsesModuleTopicForAModule) {
  OutgoingMessage message;
  message.properties = {{"k", "v"}};
  EXPECT_EQ(telemetryTopic("dev1", "mod1", message),
            "devices/dev1/modules/mod1/messages/events/k=v");
}

TEST(TelemetryTopic, EndsWithSlashWhenBagIsEmpty) {
  EXPECT_EQ(telemetryTopic("dev1", "", OutgoingMessage{}), "devices/dev1/messages/events/");
}

TEST(TelemetryTopic, NeverEncodesIds) {
  EXPECT_EQ(telemetryTopic("dev:1@x", "m=1", OutgoingMessage{}),
            "devices/dev:1@x/modules/m=1/messages/events/");
}

TEST(TelemetryTopic, WritesSystemPropertiesInPySdkOrderThenCreationTimeThenCustom) {
  OutgoingMessage message;
  message.properties = {{"zeta", "1"}, {"alpha", "2"}};
  message.system = systemPropertiesFromBus({{"component-name", "thermostat1"},
                                            {"creation-time-utc", "2021-04-21T11:30:16Z"},
                                            {"expiry-time-utc", "2030-01-01T00:00:00Z"},
                                            {"content-encoding", "utf-8"},
                                            {"content-type", "application/json"},
                                            {"user-id", "u1"},
                                            {"correlation-id", "c 1"},
                                            {"message-id", "m1"},
                                            {"output-name", "out/1"}})
                       .value();
  EXPECT_EQ(telemetryTopic("d", "m", message),
            "devices/d/modules/m/messages/events/"
            "%24.on=out%2F1&%24.mid=m1&%24.cid=c%201&%24.uid=u1&%24.ct=application%2Fjson"
            "&%24.ce=utf-8&%24.exp=2030-01-01T00%3A00%3A00Z&%24.sub=thermostat1"
            "&iothub-creation-time-utc=2021-04-21T11%3A30%3A16Z&alpha=2&zeta=1");
}

TEST(TelemetryTopic, EncodesNonAsciiAndReservedCharactersInKeysAndValues) {
  OutgoingMessage message;
  message.properties = {{"caf\xC3\xA9", "x=1;y=2"}, {"50%", "+1"}};
  EXPECT_EQ(telemetryTopic("d", "", message),
            "devices/d/messages/events/50%25=%2B1&caf%C3%A9=x%3D1%3By%3D2");
}

TEST(TelemetryTopic, BagRoundTripsThroughTheParser) {
  OutgoingMessage message;
  message.properties = {{"a b", "c/d"}, {"e&f", "g=h"}, {"plus", "1+1"}};
  const std::string topic = telemetryTopic("d", "", message);
  const auto entries =
      parsePropertyBag(topic.substr(std::string("devices/d/messages/events/").size()));
  ASSERT_TRUE(entries.has_value()) << errorOf(entries);
  ASSERT_EQ(entries->size(), 3u);
  EXPECT_EQ((*entries)[0].key, "a b");
  EXPECT_EQ((*entries)[0].value, "c/d");
  EXPECT_EQ((*entries)[1].key, "e&f");
  EXPECT_EQ((*entries)[1].value, "g=h");
  EXPECT_EQ((*entries)[2].value, "1+1");
}

TEST(SystemPropertiesFromBus, MapsEveryBusName) {
  const auto system = systemPropertiesFromBus({{"message-id", "1"},
                                               {"correlation-id", "2"},
                                               {"user-id", "3"},
                                               {"content-type", "4"},
                                               {"content-encoding", "5"},
                                               {"expiry-time-utc", "6"},
                                               {"output-name", "7"},
                                               {"component-name", "8"},
                                               {"creation-time-utc", "9"}});
  ASSERT_TRUE(system.has_value()) << errorOf(system);
  EXPECT_EQ(system->messageId, "1");
  EXPECT_EQ(system->correlationId, "2");
  EXPECT_EQ(system->userId, "3");
  EXPECT_EQ(system->contentType, "4");
  EXPECT_EQ(system->contentEncoding, "5");
  EXPECT_EQ(system->expiryTimeUtc, "6");
  EXPECT_EQ(system->outputName, "7");
  EXPECT_EQ(system->componentName, "8");
  EXPECT_EQ(system->creationTimeUtc, "9");
}

TEST(SystemPropertiesFromBus, LeavesMissingKeysUnset) {
  const auto system = systemPropertiesFromBus({}).value();
  EXPECT_FALSE(system.messageId.has_value());
  EXPECT_FALSE(system.creationTimeUtc.has_value());
}

TEST(SystemPropertiesFromBus, RejectsUnknownKey) {
  EXPECT_TRUE(failedWith(systemPropertiesFromBus({{"foo", "x"}}), Errc::InvalidArgument,
                         "unknown system property 'foo'"));
}

TEST(SystemPropertiesFromBus, RejectsWireNamesAndOtherSpellings) {
  EXPECT_TRUE(failedWith(systemPropertiesFromBus({{"$.mid", "x"}}), Errc::InvalidArgument,
                         "unknown system property '$.mid'"));
  EXPECT_TRUE(failedWith(systemPropertiesFromBus({{"messageId", "x"}}), Errc::InvalidArgument,
                         "unknown system property 'messageId'"));
  EXPECT_TRUE(failedWith(systemPropertiesFromBus({{"to", "x"}}), Errc::InvalidArgument,
                         "unknown system property 'to'"));
}

TEST(SystemPropertiesFromBus, RejectsEmptyValue) {
  EXPECT_TRUE(failedWith(systemPropertiesFromBus({{"content-type", ""}}), Errc::InvalidArgument,
                         "system property 'content-type' is empty (leave it out instead)"));
}

TEST(SystemPropertiesFromBus, LimitsMessageIdTo128AsciiCharacters) {
  EXPECT_TRUE(systemPropertiesFromBus({{"message-id", std::string(128, 'a')}}).has_value());
  EXPECT_TRUE(failedWith(systemPropertiesFromBus({{"message-id", std::string(129, 'a')}}),
                         Errc::InvalidArgument,
                         "system property 'message-id' is longer than 128 characters"));
  EXPECT_TRUE(failedWith(systemPropertiesFromBus({{"message-id", "caf\xC3\xA9"}}),
                         Errc::InvalidArgument,
                         "system property 'message-id' contains a character outside printable "
                         "ASCII"));
}

TEST(ValidateCustomProperties, AcceptsOrdinaryKeys) {
  EXPECT_TRUE(validateCustomProperties(
                  {{"alert level", "high"}, {"a/b", ""}, {"x$", "1"}, {"my-iothub-thing", "1"}})
                  .has_value());
}

TEST(ValidateCustomProperties, RejectsEmptyKey) {
  EXPECT_TRUE(failedWith(validateCustomProperties({{"", "v"}}), Errc::InvalidArgument,
                         "custom property with an empty name"));
}

TEST(ValidateCustomProperties, RejectsDollarPrefix) {
  EXPECT_TRUE(failedWith(validateCustomProperties({{"$.mid", "v"}}), Errc::InvalidArgument,
                         "custom property '$.mid' uses a reserved prefix ('$' or 'iothub-')"));
}

TEST(ValidateCustomProperties, RejectsIothubPrefixInAnyCase) {
  EXPECT_TRUE(failedWith(validateCustomProperties({{"iothub-creation-time-utc", "v"}}),
                         Errc::InvalidArgument,
                         "custom property 'iothub-creation-time-utc' uses a reserved prefix ('$' "
                         "or 'iothub-')"));
  EXPECT_TRUE(failedWith(validateCustomProperties({{"IoTHub-MessageType", "Will"}}),
                         Errc::InvalidArgument,
                         "custom property 'IoTHub-MessageType' uses a reserved prefix ('$' or "
                         "'iothub-')"));
}

TEST(HubMessageSize, CountsBodySystemValuesAndCustomNamesAndValues) {
  OutgoingMessage message;
  message.body = "12345";                                   // 5
  message.properties = {{"ab", "cde"}};                     // 2 + 3
  message.system.messageId = "mid";                         // 3 (name not counted)
  message.system.contentType = "application/json";          // 16
  message.system.creationTimeUtc = "2021-04-21T11:30:16Z";  // 24 + 20 (name counted)
  EXPECT_EQ(hubMessageSize(message), 5u + 5u + 3u + 16u + 24u + 20u);
}

TEST(HubMessageSize, CountsBytesNotCharacters) {
  OutgoingMessage message;
  message.body = "\xC3\xA9";
  EXPECT_EQ(hubMessageSize(message), 2u);
}

TEST(HubMessageSize, ReachesExactlyTheLimit) {
  OutgoingMessage message;
  message.properties = {{"key", "value"}};
  message.system.messageId = "m1";
  message.body = std::string(kMaxTelemetryBytes - 8 - 2, 'x');
  EXPECT_EQ(hubMessageSize(message), 262144u);
  EXPECT_LE(hubMessageSize(message), kMaxTelemetryBytes);
  message.body.push_back('x');
  EXPECT_EQ(hubMessageSize(message), 262145u);
  EXPECT_GT(hubMessageSize(message), kMaxTelemetryBytes);
}

TEST(ValidateOutgoingMessage, AcceptsAMessageAtEveryLimit) {
  OutgoingMessage message;
  message.system.messageId = "m1";
  message.system.contentType = "text/plain";
  for (std::size_t i = 1; i < kMaxMessageProperties; ++i) {
    message.properties["p" + std::to_string(i)] = "v";
  }
  message.properties["p1"] = std::string(kMaxPropertyValueLength, 'v');
  message.properties[std::string(kMaxPropertyNameLength, 'n')] = "v";
  ASSERT_EQ(message.properties.size(), kMaxMessageProperties);
  EXPECT_TRUE(validateOutgoingMessage(message).has_value())
      << errorOf(validateOutgoingMessage(message));
}

TEST(ValidateOutgoingMessage, BoundsTheNumberOfCustomProperties) {
  OutgoingMessage message;
  for (std::size_t i = 0; i <= kMaxMessageProperties; ++i) {
    message.properties["p" + std::to_string(i)] = "v";
  }
  EXPECT_TRUE(failedWith(validateOutgoingMessage(message), Errc::MessageTooLarge,
                         "message has 257 custom properties; the limit is 256"));
}

TEST(ValidateOutgoingMessage, BoundsNamesAndValuesAndCutsHugeNamesInItsMessages) {
  OutgoingMessage message;
  message.properties[std::string(kMaxPropertyNameLength + 1, 'n')] = "v";
  EXPECT_TRUE(failedWith(
      validateOutgoingMessage(message), Errc::MessageTooLarge,
      "custom property name '" + std::string(32, 'n') + "...' is longer than 256 bytes"));
  message.properties = {{"k", std::string(kMaxPropertyValueLength + 1, 'v')}};
  EXPECT_TRUE(failedWith(validateOutgoingMessage(message), Errc::MessageTooLarge,
                         "custom property 'k' has a value longer than 16384 bytes"));
  message.properties.clear();
  message.system.correlationId = std::string(kMaxPropertyValueLength + 1, 'c');
  EXPECT_TRUE(failedWith(validateOutgoingMessage(message), Errc::MessageTooLarge,
                         "system property 'correlation-id' has a value longer than 16384 bytes"));
}

TEST(ValidateOutgoingMessage, AppliesTheCustomPropertyRulesAndTheHubSize) {
  OutgoingMessage message;
  message.properties = {{"$x", "v"}};
  EXPECT_TRUE(failedWith(validateOutgoingMessage(message), Errc::InvalidArgument,
                         "custom property '$x' uses a reserved prefix ('$' or 'iothub-')"));
  message.properties.clear();
  message.body = std::string(kMaxTelemetryBytes + 1, 'x');
  EXPECT_TRUE(failedWith(validateOutgoingMessage(message), Errc::MessageTooLarge,
                         "message is 262145 bytes as IoT Hub counts it; the limit is 262144"));
}

TEST(ValidateOutgoingMessage, KeepsTheEncodedPropertyBagWithinAnMqttTopic) {
  // 200 values of 300 '/' are 60 000 bytes as IoT Hub counts them, but 180 000 encoded (%2F):
  // such a topic could never be published.
  OutgoingMessage message;
  for (int i = 0; i < 200; ++i) {
    message.properties["p" + std::to_string(i)] = std::string(300, '/');
  }
  const auto refused = validateOutgoingMessage(message);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, Errc::MessageTooLarge);
  EXPECT_NE(refused.error().message.find("in the MQTT topic (percent-encoded); the limit is 65245"),
            std::string::npos)
      << refused.error().message;
  // The longest ids leave the largest accepted bag within 65 535 bytes.
  EXPECT_EQ(std::string("devices/").size() + kMaxIdentityIdLength +
                std::string("/modules/").size() + kMaxIdentityIdLength +
                std::string("/messages/events/").size() + kMaxPropertyBagBytes,
            65535u);
}

TEST(CheckOutgoingMessage, EncodesTheBagOnceExactlyAsTheTopicBuilderDoes) {
  OutgoingMessage message;
  message.body = "{}";
  message.properties = {{"alert level", "high"}, {"path", "a/b&c"}};
  message.system.messageId = "m 1";
  message.system.creationTimeUtc = "2021-04-21T11:30:16Z";
  const std::string topic = telemetryTopic("dev1", "", message);
  const std::size_t size = hubMessageSize(message);
  auto checked = checkOutgoingMessage(message);
  ASSERT_TRUE(checked) << errorOf(checked);
  EXPECT_EQ(checked->topic(telemetryTopicPrefix("dev1", "")), topic);
  EXPECT_EQ(checked->propertyBag(),
            "%24.mid=m%201&iothub-creation-time-utc=2021-04-21T11%3A30%3A16Z"
            "&alert%20level=high&path=a%2Fb%26c");
  EXPECT_EQ(checked->customPropertyBag(), "alert%20level=high&path=a%2Fb%26c");
  EXPECT_EQ(checked->hubBytes(), size);
  EXPECT_EQ(checked->messageId(), "m 1");
  EXPECT_EQ(checked->body(), "{}");
  EXPECT_EQ(checked->expiresAt(), std::nullopt);
  EXPECT_EQ(telemetryTopicPrefix("d", "m"), "devices/d/modules/m/messages/events/");
}

TEST(CheckOutgoingMessage, KnowsWhereTheCustomPropertiesStartInEveryShape) {
  OutgoingMessage onlyCustom;
  onlyCustom.system.messageId = "m";
  onlyCustom.properties = {{"k", "v"}};
  auto c = checkOutgoingMessage(onlyCustom);
  ASSERT_TRUE(c) << errorOf(c);
  EXPECT_EQ(c->propertyBag(), "%24.mid=m&k=v");
  EXPECT_EQ(c->customPropertyBag(), "k=v");
  OutgoingMessage noCustom;
  noCustom.system.messageId = "m";
  c = checkOutgoingMessage(noCustom);
  ASSERT_TRUE(c) << errorOf(c);
  EXPECT_EQ(c->customPropertyBag(), "");
}

TEST(CheckOutgoingMessage, NeedsAnIdAndAReadableExpiryOnTopOfTheValidation) {
  OutgoingMessage message;
  message.body = "x";
  EXPECT_TRUE(failedWith(checkOutgoingMessage(message), Errc::InvalidArgument,
                         "a message needs a message id"));
  message.system.messageId = "m1";
  message.system.expiryTimeUtc = "next tuesday";
  EXPECT_TRUE(failedWith(checkOutgoingMessage(message), Errc::InvalidArgument,
                         "system property 'expiry-time-utc' ('next tuesday') is not an ISO 8601 "
                         "UTC time"));
  message.system.expiryTimeUtc = "2030-01-01T00:00:00Z";
  auto checked = checkOutgoingMessage(message);
  ASSERT_TRUE(checked) << errorOf(checked);
  EXPECT_EQ(checked->expiresAt(), 1893456000u);
  message.properties = {{"$.mid", "spoof"}};
  EXPECT_EQ(checkOutgoingMessage(message).error().code, Errc::InvalidArgument);
  message.properties.clear();
  message.body = std::string(kMaxTelemetryBytes, 'x');
  EXPECT_EQ(checkOutgoingMessage(message).error().code, Errc::MessageTooLarge);
}

TEST(RestoreCheckedMessage, RebuildsTheSameMessageFromWhatWasStored) {
  OutgoingMessage message;
  message.body = std::string("bin\0ary", 7);
  message.properties = {{"\xC3\xBC", "100%"}, {"empty", ""}};
  message.system.messageId = "m1";
  message.system.contentType = "application/json";
  message.system.expiryTimeUtc = "2030-01-01T00:00:00Z";
  auto original = checkOutgoingMessage(message);
  ASSERT_TRUE(original) << errorOf(original);
  auto restored = restoreCheckedMessage(original->body(), original->system(),
                                        original->customPropertyBag(), original->hubBytes());
  ASSERT_TRUE(restored) << errorOf(restored);
  EXPECT_EQ(restored->propertyBag(), original->propertyBag());
  EXPECT_EQ(restored->customPropertyBag(), original->customPropertyBag());
  EXPECT_EQ(restored->body(), original->body());
  EXPECT_EQ(restored->hubBytes(), original->hubBytes());
  EXPECT_EQ(restored->expiresAt(), original->expiresAt());
}

TEST(RestoreCheckedMessage, RefusesWhatCouldNotGoOnTheWireAsItIs) {
  SystemProperties system;
  system.messageId = "m1";
  for (const char* bad :
       {"k=v&", "=v", "k", "k=a b", "k=%2f", "k=%2", "k=v&&j=w", "a=b=c", "k=%41"}) {
    EXPECT_EQ(restoreCheckedMessage("x", system, bad, 1).error().code, Errc::Protocol) << bad;
  }
  EXPECT_TRUE(restoreCheckedMessage("x", system, "k=&j=%2F", 1).has_value());
  EXPECT_TRUE(restoreCheckedMessage("x", system, "", 1).has_value());
  SystemProperties noId;
  EXPECT_EQ(restoreCheckedMessage("x", noId, "", 1).error().code, Errc::Protocol);
}

}  // namespace
}  // namespace iothubd::proto
