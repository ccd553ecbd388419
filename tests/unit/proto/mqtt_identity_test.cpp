// SPDX-License-Identifier: MIT
#include "iothubd/proto/mqtt_identity.hpp"

#include <gtest/gtest.h>

#include <string>

#include "test_helpers.hpp"

namespace iothubd::proto {
namespace {

using core::Errc;
using test::failedWith;

constexpr std::string_view kHub = "contoso.azure-devices.net";

TEST(MqttClientId, IsDeviceIdForADevice) {
  EXPECT_EQ(mqttClientId("dev1", ""), "dev1");
}

TEST(MqttClientId, IsDeviceSlashModuleForAModule) {
  EXPECT_EQ(mqttClientId("dev1", "mod1"), "dev1/mod1");
}

TEST(MqttClientId, IsNeverEncoded) {
  EXPECT_EQ(mqttClientId("dev:1@x", "m=1"), "dev:1@x/m=1");
}

TEST(MqttUsername, MatchesDocumentedDeviceForm) {
  EXPECT_EQ(
      mqttUsername(kHub, "dev1", "", "my-daemon/1.0", ""),
      "contoso.azure-devices.net/dev1/?api-version=2021-04-12&DeviceClientType=my-daemon%2F1.0");
}

TEST(MqttUsername, UsesModuleClientId) {
  EXPECT_EQ(mqttUsername(kHub, "dev1", "mod1", "ua", ""),
            "contoso.azure-devices.net/dev1/mod1/?api-version=2021-04-12&DeviceClientType=ua");
}

TEST(MqttUsername, AppendsProductInfoAfterASpace) {
  EXPECT_EQ(mqttUsername(kHub, "dev1", "", "iothubd/0.1.0 (Linux)", "acme-gw/2"),
            "contoso.azure-devices.net/dev1/?api-version=2021-04-12&DeviceClientType="
            "iothubd%2F0.1.0%20%28Linux%29%20acme-gw%2F2");
}

TEST(MqttUsername, SendsDtmiProductInfoAsModelId) {
  EXPECT_EQ(mqttUsername(kHub, "dev1", "mod1", "iothubd/0.1.0", "dtmi:com:example:Thermostat;1"),
            "contoso.azure-devices.net/dev1/mod1/?api-version=2021-04-12&DeviceClientType="
            "iothubd%2F0.1.0&model-id=dtmi%3Acom%3Aexample%3AThermostat%3B1");
}

TEST(MqttUsername, TreatsOnlyDtmiColonPrefixAsModelId) {
  EXPECT_EQ(mqttUsername(kHub, "d", "", "ua", "dtmiX"),
            "contoso.azure-devices.net/d/?api-version=2021-04-12&DeviceClientType=ua%20dtmiX");
}

TEST(MqttUsername, LeavesHostAndIdsUnencoded) {
  EXPECT_EQ(mqttUsername(kHub, "dev:1", "m@1", "ua", ""),
            "contoso.azure-devices.net/dev:1/m@1/?api-version=2021-04-12&DeviceClientType=ua");
}

TEST(MqttUsername, UsesApiVersionConstant) {
  EXPECT_NE(mqttUsername(kHub, "d", "", "ua", "").find("api-version=" + std::string(kApiVersion)),
            std::string::npos);
}

TEST(ValidateDeviceId, AcceptsAllAllowedCharacters) {
  EXPECT_TRUE(validateDeviceId("AZaz09-.%_*?!(),:=@$'").has_value());
}

TEST(ValidateDeviceId, Accepts128Characters) {
  EXPECT_TRUE(validateDeviceId(std::string(128, 'x')).has_value());
}

TEST(ValidateDeviceId, RejectsEmpty) {
  EXPECT_TRUE(failedWith(validateDeviceId(""), Errc::InvalidArgument, "DeviceId is empty"));
}

TEST(ValidateDeviceId, Rejects129Characters) {
  EXPECT_TRUE(failedWith(validateDeviceId(std::string(129, 'x')), Errc::InvalidArgument,
                         "DeviceId is longer than 128 characters"));
}

TEST(ValidateDeviceId, RejectsCharactersThatBreakTopics) {
  EXPECT_TRUE(
      failedWith(validateDeviceId("a/b"), Errc::InvalidArgument,
                 "DeviceId contains '/' at offset 1, which IoT Hub does not allow in an id"));
  EXPECT_TRUE(
      failedWith(validateDeviceId("a+"), Errc::InvalidArgument,
                 "DeviceId contains '+' at offset 1, which IoT Hub does not allow in an id"));
  EXPECT_TRUE(
      failedWith(validateDeviceId("#"), Errc::InvalidArgument,
                 "DeviceId contains '#' at offset 0, which IoT Hub does not allow in an id"));
}

TEST(ValidateDeviceId, ShowsUnprintableCharactersAsHex) {
  EXPECT_TRUE(
      failedWith(validateDeviceId("caf\xC3\xA9"), Errc::InvalidArgument,
                 "DeviceId contains 0xC3 at offset 3, which IoT Hub does not allow in an id"));
  EXPECT_TRUE(
      failedWith(validateDeviceId("a\nb"), Errc::InvalidArgument,
                 "DeviceId contains 0x0A at offset 1, which IoT Hub does not allow in an id"));
}

TEST(ValidateModuleId, NamesModuleIdInMessages) {
  EXPECT_TRUE(validateModuleId("filter-1").has_value());
  EXPECT_TRUE(failedWith(validateModuleId(""), Errc::InvalidArgument, "ModuleId is empty"));
  EXPECT_TRUE(
      failedWith(validateModuleId("a;b"), Errc::InvalidArgument,
                 "ModuleId contains ';' at offset 1, which IoT Hub does not allow in an id"));
}

TEST(ValidateHostName, AcceptsDnsNamesAndIpLiterals) {
  EXPECT_TRUE(validateHostName("contoso.azure-devices.net").has_value());
  EXPECT_TRUE(validateHostName("edge_gw-1.local").has_value());
  EXPECT_TRUE(validateHostName("192.168.1.10").has_value());
  EXPECT_TRUE(validateHostName("[fd00::1]").has_value());
  EXPECT_TRUE(validateHostName(std::string(253, 'h')).has_value());
}

TEST(ValidateHostName, RejectsCharactersThatBreakUsernameOrResource) {
  EXPECT_TRUE(failedWith(validateHostName("h/x"), Errc::InvalidArgument,
                         "HostName contains '/' at offset 1, which is not allowed in a host name"));
  EXPECT_TRUE(
      failedWith(validateHostName("h.example\n"), Errc::InvalidArgument,
                 "HostName contains 0x0A at offset 9, which is not allowed in a host name"));
  EXPECT_TRUE(
      failedWith(validateHostName("h.example\n", "GatewayHostName"), Errc::InvalidArgument,
                 "GatewayHostName contains 0x0A at offset 9, which is not allowed in a host "
                 "name"));
  EXPECT_TRUE(
      failedWith(validateHostName("h x"), Errc::InvalidArgument,
                 "HostName contains 0x20 at offset 1, which is not allowed in a host name"));
}

TEST(ValidateHostName, RejectsEmptyAndTooLong) {
  EXPECT_TRUE(failedWith(validateHostName(""), Errc::InvalidArgument, "HostName is empty"));
  EXPECT_TRUE(failedWith(validateHostName(std::string(254, 'h')), Errc::InvalidArgument,
                         "HostName is longer than 253 characters"));
}

}  // namespace
}  // namespace iothubd::proto
