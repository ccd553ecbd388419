// SPDX-License-Identifier: MIT
#include "iothubd/proto/base64.hpp"

#include <openssl/evp.h>

namespace iothubd::proto {

namespace {

int alphabetValue(char c) {
  if (c >= 'A' && c <= 'Z') {
    return c - 'A';
  }
  if (c >= 'a' && c <= 'z') {
    return c - 'a' + 26;
  }
  if (c >= '0' && c <= '9') {
    return c - '0' + 52;
  }
  if (c == '+') {
    return 62;
  }
  if (c == '/') {
    return 63;
  }
  return -1;
}

core::Result<std::string> invalid(const std::string& reason) {
  return core::fail(core::Errc::InvalidArgument, "invalid base64: " + reason);
}

}  // namespace

std::string base64Encode(std::string_view bytes) {
  if (bytes.empty()) {
    return {};
  }
  // EVP_EncodeBlock writes 4 characters per started 3-byte group plus a terminating NUL and
  // never inserts line breaks (unlike the EVP_Encode* streaming API).
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()),
                                static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

// Hand-written rather than EVP_DecodeBlock: that one skips leading/trailing whitespace and returns
// padding bytes as zeros, so it cannot tell a valid text from a damaged one.
core::Result<std::string> base64Decode(std::string_view text) {
  if (text.size() % 4 != 0) {
    return invalid("length " + std::to_string(text.size()) + " is not a multiple of 4");
  }
  std::size_t padding = 0;
  if (!text.empty() && text.back() == '=') {
    padding = text[text.size() - 2] == '=' ? 2 : 1;
  }
  const std::size_t dataChars = text.size() - padding;
  std::string out;
  out.reserve(text.size() / 4 * 3);
  std::uint32_t acc = 0;
  int bits = 0;
  for (std::size_t i = 0; i < dataChars; ++i) {
    const int v = alphabetValue(text[i]);
    if (v < 0) {
      if (text[i] == '=') {
        return invalid("misplaced padding at offset " + std::to_string(i));
      }
      return invalid("character at offset " + std::to_string(i) + " is not in the alphabet");
    }
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  // With one '=' 18 bits remain (2 bytes + 2 spare bits), with two 12 bits (1 byte + 4 spare):
  // the spare bits must be zero in a canonical encoding.
  if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) {
    return invalid("non-zero bits before the padding");
  }
  return out;
}

}  // namespace iothubd::proto
