/*
 * cluster_harness.h - start real kvnode processes for the cluster suites (on 127.0.0.1, or
 * inside network namespaces the test created), talk to them through libkvnode, and always
 * reap them.
 *
 * Every process is recorded; ch_kill_all() (each test's teardown, so also after a failed
 * assertion) SIGKILLs and reaps what is still alive.  Waits are bounded by iteration counts,
 * never measured.
 */
#ifndef CLUSTER_HARNESS_H
#define CLUSTER_HARNESS_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "node/kvnode_client.h"

#define CH_MAX_PROCS 32

struct ch_env {
    const char *kvnode, *kvctl;
    const char *ipbin; /* iproute2's ip, for nodes inside a network namespace */
    pid_t procs[CH_MAX_PROCS];
    int n_procs;
    char tmpdir[64];
};

static struct ch_env CH;

struct ch_node {
    pid_t pid;
    int port;
    char host[32], ns[32];
    char ctl[64], pub[64], rep[64], log[160];
    struct kvn_client *c;
};

static __attribute__((unused)) void ch_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static __attribute__((unused)) void ch_untrack(pid_t p)
{
    for (int i = 0; i < CH.n_procs; i++)
        if (CH.procs[i] == p) {
            CH.procs[i] = CH.procs[--CH.n_procs];
            return;
        }
}

