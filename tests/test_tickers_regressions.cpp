// Regression tests for scheduler bugs found in review (each failed before its fix).
#include <tickhost/tickers.hpp>
#include <gtest/gtest.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>
#include <atomic>
#include <future>
#include <thread>
#include "test_util.hpp"

using namespace std::chrono_literals;
using namespace tickhost;
using tickhost::test::eventually;

namespace {
struct Gate {  // heap-owned so detached threads never touch a dead stack
    std::promise<void> p;
    std::shared_future<void> f = p.get_future().share();
    std::atomic<int> runs{0}, stops{0}, returned{0};
};
Tickers::Options opts(std::shared_ptr<Clock> c, size_t workers, Duration abandon_after = 1s) {
    Tickers::Options o;
    o.workers = workers;
    o.clock = std::move(c);
    o.abandon_after = abandon_after;
    o.logger = std::make_shared<spdlog::logger>("scheduler-regression", std::make_shared<spdlog::sinks::null_sink_mt>());
    return o;
}
TickTask counting(std::shared_ptr<Gate> g, std::string name) {
    return {name, 0s, [g](RunContext&, bool is_stop) {
                if (is_stop) ++g->stops; else ++g->runs;
                return TaskResult::success();
            }};
}
TickTask stuck_run(std::shared_ptr<Gate> g, Duration timeout) {
    return {"stuck", timeout, [g](RunContext&, bool is_stop) {
                if (is_stop) { ++g->stops; return TaskResult::success(); }
                ++g->runs;
                g->f.wait();  // ignores cancellation
                ++g->returned;
                return TaskResult::success();
            }};
}
}  // namespace

// A job batched behind an abandoned call is held hostage by the stuck thread.
TEST(TickersRegression, JobBatchedBehindAbandonedRunIsHostage) {
    auto clock = std::make_shared<ManualClock>();
    auto gs = std::make_shared<Gate>(), go = std::make_shared<Gate>();
    {
        Tickers t(opts(clock, 1, 1s));
        t.add(10s, stuck_run(gs, 1s), clock->now() + 1s);
        t.add(10s, counting(go, "other"), clock->now() + 1s);  // same due: same batch
        t.start();
        clock->advance(1s);
        ASSERT_TRUE(eventually([&] { return gs->runs == 1; }));
        clock->advance(1s);   // deadline
        std::this_thread::sleep_for(50ms);
        clock->advance(1s);   // abandon
        EXPECT_TRUE(eventually([&] { return go->runs >= 1; }, 2000ms)) << "other never ran after abandonment";
        EXPECT_TRUE(t.wait_idle(1000ms)) << "wait_idle never true";
        gs->p.set_value();
        ASSERT_TRUE(eventually([&] { return gs->returned == 1; }));
    }
}

// ManualClock keeps pointers to a destroyed registry's mutex/cv.
TEST(TickersRegression, ManualClockOutlivesTickers) {
    auto clock = std::make_shared<ManualClock>();
    auto g = std::make_shared<Gate>();
    {
        Tickers t(opts(clock, 1));
        t.add(1s, counting(g, "a"));
        t.start();
        clock->advance(500ms);
        ASSERT_TRUE(t.wait_idle());
    }
    clock->advance(1s);  // touches the dead Impl's mutex
}

// An abandoned run that returned before remove(): the slot is never freed.
TEST(TickersRegression, AbandonedThenReturnedThenRemovedNeverFreed) {
    auto clock = std::make_shared<ManualClock>();
    auto g = std::make_shared<Gate>();
    std::weak_ptr<Gate> wg = g;
    Tickers t(opts(clock, 1, 1s));
    TaskId id = t.add(10s, stuck_run(g, 1s));
    t.start();
    clock->advance(10s);
    ASSERT_TRUE(eventually([&] { return g->runs == 1; }));
    clock->advance(1s);
    std::this_thread::sleep_for(50ms);
    clock->advance(1s);
    ASSERT_TRUE(t.wait_idle());
    auto* gp = g.get();
    g.reset();
    gp->p.set_value();
    ASSERT_TRUE(eventually([&] { return gp->returned == 1; }));
    std::this_thread::sleep_for(50ms);
    EXPECT_TRUE(t.remove(id));
    EXPECT_EQ(t.wait_stopped(id, 200ms), StopState::stopped) << "never freed";
    EXPECT_TRUE(wg.expired()) << "callable (plugin reference) never destroyed";
}

