// Tickers: one timer thread (4-ary min-heap of {due, slot, generation}) and a bounded worker pool.
//
// A slot's life is one 64-bit atomic word: generation (high 32 bits) + flags (low 32 bits). Packing both
// lets the timer's "dispatch if not running" be a single CAS that fails if the slot was removed or reused
// meanwhile, and makes "exactly one stop call" a matter of who clears or sets which bit first:
//   - the timer sets RUNNING when it dispatches a run (CAS; skipped and counted if already RUNNING);
//   - a worker clears RUNNING when the run returns; if REMOVED was set meanwhile, it makes the stop call;
//   - remove() sets REMOVED; if RUNNING was not set, it queues the stop call itself.
// The slot is freed (generation + 1, onto the free list) only after its stop call returned.
#include <tickhost/logging.hpp>
#include <tickhost/tickers.hpp>

#include <algorithm>
#include <cassert>
#include <deque>
#include <stdexcept>
#include <thread>

#include <spdlog/spdlog.h>

#include "time_format.hpp"

#if defined(__linux__)
#include <sys/prctl.h>
#endif

namespace tickhost {

// ---- ManualClock ----------------------------------------------------------------------------------------

ManualClock::ManualClock(TimePoint start) : now_(start) {}

TimePoint ManualClock::now() const {
    std::lock_guard<std::mutex> lk(mu_);
    return now_;
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

// ---- Implementation -------------------------------------------------------------------------------------

namespace {

constexpr uint32_t kActive = 1u;     // holds a task (set by add, cleared when freed)
constexpr uint32_t kRunning = 2u;    // a run or the stop call is queued or executing
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

struct HeapEntry {
    int64_t due;  // ns since the clock's epoch
    uint32_t slot;
    uint32_t gen;
};

// 4-ary min-heap on `due`: shallower than a binary heap, and its four children share a cache line.
class DueHeap {
public:
    bool empty() const { return v_.empty(); }
    size_t size() const { return v_.size(); }
    const HeapEntry& top() const { return v_.front(); }
    void push(const HeapEntry& e) {
        v_.push_back(e);
        sift_up(v_.size() - 1);
    }
    void pop() {
        v_.front() = v_.back();
        v_.pop_back();
        if (!v_.empty()) sift_down(0);
    }
    void replace_top(const HeapEntry& e) {
        v_.front() = e;
        sift_down(0);
    }
    void clear() { v_.clear(); }
    std::vector<HeapEntry> take() { return std::move(v_); }

private:
    void sift_up(size_t i) {
        HeapEntry e = v_[i];
        while (i > 0) {
            size_t p = (i - 1) / 4;
            if (v_[p].due <= e.due) break;
            v_[i] = v_[p];
            i = p;
        }
        v_[i] = e;
    }
    void sift_down(size_t i) {
        HeapEntry e = v_[i];
        const size_t n = v_.size();
        for (;;) {
            size_t c = 4 * i + 1;
            if (c >= n) break;
            size_t best = c;
            size_t end = std::min(c + 4, n);
            for (size_t k = c + 1; k < end; ++k)
                if (v_[k].due < v_[best].due) best = k;
            if (v_[best].due >= e.due) break;
            v_[i] = v_[best];
            i = best;
        }
        v_[i] = e;
    }
    std::vector<HeapEntry> v_;
};

int64_t to_ns(TimePoint t) { return t.time_since_epoch().count(); }
TimePoint from_ns(int64_t ns) { return TimePoint(Duration(ns)); }

}  // namespace

struct Slot {
    std::atomic<uint64_t> word{pack(1, 0)};
    std::atomic<bool> cancel{false};
    // Written by add() before the ID is published; read-only while the slot holds this task.
    TickTask task;
    std::atomic<int64_t> interval_ns{0};  // atomic: the timer may read it while a stale entry is dropped
    Duration timeout{0};
    std::atomic<uint64_t> runs{0}, failures{0}, skipped{0}, timeouts{0};
};

struct Job {
    enum Kind : uint32_t { run, stop };
    Kind kind;
    uint32_t slot;
    uint32_t gen;
};

// What one worker is executing, for the timer's deadline scan. Guarded by `mu`.
struct Worker {
    std::thread thread;
    std::mutex mu;
    bool busy = false;
    uint32_t slot = 0;
    TimePoint deadline{};
    bool cancel_sent = false;
    bool abandoned = false;
    std::atomic<bool> exited{false};
    std::atomic<bool> retired{false};  // detached by stop(): must not rejoin the pool after a restart
};

struct Tickers::Impl : std::enable_shared_from_this<Tickers::Impl> {
    explicit Impl(Options o);

    Slot& slot(uint32_t i) const { return segs_[i >> kSegBits][i & (kSegSize - 1)]; }
    TaskId add(Duration interval, TickTask task, TimePoint first_due);
    bool remove(TaskId id);
    StopState wait_stopped(TaskId id, Duration bound);
    void free_slot(uint32_t i);

    void start();
    bool stop(Duration bound);
    void start_workers_locked();  // lifecycle_mu_ held
    void spawn_worker();

    void timer_loop();
    void worker_loop(std::shared_ptr<Worker> self);
    void push_jobs(const Job* jobs, size_t n);
    // Executes one job; false if this worker was abandoned during it (the thread must then exit).
    bool execute(Worker& w, Job job);
    // Scans the workers' current calls: cancels at the deadline, abandons past abandon_after.
    // Returns the earliest time the scan must run again.
    int64_t scan_workers(int64_t now);
    void notify_timer_if_earlier(int64_t when);

    Options opt_;
    std::shared_ptr<Clock> clock_;
    std::shared_ptr<spdlog::logger> log_;
    size_t nworkers_;

    // Registry: slot storage, free list, timer hand-off. Never held while task code runs.
    mutable std::mutex mu_;
    std::condition_variable timer_cv_;    // wakes the timer (new earlier due time, stop)
    std::condition_variable stopped_cv_;  // a slot was freed or abandoned
    std::condition_variable idle_cv_;     // for wait_idle
    std::unique_ptr<Slot[]> segs_[kMaxSegs];
    uint32_t slot_count_ = 0;
    std::vector<uint32_t> free_;
    std::vector<HeapEntry> pending_;  // added since the timer last looked
    size_t active_ = 0;               // tasks added and not yet freed
    size_t removed_unfreed_ = 0;      // removed, stop call not yet returned
    bool timer_stop_ = false;
    bool timer_kick_ = false;  // a worker started a call whose deadline is before the timer's plan
    int64_t processed_until_ = INT64_MIN;  // the clock time the timer last handled
    std::atomic<int64_t> planned_wake_{INT64_MAX};

    // Worker queue.
    std::mutex qmu_;
    std::condition_variable qcv_;
    std::deque<Job> queue_;
    bool workers_stop_ = false;
    std::atomic<int64_t> inflight_{0};  // jobs queued or executing (abandoned ones excluded)

    // Workers (timer scans them; replaced when abandoned).
    std::mutex wmu_;
    std::vector<std::shared_ptr<Worker>> workers_;

    // Lifecycle.
    std::mutex lifecycle_mu_;
    std::thread timer_;
    std::atomic<bool> timer_running_{false};
    bool workers_running_ = false;
};

Tickers::Impl::Impl(Options o) : opt_(std::move(o)) {
    clock_ = opt_.clock ? opt_.clock : std::make_shared<SteadyClock>();
    log_ = opt_.logger ? opt_.logger : get_logger("scheduler");
    nworkers_ = opt_.workers ? opt_.workers : std::max(1u, std::thread::hardware_concurrency());
    if (opt_.default_timeout <= Duration::zero()) opt_.default_timeout = std::chrono::seconds(10);
    if (opt_.abandon_after < Duration::zero()) opt_.abandon_after = Duration::zero();
}

TaskId Tickers::Impl::add(Duration interval, TickTask task, TimePoint first_due) {
    if (interval <= Duration::zero()) throw std::invalid_argument("tickers: task '" + task.name + "': interval must be > 0");
    if (task.timeout < Duration::zero()) throw std::invalid_argument("tickers: task '" + task.name + "': timeout must be >= 0");
    if (!task.fn) throw std::invalid_argument("tickers: task '" + task.name + "' has no function");
    // Far beyond any useful schedule, and keeps due/deadline arithmetic clear of int64 overflow.
    constexpr Duration kMaxPeriod = std::chrono::hours(24 * 365 * 100);
    if (interval > kMaxPeriod || task.timeout > kMaxPeriod)
        throw std::invalid_argument("tickers: task '" + task.name + "': interval and timeout must be under 100 years");
    const TimePoint now = clock_->now();
    if (first_due > now + kMaxPeriod) first_due = now + kMaxPeriod;
    std::unique_lock<std::mutex> lk(mu_);
    uint32_t i;
    if (!free_.empty()) {
        i = free_.back();
        free_.pop_back();
    } else {
        if (slot_count_ == kSegSize * kMaxSegs) throw std::length_error("tickers: too many tasks");
        i = slot_count_++;
        if (!segs_[i >> kSegBits]) segs_[i >> kSegBits].reset(new Slot[kSegSize]);
    }
    Slot& s = slot(i);
    uint32_t gen = gen_of(s.word.load(std::memory_order_relaxed));
    s.task = std::move(task);
    s.interval_ns.store(interval.count(), std::memory_order_relaxed);
    s.timeout = s.task.timeout > Duration::zero() ? s.task.timeout : opt_.default_timeout;
    s.cancel.store(false, std::memory_order_relaxed);
    s.runs.store(0, std::memory_order_relaxed);
    s.failures.store(0, std::memory_order_relaxed);
    s.skipped.store(0, std::memory_order_relaxed);
    s.timeouts.store(0, std::memory_order_relaxed);
    s.word.store(pack(gen, kActive), std::memory_order_release);
    ++active_;
    bool wake = pending_.empty();
    pending_.push_back({to_ns(first_due), i, gen});
    lk.unlock();
    // The timer drains everything pending when it wakes, so one notify per batch of adds is enough.
    if (wake) timer_cv_.notify_one();
    return make_id(i, gen);
}

bool Tickers::Impl::remove(TaskId id) {
    const uint32_t i = slot_of(id), gen = gen_of_id(id);
    std::unique_lock<std::mutex> lk(mu_);
    if (gen == 0 || i >= slot_count_) return false;
    Slot& s = slot(i);
    uint64_t w = s.word.load(std::memory_order_acquire);
    for (;;) {
        if (gen_of(w) != gen || !(flags_of(w) & kActive) || (flags_of(w) & kRemoved)) return false;
        if (s.word.compare_exchange_weak(w, w | kRemoved | kRunning, std::memory_order_acq_rel)) break;
    }
    ++removed_unfreed_;
    const uint32_t f = flags_of(w);
    if (f & kAbandoned) {
        // No stop call. If its stuck call is still going (RUNNING), the worker frees the slot when it
        // returns; if it already returned, nobody else will: free it here.
        log_->warn("task '{}' removed while abandoned: no stop call will be made", s.task.name);
        stopped_cv_.notify_all();
        lk.unlock();
        if (!(f & kRunning)) free_slot(i);
        return true;
    }
    lk.unlock();
    // RUNNING was clear: nobody will make the stop call unless we queue it. Otherwise the worker that
    // holds the run makes it when the run returns (we set RUNNING again above harmlessly: it was set).
    if (!(f & kRunning)) {
        Job j{Job::stop, i, gen};
        push_jobs(&j, 1);
    }
    return true;
}

void Tickers::Impl::free_slot(uint32_t i) {
    Slot& s = slot(i);
    // The task's callable is destroyed before waiters are told: whoever wait_stopped() for it may then
    // rely on holding the last reference to what the callable captured (a plugin library).
    TickTask dead;
    {
        std::lock_guard<std::mutex> lk(mu_);
        uint64_t w = s.word.load(std::memory_order_relaxed);
        uint32_t gen = gen_of(w);
        dead = std::move(s.task);  // destroy the callable outside the lock
        s.task = TickTask{};
        --active_;
        --removed_unfreed_;
        if (gen == UINT32_MAX) {
            s.word.store(pack(gen, kRemoved), std::memory_order_release);  // retired: the ID never comes back
        } else {
            s.word.store(pack(gen + 1, 0), std::memory_order_release);
            free_.push_back(i);
        }
    }
    dead = TickTask{};
    stopped_cv_.notify_all();
}

StopState Tickers::Impl::wait_stopped(TaskId id, Duration bound) {
    const uint32_t i = slot_of(id), gen = gen_of_id(id);
    std::unique_lock<std::mutex> lk(mu_);
    if (gen == 0 || i >= slot_count_) return StopState::unknown;
    Slot& s = slot(i);
    auto state = [&]() -> std::optional<StopState> {
        uint64_t w = s.word.load(std::memory_order_acquire);
        if (gen_of(w) != gen || !(flags_of(w) & kActive)) return StopState::stopped;
        if (flags_of(w) & kAbandoned) return StopState::abandoned;
        return std::nullopt;
    };
    // Real time: the bound protects the caller even on a ManualClock.
    auto until = std::chrono::steady_clock::now() + bound;
    for (;;) {
        if (auto st = state()) return *st;
        if (stopped_cv_.wait_until(lk, until) == std::cv_status::timeout) {
            if (auto st = state()) return *st;
            return StopState::timed_out;
        }
    }
}

void Tickers::Impl::push_jobs(const Job* jobs, size_t n) {
    if (n == 0) return;
    inflight_.fetch_add(int64_t(n), std::memory_order_relaxed);
    {
        std::lock_guard<std::mutex> lk(qmu_);
        queue_.insert(queue_.end(), jobs, jobs + n);
    }
    if (n == 1)
        qcv_.notify_one();
    else
        qcv_.notify_all();
}

// The timer stores planned_wake_ before it scans the workers, and a worker publishes its deadline (under
// its own mutex) before it loads planned_wake_: so either the scan sees the new deadline or the worker sees
// the plan and kicks the timer. INT64_MIN means "awake, will scan".
void Tickers::Impl::notify_timer_if_earlier(int64_t when) {
    if (when < planned_wake_.load(std::memory_order_seq_cst)) {
        std::lock_guard<std::mutex> lk(mu_);
        timer_kick_ = true;
        timer_cv_.notify_one();
    }
}

void Tickers::Impl::worker_loop(std::shared_ptr<Worker> self) {
    std::vector<Job> batch;
    for (;;) {
        batch.clear();
        {
            std::unique_lock<std::mutex> lk(qmu_);
            qcv_.wait(lk, [&] { return workers_stop_ || self->retired || !queue_.empty(); });
            if (queue_.empty() || self->retired) break;  // stopping and drained, or detached by stop()
            // One job at a time: a job batched behind a call that gets abandoned would be stranded on the
            // stuck thread (RUNNING never cleared, inflight_ never drained).
            size_t take = 1;
            for (size_t k = 0; k < take; ++k) {
                batch.push_back(queue_.front());
                queue_.pop_front();
            }
            if (!queue_.empty()) qcv_.notify_one();
        }
        for (size_t k = 0; k < batch.size(); ++k) {
            if (!execute(*self, batch[k])) {
                // Abandoned (its job was already uncounted by the timer): give the rest of our batch back
                // to the pool and let this thread end.
                if (k + 1 < batch.size()) {
                    std::lock_guard<std::mutex> lk(qmu_);
                    queue_.insert(queue_.begin(), batch.begin() + long(k + 1), batch.end());
                    qcv_.notify_all();
                }
                self->exited = true;
                return;
            }
            if (inflight_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
                std::lock_guard<std::mutex> lk(mu_);
                idle_cv_.notify_all();
            }
        }
    }
    self->exited = true;
}

bool Tickers::Impl::execute(Worker& w, Job job) {
    Slot& s = slot(job.slot);
    bool is_stop = job.kind == Job::stop;
    if (!is_stop) {
        uint64_t word = s.word.load(std::memory_order_acquire);
        if (gen_of(word) != job.gen) return true;  // cannot happen while RUNNING is ours; defensive
        if (flags_of(word) & kRemoved) is_stop = true;  // removed after dispatch: no new run, only the stop call
    }
    const TaskId id = make_id(job.slot, job.gen);
    for (;;) {
        const TimePoint start = clock_->now();
        const TimePoint deadline = start + s.timeout;
        s.cancel.store(false, std::memory_order_relaxed);
        {
            std::lock_guard<std::mutex> lk(w.mu);
            w.busy = true;
            w.slot = job.slot;
            w.deadline = deadline;
            w.cancel_sent = false;
        }
        notify_timer_if_earlier(to_ns(deadline));

        RunContext ctx(id, s.task.name, deadline, *clock_, s.cancel);
        TaskResult r;
        try {
            r = s.task.fn(ctx, is_stop);
        } catch (const std::exception& e) {
            r = TaskResult::failure(std::string("exception: ") + e.what());
        } catch (...) {
            r = TaskResult::failure("unknown exception");
        }
        const TimePoint end = clock_->now();
        bool abandoned;
        {
            std::lock_guard<std::mutex> lk(w.mu);
            w.busy = false;
            abandoned = w.abandoned;
        }
        if (abandoned) {
            log_->warn("task '{}': abandoned {} returned after {}", s.task.name, is_stop ? "stop call" : "run",
                       detail::format_elapsed(end - start));
            // The code is no longer executing; a removed slot can now be freed. No stop call: the design
            // promises none to an abandoned task, and its owner may have given up on it.
            // Clear RUNNING: a later remove() then knows the call returned and frees the slot itself.
            uint64_t prev = s.word.fetch_and(~uint64_t(kRunning), std::memory_order_acq_rel);
            if (flags_of(prev) & kRemoved) free_slot(job.slot);
            return false;
        }
        if (end >= deadline) {
            s.timeouts.fetch_add(1, std::memory_order_relaxed);
            log_->error("task '{}': {} took {}, past its timeout of {}", s.task.name, is_stop ? "stop call" : "run",
                        detail::format_elapsed(end - start), detail::format_elapsed(s.timeout));
        }
        if (!r.ok) {
            if (!is_stop) s.failures.fetch_add(1, std::memory_order_relaxed);
            log_->error("task '{}': {} failed: {}", s.task.name, is_stop ? "stop call" : "run", r.error);
        }
        if (is_stop) {
            free_slot(job.slot);
            return true;
        }
        s.runs.fetch_add(1, std::memory_order_relaxed);
        uint64_t prev = s.word.fetch_and(~uint64_t(kRunning), std::memory_order_acq_rel);
        if (!(flags_of(prev) & kRemoved)) return true;
        // Removed while running: remove() left the stop call to us. Make it now, on this worker.
        s.word.fetch_or(kRunning, std::memory_order_acq_rel);
        is_stop = true;
    }
}

int64_t Tickers::Impl::scan_workers(int64_t now) {
    int64_t next = INT64_MAX;
    std::vector<std::shared_ptr<Worker>> snapshot;
    {
        std::lock_guard<std::mutex> lk(wmu_);
        snapshot = workers_;
    }
    size_t replacements = 0;
    for (auto& wp : snapshot) {
        Worker& w = *wp;
        std::lock_guard<std::mutex> lk(w.mu);
        if (!w.busy || w.abandoned) continue;
        Slot& s = slot(w.slot);
        const int64_t deadline = to_ns(w.deadline);
        if (!w.cancel_sent) {
            if (now >= deadline) {
                s.cancel.store(true, std::memory_order_relaxed);
                w.cancel_sent = true;
                log_->warn("task '{}': timeout of {} reached; cancellation requested", s.task.name,
                           detail::format_elapsed(s.timeout));
            } else {
                next = std::min(next, deadline);
                continue;
            }
        }
        const int64_t abandon_at = deadline + opt_.abandon_after.count();
        if (now >= abandon_at) {
            w.abandoned = true;
            uint64_t prev = s.word.fetch_or(kAbandoned, std::memory_order_acq_rel);
            inflight_.fetch_sub(1, std::memory_order_relaxed);
            ++replacements;
            log_->error("task '{}': ignored its cancellation for {} past its deadline; abandoned (it will not run "
                        "again{}, its code stays loaded, a new worker replaces this one)",
                        s.task.name, detail::format_elapsed(opt_.abandon_after),
                        (flags_of(prev) & kRemoved) ? "" : " and gets no stop call");
            std::lock_guard<std::mutex> slk(mu_);
            stopped_cv_.notify_all();
            idle_cv_.notify_all();
        } else {
            next = std::min(next, abandon_at);
        }
    }
    for (size_t k = 0; k < replacements; ++k) spawn_worker();
    return next;
}

void Tickers::Impl::timer_loop() {
#if defined(__linux__)
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);  // wake at the deadline, not up to 50 us after it
#endif
    DueHeap heap;
    std::vector<HeapEntry> incoming;
    std::vector<Job> batch;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
        incoming.swap(pending_);
        if (timer_stop_) {
            // Keep the schedule of tasks still registered (added during stop()) for the next start().
            pending_.swap(incoming);
            for (const HeapEntry& e : heap.take()) pending_.push_back(e);
            break;
        }
        lk.unlock();

        for (const HeapEntry& e : incoming) heap.push(e);
        incoming.clear();
        const int64_t now = to_ns(clock_->now());
        batch.clear();
        while (!heap.empty() && heap.top().due <= now) {
            const HeapEntry e = heap.top();
            Slot& s = slot(e.slot);
            uint64_t w = s.word.load(std::memory_order_acquire);
            const uint32_t f = flags_of(w);
            if (gen_of(w) != e.gen || !(f & kActive) || (f & (kRemoved | kAbandoned))) {
                heap.pop();  // removed or reused since this entry was made
                continue;
            }
            if (f & kRunning) {
                s.skipped.fetch_add(1, std::memory_order_relaxed);  // never overlap a task with itself
            } else if (s.word.compare_exchange_strong(w, w | kRunning, std::memory_order_acq_rel)) {
                batch.push_back({Job::run, e.slot, e.gen});
            } else {
                continue;  // the word changed under us (removed?): look at this entry again
            }
            // Fixed rate on the absolute anchor; if we are more than an interval late, skip (and count)
            // the ticks already missed rather than firing them in a burst.
            const int64_t interval = s.interval_ns.load(std::memory_order_relaxed);
            int64_t next = e.due + interval;
            if (next <= now) {
                const int64_t missed = (now - next) / interval + 1;
                next += missed * interval;
                s.skipped.fetch_add(uint64_t(missed), std::memory_order_relaxed);
            }
            heap.replace_top({next, e.slot, e.gen});
        }
        push_jobs(batch.data(), batch.size());
        const int64_t heap_wake = heap.empty() ? INT64_MAX : heap.top().due;
        planned_wake_.store(heap_wake, std::memory_order_seq_cst);  // before the scan: see notify_timer_if_earlier
        const int64_t wake = std::min(heap_wake, scan_workers(now));

        lk.lock();
        processed_until_ = now;
        idle_cv_.notify_all();
        if (!pending_.empty() || timer_stop_ || timer_kick_) {
            timer_kick_ = false;
            planned_wake_.store(INT64_MIN, std::memory_order_seq_cst);
            continue;
        }
        planned_wake_.store(wake, std::memory_order_seq_cst);
        if (wake > to_ns(clock_->now())) {
            if (wake == INT64_MAX)
                timer_cv_.wait(lk);
            else
                clock_->wait_until(lk, timer_cv_, from_ns(wake));
        }
        timer_kick_ = false;
        planned_wake_.store(INT64_MIN, std::memory_order_seq_cst);  // awake: will scan the workers
    }
    lk.unlock();
    clock_->forget(timer_cv_);  // a ManualClock may outlive this registry
}

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

