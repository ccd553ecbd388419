// SPDX-License-Identifier: MIT
#include "method_router.hpp"

#include <algorithm>

#include "inbound_limits.hpp"
#include "iothubd/core/log.hpp"

namespace iothubd::dbusapi {
namespace {

using core::Errc;
using core::fail;

/// The JSON body of the daemon's own answers: {"error":"..."} (dbus-contract-notes).
std::string errorBody(const std::string& text) {
  std::string out = R"({"error":")";
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += ' ';
    } else {
      out.push_back(c);
    }
  }
  return out + "\"}";
}

}  // namespace

MethodRouter::MethodRouter(core::Scheduler& scheduler, std::chrono::seconds responseTimeout,
                           Hooks hooks, Limits limits)
    : scheduler_(scheduler),
      responseTimeout_(responseTimeout),
      hooks_(std::move(hooks)),
      limits_(limits) {}

core::Result<void> MethodRouter::claim(const std::string& peer, const std::string& name) {
  if (!validMethodName(name)) {
    return fail(Errc::InvalidArgument, "invalid method name " + core::quoted(name) +
                                           ": must be 1 to " + std::to_string(kMaxMethodNameBytes) +
                                           " printable ASCII characters without '/'");
  }
  auto it = claims_.find(name);
  if (it != claims_.end()) {
    if (it->second == peer) {
      return {};  // claiming again is harmless
    }
    return fail(Errc::AlreadyClaimed,
                "method " + core::quoted(name) + " is claimed by " + it->second);
  }
  auto held = std::count_if(claims_.begin(), claims_.end(),
                            [&](const auto& entry) { return entry.second == peer; });
  if (static_cast<std::size_t>(held) >= limits_.maxClaimsPerPeer) {
    return fail(Errc::LimitExceeded, "the caller holds " + std::to_string(held) +
                                         " method names; the limit per caller is " +
                                         std::to_string(limits_.maxClaimsPerPeer) +
                                         " (max_method_claims_per_app)");
  }
  claims_.emplace(name, peer);
  return {};
}

core::Result<void> MethodRouter::release(const std::string& peer, const std::string& name) {
  auto it = claims_.find(name);
  if (it == claims_.end() || it->second != peer) {
    return fail(Errc::InvalidArgument,
                "method " + core::quoted(name) + " is not claimed by the caller");
  }
  claims_.erase(it);
  return {};
}

void MethodRouter::peerGone(const std::string& peer) {
  std::erase_if(claims_, [&](const auto& entry) { return entry.second == peer; });
  std::vector<std::string> orphaned;
  for (const auto& [rid, p] : pending_) {
    if (p.peer == peer) {
      orphaned.push_back(rid);
    }
  }
  for (const auto& rid : orphaned) {
    std::string method = pending_[rid].methodName;
    answerForPeer(rid, 503, "the handler of method '" + method + "' left before answering");
  }
}

void MethodRouter::linkGone() {
  if (pending_.empty()) {
    return;
  }
  core::logf(core::LogLevel::Notice, "dropping ", pending_.size(),
             " pending method requests: the connection they came on closed");
  for (const auto& [rid, p] : pending_) {
    if (dropped_.insert(rid).second) {
      answeredOrder_.push_back(rid);
    }
  }
  pending_.clear();  // not inside one of their timers: destroying them here is safe
  while (answeredOrder_.size() > kRememberedAnswers) {
    answered_.erase(answeredOrder_.front());
    dropped_.erase(answeredOrder_.front());
    answeredOrder_.pop_front();
  }
}

