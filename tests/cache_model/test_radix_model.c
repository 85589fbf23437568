/*
 * test_radix_model.c - randomized model-based test of the radix index.
 *
 * Random operations (insert in auto and explicit mode, match, lock/unlock,
 * protect/unprotect, write_backup, ack ok/failed in any order, evict L1,
 * evict L2, load_back, reset, and refused calls) over several fixed seeds,
 * with small alphabets, short sequences and page sizes 1..4 so that splits,
 * shared prefixes and races between copy jobs and splits are frequent.
 *
 * Three independent views are kept and compared after EVERY step:
 *
 *   events    an in-order consumer of the event stream, per medium, as
 *             shared/tools/kv_events_consumer.py does: every BlockStored's
 *             parent must be announced on that medium, its hash must equal
 *             our own SHA-256 chain over its tokens, no page is announced
 *             twice on a medium, BlockRemoved only of announced pages;
 *   tree      a snapshot of every live tree node (kvn_radix_node_info over the
 *             ids the results handed out, closed under parent links);
 *   ledger    what the test itself did: its locks and protections per id, the
 *             copy jobs it was handed and which it acked, jobs orphaned by reset.
 *
 * and the naive reference model: a match of any query must equal the longest
 * prefix of the query whose pages are announced on GPU, followed by pages
 * announced on CPU_PINNED and not being loaded back; an insert must report the
 * prefix, revived and new pages the snapshot predicts and emit GPU BlockStored
 * for exactly those pages, in order.
 *
 * Checked invariants (see check_step): allocator accounting (free + used =
 * capacity, every used L1 slot / L2 page owned by exactly one tree page or
 * orphaned job), GPU announced == pages in L1, CPU announced pages are in L2
 * and every L2 page not waiting on a pending write is announced exactly once,
 * L1 top-closed, lock/protect counts equal the ledger's path sums, locked nodes
 * stay in L1, protected stay in L2, pending nodes are never dropped, stats
 * agree with the snapshot, and after every lock is released and every job
 * acked, all lock counts are zero.
 *
 * On a failure the seed, step and the last operations are printed: each line is
 * a replayable description of one call.
 *
 * KVN_MODEL_OPS (environment) overrides the operations per seed (default
 * 25,000), KVN_MODEL_SEED runs that one seed only (to replay a failure).
 * Nothing is steered around: insert_host may split a node being loaded back
 * (op_insert_host), and eviction ties must go by id (first_victims). Both were
 * index bugs found here (fixed in radix.c; regressions in tests/cache/
 * test_split_inflight.c and test_evict_ties.c); the former KVN_MODEL_STRICT=1
 * switch is gone, this is the only mode.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* The low-level SHA-256 calls: an implementation independent of cache/. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>

#include "cache/radix.h"

#define N_MEDIA   3
#define MAX_PAGES 8 /* pages of one generated sequence */
#define MAX_PS    4
#define MAX_TOK   (MAX_PAGES * MAX_PS)
#define POOL      10
#define MAX_NODES 512 /* live node ids tracked */
#define MAX_VIEW  1024
#define MAX_JOBS  4096
#define JOB_PAGES 128
#define HISTORY   40
#define MAP_BITS  20

/* Record the first failure and leave the current function. */
#define FAIL(...)                                                                                  \
    do {                                                                                           \
        model_fail(m, __VA_ARGS__);                                                                \
        return;                                                                                    \
    } while (0)
#define REFUSE(...)                                                                                \
    do {                                                                                           \
        expect_refusal(m, __VA_ARGS__);                                                            \
        return;                                                                                    \
    } while (0)

/* ------------------------------------------------------------------ rng */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint32_t rng_below(uint64_t *s, uint32_t n)
{
    return n ? (uint32_t)(rng_next(s) % n) : 0;
}

/* ------------------------------------------------- independent hashing */

static void sha_page(const uint8_t *prev, const int32_t *tok, uint32_t n, uint8_t out[32])
{
    SHA256_CTX c;
    SHA256_Init(&c);
    if (prev)
        SHA256_Update(&c, prev, 32);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)tok[i];
        uint8_t b[4] = {(uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16), (uint8_t)(u >> 24)};
        SHA256_Update(&c, b, 4);
    }
    SHA256_Final(out, &c);
}

static int64_t event_hash(const uint8_t d[32])
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | d[i];
    return (int64_t)v;
}

/* Event hashes of the whole pages of tok[0..n). */
static uint32_t chain(const int32_t *tok, uint32_t n, uint32_t ps, int64_t *hashes)
{
    uint8_t d[32];
    uint32_t pages = n / ps;
    for (uint32_t p = 0; p < pages; p++) {
        sha_page(p ? d : NULL, tok + p * ps, ps, d);
        hashes[p] = event_hash(d);
    }
    return pages;
}

/* ------------------------------------------- event consumer (per medium) */

struct page_ent {
    bool used;
    int64_t hash;
    uint8_t digest[32];
    uint64_t gen[N_MEDIA]; /* announced on medium m iff gen[m] == cur_gen */
};

struct model;
static void model_fail(struct model *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

struct job {
    uint64_t ack_id;
    enum kvn_copy_dir dir;
    uint32_t n;
    uint32_t l1[JOB_PAGES], l2[JOB_PAGES];
    enum { JOB_PENDING, JOB_ORPHAN, JOB_DONE } state;
};

struct vpage { /* one page of the tree snapshot */
    int64_t hash;
    uint64_t node;
    bool in_l1, in_l2, in_l3, loading, pending_write, anc_pending_write;
    uint32_t l1, l2;
    uint64_t pending_ack;
    uint64_t ns;
};

struct vnode {
    struct kvn_radix_node_info info;
    uint32_t parent_idx; /* index in the node array, or UINT32_MAX at the root */
    uint32_t sub_locks, sub_protects;
    int64_t hash0; /* info.hashes is valid only until the next mutation */
};

struct logged_event {
    enum kvn_kv_event_type type;
    enum kvn_medium medium;
    uint32_t n_hashes;
    int64_t hash0;
};

struct model {
    uint64_t seed, rng, cb_rng;
    uint32_t ps, alphabet;
    uint32_t n_ns; /* namespaces in use: NS_IDS[0..n_ns) */
    struct kvn_radix_config cfg;
    struct kvn_radix *tree;
    uint64_t step, tick;

    /* consumer */
    struct page_ent *map;
    uint64_t cur_gen;
    uint64_t n_on[N_MEDIA];

    /* events of the current step */
    struct logged_event *log;
    size_t n_log, cap_log;
    bool in_failed_ack;
    bool step_failed_ack; /* this step acked a job as failed */

    /* jobs */
    struct job *jobs;
    size_t n_jobs;
    bool submit_fail_next;
    bool submit_refused; /* submit refused a job during this step */

    /* ledger */
    uint64_t ids[MAX_NODES];
    uint32_t n_ids;
    uint64_t dead_ids[64];
    uint32_t n_dead;
    struct {
        uint64_t id;
        uint32_t locks, protects;
        bool l1_at_lock, l2_at_protect;
    } led[MAX_NODES];
    uint32_t n_led;

    /* snapshot of the tree after the previous step */
    struct vnode nodes[MAX_NODES];
    uint32_t n_nodes;
    struct vpage view[MAX_VIEW];
    uint32_t n_view;

    /* base sequences */
    int32_t pool[POOL][MAX_TOK];
    uint32_t pool_len[POOL];

    char history[HISTORY][160];
    uint32_t n_hist;
    char failure[512];
    bool failed;
    struct frag_rec { /* storage fragments handed over during this step */
        int64_t hashes[64];
        uint32_t l2[64];
        uint32_t n;
        bool has_parent, stored;
        int64_t parent;
    } frags[64];
    uint32_t n_frags;

    /* L2 pages the test reserved (kvn_radix_reserve_l2) and has not handed over */
    uint32_t reserved[256];
    uint32_t n_reserved;
    uint64_t counts[28];
};

static void model_fail(struct model *m, const char *fmt, ...)
{
    if (m->failed)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->failure, sizeof(m->failure), fmt, ap);
    va_end(ap);
    m->failed = true;
}

