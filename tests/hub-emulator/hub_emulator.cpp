// SPDX-License-Identifier: MIT
#include "hub_emulator.hpp"

#include <mosquitto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <system_error>

#ifndef IOTHUBD_EMULATOR_PLUGIN_PATH
#define IOTHUBD_EMULATOR_PLUGIN_PATH ""
#endif

namespace iothubd::hubemu {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr std::string_view kEventPrefix = "$hubemu/evt/";
constexpr std::string_view kResponsePrefix = "$hubemu/res/";
constexpr std::chrono::seconds kStartTimeout{10};
constexpr std::chrono::seconds kStopTimeout{5};

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error("hub-emulator: " + what);
}

// ---- small RAII helpers ----------------------------------------------------------------------

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0)
      ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct X509Free {
  void operator()(X509* c) const { X509_free(c); }
};
struct ExtFree {
  void operator()(X509_EXTENSION* e) const { X509_EXTENSION_free(e); }
};
using FilePtr = std::unique_ptr<FILE, FileCloser>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;

// ---- encoding (kept separate from the plugin and from src/proto on purpose) -------------------

std::string b64Encode(const std::string& bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()),
                                static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::string b64Decode(const std::string& text) {
  if (text.empty() || text.size() % 4 != 0)
    fail("not base64: " + text);
  std::string out(text.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(text.data()),
                                static_cast<int>(text.size()));
  if (n < 0)
    fail("not base64: " + text);
  size_t pad = 0;
  for (auto it = text.rbegin(); it != text.rend() && *it == '='; ++it)
    ++pad;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

std::string pctEncode(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(ch);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

std::string pctDecode(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() &&
        std::isxdigit(static_cast<unsigned char>(text[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(text[i + 2]))) {
      out.push_back(static_cast<char>(std::stoi(std::string(text.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

// base64(HMAC-SHA256(base64-decode(key), data)): SAS signatures and derived device keys.
std::string hmacBase64(const std::string& base64Key, std::string_view data) {
  const std::string key = b64Decode(base64Key);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int macLen = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), mac, &macLen);
  return b64Encode(std::string(reinterpret_cast<char*>(mac), macLen));
}

std::string randomBytes(size_t n) {
  std::string bytes(n, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(bytes.data()), static_cast<int>(n)) != 1) {
    fail("RAND_bytes failed");
  }
  return bytes;
}

std::string randomHex(size_t n) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (const char c : randomBytes(n)) {
    out += kHex[static_cast<unsigned char>(c) >> 4];
    out += kHex[c & 15];
  }
  return out;
}

std::string readFile(const std::string& path, size_t offset = 0) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return {};
  in.seekg(static_cast<std::streamoff>(offset));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void writeFile(const std::string& path, const std::string& content, mode_t mode) {
  // Created with its final mode so that secrets are never briefly world-readable.
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
  if (fd.get() < 0)
    fail("cannot write " + path + ": " + std::strerror(errno));
  ::fchmod(fd.get(), mode);
  size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = ::write(fd.get(), content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      fail("cannot write " + path + ": " + std::strerror(errno));
    done += static_cast<size_t>(n);
  }
}

std::string makeTempDir(const char* prefix) {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/" + prefix + "-XXXXXX";
  if (!::mkdtemp(tmpl.data()))
    fail("mkdtemp " + tmpl + ": " + std::strerror(errno));
  // Traversable by others: the daemon under test may run as an unprivileged user and must be
  // able to open ca.crt. Secrets inside are 0600.
  ::chmod(tmpl.c_str(), 0755);
  return tmpl;
}

// ---- throwaway PKI, generated once per process -------------------------------------------------

void addExtension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  std::unique_ptr<X509_EXTENSION, ExtFree> ext(X509V3_EXT_nconf_nid(nullptr, &ctx, nid, value));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1)
    fail(std::string("extension ") + value);
}

enum class CertKind { Ca, Server, Client };

X509Ptr makeCertificate(EVP_PKEY* key, const char* commonName, X509* issuer, EVP_PKEY* issuerKey,
                        long serial, CertKind kind = CertKind::Server) {
  X509Ptr cert(X509_new());
  if (!cert)
    fail("X509_new");
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial);
  // Backdated an hour so that small clock differences never make it "not yet valid".
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 30L * 24 * 3600);
  X509_set_pubkey(cert.get(), key);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(commonName), -1, -1, 0);
  X509* signer = issuer ? issuer : cert.get();
  X509_set_issuer_name(cert.get(), X509_get_subject_name(signer));
  if (kind == CertKind::Client) {
    addExtension(cert.get(), signer, NID_basic_constraints, "CA:FALSE");
    addExtension(cert.get(), signer, NID_key_usage, "critical,digitalSignature,keyEncipherment");
    addExtension(cert.get(), signer, NID_ext_key_usage, "clientAuth");
  } else if (!issuer) {
    addExtension(cert.get(), signer, NID_basic_constraints, "critical,CA:TRUE");
    addExtension(cert.get(), signer, NID_key_usage, "critical,keyCertSign,cRLSign");
    addExtension(cert.get(), signer, NID_subject_key_identifier, "hash");
  } else {
    addExtension(cert.get(), signer, NID_basic_constraints, "CA:FALSE");
    addExtension(cert.get(), signer, NID_key_usage, "critical,digitalSignature,keyEncipherment");
    addExtension(cert.get(), signer, NID_ext_key_usage, "serverAuth");
    addExtension(cert.get(), signer, NID_subject_alt_name,
                 "DNS:localhost,IP:127.0.0.1,IP:127.0.0.2,IP:::1");
    addExtension(cert.get(), signer, NID_authority_key_identifier, "keyid");
  }
  if (X509_sign(cert.get(), issuerKey, EVP_sha256()) <= 0)
    fail("X509_sign");
  return cert;
}

