// SPDX-License-Identifier: MIT
// authentication = dps in the daemon: the stored assignment, registration with DPS on a
// connection of its own, and registering again when the assigned hub refuses the device.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "iothubd/core/result.hpp"
#include "iothubd/core/scheduler.hpp"
#include "iothubd/mqtt/mqtt_transport.hpp"
#include "iothubd/provisioning/assignment_store.hpp"
#include "iothubd/provisioning/provisioning_client.hpp"
#include "iothubd/session/hub_session.hpp"

namespace iothubd::daemon {

/// The D-Bus property ProvisioningState.
enum class ProvisioningState { NotConfigured, Registering, Assigned, Failed };
[[nodiscard]] const char* provisioningStateName(ProvisioningState state) noexcept;

/// Keeps a device with authentication = dps assigned to a hub. Observes the hub session: a hub
/// that refuses the device (moved, re-enrolled or deleted) voids the assignment, and the device
/// registers again at once, then with a backoff (kRetryInitial doubling up to kRetryMax) while
/// registrations keep leading to refusals or fail. A failure DPS does not call transient
/// (401, 404, a failed or disabled enrollment) makes the state Failed; it is tried again after
/// kRetryMax (an enrollment may be fixed meanwhile), or at once on registerNow(). Loop thread.
class Provisioner final : public session::HubSession::Observer {
 public:
  static constexpr std::chrono::seconds kRetryInitial{5};
  static constexpr std::chrono::seconds kRetryMax{300};

  struct Callbacks {
    /// DPS assigned (or confirmed) a hub; the assignment is already stored.
    std::function<void(const provisioning::StoredAssignment&)> assigned;
    /// state() or lastError() changed.
    std::function<void()> changed;
    /// A registration failed (for BackgroundException).
    std::function<void(const core::Error&)> failed;
  };

  /// `transport` is DPS's own connection (not the hub's).
  Provisioner(core::Scheduler& scheduler, core::Clock& clock,
              std::unique_ptr<mqtt::MqttTransport> transport, std::string stateDirectory,
              Callbacks callbacks);
  ~Provisioner() override;
  Provisioner(const Provisioner&) = delete;
  Provisioner& operator=(const Provisioner&) = delete;

  /// New settings (start or reload): returns the stored assignment made for them, if any (the
  /// state is then Assigned). A registration under way for other settings is cancelled.
  [[nodiscard]] std::optional<provisioning::StoredAssignment> configure(
      const provisioning::ProvisioningOptions& options);
  /// Registers now (cancelling one under way); `forget` clears the stored assignment first.
  void registerNow(const std::string& why, bool forget);

  [[nodiscard]] ProvisioningState state() const noexcept { return state_; }
  /// Why the last registration failed, or the hub refused the assigned device; empty if neither.
  [[nodiscard]] const core::Error& lastError() const noexcept { return lastError_; }
  /// For STATUS= while not assigned: "registering with DPS … as …", "DPS registration failed: …".
  [[nodiscard]] std::string statusText() const;

 private:
  // session::HubSession::Observer
  void onStateChanged(session::ConnectionState state, const core::Error* lastError) override;

  void start(const std::string& why);
  void onOutcome(const provisioning::Outcome& outcome);
  void retryAfter(std::chrono::seconds delay);
  void setState(ProvisioningState state, core::Error error);

  core::Scheduler& scheduler_;
  core::Clock& clock_;
  std::unique_ptr<mqtt::MqttTransport> transport_;
  provisioning::ProvisioningClient client_;
  provisioning::AssignmentStore store_;
  Callbacks callbacks_;
  std::string identity_;  ///< identityFingerprint() of the options
  ProvisioningState state_ = ProvisioningState::NotConfigured;
  core::Error lastError_;
  std::chrono::seconds backoff_{0};  ///< before the next re-registration; 0 = at once
  std::uint64_t generation_ = 0;     ///< of the registration whose outcome counts
  std::unique_ptr<core::Timer> retryTimer_;
};

}  // namespace iothubd::daemon
