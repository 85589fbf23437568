/*
 * radix.h - the hierarchical radix index of kvnode: which token prefixes are
 * cached, in which tier (L1 = engine/GPU slots, L2 = host pool pages, L3 =
 * storage), which copies are in flight, and the KV events that say so.
 */
/* API-FROZEN */
/*
 * THE TREE
 *
 * A radix tree over int32 token sequences, cut into pages of page_size tokens.
 * Every tree node holds a run of whole pages; children are found by their first
 * page (a hash map keyed by (parent, first page), never a scan). A namespace
 * (LoRA id, cache salt: an opaque uint64_t) selects a separate subtree; namespace
 * KVN_RADIX_NS_DEFAULT (0) is "no namespace".
 *
 *     ns 0 root
 *       +-- [1 2 | 3 4]          pages: L1 slots {0,1}, L2 pages {7,8}
 *       |     +-- [5 6]          L1 only (not yet backed up)
 *       |     +-- [9 9]          L2 only (demoted: not in L1 any more)
 *       +-- [8 8]
 *     ns 42 root
 *       +-- [1 2]                same tokens, separate subtree
 *
 * Per tree node: key tokens, one SHA-256 digest and one int64 event hash per
 * page, L1 slot per page (when in L1), L2 page per page (when in L2), L3
 * presence, device lock count, host protection count, hit count, last access
 * tick, id, pending copy job. Page arrays are allocated per tree node (one
 * block for key + digests + hashes, one per tier); tree nodes themselves come
 * from a slab with a free list.
 *
 * INVARIANTS
 *
 *   - Every tree node is in L1, in L2, or both (never neither).
 *   - L1 is top-closed: a node in L1 has its parent in L1.
 *   - A node being loaded back (L2 -> L1 job pending) has no L1 children other
 *     than nodes of the same load job, and is a barrier: match, insert and
 *     load_back stop in front of it until its ack.
 *   - A node with a pending copy job is never evicted from either tier.
 *
 * SLOTS AND PAGES: WHO OWNS WHAT
 *
 * The tree has an allocator for L1 slots [0, l1_pages) and one for L2 pages
 * [0, l2_pages) (cache/page_alloc.h). A slot/page "used" in an allocator is
 * owned by the tree. insert() adopts one L1 slot per page it stores: either
 * from the caller (explicit mode, l1_slots != NULL: the engine computed KV into
 * those slots; kvctl insert 1,2,3,4 --slots 0,1) or from the tree's own free
 * slots (auto mode, l1_slots == NULL: the tree picks free slots and evicts L1
 * leaves when it must). Slots of pages that were already in L1 are NOT adopted:
 * the result reports that prefix so the caller frees its duplicates. Slots
 * leave the tree through eviction (demote/delete) and reset; the caller never
 * frees a slot the tree adopted. L2 pages are always chosen by the tree; for
 * data that lands in L2 directly it hands reserved pages to the caller first
 * (kvn_radix_reserve_l2 / kvn_radix_insert_host, see HOST INSERTS).
 *
 * COPY JOBS AND ACKS (the tree never copies bytes)
 *
 * When pages must move between tiers, the tree commits the destination indices
 * to the tree nodes, takes one device lock on every node of the job, and hands a
 * copy job (ack id, direction, n pairs (L1 slot, L2 page), in prefix order) to
 * config.copy.submit. The caller performs the copy and later reports the ack id
 * with kvn_radix_ack(ok). If a node of a pending job is split (a pending write
 * by an insert, a pending load by an insert_host that diverges inside it), the
 * job's node list ("fragments") is updated: the node is replaced by [prefix,
 * suffix] in place, recursively, and both fragments carry the job, its lock and
 * its state (a loading prefix stays loading: no device hit before the ack).
 *
 *   ack ok, L1 -> L2:  for each fragment in prefix order, CPU_PINNED BlockStored
 *                      per page (parent = the previous page's hash, none at the
 *                      root); then, with storage on, the storage hook per
 *                      fragment; one lock released per fragment. Nodes the
 *                      eviction scheduled for demotion (write_back) are demoted.
 *   ack ok, L2 -> L1:  GPU BlockStored per loaded page of every fragment, in
 *                      prefix order.
 *   ack failed:        nothing published; the job's destination pages freed
 *                      (L2 pages of a write, L1 slots of a load); locks released.
 *
 * A page is announced on a medium only after its parent page is announced on
 * that medium: a write acked before the write of its parent is held back and
 * published (CPU_PINNED BlockStored) right after the parent's, in prefix order.
 * Such a held-back node stays in L1 (it is no eviction candidate) until then.
 * If the parent's write fails instead, the held-back copies below it can never
 * be announced: their L2 pages are freed, silently (they were never announced),
 * and the nodes stay in L1 without backup. So an L2-only node is always
 * announced on CPU_PINNED, and an L2 copy that is not announced always waits
 * for a pending write on its path. BlockRemoved is only ever sent for pages
 * that were announced on that medium.
 *
 * EVENTS (cache/kv_event.h), SGLang's convention
 *
 *   GPU BlockStored         per new page on insert, per revived page on insert
 *                           (an L2-only page that gets L1 slots again), per
 *                           page on load_back completion.
 *   GPU BlockRemoved        per tree node (all its page hashes) when it leaves
 *                           L1 (deleted or demoted).
 *   CPU_PINNED BlockStored  per page when its write job is acked (see above),
 *                           per adopted page of kvn_radix_insert_host.
 *   CPU_PINNED BlockRemoved per tree node when its L2 pages are evicted.
 *   DISK BlockStored        per page of a fragment whose storage hook returned
 *                           0, and whose parent page is on DISK (or is the root).
 *   DISK BlockRemoved       per tree node with L3 presence when L2 eviction
 *                           deletes it: the index no longer knows the pages
 *                           (node/ owns the files and may keep or drop them).
 *   AllBlocksCleared        on reset.
 * Events carry lora_id None (has_lora_id false) and the namespace is NOT part of
 * the page hash, exactly as SGLang: identical tokens in two namespaces have
 * identical event hashes.
 *
 * WRITE POLICIES
 *
 *   KVN_WRITE_THROUGH            a node is backed up (L1 -> L2 job) by the
 *                                insert that makes its hit count reach 1, i.e.
 *                                the insert that creates it;
 *   KVN_WRITE_THROUGH_SELECTIVE  ... reach 2 (second insert over it);
 *   KVN_WRITE_BACK               only on L1 eviction of a node without an L2
 *                                copy, or on an explicit kvn_radix_write_backup.
 * A backup also covers the node's ancestors that are in L1 without an L2 copy
 * and not pending, so L2 stays a prefix-closed chain. If L2 is short, the tree
 * first evicts L2 leaves; if that cannot make room, the write-through is skipped
 * (counted in stats.backups_skipped) and retried by the next qualifying insert.
 * With l2_pages == 0 there is no host tier: no backups, L1 eviction deletes.
 *
 * EVICTION (no tree scan: two binary heaps with intrusive positions)
 *
 *   L1 candidates: in L1 (not loading), no L1 child, no device lock, no
 *   pending job, and an L2 copy (if any) already announced.
 *     - backed up (has L2): demoted (L1 slots freed, node stays, GPU removed);
 *     - no L2, no children, not protected, policy not write_back (or no L2
 *       tier): deleted;
 *     - otherwise (write_back, L2-only children below, or protected): an
 *       L1 -> L2 job is queued and the node is demoted when it is acked
 *       (pages "scheduled"); without an L2 tier such a node stays.
 *   L2 candidates: L2 only (not in L1), no children, no lock, no protection,
 *     no pending job: deleted (L2 pages freed, CPU_PINNED removed).
 *   Order: KVN_EVICT_LRU by (last_access_tick, id); KVN_EVICT_LFU by
 *   (hit_count, last_access_tick, id). Smallest first.
 *
 * HIT COUNTS AND TICKS
 *
 * Time is a parameter (now_tick, any monotonic counter the caller likes).
 * match_prefix and insert set last_access_tick of every node on the matched
 * path; insert (only) increments hit_count of every node on its path. A split
 * copies both to the two halves.
 *
 * LOCKS AND PROTECTION
 *
 * kvn_radix_lock(id) adds one device lock to the node and every ancestor: none
 * of them can leave L1 while it is held. kvn_radix_protect(id) does the same
 * for L2 (host protection): none of them loses its L2 copy or is deleted while
 * it is held (L1 eviction may still demote them). Neither can keep bytes that
 * are not valid: a failed load takes its L1 slots back, a failed write its L2
 * pages, even from locked / protected nodes; and an L2 copy that can never be
 * announced (see COPY JOBS) is dropped even when protected.
 *
 * The handle is the node id; unlocking a node that holds no lock taken through
 * that id is an error (-EINVAL), as is any stale id (-ENOENT). A split keeps
 * the id (and its locks) on the suffix, which is the node the id's path lock
 * covered, and gives the prefix the same counts.
 *
 * RESET
 *
 * kvn_radix_reset() drops every tree node (AllBlocksCleared), every lock, every
 * id. Copy jobs still in flight become orphans: their destination pages stay
 * reserved (the copy may still land there) until their ack arrives, which then
 * publishes nothing, frees the pages and returns 0. A second ack of the same id
 * returns -ENOENT.
 *
 * ERRORS
 *
 * Every function returns 0 or a negative errno code and fills err (may be NULL)
 * per util/kvn_err.h. Arguments are validated before anything changes: a
 * refused call changes nothing (no event, no allocation, no counter), and
 * result structs are written only on success.
 *
 * THREAD RULES
 *
 * A tree is single-threaded: one owner (node/'s event loop) calls everything.
 * The sink, copy and storage callbacks are called synchronously from inside the
 * tree's functions and must NOT call back into the tree (ack later).
 */
