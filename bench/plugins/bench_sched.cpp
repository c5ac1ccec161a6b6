// Bench plugin for tickhost-bench's plugin mode: the scheduler workload, but every task is a task of a real
// plugin called through the C ABI. Declares `tasks` tasks at `interval` from init (raw C ABI, one static
// run function, no C++ layer in the call path). Each run records its lateness (now - due, from the host's
// due_ns service) into the bench's own histogram, whose address comes in config `hist` (same process);
// stop calls count into config `stops`. Isolated (another process: no shared addresses), it keeps its own
// histogram and counter instead and writes them at shutdown to the file at config `out`:
// "<runs> <late_p50_us> <late_p99_us> <late_max_us> <early> <stops>".
#include <tickhost/plugin.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <new>
#include <string>
#include <vector>

#include "../histogram.hpp"

namespace {

const th_host_api* host;

struct State {
    tickhost::bench::Histogram* hist = nullptr;
    std::atomic<long>* stops = nullptr;
    std::vector<std::string> names;
    // Isolated: its own.
    tickhost::bench::Histogram own_hist;
    std::atomic<long> own_stops{0};
    std::string out;
};

th_status run(void* state, th_ctx ctx, int32_t is_stop) {
    auto* s = static_cast<State*>(state);
    if (is_stop) {
        s->stops->fetch_add(1, std::memory_order_release);
        return TH_OK;
    }
    const int64_t now = std::chrono::steady_clock::now().time_since_epoch().count();
    s->hist->record(now - host->due_ns(ctx));
    return TH_OK;
}

th_status fail(th_ctx ctx, const char* msg) {
    host->set_error(ctx, msg, std::char_traits<char>::length(msg));
    return TH_ERROR;
}

th_status init(th_ctx ctx, void** out) {
    int64_t n = 0, interval = 0, hist = 0, stops = 0;
    if (host->config_int(ctx, "tasks", 5, &n) != TH_OK || n < 1) return fail(ctx, "config 'tasks' (>= 1) is required");
    if (host->config_duration_ns(ctx, "interval", 8, &interval) != TH_OK) return fail(ctx, "config 'interval' is required");
    const char* file = nullptr;
    size_t file_len = 0;
    const bool shared = host->config_int(ctx, "hist", 4, &hist) == TH_OK && host->config_int(ctx, "stops", 5, &stops) == TH_OK;
    if (!shared && host->config_string(ctx, "out", 3, &file, &file_len) != TH_OK)
        return fail(ctx, "config 'hist' and 'stops' (addresses in the bench process), or 'out' (a file), are required");
    auto* s = new (std::nothrow) State;
    if (!s) return fail(ctx, "out of memory");
    s->hist = shared ? reinterpret_cast<tickhost::bench::Histogram*>(hist) : &s->own_hist;
    s->stops = shared ? reinterpret_cast<std::atomic<long>*>(stops) : &s->own_stops;
    if (!shared) s->out.assign(file, file_len);
    s->names.reserve(size_t(n));
    for (int64_t i = 0; i < n; ++i) {
        s->names.push_back("t" + std::to_string(i));
        th_task_def def{};
        def.struct_size = sizeof def;
        def.name = s->names.back().c_str();
        def.default_interval_ns = interval;
        def.run = run;
        if (host->add_task(ctx, &def) != TH_OK) {
            delete s;
            return fail(ctx, "the host refused a task");
        }
    }
    *out = s;
    return TH_OK;
}

void shutdown(void* state) {
    auto* s = static_cast<State*>(state);
    if (!s->out.empty()) {
        if (FILE* f = std::fopen(s->out.c_str(), "w")) {
            const auto sum = s->hist->summarize();
            std::fprintf(f, "%llu %llu %llu %llu %llu %ld\n", (unsigned long long)sum.count,
                         (unsigned long long)sum.p50_us, (unsigned long long)sum.p99_us, (unsigned long long)sum.max_us,
                         (unsigned long long)sum.early, s->stops->load());
            std::fclose(f);
        }
    }
    delete s;
}

const th_plugin_def plugin = {sizeof(th_plugin_def), TH_ABI_MAJOR, TH_ABI_MINOR, "bench_sched", "1.0.0",
                              "tickhost-bench's plugin-mode workload", nullptr, 0, init, shutdown};

}  // namespace

extern "C" TH_EXPORT const th_plugin_def* tickhost_plugin_entry(const th_host_info* info) {
    if (!info || !info->api || info->api->struct_size < offsetof(th_host_api, due_ns) + sizeof(void*)) return nullptr;
    host = info->api;
    return &plugin;
}
