// SPDX-License-Identifier: MIT
#include "iothubd/proto/file_upload.hpp"

#include <array>
#include <cstdio>

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "iothubd/proto/base64.hpp"
#include "iothubd/proto/percent_encoding.hpp"

namespace iothubd::proto {

namespace {

using core::Errc;
using core::fail;

std::string encodePathSegments(std::string_view path) {
  std::string out;
  std::size_t start = 0;
  while (true) {
    const std::size_t slash = path.find('/', start);
    out +=
        percentEncode(path.substr(start, slash == std::string_view::npos ? slash : slash - start));
    if (slash == std::string_view::npos) {
      return out;
    }
    out.push_back('/');
    start = slash + 1;
  }
}

bool isHostChar(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '-' || c == '_' || c == ':' || c == '/' || c == '[' || c == ']';
}

core::Result<std::string> stringMember(const rapidjson::Value& object, const char* name) {
  const auto it = object.FindMember(name);
  if (it == object.MemberEnd()) {
    return fail(Errc::Protocol, std::string("storage info lacks '") + name + "'");
  }
  if (!it->value.IsString()) {
    return fail(Errc::Protocol, std::string("storage info field '") + name + "' is not a string");
  }
  if (it->value.GetStringLength() == 0) {
    return fail(Errc::Protocol, std::string("storage info field '") + name + "' is empty");
  }
  return std::string(it->value.GetString(), it->value.GetStringLength());
}

}  // namespace

core::Result<void> validateBlobName(std::string_view name) {
  if (name.empty()) {
    return fail(Errc::InvalidArgument, "blob name is empty");
  }
  if (name.size() > kMaxBlobNameLength) {
    return fail(Errc::InvalidArgument, "blob name is longer than 1024 bytes");
  }
  for (std::size_t i = 0; i < name.size(); ++i) {
    const auto c = static_cast<unsigned char>(name[i]);
    if (c < 0x20 || c == 0x7F) {
      return fail(Errc::InvalidArgument,
                  "blob name contains a control character at offset " + std::to_string(i));
    }
    if (c == '\\') {
      return fail(Errc::InvalidArgument, "blob name contains '\\' at offset " + std::to_string(i));
    }
  }
  if (name.back() == '/') {
    return fail(Errc::InvalidArgument, "blob name ends with '/'");
  }
  if (name.back() == '.') {
    return fail(Errc::InvalidArgument, "blob name ends with '.'");
  }
  return {};
}

core::Result<void> validateUploadNotification(const UploadNotification& notification) {
  if (notification.correlationId.empty()) {
    return fail(Errc::InvalidArgument, "the correlation id is empty");
  }
  if (notification.correlationId.size() > kMaxCorrelationIdLength) {
    return fail(Errc::InvalidArgument, "the correlation id is longer than " +
                                           std::to_string(kMaxCorrelationIdLength) + " bytes");
  }
  if (notification.statusDescription.size() > kMaxStatusDescriptionLength) {
    return fail(Errc::InvalidArgument, "the status description is longer than " +
                                           std::to_string(kMaxStatusDescriptionLength) + " bytes");
  }
  return {};
}

std::string storageInfoPath(std::string_view deviceId, std::string_view apiVersion) {
  return "/devices/" + percentEncode(deviceId) + "/files?api-version=" + percentEncode(apiVersion);
}

std::string notificationPath(std::string_view deviceId, std::string_view apiVersion) {
  return "/devices/" + percentEncode(deviceId) +
         "/files/notifications?api-version=" + percentEncode(apiVersion);
}

core::Result<std::string> storageInfoRequestBody(std::string_view blobName) {
  if (auto valid = validateBlobName(blobName); !valid) {
    return fail(valid.error());
  }
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
  writer.StartObject();
  writer.Key("blobName");
  writer.String(blobName.data(), static_cast<rapidjson::SizeType>(blobName.size()));
  writer.EndObject();
  return std::string(buffer.GetString(), buffer.GetSize());
}

core::Result<StorageInfo> parseStorageInfo(std::string_view json) {
  if (const std::size_t nul = json.find('\0'); nul != std::string_view::npos) {
    return fail(Errc::Protocol,
                "storage info is not valid JSON at offset " + std::to_string(nul) + ": NUL byte");
  }
  rapidjson::Document doc;
  doc.Parse<rapidjson::kParseValidateEncodingFlag>(json.data(), json.size());
  if (doc.HasParseError()) {
    return fail(Errc::Protocol, "storage info is not valid JSON at offset " +
                                    std::to_string(doc.GetErrorOffset()) + ": " +
                                    rapidjson::GetParseError_En(doc.GetParseError()));
  }
  if (!doc.IsObject()) {
    return fail(Errc::Protocol, "storage info is not a JSON object");
  }
  StorageInfo info;
  std::array<std::pair<const char*, std::string*>, 5> fields{{
      {"correlationId", &info.correlationId},
      {"hostName", &info.hostName},
      {"containerName", &info.containerName},
      {"blobName", &info.blobName},
      {"sasToken", &info.sasToken},
  }};
  for (auto& [name, target] : fields) {
    auto value = stringMember(doc, name);
    if (!value) {
      return fail(value.error());
    }
    *target = std::move(*value);
  }
  for (std::size_t i = 0; i < info.hostName.size(); ++i) {
    if (!isHostChar(info.hostName[i])) {
      return fail(Errc::Protocol,
                  "storage info field 'hostName' contains an invalid character at offset " +
                      std::to_string(i));
    }
  }
  if (info.sasToken.front() != '?') {
    info.sasToken.insert(info.sasToken.begin(), '?');
  }
  return info;
}

std::string notificationBody(const UploadNotification& n) {
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
  writer.StartObject();
  writer.Key("correlationId");
  writer.String(n.correlationId.data(), static_cast<rapidjson::SizeType>(n.correlationId.size()));
  writer.Key("isSuccess");
  writer.Bool(n.isSuccess);
  writer.Key("statusCode");
  writer.Int(n.statusCode);
  writer.Key("statusDescription");
  writer.String(n.statusDescription.data(),
                static_cast<rapidjson::SizeType>(n.statusDescription.size()));
  writer.EndObject();
  return std::string(buffer.GetString(), buffer.GetSize());
}

std::string blobUrlForLog(const StorageInfo& info) {
  return "https://" + info.hostName + "/" + info.containerName + "/" +
         encodePathSegments(info.blobName);
}

std::string blobUrl(const StorageInfo& info) {
  return blobUrlForLog(info) + info.sasToken;
}

std::string blockId(std::uint32_t index) {
  std::array<char, 16> digits{};
  const int n = std::snprintf(digits.data(), digits.size(), "%06u", static_cast<unsigned>(index));
  return base64Encode(std::string_view(digits.data(), static_cast<std::size_t>(n)));
}

std::string putBlockUrl(std::string_view blobUrl, std::string_view blockId) {
  return std::string(blobUrl) + "&comp=block&blockid=" + percentEncode(blockId);
}

std::string putBlockListUrl(std::string_view blobUrl) {
  return std::string(blobUrl) + "&comp=blocklist";
}

std::string blockListBody(const std::vector<std::string>& blockIds) {
  std::string body = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<BlockList>";
  for (const auto& id : blockIds) {
    body += "<Latest>" + id + "</Latest>";
  }
  body += "</BlockList>";
  return body;
}

}  // namespace iothubd::proto
