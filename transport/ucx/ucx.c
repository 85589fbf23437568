/*
 * ucx.c - the UCX backend: one ucp_context + one ucp_worker per domain.
 *
 *   ucx+tcp  UCX_TLS=tcp     ucx+sm  UCX_TLS=sm (sysv, posix, cma)
 *   ucx      UCX's own choice (the UCX_TLS of the environment, else all)
 *
 * The transports are restricted with ucp_config_modify("TLS") before
 * ucp_init, never with setenv; UCX logging is lowered to "error" the same
 * way.  Thread mode is single: a domain belongs to one thread at a time.
 *
 *   domain ── ucp_context ── ucp_worker ── efd (the wait fd)
 *     │            address blob = ucp_worker_get_address()
 *     ├── peer ── ucp_ep (ucp_ep_create from the peer's worker address)
 *     │     └── rmr ── ucp_rkey (ucp_ep_rkey_unpack of the descriptor key)
 *     └── mr ── ucp_mem_h (ucp_mem_map of the caller's buffer), packed
 *               rkey cached at registration for kvn_xport_mr_pack()
 *
 * Ops.  A WRITE/READ is one ucp_put_nbx / ucp_get_nbx per local SG entry
 * (each a part of the op, completing it once), with the mr's memh passed in
 * the request parameters so UCX does no registration lookup.  Request
 * callbacks feed the common layer (xport_op_done); a part that completes
 * immediately (NULL request) is reported at once.  Nothing is malloc'd per
 * op: UCX takes requests from its own pool, and UCP_PARAM_FIELD_REQUEST_SIZE
 * reserves our per-request context (struct ucx_req) inside them.
 *
 * Completion semantics.  As kvn_xport.h says, a WRITE completes when it is
 * delivered: after its puts, an endpoint flush (ucp_ep_flush_nbx) that
 * completes only once the target acknowledged everything posted before it
 * is one more part of the op (batched, see "WRITE completion flushes").  So
 * a completed WRITE is at the target, and WRITEs to a peer that died fail
 * instead of completing from a socket buffer.  kvn_xport_ucx_set_write_
 * delivery(x, 0) switches a domain to UCX's local put completion (what
 * ucx_perftest measures; faster for small WRITEs at a fixed queue depth
 * over tcp when the target is slow to be scheduled); visibility then comes
 * from the notification rule below.  Over ucx+sm into memory from
 * kvn_xport_ucx_mem_alloc a put is a memcpy into the peer's shared segment,
 * complete at once in both modes (also when the peer has died: the bytes
 * are in the segment).
 *
 * Notifications and ordering.  kvn_xport_notify() is an active message
 * (ucp_am_send_nbx, eager, whole message = xport_notify_hdr + payload,
 * copied into a send buffer).  If WRITEs/READs were posted to the peer since
 * its last notification, the endpoint is flushed first (ucp_ep_flush_nbx:
 * remote completion of everything posted before) and the message is sent
 * from the flush completion.  So on every UCX transport a notification
 * arrives AFTER the bytes of every WRITE posted before it to the same peer,
 * whether or not the caller waited for the WRITE completions, and
 * notifications to one peer keep their order.  Receivers copy each message
 * into one of n_recv_bufs buffers (given back by recv_repost); a message
 * arriving while all are held by unpolled RECV completions is dropped and
 * counted (rx_dropped), never queued without bound.
 *
 * Progress.  UCX over tcp emulates RMA with active messages: the TARGET must
 * progress its worker (kvn_xport_poll / kvn_xport_wait do), so every user of
 * a domain polls it regularly, also when it only serves as a target.
 * Over sm, puts and gets go through CMA and need no target progress once the
 * endpoint is wired up (which still needs the target to poll once).
 *
 * Wait fd.  ucp_worker_get_efd(); arm protocol: poll until empty, then
 * ucp_worker_arm(); UCS_ERR_BUSY means events arrived meanwhile (-EAGAIN:
 * poll again).  A notification waiting for its flush also makes arm busy.
 *
 * Peer failure.  Endpoints use UCP_ERR_HANDLING_MODE_PEER where UCX supports
 * it (tcp, and "ucx" which then avoids shm): the error handler marks the
 * peer failed and UCX completes its outstanding requests with an error
 * (mapped to -ECONNRESET).  UCX 1.13's shared-memory transports have no
 * peer-failure support, so ucx+sm endpoints use mode NONE and an op to a
 * dead sm peer never completes in UCX.  Our address blob therefore starts
 * with the process id (and pid namespace): while a ucx+sm peer has ops in
 * flight, progress checks kill(pid, 0) every 100 ms and fails the peer
 * (xport_peer_fail, "peer process N is gone") when it has exited; the
 * common layer's op_timeout_ms remains the bound for everything else.
 * Disconnect closes the endpoint (see ucx_disconnect); ops of a failed peer
 * that UCX still holds are handed back to the common layer as canceled and
 * their requests become "stale" (a generation number in the op's backend
 * scratch no longer matches the one in the request), freed when UCX calls
 * back (at the latest in ucp_worker_destroy); while any are alive, memory
 * unmapping is deferred to domain close.
 */
#include <errno.h>
#include <ifaddrs.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ucp/api/ucp.h>

#include "transport/ucx/kvn_xport_ucx.h"
#include "transport/xport_impl.h"

#define UCX_AM_ID           0x4b56u      /* "KV" */
#define UCX_N_RX            128u         /* receive buffers per domain */
#define UCX_PROGRESS_ROUNDS 64           /* ucp_worker_progress calls per poll, at most */
#define UCX_KEY_MAGIC       0x4b584355u  /* "UCXK" */
#define UCX_KEY_HDR         8u           /* u32 magic, u32 packed rkey length */
#define UCX_FLUSH_MAX       16u          /* write-completion flushes in flight per peer */
#define UCX_FL_EVERY        8u           /* WRITEs per write-completion flush, at most... */
#define UCX_FL_BYTES        (512u << 10) /* ...or bytes (see "WRITE completion flushes") */
#define UCX_ADDR_MAGIC      0x41584355u  /* "UCXA": our header before the worker address */
#define UCX_PID_CHECK_NS    100000000ull /* sm peers' liveness check period */

/* Our raw address: this header, then ucp_worker_get_address() bytes.  The
 * pid lets ucx+sm peers (same host, no UCX peer-failure support) notice a
 * dead process; pidns says whether the pid means anything to the reader. */
struct ucx_addr_hdr {
    uint32_t magic;
    uint32_t pid;
    uint64_t pidns; /* inode of /proc/self/ns/pid, 0 if unknown */
};

enum ucx_req_kind {
    UCX_REQ_RMA = 1, /* a put/get part of op */
    UCX_REQ_FLUSH,   /* the flush before a notification (sb) */
    UCX_REQ_SEND,    /* a notification's active message (sb) */
    UCX_REQ_BATCH,   /* a peer's write-completion flush (no op) */
    UCX_REQ_STALE,   /* a BATCH flush whose peer was handed back */
};

struct ucx_domain;
struct ucx_peer;

/* A notification waiting to be sent or in flight (a send buffer). */
struct ucx_sbuf {
    struct ucx_sbuf *next; /* free list or the peer's pending FIFO */
    struct xport_op *op;
    uint32_t gen;         /* op generation when queued */
    uint32_t len;         /* bytes in data */
    int status;           /* flush result */
    bool ready;           /* flush done (or not needed): may be sent */
    bool flushing;        /* a flush request refers to it */
    unsigned char data[]; /* xport_notify_hdr + payload */
};

/* Our context inside every UCX request (UCP_PARAM_FIELD_REQUEST_SIZE). */
struct ucx_req {
    struct ucx_domain *d;
    struct xport_op *op;
    struct ucx_sbuf *sb;
    uint32_t gen;
    uint32_t kind;
    /* UCX_REQ_BATCH only: the WRITEs this flush completes, and the link in
     * the peer's list of flushes in flight */
    struct xport_link writes;
    struct xport_link rlink;
};

/* A chunk of send buffers (allocated on demand, freed at close). */
struct ucx_chunk {
    struct ucx_chunk *next;
};

/* Memory UCX allocated for the caller (kvn_xport_ucx_mem_alloc). */
struct ucx_region {
    void *addr;
    size_t len;
    ucp_mem_h memh;
    uint32_t n_mrs; /* mrs registered inside it */
};

/* An endpoint being closed, reaped by progress. */
struct ucx_grave {
    struct ucx_grave *next;
    void *req;
};

struct ucx_domain {
    struct kvn_xport base;
    ucp_context_h ctx;
    ucp_worker_h worker;
    ucp_address_t *addr;
    size_t addr_len;
    int efd;
    ucp_err_handling_mode_t err_mode;

