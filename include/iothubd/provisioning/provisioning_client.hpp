// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>

#include <tl/expected.hpp>

#include "iothubd/core/clock.hpp"
#include "iothubd/core/lifetime.hpp"
#include "iothubd/core/proxy.hpp"
#include "iothubd/core/result.hpp"
#include "iothubd/core/scheduler.hpp"
#include "iothubd/core/secret.hpp"
#include "iothubd/core/tls_settings.hpp"
#include "iothubd/mqtt/mqtt_transport.hpp"
#include "iothubd/proto/provisioning.hpp"

namespace iothubd::provisioning {

/// How the device proves its identity to DPS.
enum class Attestation {
  SymmetricKey,  ///< SAS token signed with the device key (individual, or derived from a group key)
  X509,          ///< TLS client certificate; its subject CN is the registration id
};
[[nodiscard]] const char* attestationName(Attestation attestation) noexcept;

/// One DPS registration's settings; built by the daemon from [provisioning] and the credentials.
struct ProvisioningOptions {
  std::string globalEndpoint = std::string(proto::kDpsGlobalEndpoint);
  int port = 8883;  ///< 443 for WebSockets
  std::string idScope;
  std::string registrationId;
  Attestation attestation = Attestation::SymmetricKey;
  /// SymmetricKey: the device's key, Base64 (for a group enrollment already derived with
  /// proto::deriveGroupDeviceKey). The hub connection uses the same key after the assignment.
  core::Secret<> deviceKey;
  /// Trust for the DPS server certificate, and for X509 the client certificate and key.
  core::TlsSettings tls;
  bool websockets = false;    ///< MQTT over WebSockets, path /$iothub/websocket ([c] ws client)
  core::ProxySettings proxy;  ///< the same proxy the hub connection uses
  std::string userAgent = "iothubd";  ///< sent as ClientVersion in the user name
  std::string payloadJson;  ///< custom payload (a JSON object) for custom allocation; may be empty
  std::string modelId;      ///< IoT Plug and Play model id sent in the payload; may be empty
  int keepAliveSeconds = 60;
  std::chrono::seconds sasTokenTtl{3600};
  /// Longest wait for the CONNACK, the SUBACK and each answer ([py] DEFAULT_TIMEOUT_INTERVAL and
  /// [node] defaultTimeoutInterval, 30 s); the request is then retried on a new connection.
  std::chrono::seconds requestTimeout{30};
  /// The whole registration, retries included; then it fails with FailureKind::Timeout.
  std::chrono::seconds timeout{300};
  /// Backoff after a connection failure or a 5xx without retry-after: doubles from the first
  /// value up to the second, plus up to 20 % jitter.
  std::chrono::seconds retryBackoffInitial{1};
  std::chrono::seconds retryBackoffMax{60};

  bool operator==(const ProvisioningOptions&) const = default;
};

/// DPS's answer: where the device lives now.
struct Assignment {
  std::string assignedHub;  ///< IoT Hub host name (validated)
  std::string deviceId;     ///< device id on that hub (validated)
  std::string substatus;    ///< initialAssignment, deviceDataMigrated, deviceDataReset, ...
  std::string registrationId;
  std::string createdDateTimeUtc;
  std::string lastUpdatedDateTimeUtc;
  std::string payload;  ///< what a custom allocation returned (compact JSON), or empty
};

/// Why a registration ended without an assignment, in terms of what to do about it.
enum class FailureKind {
  BadCredentials,       ///< 401, or CONNACK 4/5: key, certificate or ID scope refused
  UnknownRegistration,  ///< 404: no enrollment for this registration id (or the operation)
  BadRequest,           ///< 400 or another 3xx/4xx: DPS refuses the request as sent
  AssignmentFailed,     ///< status "failed": allocation failed (errorCode/errorMessage say why)
  Disabled,             ///< status "disabled": the enrollment or registration is disabled
  Timeout,              ///< no assignment within `timeout`; the message names the last obstacle
                        ///< (unreachable, throttled 429, 5xx, unanswered requests)
  Protocol,             ///< DPS sent an answer we cannot read
  Cancelled,            ///< cancel() or destruction
  InvalidOptions,       ///< the options cannot make a request (e.g. a key that is not Base64)
};
[[nodiscard]] const char* failureKindName(FailureKind kind) noexcept;

struct Failure {
  FailureKind kind = FailureKind::Timeout;
  /// For LastError and logs: code Unauthorized, NotFound, Service, Timeout, Protocol, Cancelled
  /// or InvalidArgument; sysErrno is the DPS status when DPS answered one. Never a secret.
  core::Error error;
  int status = 0;                  ///< the DPS status of the deciding answer, 0 if none
  proto::DpsServiceError details;  ///< errorCode, trackingId, ... of that answer
  /// Whether trying again later, with the same settings, may succeed (Timeout, Protocol):
  /// the others need an operator (new key, enrollment) first.
  [[nodiscard]] bool transient() const noexcept {
    return kind == FailureKind::Timeout || kind == FailureKind::Protocol;
  }
};

using Outcome = tl::expected<Assignment, Failure>;

/// Registers the device with DPS over MQTT (protocol in proto/provisioning.hpp): connects to the
/// global endpoint, subscribes, sends the register request, polls the operation honouring
/// retry-after, and completes with the assignment or a classified failure. 429 and 5xx answers,
/// lost connections and unanswered requests are retried (bounded waits) until `timeout`; 400,
/// 401, 404, a failed or disabled registration end it at once. The connection is closed when the
/// registration ends. Loop thread only; no socket, sd-event or D-Bus of its own: the transport,
/// timers and clock are handed in, as for the hub session.
/// Logging: progress and retries at info/warning, the outcome once (notice for an assignment,
/// warning for a failure); callers need not log it again.
class ProvisioningClient final : private mqtt::MqttTransport::Listener {
 public:
  using Completion = std::function<void(const Outcome&)>;

