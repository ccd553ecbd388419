// SPDX-License-Identifier: MIT
#include "file_upload_hub.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/rand.h>
#include <rapidjson/document.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>

#include "hub_emulator.hpp"
#include "iothubd/core/unique_fd.hpp"

#ifndef IOTHUBD_FILE_UPLOAD_HUB_SCRIPT
#define IOTHUBD_FILE_UPLOAD_HUB_SCRIPT ""
#endif
#ifndef IOTHUBD_AZURITE_DEFAULT
#define IOTHUBD_AZURITE_DEFAULT ""
#endif

namespace iothubd::hubemu {
namespace {

namespace fs = std::filesystem;
using SteadyClock = std::chrono::steady_clock;

constexpr std::chrono::seconds kStartTimeout{30};
constexpr std::chrono::seconds kStopTimeout{5};
constexpr int kStartAttempts = 5;

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error("file-upload emulator: " + what);
}

using Fd = core::UniqueFd;

std::string randomHex(std::size_t n) {
  std::string bytes(n, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(bytes.data()), static_cast<int>(n)) != 1) {
    fail("RAND_bytes failed");
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (char c : bytes) {
    out += kHex[static_cast<unsigned char>(c) >> 4];
    out += kHex[c & 15];
  }
  return out;
}

std::string readAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

rapidjson::Document parse(const std::string& text) {
  rapidjson::Document doc;
  doc.Parse(text.c_str(), text.size());
  if (doc.HasParseError() || !doc.IsObject())
    fail("unexpected control answer: " + text);
  return doc;
}

std::string str(const rapidjson::Value& v, const char* name) {
  auto it = v.FindMember(name);
  return it != v.MemberEnd() && it->value.IsString()
             ? std::string(it->value.GetString(), it->value.GetStringLength())
             : std::string();
}

std::int64_t num(const rapidjson::Value& v, const char* name) {
  auto it = v.FindMember(name);
  return it != v.MemberEnd() && it->value.IsInt64() ? it->value.GetInt64() : 0;
}

bool flag(const rapidjson::Value& v, const char* name) {
  auto it = v.FindMember(name);
  return it != v.MemberEnd() && it->value.IsBool() && it->value.GetBool();
}

std::size_t collect(char* data, std::size_t size, std::size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

std::string urlEncode(const std::string& text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

}  // namespace

// ---- ChildProcess -------------------------------------------------------------------------------

ChildProcess::ChildProcess(std::vector<std::string> argv, std::string logPath)
    : argv_(std::move(argv)), logPath_(std::move(logPath)) {}

ChildProcess::~ChildProcess() {
  stop();
}

void ChildProcess::start() {
  const int log = ::open(logPath_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (log < 0)
    fail("cannot open " + logPath_ + ": " + std::strerror(errno));
  std::vector<char*> args;
  for (auto& a : argv_)
    args.push_back(a.data());
  args.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(log);
    fail(std::string("fork: ") + std::strerror(errno));
  }
  if (pid == 0) {
    // The child dies with the test process, so a crashed test leaves nothing running.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent)
      ::_exit(127);
    const int null = ::open("/dev/null", O_RDONLY);
    ::dup2(null, 0);
    ::dup2(log, 1);
    ::dup2(log, 2);
    ::setpgid(0, 0);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(log);
  pid_ = pid;
}

std::optional<std::string> ChildProcess::waitForLine(const std::string& needle,
                                                     std::chrono::milliseconds timeout) {
  Fd inotify(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
  ::inotify_add_watch(inotify.get(), logPath_.c_str(), IN_MODIFY);
  Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0)));
  const auto deadline = SteadyClock::now() + timeout;
  while (true) {
    // Read after arming the watch, so no write between the two is missed.
    const std::string text = readAll(logPath_);
    if (const std::size_t at = text.find(needle); at != std::string::npos) {
      const std::size_t begin = text.rfind('\n', at);
      const std::size_t end = text.find('\n', at);
      return text.substr(begin == std::string::npos ? 0 : begin + 1,
                         end == std::string::npos
                             ? std::string::npos
                             : end - (begin == std::string::npos ? 0 : begin + 1));
    }
    int status = 0;
    if (pid_ <= 0 || ::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return std::nullopt;
    }
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now());
    if (left.count() <= 0)
      return std::nullopt;
    pollfd fds[2] = {{inotify.get(), POLLIN, 0}, {pidfd.get(), POLLIN, 0}};
    ::poll(fds, 2, static_cast<int>(left.count()));
    char drain[4096];
    while (::read(inotify.get(), drain, sizeof drain) > 0) {
    }
  }
}

