// SPDX-License-Identifier: MIT
#include "iothubd/relay/tunnel.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <vector>

#include "iothubd/core/lifetime.hpp"
#include "iothubd/core/log.hpp"
#include "proxy_handshake.hpp"
#include "socket_address.hpp"
#include "tcp_connector.hpp"
#include "websocket_codec.hpp"

namespace iothubd::relay {
namespace {

using core::Errc;
using core::fail;
using core::logf;
using core::LogLevel;

/// Bytes buffered per direction before the tunnel stops reading the other side (backpressure).
constexpr std::size_t kMaxBuffered = 1024 * 1024;
/// How long an orderly close may take to flush libmosquitto's last bytes (DISCONNECT) to the hub.
constexpr std::chrono::seconds kCloseGrace{3};
constexpr std::size_t kReadChunk = 16 * 1024;

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = o.fd_;
      o.fd_ = -1;
    }
    return *this;
  }
  ~Fd() { reset(); }
  void reset() noexcept {
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  [[nodiscard]] int get() const noexcept { return fd_; }
  [[nodiscard]] bool valid() const noexcept { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

struct SslCtxFree {
  void operator()(SSL_CTX* c) const noexcept { SSL_CTX_free(c); }
};
struct SslFree {
  void operator()(SSL* s) const noexcept { SSL_free(s); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxFree>;
using SslPtr = std::unique_ptr<SSL, SslFree>;

/// The queued OpenSSL errors as one line (they name files and reasons, never key material).
std::string opensslErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) {
      out += "; ";
    }
    out += buf;
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

/// Zeroes a string's whole buffer (erase() leaves old bytes in the capacity) and empties it.
void wipe(std::string& s) noexcept {
  s.resize(s.capacity());
  OPENSSL_cleanse(s.data(), s.size());
  s.clear();
}

int passphraseCallback(char* buf, int size, int, void* userdata) noexcept {
  const auto* secret = static_cast<const core::Secret<>*>(userdata);
  if (secret == nullptr || size <= 0) {
    return 0;
  }
  const std::string& p = secret->reveal();
  int n = static_cast<int>(std::min<std::size_t>(p.size(), static_cast<std::size_t>(size - 1)));
  std::memcpy(buf, p.data(), static_cast<std::size_t>(n));
  buf[n] = '\0';
  return n;
}

/// The TLS context of protocol doc 1.5, the same settings libmosquitto gets in the direct case.
core::Result<SslCtxPtr> makeContext(const TlsClientConfig& tls) {
  ERR_clear_error();
  SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  if (!ctx) {
    return fail(Errc::Internal, "cannot create TLS context: " + opensslErrors());
  }
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (tls.caFile.empty()) {
    if (SSL_CTX_set_default_verify_paths(ctx.get()) != 1) {
      return fail(Errc::Config, "cannot load the system CA store: " + opensslErrors());
    }
  } else if (SSL_CTX_load_verify_file(ctx.get(), tls.caFile.c_str()) != 1) {
    return fail(Errc::Config,
                "cannot load CA certificates from " + tls.caFile + ": " + opensslErrors());
  }
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  if (!tls.ciphers.empty() && SSL_CTX_set_cipher_list(ctx.get(), tls.ciphers.c_str()) != 1) {
    return fail(Errc::Config,
                "invalid cipher list " + core::quoted(tls.ciphers) + ": " + opensslErrors());
  }
  if (!tls.certFile.empty()) {
    SSL_CTX_set_default_passwd_cb(ctx.get(), &passphraseCallback);
    SSL_CTX_set_default_passwd_cb_userdata(ctx.get(),
                                           const_cast<core::Secret<>*>(&tls.keyPassphrase));
    bool ok = SSL_CTX_use_certificate_chain_file(ctx.get(), tls.certFile.c_str()) == 1;
    std::string why =
        ok ? "" : "cannot load the client certificate " + tls.certFile + ": " + opensslErrors();
    if (ok && SSL_CTX_use_PrivateKey_file(ctx.get(), tls.keyFile.c_str(), SSL_FILETYPE_PEM) != 1) {
      ok = false;
      why =
          "cannot load the client key " + tls.keyFile + " (wrong pass phrase?): " + opensslErrors();
    }
    if (ok && SSL_CTX_check_private_key(ctx.get()) != 1) {
      ok = false;
      why = "the client key " + tls.keyFile + " does not match the certificate " + tls.certFile;
    }
    // The pass phrase is needed only while loading; nothing may point at it afterwards.
    SSL_CTX_set_default_passwd_cb(ctx.get(), nullptr);
    SSL_CTX_set_default_passwd_cb_userdata(ctx.get(), nullptr);
    if (!ok) {
      return fail(Errc::Config, why);
    }
  }
  return ctx;
}

bool isIpLiteral(const std::string& host) {
  unsigned char buf[16];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

std::string hostPort(const std::string& host, int port) {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" +
         std::to_string(port);
}

/// A fresh private directory for the local socket: $RUNTIME_DIRECTORY (systemd), else $TMPDIR,
/// else /tmp.
core::Result<std::string> makeSocketDirectory() {
  std::string base = "/tmp";
  if (const char* runtime = std::getenv("RUNTIME_DIRECTORY");
      runtime != nullptr && *runtime != '\0') {
    base = runtime;
    base = base.substr(0, base.find(':'));  // several directories are colon-separated
  } else if (const char* tmp = std::getenv("TMPDIR"); tmp != nullptr && *tmp != '\0') {
    base = tmp;
  }
  std::string tmpl = base + "/iothubd-relay-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    int err = errno;
    return fail(
        Errc::Io,
        "cannot create a directory for the MQTT relay under " + base + ": " + std::strerror(err),
        err);
  }
  return tmpl;
}

class TunnelImpl final : public Tunnel {
 public:
  TunnelImpl(loop::EventLoop& loop, TunnelOptions options)
      : loop_(loop), options_(std::move(options)) {}

  ~TunnelImpl() override {
    lifetime_.end();
    closeAll();
    removeSocketFiles();
  }

  core::Result<void> start() {
    auto dir = makeSocketDirectory();
    if (!dir) {
      return core::fail(dir.error());
    }
    dir_ = *dir;
    socketPath_ = dir_ + "/mqtt";
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (socketPath_.size() >= sizeof addr.sun_path) {
      return core::fail(Errc::Io, "relay socket path too long: " + socketPath_);
    }
    std::memcpy(addr.sun_path, socketPath_.c_str(), socketPath_.size() + 1);
    listener_ = Fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!listener_.valid() ||
        ::bind(listener_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listener_.get(), 4) != 0) {
      int err = errno;
      return core::fail(Errc::Io, "cannot listen on " + socketPath_ + ": " + std::strerror(err),
                        err);
    }
    auto watch = loop_.watchIo(listener_.get(), EPOLLIN, [this](std::uint32_t) { onAccept(); });
    if (!watch) {
      return core::fail(watch.error());
    }
    listenWatch_ = std::move(*watch);
    closeTimer_ = loop_.createTimer([this] { finish(); });
    resolve();
    return {};
  }

  const std::string& localPath() const override { return socketPath_; }
  const std::optional<core::Error>& failure() const override { return failure_; }
  bool established() const override { return phase_ == Phase::Open; }
  bool closed() const override { return phase_ == Phase::Closed; }

 private:
  enum class Phase { Resolving, Connecting, Proxy, Tls, Upgrade, Open, Closing, Closed };

  // ---- the local end: libmosquitto -------------------------------------------------------

  void removeSocketFiles() noexcept {
    if (!dir_.empty()) {
      ::unlink(socketPath_.c_str());
      ::rmdir(dir_.c_str());
      dir_.clear();
    }
  }

  void onAccept() {
    while (true) {
      Fd fd(::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
      if (!fd.valid()) {
        return;  // EAGAIN, or an error the next event retries
      }
      // Only libmosquitto inside this process may use the tunnel: it carries our TLS client
      // identity and proxy credentials.
      ucred cred{};
      socklen_t len = sizeof cred;
      if (::getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
          cred.pid != ::getpid() || down_.valid()) {
        logf(LogLevel::Warning, "MQTT relay: refused a local connection from pid ", cred.pid);
        continue;
      }
      down_ = std::move(fd);
      auto watch = loop_.watchIo(down_.get(), EPOLLIN, [this](std::uint32_t) { pump(); });
      if (!watch) {
        giveUp(watch.error());
        return;
      }
      downWatch_ = std::move(*watch);
      // One connection per tunnel: nobody else may connect from now on, and nothing is left in
      // the file system even if the daemon is killed later.
      listenWatch_.reset();
      listener_.reset();
      removeSocketFiles();
      pump();
      return;
    }
  }

  // ---- the hub end: DNS, TCP ---------------------------------------------------------------

  struct Resolved {
    std::vector<SocketAddress> addresses;
    int error = EAI_FAIL;    ///< stays a failure if the lookup never ran
    std::string targetIpv4;  ///< SOCKS4: the hub's IPv4 address
    int targetError = 0;
    core::Result<SslCtxPtr> ctx = core::fail(Errc::Internal, "not built");
  };

  void resolve() {
    const bool viaProxy = options_.proxy.enabled();
    hopHost_ = viaProxy ? options_.proxy.host : options_.host;
    hopPort_ = viaProxy ? options_.proxy.port : options_.port;
    auto result = std::make_shared<Resolved>();
    std::string host = hopHost_;
    std::string port = std::to_string(hopPort_);
    // SOCKS4 carries an IPv4 address. SOCKS4a would let the proxy resolve the name, but common
    // servers (Dante) do not implement it, so the name is resolved here, as curl's SOCKS4 does.
    std::string socks4Target;
    unsigned char v4[4];
    if (options_.proxy.type == core::ProxySettings::Type::Socks4 &&
        inet_pton(AF_INET, options_.host.c_str(), v4) != 1) {
      socks4Target = options_.host;
    }
    // getaddrinfo blocks (architecture doc 6.1): it runs off the loop. So does building the TLS
    // context, which parses the CA certificates: the system store takes tens of milliseconds.
    loop_.runOffLoop(
        [result, host, port, socks4Target, tls = options_.tls] {
          result->ctx = makeContext(tls);
          if (!socks4Target.empty()) {
            addrinfo hints{};
            hints.ai_family = AF_INET;
            hints.ai_socktype = SOCK_STREAM;
            addrinfo* list = nullptr;
            result->targetError = ::getaddrinfo(socks4Target.c_str(), nullptr, &hints, &list);
            if (result->targetError == 0 && list != nullptr) {
              char text[INET_ADDRSTRLEN];
              inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(list->ai_addr)->sin_addr, text,
                        sizeof text);
              result->targetIpv4 = text;
            }
            if (list != nullptr) {
              ::freeaddrinfo(list);
            }
          }
          // Every address of the name, both families (no AI_ADDRCONFIG: glibc does not count
          // loopback addresses as configured, so it would hide `::1 localhost`): the connector
          // tries them all (RFC 8305).
          addrinfo hints{};
          hints.ai_socktype = SOCK_STREAM;
          hints.ai_protocol = IPPROTO_TCP;
          addrinfo* list = nullptr;
          result->error = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &list);
          for (addrinfo* a = list; a != nullptr; a = a->ai_next) {
            if ((a->ai_family != AF_INET && a->ai_family != AF_INET6) ||
                a->ai_addrlen > sizeof(sockaddr_storage)) {
              continue;
            }
            SocketAddress address;
            std::memcpy(&address.storage, a->ai_addr, a->ai_addrlen);
            address.length = a->ai_addrlen;
            result->addresses.push_back(address);
          }
          if (list != nullptr) {
            ::freeaddrinfo(list);
          }
        },
        lifetime_.guard([this, result] { onResolved(*result); }));
  }

  /// "HTTP proxy host:port", or "host:port" without a proxy.
  std::string hopName() const {
    return options_.proxy.enabled() ? std::string(core::proxyTypeName(options_.proxy.type)) +
                                          " proxy " + hostPort(hopHost_, hopPort_)
                                    : hostPort(hopHost_, hopPort_);
  }

  void onResolved(Resolved& r) {
    if (phase_ != Phase::Resolving) {
      return;
    }
    if (!r.ctx) {
      giveUp(r.ctx.error());
      return;
    }
    ctx_ = std::move(*r.ctx);
    if (r.error != 0 || r.addresses.empty()) {
      // The transport names the hub and the proxy around this text.
      giveUp(Errc::ConnectionFailed,
             "cannot resolve " + std::string(options_.proxy.enabled() ? "the proxy's name " : "") +
                 core::quoted(hopHost_) + ": " +
                 (r.error != 0 ? gai_strerror(r.error) : "no address"));
      return;
    }
    if (options_.proxy.type == core::ProxySettings::Type::Socks4) {
      proxyTarget_ = options_.host;
      if (r.targetError != 0) {
        giveUp(Errc::ConnectionFailed, "cannot resolve " + options_.host +
                                           " for the SOCKS4 proxy: " + gai_strerror(r.targetError));
        return;
      }
      if (!r.targetIpv4.empty()) {
        proxyTarget_ = r.targetIpv4;
      }
    } else {
      proxyTarget_ = options_.host;
    }
    phase_ = Phase::Connecting;
    connector_ = std::make_unique<TcpConnector>(
        loop_, interleaveFamilies(r.addresses), options_.connectionAttemptDelay,
        [this](core::Result<TcpConnector::Connected> c) { onConnected(std::move(c)); });
    connector_->start();
  }

  void onConnected(core::Result<TcpConnector::Connected> connected) {
    // Dropped from the loop, after its own callback has returned.
    std::shared_ptr<TcpConnector> done(std::move(connector_));
    loop_.post([done] {});
    if (!connected) {
      giveUp(Errc::ConnectionFailed, (options_.proxy.enabled() ? "cannot reach the proxy: " : "") +
                                         connected.error().message);
      return;
    }
    peerAddress_ = connected->address.toString();
    up_ = Fd(connected->fd.release());
    auto watch = loop_.watchIo(up_.get(), EPOLLIN, [this](std::uint32_t) { step(); });
    if (!watch) {
      giveUp(watch.error());
      return;
    }
    upWatch_ = std::move(*watch);
    onTcpConnected();
  }

  void onTcpConnected() {
    if (options_.proxy.enabled()) {
      proxy_ = ProxyHandshake::create(options_.proxy, proxyTarget_, options_.port);
      phase_ = Phase::Proxy;
      rawOut_ = proxy_->takeOutput();
    } else {
      startTls();
      return;
    }
    step();
  }

  // ---- proxy handshake (plain bytes on the TCP connection) ------------------------------------

  void stepProxy() {
    while (!rawOut_.empty()) {
      ssize_t n = ::send(up_.get(), rawOut_.data(), rawOut_.size(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) {
          setUpEvents(EPOLLOUT);
          return;
        }
        giveUp(Errc::ConnectionFailed,
               "the " + hopName() + " closed the connection: " + std::strerror(errno));
        return;
      }
      rawOut_.erase(0, static_cast<std::size_t>(n));
    }
    wipe(rawOut_);  // it held the proxy credentials
    char buf[4096];
    while (true) {
      ssize_t n = ::recv(up_.get(), buf, sizeof buf, 0);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) {
          setUpEvents(EPOLLIN);
          return;
        }
        giveUp(Errc::ConnectionFailed,
               "the " + hopName() + " closed the connection: " + std::strerror(errno));
        return;
      }
      if (n == 0) {
        giveUp(Errc::ConnectionFailed,
               "the " + hopName() + " closed the connection during the handshake");
        return;
      }
      auto done = proxy_->feed(std::string_view(buf, static_cast<std::size_t>(n)));
      if (!done) {
        giveUp(done.error().code, done.error().message);
        return;
      }
      rawOut_ += proxy_->takeOutput();
      if (*done) {
        if (!proxy_->takeLeftover().empty()) {
          giveUp(Errc::Protocol, "the " + hopName() + " sent data before TLS started");
          return;
        }
        proxy_.reset();
        startTls();
        return;
      }
      if (!rawOut_.empty()) {
        stepProxy();
        return;
      }
    }
  }

  // ---- TLS and the WebSocket upgrade ----------------------------------------------------------

  void startTls() {
    phase_ = Phase::Tls;
    ssl_.reset(SSL_new(ctx_.get()));
    if (!ssl_ || SSL_set_fd(ssl_.get(), up_.get()) != 1) {
      giveUp(Errc::Internal, "cannot create TLS session: " + opensslErrors());
      return;
    }
    // Protocol doc 1.5: SNI names the host we connect to (never an IP literal, RFC 6066 3), and
    // the certificate must match it.
    if (isIpLiteral(options_.host)) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_.get()), options_.host.c_str());
    } else {
      SSL_set_tlsext_host_name(ssl_.get(), options_.host.c_str());
      SSL_set1_host(ssl_.get(), options_.host.c_str());
    }
    SSL_set_connect_state(ssl_.get());
    step();
  }

  /// Interprets a failed SSL_* call: records in `wants` which readiness lets it continue, or
  /// fails the tunnel. Returns false when the tunnel failed.
  bool sslRetry(int rc, const char* what, std::uint32_t& wants) {
    int err = SSL_get_error(ssl_.get(), rc);
    if (err == SSL_ERROR_WANT_READ) {
      wants = EPOLLIN;
      return true;
    }
    if (err == SSL_ERROR_WANT_WRITE) {
      wants = EPOLLOUT;
      return true;
    }
    failTls(err, what);
    return false;
  }

  void failTls(int err, const char* what) {
    long verify = SSL_get_verify_result(ssl_.get());
    if (phase_ == Phase::Tls && verify != X509_V_OK) {
      giveUp(Errc::ConnectionFailed,
             "TLS: certificate verification failed for " + hostPort(options_.host, options_.port) +
                 ": " + X509_verify_cert_error_string(verify) +
                 (options_.tls.caFile.empty() ? " (system CA store)"
                                              : " (CA file " + options_.tls.caFile + ")"));
      return;
    }
    std::string detail;
    if (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
      detail = errno != 0 ? std::strerror(errno) : "connection closed by the peer";
    } else if (err == SSL_ERROR_ZERO_RETURN) {
      detail = "connection closed by the peer";
    } else {
      detail = opensslErrors();
    }
    giveUp(phase_ == Phase::Open ? Errc::ConnectionDropped : Errc::ConnectionFailed,
           std::string(what) + " " + hostPort(options_.host, options_.port) + ": " + detail);
  }

  void stepTls() {
    ERR_clear_error();
    errno = 0;
    int rc = SSL_connect(ssl_.get());
    if (rc != 1) {
      std::uint32_t wants = 0;
      if (sslRetry(rc, "TLS handshake with", wants)) {
        setUpEvents(wants);
      }
      return;
    }
    if (options_.websockets) {
      std::array<std::uint8_t, 16> nonce{};
      RAND_bytes(nonce.data(), static_cast<int>(nonce.size()));
      upgrade_ = std::make_unique<WebSocketHandshake>(
          options_.host, options_.port, options_.websocketPath, options_.websocketSubprotocol,
          nonce, options_.userAgent);
      upOut_ = upgrade_->request();
      phase_ = Phase::Upgrade;
      step();
      return;
    }
    becomeOpen(std::string());
  }

  void stepUpgrade() {
    writeWants_ = 0;
    if (!flushUp()) {
      return;
    }
    if (writeWants_ != 0) {
      setUpEvents(writeWants_);
      return;
    }
    char buf[4096];
    while (phase_ == Phase::Upgrade) {
      ERR_clear_error();
      errno = 0;
      int n = SSL_read(ssl_.get(), buf, sizeof buf);
      if (n <= 0) {
        std::uint32_t wants = 0;
        if (sslRetry(n, "WebSocket upgrade with", wants)) {
          setUpEvents(wants);
        }
        return;
      }
      auto done = upgrade_->feed(std::string_view(buf, static_cast<std::size_t>(n)));
      if (!done) {
        giveUp(
            done.error().code == Errc::ConnectionFailed ? Errc::ConnectionFailed : Errc::Protocol,
            hostPort(options_.host, options_.port) + options_.websocketPath + ": " +
                done.error().message);
        return;
      }
      if (*done) {
        std::string leftover = upgrade_->takeLeftover();
        upgrade_.reset();
        becomeOpen(leftover);
        return;
      }
    }
  }

  void becomeOpen(const std::string& firstBytes) {
    phase_ = Phase::Open;
    logf(LogLevel::Debug, "MQTT relay: ", options_.websockets ? "WebSocket " : "TLS ", "tunnel to ",
         hostPort(options_.host, options_.port), " (", peerAddress_, ")",
         options_.proxy.enabled() ? " through the " + hopName() : "", " is open");
    if (!firstBytes.empty() && !fromHub(firstBytes)) {
      return;
    }
    // What libmosquitto sent meanwhile (its CONNECT) goes first.
    if (!pendingUp_.empty()) {
      toHub(pendingUp_);
      pendingUp_.clear();
    }
    pump();
  }

  // ---- pumping -----------------------------------------------------------------------------

  void step() {
    switch (phase_) {
      case Phase::Proxy:
        stepProxy();
        break;
      case Phase::Tls:
        stepTls();
        break;
      case Phase::Upgrade:
        stepUpgrade();
        break;
      case Phase::Open:
      case Phase::Closing:
        pump();
        break;
      default:
        break;
    }
  }

  /// Queues libmosquitto's bytes for the hub, framed when WebSockets are on.
  void toHub(std::string_view bytes) {
    if (!options_.websockets) {
      upOut_.append(bytes);
      return;
    }
    WsMask mask{};
    RAND_bytes(mask.data(), static_cast<int>(mask.size()));
    upOut_ += encodeClientFrame(WsOpcode::Binary, bytes, mask);
  }

  /// Handles the hub's bytes; false if the tunnel failed or closed.
  bool fromHub(std::string_view bytes) {
    if (!options_.websockets) {
      downOut_.append(bytes);
      return true;
    }
    events_.clear();
    auto r = decoder_.feed(bytes, events_);
    for (auto& e : events_) {
      switch (e.kind) {
        case WsEvent::Kind::Data:
          downOut_ += e.payload;
          break;
        case WsEvent::Kind::Ping: {
          // RFC 6455 5.5.2: answer with a Pong carrying the same payload.
          WsMask mask{};
          RAND_bytes(mask.data(), static_cast<int>(mask.size()));
          upOut_ += encodeClientFrame(WsOpcode::Pong, e.payload, mask);
          break;
        }
        case WsEvent::Kind::Pong:
          break;
        case WsEvent::Kind::Close: {
          // RFC 6455 5.5.1: echo the Close, then the connection ends.
          hubClosed_ = true;
          closeInfo_ = "the hub closed the WebSocket (" + std::to_string(e.closeCode) +
                       (e.closeReason.empty() ? "" : " " + e.closeReason) + ")";
          WsMask mask{};
          RAND_bytes(mask.data(), static_cast<int>(mask.size()));
          upOut_ += encodeClientFrame(
              WsOpcode::Close, e.closeCode == 1005 ? std::string() : closePayload(e.closeCode),
              mask);
          break;
        }
      }
    }
    if (!r) {
      // RFC 6455 7.1.7: fail the connection, telling the peer why (1002 protocol error).
      WsMask mask{};
      RAND_bytes(mask.data(), static_cast<int>(mask.size()));
      upOut_ += encodeClientFrame(WsOpcode::Close, closePayload(1002), mask);
      flushUp();
      giveUp(Errc::Protocol,
             "WebSocket from " + hostPort(options_.host, options_.port) + ": " + r.error().message);
      return false;
    }
    return true;
  }

  /// Writes upOut_ through TLS until done or blocked (writeWants_ then says on what); false if
  /// the tunnel failed.
  bool flushUp() {
    writeWants_ = 0;
    while (!upOut_.empty()) {
      ERR_clear_error();
      errno = 0;
      int n = SSL_write(ssl_.get(), upOut_.data(),
                        static_cast<int>(std::min<std::size_t>(upOut_.size(), 1 << 30)));
      if (n <= 0) {
        return sslRetry(n, "sending to", writeWants_);
      }
      upOut_.erase(0, static_cast<std::size_t>(n));
    }
    return true;
  }

  void pump() {
    if (phase_ == Phase::Closed) {
      return;
    }
    char buf[kReadChunk];
    bool progress = true;
    while (progress && phase_ != Phase::Closed) {
      progress = false;
      // libmosquitto -> hub
      if (down_.valid() && !downEof_ && pendingUp_.size() + upOut_.size() < kMaxBuffered) {
        ssize_t n = ::recv(down_.get(), buf, sizeof buf, 0);
        if (n > 0) {
          progress = true;
          if (phase_ == Phase::Open) {
            toHub(std::string_view(buf, static_cast<std::size_t>(n)));
          } else if (phase_ != Phase::Closing) {
            pendingUp_.append(buf, static_cast<std::size_t>(n));
          }
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
          onLocalEnd();
          progress = true;
          continue;
        }
      }
      if (phase_ != Phase::Open && phase_ != Phase::Closing) {
        break;  // the hub side is not ready: only buffer
      }
      if (!upOut_.empty()) {
        std::size_t before = upOut_.size();
        if (!flushUp()) {
          return;
        }
        progress = progress || upOut_.size() != before;
      }
      if (phase_ == Phase::Closing && upOut_.empty()) {
        SSL_shutdown(ssl_.get());  // best effort close_notify; we do not wait for the answer
        finish();
        return;
      }
      // hub -> libmosquitto
      readWants_ = 0;
      if (phase_ == Phase::Open && !hubClosed_ && downOut_.size() < kMaxBuffered) {
        ERR_clear_error();
        errno = 0;
        int n = SSL_read(ssl_.get(), buf, sizeof buf);
        if (n > 0) {
          progress = true;
          if (!fromHub(std::string_view(buf, static_cast<std::size_t>(n)))) {
            return;
          }
        } else {
          int err = SSL_get_error(ssl_.get(), n);
          if (err == SSL_ERROR_ZERO_RETURN ||
              (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && errno == 0)) {
            hubClosed_ = true;
            progress = true;
            if (closeInfo_.empty()) {
              closeInfo_ = "the hub closed the connection";
            }
          } else if (!sslRetry(n, "receiving from", readWants_)) {
            return;
          }
        }
      }
      // to libmosquitto
      if (!downOut_.empty() && down_.valid()) {
        ssize_t n = ::send(down_.get(), downOut_.data(), downOut_.size(), MSG_NOSIGNAL);
        if (n > 0) {
          downOut_.erase(0, static_cast<std::size_t>(n));
          progress = true;
        } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
          onLocalEnd();
          continue;
        }
      }
      if (hubClosed_ && downOut_.empty() && upOut_.empty()) {
        // Everything the hub said reached libmosquitto: end the local side so it notices.
        failure_ = core::Error{Errc::ConnectionDropped, closeInfo_};
        finish();
        return;
      }
    }
    updateEvents();
  }

  /// libmosquitto closed its end: after a DISCONNECT this flushes the last bytes to the hub
  /// (bounded by kCloseGrace), before the tunnel is up it just ends.
  void onLocalEnd() {
    downEof_ = true;
    downWatch_.reset();
    down_.reset();
    if (phase_ != Phase::Open) {
      finish();
      return;
    }
    if (options_.websockets) {
      WsMask mask{};
      RAND_bytes(mask.data(), static_cast<int>(mask.size()));
      upOut_ += encodeClientFrame(WsOpcode::Close, closePayload(1000), mask);
    }
    phase_ = Phase::Closing;
    closeTimer_->armAfter(kCloseGrace);
  }

  void setUpEvents(std::uint32_t events) {
    if (upWatch_) {
      upWatch_->setEvents(events != 0 ? events : EPOLLIN);
    }
  }

  void updateEvents() {
    if (phase_ == Phase::Open || phase_ == Phase::Closing) {
      // Level-triggered: ask only for what can make progress, or the loop would spin.
      std::uint32_t up = 0;
      if (phase_ == Phase::Open && !hubClosed_ && downOut_.size() < kMaxBuffered) {
        up |= EPOLLIN;
      }
      if (!upOut_.empty()) {
        up |= writeWants_ == EPOLLIN ? EPOLLIN : EPOLLOUT;
      }
      up |= readWants_;
      if (upWatch_) {
        upWatch_->setEvents(up);
      }
    }
    if (downWatch_) {
      std::uint32_t down = 0;
      if (!downEof_ && pendingUp_.size() + upOut_.size() < kMaxBuffered) {
        down |= EPOLLIN;
      }
      if (!downOut_.empty()) {
        down |= EPOLLOUT;
      }
      downWatch_->setEvents(down);
    }
  }

  // ---- ending ------------------------------------------------------------------------------

  void giveUp(core::Error error) { giveUp(error.code, std::move(error.message)); }

  void giveUp(Errc code, std::string message) {
    if (phase_ == Phase::Closed) {
      return;
    }
    if (!failure_) {
      failure_ = core::Error{code, std::move(message)};
      logf(LogLevel::Debug, "MQTT relay: ", failure_->message);
    }
    finish();
  }

  void finish() {
    phase_ = Phase::Closed;
    closeAll();
  }

  void closeAll() noexcept {
    if (closeTimer_) {
      closeTimer_->disarm();
    }
    connector_.reset();
    upWatch_.reset();
    downWatch_.reset();
    listenWatch_.reset();
    ssl_.reset();
    up_.reset();
    // Closing the local end (or the listener with libmosquitto's connection still queued) is
    // how libmosquitto learns that the tunnel ended.
    down_.reset();
    listener_.reset();
  }

  loop::EventLoop& loop_;
  TunnelOptions options_;
  Phase phase_ = Phase::Resolving;
  std::optional<core::Error> failure_;
  std::string dir_;
  std::string socketPath_;
  Fd listener_;
  Fd down_;
  Fd up_;
  std::unique_ptr<loop::IoWatch> listenWatch_;
  std::unique_ptr<loop::IoWatch> downWatch_;
  std::unique_ptr<loop::IoWatch> upWatch_;
  std::unique_ptr<core::Timer> closeTimer_;
  std::string hopHost_;
  int hopPort_ = 0;
  std::unique_ptr<TcpConnector> connector_;  ///< while Connecting
  std::string peerAddress_;                  ///< the address that answered, for logs
  std::unique_ptr<ProxyHandshake> proxy_;
  std::string proxyTarget_;  ///< host named in the proxy request (SOCKS4: an IPv4 literal)
  std::string rawOut_;       ///< proxy handshake bytes (may hold credentials)
  SslCtxPtr ctx_;
  SslPtr ssl_;
  std::uint32_t writeWants_ = 0;  ///< what the last blocked SSL_write waits for
  std::uint32_t readWants_ = 0;   ///< what the last blocked SSL_read waits for
  std::unique_ptr<WebSocketHandshake> upgrade_;
  WebSocketDecoder decoder_;
  std::vector<WsEvent> events_;
  std::string pendingUp_;  ///< from libmosquitto before the tunnel was open
  std::string upOut_;      ///< to the hub (framed), through TLS
  std::string downOut_;    ///< to libmosquitto
  bool downEof_ = false;
  bool hubClosed_ = false;
  std::string closeInfo_;
  core::Lifetime lifetime_;  ///< last: callbacks of a destroyed tunnel never run
};

}  // namespace

core::Result<void> checkTlsConfig(const TlsClientConfig& tls) {
  auto ctx = makeContext(tls);
  if (!ctx) {
    return fail(ctx.error());
  }
  return {};
}

core::Result<std::unique_ptr<Tunnel>> Tunnel::open(loop::EventLoop& loop, TunnelOptions options) {
  auto tunnel = std::make_unique<TunnelImpl>(loop, std::move(options));
  if (auto r = tunnel->start(); !r) {
    return fail(r.error());
  }
  return std::unique_ptr<Tunnel>(std::move(tunnel));
}

}  // namespace iothubd::relay
