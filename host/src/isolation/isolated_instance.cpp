#include "isolation/isolated_instance.hpp"

#include <tickhost/logging.hpp>

#include "host_api.hpp"
#include "isolation/channel.hpp"
#include "isolation/wire.hpp"
#include "time_format.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace tickhost::detail {

namespace {

constexpr uint32_t kMaxLanes = 256;      // calls of one plugin in flight at once (64 bytes of shared memory each)
constexpr uint32_t kLogBurst = 1000;     // log lines a child may send at once ...
constexpr uint32_t kLogPerSecond = 1000;  // ... and per second after that; the rest are dropped and counted
constexpr Duration kStartGrace = std::chrono::seconds(10);  // exec, the dynamic linker, a sanitizer's start
constexpr Duration kCallGrace = std::chrono::seconds(2);    // init past its bound before the child is killed
// A call that ignores its cancellation is ended by killing its process a little before the scheduler would
// abandon it (abandon_after past its deadline): the call then returns, and no worker of the host is lost.
constexpr Duration kKillAhead = std::chrono::milliseconds(50);
constexpr Duration kExitBound = std::chrono::seconds(2);  // for a child told Bye to be gone, then it is killed

// Placeholders for the function pointers of the host's copy of an isolated descriptor: never called.
th_status placeholder_run(void*, th_ctx, int32_t) { return TH_ERROR; }
th_status placeholder_init(th_ctx, void**) { return TH_ERROR; }
void placeholder_shutdown(void*) {}

int64_t steady_ns(TimePoint t) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

std::string mib(uint64_t bytes) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f MiB", double(bytes) / (1024.0 * 1024.0));
    return buf;
}

}  // namespace

// One lane: a socket pair whose other end a thread of the child serves, and its cancel word.
struct Lane {
    int sock = -1;
    uint32_t index = 0;
    std::atomic<uint64_t>* cancel = nullptr;  // in the shared memory
    uint32_t seq = 0;                         // of its last call
    std::atomic<uint64_t> pending{0};         // the call the relay cancels
    std::atomic<int64_t> task{-1};            // the task whose call is in flight, -1: none
    CancelRelay relay{};
    ~Lane() {
        if (sock >= 0) ::close(sock);
    }
    static void notify(void* arg) {
        auto* l = static_cast<Lane*>(arg);
        l->cancel->store(l->pending.load(std::memory_order_relaxed), std::memory_order_release);
    }
};

// What the host, the runtime's thread and the task functions share about one child.
struct IsolatedLink {
    std::shared_ptr<spdlog::logger> log;
    uint64_t id = 0;  // the runtime's key for it (never reused, unlike its address)
    std::unique_ptr<ChildProcess> child;
    int control = -1;
    uint8_t* shared = nullptr;
    size_t shared_size = 0;

    std::mutex mu;
    std::condition_variable cv;
    std::deque<wire::Frame<wire::WorkerMessage>> replies;
    bool dead = false;
    std::string death;        // how it ended: "was killed by signal 11 (SIGSEGV)"
    std::string kill_reason;  // why the host killed it, if it did
    bool expected = false;    // the host ended it: not a crash
    bool released = false;    // the runtime is done with it: reaped, its end reported (or not, if expected)
    int exchanges = 0;        // open/init/shutdown in progress: they report the child's end themselves
    std::function<void(const std::string&)> on_exit;
    std::vector<std::string> task_names;  // after init, for messages

    std::mutex lanes_mu;
    std::vector<std::unique_ptr<Lane>> lanes;
    std::vector<Lane*> free_lanes;

    // Log lines: a token bucket (touched by the runtime's thread and the task functions), and the plugin's
    // name and logger (its file's stem until the child says its name).
    std::mutex log_mu;
    std::string plugin;
    std::shared_ptr<spdlog::logger> plugin_log;
    double tokens = kLogBurst;
    std::chrono::steady_clock::time_point refilled = std::chrono::steady_clock::now();
    uint64_t dropped = 0;

    ~IsolatedLink() {
        if (control >= 0) ::close(control);
        if (shared) ::munmap(shared, shared_size);
    }

    pid_t pid() const { return child ? child->pid() : 0; }

    std::string name() {
        std::lock_guard<std::mutex> lk(log_mu);
        return plugin;
    }
    std::shared_ptr<spdlog::logger> logger() {
        std::lock_guard<std::mutex> lk(log_mu);
        return plugin_log;
    }
    void set_name(const std::string& n) {
        auto lg = get_logger("plugin." + n);
        std::lock_guard<std::mutex> lk(log_mu);
        plugin = n;
        plugin_log = std::move(lg);
    }

    // Kills the child, recording why (the first reason given is kept).
    void kill(const std::string& why) {
        {
            std::lock_guard<std::mutex> lk(mu);
            if (dead) return;
            if (kill_reason.empty()) kill_reason = why;
        }
        if (child) child->kill();
    }

    // Ends the child because of a protocol violation: named, killed, never trusted again.
    void violation(const std::string& what) { kill("sent an invalid message (" + what + ")"); }

