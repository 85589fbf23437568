/*
 * xport.c - the common layer of the transport: URI parsing, the backend
 * table, argument and bounds validation, address/descriptor framing, the
 * completion ring, op contexts, timeouts and the wait fd.
 *
 * Every public kvn_xport_* function lands here first; backends only see
 * requests that passed validation (see xport_impl.h for the contract).
 *
 * Completion ring.  One array of cqes per domain, sized max_outstanding +
 * n_recv_bufs.  It cannot overflow: op cqes are bounded by the outstanding
 * limit (an op counts as outstanding until its cqe is polled), RECV cqes by
 * the number of receive buffers (a buffer is reposted only after its cqe was
 * polled).
 *
 * Timeouts.  Unreported ops sit in x->fifo in post order; every op gets the
 * same timeout, so deadlines are non-decreasing along the list and poll
 * checks only the head.
 *
 * Wait fd.  An epoll fd over {backend fd, an eventfd, a timerfd}: the
 * eventfd is written when the backend says it has work that its own fd may
 * not signal; the timerfd is armed for the head op's deadline, and ticks
 * every millisecond when the backend has no fd (libfabric shm).
 */
#include "transport/xport_impl.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define XPORT_ADDR_MAGIC    0x414e564bu /* "KVNA" */
#define XPORT_DESC_MAGIC    0x524e564bu /* "KVNR" */
#define XPORT_WIRE_VERSION  1u
#define XPORT_ADDR_HDR      24u
#define XPORT_PEER_HASH     256u
#define XPORT_DEF_RECV_BUFS 1024u      /* ring room for RECVs if ops->open is silent */
#define XPORT_TICK_NS       1000000ull /* wait fd tick when the backend has no fd */

#define DESC_F_OFFSET 0x1u
#define DESC_F_RREAD  0x2u
#define DESC_F_RWRITE 0x4u

struct xport_cq_ring {
    uint32_t cap, head, count;
    struct xport_ring_ent {
        struct kvn_xport_cqe cqe;
        uint64_t token;
        bool is_recv;
    } ent[];
};

/* ------------------------------------------------------------------ */
/* small helpers                                                       */

static void link_init(struct xport_link *h)
{
    h->prev = h->next = h;
}
static bool link_empty(const struct xport_link *h)
{
    return h->next == h;
}

static void link_add_tail(struct xport_link *h, struct xport_link *l)
{
    l->prev = h->prev;
    l->next = h;
    h->prev->next = l;
    h->prev = l;
}

static void link_del(struct xport_link *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->prev = l->next = l;
}

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}
static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}
static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* FNV-1a over buf with the 4 checksum bytes at cks_off read as zero. */
static uint32_t fnv1a(const uint8_t *buf, size_t len, size_t cks_off)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        uint8_t b = (i >= cks_off && i < cks_off + 4) ? 0 : buf[i];
        h = (h ^ b) * 16777619u;
    }
    return h;
}

uint64_t xport_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static bool is_conn_error(int st)
{
    return st == -ECONNRESET || st == -ENOTCONN || st == -EPIPE || st == -ECONNREFUSED ||
           st == -EHOSTUNREACH || st == -ETIMEDOUT || st == -ECONNABORTED;
}

/* ------------------------------------------------------------------ */
/* URIs and the backend table                                          */

static bool name_ok(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(isalnum(c) || c == '_' || c == '-' || c == '.'))
            return false;
    }
    return true;
}

int xport_uri_parse(const char *uri, struct xport_uri *out, struct kvn_err *err)
{
    if (!uri || !out)
        return kvn_err_set(err, -EINVAL, "uri and out must not be NULL");
    size_t n = strnlen(uri, KVN_XPORT_NAME_MAX);
    if (n == 0)
        return kvn_err_set(err, -EINVAL, "empty transport URI");
    if (n >= KVN_XPORT_NAME_MAX)
        return kvn_err_set(err, -EINVAL, "transport URI longer than %u bytes",
                           KVN_XPORT_NAME_MAX - 1);
    const char *plus = memchr(uri, '+', n);
    size_t fl = plus ? (size_t)(plus - uri) : n;
    const char *sub = plus ? plus + 1 : "";
    size_t sl = plus ? n - fl - 1 : 0;
    struct xport_uri u;
    memset(&u, 0, sizeof(u));
    if (fl == 0 || fl >= sizeof(u.family) || !name_ok(uri, fl))
        return kvn_err_set(err, -EINVAL, "bad transport URI '%s': bad family", uri);
    memcpy(u.family, uri, fl);
    if (plus && (sl == 0 || sl >= sizeof(u.sub) || !name_ok(sub, sl)))
        return kvn_err_set(err, -EINVAL, "bad transport URI '%s': bad part after '+'", uri);
    memcpy(u.sub, sub, sl);

    if (strcmp(u.family, "ofi") == 0) {
        if (strcmp(u.sub, "tcp") && strcmp(u.sub, "shm") && strcmp(u.sub, "verbs"))
            return kvn_err_set(err, -EINVAL,
                               "bad transport URI '%s': ofi takes +tcp, +shm "
                               "or +verbs",
                               uri);
    } else if (strcmp(u.family, "ucx") == 0) {
        if (u.sub[0] && strcmp(u.sub, "tcp") && strcmp(u.sub, "sm"))
            return kvn_err_set(err, -EINVAL,
                               "bad transport URI '%s': ucx takes no suffix, "
                               "+tcp or +sm",
                               uri);
    } else if (strcmp(u.family, "verbs") == 0) {
        if (!u.sub[0])
            return kvn_err_set(err, -EINVAL, "bad transport URI '%s': verbs needs +DEVICE", uri);
    } else if (strcmp(u.family, "auto") == 0) {
        if (u.sub[0])
            return kvn_err_set(err, -EINVAL, "bad transport URI '%s': auto takes no suffix", uri);
    } else {
        return kvn_err_set(err, -EINVAL,
                           "unknown transport '%s' (ofi+tcp, ofi+shm, "
                           "ofi+verbs, ucx, ucx+tcp, ucx+sm, verbs+DEV, auto)",
                           uri);
    }
    *out = u;
    return 0;
}

static const struct kvn_xport_ops *backend_for(const char *family)
{
    if (strcmp(family, "ofi") == 0)
        return &xport_ofi_ops;
#ifdef KVN_HAVE_UCX
    if (strcmp(family, "ucx") == 0)
        return &xport_ucx_ops;
#endif
#ifdef KVN_HAVE_VERBS
    if (strcmp(family, "verbs") == 0)
        return &xport_verbs_ops;
#endif
    return NULL;
}

void kvn_xport_attr_init(struct kvn_xport_attr *attr)
{
    if (!attr)
        return;
    memset(attr, 0, sizeof(*attr));
    attr->max_outstanding = KVN_XPORT_DEF_OUTSTANDING;
    attr->max_msg_size = KVN_XPORT_DEF_MSG;
    attr->op_timeout_ms = KVN_XPORT_DEF_TIMEOUT_MS;
}

