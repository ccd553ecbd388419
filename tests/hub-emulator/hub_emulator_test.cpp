// SPDX-License-Identifier: MIT
// Tests of the hub emulator itself: a real mosquitto with the plugin, libmosquitto as the device.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <mosquitto.h>

#include <chrono>
#include <condition_variable>
#include <ctime>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <curl/curl.h>

#include <iostream>

#include "file_upload_hub.hpp"
#include "hub_emulator.hpp"

namespace iothubd::hubemu {
namespace {

using namespace std::chrono_literals;
using Ms = std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

constexpr Ms kTimeout = 5s;
constexpr int kConnackNotAuthorised = 5;

int64_t unixNow() {
  return static_cast<int64_t>(std::time(nullptr));
}

struct Received {
  std::string topic;
  std::string payload;
};

// A minimal device on libmosquitto's threaded loop. One instance = one connection attempt; it
// never reconnects on its own, so kicks and refusals stay observable.
class FakeDevice {
 public:
  FakeDevice(const HubEmulator& hub, std::string clientId, bool cleanSession = false,
             std::string host = "localhost")
      : hub_(hub), clientId_(std::move(clientId)), host_(std::move(host)) {
    static std::once_flag init;
    std::call_once(init, [] { mosquitto_lib_init(); });
    mosq_.reset(mosquitto_new(clientId_.c_str(), cleanSession, this));
    mosquitto* m = mosq_.get();
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    mosquitto_tls_set(m, hub.caFile().c_str(), nullptr, nullptr, nullptr, nullptr);
    mosquitto_connect_callback_set(m, [](mosquitto* mq, void* self, int rc) {
      auto* d = static_cast<FakeDevice*>(self);
      if (rc != 0)
        mosquitto_disconnect(mq);  // no automatic retry after a refusal
      d->update([&] { d->connack_ = rc; });
    });
    mosquitto_disconnect_callback_set(m, [](mosquitto* mq, void* self, int) {
      auto* d = static_cast<FakeDevice*>(self);
      mosquitto_disconnect(mq);  // stops loop_forever from reconnecting
      d->update([&] { d->disconnected_ = true; });
    });
    mosquitto_publish_callback_set(m, [](mosquitto*, void* self, int mid) {
      auto* d = static_cast<FakeDevice*>(self);
      d->update([&] { d->acked_.push_back(mid); });
    });
    mosquitto_subscribe_callback_set(m, [](mosquitto*, void* self, int mid, int, const int* qos) {
      auto* d = static_cast<FakeDevice*>(self);
      d->update([&] { d->subacks_.emplace_back(mid, qos[0]); });
    });
    mosquitto_message_callback_set(m, [](mosquitto*, void* self, const mosquitto_message* msg) {
      auto* d = static_cast<FakeDevice*>(self);
      Received r{msg->topic, std::string(static_cast<const char*>(msg->payload),
                                         static_cast<size_t>(msg->payloadlen))};
      d->update([&] { d->messages_.push_back(std::move(r)); });
    });
  }

  ~FakeDevice() {
    if (mosq_) {
      mosquitto_disconnect(mosq_.get());
      mosquitto_loop_stop(mosq_.get(), false);
    }
  }

  // CONNACK return code, or -1 if none arrived in time or the hub closed the connection first.
  int connect(const std::string& username, const std::string& password) {
    mosquitto_username_pw_set(mosq_.get(), username.c_str(), password.c_str());
    if (mosquitto_connect(mosq_.get(), host_.c_str(), hub_.port(), 60) != MOSQ_ERR_SUCCESS)
      return -1;
    mosquitto_loop_start(mosq_.get());
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, kTimeout, [&] { return connack_ >= 0 || disconnected_; });
    return connack_;
  }

  int connectWithKey(const std::string& key, int64_t ttlSeconds = 3600) {
    return connect(makeUsername(hub_.hubHost(), clientId_),
                   makeSasToken(hub_.hubHost(), clientId_, key, unixNow() + ttlSeconds));
  }

  int connectWithToken(int64_t ttlSeconds = 3600) {
    return connectWithKey(hub_.deviceKey(clientId_), ttlSeconds);
  }

  // Granted QoS (128 = refused), or -1 on timeout.
  int subscribe(const std::string& filter, int qos = 1) {
    return waitSuback(subscribeNoWait(filter, qos));
  }

  // Sends a SUBSCRIBE and returns its message id (-1 on failure) without waiting for the SUBACK.
  int subscribeNoWait(const std::string& filter, int qos = 1) {
    int mid = 0;
    if (mosquitto_subscribe(mosq_.get(), &mid, filter.c_str(), qos) != MOSQ_ERR_SUCCESS)
      return -1;
    return mid;
  }

  // Granted QoS of the SUBACK for `mid`, or -1 on timeout.
  int waitSuback(int mid, Ms timeout = kTimeout) {
    if (mid < 0)
      return -1;
    std::unique_lock lock(mutex_);
    int granted = -1;
    cv_.wait_for(lock, timeout, [&] {
      for (auto& [m, g] : subacks_) {
        if (m == mid)
          granted = g;
      }
      return granted >= 0;
    });
    return granted;
  }

  // Sends a PUBLISH without waiting for an acknowledgement; its message id, or -1.
  int send(const std::string& topic, const std::string& payload, int qos = 1) {
    int mid = 0;
    if (mosquitto_publish(mosq_.get(), &mid, topic.c_str(), static_cast<int>(payload.size()),
                          payload.data(), qos, false) != MOSQ_ERR_SUCCESS) {
      return -1;
    }
    return mid;
  }

