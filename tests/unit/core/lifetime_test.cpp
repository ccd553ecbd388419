// SPDX-License-Identifier: MIT
// The lifetime helper: guarded callbacks die with their owner, task handles cancel, worker
// threads never end the process through an exception, and IOTHUBD_ASSERT stays on.
#include "iothubd/core/lifetime.hpp"

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "iothubd/core/assert.hpp"
#include "iothubd/core/worker_thread.hpp"

namespace iothubd::core {
namespace {

/// A component the way src/ writes them: state, and a Lifetime as its last member.
class Component {
 public:
  explicit Component(std::vector<std::function<void()>>& outbox) : outbox_(outbox) {}
  void handOut() {
    outbox_.emplace_back(lifetime_.guard([this] { ++calls_; }));
  }
  [[nodiscard]] int calls() const { return calls_; }

 private:
  std::vector<std::function<void()>>& outbox_;
  int calls_ = 0;
  Lifetime lifetime_;
};

TEST(Lifetime, GuardedCallbacksRunWhileTheOwnerLivesAndNeverAfterwards) {
  std::vector<std::function<void()>> handedOut;
  auto owner = std::make_unique<Component>(handedOut);
  owner->handOut();
  owner->handOut();
  handedOut[0]();
  EXPECT_EQ(owner->calls(), 1);
  owner.reset();
  handedOut[1]();  // would touch freed memory without the guard (ASan in the sanitizer build)
  SUCCEED();
}

TEST(Lifetime, EndingEarlyMakesCallbacksInertAndTheWatchSeesIt) {
  Lifetime lifetime;
  int calls = 0;
  auto callback = lifetime.guard([&calls](int n) { calls += n; });
  auto watch = lifetime.watch();
  callback(2);
  EXPECT_FALSE(watch.ended());
  lifetime.end();
  callback(3);
  EXPECT_EQ(calls, 2);
  EXPECT_TRUE(watch.ended());
  EXPECT_TRUE(lifetime.ended());
}

TEST(TaskHandle, ACancelledTaskNeverRunsAndARunTaskIsNoLongerPending) {
  int calls = 0;
  auto [first, runFirst] = TaskHandle::wrap([&calls] { ++calls; });
  auto [second, runSecond] = TaskHandle::wrap([&calls] { calls += 10; });
  EXPECT_TRUE(first.pending());
  first.cancel();
  runFirst();
  EXPECT_EQ(calls, 0);
  EXPECT_FALSE(first.pending());
  runSecond();
  runSecond();  // a scheduler runs each task once; a second call is ignored all the same
  EXPECT_EQ(calls, 10);
  EXPECT_FALSE(second.pending());
  second.cancel();  // after it ran: no effect, no harm
  EXPECT_FALSE(TaskHandle().pending());
}

TEST(WorkerThread, AnExceptionEndsTheThreadNotTheProcess) {
  bool cleanedUp = false;
  auto thread = startWorkerThread("test work", [&cleanedUp] {
    struct Guard {
      bool& flag;
      ~Guard() { flag = true; }
    } guard{cleanedUp};
    throw std::runtime_error("boom");
  });
  thread.join();
  EXPECT_TRUE(cleanedUp);
}

TEST(AssertDeathTest, ABrokenInvariantAbortsWithWhatBroke) {
  EXPECT_DEATH(IOTHUBD_ASSERT(1 + 1 == 3, "arithmetic holds"),
               "internal error: 1 \\+ 1 == 3 \\(.*lifetime_test.cpp:[0-9]+\\): arithmetic holds");
  IOTHUBD_ASSERT(1 + 1 == 2, "arithmetic holds");  // a kept invariant costs one comparison
}

}  // namespace
}  // namespace iothubd::core