#ifndef KVN_RADIX_H
#define KVN_RADIX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/kv_event.h"
#include "util/kvn_err.h"

/* The "no namespace" namespace. */
#define KVN_RADIX_NS_DEFAULT ((uint64_t)0)
/* Reserved; refused with -EINVAL wherever a namespace is taken. */
#define KVN_RADIX_NS_INVALID UINT64_MAX

/* Limits checked by kvn_radix_create. */
#define KVN_RADIX_MAX_PAGE_SIZE          65536u
#define KVN_RADIX_DEFAULT_MAX_NAMESPACES 4096u

enum kvn_write_policy {
    KVN_WRITE_THROUGH = 0,           /* threshold 1 */
    KVN_WRITE_THROUGH_SELECTIVE = 1, /* threshold 2 */
    KVN_WRITE_BACK = 2,
};

enum kvn_evict_policy {
    KVN_EVICT_LRU = 0,
    KVN_EVICT_LFU = 1,
};

enum kvn_copy_dir {
    KVN_COPY_L1_TO_L2 = 0, /* write-through / backup: read L1 slots into L2 pages */
    KVN_COPY_L2_TO_L1 = 1, /* load back: write L2 pages into L1 slots */
};

/*
 * One copy job. Pairs (l1_slots[i], l2_pages[i]) for i < n_pages, in prefix
 * order. Pointers are valid only during the submit call (copy what you keep).
 */
