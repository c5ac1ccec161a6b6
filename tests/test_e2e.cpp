// End to end: the real `tickhost` binary on a temporary host.toml, driven with real signals.
#include <tickhost/config.hpp>
#include <tickhost/plugin_manager.hpp>

#include <gtest/gtest.h>

#include <csignal>
#include <cstring>
#include <fstream>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "go_fixture.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using tickhost::test::eventually;
using tickhost::test::read_file;
using tickhost::test::TempDir;
using tickhost::test::write_file;

namespace {

// A child process running tickhost with its stdout+stderr in a file.
class Process {
public:
    Process(std::vector<std::string> args, const fs::path& log, const fs::path& cwd = fs::current_path()) {
        pid_ = fork();
        if (pid_ == 0) {
            int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
            dup2(fd, 1);
            dup2(fd, 2);
            if (chdir(cwd.c_str()) != 0) _exit(126);
            std::vector<char*> argv;
            for (auto& a : args) argv.push_back(a.data());
            argv.push_back(nullptr);
            execv(argv[0], argv.data());
            _exit(127);
        }
    }
    ~Process() {
        if (pid_ > 0 && !exited_) {
            kill(pid_, SIGKILL);
            waitpid(pid_, nullptr, 0);
        }
    }
    void signal(int sig) {
        note_workers();
        kill(pid_, sig);
    }
    // Exit status, or -1 if it did not exit within `bound`. Its plugins' processes end with it.
    int wait(std::chrono::milliseconds bound = 20s) {
        int status = 0;
        bool done = eventually([&] { return waitpid(pid_, &status, WNOHANG) == pid_; }, bound);
        if (!done) return -1;
        exited_ = true;
        EXPECT_TRUE(eventually([&] { return !any_worker_alive(); }, 5s)) << "a plugin's process outlived the host";
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }

