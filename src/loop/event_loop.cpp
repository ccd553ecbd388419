// SPDX-License-Identifier: MIT
#include "iothubd/loop/event_loop.hpp"

#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <condition_variable>
#include <csignal>
#include <cstring>
#include <ctime>
#include <deque>
#include <mutex>
#include <thread>

#include <sdbus-c++/IConnection.h>
#include <systemd/sd-event.h>

#include "iothubd/core/log.hpp"
#include "iothubd/core/worker_thread.hpp"

namespace iothubd::loop {
namespace {

using core::Errc;
using core::fail;

/// Timers need an explicit accuracy: sd-event's default of 250 ms would make every timeout and
/// retry interval sloppy by that much.
constexpr std::uint64_t kTimerAccuracyUsec = 1000;

core::Error sdError(int negErrno, const char* what) {
  return core::Error{Errc::Io, std::string(what) + ": " + std::strerror(-negErrno), -negErrno};
}

class SdTimer final : public core::Timer {
 public:
  SdTimer(sd_event* event, std::function<void()> onFire)
      : event_(event), onFire_(std::move(onFire)) {}

  void armAfter(std::chrono::microseconds delay) override {
    std::uint64_t now = 0;
    sd_event_now(event_, CLOCK_MONOTONIC, &now);
    std::uint64_t deadline =
        now + static_cast<std::uint64_t>(std::max<std::int64_t>(0, delay.count()));
    if (source_.get() == nullptr) {
      sd_event_source* s = nullptr;
      int r = sd_event_add_time(event_, &s, CLOCK_MONOTONIC, deadline, kTimerAccuracyUsec,
                                &SdTimer::dispatch, this);
      if (r < 0) {
        // Only ENOMEM can fail here with valid arguments; Envoy's rule: crash on the unlikely.
        core::logf(core::LogLevel::Error, "cannot create timer: ", std::strerror(-r));
        std::abort();
      }
      source_ = EventSource(s);
    } else {
      sd_event_source_set_time(source_.get(), deadline);
    }
    sd_event_source_set_enabled(source_.get(), SD_EVENT_ONESHOT);
    armed_ = true;
  }

  void disarm() override {
    if (source_.get() != nullptr) {
      sd_event_source_set_enabled(source_.get(), SD_EVENT_OFF);
    }
    armed_ = false;
  }

  [[nodiscard]] bool armed() const override { return armed_; }

 private:
  static int dispatch(sd_event_source*, std::uint64_t, void* userdata) noexcept {
    auto* self = static_cast<SdTimer*>(userdata);
    self->armed_ = false;
    try {
      // Copy first: the callback may destroy this timer.
      auto fn = self->onFire_;
      fn();
    } catch (const std::exception& e) {
      core::logf(core::LogLevel::Error, "timer callback failed: ", e.what());
    } catch (...) {
      core::logf(core::LogLevel::Error, "timer callback failed");
    }
    return 0;
  }

  sd_event* event_;
  std::function<void()> onFire_;
  EventSource source_;
  bool armed_ = false;
};

class SdIoWatch final : public IoWatch {
 public:
  explicit SdIoWatch(std::function<void(std::uint32_t)> onReady) : onReady_(std::move(onReady)) {}
  void setEvents(std::uint32_t events) override {
    sd_event_source_set_io_events(source_.get(), events);
  }
  static int dispatch(sd_event_source*, int, std::uint32_t revents, void* userdata) noexcept {
    auto* self = static_cast<SdIoWatch*>(userdata);
    try {
      auto fn = self->onReady_;
      fn(revents);
    } catch (const std::exception& e) {
      core::logf(core::LogLevel::Error, "I/O callback failed: ", e.what());
    } catch (...) {
      core::logf(core::LogLevel::Error, "I/O callback failed");
    }
    return 0;
  }
  EventSource source_;

 private:
  std::function<void(std::uint32_t)> onReady_;
};

}  // namespace

EventSource& EventSource::operator=(EventSource&& other) noexcept {
  if (this != &other) {
    reset();
    source_ = other.source_;
    other.source_ = nullptr;
  }
  return *this;
}

EventSource::~EventSource() {
  reset();
}

void EventSource::reset() noexcept {
  if (source_ != nullptr) {
    // disable_unref: an unref alone would leave an I/O source registered with epoll until the
    // last reference goes, and the fd may be closed and reused before then.
    sd_event_source_disable_unref(source_);
    source_ = nullptr;
  }
}

struct EventLoop::BusAttachment {
  sdbus::IConnection* connection = nullptr;
  EventSource io;
  EventSource timer;
  EventLoop* loop = nullptr;

