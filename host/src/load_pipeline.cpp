#include "load_pipeline.hpp"

#include "inprocess_instance.hpp"
#if defined(__linux__)
#include "isolation/isolated_instance.hpp"
#endif

#include <spdlog/spdlog.h>

#include <sys/stat.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace tickhost::detail {

LoadError to_error(const LoadFailure& f) { return LoadError{f.code, status_name(f.code), f.reason, f.hint}; }


std::pair<Duration, Duration> schedule_of(const PluginSettings& s, const th_task_def& t, Duration default_timeout) {
    auto it = s.tasks.find(t.name);
    const TaskSettings* ts = it == s.tasks.end() ? nullptr : &it->second;
    const Duration interval = ts && ts->interval ? *ts->interval
                              : s.interval       ? *s.interval
                                                 : Duration(t.default_interval_ns);
    const Duration timeout = ts && ts->timeout          ? *ts->timeout
                             : s.timeout                ? *s.timeout
                             : t.default_timeout_ns > 0 ? Duration(t.default_timeout_ns)
                                                        : default_timeout;
    return {interval, timeout};
}

Placement placement_of(const HostConfig& c, const std::string& host, const std::string& plugin, const PluginSettings& s,
                       const std::string& task, Duration interval) {
    auto it = s.tasks.find(task);
    const TaskSettings* ts = it == s.tasks.end() ? nullptr : &it->second;
    Placement p;
    const Jitter* j = nullptr;
    if (ts && ts->jitter) {
        j = &*ts->jitter;
        p.source = "[plugins." + plugin + ".tasks." + task + "] jitter";
    } else if (s.jitter) {
        j = &*s.jitter;
        p.source = "[plugins." + plugin + "] jitter";
    } else if (c.jitter) {
        j = &*c.jitter;
        p.source = "[host] jitter";
    }
    if (j) {
        p.jitter = j->of(interval);
        p.capped = j->longer_than(interval);
        p.offset = task_jitter_offset(host, plugin, task, p.jitter);
    }
    p.align = ts && ts->align ? *ts->align : s.align ? *s.align : c.align;
    return p;
}

LoadPipeline::LoadPipeline(const HostConfig& config, std::shared_ptr<spdlog::logger> log)
    : config_(config), log_(std::move(log)), cache_(std::make_unique<ShadowCache>(config.shadow_dir, log_)) {}

LoadPipeline::~LoadPipeline() = default;

const fs::path& LoadPipeline::shadow_dir() const { return cache_->dir(); }

namespace {
#if defined(__linux__)
// A worker that runs as another user opens the checked copy again through the descriptor it was given
// (/proc/self/fd/5: dlopen needs a path), and that open checks the copy's own mode, 0700 and the host's:
// the worker's group may read it. Nobody else can: the cache's folders stay 0700. A user or group that does
// not resolve is left for the instance to refuse by name.
void share_copy(const fs::path& copy, const std::string& user, const std::string& group) {
    uid_t uid;
    gid_t gid;
    const bool known = group.empty() ? resolve_user(user, &uid, &gid, nullptr) : resolve_group(group, &gid, nullptr);
    if (!known || ::chown(copy.c_str(), uid_t(-1), gid) != 0) return;  // not root: the spawn says why
    ::chmod(copy.c_str(), 0750);
}
#endif
}  // namespace

FilePolicy LoadPipeline::policy() const {
    return {config_.allow_insecure, config_.allow_symlinks, config_.max_plugin_size};
}

bool LoadPipeline::stage(const fs::path& file, StagedFile* staged, LoadFailure* err) {
    // The same steps for the host, `check` and `run-once`: the folder's owner and mode, then the file read
    // once into its shadow copy (checked, hashed and scanned on the way).
    std::error_code ec;
    const fs::path dir = fs::absolute(file, ec).parent_path();  // "probe.so": the working directory
    return check_plugin_dir(ec ? file.parent_path() : dir, policy(), err) &&
           stage_plugin_file(file, *cache_, policy(), staged, err);
}

