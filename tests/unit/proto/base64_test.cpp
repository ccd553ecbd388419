// SPDX-License-Identifier: MIT
#include "iothubd/proto/base64.hpp"

#include <gtest/gtest.h>

#include <string>

#include "test_helpers.hpp"

namespace iothubd::proto {
namespace {

using core::Errc;
using test::failedWith;

TEST(Base64, EncodesRfc4648TestVectors) {
  EXPECT_EQ(base64Encode(""), "");
  EXPECT_EQ(base64Encode("f"), "Zg==");
  EXPECT_EQ(base64Encode("fo"), "Zm8=");
  EXPECT_EQ(base64Encode("foo"), "Zm9v");
  EXPECT_EQ(base64Encode("foob"), "Zm9vYg==");
  EXPECT_EQ(base64Encode("fooba"), "Zm9vYmE=");
  EXPECT_EQ(base64Encode("foobar"), "Zm9vYmFy");
}

TEST(Base64, DecodesRfc4648TestVectors) {
  EXPECT_EQ(base64Decode("").value(), "");
  EXPECT_EQ(base64Decode("Zg==").value(), "f");
  EXPECT_EQ(base64Decode("Zm8=").value(), "fo");
  EXPECT_EQ(base64Decode("Zm9v").value(), "foo");
  EXPECT_EQ(base64Decode("Zm9vYg==").value(), "foob");
  EXPECT_EQ(base64Decode("Zm9vYmE=").value(), "fooba");
  EXPECT_EQ(base64Decode("Zm9vYmFy").value(), "foobar");
}

TEST(Base64, UsesStandardAlphabetWithPlusAndSlash) {
  EXPECT_EQ(base64Encode("\xFB\xFF\xBF"), "+/+/");
  EXPECT_EQ(base64Decode("+/+/").value(), "\xFB\xFF\xBF");
}

TEST(Base64, NeverInsertsLineBreaks) {
  const std::string encoded = base64Encode(std::string(200, 'x'));
  EXPECT_EQ(encoded.find('\n'), std::string::npos);
  EXPECT_EQ(encoded.size(), 268u);
}

TEST(Base64, RoundTripsBinaryOfEveryLengthUpTo64) {
  std::string bytes;
  for (int n = 0; n <= 64; ++n) {
    EXPECT_EQ(base64Decode(base64Encode(bytes)).value(), bytes) << "length " << n;
    bytes.push_back(static_cast<char>((n * 37 + 11) & 0xFF));
  }
}

TEST(Base64, RoundTripsNulAndHighBytes) {
  const std::string bytes("\x00\xFF\x00\x80", 4);
  EXPECT_EQ(base64Decode(base64Encode(bytes)).value(), bytes);
}

TEST(Base64, RejectsLengthNotMultipleOfFour) {
  EXPECT_TRUE(failedWith(base64Decode("Zm9"), Errc::InvalidArgument,
                         "invalid base64: length 3 is not a multiple of 4"));
  EXPECT_TRUE(failedWith(base64Decode("Zg"), Errc::InvalidArgument,
                         "invalid base64: length 2 is not a multiple of 4"));
}

TEST(Base64, RejectsCharactersOutsideTheAlphabet) {
  EXPECT_TRUE(failedWith(base64Decode("Zm9v!mFy"), Errc::InvalidArgument,
                         "invalid base64: character at offset 4 is not in the alphabet"));
}

TEST(Base64, RejectsUrlSafeAlphabet) {
  EXPECT_FALSE(base64Decode("-_-_").has_value());
}

TEST(Base64, RejectsWhitespaceAndNewlines) {
  EXPECT_TRUE(failedWith(base64Decode("Zm9v Zm8="), Errc::InvalidArgument,
                         "invalid base64: length 9 is not a multiple of 4"));
  EXPECT_TRUE(failedWith(base64Decode("Zm9\n"), Errc::InvalidArgument,
                         "invalid base64: character at offset 3 is not in the alphabet"));
}

TEST(Base64, RejectsMisplacedPadding) {
  EXPECT_TRUE(failedWith(base64Decode("Zg=a"), Errc::InvalidArgument,
                         "invalid base64: misplaced padding at offset 2"));
  EXPECT_TRUE(failedWith(base64Decode("Z==="), Errc::InvalidArgument,
                         "invalid base64: misplaced padding at offset 1"));
  EXPECT_TRUE(failedWith(base64Decode("===="), Errc::InvalidArgument,
                         "invalid base64: misplaced padding at offset 0"));
  EXPECT_TRUE(failedWith(base64Decode("Zg==Zm9v"), Errc::InvalidArgument,
                         "invalid base64: misplaced padding at offset 2"));
}

TEST(Base64, RejectsNonCanonicalPaddingBits) {
  EXPECT_TRUE(failedWith(base64Decode("Zh=="), Errc::InvalidArgument,
                         "invalid base64: non-zero bits before the padding"));
  EXPECT_TRUE(failedWith(base64Decode("Zm9="), Errc::InvalidArgument,
                         "invalid base64: non-zero bits before the padding"));
}

}  // namespace
}  // namespace iothubd::proto
