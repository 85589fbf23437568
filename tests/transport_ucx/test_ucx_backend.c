/*
 * test_ucx_backend.c - the UCX backend through the public API, in one
 * process: two domains (A and B) on the same URI connected both ways
 * (loopback over ucx+tcp and ucx+sm), both progressed by this thread.
 *
 *   usage: test_ucx_backend URI      (ucx+tcp, ucx+sm, ucx)
 *
 * What is checked: WRITE / READ correctness for odd sizes and a 1024-entry
 * scatter-gather list; WRITEs sharing write-completion flushes are each at
 * the target when their completion is polled (bursts, trickles, disconnect
 * with WRITEs waiting); notifications ordered after un-awaited WRITEs (the
 * flush-before-send rule of transport/ucx); descriptor keys that pass the
 * common framing but carry a corrupted UCX key are refused; disconnect with
 * ops outstanding completes them with -ECANCELED exactly once; a peer domain
 * that goes away fails the ops to it within op_timeout_ms while the domain
 * keeps working with another peer; the wait fd fires for a notification;
 * UCX-specific bad input (URIs).  Deadlines only bound waits; nothing is
 * timed.  Only loopback traffic.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "transport/kvn_xport.h"
#include "transport/ucx/kvn_xport_ucx.h"

#define BUF_LEN (4u * 1024u * 1024u)
#define WAIT_MS 30000
#define MAX_CQ  4096

static const char *g_uri = "ucx+tcp";

struct side {
    struct kvn_xport *x;
    unsigned char *buf;
    struct kvn_xport_mr *mr;
    struct kvn_xport_peer *peer; /* to the other side */
    struct kvn_xport_rmr *rmr;   /* the other side's buffer */
};

struct fx {
    struct side a, b;
    struct kvn_xport_cqe cq[MAX_CQ]; /* stashed completions (A and B) */
    int from_b[MAX_CQ];
    unsigned char rdata[MAX_CQ][64]; /* first bytes of RECV payloads */
    size_t n_cq;
    uint64_t arrivals[256]; /* first 8 bytes of B's RECVs, in arrival order */
    size_t n_arr;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void fill(unsigned char *p, size_t len, uint32_t seed)
{
    uint32_t v = seed * 2654435761u + 1;
    for (size_t i = 0; i < len; i++) {
        v = v * 1103515245u + 12345u;
        p[i] = (unsigned char)(v >> 16);
    }
}

static void side_open(struct side *s, const struct kvn_xport_attr *attr)
{
    struct kvn_err ke;
    int rc = kvn_xport_open(g_uri, attr, &s->x, &ke);
    if (rc < 0)
        fail_msg("open %s: %s", g_uri, ke.msg);
    s->buf = calloc(1, BUF_LEN);
    assert_non_null(s->buf);
    rc = kvn_xport_mr_reg(s->x, s->buf, BUF_LEN, KVN_XPORT_ACCESS_ALL, &s->mr, &ke);
    if (rc < 0)
        fail_msg("mr_reg: %s", ke.msg);
}

/* s connects to t and unpacks t's descriptor. */
static void side_link(struct side *s, struct side *t)
{
    struct kvn_err ke;
    unsigned char blob[KVN_XPORT_ADDR_MAX], desc[KVN_XPORT_DESC_MAX];
    size_t bl = sizeof(blob), dl = sizeof(desc);
    assert_int_equal(kvn_xport_address(t->x, blob, &bl, &ke), 0);
    int rc = kvn_xport_connect(s->x, blob, bl, &s->peer, &ke);
    if (rc < 0)
        fail_msg("connect: %s", ke.msg);
    assert_int_equal(kvn_xport_mr_pack(t->mr, desc, &dl, &ke), 0);
    rc = kvn_xport_rmr_unpack(s->peer, desc, dl, &s->rmr, &ke);
    if (rc < 0)
        fail_msg("rmr_unpack: %s", ke.msg);
    assert_int_equal(kvn_xport_rmr_len(s->rmr), BUF_LEN);
}

static int setup_attr(void **state, const struct kvn_xport_attr *attr)
{
    struct fx *f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    side_open(&f->a, attr);
    side_open(&f->b, attr);
    side_link(&f->a, &f->b);
    side_link(&f->b, &f->a);
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_attr(state, NULL);
}

static int setup_short_timeout(void **state)
{
    struct kvn_xport_attr a;
    kvn_xport_attr_init(&a);
    a.op_timeout_ms = 1500;
    return setup_attr(state, &a);
}

/* The same two domains with local WRITE completion (delivery is the
 * default). */
static int delivery_off(void **state)
{
    struct fx *f = *state;
    struct kvn_err ke;
    if (kvn_xport_ucx_set_write_delivery(f->a.x, 0, &ke) < 0 ||
        kvn_xport_ucx_set_write_delivery(f->b.x, 0, &ke) < 0)
        return -1;
    return 0;
}

static int setup_local(void **state)
{
    return setup(state) < 0 ? -1 : delivery_off(state);
}

static int setup_local_short_timeout(void **state)
{
    return setup_short_timeout(state) < 0 ? -1 : delivery_off(state);
}

static void side_close(struct side *s)
{
    kvn_xport_close(s->x); /* releases peer, mr, rmr */
    free(s->buf);
    memset(s, 0, sizeof(*s));
}

static int teardown(void **state)
{
    struct fx *f = *state;
    side_close(&f->a);
    side_close(&f->b);
    free(f);
    return 0;
}

/* Polls both domains once, stashing completions; returns how many. */
static int progress(struct fx *f)
{
    struct kvn_xport_cqe c[64];
    int got = 0;
    for (int k = 0; k < 2; k++) {
        struct kvn_xport *x = k ? f->b.x : f->a.x;
        if (!x)
            continue;
        int n = kvn_xport_poll(x, c, 64);
        assert_true(n >= 0);
        for (int i = 0; i < n; i++) {
            assert_true(f->n_cq < MAX_CQ);
            f->cq[f->n_cq] = c[i];
            f->from_b[f->n_cq] = k;
            if (k == 1 && c[i].kind == KVN_XPORT_RECV && c[i].len >= 8 && f->n_arr < 256)
                memcpy(&f->arrivals[f->n_arr++], c[i].data, 8);
            if (c[i].kind == KVN_XPORT_RECV && c[i].data) {
                size_t l = c[i].len < 64 ? c[i].len : 64;
                memcpy(f->rdata[f->n_cq], c[i].data, l);
                f->cq[f->n_cq].data = NULL; /* invalid after the next poll */
            }
            f->n_cq++;
        }
        got += n;
    }
    return got;
}

/* Takes the completion of (kind, cookie) from side b or a. */
static struct kvn_xport_cqe take(struct fx *f, int on_b, enum kvn_xport_op_kind kind,
                                 uint64_t cookie, unsigned char *rdata)
{
    int64_t end = now_ms() + WAIT_MS;
    for (;;) {
        for (size_t i = 0; i < f->n_cq; i++) {
            if (f->from_b[i] == on_b && f->cq[i].kind == kind && f->cq[i].cookie == cookie) {
                struct kvn_xport_cqe c = f->cq[i];
                if (rdata)
                    memcpy(rdata, f->rdata[i], 64);
                f->n_cq--;
                f->cq[i] = f->cq[f->n_cq];
                f->from_b[i] = f->from_b[f->n_cq];
                memcpy(f->rdata[i], f->rdata[f->n_cq], 64);
                return c;
            }
        }
        if (now_ms() > end)
            fail_msg("no completion kind %d cookie %llu on %s", kind, (unsigned long long)cookie,
                     on_b ? "B" : "A");
        progress(f);
    }
}

static void post1(struct side *s, enum kvn_xport_op_kind kind, uint64_t lo, uint64_t ro,
                  uint64_t len, uint64_t cookie)
{
    struct kvn_err ke;
    struct kvn_xport_sge sge = {s->mr, lo, len};
    struct kvn_xport_op op = {kind, &sge, 1, s->rmr, ro, cookie};
    int rc = kvn_xport_post(s->peer, &op, 1, &ke);
    if (rc < 0)
        fail_msg("post: %s", ke.msg);
}

static void expect_ok(const struct kvn_xport_cqe *c, uint64_t len)
{
    if (c->status != 0)
        fail_msg("cookie %llu: %s: %s", (unsigned long long)c->cookie, kvn_err_name(c->status),
                 c->msg);
    assert_int_equal(c->len, len);
}

static void take_ok(struct fx *f, int on_b, enum kvn_xport_op_kind kind, uint64_t cookie,
                    uint64_t len)
{
    struct kvn_xport_cqe c = take(f, on_b, kind, cookie, NULL);
    expect_ok(&c, len);
}

/* A notification from A to B naming a range of B's buffer; returns once
 * B received it and reports whether B's range equals A's source bytes at
 * the moment the RECV was polled. */
static int notify_and_check(struct fx *f, uint64_t lo, uint64_t ro, uint64_t len, uint64_t cookie)
{
    struct kvn_err ke;
    uint64_t note[3] = {cookie, ro, len};
    assert_int_equal(kvn_xport_notify(f->a.peer, note, sizeof(note), cookie, &ke), 0);
    int64_t end = now_ms() + WAIT_MS;
    struct kvn_xport_cqe c[16];
    for (;;) {
        /* poll B alone so that the check happens right at RECV time */
        int n = kvn_xport_poll(f->b.x, c, 16);
        assert_true(n >= 0);
        for (int i = 0; i < n; i++) {
            if (c[i].kind == KVN_XPORT_RECV) {
                assert_int_equal(c[i].status, 0);
                assert_int_equal(c[i].len, sizeof(note));
                uint64_t got[3];
                memcpy(got, c[i].data, sizeof(got));
                assert_int_equal(got[0], cookie);
                assert_ptr_equal(c[i].peer, f->b.peer);
                assert_int_equal(c[i].peer_id, kvn_xport_peer_id(f->b.peer));
                int same = memcmp(f->b.buf + ro, f->a.buf + lo, len) == 0;
                struct kvn_xport_cqe s = take(f, 0, KVN_XPORT_SEND, cookie, NULL);
                expect_ok(&s, sizeof(note));
                return same;
            }
            f->cq[f->n_cq] = c[i];
            f->from_b[f->n_cq++] = 1;
        }
        if (now_ms() > end)
            fail_msg("notification %llu never arrived", (unsigned long long)cookie);
        /* A progresses too (the flush and the send need it) */
        n = kvn_xport_poll(f->a.x, c, 16);
        assert_true(n >= 0);
        for (int i = 0; i < n; i++) {
            f->cq[f->n_cq] = c[i];
            f->from_b[f->n_cq++] = 0;
        }
    }
}

/* ---- tests ------------------------------------------------------------- */

static void test_name_and_backend(void **state)
{
    struct fx *f = *state;
    assert_string_equal(kvn_xport_name(f->a.x), g_uri);
    assert_int_equal(kvn_xport_backend(f->a.x), KVN_XPORT_BACKEND_UCX);
    assert_true(kvn_xport_wait_fd(f->a.x) >= 0);
    assert_int_not_equal(kvn_xport_peer_id(f->a.peer), 0);
}

static void test_write_read_sizes(void **state)
{
    struct fx *f = *state;
    static const uint64_t sizes[] = {1, 7, 4095, 4097, 65536, 65537, 1024 * 1024 + 3, BUF_LEN / 2};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        uint64_t len = sizes[i], lo = (i * 17) % 64, ro = (i * 1031 + 3) % 4096;
        fill(f->a.buf + lo, len, (uint32_t)i + 1);
        memset(f->b.buf, 0xEE, BUF_LEN);
        post1(&f->a, KVN_XPORT_WRITE, lo, ro, len, 100 + i);
        struct kvn_xport_cqe c = take(f, 0, KVN_XPORT_WRITE, 100 + i, NULL);
        expect_ok(&c, len);
        /* a notification after the completed WRITE sees its bytes */
        assert_true(notify_and_check(f, lo, ro, len, 5000 + i));
        assert_int_equal(f->b.buf[ro + len], 0xEE);
        if (ro)
            assert_int_equal(f->b.buf[ro - 1], 0xEE);

        /* READ it back into another place of A */
        uint64_t lo2 = BUF_LEN / 2 + 8;
        if (lo2 + len > BUF_LEN)
            lo2 = BUF_LEN - len;
        memset(f->a.buf + lo2, 0, len);
        post1(&f->a, KVN_XPORT_READ, lo2, ro, len, 200 + i);
        c = take(f, 0, KVN_XPORT_READ, 200 + i, NULL);
        expect_ok(&c, len);
        assert_memory_equal(f->a.buf + lo2, f->b.buf + ro, len);
    }
    assert_int_equal(kvn_xport_outstanding(f->a.x), 0);
}

