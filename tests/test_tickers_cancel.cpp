// Scheduler tests for issue 10: remove() and stop() cancel the run in flight (and only that run), and the
// stop report says what a task was doing. Real threads run on the real clock with generous bounds only;
// exact schedules run on a ManualClock.
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
#include "test_util.hpp"

using namespace std::chrono_literals;
using namespace tickhost;
using tickhost::test::eventually;

namespace {

// The registry's log, kept for assertions.
struct Log : tickhost::test::CapturedLog {
    Log() : CapturedLog("scheduler-cancel-test") {}
};

Tickers::Options options(Log& log, size_t workers, std::shared_ptr<Clock> clock = nullptr,
                         Duration abandon_after = 5s) {
    return log.options(workers, std::move(clock), abandon_after);
}

// A task whose run polls its cancellation (as a well-behaved plugin does) under a long timeout, and whose
// stop call records whether it saw itself cancelled. Heap-owned: the registry may outlive a test's stack.
struct Cooperative {
    std::atomic<int> runs{0}, in_run{0}, saw_cancel{0}, stops{0}, stop_saw_cancel{0};
    std::promise<void> hold_stop_p;  // the stop call waits for this when hold_stop is set
    std::shared_future<void> hold_stop_f = hold_stop_p.get_future().share();
    std::atomic<bool> hold_stop{false}, in_stop{false};
};
TickTask cooperative(std::shared_ptr<Cooperative> c, std::string name, Duration timeout = 60s) {
    return {std::move(name), timeout, [c](RunContext& ctx, bool is_stop) {
                if (is_stop) {
                    ++c->stops;
                    if (ctx.cancelled()) ++c->stop_saw_cancel;
                    c->in_stop = true;
                    if (c->hold_stop) c->hold_stop_f.wait();
                    if (ctx.cancelled()) ++c->stop_saw_cancel;
                    return TaskResult::success();
                }
                ++c->runs;
                ++c->in_run;
                while (!ctx.cancelled()) std::this_thread::sleep_for(1ms);
                ++c->saw_cancel;
                --c->in_run;
                return TaskResult::failure("cancelled");  // what the C++ plugin layer reports
            }};
}

}  // namespace

// remove() during a cooperative run with a 60 s timeout: the run sees cancelled() at once, the stop call
// follows exactly once and is not cancelled itself, and the cancellation is neither a timeout nor a failure.
TEST(Tickers, RemoveCancelsTheRunInFlightAndTheStopCallFollows) {
    Log log;
    Tickers t(options(log, 2));
    auto c = std::make_shared<Cooperative>();
    c->hold_stop = true;
    const TaskId id = t.add(10ms, cooperative(c, "coop"), t.clock().now());
    t.start();
    ASSERT_TRUE(eventually([&] { return c->in_run == 1; }));
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(t.remove(id));
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s) << "remove() blocked";
    ASSERT_TRUE(eventually([&] { return c->in_stop.load(); }, 10s)) << "the run was not cancelled: " << log.text();
    // The stop call is running, so the task's counters are still there to read.
    auto st = t.stats(id);
    ASSERT_TRUE(st.has_value());
    EXPECT_EQ(st->runs, 1u);
    EXPECT_EQ(st->timeouts, 0u) << "a cancellation by removal counted as a timeout";
    EXPECT_EQ(st->failures, 0u) << "a cancellation by removal counted as a failure";
    c->hold_stop_p.set_value();
    EXPECT_EQ(t.wait_stopped(id, 10s), StopState::stopped);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
    EXPECT_EQ(c->saw_cancel, 1);
    EXPECT_EQ(c->stops, 1);
    EXPECT_EQ(c->stop_saw_cancel, 0) << "the stop call saw the run's cancellation";
    EXPECT_FALSE(log.contains("past its timeout")) << log.text();
    EXPECT_FALSE(log.contains("timeout of")) << log.text();
    EXPECT_FALSE(log.contains("run failed")) << log.text();
    EXPECT_EQ(log.count("'coop'", "cancelled by the task's removal"), 1u) << log.text();
    EXPECT_TRUE(t.stop(10s));
    EXPECT_EQ(c->stops, 1);
}

