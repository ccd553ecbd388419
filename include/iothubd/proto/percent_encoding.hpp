// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <string_view>

#include "iothubd/core/result.hpp"

namespace iothubd::proto {

/// The RFC 3986 unreserved set `A-Z a-z 0-9 - . _ ~`, the only bytes enc() leaves alone.
[[nodiscard]] bool isUnreserved(unsigned char c) noexcept;

/// enc(x) of the protocol doc ("Legend"): every byte except `A-Z a-z 0-9 - . _ ~` becomes `%XX`
/// with upper-case hex; what the Python SDK does with `urllib.parse.quote(x, safe="")`. Used for
/// every topic property key and value and for the SAS token fields. Never form encoding: a space
/// is `%20`, not `+`. Operates on bytes, so UTF-8 text is encoded byte by byte.
[[nodiscard]] std::string percentEncode(std::string_view in);
/// The same, appended to `out` (builds a property bag without a string per key and value).
void appendPercentEncoded(std::string& out, std::string_view in);

/// Inverse of percentEncode, accepting lower- and upper-case hex. `+` stays `+` (protocol doc
/// section 5: "never turn `+` into space"). Bytes that need no decoding are copied as they are.
/// Errors: Errc::InvalidArgument for a `%` not followed by two hex digits; the message gives the
/// offset, never the text (it may be part of a signature).
[[nodiscard]] core::Result<std::string> percentDecode(std::string_view in);

}  // namespace iothubd::proto
