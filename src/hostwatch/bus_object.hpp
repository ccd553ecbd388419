// SPDX-License-Identifier: MIT
// One object of a system service (networkd, NetworkManager, ...) watched over the bus without
// ever starting the service: private to hostwatch, shared by its watches.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <sdbus-c++/sdbus-c++.h>

#include "iothubd/core/lifetime.hpp"

namespace iothubd::hostwatch {

/// The standard properties interface every watch reads and listens on.
inline constexpr const char* kPropertiesInterface = "org.freedesktop.DBus.Properties";

/// The object `path` of the service that owns the well-known name `name`, if any does.
///
/// Never bus-activates the service (networkd, timedated and others are activatable on Debian, and
/// asking one about the network must not start it): who owns the name is learnt from the bus
/// (GetNameOwner, NameOwnerChanged), and calls go to the owner's unique name, which the bus never
/// activates. A service that starts later or restarts is picked up; one that never runs costs one
/// GetNameOwner. Signals count only when the current owner sent them: on a dbus-daemon bus any
/// peer may address a signal to us, and sd-bus cannot check a well-known sender.
///
/// Loop thread only, on a connection the loop dispatches; everything after construction is
/// asynchronous. Must be destroyed before the connection.
class BusObject {
 public:
  struct Callbacks {
    /// The name has a new owner (also the first one found at start): read its state now.
    std::function<void()> appeared;
    /// The name lost its owner (the service stopped or crashed).
    std::function<void()> vanished;
  };
  using SignalHandler = std::function<void(sdbus::Message&)>;
  /// A property's value; nullptr when the read failed (`error` says why).
  using PropertyHandler =
      std::function<void(const sdbus::Variant* value, const std::string& error)>;

  /// Installs the match rules (synchronous AddMatch calls: construct before the loop runs) and asks
  /// who owns `name`. Throws sdbus::Error if the bus refuses a match rule.
  BusObject(sdbus::IConnection& bus, std::string name, std::string path, Callbacks callbacks);
  ~BusObject();
  BusObject(const BusObject&) = delete;
  BusObject& operator=(const BusObject&) = delete;

  /// Calls `handler` for each signal `member` of `interface` that the owner emits on the object
  /// (`arg0`, if not empty, is matched too). Same rules as the constructor; call it right after.
  void onSignal(const std::string& interface, const std::string& member, const std::string& arg0,
                SignalHandler handler);
  /// Reads a property from the current owner; nothing happens if there is none. `done` does not
  /// run once the owner changed meanwhile (its successor is read anew).
  void getProperty(const std::string& interface, const std::string& property, PropertyHandler done);

  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  /// The owner's unique name; empty while nobody owns the name (or before the bus answered).
  [[nodiscard]] const std::string& owner() const noexcept { return owner_; }

 private:
  void setOwner(const std::string& owner);
  [[nodiscard]] bool fromOwner(const sdbus::Message& message) const;

  sdbus::IConnection& bus_;
  std::string name_;
  std::string path_;
  Callbacks callbacks_;
  std::string owner_;
  std::unique_ptr<sdbus::IProxy> driver_;      ///< org.freedesktop.DBus, for GetNameOwner
  std::unique_ptr<sdbus::IProxy> ownerProxy_;  ///< the object at the owner's unique name
  std::vector<sdbus::Slot> matches_;
  core::Lifetime lifetime_;  ///< last: replies to a destroyed watch are ignored
};

}  // namespace iothubd::hostwatch
