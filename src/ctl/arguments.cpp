// SPDX-License-Identifier: MIT
#include "arguments.hpp"

#include <charconv>
#include <set>
#include <string_view>

namespace iothubd::ctl {
namespace {

using core::Errc;
using core::fail;

/// An option: its names, whether it takes a value, and the commands it belongs to (empty: all).
struct OptionSpec {
  std::string_view name;
  std::string_view shortName;
  bool takesValue;
  std::set<Command> commands;
};

const std::vector<OptionSpec>& optionSpecs() {
  static const std::vector<OptionSpec> specs{
      {"--json", "", false, {}},
      {"--timeout", "", true, {}},
      {"--help", "-h", false, {}},
      {"--version", "", false, {}},
      {"--property", "-p", true, {Command::Send}},
      {"--system-property", "", true, {Command::Send}},
      {"--content-type", "", true, {Command::Send}},
      {"--content-encoding", "", true, {Command::Send}},
      {"--message-id", "", true, {Command::Send}},
      {"--queue", "", false, {Command::Send}},
      {"--binary", "", false, {Command::Send}},
      {"--count", "-n", true, {Command::TwinWatch, Command::C2dWatch, Command::MethodServe}},
      {"--name", "", true, {Command::Upload}},
      {"--config", "", true, {Command::Check}},
      {"--credentials-dir", "", true, {Command::Check}},
  };
  return specs;
}

const OptionSpec* findOption(std::string_view name) {
  for (const auto& spec : optionSpecs()) {
    if (spec.name == name || (!spec.shortName.empty() && spec.shortName == name)) {
      return &spec;
    }
  }
  return nullptr;
}

core::Result<std::uint64_t> number(std::string_view option, std::string_view text,
                                   std::uint64_t min, std::uint64_t max) {
  std::uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value < min || value > max) {
    return fail(Errc::InvalidArgument, std::string(option) + " wants a whole number from " +
                                           std::to_string(min) + " to " + std::to_string(max) +
                                           ", not \"" + std::string(text) + "\"");
  }
  return value;
}

core::Result<std::pair<std::string, std::string>> keyValue(std::string_view option,
                                                           std::string_view text) {
  auto eq = text.find('=');
  if (eq == std::string_view::npos || eq == 0) {
    return fail(Errc::InvalidArgument,
                std::string(option) + " wants KEY=VALUE, not \"" + std::string(text) + "\"");
  }
  return std::pair{std::string(text.substr(0, eq)), std::string(text.substr(eq + 1))};
}

struct Parsed {
  std::vector<std::pair<const OptionSpec*, std::string>> options;
  std::vector<std::string> positionals;
  std::vector<std::string> afterDashes;
  bool sawDashes = false;
};

core::Result<Parsed> split(const std::vector<std::string>& args) {
  Parsed p;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--") {
      p.sawDashes = true;
      p.afterDashes.assign(args.begin() + static_cast<std::ptrdiff_t>(i) + 1, args.end());
      break;
    }
    if (arg.size() < 2 || arg[0] != '-') {
      p.positionals.push_back(arg);  // "-" alone is a positional: standard input
      continue;
    }
    std::string name = arg;
    std::optional<std::string> value;
    if (auto eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    }
    const OptionSpec* spec = findOption(name);
    if (spec == nullptr) {
      return fail(Errc::InvalidArgument, "unknown option " + name);
    }
    if (spec->takesValue && !value) {
      if (i + 1 >= args.size()) {
        return fail(Errc::InvalidArgument, name + " needs a value");
      }
      value = args[++i];
    } else if (!spec->takesValue && value) {
      return fail(Errc::InvalidArgument, name + " takes no value");
    }
    p.options.emplace_back(spec, value.value_or(""));
  }
  return p;
}

const char* commandName(Command c) {
  switch (c) {
    case Command::Status:
      return "status";
    case Command::Send:
      return "send";
    case Command::TwinGet:
      return "twin get";
    case Command::TwinPatch:
      return "twin patch";
    case Command::TwinWatch:
      return "twin watch";
    case Command::MethodServe:
      return "method serve";
    case Command::MethodList:
      return "method list";
    case Command::C2dWatch:
      return "c2d watch";
    case Command::Upload:
      return "upload";
    case Command::Check:
      return "check";
    case Command::Help:
    case Command::Version:
      break;
  }
  return "";
}

