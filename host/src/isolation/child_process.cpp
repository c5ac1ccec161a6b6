#include "isolation/child_process.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/magic.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <sstream>
#include <thread>

extern char** environ;

// Generic syscall numbers (the same on x86_64 and aarch64), for C libraries older than the kernel.
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SECCOMP_RET_KILL_PROCESS
#define SECCOMP_RET_KILL_PROCESS 0x80000000U
#endif
#ifndef CGROUP2_SUPER_MAGIC
#define CGROUP2_SUPER_MAGIC 0x63677270
#endif

namespace tickhost::detail {

namespace {

std::string errno_text(int e) { return std::strerror(e); }

// ---- what the child does between fork and exec --------------------------------------------------------------

// The step of the child's setup that failed, sent to the host through the CLOEXEC pipe with its errno.
enum class Stage : int {
    cgroup = 1,
    setpgid,
    descriptors,
    dev_null,
    rlimit_data,
    rlimit_nofile,
    rlimit_nproc,
    setgroups,
    setgid,
    setuid,
    id_check,
    no_new_privs,
    pdeathsig,
    parent_gone,
    seccomp,
    exec,
};

const char* stage_text(Stage s) {
    switch (s) {
        case Stage::cgroup:
            return "entering its cgroup";
        case Stage::setpgid:
            return "setpgid";
        case Stage::descriptors:
            return "placing descriptors";
        case Stage::dev_null:
            return "opening /dev/null as stdin";
        case Stage::rlimit_data:
            return "setrlimit RLIMIT_DATA";
        case Stage::rlimit_nofile:
            return "setrlimit RLIMIT_NOFILE";
        case Stage::rlimit_nproc:
            return "setrlimit RLIMIT_NPROC";
        case Stage::setgroups:
            return "setgroups";
        case Stage::setgid:
            return "setgid";
        case Stage::setuid:
            return "setuid";
        case Stage::id_check:
            return "checking uid/gid after the change";
        case Stage::no_new_privs:
            return "PR_SET_NO_NEW_PRIVS";
        case Stage::pdeathsig:
            return "PR_SET_PDEATHSIG";
        case Stage::parent_gone:
            return "the host ended during the start";
        case Stage::seccomp:
            return "installing the seccomp filter";
        case Stage::exec:
            return "exec";
    }
    return "?";
}

struct ChildFailure {
    int32_t stage;
    int32_t err;
};

// Everything the child needs, made before fork: between fork and exec the child of a multithreaded process
// may only make async-signal-safe calls (no allocation, no locks another thread may have held).
struct Prepared {
    std::string exe;
    std::vector<std::string> arg_store;
    std::vector<char*> argv;
    char** envp = nullptr;
    std::vector<int> fds;      // to become 3, 4, 5...
    std::vector<int> scratch;  // same size: the child's temporary copies
    int err_pipe = -1;         // write end, CLOEXEC
    int cgroup_procs = -1;     // the child's cgroup.procs, opened for writing; -1 without a cgroup
    bool set_data = false, set_nofile = false, set_nproc = false;
    rlim_t data = 0, nofile = 0, nproc = 0;
    bool set_uid = false, set_gid = false;
    uid_t uid = 0;
    gid_t gid = 0;
    pid_t parent = 0;
    std::vector<sock_filter> filter;  // empty: none
};

// The kernel's struct sigaction (x86_64 and the generic layout of aarch64): SIG_DFL through the raw
// syscall, past libc's refusal of its internal signals and past the sanitizers' interceptors.
struct KernelSigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)();
    uint64_t mask;
};

[[noreturn]] void child_fail(int fd, Stage s, int err) {
    const ChildFailure f{int32_t(s), int32_t(err)};
    // A short write is as good as none: the host reads EOF and the exit status 127.
    [[maybe_unused]] const ssize_t n = ::write(fd, &f, sizeof f);
    ::_exit(127);
}

bool set_limit(int resource, rlim_t value) {
    const struct rlimit rl { value, value };
    return ::setrlimit(resource, &rl) == 0;
}

