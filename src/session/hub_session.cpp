// SPDX-License-Identifier: MIT
#include "iothubd/session/hub_session.hpp"

#include <cstdio>
#include <optional>

#include "iothubd/core/log.hpp"
#include "iothubd/proto/mqtt_identity.hpp"
#include "iothubd/proto/sas_token.hpp"
#include "iothubd/proto/twin.hpp"

namespace iothubd::session {
namespace {

using core::Errc;
using core::fail;
using core::logf;
using core::LogLevel;

/// After an unexpected drop the first attempt comes almost at once, as in the Python SDK
/// (protocol doc 9); later ones wait connection_retry_interval.
constexpr std::chrono::milliseconds kFirstRetryDelay{10};

}  // namespace

const char* connectionStateName(ConnectionState state) noexcept {
  switch (state) {
    case ConnectionState::Disconnected:
      return "disconnected";
    case ConnectionState::Connecting:
      return "connecting";
    case ConnectionState::Connected:
      return "connected";
    case ConnectionState::Reconnecting:
      return "reconnecting";
  }
  return "disconnected";
}

HubSession::HubSession(core::Scheduler& scheduler, core::Clock& clock,
                       mqtt::MqttTransport& transport, SessionOptions options)
    : scheduler_(scheduler),
      clock_(clock),
      transport_(transport),
      options_(std::move(options)),
      random_(std::random_device{}()) {
  transport_.setListener(this);
  connectTimer_ = scheduler_.createTimer([this] {
    logf(LogLevel::Warning, "no CONNACK from ", options_.hubHostname, " within ",
         options_.operationTimeout.count(), " s, giving up on this attempt");
    // The transport reports onDisconnected (requested) and we turn it into a Timeout.
    connectTimedOut_ = true;
    transport_.disconnect();
  });
  retryTimer_ = scheduler_.createTimer([this] {
    if (wantConnected_ && !attemptActive_ && !linkUp_) {
      startAttempt();
    }
  });
  inFlightTimer_ = scheduler_.createTimer([this] { onInFlightTimer(); });
  renewTimer_ = scheduler_.createTimer([this] {
    if (options_.auth == AuthMethod::SasToken) {
      logf(LogLevel::Notice, "the SAS token expires at ", tokenExpiry_,
           "; waiting for a new one (UpdateSasToken)");
      notify([&](Observer& o) { o.onNewSasTokenRequired(); });
      return;
    }
    reconnectPlanned("SAS token renewal");
  });
  drainTimer_ = scheduler_.createTimer([this] { finishPlannedDrain(); });
  twinTimer_ = scheduler_.createTimer([this] { onTwinTimer(); });
  ensureRetryTimer_ = scheduler_.createTimer([this] { ensureDesiredProperties(); });
}

HubSession::~HubSession() {
  *alive_ = false;
  transport_.setListener(nullptr);
}

std::string HubSession::newMessageId() {
  std::uint64_t a = random_();
  std::uint64_t b = random_();
  a = (a & 0xFFFFFFFFFFFF0FFFULL) | 0x0000000000004000ULL;  // version 4
  b = (b & 0x3FFFFFFFFFFFFFFFULL) | 0x8000000000000000ULL;  // RFC 4122 variant
  // 8-4-4-4-12 lower-case hex digits of a then b; by hand, because snprintf costs more than
  // the rest of accepting a message (every SendMessage without an id comes through here).
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id(36, '-');
  std::size_t at = 0;
  const auto put = [&](std::uint64_t value, int digits) {
    for (int shift = (digits - 1) * 4; shift >= 0; shift -= 4) {
      id[at++] = kHex[(value >> shift) & 0xF];
    }
  };
  put(a >> 32, 8);
  ++at;
  put(a >> 16, 4);
  ++at;
  put(a, 4);
  ++at;
  put(b >> 48, 4);
  ++at;
  put(b, 12);
  return id;
}

void HubSession::start() {
  wantConnected_ = true;
  if (!linkUp_ && !attemptActive_ && !plannedActive_) {
    retryTimer_->disarm();
    startAttempt();
  }
}

void HubSession::connect(Completion done) {
  wantConnected_ = true;
  if (state_ == ConnectionState::Connected) {
    // Also during a planned reconnect: apps see one continuous connection.
    done({});
    return;
  }
  connectWaiters_.push_back(std::move(done));
  if (!attemptActive_ && !plannedActive_ && !plannedPending_) {
    retryTimer_->disarm();
    startAttempt();
  }
}

void HubSession::disconnect(Completion done) {
  wantConnected_ = false;
  dropped_ = false;
  plannedPending_ = false;
  plannedActive_ = false;
  drainTimer_->disarm();
  renewTimer_->disarm();
  retryTimer_->disarm();
  core::Error cancelled{Errc::Cancelled, "disconnected on request"};
  failConnectWaiters(cancelled);
  failQueued(cancelled);
  failInFlight(cancelled);
  if (!attemptActive_ && !linkUp_) {
    // Nothing open (idle, or waiting for a retry): there is no transport event to wait for.
    setState(ConnectionState::Disconnected, nullptr);
    done({});
    return;
  }
  disconnectWaiters_.push_back(std::move(done));
  transport_.disconnect();
}

void HubSession::sendTelemetry(const proto::OutgoingMessage& message, Completion done) {
  if (auto valid = proto::validateOutgoingMessage(message); !valid) {
    done(fail(valid.error()));
    return;
  }
  publishOrQueue(proto::telemetryTopic(options_.deviceId, options_.moduleId, message), message.body,
                 std::move(done));
}

void HubSession::publishTelemetry(std::string_view topic, std::string_view payload,
                                  Completion done) {
  if (readyToPublish()) {
    publishNow(topic, payload, std::move(done));  // libmosquitto copies them: no copy of ours
    return;
  }
  publishOrQueue(std::string(topic), std::string(payload), std::move(done));
}

void HubSession::sendMethodResponse(const std::string& requestId, int status,
                                    const std::string& payload, Completion done) {
  // Protocol doc 6: the request id is echoed unchanged; QoS 1 so that the caller learns the
  // hub took the answer.
  publishOrQueue(proto::methodResponseTopic(status, requestId), payload, std::move(done));
}

core::Result<void> HubSession::publishPrepared(const std::string& topic, const std::string& payload,
                                               Completion done) {
  if (!readyToPublish()) {
    return fail(Errc::NotConnected, "not connected to the hub");
  }
  publishNow(topic, payload, std::move(done));
  return {};
}

bool HubSession::requestConnection() {
  if (!canReachHub()) {
    return false;
  }
  ensureConnecting();
  return true;
}

bool HubSession::canReachHub() const {
  return linkUp_ || attemptActive_ || retryTimer_->armed() || plannedPending_ || plannedActive_ ||
         options_.autoConnect;
}

void HubSession::ensureConnecting() {
  if (!linkUp_ && !attemptActive_ && !retryTimer_->armed() && !plannedPending_ && !plannedActive_) {
    // auto_connect: the first operation opens the connection (seed: auto_connect=True).
    start();
  }
}

void HubSession::publishOrQueue(std::string topic, std::string payload, Completion done) {
  if (readyToPublish()) {
    publishNow(topic, payload, std::move(done));
    return;
  }
  if (!canReachHub()) {
    done(fail(Errc::NotConnected, "not connected to the hub and auto_connect is off"));
    return;
  }
  if (queued_.size() >= options_.maxQueuedMessages) {
    done(fail(Errc::QueueFull, "too many messages waiting for the connection (" +
                                   std::to_string(options_.maxQueuedMessages) + ")"));
    return;
  }
  const std::size_t bytes = topic.size() + payload.size();
  if (queuedBytes_ + bytes > options_.maxQueuedBytes) {
    done(fail(Errc::QueueFull, "messages waiting for the connection would take " +
                                   std::to_string(queuedBytes_ + bytes) + " bytes; the limit is " +
                                   std::to_string(options_.maxQueuedBytes)));
    return;
  }
  queuedBytes_ += bytes;
  queued_.push_back(
      Queued{std::move(topic), std::move(payload), std::move(done), deadlineFromNow()});
  if (!inFlightTimer_->armed()) {
    armInFlightTimer();
  }
  ensureConnecting();
}

void HubSession::publishNow(std::string_view topic, std::string_view payload, Completion done) {
  auto mid = transport_.publish(topic, payload, 1);
  if (!mid) {
    done(fail(mid.error()));
    return;
  }
  inFlight_[*mid] = InFlight{std::move(done), deadlineFromNow()};
  inFlightOrder_.push_back(*mid);
  if (!inFlightTimer_->armed()) {
    armInFlightTimer();
  }
}

std::chrono::microseconds HubSession::deadlineFromNow() const {
  return clock_.monotonic() +
         std::chrono::duration_cast<std::chrono::microseconds>(options_.operationTimeout);
}

void HubSession::armInFlightTimer() {
  // Every waiting message shares one timeout, so arrival order is deadline order: one timer
  // for the earliest of the two queues instead of one per message. Acknowledged ids are
  // skipped lazily here.
  while (!inFlightOrder_.empty() && !inFlight_.contains(inFlightOrder_.front())) {
    inFlightOrder_.pop_front();
  }
  std::optional<std::chrono::microseconds> earliest;
  if (!inFlightOrder_.empty()) {
    earliest = inFlight_[inFlightOrder_.front()].deadline;
  }
  if (!queued_.empty() && (!earliest || queued_.front().deadline < *earliest)) {
    earliest = queued_.front().deadline;
  }
  if (!earliest) {
    inFlightTimer_->disarm();
    return;
  }
  inFlightTimer_->armAfter(std::max(*earliest - clock_.monotonic(), std::chrono::microseconds(0)));
}

void HubSession::onInFlightTimer() {
  auto now = clock_.monotonic();
  while (!inFlightOrder_.empty()) {
    int mid = inFlightOrder_.front();
    auto it = inFlight_.find(mid);
    if (it == inFlight_.end()) {
      inFlightOrder_.pop_front();
      continue;
    }
    if (it->second.deadline > now) {
      break;
    }
    auto done = std::move(it->second.done);
    inFlight_.erase(it);
    inFlightOrder_.pop_front();
    done(fail(Errc::Timeout, "no acknowledgement from the hub within " +
                                 std::to_string(options_.operationTimeout.count()) + " s"));
  }
  while (!queued_.empty() && queued_.front().deadline <= now) {
    auto done = std::move(queued_.front().done);
    queuedBytes_ -= queued_.front().topic.size() + queued_.front().payload.size();
    queued_.pop_front();
    std::string why = lastError_.message.empty() ? std::string("not connected")
                                                 : "not connected: " + lastError_.message;
    done(fail(Errc::Timeout, "message not sent within " +
                                 std::to_string(options_.operationTimeout.count()) + " s (" + why +
                                 ")"));
  }
  armInFlightTimer();
}

core::Result<core::Secret<>> HubSession::currentPassword() {
  if (options_.auth == AuthMethod::X509) {
    tokenExpiry_ = 0;  // nothing to renew: the certificate is the credential
    return core::Secret<>();
  }
  if (options_.auth == AuthMethod::SasToken) {
    auto parsed = proto::parseSasToken(options_.sasToken.reveal());
    if (!parsed) {
      return fail(Errc::Unauthorized, "SAS token: " + parsed.error().message);
    }
    tokenExpiry_ = parsed->expiry;
    return options_.sasToken;
  }
  // Protocol doc 12 (pitfalls 3, 4): never reuse a cached password; a fresh token for every
  // CONNECT, with the wall clock for `se`.
  std::uint64_t expiry =
      clock_.unixSeconds() + static_cast<std::uint64_t>(options_.sasTokenTtl.count());
  auto token = proto::makeSasToken(
      proto::sasResourceUri(options_.hubHostname, options_.deviceId, options_.moduleId),
      options_.sharedAccessKey, expiry);
  if (!token) {
    return fail(Errc::Unauthorized, token.error().message);
  }
  tokenExpiry_ = expiry;
  return token;
}

void HubSession::startAttempt() {
  auto password = currentPassword();
  if (!password) {
    attemptFailedBeforeStart(password.error());
    return;
  }
  mqtt::ConnectOptions o;
  o.host = options_.gatewayHostname.empty() ? options_.hubHostname : options_.gatewayHostname;
  o.port = options_.port;
  o.clientId = proto::mqttClientId(options_.deviceId, options_.moduleId);
  o.username = proto::mqttUsername(options_.hubHostname, options_.deviceId, options_.moduleId,
                                   options_.userAgent, options_.productInfo);
  o.password = std::move(*password);
  o.keepAliveSeconds = options_.keepAliveSeconds;
  o.tls = options_.tls;
  o.websockets = options_.websockets;
  o.userAgent = options_.userAgent;
  o.proxy = options_.proxy;
  attemptActive_ = true;
  connectTimedOut_ = false;
  if (state_ == ConnectionState::Disconnected) {
    setState(dropped_ ? ConnectionState::Reconnecting : ConnectionState::Connecting, nullptr);
  }
  logf(LogLevel::Info, "connecting to ", o.host, ":", o.port, " as ", o.clientId);
  if (auto r = transport_.connect(o); !r) {
    attemptFailedBeforeStart(r.error());
    return;
  }
  // Protocol doc 1.3: hubs traffic-shape CONNACKs under load; operation_timeout (default 60 s)
  // bounds the wait.
  connectTimer_->armAfter(options_.operationTimeout);
}

void HubSession::onConnected() {
  connectTimer_->disarm();
  attemptActive_ = false;
  linkUp_ = true;
  plannedActive_ = false;
  credentialsRefused_ = false;
  armRenewal();
  lastError_ = restoredNote_.value_or(core::Error{});
  restoredNote_.reset();
  if (options_.auth == AuthMethod::SasToken) {
    sasTokenAccepted_ = true;
    previousSasToken_.reset();
  }
  dropped_ = false;
  logf(LogLevel::Notice, "connected to ", options_.hubHostname, " as ",
       proto::mqttClientId(options_.deviceId, options_.moduleId));
  notify([&](Observer& o) { o.onSasTokenExpiryChanged(tokenExpiry_); });
  subscribeAll();
  setState(ConnectionState::Connected, nullptr);
  auto waiters = std::move(connectWaiters_);
  connectWaiters_.clear();
  for (auto& w : waiters) {
    w({});
  }
  auto queued = std::move(queued_);
  queued_.clear();
  queuedBytes_ = 0;
  for (auto& q : queued) {
    if (!linkUp_) {
      queuedBytes_ += q.topic.size() + q.payload.size();
      queued_.push_back(std::move(q));  // dropped again inside a callback: keep waiting
      continue;
    }
    publishNow(q.topic, q.payload, std::move(q.done));
  }
  // Twin requests whose answer a drop or a planned reconnect swallowed go out again with the
  // same $rid (twin requests are QoS 0 and the hub keeps no session state for them).
  for (auto& [rid, request] : twinRequests_) {
    if (linkUp_ && !request.sent) {
      sendTwinRequest(rid, request);
    }
  }
  if (linkUp_ && options_.ensureDesiredProperties) {
    ensureDesiredProperties();
  }
  if (linkUp_) {
    notify([](Observer& o) { o.onLinkUp(); });
  }
}

void HubSession::onDisconnected(const mqtt::Disconnect& reason) {
  connectTimer_->disarm();
  renewTimer_->disarm();
  bool wasConnected = state_ == ConnectionState::Connected;
  attemptActive_ = false;
  bool linkWasUp = linkUp_;
  linkUp_ = false;
  for (auto& entry : twinRequests_) {
    entry.second.sent = false;
  }
  if (linkWasUp) {
    // Publishes are tracked per connection (the transport starts every connection afresh):
    // whatever the hub did not acknowledge on this one is the owner's to resend. A planned
    // reconnect drained them first.
    failInFlight(core::Error{Errc::ConnectionDropped,
                             "the connection closed before the hub acknowledged the message"});
    notify([](Observer& o) { o.onLinkDown(); });
  }
  ensureRetryTimer_->disarm();
  if (plannedActive_ && reason.requested && wantConnected_) {
    // Our own DISCONNECT of a planned reconnect: connect again at once, state unchanged.
    plannedActive_ = false;
    startAttempt();
    return;
  }
  plannedActive_ = false;
  if (plannedPending_) {
    plannedPending_ = false;
    drainTimer_->disarm();
  }
  core::Error error = reason.error;
  if (connectTimedOut_) {
    error =
        core::Error{Errc::Timeout, "no answer from the hub within " +
                                       std::to_string(options_.operationTimeout.count()) + " s"};
    connectTimedOut_ = false;
  }

  if (reason.requested && !wantConnected_) {
    logf(LogLevel::Notice, "disconnected from ", options_.hubHostname);
    setState(ConnectionState::Disconnected, nullptr);
    auto waiters = std::move(disconnectWaiters_);
    disconnectWaiters_.clear();
    for (auto& w : waiters) {
      w({});
    }
    return;
  }
  attemptFailed(error, wasConnected);
}

void HubSession::attemptFailedBeforeStart(const core::Error& error) {
  attemptActive_ = false;
  logf(LogLevel::Error, "cannot connect: ", error.message);
  attemptFailed(error, false);
}

void HubSession::attemptFailed(const core::Error& error, bool wasConnected) {
  if (error.code == Errc::Unauthorized && restorePreviousSasToken(error)) {
    return;
  }
  lastError_ = error;
  if (wasConnected) {
    dropped_ = true;
  }
  if (wasConnected) {
    logf(LogLevel::Warning, error.message);
  } else {
    logf(LogLevel::Warning, "connection attempt failed: ", error.message);
  }
  // Whoever called Connect() wants this attempt's outcome, not the next one's; with nobody
  // waiting, apps learn of it as a background error (seed: on_background_exception).
  if (connectWaiters_.empty()) {
    notify([&](Observer& o) { o.onBackgroundError(error); });
  }
  failConnectWaiters(error);

  // Protocol doc 9: no blind retry when the hub refused our credentials; they must change
  // (reload, UpdateSasToken) or an app must ask again.
  credentialsRefused_ = error.code == Errc::Unauthorized;
  bool retry = wantConnected_ && options_.connectionRetry && !credentialsRefused_;
  if (retry) {
    if (!dropped_) {
      // Never connected yet: a message that asked for the connection (auto_connect) gets this
      // attempt's error at once, as the seed's send_message does, instead of waiting.
      failQueued(error);
    }
    // After a drop, queued and in-flight messages keep waiting, each bounded by its own
    // deadline; libmosquitto resends the in-flight ones after the reconnect (CleanSession 0).
    setState(dropped_ ? ConnectionState::Reconnecting : ConnectionState::Connecting, &lastError_);
    scheduleRetry(wasConnected);
    return;
  }
  dropped_ = false;
  wantConnected_ = false;
  failQueued(error);
  failInFlight(wasConnected ? core::Error{Errc::ConnectionDropped, error.message} : error);
  setState(ConnectionState::Disconnected, &lastError_);
}

void HubSession::scheduleRetry(bool immediate) {
  std::chrono::microseconds delay = kFirstRetryDelay;
  if (!immediate) {
    // connection_retry_interval plus up to 20 % jitter, so a fleet that lost its hub at the same
    // moment does not come back in lockstep (protocol doc 12, pitfall 9).
    auto base =
        std::chrono::duration_cast<std::chrono::microseconds>(options_.connectionRetryInterval);
    std::uniform_int_distribution<std::int64_t> jitter(0, base.count() / 5);
    delay = base + std::chrono::microseconds(jitter(random_));
  }
  logf(LogLevel::Info, "reconnecting in ",
       std::chrono::duration_cast<std::chrono::milliseconds>(delay).count(), " ms");
  retryTimer_->armAfter(delay);
}

void HubSession::onPublishAcked(int messageId) {
  auto it = inFlight_.find(messageId);
  if (it == inFlight_.end()) {
    return;  // timed out already, or not ours
  }
  auto done = std::move(it->second.done);
  inFlight_.erase(it);
  // Acknowledged ids leave the deadline order from its front now, not when the timer next fires
  // (up to operation_timeout later): at thousands of messages a second that was a deque of
  // every id of the last minute.
  while (!inFlightOrder_.empty() && !inFlight_.contains(inFlightOrder_.front())) {
    inFlightOrder_.pop_front();
  }
  done({});
  if (plannedPending_ && inFlight_.empty()) {
    finishPlannedDrain();
  }
}

bool HubSession::reconfigure(SessionOptions o) {
  const auto& c = options_;
  bool connectionChanged =
      o.hubHostname != c.hubHostname || o.deviceId != c.deviceId || o.moduleId != c.moduleId ||
      o.gatewayHostname != c.gatewayHostname || o.port != c.port || o.auth != c.auth ||
      !(o.sharedAccessKey == c.sharedAccessKey) || !(o.sasToken == c.sasToken) ||
      o.tls.caFile != c.tls.caFile || o.tls.ciphers != c.tls.ciphers ||
      o.tls.certFile != c.tls.certFile || o.tls.keyFile != c.tls.keyFile ||
      !(o.tls.keyPassphrase == c.tls.keyPassphrase) || o.userAgent != c.userAgent ||
      o.productInfo != c.productInfo || o.keepAliveSeconds != c.keepAliveSeconds ||
      o.sasTokenTtl != c.sasTokenTtl || o.websockets != c.websockets ||
      o.proxy.type != c.proxy.type || o.proxy.host != c.proxy.host ||
      o.proxy.port != c.proxy.port || o.proxy.username != c.proxy.username ||
      !(o.proxy.password == c.proxy.password);
  if (!(o.sasToken == c.sasToken)) {
    // The operator's token from a reload: a fresh start for the token fallback.
    sasTokenAccepted_ = false;
    previousSasToken_.reset();
  }
  options_ = std::move(o);
  if (!connectionChanged) {
    return false;
  }
  if (linkUp_ || attemptActive_) {
    reconnectPlanned("new settings");
  } else if ((wantConnected_ && retryTimer_->armed()) || credentialsRefused_) {
    // The old settings may have been the problem (protocol doc 9: after a refusal, retry only
    // once the credentials changed): try the new ones now.
    retryTimer_->disarm();
    start();
  }
  return true;
}

void HubSession::reconnectPlanned(const char* why) {
  if (!linkUp_) {
    if (attemptActive_) {
      // The attempt under way uses the old settings: abandon it and start again.
      plannedWhy_ = why;
      plannedActive_ = true;
      transport_.disconnect();
    }
    return;
  }
  if (plannedPending_ || plannedActive_) {
    return;
  }
  plannedWhy_ = why;
  plannedPending_ = true;
  if (inFlight_.empty()) {
    finishPlannedDrain();
    return;
  }
  // dbus-contract-notes "Connection": wait (bounded) for in-flight PUBACKs so the reconnect
  // causes no duplicate telemetry; new messages queue meanwhile.
  drainTimer_->armAfter(
      std::min<std::chrono::microseconds>(options_.operationTimeout, std::chrono::seconds(10)));
}

void HubSession::finishPlannedDrain() {
  if (!plannedPending_) {
    return;
  }
  plannedPending_ = false;
  drainTimer_->disarm();
  plannedActive_ = true;
  logf(LogLevel::Info, "reconnecting for ", plannedWhy_);
  transport_.disconnect();
}

void HubSession::armRenewal() {
  renewTimer_->disarm();
  std::uint64_t now = clock_.unixSeconds();
  if (tokenExpiry_ <= now) {
    return;
  }
  // Renew a fifth of the lifetime before expiry, at most 120 s before it as the Python SDK does
  // (protocol doc 2): with the default hour that is 58 min after the CONNECT.
  auto lifetime = std::chrono::seconds(tokenExpiry_ - now);
  // An operator-supplied token needs a person or an app to act: ask about 2 minutes ahead
  // (Python SDK: on_new_sastoken_required at expiry - 120 s), or halfway for short tokens.
  auto margin = std::min<std::chrono::seconds>(
      std::chrono::seconds(120),
      options_.auth == AuthMethod::SasToken ? lifetime / 2 : lifetime / 5);
  renewTimer_->armAfter(lifetime - margin);
}

void HubSession::onSubscribed(int) {}

void HubSession::onMessage(std::string_view topic, std::string_view payload) {
  switch (proto::classifyTopic(topic, options_.deviceId)) {
    case proto::InboundKind::C2d: {
      auto props = proto::parseC2dTopic(topic, options_.deviceId);
      if (!props) {
        backgroundError(
            {Errc::Protocol, "unreadable cloud-to-device message: " + props.error().message});
        return;
      }
      notify([&](Observer& o) {
        o.onC2dMessage(payload, props->properties, props->systemProperties);
      });
      return;
    }
    case proto::InboundKind::MethodRequest: {
      auto request = proto::parseMethodRequestTopic(topic);
      if (!request) {
        backgroundError(
            {Errc::Protocol, "unreadable direct method request: " + request.error().message});
        return;
      }
      notify([&](Observer& o) {
        o.onMethodRequest(request->requestId, request->methodName, payload);
      });
      return;
    }
    case proto::InboundKind::TwinResponse:
      onTwinResponse(topic, payload);
      return;
    case proto::InboundKind::TwinDesiredPatch:
      onDesiredPatch(topic, payload);
      return;
    case proto::InboundKind::Unknown:
      logf(LogLevel::Debug, "ignoring message on ", core::quoted(topic));
      return;
  }
}

void HubSession::subscribeAll() {
  // Protocol doc 13: resubscribe after every CONNACK, even with a persistent session. Modules
  // have no C2D (doc 10). QoS 1 as the Python SDK subscribes.
  std::vector<std::string> topics;
  if (options_.moduleId.empty()) {
    topics.push_back(proto::c2dSubscribeTopic(options_.deviceId));
  }
  topics.emplace_back(proto::kMethodsSubscribeTopic);
  topics.emplace_back(proto::kTwinResponseSubscribeTopic);
  topics.emplace_back(proto::kTwinDesiredSubscribeTopic);
  for (const auto& t : topics) {
    if (auto r = transport_.subscribe(t, 1); !r) {
      backgroundError({Errc::Protocol, "cannot subscribe to " + t + ": " + r.error().message});
    }
  }
}

void HubSession::getTwin(TwinCompletion done) {
  twinRequest(TwinRequest::Kind::Get, " ",
              [done = std::move(done)](core::Result<proto::TwinResponse> r, std::string body) {
                if (!r) {
                  done(fail(r.error()));
                } else {
                  done(std::move(body));
                }
              });
}

void HubSession::patchReportedProperties(const std::string& patchJson, VersionCompletion done) {
  twinRequest(TwinRequest::Kind::PatchReported, patchJson,
              [done = std::move(done)](core::Result<proto::TwinResponse> r, const std::string&) {
                if (!r) {
                  done(fail(r.error()));
                } else if (!r->version) {
                  done(fail(Errc::Protocol, "the hub acknowledged the patch without a $version"));
                } else {
                  done(*r->version);
                }
              });
}

void HubSession::twinRequest(
    TwinRequest::Kind kind, std::string payload,
    std::function<void(core::Result<proto::TwinResponse>, std::string)> done) {
  if (!linkUp_ && !canReachHub()) {
    done(fail(Errc::NotConnected, "not connected to the hub and auto_connect is off"), {});
    return;
  }
  if (twinRequests_.size() >= options_.maxTwinRequests) {
    done(fail(Errc::QueueFull,
              "too many twin requests waiting (" + std::to_string(options_.maxTwinRequests) + ")"),
         {});
    return;
  }
  std::string rid = std::to_string(nextRid_++);
  auto& request = twinRequests_[rid];
  request = TwinRequest{kind, std::move(payload), std::move(done), deadlineFromNow(), false};
  if (readyToPublish()) {
    sendTwinRequest(rid, request);
  } else {
    ensureConnecting();
  }
  armTwinTimer();
}

void HubSession::sendTwinRequest(const std::string& rid, TwinRequest& request) {
  // Protocol doc 7: QoS 0 like the C and Node SDKs; the answer is the acknowledgement, and a
  // lost answer is handled by resending after a reconnect.
  std::string topic = request.kind == TwinRequest::Kind::PatchReported
                          ? proto::twinPatchReportedTopic(rid)
                          : proto::twinGetTopic(rid);
  if (auto r = transport_.publish(topic, request.payload, 0); r) {
    request.sent = true;
  }
}

void HubSession::armTwinTimer() {
  std::optional<std::chrono::microseconds> earliest;
  for (const auto& [rid, request] : twinRequests_) {
    if (!earliest || request.deadline < *earliest) {
      earliest = request.deadline;
    }
  }
  if (!earliest) {
    twinTimer_->disarm();
    return;
  }
  twinTimer_->armAfter(std::max(*earliest - clock_.monotonic(), std::chrono::microseconds(0)));
}

void HubSession::onTwinTimer() {
  auto now = clock_.monotonic();
  std::vector<std::function<void(core::Result<proto::TwinResponse>, std::string)>> expired;
  for (auto it = twinRequests_.begin(); it != twinRequests_.end();) {
    if (it->second.deadline <= now) {
      expired.push_back(std::move(it->second.done));
      it = twinRequests_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& done : expired) {
    done(fail(Errc::Timeout, "no twin response from the hub within " +
                                 std::to_string(options_.operationTimeout.count()) + " s"),
         {});
  }
  armTwinTimer();
}

void HubSession::onTwinResponse(std::string_view topic, std::string_view payload) {
  auto response = proto::parseTwinResponseTopic(topic);
  if (!response) {
    backgroundError({Errc::Protocol, "unreadable twin response: " + response.error().message});
    return;
  }
  auto it = twinRequests_.find(response->requestId);
  if (it == twinRequests_.end()) {
    return;  // answered already, timed out, or not ours (protocol doc 7: ignore unknown rids)
  }
  auto done = std::move(it->second.done);
  twinRequests_.erase(it);
  armTwinTimer();
  if (response->status >= 300) {
    // Protocol doc 7: 400 malformed, 429 throttled, 5xx; keep the hub's status for the caller.
    done(fail(Errc::Service,
              "the hub answered the twin request with status " + std::to_string(response->status) +
                  (payload.empty() ? std::string() : ": " + std::string(payload.substr(0, 200))),
              response->status),
         {});
    return;
  }
  done(std::move(*response), std::string(payload));
}

void HubSession::ensureDesiredProperties() {
  if (!linkUp_ || ensureInFlight_) {
    return;  // never two at once (Python SDK EnsureDesiredPropertiesStage)
  }
  ensureInFlight_ = true;
  twinRequest(TwinRequest::Kind::EnsureDesired, " ",
              [this, alive = alive_](core::Result<proto::TwinResponse> r, const std::string& body) {
                if (!*alive) {
                  return;
                }
                ensureInFlight_ = false;
                if (!r) {
                  if (r.error().code == Errc::Cancelled) {
                    return;
                  }
                  backgroundError({r.error().code,
                                   "cannot fetch the twin after connecting: " + r.error().message,
                                   r.error().sysErrno});
                  // Pitfall 15: never a tight loop against a throttling hub.
                  if (linkUp_) {
                    ensureRetryTimer_->armAfter(options_.connectionRetryInterval);
                  }
                  return;
                }
                auto version = proto::desiredVersionOfTwin(body);
                auto desired = proto::desiredSectionOfTwin(body);
                if (!version || !desired) {
                  backgroundError({Errc::Protocol, "the twin has no readable desired section"});
                  return;
                }
                if (lastDesiredVersion_ && *lastDesiredVersion_ == *version) {
                  return;
                }
                // A change made while we were away, or the starting state after the first
                // connect (dbus-contract-notes "Twin").
                lastDesiredVersion_ = *version;
                notify([&](Observer& o) { o.onDesiredPropertiesPatch(*desired); });
              });
}

void HubSession::onDesiredPatch(std::string_view topic, std::string_view payload) {
  auto version = proto::parseDesiredPatchTopic(topic);
  if (!version) {
    version = proto::versionOfDesiredPatch(payload);
  }
  if (!version) {
    backgroundError(
        {Errc::Protocol, "unreadable desired-properties patch: " + version.error().message});
    return;
  }
  if (lastDesiredVersion_ && *version <= *lastDesiredVersion_) {
    return;  // already delivered by a newer full fetch (versions only increase, doc 7)
  }
  lastDesiredVersion_ = *version;
  notify([&](Observer& o) { o.onDesiredPropertiesPatch(std::string(payload)); });
}

core::Result<void> HubSession::updateSasToken(const std::string& token) {
  if (options_.auth != AuthMethod::SasToken) {
    return fail(Errc::NotSupported,
                "UpdateSasToken needs authentication = sas-token; this device uses its own key");
  }
  auto valid = proto::validateSasTokenFor(token, options_.hubHostname, options_.deviceId,
                                          options_.moduleId, clock_.unixSeconds());
  if (!valid) {
    return fail(Errc::InvalidArgument, valid.error().message);
  }
  if (sasTokenAccepted_) {
    // Kept until the hub accepts the new one: a token the hub refuses must not leave the device
    // offline while the old one still works.
    previousSasToken_ = options_.sasToken;
  }
  sasTokenAccepted_ = false;
  options_.sasToken = core::Secret<>(token);
  logf(LogLevel::Notice, "new SAS token received (expires at ", valid->expiry,
       "), re-authorising with it");
  if (linkUp_ || attemptActive_) {
    reconnectPlanned("new SAS token");
  } else if (wantConnected_ || credentialsRefused_) {
    retryTimer_->disarm();
    start();
  }
  return {};
}

bool HubSession::restorePreviousSasToken(const core::Error& refusal) {
  if (options_.auth != AuthMethod::SasToken || !previousSasToken_) {
    return false;
  }
  core::Secret<> previous = std::move(*previousSasToken_);
  previousSasToken_.reset();
  auto parsed = proto::parseSasToken(previous.reveal());
  if (!parsed || parsed->expiry <= clock_.unixSeconds()) {
    return false;
  }
  options_.sasToken = std::move(previous);
  sasTokenAccepted_ = true;
  core::Error note{Errc::Unauthorized, "the hub refused the new SAS token (" + refusal.message +
                                           "); the previous token, valid until " +
                                           std::to_string(parsed->expiry) + ", stays in use"};
  logf(LogLevel::Warning, note.message);
  lastError_ = note;
  restoredNote_ = note;
  notify([&](Observer& o) { o.onBackgroundError(note); });
  if (wantConnected_) {
    // At once and without a visible outage when the link was up (a planned reconnect).
    retryTimer_->disarm();
    startAttempt();
  }
  return true;
}

core::Result<core::Secret<>> HubSession::httpAuthorization() const {
  if (options_.auth == AuthMethod::X509) {
    return core::Secret<>();  // no Authorization header: the TLS client certificate is it
  }
  if (options_.auth == AuthMethod::SasToken) {
    return options_.sasToken;
  }
  std::uint64_t expiry =
      clock_.unixSeconds() + static_cast<std::uint64_t>(options_.sasTokenTtl.count());
  return proto::makeSasToken(
      proto::sasResourceUri(options_.hubHostname, options_.deviceId, options_.moduleId),
      options_.sharedAccessKey, expiry);
}

void HubSession::backgroundError(core::Error error) {
  logf(LogLevel::Warning, error.message);
  notify([&](Observer& o) { o.onBackgroundError(error); });
}

void HubSession::setState(ConnectionState state, const core::Error* error) {
  // A failed retry keeps the state (reconnecting) but changes lastError(): observers hear of it
  // too, so that LastError's PropertiesChanged and the service status follow every failure.
  if (state == state_ && error == nullptr) {
    return;
  }
  state_ = state;
  notify([&](Observer& o) { o.onStateChanged(state, error); });
}

void HubSession::failConnectWaiters(const core::Error& error) {
  auto waiters = std::move(connectWaiters_);
  connectWaiters_.clear();
  for (auto& w : waiters) {
    w(fail(error));
  }
}

void HubSession::failQueued(const core::Error& error) {
  auto twin = std::move(twinRequests_);
  twinRequests_.clear();
  twinTimer_->disarm();
  for (auto& [rid, request] : twin) {
    if (request.done) {
      request.done(fail(error), {});
    }
  }
  auto queued = std::move(queued_);
  queued_.clear();
  queuedBytes_ = 0;
  for (auto& q : queued) {
    q.done(fail(error));
  }
}

void HubSession::failInFlight(const core::Error& error) {
  auto inFlight = std::move(inFlight_);
  inFlight_.clear();
  inFlightOrder_.clear();
  inFlightTimer_->disarm();
  for (auto& [mid, entry] : inFlight) {
    entry.done(fail(error));
  }
}

}  // namespace iothubd::session
