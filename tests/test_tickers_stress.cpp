// Stress: add and remove from 8 threads against a running registry (run under TSan by CI). Every task
// gets exactly one stop call, no task ever overlaps itself, and nothing runs after its stop call.
#include <tickhost/tickers.hpp>

#include <gtest/gtest.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using tickhost::RunContext;
using tickhost::TaskId;
using tickhost::TaskResult;
using tickhost::Tickers;

namespace {

struct Probe {
    std::atomic<int> in_call{0};
    std::atomic<int> overlaps{0};
    std::atomic<int> stops{0};
    std::atomic<int> after_stop{0};
    std::atomic<long> runs{0};
};

}  // namespace

TEST(TickersStress, EightThreadsAddAndRemoveWhileItRuns) {
    Tickers::Options o;
    o.workers = 2;
    o.logger = std::make_shared<spdlog::logger>("stress", std::make_shared<spdlog::sinks::null_sink_mt>());
    Tickers t(o);
    t.start();
    std::mutex mu;
    std::vector<std::shared_ptr<Probe>> all;
    const auto until = std::chrono::steady_clock::now() + 3s;
    std::vector<std::thread> threads;
    std::atomic<long> added{0}, removed{0}, self_removed{0};
    for (int th = 0; th < 8; ++th) {
        threads.emplace_back([&, th] {
            std::mt19937 rng{static_cast<unsigned>(th)};
            std::vector<TaskId> mine;
            for (int n = 0; n < 20000 && std::chrono::steady_clock::now() < until; ++n) {
                auto p = std::make_shared<Probe>();
                const bool self_remove = rng() % 8 == 0;
                Tickers* tp = &t;
                TaskId id = t.add(std::chrono::microseconds(200 + rng() % 3000),
                                  {"s", 0s, [p, self_remove, tp, &self_removed](RunContext& ctx, bool is_stop) {
                                       if (p->in_call.fetch_add(1) != 0) p->overlaps++;
                                       if (p->stops.load() > 0) p->after_stop++;
                                       if (is_stop) {
                                           p->stops++;
                                       } else if (self_remove && ++p->runs == 3 && tp->remove(ctx.id())) {
                                           self_removed++;
                                       }
                                       p->in_call.fetch_sub(1);
                                       return TaskResult::success();
                                   }});
                ++added;
                {
                    std::lock_guard<std::mutex> lk(mu);
                    all.push_back(p);
                }
                mine.push_back(id);
                std::this_thread::sleep_for(100us);  // spread over the whole window, so tasks get to run
                if (mine.size() > 200 || rng() % 16 == 0) {
                    size_t k = rng() % mine.size();
                    if (t.remove(mine[k])) ++removed;
                    mine.erase(mine.begin() + long(k));
                }
            }
        });
    }
    for (auto& th : threads) th.join();
    EXPECT_TRUE(t.stop(30s));
    long runs = 0;
    for (auto& p : all) {
        ASSERT_EQ(p->stops.load(), 1) << "a task without exactly one stop call";
        EXPECT_EQ(p->overlaps.load(), 0) << "a task overlapped itself";
        EXPECT_EQ(p->after_stop.load(), 0) << "a call after the stop call";
        runs += p->runs;
    }
    EXPECT_GT(added.load(), 1000);
    EXPECT_GT(removed.load(), 100);
    EXPECT_GT(runs, 0);
    std::printf("stress: %ld tasks added, %ld removed by others, %ld removed themselves\n", added.load(),
                removed.load(), self_removed.load());
}
