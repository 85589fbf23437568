/*
 * test_split_inflight.c - a split carries every in-flight state of the node
 * it splits to both fragments (regressions found by tests/cache_model).
 *
 *   load pending, split by insert_host   both fragments stay LOADING in the
 *                                        load job: match stops in front of
 *                                        them until the ack, and the ack
 *                                        completes (or fails) both, in prefix
 *                                        order;
 *   load pending, insert over it         the loading node is a barrier:
 *                                        nothing is split or adopted;
 *   write pending, split by insert       both fragments pending on the write:
 *                                        no valid L2 before the ack,
 *                                        CPU_PINNED for both after it;
 *   demotion scheduled, split            both fragments are demoted by the
 *                                        ack once they are L1 leaves again.
 *
 * kvn_radix_check runs after every step (fx_insert, fx_check): it must accept
 * every state reached here (and it refuses a load fragment that is not
 * LOADING, which is what the unfixed split produced).
 */
#include "cache_test_util.h"

static const int32_t T12[] = {1, 2}, T13[] = {1, 3};

struct loaded {
    struct fixture *f;
    uint64_t node12; /* id of the node [1,2] (the suffix [2] after the split) */
    uint64_t load_ack;
    int64_t h1, h2; /* event hashes of pages [1] and [1,2] */
};

/*
 * The minimal case of the model test: page_size 1, l1 8, l2 8, write_through:
 * insert [1,2], ack its write, evict all of L1, load_back [1,2] into slots
 * {4,5}. Returns with the load pending.
 */
static struct loaded load_pending(void)
{
    struct loaded L;
    L.f = fx_new(1, 8, 8, KVN_WRITE_THROUGH, false);
    struct fixture *f = L.f;
    uint32_t s01[] = {0, 1};
    struct kvn_radix_insert_result ir;
    fx_insert(f, 0, T12, 2, s01, 1, &ir);
    assert_int_not_equal(ir.backup_ack_id, 0);
    assert_int_equal(kvn_radix_ack(f->t, ir.backup_ack_id, true, NULL), 0);
    L.node12 = ir.last_node;
    L.h1 = f->rec.ev[0].hashes[0];
    L.h2 = f->rec.ev[1].hashes[0];
    struct kvn_radix_evict_result er;
    assert_int_equal(kvn_radix_evict_l1(f->t, 8, &er, NULL), 0);
    assert_int_equal(er.demoted_pages, 2);
    fx_check(f);
    uint32_t s45[] = {4, 5};
    struct kvn_radix_job_result jr;
    assert_int_equal(kvn_radix_load_back(f->t, 0, T12, 2, s45, 2, 2, &jr, NULL), 0);
    assert_int_not_equal(jr.ack_id, 0);
    assert_int_equal(jr.n_pages, 2);
    assert_int_equal(jr.last_node, L.node12);
    L.load_ack = jr.ack_id;
    fx_check(f);
    return L;
}

/* insert_host [1,3] while [1,2] loads: the split [1] | [2] keeps both loading */
static struct kvn_radix_node_info split_by_host_insert(struct loaded *L, uint64_t *leaf13)
{
    struct fixture *f = L->f;
    uint32_t pages[2];
    assert_int_equal(kvn_radix_reserve_l2(f->t, 2, pages, NULL), 0);
    struct kvn_radix_insert_result hr;
    struct kvn_err err;
    int rc = kvn_radix_insert_host(f->t, 0, T13, 2, pages, 3, &hr, &err);
    if (rc)
        fprintf(stderr, "insert_host: %s\n", err.msg);
    assert_int_equal(rc, 0);
    assert_int_equal(hr.prefix_tokens, 1); /* [1] has a valid L2 copy */
    assert_int_equal(hr.new_tokens, 1);    /* [3] */
    assert_int_equal(hr.inserted_tokens, 2);
    assert_int_equal(kvn_radix_release_l2(f->t, pages, 1, NULL), 0); /* the page of [1] */
    fx_check(f);
    *leaf13 = hr.last_node;

