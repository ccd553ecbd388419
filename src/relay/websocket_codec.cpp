// SPDX-License-Identifier: MIT
#include "websocket_codec.hpp"

#include <openssl/evp.h>
#include <openssl/sha.h>

namespace iothubd::relay {
namespace {

using core::Errc;
using core::fail;

constexpr std::size_t kMaxControlPayload = 125;  // RFC 6455 5.5

std::string base64(const unsigned char* data, std::size_t size) {
  std::string out(4 * ((size + 2) / 3) + 1, '\0');
  int n =
      EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), data, static_cast<int>(size));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

bool knownOpcode(std::uint8_t op) {
  return op <= 0x2 || (op >= 0x8 && op <= 0xA);
}

bool isControl(WsOpcode op) {
  return static_cast<std::uint8_t>(op) >= 0x8;
}

/// RFC 6455 7.4.1/7.4.2: codes a peer may send in a Close frame.
bool validCloseCode(std::uint16_t code) {
  if (code >= 3000 && code <= 4999) {
    return true;
  }
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011);
}

}  // namespace

std::string encodeClientFrame(WsOpcode opcode, std::string_view payload, const WsMask& mask) {
  std::string out;
  out.reserve(payload.size() + 14);
  out.push_back(static_cast<char>(0x80 | static_cast<std::uint8_t>(opcode)));  // FIN
  const std::uint64_t n = payload.size();
  if (n <= 125) {
    out.push_back(static_cast<char>(0x80 | n));
  } else if (n <= 0xFFFF) {
    out.push_back(static_cast<char>(0x80 | 126));
    out.push_back(static_cast<char>(n >> 8));
    out.push_back(static_cast<char>(n & 0xFF));
  } else {
    out.push_back(static_cast<char>(0x80 | 127));
    for (int shift = 56; shift >= 0; shift -= 8) {
      out.push_back(static_cast<char>((n >> shift) & 0xFF));
    }
  }
  for (std::uint8_t b : mask) {
    out.push_back(static_cast<char>(b));
  }
  for (std::size_t i = 0; i < payload.size(); ++i) {
    out.push_back(static_cast<char>(static_cast<std::uint8_t>(payload[i]) ^ mask[i % 4]));
  }
  return out;
}

std::string closePayload(std::uint16_t code, std::string_view reason) {
  std::string out;
  out.push_back(static_cast<char>(code >> 8));
  out.push_back(static_cast<char>(code & 0xFF));
  out.append(reason.substr(0, kMaxControlPayload - 2));
  return out;
}

core::Result<void> WebSocketDecoder::feed(std::string_view bytes, std::vector<WsEvent>& out) {
  while (!bytes.empty()) {
    if (closed_) {
      return fail(Errc::Protocol, "WebSocket data after the Close frame");
    }
    switch (state_) {
      case State::Header: {
        header_[headerHave_++] = static_cast<std::uint8_t>(bytes.front());
        bytes.remove_prefix(1);
        if (headerHave_ == 2) {
          if (auto r = headerComplete(); !r) {
            return r;
          }
          if (state_ == State::Payload && remaining_ == 0) {
            if (auto r = frameComplete(out); !r) {
              return r;
            }
          }
        }
        break;
      }
      case State::ExtendedLength: {
        extended_[extendedHave_++] = static_cast<std::uint8_t>(bytes.front());
        bytes.remove_prefix(1);
        if (extendedHave_ == extendedNeed_) {
          std::uint64_t n = 0;
          for (std::size_t i = 0; i < extendedNeed_; ++i) {
            n = (n << 8) | extended_[i];
          }
          // RFC 6455 5.2: the most significant bit of the 64-bit form is 0, and the minimal
          // form is used.
          if (extendedNeed_ == 8 && (n >> 63) != 0) {
            return fail(Errc::Protocol, "WebSocket frame length has its most significant bit set");
          }
          if ((extendedNeed_ == 2 && n < 126) || (extendedNeed_ == 8 && n <= 0xFFFF)) {
            return fail(Errc::Protocol, "WebSocket frame length not in its shortest form");
          }
          remaining_ = n;
          state_ = State::Payload;
          if (remaining_ == 0) {
            if (auto r = frameComplete(out); !r) {
              return r;
            }
          }
        }
        break;
      }
      case State::Payload: {
        std::size_t take = static_cast<std::size_t>(
            std::min<std::uint64_t>(remaining_, static_cast<std::uint64_t>(bytes.size())));
        if (isControl(opcode_)) {
          control_.append(bytes.substr(0, take));
        } else if (take > 0) {
          // Data is passed on as it arrives (see WsEvent): append to the previous Data event of
          // this feed when there is one, so one read gives one event.
          if (!out.empty() && out.back().kind == WsEvent::Kind::Data) {
            out.back().payload.append(bytes.substr(0, take));
          } else {
            WsEvent e;
            e.payload.assign(bytes.substr(0, take));
            out.push_back(std::move(e));
          }
        }
        bytes.remove_prefix(take);
        remaining_ -= take;
        if (remaining_ == 0) {
          if (auto r = frameComplete(out); !r) {
            return r;
          }
        }
        break;
      }
    }
  }
  return {};
}

