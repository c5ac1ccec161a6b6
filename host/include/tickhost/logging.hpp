// Logging: one spdlog logger per module ("scheduler", "plugins", "watch", "config", "host") and per plugin
// ("plugin.<name>"), all writing to the sinks chosen by setup_logging().
#pragma once

#include <memory>
#include <string>

#include <spdlog/spdlog.h>

#include <tickhost/config.hpp>

namespace tickhost {

// Returns the named logger, creating it with the current sinks and level if it does not exist yet.
// Thread-safe. Before setup_logging() is called, loggers write to stderr at level info.
std::shared_ptr<spdlog::logger> get_logger(const std::string& name);

// Replaces the sinks and level of every tickhost logger (existing and future) as host.toml says.
// Throws std::runtime_error if the log file cannot be opened or the level is unknown.
void setup_logging(const HostConfig& config);

// Routes every tickhost logger to `sinks` (an embedding application passes its own), at `level`.
void set_log_sinks(std::vector<spdlog::sink_ptr> sinks, spdlog::level::level_enum level);

// Flushes every tickhost logger (before a quick exit).
void flush_logs();

}  // namespace tickhost