void Tickers::Impl::start() {
    std::lock_guard<std::mutex> lc(lifecycle_mu_);
    start_workers_locked();
    if (timer_running_) return;
    {
        std::lock_guard<std::mutex> lk(mu_);
        timer_stop_ = false;
    }
    auto self = shared_from_this();
    timer_ = std::thread([self] { self->timer_loop(); });
    timer_running_ = true;
}

bool Tickers::Impl::stop(Duration bound) {
    std::lock_guard<std::mutex> lc(lifecycle_mu_);
    bool clean = true;
    {
        std::unique_lock<std::mutex> lk(mu_);
        if (active_ == 0 && !timer_running_ && !workers_running_) return true;
    }
    start_workers_locked();  // stop calls run on workers, even if start() was never called
    if (!timer_running_) {    // ... and need the timer for their deadlines
        {
            std::lock_guard<std::mutex> lk(mu_);
            timer_stop_ = false;
        }
        auto self = shared_from_this();
        timer_ = std::thread([self] { self->timer_loop(); });
        timer_running_ = true;
    }
    std::vector<TaskId> ids;
    {
        std::lock_guard<std::mutex> lk(mu_);
        for (uint32_t i = 0; i < slot_count_; ++i) {
            uint64_t w = slot(i).word.load(std::memory_order_acquire);
            if ((flags_of(w) & kActive) && !(flags_of(w) & kRemoved)) ids.push_back(make_id(i, gen_of(w)));
        }
    }
    for (TaskId id : ids) remove(id);
    // Wait for every stop call (abandoned calls count as done: nothing more will come of them).
    auto until = std::chrono::steady_clock::now() + bound;
    {
        std::unique_lock<std::mutex> lk(mu_);
        auto done = [&] {
            for (uint32_t i = 0; i < slot_count_; ++i) {
                uint64_t w = slot(i).word.load(std::memory_order_acquire);
                const uint32_t f = flags_of(w);
                if ((f & kActive) && (f & kRemoved) && !(f & kAbandoned)) return false;  // added meanwhile: kept
            }
            return true;
        };
        if (!stopped_cv_.wait_until(lk, until, done)) {
            clean = false;
            for (uint32_t i = 0; i < slot_count_; ++i) {
                Slot& s = slot(i);
                uint64_t w = s.word.load(std::memory_order_acquire);
                const uint32_t f = flags_of(w);
                if ((f & kActive) && (f & kRemoved) && !(f & kAbandoned)) {
                    s.cancel.store(true, std::memory_order_relaxed);
                    log_->error("task '{}': still running when the stop bound of {} ran out; left behind",
                                s.task.name, detail::format_elapsed(bound));
                }
            }
        }
        timer_stop_ = true;
    }
    timer_cv_.notify_all();
    timer_.join();
    timer_running_ = false;
    std::deque<Job> dropped;
    {
        std::lock_guard<std::mutex> lk(qmu_);
        workers_stop_ = true;
        if (!clean) {
            inflight_.fetch_sub(int64_t(queue_.size()), std::memory_order_relaxed);
            dropped.swap(queue_);
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
            std::lock_guard<std::mutex> lk(w->mu);
            if (w->busy && !w->abandoned) {
                w->abandoned = true;
                slot(w->slot).word.fetch_or(kAbandoned, std::memory_order_acq_rel);
                inflight_.fetch_sub(1, std::memory_order_relaxed);
            }
        }
        // Dropped jobs (stop calls never made): nothing executes them, so their slots can be freed now.
        for (const Job& j : dropped) {
            Slot& s = slot(j.slot);
            if (!(flags_of(s.word.load(std::memory_order_acquire)) & kRemoved)) {
                s.word.fetch_and(~uint64_t(kRunning), std::memory_order_acq_rel);  // added during stop(): keep
                continue;
            }
            log_->error("task '{}': stop bound ran out before its stop call started; no stop call made",
                        s.task.name);
            free_slot(j.slot);
        }
    }
    for (auto& w : ws) {
        bool stuck;
        {
            std::lock_guard<std::mutex> lk(w->mu);
            stuck = w->abandoned || (w->busy && !clean);
        }
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
    TimePoint first = impl_->clock_->now() + interval;
    return impl_->add(interval, std::move(task), first);
}

TaskId Tickers::add(Duration interval, TickTask task, TimePoint first_due) {
    return impl_->add(interval, std::move(task), first_due);
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

bool Tickers::running() const {
    std::lock_guard<std::mutex> lc(impl_->lifecycle_mu_);
    return impl_->timer_running_;
}

std::optional<TaskStats> Tickers::stats(TaskId id) const {
    const uint32_t i = slot_of(id), gen = gen_of_id(id);
    std::lock_guard<std::mutex> lk(impl_->mu_);
    if (gen == 0 || i >= impl_->slot_count_) return std::nullopt;
    Slot& s = impl_->slot(i);
    uint64_t w = s.word.load(std::memory_order_acquire);
    if (gen_of(w) != gen || !(flags_of(w) & kActive)) return std::nullopt;
    TaskStats st;
    st.runs = s.runs.load(std::memory_order_relaxed);
    st.failures = s.failures.load(std::memory_order_relaxed);
    st.skipped = s.skipped.load(std::memory_order_relaxed);
    st.timeouts = s.timeouts.load(std::memory_order_relaxed);
    return st;
}

size_t Tickers::size() const {
    std::lock_guard<std::mutex> lk(impl_->mu_);
    return impl_->active_ - impl_->removed_unfreed_;
}

const Clock& Tickers::clock() const { return *impl_->clock_; }

size_t Tickers::worker_count() const { return impl_->nworkers_; }

bool Tickers::wait_idle(std::chrono::milliseconds bound) {
    auto until = std::chrono::steady_clock::now() + bound;
    std::unique_lock<std::mutex> lk(impl_->mu_);
    for (;;) {
        const int64_t now = to_ns(impl_->clock_->now());
        bool timer_caught_up = !impl_->timer_running_ || (impl_->processed_until_ >= now && impl_->pending_.empty());
        if (timer_caught_up && impl_->inflight_.load(std::memory_order_acquire) <= 0) return true;
        if (!timer_caught_up) impl_->timer_cv_.notify_one();
        if (impl_->idle_cv_.wait_until(lk, std::min(until, std::chrono::steady_clock::now() + std::chrono::milliseconds(20))) ==
                std::cv_status::timeout &&
            std::chrono::steady_clock::now() >= until)
            return false;
    }
}

}  // namespace tickhost
