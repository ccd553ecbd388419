// SPDX-License-Identifier: MIT
#include "exit_codes.hpp"

#include <array>
#include <utility>

namespace iothubd::ctl {
namespace {

using Entry = std::pair<std::string_view, int>;

// The errors of org.iothubd.Device1 (dbus/org.iothubd.Device1.xml) and the bus's own.
constexpr std::array kCodes{
    Entry{"org.freedesktop.DBus.Error.InvalidArgs", exitcode::kDataError},
    Entry{"org.iothubd.Error.MessageTooLarge", exitcode::kDataError},
    Entry{"org.freedesktop.DBus.Error.FileNotFound", exitcode::kNoInput},
    Entry{"org.freedesktop.DBus.Error.AccessDenied", exitcode::kNoPermission},
    Entry{"org.freedesktop.DBus.Error.ServiceUnknown", exitcode::kUnavailable},
    Entry{"org.freedesktop.DBus.Error.NameHasNoOwner", exitcode::kUnavailable},
    Entry{"org.freedesktop.DBus.Error.Disconnected", exitcode::kUnavailable},
    Entry{"org.freedesktop.DBus.Error.Spawn.ChildExited", exitcode::kUnavailable},
    Entry{"org.freedesktop.systemd1.NoSuchUnit", exitcode::kUnavailable},
    Entry{"org.freedesktop.systemd1.UnitMasked", exitcode::kUnavailable},
    Entry{"org.freedesktop.DBus.Error.NoReply", exitcode::kTempFail},
    Entry{"org.freedesktop.DBus.Error.Timeout", exitcode::kTempFail},
    Entry{"org.freedesktop.DBus.Error.LimitsExceeded", exitcode::kTempFail},
    Entry{"org.iothubd.Error.ConnectionFailed", exitcode::kTempFail},
    Entry{"org.iothubd.Error.ConnectionDropped", exitcode::kTempFail},
    Entry{"org.iothubd.Error.NoConnection", exitcode::kTempFail},
    Entry{"org.iothubd.Error.OperationTimeout", exitcode::kTempFail},
    Entry{"org.iothubd.Error.OperationCancelled", exitcode::kTempFail},
    Entry{"org.iothubd.Error.QueueFull", exitcode::kTempFail},
    Entry{"org.iothubd.Error.LimitExceeded", exitcode::kTempFail},
    Entry{"org.iothubd.Error.Credential", exitcode::kConfig},
};

}  // namespace

int exitCodeForError(std::string_view dbusErrorName) {
  for (const auto& [name, code] : kCodes) {
    if (name == dbusErrorName) {
      return code;
    }
  }
  return exitcode::kFailed;
}

std::string describeError(std::string_view name, std::string_view message) {
  if (name == "org.freedesktop.DBus.Error.ServiceUnknown" ||
      name == "org.freedesktop.DBus.Error.NameHasNoOwner" ||
      name == "org.freedesktop.systemd1.NoSuchUnit") {
    return "iothubd is not running (and bus activation starts it only once it is enabled): "
           "systemctl enable --now iothubd";
  }
  if (name == "org.freedesktop.systemd1.UnitMasked") {
    return "iothubd is masked: systemctl unmask iothubd";
  }
  if (name == "org.freedesktop.DBus.Error.AccessDenied" &&
      message.find("Rejected send message") != std::string_view::npos) {
    return "the bus policy refused the call: only root and members of group iothub may use "
           "iothubd (usermod -aG iothub USER, then log in again)";
  }
  if (name == "org.freedesktop.DBus.Error.NoReply" &&
      message.find("disconnected") != std::string_view::npos) {
    return "iothubd left the bus before it answered (it stopped or restarted): " +
           std::string(message);
  }
  if (name == "org.freedesktop.DBus.Error.NoReply" ||
      name == "org.freedesktop.DBus.Error.Timeout") {
    return "no answer from iothubd in time (--timeout sets how long to wait): " +
           std::string(message);
  }
  std::string text(message);
  if (text.empty()) {
    text = std::string(name);
  } else if (name.rfind("org.iothubd.Error.", 0) == 0) {
    text += " (" + std::string(name.substr(18)) + ")";
  }
  return text;
}

}  // namespace iothubd::ctl
