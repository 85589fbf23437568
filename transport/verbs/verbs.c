/*
 * verbs.c - the rdma-core backend: RC queue pairs on one device port.
 *
 *   domain (verbs+DEV[:PORT])
 *     ibv_context ─ pd ─ one CQ (+ completion channel: the wait fd)
 *                     └ SRQ with pre-posted receive buffers (notifications)
 *     handshake TCP socket (see verbs.h for why and how)
 *     vb_qp list: one RC QP per connection, with its handshake socket
 *        active  = created by connect(), owned by a kvn_xport_peer
 *        passive = created when a peer connected to us; torn down on EOF
 *
 * Work requests carry the xport_op pointer as wr_id (8-aligned); receive
 * buffers carry (index << 1) | 1.  An op whose SG list exceeds the device's
 * max_sge is split in several signalled WRs (op->parts), each advancing the
 * remote address; the common layer completes the op once.
 *
 * The wait fd is an epoll set over the completion channel, the handshake
 * listener and every connection socket (an EOF there means the peer went
 * away: its QP is moved to ERR, which flushes our outstanding WRs with
 * errors right away instead of after the RC retry timeout).
 */
#include "transport/verbs/verbs.h"
#include "transport/xport_impl.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <infiniband/verbs.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define VB_RECV_BUFS   128u
#define VB_SEND_SLOTS  256u
#define VB_CQ_BATCH    32
#define VB_TAG_LISTEN  1u
#define VB_TAG_CHANNEL 2u
#define VB_HS_WAIT_MS  1000
#define VB_MAX_PASSIVE 1024u /* QPs created for peers that connected to us */
#define VB_PASSIVE_SQ  4u    /* a passive QP never sends */

struct vb_qp {
    struct xport_link link; /* dom->qps */
    struct ibv_qp *qp;
    int fd; /* handshake socket, -1 when closed */
    bool passive;
    bool gone; /* the other side closed its socket: flushes mean ECONNRESET */
    uint32_t sq_used, sq_cap;
};

struct vb_domain {
    struct kvn_xport base; /* first */
    struct ibv_context *ctx;
    struct ibv_pd *pd;
    struct ibv_comp_channel *ch;
    struct ibv_cq *cq;
    struct ibv_srq *srq;
    uint8_t port;
    struct ibv_port_attr pattr;
    uint32_t max_sge, max_sge_rd, sq_depth;
    uint8_t rd_atom_in, rd_atom_out; /* READs in flight as target / initiator */
    struct xport_verbs_addr self;

    unsigned char *rbuf; /* VB_RECV_BUFS x rslot */
    struct ibv_mr *rbuf_mr;
    size_t rslot;
    unsigned char *sbuf; /* VB_SEND_SLOTS x rslot */
    struct ibv_mr *sbuf_mr;
    uint32_t sfree[VB_SEND_SLOTS], n_sfree;

    uint32_t n_passive;
    uint32_t n_progress;
    int lfd;  /* handshake listener */
    int epfd; /* wait fd */
    struct xport_link qps;

    struct ibv_send_wr wrs[KVN_XPORT_MAX_SGE];
    struct ibv_sge sges[KVN_XPORT_MAX_SGE];
};

struct vb_peer {
    struct kvn_xport_peer base; /* first */
    struct vb_qp q;
};

struct vb_mr {
    struct kvn_xport_mr base; /* first */
    struct ibv_mr *ibmr;
};

struct vb_rmr {
    struct kvn_xport_rmr base; /* first */
    uint32_t rkey;
};

static struct vb_domain *dom_of(struct kvn_xport *x)
{
    return (struct vb_domain *)x;
}

static void link_init(struct xport_link *h)
{
    h->prev = h->next = h;
}

static void link_add(struct xport_link *h, struct xport_link *l)
{
    l->next = h;
    l->prev = h->prev;
    h->prev->next = l;
    h->prev = l;
}

static void link_del(struct xport_link *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    link_init(l);
}

static int neg_errno(int e)
{
    return e > 0 ? -e : (e < 0 ? e : -EIO);
}

/* --- QP state machine ------------------------------------------------------- */

