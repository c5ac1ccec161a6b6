// PluginManager: plugin files -> loaded, initialised plugins -> tasks in a Tickers registry.
//
// Loading a file: read it, copy it to a private shadow copy (named by content hash + a counter), dlopen the
// copy with RTLD_NOW | RTLD_LOCAL, resolve tickhost_plugin_entry, negotiate the ABI, check the descriptor,
// refuse a name another loaded plugin has, call init with the plugin's [plugins.<name>.config], then add
// each task to the Tickers with its interval and timeout (host.toml overrides the plugin's defaults).
// Unloading: remove the tasks (no new run), wait (bounded) for their stop calls, call shutdown, unload,
// check the image is gone, delete the shadow copy. A library whose code may still be running (a call that
// ignored its cancellation) is never unloaded.
//
// Threading: all public functions are serialized by an internal mutex (loads and unloads happen one at a
// time); plugin code never runs while that mutex is held by another thread's request... except init and
// shutdown, which are part of the request that called them. Those two run on a thread of their own and
// are waited for with a bound (init: the plugin's timeout; shutdown: what is left of the stop bound): one
// that does not return is logged and left running, its plugin refused or abandoned, its library never
// unmapped, and the manager carries on.
//
// Untrusted files: a plugin file or plugin_dir writable by group/others or owned by a user other than the
// host's or root, and a plugin file that is a symlink, are refused (TH_E_INSECURE_FILE) unless host.toml
// allows them; [plugins.<name>] sha256 pins a plugin's exact content (TH_E_CHECKSUM_MISMATCH).
#pragma once

#include <tickhost/config.hpp>
#include <tickhost/plugin.h>
#include <tickhost/tickers.hpp>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace spdlog {
class logger;
}

