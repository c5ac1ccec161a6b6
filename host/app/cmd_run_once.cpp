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

const char* kRunOnceUsage = R"(usage: tickhost run-once FILE [--task NAME] [--config PATH] [--set KEY=VALUE]...
                         [--timeout DURATION] [--log-level LEVEL]

Loads FILE as the host would (every check), initialises it with its [plugins.<name>] settings, runs one task
once on the host's scheduler (with its deadline and cancellation flag), prints its status, duration and log
lines, then makes the task's stop call, shuts the plugin down and unloads it.

options:
  -t, --task NAME        the task to run (default: the plugin's first task)
  -c, --config PATH      host.toml to take [plugins.<name>] settings, default_timeout and shadow_dir from
  -s, --set KEY=VALUE    a value of [plugins.<name>.config] (wins over --config); repeatable. VALUE is read
                         as true/false, an integer, a number, or else a string ("quotes" optional)
      --timeout DURATION the run's timeout, e.g. 500ms, 10s (default: as the host would resolve it)
  -l, --log-level LEVEL  trace, debug, info (default), warn, error, critical, off
  -h, --help             show this help
exit status: 0 the run and the stop call returned TH_OK, 1 the plugin was refused, its init failed, or a
             call failed or overran its deadline, 2 bad command line or host.toml
)";

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

int cmd_run_once(int argc, char** argv) {
    std::string file, config_path, log_level = "info", timeout_text;
    RunOnceOptions options;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        bool missing = false;
        std::string v;
        if (a == "-h" || a == "--help") {
            std::fputs(kRunOnceUsage, stdout);
            return 0;
        } else if (option_value(argc, argv, i, "--task", "-t", &options.task, &missing)) {
            if (missing) return usage_error("run-once", "--task needs a name", kRunOnceUsage);
        } else if (option_value(argc, argv, i, "--config", "-c", &config_path, &missing)) {
            if (missing) return usage_error("run-once", "--config needs a path", kRunOnceUsage);
        } else if (option_value(argc, argv, i, "--log-level", "-l", &log_level, &missing)) {
            if (missing) return usage_error("run-once", "--log-level needs a level", kRunOnceUsage);
        } else if (option_value(argc, argv, i, "--timeout", "", &timeout_text, &missing)) {
            if (missing) return usage_error("run-once", "--timeout needs a duration", kRunOnceUsage);
            auto d = parse_duration(timeout_text);
            if (!d || d->count() <= 0)
                return usage_error("run-once",
                                   "--timeout: '" + timeout_text + "' is not a positive duration (e.g. 500ms, 10s)",
                                   kRunOnceUsage);
            if (*d > max_duration)
                return usage_error("run-once",
                                   "--timeout: '" + timeout_text +
                                       "' is longer than the longest duration tickhost accepts, 8760h (365 days)",
                                   kRunOnceUsage);
            options.timeout = *d;
        } else if (option_value(argc, argv, i, "--set", "-s", &v, &missing)) {
            const auto eq = v.find('=');
            if (missing || eq == std::string::npos || eq == 0)
                return usage_error("run-once", "--set needs KEY=VALUE", kRunOnceUsage);
            const std::string value = v.substr(eq + 1);
            // A value written as a duration is bounded like every duration (the plugin may schedule with it).
            if (auto d = parse_duration(value); d && *d > max_duration)
                return usage_error("run-once",
                                   "--set " + v.substr(0, eq) + ": '" + value +
                                       "' is longer than the longest duration tickhost accepts, 8760h (365 days)",
                                   kRunOnceUsage);
            options.config.set(v.substr(0, eq), parse_value(value));
        } else if (a.size() > 1 && a[0] == '-') {
            return usage_error("run-once", "unknown option '" + a + "'", kRunOnceUsage);
        } else if (file.empty()) {
            file = a;
        } else {
            return usage_error("run-once", "one plugin file at a time ('" + a + "' is a second one)", kRunOnceUsage);
        }
    }
    if (file.empty()) return usage_error("run-once", "name the plugin file", kRunOnceUsage);

    HostConfig config;
    try {
        if (!config_path.empty()) config = load_config(config_path);
        log_lines_to(stdout, log_level);
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
