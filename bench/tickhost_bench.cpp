// tickhost-bench: the peers' measurement protocol (../shared/peers/README.md) run on tickhost.
//
//   tickhost-bench scheduler --tasks N --interval-ms I --duration-s D [--addremove-n K] [--no-addremove]
//                            [--workers W]
//
// scheduler: N plain C++ tasks in a Tickers registry (the embedding API), all first due at T0 + I, with the
// host's real defaults (default timeout, worker count); each run records its lateness. Prints one JSON line
// (the last line on stdout) with the peers' fields. Logs go to stderr.
//
//   tickhost-bench plugin --tasks N --interval-ms I --duration-s D [--workers W]
//
// --jitter J (scheduler and plugin modes): each task's phase offset as the host offsets it, J a duration
// ("50ms") or a share of the interval ("100%"): whole 10 ms steps, so tasks come due in up to J / 10 ms batches
// per interval instead of one. Scheduler mode seeds task i with "t<i>"; plugin mode sets [plugins.bench_sched]
// jitter. Lateness is then measured against each task's own due time, and expected_runs counts the due times
// inside the window (they no longer fall between ticks: a task may run once more while the stop begins).
//
// plugin: the same workload, every task a task of a real plugin (bench_sched.so) loaded by the host and
// called through the C ABI, so that the ABI's cost per run shows next to scheduler mode.
//
// --isolation process: the same plugin in a process of its own (tickhost-worker); the plugin keeps its
// histogram and writes it to a file at shutdown, and the JSON line adds the child's CPU time.
//
//   tickhost-bench isolated [--calls M]
//
// isolated: the cost of one run's round trip, in-process and isolated, on the same plugin: M calls of one
// task, back to back from one thread, each timed around the scheduler's call into the plugin (the adapter
// a worker calls: in-process the C call, isolated the request on a lane, the child's run, its answer).
// Idle machine, no spinning, no batching: each call is a blocking round trip between two processes.
// Prints p50/p99 for both and the difference.
//
//   tickhost-bench reload [--cycles C]
//
// reload: a full Host watching a temporary plugin_dir (inotify, default settle), with the bench plugin at a
// 10 ms interval. Each cycle: move build A in (drop -> first run), rename build B over it (replace -> first
// run of the new version), delete it (delete -> stop call done). Milliseconds, p50/p99/max over the cycles.
//
//   tickhost-bench idle [--tasks N] [--duration-s D] [--isolation process]
//
// idle: the full host as operators run it (inotify watcher, default logging and workers) with N tasks
// (default 1000) at a 1 h interval; counts the process's context switches (all threads) over D seconds
// (default 5) after start-up. A host with nothing due should not wake up. Isolated, its worker process's
// context switches count too.
#include <tickhost/config.hpp>
#include <tickhost/host.hpp>
#include <tickhost/logging.hpp>
#include <tickhost/tickers.hpp>

#include "load_pipeline.hpp"

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "histogram.hpp"

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using tickhost::bench::Histogram;

