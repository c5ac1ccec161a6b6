// host.toml -> validated HostConfig (see config.hpp for the contract).
#include "tickhost/config.hpp"
#include "tickhost/tickers.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <sstream>
#include <system_error>
#include <utility>

#include <toml++/toml.h>

#include <unistd.h>

namespace tickhost {

namespace fs = std::filesystem;

ConfigError::ConfigError(std::string file, uint32_t line, uint32_t column, std::string key, std::string message)
    // file:line:column when the place is known; just the file otherwise (it could not be read at all).
    : std::runtime_error(file + (line ? ":" + std::to_string(line) + ":" + std::to_string(column) : std::string()) +
                         ": " + message),
      file_(std::move(file)),
      line_(line),
      column_(column),
      key_(std::move(key)),
      message_(std::move(message)) {}

namespace {

constexpr uint64_t kMaxNs = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());

// ---------------------------------------------------------------- durations

// A unit's length in ns, written as mult * 10^exp so that fractions can be scaled without overflow.
struct DurationUnit {
    std::string_view name;
    uint64_t mult;
    int exp;
    int rank;  // larger = longer; compound forms must go from longer to shorter units
};

// Longest names first so "ms" is not read as "m" + garbage.
constexpr DurationUnit kDurationUnits[] = {
    {"ns", 1, 0, 0},
    {"us", 1, 3, 1},
    {"\xC2\xB5s", 1, 3, 1},  // U+00B5 MICRO SIGN
    {"\xCE\xBCs", 1, 3, 1},  // U+03BC GREEK SMALL LETTER MU (what many keyboards produce)
    {"ms", 1, 6, 2},
    {"s", 1, 9, 3},
    {"m", 6, 10, 4},
    {"h", 36, 11, 5},
};

uint64_t pow10(int n) {
    uint64_t r = 1;
    while (n-- > 0) r *= 10;
    return r;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

std::string_view trim(std::string_view s) {
    auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
    while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
    while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
    return s;
}

// ---------------------------------------------------------------- sizes

struct SizeUnit {
    std::string_view name;
    uint64_t bytes;
};

constexpr SizeUnit kSizeUnits[] = {
    {"B", 1},
    {"KiB", 1024ull},
    {"MiB", 1024ull * 1024},
    {"GiB", 1024ull * 1024 * 1024},
    {"KB", 1000ull},
    {"MB", 1000ull * 1000},
    {"GB", 1000ull * 1000 * 1000},
};

// "10MiB", "512KB", "100B" -> bytes; nullopt for anything else (no spaces, no fractions, no overflow).
std::optional<uint64_t> parse_size(std::string_view text) {
    text = trim(text);
    size_t i = 0;
    uint64_t n = 0;
    while (i < text.size() && is_digit(text[i])) {
        uint64_t d = static_cast<uint64_t>(text[i] - '0');
        if (n > (std::numeric_limits<uint64_t>::max() - d) / 10) return std::nullopt;
        n = n * 10 + d;
        ++i;
    }
    if (i == 0) return std::nullopt;
    std::string_view unit = text.substr(i);
    for (const SizeUnit& u : kSizeUnits) {
        if (unit == u.name) {
            if (n != 0 && u.bytes > std::numeric_limits<uint64_t>::max() / n) return std::nullopt;
            return n * u.bytes;
        }
    }
    return std::nullopt;
}

// ---------------------------------------------------------------- jitter shares

// "10%", "2.5%", "0.0001%" -> parts per million (up to 4 decimals); nullopt for anything else. Above 100% is
// returned as is (the caller says why it is refused).
std::optional<uint64_t> parse_percent(std::string_view text) {
    text = trim(text);
    if (text.size() < 2 || text.back() != '%') return std::nullopt;
    text.remove_suffix(1);
    size_t i = 0;
    uint64_t whole = 0;
    while (i < text.size() && is_digit(text[i])) {
        whole = std::min<uint64_t>(whole * 10 + uint64_t(text[i] - '0'), 1000);  // above 100%: stays above
        ++i;
    }
    if (i == 0) return std::nullopt;
    uint64_t frac = 0;
    int digits = 0;
    if (i < text.size() && text[i] == '.') {
        ++i;
        while (i < text.size() && is_digit(text[i])) {
            if (++digits > 4) return std::nullopt;  // finer than 1 ppm
            frac = frac * 10 + uint64_t(text[i] - '0');
            ++i;
        }
        if (digits == 0) return std::nullopt;
    }
    if (i != text.size()) return std::nullopt;
    while (digits++ < 4) frac *= 10;
    return whole * 10000 + frac;
}

// ---------------------------------------------------------------- messages

// Optimal string alignment distance: a swapped pair of letters ("defualt") counts as one edit.
size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
    for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
    for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        for (size_t j = 1; j <= b.size(); ++j) {
            size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
                d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
        }
    }
    return d[a.size()][b.size()];
}

const std::string_view* closest(std::string_view name, const std::vector<std::string_view>& candidates) {
    const std::string_view* best = nullptr;
    size_t best_distance = 3;  // only suggest within distance 2
    for (const std::string_view& c : candidates) {
        size_t dist = edit_distance(name, c);
        if (dist < best_distance) {
            best_distance = dist;
            best = &c;
        }
    }
    return best;
}

std::string join(const std::vector<std::string_view>& items) {
    std::string out;
    for (const std::string_view& s : items) {
        if (!out.empty()) out += ", ";
        out += s;
    }
    return out;
}

