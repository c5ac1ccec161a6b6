#include <tickhost/logging.hpp>
#include <tickhost/plugin_manager.hpp>

#include "fault.hpp"
#include "host_api.hpp"
#include "load_pipeline.hpp"
#include "loader.hpp"
#include "plugin_instance.hpp"
#include "time_format.hpp"
#if defined(__linux__)
#include "isolation/isolated_instance.hpp"
#endif

#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include <sys/stat.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/wait.h>
#endif

namespace fs = std::filesystem;

namespace tickhost {
namespace detail {

// The manager's record of one plugin version: the instance that runs its code, its settings and tasks.
// Shared by the manager and the operations in flight on it.
struct LoadedPlugin {
    std::shared_ptr<PluginInstance> inst;
    fs::path file;
    std::string name;
    PluginSettings settings;  // what it was (or is to be) started with
    TaskList tasks;           // after init: static then declared
    std::vector<PluginTaskInfo> scheduled;
    std::chrono::system_clock::time_point started_at{};  // when its tasks were last scheduled (for status)
};

namespace {

// The end of an isolated instance's process, watched through the instance's exit handler, which this
// replaces (watch() installs the supervisor's again when the plugin is started again). For a process gone
// already, set_exit_handler calls the handler at once: its end was told elsewhere then (by the supervisor,
// or by the isolation runtime's own log line). Nothing for an instance in the host's process.
class EndWatch {
public:
    explicit EndWatch(PluginInstance& inst) : inst_(inst) {
        if (inst.mode() != Isolation::process) return;
        state_ = std::make_shared<State>();
        inst.set_exit_handler([st = state_, installer = std::this_thread::get_id()](const std::string& why) {
            std::lock_guard<std::mutex> lk(st->mu);
            if (st->why) return;
            st->why = why;
            st->told = std::this_thread::get_id() == installer;
            st->cv.notify_all();
        });
    }
    // How it ended, if it has. A process that has exited but is not collected yet (its channel and lanes
    // close first: a call or init that saw it die may return before the isolation runtime has told) is
    // waited for, up to `bound`; one still running is not.
    std::optional<std::string> ended(Duration bound = Duration::zero()) const {
        if (!state_) return std::nullopt;
        std::unique_lock<std::mutex> lk(state_->mu);
        if (!state_->why && bound > Duration::zero()) {
            lk.unlock();
            const bool wait = exiting();
            lk.lock();
            if (wait) state_->cv.wait_for(lk, bound, [&] { return state_->why.has_value(); });
        }
        return state_->why;
    }
    // Its end was told before this watch began.
    bool told_elsewhere() const {
        if (!state_) return false;
        std::lock_guard<std::mutex> lk(state_->mu);
        return state_->told;
    }

private:
    struct State {
        std::mutex mu;
        std::condition_variable cv;
        std::optional<std::string> why;
        bool told = false;  // ended before the watch began
    };
    // Ended or ending: reaped by the isolation runtime (which then tells), a zombie (waitid without reaping),
    // or on its way out (PF_EXITING, 0x4, in the flags of /proc/<pid>/stat: set as it starts to exit, before
    // its descriptors close, which is what a call or init that saw it die has seen).
    bool exiting() const {
#if defined(__linux__)
        auto* iso = dynamic_cast<IsolatedInstance*>(&inst_);
        if (!iso || iso->pid() <= 0) return false;
        siginfo_t si{};
        if (::waitid(P_PID, id_t(iso->pid()), &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid != 0) return true;
        std::ifstream in("/proc/" + std::to_string(iso->pid()) + "/stat");
        std::string stat;
        std::getline(in, stat);
        const size_t close = stat.rfind(')');
        if (close == std::string::npos) return true;  // gone meanwhile
        std::istringstream rest(stat.substr(close + 1));
        std::string state;
        long ppid, pgrp, session, tty, tpgid;
        unsigned long flags = 0;
        rest >> state >> ppid >> pgrp >> session >> tty >> tpgid >> flags;
        return state == "Z" || state == "X" || (flags & 0x4) != 0;
#else
        return false;
#endif
    }
    PluginInstance& inst_;
    std::shared_ptr<State> state_;
};

}  // namespace
}  // namespace detail

using detail::EndWatch;
using detail::LoadedPlugin;
using detail::LoadFailure;
using detail::schedule_of;
using detail::to_error;

namespace {
std::string describe(const LoadedPlugin& p);
}  // namespace

Duration task_jitter_offset(std::string_view host, std::string_view plugin, std::string_view task, Duration jitter) {
    std::string key;
    key.reserve(host.size() + plugin.size() + task.size() + 2);
    key.append(host).push_back('\0');
    key.append(plugin).push_back('\0');
    key.append(task);
    return jitter_offset(key, jitter);
}

std::string machine_name() {
    char buf[256] = {0};
    if (::gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return "localhost";
    return buf;
}

bool is_plugin_file_name(const fs::path& path) {
#if defined(_WIN32)
    const char* suffix = ".dll";
#else
    const char* suffix = ".so";
#endif
    const std::string name = path.filename().string();
    if (name.empty() || name[0] == '.') return false;
    if (name.back() == '~') return false;
    const std::string ext = path.extension().string();
    if (ext == ".tmp" || ext == ".swp" || ext == ".part") return false;
    return ext == suffix && name.size() > ext.size();
}

PluginManager::PluginManager(Tickers& tickers, HostConfig config)
    : tickers_(tickers), config_(std::move(config)), log_(get_logger("plugins")) {
    file_config_ = config_;
    running_workers_ = config_.workers;
    running_watch_ = config_.watch;
    running_poll_interval_ = config_.poll_interval;
    running_settle_ = config_.settle;
    running_backoff_max_ = config_.backoff_max;
    running_abandon_after_ = config_.abandon_after;
    pipeline_ = std::make_unique<detail::LoadPipeline>(config_, log_);
    supervisor_ = std::make_shared<Supervisor>();
}

struct PluginManager::Crash {
    fs::path file;
    std::string name;
    // Compared with the running version's instance: a weak reference, so that a version gone meanwhile
    // (replaced, removed) never matches, even one whose memory a later instance reuses.
    std::weak_ptr<detail::PluginInstance> instance;
    std::string why;
};

// The supervisor's queue and thread. Exit handlers hold it by shared_ptr: one that fires while the
// manager is being destroyed finds it closed.
struct PluginManager::Supervisor {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<Crash> crashes;
    std::map<fs::path, std::chrono::steady_clock::time_point> restarts;
    bool closed = false;
    std::thread thread;
};

PluginManager::~PluginManager() {
    unload_all(config_.shutdown_timeout);
    {
        std::lock_guard<std::mutex> lk(supervisor_->mu);
        supervisor_->closed = true;
        supervisor_->cv.notify_all();
    }
    if (supervisor_->thread.joinable()) supervisor_->thread.join();
}

void PluginManager::start_supervisor() {
    std::lock_guard<std::mutex> lk(supervisor_->mu);
    if (!supervisor_->thread.joinable() && !supervisor_->closed)
        supervisor_->thread = std::thread([this] { supervise(); });
}

void PluginManager::watch(const Plugin& p) {
    if (p->inst->mode() != Isolation::process) return;
    auto sup = supervisor_;
    start_supervisor();
    p->inst->set_exit_handler([sup, file = p->file, name = p->name,
                               inst = std::weak_ptr<detail::PluginInstance>(p->inst)](const std::string& why) {
        std::lock_guard<std::mutex> lk(sup->mu);
        if (sup->closed) return;
        sup->crashes.push_back({file, name, inst, why});
        sup->cv.notify_all();
    });
}

void PluginManager::supervise() {
    Supervisor& sup = *supervisor_;
    std::unique_lock<std::mutex> lk(sup.mu);
    while (!sup.closed) {
        auto next = std::chrono::steady_clock::time_point::max();
        for (auto& [f, t] : sup.restarts) next = std::min(next, t);
        if (sup.crashes.empty()) {
            // Asleep while nothing is pending: an idle host makes no wake-up here.
            if (next == std::chrono::steady_clock::time_point::max())
                sup.cv.wait(lk);
            else
                sup.cv.wait_until(lk, next);
        }
        if (sup.closed) break;
        std::deque<Crash> crashes;
        crashes.swap(sup.crashes);
        std::vector<fs::path> due;
        const auto now = std::chrono::steady_clock::now();
        for (auto it = sup.restarts.begin(); it != sup.restarts.end();) {
            if (it->second <= now) {
                due.push_back(it->first);
                it = sup.restarts.erase(it);
            } else {
                ++it;
            }
        }
        lk.unlock();
        for (auto& c : crashes) crashed(c);
        for (auto& f : due) {
            std::lock_guard<std::mutex> g(mu_);
            if (!stopping_ && !by_file_.count(f)) sync_guarded(f);  // publishes
        }
        lk.lock();
    }
}

void PluginManager::crashed(const Crash& c) {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = by_file_.find(c.file);
    const auto instance = c.instance.lock();
    if (it == by_file_.end() || !instance || it->second->inst != instance) {
        // A version being stopped (a stop call or shutdown that crashed, while it was replaced, restarted with
        // new settings or removed) or already gone: said, nothing more to do.
        log_->warn("plugin '{}' ({}): the process of a version no longer running ended: {}", c.name,
                   c.file.filename().string(), c.why);
        return;
    }
    Plugin p = it->second;
    by_file_.erase(it);
    Duration shortest = Duration::max();
    for (auto& t : p->scheduled) shortest = std::min(shortest, t.interval);
    // Its tasks get no stop call and it gets no shutdown call: its process is gone.
    stop_plugins({p}, config_.shutdown_timeout);
    back_off(*p, "stopped: " + c.why + "; its tasks got no stop call", shortest);
    publish_locked();
}

// A task's shortest interval among a plugin's static tasks as host.toml sets them (before init: no task of
// its own is scheduled yet).
Duration PluginManager::shortest_static_interval(const LoadedPlugin& p) const {
    Duration shortest = Duration::max();
    const th_plugin_def& d = p.inst->def();
    for (uint32_t i = 0; i < d.task_count; ++i)
        shortest = std::min(shortest, schedule_of(p.settings, d.tasks[i], config_.default_timeout).first);
    return shortest;
}

void PluginManager::back_off(const LoadedPlugin& p, const std::string& what, Duration shortest) {
    if (shortest <= Duration::zero() || shortest == Duration::max()) shortest = std::chrono::seconds(1);
    const fs::path& file = p.file;
    const auto now = std::chrono::steady_clock::now();
    Down& d = down_[file];
    if (d.sha256 != p.inst->sha256()) d = Down{p.inst->sha256(), {}, {}, false, {}};
    d.crashes.erase(std::remove_if(d.crashes.begin(), d.crashes.end(),
                                   [&](auto t) { return now - t > config_.crash_window; }),
                    d.crashes.end());
    d.crashes.push_back(now);
    const size_t k = d.crashes.size();
    d.status = status_of(p);
    d.status.tasks.clear();
    d.status.pid = 0;
    d.status.since = std::chrono::system_clock::now();
    d.status.crashes = uint32_t(k);
    d.status.detail = what;
    if (k >= config_.crash_limit) {
        d.for_good = true;
        d.status.state = PluginStatus::State::down;
        log_->error(
            "plugin {} {}. It ended {} times within {} ([host] crash_limit, crash_window): it stays down until "
            "its file changes or host.toml is applied again (SIGHUP)",
            describe(p), what, k, format_duration(config_.crash_window));
        return;
    }
    // interval x 2^(k-1), at most backoff_max; backoff_max off: at once.
    Duration delay = shortest;
    for (size_t i = 1; i < k && delay < config_.backoff_max; ++i) delay = delay > Duration::max() / 2 ? Duration::max() : delay * 2;
    delay = config_.backoff_max > Duration::zero() ? std::min(delay, config_.backoff_max) : Duration::zero();
    d.until = now + delay;
    d.status.state = PluginStatus::State::backing_off;
    d.status.restart_at = d.status.since + std::chrono::duration_cast<std::chrono::system_clock::duration>(delay);
    log_->error("plugin {} {}. Restarting it in {} (crash {} of [host] crash_limit = {} within {})", describe(p), what,
                format_duration(delay), k, config_.crash_limit, format_duration(config_.crash_window));
    start_supervisor();  // a crash in init comes before watch() ever ran
    std::lock_guard<std::mutex> g(supervisor_->mu);
    supervisor_->restarts[file] = d.until;
    supervisor_->cv.notify_all();
}

const fs::path& PluginManager::shadow_dir() const { return pipeline_->shadow_dir(); }

size_t PluginManager::load_directory() {
    reconcile();
    std::lock_guard<std::mutex> lk(mu_);
    log_->info("{} plugin(s) loaded from {}", by_file_.size(), config_.plugin_dir.string());
    return by_file_.size();
}

void PluginManager::reconcile() {
    if (stopping_) return;
    std::lock_guard<std::mutex> lk(mu_);
    const fs::path& dir = config_.plugin_dir;
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) {
        log_->error("plugin_dir {} is not a directory{}; create it or fix [host] plugin_dir in {} (running plugins "
                    "keep running)",
                    dir.string(), ec ? " (" + ec.message() + ")" : "",
                    config_.source.empty() ? "host.toml" : config_.source.string());
        return;
    }
    std::vector<fs::path> files;
    for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec))
        if (is_plugin_file_name(it->path())) files.push_back(it->path());
    if (ec) {
        log_->error("cannot list plugin_dir {}: {}", dir.string(), ec.message());
        return;
    }
    std::sort(files.begin(), files.end());
    std::vector<fs::path> gone;
    for (auto& [f, p] : by_file_)
        if (!std::binary_search(files.begin(), files.end(), f)) gone.push_back(f);
    for (auto& f : gone) sync_guarded(f);
    for (auto& f : files) sync_guarded(f);
}

