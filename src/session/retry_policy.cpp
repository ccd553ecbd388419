// SPDX-License-Identifier: MIT
#include "iothubd/session/retry_policy.hpp"

#include <algorithm>

namespace iothubd::session {
namespace {

using std::chrono::microseconds;

/// CONNACK return codes (protocol doc 9 table); the transport puts them in Error::sysErrno.
constexpr int kServerUnavailable = 3;
constexpr int kNotAuthorized = 5;

/// Doublings after which min(initial × 2^n, max) is max for any sane bounds; keeps the shift
/// defined however long the hub stays away.
constexpr unsigned kMaxDoublings = 30;

}  // namespace

bool RetryPolicy::retriable(const core::Error& error, bool renewable) noexcept {
  if (error.code != core::Errc::Unauthorized) {
    return true;
  }
  // Only "not authorised" can be the hub's view of a token made with a wrong clock or of an
  // expired one; the others (identifier rejected, bad user name or password, a proxy's 407, a key
  // that is not base64) stay wrong until the configuration changes.
  return renewable && error.sysErrno == kNotAuthorized;
}

RetryPolicy::Decision RetryPolicy::next(const core::Error& error,
                                        std::optional<microseconds> linkLived) {
  if (linkLived && *linkLived >= kStableLink) {
    reset();
  }
  Decision d;
  d.retry = settings_.retry && retriable(error, settings_.renewableCredentials);
  if (linkLived && !quickRetryUsed_ && failures_ == 0) {
    quickRetryUsed_ = true;
    d.delay = kFirstRetryAfterDrop;
    return d;
  }
  const bool suspectThrottling =
      linkLived.has_value() ||
      (error.code == core::Errc::ConnectionFailed && error.sysErrno == kServerUnavailable);
  if (suspectThrottling) {
    // The floor: the schedule goes on from at least its kFloorStep-th step, jitter included.
    failures_ = std::max(failures_, kFloorStep);
  }
  d.delay = backoff();
  return d;
}

microseconds RetryPolicy::backoff() {
  const auto initial = std::chrono::duration_cast<microseconds>(settings_.initialDelay);
  const auto max = std::max(initial, std::chrono::duration_cast<microseconds>(settings_.maxDelay));
  const unsigned n = std::min(failures_, kMaxDoublings);
  if (failures_ < kMaxDoublings) {
    ++failures_;
  }
  // initial × 2^n, stopping at max before it could overflow.
  microseconds cap = initial;
  for (unsigned i = 0; i < n && cap < max; ++i) {
    cap *= 2;
  }
  cap = std::min(cap, max);
  std::uniform_int_distribution<std::int64_t> jitter(0, cap.count() / 2);
  return cap - microseconds(jitter(random_));
}

}  // namespace iothubd::session
