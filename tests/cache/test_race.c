/*
 * test_race.c - the write-through race of issue 2 section 4, cases (a)-(h),
 * exactly as written there, plus the orderings around them.
 *
 * Hashes are the golden ones of ../shared/vectors/page_hashes.json (cases
 * seed_prefix / seed_branch), so these tests also pin the event hashes.
 */
#include "cache_test_util.h"

#define H12 INT64_C(3817746824117602890)  /* [1,2] at the root */
#define H34 INT64_C(-4216701448867210342) /* [3,4] after [1,2] */
#define H56 INT64_C(-429401898661349585)  /* [5,6] after [1,2] */

static const int32_t T1234[] = {1, 2, 3, 4};
static const int32_t T1256[] = {1, 2, 5, 6};
static const int32_t P12[] = {1, 2}, P34[] = {3, 4}, P56[] = {5, 6};

/* (a) split while pending: exactly two CPU_PINNED BlockStored after the ack */
static void race_a_split_while_pending(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 16, 16, KVN_WRITE_BACK, false);
    struct kvn_radix_insert_result ir;
    uint32_t s01[] = {0, 1};
    fx_insert(f, 0, T1234, 4, s01, 1, &ir);
    assert_int_equal(ir.new_tokens, 4);
    assert_int_equal(ir.backup_ack_id, 0); /* write_back: no automatic backup */
    assert_int_equal(f->rec.n, 2);
    assert_stored(&f->rec.ev[0], KVN_MEDIUM_GPU, P12, 2, false, 0);
    assert_stored(&f->rec.ev[1], KVN_MEDIUM_GPU, P34, 2, true, H12);
    assert_int_equal(f->rec.ev[0].hashes[0], H12);
    assert_int_equal(f->rec.ev[1].hashes[0], H34);

    struct kvn_radix_job_result jr;
    assert_int_equal(kvn_radix_write_backup(f->t, ir.last_node, &jr, NULL), 0);
    assert_int_not_equal(jr.ack_id, 0);
    assert_int_equal(jr.n_pages, 2);
    assert_int_equal(f->jobs.n, 1);
    assert_int_equal(f->jobs.j[0].dir, KVN_COPY_L1_TO_L2);
    assert_int_equal(f->jobs.j[0].l1[0], 0);
    assert_int_equal(f->jobs.j[0].l1[1], 1);
    fx_check(f);

    uint32_t s_x2[] = {9, 2}; /* slot 9 is for the cached page: not adopted */
    fx_insert(f, 0, T1256, 4, s_x2, 2, &ir);
    assert_int_equal(ir.prefix_tokens, 2);
    assert_int_equal(ir.new_tokens, 2);
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.nodes, 3); /* [1,2] -> {[3,4], [5,6]} */
    assert_int_equal(st.l1_used, 3);
    assert_int_equal(rec_count(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_CPU_PINNED), 0);
    assert_int_equal(f->rec.n, 3);
    assert_stored(&f->rec.ev[2], KVN_MEDIUM_GPU, P56, 2, true, H12);
    assert_int_equal(f->rec.ev[2].hashes[0], H56);

    uint32_t before = f->rec.n;
    assert_int_equal(kvn_radix_ack(f->t, jr.ack_id, true, NULL), 0);
    assert_int_equal(f->rec.n - before, 2);
    assert_stored(&f->rec.ev[before], KVN_MEDIUM_CPU_PINNED, P12, 2, false, 0);
    assert_int_equal(f->rec.ev[before].hashes[0], H12);
    assert_stored(&f->rec.ev[before + 1], KVN_MEDIUM_CPU_PINNED, P34, 2, true, H12);
    assert_int_equal(f->rec.ev[before + 1].hashes[0], H34);

    st = fx_stats(f);
    assert_int_equal(st.locked_nodes, 0);
    assert_int_equal(st.pending_jobs, 0);
    assert_int_equal(st.l2_used, 2);
    assert_int_equal(kvn_radix_ack(f->t, jr.ack_id, true, NULL), -ENOENT);
    fx_free(f);
}

