// SPDX-License-Identifier: MIT
#include "iothubd/provisioning/assignment_store.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <utility>

#include "iothubd/core/log.hpp"
#include "iothubd/core/unique_fd.hpp"
#include "iothubd/proto/base64.hpp"
#include "iothubd/proto/mqtt_identity.hpp"

namespace iothubd::provisioning {
namespace {

using core::Errc;
using core::fail;
using core::logf;
using core::LogLevel;

constexpr int kFormatVersion = 1;
/// Far larger than any assignment; a bigger file is not ours.
constexpr std::size_t kMaxFileBytes = 64 * 1024;

core::Result<void> ioError(const std::string& what, int err) {
  return fail(Errc::Io, what + ": " + std::strerror(err), err);
}

std::string hex(const unsigned char* bytes, std::size_t size) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(size * 2);
  for (std::size_t i = 0; i < size; ++i) {
    out.push_back(kHex[bytes[i] >> 4]);
    out.push_back(kHex[bytes[i] & 0x0F]);
  }
  return out;
}

std::string sha256Hex(std::string_view data) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int length = 0;
  EVP_Digest(data.data(), data.size(), digest.data(), &length, EVP_sha256(), nullptr);
  return hex(digest.data(), length);
}

/// Reads a whole (small) file. Errors: errno.
core::Result<std::string> readSmallFile(const std::string& path) {
  core::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd) {
    const int err = errno;
    return fail(Errc::Io, std::strerror(err), err);
  }
  std::string data;
  std::array<char, 4096> buffer{};
  while (true) {
    const ssize_t n = ::read(fd.get(), buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      const int err = errno;
      return fail(Errc::Io, std::strerror(err), err);
    }
    if (n == 0) {
      return data;
    }
    data.append(buffer.data(), static_cast<std::size_t>(n));
    if (data.size() > kMaxFileBytes) {
      return fail(Errc::Io, "larger than 64 KiB", EFBIG);
    }
  }
}

core::Result<void> writeAll(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      return fail(Errc::Io, "", errno);
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return {};
}

