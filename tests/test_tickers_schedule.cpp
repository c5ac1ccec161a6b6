// Schedules operators know: offsets (jitter) and wall-clock alignment, exact on a ManualClock whose wall clock
// can be stepped (a clock step, or a suspend as the monotonic clock sees it) apart from its monotonic one.
#include <tickhost/tickers.hpp>

#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>

#include <time.h>

#include "test_util.hpp"

using namespace std::chrono_literals;
using tickhost::Duration;
using tickhost::ManualClock;
using tickhost::RunContext;
using tickhost::Schedule;
using tickhost::TaskResult;
using tickhost::Tickers;
using tickhost::TickTask;
using tickhost::TimePoint;
using tickhost::WallTime;
using tickhost::test::eventually;

namespace {

// A wall-clock time on 2026-01-01 (UTC), ManualClock's default day: wall(12h + 30s) is 12:00:30.
WallTime wall(Duration since_midnight) { return ManualClock::kDefaultWallStart + since_midnight; }

struct Captured {
    std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(1000);
    std::shared_ptr<spdlog::logger> logger = std::make_shared<spdlog::logger>("scheduler-test", sink);
    Captured() { logger->set_level(spdlog::level::trace); }
    bool contains(const std::string& a) const {
        for (auto& line : sink->last_formatted())
            if (line.find(a) != std::string::npos) return true;
        return false;
    }
};

// A registry on a manual clock whose wall clock reads 12:00:30 at the start.
struct Fixture {
    std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>(TimePoint(1h), wall(12h + 30s));
    Captured log;
    Tickers tickers{options()};
    Tickers::Options options() {
        Tickers::Options o;
        o.workers = 2;
        o.clock = clock;
        o.logger = log.logger;
        return o;
    }
    void advance(Duration d) {
        clock->advance(d);
        ASSERT_TRUE(tickers.wait_idle());
    }
    // Advances in steps of `step` until `total`, settling after each.
    void advance(Duration total, Duration step) {
        for (Duration done{0}; done < total; done += step) advance(std::min(step, total - done));
    }
    // A wall-clock step (or a suspend: the wall clock jumps, the monotonic clock does not).
    void step_wall(Duration d) {
        clock->set_wall(clock->wall_now() + d);
        ASSERT_TRUE(tickers.wait_idle());
    }
};

// Records each run: the monotonic and wall-clock times it ran at, and its due time (also on the wall clock:
// the wall clock at the run minus the run's lateness).
struct Probe {
    std::mutex mu;
    std::vector<TimePoint> at, due;
    std::vector<WallTime> wall_at, due_wall;
    std::atomic<int> runs{0};
    TickTask task(std::string name = "t") {
        return TickTask{std::move(name), 0s, [this](RunContext& ctx, bool is_stop) {
                            if (is_stop) return TaskResult::success();
                            auto& c = static_cast<const ManualClock&>(ctx.clock());
                            std::lock_guard<std::mutex> lk(mu);
                            at.push_back(c.now());
                            wall_at.push_back(c.wall_now());
                            due.push_back(ctx.due());
                            due_wall.push_back(c.wall_now() - (c.now() - ctx.due()));
                            ++runs;
                            return TaskResult::success();
                        }};
    }
    WallTime last_wall() {
        std::lock_guard<std::mutex> lk(mu);
        return wall_at.back();
    }
    WallTime last_due_wall() {
        std::lock_guard<std::mutex> lk(mu);
        return due_wall.back();
    }
};

}  // namespace

// ---------------------------------------------------------------- the hash and the offsets

TEST(Schedule, Fnv1a64KnownVectors) {
    // The FNV reference vectors (http://www.isthe.com/chongo/tech/comp/fnv/, FNV-1a 64).
    EXPECT_EQ(tickhost::fnv1a64(""), 0xcbf29ce484222325ull);
    EXPECT_EQ(tickhost::fnv1a64("a"), 0xaf63dc4c8601ec8cull);
    EXPECT_EQ(tickhost::fnv1a64("foobar"), 0x85944171f73967e8ull);
    // Bytes, not C strings: a NUL in the key counts.
    EXPECT_NE(tickhost::fnv1a64(std::string_view("a\0b", 3)), tickhost::fnv1a64("ab"));
}

