// SPDX-License-Identifier: MIT
// Fuzzes parsePropertyBag, the decoder of every C2D/module-input topic bag and `$iothub` query,
// and checks that a parsed bag, encoded again, parses to the same entries.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.hpp"
#include "iothubd/proto/percent_encoding.hpp"
#include "iothubd/proto/property_bag.hpp"

using namespace iothubd;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto entries = proto::parsePropertyBag(fuzz::asText(data, size));
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
  auto again = proto::parsePropertyBag(rebuilt);
  FUZZ_CHECK(again.has_value() && again->size() == entries->size());
  for (std::size_t i = 0; i < entries->size(); ++i) {
    FUZZ_CHECK((*again)[i].key == (*entries)[i].key);
    FUZZ_CHECK((*again)[i].value == (*entries)[i].value);
    FUZZ_CHECK((*again)[i].hasValue == (*entries)[i].hasValue);
  }
  return 0;
}
