/*
 * storage.h - the L3 tier: acknowledged fragments backed up to files.
 *
 * With --storage DIR, the cache hands every fragment of an acknowledged
 * write-through to kvn_storage_backup (through the radix tree's storage hook),
 * which writes one file per page, named by the page's event hash:
 *
 *   DIR/ns-<ns>/<hash as 16 hex digits>.kvp
 *     u32 magic "KVNP"  u32 version 1  u32 page_size  u32 flags (bit0 parent)
 *     i64 hash  i64 parent_hash  u64 ns  u64 page_bytes
 *     page_size x u32 tokens (little endian)   page_bytes of KV data
 *
 * Each file is written to a temporary name, fsync'd on request, then renamed:
 * a crash leaves either the whole page or nothing. Page hashes chain over
 * their prefix, so a file name identifies the whole prefix up to that page.
 *
 * Thread rules: one thread owns a struct kvn_storage.
 */
#ifndef KVN_STORAGE_H
#define KVN_STORAGE_H

#include <stdbool.h>
#include <stdint.h>

#include "cache/radix.h"
#include "node/host_pool.h"
#include "util/kvn_err.h"

struct kvn_storage;

/*
 * Creates dir (one level) when missing. pool must outlive the storage.
 * Errors: -EINVAL, -ENOMEM, -errno of mkdir/access.
 */
int kvn_storage_open(const char *dir, const struct kvn_host_pool *pool, bool fsync_files,
                     struct kvn_storage **out, struct kvn_err *err);

void kvn_storage_close(struct kvn_storage *s);

/*
 * Writes every page of frag. Returns 0 when all were written, else a
 * negative errno (pages already written stay: they are whole and correct).
 * Errors: -EINVAL (NULL, a page out of the pool), -EIO and other -errno.
 */
int kvn_storage_backup(struct kvn_storage *s, const struct kvn_storage_fragment *frag,
                       struct kvn_err *err);

/*
 * Reads back the page with event hash h in namespace ns: its tokens into
 * tokens[0..page_size) and its bytes into buf[0..page_bytes) (test aid and
 * future restore path). Errors: -ENOENT, -EPROTO (bad file), -EINVAL.
 */
int kvn_storage_read(struct kvn_storage *s, uint64_t ns, int64_t h, int32_t *tokens,
                     uint32_t page_size, void *buf, uint64_t page_bytes, struct kvn_err *err);

struct kvn_storage_stats {
    uint64_t pages_written, bytes_written, failures;
};
void kvn_storage_get_stats(const struct kvn_storage *s, struct kvn_storage_stats *out);

#endif /* KVN_STORAGE_H */
