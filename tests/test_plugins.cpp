// Plugin loading with real .so files built by the tree, copied into real temporary directories.
#include <tickhost/config.hpp>
#include <tickhost/logging.hpp>
#include <tickhost/plugin_manager.hpp>
#include <tickhost/tickers.hpp>

#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>

#include <fstream>
#include <regex>

#include "plugin_harness.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using tickhost::HostConfig;
using tickhost::LoadError;
using tickhost::PluginManager;
using tickhost::Tickers;
using tickhost::test::eventually;
using tickhost::test::read_file;
using tickhost::test::TempDir;

using tickhost::test::fixture;
using tickhost::test::Harness;
using tickhost::test::load_should_fail;
using tickhost::test::mapped;

TEST(Plugins, HeartbeatGoesOnlineThenOfflineOnUnload) {
    Harness h;
    const fs::path status = h.tmp / "health";
    h.plugin("heartbeat").interval = 20ms;
    h.plugin("heartbeat").config.set("path", status.string());
    h.add(HEARTBEAT_SO);
    h.start();
    EXPECT_EQ(h.manager->load_directory(), 1u);
    ASSERT_TRUE(eventually([&] { return read_file(status).rfind("online 3 ", 0) == 0; }));
    auto info = h.manager->plugin("heartbeat");
    ASSERT_TRUE(info);
    EXPECT_EQ(info->version, "1.0.0");
    ASSERT_EQ(info->tasks.size(), 1u);
    EXPECT_EQ(info->tasks[0].name, "beat");
    EXPECT_EQ(info->tasks[0].interval, 20ms);
    EXPECT_EQ(info->tasks[0].timeout, 5s) << "the host's default_timeout";
    EXPECT_TRUE(h.manager->unload_all(10s));
    const std::string last = read_file(status);
    std::smatch m;
    ASSERT_TRUE(std::regex_match(last, m, std::regex("offline (\\d+) (\\d{13})\n"))) << last;
    EXPECT_GE(std::stoi(m[1]), 3);
    EXPECT_TRUE(h.logged("heartbeat", "offline after"));
}

TEST(Plugins, HelloLogsThroughTheHostLoggerWithPluginAndTask) {
    Harness h;
    h.plugin("hello").interval = 10ms;
    h.plugin("hello").config.set("who", std::string("tests"));
    ASSERT_FALSE(h.load(h.add(HELLO_SO)));
    ASSERT_TRUE(eventually([&] { return h.logged("[plugin.hello] [greet] hello, tests #2"); })) << h.log_text();
    h.manager->unload_all(10s);
    EXPECT_TRUE(h.logged("[plugin.hello] [greet] goodbye, tests"));
}

TEST(Plugins, PlainCPluginDeclaresTasksFromConfig) {
    Harness h;
    const fs::path out = h.tmp / "count";
    h.plugin("counter_c").interval = 10ms;
    h.plugin("counter_c").config.set("tasks", int64_t(3));
    h.plugin("counter_c").config.set("path", out.string());
    h.plugin("counter_c").tasks["count1"].interval = 1h;  // per-task override
    ASSERT_FALSE(h.load(h.add(COUNTER_C_SO)));
    auto info = h.manager->plugin("counter_c");
    ASSERT_TRUE(info);
    ASSERT_EQ(info->tasks.size(), 3u);
    EXPECT_EQ(info->tasks[0].interval, 10ms);
    EXPECT_EQ(info->tasks[1].interval, 1h);
    ASSERT_TRUE(eventually([&] { return std::atoi(read_file(fs::path(out.string() + ".2")).c_str()) >= 3; }));
    EXPECT_FALSE(fs::exists(out.string() + ".1")) << "count1 runs hourly";
    h.manager->unload_all(10s);
    EXPECT_EQ(read_file(fs::path(out.string() + ".0")).rfind("stopped ", 0), 0u);
    EXPECT_EQ(read_file(fs::path(out.string() + ".1")), "stopped 0\n");
}

