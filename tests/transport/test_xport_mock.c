/*
 * test_xport_mock.c - the common layer (transport/xport.c) driven through a
 * mock backend whose completions the test controls, so that timeouts,
 * zombie ops, cancellation, deferred frees, the posting guard, partial
 * failures, receive-buffer recycling and ring bounds are checked
 * deterministically, without a real provider.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "transport/kvn_xport.h"
#include "transport/xport_impl.h"

#define MAX_OWNED 4096
#define N_RX      4

struct mock {
    struct kvn_xport base;
    struct xport_op *owned[MAX_OWNED]; /* ops handed to the backend */
    uint32_t n_owned;
    uint32_t parts_per_op; /* parts each post claims */
    int fail_post;         /* next post returns this (nothing posted) */
    int fail_after_first;  /* next post: part 1 posted, the rest fail */
    bool complete_inline;  /* post completes its parts before returning */
    uint64_t reposted[64];
    uint32_t n_reposted;
    uint8_t rx[N_RX][256];
    uint32_t disconnects, peer_frees, mr_deregs, rmr_frees;
    uint64_t last_remote_addr;
};

static struct mock *M(struct kvn_xport *x)
{
    return (struct mock *)x;
}

static int m_open(const struct xport_uri *uri, const struct kvn_xport_attr *attr,
                  struct kvn_xport **out, struct kvn_err *err)
{
    (void)attr;
    (void)err;
    struct mock *m = calloc(1, sizeof(*m));
    assert_non_null(m);
    snprintf(m->base.name, sizeof(m->base.name), "mock+%s", uri->sub);
    m->base.n_recv_bufs = N_RX;
    m->base.max_op_bytes = 1u << 20;
    m->parts_per_op = 1;
    *out = &m->base;
    return 0;
}

static void m_close(struct kvn_xport *x)
{
    free(M(x));
}

static int m_address(struct kvn_xport *x, void *buf, size_t *len, struct kvn_err *err)
{
    (void)x;
    (void)err;
    memcpy(buf, "MOCKADDR", 8);
    *len = 8;
    return 0;
}

static int m_connect(struct kvn_xport *x, struct kvn_xport_peer *p, const void *raw, size_t len,
                     struct kvn_err *err)
{
    (void)x;
    (void)p;
    if (len != 8 || memcmp(raw, "MOCKADDR", 8) != 0)
        return kvn_err_set(err, -EINVAL, "mock: bad address");
    return 0;
}

static void m_disconnect(struct kvn_xport_peer *p)
{
    M(p->x)->disconnects++;
}
static void m_peer_free(struct kvn_xport_peer *p)
{
    M(p->x)->peer_frees++;
}
static int m_mr_reg(struct kvn_xport *x, struct kvn_xport_mr *mr, struct kvn_err *err)
{
    (void)x;
    (void)mr;
    (void)err;
    return 0;
}
static void m_mr_dereg(struct kvn_xport_mr *mr)
{
    M(mr->x)->mr_deregs++;
}
static int m_pack_key(const struct kvn_xport_mr *mr, void *key, size_t *len, struct kvn_err *err)
{
    (void)mr;
    (void)err;
    memcpy(key, "KEY!", 4);
    *len = 4;
    return 0;
}
static int m_unpack_key(struct kvn_xport_peer *p, struct kvn_xport_rmr *r, const void *key,
                        size_t len, struct kvn_err *err)
{
    (void)p;
    (void)r;
    if (len != 4 || memcmp(key, "KEY!", 4) != 0)
        return kvn_err_set(err, -EINVAL, "mock: bad key");
    return 0;
}
static void m_rmr_free(struct kvn_xport_rmr *r)
{
    M(r->peer->x)->rmr_frees++;
}

static void own(struct mock *m, struct xport_op *op)
{
    assert_true(m->n_owned < MAX_OWNED);
    m->owned[m->n_owned++] = op;
}

static int m_post(struct kvn_xport_peer *p, struct xport_op *op, const struct xport_post_req *req,
                  struct kvn_err *err)
{
    struct mock *m = M(p->x);
    m->last_remote_addr = req->remote_addr;
    if (m->fail_post) {
        int rc = m->fail_post;
        m->fail_post = 0;
        return kvn_err_set(err, rc, "mock: post refused");
    }
    op->parts = m->parts_per_op;
    if (m->fail_after_first) {
        int rc = m->fail_after_first;
        m->fail_after_first = 0;
        own(m, op); /* part 1 in flight */
        for (uint32_t i = 1; i < m->parts_per_op; i++)
            xport_op_done(op, rc, "mock: later part refused");
        return 0;
    }
    if (m->complete_inline) {
        for (uint32_t i = 0; i < m->parts_per_op; i++)
            xport_op_done(op, 0, NULL);
        return 0;
    }
    own(m, op);
    return 0;
}

