// Tickers: one timer thread and a bounded worker pool.
//
// Schedule. Tasks that share an interval and a due time form a cohort: one entry in the timer's 4-ary
// min-heap for all of them, and one batch handed to the workers when it comes due. Run k of every member
// is due at the cohort's anchor + k * interval, so a cohort stays together forever; the timer's cost per
// tick is one heap operation and one copy of the member list, whatever the number of tasks in it.
// Workers claim slices of a batch with one atomic add each and run the members in order.
//
// Slot life. Each task lives in a slot whose state is one 64-bit atomic word: generation (high 32 bits) +
// flags (low 32 bits). Packing both makes "run it unless it is running, removed or reused" one CAS, and
// makes "exactly one stop call" a question of who sets or clears which bit first:
//   - a worker sets RUNNING before a run (CAS; if it is already set the tick is skipped and counted);
//   - the worker clears RUNNING after the run; if REMOVED was set meanwhile, it makes the stop call;
//   - remove() sets REMOVED|RUNNING; if RUNNING was clear, it queues the stop call itself.
// A slot is freed (generation + 1, free list) after its stop call, in bulk, and the timer is told in the
// same critical section so that it drops the slot from its cohort before the slot can be reused.
//
// Deadlines are tracked per worker, not per run: before each call a worker publishes in its record the
// sequence (run word), deadline and task ID + kind (call word); the timer scans the few workers at every
// wake-up, cancels a call past its deadline by writing the call's sequence into the worker's cancel word,
// and abandons a call that ignores it (a CAS on the run word decides between the returning worker and the
// timer). A cancel word only grows (cancel_call), and a call is cancelled only while it holds exactly that
// sequence, so a late cancellation of one call can never hit the next.
//
// Aligned cohorts (Schedule::align) keep their due time on the monotonic clock like the others, mapped from
// their wall-clock time with one wall - monotonic difference (wall_offset_) measured when the first of them
// came. Their key in by_key_ carries kAlignedKey, so that they never merge with a cohort that is not aligned
// (the two part at the next wall-clock step). At each wake-up while some exist the timer measures the
// difference again; if it moved (a step, a resume), reanchor() moves every aligned cohort to its new due time
// (see tickers.hpp for the rules) and rebuilds the heap and the keys: a rare event, O(cohorts).
//
// Cancellation by removal. remove() and stop() cancel the run in flight the same way: after setting
// REMOVED they look for a worker whose published call is a run of that task and write its sequence. A
// worker publishes a run *before* it claims the slot (with a provisional deadline, kUnstarted, that the
// timer never acts on), so the claim CAS orders the publication before any later REMOVED: either the
// claim fails, or whoever set REMOVED sees the call. No fence and no clock read are added per run. The
// worker tells the two causes apart by cancel_sent (only the timer writes it): a cancelled run that the
// timer did not cancel was removed, which is neither a timeout nor a failure.
#include <tickhost/logging.hpp>
#include <tickhost/tickers.hpp>

#include <algorithm>
#include <cassert>
#include <deque>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <unordered_map>

#include <time.h>

#if defined(__linux__)
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#endif

#include <spdlog/spdlog.h>

#include "time_format.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#include <sys/prctl.h>
#endif

namespace tickhost {

// ---- ManualClock ----------------------------------------------------------------------------------------

ManualClock::ManualClock(TimePoint start, WallTime wall_start)
    : now_(start), wall_minus_now_(wall_start.time_since_epoch() - start.time_since_epoch()) {}

TimePoint ManualClock::now() const {
    std::lock_guard<std::mutex> lk(mu_);
    return now_;
}

WallTime ManualClock::wall_now() const {
    std::lock_guard<std::mutex> lk(mu_);
    return WallTime(now_.time_since_epoch() + wall_minus_now_);
}

void ManualClock::set_wall(WallTime t) {
    {
        std::lock_guard<std::mutex> lk(mu_);
        wall_minus_now_ = t.time_since_epoch() - now_.time_since_epoch();
    }
    wake_all();
}

void ManualClock::wait_until(std::unique_lock<std::mutex>& lock, std::condition_variable& cv, TimePoint until) {
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (now_ >= until) return;
        bool known = std::any_of(waiters_.begin(), waiters_.end(), [&](const Waiter& w) { return w.cv == &cv; });
        if (!known) waiters_.push_back({lock.mutex(), &cv});
    }
    cv.wait(lock);
}

void ManualClock::advance(Duration d) {
    {
        std::lock_guard<std::mutex> lk(mu_);
        now_ += d;
    }
    wake_all();
}

void ManualClock::set(TimePoint t) {
    {
        std::lock_guard<std::mutex> lk(mu_);
        now_ = t;
    }
    wake_all();
}

void ManualClock::forget(std::condition_variable& cv) {
    std::lock_guard<std::mutex> nl(notify_mu_);  // no wake_all() is using the entry past this point
    std::lock_guard<std::mutex> lk(mu_);
    waiters_.erase(std::remove_if(waiters_.begin(), waiters_.end(), [&](const Waiter& w) { return w.cv == &cv; }),
                   waiters_.end());
}

void ManualClock::wake_all() {
    std::lock_guard<std::mutex> nl(notify_mu_);
    std::vector<Waiter> ws;
    {
        std::lock_guard<std::mutex> lk(mu_);
        ws = waiters_;
    }
    // Taking the waiter's mutex before notifying closes the window between its time check and its wait.
    for (auto& w : ws) {
        std::lock_guard<std::mutex> lk(*w.mu);
        w.cv->notify_all();
    }
}

// ---- Schedules ------------------------------------------------------------------------------------------

uint64_t fnv1a64(std::string_view bytes) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (unsigned char c : bytes) {
        h ^= c;
        h *= 0x100000001b3ull;
    }
    return h;
}

Duration jitter_offset(std::string_view key, Duration jitter) {
    if (jitter <= Duration::zero()) return Duration::zero();
    const int64_t step = jitter_step.count();
    const uint64_t steps = uint64_t((jitter.count() + step - 1) / step);  // ceil(jitter / step) >= 1
    return Duration(int64_t(fnv1a64(key) % steps) * step);              // (steps - 1) * step < jitter
}

// ---- Implementation -------------------------------------------------------------------------------------

namespace {

constexpr uint32_t kActive = 1u;     // holds a task (set by add, cleared when freed)
constexpr uint32_t kRunning = 2u;    // a run or the stop call is claimed, queued or executing
constexpr uint32_t kRemoved = 4u;    // remove() was called: no new run; stop call pending or done
constexpr uint32_t kAbandoned = 8u;  // a call ignored its cancellation; never runs again, no stop call

constexpr uint64_t pack(uint32_t gen, uint32_t flags) { return (uint64_t(gen) << 32) | flags; }
constexpr uint32_t gen_of(uint64_t w) { return uint32_t(w >> 32); }
constexpr uint32_t flags_of(uint64_t w) { return uint32_t(w); }
constexpr uint32_t slot_of(TaskId id) { return uint32_t(id); }
constexpr uint32_t gen_of_id(TaskId id) { return uint32_t(id >> 32); }
constexpr TaskId make_id(uint32_t slot, uint32_t gen) { return (TaskId(gen) << 32) | slot; }

constexpr uint32_t kSegBits = 12;  // 4096 slots per segment
constexpr uint32_t kSegSize = 1u << kSegBits;
constexpr uint32_t kMaxSegs = 1u << 16;  // 268M slots
constexpr uint32_t kNoCohort = UINT32_MAX;
// An Op that adds an aligned task (in Op::slot: slot indexes stay below 2^28); its due is a wall-clock time.
constexpr uint32_t kAlignedOp = 1u << 31;
// In by_key_'s interval: the cohort is aligned (intervals stay below 2^55).
constexpr int64_t kAlignedKey = int64_t(1) << 62;
// A change of the wall - monotonic difference beyond this is a wall-clock step (or a suspend).
constexpr int64_t kStepTolerance = 1000000;  // 1 ms

// x mod m in [0, m) for m > 0, also for negative x.
int64_t floor_mod(int64_t x, int64_t m) {
    const int64_t r = x % m;
    return r < 0 ? r + m : r;
}

// Worker run word: sequence << 2 | state.
constexpr uint64_t kIdle = 0, kBusy = 1, kGone = 2;  // kGone: abandoned by the timer
// Worker call word: the task ID of the call, with this bit set for a stop call (slot indexes stay far
// below it: kSegSize * kMaxSegs = 2^28).
constexpr uint64_t kStopCall = uint64_t(1) << 31;
constexpr uint32_t call_slot(uint64_t call) { return uint32_t(call & ~kStopCall); }
// A published run's deadline until its slot is claimed: the timer neither cancels nor abandons it.
constexpr int64_t kUnstarted = INT64_MAX;

// Saturating arithmetic for time values: schedules near the clamp or options near their limits must
// never overflow (undefined behaviour), only stick at the end of time.
int64_t add_sat(int64_t a, int64_t b) {
    int64_t r;
    if (__builtin_add_overflow(a, b, &r)) return b > 0 ? INT64_MAX : INT64_MIN;
    return r;
}
int64_t mul_sat(int64_t a, int64_t b) {  // a, b >= 0
    int64_t r;
    if (__builtin_mul_overflow(a, b, &r)) return INT64_MAX;
    return r;
}

int64_t to_ns(TimePoint t) { return t.time_since_epoch().count(); }
TimePoint from_ns(int64_t ns) { return TimePoint(Duration(ns)); }

struct Member {
    uint32_t slot;
    uint32_t gen;
};

// 4-ary min-heap of {due, id}: shallower than a binary heap, and its four children share a cache line.
class DueHeap {
public:
    struct Entry {
        int64_t due;
        uint32_t id;
    };
    bool empty() const { return v_.empty(); }
    const Entry& top() const { return v_.front(); }
    void push(Entry e) {
        v_.push_back(e);
        sift_up(v_.size() - 1);
    }
    void pop() {
        v_.front() = v_.back();
        v_.pop_back();
        if (!v_.empty()) sift_down(0);
    }
    void replace_top(Entry e) {
        v_.front() = e;
        sift_down(0);
    }
    void clear() { v_.clear(); }

private:
    void sift_up(size_t i) {
        Entry e = v_[i];
        while (i > 0) {
            size_t p = (i - 1) / 4;
            if (v_[p].due <= e.due) break;
            v_[i] = v_[p];
            i = p;
        }
        v_[i] = e;
    }
    void sift_down(size_t i) {
        Entry e = v_[i];
        const size_t n = v_.size();
        for (;;) {
            size_t c = 4 * i + 1;
            if (c >= n) break;
            size_t best = c;
            const size_t end = std::min(c + 4, n);
            for (size_t k = c + 1; k < end; ++k)
                if (v_[k].due < v_[best].due) best = k;
            if (v_[best].due >= e.due) break;
            v_[i] = v_[best];
            i = best;
        }
        v_[i] = e;
    }
    std::vector<Entry> v_;
};

}  // namespace

// One task. Laid out for the hot path: a run touches only the first cache line (state, callable,
// timeout, run count, interval) and the second (back-off, the other counters, the last run's figures, the
// timer's bookkeeping). Its name lives beside the slots of its segment (name_of): it is read only for log
// lines and by task code.
struct alignas(64) Slot {
    std::atomic<uint64_t> word{pack(1, 0)};
    // Written by add() before the ID is published; read-only while the slot holds this task.
    TaskFn fn;
    Duration timeout{0};  // effective: the task's own, or the default
    // runs/failures/timeouts are written only by the worker that holds RUNNING (load + store, no RMW).
    std::atomic<uint64_t> runs{0};
    std::atomic<int64_t> interval_ns{0};  // atomic: the timer may read it for a slot being recycled
    // --- second line
    std::atomic<uint64_t> skipped{0};
    std::atomic<uint32_t> failures{0}, timeouts{0};  // saturating
    // Back-off of a failing task: failures in a row, ticks still to sit out (written by the RUNNING owner;
    // atomic for status readers).
    std::atomic<uint32_t> fail_streak{0};
    std::atomic<uint32_t> sit_out{0};
    // Timer-private: where this slot sits in its cohort.
    uint32_t cohort = kNoCohort;
    uint32_t pos = 0;
    // The last run, for status (TaskStats::last_*). Written by the RUNNING owner under a sequence lock
    // (last_seq odd while it writes), except last_end, which the worker fills in at its next timestamp if
    // last_seq still names that run (Tickers::Impl::close_last). The sequence is never reset: a slot's new
    // task continues it, so a late close can never land on the new task's run.
    std::atomic<uint32_t> last_seq{0};
    std::atomic<uint8_t> last_result{0};  // RunResult, | kHasError when errors_ holds its text
    std::atomic<int64_t> last_start{0};
    std::atomic<int64_t> last_end{0};  // 0: not closed yet
    std::atomic<int64_t> next_due{0};  // the tick of its next run (see TaskStats::next_due)
};
static_assert(sizeof(Slot) == 128, "two cache lines per task");
constexpr uint8_t kHasError = 0x80;
constexpr uint8_t kCoarse = 0x40;  // its start (and end) came from the coarse clock
constexpr uint8_t kResultBits = 0x3f;

