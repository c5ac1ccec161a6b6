#include <tickhost/host.hpp>
#include <tickhost/logging.hpp>

namespace tickhost {

namespace {
Tickers::Options tickers_options(const HostConfig& c) {
    Tickers::Options o;
    o.workers = c.workers;
    o.default_timeout = c.default_timeout;
    return o;
}
}  // namespace

Host::Host(HostConfig config)
    : config_(std::move(config)),
      tickers_(std::make_unique<Tickers>(tickers_options(config_))),
      plugins_(std::make_unique<PluginManager>(*tickers_, config_)) {}

Host::~Host() { stop(); }

void Host::start() {
    if (started_) return;
    started_ = true;
    stopped_ = false;
    tickers_->start();
    plugins_->load_directory();
}

bool Host::stop() {
    if (stopped_ || !started_) return true;
    stopped_ = true;
    const auto t0 = std::chrono::steady_clock::now();
    bool clean = plugins_->unload_all(config_.shutdown_timeout);
    Duration left = config_.shutdown_timeout - (std::chrono::steady_clock::now() - t0);
    clean = tickers_->stop(std::max(left, Duration(std::chrono::milliseconds(100)))) && clean;
    started_ = false;
    return clean;
}

}  // namespace tickhost
