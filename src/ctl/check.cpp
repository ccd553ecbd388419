// SPDX-License-Identifier: MIT
// The probes of `iothubctl check` (check.hpp): each gathers facts the way iothubd would meet
// them, with the daemon's own code wherever it exists (configuration and credential loading,
// the TLS tunnel, the HTTPS client), and hands them to a judge in check_report.cpp.
#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <future>
#include <memory>
#include <thread>

#include "bus_client.hpp"
#include "check.hpp"
#include "exit_codes.hpp"
#include "format.hpp"
#include "iothubd/config/credentials.hpp"
#include "iothubd/config/settings.hpp"
#include "iothubd/core/unique_fd.hpp"
#include "iothubd/http/curl_multi_client.hpp"
#include "iothubd/loop/event_loop.hpp"
#include "iothubd/proto/sas_token.hpp"
#include "iothubd/relay/tunnel.hpp"

#ifndef IOTHUBD_DATADIR
#define IOTHUBD_DATADIR "/usr/share"
#endif

namespace iothubd::ctl {
namespace {

using config::AuthKind;

std::int64_t now() {
  return static_cast<std::int64_t>(std::time(nullptr));
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

std::string hostPort(const std::string& host, int port) {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" +
         std::to_string(port);
}

/// The credential names a configuration reads from $CREDENTIALS_DIRECTORY.
std::vector<std::string> credentialNames(const config::Settings& s) {
  switch (s.authentication) {
    case AuthKind::ConnectionString:
      return {"connection-string", "x509-cert", "x509-key", "x509-pass-phrase"};
    case AuthKind::SymmetricKey:
      return {"shared-access-key"};
    case AuthKind::SasToken:
      return {"sas-token"};
    case AuthKind::X509:
      return {"x509-cert", "x509-key", "x509-pass-phrase"};
    case AuthKind::Dps:
      return {"dps-key", "dps-group-key", "x509-cert", "x509-key", "x509-pass-phrase"};
  }
  return {};
}

/// Where iothubd.service gets its credentials: the running service's copies, else the places
/// LoadCredential= without a path searches (systemd.exec(5)).
std::string credentialsDirectory(const CheckOptions& o, const config::Settings& s) {
  if (!o.credentialsDirectory.empty()) {
    return o.credentialsDirectory;
  }
  if (const char* env = std::getenv("CREDENTIALS_DIRECTORY"); env != nullptr && *env != '\0') {
    return env;
  }
  if (exists("/run/credentials/iothubd.service")) {
    return "/run/credentials/iothubd.service";
  }
  for (const char* dir : {"/etc/credstore", "/run/credstore", "/usr/lib/credstore"}) {
    for (const auto& name : credentialNames(s)) {
      if (exists(std::string(dir) + "/" + name)) {
        return dir;
      }
    }
  }
  return "/etc/credstore";
}

struct Resolved {
  int error = 0;
  std::vector<std::pair<sockaddr_storage, socklen_t>> addresses;
  std::vector<std::string> texts;
};

/// getaddrinfo() bounded by `timeout`: it cannot be cancelled, so it runs on a thread of its
/// own that may outlive the wait (then the check reports a timeout).
std::optional<Resolved> resolve(const std::string& host, int port,
                                std::chrono::milliseconds timeout) {
  auto promise = std::make_shared<std::promise<Resolved>>();
  auto future = promise->get_future();
  std::thread([promise, host, port] {
    Resolved r;
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* list = nullptr;
    // Every address the name has, not AI_ADDRCONFIG's selection: an operator wants to see an
    // address that fails too (the stock "::1 localhost" line).
    r.error = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &list);
    for (addrinfo* a = list; a != nullptr; a = a->ai_next) {
      sockaddr_storage ss{};
      std::memcpy(&ss, a->ai_addr, a->ai_addrlen);
      char text[INET6_ADDRSTRLEN] = {};
      const void* raw =
          a->ai_family == AF_INET6
              ? static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr)
              : static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr);
      ::inet_ntop(a->ai_family, raw, text, sizeof text);
      std::string t = text;
      bool seen = false;
      for (const auto& existing : r.texts) {
        seen = seen || existing == t;
      }
      if (!seen) {
        r.addresses.emplace_back(ss, a->ai_addrlen);
        r.texts.push_back(t);
      }
    }
    if (list != nullptr) {
      ::freeaddrinfo(list);
    }
    promise->set_value(std::move(r));
  }).detach();
  if (future.wait_for(timeout) != std::future_status::ready) {
    return std::nullopt;
  }
  return future.get();
}

