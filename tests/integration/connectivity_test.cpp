// SPDX-License-Identifier: MIT
// Issue 7 on loopback: X.509 device authentication and an IoT Edge-style gateway with its own CA
// (protocol doc 1.2, 1.4, 1.5). WebSockets and proxies need a private network namespace and
// live in netns_test.cpp.
#include <sysexits.h>

#include "daemon_fixture.hpp"

namespace iothubd::testing {
namespace {

hubemu::HubEmulator::Options withListeners(bool x509, bool gateway) {
  hubemu::HubEmulator::Options o;
  o.x509Listener = x509;
  o.gatewayListener = gateway;
  return o;
}

class X509Test : public DaemonTest {
 protected:
  X509Test() : DaemonTest(withListeners(true, false)) {}

  /// A certificate + key for `commonName` in the daemon's credentials directory.
  void issue(const std::string& commonName, const std::string& passPhrase = "",
             bool selfSigned = false) {
    auto user = serviceUser();
    hub_.issueClientCertificate(commonName, credentialsDir_ + "/x509-cert",
                                credentialsDir_ + "/x509-key", passPhrase, selfSigned,
                                static_cast<int>(user.uid), static_cast<int>(user.gid));
    if (!passPhrase.empty()) {
      writeCredential("x509-pass-phrase", passPhrase + "\n");
    }
  }
  void useX509() {
    writeConfig("[hub]\nauthentication = x509\nhostname = " + hub_.hubHost() +
                "\ndevice_id = " + kDevice + "\nport = " + std::to_string(hub_.x509Port()) + "\n");
  }
};

TEST_F(X509Test, DeviceWithACaSignedCertificateConnectsAndSendsWithoutAPassword) {
  issue(kDevice, "pass phrase of the key");
  useX509();
  // Subscribed before the daemon starts: it connects at once, and the auth event must not be
  // missed.
  hubemu::ServiceClient service(hub_);
  startDaemon();
  client().Connect();
  auto auth = service.waitForAuth(kDevice);
  ASSERT_TRUE(auth.has_value());
  EXPECT_EQ(auth->method, "x509");
  // Protocol doc 1.2: the user name is sent as with SAS, only the password is left out.
  EXPECT_EQ(auth->username.rfind(hub_.hubHost() + "/" + kDevice + "/?api-version=", 0), 0u)
      << auth->username;
  std::string id = client().SendMessage("from an X.509 device", {}, {});
  auto received = service.waitForTelemetry();
  ASSERT_TRUE(received.has_value());
  EXPECT_EQ(received->payload, "from an X.509 device");
  EXPECT_EQ(received->property("$.mid"), id);
  EXPECT_EQ(client().AuthenticationType(), "x509");
  EXPECT_EQ(client().SasTokenExpiry(), 0u);
  EXPECT_EQ(daemon_->log().find("pass phrase of the key"), std::string::npos)
      << "the pass phrase was logged";
}

TEST_F(X509Test, ConnectionStringWithX509TrueUsesTheCertificateCredentials) {
  issue(kDevice);
  writeCredential("connection-string",
                  "HostName=" + hub_.hubHost() + ";DeviceId=" + kDevice + ";x509=true\n");
  writeConfig("[hub]\nport = " + std::to_string(hub_.x509Port()) + "\n");
  // Subscribed before the daemon starts: it connects at once, and the auth event must not be
  // missed.
  hubemu::ServiceClient service(hub_);
  startDaemon();
  ASSERT_FALSE(client().SendMessage("x509=true", {}, {}).empty());
  auto auth = service.waitForAuth(kDevice);
  ASSERT_TRUE(auth.has_value());
  EXPECT_EQ(auth->method, "x509");
  EXPECT_EQ(client().AuthenticationType(), "x509");
}

TEST_F(X509Test, CertificateForAnotherDeviceIsRefusedWithCredential) {
  issue("dev2");
  useX509();
  // Subscribed before the daemon starts: it connects at once, and the auth event must not be
  // missed.
  hubemu::ServiceClient service(hub_);
  startDaemon();
  std::string message;
  EXPECT_EQ(errorNameOf([&] { client().Connect(); }, &message), "org.iothubd.Error.Credential");
  EXPECT_NE(message.find("not authorised"), std::string::npos) << message;
  auto refused = service.waitForEvent("auth-refused", kDevice);
  ASSERT_TRUE(refused.has_value());
  EXPECT_NE(refused->json.find("client certificate is for 'dev2'"), std::string::npos)
      << refused->json;
}

TEST_F(X509Test, SelfSignedCertificateNeverGetsPastTheTlsHandshake) {
  issue(kDevice, "", true);
  useX509();
  // Subscribed before the daemon starts: it connects at once, and the auth event must not be
  // missed.
  hubemu::ServiceClient service(hub_);
  startDaemon();
  std::string message;
  EXPECT_EQ(errorNameOf([&] { client().Connect(); }, &message),
            "org.iothubd.Error.ConnectionFailed");
  EXPECT_EQ(service.authCount(kDevice), 0u);
}

TEST_F(X509Test, WrongPassPhraseOrCipherListStopsTheStartWithExit78) {
  issue(kDevice, "the right pass phrase");
  writeCredential("x509-pass-phrase", "a wrong pass phrase\n");
  useX509();
  EXPECT_EQ(runUntilExit(), EX_CONFIG);
  std::string log = daemon_->log();
  EXPECT_NE(log.find("cannot load the client key " + credentialsDir_ + "/x509-key"),
            std::string::npos)
      << log;
  EXPECT_EQ(log.find("a wrong pass phrase"), std::string::npos) << "the pass phrase was logged";

  writeCredential("x509-pass-phrase", "the right pass phrase\n");
  writeConfig(
      "[hub]\nauthentication = x509\nhostname = localhost\ndevice_id = dev1\n"
      "[connection]\ncipher = NOT-A-CIPHER\n");
  EXPECT_EQ(runUntilExit(), EX_CONFIG);
  EXPECT_NE(daemon_->log().find("invalid cipher list \"NOT-A-CIPHER\""), std::string::npos)
      << daemon_->log();
}

class GatewayTest : public DaemonTest {
 protected:
  GatewayTest() : DaemonTest(withListeners(false, true)) {}

