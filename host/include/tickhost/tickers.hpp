// Tickers: a registry of periodic tasks run by one timer thread and a bounded worker pool.
//
//   std::atomic<bool> online{false};
//   tickhost::Tickers tickers;                       // options: worker count, default timeout, clock, logger
//   auto id = tickers.add(std::chrono::milliseconds(100), {"health", {}, [&](tickhost::RunContext&, bool is_stop) {
//       online = !is_stop;                           // every tick: online; the one stop call: offline
//       return tickhost::TaskResult::success();
//   }});
//   tickers.start();
//   std::this_thread::sleep_for(std::chrono::milliseconds(350));  // the application runs; so does the task
//   tickers.remove(id);                              // never blocks; stop call follows the last run
//   tickers.stop();                                  // stop calls for every task, then joins the threads
//
// (This example is compiled and run by the tests, as is the one in host.hpp.)
//
// Contract:
//  - Fixed rate on an absolute anchor: run k of a task is due at first_due + k * interval (no drift).
//  - A task never overlaps itself: a tick that comes due while the previous run is still going is skipped
//    and counted (TaskStats::skipped).
//  - Each run gets a deadline (start + timeout; timeout 0 = Options::default_timeout). At the deadline the
//    run's cancellation flag is set and the overrun logged. A run that is still going `abandon_after` past
//    its deadline is abandoned: its worker is replaced, the task never runs again and gets no stop call.
//  - No lock is held while task code runs. add/remove/stats are safe from any thread, including from
//    inside a running task (a task may remove itself).
//  - remove(id) never blocks. After it returns no new run is dispatched (a worker that was at that moment
//    starting one may still begin it, already cancelled); the run in flight, if any, is cancelled (its
//    RunContext::cancelled() turns true, so a cooperative run returns at once; that is neither a timeout
//    nor a failure); the stop call fn(ctx, true) runs exactly once, after that run returned, bounded by the
//    task's timeout and not cancelled itself. After wait_stopped() says stopped, none of the task's code
//    runs any more and its callable has been destroyed.
//  - A failing task backs off: after k failed runs in a row its next run comes interval * 2^k later (up to
//    Options::backoff_max); a success resets it. The log says so when it starts, caps and recovers.
//  - IDs: slot index + generation. Slots are reused like the original design's free list; an ID value
//    never comes back, and a stale ID is refused.
//  - start() and stop() are idempotent. stop() ends every task as remove() does (runs in flight cancelled,
//    stop calls made) and joins the threads; tasks added afterwards run when start() is called again.
//  - activity(id) says what a task is doing (between calls, in its run, in its stop call, abandoned) and
//    since when: for reports on what held a stop up.
//  - A Schedule may shift a task's due times by an offset (a jitter, see jitter_offset()) and may align them
//    on the wall clock (Schedule::align). Aligned schedules and wall-clock changes:
//      * Run k is due when the wall clock (Clock::wall_now(), UTC) reads a multiple of the interval since the
//        Unix epoch plus the offset; the timer sleeps on the monotonic clock, mapping those wall times to it
//        with the wall - monotonic difference it last measured.
//      * Each time the timer wakes while aligned tasks exist, it measures the difference again. A change of
//        more than 1 ms is a wall-clock step (or a suspend: the monotonic clock stops while the wall clock
//        runs on): every aligned task is re-anchored before anything is dispatched, so nothing runs early.
//        Forward (a step ahead, a resume): if wall times of the task were jumped over, the latest of them runs
//        at once (late, like a tick the timer was late for) and the others are counted as skipped; no burst.
//        Backward: the next run is at the first multiple after the new wall time, but never sooner than one
//        interval after the previous run (by the monotonic clock), so going back in time repeats no run early.
//      * With the real SteadyClock on Linux, a step or a resume also wakes the timer at once (a timerfd on
//        CLOCK_REALTIME with TFD_TIMER_CANCEL_ON_SET, read by one thread that exists while aligned tasks do
//        and is otherwise asleep). With another clock, the change is seen at the timer's next wake-up: a
//        backward step is never missed (that wake-up is early on the wall clock and is re-planned), a forward
//        one makes the next run late by at most the step.
//      * A monotonic jump of both clocks together (the process stalled, a paused virtual machine) is no step:
//        the task is simply late, as any other (one run at once, the missed ticks counted as skipped).
//  - stats(id) and snapshot() read what each task's worker keeps anyway, plus its last run (start, duration,
//    result, error text) and next due time: kept from the timestamps each call takes already (no clock
//    read is added to a run; an error text is copied only when a run fails). Reading never blocks a run
//    and never waits for task code; snapshot() holds the registry lock for at most 1,024 tasks at a time.
//  - run_now(id) queues one extra run at once (on a worker, with its deadline and cancellation, outside the
//    schedule, which it does not move; back-off does not hold it back). Runs still never overlap: if a run
//    or the stop call is queued or executing, nothing is queued and it says so.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace spdlog {
class logger;
}

