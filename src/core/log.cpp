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
  // One write() per line so that lines from a crashing process are never interleaved. Every
  // control byte (NUL, newline, escape sequences, DEL) is written as \xNN: a newline would start
  // a journal entry without a priority, and hub or caller text must not drive a terminal.
  char buf[4096];
  int n = std::snprintf(buf, sizeof buf, "<%d>", static_cast<int>(level));
  auto len = static_cast<size_t>(n);
  static constexpr char kHex[] = "0123456789abcdef";
  for (char c : message) {
    const auto byte = static_cast<unsigned char>(c);
    const bool control = byte < 0x20 || byte == 0x7f;
    if (len + (control ? 4 : 1) >= sizeof buf - 1) {
      break;
    }
    if (control) {
      buf[len++] = '\\';
      buf[len++] = 'x';
      buf[len++] = kHex[byte >> 4];
      buf[len++] = kHex[byte & 0xf];
    } else {
      buf[len++] = c;
    }
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

std::string quoted(std::string_view text, std::size_t maxBytes) {
  // Cut first, so that what a caller or the hub sent is bounded before it is copied; never
  // inside a UTF-8 sequence, so that the rest stays valid for a D-Bus error reply.
  std::size_t keep = text.size();
  if (keep > maxBytes) {
    keep = maxBytes;
    while (keep > 0 && (static_cast<unsigned char>(text[keep]) & 0xC0) == 0x80) {
      --keep;
    }
  }
  std::string out;
  out.reserve(keep + 24);
  out.push_back('"');
  for (char c : text.substr(0, keep)) {
    const auto byte = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (byte < 0x20 || byte == 0x7f) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", byte);
      out += hex;
    } else {
      out.push_back(c);
    }
  }
  out.push_back('"');
  if (keep < text.size()) {
    out += "... (" + std::to_string(text.size()) + " bytes)";
  }
  return out;
}

}  // namespace iothubd::core