std::optional<LoadError> PluginManager::sync_guarded(const fs::path& file) {
    if (stopping_) return std::nullopt;
    // One file's unexpected failure (an exception from a library, an allocation) must not end the host or
    // keep the other files from loading: it is named, and the file is tried again when it changes.
    std::optional<LoadError> result;
    try {
        result = sync_locked(file);
    } catch (const std::exception& e) {
        LoadError err{TH_E_NOT_A_LIBRARY, "TH_E_NOT_A_LIBRARY", std::string("unexpected error: ") + e.what(),
                      "it is tried again when the file changes (or on SIGHUP)"};
        log_->error("{}: {}", file.string(), err.message());
        result = err;
    }
    publish_locked();
    return result;
}

std::optional<LoadError> PluginManager::load(const fs::path& file_in) {
    // Absolute before any plugin code runs: a plugin may chdir().
    const fs::path file = fs::absolute(file_in);
    std::lock_guard<std::mutex> lk(mu_);
    if (by_file_.count(file))
        return refuse(file, "not loaded",
                      {TH_E_DUPLICATE_NAME, "TH_E_DUPLICATE_NAME", "a plugin is already loaded from this file",
                       "unload it first (or replace the file to upgrade it)"},
                      "");
    if (struct stat st {}; ::lstat(file.c_str(), &st) != 0)
        return refuse(file, "not loaded",
                      {TH_E_NOT_A_LIBRARY, "TH_E_NOT_A_LIBRARY", std::string("cannot open: ") + std::strerror(errno),
                       "check that the file exists and the host's user can read it"},
                      "");
    return sync_guarded(file);
}

