// Hot add, replace and remove while the host runs: a real Host on a real temporary plugin_dir, watched by
// inotify and by the polling backend (every scenario runs on both), with real .so builds whose bytes differ.
#include <tickhost/host.hpp>
#include <tickhost/logging.hpp>

#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include <dirent.h>
#include <fstream>
#include <map>
#include <sstream>

#include "test_util.hpp"

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using tickhost::Host;
using tickhost::HostConfig;
using tickhost::WatchMode;
using tickhost::test::eventually;
using tickhost::test::read_file;
using tickhost::test::TempDir;
using tickhost::test::write_file;

namespace {

fs::path fixture(const std::string& name) { return fs::path(FIXTURE_DIR) / (name + ".so"); }
const fs::path V1 = fixture("fx_versioned_v1");
const fs::path V2 = fixture("fx_versioned_v2");
const fs::path V3_INIT_FAILS = fixture("fx_versioned_v3_init_fails");
const fs::path WRONG_ABI = fixture("fx_abi_major_versioned");

int open_fds() {
    int n = 0;
    for (auto& e : fs::directory_iterator("/proc/self/fd")) (void)e, ++n;
    return n;
}

// The images of plugin versions loaded from shadow copies under `dir` (in this process or, isolated, in
// their own).
size_t mapped_count(const fs::path& dir) { return tickhost::test::images_mapped(dir); }

size_t file_count(const fs::path& dir) {
    size_t n = 0;
    std::error_code ec;
    for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); ++it) ++n;
    return n;
}

// Copies `from` to `to` through a temporary name in the same directory, then renames over: the
// operator's safe way ("mv new.so plugin.so").
void rename_over(const fs::path& from, const fs::path& to) {
    fs::path tmp = to.parent_path() / ("." + to.filename().string() + ".tmp");
    fs::copy_file(from, tmp, fs::copy_options::overwrite_existing);
    fs::rename(tmp, to);
}

// Overwrites in place, like `cp new.so plugin.so`: same inode, truncated and rewritten.
void overwrite_in_place(const fs::path& from, const fs::path& to) {
    std::ofstream out(to, std::ios::binary | std::ios::trunc);
    out << read_file(from);
}

struct Events {
    std::map<std::string, int> starts, stops, shutdowns;  // by instance id
    std::map<std::string, std::string> version;           // id -> version
};

Events parse_events(const fs::path& p) {
    Events e;
    std::istringstream in(read_file(p));
    std::string what, version, id;
    while (in >> what >> version >> id) {
        e.version[id] = version;
        if (what == "start") ++e.starts[id];
        if (what == "stop") ++e.stops[id];
        if (what == "shutdown") ++e.shutdowns[id];
    }
    return e;
}

class HotReload : public ::testing::TestWithParam<WatchMode> {
protected:
    TempDir tmp;
    fs::path dir = tmp / "plugins.d";
    fs::path events = tmp / "events";
    fs::path state = tmp / "state";
    fs::path so = dir / "versioned.so";
    HostConfig config;
    std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(20000);
    std::unique_ptr<Host> host;

    void SetUp() override {
        fs::create_directories(dir);
        config.plugin_dir = dir;
        config.shadow_dir = tmp / "shadow";
        config.workers = 2;
        config.default_timeout = 5s;
        config.shutdown_timeout = 10s;
        config.watch = GetParam();
        config.poll_interval = 20ms;
        config.settle = 50ms;
        if (tickhost::test::isolated()) config.isolation = tickhost::Isolation::process;
        auto& p = config.plugins["versioned"];
        p.config.set("events", events.string());
        p.config.set("state", state.string());
        tickhost::set_log_sinks({sink}, spdlog::level::debug);
    }
    void TearDown() override {
        host.reset();
        // Nothing of the plugins is left: no worker process, no zombie, no shadow copy.
        for (auto& c : tickhost::test::child_processes()) ADD_FAILURE() << "a child process was left behind: " << c;
        EXPECT_EQ(file_count(config.shadow_dir), 0u) << "shadow copies left behind";
    }

    void start() {
        host = std::make_unique<Host>(config);
        host->start();
    }
    std::string running_version() {
        std::istringstream in(read_file(state));
        std::string v;
        in >> v;
        return v;
    }
    // Waits until `version` writes its state file (its runs are happening).
    bool runs(const std::string& version) {
        return eventually([&] {
            if (running_version() != version) return false;
            auto before = read_file(state);
            return eventually([&] { return read_file(state) != before; }, 2s);
        });
    }
    bool logged(const std::string& a, const std::string& b = "") {
        for (auto& line : sink->last_formatted())
            if (line.find(a) != std::string::npos && line.find(b) != std::string::npos) return true;
        return false;
    }
    size_t count_logged(const std::string& a) {
        size_t n = 0;
        for (auto& line : sink->last_formatted()) n += line.find(a) != std::string::npos;
        return n;
    }
    std::string log_text() {
        std::string s;
        for (auto& l : sink->last_formatted()) s += l;
        return s;
    }
    size_t loaded() { return host->plugins().plugins().size(); }
};

}  // namespace