    /* notifications */
    size_t sbuf_size; /* sizeof(ucx_sbuf) + hdr + max_msg_size */
    struct ucx_sbuf *free_sbufs;
    struct ucx_chunk *chunks;
    uint32_t n_sbufs;       /* allocated */
    struct ucx_peer *drain; /* peers whose FIFO head may be sendable */
    unsigned char *rx_mem;  /* UCX_N_RX * rx_size */
    size_t rx_size;
    uint32_t *rx_free; /* stack of free receive buffer indexes */
    uint32_t n_rx_free;
    uint64_t rx_dropped;

    /* disconnects and stale requests */
    struct ucx_grave *graves;
    uint64_t n_stale;     /* UCX requests whose op was handed back */
    ucp_mem_h *dead_memh; /* unmaps deferred while n_stale > 0 */
    uint32_t n_dead_memh, cap_dead_memh;
    ucp_rkey_h *dead_rkey;
    uint32_t n_dead_rkey, cap_dead_rkey;

    uint64_t md_known;           /* memory domains our own rkeys use (validation) */
    uint64_t pidns;              /* our pid namespace (ucx_addr_hdr) */
    struct xport_link pid_peers; /* sm peers whose pid we can check */
    uint64_t next_pid_check;
    bool write_delivery; /* WRITEs complete after a flush (remote complete) */

    struct ucx_region **regions; /* kvn_xport_ucx_mem_alloc, unordered */
    uint32_t n_regions, cap_regions;
};

struct ucx_peer {
    struct kvn_xport_peer base;
    ucp_ep_h ep;
    bool ep_failed; /* error handler ran */
    bool dirty;     /* RMA posted since the last flush */
    bool in_drain;
    char why[80]; /* the error handler's status text */
    struct ucx_peer *drain_next;
    struct ucx_sbuf *q_head, *q_tail; /* notifications in order */
    struct xport_link owned;          /* ops UCX still holds (via op scratch) */
    /* WRITE completion flushes: at most one in flight per peer */
    struct xport_link fl_wait;  /* WRITEs waiting for a flush to be issued */
    struct xport_link fl_reqs;  /* flushes in flight (ucx_req.rlink) */
    uint32_t n_fl;              /* how many */
    uint32_t fl_n;              /* WRITEs in fl_wait */
    uint64_t fl_bytes;          /* their bytes */
    pid_t pid;                  /* ucx+sm: the peer's process, 0 = unknown */
    struct xport_link pid_link; /* in d->pid_peers when pid != 0 */
};

struct ucx_mr {
    struct kvn_xport_mr base;
    ucp_mem_h memh;
    struct ucx_region *region; /* memh borrowed from it, or NULL */
    void *packed;              /* rkey bytes from ucp_rkey_pack */
    size_t packed_len;
};

struct ucx_rmr {
    struct kvn_xport_rmr base;
    ucp_rkey_h rkey;
};

/*
 * The op's backend scratch: [0] generation (survives recycling, the common
 * layer only clears the fields before `backend`), [1..2] the link in the
 * peer's owned list.
 */
static inline uint32_t op_gen(const struct xport_op *op)
{
    return (uint32_t)op->backend[0];
}

static inline struct xport_link *op_olink(struct xport_op *op)
{
    return (struct xport_link *)(void *)&op->backend[1];
}

static inline struct xport_op *olink_op(struct xport_link *l)
{
    return XPORT_CONTAINER((void *)l, struct xport_op, backend[1]);
}

/* [3..4]: the link in the peer's fl_wait / fl_run list (WRITEs only). */
static inline struct xport_link *op_flink(struct xport_op *op)
{
    return (struct xport_link *)(void *)&op->backend[3];
}

static inline struct xport_op *flink_op(struct xport_link *l)
{
    return XPORT_CONTAINER((void *)l, struct xport_op, backend[3]);
}

static void link_init_(struct xport_link *l)
{
    l->prev = l->next = l;
}

static void link_add_(struct xport_link *h, struct xport_link *l)
{
    l->prev = h->prev;
    l->next = h;
    h->prev->next = l;
    h->prev = l;
}

static void link_del_(struct xport_link *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->prev = l->next = l;
}

static inline struct ucx_domain *dom(struct kvn_xport *x)
{
    return (struct ucx_domain *)x;
}

static inline struct ucx_peer *upeer(struct kvn_xport_peer *p)
{
    return (struct ucx_peer *)p;
}

/* UCX status -> negative errno (connection losses are connection errors so
 * that the common layer fails the peer). */
static int ucx_errno(ucs_status_t st)
{
    switch (st) {
    case UCS_OK:
        return 0;
    case UCS_ERR_NO_MEMORY:
        return -ENOMEM;
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_INVALID_ADDR:
        return -EINVAL;
    case UCS_ERR_NO_RESOURCE:
    case UCS_ERR_BUSY:
        return -EAGAIN;
    case UCS_ERR_UNREACHABLE:
        return -EHOSTUNREACH;
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
        return -ECONNRESET;
    case UCS_ERR_REJECTED:
        return -ECONNREFUSED;
    case UCS_ERR_NOT_CONNECTED:
        return -ENOTCONN;
    case UCS_ERR_CANCELED:
        return -ECANCELED;
    case UCS_ERR_TIMED_OUT:
        return -ETIMEDOUT;
    case UCS_ERR_NO_DEVICE:
    case UCS_ERR_NO_ELEM:
        return -ENODEV;
    case UCS_ERR_UNSUPPORTED:
        return -ENOTSUP;
    case UCS_ERR_MESSAGE_TRUNCATED:
    case UCS_ERR_EXCEEDS_LIMIT:
        return -EMSGSIZE;
    default:
        return -EIO;
    }
}

/* ------------------------------------------------------------------ */
/* op ownership                                                        */

static void link_init_(struct xport_link *l);
static void fl_complete(struct xport_link *list, int status, const char *msg);
static void fl_wait_complete(struct ucx_peer *up, int status, const char *msg);

static void own(struct ucx_peer *up, struct xport_op *op, uint32_t parts)
{
    op->parts = parts;
    link_add_(&up->owned, op_olink(op));
    link_init_(op_flink(op));
}

/* One part of op is back from UCX. */
static void part_done(struct xport_op *op, int status, const char *msg)
{
    if (op->parts <= 1)
        link_del_(op_olink(op));
    xport_op_done(op, status, msg);
}

static void part_done_ucs(struct xport_op *op, ucs_status_t st)
{
    if (st == UCS_OK)
        part_done(op, 0, NULL);
    else
        part_done(op, ucx_errno(st), ucs_status_string(st));
}

/* ------------------------------------------------------------------ */
/* send buffers and receive buffers                                    */

static struct ucx_sbuf *sbuf_get(struct ucx_domain *d)
{
    if (!d->free_sbufs) {
        /* grow by a chunk; bounded by max_outstanding buffers in total */
        uint32_t n = 16;
        if (d->n_sbufs >= d->base.attr.max_outstanding)
            return NULL;
        if (n > d->base.attr.max_outstanding - d->n_sbufs)
            n = d->base.attr.max_outstanding - d->n_sbufs;
        struct ucx_chunk *c = malloc(16 + (size_t)n * d->sbuf_size);
        if (!c)
            return NULL;
        c->next = d->chunks;
        d->chunks = c;
        unsigned char *m = (unsigned char *)c + 16; /* 16-byte aligned */
        for (uint32_t i = 0; i < n; i++) {
            struct ucx_sbuf *sb = (struct ucx_sbuf *)(void *)(m + i * d->sbuf_size);
            sb->next = d->free_sbufs;
            d->free_sbufs = sb;
        }
        d->n_sbufs += n;
    }
    struct ucx_sbuf *s = d->free_sbufs;
    d->free_sbufs = s->next;
    s->next = NULL;
    s->ready = false;
    s->flushing = false;
    s->status = 0;
    return s;
}

static void sbuf_put(struct ucx_domain *d, struct ucx_sbuf *s)
{
    s->op = NULL;
    s->next = d->free_sbufs;
    d->free_sbufs = s;
}

static void ucx_recv_repost(struct kvn_xport *x, uint64_t token)
{
    struct ucx_domain *d = dom(x);
    if (token >= UCX_N_RX || d->n_rx_free >= UCX_N_RX)
        return;
    d->rx_free[d->n_rx_free++] = (uint32_t)token;
}

static ucs_status_t am_recv_cb(void *arg, const void *header, size_t hlen, void *data, size_t len,
                               const ucp_am_recv_param_t *param)
{
    struct ucx_domain *d = arg;
    (void)header;
    (void)hlen;
    if (d->base.in_close)
        return UCS_OK;
    if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) || len > d->rx_size || d->n_rx_free == 0) {
        /* never sent by us (eager only) or no buffer left: drop */
        d->rx_dropped++;
        return UCS_OK;
    }
    uint32_t idx = d->rx_free[--d->n_rx_free];
    unsigned char *buf = d->rx_mem + (size_t)idx * d->rx_size;
    memcpy(buf, data, len);
    xport_recv_deliver(&d->base, buf, len, idx);
    return UCS_OK;
}