static void hist(struct model *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void hist(struct model *m, const char *fmt, ...)
{
    va_list ap;
    char *h = m->history[m->n_hist++ % HISTORY];
    int k = snprintf(h, 160, "#%llu ", (unsigned long long)m->step);
    va_start(ap, fmt);
    vsnprintf(h + k, (size_t)(160 - k), fmt, ap);
    va_end(ap);
}

static void dump_and_fail(struct model *m)
{
    fprintf(stderr, "MODEL FAILURE seed %llu step %llu (ps %u l1 %u l2 %u wp %d ep %d st %d): %s\n",
            (unsigned long long)m->seed, (unsigned long long)m->step, m->ps, m->cfg.l1_pages,
            m->cfg.l2_pages, (int)m->cfg.write_policy, (int)m->cfg.evict_policy,
            (int)m->cfg.storage_enabled, m->failure);
    uint32_t first = m->n_hist > HISTORY ? m->n_hist - HISTORY : 0;
    for (uint32_t i = first; i < m->n_hist; i++)
        fprintf(stderr, "  %s\n", m->history[i % HISTORY]);
    fprintf(stderr, "  events of this step:\n");
    for (size_t i = 0; i < m->n_log; i++)
        fprintf(stderr, "    %s %s %u hashes, first %lld\n",
                m->log[i].type == KVN_EV_BLOCK_STORED    ? "BlockStored"
                : m->log[i].type == KVN_EV_BLOCK_REMOVED ? "BlockRemoved"
                                                         : "AllBlocksCleared",
                kvn_medium_name(m->log[i].medium), m->log[i].n_hashes, (long long)m->log[i].hash0);
    fprintf(stderr, "  tree at the last snapshot (%u nodes reachable):\n", m->n_nodes);
    for (uint32_t i = 0; i < m->n_nodes; i++) {
        const struct kvn_radix_node_info *in = &m->nodes[i].info;
        fprintf(stderr,
                "    node %llu parent %llu pages %u l1 %d l2 %d l3 %d loading %d pending %llu "
                "lock %u (own %u) protect %u (own %u) hits %u tick %llu hash0 %lld\n",
                (unsigned long long)in->id, (unsigned long long)in->parent_id, in->n_pages,
                (int)in->in_l1, (int)in->in_l2, (int)in->in_l3, (int)in->loading,
                (unsigned long long)in->pending_ack, in->lock_count, in->own_locks,
                in->protect_count, in->own_protects, in->hit_count,
                (unsigned long long)in->last_access_tick, (long long)m->nodes[i].hash0);
    }
    fail_msg("seed %llu step %llu: %s", (unsigned long long)m->seed, (unsigned long long)m->step,
             m->failure);
}

static struct page_ent *map_find(struct model *m, int64_t h, bool add)
{
    size_t mask = ((size_t)1 << MAP_BITS) - 1;
    for (size_t i = ((uint64_t)h * 0x9e3779b97f4a7c15ull) >> (64 - MAP_BITS);; i = (i + 1) & mask) {
        struct page_ent *e = &m->map[i];
        if (e->used && e->hash == h)
            return e;
        if (!e->used) {
            if (!add)
                return NULL;
            e->used = true;
            e->hash = h;
            return e;
        }
    }
}

static bool announced(struct model *m, int64_t h, enum kvn_medium med)
{
    struct page_ent *e = map_find(m, h, false);
    return e && e->gen[med] == m->cur_gen;
}

static void consume(void *ctx, const struct kvn_kv_event *ev)
{
    struct model *m = ctx;
    if (m->n_log == m->cap_log) {
        m->cap_log = m->cap_log ? m->cap_log * 2 : 256;
        m->log = realloc(m->log, m->cap_log * sizeof(*m->log));
        if (!m->log)
            abort();
    }
    struct logged_event *le = &m->log[m->n_log++];
    le->type = ev->type;
    le->medium = ev->medium;
    le->n_hashes = ev->n_hashes;
    le->hash0 = ev->n_hashes ? ev->hashes[0] : 0;

    if (ev->type == KVN_EV_ALL_BLOCKS_CLEARED) {
        m->cur_gen++;
        memset(m->n_on, 0, sizeof(m->n_on));
        return;
    }
    if ((unsigned)ev->medium >= N_MEDIA) {
        model_fail(m, "event with medium %d", (int)ev->medium);
        return;
    }
    const char *mn = kvn_medium_name(ev->medium);
    if (ev->type == KVN_EV_BLOCK_REMOVED) {
        if (ev->n_hashes == 0)
            model_fail(m, "%s BlockRemoved with no hash", mn);
        for (uint32_t i = 0; i < ev->n_hashes; i++) {
            struct page_ent *e = map_find(m, ev->hashes[i], false);
            if (!e || e->gen[ev->medium] != m->cur_gen) {
                model_fail(m, "%s BlockRemoved of %lld never announced there", mn,
                           (long long)ev->hashes[i]);
                return;
            }
            e->gen[ev->medium] = 0;
            m->n_on[ev->medium]--;
        }
        return;
    }
    if (ev->type != KVN_EV_BLOCK_STORED) {
        model_fail(m, "unknown event type %d", (int)ev->type);
        return;
    }
    if (m->in_failed_ack)
        model_fail(m, "%s BlockStored during a failed ack", mn);
    if (ev->n_hashes != 1 || ev->block_size != m->ps || ev->n_tokens != m->ps || ev->has_lora_id) {
        model_fail(m, "%s BlockStored shape: %u hashes, block_size %u, %u tokens, lora %d", mn,
                   ev->n_hashes, ev->block_size, ev->n_tokens, (int)ev->has_lora_id);
        return;
    }
    const uint8_t *prev = NULL;
    if (ev->has_parent) {
        struct page_ent *p = map_find(m, ev->parent_hash, false);
        if (!p || p->gen[ev->medium] != m->cur_gen) {
            model_fail(m, "%s BlockStored %lld: unknown parent %lld", mn, (long long)ev->hashes[0],
                       (long long)ev->parent_hash);
            return;
        }
        prev = p->digest;
    }
    uint8_t d[32];
    sha_page(prev, ev->tokens, ev->n_tokens, d);
    if (event_hash(d) != ev->hashes[0]) {
        model_fail(m, "%s BlockStored hash %lld != SHA-256 chain %lld", mn,
                   (long long)ev->hashes[0], (long long)event_hash(d));
        return;
    }
    struct page_ent *e = map_find(m, ev->hashes[0], true);
    if (e->gen[ev->medium] == m->cur_gen) {
        model_fail(m, "%s BlockStored %lld twice without a BlockRemoved", mn,
                   (long long)ev->hashes[0]);
        return;
    }
    memcpy(e->digest, d, 32);
    e->gen[ev->medium] = m->cur_gen;
    m->n_on[ev->medium]++;
}

/* --------------------------------------------------------- callbacks */

static int submit(void *ctx, const struct kvn_copy_job *job)
{
    struct model *m = ctx;
    if (job->ack_id == 0)
        model_fail(m, "copy job with ack id 0");
    if (job->n_pages == 0 || job->n_pages > JOB_PAGES) {
        model_fail(m, "copy job with %u pages", job->n_pages);
        return -EINVAL;
    }
    for (size_t i = 0; i < m->n_jobs; i++)
        if (m->jobs[i].ack_id == job->ack_id)
            model_fail(m, "ack id %llu handed out twice", (unsigned long long)job->ack_id);
    bool fail = m->submit_fail_next;
    m->submit_fail_next = false;
    m->submit_refused |= fail;
    if (m->n_jobs == MAX_JOBS) {
        /* compact: done jobs are never looked at again */
        size_t k = 0;
        for (size_t i = 0; i < m->n_jobs; i++)
            if (m->jobs[i].state != JOB_DONE)
                m->jobs[k++] = m->jobs[i];
        m->n_jobs = k;
        if (k == MAX_JOBS)
            abort();
    }
    struct job *j = &m->jobs[m->n_jobs++];
    j->ack_id = job->ack_id;
    j->dir = job->dir;
    j->n = job->n_pages;
    memcpy(j->l1, job->l1_slots, job->n_pages * sizeof(uint32_t));
    memcpy(j->l2, job->l2_pages, job->n_pages * sizeof(uint32_t));
    j->state = fail ? JOB_DONE : JOB_PENDING;
    return fail ? -EIO : 0;
}

static int storage_backup(void *ctx, const struct kvn_storage_fragment *f)
{
    struct model *m = ctx;
    if (f->page_size != m->ps || f->n_pages == 0) {
        model_fail(m, "storage fragment page_size %u n_pages %u", f->page_size, f->n_pages);
        return -EINVAL;
    }
    /* the fragment's pages were just announced on CPU_PINNED, with their chain */
    uint8_t d[32];
    const uint8_t *prev = f->prev_digest;
    if (f->has_parent != (prev != NULL))
        model_fail(m, "storage fragment: has_parent %d but prev_digest %p", (int)f->has_parent,
                   (const void *)prev);
    if (f->has_parent && !announced(m, f->parent_hash, KVN_MEDIUM_CPU_PINNED))
        model_fail(m, "storage fragment parent %lld not on CPU_PINNED", (long long)f->parent_hash);
    for (uint32_t p = 0; p < f->n_pages; p++) {
        sha_page(prev, f->tokens + (size_t)p * f->page_size, f->page_size, d);
        if (event_hash(d) != f->hashes[p])
            model_fail(m, "storage fragment page %u hash mismatch", p);
        if (!announced(m, f->hashes[p], KVN_MEDIUM_CPU_PINNED))
            model_fail(m,
                       "storage fragment page %lld handed over before its CPU_PINNED "
                       "BlockStored",
                       (long long)f->hashes[p]);
        prev = d;
    }
    m->counts[15]++;
    bool stored = rng_below(&m->cb_rng, 8) != 0;
    if (m->n_frags < 64 && f->n_pages <= 64) {
        struct frag_rec *fr = &m->frags[m->n_frags++];
        memcpy(fr->hashes, f->hashes, f->n_pages * sizeof(int64_t));
        memcpy(fr->l2, f->l2_pages, f->n_pages * sizeof(uint32_t));
        fr->n = f->n_pages;
        fr->has_parent = f->has_parent;
        fr->parent = f->parent_hash;
        fr->stored = stored;
    }
    return stored ? 0 : -EIO;
}

static struct vpage *view_find(struct model *m, int64_t h);

/*
 * After the step: a fragment the hook stored is on DISK (BlockStored per page)
 * when its parent is on DISK or it starts at the root, and its l2_pages were the
 * node's L2 pages.
 */
static void check_fragments(struct model *m)
{
    for (uint32_t i = 0; i < m->n_frags && !m->failed; i++) {
        const struct frag_rec *fr = &m->frags[i];
        bool parent_on_disk = !fr->has_parent || announced(m, fr->parent, KVN_MEDIUM_DISK);
        for (uint32_t p = 0; p < fr->n; p++) {
            struct vpage *vp = view_find(m, fr->hashes[p]);
            if (!vp)
                continue; /* gone within the same step */
            if (vp->in_l2 && vp->l2 != fr->l2[p])
                FAIL("storage fragment page %lld: l2 page %u, the node holds %u",
                     (long long)fr->hashes[p], fr->l2[p], vp->l2);
            if (fr->stored && parent_on_disk && !announced(m, fr->hashes[p], KVN_MEDIUM_DISK))
                FAIL("storage fragment page %lld stored (parent on DISK or root) but no DISK "
                     "BlockStored",
                     (long long)fr->hashes[p]);
            if (fr->stored && parent_on_disk && !vp->in_l3)
                FAIL("storage fragment page %lld stored but its node is not in L3",
                     (long long)fr->hashes[p]);
        }
        m->counts[19] += fr->stored && parent_on_disk;
    }
}

/* ------------------------------------------------------------ snapshot */

static bool have_id(struct model *m, uint64_t id)
{
    for (uint32_t i = 0; i < m->n_ids; i++)
        if (m->ids[i] == id)
            return true;
    return false;
}

static void add_id(struct model *m, uint64_t id)
{
    if (!id || have_id(m, id))
        return;
    if (m->n_ids == MAX_NODES) {
        model_fail(m, "more than %d live tree node ids", MAX_NODES);
        return;
    }
    m->ids[m->n_ids++] = id;
}

static int led_find(struct model *m, uint64_t id, bool add)
{
    for (uint32_t i = 0; i < m->n_led; i++)
        if (m->led[i].id == id)
            return (int)i;
    if (!add || m->n_led == MAX_NODES)
        return -1;
    memset(&m->led[m->n_led], 0, sizeof(m->led[0]));
    m->led[m->n_led].id = id;
    return (int)m->n_led++;
}

static struct vpage *view_find(struct model *m, int64_t h)
{
    for (uint32_t i = 0; i < m->n_view; i++)
        if (m->view[i].hash == h)
            return &m->view[i];
    return NULL;
}

static int node_idx(struct model *m, uint64_t id)
{
    for (uint32_t i = 0; i < m->n_nodes; i++)
        if (m->nodes[i].info.id == id)
            return (int)i;
    return -1;
}

/* Rebuilds nodes[] and view[] from the ids the test knows (closed under parents). */
static void snapshot(struct model *m)
{
    struct kvn_err err;
    bool grew = true;
    while (grew && !m->failed) {
        grew = false;
        for (uint32_t i = 0; i < m->n_ids;) {
            struct kvn_radix_node_info info;
            int rc = kvn_radix_node_info(m->tree, m->ids[i], &info, &err);
            if (rc == -ENOENT) {
                if (m->n_dead < 64)
                    m->dead_ids[m->n_dead++] = m->ids[i];
                else
                    m->dead_ids[rng_below(&m->cb_rng, 64)] = m->ids[i];
                m->ids[i] = m->ids[--m->n_ids];
                continue;
            }
            if (rc < 0) {
                model_fail(m, "node_info(%llu): %s", (unsigned long long)m->ids[i], err.msg);
                return;
            }
            if (info.parent_id && !have_id(m, info.parent_id)) {
                add_id(m, info.parent_id);
                grew = true;
            }
            i++;
        }
    }
    m->n_nodes = 0;
    m->n_view = 0;
    for (uint32_t i = 0; i < m->n_ids && !m->failed; i++) {
        struct vnode *vn = &m->nodes[m->n_nodes++];
        if (kvn_radix_node_info(m->tree, m->ids[i], &vn->info, &err) < 0) {
            model_fail(m, "node_info(%llu) failed after closure: %s", (unsigned long long)m->ids[i],
                       err.msg);
            return;
        }
        vn->sub_locks = vn->sub_protects = 0;
        vn->hash0 = vn->info.n_pages ? vn->info.hashes[0] : 0;
    }
    for (uint32_t i = 0; i < m->n_nodes; i++) {
        struct vnode *vn = &m->nodes[i];
        int p = vn->info.parent_id ? node_idx(m, vn->info.parent_id) : -1;
        vn->parent_idx = p < 0 ? UINT32_MAX : (uint32_t)p;
        if (vn->info.parent_id && p < 0)
            model_fail(m, "parent %llu of %llu unknown", (unsigned long long)vn->info.parent_id,
                       (unsigned long long)vn->info.id);
    }
    for (uint32_t i = 0; i < m->n_nodes && !m->failed; i++) {
        struct vnode *vn = &m->nodes[i];
        bool pw = vn->info.pending_ack && !vn->info.loading;
        bool anc_pw = false;
        uint32_t depth = 0;
        for (uint32_t a = vn->parent_idx; a != UINT32_MAX; a = m->nodes[a].parent_idx) {
            if (++depth > MAX_NODES) {
                model_fail(m, "parent cycle at node %llu", (unsigned long long)vn->info.id);
                return;
            }
            if (m->nodes[a].info.pending_ack && !m->nodes[a].info.loading)
                anc_pw = true;
            m->nodes[a].sub_locks += vn->info.own_locks;
            m->nodes[a].sub_protects += vn->info.own_protects;
        }
        vn->sub_locks += vn->info.own_locks;
        vn->sub_protects += vn->info.own_protects;
        for (uint32_t p = 0; p < vn->info.n_pages; p++) {
            if (m->n_view == MAX_VIEW) {
                model_fail(m, "more than %d live pages", MAX_VIEW);
                return;
            }
            struct vpage *vp = &m->view[m->n_view++];
            vp->hash = vn->info.hashes[p];
            vp->node = vn->info.id;
            vp->in_l1 = vn->info.in_l1;
            vp->in_l2 = vn->info.in_l2;
            vp->in_l3 = vn->info.in_l3;
            vp->loading = vn->info.loading;
            vp->pending_write = pw;
            vp->anc_pending_write = anc_pw;
            vp->pending_ack = vn->info.pending_ack;
            vp->ns = vn->info.ns;
            vp->l1 = vn->info.l1_slots ? vn->info.l1_slots[p] : UINT32_MAX;
            vp->l2 = vn->info.l2_pages ? vn->info.l2_pages[p] : UINT32_MAX;
        }
    }
}

/* ------------------------------------------------------- the invariants */

static void check_ownership(struct model *m, const char *tier, uint32_t cap, uint32_t used,
                            uint32_t freec, bool l1)
{
    if (used + freec != cap) {
        model_fail(m, "%s: used %u + free %u != capacity %u", tier, used, freec, cap);
        return;
    }
    uint8_t *owner = calloc(cap + 1, 1);
    uint32_t owned = 0;
    for (uint32_t i = 0; i < m->n_view; i++) {
        uint32_t x = l1 ? m->view[i].l1 : m->view[i].l2;
        if (x == UINT32_MAX)
            continue;
        if (x >= cap || owner[x]) {
            model_fail(m, "%s index %u %s (page %lld)", tier, x,
                       x >= cap ? "out of range" : "owned twice", (long long)m->view[i].hash);
            free(owner);
            return;
        }
        owner[x] = 1;
        owned++;
    }
    for (size_t j = 0; j < m->n_jobs; j++) {
        const struct job *jb = &m->jobs[j];
        if (jb->state == JOB_DONE)
            continue;
        /* an orphan keeps its destination pages until its ack */
        bool dest = l1 ? jb->dir == KVN_COPY_L2_TO_L1 : jb->dir == KVN_COPY_L1_TO_L2;
        if (!dest)
            continue;
        for (uint32_t k = 0; k < jb->n; k++) {
            uint32_t x = l1 ? jb->l1[k] : jb->l2[k];
            if (jb->state == JOB_PENDING && x < cap && owner[x] == 1)
                continue; /* a live job's destination, committed to its tree node */
            if (x >= cap || owner[x]) {
                model_fail(m, "%s index %u of orphan job %llu %s", tier, x,
                           (unsigned long long)jb->ack_id,
                           x >= cap ? "out of range" : "owned twice");
                free(owner);
                return;
            }
            owner[x] = 2;
            owned++;
        }
    }
    for (uint32_t k = 0; !l1 && k < m->n_reserved; k++) {
        uint32_t x = m->reserved[k];
        if (x >= cap || owner[x]) {
            model_fail(m, "L2 page %u reserved by the test %s", x,
                       x >= cap ? "out of range" : "is owned by the tree too");
            free(owner);
            return;
        }
        owner[x] = 3;
        owned++;
    }
    if (owned != used)
        model_fail(m, "%s: allocator says %u used, tree pages + orphan jobs + reservations own %u",
                   tier, used, owned);
    free(owner);
}

static size_t outstanding_jobs(const struct model *m)
{
    size_t k = 0;
    for (size_t i = 0; i < m->n_jobs; i++)
        k += m->jobs[i].state != JOB_DONE;
    return k;
}

static void check_step(struct model *m)
{
    struct kvn_err err;
    if (m->failed)
        return;
    snapshot(m);
    if (m->failed)
        return;
    struct kvn_radix_stats st;
    if (kvn_radix_stats(m->tree, &st, &err) < 0) {
        model_fail(m, "stats: %s", err.msg);
        return;
    }
    if (kvn_radix_check(m->tree, &err) < 0) {
        model_fail(m, "kvn_radix_check: %s", err.msg);
        return;
    }
    check_ownership(m, "L1", st.l1_capacity, st.l1_used, st.l1_free, true);
    check_ownership(m, "L2", st.l2_capacity, st.l2_used, st.l2_free, false);
    if (m->failed)
        return;
    if (st.nodes != m->n_nodes)
        FAIL("stats.nodes %llu, %u nodes reachable from handed-out ids",
             (unsigned long long)st.nodes, m->n_nodes);
    if (st.l2_reserved != m->n_reserved)
        FAIL("stats.l2_reserved %u, the test holds %u", st.l2_reserved, m->n_reserved);
    if (st.pending_jobs != outstanding_jobs(m))
        FAIL("stats.pending_jobs %llu, test holds %zu unacked jobs",
             (unsigned long long)st.pending_jobs, outstanding_jobs(m));

    uint64_t l1_tok = 0, l2_tok = 0, cached = 0, locked = 0, prot = 0;
    for (uint32_t i = 0; i < m->n_nodes; i++) {
        const struct vnode *vn = &m->nodes[i];
        const struct kvn_radix_node_info *in = &vn->info;
        uint64_t tok = (uint64_t)in->n_pages * m->ps;
        if (in->n_pages == 0)
            FAIL("node %llu has no page", (unsigned long long)in->id);
        if (!in->in_l1 && !in->in_l2)
            FAIL("node %llu in neither L1 nor L2", (unsigned long long)in->id);
        if (in->in_l1 && vn->parent_idx != UINT32_MAX && !m->nodes[vn->parent_idx].info.in_l1)
            FAIL("L1 not top-closed: node %llu in L1, parent %llu not", (unsigned long long)in->id,
                 (unsigned long long)in->parent_id);
        if ((in->in_l1 != (in->l1_slots != NULL)) && !in->loading)
            FAIL("node %llu in_l1 %d but l1_slots %p", (unsigned long long)in->id, (int)in->in_l1,
                 (const void *)in->l1_slots);
        if (in->in_l2 != (in->l2_pages != NULL))
            FAIL("node %llu in_l2 %d but l2_pages %p", (unsigned long long)in->id, (int)in->in_l2,
                 (const void *)in->l2_pages);
        l1_tok += in->in_l1 ? tok : 0;
        l2_tok += in->in_l2 ? tok : 0;
        cached += tok;
        /* locks: the path sums of the ledger's own locks, plus one per pending job */
        int li = led_find(m, in->id, false);
        uint32_t own_l = li < 0 ? 0 : m->led[li].locks, own_p = li < 0 ? 0 : m->led[li].protects;
        if (in->own_locks != own_l || in->own_protects != own_p)
            FAIL("node %llu own locks %u/protects %u, ledger %u/%u", (unsigned long long)in->id,
                 in->own_locks, in->own_protects, own_l, own_p);
        uint32_t want = vn->sub_locks + (in->pending_ack ? 1u : 0u);
        if (in->lock_count != want)
            FAIL("node %llu lock_count %u, path locks %u + pending %d", (unsigned long long)in->id,
                 in->lock_count, vn->sub_locks, in->pending_ack != 0);
        if (in->protect_count != vn->sub_protects)
            FAIL("node %llu protect_count %u, path protects %u", (unsigned long long)in->id,
                 in->protect_count, vn->sub_protects);
        locked += in->lock_count > 0;
        prot += in->protect_count > 0;
        if (in->pending_ack) {
            bool found = false;
            for (size_t j = 0; j < m->n_jobs; j++)
                found |= m->jobs[j].ack_id == in->pending_ack && m->jobs[j].state == JOB_PENDING;
            if (!found)
                FAIL("node %llu pending on ack %llu the test does not hold",
                     (unsigned long long)in->id, (unsigned long long)in->pending_ack);
        }
    }
    if (st.l1_tokens != l1_tok || st.l2_tokens != l2_tok || st.cached_tokens != cached)
        FAIL("stats tokens l1 %llu l2 %llu cached %llu, tree says %llu %llu %llu",
             (unsigned long long)st.l1_tokens, (unsigned long long)st.l2_tokens,
             (unsigned long long)st.cached_tokens, (unsigned long long)l1_tok,
             (unsigned long long)l2_tok, (unsigned long long)cached);
    if (st.locked_nodes != locked || st.protected_nodes != prot)
        FAIL("stats locked %llu protected %llu, tree says %llu %llu",
             (unsigned long long)st.locked_nodes, (unsigned long long)st.protected_nodes,
             (unsigned long long)locked, (unsigned long long)prot);

    /* events against the tree: GPU == L1 pages; CPU within L2, complete when settled */
    uint64_t gpu = 0, cpu = 0, disk = 0;
    for (uint32_t i = 0; i < m->n_view; i++) {
        const struct vpage *vp = &m->view[i];
        bool g = announced(m, vp->hash, KVN_MEDIUM_GPU);
        bool c = announced(m, vp->hash, KVN_MEDIUM_CPU_PINNED);
        bool d = announced(m, vp->hash, KVN_MEDIUM_DISK);
        bool in_gpu = vp->in_l1 && !vp->loading;
        if (g != in_gpu)
            FAIL("page %lld: GPU announced %d, in L1 (not loading) %d", (long long)vp->hash, (int)g,
                 (int)in_gpu);
        if (c && !vp->in_l2)
            FAIL("page %lld announced on CPU_PINNED but not in L2", (long long)vp->hash);
        if (c && vp->pending_write)
            FAIL("page %lld announced on CPU_PINNED while its write is pending",
                 (long long)vp->hash);
        if (vp->in_l2 && !vp->pending_write && !vp->anc_pending_write && !c)
            FAIL("page %lld in L2, no write pending on its path, never announced "
                 "on CPU_PINNED",
                 (long long)vp->hash);
        if (d && !vp->in_l3)
            FAIL("page %lld announced on DISK but not in L3", (long long)vp->hash);
        gpu += g;
        cpu += c;
        disk += d;
    }
    if (gpu != m->n_on[KVN_MEDIUM_GPU] || cpu != m->n_on[KVN_MEDIUM_CPU_PINNED] ||
        disk != m->n_on[KVN_MEDIUM_DISK])
        FAIL("announced GPU %llu CPU %llu DISK %llu, of which in the tree %llu "
             "%llu %llu",
             (unsigned long long)m->n_on[0], (unsigned long long)m->n_on[1],
             (unsigned long long)m->n_on[2], (unsigned long long)gpu, (unsigned long long)cpu,
             (unsigned long long)disk);
}

/* --------------------------------------------------- reference matching */

struct ref_match {
    uint32_t pages;        /* whole pages of the query */
    uint32_t device;       /* pages announced on GPU, leading */
    uint32_t host;         /* then on CPU_PINNED and not loading */
    int32_t first_loading; /* page index of the first loading page, or -1 */
    int64_t hashes[MAX_PAGES];
};

static void ref_match(struct model *m, uint64_t ns, const int32_t *tok, uint32_t n,
                      struct ref_match *r)
{
    r->pages = chain(tok, n, m->ps, r->hashes);
    r->device = r->host = 0;
    r->first_loading = -1;
    /* a page of another namespace never matches: alphabets are disjoint per
     * namespace, so a hash names one namespace's page */
    uint32_t p = 0;
    while (p < r->pages && announced(m, r->hashes[p], KVN_MEDIUM_GPU)) {
        struct vpage *vp = view_find(m, r->hashes[p]);
        if (!vp || vp->ns != ns)
            break;
        p++;
    }
    r->device = p;
    while (p < r->pages) {
        struct vpage *vp = view_find(m, r->hashes[p]);
        if (!vp || vp->ns != ns || vp->loading)
            break;
        if (!announced(m, r->hashes[p], KVN_MEDIUM_CPU_PINNED))
            break;
        p++;
    }
    r->host = p - r->device;
    for (uint32_t q = 0; q < r->pages; q++) {
        struct vpage *vp = view_find(m, r->hashes[q]);
        if (vp && vp->ns == ns && vp->loading) {
            r->first_loading = (int32_t)q;
            break;
        }
    }
}

/* ------------------------------------------------------- the operations */

/* Time stands still for a few operations at a time, so ties in the eviction
 * keys (and the id tie-break) are frequent. */
static uint64_t next_tick(struct model *m)
{
    if (rng_below(&m->cb_rng, 3) == 0)
        m->tick++;
    return m->tick;
}

/*
 * Namespaces: the default one, a LoRA-like 42 and a third one that some seeds
 * use beyond max_namespaces. Each has its own token alphabet (offset by 10),
 * because event hashes do not carry the namespace (SGLang's convention): equal
 * tokens in two namespaces would be the same block to a consumer.
 */
static const uint64_t NS_IDS[3] = {KVN_RADIX_NS_DEFAULT, 42, 99};

/* A sequence from the pool in a random namespace; *ns is where to use it. With
 * cross, sometimes the namespace of the call differs from the tokens' one. */
static uint32_t gen_seq(struct model *m, int32_t *tok, uint64_t *ns, bool cross)
{
    uint32_t r0 = rng_below(&m->rng, 100);
    uint32_t nsi = r0 < 65 ? 0 : (r0 < 95 || m->n_ns < 3) ? 1 : 2;
    int32_t off = 10 * (int32_t)nsi;
    uint32_t b = rng_below(&m->rng, POOL);
    uint32_t pages = rng_below(&m->rng, m->pool_len[b] / m->ps + 1);
    uint32_t n = pages * m->ps;
    for (uint32_t i = 0; i < n; i++)
        tok[i] = m->pool[b][i] + off;
    uint32_t r = rng_below(&m->rng, 10);
    if (r < 3 && n) { /* mutate one token: a divergence inside a node */
        tok[rng_below(&m->rng, n)] = off + 1 + (int32_t)rng_below(&m->rng, m->alphabet);
    } else if (r < 5) { /* extend with random pages */
        uint32_t extra = 1 + rng_below(&m->rng, 2);
        while (extra-- && n + m->ps <= MAX_TOK)
            for (uint32_t i = 0; i < m->ps; i++)
                tok[n++] = off + 1 + (int32_t)rng_below(&m->rng, m->alphabet);
    }
    *ns = NS_IDS[nsi];
    if (cross && rng_below(&m->rng, 10) == 0)
        *ns = NS_IDS[(nsi + 1) % m->n_ns];
    return n;
}

static void fmt_tokens(char *out, size_t cap, const int32_t *tok, uint32_t n)
{
    size_t k = 0;
    out[0] = 0;
    for (uint32_t i = 0; i < n && k + 4 < cap; i++)
        k += (size_t)snprintf(out + k, cap - k, i ? ",%d" : "%d", tok[i]);
}

static struct kvn_radix_stats stats_of(struct model *m)
{
    struct kvn_radix_stats st;
    memset(&st, 0, sizeof(st));
    kvn_radix_stats(m->tree, &st, NULL);
    return st;
}

static bool stats_same(const struct kvn_radix_stats *a, const struct kvn_radix_stats *b)
{
    return a->l1_used == b->l1_used && a->l2_used == b->l2_used && a->nodes == b->nodes &&
           a->locked_nodes == b->locked_nodes && a->protected_nodes == b->protected_nodes &&
           a->pending_jobs == b->pending_jobs && a->cached_tokens == b->cached_tokens &&
           a->l1_tokens == b->l1_tokens && a->l2_tokens == b->l2_tokens && a->events == b->events &&
           a->jobs_submitted == b->jobs_submitted;
}

/* A refused call: the expected code and nothing changed. */
static void expect_refusal(struct model *m, const char *what, int rc, int want,
                           const struct kvn_radix_stats *before, const struct kvn_err *err)
{
    if (rc != want)
        FAIL("%s returned %d (%s), expected %d", what, rc, err->msg, want);
    if (err->code != want || err->msg[0] == 0)
        FAIL("%s: err not filled (code %d, msg '%s')", what, err->code, err->msg);
    struct kvn_radix_stats now = stats_of(m);
    if (!stats_same(before, &now))
        FAIL("%s refused but the tree changed", what);
    if (m->n_log)
        FAIL("%s refused but emitted %zu events", what, m->n_log);
}

/* Free L1 slots as the snapshot sees them (not owned by a page or orphan). */
static uint32_t free_l1_slots(struct model *m, uint32_t *out, uint32_t cap)
{
    uint32_t n = 0;
    for (uint32_t s = 0; s < m->cfg.l1_pages && n < cap; s++) {
        bool used = false;
        for (uint32_t i = 0; i < m->n_view && !used; i++)
            used = m->view[i].l1 == s;
        for (size_t j = 0; j < m->n_jobs && !used; j++)
            if (m->jobs[j].state != JOB_DONE && m->jobs[j].dir == KVN_COPY_L2_TO_L1)
                for (uint32_t k = 0; k < m->jobs[j].n; k++)
                    used |= m->jobs[j].l1[k] == s;
        if (!used)
            out[n++] = s;
    }
    /* shuffle so explicit slots are not always the lowest */
    for (uint32_t i = n; i > 1; i--) {
        uint32_t k = rng_below(&m->rng, i), t = out[i - 1];
        out[i - 1] = out[k];
        out[k] = t;
    }
    return n;
}

static void op_insert(struct model *m, bool explicit_slots)
{
    int32_t tok[MAX_TOK];
    uint64_t ns;
    uint32_t n = gen_seq(m, tok, &ns, false);
    struct ref_match ref;
    ref_match(m, ns, tok, n, &ref);
    char ts[128];
    fmt_tokens(ts, sizeof(ts), tok, n);
    uint32_t slots[MAX_PAGES];
    uint32_t n_pages = n / m->ps;
    bool bad_slot = false, busy_slot = false;
    if (explicit_slots) {
        uint32_t fr[256];
        uint32_t nf = free_l1_slots(m, fr, 256);
        uint32_t need = n_pages - (ref.device < n_pages ? ref.device : n_pages);
        if (nf < need)
            explicit_slots = false;
        else {
            for (uint32_t p = 0; p < n_pages; p++)
                slots[p] = p < ref.device ? 0 : fr[p - ref.device];
            uint32_t r = rng_below(&m->rng, 16);
            bool adopts_two =
                n_pages >= ref.device + 2 &&
                (ref.first_loading < 0 || (uint32_t)ref.first_loading > ref.device + 1);
            if (n_pages > ref.device && r < 2) {
                slots[n_pages - 1] = m->cfg.l1_pages + rng_below(&m->rng, 3);
                bad_slot = true;
            } else if (adopts_two && r == 2) {
                slots[ref.device + 1] = slots[ref.device]; /* listed twice */
                busy_slot = true;
            } else if (adopts_two && r == 3) {
                for (uint32_t i = 0; i < m->n_view && !busy_slot; i++)
                    if (m->view[i].l1 != UINT32_MAX) { /* a slot the tree owns */
                        slots[ref.device] = m->view[i].l1;
                        busy_slot = true;
                    }
            }
        }
    }
    hist(m, "insert ns %llu [%s] %s%s", (unsigned long long)ns, ts,
         explicit_slots ? "explicit" : "auto",
         bad_slot    ? " (a slot out of range)"
         : busy_slot ? " (a slot owned or twice)"
                     : "");
    struct kvn_radix_stats before = stats_of(m);
    struct kvn_radix_insert_result res;
    struct kvn_err err;
    int rc = kvn_radix_insert(m->tree, ns, tok, n, explicit_slots ? slots : NULL, next_tick(m),
                              &res, &err);
    /* a new namespace beyond max_namespaces may be refused (-ENOSPC): one whose
     * pages are all gone may have lost its root, the default namespace too */
    bool ns_limited = false;
    if (m->cfg.max_namespaces && before.namespaces >= m->cfg.max_namespaces) {
        ns_limited = true;
        for (uint32_t i = 0; i < m->n_view; i++)
            ns_limited &= m->view[i].ns != ns;
    }
    if (rc == -ENOSPC && ns_limited) {
        m->counts[16]++;
        REFUSE("insert in a namespace beyond the limit", rc, -ENOSPC, &before, &err);
    }
    if (bad_slot)
        REFUSE("insert with a slot >= l1_pages", rc, -EINVAL, &before, &err);
    if (busy_slot) {
        m->counts[24]++;
        REFUSE("insert with a slot owned or listed twice", rc, -EBUSY, &before, &err);
    }
    if (rc == -ENOSPC && !explicit_slots) {
        m->counts[0]++;
        REFUSE("insert (no L1 room)", rc, -ENOSPC, &before, &err);
    }
    if (rc < 0)
        FAIL("insert failed: %d %s", rc, err.msg);
    add_id(m, res.last_node);
    uint32_t ps = m->ps;
    uint32_t want_ins = ref.first_loading >= 0 ? (uint32_t)ref.first_loading * ps : n;
    if (res.prefix_tokens != ref.device * ps)
        FAIL("insert prefix_tokens %u, GPU-announced prefix %u", res.prefix_tokens,
             ref.device * ps);
    if (res.inserted_tokens != want_ins)
        FAIL("insert inserted_tokens %u, expected %u (first loading page %d)", res.inserted_tokens,
             want_ins, ref.first_loading);
    if (res.prefix_tokens + res.revived_tokens + res.new_tokens != res.inserted_tokens)
        FAIL("insert %u + %u + %u != %u", res.prefix_tokens, res.revived_tokens, res.new_tokens,
             res.inserted_tokens);
    /* revived = pages of the tree before the call (L2 only), new = the rest */
    uint32_t revived = 0;
    for (uint32_t p = ref.device; p < want_ins / ps; p++) {
        struct vpage *vp = view_find(m, ref.hashes[p]);
        if (vp) {
            if (vp->in_l1 && !vp->loading)
                FAIL("insert: page %u was in L1 past the GPU prefix", p);
            revived++;
        }
    }
    if (res.revived_tokens != revived * ps)
        FAIL("insert revived_tokens %u, snapshot had %u L2-only pages", res.revived_tokens,
             revived);
    /* GPU BlockStored for exactly pages [prefix, inserted) in order */
    uint32_t p = ref.device;
    for (size_t i = 0; i < m->n_log; i++) {
        const struct logged_event *le = &m->log[i];
        if (le->type != KVN_EV_BLOCK_STORED || le->medium != KVN_MEDIUM_GPU)
            continue;
        if (p >= want_ins / ps || le->hash0 != ref.hashes[p])
            FAIL("insert: GPU BlockStored %lld, expected page %u", (long long)le->hash0, p);
        p++;
    }
    if (p != want_ins / ps)
        FAIL("insert: %u GPU BlockStored, expected %u", p - ref.device, want_ins / ps - ref.device);
    if (res.evicted_pages && explicit_slots)
        FAIL("explicit insert evicted %u pages", res.evicted_pages);
    if (res.backup_ack_id) {
        bool found = false;
        for (size_t j = 0; j < m->n_jobs; j++)
            found |= m->jobs[j].ack_id == res.backup_ack_id;
        if (!found)
            FAIL("insert reports backup ack %llu never submitted",
                 (unsigned long long)res.backup_ack_id);
    }
    m->counts[1]++;
    m->counts[2] += res.revived_tokens > 0;
    /* write policies: write_back never backs up on insert; write_through backs up
     * the pages an insert creates, unless L2 has no room (skipped, counted) or the
     * submitter refused the job */
    struct kvn_radix_stats after = stats_of(m);
    if (m->cfg.write_policy == KVN_WRITE_BACK && res.backup_ack_id)
        FAIL("write_back insert queued backup %llu", (unsigned long long)res.backup_ack_id);
    if (m->cfg.write_policy == KVN_WRITE_THROUGH && m->cfg.l2_pages && res.new_tokens &&
        !res.backup_ack_id && after.backups_skipped == before.backups_skipped && !m->submit_refused)
        FAIL("write_through insert of %u new tokens queued no backup (none skipped)",
             res.new_tokens);
    snapshot(m);
    if (res.backup_ack_id && m->cfg.write_policy == KVN_WRITE_THROUGH) {
        /* the new pages are in the job: L2 committed, pending on its ack (under
         * write_through_selective the job holds the pages whose hit count reached 2) */
        for (uint32_t q = (want_ins - res.new_tokens) / ps; q < want_ins / ps; q++) {
            struct vpage *vp = view_find(m, ref.hashes[q]);
            if (!vp || !vp->in_l2 || vp->pending_ack != res.backup_ack_id)
                FAIL("insert backup %llu: new page %u not in L2 pending on it (pending %llu)",
                     (unsigned long long)res.backup_ack_id, q,
                     vp ? (unsigned long long)vp->pending_ack : 0ULL);
        }
        m->counts[18]++;
    }
    /* explicit slots are adopted for the revived and new pages */
    if (explicit_slots) {
        for (uint32_t q = ref.device; q < want_ins / ps; q++) {
            struct vpage *vp = view_find(m, ref.hashes[q]);
            if (!vp || vp->l1 != slots[q])
                FAIL("explicit insert: page %u holds slot %u, caller gave %u", q,
                     vp ? vp->l1 : UINT32_MAX, slots[q]);
        }
    }
}

static void op_match(struct model *m)
{
    int32_t tok[MAX_TOK];
    uint64_t ns;
    uint32_t n = gen_seq(m, tok, &ns, true);
    /* a partial tail is ignored */
    uint32_t extra = rng_below(&m->rng, m->ps);
    for (uint32_t i = 0; i < extra && n < MAX_TOK; i++)
        tok[n++] = 1 + (int32_t)rng_below(&m->rng, m->alphabet);
    struct ref_match ref;
    ref_match(m, ns, tok, n, &ref);
    char ts[128];
    fmt_tokens(ts, sizeof(ts), tok, n);
    hist(m, "match ns %llu [%s]", (unsigned long long)ns, ts);
    struct kvn_radix_match r;
    uint32_t slots[MAX_PAGES + 1];
    uint32_t cap = rng_below(&m->rng, MAX_PAGES + 1);
    struct kvn_err err;
    struct kvn_radix_stats before = stats_of(m);
    int rc = kvn_radix_match_prefix(m->tree, ns, tok, n, next_tick(m), slots, cap, &r, &err);
    if (rc < 0)
        FAIL("match failed: %s", err.msg);
    struct kvn_radix_stats after = stats_of(m);
    if (!stats_same(&before, &after) || m->n_log)
        FAIL("match changed the tree or emitted events");
    uint32_t ps = m->ps;
    if (r.device_tokens != ref.device * ps || r.host_tokens != ref.host * ps)
        FAIL("match device %u host %u, reference %u %u", r.device_tokens, r.host_tokens,
             ref.device * ps, ref.host * ps);
    if (r.backed_tokens > r.device_tokens + r.host_tokens)
        FAIL("match backed %u beyond the matched %u", r.backed_tokens,
             r.device_tokens + r.host_tokens);
    uint32_t cpu_prefix = 0;
    while (cpu_prefix < ref.device + ref.host &&
           announced(m, ref.hashes[cpu_prefix], KVN_MEDIUM_CPU_PINNED))
        cpu_prefix++;
    if (r.backed_tokens < cpu_prefix * ps)
        FAIL("match backed %u, CPU_PINNED-announced prefix %u", r.backed_tokens, cpu_prefix * ps);
    uint32_t want_slots = ref.device < cap ? ref.device : cap;
    if (r.n_slots != want_slots)
        FAIL("match n_slots %u, expected %u", r.n_slots, want_slots);
    for (uint32_t q = 0; q < r.n_slots; q++) {
        struct vpage *vp = view_find(m, ref.hashes[q]);
        if (!vp || vp->l1 != slots[q])
            FAIL("match slot %u = %u, page holds %u", q, slots[q], vp ? vp->l1 : UINT32_MAX);
    }
    if ((r.device_tokens == 0) != (r.last_device_node == 0) ||
        (r.host_tokens == 0) != (r.last_host_node == 0))
        FAIL("match last nodes %llu/%llu for device %u host %u",
             (unsigned long long)r.last_device_node, (unsigned long long)r.last_host_node,
             r.device_tokens, r.host_tokens);
    if (r.device_tokens) {
        struct vpage *vp = view_find(m, ref.hashes[ref.device - 1]);
        if (!vp || vp->node != r.last_device_node)
            FAIL("match last_device_node %llu does not hold the last device page",
                 (unsigned long long)r.last_device_node);
    }
    if (r.host_tokens) {
        struct vpage *vp = view_find(m, ref.hashes[ref.device + ref.host - 1]);
        if (!vp || vp->node != r.last_host_node)
            FAIL("match last_host_node %llu does not hold the last host page",
                 (unsigned long long)r.last_host_node);
    }
    m->counts[3]++;
    m->counts[4] += r.host_tokens > 0;
}

/* A live node id, or 0 when there is none. */
static uint64_t pick_node(struct model *m)
{
    return m->n_nodes ? m->nodes[rng_below(&m->rng, m->n_nodes)].info.id : 0;
}

static void op_lock(struct model *m, bool protect, bool release)
{
    struct kvn_err err;
    struct kvn_radix_stats before = stats_of(m);
    int (*fn)(struct kvn_radix *, uint64_t, struct kvn_err *) =
        protect ? (release ? kvn_radix_unprotect : kvn_radix_protect)
                : (release ? kvn_radix_unlock : kvn_radix_lock);
    const char *name =
        protect ? (release ? "unprotect" : "protect") : (release ? "unlock" : "lock");
    uint32_t r = rng_below(&m->rng, 10);
    if (r == 0 && m->n_dead) { /* a stale id */
        uint64_t id = m->dead_ids[rng_below(&m->rng, m->n_dead)];
        if (have_id(m, id))
            return;
        hist(m, "%s stale %llu", name, (unsigned long long)id);
        REFUSE(name, fn(m->tree, id, &err), -ENOENT, &before, &err);
    }
    if (r == 1) {
        hist(m, "%s 0", name);
        REFUSE(name, fn(m->tree, 0, &err), -EINVAL, &before, &err);
    }
    uint64_t id = 0;
    if (release) {
        /* mostly a held one; sometimes one without a hold: a double release */
        uint32_t held[MAX_NODES], nh = 0;
        for (uint32_t i = 0; i < m->n_led; i++)
            if (protect ? m->led[i].protects : m->led[i].locks)
                held[nh++] = i;
        if (nh && rng_below(&m->rng, 6)) {
            id = m->led[held[rng_below(&m->rng, nh)]].id;
        } else {
            id = pick_node(m);
            int li = led_find(m, id, false);
            if (!id || (li >= 0 && (protect ? m->led[li].protects : m->led[li].locks)))
                return;
            hist(m, "%s %llu (holds none)", name, (unsigned long long)id);
            REFUSE(name, fn(m->tree, id, &err), -EINVAL, &before, &err);
        }
    } else {
        id = pick_node(m);
        if (!id)
            return;
    }
    hist(m, "%s %llu", name, (unsigned long long)id);
    int rc = fn(m->tree, id, &err);
    if (rc < 0)
        FAIL("%s(%llu) failed: %s", name, (unsigned long long)id, err.msg);
    if (m->n_log)
        FAIL("%s emitted events", name);
    int li = led_find(m, id, true);
    if (li < 0)
        FAIL("ledger full");
    int vi = node_idx(m, id);
    if (protect) {
        if (!release && m->led[li].protects == 0)
            m->led[li].l2_at_protect = vi >= 0 && m->nodes[vi].info.in_l2;
        m->led[li].protects += release ? -1u : 1u;
    } else {
        if (!release && m->led[li].locks == 0)
            m->led[li].l1_at_lock = vi >= 0 && m->nodes[vi].info.in_l1;
        m->led[li].locks += release ? -1u : 1u;
    }
    m->counts[5]++;
}

static bool known_job(struct model *m, uint64_t ack)
{
    for (size_t j = 0; j < m->n_jobs; j++)
        if (m->jobs[j].ack_id == ack)
            return true;
    return false;
}

/* A job call whose copy submit refused the job: rolled back, its code returned. */
static bool submit_refusal(struct model *m, const char *what, int rc)
{
    if (rc != -EIO || !m->submit_refused)
        return false;
    for (size_t i = 0; i < m->n_log; i++)
        if (m->log[i].type == KVN_EV_BLOCK_STORED)
            model_fail(m, "%s: submit refused, yet %s BlockStored emitted", what,
                       kvn_medium_name(m->log[i].medium));
    m->counts[6]++;
    return true;
}

static void op_write_backup(struct model *m)
{
    struct kvn_err err;
    uint64_t id = pick_node(m);
    if (!id)
        return;
    hist(m, "write_backup %llu", (unsigned long long)id);
    struct kvn_radix_stats before = stats_of(m);
    struct kvn_radix_job_result res;
    int rc = kvn_radix_write_backup(m->tree, id, &res, &err);
    if (m->cfg.l2_pages == 0)
        REFUSE("write_backup without L2", rc, -EINVAL, &before, &err);
    if (rc == -ENOSPC) {
        m->counts[6]++;
        REFUSE("write_backup (no L2 room)", rc, -ENOSPC, &before, &err);
    }
    if (submit_refusal(m, "write_backup", rc))
        return;
    if (rc < 0)
        FAIL("write_backup failed: %d %s", rc, err.msg);
    if (res.ack_id && !known_job(m, res.ack_id))
        FAIL("write_backup ack %llu never submitted", (unsigned long long)res.ack_id);
    m->counts[7] += res.ack_id != 0;
}

static void op_ack(struct model *m, bool ok)
{
    struct kvn_err err;
    struct kvn_radix_stats before = stats_of(m);
    uint32_t r = rng_below(&m->rng, 12);
    size_t cand[MAX_JOBS], nc = 0;
    for (size_t j = 0; j < m->n_jobs; j++)
        if (m->jobs[j].state != JOB_DONE)
            cand[nc++] = j;
    if (r == 0 || nc == 0) { /* an id never handed out, or one already acked */
        uint64_t bogus = 0;
        for (size_t j = 0; j < m->n_jobs; j++)
            if (m->jobs[j].state == JOB_DONE && rng_below(&m->rng, 2))
                bogus = m->jobs[j].ack_id;
        if (!bogus) {
            bogus = 1u << 30 | rng_below(&m->rng, 1000);
            if (known_job(m, bogus))
                return;
        }
        hist(m, "ack %llu %s (unknown or done)", (unsigned long long)bogus, ok ? "ok" : "fail");
        REFUSE("ack of an unknown id", kvn_radix_ack(m->tree, bogus, ok, &err), -ENOENT, &before,
               &err);
    }
    if (r == 1) {
        hist(m, "ack 0");
        REFUSE("ack 0", kvn_radix_ack(m->tree, 0, ok, &err), -EINVAL, &before, &err);
    }
    struct job *j = &m->jobs[cand[rng_below(&m->rng, (uint32_t)nc)]];
    hist(m, "ack %llu %s (%s %u pages%s)", (unsigned long long)j->ack_id, ok ? "ok" : "fail",
         j->dir == KVN_COPY_L1_TO_L2 ? "L1->L2" : "L2->L1", j->n,
         j->state == JOB_ORPHAN ? ", orphan" : "");
    /* the pages being loaded, for the GPU events of a successful load */
    int64_t loading[JOB_PAGES];
    uint32_t n_loading = 0;
    if (j->dir == KVN_COPY_L2_TO_L1 && j->state == JOB_PENDING) {
        for (uint32_t i = 0; i < m->n_view; i++)
            if (m->view[i].pending_ack == j->ack_id && n_loading < JOB_PAGES) {
                if (!m->view[i].loading)
                    FAIL("page %lld pending on load %llu is not marked loading",
                         (long long)m->view[i].hash, (unsigned long long)j->ack_id);
                loading[n_loading++] = m->view[i].hash;
            }
        if (n_loading != j->n)
            FAIL("load job %llu has %u pages, %u tree pages wait on it",
                 (unsigned long long)j->ack_id, j->n, n_loading);
    }
    bool orphan = j->state == JOB_ORPHAN;
    m->in_failed_ack = !ok || orphan;
    m->step_failed_ack = !ok;
    int rc = kvn_radix_ack(m->tree, j->ack_id, ok, &err);
    m->in_failed_ack = false;
    if (rc < 0)
        FAIL("ack %llu failed: %s", (unsigned long long)j->ack_id, err.msg);
    j->state = JOB_DONE;
    if (orphan && m->n_log)
        FAIL("ack of an orphan job emitted %zu events", m->n_log);
    if (ok && n_loading) {
        /* one GPU BlockStored per loaded page (order: the consumer checked parents) */
        uint32_t k = 0;
        for (size_t i = 0; i < m->n_log; i++) {
            const struct logged_event *le = &m->log[i];
            if (le->type != KVN_EV_BLOCK_STORED || le->medium != KVN_MEDIUM_GPU)
                continue;
            bool mine = false;
            for (uint32_t q = 0; q < n_loading; q++)
                mine |= loading[q] == le->hash0;
            if (!mine)
                FAIL("load ack: GPU BlockStored %lld is not a loaded page", (long long)le->hash0);
            k++;
        }
        if (k != n_loading)
            FAIL("load ack: %u GPU BlockStored for %u loaded pages", k, n_loading);
    }
    /* a second ack of the same id is refused */
    if (rng_below(&m->rng, 4) == 0) {
        m->n_log = 0;
        struct kvn_radix_stats b2 = stats_of(m);
        expect_refusal(m, "second ack", kvn_radix_ack(m->tree, j->ack_id, ok, &err), -ENOENT, &b2,
                       &err);
    }
    m->counts[ok ? 8 : 9]++;
}

/* An eviction candidate of tier L1 (or L2) in the snapshot (radix.h EVICTION). */
static bool is_candidate(struct model *m, uint32_t i, bool l2)
{
    const struct kvn_radix_node_info *in = &m->nodes[i].info;
    if (in->lock_count || in->pending_ack || in->loading)
        return false;
    if (l2)
        return !in->in_l1 && in->in_l2 && !in->n_children && !in->protect_count;
    if (!in->in_l1)
        return false;
    for (uint32_t k = 0; k < m->n_nodes; k++)
        if (m->nodes[k].info.parent_id == in->id && m->nodes[k].info.in_l1)
            return false; /* an L1 child */
    for (uint32_t p = 0; p < in->n_pages && in->in_l2; p++)
        if (!announced(m, in->hashes[p], KVN_MEDIUM_CPU_PINNED))
            return false; /* an L2 copy not announced yet */
    return true;
}

/* Freed at once (demoted or deleted) rather than scheduled behind a backup. */
static bool freed_at_once(struct model *m, uint32_t i, bool l2)
{
    const struct kvn_radix_node_info *in = &m->nodes[i].info;
    return l2 || in->in_l2 ||
           (in->n_children == 0 && in->protect_count == 0 &&
            (m->cfg.write_policy != KVN_WRITE_BACK || m->cfg.l2_pages == 0));
}

/*
 * The nodes an eviction may pick first, from the snapshot before the call: the
 * candidates with the smallest key, last_access_tick under LRU, (hit_count,
 * last_access_tick) under LFU, and among those the smallest node id (radix.h;
 * radix.c compared slab slots until d3315a0, which is not the id order). Writes
 * its first page hash to *victim and returns true, or false when there is no
 * candidate or it would be scheduled behind a backup instead of freed at once
 * (then the first removal says nothing about the order).
 */
static bool first_victim(struct model *m, bool l2, int64_t *victim)
{
    bool lfu = m->cfg.evict_policy == KVN_EVICT_LFU;
    int best = -1;
    for (uint32_t i = 0; i < m->n_nodes; i++) {
        if (!is_candidate(m, i, l2))
            continue;
        if (best >= 0) {
            const struct kvn_radix_node_info *in = &m->nodes[i].info, *b = &m->nodes[best].info;
            bool less = lfu && in->hit_count != b->hit_count
                            ? in->hit_count < b->hit_count
                            : in->last_access_tick < b->last_access_tick;
            if (!less)
                continue;
        }
        best = (int)i;
    }
    if (best < 0)
        return false;
    const struct kvn_radix_node_info *b = &m->nodes[best].info;
    int first = best;
    for (uint32_t i = 0; i < m->n_nodes; i++) {
        const struct kvn_radix_node_info *in = &m->nodes[i].info;
        if (!is_candidate(m, i, l2) || in->last_access_tick != b->last_access_tick ||
            (lfu && in->hit_count != b->hit_count))
            continue;
        if (in->id < m->nodes[first].info.id)
            first = (int)i;
    }
    if (!freed_at_once(m, (uint32_t)first, l2))
        return false;
    *victim = m->nodes[first].hash0;
    return true;
}

static void op_evict(struct model *m, bool l2)
{
    struct kvn_err err;
    uint32_t n = 1 + rng_below(&m->rng, 4);
    hist(m, "evict_%s %u", l2 ? "l2" : "l1", n);
    struct kvn_radix_stats before = stats_of(m);
    int64_t victim = 0;
    bool check_order = first_victim(m, l2, &victim);
    struct kvn_radix_evict_result res;
    int rc = l2 ? kvn_radix_evict_l2(m->tree, n, &res, &err)
                : kvn_radix_evict_l1(m->tree, n, &res, &err);
    if (rc < 0)
        FAIL("evict failed: %s", err.msg);
    struct kvn_radix_stats after = stats_of(m);
    uint32_t freed = l2 ? after.l2_free - before.l2_free : after.l1_free - before.l1_free;
    if (freed != res.freed_pages)
        FAIL("evict reports %u freed, allocator free grew by %u", res.freed_pages, freed);
    if (!l2 && res.freed_pages != res.demoted_pages + res.deleted_pages)
        FAIL("evict_l1 freed %u != demoted %u + deleted %u", res.freed_pages, res.demoted_pages,
             res.deleted_pages);
    if (res.ack_id && !known_job(m, res.ack_id))
        FAIL("evict ack %llu never submitted", (unsigned long long)res.ack_id);
    /* removed pages: on the tier's medium, exactly the freed count */
    enum kvn_medium med = l2 ? KVN_MEDIUM_CPU_PINNED : KVN_MEDIUM_GPU;
    uint32_t removed = 0;
    for (size_t i = 0; i < m->n_log; i++)
        if (m->log[i].type == KVN_EV_BLOCK_REMOVED && m->log[i].medium == med)
            removed += m->log[i].n_hashes;
    if (removed != res.freed_pages)
        FAIL("evict freed %u pages, %s BlockRemoved %u", res.freed_pages, kvn_medium_name(med),
             removed);
    /* policy order: the candidate with the smallest key, then id, goes first */
    if (check_order) {
        const struct logged_event *first = NULL;
        for (size_t i = 0; i < m->n_log && !first; i++)
            if (m->log[i].type == KVN_EV_BLOCK_REMOVED && m->log[i].medium == med)
                first = &m->log[i];
        if (!first || first->hash0 != victim)
            FAIL("evict_%s: the first %s BlockRemoved (%lld) is not the candidate with the "
                 "smallest %s, then id (%lld)",
                 l2 ? "l2" : "l1", kvn_medium_name(med), first ? (long long)first->hash0 : 0LL,
                 m->cfg.evict_policy == KVN_EVICT_LFU ? "LFU key" : "LRU key", (long long)victim);
        m->counts[17]++;
    }
    m->counts[l2 ? 11 : 10] += res.freed_pages;
}

static void op_load_back(struct model *m)
{
    int32_t tok[MAX_TOK];
    uint64_t ns;
    uint32_t n = gen_seq(m, tok, &ns, true);
    struct ref_match ref;
    ref_match(m, ns, tok, n, &ref);
    char ts[128];
    fmt_tokens(ts, sizeof(ts), tok, n);
    bool explicit_slots = rng_below(&m->rng, 3) == 0;
    uint32_t slots[256], n_slots = 0;
    if (explicit_slots)
        n_slots = free_l1_slots(m, slots, 1 + rng_below(&m->rng, MAX_PAGES));
    hist(m, "load_back ns %llu [%s] %s %u", (unsigned long long)ns, ts,
         explicit_slots ? "explicit" : "auto", n_slots);
    struct kvn_radix_stats before = stats_of(m);
    struct kvn_radix_job_result res;
    struct kvn_err err;
    int rc = kvn_radix_load_back(m->tree, ns, tok, n, explicit_slots ? slots : NULL, n_slots,
                                 next_tick(m), &res, &err);
    if (rc == -ENOSPC && !explicit_slots) {
        m->counts[12]++;
        REFUSE("load_back (no L1 room)", rc, -ENOSPC, &before, &err);
    }
    if (submit_refusal(m, "load_back", rc))
        return;
    if (rc < 0)
        FAIL("load_back failed: %d %s", rc, err.msg);
    uint32_t want = ref.host;
    if (explicit_slots && n_slots < want)
        want = n_slots;
    if (res.prefix_tokens != ref.device * m->ps)
        FAIL("load_back prefix %u, GPU-announced prefix %u", res.prefix_tokens, ref.device * m->ps);
    if (res.n_pages != want && !(res.ack_id == 0 && res.n_pages == 0 && want == 0))
        FAIL("load_back %u pages, host extension %u (slots %u)", res.n_pages, ref.host, n_slots);
    if (want && !res.ack_id && !known_job(m, res.ack_id))
        FAIL("load_back of %u pages without a job", want);
    if (res.ack_id && !known_job(m, res.ack_id))
        FAIL("load_back ack %llu never submitted", (unsigned long long)res.ack_id);
    add_id(m, res.last_node);
    m->counts[13] += res.n_pages > 0;
}

/* ------------------------------------------- host inserts and peer reads */

static void unreserve(struct model *m, uint32_t page)
{
    for (uint32_t k = 0; k < m->n_reserved; k++)
        if (m->reserved[k] == page) {
            m->reserved[k] = m->reserved[--m->n_reserved];
            return;
        }
}

static void op_reserve(struct model *m)
{
    struct kvn_err err;
    uint32_t n = 1 + rng_below(&m->rng, 3), pages[4];
    if (m->n_reserved + n > 64)
        return;
    hist(m, "reserve_l2 %u", n);
    struct kvn_radix_stats before = stats_of(m);
    int rc = kvn_radix_reserve_l2(m->tree, n, pages, &err);
    if (m->cfg.l2_pages == 0)
        REFUSE("reserve_l2 without L2", rc, -EINVAL, &before, &err);
    if (before.l2_free < n)
        REFUSE("reserve_l2 beyond the free pages", rc, -ENOSPC, &before, &err);
    if (rc < 0)
        FAIL("reserve_l2(%u) with %u free: %s", n, before.l2_free, err.msg);
    for (uint32_t i = 0; i < n; i++)
        m->reserved[m->n_reserved++] = pages[i];
    if (m->n_log)
        FAIL("reserve_l2 emitted events");
}

static void op_release(struct model *m)
{
    struct kvn_err err;
    struct kvn_radix_stats before = stats_of(m);
    uint32_t r = rng_below(&m->rng, 8);
    if (r == 0 && m->n_view) { /* a page the tree owns */
        uint32_t x = m->view[rng_below(&m->rng, m->n_view)].l2;
        if (x == UINT32_MAX)
            return;
        hist(m, "release_l2 %u (tree page)", x);
        REFUSE("release_l2 of a tree page", kvn_radix_release_l2(m->tree, &x, 1, &err), -EINVAL,
               &before, &err);
    }
    if (!m->n_reserved)
        return;
    if (r == 1) { /* a page listed twice */
        uint32_t x[2] = {m->reserved[0], m->reserved[0]};
        hist(m, "release_l2 %u twice", x[0]);
        REFUSE("release_l2 of a page listed twice", kvn_radix_release_l2(m->tree, x, 2, &err),
               -EALREADY, &before, &err);
    }
    uint32_t n = 1 + rng_below(&m->rng, m->n_reserved), pages[256];
    for (uint32_t i = 0; i < n; i++)
        pages[i] = m->reserved[i];
    hist(m, "release_l2 %u pages", n);
    int rc = kvn_radix_release_l2(m->tree, pages, n, &err);
    if (rc < 0)
        FAIL("release_l2: %s", err.msg);
    for (uint32_t i = 0; i < n; i++)
        unreserve(m, pages[i]);
    /* a second release of the same page is refused */
    struct kvn_radix_stats b2 = stats_of(m);
    REFUSE("second release_l2", kvn_radix_release_l2(m->tree, pages, 1, &err), -EINVAL, &b2, &err);
}

/*
 * The reference for a host insert (radix.h HOST INSERTS): leading pages with
 * an announced L2 copy are not adopted; then pages in L1 without an L2 copy
 * are adopted (revived) unless their write is pending, where the walk stops;
 * then pages the tree lacks are new.
 */
static void ref_host_insert(struct model *m, uint64_t ns, const struct ref_match *ref,
                            uint32_t *prefix, uint32_t *revived, uint32_t *inserted)
{
    uint32_t q = 0;
    while (q < ref->pages && announced(m, ref->hashes[q], KVN_MEDIUM_CPU_PINNED)) {
        struct vpage *vp = view_find(m, ref->hashes[q]);
        if (!vp || vp->ns != ns)
            break;
        q++;
    }
    *prefix = q;
    *revived = 0;
    for (; q < ref->pages; q++) {
        struct vpage *vp = view_find(m, ref->hashes[q]);
        if (!vp || vp->ns != ns)
            break;
        if (vp->pending_write || vp->in_l2 || vp->loading) {
            *inserted = q; /* a copy not announced yet: the walk stops */
            return;
        }
        (*revived)++;
    }
    for (; q < ref->pages; q++) {
        struct vpage *vp = view_find(m, ref->hashes[q]);
        if (vp && vp->ns == ns)
            break;
    }
    *inserted = ref->pages;
}

static void op_insert_host(struct model *m)
{
    struct kvn_err err;
    int32_t tok[MAX_TOK];
    uint64_t ns;
    uint32_t n = gen_seq(m, tok, &ns, false);
    struct ref_match ref;
    ref_match(m, ns, tok, n, &ref);
    char ts[128];
    fmt_tokens(ts, sizeof(ts), tok, n);
    uint32_t pages[MAX_TOK];
    struct kvn_radix_stats before = stats_of(m);
    if (m->cfg.l2_pages == 0) {
        uint32_t x = 0;
        hist(m, "insert_host without L2");
        struct kvn_radix_insert_result res;
        REFUSE("insert_host without L2",
               kvn_radix_insert_host(m->tree, ns, tok, n, &x, next_tick(m), &res, &err), -EINVAL,
               &before, &err);
    }
    if (ref.pages == 0 || before.l2_free < ref.pages || m->n_reserved + ref.pages > 200)
        return;
    /*
     * The sequence may diverge inside a node being loaded back: the split must
     * keep both fragments loading (radix.c before d3315a0 did not), which the
     * reference match and check_step verify.
     */
    if (kvn_radix_reserve_l2(m->tree, ref.pages, pages, &err) < 0)
        FAIL("reserve_l2(%u) with %u free: %s", ref.pages, before.l2_free, err.msg);
    for (uint32_t i = 0; i < ref.pages; i++)
        m->reserved[m->n_reserved++] = pages[i];
    uint32_t prefix, revived, inserted;
    ref_host_insert(m, ns, &ref, &prefix, &revived, &inserted);
    struct kvn_radix_insert_result res;
    before = stats_of(m);
    bool ns_limited = false; /* a new namespace beyond the limit may be refused */
    if (m->cfg.max_namespaces && before.namespaces >= m->cfg.max_namespaces) {
        ns_limited = true;
        for (uint32_t i = 0; i < m->n_view; i++)
            ns_limited &= m->view[i].ns != ns;
    }
    /* sometimes a page to adopt is not one the caller reserved */
    if (prefix < inserted && !ns_limited && rng_below(&m->rng, 10) == 0) {
        uint32_t saved = pages[prefix], bad = UINT32_MAX;
        for (uint32_t i = 0; i < m->n_view && bad == UINT32_MAX; i++)
            bad = m->view[i].l2;
        if (bad != UINT32_MAX) {
            pages[prefix] = bad;
            hist(m, "insert_host ns %llu [%s] with tree page %u", (unsigned long long)ns, ts, bad);
            int rc = kvn_radix_insert_host(m->tree, ns, tok, n, pages, next_tick(m), &res, &err);
            pages[prefix] = saved;
            expect_refusal(m, "insert_host with a page not reserved", rc, -EBUSY, &before, &err);
            if (m->failed)
                return;
            m->counts[20]++;
        }
    }
    hist(m, "insert_host ns %llu [%s]", (unsigned long long)ns, ts);
    int rc = kvn_radix_insert_host(m->tree, ns, tok, n, pages, next_tick(m), &res, &err);
    if (rc == -ENOSPC && ns_limited) {
        expect_refusal(m, "insert_host in a namespace beyond the limit", rc, -ENOSPC, &before,
                       &err);
        if (!m->failed && kvn_radix_release_l2(m->tree, pages, ref.pages, &err) < 0)
            model_fail(m, "release after a refused insert_host: %s", err.msg);
        for (uint32_t q = 0; q < ref.pages; q++)
            unreserve(m, pages[q]);
        return;
    }
    if (rc < 0)
        FAIL("insert_host: %d %s", rc, err.msg);
    add_id(m, res.last_node);
    uint32_t ps = m->ps;
    if (res.prefix_tokens != prefix * ps || res.revived_tokens != revived * ps ||
        res.inserted_tokens != inserted * ps ||
        res.new_tokens != (inserted - prefix - revived) * ps)
        FAIL("insert_host prefix %u revived %u new %u inserted %u, reference %u %u %u %u (pages "
             "x %u)",
             res.prefix_tokens, res.revived_tokens, res.new_tokens, res.inserted_tokens, prefix,
             revived, inserted - prefix - revived, inserted, ps);
    /* CPU_PINNED BlockStored for exactly the adopted pages, in order */
    uint32_t q = prefix;
    for (size_t i = 0; i < m->n_log; i++) {
        const struct logged_event *le = &m->log[i];
        if (le->type != KVN_EV_BLOCK_STORED || le->medium != KVN_MEDIUM_CPU_PINNED)
            continue;
        if (q >= inserted || le->hash0 != ref.hashes[q])
            FAIL("insert_host: CPU_PINNED BlockStored %lld, expected page %u", (long long)le->hash0,
                 q);
        q++;
    }
    if (q != inserted)
        FAIL("insert_host: %u CPU_PINNED BlockStored for %u adopted pages", q - prefix,
             inserted - prefix);
    /* adopted pages are the tree's now, with the caller's page numbers */
    snapshot(m);
    for (q = prefix; q < inserted; q++) {
        struct vpage *vp = view_find(m, ref.hashes[q]);
        if (!vp || !vp->in_l2 || vp->l2 != pages[q])
            FAIL("insert_host: page %u holds L2 page %u, caller gave %u", q,
                 vp ? vp->l2 : UINT32_MAX, pages[q]);
        unreserve(m, pages[q]);
    }
    /* the caller releases what was not adopted */
    uint32_t rest[MAX_TOK], n_rest = 0;
    for (q = 0; q < ref.pages; q++)
        if (q < prefix || q >= inserted)
            rest[n_rest++] = pages[q];
    if (n_rest && kvn_radix_release_l2(m->tree, rest, n_rest, &err) < 0)
        FAIL("release of the pages insert_host did not adopt: %s", err.msg);
    for (q = 0; q < n_rest; q++)
        unreserve(m, rest[q]);
    m->counts[21]++;
    m->counts[22] += inserted > prefix;
}

static void op_match_l2(struct model *m)
{
    struct kvn_err err;
    int32_t tok[MAX_TOK];
    uint64_t ns;
    uint32_t n = gen_seq(m, tok, &ns, true);
    struct ref_match ref;
    ref_match(m, ns, tok, n, &ref);
    char ts[128];
    fmt_tokens(ts, sizeof(ts), tok, n);
    hist(m, "match_l2 ns %llu [%s]", (unsigned long long)ns, ts);
    uint32_t want = 0;
    while (want < ref.pages && announced(m, ref.hashes[want], KVN_MEDIUM_CPU_PINNED)) {
        struct vpage *vp = view_find(m, ref.hashes[want]);
        if (!vp || vp->ns != ns)
            break;
        want++;
    }
    uint32_t pages[MAX_TOK], cap = rng_below(&m->rng, MAX_PAGES + 1);
    struct kvn_radix_l2_match r;
    struct kvn_radix_stats before = stats_of(m);
    int rc = kvn_radix_match_l2(m->tree, ns, tok, n, next_tick(m), pages, cap, &r, &err);
    if (rc < 0)
        FAIL("match_l2: %s", err.msg);
    struct kvn_radix_stats after = stats_of(m);
    if (!stats_same(&before, &after) || m->n_log)
        FAIL("match_l2 changed the tree or emitted events");
    if (r.tokens != want * m->ps)
        FAIL("match_l2 %u tokens, announced L2 prefix %u", r.tokens, want * m->ps);
    if (r.n_pages != (want < cap ? want : cap))
        FAIL("match_l2 n_pages %u for %u pages, cap %u", r.n_pages, want, cap);
    for (uint32_t q = 0; q < r.n_pages; q++) {
        struct vpage *vp = view_find(m, ref.hashes[q]);
        if (!vp || vp->l2 != pages[q])
            FAIL("match_l2 page %u = %u, the node holds %u", q, pages[q], vp ? vp->l2 : UINT32_MAX);
    }
    if (want) {
        struct vpage *vp = view_find(m, ref.hashes[want - 1]);
        if (!vp || vp->node != r.last_node)
            FAIL("match_l2 last_node %llu does not hold the last page",
                 (unsigned long long)r.last_node);
    } else if (r.last_node) {
        FAIL("match_l2 last_node %llu for no page", (unsigned long long)r.last_node);
    }
    m->counts[23] += want > 0;
}

static void op_reset(struct model *m)
{
    struct kvn_err err;
    hist(m, "reset");
    if (kvn_radix_reset(m->tree, &err) < 0)
        FAIL("reset failed: %s", err.msg);
    if (m->n_log != 1 || m->log[0].type != KVN_EV_ALL_BLOCKS_CLEARED)
        FAIL("reset emitted %zu events, expected one AllBlocksCleared", m->n_log);
    for (size_t j = 0; j < m->n_jobs; j++)
        if (m->jobs[j].state == JOB_PENDING)
            m->jobs[j].state = JOB_ORPHAN;
    for (uint32_t i = 0; i < m->n_ids && m->n_dead < 64; i++)
        m->dead_ids[m->n_dead++] = m->ids[i];
    m->n_ids = 0;
    m->n_led = 0;
    m->counts[14]++;
}

/* Releases every lock and protection, acks every job: all counts must be zero. */
static void drain(struct model *m, bool ok)
{
    struct kvn_err err;
    hist(m, "drain");
    for (uint32_t i = 0; i < m->n_led && !m->failed; i++) {
        while (m->led[i].locks && !m->failed) {
            if (kvn_radix_unlock(m->tree, m->led[i].id, &err) < 0)
                model_fail(m, "drain unlock %llu: %s", (unsigned long long)m->led[i].id, err.msg);
            m->led[i].locks--;
        }
        while (m->led[i].protects && !m->failed) {
            if (kvn_radix_unprotect(m->tree, m->led[i].id, &err) < 0)
                model_fail(m, "drain unprotect %llu: %s", (unsigned long long)m->led[i].id,
                           err.msg);
            m->led[i].protects--;
        }
    }
    if (m->n_reserved && !m->failed) {
        if (kvn_radix_release_l2(m->tree, m->reserved, m->n_reserved, &err) < 0)
            model_fail(m, "drain release_l2: %s", err.msg);
        m->n_reserved = 0;
    }
    /* acks may queue nothing new, but loop until no job is left */
    for (int round = 0; round < 100 && outstanding_jobs(m) && !m->failed; round++)
        for (size_t j = 0; j < m->n_jobs && !m->failed; j++)
            if (m->jobs[j].state != JOB_DONE) {
                m->jobs[j].state = JOB_DONE;
                if (kvn_radix_ack(m->tree, m->jobs[j].ack_id, ok, &err) < 0)
                    model_fail(m, "drain ack %llu: %s", (unsigned long long)m->jobs[j].ack_id,
                               err.msg);
            }
    check_step(m);
    if (m->failed)
        return;
    struct kvn_radix_stats st = stats_of(m);
    if (st.l2_reserved)
        FAIL("after drain %u L2 pages still reserved", st.l2_reserved);
    if (st.locked_nodes || st.protected_nodes || st.pending_jobs)
        FAIL("after drain: %llu locked, %llu protected, %llu pending",
             (unsigned long long)st.locked_nodes, (unsigned long long)st.protected_nodes,
             (unsigned long long)st.pending_jobs);
    for (uint32_t i = 0; i < m->n_nodes; i++)
        if (m->nodes[i].info.lock_count || m->nodes[i].info.protect_count)
            FAIL("after drain node %llu lock %u protect %u",
                 (unsigned long long)m->nodes[i].info.id, m->nodes[i].info.lock_count,
                 m->nodes[i].info.protect_count);
    /* settled: every L2 page announced on CPU_PINNED, exactly once (the consumer) */
    for (uint32_t i = 0; i < m->n_view; i++)
        if (m->view[i].in_l2 && !announced(m, m->view[i].hash, KVN_MEDIUM_CPU_PINNED))
            FAIL("after drain page %lld in L2 never announced on CPU_PINNED",
                 (long long)m->view[i].hash);
}

/* Things that must survive a step: locked L1 nodes, protected L2 nodes, pending nodes. */
struct keep {
    uint64_t id;
    bool l1, l2;
    bool held; /* protected: never deleted (radix.h LOCKS AND PROTECTION) */
    uint64_t pending_ack;
};

static uint32_t keepers(struct model *m, struct keep *k)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < m->n_nodes; i++) {
        const struct vnode *vn = &m->nodes[i];
        bool l1 = vn->info.in_l1 && !vn->info.loading && vn->sub_locks > 0;
        /* only an announced L2 copy is a valid one: a failed write takes its pages back and
         * a copy that can never be announced is dropped, even when protected (radix.h) */
        bool l2 = vn->info.in_l2 && vn->sub_protects > 0;
        for (uint32_t p = 0; p < vn->info.n_pages && l2; p++)
            l2 = announced(m, vn->info.hashes[p], KVN_MEDIUM_CPU_PINNED);
        bool held = vn->sub_protects > 0;
        if (l1 || l2 || held || vn->info.pending_ack)
            k[n++] = (struct keep){vn->info.id, l1, l2, held, vn->info.pending_ack};
    }
    return n;
}

