// SPDX-License-Identifier: MIT
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace iothubd::core {

/// `text` as valid UTF-8 of at most about `maxBytes` bytes, for messages that quote what a
/// peer sent: every byte that does not start a valid character (a sequence cut in the middle,
/// an overlong form, a surrogate, a noncharacter, a code point beyond U+10FFFF, NUL) becomes
/// '?', and a longer text is cut at a character boundary and ends in "...". sd-bus refuses to
/// build an error reply or a signal whose string is not valid UTF-8 in its sense (systemd
/// utf8_is_valid), so without this an error quoting a cut name would leave its caller unanswered.
[[nodiscard]] std::string validUtf8(std::string_view text, std::size_t maxBytes = 4096);

}  // namespace iothubd::core
