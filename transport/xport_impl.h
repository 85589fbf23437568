/* API-FROZEN */
/*
 * xport_impl.h - what a transport backend implements, and what the common
 * layer (xport.c) gives it.  libfabric-provider style: a const ops table per
 * backend, base structs embedded FIRST in each backend's own structs.
 *
 *   kvn_xport_post()                          backend
 *     ├─ validate every op (bounds, access,     (nothing reaches the backend
 *     │  outstanding limit, peer state)          unless all ops are valid)
 *     ├─ xport_op from the domain's free list
 *     └─ ops->post(peer, op, req) ─────────────► fi_writemsg / ucp_put_nbx...
 *                                                      │ later
 *   kvn_xport_poll()                                   ▼
 *     ├─ ops->progress(x) ───────────────────► drains its CQ, calls
 *     │                                         xport_op_done(op, st, msg)
 *     │                                         xport_recv_deliver(x, ...)
 *     ├─ timeouts (FIFO of ops in post order: deadlines are monotonic,
 *     │  only the head is checked)
 *     └─ copies cqes out of the domain's ring
 *
 * Op lifetime.  An xport_op is owned by the backend from ops->post() until
 * the backend calls xport_op_done() once per part it posted (op->parts is
 * set by the backend).  The caller's completion may be reported earlier
 * (timeout, disconnect): the op is then a "zombie" - it still holds its MR
 * and peer references, keeps its slot, and is recycled silently when the
 * backend finally returns it.  A backend must return every op eventually,
 * or, when it knows it never will (it closed the peer's endpoint in
 * ops->disconnect), call xport_peer_abandon(p) to recycle p's zombies;
 * ops->close may simply stop: close frees everything afterwards.  A
 * backend that learns a peer is gone calls xport_peer_fail().
 *
 * Receives.  The backend pre-posts buffers; on arrival it calls
 * xport_recv_deliver(x, data, len, token).  The common layer parses the
 * notification header (xport_notify_hdr), queues a RECV cqe and gives the
 * token back through ops->recv_repost() at the start of the next poll (or
 * immediately for a malformed message).
 *
 * Everything here runs on the domain's single caller thread.
 */
#ifndef KVN_XPORT_IMPL_H
#define KVN_XPORT_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "transport/kvn_xport.h"
#include "util/kvn_err.h"

/* Intrusive doubly linked list (circular, with a head node). */
struct xport_link {
    struct xport_link *prev, *next;
};

#define XPORT_CONTAINER(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* A parsed URI: "family+sub" (sub may be empty). */
struct xport_uri {
    char family[16]; /* "ofi", "ucx", "verbs", "auto" */
    char sub[48];    /* "tcp", "shm", "sm", a device name, or "" */
};

/* The header every notification carries on the wire (little endian). */
struct xport_notify_hdr {
    uint32_t magic; /* XPORT_NOTIFY_MAGIC */
    uint32_t len;   /* payload bytes that follow */
    uint64_t src;   /* sender's domain id */
};
#define XPORT_NOTIFY_MAGIC 0x4e4e564bu /* "KVNN" */

struct kvn_xport_ops;

struct kvn_xport {
    const struct kvn_xport_ops *ops;
    char name[KVN_XPORT_NAME_MAX]; /* canonical URI, set by the backend */
    uint64_t id;                   /* random domain id, in blobs/notifies */
    struct kvn_xport_attr attr;    /* defaults applied */
    char bind_host[64];            /* attr.bind_host points here */

    /* Backend capabilities, set by ops->open. */
    uint64_t max_op_bytes; /* total bytes of one op; 0 = unlimited */
    bool remote_virt_addr; /* descriptors carry virtual addresses */
    uint32_t n_recv_bufs;  /* receive buffers the backend pre-posts (bounds
                              the RECV entries of the completion ring) */

    /* Common state - backends do not touch. */
    struct xport_op *ops_mem; /* max_outstanding slots */
    struct xport_op *free_ops;
    uint32_t n_free;
    uint32_t n_outstanding; /* not yet reported to the caller */
    uint32_t n_wide;        /* live ops with >XPORT_OP_MRS mrs */
    struct xport_link fifo; /* unreported ops, in post order */
    struct xport_cq_ring *ring;
    struct xport_link peers, mrs, rmrs;
    struct kvn_xport_peer **peer_hash; /* by remote domain id */
    uint32_t peer_hash_size;
    uint64_t *repost_tokens; /* recv tokens to give back next poll */
    uint32_t n_repost, cap_repost;
    int epfd, evfd, tmfd; /* wait fd = epfd over backend fd, evfd, tmfd */
    int backend_fd;
    uint64_t timer_deadline_ns; /* armed timerfd deadline, 0 = none */
    bool in_close;
    bool fd_used;     /* wait fd requested: poll re-arms it */
    bool ev_signaled; /* evfd has been written */
};

