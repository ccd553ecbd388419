// SPDX-License-Identifier: MIT
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include <sdbus-c++/Error.h>

#include "iothubd/core/result.hpp"

namespace iothubd::dbusapi {

/// The longest message an error reply of the daemon carries.
inline constexpr std::size_t kMaxErrorMessageBytes = 2048;

/// `message` cut to kMaxErrorMessageBytes and made valid UTF-8: what every error reply carries.
[[nodiscard]] std::string boundedErrorMessage(std::string_view message);

/// The one place where an Errc becomes a D-Bus error name (architecture doc 6.5).
[[nodiscard]] sdbus::Error toDbusError(const core::Error& error);

}  // namespace iothubd::dbusapi
