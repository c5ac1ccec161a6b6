// Host: the runtime as one object — a Tickers registry plus a PluginManager on the same configuration.
// An embedding application builds one from a HostConfig (or a host.toml), adds its own tasks next to the
// plugins through tickers(), and calls start()/stop() from its own lifecycle.
//
//   auto config = tickhost::load_config("host.toml");
//   tickhost::Host host(config);
//   host.tickers().add(std::chrono::seconds(5), {"app/flush", {}, [](tickhost::RunContext&, bool) {
//       return tickhost::TaskResult::success();
//   }});
//   host.start();   // starts the scheduler, loads every plugin in plugin_dir
//   std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the application runs
//   host.stop();    // stop calls, plugin shutdown and unload, bounded by shutdown_timeout
#pragma once

#include <tickhost/config.hpp>
#include <tickhost/plugin_manager.hpp>
#include <tickhost/tickers.hpp>
#include <tickhost/watcher.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace tickhost {

namespace detail {
class ControlServer;
}

// The scheduler options the host derives from a configuration (workers, default_timeout).
Tickers::Options scheduler_options(const HostConfig& config);

// What a supervisor of the host hears (the tickhost executable turns it into systemd notifications). Every
// member is optional. Each runs on the host thread where the thing happened, must return quickly, must not
// throw, and must not call start(), stop() or reload_config().
struct HostHooks {
    // Tickers::Options::heartbeat and heartbeat_interval of the host's scheduler: a liveness signal from
    // its timer thread.
    std::function<void()> heartbeat;
    Duration heartbeat_interval{0};
    // Around every reload_config() (SIGHUP, a host.toml change, a direct call): before host.toml is read,
    // and after, with whether it was applied.
    std::function<void()> reload_begin;
    std::function<void(bool applied)> reload_end;
    // The set of plugins may have changed: a plugin_dir event or rescan was handled.
    std::function<void()> plugins_changed;
};

// What the last reload of host.toml did (Host::status()).
struct ReloadResult {
    std::chrono::system_clock::time_point when{};  // when it finished
    bool applied = false;
    // Not applied: why. For an invalid host.toml, its "file:line:column: message" (and the place below).
    std::string error;
    std::string file;
    uint32_t line = 0, column = 0;  // 1-based; 0 when the error has no place
};

// Sums over a set of tasks (HostStatus).
struct TaskTotals {
    size_t tasks = 0;
    size_t failing = 0;    // failing now: consecutive_failures > 0
    size_t abandoned = 0;  // a call ignored its cancellation: never runs again
    uint64_t runs = 0, failures = 0, skipped = 0, timeouts = 0;
    void add(const TaskSnapshot& t);
};

// The whole host, for status displays (Host::status()). A copy: nothing in it changes afterwards.
struct HostStatus {
    std::string version;  // the release of the host library (TICKHOST_VERSION_STRING)
    int pid = 0;
    std::chrono::system_clock::time_point started{};  // when start() was called (the epoch if it was not)
    Duration uptime{0};
    std::filesystem::path config_file;  // the host.toml it runs on; empty when the configuration was built in code
    // When the running configuration was applied: at start, or by the last reload that applied.
    std::chrono::system_clock::time_point config_applied{};
    std::optional<ReloadResult> last_reload;  // none since start
    uint64_t reloads = 0;                     // reloads finished since start, applied or not
    std::filesystem::path control_socket;     // where `tickhost status` reaches it; empty: none
    struct Plugin {
        PluginStatus plugin;
        // Running: the figures of its tasks (TaskSnapshot::name is the task's own name), the first task_limit.
        std::vector<TaskSnapshot> tasks;
        TaskTotals totals;  // over all its tasks
    };
    std::vector<Plugin> plugins;  // in file order, then the plugins that are not running
    // The application's own tasks (added to tickers() directly, not by a plugin): the first task_limit.
    std::vector<TaskSnapshot> tasks;
    TaskTotals task_totals;  // over all of them
    TaskTotals totals;       // over every task, plugins' and the application's
    // The scheduler's clock and the wall clock, read together: wall(t) turns a time on the scheduler's clock
    // (TaskStats, TaskActivity) into wall-clock time.
    TimePoint clock_now{};
    std::chrono::system_clock::time_point wall_now{};
    std::chrono::system_clock::time_point wall(TimePoint t) const {
        return wall_now + std::chrono::duration_cast<std::chrono::system_clock::duration>(t - clock_now);
    }
};

