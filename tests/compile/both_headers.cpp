// An application that embeds the host and builds a plugin in the same tree: every public header of the SDK
// and of the host in one translation unit (issue 11). Compiling is the test; main() uses a name of each.
#include <tickhost/config.hpp>
#include <tickhost/host.hpp>
#include <tickhost/logging.hpp>
#include <tickhost/plugin.h>
#include <tickhost/plugin.hpp>
#include <tickhost/plugin_manager.hpp>
#include <tickhost/signals.hpp>
#include <tickhost/tickers.hpp>
#include <tickhost/version.h>
#include <tickhost/watcher.hpp>

#include <cstdio>

int main() {
    tickhost::TaskFn scheduler_fn = [](tickhost::RunContext&, bool) { return tickhost::TaskResult::success(); };
    tickhost::PluginTaskFn plugin_fn = [](tickhost::Context&, bool) { return tickhost::Status::ok; };
    std::printf("both headers in one unit: %d %d\n", scheduler_fn ? 1 : 0, plugin_fn ? 1 : 0);
    return 0;
}