namespace tickhost {

namespace detail {
class LoadPipeline;
struct LoadedPlugin;
class StagedFile;
}  // namespace detail

// Why a file was not loaded. what() of the log line: "<file>: <code>: <reason>; <hint>".
struct LoadError {
    th_status code = TH_OK;  // TH_E_* (see plugin.h)
    std::string code_name;   // "TH_E_NO_ENTRY", ...
    std::string reason;      // what happened, with the loader's own text where there is one
    std::string hint;        // what to do about it
    std::string message() const { return code_name + ": " + reason + (hint.empty() ? "" : "; " + hint); }
};

struct PluginTaskInfo {
    std::string name;
    Duration interval{0};
    Duration timeout{0};
    TaskId id = 0;
    // Run k is due at first_due + k * interval (on the scheduler's clock); for an aligned task, as planned
    // when it started (a wall-clock step moves it).
    TimePoint first_due{};
    Duration jitter{0};  // its jitter, resolved against its interval (0: none)
    Duration offset{0};  // the offset that jitter gives it on this host (task_jitter_offset)
    bool align = false;  // on wall-clock multiples of its interval
};

// The host's jitter offset of a plugin's task (README.md, "Schedules"), a whole number of jitter steps in
// [0, jitter): jitter_offset(host + '\0' + plugin + '\0' + task, jitter) (<tickhost/tickers.hpp>), with
// `host` the machine's name (HostConfig::host_name when set).
Duration task_jitter_offset(std::string_view host, std::string_view plugin, std::string_view task, Duration jitter);
// The machine's name as jitter seeds use it: gethostname(), "localhost" if that fails.
std::string machine_name();

struct PluginInfo {
    std::string name;
    std::string version;
    std::string description;
    std::filesystem::path file;    // the file in plugin_dir
    std::filesystem::path shadow;  // the loaded copy
    std::string sha256;
    std::vector<PluginTaskInfo> tasks;
    Isolation isolation = Isolation::none;  // where its code runs
    int pid = 0;                            // isolated: its process (a new one after each restart); else 0
};

// A plugin (or a plugin file) as the manager holds it, for status displays (PluginManager::status()).
struct PluginStatus {
    enum class State {
        running,      // loaded, initialised, its tasks scheduled
        refused,      // its file was not loaded (`error` says why); tried again when the file or host.toml changes
        disabled,     // [plugins.<name>] enabled = false: loaded, checked and left unloaded
        backing_off,  // isolated: its process ended on its own (`detail`); started again at `restart_at`
        down,         // isolated: it ended crash_limit times within crash_window; down until its file changes
                      // or host.toml is applied again
        pinned,       // a stopped version whose code may still be running: kept loaded, idle, until the host exits
    };
    State state = State::running;
    std::string name;  // the name it declares; a file refused before that was known: the file's stem
    std::filesystem::path file;
    std::string version;      // as declared (empty when none, or unknown)
    std::string description;  // as declared
    std::string sha256;       // of the content this is about (empty when the file was refused unread)
    Isolation isolation = Isolation::none;
    int pid = 0;  // isolated and running: its process
    // running: when this version started (its tasks were scheduled); refused: when it was refused;
    // disabled: when it was found disabled; backing_off/down: when its process ended; pinned: when it stopped.
    std::chrono::system_clock::time_point since{};
    std::chrono::system_clock::time_point restart_at{};  // backing_off: when it is started again
    uint32_t crashes = 0;                                // backing_off/down: ends counted within crash_window
    // refused: why. running: a newer content of its file was refused (this version keeps running).
    std::optional<LoadError> error;
    std::string detail;                 // backing_off/down: how its process ended; pinned: why it is kept
    std::vector<PluginTaskInfo> tasks;  // running: its tasks, in the order it declared them
};
const char* state_name(PluginStatus::State s);  // "running", "refused", "disabled", "backing_off", "down", "pinned"

// What a plugin file declares, read by PluginManager::inspect() without initialising the plugin.
struct PluginFileInfo {
    struct Task {
        std::string name;
        Duration default_interval{0};
        Duration default_timeout{0};  // 0 = the host's default_timeout
    };
    std::filesystem::path file;
    std::string sha256;
    std::string name;
    std::string version;      // empty when the plugin declares none
    std::string description;  // empty when the plugin declares none
    uint16_t abi_major = 0;   // the ABI the plugin was built against
    uint16_t abi_minor = 0;
    bool has_init = false;  // init may declare more tasks (see run_once) and may refuse the configuration
    bool has_shutdown = false;
    bool go_runtime = false;  // carries a Go runtime: never unloaded or replaced in a running host
    std::vector<Task> tasks;  // static tasks, in declaration order
};

// The outcome of one call of a task's run function (a run, or the stop call).
struct TaskCallReport {
    bool called = false;  // false: the call did not happen (see RunOnceReport::stop_state)
    bool ok = false;
    std::string error;  // the message the task set, as it is logged; empty when ok
    Duration duration{0};
    bool overran = false;  // returned after its deadline (its cancellation flag was set)
};

struct RunOnceOptions {
    std::string task;                 // the task to run; empty = the plugin's first task
    std::optional<Duration> timeout;  // the call's timeout; default: as the host would resolve it
    PluginValues config;              // merged over [plugins.<name>.config] of the manager's config (wins)
};

struct RunOnceReport {
    PluginInfo plugin;                   // its `tasks` holds the task that ran, with its resolved interval and timeout
    std::vector<std::string> all_tasks;  // every task the plugin has after init, in order
    TaskCallReport run;
    TaskCallReport stop;
    StopState stop_state = StopState::stopped;  // abandoned / timed_out: the plugin stays loaded (pinned)
};

// True for names the host considers plugin files: the platform suffix (.so / .dll), not hidden, not a
// temporary or backup name (".x", "x.tmp", "x~", "x.swp").
bool is_plugin_file_name(const std::filesystem::path& name);

class PluginManager {
public:
    // `tickers` must outlive the manager. Creates the shadow cache (throws std::runtime_error if it cannot).
    PluginManager(Tickers& tickers, HostConfig config);
    ~PluginManager();  // unload_all(config.shutdown_timeout)
    PluginManager(const PluginManager&) = delete;
    PluginManager& operator=(const PluginManager&) = delete;

