// SPDX-License-Identifier: MIT
// Issue 16: zero-touch provisioning in the real daemon. The device knows only the DPS ID scope,
// its registration id and an attestation; the DPS emulator assigns it to one of two hub
// emulators that share one port on two loopback addresses (localhost and 127.0.0.2), as two
// real hubs share 8883.
#include <sys/stat.h>
#include <sys/wait.h>
#include <sysexits.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <tuple>

#include "daemon_fixture.hpp"
#include "dps_emulator.hpp"

namespace iothubd::testing {
namespace {

using hubemu::DpsControl;
using hubemu::DpsEmulator;
using hubemu::DpsEnrollment;
using hubemu::DpsFault;
using hubemu::HubEmulator;
using hubemu::ServiceClient;

constexpr const char* kGroup = "gateways";
constexpr const char* kSecondHub = "127.0.0.2";

HubEmulator::Options firstHub(bool x509) {
  HubEmulator::Options o;
  o.x509Listener = x509;
  return o;
}

class ProvisioningTest : public DaemonTest {
 protected:
  explicit ProvisioningTest(bool x509 = false) : DaemonTest(firstHub(x509)) {}

  void SetUp() override {
    DaemonTest::SetUp();
    // The device has no connection string: DPS tells it where to go.
    ::unlink((credentialsDir_ + "/connection-string").c_str());
    HubEmulator::Options second;
    second.hubHost = kSecondHub;
    second.ipv4Address = kSecondHub;
    second.port = hub_.port();
    hubB_ = std::make_unique<HubEmulator>(second);
    hubB_->start();
    DpsEmulator::Options o;
    o.hubs = {hub_.hubHost(), kSecondHub};
    o.assigningPolls = 0;  // register (202), one poll after retry-after 1 s, assigned
    o.x509Listener = true;
    dps_ = std::make_unique<DpsEmulator>(o);
    groupKey_ = dps_->addGroupEnrollment(kGroup);
    dps_->start();
    // What DPS would do: the device exists on both hubs with the key derived from the group's.
    deviceKey_ = hubemu::deriveDeviceKey(groupKey_, registrationId_);
    ServiceClient(hub_).registerDevice(registrationId_, deviceKey_);
    ServiceClient(*hubB_).registerDevice(registrationId_, deviceKey_);

    auto user = serviceUser();
    stateDir_ = daemonDir_ + "/state";
    ::mkdir(stateDir_.c_str(), 0700);
    if (::chown(stateDir_.c_str(), user.uid, user.gid) != 0) {
      throw std::runtime_error("cannot chown " + stateDir_);
    }
    daemonEnv_["STATE_DIRECTORY"] = stateDir_;
  }

  void TearDown() override {
    DaemonTest::TearDown();
    dps_->printBrokerLogIf(HasFailure());
    hubB_->printBrokerLogIf(HasFailure());
  }

  void useDps(const std::string& extra = "") {
    writeConfig("[hub]\nauthentication = dps\nport = " + std::to_string(hub_.port()) +
                "\n[provisioning]\nglobal_endpoint = " + dps_->host() +
                "\nport = " + std::to_string(dps_->port()) + "\nid_scope = " + dps_->idScope() +
                "\nregistration_id = " + registrationId_ + "\n" + extra);
  }

  /// Waits until ProvisioningState is `state` (PropertiesChanged, bounded). Signals the client
  /// received before are not consumed here: clear them before the action whose outcome it awaits.
  bool waitForProvisioningState(const std::string& state, std::chrono::milliseconds limit = 15s) {
    return waitForProperty("ProvisioningState", sdbus::Variant(state), limit);
  }

  bool waitForProperty(const std::string& name, const sdbus::Variant& value,
                       std::chrono::milliseconds limit = 15s) {
    auto same = [&](const sdbus::Variant& v) {
      return v.peekValueType() == value.peekValueType() &&
             (value.containsValueOfType<std::string>()
                  ? v.get<std::string>() == value.get<std::string>()
                  : v.get<uint64_t>() == value.get<uint64_t>());
    };
    if (same(client().Get("org.iothubd.Device1", name))) {
      return true;
    }
    return client()
        .waitForSignal(
            "PropertiesChanged",
            [&](const SignalRecord& r) {
              auto it = r.changed.find(name);
              return it != r.changed.end() && same(it->second);
            },
            limit)
        .has_value();
  }

  /// Sends `body` with SendMessage; the hub of `service` must receive it from this device.
  void expectSentTo(ServiceClient& service, const std::string& body) {
    const std::string id = client().SendMessage(body, {}, {});
    auto received = service.waitForTelemetry();
    ASSERT_TRUE(received.has_value()) << body;
    EXPECT_EQ(received->device, registrationId_);
    EXPECT_EQ(received->property("$.mid"), id);
  }

