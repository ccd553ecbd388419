// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "iothubd/core/clock.hpp"
#include "iothubd/core/result.hpp"
#include "iothubd/core/scheduler.hpp"
#include "iothubd/outbox/outbox.hpp"
#include "iothubd/proto/telemetry.hpp"
#include "iothubd/session/hub_session.hpp"

namespace iothubd::delivery {

/// Telemetry from apps to the hub through the durable outbox (issue 5): a message is stored
/// (grouped commits) before anything else, then published with up to max_inflight awaiting
/// PUBACK, deleted on its PUBACK and resent with the same message id after a reconnect or a
/// restart. Loop thread only.
///
/// Without an outbox (it could not be opened) SendMessage still works, directly and not
/// durably, and QueueMessage fails with the reason: the daemon keeps serving everything else.
class TelemetryPipeline final : private session::HubSession::Observer {
 public:
  using Done = std::function<void(core::Result<std::string>)>;  ///< the message id
  /// The message ids of a batch, in the order given.
  using BatchDone = std::function<void(core::Result<std::vector<std::string>>)>;

  /// Told about delivery in batches (at most every kBatchInterval), so that a fast drain does
  /// not flood the bus.
  class Listener {
   public:
    virtual ~Listener() = default;
    virtual void onDelivered(const std::vector<std::string>& messageIds) = 0;
    virtual void onExpired(const std::vector<std::string>& messageIds) = 0;
    /// length / bytes / dropped / delivered changed.
    virtual void onCountersChanged() = 0;
  };

  static constexpr std::chrono::milliseconds kBatchInterval{100};
  static constexpr std::size_t kMaxBatch = 1000;
  /// Most messages one SendMessages/QueueMessages call may carry: bounds what one call holds
  /// (and one transaction writes) while staying far above where batching stops paying off.
  static constexpr std::size_t kMaxMessagesPerCall = 1000;

  /// `outbox` may be null; `unavailable` then says why (for QueueMessage's error).
  TelemetryPipeline(core::Scheduler& scheduler, core::Clock& clock, session::HubSession& session,
                    std::unique_ptr<outbox::Outbox> outbox, std::string unavailable);
  ~TelemetryPipeline() override;
  TelemetryPipeline(const TelemetryPipeline&) = delete;
  TelemetryPipeline& operator=(const TelemetryPipeline&) = delete;

  void setListener(Listener* listener) { listener_ = listener; }

  /// QueueMessage: completes once the message is durably stored. The message id must be set.
  void queue(std::string app, proto::OutgoingMessage message, Done done);
  /// SendMessage: completes on the hub's PUBACK. If that takes longer than operation_timeout the
  /// caller gets OperationTimeout and the message stays queued (it is still delivered). Without
  /// auto_connect and without a connection: NoConnection, nothing stored.
  void send(std::string app, proto::OutgoingMessage message, Done done);

  /// QueueMessages: stores every message (each its own hub message, ids set) in one grouped
  /// commit and completes once that is durable. Nothing is stored if one message is refused;
  /// the error names its index ("message 3: ..."). More than kMaxMessagesPerCall:
  /// InvalidArgument. An empty batch completes at once with no ids.
  void queueBatch(std::string app, std::vector<proto::OutgoingMessage> messages, BatchDone done);
  /// SendMessages: as queueBatch, then completes once the hub acknowledged every message; or with
  /// the first failure, whose error names the index that failed and those the hub had
  /// acknowledged by then (the rest stay queued). The operation_timeout covers the whole batch.
  void sendBatch(std::string app, std::vector<proto::OutgoingMessage> messages, BatchDone done);

  /// Configuration reload (outbox settings changed), step 1: the outbox commits what is pending,
  /// its messages in flight become unsent again (they go again, at least once, from the store
  /// that holds them), and it is handed over, to be closed before a new one opens the same file.
  /// The pipeline has no outbox until adoptOutbox(), which must follow in the same loop callback.
  [[nodiscard]] std::unique_ptr<outbox::Outbox> releaseOutbox();
  /// Step 2: `next` becomes the outbox (null: none; `unavailable` then says why). If it is
  /// elsewhere than the released one, the old file keeps its undelivered messages (logged) and
  /// SendMessage calls waiting for them get Cancelled.
  void adoptOutbox(std::unique_ptr<outbox::Outbox> next, std::string unavailable);