// A task added while stop() waits makes stop() burn its whole bound, and is lost from the schedule.
TEST(TickersRegression, AddDuringStop) {
    auto g = std::make_shared<Gate>();
    auto child = std::make_shared<Gate>();
    auto clock = std::make_shared<ManualClock>();
    Tickers t(opts(clock, 2));
    Tickers* tp = &t;
    t.add(1s, {"adder", 0s, [tp, child, clock](RunContext&, bool is_stop) {
                   if (is_stop) tp->add(1s, counting(child, "child"));
                   return TaskResult::success();
               }});
    t.start();
    EXPECT_TRUE(t.stop(10s)) << "stop() waited for a task added by a stop call";
    EXPECT_EQ(t.size(), 1u);
    t.start();
    clock->advance(1s);
    ASSERT_TRUE(t.wait_idle());
    EXPECT_EQ(child->runs, 1) << "task added during stop() never runs after restart";
    t.stop(1s);
}

// stop() whose bound runs out: the left-behind run later gets a stop call after stop() returned, and a
// stop job that was still queued is dropped so its slot is never freed.
TEST(TickersRegression, DirtyStopLeftovers) {
    auto clock = std::make_shared<ManualClock>();
    auto gs = std::make_shared<Gate>(), gb = std::make_shared<Gate>();
    Tickers t(opts(clock, 1, 1000s));
    TaskId a = t.add(1s, stuck_run(gs, 1000s));
    TaskId b = t.add(10s, counting(gb, "b"));
    t.start();
    clock->advance(1s);
    ASSERT_TRUE(eventually([&] { return gs->runs == 1; }));
    EXPECT_FALSE(t.stop(200ms));
    EXPECT_EQ(t.wait_stopped(a, 10ms), StopState::abandoned) << "stop() says its task is abandoned";
    gs->p.set_value();
    ASSERT_TRUE(eventually([&] { return gs->returned == 1; }));
    std::this_thread::sleep_for(100ms);
    EXPECT_EQ(gs->stops, 0) << "stop call made after stop() returned false";
    EXPECT_EQ(gb->stops, 0);
    EXPECT_NE(t.wait_stopped(b, 10ms), StopState::timed_out) << "b's stop job was dropped; slot never freed";
    t.start();
    EXPECT_TRUE(t.stop(10s)) << "second stop waits for b forever";
}

// A task added while a freed slot's drop waits in the timer's queue (drops do not wake the timer) must still
// wake the timer: before, its first run waited for the timer's next wake-up (here: an hour).
TEST(TickersRegression, AddAfterARemovalWakesTheSleepingTimer) {
    Tickers t(Tickers::Options{2, 1h});
    t.start();
    auto noop = [](RunContext&, bool) { return TaskResult::success(); };
    t.add(1h, {"far", 1h, noop});
    // x's stop call takes a moment, so its slot is freed (and the drop queued) after the timer went back to
    // sleep following remove()'s kick.
    const TaskId x = t.add(1h, {"x", 1h, [](RunContext&, bool is_stop) {
                                    if (is_stop) std::this_thread::sleep_for(100ms);
                                    return TaskResult::success();
                                }});
    std::this_thread::sleep_for(100ms);  // the timer takes both adds and goes to sleep for an hour
    ASSERT_TRUE(t.remove(x));
    ASSERT_EQ(t.wait_stopped(x, 10s), StopState::stopped);  // its slot is freed: a drop is queued for the timer
    std::this_thread::sleep_for(50ms);
    std::atomic<int> runs{0};
    t.add(20ms, {"soon", 1h, [&](RunContext&, bool is_stop) {
                     if (!is_stop) ++runs;
                     return TaskResult::success();
                 }});
    EXPECT_TRUE(eventually([&] { return runs.load() > 0; }, 10s)) << "the new task never ran";
    EXPECT_TRUE(t.stop());
}
