/*
 * xfer.c - the copy engine (see xfer.h).
 *
 *   copy() ──► job slab + run ring ──► post queue (FIFO) ──► kvn_xport_post
 *                                                               │ cookies
 *   done() ◄── held ring (FIFO, due times) ◄── job finished ◄── CQ
 *
 * Runs (l1 slot, l2 page, count) are only needed until their job is posted
 * and jobs are posted in FIFO order, so they live in one ring. Delays are
 * constant, so held jobs come due in FIFO order too: two rings, no heap.
 */
#include "node/xfer.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "transport/kvn_xport.h"
#include "util/kvn_mem.h"

#define RUN_RING      (1u << 19)
#define POST_BATCH    128u
#define MAX_RUN_BYTES (4ull << 20)

struct run {
    uint32_t slot, page, count;
};

struct job {
    uint64_t ack_id;
    uint64_t bytes;
    uint64_t due;
    uint32_t gen;
    uint32_t n_runs;
    uint32_t runs_left; /* not yet posted (in the ring) */
    uint32_t inflight;  /* posted, not completed */
    uint32_t next_free;
    enum kvn_xfer_dir dir;
    bool used, failed, queued;
};

struct ring32 {
    uint32_t *v;
    uint32_t cap, head, len;
};

struct kvn_xfer {
    struct kvn_xport *x;
    struct kvn_host_pool *pool;
    struct kvn_xport_mr *pool_mr;
    struct kvn_xport_peer *self;
    /* the attached L1 */
    struct kvn_xport_peer *l1_peer; /* self or an engine's peer */
    struct kvn_xport_rmr *l1_rmr;
    uint32_t l1_slots;
    /* the stand-in, when --l1 */
    uint8_t *standin;
    size_t standin_map;
    uint32_t standin_slots;
    bool unarmed; /* progress polled without re-arming the wait fd since */
    struct kvn_xport_mr *standin_mr;

    uint32_t delay_ms;
    struct job *jobs;
    uint32_t max_jobs, free_head, n_active;
    struct run *runs;
    uint32_t run_head, run_len; /* ring of RUN_RING */
    struct ring32 postq, held;
    struct kvn_xport_op ops[POST_BATCH];
    struct kvn_xport_sge sges[POST_BATCH];
    struct kvn_xport_cqe cqes[64];
    struct kvn_xfer_stats st;
};

static int ring_init(struct ring32 *r, uint32_t cap)
{
    r->v = calloc(cap, sizeof(uint32_t));
    r->cap = cap;
    r->head = r->len = 0;
    return r->v ? 0 : -ENOMEM;
}

static void ring_push(struct ring32 *r, uint32_t v)
{
    r->v[(r->head + r->len) % r->cap] = v;
    r->len++;
}

static uint32_t ring_front(const struct ring32 *r)
{
    return r->v[r->head];
}

static void ring_pop(struct ring32 *r)
{
    r->head = (r->head + 1) % r->cap;
    r->len--;
}

void kvn_xfer_destroy(struct kvn_xfer *x)
{
    if (!x)
        return;
    if (x->x) {
        /* release in dependency order (rmr -> peer -> mr) rather than leaving it all to
         * close: some backends (UCX) must destroy rkeys before their endpoints */
        if (x->l1_rmr)
            kvn_xport_rmr_free(x->l1_rmr);
        if (x->l1_peer && x->l1_peer != x->self)
            kvn_xport_disconnect(x->l1_peer);
        if (x->self)
            kvn_xport_disconnect(x->self);
        if (x->standin_mr)
            kvn_xport_mr_dereg(x->standin_mr, NULL);
        if (x->pool_mr)
            kvn_xport_mr_dereg(x->pool_mr, NULL);
    }
    kvn_xport_close(x->x);
    if (x->standin)
        munmap(x->standin, x->standin_map);
    free(x->jobs);
    free(x->runs);
    free(x->postq.v);
    free(x->held.v);
    free(x);
}

