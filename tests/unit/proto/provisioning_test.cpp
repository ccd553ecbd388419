// SPDX-License-Identifier: MIT
#include "iothubd/proto/provisioning.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "iothubd/proto/sas_token.hpp"
#include "test_helpers.hpp"
#include "vector_file.hpp"

namespace iothubd::proto {
namespace {

using core::Errc;
using core::Secret;
using test::errorOf;
using test::failedWith;

// One line of tests/data/dps_vectors.txt, computed with the openssl CLI (make_dps_vectors.sh).
struct Vector {
  std::string name, groupKey, registrationId, deviceKey, idScope;
  std::uint64_t expiry = 0;
  std::string token;
};

std::vector<Vector> loadVectors() {
  std::vector<Vector> vectors;
  for (const auto& f :
       iothubd::testing::readVectorFile(IOTHUBD_TEST_DATA_DIR "/dps_vectors.txt", 7)) {
    vectors.push_back({f[0], f[1], f[2], f[3], f[4], std::stoull(f[5]), f[6]});
  }
  return vectors;
}

// ---- identity, user name, token ----------------------------------------------------------------

TEST(Provisioning, DerivesGroupDeviceKeysAsTheOpensslCliDoes) {
  const auto vectors = loadVectors();
  ASSERT_EQ(vectors.size(), 2u);
  for (const auto& v : vectors) {
    auto key = deriveGroupDeviceKey(Secret<>(v.groupKey), v.registrationId);
    ASSERT_TRUE(key) << v.name << ": " << errorOf(key);
    EXPECT_EQ(key->reveal(), v.deviceKey) << v.name;
  }
}

TEST(Provisioning, SignsDpsTokensForTheRegistrationAsTheOpensslCliDoes) {
  for (const auto& v : loadVectors()) {
    auto token = makeDpsSasToken(v.idScope, v.registrationId, Secret<>(v.deviceKey), v.expiry);
    ASSERT_TRUE(token) << v.name << ": " << errorOf(token);
    EXPECT_EQ(token->reveal(), v.token) << v.name;
    const auto parsed = parseSasToken(token->reveal()).value();
    EXPECT_EQ(parsed.resourceUri, v.idScope + "/registrations/" + v.registrationId);
    EXPECT_EQ(parsed.keyName, "registration");
  }
}

TEST(Provisioning, RefusesAGroupKeyThatIsNotBase64) {
  EXPECT_TRUE(failedWith(deriveGroupDeviceKey(Secret<>("not a key"), "dev"), Errc::InvalidArgument,
                         "Invalid Symmetric Key"));
  EXPECT_TRUE(failedWith(deriveGroupDeviceKey(Secret<>(""), "dev"), Errc::InvalidArgument,
                         "Invalid Symmetric Key"));
}

TEST(Provisioning, UsernameHasScopeRegistrationApiVersionAndEncodedClientVersion) {
  EXPECT_EQ(dpsUsername("0ne00000A0A", "gw-0017", "iothubd/0.1.0 (Linux 6.1; x86_64)"),
            "0ne00000A0A/registrations/gw-0017/api-version=2021-06-01&ClientVersion="
            "iothubd%2F0.1.0%20%28Linux%206.1%3B%20x86_64%29");
}

TEST(Provisioning, TopicsCarryEncodedRequestAndOperationIds) {
  EXPECT_EQ(dpsRegisterTopic("7"), "$dps/registrations/PUT/iotdps-register/?$rid=7");
  EXPECT_EQ(dpsOperationStatusTopic("8", "4.d0a671905ea5b2c8.e7173b7b-0e54&x"),
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=8&operationId="
            "4.d0a671905ea5b2c8.e7173b7b-0e54%26x");
}

TEST(Provisioning, ValidatesRegistrationIdsByDpsRules) {
  EXPECT_TRUE(validateRegistrationId("sensor.site-3:line_7"));
  EXPECT_TRUE(validateRegistrationId("Gw-"));
  EXPECT_TRUE(
      failedWith(validateRegistrationId(""), Errc::InvalidArgument, "registration id is empty"));
  EXPECT_TRUE(failedWith(validateRegistrationId(std::string(129, 'a')), Errc::InvalidArgument,
                         "registration id is longer than 128 characters"));
  EXPECT_TRUE(failedWith(validateRegistrationId("gw/1"), Errc::InvalidArgument,
                         "registration id contains '/' at offset 2, which DPS does not allow "
                         "(letters, digits, '-', '.', '_', ':')"));
  EXPECT_TRUE(failedWith(validateRegistrationId("gw "), Errc::InvalidArgument,
                         "registration id contains 0x20 at offset 2, which DPS does not allow "
                         "(letters, digits, '-', '.', '_', ':')"));
  EXPECT_TRUE(failedWith(validateRegistrationId("gw."), Errc::InvalidArgument,
                         "registration id contains '.' at offset 2, but DPS wants the last "
                         "character to be a letter, a digit or '-'"));
}

TEST(Provisioning, ValidatesIdScopes) {
  EXPECT_TRUE(validateIdScope("0ne00012345"));
  EXPECT_TRUE(failedWith(validateIdScope(""), Errc::InvalidArgument, "ID scope is empty"));
  EXPECT_TRUE(failedWith(validateIdScope("0ne/1"), Errc::InvalidArgument,
                         "ID scope contains '/' at offset 3, but an ID scope has only letters and "
                         "digits (like 0ne00012345)"));
}

// ---- register payload ------------------------------------------------------------------------

TEST(Provisioning, RegisterPayloadIsTheRegistrationIdAlone) {
  EXPECT_EQ(dpsRegisterPayload("gw-1", "", "").value(), R"({"registrationId":"gw-1"})");
}

TEST(Provisioning, RegisterPayloadCarriesTheCustomPayloadObject) {
  EXPECT_EQ(dpsRegisterPayload("gw-1", R"( {"site": "north", "n": [1, 2.5]} )", "").value(),
            R"({"registrationId":"gw-1","payload":{"site":"north","n":[1,2.5]}})");
}

TEST(Provisioning, RegisterPayloadAddsThePlugAndPlayModelId) {
  EXPECT_EQ(dpsRegisterPayload("gw-1", "", "dtmi:com:example:Thermostat;1").value(),
            R"({"registrationId":"gw-1","payload":{"modelId":"dtmi:com:example:Thermostat;1"}})");
  EXPECT_EQ(dpsRegisterPayload("gw-1", R"({"site":"n"})", "dtmi:a;1").value(),
            R"({"registrationId":"gw-1","payload":{"site":"n","modelId":"dtmi:a;1"}})");
  // The payload may name the same model itself.
  EXPECT_EQ(dpsRegisterPayload("gw-1", R"({"modelId":"dtmi:a;1"})", "dtmi:a;1").value(),
            R"({"registrationId":"gw-1","payload":{"modelId":"dtmi:a;1"}})");
}

TEST(Provisioning, RegisterPayloadRefusesWhatDpsCouldNotUse) {
  EXPECT_TRUE(failedWith(dpsRegisterPayload("gw-1", "[1]", ""), Errc::InvalidArgument,
                         "payload must be a JSON object, got array"));
  EXPECT_TRUE(failedWith(dpsRegisterPayload("gw-1", "{\"a\":", ""), Errc::InvalidArgument,
                         "payload is not valid JSON: invalid JSON at offset 5: Invalid value."));
  EXPECT_TRUE(failedWith(dpsRegisterPayload("gw-1", std::string(65537, ' '), ""),
                         Errc::InvalidArgument, "payload is 65537 bytes; the limit is 65536"));
  EXPECT_TRUE(failedWith(dpsRegisterPayload("gw-1", R"({"modelId":"dtmi:b;1"})", "dtmi:a;1"),
                         Errc::InvalidArgument,
                         "payload names modelId 'dtmi:b;1', but product_info names 'dtmi:a;1'"));
  EXPECT_TRUE(failedWith(dpsRegisterPayload("gw-1", R"({"modelId":7})", "dtmi:a;1"),
                         Errc::InvalidArgument,
                         "payload names modelId a number instead of a string, but product_info "
                         "names 'dtmi:a;1'"));
}

// ---- response topic --------------------------------------------------------------------------

TEST(Provisioning, ParsesResponseTopicsWithAndWithoutRetryAfter) {
  auto accepted = parseDpsResponseTopic("$dps/registrations/res/202/?$rid=1&retry-after=3");
  ASSERT_TRUE(accepted) << errorOf(accepted);
  EXPECT_EQ(accepted->status, 202);
  EXPECT_EQ(accepted->requestId, "1");
  EXPECT_EQ(accepted->retryAfterSeconds, 3u);

  auto done = parseDpsResponseTopic("$dps/registrations/res/200/?$rid=a%2Fb&unknown=x");
  ASSERT_TRUE(done) << errorOf(done);
  EXPECT_EQ(done->status, 200);
  EXPECT_EQ(done->requestId, "a/b");
  EXPECT_FALSE(done->retryAfterSeconds);
}

TEST(Provisioning, SaturatesAHugeRetryAfter) {
  auto topic = parseDpsResponseTopic(
      "$dps/registrations/res/429/?$rid=1&retry-after=99999999999999999999999");
  ASSERT_TRUE(topic) << errorOf(topic);
  EXPECT_EQ(topic->retryAfterSeconds, std::numeric_limits<std::uint64_t>::max());
  EXPECT_EQ(dpsRetryDelay(topic->retryAfterSeconds), kDpsMaxRetryAfter);
}

TEST(Provisioning, RefusesMalformedResponseTopics) {
  const std::pair<const char*, const char*> cases[] = {
      {"$iothub/twin/res/200/?$rid=1", "does not start with $dps/registrations/res/"},
      {"$dps/registrations/res/20/?$rid=1", "has no 3-digit status"},
      {"$dps/registrations/res/2000/?$rid=1", "has no 3-digit status"},
      {"$dps/registrations/res/0200/?$rid=1", "has no 3-digit status"},
      {"$dps/registrations/res/2x0/?$rid=1", "has no 3-digit status"},
      {"$dps/registrations/res/200", "has no '/?' after the status"},
      {"$dps/registrations/res/200/$rid=1", "has no '/?' after the status"},
      {"$dps/registrations/res/200/?retry-after=1", "has no $rid"},
      {"$dps/registrations/res/200/?$rid=", "has no $rid"},
      {"$dps/registrations/res/200/?$rid=1&$rid=2", "repeats a key"},
      {"$dps/registrations/res/200/?$rid=%zz", "has a malformed %-escape"},
      {"$dps/registrations/res/202/?$rid=1&retry-after=-1",
       "has a retry-after that is not a number of seconds"},
      {"$dps/registrations/res/202/?$rid=1&retry-after=",
       "has a retry-after that is not a number of seconds"},
  };
  for (const auto& [topic, why] : cases) {
    EXPECT_TRUE(failedWith(parseDpsResponseTopic(topic), Errc::Protocol,
                           std::string("DPS response topic ") + why))
        << topic;
  }
}

TEST(Provisioning, RetryDelayIsBoundedAndDefaultsToTwoSeconds) {
  EXPECT_EQ(dpsRetryDelay(std::nullopt), std::chrono::seconds(2));
  EXPECT_EQ(dpsRetryDelay(0), std::chrono::seconds(1));
  EXPECT_EQ(dpsRetryDelay(3), std::chrono::seconds(3));
  EXPECT_EQ(dpsRetryDelay(301), std::chrono::seconds(300));
}

TEST(Provisioning, ClassifiesStatusesAsTheSdksDo) {
  EXPECT_EQ(classifyDpsStatus(200), DpsStatusClass::Ok);
  EXPECT_EQ(classifyDpsStatus(202), DpsStatusClass::Accepted);
  EXPECT_EQ(classifyDpsStatus(400), DpsStatusClass::BadRequest);
  EXPECT_EQ(classifyDpsStatus(401), DpsStatusClass::Unauthorized);
  EXPECT_EQ(classifyDpsStatus(404), DpsStatusClass::NotFound);
  EXPECT_EQ(classifyDpsStatus(429), DpsStatusClass::Throttled);
  EXPECT_EQ(classifyDpsStatus(500), DpsStatusClass::ServerError);
  EXPECT_EQ(classifyDpsStatus(503), DpsStatusClass::ServerError);
  EXPECT_EQ(classifyDpsStatus(412), DpsStatusClass::OtherClientError);
  EXPECT_EQ(classifyDpsStatus(302), DpsStatusClass::OtherClientError);
  EXPECT_EQ(classifyDpsStatus(204), DpsStatusClass::OtherClientError);
}

// ---- operation status ------------------------------------------------------------------------

TEST(Provisioning, ParsesTheAssigningAnswer) {
  auto op = parseDpsOperation(
      R"({"operationId":"4.d0a671905ea5b2c8.e7173b7b-0e54-4aa0-9d20-aeb1b89e6c7d",)"
      R"("status":"assigning"})");
  ASSERT_TRUE(op) << errorOf(op);
  EXPECT_EQ(op->operationId, "4.d0a671905ea5b2c8.e7173b7b-0e54-4aa0-9d20-aeb1b89e6c7d");
  EXPECT_EQ(op->status, DpsOperationStatus::Assigning);
  EXPECT_FALSE(op->registrationState);
}

TEST(Provisioning, ParsesTheFinalAssignment) {
  // As documented for DeviceRegistrationResult ([embedded-c] comment, DPS REST reference).
  auto op = parseDpsOperation(R"({
    "operationId":"4.d0a671905ea5b2c8.e7173b7b","status":"assigned",
    "registrationState":{"x509":{},"registrationId":"paho-sample-device1",
      "createdDateTimeUtc":"2020-04-10T03:11:13.0276997Z","assignedHub":"contoso.azure-devices.net",
      "deviceId":"paho-sample-device1","status":"assigned","substatus":"initialAssignment",
      "lastUpdatedDateTimeUtc":"2020-04-10T03:11:13.2096201Z","etag":"IjYxMDA4ZDQ2",
      "payload":{"config":{"interval":5}}}})");
  ASSERT_TRUE(op) << errorOf(op);
  EXPECT_EQ(op->status, DpsOperationStatus::Assigned);
  ASSERT_TRUE(op->registrationState);
  const auto& s = *op->registrationState;
  EXPECT_EQ(s.registrationId, "paho-sample-device1");
  EXPECT_EQ(s.assignedHub, "contoso.azure-devices.net");
  EXPECT_EQ(s.deviceId, "paho-sample-device1");
  EXPECT_EQ(s.status, "assigned");
  EXPECT_EQ(s.substatus, "initialAssignment");
  EXPECT_EQ(s.createdDateTimeUtc, "2020-04-10T03:11:13.0276997Z");
  EXPECT_EQ(s.lastUpdatedDateTimeUtc, "2020-04-10T03:11:13.2096201Z");
  EXPECT_EQ(s.errorCode, 0u);
  EXPECT_EQ(s.payload, R"({"config":{"interval":5}})");
}

TEST(Provisioning, ParsesAFailedAssignmentWithItsError) {
  auto op = parseDpsOperation(R"({"operationId":"op","status":"failed",
    "registrationState":{"registrationId":"gw-1","status":"failed","errorCode":400207,
      "errorMessage":"Custom allocation failed with status code: 400",
      "lastUpdatedDateTimeUtc":"2024-01-01T00:00:00Z"}})");
  ASSERT_TRUE(op) << errorOf(op);
  EXPECT_EQ(op->status, DpsOperationStatus::Failed);
  EXPECT_EQ(op->registrationState->errorCode, 400207u);
  EXPECT_EQ(op->registrationState->errorMessage, "Custom allocation failed with status code: 400");
}

