// The control socket ([host] control_socket) with real hosts and real sockets: what status shows (plugins in
// both modes, a refused file, a failing task's error), reload applied and refused, run-now, the socket's
// permissions and peer check, hostile clients, stale and live sockets, "off". The `tickhost status`, `reload`
// and `run-now` commands against a real host process are at the end (ControlCli).
#include <tickhost/version.h>
#include <tickhost/config.hpp>
#include <tickhost/host.hpp>
#include <tickhost/logging.hpp>

#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <nlohmann/json.hpp>

#include <csignal>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_util.hpp"

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using Json = nlohmann::json;
using tickhost::Host;
using tickhost::HostConfig;
using tickhost::test::eventually;
using tickhost::test::read_file;
using tickhost::test::TempDir;
using tickhost::test::write_file;

namespace {

fs::path fixture(const std::string& name) { return fs::path(FIXTURE_DIR) / (name + ".so"); }

// A connected client socket, or -1 (errno set).
int connect_to(const fs::path& path) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        const int e = errno;
        ::close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

// Reads until '\n' or EOF (or `bound`): the response line.
std::string read_line(int fd, std::chrono::milliseconds bound = 20s) {
    std::string out;
    const auto until = std::chrono::steady_clock::now() + bound;
    while (out.find('\n') == std::string::npos) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
        if (left.count() <= 0) break;
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, int(left.count())) <= 0) break;
        char buf[65536];
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        out.append(buf, size_t(n));
    }
    return out;
}

// One request, one response (parsed; a null Json if there was none).
Json ask(const fs::path& socket, const std::string& request) {
    const int fd = connect_to(socket);
    if (fd < 0) {
        ADD_FAILURE() << "cannot connect to " << socket << ": " << std::strerror(errno);
        return nullptr;
    }
    const std::string line = request + "\n";
    EXPECT_EQ(::send(fd, line.data(), line.size(), MSG_NOSIGNAL), ssize_t(line.size()));
    const std::string r = read_line(fd);
    ::close(fd);
    Json j = Json::parse(r, nullptr, false);
    if (j.is_discarded()) {
        ADD_FAILURE() << "not one JSON line: '" << r << "'";
        return nullptr;
    }
    return j;
}

// Copies (a null Json when absent): the status documents they come from are often temporaries.
Json find_plugin(const Json& status, const std::string& name) {
    if (status.is_object() && status.contains("plugins"))
        for (auto& p : status["plugins"])
            if (p["name"] == name) return p;
    return nullptr;
}

Json find_task(const Json& plugin, const std::string& name) {
    if (plugin.is_object() && plugin.contains("tasks"))
        for (auto& t : plugin["tasks"])
            if (t["name"] == name) return t;
    return nullptr;
}

// A host on a temporary host.toml with its log captured; its control socket in the temporary folder.
struct HostDir {
    TempDir tmp;
    fs::path plugins = tmp / "plugins.d";
    fs::path toml = tmp / "host.toml";
    fs::path run = tmp / "run";  // the socket's folder (made by the host)
    fs::path socket = run / "control";
    std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(4000);
    std::unique_ptr<Host> host;
    std::string shutdown_timeout = "10s";

    HostDir() {
        fs::create_directories(plugins);
        tickhost::set_log_sinks({sink}, spdlog::level::debug);
    }
    ~HostDir() {
        if (host) host->stop();
        host.reset();
    }
    // [host] settings shared by every case, then `rest`.
    std::string toml_text(const std::string& rest = "", const std::string& host_extra = "") const {
        return "[host]\nplugin_dir = \"plugins.d\"\nshadow_dir = \"shadow\"\nworkers = 2\nwatch = \"off\"\n"
               "shutdown_timeout = \"" +
               shutdown_timeout + "\"\ncontrol_socket = \"run/control\"\n" + host_extra + rest;
    }
    void start(const std::string& rest = "", const std::string& host_extra = "") {
        write_file(toml, toml_text(rest, host_extra));
        host = std::make_unique<Host>(tickhost::load_config(toml));
        host->start();
    }
    void add(const fs::path& so, const std::string& as = "") {
        fs::copy_file(so, plugins / (as.empty() ? so.filename().string() : as), fs::copy_options::overwrite_existing);
    }
    bool logged(const std::string& a, const std::string& b = "") const {
        for (auto& line : sink->last_formatted())
            if (line.find(a) != std::string::npos && line.find(b) != std::string::npos) return true;
        return false;
    }
    std::string log_text() const {
        std::string all;
        for (auto& line : sink->last_formatted()) all += line;
        return all;
    }
    Json status() {
        Json r = ask(socket, R"({"command":"status"})");
        EXPECT_EQ(r["ok"], true) << r.dump();
        return r["status"];
    }
};

mode_t mode_of(const fs::path& p) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0) return 0;
    return st.st_mode & 07777;
}

uid_t nobody_uid() {
    const passwd* pw = ::getpwnam("nobody");
    return pw ? pw->pw_uid : 65534;
}