    // A log line from the child: escaped, rate-limited, logged under the plugin's logger.
    void log_line(const wire::Log& m) {
        if (m.level < 0 || m.level > 6) return violation("log level " + std::to_string(m.level));
        const auto level = spdlog::level::level_enum(m.level);
        uint64_t was_dropped = 0;
        std::shared_ptr<spdlog::logger> lg;
        std::string name;
        {
            std::lock_guard<std::mutex> lk(log_mu);
            if (!plugin_log->should_log(level)) return;
            lg = plugin_log;
            name = plugin;
            const auto now = std::chrono::steady_clock::now();
            tokens = std::min<double>(kLogBurst, tokens + std::chrono::duration<double>(now - refilled).count() *
                                                              kLogPerSecond);
            refilled = now;
            if (tokens < 1) {
                ++dropped;
                return;
            }
            tokens -= 1;
            was_dropped = dropped;
            dropped = 0;
        }
        if (was_dropped)
            log->warn("plugin '{}': {} log line(s) of its process dropped (more than {} per second)", name, was_dropped,
                      kLogPerSecond);
        // Escaped again (the child is untrusted), with a cap above what the child may send: text the worker
        // escaped already comes out unchanged, as long as in the host's own process.
        lg->log(level, "{}", escape_plugin_text(m.text, wire::kMaxReportText));
    }

    // The tasks whose calls were in flight, for a crash message: " while running task 'a'".
    std::string running() {
        std::lock_guard<std::mutex> lk(lanes_mu);
        std::string names;
        size_t n = 0;
        for (auto& l : lanes) {
            const int64_t t = l->task.load();
            if (t < 0) continue;
            if (++n > 3) continue;
            const std::string name = size_t(t) < task_names.size() ? task_names[size_t(t)] : std::to_string(t);
            names += (names.empty() ? "'" : ", '") + name + "'";
        }
        if (!n) return "";
        return " while running task" + std::string(n > 1 ? "s " : " ") + names + (n > 3 ? " and more" : "");
    }

    // Waits for the next reply on the control channel until `until`. Nullopt: none came (*why says: the
    // child died, or time ran out).
    std::optional<wire::Frame<wire::WorkerMessage>> next_reply(std::chrono::steady_clock::time_point until,
                                                               std::string* why) {
        std::unique_lock<std::mutex> lk(mu);
        cv.wait_until(lk, until, [&] { return !replies.empty() || dead; });
        if (!replies.empty()) {
            auto f = std::move(replies.front());
            replies.pop_front();
            return f;
        }
        *why = dead ? "its process " + std::to_string(pid()) + " " + death : "timeout";
        return std::nullopt;
    }

    bool send(const wire::HostMessage& m, int fd = -1, uint32_t seq = 0) {
        std::vector<uint8_t> msg;
        std::string err;
        if (!wire::encode(m, seq, &msg, &err)) {
            log->error("plugin '{}': cannot encode a message for its process: {}", name(), err);
            return false;
        }
        return channel::send(control, msg, fd, &err);
    }

    // A free lane, or a new one (told to the child on the control channel). Null + *err when none can be had.
    Lane* acquire(std::string* err) {
        std::lock_guard<std::mutex> lk(lanes_mu);
        if (!free_lanes.empty()) {
            Lane* l = free_lanes.back();
            free_lanes.pop_back();
            return l;
        }
        return add_lane_locked(err);
    }
    // At least `n` lanes (at most kMaxLanes), made now rather than at the first calls: the calls that can be
    // in flight at once. False + *err if one could not be made.
    bool reserve_lanes(size_t n, std::string* err) {
        std::lock_guard<std::mutex> lk(lanes_mu);
        while (lanes.size() < std::min<size_t>(n, kMaxLanes)) {
            Lane* l = add_lane_locked(err);
            if (!l) return false;
            free_lanes.push_back(l);
        }
        return true;
    }
    Lane* add_lane_locked(std::string* err) {
        if (lanes.size() >= kMaxLanes) {
            *err = "more than " + std::to_string(kMaxLanes) + " calls of this plugin in flight at once";
            return nullptr;
        }
        int fds[2];
        if (!channel::socket_pair(fds, err)) return nullptr;
        auto l = std::make_unique<Lane>();
        l->sock = fds[0];
        l->index = uint32_t(lanes.size());
        l->cancel = reinterpret_cast<std::atomic<uint64_t>*>(shared + size_t(l->index) * 64);
        l->relay = CancelRelay{&Lane::notify, l.get()};
        const bool sent = send(wire::AddLane{l->index}, fds[1]);
        ::close(fds[1]);
        if (!sent) {
            *err = "its process is gone";
            return nullptr;
        }
        lanes.push_back(std::move(l));
        return lanes.back().get();
    }
    void release(Lane* l) {
        std::lock_guard<std::mutex> lk(lanes_mu);
        free_lanes.push_back(l);
    }

    // Waits until the runtime is done with the child (reaped, its end reported). False if `bound` ran out.
    bool wait_released(Duration bound) {
        std::unique_lock<std::mutex> lk(mu);
        return cv.wait_for(lk, bound, [&] { return released; });
    }
    void set_released() {
        std::lock_guard<std::mutex> lk(mu);
        dead = true;
        released = true;
        cv.notify_all();
    }
};

namespace {

// While the host is in an exchange with the child (open, init, shutdown), that exchange reports the child's
// end in its own error; the runtime only notes it.
class Exchange {
public:
    explicit Exchange(IsolatedLink& l) : l_(l) {
        std::lock_guard<std::mutex> lk(l_.mu);
        ++l_.exchanges;
    }
    ~Exchange() {
        std::lock_guard<std::mutex> lk(l_.mu);
        --l_.exchanges;
    }
    Exchange(const Exchange&) = delete;
    Exchange& operator=(const Exchange&) = delete;

private:
    IsolatedLink& l_;
};

}  // namespace

