// SPDX-License-Identifier: MIT
#include <gtest/gtest.h>

#include "check.hpp"

namespace iothubd::ctl {
namespace {

constexpr std::int64_t kNow = 1796580000;

TEST(CheckJudges, HttpDatesParseExactlyAsRfc7231Writes) {
  EXPECT_EQ(parseHttpDate("Sun, 06 Nov 1994 08:49:37 GMT"), 784111777);
  EXPECT_EQ(parseHttpDate("Sun, 06 Dec 2026 18:00:00 GMT"), kNow);
  EXPECT_FALSE(parseHttpDate("Sunday, 06-Nov-94 08:49:37 GMT"));  // RFC 850: obsolete
  EXPECT_FALSE(parseHttpDate("Sun, 06 Nov 1994 08:49:37 UTC"));
  EXPECT_FALSE(parseHttpDate("Sun, 06 Foo 1994 08:49:37 GMT"));
  EXPECT_FALSE(parseHttpDate("Sun, 36 Nov 1994 08:49:37 GMT"));
  EXPECT_FALSE(parseHttpDate(""));
}

TEST(CheckJudges, TheClockIsAnErrorBeyondFiveMinutesAndAWarningBeyondThirtySeconds) {
  EXPECT_EQ(judgeClock(kNow, kNow + 10, "https://hub/").level, Level::Ok);
  EXPECT_EQ(judgeClock(kNow, kNow + 30, "https://hub/").level, Level::Ok);
  auto warn = judgeClock(kNow, kNow - 90, "https://hub/");
  EXPECT_EQ(warn.level, Level::Warning);
  EXPECT_EQ(warn.message,
            "the system clock is 1 min 30 s behind the hub's clock (Date of https://hub/) (the "
            "hub refuses SAS tokens beyond 5 minutes)");
  EXPECT_EQ(judgeClock(kNow, kNow + 300, "x").level, Level::Warning);
  auto err = judgeClock(kNow, kNow + 301, "x");
  EXPECT_EQ(err.level, Level::Error);
  EXPECT_NE(err.message.find("5 min 1 s ahead of the hub's clock"), std::string::npos);
  EXPECT_NE(err.fix.find("timedatectl set-ntp true"), std::string::npos);
}

TEST(CheckJudges, CredentialExpiry) {
  auto now = static_cast<std::uint64_t>(kNow);
  EXPECT_EQ(judgeSasTokenExpiry(now + 2 * 86400, now).level, Level::Ok);
  auto soon = judgeSasTokenExpiry(now + 3600, now);
  EXPECT_EQ(soon.level, Level::Warning);
  EXPECT_EQ(soon.message,
            "the SAS token expires at 2026-12-06 19:00:00 UTC (in 1 h); iothubd cannot renew it");
  EXPECT_EQ(judgeSasTokenExpiry(now, now).level, Level::Error);

  EXPECT_EQ(judgeCertificate("d.pem", kNow - 10, kNow + 400 * 86400, kNow).level, Level::Ok);
  EXPECT_EQ(judgeCertificate("d.pem", kNow - 10, kNow + 10 * 86400, kNow).level, Level::Warning);
  auto expired = judgeCertificate("d.pem", kNow - 100, kNow - 1, kNow);
  EXPECT_EQ(expired.level, Level::Error);
  EXPECT_EQ(expired.message, "the device certificate d.pem expired at 2026-12-06 17:59:59 UTC");
  auto future = judgeCertificate("d.pem", kNow + 100, kNow + 1000, kNow);
  EXPECT_EQ(future.level, Level::Error);
  EXPECT_NE(future.fix.find("clock"), std::string::npos);
}

TEST(CheckJudges, TcpOkWarningOrErrorByHowManyAddressesAnswer) {
  auto all = judgeTcp({{"127.0.0.1", ""}, {"::1", ""}}, "localhost:8883", false, false);
  EXPECT_EQ(all.level, Level::Ok);
  EXPECT_EQ(all.message, "localhost:8883 accepts TCP (127.0.0.1, ::1)");
  auto some =
      judgeTcp({{"::1", "Connection refused"}, {"127.0.0.1", ""}}, "localhost:8883", false, false);
  EXPECT_EQ(some.level, Level::Warning);
  EXPECT_EQ(some.message, "localhost:8883 accepts TCP at 127.0.0.1, but ::1: Connection refused");
  auto none = judgeTcp({{"127.0.0.1", "Connection refused"}}, "localhost:8883", false, false);
  EXPECT_EQ(none.level, Level::Error);
  EXPECT_NE(none.fix.find("websockets = true"), std::string::npos);
  auto proxy = judgeTcp({{"10.0.0.1", "No route to host"}}, "HTTP proxy p:3128", true, false);
  EXPECT_NE(proxy.fix.find("[proxy]"), std::string::npos);
}

TEST(CheckJudges, OutboxSpace) {
  constexpr std::uint64_t kMiB = 1024 * 1024;
  FileSystemSpace space{"/var/lib/iothubd", true, false, 10 * 1024 * kMiB, 1000};
  EXPECT_EQ(judgeOutboxSpace(space, 64 * kMiB).level, Level::Ok);
  space.freeBytes = 32 * kMiB;
  EXPECT_EQ(judgeOutboxSpace(space, 64 * kMiB).level, Level::Warning);
  space.freeBytes = kMiB;
  EXPECT_EQ(judgeOutboxSpace(space, 64 * kMiB).level, Level::Error);
  space.freeBytes = 10 * 1024 * kMiB;
  space.readOnly = true;
  EXPECT_EQ(judgeOutboxSpace(space, 64 * kMiB).level, Level::Error);
  space.exists = false;
  EXPECT_EQ(judgeOutboxSpace(space, 64 * kMiB).level, Level::Warning);
}

TEST(CheckReport, OneLinePerCheckWithItsFixAndASummary) {
  std::vector<CheckResult> results{
      {"dns", Level::Ok, "localhost resolves to 127.0.0.1", ""},
      {"tls", Level::Error, "TLS: certificate verification failed", "set the CA"},
      {"clock", Level::Warning, "a bit off", "run ntp"},
  };
  EXPECT_EQ(formatCheckReport(results),
            "ok       dns    localhost resolves to 127.0.0.1\n"
            "error    tls    TLS: certificate verification failed\n"
            "                fix: set the CA\n"
            "warning  clock  a bit off\n"
            "                fix: run ntp\n"
            "\n"
            "1 ok, 1 warning, 1 error\n");
  EXPECT_EQ(formatCheckReportJson({results[1]}),
            R"({"checks":[{"id":"tls","result":"error","message":"TLS: certificate )"
            R"(verification failed","fix":"set the CA"}],"ok":0,"warnings":0,"errors":1})");
}

}  // namespace
}  // namespace iothubd::ctl