void ChildProcess::stop() {
  if (pid_ <= 0)
    return;
  Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0)));
  ::kill(-pid_, SIGTERM);  // the whole group: npm's node wrapper and the server
  ::kill(pid_, SIGTERM);
  pollfd p{pidfd.get(), POLLIN, 0};
  ::poll(&p, 1, static_cast<int>(std::chrono::milliseconds(kStopTimeout).count()));
  int status = 0;
  if (::waitpid(pid_, &status, WNOHANG) != pid_) {
    ::kill(-pid_, SIGKILL);
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status, 0);
  }
  pid_ = -1;
}

std::string ChildProcess::log() const {
  return readAll(logPath_);
}

// ---- Azurite ------------------------------------------------------------------------------------

std::string defaultAzuritePath() {
  if (const char* env = std::getenv("IOTHUBD_AZURITE"); env && *env)
    return env;
  return IOTHUBD_AZURITE_DEFAULT;
}

Azurite::Azurite(std::string pkiDir, std::string binary)
    : pkiDir_(std::move(pkiDir)), binary_(std::move(binary)), dir_(makeTestDirectory("azurite")) {
  if (binary_.empty() || ::access(binary_.c_str(), X_OK) != 0) {
    fail("azurite not found at '" + binary_ +
         "': run `npm ci` in tests/ (scripts/test does) or set IOTHUBD_AZURITE");
  }
}

Azurite::~Azurite() {
  stop();
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

void Azurite::start() {
  for (int attempt = 0; attempt < kStartAttempts; ++attempt) {
    port_ = freeLoopbackPort();
    process_ = std::make_unique<ChildProcess>(
        std::vector<std::string>{binary_, "--blobHost", "127.0.0.1", "--blobPort",
                                 std::to_string(port_), "--inMemoryPersistence", "--loose",
                                 "--skipApiVersionCheck", "--disableTelemetry", "--cert",
                                 pkiDir_ + "/server.crt", "--key", pkiDir_ + "/server.key"},
        dir_ + "/azurite.log");
    process_->start();
    if (process_->waitForLine("successfully listens on https://127.0.0.1:" + std::to_string(port_),
                              kStartTimeout)) {
      return;
    }
    const std::string log = process_->log();
    process_->stop();
    if (log.find("EADDRINUSE") == std::string::npos)
      fail("Azurite did not start:\n" + log);
  }
  fail("Azurite found no free port");
}

void Azurite::stop() {
  if (process_)
    process_->stop();
}

bool Azurite::running() const {
  return process_ && process_->running();
}

std::string Azurite::log() const {
  return process_ ? process_->log() : std::string();
}

// ---- FileUploadHub ------------------------------------------------------------------------------

FileUploadHub::FileUploadHub(const HubEmulator& hub, const Azurite* azurite)
    : FileUploadHub(hub.dir(), azurite) {
  registryPath_ = hub.dir() + "/registry";
  hubHost_ = hub.hubHost();  // tokens name the hub the MQTT side plays
}

FileUploadHub::FileUploadHub(std::string pkiDir, const Azurite* azurite)
    : pkiDir_(std::move(pkiDir)),
      azurite_(azurite),
      dir_(makeTestDirectory("file-upload-hub")),
      password_(randomHex(16)) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
}