// ---- the runtime: one thread for every child's control channel and exit ------------------------------

struct IsolationRuntime::Impl {
    std::shared_ptr<spdlog::logger> log;
    int ep = -1, wake = -1;
    std::thread thread;
    std::mutex mu;
    // By id, not address: an event of a child that just ended must not reach one started since at its address.
    std::map<uint64_t, std::shared_ptr<IsolatedLink>> links;
    uint64_t next_id = 1;
    std::atomic<bool> stopping{false};

    void loop();
    void readable(IsolatedLink& l, bool exited);
    void ended(const std::shared_ptr<IsolatedLink>& l);
};

IsolationRuntime::IsolationRuntime(std::shared_ptr<spdlog::logger> log) : impl_(std::make_unique<Impl>()), log_(log) {
    impl_->log = std::move(log);
}

IsolationRuntime::~IsolationRuntime() {
    if (impl_->thread.joinable()) {
        impl_->stopping = true;
        const uint64_t one = 1;
        (void)!::write(impl_->wake, &one, sizeof one);
        impl_->thread.join();
    }
    // Children left (their instances are gone with the manager): killed and reaped here.
    for (auto& [p, l] : impl_->links) {
        {
            std::lock_guard<std::mutex> lk(l->mu);
            l->expected = true;
        }
        if (l->child) {
            l->child->kill();
            l->child->wait();
        }
        l->set_released();
    }
    if (impl_->ep >= 0) ::close(impl_->ep);
    if (impl_->wake >= 0) ::close(impl_->wake);
}

bool IsolationRuntime::add(const std::shared_ptr<IsolatedLink>& link, std::string* err) {
    std::lock_guard<std::mutex> lk(impl_->mu);
    if (impl_->ep < 0) {
        impl_->ep = ::epoll_create1(EPOLL_CLOEXEC);
        impl_->wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (impl_->ep < 0 || impl_->wake < 0) {
            *err = std::string("epoll/eventfd: ") + std::strerror(errno);
            return false;
        }
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.ptr = nullptr;
        ::epoll_ctl(impl_->ep, EPOLL_CTL_ADD, impl_->wake, &ev);
        try {
            impl_->thread = std::thread([impl = impl_.get()] { impl->loop(); });
        } catch (const std::exception& e) {
            *err = std::string("cannot start the isolation thread: ") + e.what();
            return false;
        }
    }
    link->id = impl_->next_id++;
    impl_->links[link->id] = link;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.u64 = link->id << 1;
    if (::epoll_ctl(impl_->ep, EPOLL_CTL_ADD, link->control, &ev) != 0) {
        impl_->links.erase(link->id);
        link->id = 0;
        *err = std::string("epoll_ctl: ") + std::strerror(errno);
        return false;
    }
    // Its exit too: a process the plugin forked may hold the channel open after the child died.
    if (link->child && link->child->pidfd() >= 0) {
        ev.events = EPOLLIN;
        ev.data.u64 = link->id << 1 | 1;
        ::epoll_ctl(impl_->ep, EPOLL_CTL_ADD, link->child->pidfd(), &ev);
    }
    return true;
}

void IsolationRuntime::Impl::loop() {
    epoll_event evs[16];
    while (!stopping) {
        const int n = ::epoll_wait(ep, evs, 16, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            log->error("isolation: epoll_wait: {}", std::strerror(errno));
            return;
        }
        for (int i = 0; i < n; ++i) {
            const uint64_t tag = evs[i].data.u64;
            if (!tag) continue;  // the wake-up
            const bool exited = tag & 1;
            std::shared_ptr<IsolatedLink> l;
            {
                std::lock_guard<std::mutex> lk(mu);
                auto it = links.find(tag >> 1);
                if (it == links.end()) continue;
                l = it->second;
            }
            readable(*l, exited);
            bool gone;
            {
                std::lock_guard<std::mutex> lk(l->mu);
                gone = l->dead;
            }
            if (gone) ended(l);
        }
    }
}