/* (b) the same with storage on: backup called for [1,2] then [3,4] */
static void race_b_storage_fragments(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 16, 16, KVN_WRITE_BACK, true);
    struct kvn_radix_insert_result ir;
    uint32_t s01[] = {0, 1}, s_x2[] = {0, 2};
    fx_insert(f, 0, T1234, 4, s01, 1, &ir);
    struct kvn_radix_job_result jr;
    assert_int_equal(kvn_radix_write_backup(f->t, ir.last_node, &jr, NULL), 0);
    fx_insert(f, 0, T1256, 4, s_x2, 2, &ir);
    assert_int_equal(f->store.n, 0);
    assert_int_equal(kvn_radix_ack(f->t, jr.ack_id, true, NULL), 0);
    assert_int_equal(f->store.n, 2);
    assert_int_equal(f->store.f[0].n_pages, 1);
    assert_memory_equal(f->store.f[0].tokens, P12, sizeof(P12));
    assert_false(f->store.f[0].has_parent);
    assert_int_equal(f->store.f[0].hashes[0], H12);
    assert_int_equal(f->store.f[1].n_pages, 1);
    assert_memory_equal(f->store.f[1].tokens, P34, sizeof(P34));
    assert_true(f->store.f[1].has_parent);
    assert_int_equal(f->store.f[1].parent, H12);
    /* DISK events follow the successful hook, chained */
    assert_int_equal(rec_count(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_DISK), 2);
    int d0 = rec_find(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_DISK, 0);
    int d1 = rec_find(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_DISK, 1);
    assert_stored(&f->rec.ev[d0], KVN_MEDIUM_DISK, P12, 2, false, 0);
    assert_stored(&f->rec.ev[d1], KVN_MEDIUM_DISK, P34, 2, true, H12);
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.storage_backups, 2);
    fx_free(f);
}

/* (c) nested split: the prefix is split again before the ack -> three fragments */
static void race_c_nested_split(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 16, 16, KVN_WRITE_BACK, true);
    const int32_t t123456[] = {1, 2, 3, 4, 5, 6};
    const int32_t t123478[] = {1, 2, 3, 4, 7, 8};
    const int32_t t1299[] = {1, 2, 9, 9};
    uint32_t s012[] = {0, 1, 2}, s3[] = {0, 0, 3}, s4[] = {0, 4};
    struct kvn_radix_insert_result ir;
    fx_insert(f, 0, t123456, 6, s012, 1, &ir);
    struct kvn_radix_job_result jr;
    assert_int_equal(kvn_radix_write_backup(f->t, ir.last_node, &jr, NULL), 0);
    assert_int_equal(jr.n_pages, 3);
    fx_insert(f, 0, t123478, 6, s3, 2, &ir); /* splits [1..6] into [1..4] + [5,6] */
    fx_insert(f, 0, t1299, 4, s4, 3, &ir);   /* splits [1..4] into [1,2] + [3,4] */
    assert_int_equal(fx_stats(f).nodes, 5);
    assert_int_equal(rec_count(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_CPU_PINNED), 0);

    uint32_t before = f->rec.n;
    assert_int_equal(kvn_radix_ack(f->t, jr.ack_id, true, NULL), 0);
    assert_int_equal(rec_count(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_CPU_PINNED), 3);
    int c0 = rec_find(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_CPU_PINNED, 0);
    int c1 = rec_find(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_CPU_PINNED, 1);
    int c2 = rec_find(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_CPU_PINNED, 2);
    assert_true(c0 >= (int)before && c0 < c1 && c1 < c2);
    assert_stored(&f->rec.ev[c0], KVN_MEDIUM_CPU_PINNED, P12, 2, false, 0);
    assert_stored(&f->rec.ev[c1], KVN_MEDIUM_CPU_PINNED, P34, 2, true, f->rec.ev[c0].hashes[0]);
    assert_stored(&f->rec.ev[c2], KVN_MEDIUM_CPU_PINNED, P56, 2, true, f->rec.ev[c1].hashes[0]);
    assert_int_equal(f->rec.ev[c0].hashes[0], H12);
    assert_int_equal(f->rec.ev[c1].hashes[0], H34);
    /* the same hashes as the GPU events of the original insert */
    assert_int_equal(f->rec.ev[c2].hashes[0], f->rec.ev[2].hashes[0]);
    /* three fragments reached storage, in prefix order */
    assert_int_equal(f->store.n, 3);
    assert_memory_equal(f->store.f[0].tokens, P12, 8);
    assert_memory_equal(f->store.f[1].tokens, P34, 8);
    assert_memory_equal(f->store.f[2].tokens, P56, 8);
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.locked_nodes, 0);
    assert_int_equal(st.l2_used, 3);
    fx_free(f);
}

