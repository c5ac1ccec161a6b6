// The real Go plugin (tests/fixtures/go: `go build -buildmode=c-shared`) in the host's process: it loads,
// runs and restarts in place like any plugin, and, carrying a Go runtime, is never replaced, unloaded or
// loaded twice. A process holds one Go runtime for good, so each test owns its process's: ctest runs each
// test in a process of its own. (Run by hand, the binary runs the first test and skips the others, saying
// so; pick one with --gtest_filter.)
#include <tickhost/plugin_manager.hpp>

#include <gtest/gtest.h>

#include <regex>
#include <string>

#include <unistd.h>

#include "go_fixture.hpp"
#include "plugin_harness.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using tickhost::test::eventually;
using tickhost::test::Harness;
using tickhost::test::mapped;
using tickhost::test::read_file;

namespace {

bool go_runtime_started = false;  // by an earlier test of this process

// At the top of each test: skips without Go, or when an earlier test of this process started its Go runtime.
#define START_GO_TEST()                                                                                   \
    do {                                                                                                  \
        SKIP_WITHOUT_GO();                                                                                \
        if (go_runtime_started)                                                                           \
            GTEST_SKIP() << "an earlier test started this process's one Go runtime: run each Go test in " \
                            "a process of its own (ctest does; by hand, use --gtest_filter)";             \
        go_runtime_started = true;                                                                        \
    } while (0)

// "<event> 1.0.0 <pid of this process>", as the fixture (v1) writes it.
std::string line(const std::string& event) { return event + " 1.0.0 " + std::to_string(::getpid()); }

size_t count_lines(const fs::path& file, const std::string& text) {
    const std::string all = read_file(file);
    size_t n = 0;
    for (size_t pos = all.find(text + "\n"); pos != std::string::npos; pos = all.find(text + "\n", pos + 1))
        n += pos == 0 || all[pos - 1] == '\n';
    return n;
}

// A harness with the Go fixture's v1 in plugin_dir as gofixture.so, writing its events to `out`.
struct GoHarness : Harness {
    fs::path out = tmp / "events";
    fs::path file;
    GoHarness() {
        check_fds = false;  // a Go runtime in this process keeps its epoll and pipe descriptors for good
        plugin("gofixture").interval = 20ms;
        plugin("gofixture").config.set("out", out.string());
        file = add(FX_GO_V1, "gofixture.so");
    }
};

}  // namespace

TEST(GoPlugin, LoadsRunsAndIsKeptMappedWhenUnloaded) {
    START_GO_TEST();
    GoHarness h;
    ASSERT_FALSE(h.load(h.file)) << h.log_text();
    const auto info = h.manager->plugin("gofixture");
    ASSERT_TRUE(info);
    EXPECT_EQ(info->version, "1.0.0");
    ASSERT_EQ(info->tasks.size(), 1u);
    EXPECT_EQ(info->tasks[0].name, "write");
    EXPECT_EQ(info->tasks[0].interval, 20ms);
    EXPECT_TRUE(h.logged("loaded plugin 'gofixture' 1.0.0", "a Go c-shared plugin")) << h.log_text();
    // Its task runs on the host's workers, in this process; its config and log services work from Go.
    ASSERT_TRUE(eventually([&] { return count_lines(h.out, line("run")) >= 3; })) << read_file(h.out);
    EXPECT_EQ(read_file(h.out).rfind(line("init") + "\n" + line("run") + "\n", 0), 0u) << read_file(h.out);
    EXPECT_TRUE(h.logged("[plugin.gofixture] [write] " + line("run"))) << h.log_text();
    // A second Go runtime cannot start in this process, not even to inspect the same file: `tickhost check`
    // inspects each file in a child process for this reason.
    tickhost::LoadError e;
    EXPECT_FALSE(h.manager->inspect(h.file, &e));
    EXPECT_EQ(e.code, TH_E_NOT_ALLOWED) << e.message();
    EXPECT_NE(e.message().find("one already runs in this process"), std::string::npos) << e.message();
    // Unloading it makes its stop call and shutdown, and keeps the image mapped: a Go runtime is never unloaded.
    EXPECT_TRUE(h.manager->unload_all(10s));
    EXPECT_FALSE(h.manager->plugin("gofixture"));
    const std::string events = read_file(h.out);
    EXPECT_NE(events.find(line("stop") + "\n" + line("shutdown") + "\n"), std::string::npos) << events;
    EXPECT_EQ(events.substr(events.size() - line("shutdown").size() - 1), line("shutdown") + "\n") << events;
    EXPECT_TRUE(mapped(info->shadow)) << "a Go runtime must never be unmapped";
    EXPECT_TRUE(h.logged("kept mapped (a Go runtime cannot be unloaded)")) << h.log_text();
    // Nothing of it runs any more (the runtime's own threads stay, idle).
    const size_t runs = count_lines(h.out, line("run"));
    std::this_thread::sleep_for(100ms);
    EXPECT_EQ(count_lines(h.out, line("run")), runs);
}