// A tick's worth of runs (or a set of stop calls), shared by the workers that claim slices of it.
struct Batch {
    std::vector<Member> items;
    int64_t due = 0;      // the tick the runs belong to (after any missed ones)
    uint32_t missed = 0;  // ticks skipped because the timer was more than an interval late (due is the last)
    bool stop = false;    // stop calls rather than runs
    bool manual = false;  // a run_now() run: its slot is claimed (RUNNING) already; it does not move the schedule
    std::atomic<size_t> next{0};  // the next item to claim
};

// One worker thread and what it is executing, for the timer's deadline scan.
struct Worker {
    std::thread thread;
    // Published before each call (plain fields written before the release store of run_word).
    std::atomic<uint64_t> run_word{kIdle};  // seq << 2 | state
    std::atomic<int64_t> deadline{INT64_MAX};  // kUnstarted while a run is published but not yet claimed
    std::atomic<uint64_t> call{0};             // task ID | kStopCall for a stop call
    std::atomic<uint64_t> cancel{0};           // == seq of the call to cancel (RunContext reads it); grows only
    std::atomic<uint64_t> cancel_sent{0};      // seq the timer cancelled at its deadline (written by the timer)
    detail::RelaySlot relay;                   // a bridge's cancel relay for the call in progress (rarely set)
    uint64_t seq = 0;                       // worker-private
    // The slice being executed, so the timer can hand the rest to others if this call is abandoned.
    std::atomic<Batch*> batch{nullptr};
    std::atomic<size_t> begin{0}, cursor{0}, end{0};
    std::atomic<bool> exited{false};
    std::atomic<bool> retired{false};  // detached by stop(): must not rejoin the pool after a restart
    // The last run this worker made, whose end (last_end) its next timestamp supplies (worker-private).
    Slot* open_slot = nullptr;
    uint32_t open_seq = 0;     // the slot's last_seq once that run was recorded
    bool open_coarse = false;  // its start came from the coarse clock: so must its end
};

// A change for the timer's cohorts, handed over in order: an added task, or a freed slot to drop.
struct Op {
    int64_t due;    // add: first due time (an aligned add: its wall-clock time); a drop: -1
    uint32_t slot;  // | kAlignedOp for an aligned add
    uint32_t gen;
    bool add() const { return due >= 0; }
    uint32_t index() const { return slot & ~kAlignedOp; }
    bool aligned() const { return (slot & kAlignedOp) != 0; }
};
static_assert(sizeof(Op) == 16, "");

struct Tickers::Impl : std::enable_shared_from_this<Tickers::Impl> {
    explicit Impl(Options o);
    ~Impl();
    Slot* new_segment();

    Slot& slot(uint32_t i) const { return segs_[i >> kSegBits][i & (kSegSize - 1)]; }
    // `first_due`: on the registry's clock, or for an aligned task (`aligned`) a wall-clock time.
    TaskId add(Duration interval, TickTask task, int64_t first_due, bool aligned);
    bool remove(TaskId id);
    StopState wait_stopped(TaskId id, Duration bound);
    void free_slots(const std::vector<uint32_t>& slots);

    void start();
    bool stop(Duration bound);
    void start_workers_locked();  // lifecycle_mu_ held
    void start_timer_locked();
    void spawn_worker();

    void timer_loop();
    void worker_loop(std::shared_ptr<Worker> self);
    void push_batch(std::shared_ptr<Batch> b);
    // Runs items [lo, hi) of `b`. False if this worker was abandoned meanwhile (the thread must end).
    bool execute(Worker& w, const std::shared_ptr<Batch>& b, size_t lo, size_t hi, std::vector<uint32_t>& freed);
    // One call (run or stop) of slot `m`. For a run, `seq` is the sequence it was published and claimed
    // under; a stop call (seq 0) is published here. False if abandoned during it.
    bool call(Worker& w, Slot& s, Member m, bool is_stop, int64_t due, uint64_t seq, TimePoint& start,
              std::vector<uint32_t>& freed, bool manual = false);
    // A run's figures for status, written by the worker that holds RUNNING (see Slot::last_seq).
    void record(Worker& w, Slot& s, uint32_t slot_index, uint32_t gen, TimePoint start, bool coarse, int64_t end,
                RunResult result, const TaskResult& r, int64_t due, bool manual);
    // The worker's previous run ended before `t` (a timestamp of clock kind `coarse`): its last_end.
    void close_last(Worker& w, TimePoint t, bool coarse) const;
    void close_last(Worker& w) const;  // the same, reading the clock (the worker goes idle)
    TimePoint read_clock(bool coarse) const;
    std::string& name_of(uint32_t i) const { return names_of(segs_[i >> kSegBits])[i & (kSegSize - 1)]; }
    static std::string* names_of(Slot* seg) {  // beside the slots, in the same mapping
        return reinterpret_cast<std::string*>(reinterpret_cast<char*>(seg) + sizeof(Slot) * kSegSize);
    }
    // Ticks a task failing `streak` times in a row waits from one run to the next (1: no back-off).
    int64_t backoff_ticks(uint32_t streak, int64_t interval) const;
    RunNow run_now(TaskId id, uint64_t* runs_before);
    // Slot i's figures if it holds task generation `gen` (not yet freed); mu_ held if `timeout` is wanted.
    std::optional<TaskStats> stats_of(uint32_t i, uint32_t gen, int64_t now) const;
    void snapshot_locked(uint32_t i, uint32_t gen, int64_t now, std::vector<TaskSnapshot>& out) const;
    // Publishes a call in the worker's record (read by the timer, remove(), stop(), activity()).
    static uint64_t publish(Worker& w, uint64_t call, int64_t deadline) {
        const uint64_t seq = ++w.seq;
        w.deadline.store(deadline, std::memory_order_relaxed);
        w.call.store(call, std::memory_order_relaxed);
        w.run_word.store(seq << 2 | kBusy, std::memory_order_release);
        return seq;
    }
    // Cancels call `seq` of `w`. The word only grows, so a late cancellation of an older call never
    // overwrites that of a newer one. Release: the worker that sees it may read cancel_sent.
    static void cancel_call(Worker& w, uint64_t seq) {
        uint64_t c = w.cancel.load(std::memory_order_relaxed);
        while (c <= seq &&
               !w.cancel.compare_exchange_weak(c, seq, std::memory_order_release, std::memory_order_relaxed)) {
        }
        if (c > seq) return;  // a newer call is already cancelled: this one is long over
        // Pairs with set_cancel_relay's fence: either the canceller sees the relay, or the bridge that sets
        // it sees the cancellation.
        std::atomic_thread_fence(std::memory_order_seq_cst);
        w.relay.cancelled(seq);
    }
    // Cancels the run (never a stop call) a worker is executing for task `only`, or with only == 0, the
    // runs of every removed task. Reads each worker as scan_workers() does. Never blocks on task code.
    void cancel_removed_runs(TaskId only);
    // What slot `i` of generation `gen` is doing; mu_ held (so its timeout is stable). Nullopt: not that task.
    std::optional<TaskActivity> activity_locked(uint32_t i, uint32_t gen) const;
    std::string activity_text(const TaskActivity& a) const;  // "still in its run (started 1.2s ago)", ...
    int64_t scan_workers(int64_t now);
    // A run failed: count the streak, decide how many ticks to sit out, log changes of state (not every
    // failure: one broken task must not flood the log).
    void failed(Slot& s, const std::string& name, const std::string& error);
    static void bump(std::atomic<uint32_t>& c) {  // only the RUNNING owner writes: load + store, saturating
        const uint32_t v = c.load(std::memory_order_relaxed);
        if (v != UINT32_MAX) c.store(v + 1, std::memory_order_relaxed);
    }
    // The start time of a call, for its deadline. A precise clock read costs 30-70 ns on virtual machines
    // (more than the rest of a call); for timeouts of a second or more the coarse clock (a few ms of
    // resolution, never ahead of the precise one) is exact enough: the deadline is early by at most 0.4 %.
    // *coarse says which clock it was.
    TimePoint call_start(Duration timeout, bool* coarse) const;
    // Called when calls may start while the timer sleeps longer than min_timeout_: it must look sooner.
    void kick_timer();
    void done_items(size_t n);

    // Timer-private cohort bookkeeping.
    struct Cohort {
        int64_t due = 0;
        int64_t interval = 0;
        std::vector<Member> members;
        bool live = false;
        // Aligned cohorts only: the wall-clock time of the next tick is due + wall_offset_.
        bool aligned = false;
        int64_t last_due = INT64_MIN;   // the previous tick (or, before the first, one interval before it)
        int64_t last_wall = INT64_MIN;  // ... and its wall-clock time
        uint64_t owed_missed = 0;       // ticks a wall-clock jump passed over, for the next batch's count
        std::pair<int64_t, int64_t> key() const { return {due, aligned ? interval | kAlignedKey : interval}; }
    };
    void timer_apply(const std::vector<Op>& ops);
    uint32_t cohort_for(int64_t due, int64_t interval, bool aligned);
    void drop_member(uint32_t slot_index);
    void retire_cohort(uint32_t id);
    // wall - monotonic, read so that a preemption between the reads does not pass for a step.
    int64_t measure_wall_offset() const;
    // At a wake-up while aligned cohorts exist: re-anchors them if the wall clock moved. `now`: monotonic.
    void check_wall(int64_t now);
    void reanchor(int64_t now, int64_t offset);

    Options opt_;
    std::shared_ptr<Clock> clock_;
    bool steady_clock_ = false;  // clock_ is the real steady clock (CLOCK_MONOTONIC), not an injected one
    Duration coarse_resolution_{0};  // CLOCK_MONOTONIC_COARSE's
    std::shared_ptr<spdlog::logger> log_;
    size_t nworkers_;

    // Registry: slot storage, free list, hand-off to the timer. Never held while task code runs.
    mutable std::mutex mu_;
    std::condition_variable timer_cv_;    // wakes the timer (new earlier due time, stop)
    std::condition_variable stopped_cv_;  // slots were freed or abandoned
    std::condition_variable idle_cv_;     // for wait_idle
    std::unique_ptr<std::atomic<Slot*>[]> segs_owner_{new std::atomic<Slot*>[kMaxSegs]()};
    std::atomic<Slot*>* segs_atomic_ = segs_owner_.get();
    struct SegView {
        std::atomic<Slot*>* p;
        Slot* operator[](uint32_t i) const { return p[i].load(std::memory_order_acquire); }
    } segs_{segs_atomic_};
    std::atomic<uint32_t> slot_count_{0};
    std::vector<uint32_t> free_;
    std::vector<Op> pending_;         // for the timer, in order
    bool adds_told_ = false;          // an add in pending_ has notified the timer since it last took pending_
    size_t active_ = 0;               // slots holding a task (freed ones excluded)
    std::atomic<size_t> removed_unfreed_{0};    // removed, not yet freed
    std::atomic<size_t> abandoned_unfreed_{0};  // of those, abandoned (no stop call will come)
    // The last run's error text of failing tasks, by slot (with the generation it belongs to). Written only
    // when a run fails or a failing task recovers; never held while task code runs. Lock order: mu_, err_mu_.
    mutable std::mutex err_mu_;
    std::unordered_map<uint32_t, std::pair<uint32_t, std::string>> errors_;
    bool timer_stop_ = false;
    bool timer_kick_ = false;         // work appeared that the timer did not dispatch itself
    int64_t processed_until_ = INT64_MIN;
    // With aligned cohorts: the wall - monotonic difference the timer last handled (for wait_idle); else unset.
    std::optional<int64_t> processed_offset_;
    int64_t measured_offset_ = 0;  // timer-private: the last one check_wall() measured
    // The shortest timeout of any task ever added. While calls are queued or running, the timer looks at
    // the workers at least this often, so it sees every deadline in time without workers having to tell
    // it about each call (that would cost a fence per call).
    std::atomic<int64_t> min_timeout_{INT64_MAX};

