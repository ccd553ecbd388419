// SPDX-License-Identifier: MIT
// Issue 14: a stock Debian 12 resolves `localhost` to ::1 before 127.0.0.1 (its installer writes
// `::1 localhost ip6-localhost ip6-loopback` into /etc/hosts), while the hub emulator, like many
// real servers, listens on IPv4 only. This binary's main() makes a private mount namespace whose
// /etc/hosts is the installer's and a private network namespace (for its firewall rules) before
// anything else runs, so every test here, and every process it starts, sees that machine: the
// daemon must try every address (src/relay, RFC 8305) for MQTT, WebSockets, a proxy named by
// host name and HTTPS (libcurl's own happy eyeballs), with TLS still checked on the name.
#include <netdb.h>
#include <sys/socket.h>

#include <iostream>

#include "daemon_fixture.hpp"
#include "file_upload_fixture.hpp"
#include "netns_support.hpp"

namespace iothubd::testing {
namespace {

/// /etc/hosts as Debian 12's installer writes it.
constexpr const char* kDebianHosts =
    "127.0.0.1\tlocalhost\n"
    "127.0.1.1\tgateway\n"
    "\n"
    "# The following lines are desirable for IPv6 capable hosts\n"
    "::1     localhost ip6-localhost ip6-loopback\n"
    "ff02::1 ip6-allnodes\n"
    "ff02::2 ip6-allrouters\n";

/// The addresses getaddrinfo gives for `name`, in its order.
std::vector<std::string> resolve(const char* name) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* list = nullptr;
  std::vector<std::string> out;
  if (::getaddrinfo(name, nullptr, &hints, &list) == 0) {
    for (addrinfo* a = list; a != nullptr; a = a->ai_next) {
      char text[NI_MAXHOST];
      if (::getnameinfo(a->ai_addr, a->ai_addrlen, text, sizeof text, nullptr, 0, NI_NUMERICHOST) ==
          0) {
        out.emplace_back(text);
      }
    }
    ::freeaddrinfo(list);
  }
  return out;
}

/// Adds an ip6tables OUTPUT rule for TCP to [::1]:`port` with `target` ("DROP": an IPv6 route
/// that swallows packets; "REJECT": refused).
void blockIpv6(int port, const std::string& target) {
  std::vector<std::string> rule{"ip6tables", "-w",  "-A",  "OUTPUT",  "-p",
                                "tcp",       "-d",  "::1", "--dport", std::to_string(port),
                                "-j",        target};
  if (target == "REJECT") {
    rule.insert(rule.end(), {"--reject-with", "tcp-reset"});
  }
  ASSERT_EQ(run(rule), 0) << "ip6tables failed";
}

class FallbackTest : public DaemonTest {
 protected:
  FallbackTest() = default;
  explicit FallbackTest(hubemu::HubEmulator::Options options) : DaemonTest(std::move(options)) {}

  void SetUp() override {
    // The premise of every test here, checked rather than assumed.
    const auto order = resolve("localhost");
    ASSERT_GE(order.size(), 2u);
    ASSERT_EQ(order.front(), "::1") << "localhost does not resolve to ::1 first here";
    DaemonTest::SetUp();
  }
  void TearDown() override {
    DaemonTest::TearDown();
    run({"ip6tables", "-w", "-F", "OUTPUT"});
    run({"iptables", "-w", "-F", "OUTPUT"});
  }

  /// Whether the daemon's debug log shows an attempt on `address` ending with `outcome`.
  bool logged(const std::string& line) { return daemon_->log().find(line) != std::string::npos; }

