// SPDX-License-Identifier: MIT
// File upload over HTTPS (protocol doc section 8): the hub's two calls and the Azure Storage
// block-blob calls in between. Pure builders and parsers; the HTTP exchange lives in blob/.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "iothubd/core/result.hpp"

namespace iothubd::proto {

/// api-version of the hub's file-upload endpoints; 2021-04-12 is the documented value (protocol
/// doc sections 8 and 14.1).
inline constexpr std::string_view kFileUploadApiVersion = "2021-04-12";
/// `x-ms-version` sent to Azure Storage so that block and blob size limits are predictable
/// (section 8, "Send x-ms-version explicitly").
inline constexpr std::string_view kStorageApiVersion = "2021-08-06";
/// Azure Storage limits: at most 50 000 blocks per blob, blob names of 1..1024 characters.
inline constexpr std::uint32_t kMaxBlockCount = 50000;
inline constexpr std::size_t kMaxBlobNameLength = 1024;

/// The hub's answer to "get storage info" (section 8, step 1), fields as the hub returns them.
/// `sasToken` is a secret: callers wrap it before it can reach a log.
struct StorageInfo {
  std::string correlationId;
  std::string hostName;  ///< storage host, e.g. `{acct}.blob.core.windows.net`
  std::string containerName;
  std::string blobName;  ///< `{deviceId}/{name}` as the hub chose it
  std::string sasToken;  ///< query string starting with `?`
};

/// What the device reports after the upload (section 8, step 3).
struct UploadNotification {
  std::string correlationId;
  bool isSuccess = false;
  int statusCode = 0;  ///< storage's HTTP status; 0 when storage never answered
  std::string statusDescription;
};

/// Bounds on what an app reports with NotifyBlobUploadStatus (architecture doc 6.4): the hub's
/// correlation ids are short Base64 strings, and a description is a line of text.
inline constexpr std::size_t kMaxCorrelationIdLength = 1024;
inline constexpr std::size_t kMaxStatusDescriptionLength = 4096;

/// Checks a notification an app asks for. Errors: Errc::InvalidArgument "the correlation id is
/// empty", "the correlation id is longer than 1024 bytes", "the status description is longer than
/// 4096 bytes".
[[nodiscard]] core::Result<void> validateUploadNotification(const UploadNotification& notification);

/// Checks a blob name the caller asks for: 1..1024 bytes, no control characters (they cannot be
/// sent in JSON to the hub and back in a URL path unambiguously), no `\`, and not ending in `/`
/// or `.` (Azure Storage would silently strip them, so the blob would get another name).
/// Errors: Errc::InvalidArgument "blob name is empty", "blob name is longer than 1024 bytes",
/// "blob name contains a control character at offset N", "blob name contains '\' at offset N",
/// "blob name ends with '/'", "blob name ends with '.'".
[[nodiscard]] core::Result<void> validateBlobName(std::string_view name);

/// `/devices/{enc(deviceId)}/files?api-version={enc(v)}` (step 1, [py]/[node] form without the
/// slash before `?`).
[[nodiscard]] std::string storageInfoPath(std::string_view deviceId,
                                          std::string_view apiVersion = kFileUploadApiVersion);
/// `/devices/{enc(deviceId)}/files/notifications?api-version={enc(v)}` (step 3).
[[nodiscard]] std::string notificationPath(std::string_view deviceId,
                                           std::string_view apiVersion = kFileUploadApiVersion);

/// `{"blobName":"…"}` with JSON escaping. Errors: as validateBlobName.
[[nodiscard]] core::Result<std::string> storageInfoRequestBody(std::string_view blobName);

/// Parses the hub's 200 answer to step 1. Every field must be a non-empty string; `hostName`
/// may contain only letters, digits and `.-_:/[]` (it becomes the authority of a URL we send the
/// SAS token to, so `@`, `?`, `#`, spaces and the like are refused); `sasToken` gets a leading `?`
/// when the hub left it out. Unknown members are ignored.
/// Errors: Errc::Protocol (the text comes from the hub) "storage info is not valid JSON at offset
/// N: reason", "storage info is not a JSON object", "storage info lacks 'X'", "storage info
/// field 'X' is not a string", "storage info field 'X' is empty", "storage info field 'hostName'
/// contains an invalid character at offset N". The SAS token's value never appears in a message.
[[nodiscard]] core::Result<StorageInfo> parseStorageInfo(std::string_view json);

/// `{"correlationId":"…","isSuccess":true,"statusCode":201,"statusDescription":"…"}`.
[[nodiscard]] std::string notificationBody(const UploadNotification& notification);

/// `https://{hostName}/{containerName}/{blobName}{sasToken}` (step 2). Each `/`-separated segment
/// of blobName is enc()'d and the `/` kept: Azure Storage treats `/` as a virtual directory
/// separator, and an encoded `%2F` (as [c] sends) is not decoded the same way by every storage
/// implementation (Azurite among them).
[[nodiscard]] std::string blobUrl(const StorageInfo& info);

/// The same URL without the SAS query: safe for logs and error messages.
[[nodiscard]] std::string blobUrlForLog(const StorageInfo& info);

/// Block id for block number `index`: Base64 of the index as a zero-padded 6-digit decimal, so
/// all ids of a blob have the same length as Azure Storage requires (section 8, [c] uses
/// sprintf("%6u")). `index` must be below kMaxBlockCount.
[[nodiscard]] std::string blockId(std::uint32_t index);

/// `{blobUrl}&comp=block&blockid={enc(id)}` (Put Block; blobUrl already carries `?` + SAS).
[[nodiscard]] std::string putBlockUrl(std::string_view blobUrl, std::string_view blockId);
/// `{blobUrl}&comp=blocklist` (Put Block List).
[[nodiscard]] std::string putBlockListUrl(std::string_view blobUrl);

/// Put Block List body: `<?xml version="1.0" encoding="utf-8"?>\r\n<BlockList><Latest>id</Latest>…
/// </BlockList>`. Block ids are Base64 and need no XML escaping.
[[nodiscard]] std::string blockListBody(const std::vector<std::string>& blockIds);

}  // namespace iothubd::proto