static int qp_create(struct vb_domain *d, struct vb_qp *q, uint32_t sq_depth, struct kvn_err *err)
{
    struct ibv_qp_init_attr ia;
    memset(&ia, 0, sizeof(ia));
    ia.send_cq = d->cq;
    ia.recv_cq = d->cq;
    ia.srq = d->srq;
    ia.qp_type = IBV_QPT_RC;
    ia.sq_sig_all = 0;
    ia.cap.max_send_wr = sq_depth;
    ia.cap.max_send_sge = d->max_sge;
    q->qp = ibv_create_qp(d->pd, &ia);
    if (!q->qp)
        return kvn_err_set(err, neg_errno(errno), "verbs: ibv_create_qp: %s", strerror(errno));
    q->sq_cap = ia.cap.max_send_wr;
    q->sq_used = 0;

    struct ibv_qp_attr a;
    memset(&a, 0, sizeof(a));
    a.qp_state = IBV_QPS_INIT;
    a.pkey_index = 0;
    a.port_num = d->port;
    a.qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE;
    int rc = ibv_modify_qp(q->qp, &a,
                           IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
    if (rc) {
        ibv_destroy_qp(q->qp);
        q->qp = NULL;
        return kvn_err_set(err, neg_errno(rc), "verbs: QP RESET->INIT: %s", strerror(rc));
    }
    return 0;
}

/* INIT -> RTR -> RTS against the remote side described by m. */
static int qp_connect(struct vb_domain *d, struct vb_qp *q, uint32_t my_psn,
                      const struct xport_verbs_hs *m, struct kvn_err *err)
{
    struct ibv_qp_attr a;
    memset(&a, 0, sizeof(a));
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = (enum ibv_mtu)xport_verbs_path_mtu(d->self.mtu, m->mtu);
    a.dest_qp_num = m->qpn;
    a.rq_psn = m->psn;
    a.max_dest_rd_atomic = d->rd_atom_in;
    a.min_rnr_timer = 12;
    a.ah_attr.dlid = m->lid;
    a.ah_attr.sl = 0;
    a.ah_attr.src_path_bits = 0;
    a.ah_attr.port_num = d->port;
    static const uint8_t zero_gid[16];
    if (d->self.link_layer == IBV_LINK_LAYER_ETHERNET || memcmp(m->gid, zero_gid, 16)) {
        a.ah_attr.is_global = 1;
        memcpy(a.ah_attr.grh.dgid.raw, m->gid, 16);
        a.ah_attr.grh.sgid_index = d->self.gid_index;
        a.ah_attr.grh.hop_limit = 64;
    }
    int rc = ibv_modify_qp(q->qp, &a,
                           IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                               IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
    if (rc)
        return kvn_err_set(err, neg_errno(rc), "verbs: QP INIT->RTR (mtu %d, qpn %u): %s",
                           (int)a.path_mtu, m->qpn, strerror(rc));
    memset(&a, 0, sizeof(a));
    a.qp_state = IBV_QPS_RTS;
    a.timeout = 14; /* 4.096 us * 2^14 = 67 ms per try */
    a.retry_cnt = 7;
    a.rnr_retry = 7; /* receive buffers are reposted each poll: wait for them */
    a.sq_psn = my_psn;
    a.max_rd_atomic = d->rd_atom_out;
    rc = ibv_modify_qp(q->qp, &a,
                       IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                           IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC);
    if (rc)
        return kvn_err_set(err, neg_errno(rc), "verbs: QP RTR->RTS: %s", strerror(rc));
    return 0;
}

static void qp_to_error(struct vb_qp *q)
{
    struct ibv_qp_attr a;
    memset(&a, 0, sizeof(a));
    a.qp_state = IBV_QPS_ERR;
    if (q->qp)
        ibv_modify_qp(q->qp, &a, IBV_QP_STATE);
}

static void qp_close_fd(struct vb_domain *d, struct vb_qp *q)
{
    if (q->fd >= 0) {
        epoll_ctl(d->epfd, EPOLL_CTL_DEL, q->fd, NULL);
        close(q->fd);
        q->fd = -1;
    }
}

static void qp_destroy(struct vb_domain *d, struct vb_qp *q)
{
    qp_close_fd(d, q);
    if (q->qp)
        ibv_destroy_qp(q->qp);
    q->qp = NULL;
    link_del(&q->link);
}

static void qp_watch(struct vb_domain *d, struct vb_qp *q)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = q};
    epoll_ctl(d->epfd, EPOLL_CTL_ADD, q->fd, &ev);
}

static uint32_t random_psn(void)
{
    return (uint32_t)(xport_now_ns() * 2654435761u) & 0xffffffu;
}

static void hs_fill_self(struct vb_domain *d, struct xport_verbs_hs *m, uint16_t type, uint32_t qpn,
                         uint32_t psn)
{
    memset(m, 0, sizeof(*m));
    m->type = type;
    m->qpn = qpn;
    m->psn = psn;
    m->src_id = d->base.id;
    m->lid = d->self.lid;
    m->mtu = d->self.mtu;
    m->link_layer = d->self.link_layer;
    memcpy(m->gid, d->self.gid, 16);
}