// PluginManager::inspect (what `tickhost check` runs in its child process) sees the Go runtime. Inspecting
// starts the runtime, which stays: the process can load no Go plugin after that.
TEST(GoPlugin, InspectSaysItCarriesAGoRuntime) {
    START_GO_TEST();
    GoHarness h;
    h.start();
    tickhost::LoadError e;
    const auto info = h.manager->inspect(h.file, &e);
    ASSERT_TRUE(info) << e.message();
    EXPECT_TRUE(info->go_runtime);
    EXPECT_EQ(info->name, "gofixture");
    EXPECT_EQ(info->version, "1.0.0");
    EXPECT_EQ(info->description, "a Go c-shared plugin: appends its events to config.out");
    EXPECT_TRUE(info->has_init);
    EXPECT_TRUE(info->has_shutdown);
    ASSERT_EQ(info->tasks.size(), 1u);
    EXPECT_EQ(info->tasks[0].name, "write");
    EXPECT_EQ(info->tasks[0].default_interval, 1s);
    EXPECT_FALSE(fs::exists(h.out)) << "inspect does not initialise the plugin";
    auto err = h.load(h.file);
    ASSERT_TRUE(err);
    EXPECT_EQ(err->code, TH_E_NOT_ALLOWED);
    EXPECT_NE(err->message().find("a Go runtime from " + h.file.string() + " is already in this process"),
              std::string::npos)
        << err->message();
}

TEST(GoPlugin, ReplacingItIsRefusedAndTheRunningVersionKeepsRunning) {
    START_GO_TEST();
    GoHarness h;
    ASSERT_FALSE(h.load(h.file)) << h.log_text();
    const auto before = h.manager->plugin("gofixture");
    ASSERT_TRUE(before);
    ASSERT_TRUE(eventually([&] { return count_lines(h.out, line("run")) >= 1; })) << read_file(h.out);
    fs::copy_file(FX_GO_V2, h.file, fs::copy_options::overwrite_existing);
    auto err = h.manager->sync(h.file);
    ASSERT_TRUE(err);
    EXPECT_EQ(err->code, TH_E_NOT_ALLOWED);
    EXPECT_NE(err->message().find("plugin 'gofixture' 1.0.0 [sha256 " + before->sha256.substr(0, 12) +
                                  "] contains a Go runtime, which can neither be unloaded nor started twice in one "
                                  "process"),
              std::string::npos)
        << err->message();
    EXPECT_NE(err->message().find("restart the host to upgrade it; 'gofixture' 1.0.0"), std::string::npos)
        << err->message();
    EXPECT_NE(err->message().find("keeps running"), std::string::npos) << err->message();
    EXPECT_TRUE(h.logged(h.file.string(), "TH_E_NOT_ALLOWED")) << h.log_text();
    const auto after = h.manager->plugin("gofixture");
    ASSERT_TRUE(after);
    EXPECT_EQ(after->version, "1.0.0");
    EXPECT_EQ(after->sha256, before->sha256);
    EXPECT_EQ(after->shadow, before->shadow);
    // v1 keeps running, untouched (no stop call, no shutdown); v2 never ran.
    const size_t runs = count_lines(h.out, line("run"));
    ASSERT_TRUE(eventually([&] { return count_lines(h.out, line("run")) >= runs + 3; })) << read_file(h.out);
    const std::string events = read_file(h.out);
    EXPECT_EQ(events.find("2.0.0"), std::string::npos) << events;
    EXPECT_EQ(events.find("stop"), std::string::npos) << events;
    EXPECT_EQ(count_lines(h.out, line("init")), 1u) << events;
    EXPECT_TRUE(h.manager->unload_all(10s));
}

