// SPDX-License-Identifier: MIT
#include "iothubd/ctl/ctl.hpp"

#include <csignal>
#include <iostream>

#include "arguments.hpp"
#include "bus_client.hpp"
#include "commands.hpp"
#include "exit_codes.hpp"
#include "iothubd/core/log.hpp"

namespace iothubd::ctl {

int run(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  auto inv = parseArguments(args);
  if (!inv) {
    std::cerr << "iothubctl: " << inv.error().message << "\nTry iothubctl --help.\n";
    return exitcode::kUsage;
  }
  switch (inv->command) {
    case Command::Help:
      std::cout << usage();
      return exitcode::kOk;
    case Command::Version:
      std::cout << "iothubctl " << IOTHUBD_VERSION << "\n";
      return exitcode::kOk;
    default:
      break;
  }
  // The daemon's modules that iothubctl reuses (tunnel, HTTPS client) log their own debugging;
  // iothubctl reports for itself.
  core::setLogLevel(core::LogLevel::Error);
  // A reader that goes away (`iothubctl c2d watch | head -1`) ends iothubctl quietly.
  std::signal(SIGPIPE, SIG_DFL);
  if (inv->command == Command::Check) {
    return check(*inv, std::cout);
  }
  try {
    std::unique_ptr<BusClient> bus;
    try {
      bus = std::make_unique<BusClient>();
    } catch (const sdbus::Error& e) {
      std::cerr << "iothubctl: cannot connect to the system bus: " << e.getMessage() << "\n";
      return exitcode::kUnavailable;
    }
    switch (inv->command) {
      case Command::Status:
        return status(*bus, *inv, std::cout);
      case Command::Send:
        return send(*bus, *inv, std::cout, std::cerr);
      case Command::TwinGet:
        return twinGet(*bus, *inv, std::cout);
      case Command::TwinPatch:
        return twinPatch(*bus, *inv, std::cout, std::cerr);
      case Command::TwinWatch:
        return twinWatch(*bus, *inv, std::cout, std::cerr);
      case Command::MethodServe:
        return methodServe(*bus, *inv, std::cout, std::cerr);
      case Command::MethodList:
        return methodList(*bus, *inv, std::cout);
      case Command::C2dWatch:
        return c2dWatch(*bus, *inv, std::cout, std::cerr);
      case Command::Upload:
        return upload(*bus, *inv, std::cout, std::cerr);
      default:
        return exitcode::kSoftware;
    }
  } catch (const sdbus::Error& e) {
    std::cout << std::flush;
    std::cerr << "iothubctl: " << describeError(e.getName(), e.getMessage()) << "\n";
    return exitCodeForError(e.getName());
  } catch (const std::exception& e) {
    std::cerr << "iothubctl: " << e.what() << "\n";
    return exitcode::kSoftware;
  }
}

}  // namespace iothubd::ctl
