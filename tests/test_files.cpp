// Plugin files against the loader: a file is refused by its size before it is read, copied in bounded
// memory, refused while it is still being written; shadow copies keep their modes under a hostile umask
// and a removed shadow cache is made again; an entry point that never returns is bounded; a Go runtime
// left behind by a removed plugin asks for a restart. Real files (sparse ones for the large sizes), real .so.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "plugin_harness.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using tickhost::test::eventually;
using tickhost::test::fixture;
using tickhost::test::Harness;
using tickhost::test::mapped;
using tickhost::test::read_file;
using tickhost::test::write_file;

namespace {

constexpr uint64_t MiB = 1024 * 1024;
constexpr uint64_t GiB = 1024 * MiB;

// A line of /proc/self/status in bytes ("VmRSS", "VmHWM").
uint64_t proc_status_bytes(const std::string& key) {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind(key + ":", 0) == 0) return std::strtoull(line.c_str() + key.size() + 1, nullptr, 10) * 1024;
    return 0;
}

// `prefix` followed by zeros up to `size` bytes: the zeros are a hole (ftruncate), so the file costs no space.
fs::path sparse_file(const fs::path& p, const std::string& prefix, uint64_t size) {
    write_file(p, prefix);
    EXPECT_EQ(::truncate(p.c_str(), off_t(size)), 0) << std::strerror(errno);
    return p;
}

std::string sha256_of(const fs::path& p) {
    std::string out(64, '\0');
    std::FILE* f = ::popen(("sha256sum " + p.string()).c_str(), "r");
    if (!f || std::fread(out.data(), 1, 64, f) != 64) out.clear();
    if (f) ::pclose(f);
    return out;
}

size_t file_count(const fs::path& dir) {
    return size_t(std::distance(fs::directory_iterator(dir), fs::directory_iterator()));
}

unsigned mode_of(const fs::path& p) {
    struct stat st {};
    return ::stat(p.c_str(), &st) == 0 ? unsigned(st.st_mode & 07777) : 0xffffu;
}

// Sets the process's umask for its lifetime, as a plugin calling umask() would.
struct ScopedUmask {
    mode_t old;
    explicit ScopedUmask(mode_t m) : old(::umask(m)) {}
    ~ScopedUmask() { ::umask(old); }
};

}  // namespace

// ---- sizes ----------------------------------------------------------------------------------------------

TEST(HostileFiles, SparseHundredGiBFileIsRefusedUnreadAndTheOthersRun) {
    Harness h;
    h.plugin("hello").interval = 10ms;
    // A real ELF header (a real plugin's first pages), then 100 GiB of hole.
    const fs::path big = sparse_file(h.dir / "x.so", read_file(HELLO_SO).substr(0, 4096), 100 * GiB);
    h.add(HELLO_SO);
    h.start();
    const uint64_t rss_before = proc_status_bytes("VmRSS"), hwm_before = proc_status_bytes("VmHWM");
    EXPECT_EQ(h.manager->load_directory(), 1u) << h.log_text();
    const uint64_t rss_after = proc_status_bytes("VmRSS"), hwm_after = proc_status_bytes("VmHWM");
    EXPECT_TRUE(h.logged(big.string(), "TH_E_FILE_TOO_LARGE")) << h.log_text();
    EXPECT_TRUE(
        h.logged("x.so is 100 GiB, larger than [host] max_plugin_size = 256MiB; it was not read; raise "
                 "[host] max_plugin_size in host.toml if this is really a plugin"))
        << h.log_text();
    auto err = h.manager->sync(big);
    ASSERT_TRUE(err);
    EXPECT_EQ(err->code, TH_E_FILE_TOO_LARGE) << err->message();
    EXPECT_FALSE(h.manager->retry_worthy(big)) << "its size is not a half-written file: no retry";
    // The good plugin runs; nothing of the big file reached the shadow cache; the host's memory did not jump.
    ASSERT_TRUE(eventually([&] { return h.logged("[plugin.hello] [greet] hello, world #2"); })) << h.log_text();
    EXPECT_EQ(file_count(h.manager->shadow_dir()), 1u);
    EXPECT_LT(rss_after, rss_before + 64 * MiB) << "VmRSS " << rss_before << " -> " << rss_after;
    EXPECT_LT(hwm_after, hwm_before + 64 * MiB) << "VmHWM " << hwm_before << " -> " << hwm_after;
}

