#include <tickhost/logging.hpp>
#include <tickhost/plugin_manager.hpp>

#include "bounded_call.hpp"
#include "fault.hpp"
#include "host_api.hpp"
#include "loader.hpp"
#include "time_format.hpp"

#include <spdlog/spdlog.h>

#include <cxxabi.h>
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

using detail::call_bounded;
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
    detail::InitDeclarations declared;  // what add_task recorded
    std::string thrown;                 // the text of an exception init let cross the C ABI
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
    file_config_ = config_;
    running_workers_ = config_.workers;
    running_watch_ = config_.watch;
    running_poll_interval_ = config_.poll_interval;
    running_settle_ = config_.settle;
    running_backoff_max_ = config_.backoff_max;
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
    try {
        return sync_locked(file);
    } catch (const std::exception& e) {
        LoadError err{TH_E_NOT_A_LIBRARY, "TH_E_NOT_A_LIBRARY", std::string("unexpected error: ") + e.what(),
                      "it is tried again when the file changes (or on SIGHUP)"};
        log_->error("{}: {}", file.string(), err.message());
        return err;
    }
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
    return e;
}

namespace {
std::string describe(const LoadedPlugin& p);
}  // namespace

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
    // Read once, in bounded memory, into a shadow copy: checked, hashed and scanned on the way.
    detail::StagedFile staged;
    LoadFailure rf;
    if (!stage_checked(file, &staged, &rf)) {
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
    if (auto e = pin_mismatch(file.stem().string(), file, sha)) {
        if (old) e->hint += "; " + old->name + " keeps running";
        return refuse(file, old ? "new version refused" : "not loaded", *e, sha);
    }
    if (old && old->lib->sha256() == sha) {
        log_->debug("{}: content unchanged (sha256 {}); nothing to do", file.string(), sha.substr(0, 12));
        failed_.erase(file);
        return std::nullopt;  // the staged copy goes with `staged`
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

PluginManager::Plugin PluginManager::prepare(const fs::path& file, detail::StagedFile& staged, LoadError* err) {
    LoadFailure f;
    // The entry point is bounded like init, by [plugins.<file stem>] timeout (its declared name is not
    // known before it returns), else the host's default.
    const PluginSettings& by_file = config_.plugin(file.stem().string());
    auto lib = detail::Library::load(staged, log_, by_file.timeout ? *by_file.timeout : config_.default_timeout, &f,
                                     config_.max_tasks_per_plugin);
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

bool PluginManager::stage_checked(const fs::path& file, detail::StagedFile* staged, LoadFailure* err) {
    // The same steps for the host, `check` and `run-once`: the folder's owner and mode, then the file read
    // once into its shadow copy (checked, hashed and scanned on the way).
    std::error_code ec;
    const fs::path dir = fs::absolute(file, ec).parent_path();  // "probe.so": the working directory
    return detail::check_plugin_dir(ec ? file.parent_path() : dir, policy(), err) &&
           detail::stage_plugin_file(file, *cache_, policy(), staged, err);
}

detail::FilePolicy PluginManager::policy() const {
    return {config_.allow_insecure, config_.allow_symlinks, config_.max_plugin_size};
}

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
    const size_t cap = config_.max_tasks_per_plugin;
    const std::string cap_hint = "declare fewer tasks (check [plugins." + p.name +
                                 ".config]), or raise [host] max_tasks_per_plugin in host.toml";
    if (def.task_count > cap)
        return LoadError{TH_E_TOO_MANY_TASKS, "TH_E_TOO_MANY_TASKS",
                         "it declares " + std::to_string(def.task_count) +
                             " static tasks; [host] max_tasks_per_plugin is " + std::to_string(cap),
                         cap_hint};
    for (uint32_t i = 0; i < def.task_count; ++i) p.tasks.push_back(def.tasks[i]);
    // init runs on a thread of its own, bounded by the plugin's timeout, so that an init that never returns
    // costs one thread and its memory, not the loader (and with it every later load, reload and stop).
    const Duration bound = p.settings.timeout ? *p.settings.timeout : config_.default_timeout;
    if (def.init) {
        auto call = std::make_shared<InitCall>();
        call->declared.cap = cap;
        call->declared.static_count = p.tasks.size();
        for (auto& t : p.tasks) call->declared.seen.insert(t.name);
        bool returned = false;
        std::string err;
        {
            p.owner.init = &call->declared;
            th_ctx c = p.ctx->open(nullptr, 0, std::chrono::steady_clock::now() + bound);
            // Closes the context and detaches add_task on every path (also if no thread could be started).
            struct CloseInit {
                detail::ContextSlot& slot;
                std::string* err;
                ~CloseInit() {
                    std::string e = slot.close_init();  // from here on its context is stale, add_task refused
                    if (err) *err = std::move(e);
                }
            } guard{*p.ctx, &err};
            try {
                returned = call_bounded(
                    [call, lib = p.lib, c] {
                        try {
                            call->status = lib->def().init(c, &call->state);
                        } catch (abi::__forced_unwind&) {
                            throw;  // pthread_exit/cancel: must unwind; the wait below reports it as hung
                        } catch (const std::exception& e) {
                            call->status = TH_E_INIT_FAILED;
                            call->thrown = detail::escape_plugin_text(e.what());
                        } catch (...) {
                            call->status = TH_E_INIT_FAILED;
                            call->thrown = "an exception that is not a std::exception";
                        }
                    },
                    bound);
            } catch (const std::exception& e) {  // no thread for init (resource exhaustion)
                guard.err = nullptr;
                return LoadError{TH_E_INIT_FAILED, "TH_E_INIT_FAILED",
                                 std::string("init could not be called: ") + e.what(),
                                 "check the host's thread and memory limits; the file is retried when it changes"};
            }
        }
        if (!returned) {
            p.lib->pin();  // its init may still be running: never unmap it; whatever it allocated is leaked
            return LoadError{TH_E_INIT_FAILED, "TH_E_INIT_FAILED",
                             "init did not return within " + format_duration(bound) +
                                 "; the plugin is refused, its init is left running and its library stays mapped "
                                 "until the host exits",
                             "fix the plugin's init (it must return; long work belongs in a task), or raise "
                             "[plugins." + p.name + "] timeout in host.toml"};
        }
        if (!call->thrown.empty())
            return LoadError{TH_E_INIT_FAILED, "TH_E_INIT_FAILED",
                             "init let an exception cross the C ABI (out of contract): " + call->thrown,
                             "catch every exception inside the plugin (the C++ layer, plugin.hpp, does)"};
        const size_t refused = call->declared.refused_over_cap;
        if (refused) {
            LoadError e{TH_E_TOO_MANY_TASKS, "TH_E_TOO_MANY_TASKS",
                        "init tried to declare more tasks than [host] max_tasks_per_plugin = " + std::to_string(cap) +
                            " allows (" + std::to_string(refused) + " add_task call(s) refused" +
                            (call->status == TH_OK ? "" : "; init then returned " + detail::status_name(call->status)) +
                            ")",
                        cap_hint};
            if (call->status == TH_OK && def.shutdown) {  // it initialised: undo that
                p.state = call->state;
                if (!shutdown(p, bound)) p.lib->pin();
            }
            return e;
        }
        if (call->status != TH_OK)
            return LoadError{TH_E_INIT_FAILED, "TH_E_INIT_FAILED",
                             "init returned " + detail::status_name(call->status) + (err.empty() ? "" : ": " + err),
                             "check [plugins." + p.name + ".config] in host.toml and the plugin's documentation"};
        p.state = call->state;
        for (auto& d : call->declared.tasks) p.tasks.push_back(d);
        for (auto& n : call->declared.names) p.task_names.push_back(std::move(n));
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
    return "'" + p.name + "' " + version_of(p.lib->def()) + " [sha256 " + p.lib->sha256().substr(0, 12) + "]";
}
// "a every 1s (timeout 10s), b every ..., and 995 more": at most kShown tasks, so that a plugin with many
// tasks gets a short line.
std::string task_list(const LoadedPlugin& p) {
    constexpr size_t kShown = 5;
    std::string s;
    for (size_t i = 0; i < p.scheduled.size() && i < kShown; ++i) {
        const auto& t = p.scheduled[i];
        s += (s.empty() ? "" : ", ") + t.name + " every " + format_duration(t.interval) + " (timeout " +
             format_duration(t.timeout) + ")";
    }
    if (p.scheduled.size() > kShown) s += ", and " + std::to_string(p.scheduled.size() - kShown) + " more";
    return s;
}
}  // namespace

std::optional<LoadError> PluginManager::add_new(const fs::path& file, detail::StagedFile& staged,
                                                const std::string& sha) {
    LoadError e;
    Plugin p = prepare(file, staged, &e);
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
    if (auto err = start_tasks(p)) return refuse(file, "not loaded", *err, sha);
    by_file_[file] = p;
    const th_plugin_def& d = p->lib->def();
    log_->info("loaded plugin {} from {}{}{}: {}", describe(*p), file.filename().string(),
               d.description && *d.description ? " — " : "",
               d.description ? detail::escape_plugin_text(d.description, 256) : "", task_list(*p));
    return std::nullopt;
}

std::optional<LoadError> PluginManager::replace(const Plugin& old, detail::StagedFile& staged, const std::string& sha) {
    const fs::path& file = old->file;
    const std::string keeps = "; " + describe(*old) + " keeps running";
    if (old->lib->has_go_runtime())
        return refuse(file, "new version not loaded",
                      {TH_E_NOT_ALLOWED, "TH_E_NOT_ALLOWED",
                       "plugin " + describe(*old) +
                           " contains a Go runtime, which can neither be unloaded nor "
                           "started twice in one process",
                       "restart the host to upgrade it" + keeps},
                      sha);
    // 1. Load and check the new version first, from its own shadow copy. No init yet.
    LoadError e;
    Plugin neu = prepare(file, staged, &e);
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
        failed_[file] = Failure{sha, false, false, false, {}};
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
        file_config_ = next;
        next.plugin_dir = config_.plugin_dir;  // keep running on what we watch
        next.shadow_dir = config_.shadow_dir;
        const HostConfig prev = config_;
        config_ = std::move(next);
        failed_.clear();  // new settings: give refused files another chance (a restart below may fail anew)
        std::vector<Plugin> changed;
        for (auto& [f, p] : by_file_)
            if (!(prev.plugin(p->name) == config_.plugin(p->name)) || prev.default_timeout != config_.default_timeout)
                changed.push_back(p);
        // A changed plugin is restarted in place, on the library already loaded: its tasks stop, shutdown,
        // init with the new settings, its tasks start. No reload: this is what keeps a plugin with a Go
        // runtime (never unloaded, never loaded twice) running, and it is the same for every plugin. Only a
        // plugin whose code may still be running (a stop call or shutdown that did not return) is not
        // restarted: it is kept, idle, until the host exits.
        for (auto& p : changed) {
            by_file_.erase(p->file);
            if (!config_.plugin(p->name).enabled) {
                log_->info("plugin '{}' disabled in host.toml: stopping it", p->name);
                stop_plugins({p}, config_.shutdown_timeout);
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
            auto err = initialise(*p);
            if (!err) err = start_tasks(p);
            if (err) {
                log_->error(
                    "plugin '{}' failed to start with the new settings: {}; fix [plugins.{}] in host.toml "
                    "(it is retried when host.toml or its file changes)",
                    p->name, err->message(), p->name);
                failed_[p->file] = Failure{p->lib->sha256(), false, false, false, {}};
                continue;
            }
            by_file_[p->file] = p;
            log_->info("restarted plugin {}: {}", describe(*p), task_list(*p));
        }
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
                        // The context is closed on every path: a run that lets an exception cross the C ABI
                        // (out of contract) must not leave it open, or every later call would be stale.
                        detail::CallGuard guard(b->ctx);
                        th_status st;
                        try {
                            st = b->run(b->state, c, is_stop ? 1 : 0);
                        } catch (abi::__forced_unwind&) {
                            throw;  // thread cancellation must unwind on; the guard closes the context
                        } catch (const std::exception& e) {
                            guard.close();
                            return TaskResult::failure(
                                "let an exception cross the C ABI (out of contract; catch it inside the plugin): " +
                                detail::escape_plugin_text(e.what()));
                        } catch (...) {
                            guard.close();
                            return TaskResult::failure(
                                "let an exception that is not a std::exception cross the C ABI (out of contract; "
                                "catch everything inside the plugin)");
                        }
                        return run_result(st, guard.close());
                    }};
}
}  // namespace

