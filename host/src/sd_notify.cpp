#include "sd_notify.hpp"

#include <tickhost/logging.hpp>

#include "fault.hpp"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <stdexcept>
#include <thread>

#include <fcntl.h>
#include <unistd.h>

namespace tickhost {

namespace {

std::string env(const char* name) {
    const char* v = std::getenv(name);
    return v ? v : "";
}

// A whole decimal number, or -1.
long long parse_decimal(const std::string& s) {
    if (s.empty() || s.size() > 18 || s.find_first_not_of("0123456789") != std::string::npos) return -1;
    return std::stoll(s);
}

}  // namespace

SdNotifier SdNotifier::for_socket(const std::string& name, std::string* error) {
    auto fail = [&](const std::string& why) {
        if (error) *error = "NOTIFY_SOCKET=" + name + ": " + why + "; systemd notifications are off";
        return SdNotifier();
    };
    SdNotifier n;
    if (name.empty()) return fail("empty");
    if (name[0] != '/' && name[0] != '@')
        return fail(
            "not an absolute path or an abstract name ('@name'); other address families (vsock) are not "
            "supported");
    if (name.size() >= sizeof(n.addr_.sun_path))
        return fail("longer than " + std::to_string(sizeof(n.addr_.sun_path) - 1) + " bytes");
    n.addr_.sun_family = AF_UNIX;
    std::memcpy(n.addr_.sun_path, name.data(), name.size());
    if (name[0] == '@') {
        n.addr_.sun_path[0] = '\0';  // abstract: the name is the bytes after the NUL, no terminator
        n.addr_len_ = socklen_t(offsetof(sockaddr_un, sun_path) + name.size());
    } else {
        n.addr_len_ = socklen_t(offsetof(sockaddr_un, sun_path) + name.size() + 1);
    }
    n.fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (n.fd_ < 0) return fail(std::string("socket: ") + std::strerror(errno));
    return n;
}

SdNotifier SdNotifier::from_environment(std::string* error) {
    const std::string socket = env("NOTIFY_SOCKET");
    const std::string usec = env("WATCHDOG_USEC");
    const std::string pid = env("WATCHDOG_PID");
    ::unsetenv("NOTIFY_SOCKET");
    ::unsetenv("WATCHDOG_USEC");
    ::unsetenv("WATCHDOG_PID");
    if (socket.empty()) return SdNotifier();
    SdNotifier n = for_socket(socket, error);
    if (!n.active()) return n;
    // The watchdog is ours when WATCHDOG_PID is unset or names this process (systemd sets it to the main pid;
    // a process started by ours that inherited the variables must not ping in our name).
    const long long us = parse_decimal(usec);
    const long long for_pid = pid.empty() ? ::getpid() : parse_decimal(pid);
    if (us > 0 && for_pid == ::getpid()) n.watchdog_ = std::chrono::microseconds(us);
    return n;
}

SdNotifier::~SdNotifier() {
    if (fd_ >= 0) ::close(fd_);
}

SdNotifier::SdNotifier(SdNotifier&& o) noexcept
    : fd_(o.fd_), addr_(o.addr_), addr_len_(o.addr_len_), watchdog_(o.watchdog_) {
    o.fd_ = -1;
}

SdNotifier& SdNotifier::operator=(SdNotifier&& o) noexcept {
    if (this != &o) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = o.fd_;
        addr_ = o.addr_;
        addr_len_ = o.addr_len_;
        watchdog_ = o.watchdog_;
        o.fd_ = -1;
    }
    return *this;
}

bool SdNotifier::send(std::string_view message) const {
    if (fd_ < 0) return false;
    // The kernel adds our credentials (systemd's socket has SO_PASSCRED): NotifyAccess=main sees the main pid.
    const ssize_t n = ::sendto(fd_, message.data(), message.size(), MSG_NOSIGNAL | MSG_DONTWAIT,
                               reinterpret_cast<const sockaddr*>(&addr_), addr_len_);
    return n == ssize_t(message.size());
}

std::string status_line(size_t plugins, size_t tasks, size_t failing) {
    return std::to_string(plugins) + (plugins == 1 ? " plugin, " : " plugins, ") + std::to_string(tasks) +
           (tasks == 1 ? " task, " : " tasks, ") + std::to_string(failing) + " failing";
}