TEST(Plugins, HostServicesConfigContextsAndLiteralLogText) {
    Harness h;
    const fs::path out = h.tmp / "probe.out";
    auto& p = h.plugin("probe");
    p.interval = 20ms;
    p.config.set("out", out.string());
    p.config.set("name", std::string("alpha"));
    p.config.set("count", int64_t(7));
    p.config.set("flag", true);
    p.config.set("wait", std::string("250ms"));
    p.config.set("nested.depth", int64_t(3));
    p.config.set("extra_tasks", int64_t(2));
    ASSERT_FALSE(h.load(h.add(fixture("fx_probe"))));
    ASSERT_TRUE(eventually([&] { return read_file(out).find("stale set_error") != std::string::npos; }));
    ASSERT_TRUE(eventually([&] { return read_file(out).find("extra1 run") != std::string::npos; }));
    h.manager->unload_all(10s);
    const std::string text = read_file(out);
    EXPECT_NE(text.find("init name=alpha count=7 flag=1 wait_ns=250000000 nested=3 wrongtype=no"), std::string::npos) << text;
    EXPECT_NE(text.find("run due_ok=1 remaining_positive=1 cancelled=0 thread_status=0"), std::string::npos) << text;
    EXPECT_EQ(text.find("due_ok=0"), std::string::npos) << text;
    EXPECT_NE(text.find("stale set_error=" + std::to_string(TH_E_STALE_CONTEXT) + " is_cancelled=1"), std::string::npos)
        << text;
    EXPECT_NE(text.find("stop due_ok=1 remaining_positive=1"), std::string::npos) << text;
    EXPECT_NE(text.find("extra0 stop"), std::string::npos) << text;
    // Shutdown comes after every stop call.
    EXPECT_EQ(text.substr(text.size() - 9), "shutdown\n") << text;
    EXPECT_TRUE(h.logged("[plugin.probe] [tick] probe {} %s %n literal")) << h.log_text();
}

TEST(Plugins, RunErrorsExceptionsAndUnknownStatusAreLoggedAndCounted) {
    Harness h;
    ASSERT_FALSE(h.load(h.add(fixture("fx_failing"))));
    auto info = h.manager->plugin("failing");
    ASSERT_TRUE(info);
    ASSERT_TRUE(eventually([&] {
        for (auto& t : info->tasks)
            if (h.tickers->stats(t.id)->failures < 2) return false;
        return true;
    }));
    EXPECT_TRUE(h.logged("'failing/errors'", "disk on fire")) << h.log_text();
    EXPECT_TRUE(h.logged("'failing/throws'", "kaboom from C++")) << h.log_text();
    EXPECT_TRUE(h.logged("'failing/unknown'", "unknown status 42")) << h.log_text();
    EXPECT_TRUE(h.manager->unload_all(10s));
}