namespace tickhost {

using Duration = std::chrono::nanoseconds;
using TimePoint = std::chrono::time_point<std::chrono::steady_clock, std::chrono::nanoseconds>;
// Wall-clock time (UTC, since the Unix epoch), for aligned schedules.
using WallTime = std::chrono::time_point<std::chrono::system_clock, std::chrono::nanoseconds>;

// The longest interval or timeout anything accepts (plugin.h's TH_MAX_DURATION_NS): 365 days. Keeps every
// due-time and deadline computation far from int64 overflow.
inline constexpr Duration max_duration = std::chrono::hours(24 * 365);

// Time source of a Tickers. The default is std::chrono::steady_clock; tests inject a ManualClock.
class Clock {
public:
    virtual ~Clock() = default;
    virtual TimePoint now() const = 0;
    // Blocks the caller (holding `lock`) until `cv` is notified or the clock reaches `until`. May return early.
    virtual void wait_until(std::unique_lock<std::mutex>& lock, std::condition_variable& cv, TimePoint until) = 0;
    // Called (without `cv`'s mutex held) when no wait on `cv` will follow: drop any reference to it.
    virtual void forget(std::condition_variable& /*cv*/) {}
    // The wall clock beside now(), for aligned schedules (Schedule::align). The default reads the system's
    // (std::chrono::system_clock), so a Clock written before aligned schedules existed keeps working. A clock
    // that overrides it and may step it should wake its waiters when it does (ManualClock::set_wall does).
    virtual WallTime wall_now() const {
        return std::chrono::time_point_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now());
    }
};

class SteadyClock final : public Clock {
public:
    TimePoint now() const override { return std::chrono::steady_clock::now(); }
    void wait_until(std::unique_lock<std::mutex>& lock, std::condition_variable& cv, TimePoint until) override {
        cv.wait_until(lock, until);
    }
};

// A clock that only moves when told to. Waiters wake on every advance(), set() and set_wall().
// Its wall clock moves with it (advance() and set() move both by the same amount) unless set_wall() steps it:
// set_wall() is a wall-clock step, or a suspend as the monotonic clock sees it (the wall clock jumps, the
// monotonic one does not); advance() of both is time passing, or a stall. Wall time starts at `wall_start`.
class ManualClock final : public Clock {
public:
    // 2026-01-01T00:00:00Z, a whole number of days since the epoch.
    static constexpr WallTime kDefaultWallStart = WallTime(std::chrono::seconds(1767225600));
    explicit ManualClock(TimePoint start = TimePoint(std::chrono::hours(1)), WallTime wall_start = kDefaultWallStart);
    TimePoint now() const override;
    WallTime wall_now() const override;
    void wait_until(std::unique_lock<std::mutex>& lock, std::condition_variable& cv, TimePoint until) override;
    void advance(Duration d);
    void set(TimePoint t);
    // Steps the wall clock to `t`; the monotonic clock does not move.
    void set_wall(WallTime t);
    void forget(std::condition_variable& cv) override;

private:
    struct Waiter {
        std::mutex* mu;
        std::condition_variable* cv;
    };
    void wake_all();
    std::mutex notify_mu_;  // held by wake_all() while it uses waiters' pointers; taken before mu_
    mutable std::mutex mu_;
    TimePoint now_;
    Duration wall_minus_now_;  // wall_now() - now()
    std::vector<Waiter> waiters_;
};

