// SPDX-License-Identifier: MIT
// The telemetry pipeline (issue 13) with a real HubSession over the fake MQTT transport, a real
// outbox on SQLite in a temp dir (commits on the loop), and the manual scheduler and clock: Send
// goes from memory to the session and is answered on its PUBACK; Queue is answered once stored
// and delivered from the outbox.
#include "iothubd/delivery/telemetry_pipeline.hpp"

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "fake_mqtt_transport.hpp"
#include "manual_scheduler.hpp"
#include "outbox_test_support.hpp"
#include "temp_dir.hpp"

namespace iothubd::delivery {
namespace {

using namespace std::chrono_literals;
using core::Errc;
using fakes::FakeMqttTransport;
using fakes::ManualScheduler;

constexpr const char* kKey = "dGhpcy1pcy1hLXRlc3Qta2V5LW9mLTMyLWJ5dGVzISE=";
constexpr const char* kTopic = "devices/dev1/messages/events/";

/// Records how one call was answered.
template <class T>
struct Answer {
  std::optional<core::Result<T>> result;
  int calls = 0;
  std::function<void(core::Result<T>)> callback() {
    return [this](core::Result<T> r) {
      ++calls;
      result = std::move(r);
    };
  }
  [[nodiscard]] bool done() const { return result.has_value(); }
  [[nodiscard]] bool ok() const { return result && result->has_value(); }
  [[nodiscard]] Errc code() const { return result->error().code; }
  [[nodiscard]] const std::string& text() const { return result->error().message; }
};
using Single = Answer<std::string>;
using Batch = Answer<std::vector<std::string>>;

class Notifications : public TelemetryPipeline::Listener {
 public:
  void onDelivered(const std::string& app, const std::vector<std::string>& ids) override {
    delivered.insert(delivered.end(), ids.begin(), ids.end());
    deliveredCalls.emplace_back(app, ids);
  }
  void onExpired(const std::string& app, const std::vector<std::string>& ids) override {
    expired.insert(expired.end(), ids.begin(), ids.end());
    expiredCalls.emplace_back(app, ids);
  }
  void onCountersChanged() override { ++countersChanged; }
  std::vector<std::string> delivered;
  std::vector<std::string> expired;
  /// Each call as made: the app and its ids.
  std::vector<std::pair<std::string, std::vector<std::string>>> deliveredCalls;
  std::vector<std::pair<std::string, std::vector<std::string>>> expiredCalls;
  int countersChanged = 0;
};

class TelemetryPipelineTest : public ::testing::Test {
 protected:
  session::SessionOptions sessionOptions() {
    session::SessionOptions o;
    o.hubHostname = "contoso.azure-devices.net";
    o.deviceId = "dev1";
    o.sharedAccessKey = core::Secret<>(kKey);
    o.operationTimeout = 60s;
    o.connectionRetryMaxDelay = 10s;
    o.ensureDesiredProperties = false;
    return o;
  }
  outbox::OutboxOptions outboxOptions() {
    outbox::OutboxOptions o;
    o.path = dir_ / "outbox.db";
    return o;
  }
  /// The pipeline with an outbox (committing on the loop, as without a worker), or without.
  TelemetryPipeline& make(session::SessionOptions s, std::optional<outbox::OutboxOptions> o) {
    session_.emplace(clock_, clock_, transport_, std::move(s));
    std::unique_ptr<outbox::Outbox> box;
    if (o) {
      auto opened = outbox::Outbox::open(*o, clock_, clock_);
      if (!opened) {
        throw std::runtime_error(opened.error().message);
      }
      box = std::move(opened->outbox);
      outbox_ = box.get();
    }
    pipeline_.emplace(clock_, clock_, *session_, std::move(box), "no state directory");
    pipeline_->setListener(&notifications_);
    return *pipeline_;
  }
  TelemetryPipeline& make() { return make(sessionOptions(), outboxOptions()); }
  TelemetryPipeline& connected() {
    auto& p = make();
    session_->start();
    transport_.acceptConnect();
    return p;
  }

