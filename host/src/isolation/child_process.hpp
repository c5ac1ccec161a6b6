// Starting and supervising one sandboxed child process (process isolation: a plugin run by an executable of
// its own). Generic: nothing here knows about plugins; the caller says what to run, which descriptors it
// gets, as which user and with which limits.
//
//     ChildSpec spec;
//     spec.exe = "/usr/lib/tickhost/tickhost-worker";
//     spec.args = {"--plugin", "heartbeat"};
//     spec.fds = {sock};                      // fd 3 in the child
//     spec.limits.memory_max = 256 << 20;
//     spec.name = "heartbeat";
//     std::string err;
//     auto child = ChildProcess::spawn(spec, &err);
//     if (!child) log->error("{}", err);     // "cannot start /usr/lib/...: No such file or directory (exec)"
//     for (auto& u : child->unenforced()) log->warn("heartbeat: {}", u);
//     ...poll(child->pidfd())...; auto exit = child->try_wait();  // exit->text(): "killed by signal 11 (SIGSEGV)"
//
// What the child gets, in this order, before its exec (Linux only):
// - its own cgroup v2 (when the host's cgroup is delegated to it; see ChildLimits);
// - its own process group (setpgid(0, 0)): the terminal's Ctrl-C reaches the host only, and kill() reaches
//   whatever the child started in its group;
// - every signal disposition back to SIG_DFL and an empty signal mask (SIG_IGN and the mask survive exec; the
//   host ignores or blocks signals the child must not inherit);
// - `fds` as 3, 4, 5... in that order; stdin /dev/null; stdout and stderr the host's; EVERY other
//   descriptor closed (close_range(2), else each one listed in /proc/self/fd), CLOEXEC or not;
// - the rlimits of ChildLimits that apply;
// - supplementary groups, gid, uid dropped (ChildSpec::uid/gid), checked;
// - PR_SET_NO_NEW_PRIVS (no set-uid, set-gid or file-capability gain at exec; required for seccomp);
// - PR_SET_PDEATHSIG = SIGKILL (after the uid change, which clears it), then a check that the host is still
//   its parent: the child never outlives the host, even a host killed with SIGKILL;
// - the seccomp filter against fork (see ChildLimits::processes_max), last;
// - execve(exe, {exe, args...}, the host's environment). `exe` is not searched in PATH.
//
// Threading: spawn() may be called from any thread, also concurrently, also from a thread that ends right
// after: the fork itself is made by one long-lived "spawner" thread owned by a process-wide singleton,
// because PR_SET_PDEATHSIG fires when the *thread* that forked ends, not the process. The spawner thread
// lives until the process exits (it is never joined; a process that forks without exec gets a new one on its
// first spawn). Every member function of ChildProcess is thread-safe; kill() may be called while another
// thread is blocked in wait().
//
// The host must not set SIGCHLD to SIG_IGN (the kernel would reap children itself) and must not reap with
// waitpid(-1)/wait(): each ChildProcess reaps its own pid and nothing else.
//
// Errors: spawn() returns nullptr and one line in *err naming what failed and what to do; it never throws.
// The rest throws nothing but std::bad_alloc.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace tickhost::detail {

