#include <tickhost/host.hpp>
#include <tickhost/logging.hpp>

#include <spdlog/spdlog.h>

namespace tickhost {

Tickers::Options scheduler_options(const HostConfig& c) {
    Tickers::Options o;
    o.workers = c.workers;
    o.default_timeout = c.default_timeout;
    o.backoff_max = c.backoff_max;
    return o;
}

namespace {

bool same_logging(const HostConfig& a, const HostConfig& b) {
    return a.log_level == b.log_level && a.log_sink == b.log_sink && a.log_file == b.log_file &&
           a.log_max_size == b.log_max_size && a.log_max_files == b.log_max_files;
}
}  // namespace

Host::Host(HostConfig config)
    : config_(std::move(config)),
      tickers_(std::make_unique<Tickers>(scheduler_options(config_))),
      plugins_(std::make_unique<PluginManager>(*tickers_, config_)) {}

Host::~Host() { stop(); }

void Host::start() {
    if (started_) return;
    started_ = true;
    stopped_ = false;
    tickers_->start();
    plugins_->load_directory();
    if (config_.watch == WatchMode::off) return;

    WatchOptions w;
    w.mode = config_.watch;
    w.poll_interval = config_.poll_interval;
    w.settle = config_.settle;
    w.filter = [](const std::filesystem::path& name) { return is_plugin_file_name(name); };
    // The first event is a rescan; the directory was just loaded, so reconciling finds nothing to do.
    plugin_watch_ = std::make_unique<DirectoryWatcher>(config_.plugin_dir, w, [this](const WatchEvent& ev) {
        if (ev.kind == WatchEvent::Kind::rescan) {
            plugins_->reconcile();
            return;
        }
        plugins_->sync(ev.path);
        // A file the loader refused right after it changed may be half written: look once more later.
        if (plugins_->retry_worthy(ev.path))
            if (DirectoryWatcher* w = plugin_watch_ptr_.load()) w->recheck(ev.path, config_.settle);
    });
    plugin_watch_ptr_ = plugin_watch_.get();

    if (!config_.source.empty()) {
        WatchOptions c = w;
        const auto file = config_.source.filename();
        c.filter = [file](const std::filesystem::path& name) { return name == file; };
        c.logger_name = "config";
        config_watch_ = std::make_unique<DirectoryWatcher>(
            std::filesystem::absolute(config_.source).parent_path(), c, [this](const WatchEvent& ev) {
                if (ev.kind == WatchEvent::Kind::changed) reload_config();
            });
    }
}

bool Host::reload_config() {
    std::lock_guard<std::mutex> lk(reload_mu_);
    auto log = get_logger("config");
    if (config_.source.empty()) {
        log->warn("no host.toml to reload (the configuration was built in code)");
        return false;
    }
    HostConfig next;
    try {
        next = load_config(config_.source);
    } catch (const ConfigError& e) {
        log->error("{}; keeping the running configuration", e.what());
        return false;
    }
    if (!same_logging(config_, next)) {
        try {
            setup_logging(next);
        } catch (const std::exception& e) {
            log->error("{}: log settings not applied: {}", config_.source.string(), e.what());
        }
    }
    log->info("{}: configuration reloaded", config_.source.string());
    config_.plugins = next.plugins;
    config_.log_level = next.log_level;
    plugins_->apply_config(std::move(next));
    return true;
}

bool Host::stop() {
    if (stopped_ || !started_) return true;
    stopped_ = true;
    // No more loads or reloads from here on.
    config_watch_.reset();
    plugin_watch_ptr_ = nullptr;
    plugin_watch_.reset();
    const auto t0 = std::chrono::steady_clock::now();
    bool clean = plugins_->unload_all(config_.shutdown_timeout);
    Duration left = config_.shutdown_timeout - (std::chrono::steady_clock::now() - t0);
    clean = tickers_->stop(std::max(left, Duration(std::chrono::milliseconds(100)))) && clean;
    started_ = false;
    return clean;
}

}  // namespace tickhost
