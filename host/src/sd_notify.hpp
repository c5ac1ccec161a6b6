// systemd's service notification protocol, for a host run as a `Type=notify` service (sd_notify(3)).
//
// The protocol is one datagram per message, "KEY=VALUE" lines, sent to the AF_UNIX socket named by
// $NOTIFY_SOCKET (a path, or "@name" for an abstract socket). systemd documents it as a stable interface that
// may be spoken without libsystemd; the host needs five messages of it, so it speaks it itself (no library to
// link or ship, nothing that pulls libsystemd into processes embedding the runtime).
//
//   auto sd = tickhost::SdNotifier::from_environment(&error);   // before any thread starts (it unsets the variables)
//   tickhost::HostNotifier notifier(std::move(sd));
//   tickhost::Host host(config, notifier.hooks());               // watchdog pings, reload and plugin events
//   notifier.attach(host);
//   host.start();
//   notifier.ready();                                            // READY=1, STATUS=3 plugins, 7 tasks, 0 failing
//   ...
//   notifier.stopping();                                         // STOPPING=1
//   host.stop();
//
// Without $NOTIFY_SOCKET (not started by systemd, or not Type=notify) nothing is sent and no hook is set: the
// host behaves exactly as before, with no extra wake-up.
#pragma once

#include <tickhost/host.hpp>

#include <sys/socket.h>
#include <sys/un.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace tickhost {

class SdNotifier {
public:
    // Reads $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID and unsets all three, so that neither plugins nor
    // the processes the host starts can talk to systemd in its name. setenv is not thread-safe: call it
    // before any thread starts. Without $NOTIFY_SOCKET the notifier is inactive; a $NOTIFY_SOCKET that cannot
    // be used (a relative path, a name longer than 107 bytes, another address family) gives an inactive
    // notifier and the reason in *error.
    static SdNotifier from_environment(std::string* error = nullptr);
    // A notifier for `socket_name` ("/run/systemd/notify", "@abstract"), with no watchdog. Inactive and
    // *error set when the name cannot be used.
    static SdNotifier for_socket(const std::string& socket_name, std::string* error = nullptr);

    SdNotifier() = default;  // inactive
    ~SdNotifier();
    SdNotifier(SdNotifier&& o) noexcept;
    SdNotifier& operator=(SdNotifier&& o) noexcept;
    SdNotifier(const SdNotifier&) = delete;
    SdNotifier& operator=(const SdNotifier&) = delete;

    bool active() const { return fd_ >= 0; }
    // Sends one message ("READY=1\nSTATUS=..."). Never blocks (a full socket queue drops the message) and
    // never throws; false if it was not sent (errno says why). Thread-safe.
    bool send(std::string_view message) const;
    // How often systemd wants WATCHDOG=1 at least ($WATCHDOG_USEC, when $WATCHDOG_PID is unset or this
    // process's pid); zero when there is no watchdog for this process.
    Duration watchdog_timeout() const { return watchdog_; }

private:
    int fd_ = -1;
    sockaddr_un addr_{};
    socklen_t addr_len_ = 0;
    Duration watchdog_{0};
};

// "5 plugins, 23 tasks, 0 failing": the STATUS= line (failing: tasks whose last run failed, backing off).
std::string status_line(size_t plugins, size_t tasks, size_t failing);

// A Host's life told to systemd through an SdNotifier: READY=1 once plugin_dir has been applied at start,
// RELOADING=1 (with MONOTONIC_USEC) and READY=1 around each reload, STOPPING=1, STATUS= lines kept current,
// and WATCHDOG=1 from the scheduler's timer thread at half of $WATCHDOG_USEC (a wedged timer stops pinging,
// and systemd restarts the service). Inactive (every call does nothing, hooks() sets none) without a socket.
class HostNotifier {
public:
    explicit HostNotifier(SdNotifier sd);
    ~HostNotifier();
    HostNotifier(const HostNotifier&) = delete;
    HostNotifier& operator=(const HostNotifier&) = delete;

    bool active() const { return sd_.active(); }
    // For the Host's constructor. The hooks use the Host given to attach() (they may run before it, when
    // they do nothing) and must not outlive this notifier.
    HostHooks hooks();
    void attach(Host& host);
    // After Host::start(): READY=1 and the first STATUS=.
    void ready();
    // When the stop begins: STOPPING=1.
    void stopping();
    // From the signal thread's periodic wake-up: refreshes the failing count of STATUS= (sent only when the
    // line changed). Lock-free reads of the tasks' counters; never blocks on plugin loads.
    void tick();

private:
    struct Snapshot {
        size_t plugins = 0;
        std::vector<TaskId> tasks;
    };
    void refresh_plugins();                 // reads the plugin list (takes the manager's lock: event threads only)
    void send_status(bool ready);           // STATUS= (with READY=1 if `ready`), unless unchanged and not `ready`
    void send(const std::string& message);  // logs the first failure
    void watchdog_ping();

    SdNotifier sd_;
    std::atomic<Host*> host_{nullptr};
    std::mutex mu_;  // snapshot_, last_status_, refused_
    std::shared_ptr<const Snapshot> snapshot_;
    std::string last_status_;
    bool refused_ = false;  // the last reload was refused
    std::atomic<uint64_t> pings_{0};
    std::atomic<bool> ready_{false};  // READY=1 was sent: reloads before it are not told (a SIGHUP during start)
    std::atomic<bool> stopping_{false};
    std::atomic<bool> warned_{false};
};

}  // namespace tickhost
