// SPDX-License-Identifier: MIT
// The one device connection to the hub, composed of parts that each have one job: the connection
// state machine (connection_machine.hpp), the retry policy, the publish tracker (PUBACKs,
// held publishes, timeouts) and the twin client ($rid requests, desired patches). The session
// turns transport callbacks and API calls into the machine's events and performs its actions.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "iothubd/core/clock.hpp"
#include "iothubd/core/lifetime.hpp"
#include "iothubd/core/result.hpp"
#include "iothubd/core/scheduler.hpp"
#include "iothubd/core/secret.hpp"
#include "iothubd/mqtt/mqtt_transport.hpp"
#include "iothubd/proto/telemetry.hpp"
#include "iothubd/proto/topics.hpp"
#include "iothubd/session/connection_machine.hpp"
#include "iothubd/session/connection_state.hpp"
#include "iothubd/session/publish_tracker.hpp"
#include "iothubd/session/retry_policy.hpp"
#include "iothubd/session/session_options.hpp"
#include "iothubd/session/twin_client.hpp"

namespace iothubd::session {

/// The one device connection to the hub: connects, publishes telemetry and matches PUBACKs,
/// reconnects after a drop, and reports its state. Loop thread only; it knows MQTT topics and
/// SAS tokens (through proto) but no socket, no D-Bus and no sd-event.
class HubSession final : private mqtt::MqttTransport::Listener,
                         private ConnectionMachine::Actions,
                         private TwinClient::Listener {
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
  /// failed attempts are retried as the RetryPolicy says. Within the policy's delay after a
  /// failure the attempt waits for it.
  void start();
  /// Completes once connected (at once if already), or with the next attempt's error:
  /// Unauthorized, ConnectionFailed, Timeout, Cancelled.
  void connect(Completion done);
  /// Closes the connection and stops reconnecting; waiting operations fail with Cancelled.
  void disconnect(Completion done);

  /// The host's network came back (hostwatch::NetworkWatch; `source` names the network manager
  /// that said so). While the session waits out a retry delay, the delay is over: the schedule
  /// starts afresh and the attempt is made now. Otherwise nothing changes: a link that is up or
  /// being made stays, credentials the hub refused are not retried (the network was not why),
  /// and a disconnected session stays disconnected.
  void networkCameBack(std::string_view source);

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
  [[nodiscard]] bool readyToPublish() const noexcept { return machine_.state() == LinkState::Up; }
  /// Publishes a prepared QoS 1 message now, for a caller that does its own queueing (the
  /// outbox): NotConnected unless readyToPublish(). `done` runs on the PUBACK, or with
  /// ConnectionDropped when the link goes first; there is no timeout (a throttling hub delays
  /// PUBACKs; the message is sent again only on the next link, never twice on one).
  [[nodiscard]] core::Result<void> publishPrepared(const std::string& topic,
                                                   const std::string& payload, Completion done);
  /// Opens the connection if it is not open and auto_connect allows it (an operation needs
  /// it); false if the hub cannot be reached that way (disconnected and auto_connect off).
  bool requestConnection();

  /// Publishes a direct-method answer on the link its request came on; completes on its PUBACK.
  /// ConnectionDropped at once if that link has closed (or the id is unknown or answered).
  void sendMethodResponse(const std::string& requestId, int status, const std::string& payload,
                          Completion done);
  /// Replaces the operator-supplied SAS token and re-authorises (protocol doc 2): NotSupported
  /// unless authentication is sas-token; InvalidArgument if it does not parse, is for another
  /// hub/device/module, or has expired. Re-authorisation failures are reported as background
  /// errors and state changes. If the hub refuses the new token while the one it replaced was
  /// accepted and has not expired, that one stays in use (reconnecting with it at once) and the
  /// refusal is reported as a background error and in lastError().
  [[nodiscard]] core::Result<void> updateSasToken(const std::string& token);

  /// What the host says about the wall clock (hostwatch::ClockWatch); `detail` says who said so.
  /// While a time service runs and has not synchronised the clock, an attempt (not a planned
  /// reconnect) waits for it, at most clock_sync_timeout from the first attempt that waited, and
  /// lastError() says so (issue 14: a token made with a wrong clock is refused, protocol doc 2).
  /// Synchronised (or Unknown: the service went away) lets a waiting attempt go at once.
  void setClockSync(core::ClockSync sync, std::string detail);
  /// The wall clock was set: it jumped by `by` (negative: backwards). A step that matters for a
  /// token (kTokenClockStep or more) makes a new one from the key at once: a link that is up
  /// reconnects without apps seeing it, a wait for the retry timer ends. An operator's token
  /// only gets its renewal reminder re-armed; X.509 has no token.
  void clockStepped(std::chrono::seconds by);
  /// The smallest clock step that re-makes the token: the hub allows 5 minutes of skew, and a
  /// token's renewal is armed on the monotonic clock from its `se` and the wall clock.
  static constexpr std::chrono::seconds kTokenClockStep{60};

  /// The Authorization value for the hub's HTTPS calls (file upload, protocol doc 8): a fresh
  /// token made from the key, or the operator's token; never cached.
  [[nodiscard]] core::Result<core::Secret<>> httpAuthorization() const;

  [[nodiscard]] ConnectionState state() const noexcept { return machine_.visible(); }
  [[nodiscard]] bool connected() const noexcept {
    return machine_.visible() == ConnectionState::Connected;
  }
  /// Where the link is, finer than state() (tests, debugging).
  [[nodiscard]] LinkState linkState() const noexcept { return machine_.state(); }
  [[nodiscard]] const SessionOptions& options() const noexcept { return options_; }
  /// `se` of the token used by the current (or last) connection; 0 before the first.
  [[nodiscard]] std::uint64_t sasTokenExpiry() const noexcept { return tokenExpiry_; }
  /// Why the last attempt failed or the connection dropped; empty message when none.
  [[nodiscard]] const core::Error& lastError() const noexcept { return lastError_; }

  /// A message id for telemetry sent without one (random, RFC 4122 version 4 form).
  [[nodiscard]] std::string newMessageId();

 private:
  // MqttTransport::Listener
  void onConnected() override;
  void onDisconnected(const mqtt::Disconnect& reason) override;
  void onPublishAcked(int messageId) override;
  void onSubscribed(int messageId) override;
  void onMessage(std::string_view topic, std::string_view payload) override;

  // ConnectionMachine::Actions
  void perform(LinkAction action, const ConnectionMachine::Step& step) override;

  // TwinClient::Listener
  void onDesiredProperties(const std::string& json) override;
  void onTwinError(const core::Error& error) override { backgroundError(error); }

  /// A failed attempt or an ended link: Lost (retried) or GaveUp, as the retry policy says.
  void failed(core::Error error);
  void beginAttempt();
  void linkUp();
  void release();
  void linkDown();
  void record(const ConnectionMachine::Step& step);
  void giveUp(const ConnectionMachine::Step& step);
  void announce(const ConnectionMachine::Step& step);
  void finishClose();
  /// Reconnects on purpose (token renewal, new settings, a new token); apps see no state change
  /// unless the new CONNECT fails. From idle, only credentials the hub refused are retried.
  void renew(const char* why);

  /// Before a CONNECT: true when it must wait for the clock (the machine was told Deferred).
  [[nodiscard]] bool deferForClock();
  void publishOrQueue(std::string topic, std::string payload, Completion done);
  [[nodiscard]] bool canReachHub() const;
  /// Twin requests go out now: the link is up and the hub acknowledged their answers' topic.
  [[nodiscard]] bool twinReady() const noexcept { return readyToPublish() && twinSubscribed_; }
  void ensureConnecting();
  void backgroundError(core::Error error);
  void subscribeAll();
  void armRenewal();
  void applyOptions();
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
  void failConnectWaiters(const core::Error& error);
  /// The hub refused a token from updateSasToken(): goes back to the one it replaced, if that
  /// one was accepted and is still valid, and tries again with it (FellBack). False if there is
  /// none or no attempt is under way.
  bool restorePreviousSasToken(const core::Error& refusal);

  core::Scheduler& scheduler_;
  core::Clock& clock_;
  mqtt::MqttTransport& transport_;
  SessionOptions options_;
  std::vector<Observer*> observers_;

  ConnectionMachine machine_{*this};
  RetryPolicy retry_;
  PublishTracker publishes_;
  TwinClient twin_;

  bool wantConnected_ = false;       ///< keep the link up: reconnect after a drop
  bool credentialsRefused_ = false;  ///< the last attempt ended in CONNACK 4/5 (or a proxy's 407)
  bool linkUp_ = false;              ///< the transport's link is established (LinkUp..LinkDown)
  /// The SUBSCRIBE of $iothub/twin/res/# on this link until its SUBACK came.
  std::optional<int> twinSubscription_;
  bool twinSubscribed_ = false;  ///< ... and after: twin requests may go out on this link
  /// Method request ids of the current link not answered yet; cleared when it goes.
  std::unordered_set<std::string> methodRequests_;
  core::Error failure_;                     ///< the failure being recorded (Record, GiveUp)
  std::chrono::microseconds retryDelay_{};  ///< ArmRetry's delay, from the policy
  /// No attempt before this (monotonic): the policy's delay after the last failure.
  std::optional<std::chrono::microseconds> retryNotBefore_;
  std::chrono::microseconds linkUpSince_{};  ///< when the current link came up (monotonic)
  core::Error lastError_;
  const char* renewWhy_ = "";
  ConnectionState announced_ = ConnectionState::Disconnected;
  std::vector<Completion> connectWaiters_;
  std::vector<Completion> disconnectWaiters_;
  std::unique_ptr<core::Timer> connectTimer_;
  std::unique_ptr<core::Timer> retryTimer_;
  std::unique_ptr<core::Timer> renewTimer_;
  std::unique_ptr<core::Timer> drainTimer_;
  std::uint64_t tokenExpiry_ = 0;
  /// sas-token: options_.sasToken connected successfully at least once.
  bool sasTokenAccepted_ = false;
  /// sas-token: the accepted token an updateSasToken() replaced, until the new one is accepted.
  std::optional<core::Secret<>> previousSasToken_;
  /// Why the previous token came back, kept as lastError() past the reconnect it causes.
  std::optional<core::Error> restoredNote_;
  core::ClockSync clockSync_ = core::ClockSync::Unknown;
  std::string clockSyncDetail_;  ///< who said so, for lastError() and the log
  /// When the first attempt began waiting for this unsynchronised spell (monotonic).
  std::optional<std::chrono::microseconds> clockWaitSince_;
  bool clockDeferred_ = false;  ///< the retry timer stands for a wait for the clock
  std::mt19937_64 random_;
  core::Lifetime lifetime_;  ///< last: callbacks of a destroyed session never run
};

}  // namespace iothubd::session