// Reads every message waiting on a child's control channel; notices its end.
void IsolationRuntime::Impl::readable(IsolatedLink& l, bool exited) {
    std::vector<uint8_t> buf;
    for (int budget = 256; budget > 0; --budget) {
        std::string err;
        // After its exit, what it sent before is still read (its last log lines), then the end.
        const auto r = channel::receive(l.control, &buf, nullptr, true, &err);
        if (r == channel::Recv::would_block && exited) {
            l.child->kill();  // what it forked, holding the channel open, goes with it
        } else if (r == channel::Recv::would_block) {
            return;
        } else if (r == channel::Recv::message) {
            auto f = wire::decode_worker(buf.data(), buf.size(), &err);
            if (!f) {
                l.violation(err);
                continue;  // the end follows
            }
            if (auto* m = std::get_if<wire::Log>(&f->msg)) {
                l.log_line(*m);
                continue;
            }
            if (std::get_if<wire::Result>(&f->msg)) {
                l.violation("a Result on the control channel");
                continue;
            }
            bool flood;
            {
                std::lock_guard<std::mutex> lk(l.mu);
                flood = l.replies.size() >= 1024;
                if (!flood) l.replies.push_back(std::move(*f));
                l.cv.notify_all();
            }
            if (flood) l.violation("more replies than were asked for");
            continue;
        }
        if (r == channel::Recv::error) l.violation(err);
        // Closed, broken, or exited: the child is gone or going. Make sure, and collect how it ended.
        if (l.child) {
            if (!l.child->try_wait()) {
                // It closed the channel but lives on, or is exiting (its descriptors close before it is a
                // zombie): a short grace, then SIGKILL. Woken by its exit itself, not by a clock.
                const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
                while (!l.child->try_wait()) {
                    const auto left =
                        std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
                    if (left.count() <= 0) break;
                    if (l.child->pidfd() >= 0) {
                        pollfd p{l.child->pidfd(), POLLIN, 0};
                        ::poll(&p, 1, int(left.count()) + 1);
                    } else {
                        std::this_thread::sleep_for(std::chrono::milliseconds(1));
                    }
                }
                if (!l.child->exited()) l.child->kill();
            }
            const ChildExit ex = l.child->wait();
            std::lock_guard<std::mutex> lk(l.mu);
            l.death = ex.text();
        } else {
            std::lock_guard<std::mutex> lk(l.mu);
            l.death = "closed its channel";
        }
        std::lock_guard<std::mutex> lk(l.mu);
        l.dead = true;
        l.cv.notify_all();
        return;
    }
}

void IsolationRuntime::Impl::ended(const std::shared_ptr<IsolatedLink>& l) {
    ::epoll_ctl(ep, EPOLL_CTL_DEL, l->control, nullptr);
    if (l->child && l->child->pidfd() >= 0) ::epoll_ctl(ep, EPOLL_CTL_DEL, l->child->pidfd(), nullptr);
    {
        std::lock_guard<std::mutex> lk(mu);
        links.erase(l->id);
    }
    const ChildUsage u = l->child ? l->child->usage() : ChildUsage{};
    const std::string usage = "cpu " + format_elapsed(u.cpu) + ", peak RSS " + mib(u.max_rss_bytes);
    std::function<void(const std::string&)> handler;
    std::string why;
    bool expected, reported;
    {
        std::lock_guard<std::mutex> lk(l->mu);
        why = "its process " + std::to_string(l->pid()) + " " + l->death +
              (l->kill_reason.empty() ? "" : ", killed by the host because it " + l->kill_reason);
        expected = l->expected;
        reported = l->exchanges > 0;
        if (!expected) handler = l->on_exit;
    }
    const std::string running = l->running();
    why += running;
    if (handler) {
        handler(why + " (" + usage + ")");
    } else if (expected || reported || !running.empty()) {
        // The host ended it (and said why where it matters), or the exchange or the call that was in
        // progress reports its end in its own error. Its CPU time and peak RSS are said here, at unload.
        log->info("plugin '{}': {} ({})", l->name(), why, usage);
    } else {
        log->error("plugin '{}': {} ({})", l->name(), why, usage);
    }
    l->set_released();
}

// ---- the instance -------------------------------------------------------------------------------------

fs::path find_worker(std::string* err) {
    if (const char* env = std::getenv("TICKHOST_WORKER"); env && *env) return env;
    std::error_code ec;
    const fs::path self = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) {
        const fs::path beside = self.parent_path() / "tickhost-worker";
        if (::access(beside.c_str(), X_OK) == 0) return beside;
    }
#ifdef TICKHOST_WORKER_INSTALLED
    if (::access(TICKHOST_WORKER_INSTALLED, X_OK) == 0) return TICKHOST_WORKER_INSTALLED;
#endif
    *err = "tickhost-worker was not found beside " + (ec ? std::string("the running program") : self.string()) +
#ifdef TICKHOST_WORKER_INSTALLED
           " nor at " TICKHOST_WORKER_INSTALLED +
#endif
           std::string(" (set TICKHOST_WORKER to its path)");
    return {};
}