static void check_keepers(struct model *m, const struct keep *k, uint32_t n)
{
    struct kvn_err err;
    for (uint32_t i = 0; i < n && !m->failed; i++) {
        bool acked = false;
        for (size_t j = 0; j < m->n_jobs; j++)
            if (m->jobs[j].ack_id == k[i].pending_ack && m->jobs[j].state == JOB_DONE)
                acked = true;
        struct kvn_radix_node_info in;
        int rc = kvn_radix_node_info(m->tree, k[i].id, &in, &err);
        if (rc < 0) {
            if (k[i].pending_ack && !acked)
                model_fail(m, "node %llu with pending job %llu was dropped",
                           (unsigned long long)k[i].id, (unsigned long long)k[i].pending_ack);
            else if (k[i].l1 || k[i].l2 || k[i].held)
                model_fail(m, "locked/protected node %llu was dropped",
                           (unsigned long long)k[i].id);
            continue;
        }
        if (k[i].l1 && !in.in_l1)
            model_fail(m, "locked node %llu left L1", (unsigned long long)k[i].id);
        if (k[i].l2 && !in.in_l2)
            model_fail(m, "protected node %llu left L2", (unsigned long long)k[i].id);
    }
}

/* ------------------------------------------------------------ the driver */

static void model_init(struct model *m, uint64_t seed)
{
    memset(m, 0, sizeof(*m));
    m->seed = seed;
    m->rng = seed * 0x2545f4914f6cdd1dull + 1;
    m->cb_rng = seed ^ 0x5bd1e995ull;
    m->ps = 1 + (uint32_t)(seed % MAX_PS);
    m->alphabet = 2 + (uint32_t)(seed / MAX_PS % 2);
    m->map = calloc((size_t)1 << MAP_BITS, sizeof(*m->map));
    m->jobs = calloc(MAX_JOBS, sizeof(*m->jobs));
    assert_non_null(m->map);
    assert_non_null(m->jobs);
    m->cur_gen = 1;
    struct kvn_radix_config *c = &m->cfg;
    kvn_radix_config_init(c);
    c->page_size = m->ps;
    c->l1_pages = 6 + rng_below(&m->rng, 12);
    c->l2_pages = seed % 7 == 6 ? 0 : 8 + rng_below(&m->rng, 20);
    c->write_policy = (enum kvn_write_policy)(seed % 3);
    c->evict_policy = (enum kvn_evict_policy)(seed / 3 % 2);
    c->storage_enabled = seed % 2 == 1;
    /* every fourth seed uses a third namespace beyond a limit of two */
    m->n_ns = seed % 4 == 0 ? 3 : 2;
    c->max_namespaces = seed % 4 == 0 ? 2 : 0;
    c->sink.emit = consume;
    c->sink.ctx = m;
    c->copy.submit = submit;
    c->copy.ctx = m;
    c->storage.backup = storage_backup;
    c->storage.ctx = m;
    for (uint32_t b = 0; b < POOL; b++) {
        m->pool_len[b] = (1 + rng_below(&m->rng, MAX_PAGES - 2)) * m->ps;
        for (uint32_t i = 0; i < m->pool_len[b]; i++)
            m->pool[b][i] = 1 + (int32_t)rng_below(&m->rng, m->alphabet);
        if (b > 0 && rng_below(&m->rng, 2)) /* share a prefix with an earlier one */
            memcpy(m->pool[b], m->pool[b - 1],
                   (m->pool_len[b] < m->pool_len[b - 1] ? m->pool_len[b] : m->pool_len[b - 1]) / 2 *
                       sizeof(int32_t));
    }
    struct kvn_err err;
    int rc = kvn_radix_create(c, &m->tree, &err);
    if (rc < 0)
        fail_msg("create: %s", err.msg);
}

