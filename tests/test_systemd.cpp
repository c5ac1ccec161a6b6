// systemd's notify protocol (host/src/sd_notify.hpp) with a real AF_UNIX datagram socket standing in for
// $NOTIFY_SOCKET and the real `tickhost` binary driven with real signals; the Tickers' heartbeat hook on the
// manual clock.
#include <gtest/gtest.h>

#include <tickhost/tickers.hpp>

#include "sd_notify.hpp"
#include "test_util.hpp"

#include <atomic>
#include <csignal>
#include <cstring>
#include <map>
#include <mutex>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using tickhost::test::eventually;
using tickhost::test::read_file;
using tickhost::test::TempDir;
using tickhost::test::write_file;

namespace {

// The datagram socket systemd would own: binds a path (or an abstract name, "@..."), collects every message.
class NotifySocket {
public:
    explicit NotifySocket(const std::string& name) : name_(name) {
        fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        EXPECT_GE(fd_, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::memcpy(a.sun_path, name.data(), name.size());
        if (name[0] == '@') a.sun_path[0] = '\0';
        const socklen_t len = socklen_t(offsetof(sockaddr_un, sun_path) + name.size() + (name[0] == '@' ? 0 : 1));
        EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), len), 0) << std::strerror(errno);
    }
    ~NotifySocket() { ::close(fd_); }
    const std::string& name() const { return name_; }
    // Every message received so far, in order.
    std::vector<std::string> messages() {
        char buf[4096];
        for (;;) {
            const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
            if (n < 0) break;
            all_.emplace_back(buf, size_t(n));
        }
        return all_;
    }
    // The messages received so far that have `line` as one of their lines.
    size_t count(const std::string& line) {
        size_t n = 0;
        for (const auto& m : messages())
            if (has_line(m, line)) ++n;
        return n;
    }
    static bool has_line(const std::string& m, const std::string& line) {
        return ("\n" + m + "\n").find("\n" + line + "\n") != std::string::npos;
    }
    std::string dump() {
        std::string out;
        for (const auto& m : messages()) out += "[" + m + "]\n";
        return out;
    }

private:
    std::string name_;
    int fd_ = -1;
    std::vector<std::string> all_;
};

// tickhost on a host.toml, with the environment variables given (and NOTIFY_SOCKET & co. removed otherwise).
class Host {
public:
    Host(const fs::path& toml, const fs::path& log, std::map<std::string, std::string> env) {
        pid_ = fork();
        if (pid_ == 0) {
            int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
            dup2(fd, 1);
            dup2(fd, 2);
            for (const char* v : {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "TICKHOST_FAULT"}) unsetenv(v);
            for (auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
            execl(TICKHOST_EXE, TICKHOST_EXE, "--config", toml.c_str(), static_cast<char*>(nullptr));
            _exit(127);
        }
    }
    ~Host() {
        if (pid_ > 0 && !exited_) {
            kill(pid_, SIGKILL);
            waitpid(pid_, nullptr, 0);
        }
    }
    pid_t pid() const { return pid_; }
    void signal(int sig) { kill(pid_, sig); }
    bool alive() {
        int status;
        return waitpid(pid_, &status, WNOHANG) == 0;
    }
    int wait(std::chrono::milliseconds bound = 30s) {
        int status = 0;
        if (!eventually([&] { return waitpid(pid_, &status, WNOHANG) == pid_; }, bound)) return -1;
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }

private:
    pid_t pid_ = -1;
    bool exited_ = false;
};

struct HostDir {
    TempDir tmp;
    fs::path plugins = tmp / "plugins.d";
    fs::path toml = tmp / "host.toml";
    fs::path log = tmp / "out.log";
    std::string shadow = "shadow_dir = \"shadow\"\n";
    explicit HostDir(const std::string& extra = "", bool own_shadow_dir = true) {
        if (!own_shadow_dir) shadow.clear();
        fs::create_directories(plugins);
        fs::copy_file(HELLO_SO, plugins / "hello.so");
        fs::copy_file(COUNTER_C_SO, plugins / "counter_c.so");
        write(extra);
    }
    void write(const std::string& extra) {
        write_file(toml, "[host]\n" + tickhost::test::isolation_toml() + "plugin_dir = \"plugins.d\"\nworkers = 2\n" +
                             shadow + "shutdown_timeout = \"5s\"\n" + extra +
                             "[plugins.hello]\ninterval = \"50ms\"\n"
                             "[plugins.counter_c]\ninterval = \"1h\"\n[plugins.counter_c.config]\ntasks = 2\n");
    }
    std::string socket_path() const { return (tmp / "notify").string(); }
};

// The index of the first message at or after `from` that has `line`, or -1.
int find(const std::vector<std::string>& ms, const std::string& line, size_t from = 0) {
    for (size_t i = from; i < ms.size(); ++i)
        if (NotifySocket::has_line(ms[i], line)) return int(i);
    return -1;
}

}  // namespace

