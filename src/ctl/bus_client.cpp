// SPDX-License-Identifier: MIT
#include "bus_client.hpp"

#include <unistd.h>

#include <fstream>
#include <sstream>

#include "iothubd/core/utf8.hpp"

namespace iothubd::ctl {

DeviceProxy::DeviceProxy(sdbus::IConnection& connection)
    : ProxyInterfaces(connection, kBusName, kObjectPath) {
  registerProxy();
}

DeviceProxy::~DeviceProxy() {
  unregisterProxy();
}

void DeviceProxy::onMessageReceived(const std::vector<uint8_t>& body, const StringMap& properties,
                                    const StringMap& systemProperties) {
  if (onMessage) {
    onMessage(body, properties, systemProperties);
  }
}

void DeviceProxy::onMethodRequestReceived(const std::string& requestId,
                                          const std::string& methodName,
                                          const std::string& payload) {
  if (onMethodRequest) {
    onMethodRequest(requestId, methodName, payload);
  }
}

void DeviceProxy::onTwinDesiredPropertiesPatchReceived(const std::string& patch) {
  if (onDesiredPatch) {
    onDesiredPatch(patch);
  }
}

void DeviceProxy::onUploadProgress(const std::string& blobName, const uint64_t& done,
                                   const uint64_t& total) {
  if (onProgress) {
    onProgress(blobName, done, total);
  }
}

BusClient::BusClient()
    : connection_(sdbus::createSystemBusConnection()),
      driver_(sdbus::createProxy(*connection_, "org.freedesktop.DBus", "/org/freedesktop/DBus")),
      device_(std::make_unique<DeviceProxy>(*connection_)) {
  driver_->finishRegistration();
  connection_->setMethodCallTimeout(kQuickCall);
}

BusClient::~BusClient() {
  // Proxies before their connection (sdbus-c++ 1.2 crashes otherwise).
  device_.reset();
  driver_.reset();
}

bool BusClient::daemonRunning() {
  connection_->setMethodCallTimeout(kQuickCall);
  bool has = false;
  driver_->callMethod("NameHasOwner")
      .onInterface("org.freedesktop.DBus")
      .withArguments(std::string(kBusName))
      .storeResultsTo(has);
  return has;
}

std::optional<std::uint32_t> BusClient::pidOf(const std::string& busName) {
  connection_->setMethodCallTimeout(kQuickCall);
  try {
    std::uint32_t pid = 0;
    driver_->callMethod("GetConnectionUnixProcessID")
        .onInterface("org.freedesktop.DBus")
        .withArguments(busName)
        .storeResultsTo(pid);
    return pid;
  } catch (const sdbus::Error&) {
    return std::nullopt;  // gone meanwhile, or a bus that does not tell
  }
}

std::map<std::string, PropertyValue> BusClient::properties() {
  connection_->setMethodCallTimeout(kQuickCall);
  std::map<std::string, PropertyValue> out;
  for (auto& [name, value] : device_->GetAll(kInterface)) {
    const std::string type = value.peekValueType();
    if (type == "b") {
      out[name] = value.get<bool>();
    } else if (type == "t") {
      out[name] = value.get<std::uint64_t>();
    } else if (type == "s") {
      out[name] = value.get<std::string>();
    } else if (type == "a{ss}") {
      out[name] = value.get<StringMap>();
    }
  }
  return out;
}

std::string commandLineOf(std::uint32_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  while (!raw.empty() && raw.back() == '\0') {
    raw.pop_back();
  }
  for (char& c : raw) {
    if (c == '\0') {
      c = ' ';
    }
  }
  return core::validUtf8(raw, 100);
}

std::optional<std::chrono::seconds> uptimeOf(std::uint32_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) {
    return std::nullopt;
  }
  // proc(5): the command name in parentheses may hold spaces; fields count from after it.
  auto close = line.rfind(')');
  if (close == std::string::npos) {
    return std::nullopt;
  }
  std::istringstream fields(line.substr(close + 2));
  std::string field;
  // Field 22, starttime, is the 20th after the command name (fields 3..).
  for (int i = 3; i <= 22 && fields >> field; ++i) {
  }
  std::ifstream uptimeFile("/proc/uptime");
  double systemUptime = 0;
  const long ticks = ::sysconf(_SC_CLK_TCK);
  if (!(uptimeFile >> systemUptime) || ticks <= 0 || field.empty()) {
    return std::nullopt;
  }
  double started = std::stod(field) / static_cast<double>(ticks);
  if (started > systemUptime) {
    return std::nullopt;
  }
  return std::chrono::seconds(static_cast<long long>(systemUptime - started));
}

}  // namespace iothubd::ctl