TEST(HostileFiles, LargeFileIsCopiedAndHashedInBoundedMemory) {
    Harness h;
    h.config.max_plugin_size = 1 * GiB;
    h.plugin("hello").interval = 1h;
    // A real plugin followed by zeros up to 512 MiB: a valid ELF (the loader may accept it or refuse it;
    // either is fine here) that must be read whole to be hashed.
    const fs::path big = sparse_file(h.dir / "big.so", read_file(HELLO_SO), 512 * MiB);
    h.start();
    const uint64_t hwm_before = proc_status_bytes("VmHWM");
    auto err = h.manager->load(big);
    const uint64_t hwm_after = proc_status_bytes("VmHWM");
    EXPECT_LT(hwm_after, hwm_before + 64 * MiB) << "VmHWM " << hwm_before << " -> " << hwm_after;
    if (err) {
        EXPECT_EQ(err->code, TH_E_NOT_A_LIBRARY) << err->message();
        EXPECT_EQ(file_count(h.manager->shadow_dir()), 0u) << "a refused file leaves no copy";
        return;
    }
    // Loaded: what was hashed is the file, and the copy that was loaded is the file, holes and all.
    auto info = h.manager->plugin("hello");
    ASSERT_TRUE(info);
    const std::string sha = sha256_of(big);
    EXPECT_EQ(info->sha256, sha);
    EXPECT_EQ(fs::file_size(info->shadow), 512 * MiB);
    EXPECT_EQ(sha256_of(info->shadow), sha);
}

TEST(HostileFiles, FileLargerThanALoweredLimitIsRefusedByName) {
    Harness h;
    h.config.max_plugin_size = 100 * 1024;  // "100KiB"
    h.plugin("hello").interval = 1h;
    auto err = h.load(h.add(HELLO_SO));
    ASSERT_TRUE(err);
    EXPECT_EQ(err->code, TH_E_FILE_TOO_LARGE);
    EXPECT_NE(err->message().find("hello.so is "), std::string::npos) << err->message();
    EXPECT_NE(err->message().find(" KiB, larger than [host] max_plugin_size = 100KiB"), std::string::npos)
        << err->message();
    EXPECT_EQ(file_count(h.manager->shadow_dir()), 0u);
}

// ---- a file that changes while it is copied -------------------------------------------------------------

