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

/// One signal as a client saw it.
struct SignalRecord {
  std::string name;
  std::vector<std::string> args;  ///< string and boolean arguments, in order ("true"/"false")
  std::vector<uint8_t> body;      ///< MessageReceived
  StringMap properties;           ///< MessageReceived
  StringMap systemProperties;     ///< MessageReceived
  std::map<std::string, sdbus::Variant> changed;  ///< PropertiesChanged
};

/// What a D-Bus client of iothubd sees: calls through the generated proxy, and every signal
/// recorded so that tests can wait for one (bounded, no sleeps).
class DeviceClient final
    : public sdbus::ProxyInterfaces<org::iothubd::Device1_proxy, sdbus::Properties_proxy> {
 public:
  explicit DeviceClient(const std::string& busAddress);
  ~DeviceClient();

  /// The first signal called `name` matching `predicate` that came after the last one a wait
  /// returned for that name.
  std::optional<SignalRecord> waitForSignal(
      const std::string& name, const std::function<bool(const SignalRecord&)>& predicate = {},
      std::chrono::milliseconds timeout = 10s);
  /// Waits until a ConnectionStateChanged(`connected`) arrives that was not yet consumed.
  bool waitForConnectionStateChanged(bool connected, std::chrono::milliseconds timeout = 10s);
  /// Waits until a PropertiesChanged carried Connected == `connected`.
  bool waitForConnectedProperty(bool connected, std::chrono::milliseconds timeout = 10s);
  /// Every signal called `name` received so far (consumed or not).
  std::vector<SignalRecord> signals(const std::string& name) const;
  /// The underlying proxy, for asynchronous calls the generated class does not offer.
  sdbus::IProxy& getProxyForTest() { return getProxy(); }
  /// This client's unique bus name.
  std::string uniqueName();
  /// Forgets every signal received so far (a test then waits only for what its action causes).
  void clearSignals();

 private:
  void record(SignalRecord r);
  void onMessageReceived(const std::vector<uint8_t>& body, const StringMap& properties,
                         const StringMap& systemProperties) override;
  void onMethodRequestReceived(const std::string& requestId, const std::string& methodName,
                               const std::string& payload) override;
  void onTwinDesiredPropertiesPatchReceived(const std::string& patch) override;
  void onConnectionStateChanged(const bool& connected) override;
  void onNewSasTokenRequired() override;
  void onBackgroundException(const std::string& errorName, const std::string& message) override;
  void onUploadProgress(const std::string& blobName, const uint64_t& done,
                        const uint64_t& total) override;
  void onMessagesDelivered(const std::vector<std::string>& ids) override;
  void onMessagesExpired(const std::vector<std::string>& ids) override;
  void onPropertiesChanged(const std::string& interfaceName,
                           const std::map<std::string, sdbus::Variant>& changed,
                           const std::vector<std::string>& invalidated) override;

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<SignalRecord> signals_;
  std::vector<bool> taken_;
  std::map<std::string, size_t> lastTaken_;  ///< per signal name, index of the last one returned
};

/// The D-Bus error name of a failed call, or "" if it succeeded.
std::string errorNameOf(const std::function<void()>& call, std::string* message = nullptr);

class DaemonTest : public ::testing::Test {
 protected:
  static constexpr const char* kDevice = "dev1";

  DaemonTest() = default;
  /// For fixtures that need extra emulator listeners (X.509, gateway, WebSockets).
  explicit DaemonTest(hubemu::HubEmulator::Options hubOptions) : hub_(std::move(hubOptions)) {}

  void SetUp() override;
  void TearDown() override;

  /// Extra lines are appended to the generated configuration (later values win in INI order,
  /// so a test may override a section's key by repeating the section).
  void writeConfig(const std::string& extra = "");
  /// Writes the connection string credential; by default the emulator's key for kDevice.
  void writeConnectionString(const std::string& key = "");
  /// Writes a secret file the daemon's user owns (mode 0600) into its credentials directory.
  void writeCredential(const std::string& name, const std::string& content);
  /// Starts iothubd and waits for READY=1.
  void startDaemon();
  /// Starts iothubd expecting it to fail at start-up; its exit status (nullopt on timeout).
  std::optional<int> runUntilExit();
  DeviceClient& client();
  /// Returns once the daemon is connected and subscribed: a twin GET is answered only after the
  /// broker processed the subscriptions sent before it on the same connection. Then clears the
  /// client's signal journal.
  void awaitOnline();
  /// Another client on its own connection (another app).
  std::unique_ptr<DeviceClient> newClient();

  /// Forks and execs iothubd with the generated configuration (no wait).
  void launchDaemon();

  TempDir dir_{"iothubd-it", 0711};
  hubemu::HubEmulator hub_;
  std::string deviceKey_;
  std::unique_ptr<PrivateBus> bus_;
  std::string daemonDir_;
  std::string configPath_;
  std::string credentialsDir_;
  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<DeviceClient> client_;
  /// More environment for the daemon (e.g. STATE_DIRECTORY), set before launchDaemon().
  std::map<std::string, std::string> daemonEnv_;
  /// More configuration files the private bus includes after our policy (other services'
  /// policies, a service directory), set before SetUp().
  std::vector<std::string> busIncludes_;
};

}  // namespace iothubd::testing
