// ChildProcess (host/src/isolation): the sandboxed child of process isolation, against real processes. The
// helpers under tests/helpers/ report what they were given on fd 3: th_child_probe (ids, descriptors,
// signals, limits), th_fork_bomb and th_memory_hog (bounded: safe to run anywhere), th_spawner (a host of its
// own, to be SIGKILLed or to run as nobody). Generous bounds only: "within 10 s", never a timing.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <iostream>
#include <map>
#include <thread>

#include "isolation/child_process.hpp"
#include "test_util.hpp"

using namespace tickhost::detail;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using tickhost::test::eventually;

namespace {

constexpr const char* kProbe = PROBE_EXE;
constexpr const char* kForkBomb = FORK_BOMB_EXE;
constexpr const char* kMemoryHog = MEMORY_HOG_EXE;
constexpr const char* kSpawner = SPAWNER_EXE;

// The read end of the pipe a child reports on (its fd 3): "key=value" lines.
class Report {
public:
    Report() {
        int fds[2];
        if (::pipe2(fds, O_CLOEXEC) != 0) std::abort();
        r_ = fds[0];
        w_ = fds[1];
    }
    ~Report() {
        ::close(r_);
        close_write();
    }
    int write_end() const { return w_; }
    void close_write() {
        if (w_ >= 0) ::close(w_);
        w_ = -1;
    }
    // Reads until `key` has come (true), or EOF, or 10 s.
    bool wait_for(const std::string& key) {
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (!keys_.count(key)) {
            const auto left =
                std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
            if (left.count() <= 0) return false;
            pollfd p{r_, POLLIN, 0};
            if (::poll(&p, 1, int(left.count())) <= 0) continue;
            char buf[4096];
            const ssize_t n = ::read(r_, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return keys_.count(key) > 0;
            buf_.append(buf, size_t(n));
            for (size_t nl; (nl = buf_.find('\n')) != std::string::npos; buf_.erase(0, nl + 1)) {
                const std::string line = buf_.substr(0, nl);
                const size_t eq = line.find('=');
                if (eq != std::string::npos) keys_[line.substr(0, eq)] = line.substr(eq + 1);
            }
        }
        return true;
    }
    std::string operator[](const std::string& key) {
        wait_for(key);
        return keys_.count(key) ? keys_[key] : "(no " + key + ")";
    }

private:
    int r_ = -1, w_ = -1;
    std::string buf_;
    std::map<std::string, std::string> keys_;
};

ChildSpec probe(std::vector<std::string> args) {
    ChildSpec s;
    s.exe = kProbe;
    s.args = std::move(args);
    s.name = "probe";
    return s;
}

// Starts `spec` with `report`'s write end as fd 3 (before spec.fds); fails the test if it does not start.
std::unique_ptr<ChildProcess> start(ChildSpec spec, Report& report) {
    spec.fds.insert(spec.fds.begin(), report.write_end());
    std::string err;
    auto child = ChildProcess::spawn(spec, &err);
    report.close_write();
    EXPECT_TRUE(child) << err;
    return child;
}

int open_descriptors() {
    int n = 0;
    for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
    return n;
}

// No child of ours is a zombie (none has ended unreaped).
bool no_zombie_children() {
    siginfo_t si{};
    const int r = ::waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT);
    return (r < 0 && errno == ECHILD) || (r == 0 && si.si_pid == 0);
}

// Field 3 (state) and 22 (start time) of /proc/<pid>/stat; empty if there is no such process.
std::pair<char, std::string> proc_state(pid_t pid) {
    const std::string stat = tickhost::test::read_file("/proc/" + std::to_string(pid) + "/stat");
    const size_t paren = stat.rfind(')');
    if (paren == std::string::npos) return {0, ""};
    std::istringstream in(stat.substr(paren + 2));
    std::string field[20];
    for (auto& f : field) in >> f;
    return {field[0].empty() ? char(0) : field[0][0], field[19]};
}

// The process that had this start time is gone (exited: a zombie, reaped, or its pid already reused).
bool gone(pid_t pid, const std::string& started) {
    const auto [state, start] = proc_state(pid);
    return state == 0 || state == 'Z' || state == 'X' || start != started;
}

// Whether a user other than root may execute `p` (every folder above it searchable by others).
bool others_can_execute(const std::filesystem::path& p) {
    struct stat st {};
    for (auto q = p; !q.empty() && q != q.root_path(); q = q.parent_path())
        if (::stat(q.c_str(), &st) != 0 || !(st.st_mode & S_IXOTH)) return false;
    return true;
}

std::string link_of(const char* path) {
    std::error_code ec;
    return std::filesystem::read_symlink(path, ec).string();
}

bool cgroup_here() {
    std::string why;
    return cgroup_v2_usable(&why);
}

}  // namespace

