// SPDX-License-Identifier: MIT
#include "daemon_fixture.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

namespace iothubd::testing {

DeviceClient::DeviceClient(const std::string& busAddress)
    : ProxyInterfaces(sdbus::createSessionBusConnectionWithAddress(busAddress), "org.iothubd",
                      "/org/iothubd/Device") {
  registerProxy();
}

DeviceClient::~DeviceClient() {
  unregisterProxy();
}

void DeviceClient::clearSignals() {
  std::lock_guard lock(mutex_);
  signals_.clear();
  taken_.clear();
  lastTaken_.clear();
}

std::string DeviceClient::uniqueName() {
  return getProxy().getConnection().getUniqueName();
}

namespace {
SignalRecord named(std::string name, std::vector<std::string> args = {}) {
  SignalRecord r;
  r.name = std::move(name);
  r.args = std::move(args);
  return r;
}
}  // namespace

void DeviceClient::record(SignalRecord r) {
  std::lock_guard lock(mutex_);
  signals_.push_back(std::move(r));
  taken_.push_back(false);
  cv_.notify_all();
}

void DeviceClient::onMessageReceived(const std::vector<uint8_t>& body, const StringMap& properties,
                                     const StringMap& systemProperties) {
  SignalRecord r = named("MessageReceived");
  r.body = body;
  r.properties = properties;
  r.systemProperties = systemProperties;
  record(std::move(r));
}

void DeviceClient::onMethodRequestReceived(const std::string& requestId,
                                           const std::string& methodName,
                                           const std::string& payload) {
  record(named("MethodRequestReceived", {requestId, methodName, payload}));
}

void DeviceClient::onTwinDesiredPropertiesPatchReceived(const std::string& patch) {
  record(named("TwinDesiredPropertiesPatchReceived", {patch}));
}

void DeviceClient::onConnectionStateChanged(const bool& connected) {
  record(named("ConnectionStateChanged", {connected ? "true" : "false"}));
}

void DeviceClient::onNewSasTokenRequired() {
  record(named("NewSasTokenRequired", {}));
}

void DeviceClient::onBackgroundException(const std::string& errorName, const std::string& message) {
  record(named("BackgroundException", {errorName, message}));
}

void DeviceClient::onUploadProgress(const std::string& blobName, const uint64_t& done,
                                    const uint64_t& total) {
  record(named("UploadProgress", {blobName, std::to_string(done), std::to_string(total)}));
}

void DeviceClient::onMessagesDelivered(const std::vector<std::string>& ids) {
  record(named("MessagesDelivered", ids));
}

void DeviceClient::onMessagesExpired(const std::vector<std::string>& ids) {
  record(named("MessagesExpired", ids));
}

void DeviceClient::onPropertiesChanged(const std::string& interfaceName,
                                       const std::map<std::string, sdbus::Variant>& changed,
                                       const std::vector<std::string>&) {
  if (interfaceName != "org.iothubd.Device1") {
    return;
  }
  SignalRecord r = named("PropertiesChanged");
  r.changed = changed;
  record(std::move(r));
}

std::optional<SignalRecord> DeviceClient::waitForSignal(
    const std::string& name, const std::function<bool(const SignalRecord&)>& predicate,
    std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  std::optional<SignalRecord> found;
  cv_.wait_for(lock, timeout, [&] {
    // Signals of one name are consumed in order: a wait never returns one older than the last
    // it returned for that name (so a late-dispatched stale signal cannot satisfy it).
    size_t from = 0;
    if (auto it = lastTaken_.find(name); it != lastTaken_.end()) {
      from = it->second + 1;
    }
    for (size_t i = from; i < signals_.size(); ++i) {
      if (!taken_[i] && signals_[i].name == name && (!predicate || predicate(signals_[i]))) {
        taken_[i] = true;
        lastTaken_[name] = i;
        found = signals_[i];
        return true;
      }
    }
    return false;
  });
  return found;
}

bool DeviceClient::waitForConnectionStateChanged(bool connected,
                                                 std::chrono::milliseconds timeout) {
  return waitForSignal(
             "ConnectionStateChanged",
             [&](const SignalRecord& r) { return r.args[0] == (connected ? "true" : "false"); },
             timeout)
      .has_value();
}

bool DeviceClient::waitForConnectedProperty(bool connected, std::chrono::milliseconds timeout) {
  return waitForSignal(
             "PropertiesChanged",
             [&](const SignalRecord& r) {
               auto it = r.changed.find("Connected");
               return it != r.changed.end() && it->second.get<bool>() == connected;
             },
             timeout)
      .has_value();
}

std::vector<SignalRecord> DeviceClient::signals(const std::string& name) const {
  std::lock_guard lock(mutex_);
  std::vector<SignalRecord> out;
  for (const auto& r : signals_) {
    if (r.name == name) {
      out.push_back(r);
    }
  }
  return out;
}

std::string errorNameOf(const std::function<void()>& call, std::string* message) {
  try {
    call();
  } catch (const sdbus::Error& e) {
    if (message != nullptr) {
      *message = e.getMessage();
    }
    return e.getName();
  }
  return "";
}

void DaemonTest::SetUp() {
  deviceKey_ = hub_.addDevice(kDevice);
  hub_.start();
  bus_ = std::make_unique<PrivateBus>(dir_ / "bus", policyFilePath(), busIncludes_);

  // The daemon runs as the unprivileged service user, as under systemd: it gets a directory of
  // its own for its configuration, trust anchor and secrets.
  auto user = serviceUser();
  daemonDir_ = dir_ / "daemon";
  ::mkdir(daemonDir_.c_str(), 0700);
  if (::chown(daemonDir_.c_str(), user.uid, user.gid) != 0) {
    throw std::runtime_error("cannot chown " + daemonDir_);
  }
  credentialsDir_ = daemonDir_ + "/credentials";
  ::mkdir(credentialsDir_.c_str(), 0700);
  if (::chown(credentialsDir_.c_str(), user.uid, user.gid) != 0) {
    throw std::runtime_error("cannot chown " + credentialsDir_);
  }
  writeFile(daemonDir_ + "/ca.pem", readFile(hub_.caFile()), 0644);
  configPath_ = daemonDir_ + "/iothubd.conf";
  writeConfig();
  writeConnectionString();
}

void DaemonTest::TearDown() {
  client_.reset();
  if (daemon_) {
    // Stopped, not killed by ~DaemonProcess: a clean exit is part of every test, and only then
    // does LeakSanitizer run in the sanitizer build, whose reports must fail the test.
    if (daemon_->running()) {
      EXPECT_EQ(daemon_->stop(), 0) << "iothubd did not exit cleanly on SIGTERM";
    }
    const std::string report = daemon_->sanitizerReport();
    EXPECT_TRUE(report.empty()) << "sanitizer report from iothubd:\n" << report;
    daemon_->printLogIf(HasFailure());
  }
  hub_.printBrokerLogIf(HasFailure());
}

void DaemonTest::writeConfig(const std::string& extra) {
  writeFile(configPath_,
            "[hub]\n"
            "authentication = connection-string\n"
            "port = " +
                std::to_string(hub_.port()) +
                "\n"
                "[connection]\n"
                "server_verification_cert = " +
                daemonDir_ +
                "/ca.pem\n"
                "[outbox]\n"
                "outbox_path = " +
                daemonDir_ +
                "/outbox.db\n"
                "[daemon]\n"
                "log_level = debug\n" +
                extra,
            0644);
}

void DaemonTest::writeConnectionString(const std::string& key) {
  auto user = serviceUser();
  writeFile(credentialsDir_ + "/connection-string",
            "HostName=" + hub_.hubHost() + ";DeviceId=" + kDevice +
                ";SharedAccessKey=" + (key.empty() ? deviceKey_ : key) + "\n",
            0600, static_cast<int>(user.uid), static_cast<int>(user.gid));
}

void DaemonTest::writeCredential(const std::string& name, const std::string& content) {
  auto user = serviceUser();
  writeFile(credentialsDir_ + "/" + name, content, 0600, static_cast<int>(user.uid),
            static_cast<int>(user.gid));
}

void DaemonTest::launchDaemon() {
  DaemonOptions options;
  options.configPath = configPath_;
  options.busAddress = bus_->address();
  options.credentialsDirectory = credentialsDir_;
  options.extraEnv = daemonEnv_;
  daemon_ = std::make_unique<DaemonProcess>(dir_.path(), options);
  daemon_->start();
}

void DaemonTest::startDaemon() {
  launchDaemon();
  ASSERT_TRUE(daemon_->waitReady()) << "iothubd did not report READY=1";
}

std::optional<int> DaemonTest::runUntilExit() {
  launchDaemon();
  return daemon_->waitExit();
}

void DaemonTest::awaitOnline() {
  (void)client().GetTwin();
  client().clearSignals();
}

std::unique_ptr<DeviceClient> DaemonTest::newClient() {
  return std::make_unique<DeviceClient>(bus_->address());
}

DeviceClient& DaemonTest::client() {
  if (!client_) {
    client_ = std::make_unique<DeviceClient>(bus_->address());
  }
  return *client_;
}

}  // namespace iothubd::testing
