/*
 * node_harness.h - start real kvnode / kvctl / python processes for the
 * integration suites, on 127.0.0.1 with random ports, and always reap them.
 *
 * Every process a test starts is recorded; harness_kill_all() (run from each
 * test's teardown, so also after a failed assertion) SIGKILLs and reaps the
 * ones still alive. Waits are bounded by iteration counts, never measured.
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

#define H_MAX_PROCS 64

struct h_env {
    const char *kvnode, *kvctl, *consumer, *dump, *python;
    pid_t procs[H_MAX_PROCS];
    int n_procs;
    char tmpdir[64];
};

static struct h_env H;

static __attribute__((unused)) void h_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static __attribute__((unused)) void h_track(pid_t p)
{
    if (H.n_procs < H_MAX_PROCS)
        H.procs[H.n_procs++] = p;
}

static __attribute__((unused)) void h_untrack(pid_t p)
{
    for (int i = 0; i < H.n_procs; i++)
        if (H.procs[i] == p) {
            H.procs[i] = H.procs[--H.n_procs];
            return;
        }
}

/* Starts argv with stdout (and stderr unless err_path) redirected to out_path. */
static __attribute__((unused)) pid_t h_spawn(char *const argv[], const char *out_path,
                                             const char *err_path)
{
    pid_t p = fork();
    if (p == 0) {
        int fd = open(out_path ? out_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int efd = err_path ? open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644) : fd;
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(efd >= 0 ? efd : fd, 2);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    if (p > 0)
        h_track(p);
    return p;
}

/* Waits up to ~ms for p; returns its exit status (128+sig if killed), or -1 after SIGKILL. */
static __attribute__((unused)) int h_wait(pid_t p, int ms)
{
    int st;
    for (int i = 0; i <= ms / 10; i++) {
        pid_t r = waitpid(p, &st, WNOHANG);
        if (r == p) {
            h_untrack(p);
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        if (r < 0) {
            h_untrack(p);
            return -1;
        }
        h_sleep_ms(10);
    }
    kill(p, SIGKILL);
    waitpid(p, &st, 0);
    h_untrack(p);
    return -1;
}

static __attribute__((unused)) void h_kill_all(void)
{
    for (int i = 0; i < H.n_procs; i++) {
        kill(H.procs[i], SIGKILL);
        waitpid(H.procs[i], NULL, 0);
    }
    H.n_procs = 0;
}

static __attribute__((unused)) char *h_slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return strdup("");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = calloc(1, (size_t)(n > 0 ? n : 0) + 1);
    if (b && n > 0 && fread(b, 1, (size_t)n, f) != (size_t)n)
        b[0] = '\0';
    fclose(f);
    return b;
}

static __attribute__((unused)) void h_path(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", H.tmpdir, name);
}

/* ---- kvnode ---- */

struct h_node {
    pid_t pid;
    int port;
    char ctl[64], pub[64], rep[64], log[128];
    struct kvn_client *c;
};

static __attribute__((unused)) int h_port_base(void)
{
    static unsigned salt;
    unsigned x = (unsigned)getpid() * 2654435761u ^ (unsigned)time(NULL) ^ (salt += 7919);
    return 20000 + (int)(x % 20000u) * 2;
}

/*
 * Starts kvnode with extra flags (NULL-terminated), control/events/replay on
 * three fresh ports. Returns 0, -ENOTSUP when the transport is not available
 * (the test skips), or -EIO.
 */
static __attribute__((unused)) int h_node_start(struct h_node *n, const char *const extra[])
{
    for (int attempt = 0; attempt < 6; attempt++) {
        memset(n, 0, sizeof(*n));
        n->port = h_port_base();
        snprintf(n->ctl, sizeof(n->ctl), "tcp://127.0.0.1:%d", n->port);
        snprintf(n->pub, sizeof(n->pub), "tcp://127.0.0.1:%d", n->port + 1);
        snprintf(n->rep, sizeof(n->rep), "tcp://127.0.0.1:%d", n->port + 2);
        snprintf(n->log, sizeof(n->log), "%s/kvnode-%d.log", H.tmpdir, n->port);
        char *argv[64];
        int k = 0;
        argv[k++] = (char *)H.kvnode;
        argv[k++] = "--listen";
        argv[k++] = n->ctl;
        argv[k++] = "--events";
        argv[k++] = n->pub;
        argv[k++] = "--replay";
        argv[k++] = n->rep;
        argv[k++] = "--no-hugepages";
        for (int i = 0; extra && extra[i] && k < 62; i++)
            argv[k++] = (char *)extra[i];
        argv[k] = NULL;
        n->pid = h_spawn(argv, n->log, NULL);
        if (n->pid < 0)
            return -EIO;
        struct kvn_err e;
        if (kvn_client_open(n->ctl, 300, &n->c, &e) < 0)
            return -EIO;
        for (int i = 0; i < 100; i++) {
            struct kvn_client_reply *r;
            if (kvn_client_hello(n->c, &r, &e) == 0) {
                kvn_client_reply_free(r);
                return 0;
            }
            int st;
            if (waitpid(n->pid, &st, WNOHANG) == n->pid) {
                h_untrack(n->pid);
                kvn_client_close(n->c);
                n->c = NULL;
                char *log = h_slurp(n->log);
                bool busy = strstr(log, "in use") != NULL;
                bool unsupported = strstr(log, "not built in") || strstr(log, "ENOTSUP") ||
                                   strstr(log, "ENODEV") || strstr(log, "EPERM");
                fprintf(stderr, "kvnode exited: %s\n", log);
                free(log);
                if (unsupported)
                    return -ENOTSUP;
                if (busy)
                    break; /* next attempt with other ports */
                return -EIO;
            }
            /* the client timed out once: reconnect so the next hello is fresh */
            kvn_client_close(n->c);
            if (kvn_client_open(n->ctl, 300, &n->c, &e) < 0)
                return -EIO;
        }
        if (n->c == NULL)
            continue;
        return -EIO;
    }
    return -EIO;
}

/* SIGTERM, bounded wait; returns the exit status (0 expected). */
static __attribute__((unused)) int h_node_stop(struct h_node *n)
{
    if (n->c) {
        kvn_client_close(n->c);
        n->c = NULL;
    }
    if (n->pid <= 0)
        return -1;
    kill(n->pid, SIGTERM);
    int st = h_wait(n->pid, 40000);
    n->pid = 0;
    return st;
}

static __attribute__((unused)) uint64_t h_stat(struct h_node *n, const char *key)
{
    struct kvn_client_reply *r;
    struct kvn_err e;
    if (kvn_client_stats(n->c, &r, &e) < 0)
        return UINT64_MAX;
    uint64_t v = UINT64_MAX;
    kvn_client_reply_u64(r, key, &v);
    kvn_client_reply_free(r);
    return v;
}

/* Waits (bounded) until no copy job is pending or in flight. */
static __attribute__((unused)) bool h_quiesce(struct h_node *n)
{
    for (int i = 0; i < 3000; i++) {
        if (h_stat(n, "pending_jobs") == 0 && h_stat(n, "jobs_active") == 0)
            return true;
        h_sleep_ms(10);
    }
    return false;
}

/* Runs kvctl -c <node> args...; returns exit code, output (malloc'd) in *out. */
static __attribute__((unused)) int h_kvctl(struct h_node *n, char **out, char **errout,
                                           const char *const args[])
{
    char *argv[32];
    int k = 0;
    argv[k++] = (char *)H.kvctl;
    argv[k++] = "-c";
    argv[k++] = n->ctl;
    for (int i = 0; args[i] && k < 31; i++)
        argv[k++] = (char *)args[i];
    argv[k] = NULL;
    char op[128], ep[128];
    h_path(op, sizeof(op), "kvctl.out");
    h_path(ep, sizeof(ep), "kvctl.err");
    pid_t p = h_spawn(argv, op, ep);
    int rc = h_wait(p, 20000);
    if (out)
        *out = h_slurp(op);
    if (errout)
        *errout = h_slurp(ep);
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
    pid_t p = h_spawn(argv, out_path, NULL);
    if (ready)
        for (int i = 0; i < 2000 && access(ready, F_OK) != 0; i++)
            h_sleep_ms(10);
    return p;
}

#endif /* NODE_HARNESS_H */
