// tickhost-micro: Google Benchmark microbenchmarks of the plugin call path.
//  - one run through the ABI (open the call's context, call the C function, close the context) against a
//    direct call of the same function;
//  - the host services a plugin calls on its hot path: is_cancelled, due_ns, and log below the level
//    threshold (which must cost one compare, not a format).
#include <benchmark/benchmark.h>

#include <tickhost/logging.hpp>
#include <tickhost/plugin.h>

#include <atomic>
#include <chrono>

#include "host_api.hpp"

namespace {

using tickhost::detail::ContextSlot;
using tickhost::detail::CtxOwner;

// What a minimal plugin task does: nothing but return.
extern "C" __attribute__((noinline)) th_status bench_run(void* state, th_ctx ctx, int32_t is_stop) {
    benchmark::DoNotOptimize(state);
    benchmark::DoNotOptimize(ctx);
    benchmark::DoNotOptimize(is_stop);
    return TH_OK;
}

th_run_fn volatile run_ptr = bench_run;  // called through a pointer in both cases, as the host does

struct Call {
    CtxOwner owner;
    ContextSlot slot{&owner};
    std::atomic<uint64_t> cancel{0};
    Call() {
        owner.plugin = "bench";
        owner.task = "t";
        owner.logger = tickhost::get_logger("plugin.bench");
        owner.logger->set_level(spdlog::level::info);
    }
};

void DirectCall(benchmark::State& st) {
    int state = 0;
    for (auto _ : st) benchmark::DoNotOptimize(run_ptr(&state, th_ctx{0}, 0));
}
BENCHMARK(DirectCall);

void AbiRun(benchmark::State& st) {
    Call c;
    int state = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::hours(1);
    uint64_t seq = 0;
    for (auto _ : st) {
        th_ctx ctx = c.slot.open(&c.cancel, ++seq, deadline, deadline);
        th_status s = run_ptr(&state, ctx, 0);
        benchmark::DoNotOptimize(s);
        benchmark::DoNotOptimize(c.slot.close());
    }
}
BENCHMARK(AbiRun);

// A host service called in a loop with an open context, as a plugin's run would.
template <typename F>
void with_open_call(benchmark::State& st, F service) {
    Call c;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::hours(1);
    th_ctx ctx = c.slot.open(&c.cancel, 1, deadline, deadline);
    const th_host_api* api = tickhost::detail::host_api_table();
    for (auto _ : st) service(api, ctx);
    c.slot.close();
}

void IsCancelled(benchmark::State& st) {
    with_open_call(st, [](const th_host_api* api, th_ctx ctx) { benchmark::DoNotOptimize(api->is_cancelled(ctx)); });
}
BENCHMARK(IsCancelled);

void DueNs(benchmark::State& st) {
    with_open_call(st, [](const th_host_api* api, th_ctx ctx) { benchmark::DoNotOptimize(api->due_ns(ctx)); });
}
BENCHMARK(DueNs);

void LogBelowThreshold(benchmark::State& st) {
    static const char msg[] = "debug detail that nobody reads";
    with_open_call(st, [](const th_host_api* api, th_ctx ctx) { api->log(ctx, TH_LOG_DEBUG, msg, sizeof msg - 1); });
}
BENCHMARK(LogBelowThreshold);

}  // namespace

BENCHMARK_MAIN();
