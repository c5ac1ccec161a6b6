// DirectoryWatcher: one thread, one loop for both backends. The loop waits (poll(2)) on the inotify
// descriptor and an eventfd used for stop and requests, with a timeout that is the earliest of: a pending
// settle deadline, the next poll scan, the next check for a missing directory.
#include <tickhost/logging.hpp>
#include <tickhost/watcher.hpp>

#include <spdlog/spdlog.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace tickhost {

namespace {

constexpr uint32_t kMask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CREATE | IN_MODIFY |
                           IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR;

struct Sig {
    int64_t mtime_ns = 0;
    uint64_t size = 0;
    uint64_t ino = 0;
    bool operator==(const Sig& o) const { return mtime_ns == o.mtime_ns && size == o.size && ino == o.ino; }
    bool operator!=(const Sig& o) const { return !(*this == o); }
};

bool stat_sig(const fs::path& p, Sig* s) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) return false;
    s->mtime_ns = int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    s->size = uint64_t(st.st_size);
    s->ino = uint64_t(st.st_ino);
    return true;
}

const char* mode_name(WatchMode m) {
    switch (m) {
    case WatchMode::inotify: return "inotify";
    case WatchMode::poll: return "poll";
    case WatchMode::off: return "off";
    default: return "auto";
    }
}

}  // namespace

struct DirectoryWatcher::Impl {
    fs::path dir;
    WatchOptions opt;
    Handler handler;
    std::shared_ptr<spdlog::logger> log;
    WatchMode backend = WatchMode::off;
    int ifd = -1;
    int wd = -1;
    int wake_fd = -1;
    std::thread thread;
    std::atomic<bool> stopping{false};

    std::mutex mu;  // requests from other threads
    std::vector<std::pair<fs::path, Clock::time_point>> rechecks;
    bool rescan_requested = false;

    // Thread-private state.
    struct Pending {
        WatchEvent::Kind kind;
        Clock::time_point due;
        Sig sig;  // poll backend: the signature that must stay put until due
    };
    std::map<std::string, Pending> pending;
    std::map<std::string, Sig> known;  // poll backend
    bool present = false;
    Clock::time_point next_scan{}, next_dir_check{};

    bool wanted(const std::string& name) const { return !opt.filter || opt.filter(fs::path(name)); }

    void emit(WatchEvent::Kind kind, const fs::path& path) {
        try {
            handler(WatchEvent{kind, path});
        } catch (const std::exception& e) {
            log->error("watch {}: handler failed: {}", dir.string(), e.what());
        }
    }

    bool add_watch() {
        wd = inotify_add_watch(ifd, dir.c_str(), kMask);
        return wd >= 0;
    }

    // (Re)acquires the directory after it was missing. True if it is there now.
    bool acquire(Clock::time_point now) {
        std::error_code ec;
        if (!fs::is_directory(dir, ec)) {
            next_dir_check = now + opt.poll_interval;
            return false;
        }
        if (backend == WatchMode::inotify && !add_watch()) {
            log->warn("watch {}: inotify_add_watch failed: {}; retrying", dir.string(), std::strerror(errno));
            next_dir_check = now + opt.poll_interval;
            return false;
        }
        if (backend == WatchMode::poll) {
            known.clear();
            scan(now, /*initial=*/true);
        }
        present = true;
        return true;
    }

    void lose_directory(const char* why) {
        if (!present) return;
        present = false;
        wd = -1;
        // Pending removals came from the directory going away: plugins keep running until it is back.
        pending.clear();
        log->warn("watch {}: the directory was {}; running plugins keep running, watching for it to come back",
                  dir.string(), why);
        next_dir_check = Clock::now();
    }

    void settle(const std::string& name, WatchEvent::Kind kind, Clock::time_point now, Sig sig = {}) {
        pending[name] = Pending{kind, now + opt.settle, sig};
    }

