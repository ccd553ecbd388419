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

/// "0-2, 5, 7-9": the indices whose flag is `value`, as ranges; "none" if there are none.
std::string indexList(const std::vector<bool>& flags, bool value) {
  std::string out;
  for (std::size_t i = 0; i < flags.size();) {
    if (flags[i] != value) {
      ++i;
      continue;
    }
    std::size_t end = i;
    while (end + 1 < flags.size() && flags[end + 1] == value) {
      ++end;
    }
    if (!out.empty()) {
      out += ", ";
    }
    out += std::to_string(i);
    if (end > i) {
      out += "-" + std::to_string(end);
    }
    i = end + 1;
  }
  return out.empty() ? "none" : out;
}

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
  waitTimer_ = scheduler_.createTimer([this] { onWaitTimer(); });
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
  std::vector<proto::OutgoingMessage> one;
  one.push_back(std::move(message));
  enqueue(std::move(app), std::move(one), false, false, std::move(done), nullptr);
}

void TelemetryPipeline::send(std::string app, proto::OutgoingMessage message, Done done) {
  if (!session_.requestConnection()) {
    done(fail(Errc::NotConnected, "not connected to the hub and auto_connect is off"));
    return;
  }
  std::vector<proto::OutgoingMessage> one;
  one.push_back(std::move(message));
  if (outbox_ == nullptr) {
    // Not durable, but served: the outbox failing must not take telemetry down with it.
    sendDirect(std::move(one), false, std::move(done), nullptr);
    return;
  }
  enqueue(std::move(app), std::move(one), false, true, std::move(done), nullptr);
}

void TelemetryPipeline::queueBatch(std::string app, std::vector<proto::OutgoingMessage> messages,
                                   BatchDone done) {
  if (outbox_ == nullptr) {
    done(fail(Errc::Io, "the outbox is unavailable: " + unavailable_));
    return;
  }
  enqueue(std::move(app), std::move(messages), true, false, nullptr, std::move(done));
}

void TelemetryPipeline::sendBatch(std::string app, std::vector<proto::OutgoingMessage> messages,
                                  BatchDone done) {
  if (!session_.requestConnection()) {
    done(fail(Errc::NotConnected, "not connected to the hub and auto_connect is off"));
    return;
  }
  if (outbox_ == nullptr) {
    sendDirect(std::move(messages), true, nullptr, std::move(done));
    return;
  }
  enqueue(std::move(app), std::move(messages), true, true, nullptr, std::move(done));
}

bool TelemetryPipeline::answeredUpFront(const std::vector<proto::OutgoingMessage>& messages,
                                        BatchDone& many) {
  if (messages.size() > kMaxMessagesPerCall) {
    many(fail(Errc::InvalidArgument, "at most " + std::to_string(kMaxMessagesPerCall) +
                                         " messages per call, not " +
                                         std::to_string(messages.size())));
    return true;
  }
  if (messages.empty()) {
    many(std::vector<std::string>{});
    return true;
  }
  return false;
}

void TelemetryPipeline::enqueue(std::string app, std::vector<proto::OutgoingMessage> messages,
                                bool batch, bool forDelivery, Done single, BatchDone many) {
  if (answeredUpFront(messages, many)) {
    return;
  }
  Waiter w;
  w.ids.reserve(messages.size());
  for (const auto& m : messages) {
    w.ids.push_back(*m.system.messageId);
  }
  w.batch = batch;
  w.forDelivery = forDelivery;
  w.unacked = messages.size();
  if (batch && forDelivery) {
    w.acked.assign(messages.size(), false);
  }
  w.single = std::move(single);
  w.many = std::move(many);
  // Commits are reported on a later loop iteration, never inside enqueue(): the waiter is in
  // place before its messages can be stored, sent or acknowledged.
  const std::uint64_t seq = outbox_->nextSeq();
  auto stored = [this, alive = alive_, seq](const core::Result<void>& committed) {
    if (*alive) {
      onStored(seq, committed);
    }
  };
  auto accepted = batch ? outbox_->enqueueBatch(std::move(app), std::move(messages), stored)
                        : outbox_->enqueue(std::move(app), std::move(messages.front()), stored);
  if (!accepted) {
    finish(w, fail(accepted.error()));
    return;
  }
  waiters_.emplace(accepted->seq, std::move(w));
  noteDropped(accepted->dropped);
}

