// SPDX-License-Identifier: MIT
// iothubd-test-peer: one bus client in a process of its own, driven over stdin/stdout, so that
// integration tests can call the daemon as another user (the bus policy and the daemon decide by
// the credentials of the connecting process). The test starts it with the user's uid and groups
// (tests/integration/bus_peer.cpp).
//
//   iothubd-test-peer BUS-ADDRESS
//
// Commands, one JSON object per line on stdin; answers and events, one per line on stdout:
//   {"id":N,"op":"call","dest":D,"path":P,"iface":I,"member":M,"sig":S,"args":[...]}
//       -> {"id":N,"reply":[...]} or {"id":N,"error":NAME,"message":TEXT}
//       `h` arguments are paths this process opens read-only with its own rights.
//   {"id":N,"op":"signal","dest":D|"","path":P,"iface":I,"member":M,"sig":S,"args":[...]}
//   {"id":N,"op":"match","rule":R}        AddMatch, sent as is (eavesdrop=true included)
//   {"id":N,"op":"sync"}                  a round trip to the bus: every message the bus sent us
//                                         before it has been printed when the answer comes
//   {"id":N,"op":"unique"}                our unique name
//   {"id":N,"op":"link","from":A,"to":B}  link(2) with our rights; reply [errno]
//   every other incoming message -> {"event":"message","type":T,"sender":S,"dest":D,
//                                    "path":P,"iface":I,"member":M,"args":[...]}
#include <fcntl.h>
#include <poll.h>
#include <systemd/sd-bus.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "raw_bus.hpp"