std::optional<LoadError> PluginManager::sync(const fs::path& file) {
    std::lock_guard<std::mutex> lk(mu_);
    return sync_guarded(fs::absolute(file));
}

bool PluginManager::retry_worthy(const fs::path& file) const {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = failed_.find(file);
    return it != failed_.end() && it->second.retry && !it->second.retried;
}

std::optional<LoadError> PluginManager::refuse(const fs::path& file, const std::string& what, LoadError e,
                                               const std::string& sha256) {
    Failure& f = failed_[file];
    // A file refused by the loader right after it changed may be half written: worth one retry.
    const bool again = f.sha256 == sha256 && !sha256.empty();
    // Said once: the retry of the same content with the same outcome is not news.
    const std::string line = what + ": " + e.message();
    if (again && f.message == line)
        log_->debug("{}: {} (the same content again)", file.string(), line);
    else
        log_->error("{}: {}", file.string(), line);
    f.message = line;
    f.retried = again;
    f.sha256 = sha256;
    f.retry = e.code == TH_E_NOT_A_LIBRARY;
    f.duplicate = e.code == TH_E_DUPLICATE_NAME;
    f.error = e;
    f.when = std::chrono::system_clock::now();
    publish_locked();
    return e;
}

std::optional<LoadError> PluginManager::sync_locked(const fs::path& file) {
    auto it = by_file_.find(file);
    Plugin old = it == by_file_.end() ? nullptr : it->second;
    struct stat st {};
    // lstat: a dangling symlink is there (and refused by name), not silently absent.
    const bool present = ::lstat(file.c_str(), &st) == 0;
    disabled_.erase(file);  // said again below if it still is
    if (!present) {
        failed_.erase(file);
        down_.erase(file);
        if (old) {
            log_->info("{}: file removed: stopping plugin '{}'", file.string(), old->name);
            by_file_.erase(it);
            stop_plugins({old}, config_.shutdown_timeout);
            // Files refused because this plugin had their name may load now.
            std::vector<fs::path> waiting;
            for (auto& [f, why] : failed_)
                if (why.duplicate) waiting.push_back(f);
            for (auto& f : waiting) {
                failed_.erase(f);
                sync_locked(f);
            }
        }
        return std::nullopt;
    }
    // Read once, in bounded memory, into a shadow copy: checked, hashed and scanned on the way.
    detail::StagedFile staged;
    LoadFailure rf;
    if (!pipeline_->stage(file, &staged, &rf)) {
        if (old && !staged.opened) {
            log_->error("{}: cannot read the new version: {}; plugin '{}' keeps running", file.string(), rf.reason,
                        old->name);
            return to_error(rf);
        }
        // Refused for its content before it was hashed (its size, its ELF header, changed while read): the
        // file's identity stands for its content, so the same file is retried once at most.
        LoadError e = to_error(rf);
        auto f = failed_.find(file);
        if (f != failed_.end() && f->second.sha256 == staged.identity && (!f->second.retry || f->second.retried)) {
            log_->debug("{}: the same file that was refused before; still refused", file.string());
            return e;
        }
        if (old) e.hint += "; " + describe(*old) + " keeps running";
        return refuse(file, old ? "new version refused" : "not loaded", e, staged.identity);
    }
    const std::string sha = staged.sha256;
    // A pin on the file's own name is checked before any of its code runs (dlopen runs static constructors).
    if (auto e = pipeline_->pin_mismatch(file.stem().string(), file, sha)) {
        if (old) e->hint += "; " + old->name + " keeps running";
        return refuse(file, old ? "new version refused" : "not loaded", *e, sha);
    }
    if (old && old->inst->sha256() == sha) {
        log_->debug("{}: content unchanged (sha256 {}); nothing to do", file.string(), sha.substr(0, 12));
        failed_.erase(file);
        return std::nullopt;  // the staged copy goes with `staged`
    }
    if (auto d = down_.find(file); d != down_.end()) {
        if (d->second.sha256 != sha) {
            down_.erase(d);  // a new version: a fresh start
        } else if (d->second.for_good || std::chrono::steady_clock::now() < d->second.until) {
            log_->debug("{}: down after its process ended (see above); not started now", file.string());
            return std::nullopt;
        }
    }
    auto f = failed_.find(file);
    if (f != failed_.end() && f->second.sha256 == sha && (!f->second.retry || f->second.retried)) {
        log_->debug("{}: same content that was refused before; still refused", file.string());
        return LoadError{TH_E_NOT_A_LIBRARY, "TH_E_NOT_A_LIBRARY", "refused before (see above)", ""};
    }
    auto result = old ? replace(old, staged, sha) : add_new(file, staged, sha);
    if (!result) failed_.erase(file);
    return result;
}

