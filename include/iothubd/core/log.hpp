// SPDX-License-Identifier: MIT
#pragma once

#include <cstddef>
#include <sstream>
#include <string>
#include <string_view>

namespace iothubd::core {

/// syslog priorities, as journald reads them from a `<N>` line prefix on stderr.
enum class LogLevel : int { Error = 3, Warning = 4, Notice = 5, Info = 6, Debug = 7 };

/// Lines above this level are dropped. Default Info.
void setLogLevel(LogLevel level) noexcept;
[[nodiscard]] LogLevel logLevel() noexcept;
/// Parses "error", "warning", "notice", "info", "debug".
[[nodiscard]] bool parseLogLevel(std::string_view text, LogLevel& out) noexcept;

/// Writes one line `<N>message` to stderr (journald keeps the priority). Never throws. Callers
/// must not pass secrets: wrap them in Secret<>, which prints as "***".
/// Similar lines are rate limited (LogRateLimiter's defaults: 10 per key and minute); what was
/// dropped is reported as "suppressed N similar messages like: ..." once the minute is over.
void logLine(LogLevel level, std::string_view message) noexcept;

/// Writes the reports of rate-limit windows that still hold suppressed lines (call at exit).
void flushLogRateLimit() noexcept;

namespace detail {
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

/// `logf(LogLevel::Info, "connected to ", host, " as ", id)`; formatting is skipped when the
/// level is filtered out.
template <class... Args>
void logf(LogLevel level, const Args&... args) noexcept {
  if (static_cast<int>(level) > static_cast<int>(logLevel())) {
    return;
  }
  try {
    logLine(level, detail::concat(args...));
  } catch (...) {
    logLine(level, "(log formatting failed)");
  }
}

/// Longest part of a string that quoted() copies (about a line of text): enough to recognise a
/// name, path or id, while an error reply or a log line stays small whatever was sent.
inline constexpr std::size_t kQuotedMaxBytes = 160;

/// Quotes a string a caller or the hub supplied, for a log line or an error message: in double
/// quotes (so that spaces and empty values stay visible), `"` and `\` escaped, every control
/// byte (NUL included) and DEL as \xNN, and cut after `maxBytes` (at a UTF-8 boundary) with
/// `... (N bytes)` naming the full length.
[[nodiscard]] std::string quoted(std::string_view text, std::size_t maxBytes = kQuotedMaxBytes);

}  // namespace iothubd::core
