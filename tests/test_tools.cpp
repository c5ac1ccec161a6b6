// The authors' tools of the real `tickhost` binary: check, run-once, new-plugin (their error paths; the
// happy paths against an installed tickhost are in tests/install).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstring>
#include <regex>
#include <string>
#include <vector>

#include <sys/wait.h>

#include <tickhost/plugin.h>

#include "go_fixture.hpp"
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

// In isolated mode (test_util.hpp), `check` and `run-once` load plugins as a host with [host] isolation =
// "process" does: a command line without a host.toml of its own gets one that says only that (the tests that
// write a host.toml put the line in it themselves).
std::string with_mode(const std::string& args) {
    if (!tickhost::test::isolated() || args.find("--config") != std::string::npos) return args;
    for (const char* sub : {"check ", "run-once "}) {
        if (args.rfind(sub, 0) != 0) continue;
        static TempDir dir;
        static const fs::path toml = [] {
            write_file(dir / "host.toml", "[host]\n" + tickhost::test::isolation_toml());
            return dir / "host.toml";
        }();
        return sub + std::string("--config ") + toml.string() + " " + args.substr(std::strlen(sub));
    }
    return args;
}

// stdout and stderr together; with `with_stderr` false, stdout only (stderr goes to the test's own), for
// output that must be well-formed on its own.
Result run(const std::string& args_in, bool with_stderr = true) {
    Result r;
    const std::string args = with_mode(args_in);
    std::FILE* p = ::popen((std::string(TICKHOST_EXE) + " " + args + (with_stderr ? " 2>&1" : "")).c_str(), "r");
    if (!p) return r;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
    const int st = ::pclose(p);
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return r;
}

Result run_stdout(const std::string& args) { return run(args, false); }

