// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "iothubd/core/result.hpp"
#include "iothubd/core/scheduler.hpp"

namespace iothubd::dbusapi {

/// Bounds on what peers can grow in a MethodRouter (architecture doc 6.4; [limits] in
/// iothubd.conf).
struct MethodRouterLimits {
  std::size_t maxClaimsPerPeer = 64;
  std::size_t maxPendingRequests = 256;  ///< all peers together
};

/// Routes direct-method requests to the bus peers that claimed them and makes sure every request
/// gets exactly one answer (dbus-contract-notes "Direct methods"): the claimer's, or the
/// daemon's own 501 (nobody claimed it), 503 (the claimer left the bus) or 504 (no answer within
/// method_response_timeout). Peers are D-Bus unique names. Loop thread only.
class MethodRouter {
 public:
  struct Hooks {
    /// Hand a request to its claimer (a unicast MethodRequestReceived signal).
    std::function<void(const std::string& peer, const std::string& requestId,
                       const std::string& methodName, std::string_view payload)>
        deliver;
    /// Answer on the daemon's behalf (publish the method response to the hub).
    std::function<void(const std::string& requestId, int status, const std::string& payload)>
        answer;
  };

  using Limits = MethodRouterLimits;
  static constexpr std::size_t kRememberedAnswers = 1024;

  MethodRouter(core::Scheduler& scheduler, std::chrono::seconds responseTimeout, Hooks hooks,
               Limits limits = {});

  /// InvalidArgument for "" or a name with '/', AlreadyClaimed if another peer holds it,
  /// LimitExceeded if the peer holds maxClaimsPerPeer names already.
  [[nodiscard]] core::Result<void> claim(const std::string& peer, const std::string& name);
  /// InvalidArgument if the peer does not hold the name.
  [[nodiscard]] core::Result<void> release(const std::string& peer, const std::string& name);
  /// The peer left the bus: its claims go, and its pending requests are answered 503 at once.
  void peerGone(const std::string& peer);
  /// The hub connection the pending requests came on closed: they are dropped, not answered
  /// (the hub takes no answer on another connection, issue 14); their claimers' late
  /// SendMethodResponse fails with ConnectionDropped.
  void linkGone();

  /// A request from the hub. Beyond maxPendingRequests it is answered 503 at once.
  void onRequest(const std::string& requestId, const std::string& methodName,
                 std::string_view payload);

  /// Checks that `peer` may answer `requestId` now and, if so, forgets the request (the caller
  /// then publishes the answer): InvalidArgument for an id never issued, AccessDenied for a
  /// request delivered to another peer, Timeout for one the daemon already answered.
  [[nodiscard]] core::Result<void> takeResponse(const std::string& peer,
                                                const std::string& requestId);

  void setResponseTimeout(std::chrono::seconds timeout) { responseTimeout_ = timeout; }
  /// Later claims and requests are bounded by `limits`; what is held already stays.
  void setLimits(Limits limits) { limits_ = limits; }
  [[nodiscard]] std::size_t pendingCount() const { return pending_.size(); }
  /// Every claimed name (or "*") with the peer holding it (the MethodHandlers property).
  [[nodiscard]] const std::map<std::string, std::string>& claims() const { return claims_; }

 private:
  struct Pending {
    std::string peer;
    std::string methodName;
    std::unique_ptr<core::Timer> timer;
  };

  void answerForPeer(const std::string& requestId, int status, const std::string& why);
  void remember(const std::string& requestId);

  core::Scheduler& scheduler_;
  std::chrono::seconds responseTimeout_;
  Hooks hooks_;
  Limits limits_;
  std::map<std::string, std::string> claims_;  ///< method name (or "*") → peer
  std::unordered_map<std::string, Pending> pending_;
  std::deque<std::string> answeredOrder_;
  std::unordered_set<std::string> answered_;  ///< answered by the daemon, for late responses
  std::unordered_set<std::string> dropped_;   ///< dropped with their link, for late responses
};

}  // namespace iothubd::dbusapi
