// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <string_view>

#include "iothubd/core/result.hpp"

namespace iothubd::proto {

/// Base64 with the standard alphabet (RFC 4648 section 4) and `=` padding, no line breaks.
[[nodiscard]] std::string base64Encode(std::string_view bytes);

/// Strict decoding of what base64Encode produces: the length must be a multiple of 4, only the
/// standard alphabet, `=` only as the last one or two characters, no whitespace, and the unused
/// bits before the padding must be zero (so every accepted text is the canonical encoding of its
/// bytes). The empty text decodes to the empty string.
/// Errors: Errc::InvalidArgument naming the problem and its offset, never the text itself (the
/// caller may be decoding a device key).
[[nodiscard]] core::Result<std::string> base64Decode(std::string_view text);

}  // namespace iothubd::proto
