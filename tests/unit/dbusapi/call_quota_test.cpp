// SPDX-License-Identifier: MIT
#include "call_quota.hpp"

#include <gtest/gtest.h>

#include <vector>

namespace iothubd::dbusapi {
namespace {

TEST(CallQuota, RefusesACallerBeyondItsLimitWithLimitExceededNamingIt) {
  CallQuota quota(3);
  std::vector<CallQuota::Ticket> held;
  for (int i = 0; i < 3; ++i) {
    auto t = quota.acquire(":1.7");
    ASSERT_TRUE(t);
    held.push_back(std::move(*t));
  }
  auto refused = quota.acquire(":1.7");
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, core::Errc::LimitExceeded);
  EXPECT_NE(refused.error().message.find("limit per caller is 3"), std::string::npos)
      << refused.error().message;
  // Another caller is served meanwhile.
  EXPECT_TRUE(quota.acquire(":1.8"));
  EXPECT_EQ(quota.outstanding(":1.7"), 3u);
}

TEST(CallQuota, AnsweringACallFreesItsSlot) {
  CallQuota quota(1);
  auto first = quota.acquire(":1.7");
  ASSERT_TRUE(first);
  EXPECT_FALSE(quota.acquire(":1.7"));
  first->release();
  first->release();  // idempotent: frees one slot, not two
  EXPECT_EQ(quota.outstanding(":1.7"), 0u);
  auto second = quota.acquire(":1.7");
  EXPECT_TRUE(second);
  EXPECT_EQ(quota.outstanding(":1.7"), 1u);
}

TEST(CallQuota, ATicketMovedAlongHoldsTheSlotUntilItsLastOwnerGoes) {
  CallQuota quota(1);
  CallQuota::Ticket outer;
  {
    auto t = quota.acquire(":1.7");
    ASSERT_TRUE(t);
    CallQuota::Ticket inner = std::move(*t);
    outer = std::move(inner);
  }
  EXPECT_EQ(quota.outstanding(":1.7"), 1u);
  outer = CallQuota::Ticket();
  EXPECT_EQ(quota.outstanding(":1.7"), 0u);
}

TEST(CallQuota, ForgetsACallerOnceItsLastCallIsAnswered) {
  CallQuota quota;
  {
    auto a = quota.acquire(":1.1");
    auto b = quota.acquire(":1.2");
    EXPECT_EQ(quota.peerCount(), 2u);
  }
  EXPECT_EQ(quota.peerCount(), 0u);
}

TEST(CallQuota, ACallerThatLeavesIsForgottenAtOnceAndItsLateAnswersFreeNothing) {
  CallQuota quota(2);
  auto a = quota.acquire(":1.1");
  auto b = quota.acquire(":1.1");
  ASSERT_TRUE(a && b);
  quota.peerGone(":1.1");
  EXPECT_EQ(quota.peerCount(), 0u);
  EXPECT_EQ(quota.outstanding(":1.1"), 0u);
  // A test may reuse the name (a real bus never does): the new entry is not disturbed by the
  // old calls being answered.
  auto c = quota.acquire(":1.1");
  ASSERT_TRUE(c);
  a->release();
  b->release();
  EXPECT_EQ(quota.outstanding(":1.1"), 1u);
}

TEST(CallQuota, ANewLimitAppliesToLaterCallsOnly) {
  CallQuota quota(2);
  auto a = quota.acquire(":1.1");
  auto b = quota.acquire(":1.1");
  ASSERT_TRUE(a && b);
  quota.setMaxPerPeer(1);
  EXPECT_EQ(quota.outstanding(":1.1"), 2u) << "calls already admitted stay";
  EXPECT_FALSE(quota.acquire(":1.1"));
  a->release();
  EXPECT_FALSE(quota.acquire(":1.1")) << "one outstanding is the new limit";
  b->release();
  EXPECT_TRUE(quota.acquire(":1.1"));
}

TEST(CallQuota, TicketsMayOutliveTheirQuota) {
  CallQuota::Ticket survivor;
  {
    CallQuota quota;
    auto t = quota.acquire(":1.1");
    ASSERT_TRUE(t);
    survivor = std::move(*t);
  }
  survivor.release();  // must not touch the destroyed table
  EXPECT_FALSE(survivor);
}

}  // namespace
}  // namespace iothubd::dbusapi
