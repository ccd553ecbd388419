// SPDX-License-Identifier: MIT
// iothubctl's side of the bus: a system-bus connection, the org.iothubd.Device1 proxy generated
// from dbus/org.iothubd.Device1.xml, and what the bus driver knows about the daemon.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <sdbus-c++/sdbus-c++.h>

#include "format.hpp"
#include "org_iothubd_device1_proxy.h"

namespace iothubd::ctl {

using namespace std::chrono_literals;

inline constexpr const char* kBusName = "org.iothubd";
inline constexpr const char* kObjectPath = "/org/iothubd/Device";
inline constexpr const char* kInterface = "org.iothubd.Device1";

/// Bus timeouts (org.iothubd.Device1(5) lists each method's reply time): calls the daemon answers
/// at once; calls that wait for the hub, bounded in the daemon by operation_timeout (default
/// 60 s); uploads, bounded by upload_timeout (default 30 min). --timeout replaces the last two.
inline constexpr std::chrono::seconds kQuickCall = 10s;
inline constexpr std::chrono::seconds kHubCall = 90s;
inline constexpr std::chrono::seconds kUploadCall = 35min;

using StringMap = std::map<std::string, std::string>;

/// The generated proxy with its signals forwarded to whoever wants them. Signals arrive only
/// while a loop dispatches the connection (loop::EventLoop::attachBus).
class DeviceProxy final
    : public sdbus::ProxyInterfaces<org::iothubd::Device1_proxy, sdbus::Properties_proxy> {
 public:
  explicit DeviceProxy(sdbus::IConnection& connection);
  virtual ~DeviceProxy();  // sdbus-c++ bases have protected non-virtual ones
  DeviceProxy(const DeviceProxy&) = delete;
  DeviceProxy& operator=(const DeviceProxy&) = delete;

  std::function<void(const std::vector<uint8_t>&, const StringMap&, const StringMap&)> onMessage;
  std::function<void(const std::string&, const std::string&, const std::string&)> onMethodRequest;
  std::function<void(const std::string&)> onDesiredPatch;
  std::function<void(const std::string&, std::uint64_t, std::uint64_t)> onProgress;

  /// For the calls made asynchronously (uploads, method responses): the generated proxy only
  /// has blocking calls.
  sdbus::IProxy& raw() { return getProxy(); }

 private:
  void onMessageReceived(const std::vector<uint8_t>& body, const StringMap& properties,
                         const StringMap& systemProperties) override;
  void onMethodRequestReceived(const std::string& requestId, const std::string& methodName,
                               const std::string& payload) override;
  void onTwinDesiredPropertiesPatchReceived(const std::string& patch) override;
  void onConnectionStateChanged(const bool&) override {}
  void onNewSasTokenRequired() override {}
  void onBackgroundException(const std::string&, const std::string&) override {}
  void onUploadProgress(const std::string& blobName, const uint64_t& done,
                        const uint64_t& total) override;
  void onMessagesDelivered(const std::vector<std::string>&) override {}
  void onMessagesExpired(const std::vector<std::string>&) override {}
  void onPropertiesChanged(const std::string&, const std::map<std::string, sdbus::Variant>&,
                           const std::vector<std::string>&) override {}
};

/// One connection to the system bus ($DBUS_SYSTEM_BUS_ADDRESS when set) with the device proxy.
/// Errors are sdbus::Error exceptions, turned into messages and exit codes by the caller.
class BusClient {
 public:
  BusClient();
  ~BusClient();
  BusClient(const BusClient&) = delete;
  BusClient& operator=(const BusClient&) = delete;

  sdbus::IConnection& connection() { return *connection_; }
  DeviceProxy& device() { return *device_; }

  /// Runs `call` (a blocking proxy call) with `timeout` as the bus timeout.
  template <class F>
  auto withTimeout(std::chrono::seconds timeout, F&& call) {
    connection_->setMethodCallTimeout(timeout);
    return call(*device_);
  }

  /// True if org.iothubd has an owner (iothubd runs); asks the bus, never activates.
  [[nodiscard]] bool daemonRunning();
  /// The process id behind a bus name, if the bus tells.
  [[nodiscard]] std::optional<std::uint32_t> pidOf(const std::string& busName);
  /// Every property of org.iothubd.Device1.
  [[nodiscard]] std::map<std::string, PropertyValue> properties();

 private:
  std::unique_ptr<sdbus::IConnection> connection_;
  std::unique_ptr<sdbus::IProxy> driver_;  ///< org.freedesktop.DBus
  std::unique_ptr<DeviceProxy> device_;
};

/// /proc/PID/cmdline with spaces, at most about 100 bytes; "" if unreadable.
[[nodiscard]] std::string commandLineOf(std::uint32_t pid);
/// How long the process has been running, from /proc; nullopt if unreadable.
[[nodiscard]] std::optional<std::chrono::seconds> uptimeOf(std::uint32_t pid);

}  // namespace iothubd::ctl
