/*
 * test_xport_mem.c - kvn_xport_mem_alloc/free (transport/xport_mem.c) on
 * every backend that opens here (ofi+tcp, ofi+shm, ucx+tcp, ucx+sm, ucx),
 * and the host pool made in a domain (node/host_pool.c,
 * kvn_host_pool_create_in):
 *   - bad arguments refused with -EINVAL and err filled, nothing changed;
 *   - memory page aligned, zero-filled, writable, registrable (whole and
 *     sub-ranges), -EBUSY while an mr lies in it (bytes intact after);
 *   - a wrong pointer, length or domain, a foreign mapping, a second free:
 *     refused, the foreign mapping still usable;
 *   - a real READ and WRITE between two domains of this process, both
 *     regions from kvn_xport_mem_alloc, bytes checked;
 *   - host pools in a domain: page addresses inside the memory, registered
 *     whole, freed through the domain; the plain mmap path unchanged; a pool
 *     moved into a domain and out again (kvn_host_pool_move) keeps its bytes.
 *
 * Waiting loops are bounded by a wall-clock guard that fails the test;
 * nothing is timed.  Backends that do not open here are skipped with the
 * reason.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "node/host_pool.h"
#include "transport/kvn_xport.h"

#define GUARD_S 30

static const char *const uris[] = {"ofi+tcp", "ofi+shm", "ucx+tcp", "ucx+sm", "ucx"};
#define N_URIS (sizeof(uris) / sizeof(uris[0]))

static uint64_t now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec;
}

static struct kvn_xport *open_or_null(const char *uri)
{
    struct kvn_xport *x = NULL;
    struct kvn_err err;
    if (kvn_xport_open(uri, NULL, &x, &err) < 0) {
        print_message("[  SKIP    ] %s does not open here: %s\n", uri, err.msg);
        return NULL;
    }
    return x;
}

static bool all_zero(const unsigned char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i])
            return false;
    return true;
}

static void test_bad_args(void **state)
{
    (void)state;
    struct kvn_err err;
    void *p = (void *)0x1234;
    kvn_err_clear(&err);
    assert_int_equal(kvn_xport_mem_alloc(NULL, 4096, &p, &err), -EINVAL);
    assert_int_equal(err.code, -EINVAL);
    assert_true(err.msg[0] != '\0');
    assert_ptr_equal(p, (void *)0x1234);
    assert_int_equal(kvn_xport_mem_alloc(NULL, 4096, &p, NULL), -EINVAL); /* err may be NULL */
    assert_int_equal(kvn_xport_mem_free(NULL, p, 4096, &err), -EINVAL);
    assert_int_equal(err.code, -EINVAL);

    struct kvn_xport *x = open_or_null("ofi+tcp");
    if (!x)
        skip();
    assert_int_equal(kvn_xport_mem_alloc(x, 4096, NULL, &err), -EINVAL);
    kvn_err_clear(&err);
    assert_int_equal(kvn_xport_mem_alloc(x, 0, &p, &err), -EINVAL);
    assert_int_equal(err.code, -EINVAL);
    assert_ptr_equal(p, (void *)0x1234);
    assert_int_equal(kvn_xport_mem_alloc(x, SIZE_MAX, &p, &err), -EINVAL);
    assert_int_equal(kvn_xport_mem_alloc(x, (size_t)1 << 62, &p, &err), -EINVAL);
    assert_ptr_equal(p, (void *)0x1234);
    assert_int_equal(kvn_xport_mem_free(x, NULL, 4096, &err), -EINVAL);
    assert_int_equal(kvn_xport_mem_free(x, p, 0, &err), -EINVAL);
    assert_int_equal(kvn_xport_mem_free(x, p, SIZE_MAX, &err), -EINVAL);
    /* a pointer nobody allocated: unaligned, then aligned but unmapped */
    assert_int_equal(kvn_xport_mem_free(x, p, 4096, &err), -EINVAL);
    assert_int_equal(kvn_xport_mem_free(x, (void *)(uintptr_t)0x1000, 4096, &err), -EINVAL);
    kvn_xport_close(x);
}

