// The whole command line of `tickhost` is parsed here, with CLI11 (slow to compile: only this file includes
// it); the subcommands get plain structs (cli.hpp).
#include "cli.hpp"

#include <tickhost/plugin.h>
#include <tickhost/logging.hpp>
#include <tickhost/tickers.hpp>  // max_duration

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#ifndef TICKHOST_VERSION
#define TICKHOST_VERSION "dev"
#endif

namespace tickhost::app {

namespace {

// ---- help in tickhost's layout ---------------------------------------------------------------------------

// Each (sub)command's help: its usage lines, its description, "options:" with one line per option (generated
// from the definitions below, so that the list is the options the parser takes), then its footer.
class Help final : public CLI::FormatterBase {
public:
    std::map<std::string, std::string> usage;  // by (sub)command name; "usage: ..." lines, '\n'-terminated

    std::string make_help(const CLI::App* app, std::string, CLI::AppFormatMode) const override {
        const auto u = usage.find(app->get_name());
        std::string out = u == usage.end() ? "usage: tickhost " + app->get_name() + "\n" : u->second;
        if (!app->get_description().empty()) out += "\n" + app->get_description() + "\n";
        const auto opts =
            app->get_options([](const CLI::Option* o) { return o->nonpositional() && !o->get_group().empty(); });
        // The help flag after the command's own options, as people read them; the version flag last.
        std::vector<const CLI::Option*> order;
        for (const auto* o : opts)
            if (o != app->get_help_ptr() && o->get_lnames() != std::vector<std::string>{"version"}) order.push_back(o);
        for (const auto* o : opts)
            if (o == app->get_help_ptr()) order.push_back(o);
        for (const auto* o : opts)
            if (o->get_lnames() == std::vector<std::string>{"version"}) order.push_back(o);
        bool any_short = false;
        for (const auto* o : order) any_short = any_short || !o->get_snames().empty();
        std::vector<std::string> left;
        size_t width = 0;
        for (const auto* o : order) {
            std::string l = "  ";
            if (!o->get_snames().empty())
                l += "-" + o->get_snames().front() + (o->get_lnames().empty() ? "" : ", ");
            else if (any_short)
                l += "    ";
            if (!o->get_lnames().empty()) l += "--" + o->get_lnames().front();
            if (o->get_type_size() != 0 && !o->get_type_name().empty()) l += " " + o->get_type_name();
            width = std::max(width, l.size());
            left.push_back(std::move(l));
        }
        if (!order.empty()) out += "\noptions:\n";
        for (size_t i = 0; i < order.size(); ++i) {
            // A description may have several lines: each continues under the first.
            std::string desc = order[i]->get_description();
            std::string line = left[i] + std::string(width + 2 - left[i].size(), ' ');
            for (size_t nl; (nl = desc.find('\n')) != std::string::npos; desc.erase(0, nl + 1))
                out += line + desc.substr(0, nl) + "\n", line = std::string(width + 2, ' ');
            out += line + desc + "\n";
        }
        return out + app->get_footer();
    }
};

// ---- usage errors ----------------------------------------------------------------------------------------

size_t edit_distance(const std::string& a, const std::string& b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            const size_t up = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
            diag = up;
        }
    }
    return row[b.size()];
}

// "; did you mean 'check'?" for a near miss among `known`, else "".
std::string did_you_mean(const std::string& word, const std::vector<std::string>& known) {
    std::string best;
    size_t best_d = 3;  // at most two edits away
    for (const auto& k : known) {
        const size_t d = edit_distance(word, k);
        if (d < best_d) best_d = d, best = k;
    }
    return best.empty() ? "" : "; did you mean '" + best + "'?";
}

// The long options of `app` (hidden ones aside): what a near miss may have meant.
std::vector<std::string> long_options(const CLI::App* app) {
    std::vector<std::string> names;
    for (const auto* o : app->get_options([](const CLI::Option* o) { return !o->get_group().empty(); }))
        for (const auto& l : o->get_lnames()) names.push_back("--" + l);
    return names;
}

const char* const kLevels[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};

std::string bad_level(const std::string& level) {
    if (std::find(std::begin(kLevels), std::end(kLevels), level) != std::end(kLevels)) return "";
    return "--log-level: '" + level + "' is not a level (use trace, debug, info, warn, error, critical or off)";
}

