// SPDX-License-Identifier: MIT
#include "iothubd/proto/property_bag.hpp"

#include "iothubd/proto/percent_encoding.hpp"

namespace iothubd::proto {

core::Result<std::vector<BagEntry>> parsePropertyBag(std::string_view bag) {
  std::vector<BagEntry> entries;
  std::size_t index = 0;
  while (!bag.empty()) {
    ++index;
    const std::size_t amp = bag.find('&');
    const std::string_view pair = bag.substr(0, amp);
    bag = amp == std::string_view::npos ? std::string_view{} : bag.substr(amp + 1);
    if (pair.empty()) {
      continue;
    }
    const std::size_t eq = pair.find('=');
    const std::string where = "property " + std::to_string(index);
    auto key = percentDecode(pair.substr(0, eq));
    if (!key) {
      return core::fail(core::Errc::Protocol, where + " name has a " + key.error().message);
    }
    if (key->empty()) {
      return core::fail(core::Errc::Protocol, where + " has an empty name");
    }
    BagEntry entry;
    entry.key = std::move(*key);
    if (eq != std::string_view::npos) {
      auto value = percentDecode(pair.substr(eq + 1));
      if (!value) {
        return core::fail(core::Errc::Protocol,
                          where + " ('" + entry.key + "') value has a " + value.error().message);
      }
      entry.value = std::move(*value);
      entry.hasValue = true;
    }
    entries.push_back(std::move(entry));
  }
  return entries;
}

void appendBagEntry(std::string& bag, std::string_view key, std::string_view value) {
  if (!bag.empty()) {
    bag.push_back('&');
  }
  appendPercentEncoded(bag, key);
  bag.push_back('=');
  appendPercentEncoded(bag, value);
}

bool isEncodedPropertyBag(std::string_view bag) {
  const auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); };
  const auto value = [](char c) { return c <= '9' ? c - '0' : c - 'A' + 10; };
  const auto unreserved = [](int c) { return isUnreserved(static_cast<unsigned char>(c)); };
  bool inValue = false;
  std::size_t keyLength = 0;
  for (std::size_t i = 0; i < bag.size(); ++i) {
    const char c = bag[i];
    if (c == '=') {
      if (inValue || keyLength == 0) {
        return false;
      }
      inValue = true;
    } else if (c == '&') {
      if (!inValue) {
        return false;  // a pair without '=' (or an empty one)
      }
      inValue = false;
      keyLength = 0;
    } else if (c == '%') {
      // Upper-case hex, and never an escaped unreserved byte (percentEncode leaves those alone).
      if (i + 2 >= bag.size() || !hex(bag[i + 1]) || !hex(bag[i + 2]) ||
          unreserved(value(bag[i + 1]) * 16 + value(bag[i + 2]))) {
        return false;
      }
      i += 2;
      keyLength += inValue ? 0 : 1;
    } else if (unreserved(c)) {
      keyLength += inValue ? 0 : 1;
    } else {
      return false;
    }
  }
  return bag.empty() || inValue;
}

}  // namespace iothubd::proto
