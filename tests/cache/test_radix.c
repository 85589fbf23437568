/*
 * test_radix.c - the radix index's behaviour: match / insert (prefix, split,
 * revive, namespaces), L1 eviction (LRU, LFU, demote vs delete), L2 eviction,
 * locks and protection, auto slot mode, write policies, load back, memory per
 * token; and every refusal of every public function ("a refused call changes
 * nothing": stats, events and the consistency check before and after).
 */
#include "cache_test_util.h"

#include "cache/page_hash.h"

static void seq(int32_t *t, size_t n, int32_t base)
{
    for (size_t i = 0; i < n; i++)
        t[i] = base + (int32_t)i;
}

static void insert_then_match(void **state)
{
    (void)state;
    struct fixture *f = fx_new(4, 64, 0, KVN_WRITE_THROUGH, false);
    int32_t t[14];
    seq(t, 14, 100);
    uint32_t slots[3] = {10, 20, 30};
    struct kvn_radix_insert_result ir;
    fx_insert(f, 0, t, 12, slots, 1, &ir);
    assert_int_equal(ir.new_tokens, 12);
    assert_int_equal(ir.inserted_tokens, 12);
    assert_int_equal(ir.prefix_tokens, 0);
    assert_int_not_equal(ir.last_node, 0);
    assert_int_equal(ir.backup_ack_id, 0); /* no L2 tier */
    /* one GPU BlockStored per page, hashes = the SHA-256 chain */
    int64_t eh[3];
    assert_int_equal(kvn_page_hash_chain(NULL, t, 12, 4, NULL, eh, NULL), 3);
    assert_int_equal(f->rec.n, 3);
    assert_stored(&f->rec.ev[0], KVN_MEDIUM_GPU, t, 4, false, 0);
    assert_stored(&f->rec.ev[1], KVN_MEDIUM_GPU, t + 4, 4, true, eh[0]);
    assert_stored(&f->rec.ev[2], KVN_MEDIUM_GPU, t + 8, 4, true, eh[1]);
    for (int i = 0; i < 3; i++)
        assert_int_equal(f->rec.ev[i].hashes[0], eh[i]);

    uint32_t out[8];
    struct kvn_radix_match m;
    assert_int_equal(kvn_radix_match_prefix(f->t, 0, t, 14, 2, out, 8, &m, NULL), 0);
    assert_int_equal(m.device_tokens, 12); /* partial tail ignored */
    assert_int_equal(m.host_tokens, 0);
    assert_int_equal(m.n_slots, 3);
    assert_int_equal(out[0], 10);
    assert_int_equal(out[2], 30);
    assert_int_equal(m.last_device_node, ir.last_node);
    /* a shorter match ends inside the node: no split, same node */
    assert_int_equal(kvn_radix_match_prefix(f->t, 0, t, 7, 3, out, 1, &m, NULL), 0);
    assert_int_equal(m.device_tokens, 4);
    assert_int_equal(m.n_slots, 1);
    assert_int_equal(m.last_device_node, ir.last_node);
    assert_int_equal(fx_stats(f).nodes, 1);
    /* diverging inside the second page */
    t[5] = -7;
    m = fx_match(f, 0, t, 12, 4);
    assert_int_equal(m.device_tokens, 4);
    m = fx_match(f, 0, t + 4, 8, 5);
    assert_int_equal(m.device_tokens, 0);
    assert_int_equal(m.last_device_node, 0);
    /* match emits nothing */
    assert_int_equal(f->rec.n, 3);
    fx_free(f);
}

static void insert_prefix_slots_not_adopted(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 16, 0, KVN_WRITE_THROUGH, false);
    int32_t t[6] = {1, 2, 3, 4, 5, 6};
    uint32_t a[] = {0, 1}, b[] = {5, 6, 2};
    struct kvn_radix_insert_result ir;
    fx_insert(f, 0, t, 4, a, 1, &ir);
    fx_insert(f, 0, t, 6, b, 2, &ir);
    assert_int_equal(ir.prefix_tokens, 4);
    assert_int_equal(ir.new_tokens, 2);
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.l1_used, 3);
    assert_int_equal(st.nodes, 2);
    /* slots 5 and 6 still belong to the caller: adopting them later works */
    int32_t u[4] = {9, 9, 8, 8};
    uint32_t c[] = {5, 6};
    fx_insert(f, 0, u, 4, c, 3, &ir);
    assert_int_equal(ir.new_tokens, 4);
    /* re-inserting an identical sequence adopts nothing */
    fx_insert(f, 0, t, 6, b, 4, &ir);
    assert_int_equal(ir.prefix_tokens, 6);
    assert_int_equal(ir.new_tokens + ir.revived_tokens, 0);
    assert_int_equal(fx_stats(f).l1_used, 5);
    fx_free(f);
}

static void namespaces_are_separate(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 16, 0, KVN_WRITE_THROUGH, false);
    int32_t t[4] = {1, 2, 3, 4};
    uint32_t a[] = {0, 1}, b[] = {2, 3};
    struct kvn_radix_insert_result ir;
    struct kvn_radix_match m = fx_match(f, 7, t, 4, 1);
    assert_int_equal(m.device_tokens, 0); /* unknown namespace: a miss */
    fx_insert(f, KVN_RADIX_NS_DEFAULT, t, 4, a, 1, &ir);
    m = fx_match(f, 7, t, 4, 2);
    assert_int_equal(m.device_tokens, 0);
    fx_insert(f, 7, t, 4, b, 2, &ir);
    assert_int_equal(ir.new_tokens, 4); /* not shared with namespace 0 */
    uint32_t out[2];
    assert_int_equal(kvn_radix_match_prefix(f->t, 7, t, 4, 3, out, 2, &m, NULL), 0);
    assert_int_equal(out[0], 2);
    assert_int_equal(kvn_radix_match_prefix(f->t, 0, t, 4, 3, out, 2, &m, NULL), 0);
    assert_int_equal(out[0], 0);
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.namespaces, 2);
    assert_int_equal(st.nodes, 2);
    /* namespace is not part of the hash (SGLang), lora_id None */
    assert_int_equal(f->rec.ev[0].hashes[0], f->rec.ev[2].hashes[0]);
    struct kvn_radix_node_info info;
    assert_int_equal(kvn_radix_node_info(f->t, ir.last_node, &info, NULL), 0);
    assert_int_equal(info.ns, 7);
    fx_free(f);
}

static void lru_evicts_oldest_leaf(void **state)
{
    (void)state;
    struct fixture *f = fx_new(1, 16, 0, KVN_WRITE_THROUGH, false);
    int32_t a[] = {1}, b[] = {2}, c[] = {3};
    struct kvn_radix_insert_result ia, ib, ic;
    fx_insert(f, 0, a, 1, NULL, 1, &ia);
    fx_insert(f, 0, b, 1, NULL, 2, &ib);
    fx_insert(f, 0, c, 1, NULL, 3, &ic);
    (void)fx_match(f, 0, a, 1, 4); /* a is now the most recent */
    struct kvn_radix_evict_result er;
    uint32_t before = f->rec.n;
    assert_int_equal(kvn_radix_evict_l1(f->t, 1, &er, NULL), 0);
    assert_int_equal(er.freed_pages, 1);
    assert_int_equal(er.deleted_pages, 1); /* no L2 copy: deleted */
    assert_int_equal(f->rec.n - before, 1);
    assert_int_equal(f->rec.ev[before].type, KVN_EV_BLOCK_REMOVED);
    assert_int_equal(f->rec.ev[before].medium, KVN_MEDIUM_GPU);
    assert_int_equal(f->rec.ev[before].hashes[0], f->rec.ev[1].hashes[0]); /* b */
    assert_int_equal(kvn_radix_lock(f->t, ib.last_node, NULL), -ENOENT);
    assert_int_equal(kvn_radix_evict_l1(f->t, 1, &er, NULL), 0);
    assert_int_equal(fx_match(f, 0, c, 1, 5).device_tokens, 0);
    assert_int_equal(fx_match(f, 0, a, 1, 5).device_tokens, 1);
    fx_free(f);
}