    // Timer thread state.
    DueHeap heap_;
    std::vector<Cohort> cohorts_;
    std::vector<uint32_t> free_cohorts_;
    struct KeyHash {
        size_t operator()(const std::pair<int64_t, int64_t>& k) const {
            return std::hash<uint64_t>()(uint64_t(k.first) * 31 + uint64_t(k.second));  // wraps, no UB
        }
    };
    std::unordered_map<std::pair<int64_t, int64_t>, uint32_t, KeyHash> by_key_;
    size_t aligned_cohorts_ = 0;  // live aligned cohorts
    int64_t wall_offset_ = 0;     // wall - monotonic the aligned cohorts' due times were mapped with
#if defined(__linux__)
    class WallStepWatch;
    std::unique_ptr<WallStepWatch> wall_watch_;  // with the real clock, from the first aligned cohort to stop()
    bool wall_watch_failed_ = false;
#endif

    // Worker queue.
    std::mutex qmu_;
    std::condition_variable qcv_;
    std::deque<std::shared_ptr<Batch>> queue_;
    std::vector<Member> stop_pending_;  // stop calls queued by remove(); a worker takes them all at once
    bool workers_stop_ = false;
    std::atomic<int64_t> inflight_{0};  // calls queued or executing (abandoned ones excluded)
    std::atomic<int> idle_waiters_{0};  // threads in wait_idle()

    // Workers (timer scans them; replaced when abandoned). Lock order: mu_ before wmu_.
    mutable std::mutex wmu_;
    std::vector<std::shared_ptr<Worker>> workers_;

    // Lifecycle.
    std::mutex lifecycle_mu_;
    std::thread timer_;
    std::atomic<bool> timer_running_{false};
    bool workers_running_ = false;
};

// Slot segments are mapped pre-faulted: touching fresh pages one fault at a time costs more than the
// rest of add() on a virtual machine.
Slot* Tickers::Impl::new_segment() {
    const size_t bytes = (sizeof(Slot) + sizeof(std::string)) * kSegSize;  // the slots, then their names
    void* mem = nullptr;
#if defined(__linux__)
    mem = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (mem == MAP_FAILED) throw std::bad_alloc();
#else
    mem = ::operator new(bytes);
#endif
    Slot* seg = static_cast<Slot*>(mem);
    for (uint32_t k = 0; k < kSegSize; ++k) new (seg + k) Slot();
    std::string* names = names_of(seg);
    for (uint32_t k = 0; k < kSegSize; ++k) new (names + k) std::string();
    return seg;
}

Tickers::Impl::~Impl() {
    for (uint32_t i = 0; i < kMaxSegs; ++i) {
        Slot* seg = segs_atomic_[i].load(std::memory_order_relaxed);
        if (!seg) break;
        for (uint32_t k = 0; k < kSegSize; ++k) seg[k].~Slot();
        std::string* names = names_of(seg);
        for (uint32_t k = 0; k < kSegSize; ++k) names[k].~basic_string();
#if defined(__linux__)
        ::munmap(seg, (sizeof(Slot) + sizeof(std::string)) * kSegSize);
#else
        ::operator delete(seg);
#endif
    }
}

Tickers::Impl::Impl(Options o) : opt_(std::move(o)) {
    clock_ = opt_.clock ? opt_.clock : std::make_shared<SteadyClock>();
    steady_clock_ = dynamic_cast<SteadyClock*>(clock_.get()) != nullptr;
#if defined(CLOCK_MONOTONIC_COARSE)
    if (timespec res{}; clock_getres(CLOCK_MONOTONIC_COARSE, &res) == 0)
        coarse_resolution_ = std::chrono::seconds(res.tv_sec) + Duration(res.tv_nsec);
#endif
    log_ = opt_.logger ? opt_.logger : get_logger("scheduler");
    nworkers_ = opt_.workers ? opt_.workers : std::max(1u, std::thread::hardware_concurrency());
    if (opt_.default_timeout <= Duration::zero()) opt_.default_timeout = std::chrono::seconds(10);
    if (opt_.abandon_after < Duration::zero()) opt_.abandon_after = Duration::zero();
    if (opt_.backoff_max > max_duration) opt_.backoff_max = max_duration;  // longer means nothing
}

// ---- add / remove / free --------------------------------------------------------------------------------

