// SPDX-License-Identifier: MIT
#include "iothubd/provisioning/provisioning_client.hpp"

#include <algorithm>
#include <utility>

#include "iothubd/core/log.hpp"
#include "iothubd/core/utf8.hpp"
#include "iothubd/proto/mqtt_identity.hpp"

namespace iothubd::provisioning {
namespace {

using core::Errc;
using core::logf;
using core::LogLevel;

std::string secondsText(std::chrono::microseconds delay) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(delay).count();
  if (ms % 1000 == 0) {
    return std::to_string(ms / 1000) + " s";
  }
  return std::to_string(ms / 1000) + "." + std::to_string(ms % 1000 / 100) + " s";
}

Failure makeFailure(FailureKind kind, Errc code, std::string message, int status = 0,
                    proto::DpsServiceError details = {}) {
  Failure f;
  f.kind = kind;
  f.error = core::Error{code, std::move(message), status};
  f.status = status;
  f.details = std::move(details);
  return f;
}

}  // namespace

const char* attestationName(Attestation attestation) noexcept {
  return attestation == Attestation::X509 ? "x509" : "symmetric-key";
}

const char* failureKindName(FailureKind kind) noexcept {
  switch (kind) {
    case FailureKind::BadCredentials:
      return "bad-credentials";
    case FailureKind::UnknownRegistration:
      return "unknown-registration";
    case FailureKind::BadRequest:
      return "bad-request";
    case FailureKind::AssignmentFailed:
      return "assignment-failed";
    case FailureKind::Disabled:
      return "disabled";
    case FailureKind::Timeout:
      return "timeout";
    case FailureKind::Protocol:
      return "protocol";
    case FailureKind::Cancelled:
      return "cancelled";
    case FailureKind::InvalidOptions:
      return "invalid-options";
  }
  return "timeout";
}

ProvisioningClient::ProvisioningClient(core::Scheduler& scheduler, core::Clock& clock,
                                       mqtt::MqttTransport& transport, ProvisioningOptions options)
    : scheduler_(scheduler),
      clock_(clock),
      transport_(transport),
      options_(std::move(options)),
      random_(std::random_device{}()) {
  transport_.setListener(this);
  requestTimer_ = scheduler_.createTimer([this] { onRequestTimeout(); });
  retryTimer_ = scheduler_.createTimer([this] {
    if (transportOpen_ && subscribed_) {
      sendRequest();
    } else {
      connect();
    }
  });
  overallTimer_ = scheduler_.createTimer([this] { onOverallTimeout(); });
}

ProvisioningClient::~ProvisioningClient() {
  lifetime_.end();
  transport_.setListener(nullptr);
  if (transportOpen_) {
    transport_.disconnect();
  }
}

void ProvisioningClient::registerDevice(Completion done) {
  auto refuse = [&](std::string message) {
    Outcome outcome = tl::unexpected(
        makeFailure(FailureKind::InvalidOptions, Errc::InvalidArgument, std::move(message)));
    scheduler_.post(
        lifetime_.guard([done = std::move(done), outcome = std::move(outcome)] { done(outcome); }));
  };
  if (active()) {
    refuse("a DPS registration is already under way");
    return;
  }
  const auto& o = options_;
  if (auto ok = proto::validateHostName(o.globalEndpoint, "global_endpoint"); !ok) {
    refuse("DPS " + ok.error().message);
    return;
  }
  if (auto ok = proto::validateIdScope(o.idScope); !ok) {
    refuse("DPS " + ok.error().message);
    return;
  }
  if (auto ok = proto::validateRegistrationId(o.registrationId); !ok) {
    refuse("DPS " + ok.error().message);
    return;
  }
  auto body = proto::dpsRegisterPayload(o.registrationId, o.payloadJson, o.modelId);
  if (!body) {
    refuse("DPS registration " + body.error().message);
    return;
  }
  run_ = options_;
  registerBody_ = std::move(*body);
  done_ = std::move(done);
  operationId_.clear();
  pendingRid_.clear();
  lastProblem_.clear();
  backoffStep_ = 0;
  overallTimer_->armAfter(o.timeout);
  logf(LogLevel::Info, "registering with DPS ", o.globalEndpoint, ":", o.port, " (ID scope ",
       o.idScope, ") as ", core::quoted(o.registrationId), " (", attestationName(o.attestation),
       ")");
  step_ = Step::Connecting;
  connect();
}

