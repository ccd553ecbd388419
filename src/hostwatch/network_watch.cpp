// SPDX-License-Identifier: MIT
#include "iothubd/hostwatch/network_watch.hpp"

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include <sdbus-c++/sdbus-c++.h>

#include "bus_object.hpp"
#include "iothubd/core/log.hpp"

namespace iothubd::hostwatch {
namespace {

using core::logf;
using core::LogLevel;

/// NMState values (NetworkManager's nm-dbus-interface.h).
constexpr std::uint32_t kNmAsleep = 10;
constexpr std::uint32_t kNmConnectedSite = 60;
constexpr std::uint32_t kNmConnectedGlobal = 70;

/// What is watched of one network manager.
struct Kind {
  const char* label;      ///< for logs and the callback
  const char* busName;    ///< its well-known name
  const char* path;       ///< its manager object
  const char* interface;  ///< ... and interface
  const char* property;   ///< the online state property, announced with PropertiesChanged
  Online (*decode)(const sdbus::Variant& value);
};

const Kind kNetworkd{
    "systemd-networkd",
    "org.freedesktop.network1",
    "/org/freedesktop/network1",
    "org.freedesktop.network1.Manager",
    "OnlineState",
    [](const sdbus::Variant& v) { return networkdOnlineState(v.get<std::string>()); }};

const Kind kNetworkManager{
    "NetworkManager", "org.freedesktop.NetworkManager", "/org/freedesktop/NetworkManager",
    "org.freedesktop.NetworkManager",
    // NetworkManager also emits StateChanged(u), which iothubd's bus
    // policy does not let through to it: PropertiesChanged says the same.
    "State", [](const sdbus::Variant& v) { return networkManagerState(v.get<std::uint32_t>()); }};

}  // namespace

const char* onlineName(Online state) noexcept {
  switch (state) {
    case Online::Unknown:
      return "unknown";
    case Online::Offline:
      return "offline";
    case Online::Partial:
      return "partially online";
    case Online::Online:
      return "online";
  }
  return "unknown";
}

Online networkdOnlineState(std::string_view value) noexcept {
  if (value == "online") {
    return Online::Online;
  }
  if (value == "partial") {
    return Online::Partial;
  }
  if (value == "offline") {
    return Online::Offline;
  }
  return Online::Unknown;  // "" (no link is required for online) or a value newer than 252
}

Online networkManagerState(std::uint32_t value) noexcept {
  if (value == kNmConnectedGlobal) {
    return Online::Online;
  }
  if (value == kNmConnectedSite) {
    return Online::Partial;
  }
  if (value >= kNmAsleep && value < kNmConnectedSite) {
    return Online::Offline;  // asleep, disconnected, disconnecting, connecting, connected-local
  }
  return Online::Unknown;
}

bool cameBack(Online before, Online after) noexcept {
  const bool wasDown = before == Online::Offline || before == Online::Partial;
  return wasDown && after != Online::Unknown && after > before;
}

/// One network manager: its state as last known, kept across its restarts.
class NetworkWatch::Manager {
 public:
  Manager(sdbus::IConnection& bus, const Kind& kind, CameBack cameBack)
      : kind_(kind),
        cameBack_(std::move(cameBack)),
        object_(bus, kind.busName, kind.path,
                {.appeared = [this] { appeared(); }, .vanished = [this] { vanished(); }}) {
    object_.onSignal(kPropertiesInterface, "PropertiesChanged", kind_.interface,
                     [this](sdbus::Message& m) { onPropertiesChanged(m); });
  }

 private:
  void appeared() {
    logf(LogLevel::Info, kind_.label, " is on the bus (", object_.owner(),
         "): reconnecting at once when it says the network is back");
    read();
  }

  void vanished() {
    // What it said last stays the last known state: a restart that finds the network back is
    // a change, one that finds it as it was is none.
    logf(LogLevel::Info, kind_.label, " left the bus");
  }

  void read() {
    object_.getProperty(kind_.interface, kind_.property,
                        [this](const sdbus::Variant* value, const std::string& error) {
                          if (value == nullptr) {
                            logf(LogLevel::Warning, "cannot read ", kind_.label, "'s ",
                                 kind_.property, ": ", error);
                            return;
                          }
                          update(kind_.decode(*value));
                        });
  }

  void onPropertiesChanged(sdbus::Message& m) {
    std::string interface;
    std::map<std::string, sdbus::Variant> changed;
    std::vector<std::string> invalidated;
    m >> interface >> changed >> invalidated;
    if (auto it = changed.find(kind_.property); it != changed.end()) {
      update(kind_.decode(it->second));
    } else if (std::find(invalidated.begin(), invalidated.end(), kind_.property) !=
               invalidated.end()) {
      read();
    }
  }

  void update(Online next) {
    if (next == Online::Unknown || next == state_) {
      return;  // "unknown" tells nothing: the last known state stands
    }
    const Online before = state_;
    state_ = next;
    if (before == Online::Unknown) {
      logf(LogLevel::Info, kind_.label, " reports the network ", onlineName(next));
      return;  // the first state read is not a change
    }
    logf(LogLevel::Info, kind_.label, ": the network is ", onlineName(next),
         cameBack(before, next) ? " again" : "");
    if (cameBack(before, next)) {
      cameBack_(kind_.label);
    }
  }

  const Kind& kind_;
  CameBack cameBack_;
  Online state_ = Online::Unknown;
  BusObject object_;  ///< last: its callbacks use the members above
};

core::Result<std::unique_ptr<NetworkWatch>> NetworkWatch::create(sdbus::IConnection& bus,
                                                                 const CameBack& cameBack) {
  std::unique_ptr<NetworkWatch> watch(new NetworkWatch());
  try {
    for (const Kind* kind : {&kNetworkd, &kNetworkManager}) {
      watch->managers_.push_back(std::make_unique<Manager>(bus, *kind, cameBack));
    }
  } catch (const sdbus::Error& e) {
    return core::fail(core::Errc::Io, "cannot watch the network managers on the bus: " +
                                          e.getName() + ": " + e.getMessage());
  }
  return watch;
}

NetworkWatch::~NetworkWatch() = default;

}  // namespace iothubd::hostwatch