TEST(Plugins, FilesThatAreNotPluginsGetNamedErrors) {
    Harness h;
    h.start();
    tickhost::test::write_file(h.dir / "text.so", "this is not an ELF file\n");
    load_should_fail(h, h.dir / "text.so", TH_E_NOT_A_LIBRARY, "not an ELF file");

    tickhost::test::write_file(h.dir / "empty.so", "");
    load_should_fail(h, h.dir / "empty.so", TH_E_NOT_A_LIBRARY, "empty");

    const std::string elf = read_file(HEARTBEAT_SO);
    for (size_t cut : {size_t(10), size_t(100), elf.size() / 3, elf.size() - 1}) {
        tickhost::test::write_file(h.dir / "truncated.so", elf.substr(0, cut));
        load_should_fail(h, h.dir / "truncated.so", TH_E_NOT_A_LIBRARY, "truncated ELF file");
    }
    std::string other_machine = elf;
    other_machine[18] = char(183), other_machine[19] = 0;  // e_machine = EM_AARCH64 (or x86-64 on arm)
    if (read_file(HEARTBEAT_SO)[18] == char(183)) other_machine[18] = char(62);
    tickhost::test::write_file(h.dir / "other-machine.so", other_machine);
    load_should_fail(h, h.dir / "other-machine.so", TH_E_NOT_A_LIBRARY, "ELF for another machine");
    // The loader's own text reaches the operator: a library with an unresolvable dependency.
    std::string bad_needed = elf;
    for (size_t pos = bad_needed.find("libstdc++.so.6"); pos != std::string::npos;
         pos = bad_needed.find("libstdc++.so.6", pos + 1))
        bad_needed.replace(pos, 14, "libnothere.so.");
    tickhost::test::write_file(h.dir / "bad-needed.so", bad_needed);
    load_should_fail(h, h.dir / "bad-needed.so", TH_E_NOT_A_LIBRARY, "libnothere.so.");

    load_should_fail(h, h.add(fixture("fx_no_entry")), TH_E_NO_ENTRY, "tickhost_plugin_entry");
    load_should_fail(h, h.add(fixture("fx_abi_major")), TH_E_ABI_MAJOR, "built for ABI 2.0");
    load_should_fail(h, h.add(fixture("fx_abi_minor")), TH_E_ABI_MINOR_TOO_NEW, "needs ABI 1.99");
    load_should_fail(h, h.add(fixture("fx_abi_small")), TH_E_BAD_DESCRIPTOR, "struct_size is 16");
    load_should_fail(h, h.add(fixture("fx_abi_null")), TH_E_ENTRY_NULL, "returned NULL");
    load_should_fail(h, h.add(fixture("fx_init_fails")), TH_E_INIT_FAILED, "missing api_key in config");
    load_should_fail(h, h.dir / "missing.so", TH_E_NOT_A_LIBRARY, "cannot open");
    fs::create_directory(h.dir / "dir.so");
    load_should_fail(h, h.dir / "dir.so", TH_E_NOT_A_LIBRARY, "not a regular file");

    // Nothing of a refused file stays behind: no mapping, no shadow copy.
    EXPECT_TRUE(fs::is_empty(h.manager->shadow_dir()));
}

TEST(Plugins, BadFilesDoNotDisturbGoodOnes) {
    Harness h;
    const fs::path status = h.tmp / "health";
    h.plugin("heartbeat").interval = 10ms;
    h.plugin("heartbeat").config.set("path", status.string());
    tickhost::test::write_file(h.dir / "aaa-garbage.so", "garbage");
    h.add(fixture("fx_abi_major"));
    h.add(fixture("fx_init_fails"));
    h.add(HEARTBEAT_SO);
    tickhost::test::write_file(h.dir / ".hidden.so", "x");
    tickhost::test::write_file(h.dir / "notes.txt", "x");
    tickhost::test::write_file(h.dir / "heartbeat.so.tmp", "x");
    h.start();
    EXPECT_EQ(h.manager->load_directory(), 1u);
    ASSERT_TRUE(eventually([&] { return read_file(status).rfind("online", 0) == 0; }));
    EXPECT_FALSE(h.logged(".hidden.so"));
    EXPECT_FALSE(h.logged("notes.txt"));
    EXPECT_FALSE(h.logged("heartbeat.so.tmp"));
}

TEST(Plugins, TwoFilesWithOnePluginNameLoadOnce) {
    Harness h;
    h.plugin("hello").interval = 1h;
    ASSERT_FALSE(h.load(h.add(HELLO_SO, "hello-a.so")));
    auto err = h.load(h.add(HELLO_SO, "hello-b.so"));
    ASSERT_TRUE(err);
    EXPECT_EQ(err->code, TH_E_DUPLICATE_NAME);
    EXPECT_NE(err->reason.find("hello-a.so"), std::string::npos) << err->message();
    EXPECT_EQ(h.manager->plugins().size(), 1u);
}