TEST(Schedule, JitterOffsetsAreStableBoundedWholeStepsAndSpread) {
    const Duration jitter = 10s;
    std::set<int64_t> seen;
    for (int i = 0; i < 1000; ++i) {
        // A fleet: hosts web-000 .. web-999, one plugin and task ("host\0plugin\0task", as the host builds it).
        const std::string key = "web-" + std::to_string(1000 + i).substr(1) + std::string("\0heartbeat\0beat", 15);
        const Duration o = tickhost::jitter_offset(key, jitter);
        EXPECT_EQ(o, tickhost::jitter_offset(key, jitter)) << "stable";
        EXPECT_GE(o, 0s);
        EXPECT_LT(o, jitter);
        EXPECT_EQ(o % tickhost::jitter_step, 0s) << "whole steps";
        EXPECT_EQ(o, (tickhost::fnv1a64(key) % 1000) * 10ms) << "the documented formula";
        seen.insert(o.count());
    }
    // 1000 keys over 1000 possible offsets: about 632 distinct ones if the offsets were uniform.
    EXPECT_GT(seen.size(), 580u);
    EXPECT_EQ(tickhost::jitter_step, 10ms);
    // The bounds: no jitter, or one of at most a step (ceil(jitter / 10 ms) = 1): no offset; 15 ms: 0 or 10 ms.
    EXPECT_EQ(tickhost::jitter_offset("k", 0s), 0s);
    EXPECT_EQ(tickhost::jitter_offset("k", -1s), 0s);
    EXPECT_EQ(tickhost::jitter_offset("k", 1ns), 0s);
    EXPECT_EQ(tickhost::jitter_offset("k", 10ms), 0s);
    std::set<int64_t> small;
    for (int i = 0; i < 50; ++i) {
        const Duration o = tickhost::jitter_offset("k" + std::to_string(i), 15ms);
        EXPECT_TRUE(o == 0ms || o == 10ms) << o.count();
        small.insert(o.count());
    }
    EXPECT_EQ(small.size(), 2u);
    // The longest interval's jitter stays below it.
    EXPECT_LT(tickhost::jitter_offset("k", tickhost::max_duration), tickhost::max_duration);
}

// ---------------------------------------------------------------- offsets (not aligned)

TEST(Schedule, OffsetShiftsEveryDueTimeAndTheRateStaysFixed) {
    Fixture f;
    Probe p;
    const TimePoint t0 = f.clock->now();
    f.tickers.add(Schedule{1s, 250ms, false, t0}, p.task());
    f.tickers.start();
    f.advance(1249ms, 7ms);
    EXPECT_EQ(p.runs, 0) << "ran before anchor + interval + offset";
    f.advance(1ms);
    ASSERT_EQ(p.runs, 1);
    // Irregular wake-ups: the due times stay on the grid (no drift).
    f.advance(5s, 333ms);
    ASSERT_EQ(p.runs, 6);
    for (int k = 0; k < 6; ++k) EXPECT_EQ(p.due[size_t(k)], t0 + 1250ms + k * 1s) << k;
}

TEST(Schedule, TasksWithOneAnchorAndOtherOffsetsRunApart) {
    Fixture f;
    Probe a, b;
    const TimePoint t0 = f.clock->now();
    f.tickers.add(Schedule{100ms, 0ms, false, t0}, a.task("a"));
    f.tickers.add(Schedule{100ms, 40ms, false, t0}, b.task("b"));
    f.tickers.start();
    f.advance(100ms);
    EXPECT_EQ(a.runs, 1);
    EXPECT_EQ(b.runs, 0);
    f.advance(40ms);
    EXPECT_EQ(b.runs, 1);
    f.advance(1s, 10ms);
    EXPECT_EQ(a.runs, 11);
    EXPECT_EQ(b.runs, 11);
    for (size_t k = 0; k < 11; ++k) EXPECT_EQ(b.due[k] - a.due[k], 40ms);
}