static int attr_resolve(const struct kvn_xport_attr *in, struct kvn_xport_attr *out,
                        struct kvn_err *err)
{
    kvn_xport_attr_init(out);
    if (!in)
        return 0;
    if (in->max_outstanding > KVN_XPORT_MAX_OUTSTANDING)
        return kvn_err_set(err, -EINVAL, "max_outstanding %u above %u", in->max_outstanding,
                           KVN_XPORT_MAX_OUTSTANDING);
    if (in->max_msg_size > KVN_XPORT_MAX_MSG)
        return kvn_err_set(err, -EINVAL, "max_msg_size %u above %u", in->max_msg_size,
                           KVN_XPORT_MAX_MSG);
    if (in->op_timeout_ms > 3600u * 1000u)
        return kvn_err_set(err, -EINVAL, "op_timeout_ms %u above one hour", in->op_timeout_ms);
    if (in->bind_host && (strlen(in->bind_host) == 0 || strlen(in->bind_host) >= 64))
        return kvn_err_set(err, -EINVAL, "bind_host must be 1..63 characters");
    if (in->max_outstanding)
        out->max_outstanding = in->max_outstanding;
    if (in->max_msg_size)
        out->max_msg_size = in->max_msg_size;
    if (in->op_timeout_ms)
        out->op_timeout_ms = in->op_timeout_ms;
    out->bind_host = in->bind_host;
    if (in->flags & ~KVN_XPORT_F_BUSY_POLL)
        return kvn_err_set(err, -EINVAL, "unknown attr flags 0x%x", in->flags);
    out->port = in->port;
    out->flags = in->flags;
    return 0;
}

/* ------------------------------------------------------------------ */
/* open / close                                                        */

static int common_init(struct kvn_xport *x, const struct kvn_xport_attr *a, struct kvn_err *err)
{
    x->attr = *a;
    snprintf(x->bind_host, sizeof(x->bind_host), "%s", a->bind_host ? a->bind_host : "127.0.0.1");
    x->attr.bind_host = x->bind_host;
    if (getrandom(&x->id, sizeof(x->id), 0) != (ssize_t)sizeof(x->id) || x->id == 0)
        x->id = (xport_now_ns() * 0x9e3779b97f4a7c15ull) ^ (uint64_t)getpid();
    link_init(&x->fifo);
    link_init(&x->peers);
    link_init(&x->mrs);
    link_init(&x->rmrs);
    x->epfd = x->evfd = x->tmfd = -1;

    uint32_t mo = a->max_outstanding;
    x->ops_mem = calloc(mo, sizeof(*x->ops_mem));
    if (x->n_recv_bufs == 0) /* backend did not say: assume a generous pool */
        x->n_recv_bufs = XPORT_DEF_RECV_BUFS;
    uint32_t cap = mo + x->n_recv_bufs;
    x->ring = calloc(1, sizeof(*x->ring) + (size_t)cap * sizeof(x->ring->ent[0]));
    x->peer_hash_size = XPORT_PEER_HASH;
    x->peer_hash = calloc(XPORT_PEER_HASH, sizeof(*x->peer_hash));
    x->cap_repost = x->n_recv_bufs ? x->n_recv_bufs : 1;
    x->repost_tokens = calloc(x->cap_repost, sizeof(*x->repost_tokens));
    if (!x->ops_mem || !x->ring || !x->peer_hash || !x->repost_tokens)
        return kvn_err_set(err, -ENOMEM, "out of memory for %u op contexts", mo);
    x->ring->cap = cap;
    for (uint32_t i = mo; i-- > 0;) {
        x->ops_mem[i].next_free = x->free_ops;
        x->free_ops = &x->ops_mem[i];
        link_init(&x->ops_mem[i].fifo);
        link_init(&x->ops_mem[i].plink);
    }
    x->n_free = mo;

    x->epfd = epoll_create1(EPOLL_CLOEXEC);
    x->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    x->tmfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (x->epfd < 0 || x->evfd < 0 || x->tmfd < 0)
        return kvn_err_set(err, -errno, "wait fd setup: %s", strerror(errno));
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.fd = x->evfd;
    if (epoll_ctl(x->epfd, EPOLL_CTL_ADD, x->evfd, &ev) < 0)
        return kvn_err_set(err, -errno, "epoll_ctl: %s", strerror(errno));
    ev.data.fd = x->tmfd;
    if (epoll_ctl(x->epfd, EPOLL_CTL_ADD, x->tmfd, &ev) < 0)
        return kvn_err_set(err, -errno, "epoll_ctl: %s", strerror(errno));
    x->backend_fd = x->ops->get_fd ? x->ops->get_fd(x) : -1;
    if (x->backend_fd >= 0) {
        ev.data.fd = x->backend_fd;
        if (epoll_ctl(x->epfd, EPOLL_CTL_ADD, x->backend_fd, &ev) < 0)
            return kvn_err_set(err, -errno, "epoll_ctl(backend fd): %s", strerror(errno));
    }
    return 0;
}

static void common_free(struct kvn_xport *x)
{
    if (x->epfd >= 0)
        close(x->epfd);
    if (x->evfd >= 0)
        close(x->evfd);
    if (x->tmfd >= 0)
        close(x->tmfd);
    free(x->ops_mem);
    free(x->ring);
    free(x->peer_hash);
    free(x->repost_tokens);
    x->ops_mem = NULL;
    x->ring = NULL;
    x->peer_hash = NULL;
    x->repost_tokens = NULL;
    x->epfd = x->evfd = x->tmfd = -1;
}

static int open_with(const struct kvn_xport_ops *ops, const struct xport_uri *u,
                     const struct kvn_xport_attr *a, struct kvn_xport **out, struct kvn_err *err)
{
    struct kvn_xport *x = NULL;
    int rc = ops->open(u, a, &x, err);
    if (rc < 0)
        return rc;
    x->ops = ops;
    rc = common_init(x, a, err);
    if (rc < 0) {
        common_free(x);
        x->in_close = true;
        ops->close(x);
        return rc;
    }
    *out = x;
    kvn_err_clear(err);
    return 0;
}

static int open_one(const struct xport_uri *u, const struct kvn_xport_attr *a,
                    struct kvn_xport **out, struct kvn_err *err)
{
    const struct kvn_xport_ops *ops = backend_for(u->family);
    if (!ops)
        return kvn_err_set(err, -ENOTSUP, "transport backend '%s' is not built in", u->family);
    return open_with(ops, u, a, out, err);
}

int xport_open_ops(const struct kvn_xport_ops *ops, const struct xport_uri *uri,
                   const struct kvn_xport_attr *attr, struct kvn_xport **out, struct kvn_err *err)
{
    struct kvn_xport_attr a;
    if (!ops || !uri || !out)
        return kvn_err_set(err, -EINVAL, "ops, uri and out must not be NULL");
    int rc = attr_resolve(attr, &a, err);
    if (rc < 0)
        return rc;
    return open_with(ops, uri, &a, out, err);
}

#ifdef KVN_HAVE_VERBS
static int auto_verbs_device(char *name, size_t cap)
{
    struct kvn_xport_devinfo d[16];
    int n = kvn_xport_list_devices(d, 16, NULL);
    for (int i = 0; i < n && i < 16; i++)
        if (d[i].active) {
            snprintf(name, cap, "%s", d[i].name);
            return 0;
        }
    return -ENODEV;
}
#endif