  std::string registrationId_ = "gw-7";
  std::string groupKey_;
  std::string stateDir_;
  std::unique_ptr<HubEmulator> hubB_;
  std::unique_ptr<DpsEmulator> dps_;
};

TEST_F(ProvisioningTest, AGroupEnrollmentGatewayProvisionsConnectsAndSendsThenRestartsWithoutDps) {
  writeCredential("dps-group-key", groupKey_ + "\n");
  useDps();
  ServiceClient service(hub_);
  startDaemon();
  ASSERT_TRUE(waitForProvisioningState("assigned"));
  EXPECT_EQ(client().HostName(), "localhost");
  EXPECT_EQ(client().DeviceId(), registrationId_);
  expectSentTo(service, "provisioned");
  DpsControl control(*dps_);
  auto seen = control.registration(registrationId_);
  ASSERT_TRUE(seen.has_value());
  EXPECT_EQ(seen->registerRequests, 1);
  struct stat st {};
  ASSERT_EQ(::stat((stateDir_ + "/dps-assignment.json").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  // A restart without DPS (no network to it): the stored assignment, at once.
  ASSERT_EQ(daemon_->stop(), 0);
  client_.reset();
  dps_->stop();
  startDaemon();
  EXPECT_EQ(client().ProvisioningState(), "assigned");
  EXPECT_EQ(client().HostName(), "localhost");
  expectSentTo(service, "after the restart");
  EXPECT_EQ(daemon_->log().find("DPS: registering"), std::string::npos) << daemon_->log();
}

TEST_F(ProvisioningTest, DpsRefusalsFailWithTheirMeaningAndA429IsRetried) {
  writeCredential("dps-group-key", groupKey_ + "\n");
  useDps();
  DpsControl control(*dps_);
  control.fault({.registrationId = registrationId_, .status = 401, .count = 1});
  startDaemon();
  ASSERT_TRUE(waitForProvisioningState("failed"));
  EXPECT_NE(client().LastError().find("DPS refused the credentials"), std::string::npos)
      << client().LastError();
  auto background = client().waitForSignal("BackgroundException");
  ASSERT_TRUE(background.has_value());
  EXPECT_EQ(background->args[0], "org.iothubd.Error.Credential");
  EXPECT_TRUE(daemon_->waitStatus("DPS registration failed: " + client().LastError()))
      << daemon_->lastStatus();
  EXPECT_FALSE(client().Connected());

  // An operator fixes the enrollment and asks again: now DPS has no enrollment (404).
  control.fault({.registrationId = registrationId_, .status = 404, .count = 1});
  client().clearSignals();
  client().Reprovision();
  EXPECT_NE(client().ProvisioningState(), "failed") << "registering again";
  ASSERT_TRUE(waitForProvisioningState("failed"));
  EXPECT_NE(client().LastError().find("DPS has no enrollment for registration"), std::string::npos)
      << client().LastError();

  // Throttled (429 with retry-after): retried, then assigned and connected.
  control.fault({.registrationId = registrationId_,
                 .status = 429,
                 .retryAfterSeconds = 1,
                 .count = 1,
                 .on = "register"});
  client().clearSignals();
  client().Reprovision();
  ASSERT_TRUE(waitForProvisioningState("assigned"));
  EXPECT_TRUE(client().waitForConnectedProperty(true));
  auto seen = control.registration(registrationId_);
  ASSERT_TRUE(seen.has_value());
  EXPECT_EQ(seen->registerRequests, 4);  // 401, 404, 429, accepted
  EXPECT_EQ(client().LastError(), "");
}

TEST_F(ProvisioningTest, AMovedDeviceReprovisionsByItselfAndItsOutboxDrainsToTheNewHub) {
  writeCredential("dps-group-key", groupKey_ + "\n");
  useDps();
  ServiceClient serviceA(hub_);
  ServiceClient serviceB(*hubB_);
  startDaemon();
  ASSERT_TRUE(waitForProvisioningState("assigned"));
  ASSERT_TRUE(serviceA.waitForAuth(registrationId_).has_value());

  // Moved: DPS now assigns the second hub, the first refuses the device and drops it.
  DpsControl control(*dps_);
  control.assign(registrationId_, kSecondHub);
  serviceA.refuseConnects(registrationId_);
  serviceA.dropConnection(registrationId_);
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    ids.push_back(client().QueueMessage("queued " + std::to_string(i), {}, {}));
  }
  std::set<std::string> delivered;
  while (delivered.size() < ids.size()) {
    auto t = serviceB.waitForTelemetry({}, 20s);
    ASSERT_TRUE(t.has_value()) << delivered.size() << " of " << ids.size() << " delivered";
    delivered.insert(t->property("$.mid").value_or(""));
  }
  EXPECT_EQ(delivered, std::set<std::string>(ids.begin(), ids.end()));
  EXPECT_EQ(client().HostName(), kSecondHub);
  EXPECT_EQ(client().ProvisioningState(), "assigned");
  EXPECT_TRUE(waitForProperty("OutboxLength", sdbus::Variant(uint64_t{0})))
      << client().OutboxLength() << " messages still in the outbox";
  for (const auto& t : serviceA.telemetry()) {
    EXPECT_EQ(std::count(ids.begin(), ids.end(), t.property("$.mid").value_or("")), 0)
        << "delivered to the old hub: " << t.payload;
  }
}

TEST_F(ProvisioningTest, AReloadThatChangesTheRegistrationRegistersAgain) {
  writeCredential("dps-group-key", groupKey_ + "\n");
  useDps();
  startDaemon();
  ASSERT_TRUE(waitForProvisioningState("assigned"));
  EXPECT_EQ(client().HostName(), "localhost");

  // A custom allocation payload now: the stored assignment was made for other settings.
  DpsControl control(*dps_);
  control.assign(registrationId_, kSecondHub);
  writeFile(daemonDir_ + "/payload.json", R"({"site":"north"})", 0644);
  useDps("payload_file = " + daemonDir_ + "/payload.json\n");
  ASSERT_TRUE(daemon_->reload());
  EXPECT_TRUE(waitForProperty("HostName", sdbus::Variant(std::string(kSecondHub))));
  ServiceClient serviceB(*hubB_);
  expectSentTo(serviceB, "on the new hub");
  auto seen = control.registration(registrationId_);
  ASSERT_TRUE(seen.has_value());
  EXPECT_EQ(seen->registerRequests, 2);
  EXPECT_EQ(seen->payload, R"({"site":"north"})");
  EXPECT_EQ(client().ProvisioningState(), "assigned");
}

/// `iothubd --check-config` with the test's configuration and credentials: exit status, output.
std::pair<int, std::string> checkConfig(const std::string& configPath,
                                        const std::string& credentialsDir) {
  const std::string command = "CREDENTIALS_DIRECTORY='" + credentialsDir + "' '" +
                              std::getenv("IOTHUBD_BINARY") + "' --config '" + configPath +
                              "' --check-config 2>&1";
  FILE* p = ::popen(command.c_str(), "r");
  if (p == nullptr) {
    return {-1, "popen failed"};
  }
  std::string out;
  char buffer[4096];
  while (std::size_t n = std::fread(buffer, 1, sizeof buffer, p)) {
    out.append(buffer, n);
  }
  const int status = ::pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

TEST_F(ProvisioningTest, CheckConfigChecksTheProvisioningSettingsAndKey) {
  writeCredential("dps-group-key", groupKey_ + "\n");
  useDps();
  auto [status, out] = checkConfig(configPath_, credentialsDir_);
  EXPECT_EQ(status, 0) << out;
  EXPECT_EQ(out, "configuration OK: DPS registration gw-7 in ID scope " + dps_->idScope() +
                     " at localhost:" + std::to_string(dps_->port()) +
                     " (symmetric-key, group enrollment)\n");
  writeCredential("dps-group-key", "not a key\n");
  std::tie(status, out) = checkConfig(configPath_, credentialsDir_);
  EXPECT_EQ(status, EX_CONFIG) << out;
  EXPECT_NE(out.find("DPS group enrollment key"), std::string::npos) << out;
  EXPECT_EQ(out.find("not a key"), std::string::npos) << "the secret must not be shown: " << out;
  ::unlink((credentialsDir_ + "/dps-group-key").c_str());
  useDps("id_scope = not a scope\n");
  std::tie(status, out) = checkConfig(configPath_, credentialsDir_);
  EXPECT_EQ(status, EX_CONFIG) << out;
  EXPECT_NE(out.find("id_scope"), std::string::npos) << out;
}

class ProvisioningX509Test : public ProvisioningTest {
 protected:
  ProvisioningX509Test() : ProvisioningTest(true) {}
};

TEST_F(ProvisioningX509Test, AnX509DeviceProvisionsWithItsCertificate) {
  registrationId_ = "gw-x509";
  DpsControl control(*dps_);
  DpsEnrollment x509;
  x509.name = registrationId_;
  x509.attestation = DpsEnrollment::Attestation::X509;
  control.enroll(x509);
  auto user = serviceUser();
  hub_.issueClientCertificate(registrationId_, credentialsDir_ + "/x509-cert",
                              credentialsDir_ + "/x509-key", "", false, static_cast<int>(user.uid),
                              static_cast<int>(user.gid));
  writeConfig("[hub]\nauthentication = dps\nport = " + std::to_string(hub_.x509Port()) +
              "\n[provisioning]\nglobal_endpoint = " + dps_->host() +
              "\nport = " + std::to_string(dps_->x509Port()) + "\nid_scope = " + dps_->idScope() +
              "\nregistration_id = " + registrationId_ + "\nattestation = x509\n");
  ServiceClient service(hub_);
  service.registerDevice(registrationId_, hubemu::randomKey());  // the hub knows the device
  startDaemon();
  ASSERT_TRUE(waitForProvisioningState("assigned"));
  auto auth = service.waitForAuth(registrationId_);
  ASSERT_TRUE(auth.has_value());
  EXPECT_EQ(auth->method, "x509");
  EXPECT_EQ(client().AuthenticationType(), "x509");
  expectSentTo(service, "from an X.509 gateway");
  auto seen = control.registration(registrationId_);
  ASSERT_TRUE(seen.has_value());
  EXPECT_EQ(seen->attestation, "x509");
}

}  // namespace
}  // namespace iothubd::testing
