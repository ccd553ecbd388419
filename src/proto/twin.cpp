// SPDX-License-Identifier: MIT
#include "iothubd/proto/twin.hpp"

#include <rapidjson/document.h>
#include <rapidjson/encodedstream.h>
#include <rapidjson/error/en.h>
#include <rapidjson/memorystream.h>
#include <rapidjson/reader.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <limits>

#include "json_reader.hpp"

namespace iothubd::proto {

namespace {

using core::Errc;

// Validate UTF-8 (the text goes to the hub or to D-Bus, which both require it). Numbers reach the
// handler as text and are converted by numberToSax below, never by RapidJSON: 1.1.0 (Debian 12)
// has undefined behaviour and out-of-bounds reads in its full-precision strtod on hostile numbers
// such as 184467440737095516155 or 0e100 (Tencent/rapidjson#1249, #1251, fixed after 1.1.0 by
// #1290; found by tests/fuzz/fuzz_json.cpp), and its normal-precision strtod is not exact.
constexpr unsigned kParseFlags =
    rapidjson::kParseValidateEncodingFlag | rapidjson::kParseNumbersAsStringsFlag;

// For a number std::from_chars found out of double's range: whether it is too large (rather than
// too close to zero), from the decimal exponent of its first significant digit.
bool exceedsDouble(std::string_view number) {
  const std::size_t e = number.find_first_of("eE");
  long long exponent = 0;
  if (e != std::string_view::npos) {
    std::string_view digits = number.substr(e + 1);
    const bool negative = !digits.empty() && digits.front() == '-';
    if (!digits.empty() && (digits.front() == '-' || digits.front() == '+')) {
      digits.remove_prefix(1);
    }
    for (char c : digits) {
      // Saturated: only the sign of the result matters.
      exponent = std::min(exponent * 10 + (c - '0'), 1'000'000LL);
    }
    exponent = negative ? -exponent : exponent;
  }
  const std::string_view mantissa = number.substr(0, e);
  const std::size_t dot = std::min(mantissa.find('.'), mantissa.size());
  const std::size_t first = mantissa.find_first_of("123456789");
  if (first == std::string_view::npos) {
    return false;  // zero
  }
  const long long position =
      first < dot ? static_cast<long long>(dot - first - 1) : -static_cast<long long>(first - dot);
  return position + exponent > 0;
}

// Reports one JSON number (its grammar already checked by the reader) to `handler` as RapidJSON's
// own reader would: integers as Int/Uint/Int64/Uint64 when they fit, anything else as Double,
// correctly rounded. A number too close to zero becomes 0. Returns false, setting tooBig, for a
// number beyond double's range.
template <class Handler>
bool numberToSax(std::string_view number, Handler& handler, bool& tooBig) {
  const char* first = number.data();
  const char* last = first + number.size();
  const bool negative = !number.empty() && number.front() == '-';
  if (number.find_first_of(".eE") == std::string_view::npos) {
    if (negative) {
      std::int64_t value = 0;
      if (auto [end, ec] = std::from_chars(first, last, value); ec == std::errc() && end == last) {
        return value >= std::numeric_limits<int>::min() ? handler.Int(static_cast<int>(value))
                                                        : handler.Int64(value);
      }
    } else {
      std::uint64_t value = 0;
      if (auto [end, ec] = std::from_chars(first, last, value); ec == std::errc() && end == last) {
        return value <= std::numeric_limits<unsigned>::max()
                   ? handler.Uint(static_cast<unsigned>(value))
                   : handler.Uint64(value);
      }
    }
  }
  double value = 0;
  const auto [end, ec] = std::from_chars(first, last, value);
  if (ec == std::errc() && end == last && std::isfinite(value)) {
    return handler.Double(value);
  }
  if (!exceedsDouble(number)) {
    return handler.Double(negative ? -0.0 : 0.0);
  }
  tooBig = true;
  return false;
}

// Whether decoded text holds the UTF-8 form of a surrogate (U+D800..U+DFFF), which is not UTF-8.
// The reader validates the input bytes, but RapidJSON 1.1.0 decodes a `\u` escape of a lone low
// surrogate (`"\uDC00"`) into exactly that, and writes it out again raw: the hub and D-Bus both
// refuse it (found by fuzz-json). In otherwise valid UTF-8, 0xED is always a lead byte.
bool hasSurrogate(std::string_view text) {
  for (std::size_t i = 0; i + 1 < text.size(); ++i) {
    if (static_cast<unsigned char>(text[i]) == 0xED &&
        (static_cast<unsigned char>(text[i + 1]) & 0xE0) == 0xA0) {
      return true;
    }
  }
  return false;
}

// Forwards SAX events to Inner while tracking depth; refuses to go deeper than kMaxJsonDepth so a
// hostile `[[[[...` cannot exhaust memory. RapidJSON has no depth limit of its own. Also turns
// the numbers the reader hands over as text into values (numberToSax), and refuses strings that
// decode to surrogates (hasSurrogate).
template <class Inner>
class DepthLimiter {
 public:
  using Ch = char;
  explicit DepthLimiter(Inner& inner) : inner_(inner) {}

