#include "inprocess_instance.hpp"

#include <tickhost/logging.hpp>

#include "bounded_call.hpp"

#include <spdlog/spdlog.h>

#include <cxxabi.h>
#include <mutex>

namespace tickhost::detail {

namespace {

TaskResult run_result(th_status st, std::string err) {
    switch (st) {
    case TH_OK: return TaskResult::success();
    case TH_ERROR:
        return TaskResult::failure(err.empty() ? "returned TH_ERROR without a message (call set_error)" : std::move(err));
    case TH_CANCELLED: return TaskResult::failure(err.empty() ? "cancelled" : "cancelled: " + err);
    default:
        return TaskResult::failure("returned unknown status " + std::to_string(st) + (err.empty() ? "" : ": " + err));
    }
}

std::chrono::steady_clock::time_point steady(TimePoint t) {
    return std::chrono::steady_clock::time_point(
        std::chrono::duration_cast<std::chrono::steady_clock::duration>(t.time_since_epoch()));
}

// What an init call leaves behind, shared with the thread that makes it (which may outlive the wait).
struct InitCall {
    th_status status = TH_OK;
    void* state = nullptr;
    InitDeclarations declared;  // what add_task recorded
    std::string thrown;         // the text of an exception init let cross the C ABI
};

// What a scheduled task holds: its context and a reference to its instance (which keeps the library
// mapped for as long as the task exists in the registry).
struct TaskBinding {
    CtxOwner owner;
    ContextSlot ctx{&owner};
    th_run_fn run = nullptr;
    void* state = nullptr;
    std::shared_ptr<InProcessInstance> instance;
};

}  // namespace

TaskResult call_plugin_run(ContextSlot& slot, th_run_fn run, void* state, th_ctx c, bool is_stop) {
    // The context is closed on every path: a run that lets an exception cross the C ABI (out of
    // contract) must not leave it open, or every later call would be stale.
    CallGuard guard(slot);
    th_status st;
    try {
        st = run(state, c, is_stop ? 1 : 0);
    } catch (abi::__forced_unwind&) {
        throw;  // thread cancellation must unwind on; the guard closes the context
    } catch (const std::exception& e) {
        guard.close();
        return TaskResult::failure("let an exception cross the C ABI (out of contract; catch it inside the plugin): " +
                                   escape_plugin_text(e.what()));
    } catch (...) {
        guard.close();
        return TaskResult::failure(
            "let an exception that is not a std::exception cross the C ABI (out of contract; catch everything "
            "inside the plugin)");
    }
    return run_result(st, guard.close());
}

bool InProcessInstance::call(std::function<void()> fn, Duration bound, std::string* threw) {
    if (!inline_calls_) return call_bounded(std::move(fn), bound, threw);
    try {
        fn();
    } catch (const std::exception& e) {
        if (threw) *threw = std::string("threw: ") + e.what();
    } catch (...) {
        if (threw) *threw = "threw an exception that is not a std::exception";
    }
    return true;
}

InProcessInstance::InProcessInstance(std::shared_ptr<Library> lib, std::shared_ptr<spdlog::logger> log)
    : lib_(std::move(lib)), log_(std::move(log)), name_(lib_->def().name) {
    owner_.plugin = name_;
    owner_.logger = get_logger("plugin." + name_);
    owner_.config = &config_;
    ctx_ = std::make_unique<ContextSlot>(&owner_);
}

std::optional<LoadError> InProcessInstance::init(const PluginValues& config, Duration bound, size_t cap,
                                                 TaskList* out) {
    const th_plugin_def& def = lib_->def();
    config_ = config;
    tasks_.clear();
    names_.clear();
    state_ = nullptr;
    for (uint32_t i = 0; i < def.task_count; ++i) tasks_.push_back(def.tasks[i]);
    const std::string cap_hint = "declare fewer tasks (check [plugins." + name_ +
                                 ".config]), or raise [host] max_tasks_per_plugin in host.toml";
    if (def.init) {
        // init runs on a thread of its own, bounded, so that an init that never returns costs one thread
        // and its memory, not the loader (and with it every later load, reload and stop).
        auto call = std::make_shared<InitCall>();
        call->declared.cap = cap;
        call->declared.static_count = tasks_.size();
        for (auto& t : tasks_) call->declared.seen.insert(t.name);
        bool returned = false;
        std::string err;
        {
            owner_.init = &call->declared;
            th_ctx c = ctx_->open(nullptr, 0, std::chrono::steady_clock::now() + bound);
            // Closes the context and detaches add_task on every path (also if no thread could be started).
            struct CloseInit {
                ContextSlot& slot;
                std::string* err;
                ~CloseInit() {
                    std::string e = slot.close_init();  // from here on its context is stale, add_task refused
                    if (err) *err = std::move(e);
                }
            } guard{*ctx_, &err};
            try {
                returned = this->call(
                    [call, lib = lib_, c] {
                        try {
                            call->status = lib->def().init(c, &call->state);
                        } catch (abi::__forced_unwind&) {
                            throw;  // pthread_exit/cancel: must unwind; the wait below reports it as hung
                        } catch (const std::exception& e) {
                            call->status = TH_E_INIT_FAILED;
                            call->thrown = escape_plugin_text(e.what());
                        } catch (...) {
                            call->status = TH_E_INIT_FAILED;
                            call->thrown = "an exception that is not a std::exception";
                        }
                    },
                    bound);
            } catch (const std::exception& e) {  // no thread for init (resource exhaustion)
                guard.err = nullptr;
                return LoadError{TH_E_INIT_FAILED, "TH_E_INIT_FAILED", std::string("init could not be called: ") + e.what(),
                                 "check the host's thread and memory limits; the file is retried when it changes"};
            }
        }
        if (!returned) {
            lib_->pin();  // its init may still be running: never unmap it; whatever it allocated is leaked
            return LoadError{TH_E_INIT_FAILED, "TH_E_INIT_FAILED",
                             "init did not return within " + format_duration(bound) +
                                 "; the plugin is refused, its init is left running and its library stays mapped "
                                 "until the host exits",
                             "fix the plugin's init (it must return; long work belongs in a task), or raise "
                             "[plugins." +
                                 name_ + "] timeout in host.toml"};
        }
        if (!call->thrown.empty())
            return LoadError{TH_E_INIT_FAILED, "TH_E_INIT_FAILED",
                             "init let an exception cross the C ABI (out of contract): " + call->thrown,
                             "catch every exception inside the plugin (the C++ layer, plugin.hpp, does)"};
        const size_t refused = call->declared.refused_over_cap;
        if (refused) {
            LoadError e{TH_E_TOO_MANY_TASKS, "TH_E_TOO_MANY_TASKS",
                        "init tried to declare more tasks than [host] max_tasks_per_plugin = " + std::to_string(cap) +
                            " allows (" + std::to_string(refused) + " add_task call(s) refused" +
                            (call->status == TH_OK ? "" : "; init then returned " + status_name(call->status)) + ")",
                        cap_hint};
            if (call->status == TH_OK && def.shutdown) {  // it initialised: undo that
                state_ = call->state;
                initialised_ = true;
                if (!shutdown(bound)) abandon();
            }
            return e;
        }
        if (call->status != TH_OK)
            return LoadError{TH_E_INIT_FAILED, "TH_E_INIT_FAILED",
                             "init returned " + status_name(call->status) + (err.empty() ? "" : ": " + err),
                             "check [plugins." + name_ + ".config] in host.toml and the plugin's documentation"};
        state_ = call->state;
        for (auto& d : call->declared.tasks) tasks_.push_back(d);
        for (auto& n : call->declared.names) names_.push_back(std::move(n));
    }
    initialised_ = true;
    out->tasks = tasks_;
    out->names.clear();
    return std::nullopt;
}

TaskFn InProcessInstance::task_fn(size_t index, const std::string& task_name) {
    const th_task_def& t = tasks_.at(index);
    auto b = std::make_shared<TaskBinding>();
    b->owner.plugin = name_;
    b->owner.task = task_name;
    b->owner.logger = owner_.logger;
    b->owner.config = &config_;
    b->run = t.run;
    b->state = t.state ? t.state : state_;
    b->instance = shared_from_this();
    return [b](RunContext& rc, bool is_stop) {
        th_ctx c = b->ctx.open(&rc.cancel_word(), rc.cancel_value(), steady(rc.deadline()), steady(rc.due()));
        return call_plugin_run(b->ctx, b->run, b->state, c, is_stop);
    };
}

bool InProcessInstance::shutdown(Duration bound) {
    if (!initialised_) return true;
    initialised_ = false;
    const th_shutdown_fn fn = lib_->def().shutdown;
    if (!fn) return true;
    std::string threw;
    if (call([fn, state = state_, lib = lib_] { fn(state); }, bound, &threw)) {
        if (!threw.empty())
            log_->error("plugin '{}': shutdown {} (an exception must not cross the C ABI; catch it in the plugin)",
                        name_, threw);
        return true;
    }
    log_->error("plugin '{}': shutdown did not return within {}; it is left running and its library stays mapped "
                "until the host exits",
                name_, format_duration(bound));
    return false;
}

void InProcessInstance::abandon() {
    // Held in a list that is never destroyed, so that its state stays reachable for the code that may
    // still use it (and leak checkers see a deliberate keep, not a leak).
    static std::mutex mu;
    static auto* kept = new std::vector<std::shared_ptr<InProcessInstance>>;
    lib_->pin();
    std::lock_guard<std::mutex> lk(mu);
    kept->push_back(shared_from_this());
}

}  // namespace tickhost::detail
