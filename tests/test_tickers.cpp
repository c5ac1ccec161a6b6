// Scheduler tests. Exact schedule logic runs on a ManualClock (instant, no wall-clock assertions); the
// ports of the original design's two scenarios also run on the real clock, asserting only "never early".
#include <tickhost/tickers.hpp>

#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "test_util.hpp"

using namespace std::chrono_literals;
using tickhost::Duration;
using tickhost::ManualClock;
using tickhost::RunContext;
using tickhost::StopState;
using tickhost::TaskId;
using tickhost::TaskResult;
using tickhost::Tickers;
using tickhost::TickTask;
using tickhost::TimePoint;
using tickhost::test::eventually;

namespace {

struct Captured {
    std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(1000);
    std::shared_ptr<spdlog::logger> logger = std::make_shared<spdlog::logger>("scheduler-test", sink);
    Captured() { logger->set_level(spdlog::level::trace); }
    bool contains(const std::string& a, const std::string& b = "") const {
        for (auto& line : sink->last_formatted())
            if (line.find(a) != std::string::npos && line.find(b) != std::string::npos) return true;
        return false;
    }
    size_t count(const std::string& a) const {
        size_t n = 0;
        for (auto& line : sink->last_formatted()) n += line.find(a) != std::string::npos;
        return n;
    }
};

// A registry on a manual clock with a captured log.
struct Fixture {
    std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>();
    Captured log;
    Tickers tickers;
    explicit Fixture(size_t workers = 2, Duration abandon_after = 1s)
        : tickers(options(workers, abandon_after)) {}
    Tickers::Options options(size_t workers, Duration abandon_after) {
        Tickers::Options o;
        o.workers = workers;
        o.clock = clock;
        o.logger = log.logger;
        o.abandon_after = abandon_after;
        return o;
    }
    TimePoint now() const { return clock->now(); }
    // Advances the clock in `step`s, letting the registry settle after each.
    void advance(Duration total, Duration step) {
        for (Duration done{0}; done < total; done += step) {
            clock->advance(std::min(step, total - done));
            ASSERT_TRUE(tickers.wait_idle());
        }
    }
};

// Counts runs and stop calls of one task; records the clock at each run.
struct Probe {
    std::atomic<int> runs{0};
    std::atomic<int> stops{0};
    std::mutex mu;
    std::vector<TimePoint> at;
    TickTask task(std::string name, Duration timeout = 0s) {
        return TickTask{std::move(name), timeout, [this](RunContext& ctx, bool is_stop) {
                            if (is_stop) {
                                ++stops;
                            } else {
                                std::lock_guard<std::mutex> lk(mu);
                                at.push_back(ctx.clock().now());
                                ++runs;
                            }
                            return TaskResult::success();
                        }};
    }
};

}  // namespace

// The original's first scenario: one ticker at 1 s; its first run is not before 1 s; stop calls the callback.
TEST(Tickers, OriginalOneTickerExact) {
    Fixture f;
    Probe p;
    const TimePoint t0 = f.now();
    f.tickers.add(1s, p.task("health"));
    f.tickers.start();
    f.advance(999ms, 333ms);
    EXPECT_EQ(p.runs, 0) << "ran before its first interval";
    f.advance(1ms, 1ms);
    EXPECT_EQ(p.runs, 1);
    EXPECT_EQ(p.at[0], t0 + 1s);
    EXPECT_TRUE(f.tickers.stop());
    EXPECT_EQ(p.stops, 1);
    EXPECT_EQ(p.runs, 1);
}

TEST(Tickers, OriginalOneTickerRealClock) {
    std::atomic<int> runs{0}, stops{0};
    std::atomic<int64_t> first_run_after_ns{-1};
    const auto t0 = std::chrono::steady_clock::now();
    Tickers t;
    t.add(1s, {"health", 0s, [&](RunContext&, bool is_stop) {
                   if (is_stop) {
                       ++stops;
                   } else if (runs++ == 0) {
                       first_run_after_ns = (std::chrono::steady_clock::now() - t0).count();
                   }
                   return TaskResult::success();
               }});
    t.start();
    ASSERT_TRUE(eventually([&] { return runs >= 1; }, 10s));
    EXPECT_GE(first_run_after_ns.load(), std::chrono::nanoseconds(1s).count()) << "first run came early";
    t.stop();
    EXPECT_EQ(stops, 1);
}