// A task ID: slot index (low 32 bits) + generation (high 32 bits). 0 is never a valid ID.
using TaskId = uint64_t;

// Tells a bridge to another API that the call it serves is cancelled (see RunContext::set_cancel_relay).
// `notify(arg)` runs on the thread that cancels (the timer at the deadline, remove(), stop()): it must
// return at once, never block, and may be called more than once for one cancellation.
struct CancelRelay {
    void (*notify)(void* arg) = nullptr;
    void* arg = nullptr;
};

namespace detail {
// A worker's relay, for the call it is executing. Internal to the Tickers and RunContext.
struct RelaySlot {
    std::atomic<const CancelRelay*> relay{nullptr};
    std::atomic<uint64_t> seq{0};    // the call the relay is set for
    std::atomic<uint32_t> busy{0};   // cancellers inside notify()
    // Called by the canceller after it cancelled call `seq`.
    void cancelled(uint64_t call) {
        busy.fetch_add(1, std::memory_order_seq_cst);
        const CancelRelay* r = relay.load(std::memory_order_seq_cst);
        if (r && seq.load(std::memory_order_relaxed) == call) r->notify(r->arg);
        busy.fetch_sub(1, std::memory_order_release);
    }
};
}  // namespace detail

// What a run sees: its cancellation flag and deadline. Valid only during the call.
// The flag is a word shared by every call a worker makes: this call is cancelled once the word holds this
// call's own sequence number, so a late cancellation of a previous call can never hit the next one.
class RunContext {
public:
    RunContext(TaskId id, const std::string& name, TimePoint due, TimePoint deadline, const Clock& clock,
               const std::atomic<uint64_t>& cancel_word, uint64_t cancel_value, detail::RelaySlot* relay = nullptr)
        : id_(id), name_(name), due_(due), deadline_(deadline), clock_(clock), cancel_word_(cancel_word),
          cancel_value_(cancel_value), relay_(relay) {}
    TaskId id() const { return id_; }
    const std::string& name() const { return name_; }
    bool cancelled() const { return cancel_word_.load(std::memory_order_relaxed) == cancel_value_; }
    TimePoint deadline() const { return deadline_; }
    // The tick this run belongs to: first due + k * interval (clock() - due() is its lateness). For a stop
    // call: when it started.
    TimePoint due() const { return due_; }
    Duration remaining() const { return deadline_ - clock_.now(); }
    const Clock& clock() const { return clock_; }
    // For bridging to another API (the plugin host services): cancelled() is *cancel_word() == cancel_value().
    // The word stays valid for the registry's lifetime.
    const std::atomic<uint64_t>& cancel_word() const { return cancel_word_; }
    uint64_t cancel_value() const { return cancel_value_; }
    // For a bridge whose call's code cannot read cancel_word() (it runs in another process): while set,
    // a cancellation of this call also calls relay->notify (at once if the call is already cancelled).
    // Clear it (nullptr) before the call returns: that waits for a notify in progress, so the relay may
    // be destroyed after. Costs nothing for calls that never set one. Not for a RunContext made by hand.
    void set_cancel_relay(const CancelRelay* r) {
        if (!relay_) return;
        if (!r) {
            relay_->relay.store(nullptr, std::memory_order_seq_cst);
            while (relay_->busy.load(std::memory_order_acquire) != 0) {
            }
            return;
        }
        relay_->seq.store(cancel_value_, std::memory_order_relaxed);
        relay_->relay.store(r, std::memory_order_seq_cst);
        std::atomic_thread_fence(std::memory_order_seq_cst);
        if (cancelled()) r->notify(r->arg);
    }

private:
    TaskId id_;
    const std::string& name_;
    TimePoint due_;
    TimePoint deadline_;
    const Clock& clock_;
    const std::atomic<uint64_t>& cancel_word_;
    uint64_t cancel_value_;
    detail::RelaySlot* relay_;
};

