// SPDX-License-Identifier: MIT
// Integration fixture: one hub emulator, one private system bus with our policy, and the real
// iothubd process (as user iothubd) configured against them; plus a D-Bus client built from the
// proxy generated out of dbus/org.iothubd.Device1.xml.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <sdbus-c++/sdbus-c++.h>

#include "daemon_process.hpp"
#include "hub_emulator.hpp"
#include "org_iothubd_device1_proxy.h"
#include "private_bus.hpp"
#include "temp_dir.hpp"

namespace iothubd::testing {

using namespace std::chrono_literals;
using StringMap = std::map<std::string, std::string>;

/// What a D-Bus client of iothubd sees: calls through the generated proxy, and every signal
/// recorded so that tests can wait for one (bounded, no sleeps).
class DeviceClient final
    : public sdbus::ProxyInterfaces<org::iothubd::Device1_proxy, sdbus::Properties_proxy> {
 public:
  explicit DeviceClient(const std::string& busAddress);
  ~DeviceClient();

  /// Waits until a ConnectionStateChanged(`connected`) arrives that was not yet consumed.
  bool waitForConnectionStateChanged(bool connected, std::chrono::milliseconds timeout = 10s);
  /// Waits until a PropertiesChanged carried Connected == `connected`.
  bool waitForConnectedProperty(bool connected, std::chrono::milliseconds timeout = 10s);
  std::vector<bool> connectionStateSignals() const;

 private:
  void onConnectionStateChanged(const bool& connected) override;
  void onPropertiesChanged(const std::string& interfaceName,
                           const std::map<std::string, sdbus::Variant>& changed,
                           const std::vector<std::string>& invalidated) override;
  bool waitFor(const std::function<bool()>& predicate, std::chrono::milliseconds timeout);

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<bool> stateSignals_;
  size_t stateSignalsTaken_ = 0;
  std::vector<bool> connectedChanges_;
  size_t connectedChangesTaken_ = 0;
};

/// The D-Bus error name of a failed call, or "" if it succeeded.
std::string errorNameOf(const std::function<void()>& call, std::string* message = nullptr);

class DaemonTest : public ::testing::Test {
 protected:
  static constexpr const char* kDevice = "dev1";

  void SetUp() override;
  void TearDown() override;

  /// Extra lines are appended to the generated configuration (later values win in INI order,
  /// so a test may override a section's key by repeating the section).
  void writeConfig(const std::string& extra = "");
  /// Writes the connection string credential; by default the emulator's key for kDevice.
  void writeConnectionString(const std::string& key = "");
  /// Starts iothubd and waits for READY=1.
  void startDaemon();
  DeviceClient& client();

  TempDir dir_{"iothubd-it", 0711};
  hubemu::HubEmulator hub_;
  std::string deviceKey_;
  std::unique_ptr<PrivateBus> bus_;
  std::string daemonDir_;
  std::string configPath_;
  std::string credentialsDir_;
  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<DeviceClient> client_;
};

}  // namespace iothubd::testing
