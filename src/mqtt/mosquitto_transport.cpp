// SPDX-License-Identifier: MIT
#include "iothubd/mqtt/mosquitto_transport.hpp"

#include <sys/epoll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <future>
#include <mutex>

#include <mosquitto.h>

#include "iothubd/core/lifetime.hpp"
#include "iothubd/core/log.hpp"
#include "iothubd/relay/tunnel.hpp"

namespace iothubd::mqtt {
namespace {

using core::Errc;
using core::fail;

/// How often keep-alive bookkeeping (mosquitto_loop_misc: PINGREQ, ping timeout) runs while a
/// socket is open. libmosquitto's own threaded loop uses the same one-second granularity.
constexpr std::chrono::seconds kMiscInterval{1};
/// Debian's OpenSSL certificate directory: libmosquitto's mosquitto_tls_set() wants a CA file or
/// directory even when MOSQ_OPT_TLS_USE_OS_CERTS already trusts the system store.
constexpr const char* kSystemCaPath = "/etc/ssl/certs";

/// libmosquitto 2.0.11 speaks neither WebSockets nor HTTP CONNECT/SOCKS4 (protocol doc 1.6):
/// those connections go through a relay::Tunnel, libmosquitto itself then speaks plain MQTT to
/// the tunnel's local socket.
bool needsTunnel(const ConnectOptions& o) {
  return o.websockets || o.proxy.enabled();
}

/// A clearer text for the TLS failures libmosquitto reports only through its log.
std::string explainLibError(const std::string& line, const ConnectOptions& o) {
  if (line.find("certificate verify failed") != std::string::npos) {
    return "TLS: certificate verification failed for " + o.host + ":" + std::to_string(o.port) +
           (o.tls.caFile.empty() ? " (system CA store)" : " (CA file " + o.tls.caFile + ")") +
           ": " + line;
  }
  return line;
}

struct MosquittoDeleter {
  void operator()(mosquitto* m) const noexcept { mosquitto_destroy(m); }
};
using MosquittoPtr = std::unique_ptr<mosquitto, MosquittoDeleter>;

void initLibrary() {
  static std::once_flag once;
  std::call_once(once, [] { mosquitto_lib_init(); });
}

/// What the CONNACK return code means for us (protocol doc section 9 table).
core::Error connackError(int code) {
  switch (code) {
    case 1:
      return {Errc::ConnectionFailed,
              "the hub refused the connection: unacceptable protocol version", 1};
    case 2:
      return {Errc::Unauthorized, "the hub refused the connection: client identifier rejected", 2};
    case 3:
      return {Errc::ConnectionFailed, "the hub refused the connection: server unavailable", 3};
    case 4:
      return {Errc::Unauthorized, "the hub refused the connection: bad user name or password", 4};
    case 5:
      return {Errc::Unauthorized, "the hub refused the connection: not authorised", 5};
    default:
      return {Errc::ConnectionFailed,
              "the hub refused the connection: CONNACK code " + std::to_string(code), code};
  }
}

class MosquittoTransport final : public MqttTransport {
 public:
  explicit MosquittoTransport(loop::EventLoop& loop)
      : loop_(loop), miscTimer_(loop.createTimer([this] { onMiscTimer(); })) {}

  ~MosquittoTransport() override {
    // A worker may still be inside mosquitto_connect_async on our handle: the loop joins workers
    // before it is destroyed, but we own the handle, so wait for the worker here.
    lifetime_.end();
    if (pendingConnect_.valid()) {
      pendingConnect_.wait();
    }
    watch_.reset();
  }

  void setListener(Listener* listener) override { listener_ = listener; }