    size_t workers_seen() const { return workers_.size(); }

private:
    // The host's tickhost-worker children (isolated plugins), as seen while it runs.
    void note_workers() {
        std::error_code ec;
        for (auto it = fs::directory_iterator("/proc", ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
            const std::string name = it->path().filename().string();
            if (name.find_first_not_of("0123456789") != std::string::npos) continue;
            const pid_t pid = std::stoi(name);
            if (tickhost::test::proc_status_field(pid, "PPid") == std::to_string(pid_) &&
                tickhost::test::proc_status_field(pid, "Name") == "tickhost-worker")
                workers_.push_back(pid);
        }
    }
    bool any_worker_alive() const {
        for (pid_t pid : workers_) {
            const std::string state = tickhost::test::proc_status_field(pid, "State");
            if (tickhost::test::proc_status_field(pid, "Name") == "tickhost-worker" && state.rfind("Z", 0) != 0)
                return true;
        }
        return false;
    }

    pid_t pid_ = -1;
    bool exited_ = false;
    std::vector<pid_t> workers_;
};

struct HostDir {
    TempDir tmp;
    fs::path plugins = tmp / "plugins.d";
    fs::path toml = tmp / "host.toml";
    fs::path log = tmp / "out.log";
    fs::path health = tmp / "health";
    HostDir() {
        fs::create_directories(plugins);
        fs::copy_file(HEARTBEAT_SO, plugins / "heartbeat.so");
        fs::copy_file(HELLO_SO, plugins / "hello.so");
        fs::copy_file(COUNTER_C_SO, plugins / "counter_c.so");
        write_file(toml, "[host]\n" + tickhost::test::isolation_toml() +
                             "plugin_dir = \"plugins.d\"\nworkers = 2\nshadow_dir = \"shadow\"\n"
                             "shutdown_timeout = \"10s\"\n"
                             "[plugins.heartbeat]\ninterval = \"50ms\"\n"
                             "[plugins.heartbeat.config]\npath = \"" +
                             health.string() +
                             "\"\n"
                             "[plugins.hello]\ninterval = \"20ms\"\n");
    }
};

}  // namespace

TEST(EndToEnd, SigtermStopsGracefullyAndHeartbeatGoesOffline) {
    HostDir d;
    Process p({TICKHOST_EXE, "--config", d.toml.string()}, d.log);
    ASSERT_TRUE(eventually([&] { return read_file(d.health).rfind("online", 0) == 0; }, 20s)) << read_file(d.log);
    ASSERT_TRUE(eventually([&] { return read_file(d.log).find("hello, world #2") != std::string::npos; }))
        << read_file(d.log);
    ASSERT_TRUE(eventually([&] { return read_file(d.log).find("count0: first run") != std::string::npos; }))
        << read_file(d.log);
    p.signal(SIGTERM);
    EXPECT_EQ(p.workers_seen(), tickhost::test::isolated() ? 3u : 0u) << "a process of its own for each plugin";
    EXPECT_EQ(p.wait(), 0) << read_file(d.log);
    EXPECT_TRUE(std::regex_match(read_file(d.health), std::regex("offline \\d+ \\d{13}\n"))) << read_file(d.health);
    const std::string log = read_file(d.log);
    EXPECT_NE(log.find("loaded plugin 'counter_c'"), std::string::npos) << log;
    EXPECT_NE(log.find("goodbye, world"), std::string::npos) << log;
    // Each example plugin says at info level that it runs (a newcomer sees all three working).
    EXPECT_NE(log.find("[plugin.heartbeat] [beat] online: "), std::string::npos) << log;
    EXPECT_NE(log.find("[plugin.hello] [greet] hello, world #1"), std::string::npos) << log;
    EXPECT_NE(log.find("[plugin.counter_c] [count0] count0: first run"), std::string::npos) << log;
    EXPECT_NE(log.find("unloaded plugin 'heartbeat'"), std::string::npos) << log;
    EXPECT_NE(log.find("stopped cleanly"), std::string::npos) << log;
    EXPECT_TRUE(fs::is_empty(d.tmp / "shadow")) << "shadow copies left behind";
}

TEST(EndToEnd, SigintStopsGracefullyToo) {
    HostDir d;
    Process p({TICKHOST_EXE, "-c", d.toml.string()}, d.log);
    ASSERT_TRUE(eventually([&] { return read_file(d.health).rfind("online", 0) == 0; }, 20s)) << read_file(d.log);
    p.signal(SIGINT);
    EXPECT_EQ(p.wait(), 0) << read_file(d.log);
    EXPECT_EQ(read_file(d.health).rfind("offline", 0), 0u);
}

TEST(EndToEnd, SighupKeepsTheHostRunning) {
    HostDir d;
    Process p({TICKHOST_EXE, "--config", d.toml.string()}, d.log);
    ASSERT_TRUE(eventually([&] { return read_file(d.health).rfind("online", 0) == 0; }, 20s)) << read_file(d.log);
    p.signal(SIGHUP);
    ASSERT_TRUE(eventually([&] { return read_file(d.log).find("SIGHUP") != std::string::npos; }));
    const std::string before = read_file(d.health);
    ASSERT_TRUE(eventually([&] { return read_file(d.health) != before; })) << "stopped beating after SIGHUP";
    p.signal(SIGTERM);
    EXPECT_EQ(p.wait(), 0) << read_file(d.log);
}

TEST(EndToEnd, ConfigErrorExitsTwoWithFileLineColumn) {
    TempDir tmp;
    write_file(tmp / "host.toml", "[host]\nworkers = 2\ndefualt_timeout = \"10s\"\n");
    Process p({TICKHOST_EXE, "--config", (tmp / "host.toml").string()}, tmp / "out.log");
    EXPECT_EQ(p.wait(), 2);
    const std::string out = read_file(tmp / "out.log");
    EXPECT_NE(out.find("host.toml:3:1:"), std::string::npos) << out;
    EXPECT_NE(out.find("default_timeout"), std::string::npos) << "no did-you-mean: " << out;
}

TEST(EndToEnd, HelpVersionAndBadArguments) {
    TempDir tmp;
    {
        Process p({TICKHOST_EXE, "--help"}, tmp / "help.log");
        EXPECT_EQ(p.wait(), 0);
        EXPECT_NE(read_file(tmp / "help.log").find("usage: tickhost"), std::string::npos);
    }
    {
        Process p({TICKHOST_EXE, "--version"}, tmp / "version.log");
        EXPECT_EQ(p.wait(), 0);
        EXPECT_NE(read_file(tmp / "version.log").find("plugin ABI 1.0"), std::string::npos);
    }
    {
        Process p({TICKHOST_EXE, "--frobnicate"}, tmp / "bad.log");
        EXPECT_EQ(p.wait(), 2);
        EXPECT_NE(read_file(tmp / "bad.log").find("unknown argument '--frobnicate'"), std::string::npos);
    }
    {
        Process p({TICKHOST_EXE, "--confg", "x"}, tmp / "near.log");
        EXPECT_EQ(p.wait(), 2);
        EXPECT_NE(read_file(tmp / "near.log").find("did you mean '--config'?"), std::string::npos) << read_file(tmp / "near.log");
    }
    {
        Process p({TICKHOST_EXE, "chek", "x.so"}, tmp / "sub.log");
        EXPECT_EQ(p.wait(), 2);
        EXPECT_NE(read_file(tmp / "sub.log").find("unknown subcommand 'chek'; did you mean 'check'?"), std::string::npos)
            << read_file(tmp / "sub.log");
    }
    {
        Process p({TICKHOST_EXE, "help"}, tmp / "help2.log");
        EXPECT_EQ(p.wait(), 0);
        EXPECT_NE(read_file(tmp / "help2.log").find("usage: tickhost"), std::string::npos);
        Process q({TICKHOST_EXE, "help", "run-once"}, tmp / "help3.log");
        EXPECT_EQ(q.wait(), 0);
        EXPECT_NE(read_file(tmp / "help3.log").find("usage: tickhost run-once"), std::string::npos) << read_file(tmp / "help3.log");
    }
    {
        // A bad --log-level is a command-line error, not a host.toml one.
        Process p({TICKHOST_EXE, "--log-level", "verbose"}, tmp / "level.log");
        EXPECT_EQ(p.wait(), 2);
        const std::string out = read_file(tmp / "level.log");
        EXPECT_NE(out.find("--log-level: 'verbose' is not a level"), std::string::npos) << out;
        EXPECT_EQ(out.substr(0, out.find('\n')).find("host.toml"), std::string::npos) << out;
    }
    {
        Process p({TICKHOST_EXE, "--config", (tmp / "nope.toml").string()}, tmp / "missing.log");
        EXPECT_EQ(p.wait(), 2);
        EXPECT_NE(read_file(tmp / "missing.log").find("nope.toml"), std::string::npos);
    }
}

TEST(EndToEnd, DefaultConfigIsHostTomlInTheWorkingDirectory) {
    HostDir d;
    Process p({TICKHOST_EXE}, d.log, d.tmp.path());
    ASSERT_TRUE(eventually([&] { return read_file(d.health).rfind("online", 0) == 0; }, 20s)) << read_file(d.log);
    p.signal(SIGTERM);
    EXPECT_EQ(p.wait(), 0) << read_file(d.log);
}

TEST(EndToEnd, DropInAndRemoveWhileTheBinaryRuns) {
    HostDir d;
    fs::remove(d.plugins / "heartbeat.so");
    Process p({TICKHOST_EXE, "--config", d.toml.string()}, d.log);
    ASSERT_TRUE(eventually([&] { return read_file(d.log).find("hello, world #1") != std::string::npos; }, 20s))
        << read_file(d.log);
    EXPECT_FALSE(fs::exists(d.health));
    // Drop it in the safe way: copy under a temporary name, then rename into place.
    fs::copy_file(HEARTBEAT_SO, d.plugins / "heartbeat.so.tmp");
    fs::rename(d.plugins / "heartbeat.so.tmp", d.plugins / "heartbeat.so");
    ASSERT_TRUE(eventually([&] { return read_file(d.health).rfind("online", 0) == 0; }, 20s)) << read_file(d.log);
    fs::remove(d.plugins / "heartbeat.so");
    ASSERT_TRUE(eventually([&] { return read_file(d.health).rfind("offline", 0) == 0; }, 20s)) << read_file(d.log);
    EXPECT_NE(read_file(d.log).find("file removed: stopping plugin 'heartbeat'"), std::string::npos);
    p.signal(SIGTERM);
    EXPECT_EQ(p.wait(), 0) << read_file(d.log);
}

TEST(EndToEnd, SighupAppliesAChangedHostToml) {
    HostDir d;
    Process p({TICKHOST_EXE, "--config", d.toml.string()}, d.log);
    ASSERT_TRUE(eventually([&] { return read_file(d.health).rfind("online", 0) == 0; }, 20s)) << read_file(d.log);
    // Disable counter_c in the file, then tell the host (the file watcher may also notice by itself).
    std::string toml = read_file(d.toml) + "[plugins.counter_c]\nenabled = false\n";
    write_file(d.toml, toml);
    p.signal(SIGHUP);
    ASSERT_TRUE(eventually([&] {
        return read_file(d.log).find("plugin 'counter_c' disabled in host.toml: stopping it") != std::string::npos;
    })) << read_file(d.log);
    const std::string before = read_file(d.health);
    ASSERT_TRUE(eventually([&] { return read_file(d.health) != before; })) << "heartbeat kept its schedule";
    p.signal(SIGTERM);
    EXPECT_EQ(p.wait(), 0) << read_file(d.log);
}

namespace {

// HostDir plus fx_hostile, whose stop call hangs (ignoring cancellation) until the release file exists.
struct HangingStopDir : HostDir {
    fs::path out = tmp / "hostile.out";
    fs::path release = tmp / "release";
    explicit HangingStopDir(const std::string& shutdown_timeout) {
        fs::copy_file(HOSTILE_SO, plugins / "hostile.so");
        std::string toml = read_file(this->toml);
        toml.replace(toml.find("shutdown_timeout = \"10s\""), 24, "shutdown_timeout = \"" + shutdown_timeout + "\"");
        write_file(this->toml, toml + "[plugins.hostile.config]\nbehaviours = \"stop_hangs\"\nout = \"" + out.string() +
                                   "\"\nrelease = \"" + release.string() + "\"\n");
    }
    ~HangingStopDir() { write_file(release, ""); }
    bool running() const { return read_file(out).find("stop_hangs run") != std::string::npos; }
};

}  // namespace

TEST(EndToEnd, SigtermWhileAStopCallHangsExitsWithinTheBoundNamingTheTask) {
    HangingStopDir d("2s");
    Process p({TICKHOST_EXE, "--config", d.toml.string()}, d.log);
    ASSERT_TRUE(eventually([&] { return d.running(); }, 20s)) << read_file(d.log);
    p.signal(SIGTERM);
    EXPECT_EQ(p.wait(2s + 20s), 1) << read_file(d.log);  // the bound, plus generous slack for a loaded machine
    const std::string log = read_file(d.log);
    EXPECT_NE(log.find("task 'stop_hangs' did not finish its stop call within 2s"), std::string::npos) << log;
    EXPECT_NE(log.find("unloaded plugin 'heartbeat'"), std::string::npos) << "the others still stopped: " << log;
    EXPECT_EQ(read_file(d.health).rfind("offline", 0), 0u);
}

TEST(EndToEnd, SecondSigintForcesAnImmediateExit) {
    HangingStopDir d("1h");
    Process p({TICKHOST_EXE, "--config", d.toml.string()}, d.log);
    ASSERT_TRUE(eventually([&] { return d.running(); }, 20s)) << read_file(d.log);
    p.signal(SIGTERM);
    ASSERT_TRUE(eventually([&] { return read_file(d.out).find("stop_hangs stop") != std::string::npos; }, 20s))
        << read_file(d.log);
    p.signal(SIGINT);
    EXPECT_EQ(p.wait(20s), 130) << read_file(d.log);
    EXPECT_NE(read_file(d.log).find("second Interrupt: exiting now"), std::string::npos) << read_file(d.log);
}

// ---- issue 10: what a plugin or an operator can do to the process must not stop, kill or wedge it ------

namespace {

// Sets an environment variable for the children started while it lives.
struct ScopedEnv {
    std::string name;
    ScopedEnv(std::string n, const std::string& value) : name(std::move(n)) { setenv(name.c_str(), value.c_str(), 1); }
    ~ScopedEnv() { unsetenv(name.c_str()); }
};

bool has(const fs::path& log, const std::string& text) { return read_file(log).find(text) != std::string::npos; }

// HostDir plus fx_meddler with the given [plugins.meddler.config] lines.
struct MeddlerDir : HostDir {
    explicit MeddlerDir(const std::string& config) {
        fs::copy_file(MEDDLER_SO, plugins / "meddler.so");
        write_file(toml, read_file(toml) + "[plugins.meddler.config]\n" + config);
    }
    bool beating() const { return has(log, "meddler tick"); }
};

}  // namespace

TEST(EndToEnd, APluginThatIgnoresTheStopSignalsDoesNotSilenceTheHost) {
    MeddlerDir d("signals = \"ignore\"\n");
    Process p({TICKHOST_EXE, "--config", d.toml.string()}, d.log);
    ASSERT_TRUE(eventually([&] { return d.beating(); }, 20s)) << read_file(d.log);
    std::this_thread::sleep_for(300ms);  // its runs set SIG_IGN again and again
    p.signal(SIGHUP);
    ASSERT_TRUE(eventually([&] { return has(d.log, "SIGHUP received"); }, 10s)) << read_file(d.log);
    p.signal(SIGTERM);
    EXPECT_EQ(p.wait(), 0) << read_file(d.log);
    if (tickhost::test::isolated())  // its dispositions are its own process's: the host's were never touched
        EXPECT_FALSE(has(d.log, "a plugin set")) << read_file(d.log);
    else
        EXPECT_TRUE(has(d.log, "a plugin set")) << "the change is named: " << read_file(d.log);
}

TEST(EndToEnd, APluginThatUnblocksTheSignalsWithItsOwnHandlerDoesNotSilenceTheHost) {
    MeddlerDir d("signals = \"handler\"\n");
    Process p({TICKHOST_EXE, "--config", d.toml.string()}, d.log);
    ASSERT_TRUE(eventually([&] { return d.beating(); }, 20s)) << read_file(d.log);
    std::this_thread::sleep_for(300ms);
    p.signal(SIGTERM);
    EXPECT_EQ(p.wait(), 0) << read_file(d.log);
    EXPECT_TRUE(has(d.log, "stopped cleanly")) << read_file(d.log);
}

// ---- a real Go plugin (tests/fixtures/go) in the binary: the Go runtime installs signal handlers of its own
// (for SIGSEGV and the like, SIGPIPE, SIGURG); the host's SIGINT, SIGTERM and SIGHUP must still work.

namespace {

// HostDir plus the Go fixture (v1) as gofixture.so, writing "<event> 1.0.0 <pid>" lines to `events`.
struct GoDir : HostDir {
    fs::path events = tmp / "go-events";
    GoDir() {
        fs::copy_file(FX_GO_V1, plugins / "gofixture.so");
        write_file(toml, read_file(toml) + go_settings("50ms"));
    }
    std::string go_settings(const std::string& interval) const {
        return "[plugins.gofixture]\ninterval = \"" + interval + "\"\n[plugins.gofixture.config]\nout = \"" +
               events.string() + "\"\n";
    }
    size_t count(const std::string& event) const {
        const std::string all = read_file(events);
        size_t n = 0;
        for (size_t pos = all.find(event + " 1.0.0 "); pos != std::string::npos; pos = all.find(event + " 1.0.0 ", pos + 1))
            ++n;
        return n;
    }
};

}  // namespace

TEST(EndToEnd, SighupAndSigtermWorkWithAGoPluginLoaded) {
    SKIP_WITHOUT_GO();
    GoDir d;
    Process p({TICKHOST_EXE, "--config", d.toml.string()}, d.log);
    ASSERT_TRUE(eventually([&] { return d.count("run") >= 2; }, 20s)) << read_file(d.log);
    ASSERT_TRUE(eventually([&] { return read_file(d.health).rfind("online", 0) == 0; }, 20s)) << read_file(d.log);
    // SIGHUP re-reads host.toml: the Go plugin's changed interval restarts it in place, in the same process.
    std::string toml = read_file(d.toml);
    toml.replace(toml.find(d.go_settings("50ms")), d.go_settings("50ms").size(), d.go_settings("40ms"));
    write_file(d.toml, toml);
    p.signal(SIGHUP);
    ASSERT_TRUE(eventually([&] { return has(d.log, "restarted plugin 'gofixture' 1.0.0"); }, 20s)) << read_file(d.log);
    ASSERT_TRUE(eventually([&] { return d.count("init") == 2 && d.count("shutdown") == 1; }, 20s))
        << read_file(d.events);
    const size_t runs = d.count("run");
    ASSERT_TRUE(eventually([&] { return d.count("run") >= runs + 2; }, 20s)) << read_file(d.log);
    p.signal(SIGTERM);
    EXPECT_EQ(p.wait(), 0) << read_file(d.log);
    const std::string events = read_file(d.events);
    EXPECT_TRUE(std::regex_search(events, std::regex("\nstop 1\\.0\\.0 (\\d+)\nshutdown 1\\.0\\.0 \\1\n$"))) << events;
    EXPECT_TRUE(std::regex_match(events, std::regex("\\w+ 1\\.0\\.0 (\\d+)\n(\\w+ 1\\.0\\.0 \\1\n)*")))
        << "every event in the host's one process: " << events;
    // In the host's process its image stays; isolated, its process simply ends.
    if (!tickhost::test::isolated())
        EXPECT_TRUE(has(d.log, "kept mapped (a Go runtime cannot be unloaded)")) << read_file(d.log);
    EXPECT_TRUE(has(d.log, "stopped cleanly")) << read_file(d.log);
    EXPECT_FALSE(has(d.log, "a plugin set")) << "the Go runtime leaves SIGINT, SIGTERM and SIGHUP alone: "
                                             << read_file(d.log);
}

TEST(EndToEnd, SigintStopsAHostWithAGoPluginAndASecondOneExitsAtOnce) {
    SKIP_WITHOUT_GO();
    {
        GoDir d;
        Process p({TICKHOST_EXE, "--config", d.toml.string()}, d.log);
        ASSERT_TRUE(eventually([&] { return d.count("run") >= 2; }, 20s)) << read_file(d.log);
        p.signal(SIGINT);
        EXPECT_EQ(p.wait(), 0) << read_file(d.log);
        EXPECT_EQ(d.count("stop"), 1u) << read_file(d.events);
        EXPECT_EQ(d.count("shutdown"), 1u) << read_file(d.events);
    }
    // A second SIGINT while a stop call hangs (fx_hostile next to the Go plugin): exit 130 at once.
    HangingStopDir d("20s");
    fs::copy_file(FX_GO_V1, d.plugins / "gofixture.so");
    Process p({TICKHOST_EXE, "--config", d.toml.string()}, d.log);
    ASSERT_TRUE(eventually([&] { return d.running() && has(d.log, "loaded plugin 'gofixture'"); }, 20s))
        << read_file(d.log);
    p.signal(SIGINT);
    ASSERT_TRUE(eventually([&] { return read_file(d.out).find("stop_hangs stop") != std::string::npos; }, 20s))
        << read_file(d.log);
    p.signal(SIGINT);
    EXPECT_EQ(p.wait(20s), 130) << read_file(d.log);
    EXPECT_TRUE(has(d.log, "second Interrupt: exiting now")) << read_file(d.log);
}

TEST(EndToEnd, APluginsChdirAndUmaskBreakNeitherReloadsNorLaterLoads) {
    MeddlerDir d("chdir = \"/\"\numask = true\n");
    fs::remove(d.plugins / "counter_c.so");
    // A relative --config, resolved against the working directory the host started in.
    Process p({TICKHOST_EXE, "--config", "host.toml"}, d.log, d.tmp.path());
    ASSERT_TRUE(eventually([&] { return d.beating(); }, 20s)) << read_file(d.log);
    write_file(d.toml, read_file(d.toml) + "[plugins.counter_c]\ninterval = \"20ms\"\n");
    p.signal(SIGHUP);
    ASSERT_TRUE(eventually([&] { return has(d.log, "configuration reloaded"); }, 10s)) << read_file(d.log);
    EXPECT_FALSE(has(d.log, "cannot read")) << read_file(d.log);
    // Shadow copies made after the plugin's umask(0777) are still loadable.
    fs::copy_file(COUNTER_C_SO, d.plugins / "counter_c.so");
    ASSERT_TRUE(eventually([&] { return has(d.log, "loaded plugin 'counter_c'"); }, 20s)) << read_file(d.log);
    p.signal(SIGTERM);
    EXPECT_EQ(p.wait(), 0) << read_file(d.log);
}

TEST(EndToEnd, SigtermIsAnsweredAtOnceWhileAReloadWaitsBehindASlowRemoval) {
    HangingStopDir d("1h");
    Process p({TICKHOST_EXE, "--config", d.toml.string()}, d.log);
    ASSERT_TRUE(eventually([&] { return d.running(); }, 20s)) << read_file(d.log);
    // Removing the file makes the watcher wait for the hanging stop call (bound: 1 h) inside the manager.
    fs::remove(d.plugins / "hostile.so");
    ASSERT_TRUE(eventually([&] { return read_file(d.out).find("stop_hangs stop") != std::string::npos; }, 20s))
        << read_file(d.log);
    p.signal(SIGHUP);  // queued behind the removal
    ASSERT_TRUE(eventually([&] { return has(d.log, "SIGHUP received"); }, 10s)) << read_file(d.log);
    p.signal(SIGTERM);
    EXPECT_TRUE(eventually([&] { return has(d.log, "Terminated received: stopping"); }, 5s)) << read_file(d.log);
    p.signal(SIGTERM);
    EXPECT_EQ(p.wait(10s), 130) << read_file(d.log);
}

// The structural rule of issue 10: a failure on any event path (start, a plugin_dir event, a host.toml
// event, a reload) is named, the host keeps running, and no plugin is left with part of its tasks.
// TICKHOST_FAULT makes the test-only fault points (host/src/fault.hpp) throw.
TEST(EndToEnd, AFailureOnEveryEventPathIsNamedAndTheHostKeepsRunning) {
    struct Case {
        std::string fault;
        std::string named;  // what the log must say
    };
    const std::vector<Case> cases = {
        {"start", "loading plugin_dir failed: injected fault at start"},
        {"watch.plugin_dir", "failed: injected fault at watch.plugin_dir"},
        {"watch.config", "host.toml event failed: injected fault at watch.config"},
        {"reload", "failed: injected fault at reload"},
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.fault);
        HostDir d;
        ScopedEnv env("TICKHOST_FAULT", c.fault);
        Process p({TICKHOST_EXE, "--config", d.toml.string()}, d.log);
        // The plugins run (after a failed start step, the watcher's first rescan loads them).
        ASSERT_TRUE(eventually([&] { return read_file(d.health).rfind("online", 0) == 0; }, 20s)) << read_file(d.log);
        fs::copy_file(MEDDLER_SO, d.plugins / "meddler.so");               // a plugin_dir event
        write_file(d.toml, read_file(d.toml) + "[plugins.hello.config]\nwho = \"x\"\n");  // a host.toml event
        p.signal(SIGHUP);                                                     // a reload
        ASSERT_TRUE(eventually([&] { return has(d.log, c.named); }, 20s)) << read_file(d.log);
        const std::string before = read_file(d.health);
        ASSERT_TRUE(eventually([&] { return read_file(d.health) != before; }, 10s)) << "stopped beating";
        p.signal(SIGTERM);
        EXPECT_EQ(p.wait(), 0) << read_file(d.log);
    }
}

