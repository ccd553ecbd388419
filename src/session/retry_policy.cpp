// SPDX-License-Identifier: MIT
#include "iothubd/session/retry_policy.hpp"

namespace iothubd::session {

std::optional<std::chrono::microseconds> RetryPolicy::next(const core::Error& error,
                                                           bool linkWasUp) {
  if (!settings_.retry || error.code == core::Errc::Unauthorized) {
    return std::nullopt;
  }
  if (linkWasUp) {
    return kFirstRetryAfterDrop;
  }
  auto base = std::chrono::duration_cast<std::chrono::microseconds>(settings_.interval);
  std::uniform_int_distribution<std::int64_t> jitter(0, base.count() / 5);
  return base + std::chrono::microseconds(jitter(random_));
}

}  // namespace iothubd::session
