// SPDX-License-Identifier: MIT
// The composition: what each key of iothubd.conf does to the components at a reload (every key
// the shipped file documents has a case here, so a new key cannot be forgotten, and iothubd.conf(5)
// describes the same keys), and the apply step that start and reload share, against recording
// components.
#include "iothubd/config/composition.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace iothubd::config {
namespace {

using T = Treatment;
using C = Component;

constexpr const char* kKey = "dGhpcy1pcy1hLXRlc3Qta2V5LW9mLTMyLWJ5dGVzISE=";

Loaded base() {
  auto settings = parseSettings({ConfigSource{"iothubd.conf", "[hub]\nport = 8883\n"}});
  EXPECT_TRUE(settings.has_value());
  Loaded l;
  l.settings = *settings;
  l.identity.authentication = AuthKind::ConnectionString;
  l.identity.hubHostname = "contoso.azure-devices.net";
  l.identity.deviceId = "dev1";
  l.identity.sharedAccessKey = core::Secret<>(kKey);
  return l;
}

Environment environment() {
  Environment env;
  env.stateDirectory = "/var/lib/iothubd";
  env.userAgent = "iothubd/test";
  return env;
}

/// One key of iothubd.conf: how a reload sees it change, and what that does.
struct Case {
  const char* key;  ///< "section.key"
  std::function<void(Loaded&)> change;
  std::map<C, T> expect;  ///< components not listed stay Unchanged
};

const std::map<C, T> kReconnect = {{C::Session, T::Reconnect}};
const std::map<C, T> kTrust = {
    {C::Session, T::Reconnect}, {C::Https, T::Rebuild}, {C::Upload, T::Rebuild}};
const std::map<C, T> kSessionInPlace = {{C::Session, T::InPlace}};
const std::map<C, T> kOutbox = {{C::Outbox, T::Rebuild}};
const std::map<C, T> kUpload = {{C::Upload, T::Rebuild}};
const std::map<C, T> kBus = {{C::Bus, T::InPlace}};

std::vector<Case> cases() {
  auto key = [](Loaded& l) { l.identity.sharedAccessKey = core::Secret<>("b3RoZXIta2V5"); };
  auto x509 = [](Loaded& l) { l.identity.x509CertFile = "/etc/iothubd/other.pem"; };
  return {
      {"hub.authentication",
       [](Loaded& l) {
         l.identity.authentication = AuthKind::SasToken;
         l.identity.sasToken = core::Secret<>("SharedAccessSignature sr=x&sig=y&se=1");
       },
       kReconnect},
      {"hub.hostname",
       [](Loaded& l) { l.identity.hubHostname = "fabrikam.azure-devices.net"; },
       {{C::Session, T::Reconnect}, {C::Upload, T::Rebuild}}},
      {"hub.device_id",
       [](Loaded& l) { l.identity.deviceId = "dev2"; },
       {{C::Session, T::Reconnect}, {C::Upload, T::Rebuild}}},
      {"hub.module_id",
       [](Loaded& l) { l.identity.moduleId = "mod1"; },
       {{C::Session, T::Reconnect}, {C::Upload, T::Rebuild}}},
      {"hub.gateway_hostname", [](Loaded& l) { l.identity.gatewayHostname = "edge.local"; },
       kReconnect},
      {"hub.port", [](Loaded& l) { l.settings.port = 18883; }, kReconnect},
      {"credentials.connection_string_file", key, kReconnect},
      {"credentials.shared_access_key_file", key, kReconnect},
      {"credentials.sas_token_file",
       [](Loaded& l) { l.identity.sasToken = core::Secret<>("SharedAccessSignature sr=x&se=2"); },
       kReconnect},
      {"credentials.x509_cert_file", x509, kTrust},
      {"credentials.x509_key_file",
       [](Loaded& l) { l.identity.x509KeyFile = "/etc/iothubd/other.key"; }, kTrust},
      {"credentials.x509_pass_phrase_file",
       [](Loaded& l) { l.identity.x509PassPhrase = core::Secret<>("other"); }, kTrust},
      {"connection.server_verification_cert",
       [](Loaded& l) { l.settings.serverVerificationCert = "/etc/iothubd/ca.pem"; }, kTrust},
      {"connection.websockets", [](Loaded& l) { l.settings.websockets = true; }, kReconnect},
      {"connection.cipher", [](Loaded& l) { l.settings.cipher = "ECDHE-ECDSA-AES128-GCM-SHA256"; },
       kTrust},
      {"connection.product_info", [](Loaded& l) { l.settings.productInfo = "gw/2"; }, kReconnect},
      {"connection.keep_alive", [](Loaded& l) { l.settings.keepAlive = 120; }, kReconnect},
      {"connection.sastoken_ttl", [](Loaded& l) { l.settings.sastokenTtl = 600; }, kReconnect},
      {"connection.auto_connect", [](Loaded& l) { l.settings.autoConnect = false; },
       kSessionInPlace},
      {"connection.connection_retry", [](Loaded& l) { l.settings.connectionRetry = false; },
       kSessionInPlace},
      {"connection.connection_retry_initial_delay",
       [](Loaded& l) { l.settings.connectionRetryInitialDelayMs = 3000; }, kSessionInPlace},
      {"connection.connection_retry_max_delay",
       [](Loaded& l) { l.settings.connectionRetryMaxDelayMs = 250; }, kSessionInPlace},
      {"connection.connection_retry_interval",
       [](Loaded& l) { l.settings.connectionRetryInterval = 3; }, kSessionInPlace},
      {"connection.ensure_desired_properties",
       [](Loaded& l) { l.settings.ensureDesiredProperties = false; }, kSessionInPlace},
      {"connection.clock_sync_timeout", [](Loaded& l) { l.settings.clockSyncTimeout = 10; },
       kSessionInPlace},
      // Also the file-upload requests' bound.
      {"connection.operation_timeout",
       [](Loaded& l) { l.settings.operationTimeout = 30; },
       {{C::Session, T::InPlace}, {C::Upload, T::Rebuild}}},
      {"proxy.proxy_type", [](Loaded& l) { l.proxy.type = core::ProxySettings::Type::Socks5; },
       kTrust},
      {"proxy.proxy_address", [](Loaded& l) { l.proxy.host = "proxy.local"; }, kTrust},
      {"proxy.proxy_port", [](Loaded& l) { l.proxy.port = 3128; }, kTrust},
      {"proxy.proxy_username", [](Loaded& l) { l.proxy.username = "gw"; }, kTrust},
      {"proxy.proxy_password_file", [](Loaded& l) { l.proxy.password = core::Secret<>("pw"); },
       kTrust},
      {"methods.method_response_timeout", [](Loaded& l) { l.settings.methodResponseTimeout = 5; },
       kBus},
      {"outbox.outbox_path", [](Loaded& l) { l.settings.outboxPath = "/srv/outbox.db"; }, kOutbox},
      {"outbox.outbox_max_messages", [](Loaded& l) { l.settings.outboxMaxMessages = 10; }, kOutbox},
      {"outbox.outbox_max_bytes", [](Loaded& l) { l.settings.outboxMaxBytes = 1 << 20; }, kOutbox},
      {"outbox.outbox_full_policy", [](Loaded& l) { l.settings.outboxFullPolicy = "drop-oldest"; },
       kOutbox},
      {"outbox.outbox_default_ttl", [](Loaded& l) { l.settings.outboxDefaultTtl = 60; }, kOutbox},
      {"outbox.max_inflight", [](Loaded& l) { l.settings.maxInflight = 8; }, kOutbox},
      {"file_upload.https_port", [](Loaded& l) { l.settings.fileUploadPort = 8443; }, kUpload},
      {"file_upload.block_size", [](Loaded& l) { l.settings.blockSize = 1 << 20; }, kUpload},
      {"file_upload.max_concurrent_uploads", [](Loaded& l) { l.settings.maxConcurrentUploads = 2; },
       kUpload},
      {"file_upload.upload_timeout", [](Loaded& l) { l.settings.uploadTimeout = 60; }, kUpload},
      {"limits.max_pending_calls_per_app", [](Loaded& l) { l.settings.maxPendingCallsPerApp = 8; },
       kBus},
      {"limits.max_method_claims_per_app", [](Loaded& l) { l.settings.maxMethodClaimsPerApp = 8; },
       kBus},
      {"limits.max_pending_method_requests",
       [](Loaded& l) { l.settings.maxPendingMethodRequests = 8; }, kBus},
      {"limits.max_queued_messages", [](Loaded& l) { l.settings.maxQueuedMessages = 8; },
       kSessionInPlace},
      {"limits.max_queued_bytes", [](Loaded& l) { l.settings.maxQueuedBytes = 1 << 21; },
       kSessionInPlace},
      {"connection.keep_connected", [](Loaded& l) { l.settings.keepConnected = false; }, kBus},
      {"file_upload.upload_from_path_directories",
       [](Loaded& l) { l.settings.uploadFromPathDirectories = {"/srv/uploads"}; }, kBus},
      {"daemon.log_level",
       [](Loaded& l) { l.settings.logLevel = "debug"; },
       {{C::LogLevel, T::InPlace}}},
  };
}

/// authentication = dps: hub and device id come from DPS (the daemon fills them in with
/// assignHub()), the registration from [provisioning] and the dps credentials.
Loaded dpsBase() {
  Loaded l = base();
  l.identity.authentication = AuthKind::Dps;
  l.identity.hubHostname.clear();
  l.identity.deviceId.clear();
  DpsRegistration dps;
  dps.globalEndpoint = "global.azure-devices-provisioning.net";
  dps.idScope = "0ne00000001";
  dps.registrationId = "gw-1";
  l.identity.dps = dps;
  return l;
}

/// A [provisioning] key or dps credential: the registration changes (the daemon then
/// registers again, unless an assignment is stored for the new settings); the connection
/// changes only where it uses the same credential.
struct DpsCase {
  const char* key;
  std::function<void(Loaded&)> change;
  std::map<C, T> expect;  ///< components not listed stay Unchanged
};

std::vector<DpsCase> dpsCases() {
  auto key = [](Loaded& l) { l.identity.sharedAccessKey = core::Secret<>("b3RoZXIta2V5"); };
  return {
      {"provisioning.global_endpoint",
       [](Loaded& l) { l.identity.dps->globalEndpoint = "dps.example.net"; },
       {}},
      {"provisioning.port", [](Loaded& l) { l.identity.dps->port = 443; }, {}},
      {"provisioning.id_scope", [](Loaded& l) { l.identity.dps->idScope = "0ne00000002"; }, {}},
      {"provisioning.registration_id",
       [](Loaded& l) { l.identity.dps->registrationId = "gw-2"; },
       {}},
      {"provisioning.attestation",
       [](Loaded& l) {
         l.identity.dps->attestation = DpsAttestation::X509;
         l.identity.x509CertFile = "/etc/iothubd/gw.pem";
       },
       kTrust},
      {"provisioning.payload_file",
       [](Loaded& l) { l.identity.dps->payloadJson = R"({"site":"north"})"; },
       {}},
      {"provisioning.registration_timeout",
       [](Loaded& l) { l.identity.dps->registrationTimeout = std::chrono::seconds(60); },
       {}},
      // The device key is the enrollment's (or derived from the group's) at the hub too.
      {"credentials.dps_key_file", key, kReconnect},
      {"credentials.dps_group_key_file", key, kReconnect},
  };
}

/// "section.key" for every line of `file` (below the source dir) that `keyLine` matches below a
/// line that `sectionLine` matches with a section name; one it matches without ends a section.
std::set<std::string> keysIn(const std::string& file, const std::regex& sectionLine,
                             const std::regex& keyLine) {
  std::ifstream in(std::string(IOTHUBD_SOURCE_DIR) + "/" + file);
  EXPECT_TRUE(in.good()) << file;
  std::set<std::string> keys;
  std::string section;
  std::string line;
  std::smatch m;
  while (std::getline(in, line)) {
    if (std::regex_search(line, m, sectionLine)) {
      section = m[1];
    } else if (!section.empty() && std::regex_search(line, m, keyLine)) {
      keys.insert(section + "." + std::string(m[1]));
    }
  }
  return keys;
}

/// Every key the shipped iothubd.conf documents (set or commented out).
std::set<std::string> documentedKeys() {
  return keysIn("config/iothubd.conf", std::regex(R"(^\[([a-z_]+)\])"),
                std::regex(R"(^#?([a-z_0-9]+) =)"));
}

/// Every key iothubd.conf(5) describes: `.BI "key = "` in a `.SH [section]`.
std::set<std::string> manualKeys() {
  return keysIn("man/iothubd.conf.5", std::regex(R"(^\.SH (?:\[([a-z_]+)\])?)"),
                std::regex(R"(^\.BI "([a-z_0-9]+) = ")"));
}

TEST(Composition, EveryDocumentedKeyHasAReloadCase) {
  std::set<std::string> covered;
  for (const auto& c : cases()) {
    covered.insert(c.key);
  }
  for (const auto& c : dpsCases()) {
    covered.insert(c.key);
  }
  EXPECT_EQ(covered, documentedKeys())
      << "a key of config/iothubd.conf lacks a case here (what does a reload do with it?)";
}

TEST(Composition, TheManualDescribesEveryKeyOfTheShippedFile) {
  EXPECT_EQ(manualKeys(), documentedKeys())
      << "config/iothubd.conf and man/iothubd.conf.5 list different keys";
}

TEST(Composition, EachKeyIsTreatedAsItsComponentCan) {
  const auto env = environment();
  const Composition running = compose(base(), env);
  for (const auto& c : cases()) {
    Loaded changed = base();
    c.change(changed);
    const Composition next = compose(changed, env);
    ASSERT_FALSE(running == next) << c.key << ": the change did not reach any component";
    for (const Decision& d : plan(running, next)) {
      auto want = c.expect.contains(d.component) ? c.expect.at(d.component) : T::Unchanged;
      EXPECT_EQ(d.treatment, want) << c.key << " → " << componentName(d.component);
      EXPECT_EQ(d.changed.empty(), want == T::Unchanged) << c.key;
    }
  }
}

TEST(Composition, EachProvisioningKeyChangesTheRegistration) {
  const auto env = environment();
  const Composition running = compose(dpsBase(), env);
  ASSERT_TRUE(running.provisioning.has_value());
  for (const auto& c : dpsCases()) {
    Loaded changed = dpsBase();
    c.change(changed);
    const Composition next = compose(changed, env);
    ASSERT_TRUE(next.provisioning.has_value()) << c.key;
    EXPECT_FALSE(*running.provisioning == *next.provisioning) << c.key;
    for (const Decision& d : plan(running, next)) {
      auto want = c.expect.contains(d.component) ? c.expect.at(d.component) : T::Unchanged;
      EXPECT_EQ(d.treatment, want) << c.key << " → " << componentName(d.component);
    }
  }
}

TEST(Composition, ADpsDeviceRegistersWithTheHubConnectionsSettingsAndConnectsWhereAssigned) {
  Loaded l = dpsBase();
  l.settings.fileUploadPort = 8443;
  l.settings.websockets = true;
  l.settings.serverVerificationCert = "/etc/iothubd/ca.pem";
  l.proxy.type = core::ProxySettings::Type::Http;
  l.proxy.host = "proxy.local";
  Composition c = compose(l, environment());
  ASSERT_TRUE(c.provisioning.has_value());
  EXPECT_EQ(c.stateDirectory, "/var/lib/iothubd");
  EXPECT_EQ(c.provisioning->registrationId, "gw-1");
  EXPECT_EQ(c.provisioning->deviceKey, c.session.sharedAccessKey);
  EXPECT_EQ(c.provisioning->tls, c.session.tls);
  EXPECT_EQ(c.provisioning->proxy, c.session.proxy);
  EXPECT_TRUE(c.provisioning->websockets);
  EXPECT_EQ(c.provisioning->userAgent, "iothubd/test");
  EXPECT_EQ(c.session.hubHostname, "") << "until DPS assigned a hub";

  assignHub(c, "hub-a.azure-devices.net", "gw-1");
  EXPECT_EQ(c.session.hubHostname, "hub-a.azure-devices.net");
  EXPECT_EQ(c.session.deviceId, "gw-1");
  ASSERT_TRUE(c.upload.has_value());
  EXPECT_EQ(c.upload->endpoint.host, "hub-a.azure-devices.net:8443");
  EXPECT_EQ(c.upload->endpoint.deviceId, "gw-1");
  // Moved to another hub: the https_port suffix stays.
  assignHub(c, "hub-b.azure-devices.net", "gw-1b");
  EXPECT_EQ(c.upload->endpoint.host, "hub-b.azure-devices.net:8443");
  EXPECT_EQ(c.session.deviceId, "gw-1b");
  EXPECT_FALSE(compose(base(), environment()).provisioning.has_value());
}

TEST(Composition, NothingChangedIsNothingToDo) {
  const auto env = environment();
  for (const Decision& d : plan(compose(base(), env), compose(base(), env))) {
    EXPECT_EQ(d.treatment, T::Unchanged) << componentName(d.component);
  }
}

TEST(Composition, TheComponentsGetTheSettingsAsTheyAreMeant) {
  Loaded l = base();
  l.settings.fileUploadPort = 8443;
  l.settings.serverVerificationCert = "/etc/iothubd/ca.pem";
  l.proxy.type = core::ProxySettings::Type::Http;
  l.proxy.host = "proxy.local";
  l.proxy.port = 3128;
  const Composition c = compose(l, environment());
  EXPECT_EQ(c.session.hubHostname, "contoso.azure-devices.net");
  EXPECT_EQ(c.session.userAgent, "iothubd/test");
  // One trust store and one proxy for MQTT and HTTPS.
  EXPECT_EQ(c.https.tls, c.session.tls);
  EXPECT_EQ(c.https.tls.caFile, "/etc/iothubd/ca.pem");
  EXPECT_EQ(c.https.proxy, c.session.proxy);
  ASSERT_TRUE(c.upload.has_value());
  EXPECT_EQ(c.upload->endpoint.host, "contoso.azure-devices.net:8443");
  EXPECT_EQ(c.upload->endpoint.deviceId, "dev1");
  EXPECT_EQ(c.outbox.path, "/var/lib/iothubd/outbox.db") << "default: in the state directory";

  l.identity.moduleId = "mod1";
  l.settings.fileUploadPort = 443;
  EXPECT_FALSE(compose(l, environment()).upload.has_value()) << "modules cannot upload";
  l.identity.moduleId.clear();
  EXPECT_EQ(compose(l, environment()).upload->endpoint.host, "contoso.azure-devices.net");
}

// connection_retry_interval (the Python SDK's fixed interval) survives as the schedule's cap,
// unless connection_retry_max_delay says otherwise.
TEST(Composition, TheRetryBoundsAndTheDeprecatedIntervalReachTheSession) {
  Loaded l = base();
  EXPECT_EQ(compose(l, environment()).session.connectionRetryInitialDelay, std::chrono::seconds(1));
  EXPECT_EQ(compose(l, environment()).session.connectionRetryMaxDelay, std::chrono::seconds(60));
  l.settings.connectionRetryInterval = 5;
  EXPECT_EQ(compose(l, environment()).session.connectionRetryMaxDelay, std::chrono::seconds(5));
  l.settings.connectionRetryMaxDelayMs = 30000;
  l.settings.connectionRetryInitialDelayMs = 250;
  const auto session = compose(l, environment()).session;
  EXPECT_EQ(session.connectionRetryMaxDelay, std::chrono::seconds(30));
  EXPECT_EQ(session.connectionRetryInitialDelay, std::chrono::milliseconds(250));
}

/// Records what apply() asks of the components.
class Recording : public Components {
 public:
  void setLogLevel(core::LogLevel) override { calls.emplace_back("log"); }
  void configureSession(const session::SessionOptions&) override { calls.emplace_back("session"); }
  core::Result<void> buildHttps(const http::CurlOptions&) override {
    calls.emplace_back("https");
    return httpsFails ? core::fail(core::Errc::Config, "bad CA") : core::Result<void>{};
  }
  void buildUpload(const std::optional<UploadOptions>&) override { calls.emplace_back("upload"); }
  core::Result<void> buildOutbox(const outbox::OutboxOptions& o) override {
    calls.emplace_back("outbox " + o.path);
    return outboxFails ? core::fail(core::Errc::Io, "cannot open " + o.path) : core::Result<void>{};
  }
  void configureBus(const BusOptions&) override { calls.emplace_back("bus"); }
  std::vector<std::string> calls;
  bool httpsFails = false;
  bool outboxFails = false;
};

TEST(Apply, StartBuildsEveryComponentInOrder) {
  Recording r;
  std::optional<Composition> running;
  auto next = compose(base(), environment());
  ASSERT_TRUE(apply(running, next, r).has_value());
  EXPECT_EQ(r.calls, (std::vector<std::string>{"log", "session", "https", "upload",
                                               "outbox /var/lib/iothubd/outbox.db", "bus"}));
  ASSERT_TRUE(running.has_value());
  EXPECT_TRUE(*running == next);
}

TEST(Apply, AtStartOnlyTheHttpsClientIsFatalAndAFailedOutboxIsTriedAgainAtTheNextReload) {
  Recording r;
  r.httpsFails = true;
  std::optional<Composition> running;
  auto next = compose(base(), environment());
  EXPECT_FALSE(apply(running, next, r).has_value());

  r = Recording();
  r.outboxFails = true;
  running.reset();
  ASSERT_TRUE(apply(running, next, r).has_value());
  r.calls.clear();
  r.outboxFails = false;
  auto applied = apply(running, next, r);  // the same configuration, reloaded
  ASSERT_TRUE(applied.has_value());
  EXPECT_EQ(r.calls, (std::vector<std::string>{"outbox /var/lib/iothubd/outbox.db"}));
}

/// Components started from base(), ready for a reload.
class ReloadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(apply(running, compose(base(), env), r).has_value());
    r.calls.clear();
  }
  Recording r;
  std::optional<Composition> running;
  const Environment env = environment();
};