  // Whether the PUBACK for `mid` arrived (within `timeout`).
  bool waitAcked(int mid, Ms timeout = kTimeout) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] {
      return std::find(acked_.begin(), acked_.end(), mid) != acked_.end();
    });
  }

  bool acked(int mid) {
    std::lock_guard lock(mutex_);
    return std::find(acked_.begin(), acked_.end(), mid) != acked_.end();
  }

  // Publishes and, for QoS 1, waits for the PUBACK; returns the time until it (nullopt = none).
  std::optional<Ms> publish(const std::string& topic, const std::string& payload, int qos = 1) {
    const auto start = SteadyClock::now();
    int mid = 0;
    if (mosquitto_publish(mosq_.get(), &mid, topic.c_str(), static_cast<int>(payload.size()),
                          payload.data(), qos, false) != MOSQ_ERR_SUCCESS) {
      return std::nullopt;
    }
    std::unique_lock lock(mutex_);
    const bool acked = cv_.wait_for(lock, kTimeout, [&] {
      return std::find(acked_.begin(), acked_.end(), mid) != acked_.end();
    });
    if (!acked)
      return std::nullopt;
    return std::chrono::duration_cast<Ms>(SteadyClock::now() - start);
  }

  std::optional<Received> waitForMessage(std::function<bool(const Received&)> predicate,
                                         Ms timeout = kTimeout) {
    std::unique_lock lock(mutex_);
    std::optional<Received> found;
    cv_.wait_for(lock, timeout, [&] {
      for (size_t i = 0; i < messages_.size(); ++i) {
        if (predicate(messages_[i])) {
          found = messages_[i];
          messages_.erase(messages_.begin() + static_cast<std::ptrdiff_t>(i));
          return true;
        }
      }
      return false;
    });
    return found;
  }

  std::optional<Received> waitForTopicPrefix(const std::string& prefix, Ms timeout = kTimeout) {
    return waitForMessage([&](const Received& r) { return r.topic.starts_with(prefix); }, timeout);
  }

  bool waitDisconnected(Ms timeout = kTimeout) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] { return disconnected_; });
  }

  void disconnect() {
    mosquitto_disconnect(mosq_.get());
    waitDisconnected();
  }

  const std::string& clientId() const { return clientId_; }

 private:
  struct Destroy {
    void operator()(mosquitto* m) const { mosquitto_destroy(m); }
  };

  template <typename F>
  void update(F&& f) {
    std::lock_guard lock(mutex_);
    f();
    cv_.notify_all();
  }

  const HubEmulator& hub_;
  std::string clientId_;
  std::string host_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int connack_ = -1;
  bool disconnected_ = false;
  std::vector<int> acked_;
  std::vector<std::pair<int, int>> subacks_;
  std::vector<Received> messages_;
  std::unique_ptr<mosquitto, Destroy> mosq_;  // last: destroyed first
};

class HubEmulatorTest : public ::testing::Test {
 protected:
  HubEmulatorTest() = default;
  explicit HubEmulatorTest(HubEmulator::Options options) : hub_(std::move(options)) {}

  void SetUp() override {
    key1_ = hub_.addDevice("dev1");
    key2_ = hub_.addDevice("dev2");
    hub_.addDevice("dev1/mod1");
    hub_.start();
    service_ = std::make_unique<ServiceClient>(hub_);
  }

  void TearDown() override { hub_.printBrokerLogIf(HasFailure()); }

  // Connects dev1 and waits until the service has seen its auth event.
  std::unique_ptr<FakeDevice> connectedDevice(const std::string& id = "dev1",
                                              bool cleanSession = false) {
    auto device = std::make_unique<FakeDevice>(hub_, id, cleanSession);
    EXPECT_EQ(device->connectWithToken(), 0);
    EXPECT_TRUE(service_->waitForAuth(id).has_value());
    return device;
  }

  HubEmulator hub_;
  std::string key1_;
  std::string key2_;
  std::unique_ptr<ServiceClient> service_;
};

TEST(SasToken, MatchesOpensslCliKnownAnswer) {
  // printf 'localhost%%2Fdevices%%2Fdev1\n1700000000' |
  //   openssl dgst -sha256 -mac HMAC -macopt key:0123456789abcdef0123456789abcdef -binary | base64
  EXPECT_EQ(
      makeSasToken("localhost", "dev1", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", 1700000000),
      "SharedAccessSignature sr=localhost%2Fdevices%2Fdev1"
      "&sig=7%2FYBn2%2BOH0PpftIzUioKUatXUTqpkyynUgfn1k7i5pk%3D&se=1700000000");
}

TEST(PropertyBag, DecodesPercentEncodingButNotPlus) {
  const Properties props = decodePropertyBag("%24.mid=a%2Fb&alert%20level=x+y&flag&empty=");
  ASSERT_EQ(props.size(), 4u);
  EXPECT_EQ(props[0], (std::pair<std::string, std::string>{"$.mid", "a/b"}));
  EXPECT_EQ(props[1], (std::pair<std::string, std::string>{"alert level", "x+y"}));
  EXPECT_EQ(props[2].first, "flag");
  EXPECT_EQ(props[3].second, "");
}

TEST_F(HubEmulatorTest, ValidTokenConnectsAndEmitsAuthEvent) {
  FakeDevice device(hub_, "dev1");
  const int64_t se = unixNow() + 3600;
  ASSERT_EQ(device.connect(makeUsername("localhost", "dev1") + "&DeviceClientType=test%2F1.0",
                           makeSasToken("localhost", "dev1", key1_, se)),
            0);
  const auto auth = service_->waitForAuth("dev1");
  ASSERT_TRUE(auth.has_value());
  EXPECT_EQ(auth->se, se);
  EXPECT_EQ(auth->expiresAtMs, se * 1000);
  EXPECT_FALSE(auth->capped);
  EXPECT_FALSE(auth->cleanSession);
  EXPECT_EQ(service_->authCount("dev1"), 1u);
  EXPECT_EQ(service_->connectedDevices(), std::vector<std::string>{"dev1"});

  device.disconnect();
  EXPECT_TRUE(service_->waitForDisconnect("dev1").has_value());
}

TEST_F(HubEmulatorTest, ModuleIdentityConnects) {
  FakeDevice module(hub_, "dev1/mod1");
  EXPECT_EQ(module.connectWithToken(), 0);
  EXPECT_TRUE(service_->waitForAuth("dev1/mod1").has_value());
  ASSERT_TRUE(module.publish("devices/dev1/modules/mod1/messages/events/%24.mid=7", "m"));
  const auto t = service_->waitForTelemetry();
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->device, "dev1/mod1");
  EXPECT_EQ(t->property("$.mid"), "7");
  // The module cannot speak for its device: the hub closes its connection.
  module.send("devices/dev1/messages/events/", "forged");
  EXPECT_TRUE(module.waitDisconnected());
  EXPECT_EQ(service_->ledger("dev1/mod1").total, 1);
  EXPECT_EQ(service_->ledger("dev1").total, 0);
  // A module token does not authenticate the device, and vice versa.
  FakeDevice device(hub_, "dev1");
  EXPECT_EQ(device.connectWithKey(hub_.deviceKey("dev1/mod1")), kConnackNotAuthorised);
}

TEST_F(HubEmulatorTest, RefusesWrongKey) {
  FakeDevice device(hub_, "dev1");
  EXPECT_EQ(device.connectWithKey(key2_), kConnackNotAuthorised);
  const auto refused = service_->waitForEvent("auth-refused", "dev1");
  ASSERT_TRUE(refused.has_value());
  EXPECT_NE(refused->json.find("signature mismatch"), std::string::npos) << refused->json;
  EXPECT_EQ(service_->authCount("dev1"), 0u);
}

