// SPDX-License-Identifier: MIT
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "iothubd/core/lifetime.hpp"
#include "iothubd/http/async_reader.hpp"
#include "iothubd/loop/event_loop.hpp"

namespace iothubd::http {
namespace {

using core::Errc;
using core::fail;

/// Largest read done on the loop thread from the page cache: bounds how long one read keeps
/// the loop busy (a 1 MiB copy is well under a millisecond).
constexpr std::size_t kMaxLoopRead = 1024 * 1024;

core::Error readError(int err) {
  return core::Error{Errc::Io, std::string("cannot read the upload source: ") + std::strerror(err),
                     err};
}

class FdReader final : public AsyncReader {
 public:
  enum class Mode { Poll, File };

  FdReader(loop::EventLoop& loop, core::UniqueFd fd, Mode mode, std::optional<std::uint64_t> size)
      : loop_(loop),
        fd_(std::make_shared<core::UniqueFd>(std::move(fd))),
        mode_(mode),
        size_(size) {}

  ~FdReader() override {
    lifetime_.end();
    watch_.reset();
  }

  void useFileMode() { mode_ = Mode::File; }

  core::Result<void> startWatching() {
    // Edge-triggered: the watch stays registered for the reader's lifetime and costs nothing
    // while no read is pending (a level-triggered watch on a pipe whose writer has gone would
    // report EPOLLHUP on every loop iteration). Every read first tries the descriptor and waits
    // for an edge only after EAGAIN, so no edge can be missed.
    auto watch = loop_.watchIo(fd_->get(), EPOLLIN | EPOLLET, [this](std::uint32_t) { onEdge(); });
    if (!watch) {
      return fail(watch.error());
    }
    watch_ = std::move(*watch);
    return {};
  }

  core::Result<void> read(std::size_t max, ReadDone done) override {
    if (pending_) {
      return fail(Errc::Internal, "a read is already pending");
    }
    if (max == 0) {
      return fail(Errc::InvalidArgument, "read of 0 bytes");
    }
    pending_ = true;
    max_ = max;
    done_ = std::move(done);
    loop_.post(lifetime_.guard([this] { attempt(); }));
    return {};
  }

  [[nodiscard]] std::optional<std::uint64_t> sizeHint() const override { return size_; }

 private:
  void attempt() {
    if (mode_ == Mode::Poll) {
      std::string chunk(max_, '\0');
      const ssize_t n = ::read(fd_->get(), chunk.data(), chunk.size());
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        waiting_ = true;
        return;
      }
      if (n < 0) {
        complete(fail(readError(errno)));
        return;
      }
      chunk.resize(static_cast<std::size_t>(n));
      complete(std::move(chunk));
      return;
    }
    // Regular file: what the page cache holds is read on the loop without waiting for a disk.
    std::string chunk(std::min(max_, kMaxLoopRead), '\0');
    iovec iov{chunk.data(), chunk.size()};
    const ssize_t n = ::preadv2(fd_->get(), &iov, 1, -1, RWF_NOWAIT);
    if (n >= 0) {
      chunk.resize(static_cast<std::size_t>(n));
      complete(std::move(chunk));
      return;
    }
    if (errno != EAGAIN && errno != EOPNOTSUPP && errno != EINVAL && errno != EINTR) {
      complete(fail(readError(errno)));
      return;
    }
    readOffLoop();
  }

  /// The data is not cached (or the file system cannot say): a worker does the blocking read.
  /// It shares ownership of the descriptor, so destroying the reader meanwhile is safe.
  void readOffLoop() {
    struct Job {
      std::shared_ptr<core::UniqueFd> fd;
      std::string chunk;
      ssize_t n = -1;  ///< stays an error if the read never happened
      int err = EIO;
    };
    auto job = std::make_shared<Job>();
    job->fd = fd_;
    job->chunk.resize(max_);
    loop_.runOffLoop(
        [job] {
          do {
            job->n = ::read(job->fd->get(), job->chunk.data(), job->chunk.size());
          } while (job->n < 0 && errno == EINTR);
          job->err = job->n < 0 ? errno : 0;
        },
        lifetime_.guard([this, job] {
          if (job->n < 0) {
            complete(fail(readError(job->err)));
            return;
          }
          job->chunk.resize(static_cast<std::size_t>(job->n));
          complete(std::move(job->chunk));
        }));
  }

  void onEdge() {
    if (waiting_) {
      waiting_ = false;
      attempt();
    }
  }

  void complete(core::Result<std::string> result) {
    pending_ = false;
    auto done = std::move(done_);
    done_ = nullptr;
    done(std::move(result));
  }