// CLI11's "--config: 1 required PATH missing" as "--config needs PATH"; other messages as they are.
std::string parse_error_text(const CLI::ParseError& e) {
    std::string m = e.what();
    const std::string req = ": 1 required ", miss = " missing";
    const size_t r = m.find(req);
    if (r != std::string::npos && m.size() > r + req.size() + miss.size() &&
        m.compare(m.size() - miss.size(), miss.size(), miss) == 0)
        return m.substr(0, r) + " needs " + m.substr(r + req.size(), m.size() - r - req.size() - miss.size());
    return m;
}

struct Parser {
    std::shared_ptr<Help> help = std::make_shared<Help>();
    CLI::App app{"Runs the task plugins found in plugin_dir (see host.toml) on their schedules.", "tickhost"};

    // Prints "tickhost[ <sub>]: <msg>" and the (sub)command's help to stderr; the usage exit status.
    int usage_error(const CLI::App* on, const std::string& msg) const {
        const std::string who = on == &app ? "tickhost" : "tickhost " + on->get_name();
        std::fprintf(stderr, "%s: %s\n%s", who.c_str(), msg.c_str(), help_of(on).c_str());
        return 2;
    }
    std::string help_of(const CLI::App* on) const { return help->make_help(on, "", CLI::AppFormatMode::Normal); }
};

bool valid_plugin_name(const std::string& n) {
    if (n.empty() || n.size() > 64) return false;
    for (unsigned char c : n)
        if (!(std::isalnum(c) || c == '_' || c == '-')) return false;
    return true;
}

}  // namespace