core::Result<void> WebSocketDecoder::headerComplete() {
  const std::uint8_t b0 = header_[0];
  const std::uint8_t b1 = header_[1];
  fin_ = (b0 & 0x80) != 0;
  if ((b0 & 0x70) != 0) {
    return fail(Errc::Protocol, "WebSocket frame with RSV bits set (no extension was negotiated)");
  }
  const std::uint8_t op = b0 & 0x0F;
  if (!knownOpcode(op)) {
    return fail(Errc::Protocol, "WebSocket frame with reserved opcode " + std::to_string(op));
  }
  opcode_ = static_cast<WsOpcode>(op);
  if ((b1 & 0x80) != 0) {
    return fail(Errc::Protocol, "masked WebSocket frame from the server (RFC 6455 5.1)");
  }
  if (isControl(opcode_)) {
    if (!fin_) {
      return fail(Errc::Protocol, "fragmented WebSocket control frame");
    }
    if ((b1 & 0x7F) > kMaxControlPayload) {
      return fail(Errc::Protocol, "WebSocket control frame longer than 125 bytes");
    }
  } else if (opcode_ == WsOpcode::Text) {
    return fail(Errc::Protocol, "WebSocket text frame (MQTT uses binary frames only)");
  } else if (opcode_ == WsOpcode::Continuation && !inMessage_) {
    return fail(Errc::Protocol, "WebSocket continuation frame without a message to continue");
  } else if (opcode_ == WsOpcode::Binary && inMessage_) {
    return fail(Errc::Protocol, "new WebSocket message before the fragmented one ended");
  }
  control_.clear();
  headerHave_ = 0;
  const std::uint8_t len = b1 & 0x7F;
  if (len == 126 || len == 127) {
    extendedNeed_ = len == 126 ? 2 : 8;
    extendedHave_ = 0;
    state_ = State::ExtendedLength;
  } else {
    remaining_ = len;
    state_ = State::Payload;
  }
  return {};
}

core::Result<void> WebSocketDecoder::frameComplete(std::vector<WsEvent>& out) {
  state_ = State::Header;
  switch (opcode_) {
    case WsOpcode::Binary:
    case WsOpcode::Continuation:
      inMessage_ = !fin_;
      return {};
    case WsOpcode::Ping:
    case WsOpcode::Pong: {
      WsEvent e;
      e.kind = opcode_ == WsOpcode::Ping ? WsEvent::Kind::Ping : WsEvent::Kind::Pong;
      e.payload = std::move(control_);
      control_.clear();
      out.push_back(std::move(e));
      return {};
    }
    case WsOpcode::Close: {
      WsEvent e;
      e.kind = WsEvent::Kind::Close;
      if (control_.size() == 1) {
        return fail(Errc::Protocol, "WebSocket Close frame with a 1-byte payload");
      }
      if (control_.empty()) {
        e.closeCode = 1005;  // RFC 6455 7.1.5: no status code present
      } else {
        e.closeCode = static_cast<std::uint16_t>((static_cast<std::uint8_t>(control_[0]) << 8) |
                                                 static_cast<std::uint8_t>(control_[1]));
        if (!validCloseCode(e.closeCode)) {
          return fail(Errc::Protocol,
                      "WebSocket Close frame with invalid code " + std::to_string(e.closeCode));
        }
        for (char c : std::string_view(control_).substr(2)) {
          e.closeReason.push_back(c >= 0x20 && c < 0x7f ? c : '?');
        }
      }
      control_.clear();
      closed_ = true;
      out.push_back(std::move(e));
      return {};
    }
    case WsOpcode::Text:
      break;
  }
  return fail(Errc::Internal, "unexpected WebSocket opcode");
}

