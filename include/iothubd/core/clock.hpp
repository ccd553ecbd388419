// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <cstdint>

namespace iothubd::core {

/// Time as the daemon sees it. A seam so that token renewal and timeouts are testable with a
/// manual clock: monotonic time drives timers, wall time only goes into SAS `se` fields.
class Clock {
 public:
  virtual ~Clock() = default;
  /// Monotonic time since an arbitrary origin.
  [[nodiscard]] virtual std::chrono::microseconds monotonic() const = 0;
  /// Wall-clock Unix time in seconds (UTC).
  [[nodiscard]] virtual std::uint64_t unixSeconds() const = 0;
};

/// The real clocks (CLOCK_MONOTONIC and CLOCK_REALTIME).
class SystemClock final : public Clock {
 public:
  [[nodiscard]] std::chrono::microseconds monotonic() const override;
  [[nodiscard]] std::uint64_t unixSeconds() const override;
};

}  // namespace iothubd::core
