// The control socket's server: `tickhost status`, `reload` and `run-now` talk to a running host through it
// (protocol.hpp; docs/operating.md, "Status and control").
//
// The socket. A Unix stream socket at [host] control_socket, mode 0600, in a directory that belongs to the
// host's user and that nobody else may write (a directory the host creates gets mode 0700). The directory is
// opened without following symlinks and checked through its descriptor, and the socket is bound through that
// descriptor (/proc/self/fd/N/NAME), so that a directory swapped in after the check is never used. A lock file
// beside it (NAME.lock, flock) tells a live host from a stale socket: a socket whose lock another process holds
// is never taken over (a named error; this host then runs without control), a stale one is replaced. Every
// connection's peer credentials are checked (SO_PEERCRED): the host's user or root, nobody else. The socket
// and its lock file are removed at the end, if they are still this host's.
//
// Serving. One thread, asleep in poll() while no client is connected. Each connection carries one request
// line (at most protocol::kMaxRequest bytes) and gets one response line, then closes. Bounds: 16 clients at a
// time (more get a "too many clients" answer and are closed), 5 s to send the request, 10 s without progress
// to read the response, 10 min for a reload to finish. A client never blocks the thread (non-blocking
// sockets), and nothing thrown escapes it: a request that fails gets an "internal" error answer.
#pragma once

#include <tickhost/host.hpp>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

namespace spdlog {
class logger;
}

namespace tickhost::detail {

class ControlServer {
public:
    struct Limits {
        size_t max_clients = 16;
        std::chrono::milliseconds request_timeout{5000};  // from connect to a complete request line
        std::chrono::milliseconds write_timeout{10000};   // without progress while the response is written
        std::chrono::milliseconds reload_timeout{600000};
    };
    // Sets the socket up at `path` and starts serving `host`. Throws std::runtime_error with the path and what
    // is wrong: a directory of another user or writable by others, a symlink, another host listening there.
    ControlServer(const std::filesystem::path& path, Host& host, Limits limits);
    ControlServer(const std::filesystem::path& path, Host& host) : ControlServer(path, host, Limits{}) {}
    ~ControlServer();  // answers waiting clients, stops the thread, removes the socket and its lock file
    ControlServer(const ControlServer&) = delete;
    ControlServer& operator=(const ControlServer&) = delete;

    const std::filesystem::path& path() const { return path_; }
    // Wakes the thread: a reload finished. `stopping`: no reload will come any more (the host is stopping).
    void notify(bool stopping = false);

private:
    struct Conn;
    void serve();
    void step();  // one poll() and what it found; may throw (serve() catches)
    void accept_all();
    void on_request(Conn& c, const std::string& line);
    void finish_waiting(bool force);
    void respond(Conn& c, std::string response);
    std::string handle(const std::string& line, Conn& c);

    std::filesystem::path path_;
    Host& host_;
    Limits limits_;
    std::shared_ptr<spdlog::logger> log_;
    int dir_fd_ = -1;
    int lock_fd_ = -1;
    int listen_fd_ = -1;
    int wake_fd_ = -1;
    int spare_fd_ = -1;           // given up to turn a client away when the process is out of descriptors
    uint64_t dev_ = 0, ino_ = 0;  // the socket file we made (removed at the end only if still there)
    std::string name_;            // the socket's file name in its directory
    std::atomic<bool> stop_{false};
    std::atomic<bool> host_stopping_{false};
    std::vector<std::unique_ptr<Conn>> conns_;
    // Refused peers are logged at most once a minute, with how many there were.
    std::chrono::steady_clock::time_point refused_logged_{};
    uint64_t refused_ = 0;
    std::thread thread_;
};

}  // namespace tickhost::detail