    void on_inotify(const inotify_event& ev, Clock::time_point now) {
        if (ev.mask & IN_Q_OVERFLOW) {
            log->warn("watch {}: inotify queue overflowed; rescanning", dir.string());
            pending.clear();
            emit(WatchEvent::Kind::rescan, {});
            return;
        }
        if (ev.mask & IN_IGNORED) {
            if (ev.wd == wd) lose_directory("deleted");
            return;
        }
        if (ev.mask & IN_DELETE_SELF) {
            lose_directory("deleted");
            return;
        }
        if (ev.mask & IN_MOVE_SELF) {
            inotify_rm_watch(ifd, wd);  // it follows the moved inode; we watch the path
            lose_directory("moved or replaced");
            return;
        }
        if (!ev.len) return;
        const std::string name = ev.name;
        if (!wanted(name)) return;
        if (ev.mask & (IN_CLOSE_WRITE | IN_MOVED_TO)) {
            // Complete by construction: act now (the settle delay must not sit on this path).
            pending.erase(name);
            emit(WatchEvent::Kind::changed, dir / name);
        } else if (ev.mask & (IN_DELETE | IN_MOVED_FROM)) {
            settle(name, WatchEvent::Kind::removed, now);
        } else if (ev.mask & (IN_CREATE | IN_MODIFY | IN_ATTRIB)) {
            settle(name, WatchEvent::Kind::changed, now);
        }
    }

    // Poll backend: compares signatures with the last scan.
    void scan(Clock::time_point now, bool initial = false) {
        next_scan = now + opt.poll_interval;
        std::error_code ec;
        std::map<std::string, Sig> seen;
        fs::directory_iterator it(dir, ec);
        if (ec) {
            lose_directory("deleted");
            return;
        }
        for (; it != fs::directory_iterator(); it.increment(ec)) {
            if (ec) break;
            const std::string name = it->path().filename().string();
            if (!wanted(name)) continue;
            Sig s;
            if (stat_sig(it->path(), &s)) seen[name] = s;
        }
        if (!initial) {
            for (auto& [name, s] : seen) {
                auto k = known.find(name);
                if (k == known.end() || k->second != s) {
                    auto p = pending.find(name);
                    if (p == pending.end() || p->second.sig != s) settle(name, WatchEvent::Kind::changed, now, s);
                }
            }
            for (auto& [name, s] : known)
                if (!seen.count(name)) settle(name, WatchEvent::Kind::removed, now);
        }
        known.swap(seen);
    }

    void fire_due(Clock::time_point now) {
        for (auto it = pending.begin(); it != pending.end();) {
            if (it->second.due > now) {
                ++it;
                continue;
            }
            const fs::path path = dir / it->first;
            if (backend == WatchMode::poll && it->second.kind == WatchEvent::Kind::changed) {
                Sig s;
                if (stat_sig(path, &s) && s != it->second.sig) {  // still changing: wait until quiet
                    it->second.sig = s;
                    it->second.due = now + opt.settle;
                    ++it;
                    continue;
                }
            }
            WatchEvent::Kind kind = it->second.kind;
            it = pending.erase(it);
            emit(kind, path);
        }
    }

    void take_requests(Clock::time_point now) {
        std::vector<std::pair<fs::path, Clock::time_point>> rs;
        bool rescan = false;
        {
            std::lock_guard<std::mutex> lk(mu);
            rs.swap(rechecks);
            rescan = rescan_requested;
            rescan_requested = false;
        }
        for (auto& [p, due] : rs) {
            const std::string name = p.filename().string();
            auto it = pending.find(name);
            if (it == pending.end() || it->second.due > due) {
                Sig s;
                stat_sig(p, &s);
                pending[name] = Pending{WatchEvent::Kind::changed, due, s};
            }
        }
        if (rescan && present) emit(WatchEvent::Kind::rescan, {});
        (void)now;
    }

