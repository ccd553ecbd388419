// SPDX-License-Identifier: MIT
// Fuzzes base64Decode (device keys come from credentials and connection strings) and checks the
// round trips the header promises.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.hpp"
#include "iothubd/proto/base64.hpp"

using namespace iothubd;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input = fuzz::asText(data, size);

  // Decoding is strict and canonical (base64.hpp): whatever decodes re-encodes to the same text.
  if (auto decoded = proto::base64Decode(input)) {
    FUZZ_CHECK(proto::base64Encode(*decoded) == input);
  } else {
    FUZZ_CHECK(decoded.error().code == core::Errc::InvalidArgument);
  }

  // Any bytes survive encode -> decode, in the padded length of RFC 4648.
  const std::string encoded = proto::base64Encode(input);
  FUZZ_CHECK(encoded.size() == 4 * ((size + 2) / 3));
  auto back = proto::base64Decode(encoded);
  FUZZ_CHECK(back.has_value() && *back == input);
  return 0;
}
