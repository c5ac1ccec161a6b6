#include "fault.hpp"

#if defined(TICKHOST_FAULT_SEAMS)
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace tickhost::detail {

void fault_point(std::string_view point, std::string_view subject) {
    const char* env = std::getenv("TICKHOST_FAULT");
    if (!env || !*env) return;
    std::string_view list(env);
    const std::string full = subject.empty() ? std::string(point) : std::string(point) + ":" + std::string(subject);
    while (!list.empty()) {
        const size_t comma = list.find(',');
        const std::string_view item = list.substr(0, comma);
        if (item == point || item == full) throw std::runtime_error("injected fault at " + full);
        if (comma == std::string_view::npos) break;
        list.remove_prefix(comma + 1);
    }
}

}  // namespace tickhost::detail
#endif