// "did you mean 'x'?" when something is close, else the full list so the user need not open the docs.
std::string suggestion(std::string_view name, const std::vector<std::string_view>& candidates,
                       std::string_view what) {
    if (const std::string_view* best = closest(name, candidates)) return "did you mean '" + std::string(*best) + "'?";
    return "valid " + std::string(what) + ": " + join(candidates);
}

// A value as the user wrote it, quoted, with control characters escaped so messages stay on one line.
std::string quote(std::string_view s) {
    std::string out = "\"";
    for (char c : s) {
        unsigned char u = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (c == '\n') {
            out += "\\n";
        } else if (c == '\t') {
            out += "\\t";
        } else if (u < 0x20 || u == 0x7F) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04X", u);
            out += buf;
        } else {
            out += c;
        }
    }
    out += '"';
    return out;
}

bool is_bare_key(std::string_view s) {
    if (s.empty()) return false;
    return std::all_of(s.begin(), s.end(), [](char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || is_digit(c) || c == '_' || c == '-';
    });
}

// Appends one key segment the way TOML would need it written, so "plugins.x.tasks.\"a.b\"" is unambiguous.
std::string child_key(const std::string& parent, std::string_view segment) {
    std::string part = is_bare_key(segment) ? std::string(segment) : quote(segment);
    return parent.empty() ? part : parent + "." + part;
}

const char* type_name(toml::node_type t) {
    switch (t) {
        case toml::node_type::table: return "table";
        case toml::node_type::array: return "array";
        case toml::node_type::string: return "string";
        case toml::node_type::integer: return "integer";
        case toml::node_type::floating_point: return "float";
        case toml::node_type::boolean: return "boolean";
        case toml::node_type::date: return "date";
        case toml::node_type::time: return "time";
        case toml::node_type::date_time: return "date-time";
        default: return "nothing";
    }
}

// The value as TOML text, for "got ..." in messages and for dates in PluginValues.
std::string node_text(const toml::node& n) {
    std::ostringstream os;
    switch (n.type()) {
        case toml::node_type::string: return quote(n.as_string()->get());
        case toml::node_type::integer: os << n.as_integer()->get(); break;
        case toml::node_type::floating_point: os << n.as_floating_point()->get(); break;
        case toml::node_type::boolean: os << (n.as_boolean()->get() ? "true" : "false"); break;
        case toml::node_type::date: os << n.as_date()->get(); break;
        case toml::node_type::time: os << n.as_time()->get(); break;
        case toml::node_type::date_time: os << n.as_date_time()->get(); break;
        default: os << type_name(n.type()); break;
    }
    return os.str();
}

// "string \"two\"", "integer 3", "table": what the user wrote instead of what was expected.
std::string got(const toml::node& n) {
    if (n.is_table()) return "a table";
    if (n.is_array()) return "an array";
    return std::string(type_name(n.type())) + " " + node_text(n);
}

// ---------------------------------------------------------------- the reader

// A table's entries in file order, so the first error reported is the first one in the file.
std::vector<std::pair<const toml::key*, const toml::node*>> in_file_order(const toml::table& t) {
    std::vector<std::pair<const toml::key*, const toml::node*>> out;
    for (auto&& [k, v] : t) out.emplace_back(&k, &v);
    std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
        const toml::source_position& pa = a.first->source().begin;
        const toml::source_position& pb = b.first->source().begin;
        return pa.line != pb.line ? pa.line < pb.line : pa.column < pb.column;
    });
    return out;
}

const std::vector<std::string_view> kTopKeys = {"host", "plugins"};
const std::vector<std::string_view> kHostKeys = {
    "plugin_dir", "workers",        "default_timeout", "shutdown_timeout", "log_level",       "log_file",
    "log_sink",   "log_max_size",   "log_max_files",   "shadow_dir",       "watch",           "poll_interval",
    "settle",     "allow_insecure", "allow_symlinks",  "backoff_max",      "max_plugin_size", "max_tasks_per_plugin",
    "isolation",  "abandon_after",  "crash_limit",     "crash_window",     "jitter",          "align",
    "control_socket",
};
const std::vector<std::string_view> kPluginKeys = {
    "enabled", "interval",  "timeout", "tasks", "config",     "sha256",         "jitter",
    "align",   "isolation", "user",    "group", "memory_max", "open_files_max", "processes_max",
};
// [plugins.<name>] keys about the plugin's own process: refused when it runs in the host's.
const std::vector<std::string_view> kProcessOnlyKeys = {"user", "group", "memory_max", "open_files_max",
                                                        "processes_max"};
const std::vector<std::string_view> kTaskKeys = {"interval", "timeout", "jitter", "align"};
const std::vector<std::string_view> kLogLevels = {"trace", "debug", "info", "warn", "error", "critical", "off"};
const std::vector<std::string_view> kLogSinks = {"console", "file", "rotating"};
const std::vector<std::string_view> kWatchModes = {"auto", "inotify", "poll", "off"};
const std::vector<std::string_view> kIsolationModes = {"none", "process"};

// An "isolation" value read ahead of the keys around it (a process-only key may come before the plugin's
// isolation, [plugins] before [host]). nullopt when it is not a valid value: that is reported at its own place.
std::optional<Isolation> isolation_ahead(const toml::node& n) {
    std::optional<std::string> s = n.value<std::string>();
    if (s && *s == "none") return Isolation::none;
    if (s && *s == "process") return Isolation::process;
    return std::nullopt;
}

bool contains(const std::vector<std::string_view>& v, std::string_view s) {
    return std::find(v.begin(), v.end(), s) != v.end();
}

