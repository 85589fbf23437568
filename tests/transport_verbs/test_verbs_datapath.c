/*
 * test_verbs_datapath.c - the verbs backend's data path without a device.
 *
 * No RDMA device exists on the CI machines, but the verbs fast path
 * (ibv_post_send, ibv_poll_cq, ibv_post_srq_recv, ibv_req_notify_cq) goes
 * through the provider's ops table in struct ibv_context: this test fills
 * that table with a recording fake device and runs the REAL backend code
 * (verbs.c is included, so its static functions are reachable) against it:
 *
 *   - an SG list longer than max_sge is split into several chained,
 *     signalled WRs whose remote addresses advance by the bytes before them;
 *     READs use max_sge_rd; op->parts says how many completions to expect;
 *   - a full send queue or a closed connection refuses the op, posting
 *     nothing; a provider refusing part of a chain fails the unposted parts;
 *   - completions map to xport_op_done() with the right status (RETRY_EXC ->
 *     -ETIMEDOUT, flush -> -ECANCELED or -ECONNRESET once the peer's socket
 *     closed) and give send-queue credit back;
 *   - receive completions reach xport_recv_deliver(), receive errors repost
 *     the buffer, notifications are copied into registered send slots which
 *     completions return;
 *   - the remote key packs and unpacks; the CQ arm protocol.
 *
 * The common layer's two services the backend calls (xport_op_done,
 * xport_recv_deliver) are recorded here instead of linking transport/xport.c;
 * the QP state machine and the TCP handshake need a real device (and are
 * covered by test_verbs_dev where one exists).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "transport/verbs/verbs.c"

#include <time.h>

/* --- the common layer's services, recorded ---------------------------------- */

#define MAX_REC 64

static struct {
    struct xport_op *op[MAX_REC];
    int status[MAX_REC];
    char msg[MAX_REC][96];
    int n;
} done_rec;

static struct {
    const void *data[MAX_REC];
    size_t len[MAX_REC];
    uint64_t token[MAX_REC];
    int n;
} recv_rec;

void xport_op_done(struct xport_op *op, int status, const char *msg)
{
    int i = done_rec.n++;
    assert_true(i < MAX_REC);
    done_rec.op[i] = op;
    done_rec.status[i] = status;
    snprintf(done_rec.msg[i], sizeof(done_rec.msg[i]), "%s", msg ? msg : "");
}

void xport_recv_deliver(struct kvn_xport *x, const void *data, size_t len, uint64_t token)
{
    (void)x;
    int i = recv_rec.n++;
    assert_true(i < MAX_REC);
    recv_rec.data[i] = data;
    recv_rec.len[i] = len;
    recv_rec.token[i] = token;
}

uint64_t xport_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* --- the fake device: its ops table records what the backend asks ----------- */

struct posted_wr {
    uint64_t wr_id;
    int opcode, num_sge;
    unsigned flags;
    uint64_t raddr;
    uint32_t rkey;
    struct ibv_sge sge[32];
    unsigned char payload[256]; /* SEND: the bytes of its (single) sge */
};

static struct {
    struct posted_wr wr[MAX_REC];
    int n_wr, post_calls;
    int fail_at; /* refuse the chain from this WR on (-1: accept all) */
    struct ibv_wc wc[MAX_REC];
    int n_wc, wc_head;
    uint64_t srq_ids[MAX_REC];
    struct ibv_sge srq_sge[MAX_REC];
    int n_srq;
    int notify_calls;
} dev;

static int fake_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad)
{
    (void)qp;
    dev.post_calls++;
    for (int i = 0; wr; wr = wr->next, i++) {
        if (dev.fail_at >= 0 && i >= dev.fail_at) {
            *bad = wr;
            return ENOMEM;
        }
        struct posted_wr *p = &dev.wr[dev.n_wr++];
        assert_true(dev.n_wr <= MAX_REC);
        assert_true(wr->num_sge <= 32);
        p->wr_id = wr->wr_id;
        p->opcode = wr->opcode;
        p->num_sge = wr->num_sge;
        p->flags = wr->send_flags;
        p->raddr = wr->wr.rdma.remote_addr;
        p->rkey = wr->wr.rdma.rkey;
        memcpy(p->sge, wr->sg_list, sizeof(struct ibv_sge) * (size_t)wr->num_sge);
        if (wr->opcode == IBV_WR_SEND && wr->sg_list[0].length <= sizeof(p->payload))
            memcpy(p->payload, (void *)(uintptr_t)wr->sg_list[0].addr, wr->sg_list[0].length);
    }
    return 0;
}