TEST(Plugins, DisabledPluginIsNotStarted) {
    Harness h;
    h.plugin("hello").enabled = false;
    EXPECT_FALSE(h.load(h.add(HELLO_SO)));
    EXPECT_TRUE(h.manager->plugins().empty());
    EXPECT_TRUE(h.logged("hello", "disabled"));
}

TEST(Plugins, LoadsAShadowCopyNeverTheFileAndCleansUp) {
    Harness h;
    h.plugin("heartbeat").interval = 10ms;
    h.plugin("heartbeat").config.set("path", (h.tmp / "health").string());
    const fs::path file = h.add(HEARTBEAT_SO);
    ASSERT_FALSE(h.load(file));
    auto info = h.manager->plugin("heartbeat");
    ASSERT_TRUE(info);
    EXPECT_NE(info->shadow, file);
    EXPECT_EQ(info->shadow.parent_path(), h.manager->shadow_dir());
    if (tickhost::test::isolated()) {
        // Isolated: the copy is mapped in the plugin's own process, never in the host.
        EXPECT_TRUE(tickhost::test::mapped_in_a_worker(info->shadow));
        EXPECT_FALSE(mapped(info->shadow));
        EXPECT_FALSE(tickhost::test::mapped_in_a_worker(file));
    } else {
        EXPECT_TRUE(mapped(info->shadow));
    }
    EXPECT_FALSE(mapped(file));
    EXPECT_EQ(fs::status(h.manager->shadow_dir()).permissions() & fs::perms::all, fs::perms::owner_all);
    // Overwriting the operator's file in place while the plugin runs must not crash the host.
    {
        std::ofstream f(file, std::ios::binary | std::ios::trunc);
        f << "overwritten";
    }
    const std::string before = read_file(h.tmp / "health");
    ASSERT_TRUE(eventually([&] { return read_file(h.tmp / "health") != before; }));
    EXPECT_TRUE(h.manager->unload(file, 10s));
    EXPECT_FALSE(mapped(info->shadow)) << "the image stayed mapped after unload";
    EXPECT_TRUE(tickhost::test::worker_pids().empty()) << "its process outlived the unload";
    EXPECT_FALSE(fs::exists(info->shadow)) << "the shadow copy was not deleted";
}

TEST(Plugins, ShadowCopiesNeverShareANameAcrossLoads) {
    Harness h;
    h.plugin("hello").interval = 1h;
    const fs::path file = h.add(HELLO_SO);
    std::set<fs::path> shadows;
    for (int i = 0; i < 5; ++i) {
        ASSERT_FALSE(h.load(file));
        shadows.insert(h.manager->plugin("hello")->shadow);
        ASSERT_TRUE(h.manager->unload(file, 10s));
    }
    EXPECT_EQ(shadows.size(), 5u);
}

TEST(Plugins, StaleShadowCopiesOfDeadProcessesAreRemoved) {
    TempDir tmp;
    const fs::path base = tmp / "cache";
    fs::create_directories(base / "999999999");  // no such process
    tickhost::test::write_file(base / "999999999" / "old.so", "x");
    fs::permissions(base, fs::perms::owner_all, fs::perm_options::replace);
    Harness h;
    h.config.shadow_dir = base;
    h.start();
    EXPECT_FALSE(fs::exists(base / "999999999"));
    EXPECT_TRUE(fs::exists(h.manager->shadow_dir()));
}

TEST(Plugins, TheHeadersOwnExamplesBuildLoadAndRun) {
    Harness h;
    h.plugin("minimal").interval = 10ms;
    h.plugin("greeter").interval = 10ms;
    h.plugin("greeter").config.set("who", std::string("readers"));
    ASSERT_FALSE(h.load(h.add(fixture("fx_header_example_c"))));
    ASSERT_FALSE(h.load(h.add(fixture("fx_header_example_cpp"))));
    ASSERT_TRUE(eventually([&] { return h.logged("[plugin.minimal] [tick] tick"); })) << h.log_text();
    ASSERT_TRUE(eventually([&] { return h.logged("[plugin.greeter] [greet] hello, readers #2"); })) << h.log_text();
    EXPECT_TRUE(h.manager->unload_all(10s));
    EXPECT_TRUE(h.logged("[plugin.minimal] [tick] stopping"));
    EXPECT_TRUE(h.logged("[plugin.greeter] [greet] goodbye, readers"));
}