class Reader {
public:
    explicit Reader(const fs::path& source) : file_(source.string()) {}

    [[noreturn]] void fail(const toml::source_region& where, const std::string& key, const std::string& what) const {
        throw ConfigError(file_, where.begin.line, where.begin.column, key, key.empty() ? what : key + ": " + what);
    }
    [[noreturn]] void fail(const toml::node& n, const std::string& key, const std::string& what) const {
        fail(n.source(), key, what);
    }

    const toml::table& table(const toml::node& n, const std::string& key) const {
        if (const toml::table* t = n.as_table()) return *t;
        fail(n, key, "must be a table, got " + got(n));
    }

    void unknown(const toml::key& k, const std::string& key, const std::vector<std::string_view>& valid) const {
        fail(k.source(), key, "unknown key (" + suggestion(k.str(), valid, "keys") + ")");
    }

    bool boolean(const toml::node& n, const std::string& key) const {
        if (const auto* v = n.as_boolean()) return v->get();
        fail(n, key, "must be a boolean (true or false), got " + got(n));
    }

    int64_t integer(const toml::node& n, const std::string& key) const {
        if (const auto* v = n.as_integer()) return v->get();
        fail(n, key, "must be an integer, got " + got(n));
    }

    int64_t integer_in(const toml::node& n, const std::string& key, int64_t lo, int64_t hi) const {
        int64_t v = integer(n, key);
        if (v < lo || v > hi)
            fail(n, key, "must be " + std::to_string(lo) + ".." + std::to_string(hi) + ", got " + std::to_string(v));
        return v;
    }

    const std::string& string(const toml::node& n, const std::string& key) const {
        if (const auto* v = n.as_string()) return v->get();
        fail(n, key, "must be a string, got " + got(n));
    }

    const std::string& non_empty_string(const toml::node& n, const std::string& key) const {
        const std::string& s = string(n, key);
        if (trim(s).empty()) fail(n, key, "must not be empty");
        return s;
    }

    std::string one_of(const toml::node& n, const std::string& key, const std::vector<std::string_view>& valid) const {
        const std::string& s = string(n, key);
        if (!contains(valid, s))
            fail(n, key, quote(s) + " is not valid (" + suggestion(s, valid, "values") + ")");
        return s;
    }

    // A positive duration written as a string with units.
    Duration duration(const toml::node& n, const std::string& key) const {
        if (const auto* i = n.as_integer()) {
            fail(n, key, "a duration needs a unit (write it as a string, e.g. \"" + std::to_string(i->get()) + "s\")");
        }
        if (n.is_floating_point()) fail(n, key, "a duration needs a unit (write it as a string, e.g. \"10s\")");
        if (!n.is_string()) fail(n, key, "must be a duration string like \"10s\", got " + got(n));
        const std::string& s = n.as_string()->get();
        std::optional<Duration> d = parse_duration(s);
        std::string_view t = trim(s);
        // parse_duration has no sign; a "-" in front of a valid duration deserves the clearer message.
        if (!d && !t.empty() && t.front() == '-' && parse_duration(t.substr(1)))
            fail(n, key, "must be > 0, got " + quote(s));
        if (!d) {
            fail(n, key, quote(s) + " is not a duration (write it with a unit: \"250ms\", \"10s\", \"5m\", \"1h\")");
        }
        if (d->count() <= 0) fail(n, key, "must be > 0, got " + quote(s));
        if (*d > max_duration)
            fail(n, key, quote(s) + " is longer than the longest duration tickhost accepts, 8760h (365 days)");
        return *d;
    }

    // A jitter: a duration ("3s"), a share of the interval ("10%", at most "100%"), or zero ("0s", "0%",
    // "off") to turn off one set further out.
    Jitter jitter(const toml::node& n, const std::string& key) const {
        const std::string example =
            " (write it as a string: a duration such as \"3s\", or a share of the interval "
            "such as \"10%\")";
        if (n.is_integer() || n.is_floating_point()) fail(n, key, "a jitter needs a unit or a %" + example);
        if (!n.is_string()) fail(n, key, "must be a jitter, got " + got(n) + example);
        const std::string& s = n.as_string()->get();
        const std::string_view t = trim(s);
        Jitter j;
        if (t == "off") return j;
        if (!t.empty() && t.back() == '%') {
            std::optional<uint64_t> ppm = parse_percent(t);
            if (!ppm)
                fail(n, key, quote(s) + " is not a percentage (write e.g. \"10%\" or \"2.5%\", up to 4 decimals)");
            if (*ppm > 1000000)
                fail(n, key, quote(s) + " is more than the interval: a jitter is at most \"100%\" of it");
            j.ppm = uint32_t(*ppm);
            return j;
        }
        if (!t.empty() && t.front() == '-' && parse_duration(t.substr(1)))
            fail(n, key, "must be >= 0, got " + quote(s));
        std::optional<Duration> d = parse_duration(s);
        if (!d) fail(n, key, quote(s) + " is not a jitter" + example);
        if (*d > max_duration)
            fail(n, key, quote(s) + " is longer than the longest duration tickhost accepts, 8760h (365 days)");
        j.duration = *d;
        return j;
    }

    // 64 hex digits (as `sha256sum` prints them), returned in lower case.
    std::string sha256(const toml::node& n, const std::string& key) const {
        std::string s = string(n, key);
        const bool hex = std::all_of(s.begin(), s.end(), [](char c) {
            return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
        });
        if (s.size() != 64 || !hex)
            fail(n, key, quote(s) + " is not a SHA-256 (64 hex digits; get it with: sha256sum <file>)");
        std::transform(s.begin(), s.end(), s.begin(), [](char c) { return c >= 'A' && c <= 'F' ? char(c + 32) : c; });
        return s;
    }