// The original's second scenario: five tickers at 1..5 s, two more added after start; none runs early and
// each runs exactly as often as its interval allows.
TEST(Tickers, OriginalFiveTickersPlusTwoExact) {
    Fixture f;
    std::vector<std::unique_ptr<Probe>> probes;
    std::vector<std::pair<TimePoint, Duration>> anchors;
    std::vector<std::pair<Duration, TickTask>> batch;
    for (int i = 1; i <= 5; ++i) {
        probes.push_back(std::make_unique<Probe>());
        batch.emplace_back(std::chrono::seconds(i), probes.back()->task("t" + std::to_string(i)));
        anchors.emplace_back(f.now(), std::chrono::seconds(i));
    }
    f.tickers.add_all(std::move(batch));
    f.tickers.start();
    f.advance(2500ms, 100ms);
    for (int i = 6; i <= 7; ++i) {
        probes.push_back(std::make_unique<Probe>());
        anchors.emplace_back(f.now(), std::chrono::seconds(i - 5));
        f.tickers.add(std::chrono::seconds(i - 5), probes.back()->task("late" + std::to_string(i)));
    }
    f.advance(10s, 100ms);
    const TimePoint end = f.now();
    for (size_t i = 0; i < probes.size(); ++i) {
        auto [anchor, interval] = anchors[i];
        const long expected = long((end - anchor) / interval);
        EXPECT_EQ(probes[i]->runs, expected) << "task " << i;
        for (size_t k = 0; k < probes[i]->at.size(); ++k)
            EXPECT_EQ(probes[i]->at[k], anchor + interval * long(k + 1)) << "task " << i << " run " << k;
    }
    f.tickers.stop();
    for (auto& p : probes) EXPECT_EQ(p->stops, 1);
}

TEST(Tickers, OriginalFiveTickersRealClockNeverEarly) {
    std::mutex mu;
    std::vector<std::string> early;
    std::atomic<int> total{0};
    auto make = [&](std::string name, Duration interval, TimePoint first) {
        auto k = std::make_shared<int>(0);
        return TickTask{name, 0s, [&, name, interval, first, k](RunContext& ctx, bool is_stop) {
                            if (is_stop) return TaskResult::success();
                            auto now = ctx.clock().now();
                            auto due = first + interval * (*k)++;
                            if (now < due) {
                                std::lock_guard<std::mutex> lk(mu);
                                early.push_back(name);
                            }
                            ++total;
                            return TaskResult::success();
                        }};
    };
    Tickers t;
    const TimePoint t0 = t.clock().now();
    for (int i = 1; i <= 5; ++i) {
        Duration iv = std::chrono::milliseconds(20 * i);
        t.add(iv, make("t" + std::to_string(i), iv, t0 + iv), t0 + iv);
    }
    t.start();
    std::this_thread::sleep_for(100ms);
    for (int i = 1; i <= 2; ++i) {
        Duration iv = std::chrono::milliseconds(30 * i);
        TimePoint first = t.clock().now() + iv;
        t.add(iv, make("late" + std::to_string(i), iv, first), first);
    }
    ASSERT_TRUE(eventually([&] { return total >= 40; }, 20s));
    t.stop();
    EXPECT_TRUE(early.empty()) << "ran early: " << early.front();
}

TEST(Tickers, SameIntervalTasksBothRun) {
    Fixture f;
    Probe a, b;
    f.tickers.add_all({{1s, a.task("a")}, {1s, b.task("b")}});
    f.tickers.start();
    f.advance(3s, 500ms);
    EXPECT_EQ(a.runs, 3);
    EXPECT_EQ(b.runs, 3);
}

