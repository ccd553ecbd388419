// SPDX-License-Identifier: MIT
// authentication = dps: [provisioning] in the settings and the DPS credentials.
#include <gtest/gtest.h>

#include "iothubd/config/credentials.hpp"
#include "iothubd/config/settings.hpp"
#include "iothubd/proto/provisioning.hpp"
#include "temp_dir.hpp"

namespace iothubd::config {
namespace {

using iothubd::testing::TempDir;
using iothubd::testing::writeFile;

constexpr const char* kGroupKey =
    "eLR2iER0utabsA7eM5h6xCKQkL0i8oFvGcrcNq4/ZNj+zqWxvte9ag9eO5RP+3Z1qTEMhguSvnYAvFIKwDgycA==";
// kGroupKey derived for gw-0017 (tests/data/dps_vectors.txt, computed with the openssl CLI).
constexpr const char* kDerivedKey = "3rYygi6CLlzqXTC+QytDL63Q5+vgleq/EBH7YSetOyA=";
constexpr const char* kKey = "dGhpcy1pcy1hLXRlc3Qta2V5LW9mLTMyLWJ5dGVzISE=";
constexpr std::uint64_t kNow = 1700000000;

core::Result<Settings> parse(const std::string& text) {
  return parseSettings({ConfigSource{"/etc/iothubd/iothubd.conf", text}});
}

std::string errorOf(const std::string& text) {
  auto r = parse(text);
  EXPECT_FALSE(r.has_value()) << "expected an error for:\n" << text;
  return r ? std::string() : r.error().message;
}

const std::string kDps =
    "[hub]\nauthentication = dps\n"
    "[provisioning]\nid_scope = 0ne00000A0A\nregistration_id = gw-0017\n";

TEST(ProvisioningSettings, OnlyScopeAndRegistrationIdAreNeeded) {
  auto s = parse(kDps);
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_EQ(s->authentication, AuthKind::Dps);
  EXPECT_STREQ(authKindName(s->authentication), "dps");
  const auto& p = s->provisioning;
  EXPECT_EQ(p.globalEndpoint, "global.azure-devices-provisioning.net");
  EXPECT_EQ(p.port, 8883);
  EXPECT_EQ(p.idScope, "0ne00000A0A");
  EXPECT_EQ(p.registrationId, "gw-0017");
  EXPECT_EQ(p.attestation, DpsAttestation::SymmetricKey);
  EXPECT_EQ(p.payloadFile, "");
  EXPECT_EQ(p.registrationTimeout, 300);
}

TEST(ProvisioningSettings, ReadsEveryKey) {
  auto s = parse(kDps +
                 "global_endpoint = dps.example.net\nport = 18884\nattestation = x509\n"
                 "payload_file = /etc/iothubd/dps-payload.json\nregistration_timeout = 60\n"
                 "[hub]\ngateway_hostname = edge.local\n");
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_EQ(s->provisioning.globalEndpoint, "dps.example.net");
  EXPECT_EQ(s->provisioning.port, 18884);
  EXPECT_EQ(s->provisioning.attestation, DpsAttestation::X509);
  EXPECT_EQ(s->provisioning.payloadFile, "/etc/iothubd/dps-payload.json");
  EXPECT_EQ(s->provisioning.registrationTimeout, 60);
  EXPECT_EQ(s->gatewayHostname, "edge.local");
}

TEST(ProvisioningSettings, WebSocketsGoToPort443UnlessSet) {
  EXPECT_EQ(parse(kDps + "[connection]\nwebsockets = true\n")->provisioning.port, 443);
  EXPECT_EQ(parse(kDps + "port = 8443\n[connection]\nwebsockets = true\n")->provisioning.port,
            8443);
}

TEST(ProvisioningSettings, ErrorsNameTheKey) {
  EXPECT_EQ(errorOf("[hub]\nauthentication = dps\n"),
            "[provisioning] id_scope: required with authentication = dps (the DPS instance's ID "
            "scope, like 0ne00012345)");
  EXPECT_EQ(errorOf("[hub]\nauthentication = dps\n[provisioning]\nid_scope = 0ne1\n"),
            "[provisioning] registration_id: required with authentication = dps");
  EXPECT_EQ(errorOf(kDps + "[hub]\nhostname = contoso.azure-devices.net\n"),
            "[hub] hostname: assigned by DPS with authentication = dps; remove it here");
  EXPECT_EQ(errorOf(kDps + "[hub]\ndevice_id = dev1\n"),
            "[hub] device_id: assigned by DPS with authentication = dps; remove it here");
  EXPECT_EQ(errorOf(kDps + "[hub]\nmodule_id = m\n"),
            "[hub] module_id: assigned by DPS with authentication = dps; remove it here");
  EXPECT_EQ(errorOf(kDps + "attestation = tpm\n"),
            "/etc/iothubd/iothubd.conf:6: [provisioning] attestation: expected symmetric-key or "
            "x509, got \"tpm\"");
  EXPECT_EQ(errorOf(kDps + "registration_id = gw/1\n"),
            "/etc/iothubd/iothubd.conf:6: [provisioning] registration_id: registration id "
            "contains '/' at offset 2, which DPS does not allow (letters, digits, '-', '.', '_', "
            "':')");
  EXPECT_EQ(errorOf(kDps + "id_scope = 0ne 1\n"),
            "/etc/iothubd/iothubd.conf:6: [provisioning] id_scope: ID scope contains 0x20 at "
            "offset 3, but an ID scope has only letters and digits (like 0ne00012345)");
  EXPECT_EQ(errorOf(kDps + "global_endpoint = dps example\n"),
            "/etc/iothubd/iothubd.conf:6: [provisioning] global_endpoint: global_endpoint "
            "contains 0x20 at offset 3, which is not allowed in a host name");
  EXPECT_EQ(errorOf(kDps + "port = 0\n"),
            "/etc/iothubd/iothubd.conf:6: [provisioning] port: expected a port between 1 and "
            "65535, got \"0\"");
  EXPECT_EQ(errorOf(kDps + "registration_timeout = 1\n"),
            "/etc/iothubd/iothubd.conf:6: [provisioning] registration_timeout: must be between 5 "
            "and 86400, got \"1\"");
  EXPECT_EQ(errorOf(kDps + "colour = red\n"),
            "/etc/iothubd/iothubd.conf:6: [provisioning] colour: unknown key");
}

TEST(ProvisioningSettings, ProvisioningWithoutDpsIsAForgottenAuthenticationLine) {
  EXPECT_EQ(errorOf("[hub]\nauthentication = symmetric-key\nhostname = h\ndevice_id = d\n"
                    "[provisioning]\nid_scope = 0ne00000A0A\n"),
            "[provisioning] id_scope: only used with [hub] authentication = dps");
  EXPECT_EQ(errorOf("[credentials]\ndps_group_key_file = /k\n"),
            "[credentials] dps_group_key_file: only used with [hub] authentication = dps");
}

TEST(ProvisioningSettings, OneEnrollmentKeyMatchingTheAttestation) {
  EXPECT_EQ(errorOf(kDps + "[credentials]\ndps_key_file = /a\ndps_group_key_file = /b\n"),
            "[credentials] dps_group_key_file: a device has one enrollment; set dps_key_file "
            "(individual) or dps_group_key_file (group), not both");
  EXPECT_EQ(errorOf(kDps + "attestation = x509\n[credentials]\ndps_key_file = /a\n"),
            "[credentials] dps_key_file: a symmetric key, but [provisioning] attestation = x509");
}

class DpsCredentials : public ::testing::Test {
 protected:
  Settings settings(const std::string& extra = "") {
    auto s = parse(kDps + extra);
    EXPECT_TRUE(s) << s.error().message;
    return s.value_or(Settings{});
  }
  core::Result<DeviceIdentity> load(const Settings& s) {
    return loadIdentity(s, dir_.path(), kNow);
  }
  TempDir dir_;
};

TEST_F(DpsCredentials, GroupEnrollmentKeyIsDerivedForTheRegistrationId) {
  writeFile(dir_ / "dps-group-key", std::string(kGroupKey) + "\n", 0600);
  auto id = load(settings());
  ASSERT_TRUE(id) << id.error().message;
  EXPECT_EQ(id->authentication, AuthKind::Dps);
  EXPECT_EQ(id->hubHostname, "");
  EXPECT_EQ(id->deviceId, "");
  EXPECT_EQ(id->sharedAccessKey.reveal(), kDerivedKey);
  ASSERT_TRUE(id->dps);
  EXPECT_TRUE(id->dps->groupEnrollment);
  EXPECT_EQ(id->dps->idScope, "0ne00000A0A");
  EXPECT_EQ(id->dps->registrationId, "gw-0017");
  EXPECT_EQ(id->dps->globalEndpoint, "global.azure-devices-provisioning.net");
  EXPECT_EQ(id->dps->attestation, DpsAttestation::SymmetricKey);
  EXPECT_EQ(id->dps->registrationTimeout, std::chrono::seconds(300));
}

TEST_F(DpsCredentials, IndividualEnrollmentKeyIsTheDeviceKey) {
  writeFile(dir_ / "dps-key", kKey, 0600);
  auto id = load(settings());
  ASSERT_TRUE(id) << id.error().message;
  EXPECT_EQ(id->sharedAccessKey.reveal(), kKey);
  EXPECT_FALSE(id->dps->groupEnrollment);
}

TEST_F(DpsCredentials, ExplicitKeyFilesWork) {
  writeFile(dir_ / "group.key", kGroupKey, 0400);
  auto id = loadIdentity(settings("[credentials]\ndps_group_key_file = " + (dir_ / "group.key")),
                         "", kNow);
  ASSERT_TRUE(id) << id.error().message;
  EXPECT_EQ(id->sharedAccessKey.reveal(), kDerivedKey);
}

TEST_F(DpsCredentials, SaysHowToProvideAMissingKey) {
  auto id = load(settings());
  ASSERT_FALSE(id);
  EXPECT_EQ(id.error().code, core::Errc::Config);
  EXPECT_EQ(id.error().message,
            "no DPS enrollment key: set [credentials] dps_key_file (individual enrollment) or "
            "dps_group_key_file (group enrollment), or pass it with systemd "
            "LoadCredential=dps-key or LoadCredential=dps-group-key");
}

TEST_F(DpsCredentials, RefusesTwoEnrollmentKeys) {
  writeFile(dir_ / "dps-key", kKey, 0600);
  writeFile(dir_ / "dps-group-key", kGroupKey, 0600);
  auto id = load(settings());
  ASSERT_FALSE(id);
  EXPECT_EQ(id.error().message,
            "both credentials \"dps-key\" (individual enrollment) and \"dps-group-key\" (group "
            "enrollment) are given; a device has one enrollment: keep its key only");
}

TEST_F(DpsCredentials, RefusesAKeyThatIsNotBase64WithoutShowingIt) {
  writeFile(dir_ / "dps-group-key", "not-a-key!", 0600);
  auto id = load(settings());
  ASSERT_FALSE(id);
  EXPECT_EQ(id.error().message, "DPS group enrollment key: not valid base64");
}

TEST_F(DpsCredentials, RefusesAKeyOthersCanRead) {
  writeFile(dir_ / "dps-key", kKey, 0644);
  auto id = load(settings());
  ASSERT_FALSE(id);
  EXPECT_NE(id.error().message.find("refusing secret file " + (dir_ / "dps-key")),
            std::string::npos)
      << id.error().message;
}

TEST_F(DpsCredentials, X509UsesTheCertificateCredentials) {
  writeFile(dir_ / "x509-cert", "-----BEGIN CERTIFICATE-----\n", 0644);
  writeFile(dir_ / "x509-key", "-----BEGIN PRIVATE KEY-----\n", 0600);
  auto id = load(settings("attestation = x509\n"));
  ASSERT_TRUE(id) << id.error().message;
  EXPECT_EQ(id->x509CertFile, dir_ / "x509-cert");
  EXPECT_EQ(id->x509KeyFile, dir_ / "x509-key");
  EXPECT_TRUE(id->sharedAccessKey.empty());
  EXPECT_EQ(id->dps->attestation, DpsAttestation::X509);
}

TEST_F(DpsCredentials, PayloadFileAndModelIdGoIntoTheRegistration) {
  writeFile(dir_ / "dps-key", kKey, 0600);
  writeFile(dir_ / "payload.json", R"({"site": "north"})"
                                   "\n");
  auto id = load(settings("payload_file = " + (dir_ / "payload.json") +
                          "\n[connection]\nproduct_info = dtmi:com:example:Gateway;1\n"));
  ASSERT_TRUE(id) << id.error().message;
  EXPECT_EQ(id->dps->payloadJson, R"({"site": "north"})"
                                  "\n");
  EXPECT_EQ(id->dps->modelId, "dtmi:com:example:Gateway;1");
}

TEST_F(DpsCredentials, ProductInfoThatIsNoModelIdStaysOutOfTheRegistration) {
  writeFile(dir_ / "dps-key", kKey, 0600);
  auto id = load(settings("[connection]\nproduct_info = my-gateway/2.0\n"));
  ASSERT_TRUE(id) << id.error().message;
  EXPECT_EQ(id->dps->modelId, "");
}

TEST_F(DpsCredentials, PayloadFileErrorsNameTheKeyAndFile) {
  writeFile(dir_ / "dps-key", kKey, 0600);
  const std::string path = dir_ / "payload.json";
  auto load = [&](const std::string& text) {
    writeFile(path, text);
    auto id = loadIdentity(settings("payload_file = " + path + "\n"), dir_.path(), kNow);
    return id ? std::string() : id.error().message;
  };
  EXPECT_EQ(load("[1]"),
            "[provisioning] payload_file: " + path + ": payload must be a JSON object, got array");
  EXPECT_EQ(load("{"), "[provisioning] payload_file: " + path +
                           ": payload is not valid JSON: invalid JSON at offset 1: Missing a name "
                           "for object member.");
  EXPECT_EQ(load(std::string(70000, ' ')),
            "[provisioning] payload_file: " + path + " is larger than 65536 bytes");
  auto missing =
      loadIdentity(settings("payload_file = " + (dir_ / "none.json") + "\n"), dir_.path(), kNow);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().message, "[provisioning] payload_file: cannot read " +
                                         (dir_ / "none.json") + ": No such file or directory");
}

}  // namespace
}  // namespace iothubd::config
