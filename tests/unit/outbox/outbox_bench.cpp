// SPDX-License-Identifier: MIT
// Micro-benchmark (not a test): enqueue rate with grouped commits against one commit per message,
// delivery (mark + delete) rate, and how long the loop is held by one commit, on this machine's
// disk ($TMPDIR). `meson test -C build --benchmark outbox` or run outbox-bench [messages].
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "outbox_test_support.hpp"
#include "temp_dir.hpp"

namespace {

using namespace iothubd;
using Clock = std::chrono::steady_clock;
using outbox::testsupport::openOrThrow;
using outbox::testsupport::telemetry;

double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Latency {
  std::vector<double> samples;  ///< microseconds per call
  void print(const char* what) {
    std::sort(samples.begin(), samples.end());
    const auto at = [this](double q) {
      return samples[std::min(samples.size() - 1, static_cast<std::size_t>(q * samples.size()))];
    };
    std::printf("  %-34s p50 %7.1f us   p99 %8.1f us   max %8.1f us\n", what, at(0.5), at(0.99),
                samples.back());
  }
};

/// Enqueues `count` messages; a commit happens whenever `batch` writes are pending (the delay
/// timer never gets a chance, as under a sustained burst). Every callback must have run. With
/// `offLoop` the commits run on a worker thread and the "loop" collects finished ones after
/// every call, as sd-event would dispatch the worker's eventfd.
void enqueueRun(const char* label, std::size_t batch, std::size_t count, bool offLoop) {
  testing::TempDir dir("iothubd-outbox-bench");
  fakes::ManualScheduler sched;
  outbox::OutboxOptions opts;
  opts.path = dir / "outbox.db";
  opts.commitBatch = batch;
  opts.maxMessages = count + 1;
  opts.maxBytes = 1ull << 40;
  outbox::testsupport::ThreadedOffLoop worker;
  auto box = openOrThrow(opts, sched, offLoop ? worker.runner() : nullptr);
  const std::string body(200, 'x');
  std::size_t committed = 0;
  Latency latency;
  const auto start = Clock::now();
  for (std::size_t i = 0; i < count; ++i) {
    const auto t = Clock::now();
    auto accepted = box->enqueue(":1.42", telemetry("bench-" + std::to_string(i), body),
                                 [&committed](core::Result<void> r) { committed += r ? 1 : 0; });
    sched.runPosted();
    worker.collectFinished();
    latency.samples.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t).count());
    if (!accepted) {
      std::fprintf(stderr, "enqueue failed: %s\n", accepted.error().message.c_str());
      std::exit(1);
    }
  }
  worker.finishAll();
  (void)box->flush();
  const double elapsed = secondsSince(start);
  std::printf("enqueue, %s: %zu messages in %.3f s = %.0f msg/s (%llu transactions, %zu acked)\n",
              label, count, elapsed, static_cast<double>(count) / elapsed,
              static_cast<unsigned long long>(box->transactions()), committed);
  latency.print("loop held per enqueue():");

  if (batch > 1) {
    // Start-up with a full outbox: integrity check and index load hold the loop this long.
    box.reset();
    const auto reopenStart = Clock::now();
    box = openOrThrow(opts, sched, offLoop ? worker.runner() : nullptr);
    std::printf("  reopen with %llu stored (quick_check + index): %.1f ms\n",
                static_cast<unsigned long long>(box->length()), secondsSince(reopenStart) * 1e3);

    // Drain: hand out max_inflight at a time and acknowledge each, as PUBACKs would.
    Latency markLatency;
    std::size_t delivered = 0;
    const auto drainStart = Clock::now();
    for (;;) {
      auto next = box->nextToSend();
      if (!next || next->empty()) {
        break;
      }
      for (const auto& m : *next) {
        const auto t = Clock::now();
        delivered += box->markDelivered(m.seq) ? 1 : 0;
        sched.runPosted();
        worker.collectFinished();
        markLatency.samples.push_back(
            std::chrono::duration<double, std::micro>(Clock::now() - t).count());
      }
    }
    worker.finishAll();
    (void)box->flush();
    const double drain = secondsSince(drainStart);
    std::printf("drain (nextToSend + markDelivered + grouped delete): %zu in %.3f s = %.0f msg/s\n",
                delivered, drain, static_cast<double>(delivered) / drain);
    markLatency.print("loop held per markDelivered():");
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::size_t count = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 100000;
  std::printf("outbox benchmark, 200-byte bodies, synchronous=FULL, WAL, dir %s\n",
              std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp");
  enqueueRun("grouped (batch 256), commit on the loop", 256, count, false);
  enqueueRun("grouped (batch 256), commit on a worker", 256, count, true);
  enqueueRun("grouped (batch 64), commit on the loop", 64, count, false);
  enqueueRun("grouped (batch 64), commit on a worker", 64, count, true);
  enqueueRun("one commit per message, on the loop", 1, std::min<std::size_t>(count, 3000), false);
  return 0;
}