int kvn_xport_open(const char *uri, const struct kvn_xport_attr *attr, struct kvn_xport **out,
                   struct kvn_err *err)
{
    struct xport_uri u;
    struct kvn_xport_attr a;
    if (!out)
        return kvn_err_set(err, -EINVAL, "out must not be NULL");
    int rc = xport_uri_parse(uri, &u, err);
    if (rc < 0)
        return rc;
    rc = attr_resolve(attr, &a, err);
    if (rc < 0)
        return rc;
    if (strcmp(u.family, "auto") != 0)
        return open_one(&u, &a, out, err);

    /* auto: verbs device with an active port, else ucx, else ofi+tcp. */
    rc = -ENODEV;
#ifdef KVN_HAVE_VERBS
    {
        struct xport_uri v = {.family = "verbs"};
        if (auto_verbs_device(v.sub, sizeof(v.sub)) == 0) {
            rc = open_one(&v, &a, out, err);
            if (rc == 0)
                return 0;
        }
    }
#endif
#ifdef KVN_HAVE_UCX
    {
        struct xport_uri v = {.family = "ucx"};
        rc = open_one(&v, &a, out, err);
        if (rc == 0)
            return 0;
    }
#endif
    struct xport_uri t = {.family = "ofi", .sub = "tcp"};
    rc = open_one(&t, &a, out, err);
    return rc;
}

static void peer_release(struct kvn_xport_peer *p)
{
    struct kvn_xport *x = p->x;
    link_del(&p->link);
    x->ops->peer_free(p);
    free(p);
}

static void peer_unref(struct kvn_xport_peer *p)
{
    if (--p->refs == 0 && !p->x->in_close)
        peer_release(p);
}

static void hash_remove(struct kvn_xport_peer *p)
{
    struct kvn_xport *x = p->x;
    struct kvn_xport_peer **pp = &x->peer_hash[p->remote_id & (x->peer_hash_size - 1)];
    while (*pp) {
        if (*pp == p) {
            *pp = p->hash_next;
            p->hash_next = NULL;
            return;
        }
        pp = &(*pp)->hash_next;
    }
}

void kvn_xport_close(struct kvn_xport *x)
{
    if (!x)
        return;
    x->in_close = true;
    struct xport_link *l, *n;
    for (l = x->peers.next; l != &x->peers; l = l->next) {
        struct kvn_xport_peer *p = XPORT_CONTAINER(l, struct kvn_xport_peer, link);
        if (p->connected) {
            p->connected = false;
            x->ops->disconnect(p);
        }
    }
    for (l = x->rmrs.next; l != &x->rmrs; l = n) {
        n = l->next;
        struct kvn_xport_rmr *r = XPORT_CONTAINER(l, struct kvn_xport_rmr, link);
        link_del(l);
        x->ops->rmr_free(r);
        free(r);
    }
    for (l = x->mrs.next; l != &x->mrs; l = n) {
        n = l->next;
        struct kvn_xport_mr *m = XPORT_CONTAINER(l, struct kvn_xport_mr, link);
        link_del(l);
        x->ops->mr_dereg(m);
        free(m);
    }
    for (l = x->peers.next; l != &x->peers; l = n) {
        n = l->next;
        struct kvn_xport_peer *p = XPORT_CONTAINER(l, struct kvn_xport_peer, link);
        link_del(l);
        x->ops->peer_free(p);
        free(p);
    }
    common_free(x);
    x->ops->close(x);
}

const char *kvn_xport_name(const struct kvn_xport *x)
{
    return x ? x->name : "";
}

int kvn_xport_backend(const struct kvn_xport *x)
{
    return x ? (int)x->ops->id : -EINVAL;
}

uint32_t kvn_xport_outstanding(const struct kvn_xport *x)
{
    return x ? x->n_outstanding : 0;
}

/* ------------------------------------------------------------------ */
/* addresses and peers                                                 */

int kvn_xport_address(struct kvn_xport *x, void *buf, size_t *len, struct kvn_err *err)
{
    if (!x || !len || (!buf && *len))
        return kvn_err_set(err, -EINVAL, "x and len must not be NULL");
    uint8_t raw[KVN_XPORT_ADDR_MAX];
    size_t rl = sizeof(raw) - XPORT_ADDR_HDR;
    int rc = x->ops->address(x, raw, &rl, err);
    if (rc < 0)
        return rc;
    size_t need = XPORT_ADDR_HDR + rl;
    if (*len < need) {
        *len = need;
        return kvn_err_set(err, -ENOSPC, "address needs %zu bytes", need);
    }
    uint8_t *b = buf;
    put_u32(b, XPORT_ADDR_MAGIC);
    put_u16(b + 4, XPORT_WIRE_VERSION);
    b[6] = (uint8_t)x->ops->id;
    b[7] = 0;
    put_u64(b + 8, x->id);
    put_u32(b + 16, (uint32_t)rl);
    put_u32(b + 20, 0);
    memcpy(b + XPORT_ADDR_HDR, raw, rl);
    put_u32(b + 20, fnv1a(b, need, 20));
    *len = need;
    return 0;
}

int kvn_xport_connect(struct kvn_xport *x, const void *blob, size_t len,
                      struct kvn_xport_peer **out, struct kvn_err *err)
{
    if (!x || !blob || !out)
        return kvn_err_set(err, -EINVAL, "x, blob and out must not be NULL");
    const uint8_t *b = blob;
    if (len < XPORT_ADDR_HDR)
        return kvn_err_set(err, -EINVAL, "address blob truncated: %zu bytes", len);
    if (len > KVN_XPORT_ADDR_MAX)
        return kvn_err_set(err, -EINVAL, "address blob too long: %zu bytes", len);
    if (get_u32(b) != XPORT_ADDR_MAGIC)
        return kvn_err_set(err, -EPROTO, "address blob: bad magic 0x%08x", get_u32(b));
    if (get_u16(b + 4) != XPORT_WIRE_VERSION)
        return kvn_err_set(err, -EPROTO, "address blob: version %u, want %u", get_u16(b + 4),
                           XPORT_WIRE_VERSION);
    uint32_t rl = get_u32(b + 16);
    if (rl == 0 || rl != len - XPORT_ADDR_HDR)
        return kvn_err_set(err, -EINVAL, "address blob: raw length %u but %zu bytes follow", rl,
                           len - XPORT_ADDR_HDR);
    if (fnv1a(b, len, 20) != get_u32(b + 20))
        return kvn_err_set(err, -EPROTO, "address blob: checksum mismatch");
    if (b[6] != (uint8_t)x->ops->id)
        return kvn_err_set(err, -EINVAL, "address blob of backend %u, domain is %s", b[6], x->name);
    uint64_t rid = get_u64(b + 8);
    if (rid == 0)
        return kvn_err_set(err, -EPROTO, "address blob: zero domain id");