TEST(EndToEnd, APluginWhoseTasksFailToStartHasNoneOfThemScheduled) {
    HostDir d;
    const fs::path count = d.tmp / "count";
    write_file(d.toml, read_file(d.toml) + "[plugins.counter_c]\ninterval = \"20ms\"\n[plugins.counter_c.config]\n"
                                           "tasks = 3\npath = \"" + count.string() + "\"\n");
    ScopedEnv env("TICKHOST_FAULT", "start_tasks:counter_c");
    Process p({TICKHOST_EXE, "--config", d.toml.string()}, d.log);
    ASSERT_TRUE(eventually([&] { return read_file(d.health).rfind("online", 0) == 0; }, 20s)) << read_file(d.log);
    ASSERT_TRUE(eventually([&] { return has(d.log, "injected fault at start_tasks:counter_c"); }, 10s))
        << read_file(d.log);
    std::this_thread::sleep_for(500ms);  // 25 intervals of counter_c
    // No task ran: the one task added before the fault got only its stop call ("stopped 0"), the others none.
    for (int i = 0; i < 3; ++i) {
        const fs::path f = count.string() + "." + std::to_string(i);
        EXPECT_TRUE(!fs::exists(f) || read_file(f) == "stopped 0\n") << i << ": " << read_file(f);
    }
    EXPECT_FALSE(has(d.log, "] loaded plugin 'counter_c'")) << read_file(d.log);
    p.signal(SIGTERM);
    EXPECT_EQ(p.wait(), 0) << read_file(d.log);
}

