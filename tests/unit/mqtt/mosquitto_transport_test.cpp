// SPDX-License-Identifier: MIT
// The MQTT transport on the real event loop against a byte-scripted broker: the CONNECT it
// writes, CONNACKs refused or never sent, malformed packets, packets split across reads, and a
// broker that stops reading while the transport has megabytes to write (partial writes).
#include "iothubd/mqtt/mosquitto_transport.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "iothubd/session/hub_session.hpp"
#include "loop_test_util.hpp"
#include "scripted_broker.hpp"
#include "temp_dir.hpp"

namespace iothubd::mqtt {
namespace {

using namespace std::chrono_literals;
using testing::encodePacket;
using testing::Packet;
using testing::runUntil;
using testing::ScriptedBroker;

/// CONNACK (MQTT 3.1.1, 3.2) with session-present 0 and `code`.
std::string connack(int code) {
  return encodePacket(0x20, std::string{'\0', static_cast<char>(code)});
}

/// PUBACK for `messageId`.
std::string puback(int messageId) {
  return encodePacket(
      0x40, std::string{static_cast<char>(messageId >> 8), static_cast<char>(messageId & 0xFF)});
}

/// PUBLISH QoS 0 of `payload` on `topic`.
std::string publish(const std::string& topic, const std::string& payload) {
  std::string body{static_cast<char>(topic.size() >> 8), static_cast<char>(topic.size() & 0xFF)};
  return encodePacket(0x30, body + topic + payload);
}

/// Everything the transport reported, in order.
class Recorder : public MqttTransport::Listener {
 public:
  void onConnected() override { events.emplace_back("connected"); }
  void onDisconnected(const Disconnect& d) override {
    events.emplace_back("disconnected");
    disconnects.push_back(d);
  }
  void onPublishAcked(int mid) override { acked.push_back(mid); }
  void onSubscribed(int) override {}
  void onMessage(std::string_view topic, std::string_view payload) override {
    messages.emplace_back(std::string(topic), std::string(payload));
  }
  std::vector<std::string> events;
  std::vector<Disconnect> disconnects;
  std::vector<int> acked;
  std::vector<std::pair<std::string, std::string>> messages;
};

class MosquittoTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto loop = loop::EventLoop::create();
    ASSERT_TRUE(loop.has_value());
    loop_ = std::move(*loop);
    auto transport = createMosquittoTransport(*loop_);
    ASSERT_TRUE(transport.has_value());
    transport_ = std::move(*transport);
    transport_->setListener(&recorder_);
  }
  void TearDown() override {
    transport_.reset();  // before the broker: its script may wait for the client to go
    broker_.reset();
  }

  void startBroker(ScriptedBroker::Script script, int receiveBuffer = 0) {
    broker_ = std::make_unique<ScriptedBroker>(dir_.path(), std::move(script), receiveBuffer);
  }
  ConnectOptions options() const {
    ConnectOptions o;
    o.host = "127.0.0.1";
    o.port = broker_->port();
    o.clientId = "dev1";
    o.username = "hub/dev1/?api-version=2021-04-12";
    o.password = core::Secret<>("SharedAccessSignature sr=x&sig=y&se=1");
    o.keepAliveSeconds = 60;
    o.tls.caFile = broker_->caFile();
    return o;
  }
  bool until(const std::function<bool()>& done, std::chrono::milliseconds timeout = 10s) {
    return runUntil(*loop_, done, timeout);
  }
  bool connected() {
    return until([&] { return !recorder_.events.empty(); }) &&
           recorder_.events.front() == "connected";
  }

  testing::TempDir dir_{"iothubd-mqtt-test"};
  std::unique_ptr<loop::EventLoop> loop_;
  std::unique_ptr<MqttTransport> transport_;
  Recorder recorder_;
  std::unique_ptr<ScriptedBroker> broker_;
};