// A Go runtime can neither be unloaded nor started twice in one process (this test owns that for its
// process: ctest runs each test on its own).
TEST(Plugins, GoRuntimePluginsAreNeverReplacedUnloadedOrLoadedTwice) {
    Harness h;
    const fs::path file = h.add(fixture("fx_gofake_v1"), "gofake.so");
    ASSERT_FALSE(h.load(file)) << h.log_text();
    const auto info = h.manager->plugin("gofake");
    ASSERT_TRUE(info);
    if (tickhost::test::isolated()) {
        // Isolated, each version has a process of its own, whose end takes its Go runtime along: it is
        // replaced, removed and loaded again like any plugin, and nothing of it stays mapped.
        fs::copy_file(fixture("fx_gofake_v2"), file, fs::copy_options::overwrite_existing);
        ASSERT_FALSE(h.manager->sync(file)) << h.log_text();
        EXPECT_EQ(h.manager->plugin("gofake")->version, "2.0.0");
        EXPECT_FALSE(tickhost::test::mapped_in_a_worker(info->shadow)) << "the old version's process is gone";
        fs::remove(file);
        EXPECT_FALSE(h.manager->sync(file));
        EXPECT_FALSE(h.manager->plugin("gofake"));
        EXPECT_TRUE(tickhost::test::worker_pids().empty());
        EXPECT_FALSE(h.logged("a Go runtime cannot be unloaded")) << h.log_text();
        h.add(fixture("fx_gofake_v1"), "gofake.so");
        ASSERT_FALSE(h.manager->sync(file)) << h.log_text();
        EXPECT_EQ(h.manager->plugin("gofake")->version, "1.0.0");
        return;
    }
    // Replacing it in place is refused with what to do; the running version stays.
    fs::copy_file(fixture("fx_gofake_v2"), file, fs::copy_options::overwrite_existing);
    auto err = h.manager->sync(file);
    ASSERT_TRUE(err);
    EXPECT_EQ(err->code, TH_E_NOT_ALLOWED);
    EXPECT_NE(err->message().find("Go runtime"), std::string::npos) << err->message();
    EXPECT_NE(err->message().find("restart the host"), std::string::npos) << err->message();
    EXPECT_EQ(h.manager->plugin("gofake")->sha256, info->sha256);
    // Removing it stops its tasks but keeps the image mapped.
    fs::remove(file);
    EXPECT_FALSE(h.manager->sync(file));
    EXPECT_FALSE(h.manager->plugin("gofake"));
    EXPECT_TRUE(mapped(info->shadow)) << "a Go runtime must never be unmapped";
    EXPECT_TRUE(h.logged("a Go runtime cannot be unloaded")) << h.log_text();
    // Bringing it back would start a second runtime: refused, saying that a restart is needed.
    h.add(fixture("fx_gofake_v1"), "gofake.so");
    err = h.manager->sync(file);
    ASSERT_TRUE(err);
    EXPECT_EQ(err->code, TH_E_NOT_ALLOWED);
    EXPECT_NE(err->message().find("a Go runtime from " + file.string() +
                                  " is already in this process (its plugin "
                                  "was removed, but a Go runtime cannot be unloaded); restart the host to load " +
                                  file.string()),
              std::string::npos)
        << err->message();
}

// ---------------------------------------------------------------- schedules from host.toml (jitter, align)