  /// Shutdown: stores what is pending and answers every waiting SendMessage with Cancelled (the
  /// message stays queued for the next start).
  void shutdown();

  [[nodiscard]] bool durable() const noexcept { return outbox_ != nullptr; }
  [[nodiscard]] std::uint64_t length() const;
  [[nodiscard]] std::uint64_t bytes() const;
  [[nodiscard]] std::uint64_t dropped() const;
  [[nodiscard]] std::uint64_t delivered() const;

 private:
  /// One call waiting for its messages: to be stored (QueueMessage(s)) or acknowledged
  /// (SendMessage(s)). Keyed by the seq of its first message; its messages have consecutive seqs.
  struct Waiter {
    std::vector<std::string> ids;
    std::vector<bool> acked;  ///< batches that wait for delivery only
    std::size_t unacked = 0;
    bool forDelivery = false;
    bool batch = false;
    Done single;
    BatchDone many;
    std::optional<std::chrono::microseconds> deadline;  ///< set once stored
  };
  using Waiters = std::map<std::uint64_t, Waiter>;

  /// A batch too long (InvalidArgument) or empty (no ids) is answered here: true if it was.
  [[nodiscard]] static bool answeredUpFront(const std::vector<proto::OutgoingMessage>& messages,
                                            BatchDone& many);
  void enqueue(std::string app, std::vector<proto::OutgoingMessage> messages, bool batch,
               bool forDelivery, Done single, BatchDone many);
  void sendDirect(std::vector<proto::OutgoingMessage> messages, bool batch, Done single,
                  BatchDone many);
  void onStored(std::uint64_t seq, const core::Result<void>& committed);
  void pump();
  void onAck(std::uint64_t seq, const std::string& messageId, const core::Result<void>& result);
  [[nodiscard]] Waiters::iterator findWaiter(std::uint64_t seq);
  void ackWaiter(std::uint64_t seq);
  /// Message `seq` failed for good (dropped, expired): its call fails, naming it.
  void failMessage(std::uint64_t seq, const core::Error& error);
  /// Every call waiting for delivery fails with `why` (their messages stay queued).
  void failDeliveryWaiters(const core::Error& why, const char* after);
  static void finish(Waiter& waiter, core::Result<void> outcome);
  void complete(Waiters::iterator it, core::Result<void> outcome);
  void armWaitTimer(std::chrono::microseconds deadline);
  void onWaitTimer();
  void noteDropped(const std::vector<outbox::EntryRef>& dropped);
  void armExpiry();
  void onExpiryTimer();
  void scheduleFlush();
  void flushBatches();

  // HubSession::Observer
  void onLinkUp() override { pump(); }
  void onStateChanged(session::ConnectionState state, const core::Error* error) override;
  void onLinkDown() override;

  core::Scheduler& scheduler_;
  core::Clock& clock_;
  session::HubSession& session_;
  std::unique_ptr<outbox::Outbox> outbox_;
  std::string unavailable_;
  Listener* listener_ = nullptr;
  Waiters waiters_;
  /// One timer for every SendMessage(s) deadline (they share operation_timeout), not one each.
  std::unique_ptr<core::Timer> waitTimer_;
  std::optional<std::chrono::microseconds> waitDue_;
  std::vector<std::string> deliveredBatch_;
  std::vector<std::string> expiredBatch_;
  bool countersChanged_ = false;
  std::unique_ptr<core::Timer> flushTimer_;
  std::unique_ptr<core::Timer> expiryTimer_;
  std::uint64_t directDelivered_ = 0;   ///< without an outbox
  std::uint64_t outboxGeneration_ = 0;  ///< counts releaseOutbox(): acks of an old store are stale
  struct Released {
    std::string path;
    std::uint64_t left = 0;  ///< messages it still held
  } released_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace iothubd::delivery
