// SPDX-License-Identifier: MIT
// The HTTPS client as the file-upload workflow sees it (role); CurlMultiClient implements it over
// libcurl's multi socket interface on the daemon's loop (technology).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "iothubd/core/result.hpp"
#include "iothubd/core/secret.hpp"
#include "iothubd/core/tls_settings.hpp"

namespace iothubd::http {

using TlsSettings = core::TlsSettings;

enum class Method { Get, Head, Post, Put, Delete };

/// A request body produced incrementally and without blocking. The client pulls with read();
/// a source that has nothing ready says so with kPause and later calls the wake-up function,
/// after which the client reads again. Loop thread only.
class BodySource {
 public:
  /// read() result meaning "nothing ready now; I will call wake() when there is".
  static constexpr std::size_t kPause = std::numeric_limits<std::size_t>::max();

  virtual ~BodySource() = default;
  /// Total body size when known up front (sent as Content-Length); nullopt = unknown, sent with
  /// chunked transfer encoding.
  [[nodiscard]] virtual std::optional<std::uint64_t> size() const = 0;
  /// Copies up to `buffer.size()` bytes into `buffer`: the number copied, 0 at the end of the
  /// body, kPause when nothing is ready yet, or an error that aborts the request with it.
  [[nodiscard]] virtual core::Result<std::size_t> read(std::span<char> buffer) = 0;
  /// Installed by the client before the first read(). The source calls it on the loop thread,
  /// never from inside read(), when a paused read can continue.
  virtual void setWakeup(std::function<void()> wake) = 0;
};

/// A body over bytes someone else keeps alive until the request ends (a buffered block the
/// caller may need again for a retry).
class ViewBody final : public BodySource {
 public:
  explicit ViewBody(std::string_view data) : data_(data) {}
  [[nodiscard]] std::optional<std::uint64_t> size() const override { return data_.size(); }
  [[nodiscard]] core::Result<std::size_t> read(std::span<char> buffer) override {
    const std::size_t n = std::min(buffer.size(), data_.size() - offset_);
    std::memcpy(buffer.data(), data_.data() + offset_, n);
    offset_ += n;
    return n;
  }
  void setWakeup(std::function<void()>) override {}

 private:
  std::string_view data_;
  std::size_t offset_ = 0;
};

/// A body that owns its bytes (JSON, XML).
class StringBody final : public BodySource {
 public:
  explicit StringBody(std::string data) : data_(std::move(data)), view_(data_) {}
  StringBody(const StringBody&) = delete;
  StringBody& operator=(const StringBody&) = delete;
  [[nodiscard]] std::optional<std::uint64_t> size() const override { return view_.size(); }
  [[nodiscard]] core::Result<std::size_t> read(std::span<char> buffer) override {
    return view_.read(buffer);
  }
  void setWakeup(std::function<void()>) override {}

 private:
  std::string data_;
  ViewBody view_;
};

using Header = std::pair<std::string, std::string>;

struct Request {
  Method method = Method::Get;
  /// Absolute https:// URL. It may carry a SAS token in its query: the client never logs it and
  /// error messages name only scheme, host and path.
  std::string url;
  std::vector<Header> headers;
  /// Value of the Authorization header (a SAS token), kept out of logs; empty = none.
  core::Secret<> authorization;
  /// nullptr = no body (Content-Length: 0 for POST and PUT).
  std::unique_ptr<BodySource> body;
  /// Overall bound for this request, connect to last byte.
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
  /// Longer response bodies fail the request with Errc::Protocol.
  std::size_t maxResponseBody = 1024 * 1024;
};

struct Response {
  long status = 0;
  std::vector<Header> headers;  ///< names lower-cased, in arrival order (final response only)
  std::string body;

  /// First header with this (lower-case) name.
  [[nodiscard]] std::optional<std::string_view> header(std::string_view name) const {
    for (const auto& [k, v] : headers) {
      if (k == name) {
        return std::string_view(v);
      }
    }
    return std::nullopt;
  }
};

/// Receives the outcome exactly once, on the loop thread. An HTTP answer of any status is a
/// Response (the caller decides what a status means); an Error means no complete answer arrived:
/// Errc::ConnectionFailed (DNS, TCP, TLS, the connection broke), Errc::Timeout, Errc::Protocol
/// (malformed or over-long response), Errc::Config (unusable TLS files), or the body source's
/// own error.
using Completion = std::function<void(core::Result<Response>)>;

class HttpClient {
 public:
  using RequestId = std::uint64_t;

  virtual ~HttpClient() = default;
  /// Starts `request`. `done` runs later on the loop thread, never from inside send(); if send()
  /// fails it is not called at all. Errors: Errc::InvalidArgument for a URL that is not https
  /// (or http, if the client allows it), Errc::Internal if libcurl refuses the request.
  [[nodiscard]] virtual core::Result<RequestId> send(Request request, Completion done) = 0;
  /// Abandons a request: its completion is not called, its body source is destroyed. Unknown or
  /// finished ids are ignored. May be called from any callback, including another completion.
  virtual void cancel(RequestId id) = 0;
  /// Requests started and not yet completed or cancelled.
  [[nodiscard]] virtual std::size_t activeRequests() const = 0;
};

}  // namespace iothubd::http
