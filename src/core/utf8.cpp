// SPDX-License-Identifier: MIT
#include "iothubd/core/utf8.hpp"

#include <algorithm>
#include <cstdint>

namespace iothubd::core {
namespace {

/// Length of the valid character at the start of `s`, or 0. Follows systemd's
/// utf8_encoded_valid_unichar and unichar_is_valid, which sd-bus applies to every string.
std::size_t validCharacterLength(std::string_view s) {
  const auto lead = static_cast<unsigned char>(s[0]);
  if (lead != 0 && lead < 0x80) {
    return 1;
  }
  std::size_t length = 0;
  std::uint32_t cp = 0;
  if ((lead & 0xE0) == 0xC0) {
    length = 2;
    cp = lead & 0x1F;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3;
    cp = lead & 0x0F;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4;
    cp = lead & 0x07;
  } else {
    return 0;  // NUL, a continuation byte or an invalid lead byte
  }
  if (s.size() < length) {
    return 0;
  }
  for (std::size_t i = 1; i < length; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if ((c & 0xC0) != 0x80) {
      return 0;
    }
    cp = (cp << 6) | (c & 0x3F);
  }
  static constexpr std::uint32_t kSmallest[] = {0, 0, 0x80, 0x800, 0x10000};
  const bool overlong = cp < kSmallest[length];
  const bool surrogate = cp >= 0xD800 && cp <= 0xDFFF;
  const bool nonCharacter = (cp >= 0xFDD0 && cp <= 0xFDEF) || (cp & 0xFFFE) == 0xFFFE;
  if (overlong || surrogate || nonCharacter || cp > 0x10FFFF) {
    return 0;
  }
  return length;
}

}  // namespace

std::string validUtf8(std::string_view text, std::size_t maxBytes) {
  std::string out;
  out.reserve(std::min(text.size(), maxBytes) + 3);
  std::size_t i = 0;
  while (i < text.size()) {
    const std::size_t length = validCharacterLength(text.substr(i));
    if (out.size() + std::max<std::size_t>(length, 1) > maxBytes) {
      out += "...";
      break;
    }
    if (length == 0) {
      out.push_back('?');
      ++i;
    } else {
      out.append(text.substr(i, length));
      i += length;
    }
  }
  return out;
}

}  // namespace iothubd::core
