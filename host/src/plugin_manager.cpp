#include <tickhost/logging.hpp>
#include <tickhost/plugin_manager.hpp>

#include "host_api.hpp"
#include "loader.hpp"
#include "time_format.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <set>
#include <thread>

#include <sys/stat.h>

namespace fs = std::filesystem;

namespace tickhost {
namespace detail {

// One loaded plugin version: its library, its state, its tasks. Shared by the manager and by every task
// binding, so the library stays mapped while any run or stop call of it may execute.
struct LoadedPlugin {
    std::shared_ptr<Library> lib;
    fs::path file;
    std::string name;
    PluginSettings settings;  // a copy: the plugin's config values must not change under it
    CtxOwner owner;           // init's context: plugin-level services
    std::unique_ptr<ContextSlot> ctx;
    void* state = nullptr;
    bool initialised = false;
    std::vector<th_task_def> tasks;  // static then dynamic, copied
    std::vector<std::unique_ptr<std::string>> task_names;
    std::vector<PluginTaskInfo> scheduled;
};

// What a scheduled plugin task holds: its context and a reference to its plugin.
struct TaskBinding {
    CtxOwner owner;
    ContextSlot ctx{&owner};
    th_run_fn run = nullptr;
    void* state = nullptr;
    std::shared_ptr<LoadedPlugin> plugin;
};

}  // namespace detail

using detail::LoadedPlugin;
using detail::LoadFailure;
using detail::TaskBinding;

namespace {

LoadError to_error(const LoadFailure& f) { return LoadError{f.code, detail::status_name(f.code), f.reason, f.hint}; }

TaskResult run_result(th_status st, std::string err) {
    switch (st) {
    case TH_OK: return TaskResult::success();
    case TH_ERROR:
        return TaskResult::failure(err.empty() ? "returned TH_ERROR without a message (call set_error)" : std::move(err));
    case TH_CANCELLED: return TaskResult::failure(err.empty() ? "cancelled" : "cancelled: " + err);
    default:
        return TaskResult::failure("returned unknown status " + std::to_string(st) + (err.empty() ? "" : ": " + err));
    }
}

// Runs `fn` on a thread of its own and waits up to `bound` for it to return. C++ cannot stop a thread: if
// `fn` does not return in time it is left running, and the caller must keep the plugin's code mapped.
bool call_bounded(std::function<void()> fn, Duration bound) {
    struct Done {
        std::mutex mu;
        std::condition_variable cv;
        bool done = false;
    };
    auto d = std::make_shared<Done>();
    std::thread t([d, fn = std::move(fn)] {
        fn();
        std::lock_guard<std::mutex> lk(d->mu);
        d->done = true;
        d->cv.notify_all();
    });
    bool returned;
    {
        std::unique_lock<std::mutex> lk(d->mu);
        returned = d->cv.wait_for(lk, bound, [&] { return d->done; });
    }
    if (returned)
        t.join();
    else
        t.detach();  // holds what it needs (shared pointers); ends if the plugin's code ever returns
    return returned;
}

// A plugin whose code may still run (a stuck stop call, an abandoned run, a shutdown that never returned)
// is never shut down or unloaded: it is kept, with its state, for the life of the process. Held in a list
// that is never destroyed, so that its state stays reachable for the code that may still use it (and leak
// checkers see a deliberate keep, not a leak).
void keep_forever(std::shared_ptr<LoadedPlugin> p) {
    static std::mutex mu;
    static auto* kept = new std::vector<std::shared_ptr<LoadedPlugin>>;
    p->lib->pin();
    std::lock_guard<std::mutex> lk(mu);
    kept->push_back(std::move(p));
}

// What an init call leaves behind, shared with the thread that makes it (which may outlive the wait).
struct InitCall {
    th_status status = TH_OK;
    void* state = nullptr;
    std::vector<th_task_def> declared;
    std::vector<std::unique_ptr<std::string>> names;
};

std::chrono::steady_clock::time_point steady(TimePoint t) {
    return std::chrono::steady_clock::time_point(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        t.time_since_epoch()));
}

}  // namespace

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
    cache_ = std::make_unique<detail::ShadowCache>(config_.shadow_dir, log_);
}

