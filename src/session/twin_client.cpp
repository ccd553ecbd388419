// SPDX-License-Identifier: MIT
#include "iothubd/session/twin_client.hpp"

#include <algorithm>
#include <vector>

#include "iothubd/proto/twin.hpp"

namespace iothubd::session {

using core::Errc;
using core::fail;

TwinClient::TwinClient(core::Scheduler& scheduler, const core::Clock& clock,
                       mqtt::MqttTransport& transport, Listener& listener, Options options)
    : clock_(clock), transport_(transport), listener_(listener), options_(options) {
  timer_ = scheduler.createTimer([this] { onTimer(); });
  ensureRetryTimer_ = scheduler.createTimer([this] { ensureDesired(); });
}

void TwinClient::get(bool sendNow, std::function<void(core::Result<std::string>)> done) {
  request(Kind::Get, " ", sendNow,
          [done = std::move(done)](core::Result<proto::TwinResponse> r, std::string body) {
            if (!r) {
              done(fail(r.error()));
            } else {
              done(std::move(body));
            }
          });
}

void TwinClient::patchReported(const std::string& json, bool sendNow,
                               std::function<void(core::Result<std::uint64_t>)> done) {
  request(Kind::PatchReported, json, sendNow,
          [done = std::move(done)](core::Result<proto::TwinResponse> r, const std::string&) {
            if (!r) {
              done(fail(r.error()));
            } else if (!r->version) {
              done(fail(Errc::Protocol, "the hub acknowledged the patch without a $version"));
            } else {
              done(*r->version);
            }
          });
}

void TwinClient::request(Kind kind, std::string payload, bool sendNow, Done done) {
  if (requests_.size() >= options_.maxRequests) {
    done(fail(Errc::QueueFull,
              "too many twin requests waiting (" + std::to_string(options_.maxRequests) + ")"),
         {});
    return;
  }
  std::string rid = std::to_string(nextRid_++);
  auto& r = requests_[rid];
  r = Request{
      kind, std::move(payload), std::move(done),
      clock_.monotonic() + std::chrono::duration_cast<std::chrono::microseconds>(options_.timeout),
      false};
  if (sendNow) {
    send(rid, r);
  }
  armTimer();
}

void TwinClient::send(const std::string& rid, Request& request) {
  // Protocol doc 7: QoS 0; a lost answer is handled by sending again after a reconnect.
  std::string topic = request.kind == Kind::PatchReported ? proto::twinPatchReportedTopic(rid)
                                                          : proto::twinGetTopic(rid);
  if (auto r = transport_.publish(topic, request.payload, 0); r) {
    request.sent = true;
  }
}

void TwinClient::linkReady() {
  linkReady_ = true;
  for (auto& [rid, request] : requests_) {
    if (linkReady_ && !request.sent) {
      send(rid, request);
    }
  }
  if (linkReady_ && options_.ensureDesired) {
    ensureDesired();
  }
}

void TwinClient::linkLost() {
  linkReady_ = false;
  for (auto& entry : requests_) {
    entry.second.sent = false;
  }
  ensureRetryTimer_->disarm();
}

void TwinClient::armTimer() {
  std::optional<std::chrono::microseconds> earliest;
  for (const auto& [rid, request] : requests_) {
    if (!earliest || request.deadline < *earliest) {
      earliest = request.deadline;
    }
  }
  if (!earliest) {
    timer_->disarm();
    return;
  }
  timer_->armAfter(std::max(*earliest - clock_.monotonic(), std::chrono::microseconds(0)));
}

void TwinClient::onTimer() {
  const auto now = clock_.monotonic();
  std::vector<Done> expired;
  for (auto it = requests_.begin(); it != requests_.end();) {
    if (it->second.deadline <= now) {
      expired.push_back(std::move(it->second.done));
      it = requests_.erase(it);
    } else {
      ++it;
    }
  }
  armTimer();
  for (auto& done : expired) {
    done(fail(Errc::Timeout, "no twin response from the hub within " +
                                 std::to_string(options_.timeout.count()) + " s"),
         {});
  }
}

void TwinClient::onResponse(std::string_view topic, std::string_view payload) {
  auto response = proto::parseTwinResponseTopic(topic);
  if (!response) {
    listener_.onTwinError(
        {Errc::Protocol, "unreadable twin response: " + response.error().message});
    return;
  }
  auto it = requests_.find(response->requestId);
  if (it == requests_.end()) {
    return;  // answered already, timed out, or not ours (protocol doc 7: ignore unknown rids)
  }
  auto done = std::move(it->second.done);
  requests_.erase(it);
  armTimer();
  if (response->status >= 300) {
    // Protocol doc 7: 400 malformed, 429 throttled, 5xx; keep the hub's status for the caller.
    done(fail(Errc::Service,
              "the hub answered the twin request with status " + std::to_string(response->status) +
                  (payload.empty() ? std::string() : ": " + std::string(payload.substr(0, 200))),
              response->status),
         {});
    return;
  }
  done(std::move(*response), std::string(payload));
}

void TwinClient::ensureDesired() {
  if (!linkReady_ || ensureInFlight_) {
    return;  // never two at once (Python SDK EnsureDesiredPropertiesStage)
  }
  ensureInFlight_ = true;
  request(Kind::EnsureDesired, " ", true,
          lifetime_.guard([this](const core::Result<proto::TwinResponse>& r,
                                 const std::string& body) { onDesiredFetched(r, body); }));
}

void TwinClient::onDesiredFetched(const core::Result<proto::TwinResponse>& response,
                                  const std::string& body) {
  ensureInFlight_ = false;
  if (!response) {
    if (response.error().code == Errc::Cancelled) {
      return;
    }
    listener_.onTwinError({response.error().code,
                           "cannot fetch the twin after connecting: " + response.error().message,
                           response.error().sysErrno});
    // Pitfall 15: never a tight loop against a throttling hub.
    if (linkReady_) {
      ensureRetryTimer_->armAfter(options_.retryInterval);
    }
    return;
  }
  auto version = proto::desiredVersionOfTwin(body);
  auto desired = proto::desiredSectionOfTwin(body);
  if (!version || !desired) {
    listener_.onTwinError({Errc::Protocol, "the twin has no readable desired section"});
    return;
  }
  if (lastDesiredVersion_ && *lastDesiredVersion_ == *version) {
    return;
  }
  // A change made while we were away, or the starting state after the first connect
  // (dbus-contract-notes "Twin").
  lastDesiredVersion_ = *version;
  listener_.onDesiredProperties(*desired);
}

void TwinClient::onDesiredPatch(std::string_view topic, std::string_view payload) {
  auto version = proto::parseDesiredPatchTopic(topic);
  if (!version) {
    version = proto::versionOfDesiredPatch(payload);
  }
  if (!version) {
    listener_.onTwinError(
        {Errc::Protocol, "unreadable desired-properties patch: " + version.error().message});
    return;
  }
  if (lastDesiredVersion_ && *version <= *lastDesiredVersion_) {
    return;  // already delivered by a newer full fetch (versions only increase, doc 7)
  }
  lastDesiredVersion_ = *version;
  listener_.onDesiredProperties(std::string(payload));
}

void TwinClient::failAll(const core::Error& error) {
  auto requests = std::move(requests_);
  requests_.clear();
  timer_->disarm();
  for (auto& [rid, request] : requests) {
    if (request.done) {
      request.done(fail(error), {});
    }
  }
}

}  // namespace iothubd::session
