#include "control/protocol.hpp"

#include <nlohmann/json.hpp>

#include <chrono>

namespace tickhost::detail::control {

namespace {

using Json = nlohmann::ordered_json;

// Strings a plugin declared (its version, an error it set) are bytes, not necessarily UTF-8: invalid
// sequences become U+FFFD, so that the line stays valid JSON.
std::string line(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n"; }

Json unix_ms(std::chrono::system_clock::time_point t) {
    if (t == std::chrono::system_clock::time_point{}) return nullptr;
    return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

Json text_or_null(const std::string& s) { return s.empty() ? Json(nullptr) : Json(s); }

const char* result_name(RunResult r) {
    switch (r) {
        case RunResult::none:
            return "none";
        case RunResult::ok:
            return "ok";
        case RunResult::failed:
            return "failed";
        case RunResult::timed_out:
            return "timed_out";
        case RunResult::cancelled:
            return "cancelled";
    }
    return "unknown";
}

const char* activity_name(TaskActivity::State s) {
    switch (s) {
        case TaskActivity::State::idle:
            return "idle";
        case TaskActivity::State::in_run:
            return "in_run";
        case TaskActivity::State::in_stop_call:
            return "in_stop_call";
        case TaskActivity::State::abandoned:
            return "abandoned";
    }
    return "unknown";
}

Json totals_json(const TaskTotals& t) {
    return {{"tasks", t.tasks},       {"failing", t.failing}, {"abandoned", t.abandoned}, {"runs", t.runs},
            {"failures", t.failures}, {"skipped", t.skipped}, {"timeouts", t.timeouts}};
}

Json task_json(const TaskSnapshot& t, const HostStatus& h) {
    const TaskStats& s = t.stats;
    Json last = nullptr;
    if (s.last_result != RunResult::none)
        last = {{"start_unix_ms", unix_ms(h.wall(s.last_start))},
                {"duration_ns", s.last_duration ? Json(s.last_duration->count()) : Json(nullptr)},
                {"duration_resolution_ns", s.last_duration_resolution.count()},
                {"result", result_name(s.last_result)},
                {"error", text_or_null(s.last_error)}};
    const bool busy = t.activity.since != TimePoint{};
    return {{"name", t.name},
            {"interval_ns", t.interval.count()},
            {"timeout_ns", t.timeout.count()},
            {"runs", s.runs},
            {"failures", s.failures},
            {"skipped", s.skipped},
            {"timeouts", s.timeouts},
            {"consecutive_failures", s.consecutive_failures},
            {"backoff_ns", s.backoff.count()},
            {"activity", activity_name(t.activity.state)},
            {"activity_since_unix_ms", busy ? unix_ms(h.wall(t.activity.since)) : Json(nullptr)},
            {"last_run", std::move(last)},
            {"next_due_unix_ms",
             t.activity.state == TaskActivity::State::abandoned ? Json(nullptr) : unix_ms(h.wall(s.next_due))}};
}

Json error_json(const LoadError& e) {
    return {{"code", int(e.code)}, {"name", e.code_name}, {"reason", e.reason}, {"hint", e.hint}};
}

Json plugin_json(const HostStatus::Plugin& hp, const HostStatus& h) {
    const PluginStatus& p = hp.plugin;
    Json tasks = Json::array();
    for (auto& t : hp.tasks) tasks.push_back(task_json(t, h));
    const bool running = p.state == PluginStatus::State::running;
    return {{"name", p.name},
            {"version", p.version},
            {"description", p.description},
            {"file", p.file.string()},
            {"sha256", text_or_null(p.sha256)},
            {"mode", p.isolation == Isolation::process ? "process" : "none"},
            {"pid", p.pid > 0 ? Json(p.pid) : Json(nullptr)},
            {"state", state_name(p.state)},
            {"since_unix_ms", unix_ms(p.since)},
            {"restart_unix_ms", p.state == PluginStatus::State::backing_off ? unix_ms(p.restart_at) : Json(nullptr)},
            {"crashes", p.crashes},
            {"error", p.error ? error_json(*p.error) : Json(nullptr)},
            {"detail", text_or_null(p.detail)},
            {"totals", running ? totals_json(hp.totals) : Json(nullptr)},
            {"tasks_total", hp.totals.tasks},
            {"tasks", std::move(tasks)}};
}

}  // namespace

std::optional<Request> parse_request(std::string_view text, std::string* error) {
    Json j = Json::parse(text.begin(), text.end(), nullptr, false);
    if (j.is_discarded()) {
        *error = "the request is not JSON: send one line such as {\"command\":\"status\"}";
        return std::nullopt;
    }
    if (!j.is_object() || !j.contains("command") || !j["command"].is_string()) {
        *error = "the request must be a JSON object with a \"command\" (status, reload or run-now)";
        return std::nullopt;
    }
    const std::string cmd = j["command"].get<std::string>();
    Request r;
    auto str = [&](const char* key, std::string* out) {
        if (!j.contains(key)) return true;
        if (!j[key].is_string()) {
            *error = std::string("\"") + key + "\" must be a string";
            return false;
        }
        *out = j[key].get<std::string>();
        return true;
    };
    if (cmd == "status") {
        r.kind = Request::Kind::status;
        if (j.contains("task_limit")) {
            const Json& l = j["task_limit"];
            if (!l.is_number_unsigned() || l.get<uint64_t>() > kMaxTaskLimit) {
                *error = "\"task_limit\" must be an integer from 0 to " + std::to_string(kMaxTaskLimit);
                return std::nullopt;
            }
            r.task_limit = size_t(l.get<uint64_t>());
        }
    } else if (cmd == "reload") {
        r.kind = Request::Kind::reload;
    } else if (cmd == "run-now") {
        r.kind = Request::Kind::run_now;
        if (!str("plugin", &r.plugin) || !str("task", &r.task)) return std::nullopt;
        if (r.plugin.empty()) {
            *error = "run-now needs a \"plugin\"";
            return std::nullopt;
        }
    } else {
        *error = "unknown command '" + cmd + "' (status, reload or run-now)";
        return std::nullopt;
    }
    return r;
}

std::string error_response(std::string_view code, std::string_view message) {
    return line({{"ok", false}, {"error", {{"code", code}, {"message", message}}}});
}

std::string status_response(const HostStatus& h) {
    Json plugins = Json::array();
    size_t running = 0;
    for (auto& p : h.plugins) {
        plugins.push_back(plugin_json(p, h));
        running += p.plugin.state == PluginStatus::State::running;
    }
    Json tasks = Json::array();
    for (auto& t : h.tasks) tasks.push_back(task_json(t, h));
    Json last = nullptr;
    if (h.last_reload)
        last = {{"unix_ms", unix_ms(h.last_reload->when)},
                {"applied", h.last_reload->applied},
                {"error", text_or_null(h.last_reload->error)},
                {"file", text_or_null(h.last_reload->file)},
                {"line", h.last_reload->line ? Json(h.last_reload->line) : Json(nullptr)},
                {"column", h.last_reload->column ? Json(h.last_reload->column) : Json(nullptr)}};
    Json totals = totals_json(h.totals);
    totals["plugins"] = h.plugins.size();
    totals["running"] = running;
    Json doc = {
        {"schema", kSchema},
        {"host",
         {{"version", h.version},
          {"pid", h.pid},
          {"started_unix_ms", unix_ms(h.started)},
          {"uptime_ns", h.uptime.count()},
          {"config_file", text_or_null(h.config_file.string())},
          {"config_applied_unix_ms", unix_ms(h.config_applied)},
          {"last_reload", std::move(last)},
          {"reloads", h.reloads},
          {"control_socket", text_or_null(h.control_socket.string())},
          {"now_unix_ms", unix_ms(h.wall_now)}}},
        {"totals", std::move(totals)},
        {"plugins", std::move(plugins)},
        {"tasks_total", h.task_totals.tasks},
        {"tasks", std::move(tasks)},
    };
    return line({{"ok", true}, {"status", std::move(doc)}});
}

std::string reload_response(const ReloadResult& r, const std::string& config_file) {
    return line({{"ok", true},
                 {"reload",
                  {{"applied", r.applied},
                   {"unix_ms", unix_ms(r.when)},
                   {"config_file", text_or_null(config_file)},
                   {"error", text_or_null(r.error)},
                   {"file", text_or_null(r.file)},
                   {"line", r.line ? Json(r.line) : Json(nullptr)},
                   {"column", r.column ? Json(r.column) : Json(nullptr)}}}});
}

const char* run_now_name(RunNow r) {
    switch (r) {
        case RunNow::started:
            return "started";
        case RunNow::already_running:
            return "already_running";
        case RunNow::abandoned:
            return "abandoned";
        case RunNow::not_running:
            return "not_running";
        case RunNow::unknown:
            return "unknown";
    }
    return "unknown";
}

std::string run_now_response(const std::string& plugin, const std::string& task,
                             const std::vector<RunNowOutcome>& outcomes, const std::vector<PluginStatus>& known) {
    if (outcomes.empty()) {
        const PluginStatus* found = nullptr;
        std::string running;
        for (auto& p : known) {
            if (p.name == plugin && (!found || p.state == PluginStatus::State::running)) found = &p;
            if (p.state == PluginStatus::State::running) running += (running.empty() ? "" : ", ") + p.name;
        }
        if (!found)
            return error_response("no_such_plugin",
                                  "no plugin '" + plugin + "' (running: " + (running.empty() ? "none" : running) + ")");
        if (found->state != PluginStatus::State::running)
            return error_response("not_running", "plugin '" + plugin + "' is not running (" + state_name(found->state) +
                                                     (found->error ? ": " + found->error->message() : "") + ")");
        std::string all;
        for (auto& t : found->tasks) {
            if (all.size() > 200) {
                all += ", ...";
                break;
            }
            all += (all.empty() ? "" : ", ") + t.name;
        }
        return error_response("no_such_task",
                              "plugin '" + plugin + "' has no task '" + task + "' (it has: " + all + ")");
    }
    Json tasks = Json::array();
    for (auto& o : outcomes) {
        Json t = {{"task", o.task}, {"result", run_now_name(o.result)}};
        t["runs_before"] = o.result == RunNow::started ? Json(o.runs_before) : Json(nullptr);
        tasks.push_back(std::move(t));
    }
    return line({{"ok", true}, {"run_now", {{"plugin", plugin}, {"tasks", std::move(tasks)}}}});
}

}  // namespace tickhost::detail::control
