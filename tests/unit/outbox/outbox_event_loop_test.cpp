// SPDX-License-Identifier: MIT
// The outbox wired as the daemon wires it: the real sd-event loop as scheduler and clock, and
// commits on a worker through EventLoop::runOffLoop.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "iothubd/loop/event_loop.hpp"
#include "iothubd/outbox/outbox.hpp"
#include "outbox_test_support.hpp"
#include "temp_dir.hpp"

namespace iothubd::outbox {
namespace {

using namespace std::chrono_literals;

TEST(OutboxOnEventLoop, CommitsOnAWorkerAndAnswersOnTheLoopThread) {
  iothubd::testing::TempDir dir("iothubd-outbox-loop");
  auto loop = loop::EventLoop::create();
  ASSERT_TRUE(loop) << loop.error().message;
  auto& ev = **loop;
  OutboxOptions options;
  options.path = dir / "outbox.db";
  auto opened = Outbox::open(options, ev, ev, [&ev](auto work, auto done) {
    ev.runOffLoop(std::move(work), std::move(done));
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
  EXPECT_EQ(*batch->front().message.system.messageId, "m0");
}

}  // namespace
}  // namespace iothubd::outbox
