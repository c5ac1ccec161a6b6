// Fuzzes plugin descriptor validation (what the host checks after tickhost_plugin_entry returns) on
// descriptors built from the input: every refusal has a named TH_E_* code and a reason; anything accepted
// really satisfies the ABI's rules. A descriptor that lies about task_count (more tasks than its array
// holds) cannot be detected by any host and is not generated, except above the task cap (here 4096, as
// [host] max_tasks_per_plugin could be), which is refused before any task is read.
#include "loader.hpp"

#include <fuzzer/FuzzedDataProvider.h>

#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <vector>

namespace {

th_status run(void*, th_ctx, int32_t) { return TH_OK; }
th_status init(th_ctx, void**) { return TH_OK; }

void check(bool ok) {
    if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace tickhost::detail;
    FuzzedDataProvider in(data, size);
    th_plugin_def def{};
    def.struct_size = in.ConsumeBool() ? uint32_t(sizeof(th_plugin_def)) : in.ConsumeIntegral<uint32_t>();
    def.abi_major = in.ConsumeBool() ? uint16_t(TH_ABI_MAJOR) : in.ConsumeIntegral<uint16_t>();
    def.abi_minor = in.ConsumeBool() ? uint16_t(TH_ABI_MINOR) : in.ConsumeIntegral<uint16_t>();
    const std::string name = in.ConsumeRandomLengthString(80);
    def.name = in.ConsumeBool() ? name.c_str() : nullptr;
    def.init = in.ConsumeBool() ? init : nullptr;
    const uint32_t n = in.ConsumeIntegralInRange<uint32_t>(0, 12);
    std::vector<std::string> names(n);
    std::vector<th_task_def> tasks(n);
    for (uint32_t i = 0; i < n; ++i) {
        names[i] = in.ConsumeRandomLengthString(80);
        th_task_def& t = tasks[i];
        t.struct_size = in.ConsumeBool() ? uint32_t(sizeof(th_task_def)) : in.ConsumeIntegral<uint32_t>();
        t.name = in.ConsumeBool() ? names[i].c_str() : nullptr;
        t.default_interval_ns = in.ConsumeIntegral<int64_t>();
        t.default_timeout_ns = in.ConsumeIntegral<int64_t>();
        t.run = in.ConsumeBool() ? run : nullptr;
    }
    def.tasks = n > 0 || in.ConsumeBool() ? tasks.data() : nullptr;
    def.task_count = in.ConsumeBool() ? n : 4097 + in.ConsumeIntegral<uint16_t>();

    LoadFailure err;
    if (validate_descriptor(&def, &err, 4096)) {
        check(def.abi_major == TH_ABI_MAJOR && def.abi_minor <= TH_ABI_MINOR);
        check(valid_plugin_name(def.name));
        check(def.task_count > 0 || def.init);
        std::set<std::string> seen;
        for (uint32_t i = 0; i < def.task_count; ++i) {
            const th_task_def& t = def.tasks[i];
            check(t.run && t.name && t.default_interval_ns > 0 && t.default_timeout_ns >= 0);
            check(std::strlen(t.name) >= 1 && std::strlen(t.name) <= 64);
            check(seen.insert(t.name).second);
        }
    } else {
        check(status_name(err.code).rfind("TH_E_", 0) == 0);
        check(!err.reason.empty() && !err.hint.empty());
    }
    return 0;
}
