#include "control/server.hpp"

#include "control/protocol.hpp"

#include <tickhost/logging.hpp>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <system_error>

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace tickhost::detail {

namespace {

using Clock = std::chrono::steady_clock;

std::string errno_text(int e) { return std::error_code(e, std::generic_category()).message(); }

std::string mode_text(mode_t m) {
    char b[8];
    std::snprintf(b, sizeof b, "%04o", unsigned(m & 07777));
    return b;
}

// The socket's address: through the directory's descriptor (/proc/self/fd/N/NAME), so that the directory
// checked is the one used; the plain path where /proc is not mounted.
bool address_of(int dir_fd, const std::string& name, const fs::path& path, sockaddr_un* a, socklen_t* len) {
    std::memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    std::string use = "/proc/self/fd/" + std::to_string(dir_fd) + "/" + name;
    if (use.size() >= sizeof a->sun_path || ::access("/proc/self/fd", X_OK) != 0) use = path.string();
    if (use.size() >= sizeof a->sun_path) return false;
    std::memcpy(a->sun_path, use.data(), use.size());
    *len = socklen_t(offsetof(sockaddr_un, sun_path) + use.size() + 1);
    return true;
}

// One answer to a client we will not serve, written if its buffer takes it at once, never waited for.
void send_and_close(int fd, const std::string& response) {
    [[maybe_unused]] ssize_t n = ::send(fd, response.data(), response.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    ::close(fd);
}

}  // namespace

struct ControlServer::Conn {
    int fd = -1;
    enum class State { reading, waiting, writing, done };
    State state = State::reading;
    std::string in, out;
    size_t sent = 0;
    Clock::time_point deadline{};
    uint64_t ticket = 0;  // waiting: the reload that answers it
    uint32_t uid = 0;
    explicit Conn(int f) : fd(f) {}
    ~Conn() {
        if (fd < 0) return;
        // Drain what the client sent beyond its request: closing with unread input would turn the client's
        // end of our answer into a reset.
        char buf[4096];
        for (int k = 0; k < 16 && ::recv(fd, buf, sizeof buf, MSG_DONTWAIT) > 0; ++k) {
        }
        ::close(fd);
    }
};

ControlServer::ControlServer(const fs::path& path_in, Host& host, Limits limits)
    : path_(path_in.is_absolute() ? path_in : fs::absolute(path_in)),
      host_(host),
      limits_(limits),
      log_(get_logger("control")) {
    auto fail = [&](const std::string& what) -> void {
        if (listen_fd_ >= 0) ::close(listen_fd_);
        if (lock_fd_ >= 0) ::close(lock_fd_);
        if (dir_fd_ >= 0) ::close(dir_fd_);
        if (wake_fd_ >= 0) ::close(wake_fd_);
        listen_fd_ = lock_fd_ = dir_fd_ = wake_fd_ = -1;
        throw std::runtime_error("control socket " + path_.string() + ": " + what);
    };
    if (path_.native().size() > max_control_socket_path)
        fail("the path is " + std::to_string(path_.native().size()) + " bytes long; a Unix socket's has at most " +
             std::to_string(max_control_socket_path) + " (set [host] control_socket to a shorter one)");
    const fs::path dir = path_.parent_path();
    name_ = path_.filename().string();
    if (name_.empty() || name_ == "." || name_ == "..") fail("names a folder, not a socket file");

    // The folder: made private if we make it; else it must be the host user's, and nobody else may write it.
    bool created = false;
    if (::mkdir(dir.c_str(), 0700) == 0)
        created = true;
    else if (errno != EEXIST)
        fail("cannot create its folder " + dir.string() + ": " + errno_text(errno) +
             (errno == ENOENT ? " (its parent folder does not exist: create it, or set [host] control_socket)" : ""));
    dir_fd_ = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dir_fd_ < 0)
        fail(errno == ELOOP || errno == ENOTDIR
                 ? "its folder " + dir.string() +
                       " is a symlink or not a folder: refused (remove it, or set [host] "
                       "control_socket elsewhere)"
                 : "cannot open its folder " + dir.string() + ": " + errno_text(errno));
    struct stat st {};
    if (::fstat(dir_fd_, &st) != 0) fail("cannot stat its folder " + dir.string() + ": " + errno_text(errno));
    if (st.st_uid != ::geteuid())
        fail("its folder " + dir.string() + " belongs to uid " + std::to_string(st.st_uid) +
             ", not to this host's user (uid " + std::to_string(::geteuid()) +
             "): refused (remove it, or set [host] control_socket to a folder of the host's user)");
    if (created) {
        if (::fchmod(dir_fd_, 0700) != 0) fail("cannot give its folder mode 0700: " + errno_text(errno));
    } else if (st.st_mode & (S_IWGRP | S_IWOTH)) {
        fail("its folder " + dir.string() + " has mode " + mode_text(st.st_mode) +
             ": others may write it, refused (chmod go-w it, or set [host] control_socket elsewhere)");
    }

    // The lock: whoever holds it serves this socket. A host that is gone released it.
    const std::string lock_name = name_ + ".lock";
    lock_fd_ = ::openat(dir_fd_, lock_name.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (lock_fd_ < 0) fail("cannot open its lock file " + (dir / lock_name).string() + ": " + errno_text(errno));
    if (::fstat(lock_fd_, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != ::geteuid())
        fail("its lock file " + (dir / lock_name).string() +
             " is not a regular file of this host's user: refused (remove it)");
    if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
        const int e = errno;
        if (e != EWOULDBLOCK) fail("cannot lock " + (dir / lock_name).string() + ": " + errno_text(e));
        char pid[32] = {};
        const ssize_t n = ::pread(lock_fd_, pid, sizeof pid - 1, 0);
        std::string who = n > 0 ? std::string(pid, size_t(n)) : "";
        who.erase(std::remove(who.begin(), who.end(), '\n'), who.end());
        fail("another host" + (who.empty() ? std::string() : " (pid " + who + ")") +
             " is serving it: not taken over (give each host its own [host] control_socket)");
    }
    const std::string me = std::to_string(::getpid()) + "\n";
    if (::ftruncate(lock_fd_, 0) != 0 || ::pwrite(lock_fd_, me.data(), me.size(), 0) != ssize_t(me.size()))
        log_->warn("control socket {}: cannot write this host's pid into its lock file", path_.string());

    sockaddr_un addr{};
    socklen_t addr_len = 0;
    if (!address_of(dir_fd_, name_, path_, &addr, &addr_len)) fail("the path is too long for a Unix socket");
    // Something there already: its host released the lock, so it is stale, unless a process that does not
    // take the lock listens on it.
    if (::fstatat(dir_fd_, name_.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (!S_ISSOCK(st.st_mode))
            fail("the path exists and is not a socket: refused (remove it, or set [host] control_socket elsewhere)");
        const int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (probe < 0) fail("cannot make a socket: " + errno_text(errno));
        const int rc = ::connect(probe, reinterpret_cast<sockaddr*>(&addr), addr_len);
        const int e = errno;
        ::close(probe);
        if (rc == 0 || e == EAGAIN || e == EINPROGRESS)
            fail("another process listens on it (it holds no tickhost lock): not taken over");
        if (e != ECONNREFUSED && e != ENOENT)
            fail("it exists and cannot be probed (" + errno_text(e) + "): not taken over");
        if (::unlinkat(dir_fd_, name_.c_str(), 0) != 0 && errno != ENOENT)
            fail("cannot remove the stale socket left by a host that is gone: " + errno_text(errno));
        log_->info("control socket {}: replaced a stale socket (its host is gone)", path_.string());
    }

    listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listen_fd_ < 0) fail("cannot make a socket: " + errno_text(errno));
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), addr_len) != 0)
        fail("cannot bind: " + errno_text(errno));
    // 0600 whatever the umask. (Between bind and here the folder's mode and the peer check guard it.)
    if (::fchmodat(dir_fd_, name_.c_str(), 0600, 0) != 0 ||
        ::fstatat(dir_fd_, name_.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISSOCK(st.st_mode)) {
        const int e = errno;
        ::unlinkat(dir_fd_, name_.c_str(), 0);
        fail("cannot give the socket mode 0600: " + errno_text(e));
    }
    dev_ = uint64_t(st.st_dev);
    ino_ = uint64_t(st.st_ino);
    if (::listen(listen_fd_, 64) != 0) {
        const int e = errno;
        ::unlinkat(dir_fd_, name_.c_str(), 0);
        fail("cannot listen: " + errno_text(e));
    }
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) {
        const int e = errno;
        ::unlinkat(dir_fd_, name_.c_str(), 0);
        fail("cannot make an eventfd: " + errno_text(e));
    }
    spare_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    try {
        thread_ = std::thread([this] { serve(); });
    } catch (const std::exception& e) {
        ::unlinkat(dir_fd_, name_.c_str(), 0);
        if (spare_fd_ >= 0) ::close(spare_fd_);
        fail(std::string("cannot start its thread: ") + e.what());
    }
    log_->info("control socket {} (tickhost status, reload, run-now)", path_.string());
}

