/*
 * cluster.c - peers, replication in, pins, push reservations, fetch and push (see
 * cluster.h for the picture and the daemon's five call sites).
 */
#include "node/cluster/cluster.h"
#include "node/kvn_msgpack.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "node/cluster/cluster_wire.h"
#include "node/cluster/lease_table.h"
#include "node/cluster/peer_table.h"
#include "node/cluster/push_table.h"
#include "node/events/event_sub.h"
#include "transport/kvn_xport.h"

#define NS0             KVN_RADIX_NS_DEFAULT
#define MAX_ITEMS       (2u * KVN_CLUSTER_MAX_PEERS + 1u)
#define RUN_MAX_PAGES   64u   /* pages coalesced into one RDMA op at most */
#define LAT_SAMPLES     4096u /* ring of recent samples for p50/p99 */
#define REPLAY_RETRY_MS 1000u
#define CQE_BATCH       64

enum item_kind { IT_HB = 1, IT_SUB, IT_SUB_REPLAY, IT_XPORT };

struct item_ref {
    uint8_t kind;
    uint32_t peer;
};

struct kvn_cluster;

struct batch_ctx {
    struct kvn_cluster *c;
    uint32_t peer;
};

struct peer_rt {
    char endpoint[KVN_PEERS_ENDPOINT_MAX]; /* its control endpoint (the peer table's key) */
    struct batch_ctx bctx;                 /* on_batch's context */
    void *hb;                              /* DEALER: heartbeats (async) */
    void *rpc;                             /* DEALER: synchronous calls (fetch, push) */
    struct kvn_events_sub *sub;
    uint64_t sub_since_us;        /* realtime when the subscription started (lag samples) */
    uint64_t replay_seen_ms;      /* when a replay was first seen outstanding, 0 = none */
    struct kvn_wire_hello *hello; /* last hello, NULL before the first */
    struct kvn_xport_peer *xp;
    struct kvn_xport_rmr *rmr;
};

struct lat_ring {
    uint64_t v[LAT_SAMPLES];
    uint64_t n;
};

struct kvn_cluster {
    struct kvn_cluster_cfg cfg;
    char self_ctl[KVN_WIRE_STR_MAX];
    struct kvn_wire_hello self;
    uint8_t *self_blob;
    size_t self_blob_len;
    struct kvn_peers *peers;
    struct peer_rt rt[KVN_CLUSTER_MAX_PEERS];
    struct kvn_gindex *g;
    struct kvn_leases *leases;
    struct kvn_push_table *push;
    struct kvn_xport *x;
    struct kvn_xport_mr *pool_mr, *l1_mr;
    struct item_ref map[MAX_ITEMS];
    int n_map;
    uint64_t next_id;
    msgpack_sbuffer sb;
    int64_t *hash_buf;
    uint32_t hash_cap;
    uint32_t *pages_a, *pages_b; /* KVN_RPC_MAX_TOKENS / page_size each */
    struct lat_ring lag, fetch_lat;
    struct kvn_cluster_stats st;
    uint64_t op_seq;
};

/* ---- small helpers -------------------------------------------------------------------- */

static uint64_t clock_us(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t mono_us(void)
{
    return clock_us(CLOCK_MONOTONIC);
}

static uint64_t real_us(void)
{
    return clock_us(CLOCK_REALTIME);
}

/* floor(us / 1000) is floor(ns / 1e6): the same milliseconds as reading them directly */
static uint64_t mono_ms(void)
{
    return mono_us() / 1000u;
}

static void clog_(const struct kvn_cluster *c, int lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void clog_(const struct kvn_cluster *c, int lvl, const char *fmt, ...)
{
    if (!c->cfg.log)
        return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    c->cfg.log(c->cfg.log_ctx, lvl, buf);
}

static void lat_add(struct lat_ring *r, uint64_t v)
{
    r->v[r->n % LAT_SAMPLES] = v;
    r->n++;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void lat_pct(const struct lat_ring *r, uint64_t *p50, uint64_t *p99)
{
    uint64_t n = r->n < LAT_SAMPLES ? r->n : LAT_SAMPLES;
    *p50 = *p99 = 0;
    if (!n)
        return;
    uint64_t *tmp = malloc(sizeof(uint64_t) * n);
    if (!tmp)
        return;
    memcpy(tmp, r->v, sizeof(uint64_t) * n);
    qsort(tmp, n, sizeof(uint64_t), cmp_u64);
    *p50 = tmp[(n - 1) / 2];
    *p99 = tmp[(n - 1) * 99 / 100];
    free(tmp);
}

static void pk_str(msgpack_packer *pk, const char *s)
{
    size_t l = strlen(s);
    msgpack_pack_str(pk, l);
    msgpack_pack_str_body(pk, s, l);
}

static void kv_u64(msgpack_packer *pk, uint32_t *nk, const char *k, uint64_t v)
{
    pk_str(pk, k);
    msgpack_pack_uint64(pk, v);
    (*nk)++;
}

static void kv_str(msgpack_packer *pk, uint32_t *nk, const char *k, const char *v)
{
    pk_str(pk, k);
    pk_str(pk, v);
    (*nk)++;
}

static void kv_bool(msgpack_packer *pk, uint32_t *nk, const char *k, bool v)
{
    pk_str(pk, k);
    if (v)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
    (*nk)++;
}

static void kv_u32s(msgpack_packer *pk, uint32_t *nk, const char *k, const uint32_t *v, uint32_t n)
{
    pk_str(pk, k);
    msgpack_pack_array(pk, n);
    for (uint32_t i = 0; i < n; i++)
        msgpack_pack_uint32(pk, v[i]);
    (*nk)++;
}

static bool get_u64(const msgpack_object *m, const char *key, uint64_t *out)
{
    const msgpack_object *o = kvn_mp_map_get(m, key);
    if (!o || o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return false;
    *out = o->via.u64;
    return true;
}

/* ---- peers: set up, tear down ----------------------------------------------------------- */

static void on_batch(void *ctx, uint64_t seq, double ts, uint32_t n_events);

static void peer_teardown(struct kvn_cluster *c, uint32_t id)
{
    struct peer_rt *p = &c->rt[id];
    if (p->sub) {
        kvn_events_sub_destroy(p->sub);
        p->sub = NULL;
    }
    kvn_gindex_drop_peer(c->g, id, NULL);
    if (p->rmr) {
        kvn_xport_rmr_free(p->rmr);
        p->rmr = NULL;
    }
    if (p->xp) {
        kvn_xport_disconnect(p->xp);
        p->xp = NULL;
    }
    p->replay_seen_ms = 0;
}

static int open_dealer(struct kvn_cluster *c, const char *endpoint, bool immediate, void **out,
                       struct kvn_err *err)
{
    void *s = zmq_socket(c->cfg.zctx, ZMQ_DEALER);
    int zero = 0, one = 1, hwm = 16;
    int64_t maxmsg = 4 * KVN_RPC_MAX_FRAME;
    if (!s || zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero)) ||
        zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof(hwm)) ||
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg)) ||
        (immediate && zmq_setsockopt(s, ZMQ_IMMEDIATE, &one, sizeof(one))) ||
        zmq_connect(s, endpoint) != 0) {
        int e = zmq_errno();
        if (s)
            zmq_close(s);
        return kvn_err_set(err, -EINVAL, "cannot connect to peer %s: %s", endpoint,
                           zmq_strerror(e));
    }
    *out = s;
    return 0;
}

/* A peer entered the table: its run-time slot and its heartbeat socket. */
static int rt_init(struct kvn_cluster *c, uint32_t id, const char *endpoint, struct kvn_err *err)
{
    struct peer_rt *p = &c->rt[id];
    snprintf(p->endpoint, sizeof(p->endpoint), "%s", endpoint);
    p->bctx = (struct batch_ctx){.c = c, .peer = id};
    return open_dealer(c, endpoint, true, &p->hb, err);
}

