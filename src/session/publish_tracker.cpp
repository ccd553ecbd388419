// SPDX-License-Identifier: MIT
#include "iothubd/session/publish_tracker.hpp"

#include <algorithm>
#include <optional>
#include <vector>

namespace iothubd::session {

using core::Errc;
using core::fail;

PublishTracker::PublishTracker(core::Scheduler& scheduler, const core::Clock& clock,
                               mqtt::MqttTransport& transport, Limits limits)
    : clock_(clock), transport_(transport), limits_(limits) {
  // The timer is owned here and destroyed with the tracker: no guard needed.
  timer_ = scheduler.createTimer([this] { onTimer(); });
}

std::chrono::microseconds PublishTracker::deadline(std::chrono::microseconds since) const {
  return since + std::chrono::duration_cast<std::chrono::microseconds>(limits_.timeout);
}

void PublishTracker::publish(std::string_view topic, std::string_view payload, Completion done,
                             Wait wait) {
  auto mid = transport_.publish(topic, payload, 1);
  if (!mid) {
    done(fail(mid.error()));
    return;
  }
  inFlight_[*mid] = InFlight{std::move(done), clock_.monotonic()};
  if (wait == Wait::UntilLinkEnds) {
    return;  // no deadline: not in order_
  }
  order_.push_back(*mid);
  if (!timer_->armed()) {
    armTimer();
  }
}

core::Result<void> PublishTracker::hold(std::string topic, std::string payload, Completion done) {
  if (held_.size() >= limits_.maxHeldMessages) {
    return fail(Errc::QueueFull, "too many messages waiting for the connection (" +
                                     std::to_string(limits_.maxHeldMessages) + ")");
  }
  const std::size_t bytes = topic.size() + payload.size();
  if (heldBytes_ + bytes > limits_.maxHeldBytes) {
    return fail(Errc::QueueFull, "messages waiting for the connection would take " +
                                     std::to_string(heldBytes_ + bytes) + " bytes; the limit is " +
                                     std::to_string(limits_.maxHeldBytes));
  }
  heldBytes_ += bytes;
  held_.push_back(Held{std::move(topic), std::move(payload), std::move(done), clock_.monotonic()});
  if (!timer_->armed()) {
    armTimer();
  }
  return {};
}

void PublishTracker::flush(const std::function<bool()>& linkUp) {
  auto held = std::move(held_);
  held_.clear();
  heldBytes_ = 0;
  for (auto& h : held) {
    if (!linkUp()) {
      heldBytes_ += h.topic.size() + h.payload.size();
      held_.push_back(std::move(h));  // the link went again inside a completion: keep waiting
      continue;
    }
    publish(h.topic, h.payload, std::move(h.done));
  }
  armTimer();
}

bool PublishTracker::acknowledge(int messageId) {
  auto it = inFlight_.find(messageId);
  if (it == inFlight_.end()) {
    return false;
  }
  auto done = std::move(it->second.done);
  inFlight_.erase(it);
  // Acknowledged ids leave the deadline order from its front now, not when the timer next fires
  // (up to operation_timeout later): at thousands of messages a second that was a deque of
  // every id of the last minute.
  while (!order_.empty() && !inFlight_.contains(order_.front())) {
    order_.pop_front();
  }
  done({});
  if (inFlight_.empty() && onDrained_) {
    onDrained_();
  }
  return true;
}

void PublishTracker::armTimer() {
  while (!order_.empty() && !inFlight_.contains(order_.front())) {
    order_.pop_front();
  }
  std::optional<std::chrono::microseconds> earliest;
  if (!order_.empty()) {
    earliest = deadline(inFlight_[order_.front()].since);
  }
  if (!held_.empty() && (!earliest || deadline(held_.front().since) < *earliest)) {
    earliest = deadline(held_.front().since);
  }
  if (!earliest) {
    timer_->disarm();
    return;
  }
  timer_->armAfter(std::max(*earliest - clock_.monotonic(), std::chrono::microseconds(0)));
}

void PublishTracker::onTimer() {
  const auto now = clock_.monotonic();
  const std::string within = std::to_string(limits_.timeout.count()) + " s";
  std::vector<Completion> expired;
  bool hadInFlight = !inFlight_.empty();
  while (!order_.empty()) {
    auto it = inFlight_.find(order_.front());
    if (it == inFlight_.end()) {
      order_.pop_front();
      continue;
    }
    if (deadline(it->second.since) > now) {
      break;
    }
    expired.push_back(std::move(it->second.done));
    inFlight_.erase(it);
    order_.pop_front();
  }
  std::vector<Completion> expiredHeld;
  while (!held_.empty() && deadline(held_.front().since) <= now) {
    heldBytes_ -= held_.front().topic.size() + held_.front().payload.size();
    expiredHeld.push_back(std::move(held_.front().done));
    held_.pop_front();
  }
  armTimer();
  for (auto& done : expired) {
    done(fail(Errc::Timeout, "no acknowledgement from the hub within " + within));
  }
  if (!expiredHeld.empty()) {
    std::string message = "message not sent within " + within;
    message += " (" + (whyHeld_ ? whyHeld_() : std::string("not connected")) + ")";
    for (auto& done : expiredHeld) {
      done(fail(Errc::Timeout, message));
    }
  }
  if (hadInFlight && inFlight_.empty() && onDrained_) {
    onDrained_();
  }
}

void PublishTracker::failInFlight(const core::Error& error) {
  auto inFlight = std::move(inFlight_);
  inFlight_.clear();
  order_.clear();
  armTimer();
  for (auto& [mid, entry] : inFlight) {
    entry.done(fail(error));
  }
}

void PublishTracker::failHeld(const core::Error& error) {
  auto held = std::move(held_);
  held_.clear();
  heldBytes_ = 0;
  armTimer();
  for (auto& h : held) {
    h.done(fail(error));
  }
}

}  // namespace iothubd::session