/* Everything about one backend's allocations except transfers. */
static void check_backend(const char *uri)
{
    struct kvn_xport *x = open_or_null(uri), *y = open_or_null(uri);
    if (!x || !y) {
        kvn_xport_close(x);
        kvn_xport_close(y);
        return;
    }
    print_message("backend %s\n", kvn_xport_name(x));
    struct kvn_err err;
    const size_t sizes[] = {1, 65536 + 123, (4u << 20) + 1};
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        size_t len = sizes[s];
        void *p = NULL;
        assert_int_equal(kvn_xport_mem_alloc(x, len, &p, &err), 0);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 4096, 0);
        assert_true(all_zero(p, len));
        memset(p, 0xa5, len);

        /* registrable whole and in part; -EBUSY while an mr lies in it */
        struct kvn_xport_mr *whole, *part = NULL;
        assert_int_equal(kvn_xport_mr_reg(x, p, len, KVN_XPORT_ACCESS_ALL, &whole, &err), 0);
        if (len > 1)
            assert_int_equal(
                kvn_xport_mr_reg(x, (char *)p + 1, len - 1, KVN_XPORT_ACCESS_LOCAL, &part, &err),
                0);
        kvn_err_clear(&err);
        assert_int_equal(kvn_xport_mem_free(x, p, len, &err), -EBUSY);
        assert_int_equal(err.code, -EBUSY);
        assert_int_equal(kvn_xport_mr_dereg(whole, &err), 0);
        if (part) {
            assert_int_equal(kvn_xport_mem_free(x, p, len, &err), -EBUSY);
            assert_int_equal(kvn_xport_mr_dereg(part, &err), 0);
        }
        assert_int_equal(((unsigned char *)p)[len - 1], 0xa5); /* still ours */

        /* wrong length, pointer, domain: refused, memory intact */
        kvn_err_clear(&err);
        assert_int_equal(kvn_xport_mem_free(x, p, len + 1, &err), -EINVAL);
        assert_int_equal(err.code, -EINVAL);
        if (len > 1)
            assert_int_equal(kvn_xport_mem_free(x, p, len - 1, &err), -EINVAL);
        assert_int_equal(kvn_xport_mem_free(x, (char *)p + 4096, len, &err), -EINVAL);
        assert_int_equal(kvn_xport_mem_free(y, p, len, &err), -EINVAL);
        assert_true(((unsigned char *)p)[0] == 0xa5 && ((unsigned char *)p)[len - 1] == 0xa5);

        assert_int_equal(kvn_xport_mem_free(x, p, len, &err), 0);
        /* a second free: refused (nothing left to unmap) */
        assert_int_equal(kvn_xport_mem_free(x, p, len, &err), -EINVAL);
    }

    /* a foreign mapping is never unmapped */
    size_t flen = 3 * 4096;
    unsigned char *f = mmap(NULL, flen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(f != MAP_FAILED);
    memset(f, 0x3c, flen);
    assert_int_equal(kvn_xport_mem_free(x, f, 4096, &err), -EINVAL);
    assert_int_equal(kvn_xport_mem_free(x, f, 2 * 4096, &err), -EINVAL);
    assert_true(f[0] == 0x3c && f[flen - 1] == 0x3c);
    /* where the record would be is a PROT_NONE guard page: refused, no fault */
    assert_int_equal(mprotect(f + 4096, 4096, PROT_NONE), 0);
    assert_int_equal(kvn_xport_mem_free(x, f, 4096, &err), -EINVAL);
    assert_int_equal(kvn_xport_mem_free(x, f, 1, &err), -EINVAL);
    assert_true(f[0] == 0x3c);
    munmap(f, flen);

    /* several live allocations are independent */
    void *a = NULL, *b = NULL;
    assert_int_equal(kvn_xport_mem_alloc(x, 8192, &a, &err), 0);
    assert_int_equal(kvn_xport_mem_alloc(x, 8192, &b, &err), 0);
    assert_ptr_not_equal(a, b);
    assert_int_equal(kvn_xport_mem_free(x, a, 8192, &err), 0);
    memset(b, 1, 8192);
    assert_int_equal(kvn_xport_mem_free(x, b, 8192, &err), 0);
    kvn_xport_close(x);
    kvn_xport_close(y);
}

static void test_backends(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_URIS; i++)
        check_backend(uris[i]);
}

