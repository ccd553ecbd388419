// SPDX-License-Identifier: MIT
// mosquitto 2.0.11 plugin entry points (plugin API v5) for the IoT Hub emulator. Every callback is
// a noexcept trampoline: an exception must never unwind into the broker's C code.
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include <algorithm>
#include <exception>
#include <iterator>
#include <memory>
#include <string>

#include "dps_service.hpp"
#include "emulator.hpp"

namespace {

using iothubd::hubemu::DpsService;
using iothubd::hubemu::Emulator;

constexpr int kEvents[] = {MOSQ_EVT_BASIC_AUTH, MOSQ_EVT_ACL_CHECK, MOSQ_EVT_MESSAGE, MOSQ_EVT_TICK,
                           MOSQ_EVT_DISCONNECT};

// One of the two is set: the hub (default) or, with plugin_opt_mode dps, DPS.
struct PluginState {
  mosquitto_plugin_id_t* id = nullptr;
  std::unique_ptr<Emulator> emulator;
  std::unique_ptr<DpsService> dps;
};

template <class Mode>
int handle(Mode* emulator, int event, void* eventData) {
  switch (event) {
    case MOSQ_EVT_BASIC_AUTH:
      return emulator->onBasicAuth(*static_cast<mosquitto_evt_basic_auth*>(eventData));
    case MOSQ_EVT_ACL_CHECK:
      return emulator->onAclCheck(*static_cast<mosquitto_evt_acl_check*>(eventData));
    case MOSQ_EVT_MESSAGE:
      return emulator->onMessage(*static_cast<mosquitto_evt_message*>(eventData));
    case MOSQ_EVT_TICK:
      emulator->onTick();
      return MOSQ_ERR_SUCCESS;
    case MOSQ_EVT_DISCONNECT:
      emulator->onDisconnect(*static_cast<mosquitto_evt_disconnect*>(eventData));
      return MOSQ_ERR_SUCCESS;
    default:
      return MOSQ_ERR_SUCCESS;
  }
}

int dispatch(int event, void* eventData, void* userdata) noexcept {
  auto* state = static_cast<PluginState*>(userdata);
  try {
    return state->dps ? handle(state->dps.get(), event, eventData)
                      : handle(state->emulator.get(), event, eventData);
  } catch (const std::exception& e) {
    mosquitto_log_printf(MOSQ_LOG_ERR, "hub-emulator: event %d failed: %s", event, e.what());
  } catch (...) {
    mosquitto_log_printf(MOSQ_LOG_ERR, "hub-emulator: event %d failed", event);
  }
  // Deny rather than allow when our own logic broke: auth and ACL fail closed.
  return event == MOSQ_EVT_BASIC_AUTH  ? MOSQ_ERR_AUTH
         : event == MOSQ_EVT_ACL_CHECK ? MOSQ_ERR_ACL_DENIED
                                       : MOSQ_ERR_SUCCESS;
}

}  // namespace

extern "C" {

int mosquitto_plugin_version(int supportedCount, const int* supported) {
  for (int i = 0; i < supportedCount; ++i) {
    if (supported[i] == 5)
      return 5;
  }
  return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t* identifier, void** userdata,
                          mosquitto_opt* options, int optionCount) {
  try {
    Emulator::Options opts;
    DpsService::Options dpsOpts;
    std::string mode = "hub";
    for (int i = 0; i < optionCount; ++i) {
      const std::string key = options[i].key ? options[i].key : "";
      const std::string value = options[i].value ? options[i].value : "";
      if (key == "mode") {
        mode = value;
      } else if (key == "dps_config") {
        dpsOpts.configPath = value;
      } else if (key == "registry") {
        opts.registryPath = value;
      } else if (key == "hub_host") {
        opts.hubHost = value;
      } else if (key == "service_password") {
        opts.servicePassword = value;
      } else if (key == "front_port") {
        opts.frontPort = std::stoi(value);
      } else if (key == "front_backend_port") {
        opts.frontBackendPort = std::stoi(value);
      } else if (key == "front_listen") {
        // Comma-separated numeric addresses, e.g. "127.0.0.1,::1".
        for (size_t start = 0; start <= value.size();) {
          const size_t comma = std::min(value.find(',', start), value.size());
          if (comma > start)
            opts.frontListen.push_back(value.substr(start, comma - start));
          start = comma + 1;
        }
      } else if (key == "front_cert") {
        opts.frontCert = value;
      } else if (key == "front_key") {
        opts.frontKey = value;
      } else {
        mosquitto_log_printf(MOSQ_LOG_WARNING, "hub-emulator: ignoring unknown option '%s'",
                             key.c_str());
      }
    }
    auto state = std::make_unique<PluginState>();
    state->id = identifier;
    if (mode == "dps") {
      dpsOpts.servicePassword = opts.servicePassword;
      state->dps = std::make_unique<DpsService>(std::move(dpsOpts));
    } else {
      state->emulator = std::make_unique<Emulator>(std::move(opts));
    }
    for (size_t i = 0; i < std::size(kEvents); ++i) {
      const int rc =
          mosquitto_callback_register(identifier, kEvents[i], dispatch, nullptr, state.get());
      if (rc != MOSQ_ERR_SUCCESS) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "hub-emulator: cannot register event %d: %s", kEvents[i],
                             mosquitto_strerror(rc));
        // Nothing may keep pointing at `state` once it is freed.
        for (size_t j = 0; j < i; ++j) {
          mosquitto_callback_unregister(identifier, kEvents[j], dispatch, nullptr);
        }
        return rc;
      }
    }
    *userdata = state.release();
    mosquitto_log_printf(MOSQ_LOG_NOTICE, "hub-emulator: plugin ready");
    return MOSQ_ERR_SUCCESS;
  } catch (const std::exception& e) {
    mosquitto_log_printf(MOSQ_LOG_ERR, "hub-emulator: init failed: %s", e.what());
    return MOSQ_ERR_UNKNOWN;
  }
}

int mosquitto_plugin_cleanup(void* userdata, mosquitto_opt*, int) {
  std::unique_ptr<PluginState> state(static_cast<PluginState*>(userdata));
  if (state) {
    for (const int event : kEvents)
      mosquitto_callback_unregister(state->id, event, dispatch, nullptr);
  }
  return MOSQ_ERR_SUCCESS;
}

}  // extern "C"