/* keys normally grow (lazy heap); a tick going backwards is honoured at once */
static void ticks_going_backwards(void **state)
{
    (void)state;
    struct fixture *f = fx_new(1, 16, 0, KVN_WRITE_THROUGH, false);
    int32_t a[] = {1}, b[] = {2}, c[] = {3};
    struct kvn_radix_insert_result r;
    fx_insert(f, 0, a, 1, NULL, 10, &r);
    fx_insert(f, 0, b, 1, NULL, 20, &r);
    fx_insert(f, 0, c, 1, NULL, 30, &r);
    (void)fx_match(f, 0, a, 1, 40); /* a grows: lazy */
    (void)fx_match(f, 0, c, 1, 5);  /* c goes back: now the oldest */
    fx_check(f);
    struct kvn_radix_evict_result er;
    assert_int_equal(kvn_radix_evict_l1(f->t, 1, &er, NULL), 0);
    assert_int_equal(fx_match(f, 0, c, 1, 41).device_tokens, 0);
    assert_int_equal(kvn_radix_evict_l1(f->t, 1, &er, NULL), 0);
    assert_int_equal(fx_match(f, 0, b, 1, 42).device_tokens, 0);
    assert_int_equal(fx_match(f, 0, a, 1, 43).device_tokens, 1);
    fx_free(f);
}

static void lfu_evicts_least_hit(void **state)
{
    (void)state;
    struct fixture *f = fx_new(1, 16, 0, KVN_WRITE_THROUGH, false);
    f->cfg.evict_policy = KVN_EVICT_LFU;
    kvn_radix_destroy(f->t);
    assert_int_equal(kvn_radix_create(&f->cfg, &f->t, NULL), 0);
    int32_t a[] = {1}, b[] = {2}, c[] = {3};
    struct kvn_radix_insert_result r;
    for (int i = 0; i < 3; i++)
        fx_insert(f, 0, a, 1, NULL, 1 + (uint64_t)i, &r);
    fx_insert(f, 0, b, 1, NULL, 10, &r); /* newest, but hit once */
    fx_insert(f, 0, c, 1, NULL, 4, &r);
    fx_insert(f, 0, c, 1, NULL, 5, &r);
    struct kvn_radix_evict_result er;
    assert_int_equal(kvn_radix_evict_l1(f->t, 1, &er, NULL), 0);
    assert_int_equal(fx_match(f, 0, b, 1, 11).device_tokens, 0);
    assert_int_equal(kvn_radix_evict_l1(f->t, 1, &er, NULL), 0);
    assert_int_equal(fx_match(f, 0, c, 1, 11).device_tokens, 0);
    assert_int_equal(fx_match(f, 0, a, 1, 11).device_tokens, 1);
    fx_free(f);
}

static void interior_nodes_wait_for_children(void **state)
{
    (void)state;
    struct fixture *f = fx_new(1, 16, 0, KVN_WRITE_THROUGH, false);
    int32_t t1[] = {1, 2, 3}, t2[] = {1, 2, 4};
    struct kvn_radix_insert_result r;
    fx_insert(f, 0, t1, 3, NULL, 1, &r);
    fx_insert(f, 0, t2, 3, NULL, 2, &r); /* [1,2] -> {[3],[4]} */
    assert_int_equal(fx_stats(f).nodes, 3);
    struct kvn_radix_evict_result er;
    /* [1,2] is oldest-touched? no: both inserts touched it; leaves go first */
    assert_int_equal(kvn_radix_evict_l1(f->t, 1, &er, NULL), 0);
    assert_int_equal(er.freed_pages, 1);
    assert_int_equal(fx_match(f, 0, t1, 3, 3).device_tokens, 2);
    assert_int_equal(kvn_radix_evict_l1(f->t, 3, &er, NULL), 0);
    assert_int_equal(er.freed_pages, 3);
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.nodes, 0);
    assert_int_equal(st.l1_used, 0);
    /* an empty tree evicts nothing, without error */
    assert_int_equal(kvn_radix_evict_l1(f->t, 3, &er, NULL), 0);
    assert_int_equal(er.freed_pages, 0);
    fx_free(f);
}

static void lock_blocks_eviction(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 16, 0, KVN_WRITE_THROUGH, false);
    int32_t t[6] = {1, 2, 3, 4, 5, 6}, u[4] = {1, 2, 7, 7};
    struct kvn_radix_insert_result r, r2;
    fx_insert(f, 0, t, 6, NULL, 1, &r);
    fx_insert(f, 0, u, 4, NULL, 2, &r2);
    assert_int_equal(kvn_radix_lock(f->t, r.last_node, NULL), 0);
    assert_int_equal(kvn_radix_lock(f->t, r.last_node, NULL), 0); /* twice: counted */
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.locked_nodes, 2); /* [3..6] and [1,2] */
    struct kvn_radix_evict_result er;
    assert_int_equal(kvn_radix_evict_l1(f->t, 100, &er, NULL), 0);
    assert_int_equal(er.freed_pages, 1); /* only the unlocked leaf [7,7] */
    assert_int_equal(fx_match(f, 0, t, 6, 3).device_tokens, 6);
    assert_int_equal(kvn_radix_unlock(f->t, r.last_node, NULL), 0);
    assert_int_equal(kvn_radix_evict_l1(f->t, 100, &er, NULL), 0);
    assert_int_equal(er.freed_pages, 0);
    assert_int_equal(kvn_radix_unlock(f->t, r.last_node, NULL), 0);
    struct kvn_err err;
    assert_int_equal(kvn_radix_unlock(f->t, r.last_node, &err), -EINVAL); /* double unlock */
    assert_int_equal(err.code, -EINVAL);
    assert_int_equal(fx_stats(f).locked_nodes, 0);
    assert_int_equal(kvn_radix_evict_l1(f->t, 100, &er, NULL), 0);
    assert_int_equal(er.freed_pages, 3);
    assert_int_equal(kvn_radix_unlock(f->t, r.last_node, NULL), -ENOENT); /* gone */
    fx_free(f);
}

/* back up, ack, demote: the node stays with its L2 copy */
static void backed(struct fixture *f, const int32_t *t, size_t n, uint64_t tick,
                   struct kvn_radix_insert_result *r)
{
    fx_insert(f, 0, t, n, NULL, tick, r);
    assert_int_not_equal(r->backup_ack_id, 0);
    assert_int_equal(kvn_radix_ack(f->t, r->backup_ack_id, true, NULL), 0);
}

static void demote_revive_and_l2_eviction(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 16, 16, KVN_WRITE_THROUGH, false);
    int32_t t[6] = {1, 2, 3, 4, 5, 6};
    struct kvn_radix_insert_result r;
    backed(f, t, 6, 1, &r);
    struct kvn_radix_evict_result er;
    assert_int_equal(kvn_radix_evict_l1(f->t, 3, &er, NULL), 0);
    assert_int_equal(er.demoted_pages, 3);
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.l1_used, 0);
    assert_int_equal(st.l2_used, 3);
    assert_int_equal(st.l2_evictable_pages, 3);
    struct kvn_radix_match m = fx_match(f, 0, t, 6, 2);
    assert_int_equal(m.host_tokens, 6);
    assert_int_equal(m.last_host_node, r.last_node);

    /* revive: an insert of the same tokens gives them L1 slots again */
    uint32_t before = f->rec.n;
    uint32_t slots[] = {4, 5, 6};
    struct kvn_radix_insert_result r2;
    fx_insert(f, 0, t, 4, slots, 3, &r2); /* ends inside the L2-only node: split */
    assert_int_equal(r2.revived_tokens, 4);
    assert_int_equal(r2.new_tokens, 0);
    assert_int_equal(r2.backup_ack_id, 0); /* already backed */
    assert_int_equal(rec_count(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_GPU), 3 + 2);
    assert_int_equal(f->rec.n - before, 2);
    m = fx_match(f, 0, t, 6, 4);
    assert_int_equal(m.device_tokens, 4);
    assert_int_equal(m.host_tokens, 2);
    assert_int_equal(m.backed_tokens, 6);
    assert_int_equal(fx_stats(f).nodes, 2);

    /* protection pins L2 */
    assert_int_equal(kvn_radix_protect(f->t, r.last_node, NULL), 0);
    assert_int_equal(kvn_radix_evict_l2(f->t, 10, &er, NULL), 0);
    assert_int_equal(er.freed_pages, 0);
    assert_int_equal(kvn_radix_unprotect(f->t, r.last_node, NULL), 0);
    assert_int_equal(kvn_radix_unprotect(f->t, r.last_node, NULL), -EINVAL);
    before = f->rec.n;
    assert_int_equal(kvn_radix_evict_l2(f->t, 10, &er, NULL), 0);
    assert_int_equal(er.freed_pages, 1); /* [5,6]; [1..4] is in L1 */
    assert_int_equal(f->rec.n - before, 1);
    assert_int_equal(f->rec.ev[before].type, KVN_EV_BLOCK_REMOVED);
    assert_int_equal(f->rec.ev[before].medium, KVN_MEDIUM_CPU_PINNED);
    st = fx_stats(f);
    assert_int_equal(st.nodes, 1);
    assert_int_equal(st.l2_used, 2);
    /* demote [1..4], then L2 eviction removes it entirely */
    assert_int_equal(kvn_radix_evict_l1(f->t, 2, &er, NULL), 0);
    assert_int_equal(er.demoted_pages, 2);
    assert_int_equal(kvn_radix_evict_l2(f->t, 2, &er, NULL), 0);
    assert_int_equal(er.freed_pages, 2);
    st = fx_stats(f);
    assert_int_equal(st.nodes, 0);
    assert_int_equal(st.l2_used, 0);
    assert_int_equal(st.l1_used, 0);
    fx_free(f);
}

