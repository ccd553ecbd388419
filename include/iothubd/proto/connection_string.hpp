// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <string_view>

#include "iothubd/core/result.hpp"
#include "iothubd/core/secret.hpp"

namespace iothubd::proto {

/// A device or module connection string (protocol doc section 3). Unset keys are empty.
struct ConnectionString {
  std::string hostName, deviceId, moduleId, gatewayHostName, sharedAccessKeyName;
  core::Secret<> sharedAccessKey;        ///< Base64 as given (validated as strict Base64)
  core::Secret<> sharedAccessSignature;  ///< a full "SharedAccessSignature sr=..." token
  bool x509 = false;
};

/// Parses `Key=Value;Key=Value;...` by the Python SDK's rules, extended to accept
/// `SharedAccessSignature` as a non-renewable token (protocol doc section 3, "Recommended for the
/// daemon"). Splits on `;`, then each segment on its first `=` (values keep their own `=`); keys
/// are case-sensitive; one trailing `;` is allowed. Requires HostName, DeviceId and exactly one
/// credential: SharedAccessKey, SharedAccessSignature (scoped to this HostName/DeviceId/ModuleId)
/// or x509=true. HostName and GatewayHostName must satisfy validateHostName, DeviceId and ModuleId
/// validateDeviceId/validateModuleId. Nothing is trimmed: a caller reading the string from a file
/// strips the line end first.
/// Errors: Errc::InvalidArgument; each invalid shape has its own message, starting with
/// "Invalid Connection String - " as in the Python SDK and naming the key, never a value. The
/// string holds a secret, so no part of it is ever quoted except key names and the (non-secret)
/// identity values DeviceId/ModuleId/HostName.
[[nodiscard]] core::Result<ConnectionString> parseConnectionString(std::string_view text);

}  // namespace iothubd::proto
