// SPDX-License-Identifier: MIT
// Fuzzes the WebSocket client codec (RFC 6455): the opening handshake's response and the frame
// decoder. The first byte chooses the read size, so frame and head boundaries fall anywhere.
// Properties: decoding in reads of any size gives the same events as decoding at once; data
// events carry no more than was fed; control payloads stay within 125 bytes; nothing is decoded
// after a Close; a server frame we encode as a client (masked) is refused.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_check.hpp"
#include "websocket_codec.hpp"

using namespace iothubd;

namespace {

struct Decoded {
  bool ok = true;
  std::vector<relay::WsEvent> events;
};

Decoded decode(std::string_view bytes, std::size_t step) {
  relay::WebSocketDecoder decoder;
  Decoded out;
  for (std::size_t i = 0; i < bytes.size(); i += step) {
    if (auto r = decoder.feed(bytes.substr(i, step), out.events); !r) {
      FUZZ_CHECK(r.error().code == core::Errc::Protocol);
      out.ok = false;
      return out;
    }
  }
  return out;
}

/// Data events merged (the stream is a byte stream: their split depends on the reads).
std::vector<relay::WsEvent> merged(const std::vector<relay::WsEvent>& events) {
  std::vector<relay::WsEvent> out;
  for (const auto& e : events) {
    if (e.kind == relay::WsEvent::Kind::Data && !out.empty() &&
        out.back().kind == relay::WsEvent::Kind::Data) {
      out.back().payload += e.payload;
    } else if (e.kind != relay::WsEvent::Kind::Data || !e.payload.empty()) {
      out.push_back(e);
    }
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) {
    return 0;
  }
  const std::size_t step = 1 + data[0] % 17;
  const std::string_view bytes = fuzz::asText(data + 1, size - 1);

  const Decoded whole = decode(bytes, bytes.size() + 1);
  const Decoded pieces = decode(bytes, step);
  FUZZ_CHECK(whole.ok == pieces.ok);
  if (whole.ok) {
    const auto a = merged(whole.events);
    const auto b = merged(pieces.events);
    FUZZ_CHECK(a.size() == b.size());
    std::size_t total = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
      FUZZ_CHECK(a[i].kind == b[i].kind && a[i].payload == b[i].payload);
      FUZZ_CHECK(a[i].closeCode == b[i].closeCode && a[i].closeReason == b[i].closeReason);
      if (a[i].kind != relay::WsEvent::Kind::Data) {
        FUZZ_CHECK(a[i].payload.size() <= 125);
      }
      FUZZ_CHECK(a[i].kind != relay::WsEvent::Kind::Close || i + 1 == a.size());
      total += a[i].payload.size();
    }
    FUZZ_CHECK(total <= bytes.size());
  }

  // What a client sends is masked, which a server must not do: the decoder refuses it.
  if (!bytes.empty()) {
    const auto frame = relay::encodeClientFrame(relay::WsOpcode::Binary, bytes.substr(0, 200),
                                                relay::WsMask{1, 2, 3, 4});
    std::vector<relay::WsEvent> events;
    relay::WebSocketDecoder decoder;
    FUZZ_CHECK(!decoder.feed(frame, events).has_value());
  }

  // The same bytes as the server's answer to the opening handshake.
  relay::WebSocketHandshake handshake("hub.example.net", 443, "/$iothub/websocket", "mqtt",
                                      std::array<std::uint8_t, 16>{});
  for (std::size_t i = 0; i < bytes.size(); i += step) {
    auto r = handshake.feed(bytes.substr(i, step));
    if (!r) {
      FUZZ_CHECK(r.error().code == core::Errc::Protocol ||
                 r.error().code == core::Errc::ConnectionFailed);
      break;
    }
    if (*r) {
      (void)handshake.takeLeftover();
      break;
    }
  }
  return 0;
}
