/*
 * test_xfer.c - the node's copy engine over real transports: write-through
 * (RDMA READ L1 -> pool) and load back (RDMA WRITE pool -> L1) move the right
 * bytes, held completions come due on the caller's clock, a dead engine turns
 * into failed jobs, and bad arguments are refused without side effects.
 * Transports not available here are skipped with the reason.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>

#include "engine_thread.h"
#include "node/kvn_rpc.h"
#include "node/xfer.h"
#include "th_cmocka.h"
#include "transport/kvn_xport.h"

#define PB     4096u
#define NPAGES 32u
#define NSLOTS 16u

struct done_log {
    uint64_t ack[64];
    bool ok[64];
    int n;
};

static void on_done(void *ctx, uint64_t ack, enum kvn_xfer_dir dir, bool ok, uint64_t bytes)
{
    struct done_log *d = ctx;
    (void)dir;
    (void)bytes;
    if (d->n < 64) {
        d->ack[d->n] = ack;
        d->ok[d->n] = ok;
        d->n++;
    }
}

/* Progresses until n jobs were reported (bounded by iterations, not time). */
static void run_until(struct kvn_xfer *x, uint64_t now, struct done_log *d, int n)
{
    for (long i = 0; i < 20000000 && d->n < n; i++)
        kvn_xfer_progress(x, now, on_done, d);
    assert_int_equal(d->n, n);
}

/* A copy engine over uri with its own host pool; skips the test where uri is not available. */
static struct kvn_xfer *make(const char *uri, struct kvn_host_pool **pool, uint32_t delay)
{
    struct kvn_err e;
    assert_int_equal(kvn_host_pool_create(pool, NPAGES * PB, PB, false, -1, &e), 0);
    struct kvn_xfer_cfg c = {.uri = uri, .pool = *pool, .delay_ms = delay, .op_timeout_ms = 2000};
    struct kvn_xfer *x = NULL;
    int rc = kvn_xfer_create(&c, &x, &e);
    if (rc == -ENOTSUP || rc == -ENODEV || rc == -EPERM || rc == -EACCES) {
        kvn_host_pool_destroy(*pool);
        printf("skip %s: %s\n", uri, e.msg);
        skip(); /* leaves the test */
    }
    if (rc < 0)
        fail_msg("%s: %s", uri, e.msg);
    return x;
}

static void roundtrip(const char *uri)
{
    struct kvn_host_pool *pool;
    struct kvn_xfer *x = make(uri, &pool, 0);
    struct kvn_err e;
    assert_int_equal(kvn_xfer_l1_standin(x, NSLOTS * PB, &e), 0);
    assert_int_equal(kvn_xfer_l1_slots(x), NSLOTS);
    for (uint32_t s = 0; s < NSLOTS; s++)
        kvn_rpc_fill_pattern(kvn_xfer_l1_standin_slot(x, s), PB, 11, s);
    /* runs: slots 0,1,2 -> pages 3,4,5 (one op), slot 7 -> page 20, slot 8 -> page 6 */
    uint32_t slots[] = {0, 1, 2, 7, 8};
    uint32_t pages[] = {3, 4, 5, 20, 6};
    struct done_log d = {0};
    assert_int_equal(kvn_xfer_copy(x, KVN_XFER_TO_L2, 101, slots, pages, 5, &e), 0);
    assert_false(kvn_xfer_idle(x));
    run_until(x, 0, &d, 1);
    assert_int_equal(d.ack[0], 101);
    assert_true(d.ok[0]);
    for (int i = 0; i < 5; i++)
        assert_memory_equal(kvn_host_pool_page(pool, pages[i]),
                            kvn_xfer_l1_standin_slot(x, slots[i]), PB);
    /* overwrite L1, load back into other slots, compare with the original pattern */
    for (uint32_t s = 0; s < NSLOTS; s++)
        memset(kvn_xfer_l1_standin_slot(x, s), 0, PB);
    uint32_t back[] = {10, 11, 12, 13, 15};
    assert_int_equal(kvn_xfer_copy(x, KVN_XFER_TO_L1, 102, back, pages, 5, &e), 0);
    run_until(x, 0, &d, 2);
    assert_true(d.ok[1]);
    uint8_t want[PB];
    for (int i = 0; i < 5; i++) {
        kvn_rpc_fill_pattern(want, PB, 11, slots[i]);
        assert_memory_equal(kvn_xfer_l1_standin_slot(x, back[i]), want, PB);
    }
    struct kvn_xfer_stats st;
    kvn_xfer_get_stats(x, &st);
    assert_int_equal(st.jobs_ok, 2);
    assert_int_equal(st.bytes_to_l2, 5 * PB);
    assert_int_equal(st.bytes_to_l1, 5 * PB);
    assert_int_equal(st.ops_posted, 6); /* 3 runs each way */
    assert_true(kvn_xfer_idle(x));
    kvn_xfer_destroy(x);
    kvn_host_pool_destroy(pool);
}