  // RapidJSON's Handler concept fixes these names.
  // NOLINTBEGIN(readability-identifier-naming)
  bool Null() { return inner_.Null(); }
  bool Bool(bool b) { return inner_.Bool(b); }
  bool Int(int i) { return inner_.Int(i); }
  bool Uint(unsigned u) { return inner_.Uint(u); }
  bool Int64(std::int64_t i) { return inner_.Int64(i); }
  bool Uint64(std::uint64_t u) { return inner_.Uint64(u); }
  bool Double(double d) { return inner_.Double(d); }
  bool RawNumber(const Ch* str, rapidjson::SizeType length, bool /*copy*/) {
    bool tooBig = false;
    if (numberToSax(std::string_view(str, length), inner_, tooBig)) {
      return true;
    }
    refused_ = tooBig ? rapidjson::kParseErrorNumberTooBig : refused_;
    return false;
  }
  bool String(const Ch* str, rapidjson::SizeType length, bool copy) {
    return acceptText(str, length) && inner_.String(str, length, copy);
  }
  bool Key(const Ch* str, rapidjson::SizeType length, bool copy) {
    return acceptText(str, length) && inner_.Key(str, length, copy);
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
  // NOLINTEND(readability-identifier-naming)

  [[nodiscard]] bool tooDeep() const { return tooDeep_; }
  /// Why a value was refused (a number beyond double, a surrogate), else kParseErrorNone.
  [[nodiscard]] rapidjson::ParseErrorCode refused() const { return refused_; }

 private:
  bool acceptText(const Ch* str, rapidjson::SizeType length) {
    if (hasSurrogate(std::string_view(str, length))) {
      refused_ = rapidjson::kParseErrorStringUnicodeSurrogateInvalid;
      return false;
    }
    return true;
  }

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
  rapidjson::ParseErrorCode refused_ = rapidjson::kParseErrorNone;
};

}  // namespace

namespace detail {

core::Result<void> parseJson(std::string_view json, rapidjson::Document& doc, Errc code) {
  // RapidJSON stops at a NUL byte as if the text ended there, which would accept `{}\0junk`.
  if (const std::size_t nul = json.find('\0'); nul != std::string_view::npos) {
    return core::fail(code, "invalid JSON at offset " + std::to_string(nul) + ": NUL byte");
  }
  bool tooDeep = false;
  auto refused = rapidjson::kParseErrorNone;
  rapidjson::ParseResult result;
  auto generator = [&](rapidjson::Document& handler) {
    rapidjson::MemoryStream memory(json.data(), json.size());
    rapidjson::EncodedInputStream<rapidjson::UTF8<>, rapidjson::MemoryStream> input(memory);
    DepthLimiter<rapidjson::Document> limiter(handler);
    rapidjson::Reader reader;
    result = reader.Parse<kParseFlags>(input, limiter);
    tooDeep = limiter.tooDeep();
    refused = limiter.refused();
    return !result.IsError();
  };
  doc.Populate(generator);
  if (tooDeep) {
    // RapidJSON reports the offset after the bracket it had just consumed; name the bracket.
    // From an app this is a limit of ours, not malformed input: say so with its own error.
    return core::fail(code == Errc::InvalidArgument ? Errc::LimitExceeded : code,
                      "JSON nested deeper than " + std::to_string(kMaxJsonDepth) +
                          " levels at offset " + std::to_string(result.Offset() - 1));
  }
  if (result.IsError()) {
    // The reader reports a value the handler refused as kParseErrorTermination.
    const auto error = refused != rapidjson::kParseErrorNone ? refused : result.Code();
    return core::fail(code, "invalid JSON at offset " + std::to_string(result.Offset()) + ": " +
                                rapidjson::GetParseError_En(error));
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

}  // namespace detail

namespace {

using detail::parseJson;
using detail::typeName;

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

// ---- the hub's twin rules (twin.hpp, kTwin*) ----------------------------------------------------

// Whether the UTF-8 sequence at text[i] is a control character the hub excludes: C0
// (U+0000-U+001F, U+007F) or C1 (U+0080-U+009F, 0xC2 0x80..0x9F); `length` gets its byte count.
bool isControl(std::string_view text, std::size_t i, std::size_t& length) {
  const auto c = static_cast<unsigned char>(text[i]);
  length = 1;
  if (c < 0x20 || c == 0x7F) {
    return true;
  }
  if (c == 0xC2 && i + 1 < text.size() && static_cast<unsigned char>(text[i + 1]) <= 0x9F) {
    length = 2;
    return true;
  }
  return false;
}

// A string's size as the hub counts twin size: UTF-8 bytes without control characters.
std::size_t twinLength(std::string_view text) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < text.size();) {
    std::size_t length = 1;
    if (!isControl(text, i, length)) {
      n += length;
    }
    i += length;
  }
  return n;
}

// Walks a reported patch, checking every key and value against the hub's rules and adding up
// its size the hub's way. `path` names where it is (/a/b) for the error messages.
class TwinRules {
 public:
  core::Result<void> check(const rapidjson::Value& patch) {
    if (auto ok = members(patch, 0); !ok) {
      return ok;
    }
    if (size_ > kTwinSectionMaxBytes) {
      return core::fail(Errc::MessageTooLarge,
                        "the patch counts " + std::to_string(size_) +
                            " bytes as IoT Hub counts twin size; reported properties may hold at "
                            "most 32 KB (" +
                            std::to_string(kTwinSectionMaxBytes) + " bytes)");
    }
    return {};
  }