CommandLine parse_command_line(int argc, char** argv) {
    CommandLine cl;
    Parser p;
    CLI::App& app = p.app;
    Help& help = *p.help;
    app.formatter(p.help);
    // As before CLI11: an option given twice takes its last value; unknown words are reported below, with a
    // suggestion (CLI11 2.1 has none of its own); one subcommand at most (a second name is an argument).
    app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    app.allow_extras();
    app.require_subcommand(0, 1);

    help.usage["tickhost"] = R"(usage: tickhost [--config PATH] [--log-level LEVEL]
       tickhost --help | --version | help [SUBCOMMAND]
       tickhost check [--json] FILE...            load plugin files as the host would; show what they declare
       tickhost run-once FILE [--task NAME] ...   init, one run, the stop call, unload; show status and logs
       tickhost new-plugin NAME [--lang cpp|c]    write a ready-to-build plugin project
       tickhost status [--json]                   a running host: its plugins and tasks, their last runs
       tickhost reload                            make a running host re-read host.toml; say how it went
       tickhost run-now PLUGIN[/TASK]             one extra run of a running host's task, now
       (tickhost <subcommand> --help for its options)
)";
    auto* config = app.add_option("-c,--config", cl.host.config_path, "host.toml to use (default: ./host.toml)")
                       ->type_name("PATH");
    auto* level = app.add_option("-l,--log-level", cl.host.log_level,
                                 "override [host] log_level: trace, debug, info, warn, error, critical, off")
                      ->type_name("LEVEL");
    app.set_help_flag("-h,--help", "show this help");
    app.set_version_flag("-V,--version",
                         "tickhost " TICKHOST_VERSION " (plugin ABI " + std::to_string(TH_ABI_MAJOR) + "." +
                             std::to_string(TH_ABI_MINOR) + ")",
                         "show the version and the plugin ABI version");
    app.footer(R"(
signals:
  SIGINT, SIGTERM        graceful stop: every task gets its stop call, plugins are unloaded, exit 0
                         (a second one exits at once with status 130)
  SIGHUP                 re-read host.toml and apply changed plugin settings (also done when the file changes)
exit status: 0 stopped cleanly, 1 something did not stop in time, 2 bad command line or host.toml
)");

    // ---- check
    CLI::App* check = app.add_subcommand(
        "check",
        R"(Loads each plugin file exactly as the host would (regular file, size and ELF checks, a private shadow copy,
dlopen RTLD_NOW | RTLD_LOCAL, entry point, ABI negotiation, descriptor checks), prints its name, version,
description, ABI version and tasks with their default interval and timeout, and unloads it. Each file is
checked in a process of its own: files cannot affect each other, and one that crashes is reported.
init is not called and no task runs (use `tickhost run-once` for that).)");
    help.usage["check"] = "usage: tickhost check [--json] [--config PATH] [--isolation MODE] FILE...\n";
    check->add_flag("--json", cl.check.json, "print one JSON document on stdout instead of text");
    check
        ->add_option("-c,--config", cl.check.config_path,
                     "take shadow_dir, default_timeout, max_plugin_size and the file checks from this host.toml")
        ->type_name("PATH");
    std::string check_isolation;
    auto* check_iso = check->add_option("--isolation", check_isolation,
                                        "none: load it in this process; process: in a tickhost-worker process, as "
                                        "an isolated plugin (default: as host.toml says)")
                          ->type_name("MODE")
                          ->check(CLI::IsMember({"none", "process"}));
    check->add_option("FILE", cl.check.files)->take_all();
    check->set_help_flag("-h,--help", "show this help");
    check->footer(
        R"(exit status: 0 every file would load, 1 some file would be refused (the error is named, with what to do),
             2 bad command line or host.toml
)");

    // ---- run-once
    CLI::App* run = app.add_subcommand(
        "run-once",
        R"(Loads FILE as the host would (every check), initialises it with its [plugins.<name>] settings, runs one task
once on the host's scheduler (with its deadline and cancellation flag), prints its status, duration and log
lines, then makes the task's stop call, shuts the plugin down and unloads it.)");
    help.usage["run-once"] = R"(usage: tickhost run-once FILE [--task NAME] [--config PATH] [--set KEY=VALUE]...
                         [--timeout DURATION] [--log-level LEVEL] [--isolation MODE]
)";
    std::string timeout_text;
    std::vector<std::string> sets;
    run->add_option("FILE", cl.run_once.file);
    run->add_option("-t,--task", cl.run_once.task, "the task to run (default: the plugin's first task)")
        ->type_name("NAME");
    run->add_option("-c,--config", cl.run_once.config_path,
                    "host.toml to take [plugins.<name>] settings, default_timeout and shadow_dir from")
        ->type_name("PATH");
    run->add_option("-s,--set", sets,
                    "a value of [plugins.<name>.config] (wins over --config); repeatable. VALUE is "
                    "read\nas true/false, an integer, a number, or else a string (\"quotes\" optional)")
        ->type_name("KEY=VALUE")
        ->take_all()
        ->allow_extra_args(false);  // one KEY=VALUE per --set: the next word is FILE or an option
    auto* timeout = run->add_option("--timeout", timeout_text,
                                    "the run's timeout, e.g. 500ms, 10s (default: as the host would resolve it)")
                        ->type_name("DURATION");
    run->add_option("-l,--log-level", cl.run_once.log_level, "trace, debug, info (default), warn, error, critical, off")
        ->type_name("LEVEL");
    std::string run_isolation;
    auto* run_iso = run->add_option("--isolation", run_isolation,
                                    "none: run it in this process; process: in a tickhost-worker process, as an "
                                    "isolated plugin (default: as host.toml says)")
                        ->type_name("MODE")
                        ->check(CLI::IsMember({"none", "process"}));
    run->set_help_flag("-h,--help", "show this help");
    run->footer(
        R"(exit status: 0 the run and the stop call returned TH_OK, 1 the plugin was refused, its init failed, or a
             call failed or overran its deadline, 2 bad command line or host.toml
)");

    // ---- new-plugin
    CLI::App* np =
        app.add_subcommand("new-plugin", R"(Writes a ready-to-build plugin project into DIR (default: ./NAME):
  CMakeLists.txt   find_package(tickhost) and tickhost_add_plugin(NAME ...)
  NAME.cpp/.c      a plugin with one task that logs a greeting (C++ layer, or the plain C ABI)
  host.toml        a host configuration that loads plugins from ./plugins.d
  README.md        how to build, check, run once and run it in a host
NAME is the plugin's name: letters, digits, '_' or '-', at most 64 characters.)");
    help.usage["new-plugin"] = "usage: tickhost new-plugin NAME [--lang cpp|c] [--dir DIR]\n";
    np->add_option("NAME", cl.new_plugin.name);
    np->add_option("--lang", cl.new_plugin.lang, "the plugin's language (default: cpp)")->type_name("cpp|c");
    np->add_option("--dir", cl.new_plugin.dir, "where to write the project (must not exist, or be empty)")
        ->type_name("DIR");
    np->set_help_flag("-h,--help", "show this help");
    np->footer("exit status: 0 written, 1 the directory is not empty or cannot be written, 2 bad command line\n");

    // ---- status, reload, run-now: a running host, through its control socket
    const std::string where_help = R"(
where the host is: with neither option, its control socket in the default place ($RUNTIME_DIRECTORY/control,
$XDG_RUNTIME_DIR/tickhost/control or /tmp/tickhost-<uid>/control), then /run/tickhost/control (a system
service's). Only the host's user and root may use it.
)";
    auto target_options = [&](CLI::App* sub, ControlTarget& t) {
        auto* c = sub->add_option("-c,--config", t.config_path,
                                  "the host.toml the host runs on: its socket is where that file says")
                      ->type_name("PATH");
        auto* s = sub->add_option("-s,--socket", t.socket_path, "the host's control socket")->type_name("PATH");
        c->excludes(s);
    };
    CLI::App* st = app.add_subcommand(
        "status",
        R"(Shows a running host: its version, pid, uptime and configuration (when it was applied, or why the last reload
was refused); each plugin with its version, file, sha256, mode, state (running, refused with its code and
reason, disabled, backing off or down after crashes, pinned) and since when; each task with its interval,
timeout, runs, failures, skipped ticks, timeouts, last run (when, how long, result, error) and next run.)");
    help.usage["status"] = "usage: tickhost status [--json] [--tasks N] [--config PATH | --socket PATH]\n";
    st->add_flag("--json", cl.status.json,
                 "print the status document (JSON, one line; schema in docs/operating.md) instead of tables");
    st->add_option("--tasks", cl.status.tasks, "list at most N tasks per plugin (default 200; totals count all)")
        ->type_name("N")
        ->check(CLI::Range(size_t(0), size_t(1000000)));
    target_options(st, cl.status.target);
    st->set_help_flag("-h,--help", "show this help");
    st->footer(where_help +
               R"(exit status: 0 shown, 2 bad command line or host.toml, 3 no host answered (the message says where it
             looked and what to do)
)");

    CLI::App* rl = app.add_subcommand(
        "reload",
        R"(Makes a running host re-read and apply its host.toml, as SIGHUP does, waits until it is done and says how it
went: applied, or the file:line:column of what is wrong (the host then keeps the configuration it runs).)");
    help.usage["reload"] = "usage: tickhost reload [--config PATH | --socket PATH]\n";
    target_options(rl, cl.reload.target);
    rl->set_help_flag("-h,--help", "show this help");
    rl->footer(where_help +
               R"(exit status: 0 applied, 1 refused (the error names file:line:column), 2 bad command line or host.toml,
             3 no host answered
)");

    CLI::App* rn = app.add_subcommand(
        "run-now",
        R"(Makes a running host run a task of one of its plugins once, now, beside its schedule (which it does not move),
with the task's deadline and cancellation as any run; without /TASK, each of the plugin's tasks. Runs of a
task never overlap: if one is in flight, nothing is queued, and it says so.)");
    help.usage["run-now"] = "usage: tickhost run-now PLUGIN[/TASK] [--wait] [--config PATH | --socket PATH]\n";
    std::string run_now_what;
    rn->add_option("PLUGIN[/TASK]", run_now_what);
    rn->add_flag("--wait", cl.run_now.wait, "wait for the run to end and show its result and duration");
    target_options(rn, cl.run_now.target);
    rn->set_help_flag("-h,--help", "show this help");
    rn->footer(where_help +
               R"(exit status: 0 every run started (with --wait: and succeeded), 1 not run (already running, abandoned,
             no such plugin or task; with --wait: a run failed), 2 bad command line or host.toml, 3 no host answered
)");

    // ---- help [SUBCOMMAND], as git and systemctl users expect
    std::string topic;
    CLI::App* help_cmd = app.add_subcommand("help", "Shows the help of tickhost, or of one of its subcommands.");
    help.usage["help"] = "usage: tickhost help [SUBCOMMAND]\n";
    help_cmd->add_option("SUBCOMMAND", topic);
    help_cmd->set_help_flag("-h,--help", "show this help");

    const std::vector<CLI::App*> subs = {check, run, np, st, rl, rn, help_cmd};
    auto selected = [&]() -> const CLI::App* {
        const auto s = app.get_subcommands();
        return s.empty() ? &app : s.front();
    };
    auto fail = [&](const CLI::App* on, const std::string& msg) {
        cl.run = CommandLine::Run::exit;
        cl.exit_status = p.usage_error(on, msg);
        return cl;
    };
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp&) {
        std::fputs(p.help_of(selected()).c_str(), stdout);
        return cl;
    } catch (const CLI::CallForVersion& e) {
        std::printf("%s\n", e.what());
        return cl;
    } catch (const CLI::ParseError& e) {
        return fail(selected(), parse_error_text(e));
    }

    // Words nobody took: a near miss gets a suggestion. (CLI11 lists "--" there too, where it ended the options:
    // fine after a subcommand with positional arguments, meaningless before one.)
    auto unclaimed = [](const CLI::App* a) {
        auto words = a->remaining();
        words.erase(std::remove(words.begin(), words.end(), "--"), words.end());
        return words;
    };
    if (const auto extra = app.remaining(); !extra.empty()) {
        const std::string& w = extra.front();
        if (w.size() > 1 && w[0] == '-')  // "--" included
            return fail(&app,
                        "unknown argument '" + w + "'" + did_you_mean(w.substr(0, w.find('=')), long_options(&app)));
        std::vector<std::string> names;
        for (const auto* s : subs) names.push_back(s->get_name());
        return fail(&app, "unknown subcommand '" + w + "'" + did_you_mean(w, names));
    }
    const CLI::App* sub = selected();
    if (sub != &app) {
        if (config->count() || level->count())
            return fail(sub, "the options before '" + sub->get_name() + "' are the host's; give " + sub->get_name() +
                                 " its own after it");
        const auto extra = unclaimed(sub);
        for (const auto& w : extra)
            if (w.size() > 1 && w[0] == '-')
                return fail(sub,
                            "unknown option '" + w + "'" + did_you_mean(w.substr(0, w.find('=')), long_options(sub)));
        if (!extra.empty()) {
            const std::string what = sub == run               ? "one plugin file at a time"
                                     : sub == np              ? "one NAME only"
                                     : sub == rn              ? "one PLUGIN[/TASK] at a time"
                                     : sub == st || sub == rl ? "no arguments"
                                                              : "one SUBCOMMAND only";
            return fail(sub, what + " ('" + extra.front() + "' is a second one)");
        }
    }

    if (sub == &app) {
        if (!cl.host.log_level.empty() && !bad_level(cl.host.log_level).empty())
            return fail(&app, bad_level(cl.host.log_level));
        cl.run = CommandLine::Run::host;
    } else if (sub == check) {
        if (cl.check.files.empty()) return fail(check, "name at least one plugin file");
        if (check_iso->count()) cl.check.isolation = check_isolation == "process" ? Isolation::process : Isolation::none;
        cl.run = CommandLine::Run::check;
    } else if (sub == run) {
        RunOnceArgs& r = cl.run_once;
        if (r.file.empty()) return fail(run, "name the plugin file");
        if (timeout->count()) {
            const auto d = parse_duration(timeout_text);
            if (!d || d->count() <= 0)
                return fail(run, "--timeout: '" + timeout_text + "' is not a positive duration (e.g. 500ms, 10s)");
            if (*d > max_duration)
                return fail(run, "--timeout: '" + timeout_text +
                                     "' is longer than the longest duration tickhost accepts, 8760h (365 days)");
            r.timeout = *d;
        }
        for (const auto& kv : sets) {
            const auto eq = kv.find('=');
            if (eq == std::string::npos || eq == 0) return fail(run, "--set needs KEY=VALUE");
            const std::string key = kv.substr(0, eq), value = kv.substr(eq + 1);
            // A value written as a duration is bounded like every duration (the plugin may schedule with it).
            if (auto d = parse_duration(value); d && *d > max_duration)
                return fail(run, "--set " + key + ": '" + value +
                                     "' is longer than the longest duration tickhost accepts, 8760h (365 days)");
            r.set.emplace_back(key, value);
        }
        if (!bad_level(r.log_level).empty()) return fail(run, bad_level(r.log_level));
        if (run_iso->count()) r.isolation = run_isolation == "process" ? Isolation::process : Isolation::none;
        cl.run = CommandLine::Run::run_once;
    } else if (sub == np) {
        NewPluginArgs& n = cl.new_plugin;
        if (n.name.empty()) return fail(np, "name the plugin");
        if (!valid_plugin_name(n.name))
            return fail(np, "'" + n.name + "' is not a plugin name ([A-Za-z0-9_-], 1..64 characters)");
        if (n.lang != "cpp" && n.lang != "c") return fail(np, "--lang is cpp or c");
        cl.run = CommandLine::Run::new_plugin;
    } else if (sub == st) {
        cl.run = CommandLine::Run::status;
    } else if (sub == rl) {
        cl.run = CommandLine::Run::reload;
    } else if (sub == rn) {
        if (run_now_what.empty()) return fail(rn, "name the plugin (PLUGIN, or PLUGIN/TASK for one of its tasks)");
        const size_t slash = run_now_what.find('/');
        cl.run_now.plugin = run_now_what.substr(0, slash);
        if (slash != std::string::npos) cl.run_now.task = run_now_what.substr(slash + 1);
        if (!valid_plugin_name(cl.run_now.plugin))
            return fail(rn, "'" + cl.run_now.plugin + "' is not a plugin name ([A-Za-z0-9_-], 1..64 characters)");
        if (slash != std::string::npos && cl.run_now.task.empty()) return fail(rn, "name the task after the '/'");
        cl.run = CommandLine::Run::run_now;
    } else {  // help [SUBCOMMAND]
        if (topic.empty()) {
            std::fputs(p.help_of(&app).c_str(), stdout);
            return cl;
        }
        for (const auto* s : subs)
            if (s->get_name() == topic) {
                std::fputs(p.help_of(s).c_str(), stdout);
                return cl;
            }
        std::vector<std::string> names;
        for (const auto* s : subs) names.push_back(s->get_name());
        return fail(&app, "help: no subcommand '" + topic + "'" + did_you_mean(topic, names));
    }
    return cl;
}

