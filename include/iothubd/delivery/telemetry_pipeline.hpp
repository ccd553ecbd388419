// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "iothubd/core/clock.hpp"
#include "iothubd/core/lifetime.hpp"
#include "iothubd/core/result.hpp"
#include "iothubd/core/scheduler.hpp"
#include "iothubd/outbox/outbox.hpp"
#include "iothubd/proto/telemetry.hpp"
#include "iothubd/session/hub_session.hpp"

namespace iothubd::delivery {

/// Telemetry from apps to the hub, two ways (issue 13; dbus-contract-notes "Which call is
/// durable"). Loop thread only. Messages arrive checked and encoded (proto::CheckedMessage) and
/// are not checked or encoded again here.
///
/// - Send (SendMessage, SendBinaryMessage, SendMessages): in memory. Published at once through
///   the session (held there while it (re)connects, within max_queued_messages/bytes), answered
///   on the hub's PUBACK. A message whose link went before its PUBACK goes again, with the same
///   id, once the link is back; the call fails after operation_timeout. Nothing is stored: the
///   reply is the app's proof of delivery, and if iothubd dies first the call fails and the app
///   decides.
/// - Queue (QueueMessage, QueueMessages): durable. Answered once the message is committed
///   (fsync'ed) to the outbox, which publishes it with up to max_inflight awaiting PUBACK, deletes
///   it on its PUBACK and sends it again, same id, after a reconnect or a restart.
/// No order holds between a Send and earlier Queue messages still in the outbox.
///
/// Without an outbox (it could not be opened) Send works as always and Queue fails with the
/// reason: the daemon keeps serving everything else.
class TelemetryPipeline final : private session::HubSession::Observer {
 public:
  using Done = std::function<void(core::Result<std::string>)>;  ///< the message id
  /// The message ids of a batch, in the order given.
  using BatchDone = std::function<void(core::Result<std::vector<std::string>>)>;

  /// Told about delivery in batches (at most every kBatchInterval), so that a fast drain does
  /// not flood the bus; one call per app (the `app` given to queue(), possibly from an earlier
  /// run), so that each app hears only of its own messages.
  class Listener {
   public:
    virtual ~Listener() = default;
    virtual void onDelivered(const std::string& app,
                             const std::vector<std::string>& messageIds) = 0;
    virtual void onExpired(const std::string& app, const std::vector<std::string>& messageIds) = 0;
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

  /// QueueMessage: completes once the message is durably stored. `app` (the caller's unique
  /// name) stays with the message for the delivered/expired notifications. Errors: Io (no
  /// outbox, read-only, a failed commit), QueueFull.
  void queue(std::string app, proto::CheckedMessage message, Done done);
  /// SendMessage: completes on the hub's PUBACK. Errors: NotConnected (disconnected and
  /// auto_connect off: nothing sent), QueueFull (too much waiting for the connection), Timeout
  /// (no PUBACK within operation_timeout: the message may still reach the hub; or its
  /// expiry-time-utc had passed: never sent), Cancelled (Disconnect, shutdown), the connection's
  /// own error when it cannot be opened.
  void send(std::string app, proto::CheckedMessage message, Done done);

  /// QueueMessages: stores every message (each its own hub message) in one grouped commit and
  /// completes once that is durable; nothing is stored if the outbox refuses the batch. More than
  /// kMaxMessagesPerCall: InvalidArgument. An empty batch completes at once with no ids.
  void queueBatch(std::string app, std::vector<proto::CheckedMessage> messages, BatchDone done);
  /// SendMessages: publishes each message, in order, and completes once every one is settled:
  /// with the ids if the hub acknowledged them all, else with the error of the first message
  /// that failed, naming its index and those the hub acknowledged ("message 2 of the batch: ...;
  /// acknowledged by the hub: 0-1, 3"), so that the app can send exactly the others again.
  /// operation_timeout covers the whole batch.
  void sendBatch(std::string app, std::vector<proto::CheckedMessage> messages, BatchDone done);

  /// Configuration reload (outbox settings changed), step 1: the outbox commits what is pending
  /// (answering those Queue calls), its messages in flight become unsent again (they go again, at
  /// least once, from the store that holds them), and it is handed over, to be closed before a
  /// new one opens the same file. The pipeline has no outbox until adoptOutbox(), which must
  /// follow in the same loop callback. Send calls are not affected: they never touch the outbox.
  [[nodiscard]] std::unique_ptr<outbox::Outbox> releaseOutbox();
  /// Step 2: `next` becomes the outbox (null: none; `unavailable` then says why). If it is
  /// elsewhere than the released one, the old file keeps its undelivered messages (logged).
  void adoptOutbox(std::unique_ptr<outbox::Outbox> next, std::string unavailable);

