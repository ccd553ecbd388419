// SPDX-License-Identifier: MIT
#include "errors.hpp"

#include "iothubd/core/utf8.hpp"

namespace iothubd::dbusapi {

std::string boundedErrorMessage(std::string_view message) {
  // Messages quote what a caller or the hub sent (core::quoted cuts each quote); this bounds the
  // whole, so that no error reply comes near the bus's message limit (dbus-daemon drops a peer
  // that sends more than 32 MiB, and the daemon would be that peer).
  std::string text(message.substr(0, kMaxErrorMessageBytes));
  if (message.size() > kMaxErrorMessageBytes) {
    text += "... (cut)";
  }
  // Cut anywhere, or quoting invalid UTF-8: sd-bus would refuse to build the reply, and the
  // caller would never be answered.
  return core::validUtf8(text);
}

sdbus::Error toDbusError(const core::Error& error) {
  using core::Errc;
  const char* name = "org.freedesktop.DBus.Error.Failed";
  switch (error.code) {
    case Errc::InvalidArgument:
      name = "org.freedesktop.DBus.Error.InvalidArgs";
      break;
    case Errc::NotConnected:
      name = "org.iothubd.Error.NoConnection";
      break;
    case Errc::ConnectionFailed:
      name = "org.iothubd.Error.ConnectionFailed";
      break;
    case Errc::ConnectionDropped:
      name = "org.iothubd.Error.ConnectionDropped";
      break;
    case Errc::Unauthorized:
      name = "org.iothubd.Error.Credential";
      break;
    case Errc::Timeout:
      name = "org.iothubd.Error.OperationTimeout";
      break;
    case Errc::Cancelled:
      name = "org.iothubd.Error.OperationCancelled";
      break;
    case Errc::MessageTooLarge:
      name = "org.iothubd.Error.MessageTooLarge";
      break;
    case Errc::QueueFull:
      name = "org.iothubd.Error.QueueFull";
      break;
    case Errc::LimitExceeded:
      name = "org.iothubd.Error.LimitExceeded";
      break;
    case Errc::Service:
      name = "org.iothubd.Error.Service";
      break;
    case Errc::NotSupported:
      name = "org.iothubd.Error.NotSupported";
      break;
    case Errc::AlreadyClaimed:
      name = "org.iothubd.Error.AlreadyClaimed";
      break;
    case Errc::AccessDenied:
      name = "org.freedesktop.DBus.Error.AccessDenied";
      break;
    case Errc::NotFound:
      name = "org.freedesktop.DBus.Error.FileNotFound";
      break;
    case Errc::Io:
      name = "org.freedesktop.DBus.Error.IOError";
      break;
    case Errc::Config:
    case Errc::Protocol:
    case Errc::Internal:
      name = "org.freedesktop.DBus.Error.Failed";
      break;
  }
  return sdbus::Error(name, boundedErrorMessage(error.message));
}

}  // namespace iothubd::dbusapi