    struct kvn_xport_peer *p = calloc(1, x->ops->peer_size);
    if (!p)
        return kvn_err_set(err, -ENOMEM, "out of memory for a peer");
    p->x = x;
    p->remote_id = rid;
    link_init(&p->link);
    link_init(&p->ops);
    link_init(&p->zombies);
    int rc = x->ops->connect(x, p, b + XPORT_ADDR_HDR, rl, err);
    if (rc < 0) {
        free(p);
        return rc;
    }
    p->refs = 1;
    p->connected = true;
    link_add_tail(&x->peers, &p->link);
    struct kvn_xport_peer **slot = &x->peer_hash[rid & (x->peer_hash_size - 1)];
    p->hash_next = *slot;
    *slot = p;
    *out = p;
    return 0;
}

static void ring_push_op(struct kvn_xport *x, struct xport_op *op);

/* Report op (status op->status) to the caller now; the op stays live until
 * the backend returns every part. */
static void op_report(struct xport_op *op)
{
    struct kvn_xport *x = op->x;
    op->reported = true;
    link_del(&op->fifo);
    link_del(&op->plink);
    if (op->peer) {
        op->peer->n_outstanding--;
        if (op->parts > 0 || op->posting) /* stays live: a zombie */
            link_add_tail(&op->peer->zombies, &op->plink);
    }
    ring_push_op(x, op);
}

static void op_recycle(struct xport_op *op)
{
    struct kvn_xport *x = op->x;
    for (uint8_t i = 0; i < op->n_mrs; i++)
        op->mrs[i]->busy--;
    if (op->wide)
        x->n_wide--;
    if (op->rmr) {
        struct kvn_xport_rmr *r = op->rmr;
        if (--r->busy == 0 && r->freed) {
            link_del(&r->link);
            x->ops->rmr_free(r);
            struct kvn_xport_peer *rp = r->peer;
            free(r);
            peer_unref(rp);
        }
    }
    struct kvn_xport_peer *p = op->peer;
    link_del(&op->plink);
    memset(op, 0, offsetof(struct xport_op, backend));
    link_init(&op->fifo);
    link_init(&op->plink);
    op->next_free = x->free_ops;
    x->free_ops = op;
    x->n_free++;
    if (p)
        peer_unref(p);
}

/* Fail every unreported op of p with status (peer failure/disconnect). */
static void peer_fail_ops(struct kvn_xport_peer *p, int status, const char *why)
{
    while (!link_empty(&p->ops)) {
        struct xport_op *op = XPORT_CONTAINER(p->ops.next, struct xport_op, plink);
        op->status = status;
        snprintf(op->msg, sizeof(op->msg), "%s", why);
        op_report(op);
        if (op->parts == 0 && !op->posting)
            op_recycle(op);
    }
}

void kvn_xport_disconnect(struct kvn_xport_peer *p)
{
    if (!p || !p->connected)
        return;
    struct kvn_xport *x = p->x;
    peer_fail_ops(p, -ECANCELED, "canceled: peer disconnected");
    /* cqes still in the ring must not hand out the handle any more */
    struct xport_cq_ring *r = x->ring;
    for (uint32_t i = 0; i < r->count; i++) {
        struct xport_ring_ent *e = &r->ent[(r->head + i) % r->cap];
        if (e->cqe.peer == p)
            e->cqe.peer = NULL;
    }
    hash_remove(p);
    p->connected = false;
    x->ops->disconnect(p);
    peer_unref(p);
}

void xport_peer_fail(struct kvn_xport_peer *p, int status, const char *msg)
{
    if (p->x->in_close || p->failed || !p->connected)
        return;
    p->failed = true;
    peer_fail_ops(p, status < 0 ? status : -EIO, msg ? msg : "peer failed");
}

void xport_peer_abandon(struct kvn_xport_peer *p)
{
    if (p->x->in_close)
        return;
    p->refs++; /* p must outlive the loop */
    while (!link_empty(&p->zombies)) {
        struct xport_op *op = XPORT_CONTAINER(p->zombies.next, struct xport_op, plink);
        link_del(&op->plink);
        op->parts = 0;
        if (!op->posting)
            op_recycle(op);
    }
    peer_unref(p);
}

uint64_t kvn_xport_peer_id(const struct kvn_xport_peer *p)
{
    return p ? p->remote_id : 0;
}

uint32_t kvn_xport_peer_outstanding(const struct kvn_xport_peer *p)
{
    return p ? p->n_outstanding : 0;
}

/* ------------------------------------------------------------------ */
/* memory registration and descriptors                                  */

int kvn_xport_mr_reg(struct kvn_xport *x, void *addr, size_t len, unsigned access,
                     struct kvn_xport_mr **out, struct kvn_err *err)
{
    if (!x || !addr || !out)
        return kvn_err_set(err, -EINVAL, "x, addr and out must not be NULL");
    if (len == 0)
        return kvn_err_set(err, -EINVAL, "cannot register 0 bytes");
    if ((uintptr_t)addr + len < (uintptr_t)addr)
        return kvn_err_set(err, -EINVAL, "region wraps the address space");
    if (access == 0 || (access & ~KVN_XPORT_ACCESS_ALL))
        return kvn_err_set(err, -EINVAL, "bad access flags 0x%x", access);
    struct kvn_xport_mr *mr = calloc(1, x->ops->mr_size);
    if (!mr)
        return kvn_err_set(err, -ENOMEM, "out of memory for an mr");
    mr->x = x;
    mr->addr = addr;
    mr->len = len;
    mr->access = access;
    link_init(&mr->link);
    int rc = x->ops->mr_reg(x, mr, err);
    if (rc < 0) {
        free(mr);
        return rc;
    }
    link_add_tail(&x->mrs, &mr->link);
    *out = mr;
    return 0;
}

int kvn_xport_mr_dereg(struct kvn_xport_mr *mr, struct kvn_err *err)
{
    if (!mr)
        return kvn_err_set(err, -EINVAL, "mr must not be NULL");
    struct kvn_xport *x = mr->x;
    if (mr->busy)
        return kvn_err_set(err, -EBUSY, "mr in use by %u outstanding ops", mr->busy);
    if (x->n_wide)
        return kvn_err_set(err, -EBUSY,
                           "%u outstanding ops span more than %d regions; "
                           "deregister after they complete",
                           x->n_wide, XPORT_OP_MRS);
    link_del(&mr->link);
    x->ops->mr_dereg(mr);
    free(mr);
    return 0;
}

void *kvn_xport_mr_addr(const struct kvn_xport_mr *mr)
{
    return mr ? mr->addr : NULL;
}

size_t kvn_xport_mr_len(const struct kvn_xport_mr *mr)
{
    return mr ? mr->len : 0;
}

