// SPDX-License-Identifier: MIT
#include "iothubd/session/hub_session.hpp"

#include <utility>

#include "iothubd/core/assert.hpp"
#include "iothubd/core/log.hpp"
#include "iothubd/proto/mqtt_identity.hpp"
#include "iothubd/proto/sas_token.hpp"
#include "iothubd/session/session_options.hpp"

namespace iothubd::session {
namespace {

using core::Errc;
using core::fail;
using core::logf;
using core::LogLevel;

/// How long a planned reconnect waits at most for in-flight PUBACKs.
constexpr std::chrono::seconds kMaxDrain{10};

/// Why a token may be refused while the clock is not synchronised (protocol doc 2: the hub
/// refuses a token whose time is more than 5 minutes off its own).
constexpr const char* kClockSkewRule =
    "the hub refuses a token made with a clock more than 5 minutes off its own";

PublishTracker::Limits publishLimits(const SessionOptions& o) {
  return {o.maxQueuedMessages, o.maxQueuedBytes, o.operationTimeout};
}

TwinClient::Options twinOptions(const SessionOptions& o) {
  // Pitfall 15: a failed desired fetch is retried after 10 s, or after the connection's cap if
  // that is shorter (short bounds make short tests), but never sooner than after 1 s.
  using std::chrono::seconds;
  const auto cap = std::chrono::duration_cast<seconds>(o.connectionRetryMaxDelay);
  const seconds retry = std::max(seconds(1), std::min(cap, seconds(10)));
  return {o.maxTwinRequests, o.operationTimeout, retry, o.ensureDesiredProperties};
}

RetryPolicy::Settings retrySettings(const SessionOptions& o) {
  return {o.connectionRetry, o.connectionRetryInitialDelay, o.connectionRetryMaxDelay,
          o.auth != AuthMethod::SasToken};
}

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
      retry_(retrySettings(options_), std::random_device{}()),
      publishes_(scheduler, clock, transport, publishLimits(options_)),
      twin_(scheduler, clock, transport, *this, twinOptions(options_)),
      random_(std::random_device{}()) {
  transport_.setListener(this);
  publishes_.setOnDrained([this] { machine_.handle(LinkEvent::Drained); });
  publishes_.setWhyHeld([this] {
    return lastError_.message.empty() ? std::string("not connected")
                                      : "not connected: " + lastError_.message;
  });
  connectTimer_ = scheduler_.createTimer([this] {
    logf(LogLevel::Warning, "no CONNACK from ", options_.hubHostname, " within ",
         options_.operationTimeout.count(), " s, giving up on this attempt");
    machine_.handle(LinkEvent::TimedOut);
  });
  retryTimer_ = scheduler_.createTimer([this] { machine_.handle(LinkEvent::RetryDue); });
  renewTimer_ = scheduler_.createTimer([this] {
    if (options_.auth == AuthMethod::SasToken) {
      logf(LogLevel::Notice, "the SAS token expires at ", tokenExpiry_,
           "; waiting for a new one (UpdateSasToken)");
      notify([&](Observer& o) { o.onNewSasTokenRequired(); });
      return;
    }
    renew("SAS token renewal");
  });
  drainTimer_ = scheduler_.createTimer([this] { machine_.handle(LinkEvent::Drained); });
}

HubSession::~HubSession() {
  lifetime_.end();
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

// --- the API -------------------------------------------------------------------------------------

void HubSession::start() {
  wantConnected_ = true;
  if (machine_.state() == LinkState::Idle) {
    // Issue 14: an attempt asked for soon after a failure (auto_connect, Connect()) waits out
    // the retry policy's delay like any other, instead of starting a CONNECT at once.
    const auto now = clock_.monotonic();
    if (retryNotBefore_ && now < *retryNotBefore_) {
      retryDelay_ = *retryNotBefore_ - now;
      machine_.handle(LinkEvent::StartLater);
      return;
    }
  }
  machine_.handle(LinkEvent::Start);
}

void HubSession::connect(Completion done) {
  wantConnected_ = true;
  if (connected()) {
    // Also during a planned reconnect: apps see one continuous connection.
    done({});
    return;
  }
  connectWaiters_.push_back(std::move(done));
  start();
}

void HubSession::disconnect(Completion done) {
  wantConnected_ = false;
  renewTimer_->disarm();
  core::Error cancelled{Errc::Cancelled, "disconnected on request"};
  failConnectWaiters(cancelled);
  twin_.failAll(cancelled);
  publishes_.failHeld(cancelled);
  publishes_.failInFlight(cancelled);
  disconnectWaiters_.push_back(std::move(done));
  machine_.handle(LinkEvent::Stop);
}

void HubSession::networkCameBack(std::string_view source) {
  // Waiting out a delay is always Backoff: start() from Idle within the delay goes there too
  // (StartLater).
  const LinkState s = machine_.state();
  if (s != LinkState::Backoff || credentialsRefused_) {
    logf(LogLevel::Debug, "the network is online again (", source, "); the connection is ",
         linkStateName(s), credentialsRefused_ ? " after the hub refused the credentials" : "",
         ": nothing to do");
    return;
  }
  // Issue 14: the failures that built up the backoff were most likely the network's; waiting
  // out the rest of the delay would only keep the device offline.
  const auto now = clock_.monotonic();
  const auto left = retryNotBefore_ && *retryNotBefore_ > now ? *retryNotBefore_ - now
                                                              : std::chrono::microseconds{0};
  logf(LogLevel::Info, "the network is online again (", source,
       "): reconnecting now instead of in ", std::chrono::ceil<std::chrono::seconds>(left).count(),
       " s");
  retry_.reset();
  retryNotBefore_.reset();
  retryTimer_->disarm();
  machine_.handle(LinkEvent::RetryDue);
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
    publishes_.publish(topic, payload, std::move(done));  // libmosquitto copies them
    return;
  }
  publishOrQueue(std::string(topic), std::string(payload), std::move(done));
}

void HubSession::sendMethodResponse(const std::string& requestId, int status,
                                    const std::string& payload, Completion done) {
  // Issue 14: the hub takes an answer only on the connection its request came on; a request id
  // from an earlier link is never answered on a later one (the hub told the cloud caller it
  // timed out or the device went away).
  if (methodRequests_.erase(requestId) == 0 || !linkUp_) {
    done(fail(Errc::ConnectionDropped,
              "method request " + core::quoted(requestId) +
                  " is not pending on the current connection (it came on one that has closed "
                  "since, or was answered): the hub no longer takes its answer"));
    return;
  }
  // Protocol doc 6: the request id is echoed unchanged; QoS 1 so that the caller learns the
  // hub took the answer. On the request's link even while a planned reconnect drains it.
  publishes_.publish(proto::methodResponseTopic(status, requestId), payload, std::move(done));
}

core::Result<void> HubSession::publishPrepared(const std::string& topic, const std::string& payload,
                                               Completion done) {
  if (!readyToPublish()) {
    return fail(Errc::NotConnected, "not connected to the hub");
  }
  publishes_.publish(topic, payload, std::move(done), PublishTracker::Wait::UntilLinkEnds);
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
  const LinkState s = machine_.state();
  return (s != LinkState::Idle && s != LinkState::Closing) || options_.autoConnect;
}

void HubSession::ensureConnecting() {
  const LinkState s = machine_.state();
  if (s == LinkState::Idle || s == LinkState::Closing) {
    // auto_connect: the first operation opens the connection (seed: auto_connect=True).
    start();
  }
}

void HubSession::publishOrQueue(std::string topic, std::string payload, Completion done) {
  if (readyToPublish()) {
    publishes_.publish(topic, payload, std::move(done));
    return;
  }
  if (!canReachHub()) {
    done(fail(Errc::NotConnected, "not connected to the hub and auto_connect is off"));
    return;
  }
  if (auto held = publishes_.hold(std::move(topic), std::move(payload), done); !held) {
    done(fail(held.error()));
    return;
  }
  ensureConnecting();
}

void HubSession::getTwin(TwinCompletion done) {
  if (!canReachHub()) {
    done(fail(Errc::NotConnected, "not connected to the hub and auto_connect is off"));
    return;
  }
  twin_.get(twinReady(), std::move(done));
  ensureConnecting();
}

void HubSession::patchReportedProperties(const std::string& patchJson, VersionCompletion done) {
  if (!canReachHub()) {
    done(fail(Errc::NotConnected, "not connected to the hub and auto_connect is off"));
    return;
  }
  twin_.patchReported(patchJson, twinReady(), std::move(done));
  ensureConnecting();
}

bool HubSession::reconfigure(SessionOptions o) {
  const bool reconnect = linkDependsOnChange(options_, o);
  if (!(o.sasToken == options_.sasToken)) {
    // The operator's token from a reload: a fresh start for the token fallback.
    sasTokenAccepted_ = false;
    previousSasToken_.reset();
  }
  options_ = std::move(o);
  applyOptions();
  if (reconnect) {
    renew("new settings");
  }
  return reconnect;
}

void HubSession::applyOptions() {
  retry_.configure(retrySettings(options_));
  publishes_.setLimits(publishLimits(options_));
  twin_.setOptions(twinOptions(options_));
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
  renew("new SAS token");
  return {};
}

bool HubSession::restorePreviousSasToken(const core::Error& refusal) {
  const LinkState s = machine_.state();
  if (options_.auth != AuthMethod::SasToken || !previousSasToken_ ||
      (s != LinkState::Connecting && s != LinkState::Resuming)) {
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
  // At once and without a visible outage when the link was up (a planned reconnect).
  machine_.handle(LinkEvent::FellBack);
  return true;
}

void HubSession::setClockSync(core::ClockSync sync, std::string detail) {
  if (sync == clockSync_ && detail == clockSyncDetail_) {
    return;
  }
  clockSync_ = sync;
  clockSyncDetail_ = std::move(detail);
  if (sync == core::ClockSync::Unsynchronised) {
    return;  // the next attempt waits (deferForClock); one under way goes on
  }
  clockWaitSince_.reset();
  // A wait for the clock ends now, and so does the backoff after a refusal of a token made from
  // the key: the refusal may have been the clock's fault, and the next token is made right.
  const bool refusedToken = credentialsRefused_ && options_.auth == AuthMethod::SymmetricKey;
  if (machine_.state() != LinkState::Backoff || !(clockDeferred_ || refusedToken)) {
    return;
  }
  logf(LogLevel::Notice,
       sync == core::ClockSync::Synchronised ? "the system clock is synchronised ("
                                             : "no time service runs any more (",
       clockSyncDetail_, "): connecting now");
  clockDeferred_ = false;
  retryTimer_->disarm();
  machine_.handle(LinkEvent::RetryDue);
}

void HubSession::clockStepped(std::chrono::seconds by) {
  const std::chrono::seconds size = by < std::chrono::seconds(0) ? -by : by;
  if (size < kTokenClockStep) {
    logf(LogLevel::Debug, "the system clock was set (by ", by.count(), " s)");
    return;
  }
  logf(LogLevel::Notice, "the system clock was set ", by.count() > 0 ? "forward" : "back", " by ",
       size.count(), " s");
  switch (options_.auth) {
    case AuthMethod::SymmetricKey:
      // The token's se came from the old clock: the hub may refuse it, or it may expire before
      // the renewal armed from it. A new one now (a planned reconnect when the link is up).
      if (machine_.state() == LinkState::Idle && !wantConnected_ && !credentialsRefused_) {
        return;
      }
      renew("a new SAS token after the clock was set");
      return;
    case AuthMethod::SasToken:
      // The operator's token is what it is; the reminder follows the new clock.
      if (linkUp_) {
        armRenewal();
      }
      return;
    case AuthMethod::X509:
      return;
  }
}

bool HubSession::deferForClock() {
  const bool wasDeferred = std::exchange(clockDeferred_, false);
  if (clockSync_ != core::ClockSync::Unsynchronised || options_.clockSyncTimeout.count() <= 0) {
    return false;
  }
  const auto now = clock_.monotonic();
  if (!clockWaitSince_) {
    clockWaitSince_ = now;
  }
  const auto deadline = *clockWaitSince_ + options_.clockSyncTimeout;
  if (now >= deadline) {
    if (wasDeferred) {
      logf(LogLevel::Warning, "the system clock is still not synchronised after ",
           options_.clockSyncTimeout.count(), " s (", clockSyncDetail_,
           "); connecting anyway: ", kClockSkewRule, ", so it may refuse this one");
    }
    return false;
  }
  const auto left = std::chrono::ceil<std::chrono::seconds>(deadline - now);
  lastError_ = core::Error{Errc::NotConnected, "waiting up to " + std::to_string(left.count()) +
                                                   " s for the system clock to be synchronised (" +
                                                   clockSyncDetail_ +
                                                   ") before connecting: " + kClockSkewRule};
  logf(LogLevel::Notice, lastError_.message);
  retryDelay_ = deadline - now;
  clockDeferred_ = true;
  machine_.handle(LinkEvent::Deferred);
  return true;
}

core::Result<core::Secret<>> HubSession::httpAuthorization() const {
  return session::httpAuthorization(options_, clock_);
}

void HubSession::renew(const char* why) {
  // New credentials or settings: their first attempt is no repeat of the failures before.
  retry_.reset();
  retryNotBefore_.reset();
  if (machine_.state() == LinkState::Idle) {
    // The old credentials may have been the problem (protocol doc 9: after a refusal, retry
    // only once they changed): try the new ones now. Otherwise nothing is open to renew.
    if (wantConnected_ || credentialsRefused_) {
      start();
    }
    return;
  }
  renewWhy_ = why;
  machine_.handle(LinkEvent::Renew);
}

// --- the transport's side ------------------------------------------------------------------------

void HubSession::onConnected() {
  connectTimer_->disarm();
  machine_.handle(LinkEvent::Connacked);
}

void HubSession::onDisconnected(const mqtt::Disconnect& reason) {
  connectTimer_->disarm();
  renewTimer_->disarm();
  switch (machine_.state()) {
    case LinkState::Closing:
    case LinkState::Reopening:
      // Whatever ended the link, the close we asked for is complete.
      machine_.handle(LinkEvent::Closed);
      return;
    case LinkState::Renewing:
      if (reason.requested) {
        machine_.handle(LinkEvent::Closed);
        return;
      }
      break;
    case LinkState::Aborting:
      failed(core::Error{Errc::Timeout, "no answer from the hub within " +
                                            std::to_string(options_.operationTimeout.count()) +
                                            " s"});
      return;
    default:
      break;
  }
  failed(reason.error);
}

void HubSession::failed(core::Error error) {
  if (error.code == Errc::Unauthorized && restorePreviousSasToken(error)) {
    return;
  }
  if (error.code == Errc::Unauthorized && clockSync_ == core::ClockSync::Unsynchronised) {
    error.message += " (the system clock is not synchronised yet, " + clockSyncDetail_ + ": " +
                     kClockSkewRule + ")";
  }
  credentialsRefused_ = error.code == Errc::Unauthorized;
  const auto now = clock_.monotonic();
  std::optional<std::chrono::microseconds> lived;
  if (linkUp_) {
    lived = now - linkUpSince_;
  }
  const auto decision = retry_.next(error, lived);
  retryDelay_ = decision.delay;
  retryNotBefore_ = now + decision.delay;
  failure_ = std::move(error);
  if (wantConnected_ && decision.retry) {
    machine_.handle(LinkEvent::Lost);
  } else {
    machine_.handle(LinkEvent::GaveUp);
  }
}

void HubSession::onPublishAcked(int messageId) {
  (void)publishes_.acknowledge(messageId);  // unknown: timed out already, or not ours
}

void HubSession::onSubscribed(int messageId) {
  if (!twinSubscription_ || messageId != *twinSubscription_ || !linkUp_) {
    return;
  }
  // Twin requests wait for the SUBACK of $iothub/twin/res/#, as every SDK does: a request the
  // hub gets before the subscription is in place has its answer dropped (issue 14).
  twinSubscription_.reset();
  twinSubscribed_ = true;
  if (readyToPublish()) {
    twin_.linkReady();
  }
}

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
      methodRequests_.insert(request->requestId);
      notify([&](Observer& o) {
        o.onMethodRequest(request->requestId, request->methodName, payload);
      });
      return;
    }
    case proto::InboundKind::TwinResponse:
      twin_.onResponse(topic, payload);
      return;
    case proto::InboundKind::TwinDesiredPatch:
      twin_.onDesiredPatch(topic, payload);
      return;
    case proto::InboundKind::Unknown:
      logf(LogLevel::Debug, "ignoring message on ", core::quoted(topic));
      return;
  }
}

