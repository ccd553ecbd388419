// SPDX-License-Identifier: MIT
// What the host says about its wall clock: whether a time service has synchronised it (asked of
// systemd-timedated on the system bus) and when it is set (a CLOCK_REALTIME timerfd cancelled on
// set). The daemon passes both to the session (HubSession::setClockSync, clockStepped).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "iothubd/core/clock.hpp"
#include "iothubd/core/result.hpp"

namespace sdbus {
class IConnection;
}

namespace iothubd::loop {
class EventLoop;
}

namespace iothubd::hostwatch {

/// Asks systemd-timedated (org.freedesktop.timedate1, bus-activated; it exits when idle) for
/// `NTP` (a time service is active: timesyncd, or the chrony/ntpd units it knows from
/// ntp-units.d) and `NTPSynchronized` (the kernel's adjtimex status, the same for every time
/// service). iothubd's sandbox (ProtectClock=) forbids adjtimex itself, and timedated is the
/// host's own answer to the question. Without timedated on the bus there is no answer: Unknown,
/// and the session connects as it would without a time service.
///
/// Asked at start, again every few seconds while a service runs but has not synchronised the
/// clock, and after every clock step. Loop thread only.
class ClockWatch {
 public:
  struct Callbacks {
    /// The answer changed (the first answer is always told); `detail` says who said what.
    std::function<void(core::ClockSync sync, const std::string& detail)> sync;
    /// The wall clock was set: by how much it jumped (negative: backwards).
    std::function<void(std::chrono::seconds by)> stepped;
  };

  /// How long the first question may take (timedated is started by bus activation).
  static constexpr std::chrono::seconds kAnswerTimeout{5};
  /// How often timedated is asked again while the clock is not synchronised yet: every 2 s for
  /// the first 2 minutes (the session's default wait is 90 s), then every 30 s, so that a time
  /// service that cannot reach its servers does not keep timedated busy. A clock step (how most
  /// services first synchronise) is noticed at once whatever the interval.
  static constexpr std::chrono::seconds kPollInterval{2};
  static constexpr std::chrono::seconds kSlowPollInterval{30};
  static constexpr int kFastPolls = 60;

  /// Errors: the timerfd cannot be created or watched.
  [[nodiscard]] static core::Result<std::unique_ptr<ClockWatch>> create(sdbus::IConnection& bus,
                                                                        loop::EventLoop& loop,
                                                                        Callbacks callbacks);
  virtual ~ClockWatch() = default;

  /// Asks timedated now; `answered` runs once, after the first answer (or its failure) was told
  /// through Callbacks::sync, so that the first connection attempt knows it.
  virtual void start(std::function<void()> answered) = 0;
};

}  // namespace iothubd::hostwatch
