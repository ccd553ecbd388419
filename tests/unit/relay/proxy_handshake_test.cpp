// SPDX-License-Identifier: MIT
#include "proxy_handshake.hpp"

#include <gtest/gtest.h>

namespace iothubd::relay {
namespace {

using Type = core::ProxySettings::Type;

core::ProxySettings proxy(Type type, std::string user = "", std::string password = "") {
  core::ProxySettings p;
  p.type = type;
  p.host = "proxy";
  p.port = 3128;
  p.username = std::move(user);
  p.password = core::Secret<>(std::move(password));
  return p;
}

std::string bytes(std::initializer_list<int> list) {
  std::string out;
  for (int b : list) {
    out.push_back(static_cast<char>(b));
  }
  return out;
}

// ---- HTTP CONNECT ------------------------------------------------------------------------------

TEST(HttpConnect, RequestWithAndWithoutBasicCredentials) {
  auto plain = ProxyHandshake::create(proxy(Type::Http), "hub.example", 443);
  EXPECT_EQ(plain->takeOutput(),
            "CONNECT hub.example:443 HTTP/1.1\r\nHost: hub.example:443\r\n\r\n");
  EXPECT_EQ(plain->takeOutput(), "") << "sent once";
  // RFC 7617 2.1 example: Aladdin / open sesame.
  auto withUser =
      ProxyHandshake::create(proxy(Type::Http, "Aladdin", "open sesame"), "2001:db8::1", 8883);
  EXPECT_EQ(withUser->takeOutput(),
            "CONNECT [2001:db8::1]:8883 HTTP/1.1\r\nHost: [2001:db8::1]:8883\r\n"
            "Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n");
}

TEST(HttpConnect, AnyTwoHundredOpensTheTunnelAcrossFragmentedReads) {
  auto h = ProxyHandshake::create(proxy(Type::Http), "hub", 443);
  (void)h->takeOutput();
  std::string response = "HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy\r\n\r\n";
  for (std::size_t i = 0; i + 1 < response.size(); ++i) {
    auto step = h->feed(response.substr(i, 1));
    ASSERT_TRUE(step);
    ASSERT_FALSE(*step) << i;
  }
  auto done = h->feed(response.substr(response.size() - 1));
  ASSERT_TRUE(done && *done);
  EXPECT_EQ(h->takeLeftover(), "");
}

TEST(HttpConnect, RefusalsNameTheStatusButNeverTheCredentials) {
  auto h = ProxyHandshake::create(proxy(Type::Http, "alice", "hunter2"), "hub", 443);
  (void)h->takeOutput();
  auto r =
      h->feed("HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, core::Errc::Unauthorized);
  EXPECT_EQ(r.error().message,
            "the HTTP proxy refused the credentials (407 Proxy Authentication Required)");

  auto anonymous = ProxyHandshake::create(proxy(Type::Http), "hub", 443);
  auto a = anonymous->feed("HTTP/1.1 407 Proxy Authentication Required\r\n\r\n");
  ASSERT_FALSE(a);
  EXPECT_NE(a.error().message.find("proxy_username"), std::string::npos);

  auto forbidden = ProxyHandshake::create(proxy(Type::Http), "hub", 443);
  auto f = forbidden->feed("HTTP/1.1 403 Access violation\r\n\r\n");
  ASSERT_FALSE(f);
  EXPECT_EQ(f.error().code, core::Errc::ConnectionFailed);
  EXPECT_EQ(f.error().message, "the HTTP proxy refused CONNECT (403 Access violation)");

  auto garbage = ProxyHandshake::create(proxy(Type::Http), "hub", 443);
  auto g = garbage->feed(bytes({5, 0}) + "\r\n\r\n");
  ASSERT_FALSE(g);
  EXPECT_EQ(g.error().code, core::Errc::Protocol);
}

// ---- SOCKS5 ------------------------------------------------------------------------------------

TEST(Socks5, NoAuthenticationWithADomainName) {
  auto h = ProxyHandshake::create(proxy(Type::Socks5), "hub.example", 8883);
  EXPECT_EQ(h->takeOutput(), bytes({5, 1, 0}));
  auto method = h->feed(bytes({5, 0}));
  ASSERT_TRUE(method && !*method);
  EXPECT_EQ(h->takeOutput(), bytes({5, 1, 0, 3, 11}) + "hub.example" + bytes({0x22, 0xB3}));
  // Reply with an IPv4 bound address, split anywhere, followed by early server bytes.
  std::string reply = bytes({5, 0, 0, 1, 127, 0, 0, 1, 0x04, 0x38}) + "TLS";
  auto part = h->feed(reply.substr(0, 3));
  ASSERT_TRUE(part && !*part);
  auto done = h->feed(reply.substr(3));
  ASSERT_TRUE(done && *done);
  EXPECT_EQ(h->takeLeftover(), "TLS");
}

TEST(Socks5, UsernamePasswordSubnegotiation) {
  auto h = ProxyHandshake::create(proxy(Type::Socks5, "alice", "pw"), "10.1.2.3", 443);
  EXPECT_EQ(h->takeOutput(), bytes({5, 2, 0, 2}));
  ASSERT_TRUE(h->feed(bytes({5, 2})));
  EXPECT_EQ(h->takeOutput(), bytes({1, 5}) + "alice" + bytes({2}) + "pw");
  ASSERT_TRUE(h->feed(bytes({1, 0})));
  EXPECT_EQ(h->takeOutput(), bytes({5, 1, 0, 1, 10, 1, 2, 3, 1, 0xBB}));
  // Domain-name bound address (ATYP 3) and IPv6 (ATYP 4) replies have their own lengths.
  auto done = h->feed(bytes({5, 0, 0, 3, 4}) + "host" + bytes({0, 80}));
  ASSERT_TRUE(done && *done);
  auto v6 = ProxyHandshake::create(proxy(Type::Socks5), "::1", 443);
  (void)v6->takeOutput();
  ASSERT_TRUE(v6->feed(bytes({5, 0})));
  EXPECT_EQ(v6->takeOutput(),
            bytes({5, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0xBB}));
  auto partial = v6->feed(bytes({5, 0, 0, 4}) + std::string(16, '\0'));
  ASSERT_TRUE(partial && !*partial) << "the port is still missing";
  auto v6done = v6->feed(bytes({1, 0xBB}));
  ASSERT_TRUE(v6done && *v6done);
}

TEST(Socks5, RefusalsAreClassified) {
  auto badPassword = ProxyHandshake::create(proxy(Type::Socks5, "alice", "pw"), "hub", 443);
  ASSERT_TRUE(badPassword->feed(bytes({5, 2})));
  auto r = badPassword->feed(bytes({1, 1}));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, core::Errc::Unauthorized);
  EXPECT_EQ(r.error().message.find("pw"), std::string::npos);

  auto needsAuth = ProxyHandshake::create(proxy(Type::Socks5), "hub", 443);
  auto n = needsAuth->feed(bytes({5, 0xFF}));
  ASSERT_FALSE(n);
  EXPECT_NE(n.error().message.find("requires authentication"), std::string::npos);

  auto refused = ProxyHandshake::create(proxy(Type::Socks5), "hub", 443);
  ASSERT_TRUE(refused->feed(bytes({5, 0})));
  auto c = refused->feed(bytes({5, 5, 0, 1, 0, 0, 0, 0, 0, 0}));
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code, core::Errc::ConnectionFailed);
  EXPECT_EQ(c.error().message, "the SOCKS5 proxy could not connect to hub:443: connection refused");