static int fake_poll_cq(struct ibv_cq *cq, int n, struct ibv_wc *wc)
{
    (void)cq;
    int k = 0;
    while (k < n && dev.wc_head < dev.n_wc)
        wc[k++] = dev.wc[dev.wc_head++];
    return k;
}

static int fake_post_srq_recv(struct ibv_srq *srq, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad)
{
    (void)srq;
    (void)bad;
    for (; wr; wr = wr->next) {
        dev.srq_ids[dev.n_srq] = wr->wr_id;
        dev.srq_sge[dev.n_srq] = wr->sg_list[0];
        dev.n_srq++;
    }
    return 0;
}

static int fake_req_notify_cq(struct ibv_cq *cq, int solicited)
{
    (void)cq;
    (void)solicited;
    dev.notify_calls++;
    return 0;
}

static void push_wc(uint64_t wr_id, enum ibv_wc_status st, uint32_t byte_len)
{
    struct ibv_wc *w = &dev.wc[dev.n_wc++];
    memset(w, 0, sizeof(*w));
    w->wr_id = wr_id;
    w->status = st;
    w->byte_len = byte_len;
}

/* --- a domain, a peer and memory wired to the fake device -------------------- */

struct rig {
    struct ibv_context ctx;
    struct ibv_qp qp;
    struct ibv_cq cq;
    struct ibv_srq srq;
    struct ibv_comp_channel ch;
    struct ibv_mr lmr, rbuf_mr, sbuf_mr;
    int chpipe[2];
    struct vb_domain *d;
    struct vb_peer *vp;
    struct vb_mr m;
    struct vb_rmr rr;
    unsigned char buf[1 << 16];
};

static int rig_setup(void **state)
{
    struct rig *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    memset(&dev, 0, sizeof(dev));
    dev.fail_at = -1;
    memset(&done_rec, 0, sizeof(done_rec));
    memset(&recv_rec, 0, sizeof(recv_rec));

    r->ctx.ops.post_send = fake_post_send;
    r->ctx.ops.poll_cq = fake_poll_cq;
    r->ctx.ops.post_srq_recv = fake_post_srq_recv;
    r->ctx.ops.req_notify_cq = fake_req_notify_cq;
    r->qp.context = &r->ctx;
    r->qp.qp_num = 0x11;
    r->cq.context = &r->ctx;
    r->srq.context = &r->ctx;
    assert_int_equal(pipe2(r->chpipe, O_NONBLOCK | O_CLOEXEC), 0);
    r->ch.context = &r->ctx;
    r->ch.fd = r->chpipe[0]; /* empty: ibv_get_cq_event finds no event */
    r->lmr.lkey = 0x77;
    r->rbuf_mr.lkey = 0x55;
    r->sbuf_mr.lkey = 0x66;

    struct vb_domain *d = calloc(1, sizeof(*d));
    assert_non_null(d);
    d->ctx = &r->ctx;
    d->cq = &r->cq;
    d->srq = &r->srq;
    d->ch = &r->ch;
    d->max_sge = 4;
    d->max_sge_rd = 2;
    d->rslot = sizeof(struct xport_notify_hdr) + 64;
    d->rbuf = calloc(VB_RECV_BUFS, d->rslot);
    d->sbuf = calloc(VB_SEND_SLOTS, d->rslot);
    assert_non_null(d->rbuf);
    assert_non_null(d->sbuf);
    d->rbuf_mr = &r->rbuf_mr;
    d->sbuf_mr = &r->sbuf_mr;
    for (uint32_t i = 0; i < VB_SEND_SLOTS; i++)
        d->sfree[d->n_sfree++] = VB_SEND_SLOTS - 1 - i;
    d->lfd = d->epfd = -1;
    link_init(&d->qps);
    r->d = d;

    struct vb_peer *vp = calloc(1, sizeof(*vp));
    assert_non_null(vp);
    vp->base.x = &d->base;
    vp->q.qp = &r->qp;
    vp->q.fd = r->chpipe[1]; /* any open fd: "connected" */
    vp->q.sq_cap = 64;
    link_init(&vp->q.link);
    r->vp = vp;

    r->m.base.x = &d->base;
    r->m.base.addr = r->buf;
    r->m.base.len = sizeof(r->buf);
    r->m.ibmr = &r->lmr;
    r->rr.rkey = 0xabcdef;
    *state = r;
    return 0;
}

