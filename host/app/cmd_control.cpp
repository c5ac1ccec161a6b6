// tickhost status, reload, run-now: a running host's state and two levers, through its control socket
// ([host] control_socket; the protocol: host/src/control/protocol.hpp; the JSON: docs/operating.md).
#include "cli.hpp"

#include <tickhost/config.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace tickhost::app {
namespace {

using Json = nlohmann::ordered_json;  // keeps the host's order of keys (--json prints them as they came)
using namespace std::chrono_literals;

constexpr int kUnreachable = 3;                        // exit status: no host answered (or it refused us)
constexpr size_t kMaxResponse = 512ull * 1024 * 1024;  // a status of a million tasks fits
const char* const kServiceSocket = "/run/tickhost/control";

// ---- finding and asking the host -------------------------------------------------------------------------

// Where to look. A message on stderr and nullopt (exit status in *status) when there is nowhere to look.
std::optional<std::vector<fs::path>> candidates(const ControlTarget& t, const char* cmd, int* status) {
    if (!t.socket_path.empty()) return std::vector<fs::path>{fs::absolute(t.socket_path)};
    if (!t.config_path.empty()) {
        HostConfig c;
        try {
            c = load_config(t.config_path);
        } catch (const ConfigError& e) {
            std::fprintf(stderr, "tickhost %s: %s\n", cmd, e.what());
            *status = 2;
            return std::nullopt;
        }
        if (c.control_socket.empty()) {
            std::fprintf(stderr,
                         "tickhost %s: %s sets [host] control_socket = \"off\": that host has no control socket "
                         "(remove the line, or give it a path, and restart the host)\n",
                         cmd, t.config_path.c_str());
            *status = kUnreachable;
            return std::nullopt;
        }
        return std::vector<fs::path>{c.control_socket};
    }
    std::vector<fs::path> all{default_control_socket()};
    if (all.front() != kServiceSocket) all.push_back(kServiceSocket);
    return all;
}

struct Connected {
    int fd = -1;
    fs::path path;
};

std::string where_to_look_hint() {
    return "is the host running? One started with another host.toml has its socket where that file says (give "
           "--config HOST.TOML); a system service's is " +
           std::string(kServiceSocket) + " (or give --socket PATH)";
}

// Connects to the first candidate that exists. Prints what went wrong (what, where, what to do) otherwise.
std::optional<Connected> connect_host(const std::vector<fs::path>& where, const char* cmd) {
    std::string tried;
    for (const auto& path : where) {
        struct stat st {};
        if (::lstat(path.c_str(), &st) != 0 && (errno == ENOENT || errno == ENOTDIR)) {
            tried += (tried.empty() ? "" : " nor at ") + path.string();
            continue;
        }
        const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        if (fd < 0 || path.native().size() >= sizeof a.sun_path) {
            std::fprintf(stderr, "tickhost %s: %s: cannot use this socket path\n", cmd, path.c_str());
            if (fd >= 0) ::close(fd);
            return std::nullopt;
        }
        std::memcpy(a.sun_path, path.c_str(), path.native().size());
        if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) return Connected{fd, path};
        const int e = errno;
        ::close(fd);
        if (e == EACCES || e == EPERM)
            std::fprintf(stderr,
                         "tickhost %s: permission denied on %s: a host's control socket is for its own user and root "
                         "only; run this command as that user (e.g. sudo -u USER tickhost %s)\n",
                         cmd, path.c_str(), cmd);
        else if (e == ECONNREFUSED)
            std::fprintf(stderr, "tickhost %s: no host is listening on %s (a socket left by a host that is gone); %s\n",
                         cmd, path.c_str(), where_to_look_hint().c_str());
        else
            std::fprintf(stderr, "tickhost %s: cannot connect to %s: %s\n", cmd, path.c_str(), std::strerror(e));
        return std::nullopt;
    }
    std::fprintf(stderr, "tickhost %s: no host's control socket at %s; %s\n", cmd, tried.c_str(),
                 where_to_look_hint().c_str());
    return std::nullopt;
}

