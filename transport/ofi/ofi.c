/*
 * ofi.c - the libfabric backend: FI_EP_RDM endpoints with FI_RMA | FI_MSG.
 *
 *   ofi+tcp   -> provider "tcp;ofi_rxm"     ofi+shm -> "shm"
 *   ofi+verbs -> provider "verbs;ofi_rxm"
 *
 * One domain = fabric + domain + AV (FI_AV_TABLE) + one CQ (FI_WAIT_FD when
 * the provider has it and KVN_XPORT_F_BUSY_POLL is not set; else no fd and
 * the common layer ticks) + one RDM endpoint, whose name is the address
 * peers connect to.  Peers are AV entries; on shm each peer also gets its
 * own initiator endpoint (see open_peer_ep: a dead shm peer must not stall
 * the others).
 *
 * Memory registration follows the provider's mr_mode:
 *   FI_MR_VIRT_ADDR  descriptors carry the virtual base address, RMA
 *                    targets are base + offset; otherwise 0-based offsets;
 *   FI_MR_PROV_KEY   key = fi_mr_key(); otherwise unique keys we choose;
 *   FI_MR_LOCAL      local iovs carry fi_mr_desc() (also for our own
 *                    notification buffers, which we then register);
 *   FI_MR_ENDPOINT   every MR is bound to the endpoint and enabled;
 *   FI_MR_ALLOCATED  nothing to do (callers register allocated memory).
 *
 * Ops: a WRITE/READ is one fi_writemsg/fi_readmsg per part; a part holds
 * at most tx iov_limit local iovs (and at most max_msg_size bytes), so a
 * 1024-entry SG list over tcp (iov_limit 4) is 256 parts completing the op
 * once.  The op context (struct xport_op) is the fi context of every part
 * (the provider must not need FI_CONTEXT: we ask for mode 0).  A part the
 * provider refuses with -FI_EAGAIN (rxm connecting to a new peer, shm
 * handshaking, a full tx queue) is parked in a backlog that progress
 * retries, in order per peer: posting never blocks (in one process, or
 * when the peer must progress first, blocking would deadlock).
 *
 * Completion semantics: a WRITE completion means the bytes are at the
 * target.  rxm/tcp completes a write once the data is sent unless it carries
 * FI_DELIVERY_COMPLETE, which costs an acknowledgement from the target per
 * write (measured 2-7x slower at 64 KiB with 16 in flight).  So over rxm
 * writes are *confirmed in batches* (see "Deferred delivery" below).
 * shm writes carry it only up to the inject size (4 KiB), where shm would
 * otherwise complete from its inject buffer; larger ones go without it, so
 * shm takes its CMA fast path (the initiator's process_vm_writev, complete
 * when it returns) or, without CMA, a protocol that completes on the
 * target's response - explicit delivery-complete would force the slower
 * target-copy path (measured about 2x slower at 1 MiB).
 *
 * Deferred delivery (rxm/tcp).  All writes of a peer travel in order on one
 * TCP connection and the target places them in stream order (the provider
 * reports FI_ORDER_WAW; deferred mode is off without it), so the
 * delivery-complete acknowledgement of a part confirms every part posted
 * to that peer before it.  Each write part gets a per-peer sequence number;
 * a write's last part carries FI_DELIVERY_COMPLETE once OFI_DC_EVERY parts
 * or OFI_DC_BYTES bytes passed since the previous one (so large writes keep
 * acknowledgements flowing while the rest of the window is on the wire,
 * and small ones share one).  A write whose other parts all completed
 * locally (sent) is *held* (not reported) until a delivery-complete part
 * with a higher sequence number completes:
 *
 *   seq   1    2    3 ... 15   16(DC)        held: 1..15 (sent)
 *                               ack(16) ───► report 1..16
 *
 * When a peer has held writes and nothing else in flight (no DC part will
 * come), a *confirm* is posted: the last byte of the newest held write,
 * rewritten from the same source byte with FI_DELIVERY_COMPLETE, as one more
 * part of that write (invisible: the caller may touch neither side before
 * the write completes).  Its ack releases every held write.  A failed DC part
 * fails the writes it would have confirmed; a failed or disconnected peer
 * releases its held writes (already reported with an error by then).
 *
 * Notifications: a ring of pre-posted receive buffers (hdr + max_msg_size
 * each) and a pool of send buffers; fi_send with a completion.
 *
 * Ordering: rxm over tcp reports FI_ORDER_SAW, shm does not; portable
 * callers wait for write completions before notifying (kvn_xport.h).
 *
 * Peer death: rxm/tcp turns a broken connection into error completions
 * (canceled with ENOTCONN/ECONNRESET -> connection errors).  shm has no
 * connection: peers with parts in flight are checked every 100 ms and
 * failed when their process is gone; op_timeout_ms bounds the rest.
 *
 * Progress: rxm/tcp and shm use manual data progress - the TARGET of a
 * WRITE/READ must keep calling kvn_xport_poll() (a node's event loop does).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <sys/random.h>
#include <time.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

#include "transport/xport_impl.h"

#define OFI_N_RX        64u
#define OFI_MAX_TX_BUFS 256u
#define OFI_MAX_IOV     16u
#define OFI_CQ_BATCH    64
#define OFI_DC_EVERY    16u          /* rxm: one delivery-complete part per this many */
#define OFI_DC_BYTES    (2ull << 20) /* ... or per this many bytes */

/* op->backend[] slots used by this backend */
#define OB_SLOT   0    /* SEND: tx buffer slot */
#define OB_SEQ    1    /* deferred WRITE: sequence number of its last part */
#define OB_NEXT   2    /* deferred WRITE: next held op (struct xport_op *) */
#define OB_SRC    3    /* deferred WRITE: address of its last local byte */
#define OB_DESC   4    /*                 its fi_mr_desc */
#define OB_RADDR  5    /*                 remote address of its last byte */
#define OB_KEY    6    /*                 remote key */
#define OB_FLAGS  7    /* OBF_* */
#define OBF_DEFER 0x1u /* WRITE confirmed in batches (rxm) */

/*
 * Completion context of a delivery-complete part (rxm deferred mode):
 * carries the part's sequence number so that its completion can release
 * the held writes it confirms.  From a per-domain pool (2 per op slot).
 */
struct ofi_dc {
    struct xport_op *op;
    uint64_t seq;
    struct ofi_dc *next_free;
};

struct ofi_rx {
    uint32_t idx;
};

/*
 * A part the provider refused with -FI_EAGAIN (typically while rxm sets up
 * the connection to a new peer, or when its tx queue is full).  Parked in
 * the domain's backlog and retried by progress, in order per peer; entries
 * come from a free list (allocated on this slow path only, reused).
 */
struct ofi_pending {
    struct ofi_pending *next;
    struct xport_op *op;
    void *ctx;                   /* fi context: op, or a struct ofi_dc */
    uint64_t flags;              /* extra fi_writemsg flags (FI_DELIVERY_COMPLETE) */
    enum kvn_xport_op_kind kind; /* WRITE, READ or SEND */
    struct fid_ep *ep;
    fi_addr_t addr;
    uint64_t raddr, len, key;
    size_t n;
    struct iovec iov[OFI_MAX_IOV];
    void *desc[OFI_MAX_IOV];
    char *msg; /* SEND: heap copy of hdr + payload (len bytes) */
};

struct ofi_domain {
    struct kvn_xport base;
    struct fi_info *info;
    struct fid_fabric *fabric;
    struct fid_domain *domain;
    struct fid_av *av;
    struct fid_cq *cq;
    struct fid_ep *ep;
    uint64_t mr_mode;
    size_t iov_limit;
    uint64_t max_part;
    uint64_t next_key;
    uint64_t write_flags; /* FI_DELIVERY_COMPLETE when the provider has it */
    size_t inject_size;   /* tx_attr->inject_size */
    int wait_fd;
    bool is_shm;
    char addr[256];
    size_t addrlen;

    /* receives */
    size_t buf_size; /* hdr + max_msg_size */
    uint32_t n_rx;
    char *rx_mem;
    struct fid_mr *rx_mr;
    void *rx_desc;
    struct ofi_rx *rx;
    uint32_t *rx_pending; /* tokens whose repost got -FI_EAGAIN */
    uint32_t n_rx_pending;

