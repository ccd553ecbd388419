// SPDX-License-Identifier: MIT
#include "iothubd/config/credentials.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include "temp_dir.hpp"

namespace iothubd::config {
namespace {

using iothubd::testing::TempDir;
using iothubd::testing::writeFile;

// A valid 32-byte key, base64.
constexpr const char* kKey = "dGhpcy1pcy1hLXRlc3Qta2V5LW9mLTMyLWJ5dGVzISE=";
constexpr std::uint64_t kNow = 1700000000;

class Credentials : public ::testing::Test {
 protected:
  TempDir dir_;
  Settings settings_;
};

TEST_F(Credentials, ConnectionStringFromTheCredentialsDirectory) {
  writeFile(dir_ / "connection-string",
            std::string("HostName=contoso.azure-devices.net;DeviceId=dev1;SharedAccessKey=") + kKey + "\n",
            0600);
  auto id = loadIdentity(settings_, dir_.path(), kNow);
  ASSERT_TRUE(id) << id.error().message;
  EXPECT_EQ(id->hubHostname, "contoso.azure-devices.net");
  EXPECT_EQ(id->deviceId, "dev1");
  EXPECT_EQ(id->authentication, AuthKind::SymmetricKey);
  EXPECT_EQ(id->sharedAccessKey.reveal(), kKey);  // trailing newline stripped
}

TEST_F(Credentials, ExplicitFileWinsOverTheCredentialsDirectory) {
  writeFile(dir_ / "mine", std::string("HostName=h;DeviceId=other;SharedAccessKey=") + kKey, 0400);
  settings_.connectionStringFile = dir_ / "mine";
  auto id = loadIdentity(settings_, "/nonexistent", kNow);
  ASSERT_TRUE(id) << id.error().message;
  EXPECT_EQ(id->deviceId, "other");
}

TEST_F(Credentials, SecretReadableByGroupOrOthersIsRefusedNamingFileAndMode) {
  for (unsigned mode : {0644u, 0640u, 0604u, 0660u}) {
    writeFile(dir_ / "connection-string", std::string("HostName=h;DeviceId=d;SharedAccessKey=") + kKey, mode);
    auto id = loadIdentity(settings_, dir_.path(), kNow);
    ASSERT_FALSE(id);
    EXPECT_EQ(id.error().code, core::Errc::Config);
    char modeText[8];
    std::snprintf(modeText, sizeof modeText, "%04o", mode);
    EXPECT_EQ(id.error().message, "refusing secret file " + (dir_ / "connection-string") + ": mode " +
                                      modeText + " lets group or others read it (chmod 0600 " +
                                      (dir_ / "connection-string") + ")");
  }
}

TEST_F(Credentials, MissingCredentialSaysHowToProvideIt) {
  auto id = loadIdentity(settings_, "", kNow);
  ASSERT_FALSE(id);
  EXPECT_EQ(id.error().message,
            "no credential \"connection-string\": set [credentials] connection_string_file or pass "
            "it with systemd LoadCredential=connection-string");
  auto unreadable = loadIdentity(settings_, dir_.path(), kNow);
  ASSERT_FALSE(unreadable);
  EXPECT_EQ(unreadable.error().message, "cannot read secret file " + (dir_ / "connection-string") +
                                            ": No such file or directory");
}

TEST_F(Credentials, InvalidConnectionStringErrorNamesTheKeyNotTheSecret) {
  writeFile(dir_ / "connection-string",
            std::string("HostName=h;DeviceId=d;SharedAccessKey=") + kKey + ";Colour=red", 0600);
  auto id = loadIdentity(settings_, dir_.path(), kNow);
  ASSERT_FALSE(id);
  EXPECT_NE(id.error().message.find("Colour"), std::string::npos) << id.error().message;
  EXPECT_EQ(id.error().message.find(kKey), std::string::npos);
}

TEST_F(Credentials, SymmetricKeyMustBeBase64) {
  settings_.authentication = AuthKind::SymmetricKey;
  settings_.hostname = "h";
  settings_.deviceId = "d";
  writeFile(dir_ / "shared-access-key", "not base64 at all!", 0600);
  auto id = loadIdentity(settings_, dir_.path(), kNow);
  ASSERT_FALSE(id);
  EXPECT_EQ(id.error().message, "shared access key: not valid base64");
}

TEST_F(Credentials, EmptySecretFileIsAnError) {
  writeFile(dir_ / "connection-string", "\n", 0600);
  auto id = loadIdentity(settings_, dir_.path(), kNow);
  ASSERT_FALSE(id);
  EXPECT_EQ(id.error().message, "secret file " + (dir_ / "connection-string") + " is empty");
}

}  // namespace
}  // namespace iothubd::config
