// SPDX-License-Identifier: MIT
#include "iothubd/core/log.hpp"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>
#include <vector>

#include "iothubd/core/log_rate_limiter.hpp"

namespace iothubd::core {
namespace {
std::atomic<int> gLevel{static_cast<int>(LogLevel::Info)};

/// One limiter for the process; lines may come from the loop and from off-loop workers.
std::mutex gLimiterMutex;
LogRateLimiter gLimiter;

void writeLine(LogLevel level, std::string_view message) noexcept {
  // One write() per line so that lines from a crashing process are never interleaved; embedded
  // newlines would start a new journal entry without a priority, so they are flattened.
  char buf[4096];
  int n = std::snprintf(buf, sizeof buf, "<%d>", static_cast<int>(level));
  auto len = static_cast<size_t>(n);
  for (char c : message) {
    if (len >= sizeof buf - 1) {
      break;
    }
    buf[len++] = (c == '\n' || c == '\r') ? ' ' : c;
  }
  buf[len++] = '\n';
  ssize_t ignored = ::write(STDERR_FILENO, buf, len);
  (void)ignored;
}

void writeReports(const std::vector<LogRateLimiter::Report>& reports) noexcept {
  for (const auto& report : reports) {
    try {
      writeLine(report.level, report.summaryLine());
    } catch (...) {
      // summaryLine() could not allocate: the count is lost, the lines around it are not.
    }
  }
}

}  // namespace

void setLogLevel(LogLevel level) noexcept {
  gLevel = static_cast<int>(level);
}

LogLevel logLevel() noexcept {
  return static_cast<LogLevel>(gLevel.load());
}

bool parseLogLevel(std::string_view text, LogLevel& out) noexcept {
  struct Name {
    std::string_view name;
    LogLevel level;
  };
  static constexpr Name kNames[] = {{"error", LogLevel::Error},
                                    {"warning", LogLevel::Warning},
                                    {"notice", LogLevel::Notice},
                                    {"info", LogLevel::Info},
                                    {"debug", LogLevel::Debug}};
  for (const auto& n : kNames) {
    if (n.name == text) {
      out = n.level;
      return true;
    }
  }
  return false;
}

void logLine(LogLevel level, std::string_view message) noexcept {
  if (static_cast<int>(level) > gLevel.load()) {
    return;
  }
  std::vector<LogRateLimiter::Report> reports;
  bool admitted = true;
  try {
    auto now = std::chrono::duration_cast<std::chrono::microseconds>(
        std::chrono::steady_clock::now().time_since_epoch());
    std::lock_guard<std::mutex> lock(gLimiterMutex);
    admitted = gLimiter.admit(level, message, now, reports);
  } catch (...) {
    // Out of memory while rate limiting: losing the limit is better than losing the line.
  }
  writeReports(reports);
  if (admitted) {
    writeLine(level, message);
  }
}

void flushLogRateLimit() noexcept {
  std::vector<LogRateLimiter::Report> reports;
  try {
    std::lock_guard<std::mutex> lock(gLimiterMutex);
    gLimiter.flush(reports);
  } catch (...) {
    return;
  }
  writeReports(reports);
}

std::string quoted(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 2);
  out.push_back('"');
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", static_cast<unsigned char>(c));
      out += hex;
    } else {
      out.push_back(c);
    }
  }
  out.push_back('"');
  return out;
}

}  // namespace iothubd::core
