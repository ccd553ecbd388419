// SPDX-License-Identifier: MIT
// The expiry-time-utc values apps send, as Unix time (pure: the caller compares with its clock).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace iothubd::proto {

/// Parses an ISO 8601 UTC date-time as apps put it in `expiry-time-utc` (protocol doc section 4,
/// `$.exp`: [py] datetime.isoformat(), [node] toISOString()): `YYYY-MM-DDTHH:MM:SS`, optionally
/// `.fraction`, then `Z`, `+HH:MM`/`-HH:MM` (or `+HHMM`) or nothing (read as UTC). A fraction
/// rounds up, so a message never expires before the time it names. Returns Unix seconds, or
/// nullopt for anything else (including dates before 1970).
[[nodiscard]] std::optional<std::uint64_t> parseUtcTime(std::string_view text);

}  // namespace iothubd::proto