  static int prepare(sd_event_source*, void* userdata) noexcept {
    auto* self = static_cast<BusAttachment*>(userdata);
    try {
      auto pd = self->connection->getEventLoopPollData();
      std::uint32_t events = 0;
      if (pd.events & POLLIN) {
        events |= EPOLLIN;
      }
      if (pd.events & POLLOUT) {
        events |= EPOLLOUT;
      }
      sd_event_source_set_io_events(self->io.get(), events);
      if (pd.timeout_usec == UINT64_MAX) {
        sd_event_source_set_enabled(self->timer.get(), SD_EVENT_OFF);
      } else {
        sd_event_source_set_time(self->timer.get(), pd.timeout_usec);
        sd_event_source_set_enabled(self->timer.get(), SD_EVENT_ONESHOT);
      }
    } catch (const std::exception& e) {
      core::logf(core::LogLevel::Error, "D-Bus connection failed: ", e.what());
      self->loop->exit(EXIT_FAILURE);
    }
    return 0;
  }

  void process() noexcept {
    try {
      while (connection->processPendingRequest()) {
      }
    } catch (const std::exception& e) {
      // The bus went away (dbus-daemon restarted or killed us): nothing sensible remains but to
      // exit and let the service manager restart us.
      core::logf(core::LogLevel::Error, "D-Bus connection failed: ", e.what());
      loop->exit(EXIT_FAILURE);
    }
  }

  static int onIo(sd_event_source*, int, std::uint32_t, void* userdata) noexcept {
    static_cast<BusAttachment*>(userdata)->process();
    return 0;
  }
  static int onTime(sd_event_source*, std::uint64_t, void* userdata) noexcept {
    static_cast<BusAttachment*>(userdata)->process();
    return 0;
  }
};

struct EventLoop::Worker {
  int eventFd = -1;
  EventSource source;
  std::thread thread;
  std::function<void()> done;
  bool finished = false;
  ~Worker() {
    if (thread.joinable()) {
      thread.join();
    }
    source.reset();
    if (eventFd >= 0) {
      ::close(eventFd);
    }
  }
};

core::Result<std::unique_ptr<EventLoop>> EventLoop::create() {
  sd_event* event = nullptr;
  int r = sd_event_new(&event);
  if (r < 0) {
    return fail(sdError(r, "cannot create event loop"));
  }
  std::unique_ptr<EventLoop> loop(new EventLoop(event));
  sd_event_source* s = nullptr;
  r = sd_event_add_defer(
      event, &s,
      [](sd_event_source*, void* userdata) noexcept -> int {
        auto* self = static_cast<EventLoop*>(userdata);
        auto batch = std::move(self->posted_);
        self->posted_.clear();
        for (auto& fn : batch) {
          try {
            fn();
          } catch (const std::exception& e) {
            core::logf(core::LogLevel::Error, "deferred call failed: ", e.what());
          } catch (...) {
            core::logf(core::LogLevel::Error, "deferred call failed");
          }
        }
        if (!self->posted_.empty()) {
          sd_event_source_set_enabled(self->postSource_.get(), SD_EVENT_ONESHOT);
        }
        return 0;
      },
      loop.get());
  if (r < 0) {
    return fail(sdError(r, "cannot create deferred-call source"));
  }
  loop->postSource_ = EventSource(s);
  sd_event_source_set_enabled(s, SD_EVENT_OFF);
  return loop;
}

EventLoop::EventLoop(sd_event* event) : event_(event) {}

/// The long-lived worker of runOnWorker(): a queue of jobs, one thread, and an eventfd through
/// which finished jobs hand their completions back to the loop.
struct EventLoop::SerialWorker {
  using Job = std::pair<std::function<void()>, std::function<void()>>;

  std::mutex mutex;
  std::condition_variable wake;
  std::deque<Job> queue;                        ///< guarded by mutex
  std::vector<std::function<void()>> finished;  ///< guarded by mutex: `done`s for the loop
  bool stopping = false;                        ///< guarded by mutex
  int eventFd = -1;
  EventSource source;
  std::thread thread;

  void run() {
    std::unique_lock lock(mutex);
    for (;;) {
      wake.wait(lock, [this] { return stopping || !queue.empty(); });
      if (queue.empty()) {
        return;  // stopping, and everything submitted has run
      }
      Job job = std::move(queue.front());
      queue.pop_front();
      lock.unlock();
      try {
        job.first();
      } catch (const std::exception& e) {
        // The job's `done` still runs: it finds the job's result unset and reports that.
        core::logf(core::LogLevel::Error, "worker job failed: ", e.what());
      } catch (...) {
        core::logf(core::LogLevel::Error, "worker job failed");
      }
      lock.lock();
      const bool signal = finished.empty();
      finished.push_back(std::move(job.second));
      if (signal) {
        // One wake-up for everything that finishes before the loop gets to it.
        std::uint64_t one = 1;
        ssize_t n = ::write(eventFd, &one, sizeof one);
        (void)n;
      }
    }
  }

