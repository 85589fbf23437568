/*
 * daemon.c - the kvnode event loop and the control RPC handlers (see
 * daemon.h for the picture, kvn_rpc.h for the schema).
 */
#include "node/daemon.h"

#include <inttypes.h>
#include <msgpack.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "cache/radix.h"
#include "node/cluster/cluster.h"
#include "node/evout.h"
#include "node/host_pool.h"
#include "node/kvn_rpc.h"
#include "node/storage.h"
#include "node/xfer.h"
#include "transport/kvn_xport.h"

#define MAX_LOCKS      4096u
#define REQS_PER_TICK  64
#define LAT_BUCKETS    (256u + 24u * 32u) /* log-linear: exact below 256 us, ~3% above */
#define ACKS_PER_TICK  4096u
#define DRAIN_LIMIT_MS 30000u
/* While transfers are out the loop spins on the copy engine and looks at its
 * sockets and fds (a poll() system call plus ZeroMQ's checks per socket)
 * once per SPIN_POLL_EVERY spins: a request waits a few microseconds more,
 * the completion queue is drained that much more often (BENCHMARKS.md §4). */
#define SPIN_POLL_EVERY 16u
#define MAX_RECV_FRAME (4u * KVN_RPC_MAX_FRAME) /* beyond: ZeroMQ drops the peer */

struct lock_entry {
    uint64_t node_id;
    uint64_t expires_ms;
    uint32_t gen;
    uint32_t next_free;
    bool used;
};

struct reply {
    msgpack_sbuffer body;
    msgpack_packer pk;
    uint32_t n;
};

