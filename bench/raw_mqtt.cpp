// SPDX-License-Identifier: MIT
// Reference (issue 8): the limit of our MQTT stack. A plain libmosquitto publisher, as iothubd
// drives it (external poll loop, TLS, MQTT 3.1.1, QoS 1, CleanSession 0, a `$.mid` per message),
// publishing `--count` 200-byte messages with at most `--window` awaiting PUBACK. Prints one
// JSON object: rate, latency from publish to PUBACK, and its own CPU time per message.
//
//   bench-raw-mqtt --port P --ca FILE --device ID --key BASE64 --count N --window W
#include <poll.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include <mosquitto.h>

#include "bench_util.hpp"
#include "hub_emulator.hpp"

namespace {

using iothubd::bench::nowSeconds;

struct State {
  std::size_t acked = 0;
  bool connected = false;
  int connectRc = -1;
  std::vector<double> sentAt = std::vector<double>(65536, 0.0);  ///< by MQTT message id
  std::vector<double> latencyUs;
};

double processCpuMicros() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}

/// A random RFC 4122 version 4 id, as iothubd generates for messages without one.
std::string uuid(std::mt19937_64& random) {
  std::uint64_t a = random();
  std::uint64_t b = random();
  a = (a & 0xFFFFFFFFFFFF0FFFULL) | 0x0000000000004000ULL;
  b = (b & 0x3FFFFFFFFFFFFFFFULL) | 0x8000000000000000ULL;
  char buf[40];
  std::snprintf(buf, sizeof buf, "%08x-%04x-%04x-%04x-%012llx", static_cast<unsigned>(a >> 32),
                static_cast<unsigned>((a >> 16) & 0xFFFF), static_cast<unsigned>(a & 0xFFFF),
                static_cast<unsigned>(b >> 48),
                static_cast<unsigned long long>(b & 0xFFFFFFFFFFFFULL));
  return buf;
}

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "bench-raw-mqtt: %s\n", what.c_str());
  std::exit(1);
}

/// One pass of the loop iothubd runs: read, write, keep-alive bookkeeping.
void step(mosquitto* m, int timeoutMs) {
  pollfd p{mosquitto_socket(m),
           static_cast<short>(POLLIN | (mosquitto_want_write(m) ? POLLOUT : 0)), 0};
  if (p.fd < 0) {
    fail("connection lost");
  }
  if (::poll(&p, 1, timeoutMs) < 0) {
    return;
  }
  if ((p.revents & (POLLIN | POLLHUP | POLLERR)) != 0 &&
      mosquitto_loop_read(m, 1) != MOSQ_ERR_SUCCESS) {
    fail("connection lost while reading");
  }
  if ((p.revents & POLLOUT) != 0 && mosquitto_loop_write(m, 1) != MOSQ_ERR_SUCCESS) {
    fail("connection lost while writing");
  }
  mosquitto_loop_misc(m);
}

}  // namespace

