/*
 * global_index.h - which peer holds which KV blocks, learned from the peers' event streams.
 *
 * Every node subscribes to its peers' KV events (event_sub.h) and applies them here, one
 * set of block hashes per (peer, medium):
 *
 *     peer 0  GPU        { h1, h2, h7 }
 *             CPU_PINNED { h1, h2 }
 *             DISK       { }
 *     peer 3  GPU        { h1, h9 }
 *     ...
 *
 * Page hashes are chained (each page's hash covers the previous page's digest, see
 * DESIGN.md "Page hash"), so a hash names a whole prefix, and "how many leading pages of a
 * query does peer p hold" is answered by looking the query's page hashes up one by one until
 * the first miss: no tree is needed.  The caller computes the query's page hashes with the
 * cache's page-hash function (cache/page_hash.h) over the query tokens and the cluster's page
 * size (kvn_gindex_best_prefix_tokens does exactly that for callers without hashes).
 *
 * Sets are open-addressing tables (linear probing, backward-shift deletion, keys mixed with
 * a seed, load factor <= 1/2): insert, remove and lookup are O(1) expected; a table doubles
 * when half full (amortized O(1)).  Memory per block is 16 bytes at worst.  Each set is
 * bounded by max_blocks_per_peer: a BlockStored that would exceed it is refused whole
 * (-ENOSPC) and counted.
 *
 * Peers are small integers 0 .. max_peers-1 chosen by the caller (the daemon numbers its
 * peers); a peer becomes active with its first applied event (or kvn_gindex_peer_add) and
 * stops being active with kvn_gindex_drop_peer.
 *
 * Semantics of events: BlockStored adds its hashes to (peer, medium) (re-adding is a no-op);
 * BlockRemoved removes them (absent hashes are counted, not an error: a peer may announce
 * removal of blocks we learned before a replay gap); AllBlocksCleared empties every medium of
 * that peer.
 *
 * Thread rules: one thread (the daemon's event loop) owns an index; no locks inside.
 */
#ifndef KVN_GLOBAL_INDEX_H
#define KVN_GLOBAL_INDEX_H

#include <stdbool.h>
#include <stdint.h>

#include "cache/kv_event.h"
#include "util/kvn_err.h"

#define KVN_GINDEX_MEDIA         3
#define KVN_GINDEX_MEDIUM_BIT(m) (1u << (m))
#define KVN_GINDEX_ANY_MEDIUM    0x7u

#define KVN_GINDEX_DEFAULT_MAX_PEERS  64u
#define KVN_GINDEX_LIMIT_MAX_PEERS    4096u
#define KVN_GINDEX_DEFAULT_MAX_BLOCKS (1u << 24)

struct kvn_gindex;

struct kvn_gindex_config {
    uint32_t max_peers;           /* peer ids 0..max_peers-1; 0 = default (64), <= 4096 */
    uint32_t max_blocks_per_peer; /* per (peer, medium); 0 = default (16 Mi) */
    uint64_t seed;                /* hash mixing seed (any value; daemon may randomize) */
};

struct kvn_gindex_peer_stats {
    bool active;
    uint64_t blocks[KVN_GINDEX_MEDIA]; /* current set sizes per medium */
    uint64_t events;                   /* events applied */
    uint64_t stored, removed;          /* hashes added / removed */
    uint64_t remove_missing;           /* BlockRemoved hashes we did not hold */
    uint64_t cleared;                  /* AllBlocksCleared applied */
    uint64_t refused;                  /* BlockStored refused for capacity (-ENOSPC) */
};

struct kvn_gindex_match {
    bool found;     /* false: no active peer holds even the first page */
    uint32_t peer;  /* the best peer (lowest id among equals) */
    uint32_t pages; /* leading query pages that peer holds */
};

/*
 * Creates an empty index.  cfg may be NULL (defaults).  Errors: -EINVAL (NULL out,
 * max_peers > 4096), -ENOMEM.  *out is set only on success.
 */
int kvn_gindex_create(const struct kvn_gindex_config *cfg, struct kvn_gindex **out,
                      struct kvn_err *err);

/* Frees the index and all its sets.  NULL is ignored. */
void kvn_gindex_destroy(struct kvn_gindex *g);

/*
 * Marks peer active (with no blocks if it was not).  Errors: -EINVAL (NULL g, peer out of
 * range).  Idempotent.
 */
int kvn_gindex_peer_add(struct kvn_gindex *g, uint32_t peer, struct kvn_err *err);

