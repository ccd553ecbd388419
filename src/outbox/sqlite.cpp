// SPDX-License-Identifier: MIT
#include "sqlite.hpp"

#include <cerrno>
#include <cstring>

namespace iothubd::outbox::sqlite {

core::Error error(sqlite3* db, int rc, std::string_view what, const std::string& path) {
  std::string message = "outbox " + path + ": ";
  message.append(what).append(": ");
  // The connection's message is more specific than the code's ("disk I/O error" vs the file).
  const char* detail =
      db != nullptr && sqlite3_errcode(db) == rc ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  message.append(detail);
  message.append(" (sqlite ").append(std::to_string(rc));
  int sysErrno = db != nullptr ? sqlite3_system_errno(db) : 0;
  if (sysErrno == 0 && (rc & 0xff) == SQLITE_FULL) {
    sysErrno = ENOSPC;  // SQLite clears the errno it saw for a full disk
  }
  if (sysErrno != 0) {
    message.append(", ").append(std::strerror(sysErrno));
  }
  message.append(")");
  return core::Error{core::Errc::Io, std::move(message), sysErrno};
}

core::Result<void> exec(sqlite3* db, const char* sql, std::string_view what,
                        const std::string& path) {
  const int rc = sqlite3_exec(db, sql, nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) {
    return core::fail(error(db, rc, what, path));
  }
  return {};
}

core::Result<Statement> Statement::prepare(sqlite3* db, std::string_view sql,
                                           const std::string& path) {
  sqlite3_stmt* raw = nullptr;
  const int rc = sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()),
                                    SQLITE_PREPARE_PERSISTENT, &raw, nullptr);
  if (rc != SQLITE_OK) {
    sqlite3_finalize(raw);
    return core::fail(error(db, rc, "cannot prepare a statement", path));
  }
  Statement stmt;
  stmt.stmt_.reset(raw);
  return stmt;
}

// Bind errors are impossible here: indexes are constants of our own SQL and SQLITE_TRANSIENT
// copies the data, so only SQLITE_NOMEM could occur, which step() then reports.
void Statement::bind(int index, std::int64_t value) {
  (void)sqlite3_bind_int64(stmt_.get(), index, value);
}

void Statement::bind(int index, std::string_view text) {
  (void)sqlite3_bind_text64(stmt_.get(), index, text.data(), text.size(), SQLITE_TRANSIENT,
                            SQLITE_UTF8);
}

void Statement::bindBlob(int index, std::string_view bytes) {
  // A zero-length blob with a null pointer would bind NULL; the column is NOT NULL.
  (void)sqlite3_bind_blob64(stmt_.get(), index, bytes.empty() ? "" : bytes.data(), bytes.size(),
                            SQLITE_TRANSIENT);
}

void Statement::bind(int index, const std::optional<std::string>& text) {
  if (text) {
    bind(index, std::string_view(*text));
  } else {
    bindNull(index);
  }
}

void Statement::bindNull(int index) {
  (void)sqlite3_bind_null(stmt_.get(), index);
}

int Statement::step() {
  return sqlite3_step(stmt_.get());
}

void Statement::reset() noexcept {
  (void)sqlite3_reset(stmt_.get());
  (void)sqlite3_clear_bindings(stmt_.get());
}

std::int64_t Statement::columnInt(int index) const {
  return sqlite3_column_int64(stmt_.get(), index);
}

bool Statement::columnIsNull(int index) const {
  return sqlite3_column_type(stmt_.get(), index) == SQLITE_NULL;
}

std::string Statement::columnText(int index) const {
  // Blob first, then bytes: the pointer stays valid until the next step/reset.
  const void* data = sqlite3_column_blob(stmt_.get(), index);
  const int size = sqlite3_column_bytes(stmt_.get(), index);
  if (data == nullptr || size <= 0) {
    return {};
  }
  return std::string(static_cast<const char*>(data), static_cast<std::size_t>(size));
}

std::optional<std::string> Statement::columnOptionalText(int index) const {
  if (columnIsNull(index)) {
    return std::nullopt;
  }
  return columnText(index);
}

}  // namespace iothubd::outbox::sqlite
