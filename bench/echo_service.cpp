// SPDX-License-Identifier: MIT
// Reference (issue 8): the floor of the D-Bus hop. A trivial sdbus-c++ service on the same bus as
// iothubd, with iothubd's SendMessage/SendMessages signatures, that answers at once with a
// message id: what any D-Bus front end pays per call before doing any work. Dispatched the way
// iothubd dispatches sdbus-c++ 1.2 (getEventLoopPollData + processPendingRequest on one thread);
// SIGTERM ends it cleanly (valgrind then writes its profile).
//
//   DBUS_SYSTEM_BUS_ADDRESS=... bench-echo-service
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <sdbus-c++/sdbus-c++.h>

namespace {

constexpr const char* kName = "org.iothubd.BenchEcho";
constexpr const char* kInterface = "org.iothubd.BenchEcho1";
/// As long as the UUIDs iothubd answers with.
const std::string kId = "00000000-0000-4000-8000-000000000000";

using StringMap = std::map<std::string, std::string>;
using Message = sdbus::Struct<std::string, StringMap, StringMap>;

}  // namespace

int main() {
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
  try {
    auto connection = sdbus::createSystemBusConnection(kName);
    auto object = sdbus::createObject(*connection, "/org/iothubd/BenchEcho");
    object->registerMethod("SendMessage")
        .onInterface(kInterface)
        .implementedAs([](const std::string&, const StringMap&, const StringMap&) { return kId; });
    object->registerMethod("SendMessages")
        .onInterface(kInterface)
        .implementedAs([](const std::vector<Message>& messages) {
          return std::vector<std::string>(messages.size(), kId);
        });
    object->finishRegistration();
    std::printf("ready\n");
    std::fflush(stdout);
    for (;;) {
      auto pd = connection->getEventLoopPollData();
      pollfd fds[2] = {{pd.fd, static_cast<short>(pd.events), 0}, {sfd, POLLIN, 0}};
      if (::poll(fds, 2, pd.getPollTimeout()) < 0) {
        continue;
      }
      if (fds[1].revents != 0) {
        break;
      }
      while (connection->processPendingRequest()) {
      }
    }
    object.reset();
  } catch (const sdbus::Error& e) {
    std::fprintf(stderr, "bench-echo-service: %s: %s\n", e.getName().c_str(),
                 e.getMessage().c_str());
    return 1;
  }
  return 0;
}