/* A peer joined (or came back with a new incarnation): transport and subscription. */
static int peer_setup(struct kvn_cluster *c, uint32_t id, struct kvn_err *err)
{
    struct peer_rt *p = &c->rt[id];
    const struct kvn_wire_hello *h = p->hello;
    int rc = kvn_xport_connect(c->x, h->addr, h->addr_len, &p->xp, err);
    if (rc < 0)
        return rc;
    if ((rc = kvn_xport_rmr_unpack(p->xp, h->pool_desc, h->pool_desc_len, &p->rmr, err)) < 0) {
        c->st.bad_descriptors++;
        goto fail;
    }
    if ((uint64_t)kvn_xport_rmr_len(p->rmr) < (uint64_t)h->pool_pages * h->page_bytes) {
        c->st.bad_descriptors++;
        rc = kvn_err_set(err, -EPROTO, "peer %s announces %u pages but registered only %zu bytes",
                         h->ctl, h->pool_pages, kvn_xport_rmr_len(p->rmr));
        goto fail;
    }
    if (h->events[0]) {
        struct kvn_events_sub_config sc = {.endpoint = h->events,
                                           .replay_endpoint = h->replay[0] ? h->replay : NULL,
                                           .topic = h->topic,
                                           .peer = id,
                                           .on_batch = on_batch,
                                           .on_batch_ctx = &p->bctx};
        p->sub_since_us = real_us();
        if ((rc = kvn_events_sub_create(c->cfg.zctx, c->g, &sc, &p->sub, err)) < 0)
            goto fail;
    } else {
        kvn_gindex_peer_add(c->g, id, NULL);
    }
    return 0;
fail:
    peer_teardown(c, id);
    return rc;
}

/* Applies a hello received from (or about) a peer; id = UINT32_MAX: find by its ctl. */
static int apply_hello(struct kvn_cluster *c, uint32_t id, const void *blob, size_t len,
                       uint64_t now, struct kvn_err *err)
{
    struct kvn_wire_hello *h = malloc(sizeof(*h));
    if (!h)
        return kvn_err_set(err, -ENOMEM, "no memory for a hello");
    int rc = kvn_wire_hello_decode(blob, len, h, err);
    if (rc == 0)
        rc = kvn_wire_hello_compatible(&c->self, h, err);
    if (rc == 0 && h->node_id == c->self.node_id)
        rc = kvn_err_set(err, -ELOOP, "peer_hello from this node itself (%s)", h->ctl);
    if (rc == 0 && id == UINT32_MAX) {
        rc = kvn_peers_find(c->peers, h->ctl, &id, NULL);
        if (rc == -ENOENT) {
            if (kvn_peers_count(c->peers) >= KVN_CLUSTER_MAX_PEERS)
                rc = kvn_err_set(err, -ENOSPC, "%u peers already", KVN_CLUSTER_MAX_PEERS);
            else if ((rc = kvn_peers_add(c->peers, h->ctl, &id, err)) == 0 &&
                     (rc = rt_init(c, id, h->ctl, err)) == 0)
                clog_(c, 2, "peer %u: %s introduced itself", id, h->ctl);
        } else if (rc < 0) {
            kvn_err_set(err, rc, "peer_hello: bad ctl endpoint \"%s\"", h->ctl);
        }
    }
    enum kvn_peer_change ch = KVN_PEER_REFRESHED;
    if (rc == 0)
        rc = kvn_peers_heard(c->peers, id, h->node_id, h->inc, now, &ch, err);
    if (rc < 0) {
        c->st.hello_bad++;
        free(h);
        return rc;
    }
    c->st.hello_recv++;
    struct peer_rt *p = &c->rt[id];
    if (ch == KVN_PEER_REFRESHED) {
        free(h);
        return 0;
    }
    if (ch == KVN_PEER_RESTARTED) {
        c->st.peer_restarts++;
        clog_(c, 2, "peer %u (%s) restarted: relearning its blocks", id, h->ctl);
    } else {
        c->st.peer_joins++;
        clog_(c, 2, "peer %u (%s) joined", id, h->ctl);
    }
    peer_teardown(c, id);
    free(p->hello);
    p->hello = h;
    /* the hello itself was fine: a failed setup (transport, descriptor) is ours to report,
     * not a refusal of the peer; it stays unusable for data until its next incarnation */
    struct kvn_err se;
    if (peer_setup(c, id, &se) < 0)
        clog_(c, 0, "peer %u (%s) is up but unusable for fetch/push: %s", id, h->ctl, se.msg);
    return 0;
}

static void on_batch(void *ctx, uint64_t seq, double ts, uint32_t n_events)
{
    const struct batch_ctx *b = ctx;
    struct kvn_cluster *c = b->c;
    (void)seq;
    (void)n_events;
    uint64_t t = (uint64_t)(ts * 1e6);
    uint64_t now = real_us();
    /* only batches published while we were subscribed: replayed history says nothing
     * about replication lag */
    if (t >= c->rt[b->peer].sub_since_us && now >= t)
        lat_add(&c->lag, now - t);
}

/* ---- heartbeats ----------------------------------------------------------------------- */

static int pack_request(struct kvn_cluster *c, const char *op, uint64_t id, uint32_t n_args)
{
    msgpack_sbuffer_clear(&c->sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &c->sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3 + n_args);
    pk_str(&pk, "v");
    msgpack_pack_uint32(&pk, KVN_RPC_VERSION);
    pk_str(&pk, "op");
    pk_str(&pk, op);
    pk_str(&pk, "id");
    msgpack_pack_uint64(&pk, id);
    return 0;
}

static void send_hello(struct kvn_cluster *c, uint32_t id)
{
    struct peer_rt *p = &c->rt[id];
    if (!p->hb)
        return;
    pack_request(c, "peer_hello", ++c->next_id, 1);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &c->sb, msgpack_sbuffer_write);
    pk_str(&pk, "hello");
    msgpack_pack_bin(&pk, c->self_blob_len);
    msgpack_pack_bin_body(&pk, c->self_blob, c->self_blob_len);
    if (zmq_send(p->hb, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) == 0 &&
        zmq_send(p->hb, c->sb.data, c->sb.size, ZMQ_DONTWAIT) >= 0)
        c->st.hello_sent++;
}

/* A reply on a heartbeat socket: ["", reply]. */
static void hb_readable(struct kvn_cluster *c, uint32_t id, uint64_t now)
{
    struct peer_rt *p = &c->rt[id];
    for (int k = 0; k < 64; k++) {
        zmq_msg_t m[3];
        int np = 0, more = 1;
        while (more) {
            zmq_msg_t x;
            zmq_msg_init(&x);
            if (zmq_msg_recv(&x, p->hb, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&x);
                break;
            }
            more = zmq_msg_more(&x);
            if (np < 3)
                m[np++] = x;
            else
                zmq_msg_close(&x);
        }
        if (np == 0)
            return;
        const zmq_msg_t *body = &m[np - 1];
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        size_t off = 0;
        struct kvn_err e;
        kvn_err_clear(&e);
        if (msgpack_unpack_next(&up, zmq_msg_data((zmq_msg_t *)body), zmq_msg_size(body), &off) ==
            MSGPACK_UNPACK_SUCCESS) {
            const msgpack_object *ok = kvn_mp_map_get(&up.data, "ok");
            const msgpack_object *hb = kvn_mp_map_get(&up.data, "hello");
            if (ok && ok->type == MSGPACK_OBJECT_BOOLEAN && ok->via.boolean && hb &&
                hb->type == MSGPACK_OBJECT_BIN) {
                if (apply_hello(c, id, hb->via.bin.ptr, hb->via.bin.size, now, &e) < 0)
                    clog_(c, 1, "peer %u hello refused: %s", id, e.msg);
            } else {
                const msgpack_object *em = kvn_mp_map_get(&up.data, "error");
                c->st.hello_bad++;
                if (em && em->type == MSGPACK_OBJECT_STR)
                    clog_(c, 1, "peer %u refused our hello: %.*s", id, (int)em->via.str.size,
                          em->via.str.ptr);
            }
        } else {
            c->st.hello_bad++;
        }
        msgpack_unpacked_destroy(&up);
        for (int i = 0; i < np; i++)
            zmq_msg_close(&m[i]);
    }
}

/* ---- life cycle ------------------------------------------------------------------------ */

