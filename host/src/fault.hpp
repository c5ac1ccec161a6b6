// Test-only fault injection: named points on the host's event paths where a test can make the host throw,
// to prove that no exception escapes an event path and that nothing is left half-applied.
//
// Compiled in only when the build sets TICKHOST_FAULT_SEAMS (CMake option of the same name: on for test
// builds, off for Release builds and for the installed package). Then $TICKHOST_FAULT is a comma-separated
// list of points ("reload,start_tasks:hello"); a point fires when its name, or "name:subject", is listed.
#pragma once

#include <string_view>

namespace tickhost::detail {

#if defined(TICKHOST_FAULT_SEAMS)
// Throws std::runtime_error("injected fault at <point>[:<subject>]") when $TICKHOST_FAULT lists it.
void fault_point(std::string_view point, std::string_view subject = {});
#else
inline void fault_point(std::string_view, std::string_view = {}) {}
#endif

}  // namespace tickhost::detail