static void test_sg_1024(void **state)
{
    struct fx *f = *state;
    struct kvn_err ke;
    static struct kvn_xport_sge sge[KVN_XPORT_MAX_SGE];
    uint64_t total = 0, pos = 0;
    fill(f->a.buf, BUF_LEN / 2, 77);
    for (uint32_t k = 0; k < KVN_XPORT_MAX_SGE; k++) {
        uint64_t len = 1 + (k * 37) % 97;
        sge[k] = (struct kvn_xport_sge){f->a.mr, pos + k % 3, len};
        pos += k % 3 + len;
        total += len;
    }
    memset(f->b.buf, 0, BUF_LEN);
    struct kvn_xport_op op = {KVN_XPORT_WRITE, sge, KVN_XPORT_MAX_SGE, f->a.rmr, 11, 1};
    assert_int_equal(kvn_xport_post(f->a.peer, &op, 1, &ke), 0);
    struct kvn_xport_cqe c = take(f, 0, KVN_XPORT_WRITE, 1, NULL);
    expect_ok(&c, total);
    uint64_t note = 1;
    assert_int_equal(kvn_xport_notify(f->a.peer, &note, sizeof(note), 2, &ke), 0);
    take(f, 1, KVN_XPORT_RECV, 0, NULL);
    uint64_t r = 11;
    for (uint32_t k = 0; k < KVN_XPORT_MAX_SGE; k++) {
        assert_memory_equal(f->b.buf + r, f->a.buf + sge[k].offset, sge[k].len);
        r += sge[k].len;
    }
    assert_int_equal(f->b.buf[r], 0);

    /* and READ the range back, scattered into the upper half */
    for (uint32_t k = 0; k < KVN_XPORT_MAX_SGE; k++)
        sge[k].offset += BUF_LEN / 2;
    memset(f->a.buf + BUF_LEN / 2, 0, BUF_LEN / 2);
    op.kind = KVN_XPORT_READ;
    op.cookie = 3;
    assert_int_equal(kvn_xport_post(f->a.peer, &op, 1, &ke), 0);
    c = take(f, 0, KVN_XPORT_READ, 3, NULL);
    expect_ok(&c, total);
    r = 11;
    for (uint32_t k = 0; k < KVN_XPORT_MAX_SGE; k++) {
        assert_memory_equal(f->a.buf + sge[k].offset, f->b.buf + r, sge[k].len);
        r += sge[k].len;
    }
}

