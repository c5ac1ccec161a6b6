// The control socket's protocol: one JSON request line in, one JSON response line out, then the connection
// closes. docs/operating.md ("Status and control") documents every field; kSchema versions the status
// document (a field's meaning never changes within a version; fields may be added).
//
//   -> {"command":"status"}                       <- {"ok":true,"status":{"schema":1,"host":{...},...}}
//   -> {"command":"status","task_limit":20}       (at most 20 tasks listed per plugin; totals count them all)
//   -> {"command":"reload"}                       <- {"ok":true,"reload":{"applied":false,"error":"...",...}}
//   -> {"command":"run-now","plugin":"p","task":"t"}  ("task" optional: every task of the plugin)
//                                                 <- {"ok":true,"run_now":{"plugin":"p","tasks":[...]}}
//   any error                                     <- {"ok":false,"error":{"code":"bad_request","message":"..."}}
//
// nlohmann-json stays inside the host library (and out of its public headers).
#pragma once

#include <tickhost/host.hpp>

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tickhost::detail::control {

inline constexpr int kSchema = 1;
inline constexpr size_t kMaxRequest = 4096;        // bytes of one request line
inline constexpr size_t kDefaultTaskLimit = 1000;  // tasks listed per plugin unless the request says
inline constexpr size_t kMaxTaskLimit = 1000000;

struct Request {
    enum class Kind { status, reload, run_now };
    Kind kind = Kind::status;
    size_t task_limit = kDefaultTaskLimit;  // status
    std::string plugin;                     // run-now
    std::string task;                       // run-now; empty: every task of the plugin
};

// One request line (without its '\n'). Nullopt and *error (a message for the client) when it is not one.
std::optional<Request> parse_request(std::string_view line, std::string* error);

// Responses, each one line ending in '\n'.
std::string error_response(std::string_view code, std::string_view message);
std::string status_response(const HostStatus& status);
std::string reload_response(const ReloadResult& result, const std::string& config_file);
// `known`: the host's plugins (to tell "no such plugin" from "not running" and "no such task").
std::string run_now_response(const std::string& plugin, const std::string& task,
                             const std::vector<RunNowOutcome>& outcomes, const std::vector<PluginStatus>& known);

const char* run_now_name(RunNow r);  // "started", "already_running", ...

}  // namespace tickhost::detail::control