struct kvn_copy_job {
    uint64_t ack_id; /* never 0 */
    enum kvn_copy_dir dir;
    uint32_t n_pages;
    const uint32_t *l1_slots;
    const uint32_t *l2_pages;
};

/*
 * Where copy jobs go. submit() is called before the tree commits the job; it
 * returns 0 when it accepted the job (the ack will come through
 * kvn_radix_ack), or a negative code when it could not: the tree then drops
 * the job (destination pages given back, nothing locked or published;
 * stats.copy_submit_failures counts it). submit NULL: jobs are only recorded;
 * the caller learns ack ids from the results below.
 */
struct kvn_copy_ops {
    int (*submit)(void *ctx, const struct kvn_copy_job *job);
    void *ctx;
};

/*
 * One fragment handed to the storage backup (L3): a tree node's pages in prefix
 * order, with what is needed to persist and later re-verify the chain. Pointers
 * valid only during the call.
 */
struct kvn_storage_fragment {
    uint64_t ns;
    uint64_t node_id;
    uint32_t page_size;
    uint32_t n_pages;
    const int32_t *tokens;      /* n_pages * page_size */
    const int64_t *hashes;      /* n_pages event hashes */
    const uint32_t *l2_pages;   /* where the bytes are in the host pool */
    bool has_parent;            /* false at the root */
    int64_t parent_hash;        /* event hash of the page before tokens[0] */
    const uint8_t *prev_digest; /* 32-byte digest of that page, NULL at the root */
};