static int host_of(const char *endpoint, char *host, size_t cap)
{
    const char *s = strstr(endpoint, "://");
    s = s ? s + 3 : endpoint;
    const char *colon = strrchr(s, ':');
    size_t n = colon ? (size_t)(colon - s) : strlen(s);
    if (n == 0 || n >= cap)
        return -1;
    memcpy(host, s, n);
    host[n] = 0;
    if (strcmp(host, "*") == 0 || strcmp(host, "0.0.0.0") == 0)
        strcpy(host, "any");
    return 0;
}

static int copy_str(char *dst, const char *src, const char *what, struct kvn_err *err)
{
    if (!src)
        src = "";
    if (strlen(src) >= KVN_WIRE_STR_MAX)
        return kvn_err_set(err, -EINVAL, "%s is longer than %u bytes", what, KVN_WIRE_STR_MAX - 1);
    strcpy(dst, src);
    return 0;
}

int kvn_cluster_create(const struct kvn_cluster_cfg *cfg, struct kvn_cluster **out,
                       struct kvn_err *err)
{
    if (!cfg || !out || !cfg->zctx || !cfg->pool || !cfg->self_ctl || !cfg->self_ctl[0] ||
        !cfg->transport || cfg->page_size == 0 || (cfg->n_peers && !cfg->peers))
        return kvn_err_set(err, -EINVAL,
                           "cluster config needs zctx, pool, self_ctl, transport, page_size");
    if (cfg->n_peers > KVN_CLUSTER_MAX_PEERS)
        return kvn_err_set(err, -EINVAL, "%u peers (max %u)", cfg->n_peers, KVN_CLUSTER_MAX_PEERS);
    struct kvn_cluster *c = calloc(1, sizeof(*c));
    if (!c)
        return kvn_err_set(err, -ENOMEM, "no memory for the cluster");
    c->cfg = *cfg;
    c->cfg.peers = NULL;
    if (!c->cfg.rpc_timeout_ms)
        c->cfg.rpc_timeout_ms = 1000;
    if (!c->cfg.op_timeout_ms)
        c->cfg.op_timeout_ms = 2000;
    msgpack_sbuffer_init(&c->sb);
    int rc;
    struct kvn_wire_hello *s = &c->self;
    if ((rc = copy_str(c->self_ctl, cfg->self_ctl, "self_ctl", err)) < 0 ||
        (rc = copy_str(s->ctl, cfg->self_ctl, "self_ctl", err)) < 0 ||
        (rc = copy_str(s->events, cfg->events, "events", err)) < 0 ||
        (rc = copy_str(s->replay, cfg->replay, "replay", err)) < 0 ||
        (rc = copy_str(s->topic, cfg->topic, "topic", err)) < 0)
        goto fail;
    if (getrandom(&s->node_id, sizeof(s->node_id), 0) != sizeof(s->node_id) ||
        getrandom(&s->inc, sizeof(s->inc), 0) != sizeof(s->inc)) {
        rc = kvn_err_set(err, -EIO, "getrandom failed");
        goto fail;
    }
    if (s->node_id == 0)
        s->node_id = 1;
    s->page_size = cfg->page_size;
    s->page_bytes = cfg->pool->page_bytes;
    s->pool_pages = cfg->pool->n_pages;
    c->hash_cap = KVN_RPC_MAX_TOKENS / cfg->page_size + 1;
    c->hash_buf = malloc(sizeof(int64_t) * c->hash_cap);
    c->pages_a = malloc(sizeof(uint32_t) * c->hash_cap);
    c->pages_b = malloc(sizeof(uint32_t) * c->hash_cap);
    if (!c->hash_buf || !c->pages_a || !c->pages_b) {
        rc = kvn_err_set(err, -ENOMEM, "no memory for cluster buffers");
        goto fail;
    }
    struct kvn_xport_attr xa;
    kvn_xport_attr_init(&xa);
    xa.op_timeout_ms = c->cfg.op_timeout_ms;
    char host[KVN_WIRE_STR_MAX];
    if (host_of(cfg->self_ctl, host, sizeof(host)) == 0 && strcmp(host, "localhost") != 0)
        xa.bind_host = host;
    if ((rc = kvn_xport_open(cfg->transport, &xa, &c->x, err)) < 0)
        goto fail;
    if ((rc = copy_str(s->transport, kvn_xport_name(c->x), "transport", err)) < 0)
        goto fail;
    if ((rc = kvn_xport_mr_reg(c->x, cfg->pool->base,
                               (size_t)cfg->pool->n_pages * cfg->pool->page_bytes,
                               KVN_XPORT_ACCESS_ALL, &c->pool_mr, err)) < 0)
        goto fail;
    if (cfg->l1_base && cfg->l1_bytes &&
        (rc = kvn_xport_mr_reg(c->x, cfg->l1_base, (size_t)cfg->l1_bytes, KVN_XPORT_ACCESS_LOCAL,
                               &c->l1_mr, err)) < 0)
        goto fail;
    size_t len = sizeof(s->addr);
    if ((rc = kvn_xport_address(c->x, s->addr, &len, err)) < 0)
        goto fail;
    s->addr_len = (uint32_t)len;
    len = sizeof(s->pool_desc);
    if ((rc = kvn_xport_mr_pack(c->pool_mr, s->pool_desc, &len, err)) < 0)
        goto fail;
    s->pool_desc_len = (uint32_t)len;
    c->self_blob = malloc(KVN_WIRE_HELLO_MAX);
    if (!c->self_blob) {
        rc = kvn_err_set(err, -ENOMEM, "no memory for the hello");
        goto fail;
    }
    if ((rc = kvn_wire_hello_encode(s, c->self_blob, KVN_WIRE_HELLO_MAX, &c->self_blob_len, err)) <
        0)
        goto fail;
    struct kvn_peers_config pc = {.max_peers = KVN_CLUSTER_MAX_PEERS,
                                  .heartbeat_ms = cfg->heartbeat_ms,
                                  .timeout_ms = cfg->timeout_ms,
                                  .self_node_id = s->node_id};
    struct kvn_gindex_config gc = {.max_peers = KVN_CLUSTER_MAX_PEERS, .seed = s->inc};
    if ((rc = kvn_peers_create(&pc, &c->peers, err)) < 0 ||
        (rc = kvn_gindex_create(&gc, &c->g, err)) < 0 ||
        (rc = kvn_leases_create(0, &c->leases, err)) < 0 ||
        (rc = kvn_push_create(0, cfg->pool->n_pages, &c->push, err)) < 0)
        goto fail;
    for (uint32_t i = 0; i < cfg->n_peers; i++) {
        uint32_t id;
        if (strcmp(cfg->peers[i], cfg->self_ctl) == 0) {
            rc = kvn_err_set(err, -EINVAL, "--peer %s is this node's own endpoint", cfg->peers[i]);
            goto fail;
        }
        rc = kvn_peers_add(c->peers, cfg->peers[i], &id, err);
        if (rc == -EEXIST)
            continue;
        if (rc < 0 || (rc = rt_init(c, id, cfg->peers[i], err)) < 0)
            goto fail;
    }
    *out = c;
    return 0;
fail:
    kvn_cluster_destroy(c);
    return rc;
}

struct expiry_ctx {
    struct kvn_cluster *c;
    struct kvn_radix *tree;
};

static void lease_expired(void *ctx, const struct kvn_lease_info *li)
{
    struct expiry_ctx *x = ctx;
    x->c->st.pin_expired++;
    if (x->tree)
        kvn_radix_unprotect(x->tree, li->node_id, NULL);
}

static void res_expired(void *ctx, const struct kvn_push_view *v)
{
    struct expiry_ctx *x = ctx;
    if (x->tree)
        kvn_radix_release_l2(x->tree, v->pages, v->n_pages, NULL);
}

void kvn_cluster_release_all(struct kvn_cluster *c, struct kvn_radix *tree)
{
    if (!c)
        return;
    struct expiry_ctx x = {c, tree};
    kvn_leases_expire(c->leases, UINT64_MAX, lease_expired, &x);
    kvn_push_expire(c->push, UINT64_MAX, res_expired, &x);
}

