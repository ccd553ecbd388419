// SPDX-License-Identifier: MIT
// Private to proto: the one careful JSON reader every parser of text from the network, an app or
// a file goes through (defined in twin.cpp, where it grew up).
#pragma once

#include <rapidjson/document.h>

#include <string_view>

#include "iothubd/core/result.hpp"

namespace iothubd::proto::detail {

/// Parses `json` into `doc`: one value, no trailing text, valid UTF-8 without surrogates or NUL
/// bytes, nested at most kMaxJsonDepth (twin.hpp) levels, numbers converted exactly (RapidJSON
/// 1.1.0's own strtod misbehaves on hostile numbers). Errors carry `code` (Errc::LimitExceeded
/// instead for too deep input when `code` is InvalidArgument): "invalid JSON at offset N:
/// reason", "JSON nested deeper than 32 levels at offset N".
[[nodiscard]] core::Result<void> parseJson(std::string_view json, rapidjson::Document& doc,
                                           core::Errc code);

/// "null", "boolean", "object", "array", "string" or "number", for messages.
[[nodiscard]] const char* typeName(const rapidjson::Value& value);

}  // namespace iothubd::proto::detail
