// SPDX-License-Identifier: MIT
// SIGHUP (what `systemctl reload iothubd` sends): every section of iothubd.conf(5) takes effect
// without a restart, each component treated as config::apply() decides (in place, rebuilt, or a
// reconnect) and the log says which; a configuration that does not load leaves the running one in
// force and the log says why. What each key does at a reload is checked key by key in
// tests/unit/config/composition_test.cpp; these tests prove it end to end, grouped so that one
// daemon start checks several sections. [proxy] is in netns_test.cpp (ProxyTest), where a
// firewall proves that nothing bypasses the proxy after the reload.
#include <fcntl.h>
#include <sys/stat.h>

#include <cstdlib>
#include <future>

#include "daemon_fixture.hpp"
#include "file_upload_fixture.hpp"

namespace iothubd::testing {
namespace {

/// The log from `mark` on (what a reload logged).
std::string logSince(const DaemonProcess& daemon, size_t mark) {
  std::string log = daemon.log();
  return mark < log.size() ? log.substr(mark) : std::string();
}

/// Starts the daemon, waits until the hub saw it connect once, sends telemetry through the bus.
template <class Fixture>
class Reloading : public Fixture {
 protected:
  void startConnected(hubemu::ServiceClient& service) {
    this->startDaemon();
    ASSERT_TRUE(service.waitForAuth(DaemonTest::kDevice).has_value()) << "iothubd never connected";
    ASSERT_TRUE(this->daemon_->waitStatus("connected to localhost as dev1"))
        << this->daemon_->lastStatus();
  }

  /// One telemetry message through the bus, received by `service`'s hub as `device`.
  void expectServing(hubemu::ServiceClient& service, const std::string& body,
                     const std::string& device = DaemonTest::kDevice) {
    std::string id = this->client().SendMessage(body, {}, {});
    auto received = service.waitForTelemetry(
        [&id](const hubemu::Telemetry& t) { return t.property("$.mid") == id; });
    ASSERT_TRUE(received.has_value()) << "the hub did not receive " << body;
    EXPECT_EQ(received->payload, body);
    EXPECT_EQ(received->device, device);
  }