/* ------------------------------------------------------------------ */
/* request callbacks                                                   */

static void am_send(struct ucx_peer *up, struct ucx_sbuf *sb);

/* Common prologue: false when the request is stale (its op was handed back
 * to the common layer) or the domain is closing; the request is then freed
 * here and so is a send buffer it held. */
static bool req_live(struct ucx_req *rq, void *request)
{
    struct ucx_domain *d = rq->d;
    if (d->base.in_close) {
        ucp_request_free(request);
        return false;
    }
    if (rq->gen != op_gen(rq->op)) {
        if (d->n_stale)
            d->n_stale--;
        if (rq->sb)
            sbuf_put(d, rq->sb);
        ucp_request_free(request);
        return false;
    }
    return true;
}

static void rma_cb(void *request, ucs_status_t st, void *user_data)
{
    struct ucx_req *rq = request;
    (void)user_data;
    if (!req_live(rq, request))
        return;
    struct xport_op *op = rq->op;
    ucp_request_free(request);
    part_done_ucs(op, st);
}

static void send_cb(void *request, ucs_status_t st, void *user_data)
{
    struct ucx_req *rq = request;
    (void)user_data;
    if (!req_live(rq, request))
        return;
    struct xport_op *op = rq->op;
    sbuf_put(rq->d, rq->sb);
    ucp_request_free(request);
    part_done_ucs(op, st);
}

static void drain_mark(struct ucx_domain *d, struct ucx_peer *up)
{
    if (up->in_drain)
        return;
    up->in_drain = true;
    up->drain_next = d->drain;
    d->drain = up;
}

static void flush_cb(void *request, ucs_status_t st, void *user_data)
{
    struct ucx_req *rq = request;
    struct ucx_peer *up = user_data;
    struct ucx_sbuf *sb = rq->sb;
    rq->sb = NULL; /* the peer's FIFO owns it, not this request */
    if (sb)
        sb->flushing = false;
    if (!req_live(rq, request)) {
        /* stale: the FIFO was emptied at disconnect, the buffer is ours */
        if (sb && !rq->d->base.in_close)
            sbuf_put(rq->d, sb);
        return;
    }
    ucp_request_free(request);
    sb->ready = true;
    sb->status = ucx_errno(st);
    drain_mark(rq->d, up);
}

static void ep_err_cb(void *arg, ucp_ep_h ep, ucs_status_t st)
{
    struct ucx_peer *up = arg;
    (void)ep;
    up->ep_failed = true;
    snprintf(up->why, sizeof(up->why), "peer endpoint failed: %s", ucs_status_string(st));
}

/* ------------------------------------------------------------------ */
/* open / close                                                        */

/*
 * The network interface that carries bind_host ("127.0.0.1" -> "lo"), for
 * UCX's NET_DEVICES (ucx+tcp: default 127.0.0.1; ucx: only when given; "any"
 * and ucx+sm: no restriction): UCX listens on every interface it is allowed to, and its
 * address blob lists them all, so the restriction is by device.  UCX picks
 * its own ports (TCP_PORT_RANGE cannot be set through ucp_config_modify in
 * 1.13): attr.port is not used.
 */
static int bind_ifname(const char *host, char *ifname, size_t cap, struct kvn_err *err)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    int gr = getaddrinfo(host, NULL, &hints, &ai);
    if (gr != 0)
        return kvn_err_set(err, -EINVAL, "bind_host '%s': %s", host, gai_strerror(gr));
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) < 0) {
        int e = errno;
        freeaddrinfo(ai);
        return kvn_err_set(err, -e, "getifaddrs: %s", strerror(e));
    }
    int rc =
        kvn_err_set(err, -EADDRNOTAVAIL, "bind_host '%s' is not an address of this host", host);
    for (struct addrinfo *a = ai; a && rc < 0; a = a->ai_next) {
        for (struct ifaddrs *i = ifs; i; i = i->ifa_next) {
            if (!i->ifa_addr || i->ifa_addr->sa_family != a->ai_family)
                continue;
            bool same = false;
            if (a->ai_family == AF_INET)
                same = ((struct sockaddr_in *)(void *)i->ifa_addr)->sin_addr.s_addr ==
                       ((struct sockaddr_in *)(void *)a->ai_addr)->sin_addr.s_addr;
            else if (a->ai_family == AF_INET6)
                same = memcmp(&((struct sockaddr_in6 *)(void *)i->ifa_addr)->sin6_addr,
                              &((struct sockaddr_in6 *)(void *)a->ai_addr)->sin6_addr,
                              sizeof(struct in6_addr)) == 0;
            if (same && strlen(i->ifa_name) < cap) {
                snprintf(ifname, cap, "%s", i->ifa_name);
                kvn_err_clear(err);
                rc = 0;
                break;
            }
        }
    }
    freeifaddrs(ifs);
    freeaddrinfo(ai);
    return rc;
}

/* md_map (first 8 bytes) of the rkey of a one-page mapping made with flags. */
static uint64_t probe_md_map(struct ucx_domain *d, void *page, unsigned flags)
{
    ucp_mem_map_params_t mp = {
        .field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                      UCP_MEM_MAP_PARAM_FIELD_FLAGS,
        .address = page,
        .length = 4096,
        .flags = flags,
    };
    ucp_mem_h m;
    uint64_t map = 0;
    if (ucp_mem_map(d->ctx, &mp, &m) != UCS_OK)
        return 0;
    void *rkb;
    size_t rkl;
    if (ucp_rkey_pack(d->ctx, m, &rkb, &rkl) == UCS_OK) {
        if (rkl >= sizeof(map))
            memcpy(&map, rkb, sizeof(map));
        ucp_rkey_buffer_release(rkb);
    }
    ucp_mem_unmap(d->ctx, m);
    return map;
}

/*
 * Structural check of a packed UCX 1.13 rkey before ucp_ep_rkey_unpack(),
 * which takes no length and trusts the bytes:
 *   u64 md_map | u8 memory type | per md bit: u8 size, size bytes
 *   | optional: u8 sys_dev, 3 bytes per device distance
 * The md bits must be memory domains our own context packs (both sides run
 * the same UCX transports), so UCX never indexes past its md table.
 */
static int rkey_check(const struct ucx_domain *d, const unsigned char *b, size_t n,
                      struct kvn_err *err)
{
    uint64_t md_map;
    if (n < sizeof(md_map) + 1)
        return kvn_err_set(err, -EINVAL, "UCX key: rkey of %zu bytes truncated", n);
    memcpy(&md_map, b, sizeof(md_map));
    if (md_map == 0)
        return kvn_err_set(err, -EINVAL, "UCX key: rkey names no memory domain");
    if (md_map & ~d->md_known)
        return kvn_err_set(err, -EINVAL,
                           "UCX key: memory domains 0x%llx unknown to this %s domain "
                           "(other UCX transports on the peer?)",
                           (unsigned long long)(md_map & ~d->md_known), d->base.name);
    if (b[sizeof(md_map)] != UCS_MEMORY_TYPE_HOST)
        return kvn_err_set(err, -EINVAL, "UCX key: memory type %u is not host memory",
                           b[sizeof(md_map)]);
    size_t pos = sizeof(md_map) + 1;
    for (uint64_t m = md_map; m; m &= m - 1) {
        if (pos >= n)
            return kvn_err_set(err, -EINVAL, "UCX key: rkey truncated at byte %zu", pos);
        pos += 1 + (size_t)b[pos];
        if (pos > n)
            return kvn_err_set(err, -EINVAL, "UCX key: rkey truncated at byte %zu", n);
    }
    if (pos != n && (n - pos - 1) % 3 != 0)
        return kvn_err_set(err, -EINVAL, "UCX key: %zu stray bytes after the rkey", n - pos);
    return 0;
}

/*
 * TCP tuning.  UCX 1.13 sends over tcp in segments of UCX_TCP_TX_SEG_SIZE
 * (default 8K): every put, get reply and AM of more than that is cut into
 * 8 KiB pieces, one header and one send call each.  64K (the largest value
 * UCX accepts, the default receive segment) moved 2.4x more bytes per second
 * for 64 KiB WRITEs and 3x for 1 MiB ones over loopback, in kvbench and in
 * ucx_perftest alike (BENCHMARKS.md).  Set on the domain's config only, and
 * only when the environment does not set UCX_TCP_TX_SEG_SIZE itself: the
 * user's setting wins.  Checked by test_ucx_backend (the AM protocol
 * thresholds of an endpoint move from 8K to 64K).
 */
#define UCX_TCP_TX_SEG "64K"

