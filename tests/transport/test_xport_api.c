/*
 * test_xport_api.c - single-process tests of the transport API and the ofi
 * backend: URI parsing, open/close, registration and descriptors, strict
 * validation of every argument, loopback WRITE/READ between two domains of
 * this process (ofi+tcp, ofi+shm) with byte checks, notifications,
 * deregistration while busy, disconnect, dead peers, the wait fd.
 *
 * Loops that wait for completions are bounded (a generous wall-clock
 * guard that fails the test), nothing is timed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "transport/kvn_xport.h"
#include "transport/xport_impl.h"

#define GUARD_S 30

static uint64_t now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec;
}

/* ------------------------------------------------------------------ */
/* a pair of domains connected both ways                               */

struct pair {
    struct kvn_xport *a, *b;
    struct kvn_xport_peer *ab; /* a's handle for b */
    struct kvn_xport_peer *ba; /* b's handle for a */
};

static int open_pair(const char *uri, const struct kvn_xport_attr *attr, struct pair *p)
{
    struct kvn_err err;
    memset(p, 0, sizeof(*p));
    int rc = kvn_xport_open(uri, attr, &p->a, &err);
    if (rc < 0) {
        print_message("open %s: %s\n", uri, err.msg);
        return rc;
    }
    rc = kvn_xport_open(uri, attr, &p->b, &err);
    assert_int_equal(rc, 0);
    uint8_t blob[KVN_XPORT_ADDR_MAX];
    size_t len = sizeof(blob);
    assert_int_equal(kvn_xport_address(p->b, blob, &len, &err), 0);
    assert_int_equal(kvn_xport_connect(p->a, blob, len, &p->ab, &err), 0);
    len = sizeof(blob);
    assert_int_equal(kvn_xport_address(p->a, blob, &len, &err), 0);
    assert_int_equal(kvn_xport_connect(p->b, blob, len, &p->ba, &err), 0);
    return 0;
}

static void close_pair(struct pair *p)
{
    kvn_xport_close(p->a);
    kvn_xport_close(p->b);
    memset(p, 0, sizeof(*p));
}

/* Polls a (collecting) and b (progress only, RECVs counted into b_out when
 * given) until `want` cqes were collected from a.  Fails after GUARD_S. */
static int collect(struct kvn_xport *a, struct kvn_xport *b, struct kvn_xport_cqe *out, int want)
{
    int got = 0;
    uint64_t end = now_s() + GUARD_S;
    while (got < want) {
        int n = kvn_xport_poll(a, out + got, want - got);
        assert_true(n >= 0);
        got += n;
        if (b) {
            struct kvn_xport_cqe tmp[16];
            assert_true(kvn_xport_poll(b, tmp, 16) >= 0);
        }
        if (now_s() > end)
            fail_msg("only %d of %d completions", got, want);
    }
    return got;
}

static void *xalloc(size_t n)
{
    void *p = aligned_alloc(4096, (n + 4095) & ~(size_t)4095);
    assert_non_null(p);
    return p;
}

static void fill(uint8_t *b, size_t n, uint32_t seed)
{
    uint32_t s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 1103515245u + 12345u;
        b[i] = (uint8_t)(s >> 16);
    }
}

/* Registers buf on x and unpacks its descriptor on peer (the other side). */
static struct kvn_xport_rmr *share(struct kvn_xport *owner, struct kvn_xport_peer *user, void *buf,
                                   size_t len, unsigned access, struct kvn_xport_mr **mr_out)
{
    struct kvn_err err;
    struct kvn_xport_mr *mr;
    assert_int_equal(kvn_xport_mr_reg(owner, buf, len, access, &mr, &err), 0);
    uint8_t desc[KVN_XPORT_DESC_MAX];
    size_t dl = sizeof(desc);
    assert_int_equal(kvn_xport_mr_pack(mr, desc, &dl, &err), 0);
    struct kvn_xport_rmr *r;
    int rc = kvn_xport_rmr_unpack(user, desc, dl, &r, &err);
    if (rc)
        fail_msg("unpack: %s", err.msg);
    assert_int_equal(kvn_xport_rmr_len(r), len);
    *mr_out = mr;
    return r;
}

/* ------------------------------------------------------------------ */
/* URIs, open/close                                                    */

