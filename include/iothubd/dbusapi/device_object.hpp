// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "iothubd/blob/blob_uploader.hpp"
#include "iothubd/core/scheduler.hpp"
#include "iothubd/delivery/telemetry_pipeline.hpp"
#include "iothubd/session/hub_session.hpp"

namespace sdbus {
class IConnection;
}

namespace iothubd::dbusapi {

inline constexpr const char* kBusName = "org.iothubd";
inline constexpr const char* kObjectPath = "/org/iothubd/Device";

/// The org.iothubd.Device1 object: turns D-Bus calls into HubSession operations and session
/// events into signals and PropertiesChanged. Loop thread only. Must be destroyed before the
/// connection it was created on.
/// Bounds on what bus peers can make the object hold ([limits] in iothubd.conf). A peer is a
/// bus connection (unique name): an app with several connections has a quota on each.
struct BusLimits {
  /// Calls of one peer dispatched and not yet answered; beyond it Errc::LimitExceeded.
  std::size_t maxPendingCallsPerApp = 256;
  /// RegisterMethodHandler names one peer holds; beyond it Errc::LimitExceeded.
  std::size_t maxMethodClaimsPerApp = 64;
  /// Direct-method requests delivered and not yet answered, all peers together; the hub's
  /// request beyond it is answered 503 at once.
  std::size_t maxPendingMethodRequests = 256;

  bool operator==(const BusLimits&) const = default;
};

/// authentication = dps: the ProvisioningState property (not-configured, registering,
/// assigned, failed) and why the last registration failed or the hub refused the device (what
/// LastError shows while it is not empty and the device is not assigned).
struct ProvisioningStatus {
  std::string state = "not-configured";
  core::Error error;
};

class DeviceObject {
 public:
  virtual ~DeviceObject() = default;
  /// Configuration reload: the new method_response_timeout applies to later requests.
  virtual void setMethodResponseTimeout(std::chrono::seconds timeout) = 0;
  /// Configuration reload: new limits apply to later calls, claims and requests; what is held
  /// already stays.
  virtual void setLimits(const BusLimits& limits) = 0;
  /// Configuration reload: emits PropertiesChanged for the identity properties.
  virtual void identityChanged() = 0;
  /// Configuration reload ([connection] keep_connected): on, the link is (re)opened and kept;
  /// off, it closes at the next Disconnect or departure that leaves no app holding it.
  virtual void setKeepConnected(bool keep) = 0;
  /// Configuration reload ([file_upload] upload_from_path_directories, already checked by
  /// config::checkUploadDirectories()): applies to later UploadFileFromPath calls.
  virtual void setUploadDirectories(std::vector<std::string> directories) = 0;
  /// Configuration reload: later file-upload calls go to this uploader (null: file upload not
  /// available). Uploads already running finish on the one they started with, which the caller
  /// keeps alive until it is idle.
  virtual void setUploader(blob::BlobUploader* uploads) = 0;
  /// Emits PropertiesChanged for ProvisioningState and LastError when they changed.
  virtual void setProvisioning(ProvisioningStatus status) = 0;
  /// A failure no call was waiting for (BackgroundException), from outside the session.
  virtual void reportBackgroundError(const core::Error& error) = 0;
};

/// What the object serves the bus with.
struct DeviceServices {
  session::HubSession& session;
  core::Scheduler& scheduler;  ///< runs the method-response timeouts
  std::chrono::seconds methodResponseTimeout;
  delivery::TelemetryPipeline& telemetry;
  blob::BlobUploader* uploads = nullptr;  ///< null: file upload not available (module identity)
  BusLimits limits;
  /// [connection] keep_connected: the link stays up while no app holds it (Connect).
  bool keepConnected = true;
  /// [file_upload] upload_from_path_directories, checked: empty refuses UploadFileFromPath.
  std::vector<std::string> uploadFromPathDirectories;
  /// Reprovision(), after the caller was found to be root or in iothub-admin; null when
  /// authentication is not dps (NotSupported).
  std::function<core::Result<void>()> reprovision;
};

[[nodiscard]] std::unique_ptr<DeviceObject> createDeviceObject(sdbus::IConnection& connection,
                                                               DeviceServices services);

}  // namespace iothubd::dbusapi
