// SPDX-License-Identifier: MIT
#include "provisioner.hpp"

#include <algorithm>
#include <utility>

#include "iothubd/core/log.hpp"

namespace iothubd::daemon {
namespace {

using core::logf;
using core::LogLevel;

}  // namespace

const char* provisioningStateName(ProvisioningState state) noexcept {
  switch (state) {
    case ProvisioningState::NotConfigured:
      return "not-configured";
    case ProvisioningState::Registering:
      return "registering";
    case ProvisioningState::Assigned:
      return "assigned";
    case ProvisioningState::Failed:
      return "failed";
  }
  return "not-configured";
}

Provisioner::Provisioner(core::Scheduler& scheduler, core::Clock& clock,
                         std::unique_ptr<mqtt::MqttTransport> transport, std::string stateDirectory,
                         Callbacks callbacks)
    : scheduler_(scheduler),
      clock_(clock),
      transport_(std::move(transport)),
      client_(scheduler, clock, *transport_, {}),
      store_(std::move(stateDirectory)),
      callbacks_(std::move(callbacks)) {
  retryTimer_ = scheduler_.createTimer([this] { start("retrying"); });
}

Provisioner::~Provisioner() = default;

std::optional<provisioning::StoredAssignment> Provisioner::configure(
    const provisioning::ProvisioningOptions& options) {
  client_.cancel();
  retryTimer_->disarm();
  ++generation_;
  backoff_ = std::chrono::seconds(0);
  client_.setOptions(options);
  auto identity = provisioning::identityFingerprint(options);
  if (!identity) {
    // The registration itself will report the unreadable certificate.
    logf(LogLevel::Warning, "DPS: ", identity.error().message, "; not using a stored assignment");
    identity_.clear();
    setState(ProvisioningState::Registering, {});
    return std::nullopt;
  }
  identity_ = *identity;
  auto stored = store_.load(identity_);
  if (stored) {
    logf(LogLevel::Info, "DPS: using the stored assignment to ", stored->assignedHub, " as ",
         stored->deviceId, " (", store_.path(), ")");
    setState(ProvisioningState::Assigned, {});
  } else {
    setState(ProvisioningState::Registering, {});
  }
  return stored;
}

void Provisioner::registerNow(const std::string& why, bool forget) {
  if (forget) {
    if (auto r = store_.clear(); !r) {
      logf(LogLevel::Warning, "DPS: cannot remove ", store_.path(), ": ", r.error().message);
    }
  }
  retryTimer_->disarm();
  start(why);
}

void Provisioner::start(const std::string& why) {
  client_.cancel();
  const std::uint64_t generation = ++generation_;
  logf(LogLevel::Notice, "DPS: registering ", core::quoted(client_.options().registrationId),
       " with ", client_.options().globalEndpoint, " (", why, ")");
  setState(ProvisioningState::Registering, lastError_);
  client_.registerDevice([this, generation](const provisioning::Outcome& outcome) {
    if (generation == generation_) {
      onOutcome(outcome);
    }
  });
}

void Provisioner::onOutcome(const provisioning::Outcome& outcome) {
  if (outcome) {
    provisioning::StoredAssignment a;
    a.assignedHub = outcome->assignedHub;
    a.deviceId = outcome->deviceId;
    a.substatus = outcome->substatus;
    a.assignedAtUnix = clock_.unixSeconds();
    a.identity = identity_;
    if (auto r = store_.save(a); !r) {
      // The device works; only the next start registers again.
      logf(LogLevel::Warning, "DPS: cannot store the assignment in ", store_.path(), ": ",
           r.error().message, "; the next start registers again");
    }
    setState(ProvisioningState::Assigned, {});
    callbacks_.assigned(a);
    return;
  }
  const provisioning::Failure& f = outcome.error();
  if (f.kind == provisioning::FailureKind::Cancelled) {
    return;
  }
  if (f.transient()) {
    setState(ProvisioningState::Registering, f.error);
    callbacks_.failed(f.error);
    retryAfter(std::max(backoff_, kRetryInitial));
    return;
  }
  setState(ProvisioningState::Failed, f.error);
  callbacks_.failed(f.error);
  logf(LogLevel::Warning, "DPS: registering again in ", kRetryMax.count(),
       " s, or at once after Reprovision() or a reload");
  retryTimer_->armAfter(kRetryMax);
}

void Provisioner::retryAfter(std::chrono::seconds delay) {
  backoff_ = std::min(std::max(delay * 2, kRetryInitial), kRetryMax);
  logf(LogLevel::Warning, "DPS: registering again in ", delay.count(), " s");
  retryTimer_->armAfter(delay);
}

void Provisioner::onStateChanged(session::ConnectionState state, const core::Error* lastError) {
  if (state == session::ConnectionState::Connected) {
    backoff_ = std::chrono::seconds(0);
    if (!lastError_.message.empty()) {
      setState(state_, {});
    }
    return;
  }
  if (state_ != ProvisioningState::Assigned || lastError == nullptr ||
      lastError->code != core::Errc::Unauthorized || retryTimer_->armed() || client_.active()) {
    return;
  }
  // The device was moved to another hub, re-enrolled or deleted: the assignment is void.
  core::Error why{core::Errc::Unauthorized, "the assigned hub refused the device (" +
                                                lastError->message +
                                                "); registering with DPS again"};
  logf(LogLevel::Warning, "DPS: ", why.message);
  if (auto r = store_.clear(); !r) {
    logf(LogLevel::Warning, "DPS: cannot remove ", store_.path(), ": ", r.error().message);
  }
  setState(ProvisioningState::Registering, why);
  if (backoff_.count() == 0) {
    backoff_ = kRetryInitial;
    scheduler_.post([this, generation = generation_] {
      if (generation == generation_ && !retryTimer_->armed()) {
        start("the hub refused the device");
      }
    });
    return;
  }
  retryAfter(backoff_);
}

void Provisioner::setState(ProvisioningState state, core::Error error) {
  const bool changed = state != state_ || error.message != lastError_.message;
  state_ = state;
  lastError_ = std::move(error);
  if (changed && callbacks_.changed) {
    callbacks_.changed();
  }
}

std::string Provisioner::statusText() const {
  const auto& o = client_.options();
  switch (state_) {
    case ProvisioningState::Registering:
      return "registering with DPS " + o.globalEndpoint + " as " + o.registrationId +
             (lastError_.message.empty() ? "" : ": " + lastError_.message);
    case ProvisioningState::Failed:
      return "DPS registration failed: " + lastError_.message;
    case ProvisioningState::NotConfigured:
    case ProvisioningState::Assigned:
      break;
  }
  return "";
}

}  // namespace iothubd::daemon
