// SPDX-License-Identifier: MIT
#include "iothubd/session/hub_session.hpp"

#include <gtest/gtest.h>

#include <optional>

#include "fake_mqtt_transport.hpp"
#include "manual_scheduler.hpp"

namespace iothubd::session {
namespace {

using namespace std::chrono_literals;
using fakes::FakeMqttTransport;
using fakes::ManualScheduler;

constexpr const char* kKey = "dGhpcy1pcy1hLXRlc3Qta2V5LW9mLTMyLWJ5dGVzISE=";

/// Records a completion's outcome.
struct Outcome {
  std::optional<core::Result<void>> result;
  HubSession::Completion callback() {
    return [this](core::Result<void> r) { result = std::move(r); };
  }
  [[nodiscard]] bool done() const { return result.has_value(); }
  [[nodiscard]] bool ok() const { return result && result->has_value(); }
  [[nodiscard]] core::Errc code() const { return result->error().code; }
};

class StateRecorder : public HubSession::Observer {
 public:
  void onStateChanged(ConnectionState s, const core::Error*) override { states.push_back(s); }
  std::vector<ConnectionState> states;
};

class HubSessionTest : public ::testing::Test {
 protected:
  SessionOptions options() {
    SessionOptions o;
    o.hubHostname = "contoso.azure-devices.net";
    o.deviceId = "dev1";
    o.sharedAccessKey = core::Secret<>(kKey);
    o.userAgent = "iothubd/test";
    o.operationTimeout = 60s;
    o.connectionRetryInterval = 10s;
    return o;
  }
  HubSession& make(SessionOptions o) {
    session_.emplace(clock_, clock_, transport_, std::move(o));
    session_->setObserver(&states_);
    return *session_;
  }
  HubSession& make() { return make(options()); }
  proto::OutgoingMessage message(std::string body = "hello") {
    proto::OutgoingMessage m;
    m.body = std::move(body);
    m.system.messageId = "m1";
    return m;
  }
  HubSession& connected() {
    auto& s = make();
    s.start();
    transport_.acceptConnect();
    return s;
  }

