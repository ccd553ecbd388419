// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "iothubd/core/result.hpp"

namespace iothubd::proto {

/// One decoded `key=value` pair of a topic property bag or query string.
struct BagEntry {
  std::string key;
  std::string value;
  bool hasValue = false;  ///< false for a bare `key` (no `=`); [py] maps it to None
};

/// Parses a property bag or query string (protocol doc section 5): pairs separated by `&`, each
/// split on its first `=`, key and value percent-decoded (`+` stays `+`). Empty pieces (an empty
/// bag, `&&`, a trailing `&`) are skipped. Order and duplicates are kept as on the wire.
/// Errors: Errc::Protocol for a malformed percent-escape or an empty key (`=v`); the message gives
/// the pair's position.
[[nodiscard]] core::Result<std::vector<BagEntry>> parsePropertyBag(std::string_view bag);

/// Appends `enc(key)=enc(value)` to a bag under construction, with a `&` unless it is the first.
void appendBagEntry(std::string& bag, std::string_view key, std::string_view value);

/// Whether `bag` is exactly what appendBagEntry() writes: `key=value` pairs joined by `&`, every
/// key non-empty, every byte unreserved or a `%XX` escape with upper-case hex digits. For a bag
/// stored earlier that goes back on the wire as it is (the outbox), instead of decoding and
/// encoding it again. The empty bag is well-formed.
[[nodiscard]] bool isEncodedPropertyBag(std::string_view bag);

}  // namespace iothubd::proto