void ProvisioningClient::cancel() {
  if (active()) {
    fail(makeFailure(FailureKind::Cancelled, Errc::Cancelled, "DPS registration cancelled"));
  }
}

void ProvisioningClient::connect() {
  if (transportOpen_) {
    // The previous connection is still closing; the transport takes one at a time.
    reconnectWhenClosed_ = true;
    closeTransport();
    return;
  }
  const auto& o = run_;
  mqtt::ConnectOptions c;
  c.host = o.globalEndpoint;
  c.port = o.port;
  c.clientId = o.registrationId;
  c.username = proto::dpsUsername(o.idScope, o.registrationId, o.userAgent);
  if (o.attestation == Attestation::SymmetricKey) {
    // A fresh token for every CONNECT, with the wall clock for `se` (as for the hub).
    auto token = proto::makeDpsSasToken(
        o.idScope, o.registrationId, o.deviceKey,
        clock_.unixSeconds() + static_cast<std::uint64_t>(o.sasTokenTtl.count()));
    if (!token) {
      fail(makeFailure(FailureKind::InvalidOptions, Errc::InvalidArgument,
                       "DPS device key: " + token.error().message));
      return;
    }
    c.password = std::move(*token);
  }
  c.keepAliveSeconds = o.keepAliveSeconds;
  c.tls = o.tls;
  c.websockets = o.websockets;
  c.userAgent = o.userAgent;
  c.proxy = o.proxy;
  step_ = Step::Connecting;
  if (auto r = transport_.connect(c); !r) {
    if (r.error().code == Errc::Config || r.error().code == Errc::InvalidArgument) {
      fail(makeFailure(FailureKind::InvalidOptions, r.error().code,
                       "cannot connect to DPS: " + r.error().message));
    } else {
      retryLater("cannot connect to DPS: " + r.error().message, nextBackoff(), false);
    }
    return;
  }
  transportOpen_ = true;
  linkUp_ = false;
  subscribed_ = false;
  requestTimer_->armAfter(o.requestTimeout);
}

void ProvisioningClient::onConnected() {
  linkUp_ = true;
  if (step_ != Step::Connecting) {
    return;  // finished or given up meanwhile; closeTransport() is under way
  }
  auto mid = transport_.subscribe(proto::kDpsResponseSubscribeTopic, 1);
  if (!mid) {
    retryLater("cannot subscribe to DPS responses: " + mid.error().message, nextBackoff(), true);
    return;
  }
  subscribeMid_ = *mid;
  step_ = Step::Subscribing;
  requestTimer_->armAfter(run_.requestTimeout);
}

void ProvisioningClient::onSubscribed(int messageId) {
  if (step_ != Step::Subscribing || messageId != subscribeMid_) {
    return;
  }
  subscribed_ = true;
  sendRequest();
}

void ProvisioningClient::sendRequest() {
  pendingRid_ = std::to_string(nextRid_++);
  core::Result<int> sent = 0;
  // QoS 1 as [py] publishes; the answer, not the PUBACK, completes the request.
  if (operationId_.empty()) {
    step_ = Step::Registering;
    sent = transport_.publish(proto::dpsRegisterTopic(pendingRid_), registerBody_, 1);
  } else {
    step_ = Step::Polling;
    sent = transport_.publish(proto::dpsOperationStatusTopic(pendingRid_, operationId_), "", 1);
  }
  if (!sent) {
    retryLater("cannot send to DPS: " + sent.error().message, nextBackoff(), true);
    return;
  }
  requestTimer_->armAfter(run_.requestTimeout);
}

void ProvisioningClient::onPublishAcked(int) {}

void ProvisioningClient::onMessage(std::string_view topic, std::string_view payload) {
  if (!proto::isDpsResponseTopic(topic)) {
    logf(LogLevel::Debug, "ignoring a DPS message on ", core::quoted(topic));
    return;
  }
  auto response = proto::parseDpsResponseTopic(topic);
  if (!response) {
    // Not ours to act on: the request's own timeout retries it if its answer was this.
    logf(LogLevel::Warning, "ignoring an unreadable DPS answer: ", response.error().message);
    return;
  }
  if ((step_ != Step::Registering && step_ != Step::Polling) ||
      response->requestId != pendingRid_) {
    logf(LogLevel::Debug, "ignoring a DPS answer to request ", core::quoted(response->requestId));
    return;
  }
  requestTimer_->disarm();
  pendingRid_.clear();
  onAnswer(*response, payload);
}

