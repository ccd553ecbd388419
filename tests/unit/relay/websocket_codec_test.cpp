// SPDX-License-Identifier: MIT
#include "websocket_codec.hpp"

#include <gtest/gtest.h>

namespace iothubd::relay {
namespace {

using Kind = WsEvent::Kind;

std::string bytes(std::initializer_list<int> list) {
  std::string out;
  for (int b : list) {
    out.push_back(static_cast<char>(b));
  }
  return out;
}

/// An unmasked server frame.
std::string serverFrame(int firstByte, std::string_view payload) {
  std::string out;
  out.push_back(static_cast<char>(firstByte));
  if (payload.size() <= 125) {
    out.push_back(static_cast<char>(payload.size()));
  } else if (payload.size() <= 0xFFFF) {
    out.push_back(126);
    out.push_back(static_cast<char>(payload.size() >> 8));
    out.push_back(static_cast<char>(payload.size() & 0xFF));
  } else {
    out.push_back(127);
    for (int shift = 56; shift >= 0; shift -= 8) {
      out.push_back(
          static_cast<char>((static_cast<std::uint64_t>(payload.size()) >> shift) & 0xFF));
    }
  }
  out.append(payload);
  return out;
}

core::Result<std::vector<WsEvent>> decodeAll(std::string_view stream) {
  WebSocketDecoder d;
  std::vector<WsEvent> events;
  if (auto r = d.feed(stream, events); !r) {
    return core::fail(r.error());
  }
  return events;
}

std::string errorOf(std::string_view stream) {
  auto r = decodeAll(stream);
  EXPECT_FALSE(r) << "expected a protocol error";
  return r ? std::string() : r.error().message;
}

// ---- encoding ---------------------------------------------------------------------------------

TEST(WebSocketEncode, Rfc6455MaskedExample) {
  // RFC 6455 5.7: a masked "Hello" with key 37 fa 21 3d (binary opcode instead of text).
  EXPECT_EQ(encodeClientFrame(WsOpcode::Binary, "Hello", {0x37, 0xfa, 0x21, 0x3d}),
            bytes({0x82, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58}));
}

TEST(WebSocketEncode, UsesTheShortestLengthForm) {
  const WsMask zero{0, 0, 0, 0};
  struct Case {
    std::size_t size;
    std::size_t headerSize;
  };
  for (auto [size, headerSize] :
       {Case{0, 6}, Case{125, 6}, Case{126, 8}, Case{65535, 8}, Case{65536, 14}}) {
    std::string frame = encodeClientFrame(WsOpcode::Binary, std::string(size, 'a'), zero);
    ASSERT_EQ(frame.size(), headerSize + size) << size;
    auto len7 = static_cast<std::uint8_t>(frame[1]) & 0x7F;
    EXPECT_EQ(static_cast<std::uint8_t>(frame[1]) & 0x80, 0x80) << "client frames are masked";
    if (size <= 125) {
      EXPECT_EQ(len7, size);
    } else if (size <= 0xFFFF) {
      EXPECT_EQ(len7, 126);
      EXPECT_EQ((static_cast<std::uint8_t>(frame[2]) << 8) | static_cast<std::uint8_t>(frame[3]),
                size);
    } else {
      EXPECT_EQ(len7, 127);
      EXPECT_EQ(frame.substr(2, 8), bytes({0, 0, 0, 0, 0, 1, 0, 0}));
    }
  }
}

TEST(WebSocketEncode, ControlFramesAndClosePayload) {
  EXPECT_EQ(encodeClientFrame(WsOpcode::Close, closePayload(1000), {0, 0, 0, 0}),
            bytes({0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8}));
  EXPECT_EQ(encodeClientFrame(WsOpcode::Pong, "", {1, 2, 3, 4}), bytes({0x8A, 0x80, 1, 2, 3, 4}));
  EXPECT_EQ(closePayload(1002, "bad").size(), 5u);
  EXPECT_EQ(closePayload(1000, std::string(200, 'r')).size(), 125u)
      << "control payloads stay <= 125";
}

// ---- decoding ---------------------------------------------------------------------------------

TEST(WebSocketDecode, BinaryFrameBecomesData) {
  auto events = decodeAll(serverFrame(0x82, "Hello"));
  ASSERT_TRUE(events) << events.error().message;
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].kind, Kind::Data);
  EXPECT_EQ((*events)[0].payload, "Hello");
}

TEST(WebSocketDecode, AllThreeLengthFormsDecode) {
  for (std::size_t size : {0u, 1u, 125u, 126u, 127u, 65535u, 65536u, 70000u}) {
    std::string payload(size, '\0');
    for (std::size_t i = 0; i < size; ++i) {
      payload[i] = static_cast<char>(i * 7);
    }
    auto events = decodeAll(serverFrame(0x82, payload));
    ASSERT_TRUE(events) << size << ": " << events.error().message;
    std::string got;
    for (const auto& e : *events) {
      got += e.payload;
    }
    EXPECT_EQ(got, payload) << size;
  }
}

