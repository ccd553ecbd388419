// SPDX-License-Identifier: MIT
#pragma once

#include <memory>
#include <string>

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
};

[[nodiscard]] std::unique_ptr<DeviceObject> createDeviceObject(sdbus::IConnection& connection,
                                                               session::HubSession& session);

}  // namespace iothubd::dbusapi