static int m_notify(struct kvn_xport_peer *p, struct xport_op *op,
                    const struct xport_notify_hdr *hdr, const void *buf, size_t len,
                    struct kvn_err *err)
{
    (void)hdr;
    (void)buf;
    (void)len;
    (void)err;
    op->parts = 1;
    own(M(p->x), op);
    return 0;
}

static void m_repost(struct kvn_xport *x, uint64_t token)
{
    struct mock *m = M(x);
    assert_true(m->n_reposted < 64);
    m->reposted[m->n_reposted++] = token;
}

static int m_progress(struct kvn_xport *x)
{
    (void)x;
    return 0;
}
static int m_get_fd(struct kvn_xport *x)
{
    (void)x;
    return -1;
}

static const struct kvn_xport_ops mock_ops = {
    .family = "mock",
    .id = KVN_XPORT_BACKEND_OFI, /* any id; only the framing uses it */
    .peer_size = sizeof(struct kvn_xport_peer),
    .mr_size = sizeof(struct kvn_xport_mr),
    .rmr_size = sizeof(struct kvn_xport_rmr),
    .open = m_open,
    .close = m_close,
    .address = m_address,
    .connect = m_connect,
    .disconnect = m_disconnect,
    .peer_free = m_peer_free,
    .mr_reg = m_mr_reg,
    .mr_dereg = m_mr_dereg,
    .mr_pack_key = m_pack_key,
    .rmr_unpack_key = m_unpack_key,
    .rmr_free = m_rmr_free,
    .post = m_post,
    .notify = m_notify,
    .recv_repost = m_repost,
    .progress = m_progress,
    .get_fd = m_get_fd,
    .arm = NULL,
};

/* Completes (one part of) the i-th owned op and forgets it. */
static void finish(struct mock *m, uint32_t i, int status)
{
    assert_true(i < m->n_owned);
    struct xport_op *op = m->owned[i];
    m->owned[i] = m->owned[--m->n_owned];
    xport_op_done(op, status, status ? "mock: failed" : NULL);
}

/* ------------------------------------------------------------------ */

struct fx {
    struct kvn_xport *x;
    struct mock *m;
    struct kvn_xport_peer *p;
    struct kvn_xport_mr *mr;
    struct kvn_xport_rmr *r;
    uint8_t buf[65536];
};

static void fx_open(struct fx *f, uint32_t max_out, uint32_t timeout_ms)
{
    struct kvn_err err;
    struct kvn_xport_attr a;
    kvn_xport_attr_init(&a);
    a.max_outstanding = max_out;
    a.op_timeout_ms = timeout_ms;
    a.max_msg_size = 200;
    struct xport_uri u = {.family = "mock", .sub = "t"};
    assert_int_equal(xport_open_ops(&mock_ops, &u, &a, &f->x, &err), 0);
    f->m = M(f->x);
    uint8_t blob[KVN_XPORT_ADDR_MAX];
    size_t len = sizeof(blob);
    assert_int_equal(kvn_xport_address(f->x, blob, &len, &err), 0);
    assert_int_equal(kvn_xport_connect(f->x, blob, len, &f->p, &err), 0);
    assert_int_equal(
        kvn_xport_mr_reg(f->x, f->buf, sizeof(f->buf), KVN_XPORT_ACCESS_ALL, &f->mr, &err), 0);
    uint8_t d[KVN_XPORT_DESC_MAX];
    size_t dl = sizeof(d);
    assert_int_equal(kvn_xport_mr_pack(f->mr, d, &dl, &err), 0);
    assert_int_equal(kvn_xport_rmr_unpack(f->p, d, dl, &f->r, &err), 0);
}

