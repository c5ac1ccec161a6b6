// Human-readable elapsed times for log lines: three significant digits, unit chosen by magnitude.
#pragma once

#include <chrono>
#include <cstdio>
#include <string>

namespace tickhost::detail {

inline std::string format_elapsed(std::chrono::nanoseconds d) {
    const double ns = double(d.count());
    const double a = ns < 0 ? -ns : ns;
    char buf[32];
    if (a >= 3600e9)
        std::snprintf(buf, sizeof buf, "%.3gh", ns / 3600e9);
    else if (a >= 60e9)
        std::snprintf(buf, sizeof buf, "%.3gm", ns / 60e9);
    else if (a >= 1e9)
        std::snprintf(buf, sizeof buf, "%.3gs", ns / 1e9);
    else if (a >= 1e6)
        std::snprintf(buf, sizeof buf, "%.3gms", ns / 1e6);
    else if (a >= 1e3)
        std::snprintf(buf, sizeof buf, "%.3gus", ns / 1e3);
    else
        std::snprintf(buf, sizeof buf, "%.0fns", ns);
    return buf;
}

}  // namespace tickhost::detail