// ---- exit facts ---------------------------------------------------------------------------------------------

TEST(ChildExitText, SaysHowItEnded) {
    ChildExit e;
    e.status = 3;
    EXPECT_EQ(e.text(), "exited with status 3");
    e.signaled = true;
    e.status = SIGSEGV;
    EXPECT_EQ(e.text(), "killed by signal 11 (SIGSEGV)");
    e.status = SIGKILL;
    e.memory_limit = true;
    EXPECT_EQ(e.text(), "killed by signal 9 (SIGKILL) after exceeding memory_max (cgroup oom_kill)");
    EXPECT_EQ(signal_name(SIGRTMIN + 2), "SIGRTMIN+2");
    EXPECT_EQ(signal_name(SIGSYS), "SIGSYS");
}

TEST(ChildSpawn, ExitStatusThroughThePidfdAndTryWait) {
    Report report;
    auto child = start(probe({"ready", "exit", "3"}), report);
    ASSERT_TRUE(child);
    EXPECT_GT(child->pid(), 0);
    if (child->pidfd() >= 0) {  // Linux >= 5.3: readable once it has exited
        EXPECT_TRUE(::fcntl(child->pidfd(), F_GETFD) & FD_CLOEXEC);
        pollfd p{child->pidfd(), POLLIN, 0};
        EXPECT_EQ(::poll(&p, 1, 10000), 1);
    }
    std::optional<ChildExit> e;
    ASSERT_TRUE(eventually([&] { return (e = child->try_wait()).has_value(); }));
    EXPECT_EQ(e->text(), "exited with status 3");
    EXPECT_TRUE(child->exited());
    EXPECT_EQ(child->try_wait()->text(), "exited with status 3");  // the same exit on every later call
    EXPECT_EQ(child->wait().text(), "exited with status 3");
    EXPECT_EQ(child->limits_mechanism(), "none (no limits asked)");
    EXPECT_TRUE(child->unenforced().empty());
}

TEST(ChildSpawn, TryWaitWhileRunningThenKill) {
    Report report;
    auto child = start(probe({"ready", "sleep", "60"}), report);
    ASSERT_TRUE(child);
    ASSERT_TRUE(report.wait_for("ready"));
    EXPECT_FALSE(child->try_wait());
    EXPECT_FALSE(child->exited());
    child->kill();
    EXPECT_EQ(child->wait().text(), "killed by signal 9 (SIGKILL)");
    child->kill();  // reaped: does nothing (its pid may be another process's now)
}

TEST(ChildSpawn, KilledBySignalIsNamed) {
    Report report;
    auto child = start(probe({"raise", std::to_string(SIGSEGV)}), report);
    ASSERT_TRUE(child);
    EXPECT_THAT(child->wait().text(),
                StartsWith("killed by signal 11 (SIGSEGV)"));  // ", core dumped" where cores are on
}

TEST(ChildSpawn, KillWhileAnotherThreadWaits) {
    Report report;
    auto child = start(probe({"ready", "sleep", "60"}), report);
    ASSERT_TRUE(child);
    ASSERT_TRUE(report.wait_for("ready"));
    std::string text;
    std::thread waiter([&] { text = child->wait().text(); });
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    child->kill();
    waiter.join();
    EXPECT_EQ(text, "killed by signal 9 (SIGKILL)");
}

TEST(ChildSpawn, UsageOnceReaped) {
    Report report;
    auto child = start(probe({"cpu", "200", "touch", "64"}), report);
    ASSERT_TRUE(child);
    EXPECT_EQ(child->usage().cpu.count(), 0);
    EXPECT_EQ(child->wait().text(), "exited with status 0");
    EXPECT_GE(child->usage().cpu, std::chrono::milliseconds(150));
    EXPECT_GE(child->usage().max_rss_bytes, uint64_t(64) << 20);
}

TEST(ChildSpawn, ConcurrentSpawnsFromManyThreads) {
    std::atomic<int> started{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t)
        threads.emplace_back([&, t] {
            for (int i = 0; i < 8; ++i) {
                Report report;
                auto child = start(probe({"exit", std::to_string(t * 8 + i)}), report);
                if (child && child->wait().text() == "exited with status " + std::to_string(t * 8 + i)) ++started;
            }
        });
    for (auto& th : threads) th.join();
    EXPECT_EQ(started.load(), 64);
    EXPECT_TRUE(no_zombie_children());
}