// A settings change restarts it in place: stop call, shutdown, init with the new config, on the library
// already loaded (no second runtime), in this process.
TEST(GoPlugin, SettingsChangeRestartsItInPlace) {
    START_GO_TEST();
    GoHarness h;
    ASSERT_FALSE(h.load(h.file)) << h.log_text();
    const auto before = h.manager->plugin("gofixture");
    ASSERT_TRUE(before);
    ASSERT_TRUE(eventually([&] { return count_lines(h.out, line("run")) >= 2; })) << read_file(h.out);
    const fs::path out2 = h.tmp / "events2";
    h.plugin("gofixture").interval = 30ms;
    h.plugin("gofixture").config.set("out", out2.string());
    h.manager->apply_config(h.config);
    const auto after = h.manager->plugin("gofixture");
    ASSERT_TRUE(after) << h.log_text();
    EXPECT_EQ(after->tasks[0].interval, 30ms);
    EXPECT_EQ(after->shadow, before->shadow) << "the same loaded library, not a reload";
    EXPECT_EQ(after->sha256, before->sha256);
    EXPECT_TRUE(h.logged("plugin 'gofixture': settings changed in host.toml: restarting it in place")) << h.log_text();
    EXPECT_TRUE(h.logged("restarted plugin 'gofixture' 1.0.0")) << h.log_text();
    EXPECT_FALSE(h.logged("one already runs in this process")) << h.log_text();
    // The first file ends with the stop call and shutdown; init read the new `out` and runs go there.
    const std::string first = read_file(h.out);
    EXPECT_EQ(first.substr(first.size() - (line("stop") + line("shutdown")).size() - 2),
              line("stop") + "\n" + line("shutdown") + "\n")
        << first;
    ASSERT_TRUE(eventually([&] { return count_lines(out2, line("run")) >= 2; })) << read_file(out2) << h.log_text();
    EXPECT_EQ(read_file(out2).rfind(line("init") + "\n" + line("run") + "\n", 0), 0u) << read_file(out2);
    EXPECT_EQ(read_file(h.out), first) << "nothing more in the old file";
    EXPECT_TRUE(h.manager->unload_all(10s));
    EXPECT_NE(read_file(out2).find(line("stop") + "\n" + line("shutdown") + "\n"), std::string::npos)
        << read_file(out2);
}

