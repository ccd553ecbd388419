// SPDX-License-Identifier: MIT
// Issue 7 inside a private network namespace (this binary's main() makes one before anything
// else runs): MQTT over WebSockets (mosquitto's WebSocket listeners bind every interface, so
// they must not run in the host namespace), and HTTP CONNECT / SOCKS proxies with the hub port
// closed to the daemon by iptables, so that a connection bypassing the proxy fails instead of
// passing silently. Everything here (listeners, proxies, firewall rules) lives and dies with the
// namespace.
#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <thread>

#include "ctl_process.hpp"
#include "daemon_fixture.hpp"
#include "file_upload_hub.hpp"
#include "netns_support.hpp"

namespace iothubd::testing {
namespace {

hubemu::HubEmulator::Options withWebSockets() {
  hubemu::HubEmulator::Options o;
  o.websocketsListener = true;
  return o;
}

/// Base of every test here: the emulator also serves MQTT over WebSockets (this namespace has
/// only `lo`), and the daemon's own user may not reach the hub's ports directly.
class NetnsTest : public DaemonTest {
 protected:
  NetnsTest() : DaemonTest(withWebSockets()) {}

  void SetUp() override {
    DaemonTest::SetUp();
    rejectForDaemon({hub_.port(), hub_.websocketsPort()});
  }

  /// The daemon's user may not reach `ports` directly. REJECT (TCP reset) rather than DROP: a
  /// bypass fails at once with a clear error.
  static void rejectForDaemon(std::initializer_list<int> ports) {
    for (const char* tool : {"iptables", "ip6tables"}) {
      for (int port : ports) {
        ASSERT_EQ(
            run({tool, "-w", "-A", "OUTPUT", "-p", "tcp", "--dport", std::to_string(port), "-m",
                 "owner", "--uid-owner", "iothubd", "-j", "REJECT", "--reject-with", "tcp-reset"}),
            0)
            << tool << " failed";
      }
    }
  }
  void TearDown() override {
    DaemonTest::TearDown();
    run({"iptables", "-w", "-F", "OUTPUT"});
    run({"ip6tables", "-w", "-F", "OUTPUT"});
  }