  /// Shutdown: stores what is pending (and answers those QueueMessage calls) and answers every
  /// waiting Send call with Cancelled.
  void shutdown();

  [[nodiscard]] bool durable() const noexcept { return outbox_ != nullptr; }
  [[nodiscard]] std::uint64_t length() const;
  [[nodiscard]] std::uint64_t bytes() const;
  [[nodiscard]] std::uint64_t dropped() const;
  /// Queued and sent messages the hub acknowledged (MessagesDelivered, the property; the signal
  /// of that name is for queued messages: a Send call's reply is its own notice).
  [[nodiscard]] std::uint64_t delivered() const;

 private:
  /// How one call is answered: one id or a batch of them, or an error.
  struct Reply {
    bool batch = false;
    Done single;
    BatchDone many;
    void succeed(std::vector<std::string> ids);
    void succeed(std::string id);  ///< a single message's call
    void fail(core::Error error);
  };
  /// A Queue call waiting for its commit; keyed by the seq of its (first) message.
  struct QueueCall {
    std::vector<std::string> ids;
    Reply reply;
  };
  struct SendCall;
  /// A message delivered or expired, for the listener's next batch.
  struct Notice {
    std::string app;
    std::string messageId;
  };

  /// A batch too long (InvalidArgument) or empty (no ids) is answered here: true if it was.
  [[nodiscard]] static bool answeredUpFront(std::size_t count, Reply& reply);
  void enqueue(std::string app, std::vector<proto::CheckedMessage> messages, Reply reply);
  void onStored(std::uint64_t seq, const core::Result<void>& committed);
  void pump();
  void onAck(std::uint64_t seq, const Notice& notice, const core::Result<void>& result);

  void startSend(const std::shared_ptr<SendCall>& call);
  void publish(const std::shared_ptr<SendCall>& call, std::size_t index);
  void onPublished(const std::shared_ptr<SendCall>& call, std::size_t index,
                   const core::Result<void>& result);
  void settle(SendCall& call, std::size_t index, const core::Error* error);
  void answer(SendCall& call, std::optional<core::Error> why);
  void resendDropped();
  void armSendTimer();
  void onSendTimer();
  /// devices/{dev}[/modules/{mod}]/messages/events/ of the session's current identity.
  const std::string& topicPrefix();

  void noteDropped(const std::vector<outbox::EntryRef>& dropped);
  void armExpiry();
  void onExpiryTimer();
  void scheduleFlush();
  void flushBatches();

  // HubSession::Observer
  void onLinkUp() override { pump(); }
  void onLinkDown() override;

  core::Scheduler& scheduler_;
  core::Clock& clock_;
  session::HubSession& session_;
  std::unique_ptr<outbox::Outbox> outbox_;
  std::string unavailable_;
  Listener* listener_ = nullptr;
  std::map<std::uint64_t, QueueCall> queueCalls_;
  /// Send calls by arrival, which is deadline order (they share operation_timeout); answered ones
  /// leave from the front.
  std::deque<std::shared_ptr<SendCall>> sendCalls_;
  /// One timer for every Send call's deadline, not one each.
  std::unique_ptr<core::Timer> sendTimer_;
  /// Messages whose link went before their PUBACK, sent again once the session is past it.
  std::vector<std::pair<std::shared_ptr<SendCall>, std::size_t>> dropped_;
  bool resendPosted_ = false;
  std::string topic_;   ///< the topic being published, reused (libmosquitto copies it)
  std::string prefix_;  ///< topicPrefix() for prefixDevice_/prefixModule_
  std::string prefixDevice_;
  std::string prefixModule_;
  std::vector<Notice> deliveredBatch_;
  std::vector<Notice> expiredBatch_;
  bool countersChanged_ = false;
  std::unique_ptr<core::Timer> flushTimer_;
  std::unique_ptr<core::Timer> expiryTimer_;
  std::uint64_t sentDelivered_ = 0;     ///< Send messages the hub acknowledged
  std::uint64_t backlogPeak_ = 0;       ///< the outbox's longest length since it was last empty
  std::uint64_t outboxGeneration_ = 0;  ///< counts releaseOutbox(): acks of an old store are stale
  /// What releaseOutbox() handed over, for adoptOutbox()'s log line.
  struct Released {
    std::string path;
    std::uint64_t left = 0;  ///< messages it still held
  } released_;
  core::Lifetime lifetime_;  ///< last: callbacks of a destroyed pipeline never run
};

}  // namespace iothubd::delivery