int kvn_xport_mr_pack(const struct kvn_xport_mr *mr, void *buf, size_t *len, struct kvn_err *err)
{
    if (!mr || !len || (!buf && *len))
        return kvn_err_set(err, -EINVAL, "mr and len must not be NULL");
    struct kvn_xport *x = mr->x;
    uint8_t key[KVN_XPORT_KEY_MAX];
    size_t kl = sizeof(key);
    int rc = x->ops->mr_pack_key(mr, key, &kl, err);
    if (rc < 0)
        return rc;
    size_t need = KVN_XPORT_DESC_HDR + kl;
    if (*len < need) {
        *len = need;
        return kvn_err_set(err, -ENOSPC, "descriptor needs %zu bytes", need);
    }
    uint8_t *b = buf;
    uint8_t flags = 0;
    if (!x->remote_virt_addr)
        flags |= DESC_F_OFFSET;
    if (mr->access & KVN_XPORT_ACCESS_REMOTE_READ)
        flags |= DESC_F_RREAD;
    if (mr->access & KVN_XPORT_ACCESS_REMOTE_WRITE)
        flags |= DESC_F_RWRITE;
    put_u32(b, XPORT_DESC_MAGIC);
    put_u16(b + 4, XPORT_WIRE_VERSION);
    b[6] = (uint8_t)x->ops->id;
    b[7] = flags;
    put_u64(b + 8, x->remote_virt_addr ? (uint64_t)(uintptr_t)mr->addr : 0);
    put_u64(b + 16, mr->len);
    put_u16(b + 24, (uint16_t)kl);
    put_u16(b + 26, 0);
    put_u32(b + 28, 0);
    put_u64(b + 32, x->id);
    memcpy(b + KVN_XPORT_DESC_HDR, key, kl);
    put_u32(b + 28, fnv1a(b, need, 28));
    *len = need;
    return 0;
}

int kvn_xport_rmr_unpack(struct kvn_xport_peer *p, const void *buf, size_t len,
                         struct kvn_xport_rmr **out, struct kvn_err *err)
{
    if (!p || !buf || !out)
        return kvn_err_set(err, -EINVAL, "p, buf and out must not be NULL");
    struct kvn_xport *x = p->x;
    const uint8_t *b = buf;
    if (!p->connected)
        return kvn_err_set(err, -ENOTCONN, "peer is disconnected");
    if (len < KVN_XPORT_DESC_HDR)
        return kvn_err_set(err, -EINVAL, "descriptor truncated: %zu bytes", len);
    if (get_u32(b) != XPORT_DESC_MAGIC)
        return kvn_err_set(err, -EPROTO, "descriptor: bad magic 0x%08x", get_u32(b));
    if (get_u16(b + 4) != XPORT_WIRE_VERSION)
        return kvn_err_set(err, -EPROTO, "descriptor: version %u, want %u", get_u16(b + 4),
                           XPORT_WIRE_VERSION);
    size_t kl = get_u16(b + 24);
    if (kl > KVN_XPORT_KEY_MAX || KVN_XPORT_DESC_HDR + kl != len)
        return kvn_err_set(err, -EINVAL,
                           "descriptor: key length %zu does not match %zu "
                           "bytes",
                           kl, len);
    if (fnv1a(b, len, 28) != get_u32(b + 28))
        return kvn_err_set(err, -EPROTO, "descriptor: checksum mismatch");
    if (b[6] != (uint8_t)x->ops->id)
        return kvn_err_set(err, -EINVAL, "descriptor of backend %u, domain is %s", b[6], x->name);
    uint8_t flags = b[7];
    if (flags & ~(DESC_F_OFFSET | DESC_F_RREAD | DESC_F_RWRITE))
        return kvn_err_set(err, -EPROTO, "descriptor: unknown flags 0x%x", flags);
    uint64_t base = get_u64(b + 8), rlen = get_u64(b + 16);
    if (rlen == 0 || rlen > (1ull << 52))
        return kvn_err_set(err, -EINVAL, "descriptor: absurd length %llu",
                           (unsigned long long)rlen);
    if ((flags & DESC_F_OFFSET) && base != 0)
        return kvn_err_set(err, -EPROTO, "descriptor: offset mode with a base address");
    if (!!(flags & DESC_F_OFFSET) == !!x->remote_virt_addr)
        return kvn_err_set(err, -EPROTO, "descriptor: addressing mode differs from %s", x->name);
    if (base + rlen < base)
        return kvn_err_set(err, -EINVAL, "descriptor: base+length wraps");
    if (get_u16(b + 26) != 0)
        return kvn_err_set(err, -EPROTO, "descriptor: reserved bytes set");
    if (get_u64(b + 32) != p->remote_id)
        return kvn_err_set(err, -EINVAL,
                           "descriptor belongs to domain %016llx, peer is "
                           "%016llx",
                           (unsigned long long)get_u64(b + 32), (unsigned long long)p->remote_id);
    if (!(flags & (DESC_F_RREAD | DESC_F_RWRITE)))
        return kvn_err_set(err, -EINVAL, "descriptor grants neither remote read nor write");
    struct kvn_xport_rmr *r = calloc(1, x->ops->rmr_size);
    if (!r)
        return kvn_err_set(err, -ENOMEM, "out of memory for an rmr");
    r->peer = p;
    r->base = base;
    r->len = rlen;
    r->access = ((flags & DESC_F_RREAD) ? KVN_XPORT_ACCESS_REMOTE_READ : 0) |
                ((flags & DESC_F_RWRITE) ? KVN_XPORT_ACCESS_REMOTE_WRITE : 0);
    link_init(&r->link);
    int rc = x->ops->rmr_unpack_key(p, r, b + KVN_XPORT_DESC_HDR, kl, err);
    if (rc < 0) {
        free(r);
        return rc;
    }
    p->refs++;
    link_add_tail(&x->rmrs, &r->link);
    *out = r;
    return 0;
}

void kvn_xport_rmr_free(struct kvn_xport_rmr *r)
{
    if (!r || r->freed)
        return;
    if (r->busy) {
        r->freed = true;
        return;
    }
    struct kvn_xport_peer *p = r->peer;
    link_del(&r->link);
    p->x->ops->rmr_free(r);
    free(r);
    peer_unref(p);
}

size_t kvn_xport_rmr_len(const struct kvn_xport_rmr *r)
{
    return r ? (size_t)r->len : 0;
}

/* ------------------------------------------------------------------ */
/* posting                                                             */

