// Hostile and broken plugins and untrusted files: every way a plugin or a file can be wrong gets a named,
// actionable error, the host keeps running and the other plugins keep their schedule. Real files, real
// .so fixtures built by the tree (tests/fixtures/fx_bad.c, fx_hostile.cpp), real chmod/chown/mkfifo.
#include <tickhost/host.hpp>

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <thread>

#include <sys/stat.h>
#include <unistd.h>

#include "plugin_harness.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using tickhost::test::eventually;
using tickhost::test::fixture;
using tickhost::test::Harness;
using tickhost::test::load_should_fail;
using tickhost::test::mapped;
using tickhost::test::read_file;
using tickhost::test::write_file;

namespace {

const std::string kElf = read_file(HEARTBEAT_SO);
constexpr uid_t kOtherUid = 65534;  // nobody

size_t file_count(const fs::path& dir) {
    return size_t(std::distance(fs::directory_iterator(dir), fs::directory_iterator()));
}

std::string sha256_of(const fs::path& p) {
    std::string out(64, '\0');
    std::FILE* f = ::popen(("sha256sum " + p.string()).c_str(), "r");
    if (!f || std::fread(out.data(), 1, 64, f) != 64) out.clear();
    if (f) ::pclose(f);
    return out;
}

fs::path text_file(Harness& h, const std::string& name, const std::string& bytes) {
    write_file(h.dir / name, bytes);
    return h.dir / name;
}

// One row of the table: how to make the bad input, the code it must be refused with, a piece of the message.
struct BadInput {
    const char* name;
    std::function<fs::path(Harness&)> make;
    th_status code;
    const char* text;
    bool needs_root = false;
};

std::ostream& operator<<(std::ostream& os, const BadInput& b) { return os << b.name; }

fs::path bad(Harness& h, const char* which) { return h.add(fixture(std::string("fx_bad_") + which)); }

fs::path other_machine(Harness& h) {
    std::string elf = kElf;
    elf[18] = char(183), elf[19] = 0;               // e_machine = EM_AARCH64 ...
    if (kElf[18] == char(183)) elf[18] = char(62);  // ... or EM_X86_64 on arm64
    return text_file(h, "other-machine.so", elf);
}

fs::path bad_needed(Harness& h) {
    std::string elf = kElf;
    for (size_t pos = elf.find("libstdc++.so.6"); pos != std::string::npos; pos = elf.find("libstdc++.so.6", pos + 1))
        elf.replace(pos, 14, "libnothere.so.");
    return text_file(h, "bad-needed.so", elf);
}

fs::path init_hangs(Harness& h) {
    h.plugin("bad_init_hangs").timeout = 200ms;
    h.plugin("bad_init_hangs").config.set("release", (h.tmp / "release").string());
    return bad(h, "init_hangs");
}

fs::path entry_hangs(Harness& h) {
    ::setenv("TICKHOST_FX_RELEASE", (h.tmp / "release").c_str(), 1);
    h.plugin("fx_bad_entry_hangs").timeout = 200ms;  // [plugins.<file stem>]: its name is not known yet
    return bad(h, "entry_hangs");
}

fs::path sparse_too_large(Harness& h) {
    const fs::path f = text_file(h, "x.so", kElf.substr(0, 4096));
    EXPECT_EQ(::truncate(f.c_str(), off_t(100) << 30), 0);  // 100 GiB, a hole after a real ELF header
    return f;
}

fs::path same_name_twice(Harness& h) {
    h.plugin("versioned").interval = 1h;
    EXPECT_FALSE(h.load(h.add(fixture("fx_versioned_v1"), "first.so")));
    return h.add(fixture("fx_versioned_v2"), "second.so");
}

fs::path with_mode(Harness& h, fs::perms mode) {
    fs::path f = h.add(HELLO_SO);
    fs::permissions(f, mode, fs::perm_options::replace);
    return f;
}

fs::path owned_by_other(Harness& h) {
    fs::path f = h.add(HELLO_SO);
    EXPECT_EQ(::chown(f.c_str(), kOtherUid, kOtherUid), 0);
    return f;
}

fs::path dir_writable_by_others(Harness& h) {
    fs::path f = h.add(HELLO_SO);
    fs::permissions(h.dir, fs::perms::all, fs::perm_options::replace);
    return f;
}

fs::path dir_owned_by_other(Harness& h) {
    fs::path f = h.add(HELLO_SO);
    EXPECT_EQ(::chown(h.dir.c_str(), kOtherUid, kOtherUid), 0);
    return f;
}

fs::path symlink_to_plugin(Harness& h) {
    fs::path f = h.tmp / "real-hello.so";
    fs::copy_file(HELLO_SO, f);
    fs::create_symlink(f, h.dir / "hello.so");
    return h.dir / "hello.so";
}

fs::path dangling_symlink(Harness& h, bool allowed) {
    h.config.allow_symlinks = allowed;
    fs::create_symlink(h.tmp / "nowhere.so", h.dir / "dangling.so");
    return h.dir / "dangling.so";
}

fs::path pinned(Harness& h, const std::string& name, const std::string& as) {
    h.plugin(name).sha256 = std::string(64, 'a');
    return h.add(HELLO_SO, as);
}

// The table of bad inputs at load time: one line per row.
const BadInput kBadInputs[] = {
    // Files that are not plugins.
    {"TextFile", [](Harness& h) { return text_file(h, "text.so", "this is not an ELF file\n"); }, TH_E_NOT_A_LIBRARY,
     "not an ELF file"},
    {"WhitespaceOnlyFile", [](Harness& h) { return text_file(h, "blank.so", "\n \n"); }, TH_E_NOT_A_LIBRARY,
     "not an ELF file"},
    {"ZeroLengthFile", [](Harness& h) { return text_file(h, "zero.so", ""); }, TH_E_NOT_A_LIBRARY, "the file is empty"},
    {"DirectoryNamedSo",
     [](Harness& h) {
         fs::create_directory(h.dir / "x.so");
         return h.dir / "x.so";
     },
     TH_E_NOT_A_LIBRARY, "not a regular file"},
    {"FifoNamedSo",
     [](Harness& h) {
         ::mkfifo((h.dir / "x.so").c_str(), 0600);
         return h.dir / "x.so";
     },
     TH_E_NOT_A_LIBRARY, "not a regular file"},
    {"DanglingSymlink", [](Harness& h) { return dangling_symlink(h, false); }, TH_E_INSECURE_FILE, "symlink"},
    {"DanglingSymlinkWhenSymlinksAllowed", [](Harness& h) { return dangling_symlink(h, true); }, TH_E_NOT_A_LIBRARY,
     "dangling symlink"},
    {"MissingFile", [](Harness& h) { return h.dir / "missing.so"; }, TH_E_NOT_A_LIBRARY, "cannot open"},
    {"TruncatedElfHeader", [](Harness& h) { return text_file(h, "t.so", kElf.substr(0, 40)); }, TH_E_NOT_A_LIBRARY,
     "truncated ELF file"},
    {"TruncatedElfBody", [](Harness& h) { return text_file(h, "t.so", kElf.substr(0, kElf.size() / 3)); },
     TH_E_NOT_A_LIBRARY, "truncated ELF file"},
    {"TruncatedElfLastByte", [](Harness& h) { return text_file(h, "t.so", kElf.substr(0, kElf.size() - 1)); },
     TH_E_NOT_A_LIBRARY, "truncated ELF file"},
    {"ElfForAnotherMachine", other_machine, TH_E_NOT_A_LIBRARY, "ELF for another machine"},
    {"SparseFileLargerThanMaxPluginSize", sparse_too_large, TH_E_FILE_TOO_LARGE,
     "x.so is 100 GiB, larger than [host] max_plugin_size = 256MiB"},
    {"MissingDependency", bad_needed, TH_E_NOT_A_LIBRARY, "libnothere.so."},
    // Libraries that are not (valid) plugins.
    {"MissingEntrySymbol", [](Harness& h) { return h.add(fixture("fx_no_entry")); }, TH_E_NO_ENTRY,
     "tickhost_plugin_entry"},
    {"EntryReturnsNull", [](Harness& h) { return h.add(fixture("fx_abi_null")); }, TH_E_ENTRY_NULL, "returned NULL"},
    {"EntryNeverReturns", entry_hangs, TH_E_ENTRY_TIMEOUT, "tickhost_plugin_entry did not return within 200ms"},
    {"AbiMajorTooNew", [](Harness& h) { return h.add(fixture("fx_abi_major")); }, TH_E_ABI_MAJOR, "built for ABI 2.0"},
    {"AbiMinorNewerThanHost", [](Harness& h) { return h.add(fixture("fx_abi_minor")); }, TH_E_ABI_MINOR_TOO_NEW,
     "needs ABI 1.99"},
    {"DescriptorSmallerThanItsVersion", [](Harness& h) { return h.add(fixture("fx_abi_small")); }, TH_E_BAD_DESCRIPTOR,
     "struct_size is 16"},
    {"TaskStructSmallerThanItsVersion", [](Harness& h) { return bad(h, "task_small"); }, TH_E_BAD_DESCRIPTOR,
     "struct_size 8 is smaller"},
    {"ZeroTasks", [](Harness& h) { return bad(h, "zero_tasks"); }, TH_E_NO_TASKS, "declares no task"},
    {"TwoTasksWithOneName", [](Harness& h) { return bad(h, "dup_tasks"); }, TH_E_BAD_DESCRIPTOR,
     "two tasks are named 'same'"},
    {"EmptyTaskName", [](Harness& h) { return bad(h, "empty_name"); }, TH_E_BAD_DESCRIPTOR, "a task has no name"},
    {"VeryLongTaskName", [](Harness& h) { return bad(h, "long_name"); }, TH_E_BAD_DESCRIPTOR, "longer than 64 bytes"},
    {"NonPrintableTaskName", [](Harness& h) { return bad(h, "nonprint_name"); }, TH_E_BAD_DESCRIPTOR,
     "control characters"},
    {"IntervalZero", [](Harness& h) { return bad(h, "interval_zero"); }, TH_E_BAD_DESCRIPTOR,
     "default interval 0 ns is not positive"},
    {"IntervalNegative", [](Harness& h) { return bad(h, "interval_negative"); }, TH_E_BAD_DESCRIPTOR,
     "default interval -1000000000 ns is not positive"},
    {"MissingRunFunction", [](Harness& h) { return bad(h, "no_run"); }, TH_E_BAD_DESCRIPTOR, "run is NULL"},
    {"IntervalAboveTheMaximum", [](Harness& h) { return bad(h, "interval_above_max"); }, TH_E_BAD_DESCRIPTOR,
     "task 'forever': default interval 31536000000000001 ns is longer than the maximum, 31536000000000000 ns"},
    {"TimeoutAboveTheMaximum", [](Harness& h) { return bad(h, "timeout_above_max"); }, TH_E_BAD_DESCRIPTOR,
     "task 'patient': default timeout 31536000000000001 ns is longer than the maximum, 31536000000000000 ns"},
    {"UnresolvedSymbol", [](Harness& h) { return bad(h, "unresolved"); }, TH_E_NOT_A_LIBRARY,
     "undefined symbol: tickhost_fixture_symbol_nobody_defines"},
    // init.
    {"InitReturnsAnError", [](Harness& h) { return bad(h, "init_error"); }, TH_E_INIT_FAILED,
     "TH_ERROR: database at db.example:5432 unreachable"},
    {"InitThrows", [](Harness& h) { return h.add(fixture("fx_init_fails")); }, TH_E_INIT_FAILED,
     "missing api_key in config"},
    {"InitNeverReturns", init_hangs, TH_E_INIT_FAILED, "init did not return within 200ms"},
    {"TwoFilesDeclareOneName", same_name_twice, TH_E_DUPLICATE_NAME, "already used by"},
    // Untrusted files.
    {"FileWritableByOthers", [](Harness& h) { return with_mode(h, fs::perms(0666)); }, TH_E_INSECURE_FILE,
     "has mode 0666: group and others may write it; run: chmod go-w"},
    {"FileWritableByGroup", [](Harness& h) { return with_mode(h, fs::perms(0775)); }, TH_E_INSECURE_FILE,
     "has mode 0775: its group may write it; run: chmod go-w"},
    {"FileOwnedByAnotherUser", owned_by_other, TH_E_INSECURE_FILE, "is owned by uid 65534", true},
    {"PluginDirWritableByOthers", dir_writable_by_others, TH_E_INSECURE_FILE, "plugin_dir"},
    {"PluginDirOwnedByAnotherUser", dir_owned_by_other, TH_E_INSECURE_FILE, "plugin_dir", true},
    {"SymlinkToAPlugin", symlink_to_plugin, TH_E_INSECURE_FILE, "it is a symlink (to "},
    {"Sha256PinOnFileNameMismatch", [](Harness& h) { return pinned(h, "hello", "hello.so"); }, TH_E_CHECKSUM_MISMATCH,
     "host.toml pins [plugins.hello] sha256"},
    {"Sha256PinOnDeclaredNameMismatch", [](Harness& h) { return pinned(h, "hello", "renamed.so"); },
     TH_E_CHECKSUM_MISMATCH, "host.toml pins [plugins.hello] sha256"},
};

class BadInputAtLoad : public ::testing::TestWithParam<BadInput> {};

}  // namespace

