// SPDX-License-Identifier: MIT
#include "iothubd/core/result.hpp"

namespace iothubd::core {

const char* errcName(Errc code) noexcept {
  switch (code) {
    case Errc::InvalidArgument:
      return "invalid-argument";
    case Errc::Config:
      return "config";
    case Errc::NotConnected:
      return "not-connected";
    case Errc::ConnectionFailed:
      return "connection-failed";
    case Errc::ConnectionDropped:
      return "connection-dropped";
    case Errc::Unauthorized:
      return "unauthorized";
    case Errc::Timeout:
      return "timeout";
    case Errc::Cancelled:
      return "cancelled";
    case Errc::MessageTooLarge:
      return "message-too-large";
    case Errc::QueueFull:
      return "queue-full";
    case Errc::LimitExceeded:
      return "limit-exceeded";
    case Errc::Protocol:
      return "protocol";
    case Errc::Service:
      return "service";
    case Errc::NotSupported:
      return "not-supported";
    case Errc::AlreadyClaimed:
      return "already-claimed";
    case Errc::AccessDenied:
      return "access-denied";
    case Errc::NotFound:
      return "not-found";
    case Errc::Io:
      return "io";
    case Errc::Internal:
      return "internal";
  }
  return "unknown";
}

}  // namespace iothubd::core