TEST(HostileFiles, FileThatGrowsWhileItIsCopiedIsRefusedAsStillBeingWritten) {
    Harness h;
    h.config.max_plugin_size = 1 * GiB;
    // Large enough that copying and hashing it takes a while, during which a writer keeps appending.
    const fs::path f = sparse_file(h.dir / "growing.so", read_file(HELLO_SO), 64 * MiB);
    h.start();
    std::atomic<bool> stop{false};
    std::thread writer([&] {
        const int fd = ::open(f.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
        while (!stop) {
            if (fd >= 0) (void)!::write(fd, "x", 1);
            std::this_thread::sleep_for(1ms);
        }
        if (fd >= 0) ::close(fd);
    });
    std::this_thread::sleep_for(20ms);  // the writer is appending before the load opens the file
    auto err = h.manager->load(f);
    stop = true;
    writer.join();
    ASSERT_TRUE(err) << "a file still being written must not load";
    EXPECT_EQ(err->code, TH_E_NOT_A_LIBRARY) << err->message();
    EXPECT_NE(err->message().find("the file changed while it was read"), std::string::npos) << err->message();
    EXPECT_NE(err->message().find("it is still being written: it is retried when it changes"), std::string::npos);
    EXPECT_TRUE(h.manager->retry_worthy(f)) << "worth a retry when it settles";
    EXPECT_EQ(file_count(h.manager->shadow_dir()), 0u) << "no copy left behind";
}

// Refused before it was hashed (not an ELF): the file's identity stands for its content, so an unchanged
// file is retried once (it may have been half written), not on every look, and a changed one again.
TEST(HostileFiles, FileRefusedBeforeItIsHashedIsRetriedOnceUntilItChanges) {
    Harness h;
    const fs::path f = h.dir / "text.so";
    write_file(f, "not a library, not yet\n");
    ASSERT_TRUE(h.load(f));
    EXPECT_TRUE(h.manager->retry_worthy(f));
    ASSERT_TRUE(h.manager->sync(f));
    EXPECT_FALSE(h.manager->retry_worthy(f)) << "the same file again: no more retries";
    ASSERT_TRUE(h.manager->sync(f));
    EXPECT_EQ(h.count_logged("text.so: not loaded: TH_E_NOT_A_LIBRARY: not an ELF file"), 2u)
        << "not logged again on every look: " << h.log_text();
    write_file(h.tmp / "next", "still not a library\n");
    fs::rename(h.tmp / "next", f);
    ASSERT_TRUE(h.manager->sync(f));
    EXPECT_TRUE(h.manager->retry_worthy(f)) << "a changed file is worth one retry again";
}

TEST(HostileFiles, UnchangedContentLeavesNoStagedCopyBehind) {
    Harness h;
    h.plugin("hello").interval = 1h;
    const fs::path f = h.add(HELLO_SO);
    ASSERT_FALSE(h.load(f)) << h.log_text();
    const auto shadow = h.manager->plugin("hello")->shadow;
    for (int i = 0; i < 3; ++i) {
        h.add(HELLO_SO);  // the same bytes again (a touch, a copy of the same build)
        EXPECT_FALSE(h.manager->sync(f)) << h.log_text();
    }
    EXPECT_EQ(h.manager->plugin("hello")->shadow, shadow) << "nothing was reloaded";
    EXPECT_EQ(file_count(h.manager->shadow_dir()), 1u) << "the copies staged to compare were removed";
}

#if defined(TICKHOST_FAULT_SEAMS)
TEST(HostileFiles, ExceptionWhileStagingIsANamedRefusalAndLeavesNoCopy) {
    Harness h;
    h.plugin("hello").interval = 10ms;
    ::setenv("TICKHOST_FAULT", "stage:broken.so", 1);
    auto err = h.load(h.add(HELLO_SO, "broken.so"));
    ASSERT_TRUE(err);
    EXPECT_EQ(err->code, TH_E_NOT_A_LIBRARY);
    EXPECT_NE(err->message().find("the host could not read it: injected fault at stage:broken.so"), std::string::npos)
        << err->message();
    EXPECT_EQ(file_count(h.manager->shadow_dir()), 0u);
    ASSERT_FALSE(h.load(h.add(HELLO_SO))) << "the host carries on: " << h.log_text();
    ::unsetenv("TICKHOST_FAULT");
    ASSERT_TRUE(eventually([&] { return h.logged("[plugin.hello] [greet] hello, world #2"); })) << h.log_text();
}
#endif

// ---- the shadow cache -----------------------------------------------------------------------------------

TEST(HostileFiles, ShadowCopiesKeepTheirModesUnderAHostileUmaskAndARemovedCacheIsMadeAgain) {
    Harness h;
    h.plugin("hello").interval = 10ms;
    h.plugin("heartbeat").interval = 10ms;
    h.plugin("heartbeat").config.set("path", (h.tmp / "health").string());
    const fs::path hello = h.add(HELLO_SO);
    {
        ScopedUmask hostile(0777);  // what a plugin calling umask(0777) leaves for every later load
        ASSERT_FALSE(h.load(hello)) << h.log_text();
    }
    const fs::path dir = h.manager->shadow_dir();
    const fs::path shadow = h.manager->plugin("hello")->shadow;
    EXPECT_EQ(mode_of(shadow), 0700u) << "the copy has its mode, not 0700 & ~umask";
    EXPECT_EQ(mode_of(dir), 0700u);
    EXPECT_EQ(mode_of(dir.string() + ".staging"), 0700u) << "where copies are made";
    EXPECT_EQ(mode_of(dir.parent_path()), 0700u);
    // Someone removes the whole cache (rm -rf, a tmp cleaner): the next plugin still loads.
    fs::remove_all(dir.parent_path());
    const fs::path heartbeat = h.add(HEARTBEAT_SO);
    {
        ScopedUmask hostile(0777);
        ASSERT_FALSE(h.load(heartbeat)) << h.log_text();
    }
    EXPECT_TRUE(h.logged("the shadow cache " + dir.string() + " had been removed; created it again")) << h.log_text();
    EXPECT_EQ(mode_of(dir), 0700u) << "made again private";
    EXPECT_EQ(mode_of(dir.parent_path()), 0700u);
    EXPECT_EQ(mode_of(h.manager->plugin("heartbeat")->shadow), 0700u);
    ASSERT_TRUE(eventually([&] { return h.logged("[plugin.hello] [greet] hello, world #2"); })) << h.log_text();
    EXPECT_TRUE(h.manager->unload_all(10s));
}

// ---- the entry point ------------------------------------------------------------------------------------

TEST(HostileFiles, EntryPointThatNeverReturnsIsRefusedKeptMappedAndTheOthersLoad) {
    Harness h;
    const fs::path release = h.tmp / "release";
    ::setenv("TICKHOST_FX_RELEASE", release.c_str(), 1);
    h.config.default_timeout = 1s;
    h.plugin("hello").interval = 10ms;
    h.add(fixture("fx_bad_entry_hangs"));
    h.add(HELLO_SO);
    h.start();
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(h.manager->load_directory(), 1u) << h.log_text();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 15s) << "bounded by default_timeout (generously)";
    const fs::path file = h.dir / "fx_bad_entry_hangs.so";
    if (tickhost::test::isolated()) {
        // Isolated, the entry point that never returns goes with its process: killed, its copy removed.
        EXPECT_TRUE(h.logged(file.string(),
                             "TH_E_ENTRY_TIMEOUT: tickhost_plugin_entry did not return within 1s; the "
                             "plugin is refused and its process was killed"))
            << h.log_text();
        EXPECT_TRUE(h.logged("raise [plugins.fx_bad_entry_hangs] timeout in host.toml")) << h.log_text();
        ASSERT_TRUE(eventually([&] { return h.logged("[plugin.hello] [greet] hello, world #2"); })) << h.log_text();
        for (auto& e : fs::directory_iterator(h.manager->shadow_dir()))
            EXPECT_NE(e.path().filename().string().rfind("fx_bad_entry_hangs.", 0), 0u) << e.path();
        EXPECT_EQ(tickhost::test::worker_pids().size(), 1u) << "hello's process only";
        write_file(release, "");
        ::unsetenv("TICKHOST_FX_RELEASE");
        return;
    }
    EXPECT_TRUE(h.logged(file.string(),
                         "TH_E_ENTRY_TIMEOUT: tickhost_plugin_entry did not return within 1s; the "
                         "plugin is refused and its library stays mapped until the host exits"))
        << h.log_text();
    EXPECT_TRUE(h.logged("raise [plugins.fx_bad_entry_hangs] timeout in host.toml")) << h.log_text();
    ASSERT_TRUE(eventually([&] { return h.logged("[plugin.hello] [greet] hello, world #2"); })) << h.log_text();
    // Its code may still run: its copy stays, mapped, even after the entry point finally returns.
    fs::path kept;
    for (auto& e : fs::directory_iterator(h.manager->shadow_dir()))
        if (e.path().filename().string().rfind("fx_bad_entry_hangs.", 0) == 0) kept = e.path();
    ASSERT_FALSE(kept.empty());
    EXPECT_TRUE(mapped(kept));
    write_file(release, "");
    std::this_thread::sleep_for(50ms);
    EXPECT_TRUE(mapped(kept));
    ::unsetenv("TICKHOST_FX_RELEASE");
}

