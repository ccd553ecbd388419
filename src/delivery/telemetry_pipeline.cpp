// SPDX-License-Identifier: MIT
#include "iothubd/delivery/telemetry_pipeline.hpp"

#include <malloc.h>

#include <algorithm>

#include "iothubd/core/log.hpp"

namespace iothubd::delivery {
namespace {

using core::Errc;
using core::fail;
using core::logf;
using core::LogLevel;

/// A drained backlog at least this long gives its memory back to the system (malloc_trim): the
/// outbox's index and read-ahead of 100 000 messages are several MB that the allocator would
/// otherwise keep for good.
constexpr std::uint64_t kTrimAfterBacklog = 10000;

/// Where a Send message stands.
enum class Outcome : std::uint8_t { Pending, Acked, Failed };

/// "0-2, 5, 7-9": the indices whose outcome is `value`, as ranges; "none" if there are none.
std::string indexList(const std::vector<Outcome>& outcomes, Outcome value) {
  std::string out;
  for (std::size_t i = 0; i < outcomes.size();) {
    if (outcomes[i] != value) {
      ++i;
      continue;
    }
    std::size_t end = i;
    while (end + 1 < outcomes.size() && outcomes[end + 1] == value) {
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

/// One SendMessage(s) call: its messages stay here (not stored anywhere) until each is settled,
/// so that one whose link went can be published again. SendMessage, the common case, holds its
/// message without a vector.
struct TelemetryPipeline::SendCall {
  std::string app;
  std::optional<proto::CheckedMessage> one;  ///< SendMessage
  std::vector<proto::CheckedMessage> many;   ///< SendMessages
  std::vector<Outcome> outcomes;             ///< SendMessages: each message's
  std::size_t count = 0;
  std::size_t unsettled = 0;
  /// The lowest index that failed, and why.
  std::optional<std::pair<std::size_t, core::Error>> failure;
  std::chrono::microseconds deadline{};
  Reply reply;
  bool answered = false;

  [[nodiscard]] const proto::CheckedMessage& message(std::size_t index) const {
    return one ? *one : many[index];
  }
};

void TelemetryPipeline::Reply::succeed(std::vector<std::string> ids) {
  if (!batch) {
    succeed(std::move(ids.front()));
  } else if (auto done = std::move(many)) {
    done(std::move(ids));
  }
}

void TelemetryPipeline::Reply::succeed(std::string id) {
  if (auto done = std::move(single)) {
    done(std::move(id));
  }
}

void TelemetryPipeline::Reply::fail(core::Error error) {
  if (batch) {
    if (auto done = std::move(many)) {
      done(core::fail(std::move(error)));
    }
  } else if (auto done = std::move(single)) {
    done(core::fail(std::move(error)));
  }
}

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
  sendTimer_ = scheduler_.createTimer([this] { onSendTimer(); });
  session_.addObserver(this);
  if (outbox_ != nullptr) {
    // Messages stored by an earlier run may have expired meanwhile, and wait to be sent.
    armExpiry();
    backlogPeak_ = outbox_->length();
  }
}

TelemetryPipeline::~TelemetryPipeline() {
  lifetime_.end();
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
  return (outbox_ ? outbox_->delivered() : 0) + sentDelivered_;
}

bool TelemetryPipeline::answeredUpFront(std::size_t count, Reply& reply) {
  if (count > kMaxMessagesPerCall) {
    reply.fail({Errc::InvalidArgument, "at most " + std::to_string(kMaxMessagesPerCall) +
                                           " messages per call, not " + std::to_string(count)});
    return true;
  }
  if (count == 0) {
    reply.succeed(std::vector<std::string>{});
    return true;
  }
  return false;
}

// --- Queue: durable, through the outbox -------------------------------------------------------

void TelemetryPipeline::queue(std::string app, proto::CheckedMessage message, Done done) {
  std::vector<proto::CheckedMessage> one;
  one.push_back(std::move(message));
  enqueue(std::move(app), std::move(one), Reply{false, std::move(done), nullptr});
}

void TelemetryPipeline::queueBatch(std::string app, std::vector<proto::CheckedMessage> messages,
                                   BatchDone done) {
  enqueue(std::move(app), std::move(messages), Reply{true, nullptr, std::move(done)});
}

void TelemetryPipeline::enqueue(std::string app, std::vector<proto::CheckedMessage> messages,
                                Reply reply) {
  if (outbox_ == nullptr) {
    reply.fail({Errc::Io, "the outbox is unavailable: " + unavailable_});
    return;
  }
  if (answeredUpFront(messages.size(), reply)) {
    return;
  }
  QueueCall call;
  call.ids.reserve(messages.size());
  for (const auto& m : messages) {
    call.ids.push_back(m.messageId());
  }
  call.reply = std::move(reply);
  // Commits are reported on a later loop iteration, never inside enqueue(): the call is in
  // place before its messages can be stored.
  const std::uint64_t seq = outbox_->nextSeq();
  auto stored = lifetime_.guard(
      [this, seq](const core::Result<void>& committed) { onStored(seq, committed); });
  auto accepted = call.reply.batch
                      ? outbox_->enqueueBatch(std::move(app), std::move(messages), stored)
                      : outbox_->enqueue(std::move(app), std::move(messages.front()), stored);
  if (!accepted) {
    call.reply.fail(accepted.error());
    return;
  }
  queueCalls_.emplace(accepted->seq, std::move(call));
  backlogPeak_ = std::max(backlogPeak_, outbox_->length());
  noteDropped(accepted->dropped);
}

void TelemetryPipeline::onStored(std::uint64_t seq, const core::Result<void>& committed) {
  countersChanged_ = true;
  scheduleFlush();
  auto it = queueCalls_.find(seq);
  if (it != queueCalls_.end()) {
    QueueCall call = std::move(it->second);
    queueCalls_.erase(it);
    if (!committed) {
      const auto& ids = call.ids;
      logf(LogLevel::Warning,
           ids.size() == 1 ? "message " + core::quoted(ids.front())
                           : "a batch of " + std::to_string(ids.size()) + " messages",
           " was not stored: ", committed.error().message);
      call.reply.fail(committed.error());
    } else {
      call.reply.succeed(std::move(call.ids));
    }
  }
  if (!committed) {
    return;
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
  const std::string& prefix = topicPrefix();
  for (auto& m : *batch) {
    auto r = session_.publishPrepared(
        m.message.topic(prefix), m.message.body(),
        lifetime_.guard([this, generation = outboxGeneration_, seq = m.seq,
                         notice = Notice{std::move(m.app), m.message.messageId()}](
                            const core::Result<void>& acked) {
          // A PUBACK for a store replaced meanwhile (reload) names a seq of that store.
          if (generation == outboxGeneration_) {
            onAck(seq, notice, acked);
          }
        }));
    if (!r) {
      outbox_->requeueInFlight();  // the link went away under us: everything goes again later
      return;
    }
  }
}

void TelemetryPipeline::onAck(std::uint64_t seq, const Notice& notice,
                              const core::Result<void>& result) {
  if (result) {
    if (outbox_->markDelivered(seq)) {
      deliveredBatch_.push_back(notice);
      countersChanged_ = true;
      scheduleFlush();
    }
    pump();
    if (outbox_->length() == 0 && backlogPeak_ >= kTrimAfterBacklog) {
      backlogPeak_ = 0;
      ::malloc_trim(0);
    }
    return;
  }
  switch (result.error().code) {
    case Errc::ConnectionDropped:
    case Errc::NotConnected:
    case Errc::Cancelled:
      return;  // onLinkDown requeues whatever was in flight
    default:
      // The transport refused the publish (it was not sent): send the in-flight window again
      // (same message ids). Not at once: the next ack, commit or reconnect pumps. A publish that
      // was sent waits for its PUBACK as long as its link lives (publishPrepared): it is never
      // sent twice on one link, even when a throttling hub holds PUBACKs back (issue 14).
      logf(LogLevel::Warning, "message ", core::quoted(notice.messageId),
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

// --- Send: in memory, answered on the PUBACK ----------------------------------------------------

void TelemetryPipeline::send(std::string app, proto::CheckedMessage message, Done done) {
  auto call = std::make_shared<SendCall>();
  call->app = std::move(app);
  call->one.emplace(std::move(message));
  call->count = 1;
  call->reply = Reply{false, std::move(done), nullptr};
  startSend(call);
}

void TelemetryPipeline::sendBatch(std::string app, std::vector<proto::CheckedMessage> messages,
                                  BatchDone done) {
  auto call = std::make_shared<SendCall>();
  call->app = std::move(app);
  call->count = messages.size();
  call->many = std::move(messages);
  call->outcomes.assign(call->count, Outcome::Pending);
  call->reply = Reply{true, nullptr, std::move(done)};
  startSend(call);
}

void TelemetryPipeline::startSend(const std::shared_ptr<SendCall>& call) {
  if (!session_.requestConnection()) {
    call->reply.fail({Errc::NotConnected, "not connected to the hub and auto_connect is off"});
    return;
  }
  if (answeredUpFront(call->count, call->reply)) {
    return;
  }
  call->unsettled = call->count;
  call->deadline = clock_.monotonic() + std::chrono::duration_cast<std::chrono::microseconds>(
                                            session_.options().operationTimeout);
  sendCalls_.push_back(call);
  if (!sendTimer_->armed()) {
    armSendTimer();
  }
  const std::uint64_t now = clock_.unixSeconds();
  // A completion may run inside publish() (the session refuses at once): `call` keeps the call
  // alive, and it is answered only once every message is settled.
  for (std::size_t i = 0; i < call->count && !call->answered; ++i) {
    const auto& m = call->message(i);
    if (const auto expiry = m.expiresAt(); expiry && *expiry <= now) {
      // As the outbox does with a queued message: never sent once its own expiry has passed.
      const core::Error why{Errc::Timeout, "message " + core::quoted(m.messageId()) +
                                               " expired before it could be delivered"};
      settle(*call, i, &why);
      continue;
    }
    publish(call, i);
  }
}

void TelemetryPipeline::publish(const std::shared_ptr<SendCall>& call, std::size_t index) {
  const auto& m = call->message(index);
  topic_.assign(topicPrefix()).append(m.propertyBag());
  session_.publishTelemetry(topic_, m.body(),
                            lifetime_.guard([this, call, index](const core::Result<void>& r) {
                              onPublished(call, index, r);
                            }));
}

void TelemetryPipeline::onPublished(const std::shared_ptr<SendCall>& call, std::size_t index,
                                    const core::Result<void>& result) {
  if (call->answered) {
    return;  // timed out or cancelled already
  }
  if (result) {
    ++sentDelivered_;
    countersChanged_ = true;
    scheduleFlush();
    settle(*call, index, nullptr);
    return;
  }
  if (result.error().code == Errc::ConnectionDropped) {
    // The link went before the PUBACK: the session is still inside its drop handling, so the
    // message goes again (same id) from the next loop iteration, held by the session until the
    // link is back. The call's deadline still bounds it.
    dropped_.emplace_back(call, index);
    if (!resendPosted_) {
      resendPosted_ = true;
      (void)scheduler_.post(lifetime_.guard([this] { resendDropped(); }));
    }
    return;
  }
  settle(*call, index, &result.error());
}

void TelemetryPipeline::resendDropped() {
  resendPosted_ = false;
  auto dropped = std::move(dropped_);
  dropped_.clear();
  for (auto& [call, index] : dropped) {
    if (!call->answered) {
      publish(call, index);
    }
  }
}

void TelemetryPipeline::settle(SendCall& call, std::size_t index, const core::Error* error) {
  if (!call.outcomes.empty()) {
    call.outcomes[index] = error == nullptr ? Outcome::Acked : Outcome::Failed;
  }
  if (error != nullptr && (!call.failure || index < call.failure->first)) {
    call.failure.emplace(index, *error);
  }
  if (--call.unsettled == 0) {
    answer(call, std::nullopt);
  }
}

void TelemetryPipeline::answer(SendCall& call, std::optional<core::Error> why) {
  call.answered = true;
  if (!why && call.failure) {
    why = std::move(call.failure->second);
    if (call.reply.batch) {
      why->message = "message " + std::to_string(call.failure->first) +
                     " of the batch: " + why->message +
                     "; acknowledged by the hub: " + indexList(call.outcomes, Outcome::Acked);
    }
  }
  Reply reply = std::move(call.reply);
  std::optional<proto::CheckedMessage> one = std::move(call.one);
  std::vector<proto::CheckedMessage> many = std::move(call.many);  // nothing to send again
  call.one.reset();
  call.many.clear();
  // Answered calls leave from the front; the deadline timer skips any left behind.
  while (!sendCalls_.empty() && sendCalls_.front()->answered) {
    sendCalls_.pop_front();
  }
  if (why) {
    reply.fail(std::move(*why));
  } else if (one) {
    reply.succeed(one->messageId());
  } else {
    std::vector<std::string> ids;
    ids.reserve(many.size());
    for (const auto& m : many) {
      ids.push_back(m.messageId());
    }
    reply.succeed(std::move(ids));
  }
}

void TelemetryPipeline::armSendTimer() {
  while (!sendCalls_.empty() && sendCalls_.front()->answered) {
    sendCalls_.pop_front();
  }
  if (sendCalls_.empty()) {
    sendTimer_->disarm();
    return;
  }
  sendTimer_->armAfter(
      std::max(sendCalls_.front()->deadline - clock_.monotonic(), std::chrono::microseconds(0)));
}

void TelemetryPipeline::onSendTimer() {
  const auto now = clock_.monotonic();
  const auto timeout = session_.options().operationTimeout.count();
  // Collected first: an answer may lead back into the pipeline.
  std::vector<std::shared_ptr<SendCall>> late;
  for (const auto& call : sendCalls_) {
    if (call->deadline > now) {
      break;
    }
    if (!call->answered) {
      late.push_back(call);
    }
  }
  for (const auto& call : late) {
    if (call->answered) {
      continue;
    }
    std::string text;
    if (call->reply.batch) {
      text = "the hub has not acknowledged messages " +
             indexList(call->outcomes, Outcome::Pending) + " of " + std::to_string(call->count) +
             " within " + std::to_string(timeout) +
             " s (acknowledged: " + indexList(call->outcomes, Outcome::Acked) +
             "); they may still reach it";
    } else {
      text = "the hub has not acknowledged message " + core::quoted(call->one->messageId()) +
             " within " + std::to_string(timeout) + " s; it may still reach it";
    }
    answer(*call, core::Error{Errc::Timeout, std::move(text)});
  }
  armSendTimer();
}

const std::string& TelemetryPipeline::topicPrefix() {
  const auto& o = session_.options();
  if (prefix_.empty() || o.deviceId != prefixDevice_ || o.moduleId != prefixModule_) {
    prefixDevice_ = o.deviceId;
    prefixModule_ = o.moduleId;
    prefix_ = proto::telemetryTopicPrefix(o.deviceId, o.moduleId);
  }
  return prefix_;
}

// --- expiry, drops, notifications ---------------------------------------------------------------

void TelemetryPipeline::noteDropped(const std::vector<outbox::EntryRef>& dropped) {
  for (const auto& entry : dropped) {
    // Rate-limited by the log facade: a full outbox under load drops many.
    logf(LogLevel::Warning, "outbox full: dropped the oldest message ",
         core::quoted(entry.messageId));
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
  const std::size_t before = expiredBatch_.size();
  for (auto& entry : outbox_->sweepExpired()) {
    expiredBatch_.push_back(Notice{std::move(entry.app), std::move(entry.messageId)});
  }
  if (const std::size_t swept = expiredBatch_.size() - before; swept > 0) {
    logf(LogLevel::Notice, swept, " queued messages expired before delivery");
    countersChanged_ = true;
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
  // One call per app, each with its ids in delivery order: every app hears of its own only.
  const auto byApp = [](const std::vector<Notice>& notices) {
    std::vector<std::pair<std::string, std::vector<std::string>>> groups;
    for (const auto& n : notices) {
      auto it = std::find_if(groups.begin(), groups.end(),
                             [&n](const auto& group) { return group.first == n.app; });
      if (it == groups.end()) {
        groups.emplace_back(n.app, std::vector<std::string>{});
        it = std::prev(groups.end());
      }
      it->second.push_back(n.messageId);
    }
    return groups;
  };
  for (const auto& [app, ids] : byApp(delivered)) {
    listener_->onDelivered(app, ids);
  }
  for (const auto& [app, ids] : byApp(expired)) {
    listener_->onExpired(app, ids);
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
  if (!samePlace && released_.left > 0) {
    logf(LogLevel::Notice, released_.left, " messages stay in the outbox at ", released_.path,
         "; they are delivered when it is configured again");
  }
  released_ = {};
  outbox_ = std::move(next);
  unavailable_ = std::move(unavailable);
  countersChanged_ = true;
  scheduleFlush();
  if (outbox_ != nullptr) {
    backlogPeak_ = outbox_->length();
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
  auto calls = std::move(sendCalls_);
  sendCalls_.clear();
  sendTimer_->disarm();
  for (const auto& call : calls) {
    if (call->answered) {
      continue;
    }
    std::string text = "iothubd is stopping";
    if (call->reply.batch) {
      text += "; acknowledged by the hub: " + indexList(call->outcomes, Outcome::Acked) +
              " (the others may or may not have reached it)";
    } else {
      text += "; the message may or may not have reached the hub";
    }
    answer(*call, core::Error{Errc::Cancelled, std::move(text)});
  }
  flushBatches();
}

}  // namespace iothubd::delivery