// Removing the file stops it and keeps the image mapped; bringing it back asks for a restart.
TEST(GoPlugin, RemovingItStopsItAndPuttingItBackAsksForARestart) {
    START_GO_TEST();
    GoHarness h;
    ASSERT_FALSE(h.load(h.file)) << h.log_text();
    const auto info = h.manager->plugin("gofixture");
    ASSERT_TRUE(info);
    ASSERT_TRUE(eventually([&] { return count_lines(h.out, line("run")) >= 1; })) << read_file(h.out);
    fs::remove(h.file);
    EXPECT_FALSE(h.manager->sync(h.file));
    EXPECT_FALSE(h.manager->plugin("gofixture"));
    EXPECT_NE(read_file(h.out).find(line("stop") + "\n" + line("shutdown") + "\n"), std::string::npos)
        << read_file(h.out);
    EXPECT_TRUE(mapped(info->shadow)) << "a Go runtime must never be unmapped";
    EXPECT_TRUE(h.logged("kept mapped (a Go runtime cannot be unloaded)")) << h.log_text();
    h.add(FX_GO_V2, "gofixture.so");
    auto err = h.manager->sync(h.file);
    ASSERT_TRUE(err);
    EXPECT_EQ(err->code, TH_E_NOT_ALLOWED);
    EXPECT_NE(err->message().find("a Go runtime from " + h.file.string() +
                                  " is already in this process (its plugin was removed, but a Go runtime cannot be "
                                  "unloaded); restart the host to load " +
                                  h.file.string()),
              std::string::npos)
        << err->message();
    EXPECT_EQ(read_file(h.out).find("2.0.0"), std::string::npos) << read_file(h.out);
}

// Isolated, the same Go plugin is an ordinary one: each version runs in a new tickhost-worker process with a
// Go runtime of its own, so it is replaced, removed and loaded again while this process never starts one.
TEST(GoPlugin, IsolatedItIsReplacedRemovedAndLoadedAgainFreely) {
    SKIP_WITHOUT_GO();  // starts no Go runtime in this process
    GoHarness h;
    h.check_fds = true;
    h.plugin("gofixture").isolation = tickhost::Isolation::process;
    const std::regex v1("run 1\\.0\\.0 (\\d+)\n"), v2("run 2\\.0\\.0 (\\d+)\n");
    auto pid_of = [&](const std::regex& re) -> std::string {
        std::smatch m;
        const std::string all = read_file(h.out);
        return std::regex_search(all, m, re) ? m[1].str() : "";
    };
    ASSERT_FALSE(h.load(h.file)) << h.log_text();
    ASSERT_TRUE(eventually([&] { return !pid_of(v1).empty(); })) << read_file(h.out);
    const std::string first = pid_of(v1);
    EXPECT_NE(first, std::to_string(::getpid())) << "it runs in another process";
    const auto info = h.manager->plugin("gofixture");
    ASSERT_TRUE(info);
    EXPECT_FALSE(mapped(info->shadow)) << "its library is not mapped in the host";
    EXPECT_EQ(info->isolation, tickhost::Isolation::process);
    EXPECT_EQ(std::to_string(info->pid), first) << "PluginInfo names its process";

    // Replaced: the new version in a new process; the old one got its stop call and shutdown in its own.
    h.add(FX_GO_V2, "gofixture.so");
    EXPECT_FALSE(h.manager->sync(h.file)) << h.log_text();
    ASSERT_TRUE(eventually([&] { return !pid_of(v2).empty(); })) << read_file(h.out);
    const std::string second = pid_of(v2);
    EXPECT_NE(second, first);
    EXPECT_NE(read_file(h.out).find("stop 1.0.0 " + first + "\nshutdown 1.0.0 " + first + "\n"), std::string::npos)
        << read_file(h.out);
    EXPECT_EQ(h.manager->plugin("gofixture")->version, "2.0.0");

    // Removed: stopped in its process; put back: loaded again, in a third process.
    fs::remove(h.file);
    EXPECT_FALSE(h.manager->sync(h.file));
    EXPECT_FALSE(h.manager->plugin("gofixture"));
    EXPECT_NE(read_file(h.out).find("stop 2.0.0 " + second + "\nshutdown 2.0.0 " + second + "\n"), std::string::npos)
        << read_file(h.out);
    fs::remove(h.out);
    h.add(FX_GO_V1, "gofixture.so");
    EXPECT_FALSE(h.manager->sync(h.file)) << h.log_text();
    ASSERT_TRUE(eventually([&] { return !pid_of(v1).empty(); })) << read_file(h.out);
    EXPECT_NE(pid_of(v1), first);
    EXPECT_NE(pid_of(v1), second);
    EXPECT_FALSE(h.logged("kept mapped")) << h.log_text();
}