std::optional<LoadError> PluginManager::start_tasks(const std::shared_ptr<LoadedPlugin>& p) {
    // One anchor for the whole plugin: its tasks with the same interval come due together, one batch per
    // tick for all of them (and their first runs follow one interval after the plugin started).
    // All or nothing: if one task cannot be scheduled, the ones already added are removed (their stop calls
    // run) and the plugin is shut down, bounded, as after a failed init.
    std::string what;
    const char* adding = nullptr;  // the task being added when it failed
    try {
        const TimePoint anchor = tickers_.clock().now();
        p->scheduled.clear();
        p->scheduled.reserve(p->tasks.size());  // push_back below cannot throw after an add
        for (auto& t : p->tasks) {
            adding = t.name;
            const auto [interval, timeout] = schedule_of(p->settings, t, config_.default_timeout);
            const TaskId id = tickers_.add(interval, make_tick_task(p, t, timeout), anchor + interval);
            p->scheduled.push_back({t.name, interval, timeout, id, anchor + interval});
            adding = nullptr;
            if (p->scheduled.size() == 1) detail::fault_point("start_tasks", p->name);  // test seam
        }
        return std::nullopt;
    } catch (const std::exception& e) {
        what = e.what();
    } catch (...) {
        what = "an unknown exception";
    }
    const std::string task = adding ? adding : "";
    const size_t added = p->scheduled.size();
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
    std::string threw;
    if (call_bounded([fn, state = p.state, lib = p.lib] { fn(state); }, bound, &threw)) {
        if (!threw.empty())
            log_->error("plugin '{}': shutdown {} (an exception must not cross the C ABI; catch it in the plugin)",
                        p.name, threw);
        return true;
    }
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

bool PluginManager::unload_all(Duration bound, Duration total) {
    std::lock_guard<std::mutex> lk(mu_);
    std::vector<std::shared_ptr<LoadedPlugin>> ps;
    for (auto& [f, p] : by_file_) ps.push_back(p);
    by_file_.clear();
    if (ps.empty()) return true;
    return stop_plugins(std::move(ps), bound, total);
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
    detail::StagedFile staged;
    LoadFailure rf;
    if (!stage_checked(file, &staged, &rf)) {  // the folder's checks too, as the host makes them
        if (err) *err = to_error(rf);
        return std::nullopt;
    }
    LoadError e;
    Plugin p = prepare(file, staged, &e);
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
    info.go_runtime = p->lib->has_go_runtime();
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
    detail::StagedFile staged;
    LoadFailure rf;
    if (!stage_checked(file, &staged, &rf)) return fail(to_error(rf));  // the folder's checks too
    LoadError e;
    Plugin p = prepare(file, staged, &e);
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
        // Bounded, as the host bounds it (shutdown_timeout); one that does not return keeps its library mapped.
        if (def.shutdown && !shutdown(*p, config_.shutdown_timeout)) p->lib->pin();
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
        if (def.shutdown && !shutdown(*p, config_.shutdown_timeout)) p->lib->pin();
        p->initialised = false;
    } else {
        p->lib->pin();  // its code may still be running: never unmap it
    }
    return report;  // the last reference to p goes with the Tickers' copy of the task: unload
}

}  // namespace tickhost
