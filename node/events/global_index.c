/*
 * global_index.c - per (peer, medium) sets of block hashes; see global_index.h.
 *
 * A set is a power-of-two array of uint64 keys with linear probing.  Key 0 marks an empty
 * slot, so the hash 0 is kept aside in a flag.  Deletion shifts later members of the probe
 * run back (no tombstones), so lookups never slow down with churn.
 */
#include "node/events/global_index.h"

#include <stdlib.h>
#include <string.h>

#include "cache/page_hash.h"

#define HSET_MIN_CAP 16u

struct hset {
    uint64_t *keys;
    uint64_t mask;  /* cap - 1, or 0 when keys == NULL */
    uint64_t count; /* members, including the zero hash */
    bool has_zero;
};

struct peer {
    struct hset set[KVN_GINDEX_MEDIA];
    struct kvn_gindex_peer_stats st;
    uint32_t active_pos; /* index in g->active when active */
};

struct kvn_gindex {
    uint32_t max_peers;
    uint32_t max_blocks;
    uint64_t seed;
    struct peer *peers;
    uint32_t *active; /* ids of active peers, compact */
    uint32_t n_active;
};

/* splitmix64 finalizer: peers choose the hashes, so do not trust them to be uniform. */
static inline uint64_t mix(uint64_t x, uint64_t seed)
{
    x ^= seed;
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static bool hset_contains(const struct hset *s, uint64_t k, uint64_t seed)
{
    if (k == 0)
        return s->has_zero;
    if (!s->keys)
        return false;
    for (uint64_t i = mix(k, seed) & s->mask;; i = (i + 1) & s->mask) {
        if (s->keys[i] == k)
            return true;
        if (s->keys[i] == 0)
            return false;
    }
}

/* Places k (known absent, nonzero) in a table with room. */
static void hset_place(uint64_t *keys, uint64_t mask, uint64_t k, uint64_t seed)
{
    uint64_t i = mix(k, seed) & mask;
    while (keys[i])
        i = (i + 1) & mask;
    keys[i] = k;
}

/* Makes room for `more` further members at load <= 1/2.  Only allocation can fail. */
static int hset_reserve(struct hset *s, uint64_t more, uint64_t seed)
{
    uint64_t want = s->count + more;
    uint64_t cap = s->keys ? s->mask + 1 : 0;
    if (want * 2 <= cap)
        return 0;
    uint64_t ncap = cap ? cap : HSET_MIN_CAP;
    while (want * 2 > ncap)
        ncap *= 2;
    uint64_t *nk = calloc(ncap, sizeof(*nk));
    if (!nk)
        return -ENOMEM;
    for (uint64_t i = 0; i < cap; i++)
        if (s->keys[i])
            hset_place(nk, ncap - 1, s->keys[i], seed);
    free(s->keys);
    s->keys = nk;
    s->mask = ncap - 1;
    return 0;
}

/* Adds k; the caller reserved room.  Returns true when k was new. */
static bool hset_add(struct hset *s, uint64_t k, uint64_t seed)
{
    if (k == 0) {
        if (s->has_zero)
            return false;
        s->has_zero = true;
        s->count++;
        return true;
    }
    uint64_t i = mix(k, seed) & s->mask;
    for (; s->keys[i]; i = (i + 1) & s->mask)
        if (s->keys[i] == k)
            return false;
    s->keys[i] = k;
    s->count++;
    return true;
}

static bool hset_remove(struct hset *s, uint64_t k, uint64_t seed)
{
    if (k == 0) {
        if (!s->has_zero)
            return false;
        s->has_zero = false;
        s->count--;
        return true;
    }
    if (!s->keys)
        return false;
    uint64_t i = mix(k, seed) & s->mask;
    for (; s->keys[i] != k; i = (i + 1) & s->mask)
        if (s->keys[i] == 0)
            return false;
    /* Backward shift: pull later run members whose home is not in (i, j] into the hole. */
    uint64_t j = i;
    for (;;) {
        j = (j + 1) & s->mask;
        if (s->keys[j] == 0)
            break;
        uint64_t home = mix(s->keys[j], seed) & s->mask;
        bool stays = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (!stays) {
            s->keys[i] = s->keys[j];
            i = j;
        }
    }
    s->keys[i] = 0;
    s->count--;
    return true;
}

static void hset_clear(struct hset *s)
{
    free(s->keys);
    memset(s, 0, sizeof(*s));
}

int kvn_gindex_create(const struct kvn_gindex_config *cfg, struct kvn_gindex **out,
                      struct kvn_err *err)
{
    if (!out)
        return kvn_err_set(err, -EINVAL, "gindex create: NULL out");
    struct kvn_gindex_config c = {0};
    if (cfg)
        c = *cfg;
    if (c.max_peers > KVN_GINDEX_LIMIT_MAX_PEERS)
        return kvn_err_set(err, -EINVAL, "gindex create: max_peers %u > %u", c.max_peers,
                           KVN_GINDEX_LIMIT_MAX_PEERS);
    if (!c.max_peers)
        c.max_peers = KVN_GINDEX_DEFAULT_MAX_PEERS;
    if (!c.max_blocks_per_peer)
        c.max_blocks_per_peer = KVN_GINDEX_DEFAULT_MAX_BLOCKS;
    struct kvn_gindex *g = calloc(1, sizeof(*g));
    if (g) {
        g->peers = calloc(c.max_peers, sizeof(*g->peers));
        g->active = calloc(c.max_peers, sizeof(*g->active));
    }
    if (!g || !g->peers || !g->active) {
        if (g) {
            free(g->peers);
            free(g->active);
        }
        free(g);
        return kvn_err_set(err, -ENOMEM, "gindex create: out of memory for %u peers", c.max_peers);
    }
    g->max_peers = c.max_peers;
    g->max_blocks = c.max_blocks_per_peer;
    g->seed = c.seed;
    *out = g;
    return 0;
}

void kvn_gindex_destroy(struct kvn_gindex *g)
{
    if (!g)
        return;
    for (uint32_t p = 0; p < g->max_peers; p++)
        for (int m = 0; m < KVN_GINDEX_MEDIA; m++)
            hset_clear(&g->peers[p].set[m]);
    free(g->peers);
    free(g->active);
    free(g);
}

static int check_peer(const struct kvn_gindex *g, uint32_t peer, struct kvn_err *err)
{
    if (!g)
        return kvn_err_set(err, -EINVAL, "gindex: NULL index");
    if (peer >= g->max_peers)
        return kvn_err_set(err, -EINVAL, "gindex: peer %u out of range (max_peers %u)", peer,
                           g->max_peers);
    return 0;
}

static void activate(struct kvn_gindex *g, uint32_t peer)
{
    struct peer *p = &g->peers[peer];
    if (p->st.active)
        return;
    p->st.active = true;
    p->active_pos = g->n_active;
    g->active[g->n_active++] = peer;
}

int kvn_gindex_peer_add(struct kvn_gindex *g, uint32_t peer, struct kvn_err *err)
{
    int rc = check_peer(g, peer, err);
    if (rc < 0)
        return rc;
    activate(g, peer);
    return 0;
}

static void clear_peer_sets(struct peer *p)
{
    for (int m = 0; m < KVN_GINDEX_MEDIA; m++) {
        hset_clear(&p->set[m]);
        p->st.blocks[m] = 0;
    }
}

int kvn_gindex_drop_peer(struct kvn_gindex *g, uint32_t peer, struct kvn_err *err)
{
    int rc = check_peer(g, peer, err);
    if (rc < 0)
        return rc;
    struct peer *p = &g->peers[peer];
    if (!p->st.active)
        return 0;
    clear_peer_sets(p);
    /* Swap-remove from the compact active list. */
    uint32_t last = g->active[--g->n_active];
    g->active[p->active_pos] = last;
    g->peers[last].active_pos = p->active_pos;
    memset(&p->st, 0, sizeof(p->st));
    return 0;
}

static bool medium_ok(enum kvn_medium m)
{
    return m == KVN_MEDIUM_GPU || m == KVN_MEDIUM_CPU_PINNED || m == KVN_MEDIUM_DISK;
}

int kvn_gindex_apply(struct kvn_gindex *g, uint32_t peer, const struct kvn_kv_event *ev,
                     struct kvn_err *err)
{
    int rc = check_peer(g, peer, err);
    if (rc < 0)
        return rc;
    if (!ev)
        return kvn_err_set(err, -EINVAL, "gindex apply: NULL event");
    if (ev->type != KVN_EV_BLOCK_STORED && ev->type != KVN_EV_BLOCK_REMOVED &&
        ev->type != KVN_EV_ALL_BLOCKS_CLEARED)
        return kvn_err_set(err, -EINVAL, "gindex apply: unknown event type %d", (int)ev->type);
    if (ev->type != KVN_EV_ALL_BLOCKS_CLEARED) {
        if (!medium_ok(ev->medium))
            return kvn_err_set(err, -EINVAL, "gindex apply: unknown medium %d", (int)ev->medium);
        if (ev->n_hashes && !ev->hashes)
            return kvn_err_set(err, -EINVAL, "gindex apply: hashes NULL with n_hashes %u",
                               ev->n_hashes);
    }
    struct peer *p = &g->peers[peer];
    switch (ev->type) {
    case KVN_EV_BLOCK_STORED: {
        struct hset *s = &p->set[ev->medium];
        /* Count what is new first, so that a refusal changes nothing. */
        uint64_t fresh = 0;
        for (uint32_t i = 0; i < ev->n_hashes; i++)
            fresh += !hset_contains(s, (uint64_t)ev->hashes[i], g->seed);
        if (s->count + fresh > g->max_blocks) {
            p->st.refused++;
            return kvn_err_set(err, -ENOSPC, "gindex: peer %u %s would hold %llu > %u blocks", peer,
                               kvn_medium_name(ev->medium), (unsigned long long)(s->count + fresh),
                               g->max_blocks);
        }
        if (hset_reserve(s, fresh, g->seed) < 0)
            return kvn_err_set(err, -ENOMEM, "gindex: cannot grow peer %u %s set", peer,
                               kvn_medium_name(ev->medium));
        for (uint32_t i = 0; i < ev->n_hashes; i++)
            p->st.stored += hset_add(s, (uint64_t)ev->hashes[i], g->seed);
        p->st.blocks[ev->medium] = s->count;
        break;
    }
    case KVN_EV_BLOCK_REMOVED: {
        struct hset *s = &p->set[ev->medium];
        for (uint32_t i = 0; i < ev->n_hashes; i++) {
            if (hset_remove(s, (uint64_t)ev->hashes[i], g->seed))
                p->st.removed++;
            else
                p->st.remove_missing++;
        }
        p->st.blocks[ev->medium] = s->count;
        break;
    }
    case KVN_EV_ALL_BLOCKS_CLEARED:
        clear_peer_sets(p);
        p->st.cleared++;
        break;
    }
    p->st.events++;
    activate(g, peer);
    return 0;
}

bool kvn_gindex_contains(const struct kvn_gindex *g, uint32_t peer, enum kvn_medium medium,
                         int64_t hash)
{
    if (!g || peer >= g->max_peers || !medium_ok(medium))
        return false;
    return hset_contains(&g->peers[peer].set[medium], (uint64_t)hash, g->seed);
}

static uint32_t run_length(const struct kvn_gindex *g, const struct peer *p, const int64_t *hashes,
                           uint32_t n, uint32_t mask)
{
    uint32_t i = 0;
    for (; i < n; i++) {
        bool held = false;
        for (int m = 0; m < KVN_GINDEX_MEDIA && !held; m++)
            held = (mask & KVN_GINDEX_MEDIUM_BIT(m)) &&
                   hset_contains(&p->set[m], (uint64_t)hashes[i], g->seed);
        if (!held)
            break;
    }
    return i;
}

static int check_query(const int64_t *hashes, uint32_t n, uint32_t mask, struct kvn_err *err)
{
    if (n && !hashes)
        return kvn_err_set(err, -EINVAL, "gindex query: hashes NULL with n %u", n);
    if (mask == 0 || (mask & ~KVN_GINDEX_ANY_MEDIUM))
        return kvn_err_set(err, -EINVAL, "gindex query: medium mask 0x%x invalid", mask);
    return 0;
}

int kvn_gindex_peer_prefix(const struct kvn_gindex *g, uint32_t peer, const int64_t *hashes,
                           uint32_t n, uint32_t medium_mask, uint32_t *pages, struct kvn_err *err)
{
    int rc = check_peer(g, peer, err);
    if (rc < 0)
        return rc;
    if (!pages)
        return kvn_err_set(err, -EINVAL, "gindex peer_prefix: NULL pages");
    rc = check_query(hashes, n, medium_mask, err);
    if (rc < 0)
        return rc;
    const struct peer *p = &g->peers[peer];
    *pages = p->st.active ? run_length(g, p, hashes, n, medium_mask) : 0;
    return 0;
}

int kvn_gindex_best_prefix(const struct kvn_gindex *g, const int64_t *hashes, uint32_t n,
                           uint32_t medium_mask, uint32_t exclude_peer,
                           struct kvn_gindex_match *out, struct kvn_err *err)
{
    if (!g || !out)
        return kvn_err_set(err, -EINVAL, "gindex best_prefix: NULL argument");
    int rc = check_query(hashes, n, medium_mask, err);
    if (rc < 0)
        return rc;
    struct kvn_gindex_match best = {.found = false, .peer = 0, .pages = 0};
    for (uint32_t a = 0; a < g->n_active; a++) {
        uint32_t id = g->active[a];
        if (id == exclude_peer)
            continue;
        uint32_t len = run_length(g, &g->peers[id], hashes, n, medium_mask);
        if (len == 0)
            continue;
        if (!best.found || len > best.pages || (len == best.pages && id < best.peer)) {
            best.found = true;
            best.peer = id;
            best.pages = len;
        }
    }
    *out = best;
    return 0;
}

int kvn_gindex_best_prefix_tokens(const struct kvn_gindex *g, const int32_t *tokens,
                                  size_t n_tokens, uint32_t page_size, int64_t *hash_buf,
                                  uint32_t hash_cap, uint32_t medium_mask, uint32_t exclude_peer,
                                  struct kvn_gindex_match *out, uint32_t *n_pages,
                                  struct kvn_err *err)
{
    if (!g || !out)
        return kvn_err_set(err, -EINVAL, "gindex best_prefix_tokens: NULL argument");
    if (page_size == 0)
        return kvn_err_set(err, -EINVAL, "gindex best_prefix_tokens: page_size 0");
    if (n_tokens && !tokens)
        return kvn_err_set(err, -EINVAL, "gindex best_prefix_tokens: tokens NULL with n %zu",
                           n_tokens);
    size_t pages = n_tokens / page_size;
    if (pages > hash_cap)
        return kvn_err_set(err, -ENOSPC, "gindex best_prefix_tokens: %zu pages, hash_buf holds %u",
                           pages, hash_cap);
    if (pages && !hash_buf)
        return kvn_err_set(err, -EINVAL, "gindex best_prefix_tokens: NULL hash_buf");
    int rc = check_query(hash_buf, (uint32_t)pages, medium_mask, err);
    if (rc < 0)
        return rc;
    if (pages) {
        long got =
            kvn_page_hash_chain(NULL, tokens, pages * page_size, page_size, NULL, hash_buf, err);
        if (got < 0)
            return (int)got;
    }
    if (n_pages)
        *n_pages = (uint32_t)pages;
    return kvn_gindex_best_prefix(g, hash_buf, (uint32_t)pages, medium_mask, exclude_peer, out,
                                  err);
}

int kvn_gindex_peer_stats(const struct kvn_gindex *g, uint32_t peer,
                          struct kvn_gindex_peer_stats *st, struct kvn_err *err)
{
    int rc = check_peer(g, peer, err);
    if (rc < 0)
        return rc;
    if (!st)
        return kvn_err_set(err, -EINVAL, "gindex peer_stats: NULL stats");
    *st = g->peers[peer].st;
    return 0;
}

uint32_t kvn_gindex_active_peers(const struct kvn_gindex *g)
{
    return g ? g->n_active : 0;
}

int kvn_gindex_foreach(const struct kvn_gindex *g, uint32_t peer, enum kvn_medium medium,
                       int (*fn)(void *ctx, int64_t hash), void *ctx, struct kvn_err *err)
{
    int rc = check_peer(g, peer, err);
    if (rc < 0)
        return rc;
    if (!fn)
        return kvn_err_set(err, -EINVAL, "gindex foreach: NULL fn");
    if (!medium_ok(medium))
        return kvn_err_set(err, -EINVAL, "gindex foreach: unknown medium %d", (int)medium);
    const struct hset *s = &g->peers[peer].set[medium];
    if (s->has_zero && (rc = fn(ctx, 0)) < 0)
        return rc;
    if (!s->keys)
        return 0;
    for (uint64_t i = 0; i <= s->mask; i++)
        if (s->keys[i] && (rc = fn(ctx, (int64_t)s->keys[i])) < 0)
            return rc;
    return 0;
}
