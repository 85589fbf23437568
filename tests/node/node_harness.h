/*
 * node_harness.h - the node suites' side of the shared process harness
 * (tests/common/proc_harness.h): kvnode on 127.0.0.1 with random ports (retried
 * when taken), kvctl and the python consumer / dump scripts.
 *
 * Every process a test starts is recorded; th_kill_all() (run from each test's
 * teardown, so also after a failed assertion) SIGKILLs and reaps the ones still
 * alive. Waits are bounded by iteration counts, never measured.
 */
#ifndef NODE_HARNESS_H
#define NODE_HARNESS_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "node/kvnode_client.h"
#include "proc_harness.h"

/* The node suites' extra programs (TH holds kvnode, kvctl and the temporary directory). */
struct h_env {
    const char *consumer, *dump, *python;
};

static struct h_env H;

/* argv: KVNODE KVCTL CONSUMER_PY DUMP_PY, then usage_tail's; -1 (exit 2) when too short. */
static __attribute__((unused)) int h_args(int argc, char **argv, const char *usage_tail)
{
    char usage[128];
    snprintf(usage, sizeof(usage), "KVNODE KVCTL CONSUMER_PY DUMP_PY%s", usage_tail);
    if (th_args(argc, argv, 5, usage) < 0)
        return -1;
    H.consumer = argv[3];
    H.dump = argv[4];
    H.python = "/usr/bin/python3";
    return 0;
}

/*
 * Starts kvnode with extra flags (NULL-terminated), control/events/replay on
 * three fresh ports. Returns 0, -ENOTSUP when the transport is not available
 * (the test skips), or -EIO.
 */
static __attribute__((unused)) int h_node_start(struct th_node *n, const char *const extra[])
{
    for (int attempt = 0; attempt < 6; attempt++) {
        th_node_addrs(n, NULL, NULL, th_port_base(20000u, 2));
        snprintf(n->log, sizeof(n->log), "%s/kvnode-%d.log", TH.tmpdir, n->port);
        unsigned why;
        if (th_node_launch(n, extra, 0, &why) == 0)
            return 0;
        if (why & TH_EXIT_NOTSUP)
            return -ENOTSUP;
        if (!(why & TH_EXIT_BUSY))
            return -EIO;
        /* ports taken: next attempt with other ports */
    }
    return -EIO;
}

/* Waits (bounded) until no copy job is pending or in flight. */
static __attribute__((unused)) bool h_quiesce(struct th_node *n)
{
    return th_quiesce(n, 3000);
}

/* Runs kvctl -c <node> args...; returns exit code, output (malloc'd) in *out. */
static __attribute__((unused)) int h_kvctl(struct th_node *n, char **out, char **errout,
                                           const char *const args[])
{
    char *argv[32];
    int k = 0;
    argv[k++] = (char *)TH.kvctl;
    argv[k++] = "-c";
    argv[k++] = n->ctl;
    for (int i = 0; args[i] && k < 31; i++)
        argv[k++] = (char *)args[i];
    argv[k] = NULL;
    char op[128], ep[128];
    th_path(op, sizeof(op), "kvctl.out");
    th_path(ep, sizeof(ep), "kvctl.err");
    pid_t p = th_spawn(argv, op, ep);
    int rc = th_wait(p, 20000);
    if (out)
        *out = th_slurp(op);
    if (errout)
        *errout = th_slurp(ep);
    return rc;
}

/* Starts a python script (consumer or dump) with args; waits for its ready file. */
static __attribute__((unused)) pid_t h_python(const char *script, const char *out_path,
                                              const char *ready, const char *const args[])
{
    char *argv[32];
    int k = 0;
    argv[k++] = (char *)H.python;
    argv[k++] = (char *)script;
    for (int i = 0; args[i] && k < 29; i++)
        argv[k++] = (char *)args[i];
    if (ready) {
        unlink(ready);
        argv[k++] = "--ready-file";
        argv[k++] = (char *)ready;
    }
    argv[k] = NULL;
    pid_t p = th_spawn(argv, out_path, NULL);
    if (ready)
        for (int i = 0; i < 2000 && access(ready, F_OK) != 0; i++)
            th_sleep_ms(10);
    return p;
}

#ifdef cJSON__h /* for tests that include <cjson/cJSON.h> before this header */
/* The JSON object in file path (a tool's output), or NULL with the text on stderr. */
static __attribute__((unused)) cJSON *h_json_file(const char *path)
{
    char *s = th_slurp(path);
    cJSON *j = cJSON_Parse(s);
    if (!j)
        fprintf(stderr, "not JSON (%s): %.300s\n", path, s);
    free(s);
    return j;
}

/*
 * The reference consumer's summary in path, asserted to be JSON with an empty
 * "errors" list; the caller checks more and cJSON_Delete()s it.
 */
static __attribute__((unused)) cJSON *h_consumer_summary(const char *path)
{
    cJSON *j = h_json_file(path);
    assert_non_null(j);
    cJSON *errs = cJSON_GetObjectItem(j, "errors");
    assert_non_null(errs);
    if (cJSON_GetArraySize(errs) != 0) {
        char *s = cJSON_PrintUnformatted(j);
        fail_msg("consumer found errors: %.2000s", s);
    }
    return j;
}
#endif

#endif /* NODE_HARNESS_H */
