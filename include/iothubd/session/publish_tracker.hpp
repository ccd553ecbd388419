// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

#include "iothubd/core/clock.hpp"
#include "iothubd/core/result.hpp"
#include "iothubd/core/scheduler.hpp"
#include "iothubd/mqtt/mqtt_transport.hpp"

namespace iothubd::session {

/// The session's QoS 1 publishes (telemetry, method responses): the in-flight window matched to
/// PUBACKs, the publishes held while the link is being (re)established, and the deadline of each.
///
/// Resend policy: a publish lives and dies with its link. The transport starts every connection
/// afresh (no library resend), so when a link goes, whatever it did not acknowledge fails with
/// ConnectionDropped and its owner decides (the outbox sends it again, an app gets the error);
/// nothing is ever sent twice on one link by us. A publish whose owner keeps it (the outbox) waits
/// for its PUBACK as long as its link lives (UntilLinkEnds): a hub that shapes traffic delays
/// PUBACKs, and giving up on one would only lead to sending it again (issue 14; the Python SDK and
/// libmosquitto wait too and resend on the next link). Held publishes survive link changes, each
/// bounded by its own deadline. Every publish shares one timeout (operation_timeout) counted from
/// when it was sent or held, so arrival order is deadline order and one timer serves them all. Loop
/// thread only.
class PublishTracker {
 public:
  using Completion = std::function<void(core::Result<void>)>;

  struct Limits {
    std::size_t maxHeldMessages = 10000;          ///< max_queued_messages
    std::size_t maxHeldBytes = 16 * 1024 * 1024;  ///< max_queued_bytes: topics and payloads
    std::chrono::seconds timeout{60};             ///< operation_timeout
  };

  PublishTracker(core::Scheduler& scheduler, const core::Clock& clock,
                 mqtt::MqttTransport& transport, Limits limits);
  PublishTracker(const PublishTracker&) = delete;
  PublishTracker& operator=(const PublishTracker&) = delete;

  /// New limits: the bounds apply to later holds, the timeout to every publish (a reload's
  /// operation_timeout covers what is waiting already).
  void setLimits(const Limits& limits) {
    limits_ = limits;
    armTimer();
  }

  /// How long a publish in flight waits for its PUBACK.
  enum class Wait : std::uint8_t {
    Timeout,        ///< operation_timeout, then Timeout (an app waits for the answer)
    UntilLinkEnds,  ///< as long as its link lives (its owner sends it again on the next one)
  };
  /// Publishes now (QoS 1). `done` runs on the PUBACK, with the transport's error at once if it
  /// refuses, with Timeout after the timeout (Wait::Timeout), or with what
  /// linkLost()/failInFlight() give.
  void publish(std::string_view topic, std::string_view payload, Completion done,
               Wait wait = Wait::Timeout);
  /// Holds a publish until flush(). QueueFull over a limit: returned, and `done` is not called.
  [[nodiscard]] core::Result<void> hold(std::string topic, std::string payload, Completion done);
  /// The link is up: publishes what is held, in order, as long as `linkUp()` stays true (a
  /// completion may drop it; the rest then waits for the next link).
  void flush(const std::function<bool()>& linkUp);
  /// A PUBACK. False if nothing waits for it (timed out already, or not ours).
  bool acknowledge(int messageId);
  /// The link went: every publish in flight fails with `error` (the resend policy above).
  void linkLost(const core::Error& error) { failInFlight(error); }
  void failInFlight(const core::Error& error);
  void failHeld(const core::Error& error);

  [[nodiscard]] std::size_t inFlight() const noexcept { return inFlight_.size(); }
  [[nodiscard]] std::size_t held() const noexcept { return held_.size(); }
  [[nodiscard]] std::size_t heldBytes() const noexcept { return heldBytes_; }

  /// Runs whenever the last publish in flight was acknowledged or timed out (a planned reconnect
  /// waits for it).
  void setOnDrained(std::function<void()> fn) { onDrained_ = std::move(fn); }
  /// Why held publishes are still waiting, for their Timeout ("not connected: <last error>").
  void setWhyHeld(std::function<std::string()> fn) { whyHeld_ = std::move(fn); }

 private:
  struct Held {
    std::string topic;
    std::string payload;
    Completion done;
    std::chrono::microseconds since{};  ///< monotonic time when it was held
  };
  struct InFlight {
    Completion done;
    std::chrono::microseconds since{};  ///< monotonic time when it was sent
  };

  [[nodiscard]] std::chrono::microseconds deadline(std::chrono::microseconds since) const;
  void armTimer();
  void onTimer();

  const core::Clock& clock_;
  mqtt::MqttTransport& transport_;
  Limits limits_;
  std::deque<Held> held_;
  std::size_t heldBytes_ = 0;
  std::unordered_map<int, InFlight> inFlight_;
  std::deque<int> order_;  ///< message ids by deadline; acknowledged ones are skipped lazily
  std::unique_ptr<core::Timer> timer_;
  std::function<void()> onDrained_;
  std::function<std::string()> whyHeld_;
};

}  // namespace iothubd::session