static int tune_tcp(ucp_config_t *cfg, struct kvn_err *err)
{
    if (getenv("UCX_TCP_TX_SEG_SIZE"))
        return 0;
    /* The key of a transport's setting is its name without UCX_ and the
     * transport prefix: "TCP_TX_SEG_SIZE" is refused at worker creation
     * ("invalid configuration"), "TX_SEG_SIZE" reaches the tcp interface
     * (only tcp has such a field in 1.13). */
    ucs_status_t st = ucp_config_modify(cfg, "TX_SEG_SIZE", UCX_TCP_TX_SEG);
    if (st != UCS_OK)
        return kvn_err_set(err, ucx_errno(st), "UCX TCP_TX_SEG_SIZE=%s: %s", UCX_TCP_TX_SEG,
                           ucs_status_string(st));
    return 0;
}

static int ucx_open(const struct xport_uri *uri, const struct kvn_xport_attr *attr,
                    struct kvn_xport **out, struct kvn_err *err)
{
    const char *tls = NULL;
    const char *name = "ucx";
    ucp_err_handling_mode_t mode = UCP_ERR_HANDLING_MODE_PEER;
    if (strcmp(uri->sub, "tcp") == 0) {
        tls = "tcp";
        name = "ucx+tcp";
    } else if (strcmp(uri->sub, "sm") == 0) {
        tls = "sm";
        name = "ucx+sm";
        mode = UCP_ERR_HANDLING_MODE_NONE; /* no shm peer failure in 1.13 */
    } else if (uri->sub[0]) {
        return kvn_err_set(err, -EINVAL, "unknown UCX transport '%s' (ucx, ucx+tcp, ucx+sm)",
                           uri->sub);
    }

    struct ucx_domain *d = calloc(1, sizeof(*d));
    if (!d)
        return kvn_err_set(err, -ENOMEM, "out of memory for a UCX domain");
    d->efd = -1;
    d->err_mode = mode;
    d->write_delivery = true; /* kvn_xport.h: WRITE completion = delivery */
    link_init_(&d->pid_peers);
    struct stat nst;
    if (stat("/proc/self/ns/pid", &nst) == 0)
        d->pidns = (uint64_t)nst.st_ino;
    snprintf(d->base.name, sizeof(d->base.name), "%s", name);
    d->base.remote_virt_addr = true;
    d->base.max_op_bytes = 0;
    d->base.n_recv_bufs = UCX_N_RX;

    uint32_t max_msg = attr->max_msg_size;
    d->rx_size = sizeof(struct xport_notify_hdr) + max_msg;
    d->sbuf_size = (sizeof(struct ucx_sbuf) + d->rx_size + 15) & ~(size_t)15;
    d->rx_mem = malloc((size_t)UCX_N_RX * d->rx_size);
    d->rx_free = calloc(UCX_N_RX, sizeof(*d->rx_free));
    if (!d->rx_mem || !d->rx_free) {
        free(d->rx_mem);
        free(d->rx_free);
        free(d);
        return kvn_err_set(err, -ENOMEM, "out of memory for receive buffers");
    }
    for (uint32_t i = 0; i < UCX_N_RX; i++)
        d->rx_free[i] = UCX_N_RX - 1 - i;
    d->n_rx_free = UCX_N_RX;

    int rc;
    ucp_config_t *cfg = NULL;
    ucs_status_t st = ucp_config_read(NULL, NULL, &cfg);
    if (st != UCS_OK) {
        rc = kvn_err_set(err, ucx_errno(st), "ucp_config_read: %s", ucs_status_string(st));
        goto fail;
    }
    (void)ucp_config_modify(cfg, "LOG_LEVEL", "error");
    /* ucx+tcp: only bind_host's interface (default loopback).  ucx: only
     * when bind_host is given, since NET_DEVICES also filters RDMA ports. */
    const char *host = attr->bind_host;
    if (!host && strcmp(uri->sub, "tcp") == 0)
        host = "127.0.0.1";
    if (host && strcmp(uri->sub, "sm") != 0 && strcmp(host, "any") != 0) {
        char ifname[64];
        rc = bind_ifname(host, ifname, sizeof(ifname), err);
        if (rc == 0 && (st = ucp_config_modify(cfg, "NET_DEVICES", ifname)) != UCS_OK)
            rc = kvn_err_set(err, ucx_errno(st), "UCX NET_DEVICES=%s: %s", ifname,
                             ucs_status_string(st));
        if (rc < 0) {
            ucp_config_release(cfg);
            goto fail;
        }
    }
    if (strcmp(uri->sub, "sm") != 0 && (rc = tune_tcp(cfg, err)) < 0) {
        ucp_config_release(cfg);
        goto fail;
    }
    if (tls && (st = ucp_config_modify(cfg, "TLS", tls)) != UCS_OK) {
        ucp_config_release(cfg);
        rc = kvn_err_set(err, ucx_errno(st), "UCX TLS=%s: %s", tls, ucs_status_string(st));
        goto fail;
    }
    ucp_params_t pp = {
        .field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_REQUEST_SIZE |
                      UCP_PARAM_FIELD_MT_WORKERS_SHARED,
        .features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP,
        .request_size = sizeof(struct ucx_req),
        .mt_workers_shared = 0,
    };
    st = ucp_init(&pp, cfg, &d->ctx);
    ucp_config_release(cfg);
    if (st != UCS_OK) {
        d->ctx = NULL;
        rc = kvn_err_set(err, st == UCS_ERR_NO_ELEM ? -ENODEV : ucx_errno(st), "ucp_init (%s): %s",
                         name, ucs_status_string(st));
        goto fail;
    }
    ucp_worker_params_t wp = {
        .field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
        .thread_mode = UCS_THREAD_MODE_SINGLE,
    };
    st = ucp_worker_create(d->ctx, &wp, &d->worker);
    if (st != UCS_OK) {
        d->worker = NULL;
        rc = kvn_err_set(err, ucx_errno(st), "ucp_worker_create (%s): %s", name,
                         ucs_status_string(st));
        goto fail;
    }
    st = ucp_worker_get_address(d->worker, &d->addr, &d->addr_len);
    if (st != UCS_OK) {
        d->addr = NULL;
        rc = kvn_err_set(err, ucx_errno(st), "ucp_worker_get_address: %s", ucs_status_string(st));
        goto fail;
    }
    if (d->addr_len > KVN_XPORT_ADDR_MAX - 64) {
        rc = kvn_err_set(err, -EMSGSIZE, "UCX worker address of %zu bytes too long", d->addr_len);
        goto fail;
    }
    st = ucp_worker_get_efd(d->worker, &d->efd);
    if (st != UCS_OK) {
        d->efd = -1;
        rc = kvn_err_set(err, ucx_errno(st), "ucp_worker_get_efd: %s", ucs_status_string(st));
        goto fail;
    }
    ucp_am_handler_param_t ap = {
        .field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                      UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS,
        .id = UCX_AM_ID,
        .flags = UCP_AM_FLAG_WHOLE_MSG,
        .cb = am_recv_cb,
        .arg = d,
    };
    st = ucp_worker_set_am_recv_handler(d->worker, &ap);
    if (st != UCS_OK) {
        rc = kvn_err_set(err, ucx_errno(st), "ucp_worker_set_am_recv_handler: %s",
                         ucs_status_string(st));
        goto fail;
    }
    void *page = aligned_alloc(4096, 4096);
    if (page) {
        d->md_known = probe_md_map(d, page, 0);
        free(page);
    }
    d->md_known |= probe_md_map(d, NULL, UCP_MEM_MAP_ALLOCATE);
    if (d->md_known == 0)
        d->md_known = ~0ull; /* could not learn it: leave the check to UCX */
    *out = &d->base;
    return 0;

fail:
    if (d->addr)
        ucp_worker_release_address(d->worker, d->addr);
    if (d->worker)
        ucp_worker_destroy(d->worker);
    if (d->ctx)
        ucp_cleanup(d->ctx);
    free(d->rx_mem);
    free(d->rx_free);
    free(d);
    return rc;
}

static void graves_reap(struct ucx_domain *d, bool all)
{
    struct ucx_grave **gp = &d->graves;
    while (*gp) {
        struct ucx_grave *g = *gp;
        if (all || ucp_request_check_status(g->req) != UCS_INPROGRESS) {
            /* a close request that never completes (dead sm peer) is
             * released here; ucp_worker_destroy finishes it */
            ucp_request_free(g->req);
            *gp = g->next;
            free(g);
        } else {
            gp = &g->next;
        }
    }
}

/*
 * Closing with ops in flight: the endpoints of peers with ops were
 * flush-closed by ucx_disconnect; give those closes a bounded time
 * (min(op_timeout_ms, 250 ms)) to finish, so that a live peer sees an
 * orderly disconnect instead of a connection reset in the middle of a
 * transfer (UCX 1.13 can assert in the peer on the latter).  Idle
 * endpoints are left to ucp_worker_destroy().
 * Request callbacks meanwhile only free their requests (in_close).
 */
static void graves_drain(struct ucx_domain *d)
{
    uint64_t ms = d->base.attr.op_timeout_ms < 250 ? d->base.attr.op_timeout_ms : 250;
    uint64_t end = xport_now_ns() + ms * 1000000ull;
    while (d->graves && xport_now_ns() < end) {
        ucp_worker_progress(d->worker);
        bool pending = false;
        for (struct ucx_grave *g = d->graves; g && !pending; g = g->next)
            pending = ucp_request_check_status(g->req) == UCS_INPROGRESS;
        if (!pending)
            break;
    }
}