static void selective_threshold_two(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 16, 16, KVN_WRITE_THROUGH_SELECTIVE, false);
    int32_t t[4] = {1, 2, 3, 4};
    struct kvn_radix_insert_result r;
    fx_insert(f, 0, t, 4, NULL, 1, &r);
    assert_int_equal(r.backup_ack_id, 0);
    (void)fx_match(f, 0, t, 4, 2); /* a match does not count as a hit */
    fx_insert(f, 0, t, 4, NULL, 3, &r);
    assert_int_not_equal(r.backup_ack_id, 0);
    assert_int_equal(r.backup_pages, 2);
    fx_insert(f, 0, t, 4, NULL, 4, &r); /* pending: no second job */
    assert_int_equal(r.backup_ack_id, 0);
    assert_int_equal(f->jobs.n, 1);
    fx_free(f);
}

static void write_backup_covers_ancestors(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 16, 16, KVN_WRITE_BACK, false);
    int32_t t[6] = {1, 2, 3, 4, 5, 6};
    struct kvn_radix_insert_result r1, r2;
    fx_insert(f, 0, t, 2, NULL, 1, &r1);
    fx_insert(f, 0, t, 6, NULL, 2, &r2);
    struct kvn_radix_job_result jr;
    assert_int_equal(kvn_radix_write_backup(f->t, r2.last_node, &jr, NULL), 0);
    assert_int_equal(jr.n_pages, 3); /* [1,2] and [3..6] */
    assert_int_equal(kvn_radix_write_backup(f->t, r2.last_node, &jr, NULL), 0);
    assert_int_equal(jr.ack_id, 0); /* pending already: nothing to do */
    assert_int_equal(f->jobs.n, 1);
    assert_int_equal(kvn_radix_ack(f->t, f->jobs.j[0].ack, true, NULL), 0);
    assert_int_equal(rec_count(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_CPU_PINNED), 3);
    assert_int_equal(fx_match(f, 0, t, 6, 3).backed_tokens, 6);
    fx_free(f);
}

static void auto_mode_evicts_to_fit(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 4, 0, KVN_WRITE_THROUGH, false);
    int32_t a[8], b[4], c[10];
    seq(a, 8, 0);
    seq(b, 4, 100);
    seq(c, 10, 200);
    struct kvn_radix_insert_result r;
    fx_insert(f, 0, a, 8, NULL, 1, &r);
    assert_int_equal(fx_stats(f).l1_free, 0);
    fx_insert(f, 0, b, 4, NULL, 2, &r);
    assert_int_equal(r.evicted_pages, 4); /* whole node [a] went */
    assert_int_equal(r.new_tokens, 4);
    /* 5 pages never fit in 4 slots */
    struct kvn_radix_stats st0 = fx_stats(f);
    struct kvn_err err;
    assert_int_equal(kvn_radix_insert(f->t, 0, c, 10, NULL, 3, &r, &err), -ENOSPC);
    assert_int_equal(err.code, -ENOSPC);
    struct kvn_radix_stats st1 = fx_stats(f);
    assert_stats_equal(&st0, &st1);
    /* locked: not evictable, so no room */
    assert_int_equal(kvn_radix_lock(f->t, r.last_node, NULL), 0);
    int32_t d[8];
    seq(d, 8, 300);
    st0 = fx_stats(f);
    assert_int_equal(kvn_radix_insert(f->t, 0, d, 8, NULL, 4, &r, &err), -ENOSPC);
    st1 = fx_stats(f);
    assert_stats_equal(&st0, &st1);
    fx_check(f);
    fx_free(f);
}

/* extending a sequence must not evict its own prefix in auto mode */
static void auto_mode_keeps_own_path(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 4, 0, KVN_WRITE_THROUGH, false);
    int32_t a[8], x[4];
    seq(a, 8, 0);
    seq(x, 4, 500);
    struct kvn_radix_insert_result r;
    fx_insert(f, 0, x, 4, NULL, 1, &r); /* 2 pages, oldest */
    fx_insert(f, 0, a, 4, NULL, 2, &r); /* 2 pages */
    fx_insert(f, 0, a, 8, NULL, 3, &r); /* needs 2 more: x must go, not a's prefix */
    assert_int_equal(r.prefix_tokens, 4);
    assert_int_equal(r.new_tokens, 4);
    assert_int_equal(fx_match(f, 0, a, 8, 4).device_tokens, 8);
    assert_int_equal(fx_match(f, 0, x, 4, 4).device_tokens, 0);
    fx_free(f);
}

static void load_back_partial_and_failed(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 16, 16, KVN_WRITE_THROUGH, false);
    int32_t t[8];
    seq(t, 8, 1);
    struct kvn_radix_insert_result r;
    backed(f, t, 8, 1, &r);
    struct kvn_radix_evict_result er;
    assert_int_equal(kvn_radix_evict_l1(f->t, 4, &er, NULL), 0);
    assert_int_equal(fx_match(f, 0, t, 8, 2).host_tokens, 8);
    /* explicit: 1 slot -> loads the first page only (split) */
    struct kvn_radix_job_result jr;
    uint32_t s9[] = {9};
    assert_int_equal(kvn_radix_load_back(f->t, 0, t, 8, s9, 1, 3, &jr, NULL), 0);
    assert_int_equal(jr.n_pages, 1);
    assert_int_equal(fx_stats(f).nodes, 2);
    fx_check(f);
    /* a failed load: slot freed, nothing published, still host-only */
    uint32_t before = f->rec.n;
    assert_int_equal(kvn_radix_ack(f->t, jr.ack_id, false, NULL), 0);
    assert_int_equal(f->rec.n, before);
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.l1_used, 0);
    assert_int_equal(st.locked_nodes, 0);
    assert_int_equal(fx_match(f, 0, t, 8, 4).host_tokens, 8);
    /* auto mode: all of it */
    assert_int_equal(kvn_radix_load_back(f->t, 0, t, 8, NULL, 0, 5, &jr, NULL), 0);
    assert_int_equal(jr.n_pages, 4);
    assert_int_equal(jr.prefix_tokens, 0);
    /* while loading, an insert stops in front of it (barrier) */
    int32_t longer[10];
    seq(longer, 10, 1);
    fx_insert(f, 0, longer, 10, NULL, 6, &r);
    assert_int_equal(r.inserted_tokens, 0);
    assert_int_equal(kvn_radix_ack(f->t, jr.ack_id, true, NULL), 0);
    assert_int_equal(fx_match(f, 0, t, 8, 7).device_tokens, 8);
    /* nothing left to load */
    assert_int_equal(kvn_radix_load_back(f->t, 0, t, 8, NULL, 0, 8, &jr, NULL), 0);
    assert_int_equal(jr.ack_id, 0);
    assert_int_equal(jr.prefix_tokens, 8);
    fx_free(f);
}

