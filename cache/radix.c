/*
 * radix.c - the hierarchical radix index (see radix.h for the model).
 *
 * Layout of one tree node
 *
 *     struct rnode (slab)          blk: one malloc per node, n = n_pages
 *     +----------------------+     +---------+-----------+-------+-------+-----------+
 *     | parent, children,    | --> | hash[n] | digest[n] | l1[n] | l2[n] | key[n*ps] |
 *     | siblings, job links, |     | int64   | 32 bytes  | u32   | u32   | int32     |
 *     | counts, flags, heaps |     +---------+-----------+-------+-------+-----------+
 *     +----------------------+     112 bytes per page at page_size 16 (7 per token)
 *
 * l1[] / l2[] are always allocated; flags F_L1 / F_L2 say whether they hold
 * live indices. That costs 8 bytes per page when a tier is absent but makes a
 * revive, demote, backup or load allocation-free.
 *
 * Children are found through one tree-wide open-addressing map keyed by
 * (parent id, first page of the child): no per-node container, no scan.
 * Namespaces map to their root through a second small map.
 *
 * Eviction candidates live in two binary heaps (L1, L2) with the heap position
 * stored in the node, so a state change re-files a node in O(log n). Every
 * state change of a node goes through refresh(), which recomputes whether the
 * node is a candidate of each tier and keeps the evictable-page counters. The
 * heap array holds a snapshot of each key (tick, hit count); match and insert
 * only make keys grow and do not re-sift (O(1) per touched node): the snapshot
 * of the top is refreshed lazily when eviction looks at it.
 *
 * Copy jobs live in a growable array indexed by the low 32 bits of the ack id
 * (high bits: a generation, so stale ids are refused); a job's tree nodes
 * ("fragments") form an intrusive doubly-linked list through the nodes, which
 * makes the split-while-pending update O(1).
 */
#include "cache/radix.h"

#include <stdlib.h>
#include <string.h>

#include "cache/page_alloc.h"
#include "cache/page_hash.h"

#define F_ROOT    0x001u
#define F_L1      0x002u
#define F_L2      0x004u
#define F_L3      0x008u
#define F_LOADING 0x010u
#define F_CPU_PUB 0x020u /* CPU_PINNED BlockStored sent for all pages */
#define F_DEMOTE  0x040u /* demote from L1 when the write job is acked */
#define F_SYNC1   0x080u /* counted in evictable[0] */
#define F_MARK    0x100u /* scratch mark within one call: eviction victim */
#define F_ANC     0x200u /* scratch mark within one call: ancestor already listed */

#define SLAB_SHIFT         10u
#define SLAB_CHUNK         (1u << SLAB_SHIFT)
#define HASH_PREFIX_TOKENS 16u

struct rnode {
    struct rnode *parent;
    struct rnode *first_child, *next_sib, *prev_sib;
    struct rnode *pend_prev, *pend_next; /* fragments of the pending job */
    void *blk;
    uint64_t id; /* 0 while on the free list */
    uint64_t ns;
    uint64_t last_access;
    uint64_t pending_ack;
    uint32_t gen, slot;
    uint32_t n_pages;
    uint32_t n_children, n_l1_children;
    uint32_t lock_ref, own_lock, host_ref, own_protect;
    uint32_t hit_count;
    uint32_t flags;
    int32_t hpos[2];
    uint32_t free_next; /* slot + 1 of the next free node */
};

/*
 * A child-map entry repeats the parent id and the child's first page pointer,
 * so a lookup compares them without touching the child node first: one
 * dependent cache miss less per tree level on the match path.
 */
struct centry {
    uint64_t h;
    uint64_t parent_id;
    const int32_t *key0; /* the child's first page (its key block) */
    struct rnode *n;
};

struct nsentry {
    uint64_t ns;
    struct rnode *root; /* NULL: empty */
};

/*
 * A heap entry carries a snapshot of its node's key, so that sifting touches
 * only the heap array. Keys only grow (ticks, hit counts), and a touch does not
 * re-sift: the snapshot may be stale-low. heap_top() refreshes a stale top and
 * sifts it down before trusting it; since every snapshot is <= its node's key,
 * a fresh top is the true minimum. Touch and hit count stay O(1).
 */
struct hent {
    uint64_t tick;
    uint64_t id; /* tie-break (radix.h: "then id"); ids never change */
    uint32_t hit;
    struct rnode *n;
};

struct rheap {
    struct hent *a;
    uint32_t n, cap;
};

struct rjob {
    uint64_t ack_id; /* 0: free */
    uint32_t gen;
    uint32_t free_next;
    enum kvn_copy_dir dir;
    bool orphan;
    struct rnode *head, *tail;
    uint32_t n_pages, cap;
    uint32_t *l1, *l2;
};

struct kvn_radix {
    struct kvn_radix_config cfg;
    uint32_t ps;
    struct kvn_page_alloc l1a, l2a;

    struct rnode **chunks;
    uint32_t n_chunks, chunks_cap;
    uint32_t free_head; /* slot + 1, 0 = empty */
    uint64_t n_nodes, n_roots;

    struct centry *cmap;
    size_t cmap_cap, cmap_n;
    struct nsentry *nsmap;
    size_t nsmap_cap, nsmap_n;

    struct rheap heap[2];
    uint64_t evictable[2];

    struct rjob *jobs;
    uint32_t jobs_cap, job_free_head;
    uint64_t pending_jobs, pending_pages, orphan_pages;

    struct rnode **scratch; /* node lists within one call */
    uint32_t scratch_cap;
    struct rnode **scratch2;
    uint32_t scratch2_cap;
    struct rnode **stack; /* DFS stack of publish_cpu / drop_unpublishable */
    uint32_t stack_cap;
    uint32_t *slotbuf; /* auto-mode slots of one insert */
    uint8_t *l2_resv;  /* [l2_pages]: 1 = reserved by the caller (reserve_l2) */
    uint32_t n_l2_resv;
    uint32_t slotbuf_cap;

    uint64_t blk_bytes;
    uint64_t total_pages, l1_node_pages, l2_node_pages;
    uint64_t locked_nodes, protected_nodes;
    uint64_t events, jobs_submitted, acks_ok, acks_failed, copy_submit_failures;
    uint64_t backups_skipped, storage_backups, storage_failures;
};

/* ---------------------------------------------------------------- node pages */

static inline int64_t *n_hash(const struct rnode *n)
{
    return (int64_t *)n->blk;
}

static inline uint8_t (*n_dig(const struct rnode *n))[KVN_PAGE_DIGEST_LEN]
{
    return (uint8_t(*)[KVN_PAGE_DIGEST_LEN])((char *)n->blk + (size_t)n->n_pages * 8);
}

static inline uint32_t *n_l1(const struct rnode *n)
{
    return (uint32_t *)((char *)n->blk + (size_t)n->n_pages * 40);
}

static inline uint32_t *n_l2(const struct rnode *n)
{
    return (uint32_t *)((char *)n->blk + (size_t)n->n_pages * 44);
}

static inline int32_t *n_key(const struct rnode *n)
{
    return (int32_t *)((char *)n->blk + (size_t)n->n_pages * 48);
}

static size_t blk_size(const struct kvn_radix *t, uint32_t n_pages)
{
    return (size_t)n_pages * (48 + (size_t)t->ps * 4);
}

static bool is_root(const struct rnode *n)
{
    return (n->flags & F_ROOT) != 0;
}

static bool in_l1(const struct rnode *n)
{
    return (n->flags & F_L1) != 0;
}

static bool in_l2(const struct rnode *n)
{
    return (n->flags & F_L2) != 0;
}

static bool pending_write(const struct rnode *n)
{
    return n->pending_ack != 0 && !(n->flags & F_LOADING);
}

/* L2 holds valid bytes: present and not waiting for its write ack. */
static bool l2_valid(const struct rnode *n)
{
    return in_l2(n) && !pending_write(n);
}

static const int64_t *last_hash(const struct rnode *n)
{
    return is_root(n) ? NULL : &n_hash(n)[n->n_pages - 1];
}

static const uint8_t *last_digest(const struct rnode *n)
{
    return is_root(n) ? NULL : n_dig(n)[n->n_pages - 1];
}

/* ---------------------------------------------------------------- events */

static void emit(struct kvn_radix *t, const struct kvn_kv_event *ev)
{
    t->events++;
    if (t->cfg.sink.emit)
        t->cfg.sink.emit(t->cfg.sink.ctx, ev);
}

static void emit_stored(struct kvn_radix *t, enum kvn_medium m, const struct rnode *n)
{
    const int64_t *h = n_hash(n);
    const int64_t *parent = last_hash(n->parent);
    for (uint32_t i = 0; i < n->n_pages; i++) {
        struct kvn_kv_event ev = {
            .type = KVN_EV_BLOCK_STORED,
            .medium = m,
            .hashes = &h[i],
            .n_hashes = 1,
            .has_parent = i > 0 || parent != NULL,
            .parent_hash = i > 0 ? h[i - 1] : (parent ? *parent : 0),
            .tokens = n_key(n) + (size_t)i * t->ps,
            .n_tokens = t->ps,
            .block_size = t->ps,
            .has_lora_id = false,
        };
        emit(t, &ev);
    }
}

static void emit_removed(struct kvn_radix *t, enum kvn_medium m, const struct rnode *n)
{
    struct kvn_kv_event ev = {
        .type = KVN_EV_BLOCK_REMOVED,
        .medium = m,
        .hashes = n_hash(n),
        .n_hashes = n->n_pages,
    };
    emit(t, &ev);
}

/* ---------------------------------------------------------------- scratch */

static int grow_ptrs(struct rnode ***arr, uint32_t *cap, uint32_t need)
{
    if (need <= *cap)
        return 0;
    uint32_t nc = *cap ? *cap : 64;
    while (nc < need)
        nc *= 2;
    struct rnode **p = realloc(*arr, (size_t)nc * sizeof(*p));
    if (!p)
        return -ENOMEM;
    *arr = p;
    *cap = nc;
    return 0;
}

/*
 * scratch and scratch2 always hold at least n_nodes + SCRATCH_SLACK entries,
 * so that ack processing (which must not fail) never allocates. Called with
 * the extra nodes a call may create, before it changes anything.
 */
#define SCRATCH_SLACK 8u

static int reserve_scratch(struct kvn_radix *t, uint32_t extra_nodes)
{
    uint64_t need = t->n_nodes + extra_nodes + SCRATCH_SLACK;
    if (need > UINT32_MAX / 2)
        return -ENOMEM;
    if (grow_ptrs(&t->scratch, &t->scratch_cap, (uint32_t)need) < 0 ||
        grow_ptrs(&t->scratch2, &t->scratch2_cap, (uint32_t)need) < 0 ||
        grow_ptrs(&t->stack, &t->stack_cap, (uint32_t)need) < 0)
        return -ENOMEM;
    return 0;
}

/* ---------------------------------------------------------------- slab */

static struct rnode *node_at(const struct kvn_radix *t, uint32_t slot)
{
    return &t->chunks[slot >> SLAB_SHIFT][slot & (SLAB_CHUNK - 1)];
}

static int slab_reserve(struct kvn_radix *t, uint32_t n)
{
    uint32_t have = 0;
    for (uint32_t s = t->free_head; s && have < n; s = node_at(t, s - 1)->free_next)
        have++;
    while (have < n) {
        if (t->n_chunks >= (UINT32_MAX >> SLAB_SHIFT) - 1)
            return -ENOMEM;
        if (t->n_chunks == t->chunks_cap) {
            uint32_t nc = t->chunks_cap ? t->chunks_cap * 2 : 8;
            struct rnode **p = realloc(t->chunks, (size_t)nc * sizeof(*p));
            if (!p)
                return -ENOMEM;
            t->chunks = p;
            t->chunks_cap = nc;
        }
        struct rnode *c = calloc(SLAB_CHUNK, sizeof(struct rnode));
        if (!c)
            return -ENOMEM;
        uint32_t base = t->n_chunks << SLAB_SHIFT;
        t->chunks[t->n_chunks++] = c;
        for (uint32_t i = SLAB_CHUNK; i-- > 0;) {
            c[i].slot = base + i;
            c[i].gen = 1;
            c[i].free_next = t->free_head;
            t->free_head = base + i + 1;
        }
        have += SLAB_CHUNK;
    }
    return 0;
}

/* Takes a node from the reserved free list (never fails after slab_reserve). */
static struct rnode *node_new(struct kvn_radix *t)
{
    struct rnode *n = node_at(t, t->free_head - 1);
    t->free_head = n->free_next;
    uint32_t gen = n->gen, slot = n->slot;
    memset(n, 0, sizeof(*n));
    n->gen = gen;
    n->slot = slot;
    n->id = ((uint64_t)(gen ^ t->cfg.id_salt) << 32) | ((uint64_t)slot + 1);
    n->hpos[0] = n->hpos[1] = -1;
    return n;
}

static void node_free(struct kvn_radix *t, struct rnode *n)
{
    if (n->blk) {
        t->blk_bytes -= blk_size(t, n->n_pages);
        free(n->blk);
    }
    uint32_t gen = n->gen + 1, slot = n->slot;
    if (gen == 0)
        gen = 1;
    memset(n, 0, sizeof(*n));
    n->gen = gen;
    n->slot = slot;
    n->free_next = t->free_head;
    t->free_head = slot + 1;
}

static struct rnode *node_by_id(const struct kvn_radix *t, uint64_t id)
{
    uint64_t slot1 = id & 0xffffffffu;
    if (slot1 == 0 || slot1 > ((uint64_t)t->n_chunks << SLAB_SHIFT))
        return NULL;
    struct rnode *n = node_at(t, (uint32_t)(slot1 - 1));
    if (n->id != id || is_root(n))
        return NULL;
    return n;
}