void TelemetryPipeline::sendDirect(std::vector<proto::OutgoingMessage> messages, bool batch,
                                   Done single, BatchDone many) {
  if (answeredUpFront(messages, many)) {
    return;
  }
  // The session checks each message's size; a batch is checked whole before any goes out.
  for (std::size_t i = 0; i < messages.size(); ++i) {
    if (std::size_t size = proto::hubMessageSize(messages[i]); size > proto::kMaxTelemetryBytes) {
      Waiter w;
      w.batch = batch;
      w.single = std::move(single);
      w.many = std::move(many);
      finish(w,
             fail(Errc::MessageTooLarge,
                  (batch ? "message " + std::to_string(i) + ": " : std::string()) + "message is " +
                      std::to_string(size) + " bytes as IoT Hub counts it; the limit is " +
                      std::to_string(proto::kMaxTelemetryBytes)));
      return;
    }
  }
  auto shared = std::make_shared<Waiter>();
  shared->batch = batch;
  shared->forDelivery = true;
  shared->unacked = messages.size();
  shared->acked.assign(messages.size(), false);
  shared->single = std::move(single);
  shared->many = std::move(many);
  for (const auto& m : messages) {
    shared->ids.push_back(*m.system.messageId);
  }
  for (std::size_t i = 0; i < messages.size(); ++i) {
    session_.sendTelemetry(messages[i], [this, alive = alive_, shared, i](core::Result<void> r) {
      Waiter& w = *shared;
      if (*alive && r) {
        ++directDelivered_;
        deliveredBatch_.push_back(w.ids[i]);
        countersChanged_ = true;
        scheduleFlush();
      }
      if (w.unacked == 0) {
        return;  // answered already (an earlier message failed)
      }
      if (!r) {
        w.unacked = 0;
        core::Error e = r.error();
        if (w.batch) {
          e.message = "message " + std::to_string(i) + " (id " + core::quoted(w.ids[i]) +
                      "): " + e.message + "; acknowledged by the hub: " + indexList(w.acked, true);
        }
        finish(w, fail(std::move(e)));
        return;
      }
      w.acked[i] = true;
      if (--w.unacked == 0) {
        finish(w, {});
      }
    });
  }
}

void TelemetryPipeline::finish(Waiter& waiter, core::Result<void> outcome) {
  if (waiter.batch) {
    auto done = std::move(waiter.many);
    if (done) {
      done(outcome ? core::Result<std::vector<std::string>>(std::move(waiter.ids))
                   : fail(outcome.error()));
    }
    return;
  }
  auto done = std::move(waiter.single);
  if (done) {
    done(outcome ? core::Result<std::string>(std::move(waiter.ids.front()))
                 : fail(outcome.error()));
  }
}

void TelemetryPipeline::complete(Waiters::iterator it, core::Result<void> outcome) {
  Waiter w = std::move(it->second);
  waiters_.erase(it);
  finish(w, std::move(outcome));
}

TelemetryPipeline::Waiters::iterator TelemetryPipeline::findWaiter(std::uint64_t seq) {
  auto it = waiters_.upper_bound(seq);
  if (it == waiters_.begin()) {
    return waiters_.end();
  }
  --it;
  return seq - it->first < it->second.ids.size() ? it : waiters_.end();
}

