// SPDX-License-Identifier: MIT
#include "iothubd/hostwatch/clock_watch.hpp"

#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <ctime>
#include <limits>
#include <map>
#include <optional>
#include <utility>

#include <sdbus-c++/sdbus-c++.h>

#include "bus_object.hpp"
#include "iothubd/core/lifetime.hpp"
#include "iothubd/core/log.hpp"
#include "iothubd/core/scheduler.hpp"
#include "iothubd/core/unique_fd.hpp"
#include "iothubd/loop/event_loop.hpp"

namespace iothubd::hostwatch {
namespace {

using core::logf;
using core::LogLevel;

constexpr const char* kTimedated = "org.freedesktop.timedate1";
constexpr const char* kTimedatedPath = "/org/freedesktop/timedate1";

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, in microseconds: it changes (beyond the slewing of a few
/// ppm) only when the clock is set, by the size of the step.
std::int64_t wallOffsetMicros() {
  timespec wall{};
  timespec mono{};
  clock_gettime(CLOCK_REALTIME, &wall);
  clock_gettime(CLOCK_MONOTONIC, &mono);
  const auto micros = [](const timespec& t) {
    return static_cast<std::int64_t>(t.tv_sec) * 1000000 + t.tv_nsec / 1000;
  };
  return micros(wall) - micros(mono);
}

const char* syncName(core::ClockSync sync) {
  switch (sync) {
    case core::ClockSync::Unknown:
      return "unknown";
    case core::ClockSync::Unsynchronised:
      return "not synchronised";
    case core::ClockSync::Synchronised:
      return "synchronised";
  }
  return "unknown";
}

class TimedatedClockWatch final : public ClockWatch {
 public:
  TimedatedClockWatch(sdbus::IConnection& bus, loop::EventLoop& loop, Callbacks callbacks,
                      core::UniqueFd timer)
      : bus_(bus), loop_(loop), callbacks_(std::move(callbacks)), timerFd_(std::move(timer)) {
    poll_ = loop_.createTimer([this] { ask(); });
  }
  ~TimedatedClockWatch() override { lifetime_.end(); }
  TimedatedClockWatch(const TimedatedClockWatch&) = delete;
  TimedatedClockWatch& operator=(const TimedatedClockWatch&) = delete;

  core::Result<void> watchSteps() {
    if (auto armed = armStepTimer(); !armed) {
      return armed;
    }
    auto watch = loop_.watchIo(timerFd_.get(), EPOLLIN, [this](std::uint32_t) { onTimerFd(); });
    if (!watch) {
      return core::fail(watch.error());
    }
    stepWatch_ = std::move(*watch);
    return {};
  }

  void start(std::function<void()> answered) override {
    answered_ = std::move(answered);
    ask();
  }

 private:
  /// A timer at the end of time that the kernel cancels whenever CLOCK_REALTIME is set.
  core::Result<void> armStepTimer() {
    itimerspec spec{};
    spec.it_value.tv_sec = std::numeric_limits<time_t>::max() / 2;
    if (timerfd_settime(timerFd_.get(), TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, &spec,
                        nullptr) != 0) {
      return core::fail(core::Errc::Io, "cannot watch for clock steps (timerfd_settime)", errno);
    }
    offset_ = wallOffsetMicros();
    return {};
  }

  void onTimerFd() noexcept {
    std::uint64_t expirations = 0;
    const ssize_t n = read(timerFd_.get(), &expirations, sizeof expirations);
    if (n >= 0 || errno != ECANCELED) {
      return;  // EAGAIN: nothing happened after all
    }
    const std::int64_t before = offset_;
    if (auto armed = armStepTimer(); !armed) {
      logf(LogLevel::Warning, armed.error().message, ": clock steps go unnoticed from now on");
      stepWatch_.reset();
      return;
    }
    const auto by =
        std::chrono::round<std::chrono::seconds>(std::chrono::microseconds(offset_ - before));
    if (callbacks_.stepped) {
      callbacks_.stepped(by);
    }
    ask();  // time services step the clock when they synchronise it
  }

  void ask() {
    poll_->disarm();
    if (asking_) {
      return;
    }
    try {
      if (!proxy_) {
        proxy_ = sdbus::createProxy(bus_, kTimedated, kTimedatedPath);
      }
      asking_ = true;
      auto alive = lifetime_.watch();
      proxy_->callMethodAsync("GetAll")
          .onInterface(kPropertiesInterface)
          .withArguments(std::string(kTimedated))
          .withTimeout(kAnswerTimeout)
          .uponReplyInvoke([this, alive](const sdbus::Error* error,
                                         const std::map<std::string, sdbus::Variant>& values) {
            if (alive.ended()) {
              return;
            }
            asking_ = false;
            answer(error, values);
          });
    } catch (const sdbus::Error& e) {
      asking_ = false;
      tell(core::ClockSync::Unknown,
           std::string("systemd-timedated cannot be asked (") + e.getMessage() + ")");
    }
  }

  void answer(const sdbus::Error* error,
              const std::map<std::string, sdbus::Variant>& values) noexcept {
    if (error != nullptr) {
      // No timedated (no systemd as PID 1, a minimal image): no time service we know of.
      tell(core::ClockSync::Unknown, "systemd-timedated is not available (" + error->getName() +
                                         "): not waiting for time synchronisation");
      return;
    }
    const auto flag = [&](const char* name) -> std::optional<bool> {
      auto it = values.find(name);
      if (it == values.end() || it->second.peekValueType() != "b") {
        return std::nullopt;
      }
      return it->second.get<bool>();
    };
    const auto ntp = flag("NTP");
    const auto synced = flag("NTPSynchronized");
    if (!synced) {
      tell(core::ClockSync::Unknown,
           "systemd-timedated did not say whether the clock is synchronised");
    } else if (*synced) {
      tell(core::ClockSync::Synchronised, "systemd-timedated: NTPSynchronized=yes");
    } else if (ntp.value_or(false)) {
      tell(core::ClockSync::Unsynchronised,
           "systemd-timedated: a time service is active (NTP=yes) and the kernel says the clock "
           "is not synchronised (NTPSynchronized=no)");
    } else {
      tell(core::ClockSync::Unknown,
           "systemd-timedated: no time service is active (NTP=no), the clock is not synchronised");
    }
  }

  void tell(core::ClockSync sync, const std::string& detail) noexcept {
    const bool changed = !told_ || sync != sync_;
    told_ = true;
    sync_ = sync;
    if (changed) {
      logf(sync == core::ClockSync::Unsynchronised ? LogLevel::Notice : LogLevel::Info,
           "system clock ", syncName(sync), ": ", detail);
      if (callbacks_.sync) {
        callbacks_.sync(sync, detail);
      }
    }
    if (sync == core::ClockSync::Unsynchronised) {
      poll_->armAfter(++polls_ <= kFastPolls ? kPollInterval : kSlowPollInterval);
    } else {
      polls_ = 0;
    }
    // Otherwise nothing to ask until the clock is set; timedated exits when idle. (The proxy
    // stays: this runs inside its reply callback, and it holds no match rules.)
    if (answered_) {
      auto answered = std::move(answered_);
      answered_ = nullptr;
      answered();
    }
  }

  sdbus::IConnection& bus_;
  loop::EventLoop& loop_;
  Callbacks callbacks_;
  core::UniqueFd timerFd_;
  std::unique_ptr<loop::IoWatch> stepWatch_;
  std::unique_ptr<core::Timer> poll_;
  std::unique_ptr<sdbus::IProxy> proxy_;
  std::function<void()> answered_;
  std::int64_t offset_ = 0;
  core::ClockSync sync_ = core::ClockSync::Unknown;
  int polls_ = 0;  ///< questions asked since the clock was last seen unsynchronised first
  bool told_ = false;
  bool asking_ = false;
  core::Lifetime lifetime_;  ///< last: a reply for a destroyed watch is dropped
};

}  // namespace

core::Result<std::unique_ptr<ClockWatch>> ClockWatch::create(sdbus::IConnection& bus,
                                                             loop::EventLoop& loop,
                                                             Callbacks callbacks) {
  core::UniqueFd fd(timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!fd) {
    return core::fail(core::Errc::Io, "cannot watch for clock steps (timerfd_create)", errno);
  }
  auto watch =
      std::make_unique<TimedatedClockWatch>(bus, loop, std::move(callbacks), std::move(fd));
  if (auto r = watch->watchSteps(); !r) {
    return core::fail(r.error());
  }
  return std::unique_ptr<ClockWatch>(std::move(watch));
}

}  // namespace iothubd::hostwatch