static int rig_teardown(void **state)
{
    struct rig *r = *state;
    close(r->chpipe[0]);
    close(r->chpipe[1]);
    free(r->d->rbuf);
    free(r->d->sbuf);
    free(r->d);
    free(r->vp);
    free(r);
    return 0;
}

/* n SG entries of lengths 100, 200, ... at offsets 0, 1000, 2000, ... */
static uint64_t make_sges(struct rig *r, struct kvn_xport_sge *s, uint32_t n)
{
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        s[i].mr = &r->m.base;
        s[i].offset = (uint64_t)i * 1000;
        s[i].len = 100 * (i + 1);
        total += s[i].len;
    }
    return total;
}

static int do_post(struct rig *r, enum kvn_xport_op_kind kind, struct kvn_xport_sge *s, uint32_t n,
                   struct xport_op *op, struct kvn_err *err)
{
    struct xport_post_req req = {.kind = kind,
                                 .local = s,
                                 .n_local = n,
                                 .remote = &r->rr.base,
                                 .remote_addr = 0x100000,
                                 .len = 0};
    for (uint32_t i = 0; i < n; i++)
        req.len += s[i].len;
    return vb_post(&r->vp->base, op, &req, err);
}

static void test_write_split_by_max_sge(void **state)
{
    struct rig *r = *state;
    struct kvn_xport_sge s[10];
    struct xport_op op;
    struct kvn_err err;
    memset(&op, 0, sizeof(op));
    make_sges(r, s, 10);
    assert_int_equal(do_post(r, KVN_XPORT_WRITE, s, 10, &op, &err), 0);
    assert_int_equal(dev.post_calls, 1); /* one chain */
    assert_int_equal(dev.n_wr, 3);       /* 4 + 4 + 2 */
    assert_int_equal(op.parts, 3);
    assert_int_equal(r->vp->q.sq_used, 3);
    assert_true(op.backend[0] == (uintptr_t)&r->vp->q);
    int expect_sges[3] = {4, 4, 2};
    uint64_t raddr = 0x100000;
    uint32_t k = 0;
    for (int w = 0; w < 3; w++) {
        struct posted_wr *p = &dev.wr[w];
        assert_int_equal(p->opcode, IBV_WR_RDMA_WRITE);
        assert_int_equal(p->num_sge, expect_sges[w]);
        assert_true(p->flags & IBV_SEND_SIGNALED);
        assert_true(p->wr_id == (uintptr_t)&op);
        assert_int_equal(p->rkey, 0xabcdef);
        assert_true(p->raddr == raddr);
        for (int j = 0; j < p->num_sge; j++, k++) {
            assert_true(p->sge[j].addr == (uintptr_t)r->buf + s[k].offset);
            assert_int_equal(p->sge[j].length, s[k].len);
            assert_int_equal(p->sge[j].lkey, 0x77);
            raddr += s[k].len;
        }
    }
    assert_int_equal(k, 10);

    /* Three completions: three parts done, credit back. */
    for (int w = 0; w < 3; w++)
        push_wc((uintptr_t)&op, IBV_WC_SUCCESS, 0);
    assert_int_equal(drain_cq(r->d), 3);
    assert_int_equal(done_rec.n, 3);
    for (int i = 0; i < 3; i++) {
        assert_ptr_equal(done_rec.op[i], &op);
        assert_int_equal(done_rec.status[i], 0);
    }
    assert_int_equal(r->vp->q.sq_used, 0);
}