static void model_fini(struct model *m)
{
    kvn_radix_destroy(m->tree);
    free(m->map);
    free(m->jobs);
    free(m->log);
}

static uint64_t ops_per_seed(uint64_t dflt)
{
    const char *e = getenv("KVN_MODEL_OPS");
    if (e && *e) {
        unsigned long long v = strtoull(e, NULL, 10);
        if (v > 0)
            return v;
    }
    return dflt;
}

static void run_seed(uint64_t seed, uint64_t n_ops)
{
    struct model *m = calloc(1, sizeof(*m));
    assert_non_null(m);
    model_init(m, seed);
    static struct keep keep[MAX_NODES];
    for (m->step = 1; m->step <= n_ops; m->step++) {
        m->n_log = 0;
        m->step_failed_ack = false;
        m->submit_refused = false;
        m->n_frags = 0;
        /* occasionally the next copy job is refused by its submitter */
        m->submit_fail_next = rng_below(&m->rng, 40) == 0;
        uint32_t nk = keepers(m, keep);
        uint32_t r = rng_below(&m->rng, 1000);
        bool was_reset = false;
        if (r < 230)
            op_insert(m, false);
        else if (r < 270)
            op_insert(m, true);
        else if (r < 410)
            op_match(m);
        else if (r < 460)
            op_lock(m, false, false);
        else if (r < 510)
            op_lock(m, false, true);
        else if (r < 535)
            op_lock(m, true, false);
        else if (r < 560)
            op_lock(m, true, true);
        else if (r < 605)
            op_write_backup(m);
        else if (r < 690)
            op_ack(m, true);
        else if (r < 720)
            op_ack(m, false);
        else if (r < 775)
            op_evict(m, false);
        else if (r < 810)
            op_evict(m, true);
        else if (r < 870)
            op_load_back(m);
        else if (r < 925)
            op_insert_host(m);
        else if (r < 955)
            op_match_l2(m);
        else if (r < 970)
            op_reserve(m);
        else if (r < 995)
            op_release(m);
        else if (r < 997) {
            op_reset(m);
            was_reset = true;
        } else {
            drain(m, rng_below(&m->rng, 4) != 0);
            was_reset = true; /* releases every hold: nothing to keep */
        }
        m->submit_fail_next = false;
        if (!was_reset && !m->failed)
            check_keepers(m, keep, nk);
        check_step(m);
        check_fragments(m);
        if (m->failed)
            break;
    }
    if (!m->failed)
        drain(m, true);
    if (m->failed)
        dump_and_fail(m);
    printf("seed %llu ps %u l1 %u l2 %u wp %d ep %d storage %d: %llu ops; inserts %llu (revive "
           "%llu, enospc %llu), matches %llu (host hits %llu), locks %llu, backups %llu, acks "
           "ok %llu fail %llu, evicted L1 %llu L2 %llu pages, loads %llu, resets %llu, storage "
           "%llu (on DISK %llu), namespace refusals %llu, victim order checks %llu, write-through "
           "jobs %llu, host inserts %llu (adopting %llu, EBUSY %llu), match_l2 hits %llu, busy "
           "slot refusals %llu\n",
           (unsigned long long)seed, m->ps, m->cfg.l1_pages, m->cfg.l2_pages,
           (int)m->cfg.write_policy, (int)m->cfg.evict_policy, (int)m->cfg.storage_enabled,
           (unsigned long long)n_ops, (unsigned long long)m->counts[1],
           (unsigned long long)m->counts[2], (unsigned long long)m->counts[0],
           (unsigned long long)m->counts[3], (unsigned long long)m->counts[4],
           (unsigned long long)m->counts[5], (unsigned long long)m->counts[7],
           (unsigned long long)m->counts[8], (unsigned long long)m->counts[9],
           (unsigned long long)m->counts[10], (unsigned long long)m->counts[11],
           (unsigned long long)m->counts[13], (unsigned long long)m->counts[14],
           (unsigned long long)m->counts[15], (unsigned long long)m->counts[19],
           (unsigned long long)m->counts[16], (unsigned long long)m->counts[17],
           (unsigned long long)m->counts[18], (unsigned long long)m->counts[21],
           (unsigned long long)m->counts[22], (unsigned long long)m->counts[20],
           (unsigned long long)m->counts[23], (unsigned long long)m->counts[24]);
    model_fini(m);
    free(m);
}

/* 12 seeds x 25,000 = 300,000 operations by default; each seed a different
 * page size, alphabet, tier sizes, write policy, eviction policy, storage. */
#define N_SEEDS 12

static void test_model_seeds(void **state)
{
    (void)state;
    uint64_t n = ops_per_seed(25000);
    const char *one = getenv("KVN_MODEL_SEED");
    if (one && *one) {
        run_seed(strtoull(one, NULL, 10), n);
        return;
    }
    for (uint64_t s = 1; s <= N_SEEDS; s++)
        run_seed(s, n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_seeds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