namespace {
// HostDir plus fx_hostile with the given behaviours and extra host.toml text.
struct HostileDir : HostDir {
    fs::path out = tmp / "hostile.out";
    fs::path release = tmp / "release";
    HostileDir(const std::string& behaviours, const std::string& shutdown_timeout, const std::string& extra = "") {
        fs::copy_file(HOSTILE_SO, plugins / "hostile.so");
        std::string toml = read_file(this->toml);
        toml.replace(toml.find("shutdown_timeout = \"10s\""), 24, "shutdown_timeout = \"" + shutdown_timeout + "\"");
        write_file(this->toml, toml + "[plugins.hostile.config]\nbehaviours = \"" + behaviours + "\"\nout = \"" +
                                   out.string() + "\"\nrelease = \"" + release.string() + "\"\n" + extra);
    }
    ~HostileDir() { write_file(release, ""); }
    bool saw(const std::string& line) const { return read_file(out).find(line) != std::string::npos; }
};
}  // namespace

// Item 3: a well-behaved run that polls is_cancelled under a 60 s timeout ends at once on SIGTERM; its stop
// call and the plugin's shutdown follow; exit 0 (before: it ran to its deadline, no shutdown, exit 1).
TEST(EndToEnd, SigtermCancelsACooperativeRunAndTheHostStopsCleanly) {
    HostileDir d("overrun", "30s", "[plugins.hostile.tasks.overrun]\ntimeout = \"60s\"\n");
    Process p({TICKHOST_EXE, "--config", d.toml.string()}, d.log);
    ASSERT_TRUE(eventually([&] { return d.saw("overrun run"); }, 20s)) << read_file(d.log);
    std::this_thread::sleep_for(200ms);  // inside its 60 s run
    const auto t0 = std::chrono::steady_clock::now();
    p.signal(SIGTERM);
    EXPECT_EQ(p.wait(20s), 0) << read_file(d.log);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 15s);  // loose: before, 60 s and exit 1
    EXPECT_TRUE(d.saw("overrun saw cancel")) << read_file(d.out);
    EXPECT_TRUE(d.saw("overrun stop")) << read_file(d.out);
    EXPECT_TRUE(d.saw("shutdown")) << read_file(d.out);
    EXPECT_TRUE(has(d.log, "stopped cleanly")) << read_file(d.log);
}