    /* sends */
    uint32_t n_tx;
    char *tx_mem;
    struct fid_mr *tx_mr;
    void *tx_desc;
    uint32_t *tx_free;
    uint32_t n_tx_free;

    /* shm: one initiator endpoint per peer (see ofi_connect) */
    bool ep_per_peer;
    /* references to AV entries (the AV dedups addresses) */
    uint32_t *av_refs;
    size_t av_cap;

    /* shm: liveness checks of peers with parts in flight */
    uint32_t live_tick;
    uint64_t live_next_ns;

    /* backlog of parts refused with -FI_EAGAIN */
    struct ofi_pending *bl_head, *bl_tail, *bl_free;
    uint32_t n_backlog;

    /* rxm: writes confirmed in batches (see "Deferred delivery") */
    bool defer_dc;
    struct ofi_dc *dc_pool, *dc_free;
    uint32_t n_dc;
};

struct ofi_peer {
    struct kvn_xport_peer base;
    fi_addr_t addr;
    bool in_av;
    struct fid_ep *ep; /* per-peer initiator endpoint (shm), or NULL */
    uint32_t inflight; /* parts/sends the provider holds for this peer */
    bool hs_tried;     /* a post got -FI_EAGAIN before any succeeded: shm
                          may be mid-handshake with the peer */
    bool hs_done;      /* a post succeeded: the provider reached the peer */
    int pid;           /* shm: the peer's process id (from its name), or 0 */
    /* deferred delivery (rxm) */
    uint64_t seq;                           /* write parts submitted */
    uint32_t run;                           /* parts since the last DC part */
    uint64_t run_bytes;                     /* bytes since the last DC part */
    uint32_t dc_out;                        /* DC parts submitted, not completed */
    struct xport_op *held_head, *held_tail; /* sent, awaiting a DC ack */
};

struct ofi_mr {
    struct kvn_xport_mr base;
    struct fid_mr *mr;
    void *desc;
    uint64_t key;
};

struct ofi_rmr {
    struct kvn_xport_rmr base;
    uint64_t key;
};

static struct ofi_domain *dom(struct kvn_xport *x)
{
    return (struct ofi_domain *)x;
}

static int fi_to_errno(int fi_err)
{
    int e = fi_err < 0 ? -fi_err : fi_err;
    if (e == 0)
        return -EIO;
    if (e >= FI_ERRNO_OFFSET)
        return e == FI_ETRUNC ? -EMSGSIZE : -EIO;
    return -e;
}

static int ofi_set(struct kvn_err *err, const char *what, int fi_rc)
{
    return kvn_err_set(err, fi_to_errno(fi_rc), "%s: %s", what,
                       fi_strerror(fi_rc < 0 ? -fi_rc : fi_rc));
}

/* ------------------------------------------------------------------ */
/* domain                                                              */

static void pending_free_all(struct ofi_domain *d)
{
    struct ofi_pending *e, *n;
    for (e = d->bl_head; e; e = n) {
        n = e->next;
        free(e->msg);
        free(e);
    }
    for (e = d->bl_free; e; e = n) {
        n = e->next;
        free(e);
    }
    d->bl_head = d->bl_tail = d->bl_free = NULL;
    d->n_backlog = 0;
}

static void ofi_teardown(struct ofi_domain *d)
{
    pending_free_all(d);
    if (d->ep)
        fi_close(&d->ep->fid);
    if (d->rx_mr)
        fi_close(&d->rx_mr->fid);
    if (d->tx_mr)
        fi_close(&d->tx_mr->fid);
    if (d->cq)
        fi_close(&d->cq->fid);
    if (d->av)
        fi_close(&d->av->fid);
    if (d->domain)
        fi_close(&d->domain->fid);
    if (d->fabric)
        fi_close(&d->fabric->fid);
    if (d->info)
        fi_freeinfo(d->info);
    free(d->rx_mem);
    free(d->rx);
    free(d->rx_pending);
    free(d->tx_mem);
    free(d->tx_free);
    free(d->av_refs);
    free(d->dc_pool);
    free(d);
}

static void ofi_close(struct kvn_xport *x)
{
    ofi_teardown(dom(x));
}

static int reg_internal(struct ofi_domain *d, void *buf, size_t len, uint64_t access,
                        struct fid_mr **mr, void **desc, struct kvn_err *err)
{
    *mr = NULL;
    *desc = NULL;
    if (!(d->mr_mode & FI_MR_LOCAL))
        return 0;
    int rc = fi_mr_reg(d->domain, buf, len, access, 0, d->next_key++, 0, mr, NULL);
    if (rc)
        return ofi_set(err, "fi_mr_reg(notify buffers)", rc);
    if (d->mr_mode & FI_MR_ENDPOINT) {
        rc = fi_mr_bind(*mr, &d->ep->fid, 0);
        if (!rc)
            rc = fi_mr_enable(*mr);
        if (rc)
            return ofi_set(err, "fi_mr_bind(notify buffers)", rc);
    }
    *desc = fi_mr_desc(*mr);
    return 0;
}

static int post_rx(struct ofi_domain *d, uint32_t idx)
{
    ssize_t rc = fi_recv(d->ep, d->rx_mem + (size_t)idx * d->buf_size, d->buf_size, d->rx_desc,
                         FI_ADDR_UNSPEC, &d->rx[idx]);
    return (int)rc;
}

/*
 * Bound to "any" (0.0.0.0), the endpoint's name is not an address a peer
 * on another host can use: publish the first up, non-loopback IPv4
 * address of this host instead (127.0.0.1 when there is none).
 */
static void publishable_addr(struct ofi_domain *d)
{
    struct sockaddr_in sin;
    if (d->info->addr_format != FI_SOCKADDR_IN || d->addrlen != sizeof(sin))
        return;
    memcpy(&sin, d->addr, sizeof(sin));
    if (sin.sin_family != AF_INET || sin.sin_addr.s_addr != htonl(INADDR_ANY))
        return;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct ifaddrs *ifs = NULL, *i;
    if (getifaddrs(&ifs) == 0) {
        for (i = ifs; i; i = i->ifa_next) {
            if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET ||
                (i->ifa_flags & IFF_LOOPBACK) || !(i->ifa_flags & IFF_UP))
                continue;
            struct sockaddr_in a;
            memcpy(&a, i->ifa_addr, sizeof(a));
            sin.sin_addr = a.sin_addr;
            break;
        }
        freeifaddrs(ifs);
    }
    memcpy(d->addr, &sin, sizeof(sin));
}

static int ofi_open(const struct xport_uri *uri, const struct kvn_xport_attr *attr,
                    struct kvn_xport **out, struct kvn_err *err)
{
    const char *prov;
    if (strcmp(uri->sub, "tcp") == 0)
        prov = "tcp;ofi_rxm";
    else if (strcmp(uri->sub, "shm") == 0)
        prov = "shm";
    else if (strcmp(uri->sub, "verbs") == 0)
        prov = "verbs;ofi_rxm";
    else
        return kvn_err_set(err, -EINVAL, "ofi: unknown provider '%s'", uri->sub);

    struct ofi_domain *d = calloc(1, sizeof(*d));
    if (!d)
        return kvn_err_set(err, -ENOMEM, "ofi: out of memory");
    d->wait_fd = -1;
    d->next_key = 1;
    d->is_shm = strcmp(uri->sub, "shm") == 0;
    snprintf(d->base.name, sizeof(d->base.name), "ofi+%s", uri->sub);

    struct fi_info *hints = fi_allocinfo();
    if (!hints) {
        free(d);
        return kvn_err_set(err, -ENOMEM, "ofi: fi_allocinfo failed");
    }
    hints->ep_attr->type = FI_EP_RDM;
    hints->caps = FI_RMA | FI_MSG;
    hints->mode = 0;
    hints->domain_attr->mr_mode =
        FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_ENDPOINT;
    hints->domain_attr->threading = FI_THREAD_DOMAIN;
    /* a WRITE completion must mean the bytes are at the target */
    hints->tx_attr->op_flags = FI_DELIVERY_COMPLETE;
    hints->fabric_attr->prov_name = strdup(prov);
    if (!hints->fabric_attr->prov_name) {
        fi_freeinfo(hints);
        free(d);
        return kvn_err_set(err, -ENOMEM, "ofi: out of memory");
    }

