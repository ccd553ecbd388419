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
  bag.append(percentEncode(key)).append("=").append(percentEncode(value));
}

}  // namespace iothubd::proto
