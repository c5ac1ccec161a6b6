// host.toml -> validated HostConfig.
//
// Every error names file:line:column and the key, e.g.
//   host.toml:7:12: [host] default_timeout: "10 parsecs" is not a duration (use e.g. "250ms", "10s", "5m", "1h")
// load_config() throws ConfigError; nothing is half-applied.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace tickhost {

using Duration = std::chrono::nanoseconds;

// A configuration error with its place in the source. what() is the full "file:line:column: message".
class ConfigError : public std::runtime_error {
public:
    ConfigError(std::string file, uint32_t line, uint32_t column, std::string key, std::string message);
    const std::string& file() const { return file_; }
    uint32_t line() const { return line_; }      // 1-based; 0 when unknown
    uint32_t column() const { return column_; }  // 1-based; 0 when unknown
    const std::string& key() const { return key_; }  // dotted, e.g. "plugins.heartbeat.interval"
    const std::string& message() const { return message_; }

private:
    std::string file_;
    uint32_t line_;
    uint32_t column_;
    std::string key_;
    std::string message_;
};

// "250ms", "10s", "1.5s", "5m", "1h", "2h30m", "100us", "10ns". Returns nullopt for anything else.
std::optional<Duration> parse_duration(std::string_view text);
// The shortest readable form of d: "250ms", "10s", "1m30s".
std::string format_duration(Duration d);

// A plugin's own [plugins.<name>.config] table, flattened to dotted keys ("db.port"; array items as
// "hosts.0", "hosts.1"). Values keep their TOML type.
class PluginValues {
public:
    using Value = std::variant<bool, int64_t, double, std::string>;
    enum class Lookup { ok, not_found, wrong_type };

    void set(std::string key, Value v) { values_[std::move(key)] = std::move(v); }
    const Value* find(std::string_view key) const;
    Lookup get_string(std::string_view key, const std::string** out) const;
    Lookup get_int(std::string_view key, int64_t* out) const;
    Lookup get_bool(std::string_view key, bool* out) const;
    // A string with units (see parse_duration); a string that is not a duration is wrong_type.
    Lookup get_duration(std::string_view key, Duration* out) const;
    const std::map<std::string, Value, std::less<>>& all() const { return values_; }
    bool operator==(const PluginValues& o) const { return values_ == o.values_; }
    bool operator!=(const PluginValues& o) const { return !(*this == o); }

private:
    std::map<std::string, Value, std::less<>> values_;
};

// A jitter (`jitter` in [host], [plugins.<name>] and [plugins.<name>.tasks.<task>]): a duration ("3s") or a
// share of the task's interval ("10%"). Zero ("0s", "0%", "off") turns one set further out off.
struct Jitter {
    Duration duration{0};  // used when ppm == 0
    uint32_t ppm = 0;      // parts per million of the interval, 1..1000000 ("10%" = 100000; "0.0001%" = 1)
    // The jitter of a task with this interval: the share of it, or the duration, at most the interval.
    Duration of(Duration interval) const;
    bool longer_than(Duration interval) const { return ppm == 0 && duration > interval; }
    bool operator==(const Jitter& o) const { return duration == o.duration && ppm == o.ppm; }
    bool operator!=(const Jitter& o) const { return !(*this == o); }
};
// "3s" or "10%", as host.toml takes it ("0s" when zero).
std::string format_jitter(const Jitter& j);

// [plugins.<name>.tasks.<task>]
struct TaskSettings {
    std::optional<Duration> interval;
    std::optional<Duration> timeout;
    std::optional<Jitter> jitter;  // unset: the plugin's, else [host]'s
    std::optional<bool> align;     // unset: the plugin's, else [host]'s
    bool operator==(const TaskSettings& o) const {
        return interval == o.interval && timeout == o.timeout && jitter == o.jitter && align == o.align;
    }
};

// How a plugin runs: in the host's process (none), or in a child process of its own (process; Linux only,
// refused by the parser elsewhere).
enum class Isolation { none, process };

// [plugins.<name>]
struct PluginSettings {
    bool enabled = true;
    std::optional<Duration> interval;  // applies to each of the plugin's tasks unless the task overrides it
    std::optional<Duration> timeout;
    std::optional<Jitter> jitter;  // as interval; unset: [host] jitter
    std::optional<bool> align;     // as interval; unset: [host] align
    std::map<std::string, TaskSettings> tasks;
    PluginValues config;
    std::string sha256;  // pinned content (64 lowercase hex digits); empty = any content

    std::optional<Isolation> isolation;  // unset = [host] isolation (see HostConfig::isolation_of)
    // The rest only with isolation "process" (the parser refuses them on a plugin whose isolation is "none").
    // The user and group the plugin's process runs as: a name or a numeric id ("65534"); empty = the host's.
    // Another than the host's needs the host to run as root, which is checked when the plugin starts.
    std::string user;
    std::string group;
    uint64_t memory_max = 0;      // bytes; 0 = no limit
    uint64_t open_files_max = 0;  // 1..1048576; 0 = the host's limit
    uint64_t processes_max = 0;   // 1..100000, the plugin's own process counted (1 = it starts none); 0 = no limit
    // Any difference restarts the plugin when host.toml is applied.
    bool operator==(const PluginSettings& o) const {
        return enabled == o.enabled && interval == o.interval && timeout == o.timeout && jitter == o.jitter &&
               align == o.align && tasks == o.tasks && config == o.config && sha256 == o.sha256 &&
               isolation == o.isolation && user == o.user && group == o.group && memory_max == o.memory_max &&
               open_files_max == o.open_files_max && processes_max == o.processes_max;
    }
};