// Runs `fn` in a child process as user nobody; returns its exit status.
int as_nobody(const std::function<int()>& fn) {
    const pid_t pid = ::fork();
    if (pid == 0) {
        if (::setgid(nobody_uid()) != 0 && ::setgid(65534) != 0) _exit(90);
        if (::setuid(nobody_uid()) != 0) _exit(91);
        _exit(fn());
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

// ---- host.toml -------------------------------------------------------------------------------------------

TEST(ControlConfig, DefaultPlaceOffAndPaths) {
    const char* rd = std::getenv("RUNTIME_DIRECTORY");
    const char* xdg = std::getenv("XDG_RUNTIME_DIR");
    const std::string saved_rd = rd ? rd : "", saved_xdg = xdg ? xdg : "";
    ::setenv("RUNTIME_DIRECTORY", "/run/tickhost/a:/run/other", 1);
    EXPECT_EQ(tickhost::parse_config("", "/etc/tickhost/host.toml").control_socket, "/run/tickhost/a/control");
    ::unsetenv("RUNTIME_DIRECTORY");
    ::setenv("XDG_RUNTIME_DIR", "/run/user/1000", 1);
    EXPECT_EQ(tickhost::default_control_socket(), "/run/user/1000/tickhost/control");
    ::unsetenv("XDG_RUNTIME_DIR");
    EXPECT_EQ(tickhost::default_control_socket(), "/tmp/tickhost-" + std::to_string(::geteuid()) + "/control");
    if (rd) ::setenv("RUNTIME_DIRECTORY", saved_rd.c_str(), 1);
    if (xdg) ::setenv("XDG_RUNTIME_DIR", saved_xdg.c_str(), 1);

    EXPECT_TRUE(tickhost::parse_config("[host]\ncontrol_socket = \"off\"\n", "/etc/h.toml").control_socket.empty());
    EXPECT_EQ(tickhost::parse_config("[host]\ncontrol_socket = \"run/c\"\n", "/etc/t/h.toml").control_socket,
              "/etc/t/run/c")
        << "relative to host.toml's folder";
    EXPECT_TRUE(HostConfig{}.control_socket.empty()) << "a configuration built in code has none";
    try {
        tickhost::parse_config("[host]\nworkers = 1\ncontrol_socket = \"/" + std::string(200, 'x') + "\"\n", "h.toml");
        ADD_FAILURE() << "a path too long for a Unix socket was accepted";
    } catch (const tickhost::ConfigError& e) {
        EXPECT_EQ(e.line(), 3u);
        EXPECT_EQ(e.column(), 18u);
        EXPECT_NE(std::string(e.what()).find("h.toml:3:18: host.control_socket: "), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("at most 107"), std::string::npos) << e.what();
    }
    EXPECT_THROW(tickhost::parse_config("[host]\ncontrol_socket = \"\"\n", "h.toml"), tickhost::ConfigError);
    EXPECT_THROW(tickhost::parse_config("[host]\ncontrol_socket = 1\n", "h.toml"), tickhost::ConfigError);
}

// ---- status ----------------------------------------------------------------------------------------------

// Plugins in both modes (heartbeat in the host's process, hello in a process of its own), a file refused
// with its code and reason, a failing task with its error text, the host's own facts.
TEST(Control, StatusShowsPluginsInBothModesARefusedFileAndAFailingTask) {
    HostDir d;
    d.add(HEARTBEAT_SO);
    d.add(HELLO_SO);
    d.add(fixture("fx_failing"));
    d.add(fixture("fx_no_entry"));
    d.start("[plugins.heartbeat]\ninterval = \"50ms\"\n[plugins.heartbeat.config]\npath = \"" +
            (d.tmp / "health").string() +
            "\"\n[plugins.hello]\ninterval = \"20ms\"\nisolation = \"process\"\n"
            "[plugins.failing]\ninterval = \"20ms\"\n");
    ASSERT_TRUE(eventually([&] {
        Json s = d.status();
        Json t = find_task(find_plugin(s, "failing"), "errors");
        Json g = find_task(find_plugin(s, "hello"), "greet");
        return t.is_object() && t["last_run"].is_object() && g.is_object() && g["runs"].get<int>() >= 2;
    })) << d.log_text();
    const Json s = d.status();
    EXPECT_EQ(s["schema"], 1);
    EXPECT_EQ(s["host"]["pid"], int(::getpid()));
    EXPECT_EQ(s["host"]["version"], TICKHOST_VERSION_STRING);
    EXPECT_EQ(s["host"]["config_file"], d.toml.string());
    EXPECT_EQ(s["host"]["control_socket"], d.socket.string());
    EXPECT_TRUE(s["host"]["config_applied_unix_ms"].is_number());
    EXPECT_TRUE(s["host"]["last_reload"].is_null());
    EXPECT_GT(s["host"]["uptime_ns"].get<int64_t>(), 0);
    EXPECT_EQ(s["totals"]["plugins"], 4);
    EXPECT_EQ(s["totals"]["running"], 3);

    Json hb = find_plugin(s, "heartbeat");
    ASSERT_TRUE(hb.is_object()) << s.dump(2);
    EXPECT_EQ(hb["state"], "running");
    EXPECT_EQ(hb["mode"], "none");
    EXPECT_TRUE(hb["pid"].is_null());
    EXPECT_EQ(hb["version"], "1.0.0");
    EXPECT_EQ(hb["file"], (d.plugins / "heartbeat.so").string());
    EXPECT_EQ(hb["sha256"].get<std::string>().size(), 64u);
    EXPECT_TRUE(hb["since_unix_ms"].is_number());
    Json beat = find_task(hb, "beat");
    ASSERT_TRUE(beat.is_object()) << hb.dump(2);
    EXPECT_EQ(beat["interval_ns"], int64_t(50'000'000));

    Json hello = find_plugin(s, "hello");
    ASSERT_TRUE(hello.is_object());
    EXPECT_EQ(hello["mode"], "process");
    EXPECT_TRUE(hello["pid"].is_number());
    EXPECT_NE(hello["pid"], int(::getpid()));
    Json greet = find_task(hello, "greet");
    ASSERT_TRUE(greet.is_object());
    EXPECT_EQ(greet["last_run"]["result"], "ok");
    EXPECT_TRUE(greet["last_run"]["error"].is_null());
    EXPECT_TRUE(greet["next_due_unix_ms"].is_number());
    EXPECT_GE(greet["next_due_unix_ms"].get<int64_t>(), greet["last_run"]["start_unix_ms"].get<int64_t>());

    Json failing = find_plugin(s, "failing");
    ASSERT_TRUE(failing.is_object());
    Json errors = find_task(failing, "errors");
    EXPECT_EQ(errors["last_run"]["result"], "failed");
    EXPECT_EQ(errors["last_run"]["error"], "disk on fire");
    EXPECT_GE(errors["consecutive_failures"].get<int>(), 1);
    EXPECT_GE(errors["backoff_ns"].get<int64_t>(), int64_t(40'000'000)) << "interval 20ms x 2^k";
    EXPECT_GE(failing["totals"]["failing"].get<int>(), 1);
    Json thrown = find_task(failing, "throws");
    ASSERT_TRUE(thrown.is_object());
    if (thrown["last_run"].is_object())
        EXPECT_NE(thrown["last_run"]["error"].get<std::string>().find("kaboom from C++"), std::string::npos);

    Json refused = find_plugin(s, "fx_no_entry");
    ASSERT_TRUE(refused.is_object()) << s.dump(2);
    EXPECT_EQ(refused["state"], "refused");
    EXPECT_EQ(refused["error"]["name"], "TH_E_NO_ENTRY");
    EXPECT_FALSE(refused["error"]["reason"].get<std::string>().empty());
    EXPECT_TRUE(refused["tasks"].empty());
    EXPECT_EQ(refused["file"], (d.plugins / "fx_no_entry.so").string());
}

// task_limit lists the first tasks only; the totals count them all.
TEST(Control, StatusTaskLimit) {
    HostDir d;
    d.add(fixture("fx_failing"));
    d.start("[plugins.failing]\ninterval = \"1h\"\n");
    Json r = ask(d.socket, R"({"command":"status","task_limit":1})");
    ASSERT_EQ(r["ok"], true) << r.dump();
    Json f = find_plugin(r["status"], "failing");
    ASSERT_TRUE(f.is_object());
    EXPECT_EQ(f["tasks"].size(), 1u);
    EXPECT_EQ(f["tasks_total"], 3);
    EXPECT_EQ(f["totals"]["tasks"], 3);
    r = ask(d.socket, R"({"command":"status","task_limit":-1})");
    EXPECT_EQ(r["ok"], false);
    EXPECT_EQ(r["error"]["code"], "bad_request");
}

// A plugin disabled in host.toml and one whose isolated process keeps crashing are shown as such.
TEST(Control, StatusShowsDisabledAndBackingOffPlugins) {
    HostDir d;
    d.add(HELLO_SO);
    d.add(fixture("fx_crash"));
    d.start(
        "[plugins.hello]\nenabled = false\n[plugins.fx_crash]\nisolation = \"process\"\ninterval = \"20ms\"\n"
        "[plugins.fx_crash.config]\nhow = \"segv\"\n",
        "backoff_max = \"1h\"\n");
    ASSERT_TRUE(eventually([&] {
        Json c = find_plugin(d.status(), "fx_crash");
        return c.is_object() && c["state"] == "backing_off";
    })) << d.status().dump(2)
        << d.log_text();
    const Json s = d.status();
    Json hello = find_plugin(s, "hello");
    ASSERT_TRUE(hello.is_object()) << s.dump(2);
    EXPECT_EQ(hello["state"], "disabled");
    Json crash = find_plugin(s, "fx_crash");
    ASSERT_TRUE(crash.is_object()) << s.dump(2);
    EXPECT_EQ(crash["mode"], "process");
    EXPECT_GE(crash["crashes"].get<int>(), 1);
    EXPECT_TRUE(crash["restart_unix_ms"].is_number());
    // How it ended (a SIGSEGV; a sanitizer's runtime may report it and exit instead).
    EXPECT_NE(crash["detail"].get<std::string>().find("stopped: its process"), std::string::npos) << crash.dump();
}

// An in-process version whose stop call does not return in time stays loaded, idle: "pinned", with why.
TEST(Control, StatusShowsAPinnedVersion) {
    HostDir d;
    d.shutdown_timeout = "1s";
    d.add(fixture("fx_hostile"));
    const fs::path out = d.tmp / "out", release = d.tmp / "release";
    d.start("[plugins.hostile]\ninterval = \"1h\"\n[plugins.hostile.config]\nbehaviours = \"stop_hangs\"\nout = \"" +
                out.string() + "\"\nrelease = \"" + release.string() + "\"\n",
            "isolation = \"none\"\n");
    ASSERT_EQ(find_plugin(d.status(), "hostile")["state"], "running") << d.log_text();
    fs::remove(d.plugins / "fx_hostile.so");
    // Removing it waits for its stop call up to shutdown_timeout (1 s here), then gives up on it.
    d.host->plugins().sync(d.plugins / "fx_hostile.so");
    const Json p = find_plugin(d.status(), "hostile");
    EXPECT_EQ(p["state"], "pinned") << d.status().dump(2);
    EXPECT_NE(p["detail"].get<std::string>().find("its library stays loaded until the host exits"), std::string::npos)
        << p.dump();
    EXPECT_TRUE(p["tasks"].empty());
    write_file(release, "go");  // its stop call returns; the host can stop
}

// ---- reload ----------------------------------------------------------------------------------------------

TEST(Control, ReloadAppliedThenRefusedWithFileLineColumn) {
    HostDir d;
    d.add(HELLO_SO);
    d.start("[plugins.hello]\ninterval = \"1h\"\n");
    Json r = ask(d.socket, R"({"command":"reload"})");
    ASSERT_EQ(r["ok"], true) << r.dump();
    EXPECT_EQ(r["reload"]["applied"], true);
    EXPECT_TRUE(r["reload"]["error"].is_null());
    EXPECT_EQ(r["reload"]["config_file"], d.toml.string());

    write_file(d.toml, d.toml_text("[plugins.hello]\ninterval = \"10 parsecs\"\n"));
    r = ask(d.socket, R"({"command":"reload"})");
    ASSERT_EQ(r["ok"], true) << r.dump();
    EXPECT_EQ(r["reload"]["applied"], false);
    EXPECT_EQ(r["reload"]["file"], d.toml.string());
    EXPECT_EQ(r["reload"]["line"], 9);
    EXPECT_EQ(r["reload"]["column"], 12);
    EXPECT_NE(r["reload"]["error"].get<std::string>().find(d.toml.string() + ":9:12: plugins.hello.interval"),
              std::string::npos)
        << r.dump();
    // Status says so too, and that the running configuration is the one applied before.
    const Json s = d.status();
    EXPECT_EQ(s["host"]["reloads"], 2);
    EXPECT_EQ(s["host"]["last_reload"]["applied"], false);
    EXPECT_EQ(s["host"]["last_reload"]["line"], 9);
    EXPECT_EQ((find_plugin(s, "hello"))["state"], "running");
}

// ---- run-now ---------------------------------------------------------------------------------------------

TEST(Control, RunNowStartsOnceAndNeverOverlaps) {
    HostDir d;
    d.add(fixture("fx_hostile"));
    const fs::path out = d.tmp / "out", release = d.tmp / "release";
    d.start(
        "[plugins.hostile]\ninterval = \"1h\"\n[plugins.hostile.tasks.stuck]\ntimeout = \"1h\"\n"
        "[plugins.hostile.config]\nbehaviours = \"stuck\"\nout = \"" +
        out.string() + "\"\nrelease = \"" + release.string() + "\"\n");
    Json r = ask(d.socket, R"({"command":"run-now","plugin":"hostile","task":"stuck"})");
    ASSERT_EQ(r["ok"], true) << r.dump();
    EXPECT_EQ(r["run_now"]["tasks"][0]["task"], "stuck");
    EXPECT_EQ(r["run_now"]["tasks"][0]["result"], "started");
    ASSERT_TRUE(eventually([&] { return read_file(out).find("stuck run") != std::string::npos; })) << d.log_text();
    r = ask(d.socket, R"({"command":"run-now","plugin":"hostile"})");  // every task of the plugin
    EXPECT_EQ(r["run_now"]["tasks"][0]["result"], "already_running") << r.dump();
    Json t = find_task(find_plugin(d.status(), "hostile"), "stuck");
    EXPECT_EQ(t["activity"], "in_run");
    EXPECT_TRUE(t["activity_since_unix_ms"].is_number());
    write_file(release, "go");
    ASSERT_TRUE(eventually([&] {
        Json t = find_task(find_plugin(d.status(), "hostile"), "stuck");
        return t["runs"] == 1 && t["activity"] == "idle";
    }));
    r = ask(d.socket, R"({"command":"run-now","plugin":"hostile","task":"stuck"})");
    EXPECT_EQ(r["run_now"]["tasks"][0]["result"], "started");
    ASSERT_TRUE(eventually([&] { return (find_task(find_plugin(d.status(), "hostile"), "stuck"))["runs"] == 2; }));
    EXPECT_EQ((find_task(find_plugin(d.status(), "hostile"), "stuck"))["skipped"], 0);
}

TEST(Control, RunNowOfWhatIsNotThere) {
    HostDir d;
    d.add(HELLO_SO);
    d.add(fixture("fx_no_entry"));
    d.start("[plugins.hello]\ninterval = \"1h\"\n");
    Json r = ask(d.socket, R"({"command":"run-now","plugin":"nope"})");
    EXPECT_EQ(r["ok"], false);
    EXPECT_EQ(r["error"]["code"], "no_such_plugin");
    EXPECT_NE(r["error"]["message"].get<std::string>().find("running: hello"), std::string::npos) << r.dump();
    r = ask(d.socket, R"({"command":"run-now","plugin":"hello","task":"nope"})");
    EXPECT_EQ(r["error"]["code"], "no_such_task");
    EXPECT_NE(r["error"]["message"].get<std::string>().find("it has: greet"), std::string::npos) << r.dump();
    r = ask(d.socket, R"({"command":"run-now","plugin":"fx_no_entry"})");
    EXPECT_EQ(r["error"]["code"], "not_running");
    EXPECT_NE(r["error"]["message"].get<std::string>().find("TH_E_NO_ENTRY"), std::string::npos) << r.dump();
    r = ask(d.socket, R"({"command":"run-now"})");
    EXPECT_EQ(r["error"]["code"], "bad_request");
}

// ---- the socket ------------------------------------------------------------------------------------------

TEST(Control, SocketIsPrivateAndGoesAtStop) {
    HostDir d;
    d.start();
    EXPECT_EQ(mode_of(d.run), 0700u) << "the folder the host made";
    EXPECT_EQ(mode_of(d.socket), 0600u);
    EXPECT_TRUE(S_ISSOCK(fs::status(d.socket).type() == fs::file_type::socket ? S_IFSOCK : 0));
    EXPECT_EQ(mode_of(d.run / "control.lock"), 0600u);
    EXPECT_EQ(d.host->control_socket(), d.socket);
    d.host->stop();
    EXPECT_FALSE(fs::exists(fs::symlink_status(d.socket))) << "the socket was left behind";
    EXPECT_FALSE(fs::exists(d.run / "control.lock"));
}

// Tests run as root: a child that becomes nobody cannot reach the socket (its mode), and when the modes are
// opened up by hand, the peer check still refuses it, with an answer that says why.
TEST(Control, OtherUsersAreRefused) {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (to become another user in a child process)";
    HostDir d;
    d.start();
    EXPECT_EQ(as_nobody([&] { return connect_to(d.socket) < 0 && errno == EACCES ? 0 : 1; }), 0)
        << "user nobody could connect to a 0600 socket in a 0700 folder";
    // Mistakes an administrator could make: the peer check is the second line.
    ::chmod(d.tmp.path().c_str(), 0755);
    ::chmod(d.run.c_str(), 0755);
    ::chmod(d.socket.c_str(), 0666);
    const fs::path answer = d.tmp / "answer";
    EXPECT_EQ(
        as_nobody([&] {
            const int fd = connect_to(d.socket);
            if (fd < 0) return 2;
            const std::string req = "{\"command\":\"status\"}\n";
            if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) < 0) {
            }
            const std::string r = read_line(fd, 10s);
            ::close(fd);
            std::printf("%s", r.c_str());
            return r.find("\"not_permitted\"") != std::string::npos && r.find("status\"") == std::string::npos ? 0 : 3;
        }),
        0);
    EXPECT_TRUE(eventually([&] { return d.logged("refused a connection from uid " + std::to_string(nobody_uid())); }))
        << d.log_text();
    EXPECT_EQ(d.status()["schema"], 1) << "the host's own user still gets in";
}