TEST(Provisioning, ComparesTheOperationStatusWithoutCase) {
  EXPECT_EQ(parseDpsOperation(R"({"operationId":"o","status":"Disabled"})")->status,
            DpsOperationStatus::Disabled);
  EXPECT_EQ(parseDpsOperation(R"({"operationId":"o","status":"UNASSIGNED"})")->status,
            DpsOperationStatus::Unassigned);
}

TEST(Provisioning, RefusesAnAssignmentItCouldNotConnectTo) {
  const std::pair<const char*, const char*> cases[] = {
      {R"({"operationId":"o","status":"assigned"})", "DPS assignment has no registrationState"},
      {R"({"operationId":"o","status":"assigned","registrationState":{"deviceId":"d"}})",
       "DPS assignment 'assignedHub': HostName is empty"},
      {R"({"operationId":"o","status":"assigned","registrationState":)"
       R"({"assignedHub":"evil host","deviceId":"d"}})",
       "DPS assignment 'assignedHub': HostName contains 0x20 at offset 4, which is not allowed "
       "in a host name"},
      {R"({"operationId":"o","status":"assigned","registrationState":)"
       R"({"assignedHub":"h.example","deviceId":"a/b"}})",
       "DPS assignment 'deviceId': DeviceId contains '/' at offset 1, which IoT Hub does not "
       "allow in an id"},
  };
  for (const auto& [json, why] : cases) {
    EXPECT_TRUE(failedWith(parseDpsOperation(json), Errc::Protocol, why)) << json;
  }
}