    // `zero_hint` follows "must be > 0, got 0", e.g. " (leave it out for no limit)".
    uint64_t size(const toml::node& n, const std::string& key, std::string_view zero_hint = {}) const {
        if (const auto* i = n.as_integer()) {
            if (i->get() <= 0) fail(n, key, "must be > 0, got " + std::to_string(i->get()) + std::string(zero_hint));
            return static_cast<uint64_t>(i->get());
        }
        if (!n.is_string()) fail(n, key, "must be a size (bytes, or a string like \"10MiB\"), got " + got(n));
        const std::string& s = n.as_string()->get();
        std::optional<uint64_t> v = parse_size(s);
        if (!v) {
            fail(n, key, quote(s) + " is not a size (write an integer with a unit: B, KiB, MiB, GiB, KB, MB, GB, "
                                    "e.g. \"10MiB\")");
        }
        if (*v == 0) fail(n, key, "must be > 0, got " + quote(s) + std::string(zero_hint));
        return *v;
    }

    // 1..hi; 0 (the field's "unset") gets its own message, as leaving the key out is how to say it.
    uint64_t limit(const toml::node& n, const std::string& key, int64_t hi, std::string_view zero_means) const {
        if (const auto* i = n.as_integer(); i && i->get() == 0) {
            fail(n, key,
                 "must be 1.." + std::to_string(hi) + ", got 0 (leave it out for " + std::string(zero_means) + ")");
        }
        return static_cast<uint64_t>(integer_in(n, key, 1, hi));
    }

    Isolation isolation(const toml::node& n, const std::string& key) const {
        std::string s = one_of(n, key, kIsolationModes);
        if (s == "none") return Isolation::none;
#if !defined(__linux__)
        fail(n, key, "process isolation is available on Linux only (use \"none\", or leave isolation out)");
#endif
        return Isolation::process;
    }

    // A user or group to run a plugin's process as: a name or a numeric id (an integer, or digits in a
    // string). Whether it exists is checked when the plugin starts, on the machine that runs it.
    std::string account(const toml::node& n, const std::string& key, const std::string& what) const {
        constexpr uint64_t kMaxId = 4294967294;  // (uid_t)-1 means "unchanged" to setresuid and friends
        const std::string range = "a numeric " + what + " id must be 0.." + std::to_string(kMaxId);
        if (const auto* i = n.as_integer()) {
            if (i->get() < 0 || static_cast<uint64_t>(i->get()) > kMaxId)
                fail(n, key, range + ", got " + std::to_string(i->get()));
            return std::to_string(i->get());
        }
        if (!n.is_string()) {
            fail(n, key, "must be a " + what + " name or numeric id (e.g. \"nobody\" or 65534), got " + got(n));
        }
        const std::string& s = n.as_string()->get();
        if (s.empty()) fail(n, key, "must not be empty (leave it out to keep the host's " + what + ")");
        if (std::all_of(s.begin(), s.end(), is_digit)) {
            if (s.size() > 10 || std::stoull(s) > kMaxId) fail(n, key, range + ", got " + quote(s));
            return s;
        }
        const bool bad_char = std::any_of(s.begin(), s.end(), [](char c) {
            unsigned char u = static_cast<unsigned char>(c);
            return u <= 0x20 || u == 0x7F || c == ':';
        });
        if (bad_char || s.front() == '-') {
            fail(n, key,
                 quote(s) + " is not a " + what +
                     " name or numeric id (a name has no spaces, control characters or ':', and does not start with "
                     "'-')");
        }
        return s;
    }

    void flatten(const toml::node& n, const std::string& flat, const std::string& key, PluginValues& out) const {
        if (const toml::table* t = n.as_table()) {
            for (auto [k, v] : in_file_order(*t)) {
                std::string sub_flat = flat + "." + std::string(k->str());
                flatten(*v, sub_flat, child_key(key, k->str()), out);
            }
            return;
        }
        if (const toml::array* a = n.as_array()) {
            for (size_t i = 0; i < a->size(); ++i) {
                std::string idx = std::to_string(i);
                flatten(*a->get(i), flat + "." + idx, key + "." + idx, out);
            }
            return;
        }
        // Strip the leading "." that the recursion puts in front of every key.
        std::string name = flat.substr(1);
        // "a.b" = 1 next to a.b = 2 would silently lose one of them.
        if (out.find(name)) fail(n, key, "clashes with another config key that also flattens to '" + name + "'");
        switch (n.type()) {
            case toml::node_type::boolean: out.set(name, n.as_boolean()->get()); break;
            case toml::node_type::integer: out.set(name, n.as_integer()->get()); break;
            case toml::node_type::floating_point: out.set(name, n.as_floating_point()->get()); break;
            case toml::node_type::string: out.set(name, n.as_string()->get()); break;
            default: out.set(name, node_text(n)); break;  // dates and times: their TOML text
        }
    }

    TaskSettings task(const toml::table& t, const std::string& key) const {
        TaskSettings ts;
        for (auto [k, v] : in_file_order(t)) {
            std::string sub = child_key(key, k->str());
            if (k->str() == "interval") {
                ts.interval = duration(*v, sub);
            } else if (k->str() == "timeout") {
                ts.timeout = duration(*v, sub);
            } else if (k->str() == "jitter") {
                ts.jitter = jitter(*v, sub);
            } else if (k->str() == "align") {
                ts.align = boolean(*v, sub);
            } else {
                unknown(*k, sub, kTaskKeys);
            }
        }
        return ts;
    }