  /// `transport` is used only by this client (a connection of its own, not the hub's).
  ProvisioningClient(core::Scheduler& scheduler, core::Clock& clock, mqtt::MqttTransport& transport,
                     ProvisioningOptions options);
  /// Cancels a registration under way without calling its completion.
  ~ProvisioningClient() override;
  ProvisioningClient(const ProvisioningClient&) = delete;
  ProvisioningClient& operator=(const ProvisioningClient&) = delete;

  /// Starts one registration; `done` runs once, on the loop, never from inside this call (so it
  /// may destroy this client). While one is under way another is refused (`done` gets
  /// InvalidOptions) and the running one goes on.
  void registerDevice(Completion done);
  /// Ends the registration under way with FailureKind::Cancelled and closes the connection.
  void cancel();
  [[nodiscard]] bool active() const noexcept { return step_ != Step::Idle; }
  /// Replaces the options for the next registration (not the one under way).
  void setOptions(ProvisioningOptions options) { options_ = std::move(options); }
  [[nodiscard]] const ProvisioningOptions& options() const noexcept { return options_; }

 private:
  enum class Step {
    Idle,
    Connecting,   ///< CONNECT sent, waiting for CONNACK
    Subscribing,  ///< SUBSCRIBE sent, waiting for SUBACK
    Registering,  ///< register request sent, waiting for its answer
    Waiting,      ///< waiting (retry-after, backoff) before the next request or connection
    Polling,      ///< operation-status request sent, waiting for its answer
  };

  // MqttTransport::Listener
  void onConnected() override;
  void onDisconnected(const mqtt::Disconnect& reason) override;
  void onPublishAcked(int messageId) override;
  void onSubscribed(int messageId) override;
  void onMessage(std::string_view topic, std::string_view payload) override;

  void connect();
  void sendRequest();
  void onAnswer(const proto::DpsResponseTopic& topic, std::string_view payload);
  void onOperation(const proto::DpsOperation& operation, std::optional<std::uint64_t> retryAfter);
  /// A transient problem: retry after `delay` (a fresh connection if `reconnect`).
  void retryLater(std::string why, std::chrono::microseconds delay, bool reconnect);
  [[nodiscard]] std::chrono::microseconds nextBackoff();
  void onRequestTimeout();
  void onOverallTimeout();
  void succeed(Assignment assignment);
  void fail(Failure failure);
  void finish(Outcome outcome);
  void closeTransport();

  core::Scheduler& scheduler_;
  core::Clock& clock_;
  mqtt::MqttTransport& transport_;
  ProvisioningOptions options_;  ///< for the next registration
  ProvisioningOptions run_;      ///< of the registration under way
  std::string registerBody_;     ///< its register request body

  Step step_ = Step::Idle;
  Completion done_;
  bool transportOpen_ = false;  ///< connect() called and onDisconnected not yet seen
  bool linkUp_ = false;         ///< CONNACK seen on the open connection
  bool subscribed_ = false;     ///< SUBACK seen on it
  bool reconnectWhenClosed_ = false;
  int subscribeMid_ = -1;
  std::string pendingRid_;   ///< $rid of the request waiting for its answer
  std::string operationId_;  ///< from the first 202; polls use it
  std::uint64_t nextRid_ = 1;
  std::string lastProblem_;  ///< the latest transient problem, for the Timeout message
  int backoffStep_ = 0;
  std::unique_ptr<core::Timer> requestTimer_;
  std::unique_ptr<core::Timer> retryTimer_;
  std::unique_ptr<core::Timer> overallTimer_;
  std::mt19937_64 random_;
  core::Lifetime lifetime_;  ///< last: callbacks of a destroyed client never run
};

}  // namespace iothubd::provisioning
