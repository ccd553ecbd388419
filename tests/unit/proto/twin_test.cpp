// SPDX-License-Identifier: MIT
#include "iothubd/proto/twin.hpp"

#include <gtest/gtest.h>

#include <string>

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

TEST(ValidateReportedPatch, AcceptsNestingUpToTheDepthLimit) {
  EXPECT_TRUE(validateReportedPatch(nestedObjects(kMaxJsonDepth)).has_value());
  EXPECT_TRUE(
      validateReportedPatch(R"({"a":)" + nestedArrays(kMaxJsonDepth - 1) + "}").has_value());
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
