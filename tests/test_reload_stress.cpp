// Stress: a plugin replaced 1,000 times (TICKHOST_STRESS_CYCLES) while 1,000 tasks of another plugin run.
// Afterwards nothing may have leaked: no file descriptor, no shadow copy, no mapping beyond what is loaded.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <set>

#include "plugin_harness.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using tickhost::test::fixture;
using tickhost::test::Harness;

namespace {

size_t open_fds() {
    size_t n = 0;
    for (auto& e : fs::directory_iterator("/proc/self/fd")) (void)e, ++n;
    return n;
}

size_t file_count(const fs::path& dir) {
    return size_t(std::distance(fs::directory_iterator(dir), fs::directory_iterator()));
}

// Distinct files under `dir` mapped: the images of the plugin versions loaded (in this process or, isolated,
// in their own).
size_t mapped_count(const fs::path& dir) { return tickhost::test::images_mapped(dir); }

int cycles() {
    const char* env = std::getenv("TICKHOST_STRESS_CYCLES");
    return env && std::atoi(env) > 0 ? std::atoi(env) : 1000;
}

}  // namespace

TEST(ReloadStress, ThousandReplaceCyclesWhileThousandTasksRunLeakNothing) {
    Harness h;
    h.config.workers = 2;
    h.plugin("hostile").config.set("behaviours", std::string("spin"));
    h.plugin("hostile").config.set("spin_tasks", int64_t(1000));
    h.plugin("hostile").config.set("spin_every", std::string("100ms"));
    h.plugin("versioned").interval = 5ms;
    const fs::path v[2] = {fixture("fx_versioned_v1"), fixture("fx_versioned_v2")};
    const fs::path file = h.dir / "versioned.so";
    const fs::path staging = h.dir / ".versioned.so.tmp";  // a hidden name: never a plugin file
    fs::copy_file(v[0], file);
    ASSERT_FALSE(h.load(h.add(fixture("fx_hostile"))));
    ASSERT_FALSE(h.load(file));
    auto spin = h.manager->plugin("hostile")->tasks;
    ASSERT_EQ(spin.size(), 1000u);
    const fs::path shadow = h.manager->shadow_dir();
    const size_t fds = open_fds();

    const int n = cycles();
    for (int i = 1; i <= n; ++i) {
        fs::copy_file(v[i % 2], staging, fs::copy_options::overwrite_existing);
        fs::rename(staging, file);
        auto err = h.manager->sync(file);
        ASSERT_FALSE(err) << "cycle " << i << ": " << err->message();
        ASSERT_EQ(h.manager->plugin("versioned")->version, i % 2 ? "2.0.0" : "1.0.0") << "cycle " << i;
    }

    uint64_t runs = 0, failures = 0;
    for (auto& t : spin) {
        auto st = h.tickers->stats(t.id);
        ASSERT_TRUE(st);
        runs += st->runs;
        failures += st->failures;
    }
    std::printf("[ stress ] %d replace cycles, %llu runs of 1000 spinning tasks meanwhile\n", n,
                static_cast<unsigned long long>(runs));
    EXPECT_GT(runs, 0u) << "the 1,000 tasks kept running";
    EXPECT_EQ(failures, 0u);
    EXPECT_EQ(h.manager->plugins().size(), 2u);
    EXPECT_EQ(open_fds(), fds) << "file descriptors leaked";
    EXPECT_EQ(file_count(shadow), 2u) << "shadow copies left over";
    EXPECT_EQ(mapped_count(shadow), 2u) << "mapped shadow copies are not back to what is loaded";
    EXPECT_TRUE(h.manager->unload_all(30s));
    EXPECT_EQ(file_count(shadow), 0u);
    EXPECT_EQ(mapped_count(shadow), 0u);
    EXPECT_FALSE(h.logged("stays mapped")) << h.log_text();
}