// What a run returns: ok, or an error message that is logged with the task's name and counted.
struct TaskResult {
    bool ok = true;
    std::string error;
    static TaskResult success() { return {}; }
    static TaskResult failure(std::string message) { return {false, std::move(message)}; }
};

using TaskFn = std::function<TaskResult(RunContext& ctx, bool is_stop)>;

struct TickTask {
    std::string name;
    Duration timeout{0};  // per run and for the stop call; 0 = Tickers default (10 s unless configured)
    TaskFn fn;
};

// When a task's runs come due (Tickers::add).
//   Schedule{1min}                         every minute, the first one a minute after add()
//   Schedule{1min, 7s}                     the same, 7 s later (a jitter's offset: see jitter_offset())
//   Schedule{1min, 7s, true}               at hh:mm:07 of every minute on the wall clock (UTC)
struct Schedule {
    Duration interval{0};  // > 0, at most max_duration
    // 0..interval: every due time comes this much later. Tasks with the same interval and anchor but other
    // offsets come due apart, and each still runs at a fixed rate (no drift).
    Duration offset{0};
    // Due times on the wall clock: multiples of interval since the Unix epoch (UTC), plus offset. Every 1 min
    // at :00, every 1 h at the top of the hour, every 24 h at 00:00 UTC. The first run is at the first such
    // time after add(). Steps of the wall clock and suspends: see the contract at the top of this file.
    bool align = false;
    // Not aligned: run k is due at anchor + offset + (k + 1) * interval; unset: add()'s time (on the
    // registry's clock). Tasks added with one anchor, interval and offset run as one batch.
    std::optional<TimePoint> anchor;
};

// 64-bit FNV-1a of `bytes`: offset basis 0xcbf29ce484222325, prime 0x100000001b3 (each byte: xor, then
// multiply). fnv1a64("") == 0xcbf29ce484222325, fnv1a64("a") == 0xaf63dc4c8601ec8c.
uint64_t fnv1a64(std::string_view bytes);

// The step of jitter offsets: tasks whose offsets fall on one step still run as one batch, so the timer
// wakes at most 100 times a second for the tasks of one interval and anchor, however many there are (each
// wake-up costs a few context switches; see README.md, "Performance").
inline constexpr Duration jitter_step = std::chrono::milliseconds(10);

// A stable pseudo-random offset in [0, jitter) for `key`, a whole number of jitter steps (10 ms):
//   offset = (fnv1a64(key) mod ceil(jitter / 10 ms)) * 10 ms        (0 when jitter <= 0)
// The host's key is "host\0plugin\0task" (see README.md, "Schedules"); an embedding application may use any.
Duration jitter_offset(std::string_view key, Duration jitter);

// How a task's last run ended (TaskStats::last_result).
enum class RunResult : uint8_t {
    none,       // no run has returned yet
    ok,         // returned success (a run past its deadline that returned success is timed_out)
    failed,     // returned an error or threw
    timed_out,  // its deadline passed (its cancellation flag was set), whatever it returned
    cancelled,  // cancelled by remove() or stop() while it ran
};