    // `host_isolation`: [host] isolation as read ahead (nullopt: not a valid value).
    PluginSettings plugin(const toml::table& t, const std::string& key, std::optional<Isolation> host_isolation) const {
        PluginSettings ps;
        // What the plugin's process-only keys are checked against as they come, in file order.
        const toml::node* own = t.get("isolation");
        const std::optional<Isolation> effective = own ? isolation_ahead(*own) : host_isolation;
        for (auto [k, v] : in_file_order(t)) {
            std::string_view name = k->str();
            std::string sub = child_key(key, name);
            if (effective == Isolation::none && contains(kProcessOnlyKeys, name)) {
                const std::string n(name);
                if (own) {
                    fail(k->source(), sub,
                         "applies only with isolation = \"process\", and [" + key +
                             "] isolation is \"none\" (set it to \"process\", or remove " + n + ")");
                }
                fail(k->source(), sub,
                     "applies only with isolation = \"process\", and this plugin runs with [host] isolation = "
                     "\"none\" (set isolation = \"process\" in [" +
                         key + "] or in [host], or remove " + n + ")");
            }
            if (name == "enabled") {
                ps.enabled = boolean(*v, sub);
            } else if (name == "interval") {
                ps.interval = duration(*v, sub);
            } else if (name == "timeout") {
                ps.timeout = duration(*v, sub);
            } else if (name == "jitter") {
                ps.jitter = jitter(*v, sub);
            } else if (name == "align") {
                ps.align = boolean(*v, sub);
            } else if (name == "tasks") {
                for (auto [tk, tv] : in_file_order(table(*v, sub))) {
                    std::string task_key = child_key(sub, tk->str());
                    if (tk->str().empty()) fail(tk->source(), task_key, "task name must not be empty");
                    ps.tasks[std::string(tk->str())] = task(table(*tv, task_key), task_key);
                }
            } else if (name == "config") {
                flatten(table(*v, sub), "", sub, ps.config);
            } else if (name == "sha256") {
                ps.sha256 = sha256(*v, sub);
            } else if (name == "isolation") {
                ps.isolation = isolation(*v, sub);
            } else if (name == "user") {
                ps.user = account(*v, sub, "user");
            } else if (name == "group") {
                ps.group = account(*v, sub, "group");
            } else if (name == "memory_max") {
                ps.memory_max = size(*v, sub, " (leave it out for no limit)");
            } else if (name == "open_files_max") {
                ps.open_files_max = limit(*v, sub, 1048576, "the host's limit");
            } else if (name == "processes_max") {
                ps.processes_max = limit(*v, sub, 100000, "no limit");
            } else {
                unknown(*k, sub, kPluginKeys);
            }
        }
        return ps;
    }

    static bool valid_plugin_name(std::string_view s) { return s.size() <= 64 && is_bare_key(s); }

    void host(const toml::table& t, HostConfig& cfg, bool& sink_set) const {
        for (auto [k, v] : in_file_order(t)) {
            std::string_view name = k->str();
            std::string key = child_key("host", name);
            if (name == "plugin_dir") {
                cfg.plugin_dir = non_empty_string(*v, key);
            } else if (name == "workers") {
                cfg.workers = static_cast<size_t>(integer_in(*v, key, 0, 1024));
            } else if (name == "default_timeout") {
                cfg.default_timeout = duration(*v, key);
            } else if (name == "shutdown_timeout") {
                cfg.shutdown_timeout = duration(*v, key);
            } else if (name == "log_level") {
                cfg.log_level = one_of(*v, key, kLogLevels);
            } else if (name == "log_file") {
                cfg.log_file = non_empty_string(*v, key);
            } else if (name == "log_sink") {
                std::string s = one_of(*v, key, kLogSinks);
                cfg.log_sink = s == "file" ? LogSink::file : s == "rotating" ? LogSink::rotating : LogSink::console;
                sink_set = true;
            } else if (name == "log_max_size") {
                cfg.log_max_size = size(*v, key);
            } else if (name == "log_max_files") {
                cfg.log_max_files = static_cast<uint32_t>(integer_in(*v, key, 1, 1000));
            } else if (name == "shadow_dir") {
                cfg.shadow_dir = non_empty_string(*v, key);
            } else if (name == "watch") {
                std::string s = one_of(*v, key, kWatchModes);
                cfg.watch = s == "inotify" ? WatchMode::inotify
                            : s == "poll"  ? WatchMode::poll
                            : s == "off"   ? WatchMode::off
                                           : WatchMode::automatic;
            } else if (name == "poll_interval") {
                cfg.poll_interval = duration(*v, key);
            } else if (name == "settle") {
                cfg.settle = duration(*v, key);
            } else if (name == "backoff_max") {
                // "off" turns the back-off of failing tasks off; otherwise a duration.
                if (auto s = v->value<std::string>(); s && *s == "off")
                    cfg.backoff_max = Duration::zero();
                else
                    cfg.backoff_max = duration(*v, key);
            } else if (name == "allow_insecure") {
                cfg.allow_insecure = boolean(*v, key);
            } else if (name == "allow_symlinks") {
                cfg.allow_symlinks = boolean(*v, key);
            } else if (name == "max_plugin_size") {
                cfg.max_plugin_size = size(*v, key);
            } else if (name == "max_tasks_per_plugin") {
                cfg.max_tasks_per_plugin = static_cast<uint32_t>(integer_in(*v, key, 1, 10000000));
            } else if (name == "isolation") {
                cfg.isolation = isolation(*v, key);
            } else if (name == "abandon_after") {
                cfg.abandon_after = duration(*v, key);
            } else if (name == "crash_limit") {
                cfg.crash_limit = static_cast<uint32_t>(integer_in(*v, key, 1, 1000));
            } else if (name == "crash_window") {
                cfg.crash_window = duration(*v, key);
            } else if (name == "jitter") {
                cfg.jitter = jitter(*v, key);
            } else if (name == "align") {
                cfg.align = boolean(*v, key);
            } else if (name == "control_socket") {
                cfg.control_socket = non_empty_string(*v, key);  // "off" or a path: settled in parse_config
            } else {
                unknown(*k, key, kHostKeys);
            }
        }
    }

