// SPDX-License-Identifier: MIT
// logLine() as journald sees it: what reaches stderr, with which priority prefix.
#include "iothubd/core/log.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace iothubd::core {
namespace {

/// Redirects fd 2 into an unlinked temporary file for the lifetime of the object.
class StderrCapture {
 public:
  StderrCapture() {
    std::string dir = std::getenv("TMPDIR") != nullptr ? std::getenv("TMPDIR") : "/tmp";
    std::string pattern = dir + "/iothubd-log-test-XXXXXX";
    fd_ = ::mkstemp(pattern.data());
    EXPECT_GE(fd_, 0);
    ::unlink(pattern.c_str());
    saved_ = ::dup(STDERR_FILENO);
    ::dup2(fd_, STDERR_FILENO);
  }
  ~StderrCapture() {
    restore();
    ::close(fd_);
  }
  StderrCapture(const StderrCapture&) = delete;
  StderrCapture& operator=(const StderrCapture&) = delete;

  std::vector<std::string> lines() {
    restore();
    std::string text;
    char buf[4096];
    ssize_t n = 0;
    for (off_t off = 0; (n = ::pread(fd_, buf, sizeof buf, off)) > 0; off += n) {
      text.append(buf, static_cast<size_t>(n));
    }
    std::vector<std::string> out;
    std::istringstream is(text);
    for (std::string line; std::getline(is, line);) {
      out.push_back(line);
    }
    return out;
  }

 private:
  void restore() {
    if (saved_ >= 0) {
      ::dup2(saved_, STDERR_FILENO);
      ::close(saved_);
      saved_ = -1;
    }
  }
  int fd_ = -1;
  int saved_ = -1;
};

TEST(Log, EachLineCarriesItsSyslogPriority) {
  StderrCapture capture;
  logLine(LogLevel::Warning, "the hub refused the token");
  logLine(LogLevel::Error, "two\nlines");
  auto lines = capture.lines();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], "<4>the hub refused the token");
  EXPECT_EQ(lines[1], "<3>two\\x0alines")
      << "an embedded newline must not start an unprefixed entry";
}

TEST(Log, EveryControlByteIncludingNulIsEscaped) {
  StderrCapture capture;
  using namespace std::string_literals;
  logLine(LogLevel::Warning, "nul\0cr\rtab\tesc\x1b[31mdel\x7f end"s);
  auto lines = capture.lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0], "<4>nul\\x00cr\\x0dtab\\x09esc\\x1b[31mdel\\x7f end");
}

TEST(Log, AnOverlongLineIsCutNotSplit) {
  StderrCapture capture;
  logLine(LogLevel::Warning, std::string(10000, '\n'));
  auto lines = capture.lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_LT(lines[0].size(), 4096u);
  EXPECT_EQ(lines[0].substr(0, 11), "<4>\\x0a\\x0a");
}

TEST(Quoted, EscapesQuotesBackslashesAndControlBytes) {
  using namespace std::string_literals;
  EXPECT_EQ(core::quoted(""), "\"\"");
  EXPECT_EQ(core::quoted("a \"b\" \\ c"), "\"a \\\"b\\\" \\\\ c\"");
  EXPECT_EQ(core::quoted("x\0y\x7f\n"s), "\"x\\x00y\\x7f\\x0a\"");
}

TEST(Quoted, CutsLongTextAtAUtf8BoundaryAndNamesItsLength) {
  std::string text(kQuotedMaxBytes - 1, 'a');
  text += "\xc3\xa9";  // a two-byte character across the cut
  text += std::string(100000, 'b');
  std::string q = core::quoted(text);
  EXPECT_EQ(q, "\"" + std::string(kQuotedMaxBytes - 1, 'a') + "\"... (" +
                   std::to_string(text.size()) + " bytes)");
  EXPECT_EQ(core::quoted(std::string(40, 'p'), 8), "\"pppppppp\"... (40 bytes)");
  EXPECT_EQ(core::quoted(std::string(8, 'p'), 8), "\"pppppppp\"");
}

TEST(Log, AFloodOfIdenticalLinesIsCutToTheBurstAndReportedAtExit) {
  StderrCapture capture;
  for (int i = 0; i < 50; ++i) {
    logLine(LogLevel::Warning, "SendMessage refused: queue full");
  }
  flushLogRateLimit();
  auto lines = capture.lines();
  ASSERT_EQ(lines.size(), 11u);
  for (size_t i = 0; i < 10; ++i) {
    EXPECT_EQ(lines[i], "<4>SendMessage refused: queue full");
  }
  EXPECT_EQ(lines[10], "<4>suppressed 40 similar messages like: SendMessage refused: queue full");
}

}  // namespace
}  // namespace iothubd::core