TEST_F(MosquittoTransportTest, WritesTheConnectTheHubExpectsAndReportsCONNACK) {
  Packet seen;
  startBroker([&seen](ScriptedBroker::Connection& c) {
    seen = c.read().value();
    c.write(connack(0));
    while (c.read()) {
    }
  });
  ASSERT_TRUE(transport_->connect(options()).has_value());
  ASSERT_TRUE(connected());
  // MQTT 3.1.1, 3.1: protocol name and level 4; flags user name + password, CleanSession 0
  // (protocol doc 1.2); keep-alive 60; then client id, user name, password.
  EXPECT_EQ(seen.type(), 1);
  const std::string o = "hub/dev1/?api-version=2021-04-12";
  const std::string p = "SharedAccessSignature sr=x&sig=y&se=1";
  auto field = [](const std::string& s) {
    return std::string{static_cast<char>(s.size() >> 8), static_cast<char>(s.size() & 0xFF)} + s;
  };
  const std::string flags{4, static_cast<char>(0xC0), 0, 60};
  EXPECT_EQ(seen.body, field("MQTT") + flags + field("dev1") + field(o) + field(p));
}

TEST_F(MosquittoTransportTest, ARefusedConnackIsACredentialErrorWithItsCode) {
  startBroker([](ScriptedBroker::Connection& c) {
    (void)c.read();
    c.write(connack(5));
    while (c.read()) {
    }
  });
  ASSERT_TRUE(transport_->connect(options()).has_value());
  ASSERT_TRUE(until([&] { return !recorder_.disconnects.empty(); }));
  EXPECT_EQ(recorder_.events, std::vector<std::string>{"disconnected"});
  EXPECT_EQ(recorder_.disconnects[0].connackCode, 5);
  EXPECT_EQ(recorder_.disconnects[0].error.code, core::Errc::Unauthorized);
  EXPECT_FALSE(recorder_.disconnects[0].requested);
}

TEST_F(MosquittoTransportTest, PacketsSplitAcrossManyReadsAreReassembled) {
  startBroker([](ScriptedBroker::Connection& c) {
    (void)c.read();
    c.writeInPieces(connack(0), 1);  // four TLS records of one byte
    c.writeInPieces(publish("devices/dev1/messages/devicebound/x", std::string(3000, 'p')), 7);
    while (c.read()) {
    }
  });
  ASSERT_TRUE(transport_->connect(options()).has_value());
  ASSERT_TRUE(connected());
  ASSERT_TRUE(until([&] { return !recorder_.messages.empty(); }));
  EXPECT_EQ(recorder_.messages[0].first, "devices/dev1/messages/devicebound/x");
  EXPECT_EQ(recorder_.messages[0].second, std::string(3000, 'p'));
}

/// Malformed packets after the CONNACK: each ends the connection once, with nothing else
/// reported and nothing crashing.
TEST_F(MosquittoTransportTest, AMalformedPacketEndsTheConnectionCleanly) {
  struct Case {
    const char* what;
    std::string bytes;
  };
  const std::vector<Case> cases = {
      {"a PUBLISH whose topic runs past its end", encodePacket(0x30, std::string("\x01\x00"
                                                                                 "ab",
                                                                                 4))},
      {"a remaining length of five bytes", std::string("\x30\xFF\xFF\xFF\xFF\x01", 6)},
      {"a second CONNACK", connack(0)},
      {"a reserved packet type", encodePacket(0xF0, "")},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    recorder_ = Recorder();
    startBroker([bytes = c.bytes](ScriptedBroker::Connection& conn) {
      (void)conn.read();
      conn.write(connack(0));
      conn.write(bytes);
      while (conn.read()) {
      }
    });
    ASSERT_TRUE(transport_->connect(options()).has_value());
    ASSERT_TRUE(until([&] { return recorder_.disconnects.size() == 1; }, 3s))
        << ::testing::PrintToString(recorder_.events);
    EXPECT_EQ(recorder_.events, (std::vector<std::string>{"connected", "disconnected"}));
    EXPECT_EQ(recorder_.disconnects[0].error.code, core::Errc::ConnectionDropped);
    EXPECT_TRUE(recorder_.messages.empty());
    ASSERT_TRUE(until([&] { return broker_->finished(); })) << "the socket was not closed";
    EXPECT_EQ(broker_->failure(), "");
  }
}

TEST_F(MosquittoTransportTest, ATruncatedConnackFailsTheAttempt) {
  startBroker([](ScriptedBroker::Connection& c) {
    (void)c.read();
    c.write(encodePacket(0x20, std::string(1, '\0')));  // remaining length 1, not 2
    while (c.read()) {
    }
  });
  ASSERT_TRUE(transport_->connect(options()).has_value());
  ASSERT_TRUE(until([&] { return !recorder_.disconnects.empty(); }, 3s))
      << ::testing::PrintToString(recorder_.events);
  EXPECT_EQ(recorder_.events, std::vector<std::string>{"disconnected"});
  EXPECT_EQ(recorder_.disconnects[0].error.code, core::Errc::ConnectionFailed);
}

