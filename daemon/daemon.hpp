// SPDX-License-Identifier: MIT
// The daemon's components and their wiring: what config::apply() builds at start and changes at
// a reload, and the D-Bus object that serves them. main() owns the loop and the bus connection.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "iothubd/blob/blob_uploader.hpp"
#include "iothubd/config/composition.hpp"
#include "iothubd/core/result.hpp"
#include "iothubd/dbusapi/device_object.hpp"
#include "iothubd/delivery/telemetry_pipeline.hpp"
#include "iothubd/hostwatch/clock_watch.hpp"
#include "iothubd/hostwatch/network_watch.hpp"
#include "iothubd/http/http_client.hpp"
#include "iothubd/loop/event_loop.hpp"
#include "iothubd/mqtt/mqtt_transport.hpp"
#include "iothubd/outbox/outbox.hpp"
#include "iothubd/session/hub_session.hpp"
#include "provisioner.hpp"

namespace sdbus {
class IConnection;
}

namespace iothubd::daemon {

class StatusReporter;

class Daemon final : private config::Components {
 public:
  explicit Daemon(loop::EventLoop& loop);
  ~Daemon() override;
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  /// Builds every component from `composition` and serves them on `bus` as org.iothubd.Device1.
  /// Errors: a component that cannot be created (the daemon cannot run).
  [[nodiscard]] core::Result<void> start(const config::Composition& composition,
                                         sdbus::IConnection& bus);
  /// Applies a reloaded configuration (config::apply) and says in the log what it did.
  void reload(const config::Composition& next, const std::string& configPath);
  /// Callers still waiting get OperationCancelled (queued messages stay stored); the hub gets a
  /// DISCONNECT; `done` runs once it went out.
  void shutdown(std::function<void()> done);
  /// Opens the connection (the daemon keeps it up from now on), once the host said whether its
  /// clock is synchronised (hostwatch::ClockWatch).
  void connect();
  /// Destroys the D-Bus object (before the connection it was created on goes).
  void stopServing();

  /// "connected to contoso.azure-devices.net as dev1", for STATUS= and the start-up line.
  [[nodiscard]] std::string statusText() const;
  [[nodiscard]] const session::HubSession& session() const { return *session_; }
  /// NotConfigured unless authentication = dps.
  [[nodiscard]] ProvisioningState provisioningState() const;

 private:
  /// An uploader with the HTTPS client it runs on; a replaced one is kept until it is idle.
  struct Uploads {
    std::shared_ptr<http::HttpClient> https;
    std::unique_ptr<blob::BlobUploader> uploader;
  };

  // config::Components
  void setLogLevel(core::LogLevel level) override;
  void configureSession(const session::SessionOptions& options) override;
  core::Result<void> buildHttps(const http::CurlOptions& options) override;
  void buildUpload(const std::optional<config::UploadOptions>& options) override;
  core::Result<void> buildOutbox(const outbox::OutboxOptions& options) override;
  void configureBus(const config::BusOptions& options) override;

  [[nodiscard]] core::Result<outbox::Outbox::Opened> openOutbox(
      const outbox::OutboxOptions& options);
  /// authentication = dps: creates, reconfigures or removes the provisioner for `composed_`
  /// and takes its stored assignment; `reregister` when a registration must start now (the
  /// [provisioning] settings changed at a reload and nothing is stored for the new ones).
  void configureProvisioning(bool& reregister);
  /// `composed_` pointed at the assigned hub; without an assignment yet, one that does not
  /// connect on its own (auto_connect off) until DPS assigned a hub.
  [[nodiscard]] config::Composition effective() const;
  void onAssigned(const provisioning::StoredAssignment& assignment);
  void onProvisioningChanged();
  /// Starts the session, or the DPS registration that comes first.
  void connectNow();
  /// Tells the session what the host says about the clock, from now on.
  void watchClock(sdbus::IConnection& bus);
  /// Issue 14: reconnect at once when the network manager says the network is back.
  void watchNetwork(sdbus::IConnection& bus);
  void retire(Uploads uploads);
  void reapRetired();

  loop::EventLoop& loop_;
  std::optional<config::Composition> running_;
  config::Composition composed_;  ///< as composed from the configuration, before assignHub()
  std::optional<provisioning::StoredAssignment> assignment_;
  std::unique_ptr<Provisioner> provisioner_;
  std::unique_ptr<mqtt::MqttTransport> transport_;
  std::unique_ptr<session::HubSession> session_;
  std::shared_ptr<http::HttpClient> https_;
  Uploads uploads_;
  std::vector<Uploads> retired_;
  std::unique_ptr<core::Timer> reapTimer_;
  std::unique_ptr<delivery::TelemetryPipeline> telemetry_;
  std::unique_ptr<dbusapi::DeviceObject> object_;
  std::unique_ptr<StatusReporter> status_;
  std::unique_ptr<hostwatch::ClockWatch> clockWatch_;
  std::unique_ptr<hostwatch::NetworkWatch> network_;
  config::BusOptions bus_;
};

}  // namespace iothubd::daemon