    // Loads every plugin file in config.plugin_dir, in name order. Failures are logged and skipped.
    // Returns the number of plugins loaded.
    size_t load_directory();
    // Loads one file. On failure returns the error (also logged) and nothing changes.
    std::optional<LoadError> load(const std::filesystem::path& file);
    // Brings what is loaded from `file` in line with the file: loads a new file, replaces a plugin whose
    // content changed (the new version is loaded and checked first; if it is bad, or its init fails, the
    // old version keeps or resumes running), unloads a plugin whose file is gone. Same content (touch, a
    // copy of the same bytes) changes nothing. Returns the error of a refused file, else nullopt.
    std::optional<LoadError> sync(const std::filesystem::path& file);
    // Syncs every plugin file in plugin_dir and unloads plugins whose file is gone. Does nothing while
    // plugin_dir is missing (running plugins keep running).
    void reconcile();
    // Applies a new configuration: plugins whose [plugins.<name>] settings changed are restarted with them
    // (stopped if now disabled), the others keep their schedule; then plugin_dir is reconciled (loading
    // plugins that became enabled). [host] keys other than the log settings need a restart (logged).
    void apply_config(HostConfig config);
    // True if the last attempt to load `file` failed with content that may be incomplete (worth a retry).
    bool retry_worthy(const std::filesystem::path& file) const;
    // Unloads the plugin loaded from `file`. False if none is. Waits up to `bound` for its stop calls.
    bool unload(const std::filesystem::path& file, Duration bound);
    // Unloads every plugin: all tasks are removed first (their stop calls run in parallel), then each
    // plugin is shut down and unloaded. False if some stop call did not return within `bound`.
    // `total`, when given, is the whole bound `bound` is what is left of (for the stop report).
    bool unload_all(Duration bound, Duration total = Duration::zero());

    // For authors' tools (`tickhost check`). Loads `file` exactly as load() would — regular-file and ELF
    // checks, a shadow copy, dlopen RTLD_NOW | RTLD_LOCAL, entry point, ABI negotiation, descriptor checks —
    // reads its descriptor and unloads it. init is not called and no task runs; the plugin is not added to
    // plugins() and its name need not be free. Returns the error the host would log otherwise (in *err).
    std::optional<PluginFileInfo> inspect(const std::filesystem::path& file, LoadError* err);
    // For authors' tools (`tickhost run-once`). Loads `file` as load() does and initialises it with its
    // [plugins.<name>] settings (plus options.config), then runs one task once, at once, on the Tickers —
    // with its deadline and cancellation flag, through the same adapter as scheduled runs — then makes that
    // task's stop call, shuts the plugin down and unloads it. Nothing else of the plugin is scheduled and it
    // never appears in plugins(). The Tickers must be started. Blocks until done; a run that ignores its
    // cancellation is waited for until the Tickers abandon it (then the plugin stays loaded, pinned).
    // Returns nullopt and *err for a refused file, a failing init, or an unknown task.
    std::optional<RunOnceReport> run_once(const std::filesystem::path& file, const RunOnceOptions& options,
                                          LoadError* err);

    // While on, every load, sync, reconcile and apply_config returns at once without changing anything:
    // Host::stop turns it on first, so that a watcher event or a reload in flight does not delay the stop.
    void set_stopping(bool on) { stopping_ = on; }