namespace {
using tickhost::Jitter;
using tickhost::ManualClock;

// The harness's Tickers and manager, on a manual clock whose wall clock reads 12:00:30 on 2026-01-01. Its
// monotonic time starts at the real one's: an isolated plugin's process reads a run's deadline on the real
// monotonic clock, so a deadline on the manual clock must not lie in the real past.
std::shared_ptr<ManualClock> start_on_manual_clock(tickhost::test::Harness& h) {
    auto clock = std::make_shared<ManualClock>(tickhost::TimePoint(std::chrono::steady_clock::now().time_since_epoch()),
                                               ManualClock::kDefaultWallStart + 12h + 30s);
    Tickers::Options o;
    o.workers = h.config.workers;
    o.default_timeout = h.config.default_timeout;
    o.clock = clock;
    h.tickers = std::make_unique<Tickers>(o);
    h.manager = std::make_unique<PluginManager>(*h.tickers, h.config);
    h.tickers->start();
    return clock;
}
}  // namespace

// README's example, through the host: web-01, heartbeat, beat, jitter "10s": 2.85 s; aligned on the minute.
TEST(PluginSchedules, JitterOffsetAndAlignmentFromHostTomlReachTheScheduler) {
    Harness h;
    h.config.host_name = "web-01";
    h.config.default_timeout = 10s;
    auto& hb = h.plugin("heartbeat");
    hb.interval = 1min;
    hb.jitter = Jitter{10s, 0};
    hb.align = true;
    hb.config.set("path", (h.tmp / "health").string());
    auto clock = start_on_manual_clock(h);
    ASSERT_FALSE(h.manager->load(h.add(HEARTBEAT_SO))) << h.log_text();
    const auto info = h.manager->plugin("heartbeat");
    ASSERT_TRUE(info);
    const auto& t = info->tasks.at(0);
    EXPECT_EQ(t.jitter, 10s);
    EXPECT_EQ(t.offset, 2850ms);
    EXPECT_TRUE(t.align);
    EXPECT_EQ(t.first_due, clock->now() + 30s + 2850ms) << "12:01:02.85";
    EXPECT_TRUE(h.logged("beat every 1m (timeout 10s, offset 2.85s, aligned)")) << h.log_text();
    clock->advance(30s + 2850ms - 1ns);
    ASSERT_TRUE(h.tickers->wait_idle());
    EXPECT_EQ(h.tickers->stats(t.id)->runs, 0u);
    clock->advance(1ns);
    ASSERT_TRUE(h.tickers->wait_idle());
    EXPECT_EQ(h.tickers->stats(t.id)->runs, 1u);
    clock->advance(1min);
    ASSERT_TRUE(h.tickers->wait_idle());
    EXPECT_EQ(h.tickers->stats(t.id)->runs, 2u) << "12:02:02.85\n" << h.log_text();
    EXPECT_EQ(h.tickers->stats(t.id)->failures, 0u);
    EXPECT_TRUE(h.manager->unload_all(10s));
}

TEST(PluginSchedules, HostJitterIsEveryTasksDefaultAndTheNearestWins) {
    Harness h;                             // host_name unset: the machine's name seeds the offsets
    h.config.jitter = Jitter{0s, 500000};  // 50 %
    auto& c = h.plugin("counter_c");
    c.interval = 1s;
    c.config.set("tasks", int64_t(3));
    c.tasks["count1"].jitter = Jitter{};  // off
    c.tasks["count2"].jitter = Jitter{100ms, 0};
    c.tasks["count2"].align = true;
    auto clock = start_on_manual_clock(h);
    ASSERT_FALSE(h.manager->load(h.add(COUNTER_C_SO))) << h.log_text();
    const auto info = h.manager->plugin("counter_c");
    ASSERT_TRUE(info);
    ASSERT_EQ(info->tasks.size(), 3u);
    const std::string host = tickhost::machine_name();
    EXPECT_EQ(info->tasks[0].jitter, 500ms);
    EXPECT_EQ(info->tasks[0].offset, tickhost::task_jitter_offset(host, "counter_c", "count0", 500ms));
    EXPECT_FALSE(info->tasks[0].align);
    EXPECT_EQ(info->tasks[0].first_due, clock->now() + 1s + info->tasks[0].offset);
    EXPECT_EQ(info->tasks[1].jitter, 0s);
    EXPECT_EQ(info->tasks[1].offset, 0s);
    EXPECT_EQ(info->tasks[2].offset, tickhost::task_jitter_offset(host, "counter_c", "count2", 100ms));
    EXPECT_TRUE(info->tasks[2].align);
    const auto o2 = info->tasks[2].offset;  // the first second + offset after 12:00:30.000
    EXPECT_EQ(info->tasks[2].first_due, clock->now() + (o2 > 0s ? o2 : 1s));
    EXPECT_TRUE(h.manager->unload_all(10s));
}