/* ------------------------------------------------------------------ */
/* transfers between two domains, both regions from kvn_xport_mem_alloc */

static int wait_one(struct kvn_xport *a, struct kvn_xport *b, struct kvn_xport_cqe *c)
{
    uint64_t end = now_s() + GUARD_S;
    while (now_s() < end) {
        int n = kvn_xport_poll(a, c, 1);
        if (n != 0)
            return n;
        struct kvn_xport_cqe tmp;
        (void)kvn_xport_poll(b, &tmp, 1); /* the target progresses too */
    }
    fail_msg("no completion within %d s", GUARD_S);
    return -1;
}

static void check_transfer(const char *uri)
{
    struct kvn_xport *a = open_or_null(uri), *b = open_or_null(uri);
    if (!a || !b) {
        kvn_xport_close(a);
        kvn_xport_close(b);
        return;
    }
    struct kvn_err err;
    uint8_t blob[KVN_XPORT_ADDR_MAX], desc[KVN_XPORT_DESC_MAX];
    size_t bl = sizeof(blob), dl = sizeof(desc);
    struct kvn_xport_peer *ab, *ba;
    assert_int_equal(kvn_xport_address(b, blob, &bl, &err), 0);
    assert_int_equal(kvn_xport_connect(a, blob, bl, &ab, &err), 0);
    bl = sizeof(blob);
    assert_int_equal(kvn_xport_address(a, blob, &bl, &err), 0);
    assert_int_equal(kvn_xport_connect(b, blob, bl, &ba, &err), 0);

    const size_t len = (1u << 20) + 4096;
    unsigned char *la, *lb;
    assert_int_equal(kvn_xport_mem_alloc(a, len, (void **)&la, &err), 0);
    assert_int_equal(kvn_xport_mem_alloc(b, len, (void **)&lb, &err), 0);
    for (size_t i = 0; i < len; i++)
        lb[i] = (unsigned char)(i * 7 + 3);
    struct kvn_xport_mr *ma, *mb;
    struct kvn_xport_rmr *rb;
    assert_int_equal(kvn_xport_mr_reg(a, la, len, KVN_XPORT_ACCESS_ALL, &ma, &err), 0);
    assert_int_equal(kvn_xport_mr_reg(b, lb, len, KVN_XPORT_ACCESS_ALL, &mb, &err), 0);
    assert_int_equal(kvn_xport_mr_pack(mb, desc, &dl, &err), 0);
    assert_int_equal(kvn_xport_rmr_unpack(ab, desc, dl, &rb, &err), 0);

    /* READ b's bytes [4096, len) into a at offset 0 */
    struct kvn_xport_sge sg = {.mr = ma, .offset = 0, .len = len - 4096};
    struct kvn_xport_op op = {.kind = KVN_XPORT_READ,
                              .local = &sg,
                              .n_local = 1,
                              .remote = rb,
                              .remote_offset = 4096,
                              .cookie = 11};
    assert_int_equal(kvn_xport_post(ab, &op, 1, &err), 0);
    struct kvn_xport_cqe c;
    assert_int_equal(wait_one(a, b, &c), 1);
    assert_int_equal(c.status, 0);
    assert_int_equal(c.cookie, 11);
    for (size_t i = 0; i < len - 4096; i++)
        if (la[i] != (unsigned char)((i + 4096) * 7 + 3))
            fail_msg("%s: READ byte %zu differs", uri, i);

    /* WRITE a's first 64 KiB, changed, to b at offset 0 */
    for (size_t i = 0; i < 65536; i++)
        la[i] = (unsigned char)~la[i];
    sg.len = 65536;
    op.kind = KVN_XPORT_WRITE;
    op.remote_offset = 0;
    op.cookie = 12;
    assert_int_equal(kvn_xport_post(ab, &op, 1, &err), 0);
    assert_int_equal(wait_one(a, b, &c), 1);
    assert_int_equal(c.status, 0);
    assert_int_equal(c.cookie, 12);
    assert_memory_equal(lb, la, 65536);

    kvn_xport_rmr_free(rb);
    assert_int_equal(kvn_xport_mr_dereg(ma, &err), 0);
    assert_int_equal(kvn_xport_mr_dereg(mb, &err), 0);
    assert_int_equal(kvn_xport_mem_free(a, la, len, &err), 0);
    assert_int_equal(kvn_xport_mem_free(b, lb, len, &err), 0);
    kvn_xport_close(a);
    kvn_xport_close(b);
}