  static int onDone(sd_event_source*, int fd, std::uint32_t, void* userdata) noexcept {
    auto* w = static_cast<SerialWorker*>(userdata);
    std::uint64_t count = 0;
    ssize_t n = ::read(fd, &count, sizeof count);
    (void)n;
    std::vector<std::function<void()>> done;
    {
      std::lock_guard lock(w->mutex);
      done.swap(w->finished);
    }
    for (auto& fn : done) {
      try {
        fn();
      } catch (...) {
        core::logf(core::LogLevel::Error, "worker completion failed");
      }
    }
    return 0;
  }

  ~SerialWorker() {
    {
      std::lock_guard lock(mutex);
      stopping = true;
    }
    wake.notify_one();
    if (thread.joinable()) {
      thread.join();
    }
    source.reset();
    if (eventFd >= 0) {
      ::close(eventFd);
    }
  }
};

core::TaskHandle EventLoop::runOnWorker(std::function<void()> work, std::function<void()> done) {
  if (!serialWorker_) {
    auto w = std::make_unique<SerialWorker>();
    w->eventFd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    sd_event_source* s = nullptr;
    if (w->eventFd < 0 ||
        sd_event_add_io(event_, &s, w->eventFd, EPOLLIN, &SerialWorker::onDone, w.get()) < 0) {
      // Only resource exhaustion fails here (Envoy's rule: crash on the unlikely).
      core::logf(core::LogLevel::Error, "cannot start the worker thread");
      std::abort();
    }
    w->source = EventSource(s);
    w->thread = core::startWorkerThread("the worker thread", [raw = w.get()] { raw->run(); });
    serialWorker_ = std::move(w);
  }
  auto [handle, guarded] = core::TaskHandle::wrap(std::move(done));
  {
    std::lock_guard lock(serialWorker_->mutex);
    serialWorker_->queue.emplace_back(std::move(work), std::move(guarded));
  }
  serialWorker_->wake.notify_one();
  return handle;
}

EventLoop::~EventLoop() {
  serialWorker_.reset();  // runs what is queued, then joins
  workers_.clear();       // joins any running worker
  detachBus();
  signalSources_.clear();
  postSource_.reset();
  sd_event_unref(event_);
}

core::Result<int> EventLoop::run() {
  int r = sd_event_loop(event_);
  if (r < 0) {
    return fail(sdError(r, "event loop failed"));
  }
  return r;
}

core::Result<void> EventLoop::runOnce(std::chrono::microseconds timeout) {
  int r = sd_event_run(event_, static_cast<std::uint64_t>(timeout.count()));
  if (r < 0) {
    return fail(sdError(r, "event loop iteration failed"));
  }
  return {};
}

void EventLoop::exit(int code) noexcept {
  sd_event_exit(event_, code);
}

core::Result<void> EventLoop::enableWatchdog() {
  int r = sd_event_set_watchdog(event_, 1);
  if (r < 0) {
    return fail(sdError(r, "cannot enable watchdog"));
  }
  return {};
}

core::Result<void> blockSignals(const std::vector<int>& signals) {
  sigset_t mask;
  sigemptyset(&mask);
  for (int sig : signals) {
    sigaddset(&mask, sig);
  }
  if (int r = pthread_sigmask(SIG_BLOCK, &mask, nullptr); r != 0) {
    return fail(Errc::Io, std::string("cannot block signals: ") + std::strerror(r), r);
  }
  return {};
}

core::Result<void> EventLoop::handleSignals(const std::vector<int>& signals,
                                            std::function<void(int)> onSignal) {
  onSignal_ = std::move(onSignal);
  if (auto r = blockSignals(signals); !r) {
    return r;
  }
  for (int sig : signals) {
    sd_event_source* s = nullptr;
    int r = sd_event_add_signal(
        event_, &s, sig,
        [](sd_event_source*, const signalfd_siginfo* si, void* userdata) noexcept -> int {
          auto* self = static_cast<EventLoop*>(userdata);
          try {
            self->onSignal_(static_cast<int>(si->ssi_signo));
          } catch (...) {
            core::logf(core::LogLevel::Error, "signal handler failed");
          }
          return 0;
        },
        this);
    if (r < 0) {
      return fail(sdError(r, "cannot watch signal"));
    }
    signalSources_.emplace_back(s);
  }
  return {};
}

core::Result<std::unique_ptr<IoWatch>> EventLoop::watchIo(
    int fd, std::uint32_t events, std::function<void(std::uint32_t)> onReady) {
  auto watch = std::make_unique<SdIoWatch>(std::move(onReady));
  sd_event_source* s = nullptr;
  int r = sd_event_add_io(event_, &s, fd, events, &SdIoWatch::dispatch, watch.get());
  if (r < 0) {
    return fail(sdError(r, "cannot watch file descriptor"));
  }
  watch->source_ = EventSource(s);
  return std::unique_ptr<IoWatch>(std::move(watch));
}

core::TaskHandle EventLoop::runOffLoop(std::function<void()> work, std::function<void()> done) {
  auto worker = std::make_unique<Worker>();
  auto [handle, guarded] = core::TaskHandle::wrap(std::move(done));
  worker->eventFd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (worker->eventFd < 0) {
    core::logf(core::LogLevel::Error, "cannot create eventfd: ", std::strerror(errno));
    std::abort();
  }
  worker->done = std::move(guarded);
  Worker* raw = worker.get();
  sd_event_source* s = nullptr;
  int r = sd_event_add_io(
      event_, &s, worker->eventFd, EPOLLIN,
      [](sd_event_source*, int, std::uint32_t, void* userdata) noexcept -> int {
        auto* w = static_cast<Worker*>(userdata);
        w->thread.join();
        sd_event_source_set_enabled(w->source.get(), SD_EVENT_OFF);
        w->finished = true;
        try {
          auto fn = std::move(w->done);
          fn();
        } catch (...) {
          core::logf(core::LogLevel::Error, "off-loop completion failed");
        }
        return 0;
      },
      raw);
  if (r < 0) {
    core::logf(core::LogLevel::Error, "cannot watch eventfd: ", std::strerror(-r));
    std::abort();
  }
  worker->source = EventSource(s);
  int fd = worker->eventFd;
  worker->thread = core::startWorkerThread("off-loop work", [work = std::move(work), fd]() {
    // The loop learns the work ended even if it threw (startWorkerThread logs that).
    struct Signal {
      int fd;
      ~Signal() {
        std::uint64_t one = 1;
        ssize_t n = ::write(fd, &one, sizeof one);
        (void)n;
      }
    } signal{fd};
    work();
  });
  reapWorkers();
  workers_.push_back(std::move(worker));
  return handle;
}

void EventLoop::reapWorkers() noexcept {
  std::erase_if(workers_, [](const std::unique_ptr<Worker>& w) { return w->finished; });
}

core::Result<void> EventLoop::attachBus(sdbus::IConnection& connection) {
  auto bus = std::make_unique<BusAttachment>();
  bus->connection = &connection;
  bus->loop = this;
  auto pd = connection.getEventLoopPollData();
  sd_event_source* io = nullptr;
  int r = sd_event_add_io(event_, &io, pd.fd, EPOLLIN, &BusAttachment::onIo, bus.get());
  if (r < 0) {
    return fail(sdError(r, "cannot watch D-Bus connection"));
  }
  bus->io = EventSource(io);
  r = sd_event_source_set_prepare(io, &BusAttachment::prepare);
  if (r < 0) {
    return fail(sdError(r, "cannot watch D-Bus connection"));
  }
  sd_event_source* timer = nullptr;
  r = sd_event_add_time(event_, &timer, CLOCK_MONOTONIC, UINT64_MAX, kTimerAccuracyUsec,
                        &BusAttachment::onTime, bus.get());
  if (r < 0) {
    return fail(sdError(r, "cannot create D-Bus timer"));
  }
  bus->timer = EventSource(timer);
  sd_event_source_set_enabled(timer, SD_EVENT_OFF);
  bus_ = std::move(bus);
  return {};
}

void EventLoop::detachBus() noexcept {
  bus_.reset();
}

std::unique_ptr<core::Timer> EventLoop::createTimer(std::function<void()> onFire) {
  return std::make_unique<SdTimer>(event_, std::move(onFire));
}

core::TaskHandle EventLoop::post(std::function<void()> fn) {
  auto [handle, guarded] = core::TaskHandle::wrap(std::move(fn));
  posted_.push_back(std::move(guarded));
  sd_event_source_set_enabled(postSource_.get(), SD_EVENT_ONESHOT);
  return handle;
}

std::chrono::microseconds EventLoop::monotonic() const {
  std::uint64_t now = 0;
  sd_event_now(event_, CLOCK_MONOTONIC, &now);
  return std::chrono::microseconds(now);
}

std::uint64_t EventLoop::unixSeconds() const {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec);
}

}  // namespace iothubd::loop
