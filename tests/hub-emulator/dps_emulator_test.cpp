// SPDX-License-Identifier: MIT
// Tests of the DPS emulator itself: a real mosquitto with the plugin in DPS mode, libmosquitto as
// the device, speaking the DPS MQTT protocol by hand.
#include "dps_emulator.hpp"

#include <gtest/gtest.h>
#include <mosquitto.h>

#include <rapidjson/document.h>

#include <chrono>
#include <condition_variable>
#include <ctime>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace iothubd::hubemu {
namespace {

using namespace std::chrono_literals;
using Ms = std::chrono::milliseconds;

constexpr Ms kTimeout = 5s;
constexpr const char* kResponses = "$dps/registrations/res/#";

int64_t unixNow() {
  return static_cast<int64_t>(std::time(nullptr));
}

struct Received {
  std::string topic;
  std::string payload;
};

rapidjson::Document json(const std::string& text) {
  rapidjson::Document doc;
  doc.Parse(text.c_str(), text.size());
  EXPECT_FALSE(doc.HasParseError()) << text;
  return doc;
}

std::string member(const rapidjson::Value& v, const char* name) {
  const auto it = v.FindMember(name);
  return it != v.MemberEnd() && it->value.IsString() ? it->value.GetString() : "";
}

// A device speaking DPS over libmosquitto's threaded loop; one instance = one connection.
class DpsDevice {
 public:
  DpsDevice(const std::string& registrationId, const std::string& caFile,
            const std::string& certFile = "", const std::string& keyFile = "")
      : registrationId_(registrationId) {
    static std::once_flag init;
    std::call_once(init, [] { mosquitto_lib_init(); });
    mosq_.reset(mosquitto_new(registrationId.c_str(), true, this));
    mosquitto* m = mosq_.get();
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    mosquitto_tls_set(m, caFile.c_str(), nullptr, certFile.empty() ? nullptr : certFile.c_str(),
                      keyFile.empty() ? nullptr : keyFile.c_str(), nullptr);
    mosquitto_connect_callback_set(m, [](mosquitto* mq, void* self, int rc) {
      if (rc != 0)
        mosquitto_disconnect(mq);
      static_cast<DpsDevice*>(self)->update([&](DpsDevice& d) { d.connack_ = rc; });
    });
    mosquitto_disconnect_callback_set(m,
                                      [](mosquitto* mq, void*, int) { mosquitto_disconnect(mq); });
    mosquitto_subscribe_callback_set(m, [](mosquitto*, void* self, int mid, int, const int* qos) {
      static_cast<DpsDevice*>(self)->update(
          [&](DpsDevice& d) { d.subacks_.emplace_back(mid, qos[0]); });
    });
    mosquitto_message_callback_set(m, [](mosquitto*, void* self, const mosquitto_message* msg) {
      Received r{msg->topic, std::string(static_cast<const char*>(msg->payload),
                                         static_cast<size_t>(msg->payloadlen))};
      static_cast<DpsDevice*>(self)->update([&](DpsDevice& d) { d.messages_.push_back(r); });
    });
  }
  ~DpsDevice() {
    mosquitto_disconnect(mosq_.get());
    mosquitto_loop_stop(mosq_.get(), false);
  }

  // CONNACK code, -1 without one.
  int connect(int port, const std::string& username, const std::optional<std::string>& password) {
    mosquitto_username_pw_set(mosq_.get(), username.c_str(),
                              password ? password->c_str() : nullptr);
    if (mosquitto_connect(mosq_.get(), "localhost", port, 60) != MOSQ_ERR_SUCCESS)
      return -1;
    mosquitto_loop_start(mosq_.get());
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, kTimeout, [&] { return connack_ >= 0; });
    return connack_;
  }
  int connectWithKey(const DpsEmulator& dps, const std::string& key,
                     const std::string& keyName = "registration") {
    return connect(dps.port(), makeDpsUsername(dps.idScope(), registrationId_),
                   makeDpsSasToken(dps.idScope(), registrationId_, key, unixNow() + 3600, keyName));
  }

