// SPDX-License-Identifier: MIT
#include "iothubd/core/utf8.hpp"

#include <gtest/gtest.h>

namespace iothubd::core {
namespace {

TEST(ValidUtf8, KeepsValidTextOfEveryLength) {
  const std::string text = "a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80z";  // a é € 😀 z
  EXPECT_EQ(validUtf8(text), text);
}

TEST(ValidUtf8, ReplacesEveryByteThatStartsNoValidCharacter) {
  EXPECT_EQ(validUtf8("x\xC3"), "x?");                  // cut after the lead byte
  EXPECT_EQ(validUtf8("\xE2\x82"), "??");               // cut inside
  EXPECT_EQ(validUtf8("\x80\xBF"), "??");               // lone continuation bytes
  EXPECT_EQ(validUtf8("\xC0\xAF"), "??");               // overlong '/'
  EXPECT_EQ(validUtf8("\xED\xA0\x80"), "???");          // surrogate U+D800
  EXPECT_EQ(validUtf8("\xEF\xBF\xBE"), "???");          // noncharacter U+FFFE
  EXPECT_EQ(validUtf8("\xF4\x90\x80\x80"), "????");     // beyond U+10FFFF
  EXPECT_EQ(validUtf8(std::string("a\0b", 3)), "a?b");  // NUL
}

TEST(ValidUtf8, CutsLongTextAtACharacterBoundary) {
  EXPECT_EQ(validUtf8("abcdef", 4), "abcd...");
  EXPECT_EQ(validUtf8("ab\xC3\xA9", 3), "ab...");  // é does not fit whole
  EXPECT_EQ(validUtf8("abcd", 4), "abcd");
}

}  // namespace
}  // namespace iothubd::core