static void test(void **state)
{
    roundtrip(TH_TRANSPORT(state));
}

static void test_held_completions(void **state)
{
    (void)state;
    struct kvn_host_pool *pool;
    struct kvn_xfer *x = make("ofi+tcp", &pool, 500);
    struct kvn_err e;
    assert_int_equal(kvn_xfer_l1_standin(x, NSLOTS * PB, &e), 0);
    uint32_t s1[] = {0}, p1[] = {0}, s2[] = {1}, p2[] = {1};
    struct done_log d = {0};
    assert_int_equal(kvn_xfer_copy(x, KVN_XFER_TO_L2, 1, s1, p1, 1, &e), 0);
    assert_int_equal(kvn_xfer_copy(x, KVN_XFER_TO_L2, 2, s2, p2, 1, &e), 0);
    /* the clock stands at 1000: both finish, neither is reported before 1500 */
    for (long i = 0; i < 20000000 && kvn_xfer_next_due(x) == UINT64_MAX; i++)
        kvn_xfer_progress(x, 1000, on_done, &d);
    while (kvn_xfer_busy(x))
        kvn_xfer_progress(x, 1000, on_done, &d);
    assert_int_equal(d.n, 0);
    assert_int_equal(kvn_xfer_next_due(x), 1500);
    kvn_xfer_progress(x, 1499, on_done, &d);
    assert_int_equal(d.n, 0);
    assert_false(kvn_xfer_idle(x));
    kvn_xfer_progress(x, 1500, on_done, &d);
    assert_int_equal(d.n, 2);
    assert_int_equal(d.ack[0], 1); /* FIFO */
    assert_int_equal(d.ack[1], 2);
    assert_true(kvn_xfer_idle(x));
    kvn_xfer_destroy(x);
    kvn_host_pool_destroy(pool);
}

static void test_dead_engine(void **state)
{
    (void)state;
    struct kvn_host_pool *pool;
    struct kvn_xfer *x = make("ofi+tcp", &pool, 0);
    struct kvn_err e;
    /* an "engine": its own domain and L1 region */
    struct kvn_xport *eng;
    struct kvn_xport_attr a;
    kvn_xport_attr_init(&a);
    a.op_timeout_ms = 1000;
    assert_int_equal(kvn_xport_open("ofi+tcp", &a, &eng, &e), 0);
    uint8_t *l1 = calloc(NSLOTS, PB);
    assert_non_null(l1);
    for (uint32_t s = 0; s < NSLOTS; s++)
        kvn_rpc_fill_pattern(l1 + s * PB, PB, 3, s);
    struct kvn_xport_mr *mr;
    assert_int_equal(kvn_xport_mr_reg(eng, l1, NSLOTS * PB, KVN_XPORT_ACCESS_ALL, &mr, &e), 0);
    uint8_t desc[KVN_XPORT_DESC_MAX], addr[KVN_XPORT_ADDR_MAX];
    size_t dl = sizeof(desc), al = sizeof(addr);
    assert_int_equal(kvn_xport_mr_pack(mr, desc, &dl, &e), 0);
    assert_int_equal(kvn_xport_address(eng, addr, &al, &e), 0);
    /* refusals first: nothing changes */
    assert_int_equal(kvn_xfer_l1_attach(x, desc, dl, addr, al, PB + 1, NSLOTS, &e), -EINVAL);
    assert_int_equal(kvn_xfer_l1_attach(x, desc, dl, addr, al, PB, NSLOTS + 1, &e), -EINVAL);
    assert_int_equal(kvn_xfer_l1_attach(x, desc, dl, addr, al, PB, 0, &e), -EINVAL);
    uint8_t bad[8] = {0};
    assert_true(kvn_xfer_l1_attach(x, desc, dl, bad, sizeof(bad), PB, NSLOTS, &e) < 0);
    assert_int_equal(kvn_xfer_l1_slots(x), 0);
    assert_int_equal(kvn_xfer_l1_attach(x, desc, dl, addr, al, PB, NSLOTS, &e), 0);
    assert_int_equal(kvn_xfer_l1_slots(x), NSLOTS);
    /* both sides connect, as kvn_xport.h recommends: the engine learns the node's blob */
    uint8_t naddr[KVN_XPORT_ADDR_MAX];
    size_t nal = sizeof(naddr);
    struct kvn_xport_peer *back;
    assert_int_equal(kvn_xfer_address(x, naddr, &nal, &e), 0);
    assert_int_equal(kvn_xport_connect(eng, naddr, nal, &back, &e), 0);
    assert_null(kvn_xfer_l1_standin_slot(x, 0));
    uint32_t slots[] = {2, 3}, pages[] = {7, 8};
    struct done_log d = {0};
    assert_int_equal(kvn_xfer_copy(x, KVN_XFER_TO_L2, 9, slots, pages, 2, &e), 0);
    /* the engine's domain progresses on its own thread, as it would in its own process;
     * the thread closes it as it ends (the engine dies) */
    struct th_engine g;
    assert_int_equal(th_engine_start(&g, eng, true), 0);
    for (int i = 0; i < 400 && d.n < 1; i++) {
        struct pollfd pfd = {.fd = kvn_xfer_wait_fd(x), .events = POLLIN};
        if (!kvn_xfer_busy(x))
            poll(&pfd, 1, 50);
        for (int k = 0; k < 1000 && d.n < 1; k++)
            kvn_xfer_progress(x, 0, on_done, &d);
    }
    assert_int_equal(d.n, 1);
    struct kvn_xfer_stats st0;
    kvn_xfer_get_stats(x, &st0);
    if (!d.ok[0])
        fail_msg("copy from the engine failed: %s", st0.last_error);
    assert_memory_equal(kvn_host_pool_page(pool, 7), l1 + 2 * PB, PB);
    /* the engine goes away: the next job fails (bounded by the op timeout) */
    th_engine_stop(&g);
    assert_int_equal(kvn_xfer_copy(x, KVN_XFER_TO_L2, 10, slots, pages, 2, &e), 0);
    /* bounded: the op timeout (2 s) turns the lost ops into error completions */
    for (int i = 0; i < 400 && d.n < 2; i++) {
        struct pollfd pfd = {.fd = kvn_xfer_wait_fd(x), .events = POLLIN};
        poll(&pfd, 1, 50);
        kvn_xfer_progress(x, 0, on_done, &d);
    }
    assert_int_equal(d.n, 2);
    assert_int_equal(d.ack[1], 10);
    assert_false(d.ok[1]);
    struct kvn_xfer_stats st;
    kvn_xfer_get_stats(x, &st);
    assert_int_equal(st.jobs_failed, 1);
    assert_true(kvn_xfer_idle(x));
    kvn_xfer_destroy(x);
    kvn_host_pool_destroy(pool);
    free(l1);
}