/* WRITEs not waited for, then a notification: it must arrive after them. */
static void test_notify_ordered_after_writes(void **state)
{
    struct fx *f = *state;
    for (uint32_t round = 0; round < 8; round++) {
        uint64_t len = 256 * 1024 + round * 4099, ro = round * 64;
        fill(f->a.buf, len, 900 + round);
        memset(f->b.buf, 0, BUF_LEN);
        uint64_t q = len / 4;
        for (uint32_t k = 0; k < 4; k++)
            post1(&f->a, KVN_XPORT_WRITE, k * q, ro + k * q, q, 300 + round * 4 + k);
        post1(&f->a, KVN_XPORT_WRITE, 4 * q, ro + 4 * q, len - 4 * q + 1, 400 + round);
        assert_true(notify_and_check(f, 0, ro, len, 7000 + round));
        for (uint32_t k = 0; k < 4; k++)
            take_ok(f, 0, KVN_XPORT_WRITE, 300 + round * 4 + k, len / 4);
        take(f, 0, KVN_XPORT_WRITE, 400 + round, NULL);
    }
    /* notifications keep their order */
    struct kvn_err ke;
    for (uint64_t i = 0; i < 32; i++) {
        if (i == 10)
            post1(&f->a, KVN_XPORT_WRITE, 0, 0, 65536, 999);
        assert_int_equal(kvn_xport_notify(f->a.peer, &i, sizeof(i), 8000 + i, &ke), 0);
    }
    f->n_arr = 0;
    int64_t end = now_ms() + WAIT_MS;
    while (f->n_arr < 32) {
        assert_true(now_ms() < end);
        progress(f);
    }
    for (uint64_t i = 0; i < 32; i++)
        assert_int_equal(f->arrivals[i], i);
    for (uint64_t i = 0; i < 32; i++)
        take_ok(f, 0, KVN_XPORT_SEND, 8000 + i, 8);
    take(f, 0, KVN_XPORT_WRITE, 999, NULL);
}

static uint32_t fnv1a(const unsigned char *b, size_t len, size_t cks_off)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (i >= cks_off && i < cks_off + 4) ? 0 : b[i];
        h = (h ^ c) * 16777619u;
    }
    return h;
}

/* Re-seal a descriptor after editing it (so that only the UCX key is bad). */
static void reseal(unsigned char *d, size_t len)
{
    uint32_t h = fnv1a(d, len, 28);
    memcpy(d + 28, &h, 4);
}

static void test_corrupted_keys_refused(void **state)
{
    struct fx *f = *state;
    struct kvn_err ke;
    unsigned char d[KVN_XPORT_DESC_MAX], e[KVN_XPORT_DESC_MAX];
    size_t dl = sizeof(d);
    assert_int_equal(kvn_xport_mr_pack(f->b.mr, d, &dl, &ke), 0);
    assert_true(dl > KVN_XPORT_DESC_HDR + 8);
    uint16_t kl;
    memcpy(&kl, d + 24, 2);
    assert_int_equal(kl, dl - KVN_XPORT_DESC_HDR);
    struct kvn_xport_rmr *r = (struct kvn_xport_rmr *)(uintptr_t)0x1;

    /* UCX key magic flipped */
    memcpy(e, d, dl);
    e[KVN_XPORT_DESC_HDR] ^= 0x5A;
    reseal(e, dl);
    kvn_err_clear(&ke);
    assert_int_equal(kvn_xport_rmr_unpack(f->a.peer, e, dl, &r, &ke), -EPROTO);
    assert_non_null(strstr(ke.msg, "UCX key"));

    /* inner rkey length disagreeing with the key length */
    memcpy(e, d, dl);
    e[KVN_XPORT_DESC_HDR + 4] ^= 0x01;
    reseal(e, dl);
    assert_int_equal(kvn_xport_rmr_unpack(f->a.peer, e, dl, &r, &ke), -EINVAL);
    assert_non_null(strstr(ke.msg, "UCX key"));

    /* a key cut to its header */
    memcpy(e, d, KVN_XPORT_DESC_HDR + 8);
    uint16_t cut = 8;
    memcpy(e + 24, &cut, 2);
    reseal(e, KVN_XPORT_DESC_HDR + 8);
    assert_true(kvn_xport_rmr_unpack(f->a.peer, e, KVN_XPORT_DESC_HDR + 8, &r, &ke) < 0);

    /* the packed UCX rkey inside: no memory domain, an unknown one, a
     * non-host memory type, cut short, stray bytes after it */
    const size_t rk = KVN_XPORT_DESC_HDR + 8; /* where the UCX rkey starts */
    memcpy(e, d, dl);
    memset(e + rk, 0, 8);
    reseal(e, dl);
    assert_int_equal(kvn_xport_rmr_unpack(f->a.peer, e, dl, &r, &ke), -EINVAL);
    assert_non_null(strstr(ke.msg, "no memory domain"));
    memcpy(e, d, dl);
    e[rk + 7] |= 0x80; /* md index 63 */
    reseal(e, dl);
    assert_int_equal(kvn_xport_rmr_unpack(f->a.peer, e, dl, &r, &ke), -EINVAL);
    assert_non_null(strstr(ke.msg, "unknown"));
    memcpy(e, d, dl);
    e[rk + 8] = 3; /* not UCS_MEMORY_TYPE_HOST */
    reseal(e, dl);
    assert_int_equal(kvn_xport_rmr_unpack(f->a.peer, e, dl, &r, &ke), -EINVAL);
    assert_non_null(strstr(ke.msg, "memory type"));
    for (int delta = -1; delta <= 2; delta += 3) { /* one byte short, two stray bytes */
        size_t el = dl + (size_t)(ssize_t)delta;
        memcpy(e, d, dl);
        e[dl] = e[dl + 1] = 0x77;
        uint16_t k16 = (uint16_t)(kl + delta);
        memcpy(e + 24, &k16, 2);
        uint32_t k32;
        memcpy(&k32, e + KVN_XPORT_DESC_HDR + 4, 4);
        k32 = (uint32_t)(k32 + (uint32_t)delta);
        memcpy(e + KVN_XPORT_DESC_HDR + 4, &k32, 4);
        reseal(e, el);
        kvn_err_clear(&ke);
        assert_int_equal(kvn_xport_rmr_unpack(f->a.peer, e, el, &r, &ke), -EINVAL);
        assert_non_null(strstr(ke.msg, delta < 0 ? "truncated" : "stray"));
    }

    /* a flipped bit without resealing: caught by the common checksum */
    memcpy(e, d, dl);
    e[dl - 1] ^= 0x10;
    assert_int_equal(kvn_xport_rmr_unpack(f->a.peer, e, dl, &r, &ke), -EPROTO);
    assert_ptr_equal(r, (struct kvn_xport_rmr *)(uintptr_t)0x1);

    /* the genuine one still works */
    assert_int_equal(kvn_xport_rmr_unpack(f->a.peer, d, dl, &r, &ke), 0);
    kvn_xport_rmr_free(r);
}

