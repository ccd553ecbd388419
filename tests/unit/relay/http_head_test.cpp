// SPDX-License-Identifier: MIT
#include "http_head.hpp"

#include <gtest/gtest.h>

namespace iothubd::relay {
namespace {

TEST(HttpHead, ParsesStatusHeadersAndKeepsWhatFollows) {
  HttpHeadReader r;
  auto done = r.feed(
      "HTTP/1.1 200 Connection established\r\nProxy-Agent: tinyproxy/1.11\r\n"
      "X-Empty:\r\n\r\n\x16\x03");
  ASSERT_TRUE(done) << done.error().message;
  EXPECT_TRUE(*done);
  EXPECT_EQ(r.head().status, 200);
  EXPECT_EQ(r.head().reason, "Connection established");
  EXPECT_EQ(r.head().header("proxy-agent"), "tinyproxy/1.11");
  EXPECT_EQ(r.head().header("X-Empty"), "");
  EXPECT_FALSE(r.head().header("Missing").has_value());
  EXPECT_EQ(r.takeLeftover(), "\x16\x03");
}

TEST(HttpHead, EveryFragmentationOfTheSameResponseGivesTheSameResult) {
  const std::string response =
      "HTTP/1.0 407 Proxy Authentication Required\r\n"
      "Proxy-Authenticate: Basic realm=\"p\"\r\nConnection: close\r\n\r\nrest";
  for (std::size_t cut = 0; cut <= response.size(); ++cut) {
    HttpHeadReader r;
    auto first = r.feed(std::string_view(response).substr(0, cut));
    ASSERT_TRUE(first) << cut;
    auto second = r.feed(std::string_view(response).substr(cut));
    ASSERT_TRUE(second) << cut;
    ASSERT_TRUE(*second) << cut;
    EXPECT_EQ(r.head().status, 407);
    EXPECT_EQ(r.head().header("proxy-authenticate"), "Basic realm=\"p\"");
    EXPECT_EQ(r.takeLeftover(), "rest") << cut;
  }
  // One byte at a time.
  HttpHeadReader bytewise;
  bool complete = false;
  for (char c : response) {
    auto step = bytewise.feed(std::string_view(&c, 1));
    ASSERT_TRUE(step);
    complete = *step;
  }
  EXPECT_TRUE(complete);
  EXPECT_EQ(bytewise.takeLeftover(), "rest");
}

TEST(HttpHead, BareLineFeedsAreTolerated) {
  HttpHeadReader r;
  auto done = r.feed("HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\n\n");
  ASSERT_TRUE(done && *done);
  EXPECT_EQ(r.head().status, 101);
  EXPECT_EQ(r.head().header("upgrade"), "websocket");
}

TEST(HttpHead, TokenListsMatchCaseInsensitively) {
  HttpHeadReader r;
  ASSERT_TRUE(r.feed("HTTP/1.1 101 x\r\nConnection: keep-alive, UPGRADE\r\n\r\n"));
  EXPECT_TRUE(r.head().headerHasToken("connection", "upgrade"));
  EXPECT_FALSE(r.head().headerHasToken("connection", "close"));
}

TEST(HttpHead, MalformedResponsesAreProtocolErrors) {
  for (const char* bad :
       {"SSH-2.0-OpenSSH\r\n\r\n", "HTTP/2 200 OK\r\n\r\n", "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n", "HTTP/1.1 abc OK\r\n\r\n", "HTTP/1.1 099 x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "HTTP/1.1 200 OK\r\n: empty\r\n\r\n",
        "HTTP/1.1 200 OK\r\nBad Name: v\r\n\r\n", "HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n",
        "HTTP/1.1200 OK\r\n\r\n"}) {
    HttpHeadReader r;
    auto result = r.feed(bad);
    ASSERT_FALSE(result) << bad;
    EXPECT_EQ(result.error().code, core::Errc::Protocol) << bad;
  }
}

TEST(HttpHead, ControlBytesNeverReachTheMessage) {
  HttpHeadReader r;
  auto result = r.feed(std::string("HTTP/1.1 abc \x1b[31mred\r\n\r\n"));
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error().message.find('\x1b'), std::string::npos);
}

TEST(HttpHead, AHeadThatNeverEndsIsBounded) {
  HttpHeadReader r;
  std::string chunk = "HTTP/1.1 200 OK\r\n";
  ASSERT_TRUE(r.feed(chunk));
  std::string filler(1024, 'x');
  core::Result<bool> last = false;
  for (int i = 0; i < 20 && last && !*last; ++i) {
    last = r.feed("X-Filler: " + filler + "\r\n");
  }
  ASSERT_FALSE(last);
  EXPECT_EQ(last.error().message, "HTTP response head longer than 16 KiB");
}

}  // namespace
}  // namespace iothubd::relay