  ManualScheduler clock_;
  FakeMqttTransport transport_;
  StateRecorder states_;
  std::optional<HubSession> session_;
};

TEST_F(HubSessionTest, ConnectsWithTheSdkIdentityAndAFreshSasToken) {
  auto o = options();
  o.gatewayHostname = "edge.local";
  o.port = 18883;
  o.keepAliveSeconds = 30;
  auto& s = make(std::move(o));
  Outcome connect;
  s.connect(connect.callback());
  ASSERT_EQ(transport_.connects.size(), 1u);
  const auto& c = transport_.connects[0];
  EXPECT_EQ(c.host, "edge.local");  // TLS to the gateway (doc 1.4) ...
  EXPECT_EQ(c.port, 18883);
  EXPECT_EQ(c.clientId, "dev1");
  // ... while the user name and the token keep naming the hub.
  EXPECT_EQ(c.username.rfind("contoso.azure-devices.net/dev1/?api-version=", 0), 0u) << c.username;
  EXPECT_EQ(c.password.reveal().rfind("SharedAccessSignature sr=contoso.azure-devices.net%2Fdevices%2Fdev1&", 0), 0u);
  EXPECT_EQ(s.sasTokenExpiry(), clock_.unixSeconds() + 3600);
  EXPECT_EQ(c.keepAliveSeconds, 30);
  EXPECT_FALSE(connect.done());
  transport_.acceptConnect();
  EXPECT_TRUE(connect.ok());
  EXPECT_EQ(s.state(), ConnectionState::Connected);
  EXPECT_EQ(states_.states, (std::vector{ConnectionState::Connecting, ConnectionState::Connected}));
}

TEST_F(HubSessionTest, TelemetryCompletesOnlyOnItsPuback) {
  auto& s = connected();
  Outcome first, second;
  s.sendTelemetry(message("a"), first.callback());
  s.sendTelemetry(message("b"), second.callback());
  ASSERT_EQ(transport_.published.size(), 2u);
  EXPECT_EQ(transport_.published[0].topic, "devices/dev1/messages/events/%24.mid=m1");
  EXPECT_EQ(transport_.published[0].qos, 1);
  EXPECT_FALSE(first.done());
  transport_.ack(transport_.published[1].mid);
  EXPECT_TRUE(second.ok());
  EXPECT_FALSE(first.done());
  transport_.ack(transport_.published[0].mid);
  EXPECT_TRUE(first.ok());
}

TEST_F(HubSessionTest, TelemetryWithoutPubackTimesOutAfterOperationTimeout) {
  auto& s = connected();
  Outcome sent;
  s.sendTelemetry(message(), sent.callback());
  clock_.advance(59s);
  EXPECT_FALSE(sent.done());
  clock_.advance(1s);
  ASSERT_TRUE(sent.done());
  EXPECT_EQ(sent.code(), core::Errc::Timeout);
  transport_.ack(transport_.published[0].mid);  // a late PUBACK is ignored
}

TEST_F(HubSessionTest, OversizedTelemetryFailsBeforeAnythingIsSent) {
  auto& s = connected();
  Outcome sent;
  auto m = message(std::string(proto::kMaxTelemetryBytes, 'x'));
  s.sendTelemetry(m, sent.callback());
  ASSERT_TRUE(sent.done());
  EXPECT_EQ(sent.code(), core::Errc::MessageTooLarge);
  EXPECT_TRUE(transport_.published.empty());
}

TEST_F(HubSessionTest, AutoConnectOpensTheConnectionAndPublishesQueuedMessages) {
  auto& s = make();
  Outcome sent;
  s.sendTelemetry(message(), sent.callback());
  EXPECT_EQ(transport_.connects.size(), 1u);
  EXPECT_TRUE(transport_.published.empty());
  transport_.acceptConnect();
  ASSERT_EQ(transport_.published.size(), 1u);
  transport_.ack(transport_.published[0].mid);
  EXPECT_TRUE(sent.ok());
}

TEST_F(HubSessionTest, AutoConnectMessageGetsTheFailedAttemptsError) {
  auto& s = make();
  Outcome sent;
  s.sendTelemetry(message(), sent.callback());
  transport_.failConnect("connection refused");
  ASSERT_TRUE(sent.done());
  EXPECT_EQ(sent.code(), core::Errc::ConnectionFailed);
}

TEST_F(HubSessionTest, WithoutAutoConnectTelemetryFailsWithNotConnected) {
  auto o = options();
  o.autoConnect = false;
  auto& s = make(std::move(o));
  Outcome sent;
  s.sendTelemetry(message(), sent.callback());
  ASSERT_TRUE(sent.done());
  EXPECT_EQ(sent.code(), core::Errc::NotConnected);
  EXPECT_TRUE(transport_.connects.empty());
}

TEST_F(HubSessionTest, CredentialRefusalFailsConnectAndIsNotRetried) {
  auto& s = make();
  Outcome connect;
  s.connect(connect.callback());
  transport_.refuseConnect(5);
  ASSERT_TRUE(connect.done());
  EXPECT_EQ(connect.code(), core::Errc::Unauthorized);
  EXPECT_EQ(s.state(), ConnectionState::Disconnected);
  clock_.advance(10min);
  EXPECT_EQ(transport_.connects.size(), 1u) << "retried with credentials the hub refused";
}

TEST_F(HubSessionTest, FailedStartIsRetriedEveryIntervalWithJitter) {
  auto& s = make();
  s.start();
  transport_.failConnect();
  EXPECT_EQ(s.state(), ConnectionState::Connecting);
  auto next = clock_.nextTimerIn();
  ASSERT_TRUE(next);
  EXPECT_GE(*next, 10s);
  EXPECT_LE(*next, 12s);  // interval + at most 20 % jitter
  clock_.advance(12s);
  EXPECT_EQ(transport_.connects.size(), 2u);
  transport_.acceptConnect();
  EXPECT_TRUE(s.connected());
}

TEST_F(HubSessionTest, ReconnectsAfterADropWithANewTokenAndInFlightMessagesKeepWaiting) {
  auto& s = connected();
  Outcome sent;
  s.sendTelemetry(message(), sent.callback());
  clock_.advance(5s);
  transport_.drop();
  EXPECT_EQ(s.state(), ConnectionState::Reconnecting);
  EXPECT_FALSE(sent.done());
  // Python SDK behaviour (doc 9): the first reconnect comes almost at once.
  clock_.advance(100ms);
  ASSERT_EQ(transport_.connects.size(), 2u);
  EXPECT_NE(transport_.connects[1].password.reveal(), transport_.connects[0].password.reveal())
      << "a cached password was reused for the reconnect";
  transport_.acceptConnect();
  EXPECT_EQ(s.state(), ConnectionState::Connected);
  // libmosquitto resends the unacknowledged publish; its PUBACK completes the call.
  transport_.ack(transport_.published[0].mid);
  EXPECT_TRUE(sent.ok());
  EXPECT_EQ(states_.states, (std::vector{ConnectionState::Connecting, ConnectionState::Connected,
                                         ConnectionState::Reconnecting, ConnectionState::Connected}));
}

TEST_F(HubSessionTest, WithoutConnectionRetryADropFailsInFlightMessages) {
  auto o = options();
  o.connectionRetry = false;
  auto& s = make(std::move(o));
  s.start();
  transport_.acceptConnect();
  Outcome sent;
  s.sendTelemetry(message(), sent.callback());
  transport_.drop();
  ASSERT_TRUE(sent.done());
  EXPECT_EQ(sent.code(), core::Errc::ConnectionDropped);
  EXPECT_EQ(s.state(), ConnectionState::Disconnected);
  clock_.advance(1min);
  EXPECT_EQ(transport_.connects.size(), 1u);
}

TEST_F(HubSessionTest, MessagesSentWhileReconnectingWaitForTheConnection) {
  auto& s = connected();
  transport_.drop();
  Outcome sent;
  s.sendTelemetry(message(), sent.callback());
  clock_.advance(100ms);
  transport_.failConnect();  // first retry fails; the message keeps waiting
  EXPECT_FALSE(sent.done());
  clock_.advance(12s);
  transport_.acceptConnect();
  ASSERT_EQ(transport_.published.size(), 1u);
  transport_.ack(transport_.published[0].mid);
  EXPECT_TRUE(sent.ok());
}

TEST_F(HubSessionTest, MessagesWaitingForAConnectionTimeOut) {
  auto& s = connected();
  transport_.drop();
  Outcome sent;
  s.sendTelemetry(message(), sent.callback());
  clock_.advance(100ms);
  transport_.failConnect("no route to host");
  clock_.advance(60s);
  ASSERT_TRUE(sent.done());
  EXPECT_EQ(sent.code(), core::Errc::Timeout);
  EXPECT_NE(sent.result->error().message.find("no route to host"), std::string::npos)
      << sent.result->error().message;
}

TEST_F(HubSessionTest, ConnackThatNeverComesTimesOutTheAttempt) {
  auto& s = make();
  Outcome connect;
  s.connect(connect.callback());
  clock_.advance(60s);
  EXPECT_TRUE(transport_.disconnectRequested);
  transport_.finishDisconnect();
  ASSERT_TRUE(connect.done());
  EXPECT_EQ(connect.code(), core::Errc::Timeout);
}

TEST_F(HubSessionTest, DisconnectCancelsWaitingOperationsAndStopsReconnecting) {
  auto& s = connected();
  Outcome sent, disconnected;
  s.sendTelemetry(message(), sent.callback());
  s.disconnect(disconnected.callback());
  ASSERT_TRUE(sent.done());
  EXPECT_EQ(sent.code(), core::Errc::Cancelled);
  EXPECT_FALSE(disconnected.done());
  transport_.finishDisconnect();
  EXPECT_TRUE(disconnected.ok());
  EXPECT_EQ(s.state(), ConnectionState::Disconnected);
  clock_.advance(1min);
  EXPECT_EQ(transport_.connects.size(), 1u);
}

TEST_F(HubSessionTest, DisconnectWhileWaitingToRetryCompletesAtOnce) {
  auto& s = connected();
  transport_.drop();
  Outcome disconnected;
  s.disconnect(disconnected.callback());
  EXPECT_TRUE(disconnected.ok());
  EXPECT_EQ(s.state(), ConnectionState::Disconnected);
  clock_.advance(1min);
  EXPECT_EQ(transport_.connects.size(), 1u);
}

TEST_F(HubSessionTest, UserSuppliedSasTokenIsSentAsIs) {
  auto o = options();
  o.auth = AuthMethod::SasToken;
  o.sasToken = core::Secret<>(
      "SharedAccessSignature sr=contoso.azure-devices.net%2Fdevices%2Fdev1&sig=abc%3D&se=1800000000");
  auto& s = make(std::move(o));
  s.start();
  ASSERT_EQ(transport_.connects.size(), 1u);
  EXPECT_EQ(transport_.connects[0].password.reveal(),
            "SharedAccessSignature sr=contoso.azure-devices.net%2Fdevices%2Fdev1&sig=abc%3D&se=1800000000");
  EXPECT_EQ(s.sasTokenExpiry(), 1800000000u);
}

TEST_F(HubSessionTest, GeneratedMessageIdsAreUniqueUuids) {
  auto& s = make();
  std::string a = s.newMessageId();
  std::string b = s.newMessageId();
  EXPECT_NE(a, b);
  ASSERT_EQ(a.size(), 36u);
  EXPECT_EQ(a[14], '4');
}

}  // namespace
}  // namespace iothubd::session