  // Granted QoS, 128 when refused, -1 on timeout.
  int subscribe(const std::string& filter = kResponses) {
    int mid = 0;
    if (mosquitto_subscribe(mosq_.get(), &mid, filter.c_str(), 1) != MOSQ_ERR_SUCCESS)
      return -1;
    std::unique_lock lock(mutex_);
    int granted = -1;
    cv_.wait_for(lock, kTimeout, [&] {
      for (const auto& [m, g] : subacks_) {
        if (m == mid)
          granted = g;
      }
      return granted >= 0;
    });
    return granted;
  }

  void publish(const std::string& topic, const std::string& payload) {
    ASSERT_EQ(mosquitto_publish(mosq_.get(), nullptr, topic.c_str(),
                                static_cast<int>(payload.size()), payload.data(), 1, false),
              MOSQ_ERR_SUCCESS);
  }
  void sendRegister(const std::string& rid, const std::string& body = "") {
    publish("$dps/registrations/PUT/iotdps-register/?$rid=" + rid,
            body.empty() ? R"({"registrationId":")" + registrationId_ + R"("})" : body);
  }
  void sendPoll(const std::string& rid, const std::string& operationId) {
    publish("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=" + rid +
                "&operationId=" + operationId,
            "");
  }

  // The next answer to request `rid`.
  std::optional<Received> answer(const std::string& rid) {
    std::unique_lock lock(mutex_);
    std::optional<Received> found;
    cv_.wait_for(lock, kTimeout, [&] {
      for (size_t i = 0; i < messages_.size(); ++i) {
        const std::string& t = messages_[i].topic;
        const size_t at = t.find("?$rid=" + rid);
        const size_t end = at + 6 + rid.size();
        if (at != std::string::npos && (end == t.size() || t[end] == '&')) {
          found = messages_[i];
          messages_.erase(messages_.begin() + static_cast<std::ptrdiff_t>(i));
          return true;
        }
      }
      return false;
    });
    return found;
  }
  size_t messageCount() {
    std::lock_guard lock(mutex_);
    return messages_.size();
  }

 private:
  struct Destroy {
    void operator()(mosquitto* m) const { mosquitto_destroy(m); }
  };
  template <typename F>
  void update(F&& f) {
    std::lock_guard lock(mutex_);
    f(*this);
    cv_.notify_all();
  }

  std::string registrationId_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int connack_ = -1;
  std::vector<std::pair<int, int>> subacks_;
  std::vector<Received> messages_;
  std::unique_ptr<mosquitto, Destroy> mosq_;  // last: destroyed first
};

// One emulated DPS for the whole suite (a broker start is most of a test's time): every test
// uses registration ids of its own, and faults and moves are per registration id.
class DpsEmulatorTest : public ::testing::Test {
 protected:
  static DpsEmulator::Options options() {
    DpsEmulator::Options o;
    o.hubs = {"localhost", "127.0.0.1"};
    o.x509Listener = true;
    return o;
  }
  static void SetUpTestSuite() {
    dps_ = new DpsEmulator(options());
    groupKey_ = dps_->addGroupEnrollment("gateways");
    DpsEnrollment x509;
    x509.kind = DpsEnrollment::Kind::Group;
    x509.name = "x509-gateways";
    x509.attestation = DpsEnrollment::Attestation::X509;
    dps_->addEnrollment(x509);
    dps_->start();
  }
  static void TearDownTestSuite() {
    delete dps_;
    dps_ = nullptr;
  }
  void SetUp() override { control_ = std::make_unique<DpsControl>(*dps_); }
  void TearDown() override { dps_->printBrokerLogIf(HasFailure()); }

  // Connects, subscribes and registers `id` with `key`; returns the register answer.
  std::optional<Received> registerWith(DpsDevice& device, const std::string& key) {
    EXPECT_EQ(device.connectWithKey(*dps_, key), 0);
    EXPECT_EQ(device.subscribe(), 1);
    device.sendRegister("1");
    return device.answer("1");
  }

