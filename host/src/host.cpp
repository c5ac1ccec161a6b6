#include <tickhost/version.h>
#include <tickhost/host.hpp>
#include <tickhost/logging.hpp>

#include "control/server.hpp"
#include "fault.hpp"
#include "time_format.hpp"

#include <spdlog/spdlog.h>

#include <unordered_set>

#include <unistd.h>

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
// Returns what went wrong, if something did.
template <typename F>
std::optional<std::string> guarded(const char* what, F&& f) {
    try {
        f();
        return std::nullopt;
    } catch (const std::exception& e) {
        get_logger("host")->error("{} failed: {}; the host keeps running", what, e.what());
        return std::string(what) + " failed: " + e.what();
    } catch (...) {
        get_logger("host")->error("{} failed with an unknown exception; the host keeps running", what);
        return std::string(what) + " failed with an unknown exception";
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
    {
        std::lock_guard<std::mutex> lk(status_mu_);
        started_wall_ = config_applied_ = std::chrono::system_clock::now();
        started_steady_ = std::chrono::steady_clock::now();
    }
    tickers_->start();
    plugins_->set_stopping(false);
    // The control socket before the reload thread (which tells it when a reload is done). A socket that cannot
    // be set up (another host's, a directory of another user) is named; the host runs without one.
    if (!config_.control_socket.empty() && !control_) {
        try {
            control_ = std::make_unique<detail::ControlServer>(config_.control_socket, *this);
        } catch (const std::exception& e) {
            get_logger("host")->error(
                "{}; the host runs without a control socket (tickhost status, reload and run-now "
                "cannot reach it)",
                e.what());
        }
        std::lock_guard<std::mutex> lk(status_mu_);
        control_path_ = control_ ? config_.control_socket : std::filesystem::path();
    }
    {
        std::lock_guard<std::mutex> lk(rq_mu_);
        rq_stop_ = false;
        rq_running_ = true;
        reloads_started_ = reloads_done_.load();
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

uint64_t Host::request_reload() {
    uint64_t ticket = 0;
    {
        std::lock_guard<std::mutex> lk(rq_mu_);
        rq_pending_ = true;
        // The next reload to start covers this request (one in progress read the file before it).
        if (rq_running_ && !rq_stop_) ticket = reloads_started_ + 1;
    }
    rq_cv_.notify_one();
    return ticket;
}

void Host::reload_loop() {
    std::unique_lock<std::mutex> lk(rq_mu_);
    for (;;) {
        rq_cv_.wait(lk, [&] { return rq_pending_ || rq_stop_; });
        if (rq_stop_) return;
        rq_pending_ = false;  // requests from here on get a reload of their own, after this one
        ++reloads_started_;
        lk.unlock();
        reload_config();
        ++reloads_done_;
        if (control_) control_->notify();  // a client may be waiting for this reload
        lk.lock();
    }
}

std::optional<ReloadResult> Host::last_reload() const {
    std::lock_guard<std::mutex> lk(status_mu_);
    return last_reload_;
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
    ReloadResult result;
    auto done = [&](bool ok) {
        applied = ok;
        result.applied = ok;
        result.when = std::chrono::system_clock::now();
        std::lock_guard<std::mutex> sl(status_mu_);
        last_reload_ = result;
        if (ok) config_applied_ = result.when;
        return ok;
    };
    if (config_.source.empty()) {
        log->warn("no host.toml to reload (the configuration was built in code)");
        result.error = "no host.toml to reload (the configuration was built in code)";
        return done(false);
    }
    auto failure = guarded(("reloading " + config_.source.string()).c_str(), [&] {
        detail::fault_point("reload");
        HostConfig next;
        try {
            next = load_config(config_.source);
        } catch (const ConfigError& e) {
            log->error("{}; keeping the running configuration", e.what());
            result.error = e.what();
            result.file = e.file();
            result.line = e.line();
            result.column = e.column();
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
    if (failure && result.error.empty()) result.error = *failure + "; the running configuration stays";
    return done(applied);
}

void TaskTotals::add(const TaskSnapshot& t) {
    ++tasks;
    failing += t.stats.consecutive_failures > 0;
    abandoned += t.activity.state == TaskActivity::State::abandoned;
    runs += t.stats.runs;
    failures += t.stats.failures;
    skipped += t.stats.skipped;
    timeouts += t.stats.timeouts;
}

HostStatus Host::status(size_t task_limit) const {
    HostStatus h;
    h.version = TICKHOST_VERSION_STRING;
    h.pid = int(::getpid());
    h.config_file = config_.source;
    h.clock_now = tickers_->clock().now();
    h.wall_now = std::chrono::system_clock::now();
    {
        std::lock_guard<std::mutex> lk(status_mu_);
        h.started = started_wall_;
        if (started_steady_ != std::chrono::steady_clock::time_point{})
            h.uptime = std::chrono::steady_clock::now() - started_steady_;
        h.config_applied = config_applied_;
        h.last_reload = last_reload_;
    }
    h.reloads = reloads_done_.load();
    h.control_socket = control_socket();
    // Plugins from what the manager published; their tasks' figures from the scheduler, read now.
    std::unordered_set<TaskId> plugin_tasks;
    for (auto& p : plugins_->status()) {
        HostStatus::Plugin hp;
        std::vector<TaskId> ids;
        for (auto& t : p.tasks) ids.push_back(t.id);
        plugin_tasks.insert(ids.begin(), ids.end());
        auto figures = tickers_->snapshot(ids);
        for (size_t k = 0; k < figures.size(); ++k) {
            hp.totals.add(figures[k]);
            h.totals.add(figures[k]);
        }
        // Task names as the plugin declared them (the scheduler's are "<plugin>/<task>").
        for (auto& f : figures) {
            const std::string prefix = p.name + "/";
            if (f.name.compare(0, prefix.size(), prefix) == 0) f.name.erase(0, prefix.size());
        }
        if (figures.size() > task_limit) figures.resize(task_limit);
        hp.tasks = std::move(figures);
        hp.plugin = std::move(p);
        h.plugins.push_back(std::move(hp));
    }
    // The application's own tasks, if it has any (a look at every task only then).
    if (tickers_->size() > plugin_tasks.size()) {
        for (auto& t : tickers_->snapshot()) {
            if (plugin_tasks.count(t.id)) continue;
            h.task_totals.add(t);
            h.totals.add(t);
            if (h.tasks.size() < task_limit) h.tasks.push_back(std::move(t));
        }
    }
    return h;
}

std::vector<RunNowOutcome> Host::run_now(const std::string& plugin, const std::string& task) {
    std::vector<RunNowOutcome> out;
    for (auto& p : plugins_->status()) {
        if (p.name != plugin || p.state != PluginStatus::State::running) continue;
        for (auto& t : p.tasks)
            if (task.empty() || t.name == task) {
                RunNowOutcome o{t.name, RunNow::unknown, 0};
                o.result = tickers_->run_now(t.id, &o.runs_before);
                out.push_back(std::move(o));
            }
    }
    return out;
}

std::filesystem::path Host::control_socket() const {
    std::lock_guard<std::mutex> lk(status_mu_);
    return control_path_;
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
        rq_running_ = false;
    }
    rq_cv_.notify_all();
    if (reload_thread_.joinable()) reload_thread_.join();
    if (control_) control_->notify(true);  // clients waiting for a reload: none will come
    config_watch_.reset();
    plugin_watch_ptr_ = nullptr;
    plugin_watch_.reset();
    bool clean = plugins_->unload_all(std::max(left(), Duration::zero()), bound);
    // What embedders added themselves still gets its stop calls; give them at least a moment.
    clean = tickers_->stop(std::max(left(), Duration(std::chrono::milliseconds(100)))) && clean;
    // Status stays readable through the stop (what holds it up); the socket goes last.
    {
        std::lock_guard<std::mutex> lk(status_mu_);
        control_path_.clear();
    }
    control_.reset();
    started_ = false;
    return clean;
}

}  // namespace tickhost