/* Disconnect with ops in flight: each completes once with -ECANCELED (or
 * had already completed), nothing else arrives later. */
static void test_disconnect_cancels(void **state)
{
    struct fx *f = *state;
    struct kvn_err ke;
    for (uint64_t i = 0; i < 16; i++)
        post1(&f->a, i % 2 ? KVN_XPORT_READ : KVN_XPORT_WRITE, i * 65536, i * 65536, 65536,
              600 + i);
    uint64_t note = 3;
    assert_int_equal(kvn_xport_notify(f->a.peer, &note, sizeof(note), 700, &ke), 0);
    assert_int_equal(kvn_xport_outstanding(f->a.x), 17);
    uint64_t b_id = kvn_xport_peer_id(f->a.peer);
    kvn_xport_rmr_free(f->a.rmr);
    f->a.rmr = NULL;
    kvn_xport_disconnect(f->a.peer);
    f->a.peer = NULL;
    int canceled = 0;
    for (uint64_t i = 0; i < 16; i++) {
        struct kvn_xport_cqe c =
            take(f, 0, i % 2 ? KVN_XPORT_READ : KVN_XPORT_WRITE, 600 + i, NULL);
        assert_true(c.status == 0 || c.status == -ECANCELED);
        assert_null(c.peer);
        canceled += c.status == -ECANCELED;
    }
    struct kvn_xport_cqe c = take(f, 0, KVN_XPORT_SEND, 700, NULL);
    assert_true(c.status == 0 || c.status == -ECANCELED);
    print_message("[  INFO    ] %s: %d of 16 ops canceled by disconnect, notify %s\n", g_uri,
                  canceled, c.status ? "canceled" : "done");
    for (int i = 0; i < 50; i++)
        progress(f);
    for (size_t i = 0; i < f->n_cq; i++)
        assert_true(f->from_b[i]); /* no second completion on A */
    assert_int_equal(kvn_xport_outstanding(f->a.x), 0);

    /* B still reaches A; its notifications now carry no peer handle on A */
    assert_int_equal(kvn_xport_notify(f->b.peer, &note, sizeof(note), 701, &ke), 0);
    c = take(f, 0, KVN_XPORT_RECV, 0, NULL);
    assert_null(c.peer);
    assert_int_equal(c.peer_id, b_id);
    take(f, 1, KVN_XPORT_SEND, 701, NULL);

    /* and A can connect again and move data */
    side_link(&f->a, &f->b);
    fill(f->a.buf, 4096, 5);
    post1(&f->a, KVN_XPORT_WRITE, 0, 0, 4096, 800);
    take_ok(f, 0, KVN_XPORT_WRITE, 800, 4096);
    assert_true(notify_and_check(f, 0, 0, 4096, 801));
}

/* B goes away with ops of A outstanding to it: they fail within the
 * timeout; A keeps working with a third domain C. */
static void test_peer_gone(void **state)
{
    struct fx *f = *state;
    struct kvn_err ke;
    /* B stops progressing: over tcp the READs (active messages) wait */
    for (uint64_t i = 0; i < 8; i++)
        post1(&f->a, KVN_XPORT_READ, i * 65536, i * 65536, 65536, 900 + i);
    side_close(&f->b);
    int64_t start = now_ms();
    int failed = 0;
    for (uint64_t i = 0; i < 8; i++) {
        struct kvn_xport_cqe c = take(f, 0, KVN_XPORT_READ, 900 + i, NULL);
        if (c.status < 0) {
            failed++;
            assert_true(c.msg[0] != '\0');
        }
    }
    assert_true(now_ms() - start < WAIT_MS);
    (void)failed; /* sm may have completed some READs before B closed */
    /* later posts to the failed peer are refused, if it was marked failed */
    if (failed) {
        struct kvn_xport_sge sge = {f->a.mr, 0, 8};
        struct kvn_xport_op op = {KVN_XPORT_WRITE, &sge, 1, f->a.rmr, 0, 1};
        assert_int_equal(kvn_xport_post(f->a.peer, &op, 1, &ke), -ENOTCONN);
    }
    kvn_xport_rmr_free(f->a.rmr);
    f->a.rmr = NULL;
    kvn_xport_disconnect(f->a.peer);
    f->a.peer = NULL;

    /* a third domain */
    side_open(&f->b, NULL);
    side_link(&f->a, &f->b);
    side_link(&f->b, &f->a);
    fill(f->a.buf, 100000, 9);
    post1(&f->a, KVN_XPORT_WRITE, 0, 5, 100000, 950);
    take_ok(f, 0, KVN_XPORT_WRITE, 950, 100000);
    assert_true(notify_and_check(f, 0, 5, 100000, 951));
}

/* The wait fd becomes readable when a notification is there. */
static void test_wait_fd(void **state)
{
    struct fx *f = *state;
    struct kvn_err ke;
    int fd = kvn_xport_wait_fd(f->b.x);
    assert_true(fd >= 0);
    struct kvn_xport_cqe c[8];
    while (kvn_xport_poll(f->b.x, c, 8) > 0) {
    }
    uint64_t note = 42;
    assert_int_equal(kvn_xport_notify(f->a.peer, &note, sizeof(note), 1, &ke), 0);
    int64_t end = now_ms() + WAIT_MS;
    int got = 0;
    while (!got && now_ms() < end) {
        assert_true(kvn_xport_poll(f->a.x, c, 8) >= 0); /* A sends */
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 10) > 0) {
            int n;
            while ((n = kvn_xport_poll(f->b.x, c, 8)) > 0)
                for (int i = 0; i < n; i++)
                    got |= c[i].kind == KVN_XPORT_RECV;
        }
    }
    assert_true(got);
    /* blocking wait: nothing pending on B -> times out */
    while (kvn_xport_poll(f->b.x, c, 8) > 0) {
    }
    assert_int_equal(kvn_xport_wait(f->b.x, 20, &ke), -ETIMEDOUT);
}

/* UCX-allocated memory on both sides: registered sub-ranges move data
 * (directly over ucx+sm); the allocator refuses what it must. */
