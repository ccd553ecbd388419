// SPDX-License-Identifier: MIT
#include "iothubd/proto/percent_encoding.hpp"

#include <gtest/gtest.h>

#include <string>

#include "test_helpers.hpp"

namespace iothubd::proto {
namespace {

using core::Errc;
using test::failedWith;

TEST(PercentEncode, LeavesUnreservedCharactersAlone) {
  EXPECT_EQ(percentEncode("AZaz09-._~"), "AZaz09-._~");
}

TEST(PercentEncode, EncodesSpaceAsPercent20NeverPlus) {
  EXPECT_EQ(percentEncode("alert level"), "alert%20level");
}

TEST(PercentEncode, EncodesReservedCharacters) {
  EXPECT_EQ(percentEncode("/"), "%2F");
  EXPECT_EQ(percentEncode("%"), "%25");
  EXPECT_EQ(percentEncode("="), "%3D");
  EXPECT_EQ(percentEncode("&"), "%26");
  EXPECT_EQ(percentEncode("+"), "%2B");
  EXPECT_EQ(percentEncode("$"), "%24");
  EXPECT_EQ(percentEncode("?#[]@!'()*,;:"), "%3F%23%5B%5D%40%21%27%28%29%2A%2C%3B%3A");
}

TEST(PercentEncode, KeepsTilde) {
  EXPECT_EQ(percentEncode("~user"), "~user");
}

TEST(PercentEncode, EncodesUtf8ByteByByteWithUpperCaseHex) {
  EXPECT_EQ(percentEncode("\xC3\xA9"), "%C3%A9");         // "é"
  EXPECT_EQ(percentEncode("\xE2\x82\xAC"), "%E2%82%AC");  // "€"
}

TEST(PercentEncode, EncodesControlAndNulBytes) {
  EXPECT_EQ(percentEncode(std::string("a\0b\n", 4)), "a%00b%0A");
  EXPECT_EQ(percentEncode("\x7F\xFF"), "%7F%FF");
}

TEST(PercentEncode, EmptyStaysEmpty) {
  EXPECT_EQ(percentEncode(""), "");
}

TEST(PercentEncode, AppendsRunsAndEscapesToWhatIsThere) {
  std::string out = "a=";
  appendPercentEncoded(out, "x y/z~");
  appendPercentEncoded(out, "");
  appendPercentEncoded(out, "%");
  EXPECT_EQ(out, "a=x%20y%2Fz~%25");
}

TEST(PercentDecode, DecodesUpperAndLowerCaseHex) {
  EXPECT_EQ(percentDecode("a%2Fb%2fc").value(), "a/b/c");
  EXPECT_EQ(percentDecode("%C3%A9").value(), "\xC3\xA9");
}

TEST(PercentDecode, KeepsPlusAsPlus) {
  EXPECT_EQ(percentDecode("a+b%2B").value(), "a+b+");
  EXPECT_EQ(percentDecode("a+b").value(), "a+b");
}

TEST(PercentDecode, CopiesUnencodedBytes) {
  EXPECT_EQ(percentDecode("plain text/with=stuff").value(), "plain text/with=stuff");
}

TEST(PercentDecode, EmptyStaysEmpty) {
  EXPECT_EQ(percentDecode("").value(), "");
}

TEST(PercentDecode, DecodesNul) {
  EXPECT_EQ(percentDecode("a%00b").value(), std::string("a\0b", 3));
}

TEST(PercentDecode, RejectsPercentAtEnd) {
  EXPECT_TRUE(failedWith(percentDecode("abc%"), Errc::InvalidArgument,
                         "malformed percent-escape at offset 3"));
}

TEST(PercentDecode, RejectsPercentWithOneDigit) {
  EXPECT_TRUE(failedWith(percentDecode("%4"), Errc::InvalidArgument,
                         "malformed percent-escape at offset 0"));
}

TEST(PercentDecode, RejectsNonHexDigits) {
  EXPECT_TRUE(failedWith(percentDecode("ok%G1"), Errc::InvalidArgument,
                         "malformed percent-escape at offset 2"));
  EXPECT_TRUE(failedWith(percentDecode("%1G"), Errc::InvalidArgument,
                         "malformed percent-escape at offset 0"));
  EXPECT_TRUE(failedWith(percentDecode("% 1"), Errc::InvalidArgument,
                         "malformed percent-escape at offset 0"));
}

TEST(PercentDecode, RejectsDoublePercent) {
  EXPECT_TRUE(failedWith(percentDecode("100%%"), Errc::InvalidArgument,
                         "malformed percent-escape at offset 3"));
}

TEST(PercentEncoding, RoundTripsEveryByte) {
  std::string all;
  for (int c = 0; c < 256; ++c) {
    all.push_back(static_cast<char>(c));
  }
  const std::string encoded = percentEncode(all);
  EXPECT_EQ(encoded.size(), 66 + 190 * 3);  // 66 unreserved bytes, the rest as %XX
  EXPECT_EQ(percentDecode(encoded).value(), all);
}

TEST(PercentEncoding, RoundTripsTypicalPropertyValues) {
  for (const std::string value : {"application/json", "a/b&c", "x=1;y=2", "50%", "alert level",
                                  "caf\xC3\xA9", "+1 555", ""}) {
    EXPECT_EQ(percentDecode(percentEncode(value)).value(), value);
  }
}

}  // namespace
}  // namespace iothubd::proto
