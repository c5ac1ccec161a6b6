// Pieces shared by the tickhost subcommands: the parsed command line, log routing for tools, durations for
// people. The command line is parsed in cli.cpp only (CLI11); the subcommands take plain structs.
#pragma once

#include <tickhost/config.hpp>

#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace tickhost::app {

// `tickhost [--config PATH] [--log-level LEVEL]`: run the host.
struct HostArgs {
    std::string config_path = "host.toml";
    std::string log_level;  // empty: [host] log_level of host.toml; else a valid spdlog level name
};

// `tickhost check [--json] [--config PATH] [--isolation MODE] FILE...`
struct CheckArgs {
    bool json = false;
    std::string config_path;           // empty: the defaults
    std::optional<Isolation> isolation;  // overrides host.toml's for every plugin
    std::vector<std::string> files;  // at least one
};

// `tickhost run-once FILE [--task NAME] [--config PATH] [--set KEY=VALUE]... [--timeout D] [--log-level L]
//                   [--isolation MODE]`
struct RunOnceArgs {
    std::string file;
    std::optional<Isolation> isolation;  // overrides host.toml's for every plugin
    std::string task;  // empty: the plugin's first task
    std::string config_path;
    std::string log_level = "info";                        // a valid spdlog level name
    std::optional<Duration> timeout;                       // positive, at most max_duration
    std::vector<std::pair<std::string, std::string>> set;  // KEY (non-empty), VALUE (untyped), in order given
};

// `tickhost new-plugin NAME [--lang cpp|c] [--dir DIR]`
struct NewPluginArgs {
    std::string name;          // a valid plugin name
    std::string lang = "cpp";  // "cpp" or "c"
    std::string dir;           // empty: ./NAME
};

// Where `status`, `reload` and `run-now` find the running host's control socket: the socket itself, or the
// host.toml it runs on (found as the host would: its [host] control_socket, or the default place); neither:
// the default place, then /run/tickhost/control (a system service's).
struct ControlTarget {
    std::string config_path;
    std::string socket_path;
};

// `tickhost status [--json] [--tasks N] [--config PATH | --socket PATH]`
struct StatusArgs {
    ControlTarget target;
    bool json = false;
    size_t tasks = 200;  // listed per plugin
};

// `tickhost reload [--config PATH | --socket PATH]`
struct ReloadArgs {
    ControlTarget target;
};

// `tickhost run-now PLUGIN[/TASK] [--wait] [--config PATH | --socket PATH]`
struct RunNowArgs {
    ControlTarget target;
    std::string plugin;
    std::string task;  // empty: every task of the plugin
    bool wait = false;
};

struct CommandLine {
    enum class Run { exit, host, check, run_once, new_plugin, status, reload, run_now };
    Run run = Run::exit;
    int exit_status = 0;  // Run::exit: help or version printed (0), or a usage error reported (2)
    HostArgs host;
    CheckArgs check;
    RunOnceArgs run_once;
    NewPluginArgs new_plugin;
    StatusArgs status;
    ReloadArgs reload;
    RunNowArgs run_now;
};

// Parses the whole command line. Help (`--help`, `help [SUBCOMMAND]`), the version and usage errors (the
// message, a "did you mean" for near misses, then the usage on stderr) are printed here and come back as
// Run::exit with the status to exit with.
CommandLine parse_command_line(int argc, char** argv);

// Subcommands, given their parsed arguments; each returns the process's exit status.
int cmd_check(const CheckArgs& args);
int cmd_run_once(const RunOnceArgs& args);
int cmd_new_plugin(const NewPluginArgs& args);
int cmd_status(const StatusArgs& args);
int cmd_reload(const ReloadArgs& args);
int cmd_run_now(const RunNowArgs& args);

// --isolation MODE over host.toml: [host] isolation and every [plugins.<name>] isolation.
void apply_isolation(HostConfig& config, std::optional<Isolation> mode);

// "1.234 ms", "15 us", "2.5 s": a measured duration for people.
std::string human_duration(std::chrono::nanoseconds d);

// Routes every tickhost logger to `out` as "<level> [<logger>] <message>" lines (no timestamps: tools
// print what happened, not when), at `level` (spdlog level name). Throws std::runtime_error on a bad level.
void log_lines_to(std::FILE* out, const std::string& level);

}  // namespace tickhost::app