// Resource limits of one child; 0 = not set. How each is enforced depends on the machine:
//
// cgroup v2, when the host's own cgroup is delegated to it (not the root cgroup; `memory` and `pids` in its
// cgroup.controllers; writable): the child gets a cgroup of its own, <own>/<name>.<n>, with memory.max,
// memory.swap.max = 0 and pids.max, entered before exec. To give children controllers the host first moves
// itself into the leaf <own>/host (cgroup v2 allows processes only in leaves) and enables +memory +pids in
// <own>/cgroup.subtree_control; this happens once per process, at the first spawn that asks for
// memory_max or processes_max, and only if the host is the only process in <own> (else: the fallback). memory.oom.group
// = 1: an OOM kill takes the whole cgroup and is reported (ChildExit::memory_limit); kill() kills the whole cgroup; the
// cgroup is removed when the child is reaped. The cgroup's files belong to the host's user: a child running as that
// same user could move itself out of its cgroup; one running as another user cannot.
//
// Elsewhere (no cgroup v2, the root cgroup, controllers not delegated) rlimits and seccomp:
// - memory_max: RLIMIT_DATA (brk, and private writable mappings: malloc arenas and every thread's stack).
//   Allocations past it fail (ENOMEM) rather than kill. Not RLIMIT_AS: that counts reservations too, which
//   ASan/TSan shadow memory and the Go runtime make by the terabyte at start. RLIMIT_DATA counts those
//   writable reservations as well, so for a child built with ASan or TSan (ChildSpec::exe_sanitized)
//   memory_max is not set and is listed in unenforced(): the child could not start under it.
// - processes_max, child running as a non-root uid: RLIMIT_NPROC, set before the uid change. It counts
//   every process AND thread of that user (the child's threads too, and, for a child that keeps the host's
//   uid, the host's): use a user of its own per child. If the user already has more than that, exec fails
//   with EAGAIN.
// - processes_max, child running as root (which RLIMIT_NPROC does not bind): only processes_max = 1 can be
//   enforced, by a seccomp-BPF filter that makes fork and vfork and clone without CLONE_THREAD fail with
//   EAGAIN and clone3 with ENOSYS (glibc then creates threads with clone). It only lets the host's own
//   syscall ABI through (x86_64: not i386 int 0x80, not x32): a child of another ABI is killed with SIGSYS.
//   An ASan-built child cannot run LeakSanitizer under it (LSan forks a tracer at exit): it exits 1 with
//   "LeakSanitizer has encountered a fatal error" unless ASAN_OPTIONS has detect_leaks=0. TSan-built children
//   are not affected. processes_max > 1 is listed in unenforced().
// - Rlimits bind a child that runs as another user than root. A child running as root may raise them back
//   (CAP_SYS_RESOURCE): as root they guard against accidents (a leak, a fork loop), not against a hostile
//   child, which could do anything root can anyway.
// - open_files_max: RLIMIT_NOFILE (with a cgroup too; there is no cgroup controller for it). It bounds the
//   descriptor numbers, so it must be above 2 + fds.size().
struct ChildLimits {
    uint64_t memory_max = 0;      // bytes
    uint64_t open_files_max = 0;  // descriptors
    uint64_t processes_max = 0;   // processes, the child itself included (pids.max and RLIMIT_NPROC: threads too)
};

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kHostSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
inline constexpr bool kHostSanitized = true;
#else
inline constexpr bool kHostSanitized = false;
#endif
#else
inline constexpr bool kHostSanitized = false;
#endif

struct ChildSpec {
    std::filesystem::path exe;      // executed as is (absolute, or relative to the working directory)
    std::vector<std::string> args;  // argv[1...]; argv[0] is exe
    std::vector<int> fds;           // become 3, 4, 5... in the child, in this order; the caller keeps its own
    std::optional<uid_t> uid;       // run as this user: the host must run as root
    std::optional<gid_t> gid;       // and group (uid without gid: the uid's primary group, else the uid's number)
    ChildLimits limits;
    std::string name;  // for the cgroup and messages, e.g. "heartbeat"
    // Whether `exe` is built with ASan or TSan (see ChildLimits: RLIMIT_DATA would stop it at start). By
    // default, how this host is built: the worker comes from the same tree and flags.
    bool exe_sanitized = kHostSanitized;
};

struct ChildExit {
    bool signaled = false;  // killed by a signal (status is its number), else exited (status is the code)
    int status = 0;
    bool core_dumped = false;
    bool memory_limit = false;  // killed by the cgroup's OOM killer (cgroup v2 only: memory.events oom_kill)
    bool unknown = false;       // reaped by someone else (SIGCHLD ignored, a waitpid(-1) elsewhere): no facts
    // "exited with status 3", "killed by signal 11 (SIGSEGV)", "killed by signal 9 (SIGKILL) after
    // exceeding memory_max (cgroup oom_kill)".
    std::string text() const;
};

struct ChildUsage {
    std::chrono::nanoseconds cpu{0};  // user + system, of the child and the children it waited for
    uint64_t max_rss_bytes = 0;       // peak resident set (ru_maxrss)
};

class ChildProcess {
public:
    // Starts the child; waits until it has exec'd or failed (a CLOEXEC pipe tells which). On failure: nullptr
    // and *err, e.g. "cannot start /x/tickhost-worker: No such file or directory (exec)". Never throws.
    static std::unique_ptr<ChildProcess> spawn(const ChildSpec& spec, std::string* err);