struct kvn_xport_peer {
    struct kvn_xport *x;
    uint64_t remote_id;     /* peer domain id (from its blob) */
    struct xport_link link; /* x->peers */
    struct xport_link ops;  /* unreported ops of this peer */
    struct kvn_xport_peer *hash_next;
    uint32_t refs; /* user handle + rmrs + live ops */
    uint32_t n_outstanding;
    bool connected;            /* false after disconnect */
    bool failed;               /* an op failed/timed out: refuse posts */
    struct xport_link zombies; /* reported ops the backend still owns */
};

struct kvn_xport_mr {
    struct kvn_xport *x;
    struct xport_link link; /* x->mrs */
    void *addr;
    size_t len;
    unsigned access;
    uint32_t busy; /* live ops referencing it */
};

struct kvn_xport_rmr {
    struct kvn_xport_peer *peer;
    struct xport_link link; /* x->rmrs */
    uint64_t base;          /* remote address of offset 0 (0 in offset mode) */
    uint64_t len;
    unsigned access; /* KVN_XPORT_ACCESS_REMOTE_* */
    uint32_t busy;   /* live ops using it */
    bool freed;      /* rmr_free called, free when busy == 0 */
};

#define XPORT_OP_MRS 4 /* distinct local mrs tracked inline per op */

/* One operation context (preallocated, never malloc'd per op). */
struct xport_op {
    struct xport_link fifo;  /* x->fifo while unreported */
    struct xport_link plink; /* peer->ops while unreported */
    struct xport_op *next_free;
    struct kvn_xport *x;
    struct kvn_xport_peer *peer; /* referenced until recycled */
    struct kvn_xport_rmr *rmr;   /* referenced until recycled (or NULL) */
    struct kvn_xport_mr *mrs[XPORT_OP_MRS];
    uint8_t n_mrs;
    bool wide;     /* more distinct mrs than XPORT_OP_MRS */
    bool reported; /* cqe already queued (zombie if live) */
    bool posting;  /* inside ops->post/notify: not recycled */
    enum kvn_xport_op_kind kind;
    uint64_t cookie;
    uint64_t bytes;
    uint64_t deadline_ns;
    uint32_t parts; /* backend parts outstanding */
    int status;     /* first error of the parts */
    char msg[KVN_XPORT_CQE_MSG];
    uint64_t backend[8]; /* scratch for the backend */
};

/* What ops->post receives: one validated op, addresses resolved. */
struct xport_post_req {
    enum kvn_xport_op_kind kind;       /* WRITE or READ */
    const struct kvn_xport_sge *local; /* validated, n_local entries */
    uint32_t n_local;
    struct kvn_xport_rmr *remote;
    uint64_t remote_addr; /* base + offset (virt mode) or offset */
    uint64_t len;         /* total bytes */
};

struct kvn_xport_ops {
    const char *family; /* "ofi" */
    enum kvn_xport_backend id;
    size_t peer_size, mr_size, rmr_size; /* sizes of the backend structs */

    /* Allocates and opens the backend domain (embedding struct kvn_xport
     * first, zeroed); sets x->name, max_op_bytes, remote_virt_addr.  The
     * common layer fills the rest after it returns. */
    int (*open)(const struct xport_uri *uri, const struct kvn_xport_attr *attr,
                struct kvn_xport **out, struct kvn_err *err);
    /* Releases backend resources and frees x's memory (the common layer has
     * already freed peers/mrs/rmrs through the ops below). */
    void (*close)(struct kvn_xport *x);

    /* Raw endpoint address (framed by the common layer). */
    int (*address)(struct kvn_xport *x, void *buf, size_t *len, struct kvn_err *err);
    /* p is zeroed, peer_size bytes, base filled; connect to raw address. */
    int (*connect)(struct kvn_xport *x, struct kvn_xport_peer *p, const void *raw, size_t len,
                   struct kvn_err *err);
    /* Stop traffic to p (ops still owned are returned or dropped). */
    void (*disconnect)(struct kvn_xport_peer *p);
    /* Free backend resources of p (called when the last reference goes). */
    void (*peer_free)(struct kvn_xport_peer *p);