TEST(Schedule, JitteredTasksComeDueAtMostOnceAStep) {
    // 2,000 tasks at 100 ms spread by a 100 ms jitter: at most 10 distinct due times per interval, each a batch.
    Fixture f;
    const TimePoint t0 = f.clock->now();
    std::mutex mu;
    std::set<int64_t> dues;
    std::atomic<int> runs{0};
    for (int i = 0; i < 2000; ++i)
        f.tickers.add(Schedule{100ms, tickhost::jitter_offset("t" + std::to_string(i), 100ms), false, t0},
                      {"t", 0s, [&](RunContext& ctx, bool is_stop) {
                           if (is_stop) return TaskResult::success();
                           std::lock_guard<std::mutex> lk(mu);
                           dues.insert(ctx.due().time_since_epoch().count());
                           ++runs;
                           return TaskResult::success();
                       }});
    f.tickers.start();
    f.advance(299ms, 1ms);  // runs at anchor + offset + 100 ms and + 200 ms, offsets 0..90 ms
    EXPECT_EQ(runs, 4000);
    std::lock_guard<std::mutex> lk(mu);
    EXPECT_EQ(dues.size(), 20u) << "each of the 10 steps taken, twice";
    for (int64_t d : dues) EXPECT_EQ((d - t0.time_since_epoch().count()) % 10000000, 0) << "whole steps";
}

TEST(Schedule, DefaultAnchorIsNowAndBadSchedulesThrow) {
    Fixture f;
    Probe p;
    const TimePoint t0 = f.clock->now();
    f.tickers.add(Schedule{1s, 1s}, p.task());  // an offset of a whole interval is allowed
    f.tickers.start();
    f.advance(2s);
    ASSERT_EQ(p.runs, 1);
    EXPECT_EQ(p.due[0], t0 + 2s);
    auto fn = [](RunContext&, bool) { return TaskResult::success(); };
    EXPECT_THROW(f.tickers.add(Schedule{0s}, {"x", 0s, fn}), std::invalid_argument);
    EXPECT_THROW(f.tickers.add(Schedule{1s, -1ns}, {"x", 0s, fn}), std::invalid_argument);
    EXPECT_THROW(f.tickers.add(Schedule{1s, 1001ms}, {"x", 0s, fn}), std::invalid_argument);
    EXPECT_THROW(f.tickers.add(Schedule{tickhost::max_duration + 1ns, 0s, true}, {"x", 0s, fn}), std::invalid_argument);
    EXPECT_THROW(f.tickers.add(Schedule{1s, 0s, true}, {"x", 0s, nullptr}), std::invalid_argument);
}

// ---------------------------------------------------------------- aligned

TEST(Schedule, AlignedRunsFallOnWallClockMultiples) {
    Fixture f;  // wall 12:00:30
    Probe minute, hour, seven;
    f.tickers.add(Schedule{1min, 0s, true}, minute.task("minute"));
    f.tickers.add(Schedule{1h, 0s, true}, hour.task("hour"));
    f.tickers.add(Schedule{1min, 7s, true}, seven.task("seven"));  // hh:mm:07
    f.tickers.start();
    f.advance(29s + 999ms, 500ms);
    EXPECT_EQ(minute.runs, 0) << "before 12:01:00";
    f.advance(1ms);
    ASSERT_EQ(minute.runs, 1);
    EXPECT_EQ(minute.last_wall(), wall(12h + 1min));
    f.advance(7s);
    ASSERT_EQ(seven.runs, 1);
    EXPECT_EQ(seven.last_wall(), wall(12h + 1min + 7s));
    f.advance(1h, 10s);  // to 13:01:07
    EXPECT_EQ(minute.runs, 61);
    EXPECT_EQ(seven.runs, 61);
    ASSERT_EQ(hour.runs, 1);
    EXPECT_EQ(hour.last_due_wall(), wall(13h));
    for (auto& w : minute.due_wall) EXPECT_EQ(w.time_since_epoch() % 1min, 0s);
    for (auto& w : seven.due_wall) EXPECT_EQ(w.time_since_epoch() % 1min, 7s);
}