static void ucx_close(struct kvn_xport *x)
{
    struct ucx_domain *d = dom(x);
    x->in_close = true;
    if (d->worker && d->graves)
        graves_drain(d);
    /* rkeys use the worker: destroy them while it exists (requests that
     * UCX purges below do not touch their rkey any more) */
    for (uint32_t i = 0; i < d->n_dead_rkey; i++)
        ucp_rkey_destroy(d->dead_rkey[i]);
    if (d->worker) {
        graves_reap(d, true);
        if (d->addr)
            ucp_worker_release_address(d->worker, d->addr);
        ucp_worker_destroy(d->worker); /* cancels stale requests */
    }
    if (d->ctx) {
        for (uint32_t i = 0; i < d->n_dead_memh; i++)
            ucp_mem_unmap(d->ctx, d->dead_memh[i]);
        for (uint32_t i = 0; i < d->n_regions; i++) {
            ucp_mem_unmap(d->ctx, d->regions[i]->memh);
            free(d->regions[i]);
        }
        ucp_cleanup(d->ctx);
    }
    while (d->chunks) {
        struct ucx_chunk *c = d->chunks;
        d->chunks = c->next;
        free(c);
    }
    free(d->dead_rkey);
    free(d->dead_memh);
    free(d->regions);
    free(d->rx_mem);
    free(d->rx_free);
    free(d);
}

/* ------------------------------------------------------------------ */
/* addresses and peers                                                 */

static int ucx_address(struct kvn_xport *x, void *buf, size_t *len, struct kvn_err *err)
{
    struct ucx_domain *d = dom(x);
    struct ucx_addr_hdr h = {UCX_ADDR_MAGIC, (uint32_t)getpid(), d->pidns};
    size_t need = sizeof(h) + d->addr_len;
    if (*len < need) {
        *len = need;
        return kvn_err_set(err, -ENOSPC, "UCX address needs %zu bytes", need);
    }
    memcpy(buf, &h, sizeof(h));
    memcpy((char *)buf + sizeof(h), d->addr, d->addr_len);
    *len = need;
    return 0;
}

static int ucx_connect(struct kvn_xport *x, struct kvn_xport_peer *p, const void *raw, size_t len,
                       struct kvn_err *err)
{
    struct ucx_domain *d = dom(x);
    struct ucx_peer *up = upeer(p);
    struct ucx_addr_hdr h;
    if (len < sizeof(h) + 8)
        return kvn_err_set(err, -EINVAL, "UCX address of %zu bytes is too short", len);
    memcpy(&h, raw, sizeof(h));
    if (h.magic != UCX_ADDR_MAGIC)
        return kvn_err_set(err, -EPROTO, "UCX address: bad magic 0x%08x", h.magic);
    raw = (const char *)raw + sizeof(h);
    link_init_(&up->owned);
    link_init_(&up->pid_link);
    link_init_(&up->fl_wait);
    link_init_(&up->fl_reqs);
    ucp_ep_params_t ep = {
        .field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE,
        .address = raw,
        .err_mode = d->err_mode,
    };
    if (d->err_mode == UCP_ERR_HANDLING_MODE_PEER) {
        ep.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER;
        ep.err_handler.cb = ep_err_cb;
        ep.err_handler.arg = up;
    }
    ucs_status_t st = ucp_ep_create(d->worker, &ep, &up->ep);
    if (st != UCS_OK) {
        up->ep = NULL;
        return kvn_err_set(err, ucx_errno(st) == -EINVAL ? -EPROTO : ucx_errno(st),
                           "ucp_ep_create (%s): %s", d->base.name, ucs_status_string(st));
    }
    if (d->err_mode == UCP_ERR_HANDLING_MODE_NONE && d->pidns && h.pidns == d->pidns && h.pid) {
        up->pid = (pid_t)h.pid;
        link_add_(&d->pid_peers, &up->pid_link);
    }
    return 0;
}

/* Hand every op UCX still holds for up back to the common layer as
 * canceled; their requests become stale. */
static void drop_queued_notifies(struct ucx_domain *d, struct ucx_peer *up)
{
    /* notifications not sent yet will never be: they complete canceled */
    while (up->q_head) {
        struct ucx_sbuf *sb = up->q_head;
        up->q_head = sb->next;
        sb->next = NULL;
        struct xport_op *op = sb->op;
        if (sb->flushing) {
            /* the flush callback finds the op's generation changed and
             * gives the buffer back */
            d->n_stale++;
        } else {
            sbuf_put(d, sb);
        }
        link_del_(op_olink(op));
        op->backend[0]++;
        xport_op_done(op, -ECANCELED, "canceled: peer disconnected");
    }
    up->q_tail = NULL;
}

static void hand_back_owned(struct ucx_domain *d, struct ucx_peer *up)
{
    drop_queued_notifies(d, up);
    while (up->fl_reqs.next != &up->fl_reqs) { /* callbacks must not touch up */
        struct ucx_req *rq = XPORT_CONTAINER(up->fl_reqs.next, struct ucx_req, rlink);
        link_del_(&rq->rlink);
        rq->kind = UCX_REQ_STALE;
        d->n_stale++;
    }
    up->n_fl = 0;
    up->fl_n = 0; /* fl_wait's WRITEs are owned: emptied below */
    up->fl_bytes = 0;
    while (up->owned.next != &up->owned) {
        struct xport_op *op = olink_op(up->owned.next);
        link_del_(op_olink(op));
        link_del_(op_flink(op));
        op->backend[0]++; /* its requests are stale from now on */
        uint32_t n = op->parts;
        d->n_stale += n;
        for (uint32_t i = 0; i < n; i++)
            xport_op_done(op, -ECANCELED, "canceled: peer disconnected");
    }
}

/*
 * Disconnect.  Which close, and what happens to ops UCX still holds:
 *   - domain closing: idle endpoints are left to ucp_worker_destroy(); for
 *     one with ops in flight the close below is started and ucx_close()
 *     gives it a bounded time; whatever is left, ucp_worker_destroy()
 *     cancels;
 *   - endpoint failed (error handler ran, mode PEER): FORCE close, as UCX
 *     requires; UCX already completed its requests with the error;
 *   - otherwise a flush-close (UCX 1.13 asserts when an endpoint whose
 *     wireup is still pending is force-closed).  The ops UCX holds stay
 *     owned by us ("zombies": the caller already got -ECANCELED, the op
 *     still pins its mrs, so memory is not deregistered under a transfer)
 *     and are returned as UCX completes them - unless the peer was marked
 *     failed (timeout): then it is presumed dead and they are handed back
 *     at once, their requests going stale.
 */
static void ucx_disconnect(struct kvn_xport_peer *p)
{
    struct ucx_domain *d = dom(p->x);
    struct ucx_peer *up = upeer(p);
    bool presumed_dead = up->ep_failed || p->failed;
    if (p->x->in_close && up->owned.next == &up->owned) {
        up->ep = NULL; /* idle: ucp_worker_destroy() takes care of it */
        return;
    }
    if (up->ep) {
        ucp_request_param_t cp = {.op_attr_mask = 0};
        if (up->ep_failed) {
            cp.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
            cp.flags = UCP_EP_CLOSE_FLAG_FORCE;
        }
        void *req = ucp_ep_close_nbx(up->ep, &cp);
        up->ep = NULL;
        if (req && !UCS_PTR_IS_ERR(req)) {
            struct ucx_grave *g = malloc(sizeof(*g));
            if (g) {
                g->req = req;
                g->next = d->graves;
                d->graves = g;
            } else {
                ucp_request_free(req); /* UCX finishes it by itself */
            }
        }
    }
    if (p->x->in_close)
        return; /* ops are dropped; ucx_close drains the closes */
    if (presumed_dead) {
        hand_back_owned(d, up);
    } else {
        drop_queued_notifies(d, up);
        /* no flush can be issued any more: the WRITEs waiting for one are
         * finished (canceled; their puts may still be running) */
        fl_wait_complete(up, -ECANCELED, "canceled: peer disconnected");
    }
}

static void ucx_peer_free(struct kvn_xport_peer *p)
{
    struct ucx_peer *up = upeer(p);
    if (up->ep)
        ucx_disconnect(p);
    link_del_(&up->pid_link);
    /* drop it from the drain list */
    struct ucx_domain *d = dom(p->x);
    if (up->in_drain) {
        struct ucx_peer **pp = &d->drain;
        while (*pp && *pp != up)
            pp = &(*pp)->drain_next;
        if (*pp)
            *pp = up->drain_next;
        up->in_drain = false;
    }
}

/* ------------------------------------------------------------------ */
/* memory                                                              */

static void defer_push(void ***arr, uint32_t *n, uint32_t *cap, void *v);