// Garbage, an oversized line, a client that sends nothing, more clients than allowed: each gets a named
// answer or is dropped, and the host keeps answering everybody else at once.
TEST(Control, HostileClientsDoNotStallIt) {
    HostDir d;
    d.add(HELLO_SO);
    d.start("[plugins.hello]\ninterval = \"20ms\"\n");
    Json r = ask(d.socket, "this is not json");
    EXPECT_EQ(r["ok"], false);
    EXPECT_EQ(r["error"]["code"], "bad_request");
    r = ask(d.socket, R"({"command":"format-disk"})");
    EXPECT_EQ(r["error"]["code"], "bad_request");
    EXPECT_NE(r["error"]["message"].get<std::string>().find("unknown command 'format-disk'"), std::string::npos);
    r = ask(d.socket, "[1,2,3]");
    EXPECT_EQ(r["error"]["code"], "bad_request");

    {  // a line past the bound, sent without ever a newline
        const int fd = connect_to(d.socket);
        ASSERT_GE(fd, 0);
        const std::string big(64 * 1024, 'x');
        size_t sent = 0;
        while (sent < big.size()) {
            const ssize_t n = ::send(fd, big.data() + sent, big.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n <= 0) break;
            sent += size_t(n);
        }
        const Json j = Json::parse(read_line(fd), nullptr, false);
        ::close(fd);
        EXPECT_EQ(j["error"]["code"], "too_long") << j.dump();
    }
    // Slow clients that never send a whole line: up to the limit, they are held (and timed out later)...
    std::vector<int> idle;
    for (int i = 0; i < 15; ++i) {
        idle.push_back(connect_to(d.socket));
        ASSERT_GE(idle.back(), 0);
        ASSERT_EQ(::send(idle.back(), "{\"comm", 6, MSG_NOSIGNAL), 6);
    }
    // ... while the one slot left serves a real request at once.
    EXPECT_EQ(d.status()["schema"], 1);
    const int sixteenth = connect_to(d.socket);
    const int seventeenth = connect_to(d.socket);
    ASSERT_GE(seventeenth, 0);
    const Json busy = Json::parse(read_line(seventeenth), nullptr, false);
    EXPECT_EQ(busy["error"]["code"], "busy") << busy.dump();
    ::close(seventeenth);
    ::close(sixteenth);
    // The idle ones are answered with a timeout and closed (5 s after they connected).
    for (int fd : idle) {
        const Json j = Json::parse(read_line(fd, 20s), nullptr, false);
        EXPECT_EQ(j["error"]["code"], "timeout") << j.dump();
        ::close(fd);
    }
    EXPECT_EQ(d.status()["schema"], 1);
    // The scheduler never noticed: hello kept running throughout.
    EXPECT_GT((find_task(find_plugin(d.status(), "hello"), "greet"))["runs"].get<int>(), 0);
}

