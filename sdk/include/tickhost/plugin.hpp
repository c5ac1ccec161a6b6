// tickhost C++ plugin layer (header-only, C++17) over the C ABI in <tickhost/plugin.h>.
//
// A complete plugin:
//
//     #include <tickhost/plugin.hpp>
//
//     class Greeter : public tickhost::Plugin {
//     public:
//         // Optional: called once after load with the plugin's [plugins.greeter.config] table.
//         void init(tickhost::Context& ctx) override { who_ = ctx.config_string("who").value_or("world"); }
//
//         tickhost::Status greet(tickhost::Context& ctx, bool is_stop) {
//             if (is_stop) { ctx.info("goodbye, " + who_); return tickhost::Status::ok; }
//             ctx.info("hello, " + who_ + " #" + std::to_string(++runs_));
//             return tickhost::Status::ok;
//         }
//
//     private:
//         std::string who_;
//         long runs_ = 0;
//     };
//
//     TICKHOST_PLUGIN(Greeter, "greeter", "1.0.0", "Greets somebody every second",
//                     tickhost::task<&Greeter::greet>("greet", std::chrono::seconds(1)))
//
// Every exception escaping init or a task becomes TH_ERROR with its what() text as the error message;
// nothing crosses the C boundary. A task method may return tickhost::Status or void (= ok).
// Tasks can also be declared at init with Context::add_task, e.g. one per entry of a config list.
#ifndef TICKHOST_PLUGIN_HPP
#define TICKHOST_PLUGIN_HPP

#include <tickhost/plugin.h>

#include <chrono>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace tickhost {

enum class Status : th_status { ok = TH_OK, error = TH_ERROR, cancelled = TH_CANCELLED };

enum class LogLevel : int32_t {
    trace = TH_LOG_TRACE,
    debug = TH_LOG_DEBUG,
    info = TH_LOG_INFO,
    warn = TH_LOG_WARN,
    error = TH_LOG_ERROR,
};

namespace detail {
// The host API table of this plugin image; set by the entry point. One per loaded .so (hidden visibility).
inline const th_host_api*& host_api() {
    static const th_host_api* api = nullptr;
    return api;
}
}  // namespace detail

class Plugin;
class Context;
namespace detail {
template <typename P>
th_status plugin_init(th_ctx ctx, void** state);
}
// A task added from init with Context::add_task. (Named PluginTaskFn so that <tickhost/plugin.hpp> and the
// host's <tickhost/tickers.hpp>, whose TaskFn is the scheduler's own callable, fit in one translation unit.)
using PluginTaskFn = std::function<Status(Context&, bool is_stop)>;

// Handle to the host services for the current call (init, run or stop). Cheap to copy; valid only during
// the call it was given to (afterwards every service answers TH_E_STALE_CONTEXT, is_cancelled() true).
class Context {
public:
    explicit Context(th_ctx ctx) : ctx_(ctx), api_(detail::host_api()) {}

    void log(LogLevel level, std::string_view msg) const {
        api_->log(ctx_, static_cast<int32_t>(level), msg.data(), msg.size());
    }
    void trace(std::string_view m) const { log(LogLevel::trace, m); }
    void debug(std::string_view m) const { log(LogLevel::debug, m); }
    void info(std::string_view m) const { log(LogLevel::info, m); }
    void warn(std::string_view m) const { log(LogLevel::warn, m); }
    void error(std::string_view m) const { log(LogLevel::error, m); }

    // True once the deadline passed, the task is being removed (plugin unloaded, replaced or restarted with
    // new settings) or the host is stopping: return soon.
    bool is_cancelled() const { return api_->is_cancelled(ctx_) != 0; }
    std::chrono::nanoseconds remaining() const { return std::chrono::nanoseconds(api_->remaining_ns(ctx_)); }
    // The tick this run belongs to, on the monotonic clock (steady_clock's epoch on Linux): now - due() is
    // the run's lateness. 0 for a stale context.
    std::chrono::nanoseconds due() const { return std::chrono::nanoseconds(api_->due_ns(ctx_)); }

