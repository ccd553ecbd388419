// SPDX-License-Identifier: MIT
#pragma once

#include <iosfwd>

#include "arguments.hpp"

namespace iothubd::ctl {

class BusClient;

/// Each subcommand of iothubctl(1); returns the exit status. Output goes to `out`, diagnostics
/// and progress to `err`. D-Bus errors propagate as sdbus::Error (run() maps them).
int status(BusClient& bus, const Invocation& inv, std::ostream& out);
int send(BusClient& bus, const Invocation& inv, std::ostream& out, std::ostream& err);
int twinGet(BusClient& bus, const Invocation& inv, std::ostream& out);
int twinPatch(BusClient& bus, const Invocation& inv, std::ostream& out, std::ostream& err);
int twinWatch(BusClient& bus, const Invocation& inv, std::ostream& out, std::ostream& err);
int methodList(BusClient& bus, const Invocation& inv, std::ostream& out);
int methodServe(BusClient& bus, const Invocation& inv, std::ostream& out, std::ostream& err);
int c2dWatch(BusClient& bus, const Invocation& inv, std::ostream& out, std::ostream& err);
int upload(BusClient& bus, const Invocation& inv, std::ostream& out, std::ostream& err);
int check(const Invocation& inv, std::ostream& out);

}  // namespace iothubd::ctl