static int validate_op(struct kvn_xport_peer *p, const struct kvn_xport_op *o, uint32_t i,
                       uint64_t *total_out, struct kvn_err *err)
{
    struct kvn_xport *x = p->x;
    if (o->kind != KVN_XPORT_WRITE && o->kind != KVN_XPORT_READ)
        return kvn_err_set(err, -EINVAL, "op %u: kind %d is not WRITE/READ", i, (int)o->kind);
    if (!o->local || o->n_local == 0 || o->n_local > KVN_XPORT_MAX_SGE)
        return kvn_err_set(err, -EINVAL,
                           "op %u: local SG list must have 1..%u entries "
                           "(has %u)",
                           i, KVN_XPORT_MAX_SGE, o->n_local);
    struct kvn_xport_rmr *r = o->remote;
    if (!r || r->freed)
        return kvn_err_set(err, -EINVAL, "op %u: remote is NULL or freed", i);
    if (r->peer != p)
        return kvn_err_set(err, -EINVAL,
                           "op %u: remote region was unpacked for another "
                           "peer",
                           i);
    uint64_t total = 0;
    for (uint32_t k = 0; k < o->n_local; k++) {
        const struct kvn_xport_sge *s = &o->local[k];
        if (!s->mr || s->mr->x != x)
            return kvn_err_set(err, -EINVAL, "op %u sge %u: mr NULL or of another domain", i, k);
        if (s->len == 0)
            return kvn_err_set(err, -EINVAL, "op %u sge %u: zero length", i, k);
        if (s->offset > s->mr->len || s->len > s->mr->len - s->offset)
            return kvn_err_set(err, -ERANGE,
                               "op %u sge %u: [%llu, +%llu) outside local "
                               "region of %zu bytes",
                               i, k, (unsigned long long)s->offset, (unsigned long long)s->len,
                               s->mr->len);
        if (!(s->mr->access & KVN_XPORT_ACCESS_LOCAL))
            return kvn_err_set(err, -EACCES, "op %u sge %u: mr lacks ACCESS_LOCAL", i, k);
        total += s->len; /* <= 1024 * 2^64? no: each len <= mr len < 2^63 */
        if (total < s->len)
            return kvn_err_set(err, -ERANGE, "op %u: total length overflows", i);
    }
    if (o->remote_offset > r->len || total > r->len - o->remote_offset)
        return kvn_err_set(err, -ERANGE,
                           "op %u: remote [%llu, +%llu) outside remote region "
                           "of %llu bytes",
                           i, (unsigned long long)o->remote_offset, (unsigned long long)total,
                           (unsigned long long)r->len);
    if (o->kind == KVN_XPORT_WRITE && !(r->access & KVN_XPORT_ACCESS_REMOTE_WRITE))
        return kvn_err_set(err, -EACCES, "op %u: remote region does not allow WRITE", i);
    if (o->kind == KVN_XPORT_READ && !(r->access & KVN_XPORT_ACCESS_REMOTE_READ))
        return kvn_err_set(err, -EACCES, "op %u: remote region does not allow READ", i);
    if (x->max_op_bytes && total > x->max_op_bytes)
        return kvn_err_set(err, -EMSGSIZE, "op %u: %llu bytes above the backend limit %llu", i,
                           (unsigned long long)total, (unsigned long long)x->max_op_bytes);
    *total_out = total;
    return 0;
}

static int check_peer_usable(struct kvn_xport_peer *p, struct kvn_err *err)
{
    if (!p->connected)
        return kvn_err_set(err, -ENOTCONN, "peer is disconnected");
    if (p->failed)
        return kvn_err_set(err, -ENOTCONN,
                           "peer failed earlier (timeout or connection "
                           "error); disconnect and reconnect");
    return 0;
}

static int check_capacity(struct kvn_xport *x, uint32_t n, struct kvn_err *err)
{
    if (x->n_outstanding + (uint64_t)n > x->attr.max_outstanding)
        return kvn_err_set(err, -EAGAIN,
                           "%u ops would exceed max_outstanding %u (%u "
                           "outstanding or unpolled)",
                           n, x->attr.max_outstanding, x->n_outstanding);
    if (n > x->n_free)
        return kvn_err_set(err, -EAGAIN,
                           "only %u op contexts free (timed-out ops still "
                           "held by the backend)",
                           x->n_free);
    return 0;
}

static struct xport_op *op_alloc(struct kvn_xport_peer *p, enum kvn_xport_op_kind kind,
                                 uint64_t cookie, uint64_t deadline)
{
    struct kvn_xport *x = p->x;
    struct xport_op *op = x->free_ops;
    x->free_ops = op->next_free;
    x->n_free--;
    op->next_free = NULL;
    op->x = x;
    op->peer = p;
    op->kind = kind;
    op->cookie = cookie;
    op->deadline_ns = deadline;
    p->refs++;
    p->n_outstanding++;
    x->n_outstanding++;
    link_add_tail(&x->fifo, &op->fifo);
    link_add_tail(&p->ops, &op->plink);
    return op;
}

static void op_track_mrs(struct xport_op *op, const struct kvn_xport_op *o)
{
    for (uint32_t k = 0; k < o->n_local && !op->wide; k++) {
        struct kvn_xport_mr *m = o->local[k].mr;
        bool seen = false;
        for (uint8_t j = 0; j < op->n_mrs; j++)
            if (op->mrs[j] == m) {
                seen = true;
                break;
            }
        if (seen)
            continue;
        if (op->n_mrs == XPORT_OP_MRS)
            op->wide = true;
        else
            op->mrs[op->n_mrs++] = m;
    }
    for (uint8_t j = 0; j < op->n_mrs; j++)
        op->mrs[j]->busy++;
    if (op->wide)
        op->x->n_wide++;
}

/* Backend refused op before posting anything: complete it now. */
static void op_post_failed(struct xport_op *op, int rc, const char *msg)
{
    op->parts = 0;
    op->posting = false;
    if (!op->reported) {
        op->status = rc;
        snprintf(op->msg, sizeof(op->msg), "%s", msg && *msg ? msg : "post failed");
        if (op->peer && is_conn_error(rc))
            op->peer->failed = true;
        op_report(op);
    }
    op_recycle(op);
}

/* After ops->post/notify returned rc. */
static void op_posted(struct xport_op *op, int rc, const char *msg)
{
    if (rc < 0) {
        op_post_failed(op, rc, msg);
        return;
    }
    op->posting = false;
    if (op->parts == 0) {
        /* every part completed while the backend was still posting */
        if (!op->reported)
            op_report(op);
        op_recycle(op);
    }
}

int kvn_xport_post(struct kvn_xport_peer *p, const struct kvn_xport_op *ops, uint32_t n,
                   struct kvn_err *err)
{
    if (!p || !ops || n == 0)
        return kvn_err_set(err, -EINVAL, "p and ops must be non-NULL, n >= 1");
    struct kvn_xport *x = p->x;
    if (n > x->attr.max_outstanding)
        return kvn_err_set(err, -EINVAL,
                           "batch of %u ops above "
                           "max_outstanding %u",
                           n, x->attr.max_outstanding);
    int rc = check_peer_usable(p, err);
    if (rc < 0)
        return rc;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t total;
        rc = validate_op(p, &ops[i], i, &total, err);
        if (rc < 0)
            return rc;
    }
    rc = check_capacity(x, n, err);
    if (rc < 0)
        return rc;

    uint64_t deadline = xport_now_ns() + (uint64_t)x->attr.op_timeout_ms * 1000000ull;
    for (uint32_t i = 0; i < n; i++) {
        const struct kvn_xport_op *o = &ops[i];
        if (!p->connected || p->failed) {
            /* an earlier op of this batch failed the peer synchronously */
            struct xport_op *op = op_alloc(p, o->kind, o->cookie, deadline);
            op_post_failed(op, -ENOTCONN, "peer failed while posting batch");
            continue;
        }
        struct xport_op *op = op_alloc(p, o->kind, o->cookie, deadline);
        op->rmr = o->remote;
        o->remote->busy++;
        op_track_mrs(op, o);
        struct xport_post_req req = {
            .kind = o->kind,
            .local = o->local,
            .n_local = o->n_local,
            .remote = o->remote,
            .remote_addr = o->remote->base + o->remote_offset,
        };
        for (uint32_t k = 0; k < o->n_local; k++)
            req.len += o->local[k].len;
        op->bytes = req.len;
        struct kvn_err e;
        kvn_err_clear(&e);
        op->posting = true;
        rc = x->ops->post(p, op, &req, &e);
        op_posted(op, rc, e.msg);
    }
    kvn_err_clear(err);
    return 0;
}