/* Bounded blocking I/O of exactly len bytes on a handshake socket. */
static int hs_io(int fd, void *buf, size_t len, bool out, int timeout_ms)
{
    unsigned char *p = buf;
    uint64_t deadline = xport_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    while (len) {
        struct pollfd pfd = {.fd = fd, .events = out ? POLLOUT : POLLIN};
        uint64_t now = xport_now_ns();
        if (now >= deadline)
            return -ETIMEDOUT;
        int r = poll(&pfd, 1, (int)((deadline - now) / 1000000ull) + 1);
        if (r < 0 && errno != EINTR)
            return -errno;
        if (r <= 0)
            continue;
        ssize_t n = out ? send(fd, p, len, MSG_NOSIGNAL) : recv(fd, p, len, 0);
        if (n == 0)
            return -ECONNRESET;
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void hs_send_nak(struct vb_domain *d, int fd, int code)
{
    struct xport_verbs_hs m;
    unsigned char buf[XPORT_VERBS_HS_LEN];
    size_t len = sizeof(buf);
    hs_fill_self(d, &m, XPORT_VERBS_HS_NAK, 0, 0);
    m.status = code < 0 ? -code : (code ? code : EIO);
    if (xport_verbs_hs_encode(&m, buf, &len, NULL) == 0)
        hs_io(fd, buf, len, true, VB_HS_WAIT_MS);
}

/* Passive side: one connection request on an accepted socket. */
static void hs_serve(struct vb_domain *d, int fd)
{
    unsigned char buf[XPORT_VERBS_HS_LEN];
    struct xport_verbs_hs req, ack;
    size_t len = sizeof(buf);
    int rc = hs_io(fd, buf, sizeof(buf), false, VB_HS_WAIT_MS);
    if (rc == 0)
        rc = xport_verbs_hs_decode(buf, sizeof(buf), &req, NULL);
    if (rc == 0 && req.type != XPORT_VERBS_HS_REQ)
        rc = -EPROTO;
    if (rc == 0 && req.link_layer != d->self.link_layer)
        rc = -EPROTONOSUPPORT;
    if (rc == 0 && d->n_passive >= VB_MAX_PASSIVE)
        rc = -ENOSPC; /* bounded: a stranger cannot make us create QPs forever */
    if (rc < 0) {
        if (rc != -ECONNRESET && rc != -ETIMEDOUT)
            hs_send_nak(d, fd, rc);
        close(fd);
        return;
    }
    struct vb_qp *q = calloc(1, sizeof(*q));
    if (!q) {
        hs_send_nak(d, fd, -ENOMEM);
        close(fd);
        return;
    }
    link_init(&q->link);
    q->fd = -1;
    q->passive = true;
    uint32_t psn = random_psn();
    rc = qp_create(d, q, VB_PASSIVE_SQ, NULL);
    if (rc == 0)
        rc = qp_connect(d, q, psn, &req, NULL);
    if (rc == 0) {
        hs_fill_self(d, &ack, XPORT_VERBS_HS_ACK, q->qp->qp_num, psn);
        rc = xport_verbs_hs_encode(&ack, buf, &len, NULL);
    }
    if (rc == 0)
        rc = hs_io(fd, buf, len, true, VB_HS_WAIT_MS);
    if (rc < 0) {
        hs_send_nak(d, fd, rc);
        close(fd);
        if (q->qp)
            ibv_destroy_qp(q->qp);
        free(q);
        return;
    }
    q->fd = fd;
    d->n_passive++;
    link_add(&d->qps, &q->link);
    qp_watch(d, q);
}

/* Accepts and serves every pending connection request (non-blocking). */
static void hs_accept_all(struct vb_domain *d)
{
    for (;;) {
        int fd = accept4(d->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        hs_serve(d, fd);
    }
}

/* --- completion processing ---------------------------------------------- */

static int wc_status(enum ibv_wc_status s)
{
    switch (s) {
    case IBV_WC_SUCCESS:
        return 0;
    case IBV_WC_WR_FLUSH_ERR:
        return -ECANCELED;
    case IBV_WC_RETRY_EXC_ERR:
    case IBV_WC_RNR_RETRY_EXC_ERR:
        return -ETIMEDOUT;
    case IBV_WC_REM_ACCESS_ERR:
    case IBV_WC_LOC_PROT_ERR:
        return -EACCES;
    case IBV_WC_REM_INV_REQ_ERR:
        return -EINVAL;
    default:
        return -EIO;
    }
}

static void send_slot_put(struct vb_domain *d, uint32_t slot)
{
    if (d->n_sfree < VB_SEND_SLOTS)
        d->sfree[d->n_sfree++] = slot;
}

static void vb_recv_repost(struct kvn_xport *x, uint64_t token);

static int drain_cq(struct vb_domain *d)
{
    struct ibv_wc wc[VB_CQ_BATCH];
    int total = 0;
    for (int round = 0; round < 8; round++) {
        int n = ibv_poll_cq(d->cq, VB_CQ_BATCH, wc);
        if (n < 0)
            return -EIO;
        for (int i = 0; i < n; i++) {
            if (wc[i].wr_id & 1) {
                uint64_t idx = wc[i].wr_id >> 1;
                if (idx >= VB_RECV_BUFS)
                    continue;
                if (wc[i].status == IBV_WC_SUCCESS)
                    xport_recv_deliver(&d->base, d->rbuf + idx * d->rslot, wc[i].byte_len, idx);
                else if (wc[i].status != IBV_WC_WR_FLUSH_ERR)
                    vb_recv_repost(&d->base, idx); /* e.g. an oversized message: keep the
                                                      SRQ full */
                continue;
            }
            struct xport_op *op = (struct xport_op *)(uintptr_t)wc[i].wr_id;
            struct vb_qp *q = (struct vb_qp *)(uintptr_t)op->backend[0];
            uint64_t slot = op->backend[1];
            if (q && q->sq_used)
                q->sq_used--;
            if (slot)
                send_slot_put(d, (uint32_t)(slot - 1));
            int st = wc_status(wc[i].status);
            if (st == -ECANCELED && q && q->gone)
                xport_op_done(op, -ECONNRESET, "verbs: the peer closed its connection");
            else
                xport_op_done(op, st, st ? ibv_wc_status_str(wc[i].status) : NULL);
        }
        total += n;
        if (n < VB_CQ_BATCH)
            break;
    }
    return total;
}

static void drain_channel(struct vb_domain *d)
{
    struct ibv_cq *cq;
    void *ctx;
    while (ibv_get_cq_event(d->ch, &cq, &ctx) == 0)
        ibv_ack_cq_events(cq, 1);
}

static int vb_progress(struct kvn_xport *x)
{
    struct vb_domain *d = dom_of(x);
    /* Sockets (handshakes, peers closing) are looked at once per 32 calls:
     * an epoll_wait per poll would cost a syscall on every CQ check, more
     * than a small RDMA op takes. */
    if ((d->n_progress++ & 31) != 0)
        return drain_cq(d);
    struct epoll_event ev[16];
    int n = epoll_wait(d->epfd, ev, 16, 0);
    for (int i = 0; i < n; i++) {
        if (ev[i].data.u64 == VB_TAG_LISTEN) {
            hs_accept_all(d);
        } else if (ev[i].data.u64 == VB_TAG_CHANNEL) {
            drain_channel(d);
        } else {
            struct vb_qp *q = ev[i].data.ptr;
            char c;
            ssize_t r = recv(q->fd, &c, 1, MSG_DONTWAIT);
            if (r > 0 || (r < 0 && (errno == EAGAIN || errno == EINTR)))
                continue; /* nothing is expected after the handshake; ignore */
            /* The other side closed: flush what is outstanding on this QP. */
            q->gone = true;
            qp_close_fd(d, q);
            qp_to_error(q);
            if (q->passive) {
                qp_destroy(d, q);
                free(q);
                d->n_passive--;
            }
        }
    }
    return drain_cq(d);
}

static int vb_get_fd(struct kvn_xport *x)
{
    return dom_of(x)->epfd;
}

static int vb_arm(struct kvn_xport *x)
{
    struct vb_domain *d = dom_of(x);
    drain_channel(d);
    if (ibv_req_notify_cq(d->cq, 0))
        return -EAGAIN;
    /* A completion that arrived before the request would not raise an event. */
    return drain_cq(d) > 0 ? -EAGAIN : 0;
}

static void vb_recv_repost(struct kvn_xport *x, uint64_t token)
{
    struct vb_domain *d = dom_of(x);
    if (token >= VB_RECV_BUFS)
        return;
    struct ibv_sge sge = {.addr = (uintptr_t)(d->rbuf + token * d->rslot),
                          .length = (uint32_t)d->rslot,
                          .lkey = d->rbuf_mr->lkey};
    struct ibv_recv_wr wr = {.wr_id = (token << 1) | 1, .sg_list = &sge, .num_sge = 1};
    struct ibv_recv_wr *bad;
    ibv_post_srq_recv(d->srq, &wr, &bad);
}

/* --- domain ------------------------------------------------------------------- */

static int pick_gid(struct vb_domain *d, struct kvn_err *err)
{
    union ibv_gid gid;
    int fallback = -1;
    if (d->pattr.link_layer != IBV_LINK_LAYER_ETHERNET) {
        if (ibv_query_gid(d->ctx, d->port, 0, &gid) == 0)
            memcpy(d->self.gid, gid.raw, 16);
        d->self.gid_index = 0;
        return 0;
    }
    for (int i = 0; i < d->pattr.gid_tbl_len && i < 256; i++) {
        struct ibv_gid_entry e;
        if (ibv_query_gid_ex(d->ctx, d->port, (uint32_t)i, &e, 0))
            continue;
        static const uint8_t zero[16];
        if (!memcmp(e.gid.raw, zero, 16))
            continue;
        if (e.gid_type == IBV_GID_TYPE_ROCE_V2) {
            memcpy(d->self.gid, e.gid.raw, 16);
            d->self.gid_index = (uint8_t)i;
            return 0;
        }
        if (fallback < 0) {
            fallback = i;
            memcpy(d->self.gid, e.gid.raw, 16);
        }
    }
    if (fallback < 0)
        return kvn_err_set(err, -ENODEV, "verbs: RoCE port %u has no usable GID", d->port);
    d->self.gid_index = (uint8_t)fallback;
    return 0;
}

/* The IP peers reach our handshake socket at. */
static int pick_hs_ip(struct vb_domain *d, const char *host, struct kvn_err *err)
{
    if (!host)
        host = "127.0.0.1";
    if (!strcmp(host, "any")) {
        struct ifaddrs *ifa = NULL, *i;
        if (getifaddrs(&ifa) == 0) {
            for (i = ifa; i; i = i->ifa_next) {
                if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET ||
                    (i->ifa_flags & IFF_LOOPBACK) || !(i->ifa_flags & IFF_UP))
                    continue;
                d->self.hs_family = 4;
                memcpy(d->self.hs_ip, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, 4);
                break;
            }
            freeifaddrs(ifa);
        }
        if (!d->self.hs_family) {
            d->self.hs_family = 4;
            inet_pton(AF_INET, "127.0.0.1", d->self.hs_ip);
        }
        return 0;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    int rc = getaddrinfo(host, NULL, &hints, &ai);
    if (rc)
        return kvn_err_set(err, -EINVAL, "verbs: bind_host '%s': %s", host, gai_strerror(rc));
    if (ai->ai_family == AF_INET) {
        d->self.hs_family = 4;
        memcpy(d->self.hs_ip, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, 4);
    } else {
        d->self.hs_family = 6;
        memcpy(d->self.hs_ip, &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, 16);
    }
    freeaddrinfo(ai);
    return 0;
}

static int hs_listen(struct vb_domain *d, const char *host, uint16_t port, struct kvn_err *err)
{
    int rc = pick_hs_ip(d, host, err);
    if (rc < 0)
        return rc;
    bool any = host && !strcmp(host, "any");
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof(ss));
    if (d->self.hs_family == 4) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        if (any)
            s4->sin_addr.s_addr = htonl(INADDR_ANY);
        else
            memcpy(&s4->sin_addr, d->self.hs_ip, 4);
        sl = sizeof(*s4);
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        memcpy(&s6->sin6_addr, d->self.hs_ip, 16);
        sl = sizeof(*s6);
    }
    d->lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (d->lfd < 0)
        return kvn_err_set(err, -errno, "verbs: handshake socket: %s", strerror(errno));
    int one = 1;
    setsockopt(d->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(d->lfd, (struct sockaddr *)&ss, sl) || listen(d->lfd, 64))
        return kvn_err_set(err, -errno, "verbs: handshake bind/listen on port %u: %s", port,
                           strerror(errno));
    sl = sizeof(ss);
    getsockname(d->lfd, (struct sockaddr *)&ss, &sl);
    d->self.hs_port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                                    : ((struct sockaddr_in6 *)&ss)->sin6_port);
    return 0;
}

