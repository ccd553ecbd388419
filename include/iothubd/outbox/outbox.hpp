// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "iothubd/core/clock.hpp"
#include "iothubd/core/lifetime.hpp"
#include "iothubd/core/result.hpp"
#include "iothubd/core/scheduler.hpp"
#include "iothubd/proto/telemetry.hpp"

namespace iothubd::outbox {

class OutboxStore;

/// What enqueue() does when a new message would exceed max_messages or max_bytes.
enum class FullPolicy {
  Reject,      ///< the new message fails with Errc::QueueFull (default)
  DropOldest,  ///< the oldest stored messages not in flight are dropped to make room
};

/// Parses the configuration value: "reject" or "drop-oldest". Errors: Errc::Config.
[[nodiscard]] core::Result<FullPolicy> parseFullPolicy(std::string_view text);

/// Configuration of the outbox (config keys outbox_path, outbox_max_messages, outbox_max_bytes,
/// outbox_full_policy, outbox_message_ttl, max_inflight) and tuning of the grouped commits.
struct OutboxOptions {
  /// The SQLite database. Its directory must exist (systemd StateDirectory=); the file is created
  /// with mode 0600 (message bodies may be sensitive).
  std::string path = "/var/lib/iothubd/outbox.db";
  std::size_t maxMessages = 100000;
  std::uint64_t maxBytes = 64ull * 1024 * 1024;  ///< sum of hub message sizes (MessageSize)
  FullPolicy fullPolicy = FullPolicy::Reject;
  /// Lifetime of a message without its own `expiry-time-utc`; zero = until delivered.
  std::chrono::seconds defaultTtl{0};
  /// How many messages nextToSend() hands out before markDelivered()/requeueInFlight().
  std::size_t maxInflight = 64;
  /// A transaction is committed as soon as this many writes (stores, deletes) are pending.
  std::size_t commitBatch = 256;
  /// With a commit worker (open()'s OffLoopRunner) a message is committed at once when no commit
  /// runs, and what arrives during one forms the next (a lone message costs one fsync, not a wait
  /// and an fsync). Without a worker, commits run on the loop: stores wait at most this long for
  /// company, so that one fsync serves a burst.
  std::chrono::microseconds commitDelay{2000};
  /// Deletes (delivered, dropped, expired) alone wait longer: losing them in a crash only means a
  /// redelivery with the same message id, so they need not cost an fsync each.
  std::chrono::microseconds deleteDelay{100000};
  /// After a failed commit, pending deletes are tried again this much later.
  std::chrono::microseconds retryDelay{std::chrono::seconds(1)};

  bool operator==(const OutboxOptions&) const = default;
};

/// Who and what an entry is, for MessagesDelivered/MessagesExpired and drop logs.
struct EntryRef {
  std::uint64_t seq = 0;  ///< position in arrival order, unique within the outbox
  std::string messageId;  ///< `$.mid`; apps may reuse ids, so seq is the key
  std::string app;        ///< the sender's identity as given to enqueue()
};

/// A stored message as the session needs it to publish.
struct OutboxMessage {
  std::uint64_t seq = 0;
  std::string app;
  /// Checked and encoded when it was accepted; its topic is prefix + propertyBag().
  proto::CheckedMessage message;
  std::uint64_t enqueuedAt = 0;            ///< Unix seconds
  std::optional<std::uint64_t> expiresAt;  ///< Unix seconds; the message's own expiry or the TTL
  std::uint64_t bytes = 0;                 ///< message.hubBytes()
};

/// The durable store-and-forward queue for telemetry (issue 5): an SQLite database in WAL mode
/// with synchronous=FULL, one row per message in arrival order.
///
/// Writes are grouped: enqueue() returns at once and its callback runs after the transaction that
/// holds the message has committed (fsync'ed), so an acknowledged message survives a crash or a
/// power cut, while one fsync serves a whole batch under load. Deletes are grouped the same way.
///
/// Delivery: nextToSend() hands out the oldest stored messages (never one still waiting for its
/// commit), at most maxInflight at a time, and marks them in flight (in memory only); what it
/// does not still hold from the commit it reads back a run of rows at a time;
/// markDelivered() on PUBACK removes them, requeueInFlight() after a lost connection makes them
/// eligible again, in order and with the same message ids (at-least-once).
///
/// Failures: when a commit fails (disk full, I/O error, file system turned read-only) the
/// messages of that transaction fail with Errc::Io naming the path and reason, and everything
/// already stored can still be read and delivered. A database found read-only at open() is used
/// for reading and delivering only. Loop thread only; every SQLite call is a short statement or
/// one grouped commit, and the commit runs on a worker when open() was given an OffLoopRunner.
class Outbox {
 public:
  /// Runs once the message's transaction committed (ok) or failed (Errc::Io). Always on the loop,
  /// never inside enqueue().
  using Committed = std::function<void(core::Result<void>)>;