struct kvn_node {
    struct kvn_config cfg;
    void *zctx, *ctl;
    int sigfd;
    struct kvn_host_pool *pool;
    struct kvn_xfer *xfer;
    struct kvn_radix *tree;
    struct kvn_storage *storage;
    struct kvn_evout *ev;
    struct kvn_cluster *cluster; /* NULL unless --cluster / --peer */
    struct kvn_rpc_req req;
    struct reply rep;
    msgpack_sbuffer out;
    uint32_t *slots_buf; /* match results */
    uint64_t *sums_buf;  /* l1_checksum results */
    struct lock_entry locks[MAX_LOCKS];
    uint32_t lock_free, locks_held;
    uint32_t spins; /* busy iterations since the last zmq_poll */
    uint64_t tick;
    uint64_t last_lease_scan;
    bool stopping;
    /* ack-to-publish latency */
    uint64_t tick_acks[ACKS_PER_TICK];
    uint32_t n_tick_acks;
    uint64_t *lat_hist; /* ack-to-publish, microseconds, LAT_BUCKETS */
    uint64_t lat_n;
    /* counters */
    uint64_t rpc_requests, rpc_errors, rpc_dropped, rpc_oversized;
    uint64_t events_emitted, acks_ok, acks_failed, ack_errors;
    uint64_t lease_expired;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void logf_(const struct kvn_node *n, enum kvn_log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void logf_(const struct kvn_node *n, enum kvn_log_level lvl, const char *fmt, ...)
{
    if (lvl > n->cfg.log_level)
        return;
    static const char *const names[] = {"error", "warn", "info", "debug"};
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "kvnode %s: ", names[lvl]);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- callbacks from the tree and the copy engine ------------------------------------ */

static void on_event(void *ctx, const struct kvn_kv_event *ev)
{
    struct kvn_node *n = ctx;
    n->events_emitted++;
    kvn_evout_add(n->ev, ev);
}

static int on_copy_submit(void *ctx, const struct kvn_copy_job *job)
{
    struct kvn_node *n = ctx;
    struct kvn_err e;
    int rc = kvn_xfer_copy(n->xfer, job->dir == KVN_COPY_L1_TO_L2 ? KVN_XFER_TO_L2 : KVN_XFER_TO_L1,
                           job->ack_id, job->l1_slots, job->l2_pages, job->n_pages, &e);
    if (rc < 0)
        logf_(n, KVN_LOG_WARN, "copy job %" PRIu64 " refused: %s", job->ack_id, e.msg);
    return rc;
}

static int on_storage_backup(void *ctx, const struct kvn_storage_fragment *frag)
{
    struct kvn_node *n = ctx;
    struct kvn_err e;
    int rc = kvn_storage_backup(n->storage, frag, &e);
    if (rc < 0)
        logf_(n, KVN_LOG_WARN, "storage backup of node %" PRIu64 ": %s", frag->node_id, e.msg);
    return rc;
}

static void on_job_done(void *ctx, uint64_t ack_id, enum kvn_xfer_dir dir, bool ok, uint64_t bytes)
{
    struct kvn_node *n = ctx;
    struct kvn_err e;
    if (!n->tree) {
        n->ack_errors++;
        return;
    }
    if (n->n_tick_acks < ACKS_PER_TICK)
        n->tick_acks[n->n_tick_acks++] = now_us();
    int rc = kvn_radix_ack(n->tree, ack_id, ok, &e);
    if (rc < 0) {
        n->ack_errors++;
        logf_(n, KVN_LOG_WARN, "ack %" PRIu64 ": %s", ack_id, e.msg);
    } else if (ok) {
        n->acks_ok++;
    } else {
        n->acks_failed++;
        logf_(n, KVN_LOG_INFO, "copy job %" PRIu64 " failed: pages freed, nothing published",
              ack_id);
    }
    (void)dir;
    (void)bytes;
}

/* ---- the tree ------------------------------------------------------------------------ */

static int tree_create(struct kvn_node *n, uint32_t l1_slots, struct kvn_radix **out,
                       struct kvn_err *err)
{
    struct kvn_radix_config rc;
    kvn_radix_config_init(&rc);
    rc.page_size = n->cfg.page_size;
    rc.l1_pages = l1_slots;
    rc.l2_pages = n->pool->n_pages;
    rc.write_policy = n->cfg.write_policy;
    rc.evict_policy = KVN_EVICT_LRU;
    rc.storage_enabled = n->storage != NULL;
    rc.sink = (struct kvn_kv_event_sink){.emit = on_event, .ctx = n};
    rc.copy = (struct kvn_copy_ops){.submit = on_copy_submit, .ctx = n};
    rc.storage = (struct kvn_storage_ops){.backup = on_storage_backup, .ctx = n};
    return kvn_radix_create(&rc, out, err);
}

static void locks_clear(struct kvn_node *n)
{
    for (uint32_t i = 0; i < MAX_LOCKS; i++) {
        n->locks[i].used = false;
        n->locks[i].next_free = i + 1;
    }
    n->lock_free = 0;
    n->locks_held = 0;
}

/* ---- replies ------------------------------------------------------------------------- */

static void pk_str(msgpack_packer *pk, const char *s)
{
    size_t l = strlen(s);
    msgpack_pack_str(pk, l);
    msgpack_pack_str_body(pk, s, l);
}

static void r_u64(struct reply *r, const char *k, uint64_t v)
{
    pk_str(&r->pk, k);
    msgpack_pack_uint64(&r->pk, v);
    r->n++;
}

static void r_str(struct reply *r, const char *k, const char *v)
{
    pk_str(&r->pk, k);
    pk_str(&r->pk, v);
    r->n++;
}

static void r_bool(struct reply *r, const char *k, bool v)
{
    pk_str(&r->pk, k);
    if (v)
        msgpack_pack_true(&r->pk);
    else
        msgpack_pack_false(&r->pk);
    r->n++;
}

static void r_bin(struct reply *r, const char *k, const void *v, size_t len)
{
    pk_str(&r->pk, k);
    msgpack_pack_bin(&r->pk, len);
    msgpack_pack_bin_body(&r->pk, v, len);
    r->n++;
}

static void r_u32s(struct reply *r, const char *k, const uint32_t *v, uint32_t len)
{
    pk_str(&r->pk, k);
    msgpack_pack_array(&r->pk, len);
    for (uint32_t i = 0; i < len; i++)
        msgpack_pack_uint32(&r->pk, v[i]);
    r->n++;
}

static void r_u64s(struct reply *r, const char *k, const uint64_t *v, uint32_t len)
{
    pk_str(&r->pk, k);
    msgpack_pack_array(&r->pk, len);
    for (uint32_t i = 0; i < len; i++)
        msgpack_pack_uint64(&r->pk, v[i]);
    r->n++;
}

/* Assembles {"v", "id", "ok", results... | "code", "error"} into n->out. */
static void build_reply(struct kvn_node *n, uint64_t id, int code, const char *msg)
{
    msgpack_packer pk;
    msgpack_sbuffer_clear(&n->out);
    msgpack_packer_init(&pk, &n->out, msgpack_sbuffer_write);
    if (code < 0) {
        msgpack_pack_map(&pk, 5);
        pk_str(&pk, "v");
        msgpack_pack_uint32(&pk, KVN_RPC_VERSION);
        pk_str(&pk, "id");
        msgpack_pack_uint64(&pk, id);
        pk_str(&pk, "ok");
        msgpack_pack_false(&pk);
        pk_str(&pk, "code");
        msgpack_pack_int(&pk, code);
        pk_str(&pk, "error");
        pk_str(&pk, msg && msg[0] ? msg : kvn_err_name(code));
        return;
    }
    msgpack_pack_map(&pk, 3 + n->rep.n);
    pk_str(&pk, "v");
    msgpack_pack_uint32(&pk, KVN_RPC_VERSION);
    pk_str(&pk, "id");
    msgpack_pack_uint64(&pk, id);
    pk_str(&pk, "ok");
    msgpack_pack_true(&pk);
    msgpack_sbuffer_write(&n->out, n->rep.body.data, n->rep.body.size);
}

/* ---- handlers ------------------------------------------------------------------------ */

static int need_tree(struct kvn_node *n, struct kvn_err *err)
{
    if (!n->tree)
        return kvn_err_set(err, -ENOTCONN, "no L1 registered (register_l1, or start with --l1)");
    return 0;
}

static int need_pages(struct kvn_node *n, const struct kvn_rpc_req *q, struct kvn_err *err)
{
    if (q->n_tokens == 0)
        return kvn_err_set(err, -EINVAL, "%s: empty token list", kvn_rpc_op_name(q->op));
    if (q->n_tokens % n->cfg.page_size)
        return kvn_err_set(err, -EINVAL, "%s: %u tokens is not a whole number of %u-token pages",
                           kvn_rpc_op_name(q->op), q->n_tokens, n->cfg.page_size);
    return 0;
}

static int check_slots(struct kvn_node *n, const struct kvn_rpc_req *q, uint32_t limit,
                       struct kvn_err *err)
{
    for (uint32_t i = 0; i < q->n_slots; i++)
        if (q->slots[i] >= limit)
            return kvn_err_set(err, -EINVAL, "slots[%u] = %u is out of range (%u L1 slots)", i,
                               q->slots[i], limit);
    return 0;
}

static int h_hello(struct kvn_node *n, struct kvn_err *err)
{
    struct reply *r = &n->rep;
    uint8_t addr[KVN_XPORT_ADDR_MAX];
    size_t alen = sizeof(addr);
    int rc = kvn_xfer_address(n->xfer, addr, &alen, err);
    if (rc < 0)
        return rc;
    r_u64(r, "rpc", KVN_RPC_VERSION);
    r_str(r, "version", "0.1.0");
    r_u64(r, "page_size", n->cfg.page_size);
    r_u64(r, "page_bytes", n->cfg.page_bytes);
    r_u64(r, "l2_pages", n->pool->n_pages);
    r_u64(r, "l1_slots", kvn_xfer_l1_slots(n->xfer));
    r_str(r, "transport", kvn_xfer_transport(n->xfer));
    r_str(r, "write_policy", kvn_config_write_policy_name(n->cfg.write_policy));
    r_bin(r, "addr", addr, alen);
    return 0;
}

static int h_register_l1(struct kvn_node *n, const struct kvn_rpc_req *q, struct kvn_err *err)
{
    if (n->tree) {
        struct kvn_radix_stats st;
        kvn_radix_stats(n->tree, &st, NULL);
        if (st.pending_jobs || !kvn_xfer_idle(n->xfer))
            return kvn_err_set(err, -EBUSY, "%" PRIu64 " copy jobs pending", st.pending_jobs);
    }
    /* the new tree first (it can fail without side effects), then the transport, then swap */
    struct kvn_radix *fresh = NULL;
    int rc = tree_create(n, (uint32_t)q->l1_slots, &fresh, err);
    if (rc < 0)
        return rc;
    rc = kvn_xfer_l1_attach(n->xfer, q->desc, q->desc_len, q->addr, q->addr_len, q->page_bytes,
                            q->l1_slots, err);
    if (rc < 0) {
        kvn_radix_destroy(fresh); /* emits nothing; the previous L1 and tree stay */
        return rc;
    }
    if (n->tree) {
        /* the previous L1's contents are meaningless now: say so (AllBlocksCleared) */
        if (n->cluster)
            kvn_cluster_release_all(n->cluster, n->tree);
        kvn_radix_reset(n->tree, NULL);
        kvn_radix_destroy(n->tree);
    }
    n->tree = fresh;
    locks_clear(n);
    r_u64(&n->rep, "l1_slots", q->l1_slots);
    return 0;
}

static int h_insert(struct kvn_node *n, const struct kvn_rpc_req *q, struct kvn_err *err)
{
    int rc;
    if ((rc = need_tree(n, err)) < 0 || (rc = need_pages(n, q, err)) < 0)
        return rc;
    uint32_t pages = q->n_tokens / n->cfg.page_size;
    if (q->has_slots && q->n_slots != pages)
        return kvn_err_set(err, -EINVAL, "insert: %u slots for %u pages (one L1 slot per page)",
                           q->n_slots, pages);
    if ((rc = check_slots(n, q, kvn_xfer_l1_slots(n->xfer), err)) < 0)
        return rc;
    struct kvn_radix_insert_result res;
    rc = kvn_radix_insert(n->tree, KVN_RADIX_NS_DEFAULT, q->tokens, q->n_tokens,
                          q->has_slots ? q->slots : NULL, ++n->tick, &res, err);
    if (rc < 0)
        return rc;
    struct reply *r = &n->rep;
    r_u64(r, "pages", pages);
    r_u64(r, "prefix_tokens", res.prefix_tokens);
    r_u64(r, "revived_tokens", res.revived_tokens);
    r_u64(r, "new_tokens", res.new_tokens);
    r_u64(r, "inserted_tokens", res.inserted_tokens);
    r_u64(r, "last_node", res.last_node);
    r_u64(r, "backup_ack_id", res.backup_ack_id);
    r_u64(r, "backup_pages", res.backup_pages);
    return 0;
}

static int do_match(struct kvn_node *n, const struct kvn_rpc_req *q, struct kvn_radix_match *m,
                    struct kvn_err *err)
{
    return kvn_radix_match_prefix(n->tree, KVN_RADIX_NS_DEFAULT, q->tokens, q->n_tokens, ++n->tick,
                                  n->slots_buf, KVN_RPC_MAX_TOKENS, m, err);
}

static int h_match(struct kvn_node *n, const struct kvn_rpc_req *q, struct kvn_err *err)
{
    int rc;
    if ((rc = need_tree(n, err)) < 0)
        return rc;
    struct kvn_radix_match m;
    if ((rc = do_match(n, q, &m, err)) < 0)
        return rc;
    struct reply *r = &n->rep;
    uint32_t ps = n->cfg.page_size;
    r_u64(r, "matched_tokens", (uint64_t)m.device_tokens + m.host_tokens);
    r_u64(r, "device_tokens", m.device_tokens);
    r_u64(r, "host_tokens", m.host_tokens);
    r_u64(r, "backed_tokens", m.backed_tokens);
    r_u64(r, "l1_pages", m.device_tokens / ps);
    r_u64(r, "l2_pages", m.host_tokens / ps);
    r_u64(r, "last_device_node", m.last_device_node);
    r_u64(r, "last_host_node", m.last_host_node);
    r_u32s(r, "slots", n->slots_buf, m.n_slots);
    if (n->cluster) {
        struct kvn_overlap o;
        uint32_t local = (m.device_tokens + m.host_tokens) / ps;
        if (kvn_cluster_match(n->cluster, q->tokens, q->n_tokens, local, &o, NULL) == 0) {
            r_bool(r, "remote_found", o.remote_found);
            r_u64(r, "remote_peer", o.remote_found ? o.remote_peer : 0);
            r_u64(r, "remote_pages", o.remote_pages);
            r_u64(r, "fetchable", o.fetchable);
        }
    }
    return 0;
}

static int h_lock(struct kvn_node *n, const struct kvn_rpc_req *q, struct kvn_err *err)
{
    int rc;
    if ((rc = need_tree(n, err)) < 0 || (rc = need_pages(n, q, err)) < 0)
        return rc;
    if (n->lock_free >= MAX_LOCKS)
        return kvn_err_set(err, -ENOSPC, "%u locks held (max)", MAX_LOCKS);
    struct kvn_radix_match m;
    if ((rc = do_match(n, q, &m, err)) < 0)
        return rc;
    if (m.device_tokens == 0)
        return kvn_err_set(err, -ENOENT, "lock: no prefix of these tokens is in L1");
    if ((rc = kvn_radix_lock(n->tree, m.last_device_node, err)) < 0)
        return rc;
    uint32_t i = n->lock_free;
    struct lock_entry *l = &n->locks[i];
    n->lock_free = l->next_free;
    l->used = true;
    l->gen++;
    l->node_id = m.last_device_node;
    l->expires_ms = now_ms() + q->lease_ms;
    n->locks_held++;
    r_u64(&n->rep, "handle", ((uint64_t)l->gen << 32) | i);
    r_u64(&n->rep, "locked_tokens", m.device_tokens);
    r_u64(&n->rep, "lease_ms", q->lease_ms);
    return 0;
}

static int lock_release(struct kvn_node *n, uint32_t i, struct kvn_err *err)
{
    struct lock_entry *l = &n->locks[i];
    int rc = kvn_radix_unlock(n->tree, l->node_id, err);
    l->used = false;
    l->next_free = n->lock_free;
    n->lock_free = i;
    n->locks_held--;
    return rc;
}

static int h_unlock(struct kvn_node *n, const struct kvn_rpc_req *q, struct kvn_err *err)
{
    int rc;
    if ((rc = need_tree(n, err)) < 0)
        return rc;
    uint32_t i = (uint32_t)q->handle;
    uint32_t gen = (uint32_t)(q->handle >> 32);
    if (i >= MAX_LOCKS || !n->locks[i].used || n->locks[i].gen != gen)
        return kvn_err_set(err, -ENOENT,
                           "unlock: no lock with handle %" PRIu64
                           " (released, expired or never taken)",
                           q->handle);
    rc = lock_release(n, i, err);
    /* -ENOENT from the tree: the node went away with a reset; the handle is gone either way */
    return rc == -ENOENT ? 0 : rc;
}

static int h_backup(struct kvn_node *n, const struct kvn_rpc_req *q, struct kvn_err *err)
{
    int rc;
    if ((rc = need_tree(n, err)) < 0 || (rc = need_pages(n, q, err)) < 0)
        return rc;
    struct kvn_radix_match m;
    if ((rc = do_match(n, q, &m, err)) < 0)
        return rc;
    if (m.device_tokens == 0)
        return kvn_err_set(err, -ENOENT, "backup: no prefix of these tokens is in L1");
    struct kvn_radix_job_result res;
    if ((rc = kvn_radix_write_backup(n->tree, m.last_device_node, &res, err)) < 0)
        return rc;
    r_u64(&n->rep, "ack_id", res.ack_id);
    r_u64(&n->rep, "pages", res.n_pages);
    return 0;
}

static int h_load_back(struct kvn_node *n, const struct kvn_rpc_req *q, struct kvn_err *err)
{
    int rc;
    if ((rc = need_tree(n, err)) < 0 || (rc = need_pages(n, q, err)) < 0)
        return rc;
    if (q->has_slots && q->n_slots == 0)
        return kvn_err_set(err, -EINVAL, "load_back: empty slot list");
    if ((rc = check_slots(n, q, kvn_xfer_l1_slots(n->xfer), err)) < 0)
        return rc;
    struct kvn_radix_job_result res;
    rc = kvn_radix_load_back(n->tree, KVN_RADIX_NS_DEFAULT, q->tokens, q->n_tokens,
                             q->has_slots ? q->slots : NULL, q->n_slots, ++n->tick, &res, err);
    if (rc < 0)
        return rc;
    r_u64(&n->rep, "ack_id", res.ack_id);
    r_u64(&n->rep, "pages", res.n_pages);
    r_u64(&n->rep, "prefix_tokens", res.prefix_tokens);
    return 0;
}

static int h_evict(struct kvn_node *n, const struct kvn_rpc_req *q, struct kvn_err *err)
{
    int rc;
    if ((rc = need_tree(n, err)) < 0)
        return rc;
    struct kvn_radix_evict_result res;
    rc = q->tier == KVN_RPC_TIER_L1 ? kvn_radix_evict_l1(n->tree, (uint32_t)q->pages, &res, err)
                                    : kvn_radix_evict_l2(n->tree, (uint32_t)q->pages, &res, err);
    if (rc < 0)
        return rc;
    r_u64(&n->rep, "evicted", res.freed_pages);
    r_u64(&n->rep, "demoted", res.demoted_pages);
    r_u64(&n->rep, "deleted", res.deleted_pages);
    r_u64(&n->rep, "scheduled", res.scheduled_pages);
    r_u64(&n->rep, "ack_id", res.ack_id);
    return 0;
}

static uint32_t lat_bucket(uint64_t us)
{
    if (us < 256)
        return (uint32_t)us;
    uint32_t e = 63u - (uint32_t)__builtin_clzll(us); /* 8 .. 63 */
    if (e > 31)
        return LAT_BUCKETS - 1;
    return 256u + (e - 8u) * 32u + (uint32_t)((us >> (e - 5u)) & 31u);
}

static uint64_t lat_value(uint32_t b)
{
    if (b < 256)
        return b;
    uint32_t e = (b - 256u) / 32u + 8u, sub = (b - 256u) % 32u;
    return (1ull << e) + ((uint64_t)sub << (e - 5u));
}

/* Percentiles from the histogram: O(buckets), cheap enough for every stats call. */
static void latency_percentiles(struct kvn_node *n, uint64_t *p50, uint64_t *p99)
{
    *p50 = *p99 = 0;
    if (!n->lat_n)
        return;
    uint64_t want50 = (n->lat_n + 1) / 2, want99 = (n->lat_n * 99 + 99) / 100, acc = 0;
    bool have50 = false;
    for (uint32_t b = 0; b < LAT_BUCKETS; b++) {
        acc += n->lat_hist[b];
        if (!have50 && acc >= want50) {
            *p50 = lat_value(b);
            have50 = true;
        }
        if (acc >= want99) {
            *p99 = lat_value(b);
            return;
        }
    }
}

static int h_stats(struct kvn_node *n, struct kvn_err *err)
{
    struct reply *r = &n->rep;
    struct kvn_radix_stats st;
    memset(&st, 0, sizeof(st));
    if (n->tree && kvn_radix_stats(n->tree, &st, err) < 0)
        return -EIO;
    struct kvn_xfer_stats xs;
    kvn_xfer_get_stats(n->xfer, &xs);
    struct kvn_evout_stats es;
    kvn_evout_get_stats(n->ev, &es);
    uint64_t p50, p99;
    latency_percentiles(n, &p50, &p99);
    r_u64(r, "page_size", n->cfg.page_size);
    r_u64(r, "page_bytes", n->cfg.page_bytes);
    r_u64(r, "l1_capacity", kvn_xfer_l1_slots(n->xfer));
    r_u64(r, "l1_used", st.l1_used);
    r_u64(r, "l1_free", n->tree ? st.l1_free : kvn_xfer_l1_slots(n->xfer));
    r_u64(r, "l2_capacity", n->pool->n_pages);
    r_u64(r, "l2_used", st.l2_used);
    r_u64(r, "l2_free", n->tree ? st.l2_free : n->pool->n_pages);
    r_u64(r, "nodes", st.nodes);
    r_u64(r, "cached_tokens", st.cached_tokens);
    r_u64(r, "locked_nodes", st.locked_nodes);
    r_u64(r, "protected_nodes", st.protected_nodes);
    r_u64(r, "locks_held", n->locks_held);
    r_u64(r, "pins", st.protected_nodes);
    r_u64(r, "pending_jobs", st.pending_jobs);
    r_u64(r, "pending_pages", st.pending_pages);
    r_u64(r, "orphan_pages", st.orphan_pages);
    r_u64(r, "backups_skipped", st.backups_skipped);
    r_u64(r, "copy_submit_failures", st.copy_submit_failures);
    r_u64(r, "jobs_posted", xs.jobs_posted);
    r_u64(r, "jobs_ok", xs.jobs_ok);
    r_u64(r, "jobs_failed", xs.jobs_failed);
    r_u64(r, "jobs_active", xs.jobs_active);
    r_u64(r, "ops_posted", xs.ops_posted);
    r_u64(r, "ops_failed", xs.ops_failed);
    r_u64(r, "bytes_to_l2", xs.bytes_to_l2);
    r_u64(r, "bytes_to_l1", xs.bytes_to_l1);
    r_u64(r, "acks_ok", n->acks_ok);
    r_u64(r, "acks_failed", n->acks_failed);
    r_u64(r, "ack_errors", n->ack_errors);
    r_u64(r, "lease_expired", n->lease_expired);
    r_u64(r, "events_emitted", n->events_emitted);
    r_u64(r, "events_published", es.events_published);
    r_u64(r, "batches_published", es.batches_published);
    r_u64(r, "events_dropped", es.events_dropped);
    r_u64(r, "batches_dropped", es.batches_dropped);
    r_u64(r, "event_encode_errors", es.encode_errors);
    r_u64(r, "events_next_seq", es.next_seq);
    r_u64(r, "replay_requests", es.replay_requests);
    r_u64(r, "replay_bad", es.replay_bad);
    r_u64(r, "rpc_requests", n->rpc_requests);
    r_u64(r, "rpc_errors", n->rpc_errors);
    r_u64(r, "rpc_dropped", n->rpc_dropped);
    r_u64(r, "rpc_oversized", n->rpc_oversized);
    r_u64(r, "ack_to_publish_p50_us", p50);
    r_u64(r, "ack_to_publish_p99_us", p99);
    r_u64(r, "ack_to_publish_samples", n->lat_n);
    if (n->storage) {
        struct kvn_storage_stats ss;
        kvn_storage_get_stats(n->storage, &ss);
        r_u64(r, "l3_pages_written", ss.pages_written);
        r_u64(r, "l3_failures", ss.failures);
    }
    r_str(r, "transport", kvn_xfer_transport(n->xfer));
    r_bool(r, "stopping", n->stopping);
    if (n->cluster)
        kvn_cluster_pack_stats(n->cluster, &r->pk, &r->n);
    return 0;
}

static int h_reset(struct kvn_node *n, struct kvn_err *err)
{
    if (!n->tree)
        return 0;
    if (n->cluster)
        kvn_cluster_release_all(n->cluster, n->tree); /* pins and reservations go first */
    int rc = kvn_radix_reset(n->tree, err);
    if (rc == 0)
        locks_clear(n); /* the tree dropped every lock with its nodes */
    return rc;
}

static int h_l1_fill(struct kvn_node *n, const struct kvn_rpc_req *q, struct kvn_err *err)
{
    if (!kvn_xfer_l1_standin_slot(n->xfer, 0))
        return kvn_err_set(err, -ENOTSUP, "l1_fill needs the L1 stand-in (kvnode --l1 SIZE)");
    if (q->n_slots == 0)
        return kvn_err_set(err, -EINVAL, "l1_fill: empty slot list");
    int rc = check_slots(n, q, kvn_xfer_l1_slots(n->xfer), err);
    if (rc < 0)
        return rc;
    for (uint32_t i = 0; i < q->n_slots; i++)
        kvn_rpc_fill_pattern(kvn_xfer_l1_standin_slot(n->xfer, q->slots[i]),
                             (size_t)n->cfg.page_bytes, q->seed, q->slots[i]);
    r_u64(&n->rep, "filled", q->n_slots);
    return 0;
}

static int h_l1_checksum(struct kvn_node *n, const struct kvn_rpc_req *q, struct kvn_err *err)
{
    if (!kvn_xfer_l1_standin_slot(n->xfer, 0))
        return kvn_err_set(err, -ENOTSUP, "l1_checksum needs the L1 stand-in (kvnode --l1 SIZE)");
    if (q->n_slots == 0)
        return kvn_err_set(err, -EINVAL, "l1_checksum: empty slot list");
    int rc = check_slots(n, q, kvn_xfer_l1_slots(n->xfer), err);
    if (rc < 0)
        return rc;
    for (uint32_t i = 0; i < q->n_slots; i++)
        n->sums_buf[i] = kvn_rpc_fnv1a(kvn_xfer_l1_standin_slot(n->xfer, q->slots[i]),
                                       (size_t)n->cfg.page_bytes);
    r_u64s(&n->rep, "sums", n->sums_buf, q->n_slots);
    return 0;
}

static int dispatch(struct kvn_node *n, const struct kvn_rpc_req *q, struct kvn_err *err)
{
    if (kvn_cluster_owns_op(q->op)) {
        if (!n->cluster)
            return kvn_err_set(err, -ENOTSUP, "%s: this node runs no cluster (--cluster, --peer)",
                               kvn_rpc_op_name(q->op));
        return kvn_cluster_rpc(n->cluster, n->tree, q, now_ms(), ++n->tick, &n->rep.pk, &n->rep.n,
                               err);
    }
    switch (q->op) {
    case KVN_RPC_HELLO:
        return h_hello(n, err);
    case KVN_RPC_REGISTER_L1:
        return h_register_l1(n, q, err);
    case KVN_RPC_INSERT:
        return h_insert(n, q, err);
    case KVN_RPC_MATCH:
        return h_match(n, q, err);
    case KVN_RPC_LOCK:
        return h_lock(n, q, err);
    case KVN_RPC_UNLOCK:
        return h_unlock(n, q, err);
    case KVN_RPC_BACKUP:
        return h_backup(n, q, err);
    case KVN_RPC_LOAD_BACK:
        return h_load_back(n, q, err);
    case KVN_RPC_EVICT:
        return h_evict(n, q, err);
    case KVN_RPC_STATS:
        return h_stats(n, err);
    case KVN_RPC_RESET:
        return h_reset(n, err);
    case KVN_RPC_L1_FILL:
        return h_l1_fill(n, q, err);
    case KVN_RPC_L1_CHECKSUM:
        return h_l1_checksum(n, q, err);
    default: /* the cluster's ops were handled above */
        break;
    }
    return kvn_err_set(err, -ENOTSUP, "unknown op");
}

/* ---- the control socket -------------------------------------------------------------- */

/* Reads one multipart message; returns frames kept (<= 3) and *total frames. */
static int recv_parts(void *sock, zmq_msg_t *parts, int *total)
{
    int np = 0, more = 1;
    *total = 0;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            if (np == 0 && *total == 0)
                return -1;
            break; /* cannot happen mid-message (atomic delivery) */
        }
        more = zmq_msg_more(&m);
        (*total)++;
        if (np < 3)
            parts[np++] = m;
        else
            zmq_msg_close(&m);
    }
    return np;
}