/* (d) two pending acks on one chain, acknowledged in reverse order */
static void race_d_reverse_acks(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 16, 16, KVN_WRITE_THROUGH, false);
    const int32_t t123456[] = {1, 2, 3, 4, 5, 6};
    uint32_t s01[] = {0, 1}, s2[] = {0, 0, 2};
    struct kvn_radix_insert_result ir1, ir2;
    fx_insert(f, 0, T1234, 4, s01, 1, &ir1);
    assert_int_not_equal(ir1.backup_ack_id, 0); /* threshold 1: the creating insert */
    assert_int_equal(ir1.backup_pages, 2);
    fx_insert(f, 0, t123456, 6, s2, 2, &ir2);
    assert_int_not_equal(ir2.backup_ack_id, 0);
    assert_int_equal(ir2.backup_pages, 1); /* [1..4] is already pending */
    assert_int_equal(fx_stats(f).pending_jobs, 2);

    /* the child's ack first: its CPU event waits for the parent's */
    assert_int_equal(kvn_radix_ack(f->t, ir2.backup_ack_id, true, NULL), 0);
    assert_int_equal(rec_count(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_CPU_PINNED), 0);
    struct kvn_radix_match m = fx_match(f, 0, t123456, 6, 3);
    assert_int_equal(m.device_tokens, 6);
    assert_int_equal(m.backed_tokens, 0); /* [1..4] still pending */
    fx_check(f);

    assert_int_equal(kvn_radix_ack(f->t, ir1.backup_ack_id, true, NULL), 0);
    assert_int_equal(rec_count(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_CPU_PINNED), 3);
    int c0 = rec_find(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_CPU_PINNED, 0);
    int c1 = rec_find(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_CPU_PINNED, 1);
    int c2 = rec_find(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_CPU_PINNED, 2);
    assert_stored(&f->rec.ev[c0], KVN_MEDIUM_CPU_PINNED, P12, 2, false, 0);
    assert_stored(&f->rec.ev[c1], KVN_MEDIUM_CPU_PINNED, P34, 2, true, H12);
    assert_stored(&f->rec.ev[c2], KVN_MEDIUM_CPU_PINNED, P56, 2, true, H34);
    m = fx_match(f, 0, t123456, 6, 4);
    assert_int_equal(m.backed_tokens, 6);
    assert_int_equal(fx_stats(f).locked_nodes, 0);
    assert_int_equal(kvn_radix_ack(f->t, ir2.backup_ack_id, true, NULL), -ENOENT);
    fx_free(f);
}