  static proto::OutgoingMessage outgoing(const std::string& id) {
    return outbox::testsupport::outgoing(id, "{\"t\":1}");
  }
  static proto::CheckedMessage checked(proto::OutgoingMessage m) {
    return outbox::testsupport::checked(std::move(m));
  }
  static proto::CheckedMessage message(const std::string& id) { return checked(outgoing(id)); }
  static std::vector<proto::CheckedMessage> batch(const std::string& prefix, int count) {
    std::vector<proto::CheckedMessage> out;
    for (int i = 0; i < count; ++i) {
      out.push_back(message(prefix + std::to_string(i)));
    }
    return out;
  }
  /// The $.mid of every publish so far, in order.
  std::vector<std::string> publishedIds() const {
    std::vector<std::string> ids;
    for (const auto& p : transport_.published) {
      const auto at = p.topic.find("%24.mid=");
      ids.push_back(
          at == std::string::npos ? "" : p.topic.substr(at + 8, p.topic.find('&', at) - at - 8));
    }
    return ids;
  }
  void ackAll() {
    const auto published = transport_.published;
    for (const auto& p : published) {
      transport_.ack(p.mid);
    }
  }
  /// Lets the outbox's grouped commit (2 ms without a worker) and the notifications happen.
  void settle() { clock_.advance(TelemetryPipeline::kBatchInterval + 1ms); }

