// SPDX-License-Identifier: MIT
#include "front.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <list>
#include <stdexcept>
#include <utility>

namespace iothubd::hubemu {

// ---- Shaping ------------------------------------------------------------------------------------

void Shaping::setSubackDelayMs(int64_t ms) {
  std::lock_guard lock(mutex_);
  subackDelayMs_ = std::max<int64_t>(0, ms);
}

int64_t Shaping::subackDelayMs() const {
  std::lock_guard lock(mutex_);
  return subackDelayMs_;
}

void Shaping::setPubackDelayMs(const std::string& clientId, int64_t ms) {
  std::lock_guard lock(mutex_);
  if (ms <= 0) {
    pubackDelayMs_.erase(clientId);
  } else {
    pubackDelayMs_[clientId] = ms;
  }
}

int64_t Shaping::pubackDelayMs(const std::string& clientId) const {
  std::lock_guard lock(mutex_);
  const auto it = pubackDelayMs_.find(clientId);
  return it == pubackDelayMs_.end() ? 0 : it->second;
}

void Shaping::clearPubackDelays() {
  std::lock_guard lock(mutex_);
  pubackDelayMs_.clear();
}

void Shaping::log(std::string line) {
  std::lock_guard lock(mutex_);
  if (log_.size() < 10000)
    log_.push_back(std::move(line));
}

std::vector<std::string> Shaping::takeLog() {
  std::lock_guard lock(mutex_);
  return std::exchange(log_, {});
}

// ---- Front --------------------------------------------------------------------------------------

namespace {

constexpr size_t kMaxBuffered = 1 << 20;
constexpr int kMqttConnect = 1;
constexpr int kMqttPuback = 4;
constexpr int kMqttSuback = 9;

int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void closeFd(int& fd) {
  if (fd >= 0) {
    ::close(fd);
    fd = -1;
  }
}

// Length of the MQTT packet at the start of `buf` (fixed header + remaining length), 0 if it is
// not complete yet, -1 if the length field is malformed.
int64_t packetLength(const std::string& buf) {
  if (buf.size() < 2)
    return 0;
  int64_t remaining = 0;
  int64_t multiplier = 1;
  for (size_t i = 1; i <= 4; ++i) {
    if (i >= buf.size())
      return 0;
    const auto byte = static_cast<unsigned char>(buf[i]);
    remaining += (byte & 0x7F) * multiplier;
    if ((byte & 0x80) == 0) {
      const int64_t total = static_cast<int64_t>(i) + 1 + remaining;
      return static_cast<int64_t>(buf.size()) >= total ? total : 0;
    }
    multiplier *= 128;
  }
  return -1;
}

// The client id of an MQTT 3.1.1 CONNECT packet (fixed header included), or "" if malformed.
std::string connectClientId(const std::string& packet) {
  size_t pos = 1;
  while (pos < packet.size() && (static_cast<unsigned char>(packet[pos]) & 0x80) != 0)
    ++pos;
  ++pos;  // past the last length byte
  auto u16 = [&](size_t at) -> int {
    return at + 1 < packet.size() ? (static_cast<unsigned char>(packet[at]) << 8) |
                                        static_cast<unsigned char>(packet[at + 1])
                                  : -1;
  };
  const int nameLength = u16(pos);
  if (nameLength < 0)
    return {};
  pos += 2 + static_cast<size_t>(nameLength) + 1 + 1 + 2;  // name, level, flags, keep-alive
  const int idLength = u16(pos);
  if (idLength < 0 || pos + 2 + static_cast<size_t>(idLength) > packet.size())
    return {};
  return packet.substr(pos + 2, static_cast<size_t>(idLength));
}

struct Held {
  int64_t dueMs = 0;
  std::string bytes;
};

struct Connection {
  int client = -1;
  int backend = -1;
  SSL* ssl = nullptr;
  std::string peer;
  bool handshaken = false;
  bool clientEof = false;
  bool backendEof = false;
  bool sslWantsWrite = false;
  bool closed = false;
  bool connectSeen = false;
  std::string clientId;
  std::string toBackend;
  std::string firstPacket;  ///< client bytes until the CONNECT is complete
  std::string fromBackend;  ///< not yet a complete packet
  std::deque<Held> held;    ///< complete packets, in order, each with its release time
  int64_t lastDueMs = 0;
  std::string toClient;

  ~Connection() {
    if (ssl != nullptr)
      SSL_free(ssl);
    closeFd(client);
    closeFd(backend);
  }
};

}  // namespace

struct Front::Impl {
  Options options;
  Shaping& shaping;
  SSL_CTX* ctx = nullptr;
  std::vector<int> listeners;
  int wake = -1;
  std::list<Connection> connections;

  Impl(Options o, Shaping& s) : options(std::move(o)), shaping(s) {}

  ~Impl() {
    connections.clear();
    for (int& fd : listeners)
      closeFd(fd);
    closeFd(wake);
    if (ctx != nullptr)
      SSL_CTX_free(ctx);
  }