TEST(Tickers, ExplicitFirstDue) {
    Fixture f;
    Probe p;
    f.tickers.add(10s, p.task("x"), f.now() + 1s);
    f.tickers.start();
    f.advance(1s, 1s);
    EXPECT_EQ(p.runs, 1);
    f.advance(9s, 1s);
    EXPECT_EQ(p.runs, 1);
    f.advance(1s, 1s);
    EXPECT_EQ(p.runs, 2);
}

TEST(Tickers, FixedRateNoDriftWithIrregularWakeups) {
    Fixture f;
    Probe p;
    const TimePoint t0 = f.now();
    f.tickers.add(100ms, p.task("steady"));
    f.tickers.start();
    // Wake-ups that land between ticks must not move the anchor.
    for (int i = 0; i < 50; ++i) f.advance(std::chrono::milliseconds(37 + (i % 5) * 11), 1s);
    const long expected = long((f.now() - t0) / 100ms);
    EXPECT_EQ(p.runs, expected);
    for (size_t k = 1; k < p.at.size(); ++k) {
        // A run happens at the first wake-up at or after its due time, never before it.
        EXPECT_GE(p.at[k], t0 + 100ms * long(k + 1));
        EXPECT_LT(p.at[k], t0 + 100ms * long(k + 1) + 100ms);
    }
}

TEST(Tickers, IdsRecycleSlotsButNeverRepeat) {
    Fixture f;
    Probe p;
    f.tickers.start();
    std::set<TaskId> seen;
    TaskId first = f.tickers.add(1s, p.task("a"));
    seen.insert(first);
    TaskId prev = first;
    for (int i = 0; i < 20; ++i) {
        ASSERT_TRUE(f.tickers.remove(prev));
        ASSERT_EQ(f.tickers.wait_stopped(prev, 5s), StopState::stopped);
        TaskId next = f.tickers.add(1s, p.task("a"));
        EXPECT_EQ(uint32_t(next), uint32_t(first)) << "the freed slot is reused first";
        EXPECT_TRUE(seen.insert(next).second) << "an ID value came back";
        prev = next;
    }
    EXPECT_EQ(p.stops, 20);
}

TEST(Tickers, StaleIdsAreRefused) {
    Fixture f;
    Probe a, b;
    f.tickers.start();
    TaskId old = f.tickers.add(1s, a.task("old"));
    EXPECT_TRUE(f.tickers.remove(old));
    EXPECT_FALSE(f.tickers.remove(old)) << "removed twice";
    ASSERT_EQ(f.tickers.wait_stopped(old, 5s), StopState::stopped);
    TaskId fresh = f.tickers.add(1s, b.task("fresh"));  // reuses old's slot
    EXPECT_FALSE(f.tickers.remove(old)) << "a stale handle removed somebody else's task";
    EXPECT_FALSE(f.tickers.stats(old).has_value());
    EXPECT_TRUE(f.tickers.stats(fresh).has_value());
    EXPECT_FALSE(f.tickers.remove(0));
    EXPECT_FALSE(f.tickers.remove(0xffffffff00000123ull));
    EXPECT_EQ(f.tickers.wait_stopped(0x1234567800000000ull | 999999, 1ms), StopState::unknown);
    f.advance(1s, 1s);
    EXPECT_EQ(b.runs, 1);
    EXPECT_EQ(a.runs, 0);
}

TEST(Tickers, InvalidArgumentsThrow) {
    Tickers t;
    EXPECT_THROW(t.add(0s, {"zero", 0s, [](RunContext&, bool) { return TaskResult::success(); }}),
                 std::invalid_argument);
    EXPECT_THROW(t.add(-1s, {"neg", 0s, [](RunContext&, bool) { return TaskResult::success(); }}),
                 std::invalid_argument);
    EXPECT_THROW(t.add(1s, {"nofn", 0s, nullptr}), std::invalid_argument);
    EXPECT_THROW(t.add(1s, {"negtimeout", -1s, [](RunContext&, bool) { return TaskResult::success(); }}),
                 std::invalid_argument);
}