static void test_read_split_by_max_sge_rd(void **state)
{
    struct rig *r = *state;
    struct kvn_xport_sge s[5];
    struct xport_op op;
    memset(&op, 0, sizeof(op));
    make_sges(r, s, 5);
    assert_int_equal(do_post(r, KVN_XPORT_READ, s, 5, &op, NULL), 0);
    assert_int_equal(dev.n_wr, 3); /* 2 + 2 + 1 */
    assert_int_equal(op.parts, 3);
    assert_int_equal(dev.wr[0].opcode, IBV_WR_RDMA_READ);
    assert_int_equal(dev.wr[2].num_sge, 1);
    assert_true(dev.wr[1].raddr == 0x100000 + 100 + 200);
    assert_true(dev.wr[2].raddr == 0x100000 + 100 + 200 + 300 + 400);
}

static void test_refusals_post_nothing(void **state)
{
    struct rig *r = *state;
    struct kvn_xport_sge s[10];
    struct xport_op op;
    struct kvn_err err;
    memset(&op, 0, sizeof(op));
    make_sges(r, s, 10);

    r->vp->q.sq_used = r->vp->q.sq_cap - 2; /* 3 WRs do not fit */
    assert_int_equal(do_post(r, KVN_XPORT_WRITE, s, 10, &op, &err), -EAGAIN);
    assert_non_null(strstr(err.msg, "send queue full"));
    assert_int_equal(dev.post_calls, 0);
    assert_int_equal(r->vp->q.sq_used, r->vp->q.sq_cap - 2);
    r->vp->q.sq_used = 0;

    int fd = r->vp->q.fd;
    r->vp->q.fd = -1; /* the peer's socket closed */
    assert_int_equal(do_post(r, KVN_XPORT_WRITE, s, 1, &op, &err), -ENOTCONN);
    assert_int_equal(vb_notify(&r->vp->base, &op, &(struct xport_notify_hdr){0}, "x", 1, &err),
                     -ENOTCONN);
    assert_int_equal(dev.post_calls, 0);
    r->vp->q.fd = fd;

    dev.fail_at = 0; /* the provider refuses the first WR: nothing posted */
    assert_int_equal(do_post(r, KVN_XPORT_WRITE, s, 10, &op, &err), -ENOMEM);
    assert_int_equal(r->vp->q.sq_used, 0);
    assert_int_equal(done_rec.n, 0);
}

static void test_partial_chain_fails_the_rest(void **state)
{
    struct rig *r = *state;
    struct kvn_xport_sge s[10];
    struct xport_op op;
    memset(&op, 0, sizeof(op));
    make_sges(r, s, 10);
    dev.fail_at = 1; /* first WR accepted, the two others refused */
    assert_int_equal(do_post(r, KVN_XPORT_WRITE, s, 10, &op, NULL), 0);
    assert_int_equal(op.parts, 3);
    assert_int_equal(dev.n_wr, 1);
    assert_int_equal(r->vp->q.sq_used, 1);
    assert_int_equal(done_rec.n, 2); /* the unposted parts, failed now */
    assert_int_equal(done_rec.status[0], -ENOMEM);
    assert_int_equal(done_rec.status[1], -ENOMEM);
    push_wc((uintptr_t)&op, IBV_WC_SUCCESS, 0); /* the posted one completes later */
    assert_int_equal(drain_cq(r->d), 1);
    assert_int_equal(done_rec.n, 3);
    assert_int_equal(r->vp->q.sq_used, 0);
}