static void serve_one(struct kvn_node *n, zmq_msg_t *parts, int np, int total)
{
    /* [identity, body] or [identity, "", body] */
    zmq_msg_t *body = NULL;
    bool delim = false;
    if (total == 2 && np == 2) {
        body = &parts[1];
    } else if (total == 3 && np == 3 && zmq_msg_size(&parts[1]) == 0) {
        body = &parts[2];
        delim = true;
    }
    n->rpc_requests++;
    struct kvn_err err;
    kvn_err_clear(&err);
    uint64_t id = 0;
    int rc;
    msgpack_sbuffer_clear(&n->rep.body);
    n->rep.n = 0;
    if (!body) {
        /* no well-formed place for a reply body: answer on the identity if we can */
        n->rpc_dropped++;
        rc = kvn_err_set(&err, -EPROTO, "request has %d frames (want [body] or [\"\", body])",
                         total - 1);
        if (total < 2)
            return;
        delim = total >= 3 && zmq_msg_size(&parts[1]) == 0;
    } else if (zmq_msg_size(body) > KVN_RPC_MAX_FRAME) {
        n->rpc_oversized++;
        rc = kvn_err_set(&err, -EMSGSIZE, "request of %zu bytes exceeds the %u-byte cap",
                         zmq_msg_size(body), KVN_RPC_MAX_FRAME);
    } else {
        rc = kvn_rpc_parse(zmq_msg_data(body), zmq_msg_size(body), &n->req, &err);
        id = n->req.id;
        if (rc == 0) {
            if (n->stopping)
                rc = kvn_err_set(&err, -ESHUTDOWN, "node is shutting down");
            else
                rc = dispatch(n, &n->req, &err);
        }
    }
    if (rc < 0) {
        n->rpc_errors++;
        logf_(n, KVN_LOG_DEBUG, "rpc error %d: %s", rc, err.msg);
    }
    build_reply(n, id, rc, err.msg);
    /* ROUTER drops replies to identities that went away: a vanished client is harmless */
    zmq_msg_t idm;
    zmq_msg_init(&idm);
    zmq_msg_copy(&idm, &parts[0]);
    if (zmq_msg_send(&idm, n->ctl, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&idm);
        return;
    }
    if (delim)
        zmq_send(n->ctl, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT);
    zmq_send(n->ctl, n->out.data, n->out.size, ZMQ_DONTWAIT);
}

