// SPDX-License-Identifier: MIT
// Waiting for the clock (issue 14): a gateway whose time service runs but has not synchronised
// the clock yet does not present a token made with a wrong clock; it waits, bounded, says why,
// and connects as soon as the clock is right. The emulated hub's clock is 6 minutes ahead of
// ours, so any token iothubd made before "time sync" would be refused (CONNACK 5, an auth-refused
// event). systemd-timedated is played by this test on the private bus under its real policy: no
// real one can report "a time service runs, the clock is not synchronised" on a machine whose
// clock is synchronised.
#include <atomic>
#include <condition_variable>
#include <mutex>

#include "daemon_fixture.hpp"

namespace iothubd::testing {
namespace {

constexpr const char* kTimedatedPolicy =
    "/usr/share/dbus-1/system.d/org.freedesktop.timedate1.conf";

/// org.freedesktop.timedate1 as far as iothubd asks it: NTP and NTPSynchronized.
class FakeTimedated {
 public:
  FakeTimedated(const std::string& busAddress, bool ntp, bool synchronised)
      : ntp_(ntp), synchronised_(synchronised) {
    connection_ = sdbus::createSessionBusConnectionWithAddress(busAddress);
    connection_->requestName("org.freedesktop.timedate1");
    object_ = sdbus::createObject(*connection_, "/org/freedesktop/timedate1");
    object_->registerProperty("NTP").onInterface("org.freedesktop.timedate1").withGetter([this] {
      return ntp_.load();
    });
    object_->registerProperty("NTPSynchronized")
        .onInterface("org.freedesktop.timedate1")
        .withGetter([this] {
          {
            std::lock_guard lock(mutex_);
            ++asked_;
          }
          askedChanged_.notify_all();
          return synchronised_.load();
        });
    object_->finishRegistration();
    connection_->enterEventLoopAsync();
  }
  ~FakeTimedated() { connection_->leaveEventLoop(); }
  FakeTimedated(const FakeTimedated&) = delete;
  FakeTimedated& operator=(const FakeTimedated&) = delete;

  void synchronise() { synchronised_ = true; }
  [[nodiscard]] int asked() const {
    std::lock_guard lock(mutex_);
    return asked_;
  }
  /// Waits until iothubd has asked more than `count` times.
  [[nodiscard]] bool waitAskedMoreThan(int count, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return askedChanged_.wait_for(lock, timeout, [&] { return asked_ > count; });
  }

 private:
  std::atomic<bool> ntp_;
  std::atomic<bool> synchronised_;
  mutable std::mutex mutex_;
  std::condition_variable askedChanged_;
  int asked_ = 0;
  std::unique_ptr<sdbus::IConnection> connection_;
  std::unique_ptr<sdbus::IObject> object_;
};

class ClockTest : public DaemonTest {
 protected:
  ClockTest() { busIncludes_.push_back(kTimedatedPolicy); }

  /// Waits for LastError to contain `text` (its PropertiesChanged, or its value already).
  bool waitForLastError(const std::string& text) {
    auto& c = client();
    if (c.LastError().find(text) != std::string::npos) {
      return true;
    }
    return c
        .waitForSignal("PropertiesChanged",
                       [&](const SignalRecord& r) {
                         auto it = r.changed.find("LastError");
                         return it != r.changed.end() &&
                                it->second.get<std::string>().find(text) != std::string::npos;
                       })
        .has_value();
  }
};

TEST_F(ClockTest, ARunningTimeServiceThatHasNotSynchronisedTheClockHoldsTheFirstAttempt) {
  hubemu::ServiceClient service(hub_);
  service.setBehaviour({.clockOffset = std::chrono::minutes(6)});
  FakeTimedated timedated(bus_->address(), true, false);
  writeConfig("[connection]\nclock_sync_timeout = 120\nsastoken_ttl = 30\n");
  startDaemon();
  auto& c = client();
  ASSERT_TRUE(waitForLastError("waiting up to 120 s for the system clock to be synchronised"))
      << c.LastError();
  EXPECT_NE(c.LastError().find("NTPSynchronized=no"), std::string::npos) << c.LastError();
  EXPECT_EQ(c.ConnectionState(), "connecting");
  EXPECT_FALSE(c.Connected());
  EXPECT_NE(daemon_->lastStatus().find("waiting up to 120 s for the system clock"),
            std::string::npos)
      << daemon_->lastStatus();
  // It keeps asking, and no token made with the wrong clock reaches the hub meanwhile.
  EXPECT_TRUE(timedated.waitAskedMoreThan(timedated.asked(), 5s))
      << "timedated is asked again while the clock is off";
  EXPECT_FALSE(service.waitForEvent("auth-refused", kDevice, 0ms))
      << "a token reached the hub before the clock was synchronised";

  // Time sync: the clocks agree, and timedated says so.
  service.setBehaviour({.clockOffset = std::chrono::milliseconds(0)});
  timedated.synchronise();
  EXPECT_TRUE(c.waitForConnectionStateChanged(true, 10s));
  EXPECT_EQ(c.LastError(), "");
  EXPECT_FALSE(service.waitForEvent("auth-refused", kDevice, 0ms));
  EXPECT_NE(daemon_->log().find("system clock synchronised"), std::string::npos);
}

// The wait is bounded: then iothubd connects anyway, and the refusal that follows says why.
TEST_F(ClockTest, TheWaitIsBoundedAndARefusalAfterItNamesTheClock) {
  hubemu::ServiceClient service(hub_);
  service.setBehaviour({.clockOffset = std::chrono::minutes(6)});
  FakeTimedated timedated(bus_->address(), true, false);
  writeConfig("[connection]\nclock_sync_timeout = 1\nsastoken_ttl = 30\n");
  startDaemon();
  ASSERT_TRUE(service.waitForEvent("auth-refused", kDevice, 10s));
  ASSERT_TRUE(waitForLastError("the system clock is not synchronised yet")) << client().LastError();
  EXPECT_NE(client().LastError().find("more than 5 minutes off"), std::string::npos);
  EXPECT_NE(daemon_->log().find("still not synchronised after 1 s"), std::string::npos)
      << daemon_->log();
}

// A time service that is not active (NTP=no) is no reason to wait: iothubd connects at once, as
// it does where no timedated answers at all (every other integration test).
TEST_F(ClockTest, WithoutAnActiveTimeServiceItConnectsAtOnce) {
  FakeTimedated timedated(bus_->address(), false, false);
  writeConfig("[connection]\nclock_sync_timeout = 120\n");
  startDaemon();
  awaitOnline();
  EXPECT_GE(timedated.asked(), 1);
  EXPECT_NE(daemon_->log().find("no time service is active (NTP=no)"), std::string::npos);
}

}  // namespace
}  // namespace iothubd::testing