/// The broker stops reading: once its receive queue is full and the transport's socket takes no
/// more, the transport's writes stay partial (8 MiB do not fit into both sockets' buffers); when
/// the broker reads again every byte arrives in order and every PUBACK is reported.
TEST_F(MosquittoTransportTest, WritesThatOnlyPartlyFitResumeWhenThePeerReadsAgain) {
  constexpr int kMessages = 128;
  const std::string payload(64 * 1024, 'w');
  ScriptedBroker::Gate readAgain;
  std::vector<testing::Publish> received;
  startBroker(
      [&](ScriptedBroker::Connection& c) {
        (void)c.read();
        c.write(connack(0));
        if (!readAgain.wait()) {
          return;
        }
        while (received.size() < kMessages) {
          auto p = c.read();
          if (!p) {
            return;
          }
          if (auto pub = testing::parsePublish(*p)) {
            c.write(puback(pub->messageId));
            received.push_back(std::move(*pub));
          }
        }
        while (c.read()) {
        }
      },
      64 * 1024);
  ASSERT_TRUE(transport_->connect(options()).has_value());
  ASSERT_TRUE(connected());
  std::vector<int> mids;
  for (int i = 0; i < kMessages; ++i) {
    auto mid = transport_->publish("devices/dev1/messages/events/", payload, 1);
    ASSERT_TRUE(mid.has_value());
    mids.push_back(*mid);
  }
  // The transport writes until the sockets take no more: the broker's queue stops growing.
  int last = -1;
  ASSERT_TRUE(until([&] {
    const int now = broker_->receiveQueue();
    const bool stalled = now > 0 && now == last;
    last = now;
    return stalled;
  }));
  EXPECT_LT(last, kMessages * static_cast<int>(payload.size()));
  readAgain.open();
  ASSERT_TRUE(until([&] { return recorder_.acked.size() == kMessages; }, 30s))
      << recorder_.acked.size() << " of " << kMessages << " acknowledged";
  ASSERT_TRUE(until([&] { return received.size() == kMessages; }));
  for (const auto& p : received) {
    ASSERT_EQ(p.payload, payload);
    EXPECT_EQ(p.qos, 1);
  }
  EXPECT_EQ(recorder_.acked, mids) << "PUBACKs in publish order";
  EXPECT_EQ(recorder_.events, std::vector<std::string>{"connected"});
}

/// A CONNACK that never comes: the transport waits (keep-alive does not apply before CONNACK);
/// the session above gives up after operation_timeout and closes the attempt.
TEST_F(MosquittoTransportTest, ACONNACKThatNeverComesIsASessionTimeout) {
  ScriptedBroker::Gate sawClose;
  startBroker([&](ScriptedBroker::Connection& c) {
    (void)c.read();  // the CONNECT, then silence until the client goes
    while (c.read()) {
    }
    sawClose.open();
  });
  session::SessionOptions o;
  o.hubHostname = "127.0.0.1";
  o.deviceId = "dev1";
  o.port = broker_->port();
  o.auth = session::AuthMethod::SasToken;
  o.sasToken = core::Secret<>("SharedAccessSignature sr=127.0.0.1%2Fdevices%2Fdev1&sig=y&se=" +
                              std::to_string(loop_->unixSeconds() + 3600));
  o.tls.caFile = broker_->caFile();
  o.operationTimeout = 1s;
  o.connectionRetry = false;
  session::HubSession session(*loop_, *loop_, *transport_, o);
  std::optional<core::Result<void>> outcome;
  session.connect([&outcome](core::Result<void> r) { outcome = std::move(r); });
  ASSERT_TRUE(until([&] { return outcome.has_value(); }, 10s));
  ASSERT_FALSE(outcome->has_value());
  EXPECT_EQ(outcome->error().code, core::Errc::Timeout);
  EXPECT_EQ(outcome->error().message, "no answer from the hub within 1 s");
  EXPECT_EQ(session.state(), session::ConnectionState::Disconnected);
  // The relay tunnel closes the hub's side from the loop: keep it running while waiting.
  EXPECT_TRUE(until([&] { return sawClose.wait(0ms); }, 5s))
      << "the abandoned attempt's socket stayed open";
}

}  // namespace
}  // namespace iothubd::mqtt