static void serve_ctl(struct kvn_node *n)
{
    for (int i = 0; i < REQS_PER_TICK && n->ctl; i++) {
        zmq_msg_t parts[3];
        int total;
        int np = recv_parts(n->ctl, parts, &total);
        if (np < 0)
            return;
        serve_one(n, parts, np, total);
        for (int k = 0; k < np; k++)
            zmq_msg_close(&parts[k]);
    }
}

/* ---- timers, publishing --------------------------------------------------------------- */

static void expire_leases(struct kvn_node *n, uint64_t now)
{
    if (n->locks_held == 0 || now < n->last_lease_scan + 50)
        return;
    n->last_lease_scan = now;
    for (uint32_t i = 0; i < MAX_LOCKS; i++) {
        if (n->locks[i].used && n->locks[i].expires_ms <= now) {
            lock_release(n, i, NULL);
            n->lease_expired++;
        }
    }
}

static void publish(struct kvn_node *n)
{
    int pub = kvn_evout_flush(n->ev);
    if (pub > 0 && n->n_tick_acks) {
        uint64_t t = now_us();
        for (uint32_t i = 0; i < n->n_tick_acks; i++) {
            n->lat_hist[lat_bucket(t - n->tick_acks[i])]++;
            n->lat_n++;
        }
    }
    n->n_tick_acks = 0;
}