std::string utcText(std::uint64_t unixSeconds) {
  const auto t = static_cast<std::time_t>(unixSeconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  std::array<char, 32> buffer{};
  std::strftime(buffer.data(), buffer.size(), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buffer.data();
}

std::string serialize(const StoredAssignment& a) {
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
  auto string = [&](const char* key, const std::string& value) {
    writer.Key(key);
    writer.String(value.data(), static_cast<rapidjson::SizeType>(value.size()));
  };
  writer.StartObject();
  writer.Key("version");
  writer.Int(kFormatVersion);
  string("assignedHub", a.assignedHub);
  string("deviceId", a.deviceId);
  writer.Key("assignedAt");
  writer.Uint64(a.assignedAtUnix);
  string("assignedAtUtc", utcText(a.assignedAtUnix));  // for people; assignedAt is read back
  string("substatus", a.substatus);
  string("identity", a.identity);
  writer.EndObject();
  return std::string(buffer.GetString(), buffer.GetSize()) + "\n";
}

/// Parses the file; the error says what is wrong with it (never shown to apps, only logged).
core::Result<StoredAssignment> parse(const std::string& text) {
  rapidjson::Document doc;
  doc.Parse<rapidjson::kParseValidateEncodingFlag>(text.data(), text.size());
  if (doc.HasParseError()) {
    return fail(Errc::Protocol, std::string("not JSON (") +
                                    rapidjson::GetParseError_En(doc.GetParseError()) +
                                    " at offset " + std::to_string(doc.GetErrorOffset()) + ")");
  }
  if (!doc.IsObject()) {
    return fail(Errc::Protocol, "not a JSON object");
  }
  const auto version = doc.FindMember("version");
  if (version == doc.MemberEnd() || !version->value.IsInt() ||
      version->value.GetInt() != kFormatVersion) {
    return fail(Errc::Protocol, "not version 1");
  }
  StoredAssignment a;
  const std::pair<const char*, std::string*> strings[] = {
      {"assignedHub", &a.assignedHub},
      {"deviceId", &a.deviceId},
      {"substatus", &a.substatus},
      {"identity", &a.identity},
  };
  for (const auto& [name, target] : strings) {
    const auto it = doc.FindMember(name);
    if (it == doc.MemberEnd() || !it->value.IsString()) {
      return fail(Errc::Protocol, std::string("no string '") + name + "'");
    }
    target->assign(it->value.GetString(), it->value.GetStringLength());
  }
  const auto at = doc.FindMember("assignedAt");
  if (at == doc.MemberEnd() || !at->value.IsUint64()) {
    return fail(Errc::Protocol, "no number 'assignedAt'");
  }
  a.assignedAtUnix = at->value.GetUint64();
  // What we would connect to and claim to be: as strict as DPS's own answer (proto).
  if (auto ok = proto::validateHostName(a.assignedHub, "assignedHub"); !ok) {
    return fail(Errc::Protocol, ok.error().message);
  }
  if (auto ok = proto::validateDeviceId(a.deviceId); !ok) {
    return fail(Errc::Protocol, ok.error().message);
  }
  return a;
}

}  // namespace

core::Result<std::string> identityFingerprint(const ProvisioningOptions& o) {
  std::string credential;
  if (o.attestation == Attestation::SymmetricKey) {
    // An HMAC under the key: only the key's holder can compute it, and it reveals nothing of it.
    auto key = proto::base64Decode(o.deviceKey.reveal());
    const core::Secret<> raw(key ? std::move(*key) : std::string(o.deviceKey.reveal()));
    constexpr std::string_view kLabel = "iothubd dps assignment";
    std::array<unsigned char, EVP_MAX_MD_SIZE> mac{};
    unsigned int length = 0;
    HMAC(EVP_sha256(), raw.reveal().data(), static_cast<int>(raw.reveal().size()),
         reinterpret_cast<const unsigned char*>(kLabel.data()), kLabel.size(), mac.data(), &length);
    credential = "key:" + hex(mac.data(), length);
    OPENSSL_cleanse(mac.data(), mac.size());
  } else {
    auto pem = readSmallFile(o.tls.certFile);
    if (!pem) {
      return fail(Errc::Io,
                  "cannot read X.509 certificate " + o.tls.certFile + ": " + pem.error().message,
                  pem.error().sysErrno);
    }
    credential = "cert:" + sha256Hex(*pem);
  }
  // NUL-separated: no field can run into the next one.
  std::string input;
  for (const std::string_view field :
       {std::string_view("v1"), std::string_view(o.globalEndpoint), std::string_view(o.idScope),
        std::string_view(o.registrationId), std::string_view(attestationName(o.attestation)),
        std::string_view(credential), std::string_view(o.payloadJson),
        std::string_view(o.modelId)}) {
    input.append(field).push_back('\0');
  }
  return "sha256:" + sha256Hex(input);
}

AssignmentStore::AssignmentStore(std::string stateDirectory)
    : directory_(std::move(stateDirectory)),
      path_(directory_ + "/" + std::string(kAssignmentFileName)) {}

std::optional<StoredAssignment> AssignmentStore::load(std::string_view identity) {
  auto text = readSmallFile(path_);
  if (!text && text.error().sysErrno == ENOENT) {
    return std::nullopt;
  }
  core::Result<StoredAssignment> parsed =
      text ? parse(*text) : fail(Errc::Io, "unreadable: " + text.error().message);
  if (!parsed) {
    const std::string aside = path_ + ".corrupt";
    const bool moved = ::rename(path_.c_str(), aside.c_str()) == 0;
    logf(LogLevel::Warning, "the stored DPS assignment ", path_, " is ", parsed.error().message,
         moved ? "; moved aside to " + aside
               : std::string("; cannot move it aside: ") + std::strerror(errno),
         "; registering with DPS again");
    return std::nullopt;
  }
  if (parsed->identity != identity) {
    logf(LogLevel::Info, "the stored DPS assignment (hub ", parsed->assignedHub, ", device ",
         core::quoted(parsed->deviceId),
         ") was made for other provisioning settings or credentials; registering again");
    return std::nullopt;
  }
  return std::move(*parsed);
}

core::Result<void> AssignmentStore::save(const StoredAssignment& assignment) {
  const std::string tmp = path_ + ".tmp";
  core::UniqueFd fd(
      ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) {
    return ioError("cannot write " + tmp, errno);
  }
  // The file names the device and its hub: not for other users (O_CREAT keeps an old mode).
  if (::fchmod(fd.get(), 0600) != 0) {
    return ioError("cannot chmod " + tmp, errno);
  }
  if (auto ok = writeAll(fd.get(), serialize(assignment)); !ok) {
    const int err = ok.error().sysErrno;
    ::unlink(tmp.c_str());
    return ioError("cannot write " + tmp, err);
  }
  if (::fsync(fd.get()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return ioError("cannot fsync " + tmp, err);
  }
  fd.reset();
  if (::rename(tmp.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return ioError("cannot rename " + tmp + " to " + path_, err);
  }
  // The rename is durable only once the directory entry is.
  core::UniqueFd dir(::open(directory_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir || ::fsync(dir.get()) != 0) {
    return ioError("cannot fsync " + directory_, errno);
  }
  return {};
}

core::Result<void> AssignmentStore::clear() {
  if (::unlink(path_.c_str()) != 0 && errno != ENOENT) {
    return ioError("cannot remove " + path_, errno);
  }
  core::UniqueFd dir(::open(directory_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir || ::fsync(dir.get()) != 0) {
    return ioError("cannot fsync " + directory_, errno);
  }
  return {};
}

}  // namespace iothubd::provisioning
