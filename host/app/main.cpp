// tickhost: runs the task plugins in plugin_dir on their schedules until SIGINT or SIGTERM.
// `tickhost <subcommand> ...` runs one of the authors' tools instead (cli.hpp, one cmd_*.cpp each).
#include "cli.hpp"

#include <tickhost/config.hpp>
#include <tickhost/host.hpp>
#include <tickhost/logging.hpp>
#include <tickhost/signals.hpp>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <pthread.h>

#ifndef TICKHOST_VERSION
#define TICKHOST_VERSION "dev"
#endif

namespace {

const char* kUsage = R"(usage: tickhost [--config PATH] [--log-level LEVEL]
       tickhost --help | --version | help [SUBCOMMAND]
       tickhost check [--json] FILE...            load plugin files as the host would; show what they declare
       tickhost run-once FILE [--task NAME] ...   init, one run, the stop call, unload; show status and logs
       tickhost new-plugin NAME [--lang cpp|c]    write a ready-to-build plugin project
       (tickhost <subcommand> --help for its options)

Runs the task plugins found in plugin_dir (see host.toml) on their schedules.

options:
  -c, --config PATH      host.toml to use (default: ./host.toml)
  -l, --log-level LEVEL  override [host] log_level: trace, debug, info, warn, error, critical, off
  -h, --help             show this help
  -V, --version          show the version and the plugin ABI version

signals:
  SIGINT, SIGTERM        graceful stop: every task gets its stop call, plugins are unloaded, exit 0
                         (a second one exits at once with status 130)
  SIGHUP                 re-read host.toml and apply changed plugin settings (also done when the file changes)
exit status: 0 stopped cleanly, 1 something did not stop in time, 2 bad command line or host.toml
)";

int usage_error(const std::string& msg) {
    std::fprintf(stderr, "tickhost: %s\n%s", msg.c_str(), kUsage);
    return 2;
}

size_t edit_distance(const std::string& a, const std::string& b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            const size_t up = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
            diag = up;
        }
    }
    return row[b.size()];
}

// "; did you mean 'check'?" for a near miss among `known`, else "".
std::string did_you_mean(const std::string& word, std::initializer_list<const char*> known) {
    std::string best;
    size_t best_d = 3;  // at most two edits away
    for (const char* k : known) {
        const size_t d = edit_distance(word, k);
        if (d < best_d) best_d = d, best = k;
    }
    return best.empty() ? "" : "; did you mean '" + best + "'?";
}

}  // namespace

