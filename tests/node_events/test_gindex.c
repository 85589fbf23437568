/*
 * test_gindex.c - global index: event semantics per (peer, medium), prefix queries across
 * peers, capacity bounds, peer drop, randomized churn against a brute-force model, and every
 * error path.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ev_helpers.h"
#include "node/events/global_index.h"

static struct kvn_kv_event stored(const int64_t *h, uint32_t n, enum kvn_medium m)
{
    struct kvn_kv_event ev = {
        .type = KVN_EV_BLOCK_STORED, .medium = m, .hashes = h, .n_hashes = n, .block_size = 1};
    return ev;
}

static struct kvn_kv_event removed(const int64_t *h, uint32_t n, enum kvn_medium m)
{
    struct kvn_kv_event ev = {
        .type = KVN_EV_BLOCK_REMOVED, .medium = m, .hashes = h, .n_hashes = n};
    return ev;
}

static void test_apply_semantics(void **state)
{
    (void)state;
    struct kvn_gindex *g;
    assert_int_equal(kvn_gindex_create(NULL, &g, NULL), 0);
    assert_int_equal(kvn_gindex_active_peers(g), 0);
    int64_t h[] = {11, -22, 0, INT64_MIN, INT64_MAX};
    struct kvn_kv_event ev = stored(h, 5, KVN_MEDIUM_GPU);
    assert_int_equal(kvn_gindex_apply(g, 2, &ev, NULL), 0);
    assert_int_equal(kvn_gindex_active_peers(g), 1);
    for (int i = 0; i < 5; i++) {
        assert_true(kvn_gindex_contains(g, 2, KVN_MEDIUM_GPU, h[i]));
        assert_false(kvn_gindex_contains(g, 2, KVN_MEDIUM_CPU_PINNED, h[i]));
        assert_false(kvn_gindex_contains(g, 1, KVN_MEDIUM_GPU, h[i]));
    }
    assert_false(kvn_gindex_contains(g, 2, KVN_MEDIUM_GPU, 12));
    /* Re-adding is a no-op. */
    assert_int_equal(kvn_gindex_apply(g, 2, &ev, NULL), 0);
    struct kvn_gindex_peer_stats st;
    assert_int_equal(kvn_gindex_peer_stats(g, 2, &st, NULL), 0);
    assert_true(st.active);
    assert_int_equal(st.blocks[KVN_MEDIUM_GPU], 5);
    assert_int_equal(st.stored, 5);
    assert_int_equal(st.events, 2);

    /* Remove two, one of them the zero hash, plus one we never had. */
    int64_t r[] = {0, -22, 999};
    ev = removed(r, 3, KVN_MEDIUM_GPU);
    assert_int_equal(kvn_gindex_apply(g, 2, &ev, NULL), 0);
    assert_false(kvn_gindex_contains(g, 2, KVN_MEDIUM_GPU, 0));
    assert_false(kvn_gindex_contains(g, 2, KVN_MEDIUM_GPU, -22));
    assert_true(kvn_gindex_contains(g, 2, KVN_MEDIUM_GPU, 11));
    assert_true(kvn_gindex_contains(g, 2, KVN_MEDIUM_GPU, INT64_MIN));
    assert_int_equal(kvn_gindex_peer_stats(g, 2, &st, NULL), 0);
    assert_int_equal(st.blocks[KVN_MEDIUM_GPU], 3);
    assert_int_equal(st.removed, 2);
    assert_int_equal(st.remove_missing, 1);

    /* Another medium is independent; AllBlocksCleared empties all of them. */
    ev = stored(h, 2, KVN_MEDIUM_DISK);
    assert_int_equal(kvn_gindex_apply(g, 2, &ev, NULL), 0);
    assert_true(kvn_gindex_contains(g, 2, KVN_MEDIUM_DISK, -22));
    struct kvn_kv_event clr = {.type = KVN_EV_ALL_BLOCKS_CLEARED, .medium = (enum kvn_medium)77};
    assert_int_equal(kvn_gindex_apply(g, 2, &clr, NULL), 0);
    assert_int_equal(kvn_gindex_peer_stats(g, 2, &st, NULL), 0);
    assert_true(st.active);
    assert_int_equal(st.blocks[KVN_MEDIUM_GPU] + st.blocks[KVN_MEDIUM_DISK], 0);
    assert_int_equal(st.cleared, 1);
    assert_false(kvn_gindex_contains(g, 2, KVN_MEDIUM_GPU, 11));
    /* Usable again after a clear. */
    ev = stored(h, 1, KVN_MEDIUM_GPU);
    assert_int_equal(kvn_gindex_apply(g, 2, &ev, NULL), 0);
    assert_true(kvn_gindex_contains(g, 2, KVN_MEDIUM_GPU, 11));
    kvn_gindex_destroy(g);
}