int kvn_xfer_create(const struct kvn_xfer_cfg *cfg, struct kvn_xfer **out, struct kvn_err *err)
{
    if (!cfg || !out || !cfg->uri || !cfg->pool)
        return kvn_err_set(err, -EINVAL, "cfg, cfg->uri, cfg->pool and out must not be NULL");
    struct kvn_xfer *x = calloc(1, sizeof(*x));
    if (!x)
        return kvn_err_set(err, -ENOMEM, "no memory for the copy engine");
    x->pool = cfg->pool;
    x->delay_ms = cfg->delay_ms;
    x->max_jobs = cfg->max_jobs ? cfg->max_jobs : 4096;
    x->jobs = calloc(x->max_jobs, sizeof(struct job));
    x->runs = calloc(RUN_RING, sizeof(struct run));
    if (!x->jobs || !x->runs || ring_init(&x->postq, x->max_jobs) < 0 ||
        ring_init(&x->held, x->max_jobs) < 0) {
        kvn_xfer_destroy(x);
        return kvn_err_set(err, -ENOMEM, "no memory for %u jobs", x->max_jobs);
    }
    for (uint32_t i = 0; i < x->max_jobs; i++)
        x->jobs[i].next_free = i + 1;
    x->free_head = 0;

    struct kvn_xport_attr attr;
    kvn_xport_attr_init(&attr);
    attr.max_outstanding = cfg->max_outstanding ? cfg->max_outstanding : 1024;
    if (cfg->op_timeout_ms)
        attr.op_timeout_ms = cfg->op_timeout_ms;
    struct kvn_err e;
    int rc = kvn_xport_open(cfg->uri, &attr, &x->x, &e);
    if (rc < 0) {
        kvn_xfer_destroy(x);
        return kvn_err_set(err, rc, "transport %s: %s", cfg->uri, e.msg);
    }
    rc = kvn_xport_mr_reg(x->x, x->pool->base, (size_t)kvn_host_pool_bytes(x->pool),
                          KVN_XPORT_ACCESS_ALL, &x->pool_mr, &e);
    if (rc < 0) {
        kvn_xfer_destroy(x);
        return kvn_err_set(err, rc, "registering the host pool: %s", e.msg);
    }
    uint8_t blob[KVN_XPORT_ADDR_MAX];
    size_t blen = sizeof(blob);
    if ((rc = kvn_xport_address(x->x, blob, &blen, &e)) < 0 ||
        (rc = kvn_xport_connect(x->x, blob, blen, &x->self, &e)) < 0) {
        kvn_xfer_destroy(x);
        return kvn_err_set(err, rc, "loopback connection: %s", e.msg);
    }
    *out = x;
    return 0;
}

const char *kvn_xfer_transport(const struct kvn_xfer *x)
{
    return x ? kvn_xport_name(x->x) : "";
}

int kvn_xfer_address(struct kvn_xfer *x, void *buf, size_t *len, struct kvn_err *err)
{
    if (!x)
        return kvn_err_set(err, -EINVAL, "xfer is NULL");
    return kvn_xport_address(x->x, buf, len, err);
}

uint32_t kvn_xfer_l1_slots(const struct kvn_xfer *x)
{
    return x ? x->l1_slots : 0;
}

void *kvn_xfer_l1_standin_slot(struct kvn_xfer *x, uint32_t slot)
{
    if (!x || !x->standin || slot >= x->standin_slots)
        return NULL;
    return x->standin + (uint64_t)slot * x->pool->page_bytes;
}

/* Drops the attached L1 (not the stand-in memory). Only when idle. */
static void l1_detach(struct kvn_xfer *x)
{
    if (x->l1_rmr)
        kvn_xport_rmr_free(x->l1_rmr);
    if (x->l1_peer && x->l1_peer != x->self)
        kvn_xport_disconnect(x->l1_peer);
    x->l1_rmr = NULL;
    x->l1_peer = NULL;
    x->l1_slots = 0;
}

