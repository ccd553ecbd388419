// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <functional>
#include <memory>

#include "iothubd/core/lifetime.hpp"

namespace iothubd::core {

/// A one-shot timer owned by its creator; destroying it cancels it. Loop thread only.
class Timer {
 public:
  virtual ~Timer() = default;
  /// (Re)arms the timer to fire once after `delay`; re-arming replaces the previous deadline.
  virtual void armAfter(std::chrono::microseconds delay) = 0;
  virtual void disarm() = 0;
  [[nodiscard]] virtual bool armed() const = 0;
};

/// The seam between logic (session, D-Bus API) and the event loop: timers and deferred calls.
/// Production: loop::EventLoop. Unit tests: a manual scheduler that fires timers on demand.
class Scheduler {
 public:
  virtual ~Scheduler() = default;
  /// `onFire` runs on the loop thread; it may destroy the timer that fired.
  [[nodiscard]] virtual std::unique_ptr<Timer> createTimer(std::function<void()> onFire) = 0;
  /// Runs `fn` on the loop thread after the current callback returns (never re-entrantly), which
  /// is how a callback safely destroys the object that called it. The handle cancels it; a
  /// component that posts work touching itself guards `fn` with its core::Lifetime instead.
  virtual TaskHandle post(std::function<void()> fn) = 0;
};

}  // namespace iothubd::core
