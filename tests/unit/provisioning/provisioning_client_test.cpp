// SPDX-License-Identifier: MIT
#include "iothubd/provisioning/provisioning_client.hpp"

#include <gtest/gtest.h>

#include <optional>
#include <string>

#include "fake_mqtt_transport.hpp"
#include "iothubd/proto/sas_token.hpp"
#include "manual_scheduler.hpp"

namespace iothubd::provisioning {
namespace {

using namespace std::chrono_literals;
using fakes::FakeMqttTransport;
using fakes::ManualScheduler;

constexpr const char* kKey = "dGhpcy1pcy1hLXRlc3Qta2V5LW9mLTMyLWJ5dGVzISE=";
constexpr const char* kAssigning =
    R"({"operationId":"4.d0a671905ea5b2c8.e7173b7b","status":"assigning"})";
constexpr const char* kAssigned =
    R"({"operationId":"4.d0a671905ea5b2c8.e7173b7b","status":"assigned",)"
    R"("registrationState":{"registrationId":"gw-17","assignedHub":"hub-b.azure-devices.net",)"
    R"("deviceId":"gw-17","status":"assigned","substatus":"deviceDataMigrated",)"
    R"("createdDateTimeUtc":"2024-05-01T10:00:00Z","lastUpdatedDateTimeUtc":"2024-05-01T10:00:03Z",)"
    R"("payload":{"site":"north"}}})";

class ProvisioningClientTest : public ::testing::Test {
 protected:
  static ProvisioningOptions options() {
    ProvisioningOptions o;
    o.idScope = "0ne00000A0A";
    o.registrationId = "gw-17";
    o.deviceKey = core::Secret<>(kKey);
    o.userAgent = "iothubd/test";
    o.tls.caFile = "/etc/dps-ca.pem";
    o.requestTimeout = 30s;
    o.timeout = 300s;
    return o;
  }
  ProvisioningClient& make(ProvisioningOptions o = options()) {
    client_.emplace(clock_, clock_, transport_, std::move(o));
    return *client_;
  }
  /// Starts a registration; the outcome lands in outcome_.
  void start() {
    client_->registerDevice([this](const Outcome& o) { outcome_ = o; });
  }
  /// Connects and subscribes: the register request is out afterwards.
  void connectAndSubscribe() {
    transport_.acceptConnect();
    transport_.suback(transport_.lastSubscribeMid);
  }
  /// Answers the latest request.
  void answer(int status, const std::string& body, std::optional<int> retryAfter = {}) {
    ASSERT_FALSE(transport_.published.empty());
    std::string topic = "$dps/registrations/res/" + std::to_string(status) +
                        "/?$rid=" + FakeMqttTransport::ridOf(transport_.published.back().topic);
    // The rid is the last query value of a register topic, but not of a status topic.
    topic = topic.substr(0, topic.find("&operationId="));
    if (retryAfter) {
      topic += "&retry-after=" + std::to_string(*retryAfter);
    }
    transport_.deliver(topic, body);
    clock_.runPosted();
  }
  const FakeMqttTransport::Published& lastPublished() const { return transport_.published.back(); }
  [[nodiscard]] const Failure& failure() const { return outcome_->error(); }