static void test_uri_parse(void **state)
{
    (void)state;
    struct xport_uri u;
    struct kvn_err err;
    const char *good[] = {"ofi+tcp", "ofi+shm", "ofi+verbs",    "ucx",
                          "ucx+tcp", "ucx+sm",  "verbs+mlx5_0", "auto"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        assert_int_equal(xport_uri_parse(good[i], &u, &err), 0);
    assert_int_equal(xport_uri_parse("verbs+mlx5_0", &u, NULL), 0);
    assert_string_equal(u.family, "verbs");
    assert_string_equal(u.sub, "mlx5_0");
    assert_int_equal(xport_uri_parse("ucx", &u, NULL), 0);
    assert_string_equal(u.family, "ucx");
    assert_string_equal(u.sub, "");
    const char *bad[] = {
        "",
        "ofi",
        "ofi+",
        "ofi+udp",
        "+tcp",
        "ucx+",
        "ucx+ib",
        "verbs",
        "verbs+",
        "auto+tcp",
        "tcp",
        "OFI+tcp",
        "ofi+tcp+x",
        "ofi tcp",
        "verbs+a/b",
        "xyz+tcp",
        "ofi+tcp\n",
        "verbs+aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        kvn_err_clear(&err);
        assert_int_equal(xport_uri_parse(bad[i], &u, &err), -EINVAL);
        assert_int_equal(err.code, -EINVAL);
        assert_true(strlen(err.msg) > 0);
    }
    assert_int_equal(xport_uri_parse(NULL, &u, &err), -EINVAL);
    assert_int_equal(xport_uri_parse("ofi+tcp", NULL, &err), -EINVAL);
}

static void test_open_bad_args(void **state)
{
    (void)state;
    struct kvn_xport *x = (struct kvn_xport *)0x1;
    struct kvn_err err;
    assert_int_equal(kvn_xport_open(NULL, NULL, &x, &err), -EINVAL);
    assert_ptr_equal(x, (struct kvn_xport *)0x1);
    assert_int_equal(kvn_xport_open("ofi+tcp", NULL, NULL, &err), -EINVAL);
    assert_int_equal(kvn_xport_open("nope+tcp", NULL, &x, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "nope"));
    struct kvn_xport_attr a;
    kvn_xport_attr_init(&a);
    assert_int_equal(a.max_outstanding, KVN_XPORT_DEF_OUTSTANDING);
    assert_int_equal(a.max_msg_size, KVN_XPORT_DEF_MSG);
    assert_int_equal(a.op_timeout_ms, KVN_XPORT_DEF_TIMEOUT_MS);
    a.max_outstanding = KVN_XPORT_MAX_OUTSTANDING + 1;
    assert_int_equal(kvn_xport_open("ofi+tcp", &a, &x, &err), -EINVAL);
    kvn_xport_attr_init(&a);
    a.max_msg_size = KVN_XPORT_MAX_MSG + 1;
    assert_int_equal(kvn_xport_open("ofi+tcp", &a, &x, &err), -EINVAL);
    kvn_xport_attr_init(&a);
    a.bind_host = "";
    assert_int_equal(kvn_xport_open("ofi+tcp", &a, &x, &err), -EINVAL);
    kvn_xport_attr_init(&a);
    a.flags = 0x80;
    assert_int_equal(kvn_xport_open("ofi+tcp", &a, &x, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "flags"));
    kvn_xport_attr_init(&a);
    a.op_timeout_ms = 4000u * 1000u;
    assert_int_equal(kvn_xport_open("ofi+tcp", &a, &x, &err), -EINVAL);
    assert_ptr_equal(x, (struct kvn_xport *)0x1);
    /* an address nobody has: refused with a message, no crash */
    kvn_xport_attr_init(&a);
    a.bind_host = "192.0.2.77";
    int rc = kvn_xport_open("ofi+tcp", &a, &x, &err);
    if (rc == 0)
        kvn_xport_close(x);
    else
        assert_true(strlen(err.msg) > 0);
    /* verbs devices do not exist here; whatever happens, it is an error
     * code with a message, or a working domain on a machine with RDMA */
    rc = kvn_xport_open("verbs+nosuchdev0", NULL, &x, &err);
    assert_true(rc < 0);
    assert_true(strlen(err.msg) > 0);

    kvn_xport_close(NULL);
    assert_string_equal(kvn_xport_name(NULL), "");
    assert_int_equal(kvn_xport_backend(NULL), -EINVAL);
    assert_int_equal(kvn_xport_outstanding(NULL), 0);
    assert_int_equal(kvn_xport_wait_fd(NULL), -EINVAL);
    assert_int_equal(kvn_xport_wait(NULL, 0, &err), -EINVAL);
    struct kvn_xport_cqe c;
    assert_int_equal(kvn_xport_poll(NULL, &c, 1), -EINVAL);
}

static void test_open_close_backends(void **state)
{
    (void)state;
    struct kvn_err err;
    const char *uris[] = {"ofi+tcp", "ofi+shm"};
    for (size_t i = 0; i < 2; i++) {
        struct kvn_xport *x = NULL;
        int rc = kvn_xport_open(uris[i], NULL, &x, &err);
        if (rc)
            fail_msg("open %s: %s", uris[i], err.msg);
        assert_string_equal(kvn_xport_name(x), uris[i]);
        assert_int_equal(kvn_xport_backend(x), KVN_XPORT_BACKEND_OFI);
        assert_int_equal(kvn_xport_outstanding(x), 0);
        int fd = kvn_xport_wait_fd(x);
        assert_true(fd >= 0);
        struct kvn_xport_cqe c[4];
        assert_int_equal(kvn_xport_poll(x, c, 4), 0);
        assert_int_equal(kvn_xport_poll(x, c, 0), -EINVAL);
        assert_int_equal(kvn_xport_poll(x, NULL, 4), -EINVAL);
        assert_int_equal(kvn_xport_wait(x, 0, &err), -ETIMEDOUT);
        assert_int_equal(kvn_xport_wait(x, 20, &err), -ETIMEDOUT);
        kvn_xport_close(x);
    }
    /* ucx / ofi+verbs: open or a clean error */
    const char *maybe[] = {"ucx+tcp", "ucx+sm", "ofi+verbs"};
    for (size_t i = 0; i < 3; i++) {
        struct kvn_xport *x = NULL;
        kvn_err_clear(&err);
        int rc = kvn_xport_open(maybe[i], NULL, &x, &err);
        if (rc == 0) {
            assert_string_equal(kvn_xport_name(x), maybe[i]);
            kvn_xport_close(x);
        } else {
            assert_true(rc == -ENOTSUP || rc == -ENODEV || rc < 0);
            assert_int_equal(err.code, rc);
            assert_true(strlen(err.msg) > 0);
        }
    }
    /* auto always finds something here (ofi+tcp at worst) */
    struct kvn_xport *x = NULL;
    assert_int_equal(kvn_xport_open("auto", NULL, &x, &err), 0);
    assert_true(strlen(kvn_xport_name(x)) > 0);
    assert_string_not_equal(kvn_xport_name(x), "auto");
    kvn_xport_close(x);
}

/* Bound to all interfaces, the published address is a usable one and a
 * peer reaches it. */
static void test_bind_any(void **state)
{
    (void)state;
    struct kvn_err err;
    struct kvn_xport_attr at;
    kvn_xport_attr_init(&at);
    at.bind_host = "any";
    struct pair pr;
    assert_int_equal(open_pair("ofi+tcp", &at, &pr), 0);
    uint8_t blob[KVN_XPORT_ADDR_MAX];
    size_t len = sizeof(blob);
    assert_int_equal(kvn_xport_address(pr.a, blob, &len, &err), 0);
    assert_int_equal(len, 24 + 16); /* frame + sockaddr_in */
    static const uint8_t zero[4] = {0};
    assert_memory_not_equal(blob + 24 + 4, zero, 4); /* not 0.0.0.0 */
    assert_int_equal(kvn_xport_notify(pr.ba, "hi", 2, 5, &err), 0);
    int got = 0;
    uint64_t end = now_s() + GUARD_S;
    while (got < 2) {
        struct kvn_xport_cqe c[4];
        int n = kvn_xport_poll(pr.a, c, 4);
        for (int i = 0; i < n; i++)
            if (c[i].kind == KVN_XPORT_RECV && c[i].len == 2 && memcmp(c[i].data, "hi", 2) == 0 &&
                c[i].peer == pr.ab)
                got++;
        n = kvn_xport_poll(pr.b, c, 4);
        for (int i = 0; i < n; i++)
            if (c[i].kind == KVN_XPORT_SEND && c[i].status == 0)
                got++;
        assert_true(now_s() <= end);
    }
    close_pair(&pr);
}

static void test_list_devices(void **state)
{
    (void)state;
    struct kvn_err err;
    struct kvn_xport_devinfo d[8];
    int n = kvn_xport_list_devices(d, 8, &err);
    assert_true(n >= 0);
    for (int i = 0; i < n && i < 8; i++) {
        assert_true(strlen(d[i].name) > 0);
        assert_true(d[i].port >= 1);
    }
    assert_int_equal(kvn_xport_list_devices(NULL, 0, &err), n);
    assert_int_equal(kvn_xport_list_devices(d, -1, &err), -EINVAL);
    assert_int_equal(kvn_xport_list_devices(NULL, 3, &err), -EINVAL);
}

/* ------------------------------------------------------------------ */
/* addresses                                                           */

/* FNV-1a as the wire format specifies (independent of xport.c). */
static uint32_t fnv(const uint8_t *b, size_t n, size_t skip)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ ((i >= skip && i < skip + 4) ? 0 : b[i])) * 16777619u;
    return h;
}

static void reseal(uint8_t *b, size_t n, size_t cks_off)
{
    uint32_t h = fnv(b, n, cks_off);
    for (int i = 0; i < 4; i++)
        b[cks_off + i] = (uint8_t)(h >> (8 * i));
}

static void test_address_connect_validation(void **state)
{
    (void)state;
    struct kvn_err err;
    struct kvn_xport *x;
    assert_int_equal(kvn_xport_open("ofi+tcp", NULL, &x, &err), 0);
    uint8_t blob[KVN_XPORT_ADDR_MAX];
    size_t len = 4;
    assert_int_equal(kvn_xport_address(x, blob, &len, &err), -ENOSPC);
    size_t need = len;
    assert_true(need > 24 && need <= KVN_XPORT_ADDR_MAX);
    len = sizeof(blob);
    assert_int_equal(kvn_xport_address(x, blob, &len, &err), 0);
    assert_int_equal(len, need);
    assert_int_equal(kvn_xport_address(NULL, blob, &len, &err), -EINVAL);
    assert_int_equal(kvn_xport_address(x, blob, NULL, &err), -EINVAL);

    struct kvn_xport_peer *p = NULL;
    assert_int_equal(kvn_xport_connect(NULL, blob, len, &p, &err), -EINVAL);
    assert_int_equal(kvn_xport_connect(x, NULL, len, &p, &err), -EINVAL);
    assert_int_equal(kvn_xport_connect(x, blob, len, NULL, &err), -EINVAL);
    /* every truncation is refused */
    for (size_t l = 0; l < len; l++)
        assert_true(kvn_xport_connect(x, blob, l, &p, &err) < 0);
    assert_int_equal(kvn_xport_connect(x, blob, KVN_XPORT_ADDR_MAX + 1, &p, &err), -EINVAL);
    /* every single-bit flip is refused */
    for (size_t i = 0; i < len; i++) {
        uint8_t c[KVN_XPORT_ADDR_MAX];
        memcpy(c, blob, len);
        c[i] ^= 0x10;
        assert_true(kvn_xport_connect(x, c, len, &p, &err) < 0);
    }
    assert_null(p);
    uint8_t c[KVN_XPORT_ADDR_MAX];
    memcpy(c, blob, len);
    c[0] ^= 1;
    assert_int_equal(kvn_xport_connect(x, c, len, &p, &err), -EPROTO);
    assert_non_null(strstr(err.msg, "magic"));
    memcpy(c, blob, len);
    c[4] = 9; /* version */
    reseal(c, len, 20);
    assert_int_equal(kvn_xport_connect(x, c, len, &p, &err), -EPROTO);
    memcpy(c, blob, len);
    c[6] = KVN_XPORT_BACKEND_UCX; /* another backend, valid checksum */
    reseal(c, len, 20);
    assert_int_equal(kvn_xport_connect(x, c, len, &p, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "backend"));
    memcpy(c, blob, len);
    memset(c + 8, 0, 8); /* zero domain id */
    reseal(c, len, 20);
    assert_int_equal(kvn_xport_connect(x, c, len, &p, &err), -EPROTO);
    /* a malformed raw address (port 0) with a valid frame */
    memcpy(c, blob, len);
    c[24 + 2] = 0;
    c[24 + 3] = 0;
    reseal(c, len, 20);
    assert_int_equal(kvn_xport_connect(x, c, len, &p, &err), -EINVAL);
    assert_null(p);
    /* and the good blob connects (loopback to itself) */
    assert_int_equal(kvn_xport_connect(x, blob, len, &p, &err), 0);
    assert_non_null(p);
    assert_int_equal(kvn_xport_peer_outstanding(p), 0);
    assert_true(kvn_xport_peer_id(p) != 0);
    assert_int_equal(kvn_xport_peer_id(NULL), 0);
    assert_int_equal(kvn_xport_peer_outstanding(NULL), 0);
    kvn_xport_disconnect(p);
    kvn_xport_disconnect(NULL);
    kvn_xport_close(x);
}