void HubSession::onDesiredProperties(const std::string& json) {
  notify([&](Observer& o) { o.onDesiredPropertiesPatch(json); });
}

// --- the machine's actions -----------------------------------------------------------------------

void HubSession::perform(LinkAction action, const ConnectionMachine::Step& step) {
  switch (action) {
    case LinkAction::None:
      return;
    case LinkAction::BeginAttempt:
      beginAttempt();
      return;
    case LinkAction::CloseLink:
      if (step.transition.to == LinkState::Renewing &&
          step.transition.from == LinkState::Draining) {
        logf(LogLevel::Info, "reconnecting for ", renewWhy_);
      }
      transport_.disconnect();
      return;
    case LinkAction::ArmRetry:
      if (step.transition.event == LinkEvent::Deferred) {
        retryTimer_->armAfter(retryDelay_);  // deferForClock() said why
        return;
      }
      logf(LogLevel::Info, "reconnecting in ",
           std::chrono::duration_cast<std::chrono::milliseconds>(retryDelay_).count(), " ms",
           retry_.failures() == 0 ? std::string()
                                  : " (backoff step " + std::to_string(retry_.failures()) + ")");
      retryTimer_->armAfter(retryDelay_);
      return;
    case LinkAction::CancelRetry:
      retryTimer_->disarm();
      return;
    case LinkAction::BeginDrain:
      if (publishes_.inFlight() == 0) {
        machine_.handle(LinkEvent::Drained);
        return;
      }
      // dbus-contract-notes "Connection": wait (bounded) for in-flight PUBACKs so the reconnect
      // causes no duplicate telemetry; new publishes are held meanwhile.
      drainTimer_->armAfter(
          std::min<std::chrono::microseconds>(options_.operationTimeout, kMaxDrain));
      return;
    case LinkAction::EndDrain:
      drainTimer_->disarm();
      return;
    case LinkAction::LinkUp:
      linkUp();
      return;
    case LinkAction::Release:
      release();
      return;
    case LinkAction::LinkDown:
      linkDown();
      return;
    case LinkAction::Record:
      record(step);
      return;
    case LinkAction::GiveUp:
      giveUp(step);
      return;
    case LinkAction::FinishClose:
      finishClose();
      return;
    case LinkAction::Announce:
      announce(step);
      return;
  }
}

