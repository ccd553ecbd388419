// SPDX-License-Identifier: MIT
#include "iothubd/outbox/outbox.hpp"

#include <algorithm>

#include "iothubd/core/log.hpp"
#include "outbox_store.hpp"
#include "utc_time.hpp"

namespace iothubd::outbox {

using core::Errc;

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
                                          core::Clock& clock) {
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
  std::unique_ptr<Outbox> outbox(
      new Outbox(std::move(options), scheduler, clock, std::move(store->store), store->readOnly));
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
               std::unique_ptr<OutboxStore> store, bool readOnly)
    : options_(std::move(options)),
      scheduler_(scheduler),
      clock_(clock),
      store_(std::move(store)),
      readOnly_(readOnly) {
  commitTimer_ = scheduler_.createTimer([this] { onCommitTimer(); });
}

Outbox::~Outbox() {
  // What was accepted is stored even if nobody is left to be told.
  (void)commit();
}

core::Result<Outbox::Accepted> Outbox::enqueue(std::string app, proto::OutgoingMessage message,
                                               Committed onCommitted) {
  if (readOnly_) {
    return core::fail(Errc::Io,
                      "outbox " + store_->path() + " is read-only: new messages cannot be stored");
  }
  if (!message.system.messageId || message.system.messageId->empty()) {
    return core::fail(Errc::InvalidArgument, "a message for the outbox needs a message id");
  }
  if (auto valid = proto::validateCustomProperties(message.properties); !valid) {
    return core::fail(valid.error());
  }
  const std::uint64_t size = proto::hubMessageSize(message);
  if (size > proto::kMaxTelemetryBytes) {
    return core::fail(Errc::MessageTooLarge, "message of " + std::to_string(size) +
                                                 " bytes is over the hub's limit of " +
                                                 std::to_string(proto::kMaxTelemetryBytes));
  }
  const std::uint64_t now = clock_.unixSeconds();
  std::optional<std::uint64_t> expiresAt;
  if (const auto& own = message.system.expiryTimeUtc) {
    // The sender's own expiry wins over the default TTL, earlier or later.
    expiresAt = parseUtcTime(*own);
    if (!expiresAt) {
      return core::fail(Errc::InvalidArgument, "system property 'expiry-time-utc' ('" + *own +
                                                   "') is not an ISO 8601 UTC time");
    }
    // 0 means "never" in the index; 1970-01-01T00:00:00Z is as expired as any past time.
    expiresAt = std::max<std::uint64_t>(*expiresAt, 1);
  } else if (options_.defaultTtl.count() > 0) {
    expiresAt = now + static_cast<std::uint64_t>(options_.defaultTtl.count());
  }
  auto dropped = makeRoom(size);
  if (!dropped) {
    return core::fail(dropped.error());
  }

  const std::uint64_t seq = nextSeq_++;
  index_.emplace_hint(index_.end(), seq, Meta{size, expiresAt.value_or(0), State::Pending});
  if (expiresAt) {
    expiries_.emplace(*expiresAt, seq);
  }
  ++length_;
  bytes_ += size;
  PendingInsert pending;
  pending.row.seq = seq;
  pending.row.app = std::move(app);
  pending.row.message = std::move(message);
  pending.row.enqueuedAt = now;
  pending.row.expiresAt = expiresAt;
  pending.row.bytes = size;
  pending.done = std::move(onCommitted);
  pendingInserts_.push_back(std::move(pending));
  writesAdded(options_.commitDelay);
  return Accepted{seq, std::move(*dropped)};
}

core::Result<std::vector<EntryRef>> Outbox::makeRoom(std::uint64_t newBytes) {
  const auto fits = [&](std::uint64_t count, std::uint64_t bytes) {
    return count + 1 <= options_.maxMessages && bytes + newBytes <= options_.maxBytes;
  };
  if (fits(length_, bytes_)) {
    return std::vector<EntryRef>{};
  }
  const std::string usage = std::to_string(length_) + " messages, " + std::to_string(bytes_) +
                            " bytes (limits " + std::to_string(options_.maxMessages) + ", " +
                            std::to_string(options_.maxBytes) + ")";
  if (newBytes > options_.maxBytes) {
    return core::fail(Errc::QueueFull, "message of " + std::to_string(newBytes) +
                                           " bytes is larger than outbox_max_bytes (" +
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
    auto [first, last] = expiries_.equal_range(meta.expiresAt);
    for (auto e = first; e != last; ++e) {
      if (e->second == it->first) {
        expiries_.erase(e);
        break;
      }
    }
  }
  index_.erase(it);
}

void Outbox::writesAdded(std::chrono::microseconds delay) {
  if (readOnly_) {
    // Nothing can be persisted; deletes stay in memory (a restart redelivers those messages).
    pendingDeletes_.clear();
    return;
  }
  if (pendingInserts_.size() + pendingDeletes_.size() >= options_.commitBatch) {
    // Committed now so the batch stays bounded, but callbacks never run inside the caller's
    // enqueue()/markDelivered(): they are posted to the loop.
    auto completions = commit();
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
  // `this` may be destroyed by a callback; runCompletions touches only its argument.
  auto completions = commit();
  runCompletions(completions);
}

void Outbox::runCompletions(Completions& completions) {
  for (auto& [done, result] : completions) {
    if (done) {
      done(std::move(result));
    }
  }
}

Outbox::Completions Outbox::commit() {
  Completions completions;
  if (pendingInserts_.empty() && pendingDeletes_.empty()) {
    return completions;
  }
  commitTimer_->disarm();
  commitDue_.reset();
  std::vector<const OutboxMessage*> rows;
  rows.reserve(pendingInserts_.size());
  for (const auto& pending : pendingInserts_) {
    rows.push_back(&pending.row);
  }
  auto written = store_->write(rows, pendingDeletes_);
  auto inserts = std::move(pendingInserts_);
  pendingInserts_.clear();
  completions.reserve(inserts.size());
  if (written) {
    ++transactions_;
    writeError_.reset();
    pendingDeletes_.clear();
    for (auto& pending : inserts) {
      if (auto it = index_.find(pending.row.seq); it != index_.end()) {
        it->second.state = State::Stored;
      }
      completions.emplace_back(std::move(pending.done), core::Result<void>{});
    }
    return completions;
  }
  // The messages of a failed transaction were never stored: they leave the outbox and their
  // senders get the error. Deletes stay pending and are tried again later.
  writeError_ = written.error();
  for (auto& pending : inserts) {
    if (auto it = index_.find(pending.row.seq); it != index_.end()) {
      remove(it);
    }
    completions.emplace_back(std::move(pending.done), core::fail(written.error()));
  }
  if (!pendingDeletes_.empty()) {
    scheduleCommit(options_.retryDelay);
  }
  return completions;
}

core::Result<void> Outbox::flush() {
  const bool pending = !pendingInserts_.empty() || !pendingDeletes_.empty();
  const std::uint64_t before = transactions_;
  auto completions = commit();
  std::optional<core::Error> error;
  if (pending && transactions_ == before) {
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
    auto row = store_->read(it->first);
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