// stop() with cooperative runs in flight on every worker (60 s timeouts): they are cancelled, every stop
// call runs once, uncancelled, and stop() returns true long before any deadline.
TEST(Tickers, StopCancelsTheRunsInFlightAndReturnsPromptly) {
    Log log;
    Tickers t(options(log, 2));
    auto a = std::make_shared<Cooperative>(), b = std::make_shared<Cooperative>();
    a->hold_stop = true;  // held until its counters are checked
    const TaskId ia = t.add(10ms, cooperative(a, "a"), t.clock().now());
    t.add(10ms, cooperative(b, "b"), t.clock().now());
    t.start();
    ASSERT_TRUE(eventually([&] { return a->in_run == 1 && b->in_run == 1; }));
    auto done = std::async(std::launch::async, [&] {
        const auto t0 = std::chrono::steady_clock::now();
        const bool clean = t.stop(30s);
        return std::make_pair(clean, std::chrono::steady_clock::now() - t0);
    });
    ASSERT_TRUE(eventually([&] { return a->in_stop.load(); }, 10s)) << "a's run was not cancelled: " << log.text();
    auto st = t.stats(ia);
    ASSERT_TRUE(st.has_value());
    EXPECT_EQ(st->timeouts, 0u);
    EXPECT_EQ(st->failures, 0u);
    a->hold_stop_p.set_value();
    auto [clean, took] = done.get();
    EXPECT_TRUE(clean) << log.text();
    EXPECT_LT(took, 10s) << "stop() waited for the runs' deadlines";
    for (auto* c : {a.get(), b.get()}) {
        EXPECT_EQ(c->saw_cancel, 1);
        EXPECT_EQ(c->stops, 1);
        EXPECT_EQ(c->stop_saw_cancel, 0);
    }
    EXPECT_FALSE(log.contains("past its timeout")) << log.text();
    EXPECT_FALSE(log.contains("still in its")) << log.text();
}

// Removing A never cancels B's run on the other worker, however the two interleave; B is cancelled only by
// its own removal.
TEST(Tickers, RemovalCancelsOnlyItsOwnTasksRun) {
    Log log;
    Tickers t(options(log, 2));
    t.start();
    for (int round = 0; round < 20; ++round) {
        auto a = std::make_shared<Cooperative>(), b = std::make_shared<Cooperative>();
        const TaskId ia = t.add(1ms, cooperative(a, "a"), t.clock().now());
        const TaskId ib = t.add(1ms, cooperative(b, "b"), t.clock().now());
        ASSERT_TRUE(eventually([&] { return a->in_run == 1 && b->in_run == 1; })) << "round " << round;
        ASSERT_TRUE(t.remove(ia));
        ASSERT_EQ(t.wait_stopped(ia, 10s), StopState::stopped) << "round " << round;
        EXPECT_EQ(a->saw_cancel, 1);
        std::this_thread::sleep_for(2ms);
        EXPECT_EQ(b->saw_cancel, 0) << "removing a cancelled b's run (round " << round << ")";
        EXPECT_EQ(b->in_run, 1);
        EXPECT_EQ(b->stops, 0);
        ASSERT_TRUE(t.remove(ib));
        ASSERT_EQ(t.wait_stopped(ib, 10s), StopState::stopped);
        EXPECT_EQ(b->saw_cancel, 1);
        EXPECT_EQ(a->stops + b->stops, 2);
        EXPECT_EQ(a->stop_saw_cancel + b->stop_saw_cancel, 0);
    }
    EXPECT_TRUE(t.stop(10s));
}