void HubSession::beginAttempt() {
  if (options_.hubHostname.empty()) {
    // authentication = dps before the first assignment (daemon/provisioner.cpp sets the hub):
    // nothing to connect to yet, so no attempt at an empty name, and LastError says why.
    failed(
        core::Error{Errc::NotConnected, "no hub assigned yet: the DPS registration is under way"});
    return;
  }
  if (machine_.state() == LinkState::Connecting && deferForClock()) {
    return;  // a planned reconnect (Resuming) does not wait: its link was fine
  }
  auto password = connectPassword(options_, clock_);
  if (!password) {
    logf(LogLevel::Error, "cannot connect: ", password.error().message);
    failed(password.error());
    return;
  }
  tokenExpiry_ = password->expiry;
  mqtt::ConnectOptions o;
  o.host = options_.gatewayHostname.empty() ? options_.hubHostname : options_.gatewayHostname;
  o.port = options_.port;
  o.clientId = proto::mqttClientId(options_.deviceId, options_.moduleId);
  o.username = proto::mqttUsername(options_.hubHostname, options_.deviceId, options_.moduleId,
                                   options_.userAgent, options_.productInfo);
  o.password = std::move(password->secret);
  o.keepAliveSeconds = options_.keepAliveSeconds;
  o.tls = options_.tls;
  o.websockets = options_.websockets;
  o.userAgent = options_.userAgent;
  o.proxy = options_.proxy;
  logf(LogLevel::Info, "connecting to ", o.host, ":", o.port, " as ", o.clientId);
  if (auto r = transport_.connect(o); !r) {
    logf(LogLevel::Error, "cannot connect: ", r.error().message);
    failed(r.error());
    return;
  }
  // Protocol doc 1.3: hubs traffic-shape CONNACKs under load; operation_timeout (default 60 s)
  // bounds the wait.
  connectTimer_->armAfter(options_.operationTimeout);
}

