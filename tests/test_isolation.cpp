// Process isolation with real child processes: an isolated plugin ([plugins.<name>] isolation = "process")
// that crashes, exits, hangs, hogs memory, forks, or sends garbage on its channel costs its own process only.
// It is named in the log with what happened and the task it was running, restarted with back-off, kept
// down after crash_limit crashes within crash_window, and comes back when its file changes or host.toml is
// applied again; replace, rollback, delete and a change of mode work as they do in the host's process.
//
// Every case runs a good plugin beside the bad one (fx_steady, in the host's process, every 20ms) and shows
// that its runs kept coming during and after the trouble. After every case, with the manager gone: no zombie
// and no tickhost-worker left among the test process's children, the test process's descriptors back to
// what they were, and the shadow cache empty.
//
// White box where it helps: child_process.hpp says which limits this machine can enforce (cgroup v2 or
// rlimits + seccomp) and whether this build is sanitized.
#include <tickhost/config.hpp>
#include <tickhost/plugin_manager.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "isolation/child_process.hpp"
#include "plugin_harness.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using tickhost::Duration;
using tickhost::HostConfig;
using Mode = tickhost::Isolation;
using tickhost::test::eventually;
using tickhost::test::fixture;
using tickhost::test::Harness;
using tickhost::test::mapped;
using tickhost::test::read_file;
using tickhost::test::TempDir;
using tickhost::test::write_file;

namespace {

const fs::path kCrash = fixture("fx_crash");
const fs::path kCrashV2 = fixture("fx_crash_v2");
const fs::path kSteady = fixture("fx_steady");
constexpr uid_t kNobody = 65534;
constexpr auto kBeat = 20ms;  // fx_steady's interval

using Clock = std::chrono::steady_clock;

// ---- process facts, from /proc --------------------------------------------------------------------------------

struct ProcInfo {
    pid_t pid = 0;
    char state = '?';
    pid_t ppid = 0;
    std::string comm;
};

std::optional<ProcInfo> proc_info(pid_t pid) {
    const std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
    const size_t open = stat.find('('), close = stat.rfind(')');
    if (open == std::string::npos || close == std::string::npos || close + 2 >= stat.size()) return std::nullopt;
    ProcInfo p;
    p.pid = pid;
    p.comm = stat.substr(open + 1, close - open - 1);
    std::istringstream rest(stat.substr(close + 2));
    rest >> p.state >> p.ppid;
    return p;
}

std::vector<ProcInfo> children_of(pid_t parent) {
    std::vector<ProcInfo> out;
    DIR* d = ::opendir("/proc");
    if (!d) return out;
    while (dirent* e = ::readdir(d)) {
        char* end = nullptr;
        const long pid = std::strtol(e->d_name, &end, 10);
        if (pid <= 0 || *end) continue;
        if (auto p = proc_info(pid_t(pid)); p && p->ppid == parent) out.push_back(*p);
    }
    ::closedir(d);
    return out;
}

// Running: it exists and is not a zombie (a zombie is dead, only not reaped yet).
bool alive(pid_t pid) {
    auto p = proc_info(pid);
    return p && p->state != 'Z' && p->state != 'X';
}

// A line of /proc/<pid>/status, e.g. "Uid:\t65534\t65534\t65534\t65534" -> "65534\t65534\t65534\t65534".
std::string status_field(pid_t pid, const std::string& key) {
    std::istringstream in(read_file("/proc/" + std::to_string(pid) + "/status"));
    std::string line;
    while (std::getline(in, line))
        if (line.rfind(key + ":", 0) == 0) {
            line.erase(0, key.size() + 1);
            line.erase(0, line.find_first_not_of(" \t"));
            line.erase(line.find_last_not_of(" \t") + 1);
            return line;
        }
    return "";
}

long status_kib(pid_t pid, const std::string& key) { return std::atol(status_field(pid, key).c_str()); }

// Descriptor -> what it points to ("socket:[123]", "/tmp/x", "/memfd:tickhost-lanes (deleted)").
std::map<int, std::string> fds_of(pid_t pid) {
    std::map<int, std::string> out;
    const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
    std::error_code ec;
    for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
        const int fd = std::atoi(it->path().filename().c_str());
        std::error_code lec;
        out[fd] = fs::read_symlink(it->path(), lec).string();
    }
    return out;
}

std::map<int, std::string> own_fds() {
    auto all = fds_of(::getpid());
    // The directory stream that listed them is one of them.
    for (auto it = all.begin(); it != all.end();)
        it = it->second.rfind("/proc/", 0) == 0 && it->second.find("/fd") != std::string::npos ? all.erase(it) : ++it;
    return all;
}

std::string describe_fds(const std::map<int, std::string>& fds) {
    std::string s;
    for (auto& [fd, what] : fds) s += "  " + std::to_string(fd) + " -> " + what + "\n";
    return s;
}

// The tickhost-worker child of this process that runs `shadow` (its descriptor 5 is the checked copy).
pid_t worker_of(const fs::path& shadow) {
    for (auto& c : children_of(::getpid())) {
        if (c.comm != "tickhost-worker" || c.state == 'Z') continue;
        std::error_code ec;
        const std::string target = fs::read_symlink("/proc/" + std::to_string(c.pid) + "/fd/5", ec).string();
        if (!ec && target.rfind(shadow.string(), 0) == 0) return c.pid;
    }
    return 0;
}

// Processes whose parent is `pid` (its threads' children, as the kernel lists them).
std::vector<pid_t> process_children(pid_t pid) {
    std::vector<pid_t> out;
    std::error_code ec;
    for (auto it = fs::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec);
         !ec && it != fs::directory_iterator(); it.increment(ec)) {
        std::istringstream in(read_file(it->path() / "children"));
        pid_t c;
        while (in >> c) out.push_back(c);
    }
    return out;
}

// ---- what the fixtures write ---------------------------------------------------------------------------------

// fx_crash's notes: "<what> <pid>" per line ("run 123", "forked 0 123").
struct Note {
    std::string what;
    pid_t pid;
};

std::vector<Note> notes(const fs::path& out) {
    std::vector<Note> v;
    std::istringstream in(read_file(out));
    std::string line;
    while (std::getline(in, line)) {
        const size_t sp = line.rfind(' ');
        if (sp == std::string::npos) continue;
        v.push_back({line.substr(0, sp), pid_t(std::atol(line.c_str() + sp + 1))});
    }
    return v;
}

// The distinct pids that wrote `what`, in order of appearance.
std::vector<pid_t> pids(const fs::path& out, const std::string& what) {
    std::vector<pid_t> v;
    for (auto& n : notes(out))
        if (n.what == what && std::find(v.begin(), v.end(), n.pid) == v.end()) v.push_back(n.pid);
    return v;
}

size_t count_notes(const fs::path& out, const std::string& what, pid_t pid = 0) {
    size_t k = 0;
    for (auto& n : notes(out)) k += n.what == what && (!pid || n.pid == pid);
    return k;
}