void kvn_cluster_destroy(struct kvn_cluster *c)
{
    if (!c)
        return;
    for (uint32_t i = 0; i < KVN_CLUSTER_MAX_PEERS; i++) {
        struct peer_rt *p = &c->rt[i];
        if (p->sub)
            kvn_events_sub_destroy(p->sub);
        if (p->hb)
            zmq_close(p->hb);
        if (p->rpc)
            zmq_close(p->rpc);
        free(p->hello);
    }
    kvn_xport_close(c->x); /* releases peers, mrs, rmrs */
    kvn_peers_destroy(c->peers);
    kvn_gindex_destroy(c->g);
    kvn_leases_destroy(c->leases);
    kvn_push_destroy(c->push);
    msgpack_sbuffer_destroy(&c->sb);
    free(c->self_blob);
    free(c->hash_buf);
    free(c->pages_a);
    free(c->pages_b);
    free(c);
}

/* ---- the loop --------------------------------------------------------------------------- */

int kvn_cluster_poll_items(struct kvn_cluster *c, zmq_pollitem_t *items, int cap)
{
    if (!c || !items || cap <= 0)
        return 0;
    int n = 0;
    c->n_map = 0;
#define ADD(sock_, fd_, kind_, peer_)                                                              \
    do {                                                                                           \
        if (n < cap && c->n_map < (int)MAX_ITEMS) {                                                \
            items[n++] = (zmq_pollitem_t){.socket = (sock_), .fd = (fd_), .events = ZMQ_POLLIN};   \
            c->map[c->n_map++] = (struct item_ref){.kind = (kind_), .peer = (peer_)};              \
        }                                                                                          \
    } while (0)
    ADD(NULL, kvn_xport_wait_fd(c->x), IT_XPORT, 0);
    for (uint32_t i = 0; i < kvn_peers_count(c->peers); i++) {
        struct peer_rt *p = &c->rt[i];
        if (p->hb)
            ADD(p->hb, 0, IT_HB, i);
        if (p->sub) {
            ADD(kvn_events_sub_socket(p->sub), 0, IT_SUB, i);
            void *rs = kvn_events_sub_replay_socket(p->sub);
            if (rs)
                ADD(rs, 0, IT_SUB_REPLAY, i);
        }
    }
#undef ADD
    return n;
}

void kvn_cluster_handle(struct kvn_cluster *c, const zmq_pollitem_t *items, int n, uint64_t now_ms)
{
    if (!c || !items)
        return;
    bool sub_done[KVN_CLUSTER_MAX_PEERS] = {0};
    for (int i = 0; i < n && i < c->n_map; i++) {
        if (!(items[i].revents & ZMQ_POLLIN))
            continue;
        uint32_t id = c->map[i].peer;
        switch (c->map[i].kind) {
        case IT_HB:
            if (c->rt[id].hb == items[i].socket)
                hb_readable(c, id, now_ms);
            break;
        case IT_SUB:
        case IT_SUB_REPLAY:
            /* the sub may have been replaced by a hello handled just above */
            if (c->rt[id].sub && !sub_done[id] &&
                (items[i].socket == kvn_events_sub_socket(c->rt[id].sub) ||
                 items[i].socket == kvn_events_sub_replay_socket(c->rt[id].sub))) {
                struct kvn_err e;
                if (kvn_events_sub_handle(c->rt[id].sub, &e) < 0)
                    clog_(c, 1, "peer %u events: %s", id, e.msg);
                sub_done[id] = true;
            }
            break;
        default:
            break;
        }
    }
}

static void drain_cq(struct kvn_cluster *c)
{
    struct kvn_xport_cqe cq[CQE_BATCH];
    while (kvn_xport_poll(c->x, cq, CQE_BATCH) > 0)
        ; /* the target side only progresses; our own ops are waited for synchronously */
}

void kvn_cluster_tick(struct kvn_cluster *c, struct kvn_radix *tree, uint64_t now)
{
    if (!c)
        return;
    drain_cq(c);
    uint32_t ids[KVN_CLUSTER_MAX_PEERS];
    int nd = kvn_peers_tick(c->peers, now, ids, KVN_CLUSTER_MAX_PEERS);
    for (int i = 0; i < nd && i < (int)KVN_CLUSTER_MAX_PEERS; i++) {
        clog_(c, 1, "peer %u (%s) stopped answering: its blocks are dropped", ids[i],
              kvn_cluster_peer_endpoint(c, ids[i]));
        c->st.peer_deaths++;
        peer_teardown(c, ids[i]);
        /* a fresh socket: nothing queued for the dead incarnation */
        if (c->rt[ids[i]].hb) {
            zmq_close(c->rt[ids[i]].hb);
            c->rt[ids[i]].hb = NULL;
            open_dealer(c, kvn_cluster_peer_endpoint(c, ids[i]), true, &c->rt[ids[i]].hb, NULL);
        }
        if (c->rt[ids[i]].rpc) {
            zmq_close(c->rt[ids[i]].rpc);
            c->rt[ids[i]].rpc = NULL;
        }
    }
    int nh = kvn_peers_due(c->peers, now, ids, KVN_CLUSTER_MAX_PEERS);
    for (int i = 0; i < nh; i++)
        send_hello(c, ids[i]);
    for (uint32_t i = 0; i < kvn_peers_count(c->peers); i++) {
        struct peer_rt *p = &c->rt[i];
        if (!p->sub)
            continue;
        struct kvn_events_sub_stats ss;
        kvn_events_sub_get_stats(p->sub, &ss);
        if (!ss.replaying) {
            p->replay_seen_ms = 0;
        } else if (!p->replay_seen_ms) {
            p->replay_seen_ms = now;
        } else if (now - p->replay_seen_ms >= REPLAY_RETRY_MS) {
            kvn_events_sub_retry_replay(p->sub, NULL);
            p->replay_seen_ms = now;
        }
    }
    struct expiry_ctx x = {c, tree};
    kvn_leases_expire(c->leases, now, lease_expired, &x);
    kvn_push_expire(c->push, now, res_expired, &x);
}

long kvn_cluster_timeout_ms(const struct kvn_cluster *c, uint64_t now, long max_ms)
{
    if (!c)
        return max_ms;
    if (kvn_xport_outstanding(c->x))
        return 0;
    /* a peer is reading pinned pages or writing reserved ones: with manual-progress
     * transports (libfabric tcp, UCX over tcp) the target must keep progressing, so the
     * loop wakes at least every millisecond while a pin or a reservation is open (both are
     * bounded by leases).  Not a busy poll: on a loaded machine a spinning target steals
     * the CPU the reader needs. */
    struct kvn_push_stats ps;
    kvn_push_get_stats(c->push, &ps);
    if ((kvn_leases_held(c->leases) || ps.active) && max_ms > 1)
        max_ms = 1;
    uint64_t d = kvn_peers_next_deadline(c->peers);
    uint64_t l = kvn_leases_next_expiry(c->leases);
    uint64_t r = kvn_push_next_deadline(c->push);
    if (l < d)
        d = l;
    if (r < d)
        d = r;
    if (d == UINT64_MAX)
        return max_ms;
    if (d <= now)
        return 0;
    return d - now < (uint64_t)max_ms ? (long)(d - now) : max_ms;
}

const char *kvn_cluster_peer_endpoint(const struct kvn_cluster *c, uint32_t id)
{
    if (!c || id >= kvn_peers_count(c->peers))
        return NULL;
    return c->rt[id].endpoint;
}

/* ---- synchronous calls to a peer (fetch, push) ----------------------------------------- */

struct call_args {
    const int32_t *tokens;
    uint32_t n_tokens;
    bool has_lease;
    uint64_t lease_ms;
    bool has_handle;
    uint64_t handle;
};

struct call_reply {
    msgpack_unpacked up;
    zmq_msg_t msg;
    bool have;
};

static void call_reply_free(struct call_reply *r)
{
    if (r->have) {
        msgpack_unpacked_destroy(&r->up);
        zmq_msg_close(&r->msg);
        r->have = false;
    }
}

