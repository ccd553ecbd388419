// SPDX-License-Identifier: MIT
// src/provisioning's ProvisioningClient end to end against the DPS emulator: the real sd-event
// loop, the real MosquittoTransport with TLS, a real broker; then the assigned hub (a hub
// emulator) accepts the device with the same credentials through the real HubSession.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>

#include "dps_emulator.hpp"
#include "iothubd/loop/event_loop.hpp"
#include "iothubd/mqtt/mosquitto_transport.hpp"
#include "iothubd/provisioning/provisioning_client.hpp"
#include "iothubd/session/hub_session.hpp"

namespace iothubd::hubemu {
namespace {

using namespace std::chrono_literals;
using provisioning::FailureKind;
using provisioning::Outcome;
using provisioning::ProvisioningClient;
using provisioning::ProvisioningOptions;

HubEmulator::Options hubNamed(const std::string& host) {
  HubEmulator::Options o;
  o.hubHost = host;
  return o;
}

// Two hubs and DPS for the whole suite (broker starts are most of a test's time); every test uses
// registration ids of its own. The loop and transport are the test's.
class DpsProvisioningTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    hubA_ = new HubEmulator(hubNamed("localhost"));
    hubB_ = new HubEmulator(hubNamed("127.0.0.1"));
    hubA_->start();
    hubB_->start();
    DpsEmulator::Options o;
    o.hubs = {hubA_->hubHost(), hubB_->hubHost()};
    o.x509Listener = true;
    // Register (202), one poll after retry-after (1 s, the client's minimum), assigned: the
    // shortest registration DPS does.
    o.assigningPolls = 0;
    dps_ = new DpsEmulator(o);
    groupKey_ = dps_->addGroupEnrollment("gateways");
    DpsEnrollment x509;  // individual: a certificate of another CN has no enrollment
    x509.name = "gw-x509";
    x509.attestation = DpsEnrollment::Attestation::X509;
    x509.hub = hubB_->hubHost();
    dps_->addEnrollment(x509);
    dps_->start();
  }
  static void TearDownTestSuite() {
    delete dps_;
    delete hubB_;
    delete hubA_;
  }
  void SetUp() override {
    auto loop = loop::EventLoop::create();
    ASSERT_TRUE(loop) << loop.error().message;
    loop_ = std::move(*loop);
    auto transport = mqtt::createMosquittoTransport(*loop_);
    ASSERT_TRUE(transport) << transport.error().message;
    transport_ = std::move(*transport);
  }
  void TearDown() override {
    dps_->printBrokerLogIf(HasFailure());
    hubA_->printBrokerLogIf(HasFailure());
    hubB_->printBrokerLogIf(HasFailure());
  }

  ProvisioningOptions options(const std::string& registrationId) {
    ProvisioningOptions o;
    o.globalEndpoint = dps_->host();
    o.port = dps_->port();
    o.idScope = dps_->idScope();
    o.registrationId = registrationId;
    o.deviceKey = core::Secret<>(deriveDeviceKey(groupKey_, registrationId));
    o.tls.caFile = dps_->caFile();
    o.userAgent = "iothubd/e2e";
    o.requestTimeout = 10s;
    o.timeout = 20s;
    return o;
  }

  // Steps the loop until `done` holds or `limit` has passed (an sd-event loop that ran to its
  // exit cannot run again, so tests step it).
  bool runUntil(const std::function<bool()>& done, std::chrono::seconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) {
        return false;
      }
      if (auto r = loop_->runOnce(100ms); !r) {
        ADD_FAILURE() << r.error().message;
        return false;
      }
    }
    return true;
  }

  // Runs one registration on the loop; fails the test if it does not end within 25 s.
  Outcome provision(ProvisioningOptions o) {
    ProvisioningClient client(*loop_, *loop_, *transport_, std::move(o));
    std::optional<Outcome> outcome;
    client.registerDevice([&](const Outcome& result) { outcome = result; });
    EXPECT_TRUE(runUntil([&] { return outcome.has_value(); }, 25s)) << "no outcome within 25 s";
    if (!outcome) {
      return tl::unexpected(provisioning::Failure{});
    }
    return *outcome;
  }

  // Two hubs on one machine: both names are in the emulators' server certificate.
  static HubEmulator* hubA_;
  static HubEmulator* hubB_;
  static DpsEmulator* dps_;
  static std::string groupKey_;
  std::unique_ptr<loop::EventLoop> loop_;
  std::unique_ptr<mqtt::MqttTransport> transport_;
};

HubEmulator* DpsProvisioningTest::hubA_ = nullptr;
HubEmulator* DpsProvisioningTest::hubB_ = nullptr;
DpsEmulator* DpsProvisioningTest::dps_ = nullptr;
std::string DpsProvisioningTest::groupKey_;

