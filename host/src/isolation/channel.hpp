// Datagrams over a SOCK_SEQPACKET socket between the host and an isolated plugin's process: one message
// per datagram (at most wire::kMaxMessage bytes), optionally one descriptor beside it (SCM_RIGHTS).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace tickhost::detail::channel {

// A connected pair, both ends close-on-exec. False + err on failure.
bool socket_pair(int fds[2], std::string* err);

// Sends one datagram (and `fd` beside it unless -1). Never raises SIGPIPE. False + err: the peer is gone
// (EPIPE, ECONNRESET) or the call failed otherwise.
bool send(int sock, const std::vector<uint8_t>& msg, int fd, std::string* err);

enum class Recv { message, closed, would_block, error };
// Receives one datagram into `out` (resized to its length). A datagram longer than wire::kMaxMessage, or
// one carrying descriptors that were not asked for (`fd` null) is an error (the descriptors are closed).
// `fd` (optional): the descriptor sent beside it, or -1. `dontwait`: MSG_DONTWAIT.
Recv receive(int sock, std::vector<uint8_t>* out, int* fd, bool dontwait, std::string* err);

}  // namespace tickhost::detail::channel