/* ------------------------------------------------------------------ */
/* registration and descriptors                                         */

static void test_mr_and_descriptors(void **state)
{
    (void)state;
    struct kvn_err err;
    struct pair pr;
    assert_int_equal(open_pair("ofi+tcp", NULL, &pr), 0);
    uint8_t *buf = xalloc(65536);
    struct kvn_xport_mr *mr = (struct kvn_xport_mr *)0x1;
    assert_int_equal(kvn_xport_mr_reg(NULL, buf, 10, 7, &mr, &err), -EINVAL);
    assert_int_equal(kvn_xport_mr_reg(pr.a, NULL, 10, 7, &mr, &err), -EINVAL);
    assert_int_equal(kvn_xport_mr_reg(pr.a, buf, 0, 7, &mr, &err), -EINVAL);
    assert_int_equal(kvn_xport_mr_reg(pr.a, buf, 10, 0, &mr, &err), -EINVAL);
    assert_int_equal(kvn_xport_mr_reg(pr.a, buf, 10, 0x80, &mr, &err), -EINVAL);
    assert_int_equal(kvn_xport_mr_reg(pr.a, buf, 10, 7, NULL, &err), -EINVAL);
    assert_int_equal(kvn_xport_mr_reg(pr.a, (void *)(UINTPTR_MAX - 8), 100, 7, &mr, &err), -EINVAL);
    assert_ptr_equal(mr, (struct kvn_xport_mr *)0x1);
    assert_int_equal(kvn_xport_mr_reg(pr.a, buf, 65536, KVN_XPORT_ACCESS_ALL, &mr, &err), 0);
    assert_ptr_equal(kvn_xport_mr_addr(mr), buf);
    assert_int_equal(kvn_xport_mr_len(mr), 65536);
    assert_null(kvn_xport_mr_addr(NULL));
    assert_int_equal(kvn_xport_mr_len(NULL), 0);

    uint8_t desc[KVN_XPORT_DESC_MAX];
    size_t dl = 8;
    assert_int_equal(kvn_xport_mr_pack(mr, desc, &dl, &err), -ENOSPC);
    assert_int_equal(dl, KVN_XPORT_DESC_HDR + 8);
    dl = sizeof(desc);
    assert_int_equal(kvn_xport_mr_pack(NULL, desc, &dl, &err), -EINVAL);
    assert_int_equal(kvn_xport_mr_pack(mr, desc, NULL, &err), -EINVAL);
    assert_int_equal(kvn_xport_mr_pack(mr, desc, &dl, &err), 0);
    assert_int_equal(dl, KVN_XPORT_DESC_HDR + 8);
    assert_int_equal(desc[0], 'K');
    assert_int_equal(desc[6], KVN_XPORT_BACKEND_OFI);
    /* tcp;ofi_rxm: mr_mode 0 -> offset mode, base 0 */
    assert_true(desc[7] & 1);

    struct kvn_xport_rmr *r = (struct kvn_xport_rmr *)0x1;
    assert_int_equal(kvn_xport_rmr_unpack(NULL, desc, dl, &r, &err), -EINVAL);
    assert_int_equal(kvn_xport_rmr_unpack(pr.ba, NULL, dl, &r, &err), -EINVAL);
    assert_int_equal(kvn_xport_rmr_unpack(pr.ba, desc, dl, NULL, &err), -EINVAL);
    for (size_t l = 0; l < dl; l++)
        assert_true(kvn_xport_rmr_unpack(pr.ba, desc, l, &r, &err) < 0);
    assert_int_equal(kvn_xport_rmr_unpack(pr.ba, desc, 10, &r, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "truncated"));
    for (size_t i = 0; i < dl; i++) {
        uint8_t c[KVN_XPORT_DESC_MAX];
        memcpy(c, desc, dl);
        c[i] ^= 0x01;
        assert_true(kvn_xport_rmr_unpack(pr.ba, c, dl, &r, &err) < 0);
    }
    uint8_t c[KVN_XPORT_DESC_MAX];
    memcpy(c, desc, dl);
    c[1] ^= 0xff;
    assert_int_equal(kvn_xport_rmr_unpack(pr.ba, c, dl, &r, &err), -EPROTO);
    memcpy(c, desc, dl);
    c[4] = 2; /* version 2 */
    reseal(c, dl, 28);
    assert_int_equal(kvn_xport_rmr_unpack(pr.ba, c, dl, &r, &err), -EPROTO);
    assert_non_null(strstr(err.msg, "version"));
    memcpy(c, desc, dl);
    c[6] = KVN_XPORT_BACKEND_VERBS;
    reseal(c, dl, 28);
    assert_int_equal(kvn_xport_rmr_unpack(pr.ba, c, dl, &r, &err), -EINVAL);
    memcpy(c, desc, dl);
    memset(c + 16, 0, 8); /* length 0 */
    reseal(c, dl, 28);
    assert_int_equal(kvn_xport_rmr_unpack(pr.ba, c, dl, &r, &err), -EINVAL);
    memcpy(c, desc, dl);
    memset(c + 16, 0xff, 8); /* absurd length */
    reseal(c, dl, 28);
    assert_int_equal(kvn_xport_rmr_unpack(pr.ba, c, dl, &r, &err), -EINVAL);
    memcpy(c, desc, dl);
    c[8] = 0x40; /* base in offset mode */
    reseal(c, dl, 28);
    assert_int_equal(kvn_xport_rmr_unpack(pr.ba, c, dl, &r, &err), -EPROTO);
    memcpy(c, desc, dl);
    c[7] = 1; /* no remote rights */
    reseal(c, dl, 28);
    assert_int_equal(kvn_xport_rmr_unpack(pr.ba, c, dl, &r, &err), -EINVAL);
    memcpy(c, desc, dl);
    c[7] |= 0x80; /* unknown flag */
    reseal(c, dl, 28);
    assert_int_equal(kvn_xport_rmr_unpack(pr.ba, c, dl, &r, &err), -EPROTO);
    memcpy(c, desc, dl);
    c[24] = 9; /* key length disagrees with the size */
    reseal(c, dl, 28);
    assert_int_equal(kvn_xport_rmr_unpack(pr.ba, c, dl, &r, &err), -EINVAL);
    /* a descriptor of a (alleged) third domain */
    memcpy(c, desc, dl);
    c[33] ^= 0x5a;
    reseal(c, dl, 28);
    assert_int_equal(kvn_xport_rmr_unpack(pr.ba, c, dl, &r, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "belongs"));
    /* a's own descriptor unpacked for the peer pointing to b: wrong owner */
    assert_int_equal(kvn_xport_rmr_unpack(pr.ab, desc, dl, &r, &err), -EINVAL);
    assert_ptr_equal(r, (struct kvn_xport_rmr *)0x1);

    assert_int_equal(kvn_xport_rmr_unpack(pr.ba, desc, dl, &r, &err), 0);
    assert_int_equal(kvn_xport_rmr_len(r), 65536);
    assert_int_equal(kvn_xport_rmr_len(NULL), 0);
    kvn_xport_rmr_free(r);
    kvn_xport_rmr_free(NULL);
    assert_int_equal(kvn_xport_mr_dereg(NULL, &err), -EINVAL);
    assert_int_equal(kvn_xport_mr_dereg(mr, &err), 0);
    /* shm uses virtual addresses */
    struct kvn_xport *s;
    assert_int_equal(kvn_xport_open("ofi+shm", NULL, &s, &err), 0);
    assert_int_equal(kvn_xport_mr_reg(s, buf, 4096, KVN_XPORT_ACCESS_ALL, &mr, &err), 0);
    dl = sizeof(desc);
    assert_int_equal(kvn_xport_mr_pack(mr, desc, &dl, &err), 0);
    assert_false(desc[7] & 1);
    uint64_t base = 0;
    for (int i = 7; i >= 0; i--)
        base = (base << 8) | desc[8 + i];
    assert_int_equal(base, (uint64_t)(uintptr_t)buf);
    /* a shm descriptor is not usable on a tcp domain (addressing mode and
     * owner differ) */
    kvn_err_clear(&err);
    assert_true(kvn_xport_rmr_unpack(pr.ba, desc, dl, &r, &err) < 0);
    assert_true(strlen(err.msg) > 0);
    kvn_xport_close(s); /* releases mr too */
    close_pair(&pr);
    free(buf);
}

/* ------------------------------------------------------------------ */
/* post validation                                                     */