int main(int argc, char** argv) {
    if (argc > 1) {
        const std::string cmd = argv[1];
        if (cmd == "check") return tickhost::app::cmd_check(argc - 1, argv + 1);
        if (cmd == "run-once") return tickhost::app::cmd_run_once(argc - 1, argv + 1);
        if (cmd == "new-plugin") return tickhost::app::cmd_new_plugin(argc - 1, argv + 1);
        if (cmd == "help") {
            // `tickhost help` and `tickhost help SUBCOMMAND`, as git and systemctl users expect.
            if (argc == 2) {
                std::fputs(kUsage, stdout);
                return 0;
            }
            const std::string sub = argv[2];
            char help[] = "--help";
            char* sub_argv[] = {argv[2], help, nullptr};
            if (sub == "check") return tickhost::app::cmd_check(2, sub_argv);
            if (sub == "run-once") return tickhost::app::cmd_run_once(2, sub_argv);
            if (sub == "new-plugin") return tickhost::app::cmd_new_plugin(2, sub_argv);
            return usage_error("help: no subcommand '" + sub + "'" +
                               did_you_mean(sub, {"check", "run-once", "new-plugin"}));
        }
        if (!cmd.empty() && cmd[0] != '-')
            return usage_error("unknown subcommand '" + cmd + "'" +
                               did_you_mean(cmd, {"check", "run-once", "new-plugin", "help"}));
    }
    std::string config_path = "host.toml";
    std::string log_level;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&](const char* name) -> const char* {
            if (i + 1 >= argc) return nullptr;
            (void)name;
            return argv[++i];
        };
        if (a == "-h" || a == "--help") {
            std::fputs(kUsage, stdout);
            return 0;
        } else if (a == "-V" || a == "--version") {
            std::printf("tickhost %s (plugin ABI %d.%d)\n", TICKHOST_VERSION, TH_ABI_MAJOR, TH_ABI_MINOR);
            return 0;
        } else if (a == "-c" || a == "--config") {
            const char* v = value("--config");
            if (!v) return usage_error("--config needs a path");
            config_path = v;
        } else if (a.rfind("--config=", 0) == 0) {
            config_path = a.substr(9);
        } else if (a == "-l" || a == "--log-level") {
            const char* v = value("--log-level");
            if (!v) return usage_error("--log-level needs a level");
            log_level = v;
        } else if (a.rfind("--log-level=", 0) == 0) {
            log_level = a.substr(12);
        } else {
            return usage_error("unknown argument '" + a + "'" +
                               did_you_mean(a.substr(0, a.find('=')),
                                            {"--config", "--log-level", "--help", "--version"}));
        }
    }

    if (!log_level.empty()) {
        static const char* const levels[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
        if (std::find(std::begin(levels), std::end(levels), log_level) == std::end(levels))
            return usage_error("--log-level: '" + log_level +
                               "' is not a level (use trace, debug, info, warn, error, critical or off)");
    }
    tickhost::HostConfig config;
    try {
        config = tickhost::load_config(config_path);
        if (!log_level.empty()) config.log_level = log_level;
        tickhost::setup_logging(config);
    } catch (const tickhost::ConfigError& e) {
        std::fprintf(stderr, "tickhost: %s\n", e.what());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "tickhost: %s: %s\n", config_path.c_str(), e.what());
        return 2;
    }
    auto log = tickhost::get_logger("host");

    // Block the signals we handle before any thread exists, so that every thread inherits the mask and
    // only this thread's sigtimedwait below sees them (no async-signal-safety puzzles). The guard keeps a
    // plugin from silencing them (SIG_IGN, a handler of its own): see <tickhost/signals.hpp>.
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
    tickhost::guard_signals({SIGINT, SIGTERM, SIGHUP});

    std::unique_ptr<tickhost::Host> host;
    try {
        host = std::make_unique<tickhost::Host>(config);
    } catch (const std::exception& e) {
        log->critical("cannot start: {}", e.what());
        tickhost::flush_logs();
        return 1;
    }
    log->info("tickhost {} starting: config {}, plugin_dir {}, {} worker(s)", TICKHOST_VERSION, config.source.string(),
              config.plugin_dir.string(), host->tickers().worker_count());

    // This thread only ever waits for signals: starting, reloading and stopping run on threads of their own,
    // so a signal is answered at once whatever the plugins are doing (a second SIGINT/SIGTERM always exits).
    std::atomic<bool> start_failed{false};
    std::thread starter([&] {
        try {
            host->start();
        } catch (const std::exception& e) {
            log->critical("cannot start: {}", e.what());
            start_failed = true;
        }
        tickhost::restore_guarded_signals();
    });

    std::atomic<bool> done{false};
    bool clean = false;
    std::thread stopper;
    int first = 0;
    auto begin_stop = [&](const char* why) {
        log->info("{}: stopping (stop calls, then unload; bound {})", why,
                  tickhost::format_duration(config.shutdown_timeout));
        host->plugins().set_stopping(true);  // a start in progress skips the plugins it has not loaded yet
        stopper = std::thread([&] {
            starter.join();  // a start in progress ends first (the manager skips what is left of it)
            clean = host->stop();
            done = true;
        });
    };
    // The whole stop is bounded by shutdown_timeout; past it (and a moment for the log), exit 1.
    std::chrono::steady_clock::time_point stop_deadline{};
    const timespec tick{0, 100 * 1000 * 1000};
    for (;;) {
        siginfo_t info;
        const int s = sigtimedwait(&sigs, &info, &tick);
        tickhost::restore_guarded_signals();
        if (s == SIGHUP) {
            if (!first) {
                log->info("SIGHUP received: reloading {}", config.source.string());
                host->request_reload();
            }
        } else if (s == SIGINT || s == SIGTERM) {
            if (first) {
                log->warn("second {}: exiting now without waiting for stop calls", strsignal(s));
                tickhost::flush_logs();
                std::_Exit(130);
            }
            first = s;
            begin_stop((std::string(strsignal(s)) + " received").c_str());
            stop_deadline = std::chrono::steady_clock::now() + config.shutdown_timeout + std::chrono::seconds(1);
        } else if (start_failed && !first) {
            first = -1;
            begin_stop("the host could not start");
            stop_deadline = std::chrono::steady_clock::now() + config.shutdown_timeout + std::chrono::seconds(1);
        }
        if (first && done) break;
        if (first && std::chrono::steady_clock::now() > stop_deadline) {
            log->error(
                "the stop did not finish within shutdown_timeout ({}); exiting 1 with plugin code still "
                "running (named above)",
                tickhost::format_duration(config.shutdown_timeout));
            tickhost::flush_logs();
            std::_Exit(1);
        }
    }
    stopper.join();
    if (!clean || start_failed) {
        if (!clean)
            log->error("stopped, but some task did not finish within shutdown_timeout (named above); exiting 1");
        tickhost::flush_logs();
        std::_Exit(1);  // code of a stuck plugin may still run: skip static destructors
    }
    host.reset();
    log->info("stopped cleanly");
    tickhost::flush_logs();
    return 0;
}
