#include <tickhost/logging.hpp>
#include <tickhost/plugin_manager.hpp>

#include "host_api.hpp"
#include "loader.hpp"
#include "time_format.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>

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
    std::lock_guard<std::mutex> lk(mu_);
    const fs::path& dir = config_.plugin_dir;
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) {
        log_->error("plugin_dir {} is not a directory{}; create it or fix [host] plugin_dir in {}", dir.string(),
                    ec ? " (" + ec.message() + ")" : "", config_.source.empty() ? "host.toml" : config_.source.string());
        return 0;
    }
    std::vector<fs::path> files;
    for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec))
        if (is_plugin_file_name(it->path())) files.push_back(it->path());
    std::sort(files.begin(), files.end());
    size_t loaded = 0;
    for (auto& f : files)
        if (!load_locked(f) && by_file_.count(f)) ++loaded;
    log_->info("{} plugin(s) loaded from {}", loaded, dir.string());
    return loaded;
}

std::optional<LoadError> PluginManager::load(const fs::path& file) {
    std::lock_guard<std::mutex> lk(mu_);
    return load_locked(file);
}

std::optional<LoadError> PluginManager::load_locked(const fs::path& file) {
    auto refuse = [&](const LoadFailure& f) {
        LoadError e = to_error(f);
        log_->error("{}: not loaded: {}", file.string(), e.message());
        return std::optional<LoadError>(e);
    };
    if (by_file_.count(file)) {
        return refuse({TH_E_DUPLICATE_NAME, "a plugin is already loaded from this file",
                       "unload it first (or replace the file to upgrade it)"});
    }
    LoadFailure f;
    auto lib = detail::Library::load(file, *cache_, log_, &f);
    if (!lib) return refuse(f);
    const th_plugin_def& def = lib->def();
    const std::string name = def.name;
    for (auto& [other_file, other] : by_file_)
        if (other->name == name)
            return refuse({TH_E_DUPLICATE_NAME, "plugin name '" + name + "' is already used by " + other_file.string(),
                           "remove one of the two files; plugin names key [plugins.<name>] and must be unique"});
    const PluginSettings& settings = config_.plugin(name);
    if (!settings.enabled) {
        log_->info("{}: plugin '{}' is disabled in host.toml ([plugins.{}] enabled = false); not started",
                   file.string(), name, name);
        return std::nullopt;
    }

    auto p = std::make_shared<LoadedPlugin>();
    p->lib = lib;
    p->file = file;
    p->name = name;
    p->settings = settings;
    p->owner.plugin = name;
    p->owner.logger = get_logger("plugin." + name);
    p->owner.config = &p->settings.config;
    p->ctx = std::make_unique<detail::ContextSlot>(&p->owner);
    for (uint32_t i = 0; i < def.task_count; ++i) p->tasks.push_back(def.tasks[i]);

    if (def.init) {
        std::vector<th_task_def> declared;
        std::vector<std::unique_ptr<std::string>> names;
        p->owner.init_tasks = &declared;
        p->owner.init_names = &names;
        th_ctx c = p->ctx->open(nullptr, std::chrono::steady_clock::now() + config_.default_timeout);
        void* state = nullptr;
        th_status st = def.init(c, &state);
        std::string err = p->ctx->close_init();
        if (st != TH_OK) {
            return refuse({TH_E_INIT_FAILED,
                           "init returned " + detail::status_name(st) + (err.empty() ? "" : ": " + err),
                           "check [plugins." + name + ".config] in host.toml and the plugin's documentation"});
        }
        p->state = state;
        p->initialised = true;
        for (auto& d : declared) p->tasks.push_back(d);
        for (auto& n : names) p->task_names.push_back(std::move(n));
    } else {
        p->initialised = true;
    }

    // Tasks declared from init get the same checks as static ones.
    auto undo_init = [&] {
        if (def.shutdown) def.shutdown(p->state);
    };
    std::set<std::string> seen;
    for (auto& t : p->tasks) {
        if (!detail::validate_task(t, &f)) {
            undo_init();
            return refuse(f);
        }
        if (!seen.insert(t.name).second) {
            undo_init();
            return refuse({TH_E_BAD_DESCRIPTOR, "two tasks are named '" + std::string(t.name) + "'",
                           "give each task a unique name"});
        }
    }
    if (p->tasks.empty()) {
        undo_init();
        return refuse({TH_E_NO_TASKS, "the plugin declared no task", "declare at least one task (or check its config)"});
    }
    for (auto& [task, _] : settings.tasks)
        if (!seen.count(task))
            log_->warn("host.toml sets [plugins.{}.tasks.{}] but plugin '{}' has no task '{}' (it has: {})", name, task,
                       name, task, [&] {
                           std::string all;
                           for (auto& s : seen) all += (all.empty() ? "" : ", ") + s;
                           return all;
                       }());

    start_tasks(p);
    by_file_[file] = p;
    std::string tasks;
    for (auto& t : p->scheduled)
        tasks += (tasks.empty() ? "" : ", ") + t.name + " every " + format_duration(t.interval) + " (timeout " +
                 format_duration(t.timeout) + ")";
    log_->info("loaded plugin '{}' {} from {} [sha256 {}]: {}", name, def.version ? def.version : "(no version)",
               file.filename().string(), lib->sha256().substr(0, 12), tasks);
    return std::nullopt;
}

