// SPDX-License-Identifier: MIT
#pragma once

namespace iothubd::ctl {

/// iothubctl(1): parses the command line, runs the subcommand, returns the exit status.
int run(int argc, char** argv);

}  // namespace iothubd::ctl