    const char *node = NULL;
    char service[16];
    const char *svc = NULL;
    uint64_t flags = 0;
    char shm_name[48];
    if (d->is_shm) {
        /*
         * shm names its region files /dev/shm/<name>:<uid>:<ep>, and by default
         * <name> is our pid: a process killed earlier with the same pid leaves
         * files that make fi_enable fail (EBUSY) or crash (SIGBUS on a 0-byte
         * file). A random suffix makes the name ours alone; the pid stays first
         * so that peers can still check our liveness (shm_name_pid).
         */
        uint64_t r = 0;
        if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != (ssize_t)sizeof(r))
            r = (uint64_t)(uintptr_t)d ^ ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL);
        snprintf(shm_name, sizeof(shm_name), "%d:%016llx", (int)getpid(), (unsigned long long)r);
        node = shm_name;
        flags = FI_SOURCE;
    } else {
        const char *bh = attr->bind_host ? attr->bind_host : "127.0.0.1";
        node = strcmp(bh, "any") == 0 ? "0.0.0.0" : bh;
        snprintf(service, sizeof(service), "%u", attr->port);
        svc = service;
        flags = FI_SOURCE;
    }
    int rc = fi_getinfo(FI_VERSION(1, 9), node, svc, flags, hints, &d->info);
    fi_freeinfo(hints);
    if (rc || !d->info) {
        d->info = NULL;
        ofi_teardown(d);
        return kvn_err_set(err, -ENODEV,
                           "ofi: provider '%s' with FI_EP_RDM, FI_RMA|FI_MSG "
                           "unavailable (bind %s): %s",
                           prov, node ? node : "-", fi_strerror(-rc));
    }
    struct fi_info *fi = d->info;
    d->write_flags = fi->tx_attr->op_flags & FI_DELIVERY_COMPLETE;
    d->inject_size = fi->tx_attr->inject_size;
    d->mr_mode = fi->domain_attr->mr_mode;
    d->iov_limit = fi->tx_attr->iov_limit;
    if (d->iov_limit == 0)
        d->iov_limit = 1;
    if (d->iov_limit > OFI_MAX_IOV)
        d->iov_limit = OFI_MAX_IOV;
    d->max_part = fi->ep_attr->max_msg_size ? fi->ep_attr->max_msg_size : UINT64_MAX;
    if (fi->domain_attr->mr_key_size && fi->domain_attr->mr_key_size > 8) {
        ofi_teardown(d);
        return kvn_err_set(err, -ENOTSUP, "ofi: mr_key_size %zu > 8", fi->domain_attr->mr_key_size);
    }

    const char *step = "fi_fabric";
    rc = fi_fabric(fi->fabric_attr, &d->fabric, NULL);
    if (!rc) {
        step = "fi_domain";
        rc = fi_domain(d->fabric, fi, &d->domain, NULL);
    }
    if (!rc) {
        struct fi_av_attr av = {.type = FI_AV_TABLE};
        step = "fi_av_open";
        rc = fi_av_open(d->domain, &av, &d->av, NULL);
    }
    if (!rc) {
        struct fi_cq_attr cq = {
            .size = attr->max_outstanding + OFI_N_RX + 64,
            .format = FI_CQ_FORMAT_DATA,
            .wait_obj = (attr->flags & KVN_XPORT_F_BUSY_POLL) ? FI_WAIT_NONE : FI_WAIT_FD,
        };
        step = "fi_cq_open";
        rc = fi_cq_open(d->domain, &cq, &d->cq, NULL);
        if (rc && cq.wait_obj != FI_WAIT_NONE) {
            cq.wait_obj = FI_WAIT_NONE;
            rc = fi_cq_open(d->domain, &cq, &d->cq, NULL);
        } else if (cq.wait_obj == FI_WAIT_FD &&
                   fi_control(&d->cq->fid, FI_GETWAIT, &d->wait_fd) != 0) {
            d->wait_fd = -1;
        }
    }
    if (!rc) {
        step = "fi_endpoint";
        rc = fi_endpoint(d->domain, fi, &d->ep, NULL);
    }
    if (!rc) {
        step = "fi_ep_bind(av)";
        rc = fi_ep_bind(d->ep, &d->av->fid, 0);
    }
    if (!rc) {
        step = "fi_ep_bind(cq)";
        rc = fi_ep_bind(d->ep, &d->cq->fid, FI_TRANSMIT | FI_RECV);
    }
    if (!rc) {
        step = "fi_enable";
        rc = fi_enable(d->ep);
    }
    if (!rc) {
        step = "fi_getname";
        d->addrlen = sizeof(d->addr);
        rc = fi_getname(&d->ep->fid, d->addr, &d->addrlen);
    }
    if (rc) {
        ofi_teardown(d);
        return kvn_err_set(err, fi_to_errno(rc), "ofi %s: %s failed: %s", prov, step,
                           fi_strerror(-rc));
    }
    publishable_addr(d);

    /* notification buffers */
    d->buf_size = sizeof(struct xport_notify_hdr) + attr->max_msg_size;
    d->n_rx = OFI_N_RX;
    d->n_tx = attr->max_outstanding < OFI_MAX_TX_BUFS ? attr->max_outstanding : OFI_MAX_TX_BUFS;
    d->rx_mem = aligned_alloc(64, ((size_t)d->n_rx * d->buf_size + 63) & ~(size_t)63);
    d->tx_mem = aligned_alloc(64, ((size_t)d->n_tx * d->buf_size + 63) & ~(size_t)63);
    d->rx = calloc(d->n_rx, sizeof(*d->rx));
    d->rx_pending = calloc(d->n_rx, sizeof(*d->rx_pending));
    d->tx_free = calloc(d->n_tx, sizeof(*d->tx_free));
    if (!d->rx_mem || !d->tx_mem || !d->rx || !d->rx_pending || !d->tx_free) {
        ofi_teardown(d);
        return kvn_err_set(err, -ENOMEM, "ofi: out of memory for buffers");
    }
    rc = reg_internal(d, d->rx_mem, (size_t)d->n_rx * d->buf_size, FI_RECV, &d->rx_mr, &d->rx_desc,
                      err);
    if (!rc)
        rc = reg_internal(d, d->tx_mem, (size_t)d->n_tx * d->buf_size, FI_SEND, &d->tx_mr,
                          &d->tx_desc, err);
    if (rc) {
        ofi_teardown(d);
        return rc;
    }
    for (uint32_t i = 0; i < d->n_tx; i++)
        d->tx_free[i] = d->n_tx - 1 - i;
    d->n_tx_free = d->n_tx;
    for (uint32_t i = 0; i < d->n_rx; i++) {
        d->rx[i].idx = i;
        rc = post_rx(d, i);
        if (rc) {
            int e = ofi_set(err, "fi_recv", rc);
            ofi_teardown(d);
            return e;
        }
    }

    /* rxm over tcp: confirm writes in batches, which relies on the
     * provider processing writes to a peer in order (FI_ORDER_WAW, which
     * tcp;ofi_rxm 1.17 reports); other providers keep per-write
     * delivery-complete */
    d->defer_dc = d->write_flags && strcmp(prov, "tcp;ofi_rxm") == 0 &&
                  (fi->tx_attr->msg_order & FI_ORDER_WAW);
    if (d->defer_dc) {
        d->n_dc = 2 * attr->max_outstanding + 8;
        d->dc_pool = calloc(d->n_dc, sizeof(*d->dc_pool));
        if (!d->dc_pool) {
            ofi_teardown(d);
            return kvn_err_set(err, -ENOMEM, "ofi: out of memory for DC contexts");
        }
        for (uint32_t i = d->n_dc; i-- > 0;) {
            d->dc_pool[i].next_free = d->dc_free;
            d->dc_free = &d->dc_pool[i];
        }
    }
    d->ep_per_peer = d->is_shm && !(d->mr_mode & FI_MR_ENDPOINT);
    d->base.n_recv_bufs = d->n_rx;
    d->base.remote_virt_addr = (d->mr_mode & FI_MR_VIRT_ADDR) != 0;
    d->base.max_op_bytes = 0; /* parts are split by max_part */
    *out = &d->base;
    return 0;
}

