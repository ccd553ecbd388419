// SPDX-License-Identifier: MIT
#include "iothubd/proto/twin.hpp"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "test_helpers.hpp"

namespace iothubd::proto {
namespace {

using core::Errc;
using test::errorOf;
using test::failedWith;

std::string nestedArrays(unsigned depth) {
  return std::string(depth, '[') + std::string(depth, ']');
}

// {"a":{"a":...{}...}} with `depth` objects.
std::string nestedObjects(unsigned depth) {
  std::string json;
  for (unsigned i = 1; i < depth; ++i) {
    json += R"({"a":)";
  }
  json += "{}";
  json += std::string(depth - 1, '}');
  return json;
}

TEST(ValidateReportedPatch, AcceptsObjects) {
  EXPECT_TRUE(validateReportedPatch(R"({"fw":"1.2","net":{"rssi":-60,"old":null}})").has_value());
  EXPECT_TRUE(validateReportedPatch("{}").has_value());
  EXPECT_TRUE(validateReportedPatch(" \n{ }\t").has_value());
}

TEST(ValidateReportedPatch, RejectsInvalidJsonWithOffset) {
  EXPECT_TRUE(failedWith(validateReportedPatch(R"({"a":})"), Errc::InvalidArgument,
                         "invalid JSON at offset 5: Invalid value."));
  EXPECT_TRUE(
      failedWith(validateReportedPatch(R"({"a" 1})"), Errc::InvalidArgument,
                 "invalid JSON at offset 5: Missing a colon after a name of object member."));
  EXPECT_TRUE(failedWith(validateReportedPatch(R"({a:1})"), Errc::InvalidArgument,
                         "invalid JSON at offset 1: Missing a name for object member."));
}

TEST(ValidateReportedPatch, RejectsEmptyText) {
  EXPECT_TRUE(failedWith(validateReportedPatch(""), Errc::InvalidArgument,
                         "invalid JSON at offset 0: The document is empty."));
}

TEST(ValidateReportedPatch, RejectsTrailingText) {
  EXPECT_TRUE(failedWith(validateReportedPatch("{} {}"), Errc::InvalidArgument,
                         "invalid JSON at offset 3: The document root must not be followed by "
                         "other values."));
}

TEST(ValidateReportedPatch, RejectsNulByteEvenAfterAValidDocument) {
  EXPECT_TRUE(failedWith(validateReportedPatch(std::string("{}\0junk", 7)), Errc::InvalidArgument,
                         "invalid JSON at offset 2: NUL byte"));
}

TEST(ValidateReportedPatch, RejectsInvalidUtf8) {
  EXPECT_TRUE(failedWith(validateReportedPatch("{\"a\":\"\xFF\"}"), Errc::InvalidArgument,
                         "invalid JSON at offset 6: Invalid encoding in string."));
}

TEST(ValidateReportedPatch, RejectsNonObjectsNamingTheType) {
  EXPECT_TRUE(failedWith(validateReportedPatch("[1,2]"), Errc::InvalidArgument,
                         "patch must be a JSON object, got array"));
  EXPECT_TRUE(failedWith(validateReportedPatch(R"("x")"), Errc::InvalidArgument,
                         "patch must be a JSON object, got string"));
  EXPECT_TRUE(failedWith(validateReportedPatch("3"), Errc::InvalidArgument,
                         "patch must be a JSON object, got number"));
  EXPECT_TRUE(failedWith(validateReportedPatch("null"), Errc::InvalidArgument,
                         "patch must be a JSON object, got null"));
  EXPECT_TRUE(failedWith(validateReportedPatch("true"), Errc::InvalidArgument,
                         "patch must be a JSON object, got boolean"));
}

TEST(ValidateReportedPatch, AcceptsTheHubsTenLevelsBelowTheSection) {
  // Ten objects below the patch's own, as in Microsoft's example ("one" to "ten" below "tags").
  EXPECT_TRUE(validateReportedPatch(nestedObjects(kTwinMaxDepth + 1)).has_value());
  EXPECT_TRUE(validateReportedPatch(R"({"a":)" + nestedArrays(kTwinMaxDepth) + "}").has_value());
}

TEST(ValidateReportedPatch, RejectsAnEleventhLevelNamingWhere) {
  EXPECT_TRUE(failedWith(validateReportedPatch(nestedObjects(kTwinMaxDepth + 2)),
                         Errc::InvalidArgument,
                         "the patch nests objects or arrays 11 levels deep at "
                         "/a/a/a/a/a/a/a/a/a/a/a; IoT Hub allows 10 levels in twins"));
  EXPECT_TRUE(failedWith(validateReportedPatch(R"({"a":)" + nestedArrays(kTwinMaxDepth + 1) + "}"),
                         Errc::InvalidArgument,
                         "the patch nests objects or arrays 11 levels deep at "
                         "/a/0/0/0/0/0/0/0/0/0/0; IoT Hub allows 10 levels in twins"));
}

TEST(ValidateReportedPatch, RejectsKeysTheHubDoesNotAllow) {
  // {JSON key as written, as the message shows it}
  const std::vector<std::pair<std::string, std::string>> keys = {
      {"a.b", "a.b"},       {"$version", "$version"}, {"with space", "with space"},
      {R"(tab\t)", "tab?"}, {R"(c1\u0085)", "c1?"},
  };
  for (const auto& [key, shown] : keys) {
    EXPECT_TRUE(failedWith(validateReportedPatch(R"({"net":{")" + key + R"(":1}})"),
                           Errc::InvalidArgument,
                           "the key at /net/" + shown +
                               " contains a character IoT Hub does not allow in twin keys ('.', "
                               "'$', space or a control character)"))
        << key;
  }
  EXPECT_TRUE(validateReportedPatch(R"({"caf\u00e9-_:#@!~":1,"\u6e29\u5ea6":2})").has_value());
}

TEST(ValidateReportedPatch, RejectsKeysOver1KBAndStringsOver4KB) {
  EXPECT_TRUE(validateReportedPatch("{\"" + std::string(kTwinKeyMaxBytes, 'k') + "\":1}"));
  EXPECT_TRUE(
      failedWith(validateReportedPatch("{\"" + std::string(kTwinKeyMaxBytes + 1, 'k') + "\":1}"),
                 Errc::MessageTooLarge,
                 "the key at /" + std::string(32, 'k') +
                     "... is 1025 bytes; IoT Hub allows at most 1 KB (1024 bytes) per twin key"));
  EXPECT_TRUE(validateReportedPatch(R"({"s":")" + std::string(kTwinStringMaxBytes, 'x') + "\"}"));
  EXPECT_TRUE(failedWith(
      validateReportedPatch(R"({"a":[1,")" + std::string(kTwinStringMaxBytes + 1, 'x') + "\"]}"),
      Errc::MessageTooLarge,
      "the string at /a/1 is 4097 bytes; IoT Hub allows at most 4 KB (4096 bytes) per twin "
      "string"));
}

TEST(ValidateReportedPatch, RejectsIntegersBeyondTheHubsRange) {
  EXPECT_TRUE(validateReportedPatch(R"({"max":4503599627370495,"min":-4503599627370496})"));
  EXPECT_TRUE(validateReportedPatch(R"({"real":1e300})"));
  for (const char* n : {"4503599627370496", "-4503599627370497", "18446744073709551615"}) {
    EXPECT_TRUE(failedWith(validateReportedPatch(std::string(R"({"n":)") + n + "}"),
                           Errc::InvalidArgument,
                           "the integer at /n is outside the range IoT Hub keeps in twins "
                           "(-2^52..2^52-1)"))
        << n;
  }
}

TEST(ValidateReportedPatch, CountsSizeAsTheHubDoes) {
  // Eight strings of 4 KB under 1-byte keys: 8 * 4097 = 32776 bytes, 8 over 32 KB; seven fit.
  auto patch = [](int n) {
    std::string json = "{";
    for (int i = 0; i < n; ++i) {
      json += (i ? ",\"" : "\"") + std::string(1, static_cast<char>('a' + i)) + "\":\"" +
              std::string(kTwinStringMaxBytes, 'v') + "\"";
    }
    return json + "}";
  };
  EXPECT_TRUE(validateReportedPatch(patch(7)).has_value());
  EXPECT_TRUE(failedWith(validateReportedPatch(patch(8)), Errc::MessageTooLarge,
                         "the patch counts 32776 bytes as IoT Hub counts twin size; reported "
                         "properties may hold at most 32 KB (32768 bytes)"));
  // Exactly 32768: seven such strings (28679), a deletion (0), a boolean (1 + 4), a number
  // (1 + 8), control characters (1 + 0), an object holding an array ("obj" 3 + "x" 1 + 8 + 8),
  // no JSON syntax or whitespace, and a last string of 4053 under a 1-byte key.
  auto exactly = [&](std::size_t last) {
    std::string json = patch(7);
    json.pop_back();
    return json +
           R"(, "n" : null, "t": true, "i": 5, "c": "\u0001\u0002", "obj": {"x": [1, 2]}, )" +
           "\"z\":\"" + std::string(last, 'v') + "\"\n}";
  };
  EXPECT_TRUE(validateReportedPatch(exactly(4053)).has_value())
      << errorOf(validateReportedPatch(exactly(4053)));
  EXPECT_TRUE(failedWith(validateReportedPatch(exactly(4054)), Errc::MessageTooLarge,
                         "the patch counts 32769 bytes as IoT Hub counts twin size; reported "
                         "properties may hold at most 32 KB (32768 bytes)"));
}

TEST(ValidateReportedPatch, RejectsNestingBeyondTheDepthLimit) {
  EXPECT_TRUE(failedWith(validateReportedPatch(nestedObjects(kMaxJsonDepth + 1)),
                         Errc::LimitExceeded, "JSON nested deeper than 32 levels at offset 160"));
  EXPECT_TRUE(failedWith(validateReportedPatch(R"({"a":)" + nestedArrays(kMaxJsonDepth) + "}"),
                         Errc::LimitExceeded, "JSON nested deeper than 32 levels at offset 36"));
}

TEST(ValidateReportedPatch, RejectsHugeNestingQuickly) {
  EXPECT_FALSE(validateReportedPatch(std::string(1000000, '[')).has_value());
}

TEST(ValidateJsonPayload, AcceptsEmptyAsNoPayload) {
  EXPECT_TRUE(validateJsonPayload("").has_value());
}

TEST(ValidateJsonPayload, AcceptsAnyJsonValue) {
  for (const char* json : {"null", "0", "-1.5e3", R"("text")", "true", "[]", R"({"a":[1,{}]})"}) {
    EXPECT_TRUE(validateJsonPayload(json).has_value()) << json;
  }
}

TEST(ValidateJsonPayload, RejectsWhitespaceOnly) {
  EXPECT_TRUE(failedWith(validateJsonPayload(" "), Errc::InvalidArgument,
                         "invalid JSON at offset 1: The document is empty."));
}

TEST(ValidateJsonPayload, RejectsInvalidJson) {
  EXPECT_TRUE(failedWith(validateJsonPayload("not json"), Errc::InvalidArgument,
                         "invalid JSON at offset 1: Invalid value."));
  EXPECT_TRUE(failedWith(validateJsonPayload("NaN"), Errc::InvalidArgument,
                         "invalid JSON at offset 0: Invalid value."));
  EXPECT_TRUE(failedWith(validateJsonPayload("[1,]"), Errc::InvalidArgument,
                         "invalid JSON at offset 3: Invalid value."));
}

TEST(ValidateJsonPayload, AppliesTheDepthLimit) {
  EXPECT_TRUE(validateJsonPayload(nestedArrays(kMaxJsonDepth)).has_value());
  EXPECT_TRUE(failedWith(validateJsonPayload(nestedArrays(kMaxJsonDepth + 1)), Errc::LimitExceeded,
                         "JSON nested deeper than 32 levels at offset 32"));
}

constexpr std::string_view kTwin =
    R"({"desired":{"telemetryInterval":30,"net":{"apn":"iot"},"$metadata":{},"$version":7},)"
    R"("reported":{"fw":"1.0","$version":3}})";

TEST(DesiredVersionOfTwin, ReadsDesiredVersion) {
  EXPECT_EQ(desiredVersionOfTwin(kTwin).value(), 7u);
}

TEST(DesiredVersionOfTwin, ReadsLargestVersion) {
  EXPECT_EQ(desiredVersionOfTwin(R"({"desired":{"$version":18446744073709551615}})").value(),
            18446744073709551615u);
}

TEST(DesiredVersionOfTwin, RejectsMalformedTwins) {
  EXPECT_TRUE(failedWith(desiredVersionOfTwin("{"), Errc::Protocol,
                         "twin: invalid JSON at offset 1: Missing a name for object member."));
  EXPECT_TRUE(failedWith(desiredVersionOfTwin("[]"), Errc::Protocol,
                         "twin must be a JSON object, got array"));
  EXPECT_TRUE(failedWith(desiredVersionOfTwin(R"({"reported":{"$version":1}})"), Errc::Protocol,
                         "twin has no 'desired' member"));
  EXPECT_TRUE(failedWith(desiredVersionOfTwin(R"({"desired":5})"), Errc::Protocol,
                         "twin 'desired' must be a JSON object, got number"));
  EXPECT_TRUE(failedWith(desiredVersionOfTwin(R"({"desired":{}})"), Errc::Protocol,
                         "twin 'desired' has no $version"));
}

TEST(DesiredVersionOfTwin, RejectsVersionThatIsNotANonNegativeInteger) {
  for (const char* version : {"-1", "1.5", R"("7")", "null", "18446744073709551616"}) {
    EXPECT_TRUE(
        failedWith(desiredVersionOfTwin(std::string(R"({"desired":{"$version":)") + version + "}}"),
                   Errc::Protocol, "twin 'desired' $version is not a non-negative integer"))
        << version;
  }
}

TEST(DesiredVersionOfTwin, AppliesTheDepthLimit) {
  EXPECT_TRUE(failedWith(desiredVersionOfTwin(nestedArrays(kMaxJsonDepth + 1)), Errc::Protocol,
                         "twin: JSON nested deeper than 32 levels at offset 32"));
}

TEST(VersionOfDesiredPatch, ReadsVersion) {
  EXPECT_EQ(versionOfDesiredPatch(R"({"telemetryInterval":60,"old":null,"$version":8})").value(),
            8u);
}

TEST(VersionOfDesiredPatch, RejectsMalformedPatches) {
  EXPECT_TRUE(failedWith(versionOfDesiredPatch(R"({"a":1})"), Errc::Protocol,
                         "desired patch has no $version"));
  EXPECT_TRUE(failedWith(versionOfDesiredPatch(R"({"$version":"8"})"), Errc::Protocol,
                         "desired patch $version is not a non-negative integer"));
  EXPECT_TRUE(failedWith(versionOfDesiredPatch("[8]"), Errc::Protocol,
                         "desired patch must be a JSON object, got array"));
  EXPECT_TRUE(failedWith(versionOfDesiredPatch(""), Errc::Protocol,
                         "desired patch: invalid JSON at offset 0: The document is empty."));
}

TEST(DesiredSectionOfTwin, ReturnsDesiredObjectAsCompactJson) {
  EXPECT_EQ(desiredSectionOfTwin(kTwin).value(),
            R"({"telemetryInterval":30,"net":{"apn":"iot"},"$metadata":{},"$version":7})");
}

TEST(DesiredSectionOfTwin, PreservesValuesAcrossReserialization) {
  const auto section = desiredSectionOfTwin(
      "{\"desired\":{\"s\":\"caf\\u00e9 \\\"q\\\" \\n\",\"d\":0.1,\"big\":18446744073709551615,"
      "\"neg\":-9223372036854775808,\"n\":null,\"b\":false,\"a\":[1,2.5e-10],\"$version\":1}}");
  ASSERT_TRUE(section.has_value()) << errorOf(section);
  EXPECT_EQ(
      *section,
      "{\"s\":\"caf\xC3\xA9 \\\"q\\\" \\n\",\"d\":0.1,\"big\":18446744073709551615,"
      "\"neg\":-9223372036854775808,\"n\":null,\"b\":false,\"a\":[1,2.5e-10],\"$version\":1}");
}

// Numbers that reach undefined behaviour or out-of-bounds reads in RapidJSON 1.1.0's own
// full-precision strtod (found by tests/fuzz/fuzz_json.cpp; Tencent/rapidjson#1249, #1251):
// twin.cpp converts numbers itself, exactly.
TEST(JsonNumbers, HostileNumbersParseSafelyAndExactly) {
  const auto section = desiredSectionOfTwin(
      "{\"desired\":{\"a\":[184467440737095516155,0e100,"
      "128.74836467836484838364836483643636483648e-336,1e-400,-1e-400,"
      "2.2250738585072011e-308,1.7976931348623157e308,-2147483649,4294967296,-0],\"$version\":3}}");
  ASSERT_TRUE(section.has_value()) << errorOf(section);
  EXPECT_EQ(*section,
            "{\"a\":[184467440737095500000.0,0.0,0.0,0.0,-0.0,2.225073858507201e-308,"
            "1.7976931348623157e308,-2147483649,4294967296,0],\"$version\":3}");
}

TEST(JsonNumbers, RejectsNumbersBeyondDouble) {
  EXPECT_TRUE(failedWith(validateJsonPayload("1.8e308"), Errc::InvalidArgument,
                         "invalid JSON at offset 0: Number too big to be stored in double."));
  EXPECT_TRUE(failedWith(validateJsonPayload("[-1e309]"), Errc::InvalidArgument,
                         "invalid JSON at offset 1: Number too big to be stored in double."));
  EXPECT_TRUE(failedWith(versionOfDesiredPatch(R"({"$version":18446744073709551616})"),
                         Errc::Protocol, "desired patch $version is not a non-negative integer"));
}

// RapidJSON 1.1.0 decodes a lone low surrogate escape into bytes that are not UTF-8, which the
// hub and D-Bus refuse (found by tests/fuzz/fuzz_json.cpp).
TEST(JsonStrings, RejectsLoneSurrogateEscapes) {
  EXPECT_TRUE(failedWith(validateJsonPayload(R"("caf\uDC00")"), Errc::InvalidArgument,
                         "invalid JSON at offset 11: The surrogate pair in string is invalid."));
  EXPECT_FALSE(validateReportedPatch(R"({"\uDFFF":1})").has_value());
  EXPECT_FALSE(validateReportedPatch(R"({"a":"\uD800"})").has_value());
  EXPECT_TRUE(validateReportedPatch(R"({"a":"\uD83D\uDE00 \u00e9 \u0000"})").has_value());
}

TEST(DesiredSectionOfTwin, RejectsTwinWithoutDesired) {
  EXPECT_TRUE(failedWith(desiredSectionOfTwin(R"({"reported":{}})"), Errc::Protocol,
                         "twin has no 'desired' member"));
}

}  // namespace
}  // namespace iothubd::proto
