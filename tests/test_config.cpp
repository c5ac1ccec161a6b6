// Tests for host.toml parsing and validation (host/src/config.cpp).
#include "tickhost/config.hpp"
#include "tickhost/plugin_manager.hpp"
#include "tickhost/tickers.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <unistd.h>

namespace tickhost {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// A fresh folder under the system temp dir, removed again at the end of the test.
class TempDir {
public:
    TempDir() {
        std::string tmpl = (fs::temp_directory_path() / "tickhost_config_XXXXXX").string();
        if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
        path_ = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    const fs::path& path() const { return path_; }
    fs::path write(const std::string& name, const std::string& text) const {
        fs::path p = path_ / name;
        std::ofstream(p) << text;
        return p;
    }

private:
    fs::path path_;
};

// parse_config(text) must throw a ConfigError at line:column whose what() contains `expected`.
::testing::AssertionResult load_should_fail(const std::string& text, const std::string& expected, uint32_t line,
                                            uint32_t column) {
    try {
        parse_config(text, "host.toml");
    } catch (const ConfigError& e) {
        std::string what = e.what();
        std::string prefix = "host.toml:" + std::to_string(line) + ":" + std::to_string(column) + ": ";
        if (what.rfind(prefix, 0) != 0)
            return ::testing::AssertionFailure() << "expected prefix '" << prefix << "', got: " << what;
        if (what.find(expected) == std::string::npos)
            return ::testing::AssertionFailure() << "expected '" << expected << "' in: " << what;
        return ::testing::AssertionSuccess();
    } catch (const std::exception& e) {
        return ::testing::AssertionFailure() << "wrong exception type: " << e.what();
    }
    return ::testing::AssertionFailure() << "no error for:\n" << text;
}

HostConfig parse(const std::string& text) { return parse_config(text, "host.toml"); }

std::string read_text(const fs::path& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

fs::path cwd_path(const std::string& rel) { return (fs::current_path() / rel).lexically_normal(); }

// ---------------------------------------------------------------- whole files

TEST(Config, FullFileWithEveryKey) {
    TempDir dir;
    fs::path file = dir.write("host.toml", R"(
[host]
plugin_dir = "plugins.d"
workers = 2
default_timeout = "15s"
shutdown_timeout = "1m"
log_level = "debug"
log_file = "logs/tickhost.log"
log_sink = "rotating"
log_max_size = "20MiB"
log_max_files = 7
shadow_dir = "shadow"

[plugins.heartbeat]
enabled = false
interval = "1s"
timeout = "2s"
[plugins.heartbeat.tasks.beat]
interval = "500ms"
timeout = "750ms"
[plugins.heartbeat.tasks.slow]
timeout = "1m30s"
[plugins.heartbeat.config]
path = "/tmp/heartbeat"
nested.depth = 3
hosts = ["a", "b"]

[plugins.other-plugin_2]
)");
    HostConfig c = load_config(file);
    fs::path folder = fs::absolute(dir.path());
    EXPECT_EQ(c.source, file);
    EXPECT_EQ(c.plugin_dir, folder / "plugins.d");
    EXPECT_EQ(c.workers, 2u);
    EXPECT_EQ(c.default_timeout, 15s);
    EXPECT_EQ(c.shutdown_timeout, 1min);
    EXPECT_EQ(c.log_level, "debug");
    EXPECT_EQ(c.log_sink, LogSink::rotating);
    EXPECT_EQ(c.log_file, folder / "logs" / "tickhost.log");
    EXPECT_EQ(c.log_max_size, 20u * 1024 * 1024);
    EXPECT_EQ(c.log_max_files, 7u);
    EXPECT_EQ(c.shadow_dir, folder / "shadow");

    ASSERT_EQ(c.plugins.size(), 2u);
    const PluginSettings& hb = c.plugin("heartbeat");
    EXPECT_FALSE(hb.enabled);
    EXPECT_EQ(hb.interval, Duration(1s));
    EXPECT_EQ(hb.timeout, Duration(2s));
    ASSERT_EQ(hb.tasks.size(), 2u);
    EXPECT_EQ(hb.tasks.at("beat").interval, Duration(500ms));
    EXPECT_EQ(hb.tasks.at("beat").timeout, Duration(750ms));
    EXPECT_EQ(hb.tasks.at("slow").interval, std::nullopt);
    EXPECT_EQ(hb.tasks.at("slow").timeout, Duration(90s));
    PluginValues expected;
    expected.set("path", std::string("/tmp/heartbeat"));
    expected.set("nested.depth", int64_t{3});
    expected.set("hosts.0", std::string("a"));
    expected.set("hosts.1", std::string("b"));
    EXPECT_EQ(hb.config, expected);

    const PluginSettings& other = c.plugin("other-plugin_2");
    EXPECT_EQ(other, PluginSettings{});
}

TEST(Config, DefaultsWhenHostIsAbsent) {
    HostConfig c = parse("");
    HostConfig d;
    EXPECT_EQ(c.source, fs::path("host.toml"));
    EXPECT_EQ(c.plugin_dir, cwd_path("plugins"));  // the default is relative to host.toml's folder too
    EXPECT_EQ(c.workers, d.workers);
    EXPECT_EQ(c.default_timeout, 10s);
    EXPECT_EQ(c.shutdown_timeout, 30s);
    EXPECT_EQ(c.log_level, "info");
    EXPECT_EQ(c.log_sink, LogSink::console);
    EXPECT_TRUE(c.log_file.empty());
    EXPECT_EQ(c.log_max_size, 10u * 1024 * 1024);
    EXPECT_EQ(c.log_max_files, 5u);
    EXPECT_TRUE(c.shadow_dir.empty());
    EXPECT_TRUE(c.plugins.empty());
}

TEST(Config, EmptyHostTableAndEmptyPluginsTable) {
    HostConfig c = parse("[host]\n[plugins]\n");
    EXPECT_EQ(c.plugin_dir, cwd_path("plugins"));
    EXPECT_TRUE(c.plugins.empty());
}

TEST(Config, AbsolutePathsAreKept) {
    HostConfig c = parse("[host]\nplugin_dir = \"/opt/p\"\nlog_file = \"/var/log/t.log\"\nshadow_dir = \"/run/t\"\n");
    EXPECT_EQ(c.plugin_dir, fs::path("/opt/p"));
    EXPECT_EQ(c.log_file, fs::path("/var/log/t.log"));
    EXPECT_EQ(c.shadow_dir, fs::path("/run/t"));
}

TEST(Config, ParseConfigResolvesAgainstTheSourceFolder) {
    HostConfig c = parse_config("[host]\nplugin_dir = \"../p\"\nlog_file = \"./x.log\"\n", "etc/tickhost/host.toml");
    EXPECT_EQ(c.source, fs::path("etc/tickhost/host.toml"));
    EXPECT_EQ(c.plugin_dir, cwd_path("etc/p"));
    EXPECT_EQ(c.log_file, cwd_path("etc/tickhost/x.log"));
}

TEST(Config, LogFileAloneSelectsTheFileSink) {
    EXPECT_EQ(parse("[host]\nlog_file = \"t.log\"\n").log_sink, LogSink::file);
    EXPECT_EQ(parse("[host]\nlog_file = \"t.log\"\nlog_sink = \"console\"\n").log_sink, LogSink::console);
    EXPECT_EQ(parse("[host]\nlog_sink = \"file\"\nlog_file = \"t.log\"\n").log_sink, LogSink::file);
}

TEST(Config, WorkersRange) {
    EXPECT_EQ(parse("[host]\nworkers = 0\n").workers, 0u);
    EXPECT_EQ(parse("[host]\nworkers = 1024\n").workers, 1024u);
    EXPECT_TRUE(load_should_fail("[host]\nworkers = 1025\n", "host.workers: must be 0..1024, got 1025", 2, 11));
    EXPECT_TRUE(load_should_fail("[host]\nworkers = -1\n", "host.workers: must be 0..1024, got -1", 2, 11));
}

TEST(Config, LogMaxSizeForms) {
    auto size = [](const std::string& v) { return parse("[host]\nlog_max_size = " + v + "\n").log_max_size; };
    EXPECT_EQ(size("4096"), 4096u);
    EXPECT_EQ(size("\"100B\""), 100u);
    EXPECT_EQ(size("\"2KiB\""), 2048u);
    EXPECT_EQ(size("\"3MiB\""), 3u * 1024 * 1024);
    EXPECT_EQ(size("\"1GiB\""), 1024u * 1024 * 1024);
    EXPECT_EQ(size("\"2KB\""), 2000u);
    EXPECT_EQ(size("\"3MB\""), 3000000u);
    EXPECT_EQ(size("\"1GB\""), 1000000000u);
    EXPECT_TRUE(load_should_fail("[host]\nlog_max_size = \"10 MiB\"\n", "\"10 MiB\" is not a size", 2, 16));
    EXPECT_TRUE(load_should_fail("[host]\nlog_max_size = \"10mb\"\n", "host.log_max_size: \"10mb\" is not a size", 2, 16));
    EXPECT_TRUE(load_should_fail("[host]\nlog_max_size = \"MiB\"\n", "is not a size", 2, 16));
    EXPECT_TRUE(load_should_fail("[host]\nlog_max_size = \"99999999999GiB\"\n", "is not a size", 2, 16));
    EXPECT_TRUE(load_should_fail("[host]\nlog_max_size = 0\n", "host.log_max_size: must be > 0", 2, 16));
    EXPECT_TRUE(load_should_fail("[host]\nlog_max_size = \"0B\"\n", "host.log_max_size: must be > 0", 2, 16));
    EXPECT_TRUE(load_should_fail("[host]\nlog_max_size = 1.5\n", "host.log_max_size: must be a size", 2, 16));
}

TEST(Config, LogMaxFilesRange) {
    EXPECT_EQ(parse("[host]\nlog_max_files = 1000\n").log_max_files, 1000u);
    EXPECT_TRUE(load_should_fail("[host]\nlog_max_files = 0\n", "host.log_max_files: must be 1..1000, got 0", 2, 17));
    EXPECT_TRUE(load_should_fail("[host]\nlog_max_files = 1001\n", "must be 1..1000", 2, 17));
}

TEST(Config, LogLevelAndSinkValues) {
    for (const char* level : {"trace", "debug", "info", "warn", "error", "critical", "off"})
        EXPECT_EQ(parse(std::string("[host]\nlog_level = \"") + level + "\"\n").log_level, level);
    EXPECT_TRUE(load_should_fail("[host]\nlog_level = \"warning\"\n", "host.log_level: \"warning\" is not valid", 2, 13));
    EXPECT_TRUE(load_should_fail("[host]\nlog_level = \"inof\"\n", "did you mean 'info'?", 2, 13));
    EXPECT_TRUE(load_should_fail("[host]\nlog_sink = \"syslog\"\n", "valid values: console, file, rotating", 2, 12));
}

TEST(Config, FileAndRotatingSinksNeedALogFile) {
    EXPECT_TRUE(load_should_fail("[host]\nlog_sink = \"file\"\n", "host.log_sink: log_sink \"file\" needs host.log_file", 2, 12));
    EXPECT_TRUE(load_should_fail("[host]\n\nlog_sink = \"rotating\"\n", "\"rotating\" needs host.log_file", 3, 12));
}

TEST(Config, EmptyPathsAreRejected) {
    EXPECT_TRUE(load_should_fail("[host]\nplugin_dir = \"\"\n", "host.plugin_dir: must not be empty", 2, 14));
    EXPECT_TRUE(load_should_fail("[host]\nlog_file = \" \"\n", "host.log_file: must not be empty", 2, 12));
    EXPECT_TRUE(load_should_fail("[host]\nshadow_dir = \"\"\n", "host.shadow_dir: must not be empty", 2, 14));
}

TEST(Config, PluginOverridesAndTasks) {
    HostConfig c = parse(R"(
[plugins.a]
interval = "2h30m"
[plugins.a.tasks.t1]
interval = "100us"
[plugins.b]
enabled = true
timeout = "1.5s"
tasks = { x = { timeout = "10ns" }, y = {} }
)");
    EXPECT_EQ(c.plugin("a").interval, Duration(2h + 30min));
    EXPECT_EQ(c.plugin("a").timeout, std::nullopt);
    EXPECT_EQ(c.plugin("a").tasks.at("t1").interval, Duration(100us));
    EXPECT_TRUE(c.plugin("b").enabled);
    EXPECT_EQ(c.plugin("b").timeout, Duration(1500ms));
    EXPECT_EQ(c.plugin("b").tasks.at("x").timeout, Duration(10ns));
    EXPECT_EQ(c.plugin("b").tasks.at("y"), TaskSettings{});
}

TEST(Config, PluginLookupFallsBackToDefaults) {
    HostConfig c = parse("[plugins.a]\nenabled = false\n");
    EXPECT_FALSE(c.plugin("a").enabled);
    const PluginSettings& missing = c.plugin("nope");
    EXPECT_EQ(missing, PluginSettings{});
    EXPECT_TRUE(missing.enabled);
    EXPECT_EQ(&missing, &HostConfig{}.plugin("other"));  // one shared default
}

// ---------------------------------------------------------------- durations

TEST(Duration, ParsesValidForms) {
    const std::pair<const char*, Duration> cases[] = {
        {"10ns", 10ns},
        {"100us", 100us},
        {"7\xC2\xB5s", 7us},  // micro sign
        {"7\xCE\xBCs", 7us},  // greek mu
        {"250ms", 250ms},
        {"10s", 10s},
        {"5m", 5min},
        {"1h", 1h},
        {"1.5s", 1500ms},
        {"0.5ms", 500us},
        {"0.25h", 15min},
        {"1.000000001s", 1000000001ns},
        {"1.0000000019s", 1000000001ns},  // truncated below a nanosecond
        {"2h30m", 2h + 30min},
        {"1m30s", 90s},
        {"1h2m3s4ms5us6ns", 1h + 2min + 3s + 4ms + 5us + 6ns},
        {"1s500ms", 1500ms},
        {"0s", 0s},
        {"007s", 7s},
        {"  10s\t", 10s},  // surrounding whitespace is trimmed
        {"9223372036854775807ns", Duration::max()},
        {"2562047h47m16.854775807s", Duration::max()},
    };
    for (const auto& [text, want] : cases) {
        std::optional<Duration> got = parse_duration(text);
        ASSERT_TRUE(got.has_value()) << text;
        EXPECT_EQ(got->count(), want.count()) << text;
    }
}

TEST(Duration, RejectsInvalidForms) {
    for (const char* text : {"", " ", "10", "s", "-1s", "+1s", "10 s", "1h 30m", "1.5", ".5s", "1.s", "1..5s", "10x",
                             "10S", "1sec", "1d", "10 parsecs", "30m2h", "1s1s", "1ms1s", "1h-5m", "1e3s", "0x10s",
                             "9223372036854775808ns", "2562047h47m16.854775808s", "2562048h", "99999999999999999999s",
                             "9223372036854775807ns1ns"})
        EXPECT_EQ(parse_duration(text), std::nullopt) << '"' << text << '"';
}

TEST(Duration, FormatsShortestReadableForm) {
    const std::pair<Duration, const char*> cases[] = {
        {0s, "0s"},
        {1ns, "1ns"},
        {999ns, "999ns"},
        {1us, "1us"},
        {1500ns, "1.5us"},
        {1500us, "1.5ms"},
        {250ms, "250ms"},
        {1001us, "1.001ms"},
        {1500ms, "1.5s"},
        {10s, "10s"},
        {90s, "1m30s"},
        {90500ms, "1m30.5s"},
        {5min, "5m"},
        {1h, "1h"},
        {2h + 30min, "2h30m"},
        {1h + 500ms, "1h0.5s"},
        {1h + 1ns, "1h0.000000001s"},
        {-250ms, "-250ms"},
        {Duration::max(), "2562047h47m16.854775807s"},
        {Duration::min(), "-2562047h47m16.854775808s"},
    };
    for (const auto& [d, want] : cases) EXPECT_EQ(format_duration(d), want) << d.count();
}

TEST(Duration, FormatRoundTripsThroughParse) {
    std::mt19937_64 rng(42);
    std::vector<int64_t> values = {0, 1, 999, 1000, 1001, 999999, 1000000, 59999999999, 60000000000, 3599999999999,
                                   3600000000000, Duration::max().count()};
    for (int i = 0; i < 2000; ++i) {
        int shift = static_cast<int>(rng() % 63);
        values.push_back(static_cast<int64_t>(rng() >> (1 + shift)));
    }
    for (int64_t v : values) {
        std::string text = format_duration(Duration(v));
        std::optional<Duration> back = parse_duration(text);
        ASSERT_TRUE(back.has_value()) << text;
        EXPECT_EQ(back->count(), v) << text;
    }
}

// ---------------------------------------------------------------- errors

TEST(ConfigError, WhatIsFileLineColumnMessage) {
    try {
        parse_config("\n[plugins.heartbeat]\ninterval = \"10 parsecs\"\n", "conf/host.toml");
        FAIL() << "no error";
    } catch (const ConfigError& e) {
        EXPECT_STREQ(e.what(), "conf/host.toml:3:12: plugins.heartbeat.interval: \"10 parsecs\" is not a duration "
                               "(write it with a unit: \"250ms\", \"10s\", \"5m\", \"1h\")");
        EXPECT_EQ(e.file(), "conf/host.toml");
        EXPECT_EQ(e.line(), 3u);
        EXPECT_EQ(e.column(), 12u);
        EXPECT_EQ(e.key(), "plugins.heartbeat.interval");
        EXPECT_EQ(e.message(), std::string(e.what()).substr(std::string("conf/host.toml:3:12: ").size()));
    }
}

TEST(ConfigError, SyntaxErrorHasLineAndColumn) {
    EXPECT_TRUE(load_should_fail("[host]\nworkers = \n", "expected value", 2, 11));
    EXPECT_TRUE(load_should_fail("[host]\nworkers = 3\nworkers = 4\n", "workers", 3, 11));
    EXPECT_TRUE(load_should_fail("[host\n", "", 1, 6));
    try {
        parse("\n\nlog_level = \"info\n");
        FAIL() << "no error";
    } catch (const ConfigError& e) {
        EXPECT_EQ(e.line(), 3u);
        EXPECT_GT(e.column(), 0u);
        EXPECT_EQ(e.key(), "");
    }
}

TEST(ConfigError, UnknownKeySuggestsTheClosestOne) {
    EXPECT_TRUE(load_should_fail("[host]\ndefualt_timeout = \"1s\"\n", "host.defualt_timeout: unknown key (did you mean 'default_timeout'?)", 2, 1));
    EXPECT_TRUE(load_should_fail("[host]\nworker = 1\n", "did you mean 'workers'?", 2, 1));
    EXPECT_TRUE(load_should_fail("[plugins.x]\nintervall = \"1s\"\n", "plugins.x.intervall: unknown key (did you mean 'interval'?)", 2, 1));
    EXPECT_TRUE(load_should_fail("[plugins.x]\nenable = true\n", "did you mean 'enabled'?", 2, 1));
    EXPECT_TRUE(load_should_fail("[plugins.x.tasks.t]\ntimout = \"1s\"\n", "plugins.x.tasks.t.timout: unknown key (did you mean 'timeout'?)", 2, 1));
    EXPECT_TRUE(load_should_fail("[host]\ncrash_limt = 3\n", "host.crash_limt: unknown key (did you mean 'crash_limit'?)", 2, 1));
    EXPECT_TRUE(load_should_fail("[plugins.x]\nisolaton = \"process\"\n", "did you mean 'isolation'?", 2, 1));
    EXPECT_TRUE(load_should_fail("[plugins.x]\nprocess_max = 1\n", "did you mean 'processes_max'?", 2, 1));
}

TEST(ConfigError, UnknownKeyListsValidKeysWhenNothingIsClose) {
    EXPECT_TRUE(load_should_fail("[host]\ncolour = 1\n", "valid keys: plugin_dir, workers, default_timeout", 2, 1));
    EXPECT_TRUE(load_should_fail("[plugins.x]\nfoo = 1\n", "valid keys: enabled, interval, timeout, tasks, config", 2, 1));
    EXPECT_TRUE(load_should_fail("[plugins.x.tasks.\"a.b\"]\nfoo = 1\n", "plugins.x.tasks.\"a.b\".foo: unknown key (valid keys: interval, timeout, jitter, align)", 2, 1));
}

TEST(ConfigError, UnknownTableSuggestsTheClosestOne) {
    EXPECT_TRUE(load_should_fail("[hots]\nworkers = 2\n", "hots: unknown table (did you mean 'host'?)", 1, 2));
    EXPECT_TRUE(load_should_fail("[plugin.x]\n", "plugin: unknown table (did you mean 'plugins'?)", 1, 2));
    EXPECT_TRUE(load_should_fail("[logging]\n", "unknown table (valid tables: host, plugins)", 1, 2));
    EXPECT_TRUE(load_should_fail("hosts = 1\n", "hosts: unknown key (did you mean 'host'?)", 1, 1));
    EXPECT_TRUE(load_should_fail("workers = 2\n", "workers: unknown top-level key (did you mean to put it under [host]?)", 1, 1));
}

TEST(ConfigError, FirstErrorInFileOrderIsReported) {
    // "zzz" sorts after "aaa" but comes first in the file.
    EXPECT_TRUE(load_should_fail("[host]\nzzz = 1\naaa = 1\n", "host.zzz", 2, 1));
}

TEST(ConfigError, WrongTypes) {
    EXPECT_TRUE(load_should_fail("[host]\nworkers = \"two\"\n", "host.workers: must be an integer, got string \"two\"", 2, 11));
    EXPECT_TRUE(load_should_fail("[host]\nworkers = 2.0\n", "host.workers: must be an integer", 2, 11));
    EXPECT_TRUE(load_should_fail("[plugins.x]\nenabled = 1\n", "plugins.x.enabled: must be a boolean", 2, 11));
    EXPECT_TRUE(load_should_fail("[plugins.x]\nenabled = \"yes\"\n", "must be a boolean (true or false), got string \"yes\"", 2, 11));
    EXPECT_TRUE(load_should_fail("[host]\nplugin_dir = 5\n", "host.plugin_dir: must be a string, got integer 5", 2, 14));
    EXPECT_TRUE(load_should_fail("[host]\nlog_level = true\n", "host.log_level: must be a string", 2, 13));
    EXPECT_TRUE(load_should_fail("[host]\ndefault_timeout = true\n", "host.default_timeout: must be a duration string like \"10s\"", 2, 19));
    EXPECT_TRUE(load_should_fail("[host]\nlog_file = [\"a\"]\n", "host.log_file: must be a string, got an array", 2, 12));
}

TEST(ConfigError, WrongStructure) {
    EXPECT_TRUE(load_should_fail("host = 1\n", "host: must be a table, got integer 1", 1, 8));
    EXPECT_TRUE(load_should_fail("plugins = \"x\"\n", "plugins: must be a table", 1, 11));
    EXPECT_TRUE(load_should_fail("[plugins]\nx = 1\n", "plugins.x: must be a table", 2, 5));
    EXPECT_TRUE(load_should_fail("[[plugins.x]]\n", "plugins.x: must be a table, got an array", 1, 1));
    EXPECT_TRUE(load_should_fail("[plugins.x]\ntasks = 1\n", "plugins.x.tasks: must be a table", 2, 9));
    EXPECT_TRUE(load_should_fail("[plugins.x]\ntasks.t = 1\n", "plugins.x.tasks.t: must be a table", 2, 11));
    EXPECT_TRUE(load_should_fail("[plugins.x]\nconfig = [1]\n", "plugins.x.config: must be a table", 2, 10));
}

TEST(ConfigError, IntegerDurationNeedsAUnit) {
    EXPECT_TRUE(load_should_fail("[host]\ndefault_timeout = 10\n", "host.default_timeout: a duration needs a unit (write it as a string, e.g. \"10s\")", 2, 19));
    EXPECT_TRUE(load_should_fail("[plugins.x]\ninterval = 5\n", "plugins.x.interval: a duration needs a unit (write it as a string, e.g. \"5s\")", 2, 12));
    EXPECT_TRUE(load_should_fail("[plugins.x.tasks.t]\ntimeout = 1.5\n", "a duration needs a unit", 2, 11));
}

TEST(ConfigError, BadDurationText) {
    EXPECT_TRUE(load_should_fail("[host]\nshutdown_timeout = \"10 s\"\n", "host.shutdown_timeout: \"10 s\" is not a duration (write it with a unit", 2, 20));
    EXPECT_TRUE(load_should_fail("[plugins.x]\ntimeout = \"10\"\n", "plugins.x.timeout: \"10\" is not a duration", 2, 11));
    EXPECT_TRUE(load_should_fail("[plugins.x]\ntimeout = \"3000000h\"\n", "\"3000000h\" is not a duration", 2, 11));
}

TEST(ConfigError, ZeroAndNegativeDurations) {
    EXPECT_TRUE(load_should_fail("[host]\ndefault_timeout = \"0s\"\n", "host.default_timeout: must be > 0, got \"0s\"", 2, 19));
    EXPECT_TRUE(load_should_fail("[host]\nshutdown_timeout = \"0.0h\"\n", "must be > 0", 2, 20));
    EXPECT_TRUE(load_should_fail("[plugins.x]\ninterval = \"-1s\"\n", "plugins.x.interval: must be > 0, got \"-1s\"", 2, 12));
    EXPECT_TRUE(load_should_fail("[plugins.x.tasks.t]\ninterval = \"0ms\"\n", "plugins.x.tasks.t.interval: must be > 0", 2, 12));
    EXPECT_TRUE(load_should_fail("[plugins.x.tasks.t]\ntimeout = \"-2m30s\"\n", "plugins.x.tasks.t.timeout: must be > 0", 2, 11));
}

TEST(ConfigError, BadPluginNames) {
    EXPECT_TRUE(load_should_fail("[plugins.\"bad name\"]\n", "plugins.\"bad name\": bad plugin name \"bad name\" (use 1-64 of A-Z a-z 0-9 _ -)", 1, 10));
    EXPECT_TRUE(load_should_fail("[plugins.\"\"]\n", "bad plugin name \"\"", 1, 10));
    EXPECT_TRUE(load_should_fail("[plugins.\"a.b\"]\n", "bad plugin name \"a.b\"", 1, 10));
    EXPECT_TRUE(load_should_fail("[plugins.\"caf\xC3\xA9\"]\n", "bad plugin name", 1, 10));
    EXPECT_TRUE(load_should_fail("[plugins." + std::string(65, 'a') + "]\n", "bad plugin name", 1, 10));
    EXPECT_EQ(parse("[plugins." + std::string(64, 'a') + "]\n").plugins.count(std::string(64, 'a')), 1u);
}

TEST(ConfigError, EmptyTaskName) {
    EXPECT_TRUE(load_should_fail("[plugins.x.tasks.\"\"]\n", "plugins.x.tasks.\"\": task name must not be empty", 1, 18));
    EXPECT_EQ(parse("[plugins.x.tasks.\"any name.ok\"]\n").plugin("x").tasks.count("any name.ok"), 1u);
}

TEST(ConfigError, UnreadableFile) {
    TempDir dir;
    try {
        load_config(dir.path() / "missing" / "host.toml");
        FAIL() << "no error";
    } catch (const ConfigError& e) {
        std::string file = (dir.path() / "missing" / "host.toml").string();
        EXPECT_EQ(std::string(e.what()), file + ": cannot read host.toml: No such file or directory");
        EXPECT_EQ(e.line(), 0u);
        EXPECT_EQ(e.column(), 0u);
    }
    try {
        load_config(dir.path());  // a folder, not a file
        FAIL() << "no error";
    } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find(dir.path().string() + ": cannot read "), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("Is a directory"), std::string::npos) << e.what();
    }
}

TEST(ConfigError, LoadConfigReportsTheGivenPath) {
    TempDir dir;
    fs::path file = dir.write("host.toml", "[host]\nworkers = \"x\"\n");
    try {
        load_config(file);
        FAIL() << "no error";
    } catch (const ConfigError& e) {
        EXPECT_EQ(e.file(), file.string());
        EXPECT_EQ(std::string(e.what()).rfind(file.string() + ":2:11: host.workers:", 0), 0u) << e.what();
    }
}

// ---------------------------------------------------------------- [plugins.<name>.config]

TEST(PluginConfig, KeepsValueTypes) {
    HostConfig c = parse(R"(
[plugins.x.config]
flag = true
count = 42
big = -9223372036854775808
ratio = 0.25
name = "hello"
anything_goes = 1
)");
    const PluginValues& v = c.plugin("x").config;
    ASSERT_EQ(v.all().size(), 6u);
    EXPECT_EQ(*v.find("flag"), PluginValues::Value(true));
    EXPECT_EQ(*v.find("count"), PluginValues::Value(int64_t{42}));
    EXPECT_EQ(*v.find("big"), PluginValues::Value(INT64_MIN));
    EXPECT_EQ(*v.find("ratio"), PluginValues::Value(0.25));
    EXPECT_EQ(*v.find("name"), PluginValues::Value(std::string("hello")));
    EXPECT_EQ(v.find("missing"), nullptr);
}

TEST(PluginConfig, FlattensTablesAndArrays) {
    HostConfig c = parse(R"(
[plugins.x.config]
nested.depth = 3
db = { host = "h", port = 5432, opts = { tls = false } }
hosts = ["a", "b"]
matrix = [[1, 2], [3]]
mixed = [1, "two", 3.0]
empty_list = []
empty_table = {}
"quoted key" = 1
[[plugins.x.config.servers]]
host = "s0"
[[plugins.x.config.servers]]
host = "s1"
ports = [80, 443]
)");
    PluginValues want;
    want.set("nested.depth", int64_t{3});
    want.set("db.host", std::string("h"));
    want.set("db.port", int64_t{5432});
    want.set("db.opts.tls", false);
    want.set("hosts.0", std::string("a"));
    want.set("hosts.1", std::string("b"));
    want.set("matrix.0.0", int64_t{1});
    want.set("matrix.0.1", int64_t{2});
    want.set("matrix.1.0", int64_t{3});
    want.set("mixed.0", int64_t{1});
    want.set("mixed.1", std::string("two"));
    want.set("mixed.2", 3.0);
    want.set("quoted key", int64_t{1});
    want.set("servers.0.host", std::string("s0"));
    want.set("servers.1.host", std::string("s1"));
    want.set("servers.1.ports.0", int64_t{80});
    want.set("servers.1.ports.1", int64_t{443});
    EXPECT_EQ(c.plugin("x").config, want);
}

TEST(PluginConfig, DatesAndTimesAreStoredAsText) {
    HostConfig c = parse(R"(
[plugins.x.config]
day = 1979-05-27
at = 07:32:00
stamp = 1979-05-27T07:32:00Z
local = 1979-05-27T07:32:00
)");
    const PluginValues& v = c.plugin("x").config;
    const std::string* s = nullptr;
    ASSERT_EQ(v.get_string("day", &s), PluginValues::Lookup::ok);
    EXPECT_EQ(*s, "1979-05-27");
    ASSERT_EQ(v.get_string("at", &s), PluginValues::Lookup::ok);
    EXPECT_EQ(*s, "07:32:00");
    ASSERT_EQ(v.get_string("stamp", &s), PluginValues::Lookup::ok);
    EXPECT_EQ(*s, "1979-05-27T07:32:00Z");
    ASSERT_EQ(v.get_string("local", &s), PluginValues::Lookup::ok);
    EXPECT_EQ(*s, "1979-05-27T07:32:00");
}

TEST(PluginConfig, KeysThatFlattenTheSameAreAnError) {
    EXPECT_TRUE(load_should_fail("[plugins.x.config]\n\"a.b\" = 1\na.b = 2\n", "plugins.x.config.a.b: clashes with another config key", 3, 7));
}

TEST(PluginValues, Lookups) {
    PluginValues v;
    v.set("s", std::string("text"));
    v.set("i", int64_t{7});
    v.set("b", true);
    v.set("f", 1.5);
    using L = PluginValues::Lookup;

    const std::string* s = nullptr;
    EXPECT_EQ(v.get_string("s", &s), L::ok);
    EXPECT_EQ(*s, "text");
    EXPECT_EQ(v.get_string("i", &s), L::wrong_type);
    EXPECT_EQ(v.get_string("nope", &s), L::not_found);

    int64_t i = 0;
    EXPECT_EQ(v.get_int("i", &i), L::ok);
    EXPECT_EQ(i, 7);
    EXPECT_EQ(v.get_int("f", &i), L::wrong_type);  // floats are not silently truncated
    EXPECT_EQ(v.get_int("b", &i), L::wrong_type);
    EXPECT_EQ(v.get_int("nope", &i), L::not_found);
    EXPECT_EQ(i, 7);  // untouched on failure

    bool b = false;
    EXPECT_EQ(v.get_bool("b", &b), L::ok);
    EXPECT_TRUE(b);
    EXPECT_EQ(v.get_bool("i", &b), L::wrong_type);
    EXPECT_EQ(v.get_bool("nope", &b), L::not_found);
}

TEST(PluginValues, GetDuration) {
    PluginValues v;
    v.set("d", std::string("1m30s"));
    v.set("zero", std::string("0s"));
    v.set("bad", std::string("soon"));
    v.set("n", int64_t{10});
    using L = PluginValues::Lookup;
    Duration d{};
    EXPECT_EQ(v.get_duration("d", &d), L::ok);
    EXPECT_EQ(d, 90s);
    EXPECT_EQ(v.get_duration("zero", &d), L::ok);
    EXPECT_EQ(d, 0s);
    EXPECT_EQ(v.get_duration("bad", &d), L::wrong_type);
    EXPECT_EQ(v.get_duration("n", &d), L::wrong_type);
    EXPECT_EQ(v.get_duration("nope", &d), L::not_found);
}

TEST(PluginValues, ReadFromAFile) {
    HostConfig c = parse("[plugins.x.config]\npoll = \"250ms\"\nport = 8080\n");
    const PluginValues& v = c.plugin("x").config;
    Duration d{};
    int64_t port = 0;
    EXPECT_EQ(v.get_duration("poll", &d), PluginValues::Lookup::ok);
    EXPECT_EQ(d, 250ms);
    EXPECT_EQ(v.get_int("port", &port), PluginValues::Lookup::ok);
    EXPECT_EQ(port, 8080);
    EXPECT_EQ(c.plugin("unknown").config.get_int("port", &port), PluginValues::Lookup::not_found);
}


// ---------------------------------------------------------------- untrusted files

TEST(Config, TrustKeysDefaultToStrict) {
    HostConfig c = parse("");
    EXPECT_FALSE(c.allow_insecure);
    EXPECT_FALSE(c.allow_symlinks);
    EXPECT_TRUE(c.plugin("x").sha256.empty());
}

TEST(Config, TrustKeysAndSha256Pin) {
    HostConfig c = parse("[host]\nallow_insecure = true\nallow_symlinks = true\n[plugins.a]\nsha256 = \"" +
                         std::string(64, 'A') + "\"\n");
    EXPECT_TRUE(c.allow_insecure);
    EXPECT_TRUE(c.allow_symlinks);
    EXPECT_EQ(c.plugin("a").sha256, std::string(64, 'a')) << "normalised to lower case";
    EXPECT_TRUE(load_should_fail("[host]\nallow_insecure = \"yes\"\n", "host.allow_insecure: must be a boolean", 2, 18));
    EXPECT_TRUE(load_should_fail("[host]\nallow_symlink = true\n", "did you mean 'allow_symlinks'?", 2, 1));
    EXPECT_TRUE(load_should_fail("[plugins.a]\nsha256 = \"abc\"\n", "plugins.a.sha256: \"abc\" is not a SHA-256", 2, 10));
    EXPECT_TRUE(load_should_fail("[plugins.a]\nsha265 = \"abc\"\n", "did you mean 'sha256'?", 2, 1));
}

}  // namespace
}  // namespace tickhost