PluginManager::~PluginManager() { unload_all(config_.shutdown_timeout); }

const fs::path& PluginManager::shadow_dir() const { return cache_->dir(); }

size_t PluginManager::load_directory() {
    reconcile();
    std::lock_guard<std::mutex> lk(mu_);
    log_->info("{} plugin(s) loaded from {}", by_file_.size(), config_.plugin_dir.string());
    return by_file_.size();
}

void PluginManager::reconcile() {
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
    for (auto& f : gone) sync_locked(f);
    for (auto& f : files) sync_locked(f);
}

std::optional<LoadError> PluginManager::load(const fs::path& file) {
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
    return sync_locked(file);
}

std::optional<LoadError> PluginManager::sync(const fs::path& file) {
    std::lock_guard<std::mutex> lk(mu_);
    return sync_locked(file);
}

bool PluginManager::retry_worthy(const fs::path& file) const {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = failed_.find(file);
    return it != failed_.end() && it->second.retry && !it->second.retried;
}

std::optional<LoadError> PluginManager::refuse(const fs::path& file, const std::string& what, LoadError e,
                                               const std::string& sha256) {
    log_->error("{}: {}: {}", file.string(), what, e.message());
    Failure& f = failed_[file];
    // A file refused by the loader right after it changed may be half written: worth one retry.
    const bool again = f.sha256 == sha256 && !sha256.empty();
    f.retried = again;
    f.sha256 = sha256;
    f.retry = e.code == TH_E_NOT_A_LIBRARY;
    f.duplicate = e.code == TH_E_DUPLICATE_NAME;
    return e;
}

