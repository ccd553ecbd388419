// SPDX-License-Identifier: MIT
#include "iothubd/proto/percent_encoding.hpp"

namespace iothubd::proto {

namespace {

constexpr char kHexDigits[] = "0123456789ABCDEF";

int hexValue(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  return -1;
}

}  // namespace

bool isUnreserved(unsigned char c) noexcept {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

void appendPercentEncoded(std::string& out, std::string_view in) {
  // Runs of unreserved bytes (ids, most names and values) are copied in one append.
  std::size_t run = 0;
  for (std::size_t i = 0; i < in.size(); ++i) {
    const auto c = static_cast<unsigned char>(in[i]);
    if (isUnreserved(c)) {
      continue;
    }
    out.append(in.data() + run, i - run);
    const char escape[3] = {'%', kHexDigits[c >> 4], kHexDigits[c & 0x0F]};
    out.append(escape, 3);
    run = i + 1;
  }
  out.append(in.data() + run, in.size() - run);
}

std::string percentEncode(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  appendPercentEncoded(out, in);
  return out;
}

core::Result<std::string> percentDecode(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out.push_back(in[i]);
      continue;
    }
    const int hi = i + 1 < in.size() ? hexValue(in[i + 1]) : -1;
    const int lo = i + 2 < in.size() ? hexValue(in[i + 2]) : -1;
    if (hi < 0 || lo < 0) {
      return core::fail(core::Errc::InvalidArgument,
                        "malformed percent-escape at offset " + std::to_string(i));
    }
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return out;
}

}  // namespace iothubd::proto
