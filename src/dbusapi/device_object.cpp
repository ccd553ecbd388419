// SPDX-License-Identifier: MIT
#include "iothubd/dbusapi/device_object.hpp"

#include <sdbus-c++/sdbus-c++.h>

#include <list>

#include "errors.hpp"
#include "iothubd/core/log.hpp"
#include "org_iothubd_device1_adaptor.h"

namespace iothubd::dbusapi {
namespace {

using core::Errc;
using core::LogLevel;
using core::logf;

/// Runs a handler body so that nothing but a D-Bus error reply leaves it: sdbus-c++ 1.2 catches
/// only sdbus::Error in its method trampoline, and anything else would unwind through sd-bus's C
/// frames (architecture doc 6.5).
template <class ResultT, class Body>
void replyGuard(ResultT& result, const char* method, Body&& body) noexcept {
  try {
    body();
  } catch (const sdbus::Error& e) {
    result.returnError(e);
  } catch (const std::exception& e) {
    logf(LogLevel::Error, method, " failed: ", e.what());
    try {
      result.returnError(sdbus::Error("org.freedesktop.DBus.Error.Failed",
                                      std::string("internal error: ") + e.what()));
    } catch (...) {
    }
  } catch (...) {
    try {
      result.returnError(sdbus::Error("org.freedesktop.DBus.Error.Failed", "internal error"));
    } catch (...) {
    }
  }
}

class DeviceObjectImpl final
    : public DeviceObject,
      public sdbus::AdaptorInterfaces<org::iothubd::Device1_adaptor>,
      private session::HubSession::Observer {
 public:
  DeviceObjectImpl(sdbus::IConnection& connection, session::HubSession& session)
      : AdaptorInterfaces(connection, kObjectPath),
        session_(session),
        connected_(session.connected()) {
    registerAdaptor();
    session_.setObserver(this);
  }

  ~DeviceObjectImpl() override {
    *alive_ = false;
    session_.setObserver(nullptr);
    unregisterAdaptor();
  }

 private:
  /// A reply that is sent at most once, even if the object goes away first.
  template <class ResultT, class OnSuccess>
  auto completion(ResultT result, OnSuccess onSuccess) {
    auto alive = alive_;
    // sdbus::Result is move-only and a session Completion is a std::function: share it.
    auto shared = std::make_shared<ResultT>(std::move(result));
    return [shared, onSuccess = std::move(onSuccess), alive](core::Result<void> outcome) mutable {
      if (!*alive) {
        return;
      }
      replyGuard(*shared, "reply", [&] {
        if (outcome) {
          onSuccess(*shared);
        } else {
          shared->returnError(toDbusError(outcome.error()));
        }
      });
    };
  }

  void Connect(sdbus::Result<>&& result) override {
    replyGuard(result, "Connect", [&] {
      session_.connect(completion(std::move(result), [](sdbus::Result<>& r) { r.returnResults(); }));
    });
  }

  void Disconnect(sdbus::Result<>&& result) override {
    replyGuard(result, "Disconnect", [&] {
      session_.disconnect(
          completion(std::move(result), [](sdbus::Result<>& r) { r.returnResults(); }));
    });
  }

  void SendMessage(sdbus::Result<std::string>&& result, std::string body,
                   std::map<std::string, std::string> properties,
                   std::map<std::string, std::string> systemProperties) override {
    replyGuard(result, "SendMessage", [&] {
      auto system = proto::systemPropertiesFromBus(systemProperties);
      if (!system) {
        throw toDbusError(system.error());
      }
      if (auto valid = proto::validateCustomProperties(properties); !valid) {
        throw toDbusError(valid.error());
      }
      proto::OutgoingMessage message;
      message.body = std::move(body);
      message.properties = std::move(properties);
      message.system = std::move(*system);
      if (!message.system.messageId) {
        message.system.messageId = session_.newMessageId();
      }
      std::string id = *message.system.messageId;
      session_.sendTelemetry(
          message, completion(std::move(result), [id](sdbus::Result<std::string>& r) {
            r.returnResults(id);
          }));
    });
  }

  bool Connected() override { return session_.connected(); }

  // HubSession::Observer
  void onStateChanged(session::ConnectionState state, const core::Error*) override {
    bool connected = state == session::ConnectionState::Connected;
    if (connected == connected_) {
      return;
    }
    connected_ = connected;
    try {
      getObject().emitPropertiesChangedSignal(org::iothubd::Device1_adaptor::INTERFACE_NAME,
                                              {"Connected"});
      emitConnectionStateChanged(connected);
    } catch (const std::exception& e) {
      logf(LogLevel::Warning, "cannot emit connection state change: ", e.what());
    }
  }

  session::HubSession& session_;
  bool connected_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace

std::unique_ptr<DeviceObject> createDeviceObject(sdbus::IConnection& connection,
                                                 session::HubSession& session) {
  return std::make_unique<DeviceObjectImpl>(connection, session);
}

}  // namespace iothubd::dbusapi
