// The authors' tools (`tickhost check`, `tickhost run-once`): the manager's load pipeline and a plugin
// instance, without its registry. Nothing here is scheduled for good or appears in plugins().
#include <tickhost/plugin_manager.hpp>

#include "load_pipeline.hpp"
#include "loader.hpp"
#include "plugin_instance.hpp"

#include <condition_variable>
#include <mutex>

namespace fs = std::filesystem;

namespace tickhost {

using detail::LoadFailure;
using detail::to_error;

std::optional<PluginFileInfo> PluginManager::inspect(const fs::path& file, LoadError* err) {
    std::lock_guard<std::mutex> lk(mu_);
    detail::StagedFile staged;
    LoadFailure rf;
    if (!pipeline_->stage(file, &staged, &rf)) {  // the folder's checks too, as the host makes them
        if (err) *err = to_error(rf);
        return std::nullopt;
    }
    LoadError e;
    auto inst = pipeline_->open(file, staged, &e);
    if (!inst) {
        if (err) *err = e;
        return std::nullopt;
    }
    const th_plugin_def& d = inst->def();
    PluginFileInfo info;
    info.file = file;
    info.sha256 = inst->sha256();
    info.name = d.name;
    info.version = d.version ? d.version : "";
    info.description = d.description ? d.description : "";
    info.abi_major = d.abi_major;
    info.abi_minor = d.abi_minor;
    info.has_init = d.init != nullptr;
    info.has_shutdown = d.shutdown != nullptr;
    info.go_runtime = inst->go_runtime();
    for (uint32_t i = 0; i < d.task_count; ++i)
        info.tasks.push_back(
            {d.tasks[i].name, Duration(d.tasks[i].default_interval_ns), Duration(d.tasks[i].default_timeout_ns)});
    return info;  // inst goes: unloaded, shadow copy deleted
}

std::optional<RunOnceReport> PluginManager::run_once(const fs::path& file, const RunOnceOptions& options,
                                                     LoadError* err) {
    std::lock_guard<std::mutex> lk(mu_);
    auto fail = [&](LoadError e) -> std::optional<RunOnceReport> {
        if (err) *err = std::move(e);
        return std::nullopt;
    };
    detail::StagedFile staged;
    LoadFailure rf;
    if (!pipeline_->stage(file, &staged, &rf)) return fail(to_error(rf));  // the folder's checks too
    LoadError e;
    auto inst = pipeline_->open(file, staged, &e);
    if (!inst) return fail(e);
    const std::string name = inst->def().name;
    PluginSettings settings = config_.plugin(name);
    for (auto& [k, v] : options.config.all()) settings.config.set(k, v);
    const Duration init_bound = settings.timeout ? *settings.timeout : config_.default_timeout;
    if (inst->def().task_count > config_.max_tasks_per_plugin)
        return fail({TH_E_TOO_MANY_TASKS, "TH_E_TOO_MANY_TASKS",
                     "it declares " + std::to_string(inst->def().task_count) +
                         " static tasks; [host] max_tasks_per_plugin is " + std::to_string(config_.max_tasks_per_plugin),
                     "declare fewer tasks, or raise [host] max_tasks_per_plugin in host.toml"});
    detail::TaskList tasks;
    if (auto ie = inst->init(settings.config, init_bound, config_.max_tasks_per_plugin, &tasks)) return fail(*ie);

    RunOnceReport report;
    size_t chosen = tasks.tasks.size();
    for (size_t i = 0; i < tasks.tasks.size(); ++i) {
        report.all_tasks.push_back(tasks.tasks[i].name);
        if (chosen == tasks.tasks.size() && (options.task.empty() || options.task == tasks.tasks[i].name)) chosen = i;
    }
    if (chosen == tasks.tasks.size()) {
        // Bounded, as the host bounds it (shutdown_timeout); one that does not return is abandoned.
        if (!inst->shutdown(config_.shutdown_timeout)) inst->abandon();
        std::string all;
        for (auto& n : report.all_tasks) all += (all.empty() ? "" : ", ") + n;
        return fail({TH_E_NOT_FOUND, "TH_E_NOT_FOUND",
                     "plugin '" + name + "' has no task '" + options.task + "' (it has: " + all + ")",
                     "name one of its tasks"});
    }
    const th_task_def& task_def = tasks.tasks[chosen];
    auto [interval, timeout] = detail::schedule_of(settings, task_def, config_.default_timeout);
    if (options.timeout) timeout = *options.timeout;

    // Record what the adapter returns for the run and for the stop call, as the scheduler sees it.
    struct Record {
        std::mutex mu;
        std::condition_variable cv;
        TaskCallReport run, stop;
    };
    auto rec = std::make_shared<Record>();
    TickTask task{name + "/" + task_def.name, timeout,
                  [fn = inst->task_fn(chosen, task_def.name), rec](RunContext& rc, bool is_stop) {
                      const auto t0 = std::chrono::steady_clock::now();
                      TaskResult r = fn(rc, is_stop);
                      const Duration took = std::chrono::steady_clock::now() - t0;
                      {
                          std::lock_guard<std::mutex> g(rec->mu);
                          TaskCallReport& c = is_stop ? rec->stop : rec->run;
                          c = TaskCallReport{true, r.ok, r.error, took, rc.remaining() < Duration(0)};
                      }
                      rec->cv.notify_all();
                      return r;
                  }};
    // One run, due now. The interval only has to be long enough that no second run is due before remove().
    const TaskId id = tickers_.add(std::chrono::hours(24 * 365), std::move(task), tickers_.clock().now());
    {
        // The Tickers abandon a run that ignores its cancellation some seconds past its deadline; wait longer.
        std::unique_lock<std::mutex> g(rec->mu);
        rec->cv.wait_for(g, timeout + std::chrono::seconds(30), [&] { return rec->run.called; });
    }
    tickers_.remove(id);
    report.stop_state = tickers_.wait_stopped(id, timeout + std::chrono::seconds(30));
    {
        std::lock_guard<std::mutex> g(rec->mu);
        report.run = rec->run;
        report.stop = rec->stop;
    }
    const th_plugin_def& d = inst->def();
    report.plugin = PluginInfo{name, d.version ? d.version : "", d.description ? d.description : "", file,
                               inst->shadow(), inst->sha256(), {{task_def.name, interval, timeout, id, {}}}};
    if (report.stop_state == StopState::stopped) {
        if (!inst->shutdown(config_.shutdown_timeout)) inst->abandon();
    } else {
        inst->abandon();  // its code may still be running: never unmap it
    }
    return report;  // the last reference to inst goes with the Tickers' copy of the task: unload
}

}  // namespace tickhost
