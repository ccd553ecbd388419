// SPDX-License-Identifier: MIT
// Small RapidJSON helpers for the hub emulator plugin.
#pragma once

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace iothubd::hubemu {

// A refused control request: `status` goes back to the service in the response.
struct CommandError : std::runtime_error {
  CommandError(int status, const std::string& message)
      : std::runtime_error(message), status(status) {}
  int status;
};

// Parses `text`; nullopt unless it is valid JSON whose root is an object.
std::optional<rapidjson::Document> parseObject(std::string_view text);

std::string toJson(const rapidjson::Value& value);

// RFC 7386 JSON merge patch: members of `patch` replace members of `target`, nested objects merge
// recursively and null deletes. Both must be objects.
void mergePatch(rapidjson::Value& target, const rapidjson::Value& patch,
                rapidjson::Document::AllocatorType& allocator);

// Streams one JSON object; keys are written in call order.
class JsonOut {
 public:
  JsonOut() : writer_(buffer_) { writer_.StartObject(); }
  JsonOut& str(std::string_view key, std::string_view value);
  JsonOut& num(std::string_view key, int64_t value);
  JsonOut& boolean(std::string_view key, bool value);
  JsonOut& value(std::string_view key, const rapidjson::Value& value);
  // Embeds already-serialized JSON unchanged.
  JsonOut& raw(std::string_view key, std::string_view json);
  std::string finish();

 private:
  void key(std::string_view key);
  rapidjson::StringBuffer buffer_;
  rapidjson::Writer<rapidjson::StringBuffer> writer_;
};

// Argument accessors for control requests; throw CommandError(400) when a required one is missing
// or has the wrong type.
std::string requireString(const rapidjson::Value& args, const char* name);
std::optional<std::string> optionalString(const rapidjson::Value& args, const char* name);
int64_t intOr(const rapidjson::Value& args, const char* name, int64_t fallback);

}  // namespace iothubd::hubemu