static void test_transfer(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_URIS; i++) {
        print_message("transfer over %s\n", uris[i]);
        check_transfer(uris[i]);
    }
}

/* ------------------------------------------------------------------ */
/* host pools made in a domain                                          */

static void test_host_pool_in_domain(void **state)
{
    (void)state;
    struct kvn_err err;
    for (size_t i = 0; i < N_URIS; i++) {
        struct kvn_xport *x = open_or_null(uris[i]);
        if (!x)
            continue;
        for (int huge = 0; huge < 2; huge++) {
            struct kvn_host_pool *pool = NULL;
            uint64_t pb = 65536;
            assert_int_equal(kvn_host_pool_create_in(x, &pool, 10 * pb + 100, pb, huge, -1, &err),
                             0);
            assert_int_equal(pool->n_pages, 10);
            assert_int_equal(kvn_host_pool_bytes(pool), 10 * pb);
            bool from_domain = kvn_xport_backend(x) == KVN_XPORT_BACKEND_UCX || huge;
            assert_ptr_equal(pool->x, from_domain ? x : NULL);
            print_message("%s huge=%d: %s\n", uris[i], huge, pool->note);
            unsigned char *p9 = kvn_host_pool_page(pool, 9);
            assert_ptr_equal(p9, pool->base + 9 * pb);
            assert_null(kvn_host_pool_page(pool, 10));
            assert_true(all_zero(pool->base, (size_t)(10 * pb)));
            memset(p9, 0x77, pb);
            struct kvn_xport_mr *mr;
            assert_int_equal(kvn_xport_mr_reg(x, pool->base, (size_t)kvn_host_pool_bytes(pool),
                                              KVN_XPORT_ACCESS_ALL, &mr, &err),
                             0);
            assert_int_equal(kvn_xport_mr_dereg(mr, &err), 0);
            if (from_domain) /* the memory is the domain's allocation, exactly */
                assert_int_equal(kvn_xport_mem_free(x, pool->base, 10 * pb + 1, &err), -EINVAL);
            kvn_host_pool_destroy(pool);
        }
        /* NUMA binding of domain memory (node 0 exists on every Linux with NUMA sysfs) */
        if (access("/sys/devices/system/node/node0", F_OK) == 0) {
            struct kvn_host_pool *pool = NULL;
            assert_int_equal(kvn_host_pool_create_in(x, &pool, 1 << 20, 4096, true, 0, &err), 0);
            print_message("%s numa 0: %s\n", uris[i], pool->note);
            assert_true(pool->numa_node == 0 || strstr(pool->note, "skipped") != NULL);
            kvn_host_pool_destroy(pool);
        }
        kvn_xport_close(x);
    }
}