/* (e) eviction attempted while a job is pending never drops a pending node */
static void race_e_evict_while_pending(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 16, 16, KVN_WRITE_THROUGH, false);
    uint32_t s01[] = {0, 1}, s_x2[] = {0, 2};
    struct kvn_radix_insert_result ir, ir2;
    fx_insert(f, 0, T1234, 4, s01, 1, &ir);
    fx_insert(f, 0, T1256, 4, s_x2, 2, &ir2); /* split while pending */
    struct kvn_radix_evict_result er;
    assert_int_equal(kvn_radix_evict_l1(f->t, 100, &er, NULL), 0);
    assert_int_equal(er.freed_pages, 0); /* every node is pending or above one */
    assert_int_equal(kvn_radix_evict_l2(f->t, 100, &er, NULL), 0);
    assert_int_equal(er.freed_pages, 0);
    assert_int_equal(fx_stats(f).nodes, 3);
    struct kvn_radix_match m = fx_match(f, 0, T1234, 4, 3);
    assert_int_equal(m.device_tokens, 4);
    fx_check(f);

    /* acked: backed-up leaves are demoted, never deleted */
    assert_int_equal(kvn_radix_ack(f->t, ir.backup_ack_id, true, NULL), 0);
    assert_int_equal(kvn_radix_ack(f->t, ir2.backup_ack_id, true, NULL), 0);
    uint32_t before = f->rec.n;
    assert_int_equal(kvn_radix_evict_l1(f->t, 100, &er, NULL), 0);
    assert_int_equal(er.freed_pages, 3);
    assert_int_equal(er.demoted_pages, 3);
    assert_int_equal(er.deleted_pages, 0);
    assert_int_equal(rec_count(&f->rec, KVN_EV_BLOCK_REMOVED, KVN_MEDIUM_GPU), 3);
    assert_true(f->rec.n - before == 3);
    m = fx_match(f, 0, T1234, 4, 4);
    assert_int_equal(m.device_tokens, 0);
    assert_int_equal(m.host_tokens, 4);
    assert_int_equal(fx_stats(f).nodes, 3);
    fx_free(f);
}

/* (f) write_back: backup only on L1 eviction; demoted once acked */
static void race_f_write_back(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 16, 16, KVN_WRITE_BACK, false);
    uint32_t s01[] = {0, 1};
    struct kvn_radix_insert_result ir;
    fx_insert(f, 0, T1234, 4, s01, 1, &ir);
    fx_insert(f, 0, T1234, 4, s01, 2, &ir); /* hit count 2: still no backup */
    assert_int_equal(ir.backup_ack_id, 0);
    assert_int_equal(f->jobs.n, 0);

    struct kvn_radix_evict_result er;
    assert_int_equal(kvn_radix_evict_l1(f->t, 2, &er, NULL), 0);
    assert_int_equal(er.freed_pages, 0);
    assert_int_equal(er.scheduled_pages, 2);
    assert_int_not_equal(er.ack_id, 0);
    assert_int_equal(f->jobs.n, 1);
    assert_int_equal(rec_count(&f->rec, KVN_EV_BLOCK_REMOVED, -1), 0);
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.l1_used, 2);
    assert_int_equal(st.l2_used, 2);

    uint32_t before = f->rec.n;
    assert_int_equal(kvn_radix_ack(f->t, er.ack_id, true, NULL), 0);
    assert_int_equal(f->rec.n - before, 3);
    assert_stored(&f->rec.ev[before], KVN_MEDIUM_CPU_PINNED, P12, 2, false, 0);
    assert_stored(&f->rec.ev[before + 1], KVN_MEDIUM_CPU_PINNED, P34, 2, true, H12);
    assert_int_equal(f->rec.ev[before + 2].type, KVN_EV_BLOCK_REMOVED);
    assert_int_equal(f->rec.ev[before + 2].medium, KVN_MEDIUM_GPU);
    assert_int_equal(f->rec.ev[before + 2].n_hashes, 2);
    assert_int_equal(f->rec.ev[before + 2].hashes[0], H12);
    assert_int_equal(f->rec.ev[before + 2].hashes[1], H34);
    st = fx_stats(f);
    assert_int_equal(st.l1_used, 0);
    assert_int_equal(st.l2_used, 2);
    struct kvn_radix_match m = fx_match(f, 0, T1234, 4, 3);
    assert_int_equal(m.host_tokens, 4);

    /* and back: load_back, GPU events on its ack */
    struct kvn_radix_job_result jr;
    uint32_t s57[] = {5, 7};
    assert_int_equal(kvn_radix_load_back(f->t, 0, T1234, 4, s57, 2, 4, &jr, NULL), 0);
    assert_int_equal(jr.n_pages, 2);
    assert_int_equal(f->jobs.j[f->jobs.n - 1].dir, KVN_COPY_L2_TO_L1);
    assert_int_equal(f->jobs.j[f->jobs.n - 1].l1[0], 5);
    m = fx_match(f, 0, T1234, 4, 5);
    assert_int_equal(m.device_tokens, 0); /* loading: a barrier until acked */
    before = f->rec.n;
    assert_int_equal(kvn_radix_ack(f->t, jr.ack_id, true, NULL), 0);
    assert_int_equal(f->rec.n - before, 2);
    assert_stored(&f->rec.ev[before], KVN_MEDIUM_GPU, P12, 2, false, 0);
    assert_stored(&f->rec.ev[before + 1], KVN_MEDIUM_GPU, P34, 2, true, H12);
    uint32_t slots[4];
    assert_int_equal(kvn_radix_match_prefix(f->t, 0, T1234, 4, 6, slots, 4, &m, NULL), 0);
    assert_int_equal(m.device_tokens, 4);
    assert_int_equal(m.n_slots, 2);
    assert_int_equal(slots[0], 5);
    assert_int_equal(slots[1], 7);
    fx_free(f);
}

