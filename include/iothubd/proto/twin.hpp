// SPDX-License-Identifier: MIT
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "iothubd/core/result.hpp"

namespace iothubd::proto {

/// Deepest nesting accepted in any JSON we parse (an object or array counts one level; a scalar
/// root is depth 0). Bounds the parser's work and memory for hostile input.
inline constexpr unsigned kMaxJsonDepth = 32;

/// Largest reported-properties patch text accepted from an app: the hub takes at most 256 KB in
/// one MQTT message. The hub's own limits on the content (below) are far lower; this bounds the
/// parser's work only.
inline constexpr std::size_t kMaxReportedPatchBytes = 256 * 1024;
/// Largest direct-method response payload: the hub's limit (protocol doc section 6, 128 KB).
inline constexpr std::size_t kMaxJsonPayloadBytes = 128 * 1024;

/// The hub's rules for tags, desired and reported properties (Microsoft Learn, "Understand and
/// use device twins in IoT Hub": "Tags and properties format", "Device twin size"). A patch
/// breaking one is answered 400 by the hub after its turn in the twin queue; iothubd refuses it
/// before anything is sent.
inline constexpr std::size_t kTwinKeyMaxBytes = 1024;     ///< "up to 1 KB in length"
inline constexpr std::size_t kTwinStringMaxBytes = 4096;  ///< "maximum length of 4 KB"
inline constexpr unsigned kTwinMaxDepth = 10;  ///< levels of objects and arrays below the section
/// Per section, counted the hub's way: each property's key plus its value, strings in UTF-8
/// without control characters, numbers 8, booleans 4, objects and arrays what they hold.
inline constexpr std::size_t kTwinSectionMaxBytes = 32 * 1024;
inline constexpr std::int64_t kTwinIntegerMax = 4503599627370495;   ///< 2^52 - 1
inline constexpr std::int64_t kTwinIntegerMin = -4503599627370496;  ///< -2^52

/// Checks a reported-properties patch before it is sent (protocol doc section 7: a JSON merge
/// patch, so it must be an object) against JSON itself and the hub's twin rules. Text must be
/// valid UTF-8 JSON, one value, no NUL bytes. Every error names the rule (and where in the patch,
/// as a path like /net/rssi):
/// - Errc::MessageTooLarge: the text beyond kMaxReportedPatchBytes; a key beyond 1 KB; a string
///   beyond 4 KB; the patch counting more than 32 KB as the hub counts twin size;
/// - Errc::InvalidArgument: invalid JSON ("invalid JSON at offset N: <reason>"), not an object;
///   a key with '.', '$', a space or a control character; objects or arrays nested deeper than
///   10 levels; an integer outside ±2^52;
/// - Errc::LimitExceeded: "JSON nested deeper than 32 levels at offset N" (the parser's bound).
/// A patch may pass and still be refused by the hub when the merged section outgrows 32 KB.
[[nodiscard]] core::Result<void> validateReportedPatch(std::string_view json);

/// Checks a method response payload: empty means "no payload" and is fine; anything else must be
/// one valid JSON value of any type, within kMaxJsonDepth and the hub's 128 KB (protocol doc
/// section 6). Errors: Errc::MessageTooLarge beyond kMaxJsonPayloadBytes; Errc::LimitExceeded
/// and Errc::InvalidArgument for JSON as validateReportedPatch.
[[nodiscard]] core::Result<void> validateJsonPayload(std::string_view json);

/// `desired.$version` of a twin GET result `{"desired":{...,"$version":N},"reported":{...}}`.
/// Errors: Errc::Protocol (the text comes from the hub) for invalid JSON, a missing `desired`
/// object or `$version`, or a `$version` that is not a non-negative integer.
[[nodiscard]] core::Result<std::uint64_t> desiredVersionOfTwin(std::string_view twinJson);

/// `$version` of a desired-properties patch. Errors: Errc::Protocol as desiredVersionOfTwin.
[[nodiscard]] core::Result<std::uint64_t> versionOfDesiredPatch(std::string_view patchJson);

/// The `desired` object of a twin GET result, re-serialized as compact JSON (including its
/// `$version`), to deliver as if it were a patch ([py] ensure_desired_properties, section 7).
/// Errors: Errc::Protocol as desiredVersionOfTwin.
[[nodiscard]] core::Result<std::string> desiredSectionOfTwin(std::string_view twinJson);

}  // namespace iothubd::proto