// The host is SIGKILLed: nothing runs in it any more, and its child must still not be orphaned. The child
// was asked for from a thread that ended long before (the spawner thread forked it).
TEST(ChildSpawn, DiesWithTheHostEvenAfterSigkillAndFromAShortLivedThread) {
    Report report;
    ChildSpec spec;
    spec.exe = kSpawner;
    spec.args = {"short-thread", kProbe};
    auto host = start(spec, report);
    ASSERT_TRUE(host);
    ASSERT_TRUE(report.wait_for("grandchild")) << "th_spawner did not report";
    EXPECT_EQ(report["alive_after_thread"], "1");
    const pid_t grandchild = std::stoi(report["grandchild"]);
    const auto [state, started] = proc_state(grandchild);
    ASSERT_NE(state, 0);
    ASSERT_NE(state, 'Z');
    ::kill(host->pid(), SIGKILL);
    EXPECT_EQ(host->wait().text(), "killed by signal 9 (SIGKILL)");
    EXPECT_TRUE(eventually([&] { return gone(grandchild, started); }))
        << "the child of a SIGKILLed host is still running: pid " << grandchild;
}

// ---- descriptors --------------------------------------------------------------------------------------------

TEST(ChildFds, PlacedAt3And4And5InOrderAndEveryOtherClosed) {
    tickhost::test::TempDir dir;
    tickhost::test::write_file(dir.path() / "b", "b");
    const int b = ::open((dir.path() / "b").c_str(), O_RDONLY | O_CLOEXEC);
    int c[2];
    ASSERT_EQ(::pipe2(c, O_CLOEXEC), 0);
    const int leaky = ::open((dir.path() / "b").c_str(), O_RDONLY);  // not CLOEXEC: closed all the same
    ASSERT_GE(b, 0);
    ASSERT_GE(leaky, 0);
    struct stat sb {
    }, sc{};
    ::fstat(b, &sb);
    ::fstat(c[0], &sc);

    Report report;
    auto spec = probe({"report"});
    spec.fds = {c[0], b};  // a higher number before a lower one
    if (c[0] < b) spec.fds = {b, c[0]};
    auto child = start(spec, report);
    ASSERT_TRUE(child);
    EXPECT_EQ(report["fds"], "0,1,2,3,4,5");
    const struct stat& first = spec.fds[0] == b ? sb : sc;
    const struct stat& second = spec.fds[0] == b ? sc : sb;
    EXPECT_EQ(report["fd4"], std::to_string(first.st_dev) + ":" + std::to_string(first.st_ino));
    EXPECT_EQ(report["fd5"], std::to_string(second.st_dev) + ":" + std::to_string(second.st_ino));
    EXPECT_EQ(report["stdin"], "/dev/null");
    EXPECT_EQ(report["stdout"], link_of("/proc/self/fd/1"));  // inherited
    EXPECT_EQ(report["stderr"], link_of("/proc/self/fd/2"));
    EXPECT_EQ(child->wait().text(), "exited with status 0");
    ::close(b);
    ::close(c[0]);
    ::close(c[1]);
    ::close(leaky);
}

// close_range(2) and its fallback over /proc/self/fd, in a forked child of the test.
TEST(ChildFds, CloseDescriptorsWithAndWithoutCloseRange) {
    for (bool use_close_range : {true, false}) {
        const pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            int opened[8];
            for (int& fd : opened) fd = ::open("/dev/null", O_RDONLY);  // not CLOEXEC
            const int keep = opened[4];
            close_descriptors_from(3, keep, use_close_range);
            for (int fd = 3; fd < 1024; ++fd)
                if ((::fcntl(fd, F_GETFD) != -1) != (fd == keep)) ::_exit(fd == keep ? 1 : 2);
            ::_exit(0);
        }
        int status = 0;
        ASSERT_EQ(::waitpid(pid, &status, 0), pid);
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
            << (use_close_range ? "close_range: " : "fallback: ") << "status " << status
            << " (1: the kept descriptor was closed, 2: another was left open)";
    }
}