  /// Rewrites the configuration with `extra`, sends SIGHUP, returns what the reload logged.
  std::string reloadWith(const std::string& extra) {
    this->writeConfig(extra);
    size_t mark = this->daemon_->log().size();
    EXPECT_TRUE(this->daemon_->reload()) << "no RELOADING=1/READY=1 after SIGHUP";
    return logSince(*this->daemon_, mark);
  }
};

using ReloadTest = Reloading<DaemonTest>;

TEST_F(ReloadTest, AChangedConnectionSettingReconnectsWithIt) {
  hubemu::ServiceClient service(hub_);
  startConnected(service);

  std::string log = reloadWith("[connection]\nkeep_alive = 45\nproduct_info = reload-test/2\n");

  ASSERT_TRUE(service.waitForAuthCount(kDevice, 2)) << "iothubd did not reconnect";
  std::string broker = hub_.brokerLog();
  EXPECT_NE(broker.find("k45"), std::string::npos) << "the new CONNECT lacks keep_alive 45";
  EXPECT_NE(broker.find("reload-test%2F2"), std::string::npos)
      << "the new CONNECT lacks the product info";
  EXPECT_NE(log.find("reload: hub connection: reconnecting for product_info, keep_alive"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("configuration reloaded from " + configPath_ + "; reconnecting to apply it"),
            std::string::npos)
      << log;
  ASSERT_TRUE(daemon_->waitStatus("connected to localhost as dev1")) << daemon_->lastStatus();
  expectServing(service, "after reload");
}

// [connection] (in place), [methods], [limits], [file_upload] and [daemon] in one start: each
// applies without a reconnect, the log names each component's decision, and each shows in what
// the daemon does next.
TEST_F(ReloadTest, EverySettingTheLinkDoesNotDependOnAppliesInPlace) {
  hubemu::ServiceClient service(hub_);
  startConnected(service);
  awaitOnline();
  auto& c = client();
  c.RegisterMethodHandler("first");

  std::string log = reloadWith(
      "[connection]\noperation_timeout = 30\nconnection_retry_max_delay = 3\n"
      "[methods]\nmethod_response_timeout = 1\n"
      "[limits]\nmax_method_claims_per_app = 1\nmax_queued_messages = 500\n"
      "[file_upload]\nblock_size = 1048576\nmax_concurrent_uploads = 2\n"
      "[daemon]\nlog_level = notice\n");

  EXPECT_NE(log.find("reload: log level: notice"), std::string::npos) << log;
  EXPECT_NE(log.find("reload: hub connection: applied in place: connection_retry_max_delay, "
                     "operation_timeout, max_queued_messages"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("reload: file upload: rebuilt for block_size, max_concurrent_uploads, "
                     "operation_timeout"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("reload: bus API: applied in place: max_method_claims_per_app, "
                     "method_response_timeout"),
            std::string::npos)
      << log;
  EXPECT_EQ(log.find("reload: outbox"), std::string::npos) << "nothing of [outbox] changed";
  EXPECT_NE(log.find("; the connection is unaffected"), std::string::npos) << log;

  // [limits]: the second claim is over the new limit (the first one is held already).
  EXPECT_EQ(errorNameOf([&] { c.RegisterMethodHandler("second"); }),
            "org.iothubd.Error.LimitExceeded");
  // [methods]: an unanswered request gets 504 after the new second.
  auto invoked = std::async(std::launch::async,
                            [&] { return service.invokeMethod(kDevice, "first", "{}", 10s); });
  ASSERT_TRUE(c.waitForSignal("MethodRequestReceived").has_value());
  EXPECT_EQ(invoked.get().status, 504);
  // [daemon]: debug lines (one per MQTT packet before) stop.
  size_t mark = daemon_->log().size();
  expectServing(service, "same connection");
  EXPECT_EQ(logSince(*daemon_, mark).find("<7>"), std::string::npos) << logSince(*daemon_, mark);
  EXPECT_EQ(service.authCount(kDevice), 1u) << "iothubd reconnected for nothing";
}

// [outbox]: a new outbox_path takes effect at once; what the old file still holds stays there and
// is delivered when that path is configured again; nothing is lost either way. A path that cannot
// be opened is refused with a warning, and the running outbox stays.
TEST_F(ReloadTest, ANewOutboxPathIsUsedAtOnceAndTheOldFileKeepsItsMessages) {
  writeConfig("[connection]\nconnection_retry_interval = 1\n");
  startDaemon();
  awaitOnline();
  hub_.stop();
  ASSERT_TRUE(client().waitForConnectionStateChanged(false));
  std::string stayed = client().QueueMessage("queued in the first outbox", {}, {});

  const std::string second = daemonDir_ + "/second-outbox.db";
  std::string log = reloadWith(
      "[connection]\nconnection_retry_interval = 1\n[outbox]\noutbox_path = " + second + "\n");
  EXPECT_NE(log.find("reload: outbox: rebuilt for outbox_path"), std::string::npos) << log;
  EXPECT_NE(log.find("1 messages stay in the outbox at " + daemonDir_ + "/outbox.db"),
            std::string::npos)
      << log;
  struct stat st {};
  EXPECT_EQ(::stat(second.c_str(), &st), 0) << "no database at the new path";
  std::string moved = client().QueueMessage("queued in the second outbox", {}, {});
  EXPECT_EQ(client().OutboxLength(), 1u) << "the new outbox holds only its own message";

  hub_.restart();  // same port; the daemon reconnects by itself
  hubemu::ServiceClient service(hub_);
  ASSERT_TRUE(service
                  .waitForTelemetry(
                      [&](const hubemu::Telemetry& t) { return t.property("$.mid") == moved; }, 15s)
                  .has_value());

  log = reloadWith("[connection]\nconnection_retry_interval = 1\n");  // the first path again
  EXPECT_NE(log.find("reload: outbox: rebuilt for outbox_path"), std::string::npos) << log;
  ASSERT_TRUE(
      service
          .waitForTelemetry(
              [&](const hubemu::Telemetry& t) { return t.property("$.mid") == stayed; }, 15s)
          .has_value())
      << "the message left in the first outbox was not delivered after it came back";
  EXPECT_EQ(service.ledger(kDevice).duplicates, 0);

  // A path that cannot be opened is refused: the running outbox keeps serving.
  log = reloadWith("[connection]\nconnection_retry_interval = 1\n[outbox]\noutbox_path = " +
                   daemonDir_ + "/missing/outbox.db\n");
  EXPECT_NE(log.find("<4>reload: outbox: "), std::string::npos) << log;
  EXPECT_NE(log.find("; keeping the running one (outbox_path not applied)"), std::string::npos)
      << log;
  std::string kept = client().QueueMessage("queued in the outbox that kept running", {}, {});
  EXPECT_TRUE(
      service
          .waitForTelemetry([&](const hubemu::Telemetry& t) { return t.property("$.mid") == kept; })
          .has_value());
}

TEST_F(ReloadTest, ABrokenConfigurationKeepsTheRunningOneAndSaysWhy) {
  hubemu::ServiceClient service(hub_);
  startConnected(service);

  std::string log = reloadWith("[connection]\nkeep_alive = banana\n");

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

// --- with file upload: another hub, another device, another CA ---------------------------------

/// A second hub with its own file-upload endpoints: "127.0.0.1" instead of "localhost" (the test
/// PKI names both), its own port, its own device registry.
hubemu::HubEmulator::Options secondHub() {
  hubemu::HubEmulator::Options o;
  o.hubHost = "127.0.0.1";
  return o;
}

class ReloadUploadTest : public Reloading<FileUploadTest> {
 protected:
  static constexpr const char* kSecondDevice = "dev2";

  /// `name` with `data` uploaded through the bus; the correlation id, or the D-Bus error name.
  std::string uploadResult(const std::string& name, const std::string& data,
                           std::string* error = nullptr) {
    std::string path = sourceFile(name, data);
    std::string id;
    std::string failure = errorNameOf([&] { id = upload(name, path); }, error);
    return failure.empty() ? id : failure;
  }
};

// [hub], [credentials] and [file_upload] https_port: the daemon moves to another hub as another
// device; telemetry and uploads follow it, with the new identity's token on the new host.
TEST_F(ReloadUploadTest, AnotherHubAndDeviceTakeTelemetryAndUploadsWithTheNewIdentity) {
  hubemu::HubEmulator hub2(secondHub());
  const std::string key2 = hub2.addDevice(kSecondDevice);
  hub2.start();
  hubemu::FileUploadHub files2(hub2, azurite_);
  files2.start();
  hubemu::ServiceClient service(hub_);
  hubemu::ServiceClient service2(hub2);
  startConnected(service);
  std::string before = uploadResult("before.txt", "uploaded to the first hub\n");
  ASSERT_TRUE(notifiedSuccess(before)) << before;

  writeCredential("connection-string", "HostName=127.0.0.1;DeviceId=" + std::string(kSecondDevice) +
                                           ";SharedAccessKey=" + key2 + "\n");
  std::string log =
      reloadWith("[hub]\nport = " + std::to_string(hub2.port()) +
                 "\n[file_upload]\nhttps_port = " + std::to_string(files2.port()) + "\n");

  EXPECT_NE(log.find("reload: hub connection: reconnecting for hostname, device_id, port, "
                     "device key"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("reload: file upload: rebuilt for hub host or https_port, device_id"),
            std::string::npos)
      << log;
  ASSERT_TRUE(service2.waitForAuth(kSecondDevice, 10s).has_value()) << "no CONNECT at hub 2";
  ASSERT_TRUE(daemon_->waitStatus("connected to 127.0.0.1 as dev2")) << daemon_->lastStatus();
  EXPECT_EQ(client().DeviceId(), kSecondDevice);
  EXPECT_EQ(client().HostName(), "127.0.0.1");
  expectServing(service2, "to the second hub", kSecondDevice);

  const size_t firstHubRequests = files_->hubRequests().size();
  std::string after = uploadResult("after.txt", "uploaded to the second hub\n");
  auto requests = files2.hubRequests();
  ASSERT_FALSE(requests.empty()) << "the upload did not go to the second hub: " << after;
  for (const auto& r : requests) {
    EXPECT_EQ(r.device, kSecondDevice);
    EXPECT_EQ(r.status / 100, 2) << r.kind << " refused: " << r.reason;
  }
  bool notified = false;
  for (const auto& n : files2.notifications()) {
    notified |= n.correlationId == after && n.isSuccess;
  }
  EXPECT_TRUE(notified) << after;
  EXPECT_TRUE(files2.blob("dev2/after.txt").exists);
  EXPECT_EQ(files_->hubRequests().size(), firstHubRequests) << "the first hub was asked again";
}

// [connection] server_verification_cert: MQTT and HTTPS trust the new CA alike, both when it is
// the wrong one and when it is put right again.
TEST_F(ReloadUploadTest, ANewCaAppliesToTheConnectionAndToUploadsAlike) {
  // A CA that did not sign the hub's certificate.
  const std::string otherCa = daemonDir_ + "/other-ca.pem";
  const std::string command =
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 "
      "-nodes -keyout /dev/null -subj /CN=other-ca -days 1 -out '" +
      otherCa + "' 2>/dev/null";
  ASSERT_EQ(std::system(command.c_str()), 0);
  ::chmod(otherCa.c_str(), 0644);
  const std::string port = "[file_upload]\nhttps_port = " + std::to_string(files_->port()) + "\n";
  const std::string retry = "[connection]\nconnection_retry_interval = 1\n";
  writeConfig(port + retry);
  hubemu::ServiceClient service(hub_);
  startConnected(service);

  std::string log =
      reloadWith(port + retry + "[connection]\nserver_verification_cert = " + otherCa + "\n");
  EXPECT_NE(log.find("reload: hub connection: reconnecting for server_verification_cert"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("reload: HTTPS client: rebuilt for server_verification_cert"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("reload: file upload: rebuilt for HTTPS client rebuilt"), std::string::npos)
      << log;
  ASSERT_TRUE(client().waitForConnectionStateChanged(false));
  EXPECT_NE(client().LastError().find("certificate"), std::string::npos) << client().LastError();
  std::string message;
  EXPECT_EQ(uploadResult("refused.txt", "never sent\n", &message),
            "org.iothubd.Error.ConnectionFailed")
      << message;

  reloadWith(port + retry);  // the hub's CA again
  ASSERT_TRUE(client().waitForConnectionStateChanged(true, 10s));
  std::string correlationId = uploadResult("accepted.txt", "sent\n");
  EXPECT_TRUE(notifiedSuccess(correlationId)) << correlationId;
  expectServing(service, "trusted again");
}

// [file_upload] upload_from_path_directories and [connection] keep_connected (issue 12): both
// apply at a reload, and a listed directory holding the daemon's own files is refused.
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