/*
 * Storage backup hook. backup() must persist the fragment (or queue it
 * durably) and return 0, after which the tree marks the node L3-present and
 * emits DISK BlockStored for its pages; a negative return means "not stored"
 * (no event, stats.storage_failures). Called only when config.storage_enabled
 * and backup != NULL, once per fragment in prefix order, right after the
 * fragment's CPU_PINNED events, and only when the fragment's parent node is
 * already L3-present (or is the root), so that the DISK chain has no hole.
 */
struct kvn_storage_ops {
    int (*backup)(void *ctx, const struct kvn_storage_fragment *frag);
    void *ctx;
};

struct kvn_radix_config {
    uint32_t page_size; /* tokens per page, 1 .. KVN_RADIX_MAX_PAGE_SIZE */
    uint32_t l1_pages;  /* L1 slots [0, l1_pages); >= 1 */
    uint32_t l2_pages;  /* L2 pages [0, l2_pages); 0 = no host tier */
    enum kvn_write_policy write_policy;
    enum kvn_evict_policy evict_policy;
    bool storage_enabled;
    uint32_t max_namespaces; /* distinct namespaces with a subtree; 0 = default */
    struct kvn_kv_event_sink sink;
    struct kvn_copy_ops copy;
    struct kvn_storage_ops storage;
    /*
     * Mixed into the high half of every node id and ack id. Ids are unique
     * within one tree; a caller that replaces a tree while copies of the old
     * one may still complete (node/ re-attaching L1) gives each instance a
     * different salt, so a late ack or a stale node id of the old tree is
     * refused with -ENOENT by the new one instead of hitting its own jobs.
     */
    uint32_t id_salt;
};

struct kvn_radix;

/* Fills cfg with defaults: page_size 16, l1_pages 1024, l2_pages 4096,
 * write_through, LRU, storage off, no callbacks. NULL is a no-op. */
void kvn_radix_config_init(struct kvn_radix_config *cfg);

/*
 * Creates a tree. The config is copied (callbacks and their ctx must outlive
 * the tree). Errors: -EINVAL (cfg/out NULL, page_size 0 or too big, l1_pages 0,
 * bad enum), -ENOMEM. On error *out is NULL.
 */
int kvn_radix_create(const struct kvn_radix_config *cfg, struct kvn_radix **out,
                     struct kvn_err *err);

/* Frees everything, emits nothing. Pending jobs are forgotten. NULL is a no-op. */
void kvn_radix_destroy(struct kvn_radix *tree);

/*
 * Drops every tree node, lock and id; emits AllBlocksCleared; in-flight jobs
 * become orphans (see RESET). Errors: -EINVAL (tree NULL).
 */
int kvn_radix_reset(struct kvn_radix *tree, struct kvn_err *err);

/*
 * match_prefix result. A match walks whole pages of tokens (a partial tail is
 * ignored) from the namespace's root:
 *
 *   tokens:  [ device prefix (L1) ][ host extension (L2 only) ][ miss ... ]
 *             device_tokens          host_tokens
 *
 * last_device_node: the tree node holding the last device page (0 when
 * device_tokens == 0); it may extend beyond the match (a match never splits):
 * locking it protects the whole device prefix. last_host_node: the node holding
 * the last host-extension page (0 when host_tokens == 0). backed_tokens: length
 * of the longest matched prefix whose every page has a valid L2 copy (its write
 * acked; in L1 or not).
 */