TEST(ChildFds, NoDescriptorLeakedNoZombieAfter100Cycles) {
    { auto warm = ChildProcess::spawn(probe({"exit", "0"}), nullptr); }  // the spawner thread, made once
    const int before = open_descriptors();
    for (int i = 0; i < 100; ++i) {
        std::string err;
        auto child = ChildProcess::spawn(probe({"sleep", "60"}), &err);
        ASSERT_TRUE(child) << err;
        if (i % 2 == 0) {
            child->kill();
            EXPECT_EQ(child->wait().text(), "killed by signal 9 (SIGKILL)");
        }  // odd cycles: the destructor kills and reaps
    }
    ChildSpec missing;
    missing.exe = "/nonexistent/tickhost-worker";
    for (int i = 0; i < 10; ++i) EXPECT_FALSE(ChildProcess::spawn(missing, nullptr));  // failures leak nothing either
    EXPECT_EQ(open_descriptors(), before);
    EXPECT_TRUE(no_zombie_children());
}

// ---- signals and the process group --------------------------------------------------------------------------

TEST(ChildSignals, MaskEmptyAndEveryDispositionDefault) {
    // As the tickhost executable: SIGINT, SIGTERM, SIGHUP blocked; and some signals ignored.
    sigset_t block, old;
    sigemptyset(&block);
    for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&block, s);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    struct sigaction ign {
    }, old_usr1{}, old_pipe{};
    ign.sa_handler = SIG_IGN;
    ::sigaction(SIGUSR1, &ign, &old_usr1);
    ::sigaction(SIGPIPE, &ign, &old_pipe);
    // From a thread of its own, made while they are blocked.
    std::string blocked, ignored;
    std::thread([&] {
        Report report;
        auto child = start(probe({"report"}), report);
        if (!child) return;
        blocked = report["SigBlk"];
        ignored = report["SigIgn"];
    }).join();
    ::sigaction(SIGUSR1, &old_usr1, nullptr);
    ::sigaction(SIGPIPE, &old_pipe, nullptr);
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    EXPECT_EQ(blocked, "0000000000000000");
    EXPECT_EQ(ignored, "0000000000000000");
}

TEST(ChildSignals, LeadsAProcessGroupOfItsOwn) {
    Report report;
    auto child = start(probe({"report"}), report);
    ASSERT_TRUE(child);
    EXPECT_EQ(report["pgid"], std::to_string(child->pid()));
    EXPECT_NE(report["pgid"], std::to_string(::getpgrp()));  // the terminal's Ctrl-C is not for it
    EXPECT_EQ(report["ppid"], std::to_string(::getpid()));
}

TEST(ChildSignals, KillReachesWhatItStarted) {
    Report report;
    auto child = start(probe({"grandchild", "ready", "sleep", "60"}), report);
    ASSERT_TRUE(child);
    ASSERT_TRUE(report.wait_for("ready"));
    const pid_t gc = std::stoi(report["grandchild"]);
    const auto [state, started] = proc_state(gc);
    ASSERT_NE(state, 0);
    child->kill();
    EXPECT_EQ(child->wait().text(), "killed by signal 9 (SIGKILL)");
    EXPECT_TRUE(eventually([&] { return gone(gc, started); }));
}

TEST(ChildSignals, WhatItStartedDiesWhenItExits) {
    Report report;
    auto child = start(probe({"grandchild", "ready", "exit", "0"}), report);
    ASSERT_TRUE(child);
    ASSERT_TRUE(report.wait_for("ready"));
    const pid_t gc = std::stoi(report["grandchild"]);
    const auto [state, started] = proc_state(gc);
    EXPECT_EQ(child->wait().text(), "exited with status 0");
    EXPECT_TRUE(state == 0 || eventually([&, started = started] { return gone(gc, started); }));
}

// ---- privileges ---------------------------------------------------------------------------------------------

TEST(ChildPrivileges, NoNewPrivs) {
    Report report;
    auto child = start(probe({"report"}), report);
    ASSERT_TRUE(child);
    EXPECT_EQ(report["NoNewPrivs"], "1");
}

