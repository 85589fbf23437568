/*
 * test_radix_stress.c - a seeded random walk over every operation of the
 * index (insert explicit/auto, match, lock/unlock, protect/unprotect,
 * write_backup, load_back, acks ok/failed in any order, refused submits, L1
 * and L2 eviction, reset) under every write and evict policy, checking after
 * every step: kvn_radix_check (allocator ownership, counts, heaps,
 * invariants) and the event stream as a consumer sees it (a BlockStored's
 * parent is known on that medium; BlockRemoved only of announced pages; a
 * GPU / CPU_PINNED page is never announced twice without a removal). At the
 * end every lock is released and every job acked: counts return to zero.
 *
 * Deterministic (fixed seeds, own PRNG), bounded (fixed step count).
 */
#include "cache_test_util.h"

#define KNOWN_CAP 4096

struct known {
    int64_t h[3][KNOWN_CAP];
    uint32_t n[3];
};

static int known_find(const struct known *k, int m, int64_t h)
{
    for (uint32_t i = 0; i < k->n[m]; i++)
        if (k->h[m][i] == h)
            return (int)i;
    return -1;
}

struct stress {
    struct kvn_radix *t;
    struct known known;
    uint64_t events;
    uint64_t acks[1024];
    uint32_t n_acks;
    uint64_t locks[256], prots[256];
    uint32_t n_locks, n_prots;
    uint32_t resv[64]; /* L2 pages this walk reserved and still holds */
    uint32_t n_resv;
    uint32_t x;
    int fail_submit;
    uint32_t ps;
};

static uint32_t rnd(struct stress *s, uint32_t n)
{
    s->x ^= s->x << 13;
    s->x ^= s->x >> 17;
    s->x ^= s->x << 5;
    return n ? s->x % n : 0;
}

static void on_event(void *ctx, const struct kvn_kv_event *ev)
{
    struct stress *s = ctx;
    struct known *k = &s->known;
    s->events++;
    int m = (int)ev->medium;
    switch (ev->type) {
    case KVN_EV_ALL_BLOCKS_CLEARED:
        memset(k->n, 0, sizeof(k->n));
        break;
    case KVN_EV_BLOCK_STORED:
        assert_int_equal(ev->n_hashes, 1);
        assert_int_equal(ev->block_size, s->ps);
        if (ev->has_parent && known_find(k, m, ev->parent_hash) < 0) {
            fprintf(stderr, "unknown parent %lld on medium %d\n", (long long)ev->parent_hash, m);
            fail();
        }
        if (m != KVN_MEDIUM_DISK && known_find(k, m, ev->hashes[0]) >= 0) {
            fprintf(stderr, "page %lld announced twice on medium %d\n", (long long)ev->hashes[0],
                    m);
            fail();
        }
        if (known_find(k, m, ev->hashes[0]) < 0) {
            assert_true(k->n[m] < KNOWN_CAP);
            k->h[m][k->n[m]++] = ev->hashes[0];
        }
        break;
    case KVN_EV_BLOCK_REMOVED:
        for (uint32_t i = 0; i < ev->n_hashes; i++) {
            int at = known_find(k, m, ev->hashes[i]);
            if (at < 0) {
                fprintf(stderr, "removal of unannounced page %lld on medium %d\n",
                        (long long)ev->hashes[i], m);
                fail();
            }
            k->h[m][at] = k->h[m][--k->n[m]];
        }
        break;
    }
}

static int on_submit(void *ctx, const struct kvn_copy_job *job)
{
    struct stress *s = ctx;
    if (s->fail_submit) {
        s->fail_submit = 0;
        return -EIO;
    }
    assert_true(s->n_acks < 1024);
    assert_int_not_equal(job->ack_id, 0);
    s->acks[s->n_acks++] = job->ack_id;
    return 0;
}

static int on_backup(void *ctx, const struct kvn_storage_fragment *f)
{
    struct stress *s = ctx;
    assert_true(f->n_pages > 0);
    return rnd(s, 8) == 0 ? -EIO : 0;
}