/// The command named by the first positionals; consumes them.
core::Result<Command> command(std::vector<std::string>& words) {
  if (words.empty()) {
    return fail(Errc::InvalidArgument, "no command given");
  }
  const std::string first = words.front();
  words.erase(words.begin());
  auto sub =
      [&](const char* group,
          std::initializer_list<std::pair<const char*, Command>> choices) -> core::Result<Command> {
    std::string names;
    for (const auto& [n, c] : choices) {
      names += names.empty() ? n : std::string("|") + n;
    }
    if (words.empty()) {
      return fail(Errc::InvalidArgument, std::string(group) + " needs " + names);
    }
    for (const auto& [n, c] : choices) {
      if (words.front() == n) {
        words.erase(words.begin());
        return c;
      }
    }
    return fail(Errc::InvalidArgument, "unknown command \"" + std::string(group) + " " +
                                           words.front() + "\" (" + group + " " + names + ")");
  };
  if (first == "status") {
    return Command::Status;
  }
  if (first == "send") {
    return Command::Send;
  }
  if (first == "twin") {
    return sub(
        "twin",
        {{"get", Command::TwinGet}, {"patch", Command::TwinPatch}, {"watch", Command::TwinWatch}});
  }
  if (first == "method") {
    return sub("method", {{"serve", Command::MethodServe}, {"list", Command::MethodList}});
  }
  if (first == "c2d") {
    return sub("c2d", {{"watch", Command::C2dWatch}});
  }
  if (first == "upload") {
    return Command::Upload;
  }
  if (first == "check") {
    return Command::Check;
  }
  if (first == "help") {
    return Command::Help;
  }
  return fail(Errc::InvalidArgument, "unknown command \"" + first + "\"");
}

core::Result<void> applyOption(Invocation& inv, const OptionSpec& spec, const std::string& value) {
  const std::string_view name = spec.name;
  if (name == "--json") {
    inv.json = true;
  } else if (name == "--timeout") {
    auto seconds = number(name, value, 1, 7 * 24 * 3600);
    if (!seconds) {
      return fail(seconds.error());
    }
    inv.timeout = std::chrono::seconds(*seconds);
  } else if (name == "--property" || name == "--system-property") {
    auto kv = keyValue(name, value);
    if (!kv) {
      return fail(kv.error());
    }
    auto& target = name == "--property" ? inv.send.properties : inv.send.systemProperties;
    target[kv->first] = kv->second;
  } else if (name == "--content-type") {
    inv.send.systemProperties["content-type"] = value;
  } else if (name == "--content-encoding") {
    inv.send.systemProperties["content-encoding"] = value;
  } else if (name == "--message-id") {
    inv.send.systemProperties["message-id"] = value;
  } else if (name == "--queue") {
    inv.send.queue = true;
  } else if (name == "--binary") {
    inv.send.binary = true;
  } else if (name == "--count") {
    auto n = number(name, value, 1, UINT32_MAX);
    if (!n) {
      return fail(n.error());
    }
    inv.count = *n;
  } else if (name == "--name") {
    inv.blobName = value;
  } else if (name == "--config") {
    inv.configPath = value;
  } else if (name == "--credentials-dir") {
    inv.credentialsDirectory = value;
  }
  return {};
}

core::Result<void> expectPositionals(const Invocation& inv, const std::vector<std::string>& words,
                                     std::size_t count, const char* what) {
  if (words.size() < count) {
    return fail(Errc::InvalidArgument, std::string(commandName(inv.command)) + " needs " + what);
  }
  if (words.size() > count) {
    return fail(Errc::InvalidArgument, std::string(commandName(inv.command)) +
                                           ": unexpected argument \"" + words[count] + "\"");
  }
  return {};
}

}  // namespace