std::shared_ptr<IsolatedInstance> IsolatedInstance::open(IsolationRuntime& rt, const fs::path& file,
                                                         StagedFile& staged, const IsolatedOptions& o, LoadError* err) {
    auto fail = [&](th_status code, std::string reason, std::string hint) -> std::shared_ptr<IsolatedInstance> {
        *err = LoadError{code, status_name(code), std::move(reason), std::move(hint)};
        return nullptr;
    };
    std::shared_ptr<IsolatedInstance> inst(new IsolatedInstance);
    inst->source_ = file;
    inst->shadow_ = staged.copy;
    inst->sha256_ = staged.sha256;
    inst->go_runtime_ = staged.go_runtime;  // the host's own scan, not the child's word
    inst->abandon_after_ = o.abandon_after;
    inst->workers_ = o.workers;
    staged.copy.clear();  // the instance removes the copy

    auto link = std::make_shared<IsolatedLink>();
    const std::string stem = file.stem().string();
    link->set_name(stem);
    link->log = rt.log();
    inst->link_ = link;
    Exchange exchange(*link);  // a refusal below says how the child ended

    ChildSpec spec;
    spec.exe = o.worker;
    spec.name = stem;
    spec.limits = o.limits;
    std::string e;
    if (!o.user.empty()) {
        uid_t uid;
        gid_t gid;
        if (!resolve_user(o.user, &uid, &gid, &e))
            return fail(TH_E_NOT_ALLOWED, "[plugins." + stem + "] user: " + e, "name a user that exists");
        spec.uid = uid;
        spec.gid = gid;
    }
    if (!o.group.empty()) {
        gid_t gid;
        if (!resolve_group(o.group, &gid, &e))
            return fail(TH_E_NOT_ALLOWED, "[plugins." + stem + "] group: " + e, "name a group that exists");
        spec.gid = gid;
    }
    // The lanes' cancel words: written here, read-only in the child.
    const int shm = ::memfd_create("tickhost-lanes", MFD_CLOEXEC);
    link->shared_size = size_t(kMaxLanes) * 64;
    if (shm < 0 || ::ftruncate(shm, off_t(link->shared_size)) != 0) {
        if (shm >= 0) ::close(shm);
        return fail(TH_E_NOT_A_LIBRARY, std::string("cannot create shared memory: ") + std::strerror(errno),
                    "check the host's memory and descriptor limits");
    }
    void* mem = ::mmap(nullptr, link->shared_size, PROT_READ | PROT_WRITE, MAP_SHARED, shm, 0);
    if (mem == MAP_FAILED) {
        ::close(shm);
        return fail(TH_E_NOT_A_LIBRARY, std::string("cannot map shared memory: ") + std::strerror(errno),
                    "check the host's memory limits");
    }
    link->shared = static_cast<uint8_t*>(mem);
    const int plugin_fd = ::open(inst->shadow_.c_str(), O_RDONLY | O_CLOEXEC);
    int ctl[2] = {-1, -1};
    if (plugin_fd < 0 || !channel::socket_pair(ctl, &e)) {
        const std::string why = plugin_fd < 0 ? std::string("cannot open the checked copy: ") + std::strerror(errno) : e;
        ::close(shm);
        if (plugin_fd >= 0) ::close(plugin_fd);
        return fail(TH_E_NOT_A_LIBRARY, why, "check the host's descriptor limits");
    }
    link->control = ctl[0];
    spec.fds = {ctl[1], shm, plugin_fd};
    link->child = ChildProcess::spawn(spec, &e);
    ::close(ctl[1]);
    ::close(shm);
    ::close(plugin_fd);
    if (!link->child)
        return fail(TH_E_NOT_A_LIBRARY, "cannot start its process: " + e,
                    "check that tickhost-worker is installed beside tickhost and the limits in [plugins." + stem + "]");
    if (o.limits.memory_max || o.limits.open_files_max || o.limits.processes_max)
        link->log->info("plugin '{}': limits enforced by {}", stem, link->child->limits_mechanism());
    for (auto& u : link->child->unenforced())
        link->log->warn("plugin '{}': {} (limit not enforced; see docs/security.md)", stem, u);
    if (!rt.add(link, &e)) {  // (link->id stays 0: nothing waits for the runtime to reap it)
        link->expected = true;
        link->child->kill();
        link->child->wait();
        return fail(TH_E_NOT_A_LIBRARY, e, "check the host's descriptor and thread limits");
    }

    // Hello, Load; then Ready, and Loaded + its tasks (or LoadFailed).
    wire::Hello hello;
    hello.log_level = int32_t(link->logger()->level());
    hello.max_tasks = o.max_tasks;
    hello.max_lanes = kMaxLanes;
    link->send(hello);
    link->send(wire::Load{std::chrono::duration_cast<std::chrono::nanoseconds>(o.entry_bound).count(), o.max_tasks,
                          file.filename().string()});
    const auto until = std::chrono::steady_clock::now() + o.entry_bound + kStartGrace;
    auto refuse = [&](th_status code, std::string reason, std::string hint) {
        inst->abandon();
        return fail(code, std::move(reason), std::move(hint));
    };
    auto expect = [&](std::string* why) { return link->next_reply(until, why); };
    std::string why;
    auto ready = expect(&why);
    if (ready) {
        const auto* r = std::get_if<wire::Ready>(&ready->msg);
        if (r && r->protocol_version != wire::kProtocolVersion) {
            link->violation("protocol version " + std::to_string(r->protocol_version));
            return refuse(TH_E_NOT_A_LIBRARY,
                          "its process speaks protocol version " + std::to_string(r->protocol_version) + ", not " +
                              std::to_string(wire::kProtocolVersion),
                          "install tickhost-worker from the same build as tickhost");
        }
    }
    if (!ready || !std::get_if<wire::Ready>(&ready->msg)) {
        if (ready) {
            if (auto* f = std::get_if<wire::Fatal>(&ready->msg))
                return refuse(TH_E_NOT_A_LIBRARY, "its process failed: " + escape_plugin_text(f->text),
                              "check that tickhost-worker comes from the same build as tickhost");
            link->violation("the first message was not Ready");
        }
        return refuse(TH_E_NOT_A_LIBRARY, "its process did not start: " + why,
                      "check that tickhost-worker comes from the same build as tickhost");
    }
    auto loaded = expect(&why);
    if (!loaded) {
        if (why == "timeout") {
            link->kill("did not finish loading the plugin in time");
            return refuse(
                TH_E_ENTRY_TIMEOUT,
                "its entry point (or a static constructor) did not return within " + format_duration(o.entry_bound) +
                    "; its process was killed",
                "fix the plugin's static constructors and entry point, or raise [plugins." + stem + "] timeout");
        }
        std::string death;
        {
            std::lock_guard<std::mutex> lk(link->mu);
            death = link->death;
        }
        // In the host's own process this would have ended the host ("killed the process that checked it").
        return refuse(TH_E_NOT_A_LIBRARY,
                      std::string("loading it ") + (death.rfind("killed", 0) == 0 ? "killed" : "ended") +
                          " its process " + std::to_string(link->pid()) + " (" + death + "); the host runs on",
                      "the plugin crashes in its static constructors or entry point; check it with `tickhost check`");
    }
    if (auto* f = std::get_if<wire::LoadFailed>(&loaded->msg)) {
        const th_status code = f->code < 0 && f->code >= -200 ? th_status(f->code) : TH_E_NOT_A_LIBRARY;
        if (code == TH_E_ENTRY_TIMEOUT)  // the host's words: the code left running goes with its process
            return refuse(code,
                          std::string(TH_ENTRY_SYMBOL) + " did not return within " + format_duration(o.entry_bound) +
                              "; the plugin is refused and its process was killed",
                          escape_plugin_text(f->hint));
        return refuse(code, escape_plugin_text(f->reason), escape_plugin_text(f->hint));
    }
    auto* l = std::get_if<wire::Loaded>(&loaded->msg);
    if (!l) {
        link->violation("expected Loaded");
        return refuse(TH_E_NOT_A_LIBRARY, "its process answered out of protocol; it was killed", "");
    }
    if (l->static_task_count > o.max_tasks)
        return refuse(TH_E_TOO_MANY_TASKS,
                      "it declares " + std::to_string(l->static_task_count) +
                          " static tasks; [host] max_tasks_per_plugin is " + std::to_string(o.max_tasks),
                      "declare fewer tasks, or raise [host] max_tasks_per_plugin in host.toml");
    inst->name_ = l->name;
    inst->version_ = l->version;
    inst->description_ = l->description;
    while (inst->static_tasks_.size() < l->static_task_count) {
        auto t = expect(&why);
        auto* ts = t ? std::get_if<wire::Tasks>(&t->msg) : nullptr;
        if (!ts || ts->first_index != inst->static_tasks_.size() ||
            ts->entries.size() > l->static_task_count - inst->static_tasks_.size()) {
            if (t) link->violation("expected the static tasks in order");
            return refuse(TH_E_NOT_A_LIBRARY, "its process did not report its tasks: " + (t ? "out of protocol" : why),
                          "");
        }
        for (auto& te : ts->entries) {
            inst->names_.push_back(std::make_unique<std::string>(te.name));
            th_task_def d{};
            d.struct_size = sizeof(th_task_def);
            d.name = inst->names_.back()->c_str();
            d.default_interval_ns = te.interval_ns;
            d.default_timeout_ns = te.timeout_ns;
            d.run = placeholder_run;
            inst->static_tasks_.push_back(d);
        }
    }
    // The child's word, checked again here as if the host had read the descriptor itself.
    th_plugin_def& d = inst->def_;
    d.struct_size = sizeof(th_plugin_def);
    d.abi_major = l->abi_major;
    d.abi_minor = l->abi_minor;
    d.name = inst->name_.c_str();
    d.version = inst->version_.c_str();
    d.description = inst->description_.c_str();
    d.init = l->has_init ? placeholder_init : nullptr;
    d.shutdown = l->has_shutdown ? placeholder_shutdown : nullptr;
    d.tasks = inst->static_tasks_.data();
    d.task_count = uint32_t(inst->static_tasks_.size());
    LoadFailure lf;
    if (!validate_descriptor(&d, &lf, o.max_tasks)) return refuse(lf.code, lf.reason, lf.hint);
    link->set_name(inst->name_);
    return inst;
}