  iothubd::testing::TempDir dir_{"iothubd-pipeline"};
  ManualScheduler clock_;
  FakeMqttTransport transport_;
  Notifications notifications_;
  std::optional<session::HubSession> session_;
  outbox::Outbox* outbox_ = nullptr;
  std::optional<TelemetryPipeline> pipeline_;
};

// --- Send ----------------------------------------------------------------------------------------

TEST_F(TelemetryPipelineTest, SendPublishesTheEncodedTopicAndAnswersOnlyOnItsPubackWithoutStoring) {
  auto& p = connected();
  auto m = outgoing("m1");
  m.properties["alert level"] = "high";
  Single sent;
  p.send(":1.7", checked(std::move(m)), sent.callback());
  ASSERT_EQ(transport_.published.size(), 1u);
  EXPECT_EQ(transport_.published[0].topic, std::string(kTopic) + "%24.mid=m1&alert%20level=high");
  EXPECT_EQ(transport_.published[0].payload, "{\"t\":1}");
  EXPECT_EQ(transport_.published[0].qos, 1);
  settle();
  EXPECT_FALSE(sent.done());
  transport_.ack(transport_.published[0].mid);
  ASSERT_TRUE(sent.ok());
  EXPECT_EQ(**sent.result, "m1");
  // Nothing of it touched the outbox.
  EXPECT_EQ(outbox_->transactions(), 0u);
  EXPECT_EQ(p.length(), 0u);
  EXPECT_EQ(p.delivered(), 1u);
  settle();
  // Counted in the MessagesDelivered property; the signal is for queued messages (the reply is
  // a Send's notice).
  EXPECT_TRUE(notifications_.delivered.empty());
  EXPECT_GE(notifications_.countersChanged, 1);
}

TEST_F(TelemetryPipelineTest, SendWithoutPubackFailsAfterOperationTimeoutAndALatePubackIsIgnored) {
  auto& p = connected();
  Single sent;
  p.send(":1.7", message("m1"), sent.callback());
  clock_.advance(59s);
  EXPECT_FALSE(sent.done());
  clock_.advance(1s);
  ASSERT_TRUE(sent.done());
  EXPECT_EQ(sent.code(), Errc::Timeout);
  transport_.ack(transport_.published[0].mid);
  EXPECT_EQ(sent.calls, 1);
}

TEST_F(TelemetryPipelineTest, SendWhoseLinkDropsGoesAgainWithTheSameIdAfterTheReconnect) {
  auto& p = connected();
  Single sent;
  p.send(":1.7", message("m1"), sent.callback());
  clock_.advance(5s);
  transport_.drop();
  clock_.runPosted();
  EXPECT_FALSE(sent.done()) << "a drop is no answer: the message goes again";
  clock_.advance(100ms);  // the first reconnect comes almost at once
  ASSERT_EQ(transport_.connects.size(), 2u);
  transport_.acceptConnect();
  ASSERT_EQ(publishedIds(), (std::vector<std::string>{"m1", "m1"}));
  transport_.ack(transport_.published[1].mid);
  EXPECT_TRUE(sent.ok());
  EXPECT_EQ(p.delivered(), 1u);
}

TEST_F(TelemetryPipelineTest, ADroppedSendIsStillBoundByItsOwnDeadline) {
  auto& p = connected();
  Single sent;
  p.send(":1.7", message("m1"), sent.callback());
  clock_.advance(50s);
  transport_.drop();
  clock_.runPosted();
  clock_.advance(100ms);
  transport_.failConnect("no route to host");  // the hub stays away
  clock_.advance(9s);
  EXPECT_FALSE(sent.done());
  clock_.advance(1s);  // 60 s after the call, not after the resend
  ASSERT_TRUE(sent.done());
  EXPECT_EQ(sent.code(), Errc::Timeout);
}

TEST_F(TelemetryPipelineTest, SendWithoutAConnectionAndWithoutAutoConnectIsNoConnection) {
  auto s = sessionOptions();
  s.autoConnect = false;
  auto& p = make(std::move(s), outboxOptions());
  Single sent;
  Batch many;
  p.send(":1.7", message("m1"), sent.callback());
  p.sendBatch(":1.7", batch("b", 2), many.callback());
  ASSERT_TRUE(sent.done());
  EXPECT_EQ(sent.code(), Errc::NotConnected);
  ASSERT_TRUE(many.done());
  EXPECT_EQ(many.code(), Errc::NotConnected);
  EXPECT_TRUE(transport_.connects.empty());
  EXPECT_TRUE(transport_.published.empty());
}

TEST_F(TelemetryPipelineTest, SendWhileConnectingIsHeldWithinMaxQueuedMessages) {
  auto s = sessionOptions();
  s.maxQueuedMessages = 2;
  auto& p = make(std::move(s), outboxOptions());
  Single first, second, third;
  p.send(":1.7", message("m1"), first.callback());  // auto_connect opens the connection
  p.send(":1.7", message("m2"), second.callback());
  p.send(":1.7", message("m3"), third.callback());
  ASSERT_EQ(transport_.connects.size(), 1u);
  ASSERT_TRUE(third.done());
  EXPECT_EQ(third.code(), Errc::QueueFull);
  EXPECT_FALSE(first.done());
  transport_.acceptConnect();
  EXPECT_EQ(publishedIds(), (std::vector<std::string>{"m1", "m2"}));
  ackAll();
  EXPECT_TRUE(first.ok());
  EXPECT_TRUE(second.ok());
}

TEST_F(TelemetryPipelineTest, SendOfAMessageWhoseExpiryPassedIsNeverPublished) {
  auto& p = connected();
  auto m = outgoing("old");
  m.system.expiryTimeUtc = "2001-01-01T00:00:00Z";
  Single sent;
  p.send(":1.7", checked(std::move(m)), sent.callback());
  ASSERT_TRUE(sent.done());
  EXPECT_EQ(sent.code(), Errc::Timeout);
  EXPECT_NE(sent.text().find("\"old\" expired"), std::string::npos) << sent.text();
  EXPECT_TRUE(transport_.published.empty());
}

TEST_F(TelemetryPipelineTest, DisconnectCancelsWaitingSends) {
  auto& p = connected();
  Single sent;
  p.send(":1.7", message("m1"), sent.callback());
  session_->disconnect([](core::Result<void>) {});
  ASSERT_TRUE(sent.done());
  EXPECT_EQ(sent.code(), Errc::Cancelled);
}

TEST_F(TelemetryPipelineTest, SendWorksWithoutAnOutbox) {
  auto& p = make(sessionOptions(), std::nullopt);
  session_->start();
  transport_.acceptConnect();
  EXPECT_FALSE(p.durable());
  Single sent;
  p.send(":1.7", message("m1"), sent.callback());
  ackAll();
  EXPECT_TRUE(sent.ok());
}

// --- Queue ---------------------------------------------------------------------------------------

TEST_F(TelemetryPipelineTest, QueueAnswersOnceStoredThenDeliversFromTheOutbox) {
  auto& p = connected();
  Single queued;
  p.queue(":1.7", message("q1"), queued.callback());
  EXPECT_FALSE(queued.done()) << "answered before its commit";
  EXPECT_TRUE(transport_.published.empty()) << "published before it was stored";
  EXPECT_EQ(p.length(), 1u);
  clock_.advance(outbox_->options().commitDelay);
  ASSERT_TRUE(queued.ok());
  EXPECT_EQ(**queued.result, "q1");
  EXPECT_EQ(outbox_->transactions(), 1u);
  ASSERT_EQ(publishedIds(), std::vector<std::string>{"q1"});
  EXPECT_EQ(transport_.published[0].topic, std::string(kTopic) + "%24.mid=q1");
  transport_.ack(transport_.published[0].mid);
  EXPECT_EQ(p.length(), 0u);
  EXPECT_EQ(p.delivered(), 1u);
  settle();
  EXPECT_EQ(notifications_.delivered, std::vector<std::string>{"q1"});
}

TEST_F(TelemetryPipelineTest, EachAppIsToldOnlyOfItsOwnDeliveries) {
  auto& p = connected();
  p.queue(":1.7", message("a1"), nullptr);
  p.queue(":1.8", message("b1"), nullptr);
  p.queue(":1.7", message("a2"), nullptr);
  clock_.advance(outbox_->options().commitDelay);
  ASSERT_EQ(publishedIds(), (std::vector<std::string>{"a1", "b1", "a2"}));
  for (const auto& m : transport_.published) {
    transport_.ack(m.mid);
  }
  settle();
  using Call = std::pair<std::string, std::vector<std::string>>;
  EXPECT_EQ(notifications_.deliveredCalls,
            (std::vector<Call>{{":1.7", {"a1", "a2"}}, {":1.8", {"b1"}}}));
}

TEST_F(TelemetryPipelineTest, QueuedMessagesInFlightGoAgainAfterAReconnect) {
  auto& p = connected();
  p.queue(":1.7", message("q1"), nullptr);
  p.queue(":1.7", message("q2"), nullptr);
  clock_.advance(outbox_->options().commitDelay);
  ASSERT_EQ(publishedIds(), (std::vector<std::string>{"q1", "q2"}));
  transport_.ack(transport_.published[0].mid);
  transport_.drop();
  clock_.advance(100ms);
  transport_.acceptConnect();
  EXPECT_EQ(publishedIds(), (std::vector<std::string>{"q1", "q2", "q2"}));
  transport_.ack(transport_.published[2].mid);
  EXPECT_EQ(p.length(), 0u);
}

TEST_F(TelemetryPipelineTest, QueueWaitsForTheHubAndIsDeliveredWhenItComes) {
  auto s = sessionOptions();
  s.autoConnect = false;
  auto& p = make(std::move(s), outboxOptions());
  Single queued;
  p.queue(":1.7", message("q1"), queued.callback());
  clock_.advance(outbox_->options().commitDelay);
  EXPECT_TRUE(queued.ok()) << "stored: answered without a connection";
  EXPECT_TRUE(transport_.published.empty());
  session_->start();
  transport_.acceptConnect();
  EXPECT_EQ(publishedIds(), std::vector<std::string>{"q1"});
}

TEST_F(TelemetryPipelineTest, QueueWithoutAnOutboxFailsWithTheReason) {
  auto& p = make(sessionOptions(), std::nullopt);
  Single queued;
  Batch many;
  p.queue(":1.7", message("q1"), queued.callback());
  p.queueBatch(":1.7", batch("b", 2), many.callback());
  ASSERT_TRUE(queued.done());
  EXPECT_EQ(queued.code(), Errc::Io);
  EXPECT_NE(queued.text().find("no state directory"), std::string::npos) << queued.text();
  ASSERT_TRUE(many.done());
  EXPECT_EQ(many.code(), Errc::Io);
}

TEST_F(TelemetryPipelineTest, AFullOutboxRefusesUnderTheRejectPolicy) {
  auto o = outboxOptions();
  o.maxMessages = 2;
  auto& p = make(sessionOptions(), o);
  Single first, second, third;
  p.queue(":1.7", message("q1"), first.callback());
  p.queue(":1.7", message("q2"), second.callback());
  p.queue(":1.7", message("q3"), third.callback());
  ASSERT_TRUE(third.done());
  EXPECT_EQ(third.code(), Errc::QueueFull);
  clock_.advance(outbox_->options().commitDelay);
  EXPECT_TRUE(first.ok());
  EXPECT_TRUE(second.ok());
  EXPECT_EQ(p.length(), 2u);
}

TEST_F(TelemetryPipelineTest, AFullOutboxDropsTheOldestUnderTheDropOldestPolicy) {
  auto s = sessionOptions();
  s.autoConnect = false;
  auto o = outboxOptions();
  o.maxMessages = 2;
  o.fullPolicy = outbox::FullPolicy::DropOldest;
  auto& p = make(std::move(s), o);
  p.queue(":1.7", message("q1"), nullptr);
  p.queue(":1.7", message("q2"), nullptr);
  clock_.advance(outbox_->options().commitDelay);
  Single third;
  p.queue(":1.7", message("q3"), third.callback());
  clock_.advance(outbox_->options().commitDelay);
  EXPECT_TRUE(third.ok());
  EXPECT_EQ(p.dropped(), 1u);
  EXPECT_EQ(p.length(), 2u);
  session_->start();
  transport_.acceptConnect();
  EXPECT_EQ(publishedIds(), (std::vector<std::string>{"q2", "q3"}));
}

TEST_F(TelemetryPipelineTest, QueuedMessagesExpireAndAreReported) {
  auto s = sessionOptions();
  s.autoConnect = false;
  auto& p = make(std::move(s), outboxOptions());
  auto m = outgoing("short");
  // ManualScheduler's wall clock starts at 1700000000 = 2023-11-14T22:13:20Z.
  m.system.expiryTimeUtc = "2023-11-14T22:13:22Z";
  Single queued;
  p.queue(":1.7", checked(std::move(m)), queued.callback());
  p.queue(":1.7", message("long"), nullptr);
  clock_.advance(outbox_->options().commitDelay);
  EXPECT_TRUE(queued.ok());
  clock_.advance(2s);
  EXPECT_TRUE(notifications_.expired.empty());
  clock_.advance(1s + TelemetryPipeline::kBatchInterval);
  EXPECT_EQ(notifications_.expired, std::vector<std::string>{"short"});
  EXPECT_EQ(p.length(), 1u);
}

// --- batches -------------------------------------------------------------------------------------

TEST_F(TelemetryPipelineTest, SendBatchAnswersWithTheIdsOnceEveryMessageIsAcknowledged) {
  auto& p = connected();
  Batch sent;
  p.sendBatch(":1.7", batch("b", 3), sent.callback());
  ASSERT_EQ(publishedIds(), (std::vector<std::string>{"b0", "b1", "b2"}));
  transport_.ack(transport_.published[2].mid);
  transport_.ack(transport_.published[0].mid);
  EXPECT_FALSE(sent.done());
  transport_.ack(transport_.published[1].mid);
  ASSERT_TRUE(sent.ok());
  EXPECT_EQ(**sent.result, (std::vector<std::string>{"b0", "b1", "b2"}));
  EXPECT_EQ(outbox_->transactions(), 0u);
}

TEST_F(TelemetryPipelineTest, ASendBatchFailureNamesTheIndexAndThoseTheHubAcknowledged) {
  auto& p = connected();
  auto messages = batch("f", 4);
  auto expired = outgoing("f2");
  expired.system.expiryTimeUtc = "2001-01-01T00:00:00Z";
  messages[2] = checked(std::move(expired));
  Batch sent;
  p.sendBatch(":1.7", std::move(messages), sent.callback());
  ASSERT_EQ(publishedIds(), (std::vector<std::string>{"f0", "f1", "f3"}));
  EXPECT_FALSE(sent.done()) << "answered before the others were settled";
  ackAll();
  ASSERT_TRUE(sent.done());
  EXPECT_EQ(sent.code(), Errc::Timeout);
  EXPECT_EQ(sent.text().rfind("message 2 of the batch: ", 0), 0u) << sent.text();
  EXPECT_NE(sent.text().find("acknowledged by the hub: 0-1, 3"), std::string::npos) << sent.text();
}

TEST_F(TelemetryPipelineTest, ASendBatchTimeoutListsWhatTheHubAcknowledged) {
  auto& p = connected();
  Batch sent;
  p.sendBatch(":1.7", batch("t", 3), sent.callback());
  transport_.ack(transport_.published[0].mid);
  transport_.ack(transport_.published[2].mid);
  clock_.advance(60s);
  ASSERT_TRUE(sent.done());
  EXPECT_EQ(sent.code(), Errc::Timeout);
  EXPECT_EQ(sent.text().rfind("message 1 of the batch: ", 0), 0u) << sent.text();
  EXPECT_NE(sent.text().find("acknowledged by the hub: 0, 2"), std::string::npos) << sent.text();
}

TEST_F(TelemetryPipelineTest, QueueBatchIsStoredInOneCommit) {
  auto& p = connected();
  Batch queued;
  p.queueBatch(":1.7", batch("q", 5), queued.callback());
  EXPECT_FALSE(queued.done());
  clock_.advance(outbox_->options().commitDelay);
  ASSERT_TRUE(queued.ok());
  EXPECT_EQ(**queued.result, (std::vector<std::string>{"q0", "q1", "q2", "q3", "q4"}));
  EXPECT_EQ(outbox_->transactions(), 1u);
  EXPECT_EQ(publishedIds(), (std::vector<std::string>{"q0", "q1", "q2", "q3", "q4"}));
}

TEST_F(TelemetryPipelineTest, BatchesAreBoundedAndAnEmptyOneIsAnsweredAtOnce) {
  auto& p = connected();
  Batch tooMany, empty, emptyQueue;
  p.sendBatch(":1.7", batch("x", TelemetryPipeline::kMaxMessagesPerCall + 1), tooMany.callback());
  p.sendBatch(":1.7", {}, empty.callback());
  p.queueBatch(":1.7", {}, emptyQueue.callback());
  ASSERT_TRUE(tooMany.done());
  EXPECT_EQ(tooMany.code(), Errc::InvalidArgument);
  EXPECT_TRUE(empty.ok());
  EXPECT_TRUE((*empty.result)->empty());
  EXPECT_TRUE(emptyQueue.ok());
  EXPECT_TRUE(transport_.published.empty());
}

// --- shutdown ------------------------------------------------------------------------------------

TEST_F(TelemetryPipelineTest, ShutdownStoresWhatIsPendingAndCancelsWaitingSends) {
  auto& p = connected();
  Single queued, sent;
  Batch many;
  p.queue(":1.7", message("q1"), queued.callback());
  p.send(":1.7", message("s1"), sent.callback());
  p.sendBatch(":1.7", batch("b", 2), many.callback());
  transport_.ack(transport_.published[1].mid);  // b0
  p.shutdown();
  EXPECT_TRUE(queued.ok()) << "a queued message is stored before the daemon stops";
  ASSERT_TRUE(sent.done());
  EXPECT_EQ(sent.code(), Errc::Cancelled);
  ASSERT_TRUE(many.done());
  EXPECT_EQ(many.code(), Errc::Cancelled);
  EXPECT_NE(many.text().find("acknowledged by the hub: 0"), std::string::npos) << many.text();
  // A PUBACK that comes after the answer changes nothing.
  ackAll();
  EXPECT_EQ(sent.calls, 1);
  EXPECT_EQ(many.calls, 1);
}

}  // namespace
}  // namespace iothubd::delivery