  void setUp() {
    ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == nullptr)
      throw std::runtime_error("front: SSL_CTX_new failed");
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (SSL_CTX_use_certificate_chain_file(ctx, options.certFile.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, options.keyFile.c_str(), SSL_FILETYPE_PEM) != 1) {
      throw std::runtime_error("front: cannot load " + options.certFile + " / " + options.keyFile);
    }
    for (const std::string& address : options.listenAddresses) {
      listeners.push_back(listenOn(address));
    }
    wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake < 0)
      throw std::runtime_error(std::string("front: eventfd: ") + std::strerror(errno));
  }

  int listenOn(const std::string& address) const {
    sockaddr_storage ss{};
    socklen_t len = 0;
    const bool v6 = address.find(':') != std::string::npos;
    if (v6) {
      auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
      a->sin6_family = AF_INET6;
      a->sin6_port = htons(static_cast<uint16_t>(options.port));
      inet_pton(AF_INET6, address.c_str(), &a->sin6_addr);
      len = sizeof *a;
    } else {
      auto* a = reinterpret_cast<sockaddr_in*>(&ss);
      a->sin_family = AF_INET;
      a->sin_port = htons(static_cast<uint16_t>(options.port));
      inet_pton(AF_INET, address.c_str(), &a->sin_addr);
      len = sizeof *a;
    }
    const int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (v6)
      ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(fd, 64) != 0) {
      const int err = errno;
      if (fd >= 0)
        ::close(fd);
      throw std::runtime_error("front: cannot listen on " + address + " port " +
                               std::to_string(options.port) + ": " + std::strerror(err));
    }
    return fd;
  }

  void accept(int listener) {
    while (true) {
      sockaddr_storage peer{};
      socklen_t len = sizeof peer;
      const int fd = ::accept4(listener, reinterpret_cast<sockaddr*>(&peer), &len,
                               SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0)
        return;
      Connection& c = connections.emplace_back();
      c.client = fd;
      char text[INET6_ADDRSTRLEN] = "?";
      if (peer.ss_family == AF_INET6) {
        inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&peer)->sin6_addr, text, sizeof text);
      } else {
        inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&peer)->sin_addr, text, sizeof text);
      }
      c.peer = text;
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      // The broker's plain listener is on loopback: the connect completes at once.
      c.backend = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in backend{};
      backend.sin_family = AF_INET;
      backend.sin_port = htons(static_cast<uint16_t>(options.backendPort));
      backend.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (c.backend < 0 ||
          ::connect(c.backend, reinterpret_cast<sockaddr*>(&backend), sizeof backend) != 0) {
        shaping.log("front: cannot reach the broker's inner listener: " +
                    std::string(std::strerror(errno)));
        c.closed = true;
        continue;
      }
      ::fcntl(c.backend, F_SETFL, ::fcntl(c.backend, F_GETFL) | O_NONBLOCK);
      ::setsockopt(c.backend, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      c.ssl = SSL_new(ctx);
      SSL_set_fd(c.ssl, c.client);
      SSL_set_accept_state(c.ssl);
    }
  }

  void close(Connection& c, const char* why) {
    if (!c.closed && !c.clientId.empty())
      shaping.log("front: connection of '" + c.clientId + "' from " + c.peer + " ends: " + why);
    c.closed = true;
  }

  // Returns false when the TLS session failed.
  bool sslResult(Connection& c, int rc) {
    const int err = SSL_get_error(c.ssl, rc);
    if (err == SSL_ERROR_WANT_READ)
      return true;
    if (err == SSL_ERROR_WANT_WRITE) {
      c.sslWantsWrite = true;
      return true;
    }
    ERR_clear_error();
    return false;
  }

  void fromClient(Connection& c, const std::string& bytes) {
    c.toBackend += bytes;
    if (c.connectSeen)
      return;
    c.firstPacket += bytes;
    const int64_t length = packetLength(c.firstPacket);
    if (length == 0 && c.firstPacket.size() < kMaxBuffered)
      return;
    c.connectSeen = true;
    if (length > 0 && (static_cast<unsigned char>(c.firstPacket[0]) >> 4) == kMqttConnect) {
      c.clientId = connectClientId(c.firstPacket.substr(0, static_cast<size_t>(length)));
    }
    c.firstPacket.clear();
  }

  void fromBroker(Connection& c, int64_t now) {
    while (true) {
      const int64_t length = packetLength(c.fromBackend);
      if (length < 0) {
        close(c, "malformed packet from the broker");
        return;
      }
      if (length == 0)
        return;
      Held packet;
      packet.bytes = c.fromBackend.substr(0, static_cast<size_t>(length));
      c.fromBackend.erase(0, static_cast<size_t>(length));
      const int type = static_cast<unsigned char>(packet.bytes[0]) >> 4;
      int64_t delay = 0;
      if (type == kMqttPuback)
        delay = shaping.pubackDelayMs(c.clientId);
      else if (type == kMqttSuback)
        delay = shaping.subackDelayMs();
      // One queue per connection: a held packet holds back what follows it, like a slow link,
      // so the device sees everything in the broker's order.
      packet.dueMs = std::max(now + delay, c.lastDueMs);
      c.lastDueMs = packet.dueMs;
      if (delay > 0) {
        shaping.log("front: holding " + std::string(type == kMqttPuback ? "PUBACK" : "SUBACK") +
                    " to '" + c.clientId + "' for " + std::to_string(delay) + " ms");
      }
      c.held.push_back(std::move(packet));
    }
  }

  void service(Connection& c) {
    const int64_t now = nowMs();
    c.sslWantsWrite = false;
    char buf[16384];
    if (!c.handshaken) {
      ERR_clear_error();
      const int rc = SSL_accept(c.ssl);
      if (rc != 1) {
        if (!sslResult(c, rc))
          close(c, "TLS handshake failed");
        return;
      }
      c.handshaken = true;
    }
    // device -> broker
    while (!c.clientEof && c.toBackend.size() < kMaxBuffered) {
      ERR_clear_error();
      const int n = SSL_read(c.ssl, buf, sizeof buf);
      if (n > 0) {
        fromClient(c, std::string(buf, static_cast<size_t>(n)));
        continue;
      }
      if (!sslResult(c, n))
        c.clientEof = true;
      break;
    }
    while (!c.toBackend.empty()) {
      const ssize_t n = ::send(c.backend, c.toBackend.data(), c.toBackend.size(), MSG_NOSIGNAL);
      if (n > 0) {
        c.toBackend.erase(0, static_cast<size_t>(n));
      } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        break;
      } else {
        c.backendEof = true;
        c.toBackend.clear();
      }
    }
    if (c.clientEof && (c.toBackend.empty() || c.backendEof)) {
      // The device went away: closing the broker side (after its last bytes) tells the broker.
      close(c, "the device closed the connection");
      return;
    }
    // broker -> device
    while (!c.backendEof && c.fromBackend.size() + c.toClient.size() < kMaxBuffered) {
      const ssize_t n = ::recv(c.backend, buf, sizeof buf, 0);
      if (n > 0) {
        c.fromBackend.append(buf, static_cast<size_t>(n));
      } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        break;
      } else {
        c.backendEof = true;
      }
    }
    fromBroker(c, now);
    while (!c.held.empty() && c.held.front().dueMs <= now) {
      c.toClient += c.held.front().bytes;
      c.held.pop_front();
    }
    while (!c.toClient.empty()) {
      ERR_clear_error();
      const int n = SSL_write(c.ssl, c.toClient.data(), static_cast<int>(c.toClient.size()));
      if (n > 0) {
        c.toClient.erase(0, static_cast<size_t>(n));
        continue;
      }
      if (!sslResult(c, n)) {
        close(c, "TLS write failed");
        return;
      }
      break;
    }
    if (c.backendEof && c.held.empty() && c.toClient.empty()) {
      SSL_shutdown(c.ssl);  // best effort close_notify
      close(c, "the broker closed the connection");
    }
  }

  void run() {
    while (true) {
      std::vector<pollfd> fds;
      fds.push_back({wake, POLLIN, 0});
      for (int l : listeners)
        fds.push_back({l, POLLIN, 0});
      int timeout = 1000;
      const int64_t now = nowMs();
      for (Connection& c : connections) {
        const bool writeClient = !c.toClient.empty() || c.sslWantsWrite;
        fds.push_back({c.client,
                       static_cast<short>((c.clientEof ? 0 : POLLIN) | (writeClient ? POLLOUT : 0)),
                       0});
        fds.push_back(
            {c.backend,
             static_cast<short>((c.backendEof ? 0 : POLLIN) | (c.toBackend.empty() ? 0 : POLLOUT)),
             0});
        if (!c.held.empty())
          timeout = std::min<int64_t>(timeout, std::max<int64_t>(0, c.held.front().dueMs - now));
        if (c.ssl != nullptr && SSL_pending(c.ssl) > 0)
          timeout = 0;
      }
      if (::poll(fds.data(), fds.size(), timeout) < 0 && errno != EINTR)
        return;
      if (fds[0].revents != 0)
        return;  // stop requested
      for (size_t i = 0; i < listeners.size(); ++i) {
        if (fds[1 + i].revents != 0)
          accept(listeners[i]);
      }
      for (Connection& c : connections) {
        if (!c.closed)
          service(c);
      }
      connections.remove_if([](const Connection& c) { return c.closed; });
    }
  }
};

Front::Front(Options options, Shaping& shaping)
    : impl_(std::make_unique<Impl>(std::move(options), shaping)) {
  impl_->setUp();
  thread_ = std::thread([impl = impl_.get()] { impl->run(); });
}

Front::~Front() {
  const uint64_t one = 1;
  if (::write(impl_->wake, &one, sizeof one) < 0) {
    // Cannot happen for an eventfd that is open; the join below would then hang, so say so.
    impl_->shaping.log("front: cannot wake its thread");
  }
  if (thread_.joinable())
    thread_.join();
}

}  // namespace iothubd::hubemu
