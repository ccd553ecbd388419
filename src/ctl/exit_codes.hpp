// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <string_view>

namespace iothubd::ctl {

/// iothubctl's exit statuses (iothubctl(1), EXIT STATUS): sysexits.h where one fits, so that a
/// script can tell "try again later" (75) from "your input is wrong" (65) from "not allowed" (77).
namespace exitcode {
inline constexpr int kOk = 0;
/// The operation failed (the hub answered with an error, a claim is held by another app), or
/// `check` found an error.
inline constexpr int kFailed = 1;
/// `status`: iothubd runs but is not connected to the hub (systemctl status' "not running").
inline constexpr int kNotConnected = 3;
inline constexpr int kUsage = 64;        ///< EX_USAGE: bad command line
inline constexpr int kDataError = 65;    ///< EX_DATAERR: iothubd refused the input
inline constexpr int kNoInput = 66;      ///< EX_NOINPUT: a file to read cannot be opened
inline constexpr int kUnavailable = 69;  ///< EX_UNAVAILABLE: no iothubd on the bus, or no bus
inline constexpr int kSoftware = 70;     ///< EX_SOFTWARE: an internal error (a bug)
inline constexpr int kTempFail = 75;     ///< EX_TEMPFAIL: no hub connection now, a limit, a timeout
inline constexpr int kNoPermission = 77;  ///< EX_NOPERM: the bus policy refused the call
inline constexpr int kConfig = 78;        ///< EX_CONFIG: the hub refused the device's credentials
inline constexpr int kInterrupted = 130;  ///< SIGINT ended a command that was not done (upload)
}  // namespace exitcode

/// The exit status for a failed D-Bus call, by the error's name.
[[nodiscard]] int exitCodeForError(std::string_view dbusErrorName);

/// A sentence for an operator about a failed call: the daemon's message, or for the bus's own
/// errors what they mean here (iothubd not running, not allowed by the bus policy).
[[nodiscard]] std::string describeError(std::string_view dbusErrorName, std::string_view message);

}  // namespace iothubd::ctl
