// SPDX-License-Identifier: MIT
// The outbox through its public API with a manual scheduler and clock: ordering, grouped commits,
// delivery, limits, expiry and persistence across reopen, on a real SQLite file in a temp dir.
#include "iothubd/outbox/outbox.hpp"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <optional>
#include <string>
#include <vector>

#include "manual_scheduler.hpp"
#include "outbox_test_support.hpp"
#include "temp_dir.hpp"

namespace iothubd::outbox {
namespace {

using namespace std::chrono_literals;
using testsupport::checked;
using testsupport::outgoing;
using testsupport::telemetry;

/// Records the outcome of one enqueue callback.
struct Commit {
  std::optional<core::Result<void>> result;
  Outbox::Committed callback() {
    return [this](core::Result<void> r) { result = std::move(r); };
  }
  [[nodiscard]] bool done() const { return result.has_value(); }
  [[nodiscard]] bool ok() const { return result && result->has_value(); }
};

std::vector<std::string> idsOf(const std::vector<OutboxMessage>& batch) {
  std::vector<std::string> ids;
  for (const auto& m : batch) {
    ids.push_back(m.message.messageId());
  }
  return ids;
}

std::vector<std::string> idsOf(const std::vector<EntryRef>& refs) {
  std::vector<std::string> ids;
  for (const auto& r : refs) {
    ids.push_back(r.messageId);
  }
  return ids;
}

class OutboxTest : public ::testing::Test {
 protected:
  OutboxOptions options() {
    OutboxOptions o;
    o.path = dir_ / "outbox.db";
    return o;
  }
  Outbox& open(const OutboxOptions& o) {
    outbox_.reset();
    auto opened = Outbox::open(o, sched_, sched_);
    if (!opened) {
      ADD_FAILURE() << opened.error().message;
      throw std::runtime_error("open failed");
    }
    EXPECT_FALSE(opened->movedAside);
    EXPECT_FALSE(opened->readOnly);
    outbox_ = std::move(opened->outbox);
    return *outbox_;
  }
  Outbox& open() { return open(options()); }
  /// Enqueues and expects acceptance; returns the seq.
  std::uint64_t put(const std::string& id, const std::string& app = "app1",
                    Outbox::Committed done = nullptr) {
    auto accepted = outbox_->enqueue(app, telemetry(id), std::move(done));
    EXPECT_TRUE(accepted) << accepted.error().message;
    return accepted ? accepted->seq : 0;
  }
  /// Lets every pending commit happen (and their callbacks run).
  void settle() { sched_.advance(outbox_->options().deleteDelay + 1ms); }

