// SPDX-License-Identifier: MIT
#include "iothubd/outbox/outbox.hpp"

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <iterator>
#include <mutex>

#include "iothubd/core/log.hpp"
#include "outbox_store.hpp"

namespace iothubd::outbox {

using core::Errc;

namespace {
/// A transaction holds at most this many commit batches of stores (and as many of deletes).
constexpr std::size_t kMaxBatchesPerTransaction = 4;
/// Memory for messages kept after their commit for nextToSend() (Outbox::hot_): a few windows of
/// max_inflight small messages; beyond it, messages are read back from the database.
constexpr std::uint64_t kHotBytes = 256 * 1024;
/// What an entry of hot_ is charged beyond its hub size (strings, map and deque overhead).
constexpr std::uint64_t kHotOverhead = 512;
/// Rows nextToSend() reads back at once when they are not in memory (a backlog after a restart
/// or an outage); also bounded by kHotBytes.
constexpr std::size_t kReadAheadRows = 256;
}  // namespace

core::Result<FullPolicy> parseFullPolicy(std::string_view text) {
  if (text == "reject") {
    return FullPolicy::Reject;
  }
  if (text == "drop-oldest") {
    return FullPolicy::DropOldest;
  }
  return core::fail(Errc::Config, "outbox full policy must be 'reject' or 'drop-oldest', not '" +
                                      std::string(text) + "'");
}

core::Result<Outbox::Opened> Outbox::open(OutboxOptions options, core::Scheduler& scheduler,
                                          core::Clock& clock, OffLoopRunner offLoop) {
  if (options.maxInflight == 0 || options.commitBatch == 0 || options.maxMessages == 0) {
    return core::fail(Errc::Config,
                      "outbox: max_inflight, the commit batch and outbox_max_messages must be > 0");
  }
  auto store = OutboxStore::open(options.path, clock.unixSeconds());
  if (!store) {
    return core::fail(store.error());
  }
  Opened opened;
  opened.movedAside = std::move(store->movedAside);
  opened.readOnly = store->readOnly;
  if (!OutboxStore::threadSafe()) {
    offLoop = nullptr;  // a single-threaded SQLite build must stay on the loop
  }
  std::unique_ptr<Outbox> outbox(new Outbox(std::move(options), scheduler, clock,
                                            std::move(store->store), store->readOnly,
                                            std::move(offLoop)));
  for (const IndexRow& row : store->index) {
    outbox->index_.emplace_hint(outbox->index_.end(), row.seq,
                                Meta{row.bytes, row.expiresAt, State::Stored});
    if (row.expiresAt != 0) {
      outbox->expiries_.emplace(row.expiresAt, row.seq);
    }
    ++outbox->length_;
    outbox->bytes_ += row.bytes;
    outbox->nextSeq_ = row.seq + 1;
  }
  opened.outbox = std::move(outbox);
  return opened;
}

Outbox::Outbox(OutboxOptions options, core::Scheduler& scheduler, core::Clock& clock,
               std::unique_ptr<OutboxStore> store, bool readOnly, OffLoopRunner offLoop)
    : options_(std::move(options)),
      scheduler_(scheduler),
      clock_(clock),
      store_(std::move(store)),
      readOnly_(readOnly),
      offLoop_(std::move(offLoop)) {
  commitTimer_ = scheduler_.createTimer([this] { onCommitTimer(); });
}

Outbox::~Outbox() {
  // What was accepted is stored even if nobody is left to be told (waiting for a running
  // commit first: the worker uses the store).
  (void)commit(true);
}

Outbox::Checked Outbox::check(const proto::CheckedMessage& message, std::uint64_t now) const {
  Checked checked;
  checked.bytes = message.hubBytes();
  if (const auto own = message.expiresAt()) {
    // The sender's own expiry wins over the default TTL, earlier or later. 0 means "never" in
    // the index; 1970-01-01T00:00:00Z is as expired as any past time.
    checked.expiresAt = std::max<std::uint64_t>(*own, 1);
  } else if (options_.defaultTtl.count() > 0) {
    checked.expiresAt = now + static_cast<std::uint64_t>(options_.defaultTtl.count());
  }
  return checked;
}

void Outbox::insert(std::string app, proto::CheckedMessage message, const Checked& checked,
                    std::uint64_t now, Committed onCommitted, bool groupContinues) {
  const std::uint64_t seq = nextSeq_++;
  index_.emplace_hint(index_.end(), seq,
                      Meta{checked.bytes, checked.expiresAt.value_or(0), State::Pending});
  if (checked.expiresAt) {
    expiries_.emplace(*checked.expiresAt, seq);
  }
  ++length_;
  bytes_ += checked.bytes;
  pendingInserts_.push_back(PendingInsert{
      OutboxMessage{seq, std::move(app), std::move(message), now, checked.expiresAt, checked.bytes},
      std::move(onCommitted), groupContinues});
}

core::Result<Outbox::Accepted> Outbox::enqueue(std::string app, proto::CheckedMessage message,
                                               Committed onCommitted) {
  if (readOnly_) {
    return core::fail(Errc::Io,
                      "outbox " + store_->path() + " is read-only: new messages cannot be stored");
  }
  const std::uint64_t now = clock_.unixSeconds();
  const Checked checked = check(message, now);
  auto dropped = makeRoom(1, checked.bytes);
  if (!dropped) {
    return core::fail(dropped.error());
  }
  const std::uint64_t seq = nextSeq_;
  insert(std::move(app), std::move(message), checked, now, std::move(onCommitted), false);
  writesAdded(options_.commitDelay);
  return Accepted{seq, std::move(*dropped)};
}

core::Result<Outbox::Accepted> Outbox::enqueueBatch(std::string app,
                                                    std::vector<proto::CheckedMessage> messages,
                                                    Committed onCommitted) {
  if (messages.empty()) {
    return core::fail(Errc::InvalidArgument, "an empty batch");
  }
  if (readOnly_) {
    return core::fail(Errc::Io,
                      "outbox " + store_->path() + " is read-only: new messages cannot be stored");
  }
  const std::uint64_t now = clock_.unixSeconds();
  // Room for all or none: a batch goes in whole or not at all.
  std::vector<Checked> checked;
  checked.reserve(messages.size());
  std::uint64_t bytes = 0;
  for (const auto& message : messages) {
    checked.push_back(check(message, now));
    bytes += checked.back().bytes;
  }
  auto dropped = makeRoom(messages.size(), bytes);
  if (!dropped) {
    return core::fail(dropped.error());
  }
  const std::uint64_t first = nextSeq_;
  const std::size_t last = messages.size() - 1;
  for (std::size_t i = 0; i < last; ++i) {
    insert(app, std::move(messages[i]), checked[i], now, nullptr, true);
  }
  insert(std::move(app), std::move(messages[last]), checked[last], now, std::move(onCommitted),
         false);
  writesAdded(options_.commitDelay);
  return Accepted{first, std::move(*dropped)};
}

core::Result<std::vector<EntryRef>> Outbox::makeRoom(std::uint64_t newCount,
                                                     std::uint64_t newBytes) {
  const auto fits = [&](std::uint64_t count, std::uint64_t bytes) {
    return count + newCount <= options_.maxMessages && bytes + newBytes <= options_.maxBytes;
  };
  if (fits(length_, bytes_)) {
    return std::vector<EntryRef>{};
  }
  const std::string usage = std::to_string(length_) + " messages, " + std::to_string(bytes_) +
                            " bytes (limits " + std::to_string(options_.maxMessages) + ", " +
                            std::to_string(options_.maxBytes) + ")";
  if (newCount == 1 && newBytes > options_.maxBytes) {
    return core::fail(Errc::QueueFull, "message of " + std::to_string(newBytes) +
                                           " bytes is larger than outbox_max_bytes (" +
                                           std::to_string(options_.maxBytes) + ")");
  }
  if (newBytes > options_.maxBytes || newCount > options_.maxMessages) {
    return core::fail(Errc::QueueFull, "a batch of " + std::to_string(newCount) + " messages (" +
                                           std::to_string(newBytes) +
                                           " bytes) is larger than the outbox (limits " +
                                           std::to_string(options_.maxMessages) + ", " +
                                           std::to_string(options_.maxBytes) + ")");
  }
  if (options_.fullPolicy == FullPolicy::Reject) {
    return core::fail(Errc::QueueFull, "outbox is full: " + usage);
  }
  // Oldest first; messages in flight may be acknowledged any moment and those waiting for their
  // commit have not been answered yet, so only stored, idle ones are dropped.
  std::vector<std::map<std::uint64_t, Meta>::iterator> victims;
  std::uint64_t count = length_;
  std::uint64_t bytes = bytes_;
  for (auto it = index_.begin(); it != index_.end() && !fits(count, bytes); ++it) {
    if (it->second.state == State::Stored) {
      victims.push_back(it);
      --count;
      bytes -= it->second.bytes;
    }
  }
  if (!fits(count, bytes)) {
    return core::fail(Errc::QueueFull,
                      "outbox is full and what it holds is in flight or not yet stored: " + usage);
  }
  std::vector<EntryRef> dropped;
  dropped.reserve(victims.size());
  for (auto it : victims) {
    dropped.push_back(store_->ref(it->first));
    pendingDeletes_.push_back(it->first);
    remove(it);
    ++dropped_;
  }
  return dropped;
}

void Outbox::remove(std::map<std::uint64_t, Meta>::iterator it) {
  const Meta& meta = it->second;
  --length_;
  bytes_ -= meta.bytes;
  if (meta.state == State::InFlight) {
    --inFlight_;
  }
  if (meta.expiresAt != 0) {
    expiries_.erase({meta.expiresAt, it->first});
  }
  index_.erase(it);
}

void Outbox::writesAdded(std::chrono::microseconds delay) {
  if (readOnly_) {
    // Nothing can be persisted; deletes stay in memory (a restart redelivers those messages).
    pendingDeletes_.clear();
    return;
  }
  if (writeError_ && pendingInserts_.empty()) {
    // The last commit failed (disk full?): deletes wait for the retry timer instead of failing
    // again on every PUBACK.
    scheduleCommit(options_.retryDelay);
    return;
  }
  // With a worker, stores are committed at once unless a commit runs (its end starts the next
  // group with whatever arrived meanwhile): a lone message waits for one fsync, not a delay and
  // an fsync, and a burst still shares them.
  const bool storeNow = offLoop_ && !pendingInserts_.empty();
  if (storeNow || pendingInserts_.size() + pendingDeletes_.size() >= options_.commitBatch) {
    // Committed now (with a worker: as soon as the running commit ends), but callbacks never run
    // inside the caller's enqueue()/markDelivered().
    auto completions = commit(false);
    if (!completions.empty()) {
      scheduler_.post(
          [completions = std::move(completions)]() mutable { runCompletions(completions); });
    }
    return;
  }
  scheduleCommit(delay);
}

void Outbox::scheduleCommit(std::chrono::microseconds delay) {
  const auto due = clock_.monotonic() + delay;
  if (commitDue_ && *commitDue_ <= due && commitTimer_->armed()) {
    return;
  }
  commitDue_ = due;
  commitTimer_->armAfter(delay);
}

void Outbox::onCommitTimer() {
  commitDue_.reset();
  auto completions = commit(false);
  runCompletions(completions);  // may destroy *this: only locals from here on
}

void Outbox::runCompletions(Completions& completions) {
  for (auto& [done, result] : completions) {
    if (done) {
      done(std::move(result));
    }
  }
}

/// One transaction's writes, handed to the worker thread when there is one.
struct Outbox::CommitJob {
  std::vector<PendingInsert> inserts;
  std::vector<std::uint64_t> deletes;
  core::Result<void> result;
  std::mutex mutex;
  std::condition_variable cv;
  bool finished = false;