// Item 5: a task still inside its run when the bound runs out is named as such, with the bound that applied.
TEST(EndToEnd, TheStopReportSaysATaskWasStillInItsRun) {
    HostileDir d("stuck", "1s", "[plugins.hostile.tasks.stuck]\ntimeout = \"30s\"\n");
    Process p({TICKHOST_EXE, "--config", d.toml.string()}, d.log);
    ASSERT_TRUE(eventually([&] { return d.saw("stuck run"); }, 20s)) << read_file(d.log);
    p.signal(SIGTERM);
    EXPECT_EQ(p.wait(20s), 1) << read_file(d.log);
    const std::string log = read_file(d.log);
    EXPECT_NE(log.find("task 'stuck' was still in its run (started"), std::string::npos) << log;
    EXPECT_NE(log.find("when the stop bound of 1s (shutdown_timeout"), std::string::npos) << log;
    EXPECT_EQ(log.find("did not finish its stop call"), std::string::npos) << log;
}

// Item 1: durations past the maximum, in a plugin file at start, in a file dropped in later and in host.toml
// on SIGHUP: each is refused by name and the host keeps running (before: "cannot start" exit 1,
// std::terminate on SIGHUP, a half-scheduled plugin from the watcher).
TEST(EndToEnd, DurationsPastTheMaximumAreRefusedByNameAndTheHostKeepsRunning) {
    HostDir d;
    fs::copy_file(fs::path(FIXTURE_DIR) / "fx_bad_interval_above_max.so", d.plugins / "forever.so");
    Process p({TICKHOST_EXE, "--config", d.toml.string()}, d.log);
    ASSERT_TRUE(eventually([&] { return read_file(d.health).rfind("online", 0) == 0; }, 20s)) << read_file(d.log);
    EXPECT_TRUE(has(d.log, "TH_E_BAD_DESCRIPTOR")) << read_file(d.log);
    fs::copy_file(fs::path(FIXTURE_DIR) / "fx_bad_timeout_above_max.so", d.plugins / "patient.so");
    ASSERT_TRUE(eventually([&] { return has(d.log, "patient.so: not loaded"); }, 20s)) << read_file(d.log);
    write_file(d.toml, read_file(d.toml) + "[plugins.hello.tasks.greet]\ntimeout = \"1000000h\"\n");
    p.signal(SIGHUP);
    ASSERT_TRUE(eventually([&] { return has(d.log, "is longer than the longest duration"); }, 20s)) << read_file(d.log);
    EXPECT_TRUE(has(d.log, "keeping the running configuration")) << read_file(d.log);
    const std::string before = read_file(d.health);
    ASSERT_TRUE(eventually([&] { return read_file(d.health) != before; }, 10s)) << "stopped beating";
    p.signal(SIGTERM);
    EXPECT_EQ(p.wait(), 0) << read_file(d.log);
}