static void test_post_validation(void **state)
{
    (void)state;
    struct kvn_err err;
    struct pair pr;
    struct kvn_xport_attr at;
    kvn_xport_attr_init(&at);
    at.max_outstanding = 8;
    assert_int_equal(open_pair("ofi+tcp", &at, &pr), 0);
    uint8_t *la = xalloc(8192), *rb = xalloc(8192);
    struct kvn_xport_mr *lmr, *rmr_b, *ro_mr, *nolocal;
    assert_int_equal(kvn_xport_mr_reg(pr.a, la, 8192, KVN_XPORT_ACCESS_LOCAL, &lmr, &err), 0);
    assert_int_equal(kvn_xport_mr_reg(pr.a, la, 4096, KVN_XPORT_ACCESS_REMOTE_READ, &nolocal, &err),
                     0);
    struct kvn_xport_rmr *r = share(pr.b, pr.ab, rb, 8192, KVN_XPORT_ACCESS_ALL, &rmr_b);
    struct kvn_xport_rmr *ro = share(pr.b, pr.ab, rb, 4096, KVN_XPORT_ACCESS_REMOTE_READ, &ro_mr);
    struct kvn_xport_sge sge = {.mr = lmr, .offset = 0, .len = 4096};
    struct kvn_xport_op good = {.kind = KVN_XPORT_WRITE,
                                .local = &sge,
                                .n_local = 1,
                                .remote = r,
                                .remote_offset = 0,
                                .cookie = 1};
    struct kvn_xport_op ops[2];

#define EXPECT(rc_, stmt)                                                                          \
    do {                                                                                           \
        struct kvn_xport_sge s2[2] = {sge, sge};                                                   \
        ops[0] = good;                                                                             \
        ops[1] = good;                                                                             \
        ops[1].local = &s2[1];                                                                     \
        ops[1].cookie = 2;                                                                         \
        struct kvn_xport_op *o = &ops[1];                                                          \
        struct kvn_xport_sge *s = &s2[1];                                                          \
        (void)o;                                                                                   \
        (void)s;                                                                                   \
        stmt;                                                                                      \
        kvn_err_clear(&err);                                                                       \
        assert_int_equal(kvn_xport_post(pr.ab, ops, 2, &err), rc_);                                \
        assert_int_equal(err.code, rc_);                                                           \
        assert_true(strlen(err.msg) > 0);                                                          \
        assert_int_equal(kvn_xport_outstanding(pr.a), 0);                                          \
        assert_int_equal(kvn_xport_peer_outstanding(pr.ab), 0);                                    \
    } while (0)

    EXPECT(-EINVAL, o->kind = KVN_XPORT_SEND);
    EXPECT(-EINVAL, o->kind = (enum kvn_xport_op_kind)77);
    EXPECT(-EINVAL, o->local = NULL);
    EXPECT(-EINVAL, o->n_local = 0);
    EXPECT(-EINVAL, o->n_local = KVN_XPORT_MAX_SGE + 1);
    EXPECT(-EINVAL, o->remote = NULL);
    EXPECT(-EINVAL, s->mr = NULL);
    EXPECT(-EINVAL, s->mr = rmr_b); /* mr of another domain */
    EXPECT(-EINVAL, s->len = 0);
    EXPECT(-ERANGE, s->offset = 8192);
    EXPECT(-ERANGE, s->offset = 4097);
    EXPECT(-ERANGE, s->len = 8193);
    EXPECT(-ERANGE, (s->offset = UINT64_MAX - 10, s->len = 20));
    EXPECT(-ERANGE, o->remote_offset = 4097);
    EXPECT(-ERANGE, o->remote_offset = 8192);
    EXPECT(-ERANGE, o->remote_offset = UINT64_MAX - 100);
    EXPECT(-EACCES, s->mr = nolocal);
    EXPECT(-EACCES, o->remote = ro); /* WRITE to a read-only region */
    EXPECT(-ERANGE, (o->kind = KVN_XPORT_READ, o->remote = ro, o->remote_offset = 1));
    assert_non_null(strstr(err.msg, "op 1"));
    /* an rmr unpacked for another peer */
    {
        struct kvn_xport_rmr *rb_a;
        struct kvn_xport_mr *mra;
        rb_a = share(pr.a, pr.ba, la, 4096, KVN_XPORT_ACCESS_ALL, &mra);
        EXPECT(-EINVAL, o->remote = rb_a);
        kvn_xport_rmr_free(rb_a);
        assert_int_equal(kvn_xport_mr_dereg(mra, &err), 0);
    }
    assert_int_equal(kvn_xport_post(NULL, ops, 1, &err), -EINVAL);
    assert_int_equal(kvn_xport_post(pr.ab, NULL, 1, &err), -EINVAL);
    assert_int_equal(kvn_xport_post(pr.ab, ops, 0, &err), -EINVAL);
    assert_int_equal(kvn_xport_post(pr.ab, ops, 9, &err), -EINVAL);

    /* outstanding limit: 8 fit, the 9th is refused until completions are
     * polled */
    struct kvn_xport_op eight[8];
    for (int i = 0; i < 8; i++) {
        eight[i] = good;
        eight[i].cookie = 100 + (uint64_t)i;
    }
    assert_int_equal(kvn_xport_post(pr.ab, eight, 8, &err), 0);
    assert_int_equal(kvn_xport_outstanding(pr.a), 8);
    assert_int_equal(kvn_xport_post(pr.ab, &good, 1, &err), -EAGAIN);
    assert_int_equal(kvn_xport_notify(pr.ab, "x", 1, 5, &err), -EAGAIN);
    /* dereg while busy */
    assert_int_equal(kvn_xport_mr_dereg(lmr, &err), -EBUSY);
    struct kvn_xport_cqe c[8];
    collect(pr.a, pr.b, c, 8);
    uint64_t seen = 0;
    for (int i = 0; i < 8; i++) {
        assert_int_equal(c[i].status, 0);
        assert_int_equal(c[i].kind, KVN_XPORT_WRITE);
        assert_int_equal(c[i].len, 4096);
        assert_ptr_equal(c[i].peer, pr.ab);
        assert_true(c[i].cookie >= 100 && c[i].cookie < 108);
        seen |= 1ull << (c[i].cookie - 100);
    }
    assert_int_equal(seen, 0xff);
    assert_int_equal(kvn_xport_outstanding(pr.a), 0);
    assert_int_equal(kvn_xport_mr_dereg(lmr, &err), 0);
    assert_int_equal(kvn_xport_mr_dereg(nolocal, &err), 0);
    kvn_xport_rmr_free(r);
    kvn_xport_rmr_free(ro);
    close_pair(&pr);
    free(la);
    free(rb);
}

/* ------------------------------------------------------------------ */
/* loopback data movement                                              */

