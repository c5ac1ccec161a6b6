// End to end: the real `tickhost` binary on a temporary host.toml, driven with real signals.
#include <gtest/gtest.h>

#include <csignal>
#include <cstring>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

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
    void signal(int sig) { kill(pid_, sig); }
    // Exit status, or -1 if it did not exit within `bound`.
    int wait(std::chrono::milliseconds bound = 20s) {
        int status = 0;
        bool done = eventually([&] { return waitpid(pid_, &status, WNOHANG) == pid_; }, bound);
        if (!done) return -1;
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }

private:
    pid_t pid_ = -1;
    bool exited_ = false;
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
        write_file(toml, "[host]\nplugin_dir = \"plugins.d\"\nworkers = 2\nshadow_dir = \"shadow\"\n"
                         "shutdown_timeout = \"10s\"\n"
                         "[plugins.heartbeat]\ninterval = \"50ms\"\n"
                         "[plugins.heartbeat.config]\npath = \"" + health.string() + "\"\n"
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
    p.signal(SIGTERM);
    EXPECT_EQ(p.wait(), 0) << read_file(d.log);
    EXPECT_TRUE(std::regex_match(read_file(d.health), std::regex("offline \\d+ \\d{13}\n"))) << read_file(d.health);
    const std::string log = read_file(d.log);
    EXPECT_NE(log.find("loaded plugin 'counter_c'"), std::string::npos) << log;
    EXPECT_NE(log.find("goodbye, world"), std::string::npos) << log;
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