  void useWebSockets(const std::string& extra = "") {
    writeConfig("[hub]\nport = " + std::to_string(hub_.websocketsPort()) +
                "\n[connection]\nwebsockets = true\n" + extra);
  }
};

// ---- the firewall itself
// -------------------------------------------------------------------------

// These two prove the rules work: every proxy test passing therefore went through the proxy.
TEST_F(NetnsTest, WithoutAProxyTheDaemonCannotReachTheHub) {
  startDaemon();
  std::string message;
  EXPECT_EQ(errorNameOf([&] { client().Connect(); }, &message),
            "org.iothubd.Error.ConnectionFailed");
  EXPECT_NE(message.find("cannot connect to localhost:" + std::to_string(hub_.port())),
            std::string::npos)
      << message;
}

TEST_F(NetnsTest, WithoutAProxyTheDaemonCannotReachTheHubOverWebSocketsEither) {
  useWebSockets();
  startDaemon();
  std::string message;
  EXPECT_EQ(errorNameOf([&] { client().Connect(); }, &message),
            "org.iothubd.Error.ConnectionFailed");
  EXPECT_NE(message.find("Connection refused"), std::string::npos) << message;
}

// ---- WebSockets
// ----------------------------------------------------------------------------------

class WebSocketTest : public NetnsTest {
 protected:
  void SetUp() override {
    NetnsTest::SetUp();
    // The firewall is for the proxy tests; here the daemon talks to the hub directly.
    run({"iptables", "-w", "-F", "OUTPUT"});
    run({"ip6tables", "-w", "-F", "OUTPUT"});
  }
};

TEST_F(WebSocketTest, TelemetryTwinMethodsAndCloudToDeviceAllWorkOverWebSockets) {
  useWebSockets();
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto& c = client();

  std::string id = c.SendMessage(R"({"over":"websockets"})", {{"k", "v w"}}, {});
  auto telemetry = service.waitForTelemetry();
  ASSERT_TRUE(telemetry.has_value());
  EXPECT_EQ(telemetry->payload, R"({"over":"websockets"})");
  EXPECT_EQ(telemetry->property("$.mid"), id);
  EXPECT_EQ(telemetry->property("k"), "v w");

  // A payload larger than one WebSocket frame of ours (16 KiB reads) and than a TLS record.
  std::string big(100000, 'b');
  ASSERT_FALSE(c.SendMessage(big, {}, {}).empty());
  auto bigReceived = service.waitForTelemetry();
  ASSERT_TRUE(bigReceived.has_value());
  EXPECT_EQ(bigReceived->payload, big);

  EXPECT_EQ(c.PatchTwinReportedProperties(R"({"transport":"wss"})"), 2u);
  EXPECT_NE(c.GetTwin().find(R"("transport":"wss")"), std::string::npos);
  service.patchDesired(kDevice, R"({"interval":5})");
  // (After the first connect the whole desired section may arrive too: wait for the patch.)
  auto patch = c.waitForSignal("TwinDesiredPropertiesPatchReceived", [](const SignalRecord& r) {
    return r.args[0].find("interval") != std::string::npos;
  });
  ASSERT_TRUE(patch.has_value());
  EXPECT_NE(patch->args[0].find(R"("interval":5)"), std::string::npos);

  c.RegisterMethodHandler("reboot");
  std::thread answer([&] {
    auto request = c.waitForSignal("MethodRequestReceived");
    if (request) {
      c.SendMethodResponse(request->args[0], 200, R"({"ok":true})");
    }
  });
  auto result = service.invokeMethod(kDevice, "reboot", R"({"delay":1})");
  answer.join();
  EXPECT_EQ(result.status, 200);
  EXPECT_EQ(result.payload, R"({"ok":true})");

  service.sendC2d(kDevice, "to the device", {{"$.mid", "c2d-ws"}}, {{"color", "blue"}});
  auto c2d = c.waitForSignal("MessageReceived");
  ASSERT_TRUE(c2d.has_value());
  EXPECT_EQ(std::string(c2d->body.begin(), c2d->body.end()), "to the device");
  EXPECT_EQ(c2d->properties["color"], "blue");
  EXPECT_EQ(c2d->systemProperties["message-id"], "c2d-ws");
}

TEST_F(WebSocketTest, ADroppedWebSocketReconnectsAndDisconnectIsOrderly) {
  // keep_connected off: the test's own Disconnect closes the link (nobody else holds it).
  useWebSockets("[connection]\nconnection_retry_interval = 1\nkeep_connected = false\n");
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  service.dropConnection(kDevice);
  ASSERT_TRUE(client().waitForConnectionStateChanged(false));
  auto kicked = service.waitForDisconnect(kDevice);
  ASSERT_TRUE(kicked.has_value());
  ASSERT_TRUE(client().waitForConnectionStateChanged(true, 15s));
  ASSERT_FALSE(client().SendMessage("after the drop", {}, {}).empty());
  client().Disconnect();
  // The DISCONNECT went through the tunnel before it closed, so the hub saw a clean end.
  ASSERT_TRUE(service.waitForDisconnect(kDevice).has_value());
  EXPECT_NE(hub_.brokerLog().find("Received DISCONNECT from dev1"), std::string::npos);
}

TEST_F(WebSocketTest, WrongCaFailsWithACertificateVerificationError) {
  writeFile(daemonDir_ + "/other.pem", readFile(hub_.gatewayCaFile()), 0644);
  useWebSockets("[connection]\nserver_verification_cert = " + daemonDir_ + "/other.pem\n");
  startDaemon();
  std::string message;
  EXPECT_EQ(errorNameOf([&] { client().Connect(); }, &message),
            "org.iothubd.Error.ConnectionFailed");
  EXPECT_NE(message.find("TLS: certificate verification failed for localhost:" +
                         std::to_string(hub_.websocketsPort())),
            std::string::npos)
      << message;
}

// ---- proxies
// -------------------------------------------------------------------------------------

class ProxyTest : public NetnsTest {
 protected:
  static constexpr const char* kProxyUser = "iothubd-proxy";
  // tinyproxy 1.11 accepts only [-a-z0-9._] in BasicAuth passwords.
  static constexpr const char* kProxyPassword = "Proxy-Pass.7";

