// SPDX-License-Identifier: MIT
#include "daemon.hpp"

#include <cstdlib>

#include <sdbus-c++/sdbus-c++.h>
#include <systemd/sd-daemon.h>

#include "iothubd/core/log.hpp"
#include "iothubd/http/async_reader.hpp"
#include "iothubd/http/lazy_http_client.hpp"
#include "iothubd/mqtt/mosquitto_transport.hpp"
#include "iothubd/outbox/outbox.hpp"

namespace iothubd::daemon {
namespace {

using core::logf;
using core::LogLevel;
using session::ConnectionState;

/// How often replaced uploaders are checked for having finished their work.
constexpr std::chrono::seconds kReapInterval{1};

}  // namespace

/// Mirrors the session's state into the service manager's STATUS= (`systemctl status`).
class StatusReporter final : public session::HubSession::Observer {
 public:
  StatusReporter(session::HubSession& session, const Provisioner* provisioning)
      : session_(session), provisioning_(provisioning) {
    session_.addObserver(this);
  }
  void update() const { sd_notifyf(0, "STATUS=%s", text().c_str()); }
  ~StatusReporter() override { session_.removeObserver(this); }
  StatusReporter(const StatusReporter&) = delete;
  StatusReporter& operator=(const StatusReporter&) = delete;

  [[nodiscard]] std::string text() const {
    if (provisioning_ != nullptr) {
      if (auto text = provisioning_->statusText(); !text.empty()) {
        return text;
      }
    }
    const auto& o = session_.options();
    std::string who = o.moduleId.empty() ? o.deviceId : o.deviceId + "/" + o.moduleId;
    std::string where = o.hubHostname;
    if (!o.gatewayHostname.empty()) {
      where += " via " + o.gatewayHostname;
    }
    const auto& error = session_.lastError();
    std::string why = error.message.empty() ? "" : ": " + error.message;
    switch (session_.state()) {
      case ConnectionState::Connecting:
        // The reason, too: a failed first attempt, or the wait for the clock (issue 14).
        return "connecting to " + where + " as " + who + why;
      case ConnectionState::Connected:
        return "connected to " + where + " as " + who;
      case ConnectionState::Reconnecting:
        return "reconnecting to " + where + " as " + who + why;
      case ConnectionState::Disconnected:
        return "disconnected from " + where + why;
    }
    return "";
  }

 private:
  void onStateChanged(ConnectionState, const core::Error*) override { update(); }