[[noreturn]] void child_main(Prepared& p) noexcept {
    int err_fd = p.err_pipe;
    auto fail = [&](Stage s) { child_fail(err_fd, s, errno); };

    // Into the cgroup first: everything it does from here on, exec included, is charged to it.
    if (p.cgroup_procs >= 0 && ::write(p.cgroup_procs, "0", 1) != 1) fail(Stage::cgroup);
    if (::setpgid(0, 0) != 0) fail(Stage::setpgid);

    // Dispositions to SIG_DFL (SIG_IGN would survive exec). The mask stays full until just before exec:
    // the spawner thread forks with every signal blocked, so no handler of the host runs in the child.
    for (int sig = 1; sig < 65; ++sig) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        KernelSigaction sa{};
        sa.handler = SIG_DFL;
        ::syscall(SYS_rt_sigaction, sig, &sa, nullptr, sizeof sa.mask);
    }

    // fds -> 3, 4, 5...: first copy every source (and the error pipe) above the target range, so that no
    // dup2 overwrites a source still to be placed, then place them (dup2 clears CLOEXEC on the copy).
    const int n = int(p.fds.size());
    const int above = 3 + n;
    for (int i = 0; i < n; ++i) {
        p.scratch[i] = ::fcntl(p.fds[i], F_DUPFD_CLOEXEC, above);
        if (p.scratch[i] < 0) fail(Stage::descriptors);
    }
    const int high_err = ::fcntl(err_fd, F_DUPFD_CLOEXEC, above);
    if (high_err < 0) fail(Stage::descriptors);
    err_fd = high_err;
    for (int i = 0; i < n; ++i)
        if (::dup2(p.scratch[i], 3 + i) < 0) fail(Stage::descriptors);
    const int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd < 0) fail(Stage::dev_null);
    if (null_fd != 0) {
        if (::dup2(null_fd, 0) < 0) fail(Stage::dev_null);
        ::close(null_fd);
    }
    close_descriptors_from(above, err_fd, true);

    if (p.set_data && !set_limit(RLIMIT_DATA, p.data)) fail(Stage::rlimit_data);
    if (p.set_nofile && !set_limit(RLIMIT_NOFILE, p.nofile)) fail(Stage::rlimit_nofile);
    // Before the uid change: setuid() then marks the process if the user already has more than that, and
    // exec fails with EAGAIN, a clearer failure than a worker whose every fork fails.
    if (p.set_nproc && !set_limit(RLIMIT_NPROC, p.nproc)) fail(Stage::rlimit_nproc);

    if (p.set_gid) {
        const gid_t g = p.gid;
        if (::setgroups(1, &g) != 0) fail(Stage::setgroups);
        if (::setgid(g) != 0) fail(Stage::setgid);
    }
    if (p.set_uid && ::setuid(p.uid) != 0) fail(Stage::setuid);
    if (p.set_gid || p.set_uid) {
        bool ok = true;
        if (p.set_gid) ok = ok && ::getgid() == p.gid && ::getegid() == p.gid;
        if (p.set_uid) ok = ok && ::getuid() == p.uid && ::geteuid() == p.uid;
        // A uid change that left a way back (a saved set-user-ID of 0) is no change.
        if (p.set_uid && p.uid != 0) ok = ok && ::setuid(0) != 0;
        if (!ok) {
            errno = EPERM;
            fail(Stage::id_check);
        }
    }

    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail(Stage::no_new_privs);
    // After the uid change, which clears it. Fires when the spawner thread ends, i.e. with the host.
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) fail(Stage::pdeathsig);
    // The host may have ended before PDEATHSIG was set: then nobody would kill us.
    if (::getppid() != p.parent) {
        errno = ESRCH;
        fail(Stage::parent_gone);
    }

    if (!p.filter.empty()) {
        sock_fprog prog{};
        prog.len = static_cast<unsigned short>(p.filter.size());
        prog.filter = p.filter.data();
        if (::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0) fail(Stage::seccomp);
    }

    uint64_t none = 0;
    ::syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, nullptr, sizeof none);
    ::execve(p.exe.c_str(), p.argv.data(), p.envp);
    child_fail(err_fd, Stage::exec, errno);
}

// The seccomp-BPF program of processes_max = 1 as root: fork and vfork and clone without CLONE_THREAD fail
// with EAGAIN, clone3 with ENOSYS (its flags are behind a pointer the filter cannot read; glibc then falls
// back to clone for threads). Any other ABI than the host's (i386 int 0x80 and x32 on x86_64, which have
// their own numbers for fork) kills the process. Empty on other architectures.
std::vector<sock_filter> fork_filter() {
#if defined(__x86_64__)
    constexpr uint32_t arch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
    constexpr uint32_t arch = AUDIT_ARCH_AARCH64;
#else
    return {};
#endif
#if defined(__x86_64__) || defined(__aarch64__)
    static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the filter reads the low half of args[0]");
    const uint32_t eagain = SECCOMP_RET_ERRNO | (EAGAIN & SECCOMP_RET_DATA);
    const uint32_t enosys = SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA);
    std::vector<sock_filter> f;
    auto stmt = [&](uint16_t code, uint32_t k) { f.push_back(BPF_STMT(code, k)); };
    auto jump = [&](uint16_t code, uint32_t k, uint8_t jt, uint8_t jf) { f.push_back(BPF_JUMP(code, k, jt, jf)); };
    auto deny = [&](uint32_t nr, uint32_t ret) {
        jump(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1);
        stmt(BPF_RET | BPF_K, ret);
    };
    stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch));
    jump(BPF_JMP | BPF_JEQ | BPF_K, arch, 1, 0);
    stmt(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr));
#if defined(__x86_64__)
    jump(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u /* __X32_SYSCALL_BIT */, 0, 1);
    stmt(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
#endif
#ifdef SYS_fork
    deny(SYS_fork, eagain);
#endif
#ifdef SYS_vfork
    deny(SYS_vfork, eagain);
#endif
    deny(SYS_clone3, enosys);
    // clone: allowed with CLONE_THREAD (a thread), EAGAIN without (a process).
    jump(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 0, 3);
    stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[0]));
    jump(BPF_JMP | BPF_JSET | BPF_K, CLONE_THREAD, 1, 0);
    stmt(BPF_RET | BPF_K, eagain);
    stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    return f;