void ProvisioningClient::onAnswer(const proto::DpsResponseTopic& topic, std::string_view payload) {
  const bool polling = step_ == Step::Polling;
  const auto& regId = run_.registrationId;
  auto details = [&] { return proto::parseDpsServiceError(payload); };
  switch (proto::classifyDpsStatus(topic.status)) {
    case proto::DpsStatusClass::Ok:
    case proto::DpsStatusClass::Accepted: {
      auto operation = proto::parseDpsOperation(payload);
      if (!operation) {
        fail(makeFailure(FailureKind::Protocol, Errc::Protocol, operation.error().message,
                         topic.status));
        return;
      }
      onOperation(*operation, topic.retryAfterSeconds);
      return;
    }
    case proto::DpsStatusClass::Unauthorized: {
      auto d = details();
      fail(makeFailure(FailureKind::BadCredentials, Errc::Unauthorized,
                       "DPS refused the credentials of registration " + core::quoted(regId) + ": " +
                           proto::describeDpsError(topic.status, d),
                       topic.status, d));
      return;
    }
    case proto::DpsStatusClass::NotFound: {
      auto d = details();
      fail(makeFailure(FailureKind::UnknownRegistration, Errc::NotFound,
                       (polling ? "DPS does not know the registration operation of "
                                : "DPS has no enrollment for registration ") +
                           core::quoted(regId) + ": " + proto::describeDpsError(topic.status, d),
                       topic.status, d));
      return;
    }
    case proto::DpsStatusClass::BadRequest:
    case proto::DpsStatusClass::OtherClientError: {
      auto d = details();
      fail(makeFailure(FailureKind::BadRequest, Errc::Service,
                       "DPS refused the registration request of " + core::quoted(regId) + ": " +
                           proto::describeDpsError(topic.status, d),
                       topic.status, d));
      return;
    }
    case proto::DpsStatusClass::Throttled:
      retryLater("DPS throttles requests: " + proto::describeDpsError(topic.status, details()),
                 proto::dpsRetryDelay(topic.retryAfterSeconds), false);
      return;
    case proto::DpsStatusClass::ServerError: {
      const std::chrono::microseconds delay =
          topic.retryAfterSeconds
              ? std::chrono::microseconds(proto::dpsRetryDelay(topic.retryAfterSeconds))
              : nextBackoff();
      retryLater("DPS failed the request: " + proto::describeDpsError(topic.status, details()),
                 delay, false);
      return;
    }
  }
}

void ProvisioningClient::onOperation(const proto::DpsOperation& operation,
                                     std::optional<std::uint64_t> retryAfter) {
  const auto& regId = run_.registrationId;
  switch (operation.status) {
    case proto::DpsOperationStatus::Unassigned:
    case proto::DpsOperationStatus::Assigning: {
      operationId_ = operation.operationId;
      backoffStep_ = 0;  // DPS answers: whatever failed before is over
      const auto delay = proto::dpsRetryDelay(retryAfter);
      logf(LogLevel::Info, "DPS is assigning registration ", core::quoted(regId), " (operation ",
           operation.operationId, "); asking again in ", delay.count(), " s");
      step_ = Step::Waiting;
      retryTimer_->armAfter(delay);
      return;
    }
    case proto::DpsOperationStatus::Assigned: {
      const auto& s = *operation.registrationState;  // parseDpsOperation guarantees it
      succeed(Assignment{s.assignedHub, s.deviceId, s.substatus, s.registrationId,
                         s.createdDateTimeUtc, s.lastUpdatedDateTimeUtc, s.payload});
      return;
    }
    case proto::DpsOperationStatus::Failed: {
      proto::DpsServiceError d;
      std::string why = "no reason given";
      if (operation.registrationState) {
        d.errorCode = operation.registrationState->errorCode;
        d.message = operation.registrationState->errorMessage;
        d.timestampUtc = operation.registrationState->lastUpdatedDateTimeUtc;
        why.clear();
        if (d.errorCode != 0) {
          why = "errorCode " + std::to_string(d.errorCode);
        }
        if (!d.message.empty()) {
          why += (why.empty() ? "" : ": ") + core::validUtf8(d.message, 200);
        }
        if (why.empty()) {
          why = "no reason given";
        }
      }
      fail(makeFailure(
          FailureKind::AssignmentFailed, Errc::Service,
          "DPS could not assign registration " + core::quoted(regId) + " to a hub (" + why + ")",
          200, d));
      return;
    }
    case proto::DpsOperationStatus::Disabled:
      fail(makeFailure(FailureKind::Disabled, Errc::AccessDenied,
                       "the DPS enrollment of registration " + core::quoted(regId) + " is disabled",
                       200));
      return;
  }
}

