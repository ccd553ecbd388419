// SPDX-License-Identifier: MIT
// Private to src/http: libcurl is loaded on first use (curl_loader.cpp), not linked.
#pragma once

#include <optional>
#include <string>

namespace iothubd::http {

/// Why libcurl could not be loaded (dlerror()), once something tried to use it; nullopt if it
/// was loaded or nothing needed it yet.
[[nodiscard]] std::optional<std::string> curlLoadError();

}  // namespace iothubd::http
