// SPDX-License-Identifier: MIT
// SIGHUP (what `systemctl reload iothubd` sends): a changed configuration is applied without a
// restart, reconnecting only when the connection depends on the change; a configuration that does
// not load leaves the running one in force and the log says why.
#include <sys/stat.h>

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

TEST_F(ReloadTest, UploadDirectoriesAndKeepConnectedApplyAtAReloadAndABadDirectoryIsRefused) {
  hubemu::ServiceClient service(hub_);
  startConnected(service);
  auto& c = client();
  const std::string out = dir_ / "app-out";
  ASSERT_EQ(::mkdir(out.c_str(), 0755), 0);
  writeFile(out + "/report.csv", "a,b\n", 0644);
  // The hub's file upload is not running here: a call that gets past the confinement fails
  // reaching it (ConnectionFailed); one that does not is AccessDenied.
  const std::string deadPort =
      "[file_upload]\nhttps_port = " + std::to_string(hubemu::freeLoopbackPort()) + "\n";
  auto uploadError = [&] {
    return errorNameOf([&] { c.UploadFileFromPath("r", out + "/report.csv"); });
  };
  EXPECT_EQ(uploadError(), "org.freedesktop.DBus.Error.AccessDenied");

  writeConfig(deadPort + "upload_from_path_directories = " + out +
              "\n[connection]\nkeep_connected = false\n");
  ASSERT_TRUE(daemon_->reload());
  EXPECT_EQ(uploadError(), "org.iothubd.Error.ConnectionFailed");
  c.Disconnect();  // keep_connected off now, and nobody holds the link
  EXPECT_TRUE(c.waitForConnectionStateChanged(false));

  // A listed directory that holds the daemon's own files: the reload fails, naming it, and the
  // running list stays.
  writeConfig(deadPort + "upload_from_path_directories = " + dir_.path() + "\n");
  ASSERT_TRUE(daemon_->reload());
  EXPECT_NE(daemon_->log().find("reload failed, keeping the running configuration: "
                                "configuration: [file_upload] upload_from_path_directories: " +
                                dir_.path() + " contains"),
            std::string::npos)
      << daemon_->log();
  EXPECT_EQ(uploadError(), "org.iothubd.Error.ConnectionFailed");

  // keep_connected back on: the daemon connects again by itself.
  writeConfig(deadPort + "upload_from_path_directories = " + out + "\n");
  ASSERT_TRUE(daemon_->reload());
  EXPECT_TRUE(c.waitForConnectionStateChanged(true));
}

}  // namespace
}  // namespace iothubd::testing