TEST(WebSocketDecode, FragmentedMessagesAndInterleavedControlFrames) {
  // RFC 6455 5.4: control frames may appear between the fragments of a message.
  std::string stream = serverFrame(0x02, "MQ") + serverFrame(0x89, "ping!") +
                       serverFrame(0x00, "TT") + serverFrame(0x80, "!") + serverFrame(0x8A, "") +
                       serverFrame(0x88, closePayload(1000, "bye"));
  auto events = decodeAll(stream);
  ASSERT_TRUE(events) << events.error().message;
  std::string data;
  std::vector<Kind> controls;
  for (const auto& e : *events) {
    if (e.kind == Kind::Data) {
      data += e.payload;
    } else {
      controls.push_back(e.kind);
    }
  }
  EXPECT_EQ(data, "MQTT!");
  EXPECT_EQ(controls, (std::vector<Kind>{Kind::Ping, Kind::Pong, Kind::Close}));
  EXPECT_EQ(events->back().closeCode, 1000);
  EXPECT_EQ(events->back().closeReason, "bye");
}

TEST(WebSocketDecode, EverySplitPointGivesTheSameEvents) {
  std::string payload(300, 'x');
  std::string stream = serverFrame(0x82, "abc") + serverFrame(0x89, "p") +
                       serverFrame(0x82, payload) + serverFrame(0x02, "") + serverFrame(0x80, "z") +
                       serverFrame(0x88, closePayload(4000));
  for (std::size_t cut1 = 0; cut1 <= stream.size(); cut1 += 7) {
    for (std::size_t cut2 = cut1; cut2 <= stream.size(); cut2 += 13) {
      WebSocketDecoder d;
      std::vector<WsEvent> events;
      ASSERT_TRUE(d.feed(std::string_view(stream).substr(0, cut1), events));
      ASSERT_TRUE(d.feed(std::string_view(stream).substr(cut1, cut2 - cut1), events));
      ASSERT_TRUE(d.feed(std::string_view(stream).substr(cut2), events));
      std::string data;
      int pings = 0;
      int closes = 0;
      for (const auto& e : events) {
        data += e.kind == Kind::Data ? e.payload : "";
        pings += e.kind == Kind::Ping;
        closes += e.kind == Kind::Close;
      }
      ASSERT_EQ(data, "abc" + payload + "z") << cut1 << "/" << cut2;
      ASSERT_EQ(pings, 1);
      ASSERT_EQ(closes, 1);
      EXPECT_TRUE(d.closed());
    }
  }
}

TEST(WebSocketDecode, PartialFrameYieldsTheBytesSoFarAndWaitsForTheRest) {
  WebSocketDecoder d;
  std::vector<WsEvent> events;
  std::string frame = serverFrame(0x82, "0123456789");
  ASSERT_TRUE(d.feed(frame.substr(0, 1), events));
  EXPECT_TRUE(events.empty());
  ASSERT_TRUE(d.feed(frame.substr(1, 5), events));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].payload, "0123");
  events.clear();
  ASSERT_TRUE(d.feed(frame.substr(6), events));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].payload, "456789");
}

TEST(WebSocketDecode, CloseCodes) {
  auto empty = decodeAll(serverFrame(0x88, ""));
  ASSERT_TRUE(empty);
  EXPECT_EQ(empty->back().closeCode, 1005) << "no status code";
  for (std::uint16_t ok : {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999}) {
    auto r = decodeAll(serverFrame(0x88, closePayload(ok)));
    ASSERT_TRUE(r) << ok;
    EXPECT_EQ(r->back().closeCode, ok);
  }
  for (std::uint16_t bad : {0, 999, 1004, 1005, 1006, 1012, 1015, 2999, 5000, 65535}) {
    EXPECT_EQ(errorOf(serverFrame(0x88, closePayload(bad))),
              "WebSocket Close frame with invalid code " + std::to_string(bad));
  }
  EXPECT_EQ(errorOf(serverFrame(0x88, "x")), "WebSocket Close frame with a 1-byte payload");
  EXPECT_EQ(errorOf(serverFrame(0x88, closePayload(1000)) + serverFrame(0x82, "late")),
            "WebSocket data after the Close frame");
}

TEST(WebSocketDecode, RuleViolationsAreProtocolErrors) {
  EXPECT_EQ(errorOf(bytes({0x82, 0x85, 1, 2, 3, 4, 'a', 'b', 'c', 'd', 'e'})),
            "masked WebSocket frame from the server (RFC 6455 5.1)");
  EXPECT_EQ(errorOf(bytes({0xC2, 0x00})),
            "WebSocket frame with RSV bits set (no extension was negotiated)");
  EXPECT_EQ(errorOf(bytes({0x92, 0x00})),
            "WebSocket frame with RSV bits set (no extension was negotiated)");
  EXPECT_EQ(errorOf(bytes({0x83, 0x00})), "WebSocket frame with reserved opcode 3");
  EXPECT_EQ(errorOf(bytes({0x8B, 0x00})), "WebSocket frame with reserved opcode 11");
  EXPECT_EQ(errorOf(bytes({0x09, 0x00})), "fragmented WebSocket control frame");
  EXPECT_EQ(errorOf(bytes({0x89, 0x7E, 0x00, 0x7E})),
            "WebSocket control frame longer than 125 bytes");
  EXPECT_EQ(errorOf(serverFrame(0x81, "text")),
            "WebSocket text frame (MQTT uses binary frames only)");
  EXPECT_EQ(errorOf(serverFrame(0x80, "x")),
            "WebSocket continuation frame without a message to continue");
  EXPECT_EQ(errorOf(serverFrame(0x02, "a") + serverFrame(0x82, "b")),
            "new WebSocket message before the fragmented one ended");
  EXPECT_EQ(errorOf(bytes({0x82, 0x7E, 0x00, 0x05})),
            "WebSocket frame length not in its shortest form");
  EXPECT_EQ(errorOf(bytes({0x82, 0x7F, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF})),
            "WebSocket frame length not in its shortest form");
  EXPECT_EQ(errorOf(bytes({0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0})),
            "WebSocket frame length has its most significant bit set");
}

