// SPDX-License-Identifier: MIT
// What the outbox promises when things go wrong: acknowledged messages survive a SIGKILL, a
// corrupt file is moved aside (never deleted), and a read-only or full file system gives a clear
// error for new messages while what is stored can still be delivered. The file-system cases need
// root (a private mount namespace with a read-only bind mount and a tiny tmpfs); they are
// skipped otherwise.
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "iothubd/outbox/outbox.hpp"
#include "manual_scheduler.hpp"
#include "outbox_test_support.hpp"
#include "temp_dir.hpp"

namespace iothubd::outbox {
namespace {

using namespace std::chrono_literals;
using testsupport::openOrThrow;
using testsupport::telemetry;

/// Every message id the outbox still holds, in the order it would send them.
std::vector<std::string> storedIds(Outbox& box) {
  std::vector<std::string> ids;
  for (;;) {
    auto batch = box.nextToSend();
    if (!batch) {
      ADD_FAILURE() << batch.error().message;
      return ids;
    }
    if (batch->empty()) {
      break;
    }
    for (const auto& m : *batch) {
      ids.push_back(m.message.messageId());
      box.markDelivered(m.seq);
    }
  }
  return ids;
}

OutboxOptions optionsAt(const std::string& path) {
  OutboxOptions o;
  o.path = path;
  o.maxMessages = 10'000'000;
  o.maxBytes = 1ull << 40;
  return o;
}

// ---------------------------------------------------------------------------------------------
// Crash durability

/// The child side of the crash test: enqueue forever, and report every acknowledged id on `fd`
/// (one line each, well under PIPE_BUF so each write is atomic). Never returns.
[[noreturn]] void enqueueUntilKilled(const std::string& path, int fd, bool offLoop) {
  try {
    fakes::ManualScheduler sched;
    testsupport::ThreadedOffLoop worker;
    auto opts = optionsAt(path);
    opts.commitBatch = 64;
    auto box = openOrThrow(opts, sched, offLoop ? worker.runner() : nullptr);
    for (long i = 0;; ++i) {
      std::string id = "crash-" + std::to_string(i);
      auto accepted = box->enqueue("app", telemetry(id), [fd, id](core::Result<void> r) {
        if (!r) {
          _exit(3);
        }
        const std::string line = id + "\n";
        if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
          _exit(4);
        }
      });
      if (!accepted) {
        _exit(5);
      }
      if (i % 50 == 0) {
        sched.advance(opts.commitDelay);  // the delay timer commits the part of a batch
      }
      sched.runPosted();
      worker.collectFinished();
    }
  } catch (...) {
    _exit(2);
  }
}

/// Parameter: commits on a worker thread (true) or on the loop.
class OutboxDurability : public ::testing::TestWithParam<bool> {};

TEST_P(OutboxDurability, EveryAcknowledgedMessageSurvivesASigkillMidBurst) {
  iothubd::testing::TempDir dir("iothubd-outbox-crash");
  const std::string path = dir / "outbox.db";
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(fds[0]);
    enqueueUntilKilled(path, fds[1], GetParam());
  }
  ::close(fds[1]);

