// The figures status displays read (TaskStats' last run, next due, back-off; snapshot()) and run_now(),
// on a ManualClock: exact values, no wall-clock assertion.
#include <tickhost/tickers.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <mutex>
#include <thread>

#include "log_capture.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;
using tickhost::Clock;
using tickhost::Duration;
using tickhost::ManualClock;
using tickhost::RunContext;
using tickhost::RunNow;
using tickhost::RunResult;
using tickhost::StopState;
using tickhost::TaskActivity;
using tickhost::TaskId;
using tickhost::TaskResult;
using tickhost::Tickers;
using tickhost::TickTask;
using tickhost::TimePoint;
using tickhost::test::CapturedLog;
using tickhost::test::eventually;

namespace {

struct Fixture {
    std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>();
    CapturedLog log;
    Tickers tickers;
    TimePoint t0 = clock->now();
    explicit Fixture(size_t workers = 2) : tickers(log.options(workers, clock)) {}
    // One tick at a time (a single jump over several ticks would be one late tick for the timer).
    void advance(Duration d, Duration step = 1s) {
        for (Duration done{0}; done < d; done += step) {
            clock->advance(std::min(step, d - done));
            ASSERT_TRUE(tickers.wait_idle());
        }
    }
    // The last run's duration comes with its worker's next timestamp: as it goes idle, just after the run is
    // counted (wait_idle may return first).
    bool closed(TaskId id) {
        return eventually([&] { return tickers.stats(id)->last_duration.has_value(); });
    }
};

// A task whose run takes `took` on the manual clock (it moves the clock itself) and returns `result`.
TickTask timed(
    std::string name, std::shared_ptr<ManualClock> clock, Duration took,
    std::function<TaskResult()> result = [] { return TaskResult::success(); }) {
    return {std::move(name), 0s, [clock, took, result](RunContext&, bool is_stop) {
                if (is_stop) return TaskResult::success();
                clock->advance(took);
                return result();
            }};
}

// A Clock that counts its reads, over a ManualClock (reads by the test's own thread are not counted).
thread_local bool g_not_counted = false;
class CountingClock final : public Clock {
public:
    explicit CountingClock(std::shared_ptr<ManualClock> inner) : inner_(std::move(inner)) {}
    TimePoint now() const override {
        if (!g_not_counted) ++reads;
        return inner_->now();
    }
    void wait_until(std::unique_lock<std::mutex>& lock, std::condition_variable& cv, TimePoint until) override {
        inner_->wait_until(lock, cv, until);
    }
    void forget(std::condition_variable& cv) override { inner_->forget(cv); }
    mutable std::atomic<uint64_t> reads{0};

private:
    std::shared_ptr<ManualClock> inner_;
};

}  // namespace

TEST(TickersStatus, NoRunYet) {
    Fixture f;
    TaskId id = f.tickers.add(1s, timed("t", f.clock, 0s));
    auto st = f.tickers.stats(id);
    ASSERT_TRUE(st);
    EXPECT_EQ(st->last_result, RunResult::none);
    EXPECT_EQ(st->last_start, TimePoint{});
    EXPECT_FALSE(st->last_duration);
    EXPECT_EQ(st->next_due, f.t0 + 1s) << "its first tick";
    EXPECT_EQ(st->backoff, 0s);
}

TEST(TickersStatus, LastRunStartDurationResultAndNextDue) {
    Fixture f;
    TaskId id = f.tickers.add(1s, timed("t", f.clock, 250ms));
    f.tickers.start();
    f.advance(1s);
    auto st = f.tickers.stats(id);
    ASSERT_TRUE(st);
    EXPECT_EQ(st->runs, 1u);
    EXPECT_EQ(st->last_result, RunResult::ok);
    EXPECT_EQ(st->last_start, f.t0 + 1s);
    ASSERT_TRUE(f.closed(id)) << "closed when its worker went idle";
    st = f.tickers.stats(id);
    EXPECT_EQ(*st->last_duration, 250ms);
    EXPECT_EQ(st->last_error, "");
    EXPECT_EQ(st->next_due, f.t0 + 2s);
    EXPECT_EQ(st->backoff, 0s);
}