TEST_P(HotReload, CopyInStartsThePlugin) {
    start();
    fs::copy_file(V1, so);
    ASSERT_TRUE(runs("1.0.0")) << log_text();
    EXPECT_EQ(loaded(), 1u);
}

TEST_P(HotReload, MoveInStartsThePlugin) {
    start();
    fs::copy_file(V1, tmp / "staging.so");
    fs::rename(tmp / "staging.so", so);
    ASSERT_TRUE(runs("1.0.0")) << log_text();
}

TEST_P(HotReload, DeleteStopsAndUnloads) {
    fs::copy_file(V1, so);
    start();
    ASSERT_TRUE(runs("1.0.0"));
    auto shadow = host->plugins().plugins().at(0).shadow;
    fs::remove(so);
    ASSERT_TRUE(eventually([&] { return loaded() == 0; })) << log_text();
    Events e = parse_events(events);
    ASSERT_EQ(e.starts.size(), 1u);
    for (auto& [id, n] : e.starts) {
        EXPECT_EQ(e.stops[id], 1) << "exactly one stop call";
        EXPECT_EQ(e.shutdowns[id], 1);
    }
    EXPECT_FALSE(fs::exists(shadow));
    EXPECT_EQ(mapped_count(config.shadow_dir), 0u);
}

TEST_P(HotReload, MoveOutStopsAndUnloads) {
    fs::copy_file(V1, so);
    start();
    ASSERT_TRUE(runs("1.0.0"));
    fs::rename(so, tmp / "moved-away.so");
    ASSERT_TRUE(eventually([&] { return loaded() == 0; })) << log_text();
    EXPECT_EQ(parse_events(events).stops.size(), 1u);
}

TEST_P(HotReload, RenameOverReplacesTheVersion) {
    fs::copy_file(V1, so);
    start();
    ASSERT_TRUE(runs("1.0.0"));
    rename_over(V2, so);
    ASSERT_TRUE(runs("2.0.0")) << log_text();
    EXPECT_TRUE(logged("replaced plugin 'versioned' 1.0.0", "-> 'versioned' 2.0.0")) << log_text();
    Events e = parse_events(events);
    for (auto& [id, v] : e.version) EXPECT_EQ(e.stops[id], v == "1.0.0" ? 1 : 0) << v;
    EXPECT_EQ(mapped_count(config.shadow_dir), 1u);
}

TEST_P(HotReload, OverwriteInPlaceWhileRunningNeverCrashes) {
    config.plugins["versioned"].config.set("work", std::string("5ms"));  // runs are in flight while we write
    fs::copy_file(V1, so);
    start();
    ASSERT_TRUE(runs("1.0.0"));
    overwrite_in_place(V2, so);
    ASSERT_TRUE(runs("2.0.0")) << log_text();
    overwrite_in_place(V1, so);
    ASSERT_TRUE(runs("1.0.0")) << log_text();
}

TEST_P(HotReload, DeleteThenCreateReplaces) {
    fs::copy_file(V1, so);
    start();
    ASSERT_TRUE(runs("1.0.0"));
    fs::remove(so);
    fs::copy_file(V2, so);
    ASSERT_TRUE(runs("2.0.0")) << log_text();
    EXPECT_EQ(loaded(), 1u);
}

TEST_P(HotReload, GarbageReplacementLeavesTheOldRunning) {
    fs::copy_file(V1, so);
    start();
    ASSERT_TRUE(runs("1.0.0"));
    write_file(tmp / "garbage", "definitely not a shared library");
    rename_over(tmp / "garbage", so);
    ASSERT_TRUE(eventually([&] { return logged(so.string(), "new version refused"); })) << log_text();
    EXPECT_TRUE(logged(so.string(), "'versioned' 1.0.0")) << "the error says what keeps running";
    ASSERT_TRUE(runs("1.0.0"));
    EXPECT_TRUE(parse_events(events).stops.empty()) << "the old version was stopped";
    // A good file afterwards is picked up.
    rename_over(V2, so);
    ASSERT_TRUE(runs("2.0.0")) << log_text();
}