/* ---------------------------------------------------------------- child map */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static uint64_t child_hash(const struct kvn_radix *t, const struct rnode *parent,
                           const int32_t *page)
{
    uint64_t h = mix64(parent->id);
    uint32_t k = t->ps < HASH_PREFIX_TOKENS ? t->ps : HASH_PREFIX_TOKENS;
    for (uint32_t i = 0; i < k; i++)
        h = (h ^ (uint32_t)page[i]) * 0x100000001b3ULL + (h >> 29);
    return mix64(h);
}

static int cmap_reserve(struct kvn_radix *t, size_t extra)
{
    size_t need = t->cmap_n + extra;
    if (need * 2 <= t->cmap_cap)
        return 0;
    size_t nc = t->cmap_cap ? t->cmap_cap : 256;
    while (need * 2 > nc)
        nc *= 2;
    struct centry *m = calloc(nc, sizeof(*m));
    if (!m)
        return -ENOMEM;
    for (size_t i = 0; i < t->cmap_cap; i++) {
        if (!t->cmap[i].n)
            continue;
        size_t j = t->cmap[i].h & (nc - 1);
        while (m[j].n)
            j = (j + 1) & (nc - 1);
        m[j] = t->cmap[i];
    }
    free(t->cmap);
    t->cmap = m;
    t->cmap_cap = nc;
    return 0;
}

static struct rnode *child_find(const struct kvn_radix *t, const struct rnode *parent,
                                const int32_t *page)
{
    if (!t->cmap_cap)
        return NULL;
    uint64_t h = child_hash(t, parent, page);
    size_t mask = t->cmap_cap - 1;
    for (size_t i = h & mask; t->cmap[i].n; i = (i + 1) & mask) {
        const struct centry *e = &t->cmap[i];
        if (e->h == h && e->parent_id == parent->id &&
            memcmp(e->key0, page, (size_t)t->ps * 4) == 0)
            return e->n;
    }
    return NULL;
}

/* Inserts child under its parent (room reserved by cmap_reserve). */
static void cmap_insert(struct kvn_radix *t, struct rnode *c)
{
    uint64_t h = child_hash(t, c->parent, n_key(c));
    size_t mask = t->cmap_cap - 1, i = h & mask;
    while (t->cmap[i].n)
        i = (i + 1) & mask;
    t->cmap[i].h = h;
    t->cmap[i].parent_id = c->parent->id;
    t->cmap[i].key0 = n_key(c);
    t->cmap[i].n = c;
    t->cmap_n++;
}

static size_t cmap_slot_of(const struct kvn_radix *t, const struct rnode *c)
{
    uint64_t h = child_hash(t, c->parent, n_key(c));
    size_t mask = t->cmap_cap - 1, i = h & mask;
    while (t->cmap[i].n != c)
        i = (i + 1) & mask;
    return i;
}

static void cmap_remove(struct kvn_radix *t, const struct rnode *c)
{
    size_t mask = t->cmap_cap - 1;
    size_t i = cmap_slot_of(t, c);
    size_t j = i;
    for (;;) { /* backward-shift deletion keeps probe chains intact */
        j = (j + 1) & mask;
        if (!t->cmap[j].n)
            break;
        size_t k = t->cmap[j].h & mask;
        bool stays = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);
        if (!stays) {
            t->cmap[i] = t->cmap[j];
            i = j;
        }
    }
    memset(&t->cmap[i], 0, sizeof(t->cmap[i]));
    t->cmap_n--;
}

/* ---------------------------------------------------------------- namespaces */

static struct rnode *ns_root(const struct kvn_radix *t, uint64_t ns)
{
    if (!t->nsmap_cap)
        return NULL;
    size_t mask = t->nsmap_cap - 1;
    for (size_t i = mix64(ns) & mask; t->nsmap[i].root; i = (i + 1) & mask)
        if (t->nsmap[i].ns == ns)
            return t->nsmap[i].root;
    return NULL;
}

static int ns_reserve(struct kvn_radix *t)
{
    size_t need = t->nsmap_n + 1;
    if (need * 2 <= t->nsmap_cap)
        return 0;
    size_t nc = t->nsmap_cap ? t->nsmap_cap * 2 : 16;
    while (need * 2 > nc)
        nc *= 2;
    struct nsentry *m = calloc(nc, sizeof(*m));
    if (!m)
        return -ENOMEM;
    for (size_t i = 0; i < t->nsmap_cap; i++) {
        if (!t->nsmap[i].root)
            continue;
        size_t j = mix64(t->nsmap[i].ns) & (nc - 1);
        while (m[j].root)
            j = (j + 1) & (nc - 1);
        m[j] = t->nsmap[i];
    }
    free(t->nsmap);
    t->nsmap = m;
    t->nsmap_cap = nc;
    return 0;
}

/* Creates the root of ns (room reserved by ns_reserve + slab_reserve). */
static struct rnode *ns_create(struct kvn_radix *t, uint64_t ns)
{
    struct rnode *r = node_new(t);
    r->flags = F_ROOT;
    r->ns = ns;
    size_t mask = t->nsmap_cap - 1, i = mix64(ns) & mask;
    while (t->nsmap[i].root)
        i = (i + 1) & mask;
    t->nsmap[i].ns = ns;
    t->nsmap[i].root = r;
    t->nsmap_n++;
    t->n_roots++;
    return r;
}

/* ---------------------------------------------------------------- heaps */

static bool hent_less(const struct kvn_radix *t, const struct hent *a, const struct hent *b)
{
    if (t->cfg.evict_policy == KVN_EVICT_LFU && a->hit != b->hit)
        return a->hit < b->hit;
    if (a->tick != b->tick)
        return a->tick < b->tick;
    return a->id < b->id; /* the documented rule: ties by id, not by slab slot */
}

static void hent_of(struct hent *e, struct rnode *n)
{
    e->tick = n->last_access;
    e->id = n->id;
    e->hit = n->hit_count;
    e->n = n;
}

static bool hent_stale(const struct hent *e)
{
    return e->tick != e->n->last_access || e->hit != e->n->hit_count;
}

static void heap_up(struct kvn_radix *t, int w, uint32_t i)
{
    struct rheap *h = &t->heap[w];
    struct hent e = h->a[i];
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (!hent_less(t, &e, &h->a[p]))
            break;
        h->a[i] = h->a[p];
        h->a[i].n->hpos[w] = (int32_t)i;
        i = p;
    }
    h->a[i] = e;
    e.n->hpos[w] = (int32_t)i;
}

static void heap_down(struct kvn_radix *t, int w, uint32_t i)
{
    struct rheap *h = &t->heap[w];
    struct hent e = h->a[i];
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        const struct hent *best = &e;
        if (l < h->n && hent_less(t, &h->a[l], best)) {
            m = l;
            best = &h->a[l];
        }
        if (r < h->n && hent_less(t, &h->a[r], best))
            m = r;
        if (m == i)
            break;
        h->a[i] = h->a[m];
        h->a[i].n->hpos[w] = (int32_t)i;
        i = m;
    }
    h->a[i] = e;
    e.n->hpos[w] = (int32_t)i;
}

/* The heap's array was reserved to hold every node (heap_reserve). */
static void heap_push(struct kvn_radix *t, int w, struct rnode *n)
{
    struct rheap *h = &t->heap[w];
    uint32_t i = h->n++;
    hent_of(&h->a[i], n);
    n->hpos[w] = (int32_t)i;
    heap_up(t, w, i);
}

static void heap_remove(struct kvn_radix *t, int w, struct rnode *n)
{
    struct rheap *h = &t->heap[w];
    uint32_t i = (uint32_t)n->hpos[w];
    n->hpos[w] = -1;
    struct hent last = h->a[--h->n];
    if (i == h->n)
        return;
    h->a[i] = last;
    last.n->hpos[w] = (int32_t)i;
    heap_up(t, w, i);
    heap_down(t, w, (uint32_t)last.n->hpos[w]);
}

/* The true minimum of heap w (NULL when empty): stale tops are refreshed first. */
static struct rnode *heap_top(struct kvn_radix *t, int w)
{
    struct rheap *h = &t->heap[w];
    while (h->n > 0 && hent_stale(&h->a[0])) {
        hent_of(&h->a[0], h->a[0].n);
        heap_down(t, w, 0);
    }
    return h->n ? h->a[0].n : NULL;
}

/*
 * A node's key changed. Growth is left to heap_top (lazy); a key that went
 * down (a caller's tick smaller than before) is re-sifted now, so snapshots
 * never exceed keys.
 */
static void heap_key_changed(struct kvn_radix *t, struct rnode *n)
{
    for (int w = 0; w < 2; w++) {
        if (n->hpos[w] < 0)
            continue;
        struct hent *e = &t->heap[w].a[n->hpos[w]];
        if (n->last_access < e->tick || n->hit_count < e->hit) {
            hent_of(e, n); /* one part may have grown while the other shrank */
            heap_up(t, w, (uint32_t)n->hpos[w]);
            heap_down(t, w, (uint32_t)n->hpos[w]);
        }
    }
}

/* Heaps hold at most every node: reserve for n_nodes + extra. */
static int heap_reserve(struct kvn_radix *t, uint64_t extra)
{
    uint64_t need = t->n_nodes + extra;
    if (need > INT32_MAX)
        return -ENOMEM;
    for (int w = 0; w < 2; w++) {
        struct rheap *h = &t->heap[w];
        if (need <= h->cap)
            continue;
        uint32_t nc = h->cap ? h->cap : 256;
        while (nc < need)
            nc *= 2;
        struct hent *a = realloc(h->a, (size_t)nc * sizeof(*a));
        if (!a)
            return -ENOMEM;
        h->a = a;
        h->cap = nc;
    }
    return 0;
}

/* ---------------------------------------------------------------- candidacy */

/*
 * A node whose L2 copy is valid but not announced yet (its parent's write is
 * still pending) stays in L1: L2-only nodes are always announced on CPU_PINNED.
 */
static bool l1_candidate(const struct rnode *n)
{
    return !is_root(n) && in_l1(n) && !(n->flags & F_LOADING) && n->n_l1_children == 0 &&
           n->lock_ref == 0 && n->pending_ack == 0 && (!in_l2(n) || (n->flags & F_CPU_PUB));
}

/* Deleting n loses nothing anybody holds: no L2 copy, no children, no protection. */
static bool deletable(const struct rnode *n)
{
    return !in_l2(n) && n->n_children == 0 && n->host_ref == 0;
}

static bool l1_sync_freeable(const struct kvn_radix *t, const struct rnode *n)
{
    if (in_l2(n))
        return true;
    return deletable(n) && (t->cfg.write_policy != KVN_WRITE_BACK || t->cfg.l2_pages == 0);
}

static bool l2_candidate(const struct rnode *n)
{
    return !is_root(n) && in_l2(n) && !in_l1(n) && n->n_children == 0 && n->lock_ref == 0 &&
           n->host_ref == 0 && n->pending_ack == 0;
}

/* Takes n out of both heaps and both counters. */
static void heap_out(struct kvn_radix *t, struct rnode *n)
{
    if (n->hpos[0] >= 0) {
        if (n->flags & F_SYNC1)
            t->evictable[0] -= n->n_pages;
        n->flags &= ~F_SYNC1;
        heap_remove(t, 0, n);
    }
    if (n->hpos[1] >= 0) {
        t->evictable[1] -= n->n_pages;
        heap_remove(t, 1, n);
    }
}

/* Re-files n in the heaps after any change of its state. */
static void refresh(struct kvn_radix *t, struct rnode *n)
{
    if (is_root(n))
        return;
    bool w0 = l1_candidate(n), w1 = l2_candidate(n);
    if (n->hpos[0] >= 0) {
        if (n->flags & F_SYNC1)
            t->evictable[0] -= n->n_pages;
        n->flags &= ~F_SYNC1;
        if (!w0)
            heap_remove(t, 0, n);
    } else if (w0) {
        heap_push(t, 0, n);
    }
    if (w0 && l1_sync_freeable(t, n)) {
        t->evictable[0] += n->n_pages;
        n->flags |= F_SYNC1;
    }
    if (n->hpos[1] >= 0 && !w1) {
        t->evictable[1] -= n->n_pages;
        heap_remove(t, 1, n);
    } else if (n->hpos[1] < 0 && w1) {
        t->evictable[1] += n->n_pages;
        heap_push(t, 1, n);
    }
}

/* ---------------------------------------------------------------- counts */

static void lock_add(struct kvn_radix *t, struct rnode *n, int d)
{
    if (d > 0 && n->lock_ref++ == 0)
        t->locked_nodes++;
    else if (d < 0 && --n->lock_ref == 0)
        t->locked_nodes--;
    refresh(t, n);
}

static void protect_add(struct kvn_radix *t, struct rnode *n, int d)
{
    if (d > 0 && n->host_ref++ == 0)
        t->protected_nodes++;
    else if (d < 0 && --n->host_ref == 0)
        t->protected_nodes--;
    refresh(t, n);
}

static void lock_path(struct kvn_radix *t, struct rnode *n, int d)
{
    for (; n && !is_root(n); n = n->parent)
        lock_add(t, n, d);
}

static void protect_path(struct kvn_radix *t, struct rnode *n, int d)
{
    for (; n && !is_root(n); n = n->parent)
        protect_add(t, n, d);
}

/* ---------------------------------------------------------------- tree edits */

static void link_child(struct kvn_radix *t, struct rnode *parent, struct rnode *c)
{
    c->parent = parent;
    c->prev_sib = NULL;
    c->next_sib = parent->first_child;
    if (parent->first_child)
        parent->first_child->prev_sib = c;
    parent->first_child = c;
    parent->n_children++;
    if (in_l1(c))
        parent->n_l1_children++;
    cmap_insert(t, c);
}