 private:
  // A key as it appears in a message: at most 32 bytes, controls shown as '?'.
  static std::string shown(std::string_view key) {
    std::string out;
    std::size_t i = 0;
    while (i < key.size() && out.size() < 32) {
      std::size_t length = 1;
      out += isControl(key, i, length) ? std::string("?") : std::string(key.substr(i, length));
      i += length;
    }
    return i < key.size() ? out + "..." : out;
  }

  std::string where() const { return path_.empty() ? "/" : path_; }

  core::Result<void> members(const rapidjson::Value& object, unsigned depth) {
    for (auto it = object.MemberBegin(); it != object.MemberEnd(); ++it) {
      const std::string_view key(it->name.GetString(), it->name.GetStringLength());
      const std::size_t saved = path_.size();
      path_ += "/" + shown(key);
      if (key.size() > kTwinKeyMaxBytes) {
        return core::fail(Errc::MessageTooLarge,
                          "the key at " + where() + " is " + std::to_string(key.size()) +
                              " bytes; IoT Hub allows at most 1 KB (" +
                              std::to_string(kTwinKeyMaxBytes) + " bytes) per twin key");
      }
      for (std::size_t i = 0; i < key.size();) {
        std::size_t length = 1;
        const char c = key[i];
        if (c == '.' || c == '$' || c == ' ' || isControl(key, i, length)) {
          return core::fail(Errc::InvalidArgument,
                            "the key at " + where() +
                                " contains a character IoT Hub does not allow in twin keys ('.', "
                                "'$', space or a control character)");
        }
        i += length;
      }
      if (!it->value.IsNull()) {
        size_ += twinLength(key);  // a null deletes the property: nothing left to count
      }
      if (auto ok = value(it->value, depth + 1); !ok) {
        return ok;
      }
      path_.resize(saved);
    }
    return {};
  }

