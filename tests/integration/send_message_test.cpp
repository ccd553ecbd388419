// SPDX-License-Identifier: MIT
// The walking skeleton, end to end: an app calls SendMessage on the bus, iothubd publishes it
// over MQTT/TLS, and the hub emulator receives exactly what the official SDKs send.
#include <sys/stat.h>

#include <cstdio>
#include <future>

#include "daemon_fixture.hpp"

namespace iothubd::testing {
namespace {

using Steady = std::chrono::steady_clock;

class SendMessageTest : public DaemonTest {};

TEST_F(SendMessageTest, ReachesTheHubWithTheSdkTopicAndRepliesOnlyAfterThePuback) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  // The emulator holds back the PUBACK of the next telemetry message: the reply must wait.
  constexpr auto kPubackDelay = 1500ms;
  service.delayPuback(kDevice, kPubackDelay, 1);

  auto started = Steady::now();
  std::string id =
      client().SendMessage(R"({"temperature":21.5})", {{"alert level", "high"}, {"path", "a/b&c"}},
                           {{"content-type", "application/json"}, {"message-id", "msg-42"}});
  auto replyAfter = Steady::now() - started;

  EXPECT_EQ(id, "msg-42");
  auto received = service.waitForTelemetry();
  ASSERT_TRUE(received.has_value());
  // Protocol doc section 4: system properties first as %24.xx, then custom properties sorted by
  // key; every key and value percent-encoded (space, '/', '&').
  EXPECT_EQ(received->topic,
            "devices/dev1/messages/events/"
            "%24.mid=msg-42&%24.ct=application%2Fjson&alert%20level=high&path=a%2Fb%26c");
  EXPECT_EQ(received->payload, R"({"temperature":21.5})");
  EXPECT_EQ(received->property("alert level"), "high");
  EXPECT_EQ(received->property("path"), "a/b&c");
  EXPECT_GE(replyAfter, kPubackDelay) << "SendMessage replied before the hub acknowledged";
}

TEST_F(SendMessageTest, GeneratesAMessageIdWhenNoneIsGiven) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  std::string id = client().SendMessage("hello", {}, {});
  ASSERT_FALSE(id.empty());
  auto received = service.waitForTelemetry();
  ASSERT_TRUE(received.has_value());
  EXPECT_EQ(received->property("$.mid"), id);
  EXPECT_EQ(received->payload, "hello");
}

TEST_F(SendMessageTest, WrongDeviceKeyFailsConnectWithCredentialAndTheDaemonKeepsServing) {
  std::string wrongKey = hubemu::randomKey();
  writeConnectionString(wrongKey);
  startDaemon();
  std::string message;
  EXPECT_EQ(errorNameOf([&] { client().Connect(); }, &message), "org.iothubd.Error.Credential");
  EXPECT_NE(message.find("not authorised"), std::string::npos) << message;
  // Still serving: properties answer and the next call gets its own, equally precise, error.
  EXPECT_FALSE(client().Connected());
  EXPECT_EQ(errorNameOf([&] { client().SendMessage("x", {}, {}); }),
            "org.iothubd.Error.Credential");
  EXPECT_TRUE(daemon_->running());
  std::string log = daemon_->log();
  EXPECT_EQ(log.find("SharedAccessSignature sr="), std::string::npos) << "a SAS token was logged";
  EXPECT_EQ(log.find(wrongKey), std::string::npos) << "the device key was logged";
}

TEST_F(SendMessageTest, OversizedMessageFailsWithMessageTooLargeAndNothingReachesTheHub) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  // 262 144 bytes is the hub's limit for body + property names and values (doc section 4).
  std::string body(262144 - 10, 'x');
  std::string message;
  EXPECT_EQ(errorNameOf(
                [&] {
                  client().SendMessage(body, {{"level", "high!"}}, {});
                },
                &message),
            "org.iothubd.Error.MessageTooLarge");
  EXPECT_NE(message.find("262144"), std::string::npos) << message;
  // Exactly at the limit is fine (the message id's value counts too); and it is the only
  // message the hub ever saw.
  std::string id = client().SendMessage(std::string(262144 - 10, 'y'), {{"level", "high"}},
                                        {{"message-id", "m"}});
  auto received = service.waitForTelemetry();
  ASSERT_TRUE(received.has_value());
  EXPECT_EQ(received->property("$.mid"), id);
  EXPECT_EQ(service.telemetry().size(), 1u);
}

TEST_F(SendMessageTest, UnknownSystemPropertyIsInvalidArgsNamingIt) {
  startDaemon();
  std::string message;
  EXPECT_EQ(errorNameOf(
                [&] {
                  client().SendMessage("x", {}, {{"colour", "red"}});
                },
                &message),
            "org.freedesktop.DBus.Error.InvalidArgs");
  EXPECT_NE(message.find("colour"), std::string::npos) << message;
  EXPECT_FALSE(client().SendMessage("still serving", {}, {}).empty());
}