/* ---- life cycle ------------------------------------------------------------------------ */

static void cluster_log(void *ctx, int level, const char *msg)
{
    struct kvn_node *n = ctx;
    if (level < KVN_LOG_ERROR)
        level = KVN_LOG_ERROR;
    if (level > KVN_LOG_DEBUG)
        level = KVN_LOG_DEBUG;
    logf_(n, (enum kvn_log_level)level, "cluster: %s", msg);
}

static int cluster_open(struct kvn_node *n, struct kvn_err *err)
{
    const struct kvn_config *cfg = &n->cfg;
    const char *peers[KVN_CONFIG_MAX_PEERS];
    for (uint32_t i = 0; i < cfg->n_peers; i++)
        peers[i] = cfg->peers[i];
    uint32_t l1_slots = kvn_xfer_l1_slots(n->xfer);
    void *l1 = kvn_xfer_l1_standin_slot(n->xfer, 0);
    struct kvn_cluster_cfg cc = {
        .zctx = n->zctx,
        .self_ctl = cfg->listen,
        .events = cfg->events,
        .replay = cfg->replay,
        .topic = cfg->topic,
        .peers = peers,
        .n_peers = cfg->n_peers,
        .transport = kvn_xfer_transport(n->xfer),
        .pool = n->pool,
        .page_size = cfg->page_size,
        .l1_base = l1,
        .l1_bytes = l1 ? (uint64_t)l1_slots * cfg->page_bytes : 0,
        .heartbeat_ms = cfg->heartbeat_ms,
        .timeout_ms = cfg->peer_timeout_ms,
        .fetch_hold_ms = cfg->fetch_hold_ms,
        .log = cluster_log,
        .log_ctx = n,
    };
    int rc = kvn_cluster_create(&cc, &n->cluster, err);
    if (rc == 0)
        logf_(n, KVN_LOG_INFO, "cluster: %u peers configured", cfg->n_peers);
    return rc;
}

