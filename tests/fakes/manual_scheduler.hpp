// SPDX-License-Identifier: MIT
// Test double for core::Scheduler + core::Clock: time only moves when the test advances it, and
// timers fire in deadline order during advance() (Envoy's simulated time, in miniature).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "iothubd/core/clock.hpp"
#include "iothubd/core/scheduler.hpp"

namespace iothubd::fakes {

class ManualScheduler final : public core::Scheduler, public core::Clock {
 public:
  std::unique_ptr<core::Timer> createTimer(std::function<void()> onFire) override;
  core::TaskHandle post(std::function<void()> fn) override {
    auto [handle, guarded] = core::TaskHandle::wrap(std::move(fn));
    posted_.push_back(std::move(guarded));
    return handle;
  }

  std::chrono::microseconds monotonic() const override { return now_; }
  std::uint64_t unixSeconds() const override {
    return unixBase_ + static_cast<std::uint64_t>(
                           std::chrono::duration_cast<std::chrono::seconds>(now_).count());
  }

  /// Runs posted calls, then moves time forward by `d`, firing due timers in order.
  void advance(std::chrono::microseconds d);
  /// Runs posted calls until none are left.
  void runPosted();
  /// The time until the next armed timer, if any.
  [[nodiscard]] std::optional<std::chrono::microseconds> nextTimerIn() const;

  std::uint64_t unixBase_ = 1700000000;

 private:
  struct TimerState {
    bool armed = false;
    std::chrono::microseconds deadline{0};
    std::function<void()> onFire;
  };
  class ManualTimer;

  std::chrono::microseconds now_{0};
  std::vector<std::function<void()>> posted_;
  std::vector<std::weak_ptr<TimerState>> timers_;
};

}  // namespace iothubd::fakes