    HostConfig read(const toml::table& root, const fs::path& source) const {
        HostConfig cfg;
        cfg.source = source;
        cfg.plugin_dir = "plugins";
        bool sink_set = false;
        const toml::node* sink_node = nullptr;
        // [host] isolation decides which plugins may set process-only keys, and [host] may come last.
        const toml::node* host_iso = root["host"]["isolation"].node();
        const std::optional<Isolation> host_isolation = host_iso ? isolation_ahead(*host_iso) : Isolation::none;
        for (auto [k, v] : in_file_order(root)) {
            std::string_view name = k->str();
            std::string key = child_key("", name);
            if (name == "host") {
                const toml::table& t = table(*v, key);
                host(t, cfg, sink_set);
                sink_node = t.get("log_sink");
            } else if (name == "plugins") {
                for (auto [pk, pv] : in_file_order(table(*v, key))) {
                    std::string plugin_key = child_key(key, pk->str());
                    if (!valid_plugin_name(pk->str())) {
                        fail(pk->source(), plugin_key,
                             "bad plugin name " + quote(pk->str()) + " (use 1-64 of A-Z a-z 0-9 _ -)");
                    }
                    cfg.plugins[std::string(pk->str())] = plugin(table(*pv, plugin_key), plugin_key, host_isolation);
                }
            } else if (!v->is_table() && contains(kHostKeys, name)) {
                fail(k->source(), key, "unknown top-level key (did you mean to put it under [host]?)");
            } else if (v->is_table()) {
                fail(k->source(), key, "unknown table (" + suggestion(name, kTopKeys, "tables") + ")");
            } else {
                unknown(*k, key, kTopKeys);
            }
        }

        check_jitters(root, cfg);
        if (!sink_set && !cfg.log_file.empty()) cfg.log_sink = LogSink::file;
        if (cfg.log_sink != LogSink::console && cfg.log_file.empty()) {
            const char* sink = cfg.log_sink == LogSink::file ? "file" : "rotating";
            std::string what = std::string("log_sink \"") + sink + "\" needs host.log_file";
            if (sink_node) fail(*sink_node, "host.log_sink", what);
            throw ConfigError(file_, 0, 0, "host.log_sink", "host.log_sink: " + what);
        }
        return cfg;
    }

    const std::string& file() const { return file_; }

    // A jitter written as a duration is at most the interval of the tasks it applies to: checked here where
    // host.toml sets that interval too (the plugin's own default interval is known only when it starts: a
    // longer jitter is then capped at it, with a warning). The error points at the jitter that applies.
    void check_jitters(const toml::table& root, const HostConfig& cfg) const {
        for (const auto& plugin : cfg.plugins) {  // no structured binding: the lambda below captures these
            const std::string& name = plugin.first;
            const PluginSettings& ps = plugin.second;
            const std::string plugin_key = child_key(child_key("", "plugins"), name);
            auto check = [&](const std::optional<Jitter>& own_task, const std::optional<Duration>& interval,
                             const std::string& where, const toml::node* task_node, const toml::node* interval_node) {
                if (!interval) return;
                const toml::node* node = nullptr;
                std::string key;
                const Jitter* j = nullptr;
                if (own_task) {
                    j = &*own_task;
                    node = task_node;
                    key = where + ".jitter";
                } else if (ps.jitter) {
                    j = &*ps.jitter;
                    node = root["plugins"][name]["jitter"].node();
                    key = plugin_key + ".jitter";
                } else if (cfg.jitter) {
                    j = &*cfg.jitter;
                    node = root["host"]["jitter"].node();
                    key = "host.jitter";
                }
                if (!j || !j->longer_than(*interval) || !node) return;
                std::string at;
                if (interval_node) {
                    const auto& b = interval_node->source().begin;
                    at = " (line " + std::to_string(b.line) + ")";
                }
                fail(*node, key,
                     quote(format_jitter(*j)) + " is longer than the interval " + quote(format_duration(*interval)) +
                         " of [" + where + "]" + at +
                         "; a jitter is at most the interval: shorten it, or write a share of the interval such as "
                         "\"50%\"");
            };
            const toml::node* plugin_interval = root["plugins"][name]["interval"].node();
            check(std::nullopt, ps.interval, plugin_key, nullptr, plugin_interval);
            for (const auto& [task, ts] : ps.tasks) {
                const std::string task_key = child_key(child_key(plugin_key, "tasks"), task);
                auto tn = root["plugins"][name]["tasks"][task];
                const std::optional<Duration> interval = ts.interval ? ts.interval : ps.interval;
                check(ts.jitter, interval, task_key, tn["jitter"].node(),
                      ts.interval ? tn["interval"].node() : plugin_interval);
            }
        }
    }

private:
    std::string file_;
};