static void test_host_pool_in_domain_errors(void **state)
{
    (void)state;
    struct kvn_err err;
    struct kvn_xport *x = open_or_null("ucx+sm");
    if (!x)
        x = open_or_null("ofi+tcp");
    if (!x)
        skip();
    struct kvn_host_pool *pool = (struct kvn_host_pool *)0x42;
    kvn_err_clear(&err);
    assert_int_equal(kvn_host_pool_create_in(x, NULL, 1 << 20, 4096, true, -1, &err), -EINVAL);
    assert_int_equal(err.code, -EINVAL);
    assert_int_equal(kvn_host_pool_create_in(x, &pool, 1 << 20, 0, true, -1, &err), -EINVAL);
    assert_int_equal(kvn_host_pool_create_in(x, &pool, 4095, 4096, true, -1, &err), -EINVAL);
    assert_int_equal(kvn_host_pool_create_in(x, &pool, 1ull << 45, 1, true, -1, &err), -EINVAL);
    assert_int_equal(kvn_host_pool_create_in(x, &pool, 1 << 20, 4096, true, -2, &err), -EINVAL);
    assert_int_equal(kvn_host_pool_create_in(x, &pool, 1 << 20, 4096, true, 1023, &err), -EINVAL);
    assert_ptr_equal(pool, (struct kvn_host_pool *)0x42); /* untouched on error */

    /* nothing was allocated in the domain by the refusals: a pool destroyed while its mr is
     * still registered keeps the memory with the domain (UCX: released at close) */
    assert_int_equal(kvn_host_pool_create_in(x, &pool, 1 << 20, 4096, true, -1, &err), 0);
    struct kvn_xport_mr *mr;
    void *base = pool->base;
    size_t bytes = (size_t)kvn_host_pool_bytes(pool);
    assert_int_equal(kvn_xport_mr_reg(x, base, bytes, KVN_XPORT_ACCESS_ALL, &mr, &err), 0);
    kvn_host_pool_destroy(pool); /* mem_free refused with -EBUSY: not unmapped */
    memset(base, 1, bytes);      /* still mapped */
    assert_int_equal(kvn_xport_mr_dereg(mr, &err), 0);
    assert_int_equal(kvn_xport_mem_free(x, base, bytes, &err), 0);
    kvn_xport_close(x);

    /* without a domain: the plain mmap path, as before */
    assert_int_equal(kvn_host_pool_create_in(NULL, &pool, 1 << 20, 4096, false, -1, &err), 0);
    assert_null(pool->x);
    assert_false(pool->huge);
    assert_non_null(strstr(pool->note, "regular pages"));
    kvn_host_pool_destroy(pool);
}

/* a pool made before its domain moves in and out of it, contents kept */
static void test_host_pool_move(void **state)
{
    (void)state;
    struct kvn_err err;
    kvn_err_clear(&err);
    assert_int_equal(kvn_host_pool_move(NULL, NULL, &err), -EINVAL);
    assert_int_equal(err.code, -EINVAL);
    for (size_t i = 0; i < N_URIS; i++) {
        struct kvn_xport *x = open_or_null(uris[i]);
        if (!x)
            continue;
        struct kvn_host_pool *pool = NULL;
        uint64_t pb = 4096;
        assert_int_equal(kvn_host_pool_create(&pool, 33 * pb, pb, true, -1, &err), 0);
        assert_null(pool->x);
        for (uint64_t k = 0; k < 33 * pb; k++)
            pool->base[k] = (uint8_t)(k * 13 + 1);
        assert_int_equal(kvn_host_pool_move(pool, x, &err), 0);
        print_message("%s moved in: %s\n", uris[i], pool->note);
        assert_ptr_equal(pool->x, x);
        assert_int_equal(pool->n_pages, 33);
        for (uint64_t k = 0; k < 33 * pb; k++)
            if (pool->base[k] != (uint8_t)(k * 13 + 1))
                fail_msg("%s: byte %" PRIu64 " lost in the move", uris[i], k);
        assert_int_equal(kvn_host_pool_move(pool, x, &err), 0); /* same domain: nothing */
        assert_ptr_equal(pool->x, x);
        struct kvn_xport_mr *mr;
        assert_int_equal(kvn_xport_mr_reg(x, pool->base, (size_t)kvn_host_pool_bytes(pool),
                                          KVN_XPORT_ACCESS_ALL, &mr, &err),
                         0);
        assert_int_equal(kvn_xport_mr_dereg(mr, &err), 0);
        uint8_t *page7 = kvn_host_pool_page(pool, 7);
        page7[0] = 0xee;
        assert_int_equal(kvn_host_pool_move(pool, NULL, &err), 0); /* out, before close */
        assert_null(pool->x);
        assert_int_equal(((uint8_t *)kvn_host_pool_page(pool, 7))[0], 0xee);
        assert_int_equal(pool->base[33 * pb - 1], (uint8_t)((33 * pb - 1) * 13 + 1));
        kvn_xport_close(x);
        kvn_host_pool_destroy(pool); /* its own mapping: fine after the close */
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_args),
        cmocka_unit_test(test_backends),
        cmocka_unit_test(test_transfer),
        cmocka_unit_test(test_host_pool_in_domain),
        cmocka_unit_test(test_host_pool_in_domain_errors),
        cmocka_unit_test(test_host_pool_move),
    };
    return cmocka_run_group_tests_name("transport/mem", tests, NULL, NULL);
}
