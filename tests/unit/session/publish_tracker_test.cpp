// SPDX-License-Identifier: MIT
// The publish tracker alone, on the simulated clock: PUBACK matching, the deadlines of the
// in-flight window and of held publishes, their limits, and the resend policy on a lost link.
#include "iothubd/session/publish_tracker.hpp"

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "fake_mqtt_transport.hpp"
#include "manual_scheduler.hpp"

namespace iothubd::session {
namespace {

using namespace std::chrono_literals;
using core::Errc;

struct Outcome {
  std::optional<core::Result<void>> result;
  PublishTracker::Completion callback() {
    return [this](core::Result<void> r) { result = std::move(r); };
  }
  [[nodiscard]] bool done() const { return result.has_value(); }
  [[nodiscard]] bool ok() const { return result && result->has_value(); }
  [[nodiscard]] Errc code() const { return result->error().code; }
  [[nodiscard]] std::string message() const { return result->error().message; }
};

class PublishTrackerTest : public ::testing::Test {
 protected:
  PublishTrackerTest() : tracker_(clock_, clock_, transport_, {3, 100, 60s}) {
    transport_.connected = true;
  }
  fakes::ManualScheduler clock_;
  fakes::FakeMqttTransport transport_;
  PublishTracker tracker_;
};

TEST_F(PublishTrackerTest, EachPubackCompletesItsOwnPublishInAnyOrder) {
  Outcome a, b;
  tracker_.publish("t/a", "1", a.callback());
  tracker_.publish("t/b", "2", b.callback());
  ASSERT_EQ(transport_.published.size(), 2u);
  EXPECT_EQ(transport_.published[0].qos, 1);
  EXPECT_EQ(tracker_.inFlight(), 2u);
  EXPECT_TRUE(tracker_.acknowledge(transport_.published[1].mid));
  EXPECT_TRUE(b.ok());
  EXPECT_FALSE(a.done());
  EXPECT_FALSE(tracker_.acknowledge(transport_.published[1].mid)) << "a duplicate PUBACK";
  EXPECT_FALSE(tracker_.acknowledge(999)) << "not ours";
  EXPECT_TRUE(tracker_.acknowledge(transport_.published[0].mid));
  EXPECT_TRUE(a.ok());
  EXPECT_EQ(tracker_.inFlight(), 0u);
}

TEST_F(PublishTrackerTest, APublishTheTransportRefusesFailsAtOnce) {
  transport_.connected = false;
  Outcome a;
  tracker_.publish("t", "x", a.callback());
  ASSERT_TRUE(a.done());
  EXPECT_EQ(a.code(), Errc::NotConnected);
  EXPECT_EQ(tracker_.inFlight(), 0u);
}

TEST_F(PublishTrackerTest, UnacknowledgedPublishesTimeOutInOrderWithOneTimer) {
  Outcome first, acked, second;
  tracker_.publish("t", "1", first.callback());
  clock_.advance(10s);
  tracker_.publish("t", "2", acked.callback());
  tracker_.publish("t", "3", second.callback());
  tracker_.acknowledge(transport_.published[1].mid);
  EXPECT_EQ(clock_.nextTimerIn(), 50s) << "one timer, for the earliest deadline";
  clock_.advance(50s);
  ASSERT_TRUE(first.done());
  EXPECT_EQ(first.code(), Errc::Timeout);
  EXPECT_EQ(first.message(), "no acknowledgement from the hub within 60 s");
  EXPECT_FALSE(second.done());
  clock_.advance(10s);
  EXPECT_EQ(second.code(), Errc::Timeout);
  EXPECT_FALSE(clock_.nextTimerIn().has_value()) << "nothing left to time";
  // A PUBACK after the timeout finds nothing (the owner already has its answer).
  EXPECT_FALSE(tracker_.acknowledge(transport_.published[0].mid));
}

TEST_F(PublishTrackerTest, HeldPublishesAreBoundedInCountAndBytes) {
  Outcome a, b;
  ASSERT_TRUE(tracker_.hold("t", std::string(40, 'x'), a.callback()).has_value());
  ASSERT_TRUE(tracker_.hold("t", std::string(40, 'y'), b.callback()).has_value());
  auto tooBig = tracker_.hold("t", std::string(40, 'z'), [](core::Result<void>) { FAIL(); });
  ASSERT_FALSE(tooBig.has_value());
  EXPECT_EQ(tooBig.error().code, Errc::QueueFull);
  EXPECT_NE(tooBig.error().message.find("would take 123 bytes; the limit is 100"),
            std::string::npos)
      << tooBig.error().message;
  ASSERT_TRUE(tracker_.hold("t", "", [](core::Result<void>) {}).has_value());
  auto tooMany = tracker_.hold("t", "", [](core::Result<void>) { FAIL(); });
  ASSERT_FALSE(tooMany.has_value());
  EXPECT_EQ(tooMany.error().message, "too many messages waiting for the connection (3)");
  EXPECT_EQ(tracker_.held(), 3u);
  EXPECT_EQ(tracker_.heldBytes(), 83u);
  EXPECT_TRUE(transport_.published.empty()) << "held means not sent";
}

TEST_F(PublishTrackerTest, FlushPublishesHeldMessagesInOrderWhileTheLinkStaysUp) {
  std::vector<std::string> answers;
  bool linkUp = true;
  for (std::string body : {"1", "2", "3"}) {
    ASSERT_TRUE(tracker_
                    .hold("t", body,
                          [&answers, &linkUp, body](core::Result<void> r) {
                            answers.push_back(body + (r ? " ok" : " failed"));
                            linkUp = false;  // the failure tells the owner the link is gone
                          })
                    .has_value());
  }
  transport_.connected = false;  // the first publish is refused: the link is going
  tracker_.flush([&linkUp] { return linkUp; });
  EXPECT_EQ(answers, (std::vector<std::string>{"1 failed"}));
  EXPECT_EQ(tracker_.held(), 2u) << "the others wait for the next link";
  transport_.connected = true;
  linkUp = true;
  tracker_.flush([] { return true; });
  EXPECT_EQ(tracker_.held(), 0u);
  ASSERT_EQ(transport_.published.size(), 2u);
  EXPECT_EQ(transport_.published[0].payload, "2");
  EXPECT_EQ(transport_.published[1].payload, "3");
}

TEST_F(PublishTrackerTest, HeldPublishesTimeOutSayingWhyTheyWaited) {
  tracker_.setWhyHeld([] { return std::string("not connected: no route to host"); });
  Outcome held;
  ASSERT_TRUE(tracker_.hold("t", "x", held.callback()).has_value());
  clock_.advance(60s);
  ASSERT_TRUE(held.done());
  EXPECT_EQ(held.code(), Errc::Timeout);
  EXPECT_EQ(held.message(), "message not sent within 60 s (not connected: no route to host)");
  EXPECT_EQ(tracker_.heldBytes(), 0u);
}

TEST_F(PublishTrackerTest, ALostLinkFailsWhatWasInFlightButNotWhatIsHeld) {
  Outcome inFlight, held;
  tracker_.publish("t", "sent", inFlight.callback());
  ASSERT_TRUE(tracker_.hold("t", "waiting", held.callback()).has_value());
  tracker_.linkLost({Errc::ConnectionDropped, "lost"});
  ASSERT_TRUE(inFlight.done());
  EXPECT_EQ(inFlight.code(), Errc::ConnectionDropped);
  EXPECT_FALSE(held.done());
  EXPECT_EQ(transport_.published.size(), 1u) << "never sent again by the tracker";
  EXPECT_EQ(clock_.nextTimerIn(), 60s) << "the held publish keeps its deadline";
  tracker_.failHeld({Errc::Cancelled, "bye"});
  EXPECT_EQ(held.code(), Errc::Cancelled);
}

TEST_F(PublishTrackerTest, DrainedIsReportedWhenTheLastPublishIsAnsweredAckOrTimeout) {
  int drained = 0;
  tracker_.setOnDrained([&drained] { ++drained; });
  tracker_.publish("t", "1", [](core::Result<void>) {});
  tracker_.publish("t", "2", [](core::Result<void>) {});
  tracker_.acknowledge(transport_.published[0].mid);
  EXPECT_EQ(drained, 0);
  tracker_.acknowledge(transport_.published[1].mid);
  EXPECT_EQ(drained, 1);
  tracker_.publish("t", "3", [](core::Result<void>) {});
  clock_.advance(60s);
  EXPECT_EQ(drained, 2);
}

TEST_F(PublishTrackerTest, ANewTimeoutCoversWhatIsWaitingAlready) {
  Outcome early, late;
  tracker_.publish("t", "1", early.callback());
  clock_.advance(2s);
  ASSERT_TRUE(tracker_.hold("t", "2", late.callback()).has_value());
  tracker_.setLimits({3, 100, 5s});  // a reload shortened operation_timeout
  clock_.advance(3s);
  ASSERT_TRUE(early.done()) << "5 s after it was sent";
  EXPECT_EQ(early.code(), Errc::Timeout);
  EXPECT_EQ(early.message(), "no acknowledgement from the hub within 5 s");
  EXPECT_FALSE(late.done());
  clock_.advance(2s);
  EXPECT_EQ(late.code(), Errc::Timeout);
}

}  // namespace
}  // namespace iothubd::session