  iothubd::testing::TempDir dir_{"iothubd-outbox"};
  fakes::ManualScheduler sched_;
  std::unique_ptr<Outbox> outbox_;
};

TEST_F(OutboxTest, HandsOutMessagesInArrivalOrderWithEverythingTheTopicNeeds) {
  auto& box = open();
  proto::OutgoingMessage full;
  full.body = std::string("bin\0ary\xff", 8);
  full.properties = {{"alert level", "high & mighty"}, {"empty", ""}, {"ünï", "100%"}};
  full.system.messageId = "m1";
  full.system.correlationId = "c1";
  full.system.userId = "u1";
  full.system.contentType = "application/json";
  full.system.contentEncoding = "utf-8";
  full.system.expiryTimeUtc = "2099-01-01T00:00:00Z";
  full.system.outputName = "out";
  full.system.componentName = "thermostat";
  full.system.creationTimeUtc = "2023-11-14T22:13:20Z";
  ASSERT_TRUE(box.enqueue(":1.7", checked(full), nullptr));
  put("m2", ":1.9");
  put("m3", ":1.7");
  settle();

  auto batch = box.nextToSend();
  ASSERT_TRUE(batch) << batch.error().message;
  ASSERT_EQ(idsOf(*batch), (std::vector<std::string>{"m1", "m2", "m3"}));
  const OutboxMessage& first = batch->front();
  EXPECT_EQ(first.app, ":1.7");
  EXPECT_EQ((*batch)[1].app, ":1.9");
  EXPECT_LT(first.seq, (*batch)[1].seq);
  EXPECT_LT((*batch)[1].seq, (*batch)[2].seq);
  EXPECT_EQ(first.message.body(), full.body);
  EXPECT_EQ(first.message.system().correlationId, "c1");
  EXPECT_EQ(first.message.system().creationTimeUtc, full.system.creationTimeUtc);
  // The stored message rebuilds exactly the topic the original would have had.
  EXPECT_EQ(first.message.topic(proto::telemetryTopicPrefix("dev1", "")),
            proto::telemetryTopic("dev1", "", full));
  EXPECT_EQ(first.bytes, proto::hubMessageSize(full));
  EXPECT_EQ(first.message.hubBytes(), proto::hubMessageSize(full));
  EXPECT_EQ(first.enqueuedAt, sched_.unixSeconds());
  EXPECT_EQ(first.expiresAt, 4070908800u);
  EXPECT_FALSE((*batch)[1].message.system().contentType);
}

TEST_F(OutboxTest, RunsTheCallbackOnlyAfterTheCommitAndNeverInsideEnqueue) {
  auto opts = options();
  opts.commitDelay = 2ms;
  auto& box = open(opts);
  Commit c;
  put("m1", "app1", c.callback());
  EXPECT_FALSE(c.done());
  EXPECT_EQ(box.transactions(), 0u);
  EXPECT_EQ(box.length(), 1u);  // accepted, counted while waiting for its commit
  // A message waiting for its commit is not handed out for sending.
  EXPECT_TRUE(box.nextToSend()->empty());

  sched_.advance(1ms);
  EXPECT_FALSE(c.done());
  sched_.advance(1ms);
  ASSERT_TRUE(c.done());
  EXPECT_TRUE(c.ok());
  EXPECT_EQ(box.transactions(), 1u);
  EXPECT_EQ(box.nextToSend()->size(), 1u);
}

TEST_F(OutboxTest, GroupsABurstIntoFewTransactions) {
  auto opts = options();
  opts.commitBatch = 100;
  auto& box = open(opts);
  int committed = 0;
  for (int i = 0; i < 1000; ++i) {
    put("m" + std::to_string(i), "app1", [&committed](core::Result<void> r) {
      EXPECT_TRUE(r);
      ++committed;
    });
  }
  // Ten full batches were written during the burst, yet no callback ran inside enqueue().
  EXPECT_EQ(box.transactions(), 10u);
  EXPECT_EQ(committed, 0);
  sched_.runPosted();
  EXPECT_EQ(committed, 1000);

  // A trickle below the batch size shares one commit when the delay expires.
  for (int i = 0; i < 5; ++i) {
    put("t" + std::to_string(i));
  }
  settle();
  EXPECT_EQ(box.transactions(), 11u);
}

TEST_F(OutboxTest, OneCommitPerMessageWhenTheBatchIsOne) {
  auto opts = options();
  opts.commitBatch = 1;
  auto& box = open(opts);
  for (int i = 0; i < 20; ++i) {
    put("m" + std::to_string(i));
  }
  EXPECT_EQ(box.transactions(), 20u);
}

TEST_F(OutboxTest, KeepsAtMostMaxInflightOutAndRefillsAsDeliveriesArrive) {
  auto opts = options();
  opts.maxInflight = 3;
  auto& box = open(opts);
  for (int i = 1; i <= 5; ++i) {
    put("m" + std::to_string(i));
  }
  settle();
  auto first = box.nextToSend();
  ASSERT_EQ(idsOf(*first), (std::vector<std::string>{"m1", "m2", "m3"}));
  EXPECT_EQ(box.inFlight(), 3u);
  EXPECT_TRUE(box.nextToSend()->empty());

  EXPECT_TRUE(box.markDelivered((*first)[1].seq));
  EXPECT_EQ(idsOf(*box.nextToSend()), (std::vector<std::string>{"m4"}));
  EXPECT_EQ(box.delivered(), 1u);
  EXPECT_EQ(box.length(), 4u);
}

TEST_F(OutboxTest, MarkDeliveredIgnoresWhatIsNotInFlight) {
  auto& box = open();
  const auto seq = put("m1");
  settle();
  EXPECT_FALSE(box.markDelivered(seq));  // stored but never handed out
  EXPECT_FALSE(box.markDelivered(seq + 100));
  ASSERT_EQ(box.nextToSend()->size(), 1u);
  EXPECT_TRUE(box.markDelivered(seq));
  EXPECT_FALSE(box.markDelivered(seq));  // a duplicate PUBACK
  EXPECT_EQ(box.delivered(), 1u);
  EXPECT_EQ(box.length(), 0u);
  EXPECT_EQ(box.bytes(), 0u);
}

TEST_F(OutboxTest, RequeueAfterReconnectResendsUnackedInOrderWithTheSameIds) {
  auto& box = open();
  for (int i = 1; i <= 4; ++i) {
    put("m" + std::to_string(i));
  }
  settle();
  auto sent = box.nextToSend();
  ASSERT_EQ(sent->size(), 4u);
  const std::uint64_t acked[] = {(*sent)[1].seq};
  EXPECT_EQ(box.markDelivered(acked), 1u);

  EXPECT_EQ(box.requeueInFlight(), 3u);
  EXPECT_EQ(box.inFlight(), 0u);
  auto again = box.nextToSend();
  EXPECT_EQ(idsOf(*again), (std::vector<std::string>{"m1", "m3", "m4"}));
  EXPECT_EQ((*again)[0].seq, (*sent)[0].seq);
}

TEST_F(OutboxTest, MessagesSurviveCloseAndReopenAndNewOnesQueueBehindThem) {
  {
    auto& box = open();
    put("m1", "a");
    put("m2", "b");
    const auto delivered = put("m3", "c");
    settle();
    auto batch = box.nextToSend();  // in flight when the daemon stops: sent again later
    ASSERT_EQ(batch->size(), 3u);
    ASSERT_TRUE(box.markDelivered(delivered));
    put("m4", "d");  // never committed before close: the destructor stores it
    outbox_.reset();
  }
  auto& box = open();
  EXPECT_EQ(box.length(), 3u);
  EXPECT_EQ(box.bytes(), 3 * telemetry("m1").hubBytes());
  put("m5");
  settle();
  auto batch = box.nextToSend();
  EXPECT_EQ(idsOf(*batch), (std::vector<std::string>{"m1", "m2", "m4", "m5"}));
  EXPECT_EQ((*batch)[2].app, "d");
}

TEST_F(OutboxTest, RejectsWhenFullUnderTheRejectPolicy) {
  auto opts = options();
  opts.maxMessages = 2;
  auto& box = open(opts);
  put("m1");
  put("m2");
  Commit c;
  auto refused = box.enqueue("app1", telemetry("m3"), c.callback());
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, core::Errc::QueueFull);
  settle();
  EXPECT_FALSE(c.done());
  EXPECT_EQ(box.length(), 2u);
  EXPECT_EQ(box.dropped(), 0u);