// One request line, one response line. Nullopt (a message printed) when no usable answer came.
std::optional<Json> ask(const ControlTarget& target, const Json& request, std::chrono::milliseconds bound,
                        const char* cmd, int* status) {
    const auto where = candidates(target, cmd, status);
    if (!where) return std::nullopt;
    *status = kUnreachable;
    // A host that has as many clients as it takes answers "busy": a moment later it has room.
    for (int attempt = 0;; ++attempt) {
        auto c = connect_host(*where, cmd);
        if (!c) return std::nullopt;
        const std::string line = request.dump() + "\n";
        std::string in;
        bool sent = ::send(c->fd, line.data(), line.size(), MSG_NOSIGNAL) == ssize_t(line.size());
        const auto until = std::chrono::steady_clock::now() + bound;
        while (sent && in.find('\n') == std::string::npos && in.size() < kMaxResponse) {
            const auto left =
                std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
            if (left.count() <= 0) break;
            pollfd p{c->fd, POLLIN, 0};
            const int r = ::poll(&p, 1, int(std::min<int64_t>(left.count(), 60000)));
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) continue;
            char buf[65536];
            const ssize_t n = ::recv(c->fd, buf, sizeof buf, 0);
            if (n <= 0) break;
            in.append(buf, size_t(n));
        }
        ::close(c->fd);
        if (in.find('\n') == std::string::npos) {
            if (std::chrono::steady_clock::now() >= until)
                std::fprintf(stderr,
                             "tickhost %s: the host at %s did not answer within %lld s; try again (its log may "
                             "say why)\n",
                             cmd, c->path.c_str(), static_cast<long long>(bound.count() / 1000));
            else
                std::fprintf(stderr, "tickhost %s: the host at %s closed the connection without an answer\n", cmd,
                             c->path.c_str());
            return std::nullopt;
        }
        Json j = Json::parse(in.substr(0, in.find('\n')), nullptr, false);
        if (j.is_discarded() || !j.is_object()) {
            std::fprintf(stderr, "tickhost %s: %s answered something that is not a tickhost control response\n", cmd,
                         c->path.c_str());
            return std::nullopt;
        }
        if (j.value("ok", false) == false && j.contains("error") && j["error"].is_object()) {
            const std::string code = j["error"].value("code", "");
            if (code == "busy" && attempt < 30) {
                std::this_thread::sleep_for(100ms);
                continue;
            }
            if (code == "not_permitted" || code == "busy" || code == "timeout" || code == "stopping") {
                std::fprintf(stderr, "tickhost %s: the host at %s says: %s\n", cmd, c->path.c_str(),
                             j["error"].value("message", code).c_str());
                return std::nullopt;
            }
        }
        *status = 0;
        return j;
    }
}

// ---- text ------------------------------------------------------------------------------------------------

std::string str(const Json& j, const char* key) {
    return j.is_object() && j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : std::string();
}
int64_t num(const Json& j, const char* key, int64_t dflt = 0) {
    return j.is_object() && j.contains(key) && j[key].is_number() ? j[key].get<int64_t>() : dflt;
}
bool has_num(const Json& j, const char* key) { return j.is_object() && j.contains(key) && j[key].is_number(); }

// Control characters shown, not obeyed (a task's error text is the task's).
std::string printable(const std::string& s) {
    std::string out;
    for (unsigned char c : s) {
        if (c == '\n')
            out += "\\n";
        else if (c < 0x20 || c == 0x7f) {
            char b[8];
            std::snprintf(b, sizeof b, "\\x%02x", c);
            out += b;
        } else {
            out += char(c);
        }
    }
    return out;
}

// "0.3ms", "12ms", "1.2s", "3m12s": a measured duration in a table cell.
std::string compact(int64_t ns) {
    char b[32];
    const double v = double(ns);
    if (ns < 1000)
        std::snprintf(b, sizeof b, "%lldns", static_cast<long long>(ns));
    else if (ns < 1000000)
        std::snprintf(b, sizeof b, "%.0fus", v / 1e3);
    else if (ns < 10000000)
        std::snprintf(b, sizeof b, "%.1fms", v / 1e6);
    else if (ns < 1000000000)
        std::snprintf(b, sizeof b, "%.0fms", v / 1e6);
    else if (ns < 60000000000LL)
        std::snprintf(b, sizeof b, "%.1fs", v / 1e9);
    else
        return format_duration(std::chrono::seconds(ns / 1000000000));
    return b;
}

// A run's duration; one below the resolution of the clock it was measured with (the coarse clock's, for
// tasks with a timeout of 1 s or more) as "<=4.0ms".
std::string took_text(const Json& last) {
    const int64_t d = num(last, "duration_ns"), res = num(last, "duration_resolution_ns");
    return res > 0 && d <= res ? "<=" + compact(res) : compact(d);
}