int kvn_xport_notify(struct kvn_xport_peer *p, const void *buf, size_t len, uint64_t cookie,
                     struct kvn_err *err)
{
    if (!p || !buf)
        return kvn_err_set(err, -EINVAL, "p and buf must not be NULL");
    struct kvn_xport *x = p->x;
    if (len == 0)
        return kvn_err_set(err, -EINVAL, "empty notification");
    if (len > x->attr.max_msg_size)
        return kvn_err_set(err, -EMSGSIZE, "notification of %zu bytes above max_msg_size %u", len,
                           x->attr.max_msg_size);
    int rc = check_peer_usable(p, err);
    if (rc < 0)
        return rc;
    rc = check_capacity(x, 1, err);
    if (rc < 0)
        return rc;
    uint64_t deadline = xport_now_ns() + (uint64_t)x->attr.op_timeout_ms * 1000000ull;
    struct xport_op *op = op_alloc(p, KVN_XPORT_SEND, cookie, deadline);
    op->bytes = len;
    struct xport_notify_hdr hdr = {.magic = XPORT_NOTIFY_MAGIC, .len = (uint32_t)len, .src = x->id};
    struct kvn_err e;
    kvn_err_clear(&e);
    op->posting = true;
    rc = x->ops->notify(p, op, &hdr, buf, len, &e);
    op_posted(op, rc, e.msg);
    kvn_err_clear(err);
    return 0;
}

/* ------------------------------------------------------------------ */
/* completions                                                         */

static struct xport_ring_ent *ring_slot(struct kvn_xport *x)
{
    struct xport_cq_ring *r = x->ring;
    if (r->count == r->cap)
        return NULL; /* cannot happen by construction; see file comment */
    struct xport_ring_ent *e = &r->ent[(r->head + r->count) % r->cap];
    r->count++;
    return e;
}

static void ring_push_op(struct kvn_xport *x, struct xport_op *op)
{
    struct xport_ring_ent *e = ring_slot(x);
    if (!e)
        return;
    e->is_recv = false;
    e->token = 0;
    e->cqe.cookie = op->cookie;
    e->cqe.status = op->status;
    e->cqe.kind = op->kind;
    e->cqe.peer = (op->peer && op->peer->connected) ? op->peer : NULL;
    e->cqe.peer_id = op->peer ? op->peer->remote_id : 0;
    e->cqe.data = NULL;
    e->cqe.len = op->bytes > UINT32_MAX ? UINT32_MAX : (uint32_t)op->bytes;
    if (op->status < 0)
        memcpy(e->cqe.msg, op->msg, sizeof(e->cqe.msg));
    else
        e->cqe.msg[0] = '\0';
}

void xport_op_done(struct xport_op *op, int status, const char *msg)
{
    struct kvn_xport *x = op->x;
    if (status < 0 && op->status == 0) {
        op->status = status;
        snprintf(op->msg, sizeof(op->msg), "%s", msg && *msg ? msg : kvn_err_name(status));
    }
    if (op->parts > 0)
        op->parts--;
    if (op->parts > 0 || x->in_close)
        return;
    if (!op->reported) {
        if (op->status < 0 && op->peer && is_conn_error(op->status) && !op->peer->failed) {
            op->peer->failed = true;
            op_report(op);
            peer_fail_ops(op->peer, op->status,
                          "peer failed: an earlier op got a connection error");
        } else {
            op_report(op);
        }
    }
    if (!op->posting) /* else op_posted() recycles it */
        op_recycle(op);
}

void xport_recv_deliver(struct kvn_xport *x, const void *data, size_t len, uint64_t token)
{
    const uint8_t *b = data;
    struct xport_notify_hdr h;
    if (x->in_close)
        return;
    if (len < sizeof(h)) {
        x->ops->recv_repost(x, token);
        return;
    }
    memcpy(&h, b, sizeof(h));
    if (h.magic != XPORT_NOTIFY_MAGIC || h.len != len - sizeof(h) || h.len == 0 ||
        h.len > x->attr.max_msg_size) {
        x->ops->recv_repost(x, token); /* malformed: drop */
        return;
    }
    struct xport_ring_ent *e = ring_slot(x);
    if (!e) {
        x->ops->recv_repost(x, token);
        return;
    }
    struct kvn_xport_peer *p = x->peer_hash[h.src & (x->peer_hash_size - 1)];
    while (p && p->remote_id != h.src)
        p = p->hash_next;
    e->is_recv = true;
    e->token = token;
    e->cqe.cookie = 0;
    e->cqe.status = 0;
    e->cqe.kind = KVN_XPORT_RECV;
    e->cqe.peer = p;
    e->cqe.peer_id = h.src;
    e->cqe.data = b + sizeof(h);
    e->cqe.len = h.len;
    e->cqe.msg[0] = '\0';
}

static void check_timeouts(struct kvn_xport *x)
{
    if (link_empty(&x->fifo))
        return;
    uint64_t now = xport_now_ns();
    while (!link_empty(&x->fifo)) {
        struct xport_op *op = XPORT_CONTAINER(x->fifo.next, struct xport_op, fifo);
        if (op->deadline_ns > now)
            break;
        struct kvn_xport_peer *p = op->peer;
        op->status = -ETIMEDOUT;
        snprintf(op->msg, sizeof(op->msg), "op not completed within %u ms; peer marked failed",
                 x->attr.op_timeout_ms);
        op_report(op);
        if (p && !p->failed) {
            p->failed = true;
            peer_fail_ops(p, -ETIMEDOUT, "peer failed: an earlier op timed out");
        }
        /* the backend still owns it (parts > 0): zombie until returned */
    }
}

static void release_recv_tokens(struct kvn_xport *x)
{
    for (uint32_t i = 0; i < x->n_repost; i++)
        x->ops->recv_repost(x, x->repost_tokens[i]);
    x->n_repost = 0;
}

static void timer_arm(struct kvn_xport *x, uint64_t deadline)
{
    struct itimerspec its;
    memset(&its, 0, sizeof(its));
    its.it_value.tv_sec = (time_t)(deadline / 1000000000ull);
    its.it_value.tv_nsec = (long)(deadline % 1000000000ull);
    if (timerfd_settime(x->tmfd, TFD_TIMER_ABSTIME, &its, NULL) == 0)
        x->timer_deadline_ns = deadline;
}

/* Make the wait fd reflect the state after an empty poll. */
static void rearm(struct kvn_xport *x)
{
    uint64_t v;
    if (x->ev_signaled) {
        if (read(x->evfd, &v, sizeof(v)) < 0) {
            /* EAGAIN: nothing to clear */
        }
        x->ev_signaled = false;
    }
    uint64_t now = xport_now_ns();
    if (x->timer_deadline_ns && x->timer_deadline_ns <= now) {
        if (read(x->tmfd, &v, sizeof(v)) < 0) {
            /* EAGAIN: already cleared */
        }
        x->timer_deadline_ns = 0;
    }
    int armed = x->ops->arm ? x->ops->arm(x) : 0;
    uint64_t d = UINT64_MAX;
    if (!link_empty(&x->fifo))
        d = XPORT_CONTAINER(x->fifo.next, struct xport_op, fifo)->deadline_ns + 1000000ull;
    /* no backend fd, or backend work that needs a retry soon: tick (1 ms)
     * so that completions and incoming notifications are noticed */
    if ((x->backend_fd < 0 || armed == -EINPROGRESS) && now + XPORT_TICK_NS < d)
        d = now + XPORT_TICK_NS;
    if (d != UINT64_MAX && (x->timer_deadline_ns == 0 || d < x->timer_deadline_ns))
        timer_arm(x, d);
    if (armed == -EAGAIN) {
        v = 1;
        if (write(x->evfd, &v, sizeof(v)) == (ssize_t)sizeof(v))
            x->ev_signaled = true;
    }
}

