// SPDX-License-Identifier: MIT
// RAII over the few SQLite handles the outbox uses. Private to src/outbox.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "iothubd/core/result.hpp"

namespace iothubd::outbox::sqlite {

struct DbCloser {
  // sqlite3_close_v2 defers the close until every statement is finalized, so the order in which
  // members are destroyed does not matter.
  void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
};
using Database = std::unique_ptr<sqlite3, DbCloser>;

/// One prepared statement, reset after each use so its read lock never outlives the call.
class Statement {
 public:
  Statement() = default;
  /// Errors: the SQLite result code and message, as Errc::Io naming `path`.
  [[nodiscard]] static core::Result<Statement> prepare(sqlite3* db, std::string_view sql,
                                                       const std::string& path);

  void bind(int index, std::int64_t value);
  void bind(int index, std::string_view text);
  void bindBlob(int index, std::string_view bytes);
  void bind(int index, const std::optional<std::string>& text);  ///< NULL when unset
  void bindNull(int index);

  /// SQLITE_ROW, SQLITE_DONE or an error code.
  [[nodiscard]] int step();
  void reset() noexcept;

  [[nodiscard]] std::int64_t columnInt(int index) const;
  [[nodiscard]] bool columnIsNull(int index) const;
  [[nodiscard]] std::string columnText(int index) const;  ///< also for BLOB columns
  [[nodiscard]] std::optional<std::string> columnOptionalText(int index) const;

  [[nodiscard]] sqlite3_stmt* get() const noexcept { return stmt_.get(); }

 private:
  struct Finalizer {
    void operator()(sqlite3_stmt* stmt) const noexcept { sqlite3_finalize(stmt); }
  };
  std::unique_ptr<sqlite3_stmt, Finalizer> stmt_;
};

/// Resets a statement when the scope ends, whichever way it is left.
class ResetGuard {
 public:
  explicit ResetGuard(Statement& stmt) : stmt_(stmt) {}
  ~ResetGuard() { stmt_.reset(); }
  ResetGuard(const ResetGuard&) = delete;
  ResetGuard& operator=(const ResetGuard&) = delete;

 private:
  Statement& stmt_;
};

/// Errc::Io "outbox PATH: WHAT: <sqlite message> (<code name>)", sysErrno = the OS errno SQLite
/// saw (ENOSPC, EROFS, EIO...) when there was one.
[[nodiscard]] core::Error error(sqlite3* db, int rc, std::string_view what,
                                const std::string& path);

/// Runs SQL without results (pragmas with side effects, BEGIN/COMMIT).
[[nodiscard]] core::Result<void> exec(sqlite3* db, const char* sql, std::string_view what,
                                      const std::string& path);

/// True for the primary result codes that mean "the file is not a sound database".
[[nodiscard]] inline bool isCorruption(int rc) noexcept {
  const int primary = rc & 0xff;
  return primary == SQLITE_CORRUPT || primary == SQLITE_NOTADB;
}

}  // namespace iothubd::outbox::sqlite