static void write_through_skipped_when_l2_full(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 16, 2, KVN_WRITE_THROUGH, false);
    int32_t a[4], b[4];
    seq(a, 4, 0);
    seq(b, 4, 100);
    struct kvn_radix_insert_result r;
    fx_insert(f, 0, a, 4, NULL, 1, &r);
    assert_int_equal(r.backup_pages, 2);
    fx_insert(f, 0, b, 4, NULL, 2, &r); /* L2 full, nothing evictable */
    assert_int_equal(r.backup_ack_id, 0);
    assert_int_equal(fx_stats(f).backups_skipped, 1);
    fx_free(f);
}

static void memory_per_token(void **state)
{
    (void)state;
    struct fixture *f = fx_new(16, 1u << 17, 0, KVN_WRITE_THROUGH, false);
    f->cfg.sink.emit = NULL;
    kvn_radix_destroy(f->t);
    assert_int_equal(kvn_radix_create(&f->cfg, &f->t, NULL), 0);
    struct kvn_radix_stats st0 = fx_stats(f);
    enum { SEQ = 1024 };
    int32_t *t = malloc(SEQ * sizeof(int32_t));
    assert_non_null(t);
    uint32_t x = 1;
    struct kvn_radix_insert_result r;
    for (int s = 0; s < 100; s++) {
        /* sequences share a prefix of s % 8 * 128 tokens */
        for (int i = 0; i < SEQ; i++) {
            x = x * 1664525u + 1013904223u;
            t[i] = i < (s % 8) * 128 ? i : (int32_t)(x >> 8);
        }
        assert_int_equal(kvn_radix_insert(f->t, 0, t, SEQ, NULL, (uint64_t)s, &r, NULL), 0);
    }
    free(t);
    struct kvn_radix_stats st = fx_stats(f);
    double per = (double)(st.index_bytes - st0.index_bytes) / (double)st.cached_tokens;
    printf("index memory: %.2f bytes per cached token (page 16, %llu tokens, %llu nodes)\n", per,
           (unsigned long long)st.cached_tokens, (unsigned long long)st.nodes);
    assert_true(per <= 16.0);
    fx_free(f);
}

static void storage_failure_and_disk_removal(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 16, 16, KVN_WRITE_THROUGH, true);
    int32_t a[4] = {1, 2, 3, 4}, b[6] = {1, 2, 3, 4, 5, 6};
    struct kvn_radix_insert_result r;
    f->store.rc = -EIO; /* the first fragment is not stored */
    backed(f, a, 4, 1, &r);
    assert_int_equal(f->store.n, 1);
    assert_int_equal(rec_count(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_DISK), 0);
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.storage_failures, 1);
    struct kvn_radix_node_info info;
    assert_int_equal(kvn_radix_node_info(f->t, r.last_node, &info, NULL), 0);
    assert_false(info.in_l3);
    /* its child is not handed to storage: the DISK chain would have a hole */
    f->store.rc = 0;
    backed(f, b, 6, 2, &r);
    assert_int_equal(f->store.n, 1);
    assert_int_equal(rec_count(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_DISK), 0);
    fx_free(f);

    /* stored, then deleted by L2 eviction: DISK BlockRemoved with the CPU one */
    f = fx_new(2, 16, 16, KVN_WRITE_THROUGH, true);
    backed(f, a, 4, 1, &r);
    assert_int_equal(rec_count(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_DISK), 2);
    assert_int_equal(kvn_radix_node_info(f->t, r.last_node, &info, NULL), 0);
    assert_true(info.in_l3);
    struct kvn_radix_evict_result er;
    assert_int_equal(kvn_radix_evict_l1(f->t, 2, &er, NULL), 0);
    assert_int_equal(kvn_radix_evict_l2(f->t, 2, &er, NULL), 0);
    assert_int_equal(er.freed_pages, 2);
    assert_int_equal(rec_count(&f->rec, KVN_EV_BLOCK_REMOVED, KVN_MEDIUM_CPU_PINNED), 1);
    assert_int_equal(rec_count(&f->rec, KVN_EV_BLOCK_REMOVED, KVN_MEDIUM_DISK), 1);
    int d = rec_find(&f->rec, KVN_EV_BLOCK_REMOVED, KVN_MEDIUM_DISK, 0);
    assert_int_equal(f->rec.ev[d].n_hashes, 2);
    fx_free(f);
}

static void protected_node_is_never_deleted(void **state)
{
    (void)state;
    /* no host tier: a protected L1-only leaf cannot be backed up, so it stays */
    struct fixture *f = fx_new(2, 16, 0, KVN_WRITE_THROUGH, false);
    int32_t a[4] = {1, 2, 3, 4};
    struct kvn_radix_insert_result r;
    fx_insert(f, 0, a, 4, NULL, 1, &r);
    assert_int_equal(kvn_radix_protect(f->t, r.last_node, NULL), 0);
    assert_int_equal(fx_stats(f).l1_evictable_pages, 0);
    struct kvn_radix_evict_result er;
    assert_int_equal(kvn_radix_evict_l1(f->t, 10, &er, NULL), 0);
    assert_int_equal(er.freed_pages, 0);
    assert_int_equal(kvn_radix_unprotect(f->t, r.last_node, NULL), 0);
    assert_int_equal(kvn_radix_evict_l1(f->t, 10, &er, NULL), 0);
    assert_int_equal(er.deleted_pages, 2);
    fx_free(f);

    /* with a host tier: it is backed up first and demoted on the ack */
    f = fx_new(2, 16, 16, KVN_WRITE_THROUGH_SELECTIVE, false);
    fx_insert(f, 0, a, 4, NULL, 1, &r);
    assert_int_equal(kvn_radix_protect(f->t, r.last_node, NULL), 0);
    assert_int_equal(kvn_radix_evict_l1(f->t, 10, &er, NULL), 0);
    assert_int_equal(er.freed_pages, 0);
    assert_int_equal(er.scheduled_pages, 2);
    assert_int_equal(kvn_radix_ack(f->t, er.ack_id, true, NULL), 0);
    struct kvn_radix_node_info info;
    assert_int_equal(kvn_radix_node_info(f->t, r.last_node, &info, NULL), 0);
    assert_false(info.in_l1);
    assert_true(info.in_l2);
    assert_int_equal(kvn_radix_evict_l2(f->t, 10, &er, NULL), 0);
    assert_int_equal(er.freed_pages, 0); /* protected */
    assert_int_equal(kvn_radix_unprotect(f->t, r.last_node, NULL), 0);
    fx_free(f);
}

static void write_back_without_room_deletes(void **state)
{
    (void)state;
    /* write_back with a full, unevictable L2: eviction cannot back up, drops */
    struct fixture *f = fx_new(2, 16, 2, KVN_WRITE_BACK, false);
    int32_t a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8};
    struct kvn_radix_insert_result ra, rb;
    fx_insert(f, 0, a, 4, NULL, 1, &ra);
    fx_insert(f, 0, b, 4, NULL, 2, &rb);
    struct kvn_radix_job_result jr;
    assert_int_equal(kvn_radix_write_backup(f->t, rb.last_node, &jr, NULL), 0); /* L2 full */
    struct kvn_radix_evict_result er;
    assert_int_equal(kvn_radix_evict_l1(f->t, 2, &er, NULL), 0);
    assert_int_equal(er.deleted_pages, 2); /* a: no room for its backup */
    assert_int_equal(er.scheduled_pages, 0);
    assert_int_equal(fx_match(f, 0, a, 4, 3).device_tokens, 0);
    assert_int_equal(kvn_radix_ack(f->t, jr.ack_id, true, NULL), 0);
    fx_free(f);
}