TEST_F(HubEmulatorTest, RefusesATokenExpiredMoreThanFiveMinutesAgo) {
  // The hub allows 5 minutes of clock skew on a token's expiry when it authenticates, not more
  // (the connection still ends at `se`, below).
  FakeDevice late(hub_, "dev1");
  EXPECT_EQ(late.connectWithToken(-240), 0);
  EXPECT_TRUE(late.waitDisconnected());
  const auto kick = service_->waitForEvent("kick", "dev1");
  ASSERT_TRUE(kick.has_value());
  EXPECT_NE(kick->json.find("token expired"), std::string::npos) << kick->json;
  FakeDevice device(hub_, "dev1");
  EXPECT_EQ(device.connectWithToken(-360), kConnackNotAuthorised);
  const auto refused = service_->waitForEvent("auth-refused", "dev1");
  ASSERT_TRUE(refused.has_value());
  EXPECT_NE(refused->json.find("expired"), std::string::npos) << refused->json;
}

TEST_F(HubEmulatorTest, RefusesUnknownDevice) {
  hub_.addDevice("ghost");  // known to the test, but not in the running broker's registry
  FakeDevice device(hub_, "ghost");
  EXPECT_EQ(device.connectWithToken(), kConnackNotAuthorised);
}

TEST_F(HubEmulatorTest, RefusesBadUsernames) {
  const std::string token = makeSasToken("localhost", "dev1", key1_, unixNow() + 3600);
  for (const std::string& username : {
           std::string("localhost/dev2/?api-version=2021-04-12"),  // other client id
           std::string("otherhub/dev1/?api-version=2021-04-12"),   // other hub
           std::string("localhost/dev1/?DeviceClientType=x"),      // no api-version
           std::string("localhost/dev1"),                          // no query at all
           std::string("service"),                                 // service user, SAS password
       }) {
    FakeDevice device(hub_, "dev1");
    EXPECT_EQ(device.connect(username, token), kConnackNotAuthorised) << username;
  }
  // Token for another device (sr mismatch) with a matching username.
  FakeDevice device(hub_, "dev1");
  EXPECT_EQ(device.connect(makeUsername("localhost", "dev1"),
                           makeSasToken("localhost", "dev2", key1_, unixNow() + 3600)),
            kConnackNotAuthorised);
  EXPECT_EQ(service_->authCount("dev1"), 0u);
}

TEST_F(HubEmulatorTest, RefusesWrongServicePassword) {
  EXPECT_THROW(ServiceClient(hub_.hubHost(), hub_.port(), hub_.caFile(), "wrong", 2s),
               std::runtime_error);
}

TEST_F(HubEmulatorTest, TelemetryIsObservedWithDecodedProperties) {
  auto device = connectedDevice();
  const std::string topic =
      "devices/dev1/messages/events/%24.mid=m-1&%24.ct=application%2Fjson&alert%20level=high";
  ASSERT_TRUE(device->publish(topic, R"({"t":21})").has_value());
  const auto t = service_->waitForTelemetry();
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->topic, topic);
  EXPECT_EQ(t->payload, R"({"t":21})");
  EXPECT_EQ(t->device, "dev1");
  EXPECT_EQ(t->property("$.mid"), "m-1");
  EXPECT_EQ(t->property("$.ct"), "application/json");
  EXPECT_EQ(t->property("alert level"), "high");
}

TEST_F(HubEmulatorTest, WithoutStrictTopicsForeignPublishesAreOnlyDenied) {
  service_->setBehaviour({.strictTopics = false});
  auto device = connectedDevice();
  // Denied publishes are still PUBACKed under MQTT 3.1.1 but never routed, so the own message that
  // follows must be the first thing the service sees.
  ASSERT_TRUE(device->publish("devices/dev2/messages/events/", "forged").has_value());
  ASSERT_TRUE(device->publish("somewhere/else", "stray").has_value());
  ASSERT_TRUE(device->publish("$iothub/methods/POST/evil/?$rid=1", "{}").has_value());
  ASSERT_TRUE(device->publish("devices/dev1/messages/events/", "own").has_value());
  const auto t = service_->waitForTelemetry();
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->payload, "own");
  EXPECT_EQ(service_->telemetry().size(), 1u);

  EXPECT_EQ(device->subscribe("devices/dev2/messages/devicebound/#"), 0x80);
  EXPECT_EQ(device->subscribe("#"), 0x80);
  EXPECT_EQ(device->subscribe("devices/dev1/messages/devicebound/#"), 1);
  EXPECT_EQ(device->subscribe("$iothub/twin/res/#"), 1);
}

TEST_F(HubEmulatorTest, TwinGetAndReportedPatchRoundTrip) {
  auto device = connectedDevice();
  ASSERT_EQ(device->subscribe("$iothub/twin/res/#", 0), 0);

  device->publish("$iothub/twin/GET/?$rid=1", "", 0);
  auto res = device->waitForTopicPrefix("$iothub/twin/res/");
  ASSERT_TRUE(res.has_value());
  EXPECT_EQ(res->topic, "$iothub/twin/res/200/?$rid=1");
  EXPECT_EQ(res->payload, R"({"desired":{"$version":1},"reported":{"$version":1}})");

  device->publish("$iothub/twin/PATCH/properties/reported/?$rid=2", R"({"fw":"1.0","a":{"b":1}})",
                  0);
  res = device->waitForTopicPrefix("$iothub/twin/res/");
  ASSERT_TRUE(res.has_value());
  EXPECT_EQ(res->topic, "$iothub/twin/res/204/?$rid=2&$version=2");

  device->publish("$iothub/twin/PATCH/properties/reported/?$rid=3", R"({"a":null,"x":true})", 0);
  res = device->waitForTopicPrefix("$iothub/twin/res/");
  ASSERT_TRUE(res.has_value());
  EXPECT_EQ(res->topic, "$iothub/twin/res/204/?$rid=3&$version=3");

  device->publish("$iothub/twin/PATCH/properties/reported/?$rid=4", "[1,2]", 0);
  res = device->waitForTopicPrefix("$iothub/twin/res/");
  ASSERT_TRUE(res.has_value());
  EXPECT_EQ(res->topic, "$iothub/twin/res/400/?$rid=4");

  device->publish("$iothub/twin/GET/?$rid=5", " ", 0);
  res = device->waitForTopicPrefix("$iothub/twin/res/");
  ASSERT_TRUE(res.has_value());
  EXPECT_EQ(res->payload,
            R"({"desired":{"$version":1},"reported":{"fw":"1.0","x":true,"$version":3}})");
  EXPECT_EQ(service_->getTwin("dev1"), res->payload);
  EXPECT_EQ(service_->events("twin-reported", "dev1").size(), 2u);
}