  /// Runs `work` on a worker thread, then `done` on the loop thread, in submission order:
  /// loop::EventLoop::runOnWorker.
  using OffLoopRunner = std::function<void(std::function<void()> work, std::function<void()> done)>;

  struct Opened {
    std::unique_ptr<Outbox> outbox;
    /// Set when the database was corrupt: where it was moved (`<path>.corrupt-<UTC time>`, with
    /// its -wal/-shm beside it) before a fresh one was created. The daemon logs it.
    std::optional<std::string> movedAside;
    /// The store is read-only (file or file system): delivery works, enqueue() fails.
    bool readOnly = false;
  };

  /// Opens or creates the database, checks its integrity (PRAGMA quick_check) and loads the
  /// index of stored messages. A corrupt file is moved aside, never deleted. Errors: Errc::Io
  /// naming the path when no database can be opened or created there (missing directory,
  /// read-only file system without a database, moving a corrupt file failed), Errc::Config for a
  /// database written by a newer schema.
  ///
  /// With `offLoop`, each commit (its fsync) runs on a worker thread: the loop keeps accepting,
  /// reading and delivering meanwhile (through a second, reading connection), and what arrives
  /// during one commit forms the next. Without it, commits run on the loop (tests, tools).
  [[nodiscard]] static core::Result<Opened> open(OutboxOptions options, core::Scheduler& scheduler,
                                                 core::Clock& clock, OffLoopRunner offLoop = {});

  /// Commits what is pending without running callbacks (call flush() first to answer them);
  /// waits for a commit running on a worker.
  ~Outbox();
  Outbox(const Outbox&) = delete;
  Outbox& operator=(const Outbox&) = delete;

  struct Accepted {
    std::uint64_t seq = 0;
    /// With FullPolicy::DropOldest: the messages dropped to make room (counted in dropped()).
    std::vector<EntryRef> dropped;
  };

  /// Accepts one message from `app` (D-Bus unique name or uid: kept with the message), checked
  /// where it entered (proto::checkOutgoingMessage). `onCommitted` runs later: ok once the
  /// message is durable, or Errc::Io if its transaction failed (then it is gone from the outbox).
  /// Errors returned at once (and `onCommitted` never runs): QueueFull (over a limit under
  /// FullPolicy::Reject, or nothing left to drop), Io (the store is read-only).
  [[nodiscard]] core::Result<Accepted> enqueue(std::string app, proto::CheckedMessage message,
                                               Committed onCommitted);

  /// Accepts `messages` from `app` as one group (QueueMessages): room is made for all of them at
  /// once; they get consecutive seqs from Accepted::seq on, are written in one transaction (never
  /// split across two), and `onCommitted` runs once for the whole group. Errors as enqueue(); an
  /// empty batch: InvalidArgument.
  [[nodiscard]] core::Result<Accepted> enqueueBatch(std::string app,
                                                    std::vector<proto::CheckedMessage> messages,
                                                    Committed onCommitted);