/* ------------------------------------------------------------------ */
/* addresses and peers                                                 */

static int ofi_address(struct kvn_xport *x, void *buf, size_t *len, struct kvn_err *err)
{
    struct ofi_domain *d = dom(x);
    if (*len < d->addrlen)
        return kvn_err_set(err, -ENOSPC, "ofi: address needs %zu bytes", d->addrlen);
    memcpy(buf, d->addr, d->addrlen);
    *len = d->addrlen;
    return 0;
}

/* Checks that raw is a well-formed address of our address format, so the
 * provider never reads past it. */
static int check_raw_addr(struct ofi_domain *d, const void *raw, size_t len, struct kvn_err *err)
{
    switch (d->info->addr_format) {
    case FI_SOCKADDR_IN: {
        struct sockaddr_in sin;
        if (len != sizeof(sin))
            return kvn_err_set(err, -EINVAL, "ofi: IPv4 address of %zu bytes", len);
        memcpy(&sin, raw, sizeof(sin));
        if (sin.sin_family != AF_INET || sin.sin_port == 0)
            return kvn_err_set(err, -EINVAL, "ofi: bad IPv4 address");
        return 0;
    }
    case FI_SOCKADDR_IN6: {
        struct sockaddr_in6 sin6;
        if (len != sizeof(sin6))
            return kvn_err_set(err, -EINVAL, "ofi: IPv6 address of %zu bytes", len);
        memcpy(&sin6, raw, sizeof(sin6));
        if (sin6.sin6_family != AF_INET6 || sin6.sin6_port == 0)
            return kvn_err_set(err, -EINVAL, "ofi: bad IPv6 address");
        return 0;
    }
    case FI_ADDR_STR:
        if (len > sizeof(d->addr) || memchr(raw, '\0', len) == NULL ||
            ((const char *)raw)[0] == '\0')
            return kvn_err_set(err, -EINVAL, "ofi: string address not NUL-terminated");
        return 0;
    default:
        if (len != d->addrlen)
            return kvn_err_set(err, -EINVAL, "ofi: address of %zu bytes, expected %zu", len,
                               d->addrlen);
        return 0;
    }
}

/*
 * shm processes its response queue strictly in order: one peer that dies
 * with ops in flight would block the completions of every later op of the
 * endpoint.  So for shm each peer gets its own initiator endpoint (same
 * AV and CQ): a dead peer stalls only its own endpoint, which disconnect
 * closes.  The domain's main endpoint stays the address peers use (it is
 * the RMA target and receives notifications).
 */
static int open_peer_ep(struct ofi_domain *d, struct fid_ep **out, struct kvn_err *err)
{
    struct fid_ep *ep = NULL;
    const char *step = "fi_endpoint(peer)";
    int rc = fi_endpoint(d->domain, d->info, &ep, NULL);
    if (!rc) {
        step = "fi_ep_bind(peer, av)";
        rc = fi_ep_bind(ep, &d->av->fid, 0);
    }
    if (!rc) {
        step = "fi_ep_bind(peer, cq)";
        rc = fi_ep_bind(ep, &d->cq->fid, FI_TRANSMIT | FI_RECV);
    }
    if (!rc) {
        step = "fi_enable(peer)";
        rc = fi_enable(ep);
    }
    if (rc) {
        if (ep)
            fi_close(&ep->fid);
        return kvn_err_set(err, fi_to_errno(rc), "ofi: %s: %s", step, fi_strerror(-rc));
    }
    *out = ep;
    return 0;
}

/* "fi_shm://1234:0:0" -> 1234; 0 when the name has another form. */
static int shm_name_pid(const char *name)
{
    const char *s = strstr(name, "://");
    if (!s)
        return 0;
    s += 3;
    long v = 0;
    int digits = 0;
    while (*s >= '0' && *s <= '9' && digits < 10) {
        v = v * 10 + (*s++ - '0');
        digits++;
    }
    return digits && v > 0 && v < INT32_MAX && (*s == ':' || *s == '\0') ? (int)v : 0;
}

/* True when process pid is gone (or a zombie): its shm peer is dead. */
static bool pid_dead(int pid)
{
    if (kill(pid, 0) < 0 && errno == ESRCH)
        return true;
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *rp = strrchr(buf, ')');
    return rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X');
}

static int ofi_connect(struct kvn_xport *x, struct kvn_xport_peer *p, const void *raw, size_t len,
                       struct kvn_err *err)
{
    struct ofi_domain *d = dom(x);
    struct ofi_peer *op = (struct ofi_peer *)p;
    int rc = check_raw_addr(d, raw, len, err);
    if (rc < 0)
        return rc;
    char abuf[256] __attribute__((aligned(16)));
    memset(abuf, 0, sizeof(abuf));
    memcpy(abuf, raw, len);
    if (d->ep_per_peer) {
        int erc = open_peer_ep(d, &op->ep, err);
        if (erc < 0)
            return erc;
    }
    fi_addr_t fa = FI_ADDR_NOTAVAIL;
    rc = fi_av_insert(d->av, abuf, 1, &fa, 0, NULL);
    if (rc != 1 || fa == FI_ADDR_NOTAVAIL || fa > (1u << 24)) {
        if (rc == 1 && fa != FI_ADDR_NOTAVAIL)
            fi_av_remove(d->av, &fa, 1, 0);
        if (op->ep)
            fi_close(&op->ep->fid);
        op->ep = NULL;
        return kvn_err_set(err, -EINVAL,
                           "ofi: fi_av_insert refused the "
                           "address (%d)",
                           rc);
    }
    if (fa >= d->av_cap) {
        size_t cap = d->av_cap ? d->av_cap : 16;
        while (cap <= fa)
            cap *= 2;
        uint32_t *n = realloc(d->av_refs, cap * sizeof(*n));
        if (!n) {
            if (op->ep)
                fi_close(&op->ep->fid);
            op->ep = NULL;
            return kvn_err_set(err, -ENOMEM, "ofi: out of memory");
        }
        memset(n + d->av_cap, 0, (cap - d->av_cap) * sizeof(*n));
        d->av_refs = n;
        d->av_cap = cap;
    }
    d->av_refs[fa]++;
    op->addr = fa;
    op->in_av = true;
    if (d->is_shm)
        op->pid = shm_name_pid(abuf);
    return 0;
}

static int ofi_progress(struct kvn_xport *x);
static void pending_put(struct ofi_domain *d, struct ofi_pending *e);
static struct xport_op *held_take(struct ofi_peer *pp, uint64_t upto);
static void held_finish(struct xport_op *list, int status, const char *msg);
static bool is_dc_ctx(const struct ofi_domain *d, const void *ctx);
static void dc_put(struct ofi_domain *d, struct ofi_dc *c);

/* Drops parked parts of p without completing them (their ops are about to
 * be abandoned or the domain closes). */
static void backlog_drop_peer(struct ofi_domain *d, struct kvn_xport_peer *p)
{
    struct ofi_pending **pp = &d->bl_head, *prev = NULL;
    while (*pp) {
        struct ofi_pending *e = *pp;
        if (e->op->peer != p) {
            prev = e;
            pp = &e->next;
            continue;
        }
        *pp = e->next;
        if (d->bl_tail == e)
            d->bl_tail = prev;
        d->n_backlog--;
        if (is_dc_ctx(d, e->ctx)) {
            ((struct ofi_peer *)p)->dc_out--;
            dc_put(d, e->ctx);
        }
        pending_put(d, e);
    }
}

#define OFI_DRAIN_MAX_MS 2000u

/* Progresses until the provider returned every part of p's endpoint, for
 * at most min(op_timeout_ms, OFI_DRAIN_MAX_MS); skipped for failed peers. */
static void ofi_drain_peer(struct ofi_domain *d, struct ofi_peer *op)
{
    if (op->base.failed || (!op->inflight && (op->hs_done || !op->hs_tried)))
        return;
    uint32_t ms = d->base.attr.op_timeout_ms < OFI_DRAIN_MAX_MS ? d->base.attr.op_timeout_ms
                                                                : OFI_DRAIN_MAX_MS;
    uint64_t end = xport_now_ns() + (uint64_t)ms * 1000000ull;
    /* A handshake under way (our name is queued at the peer): finish it
     * with a probe the receiver drops (a header with magic 0), so that the
     * peer is done with our region before it goes away. */
    static const struct xport_notify_hdr probe = {0, 0, 0};
    while (!op->hs_done && op->hs_tried && xport_now_ns() < end) {
        ofi_progress(&d->base);
        if (fi_inject(op->ep, &probe, sizeof(probe), op->addr) == 0)
            op->hs_done = true;
    }
    while (op->inflight && xport_now_ns() < end)
        ofi_progress(&d->base);
}