TEST_F(HubEmulatorTest, DesiredPatchReachesOnlyAConnectedDevice) {
  // Offline: stored and versioned, but not queued (the hub does not queue desired patches).
  EXPECT_EQ(service_->patchDesired("dev1", R"({"interval":10})"), 2);

  auto device = connectedDevice();
  ASSERT_EQ(device->subscribe("$iothub/twin/PATCH/properties/desired/#", 0), 0);
  EXPECT_EQ(service_->patchDesired("dev1", R"({"interval":20,"mode":"eco"})"), 3);
  const auto patch = device->waitForTopicPrefix("$iothub/twin/PATCH/properties/desired/");
  ASSERT_TRUE(patch.has_value());
  EXPECT_EQ(patch->topic, "$iothub/twin/PATCH/properties/desired/?$version=3");
  EXPECT_EQ(patch->payload, R"({"interval":20,"mode":"eco","$version":3})");
  EXPECT_EQ(service_->getTwin("dev1"),
            R"({"desired":{"interval":20,"mode":"eco","$version":3},"reported":{"$version":1}})");
  // Nothing from the offline patch (version 2) was delivered late.
  EXPECT_FALSE(device->waitForTopicPrefix("$iothub/twin/PATCH/", 200ms).has_value());
}

TEST_F(HubEmulatorTest, TwinFaultsAnswerWithStatusThenRecover) {
  auto device = connectedDevice();
  ASSERT_EQ(device->subscribe("$iothub/twin/res/#", 0), 0);
  service_->twinFault("dev1", TwinFault{0ms, 429, 2});
  for (const char* rid : {"1", "2", "3"}) {
    device->publish(std::string("$iothub/twin/GET/?$rid=") + rid, "", 0);
  }
  for (const char* expected : {"$iothub/twin/res/429/?$rid=1", "$iothub/twin/res/429/?$rid=2",
                               "$iothub/twin/res/200/?$rid=3"}) {
    const auto res = device->waitForTopicPrefix("$iothub/twin/res/");
    ASSERT_TRUE(res.has_value());
    EXPECT_EQ(res->topic, expected);
  }

  service_->twinFault("dev1", TwinFault{300ms, 0, 0});
  const auto start = SteadyClock::now();
  device->publish("$iothub/twin/GET/?$rid=4", "", 0);
  const auto res = device->waitForTopicPrefix("$iothub/twin/res/");
  ASSERT_TRUE(res.has_value());
  EXPECT_EQ(res->topic, "$iothub/twin/res/200/?$rid=4");
  EXPECT_GE(SteadyClock::now() - start, 300ms);
}

TEST_F(HubEmulatorTest, DirectMethodIsRelayedBothWays) {
  auto device = connectedDevice();
  ASSERT_EQ(device->subscribe("$iothub/methods/POST/#", 0), 0);

  std::optional<MethodResult> result;
  std::thread caller([&] { result = service_->invokeMethod("dev1", "reboot", R"({"delay":5})"); });
  const auto request = device->waitForTopicPrefix("$iothub/methods/POST/");
  ASSERT_TRUE(request.has_value());
  EXPECT_TRUE(request->topic.starts_with("$iothub/methods/POST/reboot/?$rid=")) << request->topic;
  EXPECT_EQ(request->payload, R"({"delay":5})");
  const std::string rid = request->topic.substr(request->topic.find("$rid=") + 5);
  device->publish("$iothub/methods/res/201/?$rid=" + rid, R"({"ok":true})", 0);
  caller.join();
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(result->status, 201);
  EXPECT_EQ(result->payload, R"({"ok":true})");
}

TEST_F(HubEmulatorTest, DirectMethodToOfflineDeviceIs404) {
  const MethodResult result = service_->invokeMethod("dev2", "reboot");
  EXPECT_EQ(result.status, 404);
}

TEST_F(HubEmulatorTest, C2dIsDeliveredWithEncodedProperties) {
  auto device = connectedDevice();
  ASSERT_EQ(device->subscribe("devices/dev1/messages/devicebound/#"), 1);
  service_->sendC2d("dev1", "hello",
                    {{"$.mid", "c2d-1"}, {"$.ct", "text/plain"}, {"iothub-ack", "full"}},
                    {{"color", "blue green"}, {"a&b", "x=y"}});
  const auto msg = device->waitForTopicPrefix("devices/dev1/messages/devicebound/");
  ASSERT_TRUE(msg.has_value());
  EXPECT_EQ(msg->topic,
            "devices/dev1/messages/devicebound/%24.mid=c2d-1&%24.ct=text%2Fplain&iothub-ack=full"
            "&color=blue%20green&a%26b=x%3Dy");
  EXPECT_EQ(msg->payload, "hello");
}

TEST_F(HubEmulatorTest, C2dWaitsForAnOfflineDevice) {
  {
    auto device = connectedDevice();
    ASSERT_EQ(device->subscribe("devices/dev1/messages/devicebound/#"), 1);
    device->disconnect();
  }
  ASSERT_TRUE(service_->waitForDisconnect("dev1").has_value());
  service_->sendC2d("dev1", "queued-in-session", {{"$.mid", "q1"}});
  // dev2 never connected: the emulator holds its message until it does.
  service_->sendC2d("dev2", "held-by-emulator", {{"$.mid", "q2"}});

  FakeDevice again(hub_, "dev1");
  ASSERT_EQ(again.connectWithToken(), 0);  // persistent session: no new SUBSCRIBE needed
  auto msg = again.waitForTopicPrefix("devices/dev1/messages/devicebound/");
  ASSERT_TRUE(msg.has_value());
  EXPECT_EQ(msg->payload, "queued-in-session");

  FakeDevice dev2(hub_, "dev2");
  ASSERT_EQ(dev2.connectWithToken(), 0);
  ASSERT_EQ(dev2.subscribe("devices/dev2/messages/devicebound/#"), 1);
  msg = dev2.waitForTopicPrefix("devices/dev2/messages/devicebound/");
  ASSERT_TRUE(msg.has_value());
  EXPECT_EQ(msg->payload, "held-by-emulator");
}