TEST(Systemd, ReadyAfterPluginsReloadingAndReadyAroundReloadsStoppingAtSigterm) {
    HostDir d;
    NotifySocket sock(d.socket_path());
    Host h(d.toml, d.log, {{"NOTIFY_SOCKET", sock.name()}});

    // READY=1 comes with the plugins of plugin_dir loaded: its STATUS= counts them.
    ASSERT_TRUE(eventually([&] { return sock.count("READY=1") == 1; }, 20s)) << sock.dump() << read_file(d.log);
    auto ms = sock.messages();
    const int ready = find(ms, "READY=1");
    EXPECT_TRUE(NotifySocket::has_line(ms[ready], "STATUS=2 plugins, 3 tasks, 0 failing")) << sock.dump();
    EXPECT_NE(read_file(d.log).find("loaded plugin 'counter_c'"), std::string::npos);
    EXPECT_EQ(sock.count("RELOADING=1"), 0u) << sock.dump();

    // SIGHUP: RELOADING=1 with the monotonic time, then READY=1 again.
    h.signal(SIGHUP);
    ASSERT_TRUE(eventually([&] { return sock.count("READY=1") == 2; })) << sock.dump() << read_file(d.log);
    ms = sock.messages();
    const int reloading = find(ms, "RELOADING=1");
    ASSERT_GT(reloading, ready) << sock.dump();
    EXPECT_TRUE(std::regex_search(ms[reloading], std::regex("(^|\n)MONOTONIC_USEC=[1-9][0-9]*(\n|$)")))
        << ms[reloading];
    EXPECT_GT(find(ms, "READY=1", size_t(reloading)), reloading) << sock.dump();

    // A host.toml change is a reload too: RELOADING=1, then READY=1 with the new counts.
    fs::remove(d.plugins / "counter_c.so");
    ASSERT_TRUE(eventually([&] { return sock.count("STATUS=1 plugin, 1 task, 0 failing") >= 1; }))
        << sock.dump() << read_file(d.log);
    d.write("log_level = \"debug\"\n");
    auto last_is = [&](const std::string& a, const std::string& b) {
        ms = sock.messages();
        return !ms.empty() && NotifySocket::has_line(ms.back(), a) && NotifySocket::has_line(ms.back(), b);
    };
    ASSERT_TRUE(eventually([&] {
        return sock.count("RELOADING=1") >= 2 && last_is("READY=1", "STATUS=1 plugin, 1 task, 0 failing");
    })) << sock.dump()
        << read_file(d.log);

    // A refused host.toml still ends its reload with READY=1; STATUS= says it was not applied.
    write_file(d.toml, "[host]\nplugin_dir = \"plugins.d\"\nno_such_key = 1\n");
    ASSERT_TRUE(eventually([&] {
        return last_is("READY=1", "STATUS=1 plugin, 1 task, 0 failing; host.toml not applied (see the log)");
    })) << sock.dump()
        << read_file(d.log);
    EXPECT_EQ(sock.count("READY=1"), sock.count("RELOADING=1") + 1) << "each reload ends in READY=1: " << sock.dump();

    h.signal(SIGTERM);
    EXPECT_EQ(h.wait(), 0) << read_file(d.log);
    ms = sock.messages();
    const int stopping = find(ms, "STOPPING=1");
    ASSERT_GE(stopping, 0) << sock.dump();
    EXPECT_EQ(size_t(stopping), ms.size() - 1) << "nothing after STOPPING=1 without a watchdog: " << sock.dump();
    EXPECT_EQ(sock.count("WATCHDOG=1"), 0u) << "no WATCHDOG_USEC, no pings: " << sock.dump();
}