namespace {

struct Args {
    std::string mode;
    long tasks = 100;
    long interval_ms = 100;
    double duration_s = 10;
    long addremove_n = 100000;
    bool no_addremove = false;
    bool addremove_only = false;
    size_t workers = 0;  // 0: the host's default
    long cycles = 100;
    std::string isolation = "none";
    long calls = 20000;
    std::string jitter;  // empty: none
    bool tasks_set = false;
    bool duration_set = false;
};

const char* kUsage =
    "usage: tickhost-bench scheduler --tasks N --interval-ms I --duration-s D [--addremove-n K]\n"
    "                                [--no-addremove] [--workers W] [--jitter J]\n"
    "       tickhost-bench plugin --tasks N --interval-ms I --duration-s D [--workers W] [--isolation process]\n"
    "                             [--jitter J]\n"
    "       tickhost-bench isolated [--calls M]\n"
    "       tickhost-bench reload [--cycles C]\n"
    "       tickhost-bench idle [--tasks N] [--duration-s D] [--isolation process]\n";

tickhost::Jitter parse_jitter(const std::string& text);

[[noreturn]] void usage(const std::string& msg) {
    std::fprintf(stderr, "tickhost-bench: %s\n%s", msg.c_str(), kUsage);
    std::exit(2);
}

Args parse(int argc, char** argv) {
    Args a;
    CLI::App app{"tickhost-bench", "tickhost-bench"};
    app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // the last one given wins
    app.add_option("mode", a.mode);
    auto* tasks = app.add_option("--tasks", a.tasks);
    app.add_option("--cycles", a.cycles);
    app.add_option("--interval-ms", a.interval_ms);
    auto* duration = app.add_option("--duration-s", a.duration_s);
    app.add_option("--addremove-n", a.addremove_n);
    app.add_flag("--no-addremove", a.no_addremove);
    app.add_flag("--addremove-only", a.addremove_only);  // the add/remove child (run_addremove_child)
    app.add_option("--workers", a.workers);
    app.add_option("--isolation", a.isolation);
    app.add_option("--calls", a.calls);
    app.add_option("--jitter", a.jitter);
    std::string threads;
    app.add_option("--threads", threads);  // the peers' knob, taken and ignored; tickhost's is --workers
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp&) {
        std::fputs(kUsage, stdout);
        std::exit(0);
    } catch (const CLI::ParseError& e) {
        usage(e.what());
    }
    a.tasks_set = tasks->count() > 0;
    a.duration_set = duration->count() > 0;
    if (a.mode.empty()) a.mode = "scheduler";
    if (a.tasks < 0 || a.interval_ms <= 0 || a.duration_s <= 0 || a.calls < 1) usage("bad arguments");
    if (a.isolation != "none" && a.isolation != "process") usage("--isolation is none or process");
    if (!a.jitter.empty()) parse_jitter(a.jitter);  // usage error if it is not one
    return a;
}

// --jitter: "50ms" or "100%" (host.toml's forms, without "off").
tickhost::Jitter parse_jitter(const std::string& text) {
    tickhost::Jitter j;
    if (!text.empty() && text.back() == '%') {
        char* end = nullptr;
        const double pct = std::strtod(text.c_str(), &end);
        if (end != text.c_str() + text.size() - 1 || !(pct > 0) || pct > 100) usage("--jitter: a share is 0..100%");
        j.ppm = uint32_t(std::llround(pct * 10000));
    } else if (auto d = tickhost::parse_duration(text); d && *d > tickhost::Duration::zero()) {
        j.duration = *d;
    } else {
        usage("--jitter: a duration (\"50ms\") or a share of the interval (\"100%\")");
    }
    return j;
}

// The JSON lines: one object per line, keys in the order given, numbers rounded as the peers print them.
using Json = nlohmann::ordered_json;
double rounded(double v, int decimals) {
    const double f = std::pow(10.0, decimals);
    return std::round(v * f) / f;
}
void print_line(const Json& j) { std::printf("%s\n", j.dump().c_str()); }

double cpu_s() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return double(ru.ru_utime.tv_sec) + ru.ru_utime.tv_usec / 1e6 + double(ru.ru_stime.tv_sec) + ru.ru_stime.tv_usec / 1e6;
}

long rss_peak_kb() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

int thread_count() {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("Threads:", 0) == 0) return std::atoi(line.c_str() + 8);
    return -1;
}

// The scheduler the host would build from a default host.toml, with --workers applied.
tickhost::Tickers::Options options(const Args& a) {
    tickhost::HostConfig defaults;
    if (a.workers) defaults.workers = a.workers;
    return tickhost::scheduler_options(defaults);
}

void wait_for(const std::atomic<long>& c, long target) {
    while (c.load(std::memory_order_acquire) < target) std::this_thread::sleep_for(50us);
}