TEST_P(BadInputAtLoad, IsRefusedWithANamedErrorAndTheHostCarriesOn) {
    const BadInput& row = GetParam();
    if (row.needs_root && geteuid() != 0) GTEST_SKIP() << "needs root to chown a file to another user";
    Harness h;
    h.plugin("hello").interval = 1h;
    h.plugin("heartbeat").config.set("path", (h.tmp / "health").string());
    const fs::path file = row.make(h);
    load_should_fail(h, file, row.code, row.text);
    // Nothing of the refused file stays behind (unless its code may still run in the host's own process: an
    // init or entry point that never returned; isolated, that code went with its process).
    if (tickhost::test::isolated() ||
        (std::string(row.name) != "InitNeverReturns" && std::string(row.name) != "EntryNeverReturns"))
        EXPECT_EQ(file_count(h.manager->shadow_dir()), h.manager->plugins().size()) << "shadow copy left behind";
    // The same manager still loads a good plugin afterwards.
    fs::permissions(h.dir, fs::perms::owner_all, fs::perm_options::replace);
    EXPECT_EQ(::chown(h.dir.c_str(), geteuid(), getegid()), 0);
    EXPECT_FALSE(h.load(h.add(HEARTBEAT_SO))) << h.log_text();
    write_file(h.tmp / "release", "");  // lets a hanging fixture return, so its thread ends with the test
}

