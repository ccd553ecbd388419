// SPDX-License-Identifier: MIT
#include "iothubd/proto/twin.hpp"

#include <rapidjson/document.h>
#include <rapidjson/encodedstream.h>
#include <rapidjson/error/en.h>
#include <rapidjson/memorystream.h>
#include <rapidjson/reader.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

namespace iothubd::proto {

namespace {

using core::Errc;

// Validate UTF-8 (the text goes to the hub or to D-Bus, which both require it) and keep numbers
// exact enough to re-serialize them.
constexpr unsigned kParseFlags =
    rapidjson::kParseValidateEncodingFlag | rapidjson::kParseFullPrecisionFlag;

// Forwards SAX events to Inner while tracking depth; refuses to go deeper than kMaxJsonDepth so a
// hostile `[[[[...` cannot exhaust memory. RapidJSON has no depth limit of its own.
template <class Inner>
class DepthLimiter {
 public:
  using Ch = char;
  explicit DepthLimiter(Inner& inner) : inner_(inner) {}

  bool Null() { return inner_.Null(); }
  bool Bool(bool b) { return inner_.Bool(b); }
  bool Int(int i) { return inner_.Int(i); }
  bool Uint(unsigned u) { return inner_.Uint(u); }
  bool Int64(std::int64_t i) { return inner_.Int64(i); }
  bool Uint64(std::uint64_t u) { return inner_.Uint64(u); }
  bool Double(double d) { return inner_.Double(d); }
  bool RawNumber(const Ch* str, rapidjson::SizeType length, bool copy) {
    return inner_.RawNumber(str, length, copy);
  }
  bool String(const Ch* str, rapidjson::SizeType length, bool copy) {
    return inner_.String(str, length, copy);
  }
  bool Key(const Ch* str, rapidjson::SizeType length, bool copy) {
    return inner_.Key(str, length, copy);
  }
  bool StartObject() { return enter() && inner_.StartObject(); }
  bool EndObject(rapidjson::SizeType members) {
    --depth_;
    return inner_.EndObject(members);
  }
  bool StartArray() { return enter() && inner_.StartArray(); }
  bool EndArray(rapidjson::SizeType elements) {
    --depth_;
    return inner_.EndArray(elements);
  }

  [[nodiscard]] bool tooDeep() const { return tooDeep_; }

 private:
  bool enter() {
    if (++depth_ > kMaxJsonDepth) {
      tooDeep_ = true;
      return false;
    }
    return true;
  }