std::optional<long> first_number_after(const fs::path& out, const std::string& prefix) {
    for (auto& n : notes(out))
        if (n.what.rfind(prefix, 0) == 0) return std::atol(n.what.c_str() + prefix.size());
    return std::nullopt;
}

// fx_steady's beats: "<pid> <steady ns>".
struct Beat {
    pid_t pid;
    Clock::time_point at;
};

std::vector<Beat> beats(const fs::path& file) {
    std::vector<Beat> v;
    std::istringstream in(read_file(file));
    long pid;
    long long ns;
    while (in >> pid >> ns) v.push_back({pid_t(pid), Clock::time_point(std::chrono::nanoseconds(ns))});
    return v;
}

std::string ms(Clock::duration d) {
    return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + "ms";
}

// The good plugin kept its schedule from its first run after `from` until `to`: runs kept coming, never a
// long silence. Generous: a gap of up to 2 s (100 intervals) and a quarter of the runs due are enough (a
// loaded CI machine, a sanitized build); a plugin held up by its neighbour's trouble stops for good or for
// many seconds.
void expect_on_time(const fs::path& file, Clock::time_point from, Clock::time_point to) {
    constexpr auto kMaxGap = 2s;
    std::vector<Clock::time_point> at;
    for (auto& b : beats(file))
        if (b.at >= from && b.at <= to) at.push_back(b.at);
    ASSERT_FALSE(at.empty()) << "the good plugin never ran";
    from = at.front();
    const auto span = to - from;
    const size_t due = size_t(span / kBeat);
    ASSERT_GE(at.size(), std::max<size_t>(2, due / 4)) << "the good plugin ran " << at.size() << " times in "
                                                       << ms(span) << " (every " << ms(kBeat) << ": " << due << " due)";
    Clock::duration worst = at.front() - from;
    for (size_t i = 1; i < at.size(); ++i) worst = std::max(worst, at[i] - at[i - 1]);
    worst = std::max(worst, to - at.back());
    EXPECT_LE(worst, kMaxGap) << "the good plugin went " << ms(worst) << " without a run (every " << ms(kBeat)
                              << ") between " << ms(from.time_since_epoch()) << " and " << ms(to.time_since_epoch());
}

// ---- the fixture -------------------------------------------------------------------------------------------

class Isolation : public ::testing::Test {
protected:
    void SetUp() override {
        ::setenv("TICKHOST_WORKER", TICKHOST_WORKER_EXE, 1);
        if (tickhost::detail::kHostSanitized) {
            // A sanitized worker would turn the plugin's SIGSEGV into a report and an abort (or exit 1): the
            // cases are about a process that dies by SIGSEGV. Read by the workers only (at their start).
            // (TSan's handler reports it and exits 66, ASan's aborts.)
            for (const char* var : {"ASAN_OPTIONS", "TSAN_OPTIONS"}) {
                const char* set = std::getenv(var);
                const std::string opts = set ? set : "";
                if (opts.find("handle_segv=0") == std::string::npos)
                    ::setenv(var, (opts + (opts.empty() ? "" : ":") + "handle_segv=0").c_str(), 1);
            }
        }
        fds_before_ = own_fds();
        h_.emplace();
        HostConfig& c = h_->config;
        c.default_timeout = 2s;
        c.shutdown_timeout = 5s;
        c.backoff_max = 200ms;
        c.crash_limit = 3;
        c.crash_window = 30s;
        set_abandon_after(300ms);
        out_ = h_->tmp / "out";
        beats_ = h_->tmp / "beats";
        h_->plugin("steady").config.set("out", beats_.string());
        h_->add(kSteady, "steady.so");
        started_at_ = Clock::now();
    }

    void TearDown() override {
        if (!h_) return;
        const fs::path shadow = h_->config.shadow_dir;
        h_->manager.reset();
        h_->tickers.reset();
        if (std::getenv("TICKHOST_TEST_LOG")) std::cout << h_->log_text();  // the whole story, for a look
        std::error_code ec;
        if (fs::exists(shadow, ec)) {
            std::string left;
            for (auto& e : fs::recursive_directory_iterator(shadow, ec))
                if (!e.is_directory()) left += "  " + e.path().string() + "\n";
            EXPECT_TRUE(left.empty()) << "shadow copies left after the manager is gone:\n" << left;
        }
        for (auto& c : children_of(::getpid())) {
            EXPECT_NE(c.state, 'Z') << "zombie child " << c.pid << " (" << c.comm << ")";
            EXPECT_NE(c.comm, "tickhost-worker") << "worker " << c.pid << " left after the manager is gone";
        }
        h_.reset();
        const auto after = own_fds();
        EXPECT_EQ(after.size(), fds_before_.size()) << "descriptors before:\n"
                                                    << describe_fds(fds_before_) << "after:\n"
                                                    << describe_fds(after);
    }

    Harness& h() { return *h_; }
    tickhost::PluginSettings& bad() {
        auto& s = h_->plugin("fx_crash");
        s.isolation = Mode::process;
        s.config.set("out", out_.string());
        return s;
    }
    // HostConfig::abandon_after (the isolated instance's kill) and Tickers::Options::abandon_after (a
    // restart-only option of the scheduler), as the host sets both from host.toml.
    void set_abandon_after(Duration d) {
        h_->config.abandon_after = d;
        h_->abandon_after = d;
    }
    void start() {
        h_->start();
        h_->manager->load_directory();
    }
    // The log's last lines above debug level, for failure messages.
    std::string log() const {
        std::vector<std::string> lines;
        for (auto& line : h_->sink->last_formatted())
            if (line.find(" debug ") == std::string::npos) lines.push_back(line);
        std::string out;
        for (size_t i = lines.size() > 150 ? lines.size() - 150 : 0; i < lines.size(); ++i) out += lines[i];
        return out;
    }
    // The good plugin has run since `t` (it is still running after the trouble).
    void expect_steady_after(Clock::time_point t) {
        EXPECT_TRUE(eventually([&] {
            auto b = beats(beats_);
            return b.size() >= 3 && b[b.size() - 3].at > t;
        })) << "the good plugin stopped running";
        expect_on_time(beats_, started_at_, Clock::now());
    }

    std::map<int, std::string> fds_before_;
    std::optional<Harness> h_;
    fs::path out_, beats_;
    Clock::time_point started_at_;
};

// ---- 1. crashes ------------------------------------------------------------------------------------------------

struct CrashKind {
    const char* how;
    const char* logged;  // how its end is named
};
std::ostream& operator<<(std::ostream& os, const CrashKind& k) { return os << k.how; }

class CrashInRun : public Isolation, public ::testing::WithParamInterface<CrashKind> {};