TEST_F(ReloadTest, AReloadTouchesOnlyWhatChangedAndReportsAReconnect) {
  Loaded l = base();
  l.identity.deviceId = "dev2";
  l.settings.maxMethodClaimsPerApp = 3;
  auto applied = apply(running, compose(l, env), r);
  ASSERT_TRUE(applied.has_value());
  EXPECT_EQ(r.calls, (std::vector<std::string>{"session", "upload", "bus"}));
  EXPECT_TRUE(applied->reconnects);
  EXPECT_TRUE(applied->identityChanged);
  EXPECT_TRUE(applied->refused.empty());
  EXPECT_EQ(running->session.deviceId, "dev2");
}

TEST_F(ReloadTest, AComponentThatCannotBeRebuiltKeepsRunningAndTheRefusalIsSaid) {
  Loaded l = base();
  l.settings.outboxPath = "/nonexistent/outbox.db";
  l.settings.serverVerificationCert = "/etc/iothubd/ca.pem";
  r.outboxFails = true;
  r.httpsFails = true;
  auto applied = apply(running, compose(l, env), r);
  ASSERT_TRUE(applied.has_value());
  // The uploader is not rebuilt for an HTTPS client that was not.
  EXPECT_EQ(r.calls,
            (std::vector<std::string>{"session", "https", "outbox /nonexistent/outbox.db"}));
  ASSERT_EQ(applied->refused.size(), 2u);
  EXPECT_EQ(applied->refused[0],
            "reload: HTTPS client: bad CA; keeping the running one (server_verification_cert not "
            "applied)");
  EXPECT_EQ(applied->refused[1],
            "reload: outbox: cannot open /nonexistent/outbox.db; keeping the running one "
            "(outbox_path not applied)");
  // What runs is recorded, so the next reload tries again.
  EXPECT_EQ(running->outbox.path, "/var/lib/iothubd/outbox.db");
  EXPECT_EQ(running->https.tls.caFile, "");
  EXPECT_EQ(running->session.tls.caFile, "/etc/iothubd/ca.pem");
}

}  // namespace
}  // namespace iothubd::config
