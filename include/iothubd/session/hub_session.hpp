// SPDX-License-Identifier: MIT
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "iothubd/core/clock.hpp"
#include "iothubd/core/result.hpp"
#include "iothubd/core/scheduler.hpp"
#include "iothubd/core/secret.hpp"
#include "iothubd/mqtt/mqtt_transport.hpp"
#include "iothubd/proto/telemetry.hpp"
#include "iothubd/proto/topics.hpp"

namespace iothubd::session {

/// The values of the D-Bus property ConnectionState.
enum class ConnectionState { Disconnected, Connecting, Connected, Reconnecting };
[[nodiscard]] const char* connectionStateName(ConnectionState state) noexcept;

/// How the device proves its identity on CONNECT.
enum class AuthMethod {
  SymmetricKey,  ///< renewable SAS tokens made from the device key
  SasToken,      ///< a token the operator supplied; not renewable by us
  X509,          ///< TLS client certificate; CONNECT has a user name but no password (doc 1.2)
};

/// Everything the session needs to know; built by the daemon from the configuration.
struct SessionOptions {
  std::string hubHostname;  ///< user name and SAS `sr` (protocol doc 1.2, 2)
  std::string deviceId;
  std::string moduleId;
  std::string gatewayHostname;  ///< TLS peer if set (doc 1.4); else hubHostname
  int port = 8883;
  AuthMethod auth = AuthMethod::SymmetricKey;
  core::Secret<> sharedAccessKey;
  core::Secret<> sasToken;
  mqtt::TlsSettings tls;
  bool websockets = false;    ///< MQTT over WebSockets (protocol doc 1.1)
  core::ProxySettings proxy;  ///< protocol doc 1.6
  std::string userAgent = "iothubd";
  std::string productInfo;
  int keepAliveSeconds = 60;
  std::chrono::seconds sasTokenTtl{3600};
  bool autoConnect = true;
  bool connectionRetry = true;
  std::chrono::seconds connectionRetryInterval{10};
  std::chrono::seconds operationTimeout{60};
  /// Telemetry accepted while (re)connecting, waiting to be published; over either → QueueFull.
  std::size_t maxQueuedMessages = 10000;
  std::size_t maxQueuedBytes = 16 * 1024 * 1024;  ///< topics and payloads of those messages
  /// After every (re)connect fetch the twin and report the desired section if it moved
  /// (seed: ensure_desired_properties).
  bool ensureDesiredProperties = true;
  /// Twin requests waiting for an answer; over it → QueueFull.
  std::size_t maxTwinRequests = 64;
};

/// The one device connection to the hub: connects, publishes telemetry and matches PUBACKs,
/// reconnects after a drop, and reports its state. Loop thread only; it knows MQTT topics and
/// SAS tokens (through proto) but no socket, no D-Bus and no sd-event.
class HubSession final : private mqtt::MqttTransport::Listener {
 public:
  using Completion = std::function<void(core::Result<void>)>;

  /// Told about every state change; `lastError` is the reason for a change away from Connected
  /// or for a failed attempt (else nullptr). A failed attempt is told even when the state stays
  /// the same (a retry that failed again, for another reason perhaps).
  class Observer {
   public:
    virtual ~Observer() = default;
    virtual void onStateChanged(ConnectionState /*state*/, const core::Error* /*lastError*/) {}
    /// The operator-supplied SAS token expires soon (sas-token authentication): an app should
    /// call updateSasToken() with a new one.
    virtual void onNewSasTokenRequired() {}
    /// A cloud-to-device message (protocol doc 5); properties keyed by their bus names.
    virtual void onC2dMessage(std::string_view /*body*/,
                              const std::map<std::string, std::string>& /*properties*/,
                              const std::map<std::string, std::string>& /*systemProperties*/) {}
    /// A direct method request (protocol doc 6); answer with sendMethodResponse().
    virtual void onMethodRequest(const std::string& /*requestId*/,
                                 const std::string& /*methodName*/, std::string_view /*payload*/) {}
    /// A desired-properties patch, or the whole desired section after a (re)connect when its
    /// $version moved (ensure_desired_properties).
    virtual void onDesiredPropertiesPatch(const std::string& /*json*/) {}
    /// A failure no operation was waiting for (seed: on_background_exception).
    virtual void onBackgroundError(const core::Error& /*error*/) {}
    /// The token of the connection changed (renewal, UpdateSasToken).
    virtual void onSasTokenExpiryChanged(std::uint64_t /*expiry*/) {}
    /// The MQTT link came up (also after a planned reconnect apps do not see): publishing is
    /// possible again.
    virtual void onLinkUp() {}
    /// The MQTT link went down; publishes in flight on it were failed with ConnectionDropped.
    virtual void onLinkDown() {}
  };

  using TwinCompletion = std::function<void(core::Result<std::string>)>;
  using VersionCompletion = std::function<void(core::Result<std::uint64_t>)>;

  HubSession(core::Scheduler& scheduler, core::Clock& clock, mqtt::MqttTransport& transport,
             SessionOptions options);
  ~HubSession() override;
  HubSession(const HubSession&) = delete;
  HubSession& operator=(const HubSession&) = delete;