TEST(Provisioning, RefusesMalformedOperationBodies) {
  const std::pair<const char*, const char*> cases[] = {
      {"", "DPS response: invalid JSON at offset 0: The document is empty."},
      {"[]", "DPS response is a JSON array, not an object"},
      {R"({"status":"assigning"})", "DPS response lacks 'operationId'"},
      {R"({"operationId":"","status":"assigning"})", "DPS response lacks 'operationId'"},
      {R"({"operationId":"o"})", "DPS response lacks 'status'"},
      {R"({"operationId":1,"status":"assigning"})",
       "DPS response 'operationId' is number, not a string"},
      {R"({"operationId":"o","status":"weird"})", "DPS response 'status' is 'weird'"},
      {R"({"operationId":"o","status":"assigning","registrationState":[]})",
       "DPS response 'registrationState' is a array, not an object"},
      {R"({"operationId":"o","status":"failed","registrationState":{"errorCode":"x"}})",
       "DPS registrationState 'errorCode' is not a number"},
  };
  for (const auto& [json, why] : cases) {
    EXPECT_TRUE(failedWith(parseDpsOperation(json), Errc::Protocol, why)) << json;
  }
}

// ---- error bodies ----------------------------------------------------------------------------

TEST(Provisioning, ExplainsAnErrorAnswerWithItsCodeAndTrackingId) {
  // As DPS answered an MQTT register with a wrong key (MicrosoftDocs/azure-docs#43157).
  const auto error = parseDpsServiceError(
      R"({"errorCode":401000,"trackingId":"2cb8f317-10f5-44f4-a5a6-380a998146e9",)"
      R"("message":"Unauthorized","timestampUtc":"2019-11-19T21:39:05.1573304Z"})");
  EXPECT_EQ(error.errorCode, 401000u);
  EXPECT_EQ(error.trackingId, "2cb8f317-10f5-44f4-a5a6-380a998146e9");
  EXPECT_EQ(error.timestampUtc, "2019-11-19T21:39:05.1573304Z");
  EXPECT_EQ(describeDpsError(401, error),
            "401 Unauthorized (errorCode 401000: Unauthorized, trackingId "
            "2cb8f317-10f5-44f4-a5a6-380a998146e9)");
}

TEST(Provisioning, ExplainsAnErrorAnswerWithoutABody) {
  EXPECT_EQ(describeDpsError(503, parseDpsServiceError("<html>")), "503 Service Unavailable");
  EXPECT_EQ(describeDpsError(418, parseDpsServiceError(R"({"errorCode":"x"})")), "418");
}

}  // namespace
}  // namespace iothubd::proto