// A client that asks and never reads the answer, and one that hangs up mid-reload: nothing waits for them.
TEST(Control, ClientsThatGoAwayAreForgotten) {
    HostDir d;
    d.start();
    for (int i = 0; i < 50; ++i) {
        const int fd = connect_to(d.socket);
        ASSERT_GE(fd, 0);
        const std::string req = i % 2 ? "{\"command\":\"status\"}\n" : "{\"command\":\"reload\"}\n";
        ASSERT_EQ(::send(fd, req.data(), req.size(), MSG_NOSIGNAL), ssize_t(req.size()));
        ::close(fd);
    }
    // A burst of more clients than it takes at once may get "busy" answers; the slots free up at once.
    EXPECT_TRUE(eventually([&] { return ask(d.socket, R"({"command":"status"})")["ok"] == true; }));
    EXPECT_TRUE(eventually([&] { return d.host->reloads_done() >= 1; }));
}

TEST(Control, StaleSocketIsReplaced) {
    HostDir d;
    fs::create_directories(d.run);
    ::chmod(d.run.c_str(), 0700);
    {  // a socket left by a host that is gone: bound, never unlinked, nobody listening
        const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strncpy(a.sun_path, d.socket.c_str(), sizeof a.sun_path - 1);
        ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
        ::close(fd);
    }
    ASSERT_TRUE(fs::exists(fs::symlink_status(d.socket)));
    d.start();
    EXPECT_TRUE(d.logged("replaced a stale socket")) << d.log_text();
    EXPECT_EQ(d.status()["schema"], 1);
}

