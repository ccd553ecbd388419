// SPDX-License-Identifier: MIT
#include "iothubd/proto/connection_string.hpp"

#include <gtest/gtest.h>

#include <sstream>
#include <string>

#include "iothubd/proto/sas_token.hpp"
#include "test_helpers.hpp"

namespace iothubd::proto {
namespace {

using core::Errc;
using test::errorOf;
using test::failedWith;

// A random test key (no hub knows it); it also appears in tests/data/sas_vectors.txt.
#define TEST_KEY "UxJ3yLCg3tYdAqzP1Spzsp5BMHcY2nBNRL3Pbv541Pc="
constexpr std::string_view kKey = TEST_KEY;

std::string tokenFor(std::string_view uri) {
  return makeSasToken(uri, core::Secret<>(std::string(kKey)), 1735689600).value().reveal();
}

TEST(ConnectionString, ParsesDeviceKeyString) {
  const auto cs = parseConnectionString(
      "HostName=contoso.azure-devices.net;DeviceId=dev1;SharedAccessKey=" TEST_KEY);
  ASSERT_TRUE(cs.has_value()) << errorOf(cs);
  EXPECT_EQ(cs->hostName, "contoso.azure-devices.net");
  EXPECT_EQ(cs->deviceId, "dev1");
  EXPECT_EQ(cs->moduleId, "");
  EXPECT_EQ(cs->gatewayHostName, "");
  EXPECT_EQ(cs->sharedAccessKeyName, "");
  EXPECT_EQ(cs->sharedAccessKey.reveal(), kKey);  // keeps its '=' padding
  EXPECT_TRUE(cs->sharedAccessSignature.empty());
  EXPECT_FALSE(cs->x509);
}

TEST(ConnectionString, AcceptsKeysInAnyOrder) {
  const auto cs = parseConnectionString("SharedAccessKey=" TEST_KEY
                                        ";DeviceId=dev1;HostName=contoso.azure-devices.net");
  ASSERT_TRUE(cs.has_value()) << errorOf(cs);
  EXPECT_EQ(cs->deviceId, "dev1");
}

TEST(ConnectionString, AcceptsOneTrailingSemicolon) {
  const auto cs =
      parseConnectionString("HostName=h.example;DeviceId=dev1;SharedAccessKey=" TEST_KEY ";");
  ASSERT_TRUE(cs.has_value()) << errorOf(cs);
  EXPECT_EQ(cs->sharedAccessKey.reveal(), kKey);
}

TEST(ConnectionString, ParsesModuleStringWithGateway) {
  const auto cs = parseConnectionString(
      "HostName=h.example;DeviceId=edge1;ModuleId=filter;SharedAccessKey=" TEST_KEY
      ";GatewayHostName=edge.local");
  ASSERT_TRUE(cs.has_value()) << errorOf(cs);
  EXPECT_EQ(cs->moduleId, "filter");
  EXPECT_EQ(cs->gatewayHostName, "edge.local");
}

TEST(ConnectionString, AcceptsIpLiteralGateway) {
  const auto cs =
      parseConnectionString("HostName=h.example;DeviceId=d;x509=true;GatewayHostName=[fd00::1]");
  ASSERT_TRUE(cs.has_value()) << errorOf(cs);
  EXPECT_EQ(cs->gatewayHostName, "[fd00::1]");
}

TEST(ConnectionString, ParsesX509String) {
  const auto cs = parseConnectionString("HostName=h.example;DeviceId=dev1;x509=true");
  ASSERT_TRUE(cs.has_value()) << errorOf(cs);
  EXPECT_TRUE(cs->x509);
  EXPECT_TRUE(cs->sharedAccessKey.empty());
}

TEST(ConnectionString, AcceptsSharedAccessSignatureAsNonRenewableToken) {
  const std::string token = tokenFor("h.example/devices/dev1");
  const auto cs =
      parseConnectionString("HostName=h.example;DeviceId=dev1;SharedAccessSignature=" + token);
  ASSERT_TRUE(cs.has_value()) << errorOf(cs);
  EXPECT_EQ(cs->sharedAccessSignature.reveal(), token);  // keeps every '=' after the first
  EXPECT_TRUE(cs->sharedAccessKey.empty());
}

TEST(ConnectionString, AcceptsModuleSharedAccessSignature) {
  const auto cs =
      parseConnectionString("HostName=h.example;DeviceId=dev1;ModuleId=m1;SharedAccessSignature=" +
                            tokenFor("h.example/devices/dev1/modules/m1"));
  ASSERT_TRUE(cs.has_value()) << errorOf(cs);
}

TEST(ConnectionString, AcceptsEveryCharacterIoTHubAllowsInIds) {
  const auto cs = parseConnectionString(
      "HostName=h;DeviceId=a-.%_*?!(),:=@$'Z9;ModuleId=m-.%_*?!(),:=@$'Z9;x509=true");
  ASSERT_TRUE(cs.has_value()) << errorOf(cs);
  EXPECT_EQ(cs->deviceId, "a-.%_*?!(),:=@$'Z9");
}

TEST(ConnectionString, KeepsSecretsRedactedWhenPrinted) {
  const auto cs =
      parseConnectionString("HostName=h;DeviceId=dev1;SharedAccessKey=" TEST_KEY).value();
  std::ostringstream out;
  out << cs.sharedAccessKey << cs.sharedAccessSignature;
  EXPECT_EQ(out.str(), "******");
}

struct BadString {
  std::string text;
  std::string reason;  // after "Invalid Connection String - "
};

class ConnectionStringRejects : public ::testing::TestWithParam<BadString> {};

TEST_P(ConnectionStringRejects, WithItsOwnMessage) {
  const auto cs = parseConnectionString(GetParam().text);
  EXPECT_TRUE(
      failedWith(cs, Errc::InvalidArgument, "Invalid Connection String - " + GetParam().reason));
  // Never quote the key (or any secret) back.
  if (!cs) {
    EXPECT_EQ(cs.error().message.find(kKey.substr(0, 20)), std::string::npos);
    EXPECT_EQ(cs.error().message.find("sig="), std::string::npos);
  }
}

const std::string kToken = tokenFor("h/devices/dev1");

INSTANTIATE_TEST_SUITE_P(
    EachInvalidShape, ConnectionStringRejects,
    ::testing::Values(
        BadString{"", "empty string"}, BadString{";", "segment 1 is empty"},
        BadString{"HostName=h;;DeviceId=dev1;x509=true", "segment 2 is empty"},
        BadString{"HostName=h;DeviceId=dev1;x509=true;;", "segment 4 is empty"},
        BadString{"HostName=h;DeviceId;SharedAccessKey=" TEST_KEY, "segment 2 has no '='"},
        // A pasted key looks like "name=" because of its padding; it must not be quoted back.
        BadString{"HostName=h;DeviceId=dev1;" TEST_KEY,
                  "unknown key (name not shown, it may be a secret) in segment 3"},
        BadString{"HostName=h;=dev1;SharedAccessKey=" TEST_KEY, "segment 2 has an empty key"},
        BadString{"HostName=h;DeviceId=a;DeviceId=b;SharedAccessKey=" TEST_KEY,
                  "duplicate key 'DeviceId'"},
        BadString{"hostname=h;DeviceId=dev1;SharedAccessKey=" TEST_KEY,
                  "unknown key 'hostname' (keys are case-sensitive: did you mean 'HostName'?)"},
        BadString{"HostName=h;DeviceId=dev1;SharedAccessKey=" TEST_KEY ";Color=red",
                  "unknown key 'Color' in segment 4"},
        BadString{"HostName=h;DeviceId=dev1;X509=true",
                  "unknown key 'X509' (keys are case-sensitive: did you mean 'x509'?)"},
        BadString{"HostName=h;DeviceId=dev1;UseProvisioning=true",
                  "unknown key 'UseProvisioning' in segment 3"},
        BadString{"HostName=;DeviceId=dev1;SharedAccessKey=" TEST_KEY, "empty value for HostName"},
        BadString{"HostName=h;DeviceId=;SharedAccessKey=" TEST_KEY, "empty value for DeviceId"},
        BadString{"HostName=h;DeviceId=dev1;ModuleId=;x509=true", "empty value for ModuleId"},
        BadString{"HostName=h;DeviceId=dev1;SharedAccessKey=", "empty value for SharedAccessKey"},
        BadString{"HostName=h;DeviceId=dev1;SharedAccessSignature=",
                  "empty value for SharedAccessSignature"},
        BadString{"HostName=h;DeviceId=dev1;x509=true;GatewayHostName=",
                  "empty value for GatewayHostName"},
        BadString{"HostName=h;DeviceId=dev1;x509=", "empty value for x509"},
        BadString{"HostName=h;DeviceId=dev1;x509=false", "x509 must be 'true' when present"},
        BadString{"HostName=h;DeviceId=dev1;x509=True", "x509 must be 'true' when present"},
        BadString{"HostName=h;DeviceId=dev1;SharedAccessKey=" TEST_KEY ";x509=true",
                  "Mixed authentication scheme: SharedAccessKey together with x509"},
        BadString{
            "HostName=h;DeviceId=dev1;SharedAccessKey=" TEST_KEY ";SharedAccessSignature=" + kToken,
            "Mixed authentication scheme: SharedAccessKey together with "
            "SharedAccessSignature"},
        BadString{"HostName=h;DeviceId=dev1;x509=true;SharedAccessSignature=" + kToken,
                  "Mixed authentication scheme: SharedAccessSignature together with x509"},
        BadString{"DeviceId=dev1;SharedAccessKey=" TEST_KEY, "missing HostName"},
        BadString{"HostName=h;SharedAccessKey=" TEST_KEY, "missing DeviceId"},
        BadString{"HostName=h;SharedAccessKeyName=iothubowner;SharedAccessKey=" TEST_KEY,
                  "missing DeviceId: HostName with SharedAccessKeyName is a service (shared "
                  "access policy) connection string, not a device connection string"},
        BadString{"HostName=h;DeviceId=dev1;SharedAccessKeyName=device;SharedAccessKey=" TEST_KEY,
                  "SharedAccessKeyName is not allowed in a device connection string (shared "
                  "access policy keys are for services, not devices)"},
        BadString{"HostName=h;DeviceId=dev1",
                  "no credential: one of SharedAccessKey, SharedAccessSignature or x509=true is "
                  "required"},
        BadString{"HostName=h;DeviceId=dev1;GatewayHostName=g",
                  "no credential: one of SharedAccessKey, SharedAccessSignature or x509=true is "
                  "required"},
        BadString{"HostName=h;DeviceId=dev1;SharedAccessKey=not!base64",
                  "SharedAccessKey is not valid base64"},
        BadString{"HostName=h;DeviceId=dev1;SharedAccessKey=" TEST_KEY "x",
                  "SharedAccessKey is not valid base64"},
        BadString{"HostName=h;DeviceId=dev1;SharedAccessKey====",
                  "SharedAccessKey is not valid base64"},
        BadString{"HostName=h;DeviceId=dev1;SharedAccessSignature=sr=h&sig=abc&se=1",
                  "SharedAccessSignature is not a valid SAS token: SAS token does not start "
                  "with 'SharedAccessSignature '"},
        BadString{"HostName=h;DeviceId=dev1;SharedAccessSignature=SharedAccessSignature "
                  "sr=h%2Fdevices%2Fdev1&sig=abc",
                  "SharedAccessSignature is not a valid SAS token: SAS token is missing field "
                  "'se'"},
        BadString{"HostName=h;DeviceId=dev2;SharedAccessSignature=" + kToken,
                  "SharedAccessSignature does not match: SAS token is for device 'dev1', not "
                  "'dev2'"},
        BadString{"HostName=other;DeviceId=dev1;SharedAccessSignature=" + kToken,
                  "SharedAccessSignature does not match: SAS token is for hub 'h', not 'other'"},
        BadString{"HostName=h;DeviceId=dev1;ModuleId=m1;SharedAccessSignature=" + kToken,
                  "SharedAccessSignature does not match: SAS token is for the device itself, "
                  "not module 'm1'"},
        BadString{"HostName=h.example/x;DeviceId=dev1;x509=true",
                  "HostName contains '/' at offset 9, which is not allowed in a host name"},
        BadString{"HostName=h;DeviceId=dev1;x509=true;GatewayHostName=edge local",
                  "GatewayHostName contains 0x20 at offset 4, which is not allowed in a host name"},
        BadString{"HostName=h;DeviceId=dev/1;x509=true",
                  "DeviceId contains '/' at offset 3, which IoT Hub does not allow in an id"},
        BadString{"HostName=h;DeviceId=dev 1;x509=true",
                  "DeviceId contains 0x20 at offset 3, which IoT Hub does not allow in an id"},
        BadString{"HostName=h;DeviceId=dev1;ModuleId=m#1;x509=true",
                  "ModuleId contains '#' at offset 1, which IoT Hub does not allow in an id"},
        BadString{"HostName=h;DeviceId=" + std::string(129, 'd') + ";x509=true",
                  "DeviceId is longer than 128 characters"}));

}  // namespace
}  // namespace iothubd::proto
