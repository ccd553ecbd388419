// SPDX-License-Identifier: MIT
// Shared by the outbox tests and benchmark: a fixture-free way to open an outbox in a temp dir.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "iothubd/outbox/outbox.hpp"
#include "manual_scheduler.hpp"

namespace iothubd::outbox::testsupport {

/// A telemetry message with id `id`, before its check.
inline proto::OutgoingMessage outgoing(const std::string& id, std::string body = "{\"t\":21.5}") {
  proto::OutgoingMessage m;
  m.body = std::move(body);
  m.system.messageId = id;
  return m;
}

/// `message` as it reaches the outbox: checked and encoded where it entered (or throws).
inline proto::CheckedMessage checked(proto::OutgoingMessage message) {
  auto c = proto::checkOutgoingMessage(std::move(message));
  if (!c) {
    throw std::runtime_error(c.error().message);
  }
  return std::move(*c);
}

/// A checked telemetry message with id `id`.
inline proto::CheckedMessage telemetry(const std::string& id, std::string body = "{\"t\":21.5}") {
  return checked(outgoing(id, std::move(body)));
}

/// Stands in for EventLoop::runOffLoop: `work` runs on a real thread at once; `done` runs when
/// the test (the "loop") collects it, so a test decides what the loop does meanwhile.
class ThreadedOffLoop {
 public:
  ThreadedOffLoop() = default;
  ThreadedOffLoop(const ThreadedOffLoop&) = delete;
  ThreadedOffLoop& operator=(const ThreadedOffLoop&) = delete;
  ~ThreadedOffLoop() {
    for (auto& job : jobs_) {
      job->thread.join();
    }
  }

  [[nodiscard]] Outbox::OffLoopRunner runner() {
    return [this](std::function<void()> work, std::function<void()> done) {
      auto job = std::make_unique<Job>();
      job->done = std::move(done);
      Job* raw = job.get();
      job->thread = std::thread([raw, work = std::move(work)] {
        work();
        raw->finished = true;
      });
      jobs_.push_back(std::move(job));
    };
  }
  [[nodiscard]] std::size_t running() const { return jobs_.size(); }
  /// Runs `done` of every worker that has finished, without waiting (a loop iteration).
  void collectFinished() { collect(false); }
  /// Waits for the workers running now and runs their `done` (which may start new ones).
  void finishRunning() { collect(true); }
  /// Waits for every worker, including those started by a `done`, and runs their `done`.
  void finishAll() {
    while (!jobs_.empty()) {
      collect(true);
    }
  }

 private:
  struct Job {
    std::thread thread;
    std::function<void()> done;
    std::atomic<bool> finished{false};
  };
  void collect(bool wait) {
    std::vector<std::unique_ptr<Job>> ready;
    for (auto it = jobs_.begin(); it != jobs_.end();) {
      if (wait || (*it)->finished) {
        ready.push_back(std::move(*it));
        it = jobs_.erase(it);
      } else {
        ++it;
      }
    }
    for (auto& job : ready) {
      job->thread.join();
      job->done();
    }
  }
  std::vector<std::unique_ptr<Job>> jobs_;
};

/// Opens or throws (the benchmark and forked children have no gtest assertions to report with).
inline std::unique_ptr<Outbox> openOrThrow(const OutboxOptions& options,
                                           fakes::ManualScheduler& scheduler,
                                           Outbox::OffLoopRunner offLoop = {}) {
  auto opened = Outbox::open(options, scheduler, scheduler, std::move(offLoop));
  if (!opened) {
    throw std::runtime_error(opened.error().message);
  }
  return std::move(opened->outbox);
}

}  // namespace iothubd::outbox::testsupport
