// A plugin version whose code runs in a process of its own (`tickhost-worker`), started and supervised
// by the host: [plugins.<name>] isolation = "process".
//
// The host keeps the schedule; the child executes the calls. Per child: a control channel (load, init,
// shutdown, log lines from outside calls), one lane per call in flight (a socket pair, a thread in the
// child), and a page of shared memory holding each lane's cancel word, which the host writes (through
// RunContext's cancel relay) and the child reads: is_cancelled costs the plugin no system call.
//
// The child is untrusted: every message is decoded with bounds (host/src/isolation/wire.hpp), its
// descriptor is checked again here, its log lines are escaped and rate-limited, and a child that sends
// anything out of protocol is killed and named. A child that dies (a crash, `exit`, a limit), or that the
// host kills (a run that ignored its cancellation for abandon_after past its deadline, an init or
// shutdown past its bound), is reported once through the exit handler; its tasks' calls fail at once
// from then on ("no stop call: its process died").
#pragma once

#include "isolation/child_process.hpp"
#include "loader.hpp"
#include "plugin_instance.hpp"

#include <functional>
#include <memory>
#include <string>

namespace spdlog {
class logger;
}

namespace tickhost::detail {

struct IsolatedLink;

// The host's side of every isolated child: one thread that reads their control channels and notices
// their exits (epoll; it sleeps while nothing happens). Started with the first child.
class IsolationRuntime {
public:
    explicit IsolationRuntime(std::shared_ptr<spdlog::logger> log);
    ~IsolationRuntime();  // kills and reaps the children left
    IsolationRuntime(const IsolationRuntime&) = delete;
    IsolationRuntime& operator=(const IsolationRuntime&) = delete;

    bool add(const std::shared_ptr<IsolatedLink>& link, std::string* err);
    const std::shared_ptr<spdlog::logger>& log() const { return log_; }

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    std::shared_ptr<spdlog::logger> log_;
};

// What an isolated version is opened with (host.toml's settings, resolved by the load pipeline).
struct IsolatedOptions {
    std::filesystem::path worker;  // the tickhost-worker executable
    Duration entry_bound{0};       // the plugin's entry point (and the child's start)
    uint32_t max_tasks = 0;
    Duration abandon_after{0};  // past a call's deadline: the child is killed
    ChildLimits limits;
    std::string user, group;  // empty: the host's
    int log_level = 2;        // the plugin logger's level
    size_t workers = 0;       // the scheduler's workers (0: one per core): calls of it in flight at once
};

// The tickhost-worker the host starts: $TICKHOST_WORKER, else beside the running executable, else where
// `make install` puts it. Empty + *err when none is found.
std::filesystem::path find_worker(std::string* err);

class IsolatedInstance : public PluginInstance, public std::enable_shared_from_this<IsolatedInstance> {
public:
    // Starts a child for the staged copy (which the instance takes over), loads the plugin there and
    // checks its descriptor. Null + *err on failure (the child is then gone).
    static std::shared_ptr<IsolatedInstance> open(IsolationRuntime& rt, const std::filesystem::path& file,
                                                  StagedFile& staged, const IsolatedOptions& o, LoadError* err);
    // Asks the child to exit and waits (bounded) until it has and the runtime has reaped it, then removes the copy.
    ~IsolatedInstance() override;

    Isolation mode() const override { return Isolation::process; }
    const th_plugin_def& def() const override { return def_; }
    const std::filesystem::path& source() const override { return source_; }
    const std::filesystem::path& shadow() const override { return shadow_; }
    const std::string& sha256() const override { return sha256_; }
    bool go_runtime() const override { return go_runtime_; }

    std::optional<LoadError> init(const PluginValues& config, Duration bound, size_t cap, TaskList* tasks) override;
    TaskFn task_fn(size_t index, const std::string& task_name) override;
    bool shutdown(Duration bound) override;
    void abandon() override;

    // Called once, on the runtime's thread, when the child ends without the host having asked (a crash,
    // exit, a limit, or a kill for a hang): `why` names the process, how it ended and the task it was
    // running. Must not block.
    void set_exit_handler(std::function<void(const std::string& why)> fn) override;
    int pid() const override;
    bool alive() const override;
    bool killed_by_host() const override;

private:
    IsolatedInstance() = default;
    std::shared_ptr<IsolatedLink> link_;
    std::filesystem::path source_, shadow_;
    std::string sha256_;
    bool go_runtime_ = false;
    Duration abandon_after_{0};
    size_t workers_ = 0;
    bool initialised_ = false;
    // The host's copy of the descriptor, with the strings it points to.
    th_plugin_def def_{};
    std::string name_, version_, description_;
    std::vector<th_task_def> static_tasks_;
    std::vector<std::unique_ptr<std::string>> names_;
};

}  // namespace tickhost::detail
