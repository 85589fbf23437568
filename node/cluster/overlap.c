/*
 * overlap.c - local vs remote prefix hits (see overlap.h).
 */
#include "node/cluster/overlap.h"

int kvn_overlap_query(const struct kvn_gindex *g, const int32_t *tokens, size_t n_tokens,
                      uint32_t page_size, uint32_t local_pages, uint32_t self_peer,
                      int64_t *hash_buf, uint32_t hash_cap, struct kvn_overlap *out,
                      struct kvn_err *err)
{
    if (!g || !out)
        return kvn_err_set(err, -EINVAL, "index and out must not be NULL");
    if (page_size == 0)
        return kvn_err_set(err, -EINVAL, "page_size must not be 0");
    size_t qp = n_tokens / page_size;
    if (local_pages > qp)
        return kvn_err_set(err, -EINVAL, "local hit of %u pages exceeds the query's %zu",
                           local_pages, qp);
    struct kvn_gindex_match pinned, any;
    uint32_t n_pages = 0;
    int rc = kvn_gindex_best_prefix_tokens(g, tokens, n_tokens, page_size, hash_buf, hash_cap,
                                           KVN_GINDEX_MEDIUM_BIT(KVN_MEDIUM_CPU_PINNED), self_peer,
                                           &pinned, &n_pages, err);
    if (rc < 0)
        return rc;
    /* the hashes are in hash_buf now: the any-medium query needs no second hashing */
    if ((rc = kvn_gindex_best_prefix(g, hash_buf, n_pages, KVN_GINDEX_ANY_MEDIUM, self_peer, &any,
                                     err)) < 0)
        return rc;
    *out = (struct kvn_overlap){
        .query_pages = n_pages,
        .local_pages = local_pages,
        .remote_found = pinned.found,
        .remote_peer = pinned.found ? pinned.peer : 0,
        .remote_pages = pinned.found ? pinned.pages : 0,
        .fetchable = pinned.found && pinned.pages > local_pages ? pinned.pages - local_pages : 0,
        .any_pages = any.found ? any.pages : 0,
    };
    return 0;
}