TEST(Tickers, OverlappingTickIsSkippedAndCounted) {
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
    for (int i = 0; i < 3; ++i) {
        f.clock->advance(1s);
        ASSERT_TRUE(eventually([&] { return f.tickers.stats(id)->skipped == uint64_t(i + 1); }));
    }
    release.set_value();
    ASSERT_TRUE(f.tickers.wait_idle());
    EXPECT_EQ(runs, 1) << "the task overlapped itself";
    f.advance(1s, 1s);
    EXPECT_EQ(runs, 2);
    EXPECT_EQ(f.tickers.stats(id)->skipped, 3u);
}

TEST(Tickers, TimeoutSetsCancellationAndLogs) {
    Fixture f;
    std::atomic<bool> started{false};
    std::atomic<bool> saw_cancel{false};
    TaskId id = f.tickers.add(10s, {"sleepy", 1s, [&](RunContext& ctx, bool is_stop) {
                                        if (is_stop) return TaskResult::success();
                                        started = true;
                                        while (!ctx.cancelled()) std::this_thread::sleep_for(1ms);
                                        saw_cancel = true;
                                        EXPECT_LE(ctx.remaining().count(), 0);
                                        return TaskResult::failure("gave up");
                                    }});
    f.tickers.start();
    f.clock->advance(10s);
    ASSERT_TRUE(eventually([&] { return started.load(); }));
    f.clock->advance(999ms);
    std::this_thread::sleep_for(20ms);
    EXPECT_FALSE(saw_cancel) << "cancelled before the deadline";
    f.clock->advance(1ms);
    ASSERT_TRUE(eventually([&] { return saw_cancel.load(); }));
    ASSERT_TRUE(f.tickers.wait_idle());
    EXPECT_EQ(f.tickers.stats(id)->timeouts, 1u);
    EXPECT_EQ(f.tickers.stats(id)->failures, 1u);
    EXPECT_TRUE(f.log.contains("sleepy", "cancellation requested"));
    EXPECT_TRUE(f.log.contains("sleepy", "past its timeout of 1s"));
    EXPECT_TRUE(f.log.contains("sleepy", "gave up"));
}

TEST(Tickers, FailuresAndExceptionsAreLoggedWithTheTaskName) {
    Fixture f;
    TaskId bad = f.tickers.add(1s, {"fails", 0s, [](RunContext&, bool is_stop) {
                                        return is_stop ? TaskResult::success() : TaskResult::failure("disk full");
                                    }});
    TaskId thrower = f.tickers.add(1s, {"throws", 0s, [](RunContext&, bool is_stop) -> TaskResult {
                                            if (!is_stop) throw std::runtime_error("boom");
                                            return TaskResult::success();
                                        }});
    f.tickers.start();
    f.advance(3s, 1s);  // fails at 1 s, sits out 2 s (back-off), fails at 3 s
    EXPECT_EQ(f.tickers.stats(bad)->failures, 2u);
    EXPECT_EQ(f.tickers.stats(thrower)->failures, 2u);
    EXPECT_EQ(f.tickers.stats(bad)->consecutive_failures, 2u);
    EXPECT_TRUE(f.log.contains("'fails'", "disk full"));
    EXPECT_TRUE(f.log.contains("'throws'", "boom"));
}