/* Removes a childless, unlocked node whose tier indices were already freed. */
static void delete_node(struct kvn_radix *t, struct rnode *n)
{
    struct rnode *p = n->parent;
    heap_out(t, n);
    cmap_remove(t, n);
    if (n->prev_sib)
        n->prev_sib->next_sib = n->next_sib;
    else
        p->first_child = n->next_sib;
    if (n->next_sib)
        n->next_sib->prev_sib = n->prev_sib;
    p->n_children--;
    if (in_l1(n))
        p->n_l1_children--;
    t->total_pages -= n->n_pages;
    if (n->lock_ref)
        t->locked_nodes--;
    if (n->host_ref)
        t->protected_nodes--;
    t->n_nodes--;
    node_free(t, n);
    refresh(t, p);
}

static void free_l1_of(struct kvn_radix *t, struct rnode *n)
{
    kvn_page_alloc_put(&t->l1a, n_l1(n), n->n_pages, NULL);
    n->flags &= ~F_L1;
    t->l1_node_pages -= n->n_pages;
    n->parent->n_l1_children--;
}

static void free_l2_of(struct kvn_radix *t, struct rnode *n)
{
    kvn_page_alloc_put(&t->l2a, n_l2(n), n->n_pages, NULL);
    n->flags &= ~F_L2;
    t->l2_node_pages -= n->n_pages;
}

/* L1 -> L2 only: the node stays, with its L2 copy. */
static void demote(struct kvn_radix *t, struct rnode *n)
{
    emit_removed(t, KVN_MEDIUM_GPU, n);
    free_l1_of(t, n);
    refresh(t, n);
    refresh(t, n->parent);
}

/*
 * Splits x after k pages: a new node p takes x's first k pages and x's place
 * under the parent; x keeps its id, locks of its own, and the rest. pblk /
 * xblk are preallocated blocks.
 *
 * Every in-flight state of x holds for each of its pages, so both fragments
 * carry it (SPLIT_KEEP and the counts below): tiers and publication (L1, L2,
 * L3, CPU_PUB), a pending copy job (pending_ack, p joins the job's fragment
 * list right before x, so the ack completes both in prefix order), the kind
 * of that job (LOADING: an L2 -> L1 copy whose L1 bytes are not valid yet;
 * losing it on p would let match report p's pages as device hits before the
 * ack), a demotion scheduled for the job's ack (DEMOTE), device locks and host
 * protections (p copies the counts, so path locks through x still cover both
 * halves; the job's own lock is one per fragment, released per fragment),
 * hit count and tick. Only the scratch marks (MARK, ANC) and the heap
 * bookkeeping (SYNC1, recomputed by refresh) are not copied.
 */
#define SPLIT_KEEP (F_L1 | F_L2 | F_L3 | F_LOADING | F_CPU_PUB | F_DEMOTE)
static struct rnode *split_node(struct kvn_radix *t, struct rnode *x, uint32_t k, void *pblk,
                                void *xblk)
{
    struct rnode *p = node_new(t);
    uint32_t n = x->n_pages, m = n - k;
    size_t ps = t->ps;
    size_t slot = cmap_slot_of(t, x); /* before x's key changes */
    heap_out(t, x);

    p->blk = pblk;
    p->n_pages = k;
    memcpy(n_hash(p), n_hash(x), (size_t)k * 8);
    memcpy(n_dig(p), n_dig(x), (size_t)k * KVN_PAGE_DIGEST_LEN);
    memcpy(n_l1(p), n_l1(x), (size_t)k * 4);
    memcpy(n_l2(p), n_l2(x), (size_t)k * 4);
    memcpy(n_key(p), n_key(x), (size_t)k * ps * 4);

    struct rnode tmp = *x; /* view of the old block */
    x->blk = xblk;
    x->n_pages = m;
    memcpy(n_hash(x), n_hash(&tmp) + k, (size_t)m * 8);
    memcpy(n_dig(x), n_dig(&tmp)[k], (size_t)m * KVN_PAGE_DIGEST_LEN);
    memcpy(n_l1(x), n_l1(&tmp) + k, (size_t)m * 4);
    memcpy(n_l2(x), n_l2(&tmp) + k, (size_t)m * 4);
    memcpy(n_key(x), n_key(&tmp) + (size_t)k * ps, (size_t)m * ps * 4);

    /* p takes x's place: same parent, same first page, same map entry */
    struct rnode *parent = x->parent;
    t->cmap[slot].n = p;
    t->cmap[slot].key0 = n_key(p);
    p->parent = parent;
    p->prev_sib = x->prev_sib;
    p->next_sib = x->next_sib;
    if (p->prev_sib)
        p->prev_sib->next_sib = p;
    else
        parent->first_child = p;
    if (p->next_sib)
        p->next_sib->prev_sib = p;
    free(tmp.blk);
    t->blk_bytes += blk_size(t, k) + blk_size(t, m) - blk_size(t, n);

    p->ns = x->ns;
    p->flags = x->flags & SPLIT_KEEP;
    p->lock_ref = x->lock_ref;
    p->host_ref = x->host_ref;
    p->hit_count = x->hit_count;
    p->last_access = x->last_access;
    if (p->lock_ref)
        t->locked_nodes++;
    if (p->host_ref)
        t->protected_nodes++;
    p->pending_ack = x->pending_ack;
    if (x->pending_ack) {
        struct rjob *j = &t->jobs[(x->pending_ack & 0xffffffffu) - 1];
        p->pend_prev = x->pend_prev;
        p->pend_next = x;
        if (x->pend_prev)
            x->pend_prev->pend_next = p;
        else
            j->head = p;
        x->pend_prev = p;
    }
    x->prev_sib = x->next_sib = NULL;
    p->first_child = NULL;
    p->n_children = 0;
    p->n_l1_children = 0;
    link_child(t, p, x);
    t->n_nodes++;
    refresh(t, p);
    refresh(t, x);
    return p;
}

/* ---------------------------------------------------------------- jobs */

static struct rjob *job_of(const struct kvn_radix *t, uint64_t ack)
{
    uint64_t s1 = ack & 0xffffffffu;
    if (s1 == 0 || s1 > t->jobs_cap)
        return NULL;
    struct rjob *j = &t->jobs[s1 - 1];
    return j->ack_id == ack ? j : NULL;
}

/* A free job slot whose arrays hold n_pages (no state change on failure). */
static struct rjob *job_alloc(struct kvn_radix *t, uint32_t n_pages)
{
    if (!t->job_free_head) {
        if (t->jobs_cap >= (1u << 30))
            return NULL;
        uint32_t nc = t->jobs_cap ? t->jobs_cap * 2 : 16;
        struct rjob *a = realloc(t->jobs, (size_t)nc * sizeof(*a));
        if (!a)
            return NULL;
        memset(a + t->jobs_cap, 0, (size_t)(nc - t->jobs_cap) * sizeof(*a));
        for (uint32_t i = nc; i-- > t->jobs_cap;) {
            a[i].gen = 1;
            a[i].free_next = t->job_free_head;
            t->job_free_head = i + 1;
        }
        t->jobs = a;
        t->jobs_cap = nc;
    }
    struct rjob *j = &t->jobs[t->job_free_head - 1];
    if (j->cap < n_pages) {
        uint32_t nc = j->cap ? j->cap : 16;
        while (nc < n_pages)
            nc *= 2;
        uint32_t *l1 = realloc(j->l1, (size_t)nc * 4);
        if (!l1)
            return NULL;
        j->l1 = l1;
        uint32_t *l2 = realloc(j->l2, (size_t)nc * 4);
        if (!l2)
            return NULL;
        j->l2 = l2;
        j->cap = nc;
    }
    uint32_t slot = (uint32_t)(j - t->jobs);
    t->job_free_head = j->free_next;
    j->free_next = 0;
    j->ack_id = ((uint64_t)(j->gen ^ t->cfg.id_salt) << 32) | ((uint64_t)slot + 1);
    j->head = j->tail = NULL;
    j->n_pages = 0;
    j->orphan = false;
    t->pending_jobs++;
    return j;
}

static void job_release(struct kvn_radix *t, struct rjob *j)
{
    t->pending_jobs--;
    t->pending_pages -= j->n_pages;
    if (j->orphan)
        t->orphan_pages -= j->n_pages;
    j->ack_id = 0;
    j->gen = j->gen + 1 ? j->gen + 1 : 1;
    j->head = j->tail = NULL;
    j->n_pages = 0;
    j->free_next = t->job_free_head;
    t->job_free_head = (uint32_t)(j - t->jobs) + 1;
}

static void job_append(struct kvn_radix *t, struct rjob *j, struct rnode *n)
{
    n->pending_ack = j->ack_id;
    n->pend_next = NULL;
    n->pend_prev = j->tail;
    if (j->tail)
        j->tail->pend_next = n;
    else
        j->head = n;
    j->tail = n;
    lock_add(t, n, +1);
}

/* Detaches n from its job: clears pending and drops the job's lock. */
static void job_detach(struct kvn_radix *t, struct rnode *n)
{
    n->pending_ack = 0;
    n->pend_next = n->pend_prev = NULL;
    lock_add(t, n, -1);
}

static void do_storage(struct kvn_radix *t, struct rnode *n)
{
    if (!t->cfg.storage_enabled || !t->cfg.storage.backup)
        return;
    struct rnode *p = n->parent;
    if (!is_root(p) && !(p->flags & F_L3))
        return; /* DISK chain would have a hole: its parent is not stored */
    struct kvn_storage_fragment f = {
        .ns = n->ns,
        .node_id = n->id,
        .page_size = t->ps,
        .n_pages = n->n_pages,
        .tokens = n_key(n),
        .hashes = n_hash(n),
        .l2_pages = n_l2(n),
        .has_parent = !is_root(p),
        .parent_hash = is_root(p) ? 0 : *last_hash(p),
        .prev_digest = last_digest(p),
    };
    if (t->cfg.storage.backup(t->cfg.storage.ctx, &f) == 0) {
        n->flags |= F_L3;
        t->storage_backups++;
        emit_stored(t, KVN_MEDIUM_DISK, n);
    } else {
        t->storage_failures++;
    }
}

/*
 * Publishes n on CPU_PINNED (and hands it to storage), then every descendant
 * whose L2 copy was waiting for it. Needs: l2_valid(n), parent published.
 */
static void publish_cpu(struct kvn_radix *t, struct rnode *n)
{
    /* explicit stack (holds n_nodes entries): chains can be long */
    uint32_t sp = 0;
    t->stack[sp++] = n;
    while (sp > 0) {
        struct rnode *c = t->stack[--sp];
        emit_stored(t, KVN_MEDIUM_CPU_PINNED, c);
        c->flags |= F_CPU_PUB;
        refresh(t, c); /* an announced copy may make it an L1 candidate */
        do_storage(t, c);
        for (struct rnode *k = c->first_child; k; k = k->next_sib)
            if (l2_valid(k) && !(k->flags & F_CPU_PUB))
                t->stack[sp++] = k;
    }
}

/*
 * Drops the L2 copies that can never be announced: below n (whose L2 copy is
 * gone), every descendant reached through unannounced L2 copies that is not
 * itself pending. They are all in L1 (l1_candidate keeps unannounced copies
 * there), so they only lose their backup; no event was sent for them. A
 * pending write below runs the same rule when it is acked.
 */
static void drop_unpublishable(struct kvn_radix *t, struct rnode *n)
{
    uint32_t sp = 0;
    for (struct rnode *k = n->first_child; k; k = k->next_sib)
        if (in_l2(k) && !(k->flags & F_CPU_PUB) && !k->pending_ack)
            t->stack[sp++] = k;
    while (sp > 0) {
        struct rnode *c = t->stack[--sp];
        c->flags &= ~F_DEMOTE;
        free_l2_of(t, c);
        refresh(t, c);
        for (struct rnode *k = c->first_child; k; k = k->next_sib)
            if (in_l2(k) && !(k->flags & F_CPU_PUB) && !k->pending_ack)
                t->stack[sp++] = k;
    }
}

/* Called for a write fragment right after its ack succeeded. */
static void settle_written(struct kvn_radix *t, struct rnode *n)
{
    if (!l2_valid(n) || (n->flags & F_CPU_PUB))
        return;
    struct rnode *p = n->parent;
    if (is_root(p) || (p->flags & F_CPU_PUB)) {
        publish_cpu(t, n);
    } else if (!in_l2(p)) {
        /* the parent has no L2 copy (its write failed): never announceable */
        n->flags &= ~F_DEMOTE;
        free_l2_of(t, n);
        refresh(t, n);
        drop_unpublishable(t, n);
    }
    /* else: the parent's copy is pending or itself waiting: announced with it */
}

static void job_fail(struct kvn_radix *t, struct rjob *j)
{
    struct rnode *n = j->head;
    while (n) {
        struct rnode *next = n->pend_next;
        if (j->dir == KVN_COPY_L1_TO_L2) {
            free_l2_of(t, n);
            n->flags &= ~F_DEMOTE;
            job_detach(t, n);
            drop_unpublishable(t, n);
        } else {
            free_l1_of(t, n);
            n->flags &= ~F_LOADING;
            job_detach(t, n);
            refresh(t, n->parent);
        }
        n = next;
    }
    job_release(t, j);
}

static void job_ok(struct kvn_radix *t, struct rjob *j)
{
    struct rnode *n = j->head;
    if (j->dir == KVN_COPY_L2_TO_L1) {
        while (n) {
            struct rnode *next = n->pend_next;
            n->flags &= ~F_LOADING;
            job_detach(t, n);
            emit_stored(t, KVN_MEDIUM_GPU, n);
            refresh(t, n->parent);
            n = next;
        }
        job_release(t, j);
        return;
    }
    /* detach every fragment first: publication below walks whole chains.
     * scratch always holds n_nodes entries (see reserve_scratch). */
    uint32_t i = 0;
    while (n) {
        struct rnode *next = n->pend_next;
        job_detach(t, n);
        t->scratch[i++] = n;
        n = next;
    }
    job_release(t, j);
    for (uint32_t k = 0; k < i; k++)
        settle_written(t, t->scratch[k]);
    /* deepest first: a scheduled node split while pending demotes its suffix
     * before its prefix, which is then an L1 leaf again and goes too */
    for (uint32_t k = i; k-- > 0;) {
        struct rnode *c = t->scratch[k];
        if (c->flags & F_DEMOTE) {
            c->flags &= ~F_DEMOTE;
            if (in_l2(c) && l1_candidate(c)) /* l1_candidate: announced, unlocked leaf */
                demote(t, c);
        }
    }
}