    std::optional<std::string> config_string(std::string_view key) const {
        const char* out = nullptr;
        size_t len = 0;
        if (api_->config_string(ctx_, key.data(), key.size(), &out, &len) != TH_OK) return std::nullopt;
        return std::string(out, len);
    }
    std::optional<int64_t> config_int(std::string_view key) const {
        int64_t v = 0;
        if (api_->config_int(ctx_, key.data(), key.size(), &v) != TH_OK) return std::nullopt;
        return v;
    }
    std::optional<bool> config_bool(std::string_view key) const {
        int32_t v = 0;
        if (api_->config_bool(ctx_, key.data(), key.size(), &v) != TH_OK) return std::nullopt;
        return v != 0;
    }
    std::optional<std::chrono::nanoseconds> config_duration(std::string_view key) const {
        int64_t v = 0;
        if (api_->config_duration_ns(ctx_, key.data(), key.size(), &v) != TH_OK) return std::nullopt;
        return std::chrono::nanoseconds(v);
    }

    void set_error(std::string_view msg) const { api_->set_error(ctx_, msg.data(), msg.size()); }

    // From init only: declare a task whose code is `fn` (the plugin object keeps it alive).
    // Throws std::runtime_error if the host refuses it.
    inline void add_task(std::string name, std::chrono::nanoseconds interval, PluginTaskFn fn,
                         std::chrono::nanoseconds timeout = std::chrono::nanoseconds(0));

    th_ctx raw() const { return ctx_; }

private:
    friend class Plugin;
    template <typename P>
    friend th_status detail::plugin_init(th_ctx ctx, void** state);
    th_ctx ctx_;
    const th_host_api* api_;
    Plugin* plugin_ = nullptr;  // set during init only
};

// Base class of a C++ plugin. One object per load, created before init, destroyed after shutdown.
class Plugin {
public:
    virtual ~Plugin() = default;
    // Called once after load. Throw (or call ctx.set_error and throw) to refuse loading.
    virtual void init(Context& ctx) { (void)ctx; }
    // Called once after every task's stop call, before unload. Stop your threads here.
    virtual void shutdown() {}

private:
    friend class Context;
    struct DynamicTask {
        std::string name;
        PluginTaskFn fn;
    };
    std::vector<std::unique_ptr<DynamicTask>> dynamic_tasks_;

public:
    // Implementation detail of Context::add_task; the trampoline the host calls for a dynamic task.
    static th_status dynamic_run(void* state, th_ctx ctx, int32_t is_stop);
    // Turns an exception in flight into TH_ERROR with its message.
    static th_status fail_with_current_exception(th_ctx ctx) noexcept {
        Context c(ctx);
        try {
            throw;
        } catch (const std::exception& e) {
            const char* what = e.what();
            c.set_error(what ? std::string_view(what) : std::string_view("std::exception"));
        } catch (...) {
            c.set_error("unknown exception (not derived from std::exception)");
        }
        return TH_ERROR;
    }
};

inline th_status Plugin::dynamic_run(void* state, th_ctx ctx, int32_t is_stop) {
    try {
        Context c(ctx);
        return static_cast<th_status>(static_cast<DynamicTask*>(state)->fn(c, is_stop != 0));
    } catch (...) {
        return fail_with_current_exception(ctx);
    }
}

inline void Context::add_task(std::string name, std::chrono::nanoseconds interval, PluginTaskFn fn,
                              std::chrono::nanoseconds timeout) {
    if (!plugin_) throw std::logic_error("tickhost::Context::add_task is only allowed during init");
    auto task = std::make_unique<Plugin::DynamicTask>();
    task->name = std::move(name);
    task->fn = std::move(fn);
    th_task_def def{};
    def.struct_size = sizeof(th_task_def);
    def.name = task->name.c_str();
    def.default_interval_ns = interval.count();
    def.default_timeout_ns = timeout.count();
    def.run = &Plugin::dynamic_run;
    def.state = task.get();
    th_status st = api_->add_task(ctx_, &def);
    if (st != TH_OK) throw std::runtime_error("host refused task '" + task->name + "' (status " + std::to_string(st) + ")");
    plugin_->dynamic_tasks_.push_back(std::move(task));
}