struct TaskStats {
    uint64_t runs = 0;      // runs that returned (stop call not included; run_now() runs included)
    uint64_t failures = 0;  // runs that returned an error or threw
    uint64_t skipped = 0;   // ticks skipped because the previous run was still going (or the timer was late)
    uint64_t timeouts = 0;  // runs whose deadline passed (not runs cancelled by remove() or stop())
    uint64_t consecutive_failures = 0;  // failed runs in a row (0 after a success); drives the back-off

    // The last run that returned. Written by the worker that made it, from the timestamps it takes anyway.
    RunResult last_result = RunResult::none;
    TimePoint last_start{};  // when it started, on the registry's clock (the epoch while last_result is none)
    // How long it took: from its start to its worker's next timestamp (the start of the worker's next call,
    // or the moment the worker went idle), so it includes the worker's bookkeeping between two calls (well
    // under a microsecond). With a timeout of 1 s or more, both ends come from the coarse monotonic clock (a
    // few milliseconds of resolution). Nullopt until that next timestamp is taken, and for none.
    std::optional<Duration> last_duration;
    // The resolution of the clock last_duration was measured with: the coarse clock's (e.g. 4 ms), or zero
    // when it came from the registry's clock itself. A duration below it means "less than this".
    Duration last_duration_resolution{0};
    // failed or timed_out: the error the run returned (a run that threw: "exception: <what()>"), at most
    // Tickers::max_error_text bytes (longer ones are cut at a UTF-8 boundary and end with "..."); else empty.
    std::string last_error;
    // When its next run is due on the registry's clock, back-off included: the tick after its last run's (or
    // its first tick), moved on past ticks skipped since. A snapshot: the timer may be about to dispatch it.
    TimePoint next_due{};
    // While it fails: how far apart its runs are now (interval * 2^k, at most Options::backoff_max; never less
    // than its interval). Zero when it is not failing or back-off is off.
    Duration backoff{0};
};

// What a task is doing at the moment (Tickers::activity).
struct TaskActivity {
    enum class State {
        idle,          // between calls, or its next call (run or stop call) is queued and has not started
        in_run,        // executing a run
        in_stop_call,  // executing its stop call
        abandoned,     // a call ignored its cancellation and was abandoned; its code may still be executing
    };
    State state = State::idle;
    // When the current call started (for abandoned: the stuck call), on the registry's clock. Unset (the
    // epoch) for idle, and for an abandoned task whose stuck call already returned.
    TimePoint since{};
};

// One task, as snapshot() sees it.
struct TaskSnapshot {
    TaskId id = 0;
    std::string name;
    Duration interval{0};
    Duration timeout{0};  // in effect: the task's own, or Options::default_timeout
    TaskStats stats;
    TaskActivity activity;
};

// What run_now() did.
enum class RunNow {
    started,          // one run was queued at once: it starts as soon as a worker is free
    already_running,  // a run or the stop call is queued or executing: nothing was queued (no overlap)
    abandoned,        // a call of the task ignored its cancellation: it never runs again
    not_running,      // the registry is not started: nothing was queued
    unknown,          // not a task of this registry (a stale ID, or removed)
};

// How wait_stopped() ended.
enum class StopState {
    stopped,    // the stop call returned (or the task was never started and needed none)
    abandoned,  // a run ignored its cancellation; no stop call was made; its code may still be executing
    timed_out,  // the bound passed first
    unknown,    // not an ID of this registry
};

class Tickers {
public:
    struct Options {
        size_t workers = 0;                              // 0 = std::thread::hardware_concurrency()
        Duration default_timeout = std::chrono::seconds(10);
        Duration abandon_after = std::chrono::seconds(5);  // past the deadline, before a run is abandoned
        // A task that fails k times in a row next runs interval * 2^k later, at most this much later
        // (never less often than its own interval); a success resets it. Zero: no back-off. At most
        // max_duration (longer is taken as max_duration).
        Duration backoff_max = std::chrono::minutes(5);
        std::shared_ptr<Clock> clock;                    // null = SteadyClock
        std::shared_ptr<spdlog::logger> logger;          // null = the "scheduler" logger
        // A liveness signal from the timer thread itself: called on it when it starts and then about every
        // heartbeat_interval (on `clock`), as long as the timer loop turns. A wedged timer stops calling it,
        // so a supervisor fed from here (the tickhost executable pings systemd's watchdog) sees the wedge.
        // It must return at once and must not call into this registry; what it throws is swallowed. It is
        // the timer's only wake-up when no task is due. Unset or interval <= 0: none.
        std::function<void()> heartbeat;
        Duration heartbeat_interval{0};
    };