// A SIGHUP while plugin_dir is still being loaded: no RELOADING=1 before READY=1 (systemd would take the start
// for done). fx_bad_init_hangs's init returns once its release file exists.
TEST(Systemd, NoReloadingBeforeReadyWhenSighupArrivesDuringTheStart) {
    HostDir d;
    const fs::path release = d.tmp / "release";
    fs::copy_file(FIXTURE_DIR "/fx_bad_init_hangs.so", d.plugins / "fx_bad_init_hangs.so");
    write_file(d.toml, read_file(d.toml) +
                           "[plugins.bad_init_hangs]\ntimeout = \"60s\"\n"
                           "[plugins.bad_init_hangs.config]\nrelease = \"" +
                           release.string() + "\"\n");
    NotifySocket sock(d.socket_path());
    Host h(d.toml, d.log, {{"NOTIFY_SOCKET", sock.name()}});
    ASSERT_TRUE(
        eventually([&] { return read_file(d.log).find("loaded plugin 'counter_c'") != std::string::npos; }, 20s))
        << read_file(d.log);
    h.signal(SIGHUP);  // bad_init_hangs (after counter_c in name order) is in its init
    ASSERT_TRUE(eventually([&] { return read_file(d.log).find("SIGHUP received") != std::string::npos; }))
        << read_file(d.log);
    std::this_thread::sleep_for(200ms);
    EXPECT_EQ(sock.count("READY=1") + sock.count("RELOADING=1"), 0u) << sock.dump();
    write_file(release, "go");
    // The reload may end before or after the start's READY=1 (it waits for the plugin manager, which the
    // start holds while it loads): either way nothing says RELOADING=1 before READY=1, and the READY=1 of the
    // start counts every plugin.
    ASSERT_TRUE(eventually([&] { return sock.count("READY=1") >= 1; }, 20s)) << sock.dump() << read_file(d.log);
    ASSERT_TRUE(eventually([&] { return read_file(d.log).find("configuration reloaded") != std::string::npos; }))
        << read_file(d.log);
    const auto ms = sock.messages();
    const int ready = find(ms, "READY=1");
    ASSERT_GE(ready, 0) << sock.dump();
    const int reloading = find(ms, "RELOADING=1");
    EXPECT_TRUE(reloading < 0 || reloading > ready) << "RELOADING=1 before READY=1: " << sock.dump();
    EXPECT_TRUE(NotifySocket::has_line(ms[size_t(ready)], "STATUS=3 plugins, 4 tasks, 0 failing")) << sock.dump();
    h.signal(SIGTERM);
    EXPECT_EQ(h.wait(), 0) << read_file(d.log);
}

TEST(Systemd, AbstractSocketName) {
    HostDir d;
    NotifySocket sock("@tickhost-test-" + std::to_string(getpid()));
    Host h(d.toml, d.log, {{"NOTIFY_SOCKET", sock.name()}});
    ASSERT_TRUE(eventually([&] { return sock.count("READY=1") == 1; }, 20s)) << sock.dump() << read_file(d.log);
    h.signal(SIGTERM);
    EXPECT_EQ(h.wait(), 0) << read_file(d.log);
    EXPECT_EQ(sock.count("STOPPING=1"), 1u) << sock.dump();
}

TEST(Systemd, StatusCountsFailingTasks) {
    HostDir d;
    fs::copy_file(FIXTURE_DIR "/fx_failing.so", d.plugins / "fx_failing.so");
    NotifySocket sock(d.socket_path());
    Host h(d.toml, d.log, {{"NOTIFY_SOCKET", sock.name()}});
    // Its three tasks fail from their first run on (every 20 ms): the signal thread's refresh says so.
    ASSERT_TRUE(eventually([&] { return sock.count("STATUS=3 plugins, 6 tasks, 3 failing") >= 1; }, 20s))
        << sock.dump() << read_file(d.log);
    h.signal(SIGTERM);
    EXPECT_EQ(h.wait(), 0) << read_file(d.log);
}

TEST(Systemd, WatchdogPingsAtHalfTheIntervalWhenSetForThisProcess) {
    HostDir d;
    NotifySocket sock(d.socket_path());
    Host h(d.toml, d.log, {{"NOTIFY_SOCKET", sock.name()}, {"WATCHDOG_USEC", "200000"}});
    ASSERT_TRUE(eventually([&] { return sock.count("WATCHDOG=1") >= 5; }, 20s)) << sock.dump() << read_file(d.log);
    h.signal(SIGTERM);
    EXPECT_EQ(h.wait(), 0) << read_file(d.log);
}

TEST(Systemd, NoWatchdogPingsForAnotherPidOrWithoutWatchdogUsec) {
    HostDir d;
    NotifySocket other(d.socket_path());
    // WATCHDOG_PID names another process (the variables were inherited): not ours to ping.
    Host h(d.toml, d.log, {{"NOTIFY_SOCKET", other.name()}, {"WATCHDOG_USEC", "100000"}, {"WATCHDOG_PID", "1"}});
    ASSERT_TRUE(eventually([&] { return other.count("READY=1") == 1; }, 20s)) << other.dump() << read_file(d.log);
    std::this_thread::sleep_for(500ms);  // five watchdog intervals: a ping would have come
    EXPECT_EQ(other.count("WATCHDOG=1"), 0u) << other.dump();
    h.signal(SIGTERM);
    EXPECT_EQ(h.wait(), 0) << read_file(d.log);
}

