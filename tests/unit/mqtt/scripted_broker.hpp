// SPDX-License-Identifier: MIT
// A byte-scripted MQTT broker (mosquitto's test/lib style) for what a real broker never does: a
// CONNACK that never comes, malformed packets, packets split across TLS records, a peer that stops
// reading. TLS with a certificate made in memory per broker; one connection, served on a thread
// by a script the test writes.
#pragma once

#include <openssl/ssl.h>

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

namespace iothubd::testing {

/// One MQTT control packet as read off the wire.
struct Packet {
  std::uint8_t header = 0;  ///< first byte: type << 4 | flags
  std::string body;         ///< variable header and payload
  [[nodiscard]] int type() const { return header >> 4; }
};

/// PUBLISH fields (MQTT 3.1.1, 3.3).
struct Publish {
  std::string topic;
  int qos = 0;
  int messageId = 0;
  std::string payload;
};
[[nodiscard]] std::optional<Publish> parsePublish(const Packet& packet);

/// Encodes a packet: `header` byte, remaining length, `body`.
[[nodiscard]] std::string encodePacket(std::uint8_t header, const std::string& body);

class ScriptedBroker {
 public:
  /// The accepted connection, as the script sees it. Every call blocks the broker thread only.
  class Connection {
   public:
    /// The next packet, or nullopt when the client closed (or the read failed).
    std::optional<Packet> read();
    /// Writes `bytes` as one TLS record.
    void write(const std::string& bytes);
    /// Writes `bytes` `piece` bytes per TLS record, each flushed on its own: the client reads
    /// them as separate socket reads.
    void writeInPieces(const std::string& bytes, std::size_t piece);
    /// Bytes waiting unread in the socket's receive queue (FIONREAD).
    [[nodiscard]] int pendingBytes() const;
    /// Closes the connection (TLS close_notify, then the socket).
    void close();

   private:
    friend class ScriptedBroker;
    SSL* ssl_ = nullptr;
    int fd_ = -1;
  };

  using Script = std::function<void(Connection&)>;

  /// Listens on 127.0.0.1 (a free port) with a fresh self-signed certificate for 127.0.0.1 and
  /// localhost, written to `dir`/broker-ca.pem. `receiveBuffer` > 0 shrinks the connection's
  /// receive buffer (a slow reader fills up sooner).
  ScriptedBroker(const std::string& dir, Script script, int receiveBuffer = 0);
  /// Waits for the script to end.
  ~ScriptedBroker();
  ScriptedBroker(const ScriptedBroker&) = delete;
  ScriptedBroker& operator=(const ScriptedBroker&) = delete;

  [[nodiscard]] int port() const { return port_; }
  /// The certificate to trust (it is its own CA).
  [[nodiscard]] const std::string& caFile() const { return caFile_; }
  /// Bytes waiting unread in the connection's receive queue (FIONREAD); -1 before it exists.
  /// Any thread.
  [[nodiscard]] int receiveQueue() const;
  /// True once the script returned; `failure` says why if it could not run (TLS, accept).
  [[nodiscard]] bool finished() const;
  [[nodiscard]] std::string failure() const;

  /// A gate between the test thread and the script: the script waits until the test opens it.
  class Gate {
   public:
    void open();
    /// False if not opened within `timeout`.
    bool wait(std::chrono::milliseconds timeout = std::chrono::seconds(10));

   private:
    std::mutex mutex_;
    std::condition_variable cv_;
    bool open_ = false;
  };

 private:
  void serve(Script script);

  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx_{nullptr, &SSL_CTX_free};
  int listenFd_ = -1;
  int port_ = 0;
  std::string caFile_;
  mutable std::mutex mutex_;
  int connectionFd_ = -1;  ///< guarded by mutex_
  bool finished_ = false;
  std::string failure_;
  std::thread thread_;
};

}  // namespace iothubd::testing