static void vb_free_domain(struct vb_domain *d)
{
    while (d->qps.next != &d->qps) {
        struct vb_qp *q = XPORT_CONTAINER(d->qps.next, struct vb_qp, link);
        bool passive = q->passive;
        qp_destroy(d, q);
        if (passive)
            free(q);
    }
    if (d->epfd >= 0)
        close(d->epfd);
    if (d->lfd >= 0)
        close(d->lfd);
    if (d->srq)
        ibv_destroy_srq(d->srq);
    if (d->cq) {
        drain_channel(d);
        ibv_destroy_cq(d->cq);
    }
    if (d->rbuf_mr)
        ibv_dereg_mr(d->rbuf_mr);
    if (d->sbuf_mr)
        ibv_dereg_mr(d->sbuf_mr);
    free(d->rbuf);
    free(d->sbuf);
    if (d->ch)
        ibv_destroy_comp_channel(d->ch);
    if (d->pd)
        ibv_dealloc_pd(d->pd);
    if (d->ctx)
        ibv_close_device(d->ctx);
    free(d);
}

static int open_device(struct vb_domain *d, const char *name, struct kvn_err *err)
{
    int n = 0;
    errno = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (!list)
        return kvn_err_set(err, -ENODEV,
                           "verbs: no such device '%s' (no RDMA support on "
                           "this host: %s)",
                           name, strerror(errno ? errno : ENOSYS));
    struct ibv_device *dev = NULL;
    for (int i = 0; i < n; i++)
        if (!strcmp(ibv_get_device_name(list[i]), name))
            dev = list[i];
    if (!dev) {
        char names[256] = "";
        size_t off = 0;
        for (int i = 0; i < n && off < sizeof(names) - 1; i++) {
            int w = snprintf(names + off, sizeof(names) - off, "%s%s", i ? ", " : "",
                             ibv_get_device_name(list[i]));
            if (w > 0)
                off += (size_t)w;
        }
        ibv_free_device_list(list);
        return kvn_err_set(err, -ENODEV, "verbs: no such device '%s' (%d device%s%s%s)", name, n,
                           n == 1 ? "" : "s", n ? ": " : "", names);
    }
    d->ctx = ibv_open_device(dev);
    int e = errno;
    ibv_free_device_list(list);
    if (!d->ctx)
        return kvn_err_set(err, neg_errno(e), "verbs: ibv_open_device(%s): %s", name, strerror(e));
    return 0;
}