int kvn_xfer_l1_standin(struct kvn_xfer *x, uint64_t bytes, struct kvn_err *err)
{
    if (!x)
        return kvn_err_set(err, -EINVAL, "xfer is NULL");
    uint64_t pb = x->pool->page_bytes;
    if (bytes < pb || bytes / pb > UINT32_MAX)
        return kvn_err_set(err, -EINVAL,
                           "L1 stand-in of %" PRIu64 " bytes: want 1..2^32 pages of %" PRIu64,
                           bytes, pb);
    if (x->n_active)
        return kvn_err_set(err, -EBUSY, "%u copy jobs in flight", x->n_active);
    if (x->standin)
        return kvn_err_set(err, -EBUSY, "the L1 stand-in exists already");
    uint32_t slots = (uint32_t)(bytes / pb);
    /* like an engine's L1 and the host pool: huge pages when the kernel gives them */
    struct kvn_mem km;
    int rc = kvn_mem_map((size_t)(slots * pb), true, &km, err);
    if (rc < 0)
        return rc;
    kvn_mem_populate(&km);
    void *m = km.base;
    size_t map = km.map_len;
    struct kvn_xport_mr *mr;
    struct kvn_xport_rmr *rmr;
    uint8_t desc[KVN_XPORT_DESC_MAX];
    size_t dlen = sizeof(desc);
    struct kvn_err e;
    rc = kvn_xport_mr_reg(x->x, m, map, KVN_XPORT_ACCESS_ALL, &mr, &e);
    if (rc < 0) {
        munmap(m, map);
        return kvn_err_set(err, rc, "registering the L1 stand-in: %s", e.msg);
    }
    if ((rc = kvn_xport_mr_pack(mr, desc, &dlen, &e)) < 0 ||
        (rc = kvn_xport_rmr_unpack(x->self, desc, dlen, &rmr, &e)) < 0) {
        kvn_xport_mr_dereg(mr, NULL);
        munmap(m, map);
        return kvn_err_set(err, rc, "L1 stand-in descriptor: %s", e.msg);
    }
    l1_detach(x);
    x->standin = m;
    x->standin_map = map;
    x->standin_slots = slots;
    x->standin_mr = mr;
    x->l1_peer = x->self;
    x->l1_rmr = rmr;
    x->l1_slots = slots;
    return 0;
}

int kvn_xfer_l1_attach(struct kvn_xfer *x, const void *desc, size_t desc_len, const void *addr,
                       size_t addr_len, uint64_t page_bytes, uint64_t n_slots, struct kvn_err *err)
{
    if (!x || !desc || !addr || !desc_len || !addr_len)
        return kvn_err_set(err, -EINVAL, "desc and addr must be non-empty");
    if (page_bytes != x->pool->page_bytes)
        return kvn_err_set(err, -EINVAL, "L1 page_bytes %" PRIu64 " != node page_bytes %" PRIu64,
                           page_bytes, x->pool->page_bytes);
    if (n_slots == 0 || n_slots > UINT32_MAX)
        return kvn_err_set(err, -EINVAL, "n_slots %" PRIu64 ": want 1..2^32-1", n_slots);
    if (x->n_active)
        return kvn_err_set(err, -EBUSY, "%u copy jobs in flight", x->n_active);
    struct kvn_xport_peer *p;
    struct kvn_xport_rmr *rmr;
    struct kvn_err e;
    int rc = kvn_xport_connect(x->x, addr, addr_len, &p, &e);
    if (rc < 0)
        return kvn_err_set(err, rc, "connecting to the engine: %s", e.msg);
    rc = kvn_xport_rmr_unpack(p, desc, desc_len, &rmr, &e);
    if (rc < 0) {
        kvn_xport_disconnect(p);
        return kvn_err_set(err, rc, "the L1 descriptor: %s", e.msg);
    }
    size_t rlen = kvn_xport_rmr_len(rmr);
    if (rlen / page_bytes < n_slots) {
        kvn_xport_rmr_free(rmr);
        kvn_xport_disconnect(p);
        return kvn_err_set(err, -EINVAL,
                           "L1 region of %zu bytes holds fewer than %" PRIu64 " slots", rlen,
                           n_slots);
    }
    l1_detach(x);
    x->l1_peer = p;
    x->l1_rmr = rmr;
    x->l1_slots = (uint32_t)n_slots;
    return 0;
}