// One worker runs a cohort's tasks back to back, in the order they were added: each run's end is the next
// one's start (no clock read of its own); the last one's is read as the worker goes idle.
TEST(TickersStatus, BackToBackRunsEndAtTheNextStart) {
    Fixture f(1);
    const TimePoint due = f.t0 + 1s;
    TaskId a = f.tickers.add(1s, timed("a", f.clock, 100ms), due);
    TaskId b = f.tickers.add(1s, timed("b", f.clock, 200ms), due);
    f.tickers.start();
    f.advance(1s);
    ASSERT_TRUE(f.closed(a) && f.closed(b));
    auto sa = f.tickers.stats(a), sb = f.tickers.stats(b);
    ASSERT_TRUE(sa && sb);
    EXPECT_EQ(sa->last_start, f.t0 + 1s);
    EXPECT_EQ(sb->last_start, f.t0 + 1100ms);
    ASSERT_TRUE(sa->last_duration && sb->last_duration);
    EXPECT_EQ(*sa->last_duration, 100ms);
    EXPECT_EQ(*sb->last_duration, 200ms);
}

// The figures cost no clock read of their own: a tick of 100 tasks on one worker reads the clock once per run
// (its start, which the deadline needs anyway), plus the timer's few reads and one as the worker goes idle.
TEST(TickersStatus, NoClockReadIsAddedToARun) {
    g_not_counted = true;
    auto manual = std::make_shared<ManualClock>();
    auto clock = std::make_shared<CountingClock>(manual);
    CapturedLog log;
    Tickers t(log.options(1, clock));
    std::atomic<int> runs{0};
    const TimePoint due = manual->now() + 1s;
    for (int i = 0; i < 100; ++i)
        t.add(1s,
              {"t" + std::to_string(i), 0s,
               [&](RunContext&, bool is_stop) {
                   if (!is_stop) ++runs;
                   return TaskResult::success();
               }},
              due);
    t.start();
    ASSERT_TRUE(t.wait_idle());
    const uint64_t before = clock->reads.load();
    manual->advance(1s);
    ASSERT_TRUE(eventually([&] { return runs == 100; }));
    // The worker's read as it goes idle (the last run's end) comes after the last run returned.
    ASSERT_TRUE(eventually([&] { return t.stats(t.snapshot().back().id)->last_duration.has_value(); }));
    const uint64_t reads = clock->reads.load() - before;
    EXPECT_GE(reads, 100u);
    EXPECT_LE(reads, 100u + 8u) << "clock reads for one tick of 100 runs";
    for (auto& s : t.snapshot()) {
        EXPECT_EQ(s.stats.last_result, RunResult::ok) << s.name;
        EXPECT_TRUE(s.stats.last_duration) << s.name;
    }
}

TEST(TickersStatus, FailingRunKeepsItsErrorAndBackOff) {
    Fixture f;
    std::atomic<bool> failing{true};
    TaskId id = f.tickers.add(1s, timed("flaky", f.clock, 5ms, [&] {
                                  return failing ? TaskResult::failure("upstream down") : TaskResult::success();
                              }));
    f.tickers.start();
    f.advance(1s);
    auto st = f.tickers.stats(id);
    ASSERT_TRUE(st);
    EXPECT_EQ(st->last_result, RunResult::failed);
    EXPECT_EQ(st->last_error, "upstream down");
    EXPECT_EQ(st->consecutive_failures, 1u);
    EXPECT_EQ(st->backoff, 2s) << "interval * 2^1";
    EXPECT_EQ(st->next_due, f.t0 + 3s) << "one tick sat out";
    f.advance(2s);  // fails again at 3 s: waits 4 ticks
    st = f.tickers.stats(id);
    EXPECT_EQ(st->consecutive_failures, 2u);
    EXPECT_EQ(st->backoff, 4s);
    EXPECT_EQ(st->next_due, f.t0 + 7s);
    failing = false;
    f.advance(4s);
    st = f.tickers.stats(id);
    EXPECT_EQ(st->last_result, RunResult::ok);
    EXPECT_EQ(st->last_error, "") << "a success clears the error";
    EXPECT_EQ(st->backoff, 0s);
    EXPECT_EQ(st->next_due, f.t0 + 8s);
}