TEST(HostileFiles, EntryPointBoundFollowsThePluginsTimeoutByFileName) {
    Harness h;
    const fs::path release = h.tmp / "release";
    ::setenv("TICKHOST_FX_RELEASE", release.c_str(), 1);
    h.plugin("fx_bad_entry_hangs").timeout = 200ms;  // default_timeout stays 5 s
    auto err = h.load(h.add(fixture("fx_bad_entry_hangs")));
    ASSERT_TRUE(err);
    EXPECT_EQ(err->code, TH_E_ENTRY_TIMEOUT);
    EXPECT_NE(err->message().find("did not return within 200ms"), std::string::npos) << err->message();
    write_file(release, "");
    ::unsetenv("TICKHOST_FX_RELEASE");
}

// ---- Go runtimes (each test owns its process's one runtime: ctest runs each test on its own) ----------

TEST(HostileFiles, GoPluginAfterARemovedGoPluginAsksForARestart) {
    Harness h;
    h.plugin("gofake").interval = 1h;
    const fs::path first = h.add(fixture("fx_gofake_v1"), "first.so");
    ASSERT_FALSE(h.load(first)) << h.log_text();
    fs::remove(first);
    EXPECT_FALSE(h.manager->sync(first));
    EXPECT_FALSE(h.manager->plugin("gofake"));
    const fs::path second = h.add(fixture("fx_gofake_v2"), "second.so");
    if (tickhost::test::isolated()) {
        // Isolated, the first one's runtime went with its process: the second loads, no restart needed.
        ASSERT_FALSE(h.manager->sync(second)) << h.log_text();
        EXPECT_EQ(h.manager->plugin("gofake")->version, "2.0.0");
        EXPECT_EQ(file_count(h.manager->shadow_dir()), 1u) << "only the second one's copy is left";
        return;
    }
    auto err = h.manager->sync(second);
    ASSERT_TRUE(err);
    EXPECT_EQ(err->code, TH_E_NOT_ALLOWED);
    EXPECT_NE(err->message().find("a Go runtime from " + first.string() +
                                  " is already in this process (its plugin was removed, but a Go runtime cannot be "
                                  "unloaded); restart the host to load " +
                                  second.string()),
              std::string::npos)
        << err->message();
    EXPECT_EQ(file_count(h.manager->shadow_dir()), 1u) << "only the first one's copy (mapped for good) is left";
}

TEST(HostileFiles, SecondGoPluginWhileTheFirstRunsSaysItRuns) {
    Harness h;
    h.plugin("gofake").interval = 1h;
    const fs::path first = h.add(fixture("fx_gofake_v1"), "first.so");
    ASSERT_FALSE(h.load(first)) << h.log_text();
    auto err = h.load(h.add(fixture("fx_gofake_v2"), "second.so"));
    ASSERT_TRUE(err);
    if (tickhost::test::isolated()) {
        // Isolated, two Go runtimes run in two processes: the second is refused only for its name, which
        // the first one has.
        EXPECT_EQ(err->code, TH_E_DUPLICATE_NAME) << err->message();
        EXPECT_NE(err->message().find("plugin name 'gofake' is already used by " + first.string()), std::string::npos)
            << err->message();
        return;
    }
    EXPECT_EQ(err->code, TH_E_NOT_ALLOWED);
    EXPECT_NE(err->message().find("one already runs in this process (loaded from " + first.string() + ")"),
              std::string::npos)
        << err->message();
}
