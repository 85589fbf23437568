/*
 * cache_test_util.h - helpers shared by the cache/ test executables: an event
 * recorder sink, a copy-job recorder, a storage-hook recorder, and a stats
 * snapshot comparison for "a refused call changes nothing".
 */
#ifndef KVN_CACHE_TEST_UTIL_H
#define KVN_CACHE_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cache/radix.h"

#define REC_MAX_EVENTS 4096
#define REC_MAX_HASHES 64
#define REC_MAX_TOKENS 64

struct rec_event {
    enum kvn_kv_event_type type;
    enum kvn_medium medium;
    uint32_t n_hashes;
    int64_t hashes[REC_MAX_HASHES];
    bool has_parent;
    int64_t parent;
    uint32_t n_tokens;
    int32_t tokens[REC_MAX_TOKENS];
    uint32_t block_size;
    bool has_lora_id;
};

struct rec {
    uint32_t n;
    struct rec_event ev[REC_MAX_EVENTS];
};

static inline void rec_emit(void *ctx, const struct kvn_kv_event *ev)
{
    struct rec *r = ctx;
    assert_true(r->n < REC_MAX_EVENTS);
    struct rec_event *e = &r->ev[r->n++];
    memset(e, 0, sizeof(*e));
    e->type = ev->type;
    e->medium = ev->medium;
    assert_true(ev->n_hashes <= REC_MAX_HASHES);
    e->n_hashes = ev->n_hashes;
    if (ev->n_hashes)
        memcpy(e->hashes, ev->hashes, ev->n_hashes * sizeof(int64_t));
    e->has_parent = ev->has_parent;
    e->parent = ev->parent_hash;
    assert_true(ev->n_tokens <= REC_MAX_TOKENS);
    e->n_tokens = ev->n_tokens;
    if (ev->n_tokens)
        memcpy(e->tokens, ev->tokens, ev->n_tokens * sizeof(int32_t));
    e->block_size = ev->block_size;
    e->has_lora_id = ev->has_lora_id;
}

/* Number of recorded events of a type (and medium, unless medium < 0). */
static inline uint32_t rec_count(const struct rec *r, enum kvn_kv_event_type type, int medium)
{
    uint32_t c = 0;
    for (uint32_t i = 0; i < r->n; i++)
        if (r->ev[i].type == type && (medium < 0 || (int)r->ev[i].medium == medium))
            c++;
    return c;
}

/* Index of the k-th event of type+medium, or -1. */
static inline int rec_find(const struct rec *r, enum kvn_kv_event_type type, int medium, uint32_t k)
{
    for (uint32_t i = 0; i < r->n; i++)
        if (r->ev[i].type == type && (medium < 0 || (int)r->ev[i].medium == medium))
            if (k-- == 0)
                return (int)i;
    return -1;
}

/* Asserts a BlockStored of exactly one page with these tokens and parent. */
static inline void assert_stored(const struct rec_event *e, enum kvn_medium m, const int32_t *tok,
                                 uint32_t ps, bool has_parent, int64_t parent)
{
    assert_int_equal(e->type, KVN_EV_BLOCK_STORED);
    assert_int_equal(e->medium, m);
    assert_int_equal(e->n_hashes, 1);
    assert_int_equal(e->n_tokens, ps);
    assert_int_equal(e->block_size, ps);
    assert_memory_equal(e->tokens, tok, ps * sizeof(int32_t));
    assert_int_equal(e->has_parent, has_parent);
    if (has_parent)
        assert_int_equal(e->parent, parent);
    assert_false(e->has_lora_id);
}

#define JOBS_MAX 256
struct jobs {
    uint32_t n;
    int fail_next; /* submit returns this once when non-zero */
    struct {
        uint64_t ack;
        enum kvn_copy_dir dir;
        uint32_t n_pages;
        uint32_t l1[64], l2[64];
    } j[JOBS_MAX];
};

static inline int jobs_submit(void *ctx, const struct kvn_copy_job *job)
{
    struct jobs *js = ctx;
    if (js->fail_next) {
        int rc = js->fail_next;
        js->fail_next = 0;
        return rc;
    }
    assert_true(js->n < JOBS_MAX);
    assert_true(job->n_pages <= 64);
    js->j[js->n].ack = job->ack_id;
    js->j[js->n].dir = job->dir;
    js->j[js->n].n_pages = job->n_pages;
    memcpy(js->j[js->n].l1, job->l1_slots, job->n_pages * 4);
    memcpy(js->j[js->n].l2, job->l2_pages, job->n_pages * 4);
    js->n++;
    return 0;
}

#define STORE_MAX 64
struct store {
    uint32_t n;
    int rc; /* what backup() returns */
    struct {
        uint32_t n_pages;
        int32_t tokens[64];
        int64_t hashes[16];
        bool has_parent;
        int64_t parent;
    } f[STORE_MAX];
};