// The folder relative paths in host.toml are relative to.
fs::path base_folder(const fs::path& source) {
    fs::path parent = source.parent_path();
    return parent.empty() ? fs::current_path() : fs::absolute(parent);
}

fs::path resolve(const fs::path& folder, const fs::path& p) {
    if (p.empty() || p.is_absolute()) return p;
    return (folder / p).lexically_normal();
}

}  // namespace

const std::vector<std::string_view>& config_keys(ConfigTable table) {
    switch (table) {
    case ConfigTable::host: return kHostKeys;
    case ConfigTable::plugin: return kPluginKeys;
    default: return kTaskKeys;
    }
}

// ---------------------------------------------------------------- durations

std::optional<Duration> parse_duration(std::string_view text) {
    text = trim(text);
    if (text.empty()) return std::nullopt;
    uint64_t total = 0;
    int last_rank = 99;
    size_t i = 0;
    while (i < text.size()) {
        // Integer part.
        size_t start = i;
        uint64_t whole = 0;
        while (i < text.size() && is_digit(text[i])) {
            uint64_t d = static_cast<uint64_t>(text[i] - '0');
            if (whole > (kMaxNs - d) / 10) return std::nullopt;
            whole = whole * 10 + d;
            ++i;
        }
        if (i == start) return std::nullopt;
        // Fraction: at most 17 digits count (more cannot change the ns value); the rest must still be digits.
        uint64_t frac = 0;
        int frac_digits = 0;
        if (i < text.size() && text[i] == '.') {
            ++i;
            size_t frac_start = i;
            while (i < text.size() && is_digit(text[i])) {
                if (frac_digits < 17) {
                    frac = frac * 10 + static_cast<uint64_t>(text[i] - '0');
                    ++frac_digits;
                }
                ++i;
            }
            if (i == frac_start) return std::nullopt;
        }
        // Unit.
        const DurationUnit* unit = nullptr;
        for (const DurationUnit& u : kDurationUnits) {
            if (text.substr(i, u.name.size()) == u.name) {
                unit = &u;
                break;
            }
        }
        if (!unit || unit->rank >= last_rank) return std::nullopt;
        last_rank = unit->rank;
        i += unit->name.size();

        uint64_t unit_ns = unit->mult * pow10(unit->exp);
        if (whole > kMaxNs / unit_ns) return std::nullopt;
        uint64_t ns = whole * unit_ns;
        // frac / 10^digits * mult * 10^exp, truncated toward zero; never more than one unit, so no overflow.
        uint64_t frac_ns = 0;
        if (frac_digits <= unit->exp) {
            frac_ns = frac * unit->mult * pow10(unit->exp - frac_digits);
        } else {
            frac_ns = frac * unit->mult / pow10(frac_digits - unit->exp);
        }
        if (ns > kMaxNs - frac_ns) return std::nullopt;
        ns += frac_ns;
        if (total > kMaxNs - ns) return std::nullopt;
        total += ns;
    }
    return Duration(static_cast<int64_t>(total));
}

// Hours and minutes as whole components, then the rest as one decimal number of the largest unit that fits:
// 90s -> "1m30s", 1500ms -> "1.5s", 3600.5s -> "1h0.5s", 1500us -> "1.5ms", 0 -> "0s". Exact (no rounding),
// and parse_duration(format_duration(d)) == d for every d >= 0. Negative values get a leading "-".
std::string format_duration(Duration d) {
    if (d.count() == 0) return "0s";
    std::string out;
    uint64_t ns;
    if (d.count() < 0) {
        out = "-";
        ns = static_cast<uint64_t>(-(d.count() + 1)) + 1;  // also right for the minimum value
    } else {
        ns = static_cast<uint64_t>(d.count());
    }
    constexpr uint64_t kUs = 1000, kMs = 1000 * kUs, kS = 1000 * kMs, kM = 60 * kS, kH = 60 * kM;
    bool has_big = ns >= kM;
    if (ns >= kH) {
        out += std::to_string(ns / kH) + "h";
        ns %= kH;
    }
    if (ns >= kM) {
        out += std::to_string(ns / kM) + "m";
        ns %= kM;
    }
    if (ns == 0) return out;

    auto decimal = [&out](uint64_t value, uint64_t unit, int digits, const char* name) {
        out += std::to_string(value / unit);
        uint64_t rest = value % unit;
        if (rest != 0) {
            std::string f = std::to_string(rest);
            f.insert(0, static_cast<size_t>(digits) - f.size(), '0');
            while (f.back() == '0') f.pop_back();
            out += "." + f;
        }
        out += name;
    };
    // Once hours or minutes are written, the remainder stays in seconds so the units keep going down.
    if (ns >= kS || has_big) {
        decimal(ns, kS, 9, "s");
    } else if (ns >= kMs) {
        decimal(ns, kMs, 6, "ms");
    } else if (ns >= kUs) {
        decimal(ns, kUs, 3, "us");
    } else {
        out += std::to_string(ns) + "ns";
    }
    return out;
}

// ---------------------------------------------------------------- Jitter

Duration Jitter::of(Duration interval) const {
    if (interval <= Duration::zero()) return Duration::zero();
    if (ppm > 0)
        return Duration(int64_t(static_cast<__int128>(interval.count()) * std::min<uint32_t>(ppm, 1000000) / 1000000));
    return std::min(duration, interval);
}

std::string format_jitter(const Jitter& j) {
    if (j.ppm == 0) return format_duration(j.duration);
    std::string out = std::to_string(j.ppm / 10000);
    if (uint32_t frac = j.ppm % 10000) {
        std::string f = std::to_string(frac);
        f.insert(0, 4 - f.size(), '0');
        while (f.back() == '0') f.pop_back();
        out += "." + f;
    }
    return out + "%";
}

