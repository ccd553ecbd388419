// SPDX-License-Identifier: MIT
#pragma once

#include <functional>
#include <thread>

namespace iothubd::core {

/// Starts a thread running `body`. An exception escaping `body` is logged ("<what> failed: ...")
/// instead of reaching std::terminate; whatever `body` was to signal when it ends must therefore
/// be signalled from a scope guard, not from its last statement. Thread creation failing
/// (resource exhaustion) is unrecoverable here: it is logged and the process aborts (the service
/// manager restarts it). Signals: the thread inherits the creating thread's mask; main() blocks the
/// daemon's signals before the first thread starts, so they always reach the loop's signalfd.
[[nodiscard]] std::thread startWorkerThread(const char* what, std::function<void()> body);

}  // namespace iothubd::core
