// SPDX-License-Identifier: MIT
// How iothubd retries (issue 14), against the strict emulator with shortened bounds set through
// the configuration: a hub that closes every CONNECT and a hub whose clock is 6 minutes ahead get
// a bounded, backing-off schedule (the attempt times are printed) and the device comes back by
// itself once the hub does; a throttled hub never sees a message twice on one connection; a twin
// GET issued while the subscriptions wait for their SUBACK is answered; a method request pending
// across a drop is never answered on the next connection.
#include <mosquitto.h>

#include <atomic>
#include <cstdio>
#include <ctime>
#include <future>
#include <thread>

#include "daemon_fixture.hpp"

namespace iothubd::testing {
namespace {

using Steady = std::chrono::steady_clock;

/// The shortened schedule: 0.2 s doubling up to 1.6 s.
constexpr const char* kShortSchedule =
    "[connection]\nconnection_retry_initial_delay = 0.2\nconnection_retry_max_delay = 1.6\n";

hubemu::HubEmulator::Options shaped() {
  hubemu::HubEmulator::Options o;
  o.shaping = true;
  return o;
}

/// Prints the gap before each of `times` ("what 1: +0 ms", "what 2: +812 ms", ...).
void printGaps(const std::vector<Steady::time_point>& times, const char* what) {
  for (std::size_t i = 0; i < times.size(); ++i) {
    const auto since =
        i == 0 ? 0ms
               : std::chrono::duration_cast<std::chrono::milliseconds>(times[i] - times[i - 1]);
    std::printf("%s %zu: +%lld ms\n", what, i + 1, static_cast<long long>(since.count()));
  }
}

/// Waits for `count` events of `type` for the device and returns when each was seen, printing
/// the gaps.
std::vector<Steady::time_point> attemptTimes(hubemu::ServiceClient& service, const char* device,
                                             const char* type, std::size_t count,
                                             const char* what) {
  std::vector<Steady::time_point> times;
  for (std::size_t i = 0; i < count; ++i) {
    if (!service.waitForEvent(type, device, 10s)) {
      break;
    }
    times.push_back(Steady::now());
  }
  printGaps(times, what);
  return times;
}

std::chrono::milliseconds gap(const std::vector<Steady::time_point>& t, std::size_t i) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t[i] - t[i - 1]);
}

class RetryTest : public DaemonTest {};

/// Another device with the same identity that connects again as soon as the hub closes it (a
/// cloned gateway image), paced at 100 ms so as not to flood the broker.
class Intruder {
 public:
  Intruder(const hubemu::HubEmulator& hub, const std::string& device, const std::string& key)
      : thread_([this, &hub, device, key] { run(hub, device, key); }) {}
  ~Intruder() {
    stop_ = true;
    thread_.join();
  }

