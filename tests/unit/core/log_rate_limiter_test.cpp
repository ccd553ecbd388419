// SPDX-License-Identifier: MIT
#include "iothubd/core/log_rate_limiter.hpp"

#include <gtest/gtest.h>

namespace iothubd::core {
namespace {

using std::chrono::seconds;
using Report = LogRateLimiter::Report;

/// Feeds `count` copies of `message` at time `at` and returns how many were admitted.
std::size_t feed(LogRateLimiter& limiter, std::string_view message, std::size_t count, seconds at,
                 std::vector<Report>& reports, LogLevel level = LogLevel::Warning) {
  std::size_t admitted = 0;
  for (std::size_t i = 0; i < count; ++i) {
    admitted += limiter.admit(level, message, at, reports) ? 1 : 0;
  }
  return admitted;
}

TEST(LogRateLimiter, AdmitsTheBurstThenSuppressesIdenticalLines) {
  LogRateLimiter limiter({.burst = 3, .interval = seconds(60), .maxKeys = 8});
  std::vector<Report> reports;
  EXPECT_EQ(feed(limiter, "publish refused", 10, seconds(1), reports), 3u);
  EXPECT_TRUE(reports.empty()) << "nothing is reported while the window is open";
}

TEST(LogRateLimiter, ReportsTheSuppressedCountWhenTheIntervalIsOver) {
  LogRateLimiter limiter({.burst = 3, .interval = seconds(60), .maxKeys = 8});
  std::vector<Report> reports;
  ASSERT_EQ(feed(limiter, "publish refused", 10, seconds(1), reports), 3u);

  // Any later line, even an unrelated one, closes the expired window first.
  EXPECT_TRUE(limiter.admit(LogLevel::Info, "something else", seconds(61), reports));
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].suppressed, 7u);
  EXPECT_EQ(reports[0].level, LogLevel::Warning);
  EXPECT_EQ(reports[0].summaryLine(), "suppressed 7 similar messages like: publish refused");

  // A new window starts with a full burst.
  reports.clear();
  EXPECT_EQ(feed(limiter, "publish refused", 3, seconds(62), reports), 3u);
}

TEST(LogRateLimiter, LinesThatDifferOnlyInNumbersAreSimilar) {
  LogRateLimiter limiter({.burst = 2, .interval = seconds(60), .maxKeys = 8});
  std::vector<Report> reports;
  EXPECT_TRUE(limiter.admit(LogLevel::Info, "reconnecting in 8 s", seconds(0), reports));
  EXPECT_TRUE(limiter.admit(LogLevel::Info, "reconnecting in 16 s", seconds(1), reports));
  EXPECT_FALSE(limiter.admit(LogLevel::Info, "reconnecting in 32 s", seconds(2), reports));
  // Different words or a different priority are a different key.
  EXPECT_TRUE(limiter.admit(LogLevel::Info, "reconnected after 32 s", seconds(2), reports));
  EXPECT_TRUE(limiter.admit(LogLevel::Warning, "reconnecting in 64 s", seconds(2), reports));
}

TEST(LogRateLimiter, NothingIsReportedForAWindowWithoutSuppressedLines) {
  LogRateLimiter limiter({.burst = 3, .interval = seconds(60), .maxKeys = 8});
  std::vector<Report> reports;
  ASSERT_EQ(feed(limiter, "connected", 3, seconds(0), reports), 3u);
  EXPECT_TRUE(limiter.admit(LogLevel::Info, "connected", seconds(120), reports));
  EXPECT_TRUE(reports.empty());
}

TEST(LogRateLimiter, TheKeyTableIsBoundedAndEvictionStillReports) {
  LogRateLimiter limiter({.burst = 1, .interval = seconds(60), .maxKeys = 2});
  std::vector<Report> reports;
  ASSERT_EQ(feed(limiter, "first flood", 5, seconds(0), reports), 1u);
  ASSERT_EQ(feed(limiter, "second flood", 1, seconds(1), reports), 1u);
  // A third key evicts the oldest window, whose suppressed lines must not vanish silently.
  EXPECT_TRUE(limiter.admit(LogLevel::Warning, "third line", seconds(2), reports));
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].sample, "first flood");
  EXPECT_EQ(reports[0].suppressed, 4u);
}

TEST(LogRateLimiter, FlushReportsOpenWindowsAtExit) {
  LogRateLimiter limiter({.burst = 1, .interval = seconds(60), .maxKeys = 8});
  std::vector<Report> reports;
  ASSERT_EQ(feed(limiter, "flood", 2, seconds(0), reports), 1u);
  ASSERT_EQ(feed(limiter, "quiet", 1, seconds(0), reports), 1u);
  limiter.flush(reports);
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].summaryLine(), "suppressed 1 similar message like: flood");
}

}  // namespace
}  // namespace iothubd::core