static void ofi_disconnect(struct kvn_xport_peer *p)
{
    struct ofi_peer *op = (struct ofi_peer *)p;
    struct ofi_domain *d = dom(p->x);
    if (!op->ep) {
        /* rxm: RMA cannot be canceled; ops the provider still owns
         * complete (or fail) later and are recycled then.  Held writes
         * (sent, awaiting a confirm) are no longer the provider's: the
         * common layer has reported them canceled, recycle them now (the
         * caller's reference keeps p alive meanwhile).  The AV entry stays
         * until peer_free. */
        held_finish(held_take(op, UINT64_MAX), -ECANCELED, "canceled: peer disconnected");
        return;
    }
    /* shm: this peer's initiator endpoint carries only its ops.  A live
     * target that still has commands of this endpoint queued crashes in
     * libfabric 1.17 when the endpoint's region disappears under them, so
     * first let a healthy peer drain what the provider holds (bounded);
     * a failed peer is not waited for.  Then close the endpoint (a dead
     * peer's pending responses die with it) and abandon the rest. */
    backlog_drop_peer(d, p);
    ofi_drain_peer(d, op);
    fi_close(&op->ep->fid);
    op->ep = NULL;
    op->inflight = 0;
    xport_peer_abandon(p);
}

static void ofi_peer_free(struct kvn_xport_peer *p)
{
    struct ofi_peer *op = (struct ofi_peer *)p;
    struct ofi_domain *d = dom(p->x);
    if (op->ep) {
        fi_close(&op->ep->fid);
        op->ep = NULL;
    }
    if (op->in_av && !p->x->in_close && op->addr < d->av_cap && --d->av_refs[op->addr] == 0)
        fi_av_remove(d->av, &op->addr, 1, 0);
    op->in_av = false;
}

/* ------------------------------------------------------------------ */
/* memory                                                              */

static int ofi_mr_reg(struct kvn_xport *x, struct kvn_xport_mr *mr, struct kvn_err *err)
{
    struct ofi_domain *d = dom(x);
    struct ofi_mr *m = (struct ofi_mr *)mr;
    uint64_t access = 0;
    if (mr->access & KVN_XPORT_ACCESS_LOCAL)
        access |= FI_READ | FI_WRITE | FI_SEND | FI_RECV;
    if (mr->access & KVN_XPORT_ACCESS_REMOTE_READ)
        access |= FI_REMOTE_READ;
    if (mr->access & KVN_XPORT_ACCESS_REMOTE_WRITE)
        access |= FI_REMOTE_WRITE;
    uint64_t key = d->next_key;
    int rc = fi_mr_reg(d->domain, mr->addr, mr->len, access, 0, key, 0, &m->mr, NULL);
    if (rc)
        return kvn_err_set(err, fi_to_errno(rc), "ofi: fi_mr_reg(%p, %zu): %s", mr->addr, mr->len,
                           fi_strerror(-rc));
    if (d->mr_mode & FI_MR_ENDPOINT) {
        rc = fi_mr_bind(m->mr, &d->ep->fid, 0);
        if (!rc)
            rc = fi_mr_enable(m->mr);
        if (rc) {
            fi_close(&m->mr->fid);
            return kvn_err_set(err, fi_to_errno(rc), "ofi: fi_mr_bind: %s", fi_strerror(-rc));
        }
    }
    d->next_key++;
    m->key = (d->mr_mode & FI_MR_PROV_KEY) ? fi_mr_key(m->mr) : key;
    m->desc = fi_mr_desc(m->mr);
    return 0;
}

static void ofi_mr_dereg(struct kvn_xport_mr *mr)
{
    struct ofi_mr *m = (struct ofi_mr *)mr;
    if (m->mr)
        fi_close(&m->mr->fid);
    m->mr = NULL;
}

static int ofi_mr_pack_key(const struct kvn_xport_mr *mr, void *key, size_t *len,
                           struct kvn_err *err)
{
    const struct ofi_mr *m = (const struct ofi_mr *)mr;
    if (*len < 8)
        return kvn_err_set(err, -ENOSPC, "ofi: key needs 8 bytes");
    uint8_t *b = key;
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(m->key >> (8 * i));
    *len = 8;
    return 0;
}

static int ofi_rmr_unpack_key(struct kvn_xport_peer *p, struct kvn_xport_rmr *r, const void *key,
                              size_t len, struct kvn_err *err)
{
    (void)p;
    if (len != 8)
        return kvn_err_set(err, -EINVAL, "ofi: key of %zu bytes, want 8", len);
    const uint8_t *b = key;
    uint64_t k = 0;
    for (int i = 7; i >= 0; i--)
        k = (k << 8) | b[i];
    ((struct ofi_rmr *)r)->key = k;
    return 0;
}

static void ofi_rmr_free(struct kvn_xport_rmr *r)
{
    (void)r;
}

/* ------------------------------------------------------------------ */
/* posting                                                             */

static ssize_t try_rma(struct fid_ep *ep, void *ctx, enum kvn_xport_op_kind kind,
                       const struct iovec *iov, void **desc, size_t n, fi_addr_t addr,
                       uint64_t raddr, uint64_t len, uint64_t key, uint64_t wf)
{
    struct fi_rma_iov rma = {.addr = raddr, .len = len, .key = key};
    struct fi_msg_rma msg = {
        .msg_iov = iov,
        .desc = desc,
        .iov_count = n,
        .addr = addr,
        .rma_iov = &rma,
        .rma_iov_count = 1,
        .context = ctx,
    };
    return kind == KVN_XPORT_WRITE ? fi_writemsg(ep, &msg, FI_COMPLETION | wf)
                                   : fi_readmsg(ep, &msg, FI_COMPLETION);
}

static struct ofi_pending *pending_get(struct ofi_domain *d)
{
    struct ofi_pending *e = d->bl_free;
    if (e)
        d->bl_free = e->next;
    else
        e = malloc(sizeof(*e));
    if (e) {
        memset(e, 0, offsetof(struct ofi_pending, iov));
        e->msg = NULL;
    }
    return e;
}

static void pending_put(struct ofi_domain *d, struct ofi_pending *e)
{
    free(e->msg);
    e->msg = NULL;
    e->next = d->bl_free;
    d->bl_free = e;
}

static void pending_append(struct ofi_domain *d, struct ofi_pending *e)
{
    e->next = NULL;
    if (d->bl_tail)
        d->bl_tail->next = e;
    else
        d->bl_head = e;
    d->bl_tail = e;
    d->n_backlog++;
}

static int fail_text(char *buf, size_t cap, const char *what, int fi_rc)
{
    snprintf(buf, cap, "ofi: %s: %s", what, fi_strerror(fi_rc < 0 ? -fi_rc : fi_rc));
    return fi_to_errno(fi_rc);
}

static void part_finish(struct ofi_domain *d, void *ctx, int status, const char *msg,
                        bool in_provider);

static struct ofi_dc *dc_get(struct ofi_domain *d, struct xport_op *op, uint64_t seq)
{
    struct ofi_dc *c = d->dc_free;
    if (c) {
        d->dc_free = c->next_free;
        c->op = op;
        c->seq = seq;
        c->next_free = NULL;
    }
    return c;
}

static void dc_put(struct ofi_domain *d, struct ofi_dc *c)
{
    c->op = NULL;
    c->next_free = d->dc_free;
    d->dc_free = c;
}

static bool is_dc_ctx(const struct ofi_domain *d, const void *ctx)
{
    return d->dc_pool && (const char *)ctx >= (const char *)d->dc_pool &&
           (const char *)ctx < (const char *)(d->dc_pool + d->n_dc);
}