// Add K tasks at a 1 h interval to a running registry, then remove them all; a remove is complete when its
// stop call has run. Runs in a child process so its memory and CPU stay out of the main figures.
int addremove_only(const Args& a) {
    tickhost::Tickers t(options(a));
    t.start();
    std::atomic<long> stops{0};
    std::vector<tickhost::TaskId> ids;
    ids.reserve(size_t(a.addremove_n));
    auto t0 = Clock::now();
    for (long i = 0; i < a.addremove_n; ++i)
        ids.push_back(t.add(1h, {"ar", 0s, [&stops](tickhost::RunContext&, bool stop) {
                                     if (stop) stops.fetch_add(1, std::memory_order_release);
                                     return tickhost::TaskResult::success();
                                 }}));
    auto t1 = Clock::now();
    for (auto id : ids) t.remove(id);
    wait_for(stops, a.addremove_n);
    auto t2 = Clock::now();
    print_line({{"add_per_s", std::llround(double(a.addremove_n) / std::chrono::duration<double>(t1 - t0).count())},
                {"remove_per_s", std::llround(double(a.addremove_n) / std::chrono::duration<double>(t2 - t1).count())},
                {"stops", stops.load()}});
    return 0;
}

bool run_addremove_child(const Args& a, double& add_per_s, double& remove_per_s) {
    char self[4096] = {0};
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) return false;
    std::string cmd = std::string("'") + self + "' " + a.mode + " --addremove-only --addremove-n " +
                      std::to_string(a.addremove_n) + (a.workers ? " --workers " + std::to_string(a.workers) : "");
    FILE* f = popen(cmd.c_str(), "r");
    if (!f) return false;
    char buf[4096] = {0};
    bool ok = false;
    if (std::fgets(buf, sizeof buf, f)) {
        const char* ad = std::strstr(buf, "\"add_per_s\":");
        const char* rm = std::strstr(buf, "\"remove_per_s\":");
        if (ad && rm) {
            add_per_s = std::atof(ad + 12);
            remove_per_s = std::atof(rm + 15);
            ok = true;
        }
    }
    return pclose(f) == 0 && ok;
}

// The protocol's window: sleep until `stop_at` (sampling the thread count just before it), then stop
// everything with `stop` and time it.
struct Window {
    int threads = 0;
    double stop_ms = 0;
};
template <typename Stop>
Window run_window(Clock::time_point stop_at, Clock::duration interval, Stop stop) {
    Window w;
    std::this_thread::sleep_until(stop_at - std::min<Clock::duration>(interval / 4, 10ms));
    w.threads = thread_count();
    std::this_thread::sleep_until(stop_at);
    const auto s0 = Clock::now();
    stop();
    w.stop_ms = std::chrono::duration<double, std::milli>(Clock::now() - s0).count();
    return w;
}

// The peers' JSON line for a run of N tasks (`child_cpu_s`: an isolated plugin's process).
// `expected_runs` < 0: tasks x the window's ticks (every task due at the same instants).
void print_runs(const char* mode, const Args& a, const Histogram::Summary& sum, double add_per_s, double remove_per_s,
                const Window& w, long stops, double register_ms, size_t workers, double child_cpu_s = 0,
                long expected_runs = -1) {
    const long K = long(a.duration_s * 1000.0 / double(a.interval_ms));
    if (expected_runs < 0) expected_runs = a.tasks * K;
    print_line({{"peer", "tickhost"},
                {"mode", mode},
                {"tasks", a.tasks},
                {"interval_ms", a.interval_ms},
                {"duration_s", a.duration_s},
                {"runs", sum.count},
                {"expected_runs", expected_runs},
                {"late_p50_us", sum.p50_us},
                {"late_p99_us", sum.p99_us},
                {"late_max_us", sum.max_us},
                {"cpu_s", rounded(cpu_s(), 3)},
                {"rss_peak_kb", rss_peak_kb()},
                {"add_per_s", std::llround(add_per_s)},
                {"remove_per_s", std::llround(remove_per_s)},
                {"stop_ms", rounded(w.stop_ms, 3)},
                {"stops", stops},
                {"register_ms", rounded(register_ms, 1)},
                {"early", sum.early},
                {"addremove_n", add_per_s > 0 ? a.addremove_n : 0L},
                {"threads", w.threads},
                {"workers", workers},
                {"isolation", a.isolation},
                {"child_cpu_s", rounded(child_cpu_s, 3)},
                {"jitter", a.jitter.empty() ? "none" : a.jitter}});
}