static int evict_l2_internal(struct kvn_radix *t, uint32_t need,
                             struct kvn_radix_evict_result *res);

/*
 * Queues one L1 -> L2 job over nodes[0..cnt) (in L1, no L2, not pending; the
 * order is the job's fragment order). demote_marked: nodes with F_MARK set are
 * flagged F_DEMOTE. Frees L2 leaves first when short. Returns 0 (ack in
 * *ack, pages in *pages), -ENOSPC or -ENOMEM with nothing changed, or the
 * submit error after rolling the job back (L2 leaves evicted to make room
 * stay evicted).
 */
static int queue_write(struct kvn_radix *t, struct rnode **nodes, uint32_t cnt, bool demote_marked,
                       uint64_t *ack, uint32_t *pages, struct kvn_err *err)
{
    uint64_t total = 0;
    for (uint32_t i = 0; i < cnt; i++)
        total += nodes[i]->n_pages;
    uint32_t fr = kvn_page_alloc_free_count(&t->l2a);
    if (total > (uint64_t)fr + t->evictable[1])
        return kvn_err_set(err, -ENOSPC, "backup: %llu L2 pages needed, %u free + %llu evictable",
                           (unsigned long long)total, fr, (unsigned long long)t->evictable[1]);
    struct rjob *j = job_alloc(t, (uint32_t)total);
    if (!j)
        return kvn_err_set(err, -ENOMEM, "backup: out of memory for a copy job");
    if (total > fr) {
        struct kvn_radix_evict_result r = {0};
        evict_l2_internal(t, (uint32_t)(total - fr), &r);
    }
    j->dir = KVN_COPY_L1_TO_L2;
    kvn_page_alloc_get(&t->l2a, (uint32_t)total, j->l2, NULL);
    uint32_t off = 0;
    for (uint32_t i = 0; i < cnt; i++) {
        memcpy(j->l1 + off, n_l1(nodes[i]), (size_t)nodes[i]->n_pages * 4);
        off += nodes[i]->n_pages;
    }
    uint64_t id = j->ack_id;
    if (t->cfg.copy.submit) { /* before the tree changes: a refusal undoes the pages only */
        struct kvn_copy_job cj = {.ack_id = id,
                                  .dir = j->dir,
                                  .n_pages = (uint32_t)total,
                                  .l1_slots = j->l1,
                                  .l2_pages = j->l2};
        int rc = t->cfg.copy.submit(t->cfg.copy.ctx, &cj);
        if (rc < 0) {
            t->copy_submit_failures++;
            kvn_page_alloc_put(&t->l2a, j->l2, (uint32_t)total, NULL);
            job_release(t, j);
            return kvn_err_set(err, rc, "backup: copy submit refused job (%d)", rc);
        }
    }
    off = 0;
    for (uint32_t i = 0; i < cnt; i++) {
        struct rnode *n = nodes[i];
        memcpy(n_l2(n), j->l2 + off, (size_t)n->n_pages * 4);
        off += n->n_pages;
        n->flags |= F_L2;
        t->l2_node_pages += n->n_pages;
        if (demote_marked && (n->flags & F_MARK))
            n->flags |= F_DEMOTE;
        job_append(t, j, n);
    }
    j->n_pages = (uint32_t)total;
    t->pending_pages += total;
    t->jobs_submitted++;
    *ack = id;
    *pages = (uint32_t)total;
    return 0;
}

/* ---------------------------------------------------------------- eviction */

static int evict_l2_internal(struct kvn_radix *t, uint32_t need, struct kvn_radix_evict_result *res)
{
    struct rnode *v;
    while (res->freed_pages < need && (v = heap_top(t, 1)) != NULL) {
        uint32_t np = v->n_pages;
        heap_out(t, v);
        if (v->flags & F_CPU_PUB)
            emit_removed(t, KVN_MEDIUM_CPU_PINNED, v);
        if (v->flags & F_L3)
            emit_removed(t, KVN_MEDIUM_DISK, v); /* the index forgets it */
        free_l2_of(t, v);
        delete_node(t, v);
        res->freed_pages += np;
        res->deleted_pages += np;
    }
    return 0;
}

static void delete_l1_leaf(struct kvn_radix *t, struct rnode *v)
{
    emit_removed(t, KVN_MEDIUM_GPU, v);
    free_l1_of(t, v);
    delete_node(t, v);
}

/*
 * Frees L1 until freed (+ scheduled, when async) >= need. allow_async: victims
 * that need a backup first get one (demoted on its ack); otherwise they are
 * skipped. Skipped victims return to the heap at the end.
 */
static int evict_l1_internal(struct kvn_radix *t, uint32_t need, bool allow_async,
                             struct kvn_radix_evict_result *res, struct kvn_err *err)
{
    uint32_t n_skip = 0, n_async = 0;
    bool async_ok = allow_async && t->cfg.l2_pages > 0;
    /* scratch holds skipped victims from the front, async victims from the back */
    if (t->n_nodes + 1 > UINT32_MAX ||
        grow_ptrs(&t->scratch, &t->scratch_cap, (uint32_t)t->n_nodes + 1) < 0)
        return kvn_err_set(err, -ENOMEM, "evict_l1: out of memory");
    uint32_t cap = t->scratch_cap;
    struct rnode *top;
    while ((uint64_t)res->freed_pages + res->scheduled_pages < need &&
           (top = heap_top(t, 0)) != NULL) {
        struct rnode *v = top;
        uint32_t np = v->n_pages;
        heap_out(t, v);
        if (in_l2(v)) {
            demote(t, v);
            res->freed_pages += np;
            res->demoted_pages += np;
        } else if (l1_sync_freeable(t, v)) {
            delete_l1_leaf(t, v);
            res->freed_pages += np;
            res->deleted_pages += np;
        } else if (async_ok) {
            t->scratch[cap - 1 - n_async++] = v;
            v->flags |= F_MARK;
            res->scheduled_pages += np;
        } else {
            t->scratch[n_skip++] = v;
        }
    }
    for (uint32_t i = 0; i < n_skip; i++)
        refresh(t, t->scratch[i]);
    if (n_async == 0)
        return 0;