  core::Result<void> connect(const ConnectOptions& options) override {
    if (state_ != State::Idle) {
      return fail(Errc::Internal, "connect() while a connection attempt is active");
    }
    if (options.keepAliveSeconds != 0 &&
        (options.keepAliveSeconds < 5 || options.keepAliveSeconds > 65535)) {
      return fail(Errc::InvalidArgument, "keep_alive must be 0 or between 5 and 65535 seconds");
    }
    std::erase_if(retiredTunnels_, [](const auto& t) { return t->closed(); });
    // A fresh handle for every connection: libmosquitto would otherwise resend the previous
    // connection's unacknowledged QoS 1 publishes on its own, beside the session's and the
    // outbox's resends, and deliver every such message twice. Publishes are tracked per
    // connection above this layer; the hub keeps the MQTT session (CleanSession 0) by client id.
    if (auto created = createHandle(options); !created) {
      return fail(created.error());
    }
    const char* password = options.password.empty() ? nullptr : options.password.reveal().c_str();
    if (int rc = mosquitto_username_pw_set(handle_.get(), options.username.c_str(), password);
        rc != MOSQ_ERR_SUCCESS) {
      return fail(Errc::InvalidArgument,
                  std::string("cannot set MQTT credentials: ") + mosquitto_strerror(rc));
    }
    options_ = options;
    options_.password = core::Secret<>();  // not kept longer than needed
    options_.proxy.password = core::Secret<>();
    std::string host = options.host;
    int port = options.port;
    if (needsTunnel(options)) {
      relay::TunnelOptions t;
      t.host = options.host;
      t.port = options.port;
      t.tls = options.tls;
      t.websockets = options.websockets;
      t.websocketPath = options.websocketPath;
      t.userAgent = options.userAgent;
      t.proxy = options.proxy;
      auto tunnel = relay::Tunnel::open(loop_, std::move(t));
      if (!tunnel) {
        return fail(tunnel.error());
      }
      tunnel_ = std::move(*tunnel);
      // Port 0 makes libmosquitto connect to a Unix socket path (lib/net_mosq.c).
      host = tunnel_->localPath();
      port = 0;
    }
    state_ = State::Resolving;
    ++attempt_;
    sawConnack_ = false;
    connackCode_ = -1;
    lastLibError_.clear();
    socketFailure_.clear();
    disconnectRequested_ = false;
    // mosquitto_connect_async resolves the host with a blocking getaddrinfo() (architecture doc
    // 6.1): it runs on a worker while the loop leaves the handle alone.
    auto* handle = handle_.get();
    int keepAlive = options.keepAliveSeconds;
    auto rcHolder = std::make_shared<int>(MOSQ_ERR_UNKNOWN);
    auto errnoHolder = std::make_shared<int>(0);
    auto finished = std::make_shared<std::promise<void>>();
    pendingConnect_ = finished->get_future().share();
    loop_.runOffLoop(
        [handle, host, port, keepAlive, rcHolder, errnoHolder, finished] {
          // The destructor waits for this promise: keep it even if the call threw.
          struct Finished {
            std::promise<void>& promise;
            ~Finished() { promise.set_value(); }
          } signal{*finished};
          errno = 0;
          *rcHolder = mosquitto_connect_async(handle, host.c_str(), port, keepAlive);
          *errnoHolder = errno;
        },
        lifetime_.guard(
            [this, rcHolder, errnoHolder] { onConnectStarted(*rcHolder, *errnoHolder); }));
    return {};
  }

  void disconnect() override {
    switch (state_) {
      case State::Idle:
        return;
      case State::Resolving:
        disconnectRequested_ = true;  // acted upon when the worker returns
        return;
      case State::Connecting:
      case State::Connected: {
        disconnectRequested_ = true;
        ApiCallScope scope(*this);
        int rc = mosquitto_disconnect(handle_.get());
        if (rc != MOSQ_ERR_SUCCESS || mosquitto_socket(handle_.get()) < 0 ||
            state_ != State::Idle) {
          // Not connected at MQTT level yet (or the write failed): just close the socket.
          closeAndReport(MOSQ_ERR_SUCCESS);
        }
        return;
      }
    }
  }

  core::Result<int> publish(std::string_view topic, std::string_view payload, int qos) override {
    if (state_ != State::Connected) {
      return fail(Errc::NotConnected, "not connected");
    }
    int mid = 0;
    std::string topicStr(topic);
    ApiCallScope scope(*this);
    int rc = mosquitto_publish(handle_.get(), &mid, topicStr.c_str(),
                               static_cast<int>(payload.size()), payload.data(), qos, false);
    if (rc != MOSQ_ERR_SUCCESS) {
      // A socket that just broke shows up here first (MOSQ_ERR_ERRNO from the write); the
      // disconnect callback follows from the loop. That is a link problem, not a bad message.
      bool link = rc == MOSQ_ERR_NO_CONN || rc == MOSQ_ERR_CONN_LOST || rc == MOSQ_ERR_ERRNO;
      return fail(link ? Errc::NotConnected : Errc::Protocol,
                  std::string("publish failed: ") + mosquitto_strerror(rc));
    }
    updateEvents();
    return mid;
  }