  // After a delivery there is room again.
  auto batch = box.nextToSend();
  ASSERT_TRUE(box.markDelivered(batch->front().seq));
  EXPECT_TRUE(box.enqueue("app1", telemetry("m3"), nullptr));
}

TEST_F(OutboxTest, RejectsWhenTheByteLimitWouldBeExceeded) {
  auto opts = options();
  const auto size = telemetry("m1").hubBytes();
  opts.maxBytes = 2 * size + size / 2;
  auto& box = open(opts);
  put("m1");
  put("m2");
  auto refused = box.enqueue("app1", telemetry("m3"), nullptr);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, core::Errc::QueueFull);
  EXPECT_EQ(box.bytes(), 2 * size);
}

TEST_F(OutboxTest, DropOldestMakesRoomReportsTheDroppedAndPersistsTheDrop) {
  auto opts = options();
  opts.maxMessages = 3;
  opts.fullPolicy = FullPolicy::DropOldest;
  auto& box = open(opts);
  put("m1", "a");
  put("m2", "b");
  put("m3", "c");
  settle();
  auto accepted = box.enqueue("d", telemetry("m4"), nullptr);
  ASSERT_TRUE(accepted) << accepted.error().message;
  ASSERT_EQ(accepted->dropped.size(), 1u);
  EXPECT_EQ(accepted->dropped[0].messageId, "m1");
  EXPECT_EQ(accepted->dropped[0].app, "a");
  EXPECT_EQ(box.dropped(), 1u);
  EXPECT_EQ(box.length(), 3u);
  settle();
  EXPECT_EQ(idsOf(*box.nextToSend()), (std::vector<std::string>{"m2", "m3", "m4"}));

  open(opts);  // the drop was committed, not just forgotten in memory
  EXPECT_EQ(idsOf(*outbox_->nextToSend()), (std::vector<std::string>{"m2", "m3", "m4"}));
}

TEST_F(OutboxTest, DropOldestNeverDropsMessagesInFlight) {
  auto opts = options();
  opts.maxMessages = 2;
  opts.fullPolicy = FullPolicy::DropOldest;
  auto& box = open(opts);
  put("m1");
  put("m2");
  settle();
  ASSERT_EQ(box.nextToSend()->size(), 2u);
  auto refused = box.enqueue("app1", telemetry("m3"), nullptr);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, core::Errc::QueueFull);
  EXPECT_EQ(box.dropped(), 0u);
}

