// SPDX-License-Identifier: MIT
// TCP connection to the first of several addresses that answers (RFC 8305, "Happy Eyeballs"),
// driven by the loop.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "iothubd/core/result.hpp"
#include "iothubd/core/unique_fd.hpp"
#include "iothubd/loop/event_loop.hpp"
#include "socket_address.hpp"

namespace iothubd::relay {

/// RFC 8305 section 5 recommends 250 ms between the starts of two connection attempts.
inline constexpr std::chrono::milliseconds kConnectionAttemptDelay{250};

/// Races non-blocking TCP connects over `addresses` in the given order (interleaveFamilies
/// first): the first attempt starts at once, each further one when the previous failed or after
/// `attemptDelay` without an answer, whichever comes first, while earlier attempts keep going.
/// The first connection to complete wins and every other attempt is closed. So a name whose
/// first address is unreachable (`::1 localhost` with a server on 127.0.0.1 only, a dual-stack
/// network whose IPv6 route is broken) costs one refused attempt or one attempt delay, not a
/// failure or a TCP timeout.
///
/// Loop thread only. `done` runs exactly once, from the loop (never from inside start()), with
/// the connected non-blocking socket (TCP_NODELAY set) or with Errc::ConnectionFailed naming
/// every address and why it failed. Destroying the connector cancels it (`done` does not run);
/// `done` may destroy it. Attempts that never answer are bounded by the caller's own timeout.
class TcpConnector {
 public:
  struct Connected {
    core::UniqueFd fd;
    SocketAddress address;
  };
  using Done = std::function<void(core::Result<Connected>)>;

  TcpConnector(loop::EventLoop& loop, std::vector<SocketAddress> addresses,
               std::chrono::milliseconds attemptDelay, Done done);
  ~TcpConnector();
  TcpConnector(const TcpConnector&) = delete;
  TcpConnector& operator=(const TcpConnector&) = delete;

  /// Starts the first attempt.
  void start();

 private:
  struct Attempt {
    std::size_t index = 0;
    core::UniqueFd fd;
    std::unique_ptr<loop::IoWatch> watch;
  };

  void startNext();
  void onWritable(std::size_t index);
  void failed(std::size_t index, int error);
  void finishIfExhausted();
  void win(Attempt attempt);
  void complete(core::Result<Connected> result);

  loop::EventLoop& loop_;
  std::vector<SocketAddress> addresses_;
  std::chrono::milliseconds attemptDelay_;
  Done done_;
  std::vector<Attempt> attempts_;  ///< in flight
  std::vector<int> errors_;        ///< per address, 0 = not failed (yet)
  std::size_t next_ = 0;
  std::unique_ptr<core::Timer> delayTimer_;
  bool finished_ = false;
};

}  // namespace iothubd::relay