INSTANTIATE_TEST_SUITE_P(Table, BadInputAtLoad, ::testing::ValuesIn(kBadInputs),
                         [](const auto& info) { return std::string(info.param.name); });

// ---- load: what the table cannot show on one line -----------------------------------------------------

TEST(Hostile, InitThatNeverReturnsIsRefusedKeptMappedAndTheLoaderCarriesOn) {
    Harness h;
    const fs::path release = h.tmp / "release";
    h.plugin("bad_init_hangs").timeout = 200ms;
    h.plugin("bad_init_hangs").config.set("release", release.string());
    h.plugin("hello").interval = 10ms;
    h.start();
    auto err = h.load(h.add(fixture("fx_bad_init_hangs")));
    ASSERT_TRUE(err);
    EXPECT_EQ(err->code, TH_E_INIT_FAILED);
    EXPECT_EQ(h.count_logged("init did not return within 200ms"), 1u) << h.log_text();
    if (tickhost::test::isolated()) {
        // Isolated, its init goes with its process: killed, nothing of it left, and the loader carries on.
        EXPECT_TRUE(h.logged("init did not return within 200ms; its process was killed")) << h.log_text();
        EXPECT_EQ(file_count(h.manager->shadow_dir()), 0u);
        EXPECT_TRUE(tickhost::test::worker_pids().empty());
        ASSERT_FALSE(h.load(h.add(HELLO_SO)));
        ASSERT_TRUE(eventually([&] { return h.logged("[plugin.hello] [greet] hello, world #2"); })) << h.log_text();
        return;
    }
    EXPECT_TRUE(h.logged("its library stays mapped until the host exits"))
        << "the limit is visible in the log: " << h.log_text();
    // Its code may still run: the shadow copy stays, mapped.
    ASSERT_EQ(file_count(h.manager->shadow_dir()), 1u);
    const fs::path shadow = fs::directory_iterator(h.manager->shadow_dir())->path();
    EXPECT_TRUE(mapped(shadow));
    // The loader was not held up: the next plugin loads and runs.
    ASSERT_FALSE(h.load(h.add(HELLO_SO)));
    ASSERT_TRUE(eventually([&] { return h.logged("[plugin.hello] [greet] hello, world #2"); })) << h.log_text();
    write_file(release, "");
    EXPECT_TRUE(mapped(shadow)) << "never unmapped, even after its init finally returned";
}