TEST(ChildPrivileges, DropsToNobodyAndNogroup) {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (CI runs as root)";
    if (!others_can_execute(kProbe)) GTEST_SKIP() << kProbe << " is not reachable by other users";
    uid_t uid;
    gid_t primary, gid;
    std::string err;
    ASSERT_TRUE(resolve_user("nobody", &uid, &primary, &err)) << err;
    ASSERT_TRUE(resolve_group("nogroup", &gid, &err)) << err;
    Report report;
    auto spec = probe({"report"});
    spec.uid = uid;
    spec.gid = gid;
    auto child = start(spec, report);
    ASSERT_TRUE(child);
    EXPECT_EQ(report["uid"], std::to_string(uid));
    EXPECT_EQ(report["euid"], std::to_string(uid));
    EXPECT_EQ(report["gid"], std::to_string(gid));
    EXPECT_EQ(report["egid"], std::to_string(gid));
    EXPECT_EQ(report["groups"], std::to_string(gid));  // root's supplementary groups are gone
    EXPECT_EQ(report["CapEff"], "0000000000000000");
    EXPECT_EQ(report["setuid0"], std::to_string(EPERM));  // no way back
    EXPECT_EQ(report["NoNewPrivs"], "1");
}

TEST(ChildPrivileges, UidWithoutGidTakesItsPrimaryGroup) {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (CI runs as root)";
    if (!others_can_execute(kProbe)) GTEST_SKIP() << kProbe << " is not reachable by other users";
    uid_t uid;
    gid_t primary;
    ASSERT_TRUE(resolve_user("nobody", &uid, &primary, nullptr));
    Report report;
    auto spec = probe({"report"});
    spec.uid = uid;
    auto child = start(spec, report);
    ASSERT_TRUE(child);
    EXPECT_EQ(report["gid"], std::to_string(primary));
    EXPECT_EQ(report["groups"], std::to_string(primary));
}

TEST(ChildPrivileges, RefusedWhenTheHostIsNotRoot) {
    if (::geteuid() != 0) GTEST_SKIP() << "th_spawner drops to nobody itself: needs root";
    if (!others_can_execute(kSpawner)) GTEST_SKIP() << kSpawner << " is not reachable by other users";
    Report report;
    ChildSpec spec;
    spec.exe = kSpawner;
    spec.args = {"as-nobody", kProbe};
    auto host = start(spec, report);
    ASSERT_TRUE(host);
    EXPECT_EQ(report["started"], "0");
    EXPECT_THAT(report["err"], HasSubstr("user/group need a host running as root"));
    EXPECT_EQ(host->wait().text(), "exited with status 0");
}

TEST(ChildPrivileges, ResolveUserAndGroup) {
    uid_t uid = 1;
    gid_t gid = 1;
    std::string err;
    EXPECT_TRUE(resolve_user("root", &uid, &gid, &err));
    EXPECT_EQ(uid, 0u);
    EXPECT_EQ(gid, 0u);
    EXPECT_TRUE(resolve_user("0", &uid, &gid, &err));
    EXPECT_EQ(uid, 0u);
    EXPECT_TRUE(resolve_user("4000000", &uid, &gid, &err));  // no entry: the number, and the same number as group
    EXPECT_EQ(uid, 4000000u);
    EXPECT_EQ(gid, 4000000u);
    EXPECT_FALSE(resolve_user("no-such-user-tickhost", &uid, &gid, &err));
    EXPECT_THAT(err, HasSubstr("no user 'no-such-user-tickhost'"));
    EXPECT_FALSE(resolve_user("4294967295", &uid, &gid, &err));  // (uid_t)-1
    EXPECT_FALSE(resolve_user("", &uid, &gid, &err));
    EXPECT_TRUE(resolve_group("root", &gid, &err));
    EXPECT_EQ(gid, 0u);
    EXPECT_TRUE(resolve_group("123", &gid, &err));
    EXPECT_EQ(gid, 123u);
    EXPECT_FALSE(resolve_group("no-such-group-tickhost", &gid, &err));
    EXPECT_THAT(err, HasSubstr("no group 'no-such-group-tickhost'"));
}

// ---- limits -------------------------------------------------------------------------------------------------

TEST(ChildCgroupParse, ProcSelfCgroupAndMountinfo) {
    EXPECT_EQ(cgroup_v2_path_of("9:name=systemd:/\n4:memory:/x\n0::/\n"), "/");
    EXPECT_EQ(cgroup_v2_path_of("0::/system.slice/tickhost.service\n"), "/system.slice/tickhost.service");
    EXPECT_FALSE(cgroup_v2_path_of("4:memory:/x\n"));
    const std::string v1 =
        "30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        "35 30 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "40 30 0:35 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
    EXPECT_EQ(cgroup2_mount_of(v1), "/sys/fs/cgroup/unified");
    EXPECT_EQ(cgroup2_mount_of("36 25 0:31 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n"),
              "/sys/fs/cgroup");
    EXPECT_EQ(cgroup2_mount_of("50 1 0:40 / /mnt/my\\040cgroups rw - cgroup2 none rw\n"), "/mnt/my cgroups");
    EXPECT_FALSE(cgroup2_mount_of("30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"));
}

