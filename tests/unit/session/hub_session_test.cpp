// SPDX-License-Identifier: MIT
#include "iothubd/session/hub_session.hpp"

#include <gtest/gtest.h>

#include <array>
#include <map>
#include <optional>
#include <regex>

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
  void onStateChanged(ConnectionState s, const core::Error* e) override {
    states.push_back(s);
    errors.push_back(e != nullptr ? e->message : "");
  }
  std::vector<ConnectionState> states;
  std::vector<std::string> errors;  ///< the lastError of each notification ("" for none)
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
    o.connectionRetryInitialDelay = 1s;
    o.connectionRetryMaxDelay = 60s;
    o.ensureDesiredProperties = false;  // twin tests turn it on
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
  EXPECT_EQ(c.password.reveal().rfind(
                "SharedAccessSignature sr=contoso.azure-devices.net%2Fdevices%2Fdev1&", 0),
            0u);
  EXPECT_EQ(s.sasTokenExpiry(), clock_.unixSeconds() + 3600);
  EXPECT_EQ(c.keepAliveSeconds, 30);
  EXPECT_FALSE(connect.done());
  transport_.acceptConnect();
  EXPECT_TRUE(connect.ok());
  EXPECT_EQ(s.state(), ConnectionState::Connected);
  EXPECT_EQ(states_.states, (std::vector{ConnectionState::Connecting, ConnectionState::Connected}));
}

// authentication = dps before DPS assigned a hub: a Connect() makes no attempt at an empty name.
TEST_F(HubSessionTest, WithoutAnAssignedHubNoAttemptIsMadeAndLastErrorSaysWhy) {
  auto o = options();
  o.hubHostname.clear();
  auto& s = make(std::move(o));
  s.start();
  clock_.advance(120s);
  EXPECT_TRUE(transport_.connects.empty());
  EXPECT_NE(s.lastError().message.find("no hub assigned yet"), std::string::npos)
      << s.lastError().message;
}

// LastError's PropertiesChanged and the service status follow every failed attempt, also a retry
// that fails while the state stays "connecting".
TEST_F(HubSessionTest, EveryFailedAttemptIsToldWithItsErrorEvenInTheSameState) {
  auto& s = make();
  s.start();
  transport_.failConnect("connection refused");
  clock_.advance(13s);  // connection_retry_interval plus at most 20 % jitter
  ASSERT_EQ(transport_.connects.size(), 2u);
  transport_.failConnect("TLS handshake failed");
  EXPECT_EQ(s.state(), ConnectionState::Connecting);
  ASSERT_GE(states_.errors.size(), 3u);
  EXPECT_NE(states_.errors[1].find("connection refused"), std::string::npos) << states_.errors[1];
  EXPECT_NE(states_.errors.back().find("TLS handshake failed"), std::string::npos)
      << states_.errors.back();
  EXPECT_EQ(s.lastError().message, states_.errors.back());
}