/* Write flags of a part outside deferred mode. */
static uint64_t plain_wflags(const struct ofi_domain *d, uint64_t len)
{
    /* shm: above the inject size the CMA/SAR protocols complete only once
     * the target has copied the bytes, so delivery-complete is implied;
     * asking for it explicitly makes shm 1.17 take a slower path */
    return (d->is_shm && len > d->inject_size) ? 0 : d->write_flags;
}

/*
 * Posts one RMA part now, or parks it when the provider says -FI_EAGAIN or
 * the backlog is not empty (keeps order).  Returns 0 (posted or parked) or
 * a negative errno with msg filled (nothing posted for this part).
 */
static int part_submit_ctx(struct ofi_domain *d, struct ofi_peer *p, struct xport_op *op, void *ctx,
                           uint64_t wf, enum kvn_xport_op_kind kind, const struct iovec *iov,
                           void **desc, size_t n, uint64_t raddr, uint64_t len, uint64_t key,
                           char *msg, size_t msgcap)
{
    struct fid_ep *ep = p->ep ? p->ep : d->ep;
    if (!d->bl_head) {
        ssize_t rc = try_rma(ep, ctx, kind, iov, desc, n, p->addr, raddr, len, key, wf);
        if (rc == 0) {
            p->inflight++;
            p->hs_done = true;
            return 0;
        }
        if (rc == -FI_EAGAIN)
            p->hs_tried = true;
        if (rc != -FI_EAGAIN)
            return fail_text(msg, msgcap, kind == KVN_XPORT_WRITE ? "fi_writemsg" : "fi_readmsg",
                             (int)rc);
    }
    struct ofi_pending *e = pending_get(d);
    if (!e) {
        snprintf(msg, msgcap, "ofi: out of memory parking a part");
        return -ENOMEM;
    }
    e->op = op;
    e->ctx = ctx;
    e->flags = wf;
    e->kind = kind;
    e->ep = ep;
    e->addr = p->addr;
    e->raddr = raddr;
    e->len = len;
    e->key = key;
    e->n = n;
    memcpy(e->iov, iov, n * sizeof(*iov));
    memcpy(e->desc, desc, n * sizeof(*desc));
    pending_append(d, e);
    return 0;
}

/*
 * One part of op.  In deferred mode (rxm writes) the part gets the peer's
 * next sequence number and, when it ends the op and OFI_DC_EVERY parts
 * passed since the last one, FI_DELIVERY_COMPLETE with a DC context; the
 * op's last part also records where its last byte is (for a confirm).
 */
static int part_submit(struct ofi_domain *d, struct ofi_peer *p, struct xport_op *op,
                       enum kvn_xport_op_kind kind, const struct iovec *iov, void **desc, size_t n,
                       uint64_t raddr, uint64_t len, uint64_t key, bool last, char *msg,
                       size_t msgcap)
{
    if (!(op->backend[OB_FLAGS] & OBF_DEFER))
        return part_submit_ctx(d, p, op, op, kind == KVN_XPORT_WRITE ? plain_wflags(d, len) : 0,
                               kind, iov, desc, n, raddr, len, key, msg, msgcap);
    uint64_t seq = ++p->seq;
    struct ofi_dc *dc = NULL;
    if (last) {
        op->backend[OB_SEQ] = seq;
        op->backend[OB_SRC] =
            (uint64_t)(uintptr_t)((char *)iov[n - 1].iov_base + iov[n - 1].iov_len - 1);
        op->backend[OB_DESC] = (uint64_t)(uintptr_t)desc[n - 1];
        op->backend[OB_RADDR] = raddr + len - 1;
        op->backend[OB_KEY] = key;
        p->run_bytes += len;
        if (++p->run >= OFI_DC_EVERY || p->run_bytes >= OFI_DC_BYTES)
            dc = dc_get(d, op, seq); /* NULL (pool empty): a confirm follows */
    } else {
        p->run++;
        p->run_bytes += len;
    }
    if (dc) {
        p->run = 0;
        p->run_bytes = 0;
        p->dc_out++;
    }
    int rc = part_submit_ctx(d, p, op, dc ? (void *)dc : (void *)op, dc ? FI_DELIVERY_COMPLETE : 0,
                             kind, iov, desc, n, raddr, len, key, msg, msgcap);
    if (rc && dc) {
        p->dc_out--;
        dc_put(d, dc);
    }
    return rc;
}

/*
 * Walks the SG list cutting parts of at most iov_limit iovs and max_part
 * bytes.  Counts them (submit == false) or submits them, stopping at the
 * first failure (*rc_out, msg); returns the parts counted / submitted.
 */
static uint32_t walk_parts(struct ofi_domain *d, struct ofi_peer *p, struct xport_op *op,
                           const struct xport_post_req *req, bool submit, int *rc_out, char *msg,
                           size_t msgcap)
{
    struct iovec iov[OFI_MAX_IOV];
    void *desc[OFI_MAX_IOV];
    size_t n = 0;
    uint64_t part_len = 0, raddr = req->remote_addr;
    uint32_t parts = 0;
    uint64_t key = ((struct ofi_rmr *)req->remote)->key;
    *rc_out = 0;
    for (uint32_t k = 0; k < req->n_local; k++) {
        const struct kvn_xport_sge *s = &req->local[k];
        void *md = ((struct ofi_mr *)s->mr)->desc;
        uint64_t off = s->offset, left = s->len;
        while (left) {
            uint64_t room = d->max_part - part_len;
            uint64_t take = left < room ? left : room;
            iov[n].iov_base = (char *)s->mr->addr + off;
            iov[n].iov_len = take;
            desc[n] = md;
            n++;
            part_len += take;
            off += take;
            left -= take;
            bool last = (k + 1 == req->n_local) && left == 0;
            if (n == d->iov_limit || part_len == d->max_part || last) {
                if (submit) {
                    int rc = part_submit(d, p, op, req->kind, iov, desc, n, raddr, part_len, key,
                                         last, msg, msgcap);
                    if (rc) {
                        *rc_out = rc;
                        return parts;
                    }
                }
                parts++;
                raddr += part_len;
                part_len = 0;
                n = 0;
            }
        }
    }
    return parts;
}

static int ofi_post(struct kvn_xport_peer *p, struct xport_op *op, const struct xport_post_req *req,
                    struct kvn_err *err)
{
    struct ofi_domain *d = dom(p->x);
    struct ofi_peer *pp = (struct ofi_peer *)p;
    char msg[KVN_XPORT_CQE_MSG] = "";
    int rc;
    op->backend[OB_FLAGS] = (d->defer_dc && req->kind == KVN_XPORT_WRITE) ? OBF_DEFER : 0;
    uint32_t total = walk_parts(d, pp, op, req, false, &rc, msg, sizeof(msg));
    op->parts = total;
    uint32_t posted = walk_parts(d, pp, op, req, true, &rc, msg, sizeof(msg));
    if (rc == 0)
        return 0;
    if (posted == 0) {
        op->parts = 0; /* nothing reached the provider */
        return kvn_err_set(err, rc, "%s", msg);
    }
    for (uint32_t i = posted; i < total; i++)
        xport_op_done(op, rc, msg);
    return 0;
}

/* Posts a send from a tx slot; -FI_EAGAIN leaves the slot taken. */
static ssize_t try_send(struct ofi_domain *d, struct fid_ep *ep, struct xport_op *op,
                        fi_addr_t addr, const void *data, size_t len)
{
    uint32_t slot = d->tx_free[--d->n_tx_free];
    char *b = d->tx_mem + (size_t)slot * d->buf_size;
    memcpy(b, data, len);
    ssize_t rc = fi_send(ep, b, len, d->tx_desc, addr, op);
    if (rc) {
        d->tx_free[d->n_tx_free++] = slot;
    } else {
        op->backend[OB_SLOT] = slot;
        ((struct ofi_peer *)op->peer)->inflight++;
        ((struct ofi_peer *)op->peer)->hs_done = true;
    }
    return rc;
}

