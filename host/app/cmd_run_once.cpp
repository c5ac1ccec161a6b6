// tickhost run-once FILE: load, init with config, one run of one task, its stop call, shutdown, unload —
// the plugin author's edit-build-run loop without a running host.
#include "cli.hpp"

#include <tickhost/config.hpp>
#include <tickhost/logging.hpp>
#include <tickhost/plugin_manager.hpp>
#include <tickhost/tickers.hpp>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace tickhost::app {
namespace {

// --set values: typed like the TOML a user would have written in host.toml.
PluginValues::Value parse_value(const std::string& v) {
    if (v == "true") return true;
    if (v == "false") return false;
    if (v.size() >= 2 && (v.front() == '"' || v.front() == '\'') && v.back() == v.front())
        return v.substr(1, v.size() - 2);
    if (!v.empty()) {
        char* end = nullptr;
        errno = 0;
        const long long i = std::strtoll(v.c_str(), &end, 10);
        if (errno == 0 && end && *end == '\0') return int64_t(i);
        errno = 0;
        const double d = std::strtod(v.c_str(), &end);
        if (errno == 0 && end && *end == '\0' && v.find_first_of("0123456789") != std::string::npos) return d;
    }
    return v;
}

void print_call(const char* what, const TaskCallReport& c) {
    if (!c.called) {
        std::printf("%-6s not made\n", what);
        return;
    }
    std::printf("%-6s %s in %s%s%s%s\n", what, c.ok ? "ok" : "FAILED", human_duration(c.duration).c_str(),
                c.overran ? " (past its deadline)" : "", c.ok ? "" : ": ", c.ok ? "" : c.error.c_str());
}

}  // namespace

int cmd_run_once(const RunOnceArgs& args) {
    const std::string& file = args.file;
    const std::string& config_path = args.config_path;
    RunOnceOptions options;
    options.task = args.task;
    options.timeout = args.timeout;
    for (const auto& [key, value] : args.set) options.config.set(key, parse_value(value));

    HostConfig config;
    try {
        if (!config_path.empty()) config = load_config(config_path);
        apply_isolation(config, args.isolation);
        log_lines_to(stdout, args.log_level);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "tickhost run-once: %s\n", e.what());
        return 2;
    }

    std::optional<RunOnceReport> r;
    LoadError err;
    {
        Tickers::Options to;
        to.workers = 1;  // one task, one run at a time
        to.default_timeout = config.default_timeout;
        Tickers tickers(to);
        std::unique_ptr<PluginManager> manager;
        try {
            manager = std::make_unique<PluginManager>(tickers, config);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "tickhost run-once: %s\n", e.what());
            return 2;
        }
        tickers.start();
        std::printf("run-once %s\n", file.c_str());
        std::fflush(stdout);
        r = manager->run_once(file, options, &err);
        flush_logs();
        std::fflush(stdout);
        if (r && r->stop_state != StopState::stopped) {
            // Its code may still be running: leave without destructors (they would wait for it).
            const PluginTaskInfo& t = r->plugin.tasks.front();
            print_call("run", r->run);
            std::printf("stop   not made: the run %s\n", r->stop_state == StopState::abandoned
                                                             ? "ignored its cancellation and was abandoned"
                                                             : "did not return in time");
            std::printf("result FAILED: task '%s' does not cooperate with its deadline (poll is_cancelled)\n",
                        t.name.c_str());
            std::fflush(stdout);
            std::_Exit(1);
        }
        tickers.stop();
    }
    if (!r) {
        std::printf("%s: refused: %s: %s\n", file.c_str(), err.code_name.c_str(), err.reason.c_str());
        if (!err.hint.empty()) std::printf("  what to do: %s\n", err.hint.c_str());
        return 1;
    }
    const PluginTaskInfo& t = r->plugin.tasks.front();
    std::printf("plugin %s %s (%s)\n", r->plugin.name.c_str(),
                r->plugin.version.empty() ? "(no version)" : r->plugin.version.c_str(), file.c_str());
    std::printf("task   %s (interval %s, timeout %s)\n", t.name.c_str(), format_duration(t.interval).c_str(),
                format_duration(t.timeout).c_str());
    print_call("run", r->run);
    print_call("stop", r->stop);
    const bool ok = r->run.called && r->run.ok && !r->run.overran && r->stop.called && r->stop.ok;
    std::printf("result %s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}

}  // namespace tickhost::app