void writePem(const std::string& path, X509* cert, EVP_PKEY* key,
              const std::string& passPhrase = "") {
  writeFile(path, "", key ? 0600 : 0644);
  FilePtr f(std::fopen(path.c_str(), "w"));
  if (!f)
    fail("cannot open " + path);
  auto* pass = reinterpret_cast<unsigned char*>(const_cast<char*>(passPhrase.data()));
  const int ok =
      key ? PEM_write_PrivateKey(f.get(), key, passPhrase.empty() ? nullptr : EVP_aes_256_cbc(),
                                 passPhrase.empty() ? nullptr : pass,
                                 static_cast<int>(passPhrase.size()), nullptr, nullptr)
          : PEM_write_X509(f.get(), cert);
  if (ok != 1)
    fail("cannot write " + path);
}

class ProcessPki {
 public:
  ProcessPki() : dir_(makeTempDir("hub-emulator-pki")) {
    caKey_.reset(EVP_EC_gen("P-256"));
    PkeyPtr serverKey(EVP_EC_gen("P-256"));
    PkeyPtr gatewayCaKey(EVP_EC_gen("P-256"));
    PkeyPtr gatewayKey(EVP_EC_gen("P-256"));
    if (!caKey_ || !serverKey || !gatewayCaKey || !gatewayKey)
      fail("EC key generation failed");
    serial_ = static_cast<long>(std::time(nullptr)) * 1000;
    ca_ = makeCertificate(caKey_.get(), "iothubd hub-emulator test CA", nullptr, caKey_.get(),
                          serial_++, CertKind::Ca);
    X509Ptr server =
        makeCertificate(serverKey.get(), "localhost", ca_.get(), caKey_.get(), serial_++);
    writePem(dir_ + "/ca.crt", ca_.get(), nullptr);
    writePem(dir_ + "/server.crt", server.get(), nullptr);
    writePem(dir_ + "/server.key", nullptr, serverKey.get());
    // The gateway's chain is unrelated to the hub's, as an IoT Edge CA would be.
    X509Ptr gatewayCa = makeCertificate(gatewayCaKey.get(), "iothubd hub-emulator gateway CA",
                                        nullptr, gatewayCaKey.get(), serial_++, CertKind::Ca);
    X509Ptr gateway = makeCertificate(gatewayKey.get(), "127.0.0.1", gatewayCa.get(),
                                      gatewayCaKey.get(), serial_++);
    writePem(dir_ + "/gateway-ca.crt", gatewayCa.get(), nullptr);
    writePem(dir_ + "/gateway.crt", gateway.get(), nullptr);
    writePem(dir_ + "/gateway.key", nullptr, gatewayKey.get());
  }

  void issueClient(const std::string& commonName, const std::string& certPath,
                   const std::string& keyPath, const std::string& passPhrase,
                   bool selfSigned) const {
    PkeyPtr key(EVP_EC_gen("P-256"));
    if (!key)
      fail("EC key generation failed");
    X509Ptr cert =
        makeCertificate(key.get(), commonName.c_str(), selfSigned ? nullptr : ca_.get(),
                        selfSigned ? key.get() : caKey_.get(), serial_++, CertKind::Client);
    writePem(certPath, cert.get(), nullptr);
    writePem(keyPath, nullptr, key.get(), passPhrase);
  }
  ~ProcessPki() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  PkeyPtr caKey_;
  X509Ptr ca_;
  mutable long serial_ = 0;
};

const ProcessPki& processPki() {
  static const ProcessPki pki;
  return pki;
}

// ---- process helpers ---------------------------------------------------------------------------

int freePort() {
  Fd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (s.get() < 0 || ::bind(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(s.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    fail(std::string("cannot pick a port: ") + std::strerror(errno));
  }
  return ntohs(addr.sin_port);
}

std::string mosquittoBinary() {
  if (const char* env = std::getenv("IOTHUBD_MOSQUITTO"); env && *env)
    return env;
  // /usr/sbin is often not in a non-root PATH.
  if (::access("/usr/sbin/mosquitto", X_OK) == 0)
    return "/usr/sbin/mosquitto";
  return "mosquitto";
}

// Waits for `pid` to exit within `timeout`; reaps it. Uses a pidfd so that the wait is an event,
// not a poll loop.
bool waitForExit(pid_t pid, std::chrono::milliseconds timeout, int* status = nullptr) {
  int st = 0;
  Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  const auto deadline = Clock::now() + timeout;
  while (true) {
    const pid_t r = ::waitpid(pid, &st, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD)) {
      if (status)
        *status = st;
      return true;
    }
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0)
      return false;
    pollfd p{pidfd.get(), POLLIN, 0};
    // Without a pidfd (old kernel) this degrades to a bounded 10 ms poll.
    ::poll(pidfd.get() >= 0 ? &p : nullptr, pidfd.get() >= 0 ? 1 : 0,
           pidfd.get() >= 0 ? static_cast<int>(left.count()) : 10);
  }
}

// ---- JSON helpers ------------------------------------------------------------------------------

