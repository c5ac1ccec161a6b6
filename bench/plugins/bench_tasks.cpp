// Bench plugin: declares `tasks` tasks (default 1) at `interval` (default 10ms) from init, so their count
// comes from config. Built twice (BENCH_VERSION "a" and "b") so that a replacement has different bytes.
// It says "first run <version>" on the first run of task 0 and "stop <version>" on task 0's stop call
// through the host's logger, which is how tickhost-bench's reload mode sees them.
#include <tickhost/plugin.hpp>

#include <atomic>
#include <string>

class BenchTasks : public tickhost::Plugin {
public:
    void init(tickhost::Context& ctx) override {
        const int64_t n = ctx.config_int("tasks").value_or(1);
        const auto interval = ctx.config_duration("interval").value_or(std::chrono::milliseconds(10));
        for (int64_t i = 0; i < n; ++i)
            ctx.add_task("t" + std::to_string(i), interval, [this, i](tickhost::Context& c, bool is_stop) {
                if (i == 0) {
                    if (is_stop)
                        c.info("stop " BENCH_VERSION);
                    else if (!said_first_.exchange(true))
                        c.info("first run " BENCH_VERSION);
                }
                return tickhost::Status::ok;
            });
    }

private:
    std::atomic<bool> said_first_{false};
};

TICKHOST_PLUGIN_DYNAMIC(BenchTasks, "bench_tasks", BENCH_VERSION, "tickhost-bench's reload and idle workload")