std::optional<LoadError> PluginManager::sync_locked(const fs::path& file) {
    auto it = by_file_.find(file);
    Plugin old = it == by_file_.end() ? nullptr : it->second;
    struct stat st {};
    // lstat: a dangling symlink is there (and refused by name), not silently absent.
    const bool present = ::lstat(file.c_str(), &st) == 0;
    if (!present) {
        failed_.erase(file);
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
    std::string bytes;
    LoadFailure rf;
    if (!detail::check_plugin_dir(file.parent_path(), policy(), &rf) ||
        !detail::read_plugin_file(file, &bytes, &rf, policy())) {
        if (old) {
            log_->error("{}: cannot read the new version: {}; plugin '{}' keeps running", file.string(), rf.reason,
                        old->name);
            return to_error(rf);
        }
        return refuse(file, "not loaded", to_error(rf), "");
    }
    const std::string sha = detail::sha256_hex(bytes);
    // A pin on the file's own name is checked before any of its code runs (dlopen runs static constructors).
    if (auto e = pin_mismatch(file.stem().string(), file, sha)) {
        if (old) e->hint += "; " + old->name + " keeps running";
        return refuse(file, old ? "new version refused" : "not loaded", *e, sha);
    }
    if (old && old->lib->sha256() == sha) {
        log_->debug("{}: content unchanged (sha256 {}); nothing to do", file.string(), sha.substr(0, 12));
        failed_.erase(file);
        return std::nullopt;
    }
    auto f = failed_.find(file);
    if (f != failed_.end() && f->second.sha256 == sha && (!f->second.retry || f->second.retried)) {
        log_->debug("{}: same content that was refused before; still refused", file.string());
        return LoadError{TH_E_NOT_A_LIBRARY, "TH_E_NOT_A_LIBRARY", "refused before (see above)", ""};
    }
    auto result = old ? replace(old, bytes, sha) : add_new(file, bytes, sha);
    if (!result) failed_.erase(file);
    return result;
}

PluginManager::Plugin PluginManager::prepare(const fs::path& file, const std::string& bytes, LoadError* err) {
    LoadFailure f;
    auto lib = detail::Library::load(file, bytes, *cache_, log_, &f);
    if (!lib) {
        *err = to_error(f);
        return nullptr;
    }
    // A pin on the name the plugin declares (the file may be named otherwise). Its entry point has run.
    if (auto e = pin_mismatch(lib->def().name, file, lib->sha256())) {
        *err = *e;
        return nullptr;
    }
    auto p = std::make_shared<LoadedPlugin>();
    p->lib = lib;
    p->file = file;
    p->name = lib->def().name;
    p->owner.plugin = p->name;
    p->owner.logger = get_logger("plugin." + p->name);
    p->ctx = std::make_unique<detail::ContextSlot>(&p->owner);
    return p;
}

std::optional<LoadError> PluginManager::pin_mismatch(const std::string& name, const fs::path& file,
                                                    const std::string& sha) const {
    auto it = config_.plugins.find(name);
    if (it == config_.plugins.end() || it->second.sha256.empty() || it->second.sha256 == sha) return std::nullopt;
    return LoadError{TH_E_CHECKSUM_MISMATCH, "TH_E_CHECKSUM_MISMATCH",
                     "its sha256 is " + sha + " but host.toml pins [plugins." + name + "] sha256 = \"" +
                         it->second.sha256 + "\"",
                     "install the file that was pinned, or pin this one (sha256sum " + file.string() + ")"};
}

detail::FilePolicy PluginManager::policy() const { return {config_.allow_insecure, config_.allow_symlinks}; }

const LoadedPlugin* PluginManager::find_name(const std::string& name, const LoadedPlugin* except) const {
    for (auto& [f, p] : by_file_)
        if (p.get() != except && p->name == name) return p.get();
    return nullptr;
}

std::optional<LoadError> PluginManager::initialise(LoadedPlugin& p, const PluginSettings* settings) {
    const th_plugin_def& def = p.lib->def();
    p.settings = settings ? *settings : config_.plugin(p.name);
    p.owner.config = &p.settings.config;
    p.tasks.clear();
    p.task_names.clear();
    p.scheduled.clear();
    p.state = nullptr;
    for (uint32_t i = 0; i < def.task_count; ++i) p.tasks.push_back(def.tasks[i]);
    // init runs on a thread of its own, bounded by the plugin's timeout, so that an init that never returns
    // costs one thread and its memory, not the loader (and with it every later load, reload and stop).
    const Duration bound = p.settings.timeout ? *p.settings.timeout : config_.default_timeout;
    if (def.init) {
        auto call = std::make_shared<InitCall>();
        p.owner.init_tasks = &call->declared;
        p.owner.init_names = &call->names;
        th_ctx c = p.ctx->open(nullptr, 0, std::chrono::steady_clock::now() + bound);
        const bool returned = call_bounded([call, lib = p.lib, c] { call->status = lib->def().init(c, &call->state); },
                                           bound);
        std::string err = p.ctx->close_init();  // from here on its context is stale, add_task refused
        if (!returned) {
            p.lib->pin();  // its init may still be running: never unmap it; whatever it allocated is leaked
            return LoadError{TH_E_INIT_FAILED, "TH_E_INIT_FAILED",
                             "init did not return within " + format_duration(bound) +
                                 "; the plugin is refused, its init is left running and its library stays mapped "
                                 "until the host exits",
                             "fix the plugin's init (it must return; long work belongs in a task), or raise "
                             "[plugins." + p.name + "] timeout in host.toml"};
        }
        if (call->status != TH_OK)
            return LoadError{TH_E_INIT_FAILED, "TH_E_INIT_FAILED",
                             "init returned " + detail::status_name(call->status) + (err.empty() ? "" : ": " + err),
                             "check [plugins." + p.name + ".config] in host.toml and the plugin's documentation"};
        p.state = call->state;
        for (auto& d : call->declared) p.tasks.push_back(d);
        for (auto& n : call->names) p.task_names.push_back(std::move(n));
    }
    p.initialised = true;
    // Tasks declared from init get the same checks as static ones.
    auto undo = [&](LoadFailure f) {
        if (def.shutdown && !shutdown(p, bound)) p.lib->pin();
        p.initialised = false;
        return to_error(f);
    };
    std::set<std::string> seen;
    LoadFailure f;
    for (auto& t : p.tasks) {
        if (!detail::validate_task(t, &f)) return undo(f);
        if (!seen.insert(t.name).second)
            return undo({TH_E_BAD_DESCRIPTOR, "two tasks are named '" + std::string(t.name) + "'",
                         "give each task a unique name"});
    }
    if (p.tasks.empty())
        return undo({TH_E_NO_TASKS, "the plugin declared no task", "declare at least one task (or check its config)"});
    for (auto& [task, _] : p.settings.tasks)
        if (!seen.count(task)) {
            std::string all;
            for (auto& n : seen) all += (all.empty() ? "" : ", ") + n;
            log_->warn("host.toml sets [plugins.{}.tasks.{}] but plugin '{}' has no task '{}' (it has: {})", p.name,
                       task, p.name, task, all);
        }
    return std::nullopt;
}

namespace {
std::string describe(const LoadedPlugin& p) {
    const th_plugin_def& d = p.lib->def();
    return "'" + p.name + "' " + (d.version && *d.version ? d.version : "(no version)") + " [sha256 " +
           p.lib->sha256().substr(0, 12) + "]";
}
std::string task_list(const LoadedPlugin& p) {
    std::string s;
    for (auto& t : p.scheduled)
        s += (s.empty() ? "" : ", ") + t.name + " every " + format_duration(t.interval) + " (timeout " +
             format_duration(t.timeout) + ")";
    return s;
}
}  // namespace

std::optional<LoadError> PluginManager::add_new(const fs::path& file, const std::string& bytes, const std::string& sha) {
    LoadError e;
    Plugin p = prepare(file, bytes, &e);
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
        return std::nullopt;
    }
    if (auto err = initialise(*p)) return refuse(file, "not loaded", *err, sha);
    start_tasks(p);
    by_file_[file] = p;
    const th_plugin_def& d = p->lib->def();
    log_->info("loaded plugin {} from {}{}{}: {}", describe(*p), file.filename().string(),
               d.description && *d.description ? " — " : "", d.description ? d.description : "", task_list(*p));
    return std::nullopt;
}