    /* one job: each victim preceded by its ancestors that lack an L2 copy */
    struct rnode **vict = t->scratch + cap - n_async;
    uint32_t total = 0;
    for (uint32_t i = 0; i < n_async; i++)
        for (struct rnode *a = vict[i]; !is_root(a); a = a->parent)
            total++;
    int rc = grow_ptrs(&t->scratch2, &t->scratch2_cap, total + 1);
    uint32_t cnt = 0;
    if (rc == 0) {
        for (uint32_t i = n_async; i-- > 0;) { /* vict[n_async - 1] was popped first */
            struct rnode *v = vict[i];
            uint32_t start = cnt;
            t->scratch2[cnt++] = v;
            for (struct rnode *a = v->parent; !is_root(a); a = a->parent)
                if (in_l1(a) && !in_l2(a) && !a->pending_ack && !(a->flags & F_ANC)) {
                    a->flags |= F_ANC;
                    t->scratch2[cnt++] = a;
                }
            for (uint32_t a = start, b = cnt - 1; a < b; a++, b--) { /* prefix order */
                struct rnode *x = t->scratch2[a];
                t->scratch2[a] = t->scratch2[b];
                t->scratch2[b] = x;
            }
        }
        for (uint32_t i = 0; i < cnt; i++)
            t->scratch2[i]->flags &= ~F_ANC;
        uint64_t ack = 0;
        uint32_t pages = 0;
        rc = queue_write(t, t->scratch2, cnt, true, &ack, &pages, NULL);
        if (rc == 0)
            res->ack_id = ack;
    }
    for (uint32_t i = 0; i < cnt; i++)
        t->scratch2[i]->flags &= ~F_MARK;
    if (rc != 0) {
        /* could not back them up: childless victims are dropped, others stay */
        res->scheduled_pages = 0;
        for (uint32_t i = 0; i < n_async; i++) {
            struct rnode *v = t->scratch[cap - 1 - i];
            v->flags &= ~F_MARK;
            if (deletable(v)) {
                res->freed_pages += v->n_pages;
                res->deleted_pages += v->n_pages;
                delete_l1_leaf(t, v);
            } else {
                refresh(t, v);
            }
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- create */

void kvn_radix_config_init(struct kvn_radix_config *cfg)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof(*cfg));
    cfg->page_size = 16;
    cfg->l1_pages = 1024;
    cfg->l2_pages = 4096;
    cfg->write_policy = KVN_WRITE_THROUGH;
    cfg->evict_policy = KVN_EVICT_LRU;
}

int kvn_radix_create(const struct kvn_radix_config *cfg, struct kvn_radix **out,
                     struct kvn_err *err)
{
    if (out)
        *out = NULL;
    if (!cfg || !out)
        return kvn_err_set(err, -EINVAL, "radix_create: cfg and out must not be NULL");
    if (cfg->page_size == 0 || cfg->page_size > KVN_RADIX_MAX_PAGE_SIZE)
        return kvn_err_set(err, -EINVAL, "radix_create: page_size %u not in 1..%u", cfg->page_size,
                           KVN_RADIX_MAX_PAGE_SIZE);
    if (cfg->l1_pages == 0 || cfg->l1_pages > KVN_PAGE_ALLOC_MAX_CAPACITY)
        return kvn_err_set(err, -EINVAL, "radix_create: l1_pages %u not in 1..%u", cfg->l1_pages,
                           KVN_PAGE_ALLOC_MAX_CAPACITY);
    if (cfg->l2_pages > KVN_PAGE_ALLOC_MAX_CAPACITY)
        return kvn_err_set(err, -EINVAL, "radix_create: l2_pages %u too large", cfg->l2_pages);
    if ((unsigned)cfg->write_policy > KVN_WRITE_BACK)
        return kvn_err_set(err, -EINVAL, "radix_create: unknown write policy %d",
                           (int)cfg->write_policy);
    if ((unsigned)cfg->evict_policy > KVN_EVICT_LFU)
        return kvn_err_set(err, -EINVAL, "radix_create: unknown evict policy %d",
                           (int)cfg->evict_policy);
    struct kvn_radix *t = calloc(1, sizeof(*t));
    if (!t)
        return kvn_err_set(err, -ENOMEM, "radix_create: out of memory");
    t->cfg = *cfg;
    if (!t->cfg.max_namespaces)
        t->cfg.max_namespaces = KVN_RADIX_DEFAULT_MAX_NAMESPACES;
    t->ps = cfg->page_size;
    int rc = kvn_page_alloc_init(&t->l1a, cfg->l1_pages, err);
    if (rc == 0)
        rc = kvn_page_alloc_init(&t->l2a, cfg->l2_pages, err);
    if (rc == 0 && !(t->l2_resv = calloc(cfg->l2_pages ? cfg->l2_pages : 1, 1)))
        rc = kvn_err_set(err, -ENOMEM, "radix_create: out of memory");
    if (rc == 0 && (reserve_scratch(t, 0) < 0 || heap_reserve(t, 256) < 0 ||
                    cmap_reserve(t, 64) < 0 || ns_reserve(t) < 0))
        rc = kvn_err_set(err, -ENOMEM, "radix_create: out of memory");
    if (rc < 0) {
        kvn_radix_destroy(t);
        return rc;
    }
    *out = t;
    return 0;
}

static void free_all_nodes(struct kvn_radix *t)
{
    for (uint32_t c = 0; c < t->n_chunks; c++)
        for (uint32_t i = 0; i < SLAB_CHUNK; i++) {
            struct rnode *n = &t->chunks[c][i];
            if (n->id) {
                free(n->blk);
                n->blk = NULL;
            }
        }
}

void kvn_radix_destroy(struct kvn_radix *t)
{
    if (!t)
        return;
    free_all_nodes(t);
    for (uint32_t c = 0; c < t->n_chunks; c++)
        free(t->chunks[c]);
    free(t->chunks);
    free(t->cmap);
    free(t->nsmap);
    free(t->heap[0].a);
    free(t->heap[1].a);
    for (uint32_t i = 0; i < t->jobs_cap; i++) {
        free(t->jobs[i].l1);
        free(t->jobs[i].l2);
    }
    free(t->jobs);
    free(t->scratch);
    free(t->scratch2);
    free(t->stack);
    free(t->slotbuf);
    kvn_page_alloc_fini(&t->l1a);
    kvn_page_alloc_fini(&t->l2a);
    free(t->l2_resv);
    free(t);
}

int kvn_radix_reset(struct kvn_radix *t, struct kvn_err *err)
{
    if (!t)
        return kvn_err_set(err, -EINVAL, "radix_reset: tree is NULL");
    struct kvn_kv_event ev = {.type = KVN_EV_ALL_BLOCKS_CLEARED};
    emit(t, &ev);
    /* rebuild the slab free list with every node free, generations bumped */
    for (uint32_t c = 0; c < t->n_chunks; c++)
        for (uint32_t i = 0; i < SLAB_CHUNK; i++) {
            struct rnode *n = &t->chunks[c][i];
            if (n->id)
                node_free(t, n);
        }
    t->free_head = 0;
    for (uint32_t s = t->n_chunks << SLAB_SHIFT; s-- > 0;) {
        struct rnode *n = node_at(t, s);
        n->free_next = t->free_head;
        t->free_head = s + 1;
    }
    memset(t->cmap, 0, t->cmap_cap * sizeof(*t->cmap));
    t->cmap_n = 0;
    memset(t->nsmap, 0, t->nsmap_cap * sizeof(*t->nsmap));
    t->nsmap_n = 0;
    t->heap[0].n = t->heap[1].n = 0;
    t->evictable[0] = t->evictable[1] = 0;
    t->n_nodes = t->n_roots = 0;
    t->blk_bytes = 0;
    t->total_pages = t->l1_node_pages = t->l2_node_pages = 0;
    t->locked_nodes = t->protected_nodes = 0;
    kvn_page_alloc_reset(&t->l1a);
    kvn_page_alloc_reset(&t->l2a);
    /* reservations stay the caller's: their bytes may still be landing */
    for (uint32_t p = 0; t->n_l2_resv && p < t->cfg.l2_pages; p++)
        if (t->l2_resv[p])
            kvn_page_alloc_take(&t->l2a, &p, 1, NULL);
    /* in-flight jobs become orphans that keep their destination pages */
    for (uint32_t i = 0; i < t->jobs_cap; i++) {
        struct rjob *j = &t->jobs[i];
        if (!j->ack_id)
            continue;
        if (!j->orphan) {
            j->orphan = true;
            t->orphan_pages += j->n_pages;
        }
        j->head = j->tail = NULL;
        if (j->dir == KVN_COPY_L1_TO_L2)
            kvn_page_alloc_take(&t->l2a, j->l2, j->n_pages, NULL);
        else
            kvn_page_alloc_take(&t->l1a, j->l1, j->n_pages, NULL);
    }
    return 0;
}

/* ---------------------------------------------------------------- match */

static uint32_t common_pages(const struct kvn_radix *t, const struct rnode *n, const int32_t *tok,
                             uint32_t avail_pages)
{
    uint32_t lim = n->n_pages < avail_pages ? n->n_pages : avail_pages;
    size_t pb = (size_t)t->ps * 4;
    const int32_t *key = n_key(n);
    /* the first page matched through the child map already; usually the rest
     * matches too: one memcmp over the whole run, pages only on a mismatch */
    if (lim <= 1 || memcmp(key + t->ps, tok + t->ps, (lim - 1) * pb) == 0)
        return lim;
    uint32_t k = 1;
    while (k < lim && memcmp(key + (size_t)k * t->ps, tok + (size_t)k * t->ps, pb) == 0)
        k++;
    return k;
}

static void touch(struct kvn_radix *t, struct rnode *n, uint64_t now)
{
    bool down = now < n->last_access;
    n->last_access = now;
    if (down) /* a growing key is left to heap_top: no heap access here */
        heap_key_changed(t, n);
}

/*
 * The checks of a token key shared by the calls that take one: tokens present, ns not the
 * reserved namespace, at most UINT32_MAX tokens and, with whole_pages, a multiple of page_size.
 */
static inline int check_key(const struct kvn_radix *t, uint64_t ns, const int32_t *tokens,
                            size_t n_tokens, bool whole_pages, struct kvn_err *err, const char *who)
{
    if (!tokens && n_tokens > 0)
        return kvn_err_set(err, -EINVAL, "%s: tokens is NULL", who);
    if (ns == KVN_RADIX_NS_INVALID)
        return kvn_err_set(err, -EINVAL, "%s: namespace %llu is reserved", who,
                           (unsigned long long)ns);
    if (whole_pages && n_tokens % t->ps)
        return kvn_err_set(err, -EINVAL, "%s: %zu tokens is not a multiple of page_size %u", who,
                           n_tokens, t->ps);
    if (n_tokens > UINT32_MAX)
        return kvn_err_set(err, -EINVAL, "%s: %zu tokens is too many", who, n_tokens);
    return 0;
}

int kvn_radix_match_prefix(struct kvn_radix *t, uint64_t ns, const int32_t *tokens, size_t n_tokens,
                           uint64_t now, uint32_t *slots_out, uint32_t slots_cap,
                           struct kvn_radix_match *res, struct kvn_err *err)
{
    if (!t || !res)
        return kvn_err_set(err, -EINVAL, "match_prefix: tree and res must not be NULL");
    int krc = check_key(t, ns, tokens, n_tokens, false, err, "match_prefix");
    if (krc < 0)
        return krc;
    memset(res, 0, sizeof(*res));
    struct rnode *node = ns_root(t, ns);
    if (!node)
        return 0;
    uint32_t np = (uint32_t)(n_tokens / t->ps), pos = 0;
    bool device = true, backed = true;
    uint32_t dev_pages = 0, host_pages = 0, backed_pages = 0;
    while (pos < np) {
        struct rnode *c = child_find(t, node, tokens + (size_t)pos * t->ps);
        if (!c || (c->flags & F_LOADING))
            break;
        uint32_t k = common_pages(t, c, tokens + (size_t)pos * t->ps, np - pos);
        touch(t, c, now);
        if (in_l1(c) && device) {
            if (slots_out) {
                for (uint32_t i = 0; i < k && res->n_slots < slots_cap; i++)
                    slots_out[res->n_slots++] = n_l1(c)[i];
            }
            dev_pages += k;
            res->last_device_node = c->id;
        } else if (in_l2(c)) {
            device = false;
            host_pages += k;
            res->last_host_node = c->id;
        } else {
            break;
        }
        if (backed && l2_valid(c))
            backed_pages += k;
        else
            backed = false;
        pos += k;
        if (k < c->n_pages)
            break;
        node = c;
    }
    res->device_tokens = dev_pages * t->ps;
    res->host_tokens = host_pages * t->ps;
    res->backed_tokens = backed_pages * t->ps;
    return 0;
}

int kvn_radix_match_l2(struct kvn_radix *t, uint64_t ns, const int32_t *tokens, size_t n_tokens,
                       uint64_t now, uint32_t *pages_out, uint32_t pages_cap,
                       struct kvn_radix_l2_match *res, struct kvn_err *err)
{
    if (!t || !res)
        return kvn_err_set(err, -EINVAL, "match_l2: tree and res must not be NULL");
    int krc = check_key(t, ns, tokens, n_tokens, false, err, "match_l2");
    if (krc < 0)
        return krc;
    memset(res, 0, sizeof(*res));
    struct rnode *node = ns_root(t, ns);
    if (!node)
        return 0;
    uint32_t np = (uint32_t)(n_tokens / t->ps), pos = 0;
    while (pos < np) {
        struct rnode *c = child_find(t, node, tokens + (size_t)pos * t->ps);
        if (!c || !l2_valid(c) || !(c->flags & F_CPU_PUB))
            break;
        uint32_t k = common_pages(t, c, tokens + (size_t)pos * t->ps, np - pos);
        touch(t, c, now);
        for (uint32_t i = 0; pages_out && i < k && res->n_pages < pages_cap; i++)
            pages_out[res->n_pages++] = n_l2(c)[i];
        res->last_node = c->id;
        pos += k;
        if (k < c->n_pages)
            break;
        node = c;
    }
    res->tokens = pos * t->ps;
    return 0;
}

/* ---------------------------------------------------------------- insert */

enum walk_tier { WALK_L1, WALK_L2 };

struct walk {
    struct rnode *last;  /* deepest node fully covered by the walk (or root) */
    struct rnode *split; /* node to split, or NULL */
    uint32_t split_at;
    uint32_t pos;      /* pages covered by existing nodes */
    uint32_t prefix;   /* of pos: pages already in the tier */
    uint32_t missing;  /* of pos: pages of nodes lacking the tier (L1: L2-only nodes to revive;
                        * L2: L1-only nodes to attach) */
    struct rnode *end; /* node holding page pos-1 when no split, or NULL */
    bool barrier;      /* stopped in front of a node the tier cannot take yet (L1: loading;
                        * L2: a pending write) */
};

/*
 * Read-only walk down the path of tokens for an insert into `tier`. Records the nodes lacking
 * the tier in t->scratch2[0..*n_miss) (eviction uses t->scratch meanwhile). Inlined into the two
 * walks below, so that each is compiled for its tier.
 */
static inline __attribute__((always_inline)) int walk_tier(struct kvn_radix *t, struct rnode *root,
                                                           const int32_t *tokens, uint32_t np,
                                                           struct walk *w, uint32_t *n_miss,
                                                           enum walk_tier tier)
{
    memset(w, 0, sizeof(*w));
    *n_miss = 0;
    struct rnode *node = root;
    w->last = root;
    while (w->pos < np) {
        const int32_t *tok = tokens + (size_t)w->pos * t->ps;
        struct rnode *c = child_find(t, node, tok);
        if (!c)
            break;
        if (tier == WALK_L1 ? (c->flags & F_LOADING) != 0 : pending_write(c)) {
            w->barrier = true;
            break;
        }
        uint32_t k = common_pages(t, c, tok, np - w->pos);
        bool has = tier == WALK_L1 ? in_l1(c) : l2_valid(c);
        if (has) {
            w->prefix += k;
        } else {
            if (grow_ptrs(&t->scratch2, &t->scratch2_cap, *n_miss + 1) < 0)
                return -ENOMEM;
            t->scratch2[(*n_miss)++] = c;
            w->missing += k;
        }
        w->pos += k;
        w->end = c;
        if (k < c->n_pages) {
            /* split where the key diverges, or where it ends inside a node lacking the tier
             * (only its head is revived / loaded / attached) */
            if (w->pos < np || !has) {
                w->split = c;
                w->split_at = k;
            }
            break;
        }
        node = c;
        w->last = c;
    }
    return 0;
}

/* The walk for insert / load_back: L2-only nodes to revive go to t->scratch2[0..*n_rev). */
static int walk_insert(struct kvn_radix *t, struct rnode *root, const int32_t *tokens, uint32_t np,
                       struct walk *w, uint32_t *n_rev)
{
    return walk_tier(t, root, tokens, np, w, n_rev, WALK_L1);
}

/* The walk for insert_host: L1-only nodes to attach go to t->scratch2[0..*n_att). */
static int walk_host(struct kvn_radix *t, struct rnode *root, const int32_t *tokens, uint32_t np,
                     struct walk *w, uint32_t *n_att)
{
    return walk_tier(t, root, tokens, np, w, n_att, WALK_L2);
}

static int check_slots(const struct kvn_radix *t, const uint32_t *slots, uint32_t n,
                       struct kvn_err *err, const char *who)
{
    for (uint32_t i = 0; i < n; i++)
        if (slots[i] >= t->cfg.l1_pages)
            return kvn_err_set(err, -EINVAL, "%s: L1 slot %u >= l1_pages %u", who, slots[i],
                               t->cfg.l1_pages);
    return 0;
}

/*
 * Makes `need` L1 slots available in auto mode while the nodes of the walk
 * are locked. -ENOSPC with nothing changed when impossible.
 */
static int auto_make_room(struct kvn_radix *t, struct rnode *guard, uint32_t need,
                          uint32_t *evicted, struct kvn_err *err, const char *who)
{
    uint32_t fr = kvn_page_alloc_free_count(&t->l1a);
    if (need <= fr)
        return 0;
    lock_path(t, guard, +1);
    if ((uint64_t)fr + t->evictable[0] < need) {
        uint64_t ev = t->evictable[0];
        lock_path(t, guard, -1);
        return kvn_err_set(err, -ENOSPC, "%s: %u L1 slots needed, %u free + %llu evictable", who,
                           need, fr, (unsigned long long)ev);
    }
    struct kvn_radix_evict_result r = {0};
    int rc = evict_l1_internal(t, need - fr, false, &r, err);
    lock_path(t, guard, -1);
    *evicted = r.freed_pages;
    if (rc < 0)
        return rc;
    if (kvn_page_alloc_free_count(&t->l1a) < need)
        return kvn_err_set(err, -ENOSPC, "%s: could not free enough L1 slots", who);
    return 0;
}

static int prealloc_blocks(struct kvn_radix *t, void **blks, const uint32_t *pages, int n)
{
    for (int i = 0; i < n; i++) {
        blks[i] = NULL;
        if (!pages[i])
            continue;
        blks[i] = malloc(blk_size(t, pages[i]));
        if (!blks[i]) {
            for (int j = 0; j < i; j++)
                free(blks[j]);
            return -ENOMEM;
        }
    }
    return 0;
}

static void revive(struct kvn_radix *t, struct rnode *c, const uint32_t *slots)
{
    memcpy(n_l1(c), slots, (size_t)c->n_pages * 4);
    c->flags |= F_L1;
    t->l1_node_pages += c->n_pages;
    c->parent->n_l1_children++;
    refresh(t, c);
    refresh(t, c->parent);
    emit_stored(t, KVN_MEDIUM_GPU, c);
}

int kvn_radix_insert(struct kvn_radix *t, uint64_t ns, const int32_t *tokens, size_t n_tokens,
                     const uint32_t *l1_slots, uint64_t now, struct kvn_radix_insert_result *out,
                     struct kvn_err *err)
{
    /* results go to a local copy: a refused call leaves *out untouched too */
    struct kvn_radix_insert_result resv, *res = &resv;
    if (!t || !out)
        return kvn_err_set(err, -EINVAL, "insert: tree and res must not be NULL");
    int krc = check_key(t, ns, tokens, n_tokens, true, err, "insert");
    if (krc < 0)
        return krc;
    memset(res, 0, sizeof(*res));
    uint32_t np = (uint32_t)(n_tokens / t->ps);
    if (np == 0) {
        *out = resv;
        return 0;
    }
    struct rnode *root = ns_root(t, ns);
    if (!root && t->nsmap_n >= t->cfg.max_namespaces)
        return kvn_err_set(err, -ENOSPC, "insert: namespace limit %u reached",
                           t->cfg.max_namespaces);