/* thousands of nodes in many namespaces: every table and heap grows and rehashes */
static void big_tree_grows_every_table(void **state)
{
    (void)state;
    enum { NS = 40, PER_NS = 120, LEN = 6 };
    struct fixture *f = fx_new(1, NS * PER_NS * LEN, 0, KVN_WRITE_THROUGH, false);
    f->cfg.sink.emit = NULL;
    kvn_radix_destroy(f->t);
    assert_int_equal(kvn_radix_create(&f->cfg, &f->t, NULL), 0);
    int32_t t[LEN];
    struct kvn_radix_insert_result r;
    for (uint64_t ns = 0; ns < NS; ns++)
        for (int i = 0; i < PER_NS; i++) {
            /* i's base-5 digits: sequences share prefixes, every one branches */
            int v = i;
            for (int k = 0; k < LEN; k++) {
                t[k] = v % 5;
                v /= 5;
            }
            assert_int_equal(kvn_radix_insert(f->t, ns, t, LEN, NULL, ns * PER_NS + i, &r, NULL),
                             0);
        }
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.namespaces, NS);
    assert_true(st.nodes > 2000); /* several slab chunks, child map and heaps rehashed */
    fx_check(f);
    for (uint64_t ns = 0; ns < NS; ns += 7)
        for (int i = 0; i < PER_NS; i += 11) {
            int v = i;
            for (int k = 0; k < LEN; k++) {
                t[k] = v % 5;
                v /= 5;
            }
            assert_int_equal(fx_match(f, ns, t, LEN, 1u << 20).device_tokens, LEN);
        }
    struct kvn_radix_evict_result er;
    assert_int_equal(kvn_radix_evict_l1(f->t, UINT32_MAX, &er, NULL), 0);
    st = fx_stats(f);
    assert_int_equal(st.nodes, 0);
    assert_int_equal(st.l1_used, 0);
    fx_check(f);
    assert_int_equal(kvn_radix_reset(f->t, NULL), 0);
    fx_free(f);
}

static void empty_insert_and_load_back(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 4, 8, KVN_WRITE_THROUGH, false);
    int32_t t[2] = {1, 2};
    struct kvn_radix_insert_result r;
    struct kvn_radix_stats st0 = fx_stats(f);
    assert_int_equal(kvn_radix_insert(f->t, 0, t, 0, NULL, 1, &r, NULL), 0);
    assert_int_equal(r.inserted_tokens, 0);
    assert_int_equal(r.last_node, 0);
    assert_int_equal(kvn_radix_insert(f->t, 0, NULL, 0, NULL, 1, &r, NULL), 0);
    struct kvn_radix_job_result jr;
    assert_int_equal(kvn_radix_load_back(f->t, 0, t, 2, NULL, 0, 1, &jr, NULL), 0); /* no ns */
    assert_int_equal(jr.ack_id, 0);
    struct kvn_radix_stats st1 = fx_stats(f);
    assert_stats_equal(&st0, &st1);
    fx_free(f);
}

static void load_back_submit_refused(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 2, 8, KVN_WRITE_THROUGH, false);
    int32_t t[4] = {1, 2, 3, 4};
    struct kvn_radix_insert_result r;
    backed(f, t, 4, 1, &r);
    struct kvn_radix_evict_result er;
    assert_int_equal(kvn_radix_evict_l1(f->t, 2, &er, NULL), 0);
    assert_int_equal(fx_match(f, 0, t, 4, 3).host_tokens, 4);
    /* the copy submitter refuses the load: rolled back, its code returned */
    f->jobs.fail_next = -EAGAIN;
    struct kvn_radix_job_result jr;
    struct kvn_radix_stats st0 = fx_stats(f);
    uint32_t ev0 = f->rec.n;
    struct kvn_err err;
    assert_int_equal(kvn_radix_load_back(f->t, 0, t, 4, NULL, 0, 4, &jr, &err), -EAGAIN);
    assert_int_equal(err.code, -EAGAIN);
    struct kvn_radix_stats st1 = fx_stats(f);
    assert_int_equal(st1.copy_submit_failures, st0.copy_submit_failures + 1);
    assert_int_equal(st1.l1_used, st0.l1_used);
    assert_int_equal(st1.pending_jobs, 0);
    assert_int_equal(st1.locked_nodes, 0);
    assert_int_equal(f->rec.n, ev0);
    assert_int_equal(fx_match(f, 0, t, 4, 5).host_tokens, 4);
    fx_check(f);
    /* and then it works */
    assert_int_equal(kvn_radix_load_back(f->t, 0, t, 4, NULL, 0, 6, &jr, NULL), 0);
    assert_int_equal(jr.n_pages, 2);
    assert_int_equal(kvn_radix_ack(f->t, jr.ack_id, true, NULL), 0);
    assert_int_equal(fx_match(f, 0, t, 4, 7).device_tokens, 4);
    fx_free(f);
}

/* ---------------------------------------------------------------- refusals */

#define REFUSED(f, call, want_)                                                                    \
    do {                                                                                           \
        struct kvn_radix_stats s0_ = fx_stats(f);                                                  \
        uint32_t ev0_ = (f)->rec.n, jobs0_ = (f)->jobs.n;                                          \
        struct kvn_err err;                                                                        \
        memset(&err, 0, sizeof(err));                                                              \
        int rc_ = (call);                                                                          \
        assert_int_equal(rc_, want_);                                                              \
        assert_int_equal(err.code, want_);                                                         \
        assert_true(strlen(err.msg) > 0);                                                          \
        struct kvn_radix_stats s1_ = fx_stats(f);                                                  \
        assert_stats_equal(&s0_, &s1_);                                                            \
        assert_int_equal((f)->rec.n, ev0_);                                                        \
        assert_int_equal((f)->jobs.n, jobs0_);                                                     \
        fx_check(f);                                                                               \
    } while (0)

static void refusals_create(void **state)
{
    (void)state;
    struct kvn_radix_config cfg;
    struct kvn_radix *t = (struct kvn_radix *)&cfg;
    struct kvn_err err;
    kvn_radix_config_init(&cfg);
    assert_int_equal(kvn_radix_create(NULL, &t, &err), -EINVAL);
    assert_null(t);
    assert_int_equal(kvn_radix_create(&cfg, NULL, &err), -EINVAL);
    cfg.page_size = 0;
    assert_int_equal(kvn_radix_create(&cfg, &t, &err), -EINVAL);
    assert_int_equal(err.code, -EINVAL);
    cfg.page_size = KVN_RADIX_MAX_PAGE_SIZE + 1;
    assert_int_equal(kvn_radix_create(&cfg, &t, &err), -EINVAL);
    kvn_radix_config_init(&cfg);
    cfg.l1_pages = 0;
    assert_int_equal(kvn_radix_create(&cfg, &t, &err), -EINVAL);
    kvn_radix_config_init(&cfg);
    cfg.write_policy = (enum kvn_write_policy)7;
    assert_int_equal(kvn_radix_create(&cfg, &t, &err), -EINVAL);
    kvn_radix_config_init(&cfg);
    cfg.evict_policy = (enum kvn_evict_policy) - 1;
    assert_int_equal(kvn_radix_create(&cfg, &t, &err), -EINVAL);
    kvn_radix_config_init(&cfg);
    cfg.l2_pages = UINT32_MAX;
    assert_int_equal(kvn_radix_create(&cfg, &t, &err), -EINVAL);
    assert_null(t);
    kvn_radix_destroy(NULL);
    kvn_radix_config_init(NULL);
    assert_int_equal(kvn_radix_reset(NULL, &err), -EINVAL);
    assert_int_equal(kvn_radix_stats(NULL, NULL, &err), -EINVAL);
    assert_int_equal(kvn_radix_check(NULL, &err), -EINVAL);
}