TEST(Schedule, AlignedFirstRunIsTheFirstMultipleAfterTheAdd) {
    Fixture f;
    f.clock->set_wall(wall(12h + 1min));  // exactly on a multiple: that one is not "after"
    Probe p;
    f.tickers.add(Schedule{1min, 0s, true}, p.task());
    f.tickers.start();
    f.advance(59s, 1s);
    EXPECT_EQ(p.runs, 0);
    f.advance(1s);
    ASSERT_EQ(p.runs, 1);
    EXPECT_EQ(p.last_wall(), wall(12h + 2min));
}

TEST(Schedule, AlignedWithJitterOffsetsAreMultiplesPlusOffsetAndTasksSpread) {
    Fixture f;
    std::vector<std::unique_ptr<Probe>> probes;
    std::set<int64_t> offsets;
    for (int i = 0; i < 20; ++i) {
        probes.push_back(std::make_unique<Probe>());
        const Duration o = tickhost::jitter_offset("web-" + std::to_string(i), 10s);
        offsets.insert(o.count());
        f.tickers.add(Schedule{1min, o, true}, probes.back()->task("t" + std::to_string(i)));
    }
    EXPECT_GT(offsets.size(), 15u);
    f.tickers.start();
    f.advance(3min, 250ms);
    for (int i = 0; i < 20; ++i) {
        const Duration o = tickhost::jitter_offset("web-" + std::to_string(i), 10s);
        Probe& p = *probes[size_t(i)];
        ASSERT_EQ(p.runs, 3) << i;
        for (size_t k = 0; k < 3; ++k) EXPECT_EQ(p.due_wall[k], wall(12h + (k + 1) * 1min + o)) << i;
    }
}

TEST(Schedule, ForwardStepRunsTheLatestJumpedTickOnceAndCountsTheOthersAsSkipped) {
    Fixture f;  // 12:00:30
    Probe p;
    const auto id = f.tickers.add(Schedule{1min, 0s, true}, p.task());
    f.tickers.start();
    f.advance(30s, 10s);  // 12:01:00
    ASSERT_EQ(p.runs, 1);
    f.advance(15s);         // 12:01:15
    f.step_wall(1h + 10s);  // 13:01:25: ticks 12:02 .. 13:01 jumped over
    EXPECT_EQ(p.runs, 2) << "one run at once, no burst";
    EXPECT_EQ(p.last_wall(), wall(13h + 1min + 25s)) << "late, at the step";
    EXPECT_EQ(p.last_due_wall(), wall(13h + 1min)) << "the 13:01 tick";
    EXPECT_EQ(f.tickers.stats(id)->skipped, 59u) << "12:02 .. 13:00";
    EXPECT_TRUE(f.log.contains("re-anchored"));
    f.advance(34s + 999ms, 5s);
    EXPECT_EQ(p.runs, 2) << "before 13:02:00";
    f.advance(1ms);
    ASSERT_EQ(p.runs, 3);
    EXPECT_EQ(p.last_wall(), wall(13h + 2min));
    EXPECT_EQ(f.tickers.stats(id)->skipped, 59u);
}

TEST(Schedule, SmallForwardStepKeepsTheNextWallTime) {
    Fixture f;  // 12:00:30
    Probe p;
    f.tickers.add(Schedule{1min, 0s, true}, p.task());
    f.tickers.start();
    f.advance(10s);         // 12:00:40
    f.step_wall(10s);       // 12:00:50
    f.advance(9s + 999ms);  // 12:00:59.999
    EXPECT_EQ(p.runs, 0);
    f.advance(1ms);
    ASSERT_EQ(p.runs, 1);
    EXPECT_EQ(p.last_wall(), wall(12h + 1min));
}

TEST(Schedule, BackwardStepNeverRunsEarly) {
    Fixture f;  // 12:00:30
    Probe p;
    f.tickers.add(Schedule{1min, 0s, true}, p.task());
    f.tickers.start();
    f.advance(10s);     // 12:00:40
    f.step_wall(-10s);  // 12:00:30 again
    f.advance(20s);     // where 12:01:00 would have been: now 12:00:50
    EXPECT_EQ(p.runs, 0) << "early by the wall clock";
    f.advance(9s + 999ms, 1s);
    EXPECT_EQ(p.runs, 0);
    f.advance(1ms);
    ASSERT_EQ(p.runs, 1);
    EXPECT_EQ(p.last_wall(), wall(12h + 1min));
}

