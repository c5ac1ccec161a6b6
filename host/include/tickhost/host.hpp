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
//   ...
//   host.stop();    // stop calls, plugin shutdown and unload, bounded by shutdown_timeout
#pragma once

#include <tickhost/config.hpp>
#include <tickhost/plugin_manager.hpp>
#include <tickhost/tickers.hpp>
#include <tickhost/watcher.hpp>

#include <atomic>
#include <memory>
#include <mutex>

namespace tickhost {

// The scheduler options the host derives from a configuration (workers, default_timeout).
Tickers::Options scheduler_options(const HostConfig& config);

class Host {
public:
    explicit Host(HostConfig config);
    ~Host();  // stop()
    Host(const Host&) = delete;
    Host& operator=(const Host&) = delete;

    // Starts the scheduler, loads plugin_dir, and (unless [host] watch = "off") starts watching plugin_dir
    // for added, replaced and removed plugin files and host.toml for changes. Idempotent.
    void start();
    // Re-reads host.toml (config().source) and applies it (see PluginManager::apply_config). An invalid file
    // is logged with file:line:column and the running configuration stays. Returns true if applied.
    bool reload_config();
    // Unloads every plugin (their stop calls first) and stops the scheduler, within shutdown_timeout.
    // Returns false if something did not stop in time (it is named in the log). Idempotent.
    bool stop();

    Tickers& tickers() { return *tickers_; }
    PluginManager& plugins() { return *plugins_; }
    const HostConfig& config() const { return config_; }

private:
    HostConfig config_;
    std::unique_ptr<Tickers> tickers_;
    std::unique_ptr<PluginManager> plugins_;
    std::unique_ptr<DirectoryWatcher> plugin_watch_;
    std::unique_ptr<DirectoryWatcher> config_watch_;
    std::atomic<DirectoryWatcher*> plugin_watch_ptr_{nullptr};  // for the watcher's own handler
    std::mutex reload_mu_;
    bool started_ = false;
    bool stopped_ = false;
};

}  // namespace tickhost