  for (const std::string& bad : {bytes({4, 0}), bytes({5, 7})}) {
    auto h = ProxyHandshake::create(proxy(Type::Socks5), "hub", 443);
    auto e = h->feed(bad);
    ASSERT_FALSE(e);
    EXPECT_EQ(e.error().code, core::Errc::Protocol);
  }
  auto badAtyp = ProxyHandshake::create(proxy(Type::Socks5), "hub", 443);
  ASSERT_TRUE(badAtyp->feed(bytes({5, 0})));
  auto a = badAtyp->feed(bytes({5, 0, 0, 9, 0}));
  ASSERT_FALSE(a);
  EXPECT_EQ(a.error().message, "SOCKS5 proxy: unknown address type in reply");
}

// ---- SOCKS4 / 4a -------------------------------------------------------------------------------

TEST(Socks4, LiteralAddressOrRemoteNameResolution) {
  auto literal = ProxyHandshake::create(proxy(Type::Socks4, "bob"), "192.0.2.7", 8883);
  EXPECT_EQ(literal->takeOutput(), bytes({4, 1, 0x22, 0xB3, 192, 0, 2, 7}) + "bob" + bytes({0}));
  auto name = ProxyHandshake::create(proxy(Type::Socks4), "hub.example", 443);
  EXPECT_EQ(name->takeOutput(), bytes({4, 1, 1, 0xBB, 0, 0, 0, 1, 0}) + "hub.example" + bytes({0}));
  auto part = name->feed(bytes({0, 90, 0, 0}));
  ASSERT_TRUE(part && !*part);
  auto done = name->feed(bytes({0, 0, 0, 0}) + "x");
  ASSERT_TRUE(done && *done);
  EXPECT_EQ(name->takeLeftover(), "x");
}

TEST(Socks4, RefusalsAreClassified) {
  struct Case {
    int code;
    core::Errc errc;
  };
  for (auto [code, errc] :
       {Case{91, core::Errc::ConnectionFailed}, Case{92, core::Errc::Unauthorized},
        Case{93, core::Errc::Unauthorized}, Case{17, core::Errc::Protocol}}) {
    auto h = ProxyHandshake::create(proxy(Type::Socks4), "hub", 443);
    auto r = h->feed(bytes({0, code, 0, 0, 0, 0, 0, 0}));
    ASSERT_FALSE(r) << code;
    EXPECT_EQ(r.error().code, errc) << code;
  }
  auto h = ProxyHandshake::create(proxy(Type::Socks4), "hub", 443);
  EXPECT_FALSE(h->feed(bytes({4, 90, 0, 0, 0, 0, 0, 0})));
}

}  // namespace
}  // namespace iothubd::relay