TEST_F(HubEmulatorTest, OnlySubscribedTopicsAreDelivered) {
  // The broker would deliver anything published to a client id; the hub needs a subscription.
  auto device = connectedDevice();
  const MethodResult method = service_->invokeMethod("dev1", "reboot");
  EXPECT_EQ(method.status, 404);
  EXPECT_NE(method.payload.find("not subscribed"), std::string::npos) << method.payload;

  const std::string response =
      service_->request("twin-patch-desired", R"({"device":"dev1","patch":{"a":1}})");
  EXPECT_NE(response.find("\"sent\":false"), std::string::npos) << response;

  service_->sendC2d("dev1", "held until subscribed");
  device->publish("$iothub/twin/GET/?$rid=1", "", 0);
  EXPECT_FALSE(device->waitForMessage([](const Received&) { return true; }, 300ms).has_value());

  ASSERT_EQ(device->subscribe("devices/dev1/messages/devicebound/#"), 1);
  const auto c2d = device->waitForTopicPrefix("devices/dev1/messages/devicebound/");
  ASSERT_TRUE(c2d.has_value());
  EXPECT_EQ(c2d->payload, "held until subscribed");
}

TEST_F(HubEmulatorTest, ExpiredTokenGetsKicked) {
  FakeDevice device(hub_, "dev1");
  ASSERT_EQ(device.connectWithToken(2), 0);
  ASSERT_TRUE(device.waitDisconnected(4s));
  const auto kick = service_->waitForEvent("kick", "dev1");
  ASSERT_TRUE(kick.has_value());
  EXPECT_NE(kick->json.find("token expired"), std::string::npos);
  EXPECT_TRUE(service_->waitForDisconnect("dev1").has_value());
}

TEST_F(HubEmulatorTest, TokenLifetimeCapKicksEarly) {
  auto device = connectedDevice();
  const auto start = SteadyClock::now();
  service_->capTokenLifetime("dev1", 1s);  // also applies to the live connection
  ASSERT_TRUE(device->waitDisconnected(3s));
  EXPECT_LT(SteadyClock::now() - start, 2500ms);
  const auto disconnect = service_->waitForDisconnect("dev1");
  ASSERT_TRUE(disconnect.has_value());
  EXPECT_NE(disconnect->json.find("token expired"), std::string::npos) << disconnect->json;

  FakeDevice again(hub_, "dev1");
  ASSERT_EQ(again.connectWithToken(3600), 0);
  const auto auth = service_->waitForAuth("dev1");
  ASSERT_TRUE(auth.has_value());
  EXPECT_TRUE(auth->capped);
  EXPECT_LE(auth->expiresAtMs - auth->authTimeMs, 1000);
}

TEST_F(HubEmulatorTest, PubackDelayHoldsTheAcknowledgement) {
  auto device = connectedDevice();
  service_->delayPuback("dev1", 600ms, 1);
  const auto slow = device->publish("devices/dev1/messages/events/%24.mid=1", "a");
  ASSERT_TRUE(slow.has_value());
  EXPECT_GE(*slow, 600ms);
  const auto fast = device->publish("devices/dev1/messages/events/%24.mid=2", "b");
  ASSERT_TRUE(fast.has_value());
  EXPECT_LT(*fast, 500ms);
}

TEST_F(HubEmulatorTest, RefuseConnectsCountsDown) {
  service_->refuseConnects("dev1", 2);
  for (int i = 0; i < 2; ++i) {
    FakeDevice device(hub_, "dev1");
    EXPECT_EQ(device.connectWithToken(), kConnackNotAuthorised);
  }
  FakeDevice device(hub_, "dev1");
  EXPECT_EQ(device.connectWithToken(), 0);
}

TEST_F(HubEmulatorTest, DropConnectionKicksTheDevice) {
  auto device = connectedDevice();
  service_->dropConnection("dev1");
  EXPECT_TRUE(device->waitDisconnected());
  const auto disconnect = service_->waitForDisconnect("dev1");
  ASSERT_TRUE(disconnect.has_value());
  EXPECT_NE(disconnect->json.find("drop"), std::string::npos) << disconnect->json;
}

TEST_F(HubEmulatorTest, LedgerCountsMessageIds) {
  auto device = connectedDevice();
  for (const char* mid : {"a", "b", "a"}) {
    ASSERT_TRUE(device->publish(std::string("devices/dev1/messages/events/%24.mid=") + mid, "x"));
  }
  ASSERT_TRUE(device->publish("devices/dev1/messages/events/", "no id"));
  const Ledger ledger = service_->ledger("dev1");
  EXPECT_EQ(ledger.total, 4);
  EXPECT_EQ(ledger.withoutId, 1);
  EXPECT_EQ(ledger.duplicates, 1);
  EXPECT_EQ(ledger.ids, (std::map<std::string, int64_t>{{"a", 2}, {"b", 1}}));
  service_->clearLedger("dev1");
  EXPECT_EQ(service_->ledger("dev1").total, 0);
}

TEST_F(HubEmulatorTest, UnknownControlCommandIsAnError) {
  EXPECT_THROW(service_->request("no-such-command"), std::runtime_error);
  const std::string response = service_->request("no-such-command", "{}", kTimeout, true);
  EXPECT_NE(response.find("\"status\":404"), std::string::npos) << response;
}

TEST_F(HubEmulatorTest, RestartKeepsThePort) {
  const int port = hub_.port();
  service_.reset();
  hub_.restart();
  EXPECT_EQ(hub_.port(), port);
  service_ = std::make_unique<ServiceClient>(hub_);
  auto device = connectedDevice();
  EXPECT_TRUE(device->publish("devices/dev1/messages/events/", "after restart").has_value());
  EXPECT_TRUE(service_->waitForTelemetry().has_value());
}

// ---- strictness: each switch of README "Strictness" ---------------------------------------------

TEST_F(HubEmulatorTest, Qos2PublishClosesTheConnection) {
  auto device = connectedDevice();
  ASSERT_GE(device->send("devices/dev1/messages/events/%24.mid=q2", "x", 2), 0);
  EXPECT_TRUE(device->waitDisconnected());
  const auto violation = service_->waitForEvent("protocol-violation", "dev1");
  ASSERT_TRUE(violation.has_value());
  EXPECT_NE(violation->json.find("QoS 2"), std::string::npos) << violation->json;
  const auto disconnect = service_->waitForDisconnect("dev1");
  ASSERT_TRUE(disconnect.has_value());
  EXPECT_NE(disconnect->json.find("QoS 2"), std::string::npos) << disconnect->json;
  EXPECT_EQ(service_->ledger("dev1").total, 0);
}