  // Registers and polls until the final answer; returns its registrationState.
  rapidjson::Document provision(DpsDevice& device, const std::string& key) {
    auto accepted = registerWith(device, key);
    EXPECT_TRUE(accepted);
    if (!accepted)
      return {};
    EXPECT_EQ(accepted->topic.rfind("$dps/registrations/res/202/?$rid=1&retry-after=1", 0), 0u)
        << accepted->topic;
    const std::string operationId = member(json(accepted->payload), "operationId");
    device.sendPoll("2", operationId);
    auto polled = device.answer("2");
    EXPECT_TRUE(polled);
    EXPECT_EQ(polled->topic.rfind("$dps/registrations/res/202/", 0), 0u) << polled->topic;
    device.sendPoll("3", operationId);
    auto done = device.answer("3");
    EXPECT_TRUE(done);
    if (!done)
      return {};
    EXPECT_EQ(done->topic, "$dps/registrations/res/200/?$rid=3");
    return json(done->payload);
  }

  static DpsEmulator* dps_;
  static std::string groupKey_;
  std::unique_ptr<DpsControl> control_;
};

DpsEmulator* DpsEmulatorTest::dps_ = nullptr;
std::string DpsEmulatorTest::groupKey_;

TEST(DpsKeys, DeriveAsTheOpensslCliDoes) {
  // tests/data/dps_vectors.txt, computed with make_dps_vectors.sh (openssl CLI).
  EXPECT_EQ(deriveDeviceKey("eLR2iER0utabsA7eM5h6xCKQkL0i8oFvGcrcNq4/ZNj+zqWxvte9ag9eO5RP+3Z1qTEMh"
                            "guSvnYAvFIKwDgycA==",
                            "gw-0017"),
            "3rYygi6CLlzqXTC+QytDL63Q5+vgleq/EBH7YSetOyA=");
  EXPECT_EQ(makeDpsSasToken("0ne00000A0A", "gw-0017",
                            "3rYygi6CLlzqXTC+QytDL63Q5+vgleq/EBH7YSetOyA=", 1735689600),
            "SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fgw-0017&sig=1ei%2FMVa0xH6L2THx"
            "e7kdNbvhvYRW7eHgLaOwsS3Cl48%3D&se=1735689600&skn=registration");
}

TEST_F(DpsEmulatorTest, AGroupEnrollmentDeviceIsAssignedAfterPolling) {
  DpsDevice device("gw-0001", dps_->caFile());
  const auto result = provision(device, deriveDeviceKey(groupKey_, "gw-0001"));
  ASSERT_TRUE(result.IsObject());
  EXPECT_EQ(member(result, "status"), "assigned");
  const auto& state = result["registrationState"];
  EXPECT_EQ(member(state, "registrationId"), "gw-0001");
  EXPECT_EQ(member(state, "assignedHub"), "localhost");
  EXPECT_EQ(member(state, "deviceId"), "gw-0001");
  EXPECT_EQ(member(state, "status"), "assigned");
  EXPECT_EQ(member(state, "substatus"), "initialAssignment");
  EXPECT_FALSE(member(state, "lastUpdatedDateTimeUtc").empty());
  auto assigned = control_->service().waitForEvent("dps-assigned", "gw-0001");
  ASSERT_TRUE(assigned);
  EXPECT_NE(assigned->json.find(R"("hub":"localhost")"), std::string::npos) << assigned->json;
  EXPECT_EQ(control_->registration("gw-0001")->attestation, "symmetric-key");
}

TEST_F(DpsEmulatorTest, AcceptsATokenWithoutSknAsThePythonSdkSendsIt) {
  DpsDevice device("gw-0002", dps_->caFile());
  ASSERT_EQ(
      device.connect(dps_->port(), makeDpsUsername(dps_->idScope(), "gw-0002"),
                     makeDpsSasToken(dps_->idScope(), "gw-0002",
                                     deriveDeviceKey(groupKey_, "gw-0002"), unixNow() + 60, "")),
      0);
  ASSERT_EQ(device.subscribe(), 1);
  device.sendRegister("1");
  auto answer = device.answer("1");
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->topic.rfind("$dps/registrations/res/202/", 0), 0u) << answer->topic;
}