struct kvn_radix_match {
    uint32_t device_tokens;
    uint32_t host_tokens; /* SGLang's host_hit_length: loadable with load_back */
    uint32_t backed_tokens;
    uint32_t n_slots; /* L1 slots written to slots_out (min(device pages, cap)) */
    uint64_t last_device_node;
    uint64_t last_host_node;
};

/*
 * Longest cached prefix of tokens[0..n_tokens) in namespace ns. Writes the
 * device prefix's L1 slots into slots_out[0..min(pages, slots_cap)) when
 * slots_out != NULL. Sets last_access_tick = now_tick on the matched nodes
 * (which may reorder LRU eviction) but never splits, allocates or emits. An
 * unknown namespace is a miss (all zero), not an error.
 * Errors: -EINVAL (tree/res NULL, tokens NULL with n_tokens > 0, ns ==
 * KVN_RADIX_NS_INVALID, n_tokens > UINT32_MAX).
 */
int kvn_radix_match_prefix(struct kvn_radix *tree, uint64_t ns, const int32_t *tokens,
                           size_t n_tokens, uint64_t now_tick, uint32_t *slots_out,
                           uint32_t slots_cap, struct kvn_radix_match *res, struct kvn_err *err);

/*
 * What a peer can read from this node's pool by RDMA: the longest prefix of
 * tokens[0..n_tokens) whose every page has a valid L2 copy already announced
 * on CPU_PINNED. Writes its L2 page numbers into pages_out[0..min(pages,
 * pages_cap)) (pages_out may be NULL), sets ticks like a match, never splits,
 * allocates or emits. Protect last_node (kvn_radix_protect) while the pages
 * are being read; it may extend beyond the prefix.
 * Errors: -EINVAL (tree/res NULL, tokens NULL with n_tokens > 0, ns ==
 * KVN_RADIX_NS_INVALID, n_tokens > UINT32_MAX).
 */
struct kvn_radix_l2_match {
    uint32_t tokens;    /* length of that prefix */
    uint32_t n_pages;   /* page numbers written to pages_out */
    uint64_t last_node; /* node holding its last page, 0 when tokens == 0 */
};

int kvn_radix_match_l2(struct kvn_radix *tree, uint64_t ns, const int32_t *tokens, size_t n_tokens,
                       uint64_t now_tick, uint32_t *pages_out, uint32_t pages_cap,
                       struct kvn_radix_l2_match *res, struct kvn_err *err);

/*
 * insert result, in tokens (multiples of page_size):
 *   prefix_tokens   already in L1 before the call: the caller's slots for these
 *                   pages were NOT adopted (explicit mode);
 *   revived_tokens  were L2-only: now in L1 again with the caller's slots;
 *   new_tokens      new pages (GPU BlockStored each);
 *   inserted_tokens prefix + revived + new; less than n_tokens only when the
 *                   path reached a node being loaded back (a barrier): the
 *                   caller's slots beyond it were not adopted either.
 * last_node: node holding the last inserted page (0 if n_tokens == 0).
 * backup_ack_id / backup_pages: the write-through job this insert queued (0/0
 * if none). evicted_pages: L1 pages freed by auto-mode eviction.
 */
struct kvn_radix_insert_result {
    uint32_t prefix_tokens;
    uint32_t revived_tokens;
    uint32_t new_tokens;
    uint32_t inserted_tokens;
    uint64_t last_node;
    uint64_t backup_ack_id;
    uint32_t backup_pages;
    uint32_t evicted_pages;
};