    struct kvn_radix_node_info x, p, leaf;
    assert_int_equal(kvn_radix_node_info(f->t, L->node12, &x, NULL), 0);
    assert_int_equal(kvn_radix_node_info(f->t, hr.last_node, &leaf, NULL), 0);
    assert_int_equal(x.n_pages, 1);
    assert_int_equal(x.tokens[0], 2);
    assert_int_not_equal(x.parent_id, 0);
    assert_int_equal(leaf.parent_id, x.parent_id);
    assert_true(leaf.in_l2);
    assert_false(leaf.in_l1);
    assert_int_equal(kvn_radix_node_info(f->t, x.parent_id, &p, NULL), 0);
    assert_int_equal(p.n_pages, 1);
    assert_int_equal(p.tokens[0], 1);
    /* both fragments: still loading, in the load job, locked by it */
    assert_true(p.loading);
    assert_true(x.loading);
    assert_true(p.in_l1 && p.in_l2 && x.in_l1 && x.in_l2);
    assert_int_equal(p.pending_ack, L->load_ack);
    assert_int_equal(x.pending_ack, L->load_ack);
    assert_int_equal(p.lock_count, 1);
    assert_int_equal(x.lock_count, 1);
    assert_int_equal(p.l1_slots[0], 4);
    assert_int_equal(x.l1_slots[0], 5);

    /* no device hit before the ack: the engine must not read slots 4, 5 */
    struct kvn_radix_match m = fx_match(f, 0, T12, 2, 4);
    assert_int_equal(m.device_tokens, 0);
    assert_int_equal(m.host_tokens, 0);
    assert_int_equal(m.last_device_node, 0);
    m = fx_match(f, 0, T13, 2, 4);
    assert_int_equal(m.device_tokens, 0);
    /* a peer may still read [1] (its L2 copy is valid and announced) */
    struct kvn_radix_l2_match lm;
    assert_int_equal(kvn_radix_match_l2(f->t, 0, T13, 2, 4, NULL, 0, &lm, NULL), 0);
    assert_int_equal(lm.tokens, 2);
    /* loading nodes are no eviction candidates, on either tier */
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.l1_evictable_pages, 0);
    assert_int_equal(st.pending_jobs, 1);
    assert_int_equal(st.pending_pages, 2);
    assert_int_equal(st.l1_used, 2);
    return p;
}

/* the model test's minimal case, acked ok: both fragments loaded, in order */
static void split_host_insert_while_loading_ack_ok(void **state)
{
    (void)state;
    struct loaded L = load_pending();
    struct fixture *f = L.f;
    uint64_t leaf13;
    struct kvn_radix_node_info p = split_by_host_insert(&L, &leaf13);

    uint32_t before = f->rec.n;
    assert_int_equal(kvn_radix_ack(f->t, L.load_ack, true, NULL), 0);
    fx_check(f);
    assert_int_equal(f->rec.n - before, 2);
    const int32_t P1[] = {1}, P2[] = {2};
    assert_stored(&f->rec.ev[before], KVN_MEDIUM_GPU, P1, 1, false, 0);
    assert_int_equal(f->rec.ev[before].hashes[0], L.h1);
    assert_stored(&f->rec.ev[before + 1], KVN_MEDIUM_GPU, P2, 1, true, L.h1);
    assert_int_equal(f->rec.ev[before + 1].hashes[0], L.h2);

    uint32_t slots[4];
    struct kvn_radix_match m;
    assert_int_equal(kvn_radix_match_prefix(f->t, 0, T12, 2, 5, slots, 4, &m, NULL), 0);
    assert_int_equal(m.device_tokens, 2);
    assert_int_equal(m.n_slots, 2);
    assert_int_equal(slots[0], 4);
    assert_int_equal(slots[1], 5);
    assert_int_equal(m.last_device_node, L.node12);
    m = fx_match(f, 0, T13, 2, 5);
    assert_int_equal(m.device_tokens, 1);
    assert_int_equal(m.host_tokens, 1);

    struct kvn_radix_node_info x;
    assert_int_equal(kvn_radix_node_info(f->t, p.id, &p, NULL), 0);
    assert_int_equal(kvn_radix_node_info(f->t, L.node12, &x, NULL), 0);
    assert_false(p.loading);
    assert_false(x.loading);
    assert_int_equal(p.pending_ack, 0);
    assert_int_equal(x.pending_ack, 0);
    assert_int_equal(p.lock_count, 0);
    assert_int_equal(x.lock_count, 0);
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.pending_jobs, 0);
    assert_int_equal(st.locked_nodes, 0);
    assert_int_equal(kvn_radix_ack(f->t, L.load_ack, true, NULL), -ENOENT);
    fx_free(f);
}