TEST_P(HotReload, WrongAbiReplacementLeavesTheOldRunning) {
    fs::copy_file(V1, so);
    start();
    ASSERT_TRUE(runs("1.0.0"));
    rename_over(WRONG_ABI, so);
    ASSERT_TRUE(eventually([&] { return logged(so.string(), "TH_E_ABI_MAJOR"); })) << log_text();
    ASSERT_TRUE(runs("1.0.0"));
    EXPECT_TRUE(parse_events(events).stops.empty());
}

TEST_P(HotReload, FailedInitOfTheNewVersionRestoresTheOld) {
    fs::copy_file(V1, so);
    start();
    ASSERT_TRUE(runs("1.0.0"));
    rename_over(V3_INIT_FAILS, so);
    ASSERT_TRUE(eventually([&] { return logged("restored the old version 'versioned' 1.0.0"); })) << log_text();
    EXPECT_TRUE(logged("version 3.0.0 cannot start"));
    ASSERT_TRUE(runs("1.0.0"));
    Events e = parse_events(events);
    EXPECT_EQ(e.starts.size(), 2u) << "the old version was initialised again";
}

TEST_P(HotReload, TouchOrSameBytesIsNotAnUpgrade) {
    fs::copy_file(V1, so);
    start();
    ASSERT_TRUE(runs("1.0.0"));
    fs::last_write_time(so, fs::file_time_type::clock::now());
    overwrite_in_place(V1, so);
    rename_over(V1, so);
    std::this_thread::sleep_for(300ms);  // let every event settle; nothing may happen
    EXPECT_TRUE(parse_events(events).stops.empty()) << log_text();
    EXPECT_EQ(count_logged("loaded plugin 'versioned'"), 1u);
    EXPECT_EQ(count_logged("replacing"), 0u);
}

TEST_P(HotReload, SamePluginUnderTwoNamesIsRefusedClearly) {
    fs::copy_file(V1, so);
    start();
    ASSERT_TRUE(runs("1.0.0"));
    fs::copy_file(V2, dir / "versioned-copy.so");
    ASSERT_TRUE(eventually([&] { return logged("versioned-copy.so", "TH_E_DUPLICATE_NAME"); })) << log_text();
    EXPECT_EQ(loaded(), 1u);
    ASSERT_TRUE(runs("1.0.0"));
    // Once the first file goes, the second one takes its place.
    fs::remove(so);
    ASSERT_TRUE(runs("2.0.0")) << log_text();
    EXPECT_EQ(host->plugins().plugin("versioned")->file, dir / "versioned-copy.so");
}

TEST_P(HotReload, RapidReplaceCyclesLeakNothing) {
    config.plugins["versioned"].config.set("work", std::string("1ms"));
    fs::copy_file(V1, so);
    fs::copy_file(fixture("fx_versioned_other"), dir / "other.so");
    config.plugins["other"].config.set("state", (tmp / "other-state").string());
    start();
    ASSERT_TRUE(runs("1.0.0"));
    const int fds_before = open_fds();
    for (int i = 0; i < 200; ++i) {
        rename_over(i % 2 ? V1 : V2, so);
        if (i % 10 == 0) std::this_thread::sleep_for(5ms);
    }
    // Wait until the watcher has handled every one of those events. V1 running or two shadow copies are no
    // proof: V1 runs while a replace by V2 (from an event still queued) is being checked. Events are handled
    // in order, one at a time, and a file that sorts after "versioned.so" settles no earlier than it: once
    // the sentinel's refusal is logged, everything before it is done.
    write_file(tmp / "sentinel", "not a shared library: a marker");
    rename_over(tmp / "sentinel", dir / "zz-sentinel.so");
    ASSERT_TRUE(eventually([&] { return logged("zz-sentinel.so", "not loaded"); })) << log_text();
    // The last write was V1 (i = 199): that version must end up running, and the other plugin never noticed.
    ASSERT_TRUE(runs("1.0.0")) << log_text();
    ASSERT_TRUE(eventually([&] {
        return loaded() == 2u && file_count(host->plugins().shadow_dir()) == 2u &&
               mapped_count(config.shadow_dir) == 2u;
    })) << log_text();
    ASSERT_TRUE(runs("1.0.0"));
    EXPECT_EQ(loaded(), 2u);
    const std::string other_before = read_file(tmp / "other-state");
    ASSERT_TRUE(eventually([&] { return read_file(tmp / "other-state") != other_before; }));
    Events e = parse_events(events);
    int running = 0;
    for (auto& [id, n] : e.starts) {
        EXPECT_EQ(n, 1);
        EXPECT_LE(e.stops[id], 1) << "a stop call twice for " << id;
        running += e.stops[id] == 0;
    }
    // "other" writes no events; exactly one versioned instance is still running.
    EXPECT_EQ(running, 1);
    EXPECT_EQ(file_count(host->plugins().shadow_dir()), 2u) << "shadow copies left behind";
    EXPECT_EQ(mapped_count(config.shadow_dir), 2u) << "images left mapped";
    // Polled: the plugins' own runs open their state files for a moment; a leaked descriptor stays open.
    EXPECT_TRUE(eventually([&] { return open_fds() <= fds_before; })) << "file descriptors leaked";
    host.reset();
    e = parse_events(events);
    for (auto& [id, n] : e.starts) EXPECT_EQ(e.stops[id], 1) << "every loaded version stopped exactly once";
    EXPECT_EQ(mapped_count(config.shadow_dir), 0u);
}