  Inner& inner_;
  unsigned depth_ = 0;
  bool tooDeep_ = false;
};

// Parses `json` into `doc` (one value, no trailing text, within kMaxJsonDepth).
core::Result<void> parseJson(std::string_view json, rapidjson::Document& doc, Errc code) {
  // RapidJSON stops at a NUL byte as if the text ended there, which would accept `{}\0junk`.
  if (const std::size_t nul = json.find('\0'); nul != std::string_view::npos) {
    return core::fail(code, "invalid JSON at offset " + std::to_string(nul) + ": NUL byte");
  }
  bool tooDeep = false;
  rapidjson::ParseResult result;
  auto generator = [&](rapidjson::Document& handler) {
    rapidjson::MemoryStream memory(json.data(), json.size());
    rapidjson::EncodedInputStream<rapidjson::UTF8<>, rapidjson::MemoryStream> input(memory);
    DepthLimiter<rapidjson::Document> limiter(handler);
    rapidjson::Reader reader;
    result = reader.Parse<kParseFlags>(input, limiter);
    tooDeep = limiter.tooDeep();
    return !result.IsError();
  };
  doc.Populate(generator);
  if (tooDeep) {
    // RapidJSON reports the offset after the bracket it had just consumed; name the bracket.
    return core::fail(code, "JSON nested deeper than " + std::to_string(kMaxJsonDepth) +
                                " levels at offset " + std::to_string(result.Offset() - 1));
  }
  if (result.IsError()) {
    return core::fail(code, "invalid JSON at offset " + std::to_string(result.Offset()) + ": " +
                                rapidjson::GetParseError_En(result.Code()));
  }
  return {};
}

const char* typeName(const rapidjson::Value& value) {
  switch (value.GetType()) {
    case rapidjson::kNullType:
      return "null";
    case rapidjson::kFalseType:
    case rapidjson::kTrueType:
      return "boolean";
    case rapidjson::kObjectType:
      return "object";
    case rapidjson::kArrayType:
      return "array";
    case rapidjson::kStringType:
      return "string";
    case rapidjson::kNumberType:
      return "number";
  }
  return "unknown";
}

core::Result<std::uint64_t> versionMember(const rapidjson::Value& object, const std::string& what) {
  const auto it = object.FindMember("$version");
  if (it == object.MemberEnd()) {
    return core::fail(Errc::Protocol, what + " has no $version");
  }
  if (!it->value.IsUint64()) {
    return core::fail(Errc::Protocol, what + " $version is not a non-negative integer");
  }
  return it->value.GetUint64();
}

// Parses a twin GET result and returns its `desired` member.
core::Result<const rapidjson::Value*> desiredOf(std::string_view twinJson,
                                                rapidjson::Document& doc) {
  if (auto ok = parseJson(twinJson, doc, Errc::Protocol); !ok) {
    return core::fail(Errc::Protocol, "twin: " + ok.error().message);
  }
  if (!doc.IsObject()) {
    return core::fail(Errc::Protocol,
                      std::string("twin must be a JSON object, got ") + typeName(doc));
  }
  const auto it = doc.FindMember("desired");
  if (it == doc.MemberEnd()) {
    return core::fail(Errc::Protocol, "twin has no 'desired' member");
  }
  if (!it->value.IsObject()) {
    return core::fail(Errc::Protocol, std::string("twin 'desired' must be a JSON object, got ") +
                                          typeName(it->value));
  }
  return &it->value;
}

}  // namespace

core::Result<void> validateReportedPatch(std::string_view json) {
  rapidjson::Document doc;
  if (auto ok = parseJson(json, doc, Errc::InvalidArgument); !ok) {
    return ok;
  }
  // A JSON merge patch must be an object (protocol doc section 7).
  if (!doc.IsObject()) {
    return core::fail(Errc::InvalidArgument,
                      std::string("patch must be a JSON object, got ") + typeName(doc));
  }
  return {};
}

core::Result<void> validateJsonPayload(std::string_view json) {
  if (json.empty()) {
    return {};
  }
  rapidjson::Document doc;
  return parseJson(json, doc, Errc::InvalidArgument);
}

core::Result<std::uint64_t> desiredVersionOfTwin(std::string_view twinJson) {
  rapidjson::Document doc;
  auto desired = desiredOf(twinJson, doc);
  if (!desired) {
    return core::fail(desired.error());
  }
  return versionMember(**desired, "twin 'desired'");
}

core::Result<std::uint64_t> versionOfDesiredPatch(std::string_view patchJson) {
  rapidjson::Document doc;
  if (auto ok = parseJson(patchJson, doc, Errc::Protocol); !ok) {
    return core::fail(Errc::Protocol, "desired patch: " + ok.error().message);
  }
  if (!doc.IsObject()) {
    return core::fail(Errc::Protocol,
                      std::string("desired patch must be a JSON object, got ") + typeName(doc));
  }
  return versionMember(doc, "desired patch");
}

core::Result<std::string> desiredSectionOfTwin(std::string_view twinJson) {
  rapidjson::Document doc;
  auto desired = desiredOf(twinJson, doc);
  if (!desired) {
    return core::fail(desired.error());
  }
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
  if (!(*desired)->Accept(writer)) {
    return core::fail(Errc::Internal, "could not serialize the desired section");
  }
  return std::string(buffer.GetString(), buffer.GetSize());
}

}  // namespace iothubd::proto