IsolatedInstance::~IsolatedInstance() {
    if (link_) {
        {
            std::lock_guard<std::mutex> lk(link_->mu);
            link_->expected = true;
            link_->on_exit = nullptr;
        }
        // A child the runtime never took (open failed before) was reaped there, or is by ~ChildProcess.
        if (link_->id != 0) {
            if (!link_->send(wire::Bye{})) link_->kill("did not take Bye");
            // Gone when this returns, as an in-process version is unmapped when it is unloaded: its process
            // has exited and the runtime has reaped it (bounded: one that lingers is killed).
            if (!link_->wait_released(kExitBound)) {
                link_->kill("did not exit when told to");
                link_->wait_released(kExitBound);
            }
            // And the runtime's reference is dropped, so that the channel and lanes close with this instance
            // (unless a call of an abandoned task still holds them; it returns now that the child is gone).
            for (int i = 0; i < 2000 && link_.use_count() > 1; ++i)
                std::this_thread::sleep_for(std::chrono::microseconds(50));
        }
    }
    if (!shadow_.empty()) {
        std::error_code ec;
        fs::remove(shadow_, ec);
    }
}

int IsolatedInstance::pid() const { return link_->pid(); }

bool IsolatedInstance::killed_by_host() const {
    std::lock_guard<std::mutex> lk(link_->mu);
    return !link_->kill_reason.empty();
}

bool IsolatedInstance::alive() const {
    std::lock_guard<std::mutex> lk(link_->mu);
    return !link_->dead && link_->kill_reason.empty();
}

void IsolatedInstance::set_exit_handler(std::function<void(const std::string&)> fn) {
    std::string why;
    {
        std::lock_guard<std::mutex> lk(link_->mu);
        if (!link_->dead) {
            link_->on_exit = std::move(fn);
            return;
        }
        why = "its process " + std::to_string(link_->pid()) + " " + link_->death;
    }
    fn(why);  // it died before the handler was set
}