TEST_P(HotReload, RescanReconcilesWhatTheEventsMissed) {
    config.watch = WatchMode::off;  // no events at all: only the rescan path (as after IN_Q_OVERFLOW)
    fs::copy_file(V1, so);
    start();
    ASSERT_TRUE(runs("1.0.0"));
    rename_over(V2, so);
    fs::copy_file(fixture("fx_versioned_other"), dir / "other.so");
    std::this_thread::sleep_for(100ms);
    EXPECT_EQ(running_version(), "1.0.0") << "no watcher, nothing may change by itself";
    host->plugins().reconcile();
    ASSERT_TRUE(runs("2.0.0"));
    EXPECT_EQ(loaded(), 2u);
    fs::remove(so);
    host->plugins().reconcile();
    EXPECT_EQ(loaded(), 1u);
}

TEST_P(HotReload, DirectoryDeletedKeepsPluginsAndComesBack) {
    fs::copy_file(V1, so);
    start();
    ASSERT_TRUE(runs("1.0.0"));
    // Replace the whole directory: move it away (plugins keep running), then bring a new one with V2.
    fs::rename(dir, tmp / "old-plugins.d");
    ASSERT_TRUE(eventually([&] { return logged("the directory was"); })) << log_text();
    ASSERT_TRUE(runs("1.0.0")) << "plugins keep running while the directory is missing";
    fs::create_directories(tmp / "new-plugins.d");
    fs::copy_file(V2, tmp / "new-plugins.d" / "versioned.so");
    fs::rename(tmp / "new-plugins.d", dir);
    ASSERT_TRUE(runs("2.0.0")) << log_text();
}

TEST_P(HotReload, ConfigReloadAppliesValidChangesAndRefusesInvalidOnes) {
    const fs::path toml = tmp / "host.toml";
    auto write_toml = [&](const std::string& interval, const std::string& extra = "") {
        write_file(toml, "[host]\n" + tickhost::test::isolation_toml() +
                             "plugin_dir = \"plugins.d\"\nshadow_dir = \"shadow\"\nworkers = 2\n"
                             "poll_interval = \"20ms\"\nsettle = \"50ms\"\nwatch = \"" +
                             std::string(GetParam() == WatchMode::poll ? "poll" : "inotify") +
                             "\"\n"
                             "[plugins.versioned]\ninterval = \"" +
                             interval + "\"\n" + "[plugins.versioned.config]\nevents = \"" + events.string() +
                             "\"\nstate = \"" + state.string() + "\"\n" + "[plugins.other.config]\nstate = \"" +
                             (tmp / "other-state").string() + "\"\n" + extra);
    };
    write_toml("10ms");
    config = tickhost::load_config(toml);
    fs::copy_file(V1, so);
    fs::copy_file(fixture("fx_versioned_other"), dir / "other.so");
    start();
    ASSERT_TRUE(runs("1.0.0"));
    const auto other_id = host->plugins().plugin("other")->tasks.at(0).id;
    // A valid change to one plugin restarts that plugin only.
    write_toml("20ms");
    ASSERT_TRUE(eventually([&] { return host->plugins().plugin("versioned")->tasks.at(0).interval == 20ms; }))
        << log_text();
    EXPECT_EQ(host->plugins().plugin("other")->tasks.at(0).id, other_id) << "an unchanged plugin was restarted";
    ASSERT_TRUE(runs("1.0.0"));
    // An invalid file is refused with file:line:column; the running configuration stays.
    write_toml("20 parsecs");
    ASSERT_TRUE(eventually([&] { return logged("host.toml:", "keeping the running configuration"); })) << log_text();
    EXPECT_TRUE(logged("plugins.versioned.interval"));
    EXPECT_EQ(host->plugins().plugin("versioned")->tasks.at(0).interval, 20ms);
    // SIGHUP's path (reload_config) works too, and disabling stops the plugin.
    write_toml("20ms", "[plugins.other]\nenabled = false\n");
    EXPECT_TRUE(host->reload_config());
    ASSERT_TRUE(eventually([&] { return !host->plugins().plugin("other"); }));
    ASSERT_TRUE(runs("1.0.0"));
}

