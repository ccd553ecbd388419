// SPDX-License-Identifier: MIT
// `iothubctl method serve NAME -- COMMAND...`: claims a direct method and answers each request by
// running COMMAND, concurrently, on iothubctl's one loop (the daemon's loop module): the payload
// on the command's stdin, its stdout as the answer, its exit status as the HTTP-like status.
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <iostream>
#include <map>

#include "bus_client.hpp"
#include "commands.hpp"
#include "exit_codes.hpp"
#include "format.hpp"
#include "iothubd/core/unique_fd.hpp"
#include "iothubd/loop/event_loop.hpp"

namespace iothubd::ctl {
namespace {

/// Requests answered by running the command at once; beyond it the hub gets 503 at once.
constexpr std::size_t kMaxRunning = 16;
/// The answer's payload, as IoT Hub takes it (128 KiB).
constexpr std::size_t kMaxOutput = 128 * 1024;
/// How long the command may run unless --timeout says otherwise: iothubd's own
/// method_response_timeout (default 60 s) answers 504 then anyway.
constexpr std::chrono::seconds kCommandTimeout = 60s;

/// The status a command may choose by writing it to this descriptor (`echo 404 >&3`).
constexpr int kStatusFd = 3;

std::string errorPayload(const std::string& text) {
  return R"({"error":)" + jsonString(text) + "}";
}

/// A command's stdout as the answer's payload: JSON as it is, nothing as no payload, any other
/// text as a JSON string (so `echo rebooting` works).
std::string payloadOf(std::string output) {
  while (!output.empty() && (output.back() == '\n' || output.back() == '\r')) {
    output.pop_back();
  }
  if (output.empty() || isJson(output)) {
    return output;
  }
  return jsonString(output);
}

bool setNonBlocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  return flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
}

/// Reads what `fd` has now into `into` (bounded); false at EOF or on an error.
bool drain(int fd, std::string& into, std::size_t max) {
  char buf[16384];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      if (into.size() < max + 1) {
        into.append(buf, std::min(static_cast<std::size_t>(n), max + 1 - into.size()));
      }
      continue;
    }
    if (n < 0 && errno == EINTR) {
      continue;
    }
    return n < 0 && errno == EAGAIN;
  }
}

class MethodServer {
 public:
  MethodServer(BusClient& bus, const Invocation& inv, std::ostream& out, std::ostream& err)
      : bus_(bus), inv_(inv), out_(out), err_(err) {}
  ~MethodServer() {
    restartWatch_.reset();
    if (loop_) {
      loop_->detachBus();  // also when the claim failed and run() threw
    }
  }
  MethodServer(const MethodServer&) = delete;
  MethodServer& operator=(const MethodServer&) = delete;

  int run() {
    auto loop = loop::EventLoop::create();
    if (!loop) {
      err_ << "iothubctl: " << loop.error().message << "\n";
      return exitcode::kSoftware;
    }
    loop_ = std::move(*loop);
    if (auto r = loop_->attachBus(bus_.connection()); !r) {
      err_ << "iothubctl: " << r.error().message << "\n";
      return exitcode::kSoftware;
    }
    auto signals = loop_->handleSignals({SIGINT, SIGTERM}, [this](int) { loop_->exit(0); });
    if (!signals) {
      err_ << "iothubctl: " << signals.error().message << "\n";
      return exitcode::kSoftware;
    }
    bus_.device().onMethodRequest = [this](const std::string& rid, const std::string& name,
                                           const std::string& payload) {
      onRequest(rid, name, payload);
    };
    // A restarted daemon has forgotten every claim: claim again as soon as the name has a new
    // owner (the NameOwnerChanged pattern of org.iothubd.Device1(5)).
    restartWatch_ = bus_.connection().addMatch(
        "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
        "member='NameOwnerChanged',arg0='" +
            std::string(kBusName) + "'",
        [this](sdbus::Message& m) {
          std::string name, oldOwner, newOwner;
          m >> name >> oldOwner >> newOwner;
          if (!newOwner.empty()) {
            claimAgain();
          }
        });
    // A claim only makes sense on a running daemon; the call also starts an enabled one.
    bus_.withTimeout(kQuickCall, [&](DeviceProxy& d) { d.RegisterMethodHandler(inv_.methodName); });
    err_ << "iothubctl: serving direct method " << inv_.methodName << " with";
    for (const auto& word : inv_.methodCommand) {
      err_ << " " << word;
    }
    err_ << "; Ctrl-C stops\n" << std::flush;
    auto code = loop_->run();
    for (auto& [rid, job] : jobs_) {
      ::kill(-job->pid, SIGKILL);
    }
    jobs_.clear();
    return code ? *code : exitcode::kSoftware;
  }

 private:
  struct Job {
    std::string method;
    pid_t pid = -1;
    core::UniqueFd pidFd;
    core::UniqueFd output;
    core::UniqueFd status;
    std::string stdoutText;
    std::string statusText;
    std::unique_ptr<loop::IoWatch> outputWatch;
    std::unique_ptr<loop::IoWatch> exitWatch;
    std::unique_ptr<core::Timer> timer;
    std::chrono::steady_clock::time_point started;
  };