TEST(TickersStatus, ThrownExceptionIsTheErrorText) {
    Fixture f;
    TaskId id = f.tickers.add(1s, {"throws", 0s, [](RunContext&, bool is_stop) -> TaskResult {
                                       if (!is_stop) throw std::runtime_error("boom");
                                       return TaskResult::success();
                                   }});
    f.tickers.start();
    f.advance(1s);
    EXPECT_EQ(f.tickers.stats(id)->last_error, "exception: boom");
}

TEST(TickersStatus, ErrorTextIsBoundedAtAUtf8Boundary) {
    Fixture f;
    std::string long_error;
    while (long_error.size() < 5000) long_error += "\xc3\xa9";  // é, two bytes each
    TaskId id = f.tickers.add(1s, timed("verbose", f.clock, 0s, [&] { return TaskResult::failure(long_error); }));
    f.tickers.start();
    f.advance(1s);
    const std::string e = f.tickers.stats(id)->last_error;
    EXPECT_LE(e.size(), Tickers::max_error_text);
    EXPECT_GE(e.size(), Tickers::max_error_text - 4);
    ASSERT_GE(e.size(), 5u);
    EXPECT_EQ(e.substr(e.size() - 3), "...");
    EXPECT_EQ(e.substr(e.size() - 5, 2), "\xc3\xa9") << "cut between characters, not inside one";
}

TEST(TickersStatus, TimedOutRunSaysSo) {
    Fixture f;
    std::atomic<bool> started{false};
    TaskId id = f.tickers.add(10s, {"sleepy", 1s, [&](RunContext& ctx, bool is_stop) {
                                        if (is_stop) return TaskResult::success();
                                        started = true;
                                        while (!ctx.cancelled()) std::this_thread::sleep_for(1ms);
                                        return TaskResult::failure("gave up");
                                    }});
    f.tickers.start();
    f.clock->advance(10s);
    ASSERT_TRUE(eventually([&] { return started.load(); }));
    f.clock->advance(1s);
    ASSERT_TRUE(f.tickers.wait_idle());
    auto st = f.tickers.stats(id);
    EXPECT_EQ(st->last_result, RunResult::timed_out);
    EXPECT_EQ(st->last_error, "gave up");
    ASSERT_TRUE(st->last_duration);
    EXPECT_EQ(*st->last_duration, 1s);
}

// A task stuck in a run past several ticks: its next due moves on with the ticks skipped meanwhile.
TEST(TickersStatus, NextDueMovesPastSkippedTicks) {
    Fixture f;
    std::promise<void> release;
    std::shared_future<void> released = release.get_future().share();
    std::atomic<int> runs{0};
    TaskId id = f.tickers.add(1s, {"slow", 100s, [&](RunContext&, bool is_stop) {
                                       if (!is_stop && runs++ == 0) released.wait();
                                       return TaskResult::success();
                                   }});
    f.tickers.start();
    f.clock->advance(1s);
    ASSERT_TRUE(eventually([&] { return runs == 1; }));
    for (int i = 1; i <= 2; ++i) {  // the ticks at 2 s and 3 s are skipped
        f.clock->advance(1s);
        ASSERT_TRUE(eventually([&] { return f.tickers.stats(id)->skipped == uint64_t(i); }));
    }
    f.clock->advance(500ms);  // now t0 + 3.5 s
    auto a = f.tickers.activity(id);
    ASSERT_TRUE(a);
    EXPECT_EQ(a->state, TaskActivity::State::in_run);
    EXPECT_EQ(f.tickers.stats(id)->next_due, f.t0 + 4s);
    release.set_value();
    ASSERT_TRUE(f.tickers.wait_idle());
    EXPECT_EQ(f.tickers.stats(id)->next_due, f.t0 + 4s);
    f.advance(500ms, 500ms);
    EXPECT_EQ(runs, 2);
    EXPECT_EQ(f.tickers.stats(id)->next_due, f.t0 + 5s);
}