  void startTinyproxy() {
    proxyPort_ = freeTcpPort();
    std::string dir = dir_ / "tinyproxy";
    ::mkdir(dir.c_str(), 0755);
    std::string log = dir + "/tinyproxy.log";
    writeFile(log, "", 0666);
    writeFile(dir + "/tinyproxy.conf",
              "Port " + std::to_string(proxyPort_) +
                  "\nListen 127.0.0.1\nTimeout 60\n"
                  "User nobody\nGroup nogroup\nLogFile \"" +
                  log +
                  "\"\nLogLevel Connect\n"
                  "MaxClients 20\nAllow 127.0.0.1\nDisableViaHeader Yes\n"
                  "BasicAuth " +
                  kProxyUser + " " + kProxyPassword + "\n",
              0644);
    proxy_ = std::make_unique<ProxyProcess>(
        std::vector<std::string>{"tinyproxy", "-d", "-c", dir + "/tinyproxy.conf"}, log,
        proxyPort_);
  }

  /// Dante checks SOCKS5 user names and passwords against the system's account database. With
  /// `withUser` it runs in a private mount namespace whose /etc/passwd and /etc/shadow are
  /// copies with one extra account, so the host's accounts stay untouched.
  void startDante(bool withUser = false) {
    proxyPort_ = freeTcpPort();
    std::string dir = dir_ / "dante";
    ::mkdir(dir.c_str(), 0755);
    std::string log = dir + "/danted.log";
    std::vector<std::string> command{"/usr/sbin/danted", "-f", dir + "/danted.conf", "-N", "1"};
    if (withUser) {
      std::string hash;
      FILE* p = ::popen((std::string("openssl passwd -6 ") + kProxyPassword).c_str(), "r");
      char line[256];
      if (p != nullptr && std::fgets(line, sizeof line, p) != nullptr) {
        hash = line;
        hash.erase(hash.find_last_not_of('\n') + 1);
      }
      if (p != nullptr) {
        ::pclose(p);
      }
      ASSERT_EQ(hash.rfind("$6$", 0), 0u) << "openssl passwd failed";
      writeFile(
          dir + "/passwd",
          readFile("/etc/passwd") + kProxyUser + ":x:64123:65534::/nonexistent:/usr/sbin/nologin\n",
          0644);
      writeFile(dir + "/shadow",
                readFile("/etc/shadow") + kProxyUser + ":" + hash + ":19000:0:99999:7:::\n", 0600);
      command = {"unshare",
                 "--mount",
                 "--propagation",
                 "private",
                 "sh",
                 "-c",
                 "mount --bind " + dir + "/passwd /etc/passwd && mount --bind " + dir +
                     "/shadow /etc/shadow && exec /usr/sbin/danted -f " + dir +
                     "/danted.conf -N 1"};
    }
    writeFile(dir + "/danted.conf",
              "logoutput: " + log + "\ninternal: 127.0.0.1 port = " + std::to_string(proxyPort_) +
                  "\nexternal: 127.0.0.1\nclientmethod: none\nsocksmethod: " +
                  (withUser ? "username" : "none") +
                  "\n"
                  "user.privileged: root\nuser.unprivileged: nobody\n"
                  "client pass {\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n  log: connect error\n}\n"
                  "socks pass {\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n  log: connect error\n}\n",
              0644);
    proxy_ = std::make_unique<ProxyProcess>(command, log, proxyPort_);
  }

  void useProxy(const std::string& type, bool withUser,
                const std::string& password = kProxyPassword, const std::string& extra = "") {
    std::string proxy = "[proxy]\nproxy_type = " + type +
                        "\nproxy_address = 127.0.0.1\nproxy_port = " + std::to_string(proxyPort_) +
                        "\n";
    if (withUser) {
      proxy += std::string("proxy_username = ") + kProxyUser + "\n";
      writeCredential("proxy-password", password + "\n");
    }
    writeConfig(extra + proxy);
  }

  void TearDown() override {
    if (proxy_ && HasFailure()) {
      std::cerr << "===== proxy log =====\n" << proxy_->log() << "===== end of proxy log =====\n";
    }
    NetnsTest::TearDown();
    proxy_.reset();
  }

  /// Starts the daemon, sends `body` and expects the hub to receive it.
  void startAndSend(const std::string& body) {
    hubemu::ServiceClient service(hub_);
    startDaemon();
    ASSERT_FALSE(client().SendMessage(body, {}, {}).empty());
    auto received = service.waitForTelemetry();
    ASSERT_TRUE(received.has_value());
    EXPECT_EQ(received->payload, body);
  }

  static std::string webSocketsOn(int port) {
    return "[hub]\nport = " + std::to_string(port) + "\n[connection]\nwebsockets = true\n";
  }