std::optional<LoadError> PluginManager::replace(const Plugin& old, const std::string& bytes, const std::string& sha) {
    const fs::path& file = old->file;
    const std::string keeps = "; " + describe(*old) + " keeps running";
    if (old->lib->has_go_runtime())
        return refuse(file, "new version not loaded",
                      {TH_E_NOT_ALLOWED, "TH_E_NOT_ALLOWED",
                       "plugin " + describe(*old) + " contains a Go runtime, which can neither be unloaded nor "
                       "started twice in one process",
                       "restart the host to upgrade it"},
                      sha);
    // 1. Load and check the new version first, from its own shadow copy. No init yet.
    LoadError e;
    Plugin neu = prepare(file, bytes, &e);
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
    stop_plugins({old}, config_.shutdown_timeout);
    if (!config_.plugin(neu->name).enabled) {
        log_->info("{}: the new version's plugin '{}' is disabled in host.toml; not started", file.string(), neu->name);
        return std::nullopt;
    }
    // 3. Init and start the new version; if its init fails, bring the old one back.
    if (auto err = initialise(*neu)) {
        log_->error("{}: new version {} failed to start: {}", file.string(), describe(*neu), err->message());
        if (!old->lib->pinned()) {
            if (auto again = initialise(*old)) {
                log_->error("{}: the old version {} failed to start again too: {}; no version of this plugin runs",
                            file.string(), describe(*old), again->message());
            } else {
                start_tasks(old);
                by_file_[file] = old;
                log_->warn("{}: restored the old version {}: {}", file.string(), describe(*old), task_list(*old));
            }
        }
        failed_[file] = Failure{sha, false, false};
        return err;
    }
    start_tasks(neu);
    by_file_[file] = neu;
    log_->info("{}: replaced plugin {} -> {}: {}", file.string(), describe(*old), describe(*neu), task_list(*neu));
    return std::nullopt;
}