  /// The seq the next accepted message (or the first of the next batch) will get.
  [[nodiscard]] std::uint64_t nextSeq() const noexcept { return nextSeq_; }

  /// Commits whatever is pending now, on the loop, and runs the callbacks of those transactions
  /// before returning (shutdown); waits for a commit running on a worker first. Returns the
  /// commit's error, if any.
  core::Result<void> flush();

  /// The oldest stored messages that are neither in flight nor expired, up to maxInflight minus
  /// those in flight; they are in flight afterwards. Errors: Errc::Io when reading fails (nothing
  /// is marked then). A row that cannot be decoded is discarded (counted as dropped, logged).
  [[nodiscard]] core::Result<std::vector<OutboxMessage>> nextToSend();

  /// The hub acknowledged `seq`: removes it (its delete is grouped like writes). Returns false,
  /// and does nothing, for a seq that is not in flight (a duplicate PUBACK, one already dropped).
  bool markDelivered(std::uint64_t seq);
  /// The same for several; returns how many were in flight.
  std::size_t markDelivered(std::span<const std::uint64_t> seqs);

  /// The connection was lost: every message in flight is eligible again and nextToSend() returns
  /// it in its original order with its original id. Returns how many were in flight.
  std::size_t requeueInFlight();

  /// Removes stored messages whose expiry (own `expiry-time-utc` or the default TTL) has passed
  /// and that are not in flight; returns them oldest first for MessagesExpired.
  [[nodiscard]] std::vector<EntryRef> sweepExpired();
  /// The earliest expiry (Unix seconds) of a message not in flight, if any: a caller re-arms its
  /// sweep timer after each sweep, enqueue and requeue. Expiry has whole-second resolution and a
  /// message still waiting for its commit is swept only after it, so arm for at least 1 s.
  [[nodiscard]] std::optional<std::uint64_t> nextExpiry() const;

  /// Messages accepted and not yet delivered, dropped or expired (OutboxLength); includes those
  /// waiting for their commit and those in flight.
  [[nodiscard]] std::uint64_t length() const noexcept { return length_; }
  /// Their total hub message size (OutboxBytes).
  [[nodiscard]] std::uint64_t bytes() const noexcept { return bytes_; }
  /// Since open(): dropped to make room or unreadable (MessagesDropped), delivered
  /// (MessagesDelivered), expired.
  [[nodiscard]] std::uint64_t dropped() const noexcept { return dropped_; }
  [[nodiscard]] std::uint64_t delivered() const noexcept { return delivered_; }
  [[nodiscard]] std::uint64_t expired() const noexcept { return expired_; }
  [[nodiscard]] std::size_t inFlight() const noexcept { return inFlight_; }
  /// Transactions committed since open() (to see the grouping work).
  [[nodiscard]] std::uint64_t transactions() const noexcept { return transactions_; }
  [[nodiscard]] bool readOnly() const noexcept { return readOnly_; }
  /// The error of the last failed commit, cleared by the next successful one (LastError, and a
  /// log line once per transition).
  [[nodiscard]] const std::optional<core::Error>& writeError() const noexcept {
    return writeError_;
  }
  [[nodiscard]] const OutboxOptions& options() const noexcept { return options_; }

 private:
  enum class State : std::uint8_t { Pending, Stored, InFlight };
  struct Meta {
    std::uint64_t bytes = 0;
    std::uint64_t expiresAt = 0;  ///< 0 = never
    State state = State::Pending;
  };
  struct PendingInsert {
    OutboxMessage row;
    Committed done;
    bool groupContinues = false;  ///< a batch's later rows follow: commit them together
  };
  /// What the outbox keeps in its index about a message it accepts.
  struct Checked {
    std::uint64_t bytes = 0;
    std::optional<std::uint64_t> expiresAt;
  };
  using Completions = std::vector<std::pair<Committed, core::Result<void>>>;