namespace detail {

template <typename M>
struct member_traits;
template <typename C, typename R>
struct member_traits<R (C::*)(Context&, bool)> {
    using cls = C;
    using ret = R;
};

// The C function the host calls for a static task bound to member function M.
template <auto M>
th_status member_run(void* state, th_ctx ctx, int32_t is_stop) {
    using traits = member_traits<decltype(M)>;
    try {
        Context c(ctx);
        auto* self = static_cast<typename traits::cls*>(static_cast<Plugin*>(state));
        if constexpr (std::is_void_v<typename traits::ret>) {
            (self->*M)(c, is_stop != 0);
            return TH_OK;
        } else {
            return static_cast<th_status>((self->*M)(c, is_stop != 0));
        }
    } catch (...) {
        return Plugin::fail_with_current_exception(ctx);
    }
}

template <typename P>
th_status plugin_init(th_ctx ctx, void** state) {
    P* p = nullptr;
    try {
        p = new P();
        Context c(ctx);
        c.plugin_ = p;
        p->init(c);
        *state = static_cast<Plugin*>(p);
        return TH_OK;
    } catch (...) {
        delete p;
        return Plugin::fail_with_current_exception(ctx);
    }
}

template <typename P>
void plugin_shutdown(void* state) {
    auto* p = static_cast<Plugin*>(state);
    try {
        p->shutdown();
    } catch (...) {
        // Nothing may cross the boundary; the host logs that shutdown ran.
    }
    delete p;
}

}  // namespace detail

// A static task bound to a member function `Status M(Context&, bool is_stop)` (or returning void).
template <auto M>
constexpr th_task_def task(const char* name, std::chrono::nanoseconds interval,
                           std::chrono::nanoseconds timeout = std::chrono::nanoseconds(0)) {
    return th_task_def{sizeof(th_task_def), name, interval.count(), timeout.count(), &detail::member_run<M>, nullptr};
}

}  // namespace tickhost

// Defines the plugin's entry point. Use once per plugin, at namespace scope, after the class.
//   TICKHOST_PLUGIN(Class, "name", "version", "description", tickhost::task<&Class::method>("task", 1s), ...)
#define TICKHOST_PLUGIN(CLASS, NAME, VERSION, DESCRIPTION, ...)                                              \
    extern "C" TH_EXPORT const th_plugin_def* tickhost_plugin_entry(const th_host_info* info) {             \
        static_assert(std::is_base_of_v<::tickhost::Plugin, CLASS>, #CLASS " must derive from tickhost::Plugin"); \
        static const th_task_def tasks_[] = {__VA_ARGS__};                                                   \
        static const th_plugin_def def_ = {                                                                  \
            sizeof(th_plugin_def), TH_ABI_MAJOR, TH_ABI_MINOR, NAME, VERSION, DESCRIPTION, tasks_,           \
            static_cast<uint32_t>(sizeof(tasks_) / sizeof(tasks_[0])), &::tickhost::detail::plugin_init<CLASS>, \
            &::tickhost::detail::plugin_shutdown<CLASS>};                                                    \
        if (!info || !info->api) return nullptr;                                                             \
        ::tickhost::detail::host_api() = info->api;                                                          \
        return &def_;                                                                                        \
    }

// For a plugin whose tasks are all declared in init with Context::add_task.
#define TICKHOST_PLUGIN_DYNAMIC(CLASS, NAME, VERSION, DESCRIPTION)                                           \
    extern "C" TH_EXPORT const th_plugin_def* tickhost_plugin_entry(const th_host_info* info) {             \
        static_assert(std::is_base_of_v<::tickhost::Plugin, CLASS>, #CLASS " must derive from tickhost::Plugin"); \
        static const th_plugin_def def_ = {sizeof(th_plugin_def), TH_ABI_MAJOR, TH_ABI_MINOR, NAME, VERSION,   \
                                           DESCRIPTION, nullptr, 0, &::tickhost::detail::plugin_init<CLASS>,  \
                                           &::tickhost::detail::plugin_shutdown<CLASS>};                     \
        if (!info || !info->api) return nullptr;                                                             \
        ::tickhost::detail::host_api() = info->api;                                                          \
        return &def_;                                                                                        \
    }

#endif  // TICKHOST_PLUGIN_HPP