int kvn_xport_ucx_set_write_delivery(struct kvn_xport *x, int on, struct kvn_err *err)
{
    if (!x)
        return kvn_err_set(err, -EINVAL, "x must not be NULL");
    if (x->ops != &xport_ucx_ops)
        return kvn_err_set(err, -ENOTSUP, "domain '%s' is not a UCX domain", x->name);
    if (on != 0 && on != 1)
        return kvn_err_set(err, -EINVAL, "on must be 0 or 1, not %d", on);
    dom(x)->write_delivery = on; /* applies to WRITEs posted from now on */
    return 0;
}

int kvn_xport_ucx_peer_info(struct kvn_xport_peer *p, FILE *out, struct kvn_err *err)
{
    if (!p || !out)
        return kvn_err_set(err, -EINVAL, "p and out must not be NULL");
    if (p->x->ops != &xport_ucx_ops)
        return kvn_err_set(err, -ENOTSUP, "peer of domain '%s' is not a UCX peer", p->x->name);
    struct ucx_peer *up = upeer(p);
    if (!p->connected || !up->ep || up->ep_failed)
        return kvn_err_set(err, -EINVAL, "peer has no live UCX endpoint (disconnected or failed)");
    ucp_ep_print_info(up->ep, out);
    return 0;
}

/* The allocated region holding [addr, addr+len), or NULL.  Linear over
 * the (few, large) allocations; registration is not a data path. */
static struct ucx_region *region_of(struct ucx_domain *d, const void *addr, size_t len)
{
    uintptr_t a = (uintptr_t)addr;
    for (uint32_t i = 0; i < d->n_regions; i++) {
        struct ucx_region *r = d->regions[i];
        uintptr_t b = (uintptr_t)r->addr;
        if (a >= b && a - b <= r->len && len <= r->len - (a - b))
            return r;
    }
    return NULL;
}

int kvn_xport_ucx_mem_alloc(struct kvn_xport *x, size_t len, void **addr, struct kvn_err *err)
{
    if (!x || !addr)
        return kvn_err_set(err, -EINVAL, "x and addr must not be NULL");
    if (x->ops != &xport_ucx_ops)
        return kvn_err_set(err, -ENOTSUP, "domain '%s' is not a UCX domain", x->name);
    if (len == 0)
        return kvn_err_set(err, -EINVAL, "cannot allocate 0 bytes");
    struct ucx_domain *d = dom(x);
    if (d->n_regions == d->cap_regions) {
        uint32_t nc = d->cap_regions ? d->cap_regions * 2 : 4;
        struct ucx_region **nr = realloc(d->regions, nc * sizeof(*nr));
        if (!nr)
            return kvn_err_set(err, -ENOMEM, "out of memory");
        d->regions = nr;
        d->cap_regions = nc;
    }
    struct ucx_region *r = calloc(1, sizeof(*r));
    if (!r)
        return kvn_err_set(err, -ENOMEM, "out of memory");
    ucp_mem_map_params_t mp = {
        .field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                      UCP_MEM_MAP_PARAM_FIELD_FLAGS,
        .address = NULL,
        .length = len,
        .flags = UCP_MEM_MAP_ALLOCATE,
    };
    ucs_status_t st = ucp_mem_map(d->ctx, &mp, &r->memh);
    if (st != UCS_OK) {
        free(r);
        return kvn_err_set(err, ucx_errno(st), "ucp_mem_map(ALLOCATE) of %zu bytes: %s", len,
                           ucs_status_string(st));
    }
    ucp_mem_attr_t ma = {.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH};
    st = ucp_mem_query(r->memh, &ma);
    if (st != UCS_OK || !ma.address || ma.length < len) {
        ucp_mem_unmap(d->ctx, r->memh);
        free(r);
        return kvn_err_set(err, -EIO, "ucp_mem_query: %s",
                           st != UCS_OK ? ucs_status_string(st) : "no address or short length");
    }
    r->addr = ma.address;
    r->len = len;
    memset(r->addr, 0, len);
    d->regions[d->n_regions++] = r;
    *addr = r->addr;
    return 0;
}

int kvn_xport_ucx_mem_free(struct kvn_xport *x, void *addr, struct kvn_err *err)
{
    if (!x || !addr)
        return kvn_err_set(err, -EINVAL, "x and addr must not be NULL");
    if (x->ops != &xport_ucx_ops)
        return kvn_err_set(err, -ENOTSUP, "domain '%s' is not a UCX domain", x->name);
    struct ucx_domain *d = dom(x);
    for (uint32_t i = 0; i < d->n_regions; i++) {
        struct ucx_region *r = d->regions[i];
        if (r->addr != addr)
            continue;
        if (r->n_mrs)
            return kvn_err_set(err, -EBUSY, "%u registrations still lie in this memory", r->n_mrs);
        if (d->n_stale) /* a stale request may still touch it */
            defer_push((void ***)&d->dead_memh, &d->n_dead_memh, &d->cap_dead_memh, r->memh);
        else
            ucp_mem_unmap(d->ctx, r->memh);
        d->regions[i] = d->regions[--d->n_regions];
        free(r);
        return 0;
    }
    return kvn_err_set(err, -EINVAL, "%p is not memory from kvn_xport_ucx_mem_alloc", addr);
}

int kvn_xport_ucx_mem_size(struct kvn_xport *x, const void *addr, size_t *len, struct kvn_err *err)
{
    if (!x || !addr || !len)
        return kvn_err_set(err, -EINVAL, "x, addr and len must not be NULL");
    if (x->ops != &xport_ucx_ops)
        return kvn_err_set(err, -ENOTSUP, "domain '%s' is not a UCX domain", x->name);
    struct ucx_domain *d = dom(x);
    for (uint32_t i = 0; i < d->n_regions; i++) {
        if (d->regions[i]->addr == addr) {
            *len = d->regions[i]->len;
            return 0;
        }
    }
    return kvn_err_set(err, -EINVAL, "%p is not memory from kvn_xport_ucx_mem_alloc", addr);
}

static int ucx_mr_reg(struct kvn_xport *x, struct kvn_xport_mr *mr, struct kvn_err *err)
{
    struct ucx_domain *d = dom(x);
    struct ucx_mr *um = (struct ucx_mr *)mr;
    struct ucx_region *rg = region_of(d, mr->addr, mr->len);
    ucs_status_t st;
    if (rg) {
        um->memh = rg->memh; /* UCX's own memory: keep its mapping */
    } else {
        ucp_mem_map_params_t mp = {
            .field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH,
            .address = mr->addr,
            .length = mr->len,
        };
        st = ucp_mem_map(d->ctx, &mp, &um->memh);
        if (st != UCS_OK)
            return kvn_err_set(err, ucx_errno(st), "ucp_mem_map of %zu bytes: %s", mr->len,
                               ucs_status_string(st));
    }
    void *rkb = NULL;
    size_t rkl = 0;
    int rc = 0;
    st = ucp_rkey_pack(d->ctx, um->memh, &rkb, &rkl);
    if (st != UCS_OK) {
        rc = kvn_err_set(err, ucx_errno(st), "ucp_rkey_pack: %s", ucs_status_string(st));
        rkb = NULL;
    } else if (rkl + UCX_KEY_HDR > KVN_XPORT_KEY_MAX) {
        rc = kvn_err_set(err, -EMSGSIZE, "UCX rkey of %zu bytes too long", rkl);
    } else if (!(um->packed = malloc(rkl))) {
        rc = kvn_err_set(err, -ENOMEM, "out of memory for an rkey");
    }
    if (rc < 0) {
        if (rkb)
            ucp_rkey_buffer_release(rkb);
        if (!rg)
            ucp_mem_unmap(d->ctx, um->memh);
        um->memh = NULL;
        return rc;
    }
    memcpy(um->packed, rkb, rkl);
    um->packed_len = rkl;
    ucp_rkey_buffer_release(rkb);
    if (rg) {
        um->region = rg;
        rg->n_mrs++;
    }
    return 0;
}

static void defer_push(void ***arr, uint32_t *n, uint32_t *cap, void *v)
{
    if (*n == *cap) {
        uint32_t nc = *cap ? *cap * 2 : 8;
        void **na = realloc(*arr, nc * sizeof(*na));
        if (!na)
            return; /* leak rather than unmap under a live request */
        *arr = na;
        *cap = nc;
    }
    (*arr)[(*n)++] = v;
}

static void ucx_mr_dereg(struct kvn_xport_mr *mr)
{
    struct ucx_domain *d = dom(mr->x);
    struct ucx_mr *um = (struct ucx_mr *)mr;
    if (um->region)
        um->region->n_mrs--; /* the region keeps the mapping */
    else if (d->n_stale || mr->x->in_close)
        defer_push((void ***)&d->dead_memh, &d->n_dead_memh, &d->cap_dead_memh, um->memh);
    else
        ucp_mem_unmap(d->ctx, um->memh);
    free(um->packed);
    um->packed = NULL;
}