TEST_F(DpsEmulatorTest, AnIndividualEnrollmentHasItsHubAndDeviceId) {
  DpsEnrollment e;
  e.name = "sensor-9";
  e.key = randomKey();
  e.hub = "127.0.0.1";
  e.deviceId = "plant-3-sensor-9";
  control_->enroll(e);
  DpsDevice device("sensor-9", dps_->caFile());
  const auto result = provision(device, e.key);
  ASSERT_TRUE(result.IsObject());
  EXPECT_EQ(member(result["registrationState"], "assignedHub"), "127.0.0.1");
  EXPECT_EQ(member(result["registrationState"], "deviceId"), "plant-3-sensor-9");
}

TEST_F(DpsEmulatorTest, AWrongKeyConnectsButIsAnswered401) {
  DpsDevice device("gw-0003", dps_->caFile());
  auto answer = registerWith(device, randomKey());
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->topic, "$dps/registrations/res/401/?$rid=1");
  const auto body = json(answer->payload);
  EXPECT_EQ(body["errorCode"].GetInt(), 401002);
  EXPECT_EQ(member(body, "message"), "Unauthorized");
  EXPECT_EQ(member(body, "trackingId").size(), 36u);
  EXPECT_FALSE(member(body, "timestampUtc").empty());
}

TEST_F(DpsEmulatorTest, ATokenForAnotherScopeOrPolicyIsAnswered401) {
  const std::string key = deriveDeviceKey(groupKey_, "gw-0004");
  DpsDevice otherScope("gw-0004", dps_->caFile());
  ASSERT_EQ(otherScope.connect(dps_->port(), makeDpsUsername("0ne99999999", "gw-0004"),
                               makeDpsSasToken("0ne99999999", "gw-0004", key, unixNow() + 60)),
            0);
  ASSERT_EQ(otherScope.subscribe(), 1);
  otherScope.sendRegister("1");
  EXPECT_EQ(otherScope.answer("1")->topic, "$dps/registrations/res/401/?$rid=1");

  DpsDevice otherPolicy("gw-0005", dps_->caFile());
  ASSERT_EQ(otherPolicy.connectWithKey(*dps_, deriveDeviceKey(groupKey_, "gw-0005"), "iothubowner"),
            0);
  ASSERT_EQ(otherPolicy.subscribe(), 1);
  otherPolicy.sendRegister("1");
  EXPECT_EQ(otherPolicy.answer("1")->topic, "$dps/registrations/res/401/?$rid=1");
}

TEST_F(DpsEmulatorTest, AnUnknownRegistrationIsAnswered404) {
  DpsEmulator::Options o = options();
  o.x509Listener = false;
  DpsEmulator lonely(o);  // no group enrollment that could claim the device
  lonely.addIndividualEnrollment("someone-else");
  lonely.start();
  DpsDevice device("stranger", lonely.caFile());
  ASSERT_EQ(device.connectWithKey(lonely, randomKey()), 0);
  ASSERT_EQ(device.subscribe(), 1);
  device.sendRegister("1");
  auto answer = device.answer("1");
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->topic, "$dps/registrations/res/404/?$rid=1");
  EXPECT_EQ(json(answer->payload)["errorCode"].GetInt(), 404201);
  lonely.printBrokerLogIf(HasFailure());
}

TEST_F(DpsEmulatorTest, ScriptedThrottlingCarriesRetryAfterThenPasses) {
  control_->fault({.registrationId = "gw-0006", .status = 429, .retryAfterSeconds = 7});
  DpsDevice device("gw-0006", dps_->caFile());
  auto throttled = registerWith(device, deriveDeviceKey(groupKey_, "gw-0006"));
  ASSERT_TRUE(throttled);
  EXPECT_EQ(throttled->topic, "$dps/registrations/res/429/?$rid=1&retry-after=7");
  EXPECT_EQ(json(throttled->payload)["errorCode"].GetInt(), 429001);
  device.sendRegister("2");
  auto accepted = device.answer("2");
  ASSERT_TRUE(accepted);
  EXPECT_EQ(accepted->topic.rfind("$dps/registrations/res/202/?$rid=2", 0), 0u);
}