/// A TCP connect to one address, bounded by `timeout`: "" on success, else why not.
std::string tryConnect(const sockaddr_storage& address, socklen_t length,
                       std::chrono::milliseconds timeout) {
  core::UniqueFd fd(::socket(address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) {
    return std::strerror(errno);
  }
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), length) == 0) {
    return "";
  }
  if (errno != EINPROGRESS) {
    return std::strerror(errno);
  }
  pollfd p{fd.get(), POLLOUT, 0};
  int n = ::poll(&p, 1, static_cast<int>(timeout.count()));
  if (n == 0) {
    return "no answer within " + std::to_string(timeout.count() / 1000) + " s";
  }
  int err = 0;
  socklen_t len = sizeof err;
  ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
  return err == 0 ? "" : std::strerror(err);
}

class Checker {
 public:
  Checker(const CheckOptions& options, std::vector<CheckResult>& results)
      : o_(options), results_(results) {}

  void run() {
    if (configuration() && credentials() && tlsSettings()) {
      auto loop = loop::EventLoop::create();
      if (loop) {
        loop_ = std::move(*loop);
      }
      if (dns() && tcp()) {
        tls();
      }
      clock();
      expiry();
    }
    daemon();
    if (settings_) {
      outbox();
    }
    busPolicy();
    accounts();
  }

 private:
  void add(CheckResult r) { results_.push_back(std::move(r)); }

  bool configuration() {
    auto sources = config::readConfigFiles(o_.configPath);
    if (!sources) {
      add(errorResult("configuration", sources.error().message,
                      "create " + o_.configPath +
                          " (the package installs it) or name another with "
                          "--config"));
      return false;
    }
    auto settings = config::parseSettings(*sources);
    if (!settings) {
      add(errorResult("configuration", settings.error().message,
                      "correct that line (iothubd.conf(5) describes every key), then "
                      "systemctl reload iothubd"));
      return false;
    }
    settings_ = std::move(*settings);
    const std::size_t dropIns = sources->size() - 1;
    std::string what = o_.configPath;
    if (dropIns > 0) {
      what += " and " + std::to_string(dropIns) + (dropIns == 1 ? " drop-in" : " drop-ins");
    }
    add(okResult("configuration", what + (dropIns == 0 ? " loads" : " load")));
    return true;
  }

  bool credentials() {
    const std::string dir = credentialsDirectory(o_, *settings_);
    auto identity = config::loadIdentity(*settings_, dir, static_cast<std::uint64_t>(now()));
    if (!identity) {
      std::string fix =
          "put the secret where iothubd.service's LoadCredential= finds it (/etc/credstore/"
          "NAME, mode 0600) or name a file in [credentials]; iothubd.conf(5) lists the names";
      if (::geteuid() != 0 &&
          identity.error().message.find("Permission denied") != std::string::npos) {
        fix = "run iothubctl check as root: it reads the secrets iothubd reads";
      }
      for (const auto& name : credentialNames(*settings_)) {
        if (exists("/etc/credstore.encrypted/" + name)) {
          fix = "/etc/credstore.encrypted/" + name +
                " is decrypted by systemd when iothubd starts: start it and check again (its "
                "copy is read then), or pass --credentials-dir";
        }
      }
      add(errorResult("credentials", identity.error().message + " (secrets read from " + dir + ")",
                      fix));
      return false;
    }
    auto proxy = config::loadProxy(*settings_, dir);
    if (!proxy) {
      add(errorResult(
          "credentials", proxy.error().message,
          "give the proxy's password as credential proxy-password or proxy_password_file"));
      return false;
    }
    identity_ = std::move(*identity);
    proxy_ = std::move(*proxy);
    std::string who =
        identity_->deviceId + (identity_->moduleId.empty() ? "" : "/" + identity_->moduleId);
    add(okResult("credentials", "device " + who + " of " + identity_->hubHostname + " (" +
                                    config::authKindName(identity_->authentication) +
                                    "), secrets from " + dir));
    return true;
  }

