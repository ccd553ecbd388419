// SPDX-License-Identifier: MIT
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "iothubd/core/result.hpp"

namespace iothubd::proto::test {

/// Asserts that `result` failed with exactly `code` and `message`.
template <class T>
::testing::AssertionResult failedWith(const core::Result<T>& result, core::Errc code,
                                      const std::string& message) {
  if (result.has_value()) {
    return ::testing::AssertionFailure() << "succeeded, expected error '" << message << "'";
  }
  if (result.error().code != code) {
    return ::testing::AssertionFailure()
           << "code " << core::errcName(result.error().code) << ", expected "
           << core::errcName(code) << " (message '" << result.error().message << "')";
  }
  if (result.error().message != message) {
    return ::testing::AssertionFailure()
           << "message '" << result.error().message << "', expected '" << message << "'";
  }
  return ::testing::AssertionSuccess();
}

/// The error message of a failed result, or a marker if it succeeded.
template <class T>
std::string errorOf(const core::Result<T>& result) {
  return result.has_value() ? std::string("<no error>") : result.error().message;
}

}  // namespace iothubd::proto::test