std::optional<LoadError> LoadPipeline::pin_mismatch(const std::string& name, const fs::path& file,
                                                   const std::string& sha) const {
    auto it = config_.plugins.find(name);
    if (it == config_.plugins.end() || it->second.sha256.empty() || it->second.sha256 == sha) return std::nullopt;
    return LoadError{TH_E_CHECKSUM_MISMATCH, "TH_E_CHECKSUM_MISMATCH",
                     "its sha256 is " + sha + " but host.toml pins [plugins." + name + "] sha256 = \"" +
                         it->second.sha256 + "\"",
                     "install the file that was pinned, or pin this one (sha256sum " + file.string() + ")"};
}

std::shared_ptr<PluginInstance> LoadPipeline::open_in(Isolation mode, const fs::path& file, StagedFile& staged,
                                                      LoadError* err) {
    // The entry point is bounded like init, by [plugins.<file stem>] timeout (its declared name is not
    // known before it returns), else the host's default.
    const PluginSettings& by_file = config_.plugin(file.stem().string());
    const Duration entry_bound = by_file.timeout ? *by_file.timeout : config_.default_timeout;
    if (mode == Isolation::process) {
#if defined(__linux__)
        IsolatedOptions o;
        std::string e;
        o.worker = find_worker(&e);
        if (o.worker.empty()) {
            *err = LoadError{TH_E_NOT_ALLOWED, "TH_E_NOT_ALLOWED", "isolation = \"process\": " + e,
                             "install tickhost-worker beside tickhost (make install does)"};
            return nullptr;
        }
        const std::string name = file.stem().string();
        const PluginSettings& s = config_.plugin(name);
        o.entry_bound = entry_bound;
        o.max_tasks = config_.max_tasks_per_plugin;
        o.abandon_after = config_.abandon_after;
        o.workers = config_.workers;
        o.limits = ChildLimits{s.memory_max, s.open_files_max, s.processes_max};
        o.user = s.user;
        o.group = s.group;
        if (!o.user.empty() || !o.group.empty()) share_copy(staged.copy, o.user, o.group);
        if (!isolation_) isolation_ = std::make_unique<IsolationRuntime>(log_);
        return IsolatedInstance::open(*isolation_, file, staged, o, err);
#else
        *err = LoadError{TH_E_NOT_ALLOWED, "TH_E_NOT_ALLOWED", "process isolation is available on Linux only",
                         "set isolation = \"none\" in host.toml"};
        return nullptr;
#endif
    }
    LoadFailure f;
    auto lib = Library::load(staged, log_, entry_bound, &f, config_.max_tasks_per_plugin);
    if (!lib) {
        *err = to_error(f);
        return nullptr;
    }
    return std::make_shared<InProcessInstance>(std::move(lib), log_);
}

std::shared_ptr<PluginInstance> LoadPipeline::open(const fs::path& file, StagedFile& staged, LoadError* err) {
    const Isolation mode = config_.isolation_of(file.stem().string());
    const std::string sha = staged.sha256;
    auto inst = open_in(mode, file, staged, err);
    if (!inst) return nullptr;
    const std::string name = inst->def().name;
    if (const Isolation wanted = config_.isolation_of(name); wanted != mode) {
        // Named otherwise than its file, with another mode in host.toml: opened again, in its own mode.
        log_->info("{}: plugin '{}' is set to isolation = \"{}\" in host.toml; loading it again that way (name the "
                   "file {}.so so that its mode is known before any of its code runs)",
                   file.string(), name, wanted == Isolation::process ? "process" : "none", name);
        inst.reset();
        StagedFile again;
        LoadFailure f;
        if (!stage(file, &again, &f)) {
            *err = to_error(f);
            return nullptr;
        }
        if (again.sha256 != sha) {
            *err = LoadError{TH_E_NOT_A_LIBRARY, "TH_E_NOT_A_LIBRARY", "the file changed while it was being loaded",
                             "it is loaded when it stops changing"};
            return nullptr;
        }
        inst = open_in(wanted, file, again, err);
        if (!inst) return nullptr;
    }
    // A pin on the name the plugin declares (the file may be named otherwise). Its entry point has run.
    if (auto e = pin_mismatch(inst->def().name, file, inst->sha256())) {
        *err = *e;
        return nullptr;
    }
    return inst;
}

}  // namespace tickhost::detail