/*
 * Inserts tokens[0..n_tokens) (n_tokens must be a multiple of page_size) into
 * namespace ns, creating the namespace on first use. l1_slots: NULL for auto
 * mode, else n_tokens / page_size slots, slot i for page i (all must be
 * < l1_pages; entries for the already-cached prefix are not adopted). Splits
 * nodes where the key diverges, revives L2-only nodes, adds one leaf for the
 * rest, increments hit counts, emits GPU BlockStored, and may queue a
 * write-through job.
 *
 * Auto mode evicts L1 candidates that can be freed at once (demoted or
 * deleted, never the path being inserted). Under write_back, nodes without an
 * L2 copy cannot be freed at once: call kvn_radix_evict_l1 (which queues their
 * backups) and retry after the acks.
 *
 * Errors (nothing changed):
 *   -EINVAL  tree/tokens/res NULL, n_tokens not a multiple of page_size or
 *            > UINT32_MAX, ns == KVN_RADIX_NS_INVALID, a slot >= l1_pages;
 *   -EBUSY   a slot the tree must adopt is already owned by the tree, or listed
 *            twice;
 *   -ENOSPC  auto mode and not enough free + evictable L1 slots; or a new
 *            namespace beyond max_namespaces;
 *   -ENOMEM.
 */
int kvn_radix_insert(struct kvn_radix *tree, uint64_t ns, const int32_t *tokens, size_t n_tokens,
                     const uint32_t *l1_slots, uint64_t now_tick,
                     struct kvn_radix_insert_result *res, struct kvn_err *err);

/*
 * Device lock / unlock along the path from node_id to its namespace root.
 * Errors: -EINVAL (tree NULL, node_id 0, unlock of a node holding no lock taken
 * through its id: double unlock), -ENOENT (unknown or stale id).
 */
int kvn_radix_lock(struct kvn_radix *tree, uint64_t node_id, struct kvn_err *err);
int kvn_radix_unlock(struct kvn_radix *tree, uint64_t node_id, struct kvn_err *err);

/* Host (L2) protection along the path; same rules and errors as lock/unlock. */
int kvn_radix_protect(struct kvn_radix *tree, uint64_t node_id, struct kvn_err *err);
int kvn_radix_unprotect(struct kvn_radix *tree, uint64_t node_id, struct kvn_err *err);

struct kvn_radix_evict_result {
    uint32_t freed_pages;     /* L1 slots (or L2 pages) freed by this call */
    uint32_t demoted_pages;   /* L1: of freed, pages that stay in L2 */
    uint32_t deleted_pages;   /* of freed, pages whose tree node was deleted */
    uint32_t scheduled_pages; /* L1: pages demoted when ack_id is acked */
    uint64_t ack_id;          /* L1: backup job queued for scheduled pages, or 0 */
};

/*
 * Frees at least n_pages L1 slots if possible, victims in policy order (whole
 * tree nodes, so it may free more). Fewer is not an error: res says what
 * happened. Errors: -EINVAL (tree/res NULL), -ENOMEM.
 */
int kvn_radix_evict_l1(struct kvn_radix *tree, uint32_t n_pages, struct kvn_radix_evict_result *res,
                       struct kvn_err *err);

/* Frees at least n_pages L2 pages if possible (L2 candidates only). Errors:
 * -EINVAL (tree/res NULL). */
int kvn_radix_evict_l2(struct kvn_radix *tree, uint32_t n_pages, struct kvn_radix_evict_result *res,
                       struct kvn_err *err);

/* Result of a call that may queue one copy job. ack_id 0: nothing to do. */
struct kvn_radix_job_result {
    uint64_t ack_id;
    uint32_t n_pages;
    uint32_t prefix_tokens; /* load_back: device prefix in front of the loaded pages */
    uint64_t last_node;     /* load_back: node holding the last loaded page */
};

/*
 * Load back the host extension of tokens[0..n_tokens) (multiple of page_size)
 * in namespace ns: the L2-only pages right after the device prefix, at most
 * n_slots pages when l1_slots != NULL (explicit slots, slot i for the i-th
 * loaded page), all of them in auto mode (l1_slots NULL, n_slots ignored; L1
 * evicted as needed). The last node is split at the page boundary so exactly
 * those pages are loaded. Queues one L2 -> L1 job; GPU BlockStored follows its
 * ack. Errors: as insert (-EINVAL, -EBUSY, -ENOSPC, -ENOMEM), and the negative
 * code of a copy submit that refused the job: the submit happens before the
 * tree changes, so only the slots are given back (stats.copy_submit_failures
 * counts it); auto-mode eviction done to make room stays.
 */