TEST(TickersStatus, SnapshotListsLiveTasksWithNamesAndActivity) {
    Fixture f;
    std::promise<void> release;
    std::shared_future<void> released = release.get_future().share();
    std::atomic<bool> in_run{false};
    TaskId a = f.tickers.add(1s, timed("a", f.clock, 0s));
    TaskId b = f.tickers.add(2s, {"b", 3s, [&](RunContext&, bool is_stop) {
                                      if (!is_stop) {
                                          in_run = true;
                                          released.wait();
                                      }
                                      return TaskResult::success();
                                  }});
    TaskId gone = f.tickers.add(1s, timed("gone", f.clock, 0s));
    ASSERT_TRUE(f.tickers.remove(gone));
    f.tickers.start();
    ASSERT_EQ(f.tickers.wait_stopped(gone, 5s), StopState::stopped);
    f.clock->advance(2s);
    ASSERT_TRUE(eventually([&] { return in_run.load(); }));
    auto all = f.tickers.snapshot();
    ASSERT_EQ(all.size(), 2u);
    EXPECT_EQ(all[0].name, "a");
    EXPECT_EQ(all[0].id, a);
    EXPECT_EQ(all[0].interval, 1s);
    EXPECT_EQ(all[0].timeout, 10s) << "the registry's default";
    EXPECT_EQ(all[1].name, "b");
    EXPECT_EQ(all[1].timeout, 3s);
    EXPECT_EQ(all[1].activity.state, TaskActivity::State::in_run);
    EXPECT_EQ(all[1].activity.since, f.t0 + 2s);
    auto some = f.tickers.snapshot({b, gone, a, 0});
    ASSERT_EQ(some.size(), 2u) << "unknown and removed IDs are left out";
    EXPECT_EQ(some[0].id, b);
    EXPECT_EQ(some[1].id, a);
    release.set_value();
    ASSERT_TRUE(f.tickers.wait_idle());
}

TEST(TickersStatus, RunNowRunsOnceAtOnceWithoutMovingTheSchedule) {
    Fixture f;
    std::mutex mu;
    std::vector<Duration> at;
    TaskId id = f.tickers.add(10s, {"t", 0s, [&](RunContext& ctx, bool is_stop) {
                                        if (!is_stop) {
                                            std::lock_guard<std::mutex> lk(mu);
                                            at.push_back(ctx.clock().now() - f.t0);
                                        }
                                        return TaskResult::success();
                                    }});
    EXPECT_EQ(f.tickers.run_now(id), RunNow::not_running) << "before start()";
    f.tickers.start();
    f.advance(3s);
    uint64_t before = 99;
    EXPECT_EQ(f.tickers.run_now(id, &before), RunNow::started);
    EXPECT_EQ(before, 0u) << "the run count before this run";
    ASSERT_TRUE(f.tickers.wait_idle());
    EXPECT_EQ(f.tickers.stats(id)->runs, before + 1);
    f.advance(7s);
    EXPECT_EQ(at, (std::vector<Duration>{3s, 10s}));
    auto st = f.tickers.stats(id);
    EXPECT_EQ(st->runs, 2u);
    EXPECT_EQ(st->skipped, 0u);
    EXPECT_EQ(st->next_due, f.t0 + 20s);
}

TEST(TickersStatus, RunNowDoesNotOverlapNorQueueASecondRun) {
    Fixture f;
    std::promise<void> release;
    std::shared_future<void> released = release.get_future().share();
    std::atomic<int> runs{0};
    TaskId id = f.tickers.add(1s, {"slow", 100s, [&](RunContext&, bool is_stop) {
                                       if (!is_stop && runs++ == 0) released.wait();
                                       return TaskResult::success();
                                   }});
    f.tickers.start();
    ASSERT_EQ(f.tickers.run_now(id), RunNow::started);
    // Claimed at once: a second request finds it taken even before a worker picked the first up.
    EXPECT_EQ(f.tickers.run_now(id), RunNow::already_running);
    ASSERT_TRUE(eventually([&] { return runs == 1; }));
    EXPECT_EQ(f.tickers.run_now(id), RunNow::already_running);
    f.clock->advance(1s);  // its scheduled tick comes due during the run: skipped, as always
    ASSERT_TRUE(eventually([&] { return f.tickers.stats(id)->skipped == 1; }));
    release.set_value();
    ASSERT_TRUE(f.tickers.wait_idle());
    EXPECT_EQ(runs, 1) << "nothing was queued behind the run in flight";
    f.advance(1s);
    EXPECT_EQ(runs, 2);
}