static void test_ucx_mem_alloc(void **state)
{
    struct fx *f = *state;
    struct kvn_err ke;
    const size_t len = 2u * 1024u * 1024u;
    void *pa = NULL, *pb = NULL, *spare = NULL;
    assert_int_equal(kvn_xport_ucx_mem_alloc(f->a.x, len, &pa, &ke), 0);
    assert_int_equal(kvn_xport_ucx_mem_alloc(f->b.x, len, &pb, &ke), 0);
    assert_int_equal(kvn_xport_ucx_mem_alloc(f->b.x, 4096, &spare, &ke), 0); /* left to close */
    assert_non_null(pa);
    assert_int_equal((uintptr_t)pa % 4096, 0);
    unsigned char *a = pa, *b = pb;
    assert_int_equal(a[0] | a[len - 1] | b[len / 2], 0); /* zero-filled */

    struct kvn_xport_mr *ma, *mb;
    assert_int_equal(kvn_xport_mr_reg(f->a.x, a, len, KVN_XPORT_ACCESS_ALL, &ma, &ke), 0);
    /* a sub-range of B's allocation, as a pool slice would be */
    assert_int_equal(kvn_xport_mr_reg(f->b.x, b + 4096, len - 8192, KVN_XPORT_ACCESS_ALL, &mb, &ke),
                     0);
    unsigned char desc[KVN_XPORT_DESC_MAX];
    size_t dl = sizeof(desc);
    assert_int_equal(kvn_xport_mr_pack(mb, desc, &dl, &ke), 0);
    struct kvn_xport_rmr *r;
    assert_int_equal(kvn_xport_rmr_unpack(f->a.peer, desc, dl, &r, &ke), 0);

    fill(a, 1024 * 1024 + 5, 4242);
    struct kvn_xport_sge sge = {ma, 0, 1024 * 1024 + 5};
    struct kvn_xport_op op = {KVN_XPORT_WRITE, &sge, 1, r, 333, 1};
    assert_int_equal(kvn_xport_post(f->a.peer, &op, 1, &ke), 0);
    take_ok(f, 0, KVN_XPORT_WRITE, 1, 1024 * 1024 + 5);
    uint64_t note = 1;
    assert_int_equal(kvn_xport_notify(f->a.peer, &note, sizeof(note), 2, &ke), 0);
    take(f, 1, KVN_XPORT_RECV, 0, NULL);
    assert_memory_equal(b + 4096 + 333, a, 1024 * 1024 + 5);
    assert_int_equal(b[4096 + 332], 0);
    assert_int_equal(b[4096 + 333 + 1024 * 1024 + 5], 0);

    memset(a + len / 2, 0, 65536);
    sge = (struct kvn_xport_sge){ma, len / 2, 65536};
    op = (struct kvn_xport_op){KVN_XPORT_READ, &sge, 1, r, 1000, 3};
    assert_int_equal(kvn_xport_post(f->a.peer, &op, 1, &ke), 0);
    take_ok(f, 0, KVN_XPORT_READ, 3, 65536);
    assert_memory_equal(a + len / 2, b + 4096 + 1000, 65536);

    /* refusals */
    void *none = (void *)(uintptr_t)0x1;
    assert_int_equal(kvn_xport_ucx_mem_alloc(NULL, 64, &none, &ke), -EINVAL);
    assert_int_equal(kvn_xport_ucx_mem_alloc(f->a.x, 0, &none, &ke), -EINVAL);
    assert_int_equal(kvn_xport_ucx_mem_alloc(f->a.x, 64, NULL, &ke), -EINVAL);
    assert_ptr_equal(none, (void *)(uintptr_t)0x1);
    assert_int_equal(kvn_xport_ucx_mem_free(f->b.x, pb, &ke), -EBUSY);
    assert_non_null(strstr(ke.msg, "registration"));
    assert_int_equal(kvn_xport_ucx_mem_free(f->b.x, b + 1, &ke), -EINVAL);
    assert_int_equal(kvn_xport_ucx_mem_free(f->a.x, pb, &ke), -EINVAL); /* other domain's */
    assert_int_equal(kvn_xport_ucx_mem_free(NULL, pb, &ke), -EINVAL);
    assert_int_equal(kvn_xport_ucx_mem_free(f->a.x, NULL, &ke), -EINVAL);
    struct kvn_xport *ofi = NULL;
    if (kvn_xport_open("ofi+tcp", NULL, &ofi, NULL) == 0) {
        assert_int_equal(kvn_xport_ucx_mem_alloc(ofi, 64, &none, &ke), -ENOTSUP);
        assert_int_equal(kvn_xport_ucx_mem_free(ofi, pa, &ke), -ENOTSUP);
        kvn_xport_close(ofi);
    }

    kvn_xport_rmr_free(r);
    assert_int_equal(kvn_xport_mr_dereg(ma, &ke), 0);
    assert_int_equal(kvn_xport_mr_dereg(mb, &ke), 0);
    assert_int_equal(kvn_xport_ucx_mem_free(f->a.x, pa, &ke), 0);
    assert_int_equal(kvn_xport_ucx_mem_free(f->b.x, pb, &ke), 0);
    assert_int_equal(kvn_xport_ucx_mem_free(f->b.x, pb, &ke), -EINVAL); /* twice */
}

/* Notifications up to KVN_XPORT_MAX_MSG bytes (eager multi-fragment in UCX)
 * arrive whole, in order. */
static void test_big_notifications(void **state)
{
    (void)state;
    struct kvn_err ke;
    struct kvn_xport_attr a;
    kvn_xport_attr_init(&a);
    a.max_msg_size = KVN_XPORT_MAX_MSG;
    struct kvn_xport *x, *y;
    assert_int_equal(kvn_xport_open(g_uri, &a, &x, &ke), 0);
    assert_int_equal(kvn_xport_open(g_uri, &a, &y, &ke), 0);
    unsigned char blob[KVN_XPORT_ADDR_MAX];
    size_t bl = sizeof(blob);
    assert_int_equal(kvn_xport_address(y, blob, &bl, &ke), 0);
    struct kvn_xport_peer *p;
    assert_int_equal(kvn_xport_connect(x, blob, bl, &p, &ke), 0);
    static unsigned char msg[KVN_XPORT_MAX_MSG];
    static const size_t lens[] = {KVN_XPORT_MAX_MSG, 1, 8192 + 17, KVN_XPORT_MAX_MSG - 1, 30000};
    const size_t n = sizeof(lens) / sizeof(lens[0]);
    for (size_t i = 0; i < n; i++) {
        fill(msg, lens[i], (uint32_t)(70 + i));
        assert_int_equal(kvn_xport_notify(p, msg, lens[i], i, &ke), 0);
    }
    size_t got = 0, sent = 0;
    int64_t end = now_ms() + WAIT_MS;
    while ((got < n || sent < n) && now_ms() < end) {
        struct kvn_xport_cqe c[8];
        int k = kvn_xport_poll(x, c, 8);
        for (int i = 0; i < k; i++) {
            assert_int_equal(c[i].status, 0);
            sent += c[i].kind == KVN_XPORT_SEND;
        }
        k = kvn_xport_poll(y, c, 8);
        for (int i = 0; i < k; i++) {
            assert_int_equal(c[i].kind, KVN_XPORT_RECV);
            assert_int_equal(c[i].len, lens[got]);
            fill(msg, lens[got], (uint32_t)(70 + got));
            assert_memory_equal(c[i].data, msg, lens[got]);
            assert_null(c[i].peer); /* y never connected to x */
            got++;
        }
    }
    assert_int_equal(got, n);
    assert_int_equal(sent, n);
    kvn_xport_close(x);
    kvn_xport_close(y);
}