TEST(Tickers, FailingTaskBacksOffExponentiallyAndRecovers) {
    auto clock = std::make_shared<ManualClock>();
    Captured log;
    Tickers::Options o;
    o.workers = 2;
    o.clock = clock;
    o.logger = log.logger;
    o.backoff_max = 8s;
    log.logger->set_level(spdlog::level::info);  // what an operator sees by default
    Tickers t(o);
    std::atomic<bool> failing{true};
    std::mutex mu;
    std::vector<Duration> at;
    const TimePoint t0 = clock->now();
    TaskId id = t.add(1s, {"flaky", 0s, [&](RunContext& ctx, bool is_stop) {
                               if (is_stop) return TaskResult::success();
                               std::lock_guard<std::mutex> lk(mu);
                               at.push_back(ctx.clock().now() - t0);
                               return failing ? TaskResult::failure("upstream down") : TaskResult::success();
                           }});
    t.start();
    auto step = [&](int seconds) {
        for (int i = 0; i < seconds; ++i) {
            clock->advance(1s);
            ASSERT_TRUE(t.wait_idle());
        }
    };
    step(15);
    // Fails at 1 s; then waits 2, 4, 8 (the cap) ticks: runs at 1, 3, 7, 15.
    EXPECT_EQ(at, (std::vector<Duration>{1s, 3s, 7s, 15s}));
    EXPECT_EQ(t.stats(id)->consecutive_failures, 4u);
    EXPECT_EQ(log.count("run failed: upstream down"), 1u) << "one error line when it starts failing";
    EXPECT_EQ(log.count("failures in a row"), 1u) << "one warning when the back-off reaches its cap";
    failing = false;
    step(10);  // next try at 23 s succeeds; then every second again
    EXPECT_EQ(at, (std::vector<Duration>{1s, 3s, 7s, 15s, 23s, 24s, 25s}));
    EXPECT_EQ(t.stats(id)->consecutive_failures, 0u);
    EXPECT_TRUE(log.contains("flaky", "recovered after 4 failed run(s)"));
    EXPECT_EQ(log.count("upstream down"), 2u) << "no line per failure at info level";
}

TEST(Tickers, BackoffCanBeTurnedOff) {
    auto clock = std::make_shared<ManualClock>();
    Captured log;
    Tickers::Options o;
    o.clock = clock;
    o.logger = log.logger;
    o.backoff_max = 0s;
    Tickers t(o);
    TaskId id = t.add(1s, {"always", 0s, [](RunContext&, bool is_stop) {
                               return is_stop ? TaskResult::success() : TaskResult::failure("nope");
                           }});
    t.start();
    for (int i = 0; i < 5; ++i) {
        clock->advance(1s);
        ASSERT_TRUE(t.wait_idle());
    }
    EXPECT_EQ(t.stats(id)->failures, 5u);
    EXPECT_EQ(log.count("run failed: nope"), 1u);
}

TEST(Tickers, RemoveStopsRunsAndCallsStopOnce) {
    Fixture f;
    Probe p;
    TaskId id = f.tickers.add(1s, p.task("x"));
    f.tickers.start();
    f.advance(3s, 1s);
    EXPECT_EQ(p.runs, 3);
    ASSERT_TRUE(f.tickers.remove(id));
    EXPECT_EQ(f.tickers.wait_stopped(id, 5s), StopState::stopped);
    f.advance(3s, 1s);
    EXPECT_EQ(p.runs, 3) << "ran after remove";
    EXPECT_EQ(p.stops, 1);
    f.tickers.stop();
    EXPECT_EQ(p.stops, 1);
}

TEST(Tickers, RemoveDuringRunDefersStopUntilRunReturns) {
    Fixture f;
    std::promise<void> release;
    std::shared_future<void> released = release.get_future().share();
    std::atomic<int> runs{0}, stops{0};
    std::atomic<bool> stop_before_run_end{false}, in_run{false};
    TaskId id = f.tickers.add(1s, {"busy", 100s, [&](RunContext&, bool is_stop) {
                                       if (is_stop) {
                                           if (in_run) stop_before_run_end = true;
                                           ++stops;
                                       } else {
                                           in_run = true;
                                           ++runs;
                                           released.wait();
                                           in_run = false;
                                       }
                                       return TaskResult::success();
                                   }});
    f.tickers.start();
    f.clock->advance(1s);
    ASSERT_TRUE(eventually([&] { return runs == 1; }));
    auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(f.tickers.remove(id));  // must not wait for the run
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
    EXPECT_EQ(f.tickers.wait_stopped(id, 50ms), StopState::timed_out);
    EXPECT_EQ(stops, 0);
    release.set_value();
    EXPECT_EQ(f.tickers.wait_stopped(id, 10s), StopState::stopped);
    EXPECT_EQ(stops, 1);
    EXPECT_FALSE(stop_before_run_end);
}