TaskId Tickers::Impl::add(Duration interval, TickTask task, int64_t first_due, bool aligned) {
    if (interval <= Duration::zero()) throw std::invalid_argument("tickers: task '" + task.name + "': interval must be > 0");
    if (task.timeout < Duration::zero()) throw std::invalid_argument("tickers: task '" + task.name + "': timeout must be >= 0");
    if (!task.fn) throw std::invalid_argument("tickers: task '" + task.name + "' has no function");
    // Far beyond any useful schedule, and keeps due/deadline arithmetic clear of int64 overflow.
    if (interval > max_duration || task.timeout > max_duration)
        throw std::invalid_argument("tickers: task '" + task.name + "': interval and timeout must be at most 365 days");
    constexpr int64_t kLatest = INT64_MAX / 2;  // keeps due + interval and deadlines clear of overflow
    first_due = std::min(first_due, kLatest);

    std::unique_lock<std::mutex> lk(mu_);
    uint32_t i;
    if (!free_.empty()) {
        i = free_.back();
        free_.pop_back();
    } else {
        i = slot_count_.load(std::memory_order_relaxed);
        if (i == kSegSize * kMaxSegs) throw std::length_error("tickers: too many tasks");
        if (!segs_[i >> kSegBits]) segs_atomic_[i >> kSegBits].store(new_segment(), std::memory_order_release);
        slot_count_.store(i + 1, std::memory_order_release);
    }
    Slot& s = slot(i);
    const uint32_t gen = gen_of(s.word.load(std::memory_order_relaxed));
    s.fn = std::move(task.fn);
    name_of(i) = std::move(task.name);
    s.interval_ns.store(interval.count(), std::memory_order_relaxed);
    s.timeout = task.timeout > Duration::zero() ? task.timeout : opt_.default_timeout;
    for (int64_t cur = min_timeout_.load(std::memory_order_relaxed); s.timeout.count() < cur;)
        if (min_timeout_.compare_exchange_weak(cur, s.timeout.count(), std::memory_order_relaxed)) break;
    s.runs.store(0, std::memory_order_relaxed);
    s.failures.store(0, std::memory_order_relaxed);
    s.skipped.store(0, std::memory_order_relaxed);
    s.timeouts.store(0, std::memory_order_relaxed);
    s.fail_streak.store(0, std::memory_order_relaxed);
    s.sit_out.store(0, std::memory_order_relaxed);
    // No run yet. The sequence goes on from the slot's previous task: a worker's late close of that task's
    // last run finds it moved and leaves this one alone.
    const uint32_t q = s.last_seq.load(std::memory_order_relaxed);
    s.last_seq.store(q + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    s.last_result.store(uint8_t(RunResult::none), std::memory_order_relaxed);
    s.last_start.store(0, std::memory_order_relaxed);
    s.last_end.store(0, std::memory_order_relaxed);
    s.next_due.store(std::max<int64_t>(first_due, 0), std::memory_order_relaxed);
    s.last_seq.store(q + 2, std::memory_order_release);
    s.word.store(pack(gen, kActive), std::memory_order_release);
    ++active_;
    // Drops (free_slots) are queued without waking the timer; an add must wake it unless an add since its
    // last look already did (a new task's first due time may be earlier than the timer's next wake-up).
    const bool wake = !adds_told_;
    adds_told_ = true;
    pending_.push_back({std::max<int64_t>(first_due, 0), aligned ? i | kAlignedOp : i, gen});
    lk.unlock();
    // The timer takes everything pending when it wakes, so one notify per burst of adds is enough.
    if (wake) timer_cv_.notify_one();
    return make_id(i, gen);
}

bool Tickers::Impl::remove(TaskId id) {
    const uint32_t i = slot_of(id), gen = gen_of_id(id);
    if (gen == 0 || i >= slot_count_.load(std::memory_order_acquire)) return false;
    Slot& s = slot(i);
    uint64_t w = s.word.load(std::memory_order_acquire);
    for (;;) {
        if (gen_of(w) != gen || !(flags_of(w) & kActive) || (flags_of(w) & kRemoved)) return false;
        if (s.word.compare_exchange_weak(w, w | kRemoved | kRunning, std::memory_order_acq_rel)) break;
    }
    const uint32_t f = flags_of(w);
    removed_unfreed_.fetch_add(1, std::memory_order_relaxed);
    if (f & kAbandoned) abandoned_unfreed_.fetch_add(1, std::memory_order_relaxed);
    if (f & kAbandoned) {
        // No stop call. If its stuck call is still going (RUNNING), the worker frees the slot when it
        // returns; if it already returned, nobody else will: free it here.
        log_->warn("task '{}' removed while abandoned: no stop call will be made", name_of(i));
        if (!(f & kRunning)) free_slots({i});
        std::lock_guard<std::mutex> lk(mu_);
        stopped_cv_.notify_all();
        return true;
    }
    // RUNNING was set: a worker holds a run (or is sitting a tick out); it makes the stop call when the
    // run returns. Tell the run to return now.
    if (f & kRunning) cancel_removed_runs(make_id(i, gen));
    // RUNNING was clear: nobody will make the stop call unless we queue it.
    if (!(f & kRunning)) {
        const bool from_idle = inflight_.fetch_add(1, std::memory_order_acq_rel) <= 0;
        bool was_empty;
        {
            std::lock_guard<std::mutex> lk(qmu_);
            was_empty = stop_pending_.empty();
            stop_pending_.push_back({i, gen});
        }
        if (was_empty) qcv_.notify_one();  // otherwise a worker was told already and takes them all
        if (from_idle) kick_timer();       // it may be asleep for longer than this stop call's timeout
    }
    return true;
}

void Tickers::Impl::free_slots(const std::vector<uint32_t>& slots) {
    if (slots.empty()) return;
    // The callables are destroyed first, outside any lock (the slots are still ours: nobody else touches
    // them until their new word is published), and before waiters are told: whoever wait_stopped() for a
    // task may then rely on holding the last reference to what its callable captured (a plugin library).
    for (uint32_t i : slots) slot(i).fn = nullptr;
    std::lock_guard<std::mutex> lk(mu_);
    for (uint32_t i : slots) {
        Slot& s = slot(i);
        const uint64_t w = s.word.load(std::memory_order_relaxed);
        const uint32_t gen = gen_of(w);
        if (s.last_result.load(std::memory_order_relaxed) & kHasError) {
            std::lock_guard<std::mutex> el(err_mu_);
            errors_.erase(i);
        }
        --active_;
        removed_unfreed_.fetch_sub(1, std::memory_order_relaxed);
        if (flags_of(w) & kAbandoned) abandoned_unfreed_.fetch_sub(1, std::memory_order_relaxed);
        // Tell the timer in the same critical section, so its drop comes before any reuse's add.
        pending_.push_back({-1, i, gen});
        if (gen == UINT32_MAX) {
            s.word.store(pack(gen, kRemoved), std::memory_order_release);  // retired: the ID never comes back
        } else {
            s.word.store(pack(gen + 1, 0), std::memory_order_release);
            free_.push_back(i);
        }
    }
    stopped_cv_.notify_all();
    if (pending_.size() >= 4096) timer_cv_.notify_one();  // drops pile up while the timer sleeps: let it sort them
}

StopState Tickers::Impl::wait_stopped(TaskId id, Duration bound) {
    const uint32_t i = slot_of(id), gen = gen_of_id(id);
    if (gen == 0 || i >= slot_count_.load(std::memory_order_acquire)) return StopState::unknown;
    std::unique_lock<std::mutex> lk(mu_);
    Slot& s = slot(i);
    auto state = [&]() -> std::optional<StopState> {
        const uint64_t w = s.word.load(std::memory_order_acquire);
        if (gen_of(w) != gen || !(flags_of(w) & kActive)) return StopState::stopped;
        if (flags_of(w) & kAbandoned) return StopState::abandoned;
        return std::nullopt;
    };
    // Real time: the bound protects the caller even on a ManualClock.
    const auto until = std::chrono::steady_clock::now() + bound;
    for (;;) {
        if (auto st = state()) return *st;
        if (stopped_cv_.wait_until(lk, until) == std::cv_status::timeout) {
            if (auto st = state()) return *st;
            return StopState::timed_out;
        }
    }
}

void Tickers::Impl::cancel_removed_runs(TaskId only) {
    std::lock_guard<std::mutex> lk(wmu_);  // held only for this scan; spawn_worker waits at most that long
    for (auto& wp : workers_) {
        Worker& w = *wp;
        const uint64_t rw = w.run_word.load(std::memory_order_acquire);
        if ((rw & 3) != kBusy) continue;
        const uint64_t c = w.call.load(std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_acquire);
        if (w.run_word.load(std::memory_order_relaxed) != rw) continue;  // moved on: that call is over
        if (c & kStopCall) continue;                                     // a stop call is never cut short
        if (only != 0) {
            if (c != only) continue;
        } else {
            const uint64_t sw = slot(call_slot(c)).word.load(std::memory_order_acquire);
            if (gen_of(sw) != gen_of_id(c) || !(flags_of(sw) & kRemoved)) continue;
        }
        // Even if that run ended since, the sequence keeps this from reaching the worker's next call.
        cancel_call(w, rw >> 2);
    }
}

std::optional<TaskActivity> Tickers::Impl::activity_locked(uint32_t i, uint32_t gen) const {
    const Slot& s = slot(i);
    const uint64_t sw = s.word.load(std::memory_order_acquire);
    if (gen_of(sw) != gen || !(flags_of(sw) & kActive)) return std::nullopt;
    TaskActivity a;
    if (flags_of(sw) & kAbandoned) a.state = TaskActivity::State::abandoned;
    const TaskId id = make_id(i, gen);
    std::lock_guard<std::mutex> lk(wmu_);
    for (auto& wp : workers_) {
        const Worker& w = *wp;
        const uint64_t rw = w.run_word.load(std::memory_order_acquire);
        if ((rw & 3) == kIdle) continue;
        const uint64_t c = w.call.load(std::memory_order_relaxed);
        const int64_t deadline = w.deadline.load(std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_acquire);
        if (w.run_word.load(std::memory_order_relaxed) != rw) continue;
        if ((c & ~kStopCall) != id || deadline == kUnstarted) continue;
        if ((rw & 3) == kGone) {  // the stuck call of an abandoned task, perhaps still executing
            if (a.state == TaskActivity::State::abandoned && a.since == TimePoint{})
                a.since = from_ns(deadline) - s.timeout;
            continue;
        }
        if (a.state == TaskActivity::State::abandoned) continue;
        a.state = (c & kStopCall) ? TaskActivity::State::in_stop_call : TaskActivity::State::in_run;
        a.since = from_ns(deadline) - s.timeout;  // the worker's own start: no clock read of its own
        break;
    }
    return a;
}

std::string Tickers::Impl::activity_text(const TaskActivity& a) const {
    const std::string ago = "(started " + detail::format_elapsed(clock_->now() - a.since) + " ago)";
    switch (a.state) {
        case TaskActivity::State::in_run:
            return "still in its run " + ago;
        case TaskActivity::State::in_stop_call:
            return "still in its stop call " + ago;
        case TaskActivity::State::abandoned:
            return "abandoned";
        case TaskActivity::State::idle:
            break;
    }
    return "its stop call had not started";
}

// ---- status ---------------------------------------------------------------------------------------------

std::optional<TaskStats> Tickers::Impl::stats_of(uint32_t i, uint32_t gen, int64_t now) const {
    const Slot& s = slot(i);
    const uint64_t w = s.word.load(std::memory_order_acquire);
    if (gen_of(w) != gen || !(flags_of(w) & kActive)) return std::nullopt;
    TaskStats st;
    st.runs = s.runs.load(std::memory_order_relaxed);
    st.failures = s.failures.load(std::memory_order_relaxed);
    st.consecutive_failures = s.fail_streak.load(std::memory_order_relaxed);
    st.skipped = s.skipped.load(std::memory_order_relaxed);
    st.timeouts = s.timeouts.load(std::memory_order_relaxed);
    // The last run: a consistent set under the slot's sequence lock (a writer holds it for a few stores).
    uint8_t result = 0;
    int64_t start = 0, end = 0, next = 0;
    for (int tries = 0;; ++tries) {
        const uint32_t q1 = s.last_seq.load(std::memory_order_acquire);
        result = s.last_result.load(std::memory_order_relaxed);
        start = s.last_start.load(std::memory_order_relaxed);
        end = s.last_end.load(std::memory_order_relaxed);
        next = s.next_due.load(std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_acquire);
        const uint32_t q2 = s.last_seq.load(std::memory_order_relaxed);
        if (q1 == q2 && !(q1 & 1)) break;
        if (tries > 100) std::this_thread::yield();  // the writer was preempted mid-write
    }
    if (gen_of(s.word.load(std::memory_order_acquire)) != gen) return std::nullopt;  // reused meanwhile
    st.last_result = RunResult(result & kResultBits);
    if (st.last_result != RunResult::none) {
        st.last_start = from_ns(start);
        if (end != 0 && end >= start) st.last_duration = Duration(end - start);
        if (result & kCoarse) st.last_duration_resolution = coarse_resolution_;
    }
    if (result & kHasError) {
        std::lock_guard<std::mutex> el(err_mu_);
        auto it = errors_.find(i);
        if (it != errors_.end() && it->second.first == gen) st.last_error = it->second.second;
    }
    const int64_t interval = s.interval_ns.load(std::memory_order_relaxed);
    if (next < now && interval > 0) {
        // Ticks went by since (skipped, or being dispatched): the next one on the same grid.
        const int64_t behind = (now - next + interval - 1) / interval;
        next = add_sat(next, mul_sat(behind, interval));
    }
    st.next_due = from_ns(next);
    if (st.consecutive_failures > 0 && opt_.backoff_max.count() > 0) {
        const uint32_t streak = uint32_t(std::min<uint64_t>(st.consecutive_failures, UINT32_MAX));
        const int64_t ticks = backoff_ticks(streak, interval);
        if (ticks > 1) st.backoff = Duration(mul_sat(interval, ticks));
    }
    return st;
}

void Tickers::Impl::snapshot_locked(uint32_t i, uint32_t gen, int64_t now, std::vector<TaskSnapshot>& out) const {
    const Slot& s = slot(i);
    const uint64_t w = s.word.load(std::memory_order_acquire);
    if (gen_of(w) != gen || !(flags_of(w) & kActive) || (flags_of(w) & kRemoved)) return;
    auto st = stats_of(i, gen, now);
    auto a = activity_locked(i, gen);
    if (!st || !a) return;
    TaskSnapshot t;
    t.id = make_id(i, gen);
    t.name = name_of(i);  // mu_ held: add() cannot be writing it
    t.interval = Duration(s.interval_ns.load(std::memory_order_relaxed));
    t.timeout = s.timeout;
    t.stats = std::move(*st);
    t.activity = *a;
    out.push_back(std::move(t));
}

RunNow Tickers::Impl::run_now(TaskId id, uint64_t* runs_before) {
    const uint32_t i = slot_of(id), gen = gen_of_id(id);
    if (gen == 0 || i >= slot_count_.load(std::memory_order_acquire)) return RunNow::unknown;
    Slot& s = slot(i);
    uint64_t w = s.word.load(std::memory_order_acquire);
    if (gen_of(w) != gen || !(flags_of(w) & kActive) || (flags_of(w) & kRemoved)) return RunNow::unknown;
    if (!timer_running_.load()) return RunNow::not_running;
    // Claim the slot as a worker would: RUNNING set here means no scheduled tick can start a run before ours
    // (they are skipped and counted, as for any run in flight), and a second run_now() finds it taken.
    for (;;) {
        const uint32_t f = flags_of(w);
        if (gen_of(w) != gen || !(f & kActive) || (f & kRemoved)) return RunNow::unknown;
        if (f & kAbandoned) return RunNow::abandoned;
        if (f & kRunning) return RunNow::already_running;
        if (s.word.compare_exchange_weak(w, w | kRunning, std::memory_order_acq_rel)) break;
    }
    // No run is in flight (RUNNING was clear) and none can start before ours: the count is exact.
    if (runs_before) *runs_before = s.runs.load(std::memory_order_relaxed);
    auto b = std::make_shared<Batch>();
    b->items.push_back({i, gen});
    b->due = to_ns(clock_->now());
    b->manual = true;
    push_batch(std::move(b));
    kick_timer();  // it may be asleep for longer than this run's timeout
    return RunNow::started;
}

// ---- workers --------------------------------------------------------------------------------------------

int64_t Tickers::Impl::backoff_ticks(uint32_t streak, int64_t interval) const {
    // Exponential: after k failures in a row the next run comes interval * 2^k later, up to backoff_max.
    // interval and backoff_max are at most max_duration, and interval * ticks stays <= backoff_max; the
    // products saturate all the same.
    if (streak == 0 || interval <= 0) return 1;
    const int64_t cap_ticks = opt_.backoff_max.count() > interval ? opt_.backoff_max.count() / interval : 1;
    const int64_t factor = streak >= 62 ? INT64_MAX : (int64_t(1) << streak);
    return std::min(factor, cap_ticks);
}

void Tickers::Impl::failed(Slot& s, const std::string& name, const std::string& error) {
    bump(s.fail_streak);  // saturating
    const uint32_t streak = s.fail_streak.load(std::memory_order_relaxed);
    const int64_t interval = s.interval_ns.load(std::memory_order_relaxed);
    const int64_t cap_ticks = opt_.backoff_max.count() > interval ? opt_.backoff_max.count() / interval : 1;
    const int64_t factor = streak >= 62 ? INT64_MAX : (int64_t(1) << streak);
    const int64_t ticks = backoff_ticks(streak, interval);
    const bool capped = ticks == cap_ticks;
    const bool newly_capped = capped && (streak == 1 || std::min(factor / 2, cap_ticks) < cap_ticks);
    const uint32_t sit_out = opt_.backoff_max.count() > 0 ? uint32_t(std::min<int64_t>(ticks - 1, UINT32_MAX)) : 0;
    s.sit_out.store(sit_out, std::memory_order_relaxed);
    const std::string next = detail::format_elapsed(Duration(mul_sat(interval, int64_t(sit_out) + 1)));
    if (streak == 1)
        log_->error("task '{}': run failed: {}{}", name, error,
                    sit_out ? "; backing off, next run in " + next : std::string());
    else if (newly_capped && sit_out)
        log_->warn("task '{}': {} failures in a row (last: {}); retrying every {} until it succeeds", name, streak,
                   error, next);
    else
        log_->debug("task '{}': run failed again ({} in a row): {}; next run in {}", name, streak, error, next);
}

TimePoint Tickers::Impl::call_start(Duration timeout, bool* coarse) const {
    *coarse = steady_clock_ && timeout >= std::chrono::seconds(1);
    return read_clock(*coarse);
}

TimePoint Tickers::Impl::read_clock(bool coarse) const {
#if defined(CLOCK_MONOTONIC_COARSE)
    if (coarse) {
        timespec ts;
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
        return TimePoint(std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec));
    }
#endif
    (void)coarse;
    return clock_->now();
}

void Tickers::Impl::close_last(Worker& w, TimePoint t, bool coarse) const {
    Slot* s = w.open_slot;
    if (!s) return;
    w.open_slot = nullptr;
    if (coarse != w.open_coarse) t = read_clock(w.open_coarse);  // the two ends must come from one clock
    // Only if the slot still shows that run: another worker may have recorded a later run of the task, or
    // the slot a new task, meanwhile. (A close delayed between this check and the store, while a whole new
    // run is made and recorded, would give that run this end: a figure off until its next run, no more.)
    if (s->last_seq.load(std::memory_order_acquire) == w.open_seq)
        s->last_end.store(std::max(to_ns(t), int64_t(1)), std::memory_order_relaxed);
}