  core::TlsSettings tlsConfig() const {
    return {.caFile = settings_->serverVerificationCert,
            .ciphers = settings_->cipher,
            .certFile = identity_->x509CertFile,
            .keyFile = identity_->x509KeyFile,
            .keyPassphrase = identity_->x509PassPhrase};
  }

  bool tlsSettings() {
    if (auto r = relay::checkTlsConfig(tlsConfig()); !r) {
      add(errorResult("tls-settings", r.error().message,
                      "check [connection] server_verification_cert and cipher, and the X.509 "
                      "certificate and key"));
      return false;
    }
    add(okResult("tls-settings", settings_->serverVerificationCert.empty()
                                     ? "trust store: the system's (ca-certificates)"
                                     : "trust store: " + settings_->serverVerificationCert));
    return true;
  }

  /// Where the MQTT connection's TCP goes: the proxy, else the gateway or the hub.
  [[nodiscard]] std::string mqttHost() const {
    return identity_->gatewayHostname.empty() ? identity_->hubHostname : identity_->gatewayHostname;
  }

  bool dns() {
    const bool viaProxy = proxy_.enabled();
    hopHost_ = viaProxy ? proxy_.host : mqttHost();
    hopPort_ = viaProxy ? proxy_.port : settings_->port;
    auto r = resolve(hopHost_, hopPort_, o_.timeout);
    std::string what =
        viaProxy ? std::string(core::proxyTypeName(proxy_.type)) + " proxy " + hopHost_ : hopHost_;
    if (!r) {
      add(errorResult(
          "dns",
          "no answer for " + what + " within " + std::to_string(o_.timeout.count() / 1000) + " s",
          "check the name servers (/etc/resolv.conf, resolvectl status)"));
      return false;
    }
    if (r->error != 0 || r->addresses.empty()) {
      add(errorResult(
          "dns",
          "cannot resolve " + what + ": " + (r->error != 0 ? gai_strerror(r->error) : "no address"),
          viaProxy ? "check [proxy] proxy_address and the name servers"
                   : "check the host name ([hub] hostname, gateway_hostname or the "
                     "connection string) and the name servers"));
      return false;
    }
    addresses_ = *r;
    std::string list;
    for (const auto& t : r->texts) {
      list += (list.empty() ? "" : ", ") + t;
    }
    add(okResult("dns", what + " resolves to " + list +
                            (viaProxy && proxy_.type != core::ProxySettings::Type::Socks4
                                 ? " (the proxy resolves " + mqttHost() + ")"
                                 : "")));
    return true;
  }

  bool tcp() {
    std::vector<AddressAttempt> attempts;
    for (std::size_t i = 0; i < addresses_.addresses.size(); ++i) {
      attempts.push_back(
          {addresses_.texts[i],
           tryConnect(addresses_.addresses[i].first, addresses_.addresses[i].second, o_.timeout)});
    }
    const bool viaProxy = proxy_.enabled();
    std::string target = viaProxy ? std::string(core::proxyTypeName(proxy_.type)) + " proxy " +
                                        hostPort(hopHost_, hopPort_)
                                  : hostPort(hopHost_, hopPort_);
    auto verdict = judgeTcp(attempts, target, viaProxy, settings_->websockets);
    bool any = verdict.level != Level::Error;
    add(std::move(verdict));
    return any;
  }

