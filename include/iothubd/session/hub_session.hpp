// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "iothubd/core/clock.hpp"
#include "iothubd/core/result.hpp"
#include "iothubd/core/scheduler.hpp"
#include "iothubd/core/secret.hpp"
#include "iothubd/mqtt/mqtt_transport.hpp"
#include "iothubd/proto/telemetry.hpp"

namespace iothubd::session {

/// The values of the D-Bus property ConnectionState.
enum class ConnectionState { Disconnected, Connecting, Connected, Reconnecting };
[[nodiscard]] const char* connectionStateName(ConnectionState state) noexcept;

/// How the device proves its identity on CONNECT.
enum class AuthMethod {
  SymmetricKey,  ///< renewable SAS tokens made from the device key
  SasToken,      ///< a token the operator supplied; not renewable by us
};

/// Everything the session needs to know; built by the daemon from the configuration.
struct SessionOptions {
  std::string hubHostname;      ///< user name and SAS `sr` (protocol doc 1.2, 2)
  std::string deviceId;
  std::string moduleId;
  std::string gatewayHostname;  ///< TLS peer if set (doc 1.4); else hubHostname
  int port = 8883;
  AuthMethod auth = AuthMethod::SymmetricKey;
  core::Secret<> sharedAccessKey;
  core::Secret<> sasToken;
  mqtt::TlsSettings tls;
  std::string userAgent = "iothubd";
  std::string productInfo;
  int keepAliveSeconds = 60;
  std::chrono::seconds sasTokenTtl{3600};
  bool autoConnect = true;
  bool connectionRetry = true;
  std::chrono::seconds connectionRetryInterval{10};
  std::chrono::seconds operationTimeout{60};
  /// Telemetry accepted while (re)connecting, waiting to be published; over it → QueueFull.
  std::size_t maxQueuedMessages = 10000;
};

/// The one device connection to the hub: connects, publishes telemetry and matches PUBACKs,
/// reconnects after a drop, and reports its state. Loop thread only; it knows MQTT topics and
/// SAS tokens (through proto) but no socket, no D-Bus and no sd-event.
class HubSession final : private mqtt::MqttTransport::Listener {
 public:
  using Completion = std::function<void(core::Result<void>)>;

  /// Told about every state change; `lastError` is the reason for a change away from Connected
  /// or for a failed attempt (else nullptr).
  class Observer {
   public:
    virtual ~Observer() = default;
    virtual void onStateChanged(ConnectionState state, const core::Error* lastError) = 0;
    /// The operator-supplied SAS token expires soon (sas-token authentication): an app should
    /// call updateSasToken() with a new one.
    virtual void onNewSasTokenRequired() {}
  };

  HubSession(core::Scheduler& scheduler, core::Clock& clock, mqtt::MqttTransport& transport,
             SessionOptions options);
  ~HubSession() override;
  HubSession(const HubSession&) = delete;
  HubSession& operator=(const HubSession&) = delete;

  void setObserver(Observer* observer) { observer_ = observer; }

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

  /// Applies new options (configuration reload). Reconnects, without an outage visible to apps,
  /// only when something the connection depends on changed; returns whether it does.
  bool reconfigure(SessionOptions options);

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

  void startAttempt();
  void attemptFailedBeforeStart(const core::Error& error);
  void attemptFailed(const core::Error& error, bool wasConnected);
  void setState(ConnectionState state, const core::Error* error);
  void failConnectWaiters(const core::Error& error);
  void failQueued(const core::Error& error);
  void failInFlight(const core::Error& error);
  void publishNow(const std::string& topic, const std::string& payload, Completion done);
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

  core::Scheduler& scheduler_;
  core::Clock& clock_;
  mqtt::MqttTransport& transport_;
  SessionOptions options_;
  Observer* observer_ = nullptr;

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
  std::unordered_map<int, InFlight> inFlight_;
  std::deque<int> inFlightOrder_;  ///< message ids by deadline (all share one timeout)
  bool dropped_ = false;  ///< an established connection was lost and not yet regained
  std::unique_ptr<core::Timer> connectTimer_;
  std::unique_ptr<core::Timer> retryTimer_;
  std::unique_ptr<core::Timer> inFlightTimer_;
  std::unique_ptr<core::Timer> renewTimer_;
  std::unique_ptr<core::Timer> drainTimer_;
  std::uint64_t tokenExpiry_ = 0;
  std::mt19937_64 random_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace iothubd::session