TEST(ChildLimits, MechanismSaysWhyNoCgroupHere) {
    std::string why;
    if (cgroup_v2_usable(&why)) GTEST_SKIP() << "a delegated cgroup v2 here: " << why;
    Report report;
    auto spec = probe({"report"});
    spec.limits.memory_max = uint64_t(1) << 30;
    spec.exe_sanitized = false;
    auto child = start(spec, report);
    ASSERT_TRUE(child);
    EXPECT_EQ(child->limits_mechanism(), "rlimits (RLIMIT_DATA); cgroup v2 not used: " + why);
    EXPECT_FALSE(why.empty());
}

TEST(ChildLimits, OpenFilesMaxIsRlimitNofile) {
    Report report;
    auto spec = probe({"report"});
    spec.limits.open_files_max = 64;
    auto child = start(spec, report);
    ASSERT_TRUE(child);
    EXPECT_EQ(report["rlimit_nofile"], "64");
    EXPECT_THAT(child->limits_mechanism(), HasSubstr("RLIMIT_NOFILE"));
    EXPECT_TRUE(child->unenforced().empty());
}

TEST(ChildLimits, MemoryMaxStopsAHog) {
    Report report;
    ChildSpec spec;
    spec.exe = kMemoryHog;  // built without sanitizers
    spec.args = {"1024"};
    spec.name = "hog";
    spec.exe_sanitized = false;
    spec.limits.memory_max = uint64_t(256) << 20;
    auto child = start(spec, report);
    ASSERT_TRUE(child);
    EXPECT_TRUE(child->unenforced().empty());
    const ChildExit e = child->wait();
    if (cgroup_here()) {
        EXPECT_THAT(child->limits_mechanism(), StartsWith("cgroup v2 "));
        EXPECT_TRUE(e.memory_limit) << e.text();
        EXPECT_EQ(e.text(), "killed by signal 9 (SIGKILL) after exceeding memory_max (cgroup oom_kill)");
    } else {
        EXPECT_THAT(child->limits_mechanism(), StartsWith("rlimits (RLIMIT_DATA)"));
        EXPECT_EQ(e.text(), "exited with status 2");  // malloc failed: RLIMIT_DATA refuses, it does not kill
        EXPECT_LE(std::stol(report["failed"]), 256);
        EXPECT_GE(std::stol(report["failed"]), 128);
    }
    EXPECT_EQ(report.wait_for("done"), false);
}

TEST(ChildLimits, MemoryMaxOfASanitizedChildIsReportedNotSilentlySkipped) {
    if (cgroup_here()) GTEST_SKIP() << "memory.max binds sanitized children too";
    Report report;
    auto spec = probe({"report"});
    spec.exe_sanitized = true;
    spec.limits.memory_max = uint64_t(512) << 20;
    auto child = start(spec, report);
    ASSERT_TRUE(child);
    ASSERT_EQ(child->unenforced().size(), 1u);
    EXPECT_THAT(child->unenforced()[0], StartsWith("memory_max = 536870912: not enforced: "));
    EXPECT_EQ(report["rlimit_data"], "unlimited");
    EXPECT_EQ(child->wait().text(), "exited with status 0");
}

// Why exe_sanitized exists: an ASan/TSan-built child cannot even start under RLIMIT_DATA (its shadow memory is
// terabytes of writable reservations). Only meaningful in a sanitized build, where the probe is one.
TEST(ChildLimits, RlimitDataStopsASanitizedChildAtStart) {
    if (!kHostSanitized) GTEST_SKIP() << "this build has no ASan/TSan";
    if (cgroup_here()) GTEST_SKIP() << "a delegated cgroup v2 here: RLIMIT_DATA is not used";
    Report report;
    auto spec = probe({"ready"});
    spec.exe_sanitized = false;  // the lie this test is about
    spec.limits.memory_max = uint64_t(512) << 20;
    auto child = start(spec, report);
    ASSERT_TRUE(child);
    const ChildExit e = child->wait();
    EXPECT_FALSE(report.wait_for("ready"));
    EXPECT_NE(e.text(), "exited with status 0");
}

