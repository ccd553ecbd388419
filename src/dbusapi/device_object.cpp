// SPDX-License-Identifier: MIT
#include "iothubd/dbusapi/device_object.hpp"

#include <fcntl.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <optional>

#include <sdbus-c++/sdbus-c++.h>

#include "call_quota.hpp"
#include "errors.hpp"
#include "iothubd/core/log.hpp"
#include "iothubd/proto/telemetry.hpp"
#include "iothubd/proto/twin.hpp"
#include "method_router.hpp"
#include "org_iothubd_device1_adaptor.h"

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
    error = e;
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
  } catch (const sdbus::Error&) {
    throw;
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
        connected_(session_.connected()) {
    registerAdaptor();
    session_.addObserver(this);
    telemetry_.setListener(this);

    watchPeers(connection);
  }

  ~DeviceObjectImpl() override {
    *alive_ = false;
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

  void identityChanged() override {
    emitChanged({"DeviceId", "ModuleId", "HostName", "GatewayHostName", "AuthenticationType"});
  }

  void setUploader(blob::BlobUploader* uploads) override { uploads_ = uploads; }

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

  /// Claims and pending requests of a peer that leaves the bus must go at once, so the daemon
  /// watches NameOwnerChanged for unique names that lose their owner.
  void watchPeers(sdbus::IConnection& connection) {
    busProxy_ = sdbus::createProxy(connection, "org.freedesktop.DBus", "/org/freedesktop/DBus");
    busProxy_->uponSignal("NameOwnerChanged")
        .onInterface("org.freedesktop.DBus")
        .call([this](const std::string& name, const std::string& oldOwner,
                     const std::string& newOwner) {
          if (!name.empty() && name[0] == ':' && !oldOwner.empty() && newOwner.empty()) {
            router_.peerGone(name);
            quota_.peerGone(name);
          }
        });
    busProxy_->finishRegistration();
  }

  std::string caller() {
    const auto* message = getObject().getCurrentlyProcessedMessage();
    return message != nullptr ? message->getSender() : std::string();
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
    auto alive = alive_;
    return [call, onSuccess = std::move(onSuccess), alive](auto outcome) mutable {
      if (!*alive || !call->result) {
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
  void Connect(sdbus::Result<>&& result) override {
    replyGuard(result, "Connect",
               [&] { session_.connect(completion(std::move(result), replyEmpty())); });
  }

  void Disconnect(sdbus::Result<>&& result) override {
    replyGuard(result, "Disconnect",
               [&] { session_.disconnect(completion(std::move(result), replyEmpty())); });
  }

  /// A message from the bus, given an id if it has none and checked against every rule and
  /// limit (proto::validateOutgoingMessage) before anything is stored or sent.
  proto::OutgoingMessage message(std::string body, std::map<std::string, std::string> properties,
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
    throwIfError(proto::validateOutgoingMessage(m));
    return m;
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
    telemetry_.send(caller(), std::move(m), completion(std::move(result), replyId()));
  }

  void queue(sdbus::Result<std::string>&& result, std::string body,
             std::map<std::string, std::string> properties,
             const std::map<std::string, std::string>& systemProperties) {
    auto m = message(std::move(body), std::move(properties), systemProperties);
    telemetry_.queue(caller(), std::move(m), completion(std::move(result), replyId()));
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
  std::vector<proto::OutgoingMessage> messages(std::vector<BusMessage>& batch) {
    constexpr std::size_t kMax = delivery::TelemetryPipeline::kMaxMessagesPerCall;
    if (batch.size() > kMax) {
      throw sdbus::Error("org.freedesktop.DBus.Error.InvalidArgs",
                         "at most " + std::to_string(kMax) + " messages per call, not " +
                             std::to_string(batch.size()) + "; split the batch");
    }
    std::vector<proto::OutgoingMessage> out;
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
      telemetry_.sendBatch(caller(), std::move(checked), completion(std::move(result), replyIds()));
    });
  }

  void QueueMessages(sdbus::Result<std::vector<std::string>>&& result,
                     std::vector<BusMessage> batch) override {
    replyGuard(result, "QueueMessages", [&] {
      auto checked = messages(batch);
      telemetry_.queueBatch(caller(), std::move(checked),
                            completion(std::move(result), replyIds()));
    });
  }

  void GetTwin(sdbus::Result<std::string>&& result) override {
    replyGuard(result, "GetTwin", [&] {
      session_.getTwin(completion(
          std::move(result),
          [](sdbus::Result<std::string>& r, const auto& twin) { r.returnResults(*twin); }));
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

  void UpdateSasToken(sdbus::Result<>&& result, std::string sasToken) override {
    replyGuard(result, "UpdateSasToken", [&] {
      throwIfError(session_.updateSasToken(sasToken));
      result.returnResults();
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

  void startUpload(sdbus::Result<std::string>&& result, std::string blobName, core::UniqueFd fd) {
    auto alive = alive_;
    auto progress = [this, alive](const blob::UploadProgress& p) {
      if (*alive) {
        emitSafely("UploadProgress",
                   [&] { emitUploadProgress(p.blobName, p.bytesDone, p.bytesTotal); });
      }
    };
    auto id = uploads().upload(
        std::move(blobName), std::move(fd), std::move(progress),
        completion(std::move(result), [](sdbus::Result<std::string>& r, const auto& outcome) {
          r.returnResults(outcome->correlationId);
        }));
    if (!id) {
      throw toDbusError(id.error());
    }
  }

  void UploadFile(sdbus::Result<std::string>&& result, std::string blobName,
                  sdbus::UnixFd fd) override {
    replyGuard(result, "UploadFile", [&] {
      // sdbus::UnixFd closes its descriptor when it goes; the upload owns a duplicate.
      int own = ::fcntl(fd.get(), F_DUPFD_CLOEXEC, 3);
      if (own < 0) {
        throw sdbus::Error("org.freedesktop.DBus.Error.InvalidArgs",
                           std::string("unusable file descriptor: ") + std::strerror(errno));
      }
      startUpload(std::move(result), std::move(blobName), core::UniqueFd(own));
    });
  }

  void UploadFileFromPath(sdbus::Result<std::string>&& result, std::string blobName,
                          std::string path) override {
    replyGuard(result, "UploadFileFromPath", [&] {
      // The daemon's own rights decide (issue 4); O_NONBLOCK so that a FIFO cannot block the loop
      // in open().
      int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
      if (fd < 0) {
        int err = errno;
        const char* name = err == ENOENT ? "org.freedesktop.DBus.Error.FileNotFound"
                           : (err == EACCES || err == EPERM)
                               ? "org.freedesktop.DBus.Error.AccessDenied"
                               : "org.freedesktop.DBus.Error.IOError";
        throw sdbus::Error(name, "cannot read " + core::quoted(path) + ": " + std::strerror(err));
      }
      core::UniqueFd owned(fd);
      struct stat st {};
      if (::fstat(fd, &st) != 0 || !(S_ISREG(st.st_mode) || S_ISFIFO(st.st_mode))) {
        throw sdbus::Error("org.freedesktop.DBus.Error.InvalidArgs",
                           core::quoted(path) + " is neither a regular file nor a pipe");
      }
      startUpload(std::move(result), std::move(blobName), std::move(owned));
    });
  }

  // --- properties ---------------------------------------------------------------------------
  bool Connected() override { return session_.connected(); }
  std::string ConnectionState() override { return session::connectionStateName(session_.state()); }
  std::string LastError() override { return session_.lastError().message; }
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

  // --- TelemetryPipeline::Listener ----------------------------------------------------------
  void onDelivered(const std::vector<std::string>& ids) override {
    emitSafely("MessagesDelivered", [&] { emitMessagesDelivered(ids); });
  }
  void onExpired(const std::vector<std::string>& ids) override {
    emitSafely("MessagesExpired", [&] { emitMessagesExpired(ids); });
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

  void onC2dMessage(std::string_view body, const std::map<std::string, std::string>& properties,
                    const std::map<std::string, std::string>& systemProperties) override {
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

  session::HubSession& session_;
  delivery::TelemetryPipeline& telemetry_;
  blob::BlobUploader* uploads_;
  MethodRouter router_;
  CallQuota quota_;
  CallQuota::Ticket admitted_;  ///< the slot of the call being dispatched, for completion()
  /// Answers the call being dispatched once completion() holds its Result.
  std::function<void(const sdbus::Error&)> handedOver_;
  std::unique_ptr<sdbus::IProxy> busProxy_;
  bool connected_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace

std::unique_ptr<DeviceObject> createDeviceObject(sdbus::IConnection& connection,
                                                 DeviceServices services) {
  return std::make_unique<DeviceObjectImpl>(connection, services);
}

}  // namespace iothubd::dbusapi