/* Builds a chain of page hashes c[0..n-1] from a seed (stand-in for the SHA-256 chain). */
static void chain(int64_t seed, int64_t *c, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        c[i] = seed * 1000003 + (int64_t)i * 7919 + 1;
}

static void test_prefix_queries(void **state)
{
    (void)state;
    struct kvn_gindex *g;
    struct kvn_gindex_config cfg = {.max_peers = 8, .seed = 42};
    assert_int_equal(kvn_gindex_create(&cfg, &g, NULL), 0);
    int64_t q[10];
    chain(5, q, 10);
    /* peer 1: first 3 pages on GPU; peer 4: first 6 on CPU_PINNED; peer 6: first 6 on GPU
     * except page 2, which it holds on DISK only; peer 7: 8 pages, but it is "us". */
    struct kvn_kv_event ev = stored(q, 3, KVN_MEDIUM_GPU);
    assert_int_equal(kvn_gindex_apply(g, 1, &ev, NULL), 0);
    ev = stored(q, 6, KVN_MEDIUM_CPU_PINNED);
    assert_int_equal(kvn_gindex_apply(g, 4, &ev, NULL), 0);
    ev = stored(q, 2, KVN_MEDIUM_GPU);
    assert_int_equal(kvn_gindex_apply(g, 6, &ev, NULL), 0);
    ev = stored(q + 3, 3, KVN_MEDIUM_GPU);
    assert_int_equal(kvn_gindex_apply(g, 6, &ev, NULL), 0);
    ev = stored(q + 2, 1, KVN_MEDIUM_DISK);
    assert_int_equal(kvn_gindex_apply(g, 6, &ev, NULL), 0);
    ev = stored(q, 8, KVN_MEDIUM_GPU);
    assert_int_equal(kvn_gindex_apply(g, 7, &ev, NULL), 0);
    assert_int_equal(kvn_gindex_active_peers(g), 4);

    uint32_t pages;
    assert_int_equal(kvn_gindex_peer_prefix(g, 1, q, 10, KVN_GINDEX_ANY_MEDIUM, &pages, NULL), 0);
    assert_int_equal(pages, 3);
    assert_int_equal(kvn_gindex_peer_prefix(g, 6, q, 10, KVN_GINDEX_ANY_MEDIUM, &pages, NULL), 0);
    assert_int_equal(pages, 6);
    assert_int_equal(
        kvn_gindex_peer_prefix(g, 6, q, 10, KVN_GINDEX_MEDIUM_BIT(KVN_MEDIUM_GPU), &pages, NULL),
        0);
    assert_int_equal(pages, 2);
    assert_int_equal(kvn_gindex_peer_prefix(g, 0, q, 10, KVN_GINDEX_ANY_MEDIUM, &pages, NULL), 0);
    assert_int_equal(pages, 0); /* inactive */
    assert_int_equal(kvn_gindex_peer_prefix(g, 4, q, 0, KVN_GINDEX_ANY_MEDIUM, &pages, NULL), 0);
    assert_int_equal(pages, 0);

    struct kvn_gindex_match m;
    assert_int_equal(kvn_gindex_best_prefix(g, q, 10, KVN_GINDEX_ANY_MEDIUM, UINT32_MAX, &m, NULL),
                     0);
    assert_true(m.found);
    assert_int_equal(m.peer, 7);
    assert_int_equal(m.pages, 8);
    /* Excluding ourselves: peers 4 and 6 tie at 6 pages, the lower id wins. */
    assert_int_equal(kvn_gindex_best_prefix(g, q, 10, KVN_GINDEX_ANY_MEDIUM, 7, &m, NULL), 0);
    assert_true(m.found);
    assert_int_equal(m.peer, 4);
    assert_int_equal(m.pages, 6);
    /* Host pool only (what a cross-node RDMA fetch can read). */
    assert_int_equal(
        kvn_gindex_best_prefix(g, q, 10, KVN_GINDEX_MEDIUM_BIT(KVN_MEDIUM_CPU_PINNED), 7, &m, NULL),
        0);
    assert_int_equal(m.peer, 4);
    assert_int_equal(m.pages, 6);
    /* A query that diverges at page 0 matches nobody. */
    int64_t other[4];
    chain(99, other, 4);
    assert_int_equal(
        kvn_gindex_best_prefix(g, other, 4, KVN_GINDEX_ANY_MEDIUM, UINT32_MAX, &m, NULL), 0);
    assert_false(m.found);
    assert_int_equal(m.pages, 0);
    /* Divergence in the middle: the query's own later pages are not counted. */
    int64_t mixq[5] = {q[0], q[1], other[2], q[3], q[4]};
    assert_int_equal(
        kvn_gindex_best_prefix(g, mixq, 5, KVN_GINDEX_ANY_MEDIUM, UINT32_MAX, &m, NULL), 0);
    assert_int_equal(m.pages, 2);
    assert_int_equal(m.peer, 1);

    /* Dropping peers: 4 goes, 6 remains (swap-remove keeps the active list right). */
    assert_int_equal(kvn_gindex_drop_peer(g, 4, NULL), 0);
    assert_int_equal(kvn_gindex_drop_peer(g, 4, NULL), 0); /* no-op */
    assert_int_equal(kvn_gindex_active_peers(g), 3);
    assert_int_equal(kvn_gindex_best_prefix(g, q, 10, KVN_GINDEX_ANY_MEDIUM, 7, &m, NULL), 0);
    assert_int_equal(m.peer, 6);
    assert_int_equal(m.pages, 6);
    struct kvn_gindex_peer_stats st;
    assert_int_equal(kvn_gindex_peer_stats(g, 4, &st, NULL), 0);
    assert_false(st.active);
    assert_int_equal(st.blocks[KVN_MEDIUM_CPU_PINNED], 0);
    assert_false(kvn_gindex_contains(g, 4, KVN_MEDIUM_CPU_PINNED, q[0]));
    assert_int_equal(kvn_gindex_drop_peer(g, 1, NULL), 0);
    assert_int_equal(kvn_gindex_drop_peer(g, 7, NULL), 0);
    assert_int_equal(kvn_gindex_drop_peer(g, 6, NULL), 0);
    assert_int_equal(kvn_gindex_active_peers(g), 0);
    assert_int_equal(kvn_gindex_best_prefix(g, q, 10, KVN_GINDEX_ANY_MEDIUM, UINT32_MAX, &m, NULL),
                     0);
    assert_false(m.found);
    /* A dropped peer relearns from scratch. */
    ev = stored(q, 4, KVN_MEDIUM_GPU);
    assert_int_equal(kvn_gindex_apply(g, 4, &ev, NULL), 0);
    assert_int_equal(kvn_gindex_best_prefix(g, q, 10, KVN_GINDEX_ANY_MEDIUM, UINT32_MAX, &m, NULL),
                     0);
    assert_int_equal(m.peer, 4);
    assert_int_equal(m.pages, 4);
    kvn_gindex_destroy(g);
}