  // Collect acknowledgements until the burst is well under way, kill the child without warning,
  // then read what it had acknowledged before it died.
  std::set<std::string> acked;
  std::string pending;
  bool killed = false;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      break;
    }
    pending.append(buf, static_cast<std::size_t>(n));
    for (std::size_t nl; (nl = pending.find('\n')) != std::string::npos;) {
      acked.insert(pending.substr(0, nl));
      pending.erase(0, nl + 1);
    }
    if (!killed && acked.size() >= 5000) {
      ASSERT_EQ(::kill(child, SIGKILL), 0);
      killed = true;
    }
  }
  ::close(fds[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(killed) << "the child stopped on its own, status " << status;
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;
  EXPECT_TRUE(pending.empty()) << "a torn acknowledgement line";

  fakes::ManualScheduler sched;
  auto opts = optionsAt(path);
  opts.maxInflight = 1000;
  auto box = openOrThrow(opts, sched);
  const auto ids = storedIds(*box);
  const std::set<std::string> stored(ids.begin(), ids.end());
  std::size_t lost = 0;
  for (const auto& id : acked) {
    lost += stored.count(id) == 0 ? 1 : 0;
  }
  EXPECT_EQ(lost, 0u) << "of " << acked.size() << " acknowledged";
  // Arrival order survives too: ids were numbered in enqueue order.
  for (std::size_t i = 0; i < ids.size(); ++i) {
    ASSERT_EQ(ids[i], "crash-" + std::to_string(i));
  }
  std::printf("crash test: %zu acknowledged, %zu stored, %zu lost\n", acked.size(), ids.size(),
              lost);
}

INSTANTIATE_TEST_SUITE_P(CommitOnLoopOrWorker, OutboxDurability, ::testing::Bool());

// ---------------------------------------------------------------------------------------------
// Corruption

std::string contentOf(const std::string& path) {
  return iothubd::testing::readFile(path);
}

TEST(OutboxCorruption, AFileThatIsNotADatabaseIsMovedAsideAndReplaced) {
  iothubd::testing::TempDir dir("iothubd-outbox-corrupt");
  const std::string path = dir / "outbox.db";
  const std::string garbage(10000, '\x5a');
  iothubd::testing::writeFile(path, garbage, 0600);

  fakes::ManualScheduler sched;
  auto opened = Outbox::open(optionsAt(path), sched, sched);
  ASSERT_TRUE(opened) << opened.error().message;
  ASSERT_TRUE(opened->movedAside);
  EXPECT_EQ(opened->movedAside->rfind(path + ".corrupt-", 0), 0u) << *opened->movedAside;
  EXPECT_EQ(contentOf(*opened->movedAside), garbage);  // moved, not rewritten or deleted

  auto& box = *opened->outbox;
  EXPECT_EQ(box.length(), 0u);
  ASSERT_TRUE(box.enqueue("app", telemetry("fresh"), nullptr));
  ASSERT_TRUE(box.flush());
}

TEST(OutboxCorruption, ADamagedPageIsFoundAtOpenAndTheFileKeptForInspection) {
  iothubd::testing::TempDir dir("iothubd-outbox-corrupt");
  const std::string path = dir / "outbox.db";
  {
    fakes::ManualScheduler sched;
    auto box = openOrThrow(optionsAt(path), sched);
    for (int i = 0; i < 300; ++i) {
      ASSERT_TRUE(
          box->enqueue("app", telemetry("m" + std::to_string(i), std::string(1000, 'b')), nullptr));
    }
    ASSERT_TRUE(box->flush());
  }  // a clean close checkpoints the WAL into the file
  // Overwrite a b-tree page in the middle of the file.
  {
    const int fd = ::open(path.c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    const std::string junk(4096, '\xab');
    ASSERT_EQ(::pwrite(fd, junk.data(), junk.size(), 4096 * 20), 4096);
    ::close(fd);
  }
  const std::string damaged = contentOf(path);

  fakes::ManualScheduler sched;
  sched.unixBase_ = 1704067200;  // 2024-01-01T00:00:00Z
  auto opened = Outbox::open(optionsAt(path), sched, sched);
  ASSERT_TRUE(opened) << opened.error().message;
  ASSERT_TRUE(opened->movedAside);
  EXPECT_EQ(*opened->movedAside, path + ".corrupt-20240101T000000Z");
  EXPECT_EQ(contentOf(*opened->movedAside), damaged);
  EXPECT_EQ(opened->outbox->length(), 0u);

  // A second corruption in the same second gets its own name.
  opened->outbox.reset();
  iothubd::testing::writeFile(path, "not a database either", 0600);
  auto again = Outbox::open(optionsAt(path), sched, sched);
  ASSERT_TRUE(again) << again.error().message;
  ASSERT_TRUE(again->movedAside);
  EXPECT_NE(*again->movedAside, *opened->movedAside);
  EXPECT_EQ(contentOf(*opened->movedAside), damaged);
}

TEST(OutboxOpen, AMissingDirectoryIsAClearError) {
  iothubd::testing::TempDir dir("iothubd-outbox-open");
  const std::string path = dir / "no-such-dir/outbox.db";
  fakes::ManualScheduler sched;
  auto opened = Outbox::open(optionsAt(path), sched, sched);
  ASSERT_FALSE(opened);
  EXPECT_EQ(opened.error().code, core::Errc::Io);
  EXPECT_NE(opened.error().message.find(path), std::string::npos) << opened.error().message;
  EXPECT_EQ(opened.error().sysErrno, ENOENT);
}

TEST(OutboxOpen, TheDatabaseIsPrivateToTheDaemon) {
  iothubd::testing::TempDir dir("iothubd-outbox-open");
  const std::string path = dir / "outbox.db";
  fakes::ManualScheduler sched;
  auto box = openOrThrow(optionsAt(path), sched);
  ASSERT_TRUE(box->enqueue("app", telemetry("m1"), nullptr));
  ASSERT_TRUE(box->flush());
  for (const std::string& file : {path, path + "-wal"}) {
    struct stat st {};
    ASSERT_EQ(::stat(file.c_str(), &st), 0) << file;
    EXPECT_EQ(st.st_mode & 0777, 0600u) << file;
  }
}

// ---------------------------------------------------------------------------------------------
// Read-only and full file systems (root only)

/// Enters a private mount namespace once per test process, so the mounts below are invisible
/// to the rest of the machine and vanish with the process.
bool privateMounts() {
  static const bool ok = [] {
    return ::geteuid() == 0 && ::unshare(CLONE_NEWNS) == 0 &&
           ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0;
  }();
  return ok;
}

/// Unmounts `target` when the test ends (before its temp dir is removed).
class Unmount {
 public:
  explicit Unmount(std::string target) : target_(std::move(target)) {}
  ~Unmount() { ::umount2(target_.c_str(), MNT_DETACH); }
  Unmount(const Unmount&) = delete;
  Unmount& operator=(const Unmount&) = delete;

 private:
  std::string target_;
};

class OutboxFileSystem : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!privateMounts()) {
      GTEST_SKIP() << "needs root for a private mount namespace";
    }
    state_ = dir_ / "state";
    ASSERT_EQ(::mkdir(state_.c_str(), 0700), 0);
  }
  iothubd::testing::TempDir dir_{"iothubd-outbox-fs"};
  std::string state_;
};