static int ucx_mr_pack_key(const struct kvn_xport_mr *mr, void *key, size_t *len,
                           struct kvn_err *err)
{
    const struct ucx_mr *um = (const struct ucx_mr *)mr;
    size_t need = UCX_KEY_HDR + um->packed_len;
    if (*len < need) {
        *len = need;
        return kvn_err_set(err, -ENOSPC, "UCX key needs %zu bytes", need);
    }
    unsigned char *b = key;
    uint32_t v = UCX_KEY_MAGIC;
    memcpy(b, &v, 4);
    v = (uint32_t)um->packed_len;
    memcpy(b + 4, &v, 4);
    memcpy(b + UCX_KEY_HDR, um->packed, um->packed_len);
    *len = need;
    return 0;
}

static int ucx_rmr_unpack_key(struct kvn_xport_peer *p, struct kvn_xport_rmr *r, const void *key,
                              size_t len, struct kvn_err *err)
{
    struct ucx_peer *up = upeer(p);
    struct ucx_rmr *ur = (struct ucx_rmr *)r;
    const unsigned char *b = key;
    uint32_t magic, kl;
    if (len < UCX_KEY_HDR + 8)
        return kvn_err_set(err, -EINVAL, "UCX key of %zu bytes truncated", len);
    memcpy(&magic, b, 4);
    memcpy(&kl, b + 4, 4);
    if (magic != UCX_KEY_MAGIC)
        return kvn_err_set(err, -EPROTO, "UCX key: bad magic 0x%08x", magic);
    if (kl != len - UCX_KEY_HDR)
        return kvn_err_set(err, -EINVAL, "UCX key: rkey length %u but %zu bytes follow", kl,
                           len - UCX_KEY_HDR);
    int rc = rkey_check(dom(p->x), b + UCX_KEY_HDR, kl, err);
    if (rc < 0)
        return rc;
    if (!up->ep)
        return kvn_err_set(err, -ENOTCONN, "peer is disconnected");
    ucs_status_t st = ucp_ep_rkey_unpack(up->ep, b + UCX_KEY_HDR, &ur->rkey);
    if (st != UCS_OK) {
        ur->rkey = NULL;
        return kvn_err_set(err, -EINVAL, "ucp_ep_rkey_unpack: %s", ucs_status_string(st));
    }
    return 0;
}

static void ucx_rmr_free(struct kvn_xport_rmr *r)
{
    struct ucx_rmr *ur = (struct ucx_rmr *)r;
    struct ucx_domain *d = dom(r->peer->x);
    if (!ur->rkey)
        return;
    if (d->n_stale || d->base.in_close)
        defer_push((void ***)&d->dead_rkey, &d->n_dead_rkey, &d->cap_dead_rkey, ur->rkey);
    else
        ucp_rkey_destroy(ur->rkey);
    ur->rkey = NULL;
}

/* ------------------------------------------------------------------ */
/* posting                                                             */

/*
 * WRITE completion flushes (delivery mode).  A WRITE's last part is "a
 * flush issued after its puts".  WRITEs wait in the peer's fl_wait list; up
 * to UCX_FLUSH_MAX ucp_ep_flush_nbx per peer are in flight, each carrying
 * the WRITEs that were waiting when it was issued (ucx_req.writes).  A
 * flush of an endpoint confirms every put posted on it before, so WRITEs
 * share flushes: one is issued once UCX_FL_EVERY WRITEs or UCX_FL_BYTES
 * bytes wait, or when none is in flight for the peer (the idle case: no
 * flush callback would come back to issue one); otherwise the WRITEs wait
 * for the next flush, issued from progress after one completes.  So a
 * waiting WRITE is never left without a flush that will cover it, and every
 * WRITE still completes only after a flush issued after its puts.  At
 * 512 KiB and above every WRITE still gets its own flush (UCX_FL_BYTES).
 */
static void fl_complete(struct xport_link *list, int status, const char *msg)
{
    while (list->next != list) {
        struct xport_op *op = flink_op(list->next);
        link_del_(op_flink(op));
        part_done(op, status, msg);
    }
}

static void fl_splice(struct xport_link *to, struct xport_link *from)
{
    while (from->next != from) {
        struct xport_link *l = from->next;
        link_del_(l);
        link_add_(to, l);
    }
}

/* Finishes every WRITE of up's fl_wait (none of them is covered by a flush). */
static void fl_wait_complete(struct ucx_peer *up, int status, const char *msg)
{
    struct xport_link l;
    link_init_(&l);
    fl_splice(&l, &up->fl_wait);
    up->fl_n = 0;
    up->fl_bytes = 0;
    fl_complete(&l, status, msg);
}

static void batch_flush_cb(void *request, ucs_status_t st, void *user_data);

/* Issues a flush for the WRITEs in fl_wait when they are worth one: the
 * batch is full (UCX_FL_EVERY WRITEs or UCX_FL_BYTES bytes), or no flush is
 * in flight for the peer (nothing else will come back to issue one). */
static void flush_kick(struct ucx_peer *up)
{
    while (up->n_fl < UCX_FLUSH_MAX && up->fl_wait.next != &up->fl_wait) {
        if (!up->ep || up->ep_failed) {
            fl_wait_complete(up, up->ep ? -ECONNRESET : -ECANCELED,
                             up->ep ? up->why : "canceled: peer disconnected");
            return;
        }
        if (up->n_fl && up->fl_n < UCX_FL_EVERY && up->fl_bytes < UCX_FL_BYTES)
            return; /* batching: a flush in flight will call back */
        ucp_request_param_t fp = {
            .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
            .cb.send = batch_flush_cb,
            .user_data = up,
        };
        ucs_status_ptr_t r = ucp_ep_flush_nbx(up->ep, &fp);
        if (r == NULL) {
            fl_wait_complete(up, 0, NULL);
            return; /* up may be gone with its last op */
        } else if (UCS_PTR_IS_ERR(r)) {
            ucs_status_t st = UCS_PTR_STATUS(r);
            fl_wait_complete(up, ucx_errno(st), ucs_status_string(st));
            return;
        } else {
            struct ucx_req *rq = r;
            rq->d = dom(up->base.x);
            rq->op = NULL;
            rq->sb = NULL;
            rq->gen = 0;
            rq->kind = UCX_REQ_BATCH;
            link_init_(&rq->writes);
            fl_splice(&rq->writes, &up->fl_wait);
            up->fl_n = 0;
            up->fl_bytes = 0;
            link_add_(&up->fl_reqs, &rq->rlink);
            up->n_fl++;
        }
    }
}

static void drain_mark(struct ucx_domain *d, struct ucx_peer *up);

static void batch_flush_cb(void *request, ucs_status_t st, void *user_data)
{
    struct ucx_req *rq = request;
    struct ucx_domain *d = rq->d;
    struct ucx_peer *up = user_data;
    if (d->base.in_close) {
        ucp_request_free(request);
        return;
    }
    if (rq->kind == UCX_REQ_STALE) { /* up was handed back, maybe freed */
        if (d->n_stale)
            d->n_stale--;
        ucp_request_free(request);
        return;
    }
    link_del_(&rq->rlink);
    up->n_fl--;
    /* before completing: the last of these WRITEs may hold the last
     * reference to a disconnected peer (WRITEs still waiting hold theirs) */
    if (up->fl_wait.next != &up->fl_wait)
        drain_mark(d, up); /* the next flush is issued from progress */
    if (st == UCS_OK)
        fl_complete(&rq->writes, 0, NULL);
    else
        fl_complete(&rq->writes, ucx_errno(st), ucs_status_string(st));
    ucp_request_free(request);
}