/* tokens from a tiny alphabet so that sequences share prefixes and split often */
static size_t gen_tokens(struct stress *s, int32_t *t, uint64_t ns)
{
    size_t pages = 1 + rnd(s, 6);
    size_t n = pages * s->ps;
    for (size_t i = 0; i < n; i++)
        t[i] = (int32_t)(ns * 1000 + (i < s->ps ? rnd(s, 3) : rnd(s, 2)));
    return n;
}

static void check_tree(struct stress *s, uint32_t step, uint32_t op)
{
    struct kvn_err err;
    int rc = kvn_radix_check(s->t, &err);
    if (rc)
        fprintf(stderr, "step %u op %u: check: %s\n", step, op, err.msg);
    assert_int_equal(rc, 0);
}

static void run(uint32_t seed, uint32_t ps, enum kvn_write_policy wp, enum kvn_evict_policy ep,
                bool storage, uint32_t steps)
{
    struct stress *s = calloc(1, sizeof(*s));
    assert_non_null(s);
    s->x = seed;
    s->ps = ps;
    struct kvn_radix_config cfg;
    kvn_radix_config_init(&cfg);
    cfg.page_size = ps;
    cfg.l1_pages = 24;
    cfg.l2_pages = 32;
    cfg.write_policy = wp;
    cfg.evict_policy = ep;
    cfg.storage_enabled = storage;
    cfg.sink.emit = on_event;
    cfg.sink.ctx = s;
    cfg.copy.submit = on_submit;
    cfg.copy.ctx = s;
    cfg.storage.backup = on_backup;
    cfg.storage.ctx = s;
    assert_int_equal(kvn_radix_create(&cfg, &s->t, NULL), 0);
    int32_t tok[64];
    uint64_t tick = 0;
    uint32_t counts[16] = {0};
    for (uint32_t step = 0; step < steps; step++) {
        uint64_t ns = rnd(s, 4) == 0 ? 1 : 0;
        size_t n = gen_tokens(s, tok, ns);
        uint32_t op = rnd(s, 100);
        int rc = 0;
        tick++;
        if (op < 30) { /* insert */
            struct kvn_radix_insert_result r;
            if (rnd(s, 2)) {
                rc = kvn_radix_insert(s->t, ns, tok, n, NULL, tick, &r, NULL);
                assert_true(rc == 0 || rc == -ENOSPC);
            } else {
                uint32_t slots[64];
                for (size_t i = 0; i < n / ps; i++)
                    slots[i] = rnd(s, cfg.l1_pages);
                rc = kvn_radix_insert(s->t, ns, tok, n, slots, tick, &r, NULL);
                assert_true(rc == 0 || rc == -EBUSY);
            }
            if (rc == 0) {
                assert_int_equal(r.prefix_tokens + r.revived_tokens + r.new_tokens,
                                 r.inserted_tokens);
                assert_true(r.inserted_tokens <= n);
            }
            counts[0] += rc == 0;
        } else if (op < 45) { /* match, lock or protect what matched */
            struct kvn_radix_match m;
            uint32_t slots[64];
            assert_int_equal(kvn_radix_match_prefix(s->t, ns, tok, n, tick, slots, 64, &m, NULL),
                             0);
            assert_true(m.device_tokens + m.host_tokens <= n);
            assert_int_equal(m.n_slots * ps, m.device_tokens);
            if (m.last_device_node && rnd(s, 3) == 0 && s->n_locks < 256) {
                assert_int_equal(kvn_radix_lock(s->t, m.last_device_node, NULL), 0);
                s->locks[s->n_locks++] = m.last_device_node;
            }
            struct kvn_radix_l2_match ml;
            uint32_t pages[64];
            assert_int_equal(kvn_radix_match_l2(s->t, ns, tok, n, tick, pages, 64, &ml, NULL), 0);
            assert_int_equal(ml.n_pages * ps, ml.tokens);
            /* loading nodes stop a match, not a peer read of their L2 copy */
            assert_true(ml.tokens <= n);
            for (uint32_t i = 0; i < ml.n_pages; i++)
                assert_true(pages[i] < cfg.l2_pages);
            if (m.last_host_node && rnd(s, 3) == 0 && s->n_prots < 256) {
                assert_int_equal(kvn_radix_protect(s->t, m.last_host_node, NULL), 0);
                s->prots[s->n_prots++] = m.last_host_node;
            }
            counts[1]++;
        } else if (op < 52) { /* unlock / unprotect */
            if (s->n_locks) {
                uint32_t i = rnd(s, s->n_locks);
                assert_int_equal(kvn_radix_unlock(s->t, s->locks[i], NULL), 0);
                s->locks[i] = s->locks[--s->n_locks];
            }
            if (s->n_prots) {
                uint32_t i = rnd(s, s->n_prots);
                assert_int_equal(kvn_radix_unprotect(s->t, s->prots[i], NULL), 0);
                s->prots[i] = s->prots[--s->n_prots];
            }
            counts[2]++;
        } else if (op < 72) { /* ack */
            if (s->n_acks) {
                uint32_t i = rnd(s, s->n_acks);
                assert_int_equal(kvn_radix_ack(s->t, s->acks[i], rnd(s, 5) != 0, NULL), 0);
                assert_int_equal(kvn_radix_ack(s->t, s->acks[i], true, NULL), -ENOENT);
                s->acks[i] = s->acks[--s->n_acks];
                counts[3]++;
            }
        } else if (op < 80) { /* write_backup of what matched */
            struct kvn_radix_match m;
            assert_int_equal(kvn_radix_match_prefix(s->t, ns, tok, n, tick, NULL, 0, &m, NULL), 0);
            if (m.last_device_node) {
                struct kvn_radix_job_result jr;
                s->fail_submit = rnd(s, 10) == 0;
                rc = kvn_radix_write_backup(s->t, m.last_device_node, &jr, NULL);
                assert_true(rc == 0 || rc == -ENOSPC || rc == -EIO);
                s->fail_submit = 0;
                counts[4] += rc == 0 && jr.ack_id;
            }
        } else if (op < 87) { /* load back */
            struct kvn_radix_job_result jr;
            if (rnd(s, 2)) {
                rc = kvn_radix_load_back(s->t, ns, tok, n, NULL, 0, tick, &jr, NULL);
                assert_true(rc == 0 || rc == -ENOSPC);
            } else {
                uint32_t slots[64];
                uint32_t k = rnd(s, 4);
                for (uint32_t i = 0; i < k; i++)
                    slots[i] = rnd(s, cfg.l1_pages);
                rc = kvn_radix_load_back(s->t, ns, tok, n, slots, k, tick, &jr, NULL);
                assert_true(rc == 0 || rc == -EBUSY);
            }
            counts[5] += rc == 0 && jr.ack_id;
        } else if (op < 91) { /* host insert: reserve, insert, release the rest */
            uint32_t need = (uint32_t)(n / ps), pg[64];
            rc = kvn_radix_reserve_l2(s->t, need, pg, NULL);
            assert_true(rc == 0 || rc == -ENOSPC);
            if (rc == 0) {
                struct kvn_radix_insert_result r;
                assert_int_equal(kvn_radix_insert_host(s->t, ns, tok, n, pg, tick, &r, NULL), 0);
                uint32_t used = (r.revived_tokens + r.new_tokens) / ps;
                uint32_t first = r.prefix_tokens / ps;
                /* not adopted: the prefix and anything past a pending write */
                for (uint32_t i = 0; i < need; i++)
                    if ((i < first || i >= first + used) && s->n_resv < 64)
                        s->resv[s->n_resv++] = pg[i];
                    else if (i < first || i >= first + used)
                        assert_int_equal(kvn_radix_release_l2(s->t, &pg[i], 1, NULL), 0);
                counts[9] += used;
            }
            if (s->n_resv && rnd(s, 2)) {
                uint32_t i = rnd(s, s->n_resv);
                assert_int_equal(kvn_radix_release_l2(s->t, &s->resv[i], 1, NULL), 0);
                assert_int_equal(kvn_radix_release_l2(s->t, &s->resv[i], 1, NULL), -EINVAL);
                s->resv[i] = s->resv[--s->n_resv];
            }
        } else if (op < 94) {
            struct kvn_radix_evict_result er;
            assert_int_equal(kvn_radix_evict_l1(s->t, 1 + rnd(s, 6), &er, NULL), 0);
            counts[6]++;
        } else if (op < 99 || rnd(s, 5) != 0) {
            struct kvn_radix_evict_result er;
            assert_int_equal(kvn_radix_evict_l2(s->t, 1 + rnd(s, 6), &er, NULL), 0);
            counts[7]++;
        } else {
            assert_int_equal(kvn_radix_reset(s->t, NULL), 0);
            s->n_locks = s->n_prots = 0; /* their ids are stale now */
            counts[8]++;
        }
        check_tree(s, step, op);
    }
    /* drain: every lock released, every job acked -> counts return to zero */
    while (s->n_locks)
        assert_int_equal(kvn_radix_unlock(s->t, s->locks[--s->n_locks], NULL), 0);
    while (s->n_prots)
        assert_int_equal(kvn_radix_unprotect(s->t, s->prots[--s->n_prots], NULL), 0);
    while (s->n_acks)
        assert_int_equal(kvn_radix_ack(s->t, s->acks[--s->n_acks], true, NULL), 0);
    while (s->n_resv)
        assert_int_equal(kvn_radix_release_l2(s->t, &s->resv[--s->n_resv], 1, NULL), 0);
    check_tree(s, steps, 1000);
    struct kvn_radix_stats st;
    assert_int_equal(kvn_radix_stats(s->t, &st, NULL), 0);
    assert_int_equal(st.locked_nodes, 0);
    assert_int_equal(st.protected_nodes, 0);
    assert_int_equal(st.pending_jobs, 0);
    assert_int_equal(st.orphan_pages, 0);
    assert_int_equal(st.l1_used, st.l1_tokens / ps);
    assert_int_equal(st.l2_used, st.l2_tokens / ps);
    /* everything can be evicted now */
    struct kvn_radix_evict_result er;
    for (int i = 0; i < 64; i++) {
        assert_int_equal(kvn_radix_evict_l1(s->t, 1000, &er, NULL), 0);
        while (s->n_acks)
            assert_int_equal(kvn_radix_ack(s->t, s->acks[--s->n_acks], true, NULL), 0);
        assert_int_equal(kvn_radix_evict_l2(s->t, 1000, &er, NULL), 0);
    }
    check_tree(s, steps, 1001);
    assert_int_equal(kvn_radix_stats(s->t, &st, NULL), 0);
    assert_int_equal(st.nodes, 0);
    assert_int_equal(st.l1_used, 0);
    assert_int_equal(st.l2_used, 0);
    printf("seed %u ps %u wp %d ep %d storage %d: inserts %u matches %u acks %u backups %u "
           "loads %u resets %u host pages %u events %llu\n",
           seed, ps, wp, ep, storage, counts[0], counts[1], counts[3], counts[4], counts[5],
           counts[8], counts[9], (unsigned long long)s->events);
    kvn_radix_destroy(s->t);
    free(s);
}

static void stress_write_through(void **state)
{
    (void)state;
    run(1, 2, KVN_WRITE_THROUGH, KVN_EVICT_LRU, false, 40000);
    run(2, 1, KVN_WRITE_THROUGH, KVN_EVICT_LFU, true, 40000);
}

static void stress_selective(void **state)
{
    (void)state;
    run(3, 2, KVN_WRITE_THROUGH_SELECTIVE, KVN_EVICT_LRU, true, 40000);
    run(4, 3, KVN_WRITE_THROUGH_SELECTIVE, KVN_EVICT_LFU, false, 40000);
}

static void stress_write_back(void **state)
{
    (void)state;
    run(5, 2, KVN_WRITE_BACK, KVN_EVICT_LRU, true, 40000);
    run(6, 1, KVN_WRITE_BACK, KVN_EVICT_LFU, false, 40000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(stress_write_through),
        cmocka_unit_test(stress_selective),
        cmocka_unit_test(stress_write_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
