/*
 * cluster_harness.h - the cluster suites' side of the shared process harness
 * (tests/common/proc_harness.h): kvnode on 127.0.0.1, or inside network namespaces the test
 * created, at ports the test chooses, and the client calls the cluster tests repeat.
 *
 * Every process is recorded; th_kill_all() (each test's teardown, so also after a failed
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
#include "proc_harness.h"

/* argv: KVNODE KVCTL [TRANSPORT] (into *transport when given); -1 (exit 2) when too short. */
static __attribute__((unused)) int ch_args(int argc, char **argv, const char **transport)
{
    if (th_args(argc, argv, 3, "KVNODE KVCTL [TRANSPORT]") < 0)
        return -1;
    if (argc > 3)
        *transport = argv[3];
    return 0;
}

/* A port base below Linux's ephemeral range (32768+), where outgoing connections take ports. */
static __attribute__((unused)) int ch_port_base(void)
{
    return th_port_base(2500u, 5);
}

/* n's endpoints on host (NULL: 127.0.0.1), inside network namespace ns (NULL: none), at port
 * (0: ch_port_base()). */
static __attribute__((unused)) void ch_node_init(struct th_node *n, const char *host,
                                                 const char *ns, int port)
{
    th_node_addrs(n, host, ns, port ? port : ch_port_base());
}

/*
 * Starts kvnode for n (ch_node_init first) with extra flags (NULL-terminated); waits until it
 * answers hello.  Returns 0, -EADDRINUSE (ports taken: init again with other ports), or -EIO.
 */
static __attribute__((unused)) int ch_node_start(struct th_node *n, const char *const extra[])
{
    snprintf(n->log, sizeof(n->log), "%s/kvnode-%s-%d.log", TH.tmpdir, n->host, n->port);
    unsigned why;
    /* a longer client timeout for real work (fetch waits for peers) */
    if (th_node_launch(n, extra, 10000, &why) == 0)
        return 0;
    return (why & TH_EXIT_BUSY) ? -EADDRINUSE : -EIO;
}

/* Polls (bounded: ~tries x 20 ms) until stat key of n equals want. */
static __attribute__((unused)) bool ch_wait_stat(struct th_node *n, const char *key, uint64_t want,
                                                 int tries)
{
    for (int i = 0; i < tries; i++) {
        if (th_stat(n, key) == want)
            return true;
        th_sleep_ms(20);
    }
    fprintf(stderr, "%s: %s = %llu, want %llu\n", n->ctl, key, (unsigned long long)th_stat(n, key),
            (unsigned long long)want);
    return false;
}

/* Waits (bounded) until no copy job is pending or in flight. */
static __attribute__((unused)) bool ch_quiesce(struct th_node *n)
{
    return th_quiesce(n, 1500);
}

/* One RPC; returns the call's code, result key (may be NULL) in *out. */
static __attribute__((unused)) int ch_call(struct th_node *n, const struct kvn_client_req *q,
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
static __attribute__((unused)) int ch_match(struct th_node *n, const int32_t *toks, uint32_t nt,
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
static __attribute__((unused)) int ch_sums(struct th_node *n, const uint32_t *slots, uint32_t k,
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

/* The cluster tests run their nodes with --page-size 2. */
#define CH_PS 2

/* Sequence s of node i: pages of tokens (CH_PS a page) unique to (i, s). */
static __attribute__((unused)) void ch_seq(int i, int s, int32_t *toks, uint32_t pages)
{
    for (uint32_t t = 0; t < pages * CH_PS; t++)
        toks[t] = 100000 * (i + 1) + 1000 * s + (int32_t)t;
}

/* Node x sees exactly `want` remote CPU_PINNED pages for sequence (i, s) of `pages` pages
 * (polled, bounded: ~250 x 20 ms). */
static __attribute__((unused)) bool ch_sees(struct th_node *x, int i, int s, uint32_t pages,
                                            uint64_t want)
{
    int32_t toks[64];
    ch_seq(i, s, toks, pages);
    for (int k = 0; k < 250; k++) {
        uint64_t got = UINT64_MAX;
        if (ch_match(x, toks, pages * CH_PS, &got, NULL) == 0 && got == want)
            return true;
        th_sleep_ms(20);
    }
    return false;
}

#endif /* CLUSTER_HARNESS_H */