class JsonArgs {
 public:
  JsonArgs() : writer_(buffer_) { writer_.StartObject(); }
  JsonArgs& str(const char* key, const std::string& value) {
    writer_.Key(key);
    writer_.String(value.c_str(), static_cast<rapidjson::SizeType>(value.size()));
    return *this;
  }
  JsonArgs& num(const char* key, int64_t value) {
    writer_.Key(key);
    writer_.Int64(value);
    return *this;
  }
  JsonArgs& boolean(const char* key, bool value) {
    writer_.Key(key);
    writer_.Bool(value);
    return *this;
  }
  JsonArgs& raw(const char* key, const std::string& json) {
    writer_.Key(key);
    writer_.RawValue(json.c_str(), json.size(), rapidjson::kObjectType);
    return *this;
  }
  JsonArgs& pairs(const char* key, const Properties& a, const Properties& b) {
    writer_.Key(key);
    writer_.StartArray();
    for (const Properties* list : {&a, &b}) {
      for (const auto& [k, v] : *list) {
        writer_.StartArray();
        writer_.String(k.c_str(), static_cast<rapidjson::SizeType>(k.size()));
        writer_.String(v.c_str(), static_cast<rapidjson::SizeType>(v.size()));
        writer_.EndArray();
      }
    }
    writer_.EndArray();
    return *this;
  }
  std::string done() {
    writer_.EndObject();
    return std::string(buffer_.GetString(), buffer_.GetSize());
  }

 private:
  rapidjson::StringBuffer buffer_;
  rapidjson::Writer<rapidjson::StringBuffer> writer_;
};

rapidjson::Document parseJson(const std::string& text) {
  rapidjson::Document doc;
  doc.Parse(text.c_str(), text.size());
  if (doc.HasParseError() || !doc.IsObject())
    fail("unexpected JSON from the emulator: " + text);
  return doc;
}

std::string memberString(const rapidjson::Value& v, const char* name) {
  const auto it = v.FindMember(name);
  return it != v.MemberEnd() && it->value.IsString()
             ? std::string(it->value.GetString(), it->value.GetStringLength())
             : std::string{};
}

int64_t memberInt(const rapidjson::Value& v, const char* name) {
  const auto it = v.FindMember(name);
  return it != v.MemberEnd() && it->value.IsInt64() ? it->value.GetInt64() : 0;
}

std::string toJson(const rapidjson::Value& value) {
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
  value.Accept(writer);
  return std::string(buffer.GetString(), buffer.GetSize());
}

}  // namespace

// ---- free functions ----------------------------------------------------------------------------

std::string defaultPluginPath() {
  if (const char* env = std::getenv("IOTHUBD_EMULATOR_PLUGIN"); env && *env)
    return env;
  return IOTHUBD_EMULATOR_PLUGIN_PATH;
}

std::string makeSasToken(const std::string& hubHost, const std::string& clientId,
                         const std::string& base64Key, int64_t expiryUnixSeconds) {
  const size_t slash = clientId.find('/');
  std::string resource = hubHost + "/devices/" + clientId.substr(0, slash);
  if (slash != std::string::npos)
    resource += "/modules/" + clientId.substr(slash + 1);
  const std::string sr = pctEncode(resource);
  const std::string se = std::to_string(expiryUnixSeconds);
  const std::string sig = hmacBase64(base64Key, sr + "\n" + se);
  return "SharedAccessSignature sr=" + sr + "&sig=" + pctEncode(sig) + "&se=" + se;
}

std::string makeDpsSasToken(const std::string& idScope, const std::string& registrationId,
                            const std::string& base64Key, int64_t expiryUnixSeconds,
                            const std::string& keyName) {
  const std::string sr = pctEncode(idScope + "/registrations/" + registrationId);
  const std::string se = std::to_string(expiryUnixSeconds);
  std::string token = "SharedAccessSignature sr=" + sr +
                      "&sig=" + pctEncode(hmacBase64(base64Key, sr + "\n" + se)) + "&se=" + se;
  if (!keyName.empty())
    token += "&skn=" + keyName;
  return token;
}

std::string makeDpsUsername(const std::string& idScope, const std::string& registrationId) {
  return idScope + "/registrations/" + registrationId + "/api-version=2019-03-31";
}

std::string deriveDeviceKey(const std::string& groupKeyBase64, const std::string& registrationId) {
  return hmacBase64(groupKeyBase64, registrationId);
}

std::string makeUsername(const std::string& hubHost, const std::string& clientId,
                         const std::string& apiVersion) {
  return hubHost + "/" + clientId + "/?api-version=" + pctEncode(apiVersion);
}

int freeLoopbackPort() {
  return freePort();
}

std::string makeTestDirectory(const char* prefix) {
  return makeTempDir(prefix);
}

std::string randomKey(size_t bytes) {
  return b64Encode(randomBytes(bytes));
}

Properties decodePropertyBag(std::string_view bag) {
  Properties out;
  while (!bag.empty()) {
    const size_t amp = bag.find('&');
    const std::string_view pair = bag.substr(0, amp);
    bag = amp == std::string_view::npos ? std::string_view{} : bag.substr(amp + 1);
    if (pair.empty())
      continue;
    const size_t eq = pair.find('=');
    out.emplace_back(pctDecode(pair.substr(0, eq)),
                     eq == std::string_view::npos ? std::string{} : pctDecode(pair.substr(eq + 1)));
  }
  return out;
}

std::optional<std::string> Telemetry::property(std::string_view key) const {
  for (const auto& [k, v] : properties) {
    if (k == key)
      return v;
  }
  return std::nullopt;
}

// ---- HubEmulator -------------------------------------------------------------------------------

HubEmulator::HubEmulator() : HubEmulator(Options{}) {}