// A run that crashes (or exits): named with the plugin, the signal or exit status and the task; no stop
// call for its task; restarted in a new process with back-off; down after crash_limit crashes in
// crash_window with one message; back when its file changes, and again when host.toml is applied.
TEST_P(CrashInRun, IsNamedRestartedWithBackoffThenKeptDownUntilFileOrConfigChanges) {
    bad().config.set("how", std::string(GetParam().how));
    bad().config.set("after", int64_t(1));  // one good run first, then the crash
    const fs::path file = h().add(kCrash, "fx_crash.so");
    start();
    ASSERT_TRUE(eventually([&] { return h().logged("stays down until its file changes"); }, 30s)) << log();
    const auto down_at = Clock::now();

    const auto crashed = pids(out_, "init");
    ASSERT_EQ(crashed.size(), 3u) << "crash_limit = 3: three processes, then down\n" << read_file(out_);
    for (pid_t pid : crashed) {
        EXPECT_NE(pid, ::getpid()) << "isolated code ran in the host's process";
        EXPECT_GE(count_notes(out_, "run", pid), 2u) << "one good run, then the bad one, in process " << pid;
        EXPECT_TRUE(
            h().logged("its process " + std::to_string(pid) + " " + GetParam().logged, "while running task 'work'"))
            << "the crash of process " << pid << " is named with how it ended and the task it ran\n"
            << log();
        EXPECT_FALSE(alive(pid)) << "process " << pid << " outlived its crash";
    }
    EXPECT_EQ(count_notes(out_, "stop"), 0u) << "a task whose process died gets no stop call\n" << read_file(out_);
    EXPECT_TRUE(h().logged("plugin 'fx_crash' 1.0.0", "its tasks got no stop call")) << log();
    // interval x 2^(k-1) (fx_crash runs every 50ms), at most backoff_max.
    EXPECT_TRUE(h().logged("Restarting it in 50ms (crash 1 of [host] crash_limit = 3 within 30s)")) << log();
    EXPECT_TRUE(h().logged("Restarting it in 100ms (crash 2 of")) << log();
    EXPECT_EQ(h().count_logged("stays down until its file changes"), 1u) << "said once\n" << log();
    EXPECT_FALSE(h().manager->plugin("fx_crash"));

    // Down means down: well past the longest back-off (200ms), no new process.
    std::this_thread::sleep_for(600ms);
    EXPECT_EQ(pids(out_, "init").size(), 3u) << read_file(out_);

    // A new build of the file: a fresh start (its crash count starts again).
    fs::copy_file(kCrashV2, file, fs::copy_options::overwrite_existing);
    EXPECT_FALSE(h().manager->sync(file));
    ASSERT_TRUE(eventually([&] { return pids(out_, "init").size() >= 4; })) << log();
    ASSERT_TRUE(eventually([&] { return h().count_logged("stays down until its file changes") == 2; }, 30s)) << log();
    EXPECT_TRUE(h().logged("plugin 'fx_crash' 2.0.0", "(crash 1 of [host] crash_limit = 3")) << log();
    EXPECT_EQ(pids(out_, "init").size(), 6u) << read_file(out_);

    // host.toml applied again (SIGHUP): back too.
    h().manager->apply_config(h().config);
    ASSERT_TRUE(eventually([&] { return pids(out_, "init").size() >= 7; })) << log();
    expect_steady_after(down_at);
}

INSTANTIATE_TEST_SUITE_P(Isolation, CrashInRun,
                         ::testing::Values(CrashKind{"segv", "killed by signal 11 (SIGSEGV)"},
                                           CrashKind{"abort", "killed by signal 6 (SIGABRT)"},
                                           CrashKind{"exit0", "exited with status 0"}),
                         [](const auto& info) { return std::string(info.param.how); });

// A crash in init is a crash too (its process died, whatever the file): restarted with back-off, down after
// crash_limit, not a refusal of the file that waits for it to change.
TEST_F(Isolation, CrashInInitIsRestartedWithBackoffThenKeptDown) {
    bad().config.set("where", std::string("init"));
    h().add(kCrash, "fx_crash.so");
    start();
    ASSERT_TRUE(eventually([&] { return h().logged("stays down until its file changes"); }, 30s)) << log();
    const auto down_at = Clock::now();
    const auto inits = pids(out_, "init");
    ASSERT_EQ(inits.size(), 3u) << read_file(out_);
    for (pid_t pid : inits)
        EXPECT_TRUE(h().logged("its process " + std::to_string(pid) + " killed by signal 11 (SIGSEGV)", "init"))
            << log();
    EXPECT_TRUE(h().logged("plugin 'fx_crash' 1.0.0", "Restarting it in 50ms (crash 1 of")) << log();
    EXPECT_EQ(count_notes(out_, "run"), 0u);
    EXPECT_EQ(count_notes(out_, "shutdown"), 0u) << "no shutdown for a plugin whose init crashed";
    h().manager->apply_config(h().config);
    ASSERT_TRUE(eventually([&] { return pids(out_, "init").size() >= 4; })) << log();
    expect_steady_after(down_at);
}

// A stop call or shutdown that crashes while host.toml's new settings restart the plugin: named, and the
// plugin runs again with its new settings, in a new process. Deleting its file then stops it for good.
class CrashWhileStopping : public Isolation, public ::testing::WithParamInterface<const char*> {};

TEST_P(CrashWhileStopping, IsNamedAndThePluginRunsAgainInANewProcess) {
    const std::string where = GetParam();
    bad().config.set("where", where);
    const fs::path file = h().add(kCrash, "fx_crash.so");
    start();
    ASSERT_TRUE(eventually([&] { return count_notes(out_, "run") >= 2; })) << log();
    const pid_t first = pids(out_, "init").at(0);

    const auto trouble = Clock::now();
    bad().interval = 40ms;
    h().manager->apply_config(h().config);
    ASSERT_TRUE(eventually([&] { return count_notes(out_, where, first) == 1; })) << read_file(out_);
    EXPECT_TRUE(eventually([&] { return h().logged("its process " + std::to_string(first) + " killed by signal 11"); }))
        << log();
    EXPECT_TRUE(h().logged("plugin 'fx_crash'", "its process " + std::to_string(first) + " killed by signal 11"))
        << "named with the plugin\n"
        << log();
    if (where == "stop")
        EXPECT_TRUE(h().logged("its process " + std::to_string(first), "while running task 'work'")) << log();
    ASSERT_TRUE(eventually([&] { return pids(out_, "run").size() >= 2; })) << "not running again\n" << log();
    const pid_t second = pids(out_, "run").back();
    EXPECT_NE(second, first);
    EXPECT_TRUE(eventually([&] { return !alive(first); }));
    auto info = h().manager->plugin("fx_crash");
    ASSERT_TRUE(info);
    EXPECT_EQ(info->tasks.at(0).interval, 40ms) << "runs with the new settings";

    // Deleting the file stops it; its stop call or shutdown crashes again, which is said and nothing more.
    fs::remove(file);
    EXPECT_FALSE(h().manager->sync(file));
    EXPECT_FALSE(h().manager->plugin("fx_crash"));
    EXPECT_TRUE(eventually([&] { return !alive(second); }));
    EXPECT_TRUE(eventually([&] {
        return h().logged("its process " + std::to_string(second) + " killed by signal 11");
    })) << log();
    const size_t inits = pids(out_, "init").size();
    std::this_thread::sleep_for(400ms);
    EXPECT_EQ(pids(out_, "init").size(), inits) << "a deleted plugin is not restarted\n" << log();
    expect_steady_after(trouble);
}