TEST_F(OutboxFileSystem, AReadOnlyFileSystemStillDeliversWhatIsStoredAndRefusesNewMessages) {
  const std::string path = state_ + "/outbox.db";
  {
    fakes::ManualScheduler sched;
    auto box = openOrThrow(optionsAt(path), sched);
    for (const char* id : {"m1", "m2", "m3"}) {
      ASSERT_TRUE(box->enqueue("app", telemetry(id), nullptr));
    }
    ASSERT_TRUE(box->flush());
  }
  ASSERT_EQ(::mount(state_.c_str(), state_.c_str(), nullptr, MS_BIND, nullptr), 0)
      << std::strerror(errno);
  Unmount unmount(state_);
  ASSERT_EQ(::mount(nullptr, state_.c_str(), nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY, nullptr), 0)
      << std::strerror(errno);

  fakes::ManualScheduler sched;
  auto opened = Outbox::open(optionsAt(path), sched, sched);
  ASSERT_TRUE(opened) << opened.error().message;
  EXPECT_TRUE(opened->readOnly);
  auto& box = *opened->outbox;
  EXPECT_EQ(box.length(), 3u);

  auto refused = box.enqueue("app", telemetry("m4"), nullptr);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, core::Errc::Io);
  EXPECT_NE(refused.error().message.find(path), std::string::npos) << refused.error().message;
  EXPECT_NE(refused.error().message.find("read-only"), std::string::npos);

  EXPECT_EQ(storedIds(box), (std::vector<std::string>{"m1", "m2", "m3"}));
  EXPECT_EQ(box.delivered(), 3u);
  EXPECT_EQ(box.length(), 0u);
}

TEST_F(OutboxFileSystem, AFullFileSystemFailsNewMessagesClearlyAndRecoversWhenThereIsRoom) {
  ASSERT_EQ(::mount("tmpfs", state_.c_str(), "tmpfs", 0, "size=128k,mode=0700"), 0)
      << std::strerror(errno);
  Unmount unmount(state_);
  const std::string path = state_ + "/outbox.db";

  fakes::ManualScheduler sched;
  auto opts = optionsAt(path);
  opts.maxInflight = 1000;
  auto box = openOrThrow(opts, sched);
  std::vector<std::string> acked;
  std::optional<core::Error> failure;
  for (int i = 0; i < 1000 && !failure; ++i) {
    const std::string id = "m" + std::to_string(i);
    auto accepted = box->enqueue("app", telemetry(id, std::string(3000, 'f')),
                                 [&acked, &failure, id](core::Result<void> r) {
                                   if (r) {
                                     acked.push_back(id);
                                   } else {
                                     failure = r.error();
                                   }
                                 });
    ASSERT_TRUE(accepted) << accepted.error().message;
    sched.advance(opts.commitDelay);
  }
  ASSERT_TRUE(failure) << "128 KiB never filled up";
  EXPECT_EQ(failure->code, core::Errc::Io);
  EXPECT_NE(failure->message.find(path), std::string::npos) << failure->message;
  EXPECT_NE(failure->message.find("full"), std::string::npos) << failure->message;
  EXPECT_EQ(failure->sysErrno, ENOSPC);
  ASSERT_TRUE(box->writeError());
  EXPECT_FALSE(acked.empty());
  EXPECT_EQ(box->length(), acked.size());  // the failed message is not counted

  // Everything acknowledged is still there to deliver.
  auto batch = box->nextToSend();
  ASSERT_TRUE(batch) << batch.error().message;
  std::vector<std::string> ids;
  for (const auto& m : *batch) {
    ids.push_back(m.message.messageId());
  }
  EXPECT_EQ(ids, acked);
  box->requeueInFlight();

  // More room: new messages are stored again, without reopening.
  ASSERT_EQ(::mount(nullptr, state_.c_str(), nullptr, MS_REMOUNT, "size=8m"), 0)
      << std::strerror(errno);
  bool stored = false;
  ASSERT_TRUE(box->enqueue("app", telemetry("after"),
                           [&stored](core::Result<void> r) { stored = r.has_value(); }));
  sched.advance(opts.commitDelay);
  EXPECT_TRUE(stored);
  EXPECT_FALSE(box->writeError());
  EXPECT_EQ(box->length(), acked.size() + 1);
}

}  // namespace
}  // namespace iothubd::outbox
