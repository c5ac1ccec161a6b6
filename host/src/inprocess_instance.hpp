// A plugin version whose code runs in the host's own process: its library mapped here, init and shutdown
// called on a thread of their own with a bound, its runs called by the scheduler's workers directly.
#pragma once

#include "host_api.hpp"
#include "loader.hpp"
#include "plugin_instance.hpp"

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace spdlog {
class logger;
}

namespace tickhost::detail {

// Calls a task's run function with an opened context and closes it: the status (and an exception that
// crossed the C ABI) as the scheduler's result.
TaskResult call_plugin_run(ContextSlot& slot, th_run_fn run, void* state, th_ctx c, bool is_stop);

class InProcessInstance : public PluginInstance, public std::enable_shared_from_this<InProcessInstance> {
public:
    // `lib` loaded and checked; `log` is the manager's logger ("plugins").
    InProcessInstance(std::shared_ptr<Library> lib, std::shared_ptr<spdlog::logger> log);

    Isolation mode() const override { return Isolation::none; }
    const th_plugin_def& def() const override { return lib_->def(); }
    const std::filesystem::path& source() const override { return lib_->source(); }
    const std::filesystem::path& shadow() const override { return lib_->shadow(); }
    const std::string& sha256() const override { return lib_->sha256(); }
    bool go_runtime() const override { return lib_->has_go_runtime(); }

    std::optional<LoadError> init(const PluginValues& config, Duration bound, size_t cap, TaskList* tasks) override;
    TaskFn task_fn(size_t index, const std::string& task_name) override;
    bool shutdown(Duration bound) override;
    void abandon() override;

    // init and shutdown called on the caller's thread, unbounded: for tickhost-worker, whose process the host
    // kills when a call overruns (a thread per call could not even start under the plugin's rlimits).
    void call_inline() { inline_calls_ = true; }

    // For the isolated worker, which serves one in-process instance: the task's function and state.
    const std::vector<th_task_def>& task_defs() const { return tasks_; }
    void* state() const { return state_; }
    CtxOwner& owner() { return owner_; }
    const PluginValues& config() const { return config_; }

private:
    std::shared_ptr<Library> lib_;
    std::shared_ptr<spdlog::logger> log_;
    std::string name_;
    PluginValues config_;  // a copy: the plugin's config strings stay valid until the next shutdown
    CtxOwner owner_;       // init's context: plugin-level services
    std::unique_ptr<ContextSlot> ctx_;
    void* state_ = nullptr;
    bool initialised_ = false;
    bool inline_calls_ = false;
    // call_bounded, or inline (call_inline()).
    bool call(std::function<void()> fn, Duration bound, std::string* threw = nullptr);
    std::vector<th_task_def> tasks_;                   // static then declared
    std::vector<std::unique_ptr<std::string>> names_;  // names of the declared tasks
};

}  // namespace tickhost::detail
