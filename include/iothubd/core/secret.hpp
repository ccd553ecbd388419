// SPDX-License-Identifier: MIT
#pragma once

#include <ostream>
#include <string>
#include <utility>

#include <openssl/crypto.h>

namespace iothubd::core {

/// Holds a secret (device key, SAS token, connection string, pass phrase). It cannot be printed:
/// streaming it yields "***", and the value is reachable only through an explicit `reveal()`, so
/// a grep for `reveal(` finds every place a secret leaves its wrapper. Memory is wiped on
/// destruction and reassignment.
template <class T = std::string>
class Secret {
 public:
  Secret() = default;
  explicit Secret(T value) : value_(std::move(value)) {}
  Secret(const Secret&) = default;
  Secret(Secret&& other) noexcept : value_(std::move(other.value_)) { other.wipe(); }
  Secret& operator=(const Secret& other) {
    if (this != &other) {
      wipe();
      value_ = other.value_;
    }
    return *this;
  }
  Secret& operator=(Secret&& other) noexcept {
    if (this != &other) {
      wipe();
      value_ = std::move(other.value_);
      other.wipe();
    }
    return *this;
  }
  ~Secret() { wipe(); }

  [[nodiscard]] const T& reveal() const noexcept { return value_; }
  [[nodiscard]] bool empty() const noexcept { return value_.empty(); }
  bool operator==(const Secret& other) const { return value_ == other.value_; }

  friend std::ostream& operator<<(std::ostream& os, const Secret&) { return os << "***"; }

 private:
  void wipe() noexcept {
    if (!value_.empty()) {
      OPENSSL_cleanse(value_.data(), value_.size());
      value_.clear();
    }
  }
  T value_{};
};

}  // namespace iothubd::core