void Tickers::Impl::close_last(Worker& w) const {
    if (w.open_slot) close_last(w, read_clock(w.open_coarse), w.open_coarse);
}

namespace {
// At most Tickers::max_error_text bytes, cut at a UTF-8 boundary.
std::string bounded_error(const std::string& e) {
    constexpr size_t kMax = Tickers::max_error_text;
    if (e.size() <= kMax) return e;
    size_t cut = kMax - 3;
    while (cut > 0 && (static_cast<unsigned char>(e[cut]) & 0xC0) == 0x80) --cut;
    return e.substr(0, cut) + "...";
}
}  // namespace

void Tickers::Impl::record(Worker& w, Slot& s, uint32_t slot_index, uint32_t gen, TimePoint start, bool coarse,
                           int64_t end, RunResult result, const TaskResult& r, int64_t due, bool manual) {
    const uint8_t before = s.last_result.load(std::memory_order_relaxed);
    const bool has_error = !r.ok && (result == RunResult::failed || result == RunResult::timed_out);
    if (has_error) {  // only a failing run pays for a copy and a lock
        std::string text = bounded_error(r.error);
        std::lock_guard<std::mutex> el(err_mu_);
        errors_[slot_index] = {gen, std::move(text)};
    } else if (before & kHasError) {
        std::lock_guard<std::mutex> el(err_mu_);
        errors_.erase(slot_index);
    }
    const uint32_t q = s.last_seq.load(std::memory_order_relaxed);
    s.last_seq.store(q + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    s.last_result.store(uint8_t(result) | (has_error ? kHasError : 0) | (coarse ? kCoarse : 0),
                        std::memory_order_relaxed);
    s.last_start.store(to_ns(start), std::memory_order_relaxed);
    s.last_end.store(end, std::memory_order_relaxed);
    // The schedule's next tick for this task, past the ticks it sits out. A run_now() run is off the grid
    // (`due` is when it was asked for): the grid's next tick after it, from the next due known so far.
    const int64_t interval = s.interval_ns.load(std::memory_order_relaxed);
    const int64_t sit_out = int64_t(s.sit_out.load(std::memory_order_relaxed));
    int64_t tick = add_sat(due, interval);
    if (manual && interval > 0) {
        const int64_t g = s.next_due.load(std::memory_order_relaxed);
        tick = g > due ? g - ((g - due - 1) / interval) * interval
                       : add_sat(g, mul_sat((due - g) / interval + 1, interval));
    }
    s.next_due.store(add_sat(tick, mul_sat(interval, sit_out)), std::memory_order_relaxed);
    s.last_seq.store(q + 2, std::memory_order_release);
    if (end == 0) {  // its end is this worker's next timestamp
        w.open_slot = &s;
        w.open_seq = q + 2;
        w.open_coarse = coarse;
    }
}

void Tickers::Impl::push_batch(std::shared_ptr<Batch> b) {
    inflight_.fetch_add(int64_t(b->items.size()), std::memory_order_relaxed);
    const bool big = b->items.size() > 1;
    {
        std::lock_guard<std::mutex> lk(qmu_);
        queue_.push_back(std::move(b));
    }
    if (big)
        qcv_.notify_all();
    else
        qcv_.notify_one();
}

void Tickers::Impl::done_items(size_t n) {
    if (inflight_.fetch_sub(int64_t(n), std::memory_order_acq_rel) == int64_t(n) &&
        idle_waiters_.load(std::memory_order_acquire) > 0) {
        std::lock_guard<std::mutex> lk(mu_);
        idle_cv_.notify_all();
    }
}

void Tickers::Impl::kick_timer() {
    std::lock_guard<std::mutex> lk(mu_);
    timer_kick_ = true;
    timer_cv_.notify_one();
}

void Tickers::Impl::worker_loop(std::shared_ptr<Worker> self) {
    std::vector<uint32_t> freed;
    for (;;) {
        std::shared_ptr<Batch> b;
        {
            std::unique_lock<std::mutex> lk(qmu_);
            auto ready = [&] { return workers_stop_ || self->retired || !queue_.empty() || !stop_pending_.empty(); };
            if (self->open_slot && !ready()) {
                // Going idle: the one clock read that ends its last run (busy, the next call's start does).
                lk.unlock();
                close_last(*self);
                lk.lock();
            }
            qcv_.wait(lk, ready);
            if (self->retired) break;  // detached by stop()
            if (!stop_pending_.empty()) {
                // Stop calls queued by remove(): one batch for all of them, first in line, shared like any
                // other so that one slow stop call does not hold up the rest.
                auto stops = std::make_shared<Batch>();
                stops->stop = true;
                stops->items.swap(stop_pending_);
                queue_.push_front(std::move(stops));
                if (queue_.front()->items.size() > 1) qcv_.notify_all();
            }
            if (queue_.empty()) break;  // stopping and drained
            b = queue_.front();
        }
        const size_t n = b->items.size();
        // Claim slices until the batch is exhausted. Small slices keep both workers busy to the end and
        // keep what an abandoned call strands short (the timer hands that rest to others anyway). Stop calls
        // go one at a time: any of them may be slow.
        const size_t slice = b->stop ? 1 : std::clamp<size_t>(n / (nworkers_ * 16), 1, 512);
        size_t lo = b->next.fetch_add(slice, std::memory_order_relaxed);
        while (lo < n) {
            const size_t hi = std::min(n, lo + slice);
            const bool alive = execute(*self, b, lo, hi, freed);
            free_slots(freed);
            freed.clear();
            if (!alive) {
                self->exited = true;
                return;  // abandoned: the timer settled our slice and gave its rest to the others
            }
            done_items(hi - lo);
            lo = b->next.fetch_add(slice, std::memory_order_relaxed);
        }
        {
            std::lock_guard<std::mutex> lk(qmu_);
            auto it = std::find(queue_.begin(), queue_.end(), b);
            if (it != queue_.end()) queue_.erase(it);
        }
    }
    close_last(*self);
    self->exited = true;
}

bool Tickers::Impl::execute(Worker& w, const std::shared_ptr<Batch>& b, size_t lo, size_t hi,
                            std::vector<uint32_t>& freed) {
    w.batch.store(b.get(), std::memory_order_relaxed);
    w.begin.store(lo, std::memory_order_relaxed);
    w.end.store(hi, std::memory_order_relaxed);
    TimePoint start{};
    for (size_t k = lo; k < hi; ++k) {
        const Member m = b->items[k];
        w.cursor.store(k, std::memory_order_relaxed);
        Slot& s = slot(m.slot);
        // The hardware prefetches the slots of a batch that walks them in order; those of a jittered cohort may
        // be scattered over the registry (a cache miss each): fetch both lines of a slot a few items ahead.
        if (k + 8 < hi && b->items[k + 8].slot - m.slot != 8) {
            const char* ahead = reinterpret_cast<const char*>(&slot(b->items[k + 8].slot));
            __builtin_prefetch(ahead);
            __builtin_prefetch(ahead + 64);
        }
        if (b->stop) {
            if (!call(w, s, m, true, 0, 0, start, freed)) return false;
            continue;
        }
        if (b->manual) {
            // run_now() claimed the slot (RUNNING) already. Publish the run, then an RMW on the slot word
            // orders that before any later REMOVED, as the claim CAS below does: either we see REMOVED here,
            // or whoever sets it sees our run and cancels it.
            const uint64_t seq = publish(w, make_id(m.slot, m.gen), kUnstarted);
            const uint64_t word = s.word.fetch_or(kRunning, std::memory_order_acq_rel);
            if (flags_of(word) & kRemoved) {
                // Removed meanwhile: remove() left the stop call to the holder of RUNNING, us.
                w.run_word.store(seq << 2 | kIdle, std::memory_order_release);
                if (!call(w, s, m, true, 0, 0, start, freed)) return false;
                continue;
            }
            if (!call(w, s, m, false, b->due, seq, start, freed, true)) return false;
            continue;
        }
        uint64_t word = s.word.load(std::memory_order_acquire);
        auto gone = [&] {
            const uint32_t f = flags_of(word);
            return gen_of(word) != m.gen || !(f & kActive) || (f & (kRemoved | kAbandoned));
        };
        if (gone()) continue;
        if (flags_of(word) & kRunning) {
            // Never overlap a task with itself. The ticks missed before this one are skipped as well.
            s.skipped.fetch_add(1 + uint64_t(b->missed), std::memory_order_relaxed);
            continue;
        }
        // Publish the run before claiming it (see the top of this file): a remove() or stop() that sets
        // REMOVED after our claim then finds it here and cancels it.
        const uint64_t seq = publish(w, make_id(m.slot, m.gen), kUnstarted);
        bool claimed = false;
        for (;;) {
            if (gone()) break;
            if (flags_of(word) & kRunning) {
                s.skipped.fetch_add(1 + uint64_t(b->missed), std::memory_order_relaxed);
                break;
            }
            if (s.word.compare_exchange_weak(word, word | kRunning, std::memory_order_acq_rel)) {
                claimed = true;
                break;
            }
        }
        if (!claimed) {
            // Never started: withdraw it. Nobody abandons a call with deadline kUnstarted, so a store will do.
            w.run_word.store(seq << 2 | kIdle, std::memory_order_release);
            continue;
        }
        if (b->missed) s.skipped.fetch_add(b->missed, std::memory_order_relaxed);
        if (!call(w, s, m, false, b->due, seq, start, freed)) return false;
    }
    return true;
}

bool Tickers::Impl::call(Worker& w, Slot& s, Member m, bool is_stop, int64_t due, uint64_t seq, TimePoint& start,
                         std::vector<uint32_t>& freed, bool manual) {
    const TaskId id = make_id(m.slot, m.gen);
    const std::string& name = name_of(m.slot);
    for (;;) {
        if (!is_stop && !manual && s.sit_out.load(std::memory_order_relaxed) > 0) {
            // Backing off after failures: this tick is sat out (and counted as skipped). A run_now() run is not.
            s.sit_out.store(s.sit_out.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
            s.skipped.fetch_add(1, std::memory_order_relaxed);
            w.run_word.store(seq << 2 | kIdle, std::memory_order_release);  // withdraw the unstarted run
            const uint64_t prev = s.word.fetch_and(~uint64_t(kRunning), std::memory_order_acq_rel);
            if (!(flags_of(prev) & kRemoved)) return true;
            s.word.fetch_or(kRunning, std::memory_order_acq_rel);
            is_stop = true;
        }
        bool coarse;
        start = call_start(s.timeout, &coarse);
        close_last(w, start, coarse);  // this worker's previous run ended before this start
        const TimePoint deadline = start + s.timeout;
        if (is_stop)
            seq = publish(w, id | kStopCall, to_ns(deadline));  // a new sequence: no cancellation of the run hits it
        else
            w.deadline.store(to_ns(deadline), std::memory_order_relaxed);  // the run is claimed: now it has one

        RunContext ctx(id, name, is_stop ? start : from_ns(due), deadline, *clock_, w.cancel, seq, &w.relay);
        TaskResult r;
        try {
            r = s.fn(ctx, is_stop);
        } catch (const std::exception& e) {
            r = TaskResult::failure(std::string("exception: ") + e.what());
        } catch (...) {
            r = TaskResult::failure("unknown exception");
        }
        // Cancelled: by the timer at the deadline (it wrote cancel_sent first), or by remove()/stop().
        // Only then is the end time worth a clock read (for the log line).
        const bool cancelled = w.cancel.load(std::memory_order_relaxed) == seq;
        bool timed_out = false;
        TimePoint end = start;
        if (cancelled) {
            std::atomic_thread_fence(std::memory_order_acquire);  // pairs with cancel_call's release
            timed_out = is_stop || w.cancel_sent.load(std::memory_order_relaxed) == seq;
            end = clock_->now();
        }
        uint64_t expected = seq << 2 | kBusy;
        if (!w.run_word.compare_exchange_strong(expected, seq << 2 | kIdle, std::memory_order_acq_rel)) {
            // The timer abandoned this call and gave the rest of our slice to others.
            log_->warn("task '{}': abandoned {} returned after {}", name, is_stop ? "stop call" : "run",
                       detail::format_elapsed(clock_->now() - start));
            // The code is no longer executing. Clear RUNNING: a later remove() then frees the slot itself;
            // if it was removed already, free it now. No stop call: an abandoned task gets none.
            const uint64_t prev = s.word.fetch_and(~uint64_t(kRunning), std::memory_order_acq_rel);
            if (flags_of(prev) & kRemoved) freed.push_back(m.slot);
            return false;
        }
        if (timed_out) {
            bump(s.timeouts);
            log_->error("task '{}': {} took {}, past its timeout of {}", name, is_stop ? "stop call" : "run",
                        detail::format_elapsed(end - start), detail::format_elapsed(s.timeout));
        } else if (cancelled) {
            // The task was removed (or the registry stopped) during the run: what it returns is moot.
            log_->debug("task '{}': run cancelled by the task's removal returned after {}{}", name,
                        detail::format_elapsed(end - start), r.ok ? std::string() : " (" + r.error + ")");
        }
        if (is_stop) {
            if (!r.ok) log_->error("task '{}': stop call failed: {}", name, r.error);
        } else if (!r.ok) {
            if (!cancelled || timed_out) {
                bump(s.failures);
                failed(s, name, r.error);
            }
        } else if (s.fail_streak.load(std::memory_order_relaxed) > 0) {
            log_->info("task '{}': recovered after {} failed run(s); back to every {}", name,
                       s.fail_streak.load(std::memory_order_relaxed),
                       detail::format_elapsed(Duration(s.interval_ns.load(std::memory_order_relaxed))));
            s.fail_streak.store(0, std::memory_order_relaxed);
            s.sit_out.store(0, std::memory_order_relaxed);
        }
        if (is_stop) {
            freed.push_back(m.slot);
            return true;
        }
        const RunResult result = timed_out   ? RunResult::timed_out
                                 : cancelled ? RunResult::cancelled
                                 : r.ok      ? RunResult::ok
                                             : RunResult::failed;
        record(w, s, m.slot, m.gen, start, coarse, cancelled ? std::max(to_ns(end), int64_t(1)) : 0, result, r, due,
               manual);
        s.runs.store(s.runs.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        const uint64_t prev = s.word.fetch_and(~uint64_t(kRunning), std::memory_order_acq_rel);
        if (!(flags_of(prev) & kRemoved)) return true;
        // Removed while running: remove() left the stop call to us. Make it now, on this worker.
        s.word.fetch_or(kRunning, std::memory_order_acq_rel);
        is_stop = true;
    }
}

int64_t Tickers::Impl::scan_workers(int64_t now) {
    int64_t next = INT64_MAX;
    std::vector<std::shared_ptr<Worker>> snapshot, returned;
    {
        std::lock_guard<std::mutex> lk(wmu_);
        // Abandoned workers whose stuck call has returned since (their thread has ended): joined now, not
        // at stop(), so that a thousand abandoned runs over time do not keep a thousand stacks.
        auto it = std::stable_partition(workers_.begin(), workers_.end(), [](const std::shared_ptr<Worker>& w) {
            return !(w->exited.load() && !w->retired.load() &&
                     (w->run_word.load(std::memory_order_acquire) & 3) == kGone);
        });
        returned.assign(std::make_move_iterator(it), std::make_move_iterator(workers_.end()));
        workers_.erase(it, workers_.end());
        snapshot = workers_;
    }
    for (auto& w : returned)
        if (w->thread.joinable()) w->thread.join();
    size_t replacements = 0;
    for (auto& wp : snapshot) {
        Worker& w = *wp;
        const uint64_t rw = w.run_word.load(std::memory_order_acquire);
        if ((rw & 3) != kBusy) continue;
        const uint64_t seq = rw >> 2;
        const int64_t deadline = w.deadline.load(std::memory_order_relaxed);
        const uint32_t si = call_slot(w.call.load(std::memory_order_relaxed));
        std::atomic_thread_fence(std::memory_order_acquire);
        if (w.run_word.load(std::memory_order_relaxed) != rw) continue;  // moved on meanwhile
        if (deadline == kUnstarted) continue;  // published, not claimed yet (inflight_ keeps us looking)
        Slot& s = slot(si);
        if (w.cancel_sent.load(std::memory_order_relaxed) != seq) {
            if (now < deadline) {
                next = std::min(next, deadline);
                continue;
            }
            w.cancel_sent.store(seq, std::memory_order_relaxed);  // before the cancel: the worker reads it after
            cancel_call(w, seq);
            log_->warn("task '{}': timeout of {} reached; cancellation requested", name_of(si),
                       detail::format_elapsed(s.timeout));
        }
        const int64_t abandon_at = add_sat(deadline, opt_.abandon_after.count());
        if (now < abandon_at) {
            next = std::min(next, abandon_at);
            continue;
        }
        uint64_t expected = rw;
        if (!w.run_word.compare_exchange_strong(expected, seq << 2 | kGone, std::memory_order_acq_rel)) continue;
        // Ours: the worker will not touch its slice again. Hand what it had not started to the others.
        const uint64_t prev = s.word.fetch_or(kAbandoned, std::memory_order_acq_rel);
        Batch* b = w.batch.load(std::memory_order_relaxed);
        const size_t cur = w.cursor.load(std::memory_order_relaxed), end = w.end.load(std::memory_order_relaxed);
        if (b && cur + 1 < end) {
            auto rest = std::make_shared<Batch>();
            rest->items.assign(b->items.begin() + long(cur + 1), b->items.begin() + long(end));
            rest->due = b->due;
            rest->missed = b->missed;
            rest->stop = b->stop;
            rest->manual = b->manual;
            push_batch(std::move(rest));
        }
        // The abandoned slice is settled (what ran before the stuck call, the stuck call, and the rest now
        // queued again): the stuck worker will not count any of it.
        const size_t begin = w.begin.load(std::memory_order_relaxed);
        if (b) done_items(end - begin);
        ++replacements;
        if (flags_of(prev) & kRemoved) abandoned_unfreed_.fetch_add(1, std::memory_order_relaxed);
        log_->error(
            "task '{}': ignored its cancellation for {} past its deadline; abandoned (it will not run "
            "again{}, its code stays loaded, a new worker replaces this one)",
            name_of(si), detail::format_elapsed(opt_.abandon_after),
            (flags_of(prev) & kRemoved) ? "" : " and gets no stop call");
        std::lock_guard<std::mutex> lk(mu_);
        stopped_cv_.notify_all();
        idle_cv_.notify_all();
    }
    for (size_t k = 0; k < replacements; ++k) spawn_worker();
    return next;
}

// ---- timer ----------------------------------------------------------------------------------------------

uint32_t Tickers::Impl::cohort_for(int64_t due, int64_t interval, bool aligned) {
    auto key = std::make_pair(due, aligned ? interval | kAlignedKey : interval);
    auto it = by_key_.find(key);
    if (it != by_key_.end()) return it->second;
    uint32_t id;
    if (!free_cohorts_.empty()) {
        id = free_cohorts_.back();
        free_cohorts_.pop_back();
    } else {
        id = uint32_t(cohorts_.size());
        cohorts_.emplace_back();
    }
    Cohort& c = cohorts_[id];
    c.due = due;
    c.interval = interval;
    c.members.clear();
    c.live = true;
    c.aligned = aligned;
    c.owed_missed = 0;
    c.last_due = c.last_wall = INT64_MIN;
    if (aligned) {
        // Before its first tick, the "previous" one is an interval earlier (backward steps compare with it).
        c.last_due = due - interval;  // due >= 0, interval <= max_duration: no overflow
        c.last_wall = add_sat(c.last_due, wall_offset_);
        ++aligned_cohorts_;
    }
    by_key_.emplace(key, id);
    heap_.push({due, id});
    return id;
}

void Tickers::Impl::retire_cohort(uint32_t id) {
    Cohort& c = cohorts_[id];
    c.live = false;
    if (c.aligned) --aligned_cohorts_;
    free_cohorts_.push_back(id);
}

void Tickers::Impl::drop_member(uint32_t si) {
    Slot& s = slot(si);
    if (s.cohort == kNoCohort) return;
    Cohort& c = cohorts_[s.cohort];
    const Member last = c.members.back();
    c.members[s.pos] = last;
    slot(last.slot).pos = s.pos;
    c.members.pop_back();
    s.cohort = kNoCohort;
}

// ---- wall clock (aligned cohorts) -----------------------------------------------------------------------

#if defined(__linux__)
// Wakes the timer when the wall clock is set or the machine resumes from a suspend: a CLOCK_REALTIME timerfd
// armed far in the future with TFD_TIMER_CANCEL_ON_SET, whose read() fails with ECANCELED on either (the
// kernel tells a resume as a clock set). Its thread sleeps in read() otherwise: no wake-up of its own.
class Tickers::Impl::WallStepWatch {
public:
    explicit WallStepWatch(std::function<void()> on_step) : on_step_(std::move(on_step)) {
        fd_ = ::timerfd_create(CLOCK_REALTIME, TFD_CLOEXEC);
        if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "timerfd_create");
        try {
            if (!arm()) throw std::system_error(errno, std::generic_category(), "timerfd_settime");
            thread_ = std::thread([this] { loop(); });
        } catch (...) {
            ::close(fd_);
            throw;
        }
    }
    ~WallStepWatch() {
        stop_.store(true);
        itimerspec soon{};
        soon.it_value.tv_nsec = 1;  // relative: expires at once, so read() returns and the loop sees stop_
        ::timerfd_settime(fd_, 0, &soon, nullptr);
        thread_.join();
        ::close(fd_);
    }
    WallStepWatch(const WallStepWatch&) = delete;
    WallStepWatch& operator=(const WallStepWatch&) = delete;

private:
    bool arm() {
        itimerspec far{};
        far.it_value.tv_sec = 4102444800;  // 2100-01-01T00:00:00Z: only ever cancelled
        return ::timerfd_settime(fd_, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, &far, nullptr) == 0;
    }
    // Every arm() is followed by a look at stop_ before the next read(): the destructor's expiry is never lost.
    void loop() {
        prctl(PR_SET_NAME, "tickhost-wall", 0, 0, 0);
        while (!stop_.load()) {
            uint64_t expirations;
            const ssize_t r = ::read(fd_, &expirations, sizeof expirations);
            if (stop_.load()) break;
            if (r < 0 && errno == EINTR) continue;
            if (r < 0 && errno != ECANCELED) break;  // cannot happen; steps are then seen at the next wake-up
            arm();
            if (r < 0) on_step_();  // ECANCELED: the wall clock was set, or the machine resumed
        }
    }
    std::function<void()> on_step_;
    int fd_ = -1;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};
#endif

int64_t Tickers::Impl::measure_wall_offset() const {
    // wall, monotonic, wall: the pair of wall reads brackets the monotonic one. A pair more than 20 us apart
    // (the thread was preempted between them) is read again, up to three times; the tightest one counts.
    int64_t best = 0, best_gap = INT64_MAX;
    for (int k = 0; k < 3 && best_gap > 20000; ++k) {
        const int64_t w1 = clock_->wall_now().time_since_epoch().count();
        const int64_t m = to_ns(clock_->now());
        const int64_t w2 = clock_->wall_now().time_since_epoch().count();
        const int64_t gap = add_sat(w2, -w1);
        if (gap < 0 || gap >= best_gap) continue;  // negative: the wall clock was set between the reads
        best_gap = gap;
        best = add_sat(add_sat(w1, gap / 2), -m);
    }
    if (best_gap == INT64_MAX) best = add_sat(clock_->wall_now().time_since_epoch().count(), -to_ns(clock_->now()));
    return best;
}

void Tickers::Impl::check_wall(int64_t now) {
#if defined(__linux__)
    if (steady_clock_ && !wall_watch_ && !wall_watch_failed_) {
        try {
            wall_watch_ = std::make_unique<WallStepWatch>([this] { kick_timer(); });
        } catch (const std::exception& e) {
            log_->warn(
                "aligned tasks: cannot watch the wall clock for steps ({}); a step is seen when the timer "
                "next wakes up",
                e.what());
            wall_watch_.reset();
            wall_watch_failed_ = true;  // not again
        }
    }
#endif
    const int64_t offset = measure_wall_offset();
    measured_offset_ = offset;
    const int64_t moved = add_sat(offset, -wall_offset_);
    if (moved > kStepTolerance || moved < -kStepTolerance) reanchor(now, offset);
}

void Tickers::Impl::reanchor(int64_t now, int64_t offset) {
    const int64_t moved = add_sat(offset, -wall_offset_);
    const int64_t wall = add_sat(now, offset);
    size_t tasks = 0;
    for (Cohort& c : cohorts_) {
        if (!c.live || !c.aligned || c.due == INT64_MAX) continue;
        tasks += c.members.size();
        const int64_t I = c.interval;
        const int64_t label = add_sat(c.due, wall_offset_);                 // its next tick's wall time, as planned
        const int64_t latest = add_sat(wall, -floor_mod(wall - label, I));  // the latest tick time <= wall
        int64_t next;
        if (latest >= label && latest > c.last_wall) {
            // Ticks were jumped over (a step ahead, a resume): the latest runs at once, late, like a tick the
            // timer was late for; those before it are counted as skipped. No burst.
            c.owed_missed += uint64_t((latest - label) / I);
            next = latest;
        } else {
            next = add_sat(latest, I);  // the first tick after the new wall time
            // Back in time: a tick that already ran is not run again sooner than an interval after that run.
            const int64_t earliest = add_sat(c.last_due, I);
            const int64_t due = add_sat(next, -offset);
            if (next <= c.last_wall && due < earliest) next = add_sat(next, mul_sat((earliest - due + I - 1) / I, I));
        }
        c.due = std::max<int64_t>(add_sat(next, -offset), 0);
    }
    wall_offset_ = offset;
    // New due times: the heap and the keys again. Cohorts that now share a key merge (unless a jump left them
    // different counts of skipped ticks to report: then they stay apart, and merge at a later tick).
    heap_.clear();
    by_key_.clear();
    for (uint32_t id = 0; id < cohorts_.size(); ++id) {
        Cohort& c = cohorts_[id];
        if (!c.live) continue;
        auto [it, fresh] = by_key_.emplace(c.key(), id);
        if (!fresh && cohorts_[it->second].owed_missed == c.owed_missed) {
            Cohort& o = cohorts_[it->second];
            for (const Member& m : c.members) {
                Slot& s = slot(m.slot);
                s.cohort = it->second;
                s.pos = uint32_t(o.members.size());
                o.members.push_back(m);
            }
            o.last_due = std::max(o.last_due, c.last_due);
            o.last_wall = std::max(o.last_wall, c.last_wall);
            c.members.clear();
            retire_cohort(id);
            continue;
        }
        heap_.push({c.due, id});
    }
    log_->info(
        "the wall clock moved by {} against the monotonic clock (a clock step, or a suspend); {} aligned "
        "task(s) re-anchored on it",
        (moved > 0 ? "+" : "") + detail::format_elapsed(Duration(moved)), tasks);
}

void Tickers::Impl::timer_apply(const std::vector<Op>& ops) {
    for (const Op& op : ops) {
        Slot& s = slot(op.index());
        if (!op.add()) {
            if (s.cohort != kNoCohort && cohorts_[s.cohort].members[s.pos].gen == op.gen) drop_member(op.slot);
            continue;
        }
        if (s.cohort != kNoCohort) drop_member(op.index());  // defensive: a stale membership
        int64_t due = op.due;
        if (op.aligned()) {
            // The first aligned cohort fixes the difference the others are mapped with (check_wall keeps it).
            if (aligned_cohorts_ == 0) wall_offset_ = measure_wall_offset();
            due = std::max<int64_t>(add_sat(op.due, -wall_offset_), 0);
        }
        const uint32_t id = cohort_for(due, s.interval_ns.load(std::memory_order_relaxed), op.aligned());
        Cohort& c = cohorts_[id];
        s.cohort = id;
        s.pos = uint32_t(c.members.size());
        c.members.push_back({op.index(), op.gen});
    }
}

void Tickers::Impl::timer_loop() {
#if defined(__linux__)
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);  // wake at the deadline, not up to 50 us after it
#endif
    std::vector<Op> incoming;
    const bool beats = opt_.heartbeat && opt_.heartbeat_interval > Duration::zero();
    int64_t next_beat = beats ? INT64_MIN : INT64_MAX;  // the first one at once
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
        incoming.swap(pending_);
        adds_told_ = false;
        if (timer_stop_) break;
        lk.unlock();

        timer_apply(incoming);
        incoming.clear();
        const int64_t now = to_ns(clock_->now());
        if (aligned_cohorts_ > 0) check_wall(now);  // before anything is dispatched: nothing runs early
        // A cohort at INT64_MAX has run out of time (its due saturated): it never comes due again.
        while (!heap_.empty() && heap_.top().due <= now && heap_.top().due != INT64_MAX) {
            const uint32_t id = heap_.top().id;
            Cohort& c = cohorts_[id];
            if (auto k = by_key_.find(c.key()); k != by_key_.end() && k->second == id) by_key_.erase(k);
            if (c.members.empty()) {  // everybody left: retire the cohort
                heap_.pop();
                retire_cohort(id);
                continue;
            }
            auto b = std::make_shared<Batch>();
            b->items = c.members;  // a copy: adds and drops may change the cohort while workers run this tick
            b->due = c.due;
            // Fixed rate on the absolute anchor; if we are more than an interval late, skip (and count)
            // the ticks already missed rather than firing them in a burst: this tick is the last one due.
            // 0 <= due <= now here, so due + k * interval <= now cannot overflow; the next one saturates.
            int64_t next = add_sat(c.due, c.interval);
            if (next <= now) {
                const int64_t missed = (now - c.due) / c.interval;  // >= 1
                b->due = c.due + missed * c.interval;               // <= now
                next = add_sat(b->due, c.interval);
                b->missed = uint32_t(std::min<int64_t>(missed, UINT32_MAX));
            }
            if (c.aligned) {
                b->missed = uint32_t(std::min<uint64_t>(uint64_t(b->missed) + c.owed_missed, UINT32_MAX));
                c.owed_missed = 0;
                c.last_due = b->due;
                c.last_wall = add_sat(b->due, wall_offset_);
            }
            c.due = next;
            auto other = by_key_.find(c.key());
            if (other != by_key_.end()) {
                // Another cohort (tasks added later on the same grid) is due then too: merge into it.
                Cohort& o = cohorts_[other->second];
                o.last_due = std::max(o.last_due, c.last_due);
                o.last_wall = std::max(o.last_wall, c.last_wall);
                for (const Member& m : c.members) {
                    Slot& s = slot(m.slot);
                    s.cohort = other->second;
                    s.pos = uint32_t(o.members.size());
                    o.members.push_back(m);
                }
                c.members.clear();
                heap_.pop();
                retire_cohort(id);
            } else {
                by_key_.emplace(c.key(), id);
                heap_.replace_top({next, id});
            }
            push_batch(std::move(b));
        }
        if (now >= next_beat) {
            try {
                opt_.heartbeat();
            } catch (...) {
            }
            next_beat = add_sat(now, std::min(opt_.heartbeat_interval, max_duration).count());
        }
        int64_t wake = std::min({heap_.empty() ? INT64_MAX : heap_.top().due, scan_workers(now), next_beat});
        // Calls queued or running may start (or have started since the scan) with a deadline as near as
        // min_timeout_: look again by then. Work arriving while idle kicks us (kick_timer).
        if (inflight_.load(std::memory_order_acquire) > 0) {
            const int64_t mt = min_timeout_.load(std::memory_order_relaxed);
            if (mt != INT64_MAX) wake = std::min(wake, add_sat(now, mt));
        }

        lk.lock();
        processed_until_ = now;
        processed_offset_ = aligned_cohorts_ > 0 ? std::optional<int64_t>(measured_offset_) : std::nullopt;
        idle_cv_.notify_all();
        if (!pending_.empty() || timer_stop_ || timer_kick_) {
            timer_kick_ = false;
            continue;
        }
        if (wake > to_ns(clock_->now())) {
            if (wake == INT64_MAX)
                timer_cv_.wait(lk);
            else
                clock_->wait_until(lk, timer_cv_, from_ns(wake));
        }
        timer_kick_ = false;
    }
    // Keep the schedule of tasks still registered (added during stop()) for the next start(): hand every
    // live member back as a pending add at its cohort's next due time, before the ops not yet applied.
    std::vector<Op> keep;
    for (uint32_t id = 0; id < cohorts_.size(); ++id) {
        Cohort& c = cohorts_[id];
        if (!c.live) continue;
        for (const Member& m : c.members) {
            slot(m.slot).cohort = kNoCohort;
            // An aligned task goes back by its wall-clock time: mapped again when the timer starts again.
            if (c.aligned)
                keep.push_back({add_sat(c.due, wall_offset_), m.slot | kAlignedOp, m.gen});
            else
                keep.push_back({c.due, m.slot, m.gen});
        }
    }
    keep.insert(keep.end(), incoming.begin(), incoming.end());
    keep.insert(keep.end(), pending_.begin(), pending_.end());
    pending_.swap(keep);
    cohorts_.clear();
    free_cohorts_.clear();
    by_key_.clear();
    heap_.clear();
    aligned_cohorts_ = 0;
    lk.unlock();
#if defined(__linux__)
    wall_watch_.reset();  // its thread may be kicking us: not with mu_ held
#endif
    clock_->forget(timer_cv_);  // a ManualClock may outlive this registry
}

