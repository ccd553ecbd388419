// SPDX-License-Identifier: MIT
// Fuzzes parsePropertyBag, the decoder of every C2D/module-input topic bag and `$iothub` query,
// and checks that a parsed bag, encoded again, parses to the same entries; and
// isEncodedPropertyBag, the check of a stored bag that goes back on the wire as it is: it accepts
// exactly what appendBagEntry writes.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.hpp"
#include "iothubd/proto/percent_encoding.hpp"
#include "iothubd/proto/property_bag.hpp"

using namespace iothubd;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text = fuzz::asText(data, size);
  auto entries = proto::parsePropertyBag(text);
  if (proto::isEncodedPropertyBag(text)) {
    // Canonical: it parses, and encoding what it holds gives the same text back.
    FUZZ_CHECK(entries.has_value());
    std::string canonical;
    for (const auto& entry : *entries) {
      FUZZ_CHECK(entry.hasValue);
      proto::appendBagEntry(canonical, entry.key, entry.value);
    }
    FUZZ_CHECK(canonical == text);
  }
  if (!entries) {
    FUZZ_CHECK(entries.error().code == core::Errc::Protocol);
    return 0;
  }

  std::string rebuilt;
  for (const auto& entry : *entries) {
    FUZZ_CHECK(!entry.key.empty());
    FUZZ_CHECK(entry.hasValue || entry.value.empty());
    if (entry.hasValue) {
      proto::appendBagEntry(rebuilt, entry.key, entry.value);
    } else {
      if (!rebuilt.empty()) {
        rebuilt.push_back('&');
      }
      rebuilt.append(proto::percentEncode(entry.key));
    }
  }
  FUZZ_CHECK(
      proto::isEncodedPropertyBag(rebuilt) ==
      std::all_of(entries->begin(), entries->end(), [](const auto& e) { return e.hasValue; }));
  auto again = proto::parsePropertyBag(rebuilt);
  FUZZ_CHECK(again.has_value() && again->size() == entries->size());
  for (std::size_t i = 0; i < entries->size(); ++i) {
    FUZZ_CHECK((*again)[i].key == (*entries)[i].key);
    FUZZ_CHECK((*again)[i].value == (*entries)[i].value);
    FUZZ_CHECK((*again)[i].hasValue == (*entries)[i].hasValue);
  }
  return 0;
}