TEST_F(HubEmulatorTest, PublishToATopicTheHubDoesNotServeClosesTheConnection) {
  for (const std::string topic :
       {"devices/dev2/messages/events/", "devices/dev1/messages/devicebound/x", "somewhere/else",
        "$iothub/methods/POST/evil/?$rid=1", "devices/dev1/modules/mod1/messages/events/"}) {
    FakeDevice device(hub_, "dev1");
    ASSERT_EQ(device.connectWithToken(), 0);
    ASSERT_GE(device.send(topic, "x"), 0);
    EXPECT_TRUE(device.waitDisconnected()) << topic;
    const auto violation = service_->waitForEvent("protocol-violation", "dev1");
    ASSERT_TRUE(violation.has_value()) << topic;
    EXPECT_NE(violation->json.find("does not serve"), std::string::npos) << violation->json;
  }
  EXPECT_TRUE(service_->telemetry().empty());
  // What the hub serves keeps the connection.
  auto device = connectedDevice();
  EXPECT_TRUE(device->publish("devices/dev1/messages/events/%24.mid=ok", "x").has_value());
  EXPECT_TRUE(device->publish("devices/dev1/messages/events", "no properties").has_value());
}

TEST_F(HubEmulatorTest, ConnectionRateLimitClosesExcessConnectsWithoutConnack) {
  service_->setBehaviour({.connectsPerSecond = 1});
  // Two connects at the same moment: the hub admits one and closes the other without a CONNACK.
  FakeDevice a(hub_, "dev1");
  FakeDevice b(hub_, "dev2");
  int ra = 0;
  int rb = 0;
  std::thread first([&] { ra = a.connectWithToken(); });
  std::thread second([&] { rb = b.connectWithToken(); });
  first.join();
  second.join();
  EXPECT_EQ(std::min(ra, rb), -1) << ra << " " << rb;
  EXPECT_EQ(std::max(ra, rb), 0) << ra << " " << rb;
  const auto throttled = service_->waitForEvent("connect-throttled");
  ASSERT_TRUE(throttled.has_value());
  EXPECT_EQ(throttled->device, ra == 0 ? "dev2" : "dev1");
  service_->setBehaviour({.connectsPerSecond = 0});
  FakeDevice c(hub_, "dev1/mod1");
  EXPECT_EQ(c.connectWithToken(), 0);
}

TEST_F(HubEmulatorTest, HubClockDecidesWhetherATokenHasExpired) {
  // The device's clock 6 minutes behind the hub's: its 60-second token expired 5 minutes before
  // the hub's now, beyond the 5 minutes of skew the hub allows.
  service_->setBehaviour({.clockOffset = std::chrono::minutes(6)});
  FakeDevice behind(hub_, "dev1");
  EXPECT_EQ(behind.connectWithToken(30), kConnackNotAuthorised);
  const auto refused = service_->waitForEvent("auth-refused", "dev1");
  ASSERT_TRUE(refused.has_value());
  EXPECT_NE(refused->json.find("hub clock"), std::string::npos) << refused->json;
  // The clock is right again: the same kind of token is accepted.
  service_->setBehaviour({.clockOffset = 0ms});
  FakeDevice synced(hub_, "dev1");
  EXPECT_EQ(synced.connectWithToken(30), 0);
  // A jump of the hub's clock past a live connection's expiry ends it, as on the hub.
  service_->setBehaviour({.clockOffset = std::chrono::hours(1)});
  EXPECT_TRUE(synced.waitDisconnected());
  const auto kick = service_->waitForEvent("kick", "dev1");
  ASSERT_TRUE(kick.has_value());
  EXPECT_NE(kick->json.find("token expired"), std::string::npos) << kick->json;
}

TEST_F(HubEmulatorTest, ASecondConnectionOfAnIdentityClosesTheFirst) {
  auto first = connectedDevice();
  FakeDevice second(hub_, "dev1");
  ASSERT_EQ(second.connectWithToken(), 0);
  EXPECT_TRUE(first->waitDisconnected());
  const auto kick = service_->waitForEvent("kick", "dev1");
  ASSERT_TRUE(kick.has_value());
  EXPECT_NE(kick->json.find("400027"), std::string::npos) << kick->json;
  const auto disconnect = service_->waitForDisconnect("dev1");
  ASSERT_TRUE(disconnect.has_value());
  EXPECT_NE(disconnect->json.find("duplicate identity"), std::string::npos) << disconnect->json;
  EXPECT_EQ(service_->connectedDevices(), std::vector<std::string>{"dev1"});
  EXPECT_TRUE(second.publish("devices/dev1/messages/events/", "the new one").has_value());
}

/// `levels` nested objects: {"l1":{"l2":…{"lN":1}}}.
std::string nestedPatch(int levels) {
  std::string json = "1";
  for (int i = levels; i >= 1; --i)
    json = "{\"l" + std::to_string(i) + "\":" + json + "}";
  return json;
}

TEST_F(HubEmulatorTest, ReportedPatchesBeyondTheTwinLimitsAreRefused) {
  auto device = connectedDevice();
  ASSERT_EQ(device->subscribe("$iothub/twin/res/#", 0), 0);
  int rid = 0;
  auto patch = [&](const std::string& json) {
    const std::string id = std::to_string(++rid);
    device->publish("$iothub/twin/PATCH/properties/reported/?$rid=" + id, json, 0);
    auto res = device->waitForTopicPrefix("$iothub/twin/res/");
    EXPECT_TRUE(res.has_value()) << json;
    return res ? res->topic.substr(17, 3) + " " + res->payload : std::string("none");
  };
  EXPECT_NE(patch(R"({"a.b":1})").find("400 "), std::string::npos);
  EXPECT_NE(patch(R"({"a$b":1})").find("contains '$'"), std::string::npos);
  EXPECT_NE(patch(R"({"a b":1})").find("contains ' '"), std::string::npos);
  EXPECT_NE(patch(R"({"ctl\u0001":1})").find("control"), std::string::npos);
  EXPECT_NE(patch("{\"" + std::string(1025, 'k') + "\":1}").find("1 KB"), std::string::npos);
  EXPECT_NE(patch(R"({"s":")" + std::string(4097, 'x') + "\"}").find("4 KB"), std::string::npos);
  EXPECT_EQ(patch(R"({"s":")" + std::string(4096, 'x') + "\"}").substr(0, 3), "204");
  EXPECT_NE(patch(R"({"big":4503599627370496})").find("integer"), std::string::npos);
  // Ten objects below the section are allowed (the docs' example), an eleventh is not.
  EXPECT_EQ(patch(R"({"deep":)" + nestedPatch(10) + "}").substr(0, 3), "204");
  EXPECT_NE(patch(R"({"deep":)" + nestedPatch(11) + "}").find("deeper than 10"), std::string::npos);
  // 32 KB for the whole reported section, counted the hub's way: it holds about 4 KB now.
  for (int i = 0; i < 7; ++i) {
    EXPECT_EQ(
        patch("{\"k" + std::to_string(i) + "\":\"" + std::string(4000, 'v') + "\"}").substr(0, 3),
        "204");
  }
  const std::string over = patch(R"({"last":")" + std::string(4000, 'v') + "\"}");
  EXPECT_NE(over.find("over the hub's limit of 32 KB"), std::string::npos) << over;
  // Refused patches changed nothing.
  EXPECT_EQ(service_->getTwin("dev1").find("last"), std::string::npos);
  // Switched off, the emulator takes what the hub would refuse.
  service_->setBehaviour({.twinLimits = false});
  EXPECT_EQ(patch(R"({"a.b":1})").substr(0, 3), "204");
}