TEST_F(OutboxTest, AMessagesOwnExpiryWinsOverTheDefaultTtl) {
  auto opts = options();
  opts.defaultTtl = 60s;
  sched_.unixBase_ = 1704067200;  // 2024-01-01T00:00:00Z
  auto& box = open(opts);
  const std::uint64_t t0 = sched_.unixSeconds();
  auto shortLived = outgoing("short");
  shortLived.system.expiryTimeUtc = "2024-01-01T00:00:10Z";  // earlier than the TTL
  auto longLived = outgoing("long");
  longLived.system.expiryTimeUtc = "2024-01-01T00:10:00Z";  // later than the TTL
  put("ttl");
  ASSERT_TRUE(box.enqueue("app1", checked(shortLived), nullptr));
  ASSERT_TRUE(box.enqueue("app1", checked(longLived), nullptr));
  settle();
  EXPECT_EQ(box.nextExpiry(), t0 + 10);
  EXPECT_TRUE(box.sweepExpired().empty());

  sched_.advance(10s);
  // Not handed out once expired, even before a sweep removes it.
  auto batch = box.nextToSend();
  EXPECT_EQ(idsOf(*batch), (std::vector<std::string>{"ttl", "long"}));
  box.requeueInFlight();
  EXPECT_EQ(idsOf(box.sweepExpired()), (std::vector<std::string>{"short"}));
  EXPECT_EQ(box.nextExpiry(), t0 + 60);

  sched_.advance(50s);
  EXPECT_EQ(idsOf(box.sweepExpired()), (std::vector<std::string>{"ttl"}));
  EXPECT_EQ(box.expired(), 2u);
  EXPECT_EQ(box.length(), 1u);
  settle();
  open(opts);  // the expiries were committed
  EXPECT_EQ(idsOf(*outbox_->nextToSend()), (std::vector<std::string>{"long"}));
}

TEST_F(OutboxTest, AMessageInFlightIsNotExpiredUntilItComesBack) {
  auto opts = options();
  opts.defaultTtl = 5s;
  auto& box = open(opts);
  const auto seq = put("m1");
  settle();
  ASSERT_EQ(box.nextToSend()->size(), 1u);
  sched_.advance(10s);
  EXPECT_TRUE(box.sweepExpired().empty());  // its PUBACK may still come
  EXPECT_EQ(box.nextExpiry(), std::nullopt);
  box.requeueInFlight();
  auto expired = box.sweepExpired();
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0].seq, seq);
  EXPECT_EQ(expired[0].app, "app1");
  EXPECT_FALSE(box.markDelivered(seq));
}

TEST_F(OutboxTest, ABacklogIsReadBackInRunsAndAnUnreadableRowIsDiscardedAlone) {
  auto opts = options();
  opts.maxInflight = 5;
  open(opts);
  for (int i = 0; i < 12; ++i) {
    auto m = outgoing("m" + std::to_string(i));
    m.properties["n"] = std::to_string(i) + "/12";
    ASSERT_TRUE(outbox_->enqueue("app", checked(std::move(m)), nullptr));
  }
  outbox_.reset();  // stored; after a restart nothing of it is in memory
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(options().path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "UPDATE outbox SET properties = 'not a bag' WHERE message_id = 'm3'",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);

  auto& box = open(opts);
  auto first = box.nextToSend();
  ASSERT_TRUE(first) << first.error().message;
  EXPECT_EQ(idsOf(*first), (std::vector<std::string>{"m0", "m1", "m2", "m4"}));
  EXPECT_EQ(box.dropped(), 1u);
  EXPECT_EQ((*first)[3].message.propertyBag(), "%24.mid=m4&n=4%2F12");
  for (const auto& m : *first) {
    ASSERT_TRUE(box.markDelivered(m.seq));
  }
  std::vector<std::string> rest;
  for (auto batch = box.nextToSend(); batch && !batch->empty(); batch = box.nextToSend()) {
    for (const auto& m : *batch) {
      rest.push_back(m.message.messageId());
      EXPECT_EQ(m.message.customPropertyBag(), "n=" + m.message.messageId().substr(1) + "%2F12");
      ASSERT_TRUE(box.markDelivered(m.seq));
    }
  }
  EXPECT_EQ(rest, (std::vector<std::string>{"m5", "m6", "m7", "m8", "m9", "m10", "m11"}));
  EXPECT_EQ(box.length(), 0u);
}