TEST(Systemd, NothingWithoutNotifySocket) {
    HostDir d;
    NotifySocket sock(d.socket_path());  // exists, but nobody names it
    Host h(d.toml, d.log, {{"WATCHDOG_USEC", "100000"}});
    ASSERT_TRUE(
        eventually([&] { return read_file(d.log).find("loaded plugin 'counter_c'") != std::string::npos; }, 20s))
        << read_file(d.log);
    h.signal(SIGHUP);
    ASSERT_TRUE(eventually([&] { return read_file(d.log).find("configuration reloaded") != std::string::npos; }))
        << read_file(d.log);
    h.signal(SIGTERM);
    EXPECT_EQ(h.wait(), 0) << read_file(d.log);
    EXPECT_TRUE(sock.messages().empty()) << sock.dump();
    EXPECT_EQ(read_file(d.log).find("systemd"), std::string::npos) << read_file(d.log);
}

TEST(Systemd, UnusableNotifySocketIsNamedAndTheHostRuns) {
    HostDir d;
    Host h(d.toml, d.log, {{"NOTIFY_SOCKET", "relative/notify"}});
    ASSERT_TRUE(
        eventually([&] { return read_file(d.log).find("loaded plugin 'counter_c'") != std::string::npos; }, 20s))
        << read_file(d.log);
    EXPECT_NE(read_file(d.log).find("NOTIFY_SOCKET=relative/notify: not an absolute path or an abstract name"),
              std::string::npos)
        << read_file(d.log);
    h.signal(SIGTERM);
    EXPECT_EQ(h.wait(), 0) << read_file(d.log);
}

