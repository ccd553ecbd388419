// SPDX-License-Identifier: MIT
// Fuzzes percentDecode (every topic property key and value and every SAS field goes through it)
// and checks percentEncode -> percentDecode round trips.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.hpp"
#include "iothubd/proto/percent_encoding.hpp"

using namespace iothubd;

namespace {

// What enc() may emit (percent_encoding.hpp): the unreserved set, '%' and upper-case hex.
bool isEncodedAlphabet(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~' || c == '%';
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input = fuzz::asText(data, size);

  if (auto decoded = proto::percentDecode(input)) {
    FUZZ_CHECK(decoded->size() <= input.size());
    auto again = proto::percentDecode(proto::percentEncode(*decoded));
    FUZZ_CHECK(again.has_value() && *again == *decoded);
  } else {
    FUZZ_CHECK(decoded.error().code == core::Errc::InvalidArgument);
  }

  const std::string encoded = proto::percentEncode(input);
  for (char c : encoded) {
    FUZZ_CHECK(isEncodedAlphabet(c));
  }
  auto back = proto::percentDecode(encoded);
  FUZZ_CHECK(back.has_value() && *back == input);
  return 0;
}