static int fx_post(struct fx *f, uint64_t cookie, uint64_t len)
{
    struct kvn_err err;
    struct kvn_xport_sge s = {.mr = f->mr, .offset = 0, .len = len};
    struct kvn_xport_op o = {.kind = KVN_XPORT_WRITE,
                             .local = &s,
                             .n_local = 1,
                             .remote = f->r,
                             .remote_offset = 100,
                             .cookie = cookie};
    return kvn_xport_post(f->p, &o, 1, &err);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Polls until n cqes (bounded by a 30 s guard). */
static void poll_n(struct kvn_xport *x, struct kvn_xport_cqe *c, int n)
{
    int got = 0;
    uint64_t end = now_ms() + 30000;
    while (got < n) {
        int k = kvn_xport_poll(x, c + got, n - got);
        assert_true(k >= 0);
        got += k;
        if (now_ms() > end)
            fail_msg("%d of %d completions", got, n);
    }
}

static void test_complete_once_and_offsets(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f, 8, 60000);
    assert_int_equal(fx_post(&f, 1, 10), 0);
    /* offset mode: the backend sees the remote offset itself */
    assert_int_equal(f.m->last_remote_addr, 100);
    assert_int_equal(kvn_xport_outstanding(f.x), 1);
    struct kvn_xport_cqe c[4];
    assert_int_equal(kvn_xport_poll(f.x, c, 4), 0);
    finish(f.m, 0, 0);
    assert_int_equal(kvn_xport_outstanding(f.x), 1); /* until polled */
    assert_int_equal(kvn_xport_poll(f.x, c, 4), 1);
    assert_int_equal(c[0].cookie, 1);
    assert_int_equal(c[0].status, 0);
    assert_int_equal(c[0].len, 10);
    assert_ptr_equal(c[0].peer, f.p);
    assert_int_equal(kvn_xport_outstanding(f.x), 0);
    assert_int_equal(kvn_xport_poll(f.x, c, 4), 0);
    /* a multi-part op completes once, with the first error */
    f.m->parts_per_op = 3;
    assert_int_equal(fx_post(&f, 2, 10), 0);
    struct xport_op *op = f.m->owned[0];
    f.m->n_owned = 0;
    xport_op_done(op, 0, NULL);
    xport_op_done(op, -EIO, "part 2 broke");
    assert_int_equal(kvn_xport_poll(f.x, c, 4), 0);
    xport_op_done(op, -EPIPE, "part 3 broke too");
    assert_int_equal(kvn_xport_poll(f.x, c, 4), 1);
    assert_int_equal(c[0].status, -EIO);
    assert_string_equal(c[0].msg, "part 2 broke");
    /* -EIO is not a connection error: the peer stays usable */
    f.m->parts_per_op = 1;
    assert_int_equal(fx_post(&f, 3, 10), 0);
    finish(f.m, 0, 0);
    poll_n(f.x, c, 1);
    assert_int_equal(c[0].status, 0);
    kvn_xport_close(f.x);
}

static void test_posting_guard_and_refusals(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f, 8, 60000);
    struct kvn_xport_cqe c[8];
    /* parts complete inside post: reported once, slot recycled */
    f.m->complete_inline = true;
    f.m->parts_per_op = 2;
    for (int i = 0; i < 20; i++) {
        assert_int_equal(fx_post(&f, 10 + (uint64_t)i, 5), 0);
        assert_int_equal(kvn_xport_poll(f.x, c, 8), 1);
        assert_int_equal(c[0].cookie, 10 + (uint64_t)i);
        assert_int_equal(c[0].status, 0);
    }
    f.m->complete_inline = false;
    /* backend refuses before posting: one error cqe, nothing leaked */
    f.m->fail_post = -ENOBUFS;
    assert_int_equal(fx_post(&f, 40, 5), 0);
    assert_int_equal(kvn_xport_poll(f.x, c, 8), 1);
    assert_int_equal(c[0].status, -ENOBUFS);
    assert_string_equal(c[0].msg, "mock: post refused");
    assert_int_equal(f.m->n_owned, 0);
    /* first part posted, the rest refused: completes when part 1 does */
    f.m->parts_per_op = 3;
    f.m->fail_after_first = -EAGAIN;
    assert_int_equal(fx_post(&f, 41, 5), 0);
    assert_int_equal(kvn_xport_poll(f.x, c, 8), 0);
    finish(f.m, 0, 0);
    assert_int_equal(kvn_xport_poll(f.x, c, 8), 1);
    assert_int_equal(c[0].status, -EAGAIN);
    /* all 8 slots usable again */
    f.m->parts_per_op = 1;
    for (int i = 0; i < 8; i++)
        assert_int_equal(fx_post(&f, 50 + (uint64_t)i, 5), 0);
    assert_int_equal(fx_post(&f, 60, 5), -EAGAIN);
    while (f.m->n_owned)
        finish(f.m, 0, 0);
    poll_n(f.x, c, 8);
    kvn_xport_close(f.x);
}

