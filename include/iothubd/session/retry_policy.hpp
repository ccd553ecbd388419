// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <random>

#include "iothubd/core/result.hpp"

namespace iothubd::session {

/// When the session tries again after a failed attempt or a lost link (protocol doc 9, 12). The
/// session asks it once per failure, whatever caused the attempt (start, Connect, auto_connect,
/// a renewal): the answer is how long to wait before the next attempt, and whether to make it on
/// its own (Lost) or only when something asks for the link again (GaveUp).
///
/// The schedule (README "How iothubd retries"):
/// - exponential backoff with "equal jitter": the n-th failure in a row (n = 0, 1, ...) waits a
///   random time between half and all of min(initial × 2^n, max), so that a fleet that lost its
///   hub together does not come back in lockstep (pitfall 9), and never longer than max;
/// - the first drop of an established link is retried almost at once (10 ms, as the Python SDK
///   does), but only if that link lived long enough (kStableLink) or is the first of the
///   schedule; a link that keeps dropping soon after its CONNACK (a duplicate identity, a
///   throttled hub, a quota: pitfall 11) continues the backoff from at least its fifth step
///   (between 8 and 16 × initial, capped by max), and so does CONNACK 3 "server unavailable";
/// - the schedule starts afresh once a link has lived kStableLink;
/// - CONNACK 5 "not authorised" is retried with the backoff when the credentials are made afresh
///   for every CONNECT (device key: a new token; X.509): a clock that was off by more than the
///   hub's 5 minutes fixes itself after time sync. An operator's SAS token the hub refused, CONNACK
///   2 and 4, a proxy's refusal and credentials we cannot make are not retried: they must change
///   first (reload, UpdateSasToken);
/// - with connection_retry off nothing is retried on its own.
/// Even then the delay is the earliest an attempt asked for (auto_connect, Connect) may start.
class RetryPolicy {
 public:
  struct Settings {
    bool retry = true;                             ///< connection_retry
    std::chrono::milliseconds initialDelay{1000};  ///< connection_retry_initial_delay
    std::chrono::milliseconds maxDelay{60000};     ///< connection_retry_max_delay
    /// Each CONNECT presents credentials made afresh (key or X.509), not an operator's token.
    bool renewableCredentials = true;
  };
  /// The quick retry after the drop of a link that had been fine.
  static constexpr std::chrono::milliseconds kFirstRetryAfterDrop{10};
  /// A link that lived this long was fine: its end starts the schedule afresh.
  static constexpr std::chrono::seconds kStableLink{60};
  /// The floor after short-lived links and "server unavailable": the schedule goes on from at
  /// least this step, i.e. waits at least 8 × initial (16 × initial / 2).
  static constexpr unsigned kFloorStep = 4;

  struct Decision {
    std::chrono::microseconds delay{};  ///< the earliest the next attempt may start
    bool retry = false;                 ///< make that attempt on our own
  };

  RetryPolicy(Settings settings, std::uint64_t seed) : settings_(settings), random_(seed) {}

  void configure(Settings settings) { settings_ = settings; }
  [[nodiscard]] const Settings& settings() const noexcept { return settings_; }

  /// The failure `error` ended an attempt, or an established link when `linkLived` (how long it
  /// was up) is set: when and whether to try again.
  [[nodiscard]] Decision next(const core::Error& error,
                              std::optional<std::chrono::microseconds> linkLived);
  /// Starts the schedule afresh (new credentials: their first attempt is not a repeat).
  void reset() noexcept {
    failures_ = 0;
    quickRetryUsed_ = false;
  }
  /// The schedule's step: failures in a row since it (re)started, quick retries not counted,
  /// raised to the floor's step after a short-lived link.
  [[nodiscard]] unsigned failures() const noexcept { return failures_; }

  /// Whether a failure with `error` is retried when the credentials are `renewable`.
  [[nodiscard]] static bool retriable(const core::Error& error, bool renewable) noexcept;

 private:
  [[nodiscard]] std::chrono::microseconds backoff();

  Settings settings_;
  std::mt19937_64 random_;
  unsigned failures_ = 0;
  bool quickRetryUsed_ = false;
};

}  // namespace iothubd::session
