// SPDX-License-Identifier: MIT
#include "bus_client.hpp"

#include <systemd/sd-bus.h>

#include <stdexcept>

#include "bench_util.hpp"

namespace iothubd::bench {
namespace {

/// One outstanding call: where its reply is recorded.
struct Pending {
  struct Run* run = nullptr;
  double sentAt = 0;
};

struct Run {
  CallStats* stats = nullptr;
  std::size_t outstanding = 0;
  std::size_t answered = 0;
};

int onReply(sd_bus_message* reply, void* userdata, sd_bus_error*) {
  auto* pending = static_cast<Pending*>(userdata);
  Run& run = *pending->run;
  run.stats->latencyUs.push_back((nowSeconds() - pending->sentAt) * 1e6);
  if (const sd_bus_error* e = sd_bus_message_get_error(reply); e != nullptr) {
    if (run.stats->errors++ == 0) {
      run.stats->firstError =
          std::string(e->name ? e->name : "?") + ": " + (e->message ? e->message : "");
    }
  }
  --run.outstanding;
  ++run.answered;
  return 1;
}

[[noreturn]] void fail(const std::string& what, int r) {
  throw std::runtime_error(what + ": " + std::to_string(r));
}

}  // namespace

BusClient::BusClient(const std::string& address) {
  int r = sd_bus_new(&bus_);
  if (r < 0) {
    fail("sd_bus_new", r);
  }
  if ((r = sd_bus_set_address(bus_, address.c_str())) < 0 ||
      (r = sd_bus_set_bus_client(bus_, 1)) < 0 || (r = sd_bus_start(bus_)) < 0) {
    fail("cannot connect to " + address, r);
  }
}

BusClient::~BusClient() {
  sd_bus_flush_close_unref(bus_);
}

CallStats BusClient::run(const BusTarget& target, const char* member, std::size_t count,
                         std::size_t window, const Build& build, std::chrono::seconds timeout) {
  CallStats stats;
  stats.latencyUs.reserve(count);
  Run run;
  run.stats = &stats;
  std::vector<Pending> pending(count);
  const auto timeoutUs = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(timeout).count());
  std::size_t next = 0;
  const double cpu0 = threadCpuMicros();
  const double t0 = nowSeconds();
  while (run.answered < count) {
    while (next < count && run.outstanding < window) {
      sd_bus_message* m = nullptr;
      int r = sd_bus_message_new_method_call(bus_, &m, target.destination.c_str(),
                                             target.path.c_str(), target.interface.c_str(), member);
      if (r >= 0) {
        r = build(m, next);
      }
      pending[next].run = &run;
      pending[next].sentAt = nowSeconds();
      if (r >= 0) {
        r = sd_bus_call_async(bus_, nullptr, m, onReply, &pending[next], timeoutUs);
      }
      sd_bus_message_unref(m);
      if (r < 0) {
        fail(std::string("cannot call ") + member, r);
      }
      ++run.outstanding;
      ++next;
    }
    int r = sd_bus_process(bus_, nullptr);
    if (r < 0) {
      fail("sd_bus_process", r);
    }
    if (r == 0 && (r = sd_bus_wait(bus_, UINT64_MAX)) < 0) {
      fail("sd_bus_wait", r);
    }
  }
  stats.seconds = nowSeconds() - t0;
  stats.clientCpuUs = threadCpuMicros() - cpu0;
  stats.calls = count;
  return stats;
}

std::uint64_t BusClient::propertyU64(const BusTarget& target, const char* name) {
  std::uint64_t value = 0;
  sd_bus_error error = SD_BUS_ERROR_NULL;
  int r = sd_bus_get_property_trivial(bus_, target.destination.c_str(), target.path.c_str(),
                                      target.interface.c_str(), name, &error, 't', &value);
  sd_bus_error_free(&error);
  if (r < 0) {
    fail(std::string("cannot read property ") + name, r);
  }
  return value;
}

bool BusClient::propertyBool(const BusTarget& target, const char* name) {
  int value = 0;
  sd_bus_error error = SD_BUS_ERROR_NULL;
  int r = sd_bus_get_property_trivial(bus_, target.destination.c_str(), target.path.c_str(),
                                      target.interface.c_str(), name, &error, 'b', &value);
  sd_bus_error_free(&error);
  if (r < 0) {
    fail(std::string("cannot read property ") + name, r);
  }
  return value != 0;
}

int appendMessage(sd_bus_message* message, const std::string& body) {
  return sd_bus_message_append(message, "sa{ss}a{ss}", body.c_str(), 0, 0);
}

int appendBatch(sd_bus_message* message, const std::vector<const std::string*>& bodies) {
  int r = sd_bus_message_open_container(message, 'a', "(sa{ss}a{ss})");
  for (std::size_t i = 0; r >= 0 && i < bodies.size(); ++i) {
    r = sd_bus_message_append(message, "(sa{ss}a{ss})", bodies[i]->c_str(), 0, 0);
  }
  return r < 0 ? r : sd_bus_message_close_container(message);
}

}  // namespace iothubd::bench
