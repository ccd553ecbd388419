// SPDX-License-Identifier: MIT
// Reads the head of an HTTP/1.x response (status line + header fields, RFC 9112 4-5), as sent
// by an HTTP proxy answering CONNECT and by a WebSocket server answering the Upgrade. Pure.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "iothubd/core/result.hpp"

namespace iothubd::relay {

struct HttpResponseHead {
  int status = 0;
  std::string reason;
  std::vector<std::pair<std::string, std::string>> headers;  ///< names as sent, values trimmed

  /// The first value of `name` (case-insensitive), if present.
  [[nodiscard]] std::optional<std::string> header(std::string_view name) const;
  /// Whether the comma-separated header `name` lists `token` (case-insensitive).
  [[nodiscard]] bool headerHasToken(std::string_view name, std::string_view token) const;
};

/// Accumulates bytes until the blank line that ends the head; bounded so that a peer that never
/// sends one cannot grow memory.
class HttpHeadReader {
 public:
  static constexpr std::size_t kMaxHeadBytes = 16 * 1024;

  /// False while incomplete; true once the head is parsed (head() is then valid). Errors are
  /// Errc::Protocol naming the problem (never echoing more than the status line).
  [[nodiscard]] core::Result<bool> feed(std::string_view bytes);
  [[nodiscard]] const HttpResponseHead& head() const noexcept { return head_; }
  /// Bytes received after the head.
  [[nodiscard]] std::string takeLeftover() { return std::move(leftover_); }

 private:
  std::string buffer_;
  std::string leftover_;
  HttpResponseHead head_;
  bool done_ = false;
};

/// Case-insensitive ASCII comparison.
[[nodiscard]] bool equalsIgnoreCase(std::string_view a, std::string_view b) noexcept;

}  // namespace iothubd::relay