static int ucx_post(struct kvn_xport_peer *p, struct xport_op *op, const struct xport_post_req *req,
                    struct kvn_err *err)
{
    struct ucx_domain *d = dom(p->x);
    struct ucx_peer *up = upeer(p);
    if (!up->ep)
        return kvn_err_set(err, -ENOTCONN, "peer is disconnected");
    if (up->ep_failed)
        return kvn_err_set(err, -ECONNRESET, "%s", up->why);
    ucp_rkey_h rkey = ((struct ucx_rmr *)req->remote)->rkey;
    ucp_request_param_t rp = {
        .op_attr_mask =
            UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_MEMH,
        .cb.send = rma_cb,
        .user_data = op,
    };
    uint32_t gen = op_gen(op);
    uint64_t raddr = req->remote_addr;
    bool is_write = req->kind == KVN_XPORT_WRITE;
    /* in delivery mode a WRITE has one more part: the endpoint flush that
     * makes it remote complete (see "Completion semantics" above) */
    bool deliver = is_write && d->write_delivery;
    own(up, op, req->n_local + (deliver ? 1u : 0u));
    up->dirty = true;
    for (uint32_t i = 0; i < req->n_local; i++) {
        const struct kvn_xport_sge *s = &req->local[i];
        void *laddr = (char *)s->mr->addr + s->offset;
        rp.memh = ((struct ucx_mr *)s->mr)->memh;
        ucs_status_ptr_t r = is_write ? ucp_put_nbx(up->ep, laddr, s->len, raddr, rkey, &rp)
                                      : ucp_get_nbx(up->ep, laddr, s->len, raddr, rkey, &rp);
        raddr += s->len;
        if (r == NULL) {
            part_done(op, 0, NULL);
        } else if (UCS_PTR_IS_ERR(r)) {
            ucs_status_t st = UCS_PTR_STATUS(r);
            /* this part and every part not posted yet fail now */
            uint32_t left = req->n_local - i + (deliver ? 1u : 0u);
            for (uint32_t k = 0; k < left; k++)
                part_done(op, ucx_errno(st), ucs_status_string(st));
            return 0;
        } else {
            struct ucx_req *rq = r;
            rq->d = d;
            rq->op = op;
            rq->sb = NULL;
            rq->gen = gen;
            rq->kind = UCX_REQ_RMA;
        }
    }
    if (deliver) {
        link_add_(&up->fl_wait, op_flink(op));
        up->fl_n++;
        for (uint32_t i = 0; i < req->n_local; i++)
            up->fl_bytes += req->local[i].len;
        flush_kick(up);
    }
    return 0;
}

/* Sends sb (its flush, if any, is done). */
static void am_send(struct ucx_peer *up, struct ucx_sbuf *sb)
{
    struct ucx_domain *d = dom(up->base.x);
    struct xport_op *op = sb->op;
    if (sb->status < 0 || !up->ep || up->ep_failed) {
        int st = sb->status < 0 ? sb->status : -ECONNRESET;
        sbuf_put(d, sb);
        part_done(op, st, st == -ECONNRESET ? up->why : "flush failed");
        return;
    }
    ucp_request_param_t rp = {
        .op_attr_mask =
            UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS,
        .cb.send = send_cb,
        .user_data = op,
        .flags = UCP_AM_SEND_FLAG_EAGER,
    };
    ucs_status_ptr_t r = ucp_am_send_nbx(up->ep, UCX_AM_ID, NULL, 0, sb->data, sb->len, &rp);
    if (r == NULL) {
        sbuf_put(d, sb);
        part_done(op, 0, NULL);
    } else if (UCS_PTR_IS_ERR(r)) {
        ucs_status_t st = UCS_PTR_STATUS(r);
        sbuf_put(d, sb);
        part_done(op, ucx_errno(st), ucs_status_string(st));
    } else {
        struct ucx_req *rq = r;
        rq->d = d;
        rq->op = op;
        rq->sb = sb;
        rq->gen = sb->gen;
        rq->kind = UCX_REQ_SEND;
    }
}

/* Sends the ready head of up's notification FIFO, in order. */
static void peer_drain(struct ucx_peer *up)
{
    /* notifications first: flush_kick may release up's last reference (the
     * queue is empty once up is disconnected, so am_send cannot) */
    while (up->q_head && up->q_head->ready) {
        struct ucx_sbuf *sb = up->q_head;
        up->q_head = sb->next;
        if (!up->q_head)
            up->q_tail = NULL;
        sb->next = NULL;
        am_send(up, sb);
    }
    flush_kick(up);
}

static int ucx_notify(struct kvn_xport_peer *p, struct xport_op *op,
                      const struct xport_notify_hdr *hdr, const void *buf, size_t len,
                      struct kvn_err *err)
{
    struct ucx_domain *d = dom(p->x);
    struct ucx_peer *up = upeer(p);
    if (!up->ep)
        return kvn_err_set(err, -ENOTCONN, "peer is disconnected");
    if (up->ep_failed)
        return kvn_err_set(err, -ECONNRESET, "%s", up->why);
    struct ucx_sbuf *sb = sbuf_get(d);
    if (!sb)
        return kvn_err_set(err, -ENOMEM, "out of memory for a send buffer");
    memcpy(sb->data, hdr, sizeof(*hdr));
    memcpy(sb->data + sizeof(*hdr), buf, len);
    sb->len = (uint32_t)(sizeof(*hdr) + len);
    sb->op = op;
    sb->gen = op_gen(op);
    own(up, op, 1);

    if (!up->dirty && !up->q_head) {
        sb->ready = true;
        am_send(up, sb);
        return 0;
    }
    /* queue behind earlier notifications; flush first if RMA was posted */
    if (up->q_tail)
        up->q_tail->next = sb;
    else
        up->q_head = sb;
    up->q_tail = sb;
    if (up->dirty) {
        up->dirty = false;
        ucp_request_param_t rp = {
            .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
            .cb.send = flush_cb,
            .user_data = up,
        };
        ucs_status_ptr_t r = ucp_ep_flush_nbx(up->ep, &rp);
        if (r == NULL) {
            sb->ready = true;
        } else if (UCS_PTR_IS_ERR(r)) {
            sb->ready = true;
            sb->status = ucx_errno(UCS_PTR_STATUS(r));
        } else {
            struct ucx_req *rq = r;
            rq->d = d;
            rq->op = op;
            rq->sb = sb;
            rq->gen = sb->gen;
            rq->kind = UCX_REQ_FLUSH;
            sb->flushing = true;
        }
    } else {
        sb->ready = true;
    }
    peer_drain(up);
    return 0;
}

/* ------------------------------------------------------------------ */
/* progress and the wait fd                                            */

/* An sm peer with ops in flight whose ep can still carry them. */
static bool pid_watched(struct ucx_peer *up)
{
    return up->ep && up->base.connected && !up->base.failed && up->owned.next != &up->owned;
}

/*
 * ucx+sm has no UCX peer-failure detection: every UCX_PID_CHECK_NS, while a
 * peer has ops in flight, ask the kernel whether its process still exists
 * (same host and pid namespace by construction) and fail the peer at once
 * if not, instead of waiting for op_timeout_ms.
 */
static void pid_check(struct ucx_domain *d)
{
    uint64_t now = xport_now_ns();
    if (now < d->next_pid_check)
        return;
    d->next_pid_check = now + UCX_PID_CHECK_NS;
    for (struct xport_link *l = d->pid_peers.next; l != &d->pid_peers; l = l->next) {
        struct ucx_peer *up = XPORT_CONTAINER(l, struct ucx_peer, pid_link);
        if (!pid_watched(up) || kill(up->pid, 0) == 0 || errno != ESRCH)
            continue;
        char msg[80];
        snprintf(msg, sizeof(msg), "peer process %d is gone", (int)up->pid);
        snprintf(up->why, sizeof(up->why), "%s", msg);
        xport_peer_fail(&up->base, -ECONNRESET, msg);
    }
}

static int ucx_progress(struct kvn_xport *x)
{
    struct ucx_domain *d = dom(x);
    for (int i = 0; i < UCX_PROGRESS_ROUNDS; i++)
        if (ucp_worker_progress(d->worker) == 0)
            break;
    while (d->drain) {
        struct ucx_peer *up = d->drain;
        d->drain = up->drain_next;
        up->in_drain = false;
        peer_drain(up);
    }
    if (d->graves)
        graves_reap(d, false);
    if (d->pid_peers.next != &d->pid_peers)
        pid_check(d);
    return 0;
}

static int ucx_get_fd(struct kvn_xport *x)
{
    return dom(x)->efd;
}

static int ucx_arm(struct kvn_xport *x)
{
    struct ucx_domain *d = dom(x);
    if (d->drain)
        return -EAGAIN;
    /* sm peers with ops in flight: wake within a tick for pid_check() */
    for (struct xport_link *l = d->pid_peers.next; l != &d->pid_peers; l = l->next)
        if (pid_watched(XPORT_CONTAINER(l, struct ucx_peer, pid_link)))
            return -EINPROGRESS;
    ucs_status_t st = ucp_worker_arm(d->worker);
    return st == UCS_ERR_BUSY ? -EAGAIN : 0;
}

const struct kvn_xport_ops xport_ucx_ops = {
    .family = "ucx",
    .id = KVN_XPORT_BACKEND_UCX,
    .peer_size = sizeof(struct ucx_peer),
    .mr_size = sizeof(struct ucx_mr),
    .rmr_size = sizeof(struct ucx_rmr),
    .open = ucx_open,
    .close = ucx_close,
    .address = ucx_address,
    .connect = ucx_connect,
    .disconnect = ucx_disconnect,
    .peer_free = ucx_peer_free,
    .mr_reg = ucx_mr_reg,
    .mr_dereg = ucx_mr_dereg,
    .mr_pack_key = ucx_mr_pack_key,
    .rmr_unpack_key = ucx_rmr_unpack_key,
    .rmr_free = ucx_rmr_free,
    .post = ucx_post,
    .notify = ucx_notify,
    .recv_repost = ucx_recv_repost,
    .progress = ucx_progress,
    .get_fd = ucx_get_fd,
    .arm = ucx_arm,
};