static void refusals_match_insert(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 8, 8, KVN_WRITE_BACK, false);
    f->cfg.max_namespaces = 2;
    kvn_radix_destroy(f->t);
    assert_int_equal(kvn_radix_create(&f->cfg, &f->t, NULL), 0);
    int32_t t[6] = {1, 2, 3, 4, 5, 6};
    uint32_t s[] = {0, 1};
    struct kvn_radix_insert_result ir;
    struct kvn_radix_match m;
    fx_insert(f, 0, t, 4, s, 1, &ir);

    REFUSED(f, kvn_radix_match_prefix(NULL, 0, t, 4, 1, NULL, 0, &m, &err), -EINVAL);
    REFUSED(f, kvn_radix_match_prefix(f->t, 0, t, 4, 1, NULL, 0, NULL, &err), -EINVAL);
    REFUSED(f, kvn_radix_match_prefix(f->t, 0, NULL, 4, 1, NULL, 0, &m, &err), -EINVAL);
    REFUSED(f, kvn_radix_match_prefix(f->t, KVN_RADIX_NS_INVALID, t, 4, 1, NULL, 0, &m, &err),
            -EINVAL);
    REFUSED(f, kvn_radix_match_prefix(f->t, 0, t, (size_t)UINT32_MAX + 2, 1, NULL, 0, &m, &err),
            -EINVAL);

    uint32_t ok2[] = {2, 3, 4};
    REFUSED(f, kvn_radix_insert(NULL, 0, t, 4, s, 1, &ir, &err), -EINVAL);
    REFUSED(f, kvn_radix_insert(f->t, 0, t, 4, s, 1, NULL, &err), -EINVAL);
    REFUSED(f, kvn_radix_insert(f->t, 0, NULL, 4, s, 1, &ir, &err), -EINVAL);
    REFUSED(f, kvn_radix_insert(f->t, 0, t, 5, ok2, 1, &ir, &err), -EINVAL); /* unaligned */
    REFUSED(f, kvn_radix_insert(f->t, KVN_RADIX_NS_INVALID, t, 4, ok2, 1, &ir, &err), -EINVAL);
    /* huge lengths are refused before any token is read */
    REFUSED(f, kvn_radix_insert(f->t, 0, t, (size_t)UINT32_MAX + 1, NULL, 1, &ir, &err), -EINVAL);
    uint32_t far[] = {0, 0, 8};
    REFUSED(f, kvn_radix_insert(f->t, 0, t, 6, far, 1, &ir, &err), -EINVAL); /* slot range */
    uint32_t far_prefix[] = {8, 0, 2}; /* even a not-adopted entry must be a slot */
    REFUSED(f, kvn_radix_insert(f->t, 0, t, 6, far_prefix, 1, &ir, &err), -EINVAL);
    uint32_t busy[] = {7, 7, 1};
    REFUSED(f, kvn_radix_insert(f->t, 0, t, 6, busy, 1, &ir, &err), -EBUSY); /* tree's slot */
    int32_t u[4] = {7, 7, 8, 8};
    uint32_t dup[] = {5, 5};
    REFUSED(f, kvn_radix_insert(f->t, 0, u, 4, dup, 1, &ir, &err), -EBUSY); /* listed twice */
    uint32_t s2[] = {2, 3};
    fx_insert(f, 1, u, 4, s2, 2, &ir); /* second namespace: the limit */
    uint32_t s3[] = {4, 5};
    REFUSED(f, kvn_radix_insert(f->t, 2, u, 4, s3, 3, &ir, &err), -ENOSPC);
    int32_t big[20];
    seq(big, 20, 50);
    REFUSED(f, kvn_radix_insert(f->t, 0, big, 20, NULL, 3, &ir, &err), -ENOSPC); /* > l1_pages */
    fx_free(f);
}

static void refusals_ids_and_acks(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 8, 2, KVN_WRITE_BACK, false);
    int32_t t[4] = {1, 2, 3, 4}, u[4] = {5, 6, 7, 8};
    struct kvn_radix_insert_result ir, iu;
    fx_insert(f, 0, t, 4, NULL, 1, &ir);
    fx_insert(f, 0, u, 4, NULL, 2, &iu);
    uint64_t bogus = ir.last_node + (UINT64_C(1) << 32); /* right slot, wrong generation */

    REFUSED(f, kvn_radix_lock(NULL, ir.last_node, &err), -EINVAL);
    REFUSED(f, kvn_radix_lock(f->t, 0, &err), -EINVAL);
    REFUSED(f, kvn_radix_lock(f->t, bogus, &err), -ENOENT);
    REFUSED(f, kvn_radix_lock(f->t, UINT64_C(0xffffffff), &err), -ENOENT);
    REFUSED(f, kvn_radix_unlock(f->t, ir.last_node, &err), -EINVAL); /* never locked */
    REFUSED(f, kvn_radix_unlock(f->t, bogus, &err), -ENOENT);
    REFUSED(f, kvn_radix_protect(f->t, 0, &err), -EINVAL);
    REFUSED(f, kvn_radix_protect(f->t, bogus, &err), -ENOENT);
    REFUSED(f, kvn_radix_unprotect(f->t, ir.last_node, &err), -EINVAL);
    REFUSED(f, kvn_radix_unprotect(NULL, ir.last_node, &err), -EINVAL);

    struct kvn_radix_evict_result er;
    REFUSED(f, kvn_radix_evict_l1(NULL, 1, &er, &err), -EINVAL);
    REFUSED(f, kvn_radix_evict_l1(f->t, 1, NULL, &err), -EINVAL);
    REFUSED(f, kvn_radix_evict_l2(NULL, 1, &er, &err), -EINVAL);
    REFUSED(f, kvn_radix_evict_l2(f->t, 1, NULL, &err), -EINVAL);

    struct kvn_radix_job_result jr;
    REFUSED(f, kvn_radix_write_backup(NULL, ir.last_node, &jr, &err), -EINVAL);
    REFUSED(f, kvn_radix_write_backup(f->t, ir.last_node, NULL, &err), -EINVAL);
    REFUSED(f, kvn_radix_write_backup(f->t, 0, &jr, &err), -EINVAL);
    REFUSED(f, kvn_radix_write_backup(f->t, bogus, &jr, &err), -ENOENT);
    assert_int_equal(kvn_radix_write_backup(f->t, ir.last_node, &jr, NULL), 0); /* L2 now full */
    REFUSED(f, kvn_radix_write_backup(f->t, iu.last_node, &jr, &err), -ENOSPC);

    REFUSED(f, kvn_radix_ack(NULL, jr.ack_id, true, &err), -EINVAL);
    REFUSED(f, kvn_radix_ack(f->t, 0, true, &err), -EINVAL);
    REFUSED(f, kvn_radix_ack(f->t, jr.ack_id + 1, true, &err), -ENOENT);
    REFUSED(f, kvn_radix_ack(f->t, jr.ack_id ^ (UINT64_C(1) << 40), false, &err), -ENOENT);
    assert_int_equal(kvn_radix_ack(f->t, jr.ack_id, true, NULL), 0);
    REFUSED(f, kvn_radix_ack(f->t, jr.ack_id, true, &err), -ENOENT); /* acked twice */
    REFUSED(f, kvn_radix_ack(f->t, jr.ack_id, false, &err), -ENOENT);

    struct kvn_radix_node_info info;
    REFUSED(f, kvn_radix_node_info(f->t, 0, &info, &err), -EINVAL);
    REFUSED(f, kvn_radix_node_info(f->t, ir.last_node, NULL, &err), -EINVAL);
    REFUSED(f, kvn_radix_node_info(f->t, bogus, &info, &err), -ENOENT);
    REFUSED(f, kvn_radix_stats(f->t, NULL, &err), -EINVAL);
    fx_free(f);

    /* no host tier */
    f = fx_new(2, 8, 0, KVN_WRITE_BACK, false);
    fx_insert(f, 0, t, 4, NULL, 1, &ir);
    REFUSED(f, kvn_radix_write_backup(f->t, ir.last_node, &jr, &err), -EINVAL);
    fx_free(f);
}

static void refusals_load_back(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 8, 8, KVN_WRITE_THROUGH, false);
    int32_t t[4] = {1, 2, 3, 4};
    struct kvn_radix_insert_result ir;
    backed(f, t, 4, 1, &ir);
    struct kvn_radix_evict_result er;
    assert_int_equal(kvn_radix_evict_l1(f->t, 2, &er, NULL), 0);
    uint32_t s[] = {0, 1};
    fx_insert(f, 0, (int32_t[]){9, 9}, 2, s, 2, &ir); /* slot 0 is the tree's now */
    struct kvn_radix_job_result jr;
    REFUSED(f, kvn_radix_load_back(NULL, 0, t, 4, NULL, 0, 1, &jr, &err), -EINVAL);
    REFUSED(f, kvn_radix_load_back(f->t, 0, t, 4, NULL, 0, 1, NULL, &err), -EINVAL);
    REFUSED(f, kvn_radix_load_back(f->t, 0, NULL, 4, NULL, 0, 1, &jr, &err), -EINVAL);
    REFUSED(f, kvn_radix_load_back(f->t, 0, t, 3, NULL, 0, 1, &jr, &err), -EINVAL);
    REFUSED(f, kvn_radix_load_back(f->t, KVN_RADIX_NS_INVALID, t, 4, NULL, 0, 1, &jr, &err),
            -EINVAL);
    REFUSED(f, kvn_radix_load_back(f->t, 0, t, (size_t)UINT32_MAX + 1, NULL, 0, 1, &jr, &err),
            -EINVAL);
    uint32_t far[] = {3, 8};
    REFUSED(f, kvn_radix_load_back(f->t, 0, t, 4, far, 2, 1, &jr, &err), -EINVAL);
    uint32_t busy[] = {3, 0};
    REFUSED(f, kvn_radix_load_back(f->t, 0, t, 4, busy, 2, 1, &jr, &err), -EBUSY);
    uint32_t dup[] = {3, 3};
    REFUSED(f, kvn_radix_load_back(f->t, 0, t, 4, dup, 2, 1, &jr, &err), -EBUSY);
    uint32_t good[] = {3, 4};
    assert_int_equal(kvn_radix_load_back(f->t, 0, t, 4, good, 2, 1, &jr, NULL), 0);
    assert_int_equal(jr.n_pages, 2);
    fx_free(f);
}

