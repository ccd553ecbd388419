// SPDX-License-Identifier: MIT
// RFC 6455 framing and opening handshake for the client side of MQTT over WebSockets
// (protocol doc 1.1; MQTT 3.1.1 section 6). Pure: no I/O, no clock; randomness (the masking key,
// the Sec-WebSocket-Key) is a parameter so tests are deterministic. Fuzz targets can drive
// WebSocketDecoder::feed() and WebSocketHandshake::feed() directly.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "http_head.hpp"
#include "iothubd/core/result.hpp"

namespace iothubd::relay {

enum class WsOpcode : std::uint8_t {
  Continuation = 0x0,
  Text = 0x1,
  Binary = 0x2,
  Close = 0x8,
  Ping = 0x9,
  Pong = 0xA,
};

using WsMask = std::array<std::uint8_t, 4>;

/// One frame as a client sends it: FIN set, RSV 0, masked with `mask` (RFC 6455 5.3: every
/// client frame is masked). The length uses the shortest of the 7-bit, 16-bit and 64-bit forms.
[[nodiscard]] std::string encodeClientFrame(WsOpcode opcode, std::string_view payload,
                                            const WsMask& mask);
/// The payload of a Close frame: status code (network order) + UTF-8 reason (RFC 6455 5.5.1).
[[nodiscard]] std::string closePayload(std::uint16_t code, std::string_view reason = {});

/// What the server sent, in order. Data is the payload of binary (and continuation) frames,
/// delivered as it arrives: MQTT over WebSockets is a byte stream, so frame boundaries carry no
/// meaning (MQTT 3.1.1 6.0) and nothing larger than one read is ever buffered.
struct WsEvent {
  enum class Kind { Data, Ping, Pong, Close };
  Kind kind = Kind::Data;
  std::string payload;          ///< Data bytes, or a control frame's payload
  std::uint16_t closeCode = 0;  ///< Close: the code, 1005 when the frame had none
  std::string closeReason;      ///< Close: the reason text
};

/// Incremental decoder for frames from the server. Errors (Errc::Protocol, message names the rule)
/// are final: the caller fails the connection (RFC 6455 7.1.7), ideally with a Close 1002.
/// Enforced: RSV bits 0 (no extension is negotiated); known opcodes; server frames unmasked (5.1);
/// minimal length encoding and a 64-bit length below 2^63 (5.2); control frames unfragmented and
/// at most 125 bytes (5.5); continuation only inside a fragmented message and no new message
/// before it ends (5.4); Text frames refused (MQTT 3.1.1 6.0: binary frames only); Close payload
/// empty or >= 2 bytes with a code that may appear on the wire (7.4); nothing after Close.
class WebSocketDecoder {
 public:
  /// Consumes all of `bytes`, appending complete events to `out`.
  [[nodiscard]] core::Result<void> feed(std::string_view bytes, std::vector<WsEvent>& out);
  /// True once a Close frame was decoded.
  [[nodiscard]] bool closed() const noexcept { return closed_; }

 private:
  enum class State { Header, ExtendedLength, Payload };
  [[nodiscard]] core::Result<void> headerComplete();
  [[nodiscard]] core::Result<void> frameComplete(std::vector<WsEvent>& out);

  State state_ = State::Header;
  std::uint8_t header_[2] = {0, 0};
  std::size_t headerHave_ = 0;
  std::uint8_t extended_[8] = {};
  std::size_t extendedNeed_ = 0;
  std::size_t extendedHave_ = 0;
  WsOpcode opcode_ = WsOpcode::Binary;
  bool fin_ = true;
  std::uint64_t remaining_ = 0;
  std::string control_;     ///< payload of the control frame being read (<= 125 bytes)
  bool inMessage_ = false;  ///< a fragmented binary message is under way
  bool closed_ = false;
};

/// The opening handshake (RFC 6455 4.1/4.2.2) with the IoT Hub values: GET `path`,
/// Sec-WebSocket-Protocol `mqtt` (protocol doc 1.1).
class WebSocketHandshake {
 public:
  /// `host` and `port` form the Host header (the port only when it is not 443); `nonce` is the
  /// 16 random bytes of Sec-WebSocket-Key.
  WebSocketHandshake(const std::string& host, int port, const std::string& path,
                     std::string subprotocol, const std::array<std::uint8_t, 16>& nonce,
                     const std::string& userAgent = {});

  /// The request to send.
  [[nodiscard]] const std::string& request() const noexcept { return request_; }
  /// Feeds response bytes: false while the head is incomplete, true once the server switched
  /// protocols. Errors (Errc::Protocol, or Errc::ConnectionFailed for a refused upgrade, naming
  /// the status) are final.
  [[nodiscard]] core::Result<bool> feed(std::string_view bytes);
  /// Bytes that followed the response head (the first frames), once feed() returned true.
  [[nodiscard]] std::string takeLeftover() { return reader_.takeLeftover(); }
  /// Sec-WebSocket-Accept expected for this handshake.
  [[nodiscard]] const std::string& expectedAccept() const noexcept { return accept_; }

 private:
  std::string request_;
  std::string accept_;
  std::string subprotocol_;
  HttpHeadReader reader_;
};

/// base64(SHA-1(key + GUID)) of RFC 6455 4.2.2.
[[nodiscard]] std::string webSocketAccept(std::string_view key);

}  // namespace iothubd::relay