enum class LogSink { console, file, rotating };


// How plugin_dir (and host.toml) are watched: inotify where available, else polling; or not at all.
enum class WatchMode { automatic, inotify, poll, off };

struct HostConfig {
    std::filesystem::path source;      // the host.toml this came from (empty when built in code)
    std::filesystem::path plugin_dir;  // absolute after loading (relative paths resolve against source's folder)
    size_t workers = 0;                // 0 = number of cores
    Duration default_timeout = std::chrono::seconds(10);
    Duration shutdown_timeout = std::chrono::seconds(30);  // bound on the whole graceful stop
    std::string log_level = "info";    // trace, debug, info, warn, error, critical, off
    LogSink log_sink = LogSink::console;
    std::filesystem::path log_file;    // for file / rotating sinks (relative: against source's folder)
    uint64_t log_max_size = 10 * 1024 * 1024;  // rotating sink: bytes per file
    uint32_t log_max_files = 5;                // rotating sink: files kept
    std::filesystem::path shadow_dir;  // shadow copies' cache; empty = in $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR or /tmp
    WatchMode watch = WatchMode::automatic;
    Duration poll_interval = std::chrono::seconds(1);  // the polling backend's scan period
    Duration settle = std::chrono::milliseconds(300);  // quiet time before a file seen changing is loaded
    // A task failing k times in a row next runs interval * 2^k later, at most this much later; 0 = off. Also the
    // longest wait before a crashed isolated plugin's process is restarted (0: at once).
    Duration backoff_max = std::chrono::minutes(5);
    bool allow_insecure = false;  // load files (and a plugin_dir) writable by group/others or owned by another user
    bool allow_symlinks = false;  // load plugin files that are symlinks
    uint64_t max_plugin_size = 256ull * 1024 * 1024;  // larger plugin files are refused (TH_E_FILE_TOO_LARGE)
    uint32_t max_tasks_per_plugin = 100000;  // static + add_task; more refuses the plugin (TH_E_TOO_MANY_TASKS)
    Isolation isolation = Isolation::none;   // of every plugin whose [plugins.<name>] sets none
    // How long past its deadline a run that ignores its cancellation is waited for: then it is abandoned
    // (in process: its worker replaced, the library pinned) or its process killed and restarted (isolated).
    // It is Tickers::Options::abandon_after for in-process plugins, so it takes effect at restart.
    Duration abandon_after = std::chrono::seconds(5);
    // An isolated plugin whose process dies crash_limit (1..1000) times within crash_window stays down until
    // its file changes or the host reloads. Restarts before that back off, at most backoff_max.
    uint32_t crash_limit = 5;
    Duration crash_window = std::chrono::seconds(60);
    // Defaults of every plugin task's jitter and alignment (a plugin's or a task's own settings win). A change
    // restarts every plugin, as a change of default_timeout does.
    std::optional<Jitter> jitter;
    bool align = false;
    // The host's name in jitter seeds (README.md, "Schedules"). Not a host.toml key: empty = the machine's
    // (gethostname); set it in code to give an instance a name of its own.
    std::string host_name;
    // The Unix socket `tickhost status`, `reload` and `run-now` talk to (docs/operating.md); empty: none.
    // load_config() sets default_control_socket() unless host.toml says "off" or a path. A HostConfig built in
    // code has none: an embedding application opts in. Takes effect at start.
    std::filesystem::path control_socket;
    std::map<std::string, PluginSettings> plugins;

    // Settings for a plugin (defaults when host.toml has no [plugins.<name>]).
    const PluginSettings& plugin(const std::string& name) const;
    // The plugin's own isolation, else [host] isolation.
    Isolation isolation_of(const std::string& plugin) const;
};

// Where [host] control_socket is when host.toml does not say: $RUNTIME_DIRECTORY/control (a systemd service
// with RuntimeDirectory=), else $XDG_RUNTIME_DIR/tickhost/control, else /tmp/tickhost-<euid>/control.
std::filesystem::path default_control_socket();
// The longest control socket path (a Unix socket address holds 107 bytes and a terminating NUL).
inline constexpr size_t max_control_socket_path = 107;

// The keys host.toml accepts in [host], in [plugins.<name>] and in [plugins.<name>.tasks.<task>] (the
// tests keep the README's table and the bundled host.toml in step with these).
enum class ConfigTable { host, plugin, task };
const std::vector<std::string_view>& config_keys(ConfigTable table);

// Reads and validates a host.toml. Throws ConfigError (syntax, wrong type, unknown key with a "did you
// mean" suggestion, a duration that is not positive or longer than max_duration (365 days), a process-only key
// on a plugin whose isolation is "none", ...). Relative paths resolve against the file's folder.
HostConfig load_config(const std::filesystem::path& file);
// Same, from text; `source` is used for messages and to resolve relative paths.
HostConfig parse_config(std::string_view toml_text, const std::filesystem::path& source);

}  // namespace tickhost