std::string webSocketAccept(std::string_view key) {
  static constexpr std::string_view kGuid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  std::string input(key);
  input.append(kGuid);
  unsigned char digest[SHA_DIGEST_LENGTH];
  SHA1(reinterpret_cast<const unsigned char*>(input.data()), input.size(), digest);
  return base64(digest, sizeof digest);
}

WebSocketHandshake::WebSocketHandshake(const std::string& host, int port, const std::string& path,
                                       std::string subprotocol,
                                       const std::array<std::uint8_t, 16>& nonce,
                                       const std::string& userAgent)
    : subprotocol_(std::move(subprotocol)) {
  const std::string key = base64(nonce.data(), nonce.size());
  accept_ = webSocketAccept(key);
  // An IPv6 literal needs brackets in Host (RFC 9110 7.2 / RFC 3986 3.2.2).
  std::string authority = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  if (port != 443) {
    authority += ":" + std::to_string(port);
  }
  request_ = "GET " + path + " HTTP/1.1\r\n" + "Host: " + authority + "\r\n" +
             "Upgrade: websocket\r\n"
             "Connection: Upgrade\r\n"
             "Sec-WebSocket-Key: " +
             key + "\r\n" +
             "Sec-WebSocket-Version: 13\r\n"
             "Sec-WebSocket-Protocol: " +
             subprotocol_ + "\r\n";
  if (!userAgent.empty()) {
    request_ += "User-Agent: " + userAgent + "\r\n";
  }
  request_ += "\r\n";
}

core::Result<bool> WebSocketHandshake::feed(std::string_view bytes) {
  auto complete = reader_.feed(bytes);
  if (!complete) {
    return fail(Errc::Protocol, "WebSocket upgrade: " + complete.error().message);
  }
  if (!*complete) {
    return false;
  }
  const HttpResponseHead& head = reader_.head();
  if (head.status != 101) {
    return fail(Errc::ConnectionFailed,
                "WebSocket upgrade refused: " + std::to_string(head.status) + " " + head.reason);
  }
  // RFC 6455 4.1, the client's checks of the server's handshake.
  auto upgrade = head.header("Upgrade");
  if (!upgrade || !equalsIgnoreCase(*upgrade, "websocket")) {
    return fail(Errc::Protocol, "WebSocket upgrade: 101 without Upgrade: websocket");
  }
  if (!head.headerHasToken("Connection", "upgrade")) {
    return fail(Errc::Protocol, "WebSocket upgrade: 101 without Connection: Upgrade");
  }
  auto accept = head.header("Sec-WebSocket-Accept");
  if (!accept || *accept != accept_) {
    return fail(Errc::Protocol, "WebSocket upgrade: wrong Sec-WebSocket-Accept");
  }
  if (head.header("Sec-WebSocket-Extensions")) {
    return fail(Errc::Protocol, "WebSocket upgrade: server chose an extension we did not offer");
  }
  // A server may choose no subprotocol; it may not choose one we did not offer.
  if (auto protocol = head.header("Sec-WebSocket-Protocol");
      protocol && *protocol != subprotocol_) {
    return fail(Errc::Protocol, "WebSocket upgrade: server chose subprotocol \"" +
                                    protocol->substr(0, 40) + "\", not \"" + subprotocol_ + "\"");
  }
  return true;
}

}  // namespace iothubd::relay
