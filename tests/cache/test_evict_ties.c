/*
 * test_evict_ties.c - eviction order among candidates with equal keys:
 * radix.h says (tick, id) under LRU and (hit count, tick, id) under LFU, so
 * the smallest node id goes first (a regression found by tests/cache_model:
 * the heap compared slab slots, and a slot freed and reused gets a larger id
 * but keeps its small slot).
 *
 * Every case builds B (older slot, smaller id) and C (reused smaller slot,
 * larger id) with the same key and checks that B is evicted first.
 */
#include "cache_test_util.h"

static struct fixture *fx_policy(uint32_t l2, enum kvn_evict_policy ep)
{
    struct fixture *f = fx_new(1, 8, l2, KVN_WRITE_THROUGH, false);
    f->cfg.evict_policy = ep;
    kvn_radix_destroy(f->t);
    assert_int_equal(kvn_radix_create(&f->cfg, &f->t, NULL), 0);
    return f;
}

/* The hash of the first BlockRemoved on medium m at or after event `from`. */
static int64_t first_removed(const struct fixture *f, uint32_t from, enum kvn_medium m)
{
    for (uint32_t i = from; i < f->rec.n; i++)
        if (f->rec.ev[i].type == KVN_EV_BLOCK_REMOVED && f->rec.ev[i].medium == m)
            return f->rec.ev[i].hashes[0];
    fail_msg("no BlockRemoved on medium %d", (int)m);
    return 0;
}

static int64_t hash_of(const struct fixture *f, uint64_t id)
{
    struct kvn_radix_node_info in;
    assert_int_equal(kvn_radix_node_info(f->t, id, &in, NULL), 0);
    return in.hashes[0];
}

/* L1 without a host tier: eviction deletes, ties by id */
static void l1_ties(enum kvn_evict_policy ep)
{
    struct fixture *f = fx_policy(0, ep);
    const int32_t t1[] = {1}, t2[] = {2}, t3[] = {3};
    struct kvn_radix_insert_result a, b, c;
    fx_insert(f, 0, t1, 1, NULL, 1, &a);
    fx_insert(f, 0, t2, 1, NULL, 1, &b);
    assert_true(a.last_node < b.last_node);
    int64_t ha = hash_of(f, a.last_node), hb = hash_of(f, b.last_node);
    struct kvn_radix_evict_result er;
    uint32_t from = f->rec.n;
    assert_int_equal(kvn_radix_evict_l1(f->t, 1, &er, NULL), 0);
    assert_int_equal(er.deleted_pages, 1);
    assert_int_equal(first_removed(f, from, KVN_MEDIUM_GPU), ha);
    fx_check(f);
    /* C reuses A's slot with a new generation: a larger id than B */
    fx_insert(f, 0, t3, 1, NULL, 1, &c);
    assert_true(c.last_node > b.last_node);
    assert_int_equal((uint32_t)c.last_node, (uint32_t)a.last_node); /* same slot */
    from = f->rec.n;
    assert_int_equal(kvn_radix_evict_l1(f->t, 1, &er, NULL), 0);
    assert_int_equal(er.freed_pages, 1);
    assert_int_equal(first_removed(f, from, KVN_MEDIUM_GPU), hb);
    fx_check(f);
    struct kvn_radix_match m = fx_match(f, 0, t3, 1, 2);
    assert_int_equal(m.device_tokens, 1); /* C stayed */
    fx_free(f);
}

static void l1_ties_lru(void **state)
{
    (void)state;
    l1_ties(KVN_EVICT_LRU);
}

static void l1_ties_lfu(void **state)
{
    (void)state;
    l1_ties(KVN_EVICT_LFU);
}

/* One L2-only leaf pushed into the host pool (no hit count, like a peer fetch). */
static uint64_t host_leaf(struct fixture *f, int32_t tok, uint64_t tick)
{
    uint32_t page;
    struct kvn_radix_insert_result r;
    assert_int_equal(kvn_radix_reserve_l2(f->t, 1, &page, NULL), 0);
    assert_int_equal(kvn_radix_insert_host(f->t, 0, &tok, 1, &page, tick, &r, NULL), 0);
    assert_int_equal(r.new_tokens, 1);
    fx_check(f);
    return r.last_node;
}

/* L2: L2-only leaves with the same key, ties by id */
static void l2_ties(enum kvn_evict_policy ep)
{
    struct fixture *f = fx_policy(8, ep);
    uint64_t a = host_leaf(f, 1, 1), b = host_leaf(f, 2, 1);
    assert_true(a < b);
    int64_t ha = hash_of(f, a), hb = hash_of(f, b);
    struct kvn_radix_evict_result er;
    uint32_t from = f->rec.n;
    assert_int_equal(kvn_radix_evict_l2(f->t, 1, &er, NULL), 0);
    assert_int_equal(er.deleted_pages, 1);
    assert_int_equal(first_removed(f, from, KVN_MEDIUM_CPU_PINNED), ha);
    fx_check(f);
    uint64_t c = host_leaf(f, 3, 1); /* A's slot, a larger id than B */
    assert_true(c > b);
    assert_int_equal((uint32_t)c, (uint32_t)a);
    struct kvn_radix_node_info bi, ci;
    assert_int_equal(kvn_radix_node_info(f->t, b, &bi, NULL), 0);
    assert_int_equal(kvn_radix_node_info(f->t, c, &ci, NULL), 0);
    assert_int_equal(bi.last_access_tick, ci.last_access_tick);
    assert_int_equal(bi.hit_count, ci.hit_count);
    from = f->rec.n;
    assert_int_equal(kvn_radix_evict_l2(f->t, 1, &er, NULL), 0);
    assert_int_equal(er.deleted_pages, 1);
    assert_int_equal(first_removed(f, from, KVN_MEDIUM_CPU_PINNED), hb);
    fx_free(f);
}

static void l2_ties_lru(void **state)
{
    (void)state;
    l2_ties(KVN_EVICT_LRU);
}

static void l2_ties_lfu(void **state)
{
    (void)state;
    l2_ties(KVN_EVICT_LFU);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(l1_ties_lru),
        cmocka_unit_test(l1_ties_lfu),
        cmocka_unit_test(l2_ties_lru),
        cmocka_unit_test(l2_ties_lfu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