  session::HubSession& session_;
  const Provisioner* provisioning_;
};

Daemon::Daemon(loop::EventLoop& loop) : loop_(loop) {
  reapTimer_ = loop_.createTimer([this] { reapRetired(); });
}

Daemon::~Daemon() {
  // The host's watches and the object first (they hold references to everything below), then
  // what feeds them.
  network_.reset();
  clockWatch_.reset();
  status_.reset();
  object_.reset();
  telemetry_.reset();
  retired_.clear();
  uploads_ = {};
  https_.reset();
  if (provisioner_ && session_) {
    session_->removeObserver(provisioner_.get());
  }
  provisioner_.reset();
  session_.reset();
  transport_.reset();
}

core::Result<void> Daemon::start(const config::Composition& composition, sdbus::IConnection& bus) {
  auto transport = mqtt::createMosquittoTransport(loop_);
  if (!transport) {
    return core::fail(transport.error());
  }
  transport_ = std::move(*transport);
  composed_ = composition;
  bool reregister = false;
  configureProvisioning(reregister);
  auto applied = config::apply(running_, effective(), *this);
  if (!applied) {
    return core::fail(applied.error());
  }
  if (provisioner_) {
    session_->addObserver(provisioner_.get());
  }
  object_ = dbusapi::createDeviceObject(
      bus, {*session_, loop_, bus_.methodResponseTimeout, *telemetry_, uploads_.uploader.get(),
            bus_.limits, bus_.keepConnected, bus_.uploadFromPathDirectories,
            [this]() -> core::Result<void> {
              if (!provisioner_) {
                return core::fail(core::Errc::NotSupported,
                                  "Reprovision needs authentication = dps ([provisioning])");
              }
              logf(LogLevel::Notice, "Reprovision() called: registering with DPS again");
              provisioner_->registerNow("Reprovision()", true);
              return {};
            }});
  status_ = std::make_unique<StatusReporter>(*session_, provisioner_.get());
  onProvisioningChanged();
  watchClock(bus);
  watchNetwork(bus);
  return {};
}

void Daemon::watchClock(sdbus::IConnection& bus) {
  auto watch = hostwatch::ClockWatch::create(
      bus, loop_,
      {.sync = [this](core::ClockSync sync,
                      const std::string& detail) { session_->setClockSync(sync, detail); },
       .stepped = [this](std::chrono::seconds by) { session_->clockStepped(by); }});
  if (!watch) {
    // The daemon runs as it would without a time service.
    logf(LogLevel::Warning, watch.error().message);
    return;
  }
  clockWatch_ = std::move(*watch);
}

void Daemon::watchNetwork(sdbus::IConnection& bus) {
  auto watch = hostwatch::NetworkWatch::create(
      bus, [this](std::string_view manager) { session_->networkCameBack(manager); });
  if (!watch) {
    logf(LogLevel::Warning, watch.error().message, "; reconnecting on the retry schedule only");
    return;
  }
  network_ = std::move(*watch);
}

void Daemon::connect() {
  if (clockWatch_) {
    // The first attempt knows whether to wait for the clock; without timedated the answer (an
    // error) comes at once, and at worst after ClockWatch::kAnswerTimeout.
    clockWatch_->start([this] { connectNow(); });
    return;
  }
  connectNow();
}

void Daemon::connectNow() {
  if (provisioner_ && !assignment_) {
    // The session starts once DPS assigned a hub (onAssigned).
    provisioner_->registerNow("no stored assignment", false);
    return;
  }
  session_->start();
}

ProvisioningState Daemon::provisioningState() const {
  return provisioner_ ? provisioner_->state() : ProvisioningState::NotConfigured;
}

void Daemon::configureProvisioning(bool& reregister) {
  const auto& next = composed_.provisioning;
  if (!next) {
    if (provisioner_) {
      if (session_) {
        session_->removeObserver(provisioner_.get());
      }
      provisioner_.reset();
      assignment_.reset();
      onProvisioningChanged();
    }
    return;
  }
  const bool changed =
      !provisioner_ || !running_ || !(running_->provisioning == composed_.provisioning);
  if (!changed) {
    return;
  }
  if (!provisioner_) {
    // DPS gets a connection of its own, made like the hub's (relay tunnel, proxy, WebSockets).
    auto transport = mqtt::createMosquittoTransport(loop_);
    if (!transport) {
      logf(LogLevel::Error, "DPS: ", transport.error().message);
      return;
    }
    provisioner_ = std::make_unique<Provisioner>(
        loop_, loop_, std::move(*transport), composed_.stateDirectory,
        Provisioner::Callbacks{
            .assigned = [this](const provisioning::StoredAssignment& a) { onAssigned(a); },
            .changed = [this] { onProvisioningChanged(); },
            .failed =
                [this](const core::Error& error) {
                  if (object_) {
                    object_->reportBackgroundError(error);
                  }
                }});
    if (session_) {
      session_->addObserver(provisioner_.get());
    }
  }
  auto stored = provisioner_->configure(*next);
  if (stored) {
    assignment_ = std::move(stored);
    return;
  }
  // At a reload the device keeps its current hub (if any) until DPS assigned the new one.
  reregister = running_.has_value();
}

config::Composition Daemon::effective() const {
  config::Composition c = composed_;
  if (!c.provisioning) {
    return c;
  }
  if (assignment_) {
    config::assignHub(c, assignment_->assignedHub, assignment_->deviceId);
  } else if (running_ && !running_->session.hubHostname.empty()) {
    // A reload turned DPS on: the connection stays where it is until DPS assigned a hub.
    config::assignHub(c, running_->session.hubHostname, running_->session.deviceId);
  } else {
    // Nowhere to go yet: apps' messages wait in the outbox, the link opens with the assignment.
    c.session.autoConnect = false;
  }
  return c;
}

void Daemon::onAssigned(const provisioning::StoredAssignment& assignment) {
  const bool moved = !assignment_ || assignment_->assignedHub != assignment.assignedHub ||
                     assignment_->deviceId != assignment.deviceId;
  assignment_ = assignment;
  const config::Composition next = effective();
  if (moved || !(running_->session == next.session)) {
    configureSession(next.session);
    running_->session = next.session;
    buildUpload(next.upload);
    running_->upload = next.upload;
    if (object_) {
      object_->identityChanged();
    }
  }
  session_->start();
}

void Daemon::onProvisioningChanged() {
  if (object_) {
    object_->setProvisioning({provisioningStateName(provisioningState()),
                              provisioner_ ? provisioner_->lastError() : core::Error{}});
  }
  if (status_) {
    status_->update();
  }
}

void Daemon::stopServing() {
  clockWatch_.reset();  // its proxy lives on the bus connection
  network_.reset();     // its match rules and proxies before the connection goes
  status_.reset();
  object_.reset();
}

std::string Daemon::statusText() const {
  return status_ ? status_->text() : std::string();
}

void Daemon::reload(const config::Composition& next, const std::string& configPath) {
  composed_ = next;
  bool reregister = false;
  configureProvisioning(reregister);
  auto applied = config::apply(running_, effective(), *this);
  if (!applied) {
    return;  // (apply fails only at start)
  }
  running_->provisioning = composed_.provisioning;
  running_->stateDirectory = composed_.stateDirectory;
  if (applied->identityChanged && object_) {
    object_->identityChanged();
  }
  std::string outcome =
      applied->reconnects ? "; reconnecting to apply it" : "; the connection is unaffected";
  if (!applied->refused.empty()) {
    outcome += "; " + std::to_string(applied->refused.size()) + " change(s) not applied (above)";
  }
  logf(LogLevel::Notice, "configuration reloaded from ", configPath, outcome);
  if (reregister) {
    provisioner_->registerNow("[provisioning] changed", false);
  }
}

void Daemon::shutdown(std::function<void()> done) {
  clockWatch_.reset();  // an answer coming now must not start the session again
  telemetry_->shutdown();
  session_->disconnect([done = std::move(done)](const core::Result<void>&) { done(); });
}

// --- config::Components --------------------------------------------------------------------------

void Daemon::setLogLevel(core::LogLevel level) {
  core::setLogLevel(level);
}

void Daemon::configureSession(const session::SessionOptions& options) {
  if (!session_) {
    session_ = std::make_unique<session::HubSession>(loop_, loop_, *transport_, options);
    return;
  }
  (void)session_->reconfigure(options);
}

core::Result<void> Daemon::buildHttps(const http::CurlOptions& options) {
  // libcurl is loaded with the first upload, not now (issue 13: idle memory).
  auto client = http::createLazyCurlMultiClient(loop_, options);
  if (!client) {
    return core::fail(core::Errc::Config, "file upload: " + client.error().message);
  }
  https_ = std::shared_ptr<http::HttpClient>(std::move(*client));
  return {};
}

void Daemon::buildUpload(const std::optional<config::UploadOptions>& options) {
  Uploads next;
  if (options) {
    next.https = https_;
    // The tokens are for the identity this uploader was built for: once a reload changed it, an
    // upload still running here goes on with its own identity, not the new one's.
    const session::SessionOptions identity = session_->options();
    auto token = [session = session_.get(), identity,
                  clock = static_cast<const core::Clock*>(&loop_)]() {
      const auto& now = session->options();
      if (now.hubHostname == identity.hubHostname && now.deviceId == identity.deviceId &&
          now.moduleId == identity.moduleId) {
        return session->httpAuthorization();
      }
      return session::httpAuthorization(identity, *clock);
    };
    auto readers = [&loop = loop_](core::UniqueFd fd) {
      return http::createFdReader(loop, std::move(fd));
    };
    next.uploader = std::make_unique<blob::BlobUploader>(*next.https, loop_, loop_,
                                                         options->endpoint, std::move(token),
                                                         std::move(readers), options->uploader);
  }
  if (object_) {
    object_->setUploader(next.uploader.get());
  }
  retire(std::exchange(uploads_, std::move(next)));
}

void Daemon::retire(Uploads uploads) {
  if (!uploads.uploader) {
    return;
  }
  retired_.push_back(std::move(uploads));
  reapRetired();
}

void Daemon::reapRetired() {
  std::erase_if(retired_, [](const Uploads& u) { return u.uploader->idle(); });
  if (!retired_.empty()) {
    // Uploads are bounded by upload_timeout, single steps by operation_timeout.
    reapTimer_->armAfter(kReapInterval);
  }
}

core::Result<outbox::Outbox::Opened> Daemon::openOutbox(const outbox::OutboxOptions& options) {
  // fsync on a worker: a commit may take tens of milliseconds and must not stall the loop.
  auto opened = outbox::Outbox::open(options, loop_, loop_, [this](auto work, auto done) {
    (void)loop_.runOnWorker(std::move(work), std::move(done));
  });
  if (!opened) {
    return opened;
  }
  if (opened->movedAside) {
    logf(LogLevel::Warning, "the outbox ", options.path, " was corrupted; moved aside to ",
         *opened->movedAside, " and started afresh");
  }
  if (opened->readOnly) {
    logf(LogLevel::Warning, "the outbox ", options.path,
         " is on a read-only file system: stored messages are delivered, new ones refused");
  }
  if (opened->outbox->length() > 0) {
    logf(LogLevel::Notice, opened->outbox->length(), " messages wait in the outbox ", options.path);
  }
  return opened;
}

core::Result<void> Daemon::buildOutbox(const outbox::OutboxOptions& options) {
  if (!telemetry_) {
    auto opened = openOutbox(options);
    if (!opened) {
      // The pipeline sends directly and QueueMessage explains why it cannot store.
      logf(LogLevel::Error,
           "outbox unavailable, telemetry is not durable: ", opened.error().message);
      telemetry_ = std::make_unique<delivery::TelemetryPipeline>(loop_, loop_, *session_, nullptr,
                                                                 opened.error().message);
      return core::fail(opened.error());
    }
    telemetry_ = std::make_unique<delivery::TelemetryPipeline>(loop_, loop_, *session_,
                                                               std::move(opened->outbox), "");
    return {};
  }
  // The running store is closed first: the new one may be the same file, whose index it reads.
  auto old = telemetry_->releaseOutbox();
  std::optional<outbox::OutboxOptions> oldOptions;
  if (old) {
    oldOptions = old->options();
    old.reset();
  }
  auto opened = openOutbox(options);
  if (opened) {
    telemetry_->adoptOutbox(std::move(opened->outbox), "");
    return {};
  }
  // Keep what ran: open the old store again.
  auto again = oldOptions ? openOutbox(*oldOptions) : core::fail(opened.error());
  if (again) {
    telemetry_->adoptOutbox(std::move(again->outbox), "");
  } else {
    telemetry_->adoptOutbox(nullptr, again.error().message);
  }
  return core::fail(opened.error());
}

void Daemon::configureBus(const config::BusOptions& options) {
  bus_ = options;
  if (object_) {
    object_->setLimits(options.limits);
    object_->setMethodResponseTimeout(options.methodResponseTimeout);
    object_->setKeepConnected(options.keepConnected);
    object_->setUploadDirectories(options.uploadFromPathDirectories);
  }
}

}  // namespace iothubd::daemon