INSTANTIATE_TEST_SUITE_P(Backends, HotReload, ::testing::Values(WatchMode::inotify, WatchMode::poll),
                         [](const auto& info) { return info.param == WatchMode::inotify ? "inotify" : "poll"; });

// A burst of reload requests (SIGHUPs, host.toml events) ends in few reloads, the last of the latest file.
TEST(ReloadQueue, ABurstOfRequestsCoalescesIntoAReloadOfTheLatestFile) {
    TempDir tmp;
    fs::path toml = tmp / "host.toml";
    const fs::path dir = tmp / "plugins.d";
    fs::create_directories(dir);
    auto write_toml = [&](const std::string& interval) {
        write_file(toml, "[host]\n" + tickhost::test::isolation_toml() +
                             "plugin_dir = \"plugins.d\"\nshadow_dir = \"shadow\"\nworkers = 2\nwatch = \"off\"\n"
                             "[plugins.other]\ninterval = \"" +
                             interval + "\"\n[plugins.other.config]\nstate = \"" + (tmp / "state").string() + "\"\n");
    };
    write_toml("10ms");
    fs::copy_file(fixture("fx_versioned_other"), dir / "other.so");
    Host host(tickhost::load_config(toml));
    host.start();
    ASSERT_TRUE(host.plugins().plugin("other"));
    // The new file lands whole (rename), then 200 requests come at once; each returns at once.
    const fs::path final_toml = toml;
    toml = tmp / "host.toml.new";
    write_toml("30ms");
    fs::rename(toml, final_toml);
    for (int i = 0; i < 200; ++i) host.request_reload();
    ASSERT_TRUE(eventually([&] { return host.plugins().plugin("other")->tasks.at(0).interval == 30ms; }));
    ASSERT_TRUE(eventually([&] { return host.reloads_done() >= 1; }));
    std::this_thread::sleep_for(200ms);  // let a coalesced follow-up reload finish, if one is queued
    EXPECT_LE(host.reloads_done(), 3u) << "200 requests should coalesce";
    EXPECT_TRUE(host.stop());
}

// Keys that take effect only at a restart: said once per change of the file, and a value set back to the one
// the host runs with is not "changed". shutdown_timeout applies to the next stop.
TEST(ReloadQueue, RestartOnlyKeysAreComparedWithTheRunningValues) {
    auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(2000);
    tickhost::set_log_sinks({sink}, spdlog::level::debug);
    auto count = [&](const std::string& what) {
        size_t n = 0;
        for (auto& l : sink->last_formatted()) n += l.find(what) != std::string::npos;
        return n;
    };
    TempDir tmp;
    const fs::path toml = tmp / "host.toml";
    fs::create_directories(tmp / "plugins.d");
    auto write_toml = [&](int workers, const std::string& shutdown) {
        write_file(toml, "[host]\n" + tickhost::test::isolation_toml() +
                             "plugin_dir = \"plugins.d\"\nshadow_dir = \"shadow\"\nwatch = \"off\"\nworkers = " +
                             std::to_string(workers) + "\nshutdown_timeout = \"" + shutdown + "\"\n");
    };
    write_toml(2, "30s");
    Host host(tickhost::load_config(toml));
    host.start();
    write_toml(3, "30s");
    ASSERT_TRUE(host.reload_config());
    EXPECT_EQ(count("[host] workers changed; it takes effect after a restart"), 1u);
    ASSERT_TRUE(host.reload_config());  // the same file again: nothing new to say
    EXPECT_EQ(count("[host] workers changed"), 1u);
    write_toml(2, "7s");
    ASSERT_TRUE(host.reload_config());
    EXPECT_EQ(count("[host] workers changed"), 1u) << "a value set back to the running one is not a change";
    EXPECT_EQ(count("[host] workers is back to the value the host runs with"), 1u);
    EXPECT_EQ(host.shutdown_timeout(), 7s);
    EXPECT_TRUE(host.stop());
    tickhost::set_log_sinks({std::make_shared<spdlog::sinks::stderr_color_sink_mt>()}, spdlog::level::info);
}