    struct walk w = {0};
    uint32_t n_rev = 0;
    if (root && walk_insert(t, root, tokens, np, &w, &n_rev) < 0)
        return kvn_err_set(err, -ENOMEM, "insert: out of memory");
    uint32_t stop = w.barrier ? w.pos : np;
    uint32_t new_pages = stop - w.pos;
    uint32_t adopt = w.missing + new_pages;
    if (l1_slots) { /* every entry must be a slot, even those not adopted */
        int rc = check_slots(t, l1_slots, np, err, "insert");
        if (rc < 0)
            return rc;
    }
    if (adopt > t->cfg.l1_pages)
        return kvn_err_set(err, -ENOSPC, "insert: %u pages exceed l1_pages %u", adopt,
                           t->cfg.l1_pages);

    /* everything that can fail is reserved before the first change */
    uint32_t bp[3] = {w.split ? w.split_at : 0, w.split ? w.split->n_pages - w.split_at : 0,
                      new_pages};
    void *blks[3];
    if (slab_reserve(t, 3) < 0 || cmap_reserve(t, 2) < 0 || ns_reserve(t) < 0 ||
        heap_reserve(t, 3) < 0 || grow_ptrs(&t->scratch2, &t->scratch2_cap, np + 2) < 0 ||
        reserve_scratch(t, 3) < 0 || prealloc_blocks(t, blks, bp, 3) < 0)
        return kvn_err_set(err, -ENOMEM, "insert: out of memory");
    if (!l1_slots && adopt > t->slotbuf_cap) {
        uint32_t *b = realloc(t->slotbuf, (size_t)adopt * 4);
        if (!b) {
            for (int i = 0; i < 3; i++)
                free(blks[i]);
            return kvn_err_set(err, -ENOMEM, "insert: out of memory");
        }
        t->slotbuf = b;
        t->slotbuf_cap = adopt;
    }
    uint32_t *slots = NULL; /* adopted slots, in page order */
    if (l1_slots) {
        int rc = kvn_page_alloc_take(&t->l1a, l1_slots + w.prefix, adopt, err);
        if (rc < 0) {
            for (int i = 0; i < 3; i++)
                free(blks[i]);
            return rc == -EBUSY ? kvn_err_set(err, -EBUSY,
                                              "insert: an L1 slot to adopt is already owned by "
                                              "the tree or listed twice")
                                : rc;
        }
        slots = (uint32_t *)l1_slots + w.prefix;
    } else if (adopt > 0) {
        struct rnode *guard = w.split ? w.split : (w.end ? w.end : NULL);
        int rc = auto_make_room(t, guard, adopt, &res->evicted_pages, err, "insert");
        slots = t->slotbuf;
        if (rc < 0) {
            for (int i = 0; i < 3; i++)
                free(blks[i]);
            return rc;
        }
        kvn_page_alloc_get(&t->l1a, adopt, slots, NULL);
    }
    /* ---- no failure below this line ---- */
    if (!root)
        root = ns_create(t, ns);
    struct rnode *parent = w.last;
    if (!parent || !w.end)
        parent = root;
    if (w.split) {
        struct rnode *p = split_node(t, w.split, w.split_at, blks[0], blks[1]);
        if (n_rev > 0 && t->scratch2[n_rev - 1] == w.split)
            t->scratch2[n_rev - 1] = p;
        parent = p;
        w.end = p;
    } else if (w.end) {
        parent = w.end;
    }
    uint32_t si = 0;
    for (uint32_t i = 0; i < n_rev; i++) {
        struct rnode *c = t->scratch2[i];
        revive(t, c, slots + si);
        si += c->n_pages;
    }
    struct rnode *last = parent;
    if (new_pages > 0) {
        struct rnode *leaf = node_new(t);
        leaf->blk = blks[2];
        leaf->n_pages = new_pages;
        leaf->ns = ns;
        t->blk_bytes += blk_size(t, new_pages);
        memcpy(n_key(leaf), tokens + (size_t)w.pos * t->ps, (size_t)new_pages * t->ps * 4);
        memcpy(n_l1(leaf), slots + si, (size_t)new_pages * 4);
        kvn_page_hash_chain(last_digest(parent), n_key(leaf), (size_t)new_pages * t->ps, t->ps,
                            n_dig(leaf), n_hash(leaf), NULL);
        leaf->flags = F_L1;
        leaf->last_access = now;
        link_child(t, parent, leaf);
        t->n_nodes++;
        t->total_pages += new_pages;
        t->l1_node_pages += new_pages;
        refresh(t, leaf);
        refresh(t, parent);
        emit_stored(t, KVN_MEDIUM_GPU, leaf);
        last = leaf;
    }

    res->prefix_tokens = w.prefix * t->ps;
    res->revived_tokens = w.missing * t->ps;
    res->new_tokens = new_pages * t->ps;
    res->inserted_tokens = stop * t->ps;
    res->last_node = is_root(last) ? 0 : last->id;