    void run() {
        auto now = Clock::now();
        if (acquire(now)) {
            emit(WatchEvent::Kind::rescan, {});
        } else {
            log->warn("watch {}: the directory does not exist; watching for it to appear", dir.string());
        }
        std::vector<char> buf(64 * 1024);
        while (!stopping.load()) {
            now = Clock::now();
            take_requests(now);
            if (!present && now >= next_dir_check && acquire(now)) {
                log->info("watch {}: the directory is back; rescanning", dir.string());
                emit(WatchEvent::Kind::rescan, {});
            }
            if (present && backend == WatchMode::poll && now >= next_scan) scan(now);
            fire_due(Clock::now());

            Clock::time_point wake = Clock::time_point::max();
            for (auto& [n, p] : pending) wake = std::min(wake, p.due);
            if (!present) wake = std::min(wake, next_dir_check);
            if (present && backend == WatchMode::poll) wake = std::min(wake, next_scan);
            int timeout_ms = -1;
            if (wake != Clock::time_point::max()) {
                auto d = std::chrono::duration_cast<std::chrono::microseconds>(wake - Clock::now()).count();
                timeout_ms = d <= 0 ? 0 : int(std::min<int64_t>((d + 999) / 1000, INT_MAX));
            }
            pollfd fds[2] = {{wake_fd, POLLIN, 0}, {ifd, POLLIN, 0}};
            int n = ::poll(fds, ifd >= 0 ? 2 : 1, timeout_ms);
            if (n < 0 && errno != EINTR) {
                log->error("watch {}: poll failed: {}", dir.string(), std::strerror(errno));
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
                continue;
            }
            if (n > 0 && (fds[0].revents & POLLIN)) {
                uint64_t v;
                (void)!::read(wake_fd, &v, sizeof v);
            }
            if (n > 0 && ifd >= 0 && (fds[1].revents & POLLIN)) {
                ssize_t len = ::read(ifd, buf.data(), buf.size());
                const auto t = Clock::now();
                for (ssize_t off = 0; len > 0 && off < len;) {
                    auto* ev = reinterpret_cast<const inotify_event*>(buf.data() + off);
                    on_inotify(*ev, t);
                    off += ssize_t(sizeof(inotify_event) + ev->len);
                }
            }
        }
    }

    void wake() {
        uint64_t one = 1;
        (void)!::write(wake_fd, &one, sizeof one);
    }
};

DirectoryWatcher::DirectoryWatcher(fs::path dir, WatchOptions options, Handler handler)
    : impl_(std::make_unique<Impl>()) {
    Impl& d = *impl_;
    d.dir = std::move(dir);
    d.opt = std::move(options);
    d.handler = std::move(handler);
    d.log = get_logger(d.opt.logger_name);
    if (d.opt.settle < Duration::zero()) d.opt.settle = Duration::zero();
    if (d.opt.poll_interval <= Duration::zero()) d.opt.poll_interval = std::chrono::seconds(1);
    if (d.opt.mode == WatchMode::off) {
        d.log->info("watch {}: off (changes are picked up only at start)", d.dir.string());
        return;
    }
    d.wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (d.wake_fd < 0) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
    d.backend = d.opt.mode == WatchMode::poll ? WatchMode::poll : WatchMode::inotify;
    if (d.backend == WatchMode::inotify) {
        d.ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (d.ifd < 0) {
            auto level = d.opt.mode == WatchMode::inotify ? spdlog::level::err : spdlog::level::warn;
            d.log->log(level, "watch {}: inotify is unavailable ({}); using the polling backend every {}",
                       d.dir.string(), std::strerror(errno), format_duration(d.opt.poll_interval));
            d.backend = WatchMode::poll;
        }
    }
    d.log->info("watch {}: {} backend (settle {})", d.dir.string(), mode_name(d.backend), format_duration(d.opt.settle));
    d.thread = std::thread([&d] { d.run(); });
}

DirectoryWatcher::~DirectoryWatcher() {
    if (impl_->thread.joinable()) {
        impl_->stopping = true;
        impl_->wake();
        impl_->thread.join();
    }
    if (impl_->ifd >= 0) ::close(impl_->ifd);
    if (impl_->wake_fd >= 0) ::close(impl_->wake_fd);
}

WatchMode DirectoryWatcher::backend() const { return impl_->backend; }

void DirectoryWatcher::recheck(const fs::path& path, Duration delay) {
    if (impl_->backend == WatchMode::off) return;
    {
        std::lock_guard<std::mutex> lk(impl_->mu);
        impl_->rechecks.emplace_back(path, Clock::now() + delay);
    }
    impl_->wake();
}

void DirectoryWatcher::rescan() {
    if (impl_->backend == WatchMode::off) return;
    {
        std::lock_guard<std::mutex> lk(impl_->mu);
        impl_->rescan_requested = true;
    }
    impl_->wake();
}

}  // namespace tickhost
