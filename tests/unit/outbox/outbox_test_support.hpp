// SPDX-License-Identifier: MIT
// Shared by the outbox tests and benchmark: a fixture-free way to open an outbox in a temp dir.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>

#include "iothubd/outbox/outbox.hpp"
#include "manual_scheduler.hpp"

namespace iothubd::outbox::testsupport {

/// A telemetry message with id `id`.
inline proto::OutgoingMessage telemetry(const std::string& id, std::string body = "{\"t\":21.5}") {
  proto::OutgoingMessage m;
  m.body = std::move(body);
  m.system.messageId = id;
  return m;
}

/// Opens or throws (the benchmark and forked children have no gtest assertions to report with).
inline std::unique_ptr<Outbox> openOrThrow(const OutboxOptions& options,
                                           fakes::ManualScheduler& scheduler) {
  auto opened = Outbox::open(options, scheduler, scheduler);
  if (!opened) {
    throw std::runtime_error(opened.error().message);
  }
  return std::move(opened->outbox);
}

}  // namespace iothubd::outbox::testsupport