INSTANTIATE_TEST_SUITE_P(Isolation, CrashWhileStopping, ::testing::Values("stop", "shutdown"));

// ---- 2. hangs --------------------------------------------------------------------------------------------------

// A run that ignores its cancellation: its process is killed abandon_after past the deadline and the plugin
// restarted. Over many hang -> kill -> restart cycles the host's threads, descriptors and memory stay where
// they were. As many cycles as fit in 12 s (TICKHOST_HANG_SECONDS), or TICKHOST_HANG_CYCLES of them (e.g.
// 1000: a few minutes).
TEST_F(Isolation, HungRunsAreKilledAndRestartedWithoutTheHostGrowing) {
    const char* want_s = std::getenv("TICKHOST_HANG_SECONDS");
    const char* want_n = std::getenv("TICKHOST_HANG_CYCLES");
    const size_t want_cycles = want_n ? size_t(std::atol(want_n)) : 0;
    const int seconds = want_s ? std::atoi(want_s) : want_cycles ? 3600 : 12;
    set_abandon_after(30ms);
    h().config.crash_limit = 1000;
    h().config.crash_window = 1s;
    h().config.backoff_max = 5ms;
    bad().config.set("how", std::string("hang"));
    bad().interval = 5ms;
    bad().tasks["work"].timeout = 5ms;  // the run's; init keeps default_timeout
    h().add(kCrash, "fx_crash.so");
    start();

    struct Sample {
        int threads, fds;
        long rss_kib, data_kib;  // VmData: private writable mappings, thread stacks included
    };
    std::vector<Sample> samples;
    const auto until = Clock::now() + std::chrono::seconds(seconds);
    size_t cycles = 0;
    while (Clock::now() < until && (!want_cycles || cycles < want_cycles)) {
        ASSERT_TRUE(eventually([&] { return pids(out_, "init").size() > cycles; })) << "no restart\n" << log();
        cycles = pids(out_, "init").size();
        samples.push_back({tickhost::test::thread_count(), int(own_fds().size()), status_kib(::getpid(), "VmRSS"),
                           status_kib(::getpid(), "VmData")});
    }
    const auto end = Clock::now();
    std::cout << "[ info     ] " << cycles << " hang -> kill -> restart cycles in " << ms(end - started_at_) << "\n";
    ASSERT_GE(cycles, 10u) << log();
    const auto inits = pids(out_, "init");
    const pid_t killed = inits[inits.size() - 2];  // the last one may still be running (and the log's first lines gone)
    EXPECT_TRUE(eventually([&] {
        return h().logged("its process " + std::to_string(killed) + " killed by signal 9 (SIGKILL)",
                          "because it ignored the cancellation of task 'work' for 30ms past its deadline");
    })) << log();
    EXPECT_EQ(count_notes(out_, "stop"), 0u) << "a task whose process was killed gets no stop call";

    // Flat: the worst of the last samples against the worst of the first ones after a warm-up.
    const size_t n = samples.size(), w = std::min<size_t>(5, n / 4);
    auto worst = [&](size_t from, size_t to, auto field) {
        long m = 0;
        for (size_t i = from; i < to; ++i) m = std::max(m, long(field(samples[i])));
        return m;
    };
    auto threads = [](const Sample& s) { return s.threads; };
    auto fds = [](const Sample& s) { return s.fds; };
    auto rss = [](const Sample& s) { return s.rss_kib; };
    auto data = [](const Sample& s) { return s.data_kib; };
    const size_t warm = w, tail = n - w;
    std::cout << "[ info     ] threads " << worst(warm, 2 * w, threads) << " -> " << worst(tail, n, threads) << ", fds "
              << worst(warm, 2 * w, fds) << " -> " << worst(tail, n, fds) << ", RSS " << worst(warm, 2 * w, rss) / 1024
              << " -> " << worst(tail, n, rss) / 1024 << " MiB, VmData " << worst(warm, 2 * w, data) / 1024 << " -> "
              << worst(tail, n, data) / 1024 << " MiB\n";
    EXPECT_LE(worst(tail, n, threads), worst(warm, 2 * w, threads) + 4) << "threads grow with cycles";
    EXPECT_LE(worst(tail, n, fds), worst(warm, 2 * w, fds) + 8) << "descriptors grow with cycles";
#if defined(__SANITIZE_ADDRESS__)
    // ASan's quarantine holds up to 256 MiB of freed memory, and its allocator more, by design (LeakSanitizer
    // checks leaks in that build).
    constexpr long kMemSlackKib = 512 * 1024;
#else
    constexpr long kMemSlackKib = 32 * 1024;
#endif
    EXPECT_LE(worst(tail, n, rss), worst(warm, 2 * w, rss) + kMemSlackKib) << "resident memory grows with cycles";
    // Data mappings (heap, every thread's stack) settle too: a thread that is gone but never joined keeps its
    // 8 MiB stack mapped.
    EXPECT_LE(worst(tail, n, data), worst(warm, 2 * w, data) + kMemSlackKib + 64 * 1024)
        << "the host's data mappings grow with cycles (" << (worst(tail, n, data) - worst(warm, 2 * w, data)) / 1024
        << " MiB over " << (n - 2 * w) << " cycles): the scheduler keeps every worker it abandoned (tickers.cpp: "
        << "scan_workers() replaces an abandoned worker, but the old Worker and its std::thread stay in workers_ until "
        << "Tickers::stop(), so each hung run that returns later leaves an exited, never-joined thread and its 8 MiB "
        << "stack); with an isolated plugin the scheduler abandons the run at the same moment the instance kills the "
        << "process (both at deadline + abandon_after)";
    expect_steady_after(end);
}

// ---- 3. limits -------------------------------------------------------------------------------------------------

std::string cgroup_or_why() {
    std::string s;
    tickhost::detail::cgroup_v2_usable(&s);
    return s;
}

