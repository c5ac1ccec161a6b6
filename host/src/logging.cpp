#include <tickhost/logging.hpp>

#include <mutex>
#include <stdexcept>

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/rotating_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

namespace tickhost {
namespace {

struct LogState {
    std::mutex mu;
    std::vector<spdlog::sink_ptr> sinks;
    spdlog::level::level_enum level = spdlog::level::info;
    std::vector<std::shared_ptr<spdlog::logger>> loggers;  // every logger made by get_logger
};

LogState& state() {
    static LogState* s = [] {
        auto* st = new LogState;  // never destroyed: loggers may be used from threads during exit
        st->sinks.push_back(std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
        return st;
    }();
    return *s;
}

constexpr const char* kPattern = "%Y-%m-%d %H:%M:%S.%e %^%-5l%$ [%n] %v";

}  // namespace

std::shared_ptr<spdlog::logger> get_logger(const std::string& name) {
    LogState& st = state();
    std::lock_guard<std::mutex> lk(st.mu);
    for (auto& l : st.loggers)
        if (l->name() == name) return l;
    auto l = std::make_shared<spdlog::logger>(name, st.sinks.begin(), st.sinks.end());
    l->set_pattern(kPattern);
    l->set_level(st.level);
    l->flush_on(spdlog::level::warn);
    st.loggers.push_back(l);
    return l;
}

void set_log_sinks(std::vector<spdlog::sink_ptr> sinks, spdlog::level::level_enum level) {
    LogState& st = state();
    std::lock_guard<std::mutex> lk(st.mu);
    st.sinks = std::move(sinks);
    st.level = level;
    for (auto& l : st.loggers) {
        l->sinks() = st.sinks;
        l->set_pattern(kPattern);
        l->set_level(level);
    }
}

void setup_logging(const HostConfig& config) {
    auto level = spdlog::level::from_str(config.log_level);
    if (level == spdlog::level::off && config.log_level != "off")
        throw std::runtime_error("unknown log level '" + config.log_level +
                                 "' (use trace, debug, info, warn, error, critical or off)");
    std::vector<spdlog::sink_ptr> sinks;
    switch (config.log_sink) {
    case LogSink::console:
        sinks.push_back(std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
        break;
    case LogSink::file:
        sinks.push_back(std::make_shared<spdlog::sinks::basic_file_sink_mt>(config.log_file.string()));
        break;
    case LogSink::rotating:
        sinks.push_back(std::make_shared<spdlog::sinks::rotating_file_sink_mt>(
            config.log_file.string(), size_t(config.log_max_size), size_t(config.log_max_files)));
        break;
    }
    set_log_sinks(std::move(sinks), level);
}

void flush_logs() {
    LogState& st = state();
    std::lock_guard<std::mutex> lk(st.mu);
    for (auto& l : st.loggers) l->flush();
}

}  // namespace tickhost