  ManualScheduler clock_;
  FakeMqttTransport transport_;
  std::optional<ProvisioningClient> client_;
  std::optional<Outcome> outcome_;
};

TEST_F(ProvisioningClientTest, ConnectsToTheGlobalEndpointAsTheSdksDo) {
  make();
  start();
  ASSERT_EQ(transport_.connects.size(), 1u);
  const auto& c = transport_.connects[0];
  EXPECT_EQ(c.host, "global.azure-devices-provisioning.net");
  EXPECT_EQ(c.port, 8883);
  EXPECT_EQ(c.clientId, "gw-17");
  EXPECT_EQ(c.username,
            "0ne00000A0A/registrations/gw-17/api-version=2021-06-01&ClientVersion=iothubd%2Ftest");
  EXPECT_EQ(c.tls.caFile, "/etc/dps-ca.pem");
  const auto token = proto::parseSasToken(c.password.reveal());
  ASSERT_TRUE(token) << token.error().message;
  EXPECT_EQ(token->resourceUri, "0ne00000A0A/registrations/gw-17");
  EXPECT_EQ(token->keyName, "registration");
  EXPECT_EQ(token->expiry, clock_.unixSeconds() + 3600);
  EXPECT_EQ(c.password.reveal(),
            proto::makeDpsSasToken("0ne00000A0A", "gw-17", core::Secret<>(kKey), token->expiry)
                ->reveal());
}

TEST_F(ProvisioningClientTest, RegistersOnlyOnceSubscribedToTheAnswers) {
  make();
  start();
  transport_.acceptConnect();
  ASSERT_EQ(transport_.subscriptions.size(), 1u);
  EXPECT_EQ(transport_.subscriptions[0], "$dps/registrations/res/#");
  EXPECT_TRUE(transport_.published.empty());
  transport_.suback(transport_.lastSubscribeMid);
  ASSERT_EQ(transport_.published.size(), 1u);
  EXPECT_EQ(lastPublished().topic, "$dps/registrations/PUT/iotdps-register/?$rid=1");
  EXPECT_EQ(lastPublished().payload, R"({"registrationId":"gw-17"})");
  EXPECT_EQ(lastPublished().qos, 1);
}

TEST_F(ProvisioningClientTest, SendsTheCustomPayloadAndModelId) {
  auto o = options();
  o.payloadJson = R"({"site":"north"})";
  o.modelId = "dtmi:com:example:Gateway;1";
  make(std::move(o));
  start();
  connectAndSubscribe();
  EXPECT_EQ(lastPublished().payload, R"({"registrationId":"gw-17","payload":{"site":"north",)"
                                     R"("modelId":"dtmi:com:example:Gateway;1"}})");
}

TEST_F(ProvisioningClientTest, PollsAfterRetryAfterAndCompletesWithTheAssignment) {
  make();
  start();
  connectAndSubscribe();
  answer(202, kAssigning, 3);
  clock_.advance(2900ms);
  EXPECT_EQ(transport_.published.size(), 1u) << "polled before retry-after";
  clock_.advance(100ms);
  ASSERT_EQ(transport_.published.size(), 2u);
  EXPECT_EQ(lastPublished().topic,
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId="
            "4.d0a671905ea5b2c8.e7173b7b");
  EXPECT_EQ(lastPublished().payload, "");
  answer(202, kAssigning, 1);
  clock_.advance(1s);
  ASSERT_EQ(transport_.published.size(), 3u);
  EXPECT_FALSE(outcome_);
  answer(200, kAssigned);
  ASSERT_TRUE(outcome_);
  ASSERT_TRUE(outcome_->has_value()) << failure().error.message;
  const Assignment& a = **outcome_;
  EXPECT_EQ(a.assignedHub, "hub-b.azure-devices.net");
  EXPECT_EQ(a.deviceId, "gw-17");
  EXPECT_EQ(a.substatus, "deviceDataMigrated");
  EXPECT_EQ(a.registrationId, "gw-17");
  EXPECT_EQ(a.lastUpdatedDateTimeUtc, "2024-05-01T10:00:03Z");
  EXPECT_EQ(a.payload, R"({"site":"north"})");
  EXPECT_TRUE(transport_.disconnectRequested) << "the DPS connection stays open";
  EXPECT_FALSE(client_->active());
}

TEST_F(ProvisioningClientTest, PollsEveryTwoSecondsWithoutRetryAfter) {
  make();
  start();
  connectAndSubscribe();
  answer(202, kAssigning);
  clock_.advance(1999ms);
  EXPECT_EQ(transport_.published.size(), 1u);
  clock_.advance(1ms);
  EXPECT_EQ(transport_.published.size(), 2u);
}

TEST_F(ProvisioningClientTest, BoundsTheRetryAfterDpsAsksFor) {
  make();
  start();
  connectAndSubscribe();
  answer(202, kAssigning, 100000);
  clock_.advance(300s);
  EXPECT_EQ(transport_.published.size(), 2u) << "waited longer than 300 s";
}

TEST_F(ProvisioningClientTest, CompletesOnlyAfterTheCurrentCallbackReturns) {
  make();
  start();
  connectAndSubscribe();
  transport_.deliver("$dps/registrations/res/200/?$rid=1", kAssigned);
  EXPECT_FALSE(outcome_) << "completed from inside the transport's callback";
  clock_.runPosted();
  EXPECT_TRUE(outcome_);
}

TEST_F(ProvisioningClientTest, WrongKeyEndsWithBadCredentialsAndNoRetry) {
  make();
  start();
  connectAndSubscribe();
  answer(401, R"({"errorCode":401002,"trackingId":"8ad0463c","message":"Unauthorized",)"
              R"("timestampUtc":"2020-04-10T05:24:22.4718526Z"})");
  ASSERT_TRUE(outcome_);
  ASSERT_FALSE(outcome_->has_value());
  EXPECT_EQ(failure().kind, FailureKind::BadCredentials);
  EXPECT_FALSE(failure().transient());
  EXPECT_EQ(failure().error.code, core::Errc::Unauthorized);
  EXPECT_EQ(failure().error.sysErrno, 401);
  EXPECT_EQ(failure().details.errorCode, 401002u);
  EXPECT_EQ(failure().details.trackingId, "8ad0463c");
  EXPECT_EQ(failure().error.message,
            "DPS refused the credentials of registration \"gw-17\": 401 Unauthorized (errorCode "
            "401002: Unauthorized, trackingId 8ad0463c)");
  EXPECT_TRUE(transport_.disconnectRequested);
  clock_.advance(1h);
  EXPECT_EQ(transport_.published.size(), 1u);
  EXPECT_EQ(transport_.connects.size(), 1u);
}

TEST_F(ProvisioningClientTest, UnknownRegistrationEndsWithItsOwnKind) {
  make();
  start();
  connectAndSubscribe();
  answer(404, R"({"errorCode":404201,"message":"Enrollment not found"})");
  ASSERT_TRUE(outcome_ && !outcome_->has_value());
  EXPECT_EQ(failure().kind, FailureKind::UnknownRegistration);
  EXPECT_EQ(failure().error.code, core::Errc::NotFound);
  EXPECT_EQ(failure().error.message,
            "DPS has no enrollment for registration \"gw-17\": 404 Not Found (errorCode 404201: "
            "Enrollment not found)");
}

TEST_F(ProvisioningClientTest, BadRequestEndsTheRegistration) {
  make();
  start();
  connectAndSubscribe();
  answer(400, R"({"errorCode":400004,"message":"Invalid request"})");
  ASSERT_TRUE(outcome_ && !outcome_->has_value());
  EXPECT_EQ(failure().kind, FailureKind::BadRequest);
  EXPECT_EQ(failure().error.code, core::Errc::Service);
}

TEST_F(ProvisioningClientTest, ThrottlingIsRetriedAfterRetryAfter) {
  make();
  start();
  connectAndSubscribe();
  answer(429, R"({"errorCode":429001,"message":"Operations are being throttled"})", 5);
  EXPECT_FALSE(outcome_);
  clock_.advance(4900ms);
  EXPECT_EQ(transport_.published.size(), 1u);
  clock_.advance(100ms);
  ASSERT_EQ(transport_.published.size(), 2u);
  EXPECT_EQ(lastPublished().topic, "$dps/registrations/PUT/iotdps-register/?$rid=2");
  EXPECT_EQ(transport_.connects.size(), 1u) << "the connection is kept";
  answer(202, kAssigning, 1);
  clock_.advance(1s);
  // A throttled poll repeats the poll, not the registration.
  answer(429, "", 2);
  clock_.advance(2s);
  EXPECT_NE(lastPublished().topic.find("iotdps-get-operationstatus/?$rid=4&operationId="),
            std::string::npos)
      << lastPublished().topic;
  answer(200, kAssigned);
  ASSERT_TRUE(outcome_ && outcome_->has_value());
}

TEST_F(ProvisioningClientTest, ServerErrorsAreRetriedWithGrowingBackoff) {
  make();
  start();
  connectAndSubscribe();
  answer(503, "");
  clock_.advance(999ms);
  EXPECT_EQ(transport_.published.size(), 1u) << "retried before the first backoff";
  clock_.advance(201ms);  // 1 s + up to 20 % jitter
  ASSERT_EQ(transport_.published.size(), 2u);
  answer(500, "");
  clock_.advance(1999ms);
  EXPECT_EQ(transport_.published.size(), 2u) << "the backoff did not double";
  clock_.advance(401ms);
  ASSERT_EQ(transport_.published.size(), 3u);
  // A retry-after with the 5xx wins over the backoff.
  answer(503, "", 7);
  clock_.advance(7s);
  EXPECT_EQ(transport_.published.size(), 4u);
}

TEST_F(ProvisioningClientTest, FailedAssignmentCarriesDpsErrorCode) {
  make();
  start();
  connectAndSubscribe();
  answer(202, kAssigning, 1);
  clock_.advance(1s);
  answer(200, R"({"operationId":"op","status":"failed","registrationState":{)"
              R"("registrationId":"gw-17","status":"failed","errorCode":400207,)"
              R"("errorMessage":"Custom allocation failed with status code: 400"}})");
  ASSERT_TRUE(outcome_ && !outcome_->has_value());
  EXPECT_EQ(failure().kind, FailureKind::AssignmentFailed);
  EXPECT_EQ(failure().details.errorCode, 400207u);
  EXPECT_EQ(failure().error.message,
            "DPS could not assign registration \"gw-17\" to a hub (errorCode 400207: Custom "
            "allocation failed with status code: 400)");
}

TEST_F(ProvisioningClientTest, DisabledEnrollmentEndsTheRegistration) {
  make();
  start();
  connectAndSubscribe();
  answer(200, R"({"operationId":"op","status":"disabled"})");
  ASSERT_TRUE(outcome_ && !outcome_->has_value());
  EXPECT_EQ(failure().kind, FailureKind::Disabled);
  EXPECT_EQ(failure().error.message, "the DPS enrollment of registration \"gw-17\" is disabled");
}

TEST_F(ProvisioningClientTest, AnUnreadableAnswerIsAProtocolFailure) {
  make();
  start();
  connectAndSubscribe();
  answer(200, R"({"operationId":"op","status":"assigned"})");
  ASSERT_TRUE(outcome_ && !outcome_->has_value());
  EXPECT_EQ(failure().kind, FailureKind::Protocol);
  EXPECT_TRUE(failure().transient());
  EXPECT_EQ(failure().error.message, "DPS assignment has no registrationState");
}

TEST_F(ProvisioningClientTest, IgnoresAnswersToOtherRequestsAndOtherTopics) {
  make();
  start();
  connectAndSubscribe();
  transport_.deliver("$dps/registrations/res/200/?$rid=99", kAssigned);
  transport_.deliver("$dps/registrations/res/200/", kAssigned);
  transport_.deliver("devices/gw-17/messages/devicebound/", "x");
  clock_.runPosted();
  EXPECT_FALSE(outcome_);
  answer(200, kAssigned);
  EXPECT_TRUE(outcome_ && outcome_->has_value());
}

TEST_F(ProvisioningClientTest, ResumesPollingOnANewConnectionAfterADrop) {
  make();
  start();
  connectAndSubscribe();
  answer(202, kAssigning, 1);
  transport_.drop();
  clock_.advance(1200ms);  // the poll wait ends: a new connection first
  ASSERT_EQ(transport_.connects.size(), 2u);
  EXPECT_NE(transport_.connects[1].password.reveal(), "") << "no fresh token";
  connectAndSubscribe();
  EXPECT_NE(lastPublished().topic.find("iotdps-get-operationstatus"), std::string::npos)
      << "registered again instead of polling the operation: " << lastPublished().topic;
  answer(200, kAssigned);
  EXPECT_TRUE(outcome_ && outcome_->has_value());
}

TEST_F(ProvisioningClientTest, ReconnectsWithBackoffWhenDpsIsUnreachable) {
  make();
  start();
  transport_.failConnect("connection refused");
  clock_.advance(999ms);
  EXPECT_EQ(transport_.connects.size(), 1u);
  clock_.advance(201ms);
  EXPECT_EQ(transport_.connects.size(), 2u);
  transport_.failConnect("connection refused");
  clock_.advance(2400ms);
  EXPECT_EQ(transport_.connects.size(), 3u);
  connectAndSubscribe();
  answer(200, kAssigned);
  EXPECT_TRUE(outcome_ && outcome_->has_value());
}

TEST_F(ProvisioningClientTest, ARefusedConnectIsBadCredentials) {
  make();
  start();
  transport_.refuseConnect(5);
  clock_.runPosted();
  ASSERT_TRUE(outcome_ && !outcome_->has_value());
  EXPECT_EQ(failure().kind, FailureKind::BadCredentials);
  clock_.advance(1h);
  EXPECT_EQ(transport_.connects.size(), 1u);
}

TEST_F(ProvisioningClientTest, AnUnansweredRequestIsSentAgainOnANewConnection) {
  make();
  start();
  connectAndSubscribe();
  clock_.advance(30s);
  EXPECT_TRUE(transport_.disconnectRequested);
  transport_.finishDisconnect();
  clock_.advance(1200ms);
  ASSERT_EQ(transport_.connects.size(), 2u);
  connectAndSubscribe();
  EXPECT_EQ(lastPublished().topic, "$dps/registrations/PUT/iotdps-register/?$rid=2");
  answer(200, kAssigned);
  EXPECT_TRUE(outcome_ && outcome_->has_value());
}

TEST_F(ProvisioningClientTest, GivesUpAfterTheTimeoutNamingTheLastProblem) {
  auto o = options();
  o.timeout = 20s;
  make(std::move(o));
  start();
  for (int i = 0; i < 20 && !outcome_; ++i) {
    if (transport_.connecting) {
      transport_.failConnect("connection refused");
    }
    clock_.advance(1s);
  }
  ASSERT_TRUE(outcome_ && !outcome_->has_value());
  EXPECT_EQ(failure().kind, FailureKind::Timeout);
  EXPECT_TRUE(failure().transient());
  EXPECT_EQ(failure().error.code, core::Errc::Timeout);
  EXPECT_EQ(failure().error.message,
            "no assignment from DPS within 20 s (last problem: connection to DPS failed: "
            "connection refused)");
}

TEST_F(ProvisioningClientTest, X509SendsNoPasswordAndItsCertificate) {
  auto o = options();
  o.attestation = Attestation::X509;
  o.deviceKey = core::Secret<>();
  o.tls.certFile = "/etc/gw.pem";
  o.tls.keyFile = "/etc/gw.key";
  make(std::move(o));
  start();
  ASSERT_EQ(transport_.connects.size(), 1u);
  EXPECT_TRUE(transport_.connects[0].password.empty());
  EXPECT_EQ(transport_.connects[0].tls.certFile, "/etc/gw.pem");
  EXPECT_EQ(transport_.connects[0].tls.keyFile, "/etc/gw.key");
}

TEST_F(ProvisioningClientTest, GoesOverWebSocketsAndTheProxyLikeTheHubConnection) {
  auto o = options();
  o.websockets = true;
  o.port = 443;
  o.proxy.type = core::ProxySettings::Type::Http;
  o.proxy.host = "proxy.local";
  o.proxy.port = 3128;
  make(std::move(o));
  start();
  const auto& c = transport_.connects.at(0);
  EXPECT_TRUE(c.websockets);
  EXPECT_EQ(c.websocketPath, "/$iothub/websocket");
  EXPECT_EQ(c.port, 443);
  EXPECT_EQ(c.userAgent, "iothubd/test");
  EXPECT_EQ(c.proxy.host, "proxy.local");
  EXPECT_EQ(c.proxy.port, 3128);
}

TEST_F(ProvisioningClientTest, RefusesOptionsItCannotSendWithoutConnecting) {
  auto o = options();
  o.payloadJson = "[1]";
  make(std::move(o));
  start();
  clock_.runPosted();
  ASSERT_TRUE(outcome_ && !outcome_->has_value());
  EXPECT_EQ(failure().kind, FailureKind::InvalidOptions);
  EXPECT_EQ(failure().error.message, "DPS registration payload must be a JSON object, got array");
  EXPECT_TRUE(transport_.connects.empty());

  auto bad = options();
  bad.deviceKey = core::Secret<>("not base64");
  client_->setOptions(std::move(bad));
  outcome_.reset();
  start();
  clock_.runPosted();
  ASSERT_TRUE(outcome_ && !outcome_->has_value());
  EXPECT_EQ(failure().kind, FailureKind::InvalidOptions);
  EXPECT_EQ(failure().error.message, "DPS device key: Invalid Symmetric Key");
}

TEST_F(ProvisioningClientTest, RefusesASecondRegistrationWhileOneRuns) {
  make();
  start();
  std::optional<Outcome> second;
  client_->registerDevice([&](const Outcome& o) { second = o; });
  clock_.runPosted();
  ASSERT_TRUE(second && !second->has_value());
  EXPECT_EQ(second->error().kind, FailureKind::InvalidOptions);
  EXPECT_FALSE(outcome_);
  EXPECT_TRUE(client_->active());
}

TEST_F(ProvisioningClientTest, CancelEndsTheRegistrationAndCloses) {
  make();
  start();
  connectAndSubscribe();
  client_->cancel();
  clock_.runPosted();
  ASSERT_TRUE(outcome_ && !outcome_->has_value());
  EXPECT_EQ(failure().kind, FailureKind::Cancelled);
  EXPECT_TRUE(transport_.disconnectRequested);
}

TEST_F(ProvisioningClientTest, RegistersAgainOnceTheLastConnectionClosed) {
  make();
  start();
  connectAndSubscribe();
  answer(200, kAssigned);
  ASSERT_TRUE(outcome_ && outcome_->has_value());
  // Re-provisioning (the hub refused the device) before the old connection finished closing.
  outcome_.reset();
  start();
  EXPECT_EQ(transport_.connects.size(), 1u) << "connected while the transport was still open";
  transport_.finishDisconnect();
  ASSERT_EQ(transport_.connects.size(), 2u);
  connectAndSubscribe();
  EXPECT_EQ(lastPublished().topic.rfind("$dps/registrations/PUT/iotdps-register/", 0), 0u)
      << "a new registration must not poll the old operation";
  answer(200, kAssigned);
  EXPECT_TRUE(outcome_ && outcome_->has_value());
}

TEST_F(ProvisioningClientTest, DestroyingTheClientDropsItsCompletion) {
  make();
  start();
  connectAndSubscribe();
  transport_.deliver("$dps/registrations/res/200/?$rid=1", kAssigned);
  client_.reset();
  clock_.runPosted();
  EXPECT_FALSE(outcome_);
}

}  // namespace
}  // namespace iothubd::provisioning