namespace iothubd::session {
namespace {

TEST_F(HubSessionTest, RenewsTheTokenBeforeExpiryWithoutAnOutage) {
  auto o = options();
  o.sasTokenTtl = 3600s;
  auto& s = make(std::move(o));
  s.start();
  transport_.acceptConnect();
  std::uint64_t firstExpiry = s.sasTokenExpiry();
  // Python SDK timing (doc 2): 120 s before expiry.
  clock_.advance(3480s - 1ms);
  EXPECT_FALSE(transport_.disconnectRequested);
  clock_.advance(1ms);
  EXPECT_TRUE(transport_.disconnectRequested);
  // A message sent during the swap waits and completes.
  Outcome sent;
  s.sendTelemetry(message(), sent.callback());
  transport_.finishDisconnect();
  ASSERT_EQ(transport_.connects.size(), 2u);
  EXPECT_GT(s.sasTokenExpiry(), firstExpiry);
  transport_.acceptConnect();
  ASSERT_EQ(transport_.published.size(), 1u);
  transport_.ack(transport_.published[0].mid);
  EXPECT_TRUE(sent.ok());
  // Apps saw one continuous connection.
  EXPECT_EQ(states_.states, (std::vector{ConnectionState::Connecting, ConnectionState::Connected}));
  EXPECT_TRUE(s.connected());
}

TEST_F(HubSessionTest, RenewalWaitsForInFlightPubacksFirst) {
  auto o = options();
  o.sasTokenTtl = 10s;
  auto& s = make(std::move(o));
  s.start();
  transport_.acceptConnect();
  Outcome sent;
  s.sendTelemetry(message(), sent.callback());
  clock_.advance(8s);  // renewal due (10 s - 10 s / 5)
  EXPECT_FALSE(transport_.disconnectRequested) << "renewal would resend an unacknowledged message";
  transport_.ack(transport_.published[0].mid);
  EXPECT_TRUE(sent.ok());
  EXPECT_TRUE(transport_.disconnectRequested);
}

TEST_F(HubSessionTest, FailedRenewalIsAnOutageAndIsRetried) {
  auto o = options();
  o.sasTokenTtl = 10s;
  auto& s = make(std::move(o));
  s.start();
  transport_.acceptConnect();
  clock_.advance(8s);
  transport_.finishDisconnect();
  transport_.failConnect("connection refused");
  EXPECT_EQ(s.state(), ConnectionState::Reconnecting);
  clock_.advance(100ms);
  EXPECT_EQ(transport_.connects.size(), 3u);
}

TEST_F(HubSessionTest, UserSuppliedTokenAsksForANewOneBeforeExpiry) {
  struct Recorder : StateRecorder {
    void onNewSasTokenRequired() override { ++asked; }
    int asked = 0;
  } recorder;
  auto o = options();
  o.auth = AuthMethod::SasToken;
  std::uint64_t expiry = clock_.unixSeconds() + 3600;
  o.sasToken = core::Secret<>("SharedAccessSignature sr=contoso.azure-devices.net%2Fdevices%2Fdev1&sig=abc%3D&se=" +
                              std::to_string(expiry));
  auto& s = make(std::move(o));
  s.setObserver(&recorder);
  s.start();
  transport_.acceptConnect();
  clock_.advance(3480s);
  EXPECT_EQ(recorder.asked, 1);
  EXPECT_FALSE(transport_.disconnectRequested) << "a user token cannot be renewed by us";
}

TEST_F(HubSessionTest, ReconfigureReconnectsOnlyWhenTheConnectionDependsOnTheChange) {
  auto& s = connected();
  auto o = options();
  o.operationTimeout = 30s;
  EXPECT_FALSE(s.reconfigure(o));
  EXPECT_FALSE(transport_.disconnectRequested);
  o.keepAliveSeconds = 120;
  EXPECT_TRUE(s.reconfigure(o));
  EXPECT_TRUE(transport_.disconnectRequested);
  transport_.finishDisconnect();
  ASSERT_EQ(transport_.connects.size(), 2u);
  EXPECT_EQ(transport_.connects[1].keepAliveSeconds, 120);
  transport_.acceptConnect();
  EXPECT_EQ(states_.states, (std::vector{ConnectionState::Connecting, ConnectionState::Connected}));
}

TEST_F(HubSessionTest, NewCredentialsAfterARefusalAreTriedAtOnce) {
  auto& s = make();
  s.start();
  transport_.refuseConnect(5);
  EXPECT_EQ(transport_.connects.size(), 1u);
  auto o = options();
  o.sharedAccessKey = core::Secret<>("bmV3LWtleS1uZXcta2V5LW5ldy1rZXktbmV3LWtleSE=");
  clock_.advance(10min);
  EXPECT_EQ(transport_.connects.size(), 1u);
  EXPECT_TRUE(s.reconfigure(o));
  ASSERT_EQ(transport_.connects.size(), 2u);
  transport_.acceptConnect();
  EXPECT_TRUE(s.connected());
}

}  // namespace
}  // namespace iothubd::session