void HubSession::linkUp() {
  IOTHUBD_ASSERT(!linkUp_, "a link comes up only after the previous one went down");
  linkUp_ = true;
  credentialsRefused_ = false;
  // The retry schedule goes on: it starts afresh only once this link has lived long enough
  // (RetryPolicy::kStableLink), so that a link that keeps dropping backs off.
  linkUpSince_ = clock_.monotonic();
  retryNotBefore_.reset();
  armRenewal();
  lastError_ = restoredNote_.value_or(core::Error{});
  restoredNote_.reset();
  if (options_.auth == AuthMethod::SasToken) {
    sasTokenAccepted_ = true;
    previousSasToken_.reset();
  }
  logf(LogLevel::Notice, "connected to ", options_.hubHostname, " as ",
       proto::mqttClientId(options_.deviceId, options_.moduleId));
  notify([&](Observer& o) { o.onSasTokenExpiryChanged(tokenExpiry_); });
  subscribeAll();
}

void HubSession::release() {
  auto waiters = std::move(connectWaiters_);
  connectWaiters_.clear();
  for (auto& w : waiters) {
    w({});
  }
  publishes_.flush([this] { return linkUp_; });
  if (!linkUp_) {
    return;  // a completion dropped the link again: the rest waits for the next one
  }
  // Twin requests whose answer a drop or a planned reconnect swallowed go out again with the
  // same $rid (twin requests are QoS 0 and the hub keeps no session state for them), once the
  // hub has acknowledged the subscription their answers come on (onSubscribed).
  if (twinSubscribed_) {
    twin_.linkReady();
  }
  if (linkUp_) {
    notify([](Observer& o) { o.onLinkUp(); });
  }
}