static void test_bad_args(void **state)
{
    (void)state;
    struct kvn_host_pool *pool;
    struct kvn_xfer *x = make("ofi+tcp", &pool, 0);
    struct kvn_err e;
    uint32_t s[] = {0}, p[] = {0};
    assert_int_equal(kvn_xfer_copy(x, KVN_XFER_TO_L2, 1, s, p, 1, &e), -ENOTCONN);
    assert_int_equal(kvn_xfer_l1_standin(x, 100, &e), -EINVAL);
    assert_int_equal(kvn_xfer_l1_standin(x, NSLOTS * PB, &e), 0);
    assert_int_equal(kvn_xfer_l1_standin(x, NSLOTS * PB, &e), -EBUSY);
    uint32_t bs[] = {NSLOTS}, bp[] = {NPAGES};
    assert_int_equal(kvn_xfer_copy(x, KVN_XFER_TO_L2, 1, bs, p, 1, &e), -EINVAL);
    assert_int_equal(kvn_xfer_copy(x, KVN_XFER_TO_L2, 1, s, bp, 1, &e), -EINVAL);
    assert_int_equal(kvn_xfer_copy(x, KVN_XFER_TO_L2, 1, s, p, 0, &e), -EINVAL);
    assert_int_equal(kvn_xfer_copy(x, KVN_XFER_TO_L2, 1, NULL, p, 1, &e), -EINVAL);
    assert_int_equal(kvn_xfer_copy(x, (enum kvn_xfer_dir)7, 1, s, p, 1, &e), -EINVAL);
    assert_int_equal(kvn_xfer_copy(NULL, KVN_XFER_TO_L2, 1, s, p, 1, &e), -EINVAL);
    assert_true(kvn_xfer_idle(x));
    assert_false(kvn_xfer_busy(x));
    struct kvn_xfer_stats st;
    kvn_xfer_get_stats(x, &st);
    assert_int_equal(st.jobs_posted, 0);
    assert_int_equal(kvn_xfer_progress(NULL, 0, on_done, NULL), -EINVAL);
    struct kvn_xfer_cfg c = {.uri = "nonsense+x", .pool = pool};
    struct kvn_xfer *y = NULL;
    assert_true(kvn_xfer_create(&c, &y, &e) < 0);
    assert_null(y);
    c.pool = NULL;
    assert_int_equal(kvn_xfer_create(&c, &y, &e), -EINVAL);
    kvn_xfer_destroy(x);
    kvn_host_pool_destroy(pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TH_TRANSPORT_TEST(test, ofi_tcp, "ofi+tcp", NULL, NULL),
        TH_TRANSPORT_TEST(test, ofi_shm, "ofi+shm", NULL, NULL),
        TH_TRANSPORT_TEST(test, ucx_tcp, "ucx+tcp", NULL, NULL),
        TH_TRANSPORT_TEST(test, ucx_sm, "ucx+sm", NULL, NULL),
        cmocka_unit_test(test_held_completions),
        cmocka_unit_test(test_dead_engine),
        cmocka_unit_test(test_bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
