// SPDX-License-Identifier: MIT
#include "bus_peer.hpp"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

namespace iothubd::testing {
namespace {

std::string toJson(const rapidjson::Value& v) {
  rapidjson::StringBuffer out;
  rapidjson::Writer<rapidjson::StringBuffer> w(out);
  v.Accept(w);
  return out.GetString();
}

std::string str(const rapidjson::Value& object, const char* name) {
  return object.HasMember(name) && object[name].IsString() ? object[name].GetString() : "";
}

int run(const std::vector<std::string>& argv) {
  std::string cmd;
  for (const auto& a : argv) {
    cmd += "'" + a + "' ";
  }
  return std::system((cmd + ">/dev/null 2>&1").c_str());
}

}  // namespace

std::string testPeerBinary() {
  const char* p = std::getenv("IOTHUBD_TEST_PEER");
  if (p == nullptr || *p == '\0') {
    throw std::runtime_error("IOTHUBD_TEST_PEER is not set (run the tests with meson test)");
  }
  return p;
}

std::string jsonQuote(const std::string& text) {
  rapidjson::StringBuffer out;
  rapidjson::Writer<rapidjson::StringBuffer> w(out);
  w.String(text.data(), static_cast<rapidjson::SizeType>(text.size()));
  return out.GetString();
}

void ensureTestUsers() {
  for (const char* group : {"iothub", "iothub-admin"}) {
    if (::getgrnam(group) == nullptr && run({"groupadd", "--system", group}) != 0) {
      throw std::runtime_error(std::string("cannot create group ") + group);
    }
  }
  const std::pair<const char*, const char*> users[] = {
      {kMemberUser, "iothub"}, {kOutsiderUser, ""}, {kAdminUser, "iothub-admin"}};
  for (const auto& [user, group] : users) {
    if (::getpwnam(user) != nullptr) {
      continue;
    }
    std::vector<std::string> argv = {"useradd",      "--system", "--no-create-home", "--home-dir",
                                     "/nonexistent", "--shell",  "/usr/sbin/nologin"};
    if (*group != '\0') {
      argv.insert(argv.end(), {"--groups", group});
    }
    argv.emplace_back(user);
    if (run(argv) != 0) {
      throw std::runtime_error(std::string("cannot create user ") + user +
                               " (scripts/test creates it: ensure_test_users)");
    }
  }
}

std::string PeerReply::firstString() const {
  rapidjson::Document d;
  d.Parse(json.c_str());
  if (!d.HasParseError() && d.IsArray() && !d.Empty() && d[0].IsString()) {
    return d[0].GetString();
  }
  return {};
}

BusPeer::BusPeer(const std::string& address, const std::string& user, const std::string& helper)
    : user_(user) {
  // Everything the child needs is looked up here: after fork() in a threaded process only
  // async-signal-safe calls are safe.
  passwd* pw = ::getpwnam(user.c_str());
  if (pw == nullptr) {
    throw std::runtime_error("no user " + user + " (scripts/test creates it)");
  }
  const uid_t uid = pw->pw_uid;
  const gid_t gid = pw->pw_gid;
  int count = 64;
  std::vector<gid_t> groups(static_cast<std::size_t>(count));
  if (::getgrouplist(user.c_str(), gid, groups.data(), &count) < 0) {
    throw std::runtime_error("too many groups for " + user);
  }
  groups.resize(static_cast<std::size_t>(count));
  int in[2];
  int out[2];
  if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) {
    throw std::runtime_error("pipe failed");
  }
  std::vector<char*> argv = {const_cast<char*>(helper.c_str()), const_cast<char*>(address.c_str()),
                             nullptr};
  pid_ = ::fork();
  if (pid_ < 0) {
    throw std::runtime_error("fork failed");
  }
  if (pid_ == 0) {
    ::dup2(in[0], STDIN_FILENO);
    ::dup2(out[1], STDOUT_FILENO);
    if (::setgroups(groups.size(), groups.data()) != 0 || ::setresgid(gid, gid, gid) != 0 ||
        ::setresuid(uid, uid, uid) != 0) {
      ::_exit(126);
    }
    ::execv(helper.c_str(), argv.data());
    ::_exit(127);
  }
  ::close(in[0]);
  ::close(out[1]);
  toPeer_ = in[1];
  fromPeer_ = out[0];
  reader_ = std::thread([this] { readLoop(); });
  // Connected and Hello answered before the first command: the unique name proves both.
  if (uniqueName().empty()) {
    throw std::runtime_error("iothubd-test-peer as " + user + " did not come up");
  }
}

BusPeer::~BusPeer() {
  if (toPeer_ >= 0) {
    ::close(toPeer_);  // EOF: the helper leaves the bus and exits
  }
  if (pid_ > 0) {
    // Bounded: a helper that does not exit within 5 s is killed. Its pidfd becomes readable
    // when it exits, so the wait ends then rather than at the next poll interval.
    const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
    if (pidfd >= 0) {
      pollfd exited{pidfd, POLLIN, 0};
      (void)::poll(&exited, 1, 5000);
      ::close(pidfd);
    }
    if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
      pid_ = -1;
    }
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  if (reader_.joinable()) {
    reader_.join();
  }
  if (fromPeer_ >= 0) {
    ::close(fromPeer_);
  }
}