/* (g) reset while pending: AllBlocksCleared, no BlockStored for that ack after */
static void race_g_reset_while_pending(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 16, 16, KVN_WRITE_THROUGH, false);
    uint32_t s01[] = {0, 1};
    struct kvn_radix_insert_result ir;
    fx_insert(f, 0, T1234, 4, s01, 1, &ir);
    assert_int_not_equal(ir.backup_ack_id, 0);
    uint32_t before = f->rec.n;
    assert_int_equal(kvn_radix_reset(f->t, NULL), 0);
    assert_int_equal(f->rec.n - before, 1);
    assert_int_equal(f->rec.ev[before].type, KVN_EV_ALL_BLOCKS_CLEARED);
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.nodes, 0);
    assert_int_equal(st.l1_used, 0);
    assert_int_equal(st.l2_used, 2); /* the in-flight copy may still land there */
    assert_int_equal(st.orphan_pages, 2);
    fx_check(f);
    /* the old node id is gone */
    assert_int_equal(kvn_radix_lock(f->t, ir.last_node, NULL), -ENOENT);

    before = f->rec.n;
    assert_int_equal(kvn_radix_ack(f->t, ir.backup_ack_id, true, NULL), 0);
    assert_int_equal(f->rec.n, before); /* no BlockStored */
    st = fx_stats(f);
    assert_int_equal(st.l2_used, 0);
    assert_int_equal(st.pending_jobs, 0);
    assert_int_equal(kvn_radix_ack(f->t, ir.backup_ack_id, true, NULL), -ENOENT);

    /* the tree works after reset, with fresh ack ids */
    fx_insert(f, 0, T1234, 4, s01, 2, &ir);
    assert_int_not_equal(ir.backup_ack_id, 0);
    assert_int_equal(kvn_radix_ack(f->t, ir.backup_ack_id, true, NULL), 0);
    assert_int_equal(rec_count(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_CPU_PINNED), 2);
    fx_free(f);
}