PluginManager::Plugin PluginManager::open(const fs::path& file, detail::StagedFile& staged, LoadError* err) {
    auto inst = pipeline_->open(file, staged, err);
    if (!inst) return nullptr;
    auto p = std::make_shared<LoadedPlugin>();
    p->inst = std::move(inst);
    p->file = file;
    p->name = p->inst->def().name;
    return p;
}

const LoadedPlugin* PluginManager::find_name(const std::string& name, const LoadedPlugin* except) const {
    for (auto& [f, p] : by_file_)
        if (p.get() != except && p->name == name) return p.get();
    return nullptr;
}

std::optional<LoadError> PluginManager::initialise(LoadedPlugin& p, const PluginSettings* settings) {
    const th_plugin_def& def = p.inst->def();
    p.settings = settings ? *settings : config_.plugin(p.name);
    p.tasks = {};
    p.scheduled.clear();
    const size_t cap = config_.max_tasks_per_plugin;
    if (def.task_count > cap)
        return LoadError{TH_E_TOO_MANY_TASKS, "TH_E_TOO_MANY_TASKS",
                         "it declares " + std::to_string(def.task_count) +
                             " static tasks; [host] max_tasks_per_plugin is " + std::to_string(cap),
                         "declare fewer tasks (check [plugins." + p.name +
                             ".config]), or raise [host] max_tasks_per_plugin in host.toml"};
    const Duration bound = p.settings.timeout ? *p.settings.timeout : config_.default_timeout;
    if (auto e = p.inst->init(p.settings.config, bound, cap, &p.tasks)) return e;
    // Every task gets the same checks, static or declared, whatever runs the plugin's code.
    auto undo = [&](LoadFailure f) {
        if (!p.inst->shutdown(bound)) p.inst->abandon();
        p.tasks = {};
        return to_error(f);
    };
    std::set<std::string> seen;
    LoadFailure f;
    for (auto& t : p.tasks.tasks) {
        if (!detail::validate_task(t, &f)) return undo(f);
        if (!seen.insert(t.name).second)
            return undo({TH_E_BAD_DESCRIPTOR, "two tasks are named '" + std::string(t.name) + "'",
                         "give each task a unique name"});
    }
    if (p.tasks.tasks.empty())
        return undo({TH_E_NO_TASKS, "the plugin declared no task", "declare at least one task (or check its config)"});
    for (auto& [task, _] : p.settings.tasks)
        if (!seen.count(task)) {
            std::string all;
            for (auto& n : seen) {
                if (all.size() > 200) {
                    all += ", ...";
                    break;
                }
                all += (all.empty() ? "" : ", ") + n;
            }
            log_->warn("host.toml sets [plugins.{}.tasks.{}] but plugin '{}' has no task '{}' (it has: {})", p.name,
                       task, p.name, task, all);
        }
    return std::nullopt;
}

namespace {
// The plugin's free-form version text, made safe for a log line.
std::string version_of(const th_plugin_def& d) {
    return d.version && *d.version ? detail::escape_plugin_text(d.version, 64) : "(no version)";
}
std::string describe(const LoadedPlugin& p) {
    return "'" + p.name + "' " + version_of(p.inst->def()) + " [sha256 " + p.inst->sha256().substr(0, 12) + "]";
}
// "a every 1s (timeout 10s), b every ..., and 995 more": at most kShown tasks, so that a plugin with many
// tasks gets a short line.
std::string task_list(const LoadedPlugin& p) {
    constexpr size_t kShown = 5;
    std::string s;
    for (size_t i = 0; i < p.scheduled.size() && i < kShown; ++i) {
        const auto& t = p.scheduled[i];
        s += (s.empty() ? "" : ", ") + t.name + " every " + format_duration(t.interval) + " (timeout " +
             format_duration(t.timeout) + (t.jitter > Duration::zero() ? ", offset " + format_duration(t.offset) : "") +
             (t.align ? ", aligned" : "") + ")";
    }
    if (p.scheduled.size() > kShown) s += ", and " + std::to_string(p.scheduled.size() - kShown) + " more";
    return s;
}
}  // namespace

