// SPDX-License-Identifier: MIT
// The loop's side of the lifetime helper, on the real sd-event loop: posted and off-loop work
// hands back a handle that cancels its callback, a destroyed component's callbacks never run, and
// work that throws on a worker thread neither ends the process nor loses its completion.
#include "iothubd/loop/event_loop.hpp"

#include <atomic>
#include <memory>
#include <stdexcept>

#include <gtest/gtest.h>

#include "iothubd/core/lifetime.hpp"
#include "loop_test_util.hpp"

namespace iothubd::loop {
namespace {

using namespace std::chrono_literals;
using testing::runUntil;

class EventLoopTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto created = EventLoop::create();
    ASSERT_TRUE(created.has_value());
    loop_ = std::move(*created);
  }
  std::unique_ptr<EventLoop> loop_;
};

TEST_F(EventLoopTest, ACancelledPostNeverRunsTheOthersDo) {
  int ran = 0;
  auto kept = loop_->post([&ran] { ran += 1; });
  auto cancelled = loop_->post([&ran] { ran += 10; });
  cancelled.cancel();
  ASSERT_TRUE(runUntil(
      *loop_, [&] { return !kept.pending(); }, 5s));
  EXPECT_EQ(ran, 1);
  EXPECT_FALSE(cancelled.pending());
}

TEST_F(EventLoopTest, OffLoopWorkRunsToItsEndButACancelledCompletionDoesNot) {
  std::atomic<bool> worked{false};
  bool completed = false;
  auto handle = loop_->runOffLoop([&worked] { worked = true; }, [&completed] { completed = true; });
  handle.cancel();
  // A second job finishing proves the loop has handled the first one's end as well.
  bool secondDone = false;
  (void)loop_->runOffLoop([] {}, [&secondDone] { secondDone = true; });
  ASSERT_TRUE(runUntil(
      *loop_, [&] { return secondDone && worked; }, 5s));
  ASSERT_TRUE(loop_->runOnce(50ms).has_value());
  EXPECT_FALSE(completed);
}

TEST_F(EventLoopTest, WorkThatThrowsOffTheLoopStillCompletesOnIt) {
  bool offLoopDone = false;
  bool workerDone = false;
  (void)loop_->runOffLoop([] { throw std::runtime_error("lookup exploded"); },
                          [&offLoopDone] { offLoopDone = true; });
  (void)loop_->runOnWorker([] { throw std::runtime_error("commit exploded"); },
                           [&workerDone] { workerDone = true; });
  ASSERT_TRUE(runUntil(
      *loop_, [&] { return offLoopDone && workerDone; }, 5s));
  // The long-lived worker survived its job's exception and takes the next one.
  bool next = false;
  (void)loop_->runOnWorker([] {}, [&next] { next = true; });
  EXPECT_TRUE(runUntil(
      *loop_, [&] { return next; }, 5s));
}

/// A component that hands its callbacks to the loop the way src/ does.
class Poster {
 public:
  Poster(EventLoop& loop, int& calls) : loop_(loop), calls_(calls) {}
  void postWork() {
    (void)loop_.post(lifetime_.guard([this] { ++calls_; }));
    (void)loop_.runOffLoop([] {}, lifetime_.guard([this] { ++calls_; }));
  }

 private:
  EventLoop& loop_;
  int& calls_;
  core::Lifetime lifetime_;
};

TEST_F(EventLoopTest, CallbacksOfADestroyedComponentNeverRun) {
  int calls = 0;
  auto poster = std::make_unique<Poster>(*loop_, calls);
  poster->postWork();
  poster.reset();
  bool later = false;
  (void)loop_->runOffLoop([] {}, [&later] { later = true; });
  ASSERT_TRUE(runUntil(
      *loop_, [&] { return later; }, 5s));
  ASSERT_TRUE(loop_->runOnce(50ms).has_value());
  EXPECT_EQ(calls, 0);
}

}  // namespace
}  // namespace iothubd::loop