#endif
}

// ---- the spawner thread -------------------------------------------------------------------------------------

// Makes every fork on one thread that lives as long as the process: PR_SET_PDEATHSIG is tied to the thread
// that forked, so a child forked by a short-lived caller thread would be SIGKILLed when that thread ends.
class Spawner {
public:
    Spawner() {
        // Every signal blocked in the spawner thread: the host's signals go to its signal thread, and a
        // child starts with them blocked until it has reset the dispositions.
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        thread_ = std::thread([this] { loop(); });
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
    }

    // Forks on the spawner thread; the child runs child_main(*p). The pid, or -errno.
    pid_t fork_child(Prepared* p) {
        std::lock_guard<std::mutex> one_at_a_time(serial_);
        std::unique_lock<std::mutex> lk(mu_);
        job_ = p;
        done_ = false;
        cv_.notify_all();
        cv_.wait(lk, [&] { return done_; });
        return result_;
    }

private:
    [[noreturn]] void loop() {
        std::unique_lock<std::mutex> lk(mu_);
        for (;;) {
            cv_.wait(lk, [&] { return job_ != nullptr; });
            Prepared* p = job_;
            const pid_t pid = ::fork();
            if (pid == 0) child_main(*p);
            result_ = pid < 0 ? -errno : pid;
            job_ = nullptr;
            done_ = true;
            cv_.notify_all();
        }
    }

    std::mutex serial_;
    std::mutex mu_;
    std::condition_variable cv_;
    Prepared* job_ = nullptr;
    bool done_ = false;
    pid_t result_ = 0;
    std::thread thread_;
};

// The process's spawner. Never destroyed: its thread must outlive every child (joining it at exit would
// SIGKILL children that static destructors may still be reaping). A process that forked without exec has
// none of its parent's threads: it gets a spawner of its own, and the parent's copy is left alone (its
// mutexes may have been held by a thread that does not exist here).
Spawner& spawner() {
    static std::atomic<Spawner*> current{nullptr};
    static std::atomic<pid_t> owner{0};
    static std::mutex create_mu;
    const pid_t self = ::getpid();
    Spawner* s = current.load(std::memory_order_acquire);
    if (s && owner.load(std::memory_order_acquire) == self) return *s;
    std::lock_guard<std::mutex> lk(create_mu);
    s = current.load(std::memory_order_acquire);
    if (s && owner.load(std::memory_order_acquire) == self) return *s;
    s = new Spawner;
    owner.store(self, std::memory_order_release);
    current.store(s, std::memory_order_release);
    return *s;
}

// ---- cgroup v2 ----------------------------------------------------------------------------------------------

// Whole file into *out. O_CLOEXEC (std::ifstream is not): a fork elsewhere in the host must not inherit it.
bool read_text(const std::string& path, std::string* out) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    out->clear();
    char buf[4096];
    for (;;) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            ::close(fd);
            return n == 0;
        }
        out->append(buf, size_t(n));
    }
}

// Writes `text` in one write(2) (cgroup files take one value per write). 0 or the errno.
int write_text(const std::string& path, const std::string& text) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    const ssize_t n = ::write(fd, text.data(), text.size());
    const int e = n == ssize_t(text.size()) ? 0 : (n < 0 ? errno : EIO);
    ::close(fd);
    return e;
}

bool has_word(const std::string& text, const std::string& word) {
    std::istringstream in(text);
    std::string w;
    while (in >> w)
        if (w == word) return true;
    return false;
}

std::string trim(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s;
}

