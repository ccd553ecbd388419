// SPDX-License-Identifier: MIT
#include "http_head.hpp"

#include <algorithm>
#include <charconv>

namespace iothubd::relay {
namespace {

using core::Errc;
using core::fail;

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
    s.remove_suffix(1);
  }
  return s;
}

/// A printable excerpt for error messages: the peer is not trusted, so control bytes go.
std::string printable(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 80)) {
    out.push_back(c >= 0x20 && c < 0x7f ? c : '?');
  }
  return out;
}

bool isTokenChar(char c) {
  // RFC 9110 5.6.2 tchar
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

core::Result<HttpResponseHead> parseHead(std::string_view text) {
  HttpResponseHead head;
  // Lines end in CRLF; a bare LF is tolerated (RFC 9112 2.2).
  std::vector<std::string_view> lines;
  while (!text.empty()) {
    std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    if (!line.empty() && line.back() == '\r') {
      line.remove_suffix(1);
    }
    lines.push_back(line);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
  }
  if (lines.empty()) {
    return fail(Errc::Protocol, "empty HTTP response");
  }
  // status-line = HTTP-version SP 3DIGIT SP [reason-phrase]
  std::string_view status = lines[0];
  if (status.size() < 12 || status.substr(0, 7) != "HTTP/1." ||
      (status[7] != '0' && status[7] != '1') || status[8] != ' ' ||
      (status.size() > 12 && status[12] != ' ')) {
    return fail(Errc::Protocol, "not an HTTP/1.x status line: \"" + printable(status) + "\"");
  }
  int code = 0;
  auto [ptr, ec] = std::from_chars(status.data() + 9, status.data() + 12, code);
  if (ec != std::errc() || ptr != status.data() + 12 || code < 100 || code > 599) {
    return fail(Errc::Protocol, "bad HTTP status code in \"" + printable(status) + "\"");
  }
  head.status = code;
  head.reason = status.size() > 13 ? printable(status.substr(13)) : std::string();
  for (std::size_t i = 1; i < lines.size(); ++i) {
    std::string_view line = lines[i];
    if (line.empty()) {
      continue;
    }
    if (line.front() == ' ' || line.front() == '\t') {
      return fail(Errc::Protocol, "obsolete header line folding in HTTP response");
    }
    std::size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) {
      return fail(Errc::Protocol, "malformed HTTP header line \"" + printable(line) + "\"");
    }
    std::string_view name = line.substr(0, colon);
    if (!std::all_of(name.begin(), name.end(), isTokenChar)) {
      return fail(Errc::Protocol, "malformed HTTP header name \"" + printable(name) + "\"");
    }
    head.headers.emplace_back(std::string(name), std::string(trim(line.substr(colon + 1))));
  }
  return head;
}

}  // namespace

bool equalsIgnoreCase(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) {
    return false;
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
    if (lower(a[i]) != lower(b[i])) {
      return false;
    }
  }
  return true;
}

std::optional<std::string> HttpResponseHead::header(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (equalsIgnoreCase(k, name)) {
      return v;
    }
  }
  return std::nullopt;
}

bool HttpResponseHead::headerHasToken(std::string_view name, std::string_view token) const {
  for (const auto& [k, v] : headers) {
    if (!equalsIgnoreCase(k, name)) {
      continue;
    }
    std::string_view rest = v;
    while (!rest.empty()) {
      std::size_t comma = rest.find(',');
      if (equalsIgnoreCase(trim(rest.substr(0, comma)), token)) {
        return true;
      }
      rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    }
  }
  return false;
}

core::Result<bool> HttpHeadReader::feed(std::string_view bytes) {
  if (done_) {
    leftover_.append(bytes);
    return true;
  }
  // Only the new bytes (plus 3 before them) can complete the terminator.
  std::size_t searchFrom = buffer_.size() >= 3 ? buffer_.size() - 3 : 0;
  buffer_.append(bytes);
  std::size_t end = std::string::npos;
  std::size_t endLength = 0;
  for (std::size_t i = searchFrom; i < buffer_.size(); ++i) {
    if (buffer_[i] != '\n') {
      continue;
    }
    // "\n\n" or "\n\r\n" ends the head.
    if (i + 1 < buffer_.size() && buffer_[i + 1] == '\n') {
      end = i;
      endLength = 2;
      break;
    }
    if (i + 2 < buffer_.size() && buffer_[i + 1] == '\r' && buffer_[i + 2] == '\n') {
      end = i;
      endLength = 3;
      break;
    }
  }
  if (end == std::string::npos) {
    if (buffer_.size() > kMaxHeadBytes) {
      return fail(Errc::Protocol, "HTTP response head longer than 16 KiB");
    }
    return false;
  }
  if (end > kMaxHeadBytes) {
    return fail(Errc::Protocol, "HTTP response head longer than 16 KiB");
  }
  auto head = parseHead(std::string_view(buffer_).substr(0, end));
  if (!head) {
    return fail(head.error());
  }
  head_ = std::move(*head);
  leftover_ = buffer_.substr(end + endLength);
  buffer_.clear();
  done_ = true;
  return true;
}

}  // namespace iothubd::relay
