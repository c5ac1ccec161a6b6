// One loaded version of a plugin file, behind one interface whatever runs its code: in the host's own
// process (InProcessInstance) or in a child process of its own (IsolatedInstance).
//
// Its life: opened by the load pipeline (the file checked, staged, loaded, its descriptor checked; no
// init) -> init (its tasks known) -> task_fn() for each task, scheduled by the manager -> the manager
// removes the tasks and waits for their stop calls -> shutdown. init and shutdown may follow each other
// more than once on the same instance (a settings change restarts a plugin in place, without a reload).
// When code of it may still be running after a bound ran out (a call that ignored its cancellation, an
// init or shutdown that did not return), the manager calls abandon() and never uses the instance again.
//
// Threading: init, shutdown and abandon are called by one thread at a time (the manager's); the task
// functions are called by the scheduler's workers, concurrently for different tasks, never for one task
// twice at once.
#pragma once

#include <tickhost/config.hpp>
#include <tickhost/plugin.h>
#include <tickhost/plugin_manager.hpp>
#include <tickhost/tickers.hpp>

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace tickhost::detail {

// The tasks an instance has after init: its static tasks, then those init declared. Only name,
// default_interval_ns and default_timeout_ns are for the manager (run and state belong to the instance).
struct TaskList {
    std::vector<th_task_def> tasks;
    std::vector<std::unique_ptr<std::string>> names;  // owns the names of tasks the host copied
};

class PluginInstance {
public:
    virtual ~PluginInstance() = default;
    PluginInstance() = default;
    PluginInstance(const PluginInstance&) = delete;
    PluginInstance& operator=(const PluginInstance&) = delete;

    virtual Isolation mode() const = 0;
    // The plugin's descriptor, checked by the host. Isolated: the host's copy of what the child reported
    // (its function pointers are placeholders, never called); in-process: the plugin's own.
    virtual const th_plugin_def& def() const = 0;
    virtual const std::filesystem::path& source() const = 0;  // the file in plugin_dir
    virtual const std::filesystem::path& shadow() const = 0;  // the checked copy that was loaded
    virtual const std::string& sha256() const = 0;
    virtual bool go_runtime() const = 0;
    // A Go runtime can never be unloaded nor started twice in one process: such a version can be
    // replaced only when it runs in a process of its own.
    bool replaceable() const { return !go_runtime() || mode() == Isolation::process; }

    // Calls the plugin's init (if any) with `config`, bounded by `bound`, allowing at most `cap` tasks
    // (static + declared). On success `tasks` holds every task, static first. On failure the plugin is
    // left uninitialised (a plugin whose init succeeded but whose declarations were refused is shut down).
    virtual std::optional<LoadError> init(const PluginValues& config, Duration bound, size_t cap, TaskList* tasks) = 0;
    // The scheduler's function for task `index` of the list init returned. Keeps what it needs alive.
    virtual TaskFn task_fn(size_t index, const std::string& task_name) = 0;
    // Calls the plugin's shutdown (if any), bounded. False (logged) if it did not return in time.
    virtual bool shutdown(Duration bound) = 0;
    // Code of this version may still be running: in-process, its library is never unmapped (kept, with
    // its state, until the host exits); isolated, its process is killed.
    virtual void abandon() = 0;
    // Isolated: called once, on another thread, when its process ends without the host having asked (a
    // crash, `exit`, a limit, a kill for a hang), with what happened. Must not block. In-process: never.
    virtual void set_exit_handler(std::function<void(const std::string& why)> fn) { (void)fn; }
    // False once an isolated plugin's process has ended (or been killed). In-process: always true.
    virtual bool alive() const { return true; }
    // Isolated: the host killed its process (a call past its bound, a protocol violation). In-process: false.
    virtual bool killed_by_host() const { return false; }
    // Isolated: the pid of its process. In-process: 0.
    virtual int pid() const { return 0; }
};

}  // namespace tickhost::detail