ControlServer::~ControlServer() {
    stop_ = true;
    notify(true);
    if (thread_.joinable()) thread_.join();
    conns_.clear();
    ::close(listen_fd_);
    // Removed only if they are still ours (nobody else can write the folder, but a person may have).
    struct stat st {};
    if (::fstatat(dir_fd_, name_.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && uint64_t(st.st_dev) == dev_ &&
        uint64_t(st.st_ino) == ino_)
        ::unlinkat(dir_fd_, name_.c_str(), 0);
    struct stat mine {};
    const std::string lock_name = name_ + ".lock";
    if (::fstat(lock_fd_, &mine) == 0 && ::fstatat(dir_fd_, lock_name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        st.st_dev == mine.st_dev && st.st_ino == mine.st_ino)
        ::unlinkat(dir_fd_, lock_name.c_str(), 0);
    ::close(lock_fd_);  // releases the lock
    ::close(dir_fd_);
    ::close(wake_fd_);
    if (spare_fd_ >= 0) ::close(spare_fd_);
}

void ControlServer::notify(bool stopping) {
    if (stopping) host_stopping_ = true;
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof one);
}

void ControlServer::serve() {
    while (!stop_) {
        try {
            step();
        } catch (const std::exception& e) {
            log_->error("control socket {}: {}; it keeps serving", path_.string(), e.what());
            std::this_thread::sleep_for(std::chrono::milliseconds(10));  // never a hot loop
        } catch (...) {
            log_->error("control socket {}: unknown exception; it keeps serving", path_.string());
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }
    // Clients still waiting for a reload get told.
    for (auto& c : conns_)
        if (c->state == Conn::State::waiting)
            send_and_close(std::exchange(c->fd, -1),
                           control::error_response("stopping", "the host is stopping: the reload did not happen"));
}

void ControlServer::step() {
    std::vector<pollfd> fds;
    fds.push_back({wake_fd_, POLLIN, 0});
    fds.push_back({listen_fd_, POLLIN, 0});
    auto now = Clock::now();
    int timeout = -1;  // asleep while nobody is connected
    for (auto& c : conns_) {
        fds.push_back({c->fd, short(c->state == Conn::State::writing ? POLLOUT : POLLIN), 0});
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(c->deadline - now).count();
        const int ms = int(std::clamp<int64_t>(left, 0, 60000));
        timeout = timeout < 0 ? ms : std::min(timeout, ms);
    }
    if (::poll(fds.data(), nfds_t(fds.size()), timeout) < 0) {
        if (errno == EINTR) return;
        throw std::system_error(errno, std::generic_category(), "poll");
    }
    if (fds[0].revents) {
        uint64_t v;
        [[maybe_unused]] ssize_t n = ::read(wake_fd_, &v, sizeof v);
    }
    if (stop_) return;
    finish_waiting(false);
    // New clients first, and read at once: a request is usually there already, and answering it frees the
    // slot in this same round.
    const size_t polled = conns_.size();
    if (fds[1].revents & POLLIN) accept_all();
    now = Clock::now();
    for (size_t k = 0; k < conns_.size(); ++k) {
        Conn& c = *conns_[k];
        const short re = k < polled ? fds[k + 2].revents : short(POLLIN);
        if (re & POLLNVAL) {
            c.state = Conn::State::done;
            continue;
        }
        if (c.state == Conn::State::reading && (re & (POLLIN | POLLHUP | POLLERR))) {
            char buf[4096];
            for (;;) {
                const size_t room = std::min(sizeof buf, control::kMaxRequest + 1 - c.in.size());
                const ssize_t n = ::recv(c.fd, buf, room, 0);
                if (n > 0) {
                    c.in.append(buf, size_t(n));
                    const size_t nl = c.in.find('\n');
                    if (nl != std::string::npos) {
                        std::string line = c.in.substr(0, nl);
                        if (!line.empty() && line.back() == '\r') line.pop_back();
                        on_request(c, line);
                        break;
                    }
                    if (c.in.size() > control::kMaxRequest) {
                        respond(c,
                                control::error_response(
                                    "too_long", "the request is longer than " + std::to_string(control::kMaxRequest) +
                                                    " bytes: send one line such as {\"command\":\"status\"}"));
                        break;
                    }
                    continue;
                }
                if (n == 0) {  // the client ended its side: what it sent is the request
                    if (c.in.empty())
                        c.state = Conn::State::done;
                    else
                        on_request(c, c.in);
                    break;
                }
                if (errno == EINTR) continue;
                if (errno != EAGAIN && errno != EWOULDBLOCK) c.state = Conn::State::done;
                break;
            }
        } else if (c.state == Conn::State::waiting && (re & (POLLIN | POLLHUP | POLLERR))) {
            char buf[512];
            const ssize_t n = ::recv(c.fd, buf, sizeof buf, MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
                c.state = Conn::State::done;  // it went away; the reload goes on
        } else if (c.state == Conn::State::writing && (re & (POLLOUT | POLLHUP | POLLERR))) {
            respond(c, std::string());  // writes what is left
        }
        if (c.state != Conn::State::done && now >= c.deadline) {
            switch (c.state) {
                case Conn::State::reading:
                    respond(c, control::error_response("timeout", "no complete request line within " +
                                                                      std::to_string(limits_.request_timeout.count()) +
                                                                      " ms"));
                    break;
                case Conn::State::waiting:
                    respond(c, control::error_response("timeout",
                                                       "the reload is still running after " +
                                                           std::to_string(limits_.reload_timeout.count() / 1000) +
                                                           " s; its result will be in the log"));
                    break;
                default:
                    c.state = Conn::State::done;  // it does not read its answer
            }
        }
    }
    conns_.erase(std::remove_if(conns_.begin(), conns_.end(),
                                [](const std::unique_ptr<Conn>& c) { return c->state == Conn::State::done; }),
                 conns_.end());
}

void ControlServer::accept_all() {
    for (int k = 0; k < 64; ++k) {
        int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
            if ((errno == EMFILE || errno == ENFILE) && spare_fd_ >= 0) {
                // Out of descriptors: take the client with the spare one and close it, rather than leaving it
                // pending (poll would report it again at once, for ever).
                ::close(spare_fd_);
                fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
                if (fd >= 0) ::close(fd);
                spare_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
                log_->warn("control socket {}: out of file descriptors; a client was turned away", path_.string());
                continue;
            }
            return;  // EAGAIN: nobody else is waiting
        }
        ucred cred{};
        socklen_t len = sizeof cred;
        const uid_t self = ::geteuid();
        if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || (cred.uid != self && cred.uid != 0)) {
            send_and_close(
                fd, control::error_response("not_permitted", "uid " + std::to_string(cred.uid) +
                                                                 " may not use this host's control socket (only uid " +
                                                                 std::to_string(self) + " and root may)"));
            ++refused_;
            const auto now = Clock::now();
            if (refused_logged_ == Clock::time_point{} || now - refused_logged_ >= std::chrono::minutes(1)) {
                log_->warn("control socket {}: refused a connection from uid {} (pid {}){}", path_.string(), cred.uid,
                           cred.pid,
                           refused_ > 1 ? " (" + std::to_string(refused_) + " refused since the last such line)"
                                        : std::string());
                refused_logged_ = now;
                refused_ = 0;
            }
            continue;
        }
        if (conns_.size() >= limits_.max_clients) {
            send_and_close(
                fd, control::error_response(
                        "busy", "too many clients at once (" + std::to_string(limits_.max_clients) + "); try again"));
            continue;
        }
        auto c = std::make_unique<Conn>(fd);
        c->uid = cred.uid;
        c->deadline = Clock::now() + limits_.request_timeout;
        conns_.push_back(std::move(c));
    }
}

void ControlServer::on_request(Conn& c, const std::string& line) {
    std::string response;
    try {
        response = handle(line, c);
    } catch (const std::exception& e) {
        log_->error("control socket {}: request failed: {}", path_.string(), e.what());
        response = control::error_response("internal", std::string("the host could not answer: ") + e.what());
    } catch (...) {
        response = control::error_response("internal", "the host could not answer (unknown exception)");
    }
    if (c.state != Conn::State::waiting) respond(c, std::move(response));
}

std::string ControlServer::handle(const std::string& line, Conn& c) {
    std::string error;
    const auto req = control::parse_request(line, &error);
    if (!req) return control::error_response("bad_request", error);
    switch (req->kind) {
        case control::Request::Kind::status:
            log_->debug("control: status (uid {})", c.uid);
            return control::status_response(host_.status(req->task_limit));
        case control::Request::Kind::reload: {
            log_->info("control: reload requested (uid {})", c.uid);
            const uint64_t ticket = host_stopping_ ? 0 : host_.request_reload();
            if (ticket == 0) return control::error_response("stopping", "the host is stopping: no reload");
            c.ticket = ticket;
            c.state = Conn::State::waiting;
            c.deadline = Clock::now() + limits_.reload_timeout;
            finish_waiting(false);  // done already?
            return std::string();
        }
        case control::Request::Kind::run_now: {
            auto out = host_.run_now(req->plugin, req->task);
            log_->info("control: run-now {}{} (uid {}): {}", req->plugin, req->task.empty() ? "" : "/" + req->task,
                       c.uid,
                       out.empty() ? std::string("nothing to run")
                                   : std::to_string(std::count_if(
                                         out.begin(), out.end(), [](auto& o) { return o.result == RunNow::started; })) +
                                         " of " + std::to_string(out.size()) + " task(s) started");
            return control::run_now_response(req->plugin, req->task, out, host_.plugins().status());
        }
    }
    return control::error_response("bad_request", "unknown command");
}

void ControlServer::finish_waiting(bool force) {
    const bool stopping = force || host_stopping_;
    for (auto& cp : conns_) {
        Conn& c = *cp;
        if (c.state != Conn::State::waiting) continue;
        if (host_.reloads_done() >= c.ticket) {
            const auto r = host_.last_reload();
            respond(c, control::reload_response(r ? *r : ReloadResult{}, host_.config().source.string()));
        } else if (stopping) {
            respond(c, control::error_response("stopping", "the host is stopping: the reload did not happen"));
        }
    }
}

void ControlServer::respond(Conn& c, std::string response) {
    if (c.state != Conn::State::writing) {
        c.out = std::move(response);
        c.sent = 0;
        c.state = Conn::State::writing;
        c.deadline = Clock::now() + limits_.write_timeout;
    }
    while (c.sent < c.out.size()) {
        const ssize_t n = ::send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c.sent += size_t(n);
            c.deadline = Clock::now() + limits_.write_timeout;  // progress
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;  // poll says when it can take more
        c.state = Conn::State::done;
        return;
    }
    c.state = Conn::State::done;  // all written: one request per connection
}

}  // namespace tickhost::detail
