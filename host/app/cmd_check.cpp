// tickhost check FILE...: loads each plugin file the way the host would and says what it declares, or why
// the host would refuse it and what to do. Each file is checked in a process of its own (forked before
// anything is loaded), so that files cannot affect each other (two Go runtimes, a library that stays
// mapped) and a file that crashes or hangs while it loads is reported instead of taking the tool down.
#include "cli.hpp"

#include <tickhost/config.hpp>
#include <tickhost/plugin_manager.hpp>
#include <tickhost/tickers.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

namespace tickhost::app {
namespace {

struct Outcome {
    std::string file;
    std::optional<PluginFileInfo> info;
    LoadError error;
    bool ignored_name = false;  // the host would not even look at this name in plugin_dir
    Isolation mode = Isolation::none;  // how it was checked (and how the host would run it)
};

const char* mode_name(Isolation m) { return m == Isolation::process ? "process" : "none"; }

std::string abi_text(unsigned major, unsigned minor) { return std::to_string(major) + "." + std::to_string(minor); }

void print_text(const Outcome& o, Duration default_timeout) {
    if (!o.info) {
        std::printf("%s: refused: %s: %s\n", o.file.c_str(), o.error.code_name.c_str(), o.error.reason.c_str());
        if (!o.error.hint.empty()) std::printf("  what to do: %s\n", o.error.hint.c_str());
        return;
    }
    const PluginFileInfo& i = *o.info;
    std::printf("%s: ok\n", o.file.c_str());
    std::printf("  name         %s\n", i.name.c_str());
    std::printf("  version      %s\n", i.version.empty() ? "(none declared)" : i.version.c_str());
    std::printf("  description  %s\n", i.description.empty() ? "(none declared)" : i.description.c_str());
    std::printf("  ABI          %s (this host: %s)\n", abi_text(i.abi_major, i.abi_minor).c_str(),
                abi_text(TH_ABI_MAJOR, TH_ABI_MINOR).c_str());
    std::printf("  sha256       %s\n", i.sha256.c_str());
    std::printf("  isolation    %s\n", o.mode == Isolation::process ? "process (checked in a tickhost-worker process)"
                                                                    : "none (checked in this process)");
    const std::string init = "yes (reads [plugins." + i.name + ".config]; may declare more tasks)";
    std::printf("  init         %s\n", i.has_init ? init.c_str() : "no");
    std::printf("  shutdown     %s\n", i.has_shutdown ? "yes" : "no");
    if (i.tasks.empty()) std::printf("  tasks        none static: init declares them (see `tickhost run-once`)\n");
    for (size_t n = 0; n < i.tasks.size(); ++n) {
        const auto& t = i.tasks[n];
        const std::string timeout = t.default_timeout.count() > 0
                                        ? format_duration(t.default_timeout)
                                        : format_duration(default_timeout) + " (host default)";
        std::printf("  %s %s every %s, timeout %s\n", n == 0 ? "tasks       " : "            ", t.name.c_str(),
                    format_duration(t.default_interval).c_str(), timeout.c_str());
    }
    if (i.go_runtime)
        std::printf(
            "  note: carries a Go runtime: with isolation = \"none\" it can never be unloaded or replaced in a running "
            "host (upgrading it needs a restart); with isolation = \"process\" it is replaced and removed freely\n");
    if (o.ignored_name)
        std::printf(
            "  note: in plugin_dir the host ignores this file name (hidden, temporary or not *.so); "
            "install it as %s.so\n",
            i.name.c_str());
}

// One JSON document, compact, keys in this order. Strings the plugin declared are bytes, not necessarily UTF-8:
// invalid sequences become U+FFFD, so that the document stays well-formed.
void print_json(const std::vector<Outcome>& all, bool ok) {
    using Json = nlohmann::ordered_json;
    Json plugins = Json::array();
    for (const Outcome& o : all) {
        Json p = {{"file", o.file}, {"ok", o.info.has_value()}};
        if (!o.info) {
            p["error"] = {{"code", int(o.error.code)},
                          {"name", o.error.code_name},
                          {"reason", o.error.reason},
                          {"hint", o.error.hint}};
            plugins.push_back(std::move(p));
            continue;
        }
        const PluginFileInfo& i = *o.info;
        p["name"] = i.name;
        p["version"] = i.version;
        p["description"] = i.description;
        p["abi"] = abi_text(i.abi_major, i.abi_minor);
        p["sha256"] = i.sha256;
        p["has_init"] = i.has_init;
        p["has_shutdown"] = i.has_shutdown;
        p["go_runtime"] = i.go_runtime;
        p["ignored_name"] = o.ignored_name;
        Json tasks = Json::array();
        for (const auto& t : i.tasks)
            tasks.push_back({{"name", t.name},
                             {"interval_ns", t.default_interval.count()},
                             {"timeout_ns", t.default_timeout.count()}});
        p["tasks"] = std::move(tasks);
        p["isolation"] = mode_name(o.mode);  // 1.1
        plugins.push_back(std::move(p));
    }
    const Json doc = {{"ok", ok}, {"host_abi", abi_text(TH_ABI_MAJOR, TH_ABI_MINOR)}, {"plugins", std::move(plugins)}};
    std::fputs((doc.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n").c_str(), stdout);
}

// ---- one file, one process ---------------------------------------------------------------------------

// What a child sends back: fields as "<length>:<bytes>".
void put(std::string& s, std::string_view v) {
    s += std::to_string(v.size());
    s += ':';
    s += v;
}
void put(std::string& s, long long v) { put(s, std::to_string(v)); }

struct Reader {
    std::string_view in;
    bool ok = true;
    std::string str() {
        const size_t colon = in.find(':');
        if (!ok || colon == std::string_view::npos || colon == 0 || colon > 19) return fail();
        size_t len = 0;
        for (char c : in.substr(0, colon)) {
            if (c < '0' || c > '9') return fail();
            len = len * 10 + size_t(c - '0');
        }
        if (in.size() - colon - 1 < len) return fail();
        std::string v(in.substr(colon + 1, len));
        in.remove_prefix(colon + 1 + len);
        return v;
    }
    long long num() {
        const std::string v = str();
        if (!ok) return 0;
        try {
            return std::stoll(v);
        } catch (const std::exception&) {
            ok = false;
            return 0;
        }
    }
    std::string fail() {
        ok = false;
        return {};
    }
};

std::string encode(const std::optional<PluginFileInfo>& info, const LoadError& e) {
    std::string s;
    put(s, info ? 1 : 0);
    if (!info) {
        put(s, e.code);
        put(s, e.code_name);
        put(s, e.reason);
        put(s, e.hint);
        return s;
    }
    put(s, info->sha256);
    put(s, info->name);
    put(s, info->version);
    put(s, info->description);
    put(s, info->abi_major);
    put(s, info->abi_minor);
    put(s, info->has_init);
    put(s, info->has_shutdown);
    put(s, info->go_runtime);
    put(s, static_cast<long long>(info->tasks.size()));
    for (auto& t : info->tasks) {
        put(s, t.name);
        put(s, t.default_interval.count());
        put(s, t.default_timeout.count());
    }
    return s;
}

bool decode(std::string_view text, Outcome* o) {
    Reader r{text};
    if (!r.num()) {
        o->error.code = th_status(r.num());
        o->error.code_name = r.str();
        o->error.reason = r.str();
        o->error.hint = r.str();
        return r.ok;
    }
    PluginFileInfo i;
    i.file = o->file;
    i.sha256 = r.str();
    i.name = r.str();
    i.version = r.str();
    i.description = r.str();
    i.abi_major = uint16_t(r.num());
    i.abi_minor = uint16_t(r.num());
    i.has_init = r.num() != 0;
    i.has_shutdown = r.num() != 0;
    i.go_runtime = r.num() != 0;
    const long long n = r.num();
    for (long long k = 0; r.ok && k < n; ++k) {
        PluginFileInfo::Task t;
        t.name = r.str();
        t.default_interval = Duration(r.num());
        t.default_timeout = Duration(r.num());
        i.tasks.push_back(std::move(t));
    }
    if (r.ok) o->info = std::move(i);
    return r.ok;
}

void write_all(int fd, const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
        const ssize_t w = ::write(fd, s.data() + off, s.size() - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        off += size_t(w);
    }
}

// In the child: inspect the file with a manager of its own, send "R<outcome>" (or "F<message>" if the
// manager could not even start), and leave without running anything else of the parent's.
[[noreturn]] void child_check(const std::string& file, const HostConfig& config, int out) {
    std::string msg;
    try {
        Tickers tickers;  // never started: check runs no task
        PluginManager manager(tickers, config);
        LoadError e;
        const auto info = manager.inspect(file, &e);
        msg = "R" + encode(info, e);
    } catch (const std::exception& e) {  // the shadow cache could not be made
        msg = "F" + std::string(e.what());
    }
    write_all(out, msg);
    std::fflush(nullptr);
    ::_exit(0);
}

// Checks `file` in a child process and waits for its answer, up to `bound`. False + *fatal when the tool
// itself cannot go on (no process, no shadow cache).
bool check_in_child(Outcome* o, const HostConfig& config, Duration bound, std::string* fatal) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) {
        *fatal = std::string("cannot create a pipe: ") + std::strerror(errno);
        return false;
    }
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) {
        *fatal = std::string("cannot start a process to check ") + o->file + ": " + std::strerror(errno);
        ::close(fds[0]);
        ::close(fds[1]);
        return false;
    }
    if (pid == 0) {
        ::close(fds[0]);
        child_check(o->file, config, fds[1]);
    }
    ::close(fds[1]);
    std::string got;
    bool timed_out = false;
    const auto until = std::chrono::steady_clock::now() + bound;
    for (;;) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            timed_out = true;
            break;
        }
        pollfd p{fds[0], POLLIN, 0};
        const int r = ::poll(&p, 1, int(std::min<long long>(left.count(), 1000)));
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) continue;
        char buf[4096];
        const ssize_t n = ::read(fds[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got.append(buf, size_t(n));
    }
    ::close(fds[0]);
    if (timed_out) ::kill(pid, SIGKILL);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!got.empty() && got[0] == 'F') {
        *fatal = got.substr(1);
        return false;
    }
    if (!got.empty() && got[0] == 'R' && decode(std::string_view(got).substr(1), o)) return true;
    o->info.reset();
    o->error.code = TH_E_NOT_A_LIBRARY;
    o->error.code_name = "TH_E_NOT_A_LIBRARY";
    if (timed_out) {
        o->error.reason = "loading it did not finish within " + format_duration(bound) +
                          " (a static constructor that never returns?); the host would hang loading it";
        o->error.hint = "fix the plugin's static constructors (they run inside dlopen and cannot be bounded)";
    } else if (WIFSIGNALED(status)) {
        o->error.reason = "loading it killed the process that checked it (signal " + std::to_string(WTERMSIG(status)) +
                          ", " + strsignal(WTERMSIG(status)) + "); the host would die the same way";
        o->error.hint =
            "fix the plugin's static constructors or entry point (try: gdb --args tickhost check " + o->file + ")";
    } else {
        o->error.reason = "loading it ended the process that checked it (exit status " +
                          std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) +
                          ") before it could answer; the host would end the same way";
        o->error.hint = "fix the plugin's static constructors or entry point (a call to exit()?)";
    }
    return true;
}

}  // namespace