static void loopback_rw(const char *uri)
{
    struct kvn_err err;
    struct pair pr;
    assert_int_equal(open_pair(uri, NULL, &pr), 0);
    const size_t N = 4u << 20;
    uint8_t *src = xalloc(N), *dst = xalloc(N), *back = xalloc(N);
    fill(src, N, 1);
    memset(dst, 0, N);
    memset(back, 0, N);
    struct kvn_xport_mr *ms, *mb, *md;
    assert_int_equal(kvn_xport_mr_reg(pr.a, src, N, KVN_XPORT_ACCESS_LOCAL, &ms, &err), 0);
    assert_int_equal(kvn_xport_mr_reg(pr.a, back, N, KVN_XPORT_ACCESS_LOCAL, &mb, &err), 0);
    struct kvn_xport_rmr *r = share(pr.b, pr.ab, dst, N, KVN_XPORT_ACCESS_ALL, &md);

    /* 1. one contiguous write of 1 MiB at remote offset 12345 */
    struct kvn_xport_sge s1 = {.mr = ms, .offset = 7, .len = 1u << 20};
    struct kvn_xport_op w = {.kind = KVN_XPORT_WRITE,
                             .local = &s1,
                             .n_local = 1,
                             .remote = r,
                             .remote_offset = 12345,
                             .cookie = 42};
    assert_int_equal(kvn_xport_post(pr.ab, &w, 1, &err), 0);
    struct kvn_xport_cqe c[64];
    collect(pr.a, pr.b, c, 1);
    if (c[0].status)
        print_message("msg: %s\n", c[0].msg);
    assert_int_equal(c[0].status, 0);
    assert_int_equal(c[0].cookie, 42);
    assert_int_equal(c[0].kind, KVN_XPORT_WRITE);
    assert_memory_equal(dst + 12345, src + 7, 1u << 20);
    assert_int_equal(dst[12344], 0);
    assert_int_equal(dst[12345 + (1u << 20)], 0);

    /* 2. a 1024-entry SG write (split into provider-sized parts, one cqe),
     *    odd sizes, gathered into a contiguous remote range */
    struct kvn_xport_sge *sg = calloc(KVN_XPORT_MAX_SGE, sizeof(*sg));
    assert_non_null(sg);
    uint64_t total = 0;
    for (uint32_t i = 0; i < KVN_XPORT_MAX_SGE; i++) {
        sg[i].mr = ms;
        sg[i].offset = (uint64_t)i * 4000 + (i % 3);
        sg[i].len = 1 + (i * 37) % 997;
        total += sg[i].len;
    }
    struct kvn_xport_op wsg = {.kind = KVN_XPORT_WRITE,
                               .local = sg,
                               .n_local = KVN_XPORT_MAX_SGE,
                               .remote = r,
                               .remote_offset = 2u << 20,
                               .cookie = 43};
    assert_int_equal(kvn_xport_post(pr.ab, &wsg, 1, &err), 0);
    assert_int_equal(collect(pr.a, pr.b, c, 1), 1);
    assert_int_equal(c[0].status, 0);
    assert_int_equal(c[0].cookie, 43);
    assert_int_equal(c[0].len, total);
    uint64_t off = 2u << 20;
    for (uint32_t i = 0; i < KVN_XPORT_MAX_SGE; i++) {
        assert_memory_equal(dst + off, src + sg[i].offset, sg[i].len);
        off += sg[i].len;
    }
    /* nothing left over: exactly one completion for the SG op */
    assert_int_equal(kvn_xport_poll(pr.a, c, 64), 0);

    /* 3. READ it all back, scattered into `back` by the same SG list */
    struct kvn_xport_op rsg = wsg;
    rsg.kind = KVN_XPORT_READ;
    rsg.cookie = 44;
    for (uint32_t i = 0; i < KVN_XPORT_MAX_SGE; i++)
        sg[i].mr = mb;
    assert_int_equal(kvn_xport_post(pr.ab, &rsg, 1, &err), 0);
    collect(pr.a, pr.b, c, 1);
    assert_int_equal(c[0].status, 0);
    assert_int_equal(c[0].kind, KVN_XPORT_READ);
    for (uint32_t i = 0; i < KVN_XPORT_MAX_SGE; i++)
        assert_memory_equal(back + sg[i].offset, src + sg[i].offset, sg[i].len);

    /* 4. a batch of 64 small writes, 1 byte .. odd sizes, each its cookie */
    struct kvn_xport_op batch[64];
    struct kvn_xport_sge bs[64];
    for (int i = 0; i < 64; i++) {
        bs[i] = (struct kvn_xport_sge){
            .mr = ms, .offset = (uint64_t)i * 1000, .len = (uint64_t)1 + (uint64_t)i * 13};
        batch[i] = (struct kvn_xport_op){.kind = KVN_XPORT_WRITE,
                                         .local = &bs[i],
                                         .n_local = 1,
                                         .remote = r,
                                         .remote_offset = 3u * (1u << 20) + (uint64_t)i * 1000,
                                         .cookie = 1000 + (uint64_t)i};
    }
    assert_int_equal(kvn_xport_post(pr.ab, batch, 64, &err), 0);
    collect(pr.a, pr.b, c, 64);
    uint64_t mask = 0;
    for (int i = 0; i < 64; i++) {
        assert_int_equal(c[i].status, 0);
        mask |= 1ull << (c[i].cookie - 1000);
    }
    assert_int_equal(mask, UINT64_MAX);
    for (int i = 0; i < 64; i++)
        assert_memory_equal(dst + 3u * (1u << 20) + (size_t)i * 1000, src + (size_t)i * 1000,
                            bs[i].len);

    free(sg);
    kvn_xport_rmr_free(r);
    assert_int_equal(kvn_xport_mr_dereg(ms, &err), 0);
    assert_int_equal(kvn_xport_mr_dereg(mb, &err), 0);
    assert_int_equal(kvn_xport_mr_dereg(md, &err), 0);
    close_pair(&pr);
    free(src);
    free(dst);
    free(back);
}

static void test_loopback_tcp(void **state)
{
    (void)state;
    loopback_rw("ofi+tcp");
}

static void test_loopback_shm(void **state)
{
    (void)state;
    loopback_rw("ofi+shm");
}

/* ------------------------------------------------------------------ */
/* notifications                                                       */

static void notify_roundtrip(const char *uri)
{
    struct kvn_err err;
    struct pair pr;
    struct kvn_xport_attr at;
    kvn_xport_attr_init(&at);
    at.max_msg_size = 256;
    assert_int_equal(open_pair(uri, &at, &pr), 0);
    char big[300];
    memset(big, 'x', sizeof(big));
    assert_int_equal(kvn_xport_notify(pr.ab, big, 257, 1, &err), -EMSGSIZE);
    assert_int_equal(kvn_xport_notify(pr.ab, big, 0, 1, &err), -EINVAL);
    assert_int_equal(kvn_xport_notify(pr.ab, NULL, 3, 1, &err), -EINVAL);
    assert_int_equal(kvn_xport_notify(NULL, big, 3, 1, &err), -EINVAL);
    assert_int_equal(kvn_xport_outstanding(pr.a), 0);

    /* 100 notifications, more than the receive ring holds, in bursts */
    int sends = 0, recvs = 0;
    uint8_t seen[100] = {0};
    uint64_t end = now_s() + GUARD_S;
    int next = 0;
    while (sends < 100 || recvs < 100) {
        while (next < 100 && kvn_xport_outstanding(pr.a) < 16) {
            char m[256];
            int l = snprintf(m, sizeof(m), "note %03d", next);
            memset(m + l, (char)next, (size_t)(next % 200) + 1);
            assert_int_equal(kvn_xport_notify(pr.ab, m, (size_t)l + (size_t)(next % 200) + 1,
                                              (uint64_t)next, &err),
                             0);
            next++;
        }
        struct kvn_xport_cqe c[16];
        int n = kvn_xport_poll(pr.a, c, 16);
        assert_true(n >= 0);
        for (int i = 0; i < n; i++) {
            assert_int_equal(c[i].kind, KVN_XPORT_SEND);
            assert_int_equal(c[i].status, 0);
            sends++;
        }
        n = kvn_xport_poll(pr.b, c, 16);
        assert_true(n >= 0);
        for (int i = 0; i < n; i++) {
            assert_int_equal(c[i].kind, KVN_XPORT_RECV);
            assert_int_equal(c[i].status, 0);
            assert_ptr_equal(c[i].peer, pr.ba);
            assert_int_equal(c[i].peer_id, kvn_xport_peer_id(pr.ba));
            int k;
            assert_int_equal(sscanf(c[i].data, "note %03d", &k), 1);
            assert_true(k >= 0 && k < 100);
            assert_int_equal(c[i].len, 8 + (k % 200) + 1);
            const uint8_t *d = (const uint8_t *)c[i].data + 8;
            for (int j = 0; j < (k % 200) + 1; j++)
                assert_int_equal(d[j], (uint8_t)k);
            assert_int_equal(seen[k], 0);
            seen[k] = 1;
            recvs++;
        }
        if (now_s() > end)
            fail_msg("sends %d recvs %d", sends, recvs);
    }
    /* the RECV's peer_id is a's domain id as b sees it */
    assert_int_equal(kvn_xport_peer_id(pr.ba) != 0, 1);
    close_pair(&pr);
}

static void test_notify_tcp(void **state)
{
    (void)state;
    notify_roundtrip("ofi+tcp");
}

static void test_notify_shm(void **state)
{
    (void)state;
    notify_roundtrip("ofi+shm");
}

/* More notifications in flight than the backend has send buffers: the
 * excess is parked and sent as buffers free up, each completes once. */
static void many_notifies(const char *uri)
{
    struct kvn_err err;
    struct pair pr;
    assert_int_equal(open_pair(uri, NULL, &pr), 0);
    enum { N = 600 };
    for (int i = 0; i < N; i++) {
        uint32_t v = (uint32_t)i;
        assert_int_equal(kvn_xport_notify(pr.ab, &v, sizeof(v), (uint64_t)i, &err), 0);
    }
    assert_int_equal(kvn_xport_outstanding(pr.a), N);
    static uint8_t sent[N], recvd[N];
    memset(sent, 0, sizeof(sent));
    memset(recvd, 0, sizeof(recvd));
    int ns = 0, nr = 0;
    uint64_t end = now_s() + GUARD_S;
    while (ns < N || nr < N) {
        struct kvn_xport_cqe c[32];
        int n = kvn_xport_poll(pr.a, c, 32);
        for (int i = 0; i < n; i++) {
            assert_int_equal(c[i].kind, KVN_XPORT_SEND);
            assert_int_equal(c[i].status, 0);
            assert_true(c[i].cookie < N);
            assert_int_equal(sent[c[i].cookie], 0);
            sent[c[i].cookie] = 1;
            ns++;
        }
        n = kvn_xport_poll(pr.b, c, 32);
        for (int i = 0; i < n; i++) {
            assert_int_equal(c[i].kind, KVN_XPORT_RECV);
            assert_int_equal(c[i].len, 4);
            uint32_t v;
            memcpy(&v, c[i].data, 4);
            assert_true(v < N);
            assert_int_equal(recvd[v], 0);
            recvd[v] = 1;
            nr++;
        }
        if (now_s() > end)
            fail_msg("%s: %d sent, %d received of %d", uri, ns, nr, N);
    }
    assert_int_equal(kvn_xport_outstanding(pr.a), 0);
    close_pair(&pr);
}

