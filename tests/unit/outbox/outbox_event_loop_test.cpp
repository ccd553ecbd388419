// SPDX-License-Identifier: MIT
// The outbox wired as the daemon wires it: the real sd-event loop as scheduler and clock, and
// commits on the loop's long-lived worker (EventLoop::runOnWorker, as the daemon does) or on a
// thread per commit (EventLoop::runOffLoop).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "iothubd/loop/event_loop.hpp"
#include "iothubd/outbox/outbox.hpp"
#include "outbox_test_support.hpp"
#include "temp_dir.hpp"

namespace iothubd::outbox {
namespace {

using namespace std::chrono_literals;

class OutboxOnEventLoop : public ::testing::TestWithParam<bool> {};

TEST_P(OutboxOnEventLoop, CommitsOnAWorkerAndAnswersOnTheLoopThread) {
  const bool serialWorker = GetParam();
  iothubd::testing::TempDir dir("iothubd-outbox-loop");
  auto loop = loop::EventLoop::create();
  ASSERT_TRUE(loop) << loop.error().message;
  auto& ev = **loop;
  OutboxOptions options;
  options.path = dir / "outbox.db";
  auto opened = Outbox::open(options, ev, ev, [&ev, serialWorker](auto work, auto done) {
    if (serialWorker) {
      ev.runOnWorker(std::move(work), std::move(done));
    } else {
      ev.runOffLoop(std::move(work), std::move(done));
    }
  });
  ASSERT_TRUE(opened) << opened.error().message;
  auto& box = *opened->outbox;

  constexpr int kMessages = 2000;
  int committed = 0;
  int offThread = 0;
  const auto loopThread = std::this_thread::get_id();
  for (int i = 0; i < kMessages; ++i) {
    auto accepted = box.enqueue(":1.5", testsupport::telemetry("m" + std::to_string(i)),
                                [&](core::Result<void> r) {
                                  EXPECT_TRUE(r) << r.error().message;
                                  ++committed;
                                  offThread += std::this_thread::get_id() != loopThread ? 1 : 0;
                                });
    ASSERT_TRUE(accepted) << accepted.error().message;
  }
  // Bounded: every iteration waits at most 100 ms for the worker's eventfd or the commit timer.
  for (int i = 0; i < 1000 && committed < kMessages; ++i) {
    ASSERT_TRUE(ev.runOnce(100ms));
  }
  EXPECT_EQ(committed, kMessages);
  EXPECT_EQ(offThread, 0);
  EXPECT_LT(box.transactions(), static_cast<std::uint64_t>(kMessages) / 10);

  auto batch = box.nextToSend();
  ASSERT_TRUE(batch) << batch.error().message;
  EXPECT_EQ(batch->size(), options.maxInflight);
  EXPECT_EQ(batch->front().message.messageId(), "m0");
}

INSTANTIATE_TEST_SUITE_P(Runners, OutboxOnEventLoop, ::testing::Bool(), [](const auto& info) {
  return info.param ? "RunOnWorker" : "RunOffLoop";
});

TEST(EventLoopWorker, RunsJobsInOrderOnOneOtherThreadAndCompletesThemOnTheLoop) {
  auto loop = loop::EventLoop::create();
  ASSERT_TRUE(loop) << loop.error().message;
  auto& ev = **loop;
  const auto loopThread = std::this_thread::get_id();
  std::vector<int> ran;                  // written by the worker, read after its completions
  std::vector<std::thread::id> threads;  // the same
  std::vector<int> completed;
  bool completedOnLoop = true;
  constexpr int kJobs = 50;
  for (int i = 0; i < kJobs; ++i) {
    ev.runOnWorker(
        [&, i] {
          ran.push_back(i);
          threads.push_back(std::this_thread::get_id());
        },
        [&, i] {
          completed.push_back(i);
          completedOnLoop = completedOnLoop && std::this_thread::get_id() == loopThread;
        });
  }
  for (int i = 0; i < 100 && completed.size() < kJobs; ++i) {
    ASSERT_TRUE(ev.runOnce(100ms));
  }
  ASSERT_EQ(completed.size(), static_cast<std::size_t>(kJobs));
  EXPECT_TRUE(completedOnLoop);
  for (int i = 0; i < kJobs; ++i) {
    EXPECT_EQ(ran[static_cast<std::size_t>(i)], i);
    EXPECT_EQ(completed[static_cast<std::size_t>(i)], i);
    EXPECT_EQ(threads[static_cast<std::size_t>(i)], threads.front());
  }
  EXPECT_NE(threads.front(), loopThread);
}

TEST(EventLoopWorker, JobsStillQueuedRunBeforeTheLoopIsDestroyed) {
  std::atomic<int> ran{0};
  {
    auto loop = loop::EventLoop::create();
    ASSERT_TRUE(loop) << loop.error().message;
    for (int i = 0; i < 20; ++i) {
      (*loop)->runOnWorker([&ran] { ++ran; }, [] { ADD_FAILURE() << "completion after exit"; });
    }
  }
  EXPECT_EQ(ran.load(), 20);
}

}  // namespace
}  // namespace iothubd::outbox