void PluginManager::start_tasks(const std::shared_ptr<LoadedPlugin>& p) {
    for (auto& t : p->tasks) {
        auto it = p->settings.tasks.find(t.name);
        const TaskSettings* ts = it == p->settings.tasks.end() ? nullptr : &it->second;
        // host.toml's task setting, then its plugin setting, then the plugin's own default.
        const Duration interval = ts && ts->interval ? *ts->interval
                                  : p->settings.interval ? *p->settings.interval
                                                         : Duration(t.default_interval_ns);
        const Duration timeout = ts && ts->timeout ? *ts->timeout
                                 : p->settings.timeout ? *p->settings.timeout
                                 : t.default_timeout_ns > 0 ? Duration(t.default_timeout_ns)
                                                            : config_.default_timeout;
        auto b = std::make_shared<TaskBinding>();
        b->owner.plugin = p->name;
        b->owner.task = t.name;
        b->owner.logger = p->owner.logger;
        b->owner.config = &p->settings.config;
        b->run = t.run;
        b->state = t.state ? t.state : p->state;
        b->plugin = p;  // keeps the library mapped for as long as the task exists in the registry
        TickTask task{p->name + "/" + t.name, timeout, [b](RunContext& rc, bool is_stop) {
                          th_ctx c = b->ctx.open(&rc.cancel_flag(), steady(rc.deadline()));
                          th_status st = b->run(b->state, c, is_stop ? 1 : 0);
                          return run_result(st, b->ctx.close());
                      }};
        p->scheduled.push_back({t.name, interval, timeout, tickers_.add(interval, std::move(task))});
    }
}

bool PluginManager::stop_plugins(std::vector<std::shared_ptr<LoadedPlugin>> ps, Duration bound) {
    // Remove every task first so that all stop calls run in parallel, then wait for each.
    for (auto& p : ps)
        for (auto& t : p->scheduled) tickers_.remove(t.id);
    const auto until = std::chrono::steady_clock::now() + bound;
    bool clean = true;
    for (auto& p : ps) {
        bool stuck = false;
        for (auto& t : p->scheduled) {
            auto left = std::max(Duration(0), Duration(until - std::chrono::steady_clock::now()));
            StopState st = tickers_.wait_stopped(t.id, left);
            if (st == StopState::abandoned || st == StopState::timed_out) {
                stuck = true;
                log_->error("plugin '{}': task '{}' {}; the plugin is not shut down and stays loaded", p->name, t.name,
                            st == StopState::abandoned ? "was abandoned (it ignored its cancellation)"
                                                       : "did not finish its stop call within " + format_duration(bound));
            }
        }
        if (stuck) {
            clean = false;
            p->lib->pin();  // its code may still be running: never unmap it
            continue;
        }
        if (p->initialised && p->lib->def().shutdown) p->lib->def().shutdown(p->state);
        p->initialised = false;
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

}  // namespace tickhost