int main(int argc, char** argv) {
  std::string host = "localhost", hubHost = "localhost", ca, device, key;
  int port = 0;
  std::size_t count = 1000, window = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--host") {
      host = v;
    } else if (k == "--hub-host") {
      hubHost = v;
    } else if (k == "--port") {
      port = std::atoi(v.c_str());
    } else if (k == "--ca") {
      ca = v;
    } else if (k == "--device") {
      device = v;
    } else if (k == "--key") {
      key = v;
    } else if (k == "--count") {
      count = std::strtoul(v.c_str(), nullptr, 10);
    } else if (k == "--window") {
      window = std::max<std::size_t>(1, std::strtoul(v.c_str(), nullptr, 10));
    } else {
      fail("unknown option " + k);
    }
  }
  if (port == 0 || ca.empty() || device.empty() || key.empty()) {
    fail("usage: bench-raw-mqtt --port P --ca FILE --device ID --key BASE64 --count N --window W");
  }

  mosquitto_lib_init();
  State state;
  mosquitto* m = mosquitto_new(device.c_str(), false, &state);
  mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
  if (mosquitto_tls_set(m, ca.c_str(), nullptr, nullptr, nullptr, nullptr) != MOSQ_ERR_SUCCESS ||
      mosquitto_tls_opts_set(m, 1, "tlsv1.2", nullptr) != MOSQ_ERR_SUCCESS) {
    fail("TLS settings refused");
  }
  const std::string username = iothubd::hubemu::makeUsername(hubHost, device);
  const std::string password = iothubd::hubemu::makeSasToken(
      hubHost, device, key, static_cast<int64_t>(::time(nullptr)) + 3600);
  mosquitto_username_pw_set(m, username.c_str(), password.c_str());
  mosquitto_connect_callback_set(m, [](mosquitto*, void* self, int rc) {
    auto* s = static_cast<State*>(self);
    s->connectRc = rc;
    s->connected = rc == 0;
  });
  mosquitto_publish_callback_set(m, [](mosquitto*, void* self, int mid) {
    auto* s = static_cast<State*>(self);
    s->latencyUs.push_back((nowSeconds() - s->sentAt[static_cast<std::size_t>(mid) & 0xFFFF]) *
                           1e6);
    ++s->acked;
  });
  if (mosquitto_connect(m, host.c_str(), port, 60) != MOSQ_ERR_SUCCESS) {
    fail("cannot connect to " + host + ":" + std::to_string(port));
  }
  const double connectDeadline = nowSeconds() + 30;
  while (!state.connected && state.connectRc <= 0 && nowSeconds() < connectDeadline) {
    step(m, 100);
  }
  if (!state.connected) {
    fail("no CONNACK (rc " + std::to_string(state.connectRc) + ")");
  }

  std::mt19937_64 random(std::random_device{}());
  const std::string prefix = "devices/" + device + "/messages/events/%24.mid=";
  state.latencyUs.reserve(count);
  // Bodies are ready before the clock starts, as they are for iothubd (its client builds them).
  std::vector<std::string> bodies;
  for (std::size_t i = 0; i < 1000; ++i) {
    bodies.push_back(iothubd::bench::payload(i));
  }
  std::size_t sent = 0;
  const double cpu0 = processCpuMicros();
  const double t0 = nowSeconds();
  while (state.acked < count) {
    while (sent < count && sent - state.acked < window) {
      const std::string& body = bodies[sent % bodies.size()];
      const std::string topic = prefix + uuid(random);
      int mid = 0;
      // Before the publish: it writes the PUBLISH at once, and the PUBACK may be on its way
      // before mosquitto_publish() returns.
      const double sentAt = nowSeconds();
      if (mosquitto_publish(m, &mid, topic.c_str(), static_cast<int>(body.size()), body.data(), 1,
                            false) != MOSQ_ERR_SUCCESS) {
        fail("publish failed");
      }
      state.sentAt[static_cast<std::size_t>(mid) & 0xFFFF] = sentAt;
      ++sent;
    }
    step(m, 1000);
  }
  const double seconds = nowSeconds() - t0;
  const double cpu = processCpuMicros() - cpu0;
  mosquitto_disconnect(m);
  mosquitto_destroy(m);
  mosquitto_lib_cleanup();

  iothubd::bench::Json json;
  json.beginObject()
      .value("messages", static_cast<std::uint64_t>(count))
      .value("window", static_cast<std::uint64_t>(window))
      .value("seconds", seconds)
      .value("rate", static_cast<double>(count) / seconds)
      .value("p50_us", iothubd::bench::quantile(state.latencyUs, 0.5))
      .value("p99_us", iothubd::bench::quantile(state.latencyUs, 0.99))
      .value("cpu_us", cpu)
      .value("cpu_us_per_msg", cpu / static_cast<double>(count))
      .endObject();
  std::printf("%s\n", json.text().c_str());
  return 0;
}
