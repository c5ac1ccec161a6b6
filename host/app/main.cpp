// tickhost: runs the task plugins in plugin_dir on their schedules until SIGINT or SIGTERM.
// `tickhost <subcommand> ...` runs one of the authors' tools instead (cli.hpp, one cmd_*.cpp each).
#include "cli.hpp"
#include "sd_notify.hpp"

#include <tickhost/config.hpp>
#include <tickhost/host.hpp>
#include <tickhost/logging.hpp>
#include <tickhost/signals.hpp>

#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include <thread>

#include <pthread.h>

#ifndef TICKHOST_VERSION
#define TICKHOST_VERSION "dev"
#endif

int main(int argc, char** argv) {
    using tickhost::app::CommandLine;
    const CommandLine cl = tickhost::app::parse_command_line(argc, argv);
    switch (cl.run) {
        case CommandLine::Run::exit:
            return cl.exit_status;
        case CommandLine::Run::check:
            return tickhost::app::cmd_check(cl.check);
        case CommandLine::Run::run_once:
            return tickhost::app::cmd_run_once(cl.run_once);
        case CommandLine::Run::new_plugin:
            return tickhost::app::cmd_new_plugin(cl.new_plugin);
        case CommandLine::Run::status:
            return tickhost::app::cmd_status(cl.status);
        case CommandLine::Run::reload:
            return tickhost::app::cmd_reload(cl.reload);
        case CommandLine::Run::run_now:
            return tickhost::app::cmd_run_now(cl.run_now);
        case CommandLine::Run::host:
            break;
    }
    // systemd's Type=notify (sd_notify.hpp): read and unset its variables while this is the only thread.
    std::string notify_error;
    tickhost::HostNotifier notifier(tickhost::SdNotifier::from_environment(&notify_error));
    const std::string& config_path = cl.host.config_path;
    const std::string& log_level = cl.host.log_level;

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
    if (!notify_error.empty()) log->warn("{}", notify_error);

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
    // A closed pipe on stdout/stderr (`tickhost | head`) must not kill the host and every plugin with it, and
    // must not depend on whether a plugin's runtime ignores SIGPIPE (Go's does): writes fail with EPIPE.
    std::signal(SIGPIPE, SIG_IGN);

    std::unique_ptr<tickhost::Host> host;
    try {
        host = std::make_unique<tickhost::Host>(config, notifier.hooks());
        notifier.attach(*host);
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
            notifier.ready();  // plugin_dir has been applied
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
                  tickhost::format_duration(host->shutdown_timeout()));
        notifier.stopping();
        host->plugins().set_stopping(true);  // a start in progress skips the plugins it has not loaded yet
        stopper = std::thread([&] {
            starter.join();  // a start in progress ends first (the manager skips what is left of it)
            clean = host->stop();
            done = true;
        });
    };
    // The whole stop is bounded by shutdown_timeout; past it (and a moment for the log), exit 1.
    std::chrono::steady_clock::time_point stop_deadline{};
    // While running, wake once a second (to put back signal dispositions a plugin's run may have changed);
    // while stopping, ten times a second (to see the stop end). A signal ends the wait at once either way.
    const timespec idle_tick{1, 0}, stop_tick{0, 100 * 1000 * 1000};
    for (;;) {
        siginfo_t info;
        const int s = sigtimedwait(&sigs, &info, first ? &stop_tick : &idle_tick);
        tickhost::restore_guarded_signals();
        if (!first) notifier.tick();  // STATUS= kept current (only when run by systemd)
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
            stop_deadline = std::chrono::steady_clock::now() + host->shutdown_timeout() + std::chrono::seconds(1);
        } else if (start_failed && !first) {
            first = -1;
            begin_stop("the host could not start");
            stop_deadline = std::chrono::steady_clock::now() + host->shutdown_timeout() + std::chrono::seconds(1);
        }
        if (first && done) break;
        if (first && std::chrono::steady_clock::now() > stop_deadline) {
            log->error(
                "the stop did not finish within shutdown_timeout ({}); exiting 1 with plugin code still "
                "running (named above)",
                tickhost::format_duration(host->shutdown_timeout()));
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