TEST(Schedule, BackwardStepRightAfterARunDoesNotRepeatIt) {
    Fixture f;  // 12:00:30
    Probe p;
    const auto id = f.tickers.add(Schedule{1min, 0s, true}, p.task());
    f.tickers.start();
    f.advance(30s);  // 12:01:00: runs
    ASSERT_EQ(p.runs, 1);
    const TimePoint ran = p.at[0];
    f.advance(500ms);
    f.step_wall(-2s);  // 12:00:58.5: 12:01:00 is 1.5 s away again
    f.advance(1min, 500ms);
    ASSERT_EQ(p.runs, 1) << "12:01:00 again, 1.5 s after it ran";
    f.advance(1s + 500ms, 500ms);  // 12:02:00
    ASSERT_EQ(p.runs, 2);
    EXPECT_EQ(p.last_wall(), wall(12h + 2min));
    EXPECT_GE(p.at[1] - ran, 1min) << "never more often than the interval";
    EXPECT_EQ(f.tickers.stats(id)->skipped, 0u);
}

TEST(Schedule, LargeBackwardStepKeepsTheRate) {
    Fixture f;  // 12:00:30
    Probe p;
    const auto id = f.tickers.add(Schedule{1min, 0s, true}, p.task());
    f.tickers.start();
    f.advance(30s);  // 12:01:00
    ASSERT_EQ(p.runs, 1);
    f.advance(30s);    // 12:01:30
    f.step_wall(-1h);  // 11:01:30
    f.advance(30s);    // 11:02:00: one minute after the last run, on a multiple
    ASSERT_EQ(p.runs, 2);
    EXPECT_EQ(p.last_wall(), wall(11h + 2min));
    EXPECT_EQ(p.at[1] - p.at[0], 1min);
    f.advance(3min, 10s);
    EXPECT_EQ(p.runs, 5);
    EXPECT_EQ(f.tickers.stats(id)->skipped, 0u);
}

TEST(Schedule, SuspendOfTheMonotonicClockIsAForwardJumpOfTheWallClock) {
    // CLOCK_MONOTONIC stops during a suspend; the wall clock runs on. Suspended at 12:00:45 for 2h10m.
    Fixture f;
    Probe p;
    const auto id = f.tickers.add(Schedule{1min, 0s, true}, p.task());
    f.tickers.start();
    f.advance(15s);           // 12:00:45
    f.step_wall(2h + 10min);  // resumed at 14:10:45
    ASSERT_EQ(p.runs, 1) << "the 14:10 tick, at once";
    EXPECT_EQ(f.tickers.stats(id)->skipped, 129u) << "12:01 .. 14:09";
    f.advance(15s);  // 14:11:00
    ASSERT_EQ(p.runs, 2);
    EXPECT_EQ(p.last_wall(), wall(14h + 11min));
}

TEST(Schedule, MonotonicJumpOfBothClocksRunsOnceLateAndStaysAligned) {
    // The process stalled (or a virtual machine was paused) for 1h10m: both clocks moved; no step.
    Fixture f;
    Probe p;
    const auto id = f.tickers.add(Schedule{1min, 0s, true}, p.task());
    f.tickers.start();
    f.advance(1h + 10min);  // 13:10:30
    ASSERT_EQ(p.runs, 1);
    EXPECT_EQ(p.due[0], f.clock->now() - 30s) << "the 13:10 tick, late";
    EXPECT_EQ(f.tickers.stats(id)->skipped, 69u);
    EXPECT_FALSE(f.log.contains("re-anchored"));
    f.advance(30s);
    ASSERT_EQ(p.runs, 2);
    EXPECT_EQ(p.last_wall(), wall(13h + 11min));
}

