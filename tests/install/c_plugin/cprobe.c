/* cprobe: a plugin built by a plain Makefile with pkg-config only (tests/install). Its task "touch" keeps
 * "<runs>" in the file at config.path, and writes "stopped <runs>" on its stop call. */
#include <tickhost/plugin.h>
#include <tickhost/version.h>

#include <stdio.h>
#include <string.h>

#if TICKHOST_ABI_VERSION_MAJOR != TH_ABI_MAJOR
#error "version.h and plugin.h disagree"
#endif

static const th_host_api* host;
static unsigned long runs;
static char path[1024];

static th_status fail(th_ctx ctx, const char* msg) {
    host->set_error(ctx, msg, strlen(msg));
    return TH_ERROR;
}

static th_status touch(void* state, th_ctx ctx, int32_t is_stop) {
    FILE* f;
    (void)state;
    if (!is_stop) ++runs;
    f = fopen(path, "w");
    if (!f) return fail(ctx, "cannot write config.path");
    fprintf(f, "%s%lu\n", is_stop ? "stopped " : "", runs);
    fclose(f);
    return TH_OK;
}

static th_status cprobe_init(th_ctx ctx, void** state) {
    const char* p = NULL;
    size_t len = 0;
    (void)state;
    if (host->config_string(ctx, "path", 4, &p, &len) != TH_OK || len == 0 || len >= sizeof path)
        return fail(ctx, "set [plugins.cprobe.config] path = \"<file>\"");
    memcpy(path, p, len);
    path[len] = '\0';
    return TH_OK;
}

static const th_task_def tasks[] = {
    {sizeof(th_task_def), "touch", 1000000000, 0, touch, NULL},
};

static const th_plugin_def plugin = {
    sizeof(th_plugin_def), TH_ABI_MAJOR, TH_ABI_MINOR, "cprobe", "2.1.0", "Keeps a run count in a file", tasks, 1,
    cprobe_init,           NULL,
};

TH_EXPORT const th_plugin_def* tickhost_plugin_entry(const th_host_info* info) {
    if (!info || !info->api) return NULL;
    host = info->api;
    return &plugin;
}