TEST(Control, LiveSocketOfAnotherHostIsNotStolen) {
    HostDir a;
    a.start();
    // A second host on the same socket: it says so and runs without one; the first keeps it.
    const std::string second_toml = a.toml_text();
    write_file(a.tmp / "second.toml", second_toml);
    fs::create_directories(a.tmp / "p2");
    HostConfig c = tickhost::load_config(a.tmp / "second.toml");
    c.plugin_dir = a.tmp / "p2";
    c.shadow_dir = a.tmp / "shadow2";
    Host b(c);
    b.start();
    EXPECT_TRUE(a.logged("another host (pid " + std::to_string(::getpid()) + ") is serving it: not taken over"))
        << a.log_text();
    EXPECT_TRUE(a.logged("the host runs without a control socket"));
    EXPECT_TRUE(b.control_socket().empty());
    EXPECT_EQ(a.status()["host"]["config_file"], a.toml.string()) << "still the first host's";
    b.stop();
    EXPECT_TRUE(fs::exists(fs::symlink_status(a.socket))) << "the second host removed the first one's socket";
    EXPECT_EQ(a.status()["schema"], 1);
}

// A process that listens on the path without tickhost's lock is not taken over either.
TEST(Control, ForeignListenerIsNotTakenOver) {
    HostDir d;
    fs::create_directories(d.run);
    ::chmod(d.run.c_str(), 0700);
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, d.socket.c_str(), sizeof a.sun_path - 1);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    ASSERT_EQ(::listen(fd, 4), 0);
    d.start();
    EXPECT_TRUE(d.logged("another process listens on it")) << d.log_text();
    EXPECT_TRUE(d.host->control_socket().empty());
    ::close(fd);
}

