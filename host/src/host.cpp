#include <tickhost/host.hpp>
#include <tickhost/logging.hpp>

#include "fault.hpp"
#include "time_format.hpp"

#include <spdlog/spdlog.h>

namespace tickhost {

Tickers::Options scheduler_options(const HostConfig& c) {
    Tickers::Options o;
    o.workers = c.workers;
    o.default_timeout = c.default_timeout;
    o.backoff_max = c.backoff_max;
    o.abandon_after = c.abandon_after;
    return o;
}

namespace {

bool same_logging(const HostConfig& a, const HostConfig& b) {
    return a.log_level == b.log_level && a.log_sink == b.log_sink && a.log_file == b.log_file &&
           a.log_max_size == b.log_max_size && a.log_max_files == b.log_max_files;
}

// Every event path (start, a plugin_dir event, a host.toml event, a reload) ends here on failure: the cause
// is named and the host goes on. Nothing escapes to a thread's top, where it would end the process.
template <typename F>
void guarded(const char* what, F&& f) {
    try {
        f();
    } catch (const std::exception& e) {
        get_logger("host")->error("{} failed: {}; the host keeps running", what, e.what());
    } catch (...) {
        get_logger("host")->error("{} failed with an unknown exception; the host keeps running", what);
    }
}

}  // namespace

namespace {
Tickers::Options with_heartbeat(Tickers::Options o, const HostHooks& h) {
    o.heartbeat = h.heartbeat;
    o.heartbeat_interval = h.heartbeat_interval;
    return o;
}
}  // namespace

Host::Host(HostConfig config, HostHooks hooks)
    : config_(std::move(config)),
      hooks_(std::move(hooks)),
      tickers_(std::make_unique<Tickers>(with_heartbeat(scheduler_options(config_), hooks_))),
      plugins_(std::make_unique<PluginManager>(*tickers_, config_)) {
    // Every path the host keeps is absolute before any plugin code runs: a plugin may chdir().
    if (!config_.source.empty()) config_.source = std::filesystem::absolute(config_.source);
    shutdown_timeout_ns_ = config_.shutdown_timeout.count();
}

Host::~Host() { stop(); }

void Host::start() {
    if (started_) return;
    started_ = true;
    stopped_ = false;
    tickers_->start();
    plugins_->set_stopping(false);
    {
        std::lock_guard<std::mutex> lk(rq_mu_);
        rq_stop_ = false;
    }
    reload_thread_ = std::thread([this] { reload_loop(); });
    guarded("loading plugin_dir", [&] {
        detail::fault_point("start");
        plugins_->load_directory();
    });
    if (config_.watch == WatchMode::off) return;

    WatchOptions w;
    w.mode = config_.watch;
    w.poll_interval = config_.poll_interval;
    w.settle = config_.settle;
    w.filter = [](const std::filesystem::path& name) { return is_plugin_file_name(name); };
    // The first event is a rescan; the directory was just loaded, so reconciling finds nothing to do (or
    // loads what a failed start step left out).
    plugin_watch_ = std::make_unique<DirectoryWatcher>(config_.plugin_dir, w, [this](const WatchEvent& ev) {
        const std::string what =
            ev.kind == WatchEvent::Kind::rescan ? "plugin_dir rescan" : "plugin_dir event for " + ev.path.string();
        guarded(what.c_str(), [&] {
            detail::fault_point("watch.plugin_dir");
            if (ev.kind == WatchEvent::Kind::rescan) {
                plugins_->reconcile();
                return;
            }
            plugins_->sync(ev.path);
            // A file the loader refused right after it changed may be half written: look once more later.
            if (plugins_->retry_worthy(ev.path))
                if (DirectoryWatcher* pw = plugin_watch_ptr_.load()) pw->recheck(ev.path, config_.settle);
        });
        if (hooks_.plugins_changed) hooks_.plugins_changed();
    });
    plugin_watch_ptr_ = plugin_watch_.get();

    if (!config_.source.empty()) {
        WatchOptions c = w;
        const auto file = config_.source.filename();
        c.filter = [file](const std::filesystem::path& name) { return name == file; };
        c.logger_name = "config";
        config_watch_ =
            std::make_unique<DirectoryWatcher>(config_.source.parent_path(), c, [this](const WatchEvent& ev) {
                guarded("host.toml event", [&] {
                    detail::fault_point("watch.config");
                    if (ev.kind == WatchEvent::Kind::changed) request_reload();
                });
            });
    }
}

void Host::request_reload() {
    {
        std::lock_guard<std::mutex> lk(rq_mu_);
        rq_pending_ = true;
    }
    rq_cv_.notify_one();
}

void Host::reload_loop() {
    std::unique_lock<std::mutex> lk(rq_mu_);
    for (;;) {
        rq_cv_.wait(lk, [&] { return rq_pending_ || rq_stop_; });
        if (rq_stop_) return;
        rq_pending_ = false;  // requests from here on get a reload of their own, after this one
        lk.unlock();
        reload_config();
        ++reloads_done_;
        lk.lock();
    }
}

bool Host::reload_config() {
    std::lock_guard<std::mutex> lk(reload_mu_);
    if (hooks_.reload_begin) hooks_.reload_begin();
    bool applied = false;
    struct End {
        const HostHooks& h;
        const bool& applied;
        ~End() {
            if (h.reload_end) h.reload_end(applied);
        }
    } end{hooks_, applied};
    auto log = get_logger("config");
    if (config_.source.empty()) {
        log->warn("no host.toml to reload (the configuration was built in code)");
        return false;
    }
    guarded(("reloading " + config_.source.string()).c_str(), [&] {
        detail::fault_point("reload");
        HostConfig next;
        try {
            next = load_config(config_.source);
        } catch (const ConfigError& e) {
            log->error("{}; keeping the running configuration", e.what());
            return;
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
        shutdown_timeout_ns_ = next.shutdown_timeout.count();  // the next stop's bound
        plugins_->apply_config(std::move(next));
        applied = true;
    });
    return applied;
}

bool Host::stop() {
    if (stopped_ || !started_) return true;
    stopped_ = true;
    // One clock for the whole stop: ending the watchers and a reload in progress count against the bound.
    const auto t0 = std::chrono::steady_clock::now();
    const Duration bound = shutdown_timeout();
    auto left = [&] { return Duration(bound - (std::chrono::steady_clock::now() - t0)); };
    // No more loads or reloads from here on; an event or reload in flight returns at its next step.
    plugins_->set_stopping(true);
    {
        std::lock_guard<std::mutex> lk(rq_mu_);
        rq_stop_ = true;
    }
    rq_cv_.notify_all();
    if (reload_thread_.joinable()) reload_thread_.join();
    config_watch_.reset();
    plugin_watch_ptr_ = nullptr;
    plugin_watch_.reset();
    bool clean = plugins_->unload_all(std::max(left(), Duration::zero()), bound);
    // What embedders added themselves still gets its stop calls; give them at least a moment.
    clean = tickers_->stop(std::max(left(), Duration(std::chrono::milliseconds(100)))) && clean;
    started_ = false;
    return clean;
}

}  // namespace tickhost