    /* hit counts and ticks along the path; collect write-through candidates */
    uint32_t thr = t->cfg.write_policy == KVN_WRITE_THROUGH             ? 1
                   : t->cfg.write_policy == KVN_WRITE_THROUGH_SELECTIVE ? 2
                                                                        : 0;
    uint32_t cnt = 0;
    bool found = false;
    for (struct rnode *n = last; !is_root(n); n = n->parent) {
        n->hit_count++;
        touch(t, n, now);
        bool needs = in_l1(n) && !in_l2(n) && !n->pending_ack;
        if (thr && needs && (found || n->hit_count >= thr)) {
            found = true;
            t->scratch2[cnt++] = n;
        }
    }
    if (cnt > 0 && t->cfg.l2_pages > 0) {
        for (uint32_t a = 0, b = cnt - 1; a < b; a++, b--) {
            struct rnode *x = t->scratch2[a];
            t->scratch2[a] = t->scratch2[b];
            t->scratch2[b] = x;
        }
        /* queue_write uses scratch for eviction only; the list is in scratch2 */
        if (queue_write(t, t->scratch2, cnt, false, &res->backup_ack_id, &res->backup_pages, NULL) <
            0)
            t->backups_skipped++;
    }
    *out = resv;
    return 0;
}

/* ---------------------------------------------------------------- host inserts */

int kvn_radix_reserve_l2(struct kvn_radix *t, uint32_t n_pages, uint32_t *pages_out,
                         struct kvn_err *err)
{
    if (!t || (n_pages > 0 && !pages_out))
        return kvn_err_set(err, -EINVAL, "reserve_l2: tree and pages_out must not be NULL");
    if (t->cfg.l2_pages == 0)
        return kvn_err_set(err, -EINVAL, "reserve_l2: the tree has no L2 tier");
    int rc = kvn_page_alloc_get(&t->l2a, n_pages, pages_out, err);
    if (rc < 0)
        return rc;
    for (uint32_t i = 0; i < n_pages; i++)
        t->l2_resv[pages_out[i]] = 1;
    t->n_l2_resv += n_pages;
    return 0;
}

int kvn_radix_release_l2(struct kvn_radix *t, const uint32_t *pages, uint32_t n_pages,
                         struct kvn_err *err)
{
    if (!t || (n_pages > 0 && !pages))
        return kvn_err_set(err, -EINVAL, "release_l2: tree and pages must not be NULL");
    for (uint32_t i = 0; i < n_pages; i++)
        if (pages[i] >= t->cfg.l2_pages || !t->l2_resv[pages[i]])
            return kvn_err_set(err, -EINVAL, "release_l2: L2 page %u is not reserved", pages[i]);
    int rc = kvn_page_alloc_put(&t->l2a, pages, n_pages, err); /* catches duplicates */
    if (rc < 0)
        return rc;
    for (uint32_t i = 0; i < n_pages; i++)
        t->l2_resv[pages[i]] = 0;
    t->n_l2_resv -= n_pages;
    return 0;
}

int kvn_radix_insert_host(struct kvn_radix *t, uint64_t ns, const int32_t *tokens, size_t n_tokens,
                          const uint32_t *l2_pages, uint64_t now,
                          struct kvn_radix_insert_result *out, struct kvn_err *err)
{
    struct kvn_radix_insert_result resv, *res = &resv;
    if (!t || !out || !l2_pages)
        return kvn_err_set(err, -EINVAL, "insert_host: tree, l2_pages and res must not be NULL");
    if (t->cfg.l2_pages == 0)
        return kvn_err_set(err, -EINVAL, "insert_host: the tree has no L2 tier");
    int krc = check_key(t, ns, tokens, n_tokens, true, err, "insert_host");
    if (krc < 0)
        return krc;
    memset(res, 0, sizeof(*res));
    uint32_t np = (uint32_t)(n_tokens / t->ps);
    for (uint32_t i = 0; i < np; i++)
        if (l2_pages[i] >= t->cfg.l2_pages)
            return kvn_err_set(err, -EINVAL, "insert_host: L2 page %u >= l2_pages %u", l2_pages[i],
                               t->cfg.l2_pages);
    if (np == 0) {
        *out = resv;
        return 0;
    }
    struct rnode *root = ns_root(t, ns);
    if (!root && t->nsmap_n >= t->cfg.max_namespaces)
        return kvn_err_set(err, -ENOSPC, "insert_host: namespace limit %u reached",
                           t->cfg.max_namespaces);
    struct walk w = {0};
    uint32_t n_att = 0;
    if (root && walk_host(t, root, tokens, np, &w, &n_att) < 0)
        return kvn_err_set(err, -ENOMEM, "insert_host: out of memory");
    uint32_t stop = w.barrier ? w.pos : np;
    uint32_t new_pages = stop - w.pos;
    uint32_t adopt = w.missing + new_pages;
    const uint32_t *pages = l2_pages + w.prefix;
    /* every page to adopt must be reserved, and listed once (2 marks "seen") */
    for (uint32_t i = 0; i < adopt; i++) {
        if (t->l2_resv[pages[i]] != 1) {
            for (uint32_t k = 0; k < i; k++)
                t->l2_resv[pages[k]] = 1;
            return kvn_err_set(err, -EBUSY,
                               "insert_host: L2 page %u is not reserved by the caller (or "
                               "listed twice)",
                               pages[i]);
        }
        t->l2_resv[pages[i]] = 2;
    }
    for (uint32_t i = 0; i < adopt; i++)
        t->l2_resv[pages[i]] = 1;
    uint32_t bp[3] = {w.split ? w.split_at : 0, w.split ? w.split->n_pages - w.split_at : 0,
                      new_pages};
    void *blks[3];
    if (slab_reserve(t, 3) < 0 || cmap_reserve(t, 2) < 0 || ns_reserve(t) < 0 ||
        heap_reserve(t, 3) < 0 || reserve_scratch(t, 3) < 0 || prealloc_blocks(t, blks, bp, 3) < 0)
        return kvn_err_set(err, -ENOMEM, "insert_host: out of memory");
    /* ---- no failure below this line ---- */
    if (!root)
        root = ns_create(t, ns);
    struct rnode *parent = w.end ? w.end : root;
    if (w.split) {
        struct rnode *p = split_node(t, w.split, w.split_at, blks[0], blks[1]);
        if (n_att > 0 && t->scratch2[n_att - 1] == w.split)
            t->scratch2[n_att - 1] = p;
        parent = p;
    }
    for (uint32_t i = 0; i < adopt; i++)
        t->l2_resv[pages[i]] = 0;
    t->n_l2_resv -= adopt;
    uint32_t off = 0;
    for (uint32_t i = 0; i < n_att; i++) {
        struct rnode *c = t->scratch2[i];
        memcpy(n_l2(c), pages + off, (size_t)c->n_pages * 4);
        off += c->n_pages;
        c->flags |= F_L2;
        t->l2_node_pages += c->n_pages;
        refresh(t, c);
    }
    struct rnode *last = parent;
    if (new_pages > 0) {
        struct rnode *leaf = node_new(t);
        leaf->blk = blks[2];
        leaf->n_pages = new_pages;
        leaf->ns = ns;
        t->blk_bytes += blk_size(t, new_pages);
        memcpy(n_key(leaf), tokens + (size_t)w.pos * t->ps, (size_t)new_pages * t->ps * 4);
        memcpy(n_l2(leaf), pages + off, (size_t)new_pages * 4);
        kvn_page_hash_chain(last_digest(parent), n_key(leaf), (size_t)new_pages * t->ps, t->ps,
                            n_dig(leaf), n_hash(leaf), NULL);
        leaf->flags = F_L2;
        leaf->last_access = now;
        link_child(t, parent, leaf);
        t->n_nodes++;
        t->total_pages += new_pages;
        t->l2_node_pages += new_pages;
        refresh(t, leaf);
        refresh(t, parent);
        last = leaf;
    }
    /* announce, in prefix order: the first adopted node's parent is announced
     * (or the root), and publish_cpu continues down the chain */
    for (uint32_t i = 0; i < n_att; i++) {
        struct rnode *c = t->scratch2[i];
        if (!(c->flags & F_CPU_PUB) && (is_root(c->parent) || (c->parent->flags & F_CPU_PUB)))
            publish_cpu(t, c);
    }
    if (last != parent && !(last->flags & F_CPU_PUB) &&
        (is_root(parent) || (parent->flags & F_CPU_PUB)))
        publish_cpu(t, last);
    for (struct rnode *n = last; !is_root(n); n = n->parent)
        touch(t, n, now);
    res->prefix_tokens = w.prefix * t->ps;
    res->revived_tokens = w.missing * t->ps;
    res->new_tokens = new_pages * t->ps;
    res->inserted_tokens = stop * t->ps;
    res->last_node = is_root(last) ? 0 : last->id;
    *out = resv;
    return 0;
}

/* ---------------------------------------------------------------- locks */

static int lookup(const struct kvn_radix *t, uint64_t id, struct rnode **out, struct kvn_err *err,
                  const char *who)
{
    if (!t)
        return kvn_err_set(err, -EINVAL, "%s: tree is NULL", who);
    if (id == 0)
        return kvn_err_set(err, -EINVAL, "%s: node id 0 is not a node", who);
    *out = node_by_id(t, id);
    if (!*out)
        return kvn_err_set(err, -ENOENT, "%s: no node with id %#llx", who, (unsigned long long)id);
    return 0;
}

int kvn_radix_lock(struct kvn_radix *t, uint64_t id, struct kvn_err *err)
{
    struct rnode *n;
    int rc = lookup(t, id, &n, err, "lock");
    if (rc < 0)
        return rc;
    n->own_lock++;
    lock_path(t, n, +1);
    return 0;
}

int kvn_radix_unlock(struct kvn_radix *t, uint64_t id, struct kvn_err *err)
{
    struct rnode *n;
    int rc = lookup(t, id, &n, err, "unlock");
    if (rc < 0)
        return rc;
    if (n->own_lock == 0)
        return kvn_err_set(err, -EINVAL, "unlock: node %#llx holds no lock (double unlock?)",
                           (unsigned long long)id);
    n->own_lock--;
    lock_path(t, n, -1);
    return 0;
}

int kvn_radix_protect(struct kvn_radix *t, uint64_t id, struct kvn_err *err)
{
    struct rnode *n;
    int rc = lookup(t, id, &n, err, "protect");
    if (rc < 0)
        return rc;
    n->own_protect++;
    protect_path(t, n, +1);
    return 0;
}

int kvn_radix_unprotect(struct kvn_radix *t, uint64_t id, struct kvn_err *err)
{
    struct rnode *n;
    int rc = lookup(t, id, &n, err, "unprotect");
    if (rc < 0)
        return rc;
    if (n->own_protect == 0)
        return kvn_err_set(err, -EINVAL,
                           "unprotect: node %#llx holds no protection (double unprotect?)",
                           (unsigned long long)id);
    n->own_protect--;
    protect_path(t, n, -1);
    return 0;
}

/* ---------------------------------------------------------------- evict API */

int kvn_radix_evict_l1(struct kvn_radix *t, uint32_t n_pages, struct kvn_radix_evict_result *res,
                       struct kvn_err *err)
{
    if (!t || !res)
        return kvn_err_set(err, -EINVAL, "evict_l1: tree and res must not be NULL");
    memset(res, 0, sizeof(*res));
    return evict_l1_internal(t, n_pages, true, res, err);
}

int kvn_radix_evict_l2(struct kvn_radix *t, uint32_t n_pages, struct kvn_radix_evict_result *res,
                       struct kvn_err *err)
{
    if (!t || !res)
        return kvn_err_set(err, -EINVAL, "evict_l2: tree and res must not be NULL");
    memset(res, 0, sizeof(*res));
    return evict_l2_internal(t, n_pages, res);
}

/* ---------------------------------------------------------------- load back */

int kvn_radix_load_back(struct kvn_radix *t, uint64_t ns, const int32_t *tokens, size_t n_tokens,
                        const uint32_t *l1_slots, uint32_t n_slots, uint64_t now,
                        struct kvn_radix_job_result *out, struct kvn_err *err)
{
    struct kvn_radix_job_result resv, *res = &resv;
    if (!t || !out)
        return kvn_err_set(err, -EINVAL, "load_back: tree and res must not be NULL");
    int krc = check_key(t, ns, tokens, n_tokens, true, err, "load_back");
    if (krc < 0)
        return krc;
    memset(res, 0, sizeof(*res));
    uint32_t np = (uint32_t)(n_tokens / t->ps);
    struct rnode *root = ns_root(t, ns);
    if (!root || np == 0) {
        *out = resv;
        return 0;
    }
    /* limit to n_slots pages beyond the device prefix in explicit mode */
    struct walk w;
    uint32_t n_rev = 0;
    if (walk_insert(t, root, tokens, np, &w, &n_rev) < 0)
        return kvn_err_set(err, -ENOMEM, "load_back: out of memory");
    uint32_t want = w.missing;
    if (l1_slots && n_slots < want) {
        /* re-walk with a shorter key so the split lands after n_slots pages */
        np = w.prefix + n_slots;
        if (walk_insert(t, root, tokens, np, &w, &n_rev) < 0)
            return kvn_err_set(err, -ENOMEM, "load_back: out of memory");
        want = w.missing;
    }
    res->prefix_tokens = w.prefix * t->ps;
    if (want == 0) {
        *out = resv;
        return 0;
    }
    if (l1_slots) {
        int rc = check_slots(t, l1_slots, want, err, "load_back");
        if (rc < 0)
            return rc;
    }
    if (want > t->cfg.l1_pages)
        return kvn_err_set(err, -ENOSPC, "load_back: %u pages exceed l1_pages %u", want,
                           t->cfg.l1_pages);
    uint32_t bp[2] = {w.split ? w.split_at : 0, w.split ? w.split->n_pages - w.split_at : 0};
    void *blks[2];
    if (slab_reserve(t, 2) < 0 || cmap_reserve(t, 2) < 0 || heap_reserve(t, 2) < 0 ||
        reserve_scratch(t, 2) < 0 || prealloc_blocks(t, blks, bp, 2) < 0)
        return kvn_err_set(err, -ENOMEM, "load_back: out of memory");
    struct rjob *j = job_alloc(t, want);
    if (!j) {
        free(blks[0]);
        free(blks[1]);
        return kvn_err_set(err, -ENOMEM, "load_back: out of memory for a copy job");
    }
    int rc = 0;
    if (l1_slots) {
        rc = kvn_page_alloc_take(&t->l1a, l1_slots, want, err);
        if (rc == 0)
            memcpy(j->l1, l1_slots, (size_t)want * 4);
        else if (rc == -EBUSY)
            rc = kvn_err_set(err, -EBUSY,
                             "load_back: an L1 slot is already owned by the tree or listed twice");
    } else {
        struct rnode *guard = w.split ? w.split : w.end;
        uint32_t ev = 0;
        rc = auto_make_room(t, guard, want, &ev, err, "load_back");
        if (rc == 0)
            kvn_page_alloc_get(&t->l1a, want, j->l1, NULL);
    }
    if (rc < 0) {
        free(blks[0]);
        free(blks[1]);
        j->n_pages = 0;
        job_release(t, j);
        return rc;
    }
    /* the job's pairs, then submit, before the tree changes: a refusal undoes
     * only the slots */
    j->dir = KVN_COPY_L2_TO_L1;
    uint32_t off = 0;
    for (uint32_t i = 0; i < n_rev; i++) {
        struct rnode *c = t->scratch2[i];
        uint32_t k = c == w.split ? w.split_at : c->n_pages;
        memcpy(j->l2 + off, n_l2(c), (size_t)k * 4);
        off += k;
    }
    if (t->cfg.copy.submit) {
        struct kvn_copy_job cj = {.ack_id = j->ack_id,
                                  .dir = j->dir,
                                  .n_pages = want,
                                  .l1_slots = j->l1,
                                  .l2_pages = j->l2};
        rc = t->cfg.copy.submit(t->cfg.copy.ctx, &cj);
        if (rc < 0) {
            t->copy_submit_failures++;
            kvn_page_alloc_put(&t->l1a, j->l1, want, NULL);
            free(blks[0]);
            free(blks[1]);
            job_release(t, j);
            return kvn_err_set(err, rc, "load_back: copy submit refused job (%d)", rc);
        }
    }
    /* ---- no failure below this line ---- */
    if (w.split) {
        struct rnode *p = split_node(t, w.split, w.split_at, blks[0], blks[1]);
        if (n_rev > 0 && t->scratch2[n_rev - 1] == w.split)
            t->scratch2[n_rev - 1] = p;
        w.end = p;
    }
    off = 0;
    for (uint32_t i = 0; i < n_rev; i++) {
        struct rnode *c = t->scratch2[i];
        memcpy(n_l1(c), j->l1 + off, (size_t)c->n_pages * 4);
        off += c->n_pages;
        c->flags |= F_L1 | F_LOADING;
        t->l1_node_pages += c->n_pages;
        c->parent->n_l1_children++;
        touch(t, c, now);
        job_append(t, j, c);
        refresh(t, c->parent);
    }
    j->n_pages = want;
    t->pending_pages += want;
    res->ack_id = j->ack_id;
    res->n_pages = want;
    res->last_node = w.end ? w.end->id : 0;
    t->jobs_submitted++;
    *out = resv;
    return 0;
}

/* ---------------------------------------------------------------- backup, ack */

int kvn_radix_write_backup(struct kvn_radix *t, uint64_t id, struct kvn_radix_job_result *out,
                           struct kvn_err *err)
{
    struct rnode *n;
    struct kvn_radix_job_result resv, *res = &resv;
    if (!out)
        return kvn_err_set(err, -EINVAL, "write_backup: res is NULL");
    int rc = lookup(t, id, &n, err, "write_backup");
    if (rc < 0)
        return rc;
    if (t->cfg.l2_pages == 0)
        return kvn_err_set(err, -EINVAL, "write_backup: the tree has no L2 tier");
    memset(res, 0, sizeof(*res));
    uint32_t cnt = 0;
    for (struct rnode *a = n; !is_root(a); a = a->parent)
        if (in_l1(a) && !in_l2(a) && !a->pending_ack)
            cnt++;
    if (cnt == 0) {
        *out = resv;
        return 0;
    }
    if (grow_ptrs(&t->scratch2, &t->scratch2_cap, cnt) < 0)
        return kvn_err_set(err, -ENOMEM, "write_backup: out of memory");
    uint32_t i = cnt;
    for (struct rnode *a = n; !is_root(a); a = a->parent)
        if (in_l1(a) && !in_l2(a) && !a->pending_ack)
            t->scratch2[--i] = a;
    rc = queue_write(t, t->scratch2, cnt, false, &res->ack_id, &res->n_pages, err);
    if (rc == 0) {
        res->last_node = n->id;
        *out = resv;
    }
    return rc;
}

int kvn_radix_ack(struct kvn_radix *t, uint64_t ack_id, bool ok, struct kvn_err *err)
{
    if (!t)
        return kvn_err_set(err, -EINVAL, "ack: tree is NULL");
    if (ack_id == 0)
        return kvn_err_set(err, -EINVAL, "ack: ack id 0 is never issued");
    struct rjob *j = job_of(t, ack_id);
    if (!j)
        return kvn_err_set(err, -ENOENT, "ack: unknown or already completed ack id %#llx",
                           (unsigned long long)ack_id);
    if (j->orphan) {
        if (j->dir == KVN_COPY_L1_TO_L2)
            kvn_page_alloc_put(&t->l2a, j->l2, j->n_pages, NULL);
        else
            kvn_page_alloc_put(&t->l1a, j->l1, j->n_pages, NULL);
        job_release(t, j);
        return 0;
    }
    if (ok) {
        t->acks_ok++;
        job_ok(t, j);
    } else {
        t->acks_failed++;
        job_fail(t, j);
    }
    return 0;
}

/* ---------------------------------------------------------------- introspection */

int kvn_radix_stats(const struct kvn_radix *t, struct kvn_radix_stats *st, struct kvn_err *err)
{
    if (!t || !st)
        return kvn_err_set(err, -EINVAL, "stats: tree and st must not be NULL");
    memset(st, 0, sizeof(*st));
    st->page_size = t->ps;
    st->l1_capacity = kvn_page_alloc_capacity(&t->l1a);
    st->l1_used = kvn_page_alloc_used_count(&t->l1a);
    st->l1_free = kvn_page_alloc_free_count(&t->l1a);
    st->l1_evictable_pages = (uint32_t)t->evictable[0];
    st->l2_capacity = kvn_page_alloc_capacity(&t->l2a);
    st->l2_used = kvn_page_alloc_used_count(&t->l2a);
    st->l2_free = kvn_page_alloc_free_count(&t->l2a);
    st->l2_evictable_pages = (uint32_t)t->evictable[1];
    st->nodes = t->n_nodes;
    st->namespaces = t->n_roots;
    st->locked_nodes = t->locked_nodes;
    st->protected_nodes = t->protected_nodes;
    st->pending_jobs = t->pending_jobs;
    st->pending_pages = t->pending_pages;
    st->orphan_pages = t->orphan_pages;
    st->cached_tokens = t->total_pages * t->ps;
    st->l1_tokens = t->l1_node_pages * t->ps;
    st->l2_tokens = t->l2_node_pages * t->ps;
    uint64_t b = sizeof(*t);
    b += (uint64_t)t->n_chunks * SLAB_CHUNK * sizeof(struct rnode) +
         (uint64_t)t->chunks_cap * sizeof(void *);
    b += t->blk_bytes;
    b += t->cmap_cap * sizeof(struct centry) + t->nsmap_cap * sizeof(struct nsentry);
    b += ((uint64_t)t->heap[0].cap + t->heap[1].cap) * sizeof(struct hent);
    b += (uint64_t)t->jobs_cap * sizeof(struct rjob);
    for (uint32_t i = 0; i < t->jobs_cap; i++)
        b += (uint64_t)t->jobs[i].cap * 8;
    b += ((uint64_t)t->scratch_cap + t->scratch2_cap + t->stack_cap) * sizeof(void *) +
         (uint64_t)t->slotbuf_cap * 4;
    b += ((uint64_t)st->l1_capacity + st->l2_capacity) * 8 + st->l2_capacity;
    st->index_bytes = b;
    st->events = t->events;
    st->jobs_submitted = t->jobs_submitted;
    st->acks_ok = t->acks_ok;
    st->acks_failed = t->acks_failed;
    st->copy_submit_failures = t->copy_submit_failures;
    st->backups_skipped = t->backups_skipped;
    st->storage_backups = t->storage_backups;
    st->storage_failures = t->storage_failures;
    st->l2_reserved = t->n_l2_resv;
    return 0;
}

int kvn_radix_node_info(const struct kvn_radix *t, uint64_t id, struct kvn_radix_node_info *info,
                        struct kvn_err *err)
{
    struct rnode *n;
    if (!info)
        return kvn_err_set(err, -EINVAL, "node_info: info is NULL");
    int rc = lookup(t, id, &n, err, "node_info");
    if (rc < 0)
        return rc;
    memset(info, 0, sizeof(*info));
    info->id = n->id;
    info->parent_id = is_root(n->parent) ? 0 : n->parent->id;
    info->ns = n->ns;
    info->n_pages = n->n_pages;
    info->in_l1 = in_l1(n);
    info->in_l2 = in_l2(n);
    info->in_l3 = (n->flags & F_L3) != 0;
    info->loading = (n->flags & F_LOADING) != 0;
    info->pending_ack = n->pending_ack;
    info->lock_count = n->lock_ref;
    info->own_locks = n->own_lock;
    info->protect_count = n->host_ref;
    info->own_protects = n->own_protect;
    info->hit_count = n->hit_count;
    info->last_access_tick = n->last_access;
    info->n_children = n->n_children;
    info->tokens = n_key(n);
    info->hashes = n_hash(n);
    info->l1_slots = in_l1(n) ? n_l1(n) : NULL;
    info->l2_pages = in_l2(n) ? n_l2(n) : NULL;
    return 0;
}

/* ---------------------------------------------------------------- check */

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            rc = kvn_err_set(err, -EFAULT, __VA_ARGS__);                                           \
            goto out;                                                                              \
        }                                                                                          \
    } while (0)