static __attribute__((unused)) pid_t ch_spawn(char *const argv[], const char *out_path)
{
    pid_t p = fork();
    if (p == 0) {
        int fd = open(out_path ? out_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execvp(argv[0], argv);
        _exit(127);
    }
    if (p > 0 && CH.n_procs < CH_MAX_PROCS)
        CH.procs[CH.n_procs++] = p;
    return p;
}

/* Waits up to ~ms for p; its exit status (128+sig if killed), or -1 after SIGKILL. */
static __attribute__((unused)) int ch_wait(pid_t p, int ms)
{
    int st;
    for (int i = 0; i <= ms / 10; i++) {
        pid_t r = waitpid(p, &st, WNOHANG);
        if (r == p) {
            ch_untrack(p);
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        if (r < 0) {
            ch_untrack(p);
            return -1;
        }
        ch_sleep_ms(10);
    }
    kill(p, SIGKILL);
    waitpid(p, &st, 0);
    ch_untrack(p);
    return -1;
}

static __attribute__((unused)) void ch_kill_all(void)
{
    for (int i = 0; i < CH.n_procs; i++) {
        kill(CH.procs[i], SIGKILL);
        waitpid(CH.procs[i], NULL, 0);
    }
    CH.n_procs = 0;
}

static __attribute__((unused)) char *ch_slurp(const char *path)
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

static __attribute__((unused)) int ch_port_base(void)
{
    static unsigned salt;
    unsigned x = (unsigned)getpid() * 2654435761u ^ (unsigned)time(NULL) ^ (salt += 7919);
    /* below Linux's ephemeral range (32768+), where outgoing connections take their ports */
    return 20000 + (int)(x % 2500u) * 5;
}

static __attribute__((unused)) void ch_node_init(struct ch_node *n, const char *host,
                                                 const char *ns, int port)
{
    memset(n, 0, sizeof(*n));
    snprintf(n->host, sizeof(n->host), "%s", host ? host : "127.0.0.1");
    snprintf(n->ns, sizeof(n->ns), "%s", ns ? ns : "");
    n->port = port ? port : ch_port_base();
    snprintf(n->ctl, sizeof(n->ctl), "tcp://%s:%d", n->host, n->port);
    snprintf(n->pub, sizeof(n->pub), "tcp://%s:%d", n->host, n->port + 1);
    snprintf(n->rep, sizeof(n->rep), "tcp://%s:%d", n->host, n->port + 2);
}

/*
 * Starts kvnode for n (ch_node_init first) with extra flags (NULL-terminated); waits until it
 * answers hello.  Returns 0, -EADDRINUSE (ports taken: init again with other ports), or -EIO.
 */
static __attribute__((unused)) int ch_node_start(struct ch_node *n, const char *const extra[])
{
    snprintf(n->log, sizeof(n->log), "%s/kvnode-%s-%d.log", CH.tmpdir, n->host, n->port);
    char *argv[64];
    int k = 0;
    if (n->ns[0]) {
        argv[k++] = (char *)(CH.ipbin ? CH.ipbin : "ip");
        argv[k++] = "netns";
        argv[k++] = "exec";
        argv[k++] = n->ns;
    }
    argv[k++] = (char *)CH.kvnode;
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
    n->pid = ch_spawn(argv, n->log);
    if (n->pid < 0)
        return -EIO;
    struct kvn_err e;
    if (kvn_client_open(n->ctl, 300, &n->c, &e) < 0)
        return -EIO;
    for (int i = 0; i < 100; i++) {
        struct kvn_client_reply *r;
        if (kvn_client_hello(n->c, &r, &e) == 0) {
            kvn_client_reply_free(r);
            kvn_client_close(n->c);
            /* a longer timeout for real work (fetch waits for peers) */
            return kvn_client_open(n->ctl, 10000, &n->c, &e) < 0 ? -EIO : 0;
        }
        int st;
        if (waitpid(n->pid, &st, WNOHANG) == n->pid) {
            ch_untrack(n->pid);
            n->pid = 0;
            kvn_client_close(n->c);
            n->c = NULL;
            char *log = ch_slurp(n->log);
            bool busy = strstr(log, "in use") != NULL;
            fprintf(stderr, "kvnode exited: %s\n", log);
            free(log);
            return busy ? -EADDRINUSE : -EIO;
        }
        kvn_client_close(n->c);
        if (kvn_client_open(n->ctl, 300, &n->c, &e) < 0)
            return -EIO;
    }
    return -EIO;
}

/* SIGKILL (no goodbye) and reap. */
static __attribute__((unused)) void ch_node_kill9(struct ch_node *n)
{
    if (n->c) {
        kvn_client_close(n->c);
        n->c = NULL;
    }
    if (n->pid > 0) {
        kill(n->pid, SIGKILL);
        ch_wait(n->pid, 5000);
    }
    n->pid = 0;
}

/* SIGTERM, bounded wait; the exit status (0 expected). */
static __attribute__((unused)) int ch_node_stop(struct ch_node *n)
{
    if (n->c) {
        kvn_client_close(n->c);
        n->c = NULL;
    }
    if (n->pid <= 0)
        return -1;
    kill(n->pid, SIGTERM);
    int st = ch_wait(n->pid, 40000);
    n->pid = 0;
    return st;
}

static __attribute__((unused)) uint64_t ch_stat(struct ch_node *n, const char *key)
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

/* Polls (bounded: ~tries x 20 ms) until stat key of n equals want. */
static __attribute__((unused)) bool ch_wait_stat(struct ch_node *n, const char *key, uint64_t want,
                                                 int tries)
{
    for (int i = 0; i < tries; i++) {
        if (ch_stat(n, key) == want)
            return true;
        ch_sleep_ms(20);
    }
    fprintf(stderr, "%s: %s = %llu, want %llu\n", n->ctl, key, (unsigned long long)ch_stat(n, key),
            (unsigned long long)want);
    return false;
}

/* Waits (bounded) until no copy job is pending or in flight. */
static __attribute__((unused)) bool ch_quiesce(struct ch_node *n)
{
    for (int i = 0; i < 1500; i++) {
        if (ch_stat(n, "pending_jobs") == 0 && ch_stat(n, "jobs_active") == 0)
            return true;
        ch_sleep_ms(10);
    }
    return false;
}

/* One RPC; returns the call's code, result key (may be NULL) in *out. */
static __attribute__((unused)) int ch_call(struct ch_node *n, const struct kvn_client_req *q,
                                           const char *key, uint64_t *out, struct kvn_err *e)
{
    struct kvn_client_reply *r = NULL;
    int rc = kvn_client_call(n->c, q, &r, e);
    if (rc == 0 && key && out && kvn_client_reply_u64(r, key, out) < 0)
        rc = -ENOENT;
    kvn_client_reply_free(r);
    return rc;
}

/* match: remote hit (found ? pages : 0) and local host tokens. */
static __attribute__((unused)) int ch_match(struct ch_node *n, const int32_t *toks, uint32_t nt,
                                            uint64_t *remote_pages, uint64_t *host_tokens)
{
    struct kvn_client_reply *r = NULL;
    struct kvn_err e;
    int rc = kvn_client_match(n->c, toks, nt, &r, &e);
    if (rc < 0)
        return rc;
    uint64_t found = 0, pages = 0, host = 0;
    kvn_client_reply_u64(r, "remote_found", &found);
    kvn_client_reply_u64(r, "remote_pages", &pages);
    kvn_client_reply_u64(r, "host_tokens", &host);
    kvn_client_reply_free(r);
    if (remote_pages)
        *remote_pages = found ? pages : 0;
    if (host_tokens)
        *host_tokens = host;
    return 0;
}

/* FNV-1a sums of L1 stand-in slots. */
static __attribute__((unused)) int ch_sums(struct ch_node *n, const uint32_t *slots, uint32_t k,
                                           uint64_t *sums)
{
    struct kvn_client_req q = {.op = KVN_RPC_L1_CHECKSUM, .slots = slots, .n_slots = k};
    struct kvn_client_reply *r = NULL;
    struct kvn_err e;
    int rc = kvn_client_call(n->c, &q, &r, &e);
    size_t got = 0;
    if (rc == 0)
        rc = kvn_client_reply_u64_array(r, "sums", sums, k, &got);
    kvn_client_reply_free(r);
    return rc == 0 && got == k ? 0 : -EPROTO;
}

#endif /* CLUSTER_HARNESS_H */