/* ---------------------------------------------------------------- host inserts */

#define H12 INT64_C(3817746824117602890)
#define H34 INT64_C(-4216701448867210342)

static void host_insert_into_empty_tree(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 8, 8, KVN_WRITE_THROUGH, true);
    int32_t t[4] = {1, 2, 3, 4};
    uint32_t pg[2];
    assert_int_equal(kvn_radix_reserve_l2(f->t, 2, pg, NULL), 0);
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.l2_reserved, 2);
    assert_int_equal(st.l2_used, 2);
    fx_check(f);
    struct kvn_radix_insert_result r;
    assert_int_equal(kvn_radix_insert_host(f->t, 0, t, 4, pg, 1, &r, NULL), 0);
    assert_int_equal(r.new_tokens, 4);
    assert_int_equal(r.inserted_tokens, 4);
    assert_int_not_equal(r.last_node, 0);
    /* announced on CPU_PINNED at once, chained; storage got it; no GPU event */
    assert_int_equal(f->rec.n, 4);
    int32_t p12[] = {1, 2}, p34[] = {3, 4};
    assert_stored(&f->rec.ev[0], KVN_MEDIUM_CPU_PINNED, p12, 2, false, 0);
    assert_int_equal(f->rec.ev[0].hashes[0], H12);
    assert_stored(&f->rec.ev[1], KVN_MEDIUM_CPU_PINNED, p34, 2, true, H12);
    assert_int_equal(f->rec.ev[1].hashes[0], H34);
    assert_int_equal(rec_count(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_DISK), 2);
    assert_int_equal(f->store.n, 1);
    st = fx_stats(f);
    assert_int_equal(st.l2_reserved, 0);
    assert_int_equal(st.l2_tokens, 4);
    assert_int_equal(st.l1_used, 0);
    fx_check(f);
    struct kvn_radix_match m = fx_match(f, 0, t, 4, 2);
    assert_int_equal(m.device_tokens, 0);
    assert_int_equal(m.host_tokens, 4);
    assert_int_equal(m.backed_tokens, 4);
    /* and up to L1 like any host copy */
    struct kvn_radix_job_result jr;
    assert_int_equal(kvn_radix_load_back(f->t, 0, t, 4, NULL, 0, 3, &jr, NULL), 0);
    assert_int_equal(jr.n_pages, 2);
    assert_int_equal(f->jobs.j[f->jobs.n - 1].l2[0], pg[0]);
    assert_int_equal(kvn_radix_ack(f->t, jr.ack_id, true, NULL), 0);
    assert_int_equal(fx_match(f, 0, t, 4, 4).device_tokens, 4);
    fx_free(f);
}

static void host_insert_attaches_and_extends(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 8, 8, KVN_WRITE_BACK, false);
    int32_t t[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    struct kvn_radix_insert_result r;
    fx_insert(f, 0, t, 6, NULL, 1, &r); /* L1 only: [1..6] */
    uint32_t pg[4];
    assert_int_equal(kvn_radix_reserve_l2(f->t, 4, pg, NULL), 0);
    uint32_t before = f->rec.n;
    /* [1..4] gets the pushed copy (split at 4), [7,8] is new; [5,6] untouched */
    int32_t u[6] = {1, 2, 3, 4, 9, 9};
    assert_int_equal(kvn_radix_insert_host(f->t, 0, u, 6, pg, 2, &r, NULL), 0);
    assert_int_equal(r.prefix_tokens, 0);
    assert_int_equal(r.revived_tokens, 4);
    assert_int_equal(r.new_tokens, 2);
    assert_int_equal(f->rec.n - before, 3);
    for (uint32_t i = 0; i < 3; i++)
        assert_int_equal(f->rec.ev[before + i].medium, KVN_MEDIUM_CPU_PINNED);
    assert_int_equal(fx_stats(f).l2_reserved, 1); /* pg[3] was not needed */
    fx_check(f);
    assert_int_equal(kvn_radix_release_l2(f->t, &pg[3], 1, NULL), 0);
    assert_int_equal(fx_stats(f).l2_reserved, 0);
    struct kvn_radix_match m = fx_match(f, 0, t, 6, 3);
    assert_int_equal(m.device_tokens, 6);
    assert_int_equal(m.backed_tokens, 4);
    m = fx_match(f, 0, u, 6, 4);
    assert_int_equal(m.device_tokens, 4);
    assert_int_equal(m.host_tokens, 2);
    /* again: everything is backed, nothing is adopted */
    uint32_t pg2[3];
    assert_int_equal(kvn_radix_reserve_l2(f->t, 3, pg2, NULL), 0);
    before = f->rec.n;
    assert_int_equal(kvn_radix_insert_host(f->t, 0, u, 6, pg2, 5, &r, NULL), 0);
    assert_int_equal(r.prefix_tokens, 6);
    assert_int_equal(r.revived_tokens + r.new_tokens, 0);
    assert_int_equal(f->rec.n, before);
    assert_int_equal(kvn_radix_release_l2(f->t, pg2, 3, NULL), 0);
    /* write_back: [5,6] is backed up then demoted; then the node with the
     * pushed copy is demoted, not deleted */
    struct kvn_radix_evict_result er;
    assert_int_equal(kvn_radix_evict_l1(f->t, 8, &er, NULL), 0);
    assert_int_equal(er.scheduled_pages, 1);
    assert_int_equal(kvn_radix_ack(f->t, er.ack_id, true, NULL), 0);
    assert_int_equal(kvn_radix_evict_l1(f->t, 8, &er, NULL), 0);
    assert_int_equal(er.demoted_pages, 2);
    assert_int_equal(fx_match(f, 0, t, 6, 6).host_tokens, 6);
    fx_free(f);
}

static void host_insert_stops_at_pending_write(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 8, 8, KVN_WRITE_THROUGH, false);
    int32_t t[6] = {1, 2, 3, 4, 5, 6};
    struct kvn_radix_insert_result r, rh;
    fx_insert(f, 0, t, 4, NULL, 1, &r); /* write-through pending on [1..4] */
    uint32_t pg[3];
    assert_int_equal(kvn_radix_reserve_l2(f->t, 3, pg, NULL), 0);
    uint32_t before = f->rec.n;
    assert_int_equal(kvn_radix_insert_host(f->t, 0, t, 6, pg, 2, &rh, NULL), 0);
    assert_int_equal(rh.inserted_tokens, 0);
    assert_int_equal(f->rec.n, before);
    assert_int_equal(fx_stats(f).l2_reserved, 3);
    assert_int_equal(kvn_radix_ack(f->t, r.backup_ack_id, true, NULL), 0);
    assert_int_equal(kvn_radix_insert_host(f->t, 0, t, 6, pg, 3, &rh, NULL), 0);
    assert_int_equal(rh.prefix_tokens, 4);
    assert_int_equal(rh.new_tokens, 2);
    int c = rec_find(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_CPU_PINNED, 2);
    assert_true(c >= 0);
    assert_int_equal(f->rec.ev[c].parent, f->rec.ev[1].hashes[0]);
    assert_int_equal(kvn_radix_release_l2(f->t, pg, 2, NULL), 0);
    fx_free(f);
}