/* (h) a failed ack publishes nothing and frees its pages */
static void race_h_failed_ack(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 16, 16, KVN_WRITE_THROUGH, true);
    uint32_t s01[] = {0, 1}, s_x2[] = {0, 2};
    struct kvn_radix_insert_result ir, ir2;
    fx_insert(f, 0, T1234, 4, s01, 1, &ir);
    fx_insert(f, 0, T1256, 4, s_x2, 2, &ir2); /* split while pending, too */
    uint32_t before = f->rec.n;
    assert_int_equal(kvn_radix_ack(f->t, ir.backup_ack_id, false, NULL), 0);
    assert_int_equal(f->rec.n, before);
    assert_int_equal(f->store.n, 0);
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.l2_used, 1); /* only [5,6]'s job is left */
    assert_int_equal(st.locked_nodes, 1);
    assert_int_equal(st.acks_failed, 1);
    struct kvn_radix_match m = fx_match(f, 0, T1234, 4, 3);
    assert_int_equal(m.device_tokens, 4);
    assert_int_equal(m.backed_tokens, 0);
    fx_check(f);
    /* [5,6] acked, but its parent [1,2] has no L2 copy any more: [5,6] could
     * never be announced (unknown parent), so its copy is dropped, silently */
    assert_int_equal(kvn_radix_ack(f->t, ir2.backup_ack_id, true, NULL), 0);
    assert_int_equal(rec_count(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_CPU_PINNED), 0);
    st = fx_stats(f);
    assert_int_equal(st.l2_used, 0);
    assert_int_equal(st.locked_nodes, 0);
    m = fx_match(f, 0, T1256, 4, 4);
    assert_int_equal(m.device_tokens, 4);
    assert_int_equal(m.backed_tokens, 0);
    fx_check(f);
    /* the next insert over [1,2,3,4] backs it up again; its ack publishes it */
    fx_insert(f, 0, T1234, 4, s01, 5, &ir);
    assert_int_not_equal(ir.backup_ack_id, 0);
    assert_int_equal(ir.backup_pages, 2);
    assert_int_equal(kvn_radix_ack(f->t, ir.backup_ack_id, true, NULL), 0);
    assert_int_equal(rec_count(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_CPU_PINNED), 2);
    int c0 = rec_find(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_CPU_PINNED, 0);
    int c1 = rec_find(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_CPU_PINNED, 1);
    assert_stored(&f->rec.ev[c0], KVN_MEDIUM_CPU_PINNED, P12, 2, false, 0);
    assert_stored(&f->rec.ev[c1], KVN_MEDIUM_CPU_PINNED, P34, 2, true, H12);
    /* and [5,6] with the next insert that reaches it */
    fx_insert(f, 0, T1256, 4, s_x2, 6, &ir2);
    assert_int_equal(ir2.backup_pages, 1);
    assert_int_equal(kvn_radix_ack(f->t, ir2.backup_ack_id, true, NULL), 0);
    int c2 = rec_find(&f->rec, KVN_EV_BLOCK_STORED, KVN_MEDIUM_CPU_PINNED, 2);
    assert_stored(&f->rec.ev[c2], KVN_MEDIUM_CPU_PINNED, P56, 2, true, H12);
    st = fx_stats(f);
    assert_int_equal(st.locked_nodes, 0);
    assert_int_equal(st.l2_used, 3);
    fx_free(f);
}

/* a copy submit that refuses the job rolls it back like a failed ack */
static void race_submit_refused(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 16, 16, KVN_WRITE_BACK, false);
    uint32_t s01[] = {0, 1};
    struct kvn_radix_insert_result ir;
    fx_insert(f, 0, T1234, 4, s01, 1, &ir);
    struct kvn_radix_stats st0 = fx_stats(f);
    f->jobs.fail_next = -EAGAIN;
    struct kvn_radix_job_result jr;
    struct kvn_err err;
    assert_int_equal(kvn_radix_write_backup(f->t, ir.last_node, &jr, &err), -EAGAIN);
    assert_int_equal(err.code, -EAGAIN);
    struct kvn_radix_stats st = fx_stats(f);
    assert_int_equal(st.copy_submit_failures, 1);
    st.copy_submit_failures = 0; /* the only trace of the refusal */
    assert_stats_equal(&st0, &st);
    assert_int_equal(f->rec.n, 2); /* the insert's two GPU events, nothing else */
    fx_check(f);
    assert_int_equal(kvn_radix_write_backup(f->t, ir.last_node, &jr, NULL), 0);
    assert_int_not_equal(jr.ack_id, 0);
    fx_free(f);
}

