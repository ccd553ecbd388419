// SPDX-License-Identifier: MIT
// SIGHUP (what `systemctl reload iothubd` sends): a changed configuration is applied without a
// restart, reconnecting only when the connection depends on the change; a configuration that does
// not load leaves the running one in force and the log says why.
#include "daemon_fixture.hpp"

namespace iothubd::testing {
namespace {

class ReloadTest : public DaemonTest {
 protected:
  /// Starts the daemon and waits until the hub saw it connect once.
  void startConnected(hubemu::ServiceClient& service) {
    startDaemon();
    ASSERT_TRUE(service.waitForAuth(kDevice).has_value()) << "iothubd never connected";
    ASSERT_TRUE(daemon_->waitStatus("connected to localhost as dev1")) << daemon_->lastStatus();
  }

  /// One telemetry message through the bus, received by the hub.
  void expectServing(hubemu::ServiceClient& service, const std::string& body) {
    std::string id = client().SendMessage(body, {}, {});
    auto received = service.waitForTelemetry(
        [&id](const hubemu::Telemetry& t) { return t.property("$.mid") == id; });
    ASSERT_TRUE(received.has_value()) << "the hub did not receive " << body;
    EXPECT_EQ(received->payload, body);
  }
};

TEST_F(ReloadTest, AChangedConnectionSettingReconnectsWithIt) {
  hubemu::ServiceClient service(hub_);
  startConnected(service);

  writeConfig("[connection]\nkeep_alive = 45\nproduct_info = reload-test/2\n");
  ASSERT_TRUE(daemon_->reload()) << "no RELOADING=1/READY=1 after SIGHUP";

  ASSERT_TRUE(service.waitForAuthCount(kDevice, 2)) << "iothubd did not reconnect";
  std::string broker = hub_.brokerLog();
  EXPECT_NE(broker.find("k45"), std::string::npos) << "the new CONNECT lacks keep_alive 45";
  EXPECT_NE(broker.find("reload-test%2F2"), std::string::npos)
      << "the new CONNECT lacks the product info";
  EXPECT_NE(daemon_->log().find("configuration reloaded from " + configPath_ +
                                "; reconnecting to apply it"),
            std::string::npos)
      << daemon_->log();
  ASSERT_TRUE(daemon_->waitStatus("connected to localhost as dev1")) << daemon_->lastStatus();
  expectServing(service, "after reload");
}

TEST_F(ReloadTest, ASettingTheConnectionDoesNotDependOnAppliesWithoutReconnecting) {
  hubemu::ServiceClient service(hub_);
  startConnected(service);

  writeConfig("[connection]\noperation_timeout = 30\n");
  ASSERT_TRUE(daemon_->reload());

  EXPECT_NE(daemon_->log().find("; the connection is unaffected"), std::string::npos)
      << daemon_->log();
  expectServing(service, "same connection");
  EXPECT_EQ(service.authCount(kDevice), 1u) << "iothubd reconnected for nothing";
}

TEST_F(ReloadTest, ABrokenConfigurationKeepsTheRunningOneAndSaysWhy) {
  hubemu::ServiceClient service(hub_);
  startConnected(service);

  writeConfig("[connection]\nkeep_alive = banana\n");
  ASSERT_TRUE(daemon_->reload());

  std::string log = daemon_->log();
  EXPECT_NE(log.find("<4>reload failed, keeping the running configuration: configuration: " +
                     configPath_ + ":"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("keep_alive: expected an integer"), std::string::npos) << log;
  EXPECT_TRUE(daemon_->running());
  expectServing(service, "still serving");
  EXPECT_EQ(service.authCount(kDevice), 1u);
}

TEST_F(ReloadTest, AnUnreadableCredentialKeepsTheRunningOneWithoutLeakingIt) {
  hubemu::ServiceClient service(hub_);
  startConnected(service);

  auto user = serviceUser();
  writeFile(credentialsDir_ + "/connection-string",
            "HostName=localhost;DeviceId=dev1;SharedAccessKey=" + deviceKey_ + "\n", 0644,
            static_cast<int>(user.uid), static_cast<int>(user.gid));
  ASSERT_TRUE(daemon_->reload());

  std::string log = daemon_->log();
  EXPECT_NE(log.find("reload failed, keeping the running configuration: credentials: "),
            std::string::npos)
      << log;
  EXPECT_EQ(log.find(deviceKey_), std::string::npos) << "the key leaked into the log";
  expectServing(service, "still serving");
}

}  // namespace
}  // namespace iothubd::testing