static int vb_open(const struct xport_uri *uri, const struct kvn_xport_attr *attr,
                   struct kvn_xport **out, struct kvn_err *err)
{
    char name[48]; /* fits "verbs+NAME:PORT" in KVN_XPORT_NAME_MAX */
    uint8_t port;
    int rc = xport_verbs_parse_dev(uri->sub, name, sizeof(name), &port, err);
    if (rc < 0)
        return rc;
    uint32_t max_out =
        attr && attr->max_outstanding ? attr->max_outstanding : KVN_XPORT_DEF_OUTSTANDING;
    uint32_t max_msg = attr && attr->max_msg_size ? attr->max_msg_size : KVN_XPORT_DEF_MSG;

    struct vb_domain *d = calloc(1, sizeof(*d));
    if (!d)
        return kvn_err_set(err, -ENOMEM, "verbs: out of memory");
    d->lfd = d->epfd = -1;
    link_init(&d->qps);
    d->port = port;

    rc = open_device(d, name, err);
    if (rc < 0)
        goto fail;
    struct ibv_device_attr da;
    if ((rc = ibv_query_device(d->ctx, &da))) {
        rc = kvn_err_set(err, neg_errno(rc), "verbs: ibv_query_device: %s", strerror(rc));
        goto fail;
    }
    if (port > da.phys_port_cnt) {
        rc = kvn_err_set(err, -ENODEV, "verbs: %s has %u port(s), not %u", name, da.phys_port_cnt,
                         port);
        goto fail;
    }
    if ((rc = ibv_query_port(d->ctx, port, &d->pattr))) {
        rc = kvn_err_set(err, neg_errno(rc), "verbs: ibv_query_port: %s", strerror(rc));
        goto fail;
    }
    if (d->pattr.state != IBV_PORT_ACTIVE) {
        rc = kvn_err_set(err, -ENODEV, "verbs: port %u of %s is not ACTIVE", port, name);
        goto fail;
    }
    if (da.max_srq == 0) {
        rc = kvn_err_set(err, -ENOTSUP, "verbs: %s has no shared receive queues", name);
        goto fail;
    }
    d->self.port_num = port;
    d->self.link_layer = d->pattr.link_layer == IBV_LINK_LAYER_ETHERNET ? 2 : 1;
    d->self.mtu = (uint8_t)d->pattr.active_mtu;
    d->self.lid = d->pattr.lid;
    if ((rc = pick_gid(d, err)) < 0)
        goto fail;
    d->max_sge = da.max_sge < 30 ? (uint32_t)da.max_sge : 30;
    d->max_sge_rd = da.max_sge_rd > 0 && (uint32_t)da.max_sge_rd < d->max_sge
                        ? (uint32_t)da.max_sge_rd
                        : d->max_sge;
    d->rd_atom_in =
        (uint8_t)(da.max_qp_rd_atom > 0 && da.max_qp_rd_atom < 16 ? da.max_qp_rd_atom : 16);
    d->rd_atom_out =
        (uint8_t)(da.max_qp_init_rd_atom > 0 && da.max_qp_init_rd_atom < 16 ? da.max_qp_init_rd_atom
                                                                            : 16);
    d->sq_depth = max_out + 16 < (uint32_t)da.max_qp_wr ? max_out + 16 : (uint32_t)da.max_qp_wr;

    d->pd = ibv_alloc_pd(d->ctx);
    d->ch = d->pd ? ibv_create_comp_channel(d->ctx) : NULL;
    if (!d->pd || !d->ch) {
        rc =
            kvn_err_set(err, neg_errno(errno), "verbs: pd/completion channel: %s", strerror(errno));
        goto fail;
    }
    fcntl(d->ch->fd, F_SETFL, fcntl(d->ch->fd, F_GETFL) | O_NONBLOCK);
    int cqe = (int)(max_out * 2 + VB_RECV_BUFS);
    if (cqe > da.max_cqe)
        cqe = da.max_cqe;
    d->cq = ibv_create_cq(d->ctx, cqe, NULL, d->ch, 0);
    if (!d->cq) {
        rc = kvn_err_set(err, neg_errno(errno), "verbs: ibv_create_cq(%d): %s", cqe,
                         strerror(errno));
        goto fail;
    }
    ibv_req_notify_cq(d->cq, 0);

