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
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

namespace tickhost {

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
    void request_reload();
    // Number of reloads finished (applied or refused) since start, for callers of request_reload().
    uint64_t reloads_done() const { return reloads_done_.load(); }
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
    std::atomic<uint64_t> reloads_done_{0};
    std::atomic<int64_t> shutdown_timeout_ns_{0};
    bool started_ = false;
    bool stopped_ = false;
};

}  // namespace tickhost