void ProvisioningClient::onDisconnected(const mqtt::Disconnect& reason) {
  const bool wasUp = linkUp_;
  transportOpen_ = false;
  linkUp_ = false;
  subscribed_ = false;
  requestTimer_->disarm();
  if (reconnectWhenClosed_) {
    reconnectWhenClosed_ = false;
    if (active()) {
      connect();
    }
    return;
  }
  if (!active() || step_ == Step::Waiting) {
    return;  // our own close, or a wait that reconnects when it ends
  }
  if (reason.error.code == Errc::Unauthorized) {
    // CONNACK 4/5 (or the proxy refused us): retrying the same credentials cannot help.
    fail(makeFailure(FailureKind::BadCredentials, Errc::Unauthorized,
                     "DPS refused the connection of registration " +
                         core::quoted(run_.registrationId) + ": " + reason.error.message));
    return;
  }
  retryLater(
      "connection to DPS " + std::string(wasUp ? "lost" : "failed") + ": " + reason.error.message,
      nextBackoff(), false);
}

void ProvisioningClient::retryLater(std::string why, std::chrono::microseconds delay,
                                    bool reconnect) {
  logf(LogLevel::Warning, why, "; retrying in ", secondsText(delay));
  lastProblem_ = std::move(why);
  step_ = Step::Waiting;
  requestTimer_->disarm();
  pendingRid_.clear();
  if (reconnect) {
    closeTransport();
  }
  retryTimer_->armAfter(delay);
}

std::chrono::microseconds ProvisioningClient::nextBackoff() {
  using std::chrono::microseconds;
  const auto initial = std::chrono::duration_cast<microseconds>(run_.retryBackoffInitial);
  const auto max = std::chrono::duration_cast<microseconds>(run_.retryBackoffMax);
  auto base = initial;
  for (int i = 0; i < backoffStep_ && base < max; ++i) {
    base *= 2;
  }
  base = std::min(base, max);
  ++backoffStep_;
  // Up to 20 % jitter, so that a fleet that lost DPS at the same moment does not return in step.
  std::uniform_int_distribution<std::int64_t> jitter(0, base.count() / 5);
  return base + microseconds(jitter(random_));
}

void ProvisioningClient::onRequestTimeout() {
  const char* what = step_ == Step::Connecting    ? "no CONNACK"
                     : step_ == Step::Subscribing ? "no SUBACK"
                                                  : "no answer";
  retryLater(
      std::string(what) + " from DPS within " + std::to_string(run_.requestTimeout.count()) + " s",
      nextBackoff(), true);
}

void ProvisioningClient::onOverallTimeout() {
  if (!active()) {
    return;
  }
  std::string message =
      "no assignment from DPS within " + std::to_string(run_.timeout.count()) + " s";
  if (!lastProblem_.empty()) {
    message += " (last problem: " + lastProblem_ + ")";
  }
  fail(makeFailure(FailureKind::Timeout, Errc::Timeout, std::move(message)));
}

void ProvisioningClient::succeed(Assignment assignment) {
  logf(LogLevel::Notice, "DPS assigned registration ", core::quoted(run_.registrationId),
       " to hub ", assignment.assignedHub, " as device ", core::quoted(assignment.deviceId),
       assignment.substatus.empty() ? "" : " (" + assignment.substatus + ")");
  finish(std::move(assignment));
}

void ProvisioningClient::fail(Failure failure) {
  logf(failure.kind == FailureKind::Cancelled ? LogLevel::Info : LogLevel::Warning,
       "provisioning failed: ", failure.error.message);
  finish(tl::unexpected(std::move(failure)));
}

void ProvisioningClient::finish(Outcome outcome) {
  step_ = Step::Idle;
  requestTimer_->disarm();
  retryTimer_->disarm();
  overallTimer_->disarm();
  pendingRid_.clear();
  reconnectWhenClosed_ = false;
  closeTransport();
  auto done = std::move(done_);
  done_ = nullptr;
  if (!done) {
    return;
  }
  scheduler_.post(
      lifetime_.guard([done = std::move(done), outcome = std::move(outcome)] { done(outcome); }));
}

void ProvisioningClient::closeTransport() {
  if (transportOpen_) {
    transport_.disconnect();  // onDisconnected(requested) follows
  }
}

}  // namespace iothubd::provisioning