    struct ibv_srq_init_attr sa;
    memset(&sa, 0, sizeof(sa));
    sa.attr.max_wr = VB_RECV_BUFS;
    sa.attr.max_sge = 1;
    d->srq = ibv_create_srq(d->pd, &sa);
    d->rslot = sizeof(struct xport_notify_hdr) + max_msg;
    d->rbuf = calloc(VB_RECV_BUFS, d->rslot);
    d->sbuf = calloc(VB_SEND_SLOTS, d->rslot);
    if (!d->srq || !d->rbuf || !d->sbuf) {
        rc = kvn_err_set(err, d->srq ? -ENOMEM : neg_errno(errno),
                         "verbs: receive queue/buffers: %s", strerror(d->srq ? ENOMEM : errno));
        goto fail;
    }
    d->rbuf_mr = ibv_reg_mr(d->pd, d->rbuf, VB_RECV_BUFS * d->rslot, IBV_ACCESS_LOCAL_WRITE);
    d->sbuf_mr = ibv_reg_mr(d->pd, d->sbuf, VB_SEND_SLOTS * d->rslot, IBV_ACCESS_LOCAL_WRITE);
    if (!d->rbuf_mr || !d->sbuf_mr) {
        rc = kvn_err_set(err, neg_errno(errno), "verbs: registering message buffers: %s%s",
                         strerror(errno), errno == ENOMEM ? " (check ulimit -l)" : "");
        goto fail;
    }
    for (uint32_t i = 0; i < VB_SEND_SLOTS; i++)
        d->sfree[d->n_sfree++] = VB_SEND_SLOTS - 1 - i;
    for (uint64_t i = 0; i < VB_RECV_BUFS; i++)
        vb_recv_repost(&d->base, i);

    rc = hs_listen(d, attr ? attr->bind_host : NULL, attr ? attr->port : 0, err);
    if (rc < 0)
        goto fail;
    d->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (d->epfd < 0) {
        rc = kvn_err_set(err, -errno, "verbs: epoll_create1: %s", strerror(errno));
        goto fail;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = VB_TAG_LISTEN};
    epoll_ctl(d->epfd, EPOLL_CTL_ADD, d->lfd, &ev);
    ev.data.u64 = VB_TAG_CHANNEL;
    epoll_ctl(d->epfd, EPOLL_CTL_ADD, d->ch->fd, &ev);

    if (port == 1)
        snprintf(d->base.name, sizeof(d->base.name), "verbs+%s", name);
    else
        snprintf(d->base.name, sizeof(d->base.name), "verbs+%s:%u", name, port);
    d->base.max_op_bytes = d->pattr.max_msg_sz;
    d->base.remote_virt_addr = true;
    *out = &d->base;
    return 0;
fail:
    vb_free_domain(d);
    return rc;
}

static void vb_close(struct kvn_xport *x)
{
    vb_free_domain(dom_of(x));
}

static int vb_address(struct kvn_xport *x, void *buf, size_t *len, struct kvn_err *err)
{
    return xport_verbs_addr_encode(&dom_of(x)->self, buf, len, err);
}

/* --- peers ------------------------------------------------------------------ */

static int hs_dial(struct vb_domain *d, const struct xport_verbs_addr *a, int timeout_ms, int *out,
                   struct kvn_err *err)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof(ss));
    if (a->hs_family == 4) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(a->hs_port);
        memcpy(&s4->sin_addr, a->hs_ip, 4);
        sl = sizeof(*s4);
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(a->hs_port);
        memcpy(&s6->sin6_addr, a->hs_ip, 16);
        sl = sizeof(*s6);
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return kvn_err_set(err, -errno, "verbs: socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&ss, sl) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        return kvn_err_set(err, -e, "verbs: handshake connect: %s", strerror(e));
    }
    /* Wait for the connect while serving our own listener (loopback and
     * crossing connects need it). */
    uint64_t deadline = xport_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        if (poll(&pfd, 1, 1) > 0)
            break;
        hs_accept_all(d);
        if (xport_now_ns() > deadline) {
            close(fd);
            return kvn_err_set(err, -ETIMEDOUT, "verbs: handshake connect timed out");
        }
    }
    int e = 0;
    socklen_t el = sizeof(e);
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el);
    if (e) {
        close(fd);
        return kvn_err_set(err, -e, "verbs: handshake connect: %s", strerror(e));
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    *out = fd;
    return 0;
}