TEST(Control, OffMeansNoSocket) {
    HostDir d;
    d.start("", "");
    d.host->stop();
    d.host.reset();
    write_file(d.toml,
               "[host]\nplugin_dir = \"plugins.d\"\nshadow_dir = \"shadow\"\nwatch = \"off\"\n"
               "control_socket = \"off\"\n");
    Host h(tickhost::load_config(d.toml));
    h.start();
    EXPECT_TRUE(h.control_socket().empty());
    EXPECT_FALSE(fs::exists(fs::symlink_status(d.socket)));
    EXPECT_FALSE(d.logged("control socket", "off"));
}

// Folders the host must not use: another user's, one others may write, a symlink. Each is named.
TEST(Control, UnsafeFoldersAreRefused) {
    {
        HostDir d;
        fs::create_directories(d.run);
        ::chmod(d.run.c_str(), 0777);
        d.start();
        EXPECT_TRUE(d.logged("has mode 0777: others may write it, refused")) << d.log_text();
        EXPECT_TRUE(d.host->control_socket().empty());
    }
    {
        HostDir d;
        fs::create_directories(d.tmp / "elsewhere");
        fs::create_directory_symlink(d.tmp / "elsewhere", d.run);
        d.start();
        EXPECT_TRUE(d.logged("is a symlink or not a folder: refused")) << d.log_text();
        EXPECT_FALSE(fs::exists(d.tmp / "elsewhere" / "control"));
    }
    if (::geteuid() == 0) {
        HostDir d;
        fs::create_directories(d.run);
        ASSERT_EQ(::chown(d.run.c_str(), nobody_uid(), nobody_uid()), 0);
        ::chmod(d.run.c_str(), 0700);
        d.start();
        EXPECT_TRUE(d.logged("belongs to uid " + std::to_string(nobody_uid()) + ", not to this host's user"))
            << d.log_text();
        EXPECT_TRUE(d.host->control_socket().empty());
    }
}

// ---- tickhost status / reload / run-now against a real host process ---------------------------------------

namespace {

struct Result {
    int status = -1;
    std::string out, err;
};

// Runs `tickhost ARGS...` (in `cwd`), stdout and stderr apart.
Result cli(const std::vector<std::string>& args, const fs::path& cwd = fs::current_path(),
           const std::string& exe = TICKHOST_EXE) {
    TempDir tmp;
    const fs::path out = tmp / "out", err = tmp / "err";
    const pid_t pid = ::fork();
    if (pid == 0) {
        const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ::dup2(o, 1);
        ::dup2(e, 2);
        if (::chdir(cwd.c_str()) != 0) _exit(126);
        std::vector<std::string> all{exe};
        all.insert(all.end(), args.begin(), args.end());
        std::vector<char*> argv;
        for (auto& a : all) argv.push_back(a.data());
        argv.push_back(nullptr);
        ::execv(argv[0], argv.data());
        _exit(127);
    }
    int st = 0;
    ::waitpid(pid, &st, 0);
    return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, read_file(out), read_file(err)};
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// The real binary on a temporary host.toml; SIGTERM at the end.
struct HostProcess {
    TempDir tmp;
    fs::path plugins = tmp / "plugins.d";
    fs::path toml = tmp / "host.toml";
    fs::path log = tmp / "host.log";
    fs::path socket = tmp / "run" / "control";
    fs::path out = tmp / "out", release = tmp / "release";
    pid_t pid = -1;

    std::string toml_text(const std::string& extra = "") const {
        return "[host]\nplugin_dir = \"plugins.d\"\nshadow_dir = \"shadow\"\nworkers = 2\nshutdown_timeout = \"10s\"\n"
               "control_socket = \"run/control\"\n"
               "[plugins.hello]\ninterval = \"50ms\"\nisolation = \"process\"\n"
               "[plugins.failing]\ninterval = \"50ms\"\n"
               "[plugins.hostile]\ninterval = \"1h\"\n[plugins.hostile.tasks.stuck]\ntimeout = \"1h\"\n"
               "[plugins.hostile.config]\nbehaviours = \"stuck\"\nout = \"" +
               out.string() + "\"\nrelease = \"" + release.string() + "\"\n" + extra;
    }
    HostProcess() {
        fs::create_directories(plugins);
        fs::copy_file(HELLO_SO, plugins / "hello.so");
        fs::copy_file(fixture("fx_failing"), plugins / "fx_failing.so");
        fs::copy_file(fixture("fx_hostile"), plugins / "fx_hostile.so");
        fs::copy_file(fixture("fx_no_entry"), plugins / "fx_no_entry.so");
        write_file(toml, toml_text());
        pid = ::fork();
        if (pid == 0) {
            const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
            ::dup2(fd, 1);
            ::dup2(fd, 2);
            if (::chdir(tmp.path().c_str()) != 0) _exit(126);
            ::execl(TICKHOST_EXE, TICKHOST_EXE, "--config", "host.toml", static_cast<char*>(nullptr));
            _exit(127);
        }
    }
    ~HostProcess() {
        write_file(release, "go");
        if (pid <= 0) return;
        ::kill(pid, SIGTERM);
        int st = 0;
        if (!eventually([&] { return ::waitpid(pid, &st, WNOHANG) == pid; }, 20s)) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &st, 0);
        }
    }
    // Up, and each plugin has run (the failing one has failed).
    bool ready() {
        return eventually(
            [&] {
                const Result r = cli({"status", "--json", "--socket", socket.string()});
                if (r.status != 0) return false;
                const Json s = Json::parse(r.out, nullptr, false);
                const Json g = find_task(find_plugin(s, "hello"), "greet");
                const Json e = find_task(find_plugin(s, "failing"), "errors");
                return g.is_object() && g["runs"].get<int>() > 0 && e.is_object() && e["last_run"].is_object() &&
                       e["last_run"]["duration_ns"].is_number();
            },
            30s);
    }
};

}  // namespace