void PluginManager::apply_config(HostConfig next) {
    {
        std::lock_guard<std::mutex> lk(mu_);
        auto restart_needed = [&](const char* key, bool changed) {
            if (changed) log_->warn("host.toml: [host] {} changed; it takes effect after a restart", key);
        };
        restart_needed("plugin_dir", next.plugin_dir != config_.plugin_dir);
        restart_needed("workers", next.workers != config_.workers);
        restart_needed("shadow_dir", next.shadow_dir != config_.shadow_dir);
        restart_needed("watch", next.watch != config_.watch);
        restart_needed("poll_interval", next.poll_interval != config_.poll_interval);
        restart_needed("settle", next.settle != config_.settle);
        next.plugin_dir = config_.plugin_dir;  // keep running on what we watch
        next.shadow_dir = config_.shadow_dir;
        const HostConfig prev = config_;
        config_ = std::move(next);
        std::vector<Plugin> changed;
        for (auto& [f, p] : by_file_)
            if (!(prev.plugin(p->name) == config_.plugin(p->name)) || prev.default_timeout != config_.default_timeout)
                changed.push_back(p);
        for (auto& p : changed) {
            by_file_.erase(p->file);
            if (!config_.plugin(p->name).enabled) {
                log_->info("plugin '{}' disabled in host.toml: stopping it", p->name);
                stop_plugins({p}, config_.shutdown_timeout);
                continue;
            }
            log_->info("plugin '{}': settings changed in host.toml: restarting it", p->name);
            stop_plugins({p}, config_.shutdown_timeout);
            if (p->lib->pinned()) continue;
            if (auto err = initialise(*p)) {
                log_->error("plugin '{}' failed to start with the new settings: {}", p->name, err->message());
                failed_[p->file] = Failure{p->lib->sha256(), false, false};
                continue;
            }
            start_tasks(p);
            by_file_[p->file] = p;
            log_->info("restarted plugin {}: {}", describe(*p), task_list(*p));
        }
        failed_.clear();  // new settings: give refused files another chance
    }
    reconcile();
}

namespace {
// host.toml's task setting, then its plugin setting, then the plugin's own default.
std::pair<Duration, Duration> schedule_of(const PluginSettings& s, const th_task_def& t, Duration default_timeout) {
    auto it = s.tasks.find(t.name);
    const TaskSettings* ts = it == s.tasks.end() ? nullptr : &it->second;
    const Duration interval = ts && ts->interval ? *ts->interval
                              : s.interval       ? *s.interval
                                                 : Duration(t.default_interval_ns);
    const Duration timeout = ts && ts->timeout          ? *ts->timeout
                             : s.timeout                ? *s.timeout
                             : t.default_timeout_ns > 0 ? Duration(t.default_timeout_ns)
                                                        : default_timeout;
    return {interval, timeout};
}

// The adapter between the scheduler and a plugin task: a context for each call, the C call, its status.
TickTask make_tick_task(const std::shared_ptr<LoadedPlugin>& p, const th_task_def& t, Duration timeout) {
    auto b = std::make_shared<TaskBinding>();
    b->owner.plugin = p->name;
    b->owner.task = t.name;
    b->owner.logger = p->owner.logger;
    b->owner.config = &p->settings.config;
    b->run = t.run;
    b->state = t.state ? t.state : p->state;
    b->plugin = p;  // keeps the library mapped for as long as the task exists in the registry
    return TickTask{p->name + "/" + t.name, timeout, [b](RunContext& rc, bool is_stop) {
                        th_ctx c = b->ctx.open(&rc.cancel_word(), rc.cancel_value(), steady(rc.deadline()), steady(rc.due()));
                        th_status st = b->run(b->state, c, is_stop ? 1 : 0);
                        return run_result(st, b->ctx.close());
                    }};
}
}  // namespace