  core::Result<int> subscribe(std::string_view topic, int qos) override {
    if (state_ != State::Connected) {
      return fail(Errc::NotConnected, "not connected");
    }
    int mid = 0;
    std::string topicStr(topic);
    ApiCallScope scope(*this);
    int rc = mosquitto_subscribe(handle_.get(), &mid, topicStr.c_str(), qos);
    if (rc != MOSQ_ERR_SUCCESS) {
      return fail(Errc::Protocol, std::string("subscribe failed: ") + mosquitto_strerror(rc));
    }
    updateEvents();
    return mid;
  }

 private:
  enum class State { Idle, Resolving, Connecting, Connected };

  /// Marks a call made by the session into this transport: libmosquitto can invoke callbacks
  /// synchronously from inside such a call (e.g. on_disconnect after writing DISCONNECT), and the
  /// listener must never be re-entered from its own call, so those are deferred to the loop.
  struct ApiCallScope {
    explicit ApiCallScope(MosquittoTransport& t) : t_(t), prev_(t.inApiCall_) {
      t.inApiCall_ = true;
    }
    ~ApiCallScope() { t_.inApiCall_ = prev_; }
    MosquittoTransport& t_;
    bool prev_;
  };

  core::Result<void> createHandle(const ConnectOptions& o) {
    initLibrary();
    watch_.reset();
    retireHandle();
    // CleanSession 0 as in every SDK (protocol doc 1.2): the hub keeps subscriptions and queued
    // C2D across reconnects.
    MosquittoPtr handle(mosquitto_new(o.clientId.c_str(), false, this));
    if (!handle) {
      return fail(Errc::Internal,
                  std::string("cannot create MQTT client: ") + std::strerror(errno));
    }
    mosquitto_int_option(handle.get(), MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    // Through a tunnel libmosquitto speaks plain MQTT to the local socket; TLS is the tunnel's.
    if (!needsTunnel(o)) {
      if (auto r = configureTls(handle.get(), o.tls); !r) {
        return r;
      }
    }
    mosquitto_connect_callback_set(handle.get(), &MosquittoTransport::onConnectCb);
    mosquitto_disconnect_callback_set(handle.get(), &MosquittoTransport::onDisconnectCb);
    mosquitto_publish_callback_set(handle.get(), &MosquittoTransport::onPublishCb);
    mosquitto_subscribe_callback_set(handle.get(), &MosquittoTransport::onSubscribeCb);
    mosquitto_message_callback_set(handle.get(), &MosquittoTransport::onMessageCb);
    mosquitto_log_callback_set(handle.get(), &MosquittoTransport::onLogCb);
    handle_ = std::move(handle);
    handleTunnelled_ = needsTunnel(o);
    clientId_ = o.clientId;
    passphrase_ = o.tls.keyPassphrase;
    return {};
  }

  /// The old handle may be the one whose callback we are in (a reconnect started from
  /// on_disconnect): destroy it only after the current callback returned.
  void retireHandle() {
    if (!handle_) {
      return;
    }
    std::shared_ptr<mosquitto> old(handle_.release(), MosquittoDeleter{});
    mosquitto_user_data_set(old.get(), nullptr);
    loop_.post([old] {});
  }

  static core::Result<void> configureTls(mosquitto* m, const TlsSettings& tls) {
    int rc = MOSQ_ERR_SUCCESS;
    const char* cert = tls.certFile.empty() ? nullptr : tls.certFile.c_str();
    const char* key = tls.keyFile.empty() ? nullptr : tls.keyFile.c_str();
    auto* pw = tls.keyPassphrase.empty() ? nullptr : &MosquittoTransport::passwordCallback;
    if (tls.caFile.empty()) {
      rc = mosquitto_int_option(m, MOSQ_OPT_TLS_USE_OS_CERTS, 1);
      // X.509 client certificate (protocol doc 1.2, 1.5) with the system store as trust.
      if (rc == MOSQ_ERR_SUCCESS && cert != nullptr) {
        rc = mosquitto_tls_set(m, nullptr, kSystemCaPath, cert, key, pw);
      }
    } else {
      rc = mosquitto_tls_set(m, tls.caFile.c_str(), nullptr, cert, key, pw);
    }
    if (rc != MOSQ_ERR_SUCCESS) {
      return fail(Errc::Config, std::string("invalid TLS settings: ") + mosquitto_strerror(rc));
    }
    // Verify the server certificate and its host name; "tlsv1.2" is libmosquitto's minimum
    // version setting, so TLS 1.3 is still negotiated where the server offers it (doc 1.5).
    rc = mosquitto_tls_opts_set(m, 1, "tlsv1.2",
                                tls.ciphers.empty() ? nullptr : tls.ciphers.c_str());
    if (rc != MOSQ_ERR_SUCCESS) {
      return fail(Errc::Config, std::string("invalid TLS options: ") + mosquitto_strerror(rc));
    }
    return {};
  }

  /// Why the connection failed as best we know: the tunnel's reason, else libmosquitto's last
  /// error line, else `fallback`.
  std::string failureDetail(const std::string& fallback) const {
    if (tunnel_ && tunnel_->failure()) {
      return tunnel_->failure()->message;
    }
    if (!lastLibError_.empty()) {
      return fallback + " (" + explainLibError(lastLibError_, options_) + ")";
    }
    return fallback;
  }

  /// A proxy that refused our credentials is a credential problem like CONNACK 5: retrying the
  /// same ones cannot help (protocol doc 9), so it is reported as Unauthorized.
  bool tunnelRefusedCredentials() const {
    return tunnel_ && tunnel_->failure() && tunnel_->failure()->code == Errc::Unauthorized;
  }

  /// The peer a failure message names: "host:port", plus the proxy when there is one.
  std::string peerName() const {
    std::string peer = options_.host + ":" + std::to_string(options_.port);
    if (options_.websockets) {
      peer += " (WebSocket)";
    }
    if (options_.proxy.enabled()) {
      peer += std::string(" through ") + core::proxyTypeName(options_.proxy.type) + " proxy " +
              options_.proxy.host + ":" + std::to_string(options_.proxy.port);
    }
    return peer;
  }

  void onConnectStarted(int rc, int err) {
    if (rc != MOSQ_ERR_SUCCESS) {
      std::string why = mosquitto_strerror(rc);
      if (rc == MOSQ_ERR_ERRNO && err != 0) {
        why = std::strerror(err);
      } else if (rc == MOSQ_ERR_EAI) {
        why = "cannot resolve host name " + core::quoted(options_.host);
      }
      finish(Disconnect{
          core::Error{tunnelRefusedCredentials() ? Errc::Unauthorized : Errc::ConnectionFailed,
                      "cannot connect to " + peerName() + ": " + failureDetail(why), err},
          disconnectRequested_, -1});
      return;
    }
    state_ = State::Connecting;
    if (disconnectRequested_) {
      closeAndReport(MOSQ_ERR_SUCCESS);
      return;
    }
    auto watch = loop_.watchIo(mosquitto_socket(handle_.get()), EPOLLIN | EPOLLOUT,
                               [this](std::uint32_t revents) { onSocketReady(revents); });
    if (!watch) {
      closeAndReport(MOSQ_ERR_ERRNO);
      return;
    }
    watch_ = std::move(*watch);
    miscTimer_->armAfter(kMiscInterval);
  }

  void onSocketReady(std::uint32_t revents) {
    int rc = MOSQ_ERR_SUCCESS;
    if (state_ == State::Connecting && (revents & (EPOLLERR | EPOLLHUP)) != 0) {
      // libmosquitto 2.0.11 treats a failed TCP connect under TLS as SSL_ERROR_SYSCALL and
      // keeps "continuing" the handshake (lib/net_mosq.c net__socket_connect_tls): a refused or
      // reset connection would never be reported. Ask the socket ourselves; its SO_ERROR may
      // already have been consumed by SSL_connect, but a hang-up before CONNACK is final too.
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(mosquitto_socket(handle_.get()), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0 || (revents & EPOLLHUP) != 0) {
        socketFailure_ = err != 0 ? std::strerror(err) : "connection refused or closed by the peer";
        closeAndReport(MOSQ_ERR_ERRNO);
        return;
      }
    }
    // A callback from inside libmosquitto (on_disconnect) may have let the listener start the
    // next attempt: then this event belonged to the old one, and nothing of it is checked.
    const std::uint64_t attempt = attempt_;
    if (revents & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
      rc = mosquitto_loop_read(handle_.get(), 1);
      if (attempt_ != attempt || checkClosed(rc)) {
        return;
      }
    }
    if (revents & EPOLLOUT) {
      // While the TLS handshake is in progress libmosquitto continues it from loop_read only.
      rc = mosquitto_want_write(handle_.get()) && state_ == State::Connecting
               ? mosquitto_loop_read(handle_.get(), 1)
               : MOSQ_ERR_SUCCESS;
      if (attempt_ != attempt || checkClosed(rc)) {
        return;
      }
      rc = mosquitto_loop_write(handle_.get(), 1);
      if (attempt_ != attempt || checkClosed(rc)) {
        return;
      }
    }
    updateEvents();
  }

  void onMiscTimer() {
    if (state_ != State::Connecting && state_ != State::Connected) {
      return;
    }
    const std::uint64_t attempt = attempt_;
    int rc = mosquitto_loop_misc(handle_.get());
    if (attempt_ != attempt || checkClosed(rc == MOSQ_ERR_NO_CONN ? MOSQ_ERR_CONN_LOST : rc)) {
      return;
    }
    updateEvents();
    miscTimer_->armAfter(kMiscInterval);
  }

  /// libmosquitto closes the socket on some paths without calling on_disconnect (a failed TLS
  /// handshake inside loop_read, for one); this reports such a close exactly once.
  bool checkClosed(int rc) {
    if (state_ == State::Idle) {
      return true;
    }
    if (mosquitto_socket(handle_.get()) < 0) {
      closeAndReport(rc == MOSQ_ERR_SUCCESS ? MOSQ_ERR_CONN_LOST : rc);
      return true;
    }
    return false;
  }

  void updateEvents() {
    if (watch_ && handle_ && mosquitto_socket(handle_.get()) >= 0) {
      watch_->setEvents(EPOLLIN | (mosquitto_want_write(handle_.get()) ? EPOLLOUT : 0u));
    }
  }

  void closeAndReport(int rc) {
    if (state_ == State::Idle) {
      return;
    }
    watch_.reset();
    if (handle_ && mosquitto_socket(handle_.get()) >= 0) {
      // Closes the socket; the handle (and its in-flight QoS 1 messages) stays for the next
      // connect. libmosquitto 2.0.11 calls on_disconnect from inside mosquitto_disconnect
      // (packet__write -> do_client_disconnect), which would report this close once with its
      // own "No error." and re-enter the listener: a new connect() begun from there would then
      // be marked Idle by the report below while its worker still used the handle (found by
      // the bus fuzzer: a crash). This close reports once, below.
      closingSelf_ = true;
      mosquitto_disconnect(handle_.get());
      closingSelf_ = false;
      if (mosquitto_socket(handle_.get()) >= 0) {
        // Inside a libmosquitto callback (a protocol violation seen in on_connect) the DISCONNECT
        // is only queued and the socket stays open, and nothing watches it any more: it closes
        // with the handle, once the callback has returned.
        retireHandle();
      }
    }
    report(rc);
  }

  void report(int rc) {
    if (state_ == State::Idle) {
      return;
    }
    bool wasConnected = state_ == State::Connected;
    Disconnect d;
    d.requested = disconnectRequested_;
    d.connackCode = connackCode_;
    if (connackCode_ > 0) {
      d.error = connackError(connackCode_);
    } else if (disconnectRequested_) {
      d.error = core::Error{Errc::Cancelled, "disconnected on request"};
    } else {
      std::string why =
          !socketFailure_.empty() ? socketFailure_ : std::string(mosquitto_strerror(rc));
      if (rc == MOSQ_ERR_KEEPALIVE) {
        why = "no answer to keep-alive ping";
      }
      why = failureDetail(why);
      d.error = wasConnected ? core::Error{Errc::ConnectionDropped,
                                           "connection to " + peerName() + " lost: " + why}
                             : core::Error{Errc::ConnectionFailed,
                                           "cannot connect to " + peerName() + ": " + why};
      if (!wasConnected && tunnelRefusedCredentials()) {
        d.error.code = Errc::Unauthorized;
      }
    }
    finish(std::move(d));
  }

  void finish(Disconnect d) {
    state_ = State::Idle;
    watch_.reset();
    miscTimer_->disarm();
    if (tunnel_) {
      // A tunnel still open flushes what libmosquitto wrote last (its DISCONNECT) and then
      // closes by itself within a few seconds; it is dropped at the next connect().
      if (!tunnel_->closed()) {
        retiredTunnels_.push_back(std::move(tunnel_));
      }
      tunnel_.reset();
    }
    deliver([d = std::move(d)](Listener& l) { l.onDisconnected(d); });
  }

  template <class Fn>
  void deliver(Fn&& fn) {
    if (listener_ == nullptr) {
      return;
    }
    if (inApiCall_) {
      loop_.post(lifetime_.guard([this, fn = std::forward<Fn>(fn)]() mutable {
        if (listener_ != nullptr) {
          fn(*listener_);
        }
      }));
    } else {
      fn(*listener_);
    }
  }

  // --- libmosquitto callbacks (C, noexcept: nothing may unwind through libmosquitto) ---------
  static MosquittoTransport* self(void* obj) { return static_cast<MosquittoTransport*>(obj); }

  static void onConnectCb(mosquitto* m, void* obj, int rc) noexcept {
    if (obj == nullptr) {
      return;  // a retired handle (retireHandle)
    }
    auto* t = self(obj);
    if (t->state_ == State::Connected) {
      // MQTT 3.1.1, 3.2: one CONNACK per connection. libmosquitto 2.0.11 passes a second one on
      // (found by the scripted-broker test): a broker that sends it is not to be trusted further.
      t->socketFailure_ = "protocol violation: a second CONNACK";
      try {
        t->closeAndReport(MOSQ_ERR_PROTOCOL);
      } catch (...) {
        core::logf(core::LogLevel::Error, "MQTT connect handler failed");
      }
      return;
    }
    t->sawConnack_ = true;
    if (rc != 0) {
      t->connackCode_ = rc;  // on_disconnect follows from the same loop_read
      return;
    }
    t->state_ = State::Connected;
    t->lastLibError_.clear();
    if (core::logLevel() < core::LogLevel::Debug) {
      // libmosquitto formats every log line (two per message: PUBLISH sent, PUBACK received)
      // with vsnprintf into a fresh buffer before it calls the callback, so a callback that
      // drops them still costs about a tenth of the daemon's CPU per message. The lines that
      // explain failures (TLS verification, refused connects) come before CONNACK; from here on
      // libmosquitto only logs at debug level unless debug logging is on. A later reload to
      // log_level = debug takes effect from the next connection.
      mosquitto_log_callback_set(m, nullptr);
    }
    try {
      t->deliver([](Listener& l) { l.onConnected(); });
    } catch (...) {
      core::logf(core::LogLevel::Error, "MQTT connect handler failed");
    }
  }

  static void onDisconnectCb(mosquitto*, void* obj, int rc) noexcept {
    if (obj == nullptr) {
      return;  // a retired handle (retireHandle)
    }
    auto* t = self(obj);
    if (t->closingSelf_) {
      return;  // closeAndReport reports this close itself
    }
    try {
      t->watch_.reset();
      t->report(rc);
    } catch (...) {
      core::logf(core::LogLevel::Error, "MQTT disconnect handler failed");
    }
  }

  static void onPublishCb(mosquitto*, void* obj, int mid) noexcept {
    if (obj == nullptr) {
      return;  // a retired handle (retireHandle)
    }
    try {
      self(obj)->deliver([mid](Listener& l) { l.onPublishAcked(mid); });
    } catch (...) {
      core::logf(core::LogLevel::Error, "MQTT publish handler failed");
    }
  }

  static void onSubscribeCb(mosquitto*, void* obj, int mid, int, const int*) noexcept {
    if (obj == nullptr) {
      return;  // a retired handle (retireHandle)
    }
    try {
      self(obj)->deliver([mid](Listener& l) { l.onSubscribed(mid); });
    } catch (...) {
      core::logf(core::LogLevel::Error, "MQTT subscribe handler failed");
    }
  }

  static void onMessageCb(mosquitto*, void* obj, const mosquitto_message* msg) noexcept {
    if (obj == nullptr) {
      return;  // a retired handle (retireHandle)
    }
    auto* t = self(obj);
    if (t->listener_ == nullptr || msg == nullptr || msg->topic == nullptr) {
      return;
    }
    try {
      std::string_view payload(static_cast<const char*>(msg->payload),
                               static_cast<size_t>(msg->payloadlen));
      t->listener_->onMessage(msg->topic, payload);
    } catch (const std::exception& e) {
      core::logf(core::LogLevel::Error, "MQTT message handler failed: ", e.what());
    } catch (...) {
      core::logf(core::LogLevel::Error, "MQTT message handler failed");
    }
  }

  static void onLogCb(mosquitto*, void* obj, int level, const char* str) noexcept {
    if (obj == nullptr) {
      return;  // a retired handle (retireHandle)
    }
    if (str == nullptr) {
      return;
    }
    try {
      if (level == MOSQ_LOG_ERR) {
        // libmosquitto reports TLS verification failures (wrong CA, host name mismatch) only
        // here; keep the latest line to explain the failure that follows.
        self(obj)->lastLibError_ = str;
      }
      core::logf(core::LogLevel::Debug, "libmosquitto: ", str);
    } catch (...) {
    }
  }

  static int passwordCallback(char* buf, int size, int, void* userdata) noexcept {
    auto* t =
        static_cast<MosquittoTransport*>(mosquitto_userdata(static_cast<mosquitto*>(userdata)));
    if (t == nullptr || size <= 0) {
      return 0;
    }
    const std::string& p = t->passphrase_.reveal();
    int n = static_cast<int>(std::min<size_t>(p.size(), static_cast<size_t>(size - 1)));
    std::memcpy(buf, p.data(), static_cast<size_t>(n));
    buf[n] = '\0';
    return n;
  }

  loop::EventLoop& loop_;
  Listener* listener_ = nullptr;
  MosquittoPtr handle_;
  std::string clientId_;
  core::Secret<> passphrase_;
  ConnectOptions options_;
  std::unique_ptr<loop::IoWatch> watch_;
  std::unique_ptr<core::Timer> miscTimer_;
  std::string socketFailure_;              ///< why the TCP connection failed (see onSocketReady)
  bool handleTunnelled_ = false;           ///< handle_ was set up for a tunnel (no TLS of its own)
  std::unique_ptr<relay::Tunnel> tunnel_;  ///< the current attempt's tunnel, if any
  std::vector<std::unique_ptr<relay::Tunnel>> retiredTunnels_;  ///< finishing an orderly close
  State state_ = State::Idle;
  bool disconnectRequested_ = false;
  bool closingSelf_ = false;   ///< inside closeAndReport's mosquitto_disconnect
  std::uint64_t attempt_ = 0;  ///< counts connect()s, to tell an old attempt's events apart
  bool sawConnack_ = false;
  int connackCode_ = -1;
  bool inApiCall_ = false;
  std::string lastLibError_;
  /// Set while a worker runs mosquitto_connect_async on handle_; the destructor waits for it.
  std::shared_future<void> pendingConnect_;
  core::Lifetime lifetime_;  ///< last: callbacks of a destroyed transport never run
};

}  // namespace

core::Result<std::unique_ptr<MqttTransport>> createMosquittoTransport(loop::EventLoop& loop) {
  return std::unique_ptr<MqttTransport>(std::make_unique<MosquittoTransport>(loop));
}

}  // namespace iothubd::mqtt