/* Sends op to peer id and waits (bounded) for its reply; an error reply becomes its code. */
static int call_peer(struct kvn_cluster *c, uint32_t id, const char *op, const struct call_args *a,
                     struct call_reply *r, struct kvn_err *err)
{
    struct peer_rt *p = &c->rt[id];
    const char *ep = kvn_cluster_peer_endpoint(c, id);
    r->have = false;
    if (!p->rpc) {
        int rc = open_dealer(c, ep, false, &p->rpc, err);
        if (rc < 0)
            return rc;
    }
    uint64_t rid = ++c->next_id;
    pack_request(c, op, rid, (a->tokens ? 1 : 0) + a->has_lease + a->has_handle);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &c->sb, msgpack_sbuffer_write);
    if (a->tokens) {
        pk_str(&pk, "tokens");
        msgpack_pack_array(&pk, a->n_tokens);
        for (uint32_t i = 0; i < a->n_tokens; i++)
            msgpack_pack_int32(&pk, a->tokens[i]);
    }
    if (a->has_lease) {
        pk_str(&pk, "lease_ms");
        msgpack_pack_uint64(&pk, a->lease_ms);
    }
    if (a->has_handle) {
        pk_str(&pk, "handle");
        msgpack_pack_uint64(&pk, a->handle);
    }
    if (zmq_send(p->rpc, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(p->rpc, c->sb.data, c->sb.size, ZMQ_DONTWAIT) < 0)
        return kvn_err_set(err, -EIO, "%s to %s: cannot send: %s", op, ep,
                           zmq_strerror(zmq_errno()));
    uint64_t deadline = mono_ms() + c->cfg.rpc_timeout_ms;
    for (;;) {
        uint64_t now = mono_ms();
        if (now >= deadline)
            break;
        zmq_pollitem_t it = {.socket = p->rpc, .events = ZMQ_POLLIN};
        /* keep the transport progressing: the peer may be reading from us meanwhile */
        drain_cq(c);
        long to = (long)(deadline - now);
        if (to > 5)
            to = 5;
        if (zmq_poll(&it, 1, to) <= 0)
            continue;
        zmq_msg_t m;
        zmq_msg_init(&m);
        int more = 1;
        bool body_ok = false;
        while (more) {
            zmq_msg_close(&m);
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, p->rpc, ZMQ_DONTWAIT) < 0)
                break;
            more = zmq_msg_more(&m);
            body_ok = !more;
        }
        if (!body_ok) {
            zmq_msg_close(&m);
            continue;
        }
        msgpack_unpacked_init(&r->up);
        size_t off = 0;
        if (msgpack_unpack_next(&r->up, zmq_msg_data(&m), zmq_msg_size(&m), &off) !=
            MSGPACK_UNPACK_SUCCESS) {
            msgpack_unpacked_destroy(&r->up);
            zmq_msg_close(&m);
            continue;
        }
        uint64_t got;
        if (!get_u64(&r->up.data, "id", &got) || got != rid) {
            msgpack_unpacked_destroy(&r->up); /* a late reply to an earlier call */
            zmq_msg_close(&m);
            continue;
        }
        r->msg = m;
        r->have = true;
        const msgpack_object *ok = kvn_mp_map_get(&r->up.data, "ok");
        if (ok && ok->type == MSGPACK_OBJECT_BOOLEAN && ok->via.boolean)
            return 0;
        const msgpack_object *code = kvn_mp_map_get(&r->up.data, "code");
        const msgpack_object *em = kvn_mp_map_get(&r->up.data, "error");
        int rc =
            code && code->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ? (int)code->via.i64 : -EPROTO;
        kvn_err_set(err, rc, "%s at %s: %.*s", op, ep,
                    em && em->type == MSGPACK_OBJECT_STR ? (int)em->via.str.size : 0,
                    em && em->type == MSGPACK_OBJECT_STR ? em->via.str.ptr : "");
        call_reply_free(r);
        return rc;
    }
    /* the socket may hold a late reply now: drop it with the socket */
    zmq_close(p->rpc);
    p->rpc = NULL;
    return kvn_err_set(err, -ETIMEDOUT, "%s at %s: no reply within %u ms", op, ep,
                       c->cfg.rpc_timeout_ms);
}

/* Reads reply key as an array of uint32 into out[0..cap). */
static int reply_u32s(const struct call_reply *r, const char *key, uint32_t *out, uint32_t cap,
                      uint32_t *n)
{
    const msgpack_object *o = kvn_mp_map_get(&r->up.data, key);
    if (!o || o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size > cap)
        return -EPROTO;
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        const msgpack_object *e = &o->via.array.ptr[i];
        if (e->type != MSGPACK_OBJECT_POSITIVE_INTEGER || e->via.u64 > UINT32_MAX)
            return -EPROTO;
        out[i] = (uint32_t)e->via.u64;
    }
    *n = o->via.array.size;
    return 0;
}

/* ---- RDMA between pools ------------------------------------------------------------------ */

/*
 * Moves pages i in [from, n): kind READ (remote rp[i] -> local mr page lp[i]) or WRITE
 * (local lp[i] -> remote rp[i]), runs of consecutive pages as one op.  Waits until every
 * posted op completed (bounded by the op timeout).  Returns 0 when all succeeded.
 */
static int move_pages(struct kvn_cluster *c, uint32_t id, enum kvn_xport_op_kind kind,
                      struct kvn_xport_mr *mr, const uint32_t *lp, const uint32_t *rp,
                      uint32_t from, uint32_t n, struct kvn_err *err)
{
    struct peer_rt *p = &c->rt[id];
    uint64_t pb = c->self.page_bytes;
    uint64_t tag = (++c->op_seq) << 20;
    uint32_t posted = 0, done = 0, failed = 0;
    int first_err = 0;
    char msg[KVN_XPORT_CQE_MSG + 8] = "";
    uint32_t i = from;
    uint64_t give_up = mono_ms() + 4ull * c->cfg.op_timeout_ms + 1000;
    while (done < posted || i < n) {
        /* post as many runs as the transport takes */
        while (i < n && !failed) {
            uint32_t run = 1;
            while (i + run < n && run < RUN_MAX_PAGES && lp[i + run] == lp[i] + run &&
                   rp[i + run] == rp[i] + run)
                run++;
            struct kvn_xport_sge sge = {
                .mr = mr, .offset = (uint64_t)lp[i] * pb, .len = (uint64_t)run * pb};
            struct kvn_xport_op op = {.kind = kind,
                                      .local = &sge,
                                      .n_local = 1,
                                      .remote = p->rmr,
                                      .remote_offset = (uint64_t)rp[i] * pb,
                                      .cookie = tag | posted};
            struct kvn_err pe;
            int rc = kvn_xport_post(p->xp, &op, 1, &pe);
            if (rc == -EAGAIN)
                break;
            if (rc < 0) {
                failed++;
                first_err = rc;
                snprintf(msg, sizeof(msg), "%.90s", pe.msg);
                break;
            }
            posted++;
            i += run;
        }
        if (failed && done == posted)
            break;
        struct kvn_xport_cqe cq[CQE_BATCH];
        int k = kvn_xport_poll(c->x, cq, CQE_BATCH);
        for (int j = 0; j < k; j++) {
            if (cq[j].kind != KVN_XPORT_READ && cq[j].kind != KVN_XPORT_WRITE)
                continue;
            if ((cq[j].cookie & ~((1ull << 20) - 1)) != tag)
                continue; /* a late completion of an earlier call */
            done++;
            if (cq[j].status < 0 && !failed++) {
                first_err = cq[j].status;
                snprintf(msg, sizeof(msg), "%s", cq[j].msg);
            }
        }
        if (failed && i < n)
            i = n; /* post nothing more; wait for what is out */
        if (mono_ms() > give_up)
            return kvn_err_set(err, -ETIMEDOUT, "transfers did not complete (transport bug?)");
    }
    if (failed)
        return kvn_err_set(err, first_err ? first_err : -EIO, "%s of %u pages failed: %s",
                           kind == KVN_XPORT_READ ? "RDMA READ" : "RDMA WRITE", n - from, msg);
    return 0;
}