TEST(ControlCli, StatusAsTablesAndAsJson) {
    HostProcess h;
    ASSERT_TRUE(h.ready()) << read_file(h.log);
    const Result r = cli({"status", "--config", "host.toml"}, h.tmp.path());
    ASSERT_EQ(r.status, 0) << r.out << r.err;
    EXPECT_TRUE(has(r.out, "tickhost " TICKHOST_VERSION_STRING ", pid " + std::to_string(h.pid) + ", up ")) << r.out;
    EXPECT_TRUE(has(r.out, "config   " + h.toml.string() + " (applied ")) << r.out;
    EXPECT_TRUE(has(r.out, "control  " + h.socket.string())) << r.out;
    EXPECT_TRUE(has(r.out, "4 plugin(s) (3 running, 1 refused)")) << r.out;
    EXPECT_TRUE(has(r.out, "PLUGIN ")) << r.out;
    const std::regex hello_row(
        "\nhello +1\\.0\\.0 +process +running +[0-9:]+ +hello\\.so \\(sha256 [0-9a-f]{12}\\), pid [0-9]+\n");
    EXPECT_TRUE(std::regex_search(r.out, hello_row)) << r.out;
    const std::regex failing_row("\nfailing +0\\.1\\.0 +none +running ");
    EXPECT_TRUE(std::regex_search(r.out, failing_row)) << r.out;
    EXPECT_TRUE(has(r.out, "fx_no_entry.so: TH_E_NO_ENTRY: ")) << r.out;
    EXPECT_TRUE(has(r.out, "TASK ")) << r.out;
    EXPECT_TRUE(
        std::regex_search(r.out, std::regex("\nhello/greet +50ms +10s +[0-9]+ +0 +[0-9]+ +0 +[0-9:]+ +\\S+ +ok +")))
        << r.out;
    EXPECT_TRUE(std::regex_search(
        r.out, std::regex("\nfailing/errors +50ms +10s +[0-9]+ +[1-9][0-9]* .* failed +.*backing off")))
        << r.out;
    EXPECT_TRUE(has(r.out, "last errors:\n")) << r.out;
    EXPECT_TRUE(has(r.out, "  failing/errors: disk on fire\n")) << r.out;

    const Result j = cli({"status", "--json", "--socket", h.socket.string()});
    ASSERT_EQ(j.status, 0) << j.err;
    EXPECT_EQ(j.out.rfind("{\"schema\":1,\"host\":{", 0), 0u) << "one document, schema first: " << j.out.substr(0, 80);
    EXPECT_EQ(std::count(j.out.begin(), j.out.end(), '\n'), 1) << "one line";
    const Json s = Json::parse(j.out);
    EXPECT_EQ(s["host"]["pid"], h.pid);
    EXPECT_EQ(find_plugin(s, "hello")["mode"], "process");
    EXPECT_EQ(find_plugin(s, "failing")["mode"], "none");
    EXPECT_EQ(find_plugin(s, "fx_no_entry")["error"]["name"], "TH_E_NO_ENTRY");
    EXPECT_EQ(find_task(find_plugin(s, "failing"), "errors")["last_run"]["error"], "disk on fire");

    const Result limited = cli({"status", "--tasks", "1", "--socket", h.socket.string()});
    EXPECT_TRUE(has(limited.out, "(failing: 2 more task(s) not listed: tickhost status --tasks N)")) << limited.out;
}

TEST(ControlCli, ReloadSaysAppliedOrWhereTheFileIsWrong) {
    HostProcess h;
    ASSERT_TRUE(h.ready()) << read_file(h.log);
    Result r = cli({"reload", "--config", h.toml.string()});
    EXPECT_EQ(r.status, 0) << r.out << r.err;
    EXPECT_EQ(r.out, "reloaded " + h.toml.string() + ": applied\n");
    write_file(h.toml, h.toml_text("[plugins.hello.tasks.greet]\ntimeout = \"soon\"\n"));
    r = cli({"reload", "--socket", h.socket.string()});
    EXPECT_EQ(r.status, 1) << r.out << r.err;
    EXPECT_TRUE(
        has(r.err, "tickhost reload: not applied: " + h.toml.string() + ":21:11: plugins.hello.tasks.greet.timeout"))
        << r.err;
    EXPECT_TRUE(has(r.err, "the host keeps running with the configuration it had")) << r.err;
    const Result s = cli({"status", "--socket", h.socket.string()});
    EXPECT_TRUE(has(s.out, "reload   REFUSED at ")) << s.out;
    EXPECT_TRUE(has(s.out, ":21:11: ")) << s.out;
}