static void test_many_notifies_tcp(void **state)
{
    (void)state;
    many_notifies("ofi+tcp");
}

static void test_many_notifies_shm(void **state)
{
    (void)state;
    many_notifies("ofi+shm");
}

/* Connecting twice to one blob gives two independent peers (the provider
 * AV holds the address once): dropping one leaves the other working. */
static void dup_connect(const char *uri)
{
    struct kvn_err err;
    struct pair pr;
    assert_int_equal(open_pair(uri, NULL, &pr), 0);
    uint8_t blob[KVN_XPORT_ADDR_MAX];
    size_t len = sizeof(blob);
    assert_int_equal(kvn_xport_address(pr.b, blob, &len, &err), 0);
    struct kvn_xport_peer *p2;
    assert_int_equal(kvn_xport_connect(pr.a, blob, len, &p2, &err), 0);
    assert_ptr_not_equal(p2, pr.ab);
    assert_int_equal(kvn_xport_peer_id(p2), kvn_xport_peer_id(pr.ab));
    const size_t N = 8192;
    uint8_t *src = xalloc(N), *dst = xalloc(N);
    fill(src, N, 9);
    memset(dst, 0, N);
    struct kvn_xport_mr *ms, *md;
    assert_int_equal(kvn_xport_mr_reg(pr.a, src, N, KVN_XPORT_ACCESS_LOCAL, &ms, &err), 0);
    struct kvn_xport_rmr *r2 = share(pr.b, p2, dst, N, KVN_XPORT_ACCESS_ALL, &md);
    kvn_xport_disconnect(pr.ab); /* the first handle goes away */
    struct kvn_xport_sge s = {.mr = ms, .offset = 0, .len = N};
    struct kvn_xport_op w = {
        .kind = KVN_XPORT_WRITE, .local = &s, .n_local = 1, .remote = r2, .cookie = 77};
    assert_int_equal(kvn_xport_post(p2, &w, 1, &err), 0);
    struct kvn_xport_cqe c[2];
    assert_int_equal(collect(pr.a, pr.b, c, 1), 1);
    if (c[0].status)
        fail_msg("%s: second peer after the first disconnected: %s", uri, c[0].msg);
    assert_ptr_equal(c[0].peer, p2);
    assert_memory_equal(dst, src, N);
    kvn_xport_rmr_free(r2);
    kvn_xport_disconnect(p2);
    assert_int_equal(kvn_xport_mr_dereg(ms, &err), 0);
    assert_int_equal(kvn_xport_mr_dereg(md, &err), 0);
    close_pair(&pr);
    free(src);
    free(dst);
}

static void test_dup_connect_tcp(void **state)
{
    (void)state;
    dup_connect("ofi+tcp");
}

static void test_dup_connect_shm(void **state)
{
    (void)state;
    dup_connect("ofi+shm");
}

/* Closing a domain with ops in flight (the first ones to a peer, so the
 * provider may still be connecting): no completion, nothing leaks, the
 * peer keeps working and a fresh domain reaches it.  tcp only here: on shm
 * the closing side waits for the peer to drain its commands, which a peer
 * in the same (single-threaded) process cannot do; the multi-process
 * conformance suite covers shm (test_close_with_live_objects). */
static void close_live(const char *uri)
{
    struct kvn_err err;
    struct pair pr;
    assert_int_equal(open_pair(uri, NULL, &pr), 0);
    const size_t N = 1u << 20;
    uint8_t *src = xalloc(N), *dst = xalloc(N);
    fill(src, N, 5);
    struct kvn_xport_mr *ms, *md;
    assert_int_equal(kvn_xport_mr_reg(pr.a, src, N, KVN_XPORT_ACCESS_ALL, &ms, &err), 0);
    struct kvn_xport_rmr *r = share(pr.b, pr.ab, dst, N, KVN_XPORT_ACCESS_ALL, &md);
    struct kvn_xport_sge s[8];
    struct kvn_xport_op o[8];
    for (int k = 0; k < 8; k++) {
        s[k] = (struct kvn_xport_sge){ms, (uint64_t)k * (N / 8), N / 8};
        o[k] = (struct kvn_xport_op){k % 2 ? KVN_XPORT_READ : KVN_XPORT_WRITE,
                                     &s[k],
                                     1,
                                     r,
                                     (uint64_t)k * (N / 8),
                                     (uint64_t)k};
    }
    assert_int_equal(kvn_xport_post(pr.ab, o, 8, &err), 0);
    assert_int_equal(kvn_xport_notify(pr.ab, "bye", 3, 9, &err), 0);
    kvn_xport_close(pr.a);
    /* b keeps progressing (it may see the notification, nothing else) */
    struct kvn_xport_cqe c[8];
    for (int i = 0; i < 2000; i++) {
        int n = kvn_xport_poll(pr.b, c, 8);
        assert_true(n >= 0);
        for (int k = 0; k < n; k++)
            assert_int_equal(c[k].kind, KVN_XPORT_RECV);
    }
    /* a fresh domain reaches b */
    assert_int_equal(kvn_xport_open(uri, NULL, &pr.a, &err), 0);
    uint8_t blob[KVN_XPORT_ADDR_MAX];
    size_t len = sizeof(blob);
    assert_int_equal(kvn_xport_address(pr.b, blob, &len, &err), 0);
    assert_int_equal(kvn_xport_connect(pr.a, blob, len, &pr.ab, &err), 0);
    assert_int_equal(kvn_xport_mr_reg(pr.a, src, N, KVN_XPORT_ACCESS_ALL, &ms, &err), 0);
    uint8_t d[KVN_XPORT_DESC_MAX];
    size_t dl = sizeof(d);
    assert_int_equal(kvn_xport_mr_pack(md, d, &dl, &err), 0);
    assert_int_equal(kvn_xport_rmr_unpack(pr.ab, d, dl, &r, &err), 0);
    memset(dst, 0, N);
    struct kvn_xport_sge s1 = {ms, 0, N};
    struct kvn_xport_op w = {KVN_XPORT_WRITE, &s1, 1, r, 0, 77};
    assert_int_equal(kvn_xport_post(pr.ab, &w, 1, &err), 0);
    assert_int_equal(collect(pr.a, pr.b, c, 1), 1);
    if (c[0].status)
        fail_msg("%s after close: %s", uri, c[0].msg);
    assert_memory_equal(dst, src, N);
    close_pair(&pr);
    free(src);
    free(dst);
}

static void test_close_live_tcp(void **state)
{
    (void)state;
    close_live("ofi+tcp");
}

/* RECV from a sender b never connected to: peer NULL, peer_id set. */
static void test_notify_unknown_sender(void **state)
{
    (void)state;
    struct kvn_err err;
    struct kvn_xport *a, *b;
    assert_int_equal(kvn_xport_open("ofi+tcp", NULL, &a, &err), 0);
    assert_int_equal(kvn_xport_open("ofi+tcp", NULL, &b, &err), 0);
    uint8_t blob[KVN_XPORT_ADDR_MAX];
    size_t len = sizeof(blob);
    assert_int_equal(kvn_xport_address(b, blob, &len, &err), 0);
    struct kvn_xport_peer *ab;
    assert_int_equal(kvn_xport_connect(a, blob, len, &ab, &err), 0);
    assert_int_equal(kvn_xport_notify(ab, "hello", 5, 9, &err), 0);
    int got_send = 0, got_recv = 0;
    uint64_t end = now_s() + GUARD_S;
    while (!got_send || !got_recv) {
        struct kvn_xport_cqe c[4];
        int n = kvn_xport_poll(a, c, 4);
        for (int i = 0; i < n; i++) {
            assert_int_equal(c[i].kind, KVN_XPORT_SEND);
            assert_int_equal(c[i].cookie, 9);
            got_send++;
        }
        n = kvn_xport_poll(b, c, 4);
        for (int i = 0; i < n; i++) {
            assert_int_equal(c[i].kind, KVN_XPORT_RECV);
            assert_null(c[i].peer);
            assert_true(c[i].peer_id != 0);
            assert_int_equal(c[i].len, 5);
            assert_memory_equal(c[i].data, "hello", 5);
            got_recv++;
        }
        assert_true(now_s() <= end);
    }
    kvn_xport_close(a);
    kvn_xport_close(b);
}