TEST_F(DpsProvisioningTest, AGroupEnrollmentDeviceIsAssignedAndTheHubAcceptsIt) {
  DpsControl control(*dps_);
  control.assign("gw-e2e-1", hubB_->hubHost());
  const std::string deviceKey = deriveDeviceKey(groupKey_, "gw-e2e-1");
  auto o = options("gw-e2e-1");
  o.payloadJson = R"({"site":"north"})";
  o.modelId = "dtmi:com:example:Gateway;1";
  const Outcome outcome = provision(o);
  ASSERT_TRUE(outcome) << outcome.error().error.message;
  EXPECT_EQ(outcome->assignedHub, "127.0.0.1");
  EXPECT_EQ(outcome->deviceId, "gw-e2e-1");
  EXPECT_EQ(outcome->substatus, "initialAssignment");
  const auto seen = control.registration("gw-e2e-1");
  ASSERT_TRUE(seen);
  EXPECT_EQ(seen->payload, R"({"site":"north","modelId":"dtmi:com:example:Gateway;1"})");
  auto auth = control.service().waitForEvent("auth", "gw-e2e-1");
  ASSERT_TRUE(auth);
  EXPECT_NE(auth->json.find("/registrations/gw-e2e-1/api-version=2021-06-01&ClientVersion="
                            "iothubd%2Fe2e"),
            std::string::npos)
      << auth->json;

  // The hub DPS named takes the device with the key DPS accepted (DPS would have created it).
  ServiceClient hubService(*hubB_);
  hubService.registerDevice(outcome->deviceId, deviceKey);
  session::SessionOptions s;
  s.hubHostname = outcome->assignedHub;
  s.deviceId = outcome->deviceId;
  s.port = hubB_->port();
  s.sharedAccessKey = core::Secret<>(deviceKey);
  s.tls.caFile = hubB_->caFile();
  s.ensureDesiredProperties = false;
  auto hubTransport = mqtt::createMosquittoTransport(*loop_);
  ASSERT_TRUE(hubTransport);
  session::HubSession session(*loop_, *loop_, **hubTransport, s);
  std::optional<core::Result<void>> connected;
  session.connect([&](core::Result<void> r) { connected = std::move(r); });
  ASSERT_TRUE(runUntil([&] { return connected.has_value(); }, 10s)) << "no CONNACK within 10 s";
  ASSERT_TRUE(*connected) << connected->error().message;
  EXPECT_TRUE(hubService.waitForAuth("gw-e2e-1"));
}

TEST_F(DpsProvisioningTest, AWrongGroupKeyEndsInBadCredentials) {
  auto o = options("gw-e2e-2");
  o.deviceKey = core::Secret<>(deriveDeviceKey(randomKey(), "gw-e2e-2"));
  const Outcome outcome = provision(o);
  ASSERT_FALSE(outcome);
  EXPECT_EQ(outcome.error().kind, FailureKind::BadCredentials) << outcome.error().error.message;
  EXPECT_EQ(outcome.error().status, 401);
  EXPECT_EQ(outcome.error().details.errorCode, 401002u);
}

TEST_F(DpsProvisioningTest, ThrottlingIsWaitedOut) {
  DpsControl control(*dps_);
  control.fault({.registrationId = "gw-e2e-3", .status = 429, .retryAfterSeconds = 1});
  const Outcome throttled = provision(options("gw-e2e-3"));
  ASSERT_TRUE(throttled) << throttled.error().error.message;
  EXPECT_EQ(control.registration("gw-e2e-3")->registerRequests, 2);
}

TEST_F(DpsProvisioningTest, AnX509DeviceIsAssignedByItsCertificate) {
  auto o = options("gw-x509");
  o.attestation = provisioning::Attestation::X509;
  o.deviceKey = core::Secret<>();
  o.port = dps_->x509Port();
  o.tls.certFile = dps_->dir() + "/gw-x509.crt";
  o.tls.keyFile = dps_->dir() + "/gw-x509.key";
  dps_->issueClientCertificate("gw-x509", o.tls.certFile, o.tls.keyFile);
  const Outcome outcome = provision(o);
  ASSERT_TRUE(outcome) << outcome.error().error.message;
  EXPECT_EQ(outcome->assignedHub, "127.0.0.1");
  EXPECT_EQ(outcome->deviceId, "gw-x509");
}

TEST_F(DpsProvisioningTest, ACertificateWithoutEnrollmentIsAnUnknownRegistration) {
  auto o = options("gw-stranger");
  o.attestation = provisioning::Attestation::X509;
  o.deviceKey = core::Secret<>();
  o.port = dps_->x509Port();
  o.tls.certFile = dps_->dir() + "/gw-stranger.crt";
  o.tls.keyFile = dps_->dir() + "/gw-stranger.key";
  dps_->issueClientCertificate("gw-stranger", o.tls.certFile, o.tls.keyFile);
  const Outcome outcome = provision(o);
  ASSERT_FALSE(outcome);
  EXPECT_EQ(outcome.error().kind, FailureKind::UnknownRegistration)
      << outcome.error().error.message;
  EXPECT_EQ(outcome.error().status, 404);
}

}  // namespace
}  // namespace iothubd::hubemu