int kvn_radix_load_back(struct kvn_radix *tree, uint64_t ns, const int32_t *tokens, size_t n_tokens,
                        const uint32_t *l1_slots, uint32_t n_slots, uint64_t now_tick,
                        struct kvn_radix_job_result *res, struct kvn_err *err);

/*
 * Back up node_id and its ancestors that are in L1 without an L2 copy and not
 * pending: one L1 -> L2 job, in prefix order (explicit backups, write_back).
 * Nothing to do (already backed or pending) is success with ack_id 0.
 * Errors: -EINVAL (tree/res NULL, node_id 0, no host tier), -ENOENT (unknown
 * id), -ENOSPC (not enough free + evictable L2 pages), -ENOMEM, and the
 * negative code of a copy submit that refused the job: the submit happens
 * before the tree changes, so only the L2 pages are given back
 * (stats.copy_submit_failures counts it); L2 leaves evicted to make room stay
 * evicted. An insert whose write-through submit is refused still succeeds
 * (backup_ack_id 0).
 */
int kvn_radix_write_backup(struct kvn_radix *tree, uint64_t node_id,
                           struct kvn_radix_job_result *res, struct kvn_err *err);

/*
 * HOST INSERTS (data that lands in L2 directly: a prefill node pushing pages
 * into this node's pool, or pages read from a peer). The caller first reserves
 * L2 pages, has the bytes written into them, then inserts the sequence with
 * those pages; pages it ends up not needing it releases.
 *
 * kvn_radix_reserve_l2: takes n_pages free L2 pages into pages_out; they are
 * the caller's until adopted by kvn_radix_insert_host or released. Reset keeps
 * reservations (the bytes may still be landing). No eviction: make room with
 * kvn_radix_evict_l2 first. Errors: -EINVAL (NULL args, no host tier),
 * -ENOSPC (fewer free pages; nothing reserved).
 *
 * kvn_radix_release_l2: gives reserved pages back. All or nothing. Errors:
 * -EINVAL (NULL args, a page >= l2_pages or not reserved: a double release, or
 * a page the tree owns), -EALREADY (a page listed twice).
 */
int kvn_radix_reserve_l2(struct kvn_radix *tree, uint32_t n_pages, uint32_t *pages_out,
                         struct kvn_err *err);
int kvn_radix_release_l2(struct kvn_radix *tree, const uint32_t *pages, uint32_t n_pages,
                         struct kvn_err *err);

/*
 * Inserts tokens[0..n_tokens) (a multiple of page_size) whose bytes are in the
 * reserved L2 pages l2_pages[i] (one per page). Walking the path:
 *   - pages that already have a valid L2 copy are not adopted (prefix_tokens;
 *     the caller releases those pages);
 *   - nodes in L1 without an L2 copy adopt the pages as their backup
 *     (revived_tokens), split at the end when the sequence ends inside one;
 *   - the rest becomes a new L2-only leaf (new_tokens).
 * Adopted pages are valid at once: CPU_PINNED BlockStored per page in prefix
 * order (then the storage hook per fragment, as for an acked write). The walk
 * stops in front of a node whose write is pending (its copy is not announced
 * yet): inserted_tokens says how far it went; pages beyond are not adopted.
 * Hit counts are not changed (this is no engine hit); ticks are.
 * Errors (nothing changed): -EINVAL (NULL args, unaligned or too long, ns ==
 * KVN_RADIX_NS_INVALID, no host tier, a page >= l2_pages), -EBUSY (a page to
 * adopt is not reserved by the caller, or listed twice), -ENOSPC (a new
 * namespace beyond max_namespaces), -ENOMEM.
 */
int kvn_radix_insert_host(struct kvn_radix *tree, uint64_t ns, const int32_t *tokens,
                          size_t n_tokens, const uint32_t *l2_pages, uint64_t now_tick,
                          struct kvn_radix_insert_result *res, struct kvn_err *err);