// Local wall-clock time: "10:41:06" today, "2026-11-28 10:41:06" on another day.
std::string when(int64_t unix_ms, int64_t now_ms) {
    const time_t t = time_t(unix_ms / 1000), now = time_t(now_ms / 1000);
    tm a{}, b{};
    localtime_r(&t, &a);
    localtime_r(&now, &b);
    char buf[32];
    if (a.tm_year == b.tm_year && a.tm_yday == b.tm_yday)
        std::strftime(buf, sizeof buf, "%H:%M:%S", &a);
    else
        std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &a);
    return buf;
}

// Columns padded to their widest cell; the last one as it is.
void print_table(const std::vector<std::vector<std::string>>& rows) {
    if (rows.empty()) return;
    std::vector<size_t> w(rows.front().size(), 0);
    for (auto& r : rows)
        for (size_t i = 0; i + 1 < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], r[i].size());
    for (auto& r : rows) {
        std::string line;
        for (size_t i = 0; i < r.size(); ++i) {
            line += r[i];
            if (i + 1 < r.size()) line += std::string(w[i] - r[i].size() + 2, ' ');
        }
        while (!line.empty() && line.back() == ' ') line.pop_back();
        std::printf("%s\n", line.c_str());
    }
}

std::string plugin_detail(const Json& p, int64_t now_ms) {
    const std::string state = str(p, "state");
    const std::string file = fs::path(str(p, "file")).filename().string();
    const std::string sha = str(p, "sha256").substr(0, 12);
    std::string d = file;
    if (state == "running") {
        if (!sha.empty()) d += " (sha256 " + sha + ")";
        if (has_num(p, "pid")) d += ", pid " + std::to_string(num(p, "pid"));
        if (p.contains("error") && p["error"].is_object())
            d += "; a newer file was refused: " + str(p["error"], "name") + ": " + printable(str(p["error"], "reason"));
    } else if (state == "refused") {
        if (p.contains("error") && p["error"].is_object())
            d += ": " + str(p["error"], "name") + ": " + printable(str(p["error"], "reason"));
    } else if (state == "disabled") {
        d += ": enabled = false in host.toml";
    } else if (state == "backing_off") {
        d += ": restarts in " + compact(std::max<int64_t>(0, num(p, "restart_unix_ms") - now_ms) * 1000000) +
             " (crash " + std::to_string(num(p, "crashes")) + "): " + printable(str(p, "detail"));
    } else if (state == "down") {
        d += ": down after " + std::to_string(num(p, "crashes")) +
             " crashes until its file changes or host.toml is "
             "applied again: " +
             printable(str(p, "detail"));
    } else if (state == "pinned") {
        d += ": " + printable(str(p, "detail"));
    }
    return d;
}

std::vector<std::string> task_row(const std::string& name, const Json& t, int64_t now_ms) {
    const Json& last = t.contains("last_run") ? t["last_run"] : Json(nullptr);
    std::string last_at = "-", took = "-", result = "-";
    if (last.is_object()) {
        last_at = when(num(last, "start_unix_ms"), now_ms);
        took = has_num(last, "duration_ns") ? took_text(last) : "-";
        result = str(last, "result");
    }
    std::string next;
    const std::string activity = str(t, "activity");
    if (activity == "abandoned") {
        next = "never (abandoned)";
    } else if (activity == "in_run") {
        next = "running for " + compact(std::max<int64_t>(0, now_ms - num(t, "activity_since_unix_ms")) * 1000000);
    } else if (has_num(t, "next_due_unix_ms")) {
        const int64_t in = num(t, "next_due_unix_ms") - now_ms;
        next = in <= 0 ? "due" : "in " + compact(in * 1000000);
    }
    if (num(t, "backoff_ns") > 0) next += " (backing off: every " + compact(num(t, "backoff_ns")) + ")";
    return {name,
            format_duration(std::chrono::nanoseconds(num(t, "interval_ns"))),
            format_duration(std::chrono::nanoseconds(num(t, "timeout_ns"))),
            std::to_string(num(t, "runs")),
            std::to_string(num(t, "failures")),
            std::to_string(num(t, "skipped")),
            std::to_string(num(t, "timeouts")),
            last_at,
            took,
            result,
            next};
}

