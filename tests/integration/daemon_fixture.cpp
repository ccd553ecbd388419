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

DeviceClient::~DeviceClient() { unregisterProxy(); }

void DeviceClient::onConnectionStateChanged(const bool& connected) {
  std::lock_guard lock(mutex_);
  stateSignals_.push_back(connected);
  cv_.notify_all();
}

void DeviceClient::onPropertiesChanged(const std::string& interfaceName,
                                       const std::map<std::string, sdbus::Variant>& changed,
                                       const std::vector<std::string>&) {
  if (interfaceName != "org.iothubd.Device1") {
    return;
  }
  std::lock_guard lock(mutex_);
  if (auto it = changed.find("Connected"); it != changed.end()) {
    connectedChanges_.push_back(it->second.get<bool>());
  }
  cv_.notify_all();
}

bool DeviceClient::waitFor(const std::function<bool()>& predicate,
                           std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  return cv_.wait_for(lock, timeout, predicate);
}

bool DeviceClient::waitForConnectionStateChanged(bool connected, std::chrono::milliseconds timeout) {
  return waitFor(
      [&] {
        while (stateSignalsTaken_ < stateSignals_.size()) {
          if (stateSignals_[stateSignalsTaken_++] == connected) {
            return true;
          }
        }
        return false;
      },
      timeout);
}

bool DeviceClient::waitForConnectedProperty(bool connected, std::chrono::milliseconds timeout) {
  return waitFor(
      [&] {
        while (connectedChangesTaken_ < connectedChanges_.size()) {
          if (connectedChanges_[connectedChangesTaken_++] == connected) {
            return true;
          }
        }
        return false;
      },
      timeout);
}

std::vector<bool> DeviceClient::connectionStateSignals() const {
  std::lock_guard lock(mutex_);
  return stateSignals_;
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
  bus_ = std::make_unique<PrivateBus>(dir_ / "bus", policyFilePath());

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
            "port = " + std::to_string(hub_.port()) + "\n"
            "[connection]\n"
            "server_verification_cert = " + daemonDir_ + "/ca.pem\n"
            "[daemon]\n"
            "log_level = debug\n" + extra,
            0644);
}

void DaemonTest::writeConnectionString(const std::string& key) {
  auto user = serviceUser();
  writeFile(credentialsDir_ + "/connection-string",
            "HostName=" + hub_.hubHost() + ";DeviceId=" + kDevice +
                ";SharedAccessKey=" + (key.empty() ? deviceKey_ : key) + "\n",
            0600, static_cast<int>(user.uid), static_cast<int>(user.gid));
}

void DaemonTest::startDaemon() {
  DaemonOptions options;
  options.configPath = configPath_;
  options.busAddress = bus_->address();
  options.credentialsDirectory = credentialsDir_;
  daemon_ = std::make_unique<DaemonProcess>(dir_.path(), options);
  daemon_->start();
  ASSERT_TRUE(daemon_->waitReady()) << "iothubd did not report READY=1";
}

DeviceClient& DaemonTest::client() {
  if (!client_) {
    client_ = std::make_unique<DeviceClient>(bus_->address());
  }
  return *client_;
}

}  // namespace iothubd::testing