std::optional<LoadError> PluginManager::add_new(const fs::path& file, detail::StagedFile& staged,
                                                const std::string& sha) {
    LoadError e;
    Plugin p = open(file, staged, &e);
    if (!p) return refuse(file, "not loaded", e, sha);
    if (const LoadedPlugin* other = find_name(p->name, nullptr))
        return refuse(file, "not loaded",
                      {TH_E_DUPLICATE_NAME, "TH_E_DUPLICATE_NAME",
                       "plugin name '" + p->name + "' is already used by " + other->file.string(),
                       "remove one of the two files; plugin names key [plugins.<name>] and must be unique"},
                      sha);
    if (!config_.plugin(p->name).enabled) {
        log_->info("{}: plugin '{}' is disabled in host.toml ([plugins.{}] enabled = false); not started",
                   file.string(), p->name, p->name);
        PluginStatus d = status_of(*p);
        d.state = PluginStatus::State::disabled;
        d.since = std::chrono::system_clock::now();
        disabled_[file] = std::move(d);
        return std::nullopt;
    }
    // Isolated: its end during init is told here (rather than by the isolation runtime's own line).
    const EndWatch end(*p->inst);
    if (auto err = initialise(*p)) {
        // Isolated, its process died in init: a crash like one in a run (restarted after a back-off, down
        // after crash_limit), not a refusal of the file that waits for the file to change. An init the host
        // killed (past its bound) is refused, as in the host's own process.
        if (auto why = p->inst->killed_by_host() ? std::nullopt : end.ended(std::chrono::seconds(2))) {
            back_off(*p, "stopped: " + *why + " during its init", shortest_static_interval(*p));
            return err;
        }
        return refuse(file, "not loaded", *err, sha);
    }
    if (auto err = start_tasks(p)) return refuse(file, "not loaded", *err, sha);
    by_file_[file] = p;
    const th_plugin_def& d = p->inst->def();
    log_->info("loaded plugin {} from {}{}{}: {}", describe(*p), file.filename().string(),
               d.description && *d.description ? " — " : "",
               d.description ? detail::escape_plugin_text(d.description, 256) : "", task_list(*p));
    return std::nullopt;
}

std::optional<LoadError> PluginManager::replace(const Plugin& old, detail::StagedFile& staged, const std::string& sha) {
    const fs::path& file = old->file;
    const std::string keeps = "; " + describe(*old) + " keeps running";
    if (!old->inst->replaceable() && config_.isolation_of(old->name) == Isolation::none)
        return refuse(file, "new version not loaded",
                      {TH_E_NOT_ALLOWED, "TH_E_NOT_ALLOWED",
                       "plugin " + describe(*old) +
                           " contains a Go runtime, which can neither be unloaded nor "
                           "started twice in one process",
                       "restart the host to upgrade it" + keeps},
                      sha);
    // 1. Load and check the new version first, from its own shadow copy. No init yet.
    LoadError e;
    Plugin neu = open(file, staged, &e);
    if (!neu) {
        e.hint += keeps;
        return refuse(file, "new version refused", e, sha);
    }
    if (const LoadedPlugin* other = find_name(neu->name, old.get())) {
        return refuse(file, "new version refused",
                      {TH_E_DUPLICATE_NAME, "TH_E_DUPLICATE_NAME",
                       "it declares plugin name '" + neu->name + "', already used by " + other->file.string(),
                       "rename one of the plugins" + keeps},
                      sha);
    }
    // 2. Stop the old version: its stop calls, then its shutdown. It stays loaded until the end.
    log_->info("{}: replacing plugin {} with {}", file.string(), describe(*old), describe(*neu));
    by_file_.erase(file);
    const bool old_stopped = stop_plugins({old}, config_.shutdown_timeout);  // false: its code may still run
    if (!config_.plugin(neu->name).enabled) {
        log_->info("{}: the new version's plugin '{}' is disabled in host.toml; not started", file.string(), neu->name);
        PluginStatus d = status_of(*neu);
        d.state = PluginStatus::State::disabled;
        d.since = std::chrono::system_clock::now();
        disabled_[file] = std::move(d);
        return std::nullopt;
    }
    // 3. Init and start the new version; if either fails, bring the old one back.
    auto err = initialise(*neu);
    if (!err) err = start_tasks(neu);  // all or nothing: on failure nothing of it is scheduled, it is shut down
    if (err) {
        log_->error("{}: new version {} failed to start: {}", file.string(), describe(*neu), err->message());
        if (!old_stopped) {
            log_->error(
                "{}: the old version {} cannot be started again (its code may still be running); no "
                "version of this plugin runs until the file changes or the host restarts",
                file.string(), describe(*old));
        } else if (auto why = EndWatch(*old->inst).ended(std::chrono::seconds(2))) {
            log_->error(
                "{}: the old version {} cannot be started again: {}; no version of this plugin runs until "
                "the file changes or host.toml is applied again",
                file.string(), describe(*old), *why);
        } else {
            auto again = initialise(*old);
            if (!again) again = start_tasks(old);
            if (again) {
                log_->error("{}: the old version {} failed to start again too: {}; no version of this plugin runs",
                            file.string(), describe(*old), again->message());
            } else {
                by_file_[file] = old;
                log_->warn("{}: restored the old version {}: {}", file.string(), describe(*old), task_list(*old));
            }
        }
        failed_[file] = Failure{sha, false, false, false, {}, *err, std::chrono::system_clock::now()};
        return err;
    }
    by_file_[file] = neu;
    log_->info("{}: replaced plugin {} -> {}: {}", file.string(), describe(*old), describe(*neu), task_list(*neu));
    return std::nullopt;
}

