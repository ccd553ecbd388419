// SPDX-License-Identifier: MIT
#include "outbox_store.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>

namespace iothubd::outbox {

namespace {

using core::Errc;

constexpr int kSchemaVersion = 1;
/// Page cache per connection (negative: KiB). The outbox appends at one end of its table and
/// deletes at the other, so a few dozen pages serve it; SQLite's default (2 MiB on each of our
/// two connections) only let the daemon's memory grow with the backlog (scripts/bench, RSS).
constexpr const char* kCacheSize = "PRAGMA cache_size=-256";

// One row per message. seq is the rowid, so arrival order is the table's own order and every
// lookup is a b-tree search. The system properties keep their own columns (NULL = unset) and the
// custom ones are stored as a property bag (enc(k)=enc(v)&...), so the rows stay readable with
// the sqlite3 shell. Times are Unix seconds; expires_at NULL = never.
constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS outbox (
  seq INTEGER PRIMARY KEY,
  message_id TEXT NOT NULL,
  app TEXT NOT NULL,
  enqueued_at INTEGER NOT NULL,
  expires_at INTEGER,
  bytes INTEGER NOT NULL,
  body BLOB NOT NULL,
  properties TEXT NOT NULL,
  correlation_id TEXT,
  user_id TEXT,
  content_type TEXT,
  content_encoding TEXT,
  expiry_time_utc TEXT,
  output_name TEXT,
  component_name TEXT,
  creation_time_utc TEXT
);
)sql";

constexpr const char* kColumns =
    "seq, message_id, app, enqueued_at, expires_at, bytes, body, properties, correlation_id, "
    "user_id, content_type, content_encoding, expiry_time_utc, output_name, component_name, "
    "creation_time_utc";

// The system properties beside the message id, in column order from index 8 on.
using Field = std::optional<std::string> proto::SystemProperties::*;
constexpr Field kSystemColumns[] = {
    &proto::SystemProperties::correlationId, &proto::SystemProperties::userId,
    &proto::SystemProperties::contentType,   &proto::SystemProperties::contentEncoding,
    &proto::SystemProperties::expiryTimeUtc, &proto::SystemProperties::outputName,
    &proto::SystemProperties::componentName, &proto::SystemProperties::creationTimeUtc,
};
constexpr int kFirstSystemColumn = 8;

std::string utcStamp(std::uint64_t unixSeconds) {
  const auto t = static_cast<std::time_t>(unixSeconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
  return buf;
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

std::string directoryOf(const std::string& path) {
  const auto slash = path.rfind('/');
  if (slash == std::string::npos) {
    return ".";
  }
  return slash == 0 ? "/" : path.substr(0, slash);
}

/// Makes renames and file creations in the directory durable (a power cut after a rename could
/// otherwise bring back the corrupt file under its old name).
void syncDirectory(const std::string& path) {
  const int fd = ::open(directoryOf(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    (void)::fsync(fd);
    ::close(fd);
  }
}

/// SQLite URI for opening `path` read-only; `?`, `#` and `%` in the path must be escaped.
std::string readOnlyUri(const std::string& path, bool immutable) {
  std::string uri = "file:";
  for (char c : path) {
    if (c == '?' || c == '#' || c == '%') {
      static constexpr char kHex[] = "0123456789ABCDEF";
      const auto u = static_cast<unsigned char>(c);
      uri.push_back('%');
      uri.push_back(kHex[u >> 4]);
      uri.push_back(kHex[u & 0xF]);
    } else {
      uri.push_back(c);
    }
  }
  uri.append(immutable ? "?immutable=1" : "?mode=ro");
  return uri;
}

}  // namespace

/// The outcome of one try at opening: a usable database, a corrupt one, or another error.
struct OutboxStore::Attempt {
  sqlite::Database db;
  std::vector<IndexRow> index;
  bool readOnly = false;
  bool corrupt = false;
  std::optional<core::Error> error;

  static Attempt failed(core::Error e, bool corrupt = false) {
    Attempt a;
    a.error = std::move(e);
    a.corrupt = corrupt;
    return a;
  }
};

OutboxStore::OutboxStore(std::string path, sqlite::Database db, bool readOnly)
    : path_(std::move(path)), db_(std::move(db)), readOnly_(readOnly) {}

OutboxStore::~OutboxStore() = default;

core::Result<OutboxStore::Opened> OutboxStore::open(const std::string& path,
                                                    std::uint64_t nowUnix) {
  // Opens with `flags`/`name`, applies the pragmas, checks and loads. Never throws.
  auto attempt = [&path](const std::string& name, int flags, bool readOnly) -> Attempt {
    sqlite3* raw = nullptr;
    int rc = sqlite3_open_v2(name.c_str(), &raw, flags | SQLITE_OPEN_NOMUTEX, nullptr);
    sqlite::Database db(raw);
    if (rc != SQLITE_OK) {
      return Attempt::failed(sqlite::error(db.get(), rc, "cannot open the database", path),
                             sqlite::isCorruption(rc));
    }
    (void)sqlite3_extended_result_codes(db.get(), 1);
    // The loop must not wait on a lock for long; only an operator's sqlite3 shell could hold one.
    (void)sqlite3_busy_timeout(db.get(), 20);
    const bool ro = readOnly || sqlite3_db_readonly(db.get(), "main") == 1;

    // Reading the journal mode is the first access to the file header, so a file that is not a
    // database fails here with SQLITE_NOTADB.
    auto mode = sqlite::Statement::prepare(
        db.get(), ro ? "PRAGMA journal_mode" : "PRAGMA journal_mode=WAL", path);
    if (!mode) {
      const int code = sqlite3_extended_errcode(db.get());
      return Attempt::failed(mode.error(), sqlite::isCorruption(code));
    }
    rc = mode->step();
    if (rc != SQLITE_ROW) {
      return Attempt::failed(sqlite::error(db.get(), rc, "cannot read the journal mode", path),
                             sqlite::isCorruption(rc));
    }
    const std::string journal = mode->columnText(0);
    mode->reset();
    if (!ro && journal != "wal") {
      return Attempt::failed(core::Error{
          Errc::Io, "outbox " + path + ": the file system does not support WAL mode", 0});
    }
    // FULL: with WAL, NORMAL only syncs at checkpoints, so a power cut could lose transactions
    // we have acknowledged; FULL syncs the WAL on every commit (one fsync per grouped commit).
    if (auto r = sqlite::exec(db.get(), "PRAGMA synchronous=FULL", "cannot set synchronous", path);
        !r) {
      return Attempt::failed(r.error());
    }

    if (auto r = sqlite::exec(db.get(), kCacheSize, "cannot set the cache size", path); !r) {
      return Attempt::failed(r.error());
    }

    auto check = sqlite::Statement::prepare(db.get(), "PRAGMA quick_check", path);
    if (!check) {
      return Attempt::failed(check.error(),
                             sqlite::isCorruption(sqlite3_extended_errcode(db.get())));
    }
    rc = check->step();
    if (rc != SQLITE_ROW) {
      return Attempt::failed(sqlite::error(db.get(), rc, "integrity check failed", path),
                             sqlite::isCorruption(rc));
    }
    if (const std::string verdict = check->columnText(0); verdict != "ok") {
      return Attempt::failed(
          core::Error{Errc::Io, "outbox " + path + ": integrity check failed: " + verdict, 0},
          true);
    }
    check->reset();

    auto version = sqlite::Statement::prepare(db.get(), "PRAGMA user_version", path);
    if (!version || version->step() != SQLITE_ROW) {
      return Attempt::failed(sqlite::error(db.get(), sqlite3_extended_errcode(db.get()),
                                           "cannot read the schema", path),
                             sqlite::isCorruption(sqlite3_extended_errcode(db.get())));
    }
    const std::int64_t userVersion = version->columnInt(0);
    version->reset();
    if (userVersion > kSchemaVersion) {
      return Attempt::failed(core::Error{
          Errc::Config,
          "outbox " + path + ": written by a newer iothubd (schema " + std::to_string(userVersion) +
              ", this one knows " + std::to_string(kSchemaVersion) + ")",
          0});
    }
    if (!ro && userVersion < kSchemaVersion) {
      const std::string create =
          std::string(kSchema) + "PRAGMA user_version=" + std::to_string(kSchemaVersion) + ";";
      if (auto r = sqlite::exec(db.get(), create.c_str(), "cannot create the table", path); !r) {
        return Attempt::failed(r.error(), sqlite::isCorruption(sqlite3_extended_errcode(db.get())));
      }
    }

    Attempt a;
    a.readOnly = ro;
    if (userVersion == kSchemaVersion || !ro) {
      auto load = sqlite::Statement::prepare(
          db.get(), "SELECT seq, bytes, expires_at FROM outbox ORDER BY seq", path);
      if (!load) {
        return Attempt::failed(load.error(),
                               sqlite::isCorruption(sqlite3_extended_errcode(db.get())));
      }
      while ((rc = load->step()) == SQLITE_ROW) {
        a.index.push_back(IndexRow{static_cast<std::uint64_t>(load->columnInt(0)),
                                   static_cast<std::uint64_t>(load->columnInt(1)),
                                   static_cast<std::uint64_t>(load->columnInt(2))});
      }
      if (rc != SQLITE_DONE) {
        return Attempt::failed(sqlite::error(db.get(), rc, "cannot read the messages", path),
                               sqlite::isCorruption(rc));
      }
    }
    a.db = std::move(db);
    return a;
  };

  // Read-only fallbacks: mode=ro reads a WAL database whose -shm exists or can be created;
  // immutable=1 reads one on a read-only file system after a clean shutdown (no -wal left).
  auto openReadOnly = [&]() -> Attempt {
    Attempt a = attempt(readOnlyUri(path, false), SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, true);
    if (a.error && !a.corrupt) {
      Attempt b = attempt(readOnlyUri(path, true), SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, true);
      if (!b.error || b.corrupt) {
        return b;
      }
    }
    return a;
  };

  auto openAny = [&]() -> Attempt {
    const bool existed = exists(path);
    if (!existed) {
      // Telemetry may be sensitive: owner only. Created here, before SQLite, because the -wal
      // and -shm files SQLite creates copy the database file's mode. An empty file is an empty
      // database to SQLite.
      const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd < 0) {
        const int err = errno;
        return Attempt::failed(core::Error{
            Errc::Io, "outbox " + path + ": cannot create the database: " + std::strerror(err),
            err});
      }
      ::close(fd);
    }
    Attempt a = attempt(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, false);
    if (a.error && !a.corrupt && existed) {
      // e.g. a file system mounted read-only: EROFS, or the -shm cannot be created.
      Attempt b = openReadOnly();
      if (!b.error || b.corrupt) {
        return b;
      }
    }
    if (!a.error && !a.readOnly) {
      // Reading a WAL database created its -wal file if it was missing. fsync of the WAL on each
      // commit does not make the file's directory entry durable; without this a power cut soon
      // after start could lose the whole WAL, acknowledged messages included.
      syncDirectory(path);
    }
    return a;
  };

  Opened opened;
  Attempt a = openAny();
  if (a.corrupt) {
    if (a.readOnly) {
      return core::fail(
          Errc::Io, "outbox " + path +
                        " is corrupt and cannot be moved aside (read-only): " + a.error->message);
    }
    a.db.reset();
    // Never delete what might still hold messages: the file keeps its content under a new name,
    // next to its -wal/-shm (which SQLite finds by that name), for an operator to look at.
    std::string aside = path + ".corrupt-" + utcStamp(nowUnix);
    for (int n = 1; exists(aside); ++n) {
      aside = path + ".corrupt-" + utcStamp(nowUnix) + "-" + std::to_string(n);
    }
    for (const char* suffix : {"-wal", "-shm", "-journal", ""}) {
      const std::string from = path + suffix;
      if (exists(from) && ::rename(from.c_str(), (aside + suffix).c_str()) != 0) {
        const int err = errno;
        return core::fail(Errc::Io,
                          "outbox " + path + " is corrupt (" + a.error->message +
                              ") and cannot be moved aside: " + std::strerror(err),
                          err);
      }
    }
    syncDirectory(path);
    opened.movedAside = aside;
    a = openAny();
  }
  if (a.error) {
    return core::fail(std::move(*a.error));
  }
  opened.store.reset(new OutboxStore(path, std::move(a.db), a.readOnly));
  opened.index = std::move(a.index);
  opened.readOnly = a.readOnly;
  if (auto r = opened.store->prepareStatements(); !r) {
    return core::fail(r.error());
  }
  return opened;
}

core::Result<void> OutboxStore::prepareStatements() {
  if (!readOnly_) {
    // Reads go through their own connection so that the loop can read committed rows while a
    // commit runs on a worker thread with the writing one (WAL: readers never wait for writers).
    sqlite3* raw = nullptr;
    const int rc =
        sqlite3_open_v2(path_.c_str(), &raw, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr);
    reader_.reset(raw);
    if (rc != SQLITE_OK) {
      return core::fail(
          sqlite::error(reader_.get(), rc, "cannot open a reading connection", path_));
    }
    (void)sqlite3_extended_result_codes(reader_.get(), 1);
    (void)sqlite3_busy_timeout(reader_.get(), 20);
    if (auto r = sqlite::exec(reader_.get(), kCacheSize, "cannot set the cache size", path_); !r) {
      return r;
    }
  }
  sqlite3* readDb = readOnly_ ? db_.get() : reader_.get();
  const auto prepare = [this](sqlite3* db, sqlite::Statement& stmt,
                              const std::string& sql) -> core::Result<void> {
    auto s = sqlite::Statement::prepare(db, sql, path_);
    if (!s) {
      return core::fail(s.error());
    }
    stmt = std::move(*s);
    return {};
  };
  const std::string select = std::string("SELECT ") + kColumns + " FROM outbox WHERE seq = ?1";
  const std::string selectRun =
      std::string("SELECT ") + kColumns + " FROM outbox WHERE seq >= ?1 ORDER BY seq LIMIT ?2";
  // A read-only database without our table (never written) has nothing to select.
  if (auto r = prepare(readDb, select_, select); !r && !readOnly_) {
    return r;
  }
  if (auto r = prepare(readDb, selectRun_, selectRun); !r && !readOnly_) {
    return r;
  }
  if (auto r = prepare(readDb, selectRef_, "SELECT message_id, app FROM outbox WHERE seq = ?1");
      !r && !readOnly_) {
    return r;
  }
  if (readOnly_) {
    return {};
  }
  const std::string insert = std::string("INSERT INTO outbox (") + kColumns +
                             ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, "
                             "?14, ?15, ?16)";
  for (auto [stmt, sql] :
       {std::pair{&insert_, insert},
        {&delete_, std::string("DELETE FROM outbox WHERE seq BETWEEN ?1 AND ?2")},
        {&begin_, std::string("BEGIN IMMEDIATE")},
        {&commit_, std::string("COMMIT")},
        {&rollback_, std::string("ROLLBACK")}}) {
    if (auto r = prepare(db_.get(), *stmt, sql); !r) {
      return r;
    }
  }
  return {};
}

core::Result<void> OutboxStore::write(std::span<const OutboxMessage* const> rows,
                                      std::span<const std::uint64_t> seqs) {
  if (readOnly_) {
    return core::fail(Errc::Io, "outbox " + path_ + " is read-only");
  }
  sqlite3* db = db_.get();
  // Runs `stmt` to completion; SQLITE_DONE is success.
  const auto run = [db, this](sqlite::Statement& stmt,
                              std::string_view what) -> core::Result<void> {
    sqlite::ResetGuard guard(stmt);
    const int rc = stmt.step();
    if (rc != SQLITE_DONE) {
      return core::fail(sqlite::error(db, rc, what, path_));
    }
    return {};
  };
  const auto body = [&]() -> core::Result<void> {
    if (auto r = run(begin_, "cannot begin a transaction"); !r) {
      return r;
    }
    for (const OutboxMessage* row : rows) {
      const auto& m = row->message;
      insert_.bind(1, static_cast<std::int64_t>(row->seq));
      insert_.bind(2, std::string_view(m.messageId()));
      insert_.bind(3, std::string_view(row->app));
      insert_.bind(4, static_cast<std::int64_t>(row->enqueuedAt));
      if (row->expiresAt) {
        insert_.bind(5, static_cast<std::int64_t>(*row->expiresAt));
      } else {
        insert_.bindNull(5);
      }
      insert_.bind(6, static_cast<std::int64_t>(row->bytes));
      insert_.bindBlob(7, m.body());
      // The custom properties as the message encoded them on its way in (the same form as
      // appendBagEntry writes): stored, and read back, without decoding or encoding again.
      insert_.bind(8, m.customPropertyBag());
      int column = kFirstSystemColumn + 1;
      for (Field field : kSystemColumns) {
        insert_.bind(column++, m.system().*field);
      }
      if (auto r = run(insert_, "cannot store a message"); !r) {
        return r;
      }
    }
    // Delivered messages come in runs of consecutive seqs: one statement per run, not per row.
    // Only exactly consecutive seqs are merged, so a range never covers a row that stays.
    std::vector<std::uint64_t> sorted(seqs.begin(), seqs.end());
    std::sort(sorted.begin(), sorted.end());
    for (std::size_t i = 0; i < sorted.size();) {
      std::size_t end = i;
      while (end + 1 < sorted.size() && sorted[end + 1] <= sorted[end] + 1) {
        ++end;
      }
      delete_.bind(1, static_cast<std::int64_t>(sorted[i]));
      delete_.bind(2, static_cast<std::int64_t>(sorted[end]));
      if (auto r = run(delete_, "cannot delete messages"); !r) {
        return r;
      }
      i = end + 1;
    }
    return run(commit_, "cannot commit");
  };
  auto result = body();
  if (!result && sqlite3_get_autocommit(db) == 0) {
    // Some errors (SQLITE_FULL, IOERR) roll back on their own; others leave it to us.
    sqlite::ResetGuard guard(rollback_);
    (void)rollback_.step();
  }
  return result;
}

core::Result<OutboxMessage> OutboxStore::decodeRow(sqlite::Statement& stmt) const {
  const auto seq = static_cast<std::uint64_t>(stmt.columnInt(0));
  proto::SystemProperties system;
  system.messageId = stmt.columnText(1);
  int column = kFirstSystemColumn;
  for (Field field : kSystemColumns) {
    system.*field = stmt.columnOptionalText(column++);
  }
  const auto bytes = static_cast<std::uint64_t>(stmt.columnInt(5));
  auto message = proto::restoreCheckedMessage(stmt.columnText(6), std::move(system),
                                              stmt.columnText(7), bytes);
  if (!message) {
    return core::fail(Errc::Protocol, "outbox " + path_ + ": message " + std::to_string(seq) +
                                          " cannot be sent: " + message.error().message);
  }
  std::optional<std::uint64_t> expiresAt;
  if (!stmt.columnIsNull(4)) {
    expiresAt = static_cast<std::uint64_t>(stmt.columnInt(4));
  }
  return OutboxMessage{seq,
                       stmt.columnText(2),
                       std::move(*message),
                       static_cast<std::uint64_t>(stmt.columnInt(3)),
                       expiresAt,
                       bytes};
}

core::Result<OutboxMessage> OutboxStore::read(std::uint64_t seq) {
  if (select_.get() == nullptr) {
    return core::fail(Errc::Protocol, "outbox " + path_ + ": no message " + std::to_string(seq));
  }
  sqlite::ResetGuard guard(select_);
  select_.bind(1, static_cast<std::int64_t>(seq));
  const int rc = select_.step();
  if (rc == SQLITE_DONE) {
    return core::fail(Errc::Protocol, "outbox " + path_ + ": no message " + std::to_string(seq));
  }
  if (rc != SQLITE_ROW) {
    return core::fail(
        sqlite::error(readOnly_ ? db_.get() : reader_.get(), rc, "cannot read a message", path_));
  }
  return decodeRow(select_);
}

core::Result<void> OutboxStore::readRun(std::uint64_t seq, std::size_t maxRows,
                                        std::uint64_t maxBytes, std::deque<OutboxMessage>& out) {
  if (selectRun_.get() == nullptr) {
    return core::fail(Errc::Protocol, "outbox " + path_ + ": no message " + std::to_string(seq));
  }
  sqlite::ResetGuard guard(selectRun_);
  selectRun_.bind(1, static_cast<std::int64_t>(seq));
  selectRun_.bind(2, static_cast<std::int64_t>(std::max<std::size_t>(maxRows, 1)));
  const std::size_t before = out.size();
  std::uint64_t bytes = 0;
  int rc = SQLITE_ROW;
  while (bytes < maxBytes || out.size() == before) {
    rc = selectRun_.step();
    if (rc != SQLITE_ROW) {
      break;
    }
    const bool first = out.size() == before;
    if (first && static_cast<std::uint64_t>(selectRun_.columnInt(0)) != seq) {
      rc = SQLITE_DONE;  // `seq` itself is not there
      break;
    }
    auto row = decodeRow(selectRun_);
    if (!row) {
      if (first) {
        return core::fail(row.error());
      }
      return {};  // reported once asked for on its own
    }
    bytes += row->bytes;
    out.push_back(std::move(*row));
  }
  if (out.size() > before) {
    return {};
  }
  if (rc == SQLITE_DONE || rc == SQLITE_ROW) {
    return core::fail(Errc::Protocol, "outbox " + path_ + ": no message " + std::to_string(seq));
  }
  return core::fail(
      sqlite::error(readOnly_ ? db_.get() : reader_.get(), rc, "cannot read a message", path_));
}

EntryRef OutboxStore::ref(std::uint64_t seq) {
  EntryRef ref;
  ref.seq = seq;
  if (selectRef_.get() == nullptr) {
    return ref;
  }
  sqlite::ResetGuard guard(selectRef_);
  selectRef_.bind(1, static_cast<std::int64_t>(seq));
  if (selectRef_.step() == SQLITE_ROW) {
    ref.messageId = selectRef_.columnText(0);
    ref.app = selectRef_.columnText(1);
  }
  return ref;
}

}  // namespace iothubd::outbox
