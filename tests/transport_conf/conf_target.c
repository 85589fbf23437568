/* conf_target.c - the target child of the conformance suite (see conf_target.h). */
#include "conf_target.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "conf_harness.h"

#define TGT_SETUP_MS  30000 /* waiting for the parent's address */
#define TGT_NOTIFY_MS 30000

struct target {
    int chan;
    const struct conf_target_cfg *cfg;
    struct kvn_xport *x;
    struct kvn_xport_mr *mr;
    struct kvn_xport_peer *parent;
    unsigned char *region;
    int paused;
    uint64_t send_done_cookie; /* last SEND completion seen */
    int send_done_status;
    int send_done;
    char send_msg[KVN_XPORT_CQE_MSG];
};

static int reply_status(int chan, uint32_t type, int status, const char *msg)
{
    struct conf_status s;
    memset(&s, 0, sizeof(s));
    s.status = status;
    snprintf(s.msg, sizeof(s.msg), "%s", msg ? msg : "");
    return conf_chan_send(chan, type, &s, sizeof(s));
}

static int range_ok(const struct target *t, const struct conf_range *r)
{
    return r->off <= t->cfg->region_len && r->len <= t->cfg->region_len - r->off;
}

/* Handles one completion: a RECV is answered with the region checksum now. */
static void target_on_cqe(struct target *t, const struct kvn_xport_cqe *c)
{
    if (c->kind == KVN_XPORT_SEND) {
        t->send_done = 1;
        t->send_done_cookie = c->cookie;
        t->send_done_status = c->status;
        memcpy(t->send_msg, c->msg, sizeof(t->send_msg));
        return;
    }
    if (c->kind != KVN_XPORT_RECV)
        return;
    struct conf_recv_r r;
    memset(&r, 0, sizeof(r));
    r.status = c->status;
    r.len = c->len;
    r.seq = ~0ULL;
    r.peer_id = c->peer_id;
    r.peer_known = c->peer != NULL;
    r.payload_hash = conf_hash64(c->data, c->status == 0 ? c->len : 0);
    struct conf_note n;
    if (c->status == 0 && c->data && c->len == sizeof(n)) {
        memcpy(&n, c->data, sizeof(n));
        struct conf_range rg = {n.off, n.len, 0};
        if (n.magic == CONF_NOTE_MAGIC && range_ok(t, &rg)) {
            r.seq = n.seq;
            r.region_hash = conf_hash64(t->region + n.off, n.len);
        }
    }
    conf_chan_send(t->chan, TGT_RECV, &r, sizeof(r));
}

static int target_progress(struct target *t)
{
    struct kvn_xport_cqe cqe[16];
    int total = 0;
    for (;;) {
        int n = kvn_xport_poll(t->x, cqe, 16);
        if (n < 0)
            return n;
        for (int i = 0; i < n; i++)
            target_on_cqe(t, &cqe[i]);
        total += n;
        if (n < 16)
            return total;
    }
}

/* Sleeps until the channel or the domain has something (bounded by a short
 * timeout: UCX over TCP needs its worker progressed regularly). */
static int target_wait(struct target *t, int timeout_ms)
{
    struct pollfd pfd[2] = {{.fd = t->chan, .events = POLLIN}, {.fd = -1}};
    int n = 1;
    if (!t->paused && t->x) {
        int wfd = kvn_xport_wait_fd(t->x);
        if (wfd >= 0) {
            pfd[1].fd = wfd;
            pfd[1].events = POLLIN;
            n = 2;
        }
    }
    int r = poll(pfd, (nfds_t)n, timeout_ms);
    if (r < 0)
        return errno == EINTR ? 0 : -errno;
    return (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) ? 1 : 0;
}

static int target_notify(struct target *t, const unsigned char *buf, size_t len)
{
    struct conf_notify_req q;
    struct kvn_err err;
    kvn_err_clear(&err);
    if (len < sizeof(q))
        return reply_status(t->chan, TGT_NOTIFY_R, -EINVAL, "short TGT_NOTIFY");
    memcpy(&q, buf, sizeof(q));
    t->send_done = 0;
    int rc = kvn_xport_notify(t->parent, buf + sizeof(q), len - sizeof(q), q.cookie, &err);
    if (rc < 0)
        return reply_status(t->chan, TGT_NOTIFY_R, rc, err.msg);
    int64_t deadline = conf_now_ms() + TGT_NOTIFY_MS;
    while (!(t->send_done && t->send_done_cookie == q.cookie)) {
        if (conf_now_ms() > deadline)
            return reply_status(t->chan, TGT_NOTIFY_R, -ETIMEDOUT, "no SEND completion");
        rc = target_progress(t);
        if (rc < 0)
            return reply_status(t->chan, TGT_NOTIFY_R, rc, "kvn_xport_poll failed");
        if (rc == 0)
            kvn_xport_wait(t->x, 5, NULL);
    }
    return reply_status(t->chan, TGT_NOTIFY_R, t->send_done_status, t->send_msg);
}

