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
  EXPECT_EQ(lines[1], "<3>two lines") << "an embedded newline must not start an unprefixed entry";
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