void apply_isolation(HostConfig& config, std::optional<Isolation> mode) {
    if (!mode) return;
    config.isolation = *mode;
    for (auto& [name, s] : config.plugins) s.isolation = *mode;
}

std::string human_duration(std::chrono::nanoseconds d) {
    const double ns = double(d.count());
    char buf[64];
    if (ns < 1e3)
        std::snprintf(buf, sizeof buf, "%.0f ns", ns);
    else if (ns < 1e6)
        std::snprintf(buf, sizeof buf, "%.1f us", ns / 1e3);
    else if (ns < 1e9)
        std::snprintf(buf, sizeof buf, "%.3f ms", ns / 1e6);
    else
        std::snprintf(buf, sizeof buf, "%.3f s", ns / 1e9);
    return buf;
}

namespace {
// A sink that keeps its own plain format: set_log_sinks() applies the host's pattern to every sink, and a
// tool's output should read like a transcript, not like a server log.
class LineSink final : public spdlog::sinks::base_sink<std::mutex> {
public:
    explicit LineSink(std::FILE* out) : out_(out) {}

protected:
    void sink_it_(const spdlog::details::log_msg& m) override {
        const auto level = spdlog::level::to_string_view(m.level);
        std::fprintf(out_, "  %-5.*s [%.*s] %.*s\n", int(level.size()), level.data(), int(m.logger_name.size()),
                     m.logger_name.data(), int(m.payload.size()), m.payload.data());
    }
    void flush_() override { std::fflush(out_); }
    void set_pattern_(const std::string&) override {}
    void set_formatter_(std::unique_ptr<spdlog::formatter>) override {}

private:
    std::FILE* out_;
};
}  // namespace

void log_lines_to(std::FILE* out, const std::string& level) {
    const auto lvl = spdlog::level::from_str(level);
    if (lvl == spdlog::level::off && level != "off")
        throw std::runtime_error("unknown log level '" + level +
                                 "' (use trace, debug, info, warn, error, critical or off)");
    set_log_sinks({std::make_shared<LineSink>(out)}, lvl);
}

}  // namespace tickhost::app