/* ------------------------------------------------------------------ */
/* disconnect, dead peers, wait fd                                      */

static void test_disconnect_cancels(void **state)
{
    (void)state;
    struct kvn_err err;
    struct pair pr;
    assert_int_equal(open_pair("ofi+tcp", NULL, &pr), 0);
    const size_t N = 1u << 20;
    uint8_t *src = xalloc(N), *dst = xalloc(N);
    struct kvn_xport_mr *ms, *md;
    assert_int_equal(kvn_xport_mr_reg(pr.a, src, N, KVN_XPORT_ACCESS_LOCAL, &ms, &err), 0);
    struct kvn_xport_rmr *r = share(pr.b, pr.ab, dst, N, KVN_XPORT_ACCESS_ALL, &md);
    struct kvn_xport_sge s = {.mr = ms, .offset = 0, .len = N};
    struct kvn_xport_op ops[4];
    for (int i = 0; i < 4; i++)
        ops[i] = (struct kvn_xport_op){.kind = KVN_XPORT_WRITE,
                                       .local = &s,
                                       .n_local = 1,
                                       .remote = r,
                                       .cookie = 7 + (uint64_t)i};
    /* b never progresses: the writes stay outstanding */
    assert_int_equal(kvn_xport_post(pr.ab, ops, 4, &err), 0);
    assert_int_equal(kvn_xport_peer_outstanding(pr.ab), 4);
    kvn_xport_disconnect(pr.ab);
    struct kvn_xport_cqe c[8];
    int n = kvn_xport_poll(pr.a, c, 8);
    /* each op exactly once: completed before the disconnect or canceled */
    assert_int_equal(n, 4);
    int canceled = 0;
    for (int i = 0; i < n; i++) {
        assert_true(c[i].status == 0 || c[i].status == -ECANCELED);
        if (c[i].status == -ECANCELED) {
            canceled++;
            assert_null(c[i].peer);
            assert_true(strlen(c[i].msg) > 0);
        }
    }
    assert_int_equal(kvn_xport_outstanding(pr.a), 0);
    /* the rmr still exists but the peer is gone */
    assert_int_equal(kvn_xport_post(pr.ab, ops, 1, &err), -ENOTCONN);
    assert_int_equal(kvn_xport_notify(pr.ab, "x", 1, 1, &err), -ENOTCONN);
    /* ms stays busy until the provider returns the (zombie) ops; keep
     * progressing both sides until dereg is allowed */
    uint64_t end = now_s() + GUARD_S;
    while (kvn_xport_mr_dereg(ms, &err) == -EBUSY) {
        kvn_xport_poll(pr.a, c, 8);
        kvn_xport_poll(pr.b, c, 8);
        assert_true(now_s() <= end);
    }
    kvn_xport_rmr_free(r);
    close_pair(&pr);
    free(src);
    free(dst);
}

/*
 * A peer that stops answering: closed (its endpoint goes away; tcp only -
 * within one process shm would see the peer's region unmapped under it,
 * which cannot happen across processes) or silent (open but never
 * progressed, like a hung or SIGSTOPped process).  The op to it completes
 * with an error (provider error or -ETIMEDOUT), the peer is marked failed,
 * and the domain keeps working with its other peer.
 */
static void dead_peer(const char *uri, bool close_it)
{
    struct kvn_err err;
    struct kvn_xport_attr at;
    kvn_xport_attr_init(&at);
    at.op_timeout_ms = 1000;
    struct pair pr;
    assert_int_equal(open_pair(uri, &at, &pr), 0);
    struct kvn_xport *c3;
    assert_int_equal(kvn_xport_open(uri, &at, &c3, &err), 0);
    uint8_t blob[KVN_XPORT_ADDR_MAX];
    size_t len = sizeof(blob);
    assert_int_equal(kvn_xport_address(c3, blob, &len, &err), 0);
    struct kvn_xport_peer *ac;
    assert_int_equal(kvn_xport_connect(pr.a, blob, len, &ac, &err), 0);

    const size_t N = 1u << 20;
    uint8_t *src = xalloc(N), *dst = xalloc(N), *dst3 = xalloc(N);
    fill(src, N, 3);
    struct kvn_xport_mr *ms, *md, *m3;
    assert_int_equal(kvn_xport_mr_reg(pr.a, src, N, KVN_XPORT_ACCESS_LOCAL, &ms, &err), 0);
    struct kvn_xport_rmr *r = share(pr.b, pr.ab, dst, N, KVN_XPORT_ACCESS_ALL, &md);
    struct kvn_xport_rmr *r3 = share(c3, ac, dst3, N, KVN_XPORT_ACCESS_ALL, &m3);
    if (close_it) {
        kvn_xport_close(c3);
        c3 = NULL;
    }
    struct kvn_xport_sge s = {.mr = ms, .offset = 0, .len = N};
    struct kvn_xport_op w3[4];
    for (int i = 0; i < 4; i++)
        w3[i] = (struct kvn_xport_op){.kind = i % 2 ? KVN_XPORT_READ : KVN_XPORT_WRITE,
                                      .local = &s,
                                      .n_local = 1,
                                      .remote = r3,
                                      .cookie = 3 + (uint64_t)i};
    assert_int_equal(kvn_xport_post(ac, w3, 4, &err), 0);
    struct kvn_xport_cqe c[8];
    assert_int_equal(collect(pr.a, pr.b, c, 4), 4);
    int errors = 0;
    for (int i = 0; i < 4; i++) {
        assert_true(c[i].cookie >= 3 && c[i].cookie < 7);
        if (c[i].status < 0) {
            errors++;
            assert_true(strlen(c[i].msg) > 0);
        }
    }
    assert_true(errors >= 1);
    print_message("%s %s peer: %d/4 errors, %s (%s)\n", uri, close_it ? "closed" : "silent", errors,
                  kvn_err_name(c[0].status), c[0].msg);
    assert_int_equal(kvn_xport_peer_outstanding(ac), 0);
    /* the failed peer refuses new work; the healthy one keeps working */
    assert_int_equal(kvn_xport_post(ac, w3, 1, &err), -ENOTCONN);
    assert_int_equal(kvn_xport_notify(ac, "x", 1, 1, &err), -ENOTCONN);
    struct kvn_xport_op w = {
        .kind = KVN_XPORT_WRITE, .local = &s, .n_local = 1, .remote = r, .cookie = 40};
    assert_int_equal(kvn_xport_post(pr.ab, &w, 1, &err), 0);
    assert_int_equal(collect(pr.a, pr.b, c, 1), 1);
    assert_int_equal(c[0].cookie, 40);
    if (c[0].status)
        fail_msg("healthy peer after a dead one: %s", c[0].msg);
    assert_memory_equal(dst, src, N);
    assert_int_equal(kvn_xport_notify(pr.ab, "still", 5, 41, &err), 0);
    assert_int_equal(collect(pr.a, pr.b, c, 1), 1);
    assert_int_equal(c[0].cookie, 41);
    assert_int_equal(c[0].status, 0);

    kvn_xport_rmr_free(r3);
    kvn_xport_disconnect(ac);
    if (strcmp(uri, "ofi+shm") == 0) {
        /* shm: disconnect closed the peer's endpoint and reclaimed the
         * ops the provider will never return */
        assert_int_equal(kvn_xport_mr_dereg(ms, &err), 0);
    }
    kvn_xport_rmr_free(r);
    close_pair(&pr);
    kvn_xport_close(c3);
    free(src);
    free(dst);
    free(dst3);
}

static void test_dead_peer_tcp(void **state)
{
    (void)state;
    dead_peer("ofi+tcp", true);
}

static void test_silent_peer_tcp(void **state)
{
    (void)state;
    dead_peer("ofi+tcp", false);
}

static void test_silent_peer_shm(void **state)
{
    (void)state;
    dead_peer("ofi+shm", false);
}