TEST(Tickers, StopCallIsBoundedByTheTimeout) {
    Fixture f;
    std::atomic<bool> stop_saw_cancel{false};
    std::atomic<bool> in_stop{false};
    TaskId id = f.tickers.add(1s, {"slowstop", 2s, [&](RunContext& ctx, bool is_stop) {
                                       if (is_stop) {
                                           in_stop = true;
                                           while (!ctx.cancelled()) std::this_thread::sleep_for(1ms);
                                           stop_saw_cancel = true;
                                       }
                                       return TaskResult::success();
                                   }});
    f.tickers.start();
    f.tickers.remove(id);
    ASSERT_TRUE(eventually([&] { return in_stop.load(); }));
    f.clock->advance(2s);
    EXPECT_EQ(f.tickers.wait_stopped(id, 10s), StopState::stopped);
    EXPECT_TRUE(stop_saw_cancel);
    EXPECT_TRUE(f.log.contains("slowstop", "stop call took"));
}

TEST(Tickers, StopIsIdempotentAndCallsEveryStopOnce) {
    Fixture f;
    std::vector<std::unique_ptr<Probe>> probes;
    for (int i = 0; i < 50; ++i) {
        probes.push_back(std::make_unique<Probe>());
        f.tickers.add(std::chrono::milliseconds(100 + i), probes.back()->task("t" + std::to_string(i)));
    }
    f.tickers.start();
    f.tickers.start();
    f.advance(1s, 100ms);
    EXPECT_TRUE(f.tickers.stop());
    EXPECT_TRUE(f.tickers.stop());
    EXPECT_FALSE(f.tickers.running());
    for (auto& p : probes) EXPECT_EQ(p->stops, 1);
    EXPECT_EQ(f.tickers.size(), 0u);
    // A stopped registry starts again with new tasks.
    Probe later;
    f.tickers.add(1s, later.task("later"));
    f.tickers.start();
    f.advance(1s, 1s);
    EXPECT_EQ(later.runs, 1);
    f.tickers.stop();
    EXPECT_EQ(later.stops, 1);
}

TEST(Tickers, StopWithoutStartStillCallsStop) {
    Fixture f;
    Probe p;
    f.tickers.add(1s, p.task("never-started"));
    EXPECT_TRUE(f.tickers.stop());
    EXPECT_EQ(p.runs, 0);
    EXPECT_EQ(p.stops, 1);
}

TEST(Tickers, ConcurrentRemoveAndStopCallStopExactlyOnce) {
    for (int round = 0; round < 5; ++round) {
        Tickers::Options o;
        o.workers = 2;
        Tickers t(o);
        constexpr int N = 400;
        std::vector<std::atomic<int>> stops(N);
        std::vector<TaskId> ids;
        for (int i = 0; i < N; ++i)
            ids.push_back(t.add(1ms, {"c" + std::to_string(i), 0s, [&stops, i](RunContext&, bool is_stop) {
                                          if (is_stop) ++stops[i];
                                          return TaskResult::success();
                                      }}));
        t.start();
        std::this_thread::sleep_for(20ms);
        std::vector<std::thread> removers;
        for (int th = 0; th < 4; ++th)
            removers.emplace_back([&, th] {
                for (int i = th; i < N; i += 2) t.remove(ids[i]);  // overlapping halves: double removes too
            });
        std::thread stopper([&] { t.stop(); });
        for (auto& r : removers) r.join();
        stopper.join();
        for (int i = 0; i < N; ++i) ASSERT_EQ(stops[i].load(), 1) << "task " << i << " round " << round;
    }
}