void PluginManager::start_tasks(const std::shared_ptr<LoadedPlugin>& p) {
    // One anchor for the whole plugin: its tasks with the same interval come due together, one batch per
    // tick for all of them (and their first runs follow one interval after the plugin started).
    const TimePoint anchor = tickers_.clock().now();
    for (auto& t : p->tasks) {
        const auto [interval, timeout] = schedule_of(p->settings, t, config_.default_timeout);
        p->scheduled.push_back({t.name, interval, timeout,
                                tickers_.add(interval, make_tick_task(p, t, timeout), anchor + interval),
                                anchor + interval});
    }
}

bool PluginManager::stop_plugins(std::vector<std::shared_ptr<LoadedPlugin>> ps, Duration bound) {
    // Remove every task first so that all stop calls run in parallel (removal cancels a run in flight, so a
    // cooperative run returns at once and its stop call follows), then wait for each.
    for (auto& p : ps)
        for (auto& t : p->scheduled) tickers_.remove(t.id);
    const auto until = std::chrono::steady_clock::now() + bound;
    const std::string bound_text =
        format_duration(bound) + (bound == config_.shutdown_timeout ? " (shutdown_timeout)" : "");
    bool clean = true;
    for (auto& p : ps) {
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
            log_->error("plugin '{}': task '{}' {}; the plugin is not shut down and stays loaded", p->name, t.name,
                        what);
        }
        if (stuck) {
            clean = false;
            keep_forever(p);  // its code may still be running: never unmap it
            continue;
        }
        const auto left = std::max(Duration(until - std::chrono::steady_clock::now()), Duration(std::chrono::milliseconds(100)));
        if (p->initialised && p->lib->def().shutdown && !shutdown(*p, left)) {
            clean = false;
            p->initialised = false;
            keep_forever(p);
            continue;
        }
        p->initialised = false;
        log_->info("unloaded plugin '{}' ({})", p->name, p->file.filename().string());
    }
    return clean;
}

bool PluginManager::shutdown(LoadedPlugin& p, Duration bound) {
    const th_shutdown_fn fn = p.lib->def().shutdown;
    if (call_bounded([fn, state = p.state, lib = p.lib] { fn(state); }, bound)) return true;
    log_->error("plugin '{}': shutdown did not return within {}; it is left running and its library stays mapped "
                "until the host exits",
                p.name, format_duration(bound));
    return false;
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
    }
    return true;
}

bool PluginManager::unload_all(Duration bound) {
    std::lock_guard<std::mutex> lk(mu_);
    std::vector<std::shared_ptr<LoadedPlugin>> ps;
    for (auto& [f, p] : by_file_) ps.push_back(p);
    by_file_.clear();
    if (ps.empty()) return true;
    return stop_plugins(std::move(ps), bound);
}

namespace {
PluginInfo info_of(const LoadedPlugin& p) {
    const th_plugin_def& d = p.lib->def();
    return PluginInfo{p.name, d.version ? d.version : "", d.description ? d.description : "", p.file,
                      p.lib->shadow(), p.lib->sha256(), p.scheduled};
}
}  // namespace

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

// ---- authors' tools ------------------------------------------------------------------------------------

std::optional<PluginFileInfo> PluginManager::inspect(const fs::path& file, LoadError* err) {
    std::lock_guard<std::mutex> lk(mu_);
    std::string bytes;
    LoadFailure rf;
    if (!detail::read_plugin_file(file, &bytes, &rf)) {
        if (err) *err = to_error(rf);
        return std::nullopt;
    }
    LoadError e;
    Plugin p = prepare(file, bytes, &e);
    if (!p) {
        if (err) *err = e;
        return std::nullopt;
    }
    const th_plugin_def& d = p->lib->def();
    PluginFileInfo info;
    info.file = file;
    info.sha256 = p->lib->sha256();
    info.name = p->name;
    info.version = d.version ? d.version : "";
    info.description = d.description ? d.description : "";
    info.abi_major = d.abi_major;
    info.abi_minor = d.abi_minor;
    info.has_init = d.init != nullptr;
    info.has_shutdown = d.shutdown != nullptr;
    for (uint32_t i = 0; i < d.task_count; ++i)
        info.tasks.push_back(
            {d.tasks[i].name, Duration(d.tasks[i].default_interval_ns), Duration(d.tasks[i].default_timeout_ns)});
    return info;  // p goes: unload, shadow copy deleted
}