  core::Result<void> value(const rapidjson::Value& v, unsigned depth) {
    switch (v.GetType()) {
      case rapidjson::kNullType:
        return {};
      case rapidjson::kFalseType:
      case rapidjson::kTrueType:
        size_ += 4;
        return {};
      case rapidjson::kNumberType:
        if ((v.IsInt64() && (v.GetInt64() > kTwinIntegerMax || v.GetInt64() < kTwinIntegerMin)) ||
            (v.IsUint64() && !v.IsInt64())) {
          return core::fail(Errc::InvalidArgument,
                            "the integer at " + where() +
                                " is outside the range IoT Hub keeps in twins (-2^52..2^52-1)");
        }
        size_ += 8;
        return {};
      case rapidjson::kStringType:
        if (v.GetStringLength() > kTwinStringMaxBytes) {
          return core::fail(Errc::MessageTooLarge, "the string at " + where() + " is " +
                                                       std::to_string(v.GetStringLength()) +
                                                       " bytes; IoT Hub allows at most 4 KB (" +
                                                       std::to_string(kTwinStringMaxBytes) +
                                                       " bytes) per twin string");
        }
        size_ += twinLength(std::string_view(v.GetString(), v.GetStringLength()));
        return {};
      case rapidjson::kObjectType:
      case rapidjson::kArrayType:
        break;
    }
    if (depth > kTwinMaxDepth) {
      return core::fail(Errc::InvalidArgument,
                        "the patch nests objects or arrays " + std::to_string(depth) +
                            " levels deep at " + where() + "; IoT Hub allows " +
                            std::to_string(kTwinMaxDepth) + " levels in twins");
    }
    if (v.IsObject()) {
      return members(v, depth);
    }
    for (rapidjson::SizeType i = 0; i < v.Size(); ++i) {
      const std::size_t saved = path_.size();
      path_ += "/" + std::to_string(i);
      if (auto ok = value(v[i], depth + 1); !ok) {
        return ok;
      }
      path_.resize(saved);
    }
    return {};
  }

  std::string path_;
  std::size_t size_ = 0;
};

}  // namespace

core::Result<void> validateReportedPatch(std::string_view json) {
  if (json.size() > kMaxReportedPatchBytes) {
    return core::fail(Errc::MessageTooLarge, "the patch is " + std::to_string(json.size()) +
                                                 " bytes of JSON; IoT Hub takes at most 256 KB (" +
                                                 std::to_string(kMaxReportedPatchBytes) +
                                                 " bytes) in one MQTT message");
  }
  rapidjson::Document doc;
  if (auto ok = parseJson(json, doc, Errc::InvalidArgument); !ok) {
    return ok;
  }
  // A JSON merge patch must be an object (protocol doc section 7).
  if (!doc.IsObject()) {
    return core::fail(Errc::InvalidArgument,
                      std::string("patch must be a JSON object, got ") + typeName(doc));
  }
  return TwinRules().check(doc);
}

core::Result<void> validateJsonPayload(std::string_view json) {
  if (json.empty()) {
    return {};
  }
  if (json.size() > kMaxJsonPayloadBytes) {
    return core::fail(Errc::MessageTooLarge, "the payload is " + std::to_string(json.size()) +
                                                 " bytes; IoT Hub allows at most 128 KB (" +
                                                 std::to_string(kMaxJsonPayloadBytes) +
                                                 " bytes) in a method response");
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