/* bind_host picks the TCP interface UCX may use (NET_DEVICES). */
static void test_bind_host(void **state)
{
    (void)state;
    struct kvn_err ke;
    struct kvn_xport_attr a;
    kvn_xport_attr_init(&a);
    struct kvn_xport *x = NULL;
    a.bind_host = "192.0.2.1"; /* TEST-NET-1: not an address of this host */
    int rc = kvn_xport_open(g_uri, &a, &x, &ke);
    if (strcmp(g_uri, "ucx+sm") == 0) {
        assert_int_equal(rc, 0); /* no TCP: ignored */
        kvn_xport_close(x);
    } else {
        assert_int_equal(rc, -EADDRNOTAVAIL);
        assert_non_null(strstr(ke.msg, "192.0.2.1"));
    }
    /* "any" and an explicit loopback address both work end to end */
    static const char *const hosts[] = {"any", "127.0.0.1"};
    for (int h = 0; h < 2; h++) {
        a.bind_host = hosts[h];
        struct kvn_xport *y;
        assert_int_equal(kvn_xport_open(g_uri, &a, &x, &ke), 0);
        assert_int_equal(kvn_xport_open(g_uri, &a, &y, &ke), 0);
        unsigned char blob[KVN_XPORT_ADDR_MAX];
        size_t bl = sizeof(blob);
        assert_int_equal(kvn_xport_address(y, blob, &bl, &ke), 0);
        struct kvn_xport_peer *p;
        assert_int_equal(kvn_xport_connect(x, blob, bl, &p, &ke), 0);
        uint64_t v = 99;
        assert_int_equal(kvn_xport_notify(p, &v, sizeof(v), 1, &ke), 0);
        int got = 0;
        int64_t end = now_ms() + WAIT_MS;
        while (got < 2 && now_ms() < end) {
            struct kvn_xport_cqe c[4];
            int k = kvn_xport_poll(x, c, 4);
            for (int i = 0; i < k; i++)
                got += c[i].kind == KVN_XPORT_SEND && c[i].status == 0;
            k = kvn_xport_poll(y, c, 4);
            for (int i = 0; i < k; i++)
                got += c[i].kind == KVN_XPORT_RECV && c[i].len == sizeof(v);
        }
        assert_int_equal(got, 2);
        kvn_xport_close(x);
        kvn_xport_close(y);
    }
}

/* Delivery mode (the default): a completed WRITE is at the target without a
 * notification; the setter refuses bad arguments. */
static void test_write_delivery(void **state)
{
    struct fx *f = *state;
    struct kvn_err ke;
    assert_int_equal(kvn_xport_ucx_set_write_delivery(NULL, 1, &ke), -EINVAL);
    assert_int_equal(kvn_xport_ucx_set_write_delivery(f->a.x, 2, &ke), -EINVAL);
    assert_int_equal(kvn_xport_ucx_set_write_delivery(f->a.x, -1, &ke), -EINVAL);
    struct kvn_xport *ofi = NULL;
    if (kvn_xport_open("ofi+tcp", NULL, &ofi, NULL) == 0) {
        assert_int_equal(kvn_xport_ucx_set_write_delivery(ofi, 1, &ke), -ENOTSUP);
        kvn_xport_close(ofi);
    }
    assert_int_equal(kvn_xport_ucx_set_write_delivery(f->a.x, 1, &ke), 0);
    static const uint64_t sizes[] = {1, 4097, 65536, 512 * 1024 + 3};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        uint64_t len = sizes[i], ro = 4096 + i * 13;
        fill(f->a.buf, len, (uint32_t)(500 + i));
        memset(f->b.buf, 0, BUF_LEN);
        /* several WRITEs in flight so that flushes batch */
        for (uint64_t k = 0; k < 4; k++)
            post1(&f->a, KVN_XPORT_WRITE, 0, ro + k * (len + 64), len, 40 + k);
        for (uint64_t k = 0; k < 4; k++) {
            take_ok(f, 0, KVN_XPORT_WRITE, 40 + k, len);
            assert_memory_equal(f->b.buf + ro + k * (len + 64), f->a.buf, len);
        }
    }
    /* back to local completion: WRITEs complete, the notification fences */
    assert_int_equal(kvn_xport_ucx_set_write_delivery(f->a.x, 0, &ke), 0);
    fill(f->a.buf, 65536, 61);
    for (uint64_t k = 0; k < 8; k++)
        post1(&f->a, KVN_XPORT_WRITE, 0, k * 65536, 65536, 60 + k);
    for (uint64_t k = 0; k < 8; k++)
        take_ok(f, 0, KVN_XPORT_WRITE, 60 + k, 65536);
    assert_true(notify_and_check(f, 0, 7 * 65536, 65536, 71));
}

/* The upper bound of the eager-short range of an endpoint's AM protocol, as
 * kvn_xport_ucx_peer_info prints it ("am_send: 0..<egr/short>..N.."), or -1. */
static long egr_short_max(struct kvn_xport_peer *p)
{
    char *txt = NULL;
    size_t len = 0;
    FILE *ms = open_memstream(&txt, &len);
    assert_non_null(ms);
    struct kvn_err ke;
    int rc = kvn_xport_ucx_peer_info(p, ms, &ke);
    fclose(ms);
    long v = -1;
    const char *at = txt ? strstr(txt, "<egr/short>..") : NULL;
    if (rc == 0 && at)
        v = strtol(at + strlen("<egr/short>.."), NULL, 10);
    free(txt);
    return v;
}

/* kvn_xport_ucx_peer_info prints UCX's view of the endpoint; over tcp the
 * backend's segment size (64K, see "TCP tuning" in ucx.c) shows in the AM
 * thresholds, unless UCX_TCP_TX_SEG_SIZE is set in the environment, which
 * wins (checked in a child process, so the variable does not leak). */
