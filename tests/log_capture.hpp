// A scheduler logger that keeps its last lines, for tests that assert on what the Tickers log.
#pragma once

#include <tickhost/tickers.hpp>

#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <string>

namespace tickhost::test {

struct CapturedLog {
    std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(2000);
    std::shared_ptr<spdlog::logger> logger;
    explicit CapturedLog(const std::string& name = "scheduler-test")
        : logger(std::make_shared<spdlog::logger>(name, sink)) {
        logger->set_level(spdlog::level::trace);
    }
    // Lines that contain `a` (and `b`, if given).
    size_t count(const std::string& a, const std::string& b = "") const {
        size_t n = 0;
        for (auto& line : sink->last_formatted())
            n += line.find(a) != std::string::npos && line.find(b) != std::string::npos;
        return n;
    }
    bool contains(const std::string& a, const std::string& b = "") const { return count(a, b) > 0; }
    std::string text() const {
        std::string out;
        for (auto& line : sink->last_formatted()) out += line;
        return out;
    }
    // Options for a registry that logs here.
    Tickers::Options options(size_t workers, std::shared_ptr<Clock> clock = nullptr,
                             Duration abandon_after = std::chrono::seconds(5)) const {
        Tickers::Options o;
        o.workers = workers;
        o.clock = std::move(clock);
        o.logger = logger;
        o.abandon_after = abandon_after;
        return o;
    }
};

}  // namespace tickhost::test
