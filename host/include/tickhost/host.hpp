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

#include <memory>

namespace tickhost {

class Host {
public:
    explicit Host(HostConfig config);
    ~Host();  // stop()
    Host(const Host&) = delete;
    Host& operator=(const Host&) = delete;

    // Starts the scheduler and loads plugin_dir. Idempotent.
    void start();
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
    bool started_ = false;
    bool stopped_ = false;
};

}  // namespace tickhost