// What Host::run_now() did for one task.
struct RunNowOutcome {
    std::string task;  // the task's own name
    RunNow result = RunNow::unknown;
    uint64_t runs_before = 0;  // started: the task's run count before this run (it is over once runs exceeds it)
};

class Host {
public:
    explicit Host(HostConfig config, HostHooks hooks = {});
    ~Host();  // stop()
    Host(const Host&) = delete;
    Host& operator=(const Host&) = delete;

    // Starts the scheduler, loads plugin_dir, and (unless [host] watch = "off") starts watching plugin_dir
    // for added, replaced and removed plugin files and host.toml for changes. Idempotent. A plugin file
    // that cannot be loaded is logged and skipped; an error of the load step as a whole is logged and the
    // watcher's first rescan tries again. Throws only when the host itself cannot run (its threads).
    void start();
    // Re-reads host.toml (config().source) and applies it (see PluginManager::apply_config) on the caller's
    // thread. An invalid file is logged with file:line:column and the running configuration stays. Returns
    // true if applied. Never throws: a failure is logged with its cause.
    bool reload_config();
    // Asks for reload_config() on the host's own reload thread and returns at once (safe from a signal
    // loop). Requests that arrive while a reload runs coalesce into one more reload of the latest file.
    // Returns the number of the reload that will cover this request: once reloads_done() reaches it,
    // last_reload() tells how it went. 0 when the host is not running (no reload will come).
    uint64_t request_reload();
    // Number of reloads finished (applied or refused) since start, for callers of request_reload().
    uint64_t reloads_done() const { return reloads_done_.load(); }
    // What the last reload (by request_reload() or reload_config()) did; none since start.
    std::optional<ReloadResult> last_reload() const;
    // Everything status displays show (docs/operating.md): the host, each plugin and plugin file the manager
    // knows of, each task's figures (at most `task_limit` tasks listed per plugin, and of the application's
    // own; the totals count them all). Never waits for a load, a reload or task code; safe from any thread.
    HostStatus status(size_t task_limit = SIZE_MAX) const;
    // One extra run at once of a running plugin's task, or of each of its tasks when `task` is empty
    // (Tickers::run_now: never overlapping a run in flight). Empty when no running plugin has that name or
    // it has no such task.
    std::vector<RunNowOutcome> run_now(const std::string& plugin, const std::string& task = "");
    // The control socket the host listens on (see [host] control_socket); empty when it has none (off, not
    // started, or it could not be set up: the log says why).
    std::filesystem::path control_socket() const;
    // Unloads every plugin (their stop calls first) and stops the scheduler. shutdown_timeout bounds the
    // whole stop, the time spent ending the watchers and a reload in progress included. Returns false if
    // something did not stop in time (it is named in the log). Idempotent. Call it from the thread that
    // called start(), or after start() returned.
    bool stop();

    Tickers& tickers() { return *tickers_; }
    PluginManager& plugins() { return *plugins_; }
    const HostConfig& config() const { return config_; }
    // The bound of the next stop: [host] shutdown_timeout as last applied (a reload changes it). Thread-safe.
    Duration shutdown_timeout() const { return Duration(shutdown_timeout_ns_.load()); }

private:
    HostConfig config_;
    HostHooks hooks_;
    std::unique_ptr<Tickers> tickers_;
    std::unique_ptr<PluginManager> plugins_;
    std::unique_ptr<DirectoryWatcher> plugin_watch_;
    std::unique_ptr<DirectoryWatcher> config_watch_;
    std::atomic<DirectoryWatcher*> plugin_watch_ptr_{nullptr};  // for the watcher's own handler
    std::mutex reload_mu_;
    // request_reload(): a flag and a thread, so that any burst of requests ends in one reload of the latest file.
    void reload_loop();
    std::thread reload_thread_;
    std::mutex rq_mu_;
    std::condition_variable rq_cv_;
    bool rq_pending_ = false;
    bool rq_stop_ = false;
    bool rq_running_ = false;  // the reload thread takes requests
    std::atomic<uint64_t> reloads_done_{0};
    uint64_t reloads_started_ = 0;  // rq_mu_
    std::atomic<int64_t> shutdown_timeout_ns_{0};
    bool started_ = false;
    bool stopped_ = false;
    // For status(): guarded by status_mu_ (never held while plugin code runs).
    mutable std::mutex status_mu_;
    std::optional<ReloadResult> last_reload_;
    std::chrono::system_clock::time_point started_wall_{}, config_applied_{};
    std::chrono::steady_clock::time_point started_steady_{};
    std::filesystem::path control_path_;
    std::unique_ptr<detail::ControlServer> control_;  // the control socket's server, while running
};

}  // namespace tickhost