  /// Observers are told of every event, in the order they were added. Not owned.
  void addObserver(Observer* observer) { observers_.push_back(observer); }
  void removeObserver(Observer* observer) { std::erase(observers_, observer); }
  /// Replaces all observers with `observer` (none if null).
  void setObserver(Observer* observer) {
    observers_.clear();
    if (observer != nullptr) {
      observers_.push_back(observer);
    }
  }

  /// Opens the connection and keeps it up from now on (the daemon calls this at start-up):
  /// failed attempts are retried every connection_retry_interval unless the hub refused the
  /// credentials.
  void start();
  /// Completes once connected (at once if already), or with the next attempt's error:
  /// Unauthorized, ConnectionFailed, Timeout, Cancelled.
  void connect(Completion done);
  /// Closes the connection and stops reconnecting; waiting operations fail with Cancelled.
  void disconnect(Completion done);

  /// Publishes one telemetry message (QoS 1) and completes on its PUBACK. Connects first when
  /// disconnected and auto_connect is on, else fails with NotConnected. MessageTooLarge before
  /// anything is sent; Timeout after operation_timeout.
  void sendTelemetry(const proto::OutgoingMessage& message, Completion done);
  /// The same for a message whose topic the caller built from a proto::CheckedMessage (checked
  /// and encoded where it entered; nothing is checked again): published at once when the link is
  /// up, else held while (re)connecting within max_queued_messages/max_queued_bytes (QueueFull
  /// beyond), NotConnected when disconnected and auto_connect is off. Completes on the PUBACK;
  /// ConnectionDropped if the link goes first; Timeout after operation_timeout.
  void publishTelemetry(std::string_view topic, std::string_view payload, Completion done);

  /// Applies new options (configuration reload). Reconnects, without an outage visible to apps,
  /// only when something the connection depends on changed; returns whether it does.
  bool reconfigure(SessionOptions options);

  /// Twin GET (protocol doc 7): the JSON as the hub returns it. Service (status >= 300),
  /// Timeout, NotConnected, QueueFull (too many twin requests waiting).
  void getTwin(TwinCompletion done);
  /// Reported-properties merge patch (must be a JSON object, checked by the caller); completes
  /// with the new reported $version.
  void patchReportedProperties(const std::string& patchJson, VersionCompletion done);
  /// True while a publish goes out at once (link up, no planned reconnect draining).
  [[nodiscard]] bool readyToPublish() const noexcept {
    return linkUp_ && !plannedPending_ && !plannedActive_;
  }
  /// Publishes a prepared QoS 1 message now, for a caller that does its own queueing (the
  /// outbox): NotConnected unless readyToPublish(). `done` runs on the PUBACK, or with
  /// ConnectionDropped when the link goes first, or Timeout after operation_timeout.
  [[nodiscard]] core::Result<void> publishPrepared(const std::string& topic,
                                                   const std::string& payload, Completion done);
  /// Opens the connection if it is not open and auto_connect allows it (an operation needs
  /// it); false if the hub cannot be reached that way (disconnected and auto_connect off).
  bool requestConnection();

  /// Publishes a direct-method answer; completes on its PUBACK.
  void sendMethodResponse(const std::string& requestId, int status, const std::string& payload,
                          Completion done);
  /// Replaces the operator-supplied SAS token and re-authorises (protocol doc 2): NotSupported
  /// unless authentication is sas-token; InvalidArgument if it does not parse, is for another
  /// hub/device/module, or has expired. Re-authorisation failures are reported as background
  /// errors and state changes. If the hub refuses the new token while the one it replaced was
  /// accepted and has not expired, that one stays in use (reconnecting with it at once) and the
  /// refusal is reported as a background error and in lastError().
  [[nodiscard]] core::Result<void> updateSasToken(const std::string& token);

  /// The Authorization value for the hub's HTTPS calls (file upload, protocol doc 8): a fresh
  /// token made from the key, or the operator's token; never cached.
  [[nodiscard]] core::Result<core::Secret<>> httpAuthorization() const;

  [[nodiscard]] ConnectionState state() const noexcept { return state_; }
  [[nodiscard]] bool connected() const noexcept { return state_ == ConnectionState::Connected; }
  [[nodiscard]] const SessionOptions& options() const noexcept { return options_; }
  /// `se` of the token used by the current (or last) connection; 0 before the first.
  [[nodiscard]] std::uint64_t sasTokenExpiry() const noexcept { return tokenExpiry_; }
  /// Why the last attempt failed or the connection dropped; empty message when none.
  [[nodiscard]] const core::Error& lastError() const noexcept { return lastError_; }

  /// A message id for telemetry sent without one (random, RFC 4122 version 4 form).
  [[nodiscard]] std::string newMessageId();

 private:
  struct Queued {
    std::string topic;
    std::string payload;
    Completion done;
    std::chrono::microseconds deadline{};
  };
  struct InFlight {
    Completion done;
    std::chrono::microseconds deadline{};
  };