/*
 * Completes job ack_id: ok = every copy of the job succeeded. See COPY JOBS.
 * Errors: -EINVAL (tree NULL, ack_id 0), -ENOENT (unknown or already acked id).
 */
int kvn_radix_ack(struct kvn_radix *tree, uint64_t ack_id, bool ok, struct kvn_err *err);

struct kvn_radix_stats {
    uint32_t page_size;
    /* *_evictable_pages: pages eviction can free at once (L1: demotable or
     * deletable candidates; L2: candidates). used includes orphan pages. */
    uint32_t l1_capacity, l1_used, l1_free, l1_evictable_pages;
    uint32_t l2_capacity, l2_used, l2_free, l2_evictable_pages;
    uint64_t nodes;           /* tree nodes, roots excluded */
    uint64_t namespaces;      /* namespaces with a root */
    uint64_t locked_nodes;    /* device lock count > 0 (user locks or pending) */
    uint64_t protected_nodes; /* host protection count > 0 */
    uint64_t pending_jobs;    /* jobs awaiting an ack (orphans included) */
    uint64_t pending_pages;
    uint64_t orphan_pages;  /* pages reserved by jobs orphaned by reset */
    uint64_t cached_tokens; /* tokens in L1 or L2 */
    uint64_t l1_tokens, l2_tokens;
    uint64_t index_bytes; /* heap memory of the index, allocators included */
    uint64_t events;      /* events emitted since create */
    uint64_t jobs_submitted, acks_ok, acks_failed, copy_submit_failures;
    uint64_t backups_skipped; /* write-throughs skipped for lack of L2 */
    uint64_t storage_backups, storage_failures;
    uint32_t l2_reserved; /* L2 pages reserved by the caller (kvn_radix_reserve_l2) */
};

/* Fills st. Errors: -EINVAL (NULL args). */
int kvn_radix_stats(const struct kvn_radix *tree, struct kvn_radix_stats *st, struct kvn_err *err);

/* A snapshot of one tree node (tests, kvctl, debugging). */
struct kvn_radix_node_info {
    uint64_t id;
    uint64_t parent_id; /* 0 when the parent is the namespace root */
    uint64_t ns;
    uint32_t n_pages;
    bool in_l1, in_l2, in_l3; /* holds L1 slots / L2 pages / is on L3 */
    bool loading;             /* L2 -> L1 job pending: in_l1 is true (the slots are
                                 reserved) but their bytes are not valid until the
                                 ack; a failed load takes the slots back even when
                                 the node is locked (a lock cannot keep bad data) */
    uint64_t pending_ack;     /* ack id of its pending job, or 0 */
    uint32_t lock_count;      /* device lock count (path locks + pending) */
    uint32_t own_locks;       /* locks taken through this id */
    uint32_t protect_count;
    uint32_t own_protects;
    uint32_t hit_count;
    uint64_t last_access_tick;
    uint32_t n_children;
    const int32_t *tokens;    /* n_pages * page_size; valid until the next mutation */
    const int64_t *hashes;    /* n_pages */
    const uint32_t *l1_slots; /* NULL when not in L1 */
    const uint32_t *l2_pages; /* NULL when not in L2 */
};

/* Errors: -EINVAL (NULL args, node_id 0), -ENOENT (unknown id). */
int kvn_radix_node_info(const struct kvn_radix *tree, uint64_t node_id,
                        struct kvn_radix_node_info *info, struct kvn_err *err);

/*
 * Full consistency check, O(tree): allocator ownership (every used index owned
 * by exactly one node or orphan job), counts, heaps, the invariants above,
 * lock / protection counts as path sums, and every pending job's fragments
 * (in prefix order, holding exactly the job's pages, loading iff a load).
 * For tests. Returns 0 or -EFAULT with the first violation in err.
 */
int kvn_radix_check(const struct kvn_radix *tree, struct kvn_err *err);

#endif /* KVN_RADIX_H */