/* ... acked failed: both fragments give their slots back, nothing on GPU */
static void split_host_insert_while_loading_ack_failed(void **state)
{
    (void)state;
    struct loaded L = load_pending();
    struct fixture *f = L.f;
    uint64_t leaf13;
    struct kvn_radix_node_info p = split_by_host_insert(&L, &leaf13);

    uint32_t before = f->rec.n;
    assert_int_equal(kvn_radix_ack(f->t, L.load_ack, false, NULL), 0);
    fx_check(f);
    assert_int_equal(f->rec.n, before); /* a failed load announces nothing */
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.l1_used, 0);
    assert_int_equal(st.pending_jobs, 0);
    assert_int_equal(st.locked_nodes, 0);
    struct kvn_radix_match m = fx_match(f, 0, T12, 2, 5);
    assert_int_equal(m.device_tokens, 0);
    assert_int_equal(m.host_tokens, 2);
    struct kvn_radix_node_info x;
    assert_int_equal(kvn_radix_node_info(f->t, p.id, &p, NULL), 0);
    assert_int_equal(kvn_radix_node_info(f->t, L.node12, &x, NULL), 0);
    assert_false(p.in_l1 || p.loading || x.in_l1 || x.loading);
    assert_true(p.in_l2 && x.in_l2);
    /* the pages can be loaded again, across both fragments */
    uint32_t s67[] = {6, 7};
    struct kvn_radix_job_result jr;
    assert_int_equal(kvn_radix_load_back(f->t, 0, T12, 2, s67, 2, 6, &jr, NULL), 0);
    assert_int_equal(jr.n_pages, 2);
    assert_int_equal(jr.last_node, L.node12);
    fx_check(f);
    assert_int_equal(kvn_radix_ack(f->t, jr.ack_id, true, NULL), 0);
    m = fx_match(f, 0, T12, 2, 7);
    assert_int_equal(m.device_tokens, 2);
    fx_free(f);
}

/* the analogous insert: a loading node is a barrier, nothing is split */
static void insert_while_loading_is_a_barrier(void **state)
{
    (void)state;
    struct loaded L = load_pending();
    struct fixture *f = L.f;
    struct kvn_radix_stats st0 = fx_stats(f);
    uint32_t s23[] = {2, 3};
    struct kvn_radix_insert_result ir;
    fx_insert(f, 0, T13, 2, s23, 3, &ir);
    assert_int_equal(ir.inserted_tokens, 0);
    assert_int_equal(ir.prefix_tokens, 0);
    assert_int_equal(ir.new_tokens, 0);
    assert_int_equal(ir.backup_ack_id, 0);
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.nodes, st0.nodes);     /* not split */
    assert_int_equal(st.l1_used, st0.l1_used); /* slots 2, 3 not adopted */
    struct kvn_radix_node_info x;
    assert_int_equal(kvn_radix_node_info(f->t, L.node12, &x, NULL), 0);
    assert_int_equal(x.n_pages, 2);
    assert_true(x.loading);
    /* after the ack the same insert splits a settled node */
    assert_int_equal(kvn_radix_ack(f->t, L.load_ack, true, NULL), 0);
    fx_check(f);
    fx_insert(f, 0, T13, 2, s23, 4, &ir);
    assert_int_equal(ir.prefix_tokens, 1);
    assert_int_equal(ir.new_tokens, 1);
    assert_int_equal(kvn_radix_node_info(f->t, L.node12, &x, NULL), 0);
    assert_int_equal(x.n_pages, 1);
    assert_false(x.loading);
    fx_free(f);
}