TEST_F(HubEmulatorTest, AnUnansweredMethodTimesOutAtTheHubWhichDropsTheLateAnswer) {
  auto device = connectedDevice();
  ASSERT_EQ(device->subscribe("$iothub/methods/POST/#", 0), 0);
  std::optional<MethodResult> result;
  std::thread caller([&] { result = service_->invokeMethod("dev1", "slow", "{}", 300ms); });
  const auto request = device->waitForTopicPrefix("$iothub/methods/POST/");
  ASSERT_TRUE(request.has_value());
  const std::string rid = request->topic.substr(request->topic.find("$rid=") + 5);
  caller.join();
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(result->status, 504);
  EXPECT_NE(result->payload.find("504101"), std::string::npos) << result->payload;
  // Too late: the hub logs it and the service never sees it.
  device->publish("$iothub/methods/res/200/?$rid=" + rid, R"({"late":true})", 0);
  const auto late = service_->waitForEvent("method-response-late", "dev1");
  ASSERT_TRUE(late.has_value());
  EXPECT_NE(late->json.find(rid), std::string::npos) << late->json;
  EXPECT_TRUE(service_->events("method-response", "dev1").size() == 1u);
}

TEST_F(HubEmulatorTest, MethodResponsesMustBeJsonOfAtMost128KB) {
  auto device = connectedDevice();
  ASSERT_EQ(device->subscribe("$iothub/methods/POST/#", 0), 0);
  for (const std::string& payload :
       {std::string("{not json"), "\"" + std::string(128 * 1024, 'x') + "\""}) {
    std::optional<MethodResult> result;
    std::thread caller([&] { result = service_->invokeMethod("dev1", "m", "{}", 500ms); });
    const auto request = device->waitForTopicPrefix("$iothub/methods/POST/");
    ASSERT_TRUE(request.has_value());
    const std::string rid = request->topic.substr(request->topic.find("$rid=") + 5);
    device->publish("$iothub/methods/res/200/?$rid=" + rid, payload, 0);
    const auto refused = service_->waitForEvent("method-response-refused", "dev1");
    ASSERT_TRUE(refused.has_value());
    EXPECT_NE(refused->json.find(rid), std::string::npos) << refused->json;
    caller.join();
    ASSERT_TRUE(result.has_value());
    EXPECT_EQ(result->status, 504) << "the service never got the refused answer";
  }
}

/// Whether a plain TCP connect to `address`:`port` succeeds (false: refused).
bool tcpConnects(const char* address, int port) {
  const bool v6 = std::string(address).find(':') != std::string::npos;
  const int fd = ::socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (v6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET6, address, &a->sin6_addr);
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, address, &a->sin_addr);
    len = sizeof *a;
  }
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) == 0;
  ::close(fd);
  return ok;
}

TEST_F(HubEmulatorTest, TheHubListensOnIPv4OnlyByDefault) {
  EXPECT_TRUE(tcpConnects("127.0.0.1", hub_.port()));
  EXPECT_FALSE(tcpConnects("::1", hub_.port()));
}

TEST(HubEmulatorListen, IPv6OnlyAndBothFamiliesOnRequest) {
  for (const auto family :
       {HubEmulator::Options::Listen::Ipv6, HubEmulator::Options::Listen::Both}) {
    for (const bool shaping : {false, true}) {
      HubEmulator::Options options;
      options.listen = family;
      options.shaping = shaping;
      HubEmulator hub(options);
      hub.addDevice("dev1");
      hub.start();
      EXPECT_TRUE(tcpConnects("::1", hub.port())) << shaping;
      EXPECT_EQ(tcpConnects("127.0.0.1", hub.port()), family == HubEmulator::Options::Listen::Both)
          << shaping;
      // The certificate names ::1 too, so a device can verify the hub over IPv6.
      FakeDevice device(hub, "dev1", false, "::1");
      EXPECT_EQ(device.connectWithToken(), 0) << shaping;
      hub.printBrokerLogIf(::testing::Test::HasFailure());
    }
  }
}

// ---- traffic shaping (the front) ----------------------------------------------------------------

HubEmulator::Options shapingOptions() {
  HubEmulator::Options o;
  o.shaping = true;
  return o;
}

class ShapingTest : public HubEmulatorTest {
 protected:
  ShapingTest() : HubEmulatorTest(shapingOptions()) {}
};

TEST_F(ShapingTest, TheFrontCarriesTheUsualTraffic) {
  auto device = connectedDevice();
  ASSERT_EQ(device->subscribe("$iothub/twin/res/#", 0), 0);
  ASSERT_TRUE(device->publish("devices/dev1/messages/events/%24.mid=1", "through the front"));
  const auto t = service_->waitForTelemetry();
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->payload, "through the front");
  device->publish("$iothub/twin/GET/?$rid=1", "", 0);
  EXPECT_TRUE(device->waitForTopicPrefix("$iothub/twin/res/200/").has_value());
  service_->dropConnection("dev1");
  EXPECT_TRUE(device->waitDisconnected());
}

TEST_F(ShapingTest, AThrottleHoldsOneDevicesPubacksWhileOthersGoOn) {
  auto slow = connectedDevice("dev1");
  auto other = connectedDevice("dev2");
  service_->throttle("dev1", 800ms);
  const auto start = SteadyClock::now();
  const int held = slow->send("devices/dev1/messages/events/%24.mid=held", "x");
  ASSERT_GE(held, 0);
  // The broker took the message at once (the service sees it) and is not blocked: another device
  // gets its PUBACK while dev1's is still held back.
  const auto t = service_->waitForTelemetry();
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->property("$.mid"), "held");
  ASSERT_TRUE(other->publish("devices/dev2/messages/events/%24.mid=free", "y").has_value());
  EXPECT_FALSE(slow->acked(held));
  ASSERT_TRUE(slow->waitAcked(held));
  EXPECT_GE(SteadyClock::now() - start, 800ms);
  service_->throttle("dev1", 0ms);
  const auto fast = slow->publish("devices/dev1/messages/events/%24.mid=next", "z");
  ASSERT_TRUE(fast.has_value());
  EXPECT_LT(*fast, 800ms);
}

