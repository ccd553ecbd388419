// SPDX-License-Identifier: MIT
// Callbacks that outlive their owner: the one way a component makes sure that work it handed to
// the loop, to a worker thread or to another component never calls back into it once it is gone.
#pragma once

#include <functional>
#include <memory>
#include <type_traits>
#include <utility>

namespace iothubd::core {

/// The handle of one piece of work posted to the loop or run off the loop (Scheduler::post,
/// EventLoop::runOffLoop, EventLoop::runOnWorker). cancel() makes sure its loop-side callback
/// never runs; work already running on a worker thread still runs to its end. Copies share the
/// work. Destroying a handle does not cancel (fire-and-forget posts simply drop it). Loop thread
/// only.
class TaskHandle {
 public:
  TaskHandle() = default;

  /// The callback will not run (no effect once it ran). Releases nothing the callback holds:
  /// that happens when the loop drops the callback.
  void cancel() noexcept {
    if (state_) {
      state_->cancelled = true;
    }
  }
  /// True until the callback ran or was cancelled.
  [[nodiscard]] bool pending() const noexcept {
    return state_ && !state_->cancelled && !state_->ran;
  }

  /// For schedulers: a new handle and the callback that honours it (runs `fn` once unless
  /// cancelled, then marks the handle done).
  template <class Fn>
  [[nodiscard]] static std::pair<TaskHandle, std::function<void()>> wrap(Fn fn) {
    TaskHandle handle;
    handle.state_ = std::make_shared<State>();
    return {handle, [state = handle.state_, fn = std::move(fn)]() mutable {
              if (state->cancelled || state->ran) {
                return;
              }
              state->ran = true;
              fn();
            }};
  }

 private:
  struct State {
    bool cancelled = false;
    bool ran = false;
  };
  std::shared_ptr<State> state_;
};

/// The owner side: a component keeps one Lifetime as its last data member (destroyed first) and
/// wraps every callback it hands out with guard(). Once the lifetime has ended, at the latest when
/// the owner is destroyed, guarded callbacks do nothing, whoever still holds them. Replaces the
/// `std::shared_ptr<bool> alive_` each class used to keep. Loop thread only: guarded callbacks are
/// checked and run on the loop; off-loop `work` must never touch its owner.
class Lifetime {
 public:
  /// Tells whether a lifetime has ended, for code that calls out and must know afterwards
  /// whether the callee destroyed the owner (a completion that deletes the client calling it).
  class Watch {
   public:
    [[nodiscard]] bool ended() const noexcept { return !*state_; }

   private:
    friend class Lifetime;
    explicit Watch(std::shared_ptr<const bool> state) : state_(std::move(state)) {}
    std::shared_ptr<const bool> state_;
  };

  Lifetime() : state_(std::make_shared<bool>(true)) {}
  ~Lifetime() { end(); }
  Lifetime(const Lifetime&) = delete;
  Lifetime& operator=(const Lifetime&) = delete;

  /// Ends the lifetime early (first thing in a destructor that runs code before its members go,
  /// e.g. one that waits for a worker).
  void end() noexcept { *state_ = false; }
  [[nodiscard]] bool ended() const noexcept { return !*state_; }
  [[nodiscard]] Watch watch() const { return Watch(state_); }

  /// `fn`, made inert once this lifetime ended. The result takes the same arguments as `fn`;
  /// `fn` must return void (there is nothing to return once the owner is gone).
  template <class Fn>
  [[nodiscard]] auto guard(Fn fn) const {
    return [alive = state_, fn = std::move(fn)](auto&&... args) mutable {
      static_assert(std::is_void_v<decltype(fn(std::forward<decltype(args)>(args)...))>,
                    "a guarded callback returns nothing");
      if (*alive) {
        fn(std::forward<decltype(args)>(args)...);
      }
    };
  }

 private:
  std::shared_ptr<bool> state_;
};

}  // namespace iothubd::core