namespace {

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

void check(int r, const char* what) {
  if (r < 0) {
    throw std::runtime_error(std::string(what) + ": " + std::strerror(-r));
  }
}

void append(sd_bus_message* m, std::string_view type, const rapidjson::Value& v);

void appendAll(sd_bus_message* m, std::string_view sig, const rapidjson::Value& values) {
  rapidjson::SizeType i = 0;
  while (!sig.empty()) {
    const auto n = iothubd::testing::completeTypeLength(sig);
    if (!values.IsArray() || i >= values.Size()) {
      throw std::runtime_error("too few arguments for the signature");
    }
    append(m, sig.substr(0, n), values[i++]);
    sig.remove_prefix(n);
  }
}

void append(sd_bus_message* m, std::string_view type, const rapidjson::Value& v) {
  const std::string t(type);
  switch (type[0]) {
    case 's':
    case 'o':
    case 'g':
      check(sd_bus_message_append_basic(m, type[0], v.GetString()), "append string");
      return;
    case 'b': {
      int b = v.GetBool() ? 1 : 0;
      check(sd_bus_message_append_basic(m, 'b', &b), "append bool");
      return;
    }
    case 'i': {
      auto x = static_cast<std::int32_t>(v.GetInt64());
      check(sd_bus_message_append_basic(m, 'i', &x), "append int");
      return;
    }
    case 'u': {
      auto x = static_cast<std::uint32_t>(v.GetUint64());
      check(sd_bus_message_append_basic(m, 'u', &x), "append uint");
      return;
    }
    case 't': {
      std::uint64_t x = v.GetUint64();
      check(sd_bus_message_append_basic(m, 't', &x), "append uint64");
      return;
    }
    case 'y': {
      auto x = static_cast<std::uint8_t>(v.GetUint());
      check(sd_bus_message_append_basic(m, 'y', &x), "append byte");
      return;
    }
    case 'h': {
      // The path is opened here, with this process's own rights, like an app would.
      int fd = ::open(v.GetString(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        throw std::runtime_error(std::string("open ") + v.GetString() + ": " +
                                 std::strerror(errno));
      }
      int r = sd_bus_message_append_basic(m, 'h', &fd);  // appends a duplicate
      ::close(fd);
      check(r, "append fd");
      return;
    }
    case 'a': {
      const std::string element(type.substr(1));
      check(sd_bus_message_open_container(m, 'a', element.c_str()), "open array");
      if (element[0] == '{') {
        const std::string kv = element.substr(1, element.size() - 2);
        const std::string keyType = kv.substr(0, 1);
        const std::string valueType = kv.substr(1);
        for (auto it = v.MemberBegin(); it != v.MemberEnd(); ++it) {
          check(sd_bus_message_open_container(m, 'e', kv.c_str()), "open entry");
          append(m, keyType, it->name);
          append(m, valueType, it->value);
          check(sd_bus_message_close_container(m), "close entry");
        }
      } else {
        for (const auto& element_value : v.GetArray()) {
          append(m, element, element_value);
        }
      }
      check(sd_bus_message_close_container(m), "close array");
      return;
    }
    case '(': {
      const std::string inner(type.substr(1, type.size() - 2));
      check(sd_bus_message_open_container(m, 'r', inner.c_str()), "open struct");
      appendAll(m, inner, v);
      check(sd_bus_message_close_container(m), "close struct");
      return;
    }
    default:
      throw std::runtime_error("unsupported type " + t);
  }
}

/// Writes the message's body as JSON values (arrays for arrays and structs, objects for
/// dictionaries, variants unwrapped).
void readValues(sd_bus_message* m, Writer& w);

void readOne(sd_bus_message* m, char type, const char* contents, Writer& w) {
  switch (type) {
    case 's':
    case 'o':
    case 'g': {
      const char* s = nullptr;
      check(sd_bus_message_read_basic(m, type, &s), "read string");
      w.String(s);
      return;
    }
    case 'b': {
      int b = 0;
      check(sd_bus_message_read_basic(m, 'b', &b), "read bool");
      w.Bool(b != 0);
      return;
    }
    case 'y': {
      std::uint8_t x = 0;
      check(sd_bus_message_read_basic(m, 'y', &x), "read byte");
      w.Uint(x);
      return;
    }
    case 'n':
    case 'q': {
      std::uint16_t x = 0;
      check(sd_bus_message_read_basic(m, type, &x), "read 16");
      type == 'n' ? w.Int(static_cast<std::int16_t>(x)) : w.Uint(x);
      return;
    }
    case 'i':
    case 'u': {
      std::uint32_t x = 0;
      check(sd_bus_message_read_basic(m, type, &x), "read 32");
      type == 'i' ? w.Int(static_cast<std::int32_t>(x)) : w.Uint(x);
      return;
    }
    case 'x':
    case 't': {
      std::uint64_t x = 0;
      check(sd_bus_message_read_basic(m, type, &x), "read 64");
      type == 'x' ? w.Int64(static_cast<std::int64_t>(x)) : w.Uint64(x);
      return;
    }
    case 'd': {
      double d = 0;
      check(sd_bus_message_read_basic(m, 'd', &d), "read double");
      w.Double(d);
      return;
    }
    case 'h': {
      int fd = -1;
      check(sd_bus_message_read_basic(m, 'h', &fd), "read fd");
      w.String("fd");
      return;
    }
    case 'a': {
      check(sd_bus_message_enter_container(m, 'a', contents), "enter array");
      const bool dict = contents[0] == '{';
      dict ? w.StartObject() : w.StartArray();
      while (true) {
        char t = 0;
        const char* c = nullptr;
        int r = sd_bus_message_peek_type(m, &t, &c);
        check(r, "peek");
        if (r == 0) {
          break;
        }
        if (dict) {
          check(sd_bus_message_enter_container(m, 'e', c), "enter entry");
          // The key as a string, whatever its type.
          char kt = 0;
          check(sd_bus_message_peek_type(m, &kt, nullptr), "peek key");
          if (kt == 's' || kt == 'o' || kt == 'g') {
            const char* key = nullptr;
            check(sd_bus_message_read_basic(m, kt, &key), "read key");
            w.Key(key);
          } else {
            std::uint64_t key = 0;
            check(sd_bus_message_read_basic(m, kt, &key), "read key");
            w.Key(std::to_string(key).c_str());
          }
          char vt = 0;
          const char* vc = nullptr;
          check(sd_bus_message_peek_type(m, &vt, &vc), "peek value");
          readOne(m, vt, vc, w);
          check(sd_bus_message_exit_container(m), "exit entry");
        } else {
          readOne(m, t, c, w);
        }
      }
      dict ? w.EndObject() : w.EndArray();
      check(sd_bus_message_exit_container(m), "exit array");
      return;
    }
    case 'v': {
      check(sd_bus_message_enter_container(m, 'v', contents), "enter variant");
      char t = 0;
      const char* c = nullptr;
      check(sd_bus_message_peek_type(m, &t, &c), "peek variant");
      readOne(m, t, c, w);
      check(sd_bus_message_exit_container(m), "exit variant");
      return;
    }
    case 'r': {
      check(sd_bus_message_enter_container(m, 'r', contents), "enter struct");
      w.StartArray();
      readValues(m, w);
      w.EndArray();
      check(sd_bus_message_exit_container(m), "exit struct");
      return;
    }
    default:
      check(sd_bus_message_skip(m, nullptr), "skip");
      w.Null();
  }
}

void readValues(sd_bus_message* m, Writer& w) {
  while (true) {
    char t = 0;
    const char* c = nullptr;
    int r = sd_bus_message_peek_type(m, &t, &c);
    check(r, "peek");
    if (r == 0) {
      return;
    }
    readOne(m, t, c, w);
  }
}

void emit(const rapidjson::StringBuffer& line) {
  std::fwrite(line.GetString(), 1, line.GetSize(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

void answerError(std::int64_t id, const std::string& name, const std::string& message) {
  rapidjson::StringBuffer out;
  Writer w(out);
  w.StartObject();
  w.Key("id");
  w.Int64(id);
  w.Key("error");
  w.String(name.c_str());
  w.Key("message");
  w.String(message.c_str());
  w.EndObject();
  emit(out);
}

void answerMessage(std::int64_t id, sd_bus_message* reply) {
  if (sd_bus_message_is_method_error(reply, nullptr) > 0) {
    const sd_bus_error* e = sd_bus_message_get_error(reply);
    answerError(id, e != nullptr && e->name != nullptr ? e->name : "?",
                e != nullptr && e->message != nullptr ? e->message : "");
    return;
  }
  rapidjson::StringBuffer out;
  Writer w(out);
  w.StartObject();
  w.Key("id");
  w.Int64(id);
  w.Key("reply");
  w.StartArray();
  try {
    readValues(reply, w);
  } catch (const std::exception&) {
  }
  w.EndArray();
  w.EndObject();
  emit(out);
}

struct Pending {
  std::int64_t id;
};

int onReply(sd_bus_message* m, void* userdata, sd_bus_error*) {
  answerMessage(static_cast<Pending*>(userdata)->id, m);
  return 0;
}

/// Every message that is not an answer to one of our calls (signals, eavesdropped traffic).
int onAnything(sd_bus_message* m, void*, sd_bus_error*) {
  std::uint8_t type = 0;
  (void)sd_bus_message_get_type(m, &type);
  const char* kinds[] = {"invalid", "method_call", "method_return", "error", "signal"};
  auto str = [](const char* s) { return s != nullptr ? s : ""; };
  rapidjson::StringBuffer out;
  Writer w(out);
  w.StartObject();
  w.Key("event");
  w.String("message");
  w.Key("type");
  w.String(type < 5 ? kinds[type] : "?");
  w.Key("sender");
  w.String(str(sd_bus_message_get_sender(m)));
  w.Key("dest");
  w.String(str(sd_bus_message_get_destination(m)));
  w.Key("path");
  w.String(str(sd_bus_message_get_path(m)));
  w.Key("iface");
  w.String(str(sd_bus_message_get_interface(m)));
  w.Key("member");
  w.String(str(sd_bus_message_get_member(m)));
  w.Key("args");
  w.StartArray();
  try {
    readValues(m, w);
  } catch (const std::exception&) {
  }
  w.EndArray();
  w.EndObject();
  emit(out);
  return 0;
}

/// {"id":N,"reply":[...]} with what `values` writes into the array.
template <class Values>
void answer(std::int64_t id, Values&& values) {
  rapidjson::StringBuffer out;
  Writer w(out);
  w.StartObject();
  w.Key("id");
  w.Int64(id);
  w.Key("reply");
  w.StartArray();
  values(w);
  w.EndArray();
  w.EndObject();
  emit(out);
}

void ok(std::int64_t id) {
  answer(id, [](Writer&) {});
}

using MessagePtr = std::unique_ptr<sd_bus_message, decltype(&sd_bus_message_unref)>;

/// Sends `m` and answers command `id` with its reply when it comes.
void callAsync(sd_bus* bus, sd_bus_message* m, std::int64_t id) {
  auto pending = std::make_unique<Pending>(Pending{id});
  sd_bus_slot* slot = nullptr;
  check(sd_bus_call_async(bus, &slot, m, &onReply, pending.get(), 30'000'000), "call");
  // The slot owns the record from now on: freed with it, answered or not (at exit).
  (void)sd_bus_slot_set_destroy_callback(slot, [](void* p) { delete static_cast<Pending*>(p); });
  (void)sd_bus_slot_set_floating(slot, 1);  // the bus holds the slot now: drop our reference
  sd_bus_slot_unref(slot);
  (void)pending.release();
}

/// A call to the bus driver itself.
MessagePtr driverCall(sd_bus* bus, const char* member) {
  sd_bus_message* raw = nullptr;
  check(sd_bus_message_new_method_call(bus, &raw, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                       "org.freedesktop.DBus", member),
        "new call");
  return {raw, &sd_bus_message_unref};
}

const char* member(const rapidjson::Value& cmd, const char* name) {
  return cmd.HasMember(name) && cmd[name].IsString() ? cmd[name].GetString() : "";
}

void command(sd_bus* bus, const std::string& line) {
  rapidjson::Document cmd;
  cmd.Parse(line.c_str());
  if (cmd.HasParseError() || !cmd.IsObject()) {
    answerError(-1, "peer.BadCommand", line);
    return;
  }
  const std::int64_t id = cmd.HasMember("id") ? cmd["id"].GetInt64() : -1;
  const std::string op = member(cmd, "op");
  try {
    if (op == "call" || op == "signal") {
      sd_bus_message* raw = nullptr;
      const char* dest = member(cmd, "dest");
      if (op == "call") {
        check(sd_bus_message_new_method_call(bus, &raw, dest, member(cmd, "path"),
                                             member(cmd, "iface"), member(cmd, "member")),
              "new call");
      } else {
        check(sd_bus_message_new_signal(bus, &raw, member(cmd, "path"), member(cmd, "iface"),
                                        member(cmd, "member")),
              "new signal");
        if (*dest != '\0') {
          check(sd_bus_message_set_destination(raw, dest), "destination");
        }
      }
      MessagePtr m(raw, &sd_bus_message_unref);
      static const rapidjson::Value kNoArgs(rapidjson::kArrayType);
      appendAll(m.get(), member(cmd, "sig"), cmd.HasMember("args") ? cmd["args"] : kNoArgs);
      if (op == "signal") {
        check(sd_bus_send(bus, m.get(), nullptr), "send");
        ok(id);
        return;
      }
      callAsync(bus, m.get(), id);
    } else if (op == "match") {
      // AddMatch sent as it is: sd-bus's own match parser knows no "eavesdrop" key. What the
      // rule brings in reaches the filter below.
      auto m = driverCall(bus, "AddMatch");
      check(sd_bus_message_append(m.get(), "s", member(cmd, "rule")), "append rule");
      callAsync(bus, m.get(), id);
    } else if (op == "sync") {
      callAsync(bus, driverCall(bus, "GetId").get(), id);
    } else if (op == "unique") {
      const char* name = nullptr;
      check(sd_bus_get_unique_name(bus, &name), "unique name");
      answer(id, [&](Writer& w) { w.String(name); });
    } else if (op == "link") {
      int err = ::link(member(cmd, "from"), member(cmd, "to")) == 0 ? 0 : errno;
      answer(id, [&](Writer& w) { w.Int(err); });
    } else {
      answerError(id, "peer.BadCommand", "unknown op " + op);
    }
  } catch (const std::exception& e) {
    answerError(id, "peer.Failed", e.what());
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: iothubd-test-peer BUS-ADDRESS\n";
    return 64;
  }
  sd_bus* bus = nullptr;
  int r = sd_bus_new(&bus);
  if (r >= 0) {
    r = sd_bus_set_address(bus, argv[1]);
  }
  if (r >= 0) {
    r = sd_bus_set_bus_client(bus, 1);
  }
  if (r >= 0) {
    r = sd_bus_start(bus);
  }
  if (r < 0) {
    std::cerr << "iothubd-test-peer: cannot connect to " << argv[1] << ": " << std::strerror(-r)
              << "\n";
    sd_bus_unref(bus);
    return 69;
  }
  // Every message that is not the answer to one of our calls: unicasts to us, broadcasts our
  // match rules brought in, and whatever eavesdropping the bus allows.
  (void)sd_bus_add_filter(
      bus, nullptr,
      [](sd_bus_message* m, void*, sd_bus_error*) -> int {
        std::uint8_t type = 0;
        (void)sd_bus_message_get_type(m, &type);
        if (type == SD_BUS_MESSAGE_METHOD_RETURN || type == SD_BUS_MESSAGE_METHOD_ERROR) {
          const char* dest = sd_bus_message_get_destination(m);
          const char* self = nullptr;
          if (dest == nullptr || sd_bus_get_unique_name(sd_bus_message_get_bus(m), &self) < 0 ||
              std::strcmp(dest, self) == 0) {
            return 0;  // a reply of ours that no call waits for any more
          }
        }
        onAnything(m, nullptr, nullptr);
        // Signals stop here; calls addressed to us go on to sd-bus (which answers UnknownObject).
        return type == SD_BUS_MESSAGE_SIGNAL ? 1 : 0;
      },
      nullptr);
  // Until the test closes our stdin (or the bus closes us).
  std::string pending;
  int status = 0;
  while (true) {
    while ((r = sd_bus_process(bus, nullptr)) > 0) {
    }
    if (r < 0) {
      std::cerr << "iothubd-test-peer: bus: " << std::strerror(-r) << "\n";
      status = 1;
      break;
    }
    pollfd fds[2] = {{sd_bus_get_fd(bus), static_cast<short>(sd_bus_get_events(bus)), 0},
                     {STDIN_FILENO, POLLIN, 0}};
    // sd-bus's own timeouts (call timeouts) are coarse here: a tenth of a second is plenty.
    std::uint64_t usec = 0;
    int timeout = sd_bus_get_timeout(bus, &usec) > 0 && usec != UINT64_MAX ? 100 : -1;
    (void)::poll(fds, 2, timeout);
    if ((fds[1].revents & (POLLIN | POLLHUP)) != 0) {
      char buf[65536];
      ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
      if (n <= 0) {
        break;
      }
      pending.append(buf, static_cast<std::size_t>(n));
      for (auto nl = pending.find('\n'); nl != std::string::npos; nl = pending.find('\n')) {
        std::string line = pending.substr(0, nl);
        pending.erase(0, nl + 1);
        if (!line.empty()) {
          command(bus, line);
        }
      }
    }
  }
  sd_bus_flush_close_unref(bus);
  return status;
}