void MethodRouter::onRequest(const std::string& requestId, const std::string& methodName,
                             std::string_view payload) {
  if (pending_.contains(requestId)) {
    return;  // a duplicate delivery of a request already being handled
  }
  // Bounded before anything is copied or forwarded: no app can claim such a name, and a payload
  // this large would not fit a signal (inbound_limits.hpp).
  if (!validMethodName(methodName)) {
    core::logf(core::LogLevel::Warning, "direct method ", core::quoted(methodName),
               " has an invalid name, answering 400");
    hooks_.answer(requestId, 400, errorBody("invalid method name"));
    remember(requestId);
    return;
  }
  if (payload.size() > kMaxInboundPayloadBytes) {
    core::logf(core::LogLevel::Warning, "direct method ", core::quoted(methodName), ": payload of ",
               payload.size(), " bytes is over the ", kMaxInboundPayloadBytes,
               " iothubd passes on, answering 413");
    hooks_.answer(
        requestId, 413,
        errorBody("payload of " + std::to_string(payload.size()) + " bytes is too large (at most " +
                  std::to_string(kMaxInboundPayloadBytes) + ")"));
    remember(requestId);
    return;
  }
  auto it = claims_.find(methodName);
  if (it == claims_.end()) {
    it = claims_.find("*");
  }
  if (it == claims_.end()) {
    // Answer at once: the cloud caller must not wait for the hub's timeout (issue 3).
    core::logf(core::LogLevel::Info, "direct method ", core::quoted(methodName),
               " has no handler, answering 501");
    hooks_.answer(requestId, 501, errorBody("no handler claimed method '" + methodName + "'"));
    remember(requestId);
    return;
  }
  if (pending_.size() >= limits_.maxPendingRequests) {
    core::logf(core::LogLevel::Warning, "direct method ", core::quoted(methodName), ": ",
               pending_.size(), " requests are waiting for their apps already, answering 503");
    hooks_.answer(requestId, 503, errorBody("too many method requests pending"));
    remember(requestId);
    return;
  }
  std::string peer = it->second;
  auto timer = scheduler_.createTimer([this, requestId] {
    auto found = pending_.find(requestId);
    if (found == pending_.end()) {
      return;
    }
    std::string method = found->second.methodName;
    answerForPeer(requestId, 504,
                  "the handler of method '" + method + "' did not answer within " +
                      std::to_string(responseTimeout_.count()) + " s");
  });
  timer->armAfter(responseTimeout_);
  pending_.emplace(requestId, Pending{peer, methodName, std::move(timer)});
  hooks_.deliver(peer, requestId, methodName, payload);
}

core::Result<void> MethodRouter::takeResponse(const std::string& peer,
                                              const std::string& requestId) {
  auto it = pending_.find(requestId);
  if (it == pending_.end()) {
    if (dropped_.contains(requestId)) {
      return fail(Errc::ConnectionDropped,
                  "method request " + core::quoted(requestId) +
                      " came on a connection that has closed since; the hub no longer takes its "
                      "answer");
    }
    if (answered_.contains(requestId)) {
      return fail(Errc::Timeout,
                  "method request " + core::quoted(requestId) +
                      " was already answered by the daemon (timeout or handler gone)");
    }
    return fail(Errc::InvalidArgument,
                "no pending method request with id " + core::quoted(requestId));
  }
  if (it->second.peer != peer) {
    return fail(Errc::AccessDenied,
                "method request " + core::quoted(requestId) + " was delivered to another peer");
  }
  // Destroying the timer from outside its own callback is safe.
  pending_.erase(it);
  return {};
}

void MethodRouter::answerForPeer(const std::string& requestId, int status, const std::string& why) {
  core::logf(core::LogLevel::Info, "answering method request ", core::quoted(requestId), " with ",
             status, ": ", why);
  auto it = pending_.find(requestId);
  if (it != pending_.end()) {
    // We may be inside this request's own timer callback: let the loop destroy the timer.
    auto timer = std::make_shared<std::unique_ptr<core::Timer>>(std::move(it->second.timer));
    scheduler_.post([timer] {});
    pending_.erase(it);
  }
  remember(requestId);
  hooks_.answer(requestId, status, errorBody(why));
}

void MethodRouter::remember(const std::string& requestId) {
  if (answered_.insert(requestId).second) {
    answeredOrder_.push_back(requestId);
  }
  while (answeredOrder_.size() > kRememberedAnswers) {
    answered_.erase(answeredOrder_.front());
    dropped_.erase(answeredOrder_.front());
    answeredOrder_.pop_front();
  }
}

}  // namespace iothubd::dbusapi