static inline int store_backup(void *ctx, const struct kvn_storage_fragment *f)
{
    struct store *s = ctx;
    assert_true(s->n < STORE_MAX);
    assert_true(f->n_pages * f->page_size <= 64 && f->n_pages <= 16);
    s->f[s->n].n_pages = f->n_pages;
    memcpy(s->f[s->n].tokens, f->tokens, f->n_pages * f->page_size * 4);
    memcpy(s->f[s->n].hashes, f->hashes, f->n_pages * 8);
    s->f[s->n].has_parent = f->has_parent;
    s->f[s->n].parent = f->parent_hash;
    s->n++;
    return s->rc;
}

struct fixture {
    struct kvn_radix *t;
    struct rec rec;
    struct jobs jobs;
    struct store store;
    struct kvn_radix_config cfg;
};

static inline struct fixture *fx_new(uint32_t ps, uint32_t l1, uint32_t l2,
                                     enum kvn_write_policy wp, bool storage)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    kvn_radix_config_init(&f->cfg);
    f->cfg.page_size = ps;
    f->cfg.l1_pages = l1;
    f->cfg.l2_pages = l2;
    f->cfg.write_policy = wp;
    f->cfg.storage_enabled = storage;
    f->cfg.sink.emit = rec_emit;
    f->cfg.sink.ctx = &f->rec;
    f->cfg.copy.submit = jobs_submit;
    f->cfg.copy.ctx = &f->jobs;
    f->cfg.storage.backup = store_backup;
    f->cfg.storage.ctx = &f->store;
    struct kvn_err err;
    int rc = kvn_radix_create(&f->cfg, &f->t, &err);
    if (rc)
        fprintf(stderr, "create: %s\n", err.msg);
    assert_int_equal(rc, 0);
    return f;
}

static inline void fx_check(struct fixture *f)
{
    struct kvn_err err;
    int rc = kvn_radix_check(f->t, &err);
    if (rc)
        fprintf(stderr, "check: %s\n", err.msg);
    assert_int_equal(rc, 0);
}

static inline void fx_free(struct fixture *f)
{
    fx_check(f);
    kvn_radix_destroy(f->t);
    free(f);
}

static inline struct kvn_radix_stats fx_stats(struct fixture *f)
{
    struct kvn_radix_stats st;
    assert_int_equal(kvn_radix_stats(f->t, &st, NULL), 0);
    return st;
}

/* Insert with explicit slots; asserts success. */
static inline void fx_insert(struct fixture *f, uint64_t ns, const int32_t *tok, size_t n,
                             const uint32_t *slots, uint64_t tick,
                             struct kvn_radix_insert_result *res)
{
    struct kvn_err err;
    int rc = kvn_radix_insert(f->t, ns, tok, n, slots, tick, res, &err);
    if (rc)
        fprintf(stderr, "insert: %s\n", err.msg);
    assert_int_equal(rc, 0);
    fx_check(f);
}

static inline struct kvn_radix_match fx_match(struct fixture *f, uint64_t ns, const int32_t *tok,
                                              size_t n, uint64_t tick)
{
    struct kvn_radix_match m;
    assert_int_equal(kvn_radix_match_prefix(f->t, ns, tok, n, tick, NULL, 0, &m, NULL), 0);
    return m;
}

/* Everything observable that a refused call must not change. */
static inline void assert_stats_equal(const struct kvn_radix_stats *a,
                                      const struct kvn_radix_stats *b)
{
    /* index_bytes may grow (internal reservations); everything else must not change */
    assert_int_equal(a->page_size, b->page_size);
    assert_int_equal(a->l1_capacity, b->l1_capacity);
    assert_int_equal(a->l1_used, b->l1_used);
    assert_int_equal(a->l1_free, b->l1_free);
    assert_int_equal(a->l1_evictable_pages, b->l1_evictable_pages);
    assert_int_equal(a->l2_capacity, b->l2_capacity);
    assert_int_equal(a->l2_used, b->l2_used);
    assert_int_equal(a->l2_free, b->l2_free);
    assert_int_equal(a->l2_evictable_pages, b->l2_evictable_pages);
    assert_int_equal(a->nodes, b->nodes);
    assert_int_equal(a->namespaces, b->namespaces);
    assert_int_equal(a->locked_nodes, b->locked_nodes);
    assert_int_equal(a->protected_nodes, b->protected_nodes);
    assert_int_equal(a->pending_jobs, b->pending_jobs);
    assert_int_equal(a->pending_pages, b->pending_pages);
    assert_int_equal(a->orphan_pages, b->orphan_pages);
    assert_int_equal(a->cached_tokens, b->cached_tokens);
    assert_int_equal(a->l1_tokens, b->l1_tokens);
    assert_int_equal(a->l2_tokens, b->l2_tokens);
    assert_int_equal(a->events, b->events);
    assert_int_equal(a->jobs_submitted, b->jobs_submitted);
    assert_int_equal(a->acks_ok, b->acks_ok);
    assert_int_equal(a->acks_failed, b->acks_failed);
    assert_int_equal(a->copy_submit_failures, b->copy_submit_failures);
    assert_int_equal(a->backups_skipped, b->backups_skipped);
    assert_int_equal(a->storage_backups, b->storage_backups);
    assert_int_equal(a->storage_failures, b->storage_failures);
    assert_int_equal(a->l2_reserved, b->l2_reserved);
}

#endif /* KVN_CACHE_TEST_UTIL_H */
