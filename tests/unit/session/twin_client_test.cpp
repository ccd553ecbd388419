// SPDX-License-Identifier: MIT
// The twin client alone, on the simulated clock: $rid matching, errors and timeouts, the bound
// on waiting requests, resending after a lost link, and desired-properties versions.
#include "iothubd/session/twin_client.hpp"

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "fake_mqtt_transport.hpp"
#include "manual_scheduler.hpp"

namespace iothubd::session {
namespace {

using namespace std::chrono_literals;
using core::Errc;
using fakes::FakeMqttTransport;

class Events : public TwinClient::Listener {
 public:
  void onDesiredProperties(const std::string& json) override { desired.push_back(json); }
  void onTwinError(const core::Error& error) override { errors.push_back(error); }
  std::vector<std::string> desired;
  std::vector<core::Error> errors;
};

class TwinClientTest : public ::testing::Test {
 protected:
  TwinClientTest() : twin_(clock_, clock_, transport_, events_, options()) {
    transport_.connected = true;
  }
  static TwinClient::Options options() {
    TwinClient::Options o;
    o.maxRequests = 2;
    o.timeout = 30s;
    o.retryInterval = 10s;
    o.ensureDesired = false;
    return o;
  }
  /// Answers the last request whose topic starts with `prefix`.
  void answer(const std::string& prefix, int status, const std::string& body,
              const std::string& extra = "") {
    const auto* p = transport_.lastPublished(prefix);
    ASSERT_NE(p, nullptr) << "nothing published on " << prefix;
    transport_.deliver("$iothub/twin/res/" + std::to_string(status) +
                           "/?$rid=" + FakeMqttTransport::ridOf(p->topic) + extra,
                       body);
  }
  void deliver(const std::string& topic, const std::string& body) { twin_.onResponse(topic, body); }

