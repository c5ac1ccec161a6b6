// The authors' tools of the real `tickhost` binary: check, run-once, new-plugin (their error paths; the
// happy paths against an installed tickhost are in tests/install).
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include <sys/wait.h>

#include <tickhost/plugin.h>

#include "test_util.hpp"

namespace fs = std::filesystem;
using tickhost::test::read_file;
using tickhost::test::TempDir;
using tickhost::test::write_file;

namespace {

struct Result {
    int status = -1;
    std::string out;  // stdout and stderr
};

Result run(const std::string& args) {
    Result r;
    std::FILE* p = ::popen((std::string(TICKHOST_EXE) + " " + args + " 2>&1").c_str(), "r");
    if (!p) return r;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
    const int st = ::pclose(p);
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return r;
}

std::string fixture(const std::string& name) { return std::string(FIXTURE_DIR) + "/" + name + ".so"; }

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST(Tools, HelpListsTheSubcommands) {
    const Result r = run("--help");
    EXPECT_EQ(r.status, 0);
    for (const char* c : {"tickhost check", "tickhost run-once", "tickhost new-plugin"})
        EXPECT_TRUE(has(r.out, c)) << r.out;
    for (const char* c : {"check", "run-once", "new-plugin"}) {
        const Result h = run(std::string(c) + " --help");
        EXPECT_EQ(h.status, 0) << c;
        EXPECT_TRUE(has(h.out, std::string("usage: tickhost ") + c)) << h.out;
    }
}

TEST(Tools, BadCommandLinesExit2) {
    EXPECT_EQ(run("check").status, 2);
    EXPECT_EQ(run("check --bogus x.so").status, 2);
    EXPECT_EQ(run("run-once").status, 2);
    EXPECT_EQ(run(std::string("run-once ") + HELLO_SO + " --timeout forever").status, 2);
    EXPECT_EQ(run(std::string("run-once ") + HELLO_SO + " --set novalue").status, 2);
    EXPECT_EQ(run("new-plugin").status, 2);
    EXPECT_EQ(run("new-plugin 'no spaces'").status, 2);
    EXPECT_EQ(run("new-plugin x --lang rust").status, 2);
}

TEST(Tools, CheckPrintsTheDescriptor) {
    const Result r = run(std::string("check ") + HELLO_SO + " " + COUNTER_C_SO);
    EXPECT_EQ(r.status, 0) << r.out;
    EXPECT_TRUE(has(r.out, "name         hello")) << r.out;
    EXPECT_TRUE(has(r.out, "version      1.0.0")) << r.out;
    EXPECT_TRUE(has(r.out, "description  Logs a greeting with a run counter")) << r.out;
    EXPECT_TRUE(has(r.out, "ABI          1.0 (this host: 1.0)")) << r.out;
    EXPECT_TRUE(has(r.out, "greet every 2s, timeout 10s (host default)")) << r.out;
    EXPECT_TRUE(has(r.out, "none static: init declares them")) << r.out;  // counter_c
}

TEST(Tools, CheckNamesEachRefusalAndWhatToDo) {
    TempDir tmp;
    write_file(tmp / "text.so", "not a library\n");
    const std::pair<std::string, std::string> cases[] = {
        {fixture("fx_no_entry"), "TH_E_NO_ENTRY"},
        {fixture("fx_abi_major"), "TH_E_ABI_MAJOR"},
        {fixture("fx_abi_minor"), "TH_E_ABI_MINOR_TOO_NEW"},
        {fixture("fx_abi_small"), "TH_E_BAD_DESCRIPTOR"},
        {fixture("fx_abi_null"), "TH_E_ENTRY_NULL"},
        {(tmp / "text.so").string(), "TH_E_NOT_A_LIBRARY"},
        {(tmp / "missing.so").string(), "TH_E_NOT_A_LIBRARY"},
    };
    for (auto& [file, code] : cases) {
        const Result r = run("check " + file);
        EXPECT_EQ(r.status, 1) << file << "\n" << r.out;
        EXPECT_TRUE(has(r.out, "refused: " + code)) << file << "\n" << r.out;
        EXPECT_TRUE(has(r.out, "what to do: ")) << file << "\n" << r.out;
    }
    // One bad file among good ones: every file is reported, the status says some failed.
    const Result r = run(std::string("check ") + HELLO_SO + " " + fixture("fx_no_entry"));
    EXPECT_EQ(r.status, 1);
    EXPECT_TRUE(has(r.out, "name         hello")) << r.out;
}

TEST(Tools, CheckJsonAndNoShadowCopiesLeft) {
    TempDir tmp;
    write_file(tmp / "host.toml", "[host]\nshadow_dir = \"shadow\"\n");
    const Result r =
        run("check --json --config " + (tmp / "host.toml").string() + " " + HELLO_SO + " " + fixture("fx_abi_major"));
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_EQ(r.out.rfind("{\"ok\":false,\"host_abi\":\"1.0\",\"plugins\":[", 0), 0u) << r.out;
    EXPECT_TRUE(has(r.out, "\"name\":\"hello\",\"version\":\"1.0.0\"")) << r.out;
    EXPECT_TRUE(has(r.out, "\"tasks\":[{\"name\":\"greet\",\"interval_ns\":2000000000,\"timeout_ns\":0}]")) << r.out;
    EXPECT_TRUE(has(r.out, "\"ok\":false,\"error\":{\"code\":-103,\"name\":\"TH_E_ABI_MAJOR\"")) << r.out;
    ASSERT_TRUE(fs::is_directory(tmp / "shadow"));
    EXPECT_TRUE(fs::is_empty(tmp / "shadow")) << "shadow copies left behind";
}

TEST(Tools, RunOnceReportsAFailingRun) {
    Result r = run("run-once " + fixture("fx_failing") + " --task errors");
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_TRUE(has(r.out, "run    FAILED")) << r.out;
    EXPECT_TRUE(has(r.out, "disk on fire")) << r.out;
    EXPECT_TRUE(has(r.out, "stop   ok")) << r.out;
    r = run("run-once " + fixture("fx_failing") + " --task throws");
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_TRUE(has(r.out, "kaboom from C++")) << r.out;
}

TEST(Tools, RunOnceUnknownTaskListsTheTasks) {
    const Result r = run("run-once " + fixture("fx_failing") + " --task nope");
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_TRUE(has(r.out, "TH_E_NOT_FOUND")) << r.out;
    EXPECT_TRUE(has(r.out, "(it has: errors, throws, unknown)")) << r.out;
}

TEST(Tools, RunOnceTakesConfigFromHostTomlAndSet) {
    TempDir tmp;
    const fs::path out = tmp / "probe.out";
    write_file(tmp / "host.toml", "[plugins.probe.config]\nout = \"" + out.string() +
                                      "\"\ncount = 3\nname = \"from-toml\"\n[host]\nshadow_dir = \"shadow\"\n");
    const Result r = run("run-once " + fixture("fx_probe") + " --config " + (tmp / "host.toml").string() +
                         " --set name=from-set --set flag=true");
    EXPECT_EQ(r.status, 0) << r.out;
    EXPECT_TRUE(has(r.out, "result ok")) << r.out;
    const std::string seen = read_file(out);
    EXPECT_TRUE(has(seen, "init name=from-set count=3 flag=1")) << seen;
    EXPECT_TRUE(fs::is_empty(tmp / "shadow")) << "shadow copies left behind";
}

TEST(Tools, RunOnceTimeoutCancelsTheRun) {
    // The guide's chunked.cpp gives up when its cancellation flag is set and returns TH_CANCELLED.
    const Result r = run(std::string("run-once ") + CHUNKED_SO + " --timeout 20ms");
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_TRUE(has(r.out, "deadline reached")) << r.out;
    EXPECT_TRUE(has(r.out, "run    FAILED")) << r.out;
    EXPECT_TRUE(has(r.out, "cancelled")) << r.out;
}

TEST(Tools, NewPluginWritesAProjectAndRefusesToOverwrite) {
    TempDir tmp;
    Result r = run("new-plugin my-probe --dir " + (tmp / "p").string());
    ASSERT_EQ(r.status, 0) << r.out;
    const std::string cmake = read_file(tmp / "p" / "CMakeLists.txt");
    EXPECT_TRUE(has(cmake, "find_package(tickhost 1.0 CONFIG REQUIRED)")) << cmake;
    EXPECT_TRUE(has(cmake, "tickhost_add_plugin(my-probe SOURCES my-probe.cpp)")) << cmake;
    EXPECT_TRUE(has(read_file(tmp / "p" / "my-probe.cpp"), "class MyProbe : public tickhost::Plugin"));
    EXPECT_TRUE(has(read_file(tmp / "p" / "host.toml"), "[plugins.my-probe]"));
    EXPECT_TRUE(fs::exists(tmp / "p" / "README.md"));
    r = run("new-plugin my-probe --dir " + (tmp / "p").string());
    EXPECT_EQ(r.status, 1) << r.out;
    r = run("new-plugin cprobe --lang c --dir " + (tmp / "c").string());
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_TRUE(has(read_file(tmp / "c" / "cprobe.c"), "tickhost_plugin_entry"));
}

// The layout stated at the top of plugin.h for other languages' bindings is the compiler's.
#if UINTPTR_MAX == 0xffffffffffffffffu
#include <cstddef>
static_assert(sizeof(th_ctx) == 8 && alignof(th_ctx) == 8);
static_assert(sizeof(th_host_api) == 96 && offsetof(th_host_api, log) == 8 && offsetof(th_host_api, add_task) == 80 &&
              offsetof(th_host_api, due_ns) == 88);
static_assert(sizeof(th_host_info) == 24 && offsetof(th_host_info, api) == 8 &&
              offsetof(th_host_info, host_version) == 16);
static_assert(sizeof(th_task_def) == 48 && offsetof(th_task_def, name) == 8 &&
              offsetof(th_task_def, default_interval_ns) == 16 && offsetof(th_task_def, run) == 32 &&
              offsetof(th_task_def, state) == 40);
static_assert(sizeof(th_plugin_def) == 64 && offsetof(th_plugin_def, abi_major) == 4 &&
              offsetof(th_plugin_def, abi_minor) == 6 && offsetof(th_plugin_def, name) == 8 &&
              offsetof(th_plugin_def, tasks) == 32 && offsetof(th_plugin_def, task_count) == 40 &&
              offsetof(th_plugin_def, init) == 48 && offsetof(th_plugin_def, shutdown) == 56);
#endif