// memory_max: with a delegated cgroup v2 the hog is killed and named; otherwise RLIMIT_DATA makes its
// allocations fail past the limit (what happens then is the plugin's business: fx_crash's run fails and
// says so); in a sanitized build without a cgroup it is not enforced, and the host says so.
TEST_F(Isolation, MemoryHogIsHeldToMemoryMax) {
    constexpr uint64_t kMax = 96ull << 20;
    constexpr long kHog = 256;  // MiB asked for
    bad().memory_max = kMax;
    bad().config.set("how", std::string("hog"));
    bad().config.set("hog_mb", int64_t(kHog));
    // Touching 256 MiB may take seconds in a sanitized build on a loaded machine: the run is not to time out.
    bad().timeout = 60s;
    const fs::path file = h().add(kCrash, "fx_crash.so");
    const auto trouble = Clock::now();
    start();
    if (tickhost::detail::cgroup_v2_usable(nullptr)) {
        ASSERT_TRUE(eventually([&] { return h().logged("after exceeding memory_max (cgroup oom_kill)"); }, 20s))
            << log();
        EXPECT_TRUE(h().logged("plugin 'fx_crash'", "while running task 'work'")) << log();
    } else if (tickhost::detail::kHostSanitized) {
        ASSERT_TRUE(eventually([&] { return first_number_after(out_, "hogged ").has_value(); })) << log();
        EXPECT_TRUE(h().logged("memory_max = " + std::to_string(kMax) + ": not enforced", "limit not enforced"))
            << log();
        EXPECT_EQ(*first_number_after(out_, "hogged "), kHog) << "unenforced: it got all it asked for";
    } else {
        // RLIMIT_DATA: malloc fails at the limit; the process lives on, held under it.
        ASSERT_TRUE(eventually([&] { return first_number_after(out_, "hogged ").has_value(); })) << log();
        const long got = *first_number_after(out_, "hogged ");
        EXPECT_LT(got, long(kMax >> 20)) << read_file(out_);
        EXPECT_TRUE(eventually([&] {
            return h().logged("task 'fx_crash/work'", "malloc failed after " + std::to_string(got) + " MiB");
        })) << log();
        EXPECT_FALSE(h().logged("limit not enforced")) << log();
        const pid_t pid = pids(out_, "init").at(0);
        EXPECT_TRUE(alive(pid));
        EXPECT_LE(status_kib(pid, "VmData"), long(kMax >> 10)) << "RLIMIT_DATA bounds its data mappings";
        EXPECT_EQ(pids(out_, "init").size(), 1u) << "not killed: its allocations failed\n" << log();
        std::cout << "[ info     ] memory_max " << (kMax >> 20) << " MiB by "
                  << "RLIMIT_DATA (" << cgroup_or_why() << "): malloc failed after " << got << " MiB; worker VmData "
                  << status_kib(pid, "VmData") / 1024 << " MiB, VmRSS " << status_kib(pid, "VmRSS") / 1024 << " MiB\n";
        // Removed while its memory is used up: its shutdown still runs (the plugin's own function needs none).
        fs::remove(file);
        EXPECT_FALSE(h().manager->sync(file));
        EXPECT_TRUE(eventually([&] { return !alive(pid); }));
        EXPECT_EQ(count_notes(out_, "shutdown", pid), 1u)
            << "the plugin's shutdown did not run after it had used up memory_max: tickhost-worker starts a new "
               "thread for each init/shutdown call (InProcessInstance's call_bounded), whose 8 MiB stack RLIMIT_DATA "
               "refuses; the std::system_error escapes worker_main.cpp and the worker dies by SIGABRT, unnamed "
               "(\"terminate called after throwing an instance of 'std::system_error'\" on the host's stderr)\n"
            << log();
    }
    expect_steady_after(trouble);
}

// processes_max = 1 as root without a cgroup: a seccomp filter makes every fork fail; the plugin's
// process lives on, childless.
TEST_F(Isolation, ForkBombIsStoppedByProcessesMax) {
    bad().processes_max = 1;
    bad().config.set("how", std::string("forkbomb"));
    bad().config.set("fork_max", int64_t(8));
    h().add(kCrash, "fx_crash.so");
    const auto trouble = Clock::now();
    start();
    ASSERT_TRUE(eventually([&] { return count_notes(out_, "run") >= 3; })) << log();
    const pid_t pid = pids(out_, "init").at(0);
    EXPECT_EQ(*first_number_after(out_, "forked "), 0) << read_file(out_);
    EXPECT_TRUE(process_children(pid).empty());
    EXPECT_FALSE(h().logged("limit not enforced")) << log();
    EXPECT_TRUE(alive(pid));
    if (!tickhost::detail::cgroup_v2_usable(nullptr) && ::geteuid() == 0)
        EXPECT_EQ(status_field(pid, "Seccomp"), "2") << "the seccomp filter is the mechanism here";
    expect_steady_after(trouble);
}

// processes_max > 1 for a root child without a cgroup cannot be enforced: the host says so by name (the
// plugin then forks all it wants), and what the plugin started dies with its process.
TEST_F(Isolation, ProcessesMaxItCannotEnforceIsSaidAndChildrenDieWithTheWorker) {
    if (::geteuid() != 0 || tickhost::detail::cgroup_v2_usable(nullptr))
        GTEST_SKIP() << "for a root host without a delegated cgroup v2 (" << cgroup_or_why() << ")";
    bad().processes_max = 4;
    bad().config.set("how", std::string("forkbomb"));
    bad().config.set("fork_max", int64_t(3));
    const fs::path file = h().add(kCrash, "fx_crash.so");
    start();
    ASSERT_TRUE(eventually([&] { return first_number_after(out_, "forked ").has_value(); })) << log();
    EXPECT_TRUE(h().logged("plugin 'fx_crash': processes_max = 4: not enforceable as root", "limit not enforced"))
        << log();
    EXPECT_EQ(*first_number_after(out_, "forked "), 3);
    const pid_t pid = pids(out_, "init").at(0);
    const auto kids = process_children(pid);
    EXPECT_GE(kids.size(), 3u);
    fs::remove(file);
    h().manager->sync(file);
    EXPECT_TRUE(eventually([&] { return !alive(pid); }));
    for (pid_t k : kids)
        EXPECT_TRUE(eventually([&] { return !alive(k); })) << "child " << k << " of the plugin survived";
    expect_steady_after(started_at_);
}

// ---- 4. the host SIGKILLed -----------------------------------------------------------------------------------

// The real binary, an isolated plugin running and one stuck in its init (so that its process does not
// notice its channel closing): SIGKILL the host, and no worker may survive it.
TEST_F(Isolation, NoWorkerSurvivesTheHostsSigkill) {
    TempDir d;
    fs::create_directories(d / "plugins");
    fs::copy_file(kSteady, d / "plugins" / "a_steady.so");
    fs::copy_file(kCrash, d / "plugins" / "fx_crash.so");
    const fs::path beat_file = d / "beats", out = d / "out", log = d / "host.log";
    write_file(d / "host.toml",
               "[host]\nplugin_dir = \"plugins\"\nshadow_dir = \"shadow\"\nworkers = 2\n"
               "isolation = \"process\"\nwatch = \"off\"\n"
               "[plugins.steady.config]\nout = \"" +
                   beat_file.string() +
                   "\"\n"
                   "[plugins.fx_crash]\ntimeout = \"60s\"\n"
                   "[plugins.fx_crash.config]\nwhere = \"init\"\nhow = \"hang\"\nout = \"" +
                   out.string() + "\"\n");
    const pid_t host = ::fork();
    if (host == 0) {
        const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ::dup2(fd, 1);
        ::dup2(fd, 2);
        ::execl(TICKHOST_EXE, TICKHOST_EXE, "--config", (d / "host.toml").c_str(), (char*)nullptr);
        ::_exit(127);
    }
    ASSERT_GT(host, 0);
    pid_t running = 0, stuck = 0;
    const bool both = eventually(
        [&] {
            auto b = beats(beat_file);
            running = b.empty() ? 0 : b.back().pid;
            auto i = pids(out, "init");
            stuck = i.empty() ? 0 : i.front();
            return running && stuck;
        },
        20s);
    ::kill(host, SIGKILL);
    int status = 0;
    ::waitpid(host, &status, 0);
    ASSERT_TRUE(both) << read_file(log);
    EXPECT_NE(running, host);
    EXPECT_NE(stuck, host);
    const bool running_gone = eventually([&] { return !alive(running); }, 10s);
    const bool stuck_gone = eventually([&] { return !alive(stuck); }, 10s);
    EXPECT_TRUE(running_gone) << "worker " << running << " (running its plugin) survived its host's SIGKILL";
    EXPECT_TRUE(stuck_gone) << "worker " << stuck
                            << " (stuck in its plugin's init, not reading its channel) survived its host's SIGKILL: "
                               "nothing killed it when its parent died (PR_SET_PDEATHSIG = SIGKILL is not set in "
                               "host/src/isolation/child_process.cpp child_main)";
    for (pid_t p : {running, stuck})
        if (alive(p)) {
            ::kill(-p, SIGKILL);
            ::kill(p, SIGKILL);
        }
}

