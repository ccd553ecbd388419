// SPDX-License-Identifier: MIT
#include "bus_object.hpp"

#include <exception>
#include <utility>

#include "iothubd/core/log.hpp"

namespace iothubd::hostwatch {
namespace {

using core::logf;
using core::LogLevel;

constexpr const char* kBusDriver = "org.freedesktop.DBus";
/// A service that does not answer a property read within this is treated as not answering
/// (its next change still arrives as a signal).
constexpr std::chrono::seconds kReadTimeout{10};

/// Match rule values come from our own constants (names, paths, members), never from a peer;
/// a quote in one would be a bug.
std::string matchRule(const std::string& sender, const std::string& path,
                      const std::string& interface, const std::string& member,
                      const std::string& arg0) {
  std::string rule = "type='signal',sender='" + sender + "',path='" + path + "',interface='" +
                     interface + "',member='" + member + "'";
  if (!arg0.empty()) {
    rule += ",arg0='" + arg0 + "'";
  }
  return rule;
}

}  // namespace

BusObject::BusObject(sdbus::IConnection& bus, std::string name, std::string path,
                     Callbacks callbacks)
    : bus_(bus),
      name_(std::move(name)),
      path_(std::move(path)),
      callbacks_(std::move(callbacks)),
      driver_(sdbus::createProxy(bus, kBusDriver, "/org/freedesktop/DBus")) {
  // The bus tells when the name changes hands, including a service that starts after us.
  matches_.push_back(bus_.addMatch(
      matchRule(kBusDriver, "/org/freedesktop/DBus", kBusDriver, "NameOwnerChanged", name_),
      [this](sdbus::Message& m) noexcept {
        try {
          // Only the bus itself reports owners (any peer may unicast a forged signal to us).
          if (m.getSender() != kBusDriver) {
            return;
          }
          std::string name;
          std::string oldOwner;
          std::string newOwner;
          m >> name >> oldOwner >> newOwner;
          if (name == name_) {
            setOwner(newOwner);
          }
        } catch (const std::exception& e) {
          logf(LogLevel::Warning, "ignoring an unreadable NameOwnerChanged for ", name_, ": ",
               e.what());
        }
      }));
  // GetNameOwner asks the bus, never the service: a name nobody owns stays unowned (no
  // activation), and the answer is NameHasNoOwner.
  driver_->callMethodAsync("GetNameOwner")
      .onInterface(kBusDriver)
      .withArguments(name_)
      .uponReplyInvoke(
          [this, self = lifetime_.watch()](const sdbus::Error* error, const std::string& owner) {
            if (self.ended()) {
              return;
            }
            try {
              setOwner(error != nullptr ? std::string() : owner);
            } catch (const std::exception& e) {
              logf(LogLevel::Warning, "cannot watch ", name_, ": ", e.what());
            }
          });
}

BusObject::~BusObject() {
  lifetime_.end();
  // Slots and proxies go before anything they call back into.
  matches_.clear();
  ownerProxy_.reset();
  driver_.reset();
}

void BusObject::onSignal(const std::string& interface, const std::string& member,
                         const std::string& arg0, SignalHandler handler) {
  matches_.push_back(
      bus_.addMatch(matchRule(name_, path_, interface, member, arg0),
                    [this, member, handler = std::move(handler)](sdbus::Message& m) noexcept {
                      try {
                        if (!fromOwner(m)) {
                          logf(LogLevel::Debug, "ignoring ", member, " from ",
                               core::quoted(m.getSender()), ", which does not own ", name_);
                          return;
                        }
                        handler(m);
                      } catch (const std::exception& e) {
                        logf(LogLevel::Warning, "ignoring an unreadable ", member, " signal of ",
                             name_, ": ", e.what());
                      }
                    }));
}

void BusObject::getProperty(const std::string& interface, const std::string& property,
                            PropertyHandler done) {
  if (!ownerProxy_) {
    return;
  }
  // The proxy addresses the owner's unique name: such a call never starts a service.
  ownerProxy_->callMethodAsync("Get")
      .onInterface(kPropertiesInterface)
      .withTimeout(kReadTimeout)
      .withArguments(interface, property)
      .uponReplyInvoke([this, self = lifetime_.watch(), owner = owner_, done = std::move(done)](
                           const sdbus::Error* error, const sdbus::Variant& value) {
        if (self.ended() || owner != owner_) {
          return;  // a reply of the previous owner: the new one is read anew
        }
        try {
          if (error != nullptr) {
            done(nullptr, error->getName() + ": " + error->getMessage());
            return;
          }
          done(&value, std::string());
        } catch (const std::exception& e) {
          logf(LogLevel::Warning, "ignoring an unreadable property of ", name_, ": ", e.what());
        }
      });
}

void BusObject::setOwner(const std::string& owner) {
  if (owner == owner_) {
    return;
  }
  const bool had = !owner_.empty();
  owner_ = owner;
  // Reads still under way were for the previous owner: dropped with its proxy.
  ownerProxy_.reset();
  if (had && callbacks_.vanished) {
    callbacks_.vanished();
  }
  if (!owner_.empty()) {
    ownerProxy_ = sdbus::createProxy(bus_, owner_, path_);
    if (callbacks_.appeared) {
      callbacks_.appeared();
    }
  }
}

bool BusObject::fromOwner(const sdbus::Message& message) const {
  return !owner_.empty() && message.getSender() == owner_;
}

}  // namespace iothubd::hostwatch