TEST(Hostile, FifoInAWatchedDirectoryDoesNotBlockTheWatcher) {
    Harness h;
    ASSERT_EQ(::mkfifo((h.dir / "fifo.so").c_str(), 0600), 0);
    h.config.watch = tickhost::WatchMode::inotify;
    h.config.settle = 50ms;
    h.plugin("hello").interval = 10ms;
    tickhost::Host host(h.config);
    host.start();
    EXPECT_TRUE(eventually([&] { return h.logged("fifo.so", "not a regular file"); })) << h.log_text();
    fs::copy_file(HELLO_SO, h.dir / "hello.so");
    ASSERT_TRUE(eventually([&] { return h.logged("[plugin.hello] [greet] hello, world #1"); })) << h.log_text();
    EXPECT_TRUE(host.stop());
}

TEST(Hostile, InsecureFilesLoadWhenHostTomlAllowsThem) {
    Harness h;
    h.config.allow_insecure = true;
    h.config.allow_symlinks = true;
    h.plugin("hello").interval = 1h;
    h.plugin("heartbeat").interval = 1h;
    h.plugin("heartbeat").config.set("path", (h.tmp / "health").string());
    fs::permissions(h.dir, fs::perms::all, fs::perm_options::replace);
    const fs::path open_file = with_mode(h, fs::perms(0666));
    if (geteuid() == 0) EXPECT_EQ(::chown(open_file.c_str(), kOtherUid, kOtherUid), 0);
    EXPECT_FALSE(h.load(open_file)) << h.log_text();
    fs::copy_file(HEARTBEAT_SO, h.tmp / "real-heartbeat.so");
    fs::create_symlink(h.tmp / "real-heartbeat.so", h.dir / "heartbeat.so");
    EXPECT_FALSE(h.load(h.dir / "heartbeat.so")) << h.log_text();
    EXPECT_EQ(h.manager->plugins().size(), 2u);
}

