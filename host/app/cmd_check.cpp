// tickhost check FILE...: loads each plugin file the way the host would and says what it declares, or why
// the host would refuse it and what to do.
#include "cli.hpp"

#include <tickhost/config.hpp>
#include <tickhost/plugin_manager.hpp>
#include <tickhost/tickers.hpp>

#include <cstdio>
#include <string>
#include <vector>

namespace tickhost::app {
namespace {

const char* kCheckUsage = R"(usage: tickhost check [--json] [--config PATH] FILE...

Loads each plugin file exactly as the host would (regular file and ELF checks, a private shadow copy,
dlopen RTLD_NOW | RTLD_LOCAL, entry point, ABI negotiation, descriptor checks), prints its name, version,
description, ABI version and tasks with their default interval and timeout, and unloads it.
init is not called and no task runs (use `tickhost run-once` for that).

options:
  --json             print one JSON document on stdout instead of text
  -c, --config PATH  take shadow_dir and default_timeout from this host.toml
  -h, --help         show this help
exit status: 0 every file would load, 1 some file would be refused (the error is named, with what to do),
             2 bad command line or host.toml
)";

struct Outcome {
    std::string file;
    std::optional<PluginFileInfo> info;
    LoadError error;
    bool ignored_name = false;  // the host would not even look at this name in plugin_dir
};

std::string abi_text(unsigned major, unsigned minor) { return std::to_string(major) + "." + std::to_string(minor); }

void print_text(const Outcome& o, Duration default_timeout) {
    if (!o.info) {
        std::printf("%s: refused: %s: %s\n", o.file.c_str(), o.error.code_name.c_str(), o.error.reason.c_str());
        if (!o.error.hint.empty()) std::printf("  what to do: %s\n", o.error.hint.c_str());
        return;
    }
    const PluginFileInfo& i = *o.info;
    std::printf("%s: ok\n", o.file.c_str());
    std::printf("  name         %s\n", i.name.c_str());
    std::printf("  version      %s\n", i.version.empty() ? "(none declared)" : i.version.c_str());
    std::printf("  description  %s\n", i.description.empty() ? "(none declared)" : i.description.c_str());
    std::printf("  ABI          %s (this host: %s)\n", abi_text(i.abi_major, i.abi_minor).c_str(),
                abi_text(TH_ABI_MAJOR, TH_ABI_MINOR).c_str());
    std::printf("  sha256       %s\n", i.sha256.c_str());
    const std::string init = "yes (reads [plugins." + i.name + ".config]; may declare more tasks)";
    std::printf("  init         %s\n", i.has_init ? init.c_str() : "no");
    std::printf("  shutdown     %s\n", i.has_shutdown ? "yes" : "no");
    if (i.tasks.empty()) std::printf("  tasks        none static: init declares them (see `tickhost run-once`)\n");
    for (size_t n = 0; n < i.tasks.size(); ++n) {
        const auto& t = i.tasks[n];
        const std::string timeout = t.default_timeout.count() > 0
                                        ? format_duration(t.default_timeout)
                                        : format_duration(default_timeout) + " (host default)";
        std::printf("  %s %s every %s, timeout %s\n", n == 0 ? "tasks       " : "            ", t.name.c_str(),
                    format_duration(t.default_interval).c_str(), timeout.c_str());
    }
    if (o.ignored_name)
        std::printf(
            "  note: in plugin_dir the host ignores this file name (hidden, temporary or not *.so); "
            "install it as %s.so\n",
            i.name.c_str());
}

void print_json(const std::vector<Outcome>& all, bool ok) {
    std::string s = "{\"ok\":" + std::string(ok ? "true" : "false") +
                    ",\"host_abi\":" + json_string(abi_text(TH_ABI_MAJOR, TH_ABI_MINOR)) + ",\"plugins\":[";
    for (size_t n = 0; n < all.size(); ++n) {
        const Outcome& o = all[n];
        s += n ? "," : "";
        s += "{\"file\":" + json_string(o.file) + ",\"ok\":" + (o.info ? "true" : "false");
        if (!o.info) {
            s += ",\"error\":{\"code\":" + std::to_string(o.error.code) +
                 ",\"name\":" + json_string(o.error.code_name) + ",\"reason\":" + json_string(o.error.reason) +
                 ",\"hint\":" + json_string(o.error.hint) + "}}";
            continue;
        }
        const PluginFileInfo& i = *o.info;
        s += ",\"name\":" + json_string(i.name) + ",\"version\":" + json_string(i.version) +
             ",\"description\":" + json_string(i.description) +
             ",\"abi\":" + json_string(abi_text(i.abi_major, i.abi_minor)) + ",\"sha256\":" + json_string(i.sha256) +
             ",\"has_init\":" + (i.has_init ? "true" : "false") +
             ",\"has_shutdown\":" + (i.has_shutdown ? "true" : "false") +
             ",\"ignored_name\":" + (o.ignored_name ? "true" : "false") + ",\"tasks\":[";
        for (size_t k = 0; k < i.tasks.size(); ++k) {
            const auto& t = i.tasks[k];
            s += std::string(k ? "," : "") + "{\"name\":" + json_string(t.name) +
                 ",\"interval_ns\":" + std::to_string(t.default_interval.count()) +
                 ",\"timeout_ns\":" + std::to_string(t.default_timeout.count()) + "}";
        }
        s += "]}";
    }
    s += "]}\n";
    std::fputs(s.c_str(), stdout);
}

}  // namespace

int cmd_check(int argc, char** argv) {
    bool json = false;
    std::string config_path;
    std::vector<std::string> files;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        bool missing = false;
        if (a == "-h" || a == "--help") {
            std::fputs(kCheckUsage, stdout);
            return 0;
        } else if (a == "--json") {
            json = true;
        } else if (option_value(argc, argv, i, "--config", "-c", &config_path, &missing)) {
            if (missing) return usage_error("check", "--config needs a path", kCheckUsage);
        } else if (a.size() > 1 && a[0] == '-') {
            return usage_error("check", "unknown option '" + a + "'", kCheckUsage);
        } else {
            files.push_back(a);
        }
    }
    if (files.empty()) return usage_error("check", "name at least one plugin file", kCheckUsage);

    HostConfig config;
    try {
        if (!config_path.empty()) config = load_config(config_path);
        // Warnings and errors of the loader (a pinned image, a stale cache) go to stderr; stdout is the report.
        log_lines_to(stderr, "warn");
    } catch (const std::exception& e) {
        std::fprintf(stderr, "tickhost check: %s\n", e.what());
        return 2;
    }
    std::vector<Outcome> outcomes;
    bool ok = true;
    try {
        Tickers tickers;  // never started: check runs no task
        PluginManager manager(tickers, config);
        for (const auto& f : files) {
            Outcome o;
            o.file = f;
            o.info = manager.inspect(f, &o.error);
            o.ignored_name = o.info && !is_plugin_file_name(f);
            ok = ok && o.info.has_value();
            if (!json) print_text(o, config.default_timeout);
            outcomes.push_back(std::move(o));
        }
    } catch (const std::exception& e) {  // the shadow cache could not be made
        std::fprintf(stderr, "tickhost check: %s\n", e.what());
        return 2;
    }
    if (json) print_json(outcomes, ok);
    return ok ? 0 : 1;
}

}  // namespace tickhost::app
