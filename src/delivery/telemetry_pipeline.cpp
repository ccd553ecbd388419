// SPDX-License-Identifier: MIT
#include "iothubd/delivery/telemetry_pipeline.hpp"

#include <algorithm>

#include "iothubd/core/log.hpp"

namespace iothubd::delivery {
namespace {

using core::Errc;
using core::fail;
using core::logf;
using core::LogLevel;

}  // namespace

TelemetryPipeline::TelemetryPipeline(core::Scheduler& scheduler, core::Clock& clock,
                                     session::HubSession& session,
                                     std::unique_ptr<outbox::Outbox> outbox,
                                     std::string unavailable)
    : scheduler_(scheduler),
      clock_(clock),
      session_(session),
      outbox_(std::move(outbox)),
      unavailable_(std::move(unavailable)) {
  flushTimer_ = scheduler_.createTimer([this] { flushBatches(); });
  expiryTimer_ = scheduler_.createTimer([this] { onExpiryTimer(); });
  session_.addObserver(this);
  if (outbox_ != nullptr) {
    // Messages stored by an earlier run may have expired meanwhile, and wait to be sent.
    armExpiry();
  }
}

TelemetryPipeline::~TelemetryPipeline() {
  *alive_ = false;
  session_.removeObserver(this);
}

std::uint64_t TelemetryPipeline::length() const {
  return outbox_ ? outbox_->length() : 0;
}
std::uint64_t TelemetryPipeline::bytes() const {
  return outbox_ ? outbox_->bytes() : 0;
}
std::uint64_t TelemetryPipeline::dropped() const {
  return outbox_ ? outbox_->dropped() : 0;
}
std::uint64_t TelemetryPipeline::delivered() const {
  return (outbox_ ? outbox_->delivered() : 0) + directDelivered_;
}

void TelemetryPipeline::queue(std::string app, proto::OutgoingMessage message, Done done) {
  if (outbox_ == nullptr) {
    done(fail(Errc::Io, "the outbox is unavailable: " + unavailable_));
    return;
  }
  enqueue(std::move(app), std::move(message), false, std::move(done));
}

void TelemetryPipeline::send(std::string app, proto::OutgoingMessage message, Done done) {
  if (!session_.requestConnection()) {
    done(fail(Errc::NotConnected, "not connected to the hub and auto_connect is off"));
    return;
  }
  if (outbox_ == nullptr) {
    // Not durable, but served: the outbox failing must not take telemetry down with it.
    std::string id = *message.system.messageId;
    session_.sendTelemetry(
        message, [this, alive = alive_, id, done = std::move(done)](core::Result<void> r) {
          if (*alive && r) {
            ++directDelivered_;
            deliveredBatch_.push_back(id);
            countersChanged_ = true;
            scheduleFlush();
          }
          done(r ? core::Result<std::string>(id) : fail(r.error()));
        });
    return;
  }
  enqueue(std::move(app), std::move(message), true, std::move(done));
}

void TelemetryPipeline::enqueue(std::string app, proto::OutgoingMessage message,
                                bool waitForDelivery, Done done) {
  std::string id = *message.system.messageId;
  // Filled in below, before the commit can complete (commits are reported on a later loop
  // iteration, never inside enqueue()).
  auto seq = std::make_shared<std::uint64_t>(0);
  auto accepted = outbox_->enqueue(
      std::move(app), std::move(message),
      [this, alive = alive_, seq, id, waitForDelivery, done](core::Result<void> committed) mutable {
        if (!*alive) {
          return;
        }
        countersChanged_ = true;
        scheduleFlush();
        if (!committed) {
          logf(LogLevel::Warning, "message ", core::quoted(id),
               " was not stored: ", committed.error().message);
          done(fail(committed.error()));
          return;
        }
        if (waitForDelivery) {
          auto timeout = session_.options().operationTimeout;
          auto timer = scheduler_.createTimer([this, s = *seq, timeout] {
            auto it = waiters_.find(s);
            if (it == waiters_.end()) {
              return;
            }
            auto w = std::move(it->second);
            waiters_.erase(it);
            // The timer that is firing belongs to the waiter: destroy it after this callback.
            auto keep = std::make_shared<std::unique_ptr<core::Timer>>(std::move(w.timer));
            scheduler_.post([keep] {});
            w.done(fail(Errc::Timeout, "the hub has not acknowledged message " +
                                           core::quoted(w.messageId) + " within " +
                                           std::to_string(timeout.count()) +
                                           " s; it stays queued and will be delivered"));
          });
          timer->armAfter(timeout);
          waiters_.emplace(*seq, Waiter{id, std::move(done), std::move(timer)});
        } else {
          done(id);
        }
        armExpiry();
        session_.requestConnection();  // auto_connect: stored messages ask for the connection
        pump();
      });
  if (!accepted) {
    done(fail(accepted.error()));
    return;
  }
  *seq = accepted->seq;
  noteDropped(accepted->dropped);
}

void TelemetryPipeline::pump() {
  if (outbox_ == nullptr || !session_.readyToPublish()) {
    return;
  }
  auto batch = outbox_->nextToSend();
  if (!batch) {
    logf(LogLevel::Warning, "cannot read the outbox: ", batch.error().message);
    return;
  }
  const auto& o = session_.options();
  for (auto& m : *batch) {
    std::string id = *m.message.system.messageId;
    auto r = session_.publishPrepared(
        proto::telemetryTopic(o.deviceId, o.moduleId, m.message), m.message.body,
        [this, alive = alive_, seq = m.seq, id](const core::Result<void>& acked) {
          if (*alive) {
            onAck(seq, id, acked);
          }
        });
    if (!r) {
      outbox_->requeueInFlight();  // the link went away under us: everything goes again later
      return;
    }
  }
}

void TelemetryPipeline::onAck(std::uint64_t seq, const std::string& messageId,
                              const core::Result<void>& result) {
  if (result) {
    if (outbox_->markDelivered(seq)) {
      deliveredBatch_.push_back(messageId);
      countersChanged_ = true;
      completeWaiter(seq, messageId);
      scheduleFlush();
    }
    pump();
    return;
  }
  switch (result.error().code) {
    case Errc::ConnectionDropped:
    case Errc::NotConnected:
    case Errc::Cancelled:
      return;  // onLinkDown requeues whatever was in flight
    default:
      // No PUBACK within operation_timeout on a live link, or the publish failed: send the
      // in-flight window again (same message ids). Not at once: the next ack, commit or
      // reconnect pumps.
      logf(LogLevel::Warning, "message ", core::quoted(messageId),
           " will be sent again: ", result.error().message);
      outbox_->requeueInFlight();
      return;
  }
}

void TelemetryPipeline::onLinkDown() {
  if (outbox_ != nullptr) {
    outbox_->requeueInFlight();
  }
}

void TelemetryPipeline::onStateChanged(session::ConnectionState state, const core::Error* error) {
  if (state != session::ConnectionState::Disconnected || waiters_.empty()) {
    return;
  }
  // The session gave up (credentials refused, no retry) or an app disconnected: SendMessage
  // callers learn why now instead of at their timeout. Their messages stay stored and go out
  // once a connection works again.
  core::Error why =
      error != nullptr ? *error : core::Error{Errc::Cancelled, "disconnected on request"};
  auto waiters = std::move(waiters_);
  waiters_.clear();
  for (auto& [seq, w] : waiters) {
    w.done(fail(why.code,
                why.message + "; message " + core::quoted(w.messageId) +
                    " stays queued and is sent once connected",
                why.sysErrno));
  }
}

void TelemetryPipeline::completeWaiter(std::uint64_t seq, core::Result<std::string> result) {
  auto it = waiters_.find(seq);
  if (it == waiters_.end()) {
    return;
  }
  auto done = std::move(it->second.done);
  waiters_.erase(it);
  done(std::move(result));
}

void TelemetryPipeline::noteDropped(const std::vector<outbox::EntryRef>& dropped) {
  for (const auto& entry : dropped) {
    // Rate-limited by the log facade: a full outbox under load drops many.
    logf(LogLevel::Warning, "outbox full: dropped the oldest message ",
         core::quoted(entry.messageId));
    completeWaiter(entry.seq,
                   fail(Errc::QueueFull, "message " + core::quoted(entry.messageId) +
                                             " was dropped from the full outbox (drop-oldest)"));
  }
  if (!dropped.empty()) {
    countersChanged_ = true;
    scheduleFlush();
  }
}

void TelemetryPipeline::armExpiry() {
  auto next = outbox_->nextExpiry();
  if (!next) {
    expiryTimer_->disarm();
    return;
  }
  std::uint64_t now = clock_.unixSeconds();
  // Expiry times are whole seconds: at least a second between sweeps.
  auto delay = std::chrono::seconds(*next > now ? *next - now : 0) + std::chrono::seconds(1);
  expiryTimer_->armAfter(delay);
}

void TelemetryPipeline::onExpiryTimer() {
  for (const auto& entry : outbox_->sweepExpired()) {
    expiredBatch_.push_back(entry.messageId);
    completeWaiter(entry.seq, fail(Errc::Timeout, "message " + core::quoted(entry.messageId) +
                                                      " expired before it could be delivered"));
    countersChanged_ = true;
  }
  if (!expiredBatch_.empty()) {
    logf(LogLevel::Notice, expiredBatch_.size(), " queued messages expired before delivery");
    scheduleFlush();
  }
  armExpiry();
}

void TelemetryPipeline::scheduleFlush() {
  if (deliveredBatch_.size() >= kMaxBatch || expiredBatch_.size() >= kMaxBatch) {
    flushBatches();
    return;
  }
  if (!flushTimer_->armed()) {
    flushTimer_->armAfter(kBatchInterval);
  }
}

void TelemetryPipeline::flushBatches() {
  flushTimer_->disarm();
  auto delivered = std::move(deliveredBatch_);
  deliveredBatch_.clear();
  auto expired = std::move(expiredBatch_);
  expiredBatch_.clear();
  bool changed = std::exchange(countersChanged_, false);
  if (listener_ == nullptr) {
    return;
  }
  if (!delivered.empty()) {
    listener_->onDelivered(delivered);
  }
  if (!expired.empty()) {
    listener_->onExpired(expired);
  }
  if (changed) {
    listener_->onCountersChanged();
  }
}

void TelemetryPipeline::shutdown() {
  if (outbox_ != nullptr) {
    if (auto r = outbox_->flush(); !r) {
      logf(LogLevel::Error, "cannot store pending messages: ", r.error().message);
    }
  }
  auto waiters = std::move(waiters_);
  waiters_.clear();
  for (auto& [seq, w] : waiters) {
    w.done(fail(Errc::Cancelled, "iothubd is stopping; message " + core::quoted(w.messageId) +
                                     " stays queued and is sent after the next start"));
  }
  flushBatches();
}

}  // namespace iothubd::delivery