int cmd_check(const CheckArgs& args) {
    const std::string& config_path = args.config_path;
    const bool json = args.json;
    HostConfig config;
    try {
        if (!config_path.empty()) config = load_config(config_path);
        apply_isolation(config, args.isolation);
        // Warnings and errors of the loader (a pinned image, a stale cache) go to stderr; stdout is the report.
        log_lines_to(stderr, "warn");
    } catch (const std::exception& e) {
        std::fprintf(stderr, "tickhost check: %s\n", e.what());
        return 2;
    }
    std::vector<Outcome> outcomes;
    bool ok = true;
    // The entry point is bounded by the plugin's timeout inside the child; static constructors are not.
    Duration longest = config.default_timeout;
    for (auto& [name, s] : config.plugins)
        if (s.timeout) longest = std::max(longest, *s.timeout);
    const Duration bound = longest + std::chrono::seconds(30);
    for (const auto& f : args.files) {
        Outcome o;
        o.file = f;
        std::string fatal;
        if (!check_in_child(&o, config, bound, &fatal)) {
            std::fprintf(stderr, "tickhost check: %s\n", fatal.c_str());
            return 2;
        }
        o.ignored_name = o.info && !is_plugin_file_name(f);
        if (o.info) o.mode = config.isolation_of(o.info->name);
        ok = ok && o.info.has_value();
        if (!json) print_text(o, config.default_timeout);
        outcomes.push_back(std::move(o));
    }
    if (json) print_json(outcomes, ok);
    return ok ? 0 : 1;
}

}  // namespace tickhost::app