static void test_peer_info(void **state)
{
    struct fx *f = *state;
    struct kvn_err ke;
    assert_int_equal(kvn_xport_ucx_peer_info(NULL, stdout, &ke), -EINVAL);
    assert_int_equal(kvn_xport_ucx_peer_info(f->a.peer, NULL, &ke), -EINVAL);
    struct kvn_xport *ofi = NULL;
    if (kvn_xport_open("ofi+tcp", NULL, &ofi, NULL) == 0) {
        unsigned char blob[KVN_XPORT_ADDR_MAX];
        size_t bl = sizeof(blob);
        struct kvn_xport_peer *op = NULL;
        assert_int_equal(kvn_xport_address(ofi, blob, &bl, &ke), 0);
        assert_int_equal(kvn_xport_connect(ofi, blob, bl, &op, &ke), 0);
        assert_int_equal(kvn_xport_ucx_peer_info(op, stdout, &ke), -ENOTSUP);
        assert_non_null(strstr(ke.msg, "not a UCX peer"));
        kvn_xport_close(ofi);
    }
    long thr = egr_short_max(f->a.peer);
    assert_true(thr > 0);
    if (strcmp(g_uri, "ucx+tcp") != 0)
        return;
    assert_true(thr > 8192); /* 64K segments, not UCX's 8K default */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setenv("UCX_TCP_TX_SEG_SIZE", "8K", 1);
        struct kvn_xport *x = NULL, *y = NULL;
        unsigned char blob[KVN_XPORT_ADDR_MAX];
        size_t bl = sizeof(blob);
        struct kvn_xport_peer *p = NULL;
        if (kvn_xport_open(g_uri, NULL, &x, &ke) || kvn_xport_open(g_uri, NULL, &y, &ke) ||
            kvn_xport_address(y, blob, &bl, &ke) || kvn_xport_connect(x, blob, bl, &p, &ke))
            _exit(2);
        long t = egr_short_max(p);
        _exit(t > 0 && t <= 8192 ? 0 : 3);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* Polls A alone and checks every WRITE completion of A against B's bytes
 * right when it is polled (a completed WRITE is at the target), then lets B
 * progress; returns once the n WRITEs with cookies cookie0.. completed.
 * lo[i], ro[i], len[i] describe WRITE cookie0 + i. */
static void take_writes_delivered(struct fx *f, uint64_t cookie0, size_t n, const uint64_t *lo,
                                  const uint64_t *ro, const uint64_t *len)
{
    unsigned char seen[256] = {0};
    assert_true(n <= sizeof(seen));
    size_t done = 0;
    int64_t end = now_ms() + WAIT_MS;
    struct kvn_xport_cqe c[16];
    while (done < n) {
        int k = kvn_xport_poll(f->a.x, c, 16);
        assert_true(k >= 0);
        for (int i = 0; i < k; i++) {
            assert_int_equal(c[i].kind, KVN_XPORT_WRITE);
            assert_true(c[i].cookie >= cookie0 && c[i].cookie < cookie0 + n);
            size_t w = (size_t)(c[i].cookie - cookie0);
            assert_int_equal(seen[w], 0); /* exactly once */
            seen[w] = 1;
            expect_ok(&c[i], len[w]);
            assert_memory_equal(f->b.buf + ro[w], f->a.buf + lo[w], len[w]);
            done++;
        }
        if (now_ms() > end)
            fail_msg("%zu of %zu WRITEs completed", done, n);
        k = kvn_xport_poll(f->b.x, c, 16); /* the target progresses (tcp) */
        assert_int_equal(k, 0);
    }
}

/* WRITEs share write-completion flushes (delivery mode): a burst of WRITEs
 * of mixed sizes, more than one flush batch, each checked at the target
 * when its completion is polled; WRITEs posted while a flush is in flight
 * and fewer than a batch complete without further posts (the flush for
 * them is issued from progress); and WRITEs waiting for a flush when the
 * peer is disconnected complete exactly once (done or canceled). */
static void test_write_batches(void **state)
{
    struct fx *f = *state;
    enum { N = 80 };
    uint64_t lo[N], ro[N], len[N];
    static const uint64_t sizes[] = {1, 4096, 65536, 100, 300 * 1024, 8191, 2, 32768};
    fill(f->a.buf, BUF_LEN / 2, 77);
    memset(f->b.buf, 0, BUF_LEN);
    uint64_t off = 0;
    for (size_t i = 0; i < N; i++) {
        len[i] = sizes[i % (sizeof(sizes) / sizeof(sizes[0]))];
        lo[i] = (i * 4099) % (BUF_LEN / 2 - len[i]); /* distinct sources */
        ro[i] = off;
        off += len[i] + 8;
        assert_true(off <= BUF_LEN);
        post1(&f->a, KVN_XPORT_WRITE, lo[i], ro[i], len[i], 1000 + i);
    }
    take_writes_delivered(f, 1000, N, lo, ro, len);
    assert_int_equal(kvn_xport_outstanding(f->a.x), 0);

    /* a trickle: one WRITE, then two more while its flush may be in flight,
     * then only polling */
    for (int round = 0; round < 3; round++) {
        memset(f->b.buf, 0, 3 * 8192);
        for (size_t i = 0; i < 3; i++) {
            len[i] = 4096 + i + (size_t)round;
            lo[i] = 65536 * (i + 1) + (size_t)round;
            ro[i] = 8192 * i;
            post1(&f->a, KVN_XPORT_WRITE, lo[i], ro[i], len[i], 2000 + 10 * (uint64_t)round + i);
        }
        take_writes_delivered(f, 2000 + 10 * (uint64_t)round, 3, lo, ro, len);
    }

    /* WRITEs waiting for a flush when the peer is disconnected */
    for (uint64_t i = 0; i < 12; i++)
        post1(&f->a, KVN_XPORT_WRITE, i * 4096, i * 4096, 4096, 3000 + i);
    assert_int_equal(kvn_xport_outstanding(f->a.x), 12);
    kvn_xport_rmr_free(f->a.rmr);
    f->a.rmr = NULL;
    kvn_xport_disconnect(f->a.peer);
    f->a.peer = NULL;
    for (uint64_t i = 0; i < 12; i++) {
        struct kvn_xport_cqe c = take(f, 0, KVN_XPORT_WRITE, 3000 + i, NULL);
        assert_true(c.status == 0 || c.status == -ECANCELED);
    }
    for (int i = 0; i < 50; i++)
        progress(f);
    for (size_t i = 0; i < f->n_cq; i++)
        assert_true(f->from_b[i]); /* no second completion on A */
    assert_int_equal(kvn_xport_outstanding(f->a.x), 0);

    /* connected again, batching still delivers */
    side_link(&f->a, &f->b);
    memset(f->b.buf, 0, BUF_LEN);
    for (size_t i = 0; i < 20; i++) {
        len[i] = 16384;
        lo[i] = 16384 * i;
        ro[i] = BUF_LEN - 16384 * (i + 1);
        post1(&f->a, KVN_XPORT_WRITE, lo[i], ro[i], len[i], 4000 + i);
    }
    take_writes_delivered(f, 4000, 20, lo, ro, len);
}

/* The child of test_dead_process: a target that serves until killed. */
static void dead_process_child(int wfd, int rfd)
{
    struct kvn_xport *x;
    struct kvn_xport_mr *mr;
    struct kvn_xport_peer *p;
    unsigned char *buf = calloc(1, 1 << 20);
    unsigned char blob[KVN_XPORT_ADDR_MAX], desc[KVN_XPORT_DESC_MAX];
    size_t bl = sizeof(blob), dl = sizeof(desc), pl;
    alarm(60); /* never outlive the test */
    if (!buf || kvn_xport_open(g_uri, NULL, &x, NULL) < 0 ||
        kvn_xport_mr_reg(x, buf, 1 << 20, KVN_XPORT_ACCESS_ALL, &mr, NULL) < 0 ||
        kvn_xport_address(x, blob, &bl, NULL) < 0 || kvn_xport_mr_pack(mr, desc, &dl, NULL) < 0)
        _exit(1);
    if (write(wfd, &bl, sizeof(bl)) != sizeof(bl) || write(wfd, blob, bl) != (ssize_t)bl ||
        write(wfd, &dl, sizeof(dl)) != sizeof(dl) || write(wfd, desc, dl) != (ssize_t)dl)
        _exit(1);
    if (read(rfd, &pl, sizeof(pl)) != sizeof(pl) || pl > sizeof(blob) ||
        read(rfd, blob, pl) != (ssize_t)pl || kvn_xport_connect(x, blob, pl, &p, NULL) < 0)
        _exit(1);
    for (;;) {
        struct kvn_xport_cqe c[8];
        kvn_xport_poll(x, c, 8);
    }
}

/* A peer PROCESS that died (SIGKILL) before ops were posted to it: every op
 * fails, well before a long op_timeout_ms (ucx+sm: the pid check says the
 * process is gone; tcp: the connection is reset), and later posts are
 * refused. */
static void test_dead_process(void **state)
{
    (void)state;
    struct kvn_err ke;
    int c2p[2], p2c[2];
    assert_int_equal(pipe(c2p), 0);
    assert_int_equal(pipe(p2c), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        dead_process_child(c2p[1], p2c[0]);

    struct kvn_xport_attr a;
    kvn_xport_attr_init(&a);
    a.op_timeout_ms = 600000; /* far beyond WAIT_MS: a timeout cannot be the cause */
    struct side me = {0};
    side_open(&me, &a);
    unsigned char blob[KVN_XPORT_ADDR_MAX], desc[KVN_XPORT_DESC_MAX];
    size_t bl, dl;
    assert_int_equal(read(c2p[0], &bl, sizeof(bl)), sizeof(bl));
    assert_true(bl <= sizeof(blob));
    assert_int_equal(read(c2p[0], blob, bl), (ssize_t)bl);
    assert_int_equal(read(c2p[0], &dl, sizeof(dl)), sizeof(dl));
    assert_true(dl <= sizeof(desc));
    assert_int_equal(read(c2p[0], desc, dl), (ssize_t)dl);
    assert_int_equal(kvn_xport_connect(me.x, blob, bl, &me.peer, &ke), 0);
    assert_int_equal(kvn_xport_rmr_unpack(me.peer, desc, dl, &me.rmr, &ke), 0);
    unsigned char mine[KVN_XPORT_ADDR_MAX];
    size_t ml = sizeof(mine);
    assert_int_equal(kvn_xport_address(me.x, mine, &ml, &ke), 0);
    assert_int_equal(write(p2c[1], &ml, sizeof(ml)), sizeof(ml));
    assert_int_equal(write(p2c[1], mine, ml), (ssize_t)ml);

    /* one op that completes proves the path works, then the kill */
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->a = me;
    post1(&f->a, KVN_XPORT_READ, 0, 0, 4096, 1);
    take_ok(f, 0, KVN_XPORT_READ, 1, 4096);
    kill(pid, SIGKILL);
    assert_int_equal(waitpid(pid, NULL, 0), pid);

    /* the batch is refused if the peer is already known failed (tcp may
     * have seen the reset); otherwise every op of it fails */
    struct kvn_xport_sge sg8[8];
    struct kvn_xport_op op8[8];
    for (uint64_t i = 0; i < 8; i++) {
        sg8[i] = (struct kvn_xport_sge){f->a.mr, i * 65536, 65536};
        op8[i] = (struct kvn_xport_op){
            i % 2 ? KVN_XPORT_WRITE : KVN_XPORT_READ, &sg8[i], 1, f->a.rmr, i * 65536, 10 + i};
    }
    int rc = kvn_xport_post(f->a.peer, op8, 8, &ke);
    if (rc == 0) {
        for (uint64_t i = 0; i < 8; i++) {
            struct kvn_xport_cqe c = take(f, 0, op8[i].kind, 10 + i, NULL);
            if (c.status == 0)
                fail_msg("op %llu to a dead process completed successfully",
                         (unsigned long long)(10 + i));
            if (strcmp(g_uri, "ucx+sm") == 0 && i == 0)
                assert_non_null(strstr(c.msg, "gone"));
        }
    } else {
        assert_int_equal(rc, -ENOTCONN);
        assert_true(strcmp(g_uri, "ucx+sm") != 0); /* sm learns it from the pid check */
    }
    struct kvn_xport_sge sge = {f->a.mr, 0, 8};
    struct kvn_xport_op op = {KVN_XPORT_WRITE, &sge, 1, f->a.rmr, 0, 99};
    assert_int_equal(kvn_xport_post(f->a.peer, &op, 1, &ke), -ENOTCONN);
    kvn_xport_rmr_free(f->a.rmr);
    kvn_xport_disconnect(f->a.peer);
    side_close(&f->a);
    free(f);
    close(c2p[0]);
    close(c2p[1]);
    close(p2c[0]);
    close(p2c[1]);
}

static void test_bad_uris(void **state)
{
    (void)state;
    struct kvn_err ke;
    struct kvn_xport *x = (struct kvn_xport *)(uintptr_t)0x1;
    assert_true(kvn_xport_open("ucx+nosuch", NULL, &x, &ke) < 0);
    assert_true(ke.msg[0] != '\0');
    assert_true(kvn_xport_open("ucx+", NULL, &x, &ke) < 0);
    assert_true(kvn_xport_open("ucx+tcp+sm", NULL, &x, &ke) < 0);
    assert_ptr_equal(x, (struct kvn_xport *)(uintptr_t)0x1);
    /* a small max_msg_size is honoured by the backend's buffers */
    struct kvn_xport_attr a;
    kvn_xport_attr_init(&a);
    a.max_msg_size = 16;
    assert_int_equal(kvn_xport_open(g_uri, &a, &x, &ke), 0);
    unsigned char blob[KVN_XPORT_ADDR_MAX];
    size_t bl = 4;
    assert_int_equal(kvn_xport_address(x, blob, &bl, &ke), -ENOSPC);
    assert_true(bl > 4 && bl <= KVN_XPORT_ADDR_MAX);
    assert_int_equal(kvn_xport_address(x, blob, &bl, &ke), 0);
    /* loopback to itself */
    struct kvn_xport_peer *p;
    assert_int_equal(kvn_xport_connect(x, blob, bl, &p, &ke), 0);
    char msg[16] = "to myself";
    assert_int_equal(kvn_xport_notify(p, msg, sizeof(msg), 5, &ke), 0);
    assert_int_equal(kvn_xport_notify(p, msg, 17, 6, &ke), -EMSGSIZE);
    int recv = 0, sent = 0;
    int64_t end = now_ms() + WAIT_MS;
    while ((!recv || !sent) && now_ms() < end) {
        struct kvn_xport_cqe c[4];
        int n = kvn_xport_poll(x, c, 4);
        for (int i = 0; i < n; i++) {
            if (c[i].kind == KVN_XPORT_RECV) {
                assert_int_equal(c[i].len, 16);
                assert_memory_equal(c[i].data, msg, 16);
                assert_ptr_equal(c[i].peer, p);
                recv = 1;
            } else if (c[i].kind == KVN_XPORT_SEND) {
                assert_int_equal(c[i].status, 0);
                sent = 1;
            }
        }
    }
    assert_true(recv && sent);
    kvn_xport_close(x);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        g_uri = argv[1];
    struct kvn_xport *probe;
    struct kvn_err ke;
    int rc = kvn_xport_open(g_uri, NULL, &probe, &ke);
    if (rc == -ENOTSUP || rc == -ENODEV) {
        printf("skipped: %s unavailable: %s\n", g_uri, ke.msg);
        return 77;
    }
    if (rc == 0)
        kvn_xport_close(probe);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_name_and_backend, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_read_sizes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sg_1024, setup, teardown),
        cmocka_unit_test_setup_teardown(test_notify_ordered_after_writes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupted_keys_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disconnect_cancels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wait_fd, setup, teardown),
        cmocka_unit_test_setup_teardown(test_peer_gone, setup_short_timeout, teardown),
        cmocka_unit_test_setup_teardown(test_ucx_mem_alloc, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_delivery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_batches, setup, teardown),
        cmocka_unit_test_setup_teardown(test_peer_info, setup, teardown),
        /* the data path again with local WRITE completion */
        cmocka_unit_test_setup_teardown(test_write_read_sizes, setup_local, teardown),
        cmocka_unit_test_setup_teardown(test_sg_1024, setup_local, teardown),
        cmocka_unit_test_setup_teardown(test_notify_ordered_after_writes, setup_local, teardown),
        cmocka_unit_test_setup_teardown(test_disconnect_cancels, setup_local, teardown),
        cmocka_unit_test_setup_teardown(test_peer_gone, setup_local_short_timeout, teardown),
        cmocka_unit_test(test_big_notifications),
        cmocka_unit_test(test_bind_host),
        cmocka_unit_test(test_dead_process),
        cmocka_unit_test(test_bad_uris),
    };
    return cmocka_run_group_tests_name(g_uri, tests, NULL, NULL);
}