size_t count(const std::string& text, const std::string& part) {
    size_t n = 0;
    for (size_t pos = text.find(part); pos != std::string::npos; pos = text.find(part, pos + 1)) ++n;
    return n;
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

// What a usage error says: the subcommand, the problem, a near miss's likely meaning; then the usage.
TEST(Tools, UsageErrorsNameTheProblem) {
    Result r = run("check --jsn x.so");
    EXPECT_EQ(r.status, 2);
    EXPECT_TRUE(has(r.out, "tickhost check: unknown option '--jsn'; did you mean '--json'?")) << r.out;
    EXPECT_TRUE(has(r.out, "usage: tickhost check")) << r.out;
    r = run(std::string("run-once ") + HELLO_SO + " --task");
    EXPECT_EQ(r.status, 2);
    EXPECT_TRUE(has(r.out, "tickhost run-once: --task needs NAME")) << r.out;
    r = run(std::string("run-once ") + HELLO_SO + " " + HELLO_SO);
    EXPECT_EQ(r.status, 2);
    EXPECT_TRUE(has(r.out, "one plugin file at a time")) << r.out;
    r = run(std::string("run-once ") + HELLO_SO + " --log-level loud");
    EXPECT_EQ(r.status, 2);
    EXPECT_TRUE(has(r.out, "--log-level: 'loud' is not a level")) << r.out;
    r = run(std::string("run-once ") + HELLO_SO + " --set big=9000h");
    EXPECT_EQ(r.status, 2);
    EXPECT_TRUE(has(r.out, "--set big: '9000h' is longer than the longest duration")) << r.out;
    // The host's options before a subcommand are not the subcommand's: refused, not silently dropped.
    r = run(std::string("--config elsewhere.toml check ") + HELLO_SO);
    EXPECT_EQ(r.status, 2);
    EXPECT_TRUE(has(r.out, "the options before 'check' are the host's")) << r.out;
    r = run("help chek");
    EXPECT_EQ(r.status, 2);
    EXPECT_TRUE(has(r.out, "help: no subcommand 'chek'; did you mean 'check'?")) << r.out;
}

// The help of each subcommand lists the options it takes, with their value names.
TEST(Tools, HelpListsEachOption) {
    const std::pair<const char*, std::vector<const char*>> cases[] = {
        {"check", {"--json", "-c, --config PATH", "-h, --help"}},
        {"run-once",
         {"-t, --task NAME", "-c, --config PATH", "-s, --set KEY=VALUE", "--timeout DURATION",
          "-l, --log-level LEVEL"}},
        {"new-plugin", {"--lang cpp|c", "--dir DIR"}},
    };
    for (const auto& [sub, options] : cases) {
        const Result r = run(std::string("help ") + sub);
        EXPECT_EQ(r.status, 0) << sub;
        for (const char* o : options)
            EXPECT_TRUE(has(r.out, std::string("\n  ") + (o[1] == '-' ? "    " : "") + o)) << o << "\n" << r.out;
    }
}

// Every spelling of an option: short, long, --name=value, repeated (the last wins), and "--" before a file.
TEST(Tools, RunOnceTakesEverySpellingOfItsOptions) {
    TempDir tmp;
    const fs::path out = tmp / "probe.out";
    const Result r = run("run-once -s out=" + out.string() + " --set=name=eq -s count=7 -t nope --task=tick " +
                         "-l warn --log-level=info --timeout=5s -- " + fixture("fx_probe"));
    EXPECT_EQ(r.status, 0) << r.out;
    EXPECT_TRUE(has(r.out, "result ok")) << r.out;
    EXPECT_TRUE(has(read_file(out), "init name=eq count=7")) << read_file(out);
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
    write_file(tmp / "host.toml", "[host]\n" + tickhost::test::isolation_toml() + "shadow_dir = \"shadow\"\n");
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

// A plugin's version and description are bytes it chose, not necessarily UTF-8: `check --json` still prints
// one well-formed JSON document (nlohmann's parser refuses ill-formed UTF-8), invalid sequences become U+FFFD,
// control characters are escaped, valid UTF-8 and the keys stay as they are.
TEST(Tools, CheckJsonIsWellFormedWhateverThePluginDeclares) {
    const Result r = run_stdout("check --json " + fixture("fx_bad_utf8") + " " + fixture("fx_raw") + " " + HELLO_SO);
    EXPECT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(count(r.out, "\n"), 1u) << r.out;  // one line: tools read it with a line reader
    nlohmann::json doc;
    ASSERT_NO_THROW(doc = nlohmann::json::parse(r.out)) << r.out;
    ASSERT_TRUE(doc.is_object()) << r.out;
    EXPECT_EQ(doc["ok"], true);
    ASSERT_EQ(doc["plugins"].size(), 3u) << r.out;
    const std::string replacement = "\xef\xbf\xbd";  // U+FFFD
    const auto& bad = doc["plugins"][0];
    EXPECT_EQ(bad["name"], "bad_utf8");
    const std::string version = bad["version"], description = bad["description"];
    EXPECT_EQ(version, "1.0" + replacement);
    EXPECT_EQ(description.rfind(replacement, 0), 0u) << description;
    EXPECT_TRUE(has(description, " bad ")) << description;
    EXPECT_TRUE(has(description, "\x01 \"quoted\" ")) << description;
    EXPECT_EQ(description.find('\xff'), std::string::npos) << description;
    EXPECT_EQ(description.find('\xc0'), std::string::npos) << description;
    EXPECT_EQ(bad["tasks"][0]["name"], "tick");
    // Valid UTF-8 with control characters in it comes back byte for byte.
    const auto& raw = doc["plugins"][1];
    EXPECT_EQ(raw["version"], "1.0.0\n[host] forged");
    EXPECT_EQ(raw["description"], "raw C ABI\x1b[2J fixture");
    EXPECT_TRUE(has(r.out, "\"version\":\"1.0.0\\n[host] forged\"")) << r.out;
    EXPECT_TRUE(has(r.out, "C ABI\\u001b[2J")) << r.out;
    // The shape of before: the same keys, in the same order, for every plugin.
    const auto ordered = nlohmann::ordered_json::parse(r.out);
    auto keys = [](const nlohmann::ordered_json& j) {
        std::vector<std::string> k;
        for (auto it = j.begin(); it != j.end(); ++it) k.push_back(it.key());
        return k;
    };
    EXPECT_EQ(keys(ordered), (std::vector<std::string>{"ok", "host_abi", "plugins"}));
    for (const auto& p : ordered["plugins"]) {
        EXPECT_EQ(keys(p),
                  (std::vector<std::string>{"file", "ok", "name", "version", "description", "abi", "sha256", "has_init",
                                            "has_shutdown", "go_runtime", "ignored_name", "tasks", "isolation"}))
            << p.dump();
        EXPECT_EQ(keys(p["tasks"][0]), (std::vector<std::string>{"name", "interval_ns", "timeout_ns"}));
    }
}

// The same with the real Go plugin (tests/fixtures/go), both builds in one command; run-once initialises it,
// runs its task and makes its stop call in the tool's own process.
TEST(Tools, CheckAndRunOnceWorkOnARealGoPlugin) {
    SKIP_WITHOUT_GO();
    Result r = run(std::string("check ") + FX_GO_V1 + " " + FX_GO_V2);
    EXPECT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(count(r.out, ": ok\n"), 2u) << r.out;
    EXPECT_EQ(count(r.out, "name         gofixture\n"), 2u) << r.out;
    EXPECT_TRUE(has(r.out, "version      1.0.0\n")) << r.out;
    EXPECT_TRUE(has(r.out, "version      2.0.0\n")) << r.out;
    EXPECT_TRUE(has(r.out, "tasks        write every 1s")) << r.out;
    EXPECT_EQ(count(r.out, "note: carries a Go runtime: with isolation = \"none\" it can never be unloaded or replaced in a running host"), 2u)
        << r.out;
    r = run_stdout(std::string("check --json ") + FX_GO_V1);
    EXPECT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(nlohmann::json::parse(r.out)["plugins"][0]["go_runtime"], true) << r.out;

    TempDir tmp;
    const fs::path out = tmp / "events";
    r = run(std::string("run-once ") + FX_GO_V1 + " --set out=" + out.string());
    EXPECT_EQ(r.status, 0) << r.out;
    EXPECT_TRUE(has(r.out, "[plugin.gofixture] [write] run 1.0.0 ")) << r.out;
    EXPECT_TRUE(has(r.out, "result ok")) << r.out;
    const std::string events = read_file(out);
    EXPECT_TRUE(std::regex_match(events, std::regex("init 1\\.0\\.0 (\\d+)\nrun 1\\.0\\.0 \\1\nstop 1\\.0\\.0 \\1\n"
                                                    "shutdown 1\\.0\\.0 \\1\n")))
        << events;
}

// Each file is checked in a process of its own: two Go plugins (which could never both load in one process)
// are each checked on their own, and each is said to carry a Go runtime and what that means.
TEST(Tools, CheckChecksEachFileOnItsOwnAndNamesGoRuntimes) {
    const std::string go_note =
        "note: carries a Go runtime: with isolation = \"none\" it can never be unloaded or replaced in a running host "
        "(upgrading it needs a restart); with isolation = \"process\" it is replaced and removed freely";
    Result r = run("check " + fixture("fx_gofake_v1") + " " + fixture("fx_gofake_v2") + " " + HELLO_SO);
    EXPECT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(count(r.out, ": ok\n"), 3u) << r.out;
    EXPECT_TRUE(has(r.out, "version      1.0.0")) << r.out;
    EXPECT_TRUE(has(r.out, "version      2.0.0")) << r.out;
    EXPECT_EQ(count(r.out, go_note), 2u) << "hello has no Go runtime: " << r.out;
    // --json: one well-formed document on stdout, whatever the children log on stderr.
    r = run_stdout("check --json " + fixture("fx_gofake_v1") + " " + fixture("fx_gofake_v2") + " " + HELLO_SO);
    EXPECT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(r.out.rfind("{\"ok\":true,\"host_abi\":\"1.0\",\"plugins\":[{\"file\":", 0), 0u) << r.out;
    EXPECT_EQ(r.out.substr(r.out.size() - 4), "}]}\n") << r.out;
    EXPECT_EQ(count(r.out, "\"go_runtime\":true"), 2u) << r.out;
    EXPECT_EQ(count(r.out, "\"go_runtime\":false"), 1u) << r.out;
    EXPECT_EQ(count(r.out, "{"), count(r.out, "}")) << r.out;
    EXPECT_EQ(count(r.out, "\n"), 1u) << "one line, one document: " << r.out;
}

// Go's build-info marker is found wherever it lies, also across the loader's reads (whatever their size:
// markers straddle several power-of-two boundaries). A real plugin with the marker appended after its end.
TEST(Tools, CheckFindsAGoMarkerThatStraddlesAReadBoundary) {
    TempDir tmp;
    const std::string base = read_file(COUNTER_C_SO);
    const std::string markers[] = {".go.buildinfo", "\xff Go buildinf:"};
    std::string files;
    int k = 0;
    for (size_t boundary :
         {size_t(64) << 10, size_t(128) << 10, size_t(256) << 10, size_t(512) << 10, size_t(1) << 20}) {
        ASSERT_LT(base.size() + 16, boundary);
        for (const std::string& m : markers) {
            std::string bytes = base;
            bytes.resize(boundary - m.size() / 2, '\0');  // the marker's first half before, the rest after
            bytes += m;
            bytes += std::string(64, '\0');
            const fs::path f = tmp / ("straddle" + std::to_string(k++) + ".so");
            write_file(f, bytes);
            files += " " + f.string();
        }
    }
    // A marker broken by one byte is not one.
    std::string near = base + std::string(1000, '\0') + ".go.buildinf0";
    write_file(tmp / "near.so", near);
    const Result r = run("check" + files + " " + (tmp / "near.so").string());
    EXPECT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(count(r.out, "note: carries a Go runtime"), size_t(k)) << r.out;
    EXPECT_TRUE(has(r.out, "near.so: ok")) << r.out;
}

// A file whose static constructor kills the process: the checker reports it by name, and checks the others.
TEST(Tools, CheckReportsAFileThatCrashesWhileLoadingAndGoesOn) {
    const Result r = run("check " + fixture("fx_bad_ctor_crashes") + " " + HELLO_SO);
    EXPECT_EQ(r.status, 1) << r.out;
    if (tickhost::test::isolated()) {
        // Isolated, the plugin's own process dies, not the one that checks it, nor a host.
        EXPECT_TRUE(has(r.out, "fx_bad_ctor_crashes.so: refused: TH_E_NOT_A_LIBRARY: loading it killed its process ") ||
                    has(r.out, "fx_bad_ctor_crashes.so: refused: TH_E_NOT_A_LIBRARY: loading it ended its process "))
            << r.out;
        EXPECT_TRUE(has(r.out, "killed by signal") || has(r.out, "exited with status")) << r.out;
        EXPECT_TRUE(has(r.out, "the host runs on")) << r.out;
        EXPECT_TRUE(has(r.out, "name         hello")) << r.out;
        return;
    }
    // Killed by SIGSEGV; under a sanitizer, its handler aborts (SIGABRT) or exits instead.
    EXPECT_TRUE(has(r.out, "fx_bad_ctor_crashes.so: refused: TH_E_NOT_A_LIBRARY: loading it killed the process that "
                           "checked it (signal") ||
                has(r.out, "fx_bad_ctor_crashes.so: refused: TH_E_NOT_A_LIBRARY: loading it ended the process that "
                           "checked it (exit status"))
        << r.out;
    EXPECT_TRUE(has(r.out, "the host would die the same way") || has(r.out, "the host would end the same way"))
        << r.out;
    EXPECT_TRUE(has(r.out, "name         hello")) << r.out;
}

// An entry point that never returns is bounded by the plugin's timeout, in check as in the host.
TEST(Tools, CheckBoundsAnEntryPointThatNeverReturns) {
    TempDir tmp;
    write_file(tmp / "host.toml",
               "[host]\n" + tickhost::test::isolation_toml() + "default_timeout = \"1s\"\nshadow_dir = \"shadow\"\n");
    const Result r =
        run("check --config " + (tmp / "host.toml").string() + " " + fixture("fx_bad_entry_hangs") + " " + HELLO_SO);
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_TRUE(has(r.out, "refused: TH_E_ENTRY_TIMEOUT: tickhost_plugin_entry did not return within 1s")) << r.out;
    EXPECT_TRUE(has(r.out, "name         hello")) << r.out;
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
                                      "\"\ncount = 3\nname = \"from-toml\"\n[host]\nshadow_dir = \"shadow\"\n" +
                                      tickhost::test::isolation_toml());
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

TEST(Tools, RunOnceNamesAShutdownThatThrowsAcrossTheCAbi) {
    // Out of contract (an exception across the C ABI), but it happens: named, and no std::terminate.
    const Result r = run("run-once " + fixture("fx_raw") + " --set mode=many --set count=1 --set shutdown_throws=yes");
    EXPECT_NE(r.status, -1) << "killed by a signal: " << r.out;
    EXPECT_TRUE(has(r.out, "shutdown threw: shutdown exploded")) << r.out;
}

TEST(Tools, RunOnceBoundsAShutdownThatNeverReturns) {
    TempDir tmp;
    const fs::path release = tmp / "release";
    write_file(tmp / "host.toml",
               "[host]\nshutdown_timeout = \"1s\"\nshadow_dir = \"shadow\"\n" + tickhost::test::isolation_toml() +
                   "[plugins.hostile.config]\nbehaviours = \"overrun,shutdown_hangs\"\nrelease = \"" +
                   release.string() + "\"\n");
    const auto t0 = std::chrono::steady_clock::now();
    const Result r = run("run-once " + fixture("fx_hostile") + " --config " + (tmp / "host.toml").string());
    write_file(release, "");
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(30)) << r.out;
    EXPECT_NE(r.status, -1) << r.out;
    EXPECT_TRUE(has(r.out, "shutdown did not return within 1s")) << r.out;
}

TEST(Tools, RunOnceRefusesDurationsPastTheMaximum) {
    Result r = run(std::string("run-once ") + HELLO_SO + " --timeout 9000h");
    EXPECT_EQ(r.status, 2) << r.out;
    EXPECT_TRUE(has(r.out, "--timeout: '9000h' is longer than the longest duration tickhost accepts, 8760h")) << r.out;
    r = run(std::string("run-once ") + HELLO_SO + " --set every=1000000h");
    EXPECT_EQ(r.status, 2) << r.out;
    EXPECT_TRUE(has(r.out, "--set every: '1000000h' is longer than the longest duration")) << r.out;
    r = run(std::string("run-once ") + HELLO_SO + " --timeout 8760h --set who=x");
    EXPECT_EQ(r.status, 0) << r.out;
}

// check and run-once read a file exactly as the host does: its folder's owner and mode are checked too.
TEST(Tools, CheckAndRunOnceApplyTheFolderChecksOfARealLoad) {
    TempDir tmp;
    const fs::path dir = tmp / "open";
    fs::create_directories(dir);
    fs::permissions(dir, fs::perms::all);  // 0777: anybody may swap the plugin
    fs::copy_file(HELLO_SO, dir / "hello.so");
    Result r = run("check " + (dir / "hello.so").string());
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_TRUE(has(r.out, "refused: TH_E_INSECURE_FILE: plugin_dir " + dir.string() + " has mode 0777")) << r.out;
    r = run("run-once " + (dir / "hello.so").string());
    EXPECT_NE(r.status, 0) << r.out;
    EXPECT_TRUE(has(r.out, "TH_E_INSECURE_FILE")) << r.out;
    write_file(tmp / "host.toml",
               "[host]\n" + tickhost::test::isolation_toml() + "allow_insecure = true\nshadow_dir = \"shadow\"\n");
    r = run("check --config " + (tmp / "host.toml").string() + " " + (dir / "hello.so").string());
    EXPECT_EQ(r.status, 0) << r.out;
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
