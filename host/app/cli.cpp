#include "cli.hpp"

#include <tickhost/logging.hpp>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <mutex>
#include <stdexcept>

namespace tickhost::app {

int usage_error(const char* cmd, const std::string& msg, const char* usage) {
    std::fprintf(stderr, "tickhost %s: %s\n%s", cmd, msg.c_str(), usage);
    return 2;
}

bool option_value(int argc, char** argv, int& i, std::string_view name, std::string_view short_name, std::string* out,
                  bool* missing) {
    const std::string_view a = argv[i];
    *missing = false;
    if (a == name || (!short_name.empty() && a == short_name)) {
        if (i + 1 >= argc) {
            *missing = true;
            return true;
        }
        *out = argv[++i];
        return true;
    }
    if (a.size() > name.size() && a.substr(0, name.size()) == name && a[name.size()] == '=') {
        *out = std::string(a.substr(name.size() + 1));
        return true;
    }
    return false;
}

std::string json_string(std::string_view s) {
    std::string out = "\"";
    for (char ch : s) {
        const unsigned char c = static_cast<unsigned char>(ch);
        switch (c) {
            case '"':
                out += "\\\"";
                break;
            case '\\':
                out += "\\\\";
                break;
            case '\n':
                out += "\\n";
                break;
            case '\r':
                out += "\\r";
                break;
            case '\t':
                out += "\\t";
                break;
            default:
                if (c < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", c);
                    out += buf;
                } else {
                    out += ch;
                }
        }
    }
    return out + "\"";
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