TEST(Hostile, Sha256PinThatMatchesLoads) {
    Harness h;
    h.plugin("hello").interval = 1h;
    h.plugin("hello").sha256 = sha256_of(HELLO_SO);
    ASSERT_EQ(h.plugin("hello").sha256.size(), 64u);
    EXPECT_FALSE(h.load(h.add(HELLO_SO))) << h.log_text();
}

TEST(Hostile, FixingTheModeOfARefusedFileLoadsItWithoutARestart) {
    Harness h;
    h.config.watch = tickhost::WatchMode::inotify;
    h.config.settle = 50ms;
    h.plugin("hello").interval = 10ms;
    const fs::path f = with_mode(h, fs::perms(0666));
    tickhost::Host host(h.config);
    host.start();
    ASSERT_TRUE(eventually([&] { return h.logged("chmod go-w " + f.string()); })) << h.log_text();
    fs::permissions(f, fs::perms(0644), fs::perm_options::replace);
    ASSERT_TRUE(eventually([&] { return h.logged("[plugin.hello] [greet] hello, world #1"); })) << h.log_text();
    EXPECT_TRUE(host.stop());
}

// ---- run time -------------------------------------------------------------------------------------------

namespace {

// fx_hostile with the given behaviours, plus heartbeat beating every 10 ms next to it.
struct RunHarness : Harness {
    fs::path out = tmp / "hostile.out";
    fs::path release = tmp / "release";
    fs::path health = tmp / "health";
    explicit RunHarness(const std::string& behaviours) {
        plugin("hostile").config.set("behaviours", behaviours);
        plugin("hostile").config.set("out", out.string());
        plugin("hostile").config.set("release", release.string());
        plugin("heartbeat").interval = 10ms;
        plugin("heartbeat").config.set("path", health.string());
    }
    ~RunHarness() { write_file(release, ""); }  // let stuck fixture code return so its threads end
    void load_both() {
        ASSERT_FALSE(load(add(fixture("fx_hostile")))) << log_text();
        ASSERT_FALSE(load(add(HEARTBEAT_SO))) << log_text();
    }
    std::string events() const { return read_file(out); }
    size_t count(const std::string& what) const {
        size_t n = 0;
        const std::string all = events();
        for (size_t pos = all.find(what); pos != std::string::npos; pos = all.find(what, pos + 1)) ++n;
        return n;
    }
    // Heartbeat keeps its schedule: its status file changes again (several times).
    bool others_keep_their_schedule() const {
        for (int i = 0; i < 3; ++i) {
            const std::string before = read_file(health);
            if (!eventually([&] { return read_file(health) != before; })) return false;
        }
        return true;
    }
    tickhost::TaskStats stats(const std::string& plugin, const std::string& task) const {
        if (auto p = manager->plugin(plugin))
            for (auto& t : p->tasks)
                if (t.name == task) return tickers->stats(t.id).value_or(tickhost::TaskStats{});
        return {};
    }
};

}  // namespace