  /// Runs the loop until `done` or the probe's timeout; false on timeout.
  bool runUntil(const std::function<bool()>& done) {
    const auto deadline = std::chrono::steady_clock::now() + o_.timeout;
    while (!done()) {
      if (std::chrono::steady_clock::now() >= deadline) {
        return false;
      }
      if (!loop_->runOnce(std::chrono::milliseconds(50))) {
        return false;
      }
    }
    return true;
  }

  void tls() {
    if (!loop_) {
      return;
    }
    // The daemon's own tunnel (src/relay): the same TLS settings, SNI, host-name check, proxy
    // handshake and, with websockets, the HTTP upgrade, as a connection attempt would do.
    relay::TunnelOptions t;
    t.host = mqttHost();
    t.port = settings_->port;
    t.tls = tlsConfig();
    t.websockets = settings_->websockets;
    t.proxy = proxy_;
    t.userAgent = "iothubctl-check";
    const std::string target = hostPort(t.host, t.port);
    auto tunnel = relay::Tunnel::open(*loop_, std::move(t));
    if (!tunnel) {
      add(errorResult("tls", tunnel.error().message, "check [connection] in iothubd.conf"));
      return;
    }
    auto& tn = **tunnel;
    bool finished = runUntil([&] { return tn.established() || tn.failure().has_value(); });
    if (tn.established()) {
      add(okResult("tls", std::string("TLS with ") + target + ": certificate verified" +
                              (settings_->websockets ? ", WebSocket upgrade accepted" : "")));
      return;
    }
    if (!finished) {
      add(errorResult("tls",
                      "no TLS handshake with " + target + " within " +
                          std::to_string(o_.timeout.count() / 1000) + " s",
                      "a firewall or proxy on the way may hold TLS; check it"));
      return;
    }
    const std::string& why = tn.failure()->message;
    std::string fix = "check that " + target + " is the hub (or the gateway) and serves TLS";
    if (why.find("certificate verification failed") != std::string::npos) {
      fix = settings_->serverVerificationCert.empty()
                ? "install ca-certificates, or set [connection] server_verification_cert to the "
                  "CA that issued the server's certificate"
                : "set [connection] server_verification_cert to the CA that issued the "
                  "server's certificate (an IoT Edge gateway's own root CA, say)";
    } else if (why.find("proxy") != std::string::npos) {
      fix = "check [proxy] and the proxy's credentials";
    }
    add(errorResult("tls", why, fix));
  }

  void clock() {
    if (!loop_) {
      return;
    }
    // File upload's HTTPS endpoint is the hub itself (never the gateway): its Date header is
    // the hub's clock.
    std::string host = identity_->hubHostname;
    if (settings_->fileUploadPort != 443) {
      host += ":" + std::to_string(settings_->fileUploadPort);
    }
    const std::string url = "https://" + host + "/";
    http::CurlOptions options;
    options.tls = tlsConfig();
    options.proxy = proxy_;
    options.userAgent = "iothubctl-check";
    options.connectTimeout = o_.timeout;
    auto client = http::createCurlMultiClient(*loop_, options);
    if (!client) {
      add(warningResult("clock", "cannot read the hub's clock: " + client.error().message, ""));
      return;
    }
    http::Request request;
    request.method = http::Method::Get;
    request.url = url;
    request.timeout = o_.timeout;
    std::optional<core::Result<http::Response>> answer;
    std::int64_t arrived = 0;
    auto sent = (*client)->send(std::move(request), [&](core::Result<http::Response> r) {
      arrived = now();
      answer = std::move(r);
    });
    if (!sent) {
      add(warningResult("clock", "cannot read the hub's clock: " + sent.error().message, ""));
      return;
    }
    runUntil([&] { return answer.has_value(); });
    constexpr const char* kFix =
        "file upload needs HTTPS to the hub too: check [file_upload] https_port and the "
        "firewall; meanwhile compare the clock by hand (timedatectl)";
    if (!answer) {
      add(warningResult("clock",
                        "no HTTPS answer from " + url + " within " +
                            std::to_string(o_.timeout.count() / 1000) + " s",
                        kFix));
      return;
    }
    if (!*answer) {
      add(warningResult("clock", "cannot read the hub's clock: " + answer->error().message, kFix));
      return;
    }
    auto date = (*answer)->header("date");
    auto hubTime = date ? parseHttpDate(*date) : std::nullopt;
    if (!hubTime) {
      add(warningResult("clock", url + " answered without a Date header", kFix));
      return;
    }
    add(judgeClock(*hubTime, arrived, url));
  }