void BusPeer::readLoop() {
  std::string pending;
  char buf[65536];
  while (true) {
    ssize_t n = ::read(fromPeer_, buf, sizeof buf);
    if (n <= 0) {
      break;
    }
    pending.append(buf, static_cast<std::size_t>(n));
    for (auto nl = pending.find('\n'); nl != std::string::npos; nl = pending.find('\n')) {
      std::string line = pending.substr(0, nl);
      pending.erase(0, nl + 1);
      rapidjson::Document d;
      d.Parse(line.c_str());
      if (d.HasParseError() || !d.IsObject()) {
        continue;
      }
      std::lock_guard lock(mutex_);
      if (d.HasMember("event")) {
        PeerEvent e;
        e.type = str(d, "type");
        e.sender = str(d, "sender");
        e.destination = str(d, "dest");
        e.path = str(d, "path");
        e.interface = str(d, "iface");
        e.member = str(d, "member");
        e.json = d.HasMember("args") ? toJson(d["args"]) : "[]";
        events_.push_back(std::move(e));
      } else if (d.HasMember("id") && d["id"].IsInt64()) {
        PeerReply r;
        r.error = str(d, "error");
        r.message = str(d, "message");
        r.json = d.HasMember("reply") ? toJson(d["reply"]) : "[]";
        replies_[static_cast<long>(d["id"].GetInt64())] = std::move(r);
      }
      cv_.notify_all();
    }
  }
  std::lock_guard lock(mutex_);
  eof_ = true;
  cv_.notify_all();
}

PeerReply BusPeer::request(const std::string& json, std::chrono::milliseconds timeout) {
  long id = 0;
  {
    std::lock_guard lock(mutex_);
    id = nextId_++;
  }
  std::string line = "{\"id\":" + std::to_string(id) + "," + json.substr(1) + "\n";
  for (std::size_t done = 0; done < line.size();) {
    ssize_t n = ::write(toPeer_, line.data() + done, line.size() - done);
    if (n <= 0) {
      return PeerReply{"peer.Gone", "the helper is gone", "[]"};
    }
    done += static_cast<std::size_t>(n);
  }
  std::unique_lock lock(mutex_);
  if (!cv_.wait_for(lock, timeout, [&] { return replies_.contains(id) || eof_; })) {
    return PeerReply{"peer.Timeout", "no answer within the timeout", "[]"};
  }
  if (!replies_.contains(id)) {
    return PeerReply{"peer.Gone", "the helper exited", "[]"};
  }
  PeerReply r = std::move(replies_[id]);
  replies_.erase(id);
  return r;
}

PeerReply BusPeer::call(const std::string& member, const std::string& signature,
                        const std::string& argsJson, const std::string& interface,
                        const std::string& path, const std::string& destination) {
  return request("{\"op\":\"call\",\"dest\":" + jsonQuote(destination) +
                     ",\"path\":" + jsonQuote(path) + ",\"iface\":" + jsonQuote(interface) +
                     ",\"member\":" + jsonQuote(member) + ",\"sig\":" + jsonQuote(signature) +
                     ",\"args\":" + argsJson + "}",
                 std::chrono::seconds(40));
}

PeerReply BusPeer::signal(const std::string& destination, const std::string& path,
                          const std::string& interface, const std::string& member,
                          const std::string& signature, const std::string& argsJson) {
  return request("{\"op\":\"signal\",\"dest\":" + jsonQuote(destination) +
                     ",\"path\":" + jsonQuote(path) + ",\"iface\":" + jsonQuote(interface) +
                     ",\"member\":" + jsonQuote(member) + ",\"sig\":" + jsonQuote(signature) +
                     ",\"args\":" + argsJson + "}",
                 std::chrono::seconds(10));
}

PeerReply BusPeer::addMatch(const std::string& rule) {
  return request("{\"op\":\"match\",\"rule\":" + jsonQuote(rule) + "}", std::chrono::seconds(10));
}

void BusPeer::sync() {
  auto r = request("{\"op\":\"sync\"}", std::chrono::seconds(10));
  if (!r.ok()) {
    throw std::runtime_error("sync with the peer of " + user_ + " failed: " + r.message);
  }
}

std::string BusPeer::uniqueName() {
  return request("{\"op\":\"unique\"}", std::chrono::seconds(10)).firstString();
}

int BusPeer::link(const std::string& from, const std::string& to) {
  auto r =
      request("{\"op\":\"link\",\"from\":" + jsonQuote(from) + ",\"to\":" + jsonQuote(to) + "}",
              std::chrono::seconds(10));
  rapidjson::Document d;
  d.Parse(r.json.c_str());
  return !d.HasParseError() && d.IsArray() && !d.Empty() && d[0].IsInt() ? d[0].GetInt() : -1;
}

std::vector<PeerEvent> BusPeer::events() const {
  std::lock_guard lock(mutex_);
  return events_;
}

std::vector<PeerEvent> BusPeer::eventsFrom(const std::string& sender,
                                           const std::string& member) const {
  std::lock_guard lock(mutex_);
  std::vector<PeerEvent> out;
  for (const auto& e : events_) {
    if (e.sender == sender && (member.empty() || e.member == member)) {
      out.push_back(e);
    }
  }
  return out;
}

std::optional<PeerEvent> BusPeer::waitForEvent(const std::string& sender, const std::string& member,
                                               std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  std::optional<PeerEvent> found;
  cv_.wait_for(lock, timeout, [&] {
    for (const auto& e : events_) {
      if (e.sender == sender && e.member == member) {
        found = e;
        return true;
      }
    }
    return eof_;
  });
  return found;
}

}  // namespace iothubd::testing
