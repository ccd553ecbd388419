// SPDX-License-Identifier: MIT
#pragma once

#include <memory>

#include "iothubd/loop/event_loop.hpp"
#include "iothubd/mqtt/mqtt_transport.hpp"

namespace iothubd::mqtt {

/// MqttTransport over libmosquitto 2.0, driven by the daemon's sd-event loop: the socket is an
/// IoWatch, keep-alive runs from a timer, and no libmosquitto thread is started.
[[nodiscard]] core::Result<std::unique_ptr<MqttTransport>> createMosquittoTransport(
    loop::EventLoop& loop);

}  // namespace iothubd::mqtt
