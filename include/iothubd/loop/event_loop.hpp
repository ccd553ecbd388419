// SPDX-License-Identifier: MIT
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "iothubd/core/clock.hpp"
#include "iothubd/core/result.hpp"
#include "iothubd/core/scheduler.hpp"

struct sd_event;
struct sd_event_source;

namespace sdbus {
class IConnection;
}

namespace iothubd::loop {

/// Owns one sd_event_source; unref on destruction. Not copyable.
class EventSource {
 public:
  EventSource() = default;
  explicit EventSource(sd_event_source* source) : source_(source) {}
  EventSource(const EventSource&) = delete;
  EventSource& operator=(const EventSource&) = delete;
  EventSource(EventSource&& other) noexcept : source_(other.source_) { other.source_ = nullptr; }
  EventSource& operator=(EventSource&& other) noexcept;
  ~EventSource();

  [[nodiscard]] sd_event_source* get() const noexcept { return source_; }
  void reset() noexcept;

 private:
  sd_event_source* source_ = nullptr;
};

/// Watches one file descriptor (EPOLLIN/EPOLLOUT bits). Loop thread only.
class IoWatch {
 public:
  virtual ~IoWatch() = default;
  virtual void setEvents(std::uint32_t events) = 0;
};

/// Blocks `signals` for the calling thread (SIG_BLOCK), so that threads started later inherit the
/// mask and the signals reach only the loop's signalfd (handleSignals). main() calls it before any
/// thread exists: a signal delivered to a worker thread would otherwise run its default action.
[[nodiscard]] core::Result<void> blockSignals(const std::vector<int>& signals);

/// The daemon's single event loop (architecture doc 6.1): D-Bus, MQTT, curl, timers, signals and
/// the watchdog are all sources on this sd_event, dispatched on one thread.
class EventLoop final : public core::Scheduler, public core::Clock {
 public:
  [[nodiscard]] static core::Result<std::unique_ptr<EventLoop>> create();
  ~EventLoop() override;
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  /// Runs until exit(); returns the exit code.
  [[nodiscard]] core::Result<int> run();
  /// Runs one iteration, waiting at most `timeout` (tests step the loop with this).
  [[nodiscard]] core::Result<void> runOnce(std::chrono::microseconds timeout);
  void exit(int code) noexcept;

  /// Feeds the service manager's watchdog from the loop if WatchdogSec= is set (sd-event does
  /// it at half the interval), so a stuck loop gets the daemon restarted.
  [[nodiscard]] core::Result<void> enableWatchdog();

  /// Calls `onSignal(signo)` on the loop for each of `signals` (blocked for the process).
  [[nodiscard]] core::Result<void> handleSignals(const std::vector<int>& signals,
                                                 std::function<void(int)> onSignal);

  [[nodiscard]] core::Result<std::unique_ptr<IoWatch>> watchIo(
      int fd, std::uint32_t events, std::function<void(std::uint32_t revents)> onReady);

  /// Runs `work` on a short-lived worker thread (for a call that may block, such as a DNS lookup
  /// inside mosquitto_connect_async) and then `done` on the loop thread. The loop must not touch
  /// what `work` touches until `done` runs. Cancelling the handle skips `done` (`work` still runs
  /// to its end); an exception escaping `work` is logged and `done` runs all the same.
  core::TaskHandle runOffLoop(std::function<void()> work, std::function<void()> done);

  /// Runs `work` on the loop's one long-lived worker thread, in the order submitted, and then
  /// `done` on the loop thread: for steady streams of short blocking jobs (the outbox's grouped
  /// commits, each an fsync), where a thread per job would cost more than the job. Not for work
  /// that may block for long (a DNS lookup would hold up every job behind it): runOffLoop. Jobs
  /// still queued when the loop is destroyed run to the end first; their `done` does not run.
  /// Cancelling the handle skips `done`, not `work`.
  core::TaskHandle runOnWorker(std::function<void()> work, std::function<void()> done);

  /// Dispatches the sdbus-c++ 1.2 connection on this loop through getEventLoopPollData() /
  /// processPendingRequest() (1.2 has no sd-event attach). The connection must outlive the loop's
  /// use of it: call detachBus() before destroying it.
  [[nodiscard]] core::Result<void> attachBus(sdbus::IConnection& connection);
  void detachBus() noexcept;

  // core::Scheduler
  [[nodiscard]] std::unique_ptr<core::Timer> createTimer(std::function<void()> onFire) override;
  core::TaskHandle post(std::function<void()> fn) override;

  // core::Clock
  [[nodiscard]] std::chrono::microseconds monotonic() const override;
  [[nodiscard]] std::uint64_t unixSeconds() const override;

  [[nodiscard]] sd_event* raw() const noexcept { return event_; }

 private:
  struct BusAttachment;
  struct Worker;
  struct SerialWorker;
  explicit EventLoop(sd_event* event);
  void reapWorkers() noexcept;

  sd_event* event_;
  EventSource postSource_;
  std::vector<std::function<void()>> posted_;
  std::vector<EventSource> signalSources_;
  std::function<void(int)> onSignal_;
  std::unique_ptr<BusAttachment> bus_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::unique_ptr<SerialWorker> serialWorker_;  ///< started by the first runOnWorker()
};

}  // namespace iothubd::loop