TEST_F(OutboxTest, FlushCommitsAndAnswersAtOnce) {
  auto& box = open();
  Commit c;
  put("m1", "app1", c.callback());
  ASSERT_TRUE(box.flush());
  EXPECT_TRUE(c.ok());
  EXPECT_EQ(box.transactions(), 1u);
}

TEST_F(OutboxTest, WithAWorkerALoneMessageCommitsAtOnceAndArrivalsGroupWhileItRuns) {
  testsupport::ThreadedOffLoop worker;
  auto opened = Outbox::open(options(), sched_, sched_, worker.runner());
  ASSERT_TRUE(opened) << opened.error().message;
  outbox_ = std::move(opened->outbox);
  auto& box = *outbox_;
  std::vector<std::string> committed;
  const auto record = [&committed](std::string id) -> Outbox::Committed {
    return [&committed, id](core::Result<void> r) {
      EXPECT_TRUE(r);
      committed.push_back(id);
    };
  };
  put("m1", "app1", record("m1"));
  // No waiting for company (issue 13): the commit started with the message, time stood still.
  ASSERT_EQ(worker.running(), 1u);
  put("m2", "app1", record("m2"));  // accepted while the first commit is being written
  put("m3", "app1", record("m3"));
  EXPECT_EQ(worker.running(), 1u);
  EXPECT_TRUE(committed.empty());
  EXPECT_TRUE(box.nextToSend()->empty());

  worker.finishRunning();
  EXPECT_EQ(committed, (std::vector<std::string>{"m1"}));
  EXPECT_EQ(worker.running(), 1u);  // m2 and m3 form the next group at once
  auto batch = box.nextToSend();    // read on the loop while the worker writes m2 and m3
  ASSERT_TRUE(batch) << batch.error().message;
  ASSERT_EQ(idsOf(*batch), (std::vector<std::string>{"m1"}));
  EXPECT_TRUE(box.markDelivered(batch->front().seq));
  worker.finishAll();
  EXPECT_EQ(committed, (std::vector<std::string>{"m1", "m2", "m3"}));
  EXPECT_EQ(box.transactions(), 2u);
  ASSERT_TRUE(box.flush());  // the delete

  open();
  EXPECT_EQ(idsOf(*outbox_->nextToSend()), (std::vector<std::string>{"m2", "m3"}));
}

TEST_F(OutboxTest, FlushAndCloseWaitForACommitRunningOnAWorker) {
  testsupport::ThreadedOffLoop worker;
  auto opened = Outbox::open(options(), sched_, sched_, worker.runner());
  ASSERT_TRUE(opened) << opened.error().message;
  outbox_ = std::move(opened->outbox);
  int calls = 0;
  put("m1", "app1", [&calls](core::Result<void> r) {
    EXPECT_TRUE(r);
    ++calls;
  });
  sched_.advance(outbox_->options().commitDelay);
  ASSERT_EQ(worker.running(), 1u);
  ASSERT_TRUE(outbox_->flush());
  EXPECT_EQ(calls, 1);

  put("m2");
  sched_.advance(outbox_->options().commitDelay);
  outbox_.reset();     // waits for m2's commit
  worker.finishAll();  // the late completions find nothing left to do
  EXPECT_EQ(calls, 1);
  open();
  EXPECT_EQ(idsOf(*outbox_->nextToSend()), (std::vector<std::string>{"m1", "m2"}));
}

TEST_F(OutboxTest, DeletesWaitLongerThanStoresButAreGrouped) {
  auto opts = options();
  opts.commitDelay = 2ms;
  opts.deleteDelay = 100ms;
  auto& box = open(opts);
  for (int i = 0; i < 10; ++i) {
    put("m" + std::to_string(i));
  }
  sched_.advance(2ms);
  ASSERT_EQ(box.transactions(), 1u);
  auto batch = box.nextToSend();
  ASSERT_EQ(batch->size(), 10u);
  for (const auto& m : *batch) {
    box.markDelivered(m.seq);
  }
  sched_.advance(50ms);
  EXPECT_EQ(box.transactions(), 1u);
  sched_.advance(50ms);
  EXPECT_EQ(box.transactions(), 2u);  // ten deletes, one commit
}

TEST(FullPolicy, ParsesTheConfigValues) {
  EXPECT_EQ(parseFullPolicy("reject"), FullPolicy::Reject);
  EXPECT_EQ(parseFullPolicy("drop-oldest"), FullPolicy::DropOldest);
  auto bad = parseFullPolicy("drop-newest");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, core::Errc::Config);
}

}  // namespace
}  // namespace iothubd::outbox