std::optional<LoadError> IsolatedInstance::init(const PluginValues& config, Duration bound, size_t cap,
                                                TaskList* out) {
    auto err = [&](th_status code, std::string reason, std::string hint) {
        return LoadError{code, status_name(code), std::move(reason), std::move(hint)};
    };
    Exchange exchange(*link_);
    std::vector<wire::ConfigEntry> entries;
    for (auto& [k, v] : config.all()) {
        wire::ConfigEntry e;
        e.key = k;
        std::visit([&](auto& x) { e.value = x; }, v);
        entries.push_back(std::move(e));
    }
    std::vector<std::vector<uint8_t>> msgs;
    std::string e;
    if (!wire::encode_config(entries, 0, &msgs, &e))
        return err(TH_E_INIT_FAILED, "its [plugins." + name_ + ".config] cannot be sent to its process: " + e,
                   "shorten the value (at most 60000 bytes each for an isolated plugin)");
    for (auto& m : msgs)
        if (!channel::send(link_->control, m, -1, &e)) break;
    const auto deadline = std::chrono::steady_clock::now() + bound;
    link_->send(wire::Init{std::chrono::duration_cast<std::chrono::nanoseconds>(bound).count(),
                           std::chrono::duration_cast<std::chrono::nanoseconds>(deadline.time_since_epoch()).count(),
                           uint32_t(cap), name_});
    // The child bounds init itself (the plugin sees that deadline) and answers by then; the grace is for a
    // child that cannot answer at all.
    const auto until = deadline + kCallGrace;
    std::string why;
    auto reply = link_->next_reply(until, &why);
    const auto timed_out = [&] {
        // The init that did not return is still running in the child: it goes with its process.
        link_->kill("did not return from init within " + format_duration(bound));
        return err(TH_E_INIT_FAILED,
                   "init did not return within " + format_duration(bound) + "; its process was killed",
                   "fix the plugin's init (it must return; long work belongs in a task), or raise [plugins." + name_ +
                       "] timeout in host.toml");
    };
    if (!reply) {
        if (why == "timeout") return timed_out();
        return err(TH_E_INIT_FAILED, "its process died during init: " + why,
                   "the plugin crashes in its init; try it with `tickhost run-once`");
    }
    auto* done = std::get_if<wire::InitDone>(&reply->msg);
    if (!done) {
        link_->violation("expected InitDone");
        return err(TH_E_INIT_FAILED, "its process answered init out of protocol; it was killed", "");
    }
    if (done->status != TH_OK) {
        // A failure that comes at the bound is the child's own bound running out: init did not return.
        if (done->status == TH_E_INIT_FAILED && std::chrono::steady_clock::now() >= deadline) return timed_out();
        const th_status code = done->status < 0 && done->status >= -200 ? th_status(done->status) : TH_E_INIT_FAILED;
        return err(code, escape_plugin_text(done->error, wire::kMaxReportText),
                   escape_plugin_text(done->thrown, wire::kMaxReportText));
    }
    const size_t statics = static_tasks_.size();
    if (done->task_count < statics || done->task_count > cap) {
        link_->violation("InitDone task count " + std::to_string(done->task_count));
        return err(TH_E_TOO_MANY_TASKS, "its process reported " + std::to_string(done->task_count) + " tasks",
                   "declare fewer tasks, or raise [host] max_tasks_per_plugin in host.toml");
    }
    TaskList list;
    list.tasks = static_tasks_;
    while (list.tasks.size() < done->task_count) {
        auto t = link_->next_reply(until, &why);
        auto* ts = t ? std::get_if<wire::Tasks>(&t->msg) : nullptr;
        if (!ts || ts->first_index != list.tasks.size() || ts->entries.size() > done->task_count - list.tasks.size()) {
            if (t) link_->violation("expected the declared tasks in order");
            else link_->kill("did not report its declared tasks");
            return err(TH_E_INIT_FAILED, "its process did not report the tasks init declared", "");
        }
        for (auto& te : ts->entries) {
            list.names.push_back(std::make_unique<std::string>(te.name));
            th_task_def d{};
            d.struct_size = sizeof(th_task_def);
            d.name = list.names.back()->c_str();
            d.default_interval_ns = te.interval_ns;
            d.default_timeout_ns = te.timeout_ns;
            d.run = placeholder_run;
            list.tasks.push_back(d);
        }
    }
    {
        std::lock_guard<std::mutex> lk(link_->lanes_mu);
        link_->task_names.clear();
        for (auto& t : list.tasks) link_->task_names.push_back(t.name);
    }
    // A lane for each call that can be in flight at once (no more calls than tasks, nor than the
    // scheduler's workers): made now, so that the first runs do not wait for them and the host's
    // descriptors do not grow with the load.
    const size_t workers = workers_ ? workers_ : std::max(1u, std::thread::hardware_concurrency());
    if (!link_->reserve_lanes(std::min(list.tasks.size(), workers), &e))
        link_->log->warn("plugin '{}': {}; its calls make their lanes when they need them", name_, e);
    initialised_ = true;
    *out = std::move(list);
    return std::nullopt;
}