  int proxyPort_ = 0;
  std::unique_ptr<ProxyProcess> proxy_;
};

TEST_F(ProxyTest, HttpConnectWithBasicCredentialsCarriesMqttOverTls) {
  startTinyproxy();
  useProxy("HTTP", true);
  startAndSend("through tinyproxy");
  EXPECT_NE(proxy_->log().find("localhost:" + std::to_string(hub_.port())), std::string::npos)
      << proxy_->log();
  EXPECT_EQ(daemon_->log().find(kProxyPassword), std::string::npos)
      << "the proxy password was logged";
}

TEST_F(ProxyTest, HttpConnectCarriesWebSocketsToo) {
  startTinyproxy();
  useProxy("HTTP", true, kProxyPassword, webSocketsOn(hub_.websocketsPort()));
  startAndSend("wss through tinyproxy");
}

// iothubctl check goes the daemon's way too: DNS and TCP to the proxy, then TLS and the
// WebSocket upgrade through it (the proxy's log shows the CONNECT).
TEST_F(ProxyTest, IothubctlCheckGoesThroughTheProxyAndUpgradesToWebSockets) {
  startTinyproxy();
  useProxy("HTTP", true, kProxyPassword, webSocketsOn(hub_.websocketsPort()));
  CtlProcess::Options o;
  o.busAddress = bus_->address();
  auto r =
      runCtl({"check", "--json", "--config", configPath_, "--credentials-dir", credentialsDir_}, o);
  const std::string proxyAt = "HTTP proxy 127.0.0.1:" + std::to_string(proxyPort_);
  for (const std::string& line :
       {R"({"id":"dns","result":"ok","message":")" + proxyAt.substr(0, proxyAt.rfind(':')) +
            " resolves to 127.0.0.1 (the proxy resolves localhost)",
        R"({"id":"tcp","result":"ok","message":")" + proxyAt + " accepts TCP (127.0.0.1)",
        R"({"id":"tls","result":"ok","message":"TLS with localhost:)" +
            std::to_string(hub_.websocketsPort()) +
            ": certificate verified, WebSocket upgrade accepted"}) {
    EXPECT_NE(r.out.find(line), std::string::npos) << line << "\n" << r.out << r.err;
  }
  EXPECT_NE(proxy_->log().find("localhost:" + std::to_string(hub_.websocketsPort())),
            std::string::npos)
      << proxy_->log();
}

TEST_F(ProxyTest, WrongProxyCredentialsFailWithACredentialErrorNamingTheProxy) {
  startTinyproxy();
  useProxy("HTTP", true, "not the password");
  startDaemon();
  hubemu::ServiceClient service(hub_);
  std::string message;
  EXPECT_EQ(errorNameOf([&] { client().Connect(); }, &message), "org.iothubd.Error.Credential");
  EXPECT_NE(message.find("HTTP proxy 127.0.0.1:" + std::to_string(proxyPort_)), std::string::npos)
      << message;
  EXPECT_NE(message.find("the HTTP proxy refused the credentials"), std::string::npos) << message;
  EXPECT_EQ(message.find("not the password"), std::string::npos) << message;
  EXPECT_EQ(service.authCount(kDevice), 0u);
  EXPECT_EQ(daemon_->log().find("not the password"), std::string::npos);
}

TEST_F(ProxyTest, Socks5CarriesMqttOverTls) {
  startDante();
  useProxy("SOCKS5", false);
  startAndSend("through dante");
}

TEST_F(ProxyTest, Socks5WithUsernameAndPassword) {
  startDante(true);
  useProxy("SOCKS5", true);
  startAndSend("through dante, authenticated");
  EXPECT_NE(proxy_->log().find(std::string("username%") + kProxyUser), std::string::npos)
      << proxy_->log();
  EXPECT_EQ(daemon_->log().find(kProxyPassword), std::string::npos)
      << "the proxy password was logged";
}

TEST_F(ProxyTest, Socks5WrongPasswordIsACredentialError) {
  startDante(true);
  useProxy("SOCKS5", true, "Wrong-Pass.5");
  startDaemon();
  std::string message;
  EXPECT_EQ(errorNameOf([&] { client().Connect(); }, &message), "org.iothubd.Error.Credential");
  EXPECT_NE(message.find("the SOCKS5 proxy refused the credentials"), std::string::npos) << message;
}

TEST_F(ProxyTest, Socks5CarriesWebSocketsToo) {
  startDante();
  useProxy("SOCKS5", false, "", webSocketsOn(hub_.websocketsPort()));
  startAndSend("wss through dante");
}