TEST(ChildLimits, ProcessesMaxOneAsRootIsASeccompFilter) {
    if (::getuid() != 0) GTEST_SKIP() << "the root case: needs root";
    if (cgroup_here()) GTEST_SKIP() << "pids.max here";
    {
        Report report;
        ChildSpec spec;
        spec.exe = kForkBomb;
        spec.args = {"64"};
        spec.name = "bomb";
        spec.limits.processes_max = 1;
        auto child = start(spec, report);
        ASSERT_TRUE(child);
        EXPECT_EQ(
            child->limits_mechanism(), "a seccomp filter against fork; cgroup v2 not used: " + [] {
                std::string why;
                cgroup_v2_usable(&why);
                return why;
            }());
        EXPECT_TRUE(child->unenforced().empty());
        EXPECT_EQ(report["forked"], "0");
        EXPECT_EQ(report["errno"], std::to_string(EAGAIN));
        child->wait();
    }
    Report report;
    auto spec = probe({"thread", "fork", "report"});
    spec.limits.processes_max = 1;
    auto child = start(spec, report);
    ASSERT_TRUE(child);
    EXPECT_EQ(report["thread"], "0");  // threads still work (clone3 refused, clone with CLONE_THREAD allowed)
    EXPECT_EQ(report["fork"], std::to_string(EAGAIN));
    EXPECT_EQ(report["Seccomp"], "2");
}

#if defined(__x86_64__)
TEST(ChildLimits, SeccompFilterKillsForeignSyscallAbis) {
    if (::getuid() != 0 || cgroup_here()) GTEST_SKIP() << "the filter is used as root without a cgroup";
    for (const char* abi : {"int80", "x32"}) {
        {
            // Some kernels (and VMs) have no such entry at all: the call faults without any filter, and there is
            // nothing for the filter to stop. The filter is only judged where the entry exists.
            Report plain;
            auto unfiltered = start(probe({abi}), plain);
            ASSERT_TRUE(unfiltered);
            if (unfiltered->wait().text() != "exited with status 0") {
                std::cout << "[ NOTE     ] " << abi << ": this kernel has no such system call entry; nothing to filter\n";
                continue;
            }
        }
        Report report;
        auto spec = probe({abi});
        spec.limits.processes_max = 1;
        auto child = start(spec, report);
        ASSERT_TRUE(child);
        EXPECT_EQ(child->wait().text(), "killed by signal 31 (SIGSYS)") << abi;
    }
}
#endif

TEST(ChildLimits, ProcessesMaxAboveOneAsRootIsReportedUnenforced) {
    if (::getuid() != 0) GTEST_SKIP() << "the root case: needs root";
    if (cgroup_here()) GTEST_SKIP() << "pids.max here";
    Report report;
    ChildSpec spec;
    spec.exe = kForkBomb;
    spec.args = {"8"};
    spec.name = "bomb";
    spec.limits.processes_max = 5;
    auto child = start(spec, report);
    ASSERT_TRUE(child);
    ASSERT_EQ(child->unenforced().size(), 1u);
    EXPECT_THAT(child->unenforced()[0],
                StartsWith("processes_max = 5: not enforceable as root without a delegated cgroup v2"));
    EXPECT_EQ(report["forked"], "8");  // as reported: not enforced
    EXPECT_EQ(child->wait().text(), "exited with status 0");
}

TEST(ChildLimits, ProcessesMaxAsAnotherUserIsRlimitNproc) {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to run the child as nobody";
    if (cgroup_here()) GTEST_SKIP() << "pids.max here";
    if (!others_can_execute(kForkBomb)) GTEST_SKIP() << kForkBomb << " is not reachable by other users";
    Report report;
    ChildSpec spec;
    spec.exe = kForkBomb;
    spec.args = {"64"};
    spec.name = "bomb";
    spec.uid = 65534;
    spec.gid = 65534;
    spec.limits.processes_max = 8;
    auto child = start(spec, report);
    ASSERT_TRUE(child);
    EXPECT_THAT(child->limits_mechanism(), StartsWith("rlimits (RLIMIT_NPROC)"));
    EXPECT_TRUE(child->unenforced().empty());
    // 8 processes of nobody at most, itself included (and any other of nobody's: fewer then, never more).
    EXPECT_LT(std::stoi(report["forked"]), 8);
    EXPECT_EQ(report["errno"], std::to_string(EAGAIN));
    EXPECT_EQ(child->wait().text(), "exited with status 0");
}

