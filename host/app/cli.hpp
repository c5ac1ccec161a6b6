// Pieces shared by the tickhost subcommands: argument helpers, JSON strings, log routing for tools.
#pragma once

#include <tickhost/config.hpp>

#include <chrono>
#include <cstdio>
#include <string>
#include <string_view>

namespace tickhost::app {

// Subcommands: each gets argv without the program name and the subcommand (argv[0] is the subcommand).
int cmd_check(int argc, char** argv);
int cmd_run_once(int argc, char** argv);
int cmd_new_plugin(int argc, char** argv);

// Prints "tickhost <cmd>: <msg>" and the usage to stderr; returns the usage exit status (2).
int usage_error(const char* cmd, const std::string& msg, const char* usage);

// Reads the value of an option given as "--name VALUE" or "--name=VALUE". Returns false if `a` is not that
// option; sets *missing when the value is absent.
bool option_value(int argc, char** argv, int& i, std::string_view name, std::string_view short_name, std::string* out,
                  bool* missing);

// A JSON string literal (quotes included) with everything JSON requires escaped.
std::string json_string(std::string_view s);

// "1.234 ms", "15 us", "2.5 s": a measured duration for people.
std::string human_duration(std::chrono::nanoseconds d);

// Routes every tickhost logger to `out` as "<level> [<logger>] <message>" lines (no timestamps: tools
// print what happened, not when), at `level` (spdlog level name). Throws std::runtime_error on a bad level.
void log_lines_to(std::FILE* out, const std::string& level);

}  // namespace tickhost::app