static int vb_connect(struct kvn_xport *x, struct kvn_xport_peer *p, const void *raw, size_t len,
                      struct kvn_err *err)
{
    struct vb_domain *d = dom_of(x);
    struct vb_peer *vp = (struct vb_peer *)p;
    struct xport_verbs_addr a;
    int rc = xport_verbs_addr_decode(raw, len, &a, err);
    if (rc < 0)
        return rc;
    if (a.link_layer != d->self.link_layer)
        return kvn_err_set(err, -EINVAL, "verbs: peer link layer %s, ours %s",
                           a.link_layer == 1 ? "InfiniBand" : "Ethernet",
                           d->self.link_layer == 1 ? "InfiniBand" : "Ethernet");
    link_init(&vp->q.link);
    vp->q.fd = -1;
    rc = qp_create(d, &vp->q, d->sq_depth, err);
    if (rc < 0)
        return rc;
    int timeout = (int)(x->attr.op_timeout_ms ? x->attr.op_timeout_ms : KVN_XPORT_DEF_TIMEOUT_MS);
    int fd = -1;
    uint32_t psn = random_psn();
    unsigned char buf[XPORT_VERBS_HS_LEN];
    size_t blen = sizeof(buf);
    struct xport_verbs_hs m;
    rc = hs_dial(d, &a, timeout, &fd, err);
    if (rc < 0)
        goto fail;
    hs_fill_self(d, &m, XPORT_VERBS_HS_REQ, vp->q.qp->qp_num, psn);
    xport_verbs_hs_encode(&m, buf, &blen, NULL);
    rc = hs_io(fd, buf, blen, true, timeout);
    if (rc < 0) {
        rc = kvn_err_set(err, rc, "verbs: sending the QP handshake: %s", strerror(-rc));
        goto fail;
    }
    /* The reply comes once the peer progresses; serve our listener meanwhile. */
    uint64_t deadline = xport_now_ns() + (uint64_t)timeout * 1000000ull;
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 1) > 0)
            break;
        hs_accept_all(d);
        if (xport_now_ns() > deadline) {
            rc = kvn_err_set(err, -ETIMEDOUT,
                             "verbs: no handshake reply within %d ms (is "
                             "the peer polling?)",
                             timeout);
            goto fail;
        }
    }
    rc = hs_io(fd, buf, sizeof(buf), false, timeout);
    if (rc == 0)
        rc = xport_verbs_hs_decode(buf, sizeof(buf), &m, err);
    else
        rc = kvn_err_set(err, rc, "verbs: reading the handshake reply: %s", strerror(-rc));
    if (rc < 0)
        goto fail;
    if (m.type == XPORT_VERBS_HS_NAK) {
        rc = kvn_err_set(err, -m.status, "verbs: peer refused the connection: %s",
                         strerror(m.status));
        goto fail;
    }
    if (m.type != XPORT_VERBS_HS_ACK) {
        rc = kvn_err_set(err, -EPROTO, "verbs: handshake reply of type %u", m.type);
        goto fail;
    }
    rc = qp_connect(d, &vp->q, psn, &m, err);
    if (rc < 0)
        goto fail;
    vp->q.fd = fd;
    link_add(&d->qps, &vp->q.link);
    qp_watch(d, &vp->q);
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    ibv_destroy_qp(vp->q.qp);
    vp->q.qp = NULL;
    return rc;
}

static void vb_disconnect(struct kvn_xport_peer *p)
{
    struct vb_peer *vp = (struct vb_peer *)p;
    struct vb_domain *d = dom_of(p->x);
    qp_to_error(&vp->q); /* flushes outstanding WRs: they come back as errors */
    qp_close_fd(d, &vp->q);
}

static void vb_peer_free(struct kvn_xport_peer *p)
{
    struct vb_peer *vp = (struct vb_peer *)p;
    if (vp->q.qp || vp->q.fd >= 0)
        qp_destroy(dom_of(p->x), &vp->q);
}

/* --- memory ------------------------------------------------------------------ */

static int vb_mr_reg(struct kvn_xport *x, struct kvn_xport_mr *mr, struct kvn_err *err)
{
    struct vb_mr *vm = (struct vb_mr *)mr;
    int flags = IBV_ACCESS_LOCAL_WRITE;
    if (mr->access & KVN_XPORT_ACCESS_REMOTE_READ)
        flags |= IBV_ACCESS_REMOTE_READ;
    if (mr->access & KVN_XPORT_ACCESS_REMOTE_WRITE)
        flags |= IBV_ACCESS_REMOTE_WRITE;
    vm->ibmr = ibv_reg_mr(dom_of(x)->pd, mr->addr, mr->len, flags);
    if (!vm->ibmr)
        return kvn_err_set(err, neg_errno(errno), "verbs: ibv_reg_mr(%zu bytes): %s%s", mr->len,
                           strerror(errno),
                           errno == ENOMEM || errno == EPERM ? " (check ulimit -l)" : "");
    return 0;
}

static void vb_mr_dereg(struct kvn_xport_mr *mr)
{
    struct vb_mr *vm = (struct vb_mr *)mr;
    if (vm->ibmr)
        ibv_dereg_mr(vm->ibmr);
    vm->ibmr = NULL;
}

static int vb_mr_pack_key(const struct kvn_xport_mr *mr, void *key, size_t *len,
                          struct kvn_err *err)
{
    const struct vb_mr *vm = (const struct vb_mr *)mr;
    if (*len < 4) {
        *len = 4;
        return kvn_err_set(err, -ENOSPC, "verbs key needs 4 bytes");
    }
    uint32_t k = vm->ibmr->rkey;
    unsigned char *p = key;
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(k >> (8 * i));
    *len = 4;
    return 0;
}

static int vb_rmr_unpack_key(struct kvn_xport_peer *p, struct kvn_xport_rmr *r, const void *key,
                             size_t len, struct kvn_err *err)
{
    if (len != 4)
        return kvn_err_set(err, -EINVAL, "verbs key of %zu bytes, expected 4 (an rkey)", len);
    const unsigned char *k = key;
    ((struct vb_rmr *)r)->rkey =
        (uint32_t)k[0] | ((uint32_t)k[1] << 8) | ((uint32_t)k[2] << 16) | ((uint32_t)k[3] << 24);
    return 0;
}

static void vb_rmr_free(struct kvn_xport_rmr *r)
{
    (void)r;
}

/* --- operations ---------------------------------------------------------------- */