  loop::EventLoop& loop_;
  std::shared_ptr<core::UniqueFd> fd_;
  Mode mode_;
  std::optional<std::uint64_t> size_;
  std::unique_ptr<loop::IoWatch> watch_;
  bool pending_ = false;
  bool waiting_ = false;
  std::size_t max_ = 0;
  ReadDone done_;
  core::Lifetime lifetime_;  ///< last: callbacks of a destroyed reader never run
};

/// Streams an AsyncReader into a request body, reading one chunk ahead.
class ReaderBody final : public BodySource {
 public:
  ReaderBody(std::unique_ptr<AsyncReader> reader, std::optional<std::uint64_t> size,
             std::size_t chunkSize)
      : reader_(std::move(reader)), size_(size), chunkSize_(std::max<std::size_t>(chunkSize, 1)) {}

  [[nodiscard]] std::optional<std::uint64_t> size() const override { return size_; }

  core::Result<std::size_t> read(std::span<char> buffer) override {
    if (offset_ < chunk_.size()) {
      const std::size_t n = std::min(buffer.size(), chunk_.size() - offset_);
      std::memcpy(buffer.data(), chunk_.data() + offset_, n);
      offset_ += n;
      sent_ += n;
      if (offset_ == chunk_.size()) {
        startRead();  // read ahead while libcurl sends this chunk
      }
      return n;
    }
    if (error_) {
      return fail(*error_);
    }
    if (eof_) {
      if (size_ && sent_ != *size_) {
        return fail(Errc::Io, "the upload source ended after " + std::to_string(sent_) + " of " +
                                  std::to_string(*size_) + " bytes");
      }
      return std::size_t{0};
    }
    startRead();
    return kPause;
  }

  void setWakeup(std::function<void()> wake) override { wake_ = std::move(wake); }

 private:
  void startRead() {
    if (reading_ || eof_ || error_) {
      return;
    }
    reading_ = true;
    auto started =
        reader_->read(chunkSize_, [this](core::Result<std::string> r) { onChunk(std::move(r)); });
    if (!started) {
      reading_ = false;
      error_ = started.error();
    }
  }

  void onChunk(core::Result<std::string> r) {
    reading_ = false;
    if (!r) {
      error_ = r.error();
    } else if (r->empty()) {
      eof_ = true;
    } else {
      if (size_ && sent_ + (chunk_.size() - offset_) + r->size() > *size_) {
        error_ = core::Error{Errc::Io, "the upload source is longer than the announced " +
                                           std::to_string(*size_) + " bytes"};
      }
      // Only reached when the previous chunk was fully consumed (reads start after that).
      chunk_ = std::move(*r);
      offset_ = 0;
    }
    if (wake_) {
      wake_();
    }
  }

  std::unique_ptr<AsyncReader> reader_;
  std::optional<std::uint64_t> size_;
  std::size_t chunkSize_;
  std::string chunk_;
  std::size_t offset_ = 0;
  std::uint64_t sent_ = 0;
  bool reading_ = false;
  bool eof_ = false;
  std::optional<core::Error> error_;
  std::function<void()> wake_;
};

}  // namespace

core::Result<std::unique_ptr<AsyncReader>> createFdReader(loop::EventLoop& loop,
                                                          core::UniqueFd fd) {
  if (!fd.valid()) {
    return fail(Errc::Io, "invalid file descriptor", EBADF);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    const int err = errno;
    return fail(Errc::Io, std::string("cannot inspect the upload source: ") + std::strerror(err),
                err);
  }
  if (S_ISDIR(st.st_mode)) {
    return fail(Errc::Io, "the upload source is a directory", EISDIR);
  }
  if (S_ISREG(st.st_mode)) {
    const off_t pos = ::lseek(fd.get(), 0, SEEK_CUR);
    const std::uint64_t left =
        pos >= 0 && pos <= st.st_size ? static_cast<std::uint64_t>(st.st_size - pos) : 0;
    return std::unique_ptr<AsyncReader>(
        std::make_unique<FdReader>(loop, std::move(fd), FdReader::Mode::File, left));
  }
  // Pipes, sockets, character devices: non-blocking reads driven by readiness. The descriptor
  // came from another process, so its flags are ours to set only now that it is ours.
  const int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags < 0 || ::fcntl(fd.get(), F_SETFL, flags | O_NONBLOCK) < 0) {
    const int err = errno;
    return fail(Errc::Io,
                std::string("cannot make the upload source non-blocking: ") + std::strerror(err),
                err);
  }
  auto reader = std::make_unique<FdReader>(loop, std::move(fd), FdReader::Mode::Poll, std::nullopt);
  if (auto watched = reader->startWatching(); !watched) {
    if (watched.error().sysErrno != EPERM) {
      return fail(watched.error());
    }
    // epoll refuses descriptors that cannot be polled (/dev/zero and the like): read them like
    // files, off the loop whenever they would block.
    reader->useFileMode();
  }
  return std::unique_ptr<AsyncReader>(std::move(reader));
}

std::unique_ptr<BodySource> createReaderBody(std::unique_ptr<AsyncReader> reader,
                                             std::optional<std::uint64_t> size,
                                             std::size_t chunkSize) {
  return std::make_unique<ReaderBody>(std::move(reader), size, chunkSize);
}

}  // namespace iothubd::http