TEST(ControlCli, RunNowSaysWhatItDid) {
    HostProcess h;
    ASSERT_TRUE(h.ready()) << read_file(h.log);
    // hello runs every 50 ms: a run of it may be in flight just then ("already running"), so ask again.
    Result r;
    EXPECT_TRUE(eventually([&] {
        r = cli({"run-now", "hello/greet", "--wait", "--socket", h.socket.string()});
        return r.status == 0;
    })) << r.out
        << r.err;
    EXPECT_TRUE(has(r.out, "hello/greet: started (one extra run, now)\n")) << r.out;
    EXPECT_TRUE(std::regex_search(r.out, std::regex("hello/greet: ok in \\S+\n"))) << r.out;

    r = cli({"run-now", "hostile/stuck", "--socket", h.socket.string()});
    EXPECT_EQ(r.status, 0) << r.out << r.err;
    ASSERT_TRUE(eventually([&] { return has(read_file(h.out), "stuck run"); }));
    r = cli({"run-now", "hostile", "--socket", h.socket.string()});
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.out, "hostile/stuck: already running; no second run queued (runs of a task never overlap)\n");
    write_file(h.release, "go");

    EXPECT_TRUE(eventually([&] {
        r = cli({"run-now", "failing/errors", "--wait", "--socket", h.socket.string()});
        return has(r.out, "started");
    })) << r.out;
    EXPECT_EQ(r.status, 1) << "the run failed: " << r.out;
    EXPECT_TRUE(has(r.out, "failing/errors: failed in ")) << r.out;
    EXPECT_TRUE(has(r.out, ": disk on fire\n")) << r.out;

    r = cli({"run-now", "nope", "--socket", h.socket.string()});
    EXPECT_EQ(r.status, 1);
    EXPECT_TRUE(has(r.err, "tickhost run-now: no plugin 'nope' (running: ")) << r.err;
    r = cli({"run-now", "hello/nope", "--socket", h.socket.string()});
    EXPECT_EQ(r.status, 1);
    EXPECT_TRUE(has(r.err, "plugin 'hello' has no task 'nope' (it has: greet)")) << r.err;
}

// No host to talk to: what, where, what to do; exit status 3.
TEST(ControlCli, ClearErrorsWhenNoHostListens) {
    TempDir tmp;
    Result r = cli({"status", "--socket", (tmp / "control").string()});
    EXPECT_EQ(r.status, 3);
    EXPECT_TRUE(has(
        r.err, "tickhost status: no host's control socket at " + (tmp / "control").string() + "; is the host running?"))
        << r.err;
    EXPECT_TRUE(has(r.err, "--config HOST.TOML")) << r.err;

    {  // a stale socket: its host is gone
        const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strncpy(a.sun_path, (tmp / "stale").c_str(), sizeof a.sun_path - 1);
        ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
        ::close(fd);
    }
    r = cli({"reload", "--socket", (tmp / "stale").string()});
    EXPECT_EQ(r.status, 3);
    EXPECT_TRUE(has(r.err, "no host is listening on " + (tmp / "stale").string())) << r.err;

    write_file(tmp / "off.toml", "[host]\ncontrol_socket = \"off\"\n");
    r = cli({"status", "--config", (tmp / "off.toml").string()});
    EXPECT_EQ(r.status, 3);
    EXPECT_TRUE(has(r.err, "sets [host] control_socket = \"off\": that host has no control socket")) << r.err;

    write_file(tmp / "bad.toml", "[host]\nworkers = \"many\"\n");
    r = cli({"status", "--config", (tmp / "bad.toml").string()});
    EXPECT_EQ(r.status, 2);
    EXPECT_TRUE(has(r.err, "bad.toml:2:11: host.workers")) << r.err;

    if (::geteuid() == 0) {
        HostDir d;  // a host of root's; user nobody asks it
        d.start();
        const fs::path err = d.tmp / "err", exe = d.tmp / "tickhost";
        ::chmod(d.tmp.path().c_str(), 0755);  // nobody may reach the folder, not the socket's
        write_file(err, "");
        ::chmod(err.c_str(), 0666);
        // A copy nobody may run (the build tree may sit under /root).
        fs::copy_file(TICKHOST_EXE, exe);
        ::chmod(exe.c_str(), 0755);
        const int st = as_nobody([&] {
            const Result r = cli({"status", "--socket", d.socket.string()}, "/", exe.string());
            write_file(err, r.err);
            return r.status;
        });
        EXPECT_EQ(st, 3);
        EXPECT_TRUE(has(read_file(err), "permission denied on " + d.socket.string())) << read_file(err);
    }
}

TEST(ControlCli, HelpAndUsage) {
    Result r = cli({"help", "status"});
    EXPECT_EQ(r.status, 0);
    EXPECT_TRUE(has(r.out, "usage: tickhost status [--json] [--tasks N] [--config PATH | --socket PATH]")) << r.out;
    EXPECT_TRUE(has(r.out, "exit status: 0 shown")) << r.out;
    r = cli({"reload", "--help"});
    EXPECT_TRUE(has(r.out, "exit status: 0 applied, 1 refused")) << r.out;
    r = cli({"run-now", "--help"});
    EXPECT_TRUE(has(r.out, "usage: tickhost run-now PLUGIN[/TASK]")) << r.out;
    r = cli({"--help"});
    EXPECT_TRUE(has(r.out, "tickhost status [--json]")) << r.out;
    r = cli({"run-now"});
    EXPECT_EQ(r.status, 2);
    EXPECT_TRUE(has(r.err, "name the plugin")) << r.err;
    r = cli({"status", "--config", "a.toml", "--socket", "b"});
    EXPECT_EQ(r.status, 2) << r.err;
    r = cli({"status", "extra"});
    EXPECT_EQ(r.status, 2) << r.err;
    r = cli({"run-now", "a b"});
    EXPECT_EQ(r.status, 2);
    EXPECT_TRUE(has(r.err, "is not a plugin name")) << r.err;
}
