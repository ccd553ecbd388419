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
            std::string("HostName=contoso.azure-devices.net;DeviceId=dev1;SharedAccessKey=") +
                kKey + "\n",
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
    writeFile(dir_ / "connection-string",
              std::string("HostName=h;DeviceId=d;SharedAccessKey=") + kKey, mode);
    auto id = loadIdentity(settings_, dir_.path(), kNow);
    ASSERT_FALSE(id);
    EXPECT_EQ(id.error().code, core::Errc::Config);
    char modeText[8];
    std::snprintf(modeText, sizeof modeText, "%04o", mode);
    EXPECT_EQ(id.error().message, "refusing secret file " + (dir_ / "connection-string") +
                                      ": mode " + modeText +
                                      " lets group or others read it (chmod 0600 " +
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

TEST_F(Credentials, ConnectionStringWithX509TakesCertificateAndKeyFromCredentials) {
  writeFile(dir_ / "connection-string", "HostName=h.example;DeviceId=dev1;x509=true\n", 0600);
  writeFile(dir_ / "x509-cert", "PEM", 0644);
  writeFile(dir_ / "x509-key", "KEY", 0600);
  writeFile(dir_ / "x509-pass-phrase", "open sesame\n", 0600);
  auto id = loadIdentity(settings_, dir_.path(), kNow);
  ASSERT_TRUE(id) << id.error().message;
  EXPECT_EQ(id->authentication, AuthKind::X509);
  EXPECT_EQ(id->hubHostname, "h.example");
  EXPECT_EQ(id->x509CertFile, dir_ / "x509-cert");
  EXPECT_EQ(id->x509KeyFile, dir_ / "x509-key");
  EXPECT_EQ(id->x509PassPhrase.reveal(), "open sesame");
}

TEST_F(Credentials, X509FromExplicitFilesWithoutPassPhrase) {
  settings_.authentication = AuthKind::X509;
  settings_.hostname = "h";
  settings_.deviceId = "dev1";
  settings_.x509CertFile = dir_ / "c.pem";
  settings_.x509KeyFile = dir_ / "k.pem";
  writeFile(dir_ / "c.pem", "PEM", 0644);
  writeFile(dir_ / "k.pem", "KEY", 0600);
  auto id = loadIdentity(settings_, "", kNow);
  ASSERT_TRUE(id) << id.error().message;
  EXPECT_EQ(id->authentication, AuthKind::X509);
  EXPECT_TRUE(id->x509PassPhrase.empty());
  // The key is a secret: readable by others is refused like any secret file.
  ::chmod((dir_ / "k.pem").c_str(), 0644);
  auto refused = loadIdentity(settings_, "", kNow);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("refusing secret file " + (dir_ / "k.pem")),
            std::string::npos);
  settings_.x509CertFile = dir_ / "missing.pem";
  ::chmod((dir_ / "k.pem").c_str(), 0600);
  auto missing = loadIdentity(settings_, "", kNow);
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("cannot read X.509 certificate " + (dir_ / "missing.pem")),
            std::string::npos);
}

TEST_F(Credentials, ProxyPasswordFromFileOrCredentialAndNeverWithoutUser) {
  EXPECT_EQ(loadProxy(settings_, dir_.path())->type, core::ProxySettings::Type::None);
  settings_.proxy.type = "HTTP";
  settings_.proxy.address = "proxy.example";
  settings_.proxy.port = 3128;
  auto open = loadProxy(settings_, dir_.path());
  ASSERT_TRUE(open) << open.error().message;
  EXPECT_EQ(open->type, core::ProxySettings::Type::Http);
  EXPECT_EQ(open->host, "proxy.example");
  EXPECT_EQ(open->port, 3128);
  EXPECT_TRUE(open->password.empty());

  settings_.proxy.username = "alice";
  auto noPassword = loadProxy(settings_, dir_.path());
  ASSERT_FALSE(noPassword);
  EXPECT_NE(noPassword.error().message.find("LoadCredential=proxy-password"), std::string::npos);

  writeFile(dir_ / "proxy-password", "s3cret\n", 0600);
  auto fromCredential = loadProxy(settings_, dir_.path());
  ASSERT_TRUE(fromCredential) << fromCredential.error().message;
  EXPECT_EQ(fromCredential->username, "alice");
  EXPECT_EQ(fromCredential->password.reveal(), "s3cret");

  writeFile(dir_ / "other", "other-secret", 0600);
  settings_.proxy.passwordFile = dir_ / "other";
  EXPECT_EQ(loadProxy(settings_, dir_.path())->password.reveal(), "other-secret");

  settings_.proxy.username.clear();
  auto passwordWithoutUser = loadProxy(settings_, dir_.path());
  ASSERT_FALSE(passwordWithoutUser);
  EXPECT_EQ(passwordWithoutUser.error().message,
            "[proxy] proxy_username: required when a proxy password is given");
  EXPECT_EQ(passwordWithoutUser.error().message.find("other-secret"), std::string::npos);
}

}  // namespace
}  // namespace iothubd::config
