// SPDX-License-Identifier: MIT
#include "twin_limits.hpp"

#include <string_view>

namespace iothubd::hubemu {
namespace {

// UTF-8 length without C0 (U+0000-U+001F, U+007F) and C1 (U+0080-U+009F) control characters.
int64_t countedLength(std::string_view text) {
  int64_t n = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7F)
      continue;
    // C1 controls are U+0080..U+009F: 0xC2 0x80..0x9F in UTF-8.
    if (c == 0xC2 && i + 1 < text.size() && static_cast<unsigned char>(text[i + 1]) <= 0x9F) {
      ++i;
      continue;
    }
    ++n;
  }
  return n;
}

std::optional<std::string> keyViolation(std::string_view key) {
  if (key.size() > kTwinKeyMaxBytes)
    return "key longer than 1 KB";
  for (size_t i = 0; i < key.size(); ++i) {
    const auto c = static_cast<unsigned char>(key[i]);
    if (c == '.' || c == '$' || c == ' ')
      return "key '" + std::string(key) + "' contains '" + std::string(1, static_cast<char>(c)) +
             "'";
    if (c < 0x20 || c == 0x7F ||
        (c == 0xC2 && i + 1 < key.size() && static_cast<unsigned char>(key[i + 1]) <= 0x9F))
      return "key contains a control character";
  }
  return std::nullopt;
}

std::optional<std::string> valueViolation(const rapidjson::Value& value, int depth) {
  if (value.IsString()) {
    if (value.GetStringLength() > kTwinStringMaxBytes)
      return "string value longer than 4 KB";
    return std::nullopt;
  }
  if (value.IsInt64() && (value.GetInt64() > kTwinIntegerMax || value.GetInt64() < kTwinIntegerMin))
    return "integer outside -4503599627370496..4503599627370495";
  if (value.IsUint64() && !value.IsInt64())
    return "integer outside -4503599627370496..4503599627370495";
  if (value.IsObject() || value.IsArray()) {
    if (depth > kTwinMaxDepth)
      return "nested deeper than 10 levels";
  }
  if (value.IsObject()) {
    for (auto it = value.MemberBegin(); it != value.MemberEnd(); ++it) {
      if (auto bad = keyViolation({it->name.GetString(), it->name.GetStringLength()}))
        return bad;
      if (auto bad = valueViolation(it->value, depth + 1))
        return bad;
    }
  } else if (value.IsArray()) {
    for (const auto& element : value.GetArray()) {
      if (auto bad = valueViolation(element, depth + 1))
        return bad;
    }
  }
  return std::nullopt;
}

int64_t valueSize(const rapidjson::Value& value) {
  if (value.IsString())
    return countedLength({value.GetString(), value.GetStringLength()});
  if (value.IsNumber())
    return 8;
  if (value.IsBool())
    return 4;
  int64_t total = 0;
  if (value.IsObject()) {
    for (auto it = value.MemberBegin(); it != value.MemberEnd(); ++it) {
      total +=
          countedLength({it->name.GetString(), it->name.GetStringLength()}) + valueSize(it->value);
    }
  } else if (value.IsArray()) {
    for (const auto& element : value.GetArray())
      total += valueSize(element);
  }
  return total;
}

}  // namespace

std::optional<std::string> twinFormatViolation(const rapidjson::Value& patch) {
  if (!patch.IsObject())
    return "not an object";
  // The section itself is level 0; its members' objects are level 1 (the docs' example nests
  // ten objects below "tags").
  for (auto it = patch.MemberBegin(); it != patch.MemberEnd(); ++it) {
    if (auto bad = keyViolation({it->name.GetString(), it->name.GetStringLength()}))
      return bad;
    if (auto bad = valueViolation(it->value, 1))
      return bad;
  }
  return std::nullopt;
}

int64_t twinSize(const rapidjson::Value& section) {
  int64_t total = 0;
  if (!section.IsObject())
    return 0;
  for (auto it = section.MemberBegin(); it != section.MemberEnd(); ++it) {
    if (it->name.GetStringLength() > 0 && it->name.GetString()[0] == '$')
      continue;
    total +=
        countedLength({it->name.GetString(), it->name.GetStringLength()}) + valueSize(it->value);
  }
  return total;
}

}  // namespace iothubd::hubemu
