// SPDX-License-Identifier: MIT
// Nothing lost (issue 5): QueueMessage stores durably, and every accepted message reaches the hub
// in order across connection cuts, a hub that is down, and kill -9 of the daemon.
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>
#include <set>
#include <thread>

#include "daemon_fixture.hpp"

namespace iothubd::testing {
namespace {

using Steady = std::chrono::steady_clock;

/// Pipelined QueueMessage calls from one client: at most `window` outstanding; records which
/// calls were answered with success (those messages must reach the hub).
class Producer {
 public:
  Producer(DeviceClient& client, size_t window) : client_(client), window_(window) {}
  ~Producer() { drain(30s); }

  void queue(const std::string& id, const std::string& body) {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [&] { return outstanding_ < window_; });
    ++outstanding_;
    lock.unlock();
    client_.getProxyForTest()
        .callMethodAsync("QueueMessage")
        .onInterface("org.iothubd.Device1")
        .withArguments(body, StringMap{}, StringMap{{"message-id", id}})
        .uponReplyInvoke([this, id](const sdbus::Error* error, const std::string&) {
          std::lock_guard l(mutex_);
          if (error == nullptr) {
            accepted_.push_back(id);
          } else {
            errors_.push_back(error->getName() + ": " + error->getMessage());
          }
          --outstanding_;
          cv_.notify_all();
        });
  }
  /// Waits until every call was answered (or the daemon died and they failed).
  bool drain(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] { return outstanding_ == 0; });
  }
  std::vector<std::string> accepted() const {
    std::lock_guard lock(mutex_);
    return accepted_;
  }
  std::vector<std::string> errors() const {
    std::lock_guard lock(mutex_);
    return errors_;
  }

 private:
  DeviceClient& client_;
  size_t window_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  size_t outstanding_ = 0;
  std::vector<std::string> accepted_;
  std::vector<std::string> errors_;
};

std::string messageId(const std::string& app, size_t i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%s-%05zu", app.c_str(), i);
  return buf;
}

class OutboxTest : public DaemonTest {
 protected:
  /// Waits until OutboxLength is 0 (the outbox drained), reading it directly after each
  /// PropertiesChanged that mentions it.
  bool waitUntilDrained(std::chrono::seconds timeout) {
    auto deadline = Steady::now() + timeout;
    while (Steady::now() < deadline) {
      if (client().OutboxLength() == 0) {
        return true;
      }
      (void)client().waitForSignal(
          "PropertiesChanged",
          [](const SignalRecord& r) { return r.changed.count("OutboxLength") > 0; },
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Steady::now()));
    }
    return client().OutboxLength() == 0;
  }

  /// Every id in `ids` appears at the hub, first arrivals in the order given.
  void expectDeliveredInOrder(hubemu::ServiceClient& service, const std::vector<std::string>& ids) {
    std::map<std::string, size_t> firstArrival;
    auto telemetry = service.telemetry();
    for (size_t i = 0; i < telemetry.size(); ++i) {
      if (auto mid = telemetry[i].property("$.mid")) {
        firstArrival.emplace(*mid, i);
      }
    }
    size_t missing = 0, outOfOrder = 0, previous = 0;
    for (const auto& id : ids) {
      auto it = firstArrival.find(id);
      if (it == firstArrival.end()) {
        ++missing;
        continue;
      }
      outOfOrder += it->second < previous;
      previous = it->second;
    }
    EXPECT_EQ(missing, 0u) << "accepted messages never reached the hub";
    EXPECT_EQ(outOfOrder, 0u) << "messages of one app arrived out of order";
  }
};