int kvn_xfer_copy(struct kvn_xfer *x, enum kvn_xfer_dir dir, uint64_t ack_id,
                  const uint32_t *l1_slots, const uint32_t *l2_pages, uint32_t n,
                  struct kvn_err *err)
{
    if (!x || !l1_slots || !l2_pages || n == 0)
        return kvn_err_set(err, -EINVAL, "empty copy job");
    if (dir != KVN_XFER_TO_L1 && dir != KVN_XFER_TO_L2)
        return kvn_err_set(err, -EINVAL, "bad direction %d", (int)dir);
    if (!x->l1_rmr)
        return kvn_err_set(err, -ENOTCONN, "no L1 registered (register_l1 or --l1)");
    uint32_t per_run = (uint32_t)(MAX_RUN_BYTES / x->pool->page_bytes);
    if (per_run == 0)
        per_run = 1;
    uint32_t n_runs = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (l1_slots[i] >= x->l1_slots)
            return kvn_err_set(err, -EINVAL, "L1 slot %u out of range (%u slots)", l1_slots[i],
                               x->l1_slots);
        if (l2_pages[i] >= x->pool->n_pages)
            return kvn_err_set(err, -EINVAL, "L2 page %u out of range (%u pages)", l2_pages[i],
                               x->pool->n_pages);
    }
    /* count runs first so that nothing changes on -EAGAIN */
    for (uint32_t i = 0, len = 0; i < n; i++) {
        bool cont = i > 0 && len < per_run && l1_slots[i] == l1_slots[i - 1] + 1 &&
                    l2_pages[i] == l2_pages[i - 1] + 1;
        if (cont) {
            len++;
        } else {
            n_runs++;
            len = 1;
        }
    }
    if (x->free_head >= x->max_jobs)
        return kvn_err_set(err, -EAGAIN, "%u copy jobs in flight (max)", x->max_jobs);
    if (RUN_RING - x->run_len < n_runs)
        return kvn_err_set(err, -EAGAIN, "run ring full (%u runs queued)", x->run_len);
    uint32_t j = x->free_head;
    struct job *jb = &x->jobs[j];
    x->free_head = jb->next_free;
    uint32_t gen = jb->gen + 1;
    memset(jb, 0, sizeof(*jb));
    jb->gen = gen;
    jb->used = true;
    jb->queued = true;
    jb->ack_id = ack_id;
    jb->dir = dir;
    jb->n_runs = jb->runs_left = n_runs;
    jb->bytes = (uint64_t)n * x->pool->page_bytes;
    struct run *r = NULL;
    for (uint32_t i = 0; i < n; i++) {
        bool cont = r && r->count < per_run && l1_slots[i] == r->slot + r->count &&
                    l2_pages[i] == r->page + r->count;
        if (cont) {
            r->count++;
        } else {
            r = &x->runs[(x->run_head + x->run_len) % RUN_RING];
            x->run_len++;
            r->slot = l1_slots[i];
            r->page = l2_pages[i];
            r->count = 1;
        }
    }
    ring_push(&x->postq, j);
    x->n_active++;
    x->st.jobs_posted++;
    return 0;
}

static void finish_job(struct kvn_xfer *x, uint32_t j, uint64_t now_ms)
{
    struct job *jb = &x->jobs[j];
    jb->due = now_ms + x->delay_ms;
    ring_push(&x->held, j);
    x->st.jobs_held++;
}

/* Consumes the not-yet-posted runs of the front job (after a post error). */
static void drop_runs(struct kvn_xfer *x, struct job *jb)
{
    x->run_head = (x->run_head + jb->runs_left) % RUN_RING;
    x->run_len -= jb->runs_left;
    jb->runs_left = 0;
}

static void post_queued(struct kvn_xfer *x, uint64_t now_ms)
{
    uint64_t pb = x->pool->page_bytes;
    while (x->postq.len) {
        uint32_t j = ring_front(&x->postq);
        struct job *jb = &x->jobs[j];
        while (jb->runs_left) {
            uint32_t n = jb->runs_left < POST_BATCH ? jb->runs_left : POST_BATCH;
            for (uint32_t i = 0; i < n; i++) {
                const struct run *r = &x->runs[(x->run_head + i) % RUN_RING];
                x->sges[i] = (struct kvn_xport_sge){.mr = x->pool_mr,
                                                    .offset = (uint64_t)r->page * pb,
                                                    .len = (uint64_t)r->count * pb};
                x->ops[i] = (struct kvn_xport_op){
                    .kind = jb->dir == KVN_XFER_TO_L2 ? KVN_XPORT_READ : KVN_XPORT_WRITE,
                    .local = &x->sges[i],
                    .n_local = 1,
                    .remote = x->l1_rmr,
                    .remote_offset = (uint64_t)r->slot * pb,
                    .cookie = ((uint64_t)jb->gen << 32) | j};
            }
            struct kvn_err e;
            int rc = kvn_xport_post(x->l1_peer, x->ops, n, &e);
            if (rc == -EAGAIN && kvn_xport_outstanding(x->x) > 0)
                return; /* out of credits: retried on the next progress */
            if (rc < 0) {
                jb->failed = true;
                x->st.ops_failed += n;
                snprintf(x->st.last_error, sizeof(x->st.last_error), "post: %.120s", e.msg);
                drop_runs(x, jb);
                break;
            }
            x->run_head = (x->run_head + n) % RUN_RING;
            x->run_len -= n;
            jb->runs_left -= n;
            jb->inflight += n;
            x->st.ops_posted += n;
        }
        ring_pop(&x->postq);
        jb->queued = false;
        if (jb->inflight == 0)
            finish_job(x, j, now_ms);
    }
}