void PluginManager::apply_config(HostConfig next) {
    if (stopping_) return;
    {
        std::lock_guard<std::mutex> lk(mu_);
        // Keys that need a restart: said once per change of the file, against what the host runs with (a key
        // set back to its running value is said to be in effect again, not "changed").
        auto restart_needed = [&](const char* key, bool differs_from_running, bool changed_in_file) {
            if (!changed_in_file) return;
            if (differs_from_running)
                log_->warn("host.toml: [host] {} changed; it takes effect after a restart", key);
            else
                log_->info("host.toml: [host] {} is back to the value the host runs with", key);
        };
        const HostConfig& file = file_config_;  // what the file said last time
        restart_needed("plugin_dir", next.plugin_dir != config_.plugin_dir, next.plugin_dir != file.plugin_dir);
        restart_needed("workers", next.workers != running_workers_, next.workers != file.workers);
        restart_needed("shadow_dir", next.shadow_dir != config_.shadow_dir, next.shadow_dir != file.shadow_dir);
        restart_needed("watch", next.watch != running_watch_, next.watch != file.watch);
        restart_needed("poll_interval", next.poll_interval != running_poll_interval_,
                       next.poll_interval != file.poll_interval);
        restart_needed("settle", next.settle != running_settle_, next.settle != file.settle);
        restart_needed("backoff_max", next.backoff_max != running_backoff_max_, next.backoff_max != file.backoff_max);
        restart_needed("abandon_after", next.abandon_after != running_abandon_after_,
                       next.abandon_after != file.abandon_after);
        restart_needed("control_socket", next.control_socket != config_.control_socket,
                       next.control_socket != file.control_socket);
        file_config_ = next;
        next.plugin_dir = config_.plugin_dir;  // keep running on what we watch
        next.shadow_dir = config_.shadow_dir;
        next.control_socket = config_.control_socket;
        const HostConfig prev = config_;
        config_ = std::move(next);
        failed_.clear();  // new settings: give refused files another chance (a restart below may fail anew)
        down_.clear();    // and plugins down after crashes
        std::vector<Plugin> changed;
        for (auto& [f, p] : by_file_)
            if (!(prev.plugin(p->name) == config_.plugin(p->name)) || prev.default_timeout != config_.default_timeout ||
                prev.jitter != config_.jitter || prev.align != config_.align ||
                prev.isolation_of(p->name) != config_.isolation_of(p->name))
                changed.push_back(p);
        // A changed plugin is restarted in place, on the library already loaded (an isolated one in its
        // process): its tasks stop, shutdown, init with the new settings, its tasks start. No reload: this is
        // what keeps a plugin with a Go runtime (never unloaded, never loaded twice) running, and it is the
        // same in both modes. Only a plugin whose code may still be running (a stop call or shutdown that did
        // not return) is not restarted: it is kept, idle, until the host exits. An isolated plugin whose
        // process-level settings changed (user, group, limits), or whose process ended during the stop, gets
        // a new process instead (below), as does a change of mode.
        for (auto& p : changed) {
            by_file_.erase(p->file);
            if (!config_.plugin(p->name).enabled) {
                log_->info("plugin '{}' disabled in host.toml: stopping it", p->name);
                stop_plugins({p}, config_.shutdown_timeout);
                continue;
            }
            const PluginSettings& was = prev.plugin(p->name);
            const PluginSettings& now = config_.plugin(p->name);
            const bool process_settings = was.user != now.user || was.group != now.group ||
                                          was.memory_max != now.memory_max ||
                                          was.open_files_max != now.open_files_max ||
                                          was.processes_max != now.processes_max;
            if (const Isolation mode = config_.isolation_of(p->name);
                mode != p->inst->mode() || (mode == Isolation::process && (process_settings || !p->inst->alive()))) {
                // Another mode, or new settings of an isolated plugin: another instance, loaded and checked
                // before the running one stops (which comes back if the new one fails), as for a new version
                // of the file. An isolated plugin's user, group and limits are those its process started with,
                // and its old process may end in its stop call or shutdown: the new settings get a new process.
                if (mode != p->inst->mode())
                    log_->info("plugin '{}': isolation changed in host.toml: moving it to isolation = \"{}\"", p->name,
                               mode == Isolation::process ? "process" : "none");
                else
                    log_->info("plugin '{}': settings changed in host.toml: restarting it in a new process", p->name);
                by_file_[p->file] = p;
                detail::StagedFile staged;
                LoadFailure rf;
                if (!pipeline_->stage(p->file, &staged, &rf)) {
                    log_->error("{}: cannot read it again: {}; plugin '{}' keeps running as it was", p->file.string(),
                                rf.reason, p->name);
                    continue;
                }
                const std::string sha = staged.sha256;
                replace(p, staged, sha);
                continue;
            }
            log_->info("plugin '{}': settings changed in host.toml: restarting it in place", p->name);
            if (!stop_plugins({p}, config_.shutdown_timeout)) {
                log_->error(
                    "plugin '{}' is not restarted with the new settings: its code may still be running (see "
                    "above), so it is kept loaded and idle until the host exits; restart the host",
                    p->name);
                continue;
            }
            if (!p->inst->alive()) {
                // Its process ended during the stop: a new one, from the file, with the new settings.
                log_->info("plugin '{}': its process ended while it stopped; starting it in a new process", p->name);
                continue;  // not in by_file_: reconcile() below loads it

            }
            auto err = initialise(*p);
            if (!err) err = start_tasks(p);
            if (err) {
                log_->error(
                    "plugin '{}' failed to start with the new settings: {}; fix [plugins.{}] in host.toml "
                    "(it is retried when host.toml or its file changes)",
                    p->name, err->message(), p->name);
                failed_[p->file] =
                    Failure{p->inst->sha256(), false, false, false, {}, *err, std::chrono::system_clock::now()};
                continue;
            }
            by_file_[p->file] = p;
            log_->info("restarted plugin {}: {}", describe(*p), task_list(*p));
        }
        publish_locked();
    }
    reconcile();
}