// ---- lifecycle ------------------------------------------------------------------------------------------

void Tickers::Impl::spawn_worker() {
    auto w = std::make_shared<Worker>();
    auto self = shared_from_this();  // an abandoned worker keeps the registry alive until it returns
    w->thread = std::thread([self, w] { self->worker_loop(w); });
    std::lock_guard<std::mutex> lk(wmu_);
    workers_.push_back(std::move(w));
}

void Tickers::Impl::start_workers_locked() {
    if (workers_running_) return;
    {
        std::lock_guard<std::mutex> lk(qmu_);
        workers_stop_ = false;
    }
    for (size_t k = 0; k < nworkers_; ++k) spawn_worker();
    workers_running_ = true;
}

void Tickers::Impl::start_timer_locked() {
    if (timer_running_) return;
    {
        std::lock_guard<std::mutex> lk(mu_);
        timer_stop_ = false;
    }
    auto self = shared_from_this();
    timer_ = std::thread([self] { self->timer_loop(); });
    timer_running_ = true;
}

void Tickers::Impl::start() {
    std::lock_guard<std::mutex> lc(lifecycle_mu_);
    start_workers_locked();
    start_timer_locked();
}

bool Tickers::Impl::stop(Duration bound) {
    std::lock_guard<std::mutex> lc(lifecycle_mu_);
    {
        std::unique_lock<std::mutex> lk(mu_);
        if (active_ == 0 && !timer_running_ && !workers_running_) return true;
    }
    start_workers_locked();  // stop calls run on workers, even if start() was never called
    start_timer_locked();    // ... and need the timer for their deadlines
    // Mark every task removed at once and queue the stop calls as one batch the workers share.
    auto stops = std::make_shared<Batch>();
    stops->stop = true;
    size_t removed = 0, abandoned = 0;
    {
        const uint32_t n = slot_count_.load(std::memory_order_acquire);
        for (uint32_t i = 0; i < n; ++i) {
            Slot& s = slot(i);
            uint64_t w = s.word.load(std::memory_order_acquire);
            for (;;) {
                const uint32_t f = flags_of(w);
                if (!(f & kActive) || (f & kRemoved)) break;
                if (s.word.compare_exchange_weak(w, w | kRemoved | kRunning, std::memory_order_acq_rel)) {
                    ++removed;
                    if (f & kAbandoned) {
                        ++abandoned;
                        if (!(f & kRunning)) stops->items.push_back({i, gen_of(w)});  // freed below, no call
                    } else if (!(f & kRunning)) {
                        stops->items.push_back({i, gen_of(w)});
                    }
                    break;
                }
            }
        }
    }
    removed_unfreed_.fetch_add(removed, std::memory_order_relaxed);
    abandoned_unfreed_.fetch_add(abandoned, std::memory_order_relaxed);
    if (removed) cancel_removed_runs(0);  // the runs in flight: return now, the stop calls follow
    {
        // Abandoned tasks whose stuck call already returned get no stop call: free them directly.
        auto abandoned_now = [&](const Member& m) {
            return (flags_of(slot(m.slot).word.load(std::memory_order_acquire)) & kAbandoned) != 0;
        };
        std::vector<uint32_t> direct;
        for (const Member& m : stops->items)
            if (abandoned_now(m)) direct.push_back(m.slot);
        stops->items.erase(std::remove_if(stops->items.begin(), stops->items.end(), abandoned_now), stops->items.end());
        free_slots(direct);
    }
    if (!stops->items.empty()) {
        push_batch(stops);
        kick_timer();
    }
    // Wait for every stop call (abandoned calls count as done: nothing more will come of them).
    const auto until = std::chrono::steady_clock::now() + bound;
    bool clean;
    {
        std::unique_lock<std::mutex> lk(mu_);
        clean = stopped_cv_.wait_until(lk, until, [&] { return removed_unfreed_ == abandoned_unfreed_; });
        if (!clean) {
            const uint32_t n = slot_count_.load(std::memory_order_acquire);
            for (uint32_t i = 0; i < n; ++i) {
                const uint64_t w = slot(i).word.load(std::memory_order_acquire);
                const uint32_t f = flags_of(w);
                if (!(f & kActive) || !(f & kRemoved) || (f & kAbandoned)) continue;
                const auto a = activity_locked(i, gen_of(w));
                if (!a) continue;
                log_->error("task '{}': {} when the stop bound of {} ran out; left behind", name_of(i),
                            activity_text(*a), detail::format_elapsed(bound));
            }
        }
        timer_stop_ = true;
    }
    timer_cv_.notify_all();
    timer_.join();
    timer_running_ = false;
    std::deque<std::shared_ptr<Batch>> dropped;
    {
        std::lock_guard<std::mutex> lk(qmu_);
        workers_stop_ = true;
        if (!clean) {
            dropped.swap(queue_);
            if (!stop_pending_.empty()) {
                auto b = std::make_shared<Batch>();
                b->stop = true;
                b->items.swap(stop_pending_);
                dropped.push_back(std::move(b));
            }
        }
    }
    qcv_.notify_all();
    std::vector<std::shared_ptr<Worker>> ws;
    {
        std::lock_guard<std::mutex> lk(wmu_);
        ws.swap(workers_);
    }
    if (!clean) {
        // The timer is gone: abandon what is still executing, exactly as scan_workers() would, so the
        // detached thread makes no stop call after we return and exits instead of rejoining the pool.
        for (auto& w : ws) {
            uint64_t rw = w->run_word.load(std::memory_order_acquire);
            // A run published but not claimed yet is withdrawn or started within moments: wait for which
            // (the worker withdraws it with a plain store, so it must not be abandoned while unstarted).
            for (int k = 0; k < 1000 && (rw & 3) == kBusy && w->deadline.load(std::memory_order_relaxed) == kUnstarted;
                 ++k) {
                std::this_thread::sleep_for(std::chrono::microseconds(100));
                rw = w->run_word.load(std::memory_order_acquire);
            }
            if ((rw & 3) != kBusy || w->deadline.load(std::memory_order_relaxed) == kUnstarted) continue;
            if (w->run_word.compare_exchange_strong(rw, (rw & ~uint64_t(3)) | kGone, std::memory_order_acq_rel)) {
                Slot& s = slot(call_slot(w->call.load(std::memory_order_relaxed)));
                const uint64_t prev = s.word.fetch_or(kAbandoned, std::memory_order_acq_rel);
                cancel_call(*w, rw >> 2);
                if (flags_of(prev) & kRemoved) abandoned_unfreed_.fetch_add(1, std::memory_order_relaxed);
            }
        }
        // Calls never started: nothing executes them any more, so their slots are freed without a stop call.
        std::vector<uint32_t> direct;
        for (auto& b : dropped) {
            const size_t from = std::min(b->next.load(), b->items.size());
            for (size_t k = from; k < b->items.size(); ++k) {
                const Member m = b->items[k];
                Slot& s = slot(m.slot);
                const uint64_t w = s.word.load(std::memory_order_acquire);
                if (gen_of(w) != m.gen || !(flags_of(w) & kActive)) continue;
                // A stop batch's and a run_now() batch's items hold RUNNING: nobody else will clear it or make
                // their stop call.
                const bool holds_running = b->stop || b->manual;
                if (!(flags_of(w) & kRemoved)) {
                    if (holds_running)
                        s.word.fetch_and(~uint64_t(kRunning), std::memory_order_acq_rel);  // added during stop()
                    continue;
                }
                if (!holds_running) continue;
                log_->error("task '{}': stop bound ran out before its stop call started; no stop call made",
                            name_of(m.slot));
                direct.push_back(m.slot);
            }
            inflight_.fetch_sub(int64_t(b->items.size() - std::min(b->next.load(), b->items.size())),
                                std::memory_order_relaxed);
        }
        free_slots(direct);
    }
    for (auto& w : ws) {
        const bool stuck = (w->run_word.load(std::memory_order_acquire) & 3) == kGone;
        if (stuck && !w->exited) {
            w->retired = true;
            w->thread.detach();  // it holds a reference to this registry; it ends when its call returns
        } else {
            w->thread.join();
        }
    }
    workers_running_ = false;
    return clean;
}