TaskFn IsolatedInstance::task_fn(size_t index, const std::string& task_name) {
    return [link = link_, index, task_name, abandon_after = abandon_after_](RunContext& rc, bool is_stop) {
        {
            std::lock_guard<std::mutex> lk(link->mu);
            // A task whose process died gets no stop call: counted as made, said once in the crash's line.
            if (link->dead || !link->kill_reason.empty())
                return is_stop ? TaskResult::success() : TaskResult::failure("its process is not running");
        }
        std::string e;
        Lane* lane = link->acquire(&e);
        if (!lane) return TaskResult::failure("cannot call its process: " + e);
        const uint32_t seq = ++lane->seq == 0 ? ++lane->seq : lane->seq;
        std::vector<uint8_t> msg;
        wire::encode(wire::HostMessage{wire::Call{uint32_t(index), is_stop, steady_ns(rc.deadline()), steady_ns(rc.due())}},
                     seq, &msg, &e);
        lane->task.store(int64_t(index));
        if (!channel::send(lane->sock, msg, -1, &e)) {
            lane->task.store(-1);
            return TaskResult::failure(is_stop ? "no stop call: its process died" : "its process died");
        }
        lane->pending.store(seq, std::memory_order_relaxed);
        rc.set_cancel_relay(&lane->relay);
        // Past its deadline and abandon_after, a call that ignored its cancellation costs its process: killed
        // just before the scheduler would abandon the call, so that the call returns instead.
        const auto kill_at =
            std::chrono::steady_clock::time_point(
                std::chrono::duration_cast<std::chrono::steady_clock::duration>(rc.deadline().time_since_epoch())) +
            abandon_after - std::min<Duration>(kKillAhead, abandon_after / 4);
        TaskResult result;
        bool healthy = false;
        std::vector<uint8_t> buf;
        for (;;) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(kill_at - std::chrono::steady_clock::now());
            pollfd p{lane->sock, POLLIN, 0};
            const int n = ::poll(&p, 1, int(std::clamp<int64_t>(left.count() + 1, 0, 1 << 30)));
            if (n < 0 && errno == EINTR) continue;
            if (n == 0) {
                link->kill("ignored the cancellation of task '" + task_name + "' for " + format_duration(abandon_after) +
                           " past its deadline");
                result = TaskResult::failure("did not return within " + format_duration(abandon_after) +
                                             " past its deadline (it ignored its cancellation): its process was killed");
                break;
            }
            const auto r = channel::receive(lane->sock, &buf, nullptr, false, &e);
            if (r != channel::Recv::message) {
                if (r == channel::Recv::error) link->violation(e);
                result = TaskResult::failure(is_stop ? "no stop call: its process died during it"
                                                     : "its process died during the run");
                break;
            }
            auto f = wire::decode_worker(buf.data(), buf.size(), &e);
            if (!f) {
                link->violation(e);
                result = TaskResult::failure("its process sent an invalid message and was killed");
                break;
            }
            if (auto* m = std::get_if<wire::Log>(&f->msg)) {
                link->log_line(*m);
                continue;
            }
            auto* res = std::get_if<wire::Result>(&f->msg);
            if (!res || f->seq != seq) {
                link->violation(res ? "a Result for another call" : "a message other than Log or Result on a lane");
                result = TaskResult::failure("its process sent an invalid message and was killed");
                break;
            }
            result = res->status == TH_OK
                         ? TaskResult::success()
                         : TaskResult::failure(
                               res->error.empty() ? "failed" : escape_plugin_text(res->error, wire::kMaxReportText));
            healthy = true;
            break;
        }
        rc.set_cancel_relay(nullptr);
        if (healthy) {
            lane->task.store(-1);
            link->release(lane);
        }  // a broken lane is never used again; its task stays recorded for the crash message
        return result;
    };
}

bool IsolatedInstance::shutdown(Duration bound) {
    if (!initialised_) return true;
    initialised_ = false;
    {
        std::lock_guard<std::mutex> lk(link_->mu);
        if (link_->dead) return true;  // nothing left to shut down (no shutdown call: said in plugin.h)
    }
    Exchange exchange(*link_);
    // The host keeps the bound (shutdown has no context to see it by): the child's is a backstop past it.
    const auto until = std::chrono::steady_clock::now() + bound;
    if (!link_->send(wire::Shutdown{std::chrono::duration_cast<std::chrono::nanoseconds>(bound + kCallGrace).count()}))
        return true;
    std::string why;
    auto reply = link_->next_reply(until, &why);
    if (!reply) {
        if (why != "timeout") {  // nothing of it is left either
            link_->log->error("plugin '{}': its process died during shutdown: {}", name_, why);
            return true;
        }
        link_->log->error("plugin '{}': shutdown did not return within {}; its process is killed", name_,
                          format_duration(bound));
        return false;
    }
    if (auto* d = std::get_if<wire::ShutdownDone>(&reply->msg)) {
        if (!d->thrown.empty())
            link_->log->error(
                "plugin '{}': shutdown {} (an exception must not cross the C ABI; catch it in the plugin)", name_,
                escape_plugin_text(d->thrown, wire::kMaxReportText));
        return true;
    }
    link_->violation("expected ShutdownDone");
    return true;
}

void IsolatedInstance::abandon() {
    {
        std::lock_guard<std::mutex> lk(link_->mu);
        link_->expected = true;
        link_->on_exit = nullptr;
    }
    link_->kill("was abandoned by the host");
}

}  // namespace tickhost::detail