  std::string v6(int port) const { return "[::1]:" + std::to_string(port); }
  std::string v4(int port) const { return "127.0.0.1:" + std::to_string(port); }
};

TEST_F(FallbackTest, MqttFallsBackToIPv4WhenLocalhostIsIPv6FirstAndTheHubIPv4Only) {
  hubemu::ServiceClient service(hub_);
  startDaemon();
  ASSERT_FALSE(client().SendMessage("over IPv4", {}, {}).empty());
  ASSERT_TRUE(service.waitForTelemetry().has_value());
  EXPECT_TRUE(logged("TCP: " + v6(hub_.port()) + ": Connection refused")) << daemon_->log();
  EXPECT_TRUE(logged("TCP: connected to " + v4(hub_.port()))) << daemon_->log();
  // TLS checked the certificate against the name, not the address that answered.
  EXPECT_TRUE(logged("TLS tunnel to localhost:" + std::to_string(hub_.port()) + " (" +
                     v4(hub_.port()) + ") is open"))
      << daemon_->log();
}

TEST_F(FallbackTest, ABrokenIPv6RouteCostsOneAttemptDelayNotTheConnection) {
  // Packets to ::1 vanish, as on a network whose IPv6 route is broken: an attempt there would
  // wait for TCP's own timeout (about two minutes), far beyond the 10 s this connect may take.
  blockIpv6(hub_.port(), "DROP");
  writeConfig("[connection]\noperation_timeout = 10\nconnection_retry = false\n");
  startDaemon();
  client().Connect();
  EXPECT_TRUE(client().Connected());
  EXPECT_FALSE(client().SendMessage("despite IPv6", {}, {}).empty());
  EXPECT_TRUE(logged("TCP: connecting to " + v6(hub_.port()))) << daemon_->log();
  EXPECT_TRUE(logged("TCP: connected to " + v4(hub_.port()))) << daemon_->log();
  EXPECT_FALSE(logged("TCP: " + v6(hub_.port()) + ":")) << "the IPv6 attempt was answered";
}

class FallbackToIPv6Test : public FallbackTest {
 protected:
  static hubemu::HubEmulator::Options ipv6Only() {
    hubemu::HubEmulator::Options o;
    o.listen = hubemu::HubEmulator::Options::Listen::Ipv6;
    return o;
  }
  FallbackToIPv6Test() : FallbackTest(ipv6Only()) {}
};

TEST_F(FallbackToIPv6Test, AHubOnIPv6IsReachedFirstTry) {
  startDaemon();
  EXPECT_FALSE(client().SendMessage("over IPv6", {}, {}).empty());
  EXPECT_TRUE(logged("TCP: connected to " + v6(hub_.port()))) << daemon_->log();
  EXPECT_FALSE(logged("TCP: connecting to " + v4(hub_.port())));
}

class WebSocketFallbackTest : public FallbackTest {
 protected:
  static hubemu::HubEmulator::Options withWebSockets() {
    hubemu::HubEmulator::Options o;
    o.websocketsListener = true;
    return o;
  }
  WebSocketFallbackTest() : FallbackTest(withWebSockets()) {}
};

TEST_F(WebSocketFallbackTest, WebSocketsFallBackToo) {
  // mosquitto's WebSocket listener binds every address; a refusal on ::1 stands in for a server
  // that listens on IPv4 only.
  blockIpv6(hub_.websocketsPort(), "REJECT");
  writeConfig("[hub]\nport = " + std::to_string(hub_.websocketsPort()) +
              "\n[connection]\nwebsockets = true\n");
  hubemu::ServiceClient service(hub_);
  startDaemon();
  ASSERT_FALSE(client().SendMessage("wss over IPv4", {}, {}).empty());
  ASSERT_TRUE(service.waitForTelemetry().has_value());
  EXPECT_TRUE(logged("TCP: " + v6(hub_.websocketsPort()) + ": Connection refused"))
      << daemon_->log();
  EXPECT_TRUE(logged("TCP: connected to " + v4(hub_.websocketsPort()))) << daemon_->log();
}

TEST_F(FallbackTest, AProxyNamedByHostNameIsReachedOnIPv4) {
  const int proxyPort = freeTcpPort();
  const std::string dir = dir_ / "tinyproxy";
  ::mkdir(dir.c_str(), 0755);
  const std::string log = dir + "/tinyproxy.log";
  writeFile(log, "", 0666);
  writeFile(dir + "/tinyproxy.conf",
            "Port " + std::to_string(proxyPort) +
                "\nListen 127.0.0.1\nTimeout 60\nUser nobody\nGroup nogroup\nLogFile \"" + log +
                "\"\nLogLevel Connect\nMaxClients 20\nAllow 127.0.0.1\n",
            0644);
  ProxyProcess proxy({"tinyproxy", "-d", "-c", dir + "/tinyproxy.conf"}, log, proxyPort);
  // The daemon's own user may not reach the hub directly: only through the proxy.
  for (const char* tool : {"iptables", "ip6tables"}) {
    ASSERT_EQ(
        run({tool, "-w", "-A", "OUTPUT", "-p", "tcp", "--dport", std::to_string(hub_.port()), "-m",
             "owner", "--uid-owner", "iothubd", "-j", "REJECT", "--reject-with", "tcp-reset"}),
        0);
  }
  writeConfig("[proxy]\nproxy_type = HTTP\nproxy_address = localhost\nproxy_port = " +
              std::to_string(proxyPort) + "\n");
  hubemu::ServiceClient service(hub_);
  startDaemon();
  ASSERT_FALSE(client().SendMessage("through the proxy", {}, {}).empty()) << proxy.log();
  ASSERT_TRUE(service.waitForTelemetry().has_value());
  EXPECT_TRUE(logged("TCP: " + v6(proxyPort) + ": Connection refused")) << daemon_->log();
  EXPECT_TRUE(logged("TCP: connected to " + v4(proxyPort))) << daemon_->log();
}

// HTTPS goes through libcurl, which races the addresses itself (CURLOPT_HAPPY_EYEBALLS_TIMEOUT_MS,
// 200 ms by default); this proves it for the hub's file-upload endpoints and storage, both on
// 127.0.0.1 only and both named `localhost`.
TEST_F(FileUploadTest, FileUploadWorksWithLocalhostIPv6FirstAndIPv4OnlyServers) {
  ASSERT_EQ(resolve("localhost").front(), "::1");
  startDaemon();
  const std::string data = "over IPv4, named localhost\n";
  const std::string id = upload("fallback.txt", sourceFile("fallback.txt", data));
  EXPECT_TRUE(notifiedSuccess(id));
  EXPECT_EQ(files_->blob("dev1/fallback.txt").sha256, sha256Hex(data));
}

}  // namespace
}  // namespace iothubd::testing

int main(int argc, char** argv) {
  // Before any thread exists: the installer's /etc/hosts in a private mount namespace, and a
  // private network namespace for the firewall rules. Needs root, as scripts/test runs it.
  if (int rc = iothubd::testing::useHostsFile(iothubd::testing::kDebianHosts); rc != 0) {
    return rc;
  }
  if (int rc = iothubd::testing::enterPrivateNetwork(); rc != 0) {
    return rc;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
