// SPDX-License-Identifier: MIT
#include "iothubd/dbusapi/device_object.hpp"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <optional>
#include <random>

#include <sdbus-c++/sdbus-c++.h>

#include "call_quota.hpp"
#include "errors.hpp"
#include "inbound_limits.hpp"
#include "iothubd/core/lifetime.hpp"
#include "iothubd/core/log.hpp"
#include "iothubd/proto/telemetry.hpp"
#include "iothubd/proto/twin.hpp"
#include "link_holds.hpp"
#include "method_router.hpp"
#include "org_iothubd_device1_adaptor.h"
#include "peer_credentials.hpp"
#include "upload_path.hpp"

namespace iothubd::dbusapi {
namespace {

using core::Errc;
using core::logf;
using core::LogLevel;
using Adaptor = org::iothubd::Device1_adaptor;

/// Runs a handler body so that nothing but a D-Bus error reply leaves it: sdbus-c++ 1.2 catches
/// only sdbus::Error in its method trampoline, and anything else would unwind through sd-bus's C
/// frames (architecture doc 6.5). `fail` sends the error reply; if even that throws (the caller's
/// connection is gone), the error is logged and dropped.
template <class Fail, class Body>
void guarded(const char* method, Fail&& fail, Body&& body) noexcept {
  std::optional<sdbus::Error> error;
  try {
    body();
  } catch (const sdbus::Error& e) {
    error = sdbus::Error(e.getName(), boundedErrorMessage(e.getMessage()));
  } catch (const std::exception& e) {
    logf(LogLevel::Error, method, " failed: ", e.what());
    error = sdbus::Error("org.freedesktop.DBus.Error.Failed",
                         std::string("internal error: ") + e.what());
  } catch (...) {
    error = sdbus::Error("org.freedesktop.DBus.Error.Failed", "internal error");
  }
  if (!error) {
    return;
  }
  try {
    fail(*error);
  } catch (const std::exception& e) {
    logf(LogLevel::Warning, method, ": cannot send the error reply: ", e.what());
  } catch (...) {
  }
}

/// The same for synchronous handlers, whose errors sdbus-c++ turns into replies when they are
/// sdbus::Error.
template <class Body>
void syncGuard(const char* method, Body&& body) {
  try {
    body();
  } catch (const sdbus::Error& e) {
    throw sdbus::Error(e.getName(), boundedErrorMessage(e.getMessage()));
  } catch (const std::exception& e) {
    logf(LogLevel::Error, method, " failed: ", e.what());
    throw sdbus::Error("org.freedesktop.DBus.Error.Failed",
                       std::string("internal error: ") + e.what());
  }
}

void throwIfError(const core::Result<void>& r) {
  if (!r) {
    throw toDbusError(r.error());
  }
}

const char* authenticationName(session::AuthMethod auth) {
  switch (auth) {
    case session::AuthMethod::SasToken:
      return "sas-token";
    case session::AuthMethod::X509:
      return "x509";
    case session::AuthMethod::SymmetricKey:
      break;
  }
  return "sas";
}

/// The group whose members, besides root, may supply credentials (UpdateSasToken); the package
/// creates it (sysusers.d) and the bus policy names it too.
constexpr const char* kAdminGroup = "iothub-admin";
constexpr const char* kBusDriver = "org.freedesktop.DBus";

/// A random tag for this run of the daemon: the outbox keeps each message's app as tag + unique
/// name, so that a message stored by an earlier run (whose unique names the bus may have given
/// to other apps since) is reported to nobody.
std::string runTag() {
  std::random_device random;
  static constexpr char kHex[] = "0123456789abcdef";
  std::string tag;
  for (int i = 0; i < 16; ++i) {
    tag.push_back(kHex[random() & 0xF]);
  }
  return tag + "/";
}

/// Whether `caller` may supply credentials: root, or a member of iothub-admin (its groups as the
/// bus saw them, as the bus policy decides by them; else the user database's).
bool isAdmin(const PeerCredentials& caller) {
  if (caller.isRoot()) {
    return true;
  }
  group* admin = ::getgrnam(kAdminGroup);
  if (admin == nullptr) {
    return false;
  }
  if (!caller.gids.empty()) {
    return caller.inGroup(admin->gr_gid);
  }
  passwd* user = ::getpwuid(caller.uid);
  if (user == nullptr) {
    return false;
  }
  if (user->pw_gid == admin->gr_gid) {
    return true;
  }
  for (char** member = admin->gr_mem; member != nullptr && *member != nullptr; ++member) {
    if (std::strcmp(*member, user->pw_name) == 0) {
      return true;
    }
  }
  return false;
}

class DeviceObjectImpl final : public DeviceObject,
                               public sdbus::AdaptorInterfaces<Adaptor>,
                               private session::HubSession::Observer,
                               private delivery::TelemetryPipeline::Listener {
 public:
  DeviceObjectImpl(sdbus::IConnection& connection, DeviceServices services)
      : AdaptorInterfaces(connection, kObjectPath),
        session_(services.session),
        telemetry_(services.telemetry),
        uploads_(services.uploads),
        router_(services.scheduler, services.methodResponseTimeout, routerHooks(),
                routerLimits(services.limits)),
        quota_(services.limits.maxPendingCallsPerApp),
        holds_(services.keepConnected),
        uploadDirectories_(std::move(services.uploadFromPathDirectories)),
        reprovision_(std::move(services.reprovision)),
        appTag_(runTag()),
        connected_(session_.connected()) {
    // The match on NameOwnerChanged is in place before the vtable is, and the daemon asks for
    // its bus name only after both (daemon/main.cpp): no call is served before the daemon can
    // tell when its caller leaves.
    watchPeers(connection);
    registerAdaptor();
    session_.addObserver(this);
    telemetry_.setListener(this);
  }

  ~DeviceObjectImpl() override {
    lifetime_.end();
    session_.removeObserver(this);
    telemetry_.setListener(nullptr);
    busProxy_.reset();
    unregisterAdaptor();
  }

  void setMethodResponseTimeout(std::chrono::seconds timeout) override {
    router_.setResponseTimeout(timeout);
  }

  void setLimits(const BusLimits& limits) override {
    router_.setLimits(routerLimits(limits));
    quota_.setMaxPerPeer(limits.maxPendingCallsPerApp);
  }

  void setKeepConnected(bool keep) override {
    const bool turnedOn = keep && !holds_.keepConnected();
    holds_.setKeepConnected(keep);
    if (turnedOn) {
      session_.start();  // kept up from now on (a no-op while it is up or coming up)
    }
  }

  void setUploadDirectories(std::vector<std::string> directories) override {
    uploadDirectories_ = std::move(directories);
  }

  void identityChanged() override {
    emitChanged({"DeviceId", "ModuleId", "HostName", "GatewayHostName", "AuthenticationType"});
  }

  void setUploader(blob::BlobUploader* uploads) override { uploads_ = uploads; }

  void setProvisioning(ProvisioningStatus status) override {
    const bool stateChanged = status.state != provisioning_.state;
    const bool errorChanged = status.error.message != provisioning_.error.message;
    provisioning_ = std::move(status);
    if (stateChanged || errorChanged) {
      emitChanged(stateChanged ? std::vector<std::string>{"ProvisioningState", "LastError"}
                               : std::vector<std::string>{"LastError"});
    }
  }

  void reportBackgroundError(const core::Error& error) override { onBackgroundError(error); }

 private:
  static MethodRouter::Limits routerLimits(const BusLimits& limits) {
    return {.maxClaimsPerPeer = limits.maxMethodClaimsPerApp,
            .maxPendingRequests = limits.maxPendingMethodRequests};
  }

  MethodRouter::Hooks routerHooks() {
    MethodRouter::Hooks hooks;
    hooks.deliver = [this](const std::string& peer, const std::string& rid, const std::string& name,
                           std::string_view payload) {
      // Unicast: only the claimer sees the payload (dbus-contract-notes "Direct methods").
      auto signal = getObject().createSignal(Adaptor::INTERFACE_NAME, "MethodRequestReceived");
      signal.setDestination(peer);
      signal << rid << name << std::string(payload);
      getObject().emitSignal(signal);
    };
    hooks.answer = [this](const std::string& rid, int status, const std::string& payload) {
      session_.sendMethodResponse(rid, status, payload, [rid](core::Result<void> r) {
        if (!r) {
          logf(LogLevel::Warning, "cannot answer method request ", core::quoted(rid), ": ",
               r.error().message);
        }
      });
    };
    return hooks;
  }

  /// Claims, holds and pending requests of a peer that leaves the bus must go at once, so the
  /// daemon watches NameOwnerChanged for unique names that lose their owner.
  void watchPeers(sdbus::IConnection& connection) {
    busProxy_ = sdbus::createProxy(connection, kBusDriver, "/org/freedesktop/DBus");
    busProxy_->uponSignal("NameOwnerChanged")
        .onInterface(kBusDriver)
        .call([this](const std::string& name, const std::string& oldOwner,
                     const std::string& newOwner) {
          // Only the bus itself tells who left. On a dbus-daemon bus sd-bus cannot check the
          // match's sender (it sees unique names only), and any peer the policy lets send to
          // us can address a signal to our unique name: a forged NameOwnerChanged would
          // otherwise drop another app's claims and holds.
          const auto* message = busProxy_->getCurrentlyProcessedMessage();
          if (message == nullptr || message->getSender() != kBusDriver) {
            logf(LogLevel::Warning, "ignoring a NameOwnerChanged signal from ",
                 core::quoted(message != nullptr ? message->getSender() : std::string()), ": only ",
                 kBusDriver, " reports peers leaving");
            return;
          }
          if (!name.empty() && name[0] == ':' && !oldOwner.empty() && newOwner.empty()) {
            peerGone(name);
          }
        });
    busProxy_->finishRegistration();
  }

  void peerGone(const std::string& peer) {
    router_.peerGone(peer);
    quota_.peerGone(peer);
    if (holds_.peerGone(peer)) {
      logf(LogLevel::Info, "the last app holding the connection left the bus; disconnecting");
      session_.disconnect([](const core::Result<void>&) {});
    }
  }

  /// Asks the bus who `peer` is (GetConnectionCredentials: the uid and groups the bus policy
  /// decided by), asynchronously: the loop never waits for the bus. `then` runs on the loop,
  /// unless the object is gone by then.
  void withCredentials(const std::string& peer,
                       std::function<void(core::Result<PeerCredentials>)> then) {
    // A watch, not guard(): sdbus-c++ reads the reply's types off the callback's signature.
    busProxy_->callMethodAsync("GetConnectionCredentials")
        .onInterface(kBusDriver)
        .withArguments(peer)
        .uponReplyInvoke([self = lifetime_.watch(), then = std::move(then)](
                             const sdbus::Error* error,
                             const std::map<std::string, sdbus::Variant>& credentials) {
          if (self.ended()) {
            return;
          }
          try {
            if (error != nullptr) {
              then(core::fail(core::Errc::AccessDenied,
                              "cannot tell who the caller is: " + error->getMessage()));
              return;
            }
            PeerCredentials who;
            auto uid = credentials.find("UnixUserID");
            if (uid == credentials.end()) {
              then(core::fail(core::Errc::AccessDenied,
                              "cannot tell who the caller is: the bus reports no user id"));
              return;
            }
            who.uid = uid->second.get<std::uint32_t>();
            if (auto gids = credentials.find("UnixGroupIDs"); gids != credentials.end()) {
              for (auto gid : gids->second.get<std::vector<std::uint32_t>>()) {
                who.gids.push_back(gid);
              }
            }
            then(std::move(who));
          } catch (const std::exception& e) {
            logf(LogLevel::Error, "GetConnectionCredentials: ", e.what());
          }
        });
  }

  std::string caller() {
    const auto* message = getObject().getCurrentlyProcessedMessage();
    return message != nullptr ? message->getSender() : std::string();
  }

  /// The caller as the outbox keeps it with its messages: this run's tag + unique name.
  std::string app() { return appTag_ + caller(); }

  /// The bus peer an outbox `app` names, or "" for a message of an earlier run.
  [[nodiscard]] std::string peerOfApp(const std::string& app) const {
    return app.size() > appTag_.size() && app.compare(0, appTag_.size(), appTag_) == 0
               ? app.substr(appTag_.size())
               : std::string();
  }

  /// Emits `member` of our interface to `peer` only (a unicast signal), with `args`.
  template <class... Args>
  void emitTo(const std::string& peer, const char* member, const Args&... args) {
    emitSafely(member, [&] {
      auto signal = getObject().createSignal(Adaptor::INTERFACE_NAME, member);
      signal.setDestination(peer);
      (signal << ... << args);
      getObject().emitSignal(signal);
    });
  }

  /// Runs an asynchronous method's body: admits the call against its caller's quota first
  /// (LimitExceeded beyond it; the ticket then travels with the Result into completion()), and
  /// turns whatever the body throws into an error reply, sent through the completion if the body
  /// had already handed the Result to one (an operation that refused it at once).
  template <class ResultT, class Body>
  void replyGuard(ResultT& result, const char* method, Body&& body) noexcept {
    guarded(
        method,
        [&](const sdbus::Error& e) {
          if (handedOver_) {
            handedOver_(e);
          } else {
            result.returnError(e);
          }
        },
        [&] {
          auto ticket = quota_.acquire(caller());
          if (!ticket) {
            throw toDbusError(ticket.error());
          }
          admitted_ = std::move(*ticket);
          handedOver_ = nullptr;
          body();
        });
    handedOver_ = nullptr;
    admitted_.release();  // answered at once, or no completion took it
  }

  /// The completion of an asynchronous call: answers it at most once, even if the object goes
  /// away first, and frees the caller's quota slot (admitted by replyGuard) when it answers.
  template <class ResultT, class OnSuccess>
  auto completion(ResultT result, OnSuccess onSuccess) {
    struct Call {
      std::optional<ResultT> result;
      CallQuota::Ticket ticket;
    };
    // sdbus::Result is move-only and a session Completion is a std::function: share it.
    auto call = std::make_shared<Call>(Call{std::move(result), std::move(admitted_)});
    handedOver_ = [call](const sdbus::Error& e) {
      if (call->result) {
        auto r = std::move(*call->result);
        call->result.reset();
        call->ticket.release();
        r.returnError(e);
      }
    };
    return
        [call, onSuccess = std::move(onSuccess), self = lifetime_.watch()](auto outcome) mutable {
          if (self.ended() || !call->result) {
            return;
          }
          auto r = std::move(*call->result);
          call->result.reset();
          call->ticket.release();
          guarded(
              "reply", [&](const sdbus::Error& e) { r.returnError(e); },
              [&] {
                if (outcome) {
                  onSuccess(r, outcome);
                } else {
                  r.returnError(toDbusError(outcome.error()));
                }
              });
        };
  }

  static auto replyEmpty() {
    return [](sdbus::Result<>& r, const auto&) { r.returnResults(); };
  }

  // --- methods ------------------------------------------------------------------------------
  /// The caller's own hold on the link (link_holds.hpp): replies once connected.
  void Connect(sdbus::Result<>&& result) override {
    replyGuard(result, "Connect", [&] {
      holds_.hold(caller());
      session_.connect(completion(std::move(result), replyEmpty()));
    });
  }

  /// Releases the caller's hold only; the link closes when nobody holds it and keep_connected
  /// is off. Another app's Disconnect never takes the link away from a holder.
  void Disconnect(sdbus::Result<>&& result) override {
    replyGuard(result, "Disconnect", [&] {
      if (!holds_.release(caller())) {
        result.returnResults();
        return;
      }
      session_.disconnect(completion(std::move(result), replyEmpty()));
    });
  }

  /// A message from the bus, given an id if it has none, checked against every rule and limit
  /// and its property bag encoded (proto::checkOutgoingMessage): the only check it gets, before
  /// anything is stored or sent.
  proto::CheckedMessage message(std::string body, std::map<std::string, std::string> properties,
                                const std::map<std::string, std::string>& systemProperties) {
    auto system = proto::systemPropertiesFromBus(systemProperties);
    if (!system) {
      throw toDbusError(system.error());
    }
    proto::OutgoingMessage m;
    m.body = std::move(body);
    m.properties = std::move(properties);
    m.system = std::move(*system);
    if (!m.system.messageId) {
      m.system.messageId = session_.newMessageId();
    }
    auto checked = proto::checkOutgoingMessage(std::move(m));
    if (!checked) {
      throw toDbusError(checked.error());
    }
    return std::move(*checked);
  }

  static auto replyId() {
    return [](sdbus::Result<std::string>& r, const auto& id) { r.returnResults(*id); };
  }

  void send(sdbus::Result<std::string>&& result, std::string body,
            std::map<std::string, std::string> properties,
            const std::map<std::string, std::string>& systemProperties) {
    // Validate first, as its own statement: an exception must leave `result` unmoved so that
    // replyGuard can still answer with the error.
    auto m = message(std::move(body), std::move(properties), systemProperties);
    telemetry_.send(app(), std::move(m), completion(std::move(result), replyId()));
  }

  void queue(sdbus::Result<std::string>&& result, std::string body,
             std::map<std::string, std::string> properties,
             const std::map<std::string, std::string>& systemProperties) {
    auto m = message(std::move(body), std::move(properties), systemProperties);
    telemetry_.queue(app(), std::move(m), completion(std::move(result), replyId()));
  }

  void QueueMessage(sdbus::Result<std::string>&& result, std::string body,
                    std::map<std::string, std::string> properties,
                    std::map<std::string, std::string> systemProperties) override {
    replyGuard(result, "QueueMessage", [&] {
      queue(std::move(result), std::move(body), std::move(properties), systemProperties);
    });
  }

  void QueueBinaryMessage(sdbus::Result<std::string>&& result, std::vector<uint8_t> body,
                          std::map<std::string, std::string> properties,
                          std::map<std::string, std::string> systemProperties) override {
    replyGuard(result, "QueueBinaryMessage", [&] {
      queue(std::move(result), std::string(body.begin(), body.end()), std::move(properties),
            systemProperties);
    });
  }

  void SendMessage(sdbus::Result<std::string>&& result, std::string body,
                   std::map<std::string, std::string> properties,
                   std::map<std::string, std::string> systemProperties) override {
    replyGuard(result, "SendMessage", [&] {
      send(std::move(result), std::move(body), std::move(properties), systemProperties);
    });
  }

  void SendBinaryMessage(sdbus::Result<std::string>&& result, std::vector<uint8_t> body,
                         std::map<std::string, std::string> properties,
                         std::map<std::string, std::string> systemProperties) override {
    replyGuard(result, "SendBinaryMessage", [&] {
      send(std::move(result), std::string(body.begin(), body.end()), std::move(properties),
           systemProperties);
    });
  }

  using BusMessage = sdbus::Struct<std::string, std::map<std::string, std::string>,
                                   std::map<std::string, std::string>>;

  /// Validates every element of a SendMessages/QueueMessages batch (nothing is stored unless all
  /// pass; the error names the index) and gives ids to those without one.
  std::vector<proto::CheckedMessage> messages(std::vector<BusMessage>& batch) {
    constexpr std::size_t kMax = delivery::TelemetryPipeline::kMaxMessagesPerCall;
    if (batch.size() > kMax) {
      throw sdbus::Error("org.freedesktop.DBus.Error.InvalidArgs",
                         "at most " + std::to_string(kMax) + " messages per call, not " +
                             std::to_string(batch.size()) + "; split the batch");
    }
    std::vector<proto::CheckedMessage> out;
    out.reserve(batch.size());
    for (std::size_t i = 0; i < batch.size(); ++i) {
      auto& element = batch[i];
      try {
        out.push_back(message(std::move(std::get<0>(element)), std::move(std::get<1>(element)),
                              std::get<2>(element)));
      } catch (const sdbus::Error& e) {
        throw sdbus::Error(e.getName(), "message " + std::to_string(i) + ": " + e.getMessage());
      }
    }
    return out;
  }

  static auto replyIds() {
    return [](sdbus::Result<std::vector<std::string>>& r, auto& ids) { r.returnResults(*ids); };
  }

  void SendMessages(sdbus::Result<std::vector<std::string>>&& result,
                    std::vector<BusMessage> batch) override {
    replyGuard(result, "SendMessages", [&] {
      auto checked = messages(batch);
      telemetry_.sendBatch(app(), std::move(checked), completion(std::move(result), replyIds()));
    });
  }

  void QueueMessages(sdbus::Result<std::vector<std::string>>&& result,
                     std::vector<BusMessage> batch) override {
    replyGuard(result, "QueueMessages", [&] {
      auto checked = messages(batch);
      telemetry_.queueBatch(app(), std::move(checked), completion(std::move(result), replyIds()));
    });
  }

  void GetTwin(sdbus::Result<std::string>&& result) override {
    replyGuard(result, "GetTwin", [&] {
      session_.getTwin(completion(std::move(result), [](sdbus::Result<std::string>& r,
                                                        const auto& twin) {
        if (twin->size() > kMaxTwinDocumentBytes) {
          logf(LogLevel::Warning, "the hub sent a twin of ", twin->size(),
               " bytes; not passed on (at most ", kMaxTwinDocumentBytes, ")");
          r.returnError(sdbus::Error(
              "org.iothubd.Error.MessageTooLarge",
              "the hub sent a twin document of " + std::to_string(twin->size()) +
                  " bytes; iothubd passes on at most " + std::to_string(kMaxTwinDocumentBytes)));
          return;
        }
        r.returnResults(*twin);
      }));
    });
  }

  void PatchTwinReportedProperties(sdbus::Result<uint64_t>&& result,
                                   std::string patchJson) override {
    replyGuard(result, "PatchTwinReportedProperties", [&] {
      throwIfError(proto::validateReportedPatch(patchJson));
      session_.patchReportedProperties(
          patchJson,
          completion(std::move(result), [](sdbus::Result<uint64_t>& r, const auto& version) {
            r.returnResults(*version);
          }));
    });
  }

  void RegisterMethodHandler(const std::string& methodName) override {
    syncGuard("RegisterMethodHandler", [&] { throwIfError(router_.claim(caller(), methodName)); });
  }

  void UnregisterMethodHandler(const std::string& methodName) override {
    syncGuard("UnregisterMethodHandler",
              [&] { throwIfError(router_.release(caller(), methodName)); });
  }

  void SendMethodResponse(sdbus::Result<>&& result, std::string requestId, int32_t status,
                          std::string payloadJson) override {
    replyGuard(result, "SendMethodResponse", [&] {
      if (status < 100 || status > 599) {
        throw sdbus::Error("org.freedesktop.DBus.Error.InvalidArgs",
                           "status " + std::to_string(status) + " is outside 100..599");
      }
      if (!payloadJson.empty()) {
        throwIfError(proto::validateJsonPayload(payloadJson));
      }
      throwIfError(router_.takeResponse(caller(), requestId));
      session_.sendMethodResponse(requestId, status, payloadJson,
                                  completion(std::move(result), replyEmpty()));
    });
  }

  /// Supplies a credential: root and group iothub-admin only, by the bus policy and here by
  /// the caller's credentials as the bus reports them.
  void UpdateSasToken(sdbus::Result<>&& result, std::string sasToken) override {
    replyGuard(result, "UpdateSasToken", [&] {
      auto done = completion(std::move(result), replyEmpty());
      withCredentials(caller(), [this, done, token = core::Secret<>(std::move(sasToken))](
                                    core::Result<PeerCredentials> who) mutable {
        if (!who) {
          done(core::Result<void>(core::fail(who.error())));
          return;
        }
        if (!isAdmin(*who)) {
          done(core::Result<void>(core::fail(
              core::Errc::AccessDenied, std::string("UpdateSasToken supplies a credential: only "
                                                    "root and members of group ") +
                                            kAdminGroup + " may call it")));
          return;
        }
        done(session_.updateSasToken(token.reveal()));
      });
    });
  }

  /// Forgets DPS's assignment and registers again: root and group iothub-admin only (it moves
  /// the device), by the bus policy and here.
  void Reprovision(sdbus::Result<>&& result) override {
    replyGuard(result, "Reprovision", [&] {
      auto done = completion(std::move(result), replyEmpty());
      if (!reprovision_) {
        done(core::Result<void>(core::fail(
            core::Errc::NotSupported, "Reprovision needs authentication = dps ([provisioning])")));
        return;
      }
      withCredentials(caller(), [this, done](core::Result<PeerCredentials> who) mutable {
        if (!who) {
          done(core::Result<void>(core::fail(who.error())));
          return;
        }
        if (!isAdmin(*who)) {
          done(core::Result<void>(core::fail(
              core::Errc::AccessDenied,
              std::string("Reprovision moves the device: only root and members of group ") +
                  kAdminGroup + " may call it")));
          return;
        }
        done(reprovision_());
      });
    });
  }

  // --- file upload (protocol doc 8) ---------------------------------------------------------
  blob::BlobUploader& uploads() {
    if (uploads_ == nullptr) {
      throw sdbus::Error("org.iothubd.Error.NotSupported",
                         "file upload is for device identities; modules cannot upload files");
    }
    return *uploads_;
  }

  void GetStorageInfoForBlob(sdbus::Result<std::map<std::string, std::string>>&& result,
                             std::string blobName) override {
    replyGuard(result, "GetStorageInfoForBlob", [&] {
      throwIfError(uploads().getStorageInfo(
          blobName,
          completion(std::move(result),
                     [](sdbus::Result<std::map<std::string, std::string>>& r, const auto& info) {
                       r.returnResults(std::map<std::string, std::string>{
                           {"correlationId", info->correlationId},
                           {"hostName", info->hostName},
                           {"containerName", info->containerName},
                           {"blobName", info->blobName},
                           {"sasToken", info->sasToken}});
                     })));
    });
  }

  void NotifyBlobUploadStatus(sdbus::Result<>&& result, std::string correlationId, bool isSuccess,
                              int32_t statusCode, std::string statusDescription) override {
    replyGuard(result, "NotifyBlobUploadStatus", [&] {
      throwIfError(uploads().notifyStatus(
          proto::UploadNotification{std::move(correlationId), isSuccess, statusCode,
                                    std::move(statusDescription)},
          completion(std::move(result), replyEmpty())));
    });
  }

  static auto replyCorrelationId() {
    return [](sdbus::Result<std::string>& r, const auto& outcome) {
      r.returnResults(outcome->correlationId);
    };
  }

  /// Starts an upload whose progress goes to `uploader` only; `done` is a completion().
  template <class Done>
  void startUpload(Done done, std::string blobName, core::UniqueFd fd,
                   const std::string& uploader) {
    auto progress = lifetime_.guard([this, uploader](const blob::UploadProgress& p) {
      emitTo(uploader, "UploadProgress", p.blobName, p.bytesDone, p.bytesTotal);
    });
    auto id = uploads().upload(std::move(blobName), std::move(fd), std::move(progress), done);
    if (!id) {
      done(core::Result<blob::UploadOutcome>(core::fail(id.error())));
    }
  }

  void UploadFile(sdbus::Result<std::string>&& result, std::string blobName,
                  sdbus::UnixFd fd) override {
    replyGuard(result, "UploadFile", [&] {
      // The app opened it, with its own rights; it must carry a read right (an O_PATH
      // descriptor names a file without one, and is never reopened here).
      const int flags = ::fcntl(fd.get(), F_GETFL);
      if (flags < 0 || (flags & O_PATH) != 0 || (flags & O_ACCMODE) == O_WRONLY) {
        throw sdbus::Error("org.freedesktop.DBus.Error.InvalidArgs",
                           "the descriptor is not open for reading");
      }
      uploads();  // NotSupported before anything else
      // sdbus::UnixFd closes its descriptor when it goes; the upload owns a duplicate.
      int own = ::fcntl(fd.get(), F_DUPFD_CLOEXEC, 3);
      if (own < 0) {
        throw sdbus::Error("org.freedesktop.DBus.Error.InvalidArgs",
                           std::string("unusable file descriptor: ") + std::strerror(errno));
      }
      startUpload(completion(std::move(result), replyCorrelationId()), std::move(blobName),
                  core::UniqueFd(own), caller());
    });
  }

  /// For scripts (busctl cannot pass descriptors), confined: openForUpload() (upload_path.hpp)
  /// decides with the caller's credentials, which the bus reports asynchronously.
  void UploadFileFromPath(sdbus::Result<std::string>&& result, std::string blobName,
                          std::string path) override {
    replyGuard(result, "UploadFileFromPath", [&] {
      uploads();
      if (uploadDirectories_.empty()) {
        // Refused before asking the bus anything: the default configuration.
        if (auto refused = openForUpload(uploadDirectories_, path, {}); !refused) {
          throw toDbusError(refused.error());
        }
      }
      auto done = completion(std::move(result), replyCorrelationId());
      const std::string uploader = caller();
      withCredentials(uploader,
                      [this, done, uploader, blobName = std::move(blobName),
                       path = std::move(path)](core::Result<PeerCredentials> who) mutable {
                        if (!who) {
                          done(core::Result<blob::UploadOutcome>(core::fail(who.error())));
                          return;
                        }
                        auto fd = openForUpload(uploadDirectories_, path, *who);
                        if (!fd) {
                          done(core::Result<blob::UploadOutcome>(core::fail(fd.error())));
                          return;
                        }
                        startUpload(done, std::move(blobName), std::move(*fd), uploader);
                      });
    });
  }

  // --- properties ---------------------------------------------------------------------------
  bool Connected() override { return session_.connected(); }
  std::string ConnectionState() override { return session::connectionStateName(session_.state()); }
  std::string LastError() override {
    // Until DPS assigned a hub (or after the hub refused the device), the registration's error.
    if (provisioning_.state != "assigned" && !provisioning_.error.message.empty()) {
      return provisioning_.error.message;
    }
    return session_.lastError().message;
  }
  std::string ProvisioningState() override { return provisioning_.state; }
  std::string DeviceId() override { return session_.options().deviceId; }
  std::string ModuleId() override { return session_.options().moduleId; }
  std::string HostName() override { return session_.options().hubHostname; }
  std::string GatewayHostName() override { return session_.options().gatewayHostname; }
  std::string AuthenticationType() override { return authenticationName(session_.options().auth); }
  uint64_t SasTokenExpiry() override { return session_.sasTokenExpiry(); }
  uint64_t OutboxLength() override { return telemetry_.length(); }
  uint64_t OutboxBytes() override { return telemetry_.bytes(); }
  uint64_t MessagesDropped() override { return telemetry_.dropped(); }
  uint64_t MessagesDelivered() override { return telemetry_.delivered(); }
  std::string Version() override { return IOTHUBD_VERSION; }
  std::map<std::string, std::string> MethodHandlers() override { return router_.claims(); }

  // --- TelemetryPipeline::Listener ----------------------------------------------------------
  // Each to the app that queued the messages (a unicast signal); messages of an earlier run
  // are reported to nobody.
  void onDelivered(const std::string& app, const std::vector<std::string>& ids) override {
    if (auto peer = peerOfApp(app); !peer.empty()) {
      emitTo(peer, "MessagesDelivered", ids);
    }
  }
  void onExpired(const std::string& app, const std::vector<std::string>& ids) override {
    if (auto peer = peerOfApp(app); !peer.empty()) {
      emitTo(peer, "MessagesExpired", ids);
    }
  }
  void onCountersChanged() override {
    emitChanged({"OutboxLength", "OutboxBytes", "MessagesDropped", "MessagesDelivered"});
  }

  void emitChanged(const std::vector<std::string>& names) {
    try {
      getObject().emitPropertiesChangedSignal(Adaptor::INTERFACE_NAME, names);
    } catch (const std::exception& e) {
      logf(LogLevel::Warning, "cannot emit PropertiesChanged: ", e.what());
    }
  }

  template <class Fn>
  void emitSafely(const char* what, Fn&& fn) {
    try {
      fn();
    } catch (const std::exception& e) {
      logf(LogLevel::Warning, "cannot emit ", what, ": ", e.what());
    }
  }

  // --- session events -----------------------------------------------------------------------
  void onStateChanged(session::ConnectionState state, const core::Error*) override {
    bool connected = state == session::ConnectionState::Connected;
    if (connected != connected_) {
      connected_ = connected;
      emitChanged({"Connected", "ConnectionState", "LastError"});
      emitSafely("ConnectionStateChanged", [&] { emitConnectionStateChanged(connected); });
    } else {
      emitChanged({"ConnectionState", "LastError"});
    }
  }

  void onNewSasTokenRequired() override {
    emitSafely("NewSasTokenRequired", [&] { emitNewSasTokenRequired(); });
  }

  /// Something the hub sent that is too large to pass on: logged and reported, never forwarded.
  void dropInbound(const char* what, std::size_t size) {
    core::Error error{core::Errc::MessageTooLarge,
                      std::string("dropped a ") + what + " of " + std::to_string(size) +
                          " bytes from the hub: iothubd passes on at most " +
                          std::to_string(kMaxInboundPayloadBytes)};
    logf(LogLevel::Warning, error.message);
    onBackgroundError(error);
  }

  void onC2dMessage(std::string_view body, const std::map<std::string, std::string>& properties,
                    const std::map<std::string, std::string>& systemProperties) override {
    if (body.size() > kMaxInboundPayloadBytes) {
      dropInbound("cloud-to-device message", body.size());
      return;
    }
    emitSafely("MessageReceived", [&] {
      emitMessageReceived(std::vector<uint8_t>(body.begin(), body.end()), properties,
                          systemProperties);
    });
  }

  void onMethodRequest(const std::string& requestId, const std::string& methodName,
                       std::string_view payload) override {
    emitSafely("MethodRequestReceived", [&] { router_.onRequest(requestId, methodName, payload); });
  }

  void onDesiredPropertiesPatch(const std::string& json) override {
    if (json.size() > kMaxInboundPayloadBytes) {
      dropInbound("desired-properties patch", json.size());
      return;
    }
    emitSafely("TwinDesiredPropertiesPatchReceived",
               [&] { emitTwinDesiredPropertiesPatchReceived(json); });
  }

  void onBackgroundError(const core::Error& error) override {
    emitSafely("BackgroundException", [&] {
      auto e = toDbusError(error);
      emitBackgroundException(e.getName(), e.getMessage());
    });
  }

  void onSasTokenExpiryChanged(std::uint64_t) override { emitChanged({"SasTokenExpiry"}); }

  void onLinkDown() override { router_.linkGone(); }

  session::HubSession& session_;
  delivery::TelemetryPipeline& telemetry_;
  blob::BlobUploader* uploads_;
  MethodRouter router_;
  CallQuota quota_;
  LinkHolds holds_;
  std::vector<std::string> uploadDirectories_;
  std::function<core::Result<void>()> reprovision_;
  ProvisioningStatus provisioning_;
  const std::string appTag_;
  CallQuota::Ticket admitted_;  ///< the slot of the call being dispatched, for completion()
  /// Answers the call being dispatched once completion() holds its Result.
  std::function<void(const sdbus::Error&)> handedOver_;
  std::unique_ptr<sdbus::IProxy> busProxy_;
  bool connected_ = false;
  core::Lifetime lifetime_;  ///< last: callbacks of a destroyed object never run
};

}  // namespace

std::unique_ptr<DeviceObject> createDeviceObject(sdbus::IConnection& connection,
                                                 DeviceServices services) {
  return std::make_unique<DeviceObjectImpl>(connection, std::move(services));
}

}  // namespace iothubd::dbusapi