// CPU time of the children this process has reaped (an isolated plugin's tickhost-worker).
double children_cpu_s() {
    rusage ru{};
    getrusage(RUSAGE_CHILDREN, &ru);
    return double(ru.ru_utime.tv_sec) + ru.ru_utime.tv_usec / 1e6 + double(ru.ru_stime.tv_sec) + ru.ru_stime.tv_usec / 1e6;
}

// The tickhost-worker processes this one started.
std::vector<pid_t> worker_pids() {
    std::vector<pid_t> out;
    std::error_code ec;
    for (auto& e : std::filesystem::directory_iterator("/proc", ec)) {
        const std::string n = e.path().filename().string();
        if (n.empty() || !std::isdigit(static_cast<unsigned char>(n[0]))) continue;
        std::ifstream in(e.path() / "stat");
        std::string stat;
        std::getline(in, stat);
        const auto close = stat.rfind(')');
        if (close == std::string::npos || stat.find("(tickhost-worker)") == std::string::npos) continue;
        long ppid = 0;
        char state = 0;
        if (std::sscanf(stat.c_str() + close + 1, " %c %ld", &state, &ppid) == 2 && ppid == long(getpid()))
            out.push_back(pid_t(std::atol(n.c_str())));
    }
    return out;
}

// The tickhost-worker the host finds beside its own executable: here, the one built with this bench.
void use_built_worker() {
#ifdef BENCH_WORKER
    setenv("TICKHOST_WORKER", BENCH_WORKER, 0);
#endif
}

int scheduler_mode(const Args& a) {
    double add_per_s = 0, remove_per_s = 0;
    if (!a.no_addremove && !run_addremove_child(a, add_per_s, remove_per_s))
        std::fprintf(stderr, "add/remove child failed\n");

    const long N = a.tasks;
    const auto I = std::chrono::milliseconds(a.interval_ms);
    Histogram hist;
    std::vector<uint64_t> k(size_t(N), 0);
    std::atomic<long> stops{0};
    tickhost::Tickers t(options(a));
    const auto T0 = Clock::now();
    const auto window =
        std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(a.duration_s)) + I / 2;
    std::vector<tickhost::Duration> offsets;
    if (!a.jitter.empty()) {
        // Each task offset as the host offsets a plugin's; lateness against its own due time.
        const tickhost::Duration J = parse_jitter(a.jitter).of(I);
        for (long i = 0; i < N; ++i) {
            const tickhost::Duration o = tickhost::jitter_offset("t" + std::to_string(i), J);
            offsets.push_back(o);
            t.add(tickhost::Schedule{I, o, false, tickhost::TimePoint(T0.time_since_epoch())},
                  {"t", 0s, [&hist, &stops](tickhost::RunContext& ctx, bool stop) {
                       if (stop)
                           stops.fetch_add(1, std::memory_order_release);
                       else
                           hist.record((Clock::now().time_since_epoch() - ctx.due().time_since_epoch()).count());
                       return tickhost::TaskResult::success();
                   }});
        }
    }
    for (long i = 0; i < N && a.jitter.empty(); ++i) {
        uint64_t* ki = &k[size_t(i)];
        t.add(I,
              {"t", 0s,
               [ki, I, T0, &hist, &stops](tickhost::RunContext&, bool stop) {
                   if (stop) {
                       stops.fetch_add(1, std::memory_order_release);
                   } else {
                       auto now = Clock::now();
                       ++*ki;
                       hist.record((now - (T0 + int64_t(*ki) * I)).count());
                   }
                   return tickhost::TaskResult::success();
               }},
              T0 + I);
    }
    const double register_ms = std::chrono::duration<double, std::milli>(Clock::now() - T0).count();
    const auto stop_at = T0 + window;
    t.start();
    const Window w = run_window(stop_at, I, [&] {
        t.stop();
        wait_for(stops, N);
    });
    long expected = -1;
    if (!a.jitter.empty()) {  // due times inside the window
        expected = 0;
        for (const auto o : offsets)
            if (I + o <= window) expected += 1 + long((window - I - o) / I);
    }
    print_runs("scheduler", a, hist.summarize(), add_per_s, remove_per_s, w, stops.load(), register_ms,
               t.worker_count(), 0, expected);
    return 0;
}