TEST(Schedule, StepWhileARunIsGoingNeverOverlapsIt) {
    Fixture f;
    std::atomic<bool> release{false};
    std::atomic<int> runs{0}, running{0}, max_running{0};
    const auto id = f.tickers.add(Schedule{1min, 0s, true}, {"slow", 1h, [&](RunContext&, bool is_stop) {
                                                                 if (is_stop) return TaskResult::success();
                                                                 const int now = ++running;
                                                                 max_running = std::max(max_running.load(), now);
                                                                 ++runs;
                                                                 while (!release) std::this_thread::sleep_for(1ms);
                                                                 --running;
                                                                 return TaskResult::success();
                                                             }});
    f.tickers.start();
    f.clock->advance(30s);  // 12:01:00: the run starts and blocks
    ASSERT_TRUE(eventually([&] { return runs == 1; }));
    f.clock->set_wall(f.clock->wall_now() + 5min);  // 12:06:00: the latest (12:06) comes due at once...
    f.clock->advance(1min);                         // ...and 12:07 too, while the run still goes
    ASSERT_TRUE(eventually([&] { return f.tickers.stats(id)->skipped >= 6; }));
    release = true;
    ASSERT_TRUE(f.tickers.wait_idle());
    EXPECT_EQ(runs, 1);
    EXPECT_EQ(max_running, 1);
    EXPECT_EQ(f.tickers.stats(id)->skipped, 6u) << "12:02 .. 12:05 jumped over, 12:06 and 12:07 overlapping";
    f.advance(1min);  // 12:08
    EXPECT_EQ(runs, 2);
}

TEST(Schedule, AlignedAndPlainTasksOnOneDueTimePartAtAStep) {
    Fixture f;  // 12:00:30
    Probe aligned, plain;
    const TimePoint t0 = f.clock->now();
    f.tickers.add(Schedule{1min, 0s, true}, aligned.task("aligned"));
    f.tickers.add(1min, plain.task("plain"), t0 + 30s);  // same due time as the aligned one
    f.tickers.start();
    f.advance(30s);
    ASSERT_EQ(aligned.runs, 1);
    ASSERT_EQ(plain.runs, 1);
    f.step_wall(20s);  // 12:01:20
    f.advance(40s);    // 12:02:00
    EXPECT_EQ(aligned.runs, 2);
    EXPECT_EQ(plain.runs, 1) << "the plain task keeps its monotonic schedule";
    f.advance(20s);
    EXPECT_EQ(plain.runs, 2);
    EXPECT_EQ(plain.due[1], t0 + 90s);
    EXPECT_EQ(aligned.last_wall(), wall(12h + 2min));
}

TEST(Schedule, AnEmbeddersClockWithoutAWallClockReadsTheSystemsOne) {
    // A Clock subclass written before wall_now() existed: it compiles and runs unchanged.
    struct OldClock : tickhost::Clock {
        TimePoint now() const override { return std::chrono::steady_clock::now(); }
        void wait_until(std::unique_lock<std::mutex>& lock, std::condition_variable& cv, TimePoint until) override {
            cv.wait_until(lock, until);
        }
    };
    OldClock c;
    const auto sys = std::chrono::system_clock::now();
    EXPECT_LT(std::chrono::abs(c.wall_now() - sys), 1min);
}

// ---------------------------------------------------------------- the real clocks

namespace {
std::set<std::string> thread_names() {
    std::set<std::string> out;
    for (auto& e : std::filesystem::directory_iterator("/proc/self/task")) {
        std::ifstream in(e.path() / "comm");
        std::string n;
        std::getline(in, n);
        out.insert(n);
    }
    return out;
}

// wall - monotonic, from the tightest of a few bracketing reads.
Duration wall_minus_steady() {
    Duration best_gap = Duration::max(), best{0};
    for (int k = 0; k < 5; ++k) {
        const auto w1 = std::chrono::system_clock::now().time_since_epoch();
        const auto m = std::chrono::steady_clock::now().time_since_epoch();
        const auto w2 = std::chrono::system_clock::now().time_since_epoch();
        if (w2 - w1 < best_gap) {
            best_gap = w2 - w1;
            best = w1 + (w2 - w1) / 2 - m;
        }
    }
    return best;
}
}  // namespace