void HubSession::linkDown() {
  if (!linkUp_) {
    return;  // the link never came up (an attempt ended)
  }
  linkUp_ = false;
  twinSubscribed_ = false;
  twinSubscription_.reset();
  if (!methodRequests_.empty()) {
    logf(LogLevel::Info, "dropping ", methodRequests_.size(),
         " unanswered method requests of the closed connection");
    methodRequests_.clear();
  }
  twin_.linkLost();
  // Publishes are tracked per connection (the transport starts every connection afresh):
  // whatever the hub did not acknowledge on this one is the owner's to resend. A planned
  // reconnect drained them first.
  publishes_.linkLost(core::Error{Errc::ConnectionDropped,
                                  "the connection closed before the hub acknowledged the message"});
  notify([](Observer& o) { o.onLinkDown(); });
}

void HubSession::record(const ConnectionMachine::Step& step) {
  lastError_ = failure_;
  if (step.before == ConnectionState::Connected) {
    logf(LogLevel::Warning, failure_.message);
  } else {
    logf(LogLevel::Warning, "connection attempt failed: ", failure_.message);
  }
  // Whoever called Connect() wants this attempt's outcome, not the next one's; with nobody
  // waiting, apps learn of it as a background error (seed: on_background_exception).
  if (connectWaiters_.empty()) {
    notify([&](Observer& o) { o.onBackgroundError(failure_); });
  }
  failConnectWaiters(failure_);
  if (step.transition.event == LinkEvent::Lost && !machine_.dropped()) {
    // Never connected yet: an operation that asked for the connection (auto_connect) gets this
    // attempt's error at once, as the seed's send_message does, instead of waiting. After a drop,
    // held publishes keep waiting, each bounded by its own deadline.
    twin_.failAll(failure_);
    publishes_.failHeld(failure_);
  }
}

