// SPDX-License-Identifier: MIT
#include "method_router.hpp"

#include <gtest/gtest.h>

#include "inbound_limits.hpp"
#include "manual_scheduler.hpp"

namespace iothubd::dbusapi {
namespace {

using namespace std::chrono_literals;

class MethodRouterTest : public ::testing::Test {
 protected:
  struct Delivered {
    std::string peer, rid, name, payload;
  };
  struct Answered {
    std::string rid;
    int status;
    std::string payload;
  };
  MethodRouter::Hooks hooks() {
    return {[this](const std::string& peer, const std::string& rid, const std::string& name,
                   std::string_view payload) {
              delivered_.push_back({peer, rid, name, std::string(payload)});
            },
            [this](const std::string& rid, int status, const std::string& payload) {
              answered_.push_back({rid, status, payload});
            }};
  }
  fakes::ManualScheduler clock_;
  std::vector<Delivered> delivered_;
  std::vector<Answered> answered_;
  MethodRouter router_{clock_, 30s, hooks()};
};

TEST_F(MethodRouterTest, DeliversAClaimedMethodToItsClaimerOnly) {
  ASSERT_TRUE(router_.claim(":1.5", "reboot"));
  router_.onRequest("7", "reboot", "{}");
  ASSERT_EQ(delivered_.size(), 1u);
  EXPECT_EQ(delivered_[0].peer, ":1.5");
  EXPECT_EQ(delivered_[0].rid, "7");
  EXPECT_TRUE(answered_.empty());
  EXPECT_TRUE(router_.takeResponse(":1.5", "7"));
}

TEST_F(MethodRouterTest, UnclaimedMethodIsAnswered501AtOnceWithAJsonError) {
  router_.onRequest("1", "reboot", "{}");
  ASSERT_EQ(answered_.size(), 1u);
  EXPECT_EQ(answered_[0].status, 501);
  EXPECT_EQ(answered_[0].payload, R"({"error":"no handler claimed method 'reboot'"})");
  EXPECT_TRUE(delivered_.empty());
}

TEST_F(MethodRouterTest, HubRequestsWithABadNameOrAnOversizedPayloadAreAnsweredNotDelivered) {
  ASSERT_TRUE(router_.claim(":1.1", "*"));
  router_.onRequest("1", std::string(129, 'n'), "{}");
  router_.onRequest("2", "ctl\x1b", "{}");
  router_.onRequest("3", "big", std::string(kMaxInboundPayloadBytes + 1, ' '));
  router_.onRequest("4", "fits", std::string(kMaxInboundPayloadBytes, ' '));
  ASSERT_EQ(answered_.size(), 3u);
  EXPECT_EQ(answered_[0].status, 400);
  EXPECT_EQ(answered_[1].status, 400);
  EXPECT_EQ(answered_[2].status, 413);
  EXPECT_LT(answered_[2].payload.size(), 200u);
  ASSERT_EQ(delivered_.size(), 1u);
  EXPECT_EQ(delivered_[0].rid, "4");
  EXPECT_EQ(router_.takeResponse(":1.1", "3").error().code, core::Errc::Timeout)
      << "an id the daemon answered";
}

TEST_F(MethodRouterTest, WildcardTakesOnlyNamesNobodyElseClaimed) {
  ASSERT_TRUE(router_.claim(":1.1", "*"));
  ASSERT_TRUE(router_.claim(":1.2", "ping"));
  router_.onRequest("1", "ping", "");
  router_.onRequest("2", "other", "");
  ASSERT_EQ(delivered_.size(), 2u);
  EXPECT_EQ(delivered_[0].peer, ":1.2");
  EXPECT_EQ(delivered_[1].peer, ":1.1");
}

TEST_F(MethodRouterTest, ClaimRules) {
  EXPECT_EQ(router_.claim(":1.1", "").error().code, core::Errc::InvalidArgument);
  EXPECT_EQ(router_.claim(":1.1", "a/b").error().code, core::Errc::InvalidArgument);
  EXPECT_EQ(router_.claim(":1.1", "tab\there").error().code, core::Errc::InvalidArgument);
  EXPECT_EQ(router_.claim(":1.1", "caf\xc3\xa9").error().code, core::Errc::InvalidArgument);
  EXPECT_TRUE(router_.claim(":1.1", std::string(128, 'n'))) << "128 printable bytes are fine";
  auto tooLong = router_.claim(":1.1", std::string(129, 'n'));
  ASSERT_FALSE(tooLong);
  EXPECT_EQ(tooLong.error().code, core::Errc::InvalidArgument);
  auto huge = router_.claim(":1.1", std::string(1 << 20, '\x01'));
  ASSERT_FALSE(huge);
  EXPECT_LT(huge.error().message.size(), 1024u) << "the name is cut in the error";
  ASSERT_TRUE(router_.claim(":1.1", "x"));
  EXPECT_TRUE(router_.claim(":1.1", "x")) << "claiming again is harmless";
  EXPECT_EQ(router_.claim(":1.2", "x").error().code, core::Errc::AlreadyClaimed);
  EXPECT_EQ(router_.release(":1.2", "x").error().code, core::Errc::InvalidArgument);
  EXPECT_TRUE(router_.release(":1.1", "x"));
  EXPECT_TRUE(router_.claim(":1.2", "x"));
}

TEST_F(MethodRouterTest, ClaimsPerPeerAreBoundedWithLimitExceeded) {
  for (std::size_t i = 0; i < MethodRouter::Limits{}.maxClaimsPerPeer; ++i) {
    ASSERT_TRUE(router_.claim(":1.1", "m" + std::to_string(i)));
  }
  auto refused = router_.claim(":1.1", "one-more");
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, core::Errc::LimitExceeded);
  EXPECT_NE(refused.error().message.find("max_method_claims_per_app"), std::string::npos)
      << refused.error().message;
  EXPECT_TRUE(router_.claim(":1.1", "m0")) << "claiming a held name again is no new claim";
  EXPECT_TRUE(router_.claim(":1.2", "one-more"));
  ASSERT_TRUE(router_.release(":1.1", "m0"));
  EXPECT_TRUE(router_.claim(":1.1", "m-new")) << "a released name frees its slot";
}

TEST_F(MethodRouterTest, LimitsFromTheConfigurationApplyToLaterClaimsAndRequests) {
  router_.setLimits({.maxClaimsPerPeer = 2, .maxPendingRequests = 1});
  ASSERT_TRUE(router_.claim(":1.1", "a"));
  ASSERT_TRUE(router_.claim(":1.1", "b"));
  EXPECT_EQ(router_.claim(":1.1", "c").error().code, core::Errc::LimitExceeded);
  router_.onRequest("1", "a", "");
  router_.onRequest("2", "b", "");
  ASSERT_EQ(answered_.size(), 1u);
  EXPECT_EQ(answered_[0].rid, "2");
  EXPECT_EQ(answered_[0].status, 503);
  EXPECT_TRUE(router_.takeResponse(":1.1", "1"));
  router_.onRequest("3", "b", "");
  EXPECT_EQ(answered_.size(), 1u) << "an answered request frees its slot";
}

TEST_F(MethodRouterTest, NoAnswerWithinTheTimeoutIsAnswered504AndALateAnswerIsRefused) {
  ASSERT_TRUE(router_.claim(":1.1", "slow"));
  router_.onRequest("9", "slow", "{}");
  clock_.advance(29s);
  EXPECT_TRUE(answered_.empty());
  clock_.advance(1s);
  ASSERT_EQ(answered_.size(), 1u);
  EXPECT_EQ(answered_[0].status, 504);
  auto late = router_.takeResponse(":1.1", "9");
  ASSERT_FALSE(late);
  EXPECT_EQ(late.error().code, core::Errc::Timeout);
}

// Issue 14: the hub takes an answer only on the connection its request came on. When that one
// closes, pending requests are dropped: no 504 from the daemon on the next connection, and the
// claimer's late answer gets a clear error.
TEST_F(MethodRouterTest, RequestsOfAClosedConnectionAreDroppedNotAnswered) {
  ASSERT_TRUE(router_.claim(":1.1", "slow"));
  router_.onRequest("9", "slow", "{}");
  router_.linkGone();
  EXPECT_EQ(router_.pendingCount(), 0u);
  clock_.advance(1min);
  EXPECT_TRUE(answered_.empty()) << "answered with a request id of a closed connection";
  auto late = router_.takeResponse(":1.1", "9");
  ASSERT_FALSE(late);
  EXPECT_EQ(late.error().code, core::Errc::ConnectionDropped);
  EXPECT_NE(late.error().message.find("closed"), std::string::npos) << late.error().message;
  // Requests of the next connection go on as before.
  router_.onRequest("10", "slow", "{}");
  EXPECT_TRUE(router_.takeResponse(":1.1", "10"));
}

TEST_F(MethodRouterTest, ClaimerLeavingIsAnswered503AndLosesItsClaims) {
  ASSERT_TRUE(router_.claim(":1.1", "slow"));
  router_.onRequest("3", "slow", "{}");
  router_.peerGone(":1.1");
  ASSERT_EQ(answered_.size(), 1u);
  EXPECT_EQ(answered_[0].status, 503);
  router_.onRequest("4", "slow", "{}");
  EXPECT_EQ(answered_.back().status, 501);
  clock_.advance(1min);
  EXPECT_EQ(answered_.size(), 2u) << "the 504 timer outlived the request";
}

TEST_F(MethodRouterTest, OnlyTheReceiverMayAnswerAndUnknownIdsAreInvalid) {
  ASSERT_TRUE(router_.claim(":1.1", "m"));
  router_.onRequest("5", "m", "");
  EXPECT_EQ(router_.takeResponse(":1.2", "5").error().code, core::Errc::AccessDenied);
  EXPECT_EQ(router_.takeResponse(":1.1", "nope").error().code, core::Errc::InvalidArgument);
  EXPECT_TRUE(router_.takeResponse(":1.1", "5"));
  EXPECT_EQ(router_.takeResponse(":1.1", "5").error().code, core::Errc::InvalidArgument);
}

TEST_F(MethodRouterTest, PendingRequestsAreBounded) {
  ASSERT_TRUE(router_.claim(":1.1", "m"));
  for (std::size_t i = 0; i < MethodRouter::Limits{}.maxPendingRequests; ++i) {
    router_.onRequest(std::to_string(i), "m", "");
  }
  EXPECT_TRUE(answered_.empty());
  router_.onRequest("overflow", "m", "");
  ASSERT_EQ(answered_.size(), 1u);
  EXPECT_EQ(answered_[0].status, 503);
}

}  // namespace
}  // namespace iothubd::dbusapi
