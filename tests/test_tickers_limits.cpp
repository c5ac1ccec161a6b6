// Scheduler tests at the limits: the longest intervals (max_duration), first due times near the clamp and
// the longest back-off. Schedule and back-off arithmetic saturates instead of overflowing (the CI runs these
// under UBSan), and the ticks stay exact. All on a ManualClock.
#include <tickhost/tickers.hpp>

#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "log_capture.hpp"

using namespace std::chrono_literals;
using namespace tickhost;

namespace {

// The registry's log, kept for assertions.
struct Log : tickhost::test::CapturedLog {
    Log() : CapturedLog("scheduler-limits-test") {}
};

Tickers::Options options(Log& log, size_t workers, std::shared_ptr<Clock> clock) {
    return log.options(workers, std::move(clock));
}

}  // namespace

// A task with a 365-day interval that fails on every run: no overflow anywhere (the CI runs this under
// UBSan), each run exactly one interval after the last; and with the longest back-off on a 1-day interval
// (Duration::max() is taken as max_duration), the sat-out ticks add up exactly.
TEST(Tickers, FailingTasksAtTheLongestIntervalsNeverOverflow) {
    Log log;
    auto clock = std::make_shared<ManualClock>();
    auto o = options(log, 2, clock);
    o.backoff_max = Duration::max();
    std::mutex mu;
    std::vector<Duration> yearly_at, daily_at;
    const TimePoint t0 = clock->now();
    auto failing = [&mu, t0](std::vector<Duration>* at) {
        return [&mu, t0, at](RunContext& ctx, bool is_stop) {
            if (is_stop) return TaskResult::success();
            std::lock_guard<std::mutex> lk(mu);
            at->push_back(ctx.clock().now() - t0);
            return TaskResult::failure("down");
        };
    };
    Tickers t(o);
    const TaskId yearly = t.add(max_duration, {"yearly", 0s, failing(&yearly_at)});
    const TaskId daily = t.add(24h, {"daily", 0s, failing(&daily_at)});
    t.start();
    constexpr int kDays = 4 * 365;
    for (int d = 0; d < kDays; ++d) {
        clock->advance(24h);
        ASSERT_TRUE(t.wait_idle()) << "day " << d;
    }
    std::lock_guard<std::mutex> lk(mu);
    EXPECT_EQ(yearly_at, (std::vector<Duration>{max_duration, 2 * max_duration, 3 * max_duration, 4 * max_duration}));
    EXPECT_EQ(t.stats(yearly)->consecutive_failures, 4u);
    // 1 day interval: fails at day 1, then waits 2, 4, ... 256 days, then 365 (the cap) each time.
    std::vector<Duration> want;
    int64_t day = 1, wait = 2;
    while (day <= kDays) {
        want.push_back(24h * day);
        day += wait;
        wait = std::min<int64_t>(wait * 2, 365);
    }
    EXPECT_EQ(daily_at, want);
    EXPECT_EQ(t.stats(daily)->consecutive_failures, want.size());
    EXPECT_EQ(log.count("'daily'", "failures in a row"), 1u) << "one warning when the back-off reaches its cap";
}

// A max_duration interval whose first due is clamped near the end of representable time: runs at the
// clamp, then one interval later, and a timer that wakes several intervals late skips (and counts) the
// missed ticks; due() is the exact tick. No arithmetic overflows on the way.
TEST(Tickers, LongestIntervalWithAFarFirstDueKeepsExactTicks) {
    Log log;
    auto clock = std::make_shared<ManualClock>();
    std::mutex mu;
    std::vector<TimePoint> dues;
    Tickers t(options(log, 1, clock));
    const TaskId id = t.add(max_duration,
                            {"far", 0s,
                             [&](RunContext& ctx, bool is_stop) {
                                 if (!is_stop) {
                                     std::lock_guard<std::mutex> lk(mu);
                                     dues.push_back(ctx.due());
                                 }
                                 return TaskResult::success();
                             }},
                            TimePoint::max());
    t.start();
    ASSERT_TRUE(t.wait_idle());
    const TimePoint latest(Duration(INT64_MAX / 2));  // the clamp of add()
    clock->set(latest - 1ns);
    ASSERT_TRUE(t.wait_idle());
    EXPECT_TRUE(dues.empty()) << "ran before its (clamped) first due time";
    clock->set(latest);
    ASSERT_TRUE(t.wait_idle());
    clock->advance(max_duration);
    ASSERT_TRUE(t.wait_idle());
    clock->advance(3 * max_duration + 1s);  // wakes late: two ticks missed, the third runs
    ASSERT_TRUE(t.wait_idle());
    {
        std::lock_guard<std::mutex> lk(mu);
        EXPECT_EQ(dues, (std::vector<TimePoint>{latest, latest + max_duration, latest + 4 * max_duration}));
    }
    EXPECT_EQ(t.stats(id)->skipped, 2u);
    EXPECT_EQ(t.stats(id)->runs, 3u);
    EXPECT_TRUE(t.stop(10s));
}

// abandon_after at its maximum ("never abandon"): a run past its deadline is cancelled, counted and logged,
// and the abandon time saturates instead of overflowing; the run is never abandoned.
TEST(Tickers, AbandonAfterAtItsMaximumNeverOverflows) {
    Log log;
    auto clock = std::make_shared<ManualClock>();
    auto release = std::make_shared<std::promise<void>>();
    std::shared_future<void> released = release->get_future().share();
    std::atomic<bool> in_run{false}, saw_cancel{false};
    std::atomic<int> runs{0};
    auto o = options(log, 1, clock);
    o.abandon_after = Duration::max();
    Tickers t(o);
    const TaskId id = t.add(max_duration,
                            {"slow", 1s,
                             [&in_run, &saw_cancel, &runs, released](RunContext& ctx, bool is_stop) {
                                 if (is_stop || ++runs > 1) return TaskResult::success();  // only the first waits
                                 in_run = true;
                                 while (!ctx.cancelled()) std::this_thread::sleep_for(1ms);
                                 saw_cancel = true;
                                 released.wait();
                                 return TaskResult::success();
                             }},
                            clock->now() + 1s);
    struct Release {  // whatever happens below, the run returns before the registry is destroyed
        std::shared_ptr<std::promise<void>> p;
        ~Release() {
            try {
                p->set_value();
            } catch (const std::future_error&) {
            }
        }
    } guard{release};
    t.start();
    clock->advance(1s);
    const auto until = std::chrono::steady_clock::now() + 10s;
    auto poll = [&](const std::atomic<bool>& flag) {
        while (!flag && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
        return flag.load();
    };
    ASSERT_TRUE(poll(in_run));
    clock->advance(1s);  // its deadline
    ASSERT_TRUE(poll(saw_cancel));
    clock->advance(max_duration);  // far past any abandon time a finite abandon_after would give
    std::this_thread::sleep_for(20ms);
    EXPECT_FALSE(log.contains("abandoned")) << log.text();
    release->set_value();
    ASSERT_TRUE(t.wait_idle()) << log.text();
    EXPECT_EQ(t.stats(id)->timeouts, 1u);
    EXPECT_EQ(t.stats(id)->runs, 2u) << "the tick that came due meanwhile runs once the stuck run returned";
    EXPECT_TRUE(t.stop(10s));
}