static int ofi_notify(struct kvn_xport_peer *p, struct xport_op *op,
                      const struct xport_notify_hdr *hdr, const void *buf, size_t len,
                      struct kvn_err *err)
{
    struct ofi_domain *d = dom(p->x);
    struct ofi_peer *pp = (struct ofi_peer *)p;
    size_t total = sizeof(*hdr) + len;
    op->parts = 1;
    op->backend[OB_FLAGS] = 0;
    if (!d->bl_head && d->n_tx_free) {
        /* assemble in the slot directly: no extra copy on the fast path */
        uint32_t slot = d->tx_free[--d->n_tx_free];
        char *b = d->tx_mem + (size_t)slot * d->buf_size;
        memcpy(b, hdr, sizeof(*hdr));
        memcpy(b + sizeof(*hdr), buf, len);
        ssize_t rc = fi_send(pp->ep ? pp->ep : d->ep, b, total, d->tx_desc, pp->addr, op);
        if (rc == 0) {
            pp->inflight++;
            pp->hs_done = true;
            op->backend[OB_SLOT] = slot;
            return 0;
        }
        d->tx_free[d->n_tx_free++] = slot;
        if (rc == -FI_EAGAIN)
            pp->hs_tried = true;
        if (rc != -FI_EAGAIN) {
            op->parts = 0;
            return kvn_err_set(err, fi_to_errno((int)rc), "ofi: fi_send: %s",
                               fi_strerror((int)-rc));
        }
    }
    struct ofi_pending *e = pending_get(d);
    char *copy = malloc(total);
    if (!e || !copy) {
        if (e)
            pending_put(d, e);
        free(copy);
        op->parts = 0;
        return kvn_err_set(err, -ENOMEM, "ofi: out of memory parking a send");
    }
    memcpy(copy, hdr, sizeof(*hdr));
    memcpy(copy + sizeof(*hdr), buf, len);
    e->op = op;
    e->kind = KVN_XPORT_SEND;
    e->ep = pp->ep ? pp->ep : d->ep;
    e->addr = pp->addr;
    e->len = total;
    e->msg = copy;
    pending_append(d, e);
    return 0;
}

/* Retries the backlog in order; a peer that says EAGAIN keeps its later
 * entries parked (per-peer order), others proceed. */
static void backlog_retry(struct ofi_domain *d)
{
    fi_addr_t blocked[8];
    int nb = 0;
    struct ofi_pending **pp = &d->bl_head, *prev = NULL;
    while (*pp) {
        struct ofi_pending *e = *pp;
        bool skip = false;
        for (int i = 0; i < nb; i++)
            if (blocked[i] == e->addr)
                skip = true;
        ssize_t rc = 0;
        if (e->op->reported) {
            rc = -FI_ECANCELED; /* timed out or canceled meanwhile */
        } else if (!skip) {
            if (e->kind == KVN_XPORT_SEND)
                rc = d->n_tx_free ? try_send(d, e->ep, e->op, e->addr, e->msg, e->len) : -FI_EAGAIN;
            else
                rc = try_rma(e->ep, e->ctx, e->kind, e->iov, e->desc, e->n, e->addr, e->raddr,
                             e->len, e->key, e->flags);
        }
        if (skip || rc == -FI_EAGAIN) {
            if (!skip) {
                if (nb == 8)
                    return;
                blocked[nb++] = e->addr;
            }
            prev = e;
            pp = &e->next;
            continue;
        }
        /* unlink e */
        *pp = e->next;
        if (d->bl_tail == e)
            d->bl_tail = prev;
        d->n_backlog--;
        struct xport_op *op = e->op;
        void *ctx = e->ctx;
        enum kvn_xport_op_kind kind = e->kind;
        pending_put(d, e);
        if (rc == 0) {
            if (kind != KVN_XPORT_SEND) { /* try_send counts its own */
                ((struct ofi_peer *)op->peer)->inflight++;
                ((struct ofi_peer *)op->peer)->hs_done = true;
            }
            continue;
        }
        /* never reached the provider: no slot, nothing in flight */
        char msg[KVN_XPORT_CQE_MSG];
        int st =
            fail_text(msg, sizeof(msg),
                      kind == KVN_XPORT_SEND ? "fi_send (deferred)" : "rma (deferred)", (int)rc);
        if (kind == KVN_XPORT_SEND)
            xport_op_done(op, st, msg);
        else
            part_finish(d, ctx, st, msg, false);
    }
}

static bool is_rx_ctx(struct ofi_domain *d, void *ctx)
{
    return (char *)ctx >= (char *)d->rx && (char *)ctx < (char *)(d->rx + d->n_rx);
}

static void ofi_recv_repost(struct kvn_xport *x, uint64_t token)
{
    struct ofi_domain *d = dom(x);
    if (token >= d->n_rx)
        return;
    int rc = post_rx(d, (uint32_t)token);
    if (rc == -FI_EAGAIN && d->n_rx_pending < d->n_rx)
        d->rx_pending[d->n_rx_pending++] = (uint32_t)token;
}

/* ---- deferred delivery (rxm): held writes and confirms ---- */

static struct xport_op *held_next(const struct xport_op *op)
{
    return (struct xport_op *)(uintptr_t)op->backend[OB_NEXT];
}

static void held_push(struct ofi_peer *pp, struct xport_op *op)
{
    op->backend[OB_NEXT] = 0;
    if (pp->held_tail)
        pp->held_tail->backend[OB_NEXT] = (uint64_t)(uintptr_t)op;
    else
        pp->held_head = op;
    pp->held_tail = op;
}

/* Unlinks the held writes whose last part has seq <= upto (all of them for
 * UINT64_MAX) and returns them as a list linked through OB_NEXT.  The
 * caller finishes them after it is done with pp (finishing the last op of
 * a disconnected peer frees the peer). */
static struct xport_op *held_take(struct ofi_peer *pp, uint64_t upto)
{
    struct xport_op *out = NULL, **tail = &out, *prev = NULL, *op = pp->held_head;
    while (op) {
        struct xport_op *next = held_next(op);
        if (op->backend[OB_SEQ] <= upto) {
            if (prev)
                prev->backend[OB_NEXT] = (uint64_t)(uintptr_t)next;
            else
                pp->held_head = next;
            if (pp->held_tail == op)
                pp->held_tail = prev;
            op->backend[OB_NEXT] = 0;
            *tail = op;
            tail = (struct xport_op **)(void *)&op->backend[OB_NEXT];
        } else {
            prev = op;
        }
        op = next;
    }
    return out;
}

static void held_finish(struct xport_op *list, int status, const char *msg)
{
    while (list) {
        struct xport_op *next = held_next(list);
        list->backend[OB_NEXT] = 0;
        xport_op_done(list, status, msg);
        list = next;
    }
}

/*
 * pp has held writes and nothing in flight that could confirm them: post
 * the last byte of the newest one again with FI_DELIVERY_COMPLETE, as one
 * more part of that write.  Returns 0 (posted, parked or not needed) or a
 * negative errno with msg filled when the confirm could not be posted.
 */
static int maybe_confirm(struct ofi_domain *d, struct ofi_peer *pp, char *msg, size_t msgcap)
{
    if (!pp->held_head || pp->dc_out || pp->inflight)
        return 0;
    struct xport_op *op = pp->held_tail;
    struct ofi_dc *dc = dc_get(d, op, pp->seq + 1);
    if (!dc) {
        snprintf(msg, msgcap, "ofi: no delivery-confirm context left");
        return -ENOMEM;
    }
    pp->seq++;
    pp->run = 0;
    pp->run_bytes = 0;
    pp->dc_out++;
    op->parts++;
    struct iovec iov = {.iov_base = (void *)(uintptr_t)op->backend[OB_SRC], .iov_len = 1};
    void *desc = (void *)(uintptr_t)op->backend[OB_DESC];
    int rc = part_submit_ctx(d, pp, op, dc, FI_DELIVERY_COMPLETE, KVN_XPORT_WRITE, &iov, &desc, 1,
                             op->backend[OB_RADDR], 1, op->backend[OB_KEY], msg, msgcap);
    if (rc) {
        op->parts--;
        pp->dc_out--;
        dc_put(d, dc);
    }
    return rc;
}

/*
 * One part the provider returned (in_provider) or that never reached it
 * (a parked part failed).  ctx is the op or, for a delivery-complete part
 * in deferred mode, its struct ofi_dc.
 */