static void test_completion_status_mapping(void **state)
{
    struct rig *r = *state;
    struct kvn_xport_sge s[1];
    struct xport_op a, b, c;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    memset(&c, 0, sizeof(c));
    make_sges(r, s, 1);
    assert_int_equal(do_post(r, KVN_XPORT_WRITE, s, 1, &a, NULL), 0);
    assert_int_equal(do_post(r, KVN_XPORT_WRITE, s, 1, &b, NULL), 0);
    assert_int_equal(do_post(r, KVN_XPORT_WRITE, s, 1, &c, NULL), 0);
    push_wc((uintptr_t)&a, IBV_WC_RETRY_EXC_ERR, 0);
    push_wc((uintptr_t)&b, IBV_WC_WR_FLUSH_ERR, 0);
    assert_int_equal(drain_cq(r->d), 2);
    assert_int_equal(done_rec.status[0], -ETIMEDOUT);
    assert_true(strlen(done_rec.msg[0]) > 0); /* ibv_wc_status_str text */
    assert_int_equal(done_rec.status[1], -ECANCELED);
    r->vp->q.gone = true; /* the peer's socket closed: a flush means it is gone */
    push_wc((uintptr_t)&c, IBV_WC_WR_FLUSH_ERR, 0);
    assert_int_equal(drain_cq(r->d), 1);
    assert_int_equal(done_rec.status[2], -ECONNRESET);
    assert_non_null(strstr(done_rec.msg[2], "closed"));
    assert_int_equal(r->vp->q.sq_used, 0);
}

static void test_receive_completions(void **state)
{
    struct rig *r = *state;
    struct vb_domain *d = r->d;
    push_wc((5u << 1) | 1, IBV_WC_SUCCESS, 20);
    push_wc((6u << 1) | 1, IBV_WC_LOC_LEN_ERR, 0); /* oversized: buffer goes back */
    push_wc((7u << 1) | 1, IBV_WC_WR_FLUSH_ERR, 0);
    push_wc(((uint64_t)VB_RECV_BUFS << 1) | 1, IBV_WC_SUCCESS, 8); /* not ours: ignored */
    assert_int_equal(drain_cq(d), 4);
    assert_int_equal(recv_rec.n, 1);
    assert_ptr_equal(recv_rec.data[0], d->rbuf + 5 * d->rslot);
    assert_int_equal(recv_rec.len[0], 20);
    assert_int_equal(recv_rec.token[0], 5);
    assert_int_equal(dev.n_srq, 1);
    assert_true(dev.srq_ids[0] == ((6u << 1) | 1));
    assert_true(dev.srq_sge[0].addr == (uintptr_t)(d->rbuf + 6 * d->rslot));
    assert_int_equal(dev.srq_sge[0].length, d->rslot);
    assert_int_equal(dev.srq_sge[0].lkey, 0x55);
    assert_int_equal(done_rec.n, 0);

    vb_recv_repost(&d->base, 9); /* the common layer gives a buffer back */
    assert_int_equal(dev.n_srq, 2);
    assert_true(dev.srq_ids[1] == ((9u << 1) | 1));
    vb_recv_repost(&d->base, VB_RECV_BUFS); /* out of range: ignored */
    assert_int_equal(dev.n_srq, 2);
}