bool is_cgroup2(const char* path) {
    struct statfs st {};
    return ::statfs(path, &st) == 0 && st.f_type == CGROUP2_SUPER_MAGIC;
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape_mount(const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        auto octal = [&](size_t j) { return s[j] >= '0' && s[j] <= '7'; };
        if (s[i] == '\\' && i + 3 < s.size() && octal(i + 1) && octal(i + 2) && octal(i + 3)) {
            out.push_back(char((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0')));
            i += 3;
        } else {
            out.push_back(s[i]);
        }
    }
    return out;
}

struct CgroupBase {
    bool usable = false;
    std::string dir_or_reason;
};

CgroupBase setup_cgroup_v2() {
    CgroupBase r;
    std::string text;
    if (!read_text("/proc/self/cgroup", &text)) {
        r.dir_or_reason = "cannot read /proc/self/cgroup";
        return r;
    }
    const auto own = cgroup_v2_path_of(text);
    if (!own) {
        r.dir_or_reason = "the host is in no cgroup v2 hierarchy (/proc/self/cgroup has no 0:: line)";
        return r;
    }
    std::string mount;
    if (is_cgroup2("/sys/fs/cgroup"))
        mount = "/sys/fs/cgroup";
    else if (is_cgroup2("/sys/fs/cgroup/unified"))
        mount = "/sys/fs/cgroup/unified";
    else if (read_text("/proc/self/mountinfo", &text))
        mount = cgroup2_mount_of(text).value_or("");
    if (mount.empty()) {
        r.dir_or_reason = "no cgroup2 file system is mounted";
        return r;
    }
    if (*own == "/") {
        r.dir_or_reason = "the host is in the root cgroup of " + mount + " (0::/), which is not delegated to it";
        return r;
    }
    const std::string dir = mount + *own;
    std::string controllers;
    if (!read_text(dir + "/cgroup.controllers", &controllers)) {
        r.dir_or_reason = "cannot read " + dir + "/cgroup.controllers";
        return r;
    }
    if (!has_word(controllers, "memory") || !has_word(controllers, "pids")) {
        r.dir_or_reason = "the memory and pids controllers are not available in " + dir + " (cgroup.controllers: \"" +
                          trim(controllers) + "\")";
        return r;
    }
    if (::access(dir.c_str(), W_OK) != 0 || ::access((dir + "/cgroup.subtree_control").c_str(), W_OK) != 0 ||
        ::access((dir + "/cgroup.procs").c_str(), W_OK) != 0) {
        r.dir_or_reason = dir + " is not writable by the host (delegate it, e.g. systemd Delegate=yes)";
        return r;
    }
    std::string subtree;
    read_text(dir + "/cgroup.subtree_control", &subtree);
    if (!has_word(subtree, "memory") || !has_word(subtree, "pids")) {
        // No internal processes: a cgroup that gives its children controllers holds no process itself, so
        // the host moves into a leaf of its own first. Only if it is alone there: it does not move
        // processes that are not its own, and with them there the controllers could not be enabled anyway.
        std::string procs;
        read_text(dir + "/cgroup.procs", &procs);
        std::istringstream in(procs);
        long pid;
        int others = 0;
        while (in >> pid) others += pid != long(::getpid());
        if (others > 0) {
            r.dir_or_reason = dir + " holds " + std::to_string(others) +
                              " other process(es) besides the host, so its children cannot get the memory and "
                              "pids controllers (run the host in a cgroup of its own, e.g. systemd Delegate=yes)";
            return r;
        }
        const std::string leaf = dir + "/host";
        if (::mkdir(leaf.c_str(), 0755) != 0 && errno != EEXIST) {
            r.dir_or_reason = "cannot create " + leaf + ": " + errno_text(errno);
            return r;
        }
        if (int e = write_text(leaf + "/cgroup.procs", std::to_string(::getpid()))) {
            r.dir_or_reason = "cannot move the host into " + leaf + ": " + errno_text(e);
            return r;
        }
        if (int e = write_text(dir + "/cgroup.subtree_control", "+memory +pids")) {
            r.dir_or_reason = "cannot enable memory and pids for the child cgroups of " + dir + ": " + errno_text(e) +
                              (e == EBUSY ? " (other processes are still in it)" : "");
            return r;
        }
    }
    r.usable = true;
    r.dir_or_reason = dir;
    return r;
}

const CgroupBase& cgroup_base() {
    static std::once_flag once;
    static CgroupBase base;
    std::call_once(once, [] { base = setup_cgroup_v2(); });
    return base;
}

std::string cgroup_name_part(const std::string& name) {
    std::string s;
    for (char c : name) s.push_back(std::isalnum((unsigned char)c) || c == '-' || c == '_' ? c : '_');
    if (s.empty()) s = "child";
    return s.substr(0, 64);
}

// SIGKILL to everything in the cgroup: cgroup.kill (Linux 5.14), else each pid listed.
void kill_cgroup(const std::string& dir) {
    if (write_text(dir + "/cgroup.kill", "1") == 0) return;
    std::string procs;
    read_text(dir + "/cgroup.procs", &procs);
    std::istringstream in(procs);
    long pid;
    while (in >> pid)
        if (pid > 0) ::kill(pid_t(pid), SIGKILL);
}

uint64_t oom_kills(const std::string& dir) {
    std::string events;
    read_text(dir + "/memory.events", &events);
    std::istringstream in(events);
    std::string key;
    uint64_t value;
    while (in >> key >> value)
        if (key == "oom_kill") return value;
    return 0;
}

// rmdir fails with EBUSY until the killed processes have left; they do promptly.
void remove_cgroup(const std::string& dir) {
    for (int i = 0; i < 500; ++i) {
        if (::rmdir(dir.c_str()) == 0 || errno == ENOENT) return;
        if (errno != EBUSY) return;
        kill_cgroup(dir);
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

// ---- users and groups ---------------------------------------------------------------------------------------

bool parse_id(const std::string& s, unsigned long* out) {
    if (s.empty() || s.size() > 10) return false;
    for (char c : s)
        if (c < '0' || c > '9') return false;
    const unsigned long v = std::stoul(s);
    if (v >= 0xffffffffUL) return false;  // (uid_t)-1 means "unchanged" to the kernel
    *out = v;
    return true;
}

size_t initial_buffer(int which) {
    const long n = ::sysconf(which);
    return n > 0 ? size_t(n) : 16384;
}

// The primary group of `uid` from the passwd database; nullopt without an entry.
std::optional<gid_t> primary_group_of(uid_t uid) {
    std::vector<char> buf(initial_buffer(_SC_GETPW_R_SIZE_MAX));
    for (;;) {
        passwd pw{}, *res = nullptr;
        const int e = ::getpwuid_r(uid, &pw, buf.data(), buf.size(), &res);
        if (e == ERANGE && buf.size() < (1u << 20)) {
            buf.resize(buf.size() * 2);
            continue;
        }
        if (e != 0 || !res) return std::nullopt;
        return pw.pw_gid;
    }
}

}  // namespace

// ---- public helpers -----------------------------------------------------------------------------------------

std::string signal_name(int sig) {
    if (sig >= SIGRTMIN && sig <= SIGRTMAX) return "SIGRTMIN+" + std::to_string(sig - SIGRTMIN);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
    if (const char* abbrev = ::sigabbrev_np(sig)) return std::string("SIG") + abbrev;
#endif
    return "signal " + std::to_string(sig);
}

std::string ChildExit::text() const {
    if (unknown) return "ended, status unknown (reaped elsewhere: SIGCHLD ignored, or a waitpid(-1) in the host)";
    if (!signaled) return "exited with status " + std::to_string(status);
    std::string t = "killed by signal " + std::to_string(status) + " (" + signal_name(status) + ")";
    if (core_dumped) t += ", core dumped";
    if (memory_limit) t += " after exceeding memory_max (cgroup oom_kill)";
    return t;
}

void close_descriptors_from(int first, int keep, bool use_close_range) {
    if (use_close_range) {
        bool ok;
        if (keep < first)
            ok = ::syscall(SYS_close_range, unsigned(first), ~0u, 0) == 0;
        else
            ok = (keep == first || ::syscall(SYS_close_range, unsigned(first), unsigned(keep - 1), 0) == 0) &&
                 ::syscall(SYS_close_range, unsigned(keep + 1), ~0u, 0) == 0;
        if (ok) return;
    }
    const int dir = ::open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0) {
        struct LinuxDirent64 {
            uint64_t d_ino;
            int64_t d_off;
            unsigned short d_reclen;
            unsigned char d_type;
            char d_name[1];
        };
        alignas(8) char buf[4096];
        for (;;) {
            const long n = ::syscall(SYS_getdents64, dir, buf, sizeof buf);
            if (n <= 0) break;
            // The kernel lists /proc/self/fd in descriptor order from its position: closing the ones already
            // listed does not disturb the listing.
            for (long off = 0; off < n;) {
                const auto* d = reinterpret_cast<const LinuxDirent64*>(buf + off);
                off += d->d_reclen;
                int fd = 0;
                const char* c = d->d_name;
                if (*c < '0' || *c > '9') continue;
                for (; *c >= '0' && *c <= '9'; ++c) fd = fd * 10 + (*c - '0');
                if (fd >= first && fd != keep && fd != dir) ::close(fd);
            }
        }
        ::close(dir);
        return;
    }
    struct rlimit rl {};
    rlim_t top = 65536;
    if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        top = std::min<rlim_t>(rl.rlim_cur, 1u << 20);
    for (rlim_t fd = rlim_t(first); fd < top; ++fd)
        if (int(fd) != keep) ::close(int(fd));
}

std::optional<std::string> cgroup_v2_path_of(const std::string& proc_self_cgroup) {
    std::istringstream in(proc_self_cgroup);
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("0::", 0) == 0) {
            std::string path = line.substr(3);
            // A cgroup removed under us reads "/path (deleted)".
            if (path.empty() || path[0] != '/') return std::nullopt;
            return path;
        }
    return std::nullopt;
}

std::optional<std::string> cgroup2_mount_of(const std::string& mountinfo) {
    std::istringstream in(mountinfo);
    std::string line;
    std::vector<std::string> found;
    while (std::getline(in, line)) {
        // "36 25 0:31 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw": the mount point is the
        // fifth field, the file system type the first after " - ".
        const size_t dash = line.find(" - ");
        if (dash == std::string::npos) continue;
        std::istringstream head(line.substr(0, dash)), tail(line.substr(dash + 3));
        std::string id, parent, devno, root, point, type;
        if (!(head >> id >> parent >> devno >> root >> point) || !(tail >> type)) continue;
        if (type == "cgroup2") found.push_back(unescape_mount(point));
    }
    for (const char* preferred : {"/sys/fs/cgroup", "/sys/fs/cgroup/unified"})
        for (const auto& f : found)
            if (f == preferred) return f;
    if (found.empty()) return std::nullopt;
    return found.front();
}

bool cgroup_v2_usable(std::string* dir_or_reason) {
    const CgroupBase& b = cgroup_base();
    if (dir_or_reason) *dir_or_reason = b.dir_or_reason;
    return b.usable;
}

bool resolve_user(const std::string& name_or_id, uid_t* uid, gid_t* primary_gid, std::string* err) {
    std::vector<char> buf(initial_buffer(_SC_GETPW_R_SIZE_MAX));
    for (;;) {
        passwd pw{}, *res = nullptr;
        const int e = ::getpwnam_r(name_or_id.c_str(), &pw, buf.data(), buf.size(), &res);
        if (e == ERANGE && buf.size() < (1u << 20)) {
            buf.resize(buf.size() * 2);
            continue;
        }
        if (e == 0 && res) {
            *uid = pw.pw_uid;
            *primary_gid = pw.pw_gid;
            return true;
        }
        unsigned long id;
        if (parse_id(name_or_id, &id)) {
            *uid = uid_t(id);
            *primary_gid = primary_group_of(uid_t(id)).value_or(gid_t(id));
            return true;
        }
        if (err)
            *err = e != 0 ? "cannot look up user '" + name_or_id + "': " + errno_text(e)
                          : "no user '" + name_or_id +
                                "' in the passwd database (give a name from /etc/passwd or a "
                                "numeric uid)";
        return false;
    }
}

bool resolve_group(const std::string& name_or_id, gid_t* gid, std::string* err) {
    std::vector<char> buf(initial_buffer(_SC_GETGR_R_SIZE_MAX));
    for (;;) {
        group gr{}, *res = nullptr;
        const int e = ::getgrnam_r(name_or_id.c_str(), &gr, buf.data(), buf.size(), &res);
        if (e == ERANGE && buf.size() < (1u << 20)) {
            buf.resize(buf.size() * 2);
            continue;
        }
        if (e == 0 && res) {
            *gid = gr.gr_gid;
            return true;
        }
        unsigned long id;
        if (parse_id(name_or_id, &id)) {
            *gid = gid_t(id);
            return true;
        }
        if (err)
            *err = e != 0 ? "cannot look up group '" + name_or_id + "': " + errno_text(e)
                          : "no group '" + name_or_id +
                                "' in the group database (give a name from /etc/group or a "
                                "numeric gid)";
        return false;
    }
}

// ---- ChildProcess -------------------------------------------------------------------------------------------

namespace {

std::string join(const std::vector<std::string>& parts, const char* sep) {
    std::string s;
    for (const auto& p : parts) s += (s.empty() ? "" : sep) + p;
    return s;
}

struct Pipe {
    int r = -1, w = -1;
    ~Pipe() {
        if (r >= 0) ::close(r);
        if (w >= 0) ::close(w);
    }
};

std::unique_ptr<ChildProcess> fail(std::string* err, std::string text) {
    if (err) *err = std::move(text);
    return nullptr;
}

}  // namespace

std::unique_ptr<ChildProcess> ChildProcess::spawn(const ChildSpec& spec, std::string* err) {
    try {
        const std::string exe = spec.exe.string();
        const std::string what = "cannot start " + (exe.empty() ? std::string("(no executable)") : exe);
        if (exe.empty()) return fail(err, what + ": no executable given");
        for (size_t i = 0; i < spec.fds.size(); ++i)
            if (spec.fds[i] < 0 || ::fcntl(spec.fds[i], F_GETFD) < 0)
                return fail(err, what + ": fds[" + std::to_string(i) + "] = " + std::to_string(spec.fds[i]) +
                                     " is not an open descriptor of the host");
        if ((spec.uid || spec.gid) && ::geteuid() != 0)
            return fail(err, what + ": user/group need a host running as root (the host runs as uid " +
                                 std::to_string(::geteuid()) + "; drop user/group or start the host as root)");
        const ChildLimits& lim = spec.limits;
        if (lim.open_files_max != 0 && lim.open_files_max <= 3 + spec.fds.size())
            return fail(err, what + ": open_files_max = " + std::to_string(lim.open_files_max) +
                                 " leaves it no descriptor to open (it starts with " +
                                 std::to_string(3 + spec.fds.size()) + "); raise it");

        std::unique_ptr<ChildProcess> child(new ChildProcess);
        Prepared p;
        p.exe = exe;
        p.arg_store.push_back(exe);
        p.arg_store.insert(p.arg_store.end(), spec.args.begin(), spec.args.end());
        for (auto& a : p.arg_store) p.argv.push_back(a.data());
        p.argv.push_back(nullptr);
        p.envp = environ;
        p.fds = spec.fds;
        p.scratch.assign(spec.fds.size(), -1);
        p.parent = ::getpid();
        if (spec.uid) {
            p.set_uid = true;
            p.uid = *spec.uid;
            p.set_gid = true;
            p.gid = spec.gid ? *spec.gid : primary_group_of(*spec.uid).value_or(gid_t(*spec.uid));
        } else if (spec.gid) {
            p.set_gid = true;
            p.gid = *spec.gid;
        }
        const uid_t runs_as = spec.uid ? *spec.uid : ::getuid();

        // The limits: a cgroup of its own where the host's cgroup is delegated, else rlimits and seccomp.
        std::vector<std::string> unenforced;
        std::vector<std::string> mechanisms;
        std::string cgroup_dir_or_reason;
        bool use_cgroup = false;
        if (lim.memory_max || lim.processes_max) use_cgroup = cgroup_v2_usable(&cgroup_dir_or_reason);
        int cgroup_procs = -1;
        if (use_cgroup) {
            static std::atomic<uint64_t> counter{0};
            std::string dir;
            for (int tries = 0;; ++tries) {
                dir = cgroup_dir_or_reason + "/" + cgroup_name_part(spec.name) + "." + std::to_string(++counter);
                if (::mkdir(dir.c_str(), 0755) == 0) break;
                if (errno != EEXIST || tries > 1000)
                    return fail(err, what + ": cannot create its cgroup " + dir + ": " + errno_text(errno));
            }
            child->cgroup_ = dir;  // removed by the destructor from here on
            int e = 0;
            if (lim.memory_max) {
                e = write_text(dir + "/memory.max", std::to_string(lim.memory_max));
                if (e == 0) {
                    // No swap to grow into (absent without swap accounting), and an OOM kill takes the whole
                    // cgroup, not one of its processes at random.
                    const int swap = write_text(dir + "/memory.swap.max", "0");
                    if (swap != 0 && swap != ENOENT) e = swap;
                    write_text(dir + "/memory.oom.group", "1");
                }
            }
            if (e == 0 && lim.processes_max) e = write_text(dir + "/pids.max", std::to_string(lim.processes_max));
            if (e != 0) return fail(err, what + ": cannot set the limits of its cgroup " + dir + ": " + errno_text(e));
            cgroup_procs = ::open((dir + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
            if (cgroup_procs < 0)
                return fail(err, what + ": cannot open " + dir + "/cgroup.procs: " + errno_text(errno));
            mechanisms.push_back("cgroup v2 " + dir);
        } else {
            std::vector<std::string> rlimits;
            if (lim.memory_max) {
                if (spec.exe_sanitized) {
                    unenforced.push_back("memory_max = " + std::to_string(lim.memory_max) +
                                         ": not enforced: without a delegated cgroup v2 it is RLIMIT_DATA, which "
                                         "counts the terabytes of shadow memory an ASan/TSan-built child reserves at "
                                         "start (it could not start under it)");
                } else {
                    p.set_data = true;
                    p.data = rlim_t(lim.memory_max);
                    rlimits.push_back("RLIMIT_DATA");
                }
            }
            if (lim.open_files_max) rlimits.push_back("RLIMIT_NOFILE");
            if (lim.processes_max) {
                if (runs_as != 0) {
                    p.set_nproc = true;
                    p.nproc = rlim_t(lim.processes_max);
                    rlimits.push_back("RLIMIT_NPROC");
                } else if (lim.processes_max == 1 && !(p.filter = fork_filter()).empty()) {
                    // as root, only "no child process at all" can be enforced
                } else {
                    unenforced.push_back(
                        "processes_max = " + std::to_string(lim.processes_max) +
                        ": not enforceable as root without a delegated cgroup v2 (RLIMIT_NPROC does not bind root; "
                        "a seccomp filter can only forbid every fork, processes_max = 1; or run it as another user)");
                }
            }
            if (!rlimits.empty()) mechanisms.push_back("rlimits (" + join(rlimits, ", ") + ")");
            if (!p.filter.empty()) mechanisms.push_back("a seccomp filter against fork");
        }
        if (lim.open_files_max) {
            p.set_nofile = true;
            p.nofile = rlim_t(lim.open_files_max);
            if (use_cgroup) mechanisms.push_back("RLIMIT_NOFILE");
        }
        if (!lim.memory_max && !lim.open_files_max && !lim.processes_max)
            child->mechanism_ = "none (no limits asked)";
        else
            child->mechanism_ = mechanisms.empty() ? "none" : join(mechanisms, " and ");
        if ((lim.memory_max || lim.processes_max) && !use_cgroup)
            child->mechanism_ += "; cgroup v2 not used: " + cgroup_dir_or_reason;
        child->unenforced_ = std::move(unenforced);

        // The child reports a failure before exec through this pipe; exec closes it (CLOEXEC): EOF = started.
        Pipe pipe;
        int fds[2];
        if (::pipe2(fds, O_CLOEXEC) != 0) {
            if (cgroup_procs >= 0) ::close(cgroup_procs);
            return fail(err, what + ": cannot create a pipe: " + errno_text(errno));
        }
        pipe.r = fds[0];
        pipe.w = fds[1];
        p.err_pipe = pipe.w;
        p.cgroup_procs = cgroup_procs;

        const pid_t pid = spawner().fork_child(&p);
        if (cgroup_procs >= 0) ::close(cgroup_procs);
        ::close(pipe.w);
        pipe.w = -1;
        if (pid < 0) return fail(err, what + ": " + errno_text(-pid) + " (fork)");
        child->pid_ = pid;
        // The pid cannot be reused before we reap it: the pidfd refers to our child. O_CLOEXEC by default.
        const long pidfd = ::syscall(SYS_pidfd_open, pid, 0);
        child->pidfd_ = pidfd >= 0 ? int(pidfd) : -1;

        ChildFailure f{};
        size_t got = 0;
        while (got < sizeof f) {
            const ssize_t n = ::read(pipe.r, reinterpret_cast<char*>(&f) + got, sizeof f - got);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            got += size_t(n);
        }
        if (got == 0) return child;

        const ChildExit how = child->wait();  // it is in _exit(127)
        std::string text = what + ": ";
        if (got != sizeof f) {
            text += "it ended during its setup (" + how.text() + ")";
        } else {
            const Stage stage = Stage(f.stage);
            text += stage == Stage::id_check ? "the uid/gid change did not take" : errno_text(f.err);
            text += std::string(" (") + stage_text(stage) + ")";
            if (stage == Stage::exec && f.err == EACCES && spec.uid)
                text += "; the file and every folder above it must be executable by uid " + std::to_string(*spec.uid);
            else if (stage == Stage::exec && f.err == EACCES)
                text += "; make it executable (chmod +x) on a file system not mounted noexec";
            else if (stage == Stage::exec && f.err == EAGAIN && p.set_nproc)
                text += "; uid " + std::to_string(runs_as) +
                        " already has more than processes_max = " + std::to_string(lim.processes_max) +
                        " processes or threads (RLIMIT_NPROC counts all of them): give it a user of its own";
        }
        return fail(err, text);
    } catch (const std::exception& e) {
        return fail(err, "cannot start " + spec.exe.string() + ": " + e.what());
    }
}

ChildProcess::~ChildProcess() {
    bool reaped;
    {
        std::lock_guard<std::mutex> lk(mu_);
        reaped = exit_.has_value();
        if (!reaped) kill_locked();
    }
    if (!reaped && pid_ > 0) wait();
    if (!reaped && pid_ <= 0 && !cgroup_.empty()) remove_cgroup(cgroup_);  // spawn failed before fork
    if (pidfd_ >= 0) ::close(pidfd_);
}

void ChildProcess::kill() {
    std::lock_guard<std::mutex> lk(mu_);
    kill_locked();
}

void ChildProcess::kill_locked() {
    // Until it is reaped its pid, and so its process group id, cannot name another process.
    if (exit_ || pid_ <= 0) return;
    if (!cgroup_.empty()) kill_cgroup(cgroup_);
    ::kill(-pid_, SIGKILL);
    if (pidfd_ < 0 || ::syscall(SYS_pidfd_send_signal, pidfd_, SIGKILL, nullptr, 0) != 0) ::kill(pid_, SIGKILL);
}

std::optional<ChildExit> ChildProcess::try_wait() {
    std::lock_guard<std::mutex> lk(mu_);
    return collect_locked();
}

ChildExit ChildProcess::wait() {
    bool pidfd_works = pidfd_ >= 0;
    for (;;) {
        {
            std::lock_guard<std::mutex> lk(mu_);
            if (auto e = collect_locked()) return *e;
        }
        // Wait for the end without reaping it (WNOWAIT) and without the lock, so that kill() stays possible;
        // collect_locked() then reaps. By pidfd where the kernel has P_PIDFD (5.4): it cannot name another
        // process even if another thread reaped ours meanwhile.
        siginfo_t si{};
        int r;
        if (pidfd_works) {
            r = ::waitid(static_cast<idtype_t>(3 /* P_PIDFD */), id_t(pidfd_), &si, WEXITED | WNOWAIT);
            if (r < 0 && errno == EINVAL) {
                pidfd_works = false;
                continue;
            }
        } else {
            r = ::waitid(P_PID, id_t(pid_), &si, WEXITED | WNOWAIT);
        }
        (void)r;  // EINTR: again; ECHILD: collect_locked() says so
    }
}

std::optional<ChildExit> ChildProcess::collect_locked() {
    if (exit_) return exit_;
    siginfo_t si{};
    int r;
    do {
        r = ::waitid(P_PID, id_t(pid_), &si, WEXITED | WNOHANG | WNOWAIT);
    } while (r < 0 && errno == EINTR);
    if (r < 0 && errno != ECHILD) return std::nullopt;
    ChildExit ex;
    if (r < 0) {
        ex.unknown = true;
    } else {
        if (si.si_pid == 0) return std::nullopt;  // still running
        // It has ended but is not reaped: its process group id still cannot be reused. What it started dies
        // with it.
        if (!cgroup_.empty()) kill_cgroup(cgroup_);
        ::kill(-pid_, SIGKILL);
        int status = 0;
        struct rusage ru {};
        pid_t w;
        do {
            w = ::wait4(pid_, &status, 0, &ru);
        } while (w < 0 && errno == EINTR);
        if (w != pid_) {
            ex.unknown = true;
        } else {
            if (WIFSIGNALED(status)) {
                ex.signaled = true;
                ex.status = WTERMSIG(status);
                ex.core_dumped = WCOREDUMP(status);
            } else {
                ex.status = WEXITSTATUS(status);
            }
            usage_.cpu = std::chrono::seconds(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                         std::chrono::microseconds(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
            usage_.max_rss_bytes = uint64_t(ru.ru_maxrss) * 1024;
        }
    }
    if (!cgroup_.empty()) {
        ex.memory_limit = ex.signaled && ex.status == SIGKILL && oom_kills(cgroup_) > 0;
        remove_cgroup(cgroup_);
    }
    exit_ = ex;
    return exit_;
}

bool ChildProcess::exited() const {
    std::lock_guard<std::mutex> lk(mu_);
    return exit_.has_value();
}

ChildUsage ChildProcess::usage() const {
    std::lock_guard<std::mutex> lk(mu_);
    return usage_;
}

}  // namespace tickhost::detail
