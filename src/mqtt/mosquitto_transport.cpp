// SPDX-License-Identifier: MIT
#include "iothubd/mqtt/mosquitto_transport.hpp"

#include <sys/epoll.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
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
    lifetime_.end();
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
    // Every connection goes through a relay::Tunnel (src/relay/README.md): libmosquitto 2.0.11
    // would connect to the first address of the name only (lib/net_mosq.c), so `::1 localhost`
    // before an IPv4-only hub, or a broken IPv6 route, would fail where any SDK falls back; it
    // also has no WebSockets, HTTP CONNECT or SOCKS4. The tunnel resolves off the loop, tries
    // every address (RFC 8305), does TLS with SNI and certificate checks on the name, and
    // libmosquitto speaks plain MQTT to its local socket.
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
    ++attempt_;
    sawConnack_ = false;
    connackCode_ = -1;
    lastLibError_.clear();
    protocolFailure_.clear();
    disconnectRequested_ = false;
    state_ = State::Connecting;
    // Port 0: a Unix socket path (lib/net_mosq.c). That connect completes at once and needs no
    // name lookup, so it runs on the loop; libmosquitto queues its CONNECT in the socket, and the
    // tunnel forwards it once the hub side is up.
    ApiCallScope scope(*this);
    errno = 0;
    const int rc = mosquitto_connect_async(handle_.get(), tunnel_->localPath().c_str(), 0,
                                           options.keepAliveSeconds);
    onConnectStarted(rc, errno);
    return {};
  }

  void disconnect() override {
    switch (state_) {
      case State::Idle:
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
  enum class State { Idle, Connecting, Connected };

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
    // No TLS here: the tunnel does TLS (on the hub's name), libmosquitto plain MQTT to it.
    mosquitto_connect_callback_set(handle.get(), &MosquittoTransport::onConnectCb);
    mosquitto_disconnect_callback_set(handle.get(), &MosquittoTransport::onDisconnectCb);
    mosquitto_publish_callback_set(handle.get(), &MosquittoTransport::onPublishCb);
    mosquitto_subscribe_callback_set(handle.get(), &MosquittoTransport::onSubscribeCb);
    mosquitto_message_callback_set(handle.get(), &MosquittoTransport::onMessageCb);
    mosquitto_log_callback_set(handle.get(), &MosquittoTransport::onLogCb);
    handle_ = std::move(handle);
    clientId_ = o.clientId;
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

  /// Why the connection failed as best we know: the tunnel's reason, else libmosquitto's last
  /// error line, else `fallback`.
  std::string failureDetail(const std::string& fallback) const {
    if (!protocolFailure_.empty()) {
      return protocolFailure_;
    }
    if (tunnel_ && tunnel_->failure()) {
      return tunnel_->failure()->message;
    }
    if (!lastLibError_.empty()) {
      return fallback + " (" + lastLibError_ + ")";
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
    if (state_ == State::Idle) {
      return;  // libmosquitto already reported the end from inside the call
    }
    if (rc != MOSQ_ERR_SUCCESS) {
      std::string why = mosquitto_strerror(rc);
      if (rc == MOSQ_ERR_ERRNO && err != 0) {
        why = std::strerror(err);
      }
      finish(Disconnect{
          core::Error{tunnelRefusedCredentials() ? Errc::Unauthorized : Errc::ConnectionFailed,
                      "cannot connect to " + peerName() + ": " + failureDetail(why), err},
          disconnectRequested_, -1});
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
    // The local socket to the tunnel: what the hub said last (a CONNACK refusal) is read before
    // the end of the stream is noticed.
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
      std::string why = mosquitto_strerror(rc);
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
      t->protocolFailure_ = "protocol violation: a second CONNACK";
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

  loop::EventLoop& loop_;
  Listener* listener_ = nullptr;
  MosquittoPtr handle_;
  std::string clientId_;
  ConnectOptions options_;
  std::unique_ptr<loop::IoWatch> watch_;
  std::unique_ptr<core::Timer> miscTimer_;
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
  std::string protocolFailure_;  ///< a broker that broke MQTT on this attempt (onConnectCb)
  core::Lifetime lifetime_;      ///< last: callbacks of a destroyed transport never run
};

}  // namespace

core::Result<std::unique_ptr<MqttTransport>> createMosquittoTransport(loop::EventLoop& loop) {
  return std::unique_ptr<MqttTransport>(std::make_unique<MosquittoTransport>(loop));
}

}  // namespace iothubd::mqtt