// The documented caveat of RLIMIT_NPROC: it counts every process of the user, not only the child's.
TEST(ChildLimits, RlimitNprocCountsTheUsersOtherProcesses) {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to run children as nobody";
    if (cgroup_here()) GTEST_SKIP() << "pids.max here";
    if (!others_can_execute(kProbe)) GTEST_SKIP() << kProbe << " is not reachable by other users";
    std::vector<std::unique_ptr<ChildProcess>> others;
    for (int i = 0; i < 2; ++i) {
        auto spec = probe({"sleep", "60"});
        spec.uid = 65534;
        std::string err;
        others.push_back(ChildProcess::spawn(spec, &err));
        ASSERT_TRUE(others.back()) << err;
    }
    auto spec = probe({"report"});
    spec.uid = 65534;
    spec.limits.processes_max = 1;
    std::string err;
    EXPECT_FALSE(ChildProcess::spawn(spec, &err));
    EXPECT_EQ(err, std::string("cannot start ") + kProbe +
                       ": Resource temporarily unavailable (exec); uid 65534 already has more than processes_max = 1 "
                       "processes or threads (RLIMIT_NPROC counts all of them): give it a user of its own");
}

// Only where the host's cgroup is delegated (not on a machine whose cgroup v2 has no memory controller).
TEST(ChildLimits, CgroupV2WhereDelegated) {
    std::string dir;
    if (!cgroup_v2_usable(&dir)) GTEST_SKIP() << "no delegated cgroup v2 here: " << dir;
    {
        Report report;
        ChildSpec spec;
        spec.exe = kMemoryHog;
        spec.args = {"1024"};
        spec.name = "hog";
        spec.limits.memory_max = uint64_t(64) << 20;
        auto child = start(spec, report);
        ASSERT_TRUE(child);
        const std::string mech = child->limits_mechanism();
        ASSERT_THAT(mech, StartsWith("cgroup v2 " + dir + "/hog."));
        const std::string cg = mech.substr(std::string("cgroup v2 ").size());
        EXPECT_EQ(tickhost::test::read_file(cg + "/memory.max"), std::to_string(uint64_t(64) << 20) + "\n");
        EXPECT_EQ(child->wait().text(), "killed by signal 9 (SIGKILL) after exceeding memory_max (cgroup oom_kill)");
        EXPECT_FALSE(std::filesystem::exists(cg));  // removed once reaped
    }
    Report report;
    ChildSpec spec;
    spec.exe = kForkBomb;
    spec.args = {"64"};
    spec.name = "bomb";
    spec.limits.processes_max = 8;
    auto child = start(spec, report);
    ASSERT_TRUE(child);
    EXPECT_TRUE(child->unenforced().empty());
    EXPECT_LT(std::stoi(report["forked"]), 8);
    EXPECT_EQ(child->wait().text(), "exited with status 0");
}

// ---- errors -------------------------------------------------------------------------------------------------

TEST(ChildErrors, MissingExecutable) {
    ChildSpec spec;
    spec.exe = "/x/tickhost-worker";
    std::string err;
    EXPECT_FALSE(ChildProcess::spawn(spec, &err));
    EXPECT_EQ(err, "cannot start /x/tickhost-worker: No such file or directory (exec)");
}

TEST(ChildErrors, NotExecutable) {
    tickhost::test::TempDir dir;
    tickhost::test::write_file(dir.path() / "worker", "#!/bin/sh\n");
    ::chmod((dir.path() / "worker").c_str(), 0644);
    ChildSpec spec;
    spec.exe = dir.path() / "worker";
    std::string err;
    EXPECT_FALSE(ChildProcess::spawn(spec, &err));
    EXPECT_THAT(err,
                StartsWith("cannot start " + spec.exe.string() + ": Permission denied (exec); make it executable"));
}

TEST(ChildErrors, BadDescriptorAndTooFewOpenFiles) {
    auto spec = probe({});
    spec.fds = {987654};
    std::string err;
    EXPECT_FALSE(ChildProcess::spawn(spec, &err));
    EXPECT_EQ(err, std::string("cannot start ") + kProbe + ": fds[0] = 987654 is not an open descriptor of the host");
    spec.fds = {1, 2};
    spec.limits.open_files_max = 5;
    EXPECT_FALSE(ChildProcess::spawn(spec, &err));
    EXPECT_THAT(err, HasSubstr("open_files_max = 5 leaves it no descriptor to open (it starts with 5)"));
    spec.exe.clear();
    EXPECT_FALSE(ChildProcess::spawn(spec, &err));
    EXPECT_THAT(err, HasSubstr("no executable given"));
}