// ---- HostNotifier ----------------------------------------------------------------------------------------

HostNotifier::HostNotifier(SdNotifier sd) : sd_(std::move(sd)) {}

HostNotifier::~HostNotifier() = default;

HostHooks HostNotifier::hooks() {
    HostHooks h;
    if (!sd_.active()) return h;
    if (sd_.watchdog_timeout() > Duration::zero()) {
        h.heartbeat = [this] { watchdog_ping(); };
        h.heartbeat_interval = sd_.watchdog_timeout() / 2;  // as sd_watchdog_enabled(3) advises
    }
    h.reload_begin = [this] {
        if (!ready_.load()) return;  // a SIGHUP during the start: READY=1 has not been said yet
        // MONOTONIC_USEC: systemd 253 and later match the reload it asked for (Type=notify-reload) by it;
        // older versions ignore the line.
        timespec ts{};
        clock_gettime(CLOCK_MONOTONIC, &ts);
        const long long us = (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
        send("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(us) + "\nSTATUS=reloading host.toml");
    };
    h.reload_end = [this](bool applied) {
        {
            std::lock_guard<std::mutex> lk(mu_);
            refused_ = !applied;
        }
        refresh_plugins();
        send_status(ready_.load());
    };
    h.plugins_changed = [this] {
        refresh_plugins();
        send_status(false);
    };
    return h;
}

void HostNotifier::attach(Host& host) { host_ = &host; }

void HostNotifier::ready() {
    if (!sd_.active()) return;
    ready_ = true;
    refresh_plugins();
    send_status(true);
}

void HostNotifier::stopping() {
    if (!sd_.active()) return;
    stopping_ = true;
    send("STOPPING=1\nSTATUS=stopping: stop calls, then unload");
}

void HostNotifier::tick() {
    if (!sd_.active()) return;
    send_status(false);
}

void HostNotifier::refresh_plugins() {
    Host* host = host_.load();
    if (!host) return;
    auto snap = std::make_shared<Snapshot>();
    const auto plugins = host->plugins().plugins();
    snap->plugins = plugins.size();
    for (const auto& p : plugins)
        for (const auto& t : p.tasks) snap->tasks.push_back(t.id);
    std::lock_guard<std::mutex> lk(mu_);
    snapshot_ = std::move(snap);
}

void HostNotifier::send(const std::string& message) {
    // After STOPPING=1 no READY=1 or STATUS= (a reload in flight when the stop began ends quietly); pings go on.
    if (stopping_.load() && message.rfind("STOPPING=1", 0) != 0 && message != "WATCHDOG=1") return;
    if (sd_.send(message) || errno == EAGAIN || errno == EWOULDBLOCK) return;
    if (!warned_.exchange(true))
        get_logger("host")->warn("cannot notify systemd ({}): {}; further failures are not logged",
                                 message.substr(0, message.find('\n')), std::strerror(errno));
}

void HostNotifier::send_status(bool ready) {
    Host* host = host_.load();
    std::shared_ptr<const Snapshot> snap;
    bool refused;
    {
        std::lock_guard<std::mutex> lk(mu_);
        snap = snapshot_;
        refused = refused_;
    }
    if (!host || !snap) return;
    size_t failing = 0;
    for (TaskId id : snap->tasks)
        if (auto st = host->tickers().stats(id); st && st->consecutive_failures > 0) ++failing;
    std::string line = status_line(snap->plugins, snap->tasks.size(), failing);
    if (refused) line += "; host.toml not applied (see the log)";
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (!ready && line == last_status_) return;
        last_status_ = line;
    }
    send(std::string(ready ? "READY=1\n" : "") + "STATUS=" + line);
}

void HostNotifier::watchdog_ping() {
    send("WATCHDOG=1");
#if defined(TICKHOST_FAULT_SEAMS)
    // Test only: a timer thread that wedges after its second ping (the pings must stop; systemd restarts us).
    if (pings_.fetch_add(1) >= 1) {
        try {
            detail::fault_point("timer.wedge");
        } catch (const std::exception&) {
            for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
        }
    }
#endif
}

}  // namespace tickhost