namespace tickhost {
TEST(ConfigBackoff, DefaultDurationAndOff) {
    EXPECT_EQ(parse_config("", "host.toml").backoff_max, std::chrono::minutes(5));
    EXPECT_EQ(parse_config("[host]\nbackoff_max = \"30s\"\n", "host.toml").backoff_max, std::chrono::seconds(30));
    EXPECT_EQ(parse_config("[host]\nbackoff_max = \"off\"\n", "host.toml").backoff_max, Duration::zero());
    EXPECT_THROW(parse_config("[host]\nbackoff_max = \"0s\"\n", "host.toml"), ConfigError);
    EXPECT_THROW(parse_config("[host]\nbackoff_max = \"soon\"\n", "host.toml"), ConfigError);
}
// ---------------------------------------------------------------- issue 10: bounds
TEST(Config, EveryDurationHasTheOneMaximumOf365Days) {
    // Exactly the maximum is fine, a nanosecond more is not, and "1000000h" is named with its place.
    EXPECT_EQ(parse("[host]\ndefault_timeout = \"8760h\"\n").default_timeout, max_duration);
    const char* keys[] = {"default_timeout", "shutdown_timeout", "poll_interval", "settle",
                          "backoff_max",     "abandon_after",    "crash_window"};
    for (const char* key : keys) {
        SCOPED_TRACE(key);
        EXPECT_TRUE(load_should_fail(std::string("[host]\n") + key + " = \"1000000h\"\n",
                                     std::string("host.") + key + ": \"1000000h\" is longer than the longest duration "
                                                                  "tickhost accepts, 8760h (365 days)",
                                     2, uint32_t(std::strlen(key) + 4)));
        EXPECT_TRUE(load_should_fail(std::string("[host]\n") + key + " = \"8760h1ns\"\n", "8760h (365 days)", 2,
                                     uint32_t(std::strlen(key) + 4)));
    }
    EXPECT_TRUE(load_should_fail("[plugins.a]\ninterval = \"1000000h\"\n", "plugins.a.interval", 2, 12));
    EXPECT_TRUE(load_should_fail("[plugins.a]\ntimeout = \"9000h\"\n", "plugins.a.timeout", 2, 11));
    EXPECT_TRUE(load_should_fail("[plugins.a.tasks.t]\ninterval = \"9000h\"\n", "plugins.a.tasks.t.interval", 2, 12));
    EXPECT_TRUE(load_should_fail("[plugins.a.tasks.t]\ntimeout = \"9000h\"\n", "plugins.a.tasks.t.timeout", 2, 11));
}

TEST(Config, PluginValueDurationsAboveTheMaximumAreTheWrongType) {
    HostConfig c = parse("[plugins.a.config]\nok = \"8760h\"\nlong = \"8761h\"\n");
    Duration d{};
    EXPECT_EQ(c.plugin("a").config.get_duration("ok", &d), PluginValues::Lookup::ok);
    EXPECT_EQ(d, max_duration);
    EXPECT_EQ(c.plugin("a").config.get_duration("long", &d), PluginValues::Lookup::wrong_type);
}

TEST(Config, MaxPluginSizeAndMaxTasksPerPlugin) {
    HostConfig d = parse("");
    EXPECT_EQ(d.max_plugin_size, 256u * 1024 * 1024);
    EXPECT_EQ(d.max_tasks_per_plugin, 100000u);
    HostConfig c = parse("[host]\nmax_plugin_size = \"1GiB\"\nmax_tasks_per_plugin = 10\n");
    EXPECT_EQ(c.max_plugin_size, 1024ull * 1024 * 1024);
    EXPECT_EQ(c.max_tasks_per_plugin, 10u);
    EXPECT_TRUE(load_should_fail("[host]\nmax_plugin_size = 0\n", "host.max_plugin_size: must be > 0", 2, 19));
    EXPECT_TRUE(load_should_fail("[host]\nmax_tasks_per_plugin = 0\n", "host.max_tasks_per_plugin: must be 1..10000000",
                                 2, 24));
    EXPECT_TRUE(load_should_fail("[host]\nmax_tasks_per_plugin = 10000001\n", "must be 1..10000000", 2, 24));
    EXPECT_TRUE(load_should_fail("[host]\nmax_task_per_plugin = 5\n", "max_tasks_per_plugin", 2, 1));
}

TEST(Config, LoadConfigKeepsAnAbsoluteSource) {
    TempDir dir;
    dir.write("host.toml", "[host]\nworkers = 1\n");
    const fs::path cwd = fs::current_path();
    fs::current_path(dir.path());
    HostConfig c = load_config("host.toml");
    fs::current_path(cwd);
    EXPECT_TRUE(c.source.is_absolute()) << c.source;
    EXPECT_EQ(c.source, dir.path() / "host.toml");
    EXPECT_TRUE(c.plugin_dir.is_absolute()) << c.plugin_dir;
}

// ---------------------------------------------------------------- process isolation

TEST(ConfigIsolation, Defaults) {
    HostConfig c = parse("[plugins.a]\n");
    EXPECT_EQ(c.isolation, Isolation::none);
    EXPECT_EQ(c.abandon_after, 5s);
    EXPECT_EQ(c.abandon_after, Tickers::Options{}.abandon_after) << "the scheduler's default";
    EXPECT_EQ(c.crash_limit, 5u);
    EXPECT_EQ(c.crash_window, 60s);
    EXPECT_EQ(c.abandon_after, HostConfig{}.abandon_after);
    EXPECT_EQ(c.crash_limit, HostConfig{}.crash_limit);
    EXPECT_EQ(c.crash_window, HostConfig{}.crash_window);
    const PluginSettings& a = c.plugin("a");
    EXPECT_EQ(a.isolation, std::nullopt);
    EXPECT_TRUE(a.user.empty());
    EXPECT_TRUE(a.group.empty());
    EXPECT_EQ(a.memory_max, 0u);
    EXPECT_EQ(a.open_files_max, 0u);
    EXPECT_EQ(a.processes_max, 0u);
    EXPECT_EQ(a, PluginSettings{});
    EXPECT_EQ(c.isolation_of("a"), Isolation::none);
    EXPECT_EQ(c.isolation_of("not-in-the-file"), Isolation::none);
    EXPECT_EQ(parse("[host]\nisolation = \"none\"\n").isolation, Isolation::none);
}

TEST(ConfigIsolation, HostDurationsAndCrashLimit) {
    HostConfig c = parse("[host]\nabandon_after = \"1.5s\"\ncrash_limit = 3\ncrash_window = \"10m\"\n");
    EXPECT_EQ(c.abandon_after, 1500ms);
    EXPECT_EQ(c.crash_limit, 3u);
    EXPECT_EQ(c.crash_window, 10min);
    EXPECT_EQ(parse("[host]\ncrash_limit = 1\n").crash_limit, 1u);
    EXPECT_EQ(parse("[host]\ncrash_limit = 1000\n").crash_limit, 1000u);
    EXPECT_TRUE(load_should_fail("[host]\ncrash_limit = 0\n", "host.crash_limit: must be 1..1000, got 0", 2, 15));
    EXPECT_TRUE(load_should_fail("[host]\ncrash_limit = 1001\n", "host.crash_limit: must be 1..1000, got 1001", 2, 15));
    EXPECT_TRUE(load_should_fail("[host]\ncrash_limit = \"5\"\n", "host.crash_limit: must be an integer", 2, 15));
    EXPECT_TRUE(load_should_fail("[host]\nabandon_after = \"0s\"\n", "host.abandon_after: must be > 0, got \"0s\"", 2, 17));
    EXPECT_TRUE(load_should_fail("[host]\nabandon_after = 5\n", "host.abandon_after: a duration needs a unit (write it as a string, e.g. \"5s\")", 2, 17));
    EXPECT_TRUE(load_should_fail("[host]\ncrash_window = \"-1m\"\n", "host.crash_window: must be > 0, got \"-1m\"", 2, 16));
    EXPECT_TRUE(load_should_fail("[host]\ncrash_window = \"a minute\"\n", "host.crash_window: \"a minute\" is not a duration", 2, 16));
}

TEST(ConfigIsolation, BadIsolationValues) {
    EXPECT_TRUE(load_should_fail("[host]\nisolation = \"proces\"\n", "host.isolation: \"proces\" is not valid (did you mean 'process'?)", 2, 13));
    EXPECT_TRUE(load_should_fail("[host]\nisolation = \"thread\"\n", "host.isolation: \"thread\" is not valid (valid values: none, process)", 2, 13));
    EXPECT_TRUE(load_should_fail("[plugins.a]\nisolation = \"Process\"\n", "plugins.a.isolation: \"Process\" is not valid (did you mean 'process'?)", 2, 13));
    EXPECT_TRUE(load_should_fail("[plugins.a]\nisolation = true\n", "plugins.a.isolation: must be a string, got boolean true", 2, 13));
}

TEST(ConfigIsolation, ProcessOnlyKeysNeedIsolationProcess) {
    // Unset in the plugin, [host] isolation at its default: the message points at both tables.
    EXPECT_TRUE(load_should_fail("[plugins.a]\nuser = \"nobody\"\n",
                                 "plugins.a.user: applies only with isolation = \"process\", and this plugin runs with "
                                 "[host] isolation = \"none\" (set isolation = \"process\" in [plugins.a] or in "
                                 "[host], or remove user)",
                                 2, 1));
    // Set to "none" in the plugin (after the key, or over [host] isolation = "process"): the plugin's own table.
    for (const char* line : {"user = \"nobody\"", "group = \"nogroup\"", "memory_max = \"1GiB\"",
                             "open_files_max = 64", "processes_max = 1"}) {
        SCOPED_TRACE(line);
        const std::string key = std::string(line).substr(0, std::string(line).find(' '));
        const std::string what = "plugins.a." + key + ": applies only with isolation = \"process\", and [plugins.a] "
                                 "isolation is \"none\" (set it to \"process\", or remove " + key + ")";
        EXPECT_TRUE(load_should_fail(std::string("[plugins.a]\n") + line + "\nisolation = \"none\"\n", what, 2, 1));
#if defined(__linux__)
        EXPECT_TRUE(load_should_fail(std::string("[host]\nisolation = \"process\"\n[plugins.a]\nisolation = \"none\"\n") +
                                         line + "\n",
                                     what, 5, 1));
#endif
        EXPECT_TRUE(load_should_fail(std::string("[plugins.a]\n") + line + "\n", "[host] isolation = \"none\"", 2, 1));
    }
    EXPECT_TRUE(load_should_fail("[host]\nisolation = \"none\"\n[plugins.a]\nenabled = false\n\nprocesses_max = 1\n",
                                 "plugins.a.processes_max: applies only with isolation = \"process\"", 6, 1));
#if defined(__linux__)
    // Each plugin on its own: b does not inherit a's isolation.
    EXPECT_TRUE(load_should_fail("[plugins.a]\nisolation = \"process\"\n[plugins.b]\ngroup = \"x\"\n",
                                 "plugins.b.group: applies only with isolation = \"process\"", 4, 1));
#endif
    // Inline tables have positions too.
    EXPECT_TRUE(load_should_fail("[plugins]\nc = { memory_max = \"1GiB\" }\n", "plugins.c.memory_max: applies only", 2, 7));
}

TEST(ConfigIsolation, ErrorsComeInFileOrder) {
    // The process-only key is refused where it stands, before a later error in the same table ...
    EXPECT_TRUE(load_should_fail("[plugins.a]\nuser = \"x\"\ninterval = \"soon\"\n", "plugins.a.user: applies only", 2, 1));
    // ... and after an earlier one.
    EXPECT_TRUE(load_should_fail("[plugins.a]\ninterval = \"soon\"\nuser = \"x\"\n", "plugins.a.interval", 2, 12));
    // A [host] isolation that is not a valid value is reported as such, not as "none".
    EXPECT_TRUE(load_should_fail("[plugins.a]\nuser = \"x\"\n[host]\nisolation = \"proces\"\n",
                                 "host.isolation: \"proces\" is not valid (did you mean 'process'?)", 4, 13));
    EXPECT_TRUE(load_should_fail("[host]\nisolation = 1\n[plugins.a]\nuser = \"x\"\n", "host.isolation: must be a string", 2, 13));
    // Likewise the plugin's own isolation, written after the key.
    EXPECT_TRUE(load_should_fail("[plugins.a]\nuser = \"x\"\nisolation = \"proc\"\n", "plugins.a.isolation: \"proc\" is not valid", 3, 13));
}

#if defined(__linux__)
TEST(ConfigIsolation, EveryKeyParses) {
    HostConfig c = parse(R"(
[plugins.a]
isolation = "process"
user = "nobody"
group = "nogroup"
memory_max = "512MiB"
open_files_max = 1024
processes_max = 1
[plugins.b]
isolation = "none"
[plugins.c]
enabled = false
)");
    EXPECT_EQ(c.isolation, Isolation::none);
    const PluginSettings& a = c.plugin("a");
    EXPECT_EQ(a.isolation, Isolation::process);
    EXPECT_EQ(a.user, "nobody");
    EXPECT_EQ(a.group, "nogroup");
    EXPECT_EQ(a.memory_max, 512u * 1024 * 1024);
    EXPECT_EQ(a.open_files_max, 1024u);
    EXPECT_EQ(a.processes_max, 1u);
    EXPECT_EQ(c.plugin("b").isolation, Isolation::none);
    EXPECT_EQ(c.plugin("c").isolation, std::nullopt);
    EXPECT_EQ(c.isolation_of("a"), Isolation::process);
    EXPECT_EQ(c.isolation_of("b"), Isolation::none);
    EXPECT_EQ(c.isolation_of("c"), Isolation::none);
    EXPECT_EQ(c.isolation_of("d"), Isolation::none);
}

TEST(ConfigIsolation, HostIsolationIsEveryPluginsDefault) {
    // [host] after [plugins]: its isolation still applies to the plugins before it.
    HostConfig c = parse(R"(
[plugins.a]
user = "nobody"
memory_max = 1048576
[plugins.b]
isolation = "none"
[host]
isolation = "process"
)");
    EXPECT_EQ(c.isolation, Isolation::process);
    EXPECT_EQ(c.plugin("a").isolation, std::nullopt);
    EXPECT_EQ(c.plugin("a").user, "nobody");
    EXPECT_EQ(c.plugin("a").memory_max, 1048576u);
    EXPECT_EQ(c.isolation_of("a"), Isolation::process);
    EXPECT_EQ(c.isolation_of("b"), Isolation::none);
    EXPECT_EQ(c.isolation_of("not-in-the-file"), Isolation::process);
}

TEST(ConfigIsolation, UserAndGroup) {
    auto user = [](const std::string& v) {
        return parse("[plugins.a]\nisolation = \"process\"\nuser = " + v + "\n").plugin("a").user;
    };
    auto group = [](const std::string& v) {
        return parse("[plugins.a]\nisolation = \"process\"\ngroup = " + v + "\n").plugin("a").group;
    };
    EXPECT_EQ(user("\"tickhost-plugins\""), "tickhost-plugins");
    EXPECT_EQ(user("\"svc.worker_1$\""), "svc.worker_1$");
    EXPECT_EQ(user("\"65534\""), "65534");
    EXPECT_EQ(user("65534"), "65534") << "an unquoted id is taken as written";
    EXPECT_EQ(user("0"), "0");
    EXPECT_EQ(group("\"4294967294\""), "4294967294");
    EXPECT_EQ(group("4294967294"), "4294967294");
    const std::string p = "[plugins.a]\nisolation = \"process\"\n";
    EXPECT_TRUE(load_should_fail(p + "user = \"\"\n", "plugins.a.user: must not be empty (leave it out to keep the host's user)", 3, 8));
    EXPECT_TRUE(load_should_fail(p + "group = \"\"\n", "plugins.a.group: must not be empty (leave it out to keep the host's group)", 3, 9));
    EXPECT_TRUE(load_should_fail(p + "user = -1\n", "plugins.a.user: a numeric user id must be 0..4294967294, got -1", 3, 8));
    EXPECT_TRUE(load_should_fail(p + "user = 4294967295\n", "a numeric user id must be 0..4294967294, got 4294967295", 3, 8));
    EXPECT_TRUE(load_should_fail(p + "group = \"4294967295\"\n", "plugins.a.group: a numeric group id must be 0..4294967294, got \"4294967295\"", 3, 9));
    EXPECT_TRUE(load_should_fail(p + "group = \"99999999999999999999999\"\n", "a numeric group id must be 0..4294967294", 3, 9));
    EXPECT_TRUE(load_should_fail(p + "user = \"no body\"\n", "plugins.a.user: \"no body\" is not a user name or numeric id (a name has no spaces, control characters or ':', and does not start with '-')", 3, 8));
    EXPECT_TRUE(load_should_fail(p + "user = \"a:b\"\n", "\"a:b\" is not a user name", 3, 8));
    EXPECT_TRUE(load_should_fail(p + "user = \"-x\"\n", "\"-x\" is not a user name", 3, 8));
    EXPECT_TRUE(load_should_fail(p + "group = \"a\\tb\"\n", "plugins.a.group: \"a\\tb\" is not a group name", 3, 9));
    EXPECT_TRUE(load_should_fail(p + "user = [\"a\"]\n", "plugins.a.user: must be a user name or numeric id (e.g. \"nobody\" or 65534), got an array", 3, 8));
    EXPECT_TRUE(load_should_fail(p + "group = true\n", "plugins.a.group: must be a group name or numeric id", 3, 9));
}

TEST(ConfigIsolation, ProcessLimits) {
    const std::string p = "[plugins.a]\nisolation = \"process\"\n";
    auto plugin = [&](const std::string& line) { return parse(p + line + "\n").plugin("a"); };
    EXPECT_EQ(plugin("memory_max = 1").memory_max, 1u);
    EXPECT_EQ(plugin("memory_max = \"64MB\"").memory_max, 64000000u);
    EXPECT_EQ(plugin("memory_max = \"2GiB\"").memory_max, 2ull * 1024 * 1024 * 1024);
    EXPECT_EQ(plugin("open_files_max = 1").open_files_max, 1u);
    EXPECT_EQ(plugin("open_files_max = 1048576").open_files_max, 1048576u);
    EXPECT_EQ(plugin("processes_max = 1").processes_max, 1u);
    EXPECT_EQ(plugin("processes_max = 100000").processes_max, 100000u);

    EXPECT_TRUE(load_should_fail(p + "memory_max = 0\n", "plugins.a.memory_max: must be > 0, got 0 (leave it out for no limit)", 3, 14));
    EXPECT_TRUE(load_should_fail(p + "memory_max = \"0MiB\"\n", "plugins.a.memory_max: must be > 0, got \"0MiB\" (leave it out for no limit)", 3, 14));
    EXPECT_TRUE(load_should_fail(p + "memory_max = \"512 MiB\"\n", "plugins.a.memory_max: \"512 MiB\" is not a size", 3, 14));
    EXPECT_TRUE(load_should_fail(p + "memory_max = 0.5\n", "plugins.a.memory_max: must be a size", 3, 14));
    EXPECT_TRUE(load_should_fail(p + "open_files_max = 0\n", "plugins.a.open_files_max: must be 1..1048576, got 0 (leave it out for the host's limit)", 3, 18));
    EXPECT_TRUE(load_should_fail(p + "open_files_max = 1048577\n", "plugins.a.open_files_max: must be 1..1048576, got 1048577", 3, 18));
    EXPECT_TRUE(load_should_fail(p + "open_files_max = -1\n", "must be 1..1048576, got -1", 3, 18));
    EXPECT_TRUE(load_should_fail(p + "open_files_max = \"1024\"\n", "plugins.a.open_files_max: must be an integer", 3, 18));
    EXPECT_TRUE(load_should_fail(p + "processes_max = 0\n", "plugins.a.processes_max: must be 1..100000, got 0 (leave it out for no limit)", 3, 17));
    EXPECT_TRUE(load_should_fail(p + "processes_max = 100001\n", "plugins.a.processes_max: must be 1..100000, got 100001", 3, 17));
}
#else
TEST(ConfigIsolation, ProcessIsolationIsLinuxOnly) {
    EXPECT_TRUE(load_should_fail("[host]\nisolation = \"process\"\n", "host.isolation: process isolation is available on Linux only", 2, 13));
    EXPECT_TRUE(load_should_fail("[plugins.a]\nisolation = \"process\"\n", "plugins.a.isolation: process isolation is available on Linux only", 2, 13));
    EXPECT_TRUE(load_should_fail("[plugins.a]\nuser = \"x\"\n[host]\nisolation = \"process\"\n", "host.isolation: process isolation is available on Linux only", 4, 13));
}
#endif

TEST(ConfigIsolation, EveryNewPluginFieldRestartsThePlugin) {
    const PluginSettings base;
    auto differs = [&](void (*change)(PluginSettings&)) {
        PluginSettings p;
        change(p);
        return !(p == base) && !(base == p);
    };
    EXPECT_TRUE(differs([](PluginSettings& p) { p.isolation = Isolation::none; })) << "set differs from unset";
    EXPECT_TRUE(differs([](PluginSettings& p) { p.isolation = Isolation::process; }));
    EXPECT_TRUE(differs([](PluginSettings& p) { p.user = "nobody"; }));
    EXPECT_TRUE(differs([](PluginSettings& p) { p.group = "nogroup"; }));
    EXPECT_TRUE(differs([](PluginSettings& p) { p.memory_max = 1; }));
    EXPECT_TRUE(differs([](PluginSettings& p) { p.open_files_max = 1; }));
    EXPECT_TRUE(differs([](PluginSettings& p) { p.processes_max = 1; }));
    PluginSettings a;
    a.isolation = Isolation::process;
    a.user = "u";
    a.group = "g";
    a.memory_max = 1;
    a.open_files_max = 2;
    a.processes_max = 3;
    PluginSettings b = a;
    EXPECT_EQ(a, b);
    b.isolation = Isolation::none;
    EXPECT_FALSE(a == b);
}

// ---------------------------------------------------------------- schedules: jitter and align

TEST(ConfigSchedule, JitterAndAlignAtEveryLevel) {
    const HostConfig c = parse(R"(
[host]
jitter = "10%"
align = true
[plugins.a]
jitter = "3s"
align = false
[plugins.a.tasks.t]
jitter = "off"
align = true
[plugins.a.tasks.u]
jitter = "2.5%"
[plugins.b]
jitter = "0s"
[plugins.b.tasks.v]
jitter = "0%"
)");
    ASSERT_TRUE(c.jitter);
    EXPECT_EQ(c.jitter->ppm, 100000u);
    EXPECT_TRUE(c.align);
    const PluginSettings& a = c.plugin("a");
    EXPECT_EQ(a.jitter, (Jitter{3s, 0}));
    EXPECT_EQ(a.align, false);
    EXPECT_EQ(a.tasks.at("t").jitter, Jitter{}) << "off: zero, set (it turns the plugin's off)";
    EXPECT_EQ(a.tasks.at("t").align, true);
    EXPECT_EQ(a.tasks.at("u").jitter, (Jitter{0s, 25000}));
    EXPECT_FALSE(a.tasks.at("u").align);
    EXPECT_EQ(c.plugin("b").jitter, Jitter{});
    EXPECT_EQ(c.plugin("b").tasks.at("v").jitter, Jitter{});
    // Defaults: nothing set anywhere.
    const HostConfig d = parse("[plugins.x]\n");
    EXPECT_FALSE(d.jitter);
    EXPECT_FALSE(d.align);
    EXPECT_FALSE(d.plugin("x").jitter);
    EXPECT_FALSE(d.plugin("x").align);
}

TEST(ConfigSchedule, JitterForms) {
    auto jitter_of = [](const std::string& v) { return *parse("[host]\njitter = \"" + v + "\"\n").jitter; };
    EXPECT_EQ(jitter_of("100%").ppm, 1000000u);
    EXPECT_EQ(jitter_of("0.0001%").ppm, 1u);
    EXPECT_EQ(jitter_of(" 7% ").ppm, 70000u);
    EXPECT_EQ(jitter_of("250ms").duration, 250ms);
    EXPECT_EQ(jitter_of("1h").duration, 1h);
    EXPECT_EQ(jitter_of("8760h").duration, tickhost::max_duration);
    // What a jitter comes to for an interval: a share of it, or the duration, at most the interval.
    EXPECT_EQ((Jitter{0s, 100000}).of(1min), 6s);
    EXPECT_EQ((Jitter{0s, 1000000}).of(tickhost::max_duration), tickhost::max_duration);
    EXPECT_EQ((Jitter{0s, 1}).of(1s), 1us);
    EXPECT_EQ((Jitter{3s, 0}).of(1min), 3s);
    EXPECT_EQ((Jitter{90s, 0}).of(1min), 1min);
    EXPECT_EQ(Jitter{}.of(1min), 0s);
    EXPECT_EQ(format_jitter(Jitter{0s, 25000}), "2.5%");
    EXPECT_EQ(format_jitter(Jitter{0s, 1}), "0.0001%");
    EXPECT_EQ(format_jitter(Jitter{0s, 1000000}), "100%");
    EXPECT_EQ(format_jitter(Jitter{1500ms, 0}), "1.5s");
    EXPECT_EQ(format_jitter(Jitter{}), "0s");
}

TEST(ConfigSchedule, BadJitterAndAlignValues) {
    EXPECT_TRUE(load_should_fail("[host]\njitter = 3\n", "host.jitter: a jitter needs a unit or a %", 2, 10));
    EXPECT_TRUE(load_should_fail("[host]\njitter = 0.5\n", "a jitter needs a unit or a %", 2, 10));
    EXPECT_TRUE(load_should_fail("[host]\njitter = true\n", "host.jitter: must be a jitter, got boolean true", 2, 10));
    EXPECT_TRUE(load_should_fail("[host]\njitter = \"10\"\n", "host.jitter: \"10\" is not a jitter", 2, 10));
    EXPECT_TRUE(load_should_fail("[host]\njitter = \"sometimes\"\n", "is not a jitter", 2, 10));
    EXPECT_TRUE(load_should_fail("[host]\njitter = \"-3s\"\n", "host.jitter: must be >= 0, got \"-3s\"", 2, 10));
    EXPECT_TRUE(load_should_fail("[host]\njitter = \"101%\"\n",
                                 "host.jitter: \"101%\" is more than the interval: a jitter is at most \"100%\"", 2,
                                 10));
    EXPECT_TRUE(load_should_fail("[host]\njitter = \"99999999%\"\n", "is more than the interval", 2, 10));
    EXPECT_TRUE(load_should_fail("[host]\njitter = \"-5%\"\n", "\"-5%\" is not a percentage", 2, 10));
    EXPECT_TRUE(load_should_fail("[host]\njitter = \"%\"\n", "\"%\" is not a percentage", 2, 10));
    EXPECT_TRUE(load_should_fail("[host]\njitter = \"1.23456%\"\n", "up to 4 decimals", 2, 10));
    EXPECT_TRUE(load_should_fail("[host]\njitter = \"1.%\"\n", "is not a percentage", 2, 10));
    EXPECT_TRUE(load_should_fail("[host]\njitter = \"8761h\"\n", "longer than the longest duration", 2, 10));
    EXPECT_TRUE(load_should_fail("[plugins.x.tasks.t]\njitter = [1]\n",
                                 "plugins.x.tasks.t.jitter: must be a jitter, got an array", 2, 10));
    EXPECT_TRUE(load_should_fail("[host]\nalign = \"yes\"\n", "host.align: must be a boolean", 2, 9));
    EXPECT_TRUE(load_should_fail("[plugins.x]\nalign = 1\n", "plugins.x.align: must be a boolean", 2, 9));
    EXPECT_TRUE(
        load_should_fail("[plugins.x.tasks.t]\nalign = \"on\"\n", "plugins.x.tasks.t.align: must be a boolean", 2, 9));
    EXPECT_TRUE(load_should_fail("[plugins.x.tasks.t]\njiter = \"1s\"\n", "did you mean 'jitter'?", 2, 1));
}

TEST(ConfigSchedule, AJitterLongerThanTheIntervalIsANamedErrorAtTheJitter) {
    // In the same table.
    EXPECT_TRUE(
        load_should_fail("[plugins.x]\ninterval = \"1m\"\njitter = \"90s\"\n",
                         "plugins.x.jitter: \"1m30s\" is longer than the interval \"1m\" of [plugins.x] (line 2); "
                         "a jitter is at most the interval: shorten it, or write a share of the interval such "
                         "as \"50%\"",
                         3, 10));
    // A task's own interval, shorter than the plugin's jitter it inherits: the error points at that jitter.
    EXPECT_TRUE(load_should_fail("[plugins.x]\njitter = \"30s\"\n[plugins.x.tasks.fast]\ninterval = \"10s\"\n",
                                 "plugins.x.jitter: \"30s\" is longer than the interval \"10s\" of "
                                 "[plugins.x.tasks.fast] (line 4)",
                                 2, 10));
    // A task's own jitter against the plugin's interval it inherits.
    EXPECT_TRUE(load_should_fail("[plugins.x]\ninterval = \"5s\"\n[plugins.x.tasks.t]\njitter = \"6s\"\n",
                                 "plugins.x.tasks.t.jitter: \"6s\" is longer than the interval \"5s\" of "
                                 "[plugins.x.tasks.t] (line 2)",
                                 4, 10));
    // [host] jitter against an interval set in host.toml.
    EXPECT_TRUE(load_should_fail("[host]\njitter = \"2m\"\n[plugins.x]\ninterval = \"1m\"\n",
                                 "host.jitter: \"2m\" is longer than the interval \"1m\" of [plugins.x] (line 4)", 2,
                                 10));
    // Equal is allowed; a share never is too long; an own shorter jitter or "off" wins over a longer one.
    EXPECT_NO_THROW(parse("[plugins.x]\ninterval = \"1m\"\njitter = \"1m\"\n"));
    EXPECT_NO_THROW(parse("[host]\njitter = \"100%\"\n[plugins.x]\ninterval = \"1s\"\n"));
    EXPECT_NO_THROW(
        parse("[plugins.x]\njitter = \"30s\"\n[plugins.x.tasks.fast]\ninterval = \"10s\"\njitter = \"5s\"\n"));
    EXPECT_NO_THROW(parse("[host]\njitter = \"2m\"\n[plugins.x]\ninterval = \"1m\"\njitter = \"off\"\n"));
    // No interval in host.toml: the plugin's own default decides, when it starts (capped there, with a warning).
    EXPECT_NO_THROW(parse("[plugins.x]\njitter = \"1h\"\n"));
}

TEST(ConfigSchedule, JitterAndAlignChangesRestartThePlugin) {
    const PluginSettings base;
    PluginSettings p;
    p.jitter = Jitter{};
    EXPECT_FALSE(p == base) << "set (even to zero) differs from unset";
    p = base;
    p.jitter = Jitter{1s, 0};
    PluginSettings q = p;
    EXPECT_EQ(p, q);
    q.jitter = Jitter{2s, 0};
    EXPECT_FALSE(p == q);
    q.jitter = Jitter{0s, 10000};
    EXPECT_FALSE(p == q);
    q = p;
    q.align = false;
    EXPECT_FALSE(p == q);
    q = p;
    q.tasks["t"].jitter = Jitter{1s, 0};
    EXPECT_FALSE(p == q);
    q = p;
    q.tasks["t"].align = true;
    EXPECT_FALSE(p == q);
}

// The example of README.md ("Schedules"): host web-01, plugin heartbeat, task beat, jitter "10s".
TEST(ConfigSchedule, TheDocumentedJitterExample) {
    const std::string key("web-01\0heartbeat\0beat", 21);
    EXPECT_EQ(tickhost::fnv1a64(key), 0xe92f7c7dc969b955ull);
    EXPECT_EQ(tickhost::fnv1a64(key), 16802785614434515285ull);
    EXPECT_EQ(16802785614434515285ull % 1000, 285u);
    EXPECT_EQ(task_jitter_offset("web-01", "heartbeat", "beat", 10s), 2850ms);
    EXPECT_EQ(task_jitter_offset("web-02", "heartbeat", "beat", 10s), 2300ms);
    // "10%" of a 1m interval is 6s, 600 steps: 16802785614434515285 mod 600 = 85.
    EXPECT_EQ(task_jitter_offset("web-01", "heartbeat", "beat", (Jitter{0s, 100000}).of(1min)), 850ms);
}

// ---------------------------------------------------------------- the documented keys
// Every key the parser accepts is in the README's table and in the bundled host.toml (with a valid value:
// its commented-out defaults are uncommented and parsed).
TEST(ConfigDocs, ReadmeTableAndBundledHostTomlShowEveryKey) {
    const std::string readme = read_text(fs::path(SOURCE_DIR) / "README.md");
    const std::string bundled = read_text(fs::path(SOURCE_DIR) / "host.toml");
    ASSERT_FALSE(readme.empty());
    ASSERT_FALSE(bundled.empty());
    std::vector<std::string> lines;
    for (size_t at = 0, nl; at < readme.size(); at = nl + 1) {
        nl = readme.find('\n', at);
        if (nl == std::string::npos) nl = readme.size();
        lines.push_back(readme.substr(at, nl - at));
    }
    auto in_table = [&](const std::string& row_prefix, std::string_view key) {
        for (const auto& l : lines)
            if (l.rfind(row_prefix, 0) == 0 && l.substr(0, l.find(" | ")).find(std::string(key)) != std::string::npos)
                return true;
        return false;
    };
    auto in_file = [&](std::string_view key) {
        const std::regex line("(^|\n)(# )?" + std::string(key) + " = ");
        return std::regex_search(bundled, line);
    };
    for (auto k : config_keys(ConfigTable::host)) {
        EXPECT_TRUE(in_table("| `[host]", k)) << "README's table lacks [host] " << k;
        EXPECT_TRUE(in_file(k)) << "host.toml lacks [host] " << k;
    }
    for (auto k : config_keys(ConfigTable::plugin)) {
        if (k == "tasks") {
            EXPECT_TRUE(in_table("| `[plugins.<name>.tasks.<task>]", "")) << "README's table lacks the task table";
            EXPECT_NE(bundled.find("[plugins.counter_c.tasks."), std::string::npos) << "host.toml lacks a task table";
        } else if (k == "config") {
            EXPECT_TRUE(in_table("| `[plugins.<name>.config]", "")) << "README's table lacks the config table";
            EXPECT_NE(bundled.find(".config]"), std::string::npos);
        } else {
            EXPECT_TRUE(in_table("| `[plugins.<name>]", k)) << "README's table lacks [plugins.<name>] " << k;
            EXPECT_TRUE(in_file(k)) << "host.toml lacks [plugins.<name>] " << k;
        }
    }
    for (auto k : config_keys(ConfigTable::task))
        EXPECT_TRUE(in_table("| `[plugins.<name>.tasks.<task>]", k)) << "README's table lacks the task key " << k;

    // As shipped, and with every commented-out key (and table) uncommented: both parse.
    EXPECT_NO_THROW(parse_config(bundled, fs::path(SOURCE_DIR) / "host.toml"));
    const std::string all = std::regex_replace(bundled, std::regex("(^|\n)# (\\[|[a-z_]+ = )"), "$1$2");
    const std::string no_pin = std::regex_replace(all, std::regex("\nsha256 = [^\n]*"), "");
#if defined(__linux__)
    try {
        HostConfig c = parse_config(no_pin, fs::path(SOURCE_DIR) / "host.toml");
        EXPECT_EQ(c.max_tasks_per_plugin, 100000u);
        EXPECT_TRUE(c.plugin("counter_c").tasks.count("count1"));
        EXPECT_EQ(c.isolation_of("hello"), Isolation::process);  // with the keys that need it
    } catch (const std::exception& e) {
        ADD_FAILURE() << "host.toml with every key uncommented: " << e.what() << "\n" << no_pin;
    }
#else
    // Its example of isolation = "process" is refused, by name, everywhere but on Linux.
    EXPECT_THROW(parse_config(no_pin, fs::path(SOURCE_DIR) / "host.toml"), ConfigError);
#endif
}

}  // namespace tickhost
