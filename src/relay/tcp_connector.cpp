// SPDX-License-Identifier: MIT
#include "tcp_connector.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "iothubd/core/log.hpp"

namespace iothubd::relay {

TcpConnector::TcpConnector(loop::EventLoop& loop, std::vector<SocketAddress> addresses,
                           std::chrono::milliseconds attemptDelay, Done done)
    : loop_(loop),
      addresses_(std::move(addresses)),
      attemptDelay_(attemptDelay),
      done_(std::move(done)),
      errors_(addresses_.size(), 0),
      delayTimer_(loop.createTimer([this] { startNext(); })) {}

TcpConnector::~TcpConnector() = default;

void TcpConnector::start() {
  // From the loop, so that `done` never runs inside start() even when every address fails at
  // once (no route, no such family).
  delayTimer_->armAfter(std::chrono::microseconds(0));
}

void TcpConnector::startNext() {
  while (!finished_ && next_ < addresses_.size()) {
    const std::size_t index = next_++;
    const SocketAddress& address = addresses_[index];
    core::UniqueFd fd(
        ::socket(address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP));
    if (!fd) {
      failed(index, errno);
      continue;
    }
    int one = 1;
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    core::logf(core::LogLevel::Debug, "TCP: connecting to ", address.toString());
    if (::connect(fd.get(), address.get(), address.length) == 0) {
      win(Attempt{index, std::move(fd), nullptr});
      return;
    }
    if (errno != EINPROGRESS) {
      failed(index, errno);  // e.g. ENETUNREACH for a family without a route: next one now
      continue;
    }
    auto watch =
        loop_.watchIo(fd.get(), EPOLLOUT, [this, index](std::uint32_t) { onWritable(index); });
    if (!watch) {
      failed(index, watch.error().sysErrno != 0 ? watch.error().sysErrno : EIO);
      continue;
    }
    attempts_.push_back(Attempt{index, std::move(fd), std::move(*watch)});
    if (next_ < addresses_.size()) {
      delayTimer_->armAfter(attemptDelay_);
    }
    return;
  }
  finishIfExhausted();
}

void TcpConnector::onWritable(std::size_t index) {
  auto it = std::find_if(attempts_.begin(), attempts_.end(),
                         [&](const Attempt& a) { return a.index == index; });
  if (it == attempts_.end()) {
    return;
  }
  int err = 0;
  socklen_t len = sizeof err;
  if (::getsockopt(it->fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
    err = errno;
  }
  if (err == 0) {
    Attempt winner = std::move(*it);
    attempts_.erase(it);
    win(std::move(winner));
    return;
  }
  attempts_.erase(it);  // closes its socket and its watch (sd-event allows that from here)
  failed(index, err);
  // RFC 8305 section 5: a failed attempt lets the next one start at once.
  delayTimer_->disarm();
  startNext();
}

void TcpConnector::failed(std::size_t index, int error) {
  errors_[index] = error != 0 ? error : ECONNREFUSED;
  core::logf(core::LogLevel::Debug, "TCP: ", addresses_[index].toString(), ": ",
             std::strerror(errors_[index]));
}

void TcpConnector::finishIfExhausted() {
  if (finished_ || !attempts_.empty() || next_ < addresses_.size()) {
    return;
  }
  if (addresses_.empty()) {
    complete(core::fail(core::Errc::ConnectionFailed, "no address"));
    return;
  }
  // One reason when every address failed the same way ("Connection refused"), else each.
  const bool same =
      std::all_of(errors_.begin(), errors_.end(), [&](int e) { return e == errors_.front(); });
  std::string why;
  if (same) {
    why = std::strerror(errors_.front());
    if (addresses_.size() > 1) {
      why += " (" + std::to_string(addresses_.size()) + " addresses tried)";
    }
  } else {
    for (std::size_t i = 0; i < addresses_.size(); ++i) {
      why += (i == 0 ? "" : "; ") + addresses_[i].toString() + " " + std::strerror(errors_[i]);
    }
  }
  complete(core::fail(core::Errc::ConnectionFailed, why, errors_.front()));
}

void TcpConnector::win(Attempt attempt) {
  attempt.watch.reset();
  core::logf(core::LogLevel::Debug, "TCP: connected to ", addresses_[attempt.index].toString());
  // Every other attempt ends here (RFC 8305 section 5: the others are cancelled).
  attempts_.clear();
  delayTimer_->disarm();
  complete(Connected{std::move(attempt.fd), addresses_[attempt.index]});
}

void TcpConnector::complete(core::Result<Connected> result) {
  finished_ = true;
  auto done = std::move(done_);
  if (done) {
    done(std::move(result));  // may destroy this connector: nothing may follow
  }
}

}  // namespace iothubd::relay