TEST_F(HubSessionTest, X509SendsNoPasswordAndNeverRenews) {
  auto o = options();
  o.auth = AuthMethod::X509;
  o.sharedAccessKey = core::Secret<>();
  o.tls.certFile = "/etc/iothubd/device.pem";
  o.tls.keyFile = "/etc/iothubd/device.key";
  o.websockets = true;
  o.proxy.type = core::ProxySettings::Type::Http;
  o.proxy.host = "proxy";
  o.proxy.port = 3128;
  auto& s = make(std::move(o));
  s.start();
  ASSERT_EQ(transport_.connects.size(), 1u);
  const auto& c = transport_.connects[0];
  // Protocol doc 1.2: the user name as with SAS, no password; the certificate goes to TLS.
  EXPECT_EQ(c.username.rfind("contoso.azure-devices.net/dev1/?api-version=", 0), 0u);
  EXPECT_TRUE(c.password.empty());
  EXPECT_EQ(c.tls.certFile, "/etc/iothubd/device.pem");
  EXPECT_EQ(c.tls.keyFile, "/etc/iothubd/device.key");
  EXPECT_TRUE(c.websockets);
  EXPECT_EQ(c.proxy.host, "proxy");
  transport_.acceptConnect();
  EXPECT_EQ(s.sasTokenExpiry(), 0u);
  // Nothing to renew: a day later there was still exactly one CONNECT.
  clock_.advance(24h);
  EXPECT_EQ(transport_.connects.size(), 1u);
  EXPECT_EQ(s.state(), ConnectionState::Connected);
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

TEST_F(HubSessionTest, PublishesWaitingForTheConnectionAreBoundedInBytes) {
  constexpr std::string_view kEvents = "devices/dev1/messages/events/";
  auto o = options();
  o.maxQueuedBytes = 1024 * 1024;
  auto& s = make(std::move(o));
  // Three of 400 KiB fit within 1 MiB as topic plus payload only twice; the third is refused
  // at once and holds nothing.
  Outcome first, second, third;
  s.publishTelemetry(kEvents, std::string(400 * 1024, 'a'), first.callback());
  s.publishTelemetry(kEvents, std::string(400 * 1024, 'b'), second.callback());
  s.publishTelemetry(kEvents, std::string(400 * 1024, 'c'), third.callback());
  EXPECT_FALSE(first.done());
  EXPECT_FALSE(second.done());
  ASSERT_TRUE(third.done());
  EXPECT_EQ(third.code(), core::Errc::QueueFull);
  transport_.acceptConnect();
  ASSERT_EQ(transport_.published.size(), 2u);
  // Published, the bytes are no longer waiting: the queue takes as much again.
  transport_.drop();
  Outcome fourth, fifth;
  s.publishTelemetry(kEvents, std::string(400 * 1024, 'd'), fourth.callback());
  s.publishTelemetry(kEvents, std::string(400 * 1024, 'e'), fifth.callback());
  EXPECT_FALSE(fourth.done());
  EXPECT_FALSE(fifth.done());
}

TEST_F(HubSessionTest, AMessageOverALimitIsRefusedBeforeAnythingIsQueued) {
  auto& s = make();
  Outcome sent;
  auto m = message();
  m.properties = {{"k", std::string(proto::kMaxPropertyValueLength + 1, 'v')}};
  s.sendTelemetry(m, sent.callback());
  ASSERT_TRUE(sent.done());
  EXPECT_EQ(sent.code(), core::Errc::MessageTooLarge);
  EXPECT_TRUE(transport_.connects.empty()) << "a refused message opens no connection";
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
  transport_.refuseConnect(4);  // bad user name or password: the configuration must change
  ASSERT_TRUE(connect.done());
  EXPECT_EQ(connect.code(), core::Errc::Unauthorized);
  EXPECT_EQ(s.state(), ConnectionState::Disconnected);
  clock_.advance(10min);
  EXPECT_EQ(transport_.connects.size(), 1u) << "retried with credentials the hub refused";
}

TEST_F(HubSessionTest, FailedStartIsRetriedWithExponentialBackoffUpToTheCap) {
  auto o = options();
  o.connectionRetryInitialDelay = 1s;
  o.connectionRetryMaxDelay = 8s;
  auto& s = make(std::move(o));
  s.start();
  std::chrono::microseconds cap = 1s;
  for (std::size_t attempt = 1; attempt <= 6; ++attempt) {
    ASSERT_EQ(transport_.connects.size(), attempt);
    transport_.failConnect();
    EXPECT_EQ(s.state(), ConnectionState::Connecting);
    auto next = clock_.nextTimerIn();
    ASSERT_TRUE(next);
    EXPECT_GE(*next, cap / 2) << "attempt " << attempt;
    EXPECT_LE(*next, cap) << "attempt " << attempt;
    clock_.advance(*next - 1ms);
    EXPECT_EQ(transport_.connects.size(), attempt) << "an attempt before the delay passed";
    clock_.advance(1ms);
    cap = std::min<std::chrono::microseconds>(cap * 2, 8s);
  }
  transport_.acceptConnect();
  EXPECT_TRUE(s.connected());
}

// Issue 14: a Send… or Connect() while a retry is pending starts no CONNECT of its own.
TEST_F(HubSessionTest, OperationsDuringTheBackoffWaitForTheRetryTimer) {
  auto& s = make();
  s.start();
  transport_.failConnect();
  Outcome sent;
  Outcome connect;
  for (int i = 0; i < 10; ++i) {
    s.sendTelemetry(message(), sent.callback());
  }
  s.connect(connect.callback());
  EXPECT_EQ(transport_.connects.size(), 1u);
  clock_.advance(1s);
  ASSERT_EQ(transport_.connects.size(), 2u);
  transport_.acceptConnect();
  EXPECT_TRUE(connect.ok());
}

// An operator's SAS token the hub refused is not retried on its own; an app's auto_connect
// operation tries it again, but only after the backoff: never a CONNECT per SendMessage.
TEST_F(HubSessionTest, AutoConnectAfterARefusedOperatorTokenWaitsOutTheBackoff) {
  auto o = options();
  o.auth = AuthMethod::SasToken;
  o.sharedAccessKey = core::Secret<>();
  o.sasToken = core::Secret<>(
      "SharedAccessSignature sr=contoso.azure-devices.net%2Fdevices%2Fdev1&sig=x&se=" +
      std::to_string(clock_.unixSeconds() + 3600));
  auto& s = make(std::move(o));
  s.start();
  transport_.refuseConnect(5);
  EXPECT_EQ(s.state(), ConnectionState::Disconnected);
  Outcome sent;
  s.sendTelemetry(message(), sent.callback());
  s.sendTelemetry(message(), sent.callback());
  EXPECT_EQ(transport_.connects.size(), 1u);
  EXPECT_EQ(s.state(), ConnectionState::Connecting);
  clock_.advance(1s);
  EXPECT_EQ(transport_.connects.size(), 2u);
  transport_.refuseConnect(5);
  ASSERT_TRUE(sent.done());
  EXPECT_EQ(sent.code(), core::Errc::Unauthorized);
  clock_.advance(10min);
  EXPECT_EQ(transport_.connects.size(), 2u) << "a refused operator token was retried unasked";
}

// A token made from the key may be refused because the clock was off by more than the hub's
// 5 minutes: retried with backoff and a fresh token, reported each time (LastError,
// BackgroundException), until the hub accepts it.
TEST_F(HubSessionTest, NotAuthorisedWithAKeyIsRetriedWithBackoffAndReportedEachTime) {
  auto& s = make();
  s.start();
  std::chrono::microseconds previous{};
  for (std::size_t attempt = 1; attempt <= 4; ++attempt) {
    transport_.refuseConnect(5);
    EXPECT_EQ(s.state(), ConnectionState::Connecting);
    EXPECT_EQ(s.lastError().code, core::Errc::Unauthorized);
    auto next = clock_.nextTimerIn();
    ASSERT_TRUE(next);
    EXPECT_GE(*next, previous) << "equal jitter: each wait at least the one before";
    previous = *next;
    clock_.advance(*next);
    ASSERT_EQ(transport_.connects.size(), attempt + 1);
  }
  EXPECT_EQ(states_.errors.size(), 5u) << "one notification per refusal plus the first state";
  EXPECT_NE(transport_.connects[4].password.reveal(), transport_.connects[0].password.reveal())
      << "each attempt makes its token afresh";
  transport_.acceptConnect();
  EXPECT_TRUE(s.connected());
  EXPECT_TRUE(s.lastError().message.empty());
}

// A duplicate identity (or a throttled hub) closes each link soon after its CONNACK: one quick
// retry, then a backoff with a floor, never a 10 ms loop.
TEST_F(HubSessionTest, ALinkThatKeepsDroppingAfterConnackBacksOff) {
  auto& s = make();
  s.start();
  std::vector<std::chrono::microseconds> delays;
  for (int link = 0; link < 5; ++link) {
    transport_.acceptConnect();
    clock_.advance(300ms);
    transport_.drop();
    auto next = clock_.nextTimerIn();
    ASSERT_TRUE(next);
    delays.push_back(*next);
    clock_.advance(*next);
  }
  EXPECT_EQ(delays[0], 10ms);
  for (std::size_t i = 1; i < delays.size(); ++i) {
    EXPECT_GE(delays[i], 8s) << "drop " << i;
    EXPECT_LE(delays[i], 60s) << "drop " << i;
  }
  EXPECT_EQ(s.state(), ConnectionState::Reconnecting);
  // A link that lives a while is fine again: its drop is retried at once.
  transport_.acceptConnect();
  clock_.advance(RetryPolicy::kStableLink);
  transport_.drop();
  EXPECT_EQ(clock_.nextTimerIn(), std::optional<std::chrono::microseconds>(10ms));
}

TEST_F(HubSessionTest, ReconnectsAfterADropWithANewTokenAndFailsWhatWasInFlight) {
  auto& s = connected();
  Outcome sent;
  s.sendTelemetry(message(), sent.callback());
  clock_.advance(5s);
  transport_.drop();
  EXPECT_EQ(s.state(), ConnectionState::Reconnecting);
  // Publishes live and die with their connection; the outbox above resends what it owns.
  ASSERT_TRUE(sent.done());
  EXPECT_EQ(sent.code(), core::Errc::ConnectionDropped);
  // Python SDK behaviour (doc 9): the first reconnect comes almost at once.
  clock_.advance(100ms);
  ASSERT_EQ(transport_.connects.size(), 2u);
  EXPECT_NE(transport_.connects[1].password.reveal(), transport_.connects[0].password.reveal())
      << "a cached password was reused for the reconnect";
  transport_.acceptConnect();
  EXPECT_EQ(s.state(), ConnectionState::Connected);
  EXPECT_EQ(states_.states,
            (std::vector{ConnectionState::Connecting, ConnectionState::Connected,
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

// Issue 14: the network manager says the network is back while the session waits out a long
// backoff: the attempt is made now, and the schedule starts afresh.
TEST_F(HubSessionTest, TheNetworkComingBackEndsTheBackoffAndStartsTheScheduleAfresh) {
  auto o = options();
  o.connectionRetryInitialDelay = 2s;
  o.connectionRetryMaxDelay = 60s;
  auto& s = make(std::move(o));
  s.start();
  for (int i = 0; i < 4; ++i) {
    transport_.failConnect();
    clock_.advance(*clock_.nextTimerIn());
  }
  transport_.failConnect();
  ASSERT_EQ(s.linkState(), LinkState::Backoff);
  ASSERT_GE(*clock_.nextTimerIn(), 16s) << "the fifth failure waits 16..32 s";
  s.networkCameBack("NetworkManager");
  ASSERT_EQ(transport_.connects.size(), 6u) << "the attempt waited for the backoff";
  EXPECT_EQ(s.linkState(), LinkState::Connecting);
  EXPECT_EQ(s.state(), ConnectionState::Connecting) << "no visible change while trying";
  EXPECT_EQ(clock_.nextTimerIn(), std::optional<std::chrono::microseconds>(60s))
      << "a timer other than the CONNACK's runs (the old retry delay?)";
  transport_.failConnect();
  auto next = clock_.nextTimerIn();
  ASSERT_TRUE(next);
  EXPECT_LE(*next, 2s) << "the schedule did not start afresh";
  clock_.advance(*next);
  ASSERT_EQ(transport_.connects.size(), 7u);
  transport_.acceptConnect();
  EXPECT_TRUE(s.connected());
}

// The same after a drop: a Reconnecting session backing off comes back at once.
TEST_F(HubSessionTest, TheNetworkComingBackReconnectsADroppedLinkAtOnce) {
  auto& s = connected();
  transport_.drop();
  clock_.advance(10ms);  // the quick retry after a drop
  transport_.failConnect();
  ASSERT_EQ(s.state(), ConnectionState::Reconnecting);
  ASSERT_GT(*clock_.nextTimerIn(), 100ms);
  s.networkCameBack("systemd-networkd");
  ASSERT_EQ(transport_.connects.size(), 3u);
  transport_.acceptConnect();
  EXPECT_TRUE(s.connected());
}

// Everywhere else the network coming back changes nothing.
TEST_F(HubSessionTest, TheNetworkComingBackLeavesALinkThatIsUpOrBeingMadeAlone) {
  auto& s = make();
  s.networkCameBack("NetworkManager");
  EXPECT_TRUE(transport_.connects.empty()) << "a session nobody started connected";
  s.start();
  s.networkCameBack("NetworkManager");
  EXPECT_EQ(transport_.connects.size(), 1u) << "a second CONNECT while one is under way";
  transport_.acceptConnect();
  s.networkCameBack("NetworkManager");
  EXPECT_EQ(transport_.connects.size(), 1u);
  EXPECT_FALSE(transport_.disconnectRequested) << "a link that is up was closed";
  EXPECT_TRUE(s.connected());
}

TEST_F(HubSessionTest, TheNetworkComingBackDoesNotRetryCredentialsTheHubRefused) {
  auto& s = make();
  s.start();
  transport_.refuseConnect(4);  // bad user name or password: not retried at all
  ASSERT_EQ(s.state(), ConnectionState::Disconnected);
  s.networkCameBack("NetworkManager");
  EXPECT_EQ(transport_.connects.size(), 1u);
  // "Not authorised" with a key is retried with backoff, but not early: the network was not why.
  auto& again = make();
  transport_.connects.clear();
  again.start();
  transport_.refuseConnect(5);
  ASSERT_EQ(again.linkState(), LinkState::Backoff);
  const auto delay = clock_.nextTimerIn();
  again.networkCameBack("systemd-networkd");
  EXPECT_EQ(transport_.connects.size(), 1u);
  EXPECT_EQ(clock_.nextTimerIn(), delay) << "the backoff changed";
}

TEST_F(HubSessionTest, TheNetworkComingBackLeavesADisconnectedSessionDisconnected) {
  auto& s = connected();
  transport_.drop();
  Outcome disconnected;
  s.disconnect(disconnected.callback());
  ASSERT_TRUE(disconnected.ok());
  s.networkCameBack("NetworkManager");
  clock_.advance(1min);
  EXPECT_EQ(transport_.connects.size(), 1u);
  EXPECT_EQ(s.state(), ConnectionState::Disconnected);
}

TEST_F(HubSessionTest, UserSuppliedSasTokenIsSentAsIs) {
  auto o = options();
  o.auth = AuthMethod::SasToken;
  o.sasToken = core::Secret<>(
      "SharedAccessSignature "
      "sr=contoso.azure-devices.net%2Fdevices%2Fdev1&sig=abc%3D&se=1800000000");
  auto& s = make(std::move(o));
  s.start();
  ASSERT_EQ(transport_.connects.size(), 1u);
  EXPECT_EQ(transport_.connects[0].password.reveal(),
            "SharedAccessSignature "
            "sr=contoso.azure-devices.net%2Fdevices%2Fdev1&sig=abc%3D&se=1800000000");
  EXPECT_EQ(s.sasTokenExpiry(), 1800000000u);
}

TEST_F(HubSessionTest, GeneratedMessageIdsAreUniqueUuids) {
  auto& s = make();
  std::string a = s.newMessageId();
  std::string b = s.newMessageId();
  EXPECT_NE(a, b);
  ASSERT_EQ(a.size(), 36u);
  EXPECT_EQ(a[14], '4');
  // RFC 4122 version 4 in its canonical lower-case form.
  const std::regex uuid("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}");
  for (int i = 0; i < 100; ++i) {
    std::string id = s.newMessageId();
    EXPECT_TRUE(std::regex_match(id, uuid)) << id;
  }
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
  clock_.advance(1s);  // a failed attempt: the backoff's first step
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
  o.sasToken = core::Secret<>(
      "SharedAccessSignature sr=contoso.azure-devices.net%2Fdevices%2Fdev1&sig=abc%3D&se=" +
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
  transport_.refuseConnect(4);
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

namespace iothubd::session {
namespace {

/// Everything the session reports to the D-Bus layer.
// --- the clock (issue 14) ------------------------------------------------------------------------

constexpr const char* kTimedated = "systemd-timedated: NTP service active, NTPSynchronized=no";

// A time service runs but has not synchronised the clock: no CONNECT until it has, and apps
// (LastError, the service status) learn why the device is not connected yet.
TEST_F(HubSessionTest, AnAttemptWaitsForARunningTimeServiceAndGoesOnceTheClockIsSynchronised) {
  auto& s = make();
  s.setClockSync(core::ClockSync::Unsynchronised, kTimedated);
  s.start();
  clock_.advance(30s);
  EXPECT_TRUE(transport_.connects.empty());
  EXPECT_EQ(s.state(), ConnectionState::Connecting);
  EXPECT_NE(s.lastError().message.find("waiting up to 90 s for the system clock to be "
                                       "synchronised (systemd-timedated: NTP service active"),
            std::string::npos)
      << s.lastError().message;
  EXPECT_EQ(states_.errors.back(), s.lastError().message) << "observers heard why";
  s.setClockSync(core::ClockSync::Synchronised, "systemd-timedated: NTPSynchronized=yes");
  ASSERT_EQ(transport_.connects.size(), 1u) << "the attempt goes as soon as the clock is right";
  transport_.acceptConnect();
  EXPECT_TRUE(s.connected());
  EXPECT_TRUE(s.lastError().message.empty());
}

// The wait is bounded: then the device connects anyway, and a refusal says the clock may be why.
TEST_F(HubSessionTest, TheWaitForTheClockIsBoundedAndARefusalThenSaysWhy) {
  auto o = options();
  o.clockSyncTimeout = 20s;
  auto& s = make(std::move(o));
  s.setClockSync(core::ClockSync::Unsynchronised, kTimedated);
  s.start();
  clock_.advance(20s - 1ms);
  EXPECT_TRUE(transport_.connects.empty());
  clock_.advance(1ms);
  ASSERT_EQ(transport_.connects.size(), 1u);
  transport_.refuseConnect(5);
  EXPECT_EQ(s.lastError().code, core::Errc::Unauthorized);
  EXPECT_NE(s.lastError().message.find("the system clock is not synchronised yet"),
            std::string::npos)
      << s.lastError().message;
  EXPECT_NE(s.lastError().message.find("more than 5 minutes off"), std::string::npos);
  // The retry after the refusal does not wait for the clock again: the bound is spent.
  auto next = clock_.nextTimerIn();
  ASSERT_TRUE(next);
  clock_.advance(*next);
  EXPECT_EQ(transport_.connects.size(), 2u);
}

TEST_F(HubSessionTest, WithoutATimeServiceItConnectsAtOnce) {
  auto& s = make();
  s.setClockSync(core::ClockSync::Unknown, "no time service");
  s.start();
  EXPECT_EQ(transport_.connects.size(), 1u);
}

TEST_F(HubSessionTest, WithTheWaitTurnedOffItConnectsAtOnce) {
  auto o = options();
  o.clockSyncTimeout = 0s;
  auto& s = make(std::move(o));
  s.setClockSync(core::ClockSync::Unsynchronised, kTimedated);
  s.start();
  EXPECT_EQ(transport_.connects.size(), 1u);
}

// The hub refused a token made with a clock 6 minutes slow; time sync then steps the clock: a
// new token goes at once instead of after the backoff.
TEST_F(HubSessionTest, AClockStepMakesANewTokenAtOnceAfterARefusal) {
  auto o = options();
  o.connectionRetryInitialDelay = 30s;
  auto& s = make(std::move(o));
  s.start();
  transport_.refuseConnect(5);
  ASSERT_EQ(transport_.connects.size(), 1u);
  const std::uint64_t firstExpiry = s.sasTokenExpiry();
  clock_.advance(1s);
  s.clockStepped(10s);  // a small correction changes nothing
  EXPECT_EQ(transport_.connects.size(), 1u);
  clock_.unixBase_ += 360;
  s.clockStepped(360s);
  ASSERT_EQ(transport_.connects.size(), 2u);
  EXPECT_EQ(s.sasTokenExpiry(), firstExpiry + 1 + 10 + 360 - 10)
      << "the token is made with the new clock";
  transport_.acceptConnect();
  EXPECT_TRUE(s.connected());
}

// A link that is up reconnects with a new token, as a planned reconnect apps do not see; an
// operator's token only gets its reminder re-armed.
TEST_F(HubSessionTest, AClockStepRenewsTheTokenOfALinkThatIsUpWithoutAnOutage) {
  auto& s = connected();
  const std::uint64_t firstExpiry = s.sasTokenExpiry();
  clock_.unixBase_ += 600;
  s.clockStepped(600s);
  EXPECT_TRUE(transport_.disconnectRequested);
  transport_.finishDisconnect();
  ASSERT_EQ(transport_.connects.size(), 2u);
  EXPECT_EQ(s.sasTokenExpiry(), firstExpiry + 600);
  transport_.acceptConnect();
  EXPECT_EQ(states_.states, (std::vector{ConnectionState::Connecting, ConnectionState::Connected}));
}

// After a refusal of a token made from the key, the clock becoming synchronised (slewed, no
// step) ends the backoff too: the refusal may have been the clock's.
TEST_F(HubSessionTest, ASynchronisedClockEndsTheBackoffAfterARefusedKeyToken) {
  auto o = options();
  o.clockSyncTimeout = 5s;
  o.connectionRetryInitialDelay = 30s;
  auto& s = make(std::move(o));
  s.setClockSync(core::ClockSync::Unsynchronised, kTimedated);
  s.start();
  clock_.advance(5s);
  transport_.refuseConnect(5);
  ASSERT_EQ(transport_.connects.size(), 1u);
  s.setClockSync(core::ClockSync::Synchronised, "systemd-timedated: NTPSynchronized=yes");
  EXPECT_EQ(transport_.connects.size(), 2u);
}

// A planned reconnect (token renewal) never waits for the clock: its link was fine.
TEST_F(HubSessionTest, APlannedReconnectDoesNotWaitForTheClock) {
  auto& s = connected();
  s.setClockSync(core::ClockSync::Unsynchronised, kTimedated);
  clock_.advance(3480s);
  ASSERT_TRUE(transport_.disconnectRequested);
  transport_.finishDisconnect();
  EXPECT_EQ(transport_.connects.size(), 2u);
}

struct EventRecorder : StateRecorder {
  struct C2d {
    std::string body;
    std::map<std::string, std::string> properties, system;
  };
  void onC2dMessage(std::string_view body, const std::map<std::string, std::string>& p,
                    const std::map<std::string, std::string>& sys) override {
    c2d.push_back({std::string(body), p, sys});
  }
  void onMethodRequest(const std::string& rid, const std::string& name,
                       std::string_view payload) override {
    methods.push_back({rid, name, std::string(payload)});
  }
  void onDesiredPropertiesPatch(const std::string& json) override { desired.push_back(json); }
  void onBackgroundError(const core::Error& e) override { errors.push_back(e); }
  std::vector<C2d> c2d;
  std::vector<std::array<std::string, 3>> methods;
  std::vector<std::string> desired;
  std::vector<core::Error> errors;
};

class HubSessionInboundTest : public HubSessionTest {
 protected:
  HubSession& connectedWith(SessionOptions o) {
    auto& s = make(std::move(o));
    s.setObserver(&events_);
    transport_.subackOnConnect = true;
    s.start();
    transport_.acceptConnect();
    return s;
  }
  EventRecorder events_;
};

// Issue 14: every SDK waits for the SUBACK of $iothub/twin/res/# before a twin request; the hub
// may drop the answer to one that comes before. A GET asked for while connecting goes out only
// then, and is answered.
TEST_F(HubSessionInboundTest, TwinRequestsWaitForTheSubackOfTheResponseTopic) {
  auto o = options();
  o.ensureDesiredProperties = false;
  auto& s = make(std::move(o));
  std::optional<core::Result<std::string>> twin;
  s.getTwin([&](core::Result<std::string> r) { twin = std::move(r); });  // auto_connect
  transport_.acceptConnect();
  EXPECT_EQ(transport_.lastPublished("$iothub/twin/GET/"), nullptr) << "sent before the SUBACK";
  // Another request while the SUBACK is outstanding waits as well.
  std::optional<core::Result<std::uint64_t>> patched;
  s.patchReportedProperties(R"({"a":1})", [&](core::Result<std::uint64_t> r) { patched = r; });
  EXPECT_EQ(transport_.lastPublished("$iothub/twin/PATCH/"), nullptr);
  transport_.subackAll();
  const auto* get = transport_.lastPublished("$iothub/twin/GET/");
  ASSERT_NE(get, nullptr);
  ASSERT_NE(transport_.lastPublished("$iothub/twin/PATCH/"), nullptr);
  transport_.deliver("$iothub/twin/res/200/?$rid=" + FakeMqttTransport::ridOf(get->topic),
                     R"({"desired":{"$version":1},"reported":{"$version":1}})");
  ASSERT_TRUE(twin.has_value());
  EXPECT_TRUE(twin->has_value());
  // After a drop, the next link waits for its own SUBACK again.
  transport_.drop();
  clock_.advance(100ms);
  transport_.acceptConnect();
  const std::size_t before = transport_.published.size();
  std::optional<core::Result<std::string>> again;
  s.getTwin([&](core::Result<std::string> r) { again = std::move(r); });
  EXPECT_EQ(transport_.published.size(), before);
  transport_.subackAll();
  EXPECT_GT(transport_.published.size(), before);
}

TEST_F(HubSessionInboundTest, SubscribesToEveryFeatureOnEachConnect) {
  connectedWith(options());
  EXPECT_EQ(
      transport_.subscriptions,
      (std::vector<std::string>{"devices/dev1/messages/devicebound/#", "$iothub/methods/POST/#",
                                "$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#"}));
  transport_.drop();
  clock_.advance(100ms);
  transport_.acceptConnect();
  EXPECT_EQ(transport_.subscriptions.size(), 8u) << "not resubscribed after the reconnect";
}

TEST_F(HubSessionInboundTest, ModulesDoNotSubscribeToC2d) {
  auto o = options();
  o.moduleId = "mod1";
  connectedWith(std::move(o));
  EXPECT_EQ(transport_.subscriptions.front(), "$iothub/methods/POST/#");
}

TEST_F(HubSessionInboundTest, C2dMessagesArriveWithSystemAndCustomProperties) {
  connectedWith(options());
  transport_.deliver(
      "devices/dev1/messages/devicebound/"
      "%24.mid=c2d-1&%24.ct=text%2Fplain&iothub-ack=full&colour=dark%20blue",
      "hello device");
  ASSERT_EQ(events_.c2d.size(), 1u);
  EXPECT_EQ(events_.c2d[0].body, "hello device");
  EXPECT_EQ(events_.c2d[0].system.at("message-id"), "c2d-1");
  EXPECT_EQ(events_.c2d[0].system.at("content-type"), "text/plain");
  EXPECT_EQ(events_.c2d[0].system.at("ack"), "full");
  EXPECT_EQ(events_.c2d[0].properties,
            (std::map<std::string, std::string>{{"colour", "dark blue"}}));
}

TEST_F(HubSessionInboundTest, MethodRequestsAreReportedAndAnsweredWithTheirRid) {
  auto& s = connectedWith(options());
  transport_.deliver("$iothub/methods/POST/reboot/?$rid=7", R"({"delay":5})");
  ASSERT_EQ(events_.methods.size(), 1u);
  EXPECT_EQ(events_.methods[0], (std::array<std::string, 3>{"7", "reboot", R"({"delay":5})"}));
  Outcome answered;
  s.sendMethodResponse("7", 200, R"({"ok":true})", answered.callback());
  auto* res = transport_.lastPublished("$iothub/methods/res/");
  ASSERT_NE(res, nullptr);
  EXPECT_EQ(res->topic, "$iothub/methods/res/200/?$rid=7");
  EXPECT_EQ(res->payload, R"({"ok":true})");
  EXPECT_FALSE(answered.done());
  transport_.ack(res->mid);
  EXPECT_TRUE(answered.ok());
}

TEST_F(HubSessionInboundTest, TwinGetAndReportedPatchMatchResponsesByRid) {
  auto& s = connectedWith(options());
  std::optional<core::Result<std::string>> twin;
  std::optional<core::Result<std::uint64_t>> version;
  s.getTwin([&](core::Result<std::string> r) { twin = std::move(r); });
  s.patchReportedProperties(R"({"fw":"1.2"})",
                            [&](core::Result<std::uint64_t> r) { version = std::move(r); });
  auto* get = transport_.lastPublished("$iothub/twin/GET/");
  auto* patch = transport_.lastPublished("$iothub/twin/PATCH/properties/reported/");
  ASSERT_TRUE(get && patch);
  EXPECT_EQ(patch->payload, R"({"fw":"1.2"})");
  EXPECT_EQ(get->qos, 0);
  // Answers in the other order, plus one for nobody.
  transport_.deliver(
      "$iothub/twin/res/204/?$rid=" + FakeMqttTransport::ridOf(patch->topic) + "&$version=7", "");
  transport_.deliver("$iothub/twin/res/200/?$rid=unknown", "{}");
  transport_.deliver("$iothub/twin/res/200/?$rid=" + FakeMqttTransport::ridOf(get->topic),
                     R"({"desired":{"$version":3},"reported":{"$version":7}})");
  ASSERT_TRUE(twin && *twin);
  EXPECT_EQ(**twin, R"({"desired":{"$version":3},"reported":{"$version":7}})");
  ASSERT_TRUE(version && *version);
  EXPECT_EQ(**version, 7u);
}

TEST_F(HubSessionInboundTest, TwinErrorStatusBecomesAServiceErrorWithTheStatus) {
  auto& s = connectedWith(options());
  std::optional<core::Result<std::string>> twin;
  s.getTwin([&](core::Result<std::string> r) { twin = std::move(r); });
  auto* get = transport_.lastPublished("$iothub/twin/GET/");
  transport_.deliver("$iothub/twin/res/429/?$rid=" + FakeMqttTransport::ridOf(get->topic), "");
  ASSERT_TRUE(twin && !*twin);
  EXPECT_EQ(twin->error().code, core::Errc::Service);
  EXPECT_EQ(twin->error().sysErrno, 429);
  EXPECT_NE(twin->error().message.find("429"), std::string::npos);
}

TEST_F(HubSessionInboundTest, UnansweredTwinRequestTimesOut) {
  auto& s = connectedWith(options());
  std::optional<core::Result<std::string>> twin;
  s.getTwin([&](core::Result<std::string> r) { twin = std::move(r); });
  clock_.advance(59s);
  EXPECT_FALSE(twin);
  clock_.advance(1s);
  ASSERT_TRUE(twin && !*twin);
  EXPECT_EQ(twin->error().code, core::Errc::Timeout);
}

TEST_F(HubSessionInboundTest, TwinRequestLostInADropIsResentAfterTheReconnect) {
  auto& s = connectedWith(options());
  std::optional<core::Result<std::string>> twin;
  s.getTwin([&](core::Result<std::string> r) { twin = std::move(r); });
  std::string rid = FakeMqttTransport::ridOf(transport_.lastPublished("$iothub/twin/GET/")->topic);
  transport_.drop();
  clock_.advance(100ms);
  transport_.acceptConnect();
  auto* again = transport_.lastPublished("$iothub/twin/GET/");
  EXPECT_EQ(FakeMqttTransport::ridOf(again->topic), rid);
  transport_.deliver("$iothub/twin/res/200/?$rid=" + rid, R"({"desired":{},"reported":{}})");
  EXPECT_TRUE(twin && *twin);
}

TEST_F(HubSessionInboundTest, EnsureDesiredPropertiesReportsTheDesiredSectionOnlyWhenItMoved) {
  auto o = options();
  o.ensureDesiredProperties = true;
  connectedWith(std::move(o));
  auto answerGet = [&](const std::string& twin) {
    auto* get = transport_.lastPublished("$iothub/twin/GET/");
    ASSERT_NE(get, nullptr);
    transport_.deliver("$iothub/twin/res/200/?$rid=" + FakeMqttTransport::ridOf(get->topic), twin);
  };
  // First connect: the starting state, once.
  answerGet(R"({"desired":{"mode":"eco","$version":4},"reported":{"$version":1}})");
  ASSERT_EQ(events_.desired.size(), 1u);
  EXPECT_EQ(events_.desired[0], R"({"mode":"eco","$version":4})");
  // A live patch.
  transport_.deliver("$iothub/twin/PATCH/properties/desired/?$version=5",
                     R"({"mode":"boost","$version":5})");
  ASSERT_EQ(events_.desired.size(), 2u);
  // Reconnect without a change: nothing new.
  transport_.drop();
  clock_.advance(100ms);
  transport_.acceptConnect();
  answerGet(R"({"desired":{"mode":"boost","$version":5},"reported":{"$version":1}})");
  EXPECT_EQ(events_.desired.size(), 2u);
  // A change made while we were away arrives after the next reconnect (a second drop soon after
  // the first waits out the backoff's floor).
  transport_.drop();
  clock_.advance(16s);
  transport_.acceptConnect();
  answerGet(R"({"desired":{"mode":"off","$version":6},"reported":{"$version":1}})");
  ASSERT_EQ(events_.desired.size(), 3u);
  EXPECT_EQ(events_.desired[2], R"({"mode":"off","$version":6})");
  // A stale patch (older than what the fetch gave) is dropped.
  transport_.deliver("$iothub/twin/PATCH/properties/desired/?$version=6",
                     R"({"mode":"off","$version":6})");
  EXPECT_EQ(events_.desired.size(), 3u);
}

TEST_F(HubSessionInboundTest, FailedDesiredFetchIsABackgroundErrorRetriedWithoutATightLoop) {
  auto o = options();
  o.ensureDesiredProperties = true;
  connectedWith(std::move(o));
  auto* get = transport_.lastPublished("$iothub/twin/GET/");
  transport_.deliver("$iothub/twin/res/429/?$rid=" + FakeMqttTransport::ridOf(get->topic), "");
  ASSERT_EQ(events_.errors.size(), 1u);
  EXPECT_EQ(events_.errors[0].sysErrno, 429);
  size_t gets = 0;
  for (const auto& p : transport_.published) {
    gets += p.topic.rfind("$iothub/twin/GET/", 0) == 0;
  }
  EXPECT_EQ(gets, 1u);
  clock_.advance(12s);
  size_t after = 0;
  for (const auto& p : transport_.published) {
    after += p.topic.rfind("$iothub/twin/GET/", 0) == 0;
  }
  EXPECT_EQ(after, 2u);
}

TEST_F(HubSessionInboundTest, UpdateSasTokenValidatesAndReauthorises) {
  auto o = options();
  o.auth = AuthMethod::SasToken;
  auto token = [&](const std::string& device, std::uint64_t expiry) {
    return "SharedAccessSignature sr=contoso.azure-devices.net%2Fdevices%2F" + device +
           "&sig=abc%3D&se=" + std::to_string(expiry);
  };
  o.sasToken = core::Secret<>(token("dev1", clock_.unixSeconds() + 600));
  auto& s = connectedWith(std::move(o));
  auto other = s.updateSasToken(token("dev2", clock_.unixSeconds() + 600));
  ASSERT_FALSE(other);
  EXPECT_EQ(other.error().code, core::Errc::InvalidArgument);
  auto expired = s.updateSasToken(token("dev1", clock_.unixSeconds() - 1));
  ASSERT_FALSE(expired);
  EXPECT_EQ(expired.error().code, core::Errc::InvalidArgument);
  EXPECT_FALSE(s.updateSasToken("garbage"));
  EXPECT_FALSE(transport_.disconnectRequested);

  std::string fresh = token("dev1", clock_.unixSeconds() + 3600);
  ASSERT_TRUE(s.updateSasToken(fresh));
  EXPECT_TRUE(transport_.disconnectRequested);
  transport_.finishDisconnect();
  ASSERT_EQ(transport_.connects.size(), 2u);
  EXPECT_EQ(transport_.connects[1].password.reveal(), fresh);
  transport_.acceptConnect();
  EXPECT_EQ(s.sasTokenExpiry(), clock_.unixSeconds() + 3600);
}

TEST_F(HubSessionInboundTest, ATokenTheHubRefusesLeavesThePreviousOneInUseAndSaysSo) {
  auto o = options();
  o.auth = AuthMethod::SasToken;
  auto token = [&](std::uint64_t expiry) {
    return "SharedAccessSignature sr=contoso.azure-devices.net%2Fdevices%2Fdev1&sig=abc%3D&se=" +
           std::to_string(expiry);
  };
  const std::string good = token(clock_.unixSeconds() + 600);
  o.sasToken = core::Secret<>(good);
  auto& s = connectedWith(std::move(o));
  events_.states.clear();
  ASSERT_TRUE(s.updateSasToken(token(clock_.unixSeconds() + 3600)));
  transport_.finishDisconnect();
  ASSERT_EQ(transport_.connects.size(), 2u);
  transport_.refuseConnect(5);
  // At once, with the token that worked, and no outage apps would see.
  ASSERT_EQ(transport_.connects.size(), 3u);
  EXPECT_EQ(transport_.connects[2].password.reveal(), good);
  ASSERT_EQ(events_.errors.size(), 1u);
  EXPECT_EQ(events_.errors[0].code, core::Errc::Unauthorized);
  EXPECT_NE(events_.errors[0].message.find("previous token"), std::string::npos)
      << events_.errors[0].message;
  transport_.acceptConnect();
  EXPECT_EQ(s.state(), ConnectionState::Connected);
  EXPECT_TRUE(events_.states.empty()) << "the state never left connected";
  EXPECT_NE(s.lastError().message.find("refused the new SAS token"), std::string::npos);
  EXPECT_EQ(s.sasTokenExpiry(), clock_.unixSeconds() + 600);

  // Refused again later: no fallback is left twice, the accepted token is the fallback again.
  ASSERT_TRUE(s.updateSasToken(token(clock_.unixSeconds() + 7200)));
  transport_.finishDisconnect();
  transport_.refuseConnect(5);
  ASSERT_EQ(transport_.connects.size(), 5u);
  EXPECT_EQ(transport_.connects[4].password.reveal(), good);
}

TEST_F(HubSessionInboundTest, AnExpiredPreviousTokenIsNotRestored) {
  auto o = options();
  o.auth = AuthMethod::SasToken;
  auto token = [&](std::uint64_t expiry) {
    return "SharedAccessSignature sr=contoso.azure-devices.net%2Fdevices%2Fdev1&sig=abc%3D&se=" +
           std::to_string(expiry);
  };
  o.sasToken = core::Secret<>(token(clock_.unixSeconds() + 60));
  auto& s = connectedWith(std::move(o));
  ASSERT_TRUE(s.updateSasToken(token(clock_.unixSeconds() + 3600)));
  clock_.advance(61s);
  transport_.finishDisconnect();
  transport_.refuseConnect(5);
  EXPECT_EQ(transport_.connects.size(), 2u) << "nothing valid to go back to";
  EXPECT_EQ(s.lastError().code, core::Errc::Unauthorized);
}

// Issue 14: the hub takes a method answer only on the connection its request came on.
TEST_F(HubSessionInboundTest, AMethodRequestOfAClosedLinkIsNeverAnsweredOnTheNextOne) {
  auto& s = connectedWith(options());
  transport_.deliver("$iothub/methods/POST/reboot/?$rid=7", "{}");
  transport_.drop();
  clock_.advance(100ms);
  transport_.acceptConnect();
  const std::size_t before = transport_.published.size();
  Outcome answered;
  s.sendMethodResponse("7", 200, "{}", answered.callback());
  ASSERT_TRUE(answered.done());
  EXPECT_EQ(answered.code(), core::Errc::ConnectionDropped);
  EXPECT_NE(answered.result->error().message.find("closed"), std::string::npos);
  EXPECT_EQ(transport_.published.size(), before) << "a stale $rid reached the hub";
  // A request of this link is answered on it, once.
  transport_.deliver("$iothub/methods/POST/reboot/?$rid=8", "{}");
  Outcome first;
  s.sendMethodResponse("8", 200, "{}", first.callback());
  EXPECT_EQ(transport_.lastPublished("$iothub/methods/res/")->topic,
            "$iothub/methods/res/200/?$rid=8");
  Outcome second;
  s.sendMethodResponse("8", 200, "{}", second.callback());
  ASSERT_TRUE(second.done());
  EXPECT_FALSE(second.ok());
}

// Issue 14: an outbox message (publishPrepared) waits for its PUBACK as long as its link lives:
// a throttling hub delays PUBACKs, and nothing is sent twice on one link.
TEST_F(HubSessionInboundTest, PreparedPublishesWaitForTheirPubackUntilTheLinkEnds) {
  auto& s = connectedWith(options());
  Outcome sent;
  ASSERT_TRUE(s.publishPrepared("devices/dev1/messages/events/", "x", sent.callback()));
  ASSERT_EQ(transport_.published.size(), 1u);
  clock_.advance(10min);
  EXPECT_FALSE(sent.done()) << "timed out on a live link";
  transport_.ack(transport_.published[0].mid);
  EXPECT_TRUE(sent.ok());
  Outcome dropped;
  ASSERT_TRUE(s.publishPrepared("devices/dev1/messages/events/", "y", dropped.callback()));
  clock_.advance(5min);
  transport_.drop();
  ASSERT_TRUE(dropped.done());
  EXPECT_EQ(dropped.code(), core::Errc::ConnectionDropped);
}

TEST_F(HubSessionInboundTest, UpdateSasTokenIsNotSupportedForKeyAuthentication) {
  auto& s = connectedWith(options());
  auto r = s.updateSasToken("SharedAccessSignature sr=x&sig=y&se=1");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, core::Errc::NotSupported);
}

TEST_F(HubSessionInboundTest, AFailedAutomaticReconnectIsABackgroundError) {
  connectedWith(options());
  transport_.drop();
  ASSERT_EQ(events_.errors.size(), 1u);
  EXPECT_EQ(events_.errors[0].code, core::Errc::ConnectionDropped);
  clock_.advance(100ms);
  transport_.failConnect("no route to host");
  ASSERT_EQ(events_.errors.size(), 2u);
  EXPECT_EQ(events_.errors[1].code, core::Errc::ConnectionFailed);
}

}  // namespace
}  // namespace iothubd::session
