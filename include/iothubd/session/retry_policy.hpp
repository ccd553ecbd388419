// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <random>

#include "iothubd/core/result.hpp"

namespace iothubd::session {

/// When the session tries again after a failed attempt or a lost link (protocol doc 9, 12). The
/// connection state machine asks it once per failure: a delay means Lost (retry), none GaveUp.
///
/// Today's schedule: the first attempt after an established link dropped comes almost at once
/// (10 ms, as in the Python SDK); every other one after connection_retry_interval plus up to 20 %
/// jitter, so that a fleet that lost its hub together does not return in lockstep (pitfall 9).
/// No retry when connection_retry is off, nor after the hub refused the credentials: they must
/// change first (reload, UpdateSasToken) or an app must ask again. A schedule with backoff, a cap
/// and a floor replaces next() alone; reset() tells it a link came up.
class RetryPolicy {
 public:
  struct Settings {
    bool retry = true;                  ///< connection_retry
    std::chrono::seconds interval{10};  ///< connection_retry_interval
  };
  static constexpr std::chrono::milliseconds kFirstRetryAfterDrop{10};

  RetryPolicy(Settings settings, std::uint64_t seed) : settings_(settings), random_(seed) {}

  void configure(Settings settings) { settings_ = settings; }
  [[nodiscard]] const Settings& settings() const noexcept { return settings_; }

  /// The delay before the next attempt after `error`; `linkWasUp` when an established link ended.
  /// nullopt: do not retry.
  [[nodiscard]] std::optional<std::chrono::microseconds> next(const core::Error& error,
                                                              bool linkWasUp);
  /// A link came up: the next failure starts the schedule afresh.
  void reset() noexcept {}

 private:
  Settings settings_;
  std::mt19937_64 random_;
};

}  // namespace iothubd::session