void print_status(const Json& s) {
    const Json& h = s["host"];
    const int64_t now_ms = num(h, "now_unix_ms");
    std::printf("tickhost %s, pid %lld, up %s\n", str(h, "version").c_str(), static_cast<long long>(num(h, "pid")),
                format_duration(std::chrono::seconds(num(h, "uptime_ns") / 1000000000)).c_str());
    const std::string config = str(h, "config_file");
    std::printf("config   %s (applied %s)\n", config.empty() ? "(built in code)" : config.c_str(),
                has_num(h, "config_applied_unix_ms") ? when(num(h, "config_applied_unix_ms"), now_ms).c_str() : "-");
    if (h.contains("last_reload") && h["last_reload"].is_object()) {
        const Json& r = h["last_reload"];
        if (r.value("applied", false))
            std::printf("reload   applied at %s\n", when(num(r, "unix_ms"), now_ms).c_str());
        else
            std::printf("reload   REFUSED at %s: %s (the configuration applied before keeps running)\n",
                        when(num(r, "unix_ms"), now_ms).c_str(), printable(str(r, "error")).c_str());
    }
    std::printf("control  %s\n", str(h, "control_socket").c_str());
    const Json& tot = s["totals"];
    std::map<std::string, int> states;
    for (auto& p : s["plugins"]) ++states[str(p, "state")];
    std::string by_state;
    for (const char* st : {"running", "refused", "disabled", "backing_off", "down", "pinned"})
        if (states[st]) by_state += (by_state.empty() ? "" : ", ") + std::to_string(states[st]) + " " + st;
    std::printf("%lld plugin(s)%s, %lld task(s), %lld failing, %lld abandoned\n",
                static_cast<long long>(num(tot, "plugins")), by_state.empty() ? "" : (" (" + by_state + ")").c_str(),
                static_cast<long long>(num(tot, "tasks")), static_cast<long long>(num(tot, "failing")),
                static_cast<long long>(num(tot, "abandoned")));

    if (!s["plugins"].empty()) {
        std::vector<std::vector<std::string>> rows{{"PLUGIN", "VERSION", "MODE", "STATE", "SINCE", "DETAIL"}};
        for (auto& p : s["plugins"]) {
            const std::string v = printable(str(p, "version"));
            rows.push_back({str(p, "name"), v.empty() ? "-" : v, str(p, "mode"), str(p, "state"),
                            has_num(p, "since_unix_ms") ? when(num(p, "since_unix_ms"), now_ms) : "-",
                            plugin_detail(p, now_ms)});
        }
        std::printf("\n");
        print_table(rows);
    }
    std::vector<std::vector<std::string>> rows{
        {"TASK", "EVERY", "TIMEOUT", "RUNS", "FAILED", "SKIPPED", "TIMEOUTS", "LAST RUN", "TOOK", "RESULT", "NEXT"}};
    std::vector<std::string> errors, more;
    auto add = [&](const std::string& name, const Json& t) {
        rows.push_back(task_row(name, t, now_ms));
        if (t.contains("last_run") && t["last_run"].is_object() && !str(t["last_run"], "error").empty())
            errors.push_back(name + ": " + printable(str(t["last_run"], "error")));
    };
    for (auto& p : s["plugins"]) {
        for (auto& t : p["tasks"]) add(str(p, "name") + "/" + str(t, "name"), t);
        const int64_t total = num(p, "tasks_total"), shown = int64_t(p["tasks"].size());
        if (total > shown)
            more.push_back(str(p, "name") + ": " + std::to_string(total - shown) + " more task(s) not listed");
    }
    for (auto& t : s["tasks"]) add(str(t, "name"), t);
    if (num(s, "tasks_total") > int64_t(s["tasks"].size()))
        more.push_back("the application: " + std::to_string(num(s, "tasks_total") - int64_t(s["tasks"].size())) +
                       " more task(s) not listed");
    if (rows.size() > 1) {
        std::printf("\n");
        print_table(rows);
    }
    if (!errors.empty()) {
        std::printf("\nlast errors:\n");
        for (auto& e : errors) std::printf("  %s\n", e.c_str());
    }
    for (auto& m : more) std::printf("(%s: tickhost status --tasks N)\n", m.c_str());
}

}  // namespace

int cmd_status(const StatusArgs& args) {
    int status = 0;
    const auto r = ask(args.target, {{"command", "status"}, {"task_limit", args.tasks}}, 30s, "status", &status);
    if (!r) return status;
    if (!r->value("ok", false) || !r->contains("status") || !(*r)["status"].is_object()) {
        std::fprintf(stderr, "tickhost status: %s\n", printable((*r)["error"].value("message", r->dump())).c_str());
        return kUnreachable;
    }
    const Json& s = (*r)["status"];
    if (args.json)
        std::printf("%s\n", s.dump(-1, ' ', false, Json::error_handler_t::replace).c_str());
    else
        print_status(s);
    return 0;
}