TEST_F(OutboxTest, TenThousandMessagesSurviveAConnectionCutEverySecond) {
  writeConfig("[connection]\nconnection_retry_interval = 1\n");
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto second = newClient();
  Producer a(client(), 64), b(*second, 64);
  std::atomic<bool> producing{true};
  size_t cuts = 0;
  std::thread cutter([&] {
    // The fault's cadence ("about every second for 20 s"), not a wait for a condition.
    auto next = Steady::now() + 1s;
    while (producing && cuts < 20) {
      std::this_thread::sleep_until(next);
      next += 1s;
      service.dropConnection(kDevice);
      ++cuts;
    }
  });
  // 10 000 messages from two apps, paced over 20 s so that the cuts fall in the middle of them.
  auto start = Steady::now();
  for (size_t i = 0; i < 5000; ++i) {
    if (i % 250 == 0) {
      std::this_thread::sleep_until(start + std::chrono::milliseconds(i * 4));
    }
    a.queue(messageId("a", i), "{\"n\":" + std::to_string(i) + "}");
    b.queue(messageId("b", i), "{\"n\":" + std::to_string(i) + "}");
  }
  ASSERT_TRUE(a.drain(60s) && b.drain(60s));
  producing = false;
  cutter.join();
  EXPECT_TRUE(a.errors().empty()) << a.errors().front();
  EXPECT_TRUE(b.errors().empty()) << b.errors().front();
  ASSERT_TRUE(waitUntilDrained(120s)) << "OutboxLength stayed at " << client().OutboxLength();

  auto ledger = service.ledger(kDevice);
  std::printf(
      "sent %zu, delivered %zu distinct (%lld received), duplicates %lld, connection cuts %zu\n",
      a.accepted().size() + b.accepted().size(), ledger.ids.size(),
      static_cast<long long>(ledger.total), static_cast<long long>(ledger.duplicates), cuts);
  EXPECT_EQ(ledger.ids.size(), 10000u);
  EXPECT_EQ(ledger.withoutId, 0);
  for (const auto& [id, times] : ledger.ids) {
    ASSERT_TRUE(id.rfind("a-", 0) == 0 || id.rfind("b-", 0) == 0) << "unknown id " << id;
  }
  expectDeliveredInOrder(service, a.accepted());
  expectDeliveredInOrder(service, b.accepted());
  EXPECT_GE(cuts, 15u);
}

TEST_F(OutboxTest, KillDashNineMidBurstLosesNothingThatWasAccepted) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  std::vector<std::string> accepted;
  {
    Producer p(client(), 64);
    for (size_t i = 0; i < 10000; ++i) {
      if (i == 4000) {
        // In the middle of the burst, with calls outstanding and commits under way.
        ASSERT_EQ(::kill(daemon_->pid(), SIGKILL), 0);
        ASSERT_EQ(daemon_->waitExit(10s), 128 + SIGKILL);
      }
      p.queue(messageId("k", i), "burst");  // after the kill these fail: nobody owns the name
    }
    ASSERT_TRUE(p.drain(30s));
    accepted = p.accepted();
  }
  ASSERT_GE(accepted.size(), 1000u);
  std::printf("%zu QueueMessage calls were accepted before kill -9\n", accepted.size());
  client_.reset();
  startDaemon();  // same configuration, same outbox file
  ASSERT_TRUE(waitUntilDrained(120s));
  auto ledger = service.ledger(kDevice);
  size_t missing = 0;
  for (const auto& id : accepted) {
    missing += ledger.ids.count(id) == 0;
  }
  EXPECT_EQ(missing, 0u) << "accepted before the crash, never delivered";
}

TEST_F(OutboxTest, MessagesQueueWhileTheHubIsDownAndDrainWithoutAnyAppCall) {
  writeConfig("[connection]\nconnection_retry_interval = 1\n");
  startDaemon();
  awaitOnline();
  hub_.stop();
  ASSERT_TRUE(client().waitForConnectionStateChanged(false));
  std::vector<std::string> accepted;
  {
    Producer p(client(), 64);
    for (size_t i = 0; i < 2000; ++i) {
      p.queue(messageId("d", i), "while the hub is down");
    }
    ASSERT_TRUE(p.drain(60s));
    accepted = p.accepted();
    ASSERT_TRUE(p.errors().empty()) << p.errors().front();
  }
  EXPECT_EQ(client().OutboxLength(), 2000u);
  EXPECT_GT(client().OutboxBytes(), 2000u * 20);
  client().clearSignals();
  hub_.restart();  // same port; the daemon reconnects by itself
  hubemu::ServiceClient service(hub_);
  ASSERT_TRUE(waitUntilDrained(60s));
  std::set<std::string> signalled;
  auto deadline = Steady::now() + 10s;
  while (signalled.size() < accepted.size() && Steady::now() < deadline) {
    if (auto s = client().waitForSignal("MessagesDelivered", {}, 1s)) {
      signalled.insert(s->args.begin(), s->args.end());
    }
  }
  EXPECT_EQ(signalled, std::set<std::string>(accepted.begin(), accepted.end()));
  EXPECT_GE(client().MessagesDelivered(), 2000u);
  EXPECT_EQ(service.ledger(kDevice).ids.size(), 2000u);
}