  // MqttTransport::Listener
  void onConnected() override;
  void onDisconnected(const mqtt::Disconnect& reason) override;
  void onPublishAcked(int messageId) override;
  void onSubscribed(int messageId) override;
  void onMessage(std::string_view topic, std::string_view payload) override;

  struct TwinRequest {
    enum class Kind { Get, PatchReported, EnsureDesired } kind = Kind::Get;
    std::string payload;
    std::function<void(core::Result<proto::TwinResponse>, std::string body)> done;
    std::chrono::microseconds deadline{};
    bool sent = false;
  };

  void publishOrQueue(std::string topic, std::string payload, Completion done);
  [[nodiscard]] bool canReachHub() const;
  void ensureConnecting();
  void twinRequest(TwinRequest::Kind kind, std::string payload,
                   std::function<void(core::Result<proto::TwinResponse>, std::string)> done);
  void sendTwinRequest(const std::string& rid, TwinRequest& request);
  void armTwinTimer();
  void onTwinTimer();
  void onTwinResponse(std::string_view topic, std::string_view payload);
  void onDesiredPatch(std::string_view topic, std::string_view payload);
  void ensureDesiredProperties();
  void backgroundError(core::Error error);
  void subscribeAll();
  /// Calls `fn` for each observer; an observer may remove itself meanwhile.
  template <class Fn>
  void notify(Fn&& fn) {
    auto observers = observers_;
    for (Observer* o : observers) {
      if (std::find(observers_.begin(), observers_.end(), o) != observers_.end()) {
        fn(*o);
      }
    }
  }
  void startAttempt();
  void attemptFailedBeforeStart(const core::Error& error);
  void attemptFailed(const core::Error& error, bool wasConnected);
  void setState(ConnectionState state, const core::Error* error);
  void failConnectWaiters(const core::Error& error);
  void failQueued(const core::Error& error);
  void failInFlight(const core::Error& error);
  void publishNow(std::string_view topic, std::string_view payload, Completion done);
  void armInFlightTimer();
  void onInFlightTimer();
  [[nodiscard]] std::chrono::microseconds deadlineFromNow() const;
  void scheduleRetry(bool immediate);
  /// Reconnects on purpose (token renewal, new settings): waits (bounded) for in-flight PUBACKs
  /// so nothing is sent twice, then DISCONNECT + CONNECT with a fresh password. Apps see no state
  /// change unless the new CONNECT fails.
  void reconnectPlanned(const char* why);
  void finishPlannedDrain();
  void armRenewal();
  [[nodiscard]] core::Result<core::Secret<>> currentPassword();
  /// The hub refused a token from updateSasToken(): goes back to the one it replaced, if that
  /// one was accepted and is still valid, and reconnects with it. False if there is none.
  bool restorePreviousSasToken(const core::Error& refusal);

  core::Scheduler& scheduler_;
  core::Clock& clock_;
  mqtt::MqttTransport& transport_;
  SessionOptions options_;
  std::vector<Observer*> observers_;

  ConnectionState state_ = ConnectionState::Disconnected;
  bool wantConnected_ = false;  ///< reconnect after a drop (cleared by disconnect())
  bool attemptActive_ = false;
  bool credentialsRefused_ = false;  ///< the last attempt ended in CONNACK 4/5
  bool linkUp_ = false;          ///< the transport is connected (may differ from state_ briefly)
  bool plannedPending_ = false;  ///< a planned reconnect waits for in-flight PUBACKs
  bool plannedActive_ = false;   ///< our own DISCONNECT of a planned reconnect is under way
  const char* plannedWhy_ = "";
  bool connectTimedOut_ = false;
  core::Error lastError_;
  std::vector<Completion> connectWaiters_;
  std::vector<Completion> disconnectWaiters_;
  std::deque<Queued> queued_;
  std::size_t queuedBytes_ = 0;  ///< topics and payloads in queued_
  std::unordered_map<int, InFlight> inFlight_;
  std::deque<int> inFlightOrder_;  ///< message ids by deadline (all share one timeout)
  bool dropped_ = false;           ///< an established connection was lost and not yet regained
  std::unique_ptr<core::Timer> connectTimer_;
  std::unique_ptr<core::Timer> retryTimer_;
  std::unique_ptr<core::Timer> inFlightTimer_;
  std::unique_ptr<core::Timer> renewTimer_;
  std::unique_ptr<core::Timer> twinTimer_;
  std::unique_ptr<core::Timer> ensureRetryTimer_;
  std::map<std::string, TwinRequest> twinRequests_;  ///< by $rid
  std::uint64_t nextRid_ = 1;
  std::optional<std::uint64_t> lastDesiredVersion_;
  bool ensureInFlight_ = false;
  std::unique_ptr<core::Timer> drainTimer_;
  std::uint64_t tokenExpiry_ = 0;
  /// sas-token: options_.sasToken connected successfully at least once.
  bool sasTokenAccepted_ = false;
  /// sas-token: the accepted token an updateSasToken() replaced, until the new one is accepted.
  std::optional<core::Secret<>> previousSasToken_;
  /// Why the previous token came back, kept as lastError() past the reconnect it causes.
  std::optional<core::Error> restoredNote_;
  std::mt19937_64 random_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace iothubd::session