static int vb_post(struct kvn_xport_peer *p, struct xport_op *op, const struct xport_post_req *req,
                   struct kvn_err *err)
{
    struct vb_domain *d = dom_of(p->x);
    struct vb_peer *vp = (struct vb_peer *)p;
    struct vb_qp *q = &vp->q;
    const struct vb_rmr *rr = (const struct vb_rmr *)req->remote;
    uint32_t per_wr = req->kind == KVN_XPORT_READ ? d->max_sge_rd : d->max_sge;
    uint32_t nwr = (req->n_local + per_wr - 1) / per_wr;

    if (!q->qp || q->fd < 0)
        return kvn_err_set(err, -ENOTCONN, "verbs: connection is closed");
    if (q->sq_used + nwr > q->sq_cap)
        return kvn_err_set(err, -EAGAIN, "verbs: send queue full (%u of %u WRs)", q->sq_used,
                           q->sq_cap);
    uint64_t raddr = req->remote_addr;
    for (uint32_t w = 0, s = 0; w < nwr; w++) {
        struct ibv_send_wr *wr = &d->wrs[w];
        uint32_t first = s, bytes = 0;
        for (; s < req->n_local && s - first < per_wr; s++) {
            const struct kvn_xport_sge *ls = &req->local[s];
            const struct vb_mr *vm = (const struct vb_mr *)ls->mr;
            d->sges[s].addr = (uintptr_t)ls->mr->addr + ls->offset;
            d->sges[s].length = (uint32_t)ls->len;
            d->sges[s].lkey = vm->ibmr->lkey;
            bytes += (uint32_t)ls->len;
        }
        memset(wr, 0, sizeof(*wr));
        wr->wr_id = (uintptr_t)op;
        wr->sg_list = &d->sges[first];
        wr->num_sge = (int)(s - first);
        wr->opcode = req->kind == KVN_XPORT_READ ? IBV_WR_RDMA_READ : IBV_WR_RDMA_WRITE;
        wr->send_flags = IBV_SEND_SIGNALED;
        wr->wr.rdma.remote_addr = raddr;
        wr->wr.rdma.rkey = rr->rkey;
        wr->next = w + 1 < nwr ? &d->wrs[w + 1] : NULL;
        raddr += bytes;
    }
    op->parts = nwr;
    op->backend[0] = (uintptr_t)q;
    op->backend[1] = 0;
    struct ibv_send_wr *bad = NULL;
    int rc = ibv_post_send(q->qp, &d->wrs[0], &bad);
    if (rc && bad == &d->wrs[0])
        return kvn_err_set(err, neg_errno(rc), "verbs: ibv_post_send: %s", strerror(rc));
    uint32_t posted = rc ? (uint32_t)(bad - d->wrs) : nwr;
    q->sq_used += posted;
    for (uint32_t w = posted; w < nwr; w++)
        xport_op_done(op, neg_errno(rc), "verbs: ibv_post_send refused part of the op");
    return 0;
}

static int vb_notify(struct kvn_xport_peer *p, struct xport_op *op,
                     const struct xport_notify_hdr *hdr, const void *buf, size_t len,
                     struct kvn_err *err)
{
    struct vb_domain *d = dom_of(p->x);
    struct vb_qp *q = &((struct vb_peer *)p)->q;
    if (!q->qp || q->fd < 0)
        return kvn_err_set(err, -ENOTCONN, "verbs: connection is closed");
    if (sizeof(*hdr) + len > d->rslot)
        return kvn_err_set(err, -EMSGSIZE, "verbs: notification of %zu bytes too large", len);
    if (!d->n_sfree || q->sq_used + 1 > q->sq_cap)
        return kvn_err_set(err, -EAGAIN, "verbs: no free send slot");
    uint32_t slot = d->sfree[--d->n_sfree];
    unsigned char *sb = d->sbuf + (size_t)slot * d->rslot;
    memcpy(sb, hdr, sizeof(*hdr));
    memcpy(sb + sizeof(*hdr), buf, len);
    struct ibv_sge sge = {
        .addr = (uintptr_t)sb, .length = (uint32_t)(sizeof(*hdr) + len), .lkey = d->sbuf_mr->lkey};
    struct ibv_send_wr wr, *bad;
    memset(&wr, 0, sizeof(wr));
    wr.wr_id = (uintptr_t)op;
    wr.sg_list = &sge;
    wr.num_sge = 1;
    wr.opcode = IBV_WR_SEND;
    wr.send_flags = IBV_SEND_SIGNALED;
    op->parts = 1;
    op->backend[0] = (uintptr_t)q;
    op->backend[1] = (uint64_t)slot + 1;
    int rc = ibv_post_send(q->qp, &wr, &bad);
    if (rc) {
        send_slot_put(d, slot);
        return kvn_err_set(err, neg_errno(rc), "verbs: ibv_post_send(SEND): %s", strerror(rc));
    }
    q->sq_used++;
    return 0;
}

const struct kvn_xport_ops xport_verbs_ops = {
    .family = "verbs",
    .id = KVN_XPORT_BACKEND_VERBS,
    .peer_size = sizeof(struct vb_peer),
    .mr_size = sizeof(struct vb_mr),
    .rmr_size = sizeof(struct vb_rmr),
    .open = vb_open,
    .close = vb_close,
    .address = vb_address,
    .connect = vb_connect,
    .disconnect = vb_disconnect,
    .peer_free = vb_peer_free,
    .mr_reg = vb_mr_reg,
    .mr_dereg = vb_mr_dereg,
    .mr_pack_key = vb_mr_pack_key,
    .rmr_unpack_key = vb_rmr_unpack_key,
    .rmr_free = vb_rmr_free,
    .post = vb_post,
    .notify = vb_notify,
    .recv_repost = vb_recv_repost,
    .progress = vb_progress,
    .get_fd = vb_get_fd,
    .arm = vb_arm,
};