static void part_finish(struct ofi_domain *d, void *ctx, int status, const char *msg,
                        bool in_provider)
{
    struct xport_op *op;
    uint64_t dc_seq = 0;
    bool is_dc = is_dc_ctx(d, ctx);
    if (is_dc) {
        struct ofi_dc *dc = ctx;
        op = dc->op;
        dc_seq = dc->seq;
        dc_put(d, dc);
    } else {
        op = ctx;
    }
    struct ofi_peer *pp = (struct ofi_peer *)op->peer;
    if (in_provider && pp && pp->inflight)
        pp->inflight--;
    if (in_provider && op->kind == KVN_XPORT_SEND)
        d->tx_free[d->n_tx_free++] = (uint32_t)op->backend[OB_SLOT];
    if (!d->defer_dc || !pp) {
        xport_op_done(op, status, msg);
        return;
    }

    /* Deferred mode: any completion of pp (a READ or SEND too) may leave
     * its held writes without a confirm in flight.  Everything that touches
     * pp happens before the xport_op_done calls below (they may free a
     * disconnected peer). */
    bool deferred = (op->backend[OB_FLAGS] & OBF_DEFER) != 0;
    struct xport_op *confirmed = NULL, *failed = NULL;
    int fail_st = status;
    char fmsg[KVN_XPORT_CQE_MSG];
    snprintf(fmsg, sizeof(fmsg), "%s", msg ? msg : "");
    if (is_dc) {
        pp->dc_out--;
        if (status == 0)
            confirmed = held_take(pp, dc_seq);
        else
            failed = held_take(pp, dc_seq); /* not confirmed: fail them too */
    }
    bool hold = deferred && !is_dc && status == 0 && op->status == 0 && op->parts == 1;
    if (hold)
        held_push(pp, op);
    bool peer_gone = !pp->base.connected || pp->base.failed || status == -ECONNRESET ||
                     status == -ENOTCONN || status == -EPIPE || status == -ECONNREFUSED ||
                     status == -ECONNABORTED || status == -EHOSTUNREACH;
    if (!peer_gone && pp->held_head) {
        int rc = maybe_confirm(d, pp, fmsg, sizeof(fmsg));
        if (rc < 0) {
            peer_gone = true;
            fail_st = rc;
        }
    }
    struct xport_op *rest = NULL;
    if (peer_gone && pp->held_head) {
        /* nothing will confirm them (the common layer has reported them,
         * or reports them with fail_st now) */
        rest = held_take(pp, UINT64_MAX);
        if (fail_st == 0) {
            fail_st = -ECONNRESET;
            snprintf(fmsg, sizeof(fmsg), "ofi: peer failed before the write was confirmed");
        }
    }
    held_finish(confirmed, 0, NULL);
    held_finish(failed, status, msg);
    held_finish(rest, fail_st, fmsg);
    if (!hold)
        xport_op_done(op, status, msg);
}

static void handle_error(struct ofi_domain *d)
{
    struct fi_cq_err_entry e;
    memset(&e, 0, sizeof(e));
    if (fi_cq_readerr(d->cq, &e, 0) != 1)
        return;
    char msg[KVN_XPORT_CQE_MSG];
    const char *ptext = fi_cq_strerror(d->cq, e.prov_errno, e.err_data, NULL, 0);
    int st = fi_to_errno(e.err);
    int pe = e.prov_errno < 0 ? -e.prov_errno : e.prov_errno;
    if (st == -ECANCELED && !d->base.in_close &&
        (pe == ENOTCONN || pe == ECONNRESET || pe == EPIPE || pe == ECONNREFUSED ||
         pe == ECONNABORTED || pe == EHOSTUNREACH))
        st = -pe; /* rxm flushes ops of a broken connection as canceled */
    snprintf(msg, sizeof(msg), "ofi: %s (%s)%s", fi_strerror(e.err), ptext ? ptext : "?",
             d->is_shm && (st == -EPERM || st == -EACCES) ? "; shm needs ptrace permission for CMA"
                                                          : "");
    if (!e.op_context)
        return;
    if (is_rx_ctx(d, e.op_context)) {
        if (!d->base.in_close)
            ofi_recv_repost(&d->base, ((struct ofi_rx *)e.op_context)->idx);
        return;
    }
    part_finish(d, e.op_context, st, msg, true);
}

/*
 * shm has no connections: a peer process that dies leaves our commands
 * unanswered forever.  Every 100 ms (checked every 256 progress calls),
 * peers with parts in flight whose process is gone are failed at once
 * instead of waiting for op_timeout_ms.
 */
#define OFI_LIVENESS_NS 100000000ull
static void shm_check_peers(struct ofi_domain *d)
{
    uint64_t now = xport_now_ns();
    if (now < d->live_next_ns)
        return;
    d->live_next_ns = now + OFI_LIVENESS_NS;
    struct xport_link *l;
    for (l = d->base.peers.next; l != &d->base.peers; l = l->next) {
        struct ofi_peer *pp = (struct ofi_peer *)XPORT_CONTAINER(l, struct kvn_xport_peer, link);
        if (pp->pid > 0 && pp->inflight && !pp->base.failed && pp->base.connected &&
            pid_dead(pp->pid)) {
            char msg[KVN_XPORT_CQE_MSG];
            snprintf(msg, sizeof(msg), "ofi shm: peer process %d is gone", pp->pid);
            xport_peer_fail(&pp->base, -ECONNRESET, msg);
        }
    }
}

static int ofi_progress(struct kvn_xport *x)
{
    struct ofi_domain *d = dom(x);
    struct fi_cq_data_entry ent[OFI_CQ_BATCH];
    if (d->n_rx_pending) {
        uint32_t n = d->n_rx_pending;
        d->n_rx_pending = 0;
        for (uint32_t i = 0; i < n; i++)
            ofi_recv_repost(x, d->rx_pending[i]);
    }
    for (int round = 0; round < 16; round++) {
        ssize_t n = fi_cq_read(d->cq, ent, OFI_CQ_BATCH);
        if (n == -FI_EAGAIN)
            break;
        if (n == -FI_EAVAIL) {
            handle_error(d);
            continue;
        }
        if (n < 0)
            return fi_to_errno((int)n);
        for (ssize_t i = 0; i < n; i++) {
            void *ctx = ent[i].op_context;
            if (!ctx)
                continue;
            if (is_rx_ctx(d, ctx)) {
                uint32_t idx = ((struct ofi_rx *)ctx)->idx;
                xport_recv_deliver(x, d->rx_mem + (size_t)idx * d->buf_size, ent[i].len, idx);
            } else {
                part_finish(d, ctx, 0, NULL, true);
            }
        }
        if (n < OFI_CQ_BATCH)
            break;
    }
    if (d->bl_head)
        backlog_retry(d);
    if (d->is_shm && (++d->live_tick & 255) == 0)
        shm_check_peers(d);
    return 0;
}

static int ofi_get_fd(struct kvn_xport *x)
{
    return dom(x)->wait_fd;
}

static int ofi_arm(struct kvn_xport *x)
{
    struct ofi_domain *d = dom(x);
    int rc = 0;
    if (d->wait_fd >= 0) {
        struct fid *f = &d->cq->fid;
        rc = fi_trywait(d->fabric, &f, 1) == FI_SUCCESS ? 0 : -EAGAIN;
    }
    if (rc == 0 && d->bl_head)
        rc = -EINPROGRESS; /* parked parts: retry within a tick */
    return rc;
}

const struct kvn_xport_ops xport_ofi_ops = {
    .family = "ofi",
    .id = KVN_XPORT_BACKEND_OFI,
    .peer_size = sizeof(struct ofi_peer),
    .mr_size = sizeof(struct ofi_mr),
    .rmr_size = sizeof(struct ofi_rmr),
    .open = ofi_open,
    .close = ofi_close,
    .address = ofi_address,
    .connect = ofi_connect,
    .disconnect = ofi_disconnect,
    .peer_free = ofi_peer_free,
    .mr_reg = ofi_mr_reg,
    .mr_dereg = ofi_mr_dereg,
    .mr_pack_key = ofi_mr_pack_key,
    .rmr_unpack_key = ofi_rmr_unpack_key,
    .rmr_free = ofi_rmr_free,
    .post = ofi_post,
    .notify = ofi_notify,
    .recv_repost = ofi_recv_repost,
    .progress = ofi_progress,
    .get_fd = ofi_get_fd,
    .arm = ofi_arm,
};
