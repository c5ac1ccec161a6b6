// tickhost new-plugin NAME: writes a ready-to-build plugin project that passes `tickhost check` as generated.
#include "cli.hpp"

#include <tickhost/plugin.h>
#include <tickhost/version.h>

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace fs = std::filesystem;

namespace tickhost::app {
namespace {

const char* kNewPluginUsage = R"(usage: tickhost new-plugin NAME [--lang cpp|c] [--dir DIR]

Writes a ready-to-build plugin project into DIR (default: ./NAME):
  CMakeLists.txt   find_package(tickhost) and tickhost_add_plugin(NAME ...)
  NAME.cpp/.c      a plugin with one task that logs a greeting (C++ layer, or the plain C ABI)
  host.toml        a host configuration that loads plugins from ./plugins.d
  README.md        how to build, check, run once and run it in a host
NAME is the plugin's name: letters, digits, '_' or '-', at most 64 characters.

options:
  --lang cpp|c   the plugin's language (default: cpp)
  --dir DIR      where to write the project (must not exist, or be empty)
  -h, --help     show this help
exit status: 0 written, 1 the directory is not empty or cannot be written, 2 bad command line
)";

bool valid_name(const std::string& n) {
    if (n.empty() || n.size() > 64) return false;
    for (unsigned char c : n)
        if (!(std::isalnum(c) || c == '_' || c == '-')) return false;
    return true;
}

// "my-probe" -> "my_probe" (C identifiers), "MyProbe" (C++ class).
std::string ident(const std::string& n) {
    std::string s;
    for (char c : n) s += c == '-' ? '_' : c;
    if (std::isdigit(static_cast<unsigned char>(s[0]))) s = "p_" + s;
    return s;
}
std::string class_name(const std::string& n) {
    std::string s;
    bool up = true;
    for (char c : n) {
        if (c == '-' || c == '_') {
            up = true;
            continue;
        }
        s += up ? char(std::toupper(static_cast<unsigned char>(c))) : c;
        up = false;
    }
    if (s.empty() || std::isdigit(static_cast<unsigned char>(s[0]))) s = "Plugin" + s;
    return s;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
    for (size_t p = 0; (p = s.find(from, p)) != std::string::npos; p += to.size()) s.replace(p, from.size(), to);
    return s;
}

const char* kCMake = R"(cmake_minimum_required(VERSION 3.20)
project(@NAME@ VERSION 0.1.0 LANGUAGES @LANGS@)

# An installed tickhost: pass -DCMAKE_PREFIX_PATH=<its prefix> if it is not in a standard place.
find_package(tickhost @MAJOR@.@MINOR@ CONFIG REQUIRED)

# A MODULE library named @NAME@.so, hidden visibility, linked against tickhost::sdk; the same function
# tickhost's own plugins use.
tickhost_add_plugin(@NAME@ SOURCES @SOURCE@)
)";

const char* kCpp = R"(// @NAME@: a tickhost plugin. Build: cmake -S . -B build && cmake --build build
#include <tickhost/plugin.hpp>

#include <string>

class @CLASS@ : public tickhost::Plugin {
public:
    // Called once after load, with [plugins.@NAME@.config] of host.toml. Throw to refuse loading.
    void init(tickhost::Context& ctx) override { who_ = ctx.config_string("who").value_or("world"); }

    // Called every interval on a worker thread; never overlapping itself. is_stop: the last call, once.
    tickhost::Status tick(tickhost::Context& ctx, bool is_stop) {
        if (is_stop) {
            ctx.info("goodbye, " + who_ + ", after " + std::to_string(runs_) + " runs");
            return tickhost::Status::ok;
        }
        ctx.info("hello, " + who_ + " #" + std::to_string(++runs_));
        return tickhost::Status::ok;  // or throw: the host logs what() with the task's name
    }

    // Called once after the stop call, before unload: stop any thread you started.
    void shutdown() override {}

private:
    std::string who_;
    unsigned long runs_ = 0;
};

TICKHOST_PLUGIN(@CLASS@, "@NAME@", "0.1.0", "Logs a greeting every second",
                tickhost::task<&@CLASS@::tick>("tick", std::chrono::seconds(1)))
)";

const char* kC = R"(/* @NAME@: a tickhost plugin in plain C. Build: cmake -S . -B build && cmake --build build */
#include <tickhost/plugin.h>

#include <stdio.h>
#include <string.h>

static const th_host_api* host;
static unsigned long runs;

static void say(th_ctx ctx, const char* msg) { host->log(ctx, TH_LOG_INFO, msg, strlen(msg)); }

/* Called every interval on a worker thread, never overlapping itself; is_stop: the last call, once. */
static th_status @IDENT@_tick(void* state, th_ctx ctx, int32_t is_stop) {
    char msg[64];
    (void)state;
    if (is_stop) {
        snprintf(msg, sizeof msg, "goodbye after %lu runs", runs);
    } else {
        snprintf(msg, sizeof msg, "hello #%lu", ++runs);
    }
    say(ctx, msg);
    return TH_OK; /* or: host->set_error(ctx, "why", 3); return TH_ERROR; */
}

static const th_task_def @IDENT@_tasks[] = {
    {sizeof(th_task_def), "tick", 1000000000, 0, @IDENT@_tick, NULL}, /* every 1 s, host default timeout */
};