    Tickers();
    explicit Tickers(Options options);
    // Batch construction: every (interval, task) of the list is added (two tasks may share an interval).
    Tickers(Options options, std::vector<std::pair<Duration, TickTask>> tasks);
    ~Tickers();  // stop()
    Tickers(const Tickers&) = delete;
    Tickers& operator=(const Tickers&) = delete;

    // Registers a task; its first run is due one interval from now (or at `first_due`). Throws
    // std::invalid_argument if interval <= 0, timeout < 0 or fn is empty. Safe from any thread.
    TaskId add(Duration interval, TickTask task);
    TaskId add(Duration interval, TickTask task, TimePoint first_due);
    // Registers a task on a Schedule (offset, wall-clock alignment). Also throws std::invalid_argument if the
    // offset is not within 0..interval.
    TaskId add(const Schedule& schedule, TickTask task);
    // Adds every (interval, task) in order; returns their IDs in the same order.
    std::vector<TaskId> add_all(std::vector<std::pair<Duration, TickTask>> tasks);

    // Stops a task: no new run starts after this returns; the in-flight run is cancelled and its stop call
    // follows when it returns. Never blocks and never runs task code on the caller's thread. False for a
    // stale or unknown ID.
    bool remove(TaskId id);
    // Waits up to `bound` for the stop call of a removed task to return.
    StopState wait_stopped(TaskId id, Duration bound);

    void start();
    // Removes every task (cancelling the runs in flight), waits up to `bound` for their stop calls, joins
    // the threads. Idempotent. Returns false if some call did not return in time (its task is abandoned;
    // the log names each such task, whether it was in its run or its stop call, and since when).
    bool stop(Duration bound = std::chrono::seconds(30));
    bool running() const;

    // One extra run of the task at once (see the contract above). Never blocks and never runs task code on
    // the caller's thread. Safe from any thread, including from inside a running task. When it started one,
    // *runs_before (if given) is TaskStats::runs before that run: the run is over once runs exceeds it.
    RunNow run_now(TaskId id, uint64_t* runs_before = nullptr);

    std::optional<TaskStats> stats(TaskId id) const;
    // Every task registered and not removed, in slot order; or the tasks `ids` names, in that order (IDs
    // that are stale, unknown or removed are left out). For status displays and metrics: a copy, made
    // without waiting for task code.
    std::vector<TaskSnapshot> snapshot() const;
    std::vector<TaskSnapshot> snapshot(const std::vector<TaskId>& ids) const;
    static constexpr size_t max_error_text = 1024;  // TaskStats::last_error's bound, in bytes
    // What the task is doing now. Nullopt for a stale or unknown ID, and once a removed task has stopped.
    // Cheap (a look at the few workers), never blocks on task code; a snapshot that may be stale at once.
    std::optional<TaskActivity> activity(TaskId id) const;
    size_t size() const;  // tasks registered and not removed
    const Clock& clock() const;
    size_t worker_count() const;

    // For tests on a ManualClock: waits until the timer has handled the clock's current time and no run
    // or stop call is queued or executing. False if that did not happen within `bound` (real time).
    bool wait_idle(std::chrono::milliseconds bound = std::chrono::milliseconds(5000));

    struct Impl;

private:
    std::shared_ptr<Impl> impl_;
};

}  // namespace tickhost