static void test_capacity(void **state)
{
    (void)state;
    struct kvn_gindex *g;
    struct kvn_gindex_config cfg = {.max_peers = 2, .max_blocks_per_peer = 10};
    assert_int_equal(kvn_gindex_create(&cfg, &g, NULL), 0);
    int64_t h[12];
    for (int i = 0; i < 12; i++)
        h[i] = 100 + i;
    struct kvn_kv_event ev = stored(h, 8, KVN_MEDIUM_GPU);
    assert_int_equal(kvn_gindex_apply(g, 0, &ev, NULL), 0);
    /* h[4..11]: 4 already held, 4 new -> 12 > 10: refused whole. */
    ev = stored(h + 4, 8, KVN_MEDIUM_GPU);
    struct kvn_err err;
    assert_int_equal(kvn_gindex_apply(g, 0, &ev, &err), -ENOSPC);
    assert_int_equal(err.code, -ENOSPC);
    assert_false(kvn_gindex_contains(g, 0, KVN_MEDIUM_GPU, h[8]));
    struct kvn_gindex_peer_stats st;
    kvn_gindex_peer_stats(g, 0, &st, NULL);
    assert_int_equal(st.blocks[KVN_MEDIUM_GPU], 8);
    assert_int_equal(st.refused, 1);
    assert_int_equal(st.events, 1);
    /* Exactly filling the bound is fine (6 held again + 2 new = 10); other media separate. */
    ev = stored(h + 2, 8, KVN_MEDIUM_GPU);
    assert_int_equal(kvn_gindex_apply(g, 0, &ev, NULL), 0);
    kvn_gindex_peer_stats(g, 0, &st, NULL);
    assert_int_equal(st.blocks[KVN_MEDIUM_GPU], 10);
    ev = stored(h, 10, KVN_MEDIUM_CPU_PINNED);
    assert_int_equal(kvn_gindex_apply(g, 0, &ev, NULL), 0);
    kvn_gindex_destroy(g);
}

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int collect(void *ctx, int64_t h)
{
    int64_t **w = ctx;
    *(*w)++ = h;
    return 0;
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void test_churn_vs_model(void **state)
{
    (void)state;
    enum { U = 4000, OPS = 200000 };
    /* Low-entropy keys (runs of consecutive ints, plus 0 and the extremes) stress probing. */
    static int64_t universe[U];
    static bool model[2][U];
    for (int i = 0; i < U; i++)
        universe[i] = (i < U / 2) ? i : (int64_t)(next_rand() << 1) - (i & 1);
    universe[U - 1] = INT64_MIN;
    universe[U - 2] = INT64_MAX;
    struct kvn_gindex *g;
    assert_int_equal(kvn_gindex_create(NULL, &g, NULL), 0);
    for (int op = 0; op < OPS; op++) {
        uint32_t peer = (uint32_t)(next_rand() % 2);
        int k = (int)(next_rand() % U);
        struct kvn_kv_event ev = (next_rand() % 3) ? stored(&universe[k], 1, KVN_MEDIUM_GPU)
                                                   : removed(&universe[k], 1, KVN_MEDIUM_GPU);
        if (op % 50000 == 49999) { /* the occasional wipe */
            ev.type = KVN_EV_ALL_BLOCKS_CLEARED;
            memset(model[peer], 0, sizeof(model[peer]));
        } else {
            model[peer][k] = ev.type == KVN_EV_BLOCK_STORED;
        }
        assert_int_equal(kvn_gindex_apply(g, peer, &ev, NULL), 0);
        if (op % 20000 == 0 || op == OPS - 1) {
            for (uint32_t p = 0; p < 2; p++) {
                uint64_t n = 0;
                for (int i = 0; i < U; i++) {
                    assert_int_equal(kvn_gindex_contains(g, p, KVN_MEDIUM_GPU, universe[i]),
                                     model[p][i]);
                    n += model[p][i];
                }
                struct kvn_gindex_peer_stats st;
                kvn_gindex_peer_stats(g, p, &st, NULL);
                assert_int_equal(st.blocks[KVN_MEDIUM_GPU], n);
                /* foreach yields exactly the set. */
                static int64_t got[U], want[U];
                int64_t *w = got;
                assert_int_equal(kvn_gindex_foreach(g, p, KVN_MEDIUM_GPU, collect, &w, NULL), 0);
                assert_int_equal((uint64_t)(w - got), n);
                size_t wn = 0;
                for (int i = 0; i < U; i++)
                    if (model[p][i])
                        want[wn++] = universe[i];
                qsort(got, n, sizeof(int64_t), cmp64);
                qsort(want, wn, sizeof(int64_t), cmp64);
                assert_memory_equal(got, want, n * sizeof(int64_t));
            }
        }
    }
    kvn_gindex_destroy(g);
}

static int stop_early(void *ctx, int64_t h)
{
    (void)h;
    return ++*(int *)ctx == 2 ? -EINTR : 0;
}

static void test_errors(void **state)
{
    (void)state;
    struct kvn_err err;
    struct kvn_gindex *g = NULL;
    struct kvn_gindex_config bad = {.max_peers = KVN_GINDEX_LIMIT_MAX_PEERS + 1};
    assert_int_equal(kvn_gindex_create(&bad, &g, &err), -EINVAL);
    assert_null(g);
    assert_int_equal(kvn_gindex_create(NULL, NULL, &err), -EINVAL);
    struct kvn_gindex_config cfg = {.max_peers = 4};
    assert_int_equal(kvn_gindex_create(&cfg, &g, &err), 0);

    int64_t h[3] = {1, 2, 3};
    struct kvn_kv_event ev = stored(h, 3, KVN_MEDIUM_GPU);
    assert_int_equal(kvn_gindex_apply(NULL, 0, &ev, &err), -EINVAL);
    assert_int_equal(kvn_gindex_apply(g, 4, &ev, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "peer 4"));
    assert_int_equal(kvn_gindex_apply(g, 0, NULL, &err), -EINVAL);
    struct kvn_kv_event e = ev;
    e.type = (enum kvn_kv_event_type)5;
    assert_int_equal(kvn_gindex_apply(g, 0, &e, &err), -EINVAL);
    e = ev;
    e.medium = (enum kvn_medium)3;
    assert_int_equal(kvn_gindex_apply(g, 0, &e, &err), -EINVAL);
    e = ev;
    e.hashes = NULL;
    assert_int_equal(kvn_gindex_apply(g, 0, &e, &err), -EINVAL);
    /* None of the refusals activated or filled anything. */
    assert_int_equal(kvn_gindex_active_peers(g), 0);
    assert_false(kvn_gindex_contains(g, 0, KVN_MEDIUM_GPU, 1));

    assert_int_equal(kvn_gindex_peer_add(NULL, 0, &err), -EINVAL);
    assert_int_equal(kvn_gindex_peer_add(g, 9, &err), -EINVAL);
    assert_int_equal(kvn_gindex_peer_add(g, 3, &err), 0);
    assert_int_equal(kvn_gindex_peer_add(g, 3, &err), 0);
    assert_int_equal(kvn_gindex_active_peers(g), 1);
    assert_int_equal(kvn_gindex_drop_peer(NULL, 0, &err), -EINVAL);
    assert_int_equal(kvn_gindex_drop_peer(g, 4, &err), -EINVAL);

    assert_false(kvn_gindex_contains(NULL, 0, KVN_MEDIUM_GPU, 1));
    assert_false(kvn_gindex_contains(g, 77, KVN_MEDIUM_GPU, 1));
    assert_false(kvn_gindex_contains(g, 0, (enum kvn_medium)9, 1));

    uint32_t pages = 123;
    assert_int_equal(kvn_gindex_peer_prefix(NULL, 0, h, 3, 7, &pages, &err), -EINVAL);
    assert_int_equal(kvn_gindex_peer_prefix(g, 4, h, 3, 7, &pages, &err), -EINVAL);
    assert_int_equal(kvn_gindex_peer_prefix(g, 0, NULL, 3, 7, &pages, &err), -EINVAL);
    assert_int_equal(kvn_gindex_peer_prefix(g, 0, h, 3, 0, &pages, &err), -EINVAL);
    assert_int_equal(kvn_gindex_peer_prefix(g, 0, h, 3, 8, &pages, &err), -EINVAL);
    assert_int_equal(kvn_gindex_peer_prefix(g, 0, h, 3, 7, NULL, &err), -EINVAL);
    assert_int_equal(pages, 123);
    struct kvn_gindex_match m = {.found = true, .peer = 9, .pages = 9};
    assert_int_equal(kvn_gindex_best_prefix(NULL, h, 3, 7, 0, &m, &err), -EINVAL);
    assert_int_equal(kvn_gindex_best_prefix(g, h, 3, 7, 0, NULL, &err), -EINVAL);
    assert_int_equal(kvn_gindex_best_prefix(g, NULL, 3, 7, 0, &m, &err), -EINVAL);
    assert_int_equal(kvn_gindex_best_prefix(g, h, 3, 0x10, 0, &m, &err), -EINVAL);
    assert_int_equal(m.peer, 9);

    struct kvn_gindex_peer_stats st;
    assert_int_equal(kvn_gindex_peer_stats(NULL, 0, &st, &err), -EINVAL);
    assert_int_equal(kvn_gindex_peer_stats(g, 4, &st, &err), -EINVAL);
    assert_int_equal(kvn_gindex_peer_stats(g, 0, NULL, &err), -EINVAL);
    assert_int_equal(kvn_gindex_active_peers(NULL), 0);

    assert_int_equal(kvn_gindex_foreach(NULL, 0, KVN_MEDIUM_GPU, collect, NULL, &err), -EINVAL);
    assert_int_equal(kvn_gindex_foreach(g, 0, KVN_MEDIUM_GPU, NULL, NULL, &err), -EINVAL);
    assert_int_equal(kvn_gindex_foreach(g, 0, (enum kvn_medium)4, collect, NULL, &err), -EINVAL);
    assert_int_equal(kvn_gindex_apply(g, 0, &ev, &err), 0);
    int calls = 0;
    assert_int_equal(kvn_gindex_foreach(g, 0, KVN_MEDIUM_GPU, stop_early, &calls, &err), -EINTR);
    assert_int_equal(calls, 2);
    kvn_gindex_destroy(g);
    kvn_gindex_destroy(NULL);
}

/* Token queries hash with cache/page_hash.h; the stored hashes come from the tests' own
 * SHA-256 chain (ev_helpers.h), so this also cross-checks the two implementations. */
static void test_prefix_by_tokens(void **state)
{
    (void)state;
    struct kvn_gindex *g;
    assert_int_equal(kvn_gindex_create(NULL, &g, NULL), 0);
    struct evh_seq s;
    evh_make_seq(&s, 77, 5);
    for (uint32_t p = 0; p < 3; p++) {
        struct kvn_kv_event ev = evh_stored(&s, p, KVN_MEDIUM_CPU_PINNED);
        assert_int_equal(kvn_gindex_apply(g, 1, &ev, NULL), 0);
    }
    for (uint32_t p = 0; p < 5; p++) {
        struct kvn_kv_event ev = evh_stored(&s, p, KVN_MEDIUM_GPU);
        assert_int_equal(kvn_gindex_apply(g, 2, &ev, NULL), 0);
    }
    int64_t buf[8];
    uint32_t pages = 0;
    struct kvn_gindex_match m;
    /* 4 whole pages + 2 tokens of a fifth: the tail is not hashed. */
    assert_int_equal(kvn_gindex_best_prefix_tokens(g, s.tok, 4 * EVH_PAGE + 2, EVH_PAGE, buf, 8,
                                                   KVN_GINDEX_ANY_MEDIUM, UINT32_MAX, &m, &pages,
                                                   NULL),
                     0);
    assert_int_equal(pages, 4);
    for (uint32_t p = 0; p < 4; p++)
        assert_int_equal(buf[p], s.hash[p]);
    assert_true(m.found);
    assert_int_equal(m.peer, 2);
    assert_int_equal(m.pages, 4);
    assert_int_equal(kvn_gindex_best_prefix_tokens(g, s.tok, 5 * EVH_PAGE, EVH_PAGE, buf, 8,
                                                   KVN_GINDEX_MEDIUM_BIT(KVN_MEDIUM_CPU_PINNED),
                                                   UINT32_MAX, &m, NULL, NULL),
                     0);
    assert_int_equal(m.peer, 1);
    assert_int_equal(m.pages, 3);
    /* A token changed in page 2: the chain diverges there for every later page too. */
    int32_t tok[5 * EVH_PAGE];
    memcpy(tok, s.tok, sizeof(tok));
    tok[2 * EVH_PAGE + 1] ^= 1;
    assert_int_equal(kvn_gindex_best_prefix_tokens(g, tok, 5 * EVH_PAGE, EVH_PAGE, buf, 8,
                                                   KVN_GINDEX_ANY_MEDIUM, UINT32_MAX, &m, NULL,
                                                   NULL),
                     0);
    assert_int_equal(m.pages, 2);
    /* Fewer tokens than a page: no pages, no match. */
    assert_int_equal(kvn_gindex_best_prefix_tokens(g, tok, 3, EVH_PAGE, NULL, 0,
                                                   KVN_GINDEX_ANY_MEDIUM, UINT32_MAX, &m, &pages,
                                                   NULL),
                     0);
    assert_int_equal(pages, 0);
    assert_false(m.found);

    struct kvn_err err;
    m.pages = 99;
    assert_int_equal(kvn_gindex_best_prefix_tokens(g, s.tok, 20, EVH_PAGE, buf, 4,
                                                   KVN_GINDEX_ANY_MEDIUM, UINT32_MAX, &m, NULL,
                                                   &err),
                     -ENOSPC);
    assert_int_equal(m.pages, 99);
    assert_int_equal(kvn_gindex_best_prefix_tokens(g, s.tok, 20, 0, buf, 8, KVN_GINDEX_ANY_MEDIUM,
                                                   UINT32_MAX, &m, NULL, &err),
                     -EINVAL);
    assert_int_equal(kvn_gindex_best_prefix_tokens(g, NULL, 20, EVH_PAGE, buf, 8,
                                                   KVN_GINDEX_ANY_MEDIUM, UINT32_MAX, &m, NULL,
                                                   &err),
                     -EINVAL);
    assert_int_equal(kvn_gindex_best_prefix_tokens(g, s.tok, 20, EVH_PAGE, NULL, 8,
                                                   KVN_GINDEX_ANY_MEDIUM, UINT32_MAX, &m, NULL,
                                                   &err),
                     -EINVAL);
    assert_int_equal(kvn_gindex_best_prefix_tokens(NULL, s.tok, 20, EVH_PAGE, buf, 8,
                                                   KVN_GINDEX_ANY_MEDIUM, UINT32_MAX, &m, NULL,
                                                   &err),
                     -EINVAL);
    assert_int_equal(kvn_gindex_best_prefix_tokens(g, s.tok, 20, EVH_PAGE, buf, 8, 0, UINT32_MAX,
                                                   &m, NULL, &err),
                     -EINVAL);
    assert_int_equal(kvn_gindex_best_prefix_tokens(g, s.tok, 20, EVH_PAGE, buf, 8,
                                                   KVN_GINDEX_ANY_MEDIUM, UINT32_MAX, NULL, NULL,
                                                   &err),
                     -EINVAL);
    kvn_gindex_destroy(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_apply_semantics), cmocka_unit_test(test_prefix_queries),
        cmocka_unit_test(test_capacity),        cmocka_unit_test(test_churn_vs_model),
        cmocka_unit_test(test_errors),          cmocka_unit_test(test_prefix_by_tokens),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
