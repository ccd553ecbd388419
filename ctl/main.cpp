// SPDX-License-Identifier: MIT
// iothubctl: the command-line client of iothubd (iothubctl(1)). Everything is in src/ctl.
#include "iothubd/ctl/ctl.hpp"

int main(int argc, char** argv) {
  return iothubd::ctl::run(argc, argv);
}
