// SPDX-License-Identifier: MIT
#pragma once

#include <sdbus-c++/Error.h>

#include "iothubd/core/result.hpp"

namespace iothubd::dbusapi {

/// The one place where an Errc becomes a D-Bus error name (architecture doc 6.5).
[[nodiscard]] sdbus::Error toDbusError(const core::Error& error);

}  // namespace iothubd::dbusapi