static void sleep_progress(struct kvn_cluster *c, uint32_t ms)
{
    uint64_t end = mono_ms() + ms;
    while (mono_ms() < end) {
        drain_cq(c);
        struct timespec ts = {0, 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* ---- RPC handlers ------------------------------------------------------------------------ */

bool kvn_cluster_owns_op(enum kvn_rpc_op op)
{
    switch (op) {
    case KVN_RPC_PEER_HELLO:
    case KVN_RPC_PIN:
    case KVN_RPC_UNPIN:
    case KVN_RPC_RESERVE:
    case KVN_RPC_PUSH_DONE:
    case KVN_RPC_ABORT:
    case KVN_RPC_FETCH:
    case KVN_RPC_PUSH:
        return true;
    default:
        return false;
    }
}

static int need_pages(const struct kvn_cluster *c, const struct kvn_rpc_req *q, const char *op,
                      struct kvn_err *err)
{
    if (q->n_tokens == 0)
        return kvn_err_set(err, -EINVAL, "%s: empty token list", op);
    if (q->n_tokens % c->self.page_size)
        return kvn_err_set(err, -EINVAL, "%s: %u tokens is not a whole number of %u-token pages",
                           op, q->n_tokens, c->self.page_size);
    return 0;
}

static int h_peer_hello(struct kvn_cluster *c, const struct kvn_rpc_req *q, uint64_t now,
                        msgpack_packer *pk, uint32_t *nk, struct kvn_err *err)
{
    int rc = apply_hello(c, UINT32_MAX, q->hello, q->hello_len, now, err);
    if (rc < 0 && rc != -ENOTCONN && rc != -ECONNREFUSED)
        return rc;
    pk_str(pk, "hello");
    msgpack_pack_bin(pk, c->self_blob_len);
    msgpack_pack_bin_body(pk, c->self_blob, c->self_blob_len);
    (*nk)++;
    return 0;
}

static int h_pin(struct kvn_cluster *c, struct kvn_radix *tree, const struct kvn_rpc_req *q,
                 uint64_t now, uint64_t tick, msgpack_packer *pk, uint32_t *nk, struct kvn_err *err)
{
    int rc = need_pages(c, q, "pin", err);
    if (rc < 0)
        return rc;
    struct kvn_radix_l2_match m;
    if ((rc = kvn_radix_match_l2(tree, NS0, q->tokens, q->n_tokens, tick, c->pages_a, c->hash_cap,
                                 &m, err)) < 0)
        return rc;
    if (m.tokens == 0)
        return kvn_err_set(err, -ENOENT, "pin: no page of these tokens is in the host pool");
    if ((rc = kvn_radix_protect(tree, m.last_node, err)) < 0)
        return rc;
    uint64_t handle;
    if ((rc = kvn_leases_add(c->leases, m.last_node, m.n_pages, now + q->lease_ms, &handle, err)) <
        0) {
        kvn_radix_unprotect(tree, m.last_node, NULL);
        return rc;
    }
    c->st.pins++;
    kv_u64(pk, nk, "handle", handle);
    kv_u64(pk, nk, "pinned_tokens", m.tokens);
    kv_u32s(pk, nk, "pages", c->pages_a, m.n_pages);
    kv_u64(pk, nk, "lease_ms", q->lease_ms);
    return 0;
}

static int h_unpin(struct kvn_cluster *c, struct kvn_radix *tree, const struct kvn_rpc_req *q,
                   msgpack_packer *pk, uint32_t *nk, struct kvn_err *err)
{
    struct kvn_lease_info li;
    int rc = kvn_leases_release(c->leases, q->handle, &li, err);
    if (rc < 0) {
        c->st.unpin_bad++;
        return rc;
    }
    kvn_radix_unprotect(tree, li.node_id, NULL);
    kv_u64(pk, nk, "pages", li.pages);
    return 0;
}

static int reserve_pages(struct kvn_radix *tree, uint32_t n, uint32_t *pages, struct kvn_err *err)
{
    int rc = kvn_radix_reserve_l2(tree, n, pages, NULL);
    if (rc != -ENOSPC)
        return rc < 0 ? kvn_radix_reserve_l2(tree, n, pages, err) : 0;
    /* make room: L2 leaves first; pages also in L1 are no L2 candidates, so demote L1
     * (every L1 page with an L2 copy stays in L2) and try the L2 leaves again */
    struct kvn_radix_evict_result er;
    kvn_radix_evict_l2(tree, n, &er, NULL);
    if ((rc = kvn_radix_reserve_l2(tree, n, pages, NULL)) != -ENOSPC)
        return rc < 0 ? kvn_radix_reserve_l2(tree, n, pages, err) : 0;
    kvn_radix_evict_l1(tree, n, &er, NULL);
    kvn_radix_evict_l2(tree, n, &er, NULL);
    return kvn_radix_reserve_l2(tree, n, pages, err);
}

/* Inserts a host sequence and gives back the reserved pages it did not adopt. */
static int insert_and_release(struct kvn_cluster *c, struct kvn_radix *tree, const int32_t *tokens,
                              uint32_t n_tokens, uint32_t *pages, uint64_t tick,
                              struct kvn_radix_insert_result *res, struct kvn_err *err)
{
    uint32_t ps = c->self.page_size, n = n_tokens / ps;
    int rc = kvn_radix_insert_host(tree, NS0, tokens, n_tokens, pages, tick, res, err);
    if (rc < 0) {
        kvn_radix_release_l2(tree, pages, n, NULL);
        return rc;
    }
    uint32_t a = res->prefix_tokens / ps, b = res->inserted_tokens / ps;
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++)
        if (i < a || i >= b)
            c->pages_b[k++] = pages[i];
    if (k)
        kvn_radix_release_l2(tree, c->pages_b, k, NULL);
    return 0;
}

static int h_reserve(struct kvn_cluster *c, struct kvn_radix *tree, const struct kvn_rpc_req *q,
                     uint64_t now, msgpack_packer *pk, uint32_t *nk, struct kvn_err *err)
{
    int rc = need_pages(c, q, "reserve", err);
    if (rc < 0)
        return rc;
    uint32_t n = q->n_tokens / c->self.page_size;
    if ((rc = reserve_pages(tree, n, c->pages_a, err)) < 0)
        return rc;
    uint64_t handle;
    if ((rc = kvn_push_reserve(c->push, q->tokens, q->n_tokens, c->pages_a, n, now + q->lease_ms,
                               &handle, err)) < 0) {
        kvn_radix_release_l2(tree, c->pages_a, n, NULL);
        return rc;
    }
    c->st.reservations++;
    kv_u64(pk, nk, "handle", handle);
    kv_u32s(pk, nk, "pages", c->pages_a, n);
    return 0;
}

static int h_push_done(struct kvn_cluster *c, struct kvn_radix *tree, const struct kvn_rpc_req *q,
                       uint64_t tick, msgpack_packer *pk, uint32_t *nk, struct kvn_err *err)
{
    bool complete = false;
    int rc;
    if (q->has_slots) {
        rc = kvn_push_land(c->push, q->handle, q->slots, q->n_slots, &complete, err);
    } else {
        rc = kvn_push_land_all(c->push, q->handle, err);
        complete = rc == 0;
    }
    if (rc < 0) {
        c->st.res_refused++;
        return rc;
    }
    struct kvn_radix_insert_result res = {0};
    uint32_t landed = 0;
    if (complete) {
        struct kvn_push_view v;
        if ((rc = kvn_push_take(c->push, q->handle, false, &v, err)) < 0)
            return rc;
        landed = v.landed;
        rc = insert_and_release(c, tree, v.tokens, v.n_tokens, v.pages, tick, &res, err);
        kvn_push_view_free(&v);
        if (rc < 0)
            return rc;
        c->st.res_completed++;
    }
    kv_bool(pk, nk, "complete", complete);
    kv_u64(pk, nk, "landed", complete ? landed : q->n_slots);
    kv_u64(pk, nk, "inserted_tokens", res.inserted_tokens);
    kv_u64(pk, nk, "new_tokens", res.new_tokens + res.revived_tokens);
    return 0;
}

static int h_abort(struct kvn_cluster *c, struct kvn_radix *tree, const struct kvn_rpc_req *q,
                   msgpack_packer *pk, uint32_t *nk, struct kvn_err *err)
{
    struct kvn_push_view v;
    int rc = kvn_push_take(c->push, q->handle, true, &v, err);
    if (rc < 0) {
        c->st.res_refused++;
        return rc;
    }
    kvn_radix_release_l2(tree, v.pages, v.n_pages, NULL);
    kv_u64(pk, nk, "pages", v.n_pages);
    kvn_push_view_free(&v);
    c->st.res_aborted++;
    return 0;
}

static bool peer_ready(const struct kvn_cluster *c, uint32_t id)
{
    struct kvn_peer_info pi;
    return kvn_peers_get(c->peers, id, &pi, NULL) == 0 && pi.state == KVN_PEER_UP && c->rt[id].xp &&
           c->rt[id].rmr && c->rt[id].hello;
}

static int h_fetch(struct kvn_cluster *c, struct kvn_radix *tree, const struct kvn_rpc_req *q,
                   uint64_t tick, msgpack_packer *pk, uint32_t *nk, struct kvn_err *err)
{
    int rc = need_pages(c, q, "fetch", err);
    if (rc < 0)
        return rc;
    uint32_t ps = c->self.page_size;
    uint64_t t0 = mono_us();
    struct kvn_radix_match lm;
    if ((rc = kvn_radix_match_prefix(tree, NS0, q->tokens, q->n_tokens, tick, NULL, 0, &lm, err)) <
        0)
        return rc;
    uint32_t local = (lm.device_tokens + lm.host_tokens) / ps;
    struct kvn_overlap o;
    if ((rc = kvn_cluster_match(c, q->tokens, q->n_tokens, local, &o, err)) < 0)
        return rc;
    if (!o.remote_found || o.fetchable == 0 || !peer_ready(c, o.remote_peer)) {
        kv_u64(pk, nk, "fetched_pages", 0);
        kv_u64(pk, nk, "bytes", 0);
        kv_u64(pk, nk, "local_pages", local);
        return 0;
    }
    uint32_t id = o.remote_peer, n = o.remote_pages;
    const struct kvn_wire_hello *ph = c->rt[id].hello;
    c->st.fetches++;
    uint64_t t_pin = mono_us();
    /* 1. pin on the owner */
    struct call_args a = {
        .tokens = q->tokens, .n_tokens = n * ps, .has_lease = true, .lease_ms = q->lease_ms};
    struct call_reply r;
    if ((rc = call_peer(c, id, "pin", &a, &r, err)) < 0)
        goto failed;
    uint64_t handle = 0, pinned = 0;
    uint32_t np = 0;
    if (!get_u64(&r.up.data, "handle", &handle) || !get_u64(&r.up.data, "pinned_tokens", &pinned) ||
        reply_u32s(&r, "pages", c->pages_b, c->hash_cap, &np) < 0 || pinned % ps ||
        pinned / ps != np || np == 0 || np > n) {
        call_reply_free(&r);
        rc = kvn_err_set(err, -EPROTO, "pin reply from %s is malformed", ph->ctl);
        c->st.bad_descriptors++;
        goto failed;
    }
    call_reply_free(&r);
    n = np; /* the owner may hold less than it announced (evicted since) */
    struct call_args ua = {.has_handle = true, .handle = handle};
    if ((rc = kvn_wire_check_pages(c->pages_b, n, ph->pool_pages, ph->page_bytes, err)) < 0) {
        c->st.bad_descriptors++;
        call_peer(c, id, "unpin", &ua, &r, NULL);
        call_reply_free(&r);
        goto failed;
    }
    /* 2. local pages (reserved first: eviction to make room may shorten our L2 prefix) */
    if ((rc = reserve_pages(tree, n, c->pages_a, err)) < 0) {
        call_peer(c, id, "unpin", &ua, &r, NULL);
        call_reply_free(&r);
        goto failed;
    }
    struct kvn_radix_l2_match l2;
    kvn_radix_match_l2(tree, NS0, q->tokens, (size_t)n * ps, tick, NULL, 0, &l2, NULL);
    uint32_t skip = l2.tokens / ps; /* already valid here: not adopted, not read */
    /* 3. read */
    uint64_t t_read = mono_us();
    rc = skip < n
             ? move_pages(c, id, KVN_XPORT_READ, c->pool_mr, c->pages_a, c->pages_b, skip, n, err)
             : 0;
    if (c->cfg.fetch_hold_ms)
        sleep_progress(c, c->cfg.fetch_hold_ms);
    /* 4. unpin: only a lease still held proves that the pages were not reused under us */
    uint64_t t_unpin = mono_us();
    struct kvn_err ue;
    int urc = call_peer(c, id, "unpin", &ua, &r, &ue);
    call_reply_free(&r);
    uint64_t t_unpin_done = mono_us();
    if (rc == 0 && urc < 0)
        rc = kvn_err_set(err, urc == -ENOENT ? -ESTALE : urc,
                         "fetch from %s: the pin did not hold to the end (%s): nothing inserted",
                         ph->ctl, ue.msg);
    if (rc < 0) {
        kvn_radix_release_l2(tree, c->pages_a, n, NULL);
        goto failed;
    }
    /* 5. insert: CPU_PINNED BlockStored for what is new here */
    struct kvn_radix_insert_result res;
    if ((rc = insert_and_release(c, tree, q->tokens, n * ps, c->pages_a, tick, &res, err)) < 0)
        goto failed;
    uint64_t us = mono_us() - t0;
    uint64_t bytes = (uint64_t)(n - skip) * c->self.page_bytes;
    clog_(c, 3,
          "fetch %u pages from %s: match %" PRIu64 " us, pin %" PRIu64 " us, read %" PRIu64
          " us, unpin %" PRIu64 " us, insert %" PRIu64 " us",
          n - skip, ph->ctl, t_pin - t0, t_read - t_pin, t_unpin - t_read, t_unpin_done - t_unpin,
          mono_us() - t_unpin_done);
    c->st.fetch_pages += n - skip;
    c->st.fetch_bytes += bytes;
    c->st.fetch_us += us;
    lat_add(&c->fetch_lat, us);
    kv_u64(pk, nk, "peer", id);
    kv_str(pk, nk, "endpoint", ph->ctl);
    kv_u64(pk, nk, "fetched_pages", n - skip);
    kv_u64(pk, nk, "bytes", bytes);
    kv_u64(pk, nk, "us", us);
    kv_u64(pk, nk, "local_pages", local);
    kv_u64(pk, nk, "inserted_tokens", res.inserted_tokens);
    return 0;
failed:
    c->st.fetch_failed++;
    return rc;
}

static int h_push(struct kvn_cluster *c, struct kvn_radix *tree, const struct kvn_rpc_req *q,
                  uint64_t tick, msgpack_packer *pk, uint32_t *nk, struct kvn_err *err)
{
    int rc = need_pages(c, q, "push", err);
    if (rc < 0)
        return rc;
    uint32_t ps = c->self.page_size, n = q->n_tokens / ps;
    uint64_t pb = c->self.page_bytes;
    uint32_t id;
    if (kvn_peers_find(c->peers, q->to, &id, NULL) < 0 || !peer_ready(c, id))
        return kvn_err_set(err, -ENOTCONN, "push: %s is not a live peer of this node", q->to);
    const struct kvn_wire_hello *ph = c->rt[id].hello;
    struct kvn_xport_mr *src;
    uint64_t protected_node = 0;
    if (q->has_slots) {
        if (!c->l1_mr)
            return kvn_err_set(err, -ENOTSUP, "push --slots needs the L1 stand-in (--l1)");
        if (q->n_slots != n)
            return kvn_err_set(err, -EINVAL, "push: %u slots for %u pages", q->n_slots, n);
        uint64_t l1_slots = c->cfg.l1_bytes / pb;
        for (uint32_t i = 0; i < n; i++)
            if (q->slots[i] >= l1_slots)
                return kvn_err_set(err, -EINVAL,
                                   "slots[%u] = %u is out of range (%" PRIu64 " L1 slots)", i,
                                   q->slots[i], l1_slots);
        memcpy(c->pages_a, q->slots, sizeof(uint32_t) * n);
        src = c->l1_mr;
    } else {
        struct kvn_radix_l2_match m;
        if ((rc = kvn_radix_match_l2(tree, NS0, q->tokens, q->n_tokens, tick, c->pages_a,
                                     c->hash_cap, &m, err)) < 0)
            return rc;
        if (m.tokens < q->n_tokens)
            return kvn_err_set(err, -ENOENT,
                               "push: only %u of %u pages are in this node's pool (give --slots "
                               "to push from L1)",
                               m.tokens / ps, n);
        if ((rc = kvn_radix_protect(tree, m.last_node, err)) < 0)
            return rc;
        protected_node = m.last_node;
        src = c->pool_mr;
    }
    uint64_t t0 = mono_us();
    c->st.pushes++;
    struct call_args a = {
        .tokens = q->tokens, .n_tokens = q->n_tokens, .has_lease = true, .lease_ms = q->lease_ms};
    struct call_reply r;
    uint64_t handle = 0;
    uint32_t np = 0;
    if ((rc = call_peer(c, id, "reserve", &a, &r, err)) < 0)
        goto out;
    if (!get_u64(&r.up.data, "handle", &handle) ||
        reply_u32s(&r, "pages", c->pages_b, c->hash_cap, &np) < 0 || np != n) {
        call_reply_free(&r);
        rc = kvn_err_set(err, -EPROTO, "reserve reply from %s is malformed", ph->ctl);
        c->st.bad_descriptors++;
        goto abort;
    }
    call_reply_free(&r);
    if ((rc = kvn_wire_check_pages(c->pages_b, n, ph->pool_pages, ph->page_bytes, err)) < 0) {
        c->st.bad_descriptors++;
        goto abort;
    }
    if ((rc = move_pages(c, id, KVN_XPORT_WRITE, src, c->pages_a, c->pages_b, 0, n, err)) < 0)
        goto abort;
    struct call_args da = {.has_handle = true, .handle = handle};
    if ((rc = call_peer(c, id, "push_done", &da, &r, err)) < 0)
        goto out; /* late or refused: the decode node frees the reservation itself */
    uint64_t inserted = 0, complete = 0;
    get_u64(&r.up.data, "inserted_tokens", &inserted);
    const msgpack_object *co = kvn_mp_map_get(&r.up.data, "complete");
    complete = co && co->type == MSGPACK_OBJECT_BOOLEAN && co->via.boolean;
    call_reply_free(&r);
    uint64_t us = mono_us() - t0;
    c->st.push_pages += n;
    c->st.push_bytes += (uint64_t)n * pb;
    c->st.push_us += us;
    kv_u64(pk, nk, "pages", n);
    kv_u64(pk, nk, "bytes", (uint64_t)n * pb);
    kv_u64(pk, nk, "us", us);
    kv_u64(pk, nk, "inserted_tokens", inserted);
    kv_bool(pk, nk, "complete", complete);
    kv_u64(pk, nk, "handle", handle);
    goto out;
abort : {
    struct call_args xa = {.has_handle = true, .handle = handle};
    if (handle) {
        call_peer(c, id, "abort", &xa, &r, NULL);
        call_reply_free(&r);
    }
}
out:
    if (rc < 0)
        c->st.push_failed++;
    if (protected_node)
        kvn_radix_unprotect(tree, protected_node, NULL);
    return rc;
}

int kvn_cluster_rpc(struct kvn_cluster *c, struct kvn_radix *tree, const struct kvn_rpc_req *q,
                    uint64_t now_ms, uint64_t tick, msgpack_packer *pk, uint32_t *n_keys,
                    struct kvn_err *err)
{
    if (!c || !q || !pk || !n_keys)
        return kvn_err_set(err, -EINVAL, "cluster rpc: NULL argument");
    if (q->op == KVN_RPC_PEER_HELLO)
        return h_peer_hello(c, q, now_ms, pk, n_keys, err);
    if (!kvn_cluster_owns_op(q->op))
        return kvn_err_set(err, -ENOTSUP, "not a cluster op");
    if (!tree)
        return kvn_err_set(err, -ENOTCONN, "no L1 registered (register_l1, or start with --l1)");
    switch (q->op) {
    case KVN_RPC_PIN:
        return h_pin(c, tree, q, now_ms, tick, pk, n_keys, err);
    case KVN_RPC_UNPIN:
        return h_unpin(c, tree, q, pk, n_keys, err);
    case KVN_RPC_RESERVE:
        return h_reserve(c, tree, q, now_ms, pk, n_keys, err);
    case KVN_RPC_PUSH_DONE:
        return h_push_done(c, tree, q, tick, pk, n_keys, err);
    case KVN_RPC_ABORT:
        return h_abort(c, tree, q, pk, n_keys, err);
    case KVN_RPC_FETCH:
        return h_fetch(c, tree, q, tick, pk, n_keys, err);
    case KVN_RPC_PUSH:
        return h_push(c, tree, q, tick, pk, n_keys, err);
    default:
        return kvn_err_set(err, -ENOTSUP, "not a cluster op");
    }
}

int kvn_cluster_match(struct kvn_cluster *c, const int32_t *tokens, uint32_t n_tokens,
                      uint32_t local_pages, struct kvn_overlap *out, struct kvn_err *err)
{
    if (!c)
        return kvn_err_set(err, -EINVAL, "cluster is NULL");
    return kvn_overlap_query(c->g, tokens, n_tokens, c->self.page_size, local_pages, UINT32_MAX,
                             c->hash_buf, c->hash_cap, out, err);
}

void kvn_cluster_get_stats(const struct kvn_cluster *c, struct kvn_cluster_stats *st)
{
    if (!st)
        return;
    memset(st, 0, sizeof(*st));
    if (!c)
        return;
    *st = c->st;
    st->peers = kvn_peers_count(c->peers);
    st->peers_up = kvn_peers_up(c->peers);
    st->pins_active = kvn_leases_held(c->leases);
    for (uint32_t i = 0; i < st->peers; i++) {
        struct kvn_events_sub_stats ss;
        kvn_events_sub_get_stats(c->rt[i].sub, &ss);
        st->events_applied += ss.events_applied;
        st->batches_applied += ss.batches_applied;
        st->sub_malformed += ss.malformed;
        st->sub_bad_frames += ss.bad_frames;
        st->sub_lost += ss.lost;
        struct kvn_gindex_peer_stats gs;
        if (kvn_gindex_peer_stats(c->g, i, &gs, NULL) == 0)
            st->remote_blocks += gs.blocks[KVN_MEDIUM_CPU_PINNED];
    }
    struct kvn_push_stats ps;
    kvn_push_get_stats(c->push, &ps);
    st->res_expired = ps.expired;
    lat_pct(&c->lag, &st->lag_p50_us, &st->lag_p99_us);
    st->lag_samples = c->lag.n;
    lat_pct(&c->fetch_lat, &st->fetch_p50_us, &st->fetch_p99_us);
}

void kvn_cluster_pack_stats(const struct kvn_cluster *c, msgpack_packer *pk, uint32_t *nk)
{
    if (!c || !pk || !nk)
        return;
    struct kvn_cluster_stats s;
    kvn_cluster_get_stats(c, &s);
#define S(f) kv_u64(pk, nk, "cluster_" #f, s.f)
    S(peers);
    S(peers_up);
    S(peer_joins);
    S(peer_deaths);
    S(peer_restarts);
    S(hello_sent);
    S(hello_recv);
    S(hello_bad);
    S(events_applied);
    S(batches_applied);
    S(sub_malformed);
    S(sub_bad_frames);
    S(sub_lost);
    S(remote_blocks);
    S(pins);
    S(pins_active);
    S(pin_expired);
    S(unpin_bad);
    S(fetches);
    S(fetch_failed);
    S(fetch_pages);
    S(fetch_bytes);
    S(fetch_us);
    S(fetch_p50_us);
    S(fetch_p99_us);
    S(pushes);
    S(push_failed);
    S(push_pages);
    S(push_bytes);
    S(push_us);
    S(reservations);
    S(res_completed);
    S(res_aborted);
    S(res_expired);
    S(res_refused);
    S(bad_descriptors);
    S(lag_samples);
    S(lag_p50_us);
    S(lag_p99_us);
#undef S
    kv_u64(pk, nk, "cluster_node_id", c->self.node_id);
}
