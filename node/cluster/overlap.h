/*
 * overlap.h - "who holds the longest prefix of these tokens?" for match and fetch: the local
 * tree's answer next to the global index's (node/events/global_index.h).
 *
 *   tokens ──page-hash chain──► h0 h1 h2 h3 h4 ...
 *   local  (radix match):        [ L1/L2 hit  ]                  local_pages = 2
 *   peer 1 CPU_PINNED:           [ h0 h1 h2 h3 ]                  4 pages
 *   peer 2 CPU_PINNED:           [ h0 ]                           1 page
 *   => best remote: peer 1, 4 pages; fetchable beyond the local hit: 2 pages
 *
 * Only CPU_PINNED pages can be read from a peer (they are in its registered pool), so the
 * remote hit that fetch acts on is the CPU_PINNED one; any_pages reports the longest run on
 * any medium (GPU included) for routers.
 *
 * Thread rules: reads the index; one thread (the owner of the index) at a time.
 */
#ifndef KVN_OVERLAP_H
#define KVN_OVERLAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "node/events/global_index.h"
#include "util/kvn_err.h"

struct kvn_overlap {
    uint32_t query_pages;  /* whole pages in the query */
    uint32_t local_pages;  /* as given by the caller (its radix match) */
    bool remote_found;     /* some peer holds >= 1 leading page in its pool */
    uint32_t remote_peer;  /* the best such peer (lowest id among equals) */
    uint32_t remote_pages; /* leading pages it holds on CPU_PINNED */
    uint32_t fetchable;    /* remote_pages - local_pages when positive, else 0 */
    uint32_t any_pages;    /* longest leading run any peer holds on any medium */
};

/*
 * Answers for tokens[0..n_tokens) (a partial last page is ignored), skipping self_peer
 * (UINT32_MAX: none).  hash_buf[0..hash_cap) is scratch for the page hashes.
 * Errors: -EINVAL (NULL g/out, tokens or hash_buf NULL when needed, page_size 0,
 * local_pages > query pages), -ENOSPC (hash_cap too small).  *out is written only on
 * success.
 */
int kvn_overlap_query(const struct kvn_gindex *g, const int32_t *tokens, size_t n_tokens,
                      uint32_t page_size, uint32_t local_pages, uint32_t self_peer,
                      int64_t *hash_buf, uint32_t hash_cap, struct kvn_overlap *out,
                      struct kvn_err *err);

#endif /* KVN_OVERLAP_H */