// A refused file is said once: its retry (at the first rescan, or after settle) with the same outcome is not.
TEST(EndToEnd, ARefusedFileIsLoggedOnce) {
    HostDir d;
    write_file(d.plugins / "junk.so", "not a library\n");
    Process p({TICKHOST_EXE, "--config", d.toml.string()}, d.log);
    ASSERT_TRUE(eventually([&] { return read_file(d.health).rfind("online", 0) == 0; }, 20s)) << read_file(d.log);
    write_file(d.plugins / "junk2.so", "not a library either\n");
    ASSERT_TRUE(eventually([&] { return has(d.log, "junk2.so: not loaded"); }, 20s)) << read_file(d.log);
    std::this_thread::sleep_for(1500ms);  // settle (300 ms) and the retry are long past
    const std::string log = read_file(d.log);
    auto count = [&](const std::string& what) {
        size_t n = 0;
        for (size_t at = log.find(what); at != std::string::npos; at = log.find(what, at + 1)) ++n;
        return n;
    };
    EXPECT_EQ(count("junk.so: not loaded"), 1u) << log;
    EXPECT_EQ(count("junk2.so: not loaded"), 1u) << log;
    p.signal(SIGTERM);
    EXPECT_EQ(p.wait(), 0) << read_file(d.log);
}

