// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <memory>
#include <string>

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
class DeviceObject {
 public:
  virtual ~DeviceObject() = default;
  /// Configuration reload: the new method_response_timeout applies to later requests.
  virtual void setMethodResponseTimeout(std::chrono::seconds timeout) = 0;
  /// Configuration reload: emits PropertiesChanged for the identity properties.
  virtual void identityChanged() = 0;
};

/// What the object serves the bus with.
struct DeviceServices {
  session::HubSession& session;
  core::Scheduler& scheduler;  ///< runs the method-response timeouts
  std::chrono::seconds methodResponseTimeout;
  delivery::TelemetryPipeline& telemetry;
  blob::BlobUploader* uploads = nullptr;  ///< null: file upload not available (module identity)
};

[[nodiscard]] std::unique_ptr<DeviceObject> createDeviceObject(sdbus::IConnection& connection,
                                                               DeviceServices services);

}  // namespace iothubd::dbusapi