  void useGateway(const std::string& caFile) {
    writeCredential("shared-access-key", deviceKey_ + "\n");
    writeFile(daemonDir_ + "/trust.pem", readFile(caFile), 0644);
    writeConfig("[hub]\nauthentication = symmetric-key\nhostname = " + hub_.hubHost() +
                "\ndevice_id = " + kDevice +
                "\ngateway_hostname = 127.0.0.1\nport = " + std::to_string(hub_.gatewayPort()) +
                "\n[connection]\nserver_verification_cert = " + daemonDir_ + "/trust.pem\n");
  }
};

TEST_F(GatewayTest, TlsGoesToTheGatewayVerifiedByItsOwnCaWhileTheUserNameNamesTheHub) {
  useGateway(hub_.gatewayCaFile());
  // Subscribed before the daemon starts: it connects at once, and the auth event must not be
  // missed.
  hubemu::ServiceClient service(hub_);
  startDaemon();
  ASSERT_FALSE(client().SendMessage("via the gateway", {}, {}).empty());
  auto auth = service.waitForAuth(kDevice);
  ASSERT_TRUE(auth.has_value());
  // Protocol doc 1.4: user name and SAS `sr` keep the hub host (the emulator verified the token
  // for "localhost/devices/dev1").
  EXPECT_EQ(auth->method, "sas");
  EXPECT_EQ(auth->username.rfind("localhost/dev1/?api-version=", 0), 0u) << auth->username;
  EXPECT_EQ(client().GatewayHostName(), "127.0.0.1");
  EXPECT_EQ(client().HostName(), "localhost");
  auto received = service.waitForTelemetry();
  ASSERT_TRUE(received.has_value());
  EXPECT_EQ(received->payload, "via the gateway");
}

TEST_F(GatewayTest, TheHubsCaDoesNotVerifyTheGatewayAndTheErrorSaysSo) {
  useGateway(hub_.caFile());
  startDaemon();
  std::string message;
  EXPECT_EQ(errorNameOf([&] { client().Connect(); }, &message),
            "org.iothubd.Error.ConnectionFailed");
  EXPECT_NE(message.find("certificate verification failed for 127.0.0.1:" +
                         std::to_string(hub_.gatewayPort())),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("trust.pem"), std::string::npos) << message;
}

}  // namespace
}  // namespace iothubd::testing