static void on_cqe(struct kvn_xfer *x, const struct kvn_xport_cqe *c, uint64_t now_ms)
{
    if (c->kind != KVN_XPORT_READ && c->kind != KVN_XPORT_WRITE)
        return; /* notifications are not ours */
    uint32_t j = (uint32_t)c->cookie;
    uint32_t gen = (uint32_t)(c->cookie >> 32);
    if (j >= x->max_jobs)
        return;
    struct job *jb = &x->jobs[j];
    if (!jb->used || jb->gen != gen || jb->inflight == 0)
        return; /* a stale cookie: never count it twice */
    if (c->status < 0) {
        jb->failed = true;
        x->st.ops_failed++;
        snprintf(x->st.last_error, sizeof(x->st.last_error), "%.96s (%d)", c->msg, c->status);
    }
    jb->inflight--;
    if (jb->inflight == 0 && !jb->queued)
        finish_job(x, j, now_ms);
}

int kvn_xfer_progress(struct kvn_xfer *x, uint64_t now_ms, kvn_xfer_done_fn done, void *ctx)
{
    if (!x)
        return -EINVAL;
    post_queued(x, now_ms);
    /* While ops are out the loop comes straight back (kvn_xfer_busy), so
     * polls do not re-arm the wait fd (system calls per empty poll); once
     * nothing is out, an empty kvn_xport_poll re-arms it before the loop
     * may sleep.  Until then the copy engine counts as busy (unarmed). */
    x->unarmed = true;
    for (int round = 0; round < 64; round++) {
        int cap = (int)(sizeof(x->cqes) / sizeof(x->cqes[0]));
        bool spin = kvn_xport_outstanding(x->x) > 0 || x->postq.len > 0;
        int n = spin ? kvn_xport_poll_busy(x->x, x->cqes, cap) : kvn_xport_poll(x->x, x->cqes, cap);
        if (n == 0 && !spin)
            x->unarmed = false;
        if (n <= 0)
            break;
        for (int i = 0; i < n; i++)
            on_cqe(x, &x->cqes[i], now_ms);
        post_queued(x, now_ms);
    }
    int reported = 0;
    while (x->held.len) {
        uint32_t j = ring_front(&x->held);
        struct job *jb = &x->jobs[j];
        if (jb->due > now_ms)
            break;
        ring_pop(&x->held);
        x->st.jobs_held--;
        uint64_t ack = jb->ack_id, bytes = jb->bytes;
        enum kvn_xfer_dir dir = jb->dir;
        bool ok = !jb->failed;
        jb->used = false;
        jb->next_free = x->free_head;
        x->free_head = j;
        x->n_active--;
        if (ok) {
            x->st.jobs_ok++;
            if (dir == KVN_XFER_TO_L2)
                x->st.bytes_to_l2 += bytes;
            else
                x->st.bytes_to_l1 += bytes;
        } else {
            x->st.jobs_failed++;
        }
        if (done)
            done(ctx, ack, dir, ok, bytes);
        reported++;
    }
    return reported;
}

int kvn_xfer_wait_fd(struct kvn_xfer *x)
{
    return x ? kvn_xport_wait_fd(x->x) : -EINVAL;
}

bool kvn_xfer_busy(const struct kvn_xfer *x)
{
    return x && (kvn_xport_outstanding(x->x) > 0 || x->postq.len > 0 || x->unarmed);
}

uint64_t kvn_xfer_next_due(const struct kvn_xfer *x)
{
    if (!x || !x->held.len)
        return UINT64_MAX;
    return x->jobs[ring_front(&x->held)].due;
}

bool kvn_xfer_idle(const struct kvn_xfer *x)
{
    return !x || x->n_active == 0;
}

void kvn_xfer_get_stats(const struct kvn_xfer *x, struct kvn_xfer_stats *out)
{
    if (!x || !out)
        return;
    *out = x->st;
    out->jobs_active = x->n_active;
}