/*
 * Applies one event of peer (activating the peer).  ev's arrays are read during the call
 * only.  Errors: -EINVAL (NULL arguments, peer out of range, unknown type or medium, hashes
 * NULL with n_hashes > 0), -ENOSPC (a BlockStored would put more than max_blocks_per_peer
 * hashes in the set: refused whole, counted), -ENOMEM.  A refused event changes no set.
 */
int kvn_gindex_apply(struct kvn_gindex *g, uint32_t peer, const struct kvn_kv_event *ev,
                     struct kvn_err *err);

/*
 * Forgets everything peer holds and deactivates it (peer dead, or rejoining with a fresh
 * replay).  Its counters restart at zero.  Errors: -EINVAL (NULL g, peer out of range).
 * Dropping an inactive peer is a no-op.
 */
int kvn_gindex_drop_peer(struct kvn_gindex *g, uint32_t peer, struct kvn_err *err);

/* True when peer holds hash on medium (false for any invalid argument). */
bool kvn_gindex_contains(const struct kvn_gindex *g, uint32_t peer, enum kvn_medium medium,
                         int64_t hash);

/*
 * Leading pages of the query (page hashes hashes[0..n-1], in order) that peer holds on any
 * medium in medium_mask (KVN_GINDEX_MEDIUM_BIT(m) bits, KVN_GINDEX_ANY_MEDIUM).  An inactive
 * peer holds 0.  Errors: -EINVAL (NULL g or pages, hashes NULL with n > 0, peer out of range,
 * mask 0 or with unknown bits).
 */
int kvn_gindex_peer_prefix(const struct kvn_gindex *g, uint32_t peer, const int64_t *hashes,
                           uint32_t n, uint32_t medium_mask, uint32_t *pages, struct kvn_err *err);

/*
 * The active peer holding the longest leading run of the query, skipping exclude_peer
 * (pass the local node's own id, or UINT32_MAX to consider all).  Ties go to the lowest
 * peer id.  Cost: O(active peers x matched pages) lookups.  Errors as peer_prefix (NULL out).
 */
int kvn_gindex_best_prefix(const struct kvn_gindex *g, const int64_t *hashes, uint32_t n,
                           uint32_t medium_mask, uint32_t exclude_peer,
                           struct kvn_gindex_match *out, struct kvn_err *err);

/*
 * best_prefix for a token query: hashes the whole pages of tokens[0..n_tokens) with the
 * cache's page-hash chain (cache/page_hash.h, SHA-256, page_size tokens per page, a partial
 * tail ignored) into the caller's hash_buf (no allocation), then answers as best_prefix.
 * *n_pages (may be NULL) receives the number of whole pages hashed.  Prefer best_prefix when
 * the hashes are at hand (the local radix match computes them anyway).
 * Errors: those of best_prefix, -EINVAL (page_size 0, tokens or hash_buf NULL when needed),
 * -ENOSPC (hash_cap smaller than the page count; nothing written to out).
 */
int kvn_gindex_best_prefix_tokens(const struct kvn_gindex *g, const int32_t *tokens,
                                  size_t n_tokens, uint32_t page_size, int64_t *hash_buf,
                                  uint32_t hash_cap, uint32_t medium_mask, uint32_t exclude_peer,
                                  struct kvn_gindex_match *out, uint32_t *n_pages,
                                  struct kvn_err *err);

/*
 * Counters of one peer (all zero and active == false for an unknown or dropped peer).
 * Errors: -EINVAL (NULL arguments, peer out of range).
 */
int kvn_gindex_peer_stats(const struct kvn_gindex *g, uint32_t peer,
                          struct kvn_gindex_peer_stats *st, struct kvn_err *err);

/* Number of active peers (0 for NULL). */
uint32_t kvn_gindex_active_peers(const struct kvn_gindex *g);

/*
 * Calls fn(ctx, hash) for every hash of (peer, medium), in no particular order; fn must not
 * modify the index.  A negative return from fn stops the walk and is returned.  O(table
 * size): for tests, dumps and convergence checks, not for the data path.
 * Errors: -EINVAL (NULL g or fn, peer out of range, unknown medium).
 */
int kvn_gindex_foreach(const struct kvn_gindex *g, uint32_t peer, enum kvn_medium medium,
                       int (*fn)(void *ctx, int64_t hash), void *ctx, struct kvn_err *err);

#endif /* KVN_GLOBAL_INDEX_H */