TEST(Systemd, APluginsProcessDoesNotInheritTheNotifyVariables) {
    if (!tickhost::test::isolated()) GTEST_SKIP() << "isolated mode only: a tickhost-worker's environment";
    HostDir d;
    NotifySocket sock(d.socket_path());
    Host h(d.toml, d.log, {{"NOTIFY_SOCKET", sock.name()}, {"WATCHDOG_USEC", "10000000"}});
    ASSERT_TRUE(eventually([&] { return sock.count("READY=1") == 1; }, 20s)) << sock.dump() << read_file(d.log);
    std::vector<std::string> envs;
    std::error_code ec;
    for (auto it = fs::directory_iterator("/proc", ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
        const std::string pid = it->path().filename().string();
        if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
        if (tickhost::test::proc_status_field(std::stoi(pid), "PPid") != std::to_string(h.pid())) continue;
        envs.push_back(read_file(it->path() / "environ"));
    }
    ASSERT_EQ(envs.size(), 2u) << "a tickhost-worker per plugin";
    for (const auto& e : envs) {
        EXPECT_EQ(e.find("NOTIFY_SOCKET="), std::string::npos);
        EXPECT_EQ(e.find("WATCHDOG_USEC="), std::string::npos);
    }
    h.signal(SIGTERM);
    EXPECT_EQ(h.wait(), 0) << read_file(d.log);
}

TEST(Systemd, AWedgedTimerThreadStopsThePings) {
#if !defined(TICKHOST_FAULT_SEAMS)
    GTEST_SKIP() << "needs the test-only fault points (TICKHOST_FAULT_SEAMS)";
#endif
    HostDir d;
    NotifySocket sock(d.socket_path());
    // The timer thread wedges inside its second ping (a test-only fault point): no ping after that one.
    Host h(d.toml, d.log,
           {{"NOTIFY_SOCKET", sock.name()}, {"WATCHDOG_USEC", "100000"}, {"TICKHOST_FAULT", "timer.wedge"}});
    ASSERT_TRUE(eventually([&] { return sock.count("WATCHDOG=1") == 2; }, 20s)) << sock.dump() << read_file(d.log);
    std::this_thread::sleep_for(1s);  // twenty ping intervals
    EXPECT_EQ(sock.count("WATCHDOG=1"), 2u) << sock.dump();
    EXPECT_TRUE(h.alive()) << "the process lives on: only systemd's watchdog would notice";
    // Its stop cannot finish (the scheduler never ends): past shutdown_timeout it exits 1, saying so.
    h.signal(SIGTERM);
    EXPECT_EQ(h.wait(), 1) << read_file(d.log);
}

// With RuntimeDirectory= (systemd sets $RUNTIME_DIRECTORY) and no [host] shadow_dir, the shadow copies live in
// the service's private runtime directory (one per instance of the template unit).
TEST(Systemd, ShadowCopiesDefaultToTheRuntimeDirectory) {
    HostDir d("", false);
    const fs::path rt = d.tmp / "run";
    fs::create_directories(rt);
    fs::permissions(rt, fs::perms::owner_all);
    Host h(d.toml, d.log, {{"RUNTIME_DIRECTORY", rt.string()}});
    ASSERT_TRUE(
        eventually([&] { return read_file(d.log).find("loaded plugin 'counter_c'") != std::string::npos; }, 20s))
        << read_file(d.log);
    EXPECT_TRUE(fs::is_directory(rt / "shadow"));
    EXPECT_EQ(fs::status(rt / "shadow").permissions() & fs::perms::all, fs::perms::owner_all);
    const fs::path mine = rt / "shadow" / std::to_string(h.pid());
    EXPECT_TRUE(fs::is_directory(mine) && !fs::is_empty(mine)) << "the host's copies are in " << mine;
    h.signal(SIGTERM);
    EXPECT_EQ(h.wait(), 0) << read_file(d.log);
}

TEST(Systemd, SocketNamesThatCannotBeUsed) {
    std::string error;
    EXPECT_FALSE(tickhost::SdNotifier::for_socket("relative", &error).active());
    EXPECT_NE(error.find("not an absolute path"), std::string::npos) << error;
    EXPECT_FALSE(tickhost::SdNotifier::for_socket("vsock:2:1234", &error).active());
    EXPECT_FALSE(tickhost::SdNotifier::for_socket("/" + std::string(200, 'x'), &error).active());
    EXPECT_NE(error.find("longer than 107 bytes"), std::string::npos) << error;
    EXPECT_FALSE(tickhost::SdNotifier().send("READY=1"));
}

TEST(Systemd, StatusLine) {
    EXPECT_EQ(tickhost::status_line(5, 23, 0), "5 plugins, 23 tasks, 0 failing");
    EXPECT_EQ(tickhost::status_line(1, 1, 1), "1 plugin, 1 task, 1 failing");
}

// The Tickers' heartbeat (Options::heartbeat): on the timer thread, at start and every interval of the
// registry's clock, whatever the tasks do; a throwing heartbeat does not stop the timer.
TEST(Systemd, TickersHeartbeatOnTheManualClock) {
    auto clock = std::make_shared<tickhost::ManualClock>();
    std::atomic<int> beats{0};
    std::atomic<std::thread::id> on{};
    tickhost::Tickers::Options o;
    o.workers = 1;
    o.clock = clock;
    o.heartbeat_interval = 1s;
    o.heartbeat = [&] {
        on = std::this_thread::get_id();
        if (++beats == 2) throw std::runtime_error("a heartbeat that throws");
    };
    tickhost::Tickers t(o);
    std::atomic<int> runs{0};
    t.add(300ms, {"task", {}, [&](tickhost::RunContext&, bool stop) {
                      if (!stop) ++runs;
                      return tickhost::TaskResult::success();
                  }});
    t.start();
    ASSERT_TRUE(t.wait_idle());
    EXPECT_EQ(beats, 1) << "one at start";
    EXPECT_NE(on.load(), std::this_thread::get_id());
    auto step = [&](std::chrono::milliseconds d) {
        clock->advance(d);
        return t.wait_idle();
    };
    for (int k = 0; k < 3; ++k) ASSERT_TRUE(step(300ms));  // the task's runs do not make beats
    ASSERT_TRUE(step(99ms));
    EXPECT_EQ(beats, 1);
    EXPECT_EQ(runs, 3);
    ASSERT_TRUE(step(1ms));
    EXPECT_EQ(beats, 2);  // it threw
    for (int k = 0; k < 3; ++k) ASSERT_TRUE(step(300ms));
    ASSERT_TRUE(step(100ms));
    EXPECT_EQ(beats, 3) << "the timer goes on after a heartbeat threw";
    EXPECT_EQ(runs, 6);
    t.stop();
}

TEST(Systemd, TickersWithoutHeartbeatNeverCallIt) {
    auto clock = std::make_shared<tickhost::ManualClock>();
    std::atomic<int> beats{0};
    tickhost::Tickers::Options o;
    o.clock = clock;
    o.heartbeat = [&] { ++beats; };  // no interval: off
    tickhost::Tickers t(o);
    t.start();
    clock->advance(10s);
    ASSERT_TRUE(t.wait_idle());
    EXPECT_EQ(beats, 0);
    t.stop();
}
