// SPDX-License-Identifier: MIT
// Private to proto: how an unrecognized key name may appear in an error message.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace iothubd::proto::detail {

/// Longest unknown key name that is quoted back in a message.
inline constexpr std::size_t kMaxShownKeyNameLength = 32;

/// Whether an unrecognized key may be quoted in an error message. A "key" is sometimes a
/// misplaced secret, e.g. a pasted Base64 device key whose padding `=` made it look like
/// `name=value`. Real key names are short words, so only names of at most 32 letters, `_`, `-`,
/// `.` and spaces are shown; anything with digits, `+` or `/` could be Base64 and is not.
[[nodiscard]] inline bool isShowableKeyName(std::string_view name) {
  if (name.empty() || name.size() > kMaxShownKeyNameLength) {
    return false;
  }
  for (char c : name) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || c == '-' ||
                    c == '.' || c == ' ';
    if (!ok) {
      return false;
    }
  }
  return true;
}

/// "'name'" when showable, else a placeholder that says why it is not shown.
[[nodiscard]] inline std::string quotedKeyName(std::string_view name) {
  if (isShowableKeyName(name)) {
    return "'" + std::string(name) + "'";
  }
  return "(name not shown, it may be a secret)";
}

}  // namespace iothubd::proto::detail
