// Fuzzes host.toml parsing and validation: any text either becomes a HostConfig that satisfies the
// documented bounds, or a ConfigError that names the file; nothing else may escape, nothing may crash.
#include <tickhost/config.hpp>
#include <tickhost/tickers.hpp>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

namespace {
void check(bool ok) {
    if (!ok) std::abort();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        const tickhost::HostConfig cfg = tickhost::parse_config(text, "/fuzz/host.toml");
        check(cfg.workers <= 1024);
        check(cfg.default_timeout.count() > 0 && cfg.shutdown_timeout.count() > 0);
        check(cfg.poll_interval.count() > 0 && cfg.settle.count() > 0);
        check(cfg.log_sink == tickhost::LogSink::console || !cfg.log_file.empty());
        check(cfg.abandon_after.count() > 0 && cfg.crash_window.count() > 0);
        check(cfg.crash_limit >= 1 && cfg.crash_limit <= 1000);
        for (auto& [name, p] : cfg.plugins) {
            check(!name.empty() && name.size() <= 64);
            check(p.sha256.empty() || p.sha256.size() == 64);
            check(!p.interval || p.interval->count() > 0);
            check(!p.timeout || p.timeout->count() > 0);
            check(p.open_files_max <= 1048576 && p.processes_max <= 100000);
            // A process's user, group and limits only on a plugin that gets a process.
            const bool process_only = !p.user.empty() || !p.group.empty() || p.memory_max != 0 ||
                                      p.open_files_max != 0 || p.processes_max != 0;
            check(!process_only || cfg.isolation_of(name) == tickhost::Isolation::process);
            // A jitter: a duration (0..365 days) or a share (at most 100 %), never longer than an interval
            // host.toml sets for the tasks it applies to.
            auto jitter_ok = [&](const std::optional<tickhost::Jitter>& j) {
                return !j || (j->ppm <= 1000000 && j->duration.count() >= 0 && j->duration <= tickhost::max_duration &&
                              (j->ppm == 0 || j->duration.count() == 0));
            };
            check(jitter_ok(p.jitter));
            const auto& pj = p.jitter ? p.jitter : cfg.jitter;
            check(!pj || !p.interval || !pj->longer_than(*p.interval));
            for (auto& [task, t] : p.tasks) {
                check(jitter_ok(t.jitter));
                const auto& j = t.jitter ? t.jitter : pj;
                const auto& i = t.interval ? t.interval : p.interval;
                check(!j || !i || !j->longer_than(*i));
            }
        }
        check(!cfg.jitter || cfg.jitter->ppm <= 1000000);
    } catch (const tickhost::ConfigError& e) {
        check(std::string_view(e.what()).rfind("/fuzz/host.toml:", 0) == 0);
    }
    // Durations: whatever parses prints back to the same value.
    if (auto d = tickhost::parse_duration(text)) check(tickhost::parse_duration(tickhost::format_duration(*d)) == d);
    return 0;
}