TEST(HostileRun, ErrorStatusIsLoggedWithTaskNameAndMessageAndCounted) {
    RunHarness h("");
    ASSERT_FALSE(h.load(h.add(fixture("fx_failing"))));
    ASSERT_TRUE(eventually([&] { return h.stats("failing", "errors").failures >= 2; }));
    EXPECT_TRUE(h.logged("'failing/errors'", "disk on fire")) << h.log_text();
}

TEST(HostileRun, UnknownStatusCodeIsAFailureNamedWithItsValue) {
    RunHarness h("");
    ASSERT_FALSE(h.load(h.add(fixture("fx_failing"))));
    ASSERT_TRUE(eventually([&] { return h.stats("failing", "unknown").failures >= 2; }));
    EXPECT_TRUE(h.logged("'failing/unknown'", "unknown status 42")) << h.log_text();
}

TEST(HostileRun, ExceptionIsLoggedWithItsWhatText) {
    RunHarness h("");
    ASSERT_FALSE(h.load(h.add(fixture("fx_failing"))));
    ASSERT_TRUE(eventually([&] { return h.stats("failing", "throws").failures >= 2; }));
    EXPECT_TRUE(h.logged("'failing/throws'", "kaboom from C++")) << h.log_text();
}

TEST(HostileRun, OverrunThatHonoursCancellationEndsAndRunsAgain) {
    RunHarness h("overrun");
    h.load_both();
    ASSERT_TRUE(eventually([&] { return h.count("overrun saw cancel") >= 2; })) << h.events();
    EXPECT_GE(h.stats("hostile", "overrun").timeouts, 1u);
    EXPECT_TRUE(h.others_keep_their_schedule());
    EXPECT_TRUE(h.manager->unload_all(10s));
    EXPECT_EQ(h.count("overrun stop"), 1u);
}

TEST(HostileRun, RunThatIgnoresCancellationIsAbandonedAndTheOthersKeepTheirSchedule) {
    RunHarness h("stuck");
    h.abandon_after = 300ms;
    h.config.workers = 1;  // the stuck run takes the only worker: it must be replaced
    h.load_both();
    if (tickhost::test::isolated()) {
        // Isolated, the call is not abandoned: its process is killed abandon_after past its deadline, the
        // call returns (the host's worker is not lost, its threads stay as they were), and the plugin is
        // restarted in a new process (no stop call: its process is gone).
        const int threads = tickhost::test::thread_count();
        ASSERT_TRUE(eventually([&] { return h.logged("'hostile/stuck'", "its process was killed"); })) << h.log_text();
        EXPECT_TRUE(eventually([&] {
            return h.logged(
                "killed by the host because it ignored the cancellation of task 'stuck' for 300ms past "
                "its deadline while running task 'stuck'");
        })) << h.log_text();
        EXPECT_EQ(h.count_logged("abandoned ("), 0u) << "no call of the host was abandoned: " << h.log_text();
        EXPECT_TRUE(h.others_keep_their_schedule()) << h.log_text();
        ASSERT_TRUE(eventually([&] { return h.count("stuck run") >= 2; })) << "restarted: " << h.log_text();
        EXPECT_TRUE(h.logged("plugin 'hostile'", "its tasks got no stop call. Restarting it in")) << h.log_text();
        EXPECT_EQ(tickhost::test::thread_count(), threads) << "no thread of the host was lost or replaced";
        EXPECT_TRUE(h.manager->unload(h.dir / "fx_hostile.so", 2s));
        EXPECT_EQ(h.count("stuck stop"), 0u) << "no stop call concurrent with the stuck run";
        EXPECT_EQ(h.count("stuck returned"), 0u) << "the stuck run never returned: its process was killed";
        EXPECT_TRUE(eventually([&] { return tickhost::test::worker_pids().size() == 1u; })) << "heartbeat's only";
        return;
    }
    ASSERT_TRUE(eventually([&] { return h.logged("'hostile/stuck'", "abandoned"); })) << h.log_text();
    EXPECT_EQ(h.count_logged("abandoned ("), 1u) << "one clear log line: " << h.log_text();
    EXPECT_TRUE(h.others_keep_their_schedule()) << h.log_text();
    EXPECT_EQ(h.count("stuck run"), 1u) << "no new runs of an abandoned task";
    const fs::path shadow = h.manager->plugin("hostile")->shadow;
    EXPECT_TRUE(h.manager->unload(h.dir / "fx_hostile.so", 2s));
    EXPECT_TRUE(h.logged("plugin 'hostile': task 'stuck' was abandoned")) << h.log_text();
    EXPECT_TRUE(mapped(shadow)) << "a plugin whose code may still run is never unloaded";
    EXPECT_EQ(h.count("stuck stop"), 0u) << "no stop call concurrent with the stuck run";
}