FileUploadHub::~FileUploadHub() {
  stop();
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

void FileUploadHub::start() {
  std::vector<std::string> argv{"/usr/bin/python3",
                                IOTHUBD_FILE_UPLOAD_HUB_SCRIPT,
                                "--cert",
                                pkiDir_ + "/server.crt",
                                "--key",
                                pkiDir_ + "/server.key",
                                "--ca",
                                pkiDir_ + "/ca.crt",
                                "--control-password",
                                password_};
  if (!registryPath_.empty()) {
    argv.insert(argv.end(), {"--registry", registryPath_, "--hub-host", hubHost_});
  }
  if (azurite_ != nullptr) {
    argv.insert(argv.end(),
                {"--storage", "localhost:" + std::to_string(azurite_->port()), "--account",
                 Azurite::kAccount, "--account-key", Azurite::kAccountKey});
  }
  process_ = std::make_unique<ChildProcess>(argv, dir_ + "/hub.log");
  process_->start();
  auto line = process_->waitForLine("file-upload-hub listening on port ", kStartTimeout);
  if (!line)
    fail("the file-upload hub did not start:\n" + process_->log());
  port_ = std::stoi(line->substr(line->rfind(' ') + 1));
}

void FileUploadHub::stop() {
  if (process_)
    process_->stop();
}

std::string FileUploadHub::log() const {
  return process_ ? process_->log() : std::string();
}

std::string FileUploadHub::control(const std::string& method, const std::string& path,
                                   const std::string& body, long* status) {
  std::unique_ptr<CURL, void (*)(CURL*)> curl(curl_easy_init(), curl_easy_cleanup);
  if (!curl)
    fail("curl_easy_init");
  std::string url = baseUrl() + path;
  std::string response;
  curl_slist* headers = nullptr;
  headers = curl_slist_append(headers, ("x-emulator-password: " + password_).c_str());
  headers = curl_slist_append(headers, "Content-Type: application/json");
  std::unique_ptr<curl_slist, void (*)(curl_slist*)> headerList(headers, curl_slist_free_all);
  curl_easy_setopt(curl.get(), CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl.get(), CURLOPT_CAINFO, caFile().c_str());
  curl_easy_setopt(curl.get(), CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl.get(), CURLOPT_CUSTOMREQUEST, method.c_str());
  curl_easy_setopt(curl.get(), CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl.get(), CURLOPT_TIMEOUT, 120L);
  if (method == "POST" || method == "PUT") {
    curl_easy_setopt(curl.get(), CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(curl.get(), CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  }
  curl_easy_setopt(curl.get(), CURLOPT_WRITEFUNCTION, &collect);
  curl_easy_setopt(curl.get(), CURLOPT_WRITEDATA, &response);
  const CURLcode rc = curl_easy_perform(curl.get());
  if (rc != CURLE_OK)
    fail(method + " " + path + ": " + curl_easy_strerror(rc));
  long code = 0;
  curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &code);
  if (status != nullptr) {
    *status = code;
  } else if (code != 200) {
    fail(method + " " + path + ": HTTP " + std::to_string(code) + " " + response);
  }
  return response;
}

void FileUploadHub::setFaults(const std::string& json) {
  control("POST", "/_emu/faults", json);
}

std::vector<UploadNotificationRecord> FileUploadHub::notifications() {
  auto doc = parse(control("GET", "/_emu/notifications"));
  std::vector<UploadNotificationRecord> out;
  for (const auto& n : doc["notifications"].GetArray()) {
    out.push_back({str(n, "device"), str(n, "correlationId"), flag(n, "isSuccess"),
                   static_cast<int>(num(n, "statusCode")), str(n, "statusDescription"),
                   str(n, "blobName"), flag(n, "known")});
  }
  return out;
}

std::vector<HubRequestRecord> FileUploadHub::hubRequests() {
  auto doc = parse(control("GET", "/_emu/hub-requests"));
  std::vector<HubRequestRecord> out;
  for (const auto& r : doc["requests"].GetArray()) {
    out.push_back(
        {str(r, "kind"), str(r, "device"), static_cast<int>(num(r, "status")), str(r, "reason")});
  }
  return out;
}

int FileUploadHub::activeUploads(const std::string& device) {
  auto doc = parse(control("GET", "/_emu/active-uploads"));
  const auto& devices = doc["devices"];
  const auto it = devices.FindMember(device.c_str());
  return it == devices.MemberEnd() ? 0 : it->value.GetInt();
}

BlobRecord FileUploadHub::blob(const std::string& name) {
  auto doc = parse(control("GET", "/_emu/blob?name=" + urlEncode(name)));
  return {flag(doc, "exists"), static_cast<std::uint64_t>(num(doc, "size")), str(doc, "sha256"),
          str(doc, "blobType")};
}

std::string FileUploadHub::uploadUrl(const std::string& name) {
  return str(parse(control("GET", "/_emu/upload-url?name=" + urlEncode(name))), "url");
}

}  // namespace iothubd::hubemu
