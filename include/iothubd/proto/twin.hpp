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

/// Largest reported-properties patch accepted from an app. The hub keeps at most 32 KB of
/// reported properties (counted without JSON syntax), so a larger text can only be refused by it
/// after waiting in the twin queue.
inline constexpr std::size_t kMaxReportedPatchBytes = 64 * 1024;
/// Largest direct-method response payload: the hub's limit (protocol doc section 6, 128 KB).
inline constexpr std::size_t kMaxJsonPayloadBytes = 128 * 1024;

/// Checks a reported-properties patch before it is sent (protocol doc section 7: a JSON merge
/// patch, so it must be an object). Text must be valid UTF-8 JSON, one value, no NUL bytes.
/// Errors: Errc::MessageTooLarge beyond kMaxReportedPatchBytes; Errc::LimitExceeded "JSON nested
/// deeper than 32 levels at offset N"; Errc::InvalidArgument "invalid JSON at offset N: <reason>",
/// "patch must be a JSON object, got array".
[[nodiscard]] core::Result<void> validateReportedPatch(std::string_view json);

/// Checks a method response payload: empty means "no payload" and is fine; anything else must be
/// one valid JSON value of any type, within kMaxJsonDepth (protocol doc section 6).
/// Errors: Errc::MessageTooLarge beyond kMaxJsonPayloadBytes; Errc::LimitExceeded and
/// Errc::InvalidArgument as validateReportedPatch.
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