HubEmulator::HubEmulator(Options options) : options_(std::move(options)) {
  if (options_.pluginPath.empty() || ::access(options_.pluginPath.c_str(), R_OK) != 0) {
    fail("plugin not found at '" + options_.pluginPath +
         "' (build it, or set IOTHUBD_EMULATOR_PLUGIN)");
  }
  dir_ = makeTempDir("hub-emulator");
  servicePassword_ = randomHex(16);
  const std::string& pki = processPki().dir();
  fs::copy_file(pki + "/ca.crt", dir_ + "/ca.crt");
  fs::copy_file(pki + "/server.crt", dir_ + "/server.crt");
  fs::copy_file(pki + "/server.key", dir_ + "/server.key");
  for (const char* name : {"gateway-ca.crt", "gateway.crt", "gateway.key"})
    fs::copy_file(pki + "/" + name, dir_ + "/" + name);
  ::chmod((dir_ + "/gateway-ca.crt").c_str(), 0644);
  ::chmod((dir_ + "/gateway.crt").c_str(), 0644);
  ::chmod((dir_ + "/gateway.key").c_str(), 0600);
  ::chmod((dir_ + "/ca.crt").c_str(), 0644);
  ::chmod((dir_ + "/server.crt").c_str(), 0644);
  ::chmod((dir_ + "/server.key").c_str(), 0600);
}