// ---- Tickers --------------------------------------------------------------------------------------------

Tickers::Tickers() : Tickers(Options{}) {}

Tickers::Tickers(Options options) : impl_(std::make_shared<Impl>(std::move(options))) {}

Tickers::Tickers(Options options, std::vector<std::pair<Duration, TickTask>> tasks) : Tickers(std::move(options)) {
    add_all(std::move(tasks));
}

Tickers::~Tickers() {
    if (impl_) impl_->stop(std::chrono::seconds(30));
}

TaskId Tickers::add(Duration interval, TickTask task) {
    const TimePoint first = impl_->clock_->now() + interval;
    return impl_->add(interval, std::move(task), to_ns(first), false);
}

TaskId Tickers::add(Duration interval, TickTask task, TimePoint first_due) {
    return impl_->add(interval, std::move(task), to_ns(first_due), false);
}

TaskId Tickers::add(const Schedule& sc, TickTask task) {
    const Duration I = sc.interval;
    if (I <= Duration::zero() || I > max_duration)
        throw std::invalid_argument("tickers: task '" + task.name + "': interval must be > 0 and at most 365 days");
    if (sc.offset < Duration::zero() || sc.offset > I)
        throw std::invalid_argument("tickers: task '" + task.name + "': offset must be within 0..interval");
    if (!sc.align) {
        const TimePoint anchor = sc.anchor ? *sc.anchor : impl_->clock_->now();
        return impl_->add(I, std::move(task), add_sat(to_ns(anchor), (sc.offset + I).count()), false);
    }
    // The first wall-clock time after now that is a multiple of the interval plus the offset.
    const int64_t wall = impl_->clock_->wall_now().time_since_epoch().count();
    const int64_t first = add_sat(add_sat(wall, -floor_mod(wall - sc.offset.count(), I.count())), I.count());
    return impl_->add(I, std::move(task), first, true);
}