void TelemetryPipeline::onStored(std::uint64_t seq, const core::Result<void>& committed) {
  countersChanged_ = true;
  scheduleFlush();
  auto it = waiters_.find(seq);
  if (!committed) {
    std::string what = "a message";
    if (it != waiters_.end()) {
      const auto& ids = it->second.ids;
      what = ids.size() == 1 ? "message " + core::quoted(ids.front())
                             : "a batch of " + std::to_string(ids.size()) + " messages";
    }
    logf(LogLevel::Warning, what, " was not stored: ", committed.error().message);
    if (it != waiters_.end()) {
      complete(it, fail(committed.error()));
    }
    return;
  }
  if (it != waiters_.end()) {
    if (!it->second.forDelivery) {
      complete(it, {});
    } else {
      auto deadline = clock_.monotonic() + std::chrono::duration_cast<std::chrono::microseconds>(
                                               session_.options().operationTimeout);
      it->second.deadline = deadline;
      armWaitTimer(deadline);
    }
  }
  armExpiry();
  session_.requestConnection();  // auto_connect: stored messages ask for the connection
  pump();
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
    auto r = session_.publishPrepared(proto::telemetryTopic(o.deviceId, o.moduleId, m.message),
                                      m.message.body,
                                      [this, alive = alive_, generation = outboxGeneration_,
                                       seq = m.seq, id](const core::Result<void>& acked) {
                                        // A PUBACK for a store replaced meanwhile (reload) names a
                                        // seq of that store.
                                        if (*alive && generation == outboxGeneration_) {
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
      ackWaiter(seq);
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

void TelemetryPipeline::ackWaiter(std::uint64_t seq) {
  auto it = findWaiter(seq);
  if (it == waiters_.end() || !it->second.forDelivery) {
    return;
  }
  Waiter& w = it->second;
  if (w.batch) {
    auto index = static_cast<std::size_t>(seq - it->first);
    if (w.acked[index]) {
      return;
    }
    w.acked[index] = true;
  }
  if (--w.unacked == 0) {
    complete(it, {});
  }
}

void TelemetryPipeline::failMessage(std::uint64_t seq, const core::Error& error) {
  auto it = findWaiter(seq);
  if (it == waiters_.end()) {
    return;
  }
  core::Error e = error;
  const Waiter& w = it->second;
  if (w.batch) {
    auto index = static_cast<std::size_t>(seq - it->first);
    e.message = "message " + std::to_string(index) + " of the batch: " + e.message;
    if (!w.acked.empty()) {
      e.message += "; acknowledged by the hub: " + indexList(w.acked, true);
    }
  }
  complete(it, fail(std::move(e)));
}

void TelemetryPipeline::failDeliveryWaiters(const core::Error& why, const char* after) {
  // Collected first: an answer may lead back into the pipeline.
  std::vector<Waiter> failed;
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    if (it->second.forDelivery) {
      failed.push_back(std::move(it->second));
      it = waiters_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& w : failed) {
    core::Error e = why;
    if (w.batch) {
      e.message += "; of this batch the hub acknowledged " + indexList(w.acked, true) +
                   ", the others stay queued and are sent " + after;
    } else {
      e.message +=
          "; message " + core::quoted(w.ids.front()) + " stays queued and is sent " + after;
    }
    finish(w, fail(std::move(e)));
  }
}

void TelemetryPipeline::armWaitTimer(std::chrono::microseconds deadline) {
  if (waitDue_ && *waitDue_ <= deadline && waitTimer_->armed()) {
    return;
  }
  waitDue_ = deadline;
  waitTimer_->armAfter(std::max(deadline - clock_.monotonic(), std::chrono::microseconds(0)));
}

void TelemetryPipeline::onWaitTimer() {
  waitDue_.reset();
  const auto now = clock_.monotonic();
  const auto timeout = session_.options().operationTimeout.count();
  // Rare (only when a call actually times out, or once per operation_timeout under load), so a
  // walk over the waiting calls is fine and keeps the per-message path free of timers.
  std::vector<Waiter> expired;
  std::optional<std::chrono::microseconds> next;
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    const auto& deadline = it->second.deadline;
    if (deadline && *deadline <= now) {
      expired.push_back(std::move(it->second));
      it = waiters_.erase(it);
      continue;
    }
    if (deadline && (!next || *deadline < *next)) {
      next = *deadline;
    }
    ++it;
  }
  if (next) {
    armWaitTimer(*next);
  }
  for (auto& w : expired) {
    std::string text;
    if (w.batch) {
      text = "the hub has not acknowledged messages " + indexList(w.acked, false) + " of " +
             std::to_string(w.ids.size()) + " within " + std::to_string(timeout) +
             " s (acknowledged: " + indexList(w.acked, true) +
             "); they stay queued and will be delivered";
    } else {
      text = "the hub has not acknowledged message " + core::quoted(w.ids.front()) + " within " +
             std::to_string(timeout) + " s; it stays queued and will be delivered";
    }
    finish(w, fail(Errc::Timeout, std::move(text)));
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
  failDeliveryWaiters(why, "once connected");
}

void TelemetryPipeline::noteDropped(const std::vector<outbox::EntryRef>& dropped) {
  for (const auto& entry : dropped) {
    // Rate-limited by the log facade: a full outbox under load drops many.
    logf(LogLevel::Warning, "outbox full: dropped the oldest message ",
         core::quoted(entry.messageId));
    failMessage(entry.seq, core::Error{Errc::QueueFull,
                                       "message " + core::quoted(entry.messageId) +
                                           " was dropped from the full outbox (drop-oldest)"});
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
    failMessage(entry.seq, core::Error{Errc::Timeout, "message " + core::quoted(entry.messageId) +
                                                          " expired before it could be delivered"});
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

std::unique_ptr<outbox::Outbox> TelemetryPipeline::releaseOutbox() {
  released_ = {};
  if (outbox_ == nullptr) {
    return nullptr;
  }
  if (auto r = outbox_->flush(); !r) {
    logf(LogLevel::Error, "cannot store pending messages: ", r.error().message);
  }
  // What is in flight stays stored, unacknowledged, and goes again from whichever store holds it
  // (at least once, with its message id): its PUBACKs would name seqs of a closed store.
  outbox_->requeueInFlight();
  ++outboxGeneration_;
  released_.path = outbox_->options().path;
  released_.left = outbox_->length();
  expiryTimer_->disarm();
  return std::move(outbox_);
}

void TelemetryPipeline::adoptOutbox(std::unique_ptr<outbox::Outbox> next, std::string unavailable) {
  const bool samePlace = next != nullptr && next->options().path == released_.path;
  if (!samePlace && !released_.path.empty()) {
    if (released_.left > 0) {
      logf(LogLevel::Notice, released_.left, " messages stay in the outbox at ", released_.path,
           "; they are delivered when it is configured again");
    }
    // Calls waiting for the delivery of a message that stays behind: they learn it now.
    const std::string after = "once the outbox at " + released_.path + " is configured again";
    failDeliveryWaiters(
        core::Error{Errc::Cancelled, "the outbox moved to " +
                                         (next ? next->options().path : std::string("nowhere")) +
                                         " (configuration reload)"},
        after.c_str());
  }
  released_ = {};
  outbox_ = std::move(next);
  unavailable_ = std::move(unavailable);
  countersChanged_ = true;
  scheduleFlush();
  if (outbox_ != nullptr) {
    armExpiry();
    pump();
  }
}

void TelemetryPipeline::shutdown() {
  if (outbox_ != nullptr) {
    if (auto r = outbox_->flush(); !r) {
      logf(LogLevel::Error, "cannot store pending messages: ", r.error().message);
    }
  }
  failDeliveryWaiters(core::Error{Errc::Cancelled, "iothubd is stopping"}, "after the next start");
  flushBatches();
}

}  // namespace iothubd::delivery