static void test_notify_uses_send_slots(void **state)
{
    struct rig *r = *state;
    struct vb_domain *d = r->d;
    struct xport_notify_hdr hdr = {.magic = XPORT_NOTIFY_MAGIC, .len = 5, .src = 42};
    struct xport_op op;
    struct kvn_err err;
    memset(&op, 0, sizeof(op));
    uint32_t free_before = d->n_sfree;
    assert_int_equal(vb_notify(&r->vp->base, &op, &hdr, "hello", 5, &err), 0);
    assert_int_equal(op.parts, 1);
    assert_int_equal(d->n_sfree, free_before - 1);
    assert_true(op.backend[1] != 0);
    struct posted_wr *p = &dev.wr[0];
    assert_int_equal(p->opcode, IBV_WR_SEND);
    assert_int_equal(p->num_sge, 1);
    assert_int_equal(p->sge[0].lkey, 0x66);
    assert_int_equal(p->sge[0].length, sizeof(hdr) + 5);
    assert_true(p->sge[0].addr == (uintptr_t)(d->sbuf + (op.backend[1] - 1) * d->rslot));
    assert_memory_equal(p->payload, &hdr, sizeof(hdr));
    assert_memory_equal(p->payload + sizeof(hdr), "hello", 5);
    assert_int_equal(r->vp->q.sq_used, 1);

    push_wc((uintptr_t)&op, IBV_WC_SUCCESS, 0);
    assert_int_equal(drain_cq(d), 1);
    assert_int_equal(d->n_sfree, free_before); /* slot returned */
    assert_int_equal(done_rec.status[0], 0);

    unsigned char big[128];
    memset(big, 1, sizeof(big));
    assert_int_equal(vb_notify(&r->vp->base, &op, &hdr, big, sizeof(big), &err), -EMSGSIZE);
    uint32_t saved = d->n_sfree;
    d->n_sfree = 0;
    assert_int_equal(vb_notify(&r->vp->base, &op, &hdr, "x", 1, &err), -EAGAIN);
    d->n_sfree = saved;
    dev.fail_at = 0;
    assert_int_equal(vb_notify(&r->vp->base, &op, &hdr, "x", 1, &err), -ENOMEM);
    assert_int_equal(d->n_sfree, saved); /* refused: the slot went back */
    assert_int_equal(dev.post_calls, 2);
}

static void test_keys(void **state)
{
    struct rig *r = *state;
    unsigned char key[8];
    size_t len = 2;
    struct kvn_err err;
    r->lmr.rkey = 0x12345678;
    assert_int_equal(vb_mr_pack_key(&r->m.base, key, &len, &err), -ENOSPC);
    assert_int_equal(len, 4);
    len = sizeof(key);
    assert_int_equal(vb_mr_pack_key(&r->m.base, key, &len, &err), 0);
    assert_int_equal(len, 4);
    struct vb_rmr rr;
    memset(&rr, 0, sizeof(rr));
    assert_int_equal(vb_rmr_unpack_key(&r->vp->base, &rr.base, key, 4, &err), 0);
    assert_int_equal(rr.rkey, 0x12345678);
    assert_int_equal(vb_rmr_unpack_key(&r->vp->base, &rr.base, key, 3, &err), -EINVAL);
    assert_int_equal(vb_rmr_unpack_key(&r->vp->base, &rr.base, key, 5, &err), -EINVAL);
    assert_int_equal(rr.rkey, 0x12345678);
}

static void test_arm(void **state)
{
    struct rig *r = *state;
    struct xport_op op;
    memset(&op, 0, sizeof(op));
    assert_int_equal(vb_arm(&r->d->base), 0); /* empty CQ: safe to sleep */
    assert_int_equal(dev.notify_calls, 1);
    push_wc((uintptr_t)&op, IBV_WC_SUCCESS, 0); /* arrived before the request */
    r->vp->q.sq_used = 1;
    op.backend[0] = (uintptr_t)&r->vp->q;
    assert_int_equal(vb_arm(&r->d->base), -EAGAIN);
    assert_int_equal(done_rec.n, 1); /* and it was not lost */
    assert_int_equal(vb_get_fd(&r->d->base), r->d->epfd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_write_split_by_max_sge, rig_setup, rig_teardown),
        cmocka_unit_test_setup_teardown(test_read_split_by_max_sge_rd, rig_setup, rig_teardown),
        cmocka_unit_test_setup_teardown(test_refusals_post_nothing, rig_setup, rig_teardown),
        cmocka_unit_test_setup_teardown(test_partial_chain_fails_the_rest, rig_setup, rig_teardown),
        cmocka_unit_test_setup_teardown(test_completion_status_mapping, rig_setup, rig_teardown),
        cmocka_unit_test_setup_teardown(test_receive_completions, rig_setup, rig_teardown),
        cmocka_unit_test_setup_teardown(test_notify_uses_send_slots, rig_setup, rig_teardown),
        cmocka_unit_test_setup_teardown(test_keys, rig_setup, rig_teardown),
        cmocka_unit_test_setup_teardown(test_arm, rig_setup, rig_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