int kvn_radix_check(const struct kvn_radix *t, struct kvn_err *err)
{
    if (!t)
        return kvn_err_set(err, -EINVAL, "check: tree is NULL");
    int rc = 0;
    uint8_t *own1 = calloc(t->cfg.l1_pages ? t->cfg.l1_pages : 1, 1);
    uint8_t *own2 = calloc(t->cfg.l2_pages ? t->cfg.l2_pages : 1, 1);
    if (!own1 || !own2) {
        free(own1);
        free(own2);
        return kvn_err_set(err, -ENOMEM, "check: out of memory");
    }
    uint64_t nodes = 0, roots = 0, pages = 0, p1 = 0, p2 = 0, locked = 0, prot = 0;
    uint64_t ev0 = 0, ev1 = 0, in_h0 = 0, in_h1 = 0;
    for (uint32_t c = 0; c < t->n_chunks; c++)
        for (uint32_t i = 0; i < SLAB_CHUNK; i++) {
            const struct rnode *n = &t->chunks[c][i];
            if (!n->id)
                continue;
            uint32_t nch = 0, nl1 = 0;
            uint64_t below_locks = 0, below_protects = 0;
            for (const struct rnode *k = n->first_child; k; k = k->next_sib) {
                CHECK(k->parent == n, "node %#llx: child with wrong parent",
                      (unsigned long long)n->id);
                nch++;
                if (in_l1(k))
                    nl1++;
                /* a child's path locks (all but its own job's lock) reach n */
                below_locks += k->lock_ref - (k->pending_ack ? 1u : 0u);
                below_protects += k->host_ref;
            }
            CHECK(nch == n->n_children && nl1 == n->n_l1_children,
                  "node %#llx: child counts %u/%u, list says %u/%u", (unsigned long long)n->id,
                  n->n_children, n->n_l1_children, nch, nl1);
            if (n->lock_ref)
                locked++;
            if (n->host_ref)
                prot++;
            if (is_root(n)) {
                roots++;
                CHECK(ns_root(t, n->ns) == n, "root of ns %llu not in the namespace map",
                      (unsigned long long)n->ns);
                continue;
            }
            nodes++;
            pages += n->n_pages;
            CHECK(n->n_pages > 0, "node %#llx: empty", (unsigned long long)n->id);
            CHECK(in_l1(n) || in_l2(n), "node %#llx: in neither L1 nor L2",
                  (unsigned long long)n->id);
            CHECK(!in_l1(n) || is_root(n->parent) || in_l1(n->parent),
                  "node %#llx: in L1 below a parent that is not", (unsigned long long)n->id);
            CHECK(!in_l1(n) || !(n->parent->flags & F_LOADING) ||
                      ((n->flags & F_LOADING) && n->pending_ack == n->parent->pending_ack),
                  "node %#llx: L1 child of a loading node outside its job",
                  (unsigned long long)n->id);
            CHECK(child_find(t, n->parent, n_key(n)) == n, "node %#llx: not found by child map",
                  (unsigned long long)n->id);
            CHECK(n->lock_ref >= n->own_lock && n->host_ref >= n->own_protect,
                  "node %#llx: own counts exceed totals", (unsigned long long)n->id);
            /* locks and protections are path sums: a split that copies them
             * wrongly, or a lost release, shows here */
            CHECK(n->lock_ref == n->own_lock + (n->pending_ack ? 1u : 0u) + below_locks,
                  "node %#llx: lock count %u != own %u + job %d + below %llu",
                  (unsigned long long)n->id, n->lock_ref, n->own_lock, n->pending_ack != 0,
                  (unsigned long long)below_locks);
            CHECK(n->host_ref == n->own_protect + below_protects,
                  "node %#llx: protect count %u != own %u + below %llu", (unsigned long long)n->id,
                  n->host_ref, n->own_protect, (unsigned long long)below_protects);
            if (in_l1(n)) {
                p1 += n->n_pages;
                for (uint32_t k = 0; k < n->n_pages; k++) {
                    uint32_t s = n_l1(n)[k];
                    CHECK(s < t->cfg.l1_pages && kvn_page_alloc_is_used(&t->l1a, s) && !own1[s],
                          "node %#llx: L1 slot %u not owned once", (unsigned long long)n->id, s);
                    own1[s] = 1;
                }
            }
            if (in_l2(n)) {
                p2 += n->n_pages;
                for (uint32_t k = 0; k < n->n_pages; k++) {
                    uint32_t s = n_l2(n)[k];
                    CHECK(s < t->cfg.l2_pages && kvn_page_alloc_is_used(&t->l2a, s) && !own2[s],
                          "node %#llx: L2 page %u not owned once", (unsigned long long)n->id, s);
                    own2[s] = 1;
                }
            }
            if (n->pending_ack) {
                const struct rjob *j = job_of(t, n->pending_ack);
                CHECK(j && !j->orphan, "node %#llx: pending on a dead job",
                      (unsigned long long)n->id);
                CHECK(n->lock_ref > 0, "node %#llx: pending but unlocked",
                      (unsigned long long)n->id);
                /* the node's state must say which copy is in flight: a load
                 * fragment that is not LOADING would be matched as L1 hits */
                CHECK((j->dir == KVN_COPY_L2_TO_L1) == ((n->flags & F_LOADING) != 0),
                      "node %#llx: pending on a %s job but %sloading", (unsigned long long)n->id,
                      j->dir == KVN_COPY_L2_TO_L1 ? "load" : "write",
                      (n->flags & F_LOADING) ? "" : "not ");
            }
            CHECK(!(n->flags & F_LOADING) || (n->pending_ack && in_l1(n) && in_l2(n)),
                  "node %#llx: loading without a pending load into L1 from L2",
                  (unsigned long long)n->id);
            CHECK(!(n->flags & F_DEMOTE) || pending_write(n),
                  "node %#llx: demotion scheduled without a pending write",
                  (unsigned long long)n->id);
            CHECK(in_l1(n) || (n->flags & F_CPU_PUB),
                  "node %#llx: L2-only but not announced on CPU_PINNED", (unsigned long long)n->id);
            if (l2_valid(n) && !(n->flags & F_CPU_PUB)) {
                /* waiting: some ancestor's write is pending, through unannounced copies */
                const struct rnode *a = n->parent;
                while (!is_root(a) && in_l2(a) && !(a->flags & F_CPU_PUB) && !pending_write(a))
                    a = a->parent;
                CHECK(!is_root(a) && pending_write(a), "node %#llx: L2 copy can never be announced",
                      (unsigned long long)n->id);
            }
            if ((n->flags & F_CPU_PUB) && !is_root(n->parent))
                CHECK(n->parent->flags & F_CPU_PUB,
                      "node %#llx: published on CPU below an unpublished parent",
                      (unsigned long long)n->id);
            bool w0 = l1_candidate(n), w1 = l2_candidate(n);
            CHECK(w0 == (n->hpos[0] >= 0) && w1 == (n->hpos[1] >= 0),
                  "node %#llx: heap membership %d/%d, candidacy %d/%d", (unsigned long long)n->id,
                  n->hpos[0] >= 0, n->hpos[1] >= 0, w0, w1);
            if (w0) {
                in_h0++;
                const struct hent *e = &t->heap[0].a[n->hpos[0]];
                CHECK(e->n == n && e->tick <= n->last_access && e->hit <= n->hit_count,
                      "heap0 entry of node %#llx wrong", (unsigned long long)n->id);
                if (l1_sync_freeable(t, n))
                    ev0 += n->n_pages;
            }
            if (w1) {
                in_h1++;
                const struct hent *e = &t->heap[1].a[n->hpos[1]];
                CHECK(e->n == n && e->tick <= n->last_access && e->hit <= n->hit_count,
                      "heap1 entry of node %#llx wrong", (unsigned long long)n->id);
                ev1 += n->n_pages;
            }
        }
    for (uint32_t i = 0; i < t->jobs_cap; i++) {
        const struct rjob *j = &t->jobs[i];
        if (!j->ack_id)
            continue;
        uint32_t cnt = 0;
        const struct rnode *prev = NULL;
        for (const struct rnode *n = j->head; n; prev = n, n = n->pend_next) {
            CHECK(n->pending_ack == j->ack_id, "job %#llx: fragment of another job",
                  (unsigned long long)j->ack_id);
            CHECK(n->pend_prev == prev, "job %#llx: fragment list links broken",
                  (unsigned long long)j->ack_id);
            /* fragments in prefix order hold exactly the job's pairs */
            CHECK(cnt + (uint64_t)n->n_pages <= j->n_pages &&
                      memcmp(n_l1(n), j->l1 + cnt, (size_t)n->n_pages * 4) == 0 &&
                      memcmp(n_l2(n), j->l2 + cnt, (size_t)n->n_pages * 4) == 0,
                  "job %#llx: fragment %#llx does not hold the job's pages %u..%u",
                  (unsigned long long)j->ack_id, (unsigned long long)n->id, cnt, cnt + n->n_pages);
            cnt += n->n_pages;
        }
        CHECK(j->tail == prev, "job %#llx: tail is not the last fragment",
              (unsigned long long)j->ack_id);
        if (j->orphan) {
            for (uint32_t k = 0; k < j->n_pages; k++) {
                uint32_t s = j->dir == KVN_COPY_L1_TO_L2 ? j->l2[k] : j->l1[k];
                uint8_t *own = j->dir == KVN_COPY_L1_TO_L2 ? own2 : own1;
                CHECK(!own[s], "orphan job page %u owned twice", s);
                own[s] = 1;
            }
        } else {
            CHECK(cnt == j->n_pages, "job %#llx: fragments hold %u pages, job %u",
                  (unsigned long long)j->ack_id, cnt, j->n_pages);
        }
    }
    {
        uint32_t nr = 0;
        for (uint32_t p = 0; p < t->cfg.l2_pages; p++) {
            if (!t->l2_resv[p])
                continue;
            nr++;
            CHECK(t->l2_resv[p] == 1 && !own2[p] && kvn_page_alloc_is_used(&t->l2a, p),
                  "reserved L2 page %u owned elsewhere or free", p);
            own2[p] = 1;
        }
        CHECK(nr == t->n_l2_resv, "%u L2 pages marked reserved, counter %u", nr, t->n_l2_resv);
    }
    {
        uint64_t u1 = 0, u2 = 0;
        for (uint32_t s = 0; s < t->cfg.l1_pages; s++)
            u1 += own1[s];
        for (uint32_t s = 0; s < t->cfg.l2_pages; s++)
            u2 += own2[s];
        CHECK(u1 == kvn_page_alloc_used_count(&t->l1a), "L1: %llu owned, allocator says %u used",
              (unsigned long long)u1, kvn_page_alloc_used_count(&t->l1a));
        CHECK(u2 == kvn_page_alloc_used_count(&t->l2a), "L2: %llu owned, allocator says %u used",
              (unsigned long long)u2, kvn_page_alloc_used_count(&t->l2a));
    }
    CHECK(nodes == t->n_nodes && roots == t->n_roots, "node counts %llu/%llu vs %llu/%llu",
          (unsigned long long)nodes, (unsigned long long)roots, (unsigned long long)t->n_nodes,
          (unsigned long long)t->n_roots);
    CHECK(pages == t->total_pages && p1 == t->l1_node_pages && p2 == t->l2_node_pages,
          "page counters disagree with the nodes");
    CHECK(locked == t->locked_nodes && prot == t->protected_nodes,
          "locked/protected counters %llu/%llu vs %llu/%llu", (unsigned long long)locked,
          (unsigned long long)prot, (unsigned long long)t->locked_nodes,
          (unsigned long long)t->protected_nodes);
    CHECK(in_h0 == t->heap[0].n && in_h1 == t->heap[1].n, "heap sizes disagree");
    CHECK(ev0 == t->evictable[0] && ev1 == t->evictable[1],
          "evictable counters %llu/%llu vs %llu/%llu", (unsigned long long)ev0,
          (unsigned long long)ev1, (unsigned long long)t->evictable[0],
          (unsigned long long)t->evictable[1]);
    CHECK(t->cmap_n == nodes, "child map holds %zu entries for %llu nodes", t->cmap_n,
          (unsigned long long)nodes);
    for (int w = 0; w < 2; w++)
        for (uint32_t i = 1; i < t->heap[w].n; i++)
            CHECK(!hent_less(t, &t->heap[w].a[i], &t->heap[w].a[(i - 1) / 2]),
                  "heap %d order broken at %u", w, i);
out:
    free(own1);
    free(own2);
    return rc;
}