    std::vector<PluginInfo> plugins() const;
    // Every plugin and plugin file the manager knows of: running, refused, disabled, backing off or down after
    // crashes, pinned. A copy of what the manager published when it last changed (at the end of each load,
    // sync, reload, crash, unload): it never waits for a load or a stop in progress. Safe from any thread.
    std::vector<PluginStatus> status() const;
    std::optional<PluginInfo> plugin(const std::string& name) const;
    const HostConfig& config() const { return config_; }
    const std::filesystem::path& shadow_dir() const;

private:
    using Plugin = std::shared_ptr<detail::LoadedPlugin>;
    struct Failure {
        std::string sha256;  // content that failed
        bool retry = false;  // the failure may be a half-written file
        bool retried = false;
        bool duplicate = false;  // refused for a name in use: retried when that plugin goes
        std::string message;     // what was logged, not to log it twice
        std::optional<LoadError> error;                // for status
        std::chrono::system_clock::time_point when{};  // for status
    };
    std::optional<LoadError> sync_locked(const std::filesystem::path& file);
    std::optional<LoadError> sync_guarded(const std::filesystem::path& file);  // sync_locked, catching everything
    std::optional<LoadError> refuse(const std::filesystem::path& file, const std::string& what, LoadError e,
                                    const std::string& sha256);
    // init with the plugin's settings, then the task checks. On failure the plugin is left uninitialised.
    // `settings` (optional) replaces config_.plugin(name).
    std::optional<LoadError> initialise(detail::LoadedPlugin& p, const PluginSettings* settings = nullptr);
    // Adds every task of an initialised plugin to the Tickers, all or nothing: on failure the tasks already
    // added are removed, the plugin is shut down (bounded) and the error returned.
    std::optional<LoadError> start_tasks(const Plugin& p);
    bool stop_plugins(std::vector<Plugin> ps, Duration bound, Duration total = Duration::zero());
    std::optional<LoadError> add_new(const std::filesystem::path& file, detail::StagedFile& staged,
                                     const std::string& sha);
    std::optional<LoadError> replace(const Plugin& old, detail::StagedFile& staged, const std::string& sha);
    const detail::LoadedPlugin* find_name(const std::string& name, const detail::LoadedPlugin* except) const;
    // Loaded and checked, no init: the pipeline's instance in a manager record. Null + *err on failure.
    Plugin open(const std::filesystem::path& file, detail::StagedFile& staged, LoadError* err);

    // Isolated plugins whose process ended on its own: the crash handled (tasks removed, no stop calls),
    // then a restart after a back-off, or down for good after crash_limit crashes within crash_window.
    struct Supervisor;
    struct Crash;  // an isolated plugin's process that ended on its own, for the supervisor
    struct Down {
        std::string sha256;                                  // the content that crashed
        std::vector<std::chrono::steady_clock::time_point> crashes;  // within crash_window
        std::chrono::steady_clock::time_point until{};       // restart not before
        bool for_good = false;                               // until the file changes or host.toml is applied
        PluginStatus status;                                 // for status(): the version that ended, how, when
    };
    void start_supervisor();  // its thread, at the first isolated plugin's start or crash
    void supervise();         // the supervisor's thread
    void crashed(const Crash& c);
    void watch(const Plugin& p);  // hands an isolated plugin's exits to the supervisor
    // After its process ended on its own (`what`: "stopped: <how>; ..."): the end counted within crash_window,
    // then a restart after interval x 2^(k-1) (at most backoff_max), or down for good at crash_limit.
    void back_off(const detail::LoadedPlugin& p, const std::string& what, Duration shortest);
    Duration shortest_static_interval(const detail::LoadedPlugin& p) const;

    Tickers& tickers_;
    HostConfig config_;
    HostConfig file_config_;  // what host.toml said at the last apply_config (for "changed" messages)
    // [host] keys that take effect only at a restart: the values the host runs with.
    size_t running_workers_ = 0;
    WatchMode running_watch_ = WatchMode::automatic;
    Duration running_poll_interval_{0}, running_settle_{0}, running_backoff_max_{0}, running_abandon_after_{0};
    std::shared_ptr<spdlog::logger> log_;
    std::unique_ptr<detail::LoadPipeline> pipeline_;
    mutable std::mutex mu_;
    std::atomic<bool> stopping_{false};
    std::map<std::filesystem::path, Plugin> by_file_;
    std::map<std::filesystem::path, Failure> failed_;  // last failed content per file, not to repeat errors
    std::map<std::filesystem::path, Down> down_;       // isolated plugins backing off or down after crashes
    std::shared_ptr<Supervisor> supervisor_;           // shared with the exit handlers (which may outlive us)
    // For status(): files found disabled, stopped versions kept pinned (the latest kMaxPinned), and what was
    // published last (status_mu_ guards `published_` only, never held with plugin code running).
    std::map<std::filesystem::path, PluginStatus> disabled_;
    std::vector<PluginStatus> pinned_;
    static constexpr size_t kMaxPinned = 64;
    mutable std::mutex status_mu_;
    std::shared_ptr<const std::vector<PluginStatus>> published_;
    void publish_locked() noexcept;  // mu_ held: makes status() show the manager's state now
    PluginStatus status_of(const detail::LoadedPlugin& p) const;
};

}  // namespace tickhost
