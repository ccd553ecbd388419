// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "iothubd/core/log.hpp"

namespace iothubd::core {

/// Keeps a flood of similar log lines (a client calling in a loop, a peer failing every few
/// milliseconds) from drowning the journal: per message key at most `burst` lines per `interval`,
/// the rest are counted and reported once the interval is over. The key is the level plus the
/// text with every run of digits folded, so "retrying in 8s" and "retrying in 16s" count as
/// similar. Pure: the caller passes the time. Not thread-safe; logLine() serialises calls.
class LogRateLimiter {
 public:
  struct Limits {
    std::size_t burst = 10;
    std::chrono::microseconds interval = std::chrono::seconds(60);
    /// Keys remembered at once; the oldest window is closed (and reported) to make room.
    std::size_t maxKeys = 128;
  };

  /// A closed window in which lines were suppressed: log it as summaryLine().
  struct Report {
    LogLevel level = LogLevel::Info;
    std::string sample;  ///< the first line of the window, as written
    std::size_t suppressed = 0;
    [[nodiscard]] std::string summaryLine() const;
  };

  LogRateLimiter() : LogRateLimiter(Limits{}) {}
  /// `burst` and `maxKeys` below 1 are taken as 1.
  explicit LogRateLimiter(Limits limits);

  /// Whether `message` may be written at `now` (monotonic). Summaries of windows that have
  /// closed by `now` with suppressed lines are appended to `reports`; write them first.
  [[nodiscard]] bool admit(LogLevel level, std::string_view message, std::chrono::microseconds now,
                           std::vector<Report>& reports);

  /// Closes every window that still holds suppressed lines (at exit), appending their reports.
  void flush(std::vector<Report>& reports);

 private:
  struct Window {
    std::string key;
    LogLevel level = LogLevel::Info;
    std::string sample;
    std::chrono::microseconds start{0};
    std::size_t written = 0;
    std::size_t suppressed = 0;
  };

  void closeExpired(std::chrono::microseconds now, std::vector<Report>& reports);
  void close(std::size_t index, std::vector<Report>& reports);

  Limits limits_;
  std::vector<Window> windows_;  ///< few keys, scanned linearly; bounded by maxKeys
};

}  // namespace iothubd::core
