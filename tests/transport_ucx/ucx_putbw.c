/*
 * ucx_putbw.c - a quick write-bandwidth probe of the UCX backend through the
 * public kvn_xport API, shaped like `ucx_perftest -t ucp_put_bw` so the two
 * can run side by side (putbw_vs_perftest.sh).  Not a test and not kvbench:
 * kvbench (bench/) is the project's benchmark; this exists so the backend
 * owner can check the fast path without it.
 *
 *   ucx_putbw URI SIZE ITERS ALLOC [DELIVERY]
 *     ALLOC 1: buffers from kvn_xport_ucx_mem_alloc
 *     DELIVERY 0: local WRITE completion (kvn_xport_ucx_set_write_delivery)
 *
 * Forks a target that registers SIZE bytes and progresses its domain; the
 * initiator posts WARMUP (100) + ITERS writes of SIZE bytes, DEPTH (16) in
 * flight, then sends a notification (flushed after the writes) and waits for
 * the target's answer; GB/s = SIZE * ITERS / (answer - first measured post),
 * GB = 10^9 bytes.
 */
#include "transport/kvn_xport.h"
#include "transport/ucx/kvn_xport_ucx.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
#define DIE(...)                                                                                   \
    do {                                                                                           \
        fprintf(stderr, __VA_ARGS__);                                                              \
        exit(1);                                                                                   \
    } while (0)
static void *getbuf(struct kvn_xport *x, size_t n, int alloc)
{
    void *p = NULL;
    struct kvn_err e;
    if (alloc) {
        if (kvn_xport_ucx_mem_alloc(x, n, &p, &e))
            DIE("alloc %s\n", e.msg);
    } else {
        p = aligned_alloc(4096, n);
        memset(p, 0, n);
    }
    return p;
}
static int wait_kind(struct kvn_xport *x, int kind, uint64_t *cookie)
{
    struct kvn_xport_cqe c[64];
    for (;;) {
        int n = kvn_xport_poll(x, c, 64);
        for (int i = 0; i < n; i++)
            if ((int)c[i].kind == kind) {
                if (cookie)
                    *cookie = c[i].cookie;
                return c[i].status;
            }
    }
}
int main(int argc, char **argv)
{
    const char *uri = argv[1];
    size_t size = strtoul(argv[2], 0, 0);
    int iters = atoi(argv[3]);
    int alloc = atoi(argv[4]);
    int delivery = argc > 5 ? atoi(argv[5]) : 1;
    int depth = 16, warm = 100;
    int p1[2], p2[2];
    if (pipe(p1) || pipe(p2))
        return 1;
    pid_t pid = fork();
    struct kvn_err e;
    struct kvn_xport *x;
    struct kvn_xport_mr *mr;
    if (kvn_xport_open(uri, NULL, &x, &e))
        DIE("open %s\n", e.msg);
    if (kvn_xport_ucx_set_write_delivery(x, delivery, &e))
        DIE("delivery %s\n", e.msg);
    void *buf = getbuf(x, size, alloc);
    if (kvn_xport_mr_reg(x, buf, size, KVN_XPORT_ACCESS_ALL, &mr, &e))
        DIE("reg %s\n", e.msg);
    unsigned char blob[KVN_XPORT_ADDR_MAX], desc[KVN_XPORT_DESC_MAX], rblob[KVN_XPORT_ADDR_MAX],
        rdesc[KVN_XPORT_DESC_MAX];
    size_t bl = sizeof blob, dl = sizeof desc, rbl, rdl;
    kvn_xport_address(x, blob, &bl, &e);
    kvn_xport_mr_pack(mr, desc, &dl, &e);
    int wfd = pid ? p1[1] : p2[1], rfd = pid ? p2[0] : p1[0];
    if (write(wfd, &bl, sizeof bl) < 0 || write(wfd, blob, bl) < 0 ||
        write(wfd, &dl, sizeof dl) < 0 || write(wfd, desc, dl) < 0)
        return 1;
    if (read(rfd, &rbl, sizeof rbl) < 0 || read(rfd, rblob, rbl) < 0 ||
        read(rfd, &rdl, sizeof rdl) < 0 || read(rfd, rdesc, rdl) < 0)
        return 1;
    struct kvn_xport_peer *p;
    struct kvn_xport_rmr *r;
    if (kvn_xport_connect(x, rblob, rbl, &p, &e))
        DIE("connect %s\n", e.msg);
    if (kvn_xport_rmr_unpack(p, rdesc, rdl, &r, &e))
        DIE("unpack %s\n", e.msg);
    if (pid == 0) { /* target: progress until the end note, answer it */
        wait_kind(x, KVN_XPORT_RECV, NULL);
        char ok = 1;
        kvn_xport_notify(p, &ok, 1, 1, &e);
        wait_kind(x, KVN_XPORT_SEND, NULL);
        kvn_xport_close(x);
        _exit(0);
    }
    struct kvn_xport_sge sge = {mr, 0, size};
    struct kvn_xport_op op = {KVN_XPORT_WRITE, &sge, 1, r, 0, 0};
    int inflight = 0;
    double t0 = 0;
    struct kvn_xport_cqe c[64];
    for (int i = 0; i < warm + iters; i++) {
        if (i == warm)
            t0 = now();
        while (inflight >= depth) {
            int n = kvn_xport_poll(x, c, 64);
            for (int k = 0; k < n; k++) {
                if (c[k].status)
                    DIE("op %s\n", c[k].msg);
                inflight--;
            }
        }
        op.cookie = i;
        if (kvn_xport_post(p, &op, 1, &e))
            DIE("post %s\n", e.msg);
        inflight++;
    }
    while (inflight) {
        int n = kvn_xport_poll(x, c, 64);
        for (int k = 0; k < n; k++) {
            if (c[k].status)
                DIE("op %s\n", c[k].msg);
            inflight--;
        }
    }
    char end = 1;
    kvn_xport_notify(p, &end, 1, 7, &e);
    wait_kind(x, KVN_XPORT_RECV, NULL);
    double t = now() - t0;
    printf("%s size %zu alloc %d: %.3f GB/s\n", uri, size, alloc, (double)size * iters / t / 1e9);
    waitpid(pid, NULL, 0);
    kvn_xport_close(x);
    return 0;
}