TEST(HostileRun, HostServicesAfterTheRunOrFromAnotherThreadAreRefusedNotACrash) {
    RunHarness h("late");
    h.load_both();
    const std::string stale = std::to_string(TH_E_STALE_CONTEXT);
    ASSERT_TRUE(eventually([&] { return h.count("late set_error=") == 1; })) << h.events();
    EXPECT_NE(h.events().find("late set_error=" + stale + " config_string=" + stale + " config_int=" + stale +
                              " is_cancelled=1 remaining=0 invented=" + stale),
              std::string::npos)
        << h.events();
    EXPECT_FALSE(h.logged("from a stale context")) << "a stale context's log line is dropped";
    EXPECT_TRUE(h.manager->unload_all(10s));
}

TEST(HostileRun, HugeInvalidUtf8AndFormatDirectiveMessagesAreOneEscapedCappedRecordEach) {
    RunHarness h("loud");
    h.load_both();
    ASSERT_TRUE(eventually([&] { return h.logged("[loud] directives"); })) << h.log_text();
    EXPECT_TRUE(h.logged("[plugin.hostile] [loud] directives {} {0} %s %n %d literal")) << h.log_text();
    EXPECT_TRUE(h.logged("[plugin.hostile] [loud] bad utf-8: \\xff\\xfe\\xc3( end")) << h.log_text();
    // The 1 MiB message: its first 4096 bytes, then what was cut, counted.
    EXPECT_TRUE(
        h.logged("[plugin.hostile] [loud] " + std::string(4096, 'x') + " \xe2\x80\xa6 (1044480 bytes truncated)"))
        << "the 1 MiB message is capped";
    EXPECT_TRUE(h.others_keep_their_schedule());
    EXPECT_TRUE(h.manager->unload_all(10s));
}

TEST(HostileRun, StopCallThatHangsIsBoundedAndNamed) {
    RunHarness h("stop_hangs");
    h.load_both();
    ASSERT_TRUE(eventually([&] { return h.count("stop_hangs run") >= 1; }));
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_FALSE(h.manager->unload_all(1s));
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s + 10s) << "bounded by the stop bound (generously)";
    EXPECT_TRUE(h.logged("plugin 'hostile': task 'stop_hangs' did not finish its stop call within 1s")) << h.log_text();
    EXPECT_TRUE(h.logged("unloaded plugin 'heartbeat'")) << "the other plugins still stop: " << h.log_text();
    EXPECT_EQ(read_file(h.health).rfind("offline", 0), 0u);
}

TEST(HostileRun, ShutdownThatHangsIsBoundedKeptMappedAndNamed) {
    RunHarness h("overrun,shutdown_hangs");
    h.load_both();
    ASSERT_TRUE(eventually([&] { return h.count("overrun run") >= 1; }));
    const auto shadow = h.manager->plugin("hostile")->shadow;
    EXPECT_FALSE(h.manager->unload_all(1s)) << "a shutdown that never returns makes the stop unclean";
    EXPECT_EQ(h.count("shutdown hanging"), 1u) << h.events();
    EXPECT_TRUE(h.logged("plugin 'hostile': shutdown did not return within")) << h.log_text();
    EXPECT_TRUE(h.logged("unloaded plugin 'heartbeat'")) << "the other plugins still stop: " << h.log_text();
    EXPECT_EQ(read_file(h.health).rfind("offline", 0), 0u);
    if (tickhost::test::isolated()) {
        // Isolated, the code still running goes with its process: killed, nothing of it is left.
        EXPECT_TRUE(h.logged("plugin 'hostile': shutdown did not return within", "; its process is killed"))
            << h.log_text();
        EXPECT_TRUE(tickhost::test::worker_pids().empty());
        EXPECT_FALSE(fs::exists(shadow));
        return;
    }
    EXPECT_TRUE(mapped(shadow)) << "its code may still run: the library must stay mapped";
}