TEST_F(ProxyTest, Socks4CarriesMqttOverTls) {
  startDante();
  useProxy("SOCKS4", false);
  startAndSend("socks4");
}

TEST_F(ProxyTest, FileUploadGoesThroughTheHttpProxyToo) {
  hubemu::Azurite azurite(hub_.dir());
  azurite.start();
  hubemu::FileUploadHub files(hub_, &azurite);
  files.start();
  // The hub's file-upload endpoints and storage are closed to the daemon as well.
  rejectForDaemon({files.port(), azurite.port()});
  startTinyproxy();
  useProxy("HTTP", true, kProxyPassword,
           "[file_upload]\nhttps_port = " + std::to_string(files.port()) + "\n");
  startDaemon();
  std::string path = daemonDir_ + "/via-proxy.txt";
  writeFile(path, "uploaded through the proxy\n", 0644);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  std::string correlationId = client().UploadFile("via-proxy.txt", sdbus::UnixFd(fd));
  ::close(fd);
  auto blob = files.blob("dev1/via-proxy.txt");
  EXPECT_TRUE(blob.exists);
  EXPECT_EQ(blob.size, 27u);
  bool notified = false;
  for (const auto& n : files.notifications()) {
    notified |= n.correlationId == correlationId && n.isSuccess;
  }
  EXPECT_TRUE(notified);
  std::string log = proxy_->log();
  EXPECT_NE(log.find("localhost:" + std::to_string(files.port())), std::string::npos) << log;
  EXPECT_NE(log.find(std::to_string(azurite.port())), std::string::npos) << log;
  EXPECT_EQ(daemon_->log().find(kProxyPassword), std::string::npos) << "the proxy password leaked";
}

// A reload that adds [proxy] (reload_test.cpp covers the other sections): the connection and
// file upload both take it at once, and the firewall proves that neither bypasses it.
TEST_F(ProxyTest, AReloadThatAddsAProxyTakesTheConnectionAndUploadsThroughIt) {
  hubemu::Azurite azurite(hub_.dir());
  azurite.start();
  hubemu::FileUploadHub files(hub_, &azurite);
  files.start();
  rejectForDaemon({files.port(), azurite.port()});
  const std::string extra = "[file_upload]\nhttps_port = " + std::to_string(files.port()) +
                            "\n[connection]\nconnection_retry_interval = 1\n";
  writeConfig(extra);
  startDaemon();
  std::string message;
  EXPECT_EQ(errorNameOf([&] { client().Connect(); }, &message),
            "org.iothubd.Error.ConnectionFailed")
      << "the firewall let the daemon through: " << message;

  startTinyproxy();
  useProxy("HTTP", true, kProxyPassword, extra);
  size_t mark = daemon_->log().size();
  ASSERT_TRUE(daemon_->reload());
  std::string log = daemon_->log().substr(mark);
  EXPECT_NE(log.find("reload: hub connection: reconnecting for proxy"), std::string::npos) << log;
  EXPECT_NE(log.find("reload: HTTPS client: rebuilt for proxy"), std::string::npos) << log;
  hubemu::ServiceClient service(hub_);
  ASSERT_TRUE(client().waitForConnectedProperty(true, 10s)) << client().LastError();
  EXPECT_FALSE(client().SendMessage("through the proxy after a reload", {}, {}).empty());

  std::string path = daemonDir_ + "/after-reload.txt";
  writeFile(path, "uploaded through the proxy\n", 0644);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  std::string correlationId = client().UploadFile("after-reload.txt", sdbus::UnixFd(fd));
  ::close(fd);
  EXPECT_TRUE(files.blob("dev1/after-reload.txt").exists);
  std::string proxyLog = proxy_->log();
  EXPECT_NE(proxyLog.find("localhost:" + std::to_string(hub_.port())), std::string::npos)
      << proxyLog;
  EXPECT_NE(proxyLog.find("localhost:" + std::to_string(files.port())), std::string::npos)
      << proxyLog;
  EXPECT_EQ(daemon_->log().find(kProxyPassword), std::string::npos) << "the proxy password leaked";
}

}  // namespace
}  // namespace iothubd::testing

int main(int argc, char** argv) {
  // A private network namespace for this process and every child (broker, proxies, daemon,
  // dbus-daemon): made before any thread exists. Needs root, as scripts/test runs it.
  if (int rc = iothubd::testing::enterPrivateNetwork(); rc != 0) {
    return rc;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
