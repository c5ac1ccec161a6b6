// The one way a candidate plugin file becomes a loaded, checked plugin version (no init yet), for the
// manager and the authors' tools alike:
//   plugin_dir's owner and mode -> the file read once into a shadow copy (owner, mode, size, ELF headers,
//   SHA-256, Go scan) -> a sha256 pin on the file's stem -> the version opened in its mode (in-process:
//   dlopen + entry point + descriptor checks; isolated: the same in a child process, its descriptor
//   checked again by the host) -> a sha256 pin on the name the plugin declares.
#pragma once

#include <tickhost/config.hpp>
#include <tickhost/plugin_manager.hpp>

#include "loader.hpp"
#include "plugin_instance.hpp"

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

namespace spdlog {
class logger;
}

namespace tickhost::detail {

class IsolationRuntime;

LoadError to_error(const LoadFailure& f);

// A task's interval and timeout: host.toml's task setting, then its plugin setting, then the plugin's own
// default (a timeout of 0: the host's default).
std::pair<Duration, Duration> schedule_of(const PluginSettings& s, const th_task_def& t, Duration default_timeout);

// Where a task's runs fall in time, from host.toml: its jitter (the task's, else its plugin's, else [host]'s),
// resolved against its interval, the offset that gives this task on this host, and its alignment.
struct Placement {
    Duration jitter{0};  // at most the interval
    Duration offset{0};  // task_jitter_offset(host, plugin, task, jitter)
    bool align = false;
    bool capped = false;  // a jitter written as a duration was longer than the interval: capped at it
    std::string source;   // the key the jitter came from ("[plugins.x] jitter"), empty when none
};
Placement placement_of(const HostConfig& c, const std::string& host, const std::string& plugin, const PluginSettings& s,
                       const std::string& task, Duration interval);

class LoadPipeline {
public:
    // `config` is read at each call (the manager's, replaced on apply_config); it must outlive the
    // pipeline. Creates the shadow cache (throws std::runtime_error if it cannot).
    LoadPipeline(const HostConfig& config, std::shared_ptr<spdlog::logger> log);
    ~LoadPipeline();
    LoadPipeline(const LoadPipeline&) = delete;
    LoadPipeline& operator=(const LoadPipeline&) = delete;

    const std::filesystem::path& shadow_dir() const;
    // plugin_dir's checks for the file's folder, then stage_plugin_file. False + err on refusal.
    bool stage(const std::filesystem::path& file, StagedFile* staged, LoadFailure* err);
    // TH_E_CHECKSUM_MISMATCH if host.toml pins [plugins.<name>] sha256 to other content than `sha`.
    std::optional<LoadError> pin_mismatch(const std::string& name, const std::filesystem::path& file,
                                          const std::string& sha) const;
    // Opens a staged file (taking its copy over) in the mode of [plugins.<file stem>] (the plugin's name
    // is not known before its code runs); if the name it declares has another mode, it is opened again
    // in that one. Then the pin on the declared name. Null + *err on refusal.
    std::shared_ptr<PluginInstance> open(const std::filesystem::path& file, StagedFile& staged, LoadError* err);

private:
    std::shared_ptr<PluginInstance> open_in(Isolation mode, const std::filesystem::path& file, StagedFile& staged,
                                            LoadError* err);
    FilePolicy policy() const;

    const HostConfig& config_;
    std::shared_ptr<spdlog::logger> log_;
    std::unique_ptr<ShadowCache> cache_;
    std::unique_ptr<IsolationRuntime> isolation_;  // started with the first isolated plugin
};

}  // namespace tickhost::detail
