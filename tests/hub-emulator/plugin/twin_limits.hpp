// SPDX-License-Identifier: MIT
// The hub's rules for tags, desired and reported properties (Microsoft Learn, "Understand and use
// device twins in IoT Hub": "Tags and properties format" and "Device twin size"), checked by the
// emulator on every reported patch. Written independently of src/proto: the emulator is the
// oracle the daemon's own checks are tested against.
#pragma once

#include <rapidjson/document.h>

#include <cstdint>
#include <optional>
#include <string>

namespace iothubd::hubemu {

inline constexpr size_t kTwinKeyMaxBytes = 1024;            // "up to 1 KB in length"
inline constexpr size_t kTwinStringMaxBytes = 4096;         // "maximum length of 4 KB"
inline constexpr int kTwinMaxDepth = 10;                    // objects below the section
inline constexpr int64_t kTwinSectionMaxBytes = 32 * 1024;  // properties/reported, /desired
inline constexpr int64_t kTwinIntegerMax = 4503599627370495;
inline constexpr int64_t kTwinIntegerMin = -4503599627370496;

// Why `patch` (an object) breaks the format rules (keys, values, depth), or nullopt.
std::optional<std::string> twinFormatViolation(const rapidjson::Value& patch);

// The size the hub counts for a section: per property its key plus its value (strings as UTF-8
// without control characters, numbers 8, booleans 4, objects and arrays the sum of what they
// hold); members whose names start with '$' ($version, $metadata) do not count.
int64_t twinSize(const rapidjson::Value& section);

}  // namespace iothubd::hubemu