TEST_F(ShapingTest, ATwinRequestBeforeTheDelayedSubackIsLost) {
  service_->setBehaviour({.subackDelay = 600ms});
  auto device = connectedDevice();
  const auto start = SteadyClock::now();
  const int mid = device->subscribeNoWait("$iothub/twin/res/#", 0);
  device->send("$iothub/twin/GET/?$rid=early", "", 0);  // the hub has no subscription yet
  ASSERT_EQ(device->waitSuback(mid), 0);
  EXPECT_GE(SteadyClock::now() - start, 600ms);
  device->send("$iothub/twin/GET/?$rid=after", "", 0);
  const auto res = device->waitForTopicPrefix("$iothub/twin/res/");
  ASSERT_TRUE(res.has_value());
  // Responses come in order: had the early one been answered, it would be first.
  EXPECT_EQ(res->topic, "$iothub/twin/res/200/?$rid=after");
  EXPECT_NE(hub_.brokerLog().find("dropping twin response '$iothub/twin/res/200/?$rid=early'"),
            std::string::npos);
}

TEST_F(HubEmulatorTest, ShapingSwitchesNeedTheFront) {
  EXPECT_THROW(service_->throttle("dev1", 100ms), std::runtime_error);
  EXPECT_THROW(service_->setBehaviour({.subackDelay = 100ms}), std::runtime_error);
}

// ---- file upload's hub endpoints (file-upload/file_upload_hub.py) -------------------------------

class FileUploadHubTest : public ::testing::Test {
 protected:
  struct Answer {
    long status = 0;
    std::string body;
    std::string retryAfter;
  };

  void SetUp() override {
    hub_.addDevice("dev1");
    hub_.start();
    files_ = std::make_unique<FileUploadHub>(hub_, nullptr);
    files_->start();
  }
  void TearDown() override {
    if (HasFailure())
      std::cerr << files_->log();
  }

  /// POST /devices/dev1/files[/notifications] as the device would.
  Answer post(const std::string& what, const std::string& body) {
    std::unique_ptr<CURL, void (*)(CURL*)> curl(curl_easy_init(), curl_easy_cleanup);
    const std::string url =
        files_->baseUrl() + "/devices/dev1/files" + what + "?api-version=2021-04-12";
    const std::string auth =
        "Authorization: " +
        makeSasToken(hub_.hubHost(), "dev1", hub_.deviceKey("dev1"), unixNow() + 3600);
    curl_slist* headers = curl_slist_append(nullptr, auth.c_str());
    headers = curl_slist_append(headers, "Content-Type: application/json");
    std::unique_ptr<curl_slist, void (*)(curl_slist*)> list(headers, curl_slist_free_all);
    Answer answer;
    curl_easy_setopt(curl.get(), CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl.get(), CURLOPT_CAINFO, files_->caFile().c_str());
    curl_easy_setopt(curl.get(), CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl.get(), CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(curl.get(), CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(curl.get(), CURLOPT_WRITEDATA, &answer.body);
    curl_easy_setopt(
        curl.get(), CURLOPT_WRITEFUNCTION, +[](char* data, size_t size, size_t n, void* out) {
          static_cast<std::string*>(out)->append(data, size * n);
          return size * n;
        });
    curl_easy_setopt(curl.get(), CURLOPT_HEADERDATA, &answer.retryAfter);
    curl_easy_setopt(
        curl.get(), CURLOPT_HEADERFUNCTION, +[](char* data, size_t size, size_t n, void* out) {
          const std::string line(data, size * n);
          if (line.rfind("Retry-After:", 0) == 0)
            *static_cast<std::string*>(out) = line.substr(13, line.find('\r') - 13);
          return size * n;
        });
    EXPECT_EQ(curl_easy_perform(curl.get()), CURLE_OK);
    curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &answer.status);
    return answer;
  }

  std::string storageInfo(const std::string& name, long expected = 200) {
    const Answer a = post("", R"({"blobName":")" + name + "\"}");
    EXPECT_EQ(a.status, expected) << a.body;
    const auto at = a.body.find("\"correlationId\": \"");
    return at == std::string::npos ? ""
                                   : a.body.substr(at + 18, a.body.find('"', at + 18) - at - 18);
  }

  HubEmulator hub_;
  std::unique_ptr<FileUploadHub> files_;
};

TEST_F(FileUploadHubTest, TenUploadsAtOnceThenTheHubRefusesUntilOneIsNotified) {
  std::vector<std::string> ids;
  for (int i = 0; i < 10; ++i)
    ids.push_back(storageInfo("f" + std::to_string(i)));
  EXPECT_EQ(files_->activeUploads("dev1"), 10);
  const Answer refused = post("", R"({"blobName":"eleventh"})");
  EXPECT_EQ(refused.status, 403);
  EXPECT_NE(refused.body.find("403006"), std::string::npos) << refused.body;
  // A notification frees the slot.
  const Answer notified = post("/notifications", R"({"correlationId":")" + ids[3] +
                                                     R"(","isSuccess":true,"statusCode":201,)"
                                                     R"("statusDescription":"ok"})");
  EXPECT_EQ(notified.status, 204) << notified.body;
  EXPECT_EQ(files_->activeUploads("dev1"), 9);
  storageInfo("eleventh");
  // Slots also end when the hub's SAS does (one hour; shortened here).
  files_->setFaults(R"({"limits":{"slotSeconds":0}})");
  EXPECT_EQ(files_->activeUploads("dev1"), 0);
}

TEST_F(FileUploadHubTest, AThrottledStorageInfoRequestIsAnswered429WithRetryAfter) {
  files_->setFaults(R"({"files":{"status":429,"count":1,"retryAfter":2}})");
  const Answer throttled = post("", R"({"blobName":"a"})");
  EXPECT_EQ(throttled.status, 429);
  EXPECT_EQ(throttled.retryAfter, "2");
  EXPECT_EQ(files_->activeUploads("dev1"), 0);
  storageInfo("a");
  const auto requests = files_->hubRequests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].status, 429);
  EXPECT_EQ(requests[1].status, 200);
}

}  // namespace
}  // namespace iothubd::hubemu