    // Kills (kill()) and reaps the child if it was not reaped yet, removes its cgroup, closes the pidfd.
    // Blocks until the child is gone (a SIGKILLed process ends promptly unless stuck in the kernel).
    ~ChildProcess();
    ChildProcess(const ChildProcess&) = delete;
    ChildProcess& operator=(const ChildProcess&) = delete;

    pid_t pid() const { return pid_; }
    // Readable (poll/epoll) once the child has exited; owned by this object (do not close). -1 on kernels
    // before 5.3 (no pidfd_open): poll try_wait() instead.
    int pidfd() const { return pidfd_; }

    // SIGKILL to the child's process group, the child, and with a cgroup everything in it (cgroup.kill, or
    // each pid in cgroup.procs before 5.14). Does nothing once reaped (its pid may belong to another process).
    void kill();
    // Collects the exit if the child has ended, without blocking. Once it has, also kills what is left in its
    // process group and cgroup (the child's own children die with it), reaps the child, reads its usage and
    // memory.events, and removes the cgroup. Returns the same exit on every later call.
    std::optional<ChildExit> try_wait();
    // As try_wait(), blocking until the child ends.
    ChildExit wait();
    // True once try_wait() or wait() has collected the exit.
    bool exited() const;
    // CPU time and peak RSS of the child; zeros until exited().
    ChildUsage usage() const;

    // How limits are enforced, e.g. "cgroup v2 /sys/fs/cgroup/x/heartbeat.1", "rlimits (RLIMIT_DATA,
    // RLIMIT_NOFILE) and a seccomp filter against fork", "none (no limits asked)"; on the fallback followed by
    // why cgroup v2 is not used ("; cgroup v2 not used: ...").
    const std::string& limits_mechanism() const { return mechanism_; }
    // Each limit asked for that is not enforced, with why: "processes_max = 5: not enforceable as root
    // without a delegated cgroup v2 (...)". The child runs anyway; the caller decides whether that is fine.
    const std::vector<std::string>& unenforced() const { return unenforced_; }

private:
    ChildProcess() = default;
    std::optional<ChildExit> collect_locked();
    void kill_locked();

    pid_t pid_ = -1;
    int pidfd_ = -1;
    std::string cgroup_;  // the child's cgroup directory, empty without one
    std::string mechanism_;
    std::vector<std::string> unenforced_;
    mutable std::mutex mu_;
    std::optional<ChildExit> exit_;  // set once reaped
    ChildUsage usage_;
};

// "nobody" or "65534" -> its uid and primary gid (getpwnam_r). A number without a passwd entry is accepted
// as is, its primary group taken to be the same number. False + *err ("no user 'nobdy' in the passwd
// database") otherwise. Thread-safe.
bool resolve_user(const std::string& name_or_id, uid_t* uid, gid_t* primary_gid, std::string* err);
// "nogroup" or "65534" -> its gid (getgrnam_r); a number is accepted as is. Thread-safe.
bool resolve_group(const std::string& name_or_id, gid_t* gid, std::string* err);

// The name of a signal for messages: "SIGSEGV", "SIGRTMIN+3", "signal 99".
std::string signal_name(int sig);

// Closes every descriptor >= `first` except `keep` (-1: none), for a forked child before exec:
// async-signal-safe (no allocation). close_range(2) unless `use_close_range` is false or the kernel lacks it
// (before 5.9); then each descriptor listed in /proc/self/fd (getdents64 on a stack buffer); without /proc
// each one below RLIMIT_NOFILE. Exposed for the tests of the fallback.
void close_descriptors_from(int first, int keep, bool use_close_range);

// cgroup v2 discovery, pure functions on the text of /proc/self/cgroup and /proc/self/mountinfo (tests).
// The process's cgroup v2 path ("/system.slice/x.service"), from the "0::" line; nullopt without one.
std::optional<std::string> cgroup_v2_path_of(const std::string& proc_self_cgroup);
// The first cgroup2 mount point in mountinfo text; nullopt without one.
std::optional<std::string> cgroup2_mount_of(const std::string& mountinfo);
// Whether the cgroup limits can be used here, and the cgroup children go under ("/sys/fs/cgroup/x"), or why
// not ("the host is in the root cgroup of /sys/fs/cgroup/unified (0::/), which is not delegated to it"). The
// first call also sets it up (see ChildLimits: may move the host into <own>/host and enable +memory +pids);
// spawn() makes it at the first child with memory_max or processes_max. Once per process; thread-safe.
bool cgroup_v2_usable(std::string* dir_or_reason);

}  // namespace tickhost::detail