TEST_F(DpsEmulatorTest, ScriptedFaultsCanHitPollsOnly) {
  control_->fault({.registrationId = "gw-0007", .status = 503, .count = 1, .on = "poll"});
  DpsDevice device("gw-0007", dps_->caFile());
  auto accepted = registerWith(device, deriveDeviceKey(groupKey_, "gw-0007"));
  ASSERT_TRUE(accepted);
  ASSERT_EQ(accepted->topic.rfind("$dps/registrations/res/202/", 0), 0u);
  device.sendPoll("2", member(json(accepted->payload), "operationId"));
  EXPECT_EQ(device.answer("2")->topic, "$dps/registrations/res/503/?$rid=2");
}

TEST_F(DpsEmulatorTest, AMovedDeviceIsAssignedTheOtherHub) {
  const std::string key = deriveDeviceKey(groupKey_, "gw-0008");
  {
    DpsDevice first("gw-0008", dps_->caFile());
    const auto result = provision(first, key);
    ASSERT_TRUE(result.IsObject());
    EXPECT_EQ(member(result["registrationState"], "assignedHub"), "localhost");
  }
  control_->assign("gw-0008", "127.0.0.1");
  DpsDevice again("gw-0008", dps_->caFile());
  const auto result = provision(again, key);
  ASSERT_TRUE(result.IsObject());
  EXPECT_EQ(member(result["registrationState"], "assignedHub"), "127.0.0.1");
  EXPECT_EQ(member(result["registrationState"], "substatus"), "deviceDataMigrated");
  const auto record = control_->registration("gw-0008");
  ASSERT_TRUE(record);
  EXPECT_EQ(record->registerRequests, 2);
  EXPECT_EQ(record->hub, "127.0.0.1");
}

TEST_F(DpsEmulatorTest, AFailedAllocationAndADisabledEnrollmentAreFinalStatuses) {
  control_->failAllocation("gw-0009", 400207, "no hub fits");
  DpsDevice device("gw-0009", dps_->caFile());
  auto failed = provision(device, deriveDeviceKey(groupKey_, "gw-0009"));
  ASSERT_TRUE(failed.IsObject());
  EXPECT_EQ(member(failed, "status"), "failed");
  EXPECT_EQ(failed["registrationState"]["errorCode"].GetInt(), 400207);
  EXPECT_EQ(member(failed["registrationState"], "errorMessage"), "no hub fits");

  DpsEnrollment off;
  off.name = "gw-off";
  off.key = randomKey();
  off.enabled = false;
  control_->enroll(off);
  DpsDevice disabled("gw-off", dps_->caFile());
  EXPECT_EQ(member(provision(disabled, off.key), "status"), "disabled");
}

TEST_F(DpsEmulatorTest, RecordsTheCustomPayload) {
  DpsDevice device("gw-0010", dps_->caFile());
  ASSERT_EQ(device.connectWithKey(*dps_, deriveDeviceKey(groupKey_, "gw-0010")), 0);
  ASSERT_EQ(device.subscribe(), 1);
  device.sendRegister(
      "1", R"({"registrationId":"gw-0010","payload":{"modelId":"dtmi:com:example:Gw;1"}})");
  ASSERT_TRUE(device.answer("1"));
  EXPECT_EQ(control_->registration("gw-0010")->payload, R"({"modelId":"dtmi:com:example:Gw;1"})");
  auto event = control_->service().waitForEvent("dps-register", "gw-0010");
  ASSERT_TRUE(event);
  EXPECT_NE(event->json.find("dtmi:com:example:Gw;1"), std::string::npos);
}

TEST_F(DpsEmulatorTest, ARegistrationIdOtherThanTheConnectionsIsABadRequest) {
  DpsDevice device("gw-0011", dps_->caFile());
  ASSERT_EQ(device.connectWithKey(*dps_, deriveDeviceKey(groupKey_, "gw-0011")), 0);
  ASSERT_EQ(device.subscribe(), 1);
  device.sendRegister("1", R"({"registrationId":"gw-0012"})");
  EXPECT_EQ(device.answer("1")->topic, "$dps/registrations/res/400/?$rid=1");
}