/* Answers one command; returns 1 to exit, 0 to go on, < 0 on a broken channel. */
static int target_command(struct target *t)
{
    unsigned char buf[CONF_CHAN_MAX];
    uint32_t type;
    size_t len;
    int rc = conf_chan_recv(t->chan, 0, &type, buf, sizeof(buf), &len);
    if (rc == -ETIMEDOUT)
        return 0;
    if (rc < 0)
        return rc;
    struct conf_range r;
    switch (type) {
    case TGT_FILL:
    case TGT_HASH:
    case TGT_CHECK:
        if (len != sizeof(r))
            return reply_status(t->chan, TGT_ERR, -EINVAL, "bad range message");
        memcpy(&r, buf, sizeof(r));
        if (!range_ok(t, &r))
            return reply_status(t->chan, TGT_ERR, -ERANGE, "range outside the region");
        if (type == TGT_FILL) {
            conf_pattern_fill(t->region + r.off, r.len, r.seed, r.off);
            return reply_status(t->chan, TGT_OK, 0, "");
        } else {
            struct conf_range_r a = {0, -1};
            if (type == TGT_HASH)
                a.hash = conf_hash64(t->region + r.off, r.len);
            else
                a.mismatch = conf_pattern_check(t->region + r.off, r.len, r.seed, r.off);
            return conf_chan_send(t->chan, type == TGT_HASH ? TGT_HASH_R : TGT_CHECK_R, &a,
                                  sizeof(a));
        }
    case TGT_NOTIFY:
        return target_notify(t, buf, len);
    case TGT_PAUSE:
        t->paused = 1;
        return reply_status(t->chan, TGT_OK, 0, "");
    case TGT_RESUME:
        t->paused = 0;
        return reply_status(t->chan, TGT_OK, 0, "");
    case TGT_EXIT:
        return 1;
    default:
        return reply_status(t->chan, TGT_ERR, -EPROTO, "unknown command");
    }
}

static int target_setup(struct target *t)
{
    struct conf_hello *h;
    unsigned char msg[sizeof(*h) + KVN_XPORT_ADDR_MAX + KVN_XPORT_DESC_MAX];
    struct kvn_err err;
    struct kvn_xport_attr attr;
    size_t alen = KVN_XPORT_ADDR_MAX, dlen = KVN_XPORT_DESC_MAX;
    int rc;

    memset(msg, 0, sizeof(msg));
    h = (struct conf_hello *)(void *)msg;
    kvn_err_clear(&err);
    kvn_xport_attr_init(&attr);
    if (t->cfg->op_timeout_ms)
        attr.op_timeout_ms = t->cfg->op_timeout_ms;

    void *m =
        mmap(NULL, t->cfg->region_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        rc = kvn_err_set(&err, -ENOMEM, "target: mmap %zu bytes failed", t->cfg->region_len);
        goto fail;
    }
    t->region = m;
    rc = kvn_xport_open(t->cfg->uri, &attr, &t->x, &err);
    if (rc < 0)
        goto fail;
    rc = kvn_xport_mr_reg(t->x, t->region, t->cfg->region_len, KVN_XPORT_ACCESS_ALL, &t->mr, &err);
    if (rc < 0)
        goto fail;
    rc = kvn_xport_address(t->x, msg + sizeof(*h), &alen, &err);
    if (rc < 0)
        goto fail;
    rc = kvn_xport_mr_pack(t->mr, msg + sizeof(*h) + alen, &dlen, &err);
    if (rc < 0)
        goto fail;
    h->addr_len = (uint32_t)alen;
    h->desc_len = (uint32_t)dlen;
    rc = conf_chan_send(t->chan, TGT_HELLO, msg, sizeof(*h) + alen + dlen);
    if (rc < 0)
        return rc;

    /* The parent's address; progress meanwhile (the parent may already be
     * connecting to us). */
    int64_t deadline = conf_now_ms() + TGT_SETUP_MS;
    for (;;) {
        uint32_t type;
        size_t len;
        rc = conf_chan_recv(t->chan, 2, &type, msg, sizeof(msg), &len);
        if (rc == 0 && type == TGT_PEER_ADDR) {
            rc = kvn_xport_connect(t->x, msg, len, &t->parent, &err);
            reply_status(t->chan, rc < 0 ? TGT_ERR : TGT_OK, rc, err.msg);
            return rc;
        }
        if (rc == 0 && type == TGT_EXIT)
            return -ECANCELED;
        if (rc < 0 && rc != -ETIMEDOUT)
            return rc;
        if (conf_now_ms() > deadline)
            return -ETIMEDOUT;
        target_progress(t);
    }

fail:
    h->status = rc;
    snprintf(h->msg, sizeof(h->msg), "%s", err.msg);
    conf_chan_send(t->chan, TGT_HELLO, msg, sizeof(*h));
    return rc;
}

int conf_target_main(int chan, void *arg)
{
    struct target t;
    memset(&t, 0, sizeof(t));
    t.chan = chan;
    t.cfg = arg;
    if (!t.cfg || !t.cfg->uri || t.cfg->region_len == 0)
        return 2;

    int rc = target_setup(&t);
    int code = rc < 0 ? 3 : 0;
    while (rc >= 0) {
        if (!t.paused && target_progress(&t) < 0) {
            code = 4;
            break;
        }
        int ready = target_wait(&t, t.paused ? 100 : 2);
        if (ready < 0) {
            code = 5;
            break;
        }
        if (ready) {
            rc = target_command(&t);
            if (rc == 1)
                break;
            if (rc < 0)
                code = 6; /* the parent is gone: just leave */
        }
    }
    kvn_xport_close(t.x);
    if (t.region)
        munmap(t.region, t.cfg->region_len);
    return code;
}