  void expiry() {
    const auto& id = *identity_;
    if (id.authentication == AuthKind::X509 ||
        (!id.x509CertFile.empty() && id.sharedAccessKey.reveal().empty() &&
         id.sasToken.reveal().empty())) {
      certificateExpiry(id.x509CertFile);
      return;
    }
    if (!id.sasToken.reveal().empty()) {
      auto token = proto::parseSasToken(id.sasToken.reveal());
      if (!token) {
        add(errorResult("expiry", "the SAS token does not parse: " + token.error().message,
                        "supply a token made for this device"));
        return;
      }
      add(judgeSasTokenExpiry(token->expiry, static_cast<std::uint64_t>(now())));
      return;
    }
    add(okResult("expiry",
                 "SAS tokens are made from the device key and renewed before they expire "
                 "(sastoken_ttl " +
                     std::to_string(settings_->sastokenTtl) + " s)"));
  }

  void certificateExpiry(const std::string& file) {
    std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(file.c_str(), "re"), &std::fclose);
    X509* raw = f ? PEM_read_X509(f.get(), nullptr, nullptr, nullptr) : nullptr;
    std::unique_ptr<X509, void (*)(X509*)> cert(raw, &X509_free);
    std::tm before{};
    std::tm after{};
    if (!cert || ASN1_TIME_to_tm(X509_get0_notBefore(cert.get()), &before) != 1 ||
        ASN1_TIME_to_tm(X509_get0_notAfter(cert.get()), &after) != 1) {
      add(errorResult("expiry", "cannot read the device certificate " + file,
                      "x509-cert (or x509_cert_file) must be a PEM certificate"));
      return;
    }
    add(judgeCertificate(file, timegm(&before), timegm(&after), now()));
  }

  void daemon() {
    std::unique_ptr<BusClient> bus;
    try {
      bus = std::make_unique<BusClient>();
    } catch (const sdbus::Error& e) {
      add(errorResult("daemon", "cannot connect to the system bus: " + e.getMessage(),
                      "systemctl status dbus"));
      return;
    }
    try {
      if (!bus->daemonRunning()) {
        add(warningResult("daemon", "iothubd is not running",
                          "systemctl enable --now iothubd (once the checks above pass)"));
        return;
      }
      auto props = bus->properties();
      auto text = [&](const char* name) {
        auto it = props.find(name);
        const auto* s = it == props.end() ? nullptr : std::get_if<std::string>(&it->second);
        return s != nullptr ? *s : std::string();
      };
      auto pid = bus->pidOf(kBusName);
      std::string who = "iothubd " + text("Version") +
                        (pid ? " (pid " + std::to_string(*pid) + ")" : std::string());
      const std::string state = text("ConnectionState");
      if (!text("Version").empty() && text("Version") != IOTHUBD_VERSION) {
        add(warningResult(
            "daemon", who + " runs, but iothubctl and the installed files are " IOTHUBD_VERSION,
            "systemctl restart iothubd (the package was upgraded without a restart)"));
      } else if (state == "connected") {
        add(okResult("daemon",
                     who + " is connected to " + text("HostName") + " as " + text("DeviceId")));
      } else if (text("LastError").empty()) {
        add(warningResult("daemon", who + " is " + state,
                          state == "disconnected"
                              ? "an app's call (or auto_connect) connects it"
                              : "wait for it, or see journalctl -u iothubd -e"));
      } else {
        add(errorResult("daemon", who + " is " + state + ": " + text("LastError"),
                        "the checks above name the likely cause; journalctl -u iothubd -e"));
      }
    } catch (const sdbus::Error& e) {
      add(errorResult("daemon", describeError(e.getName(), e.getMessage()),
                      "run iothubctl check as root"));
    }
  }

  void outbox() {
    std::string path =
        settings_->outboxPath.empty() ? "/var/lib/iothubd/outbox.db" : settings_->outboxPath;
    FileSystemSpace space;
    space.directory = path.substr(0, path.rfind('/'));
    if (space.directory.empty()) {
      space.directory = "/";
    }
    struct statvfs vfs {};
    if (::statvfs(space.directory.c_str(), &vfs) != 0) {
      space.exists = false;
    } else {
      space.readOnly = (vfs.f_flag & ST_RDONLY) != 0;
      space.freeBytes = static_cast<std::uint64_t>(vfs.f_bavail) * vfs.f_frsize;
      space.freeInodes = vfs.f_favail;
    }
    add(judgeOutboxSpace(space, settings_->outboxMaxBytes));
  }

  void busPolicy() {
    const std::vector<std::string> dirs{"/etc/dbus-1/system.d", "/usr/share/dbus-1/system.d",
                                        std::string(IOTHUBD_DATADIR) + "/dbus-1/system.d"};
    for (const auto& dir : dirs) {
      std::ifstream in(dir + "/org.iothubd.conf");
      std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (!in.is_open() && text.empty()) {
        continue;
      }
      if (text.find("own=\"org.iothubd\"") == std::string::npos) {
        add(errorResult("bus-policy",
                        dir + "/org.iothubd.conf does not let iothubd own org.iothubd",
                        "apt install --reinstall iothubd (the package's policy file)"));
        return;
      }
      add(okResult("bus-policy", dir + "/org.iothubd.conf"));
      return;
    }
    add(errorResult("bus-policy", "no org.iothubd.conf in /etc/dbus-1/system.d or " + dirs[1],
                    "apt install --reinstall iothubd (then the bus reloads its policy by itself)"));
  }

  void accounts() {
    std::string missing;
    if (::getpwnam("iothubd") == nullptr) {
      missing += "user iothubd";
    }
    const group* apps = ::getgrnam("iothub");
    if (apps == nullptr) {
      missing += std::string(missing.empty() ? "" : ", ") + "group iothub";
    }
    if (!missing.empty()) {
      add(errorResult("accounts", missing + " missing",
                      "systemd-sysusers (the package's sysusers.d file creates them)"));
      return;
    }
    std::string members;
    for (char** m = apps->gr_mem; m != nullptr && *m != nullptr; ++m) {
      members += (members.empty() ? "" : ", ") + std::string(*m);
    }
    std::string text = "user iothubd and group iothub (members: " +
                       (members.empty() ? std::string("none yet") : members) + ") exist";
    if (::getgrnam("iothub-admin") == nullptr) {
      add(warningResult("accounts", text + "; group iothub-admin does not",
                        "systemd-sysusers (iothub-admin may call UpdateSasToken besides root)"));
      return;
    }
    add(okResult("accounts", text + ", and group iothub-admin"));
  }

  const CheckOptions& o_;
  std::vector<CheckResult>& results_;
  std::optional<config::Settings> settings_;
  std::optional<config::DeviceIdentity> identity_;
  core::ProxySettings proxy_;
  std::unique_ptr<loop::EventLoop> loop_;
  std::string hopHost_;
  int hopPort_ = 0;
  Resolved addresses_;
};

}  // namespace

std::vector<CheckResult> runChecks(const CheckOptions& options) {
  std::vector<CheckResult> results;
  try {
    Checker(options, results).run();
  } catch (const std::exception& e) {
    results.push_back(errorResult("internal", e.what(), "please report this"));
  }
  return results;
}

}  // namespace iothubd::ctl
