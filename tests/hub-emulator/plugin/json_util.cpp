// SPDX-License-Identifier: MIT
#include "json_util.hpp"

namespace iothubd::hubemu {

std::optional<rapidjson::Document> parseObject(std::string_view text) {
  rapidjson::Document doc;
  doc.Parse(text.data(), text.size());
  if (doc.HasParseError() || !doc.IsObject())
    return std::nullopt;
  return doc;
}

std::string toJson(const rapidjson::Value& value) {
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
  value.Accept(writer);
  return std::string(buffer.GetString(), buffer.GetSize());
}

void mergePatch(rapidjson::Value& target, const rapidjson::Value& patch,
                rapidjson::Document::AllocatorType& allocator) {
  for (auto it = patch.MemberBegin(); it != patch.MemberEnd(); ++it) {
    auto existing = target.FindMember(it->name);
    if (it->value.IsNull()) {
      if (existing != target.MemberEnd())
        target.RemoveMember(existing);
      continue;
    }
    if (it->value.IsObject() && existing != target.MemberEnd() && existing->value.IsObject()) {
      mergePatch(existing->value, it->value, allocator);
      continue;
    }
    // A fresh object still has to go through the merge so that nulls inside it are dropped.
    rapidjson::Value copy;
    if (it->value.IsObject()) {
      copy.SetObject();
      mergePatch(copy, it->value, allocator);
    } else {
      copy.CopyFrom(it->value, allocator);
    }
    if (existing != target.MemberEnd()) {
      existing->value = copy;
    } else {
      rapidjson::Value name(it->name, allocator);
      target.AddMember(name, copy, allocator);
    }
  }
}

void JsonOut::key(std::string_view key) {
  writer_.Key(key.data(), static_cast<rapidjson::SizeType>(key.size()));
}

JsonOut& JsonOut::str(std::string_view k, std::string_view value) {
  key(k);
  writer_.String(value.data(), static_cast<rapidjson::SizeType>(value.size()));
  return *this;
}

JsonOut& JsonOut::num(std::string_view k, int64_t value) {
  key(k);
  writer_.Int64(value);
  return *this;
}

JsonOut& JsonOut::boolean(std::string_view k, bool value) {
  key(k);
  writer_.Bool(value);
  return *this;
}

JsonOut& JsonOut::value(std::string_view k, const rapidjson::Value& value) {
  key(k);
  value.Accept(writer_);
  return *this;
}

JsonOut& JsonOut::raw(std::string_view k, std::string_view json) {
  key(k);
  writer_.RawValue(json.data(), json.size(), rapidjson::kObjectType);
  return *this;
}

std::string JsonOut::finish() {
  writer_.EndObject();
  return std::string(buffer_.GetString(), buffer_.GetSize());
}

std::string requireString(const rapidjson::Value& args, const char* name) {
  auto value = optionalString(args, name);
  if (!value)
    throw CommandError(400, std::string("missing string argument '") + name + "'");
  return *value;
}

std::optional<std::string> optionalString(const rapidjson::Value& args, const char* name) {
  const auto it = args.FindMember(name);
  if (it == args.MemberEnd() || it->value.IsNull())
    return std::nullopt;
  if (!it->value.IsString()) {
    throw CommandError(400, std::string("argument '") + name + "' must be a string");
  }
  return std::string(it->value.GetString(), it->value.GetStringLength());
}

int64_t intOr(const rapidjson::Value& args, const char* name, int64_t fallback) {
  const auto it = args.FindMember(name);
  if (it == args.MemberEnd() || it->value.IsNull())
    return fallback;
  if (!it->value.IsInt64()) {
    throw CommandError(400, std::string("argument '") + name + "' must be an integer");
  }
  return it->value.GetInt64();
}

}  // namespace iothubd::hubemu
