// SPDX-License-Identifier: MIT
// From iothubd.conf to running components, one way for start and reload: load() reads files and
// secrets, compose() turns them into the options of every component, and apply() makes the
// components match a composition: at start by building each one, at a reload by deciding per
// component whether the change applies in place, needs that component rebuilt, or a reconnect,
// and saying which in the log.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "iothubd/blob/blob_uploader.hpp"
#include "iothubd/config/credentials.hpp"
#include "iothubd/config/settings.hpp"
#include "iothubd/core/log.hpp"
#include "iothubd/core/proxy.hpp"
#include "iothubd/core/result.hpp"
#include "iothubd/dbusapi/device_object.hpp"
#include "iothubd/http/curl_multi_client.hpp"
#include "iothubd/outbox/outbox.hpp"
#include "iothubd/provisioning/provisioning_client.hpp"
#include "iothubd/session/hub_session.hpp"

namespace iothubd::config {

/// What the composition takes from the process rather than from the files; main() gathers it.
struct Environment {
  std::string credentialsDirectory;  ///< $CREDENTIALS_DIRECTORY; empty outside systemd
  std::string stateDirectory = "/var/lib/iothubd";  ///< the first of $STATE_DIRECTORY
  std::string userAgent = "iothubd";                ///< DeviceClientType and HTTP User-Agent
};

/// Configuration and credentials as read at start or at a reload, validated.
struct Loaded {
  Settings settings;
  DeviceIdentity identity;
  core::ProxySettings proxy;
};

/// Reads the configuration files and the secrets they call for, and checks the TLS files they
/// name and the directories UploadFileFromPath may read (checkUploadDirectories), so that a
/// mistake is a configuration error now and not a connection failure later.
/// $CREDENTIALS_DIRECTORY is set once per service start, so a reload reads the same copies of
/// systemd credentials; files named in [credentials] are read afresh. Errors: Errc::Config, one
/// line starting "configuration: " or "credentials: " that names file, key and problem and never
/// contains a secret.
[[nodiscard]] core::Result<Loaded> load(const std::string& configPath, const Environment& env,
                                        std::uint64_t nowUnix);

/// File upload as composed. Absent for a module identity: modules cannot upload (protocol doc 8).
struct UploadOptions {
  blob::HubEndpoint endpoint;
  blob::UploaderOptions uploader;

  bool operator==(const UploadOptions&) const = default;
};

/// What the D-Bus object applies in place: its limits, the method-response timeout, whether the
/// link stays up while no app holds it, and where UploadFileFromPath may read (already checked
/// by load()).
struct BusOptions {
  dbusapi::BusLimits limits;
  std::chrono::seconds methodResponseTimeout{30};
  bool keepConnected = true;
  std::vector<std::string> uploadFromPathDirectories;

  bool operator==(const BusOptions&) const = default;
};

/// The options of every component, made from one configuration.
struct Composition {
  core::LogLevel logLevel = core::LogLevel::Info;
  session::SessionOptions session;
  http::CurlOptions https;  ///< file upload's HTTPS calls: the same trust and proxy as MQTT
  std::optional<UploadOptions> upload;
  outbox::OutboxOptions outbox;  ///< path resolved against the state directory
  BusOptions bus;
  /// authentication = dps: how to register with DPS. The session's hubHostname and deviceId (and
  /// the upload endpoint's) stay empty until assignHub() fills them from DPS's assignment.
  std::optional<provisioning::ProvisioningOptions> provisioning;
  std::string stateDirectory;  ///< where the DPS assignment is kept (AssignmentStore)

  bool operator==(const Composition&) const = default;
};

[[nodiscard]] Composition compose(const Loaded& loaded, const Environment& env);

/// Points a composition at the hub and device id DPS assigned: the session's and file upload's
/// (which keeps its https_port suffix).
void assignHub(Composition& composition, const std::string& hub, const std::string& deviceId);

/// The components a composition configures, in the order apply() visits them (later ones may
/// depend on earlier ones: file upload uses the HTTPS client and the session's identity).
enum class Component { LogLevel, Session, Https, Upload, Outbox, Bus };
[[nodiscard]] const char* componentName(Component component) noexcept;

/// What a new composition does to one component.
enum class Treatment {
  Unchanged,
  InPlace,    ///< the running component takes the new values
  Reconnect,  ///< the session takes them and reconnects (apps see no outage)
  Rebuild,    ///< a new component replaces the running one; work in progress finishes on the old
};

struct Decision {
  Component component;
  Treatment treatment;
  /// The settings that differ, named as in iothubd.conf ("hostname", "https_port"), or why
  /// ("HTTPS client rebuilt").
  std::vector<std::string> changed;
};

/// Pure: what changing from `running` to `next` does to each component, one decision per
/// component in apply() order.
[[nodiscard]] std::vector<Decision> plan(const Composition& running, const Composition& next);

/// The running components as apply() drives them; daemon/daemon.cpp implements it, tests fake
/// it. Each call makes one component match its options, creating it if it does not exist yet.
class Components {
 public:
  virtual ~Components() = default;
  virtual void setLogLevel(core::LogLevel level) = 0;
  /// Creates the session, or applies new options to it (reconnecting if the link depends on
  /// them).
  virtual void configureSession(const session::SessionOptions& options) = 0;
  /// A new HTTPS client for later requests. An error leaves the running one in place.
  [[nodiscard]] virtual core::Result<void> buildHttps(const http::CurlOptions& options) = 0;
  /// A new uploader on the current HTTPS client for the session's current identity, or none.
  virtual void buildUpload(const std::optional<UploadOptions>& options) = 0;
  /// Opens the outbox these options name. At start a failure still leaves the daemon without a
  /// durable outbox; at a reload an error leaves the running outbox in place.
  [[nodiscard]] virtual core::Result<void> buildOutbox(const outbox::OutboxOptions& options) = 0;
  virtual void configureBus(const BusOptions& options) = 0;
};

/// What apply() did.
struct Applied {
  bool reconnects = false;       ///< the session reconnects to apply the change
  bool identityChanged = false;  ///< hub, device, module, gateway or authentication changed
  /// Changes that could not be applied, one log-ready line each; the component they were for
  /// keeps running as before.
  std::vector<std::string> refused;
};

/// The one apply step, for start and reload alike. `running` is what the components run with:
/// empty at start, when every component is built from `next`; at a reload each component is
/// treated as plan() says and each decision is logged at notice ("reload: file upload: rebuilt
/// for device_id, hub host or https_port"), unchanged ones at debug. `running` is updated per
/// component as it is applied. Errors only at start (an HTTPS client that cannot be created); at
/// a reload a component that cannot be rebuilt keeps running as before, its old options stay in
/// `running` (so the next reload tries again), and the refusal is logged at warning and listed in
/// Applied::refused.
[[nodiscard]] core::Result<Applied> apply(std::optional<Composition>& running,
                                          const Composition& next, Components& components);

}  // namespace iothubd::config
