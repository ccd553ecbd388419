// SPDX-License-Identifier: MIT
#include "iothubd/session/session_options.hpp"

#include <algorithm>

#include "iothubd/proto/sas_token.hpp"

namespace iothubd::session {
namespace {

using core::Errc;
using core::fail;

core::Result<Password> keyToken(const SessionOptions& o, const core::Clock& clock) {
  Password p;
  p.expiry = clock.unixSeconds() + static_cast<std::uint64_t>(o.sasTokenTtl.count());
  auto token = proto::makeSasToken(proto::sasResourceUri(o.hubHostname, o.deviceId, o.moduleId),
                                   o.sharedAccessKey, p.expiry);
  if (!token) {
    return fail(Errc::Unauthorized, token.error().message);
  }
  p.secret = std::move(*token);
  return p;
}

}  // namespace

bool linkDependsOnChange(const SessionOptions& a, const SessionOptions& b) {
  // What applies in place is copied over; anything else that differs reaches the CONNECT.
  SessionOptions inPlace = b;
  inPlace.autoConnect = a.autoConnect;
  inPlace.connectionRetry = a.connectionRetry;
  inPlace.connectionRetryInitialDelay = a.connectionRetryInitialDelay;
  inPlace.connectionRetryMaxDelay = a.connectionRetryMaxDelay;
  inPlace.operationTimeout = a.operationTimeout;
  inPlace.clockSyncTimeout = a.clockSyncTimeout;
  inPlace.maxQueuedMessages = a.maxQueuedMessages;
  inPlace.maxQueuedBytes = a.maxQueuedBytes;
  inPlace.ensureDesiredProperties = a.ensureDesiredProperties;
  inPlace.maxTwinRequests = a.maxTwinRequests;
  return !(inPlace == a);
}

core::Result<Password> connectPassword(const SessionOptions& options, const core::Clock& clock) {
  switch (options.auth) {
    case AuthMethod::X509:
      return Password{};  // the certificate is the credential: nothing to send, nothing to renew
    case AuthMethod::SasToken: {
      auto parsed = proto::parseSasToken(options.sasToken.reveal());
      if (!parsed) {
        return fail(Errc::Unauthorized, "SAS token: " + parsed.error().message);
      }
      return Password{options.sasToken, parsed->expiry};
    }
    case AuthMethod::SymmetricKey:
      break;
  }
  return keyToken(options, clock);
}

core::Result<core::Secret<>> httpAuthorization(const SessionOptions& options,
                                               const core::Clock& clock) {
  switch (options.auth) {
    case AuthMethod::X509:
      return core::Secret<>();  // no Authorization header: the TLS client certificate is it
    case AuthMethod::SasToken:
      return options.sasToken;
    case AuthMethod::SymmetricKey:
      break;
  }
  auto p = keyToken(options, clock);
  if (!p) {
    return fail(p.error());
  }
  return std::move(p->secret);
}

std::optional<std::chrono::seconds> renewalDelay(AuthMethod auth, std::uint64_t expiry,
                                                 std::uint64_t now) {
  if (expiry <= now) {
    return std::nullopt;
  }
  // With the default hour a key-made token is renewed 58 min after the CONNECT (protocol doc 2).
  // An operator-supplied token needs a person or an app to act: ask about 2 minutes ahead
  // (Python SDK: on_new_sastoken_required at expiry - 120 s), or halfway for short tokens.
  const auto lifetime = std::chrono::seconds(expiry - now);
  const auto margin = std::min<std::chrono::seconds>(
      std::chrono::seconds(120), auth == AuthMethod::SasToken ? lifetime / 2 : lifetime / 5);
  return lifetime - margin;
}

}  // namespace iothubd::session