int kvn_node_create(const struct kvn_config *cfg, struct kvn_node **out, struct kvn_err *err)
{
    if (!cfg || !out)
        return kvn_err_set(err, -EINVAL, "cfg and out must not be NULL");
    struct kvn_node *n = calloc(1, sizeof(*n));
    if (!n)
        return kvn_err_set(err, -ENOMEM, "no memory for the node");
    n->cfg = *cfg;
    n->sigfd = -1;
    msgpack_sbuffer_init(&n->rep.body);
    msgpack_packer_init(&n->rep.pk, &n->rep.body, msgpack_sbuffer_write);
    msgpack_sbuffer_init(&n->out);
    locks_clear(n);
    int rc;
    /* Block TERM/INT before any library starts a thread (UCX, ZeroMQ): threads inherit
     * the mask, so the signals can only be read through the signalfd. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0 ||
        (n->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC)) < 0) {
        rc = kvn_err_set(err, -errno, "signalfd: %s", strerror(errno));
        goto fail;
    }
    signal(SIGPIPE, SIG_IGN);
    n->slots_buf = malloc(sizeof(uint32_t) * KVN_RPC_MAX_TOKENS);
    n->sums_buf = malloc(sizeof(uint64_t) * KVN_RPC_MAX_SLOTS);
    n->lat_hist = calloc(LAT_BUCKETS, sizeof(uint64_t));
    if (!n->slots_buf || !n->sums_buf || !n->lat_hist) {
        rc = kvn_err_set(err, -ENOMEM, "no memory for buffers");
        goto fail;
    }
    if ((rc = kvn_rpc_req_init(&n->req, err)) < 0)
        goto fail;
    if ((rc = kvn_host_pool_create(&n->pool, cfg->host_pool, cfg->page_bytes, cfg->hugepages,
                                   cfg->numa_node, err)) < 0)
        goto fail;
    logf_(n, KVN_LOG_INFO, "host pool: %s", n->pool->note);
    struct kvn_xfer_cfg xc = {
        .uri = cfg->transport, .pool = n->pool, .delay_ms = cfg->inject_ack_delay_ms};
    if ((rc = kvn_xfer_create(&xc, &n->xfer, err)) < 0)
        goto fail;
    logf_(n, KVN_LOG_INFO, "transport: %s", kvn_xfer_transport(n->xfer));
    if (cfg->storage[0] &&
        (rc = kvn_storage_open(cfg->storage, n->pool, false, &n->storage, err)) < 0)
        goto fail;
    if (cfg->l1) {
        if ((rc = kvn_xfer_l1_standin(n->xfer, cfg->l1, err)) < 0)
            goto fail;
        if ((rc = tree_create(n, kvn_xfer_l1_slots(n->xfer), &n->tree, err)) < 0)
            goto fail;
        logf_(n, KVN_LOG_INFO, "L1 stand-in: %u slots", kvn_xfer_l1_slots(n->xfer));
    }
    n->zctx = zmq_ctx_new();
    if (!n->zctx) {
        rc = kvn_err_set(err, -ENOMEM, "zmq_ctx_new failed");
        goto fail;
    }
    struct kvn_evout_cfg ec = {.zctx = n->zctx,
                               .pub_endpoint = cfg->events,
                               .replay_endpoint = cfg->replay,
                               .topic = cfg->topic,
                               .replay_topic = cfg->replay_topic,
                               .map_format = cfg->events_format == KVN_NODE_EVFMT_MAP,
                               .buffer_steps = cfg->buffer_steps,
                               .dp_rank = cfg->dp_rank};
    if ((rc = kvn_evout_open(&ec, &n->ev, err)) < 0)
        goto fail;
    n->ctl = zmq_socket(n->zctx, ZMQ_ROUTER);
    int64_t maxmsg = MAX_RECV_FRAME;
    int zero = 0, hwm = 10000;
    if (!n->ctl || zmq_setsockopt(n->ctl, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg)) ||
        zmq_setsockopt(n->ctl, ZMQ_LINGER, &zero, sizeof(zero)) ||
        zmq_setsockopt(n->ctl, ZMQ_SNDHWM, &hwm, sizeof(hwm)) ||
        zmq_bind(n->ctl, cfg->listen) != 0) {
        int e = zmq_errno();
        rc = kvn_err_set(err, e == EADDRINUSE ? -EADDRINUSE : -EINVAL, "listen %s: %s", cfg->listen,
                         zmq_strerror(e));
        goto fail;
    }
    if (cfg->cluster && (rc = cluster_open(n, err)) < 0)
        goto fail;
    logf_(n, KVN_LOG_INFO, "listening on %s (rpc v%d)", cfg->listen, KVN_RPC_VERSION);
    *out = n;
    return 0;
fail:
    kvn_node_destroy(n);
    return rc;
}

void kvn_node_destroy(struct kvn_node *n)
{
    if (!n)
        return;
    if (n->cluster) {
        if (n->tree)
            kvn_cluster_release_all(n->cluster, n->tree);
        kvn_cluster_destroy(n->cluster);
    }
    if (n->ctl)
        zmq_close(n->ctl);
    kvn_evout_close(n->ev);
    if (n->zctx)
        zmq_ctx_term(n->zctx);
    if (n->sigfd >= 0)
        close(n->sigfd);
    kvn_radix_destroy(n->tree);
    kvn_xfer_destroy(n->xfer); /* after the tree: the tree only holds indices */
    kvn_storage_close(n->storage);
    kvn_host_pool_destroy(n->pool);
    kvn_rpc_req_fini(&n->req);
    msgpack_sbuffer_destroy(&n->rep.body);
    msgpack_sbuffer_destroy(&n->out);
    free(n->slots_buf);
    free(n->sums_buf);
    free(n->lat_hist);
    free(n);
}

