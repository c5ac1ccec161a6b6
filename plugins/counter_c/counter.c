/* counter_c: a plugin in plain C99, proving the ABI needs no C++. Its tasks are declared from init, so
 * their number comes from config. Task i ("count0", "count1", ...) counts its runs; when `path` is set it
 * keeps "<path>.<i>" holding "<runs>" (and "stopped <runs>" after its stop call).
 *
 *   [plugins.counter_c]
 *   interval = "500ms"                  # default 1 s
 *   [plugins.counter_c.config]
 *   tasks = 3                           # default 1, at most 64
 *   path = "/tmp/counter"               # optional
 */
#include <tickhost/plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TASKS 64

static const th_host_api* host;

struct counter_task {
    unsigned long runs;
    char name[16];
    char file[4096];  /* empty when no path */
};

struct counter_state {
    int n;
    struct counter_task tasks[MAX_TASKS];
};

static void say(th_ctx ctx, int32_t level, const char* msg) { host->log(ctx, level, msg, strlen(msg)); }

static th_status fail(th_ctx ctx, const char* msg) {
    host->set_error(ctx, msg, strlen(msg));
    return TH_ERROR;
}

/* Write "<prefix><runs>\n" to a temp file, then rename over the target. */
static th_status write_count(th_ctx ctx, const struct counter_task* t, const char* prefix) {
    char tmp[4200];
    FILE* f;
    if (!t->file[0]) return TH_OK;
    snprintf(tmp, sizeof tmp, "%s.tmp", t->file);
    f = fopen(tmp, "w");
    if (!f) return fail(ctx, "cannot open the counter file for writing");
    fprintf(f, "%s%lu\n", prefix, t->runs);
    if (fclose(f) != 0 || rename(tmp, t->file) != 0) return fail(ctx, "cannot replace the counter file");
    return TH_OK;
}

static th_status count_run(void* state, th_ctx ctx, int32_t is_stop) {
    struct counter_task* t = (struct counter_task*)state;
    if (is_stop) {
        char msg[64];
        snprintf(msg, sizeof msg, "%s stopped after %lu run%s", t->name, t->runs, t->runs == 1 ? "" : "s");
        say(ctx, TH_LOG_INFO, msg);
        return write_count(ctx, t, "stopped ");
    }
    t->runs++;
    if (t->runs == 1) {
        char msg[4200];
        if (t->file[0])
            snprintf(msg, sizeof msg, "%s: first run; counting in %s (each run is logged at debug level)", t->name,
                     t->file);
        else
            snprintf(msg, sizeof msg, "%s: first run (each run is logged at debug level)", t->name);
        say(ctx, TH_LOG_INFO, msg);
    } else {
        char msg[64];
        snprintf(msg, sizeof msg, "%s: run %lu", t->name, t->runs);
        say(ctx, TH_LOG_DEBUG, msg);
    }
    return write_count(ctx, t, "");
}

static th_status counter_init(th_ctx ctx, void** state) {
    int64_t n = 1;
    const char* path = NULL;
    size_t path_len = 0;
    int i;
    struct counter_state* st;
    th_status rc = host->config_int(ctx, "tasks", 5, &n);
    if (rc != TH_OK && rc != TH_E_NOT_FOUND) return fail(ctx, "config key 'tasks' must be an integer");
    if (n < 1 || n > MAX_TASKS) return fail(ctx, "config key 'tasks' must be between 1 and 64");
    rc = host->config_string(ctx, "path", 4, &path, &path_len);
    if (rc != TH_OK && rc != TH_E_NOT_FOUND) return fail(ctx, "config key 'path' must be a string");
    if (path_len > 4000) return fail(ctx, "config key 'path' is too long");

    st = (struct counter_state*)calloc(1, sizeof *st);
    if (!st) return fail(ctx, "out of memory");
    st->n = (int)n;
    for (i = 0; i < st->n; ++i) {
        struct counter_task* t = &st->tasks[i];
        th_task_def def;
        snprintf(t->name, sizeof t->name, "count%d", i);
        if (path) snprintf(t->file, sizeof t->file, "%.*s.%d", (int)path_len, path, i);
        memset(&def, 0, sizeof def);
        def.struct_size = sizeof def;
        def.name = t->name;
        def.default_interval_ns = 1000000000;
        def.default_timeout_ns = 0;
        def.run = count_run;
        def.state = t;
        rc = host->add_task(ctx, &def);
        if (rc != TH_OK) {
            free(st);
            return fail(ctx, "the host refused a task");
        }
    }
    *state = st;
    return TH_OK;
}

static void counter_shutdown(void* state) { free(state); }

static const th_plugin_def plugin = {
    sizeof(th_plugin_def), TH_ABI_MAJOR, TH_ABI_MINOR,
    "counter_c", "1.0.0", "Counts runs of N tasks (N from config), written in plain C",
    NULL, 0,
    counter_init, counter_shutdown,
};

TH_EXPORT const th_plugin_def* tickhost_plugin_entry(const th_host_info* info) {
    if (!info || !info->api) return NULL;
    host = info->api;
    return &plugin;
}