std::optional<LoadError> PluginManager::start_tasks(const std::shared_ptr<LoadedPlugin>& p) {
    // One anchor for the whole plugin: its tasks with the same interval come due together, one batch per
    // tick for all of them (and their first runs follow one interval after the plugin started).
    // All or nothing: if one task cannot be scheduled, the ones already added are removed (their stop calls
    // run) and the plugin is shut down, bounded, as after a failed init.
    std::string what;
    const char* adding = nullptr;  // the task being added when it failed
    // A jitter offsets each task's phase (README.md, "Schedules"): tasks whose offsets fall on one 10 ms step
    // still run as one batch. Aligned tasks come due on wall-clock multiples of their interval. The tasks are
    // added in the order of their offsets (p->scheduled keeps the plugin's order): the members of a batch then
    // sit side by side in the scheduler's slots and in memory, which the workers walk through in order.
    size_t added = 0;
    try {
        const TimePoint anchor = tickers_.clock().now();
        const WallTime wall = tickers_.clock().wall_now();
        const std::string host = config_.host_name.empty() ? machine_name() : config_.host_name;
        std::vector<std::string> capped;  // tasks whose jitter was capped at their interval (the first three)
        size_t capped_n = 0;
        std::string capped_source;
        const size_t n = p->tasks.tasks.size();
        p->scheduled.clear();
        p->scheduled.resize(n);  // filled below without allocating after an add (an entry's id 0: not added)
        std::vector<detail::Placement> where(n);
        std::vector<size_t> order(n);
        for (size_t i = 0; i < n; ++i) {
            const th_task_def& t = p->tasks.tasks[i];
            const auto [interval, timeout] = schedule_of(p->settings, t, config_.default_timeout);
            where[i] = detail::placement_of(config_, host, p->name, p->settings, t.name, interval);
            const detail::Placement& pl = where[i];
            if (pl.capped) {
                if (++capped_n <= 3) capped.push_back(std::string(t.name) + " (" + format_duration(interval) + ")");
                capped_source = pl.source;
            }
            TimePoint first = anchor + pl.offset + interval;
            if (pl.align) {  // the first multiple (plus offset) after now, by the wall clock as it reads now
                const Duration since = (wall.time_since_epoch() - pl.offset) % interval;
                first = anchor + (interval - (since < Duration::zero() ? since + interval : since));
            }
            p->scheduled[i] = {t.name, interval, timeout, 0, first, pl.jitter, pl.offset, pl.align};
            order[i] = i;
        }
        std::stable_sort(order.begin(), order.end(),
                         [&](size_t x, size_t y) { return where[x].offset < where[y].offset; });
        for (const size_t i : order) {
            const th_task_def& t = p->tasks.tasks[i];
            PluginTaskInfo& info = p->scheduled[i];
            adding = t.name;
            info.id = tickers_.add(Schedule{info.interval, info.offset, info.align, anchor},
                                   TickTask{p->name + "/" + t.name, info.timeout, p->inst->task_fn(i, t.name)});
            adding = nullptr;
            if (++added == 1) detail::fault_point("start_tasks", p->name);  // test seam
        }
        if (!capped.empty()) {
            std::string list;
            for (auto& c : capped) list += (list.empty() ? "" : ", ") + c;
            log_->warn(
                "plugin '{}': {} is longer than the interval of task(s) {}{} (the plugin's own default, not "
                "set in host.toml): capped at the interval; write a share of the interval such as \"50%\"",
                p->name, capped_source, list,
                capped_n > 3 ? " and " + std::to_string(capped_n - 3) + " more" : std::string());
        }
        watch(p);
        p->started_at = std::chrono::system_clock::now();
        return std::nullopt;
    } catch (const std::exception& e) {
        what = e.what();
    } catch (...) {
        what = "an unknown exception";
    }
    // Only the tasks added are removed (and get their stop calls).
    p->scheduled.erase(
        std::remove_if(p->scheduled.begin(), p->scheduled.end(), [](const PluginTaskInfo& t) { return t.id == 0; }),
        p->scheduled.end());
    const std::string task = adding ? adding : "";
    if (!stop_plugins({p}, config_.shutdown_timeout))
        log_->error("plugin '{}': its code may still be running after the failed start; it stays loaded", p->name);
    p->scheduled.clear();
    return LoadError{TH_E_INIT_FAILED, "TH_E_INIT_FAILED",
                     "its tasks could not be scheduled" + (task.empty() ? "" : " (task '" + task + "')") + ": " + what +
                         "; the " + std::to_string(added) +
                         " task(s) already added were removed and the plugin was "
                         "shut down",
                     "check the tasks' intervals and timeouts in host.toml and the host's memory; the file is "
                     "retried when it or host.toml changes"};
}

bool PluginManager::stop_plugins(std::vector<std::shared_ptr<LoadedPlugin>> ps, Duration bound, Duration total) {
    // An isolated plugin's process may end during its stop calls or shutdown: watched from here, to be told
    // with the plugin's name before its instance (and the report with it) is gone.
    std::vector<std::unique_ptr<EndWatch>> ends;
    for (auto& p : ps) ends.push_back(std::make_unique<EndWatch>(*p->inst));
    // Remove every task first so that all stop calls run in parallel (removal cancels a run in flight, so a
    // cooperative run returns at once and its stop call follows), then wait for each.
    for (auto& p : ps)
        for (auto& t : p->scheduled) tickers_.remove(t.id);
    const auto until = std::chrono::steady_clock::now() + bound;
    // The bound that applied: shutdown_timeout, or what the host's stop had left of it.
    const bool part = total > Duration::zero() && total != bound;
    const std::string bound_text =
        format_duration(part ? total : bound) +
        (part ? " (shutdown_timeout; " +
                    format_duration(std::chrono::duration_cast<std::chrono::milliseconds>(bound)) + " of it left)"
              : bound == config_.shutdown_timeout ? " (shutdown_timeout)"
                                                  : "");
    bool clean = true;
    for (size_t i = 0; i < ps.size(); ++i) {
        const Plugin& p = ps[i];
        bool stuck = false;
        for (auto& t : p->scheduled) {
            auto left = std::max(Duration(0), Duration(until - std::chrono::steady_clock::now()));
            StopState st = tickers_.wait_stopped(t.id, left);
            if (st != StopState::abandoned && st != StopState::timed_out) continue;
            // Name what held the stop up: the run (it did not return when cancelled), the stop call, or a
            // stop call that never started.
            std::string what = "was abandoned (it ignored its cancellation)";
            if (st == StopState::timed_out) {
                const auto a = tickers_.activity(t.id);
                if (!a) continue;  // it stopped just now
                const auto ago = [&] {
                    return "(started " + detail::format_elapsed(tickers_.clock().now() - a->since) + " ago)";
                };
                switch (a->state) {
                    case TaskActivity::State::in_run:
                        what = "was still in its run " + ago() + " when the stop bound of " + bound_text + " ran out";
                        break;
                    case TaskActivity::State::in_stop_call:
                        what = "did not finish its stop call within " + bound_text + ": still in it " + ago();
                        break;
                    case TaskActivity::State::idle:
                        what = "had not started its stop call when the stop bound of " + bound_text + " ran out";
                        break;
                    case TaskActivity::State::abandoned:
                        break;
                }
            }
            stuck = true;
            log_->error("plugin '{}': task '{}' {}; {}", p->name, t.name, what,
                        p->inst->mode() == Isolation::process ? "its process is killed"
                                                              : "the plugin is not shut down and stays loaded");
        }
        // An in-process version whose code may still be running stays mapped until the host exits: said in status.
        auto pin = [&](const char* why) {
            if (p->inst->mode() != Isolation::none) return;  // isolated: its process is killed, nothing stays
            PluginStatus ps = status_of(*p);
            ps.state = PluginStatus::State::pinned;
            ps.since = std::chrono::system_clock::now();
            ps.detail = why;
            ps.tasks.clear();
            if (pinned_.size() >= kMaxPinned) pinned_.erase(pinned_.begin());
            pinned_.push_back(std::move(ps));
        };
        if (stuck) {
            clean = false;
            p->inst->abandon();  // its code may still be running: never unmap it
            pin("a task's call did not return when it was stopped (see the log); its library stays loaded until the "
                "host exits");
            continue;
        }
        const auto left = std::max(Duration(until - std::chrono::steady_clock::now()), Duration(std::chrono::milliseconds(100)));
        if (!p->inst->shutdown(left)) {
            clean = false;
            p->inst->abandon();
            pin("its shutdown did not return in time (see the log); its library stays loaded until the host exits");
            continue;
        }
        if (auto why = ends[i]->ended(std::chrono::seconds(2)); why && !ends[i]->told_elsewhere())
            log_->warn("plugin '{}' ({}): {}, during its stop calls or shutdown", p->name, p->file.filename().string(),
                       *why);
        log_->info("unloaded plugin '{}' ({})", p->name, p->file.filename().string());
    }
    return clean;
}