static void host_refusals(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 8, 4, KVN_WRITE_BACK, false);
    int32_t t[4] = {1, 2, 3, 4};
    uint32_t pg[4];
    struct kvn_radix_insert_result r;
    REFUSED(f, kvn_radix_reserve_l2(NULL, 1, pg, &err), -EINVAL);
    REFUSED(f, kvn_radix_reserve_l2(f->t, 1, NULL, &err), -EINVAL);
    REFUSED(f, kvn_radix_reserve_l2(f->t, 5, pg, &err), -ENOSPC);
    assert_int_equal(kvn_radix_reserve_l2(f->t, 2, pg, NULL), 0);
    REFUSED(f, kvn_radix_insert_host(NULL, 0, t, 4, pg, 1, &r, &err), -EINVAL);
    REFUSED(f, kvn_radix_insert_host(f->t, 0, t, 4, NULL, 1, &r, &err), -EINVAL);
    REFUSED(f, kvn_radix_insert_host(f->t, 0, t, 4, pg, 1, NULL, &err), -EINVAL);
    REFUSED(f, kvn_radix_insert_host(f->t, 0, NULL, 4, pg, 1, &r, &err), -EINVAL);
    REFUSED(f, kvn_radix_insert_host(f->t, 0, t, 3, pg, 1, &r, &err), -EINVAL);
    REFUSED(f, kvn_radix_insert_host(f->t, KVN_RADIX_NS_INVALID, t, 4, pg, 1, &r, &err), -EINVAL);
    uint32_t far[] = {pg[0], 4};
    REFUSED(f, kvn_radix_insert_host(f->t, 0, t, 4, far, 1, &r, &err), -EINVAL);
    uint32_t twice[] = {pg[0], pg[0]};
    REFUSED(f, kvn_radix_insert_host(f->t, 0, t, 4, twice, 1, &r, &err), -EBUSY);
    uint32_t free_pg = 0;
    while (free_pg == pg[0] || free_pg == pg[1])
        free_pg++;
    uint32_t unres[] = {pg[0], free_pg};
    REFUSED(f, kvn_radix_insert_host(f->t, 0, t, 4, unres, 1, &r, &err), -EBUSY);
    REFUSED(f, kvn_radix_release_l2(f->t, &free_pg, 1, &err), -EINVAL); /* never reserved */
    REFUSED(f, kvn_radix_release_l2(f->t, twice, 2, &err), -EALREADY);
    REFUSED(f, kvn_radix_release_l2(NULL, pg, 1, &err), -EINVAL);
    assert_int_equal(kvn_radix_insert_host(f->t, 0, t, 4, pg, 1, &r, NULL), 0);
    /* adopted: no longer the caller's to release */
    REFUSED(f, kvn_radix_release_l2(f->t, pg, 1, &err), -EINVAL);
    /* reset keeps a reservation, the tree's own pages go */
    uint32_t pg3;
    assert_int_equal(kvn_radix_reserve_l2(f->t, 1, &pg3, NULL), 0);
    assert_int_equal(kvn_radix_reset(f->t, NULL), 0);
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.l2_reserved, 1);
    assert_int_equal(st.l2_used, 1);
    fx_check(f);
    assert_int_equal(kvn_radix_release_l2(f->t, &pg3, 1, NULL), 0);
    fx_free(f);
    /* no host tier */
    f = fx_new(2, 8, 0, KVN_WRITE_BACK, false);
    REFUSED(f, kvn_radix_reserve_l2(f->t, 1, pg, &err), -EINVAL);
    REFUSED(f, kvn_radix_insert_host(f->t, 0, t, 4, pg, 1, &r, &err), -EINVAL);
    fx_free(f);
}

static void match_l2_for_peers(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 8, 8, KVN_WRITE_THROUGH, false);
    int32_t t[6] = {1, 2, 3, 4, 5, 6};
    struct kvn_radix_insert_result r, r2;
    fx_insert(f, 0, t, 4, NULL, 1, &r);
    fx_insert(f, 0, t, 6, NULL, 2, &r2);
    uint32_t pg[4] = {99, 99, 99, 99};
    struct kvn_radix_l2_match m;
    assert_int_equal(kvn_radix_match_l2(f->t, 0, t, 6, 3, pg, 4, &m, NULL), 0);
    assert_int_equal(m.tokens, 0); /* pending: not readable yet */
    assert_int_equal(m.last_node, 0);
    assert_int_equal(kvn_radix_ack(f->t, r.backup_ack_id, true, NULL), 0);
    assert_int_equal(kvn_radix_match_l2(f->t, 0, t, 6, 4, pg, 4, &m, NULL), 0);
    assert_int_equal(m.tokens, 4);
    assert_int_equal(m.n_pages, 2);
    assert_int_equal(pg[0], f->jobs.j[0].l2[0]);
    assert_int_equal(pg[1], f->jobs.j[0].l2[1]);
    assert_int_equal(m.last_node, r.last_node);
    assert_int_equal(kvn_radix_ack(f->t, r2.backup_ack_id, true, NULL), 0);
    assert_int_equal(kvn_radix_match_l2(f->t, 0, t, 7, 5, pg, 2, &m, NULL), 0);
    assert_int_equal(m.tokens, 6);
    assert_int_equal(m.n_pages, 2); /* capped */
    assert_int_equal(m.last_node, r2.last_node);
    /* protected while a peer reads: L2 eviction leaves it */
    struct kvn_radix_evict_result er;
    assert_int_equal(kvn_radix_protect(f->t, m.last_node, NULL), 0);
    assert_int_equal(kvn_radix_evict_l1(f->t, 8, &er, NULL), 0);
    assert_int_equal(kvn_radix_evict_l2(f->t, 8, &er, NULL), 0);
    assert_int_equal(er.freed_pages, 0);
    assert_int_equal(kvn_radix_match_l2(f->t, 0, t, 6, 6, NULL, 0, &m, NULL), 0);
    assert_int_equal(m.tokens, 6);
    assert_int_equal(kvn_radix_unprotect(f->t, m.last_node, NULL), 0);
    assert_int_equal(kvn_radix_match_l2(f->t, 9, t, 6, 7, NULL, 0, &m, NULL), 0);
    assert_int_equal(m.tokens, 0); /* unknown namespace */
    REFUSED(f, kvn_radix_match_l2(NULL, 0, t, 6, 1, NULL, 0, &m, &err), -EINVAL);
    REFUSED(f, kvn_radix_match_l2(f->t, 0, t, 6, 1, NULL, 0, NULL, &err), -EINVAL);
    REFUSED(f, kvn_radix_match_l2(f->t, 0, NULL, 6, 1, NULL, 0, &m, &err), -EINVAL);
    REFUSED(f, kvn_radix_match_l2(f->t, KVN_RADIX_NS_INVALID, t, 6, 1, NULL, 0, &m, &err), -EINVAL);
    fx_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(insert_then_match),
        cmocka_unit_test(insert_prefix_slots_not_adopted),
        cmocka_unit_test(namespaces_are_separate),
        cmocka_unit_test(lru_evicts_oldest_leaf),
        cmocka_unit_test(ticks_going_backwards),
        cmocka_unit_test(lfu_evicts_least_hit),
        cmocka_unit_test(interior_nodes_wait_for_children),
        cmocka_unit_test(lock_blocks_eviction),
        cmocka_unit_test(demote_revive_and_l2_eviction),
        cmocka_unit_test(selective_threshold_two),
        cmocka_unit_test(write_backup_covers_ancestors),
        cmocka_unit_test(auto_mode_evicts_to_fit),
        cmocka_unit_test(auto_mode_keeps_own_path),
        cmocka_unit_test(load_back_partial_and_failed),
        cmocka_unit_test(write_through_skipped_when_l2_full),
        cmocka_unit_test(memory_per_token),
        cmocka_unit_test(storage_failure_and_disk_removal),
        cmocka_unit_test(protected_node_is_never_deleted),
        cmocka_unit_test(write_back_without_room_deletes),
        cmocka_unit_test(big_tree_grows_every_table),
        cmocka_unit_test(empty_insert_and_load_back),
        cmocka_unit_test(load_back_submit_refused),
        cmocka_unit_test(refusals_create),
        cmocka_unit_test(refusals_match_insert),
        cmocka_unit_test(refusals_ids_and_acks),
        cmocka_unit_test(refusals_load_back),
        cmocka_unit_test(host_insert_into_empty_tree),
        cmocka_unit_test(host_insert_attaches_and_extends),
        cmocka_unit_test(host_insert_stops_at_pending_write),
        cmocka_unit_test(host_refusals),
        cmocka_unit_test(match_l2_for_peers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
