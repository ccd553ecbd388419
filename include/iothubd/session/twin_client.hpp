// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "iothubd/core/clock.hpp"
#include "iothubd/core/lifetime.hpp"
#include "iothubd/core/result.hpp"
#include "iothubd/core/scheduler.hpp"
#include "iothubd/mqtt/mqtt_transport.hpp"
#include "iothubd/proto/topics.hpp"

namespace iothubd::session {

/// The device twin over MQTT (protocol doc 7): GET and reported-properties PATCH requests with
/// their $rid, the answers matched to them, their timeouts, and desired-properties patches with
/// the version bookkeeping that delivers each change once (ensure_desired_properties). Requests
/// are QoS 0 like the C and Node SDKs': the answer is the acknowledgement, and a request whose
/// answer a lost link swallowed is sent again, with the same $rid, on the next one. Loop thread
/// only.
class TwinClient {
 public:
  struct Options {
    std::size_t maxRequests = 64;            ///< waiting for an answer; over it QueueFull
    std::chrono::seconds timeout{60};        ///< operation_timeout
    std::chrono::seconds retryInterval{10};  ///< after a failed desired fetch (pitfall 15)
    bool ensureDesired = true;               ///< ensure_desired_properties
  };

  /// What the twin reports on its own.
  class Listener {
   public:
    virtual ~Listener() = default;
    /// A desired patch, or the whole desired section after a (re)connect when its $version moved.
    virtual void onDesiredProperties(const std::string& json) = 0;
    /// A failure no request waited for (an unreadable answer or patch, a failed desired fetch).
    virtual void onTwinError(const core::Error& error) = 0;
  };

  TwinClient(core::Scheduler& scheduler, const core::Clock& clock, mqtt::MqttTransport& transport,
             Listener& listener, Options options);
  TwinClient(const TwinClient&) = delete;
  TwinClient& operator=(const TwinClient&) = delete;

  /// New options apply to later requests.
  void setOptions(const Options& options) { options_ = options; }

  /// Twin GET: the JSON as the hub returns it. Sent at once when `sendNow`, else on the next
  /// linkReady(). Errors: Service (status >= 300, sysErrno = status), Timeout, QueueFull, or what
  /// failAll() gives.
  void get(bool sendNow, std::function<void(core::Result<std::string>)> done);
  /// Reported-properties merge patch; completes with the new reported $version.
  void patchReported(const std::string& json, bool sendNow,
                     std::function<void(core::Result<std::uint64_t>)> done);

  /// The link is up and subscribed: requests not sent on it go out, and the desired section is
  /// fetched if ensure_desired_properties is on.
  void linkReady();
  /// The link went: answers to what was sent on it will not come; those requests go again.
  void linkLost();
  /// `$iothub/twin/res/...` and `$iothub/twin/PATCH/properties/desired/...`.
  void onResponse(std::string_view topic, std::string_view payload);
  void onDesiredPatch(std::string_view topic, std::string_view payload);
  /// Every waiting request fails with `error` (disconnect, giving up).
  void failAll(const core::Error& error);

  [[nodiscard]] std::size_t pending() const noexcept { return requests_.size(); }

 private:
  enum class Kind { Get, PatchReported, EnsureDesired };
  using Done = std::function<void(core::Result<proto::TwinResponse>, std::string body)>;
  struct Request {
    Kind kind = Kind::Get;
    std::string payload;
    Done done;
    std::chrono::microseconds deadline{};
    bool sent = false;
  };

  void request(Kind kind, std::string payload, bool sendNow, Done done);
  void send(const std::string& rid, Request& request);
  void ensureDesired();
  void onDesiredFetched(const core::Result<proto::TwinResponse>& response, const std::string& body);
  void armTimer();
  void onTimer();

  const core::Clock& clock_;
  mqtt::MqttTransport& transport_;
  Listener& listener_;
  Options options_;
  std::map<std::string, Request> requests_;  ///< by $rid
  std::uint64_t nextRid_ = 1;
  bool linkReady_ = false;
  bool ensureInFlight_ = false;
  std::optional<std::uint64_t> lastDesiredVersion_;
  std::unique_ptr<core::Timer> timer_;
  std::unique_ptr<core::Timer> ensureRetryTimer_;
  core::Lifetime lifetime_;  ///< last: the desired fetch's answer after destruction is dropped
};

}  // namespace iothubd::session
