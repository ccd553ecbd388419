// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <cstdint>

namespace iothubd::core {

/// What the host says about its wall clock (hostwatch::ClockWatch asks systemd-timedated, which
/// reads the kernel's adjtimex status for timesyncd, chrony and ntpd alike).
enum class ClockSync : std::uint8_t {
  Unknown,         ///< no time service is known to run (or nobody asked): connect as usual
  Unsynchronised,  ///< a time service runs and the kernel says the clock is not synchronised yet
  Synchronised,    ///< the kernel says the clock is synchronised
};

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