TEST_F(DpsEmulatorTest, AnswersOnlyADeviceSubscribedToThem) {
  DpsDevice device("gw-0013", dps_->caFile());
  ASSERT_EQ(device.connectWithKey(*dps_, deriveDeviceKey(groupKey_, "gw-0013")), 0);
  device.sendRegister("1");
  auto response = control_->service().waitForEvent("dps-response", "gw-0013");
  ASSERT_TRUE(response) << "DPS did not handle the request";
  ASSERT_EQ(device.subscribe(), 1);
  device.sendRegister("2");
  ASSERT_TRUE(device.answer("2"));
  // The broker handles one client's packets in order: an answer to request 1 would be here.
  EXPECT_EQ(device.messageCount(), 0u);
}

TEST_F(DpsEmulatorTest, ServesOnlyTheDocumentedTopics) {
  DpsDevice device("gw-0014", dps_->caFile());
  ASSERT_EQ(device.connectWithKey(*dps_, deriveDeviceKey(groupKey_, "gw-0014")), 0);
  EXPECT_EQ(device.subscribe("#"), 128);
  EXPECT_EQ(device.subscribe("$dps/registrations/res/+"), 128);
  EXPECT_EQ(device.subscribe("$hubemu/evt/#"), 128);
  EXPECT_EQ(device.subscribe(), 1);
}

TEST_F(DpsEmulatorTest, RefusesAConnectWhoseUserNameIsNotARegistration) {
  DpsDevice device("gw-0015", dps_->caFile());
  EXPECT_EQ(
      device.connect(dps_->port(), "0ne0000E1E1/registrations/other/api-version=2019-03-31", "x"),
      5);
  DpsDevice noVersion("gw-0016", dps_->caFile());
  EXPECT_EQ(noVersion.connect(dps_->port(), "0ne0000E1E1/registrations/gw-0016/", "x"), 5);
  ASSERT_TRUE(control_->service().waitForEvent("auth-refused", "gw-0016"));
}

TEST_F(DpsEmulatorTest, AnX509DeviceIsAssignedByItsCertificate) {
  const std::string cert = dps_->dir() + "/gw-x1.crt";
  const std::string key = dps_->dir() + "/gw-x1.key";
  dps_->issueClientCertificate("gw-x1", cert, key);
  DpsDevice device("gw-x1", dps_->caFile(), cert, key);
  ASSERT_EQ(
      device.connect(dps_->x509Port(), makeDpsUsername(dps_->idScope(), "gw-x1"), std::nullopt), 0);
  ASSERT_EQ(device.subscribe(), 1);
  device.sendRegister("1");
  auto accepted = device.answer("1");
  ASSERT_TRUE(accepted);
  ASSERT_EQ(accepted->topic.rfind("$dps/registrations/res/202/", 0), 0u) << accepted->topic;
  EXPECT_EQ(control_->registration("gw-x1")->attestation, "x509");
}

TEST_F(DpsEmulatorTest, AnX509CertificateForAnotherRegistrationIsAnswered401) {
  const std::string cert = dps_->dir() + "/other.crt";
  const std::string key = dps_->dir() + "/other.key";
  dps_->issueClientCertificate("someone-else", cert, key);
  DpsDevice device("gw-x2", dps_->caFile(), cert, key);
  ASSERT_EQ(
      device.connect(dps_->x509Port(), makeDpsUsername(dps_->idScope(), "gw-x2"), std::nullopt), 0);
  ASSERT_EQ(device.subscribe(), 1);
  device.sendRegister("1");
  auto answer = device.answer("1");
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->topic, "$dps/registrations/res/401/?$rid=1");
  EXPECT_EQ(member(json(answer->payload), "message"), "Invalid certificate.");
}

}  // namespace
}  // namespace iothubd::hubemu