static void test_timeout_zombie_and_busy(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f, 4, 1);
    struct kvn_err err;
    struct kvn_xport_cqe c[8];
    assert_int_equal(fx_post(&f, 1, 10), 0);
    assert_int_equal(fx_post(&f, 2, 10), 0);
    /* the deadline passes (1 ms): both complete with -ETIMEDOUT */
    poll_n(f.x, c, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(c[i].status, -ETIMEDOUT);
        assert_true(strlen(c[i].msg) > 0);
    }
    assert_int_equal(kvn_xport_outstanding(f.x), 0);
    assert_int_equal(kvn_xport_peer_outstanding(f.p), 0);
    /* the peer is failed: new work refused */
    assert_int_equal(fx_post(&f, 3, 10), -ENOTCONN);
    assert_int_equal(kvn_xport_notify(f.p, "x", 1, 4, &err), -ENOTCONN);
    /* the backend still owns the two ops: mr busy, rmr free deferred, two
     * of four slots held */
    assert_int_equal(f.m->n_owned, 2);
    assert_int_equal(kvn_xport_mr_dereg(f.mr, &err), -EBUSY);
    kvn_xport_rmr_free(f.r);
    assert_int_equal(f.m->rmr_frees, 0);
    /* late completions: recycled silently, no second cqe */
    finish(f.m, 0, 0);
    finish(f.m, 0, -EIO);
    assert_int_equal(kvn_xport_poll(f.x, c, 8), 0);
    assert_int_equal(f.m->rmr_frees, 1);
    assert_int_equal(kvn_xport_mr_dereg(f.mr, &err), 0);
    kvn_xport_disconnect(f.p);
    assert_int_equal(f.m->peer_frees, 1);
    kvn_xport_close(f.x);
}

static void test_disconnect_cancel_and_abandon(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f, 8, 60000);
    struct kvn_err err;
    struct kvn_xport_cqe c[8];
    assert_int_equal(fx_post(&f, 1, 10), 0);
    assert_int_equal(fx_post(&f, 2, 10), 0);
    assert_int_equal(kvn_xport_notify(f.p, "hi", 2, 3, &err), 0);
    finish(f.m, 0, 0); /* one completes before the disconnect */
    kvn_xport_disconnect(f.p);
    assert_int_equal(f.m->disconnects, 1);
    assert_int_equal(f.m->peer_frees, 0); /* zombies + rmr hold it */
    assert_int_equal(kvn_xport_poll(f.x, c, 8), 3);
    int canceled = 0;
    for (int i = 0; i < 3; i++) {
        assert_null(c[i].peer); /* handle no longer handed out */
        assert_true(c[i].peer_id != 0);
        if (c[i].status == -ECANCELED)
            canceled++;
        else
            assert_int_equal(c[i].status, 0);
    }
    assert_int_equal(canceled, 2);
    assert_int_equal(fx_post(&f, 9, 10), -ENOTCONN);
    assert_int_equal(kvn_xport_mr_dereg(f.mr, &err), -EBUSY);
    /* the backend gives up on the rest: slots and mr come back */
    f.m->n_owned = 0;
    xport_peer_abandon(f.p);
    assert_int_equal(kvn_xport_mr_dereg(f.mr, &err), 0);
    assert_int_equal(f.m->peer_frees, 0); /* the rmr still refers to it */
    kvn_xport_rmr_free(f.r);
    assert_int_equal(f.m->peer_frees, 1);
    /* all 8 slots free again: a new peer can use the full window */
    uint8_t blob[KVN_XPORT_ADDR_MAX];
    size_t len = sizeof(blob);
    assert_int_equal(kvn_xport_address(f.x, blob, &len, &err), 0);
    struct kvn_xport_peer *p2;
    assert_int_equal(kvn_xport_connect(f.x, blob, len, &p2, &err), 0);
    for (int i = 0; i < 8; i++)
        assert_int_equal(kvn_xport_notify(p2, "y", 1, (uint64_t)i, &err), 0);
    assert_int_equal(kvn_xport_notify(p2, "y", 1, 99, &err), -EAGAIN);
    kvn_xport_close(f.x); /* with 8 ops outstanding: no leak, no cqe */
}