  /// Runs on the worker (or the loop without one); touches only the job and the store's
  /// writing connection.
  void run(OutboxStore& store) {
    std::vector<const OutboxMessage*> rows;
    rows.reserve(inserts.size());
    for (const auto& pending : inserts) {
      rows.push_back(&pending.row);
    }
    auto written = store.write(rows, deletes);
    std::lock_guard lock(mutex);
    result = std::move(written);
    finished = true;
    cv.notify_all();
  }
  void wait() {
    std::unique_lock lock(mutex);
    cv.wait(lock, [this] { return finished; });
  }
};

Outbox::Completions Outbox::commit(bool wait) {
  Completions completions;
  if (job_) {
    if (!wait) {
      return completions;  // the running commit starts the next one when it ends
    }
    job_->wait();  // shutdown or flush(): at most one fsync
    completions = finishCommit();
  }
  if (pendingInserts_.empty() && pendingDeletes_.empty()) {
    return completions;
  }
  commitTimer_->disarm();
  commitDue_.reset();
  auto job = std::make_shared<CommitJob>();
  // With a worker, writes pile up while an fsync runs; one transaction takes a bounded share so
  // that finishing it (its callbacks: D-Bus replies) never holds the loop for long. Shutdown and
  // flush() take everything.
  const std::size_t cap = wait ? SIZE_MAX : kMaxBatchesPerTransaction * options_.commitBatch;
  const auto take = [](auto& from, auto& to, std::size_t n) {
    const auto end = from.begin() + static_cast<std::ptrdiff_t>(n);
    to.assign(std::make_move_iterator(from.begin()), std::make_move_iterator(end));
    from.erase(from.begin(), end);
  };
  // A batch (enqueueBatch) is never split: its one callback stands for one transaction. Batches
  // are bounded by the caller, so this stretches the cap by at most one batch.
  std::size_t inserts = std::min(pendingInserts_.size(), cap);
  while (inserts < pendingInserts_.size() && pendingInserts_[inserts - 1].groupContinues) {
    ++inserts;
  }
  take(pendingInserts_, job->inserts, inserts);
  take(pendingDeletes_, job->deletes, std::min(pendingDeletes_.size(), cap));
  job_ = job;
  if (offLoop_ && !wait) {
    // The fsync runs on a worker; the loop keeps accepting (into the next batch), reading and
    // delivering through the store's reading connection until done() runs on the loop.
    offLoop_([store = store_, job] { job->run(*store); }, lifetime_.guard([this, job] {
      if (job_ != job) {
        return;  // flush() already finished this job
      }
      auto finished = finishCommit();
      // After a failure, deletes alone wait for the retry timer, not the next PUBACK.
      if (!pendingInserts_.empty() ||
          (!writeError_ && pendingDeletes_.size() >= options_.commitBatch)) {
        // What arrived during the fsync has waited long enough: the next group.
        auto more = commit(false);
        finished.insert(finished.end(), std::make_move_iterator(more.begin()),
                        std::make_move_iterator(more.end()));
      } else if (!pendingDeletes_.empty()) {
        scheduleCommit(writeError_ ? options_.retryDelay : options_.deleteDelay);
      }
      runCompletions(finished);  // may destroy *this: only locals from here on
    }));
    return completions;
  }
  job->run(*store_);
  auto finished = finishCommit();
  completions.insert(completions.end(), std::make_move_iterator(finished.begin()),
                     std::make_move_iterator(finished.end()));
  return completions;
}

Outbox::Completions Outbox::finishCommit() {
  auto job = std::move(job_);
  job_.reset();
  Completions completions;
  completions.reserve(job->inserts.size());
  if (job->result) {
    ++transactions_;
    writeError_.reset();
    for (auto& pending : job->inserts) {
      if (auto it = index_.find(pending.row.seq); it != index_.end()) {
        it->second.state = State::Stored;
        const std::uint64_t cost = pending.row.bytes + kHotOverhead;
        if (hotBytes_ + cost <= kHotBytes) {
          hotBytes_ += cost;
          hot_.push_back(std::move(pending.row));
        }
      }
      completions.emplace_back(std::move(pending.done), core::Result<void>{});
    }
    return completions;
  }
  // The messages of a failed transaction were never stored: they leave the outbox and their
  // senders get the error. Deletes are tried again later.
  writeError_ = job->result.error();
  for (auto& pending : job->inserts) {
    if (auto it = index_.find(pending.row.seq); it != index_.end()) {
      remove(it);
    }
    completions.emplace_back(std::move(pending.done), core::fail(job->result.error()));
  }
  pendingDeletes_.insert(pendingDeletes_.end(), job->deletes.begin(), job->deletes.end());
  if (!pendingDeletes_.empty()) {
    scheduleCommit(options_.retryDelay);
  }
  return completions;
}

core::Result<void> Outbox::flush() {
  const std::uint64_t before = transactions_;
  const bool pending = job_ || !pendingInserts_.empty() || !pendingDeletes_.empty();
  auto completions = commit(true);
  std::optional<core::Error> error;
  if (pending && (transactions_ == before || writeError_)) {
    error = writeError_;
  }
  runCompletions(completions);  // may destroy *this: only locals from here on
  if (error) {
    return core::fail(std::move(*error));
  }
  return {};
}

bool Outbox::expiredAt(const Meta& meta, std::uint64_t now) const noexcept {
  return meta.expiresAt != 0 && meta.expiresAt <= now;
}

core::Result<std::vector<OutboxMessage>> Outbox::nextToSend() {
  std::vector<OutboxMessage> batch;
  if (inFlight_ >= options_.maxInflight) {
    return batch;
  }
  const std::size_t room = options_.maxInflight - inFlight_;
  const std::uint64_t now = clock_.unixSeconds();
  std::vector<std::map<std::uint64_t, Meta>::iterator> picked;
  for (auto it = index_.begin(); it != index_.end() && picked.size() < room; ++it) {
    if (it->second.state == State::Pending) {
      break;  // commits happen in seq order, so everything after is pending too
    }
    if (it->second.state == State::Stored && !expiredAt(it->second, now)) {
      picked.push_back(it);
    }
  }
  batch.reserve(picked.size());
  std::vector<std::map<std::uint64_t, Meta>::iterator> unreadable;
  for (auto it : picked) {
    auto row = take(it->first);
    if (row) {
      batch.push_back(std::move(*row));
    } else if (row.error().code == Errc::Protocol) {
      unreadable.push_back(it);
      core::logf(core::LogLevel::Warning, row.error().message, ", discarding it");
    } else {
      return core::fail(row.error());  // nothing marked: the caller may try again
    }
  }
  for (auto it : unreadable) {
    pendingDeletes_.push_back(it->first);
    remove(it);
    ++dropped_;
  }
  for (const auto& row : batch) {
    index_.find(row.seq)->second.state = State::InFlight;
  }
  inFlight_ += batch.size();
  if (!unreadable.empty()) {
    writesAdded(options_.deleteDelay);
  }
  return batch;
}

core::Result<OutboxMessage> Outbox::take(std::uint64_t seq) {
  // hot_ and readAhead_ are in seq order and nextToSend() asks in seq order: what lies before
  // `seq` was skipped for good (delivered, dropped, expired, or handed out and requeued, which
  // reads it again).
  const auto takeFront = [seq](std::deque<OutboxMessage>& rows,
                               std::uint64_t* charged) -> std::optional<OutboxMessage> {
    const auto pop = [&] {
      if (charged != nullptr) {
        *charged -= rows.front().bytes + kHotOverhead;
      }
      rows.pop_front();
    };
    while (!rows.empty() && rows.front().seq < seq) {
      pop();
    }
    if (rows.empty() || rows.front().seq != seq) {
      return std::nullopt;
    }
    OutboxMessage row = std::move(rows.front());
    pop();
    return row;
  };
  if (auto row = takeFront(hot_, &hotBytes_)) {
    return std::move(*row);
  }
  if (auto row = takeFront(readAhead_, nullptr)) {
    return std::move(*row);
  }
  // Not in memory (a backlog): this row and a run of those after it, in one statement.
  readAhead_.clear();
  if (auto r = store_->readRun(seq, kReadAheadRows, kHotBytes, readAhead_); !r) {
    readAhead_.clear();
    return core::fail(r.error());
  }
  OutboxMessage row = std::move(readAhead_.front());
  readAhead_.pop_front();
  return row;
}

bool Outbox::markDelivered(std::uint64_t seq) {
  if (!markOneDelivered(seq)) {
    return false;
  }
  writesAdded(options_.deleteDelay);
  return true;
}

std::size_t Outbox::markDelivered(std::span<const std::uint64_t> seqs) {
  std::size_t count = 0;
  for (std::uint64_t seq : seqs) {
    count += markOneDelivered(seq) ? 1 : 0;
  }
  if (count > 0) {
    writesAdded(options_.deleteDelay);
  }
  return count;
}

bool Outbox::markOneDelivered(std::uint64_t seq) {
  auto it = index_.find(seq);
  if (it == index_.end() || it->second.state != State::InFlight) {
    return false;
  }
  remove(it);
  pendingDeletes_.push_back(seq);
  ++delivered_;
  return true;
}

std::size_t Outbox::requeueInFlight() {
  const std::size_t count = inFlight_;
  // In-flight entries are the oldest ones, so the walk stops early.
  for (auto it = index_.begin(); it != index_.end() && inFlight_ > 0; ++it) {
    if (it->second.state == State::InFlight) {
      it->second.state = State::Stored;
      --inFlight_;
    }
  }
  return count;
}

std::vector<EntryRef> Outbox::sweepExpired() {
  const std::uint64_t now = clock_.unixSeconds();
  std::vector<std::uint64_t> seqs;
  for (auto e = expiries_.begin(); e != expiries_.end() && e->first <= now; ++e) {
    // One in flight may still be acknowledged; one not yet committed is swept once it is.
    if (index_.at(e->second).state == State::Stored) {
      seqs.push_back(e->second);
    }
  }
  std::sort(seqs.begin(), seqs.end());
  std::vector<EntryRef> expired;
  expired.reserve(seqs.size());
  for (std::uint64_t seq : seqs) {
    expired.push_back(store_->ref(seq));
    pendingDeletes_.push_back(seq);
    remove(index_.find(seq));
    ++expired_;
  }
  if (!seqs.empty()) {
    writesAdded(options_.deleteDelay);
  }
  return expired;
}

std::optional<std::uint64_t> Outbox::nextExpiry() const {
  for (const auto& [expiresAt, seq] : expiries_) {
    if (index_.at(seq).state != State::InFlight) {
      return expiresAt;
    }
  }
  return std::nullopt;
}

}  // namespace iothubd::outbox