// ---- 5. replace, rollback, delete ----------------------------------------------------------------------------

size_t events(const fs::path& file, const std::string& what) {
    std::istringstream in(read_file(file));
    std::string line;
    size_t n = 0;
    while (std::getline(in, line)) n += line.rfind(what, 0) == 0;
    return n;
}

void rename_over(const fs::path& from, const fs::path& to) {
    const fs::path tmp = to.parent_path() / ("." + to.filename().string() + ".tmp");
    fs::copy_file(from, tmp, fs::copy_options::overwrite_existing);
    fs::rename(tmp, to);
}

// A new version is loaded in a new process before the old one stops; a version that cannot load, or whose
// init fails, leaves the old process running; deleting the file stops the plugin and its process.
TEST_F(Isolation, ReplaceRollbackAndDeleteMoveProcesses) {
    const fs::path ev = h().tmp / "events", state = h().tmp / "state";
    auto& s = h().plugin("versioned");
    s.isolation = Mode::process;
    s.config.set("events", ev.string());
    s.config.set("state", state.string());
    const fs::path file = h().add(fixture("fx_versioned_v1"), "versioned.so");
    const auto trouble = Clock::now();
    start();
    auto info = h().manager->plugin("versioned");
    ASSERT_TRUE(info) << log();
    const pid_t v1 = worker_of(info->shadow);
    ASSERT_GT(v1, 0);
    EXPECT_FALSE(mapped(info->shadow)) << "an isolated plugin is not mapped in the host";
    auto runs_go_on = [&](const std::string& version) {
        const std::string before = read_file(state);
        return eventually([&] {
            const std::string now = read_file(state);
            return now != before && now.rfind(version + " ", 0) == 0;
        });
    };
    ASSERT_TRUE(runs_go_on("1.0.0"));

    // Cannot load (another ABI major): refused in its own process; the old one never stopped.
    rename_over(fixture("fx_abi_major_versioned"), file);
    auto err = h().manager->sync(file);
    ASSERT_TRUE(err);
    EXPECT_EQ(err->code, TH_E_ABI_MAJOR) << err->message();
    EXPECT_EQ(events(ev, "stop"), 0u);
    EXPECT_TRUE(alive(v1));
    EXPECT_EQ(h().manager->plugin("versioned")->version, "1.0.0");
    EXPECT_TRUE(runs_go_on("1.0.0"));

    // Loads, but its init fails: the old version starts again, in the process it always had.
    rename_over(fixture("fx_versioned_v3_init_fails"), file);
    err = h().manager->sync(file);
    ASSERT_TRUE(err);
    EXPECT_EQ(err->code, TH_E_INIT_FAILED) << err->message();
    EXPECT_TRUE(h().logged("restored the old version 'versioned' 1.0.0")) << log();
    EXPECT_EQ(events(ev, "stop 1.0.0"), 1u);
    EXPECT_EQ(events(ev, "start 1.0.0"), 2u);
    EXPECT_TRUE(alive(v1));
    info = h().manager->plugin("versioned");
    EXPECT_EQ(worker_of(info->shadow), v1);
    EXPECT_TRUE(runs_go_on("1.0.0"));

    // A good new version: loaded in a new process first, then the old one stops and its process ends.
    rename_over(fixture("fx_versioned_v2"), file);
    EXPECT_FALSE(h().manager->sync(file)) << log();
    info = h().manager->plugin("versioned");
    ASSERT_TRUE(info);
    EXPECT_EQ(info->version, "2.0.0");
    const pid_t v2 = worker_of(info->shadow);
    EXPECT_GT(v2, 0);
    EXPECT_NE(v2, v1);
    EXPECT_TRUE(h().logged("replacing plugin 'versioned' 1.0.0", "with 'versioned' 2.0.0"))
        << "the new version was loaded (its descriptor read in its process) before the old one stopped\n"
        << log();
    EXPECT_EQ(events(ev, "stop 1.0.0"), 2u);
    EXPECT_EQ(events(ev, "shutdown 1.0.0"), 2u);
    EXPECT_TRUE(eventually([&] { return !alive(v1); })) << "the old process ended";
    EXPECT_TRUE(runs_go_on("2.0.0"));

    // Deleted: its stop call and shutdown, then its process ends.
    fs::remove(file);
    EXPECT_FALSE(h().manager->sync(file));
    EXPECT_FALSE(h().manager->plugin("versioned"));
    EXPECT_EQ(events(ev, "stop 2.0.0"), 1u);
    EXPECT_EQ(events(ev, "shutdown 2.0.0"), 1u);
    EXPECT_TRUE(eventually([&] { return !alive(v2); }));
    expect_steady_after(trouble);
}

// ---- 6. a change of mode ---------------------------------------------------------------------------------------

// isolation changed in host.toml: the plugin moves. Isolated it runs in another process and its copy is
// not mapped in the host; back in the host's process it is.
TEST_F(Isolation, ModeSwitchMovesThePluginInAndOutOfTheHost) {
    auto& s = h().plugin("fx_crash");
    s.config.set("where", std::string("never"));
    s.config.set("out", out_.string());
    h().add(kCrash, "fx_crash.so");
    const auto trouble = Clock::now();
    start();
    auto last_run_pid = [&] {
        pid_t last = 0;
        for (auto& n : notes(out_))
            if (n.what == "run") last = n.pid;
        return last;
    };
    ASSERT_TRUE(eventually([&] { return last_run_pid() == ::getpid(); })) << log();
    auto in_host = h().manager->plugin("fx_crash");
    ASSERT_TRUE(in_host);
    EXPECT_TRUE(mapped(in_host->shadow));

    h().plugin("fx_crash").isolation = Mode::process;
    h().manager->apply_config(h().config);
    ASSERT_TRUE(eventually([&] { return last_run_pid() != ::getpid(); })) << log();
    auto isolated = h().manager->plugin("fx_crash");
    ASSERT_TRUE(isolated);
    const pid_t worker = worker_of(isolated->shadow);
    EXPECT_EQ(last_run_pid(), worker);
    EXPECT_FALSE(mapped(isolated->shadow)) << "the isolated copy is mapped in the host";
    EXPECT_FALSE(mapped(in_host->shadow)) << "the in-process copy stayed mapped after the move";
    EXPECT_TRUE(h().logged("moving it to isolation = \"process\"")) << log();

    h().plugin("fx_crash").isolation = Mode::none;
    h().manager->apply_config(h().config);
    ASSERT_TRUE(eventually([&] { return last_run_pid() == ::getpid(); })) << log();
    auto back = h().manager->plugin("fx_crash");
    ASSERT_TRUE(back);
    EXPECT_TRUE(mapped(back->shadow));
    EXPECT_TRUE(eventually([&] { return !alive(worker); })) << "its process ended with the move";
    expect_steady_after(trouble);
}