std::vector<TaskId> Tickers::add_all(std::vector<std::pair<Duration, TickTask>> tasks) {
    std::vector<TaskId> ids;
    ids.reserve(tasks.size());
    for (auto& [interval, task] : tasks) ids.push_back(add(interval, std::move(task)));
    return ids;
}

bool Tickers::remove(TaskId id) { return impl_->remove(id); }

StopState Tickers::wait_stopped(TaskId id, Duration bound) { return impl_->wait_stopped(id, bound); }

void Tickers::start() { impl_->start(); }

bool Tickers::stop(Duration bound) { return impl_->stop(bound); }

bool Tickers::running() const { return impl_->timer_running_; }

std::optional<TaskStats> Tickers::stats(TaskId id) const {
    const uint32_t i = slot_of(id), gen = gen_of_id(id);
    if (gen == 0 || i >= impl_->slot_count_.load(std::memory_order_acquire)) return std::nullopt;
    return impl_->stats_of(i, gen, to_ns(impl_->clock_->now()));
}

RunNow Tickers::run_now(TaskId id, uint64_t* runs_before) { return impl_->run_now(id, runs_before); }

std::vector<TaskSnapshot> Tickers::snapshot() const {
    std::vector<TaskSnapshot> out;
    const int64_t now = to_ns(impl_->clock_->now());
    const uint32_t n = impl_->slot_count_.load(std::memory_order_acquire);
    // In chunks: the registry lock (which the timer and add() take) is never held for long.
    constexpr uint32_t kChunk = 1024;
    for (uint32_t lo = 0; lo < n; lo += kChunk) {
        std::lock_guard<std::mutex> lk(impl_->mu_);
        for (uint32_t i = lo; i < std::min(n, lo + kChunk); ++i)
            impl_->snapshot_locked(i, gen_of(impl_->slot(i).word.load(std::memory_order_acquire)), now, out);
    }
    return out;
}

std::vector<TaskSnapshot> Tickers::snapshot(const std::vector<TaskId>& ids) const {
    std::vector<TaskSnapshot> out;
    out.reserve(ids.size());
    const int64_t now = to_ns(impl_->clock_->now());
    const uint32_t n = impl_->slot_count_.load(std::memory_order_acquire);
    constexpr size_t kChunk = 1024;
    for (size_t lo = 0; lo < ids.size(); lo += kChunk) {
        std::lock_guard<std::mutex> lk(impl_->mu_);
        for (size_t k = lo; k < std::min(ids.size(), lo + kChunk); ++k) {
            const uint32_t i = slot_of(ids[k]), gen = gen_of_id(ids[k]);
            if (gen != 0 && i < n) impl_->snapshot_locked(i, gen, now, out);
        }
    }
    return out;
}

std::optional<TaskActivity> Tickers::activity(TaskId id) const {
    const uint32_t i = slot_of(id), gen = gen_of_id(id);
    if (gen == 0 || i >= impl_->slot_count_.load(std::memory_order_acquire)) return std::nullopt;
    std::lock_guard<std::mutex> lk(impl_->mu_);  // the slot is neither freed nor reused meanwhile
    return impl_->activity_locked(i, gen);
}

size_t Tickers::size() const {
    std::lock_guard<std::mutex> lk(impl_->mu_);
    return impl_->active_ - impl_->removed_unfreed_.load();
}

const Clock& Tickers::clock() const { return *impl_->clock_; }

size_t Tickers::worker_count() const { return impl_->nworkers_; }

bool Tickers::wait_idle(std::chrono::milliseconds bound) {
    const auto until = std::chrono::steady_clock::now() + bound;
    impl_->idle_waiters_.fetch_add(1, std::memory_order_acq_rel);
    struct Leave {
        std::atomic<int>& n;
        ~Leave() { n.fetch_sub(1, std::memory_order_acq_rel); }
    } leave{impl_->idle_waiters_};
    std::unique_lock<std::mutex> lk(impl_->mu_);
    for (;;) {
        const int64_t now = to_ns(impl_->clock_->now());
        // With aligned tasks, a step of the wall clock (which leaves now() where it is) is work too.
        auto wall_handled = [&] {
            if (!impl_->processed_offset_) return true;
            const int64_t moved = *impl_->processed_offset_ - impl_->measure_wall_offset();
            return moved <= kStepTolerance && moved >= -kStepTolerance;
        };
        const bool timer_caught_up =
            !impl_->timer_running_ || (impl_->processed_until_ >= now && impl_->pending_.empty() && wall_handled());
        if (timer_caught_up && impl_->inflight_.load(std::memory_order_acquire) <= 0) return true;
        if (!timer_caught_up) impl_->timer_cv_.notify_one();
        const auto step = std::min(until, std::chrono::steady_clock::now() + std::chrono::milliseconds(20));
        if (impl_->idle_cv_.wait_until(lk, step) == std::cv_status::timeout && std::chrono::steady_clock::now() >= until)
            return false;
    }
}

}  // namespace tickhost