TEST(Schedule, RealClockAlignedRunsAreDueOnWholeSecondsAndTheWallWatchComesAndGoes) {
    Tickers t;
    std::mutex mu;
    std::vector<Duration> due_walls;
    std::atomic<int> runs{0};
    EXPECT_EQ(thread_names().count("tickhost-wall"), 0u);
    t.add(Schedule{1s, 0s, true}, {"aligned", 0s, [&](RunContext& ctx, bool is_stop) {
                                       if (is_stop) return TaskResult::success();
                                       std::lock_guard<std::mutex> lk(mu);
                                       due_walls.push_back(ctx.due().time_since_epoch() + wall_minus_steady());
                                       ++runs;
                                       return TaskResult::success();
                                   }});
    t.start();
    ASSERT_TRUE(eventually([&] { return runs >= 2; }));
    // The thread that waits for wall-clock steps exists while aligned tasks do (asleep in read()).
    EXPECT_EQ(thread_names().count("tickhost-wall"), 1u);
    t.stop();
    EXPECT_EQ(thread_names().count("tickhost-wall"), 0u);
    std::lock_guard<std::mutex> lk(mu);
    for (Duration d : due_walls) {
        // The due time, on the wall clock, is a whole second (within what two clock reads can tell apart).
        const Duration frac = (d % 1s + 1s) % 1s;
        EXPECT_LT(std::min(frac, 1s - frac), 20ms) << d.count();
    }
}

TEST(Schedule, RealClockTheWallWatchSleeps) {
    // The thread that waits for wall-clock steps wakes for nothing else: its context switches stay put.
    Tickers t;
    t.add(Schedule{1h, 0s, true}, {"hourly", 0s, [](RunContext&, bool) { return TaskResult::success(); }});
    t.start();
    auto switches = [] {
        for (auto& e : std::filesystem::directory_iterator("/proc/self/task")) {
            std::ifstream comm(e.path() / "comm");
            std::string n;
            std::getline(comm, n);
            if (n != "tickhost-wall") continue;
            std::ifstream st(e.path() / "status");
            std::string line;
            long total = 0;
            while (std::getline(st, line))
                if (line.rfind("voluntary_ctxt_switches:", 0) == 0 || line.rfind("nonvoluntary_ctxt_switches:", 0) == 0)
                    total += std::atol(line.c_str() + line.find(':') + 1);
            return total;
        }
        return -1L;
    };
    ASSERT_TRUE(eventually([&] { return switches() >= 0; }));
    std::this_thread::sleep_for(50ms);  // past its start
    const long before = switches();
    std::this_thread::sleep_for(500ms);
    EXPECT_EQ(switches(), before);
}

// Opt-in (it sets the machine's clock, which every other process sees): TICKHOST_TEST_SET_CLOCK=1, as root.
// A real step of CLOCK_REALTIME wakes the timer through its timerfd at once, long before the next tick.
TEST(Schedule, RealClockStepIsSeenAtOnce) {
    const char* opt = std::getenv("TICKHOST_TEST_SET_CLOCK");
    if (!opt || std::strcmp(opt, "1") != 0) GTEST_SKIP() << "sets the machine's clock: TICKHOST_TEST_SET_CLOCK=1";
    Captured log;
    Tickers::Options o;
    o.logger = log.logger;
    Tickers t(o);
    t.add(Schedule{1h, 0s, true}, {"hourly", 0s, [](RunContext&, bool) { return TaskResult::success(); }});
    t.start();
    ASSERT_TRUE(eventually([&] { return thread_names().count("tickhost-wall") == 1; }));
    auto shift = [](Duration d) {
        timespec ts{};
        clock_gettime(CLOCK_REALTIME, &ts);
        const int64_t ns = int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec + d.count();
        ts.tv_sec = ns / 1000000000;
        ts.tv_nsec = ns % 1000000000;
        return clock_settime(CLOCK_REALTIME, &ts) == 0;
    };
    ASSERT_TRUE(shift(2s)) << std::strerror(errno);
    const bool seen = eventually([&] { return log.contains("re-anchored"); }, 5000ms);
    shift(-2s);
    EXPECT_TRUE(seen) << "the step was not seen before the next hourly tick";
}
