// A plugin_dir in a temporary folder, a Tickers and a PluginManager on it, and the log captured; shared by
// the plugin, hostile-plugin and stress tests. With TICKHOST_TEST_ISOLATION=process (test_util.hpp) every
// plugin runs in a process of its own; either way, when the harness goes, nothing of the plugins may be
// left: no child process (a worker, a zombie), no descriptor, no shadow cache.
#pragma once

#include <tickhost/config.hpp>
#include <tickhost/logging.hpp>
#include <tickhost/plugin_manager.hpp>
#include <tickhost/tickers.hpp>

#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>

#include <fstream>
#include <memory>
#include <optional>
#include <string>

#include "test_util.hpp"

namespace tickhost::test {

inline std::filesystem::path fixture(const std::string& name) {
    return std::filesystem::path(FIXTURE_DIR) / (name + ".so");
}

struct Harness {
    TempDir tmp;
    std::filesystem::path dir = tmp / "plugins";
    HostConfig config;
    std::chrono::nanoseconds abandon_after = std::chrono::seconds(5);  // Tickers::Options::abandon_after
    std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(4000);
    std::unique_ptr<Tickers> tickers;
    std::unique_ptr<PluginManager> manager;

    int fds_before = open_fd_count();
    bool check_fds = true;  // off where a runtime in this process keeps descriptors for good (a Go plugin's)

    Harness() {
        std::filesystem::create_directories(dir);
        config.plugin_dir = dir;
        config.shadow_dir = tmp / "shadow";
        config.workers = 2;
        config.default_timeout = std::chrono::seconds(5);
        config.shutdown_timeout = std::chrono::seconds(10);
        if (isolated()) config.isolation = Isolation::process;
        set_log_sinks({sink}, spdlog::level::debug);
    }
    ~Harness() {
        const std::filesystem::path shadow = manager ? manager->shadow_dir() : std::filesystem::path();
        manager.reset();
        tickers.reset();
        if (!shadow.empty()) EXPECT_FALSE(std::filesystem::exists(shadow)) << "the shadow cache was left behind";
        for (auto& c : child_processes()) ADD_FAILURE() << "a child process was left behind: " << c;
        // Polled: a plugin thread left running in-process (a hung init) may hold a file open for a moment.
        if (check_fds)
            EXPECT_TRUE(eventually([&] { return open_fd_count() <= fds_before; }, std::chrono::seconds(5)))
                << "file descriptors leaked: " << fds_before << " before, " << open_fd_count() << " after";
    }
    // Copies a built .so into plugin_dir under `as` (default: its own name).
    std::filesystem::path add(const std::filesystem::path& so, std::string as = "") {
        std::filesystem::path to = dir / (as.empty() ? so.filename().string() : as);
        std::filesystem::copy_file(so, to, std::filesystem::copy_options::overwrite_existing);
        return to;
    }
    PluginSettings& plugin(const std::string& name) { return config.plugins[name]; }
    void start() {
        Tickers::Options o;
        o.workers = config.workers;
        o.default_timeout = config.default_timeout;
        o.abandon_after = abandon_after;
        config.abandon_after = abandon_after;  // what an isolated plugin's process is killed after
        tickers = std::make_unique<Tickers>(o);
        manager = std::make_unique<PluginManager>(*tickers, config);
        tickers->start();
    }
    std::optional<LoadError> load(const std::filesystem::path& file) {
        if (!manager) start();
        return manager->load(file);
    }
    bool logged(const std::string& a, const std::string& b = "") const {
        for (auto& line : sink->last_formatted())
            if (line.find(a) != std::string::npos && line.find(b) != std::string::npos) return true;
        return false;
    }
    size_t count_logged(const std::string& a) const {
        size_t n = 0;
        for (auto& line : sink->last_formatted()) n += line.find(a) != std::string::npos;
        return n;
    }
    std::string log_text() const {
        std::string all;
        for (auto& line : sink->last_formatted()) all += line;
        return all;
    }
};

// True if `p` is mapped into this process.
inline bool mapped(const std::filesystem::path& p) {
    std::ifstream maps("/proc/self/maps");
    std::string line;
    while (std::getline(maps, line))
        if (line.find(p.string()) != std::string::npos) return true;
    return false;
}

// Fails with the expected code and a message containing `text`; nothing gets loaded, the log names the file.
inline void load_should_fail(Harness& h, const std::filesystem::path& file, th_status code, const std::string& text) {
    if (!h.manager) h.start();
    const size_t before = h.manager->plugins().size();
    auto err = h.load(file);
    ASSERT_TRUE(err.has_value()) << file << " loaded but should not have";
    EXPECT_EQ(err->code, code) << err->message();
    EXPECT_NE(err->message().find(text), std::string::npos) << err->message();
    EXPECT_TRUE(h.logged(file.string(), err->code_name)) << "the log line names the file and the code";
    EXPECT_EQ(h.manager->plugins().size(), before) << "nothing new was loaded";
}

}  // namespace tickhost::test
