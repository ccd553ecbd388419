// SPDX-License-Identifier: MIT
// Private to src/outbox: every SQL statement of the outbox, behind a narrow class.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "iothubd/core/result.hpp"
#include "iothubd/outbox/outbox.hpp"
#include "sqlite.hpp"

namespace iothubd::outbox {

/// The part of a row the outbox keeps in memory.
struct IndexRow {
  std::uint64_t seq = 0;
  std::uint64_t bytes = 0;
  std::uint64_t expiresAt = 0;  ///< 0 = never
};

/// The SQLite database of the outbox: one table, one row per message, seq = arrival order.
class OutboxStore {
 public:
  struct Opened {
    std::unique_ptr<OutboxStore> store;
    std::vector<IndexRow> index;  ///< every stored row, by seq
    std::optional<std::string> movedAside;
    bool readOnly = false;
  };

  /// Opens (or creates) `path` in WAL mode with synchronous=FULL, checks it, loads the index.
  /// A corrupt database is renamed to `<path>.corrupt-<UTC time of nowUnix>` (its -wal, -shm and
  /// -journal files get the same new base name) and a fresh one created. When the file or its
  /// file system is read-only, it is opened read-only instead.
  [[nodiscard]] static core::Result<Opened> open(const std::string& path, std::uint64_t nowUnix);

  ~OutboxStore();
  OutboxStore(const OutboxStore&) = delete;
  OutboxStore& operator=(const OutboxStore&) = delete;

  /// One transaction: inserts `rows`, deletes `seqs` (missing ones are fine), commits. On error
  /// the transaction is rolled back and nothing of it is stored. Uses only the writing
  /// connection, so it may run on a worker thread while the loop calls read() and ref(), which
  /// use their own connection and see committed rows only.
  [[nodiscard]] core::Result<void> write(std::span<const OutboxMessage* const> rows,
                                         std::span<const std::uint64_t> seqs);

  /// One stored row. Errors: Errc::Io when SQLite fails; Errc::Protocol when the row is missing
  /// or cannot be decoded (it will never be readable).
  [[nodiscard]] core::Result<OutboxMessage> read(std::uint64_t seq);
  /// Row `seq` and the stored rows after it, in seq order, appended to `out`: at most `maxRows`,
  /// and no more once their hub sizes reach `maxBytes` (row `seq` always). A later row that
  /// cannot be decoded ends the run before it (read() reports it when it is asked for).
  /// Errors as read() for row `seq`; `out` is unchanged then.
  [[nodiscard]] core::Result<void> readRun(std::uint64_t seq, std::size_t maxRows,
                                           std::uint64_t maxBytes, std::deque<OutboxMessage>& out);
  /// The id and app of a stored row (EntryRef with empty strings if it is gone or unreadable).
  [[nodiscard]] EntryRef ref(std::uint64_t seq);

  [[nodiscard]] const std::string& path() const noexcept { return path_; }
  /// Whether this SQLite build allows write() on another thread than read().
  [[nodiscard]] static bool threadSafe() noexcept { return sqlite3_threadsafe() != 0; }

 private:
  struct Attempt;
  OutboxStore(std::string path, sqlite::Database db, bool readOnly);
  [[nodiscard]] core::Result<void> prepareStatements();
  /// The row select_ or selectRun_ stands on.
  [[nodiscard]] core::Result<OutboxMessage> decodeRow(sqlite::Statement& stmt) const;

  std::string path_;
  sqlite::Database db_;      ///< writes (and reads too when read-only)
  sqlite::Database reader_;  ///< reads of a writable database
  bool readOnly_;
  // Declared after the connections: destroyed first (sqlite3_close_v2 would wait for them anyway).
  sqlite::Statement insert_;
  sqlite::Statement delete_;
  sqlite::Statement select_;
  sqlite::Statement selectRun_;
  sqlite::Statement selectRef_;
  sqlite::Statement begin_;
  sqlite::Statement commit_;
  sqlite::Statement rollback_;
};

}  // namespace iothubd::outbox