static void wait_fd_loop(const char *uri, unsigned flags)
{
    struct kvn_err err;
    struct pair pr;
    struct kvn_xport_attr at;
    kvn_xport_attr_init(&at);
    at.flags = flags;
    assert_int_equal(open_pair(uri, &at, &pr), 0);
    int fda = kvn_xport_wait_fd(pr.a), fdb = kvn_xport_wait_fd(pr.b);
    assert_true(fda >= 0 && fdb >= 0);
    assert_int_equal(kvn_xport_wait_fd(pr.a), fda);
    assert_int_equal(kvn_xport_notify(pr.ab, "ping", 4, 77, &err), 0);
    /* event loop: sleep on both fds, poll until empty after each wakeup */
    int send = 0, recv = 0;
    uint64_t end = now_s() + GUARD_S;
    while (!send || !recv) {
        struct pollfd pf[2] = {{.fd = fda, .events = POLLIN}, {.fd = fdb, .events = POLLIN}};
        /* the fds must fire: a poll() timeout is a failure (bounded) */
        int k = poll(pf, 2, 10000);
        assert_true(k > 0);
        struct kvn_xport_cqe c[4];
        int n;
        while ((n = kvn_xport_poll(pr.a, c, 4)) > 0)
            for (int i = 0; i < n; i++)
                if (c[i].kind == KVN_XPORT_SEND && c[i].cookie == 77)
                    send++;
        while ((n = kvn_xport_poll(pr.b, c, 4)) > 0)
            for (int i = 0; i < n; i++)
                if (c[i].kind == KVN_XPORT_RECV && c[i].len == 4 &&
                    memcmp(c[i].data, "ping", 4) == 0)
                    recv++;
        assert_true(now_s() <= end);
    }
    /* blocking wait: b answers, a waits for it */
    assert_int_equal(kvn_xport_notify(pr.ba, "pong", 4, 78, &err), 0);
    int got = 0;
    while (got < 2) {
        int rc = kvn_xport_wait(pr.a, 50, &err);
        assert_true(rc == 0 || rc == -ETIMEDOUT);
        struct kvn_xport_cqe c[4];
        int n = kvn_xport_poll(pr.a, c, 4);
        for (int i = 0; i < n; i++)
            if (c[i].kind == KVN_XPORT_RECV && c[i].len == 4)
                got++;
        n = kvn_xport_poll(pr.b, c, 4);
        for (int i = 0; i < n; i++)
            if (c[i].kind == KVN_XPORT_SEND && c[i].cookie == 78)
                got++;
        assert_true(now_s() <= end);
    }
    close_pair(&pr);
}

/*
 * kvn_xport_poll_busy: refuses bad arguments like kvn_xport_poll, returns the
 * same completions (a notification both ways), and after a loop of busy
 * polls one kvn_xport_poll until empty re-arms the wait fds: a process that
 * then sleeps on them is woken by the next notification (poll() timing out
 * is a failure).
 */
static void poll_busy_then_sleep(const char *uri)
{
    struct kvn_err err;
    struct pair pr;
    if (open_pair(uri, NULL, &pr) < 0) {
        print_message("%s not available here: case not run\n", uri);
        return;
    }
    struct kvn_xport_cqe c[8];
    assert_int_equal(kvn_xport_poll_busy(NULL, c, 8), -EINVAL);
    assert_int_equal(kvn_xport_poll_busy(pr.a, NULL, 8), -EINVAL);
    assert_int_equal(kvn_xport_poll_busy(pr.a, c, 0), -EINVAL);
    int fda = kvn_xport_wait_fd(pr.a), fdb = kvn_xport_wait_fd(pr.b);
    assert_true(fda >= 0 && fdb >= 0);
    assert_int_equal(kvn_xport_notify(pr.ab, "ping", 4, 91, &err), 0);
    int send = 0, recv = 0;
    uint64_t end = now_s() + GUARD_S;
    while (!send || !recv) {
        int n = kvn_xport_poll_busy(pr.a, c, 8);
        assert_true(n >= 0);
        for (int i = 0; i < n; i++)
            send += c[i].kind == KVN_XPORT_SEND && c[i].cookie == 91 && c[i].status == 0;
        n = kvn_xport_poll_busy(pr.b, c, 8);
        assert_true(n >= 0);
        for (int i = 0; i < n; i++)
            recv += c[i].kind == KVN_XPORT_RECV && c[i].len == 4 && !memcmp(c[i].data, "ping", 4);
        assert_true(now_s() <= end);
    }
    assert_int_equal(send, 1);
    assert_int_equal(recv, 1);
    /* before sleeping: poll until empty (re-arms) */
    while (kvn_xport_poll(pr.a, c, 8) > 0)
        ;
    while (kvn_xport_poll(pr.b, c, 8) > 0)
        ;
    assert_int_equal(kvn_xport_notify(pr.ba, "pong", 4, 92, &err), 0);
    int got = 0;
    while (got < 2) {
        struct pollfd pf[2] = {{.fd = fda, .events = POLLIN}, {.fd = fdb, .events = POLLIN}};
        assert_true(poll(pf, 2, 10000) > 0);
        int n;
        while ((n = kvn_xport_poll(pr.a, c, 8)) > 0)
            for (int i = 0; i < n; i++)
                got += c[i].kind == KVN_XPORT_RECV && c[i].len == 4 &&
                       !memcmp(c[i].data, "pong", 4);
        while ((n = kvn_xport_poll(pr.b, c, 8)) > 0)
            for (int i = 0; i < n; i++)
                got += c[i].kind == KVN_XPORT_SEND && c[i].cookie == 92 && c[i].status == 0;
        assert_true(now_s() <= end);
    }
    assert_int_equal(got, 2);
    close_pair(&pr);
}

static void test_poll_busy(void **state)
{
    (void)state;
    poll_busy_then_sleep("ofi+tcp");
    poll_busy_then_sleep("ofi+shm");
    poll_busy_then_sleep("ucx+tcp");
}

static void test_wait_fd_tcp(void **state)
{
    (void)state;
    wait_fd_loop("ofi+tcp", 0);
}

/* busy-poll mode: no provider wait object, the wait fd ticks */
static void test_wait_fd_busy_poll_tcp(void **state)
{
    (void)state;
    wait_fd_loop("ofi+tcp", KVN_XPORT_F_BUSY_POLL);
}

static void test_wait_fd_shm(void **state)
{
    (void)state;
    wait_fd_loop("ofi+shm", 0);
}

/*
 * A process killed earlier with our pid leaves shm region files named after
 * that pid (/dev/shm/<pid>:<uid>:<ep>); libfabric 1.17 failed fi_enable with
 * EBUSY on a full-sized one and crashed with SIGBUS on a 0-byte one. The ofi
 * backend names its region uniquely, so stale files of a reused pid are inert.
 */
static void test_shm_stale_region_files(void **state)
{
    (void)state;
    char path[128];
    int planted = 0;
    for (int ep = 0; ep < 64; ep++) {
        snprintf(path, sizeof(path), "/dev/shm/%d:%d:%d", (int)getpid(), (int)getuid(), ep);
        FILE *f = fopen(path, "wx");
        if (!f)
            continue;
        if (ep % 2 == 1 && ftruncate(fileno(f), 8 << 20) != 0) {
            fclose(f);
            unlink(path);
            continue;
        }
        fclose(f);
        planted |= 1;
    }
    assert_true(planted);
    struct kvn_err err;
    struct kvn_xport *a = NULL, *b = NULL;
    int rc_a = kvn_xport_open("ofi+shm", NULL, &a, &err);
    int rc_b = rc_a == 0 ? kvn_xport_open("ofi+shm", NULL, &b, &err) : rc_a;
    for (int ep = 0; ep < 64; ep++) {
        snprintf(path, sizeof(path), "/dev/shm/%d:%d:%d", (int)getpid(), (int)getuid(), ep);
        unlink(path);
    }
    assert_int_equal(rc_a, 0);
    assert_int_equal(rc_b, 0);
    kvn_xport_close(b);
    kvn_xport_close(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uri_parse),
        cmocka_unit_test(test_open_bad_args),
        cmocka_unit_test(test_open_close_backends),
        cmocka_unit_test(test_bind_any),
        cmocka_unit_test(test_poll_busy),
        cmocka_unit_test(test_list_devices),
        cmocka_unit_test(test_address_connect_validation),
        cmocka_unit_test(test_mr_and_descriptors),
        cmocka_unit_test(test_post_validation),
        cmocka_unit_test(test_loopback_tcp),
        cmocka_unit_test(test_loopback_shm),
        cmocka_unit_test(test_notify_tcp),
        cmocka_unit_test(test_notify_shm),
        cmocka_unit_test(test_notify_unknown_sender),
        cmocka_unit_test(test_many_notifies_tcp),
        cmocka_unit_test(test_many_notifies_shm),
        cmocka_unit_test(test_dup_connect_tcp),
        cmocka_unit_test(test_dup_connect_shm),
        cmocka_unit_test(test_close_live_tcp),
        cmocka_unit_test(test_disconnect_cancels),
        cmocka_unit_test(test_dead_peer_tcp),
        cmocka_unit_test(test_silent_peer_tcp),
        cmocka_unit_test(test_silent_peer_shm),
        cmocka_unit_test(test_wait_fd_tcp),
        cmocka_unit_test(test_wait_fd_shm),
        cmocka_unit_test(test_wait_fd_busy_poll_tcp),
        cmocka_unit_test(test_shm_stale_region_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