// host.toml's jitter and align through the real binary: the heartbeat's beats (their wall-clock times, written
// by the plugin) fall on multiples of its interval plus its offset, never before. Generous bound on lateness.
TEST(EndToEnd, AnAlignedJitteredTaskRunsOnItsWallClockTimes) {
    HostDir d;
    fs::remove(d.plugins / "hello.so");
    fs::remove(d.plugins / "counter_c.so");
    write_file(d.toml, "[host]\n" + tickhost::test::isolation_toml() +
                           "plugin_dir = \"plugins.d\"\nworkers = 2\nshadow_dir = \"shadow\"\n"
                           "[plugins.heartbeat]\ninterval = \"2s\"\njitter = \"50%\"\nalign = true\n"
                           "[plugins.heartbeat.config]\npath = \"" +
                           d.health.string() + "\"\n");
    const auto offset = tickhost::task_jitter_offset(tickhost::machine_name(), "heartbeat", "beat", 1s);
    Process p({TICKHOST_EXE, "--config", d.toml.string()}, d.log);
    const std::string line = "beat every 2s (timeout 10s, offset " + tickhost::format_duration(offset) + ", aligned)";
    ASSERT_TRUE(eventually([&] { return read_file(d.log).find(line) != std::string::npos; }, 20s)) << read_file(d.log);
    // Three beats: "online <runs> <unix_ms>".
    std::vector<long long> at;
    ASSERT_TRUE(eventually(
        [&] {
            std::smatch m;
            const std::string s = read_file(d.health);
            if (std::regex_match(s, m, std::regex("online (\\d+) (\\d{13})\n")) && size_t(std::stoi(m[1])) > at.size())
                at.push_back(std::stoll(m[2]));
            return at.size() >= 3;
        },
        20s))
        << read_file(d.log);
    for (long long ms : at) {
        // Past its time by less than 1.5 s: a beat before its time would show as 1.5 s .. 2 s past the one before.
        const long long past = ((ms - offset.count() / 1000000) % 2000 + 2000) % 2000;
        EXPECT_LT(past, 1500) << ms << " with offset " << tickhost::format_duration(offset);
    }
    p.signal(SIGTERM);
    EXPECT_EQ(p.wait(), 0) << read_file(d.log);
}