// ---------------------------------------------------------------- PluginValues

const PluginValues::Value* PluginValues::find(std::string_view key) const {
    auto it = values_.find(key);
    return it == values_.end() ? nullptr : &it->second;
}

PluginValues::Lookup PluginValues::get_string(std::string_view key, const std::string** out) const {
    const Value* v = find(key);
    if (!v) return Lookup::not_found;
    const std::string* s = std::get_if<std::string>(v);
    if (!s) return Lookup::wrong_type;
    if (out) *out = s;
    return Lookup::ok;
}

PluginValues::Lookup PluginValues::get_int(std::string_view key, int64_t* out) const {
    const Value* v = find(key);
    if (!v) return Lookup::not_found;
    const int64_t* i = std::get_if<int64_t>(v);
    if (!i) return Lookup::wrong_type;
    if (out) *out = *i;
    return Lookup::ok;
}

PluginValues::Lookup PluginValues::get_bool(std::string_view key, bool* out) const {
    const Value* v = find(key);
    if (!v) return Lookup::not_found;
    const bool* b = std::get_if<bool>(v);
    if (!b) return Lookup::wrong_type;
    if (out) *out = *b;
    return Lookup::ok;
}

PluginValues::Lookup PluginValues::get_duration(std::string_view key, Duration* out) const {
    const Value* v = find(key);
    if (!v) return Lookup::not_found;
    const std::string* s = std::get_if<std::string>(v);
    if (!s) return Lookup::wrong_type;
    std::optional<Duration> d = parse_duration(*s);
    if (!d || *d > max_duration) return Lookup::wrong_type;  // longer than any interval or timeout may be
    if (out) *out = *d;
    return Lookup::ok;
}

// ---------------------------------------------------------------- HostConfig

const PluginSettings& HostConfig::plugin(const std::string& name) const {
    static const PluginSettings defaults;
    auto it = plugins.find(name);
    return it == plugins.end() ? defaults : it->second;
}

Isolation HostConfig::isolation_of(const std::string& name) const { return plugin(name).isolation.value_or(isolation); }

HostConfig parse_config(std::string_view toml_text, const fs::path& source) {
    Reader reader(source);
    toml::table root;
    try {
        root = toml::parse(toml_text, reader.file());
    } catch (const toml::parse_error& e) {
        const toml::source_position& at = e.source().begin;
        throw ConfigError(reader.file(), at.line, at.column, "", std::string(e.description()));
    }
    HostConfig cfg = reader.read(root, source);

    try {
        fs::path folder = base_folder(source);
        cfg.plugin_dir = resolve(folder, cfg.plugin_dir);
        cfg.log_file = resolve(folder, cfg.log_file);
        cfg.shadow_dir = resolve(folder, cfg.shadow_dir);
        // [host] control_socket: absent, the default place; "off", none; else a path.
        if (const toml::node* cs = root["host"]["control_socket"].node(); !cs) {
            cfg.control_socket = default_control_socket();
        } else if (cfg.control_socket == "off") {
            cfg.control_socket.clear();
        } else {
            cfg.control_socket = resolve(folder, cfg.control_socket);
            if (cfg.control_socket.native().size() > max_control_socket_path)
                throw ConfigError(
                    reader.file(), cs->source().begin.line, cs->source().begin.column, "host.control_socket",
                    "host.control_socket: " + cfg.control_socket.string() + " is " +
                        std::to_string(cfg.control_socket.native().size()) +
                        " bytes long; a Unix socket's path has at most " + std::to_string(max_control_socket_path) +
                        " (choose a shorter path, e.g. in /run)");
        }
    } catch (const fs::filesystem_error& e) {
        throw ConfigError(reader.file(), 0, 0, "", std::string("cannot resolve relative paths: ") + e.what());
    }
    return cfg;
}

fs::path default_control_socket() {
    // systemd's RuntimeDirectory= (a list separated by ':' when there are several: the first one).
    if (const char* rd = std::getenv("RUNTIME_DIRECTORY"); rd && *rd) {
        std::string first(rd);
        first = first.substr(0, first.find(':'));
        if (!first.empty()) return fs::path(first) / "control";
    }
    if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg && *xdg && fs::path(xdg).is_absolute())
        return fs::path(xdg) / "tickhost" / "control";
    return fs::path("/tmp") / ("tickhost-" + std::to_string(::geteuid())) / "control";
}

HostConfig load_config(const fs::path& file) {
    std::string name = file.filename().string();
    if (name.empty()) name = file.string();
    std::FILE* f = std::fopen(file.c_str(), "rb");
    if (!f) {
        int err = errno;
        throw ConfigError(file.string(), 0, 0, "", "cannot read " + name + ": " + std::strerror(err));
    }
    errno = 0;
    std::string text;
    char buf[65536];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
    // fread sets errno on failure, e.g. EISDIR when the path is a folder.
    int err = std::ferror(f) ? (errno != 0 ? errno : EIO) : 0;
    std::fclose(f);
    if (err != 0) throw ConfigError(file.string(), 0, 0, "", "cannot read " + name + ": " + std::strerror(err));
    // Absolute: the host keeps this path (to reload it, to watch its folder) and a plugin may chdir().
    std::error_code ec;
    const fs::path abs = fs::absolute(file, ec);
    return parse_config(text, ec ? file : abs);
}

}  // namespace tickhost