static void on_signal(struct kvn_node *n)
{
    struct signalfd_siginfo si;
    while (read(n->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (!n->stopping)
            logf_(n, KVN_LOG_INFO, "signal %u: draining and stopping", si.ssi_signo);
        n->stopping = true;
    }
    if (n->stopping && n->ctl) {
        zmq_close(n->ctl); /* stop accepting */
        n->ctl = NULL;
    }
}

int kvn_node_run(struct kvn_node *n, struct kvn_err *err)
{
    if (!n)
        return kvn_err_set(err, -EINVAL, "node is NULL");
    uint64_t stop_deadline = 0;
    for (;;) {
        uint64_t now = now_ms();
        zmq_pollitem_t items[4 + 4 * KVN_CLUSTER_MAX_PEERS + 8];
        int ni = 0;
        int i_ctl = -1, i_sig, i_ev = -1;
        if (n->ctl) {
            i_ctl = ni;
            items[ni++] = (zmq_pollitem_t){.socket = n->ctl, .events = ZMQ_POLLIN};
        }
        i_sig = ni;
        items[ni++] = (zmq_pollitem_t){.fd = n->sigfd, .events = ZMQ_POLLIN};
        items[ni++] = (zmq_pollitem_t){.fd = kvn_xfer_wait_fd(n->xfer), .events = ZMQ_POLLIN};
        void *rsock = kvn_evout_replay_socket(n->ev);
        if (rsock) {
            i_ev = ni;
            items[ni++] = (zmq_pollitem_t){.socket = rsock, .events = ZMQ_POLLIN};
        }
        int i_cl = ni, n_cl = 0;
        if (n->cluster) {
            n_cl = kvn_cluster_poll_items(n->cluster, &items[ni],
                                          (int)(sizeof(items) / sizeof(items[0])) - ni);
            ni += n_cl;
        }
        long timeout = 1000;
        if (kvn_xfer_busy(n->xfer)) {
            timeout = 0; /* busy-poll the completion queue while transfers are out */
        } else {
            uint64_t due = kvn_xfer_next_due(n->xfer);
            if (due != UINT64_MAX)
                timeout = due > now ? (long)(due - now) : 0;
            if (n->locks_held && timeout > 50)
                timeout = 50;
        }
        if (n->cluster)
            timeout = kvn_cluster_timeout_ms(n->cluster, now, timeout);
        if (n->stopping && timeout > 10)
            timeout = 10;
        int pr = 0;
        if (timeout == 0 && kvn_xfer_busy(n->xfer) && ++n->spins < SPIN_POLL_EVERY) {
            /* spinning: the sockets wait for the next SPIN_POLL_EVERY-th turn */
        } else {
            n->spins = 0;
            pr = zmq_poll(items, ni, timeout);
        }
        if (pr < 0 && zmq_errno() != EINTR)
            return kvn_err_set(err, -EIO, "zmq_poll: %s", zmq_strerror(zmq_errno()));
        if (pr > 0 && (items[i_sig].revents & ZMQ_POLLIN))
            on_signal(n);
        if (i_ctl >= 0 && n->ctl && pr > 0 && (items[i_ctl].revents & ZMQ_POLLIN))
            serve_ctl(n);
        now = now_ms();
        if (n->cluster) {
            if (pr > 0 && n_cl > 0)
                kvn_cluster_handle(n->cluster, &items[i_cl], n_cl, now);
            kvn_cluster_tick(n->cluster, n->tree, now);
        }
        kvn_xfer_progress(n->xfer, now, on_job_done, n);
        expire_leases(n, now);
        if (i_ev >= 0 && pr > 0 && (items[i_ev].revents & ZMQ_POLLIN))
            kvn_evout_serve_replay(n->ev);
        publish(n);
        if (n->stopping) {
            if (!stop_deadline)
                stop_deadline = now + DRAIN_LIMIT_MS + n->cfg.inject_ack_delay_ms;
            if (kvn_xfer_idle(n->xfer) || now >= stop_deadline)
                break;
        }
    }
    if (!kvn_xfer_idle(n->xfer))
        logf_(n, KVN_LOG_WARN, "stopping with copy jobs still in flight (drain limit)");
    publish(n);
    kvn_evout_drain(n->ev, 1000);
    logf_(n, KVN_LOG_INFO, "stopped");
    return 0;
}
