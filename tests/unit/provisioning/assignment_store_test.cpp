// SPDX-License-Identifier: MIT
#include "iothubd/provisioning/assignment_store.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "temp_dir.hpp"

namespace iothubd::provisioning {
namespace {

using testing::readFile;
using testing::TempDir;
using testing::writeFile;

ProvisioningOptions settings() {
  ProvisioningOptions o;
  o.idScope = "0ne00000A0A";
  o.registrationId = "gw-17";
  o.deviceKey = core::Secret<>("dGhpcy1pcy1hLXRlc3Qta2V5LW9mLTMyLWJ5dGVzISE=");
  return o;
}

StoredAssignment assignment(const std::string& identity) {
  return StoredAssignment{"hub-a.azure-devices.net", "gw-17", 1700000000, "initialAssignment",
                          identity};
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

TEST(AssignmentStore, KeepsTheAssignmentAcrossInstances) {
  TempDir dir("iothubd-dps-store");
  const std::string identity = identityFingerprint(settings()).value();
  ASSERT_TRUE(AssignmentStore(dir.path()).save(assignment(identity)));
  const auto loaded = AssignmentStore(dir.path()).load(identity);
  ASSERT_TRUE(loaded);
  EXPECT_EQ(loaded->assignedHub, "hub-a.azure-devices.net");
  EXPECT_EQ(loaded->deviceId, "gw-17");
  EXPECT_EQ(loaded->assignedAtUnix, 1700000000u);
  EXPECT_EQ(loaded->substatus, "initialAssignment");
  EXPECT_EQ(loaded->identity, identity);
}

TEST(AssignmentStore, WritesAReadableFileOnlyItsOwnerCanRead) {
  TempDir dir("iothubd-dps-store");
  AssignmentStore store(dir.path());
  ASSERT_TRUE(store.save(assignment("sha256:x")));
  EXPECT_EQ(store.path(), dir / "dps-assignment.json");
  EXPECT_EQ(readFile(store.path()),
            R"({"version":1,"assignedHub":"hub-a.azure-devices.net","deviceId":"gw-17",)"
            R"("assignedAt":1700000000,"assignedAtUtc":"2023-11-14T22:13:20Z",)"
            R"("substatus":"initialAssignment","identity":"sha256:x"})"
            "\n");
  struct stat st {};
  ASSERT_EQ(::stat(store.path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_FALSE(exists(store.path() + ".tmp")) << "temporary file left behind";
}

TEST(AssignmentStore, ReplacesTheOldAssignment) {
  TempDir dir("iothubd-dps-store");
  AssignmentStore store(dir.path());
  ASSERT_TRUE(store.save(assignment("sha256:x")));
  auto moved = assignment("sha256:x");
  moved.assignedHub = "hub-b.azure-devices.net";
  moved.substatus = "deviceDataMigrated";
  ASSERT_TRUE(store.save(moved));
  EXPECT_EQ(store.load("sha256:x")->assignedHub, "hub-b.azure-devices.net");
}

TEST(AssignmentStore, NoFileMeansNoAssignment) {
  TempDir dir("iothubd-dps-store");
  EXPECT_FALSE(AssignmentStore(dir.path()).load("sha256:x"));
}

TEST(AssignmentStore, AnAssignmentForOtherSettingsIsIgnored) {
  TempDir dir("iothubd-dps-store");
  AssignmentStore store(dir.path());
  ASSERT_TRUE(store.save(assignment("sha256:old")));
  EXPECT_FALSE(store.load("sha256:new"));
  EXPECT_TRUE(exists(store.path())) << "kept until the next assignment replaces it";
}

TEST(AssignmentStore, ACorruptFileIsMovedAsideAndIgnored) {
  const char* bad[] = {
      "",
      "{\"version\":1,\"assignedHub\":\"hub-a\"",  // cut by a crash of a careless writer
      "[]",
      R"({"version":2,"assignedHub":"h","deviceId":"d","assignedAt":1,"substatus":"",)"
      R"("identity":"sha256:x"})",
      R"({"version":1,"assignedHub":"evil host","deviceId":"d","assignedAt":1,"substatus":"",)"
      R"("identity":"sha256:x"})",
      R"({"version":1,"assignedHub":"h","deviceId":"a/b","assignedAt":1,"substatus":"",)"
      R"("identity":"sha256:x"})",
      R"({"version":1,"assignedHub":"h","deviceId":"d","assignedAt":-1,"substatus":"",)"
      R"("identity":"sha256:x"})",
  };
  for (const char* text : bad) {
    TempDir dir("iothubd-dps-store");
    AssignmentStore store(dir.path());
    writeFile(store.path(), text, 0600);
    EXPECT_FALSE(store.load("sha256:x")) << text;
    EXPECT_FALSE(exists(store.path())) << text;
    EXPECT_EQ(readFile(store.path() + ".corrupt"), text);
    // The next registration's assignment is stored normally again.
    ASSERT_TRUE(store.save(assignment("sha256:x")));
    EXPECT_TRUE(store.load("sha256:x"));
  }
}

TEST(AssignmentStore, ClearForgetsTheAssignment) {
  TempDir dir("iothubd-dps-store");
  AssignmentStore store(dir.path());
  ASSERT_TRUE(store.clear()) << "a missing file is fine";
  ASSERT_TRUE(store.save(assignment("sha256:x")));
  ASSERT_TRUE(store.clear());
  EXPECT_FALSE(store.load("sha256:x"));
}

TEST(AssignmentStore, ReportsAnUnwritableDirectory) {
  AssignmentStore store("/nonexistent-iothubd-state");
  const auto saved = store.save(assignment("sha256:x"));
  ASSERT_FALSE(saved);
  EXPECT_EQ(saved.error().code, core::Errc::Io);
  EXPECT_EQ(saved.error().sysErrno, ENOENT);
  EXPECT_EQ(saved.error().message,
            "cannot write /nonexistent-iothubd-state/dps-assignment.json.tmp: No such file or "
            "directory");
}

TEST(AssignmentStore, FingerprintChangesWithWhatTheAssignmentIsFor) {
  const std::string base = identityFingerprint(settings()).value();
  EXPECT_EQ(base.rfind("sha256:", 0), 0u);
  EXPECT_EQ(base.size(), 7u + 64u);
  EXPECT_EQ(identityFingerprint(settings()).value(), base) << "not deterministic";
  EXPECT_EQ(base.find("dGhpcy1pcy1h"), std::string::npos);

  auto changed = [&](auto edit) {
    auto o = settings();
    edit(o);
    return identityFingerprint(o).value() != base;
  };
  EXPECT_TRUE(changed([](ProvisioningOptions& o) { o.globalEndpoint = "dps.example"; }));
  EXPECT_TRUE(changed([](ProvisioningOptions& o) { o.idScope = "0ne00000B0B"; }));
  EXPECT_TRUE(changed([](ProvisioningOptions& o) { o.registrationId = "gw-18"; }));
  EXPECT_TRUE(changed([](ProvisioningOptions& o) {
    o.deviceKey = core::Secret<>("YW5vdGhlci10ZXN0LWtleS1vZi0zMi1ieXRlcyEhISE=");
  }));
  EXPECT_TRUE(changed([](ProvisioningOptions& o) { o.payloadJson = R"({"site":"n"})"; }));
  EXPECT_TRUE(changed([](ProvisioningOptions& o) { o.modelId = "dtmi:a;1"; }));
  // What does not decide the assignment leaves it alone.
  EXPECT_FALSE(changed([](ProvisioningOptions& o) { o.timeout = std::chrono::seconds(5); }));
  EXPECT_FALSE(changed([](ProvisioningOptions& o) { o.websockets = true; }));
}

TEST(AssignmentStore, FingerprintOfAnX509IdentityFollowsTheCertificate) {
  TempDir dir("iothubd-dps-store");
  auto o = settings();
  o.attestation = Attestation::X509;
  o.tls.certFile = dir / "gw.pem";
  writeFile(o.tls.certFile, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
  const std::string first = identityFingerprint(o).value();
  writeFile(o.tls.certFile, "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n");
  EXPECT_NE(identityFingerprint(o).value(), first);

  o.tls.certFile = dir / "missing.pem";
  const auto missing = identityFingerprint(o);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, core::Errc::Io);
}

}  // namespace
}  // namespace iothubd::provisioning