// ---- reload and idle: the full host ---------------------------------------------------------------------

namespace fs = std::filesystem;

// Catches the bench plugin's "first run <v>" and "stop <v>" lines and when they came.
class EventSink : public spdlog::sinks::base_sink<std::mutex> {
public:
    std::atomic<int64_t> first_a{0}, first_b{0}, stop_a{0}, stop_b{0};
    void reset() { first_a = first_b = stop_a = stop_b = 0; }

protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
        const std::string_view text(msg.payload.data(), msg.payload.size());
        const int64_t now = Clock::now().time_since_epoch().count();
        if (text.find("first run a") != std::string_view::npos) first_a = now;
        if (text.find("first run b") != std::string_view::npos) first_b = now;
        if (text.find("stop a") != std::string_view::npos) stop_a = now;
        if (text.find("stop b") != std::string_view::npos) stop_b = now;
        if (msg.level >= spdlog::level::warn)
            std::fprintf(stderr, "%.*s\n", int(msg.payload.size()), msg.payload.data());
    }
    void flush_() override {}
};

struct TempDir {
    fs::path path;
    TempDir() {
        std::string t = (fs::temp_directory_path() / "tickhost-bench-XXXXXX").string();
        if (!mkdtemp(t.data())) std::abort();
        path = t;
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

struct Percentiles {
    double p50 = 0, p99 = 0, max = 0;
};
Percentiles percentiles(std::vector<double> v) {
    if (v.empty()) return {};
    std::sort(v.begin(), v.end());
    auto at = [&](double q) { return v[std::min(v.size() - 1, size_t(q * double(v.size() - 1) + 0.5))]; };
    return {at(0.50), at(0.99), v.back()};
}

// Waits until `ev` is set; returns the ms from `since`, or -1 after 10 s.
double wait_event(const std::atomic<int64_t>& ev, Clock::time_point since) {
    const auto give_up = since + 10s;
    while (ev.load() == 0) {
        if (Clock::now() > give_up) return -1;
        std::this_thread::sleep_for(100us);
    }
    return double(ev.load() - since.time_since_epoch().count()) / 1e6;
}

int reload_mode(const Args& a) {
    auto sink = std::make_shared<EventSink>();
    tickhost::set_log_sinks({sink}, spdlog::level::info);
    TempDir tmp;
    const fs::path dir = tmp.path / "plugins.d", staging = tmp.path / "staging";
    fs::create_directories(dir);
    fs::create_directories(staging);
    tickhost::HostConfig config;  // the defaults operators get: inotify, default settle and workers
    config.plugin_dir = dir;
    config.shadow_dir = tmp.path / "shadow";
    if (a.workers) config.workers = a.workers;
    config.plugins["bench_tasks"].config.set("interval", std::string("10ms"));
    tickhost::Host host(config);
    host.start();
    std::vector<double> drop, replace, del;
    const fs::path target = dir / "bench_tasks.so";
    for (long c = 0; c < a.cycles; ++c) {
        fs::copy_file(BENCH_PLUGIN_A, staging / "a.so", fs::copy_options::overwrite_existing);
        fs::copy_file(BENCH_PLUGIN_B, staging / "b.so", fs::copy_options::overwrite_existing);
        sink->reset();
        auto t0 = Clock::now();
        fs::rename(staging / "a.so", target);
        const double d = wait_event(sink->first_a, t0);
        t0 = Clock::now();
        fs::rename(staging / "b.so", target);
        const double r = wait_event(sink->first_b, t0);
        t0 = Clock::now();
        fs::remove(target);
        const double x = wait_event(sink->stop_b, t0);
        if (d < 0 || r < 0 || x < 0) {
            std::fprintf(stderr, "cycle %ld: an event did not come within 10 s (%.1f %.1f %.1f)\n", c, d, r, x);
            return 1;
        }
        drop.push_back(d), replace.push_back(r), del.push_back(x);
        // Let the unload finish before the next drop.
        while (!host.plugins().plugins().empty()) std::this_thread::sleep_for(100us);
    }
    host.stop();
    const auto pd = percentiles(drop), pr = percentiles(replace), px = percentiles(del);
    print_line({{"peer", "tickhost"},
                {"mode", "reload"},
                {"cycles", a.cycles},
                {"drop_to_run_p50_ms", rounded(pd.p50, 2)},
                {"drop_to_run_p99_ms", rounded(pd.p99, 2)},
                {"drop_to_run_max_ms", rounded(pd.max, 2)},
                {"replace_to_run_p50_ms", rounded(pr.p50, 2)},
                {"replace_to_run_p99_ms", rounded(pr.p99, 2)},
                {"replace_to_run_max_ms", rounded(pr.max, 2)},
                {"delete_to_stop_p50_ms", rounded(px.p50, 2)},
                {"delete_to_stop_p99_ms", rounded(px.p99, 2)},
                {"delete_to_stop_max_ms", rounded(px.max, 2)},
                {"interval_ms", 10},
                {"settle_ms", std::llround(double(config.settle.count()) / 1e6)}});
    return 0;
}

// The scheduler workload through a real plugin: N tasks of bench_sched.so, declared from its init (their
// count and interval from its config), loaded by the host's loader from a shadow copy and called through
// the C ABI. Lateness is now - due (the host's due_ns service); the schedule's anchor is the plugin's load.
int plugin_mode(const Args& a) {
    const long N = a.tasks;
    const auto I = std::chrono::milliseconds(a.interval_ms);
    Histogram hist;
    std::atomic<long> stops{0};
    TempDir tmp;
    const fs::path dir = tmp.path / "plugins.d";
    fs::create_directories(dir);
    fs::copy_file(BENCH_PLUGIN_SCHED, dir / "bench_sched.so");
    tickhost::HostConfig config;
    config.plugin_dir = dir;
    config.shadow_dir = tmp.path / "shadow";
    config.watch = tickhost::WatchMode::off;  // the workload, not the watcher
    if (a.workers) config.workers = a.workers;
    auto& pc = config.plugins["bench_sched"].config;
    pc.set("tasks", int64_t(N));
    pc.set("interval", std::to_string(a.interval_ms) + "ms");
    if (!a.jitter.empty()) config.plugins["bench_sched"].jitter = parse_jitter(a.jitter);
    const bool isolated = a.isolation == "process";
    const fs::path summary = tmp.path / "summary";
    if (isolated) {
        use_built_worker();
        config.isolation = tickhost::Isolation::process;
        pc.set("out", summary.string());  // another process: it reports at shutdown
    } else {
        pc.set("hist", int64_t(reinterpret_cast<intptr_t>(&hist)));
        pc.set("stops", int64_t(reinterpret_cast<intptr_t>(&stops)));
    }
    tickhost::Host host(config);
    const auto T0 = Clock::now();
    host.start();
    const double register_ms = std::chrono::duration<double, std::milli>(Clock::now() - T0).count();
    if (host.plugins().plugins().size() != 1) {
        std::fprintf(stderr, "the bench plugin did not load\n");
        return 1;
    }
    // The protocol's window, on the plugin's own anchor (its tasks' first due time minus one interval).
    const auto info = host.plugins().plugin("bench_sched");
    const auto& t0 = info->tasks.at(0);
    const auto anchor = Clock::time_point(t0.first_due.time_since_epoch()) - t0.offset - I;
    const auto stop_at =
        anchor + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(a.duration_s)) + I / 2;
    const Window w = run_window(stop_at, I, [&] { host.stop(); });
    long expected = -1;
    if (!a.jitter.empty()) {  // the due times inside the window, task by task
        expected = 0;
        for (const auto& t : info->tasks) {
            const auto first = Clock::time_point(t.first_due.time_since_epoch());
            if (first <= stop_at) expected += 1 + long((stop_at - first) / I);
        }
    }
    if (!isolated) {
        print_runs("plugin", a, hist.summarize(), 0, 0, w, stops.load(), register_ms, host.tickers().worker_count(), 0,
                   expected);
        return 0;
    }
    // The plugin's figures, from its process; its CPU once the host has reaped it.
    Histogram::Summary sum;
    long child_stops = 0;
    unsigned long long f[5] = {};
    std::FILE* in = std::fopen(summary.c_str(), "r");
    if (!in || std::fscanf(in, "%llu %llu %llu %llu %llu %ld", &f[0], &f[1], &f[2], &f[3], &f[4], &child_stops) != 6) {
        std::fprintf(stderr, "the isolated plugin wrote no summary to %s\n", summary.c_str());
        return 1;
    }
    std::fclose(in);
    sum.count = f[0], sum.p50_us = f[1], sum.p99_us = f[2], sum.max_us = f[3], sum.early = f[4];
    const auto until = Clock::now() + 5s;
    while (children_cpu_s() == 0 && Clock::now() < until) std::this_thread::sleep_for(1ms);
    print_runs("plugin", a, sum, 0, 0, w, child_stops, register_ms, host.tickers().worker_count(), children_cpu_s(),
               expected);
    return 0;
}

// Voluntary + involuntary context switches of every thread of a process ("/proc/self", "/proc/<pid>").
long context_switches_of(const fs::path& proc) {
    long total = 0;
    std::error_code ec;
    for (auto& t : fs::directory_iterator(proc / "task", ec)) {
        std::ifstream in(t.path() / "status");
        std::string line;
        while (std::getline(in, line))
            if (line.rfind("voluntary_ctxt_switches:", 0) == 0 || line.rfind("nonvoluntary_ctxt_switches:", 0) == 0)
                total += std::atol(line.c_str() + line.find(':') + 1);
    }
    return total;
}

int idle_mode(const Args& a) {
    const long n = a.tasks_set ? a.tasks : 1000;
    const double seconds = a.duration_set ? a.duration_s : 5;
    TempDir tmp;
    const fs::path dir = tmp.path / "plugins.d";
    fs::create_directories(dir);
    fs::copy_file(BENCH_PLUGIN_A, dir / "bench_tasks.so");
    tickhost::HostConfig config;  // inotify watcher, default logging and worker count
    config.plugin_dir = dir;
    config.shadow_dir = tmp.path / "shadow";
    if (a.workers) config.workers = a.workers;
    config.plugins["bench_tasks"].config.set("tasks", int64_t(n));
    config.plugins["bench_tasks"].config.set("interval", std::string("1h"));
    if (a.isolation == "process") {
        use_built_worker();
        config.isolation = tickhost::Isolation::process;
    }
    tickhost::Host host(config);
    host.start();
    std::this_thread::sleep_for(500ms);  // start-up: loads, the watcher's first rescan
    const auto workers = worker_pids();
    auto context_switches = [&] {
        long total = context_switches_of("/proc/self");
        for (pid_t p : workers) total += context_switches_of("/proc/" + std::to_string(p));
        return total;
    };
    const long before = context_switches();
    const double cpu0 = cpu_s();
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    const long after = context_switches();
    const double cpu1 = cpu_s();
    const int threads = thread_count();
    const size_t tasks = host.tickers().size();
    host.stop();
    // The measuring thread's own sleep counts once: leave it out.
    print_line({{"peer", "tickhost"},
                {"mode", "idle"},
                {"tasks", tasks},
                {"duration_s", seconds},
                {"context_switches", std::max(0L, after - before - 1)},
                {"cpu_s", rounded(cpu1 - cpu0, 4)},
                {"threads", threads},
                {"isolation", a.isolation},
                {"worker_processes", workers.size()}});
    return 0;
}

// One task's call, timed from the caller's side, `calls` times in a row after a warm-up: ns per call.
std::vector<int64_t> time_calls(tickhost::Isolation mode, long calls) {
    namespace d = tickhost::detail;
    TempDir tmp;
    const fs::path dir = tmp.path / "plugins.d";
    fs::create_directories(dir);
    const fs::path file = dir / "bench_sched.so";
    fs::copy_file(BENCH_PLUGIN_SCHED, file);
    tickhost::HostConfig config;
    config.plugin_dir = dir;
    config.shadow_dir = tmp.path / "shadow";
    config.isolation = mode;
    tickhost::PluginValues pc;
    pc.set("tasks", int64_t(1));
    pc.set("interval", std::string("1h"));
    pc.set("out", (tmp.path / "summary").string());
    d::LoadPipeline pipeline(config, tickhost::get_logger("plugins"));
    d::StagedFile staged;
    d::LoadFailure f;
    tickhost::LoadError e;
    if (!pipeline.stage(file, &staged, &f)) {
        std::fprintf(stderr, "cannot stage the bench plugin: %s\n", f.reason.c_str());
        std::exit(1);
    }
    auto inst = pipeline.open(file, staged, &e);
    d::TaskList tasks;
    if (!inst || inst->init(pc, 10s, 1000, &tasks)) {
        std::fprintf(stderr, "cannot load the bench plugin: %s\n", e.message().c_str());
        std::exit(1);
    }
    auto fn = inst->task_fn(0, "t0");
    tickhost::SteadyClock clock;
    std::atomic<uint64_t> cancel{0};
    const std::string name = "t0";
    std::vector<int64_t> ns;
    ns.reserve(size_t(calls));
    const long warmup = std::min(calls, 1000L);
    for (long i = 0; i < warmup + calls; ++i) {
        const auto now = clock.now();
        tickhost::RunContext rc(1, name, now, now + 10s, clock, cancel, uint64_t(i + 1));
        const auto t0 = Clock::now();
        fn(rc, false);
        const auto t1 = Clock::now();
        if (i >= warmup) ns.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count());
    }
    fn = nullptr;
    inst->shutdown(5s);
    std::sort(ns.begin(), ns.end());
    return ns;
}