  fakes::ManualScheduler clock_;
  FakeMqttTransport transport_;
  Events events_;
  TwinClient twin_;
};

/// Routes what the fake broker delivers to the client, as the session does.
class RoutedTwinClientTest : public TwinClientTest {
 protected:
  struct Router : mqtt::MqttTransport::Listener {
    TwinClient* twin = nullptr;
    void onConnected() override {}
    void onDisconnected(const mqtt::Disconnect&) override {}
    void onPublishAcked(int) override {}
    void onSubscribed(int) override {}
    void onMessage(std::string_view topic, std::string_view payload) override {
      if (topic.find("/PATCH/properties/desired/") != std::string_view::npos) {
        twin->onDesiredPatch(topic, payload);
      } else {
        twin->onResponse(topic, payload);
      }
    }
  } router_;
  void SetUp() override {
    router_.twin = &twin_;
    transport_.setListener(&router_);
  }
};

TEST_F(RoutedTwinClientTest, GetAndPatchAreMatchedToTheirAnswersByRid) {
  std::optional<core::Result<std::string>> got;
  std::optional<core::Result<std::uint64_t>> patched;
  twin_.get(true, [&](core::Result<std::string> r) { got = std::move(r); });
  twin_.patchReported(R"({"fw":"1.2"})", true,
                      [&](core::Result<std::uint64_t> r) { patched = std::move(r); });
  ASSERT_EQ(transport_.published.size(), 2u);
  EXPECT_EQ(transport_.published[0].qos, 0) << "twin requests are QoS 0 (protocol doc 7)";
  EXPECT_NE(FakeMqttTransport::ridOf(transport_.published[0].topic),
            FakeMqttTransport::ridOf(transport_.published[1].topic));
  EXPECT_EQ(transport_.published[1].payload, R"({"fw":"1.2"})");
  // Answered in the other order.
  answer("$iothub/twin/PATCH/properties/reported/", 204, "", "&$version=7");
  ASSERT_TRUE(patched && patched->has_value());
  EXPECT_EQ(**patched, 7u);
  EXPECT_FALSE(got.has_value());
  answer("$iothub/twin/GET/", 200, R"({"desired":{"$version":1},"reported":{"$version":7}})");
  ASSERT_TRUE(got && got->has_value());
  EXPECT_EQ(**got, R"({"desired":{"$version":1},"reported":{"$version":7}})");
  EXPECT_EQ(twin_.pending(), 0u);
}

TEST_F(RoutedTwinClientTest, AnErrorStatusIsAServiceErrorCarryingTheStatus) {
  std::optional<core::Result<std::string>> got;
  twin_.get(true, [&](core::Result<std::string> r) { got = std::move(r); });
  answer("$iothub/twin/GET/", 429, R"({"errorCode":429001})");
  ASSERT_TRUE(got && !got->has_value());
  EXPECT_EQ(got->error().code, Errc::Service);
  EXPECT_EQ(got->error().sysErrno, 429);
  EXPECT_NE(got->error().message.find("status 429"), std::string::npos);
}

TEST_F(RoutedTwinClientTest, AnUnansweredRequestTimesOutAndALateAnswerIsIgnored) {
  std::optional<core::Result<std::string>> got;
  twin_.get(true, [&](core::Result<std::string> r) { got = std::move(r); });
  clock_.advance(30s);
  ASSERT_TRUE(got && !got->has_value());
  EXPECT_EQ(got->error().code, Errc::Timeout);
  got.reset();
  answer("$iothub/twin/GET/", 200, "{}");
  EXPECT_FALSE(got.has_value());
  EXPECT_TRUE(events_.errors.empty()) << "an unknown $rid is not an error (protocol doc 7)";
}

TEST_F(TwinClientTest, RequestsOverTheBoundFailWithQueueFull) {
  twin_.get(true, [](core::Result<std::string>) {});
  twin_.get(true, [](core::Result<std::string>) {});
  std::optional<core::Result<std::string>> third;
  twin_.get(true, [&](core::Result<std::string> r) { third = std::move(r); });
  ASSERT_TRUE(third && !third->has_value());
  EXPECT_EQ(third->error().code, Errc::QueueFull);
  EXPECT_EQ(transport_.published.size(), 2u);
}

TEST_F(RoutedTwinClientTest, ARequestWaitsForTheLinkAndIsSentAgainWithItsRidAfterALoss) {
  std::optional<core::Result<std::string>> got;
  twin_.get(false, [&](core::Result<std::string> r) { got = std::move(r); });
  EXPECT_TRUE(transport_.published.empty()) << "no link yet";
  twin_.linkReady();
  ASSERT_EQ(transport_.published.size(), 1u);
  const std::string rid = FakeMqttTransport::ridOf(transport_.published[0].topic);
  twin_.linkLost();  // the answer went down with the link
  twin_.linkReady();
  ASSERT_EQ(transport_.published.size(), 2u);
  EXPECT_EQ(FakeMqttTransport::ridOf(transport_.published[1].topic), rid);
  answer("$iothub/twin/GET/", 200, "{}");
  EXPECT_TRUE(got && got->has_value());
}

TEST_F(TwinClientTest, FailAllAnswersEveryWaitingRequest) {
  std::vector<Errc> codes;
  twin_.get(true, [&](core::Result<std::string> r) { codes.push_back(r.error().code); });
  twin_.patchReported("{}", false,
                      [&](core::Result<std::uint64_t> r) { codes.push_back(r.error().code); });
  twin_.failAll({Errc::Cancelled, "disconnected on request"});
  EXPECT_EQ(codes, (std::vector{Errc::Cancelled, Errc::Cancelled}));
  EXPECT_EQ(twin_.pending(), 0u);
  EXPECT_FALSE(clock_.nextTimerIn().has_value());
}

TEST_F(TwinClientTest, AnUnreadableAnswerIsReportedNotDropped) {
  deliver("$iothub/twin/res/abc", "{}");
  ASSERT_EQ(events_.errors.size(), 1u);
  EXPECT_EQ(events_.errors[0].code, Errc::Protocol);
}

class DesiredTest : public RoutedTwinClientTest {
 protected:
  void SetUp() override {
    RoutedTwinClientTest::SetUp();
    auto o = options();
    o.ensureDesired = true;
    twin_.setOptions(o);
  }
  void answerFetch(int version) {
    answer("$iothub/twin/GET/", 200,
           R"({"desired":{"mode":"eco","$version":)" + std::to_string(version) +
               R"(},"reported":{"$version":1}})");
  }
  void patch(int version) {
    transport_.deliver("$iothub/twin/PATCH/properties/desired/?$version=" + std::to_string(version),
                       R"({"mode":"fast","$version":)" + std::to_string(version) + "}");
  }
};

TEST_F(DesiredTest, EachLinkFetchesTheDesiredSectionAndReportsItOnlyWhenItMoved) {
  twin_.linkReady();
  answerFetch(3);
  ASSERT_EQ(events_.desired.size(), 1u);
  EXPECT_EQ(events_.desired[0], R"({"mode":"eco","$version":3})");
  patch(4);
  EXPECT_EQ(events_.desired.size(), 2u);
  patch(4);  // the same version again
  patch(2);  // older than what was delivered
  EXPECT_EQ(events_.desired.size(), 2u);
  twin_.linkLost();
  twin_.linkReady();
  answerFetch(4);  // nothing moved while the link was down
  EXPECT_EQ(events_.desired.size(), 2u);
  twin_.linkLost();
  twin_.linkReady();
  answerFetch(6);  // a change made while we were away
  EXPECT_EQ(events_.desired.size(), 3u);
}

TEST_F(DesiredTest, AFailedFetchIsReportedAndRetriedAfterTheIntervalNotAtOnce) {
  twin_.linkReady();
  answer("$iothub/twin/GET/", 500, "{}");
  ASSERT_EQ(events_.errors.size(), 1u);
  EXPECT_NE(events_.errors[0].message.find("cannot fetch the twin after connecting"),
            std::string::npos);
  EXPECT_EQ(transport_.published.size(), 1u);
  clock_.advance(10s - 1ms);
  EXPECT_EQ(transport_.published.size(), 1u) << "a throttled hub must not see a tight loop";
  clock_.advance(1ms);
  EXPECT_EQ(transport_.published.size(), 2u);
  // Never two fetches at once: another link-up while one is out sends no second one.
  twin_.linkReady();
  EXPECT_EQ(transport_.published.size(), 2u);
}

}  // namespace
}  // namespace iothubd::session