/* the analogous insert split of a pending write: both fragments pending */
static void insert_split_while_writing(void **state)
{
    (void)state;
    struct fixture *f = fx_new(1, 8, 8, KVN_WRITE_THROUGH, false);
    uint32_t s01[] = {0, 1}, s_x2[] = {7, 2};
    struct kvn_radix_insert_result ir, ir2;
    fx_insert(f, 0, T12, 2, s01, 1, &ir);
    uint64_t wack = ir.backup_ack_id;
    assert_int_not_equal(wack, 0);
    fx_insert(f, 0, T13, 2, s_x2, 2, &ir2);
    assert_int_equal(ir2.prefix_tokens, 1);
    assert_int_equal(ir2.new_tokens, 1);
    assert_int_not_equal(ir2.backup_ack_id, 0); /* [3] alone: [1] is pending */
    assert_int_equal(ir2.backup_pages, 1);

    struct kvn_radix_node_info x, p;
    assert_int_equal(kvn_radix_node_info(f->t, ir.last_node, &x, NULL), 0);
    assert_int_equal(kvn_radix_node_info(f->t, x.parent_id, &p, NULL), 0);
    assert_int_equal(p.tokens[0], 1);
    assert_int_equal(p.pending_ack, wack);
    assert_int_equal(x.pending_ack, wack);
    assert_false(p.loading || x.loading);
    assert_true(p.in_l1 && p.in_l2);
    assert_int_equal(p.lock_count, 1);
    assert_int_equal(x.lock_count, 1);
    /* nothing valid in L2 before the ack, and nothing a peer may read */
    struct kvn_radix_match m = fx_match(f, 0, T12, 2, 3);
    assert_int_equal(m.device_tokens, 2);
    assert_int_equal(m.backed_tokens, 0);
    struct kvn_radix_l2_match lm;
    assert_int_equal(kvn_radix_match_l2(f->t, 0, T12, 2, 3, NULL, 0, &lm, NULL), 0);
    assert_int_equal(lm.tokens, 0);
    /* insert_host stops in front of the pending write: no split, no adoption */
    uint32_t pages[2];
    assert_int_equal(kvn_radix_reserve_l2(f->t, 2, pages, NULL), 0);
    struct kvn_radix_insert_result hr;
    assert_int_equal(kvn_radix_insert_host(f->t, 0, T12, 2, pages, 3, &hr, NULL), 0);
    assert_int_equal(hr.inserted_tokens, 0);
    assert_int_equal(kvn_radix_release_l2(f->t, pages, 2, NULL), 0);
    fx_check(f);

    /* the [3] write acked first is held back behind [1] */
    uint32_t before = f->rec.n;
    assert_int_equal(kvn_radix_ack(f->t, ir2.backup_ack_id, true, NULL), 0);
    assert_int_equal(f->rec.n, before);
    fx_check(f);
    assert_int_equal(kvn_radix_ack(f->t, wack, true, NULL), 0);
    fx_check(f);
    assert_int_equal(rec_count(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_CPU_PINNED), 3);
    const int32_t P1[] = {1}, P2[] = {2}, P3[] = {3};
    int64_t h1 = f->rec.ev[0].hashes[0];
    assert_stored(&f->rec.ev[before], KVN_MEDIUM_CPU_PINNED, P1, 1, false, 0);
    /* then the fragment [2] and the held-back [3], both children of [1] */
    const struct rec_event *a = &f->rec.ev[before + 1], *b = &f->rec.ev[before + 2];
    if (a->tokens[0] == 3) {
        const struct rec_event *t = a;
        a = b;
        b = t;
    }
    assert_stored(a, KVN_MEDIUM_CPU_PINNED, P2, 1, true, h1);
    assert_stored(b, KVN_MEDIUM_CPU_PINNED, P3, 1, true, h1);
    m = fx_match(f, 0, T12, 2, 4);
    assert_int_equal(m.backed_tokens, 2);
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.locked_nodes, 0);
    assert_int_equal(st.pending_jobs, 0);
    fx_free(f);
}