TEST(PluginSchedules, AJitterLongerThanThePluginsOwnIntervalIsCappedWithAWarning) {
    Harness h;
    auto& c = h.plugin("counter_c");  // its tasks' own interval: 1 s
    c.jitter = Jitter{1h, 0};
    c.config.set("tasks", int64_t(5));
    auto clock = start_on_manual_clock(h);
    ASSERT_FALSE(h.manager->load(h.add(COUNTER_C_SO))) << h.log_text();
    const auto info = h.manager->plugin("counter_c");
    ASSERT_TRUE(info);
    for (const auto& t : info->tasks) {
        EXPECT_EQ(t.jitter, 1s) << t.name;
        EXPECT_LT(t.offset, 1s) << t.name;
    }
    EXPECT_TRUE(
        h.logged("plugin 'counter_c': [plugins.counter_c] jitter is longer than the interval of task(s) "
                 "count0 (1s), count1 (1s), count2 (1s) and 2 more (the plugin's own default, not set in "
                 "host.toml): capped at the interval"))
        << h.log_text();
    EXPECT_TRUE(h.manager->unload_all(10s));
}

TEST(PluginSchedules, ChangingJitterOrAlignRestartsThePlugin) {
    Harness h;
    h.config.host_name = "web-01";
    auto& hb = h.plugin("heartbeat");
    hb.interval = 1min;
    hb.config.set("path", (h.tmp / "health").string());
    start_on_manual_clock(h);
    ASSERT_FALSE(h.manager->load(h.add(HEARTBEAT_SO))) << h.log_text();
    EXPECT_EQ(h.manager->plugin("heartbeat")->tasks.at(0).offset, 0s);
    const std::string restarted = "plugin 'heartbeat': settings changed in host.toml: restarting it";
    // The plugin's jitter.
    HostConfig next = h.config;
    next.plugins["heartbeat"].jitter = Jitter{10s, 0};
    h.manager->apply_config(next);
    EXPECT_EQ(h.count_logged(restarted), 1u) << h.log_text();
    EXPECT_EQ(h.manager->plugin("heartbeat")->tasks.at(0).offset, 2850ms);
    // A task's alignment.
    next.plugins["heartbeat"].tasks["beat"].align = true;
    h.manager->apply_config(next);
    EXPECT_EQ(h.count_logged(restarted), 2u);
    EXPECT_TRUE(h.manager->plugin("heartbeat")->tasks.at(0).align);
    // [host] defaults: a change restarts every plugin, as one of default_timeout does.
    next.jitter = Jitter{0s, 10000};
    h.manager->apply_config(next);
    EXPECT_EQ(h.count_logged(restarted), 3u);
    EXPECT_EQ(h.manager->plugin("heartbeat")->tasks.at(0).offset, 2850ms) << "its own jitter still wins";
    next.align = true;
    h.manager->apply_config(next);
    EXPECT_EQ(h.count_logged(restarted), 4u);
    // The same settings again: no restart.
    h.manager->apply_config(next);
    EXPECT_EQ(h.count_logged(restarted), 4u);
    EXPECT_TRUE(h.manager->unload_all(10s));
}