bool PluginManager::unload(const fs::path& file, Duration bound) {
    std::shared_ptr<LoadedPlugin> p;
    {
        std::lock_guard<std::mutex> lk(mu_);
        auto it = by_file_.find(file);
        if (it == by_file_.end()) return false;
        p = it->second;
        by_file_.erase(it);
        stop_plugins({p}, bound);
        publish_locked();
    }
    return true;
}

bool PluginManager::unload_all(Duration bound, Duration total) {
    std::lock_guard<std::mutex> lk(mu_);
    std::vector<std::shared_ptr<LoadedPlugin>> ps;
    for (auto& [f, p] : by_file_) ps.push_back(p);
    by_file_.clear();
    if (ps.empty()) return true;
    const bool clean = stop_plugins(std::move(ps), bound, total);
    publish_locked();
    return clean;
}

namespace {
PluginInfo info_of(const LoadedPlugin& p) {
    const th_plugin_def& d = p.inst->def();
    return PluginInfo{p.name,           d.version ? d.version : "", d.description ? d.description : "", p.file,
                      p.inst->shadow(),  p.inst->sha256(),          p.scheduled,
                      p.inst->mode(),   p.inst->pid()};
}
}  // namespace

const char* state_name(PluginStatus::State s) {
    switch (s) {
        case PluginStatus::State::running:
            return "running";
        case PluginStatus::State::refused:
            return "refused";
        case PluginStatus::State::disabled:
            return "disabled";
        case PluginStatus::State::backing_off:
            return "backing_off";
        case PluginStatus::State::down:
            return "down";
        case PluginStatus::State::pinned:
            return "pinned";
    }
    return "unknown";
}

PluginStatus PluginManager::status_of(const LoadedPlugin& p) const {
    const th_plugin_def& d = p.inst->def();
    PluginStatus s;
    s.state = PluginStatus::State::running;
    s.name = p.name;
    s.file = p.file;
    s.version = d.version ? d.version : "";
    s.description = d.description ? d.description : "";
    s.sha256 = p.inst->sha256();
    s.isolation = p.inst->mode();
    s.pid = p.inst->pid();
    s.since = p.started_at;
    s.tasks = p.scheduled;
    return s;
}

void PluginManager::publish_locked() noexcept {
    try {
        auto all = std::make_shared<std::vector<PluginStatus>>();
        for (auto& [f, p] : by_file_) {
            all->push_back(status_of(*p));
            if (auto it = failed_.find(f); it != failed_.end() && it->second.error)
                all->back().error = it->second.error;
        }
        for (auto& [f, d] : down_)
            if (!by_file_.count(f)) all->push_back(d.status);
        for (auto& [f, d] : disabled_)
            if (!by_file_.count(f) && !down_.count(f)) all->push_back(d);
        for (auto& [f, why] : failed_) {
            if (by_file_.count(f) || down_.count(f) || disabled_.count(f)) continue;
            PluginStatus r;
            r.state = PluginStatus::State::refused;
            r.name = f.stem().string();
            r.file = f;
            // A file refused before it was hashed is known by its identity (size, time, inode), not a sha256.
            if (why.sha256.size() == 64 && why.sha256.find_first_not_of("0123456789abcdef") == std::string::npos)
                r.sha256 = why.sha256;
            r.isolation = config_.isolation_of(r.name);
            r.since = why.when;
            r.error =
                why.error
                    ? why.error
                    : std::optional<LoadError>(LoadError{TH_E_NOT_A_LIBRARY, "TH_E_NOT_A_LIBRARY", why.message, ""});
            all->push_back(std::move(r));
        }
        for (auto& p : pinned_) all->push_back(p);
        std::lock_guard<std::mutex> lk(status_mu_);
        published_ = std::move(all);
    } catch (...) {
        // Out of memory: status() shows the previous state. Nothing else depends on it.
    }
}

std::vector<PluginStatus> PluginManager::status() const {
    std::shared_ptr<const std::vector<PluginStatus>> p;
    {
        std::lock_guard<std::mutex> lk(status_mu_);
        p = published_;
    }
    return p ? *p : std::vector<PluginStatus>{};
}

std::vector<PluginInfo> PluginManager::plugins() const {
    std::lock_guard<std::mutex> lk(mu_);
    std::vector<PluginInfo> out;
    for (auto& [f, p] : by_file_) out.push_back(info_of(*p));
    return out;
}

std::optional<PluginInfo> PluginManager::plugin(const std::string& name) const {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto& [f, p] : by_file_)
        if (p->name == name) return info_of(*p);
    return std::nullopt;
}

}  // namespace tickhost
