// SPDX-License-Identifier: MIT
// The reconnect schedule alone, with a seeded random: backoff with jitter and a cap, the quick
// retry after a drop only for a link that had been fine, the floor after short-lived links, and
// which refusals are retried (issue 14, protocol doc 9 and 12).
#include "iothubd/session/retry_policy.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <vector>

namespace iothubd::session {
namespace {

using namespace std::chrono_literals;
using std::chrono::microseconds;
using Lived = std::optional<microseconds>;

const core::Error kRefusedSocket{core::Errc::ConnectionFailed, "connection refused"};
const core::Error kNotAuthorised{core::Errc::Unauthorized, "not authorised", 5};
const core::Error kBadUserName{core::Errc::Unauthorized, "bad user name or password", 4};
const core::Error kServerUnavailable{core::Errc::ConnectionFailed, "server unavailable", 3};

RetryPolicy::Settings bounds(std::chrono::milliseconds initial, std::chrono::milliseconds max) {
  RetryPolicy::Settings s;
  s.initialDelay = initial;
  s.maxDelay = max;
  return s;
}

TEST(RetryPolicy, FailedAttemptsBackOffExponentiallyWithJitterUpToTheCap) {
  for (std::uint64_t seed : {1u, 2u, 3u, 42u}) {
    RetryPolicy p(bounds(1s, 60s), seed);
    microseconds cap = 1s;
    for (int n = 0; n < 12; ++n) {
      auto d = p.next(kRefusedSocket, std::nullopt);
      EXPECT_TRUE(d.retry);
      // Equal jitter: between half and all of min(initial × 2^n, max).
      EXPECT_GE(d.delay, cap / 2) << "seed " << seed << " attempt " << n;
      EXPECT_LE(d.delay, cap) << "seed " << seed << " attempt " << n;
      cap = std::min<microseconds>(cap * 2, 60s);
    }
  }
}

TEST(RetryPolicy, TheJitterSpreadsAFleet) {
  std::vector<microseconds> firsts;
  for (std::uint64_t seed = 0; seed < 20; ++seed) {
    RetryPolicy p(bounds(1s, 60s), seed);
    (void)p.next(kRefusedSocket, std::nullopt);
    (void)p.next(kRefusedSocket, std::nullopt);
    firsts.push_back(p.next(kRefusedSocket, std::nullopt).delay);  // 2..4 s
  }
  std::sort(firsts.begin(), firsts.end());
  EXPECT_GT(firsts.back() - firsts.front(), 1s) << "twenty devices retry within a second";
}

TEST(RetryPolicy, HoursOfFailuresStayAtTheCap) {
  RetryPolicy p(bounds(1s, 60s), 7);
  for (int n = 0; n < 10000; ++n) {
    auto d = p.next(kRefusedSocket, std::nullopt);
    ASSERT_LE(d.delay, 60s);
    ASSERT_GT(d.delay, 0s);
  }
  EXPECT_GE(p.next(kRefusedSocket, std::nullopt).delay, 30s);
}

TEST(RetryPolicy, ADropAfterALongLinkIsRetriedAtOnceThenBacksOff) {
  RetryPolicy p(bounds(1s, 60s), 1);
  auto d = p.next(kRefusedSocket, Lived(2h));
  EXPECT_TRUE(d.retry);
  EXPECT_EQ(d.delay, RetryPolicy::kFirstRetryAfterDrop);
  // That quick attempt failed: the backoff starts at its beginning.
  d = p.next(kRefusedSocket, std::nullopt);
  EXPECT_GE(d.delay, 500ms);
  EXPECT_LE(d.delay, 1s);
}

// Duplicate identity, a throttled hub, a quota: the hub closes each link soon after its CONNACK.
// Once is the quick retry; again and again is a backoff with a floor, never a 10 ms loop.
TEST(RetryPolicy, LinksThatKeepDroppingSoonAfterConnackBackOffWithAFloor) {
  RetryPolicy p(bounds(1s, 60s), 3);
  EXPECT_EQ(p.next(kRefusedSocket, Lived(200ms)).delay, RetryPolicy::kFirstRetryAfterDrop);
  std::vector<microseconds> delays;
  for (int n = 0; n < 6; ++n) {
    delays.push_back(p.next(kRefusedSocket, Lived(200ms)).delay);
  }
  for (std::size_t i = 0; i < delays.size(); ++i) {
    std::printf("drop %zu: next attempt in %lld ms\n", i + 2,
                static_cast<long long>(delays[i].count() / 1000));
    EXPECT_GE(delays[i], 8s) << "floor: 8 × initial";
    EXPECT_LE(delays[i], 60s);
  }
  EXPECT_GE(delays.back(), 30s) << "still backing off";
  // A link that then lives long enough starts the schedule afresh.
  EXPECT_EQ(p.next(kRefusedSocket, Lived(RetryPolicy::kStableLink)).delay,
            RetryPolicy::kFirstRetryAfterDrop);
  EXPECT_EQ(p.failures(), 0u);
}

TEST(RetryPolicy, ServerUnavailableWaitsAtLeastTheFloor) {
  RetryPolicy p(bounds(1s, 60s), 5);
  auto d = p.next(kServerUnavailable, std::nullopt);
  EXPECT_TRUE(d.retry);
  EXPECT_GE(d.delay, 8s);
  EXPECT_LE(d.delay, 16s);
}

TEST(RetryPolicy, TheFloorNeverExceedsTheCap) {
  RetryPolicy p(bounds(1s, 3s), 5);
  (void)p.next(kRefusedSocket, Lived(1s));
  for (int n = 0; n < 5; ++n) {
    auto d = p.next(kRefusedSocket, Lived(1s));
    EXPECT_GE(d.delay, 1500ms);
    EXPECT_LE(d.delay, 3s);
  }
}

TEST(RetryPolicy, NotAuthorisedIsRetriedOnlyWithCredentialsMadeAfresh) {
  RetryPolicy key(bounds(1s, 60s), 1);
  auto d = key.next(kNotAuthorised, std::nullopt);
  EXPECT_TRUE(d.retry) << "a token made from the key with a clock that was off";
  EXPECT_GE(d.delay, 500ms);
  d = key.next(kNotAuthorised, std::nullopt);
  EXPECT_GE(d.delay, 1s) << "and with backoff";
  EXPECT_FALSE(key.next(kBadUserName, std::nullopt).retry) << "CONNACK 4 is configuration";
  EXPECT_FALSE(
      key.next(core::Error{core::Errc::Unauthorized, "key is not base64"}, std::nullopt).retry);

  auto settings = bounds(1s, 60s);
  settings.renewableCredentials = false;  // an operator's SAS token
  RetryPolicy token(settings, 1);
  d = token.next(kNotAuthorised, std::nullopt);
  EXPECT_FALSE(d.retry) << "the same token would be refused again: wait for UpdateSasToken";
  EXPECT_GE(d.delay, 500ms) << "but an attempt asked for waits all the same";
}

TEST(RetryPolicy, WithoutConnectionRetryNothingIsRetriedButTheDelayHolds) {
  auto settings = bounds(1s, 60s);
  settings.retry = false;
  RetryPolicy p(settings, 1);
  auto d = p.next(kRefusedSocket, std::nullopt);
  EXPECT_FALSE(d.retry);
  EXPECT_GE(d.delay, 500ms);
}

TEST(RetryPolicy, ResetStartsAfreshAndNewBoundsApplyToTheNextDelay) {
  RetryPolicy p(bounds(1s, 60s), 9);
  for (int n = 0; n < 8; ++n) {
    (void)p.next(kRefusedSocket, std::nullopt);
  }
  p.reset();
  EXPECT_LE(p.next(kRefusedSocket, std::nullopt).delay, 1s);
  p.configure(bounds(100ms, 200ms));
  EXPECT_LE(p.next(kRefusedSocket, std::nullopt).delay, 200ms);
}

}  // namespace
}  // namespace iothubd::session