TEST(TickersStatus, RunNowIgnoresBackOff) {
    Fixture f;
    std::atomic<int> runs{0};
    std::atomic<bool> failing{true};
    TaskId id = f.tickers.add(1s, {"flaky", 0s, [&](RunContext&, bool is_stop) {
                                       if (is_stop) return TaskResult::success();
                                       ++runs;
                                       return failing ? TaskResult::failure("down") : TaskResult::success();
                                   }});
    f.tickers.start();
    f.advance(1s);
    f.advance(2s);
    ASSERT_EQ(runs, 2);
    ASSERT_EQ(f.tickers.stats(id)->backoff, 4s);  // next scheduled run at 7 s
    failing = false;
    ASSERT_EQ(f.tickers.run_now(id), RunNow::started);
    ASSERT_TRUE(f.tickers.wait_idle());
    EXPECT_EQ(runs, 3);
    auto st = f.tickers.stats(id);
    EXPECT_EQ(st->consecutive_failures, 0u) << "the success resets the back-off";
    EXPECT_EQ(st->backoff, 0s);
    EXPECT_EQ(st->next_due, f.t0 + 4s) << "the grid's next tick, no longer sat out";
    f.advance(1s);
    EXPECT_EQ(runs, 4) << "back to every interval";
    failing = true;
    ASSERT_EQ(f.tickers.run_now(id), RunNow::started);  // fails at 4 s: sits out the tick at 5 s
    ASSERT_TRUE(f.tickers.wait_idle());
    EXPECT_EQ(f.tickers.stats(id)->next_due, f.t0 + 6s);
    EXPECT_EQ(f.tickers.stats(id)->backoff, 2s);
}

TEST(TickersStatus, RunNowOfUnknownRemovedAndAbandonedTasks) {
    Fixture f;
    f.tickers.start();
    EXPECT_EQ(f.tickers.run_now(0), RunNow::unknown);
    EXPECT_EQ(f.tickers.run_now(TaskId(12345) << 32), RunNow::unknown);
    TaskId id = f.tickers.add(1s, timed("t", f.clock, 0s));
    ASSERT_TRUE(f.tickers.remove(id));
    EXPECT_EQ(f.tickers.run_now(id), RunNow::unknown);
    ASSERT_EQ(f.tickers.wait_stopped(id, 5s), StopState::stopped);
    EXPECT_EQ(f.tickers.run_now(id), RunNow::unknown) << "a stale ID";
}

TEST(TickersStatus, RunNowOfAnAbandonedTask) {
    Fixture f;
    std::promise<void> release;
    std::shared_future<void> released = release.get_future().share();
    std::atomic<bool> started{false};
    TaskId id = f.tickers.add(10s, {"stuck", 1s, [&started, released](RunContext&, bool is_stop) {
                                        if (!is_stop) {
                                            started = true;
                                            released.wait();  // ignores its cancellation
                                        }
                                        return TaskResult::success();
                                    }});
    f.tickers.start();
    f.clock->advance(10s);
    ASSERT_TRUE(eventually([&] { return started.load(); }));
    f.clock->advance(1s);  // its deadline: cancelled
    f.clock->advance(5s);  // abandon_after past it: abandoned
    ASSERT_TRUE(eventually([&] { return f.tickers.activity(id)->state == TaskActivity::State::abandoned; }));
    EXPECT_EQ(f.tickers.run_now(id), RunNow::abandoned);
    release.set_value();
    // Its stuck call returns (the worker that made it is gone; nothing of the test may go before it).
    EXPECT_TRUE(eventually([&] { return f.log.contains("'stuck': abandoned run returned"); }));
}

