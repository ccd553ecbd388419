// SPDX-License-Identifier: MIT
// Fuzzes the HTTP response-head reader (proxy CONNECT answers, WebSocket upgrade answers): the
// first two bytes choose where the input is split, and the reader must reach the same result
// whether the head arrives whole or in two reads, stay within its bound, and keep every byte
// after the head as leftover.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.hpp"
#include "http_head.hpp"

using namespace iothubd;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) {
    return 0;
  }
  const std::size_t cut = (static_cast<std::size_t>(data[0]) << 8 | data[1]) % (size - 1);
  const std::string_view text = fuzz::asText(data + 2, size - 2);

  relay::HttpHeadReader whole;
  const auto a = whole.feed(text);
  relay::HttpHeadReader split;
  const std::string_view first = text.substr(0, std::min(cut, text.size()));
  const std::string_view rest = text.substr(first.size());
  auto b = split.feed(first);
  std::string unread;  // what a caller would hand on after a head complete in the first read
  if (b && !*b) {
    b = split.feed(rest);
  } else {
    unread = std::string(rest);
  }
  FUZZ_CHECK(a.has_value() == b.has_value());
  if (!a) {
    FUZZ_CHECK(a.error().code == core::Errc::Protocol);
    return 0;
  }
  FUZZ_CHECK(*a == *b);
  if (!*a) {
    FUZZ_CHECK(text.size() <= relay::HttpHeadReader::kMaxHeadBytes);
    return 0;
  }
  const auto& h1 = whole.head();
  const auto& h2 = split.head();
  FUZZ_CHECK(h1.status == h2.status && h1.reason == h2.reason && h1.headers == h2.headers);
  FUZZ_CHECK(h1.status >= 100 && h1.status <= 999);
  const std::string left1 = whole.takeLeftover();
  FUZZ_CHECK(left1 == split.takeLeftover() + unread);
  // The head ended with a blank line, and what followed it is the leftover.
  FUZZ_CHECK(text.size() >= left1.size() &&
             text.substr(text.size() - left1.size()) == std::string_view(left1));
  for (const auto& [name, value] : h1.headers) {
    FUZZ_CHECK(h1.header(name).has_value());
  }
  return 0;
}