  void claimAgain() {
    try {
      bus_.withTimeout(kQuickCall,
                       [&](DeviceProxy& d) { d.RegisterMethodHandler(inv_.methodName); });
      err_ << "iothubctl: iothubd restarted; claimed " << inv_.methodName << " again\n"
           << std::flush;
    } catch (const sdbus::Error& e) {
      err_ << "iothubctl: iothubd restarted, and claiming " << inv_.methodName
           << " again failed: " << describeError(e.getName(), e.getMessage()) << "\n";
      loop_->exit(exitCodeForError(e.getName()));
    }
  }

  void onRequest(const std::string& rid, const std::string& name, const std::string& payload) {
    if (jobs_.size() >= kMaxRunning) {
      respond(rid, name, 503, errorPayload("iothubctl: too many requests at once"), -1, {});
      return;
    }
    auto job = start(name, rid, payload);
    if (!job) {
      respond(rid, name, 500, errorPayload("iothubctl: cannot run the command"), -1, {});
      return;
    }
    jobs_[rid] = std::move(job);
  }

  std::unique_ptr<Job> start(const std::string& name, const std::string& rid,
                             const std::string& payload) {
    // The payload in a memfd: a regular file as stdin cannot block either side.
    core::UniqueFd input(::memfd_create("iothubctl-payload", MFD_CLOEXEC));
    int outPipe[2];
    int statusPipe[2];
    if (!input ||
        ::write(input.get(), payload.data(), payload.size()) !=
            static_cast<ssize_t>(payload.size()) ||
        ::lseek(input.get(), 0, SEEK_SET) != 0 || ::pipe2(outPipe, O_CLOEXEC) != 0) {
      err_ << "iothubctl: " << std::strerror(errno) << "\n";
      return nullptr;
    }
    core::UniqueFd outRead(outPipe[0]);
    core::UniqueFd outWrite(outPipe[1]);
    if (::pipe2(statusPipe, O_CLOEXEC) != 0) {
      return nullptr;
    }
    core::UniqueFd statusRead(statusPipe[0]);
    core::UniqueFd statusWrite(statusPipe[1]);

    // Everything exec needs is made before fork(): after it only async-signal-safe calls.
    std::vector<std::string> envStrings;
    for (char** e = environ; *e != nullptr; ++e) {
      std::string_view v(*e);
      if (!v.starts_with("IOTHUB_METHOD_NAME=") && !v.starts_with("IOTHUB_REQUEST_ID=")) {
        envStrings.emplace_back(v);
      }
    }
    envStrings.push_back("IOTHUB_METHOD_NAME=" + name);
    envStrings.push_back("IOTHUB_REQUEST_ID=" + rid);
    std::vector<char*> envp;
    envp.reserve(envStrings.size() + 1);
    for (auto& s : envStrings) {
      envp.push_back(s.data());
    }
    envp.push_back(nullptr);
    std::vector<std::string> words = inv_.methodCommand;
    std::vector<char*> argv;
    argv.reserve(words.size() + 1);
    for (auto& w : words) {
      argv.push_back(w.data());
    }
    argv.push_back(nullptr);
    const std::string cannotRun = "iothubctl: cannot run " + words[0] + ": ";

    pid_t pid = ::fork();
    if (pid < 0) {
      err_ << "iothubctl: fork: " << std::strerror(errno) << "\n";
      return nullptr;
    }
    if (pid == 0) {
      // The loop blocked these signals for signalfd; the command gets the defaults.
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      ::signal(SIGPIPE, SIG_DFL);
      ::setpgid(0, 0);  // its own group, so a timeout ends what it started too
      ::dup2(input.get(), STDIN_FILENO);
      ::dup2(outWrite.get(), STDOUT_FILENO);
      if (statusWrite.get() == kStatusFd) {
        ::fcntl(kStatusFd, F_SETFD, 0);  // dup2 onto itself would keep FD_CLOEXEC
      } else {
        ::dup2(statusWrite.get(), kStatusFd);
      }
      ::execvpe(argv[0], argv.data(), envp.data());
      const int e = errno;
      (void)!::write(STDERR_FILENO, cannotRun.data(), cannotRun.size());
      const char* why = std::strerror(e);
      (void)!::write(STDERR_FILENO, why, std::strlen(why));
      (void)!::write(STDERR_FILENO, "\n", 1);
      ::_exit(127);
    }
    auto job = std::make_unique<Job>();
    job->method = name;
    job->pid = pid;
    job->started = std::chrono::steady_clock::now();
    job->pidFd.reset(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
    job->output = std::move(outRead);
    job->status = std::move(statusRead);
    if (!job->pidFd || !setNonBlocking(job->output.get()) || !setNonBlocking(job->status.get())) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      return nullptr;
    }
    Job* raw = job.get();
    auto outWatch = loop_->watchIo(raw->output.get(), EPOLLIN, [raw](std::uint32_t) {
      if (!drain(raw->output.get(), raw->stdoutText, kMaxOutput)) {
        raw->outputWatch->setEvents(0);  // EOF: the exit watch finishes the job
      }
    });
    // The job (and with it this watch and the timer) goes in finish(): never from inside their
    // own callbacks, hence post().
    auto exitWatch = loop_->watchIo(raw->pidFd.get(), EPOLLIN, [this, raw, rid](std::uint32_t) {
      raw->exitWatch->setEvents(0);
      loop_->post([this, rid] { finish(rid, false); });
    });
    if (!outWatch || !exitWatch) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      return nullptr;
    }
    raw->outputWatch = std::move(*outWatch);
    raw->exitWatch = std::move(*exitWatch);
    raw->timer =
        loop_->createTimer([this, rid] { loop_->post([this, rid] { finish(rid, true); }); });
    raw->timer->armAfter(inv_.timeout.value_or(kCommandTimeout));
    return job;
  }

  /// The command ended (or ran out of time): answer for it.
  void finish(const std::string& rid, bool timedOut) {
    auto it = jobs_.find(rid);
    if (it == jobs_.end()) {
      return;
    }
    auto job = std::move(it->second);
    jobs_.erase(it);
    if (timedOut) {
      ::kill(-job->pid, SIGKILL);
    }
    int wstatus = 0;
    ::waitpid(job->pid, &wstatus, 0);
    drain(job->output.get(), job->stdoutText, kMaxOutput);
    drain(job->status.get(), job->statusText, 16);
    int exitStatus = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
    int chosen = 0;
    try {
      chosen = job->statusText.empty() ? 0 : std::stoi(job->statusText);
    } catch (const std::exception&) {
      chosen = 0;
    }
    if (chosen < 100 || chosen > 599) {
      chosen = 0;
    }
    int status = 0;
    std::string payload;
    if (timedOut) {
      status = 504;
      payload = errorPayload("the command did not finish within " +
                             std::to_string(inv_.timeout.value_or(kCommandTimeout).count()) + " s");
    } else if (job->stdoutText.size() > kMaxOutput) {
      status = 500;
      payload = errorPayload("the command's output is longer than 128 KiB");
    } else {
      status = chosen != 0 ? chosen : exitStatus == 0 ? 200 : 500;
      payload = payloadOf(std::move(job->stdoutText));
    }
    respond(rid, job->method, status, payload, exitStatus,
            std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                  job->started));
  }

  void respond(const std::string& rid, const std::string& method, int status,
               const std::string& payload, int exitStatus, std::chrono::milliseconds took) {
    auto pending =
        bus_.device()
            .raw()
            .callMethodAsync("SendMethodResponse")
            .onInterface(kInterface)
            .withTimeout(kHubCall)
            .withArguments(rid, status, payload)
            .uponReplyInvoke([this, rid, method, status, exitStatus, took](const sdbus::Error* e) {
              if (e != nullptr) {
                // OperationTimeout: iothubd answered 504 already (method_response_timeout).
                err_ << "iothubctl: the answer to " << method << " request " << rid
                     << " was not delivered: " << describeError(e->getName(), e->getMessage())
                     << "\n"
                     << std::flush;
              }
              report(rid, method, status, exitStatus, took, e == nullptr);
              if (inv_.count && ++answered_ >= *inv_.count) {
                loop_->exit(exitcode::kOk);
              }
            });
  }

  void report(const std::string& rid, const std::string& method, int status, int exitStatus,
              std::chrono::milliseconds took, bool delivered) {
    if (inv_.json) {
      out_ << R"({"method":)" << jsonString(method) << R"(,"requestId":)" << jsonString(rid)
           << R"(,"status":)" << status;
      if (exitStatus >= 0) {
        out_ << R"(,"exitStatus":)" << exitStatus;
      }
      out_ << R"(,"durationMs":)" << took.count() << R"(,"delivered":)"
           << (delivered ? "true" : "false") << "}\n";
    } else {
      out_ << method << " request " << rid << ": " << status;
      if (exitStatus >= 0) {
        out_ << " (exit status " << exitStatus << ", " << took.count() << " ms)";
      }
      out_ << (delivered ? "" : ", not delivered") << "\n";
    }
    out_ << std::flush;
  }

  BusClient& bus_;
  const Invocation& inv_;
  std::ostream& out_;
  std::ostream& err_;
  std::unique_ptr<loop::EventLoop> loop_;
  sdbus::Slot restartWatch_;
  std::map<std::string, std::unique_ptr<Job>> jobs_;
  std::uint64_t answered_ = 0;
};

}  // namespace

int methodServe(BusClient& bus, const Invocation& inv, std::ostream& out, std::ostream& err) {
  MethodServer server(bus, inv, out, err);
  return server.run();
}

}  // namespace iothubd::ctl