TEST(TickersStatus, RunNowThenRemoveMakesExactlyOneStopCall) {
    for (int round = 0; round < 50; ++round) {
        Fixture f;
        std::atomic<int> runs{0}, stops{0};
        TaskId id = f.tickers.add(1h, {"t", 0s, [&](RunContext&, bool is_stop) {
                                           (is_stop ? stops : runs)++;
                                           return TaskResult::success();
                                       }});
        f.tickers.start();
        ASSERT_EQ(f.tickers.run_now(id), RunNow::started);
        ASSERT_TRUE(f.tickers.remove(id));
        ASSERT_EQ(f.tickers.wait_stopped(id, 5s), StopState::stopped);
        EXPECT_EQ(stops, 1);
        EXPECT_LE(runs, 1);
        f.tickers.stop();
        EXPECT_EQ(stops, 1);
    }
}

TEST(TickersStatus, RunNowThenStopMakesExactlyOneStopCall) {
    Fixture f;
    std::atomic<int> stops{0};
    TaskId id = f.tickers.add(1h, {"t", 0s, [&](RunContext&, bool is_stop) {
                                       if (is_stop) ++stops;
                                       return TaskResult::success();
                                   }});
    f.tickers.start();
    ASSERT_EQ(f.tickers.run_now(id), RunNow::started);
    EXPECT_TRUE(f.tickers.stop());
    EXPECT_EQ(stops, 1);
    EXPECT_EQ(f.tickers.run_now(id), RunNow::unknown);
}

// Reading status while runs go on: every snapshot is consistent (a run's start is never after its end,
// figures never go back). Run under TSan in CI.
TEST(TickersStatus, ReadingWhileRunningIsConsistent) {
    CapturedLog log;
    Tickers t(log.options(2));
    std::vector<TaskId> ids;
    for (int i = 0; i < 50; ++i)
        ids.push_back(t.add(1ms, {"t" + std::to_string(i), 0s, [i](RunContext&, bool is_stop) {
                                      if (is_stop || i % 3) return TaskResult::success();
                                      return TaskResult::failure("every third task fails");
                                  }}));
    t.start();
    std::atomic<bool> done{false};
    std::thread reader([&] {
        std::vector<uint64_t> last(ids.size(), 0);
        while (!done) {
            auto all = t.snapshot(ids);
            for (size_t k = 0; k < all.size(); ++k) {
                const auto& s = all[k].stats;
                EXPECT_GE(s.runs, last[k]);
                last[k] = s.runs;
                if (s.last_result == RunResult::failed) {
                    EXPECT_EQ(s.last_error, "every third task fails");
                }
                if (s.last_duration) {
                    EXPECT_GE(s.last_duration->count(), 0);
                }
            }
            for (TaskId id : ids) t.run_now(id);
        }
    });
    std::this_thread::sleep_for(300ms);
    done = true;
    reader.join();
    EXPECT_TRUE(t.stop());
}

// On the real clock, a task with a timeout of 1 s or more is timed with the coarse clock (as its deadline
// is): its duration says the resolution it has. Loose bounds only: this is about which clock, not timing.
TEST(TickersStatus, DurationsSayTheResolutionOfTheirClock) {
    CapturedLog log;
    Tickers t(log.options(2));
    auto sleepy = [](RunContext&, bool is_stop) {
        if (!is_stop) std::this_thread::sleep_for(20ms);
        return TaskResult::success();
    };
    TaskId coarse = t.add(1h, {"coarse", 10s, sleepy});
    TaskId precise = t.add(1h, {"precise", 500ms, sleepy});
    t.start();
    ASSERT_EQ(t.run_now(coarse), RunNow::started);
    ASSERT_EQ(t.run_now(precise), RunNow::started);
    ASSERT_TRUE(eventually(
        [&] { return t.stats(coarse)->last_duration.has_value() && t.stats(precise)->last_duration.has_value(); }));
    const auto c = *t.stats(coarse), p = *t.stats(precise);
    EXPECT_EQ(p.last_duration_resolution, 0s);
    EXPECT_GE(*p.last_duration, 20ms);
#if defined(__linux__)
    EXPECT_GT(c.last_duration_resolution, 0s);
    EXPECT_LE(c.last_duration_resolution, 100ms);
    EXPECT_GE(*c.last_duration + c.last_duration_resolution, 20ms);
#endif
    EXPECT_LT(*c.last_duration, 1h);
    EXPECT_TRUE(t.stop());
}