TEST(Tickers, TaskRemovesItselfAndAddsAnother) {
    Fixture f;
    std::atomic<TaskId> self{0};
    std::atomic<int> stops{0};
    Probe child;
    std::atomic<TaskId> child_id{0};
    self = f.tickers.add(1s, {"self-remover", 0s, [&](RunContext& ctx, bool is_stop) {
                                  if (is_stop) {
                                      ++stops;
                                      return TaskResult::success();
                                  }
                                  child_id = f.tickers.add(1s, child.task("child"));
                                  EXPECT_TRUE(f.tickers.remove(ctx.id()));
                                  return TaskResult::success();
                              }});
    f.tickers.start();
    f.advance(1s, 1s);
    EXPECT_EQ(f.tickers.wait_stopped(self, 5s), StopState::stopped);
    EXPECT_EQ(stops, 1);
    f.advance(2s, 1s);
    EXPECT_EQ(child.runs, 2);
    EXPECT_EQ(f.tickers.size(), 1u);
}

TEST(Tickers, AbandonedRunIsReplacedAndSkipsStop) {
    Fixture f(/*workers=*/1, /*abandon_after=*/2s);
    std::promise<void> release;
    std::shared_future<void> released = release.get_future().share();
    std::atomic<bool> stuck_started{false};
    std::atomic<int> stuck_stops{0};
    // `released` by value: the detached stuck thread must not touch this stack frame's future.
    TaskId stuck = f.tickers.add(1s, {"stuck", 1s, [&stuck_stops, &stuck_started, released](RunContext&, bool is_stop) {
                                          if (is_stop) {
                                              ++stuck_stops;
                                          } else {
                                              stuck_started = true;
                                              released.wait();  // ignores cancellation
                                          }
                                          return TaskResult::success();
                                      }},
                                  f.now() + 1s);
    Probe other;
    f.tickers.add(1s, other.task("other"), f.now() + 1500ms);
    f.tickers.start();
    f.clock->advance(1s);
    ASSERT_TRUE(eventually([&] { return stuck_started.load(); }));
    // Deadline at +2 s, abandoned at +4 s; the only worker is stuck, so "other" waits until then.
    f.clock->advance(1s);
    ASSERT_TRUE(eventually([&] { return f.log.contains("stuck", "cancellation requested"); }));
    f.clock->advance(2s);
    ASSERT_TRUE(eventually([&] { return f.log.contains("stuck", "abandoned"); }));
    ASSERT_TRUE(eventually([&] { return other.runs >= 1; })) << "the stuck worker was not replaced";
    ASSERT_TRUE(f.tickers.wait_idle());
    const int before = other.runs;
    f.advance(3s, 1s);
    EXPECT_EQ(other.runs, before + 3) << "other tasks keep their schedule";
    EXPECT_TRUE(f.tickers.remove(stuck));
    EXPECT_EQ(f.tickers.wait_stopped(stuck, 1s), StopState::abandoned);
    EXPECT_TRUE(f.tickers.stop());
    EXPECT_EQ(stuck_stops, 0) << "an abandoned task must get no stop call";
    EXPECT_EQ(other.stops, 1);
    release.set_value();  // let the stuck thread end before the test's objects go away
    std::this_thread::sleep_for(50ms);
}

TEST(Tickers, ThreadCountDoesNotGrowWithTasks) {
    Tickers::Options o;
    o.workers = 2;
    Tickers t(o);
    for (int i = 0; i < 10000; ++i)
        t.add(1h, {"idle", 0s, [](RunContext&, bool) { return TaskResult::success(); }});
    std::thread([] {}).join();  // a sanitizer starts its own background thread with the first thread: not ours
    const int before = tickhost::test::thread_count();
    t.start();
    EXPECT_EQ(tickhost::test::thread_count(), before + 3);  // timer + 2 workers, whatever the task count
    EXPECT_TRUE(t.stop());
}
