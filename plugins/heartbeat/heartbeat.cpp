// heartbeat: the original design's health example. Every run atomically replaces the file at `path` with
// one line "online <runs> <unix_ms>"; the stop call writes "offline <runs> <unix_ms>". A supervisor (or a
// load balancer's health check) reads the file.
//
//   [plugins.heartbeat]
//   interval = "1s"                      # default 1 s
//   [plugins.heartbeat.config]
//   path = "/run/myservice/health"       # required
#include <tickhost/plugin.hpp>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>

namespace {

long long unix_ms() {
    using namespace std::chrono;
    return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

// Write to a temporary file in the same directory, then rename over: readers never see a partial line.
void replace_file(const std::string& path, const std::string& line) {
    const std::string tmp = path + ".tmp";
    std::FILE* f = std::fopen(tmp.c_str(), "w");
    if (!f) throw std::runtime_error("cannot write " + tmp + ": " + std::strerror(errno));
    bool ok = std::fputs(line.c_str(), f) >= 0;
    ok = (std::fclose(f) == 0) && ok;
    if (!ok) throw std::runtime_error("cannot write " + tmp + ": " + std::strerror(errno));
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
        throw std::runtime_error("cannot rename " + tmp + " to " + path + ": " + std::strerror(errno));
}

}  // namespace

class Heartbeat : public tickhost::Plugin {
public:
    void init(tickhost::Context& ctx) override {
        auto p = ctx.config_string("path");
        if (!p || p->empty()) throw std::runtime_error("config key 'path' is required ([plugins.heartbeat.config] path = \"...\")");
        path_ = *p;
    }

    tickhost::Status beat(tickhost::Context& ctx, bool is_stop) {
        if (!is_stop) ++runs_;
        replace_file(path_, std::string(is_stop ? "offline " : "online ") + std::to_string(runs_) + " " +
                                std::to_string(unix_ms()) + "\n");
        const std::string beats = std::to_string(runs_) + (runs_ == 1 ? " beat" : " beats");
        if (is_stop)
            ctx.info("offline after " + beats + " (" + path_ + " says offline)");
        else if (runs_ == 1)
            ctx.info("online: " + path_ + " is rewritten on every beat (each beat is logged at debug level)");
        else
            ctx.debug("online, " + beats);
        return tickhost::Status::ok;
    }

private:
    std::string path_;
    unsigned long long runs_ = 0;
};

TICKHOST_PLUGIN(Heartbeat, "heartbeat", "1.0.0", "Writes online/offline with a run count to a file",
                tickhost::task<&Heartbeat::beat>("beat", std::chrono::seconds(1)))