    /* mr is zeroed mr_size bytes with base filled. */
    int (*mr_reg)(struct kvn_xport *x, struct kvn_xport_mr *mr, struct kvn_err *err);
    void (*mr_dereg)(struct kvn_xport_mr *mr);
    /* Key bytes for the descriptor (*len capacity in, bytes out). */
    int (*mr_pack_key)(const struct kvn_xport_mr *mr, void *key, size_t *len, struct kvn_err *err);
    /* r is zeroed rmr_size bytes with base filled. */
    int (*rmr_unpack_key)(struct kvn_xport_peer *p, struct kvn_xport_rmr *r, const void *key,
                          size_t len, struct kvn_err *err);
    void (*rmr_free)(struct kvn_xport_rmr *r);

    /* Post one op; set op->parts before the first part is posted.  Return 0
     * when the backend owns op (it will call xport_op_done per part, also
     * for parts it failed to post), or a negative code if NOTHING was
     * posted and op->parts is 0 (the common layer then completes the op
     * with that code and err's message).  The backend may progress its CQ
     * while posting (retry on EAGAIN): op is not recycled meanwhile. */
    int (*post)(struct kvn_xport_peer *p, struct xport_op *op, const struct xport_post_req *req,
                struct kvn_err *err);
    /* Send hdr+payload as one message; same ownership rule as post. */
    int (*notify)(struct kvn_xport_peer *p, struct xport_op *op, const struct xport_notify_hdr *hdr,
                  const void *buf, size_t len, struct kvn_err *err);
    /* Give a receive buffer back. */
    void (*recv_repost)(struct kvn_xport *x, uint64_t token);

    /* Drain the backend CQ (bounded work); < 0 on a fatal domain error. */
    int (*progress)(struct kvn_xport *x);
    /* The backend's waitable fd, or -1 (then the common layer wakes
     * periodically while ops are outstanding). */
    int (*get_fd)(struct kvn_xport *x);
    /* Prepare to sleep on the fd: 0 = safe, -EAGAIN = progress first (work
     * is ready now), -EINPROGRESS = sleep at most a tick (1 ms), then
     * progress (e.g. parked posts to retry). */
    int (*arm)(struct kvn_xport *x);
};

/* Backend tables (guarded by what is built). */
extern const struct kvn_xport_ops xport_ofi_ops;
#ifdef KVN_HAVE_UCX
extern const struct kvn_xport_ops xport_ucx_ops;
#endif
#ifdef KVN_HAVE_VERBS
extern const struct kvn_xport_ops xport_verbs_ops;
#endif

/* --- services of the common layer for backends --- */

/* One part of op finished (status 0 or -errno, msg may be NULL). */
void xport_op_done(struct xport_op *op, int status, const char *msg);

/* The backend will never complete p's remaining (already reported) ops:
 * recycle them now.  Call only after draining completions that may still
 * reference them (e.g. from ops->disconnect after closing a per-peer
 * endpoint). */
void xport_peer_abandon(struct kvn_xport_peer *p);

/* The backend learned that p is gone (e.g. its process died): mark it
 * failed and complete its unreported ops with status now (they stay
 * zombies until the backend returns them or disconnect abandons them). */
void xport_peer_fail(struct kvn_xport_peer *p, int status, const char *msg);

/* A message arrived (header included); token identifies the buffer. */
void xport_recv_deliver(struct kvn_xport *x, const void *data, size_t len, uint64_t token);

/* Opens a domain on an explicit ops table (tests use a mock backend to
 * drive the common layer deterministically); same contract as
 * kvn_xport_open() otherwise. */
int xport_open_ops(const struct kvn_xport_ops *ops, const struct xport_uri *uri,
                   const struct kvn_xport_attr *attr, struct kvn_xport **out, struct kvn_err *err);

/* URI parsing (exposed for tests and backends). */
int xport_uri_parse(const char *uri, struct xport_uri *out, struct kvn_err *err);

/* Monotonic clock in ns (the transport may read clocks). */
uint64_t xport_now_ns(void);

#endif /* KVN_XPORT_IMPL_H */