TEST_F(OutboxTest, AFullOutboxRejectsOrDropsTheOldestAsConfigured) {
  writeConfig("[outbox]\noutbox_path = " + daemonDir_ + "/outbox.db\noutbox_max_messages = 5\n");
  startDaemon();
  awaitOnline();
  hub_.stop();
  ASSERT_TRUE(client().waitForConnectionStateChanged(false));
  for (int i = 0; i < 5; ++i) {
    client().QueueMessage("fits", {}, {});
  }
  std::string message;
  EXPECT_EQ(errorNameOf([&] { client().QueueMessage("one too many", {}, {}); }, &message),
            "org.iothubd.Error.QueueFull");
  EXPECT_FALSE(message.empty());

  daemon_->stop().value();
  client_.reset();
  writeConfig("[outbox]\noutbox_path = " + daemonDir_ +
              "/outbox.db\noutbox_max_messages = 5\n"
              "outbox_full_policy = drop-oldest\n");
  startDaemon();
  for (int i = 0; i < 3; ++i) {
    client().QueueMessage("pushes out an old one", {}, {});
  }
  EXPECT_EQ(client().MessagesDropped(), 3u);
  EXPECT_EQ(client().OutboxLength(), 5u);
}

TEST_F(OutboxTest, AMessageThatExpiresBeforeDeliveryIsReported) {
  startDaemon();
  awaitOnline();
  hub_.stop();
  ASSERT_TRUE(client().waitForConnectionStateChanged(false));
  std::time_t soon = std::time(nullptr) + 1;
  char iso[32];
  std::strftime(iso, sizeof iso, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&soon));
  std::string id = client().QueueMessage("short-lived", {}, {{"expiry-time-utc", iso}});
  auto expired = client().waitForSignal(
      "MessagesExpired",
      [&](const SignalRecord& r) {
        return std::find(r.args.begin(), r.args.end(), id) != r.args.end();
      },
      15s);
  EXPECT_TRUE(expired.has_value());
  EXPECT_EQ(client().OutboxLength(), 0u);
}

TEST_F(OutboxTest, AFullFileSystemGivesAClearErrorAndEverythingElseKeepsWorking) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "mounting a small file system needs root";
  }
  std::string tiny = daemonDir_ + "/tiny";
  ::mkdir(tiny.c_str(), 0700);
  ASSERT_EQ(::mount("tmpfs", tiny.c_str(), "tmpfs", 0, "size=512k,mode=0700"), 0)
      << std::strerror(errno);
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount2(path.c_str(), MNT_DETACH); }
  } unmount{tiny};
  auto user = serviceUser();
  ASSERT_EQ(::chown(tiny.c_str(), user.uid, user.gid), 0);
  writeConfig("[outbox]\noutbox_path = " + tiny + "/outbox.db\n");
  startDaemon();
  awaitOnline();
  hub_.stop();  // nothing drains: the outbox only grows
  ASSERT_TRUE(client().waitForConnectionStateChanged(false));
  std::string big(60000, 'x');
  std::string error, message;
  for (int i = 0; i < 100 && error.empty(); ++i) {
    error = errorNameOf([&] { client().QueueMessage(big, {}, {}); }, &message);
  }
  EXPECT_EQ(error, "org.freedesktop.DBus.Error.IOError");
  EXPECT_NE(message.find(tiny), std::string::npos) << message;
  // The daemon is up and serves what does not need the disk.
  EXPECT_TRUE(daemon_->running());
  EXPECT_EQ(client().DeviceId(), "dev1");
  hub_.restart();
  ASSERT_TRUE(client().waitForConnectionStateChanged(true, 20s));
  EXPECT_FALSE(client().GetTwin().empty());
}

}  // namespace
}  // namespace iothubd::testing