static int progress(struct kvn_xport *x)
{
    if (x->n_repost)
        release_recv_tokens(x);
    int rc = x->ops->progress(x);
    check_timeouts(x);
    return rc;
}

static int poll_cq(struct kvn_xport *x, struct kvn_xport_cqe *out, int max, bool may_rearm)
{
    if (!x || !out || max <= 0)
        return -EINVAL;
    int rc = progress(x);
    struct xport_cq_ring *r = x->ring;
    int n = 0;
    while (n < max && r->count) {
        struct xport_ring_ent *e = &r->ent[r->head];
        struct kvn_xport_cqe *c = &out[n++];
        c->cookie = e->cqe.cookie;
        c->status = e->cqe.status;
        c->kind = e->cqe.kind;
        c->peer = e->cqe.peer;
        c->peer_id = e->cqe.peer_id;
        c->data = e->cqe.data;
        c->len = e->cqe.len;
        if (e->cqe.status < 0)
            memcpy(c->msg, e->cqe.msg, sizeof(c->msg));
        else
            c->msg[0] = '\0';
        if (e->is_recv) {
            if (x->n_repost < x->cap_repost)
                x->repost_tokens[x->n_repost++] = e->token;
        } else {
            x->n_outstanding--;
        }
        r->head = (r->head + 1) % r->cap;
        r->count--;
    }
    if (n == 0) {
        if (rc < 0)
            return rc;
        if (x->fd_used && may_rearm)
            rearm(x);
    }
    return n;
}

int kvn_xport_poll(struct kvn_xport *x, struct kvn_xport_cqe *out, int max)
{
    return poll_cq(x, out, max, true);
}

int kvn_xport_poll_busy(struct kvn_xport *x, struct kvn_xport_cqe *out, int max)
{
    return poll_cq(x, out, max, false);
}

int kvn_xport_wait_fd(struct kvn_xport *x)
{
    if (!x)
        return -EINVAL;
    if (!x->fd_used) {
        x->fd_used = true;
        rearm(x);
    }
    return x->epfd;
}

int kvn_xport_wait(struct kvn_xport *x, int timeout_ms, struct kvn_err *err)
{
    if (!x)
        return kvn_err_set(err, -EINVAL, "x must not be NULL");
    uint64_t start = xport_now_ns();
    uint64_t end = timeout_ms < 0 ? UINT64_MAX : start + (uint64_t)timeout_ms * 1000000ull;
    for (;;) {
        if (x->ring->count)
            return 0;
        int rc = progress(x);
        if (rc < 0)
            return kvn_err_set(err, rc, "backend progress failed");
        if (x->ring->count)
            return 0;
        uint64_t now = xport_now_ns();
        if (now >= end)
            return kvn_err_set(err, -ETIMEDOUT, "nothing completed in %d ms", timeout_ms);
        int armed = x->ops->arm ? x->ops->arm(x) : 0;
        if (armed == -EAGAIN)
            continue;
        uint64_t sleep_ns = end - now;
        if (!link_empty(&x->fifo)) {
            uint64_t d = XPORT_CONTAINER(x->fifo.next, struct xport_op, fifo)->deadline_ns;
            sleep_ns = d > now ? (d - now < sleep_ns ? d - now : sleep_ns) : 0;
        }
        if ((x->backend_fd < 0 || armed == -EINPROGRESS) && sleep_ns > XPORT_TICK_NS)
            sleep_ns = XPORT_TICK_NS;
        int ms = sleep_ns >= (uint64_t)INT32_MAX * 1000000ull
                     ? -1
                     : (int)((sleep_ns + 999999ull) / 1000000ull);
        struct epoll_event ev[4];
        int k = epoll_wait(x->epfd, ev, 4, ms);
        if (k < 0 && errno != EINTR)
            return kvn_err_set(err, -errno, "epoll_wait: %s", strerror(errno));
        uint64_t v;
        if (x->ev_signaled) {
            if (read(x->evfd, &v, sizeof(v)) < 0) {
                /* nothing to clear */
            }
            x->ev_signaled = false;
        }
        if (x->timer_deadline_ns && x->timer_deadline_ns <= xport_now_ns()) {
            if (read(x->tmfd, &v, sizeof(v)) < 0) {
                /* already cleared */
            }
            x->timer_deadline_ns = 0;
        }
    }
}

/* ------------------------------------------------------------------ */
/* device listing (sysfs; works without the verbs library)              */

static int read_line(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return -errno;
    char *ok = fgets(buf, (int)cap, f);
    fclose(f);
    if (!ok)
        return -EIO;
    buf[strcspn(buf, "\n")] = '\0';
    return 0;
}

int kvn_xport_list_devices(struct kvn_xport_devinfo *out, int max, struct kvn_err *err)
{
    if (max < 0 || (max > 0 && !out))
        return kvn_err_set(err, -EINVAL, "out NULL or max < 0");
    const char *root = "/sys/class/infiniband";
    DIR *d = opendir(root);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.' || strlen(de->d_name) >= 64)
            continue;
        char path[512], line[128];
        snprintf(path, sizeof(path), "%s/%.63s/device/numa_node", root, de->d_name);
        int numa = -1;
        if (read_line(path, line, sizeof(line)) == 0)
            numa = atoi(line);
        snprintf(path, sizeof(path), "%s/%.63s/ports", root, de->d_name);
        DIR *pd = opendir(path);
        if (!pd)
            continue;
        struct dirent *pe;
        while ((pe = readdir(pd))) {
            if (!isdigit((unsigned char)pe->d_name[0]))
                continue;
            if (n < max) {
                struct kvn_xport_devinfo *o = &out[n];
                memset(o, 0, sizeof(*o));
                snprintf(o->name, sizeof(o->name), "%.63s", de->d_name);
                o->port = (uint32_t)atoi(pe->d_name);
                o->numa_node = numa;
                snprintf(path, sizeof(path), "%s/%.63s/ports/%.15s/state", root, de->d_name,
                         pe->d_name);
                if (read_line(path, line, sizeof(line)) == 0) {
                    const char *s = strchr(line, ':');
                    s = s ? s + 1 : line;
                    while (*s == ' ')
                        s++;
                    snprintf(o->state, sizeof(o->state), "%.31s", s);
                    o->active = strcmp(o->state, "ACTIVE") == 0;
                }
                snprintf(path, sizeof(path), "%s/%.63s/ports/%.15s/link_layer", root, de->d_name,
                         pe->d_name);
                if (read_line(path, line, sizeof(line)) == 0)
                    snprintf(o->link_layer, sizeof(o->link_layer), "%.31s", line);
            }
            n++;
        }
        closedir(pd);
    }
    closedir(d);
    return n;
}
