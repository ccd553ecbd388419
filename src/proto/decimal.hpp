// SPDX-License-Identifier: MIT
// Private to proto: unsigned decimal numbers as the hub and DPS write them.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string_view>

namespace iothubd::proto::detail {

/// What parseDecimal does with a number beyond 64 bits.
enum class Overflow { Refuse, Saturate };

/// Decimal digits only: no sign, no whitespace, not empty. A number beyond 2^64 - 1 is refused
/// (a SAS token's expiry) or read as the largest value (a retry-after of 10^30 s means "long").
[[nodiscard]] inline std::optional<std::uint64_t> parseDecimal(std::string_view text,
                                                               Overflow overflow) {
  if (text.empty()) {
    return std::nullopt;
  }
  constexpr auto kMax = std::numeric_limits<std::uint64_t>::max();
  std::uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') {
      return std::nullopt;
    }
    const auto digit = static_cast<std::uint64_t>(c - '0');
    if (value > (kMax - digit) / 10) {
      if (overflow == Overflow::Refuse) {
        return std::nullopt;
      }
      value = kMax;
    } else if (value != kMax) {
      value = value * 10 + digit;
    }
  }
  return value;
}

}  // namespace iothubd::proto::detail
