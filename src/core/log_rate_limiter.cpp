// SPDX-License-Identifier: MIT
#include "iothubd/core/log_rate_limiter.hpp"

#include <algorithm>
#include <cctype>

namespace iothubd::core {
namespace {

std::string keyOf(LogLevel level, std::string_view message) {
  std::string key;
  key.reserve(message.size() + 2);
  key.push_back(static_cast<char>('0' + static_cast<int>(level)));
  bool inDigits = false;
  for (char c : message) {
    bool digit = std::isdigit(static_cast<unsigned char>(c)) != 0;
    if (digit && inDigits) {
      continue;
    }
    key.push_back(digit ? '#' : c);
    inDigits = digit;
  }
  return key;
}

}  // namespace

LogRateLimiter::LogRateLimiter(Limits limits) : limits_(limits) {
  limits_.burst = std::max<std::size_t>(limits_.burst, 1);
  limits_.maxKeys = std::max<std::size_t>(limits_.maxKeys, 1);
}

std::string LogRateLimiter::Report::summaryLine() const {
  return "suppressed " + std::to_string(suppressed) + " similar message" +
         (suppressed == 1 ? "" : "s") + " like: " + sample;
}

bool LogRateLimiter::admit(LogLevel level, std::string_view message, std::chrono::microseconds now,
                           std::vector<Report>& reports) {
  closeExpired(now, reports);
  std::string key = keyOf(level, message);
  auto it = std::find_if(windows_.begin(), windows_.end(),
                         [&key](const Window& w) { return w.key == key; });
  if (it != windows_.end()) {
    if (it->written < limits_.burst) {
      ++it->written;
      return true;
    }
    ++it->suppressed;
    return false;
  }
  if (windows_.size() >= limits_.maxKeys) {
    auto oldest =
        std::min_element(windows_.begin(), windows_.end(),
                         [](const Window& a, const Window& b) { return a.start < b.start; });
    close(static_cast<std::size_t>(oldest - windows_.begin()), reports);
  }
  windows_.push_back(Window{std::move(key), level, std::string(message), now, 1, 0});
  return true;
}

void LogRateLimiter::flush(std::vector<Report>& reports) {
  for (std::size_t i = 0; i < windows_.size();) {
    if (windows_[i].suppressed > 0) {
      close(i, reports);
    } else {
      ++i;
    }
  }
}

void LogRateLimiter::closeExpired(std::chrono::microseconds now, std::vector<Report>& reports) {
  for (std::size_t i = 0; i < windows_.size();) {
    if (now - windows_[i].start >= limits_.interval) {
      close(i, reports);
    } else {
      ++i;
    }
  }
}

void LogRateLimiter::close(std::size_t index, std::vector<Report>& reports) {
  Window& w = windows_[index];
  if (w.suppressed > 0) {
    reports.push_back(Report{w.level, std::move(w.sample), w.suppressed});
  }
  windows_.erase(windows_.begin() + static_cast<std::ptrdiff_t>(index));
}

}  // namespace iothubd::core