// ---- opening handshake -------------------------------------------------------------------------

TEST(WebSocketHandshake, Rfc6455AcceptExample) {
  EXPECT_EQ(webSocketAccept("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

std::array<std::uint8_t, 16> sampleNonce() {
  // "the sample nonce", the RFC's example: key dGhlIHNhbXBsZSBub25jZQ==
  std::array<std::uint8_t, 16> n{};
  std::string s = "the sample nonce";
  std::copy(s.begin(), s.end(), n.begin());
  return n;
}

TEST(WebSocketHandshake, RequestCarriesTheIotHubPathAndSubprotocol) {
  WebSocketHandshake h("contoso.azure-devices.net", 443, "/$iothub/websocket", "mqtt",
                       sampleNonce(), "iothubd/1");
  EXPECT_EQ(h.request(),
            "GET /$iothub/websocket HTTP/1.1\r\n"
            "Host: contoso.azure-devices.net\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: mqtt\r\n"
            "User-Agent: iothubd/1\r\n"
            "\r\n");
  WebSocketHandshake other("::1", 8443, "/p", "mqtt", sampleNonce());
  EXPECT_NE(other.request().find("Host: [::1]:8443\r\n"), std::string::npos);
}

std::string goodResponse(const std::string& extra = "Sec-WebSocket-Protocol: mqtt\r\n") {
  return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" +
         extra + "\r\n";
}

TEST(WebSocketHandshake, AcceptsTheServersSwitchAndKeepsTheFirstFrames) {
  WebSocketHandshake h("h", 443, "/$iothub/websocket", "mqtt", sampleNonce());
  std::string response = goodResponse() + serverFrame(0x82, "\x20\x02\x00\x00");
  auto first = h.feed(response.substr(0, 20));
  ASSERT_TRUE(first);
  EXPECT_FALSE(*first);
  auto done = h.feed(response.substr(20));
  ASSERT_TRUE(done) << done.error().message;
  EXPECT_TRUE(*done);
  EXPECT_EQ(h.takeLeftover(), serverFrame(0x82, "\x20\x02\x00\x00"));
  // A server may choose no subprotocol at all.
  WebSocketHandshake none("h", 443, "/", "mqtt", sampleNonce());
  auto noneDone = none.feed(goodResponse(""));
  ASSERT_TRUE(noneDone) << noneDone.error().message;
}

TEST(WebSocketHandshake, RefusalsAndBadAnswersFailClearly) {
  auto errorFor = [](const std::string& response) {
    WebSocketHandshake h("h", 443, "/", "mqtt", sampleNonce());
    auto r = h.feed(response);
    EXPECT_FALSE(r) << response;
    return r ? std::string() : r.error().message;
  };
  EXPECT_EQ(errorFor("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            "WebSocket upgrade refused: 404 Not Found");
  EXPECT_EQ(errorFor("HTTP/1.1 101 OK\r\nConnection: upgrade\r\nSec-WebSocket-Accept: "
                     "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"),
            "WebSocket upgrade: 101 without Upgrade: websocket");
  EXPECT_EQ(errorFor("HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: "
                     "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"),
            "WebSocket upgrade: 101 without Connection: Upgrade");
  EXPECT_EQ(errorFor("HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: "
                     "Upgrade\r\nSec-WebSocket-Accept: AAAA\r\n\r\n"),
            "WebSocket upgrade: wrong Sec-WebSocket-Accept");
  EXPECT_EQ(errorFor(goodResponse("Sec-WebSocket-Protocol: mqttv5\r\n")),
            "WebSocket upgrade: server chose subprotocol \"mqttv5\", not \"mqtt\"");
  EXPECT_EQ(errorFor(goodResponse("Sec-WebSocket-Extensions: permessage-deflate\r\n")),
            "WebSocket upgrade: server chose an extension we did not offer");
  EXPECT_EQ(errorFor("garbage\r\n\r\n").rfind("WebSocket upgrade: not an HTTP/1.x status line", 0),
            0u);
  WebSocketHandshake h("h", 443, "/", "mqtt", sampleNonce());
  auto refused = h.feed("HTTP/1.1 403 Forbidden\r\n\r\n");
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, core::Errc::ConnectionFailed);
}

}  // namespace
}  // namespace iothubd::relay