std::optional<RunOnceReport> PluginManager::run_once(const fs::path& file, const RunOnceOptions& options,
                                                     LoadError* err) {
    std::lock_guard<std::mutex> lk(mu_);
    auto fail = [&](LoadError e) -> std::optional<RunOnceReport> {
        if (err) *err = std::move(e);
        return std::nullopt;
    };
    std::string bytes;
    LoadFailure rf;
    if (!detail::read_plugin_file(file, &bytes, &rf)) return fail(to_error(rf));
    LoadError e;
    Plugin p = prepare(file, bytes, &e);
    if (!p) return fail(e);
    PluginSettings settings = config_.plugin(p->name);
    for (auto& [k, v] : options.config.all()) settings.config.set(k, v);
    if (auto ie = initialise(*p, &settings)) return fail(*ie);

    RunOnceReport report;
    const th_task_def* chosen = nullptr;
    for (auto& t : p->tasks) {
        report.all_tasks.push_back(t.name);
        if (!chosen && (options.task.empty() || options.task == t.name)) chosen = &t;
    }
    const th_plugin_def& def = p->lib->def();
    if (!chosen) {
        if (def.shutdown) def.shutdown(p->state);
        p->initialised = false;
        std::string all;
        for (auto& n : report.all_tasks) all += (all.empty() ? "" : ", ") + n;
        return fail({TH_E_NOT_FOUND, "TH_E_NOT_FOUND",
                     "plugin '" + p->name + "' has no task '" + options.task + "' (it has: " + all + ")",
                     "name one of its tasks"});
    }
    auto [interval, timeout] = schedule_of(p->settings, *chosen, config_.default_timeout);
    if (options.timeout) timeout = *options.timeout;

    // Record what the adapter returns for the run and for the stop call, as the scheduler sees it.
    struct Record {
        std::mutex mu;
        std::condition_variable cv;
        TaskCallReport run, stop;
    };
    auto rec = std::make_shared<Record>();
    TickTask inner = make_tick_task(p, *chosen, timeout);
    TickTask task{inner.name, timeout, [fn = std::move(inner.fn), rec](RunContext& rc, bool is_stop) {
                      const auto t0 = std::chrono::steady_clock::now();
                      TaskResult r = fn(rc, is_stop);
                      const Duration took = std::chrono::steady_clock::now() - t0;
                      {
                          std::lock_guard<std::mutex> g(rec->mu);
                          TaskCallReport& c = is_stop ? rec->stop : rec->run;
                          c = TaskCallReport{true, r.ok, r.error, took, rc.remaining() < Duration(0)};
                      }
                      rec->cv.notify_all();
                      return r;
                  }};
    // One run, due now. The interval only has to be long enough that no second run is due before remove().
    const TaskId id = tickers_.add(std::chrono::hours(24 * 365), std::move(task), tickers_.clock().now());
    {
        // The Tickers abandon a run that ignores its cancellation some seconds past its deadline; wait longer.
        std::unique_lock<std::mutex> g(rec->mu);
        rec->cv.wait_for(g, timeout + std::chrono::seconds(30), [&] { return rec->run.called; });
    }
    tickers_.remove(id);
    report.stop_state = tickers_.wait_stopped(id, timeout + std::chrono::seconds(30));
    {
        std::lock_guard<std::mutex> g(rec->mu);
        report.run = rec->run;
        report.stop = rec->stop;
    }
    p->scheduled.push_back({chosen->name, interval, timeout, id});
    report.plugin = info_of(*p);
    if (report.stop_state == StopState::stopped) {
        if (def.shutdown) def.shutdown(p->state);
        p->initialised = false;
    } else {
        p->lib->pin();  // its code may still be running: never unmap it
    }
    return report;  // the last reference to p goes with the Tickers' copy of the task: unload
}

}  // namespace tickhost