HubEmulator::~HubEmulator() {
  try {
    stop();
  } catch (const std::exception& e) {
    std::cerr << "hub-emulator: stop failed: " << e.what() << '\n';
  }
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

void HubEmulator::addDevice(const std::string& id, const std::string& base64Key) {
  if (id.empty() || id.find_first_of(" \t\n#") != std::string::npos)
    fail("bad device id '" + id + "'");
  b64Decode(base64Key);  // validates
  devices_[id] = base64Key;
}

std::string HubEmulator::addDevice(const std::string& id) {
  std::string key = randomKey();
  addDevice(id, key);
  return key;
}

std::string HubEmulator::deviceKey(const std::string& id) const {
  const auto it = devices_.find(id);
  if (it == devices_.end())
    fail("unknown device '" + id + "'");
  return it->second;
}

std::string HubEmulator::caFile() const {
  return dir_ + "/ca.crt";
}

std::string HubEmulator::gatewayCaFile() const {
  return dir_ + "/gateway-ca.crt";
}

void HubEmulator::issueClientCertificate(const std::string& commonName, const std::string& certPath,
                                         const std::string& keyPath, const std::string& passPhrase,
                                         bool selfSigned, int uid, int gid) const {
  processPki().issueClient(commonName, certPath, keyPath, passPhrase, selfSigned);
  for (const std::string& path : {certPath, keyPath}) {
    ::chmod(path.c_str(), 0600);
    if (uid >= 0 && ::chown(path.c_str(), static_cast<uid_t>(uid), static_cast<gid_t>(gid)) != 0)
      fail("cannot chown " + path + ": " + std::strerror(errno));
  }
}

std::string HubEmulator::brokerLog() const {
  std::string log = readFile(dir_ + "/broker.log");
  const std::string err = readFile(dir_ + "/broker.stderr");
  if (!err.empty())
    log += "--- mosquitto stderr ---\n" + err;
  return log;
}

void HubEmulator::printBrokerLog(std::ostream& os) const {
  os << "===== hub emulator broker log (" << dir_ << ") =====\n"
     << brokerLog() << "===== end of broker log =====\n";
}

void HubEmulator::printBrokerLogIf(bool failed) const {
  if (failed)
    printBrokerLog(std::cerr);
}

void HubEmulator::writeConfig() const {
  std::string registry = "# deviceId[/moduleId] base64-key\n";
  for (const auto& [id, key] : devices_)
    registry += id + " " + key + "\n";
  writeFile(dir_ + "/registry", registry, 0600);

  std::ostringstream conf;
  conf << "# generated by tests/hub-emulator (HubEmulator)\n"
       << "per_listener_settings false\n"
       << "allow_anonymous false\n"
       << "persistence false\n"
       << "set_tcp_nodelay true\n"
       << "log_dest file " << dir_ << "/broker.log\n"
       << (options_.logEveryPacket
               ? "log_type all\n"
               : "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n")
       << "log_timestamp_format %H:%M:%S\n"
       << "connection_messages true\n";
  // As root, mosquitto would switch to user "mosquitto", which cannot read this 0600 state.
  if (::geteuid() == 0)
    conf << "user root\n";
  std::vector<std::string> addresses;
  if (options_.listen != Options::Listen::Ipv6)
    addresses.emplace_back(options_.ipv4Address);
  if (options_.listen != Options::Listen::Ipv4)
    addresses.emplace_back("::1");
  conf << "plugin " << options_.pluginPath << "\n"
       << "plugin_opt_registry " << dir_ << "/registry\n"
       << "plugin_opt_hub_host " << options_.hubHost << "\n"
       << "plugin_opt_service_password " << servicePassword_ << "\n";
  for (const auto& [key, value] : options_.pluginOptions)
    conf << "plugin_opt_" << key << " " << value << "\n";
  if (options_.shaping) {
    // The plugin's front serves the hub's port with TLS and relays to a plain inner listener.
    std::string listen;
    for (const auto& a : addresses)
      listen += (listen.empty() ? "" : ",") + a;
    conf << "plugin_opt_front_port " << port_ << "\n"
         << "plugin_opt_front_backend_port " << innerPort_ << "\n"
         << "plugin_opt_front_listen " << listen << "\n"
         << "plugin_opt_front_cert " << dir_ << "/server.crt\n"
         << "plugin_opt_front_key " << dir_ << "/server.key\n"
         << "listener " << innerPort_ << " 127.0.0.1\n";
  } else {
    for (const auto& address : addresses) {
      conf << "listener " << port_ << " " << address << "\n"
           << "cafile " << dir_ << "/ca.crt\n"
           << "certfile " << dir_ << "/server.crt\n"
           << "keyfile " << dir_ << "/server.key\n";
    }
  }
  if (options_.x509Listener) {
    // The broker verifies the client chain against cafile; the plugin checks the subject CN.
    conf << "listener " << x509Port_ << " 127.0.0.1\n"
         << "cafile " << dir_ << "/ca.crt\n"
         << "certfile " << dir_ << "/server.crt\n"
         << "keyfile " << dir_ << "/server.key\n"
         << "require_certificate true\n"
         << "use_identity_as_username false\n";
  }
  if (options_.gatewayListener) {
    conf << "listener " << gatewayPort_ << " 127.0.0.1\n"
         << "certfile " << dir_ << "/gateway.crt\n"
         << "keyfile " << dir_ << "/gateway.key\n";
  }
  if (options_.websocketsListener) {
    conf << "listener " << websocketsPort_ << "\n"
         << "protocol websockets\n"
         << "certfile " << dir_ << "/server.crt\n"
         << "keyfile " << dir_ << "/server.key\n";
  }
  writeFile(dir_ + "/mosquitto.conf", conf.str(), 0600);
}

bool HubEmulator::launch() {
  const std::string logPath = dir_ + "/broker.log";
  const size_t logStart = readFile(logPath).size();
  const size_t errStart = readFile(dir_ + "/broker.stderr").size();
  // Watch the directory before starting so that the "running" line cannot slip past unseen.
  Fd inotify(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
  ::inotify_add_watch(inotify.get(), dir_.c_str(), IN_MODIFY | IN_CREATE);

  const std::string binary = mosquittoBinary();
  const std::string conf = dir_ + "/mosquitto.conf";
  const std::string errPath = dir_ + "/broker.stderr";
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0)
    fail(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    // Child: only async-signal-safe calls from here on.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // never outlive a crashed test
    if (::getppid() != parent)
      ::_exit(127);
    const int err = ::open(errPath.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (err >= 0) {
      ::dup2(err, STDOUT_FILENO);
      ::dup2(err, STDERR_FILENO);
    }
    ::execlp(binary.c_str(), binary.c_str(), "-c", conf.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  pid_ = pid;

  Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  const auto deadline = Clock::now() + kStartTimeout;
  while (true) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      pid_ = -1;
      const std::string out = readFile(logPath, logStart) + readFile(errPath, errStart);
      if (out.find("Address already in use") != std::string::npos)
        return false;
      fail("mosquitto exited during start-up (status " + std::to_string(status) + "):\n" + out);
    }
    if (readFile(logPath, logStart).find(" running") != std::string::npos)
      return true;
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      stop();
      fail("mosquitto did not come up within 10 s:\n" + brokerLog());
    }
    // Wakes on log writes or on the child's exit; 100 ms only bounds a missed inotify event.
    pollfd fds[2] = {{inotify.get(), POLLIN, 0}, {pidfd.get(), POLLIN, 0}};
    ::poll(fds, pidfd.get() >= 0 ? 2 : 1, static_cast<int>(std::min<int64_t>(left.count(), 100)));
    char drain[4096];
    while (::read(inotify.get(), drain, sizeof drain) > 0) {
    }
  }
}

void HubEmulator::start() {
  if (running())
    fail("already running");
  const bool keepPort = port_ != 0;  // restart: clients were configured with this port
  for (int attempt = 0; attempt < 8; ++attempt) {
    if (!keepPort) {
      port_ = options_.port != 0 ? options_.port : freePort();
      innerPort_ = options_.shaping ? freePort() : 0;
      x509Port_ = options_.x509Listener ? freePort() : 0;
      gatewayPort_ = options_.gatewayListener ? freePort() : 0;
      websocketsPort_ = options_.websocketsListener ? freePort() : 0;
    }
    writeConfig();
    if (launch())
      return;
  }
  fail("no free port after 8 attempts (last " + std::to_string(port_) + "):\n" + brokerLog());
}

void HubEmulator::stop() {
  if (pid_ <= 0)
    return;
  const pid_t pid = pid_;
  pid_ = -1;
  ::kill(pid, SIGTERM);
  if (!waitForExit(pid, kStopTimeout)) {
    ::kill(pid, SIGKILL);
    waitForExit(pid, kStopTimeout);
  }
}

void HubEmulator::restart() {
  stop();
  start();
}

// ---- ServiceClient -----------------------------------------------------------------------------

void ServiceClient::MosqDeleter::operator()(mosquitto* m) const {
  mosquitto_disconnect(m);
  // Not forced: disconnect ends the loop, and loop_stop interrupts a pending reconnect wait.
  mosquitto_loop_stop(m, false);
  mosquitto_destroy(m);
}

ServiceClient::ServiceClient(const HubEmulator& hub, Ms timeout)
    : ServiceClient(hub.hubHost(), hub.port(), hub.caFile(), hub.servicePassword(), timeout) {}

ServiceClient::ServiceClient(const std::string& host, int port, const std::string& caFile,
                             const std::string& password, Ms timeout) {
  static std::once_flag libInit;
  std::call_once(libInit, [] { mosquitto_lib_init(); });
  static std::atomic<int> counter{0};
  clientId_ = "service-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);

  mosq_.reset(mosquitto_new(clientId_.c_str(), true, this));
  if (!mosq_)
    fail("mosquitto_new failed");
  mosquitto* m = mosq_.get();
  mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
  mosquitto_username_pw_set(m, "service", password.c_str());
  if (int rc = mosquitto_tls_set(m, caFile.c_str(), nullptr, nullptr, nullptr, nullptr)) {
    fail(std::string("mosquitto_tls_set: ") + mosquitto_strerror(rc));
  }
  mosquitto_connect_callback_set(m, &ServiceClient::onConnect);
  mosquitto_subscribe_callback_set(m, &ServiceClient::onSubscribe);
  mosquitto_message_callback_set(m, &ServiceClient::onMessage);
  mosquitto_disconnect_callback_set(m, [](mosquitto*, void* self, int) {
    auto* client = static_cast<ServiceClient*>(self);
    std::lock_guard lock(client->mutex_);
    client->ready_ = false;
  });
  mosquitto_reconnect_delay_set(m, 1, 1, false);
  if (int rc = mosquitto_connect(m, host.c_str(), port, 30)) {
    fail("service connect to " + host + ":" + std::to_string(port) + ": " + mosquitto_strerror(rc));
  }
  if (int rc = mosquitto_loop_start(m))
    fail(std::string("loop_start: ") + mosquitto_strerror(rc));
  if (!waitReady(timeout)) {
    fail("service client not ready (CONNACK rc " + std::to_string(connectRc_) + ")");
  }
}

ServiceClient::~ServiceClient() = default;

void ServiceClient::onConnect(mosquitto* m, void* self, int rc) {
  auto* client = static_cast<ServiceClient*>(self);
  std::lock_guard lock(client->mutex_);
  client->connectRc_ = rc;
  if (rc == 0) {
    // Clean session: subscribe on every (re)connect.
    static char t1[] = "devices/+/messages/events/#";
    static char t2[] = "devices/+/modules/+/messages/events/#";
    static char t3[] = "$hubemu/evt/#";
    char* topics[] = {t1, t2, t3};
    int mid = 0;
    if (mosquitto_subscribe_multiple(m, &mid, 3, topics, 1, 0, nullptr) == MOSQ_ERR_SUCCESS) {
      client->subscribeMid_ = mid;
    }
  }
  client->cv_.notify_all();
}

void ServiceClient::onSubscribe(mosquitto*, void* self, int mid, int, const int*) {
  auto* client = static_cast<ServiceClient*>(self);
  std::lock_guard lock(client->mutex_);
  if (mid == client->subscribeMid_)
    client->ready_ = true;
  client->cv_.notify_all();
}

void ServiceClient::onMessage(mosquitto*, void* self, const mosquitto_message* msg) {
  auto* client = static_cast<ServiceClient*>(self);
  try {
    client->handleMessage(msg->topic, std::string(static_cast<const char*>(msg->payload),
                                                  static_cast<size_t>(msg->payloadlen)));
  } catch (const std::exception& e) {
    // Never let an exception unwind into libmosquitto's thread.
    std::cerr << "hub-emulator service client: " << e.what() << '\n';
  }
}

void ServiceClient::handleMessage(const std::string& topic, std::string payload) {
  std::lock_guard lock(mutex_);
  if (topic.starts_with(kResponsePrefix)) {
    responses_[topic.substr(topic.rfind('/') + 1)] = std::move(payload);
  } else if (topic.starts_with(kEventPrefix)) {
    EventEntry e;
    e.value.type = topic.substr(kEventPrefix.size());
    rapidjson::Document doc;
    doc.Parse(payload.c_str(), payload.size());
    if (!doc.HasParseError() && doc.IsObject())
      e.value.device = memberString(doc, "device");
    e.value.json = std::move(payload);
    events_.push_back(std::move(e));
  } else {
    // devices/{d}/messages/events/{bag} or devices/{d}/modules/{m}/messages/events/{bag}
    TelemetryEntry t;
    t.value.topic = topic;
    t.value.payload = std::move(payload);
    const std::string_view rest =
        std::string_view(topic).substr(std::string_view("devices/").size());
    const size_t marker = rest.find("/messages/events");
    if (marker != std::string_view::npos) {
      std::string id(rest.substr(0, marker));
      if (const size_t mod = id.find("/modules/"); mod != std::string::npos) {
        id = id.substr(0, mod) + "/" + id.substr(mod + 9);
      }
      t.value.device = id;
      const std::string_view tail =
          rest.substr(marker + std::string_view("/messages/events").size());
      if (!tail.empty())
        t.value.properties = decodePropertyBag(tail.substr(1));
    }
    telemetry_.push_back(std::move(t));
  }
  cv_.notify_all();
}

bool ServiceClient::waitReady(Ms timeout) {
  std::unique_lock lock(mutex_);
  return cv_.wait_for(lock, timeout, [&] { return ready_ || connectRc_ > 0; }) && ready_;
}

std::optional<Telemetry> ServiceClient::waitForTelemetry(
    std::function<bool(const Telemetry&)> predicate, Ms timeout) {
  std::unique_lock lock(mutex_);
  std::optional<Telemetry> found;
  cv_.wait_for(lock, timeout, [&] {
    for (auto& entry : telemetry_) {
      if (!entry.taken && (!predicate || predicate(entry.value))) {
        entry.taken = true;
        found = entry.value;
        return true;
      }
    }
    return false;
  });
  return found;
}

std::vector<Telemetry> ServiceClient::telemetry() const {
  std::lock_guard lock(mutex_);
  std::vector<Telemetry> out;
  for (const auto& entry : telemetry_)
    out.push_back(entry.value);
  return out;
}

std::optional<HubEvent> ServiceClient::takeEvent(const std::string& type, const std::string& device,
                                                 const std::string& rid, Ms timeout) {
  std::unique_lock lock(mutex_);
  std::optional<HubEvent> found;
  cv_.wait_for(lock, timeout, [&] {
    for (auto& entry : events_) {
      if (entry.taken || entry.value.type != type)
        continue;
      if (!device.empty() && entry.value.device != device)
        continue;
      if (!rid.empty() && memberString(parseJson(entry.value.json), "rid") != rid)
        continue;
      entry.taken = true;
      found = entry.value;
      return true;
    }
    return false;
  });
  return found;
}

std::optional<HubEvent> ServiceClient::waitForEvent(const std::string& type,
                                                    const std::string& device, Ms timeout) {
  return takeEvent(type, device, "", timeout);
}

std::vector<HubEvent> ServiceClient::events(const std::string& type,
                                            const std::string& device) const {
  std::lock_guard lock(mutex_);
  std::vector<HubEvent> out;
  for (const auto& entry : events_) {
    if (entry.value.type == type && (device.empty() || entry.value.device == device)) {
      out.push_back(entry.value);
    }
  }
  return out;
}

AuthEvent ServiceClient::toAuthEvent(const HubEvent& event) {
  const rapidjson::Document doc = parseJson(event.json);
  AuthEvent a;
  a.device = event.device;
  a.method = memberString(doc, "method");
  a.username = memberString(doc, "username");
  a.se = memberInt(doc, "se");
  a.authTimeMs = memberInt(doc, "authTimeMs");
  a.expiresAtMs = memberInt(doc, "expiresAtMs");
  const auto capped = doc.FindMember("capped");
  a.capped = capped != doc.MemberEnd() && capped->value.IsBool() && capped->value.GetBool();
  const auto clean = doc.FindMember("cleanSession");
  a.cleanSession = clean != doc.MemberEnd() && clean->value.IsBool() && clean->value.GetBool();
  return a;
}

std::optional<AuthEvent> ServiceClient::waitForAuth(const std::string& device, Ms timeout) {
  auto event = takeEvent("auth", device, "", timeout);
  if (!event)
    return std::nullopt;
  return toAuthEvent(*event);
}

bool ServiceClient::waitForAuthCount(const std::string& device, size_t count, Ms timeout) {
  std::unique_lock lock(mutex_);
  return cv_.wait_for(lock, timeout, [&] {
    size_t n = 0;
    for (const auto& entry : events_) {
      n += entry.value.type == "auth" && entry.value.device == device;
    }
    return n >= count;
  });
}

std::vector<AuthEvent> ServiceClient::authEvents(const std::string& device) const {
  std::vector<AuthEvent> out;
  for (const auto& event : events("auth", device))
    out.push_back(toAuthEvent(event));
  return out;
}

size_t ServiceClient::authCount(const std::string& device) const {
  return events("auth", device).size();
}

std::optional<HubEvent> ServiceClient::waitForDisconnect(const std::string& device, Ms timeout) {
  return takeEvent("disconnect", device, "", timeout);
}

size_t ServiceClient::disconnectCount(const std::string& device) const {
  return events("disconnect", device).size();
}

void ServiceClient::publish(const std::string& topic, const std::string& payload) {
  const int rc = mosquitto_publish(mosq_.get(), nullptr, topic.c_str(),
                                   static_cast<int>(payload.size()), payload.data(), 1, false);
  if (rc != MOSQ_ERR_SUCCESS)
    fail("publish " + topic + ": " + mosquitto_strerror(rc));
}

std::string ServiceClient::request(const std::string& command, const std::string& argsJson,
                                   Ms timeout, bool allowError) {
  std::string rid;
  {
    std::lock_guard lock(mutex_);
    rid = "r" + std::to_string(nextRid_++);
  }
  publish("$hubemu/req/" + command + "/" + rid, argsJson);
  std::unique_lock lock(mutex_);
  if (!cv_.wait_for(lock, timeout, [&] { return responses_.contains(rid); })) {
    fail("no response to '" + command + "' within " + std::to_string(timeout.count()) + " ms");
  }
  std::string response = std::move(responses_[rid]);
  responses_.erase(rid);
  lock.unlock();
  if (!allowError && memberInt(parseJson(response), "status") != 200) {
    fail("'" + command + "' failed: " + response);
  }
  return response;
}

MethodResult ServiceClient::invokeMethod(const std::string& device, const std::string& name,
                                         const std::string& payloadJson, Ms timeout) {
  std::string rid;
  {
    std::lock_guard lock(mutex_);
    rid = "m" + std::to_string(nextRid_++);
  }
  const std::string response = request("invoke-method",
                                       JsonArgs()
                                           .str("device", device)
                                           .str("method", name)
                                           .str("rid", rid)
                                           .raw("payload", payloadJson)
                                           .num("timeoutMs", timeout.count())
                                           .done(),
                                       kDefaultTimeout, true);
  const rapidjson::Document doc = parseJson(response);
  const int64_t status = memberInt(doc, "status");
  if (status == 404) {
    takeEvent("method-response", device, rid, Ms{0});  // consume the matching 404 event
    rapidjson::Document body(rapidjson::kObjectType);
    const std::string error = memberString(doc, "error");
    body.AddMember("message", rapidjson::Value(error.c_str(), body.GetAllocator()),
                   body.GetAllocator());
    return {404, toJson(body)};
  }
  if (status != 200)
    fail("invoke-method failed: " + response);
  // The hub itself answers 504 once `timeout` passed; the margin covers its TICK granularity.
  const auto event = takeEvent("method-response", device, rid, timeout + kDefaultTimeout);
  if (!event)
    fail("no answer from the hub to method '" + name + "' (rid " + rid + ")");
  const rapidjson::Document ev = parseJson(event->json);
  return {static_cast<int>(memberInt(ev, "status")), memberString(ev, "payload")};
}

int64_t ServiceClient::patchDesired(const std::string& device, const std::string& patchJson) {
  const std::string response = request(
      "twin-patch-desired", JsonArgs().str("device", device).raw("patch", patchJson).done());
  return memberInt(parseJson(response), "version");
}

std::string ServiceClient::getTwin(const std::string& device) {
  const rapidjson::Document doc =
      parseJson(request("twin-get", JsonArgs().str("device", device).done()));
  const auto twin = doc.FindMember("twin");
  if (twin == doc.MemberEnd())
    fail("twin-get without twin");
  return toJson(twin->value);
}

void ServiceClient::sendC2d(const std::string& device, const std::string& body,
                            const Properties& systemProperties,
                            const Properties& customProperties) {
  request("c2d", JsonArgs()
                     .str("device", device)
                     .str("bodyBase64", b64Encode(body))
                     .pairs("properties", systemProperties, customProperties)
                     .done());
}

void ServiceClient::delayPuback(const std::string& device, Ms delay, int count) {
  request("delay-puback",
          JsonArgs().str("device", device).num("ms", delay.count()).num("count", count).done());
}

void ServiceClient::dropConnection(const std::string& device) {
  request("drop", JsonArgs().str("device", device).done());
}

void ServiceClient::refuseConnects(const std::string& device, int count, bool closeWithoutConnack) {
  request("refuse-connects", JsonArgs()
                                 .str("device", device)
                                 .num("count", count)
                                 .num("close", closeWithoutConnack ? 1 : 0)
                                 .done());
}

void ServiceClient::twinFault(const std::string& device, const TwinFault& fault) {
  request("twin-fault", JsonArgs()
                            .str("device", device)
                            .num("delayMs", fault.delay.count())
                            .num("status", fault.status)
                            .num("count", fault.count)
                            .done());
}

void ServiceClient::capTokenLifetime(const std::string& device, std::chrono::seconds lifetime) {
  JsonArgs args;
  if (!device.empty())
    args.str("device", device);
  request("cap-token-lifetime", args.num("seconds", lifetime.count()).done());
}

void ServiceClient::throttle(const std::string& device, Ms delay) {
  request("throttle", JsonArgs().str("device", device).num("pubackDelayMs", delay.count()).done());
}

std::string ServiceClient::setBehaviour(const HubBehaviour& b) {
  JsonArgs args;
  if (b.strictTopics)
    args.boolean("strictTopics", *b.strictTopics);
  if (b.twinLimits)
    args.boolean("twinLimits", *b.twinLimits);
  if (b.connectsPerSecond)
    args.num("connectsPerSecond", *b.connectsPerSecond);
  if (b.clockOffset)
    args.num("clockOffsetMs", b.clockOffset->count());
  if (b.subackDelay)
    args.num("subackDelayMs", b.subackDelay->count());
  return request("behaviour", args.done());
}

void ServiceClient::clearFaults(const std::string& device) {
  JsonArgs args;
  if (!device.empty())
    args.str("device", device);
  request("clear-faults", args.done());
}

Ledger ServiceClient::ledger(const std::string& device) {
  const rapidjson::Document doc =
      parseJson(request("ledger", JsonArgs().str("device", device).done()));
  Ledger ledger;
  const auto devices = doc.FindMember("devices");
  if (devices == doc.MemberEnd() || !devices->value.IsObject())
    return ledger;
  const auto entry = devices->value.FindMember(device.c_str());
  if (entry == devices->value.MemberEnd())
    return ledger;
  ledger.total = memberInt(entry->value, "total");
  ledger.withoutId = memberInt(entry->value, "withoutId");
  ledger.duplicates = memberInt(entry->value, "duplicates");
  if (const auto ids = entry->value.FindMember("ids"); ids != entry->value.MemberEnd()) {
    for (auto it = ids->value.MemberBegin(); it != ids->value.MemberEnd(); ++it) {
      ledger.ids[it->name.GetString()] = it->value.GetInt64();
    }
  }
  return ledger;
}

void ServiceClient::clearLedger(const std::string& device) {
  JsonArgs args;
  if (!device.empty())
    args.str("device", device);
  request("ledger-clear", args.done());
}

std::vector<std::string> ServiceClient::connectedDevices() {
  const rapidjson::Document doc = parseJson(request("status"));
  std::vector<std::string> out;
  if (const auto c = doc.FindMember("connected"); c != doc.MemberEnd() && c->value.IsArray()) {
    for (const auto& v : c->value.GetArray())
      out.emplace_back(v.GetString());
  }
  return out;
}

void ServiceClient::registerDevice(const std::string& device, const std::string& base64Key) {
  request("register-device", JsonArgs().str("device", device).str("key", base64Key).done());
}

}  // namespace iothubd::hubemu