// A run removed after its deadline passed was cancelled by the timer first: that one is a timeout, counted
// and logged as before (the removal does not hide it).
TEST(Tickers, ARunPastItsDeadlineIsStillATimeoutWhenRemovedLater) {
    Log log;
    auto clock = std::make_shared<ManualClock>();
    auto release = std::make_shared<std::promise<void>>();
    std::shared_future<void> released = release->get_future().share();
    std::atomic<bool> in_run{false}, saw_cancel{false};
    std::atomic<int> stops{0};
    Tickers t(options(log, 1, clock, 1000s));
    const TaskId id = t.add(10s, {"late", 1s, [&, released](RunContext& ctx, bool is_stop) {
                                      if (is_stop) {
                                          ++stops;
                                          return TaskResult::success();
                                      }
                                      in_run = true;
                                      while (!ctx.cancelled()) std::this_thread::sleep_for(1ms);
                                      saw_cancel = true;
                                      released.wait();  // returns only once the test has removed it
                                      return TaskResult::success();
                                  }});
    t.start();
    clock->advance(10s);
    ASSERT_TRUE(eventually([&] { return in_run.load(); }));
    clock->advance(1s);  // the deadline: the timer cancels
    ASSERT_TRUE(eventually([&] { return saw_cancel.load(); }));
    ASSERT_TRUE(t.remove(id));
    release->set_value();
    ASSERT_TRUE(eventually([&] { return stops == 1; }));
    EXPECT_EQ(t.wait_stopped(id, 10s), StopState::stopped);
    EXPECT_TRUE(log.contains("'late'", "past its timeout of 1s")) << log.text();
    EXPECT_FALSE(log.contains("cancelled by the task's removal")) << log.text();
}

// activity() tells a task stuck in its run (ignoring cancellation, abandon_after long) from one stuck in
// its stop call, with the start of the call; stop()'s report names each and the bound that ran out.
TEST(Tickers, ActivityAndTheStopReportSayWhichCallHeldTheStopUp) {
    Log log;
    auto clock = std::make_shared<ManualClock>();
    struct Gate {
        std::promise<void> p;
        std::shared_future<void> f = p.get_future().share();
        std::atomic<bool> in_run{false}, in_stop{false};
    };
    auto gr = std::make_shared<Gate>(), gs = std::make_shared<Gate>();
    auto t = std::make_unique<Tickers>(options(log, 2, clock, 1000s));
    const TimePoint t0 = clock->now();
    const TaskId r = t->add(10s, {"stuck_run", 100s, [gr](RunContext&, bool is_stop) {
                                      if (is_stop) return TaskResult::success();
                                      gr->in_run = true;
                                      gr->f.wait();  // ignores cancellation
                                      return TaskResult::success();
                                  }});
    const TaskId s = t->add(10s, {"stuck_stop", 100s, [gs](RunContext&, bool is_stop) {
                                      if (!is_stop) return TaskResult::success();
                                      gs->in_stop = true;
                                      gs->f.wait();  // ignores cancellation
                                      return TaskResult::success();
                                  }});
    ASSERT_TRUE(t->activity(r).has_value());
    EXPECT_EQ(t->activity(r)->state, TaskActivity::State::idle);
    EXPECT_FALSE(t->activity(0).has_value());
    t->start();
    clock->advance(10s);
    ASSERT_TRUE(eventually([&] { return gr->in_run.load(); }));
    ASSERT_TRUE(eventually([&] { return t->stats(s)->runs == 1; }));
    clock->advance(5s);
    ASSERT_TRUE(t->remove(s));
    ASSERT_TRUE(eventually([&] { return gs->in_stop.load(); }));
    clock->advance(2500ms);
    auto ar = t->activity(r), as = t->activity(s);
    ASSERT_TRUE(ar && as);
    EXPECT_EQ(ar->state, TaskActivity::State::in_run);
    EXPECT_EQ(ar->since, t0 + 10s);
    EXPECT_EQ(as->state, TaskActivity::State::in_stop_call);
    EXPECT_EQ(as->since, t0 + 15s);
    EXPECT_FALSE(t->stop(200ms));
    EXPECT_TRUE(
        log.contains("task 'stuck_run': still in its run (started 7.5s ago) when the stop bound of 200ms ran out"))
        << log.text();
    EXPECT_TRUE(log.contains(
        "task 'stuck_stop': still in its stop call (started 2.5s ago) when the stop bound of 200ms ran out"))
        << log.text();
    EXPECT_EQ(t->activity(r)->state, TaskActivity::State::abandoned) << "stop() left it behind";
    gr->p.set_value();
    gs->p.set_value();
    t.reset();  // the left-behind threads hold the registry until their calls return
}