int cmd_reload(const ReloadArgs& args) {
    int status = 0;
    // The host answers when the reload is over (it bounds its wait at 10 min).
    const auto r = ask(args.target, {{"command", "reload"}}, 11min, "reload", &status);
    if (!r) return status;
    if (!r->value("ok", false) || !r->contains("reload")) {
        std::fprintf(stderr, "tickhost reload: %s\n", printable((*r)["error"].value("message", r->dump())).c_str());
        return kUnreachable;
    }
    const Json& rl = (*r)["reload"];
    const std::string file = str(rl, "config_file");
    if (rl.value("applied", false)) {
        std::printf("reloaded %s: applied\n", file.c_str());
        return 0;
    }
    std::fprintf(stderr, "tickhost reload: not applied: %s\nthe host keeps running with the configuration it had\n",
                 printable(str(rl, "error")).c_str());
    return 1;
}

int cmd_run_now(const RunNowArgs& args) {
    int status = 0;
    Json req = {{"command", "run-now"}, {"plugin", args.plugin}};
    if (!args.task.empty()) req["task"] = args.task;
    const auto r = ask(args.target, req, 30s, "run-now", &status);
    if (!r) return status;
    if (!r->value("ok", false)) {
        std::fprintf(stderr, "tickhost run-now: %s\n", printable((*r)["error"].value("message", r->dump())).c_str());
        return 1;
    }
    int result = 0;
    struct Started {
        std::string task;
        int64_t runs_before;
        int polls_closed = 0;  // polls since its run was over (its duration comes with its worker's next step)
    };
    std::vector<Started> started;
    for (auto& t : (*r)["run_now"]["tasks"]) {
        const std::string name = args.plugin + "/" + str(t, "task");
        const std::string what = str(t, "result");
        if (what == "started") {
            std::printf("%s: started (one extra run, now)\n", name.c_str());
            started.push_back({str(t, "task"), num(t, "runs_before")});
            continue;
        }
        result = 1;
        if (what == "already_running")
            std::printf("%s: already running; no second run queued (runs of a task never overlap)\n", name.c_str());
        else if (what == "abandoned")
            std::printf("%s: not run: a call of it ignored its cancellation and was abandoned; it never runs again\n",
                        name.c_str());
        else if (what == "not_running")
            std::printf("%s: not run: the host's scheduler is not running (starting or stopping)\n", name.c_str());
        else
            std::printf("%s: not run: the task went away meanwhile\n", name.c_str());
    }
    if (!args.wait || started.empty()) return result;
    // --wait: until each started run is over (its run count passes the one before it), then how it went.
    const auto until = std::chrono::steady_clock::now() + 15min;
    while (!started.empty() && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(50ms);
        int st = 0;
        const auto s = ask(args.target, {{"command", "status"}, {"task_limit", 1000000}}, 30s, "run-now", &st);
        if (!s) return st;
        const Json* plugin = nullptr;
        for (auto& p : (*s)["status"]["plugins"])
            if (str(p, "name") == args.plugin && str(p, "state") == "running") plugin = &p;
        if (!plugin) {
            std::printf("%s: stopped before its run was over\n", args.plugin.c_str());
            return 1;
        }
        for (auto it = started.begin(); it != started.end();) {
            const Json* task = nullptr;
            for (auto& t : (*plugin)["tasks"])
                if (str(t, "name") == it->task) task = &t;
            if (!task || num(*task, "runs") <= it->runs_before) {
                ++it;
                continue;
            }
            const Json& last = (*task)["last_run"];
            if (!has_num(last, "duration_ns") && ++it->polls_closed < 20) {
                ++it;
                continue;
            }
            const std::string res = str(last, "result");
            std::printf("%s/%s: %s in %s%s%s\n", args.plugin.c_str(), it->task.c_str(), res.c_str(),
                        has_num(last, "duration_ns") ? took_text(last).c_str() : "?",
                        str(last, "error").empty() ? "" : ": ", printable(str(last, "error")).c_str());
            if (res != "ok") result = 1;
            it = started.erase(it);
        }
    }
    return result;
}

}  // namespace tickhost::app
