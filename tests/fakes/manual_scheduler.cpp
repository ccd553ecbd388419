// SPDX-License-Identifier: MIT
#include "manual_scheduler.hpp"

#include <algorithm>

namespace iothubd::fakes {

class ManualScheduler::ManualTimer final : public core::Timer {
 public:
  ManualTimer(ManualScheduler& s, std::shared_ptr<TimerState> state)
      : s_(s), state_(std::move(state)) {}
  void armAfter(std::chrono::microseconds delay) override {
    state_->armed = true;
    state_->deadline = s_.now_ + delay;
  }
  void disarm() override { state_->armed = false; }
  bool armed() const override { return state_->armed; }

 private:
  ManualScheduler& s_;
  std::shared_ptr<TimerState> state_;
};

std::unique_ptr<core::Timer> ManualScheduler::createTimer(std::function<void()> onFire) {
  auto state = std::make_shared<TimerState>();
  state->onFire = std::move(onFire);
  timers_.push_back(state);
  return std::make_unique<ManualTimer>(*this, state);
}

void ManualScheduler::runPosted() {
  while (!posted_.empty()) {
    auto batch = std::move(posted_);
    posted_.clear();
    for (auto& fn : batch) {
      fn();
    }
  }
}

std::optional<std::chrono::microseconds> ManualScheduler::nextTimerIn() const {
  std::optional<std::chrono::microseconds> best;
  for (const auto& w : timers_) {
    if (auto t = w.lock(); t && t->armed && (!best || t->deadline - now_ < *best)) {
      best = t->deadline - now_;
    }
  }
  return best;
}

void ManualScheduler::advance(std::chrono::microseconds d) {
  runPosted();
  auto end = now_ + d;
  for (;;) {
    std::shared_ptr<TimerState> next;
    for (const auto& w : timers_) {
      auto t = w.lock();
      if (t && t->armed && t->deadline <= end && (!next || t->deadline < next->deadline)) {
        next = t;
      }
    }
    if (!next) {
      break;
    }
    now_ = std::max(now_, next->deadline);
    next->armed = false;
    auto fn = next->onFire;
    fn();
    runPosted();
  }
  now_ = end;
  std::erase_if(timers_, [](const std::weak_ptr<TimerState>& w) { return w.expired(); });
}

}  // namespace iothubd::fakes
