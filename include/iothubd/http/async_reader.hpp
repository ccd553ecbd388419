// SPDX-License-Identifier: MIT
// Reading a file descriptor's content without blocking the loop (role), and a body source that
// streams such a reader into an HTTP request.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "iothubd/core/result.hpp"
#include "iothubd/core/unique_fd.hpp"
#include "iothubd/http/http_client.hpp"

namespace iothubd::loop {
class EventLoop;
}

namespace iothubd::http {

/// Reads one source (a pipe, socket or regular file) from its current position to its end, in
/// chunks the caller asks for, without ever blocking the loop thread. One read at a time.
/// Destroying the reader abandons a pending read (its callback is not called) and closes the
/// descriptor, at once or, if a worker thread still reads from it, as soon as that read returns.
class AsyncReader {
 public:
  /// A chunk of 1..max bytes, an empty string at the end of the content, or Errc::Io.
  using ReadDone = std::function<void(core::Result<std::string>)>;

  virtual ~AsyncReader() = default;
  /// Reads up to `max` (> 0) bytes; `done` runs later on the loop thread, never from inside
  /// read(). Returns Errc::Internal if a read is already pending.
  [[nodiscard]] virtual core::Result<void> read(std::size_t max, ReadDone done) = 0;
  /// Bytes left for a regular file (size minus position when created); nullopt for pipes and
  /// sockets, whose size is known only at their end.
  [[nodiscard]] virtual std::optional<std::uint64_t> sizeHint() const = 0;
};

/// The loop-driven reader over `fd`:
/// - pipes, sockets, terminals: O_NONBLOCK is set on the descriptor, and reads wait for an
///   EPOLLIN IoWatch;
/// - regular files (epoll cannot watch them; they are never "not ready"): preadv2(RWF_NOWAIT)
///   serves what is in the page cache on the loop, anything else is read on a short-lived worker
///   (EventLoop::runOffLoop), so a slow disk never stalls the loop.
/// Errors: Errc::Io (with errno) if the descriptor is invalid or cannot be inspected.
[[nodiscard]] core::Result<std::unique_ptr<AsyncReader>> createFdReader(loop::EventLoop& loop,
                                                                        core::UniqueFd fd);

/// A request body that streams `reader` to its end with chunked transfer encoding (or with
/// Content-Length when `size` is given; a source that then ends early or runs long fails the
/// request with Errc::Io). Pauses the transfer while the reader waits for data.
[[nodiscard]] std::unique_ptr<BodySource> createReaderBody(
    std::unique_ptr<AsyncReader> reader, std::optional<std::uint64_t> size = std::nullopt,
    std::size_t chunkSize = 64 * 1024);

}  // namespace iothubd::http