 private:
  void run(const hubemu::HubEmulator& hub, const std::string& device, const std::string& key) {
    while (!stop_) {
      mosquitto* m = mosquitto_new(device.c_str(), true, nullptr);
      const std::string token =
          hubemu::makeSasToken(hub.hubHost(), device, key, std::time(nullptr) + 600);
      mosquitto_username_pw_set(m, hubemu::makeUsername(hub.hubHost(), device).c_str(),
                                token.c_str());
      mosquitto_tls_set(m, hub.caFile().c_str(), nullptr, nullptr, nullptr, nullptr);
      if (mosquitto_connect(m, hub.hubHost().c_str(), hub.port(), 30) == MOSQ_ERR_SUCCESS) {
        while (!stop_ && mosquitto_loop(m, 50, 1) == MOSQ_ERR_SUCCESS) {
        }
      }
      mosquitto_destroy(m);
      std::this_thread::sleep_for(100ms);  // pacing, not waiting for a condition
    }
  }
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Two devices with one identity: each CONNECT closes the other's connection (400027). iothubd's
// links end right after their CONNACK; it retries once at once, then backs off with a floor
// instead of reconnecting every 10 ms, and keeps its place once the other one is gone.
TEST_F(RetryTest, ADuplicateIdentityGetsABoundedBackingOffReconnectSchedule) {
  writeConfig(kShortSchedule);
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto& c = client();
  std::vector<Steady::time_point> ours;
  {
    Intruder intruder(hub_, kDevice, deviceKey_);
    const auto until = Steady::now() + 6s;
    while (Steady::now() < until) {
      auto auth = service.waitForAuth(kDevice, 500ms);
      if (auth && auth->username.find("DeviceClientType=") != std::string::npos) {
        ours.push_back(Steady::now());
      }
    }
  }
  printGaps(ours, "iothubd's CONNECT");
  ASSERT_GE(ours.size(), 2u) << "iothubd did not try to come back";
  // 10 ms loops would be hundreds; the floor (0.8–1.6 s here) allows a handful.
  EXPECT_LE(ours.size(), 9u);
  for (std::size_t i = 2; i < ours.size(); ++i) {
    EXPECT_GE(gap(ours, i), 700ms) << "CONNECT " << i + 1;
  }
  EXPECT_TRUE(c.waitForConnectionStateChanged(true, 5s) || c.Connected());
}

// A hub that closes every CONNECT without a CONNACK (unavailable, throttling): attempts back off
// exponentially up to the cap; the device is back once the hub is.
TEST_F(RetryTest, AnUnavailableHubGetsABoundedBackingOffScheduleAndTheDeviceComesBack) {
  writeConfig(kShortSchedule);
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto& c = client();
  service.refuseConnects(kDevice, -1, true);
  service.dropConnection(kDevice);
  ASSERT_TRUE(c.waitForConnectionStateChanged(false));
  auto times = attemptTimes(service, kDevice, "auth-refused", 6, "refused attempt");
  ASSERT_EQ(times.size(), 6u);
  // Attempt n waits between half and all of min(0.2 s × 2^n, 1.6 s) (the first follows the
  // drop's quick retry): the later gaps grow, none is a tight loop, none exceeds the cap.
  for (std::size_t i = 1; i < times.size(); ++i) {
    EXPECT_GE(gap(times, i), 90ms) << "attempt " << i + 1;
    EXPECT_LE(gap(times, i), 1600ms + 500ms) << "attempt " << i + 1;
  }
  EXPECT_GE(gap(times, 5), 700ms) << "not backing off";
  // Every failure is reported.
  EXPECT_NE(c.LastError(), "");
  EXPECT_GE(c.signals("BackgroundException").size(), 5u);
  service.refuseConnects(kDevice, 0);
  EXPECT_TRUE(c.waitForConnectionStateChanged(true, 5s));
}

// The hub's clock 6 minutes ahead: a token made from the key looks expired to it (CONNACK 5).
// iothubd tries again with backoff and a fresh token, says so each time, and gets in by itself
// once the clocks agree (time sync).
TEST_F(RetryTest, ASixMinuteClockSkewIsRetriedAndRecoversOnceTheClockIsRight) {
  writeConfig(std::string(kShortSchedule) + "sastoken_ttl = 30\n");
  hubemu::ServiceClient service(hub_);
  service.setBehaviour({.clockOffset = std::chrono::minutes(6)});
  startDaemon();
  auto& c = client();
  auto times = attemptTimes(service, kDevice, "auth-refused", 5, "refused (clock skew) attempt");
  ASSERT_EQ(times.size(), 5u);
  for (std::size_t i = 1; i < times.size(); ++i) {
    EXPECT_GE(gap(times, i), 90ms) << "attempt " << i + 1;
    EXPECT_LE(gap(times, i), 1600ms + 500ms) << "attempt " << i + 1;
  }
  EXPECT_NE(c.LastError().find("not authori"), std::string::npos) << c.LastError();
  EXPECT_GE(c.signals("BackgroundException").size(), 4u);
  service.setBehaviour({.clockOffset = 0ms});
  EXPECT_TRUE(c.waitForConnectionStateChanged(true, 5s));
  EXPECT_EQ(c.LastError(), "");
}

class ShapedRetryTest : public DaemonTest {
 protected:
  ShapedRetryTest() : DaemonTest(shaped()) {}
};

// A throttling hub holds PUBACKs back for longer than operation_timeout: queued messages wait for
// them on their connection instead of going again on it; none reaches the hub twice.
TEST_F(ShapedRetryTest, AThrottledHubNeverReceivesAMessageTwiceOnOneConnection) {
  writeConfig("[connection]\noperation_timeout = 1\n");
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto& c = client();
  const std::size_t auths = service.authCount(kDevice);
  service.throttle(kDevice, 2500ms);
  for (int i = 0; i < 3; ++i) {
    c.QueueMessage("throttled " + std::to_string(i), {}, {});
  }
  std::size_t delivered = 0;
  while (delivered < 3) {
    auto s = c.waitForSignal("MessagesDelivered", {}, 15s);
    ASSERT_TRUE(s.has_value()) << delivered << " of 3 delivered";
    delivered += s->args.size();
  }
  const auto ledger = service.ledger(kDevice);
  std::printf("received %lld, duplicates %lld, connections %zu\n",
              static_cast<long long>(ledger.total), static_cast<long long>(ledger.duplicates),
              service.authCount(kDevice) - auths);
  EXPECT_EQ(service.authCount(kDevice), auths) << "the throttled connection was replaced";
  EXPECT_EQ(ledger.duplicates, 0);
  EXPECT_EQ(ledger.total, 3);
}

// The hub acknowledges subscriptions late (a busy hub): a twin GET asked for while connecting is
// sent only after the SUBACK of $iothub/twin/res/#, so its answer is not dropped.
TEST_F(ShapedRetryTest, ATwinGetIssuedDuringConnectIsAnswered) {
  writeConfig("[connection]\nkeep_connected = false\nensure_desired_properties = false\n");
  hubemu::ServiceClient service(hub_);
  service.setBehaviour({.subackDelay = 1500ms});
  service.patchDesired(kDevice, R"({"mode":"eco"})");
  startDaemon();
  auto& c = client();
  EXPECT_FALSE(c.Connected());
  // auto_connect: the GET opens the connection and waits for it and for the SUBACK.
  const std::string twin = c.GetTwin();
  EXPECT_NE(twin.find(R"("mode":"eco")"), std::string::npos) << twin;
}

// A method request pending when its connection drops is dropped with it: the handler's late
// answer gets ConnectionDropped, and nothing reaches the hub on the next connection.
TEST_F(RetryTest, AMethodRequestPendingAcrossADropIsNotAnsweredOnTheNextConnection) {
  writeConfig(kShortSchedule);
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto& c = client();
  c.RegisterMethodHandler("slow");
  auto invoked = std::async(std::launch::async,
                            [&] { return service.invokeMethod(kDevice, "slow", "{}", 2s); });
  auto request = c.waitForSignal("MethodRequestReceived");
  ASSERT_TRUE(request.has_value());
  const std::size_t auths = service.authCount(kDevice);
  service.dropConnection(kDevice);
  ASSERT_TRUE(c.waitForConnectionStateChanged(false));
  ASSERT_TRUE(c.waitForConnectionStateChanged(true));
  ASSERT_TRUE(service.waitForAuthCount(kDevice, auths + 1));
  std::string message;
  EXPECT_EQ(errorNameOf([&] { c.SendMethodResponse(request->args[0], 200, "{}"); }, &message),
            "org.iothubd.Error.ConnectionDropped");
  EXPECT_NE(message.find("closed"), std::string::npos) << message;
  EXPECT_EQ(invoked.get().status, 504);  // the hub gave up on it
  EXPECT_TRUE(service.events("method-response-late", kDevice).empty())
      << "answered with a request id of the closed connection";
}

}  // namespace
}  // namespace iothubd::testing