static void test_backend_peer_fail(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f, 8, 60000);
    struct kvn_err err;
    struct kvn_xport_cqe c[8];
    assert_int_equal(fx_post(&f, 1, 10), 0);
    assert_int_equal(fx_post(&f, 2, 10), 0);
    xport_peer_fail(f.p, -ECONNRESET, "mock: peer process gone");
    assert_int_equal(kvn_xport_poll(f.x, c, 8), 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(c[i].status, -ECONNRESET);
        assert_string_equal(c[i].msg, "mock: peer process gone");
    }
    xport_peer_fail(f.p, -ECONNRESET, "again"); /* idempotent */
    assert_int_equal(kvn_xport_poll(f.x, c, 8), 0);
    assert_int_equal(fx_post(&f, 3, 10), -ENOTCONN);
    assert_int_equal(kvn_xport_notify(f.p, "z", 1, 4, &err), -ENOTCONN);
    /* the backend returns the zombies later: no second cqe */
    while (f.m->n_owned)
        finish(f.m, 0, -EIO);
    assert_int_equal(kvn_xport_poll(f.x, c, 8), 0);
    assert_int_equal(kvn_xport_mr_dereg(f.mr, &err), 0);
    kvn_xport_close(f.x);
}

static void test_recv_path(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f, 8, 60000);
    struct mock *m = f.m;
    struct kvn_xport_cqe c[8];
    struct xport_notify_hdr h = {.magic = XPORT_NOTIFY_MAGIC, .len = 5, .src = 0};
    h.src = kvn_xport_peer_id(f.p); /* loopback: our own id */
    memcpy(m->rx[0], &h, sizeof(h));
    memcpy(m->rx[0] + sizeof(h), "hello", 5);
    xport_recv_deliver(f.x, m->rx[0], sizeof(h) + 5, 0);
    /* malformed: short, bad magic, length mismatch, oversize, empty */
    xport_recv_deliver(f.x, m->rx[1], 3, 1);
    struct xport_notify_hdr bad = h;
    bad.magic ^= 1;
    memcpy(m->rx[2], &bad, sizeof(bad));
    xport_recv_deliver(f.x, m->rx[2], sizeof(bad) + 5, 2);
    bad = h;
    bad.len = 6;
    memcpy(m->rx[3], &bad, sizeof(bad));
    xport_recv_deliver(f.x, m->rx[3], sizeof(bad) + 5, 3);
    bad = h;
    bad.len = 201; /* above max_msg_size 200 */
    memcpy(m->rx[1], &bad, sizeof(bad));
    xport_recv_deliver(f.x, m->rx[1], sizeof(bad) + 201, 1);
    bad.len = 0;
    memcpy(m->rx[1], &bad, sizeof(bad));
    xport_recv_deliver(f.x, m->rx[1], sizeof(bad), 1);
    /* the malformed ones went straight back to the backend */
    assert_int_equal(m->n_reposted, 5);
    m->n_reposted = 0;
    assert_int_equal(kvn_xport_poll(f.x, c, 8), 1);
    assert_int_equal(c[0].kind, KVN_XPORT_RECV);
    assert_ptr_equal(c[0].peer, f.p);
    assert_int_equal(c[0].len, 5);
    assert_memory_equal(c[0].data, "hello", 5);
    /* buffer 0 is given back only at the next poll */
    assert_int_equal(m->n_reposted, 0);
    assert_int_equal(kvn_xport_poll(f.x, c, 8), 0);
    assert_int_equal(m->n_reposted, 1);
    assert_int_equal(m->reposted[0], 0);
    /* an unknown sender: peer NULL, id kept */
    h.src = 0x1234;
    memcpy(m->rx[1], &h, sizeof(h));
    memcpy(m->rx[1] + sizeof(h), "other", 5);
    xport_recv_deliver(f.x, m->rx[1], sizeof(h) + 5, 1);
    assert_int_equal(kvn_xport_poll(f.x, c, 8), 1);
    assert_null(c[0].peer);
    assert_int_equal(c[0].peer_id, 0x1234);
    /* every buffer queued at once fits the ring beside max_outstanding
     * op completions */
    h.src = kvn_xport_peer_id(f.p);
    for (uint32_t i = 0; i < N_RX; i++) {
        memcpy(m->rx[i], &h, sizeof(h));
        memcpy(m->rx[i] + sizeof(h), "abcde", 5);
    }
    for (int i = 0; i < 8; i++)
        assert_int_equal(fx_post(&f, 100 + (uint64_t)i, 1), 0);
    while (m->n_owned)
        finish(m, 0, 0);
    for (uint32_t i = 0; i < N_RX; i++)
        xport_recv_deliver(f.x, m->rx[i], sizeof(h) + 5, i);
    struct kvn_xport_cqe all[16];
    assert_int_equal(kvn_xport_poll(f.x, all, 16), 8 + N_RX);
    kvn_xport_close(f.x);
}