// ---- 7. garbage on the channel -------------------------------------------------------------------------------

TEST_F(Isolation, GarbageOnTheChannelGetsTheWorkerKilledAndNamed) {
    h().config.crash_limit = 2;
    bad().config.set("how", std::string("garbage"));
    h().add(kCrash, "fx_crash.so");
    const auto trouble = Clock::now();
    start();
    ASSERT_TRUE(eventually([&] { return h().logged("stays down until its file changes"); }, 20s)) << log();
    const auto first = pids(out_, "init").at(0);
    EXPECT_TRUE(h().logged("plugin 'fx_crash'", "its process " + std::to_string(first) +
                                                    " killed by signal 9 (SIGKILL), "
                                                    "killed by the host because it sent an invalid message"))
        << log();
    EXPECT_EQ(pids(out_, "init").size(), 2u) << "restarted once, then down (crash_limit = 2)";
    EXPECT_FALSE(h().logged("garbage from a hostile plugin")) << "the junk was taken for a message\n" << log();
    expect_steady_after(trouble);
}

// An isolated plugin's log lines are limited (1000 at once, then 1000 per second); the rest are dropped and
// counted in the host's log, and the good plugin beside it keeps its schedule.
TEST_F(Isolation, LogFloodIsRateLimitedAndCounted) {
    bad().config.set("how", std::string("flood"));
    bad().interval = std::chrono::milliseconds(200);
    h().add(kCrash, "fx_crash.so");
    const auto trouble = Clock::now();
    start();
    ASSERT_TRUE(eventually([&] { return h().logged("log line(s) of its process dropped (more than 1000 per second)"); }, 20s))
        << log().substr(0, 2000);
    const double seconds = std::chrono::duration<double>(Clock::now() - trouble).count();
    const size_t lines = h().count_logged("] flood ");
    EXPECT_GE(lines, 1000u) << "the first burst goes through whole";
    EXPECT_LE(double(lines), 1000 + 1000 * (seconds + 1)) << "no more than the burst and the rate allow";
    EXPECT_TRUE(h().logged("[plugin.fx_crash] [work] flood 0")) << "its lines are the plugin's, with the task";
    expect_steady_after(trouble);
}

// ---- 8. user and group ---------------------------------------------------------------------------------------

// A folder and an `out` file that user nobody can reach (the test's TempDir is 0700 root).
struct SharedOut {
    TempDir dir;
    fs::path out = dir / "out";
    SharedOut() {
        fs::permissions(dir.path(), fs::perms(0755), fs::perm_options::replace);
        write_file(out, "");
        EXPECT_EQ(::chown(out.c_str(), kNobody, kNobody), 0);
    }
};

// Copies of this build's tickhost and tickhost-worker that user nobody can execute (the build tree may lie
// under a folder only root may enter, such as /root); $TICKHOST_WORKER names the copy while this lives.
struct ExecutablesForNobody {
    TempDir dir;
    fs::path worker = dir / "tickhost-worker", host = dir / "tickhost";
    std::string previous;
    bool had_previous = false;
    ExecutablesForNobody() {
        fs::permissions(dir.path(), fs::perms(0755), fs::perm_options::replace);
        fs::copy_file(TICKHOST_WORKER_EXE, worker);
        fs::copy_file(TICKHOST_EXE, host);
        fs::permissions(worker, fs::perms(0755), fs::perm_options::replace);
        fs::permissions(host, fs::perms(0755), fs::perm_options::replace);
        if (const char* p = std::getenv("TICKHOST_WORKER")) previous = p, had_previous = true;
        ::setenv("TICKHOST_WORKER", worker.c_str(), 1);
    }
    ~ExecutablesForNobody() {
        if (had_previous)
            ::setenv("TICKHOST_WORKER", previous.c_str(), 1);
        else
            ::unsetenv("TICKHOST_WORKER");
    }
};

TEST_F(Isolation, UserAndGroupAsRootRunTheWorkerAsNobody) {
    if (::geteuid() != 0) GTEST_SKIP() << "needs a host running as root (user/group are refused otherwise)";
    ExecutablesForNobody exes;
    SharedOut shared;
    out_ = shared.out;
    bad().config.set("where", std::string("never"));
    bad().user = "nobody";
    bad().group = "nogroup";
    h().add(kCrash, "fx_crash.so");
    start();
    ASSERT_TRUE(eventually([&] { return count_notes(out_, "run") >= 1; })) << log();
    const pid_t pid = pids(out_, "run").at(0);
    EXPECT_EQ(status_field(pid, "Uid"), "65534\t65534\t65534\t65534");
    gid_t nogroup = 0;
    ASSERT_TRUE(tickhost::detail::resolve_group("nogroup", &nogroup, nullptr));
    const std::string g = std::to_string(nogroup);
    EXPECT_EQ(status_field(pid, "Gid"), g + "\t" + g + "\t" + g + "\t" + g);
    EXPECT_EQ(status_field(pid, "Groups"), std::to_string(nogroup)) << "no supplementary group of the host's";
    EXPECT_EQ(status_field(pid, "NoNewPrivs"), "1");
    expect_steady_after(started_at_);
}

// The real binary as user nobody, asked to run a plugin as nobody: refused by name.
TEST_F(Isolation, UserOnANonRootHostIsRefusedByName) {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to start a host as another user";
    ExecutablesForNobody exes;
    TempDir d;
    fs::permissions(d.path(), fs::perms(0755), fs::perm_options::replace);
    fs::create_directories(d / "plugins");
    fs::copy_file(kCrash, d / "plugins" / "fx_crash.so");
    fs::create_directories(d / "shadow");
    ASSERT_EQ(::chown((d / "shadow").c_str(), kNobody, kNobody), 0);
    fs::permissions(d / "shadow", fs::perms(0700), fs::perm_options::replace);
    const fs::path log = d / "host.log";
    write_file(log, "");
    ASSERT_EQ(::chown(log.c_str(), kNobody, kNobody), 0);
    write_file(d / "host.toml",
               "[host]\nplugin_dir = \"plugins\"\nshadow_dir = \"shadow\"\nworkers = 1\nwatch = \"off\"\n"
               "[plugins.fx_crash]\nisolation = \"process\"\nuser = \"nobody\"\n"
               "[plugins.fx_crash.config]\nwhere = \"never\"\n");
    const pid_t host = ::fork();
    if (host == 0) {
        const int fd = ::open(log.c_str(), O_WRONLY | O_TRUNC);
        ::dup2(fd, 1);
        ::dup2(fd, 2);
        const gid_t g = kNobody;
        if (::setgroups(1, &g) != 0 || ::setgid(kNobody) != 0 || ::setuid(kNobody) != 0) ::_exit(126);
        ::execl(exes.host.c_str(), exes.host.c_str(), "--config", (d / "host.toml").c_str(), (char*)nullptr);
        ::_exit(127);
    }
    ASSERT_GT(host, 0);
    const bool said =
        eventually([&] { return read_file(log).find("need a host running as root") != std::string::npos; }, 20s);
    ::kill(host, SIGKILL);
    ::waitpid(host, nullptr, 0);
    EXPECT_TRUE(said) << read_file(log);
    EXPECT_NE(read_file(log).find("fx_crash"), std::string::npos) << read_file(log);
}