void HubSession::giveUp(const ConnectionMachine::Step& step) {
  wantConnected_ = false;
  twin_.failAll(failure_);
  publishes_.failHeld(failure_);
  publishes_.failInFlight(step.before == ConnectionState::Connected
                              ? core::Error{Errc::ConnectionDropped, failure_.message}
                              : failure_);
}

void HubSession::announce(const ConnectionMachine::Step& step) {
  const LinkEvent e = step.transition.event;
  const core::Error* error =
      e == LinkEvent::Lost || e == LinkEvent::GaveUp || e == LinkEvent::Deferred ? &lastError_
                                                                                 : nullptr;
  // A failed retry keeps the state (reconnecting) but changes lastError(): observers hear of it
  // too, so that LastError's PropertiesChanged and the service status follow every failure.
  if (step.after == announced_ && error == nullptr) {
    return;
  }
  announced_ = step.after;
  notify([&](Observer& o) { o.onStateChanged(step.after, error); });
}

void HubSession::finishClose() {
  logf(LogLevel::Notice, "disconnected from ", options_.hubHostname);
  auto waiters = std::move(disconnectWaiters_);
  disconnectWaiters_.clear();
  for (auto& w : waiters) {
    w({});
  }
}

void HubSession::armRenewal() {
  renewTimer_->disarm();
  if (auto delay = renewalDelay(options_.auth, tokenExpiry_, clock_.unixSeconds())) {
    renewTimer_->armAfter(*delay);
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
    auto r = transport_.subscribe(t, 1);
    if (!r) {
      backgroundError({Errc::Protocol, "cannot subscribe to " + t + ": " + r.error().message});
    } else if (t == proto::kTwinResponseSubscribeTopic) {
      twinSubscription_ = *r;
    }
  }
}

void HubSession::backgroundError(core::Error error) {
  logf(LogLevel::Warning, error.message);
  notify([&](Observer& o) { o.onBackgroundError(error); });
}

void HubSession::failConnectWaiters(const core::Error& error) {
  auto waiters = std::move(connectWaiters_);
  connectWaiters_.clear();
  for (auto& w : waiters) {
    w(fail(error));
  }
}

}  // namespace iothubd::session