static void test_wide_ops_and_descriptor_mode(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f, 8, 60000);
    struct kvn_err err;
    struct kvn_xport_mr *mrs[6];
    struct kvn_xport_sge s[6];
    for (int i = 0; i < 6; i++) {
        assert_int_equal(
            kvn_xport_mr_reg(f.x, f.buf + i * 1024, 1024, KVN_XPORT_ACCESS_LOCAL, &mrs[i], &err),
            0);
        s[i] = (struct kvn_xport_sge){.mr = mrs[i], .offset = 0, .len = 1024};
    }
    /* an op over 6 distinct regions: every mr refuses dereg until done */
    struct kvn_xport_op o = {.kind = KVN_XPORT_READ,
                             .local = s,
                             .n_local = 6,
                             .remote = f.r,
                             .remote_offset = 0,
                             .cookie = 5};
    assert_int_equal(kvn_xport_post(f.p, &o, 1, &err), 0);
    for (int i = 0; i < 6; i++)
        assert_int_equal(kvn_xport_mr_dereg(mrs[i], &err), -EBUSY);
    finish(f.m, 0, 0);
    for (int i = 0; i < 6; i++)
        assert_int_equal(kvn_xport_mr_dereg(mrs[i], &err), 0);
    struct kvn_xport_cqe c[2];
    assert_int_equal(kvn_xport_poll(f.x, c, 2), 1);
    assert_int_equal(c[0].len, 6 * 1024);
    /* a remote range beyond the region is refused before the backend */
    struct kvn_xport_sge many[20];
    for (int i = 0; i < 20; i++)
        many[i] = (struct kvn_xport_sge){f.mr, 0, 65536};
    o = (struct kvn_xport_op){KVN_XPORT_WRITE, many, 20, f.r, 0, 6};
    assert_int_equal(kvn_xport_post(f.p, &o, 1, &err), -ERANGE);
    /* within both regions but above the backend's max_op_bytes (1 MiB) */
    const size_t B = 2u << 20;
    uint8_t *big = malloc(B);
    assert_non_null(big);
    struct kvn_xport_mr *bmr;
    assert_int_equal(kvn_xport_mr_reg(f.x, big, B, KVN_XPORT_ACCESS_ALL, &bmr, &err), 0);
    uint8_t d[KVN_XPORT_DESC_MAX];
    size_t dl = sizeof(d);
    assert_int_equal(kvn_xport_mr_pack(bmr, d, &dl, &err), 0);
    struct kvn_xport_rmr *br;
    assert_int_equal(kvn_xport_rmr_unpack(f.p, d, dl, &br, &err), 0);
    struct kvn_xport_sge bs = {bmr, 0, (1u << 20) + 1};
    o = (struct kvn_xport_op){KVN_XPORT_WRITE, &bs, 1, br, 0, 7};
    assert_int_equal(kvn_xport_post(f.p, &o, 1, &err), -EMSGSIZE);
    bs.len = 1u << 20;
    assert_int_equal(kvn_xport_post(f.p, &o, 1, &err), 0);
    assert_int_equal(kvn_xport_outstanding(f.x), 1);
    finish(f.m, 0, 0);
    assert_int_equal(kvn_xport_poll(f.x, c, 2), 1);
    assert_int_equal(c[0].len, 1u << 20);
    kvn_xport_rmr_free(br);
    assert_int_equal(kvn_xport_mr_dereg(bmr, &err), 0);
    free(big);
    kvn_xport_close(f.x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_complete_once_and_offsets),
        cmocka_unit_test(test_posting_guard_and_refusals),
        cmocka_unit_test(test_timeout_zombie_and_busy),
        cmocka_unit_test(test_disconnect_cancel_and_abandon),
        cmocka_unit_test(test_backend_peer_fail),
        cmocka_unit_test(test_recv_path),
        cmocka_unit_test(test_wide_ops_and_descriptor_mode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