/* a lock held on the pending node survives the split consistently */
static void race_split_keeps_locks(void **state)
{
    (void)state;
    struct fixture *f = fx_new(2, 16, 16, KVN_WRITE_THROUGH, false);
    uint32_t s01[] = {0, 1}, s_x2[] = {0, 2};
    struct kvn_radix_insert_result ir, ir2;
    fx_insert(f, 0, T1234, 4, s01, 1, &ir);
    assert_int_equal(kvn_radix_lock(f->t, ir.last_node, NULL), 0);
    fx_insert(f, 0, T1256, 4, s_x2, 2, &ir2);
    struct kvn_radix_node_info x, p;
    assert_int_equal(kvn_radix_node_info(f->t, ir.last_node, &x, NULL), 0);
    assert_int_equal(x.n_pages, 1);
    assert_int_not_equal(x.parent_id, 0);
    assert_int_equal(kvn_radix_node_info(f->t, x.parent_id, &p, NULL), 0);
    assert_int_equal(x.lock_count, 2); /* user path lock + pending */
    assert_int_equal(x.own_locks, 1);
    assert_int_equal(p.lock_count, 2);
    assert_int_equal(p.own_locks, 0);
    assert_int_equal(p.pending_ack, ir.backup_ack_id);
    assert_int_equal(x.pending_ack, ir.backup_ack_id);
    assert_int_equal(kvn_radix_ack(f->t, ir.backup_ack_id, true, NULL), 0);
    assert_int_equal(kvn_radix_node_info(f->t, ir.last_node, &x, NULL), 0);
    assert_int_equal(x.lock_count, 1);
    assert_int_equal(kvn_radix_unlock(f->t, ir.last_node, NULL), 0);
    assert_int_equal(kvn_radix_node_info(f->t, ir.last_node, &x, NULL), 0);
    assert_int_equal(kvn_radix_node_info(f->t, x.parent_id, &p, NULL), 0);
    assert_int_equal(x.lock_count, 0);
    assert_int_equal(p.lock_count, 0); /* [5,6] pending locks only itself */
    fx_free(f);
}

/* a replaced tree: the old tree's late acks and ids mean nothing to the new one */
static void race_salted_ids_across_trees(void **state)
{
    (void)state;
    struct fixture *a = fx_new(2, 16, 16, KVN_WRITE_THROUGH, false);
    struct fixture *b = fx_new(2, 16, 16, KVN_WRITE_THROUGH, false);
    b->cfg.id_salt = 0x5a17u;
    kvn_radix_destroy(b->t);
    assert_int_equal(kvn_radix_create(&b->cfg, &b->t, NULL), 0);
    uint32_t s01[] = {0, 1};
    struct kvn_radix_insert_result ra, rb;
    fx_insert(a, 0, T1234, 4, s01, 1, &ra);
    fx_insert(b, 0, T1234, 4, s01, 1, &rb);
    assert_int_not_equal(ra.backup_ack_id, rb.backup_ack_id);
    assert_int_not_equal(ra.last_node, rb.last_node);
    assert_int_equal(kvn_radix_ack(b->t, ra.backup_ack_id, true, NULL), -ENOENT);
    assert_int_equal(kvn_radix_lock(b->t, ra.last_node, NULL), -ENOENT);
    assert_int_equal(kvn_radix_ack(b->t, rb.backup_ack_id, true, NULL), 0);
    assert_int_equal(kvn_radix_ack(a->t, ra.backup_ack_id, true, NULL), 0);
    fx_free(a);
    fx_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(race_a_split_while_pending),   cmocka_unit_test(race_b_storage_fragments),
        cmocka_unit_test(race_c_nested_split),          cmocka_unit_test(race_d_reverse_acks),
        cmocka_unit_test(race_e_evict_while_pending),   cmocka_unit_test(race_f_write_back),
        cmocka_unit_test(race_g_reset_while_pending),   cmocka_unit_test(race_h_failed_ack),
        cmocka_unit_test(race_submit_refused),          cmocka_unit_test(race_split_keeps_locks),
        cmocka_unit_test(race_salted_ids_across_trees),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
