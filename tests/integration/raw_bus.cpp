// SPDX-License-Identifier: MIT
#include "raw_bus.hpp"

#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <thread>

namespace iothubd::testing {
namespace {

void check(int r, const std::string& what) {
  if (r < 0) {
    throw std::runtime_error(what + ": " + std::strerror(-r));
  }
}

}  // namespace

BusPtr openBus(const std::string& address) {
  sd_bus* raw = nullptr;
  check(sd_bus_new(&raw), "sd_bus_new");
  BusPtr bus(raw);
  check(sd_bus_set_address(bus.get(), address.c_str()), "sd_bus_set_address");
  check(sd_bus_set_bus_client(bus.get(), 1), "sd_bus_set_bus_client");
  check(sd_bus_negotiate_fds(bus.get(), 1), "sd_bus_negotiate_fds");
  check(sd_bus_start(bus.get()), "sd_bus_start " + address);
  return bus;
}

BusPtr openBusAs(const std::string& address, uid_t uid, gid_t gid,
                 const std::vector<gid_t>& groups) {
  BusPtr bus;
  std::string error;
  // Raw system calls: glibc's set*id() wrappers would change every thread of the process. The
  // thread ends with its credentials; sd_bus_start() connects and writes the EXTERNAL
  // handshake (with this thread's uid) before it returns.
  std::thread connector([&] {
    if (::syscall(SYS_setgroups, groups.size(), groups.data()) != 0 ||
        ::syscall(SYS_setresgid, -1, gid, -1) != 0 || ::syscall(SYS_setresuid, -1, uid, -1) != 0) {
      error = std::string("cannot take the caller's credentials: ") + std::strerror(errno);
      return;
    }
    try {
      bus = openBus(address);
      // Blocks until the handshake and Hello are through: the bus knows us as this user.
      const char* name = nullptr;
      check(sd_bus_get_unique_name(bus.get(), &name), "Hello");
    } catch (const std::exception& e) {
      error = e.what();
    }
  });
  connector.join();
  if (!error.empty()) {
    throw std::runtime_error(error);
  }
  return bus;
}

MessagePtr newCall(sd_bus* bus, const std::string& member, const std::string& interface,
                   const std::string& path, const std::string& destination) {
  sd_bus_message* raw = nullptr;
  check(sd_bus_message_new_method_call(bus, &raw, destination.c_str(), path.c_str(),
                                       interface.c_str(), member.c_str()),
        "new method call " + member);
  return MessagePtr(raw);
}

int appendStringMap(sd_bus_message* m, const std::map<std::string, std::string>& values) {
  int r = sd_bus_message_open_container(m, 'a', "{ss}");
  for (auto it = values.begin(); r >= 0 && it != values.end(); ++it) {
    r = sd_bus_message_append(m, "{ss}", it->first.c_str(), it->second.c_str());
  }
  return r < 0 ? r : sd_bus_message_close_container(m);
}

CallOutcome callAndWait(sd_bus* bus, sd_bus_message* call, std::chrono::milliseconds timeout) {
  sd_bus_error error = SD_BUS_ERROR_NULL;
  sd_bus_message* reply = nullptr;
  const auto usec = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(timeout).count());
  int r = sd_bus_call(bus, call, usec, &error, &reply);
  CallOutcome outcome;
  if (r < 0) {
    outcome.errorName = error.name != nullptr ? error.name : "errno";
    outcome.errorMessage = error.message != nullptr ? error.message : std::strerror(-r);
  }
  outcome.reply.reset(reply);
  sd_bus_error_free(&error);
  return outcome;
}

void sendWithoutReply(sd_bus* bus, sd_bus_message* call) {
  check(sd_bus_message_set_expect_reply(call, 0), "sd_bus_message_set_expect_reply");
  check(sd_bus_send(bus, call, nullptr), "sd_bus_send");
  check(sd_bus_flush(bus), "sd_bus_flush");
}

}  // namespace iothubd::testing