static const th_plugin_def @IDENT@_plugin = {
    sizeof(th_plugin_def), TH_ABI_MAJOR, TH_ABI_MINOR,
    "@NAME@", "0.1.0", "Logs a greeting every second",
    @IDENT@_tasks, 1,
    NULL, NULL, /* init, shutdown: optional */
};

TH_EXPORT const th_plugin_def* tickhost_plugin_entry(const th_host_info* info) {
    if (!info || !info->api) return NULL;
    host = info->api;
    return &@IDENT@_plugin;
}
)";

const char* kHostToml = R"(# A host for trying @NAME@: `tickhost --config host.toml` loads every *.so in plugins.d.
[host]
plugin_dir = "plugins.d"
log_level = "info"

[plugins.@NAME@]
interval = "1s"

[plugins.@NAME@.config]
who = "@NAME@ author"
)";

const char* kReadme = R"(# @NAME@

A tickhost task plugin, generated by `tickhost new-plugin`.

```sh
cmake -S . -B build                  # add -DCMAKE_PREFIX_PATH=<tickhost prefix> if needed
cmake --build build
tickhost check build/@NAME@.so       # loads it as the host would: name, version, ABI, tasks
tickhost run-once build/@NAME@.so    # init, one run, the stop call, unload; prints logs and status
mkdir -p plugins.d && cp build/@NAME@.so plugins.d/
tickhost --config host.toml          # runs it every second; Ctrl-C stops it (stop call, unload)
```

While the host runs, rebuild and copy `build/@NAME@.so` into `plugins.d/` again to upgrade it in place.
The guide for plugin authors is `share/doc/tickhost/writing-plugins.md` in tickhost's install prefix.
)";

bool write(const fs::path& p, const std::string& text) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    if (!out) std::fprintf(stderr, "tickhost new-plugin: cannot write %s\n", p.c_str());
    return bool(out);
}

}  // namespace

int cmd_new_plugin(int argc, char** argv) {
    std::string name, lang = "cpp", dir;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        bool missing = false;
        if (a == "-h" || a == "--help") {
            std::fputs(kNewPluginUsage, stdout);
            return 0;
        } else if (option_value(argc, argv, i, "--lang", "", &lang, &missing)) {
            if (missing) return usage_error("new-plugin", "--lang needs cpp or c", kNewPluginUsage);
        } else if (option_value(argc, argv, i, "--dir", "", &dir, &missing)) {
            if (missing) return usage_error("new-plugin", "--dir needs a directory", kNewPluginUsage);
        } else if (a.size() > 1 && a[0] == '-') {
            return usage_error("new-plugin", "unknown option '" + a + "'", kNewPluginUsage);
        } else if (name.empty()) {
            name = a;
        } else {
            return usage_error("new-plugin", "one NAME only ('" + a + "' is a second one)", kNewPluginUsage);
        }
    }
    if (name.empty()) return usage_error("new-plugin", "name the plugin", kNewPluginUsage);
    if (!valid_name(name))
        return usage_error("new-plugin", "'" + name + "' is not a plugin name ([A-Za-z0-9_-], 1..64 characters)",
                           kNewPluginUsage);
    if (lang != "cpp" && lang != "c") return usage_error("new-plugin", "--lang is cpp or c", kNewPluginUsage);
    const fs::path root = dir.empty() ? fs::path(name) : fs::path(dir);
    std::error_code ec;
    if (fs::exists(root, ec) && !(fs::is_directory(root, ec) && fs::is_empty(root, ec))) {
        std::fprintf(stderr, "tickhost new-plugin: %s exists and is not an empty directory; choose another --dir\n",
                     root.c_str());
        return 1;
    }
    fs::create_directories(root, ec);
    if (ec) {
        std::fprintf(stderr, "tickhost new-plugin: cannot create %s: %s\n", root.c_str(), ec.message().c_str());
        return 1;
    }
    const std::string source = name + (lang == "c" ? ".c" : ".cpp");
    auto fill = [&](std::string t) {
        t = replace_all(t, "@NAME@", name);
        t = replace_all(t, "@IDENT@", ident(name));
        t = replace_all(t, "@CLASS@", class_name(name));
        t = replace_all(t, "@SOURCE@", source);
        t = replace_all(t, "@LANGS@", lang == "c" ? "C" : "CXX");
        t = replace_all(t, "@MAJOR@", std::to_string(TICKHOST_VERSION_MAJOR));
        t = replace_all(t, "@MINOR@", std::to_string(TICKHOST_VERSION_MINOR));
        return t;
    };
    const bool ok = write(root / "CMakeLists.txt", fill(kCMake)) &&
                    write(root / source, fill(lang == "c" ? kC : kCpp)) && write(root / "host.toml", fill(kHostToml)) &&
                    write(root / "README.md", fill(kReadme)) && write(root / ".gitignore", "build/\nplugins.d/\n");
    if (!ok) return 1;
    std::printf("wrote %s/: CMakeLists.txt, %s, host.toml, README.md\nnext:\n", root.c_str(), source.c_str());
    std::printf(
        "  cd %s\n  cmake -S . -B build && cmake --build build\n  tickhost check build/%s.so\n"
        "  tickhost run-once build/%s.so\n",
        root.c_str(), name.c_str(), name.c_str());
    return 0;
}

}  // namespace tickhost::app