// processes_max for a plugin running as another user: RLIMIT_NPROC (it counts that user's processes and
// threads), enforced even when the host runs as root.
TEST_F(Isolation, ProcessesMaxForAnotherUserIsRlimitNproc) {
    if (::geteuid() != 0 || tickhost::detail::cgroup_v2_usable(nullptr))
        GTEST_SKIP() << "for a root host without a delegated cgroup v2 (" << cgroup_or_why() << ")";
    ExecutablesForNobody exes;
    SharedOut shared;
    out_ = shared.out;
    bad().user = "nobody";
    bad().processes_max = 8;
    bad().config.set("how", std::string("forkbomb"));
    bad().config.set("fork_max", int64_t(32));
    const fs::path file = h().add(kCrash, "fx_crash.so");
    start();
    ASSERT_TRUE(eventually([&] { return first_number_after(out_, "forked ").has_value(); })) << log();
    EXPECT_LT(*first_number_after(out_, "forked "), 8) << read_file(out_);
    std::cout << "[ info     ] processes_max 8 for user nobody by RLIMIT_NPROC (its processes and threads): forked "
              << *first_number_after(out_, "forked ") << " of 32\n";
    EXPECT_FALSE(h().logged("limit not enforced")) << log();
    // Removed while its user has no process left to start: its shutdown still runs.
    const pid_t pid = pids(out_, "init").at(0);
    fs::remove(file);
    EXPECT_FALSE(h().manager->sync(file));
    EXPECT_TRUE(eventually([&] { return !alive(pid); }));
    EXPECT_EQ(count_notes(out_, "shutdown", pid), 1u)
        << "the plugin's shutdown did not run once its user was at processes_max: tickhost-worker starts a new "
           "thread for each init/shutdown call (InProcessInstance's call_bounded), which RLIMIT_NPROC refuses; the "
           "std::system_error escapes worker_main.cpp and the worker dies by SIGABRT, unnamed\n"
        << log();
    expect_steady_after(started_at_);
}

// ---- 9. a Go runtime -------------------------------------------------------------------------------------------

// In the host's process a Go runtime can be neither unloaded nor started twice: the new version is refused.
TEST_F(Isolation, GoRuntimeInProcessIsNotReplaced) {
    const fs::path file = h().add(fixture("fx_gofake_v1"), "gofake.so");
    start();
    ASSERT_TRUE(h().manager->plugin("gofake")) << log();
    rename_over(fixture("fx_gofake_v2"), file);
    auto err = h().manager->sync(file);
    ASSERT_TRUE(err);
    EXPECT_EQ(err->code, TH_E_NOT_ALLOWED) << err->message();
    EXPECT_NE(err->message().find("Go runtime"), std::string::npos) << err->message();
    EXPECT_EQ(h().manager->plugin("gofake")->version, "1.0.0");
    expect_steady_after(started_at_);
}

// Isolated, each version has a process of its own: replaced freely, back and forth.
TEST_F(Isolation, GoRuntimeIsolatedIsReplacedFreely) {
    h().plugin("gofake").isolation = Mode::process;
    const fs::path file = h().add(fixture("fx_gofake_v1"), "gofake.so");
    start();
    pid_t last = 0;
    for (const char* v : {"fx_gofake_v2", "fx_gofake_v1", "fx_gofake_v2"}) {
        auto before = h().manager->plugin("gofake");
        ASSERT_TRUE(before) << log();
        last = worker_of(before->shadow);
        ASSERT_GT(last, 0);
        rename_over(fixture(v), file);
        EXPECT_FALSE(h().manager->sync(file)) << log();
        auto after = h().manager->plugin("gofake");
        ASSERT_TRUE(after);
        EXPECT_EQ(after->version, std::string(v).back() == '2' ? "2.0.0" : "1.0.0");
        EXPECT_NE(worker_of(after->shadow), last);
        EXPECT_TRUE(eventually([&] { return !alive(last); }));
    }
    EXPECT_FALSE(h().logged("TH_E_NOT_ALLOWED")) << log();
    expect_steady_after(started_at_);
}

// ---- the worker's sandbox --------------------------------------------------------------------------------------

// The worker holds no descriptor of the host's but what it was given (0, 1, 2, its control channel 3, the
// shared memory 4, the plugin's copy 5) and its lane sockets; it cannot gain privileges.
TEST_F(Isolation, WorkerHoldsOnlyItsChannelAndCannotGainPrivileges) {
    const fs::path marker = h().tmp / "marker";
    write_file(marker, "x");
    const int leaky = ::open(marker.c_str(), O_RDONLY);  // not CLOEXEC: a careless host's descriptor
    ASSERT_GE(leaky, 0);
    bad().config.set("where", std::string("never"));
    h().add(kCrash, "fx_crash.so");
    start();
    ASSERT_TRUE(eventually([&] { return count_notes(out_, "run") >= 2; })) << log();
    const auto info = h().manager->plugin("fx_crash");
    ASSERT_TRUE(info);
    const pid_t pid = worker_of(info->shadow);
    ASSERT_GT(pid, 0);
    const auto fds = fds_of(pid);
    EXPECT_EQ(fds.count(0) + fds.count(1) + fds.count(2), 3u) << describe_fds(fds);
    EXPECT_EQ(fds.at(0), "/dev/null");
    EXPECT_EQ(fds.at(3).rfind("socket:", 0), 0u) << describe_fds(fds);
    EXPECT_EQ(fds.at(4).rfind("/memfd:tickhost-lanes", 0), 0u) << describe_fds(fds);
    EXPECT_EQ(fds.at(5), info->shadow.string()) << describe_fds(fds);
    for (auto& [fd, what] : fds) {
        if (fd <= 5) continue;
        EXPECT_EQ(what.rfind("socket:", 0), 0u) << "descriptor " << fd << " of the worker is not a lane\n"
                                                << describe_fds(fds);
    }
    for (auto& [fd, what] : fds) EXPECT_NE(what, marker.string()) << "the host's descriptor leaked into the worker";
    EXPECT_EQ(status_field(pid, "NoNewPrivs"), "1");
    EXPECT_EQ(::getpgid(pid), pid) << "a process group of its own";
    ::close(leaky);
    expect_steady_after(started_at_);
}

}  // namespace