/* a node scheduled for demotion and split while its backup runs: once its
 * fragments are L1 leaves again, the ack demotes both, suffix first */
static void split_while_demotion_scheduled(void **state)
{
    (void)state;
    struct fixture *f = fx_new(1, 8, 8, KVN_WRITE_THROUGH_SELECTIVE, false);
    uint32_t s01[] = {0, 1}, s_x2[] = {7, 2};
    struct kvn_radix_insert_result ir, ir2;
    fx_insert(f, 0, T12, 2, s01, 1, &ir);
    assert_int_equal(ir.backup_ack_id, 0); /* selective: hit count 1 */
    /* protected: eviction cannot delete it, it schedules a backup instead */
    assert_int_equal(kvn_radix_protect(f->t, ir.last_node, NULL), 0);
    struct kvn_radix_evict_result er;
    assert_int_equal(kvn_radix_evict_l1(f->t, 2, &er, NULL), 0);
    assert_int_equal(er.freed_pages, 0);
    assert_int_equal(er.scheduled_pages, 2);
    assert_int_not_equal(er.ack_id, 0);
    fx_check(f);
    fx_insert(f, 0, T13, 2, s_x2, 2, &ir2); /* splits [1,2]: [1] | [2], new [3] */
    assert_int_equal(ir2.new_tokens, 1);
    struct kvn_radix_node_info x, p;
    assert_int_equal(kvn_radix_node_info(f->t, ir.last_node, &x, NULL), 0);
    assert_int_equal(kvn_radix_node_info(f->t, x.parent_id, &p, NULL), 0);
    assert_int_equal(p.pending_ack, er.ack_id);
    assert_int_equal(x.pending_ack, er.ack_id);
    assert_int_equal(p.protect_count, 1);
    assert_int_equal(p.own_protects, 0);
    assert_int_equal(x.own_protects, 1);
    /* [3] goes (no L2 copy, hit count 1, selective: deleted) */
    assert_int_equal(kvn_radix_evict_l1(f->t, 1, &er, NULL), 0);
    assert_int_equal(er.deleted_pages, 1);
    fx_check(f);

    uint32_t before = f->rec.n;
    assert_int_equal(kvn_radix_ack(f->t, p.pending_ack, true, NULL), 0);
    fx_check(f);
    /* CPU_PINNED [1], [2], then GPU removed [2], then [1] */
    assert_int_equal(f->rec.n - before, 4);
    assert_int_equal(f->rec.ev[before + 2].type, KVN_EV_BLOCK_REMOVED);
    assert_int_equal(f->rec.ev[before + 2].medium, KVN_MEDIUM_GPU);
    assert_int_equal(f->rec.ev[before + 2].hashes[0], x.hashes[0]);
    assert_int_equal(f->rec.ev[before + 3].type, KVN_EV_BLOCK_REMOVED);
    assert_int_equal(f->rec.ev[before + 3].medium, KVN_MEDIUM_GPU);
    assert_int_equal(f->rec.ev[before + 3].hashes[0], f->rec.ev[before].hashes[0]);
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.l1_used, 0);
    assert_int_equal(st.l2_used, 2);
    assert_int_equal(st.protected_nodes, 2);
    assert_int_equal(kvn_radix_unprotect(f->t, ir.last_node, NULL), 0);
    fx_free(f);
}

/* check() refuses what it must: an unknown tree, and it passes an empty one */
static void check_refuses_null(void **state)
{
    (void)state;
    struct kvn_err err;
    assert_int_equal(kvn_radix_check(NULL, &err), -EINVAL);
    assert_int_equal(err.code, -EINVAL);
    struct fixture *f = fx_new(1, 8, 8, KVN_WRITE_THROUGH, false);
    assert_int_equal(kvn_radix_check(f->t, &err), 0);
    fx_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(split_host_insert_while_loading_ack_ok),
        cmocka_unit_test(split_host_insert_while_loading_ack_failed),
        cmocka_unit_test(insert_while_loading_is_a_barrier),
        cmocka_unit_test(insert_split_while_writing),
        cmocka_unit_test(split_while_demotion_scheduled),
        cmocka_unit_test(check_refuses_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