core::Result<Invocation> parseArguments(const std::vector<std::string>& args) {
  auto parsed = split(args);
  if (!parsed) {
    return fail(parsed.error());
  }
  Invocation inv;
  for (const auto& [spec, value] : parsed->options) {
    if (spec->name == "--help") {
      inv.command = Command::Help;
      return inv;
    }
    if (spec->name == "--version") {
      inv.command = Command::Version;
      return inv;
    }
  }
  auto words = parsed->positionals;
  auto cmd = command(words);
  if (!cmd) {
    return fail(cmd.error());
  }
  inv.command = *cmd;
  if (inv.command == Command::Help) {
    return inv;
  }
  for (const auto& [spec, value] : parsed->options) {
    if (!spec->commands.empty() && spec->commands.count(inv.command) == 0) {
      return fail(Errc::InvalidArgument,
                  std::string(spec->name) + " does not go with " + commandName(inv.command));
    }
    if (auto r = applyOption(inv, *spec, value); !r) {
      return fail(r.error());
    }
  }
  // After "--" come a method's command line, or a body that starts with '-'.
  if (parsed->sawDashes && inv.command != Command::MethodServe) {
    words.insert(words.end(), parsed->afterDashes.begin(), parsed->afterDashes.end());
  }

  core::Result<void> ok;
  switch (inv.command) {
    case Command::Send:
      ok = expectPositionals(inv, words, 1, "a message body, or - to read messages from stdin");
      if (ok) {
        inv.send.body = words[0];
        if (inv.send.fromStdin() && !inv.send.binary &&
            inv.send.systemProperties.count("message-id") != 0) {
          return fail(Errc::InvalidArgument,
                      "--message-id names one message; with - every line is a message of its own");
        }
      }
      break;
    case Command::TwinPatch:
      ok = expectPositionals(inv, words, 1, "a JSON patch, or - to read it from stdin");
      if (ok) {
        inv.patch = words[0];
      }
      break;
    case Command::MethodServe:
      ok = expectPositionals(inv, words, 1, "a method name (or *)");
      if (ok && (!parsed->sawDashes || parsed->afterDashes.empty())) {
        return fail(Errc::InvalidArgument,
                    "method serve needs the command after --: method serve NAME -- COMMAND...");
      }
      if (ok) {
        inv.methodName = words[0];
        inv.methodCommand = parsed->afterDashes;
      }
      break;
    case Command::Upload:
      ok = expectPositionals(inv, words, 1, "a file (or - for stdin)");
      if (ok) {
        inv.uploadFile = words[0];
        if (inv.uploadFile == "-" && inv.blobName.empty()) {
          return fail(Errc::InvalidArgument, "upload - needs --name BLOB");
        }
      }
      break;
    default:
      ok = expectPositionals(inv, words, 0, "");
      break;
  }
  if (!ok) {
    return fail(ok.error());
  }
  return inv;
}

std::string usage() {
  return R"(Usage: iothubctl [--json] [--timeout SECONDS] COMMAND ...

Talks to iothubd, this gateway's Azure IoT Hub device connection, on the system bus.

Commands:
  status                          connection state, hub, device, outbox, last error
  send BODY|- [OPTIONS]           send telemetry; - sends every line of stdin (in batches)
      -p, --property KEY=VALUE    an application property (repeatable)
      --content-type TYPE, --content-encoding ENC, --message-id ID
      --system-property KEY=VALUE another system property (correlation-id, expiry-time-utc, ...)
      --queue                     store and forward: done once stored, delivered later
      --binary                    the body is bytes (with -: all of stdin is one message)
  twin get                        the device twin
  twin patch JSON|-               patch the reported properties; prints the new version
  twin watch [--count N]          desired-property patches, one JSON per line
  method serve NAME -- COMMAND... answer direct method NAME (or *) by running COMMAND:
                                  payload on stdin, its stdout is the answer, exit 0 is 200
  method list                     the claimed direct-method names and who holds them
  c2d watch [--count N]           cloud-to-device messages, one JSON per line
  upload FILE|- [--name BLOB]     upload a file (opened with your rights) to blob storage
  check [--config PATH] [--credentials-dir DIR]
                                  diagnose the configuration and the way to the hub (as root)

Options:
  --json             machine-readable output
  --timeout SECONDS  how long to wait for iothubd (default: what the operation needs)
  -h, --help         this text
  --version          iothubctl's version

Exit status: 0 done, 1 failed, 3 not connected (status), 64 usage, 65 input refused,
66 file not readable, 69 iothubd not available, 75 try again later, 77 not allowed by the bus
policy, 78 the hub refused the device's credentials. See iothubctl(1).
)";
}

}  // namespace iothubd::ctl