  struct CommitJob;

  Outbox(OutboxOptions options, core::Scheduler& scheduler, core::Clock& clock,
         std::unique_ptr<OutboxStore> store, bool readOnly, OffLoopRunner offLoop);

  [[nodiscard]] Checked check(const proto::CheckedMessage& message, std::uint64_t now) const;
  void insert(std::string app, proto::CheckedMessage message, const Checked& checked,
              std::uint64_t now, Committed onCommitted, bool groupContinues);
  [[nodiscard]] core::Result<std::vector<EntryRef>> makeRoom(std::uint64_t newCount,
                                                             std::uint64_t newBytes);
  void remove(std::map<std::uint64_t, Meta>::iterator it);
  [[nodiscard]] bool markOneDelivered(std::uint64_t seq);
  /// Commits now if the batch is full, else makes sure a commit happens within `delay`.
  void writesAdded(std::chrono::microseconds delay);
  void scheduleCommit(std::chrono::microseconds delay);
  void onCommitTimer();
  /// Starts one transaction with everything pending (none while one runs, unless `wait`).
  /// Returns the callbacks to run with their results: of this transaction when it ran on the
  /// loop (no worker, or `wait`), of the running one when `wait` had to finish it.
  [[nodiscard]] Completions commit(bool wait);
  /// Applies the result of job_ to the index and counters; returns its callbacks.
  [[nodiscard]] Completions finishCommit();
  static void runCompletions(Completions& completions);
  [[nodiscard]] bool expiredAt(const Meta& meta, std::uint64_t now) const noexcept;
  /// `seq` from hot_ or readAhead_ if it is there (then removed from it), else from the store,
  /// reading the rows that follow it into readAhead_ on the way.
  [[nodiscard]] core::Result<OutboxMessage> take(std::uint64_t seq);

  OutboxOptions options_;
  core::Scheduler& scheduler_;
  core::Clock& clock_;
  std::shared_ptr<OutboxStore> store_;  ///< shared with a running worker
  bool readOnly_;
  OffLoopRunner offLoop_;
  std::shared_ptr<CommitJob> job_;  ///< the transaction being committed, if any

  std::map<std::uint64_t, Meta> index_;  ///< every live entry, by seq (arrival order)
  std::set<std::pair<std::uint64_t, std::uint64_t>> expiries_;  ///< (expiresAt, seq)
  // Deques: with a worker, a commit takes its share from the front while more arrive at the back.
  std::deque<PendingInsert> pendingInserts_;
  std::deque<std::uint64_t> pendingDeletes_;
  /// Messages just committed, kept (in seq order, up to kHotBytes) so that nextToSend() hands
  /// them out without reading back what it wrote a moment ago: a message sent at once costs one
  /// SQLite statement fewer. Entries that left the outbox meanwhile are skipped lazily.
  std::deque<OutboxMessage> hot_;
  std::uint64_t hotBytes_ = 0;
  /// Rows read from the store ahead of nextToSend() (a backlog: one statement for a run of rows
  /// instead of one each), in seq order; skipped lazily like hot_.
  std::deque<OutboxMessage> readAhead_;
  std::unique_ptr<core::Timer> commitTimer_;
  std::optional<std::chrono::microseconds> commitDue_;  ///< monotonic deadline of commitTimer_
  std::uint64_t nextSeq_ = 1;

  std::uint64_t length_ = 0;
  std::uint64_t bytes_ = 0;
  std::uint64_t dropped_ = 0;
  std::uint64_t delivered_ = 0;
  std::uint64_t expired_ = 0;
  std::size_t inFlight_ = 0;
  std::uint64_t transactions_ = 0;
  std::optional<core::Error> writeError_;
  core::Lifetime lifetime_;  ///< last: a commit finishing after the outbox is gone is ignored
};

}  // namespace iothubd::outbox