TEST_F(SendMessageTest, DisconnectAndConnectAreSignalledAndNoConnectionWithoutAutoConnect) {
  // keep_connected off: a Disconnect that leaves no app holding the link closes it (the
  // single-app gateway's behaviour; by default the daemon keeps it up, see trust_test.cpp).
  writeConfig("[connection]\nauto_connect = false\nkeep_connected = false\n");
  startDaemon();
  awaitOnline();  // the daemon connects at start
  auto& c = client();
  c.Disconnect();
  EXPECT_TRUE(c.waitForConnectionStateChanged(false));
  EXPECT_TRUE(c.waitForConnectedProperty(false));
  EXPECT_FALSE(c.Connected());
  EXPECT_EQ(errorNameOf([&] { c.SendMessage("x", {}, {}); }), "org.iothubd.Error.NoConnection");

  c.Connect();
  EXPECT_TRUE(c.Connected());
  EXPECT_TRUE(c.waitForConnectionStateChanged(true));
  EXPECT_TRUE(c.waitForConnectedProperty(true));
  EXPECT_FALSE(c.SendMessage("after reconnect", {}, {}).empty());
}

TEST_F(SendMessageTest, AutoConnectOpensTheConnectionForTheFirstMessage) {
  writeConfig("[connection]\nkeep_connected = false\n");
  startDaemon();
  hubemu::ServiceClient service(hub_);
  client().Disconnect();
  EXPECT_FALSE(client().Connected());
  EXPECT_FALSE(client().SendMessage("auto", {}, {}).empty());
  EXPECT_TRUE(client().Connected());
  EXPECT_TRUE(service.waitForTelemetry().has_value());
}

TEST_F(SendMessageTest, WhileTheHubIsAwayMessagesWaitInMemoryWithinTheLimitAndAreNeverStored) {
  // Issue 13: SendMessage is not durable; while the connection is re-established it waits in
  // memory, bounded by [limits] max_queued_messages, and is answered after its PUBACK.
  writeConfig("[connection]\nconnection_retry_interval = 1\n[limits]\nmax_queued_messages = 3\n");
  startDaemon();
  awaitOnline();
  hub_.stop();
  ASSERT_TRUE(client().waitForConnectionStateChanged(false));

  std::vector<std::future<std::string>> waiting;  // the error name, "" for success
  for (int i = 1; i <= 3; ++i) {
    auto promise = std::make_shared<std::promise<std::string>>();
    waiting.push_back(promise->get_future());
    client()
        .getProxyForTest()
        .callMethodAsync("SendMessage")
        .onInterface("org.iothubd.Device1")
        .withArguments(std::string("held"), StringMap{},
                       StringMap{{"message-id", "held-" + std::to_string(i)}})
        .uponReplyInvoke([promise](const sdbus::Error* error, const std::string&) {
          promise->set_value(error != nullptr ? error->getName() : std::string());
        });
  }
  std::string message;
  EXPECT_EQ(errorNameOf([&] { client().SendMessage("one too many", {}, {}); }, &message),
            "org.iothubd.Error.QueueFull");
  EXPECT_NE(message.find("(3)"), std::string::npos) << message;
  for (auto& w : waiting) {
    EXPECT_EQ(w.wait_for(0s), std::future_status::timeout) << "answered without the hub";
  }
  EXPECT_EQ(client().OutboxLength(), 0u) << "a SendMessage was stored";

  hub_.restart();
  for (auto& w : waiting) {
    ASSERT_EQ(w.wait_for(30s), std::future_status::ready);
    EXPECT_EQ(w.get(), "");
  }
  hubemu::ServiceClient service(hub_);
  auto ledger = service.ledger(kDevice);
  for (const char* id : {"held-1", "held-2", "held-3"}) {
    EXPECT_EQ(ledger.ids.count(id), 1u) << id;
  }
  EXPECT_EQ(client().OutboxLength(), 0u);
}

TEST_F(SendMessageTest, BusctlCanSendAMessage) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  std::string cmd = "busctl --address='" + bus_->address() +
                    "' call org.iothubd /org/iothubd/Device org.iothubd.Device1 SendMessage "
                    "'sa{ss}a{ss}' 'from busctl' 1 level high 1 message-id bus-1 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[512] = {};
  size_t n = std::fread(buf, 1, sizeof buf - 1, p);
  int status = ::pclose(p);
  EXPECT_EQ(status, 0) << std::string(buf, n);
  EXPECT_EQ(std::string(buf, n), "s \"bus-1\"\n");
  auto received = service.waitForTelemetry();
  ASSERT_TRUE(received.has_value());
  EXPECT_EQ(received->topic, "devices/dev1/messages/events/%24.mid=bus-1&level=high");
}

TEST_F(SendMessageTest, SigtermStopsTheDaemonWithExitStatusZero) {
  startDaemon();
  ASSERT_FALSE(client().SendMessage("x", {}, {}).empty());
  client_.reset();
  EXPECT_EQ(daemon_->stop(), 0);
}

}  // namespace
}  // namespace iothubd::testing