int isolated_mode(const Args& a) {
    use_built_worker();
    const auto in = time_calls(tickhost::Isolation::none, a.calls);
    const auto iso = time_calls(tickhost::Isolation::process, a.calls);
    auto pct = [](const std::vector<int64_t>& v, double p) { return double(v[size_t(double(v.size() - 1) * p)]) / 1000.0; };
    print_line({{"peer", "tickhost"},
                {"mode", "isolated"},
                {"calls", a.calls},
                {"inprocess_p50_us", rounded(pct(in, 0.5), 2)},
                {"inprocess_p99_us", rounded(pct(in, 0.99), 2)},
                {"isolated_p50_us", rounded(pct(iso, 0.5), 2)},
                {"isolated_p99_us", rounded(pct(iso, 0.99), 2)},
                {"overhead_p50_us", rounded(pct(iso, 0.5) - pct(in, 0.5), 2)},
                {"cpu_s", rounded(cpu_s(), 3)},
                {"child_cpu_s", rounded(children_cpu_s(), 3)}});
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    Args a = parse(argc, argv);
    // stdout carries the JSON line; logs go to stderr.
    tickhost::set_log_sinks({std::make_shared<spdlog::sinks::stderr_color_sink_mt>()}, spdlog::level::warn);
    if (a.mode == "scheduler") return a.addremove_only ? addremove_only(a) : scheduler_mode(a);
    if (a.mode == "reload") return reload_mode(a);
    if (a.mode == "plugin") return plugin_mode(a);
    if (a.mode == "idle") return idle_mode(a);
    if (a.mode == "isolated") return isolated_mode(a);
    usage("unknown mode " + a.mode);
}
