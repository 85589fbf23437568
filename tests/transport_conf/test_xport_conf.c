/*
 * test_xport_conf.c - the transport conformance suite (issue 3, sections 3 and 6).
 *
 * One cmocka group per backend URI, the same tests for each, across real
 * processes: this process (cmocka) is the initiator, forked targets
 * (conf_target.c) own registered regions and answer over a bootstrap
 * socketpair (conf_harness.c).  Usage:
 *
 *     test_xport_conf [URI...]     (default: every URI of conf_backends[])
 *     KVN_CONF_FILTER=test_sg*     only the matching tests
 *     KVN_CONF_PENDING=1           also the tests the backends do not pass yet
 *
 * A backend the API refuses as not built (-ENOTSUP) or whose provider or
 * device is missing (-ENODEV, -EPROTONOSUPPORT, -ENOSYS) is reported as
 * skipped with the reason; with a single URI the executable then exits 77
 * (meson: SKIP).  Any other open failure is a failure.
 *
 * What is checked, per backend:
 *   - WRITE and READ of 1 B .. 64 MiB (odd sizes, odd offsets), by checksum
 *     and positional pattern, with guard bytes around the range;
 *   - a WRITE completion means the bytes are at the target (delivery
 *     complete, kvn_xport.h), seen from outside the transport;
 *   - scatter-gather lists of 1 .. 1024 entries over several registrations;
 *   - 1 .. 1024 operations outstanding, every cookie completing exactly once,
 *     and the outstanding limit (-EAGAIN, nothing posted);
 *   - out-of-bounds local and remote accesses refused before posting
 *     (-ERANGE/-EINVAL/-EACCES with a message, nothing posted, the remote
 *     region untouched); truncated and corrupted descriptors rejected;
 *   - a peer SIGKILLed mid-transfer: every outstanding op completes within
 *     CONF_DEATH_BOUND_MS and the domain keeps working with a third process;
 *     ops posted to a peer that died idle fail within the bound (the post
 *     call included), then posts and notifies to it give -ENOTCONN;
 *   - closing a domain with ops in flight and every object live; a new
 *     domain reaches the same target at once;
 *   - an event loop driven only by kvn_xport_wait_fd();
 *   - notifications: arrive with their bytes and the sender; after the WRITEs
 *     they follow when the initiator waited for the WRITE completions (the
 *     portable rule of kvn_xport.h), and also without waiting where the
 *     backend documents ordering (table below);
 *   - bad input to the API on a live domain (blobs, lengths, limits);
 *   - batched write confirmation (ofi rxm holds writes until a later
 *     delivery-complete part; the contract is the same everywhere): 1 .. 1024
 *     small WRITEs of odd sizes in flight, each at the target as it
 *     completes, windows that end with held writes completing with no
 *     further post; WRITEs above 2 MiB among small ones, in one batch and
 *     across batches; a disconnect with writes held (success or -ECANCELED,
 *     each once, reconnect works) and a SIGKILLed target with writes held
 *     (each once, within CONF_DEATH_BOUND_MS).
 *
 * Notification ordering after preceding WRITEs to the same peer, posted back
 * to back without waiting for the WRITE completion (what kvn_xport.h and the
 * backends document; "ordered" rows are asserted, the others are only
 * observed and printed as "observed in order: k/n"):
 *
 *   backend    ordered?  why
 *   ---------  --------  ----------------------------------------------------
 *   ofi+tcp    no        rxm reports FI_ORDER_SAW and it is observed in order,
 *                        but kvn_xport.h says "not relied upon": portable
 *                        code waits for the write completions
 *   ofi+shm    no        shm offers only FI_ORDER_SAS (kvn_xport.h): wait for
 *                        the write completions
 *   ofi+verbs  no        as ofi+tcp (rxm)
 *   ucx+tcp    yes       transport/ucx: flushes the endpoint before sending a
 *   ucx+sm     yes       notification (ucp_ep_flush_nbx), see transport/ucx
 *   verbs      yes       RC QP: SENDs execute in order after earlier WRITEs
 *   auto, ucx  as the backend kvn_xport_name() reports (auto is ucx here)
 *
 * Children always end (alarm + _exit, PR_SET_PDEATHSIG, parent-side reap with
 * SIGKILL); the parent arms alarm() around each test so that a transport call
 * that blocks forever kills the executable (a failure) instead of hanging CI.
 * Only 127.0.0.1 is used.  Nothing here times anything: deadlines only bound
 * waits.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conf_harness.h"
#include "conf_target.h"
#include "transport/kvn_xport.h"

#define MiB                 (1024u * 1024u)
#define CONF_CHILD_ALARM_S  150   /* a target never outlives this */
#define CONF_TEST_ALARM_S   170   /* nor does one test of the parent */
#define CONF_REPLY_MS       60000 /* a command reply (64 MiB checksums under ASan) */
#define CONF_OP_MS          60000 /* ops of a test to complete */
#define CONF_DEATH_BOUND_MS 30000 /* outstanding ops to a killed peer complete by then */
#define CONF_MAX_KIDS       2
#define CONF_STASH          4096
#define CONF_RECV_STASH     16

/* ---- backends ------------------------------------------------------------ */

struct conf_backend {
    char uri[8 + KVN_XPORT_NAME_MAX]; /* "verbs+" + a device name fits */
    char name[KVN_XPORT_NAME_MAX];    /* kvn_xport_name() of what the URI opened */
    int notify_ordered;               /* documented: notify after un-awaited WRITEs is ordered */
    int available;
    char why[2 * KVN_ERR_MSG_MAX + 128];
};

static const struct {
    const char *uri;
    int notify_ordered;
} conf_backends[] = {
    {"ofi+tcp", 0},   {"ofi+shm", 0}, {"ucx+tcp", 1}, {"ucx+sm", 1},
    {"ofi+verbs", 0}, {"verbs", 1},   {"auto", -1},
};

static int is_unavailable(int rc)
{
    return rc == -ENOTSUP || rc == -ENODEV || rc == -EPROTONOSUPPORT || rc == -ENOSYS;
}

/* "verbs" means the first device with an active port; resolves to verbs+DEV. */
static void probe_backend(struct conf_backend *be)
{
    struct kvn_err err;
    kvn_err_clear(&err);
    if (strcmp(be->uri, "verbs") == 0) {
        struct kvn_xport_devinfo dev[16];
        int n = kvn_xport_list_devices(dev, 16, &err);
        int found = -1;
        for (int i = 0; i < n && i < 16; i++)
            if (dev[i].active) {
                found = i;
                break;
            }
        if (n < 0 || found < 0) {
            be->available = 0;
            snprintf(be->why, sizeof(be->why), "no RDMA device with an ACTIVE port (%s)",
                     n < 0    ? err.msg
                     : n == 0 ? "/sys/class/infiniband is empty"
                              : "all ports down");
            return;
        }
        snprintf(be->uri, sizeof(be->uri), "verbs+%s", dev[found].name);
    }
    struct kvn_xport *x = NULL;
    int rc = kvn_xport_open(be->uri, NULL, &x, &err);
    if (rc == 0) {
        be->available = 1;
        snprintf(be->name, sizeof(be->name), "%s", kvn_xport_name(x));
        /* auto: ordering is that of the backend it picked */
        for (size_t k = 0;
             be->notify_ordered < 0 && k < sizeof(conf_backends) / sizeof(conf_backends[0]); k++)
            if (strcmp(conf_backends[k].uri, be->name) == 0)
                be->notify_ordered = conf_backends[k].notify_ordered;
        if (be->notify_ordered < 0)
            be->notify_ordered =
                strncmp(be->name, "ucx", 3) == 0 || strncmp(be->name, "verbs+", 6) == 0;
        printf("# %s opens %s (notify after un-awaited WRITE documented %s)\n", be->uri, be->name,
               be->notify_ordered ? "ordered" : "not ordered");
        kvn_xport_close(x);
        return;
    }
    be->available = is_unavailable(rc) ? 0 : -1;
    snprintf(be->why, sizeof(be->why), "kvn_xport_open(\"%s\"): %s (%s)", be->uri, err.msg,
             kvn_err_name(rc));
}

/* ---- the fixture: this process's domain and its targets ------------------- */

struct stashed_recv {
    struct kvn_xport_cqe c;
    unsigned char data[KVN_XPORT_MAX_MSG];
};

struct fx {
    struct conf_backend *be;
    int nkids;
    struct conf_child kid[CONF_MAX_KIDS];
    struct conf_target_cfg cfg[CONF_MAX_KIDS];
    struct kvn_xport_peer *peer[CONF_MAX_KIDS];
    struct kvn_xport_rmr *rmr[CONF_MAX_KIDS];
    unsigned char desc[CONF_MAX_KIDS][KVN_XPORT_DESC_MAX];
    size_t desc_len[CONF_MAX_KIDS];
    unsigned char addr[CONF_MAX_KIDS][KVN_XPORT_ADDR_MAX];
    size_t addr_len[CONF_MAX_KIDS];
    struct kvn_xport *x;
    unsigned char *buf;
    size_t buf_len;
    struct kvn_xport_mr *mr;
    /* op completions polled while waiting for something else */
    struct kvn_xport_cqe *cq;
    size_t n_cq;
    struct stashed_recv *rq; /* RECV completions, payload copied */
    size_t n_rq;
    /* TGT_RECV reports of the targets, in arrival order */
    struct conf_recv_r trecv[CONF_MAX_KIDS][64];
    size_t n_trecv[CONF_MAX_KIDS];
    /* what a test allocates, released by the teardown even after a failure */
    void *own[4];
    struct kvn_xport *x2;
    uint64_t fence_seq;
};

static void *fx_calloc(struct fx *f, size_t n, size_t size)
{
    for (size_t i = 0; i < sizeof(f->own) / sizeof(f->own[0]); i++) {
        if (!f->own[i]) {
            f->own[i] = calloc(n, size);
            assert_non_null(f->own[i]);
            return f->own[i];
        }
    }
    fail_msg("fx_calloc: no slot left");
    return NULL;
}

static int fx_setup(void **state)
{
    struct conf_backend *be = *state;
    struct fx *f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    f->be = be;
    for (int i = 0; i < CONF_MAX_KIDS; i++)
        f->kid[i] = (struct conf_child)CONF_CHILD_INIT;
    f->cq = calloc(CONF_STASH, sizeof(*f->cq));
    f->rq = calloc(CONF_RECV_STASH, sizeof(*f->rq));
    if (!f->cq || !f->rq) {
        free(f->cq);
        free(f->rq);
        free(f);
        return -1;
    }
    *state = f;
    alarm(CONF_TEST_ALARM_S);
    return 0;
}

static int fx_teardown(void **state)
{
    struct fx *f = *state;
    /* Release explicitly, in the order an orderly user would (closing with
     * live objects is test_close_with_live_objects' business). */
    for (int i = 0; i < f->nkids; i++) {
        kvn_xport_rmr_free(f->rmr[i]);
        kvn_xport_disconnect(f->peer[i]);
    }
    if (f->mr && kvn_xport_outstanding(f->x) == 0)
        kvn_xport_mr_dereg(f->mr, NULL);
    for (int i = 0; i < f->nkids; i++) {
        if (f->kid[i].chan >= 0)
            conf_chan_send(f->kid[i].chan, TGT_EXIT, NULL, 0);
        conf_child_reap(&f->kid[i], 10000);
    }
    kvn_xport_close(f->x2);
    kvn_xport_close(f->x); /* releases whatever a failed test left */
    /* No child of ours may outlive a test (zombie or running). */
    int leftover = waitpid(-1, NULL, WNOHANG) != -1 || errno != ECHILD;
    if (leftover)
        fprintf(stderr, "teardown: a child process outlived the test\n");
    for (size_t i = 0; i < sizeof(f->own) / sizeof(f->own[0]); i++)
        free(f->own[i]);
    if (f->buf)
        munmap(f->buf, f->buf_len);
    free(f->cq);
    free(f->rq);
    *state = f->be;
    free(f);
    alarm(0);
    return leftover ? -1 : 0;
}

#define NEED_BACKEND(f)                                                                            \
    do {                                                                                           \
        if ((f)->be->available <= 0) {                                                             \
            print_message("[  SKIP    ] %s: %s\n", (f)->be->uri, (f)->be->why);                    \
            skip();                                                                                \
        }                                                                                          \
    } while (0)

/* Polls this domain once, stashing everything (RECV payloads copied). */
static int fx_progress(struct fx *f)
{
    struct kvn_xport_cqe c[32];
    int n = kvn_xport_poll(f->x, c, 32);
    assert_true(n >= 0);
    for (int i = 0; i < n; i++) {
        if (c[i].kind == KVN_XPORT_RECV) {
            assert_true(f->n_rq < CONF_RECV_STASH);
            struct stashed_recv *s = &f->rq[f->n_rq++];
            s->c = c[i];
            assert_true(c[i].len <= sizeof(s->data));
            if (c[i].len)
                memcpy(s->data, c[i].data, c[i].len);
            s->c.data = s->data;
        } else {
            assert_true(f->n_cq < CONF_STASH);
            f->cq[f->n_cq++] = c[i];
        }
    }
    return n;
}

/* Receives the next message of kid k of type want, progressing our domain
 * meanwhile (UCX over TCP stalls a peer whose worker is not progressed).
 * TGT_RECV reports are queued on the side.  Returns the payload length. */
static size_t fx_recv(struct fx *f, int k, uint32_t want, void *buf, size_t cap)
{
    int64_t deadline = conf_now_ms() + CONF_REPLY_MS;
    for (;;) {
        uint32_t type;
        size_t len;
        unsigned char tmp[CONF_CHAN_MAX];
        if (f->x)
            fx_progress(f);
        int rc = conf_chan_recv(f->kid[k].chan, 1, &type, tmp, sizeof(tmp), &len);
        if (rc == 0 && type == TGT_RECV && want != TGT_RECV) {
            assert_int_equal(len, sizeof(struct conf_recv_r));
            assert_true(f->n_trecv[k] < 64);
            memcpy(&f->trecv[k][f->n_trecv[k]++], tmp, len);
            continue;
        }
        if (rc == 0) {
            if (type == TGT_ERR && want != TGT_ERR) {
                struct conf_status s;
                memcpy(&s, tmp, sizeof(s));
                fail_msg("target %d refused a command: %s (%d)", k, s.msg, s.status);
            }
            if (type != want)
                fail_msg("target %d: message type %u, expected %u", k, type, want);
            assert_true(len <= cap);
            memcpy(buf, tmp, len);
            return len;
        }
        if (rc != -ETIMEDOUT)
            fail_msg("target %d: channel error %s (did it die? exit %d)", k, kvn_err_name(rc),
                     conf_child_reap(&f->kid[k], 1000));
        if (conf_now_ms() > deadline)
            fail_msg("target %d: no reply of type %u within %d ms", k, want, CONF_REPLY_MS);
    }
}

/* Sends a command to target k; a target that died is reported with its end. */
static void tgt_send(struct fx *f, int k, uint32_t type, const void *buf, size_t len)
{
    int rc = conf_chan_send(f->kid[k].chan, type, buf, len);
    if (rc != 0) {
        int st = conf_child_reap(&f->kid[k], 1000);
        fail_msg("target %d: command %u not sent (%s); the target ended with %s %d", k, type,
                 strerror(-rc), st >= 128 ? "signal" : "exit code", st >= 128 ? st - 128 : st);
    }
}

static void fx_expect_ok(struct fx *f, int k)
{
    struct conf_status s;
    assert_int_equal(fx_recv(f, k, TGT_OK, &s, sizeof(s)), sizeof(s));
    assert_int_equal(s.status, 0);
}

static void tgt_fill(struct fx *f, int k, uint64_t off, uint64_t len, uint64_t seed)
{
    struct conf_range r = {off, len, seed};
    tgt_send(f, k, TGT_FILL, &r, sizeof(r));
    fx_expect_ok(f, k);
}

static uint64_t tgt_hash(struct fx *f, int k, uint64_t off, uint64_t len)
{
    struct conf_range r = {off, len, 0};
    struct conf_range_r a;
    tgt_send(f, k, TGT_HASH, &r, sizeof(r));
    assert_int_equal(fx_recv(f, k, TGT_HASH_R, &a, sizeof(a)), sizeof(a));
    return a.hash;
}

static int64_t tgt_check(struct fx *f, int k, uint64_t off, uint64_t len, uint64_t seed)
{
    struct conf_range r = {off, len, seed};
    struct conf_range_r a;
    tgt_send(f, k, TGT_CHECK, &r, sizeof(r));
    assert_int_equal(fx_recv(f, k, TGT_CHECK_R, &a, sizeof(a)), sizeof(a));
    return a.mismatch;
}

static void tgt_simple(struct fx *f, int k, uint32_t type)
{
    tgt_send(f, k, type, NULL, 0);
    fx_expect_ok(f, k);
}

static struct kvn_xport_cqe fx_take(struct fx *f, uint64_t cookie, int64_t deadline);

/* Next TGT_RECV report of kid k (queued or arriving). */
static struct conf_recv_r tgt_next_recv(struct fx *f, int k)
{
    struct conf_recv_r r;
    if (f->n_trecv[k] == 0)
        fx_recv(f, k, TGT_RECV, &f->trecv[k][f->n_trecv[k]++], sizeof(r));
    r = f->trecv[k][0];
    memmove(&f->trecv[k][0], &f->trecv[k][1], (f->n_trecv[k] - 1) * sizeof(r));
    f->n_trecv[k]--;
    return r;
}

/*
 * Checksum of a target range once every WRITE this process saw complete has
 * landed.  A WRITE completion alone does not promise that the bytes are
 * visible at the target to an observer outside the transport (libfabric's
 * default FI_TRANSMIT_COMPLETE, UCX's local put completion); what kvn_xport.h
 * promises is that a notification sent after the WRITE completions arrives
 * after their bytes.  So the target hashes the range when that notification's
 * RECV completion is polled.
 */
#define FENCE_COOKIE (1ULL << 60)
static uint64_t tgt_hash_fenced(struct fx *f, int k, uint64_t off, uint64_t len)
{
    struct kvn_err err;
    uint64_t seq = FENCE_COOKIE + f->fence_seq++;
    struct conf_note n = {CONF_NOTE_MAGIC, seq, off, len};
    kvn_err_clear(&err);
    int rc = kvn_xport_notify(f->peer[k], &n, sizeof(n), seq, &err);
    if (rc != 0)
        fail_msg("fence notify to target %d: %s (%s)", k, err.msg, kvn_err_name(rc));
    struct kvn_xport_cqe c = fx_take(f, seq, conf_now_ms() + CONF_OP_MS);
    if (c.status != 0 || c.kind != KVN_XPORT_SEND)
        fail_msg("fence notify to target %d: completion kind %d status %s: %s", k, c.kind,
                 kvn_err_name(c.status), c.msg);
    struct conf_recv_r r = tgt_next_recv(f, k);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.seq, seq);
    return r.region_hash;
}

/*
 * Spawns n targets with the given region sizes (before this process opens
 * anything: children never inherit a live domain), opens our domain with
 * attr (NULL: defaults), registers a local buffer of local_len bytes, and
 * connects both ways.
 */
static void fx_start(struct fx *f, int n, const size_t *region_len, size_t local_len,
                     const struct kvn_xport_attr *attr)
{
    struct kvn_err err;
    kvn_err_clear(&err);
    assert_true(n <= CONF_MAX_KIDS);
    for (int i = 0; i < n; i++) {
        f->cfg[i].uri = f->be->uri;
        f->cfg[i].region_len = region_len[i];
        assert_int_equal(
            conf_child_spawn(&f->kid[i], conf_target_main, &f->cfg[i], CONF_CHILD_ALARM_S), 0);
        f->nkids = i + 1;
    }
    int rc = kvn_xport_open(f->be->uri, attr, &f->x, &err);
    if (rc < 0)
        fail_msg("open %s: %s", f->be->uri, err.msg);
    assert_string_equal(kvn_xport_name(f->x), f->be->name);
    f->buf_len = local_len;
    void *m = mmap(NULL, local_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(m != MAP_FAILED);
    f->buf = m;
    rc = kvn_xport_mr_reg(f->x, f->buf, f->buf_len, KVN_XPORT_ACCESS_ALL, &f->mr, &err);
    if (rc < 0)
        fail_msg("mr_reg %zu bytes: %s", local_len, err.msg);

    unsigned char my_addr[KVN_XPORT_ADDR_MAX];
    size_t my_len = sizeof(my_addr);
    rc = kvn_xport_address(f->x, my_addr, &my_len, &err);
    if (rc < 0)
        fail_msg("address: %s", err.msg);

    for (int i = 0; i < n; i++) {
        unsigned char msg[sizeof(struct conf_hello) + KVN_XPORT_ADDR_MAX + KVN_XPORT_DESC_MAX];
        struct conf_hello h;
        size_t len = fx_recv(f, i, TGT_HELLO, msg, sizeof(msg));
        assert_true(len >= sizeof(h));
        memcpy(&h, msg, sizeof(h));
        if (h.status < 0)
            fail_msg("target %d could not set up %s: %s (%s)", i, f->be->uri, h.msg,
                     kvn_err_name(h.status));
        assert_int_equal(len, sizeof(h) + h.addr_len + h.desc_len);
        f->addr_len[i] = h.addr_len;
        memcpy(f->addr[i], msg + sizeof(h), h.addr_len);
        f->desc_len[i] = h.desc_len;
        memcpy(f->desc[i], msg + sizeof(h) + h.addr_len, h.desc_len);
        rc = kvn_xport_connect(f->x, f->addr[i], f->addr_len[i], &f->peer[i], &err);
        if (rc < 0)
            fail_msg("connect to target %d: %s", i, err.msg);
        rc = kvn_xport_rmr_unpack(f->peer[i], f->desc[i], f->desc_len[i], &f->rmr[i], &err);
        if (rc < 0)
            fail_msg("rmr_unpack of target %d: %s", i, err.msg);
        assert_int_equal(kvn_xport_rmr_len(f->rmr[i]), region_len[i]);
        tgt_send(f, i, TGT_PEER_ADDR, my_addr, my_len);
        fx_expect_ok(f, i);
    }
}

/* Takes the completion with this cookie out of the stash, polling up to the
 * deadline; fails the test when it does not come. */
static struct kvn_xport_cqe fx_take(struct fx *f, uint64_t cookie, int64_t deadline)
{
    for (;;) {
        for (size_t i = 0; i < f->n_cq; i++) {
            if (f->cq[i].cookie == cookie) {
                struct kvn_xport_cqe c = f->cq[i];
                f->cq[i] = f->cq[--f->n_cq];
                return c;
            }
        }
        if (conf_now_ms() > deadline)
            fail_msg("cookie %llu: no completion in time (%u outstanding)",
                     (unsigned long long)cookie, kvn_xport_outstanding(f->x));
        if (fx_progress(f) == 0)
            kvn_xport_wait(f->x, 5, NULL);
    }
}

/* Collects completions until n are stashed or the deadline; returns how many
 * are stashed (may exceed n if more were there). */
static size_t fx_gather(struct fx *f, size_t n, int64_t deadline)
{
    while (f->n_cq < n && conf_now_ms() <= deadline) {
        if (fx_progress(f) == 0)
            kvn_xport_wait(f->x, 5, NULL);
    }
    return f->n_cq;
}

static void expect_ok_cqe(const struct kvn_xport_cqe *c, enum kvn_xport_op_kind kind, uint64_t len)
{
    if (c->status != 0)
        fail_msg("cookie %llu: status %s: %s", (unsigned long long)c->cookie,
                 kvn_err_name(c->status), c->msg);
    assert_int_equal(c->kind, kind);
    assert_int_equal(c->len, len);
}

static void post_ok(struct fx *f, int k, const struct kvn_xport_op *ops, uint32_t n)
{
    struct kvn_err err;
    kvn_err_clear(&err);
    int rc = kvn_xport_post(f->peer[k], ops, n, &err);
    if (rc != 0)
        fail_msg("post of %u ops: %s (%s)", n, err.msg, kvn_err_name(rc));
}

/* One contiguous op and its completion. */
static void xfer(struct fx *f, int k, enum kvn_xport_op_kind kind, uint64_t lo, uint64_t ro,
                 uint64_t len, uint64_t cookie)
{
    struct kvn_xport_sge s = {f->mr, lo, len};
    struct kvn_xport_op op = {kind, &s, 1, f->rmr[k], ro, cookie};
    post_ok(f, k, &op, 1);
    struct kvn_xport_cqe c = fx_take(f, cookie, conf_now_ms() + CONF_OP_MS);
    expect_ok_cqe(&c, kind, len);
    assert_ptr_equal(c.peer, f->peer[k]); /* the op's peer */
}

/* ---- 1. WRITE and READ, 1 B .. 64 MiB --------------------------------------- */

static const uint64_t conf_sizes[] = {
    1, 3, 8, 4095, 4096, 4097, 65537, 1 * MiB + 7, 64 * MiB,
};
#define N_SIZES (sizeof(conf_sizes) / sizeof(conf_sizes[0]))
#define GUARD   64

/* 64 MiB ops on a loaded 2-core CI machine under ASan: give them 30 s, not
 * the default 5 s op timeout (correctness, not speed, is tested here). */
static void big_op_attr(struct kvn_xport_attr *a)
{
    kvn_xport_attr_init(a);
    a->op_timeout_ms = 30000;
}

static void test_write_sizes(void **state)
{
    struct fx *f = *state;
    NEED_BACKEND(f);
    size_t region = 64 * MiB + 4096 + 2 * GUARD;
    struct kvn_xport_attr a;
    big_op_attr(&a);
    fx_start(f, 1, &region, 64 * MiB + 4096, &a);
    for (size_t i = 0; i < N_SIZES; i++) {
        uint64_t len = conf_sizes[i];
        uint64_t lo = (i * 13) % 64;
        uint64_t ro = GUARD + (i * 1031 + 1) % 4096;
        uint64_t seed = 100 + i, bg = 900 + i;
        tgt_fill(f, 0, ro - GUARD, len + 2 * GUARD, bg);
        conf_pattern_fill(f->buf + lo, len, seed, ro);
        xfer(f, 0, KVN_XPORT_WRITE, lo, ro, len, 1 + i);
        uint64_t want = conf_hash64(f->buf + lo, len);
        uint64_t got = tgt_hash_fenced(f, 0, ro, len);
        if (got != want)
            fail_msg("WRITE %llu B at remote +%llu: checksum differs, first bad byte at %lld",
                     (unsigned long long)len, (unsigned long long)ro,
                     (long long)tgt_check(f, 0, ro, len, seed));
        /* Nothing outside the range was written. */
        assert_int_equal(tgt_check(f, 0, ro - GUARD, GUARD, bg), -1);
        assert_int_equal(tgt_check(f, 0, ro + len, GUARD, bg), -1);
    }
    assert_int_equal(kvn_xport_outstanding(f->x), 0);
}

static void test_read_sizes(void **state)
{
    struct fx *f = *state;
    NEED_BACKEND(f);
    size_t region = 64 * MiB + 4096;
    struct kvn_xport_attr a;
    big_op_attr(&a);
    fx_start(f, 1, &region, 64 * MiB + 4096 + 2 * GUARD, &a);
    for (size_t i = 0; i < N_SIZES; i++) {
        uint64_t len = conf_sizes[i];
        uint64_t lo = GUARD + (i * 13) % 64;
        uint64_t ro = (i * 1031 + 5) % 4096;
        uint64_t seed = 200 + i;
        tgt_fill(f, 0, ro, len, seed);
        memset(f->buf + lo - GUARD, 0xA5, len + 2 * GUARD);
        xfer(f, 0, KVN_XPORT_READ, lo, ro, len, 1 + i);
        uint64_t want = conf_pattern_hash(len, seed, ro);
        if (conf_hash64(f->buf + lo, len) != want)
            fail_msg("READ %llu B from remote +%llu: checksum differs, first bad byte at %lld",
                     (unsigned long long)len, (unsigned long long)ro,
                     conf_pattern_check(f->buf + lo, len, seed, ro));
        for (size_t g = 0; g < GUARD; g++) {
            assert_int_equal(f->buf[lo - GUARD + g], 0xA5);
            assert_int_equal(f->buf[lo + len + g], 0xA5);
        }
    }
    assert_int_equal(kvn_xport_outstanding(f->x), 0);
}

/*
 * kvn_xport.h (Progress): "a WRITE/READ completes (delivery complete) only
 * once the target's transport has handled it".  So once a WRITE completed,
 * the bytes are in the target's memory for any observer, here the target
 * answering over the bootstrap channel with no notification in between.
 * Small sizes matter (inline/inject paths complete early), and so does an SG
 * list (a split op completes once, after its last part).
 */
static void test_write_completion_is_delivery(void **state)
{
    struct fx *f = *state;
    NEED_BACKEND(f);
    size_t region = 2 * MiB;
    fx_start(f, 1, &region, 2 * MiB, NULL);
    static const uint64_t sizes[] = {1, 64, 4095, 4096, 4097, 65537, 1 * MiB + 7};
    uint64_t cookie = 1;
    for (int round = 0; round < 4; round++) {
        for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
            uint64_t len = sizes[i], ro = 8 * (uint64_t)round + i;
            uint64_t seed = 1000 + (uint64_t)round * 16 + i;
            conf_pattern_fill(f->buf, len, seed, ro);
            xfer(f, 0, KVN_XPORT_WRITE, 0, ro, len, cookie++);
            uint64_t got = tgt_hash(f, 0, ro, len);
            if (got != conf_hash64(f->buf, len))
                fail_msg("%s: WRITE of %llu B completed but the target does not hold the bytes "
                         "yet (first bad byte now: %lld)",
                         f->be->uri, (unsigned long long)len,
                         (long long)tgt_check(f, 0, ro, len, seed));
        }
        /* 255 entries of 1..97 bytes, gathered into one remote range */
        struct kvn_xport_sge sge[255];
        uint64_t lo = 0, total = 0, ro = 4096 + (uint64_t)round;
        for (uint32_t k = 0; k < 255; k++) {
            uint64_t len = 1 + (k * 37) % 97;
            sge[k] = (struct kvn_xport_sge){f->mr, lo, len};
            conf_pattern_fill(f->buf + lo, len, 77 + (uint64_t)round, ro + total);
            lo += len + 3;
            total += len;
        }
        struct kvn_xport_op op = {KVN_XPORT_WRITE, sge, 255, f->rmr[0], ro, cookie};
        post_ok(f, 0, &op, 1);
        struct kvn_xport_cqe c = fx_take(f, cookie++, conf_now_ms() + CONF_OP_MS);
        expect_ok_cqe(&c, KVN_XPORT_WRITE, total);
        if (tgt_hash(f, 0, ro, total) != conf_pattern_hash(total, 77 + (uint64_t)round, ro))
            fail_msg("%s: SG WRITE of 255 entries completed but the target does not hold the "
                     "bytes yet",
                     f->be->uri);
    }
}

/* ---- 2. scatter-gather lists of 1 .. 1024 entries ---------------------------- */

#define SG_MRS 6 /* more distinct registrations than an op tracks inline */

struct sg_plan {
    struct kvn_xport_mr *mr[SG_MRS];
    unsigned char *base[SG_MRS];
    size_t slice;
    struct kvn_xport_sge sge[KVN_XPORT_MAX_SGE + 1];
    uint64_t total;
};

/* Lays out n entries of odd lengths with gaps, round-robin over SG_MRS
 * registrations that split the local buffer into slices. */
static void sg_plan(struct fx *f, struct sg_plan *p, uint32_t n)
{
    size_t cursor[SG_MRS] = {0};
    p->total = 0;
    for (uint32_t k = 0; k < n; k++) {
        int j = (int)(k % SG_MRS);
        uint64_t len = (k % 101 == 50) ? 4097 : 1 + (k * 37) % 97;
        p->sge[k].mr = p->mr[j];
        p->sge[k].offset = cursor[j] + k % 5;
        p->sge[k].len = len;
        cursor[j] += k % 5 + len;
        assert_true(cursor[j] <= p->slice);
        p->total += len;
    }
    (void)f;
}

static void sg_register(struct fx *f, struct sg_plan *p)
{
    struct kvn_err err;
    p->slice = f->buf_len / SG_MRS;
    for (int j = 0; j < SG_MRS; j++) {
        p->base[j] = f->buf + (size_t)j * p->slice;
        int rc =
            kvn_xport_mr_reg(f->x, p->base[j], p->slice, KVN_XPORT_ACCESS_LOCAL, &p->mr[j], &err);
        if (rc < 0)
            fail_msg("mr_reg slice %d: %s", j, err.msg);
    }
}

static void sg_release(struct sg_plan *p)
{
    for (int j = 0; j < SG_MRS; j++)
        assert_int_equal(kvn_xport_mr_dereg(p->mr[j], NULL), 0);
}

static unsigned char *sge_addr(const struct sg_plan *p, const struct kvn_xport_sge *s)
{
    for (int j = 0; j < SG_MRS; j++)
        if (p->mr[j] == s->mr)
            return p->base[j] + s->offset;
    return NULL;
}

static void test_sg_batches(void **state)
{
    struct fx *f = *state;
    NEED_BACKEND(f);
    size_t region = 4 * MiB;
    fx_start(f, 1, &region, 6 * MiB, NULL);
    struct sg_plan *p = fx_calloc(f, 1, sizeof(*p));
    sg_register(f, p);
    static const uint32_t counts[] = {1, 2, 3, 17, 255, 1024};
    for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++) {
        uint32_t n = counts[c];
        sg_plan(f, p, n);
        uint64_t ro = 7 + c * 1000;
        uint64_t seed = 300 + c;

        /* WRITE: piece k lands at ro + (bytes before it), contiguously. */
        uint64_t rpos = ro;
        memset(f->buf, 0, f->buf_len);
        for (uint32_t k = 0; k < n; k++) {
            conf_pattern_fill(sge_addr(p, &p->sge[k]), p->sge[k].len, seed, rpos);
            rpos += p->sge[k].len;
        }
        tgt_fill(f, 0, ro + p->total, GUARD, 1);
        struct kvn_xport_op op = {KVN_XPORT_WRITE, p->sge, n, f->rmr[0], ro, 10 + c};
        post_ok(f, 0, &op, 1);
        struct kvn_xport_cqe e = fx_take(f, 10 + c, conf_now_ms() + CONF_OP_MS);
        expect_ok_cqe(&e, KVN_XPORT_WRITE, p->total);
        if (tgt_hash_fenced(f, 0, ro, p->total) != conf_pattern_hash(p->total, seed, ro))
            fail_msg("SG WRITE of %u entries (%llu B): checksum differs, first bad byte %lld", n,
                     (unsigned long long)p->total, (long long)tgt_check(f, 0, ro, p->total, seed));
        assert_int_equal(tgt_check(f, 0, ro + p->total, GUARD, 1), -1);

        /* READ: the remote range scatters back into the same pieces; the gaps
         * between them stay untouched. */
        tgt_fill(f, 0, ro, p->total, seed + 1000);
        memset(f->buf, 0x5A, f->buf_len);
        op.kind = KVN_XPORT_READ;
        op.cookie = 20 + c;
        post_ok(f, 0, &op, 1);
        e = fx_take(f, 20 + c, conf_now_ms() + CONF_OP_MS);
        expect_ok_cqe(&e, KVN_XPORT_READ, p->total);
        rpos = ro;
        size_t touched = 0;
        for (uint32_t k = 0; k < n; k++) {
            long long bad =
                conf_pattern_check(sge_addr(p, &p->sge[k]), p->sge[k].len, seed + 1000, rpos);
            if (bad >= 0)
                fail_msg("SG READ of %u entries: entry %u, byte %lld wrong", n, k, bad);
            rpos += p->sge[k].len;
            touched += p->sge[k].len;
        }
        size_t untouched = 0;
        for (size_t b = 0; b < f->buf_len; b++)
            untouched += f->buf[b] == 0x5A;
        /* every byte outside the pieces is still 0x5A (a piece byte may be
         * 0x5A by chance, hence >=) */
        assert_true(untouched >= f->buf_len - touched);
    }

    /* One entry too many is refused, nothing is posted. */
    sg_plan(f, p, KVN_XPORT_MAX_SGE);
    p->sge[KVN_XPORT_MAX_SGE] = p->sge[0];
    struct kvn_xport_op op = {KVN_XPORT_WRITE, p->sge, KVN_XPORT_MAX_SGE + 1, f->rmr[0], 0, 99};
    struct kvn_err err;
    kvn_err_clear(&err);
    assert_int_equal(kvn_xport_post(f->peer[0], &op, 1, &err), -EINVAL);
    assert_true(err.msg[0] != '\0');
    assert_int_equal(kvn_xport_outstanding(f->x), 0);
    sg_release(p);
}

/* ---- 3. 1 .. 1024 operations outstanding ------------------------------------- */

#define OPB 4096 /* bytes per op */

static void test_outstanding_depths(void **state)
{
    struct fx *f = *state;
    NEED_BACKEND(f);
    size_t region = 1024 * OPB;
    fx_start(f, 1, &region, 1024 * OPB, NULL);
    struct kvn_xport_sge *sge = fx_calloc(f, 1025, sizeof(*sge));
    struct kvn_xport_op *ops = fx_calloc(f, 1025, sizeof(*ops));
    unsigned char *seen = fx_calloc(f, 1025, 1);
    static const uint32_t depths[] = {1, 2, 64, 1024};
    for (size_t d = 0; d < sizeof(depths) / sizeof(depths[0]); d++) {
        uint32_t n = depths[d];
        for (int dir = 0; dir < 2; dir++) {
            enum kvn_xport_op_kind kind = dir == 0 ? KVN_XPORT_WRITE : KVN_XPORT_READ;
            uint64_t seed = 400 + d * 2 + (uint64_t)dir;
            /* op k moves remote block k <-> local block (7k mod n): a
             * permutation, so a misrouted op shows up. */
            for (uint32_t k = 0; k < n; k++) {
                uint64_t lb = (7ull * k) % n;
                sge[k] = (struct kvn_xport_sge){f->mr, lb * OPB, OPB};
                ops[k] =
                    (struct kvn_xport_op){kind, &sge[k], 1, f->rmr[0], (uint64_t)k * OPB, 5000 + k};
                if (kind == KVN_XPORT_WRITE)
                    conf_pattern_fill(f->buf + lb * OPB, OPB, seed, (uint64_t)k * OPB);
            }
            if (kind == KVN_XPORT_READ) {
                tgt_fill(f, 0, 0, (uint64_t)n * OPB, seed);
                memset(f->buf, 0, f->buf_len);
            }
            /* Post in one call for small depths, in 16 calls for 1024. */
            uint32_t chunk = n >= 1024 ? 64 : n;
            for (uint32_t at = 0; at < n; at += chunk)
                post_ok(f, 0, ops + at, chunk);
            assert_int_equal(kvn_xport_outstanding(f->x), n);
            memset(seen, 0, 1025);
            for (uint32_t k = 0; k < n; k++) {
                struct kvn_xport_cqe c = fx_take(f, 5000 + k, conf_now_ms() + CONF_OP_MS);
                expect_ok_cqe(&c, kind, OPB);
                seen[k]++;
            }
            /* exactly once: nothing left over, no duplicate afterwards */
            fx_progress(f);
            assert_int_equal(f->n_cq, 0);
            assert_int_equal(kvn_xport_outstanding(f->x), 0);
            if (kind == KVN_XPORT_WRITE) {
                uint64_t h = tgt_hash_fenced(f, 0, 0, (uint64_t)n * OPB);
                assert_int_equal(tgt_check(f, 0, 0, (uint64_t)n * OPB, seed), -1);
                assert_int_equal(h, conf_pattern_hash((uint64_t)n * OPB, seed, 0));
            } else {
                for (uint32_t k = 0; k < n; k++) {
                    uint64_t lb = (7ull * k) % n;
                    long long bad =
                        conf_pattern_check(f->buf + lb * OPB, OPB, seed, (uint64_t)k * OPB);
                    if (bad >= 0)
                        fail_msg("depth %u READ op %u: byte %lld wrong", n, k, bad);
                }
            }
        }
    }

    /* The limit (default max_outstanding = 1024): a full window refuses one
     * more, a batch above the limit is refused whole. */
    struct kvn_err err;
    for (uint32_t k = 0; k < 1025; k++) {
        sge[k] = (struct kvn_xport_sge){f->mr, (k % 1024) * (uint64_t)OPB, OPB};
        ops[k] = (struct kvn_xport_op){
            KVN_XPORT_WRITE, &sge[k], 1, f->rmr[0], (k % 1024) * (uint64_t)OPB, 8000 + k};
    }
    kvn_err_clear(&err);
    /* kvn_xport.h documents -EAGAIN; a batch that can never fit the window
     * is also fairly -EINVAL (xport.c says so).  Either way: nothing posted. */
    int rc = kvn_xport_post(f->peer[0], ops, 1025, &err);
    if (rc != -EAGAIN && rc != -EINVAL)
        fail_msg("batch of 1025 ops: %s, expected -EAGAIN or -EINVAL", kvn_err_name(rc));
    assert_true(err.msg[0] != '\0');
    assert_int_equal(kvn_xport_outstanding(f->x), 0);
    post_ok(f, 0, ops, 1024);
    kvn_err_clear(&err);
    assert_int_equal(kvn_xport_post(f->peer[0], ops + 1024, 1, &err), -EAGAIN);
    assert_int_equal(err.code, -EAGAIN);
    /* a notification counts as an outstanding op too */
    kvn_err_clear(&err);
    assert_int_equal(kvn_xport_notify(f->peer[0], "x", 1, 1, &err), -EAGAIN);
    assert_true(err.msg[0] != '\0');
    assert_int_equal(kvn_xport_outstanding(f->x), 1024);
    for (uint32_t k = 0; k < 1024; k++) {
        struct kvn_xport_cqe c = fx_take(f, 8000 + k, conf_now_ms() + CONF_OP_MS);
        expect_ok_cqe(&c, KVN_XPORT_WRITE, OPB);
    }
    assert_int_equal(kvn_xport_outstanding(f->x), 0);
    /* the window is usable again */
    xfer(f, 0, KVN_XPORT_WRITE, 0, 0, OPB, 9999);
}

/* ---- 4. out-of-bounds accesses are refused locally -------------------------- */

/* Posts ops expecting refusal with code: nothing outstanding, a message. */
static void expect_refused(struct fx *f, struct kvn_xport_peer *p, const struct kvn_xport_op *ops,
                           uint32_t n, int code, const char *what)
{
    struct kvn_err err;
    kvn_err_clear(&err);
    int rc = kvn_xport_post(p, ops, n, &err);
    if (rc != code)
        fail_msg("%s: post returned %s (%s), expected %s", what, kvn_err_name(rc), err.msg,
                 kvn_err_name(code));
    assert_int_equal(err.code, code);
    if (err.msg[0] == '\0')
        fail_msg("%s: refused without a message", what);
    assert_int_equal(kvn_xport_outstanding(f->x), 0);
}

static void test_out_of_bounds_refused(void **state)
{
    struct fx *f = *state;
    NEED_BACKEND(f);
    size_t region = 64 * 1024;
    fx_start(f, 1, &region, 32 * 1024, NULL);
    const uint64_t L = f->buf_len, R = region;
    struct kvn_xport_rmr *rm = f->rmr[0];
    struct kvn_xport_peer *pe = f->peer[0];
    tgt_fill(f, 0, 0, R, 77);
    uint64_t before = tgt_hash(f, 0, 0, R);
    memset(f->buf, 0xEE, f->buf_len);

    struct {
        struct kvn_xport_sge s;
        uint64_t ro;
        int kind;
        int code;
        const char *what;
    } bad[] = {
        {{NULL, L, 1}, 0, KVN_XPORT_WRITE, -ERANGE, "local offset == mr length"},
        {{NULL, L - 1, 2}, 0, KVN_XPORT_WRITE, -ERANGE, "local range 1 byte past the mr"},
        {{NULL, 0, L + 1}, 0, KVN_XPORT_READ, -ERANGE, "local length > mr length"},
        {{NULL, UINT64_MAX - 1, 4}, 0, KVN_XPORT_WRITE, -ERANGE, "local offset+len wraps"},
        {{NULL, 0, 0}, 0, KVN_XPORT_WRITE, -EINVAL, "zero-length entry"},
        {{NULL, 0, 1}, R, KVN_XPORT_WRITE, -ERANGE, "remote offset == region length"},
        {{NULL, 0, 11}, R - 10, KVN_XPORT_WRITE, -ERANGE, "remote range 1 byte past"},
        {{NULL, 0, 11}, R - 10, KVN_XPORT_READ, -ERANGE, "remote READ 1 byte past"},
        {{NULL, 0, 4}, UINT64_MAX - 1, KVN_XPORT_WRITE, -ERANGE, "remote offset+len wraps"},
        {{NULL, 0, 1}, 0, KVN_XPORT_SEND, -EINVAL, "SEND is not an op kind"},
        {{NULL, 0, 1}, 0, 99, -EINVAL, "unknown op kind"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        bad[i].s.mr = f->mr;
        struct kvn_xport_op op = {
            (enum kvn_xport_op_kind)bad[i].kind, &bad[i].s, 1, rm, bad[i].ro, 1};
        expect_refused(f, pe, &op, 1, bad[i].code, bad[i].what);
        /* a good op before the bad one in the same batch: nothing posted */
        struct kvn_xport_sge good = {f->mr, 0, 4096};
        struct kvn_xport_op two[2] = {{KVN_XPORT_WRITE, &good, 1, rm, 0, 2}, op};
        struct kvn_err e2;
        kvn_err_clear(&e2);
        expect_refused(f, pe, two, 2, bad[i].code, bad[i].what);
        /* kvn_xport.h: the message names the op at fault */
        assert_int_equal(kvn_xport_post(pe, two, 2, &e2), bad[i].code);
        if (!strstr(e2.msg, "op 1"))
            fail_msg("%s: message \"%s\" does not name op 1", bad[i].what, e2.msg);
    }

    struct kvn_xport_sge s = {f->mr, 0, 1};
    struct kvn_xport_op op = {KVN_XPORT_WRITE, &s, 1, rm, 0, 3};
    op.n_local = 0;
    expect_refused(f, pe, &op, 1, -EINVAL, "n_local == 0");
    op.n_local = 1;
    op.local = NULL;
    expect_refused(f, pe, &op, 1, -EINVAL, "local == NULL");
    op.local = &s;
    op.remote = NULL;
    expect_refused(f, pe, &op, 1, -EINVAL, "remote == NULL");
    op.remote = rm;
    s.mr = NULL;
    expect_refused(f, pe, &op, 1, -EINVAL, "sge.mr == NULL");
    s.mr = f->mr;
    expect_refused(f, pe, &op, 0, -EINVAL, "n == 0");
    expect_refused(f, pe, NULL, 1, -EINVAL, "ops == NULL");
    expect_refused(f, NULL, &op, 1, -EINVAL, "peer == NULL");

    /* An rmr belongs to the peer it was unpacked for: a second connection to
     * the same target has its own. */
    struct kvn_err err;
    struct kvn_xport_peer *pe2 = NULL;
    struct kvn_xport_rmr *rm2 = NULL;
    assert_int_equal(kvn_xport_connect(f->x, f->addr[0], f->addr_len[0], &pe2, &err), 0);
    assert_int_equal(kvn_xport_rmr_unpack(pe2, f->desc[0], f->desc_len[0], &rm2, &err), 0);
    op.remote = rm2;
    expect_refused(f, pe, &op, 1, -EINVAL, "rmr of another peer");
    op.remote = rm;
    /* ... and works with its own connection */
    struct kvn_xport_sge s2 = {f->mr, 0, 512};
    struct kvn_xport_op op2 = {KVN_XPORT_READ, &s2, 1, rm2, 512, 6};
    kvn_err_clear(&err);
    if (kvn_xport_post(pe2, &op2, 1, &err) != 0)
        fail_msg("READ over a second connection to the same target: %s", err.msg);
    struct kvn_xport_cqe c2 = fx_take(f, 6, conf_now_ms() + CONF_OP_MS);
    expect_ok_cqe(&c2, KVN_XPORT_READ, 512);
    assert_ptr_equal(c2.peer, pe2);
    assert_int_equal(conf_pattern_check(f->buf, 512, 77, 512), -1);

    /* A local mr of another domain. */
    struct kvn_xport_mr *mr2 = NULL;
    unsigned char other[64];
    assert_int_equal(kvn_xport_open(f->be->uri, NULL, &f->x2, &err), 0);
    assert_int_equal(
        kvn_xport_mr_reg(f->x2, other, sizeof(other), KVN_XPORT_ACCESS_ALL, &mr2, &err), 0);
    s.mr = mr2;
    expect_refused(f, pe, &op, 1, -EINVAL, "local mr of another domain");
    s.mr = f->mr;
    kvn_xport_close(f->x2);
    f->x2 = NULL;

    /* Access rights of the remote registration: a READ-only region, reached
     * through a loopback connection to our own domain. */
    struct kvn_xport_mr *ro_mr = NULL;
    unsigned char desc[KVN_XPORT_DESC_MAX], me[KVN_XPORT_ADDR_MAX];
    size_t dlen = sizeof(desc), mlen = sizeof(me);
    assert_int_equal(kvn_xport_mr_reg(f->x, f->buf + 8192, 8192,
                                      KVN_XPORT_ACCESS_LOCAL | KVN_XPORT_ACCESS_REMOTE_READ, &ro_mr,
                                      &err),
                     0);
    assert_int_equal(kvn_xport_mr_pack(ro_mr, desc, &dlen, &err), 0);
    assert_int_equal(kvn_xport_address(f->x, me, &mlen, &err), 0);
    struct kvn_xport_peer *self = NULL;
    struct kvn_xport_rmr *ro_rmr = NULL;
    assert_int_equal(kvn_xport_connect(f->x, me, mlen, &self, &err), 0);
    assert_int_equal(kvn_xport_rmr_unpack(self, desc, dlen, &ro_rmr, &err), 0);
    struct kvn_xport_op w = {KVN_XPORT_WRITE, &s, 1, ro_rmr, 0, 4};
    expect_refused(f, self, &w, 1, -EACCES, "WRITE to a region without REMOTE_WRITE");
    kvn_xport_rmr_free(ro_rmr);
    assert_int_equal(kvn_xport_mr_dereg(ro_mr, &err), 0);
    /* and a WRITE-only one refuses READs */
    struct kvn_xport_mr *wo_mr = NULL;
    struct kvn_xport_rmr *wo_rmr = NULL;
    dlen = sizeof(desc);
    assert_int_equal(kvn_xport_mr_reg(f->x, f->buf + 8192, 8192,
                                      KVN_XPORT_ACCESS_LOCAL | KVN_XPORT_ACCESS_REMOTE_WRITE,
                                      &wo_mr, &err),
                     0);
    assert_int_equal(kvn_xport_mr_pack(wo_mr, desc, &dlen, &err), 0);
    assert_int_equal(kvn_xport_rmr_unpack(self, desc, dlen, &wo_rmr, &err), 0);
    struct kvn_xport_op rd = {KVN_XPORT_READ, &s, 1, wo_rmr, 0, 5};
    expect_refused(f, self, &rd, 1, -EACCES, "READ of a region without REMOTE_READ");
    kvn_xport_rmr_free(wo_rmr);
    kvn_xport_disconnect(self);
    assert_int_equal(kvn_xport_mr_dereg(wo_mr, &err), 0);

    /* Nothing reached the target: no completion shows up, its bytes are as
     * they were. */
    for (int i = 0; i < 20; i++) {
        fx_progress(f);
        kvn_xport_wait(f->x, 5, NULL);
    }
    assert_int_equal(f->n_cq, 0);
    assert_int_equal(tgt_hash_fenced(f, 0, 0, R), before);
    /* and the connection still works */
    xfer(f, 0, KVN_XPORT_WRITE, 0, R - 4096, 4096, 7);
    kvn_xport_rmr_free(rm2);
    kvn_xport_disconnect(pe2);
}

/* ---- 5. corrupted and truncated remote descriptors -------------------------- */

static uint32_t fnv1a32(const unsigned char *p, size_t n)
{
    uint32_t h = 0x811c9dc5u;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x01000193u;
    }
    return h;
}

static uint64_t get_le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void put_le(unsigned char *p, int n, uint64_t v)
{
    for (int i = 0; i < n; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Recomputes the descriptor checksum (documented layout in kvn_xport.h). */
static void desc_reseal(unsigned char *d, size_t len)
{
    put_le(d + 28, 4, 0);
    put_le(d + 28, 4, fnv1a32(d, len));
}

static void expect_unpack_fails(struct fx *f, const unsigned char *d, size_t len, const char *what)
{
    struct kvn_err err;
    struct kvn_xport_rmr *sentinel = (struct kvn_xport_rmr *)(uintptr_t)0x1, *r = sentinel;
    kvn_err_clear(&err);
    int rc = kvn_xport_rmr_unpack(f->peer[0], d, len, &r, &err);
    if (rc != -EINVAL && rc != -EPROTO) {
        if (rc == 0)
            kvn_xport_rmr_free(r);
        fail_msg("%s: unpack returned %s, expected -EINVAL or -EPROTO", what, kvn_err_name(rc));
    }
    assert_int_equal(err.code, rc);
    if (err.msg[0] == '\0')
        fail_msg("%s: rejected without a message", what);
    assert_ptr_equal(r, sentinel);
}

static void test_descriptor_rejected(void **state)
{
    struct fx *f = *state;
    NEED_BACKEND(f);
    size_t region = 64 * 1024;
    fx_start(f, 1, &region, 4096, NULL);
    const unsigned char *orig = f->desc[0];
    size_t len = f->desc_len[0];
    unsigned char d[KVN_XPORT_DESC_MAX + 8];
    char what[96];

    /* The documented layout. */
    assert_true(len >= KVN_XPORT_DESC_HDR && len <= KVN_XPORT_DESC_MAX);
    assert_int_equal(get_le(orig, 4), 0x524e564bu);
    assert_int_equal(get_le(orig + 4, 2), 1);
    assert_int_equal(orig[6], kvn_xport_backend(f->x));
    assert_int_equal(get_le(orig + 16, 8), region);
    assert_int_equal(KVN_XPORT_DESC_HDR + get_le(orig + 24, 2), len);
    memcpy(d, orig, len);
    desc_reseal(d, len);
    assert_memory_equal(d, orig, len); /* our checksum is the documented one */

    /* Every truncation. */
    for (size_t l = 0; l < len; l++) {
        snprintf(what, sizeof(what), "truncated to %zu of %zu bytes", l, len);
        expect_unpack_fails(f, orig, l, what);
    }
    /* Every single-byte corruption (two patterns per byte). */
    for (size_t i = 0; i < len; i++) {
        static const unsigned char flips[] = {0x01, 0x80};
        for (size_t k = 0; k < 2; k++) {
            memcpy(d, orig, len);
            d[i] ^= flips[k];
            snprintf(what, sizeof(what), "byte %zu xor 0x%02x", i, flips[k]);
            expect_unpack_fails(f, d, len, what);
        }
    }
    /* Semantic checks behind a valid checksum. */
    struct {
        int at, n;
        uint64_t v;
        const char *what;
    } sem[] = {
        {0, 4, 0x524e564cu, "wrong magic"},
        {4, 2, 2, "unknown version"},
        {4, 2, 0, "version 0"},
        {6, 1, 0, "backend id 0"},
        {6, 1, 77, "unknown backend id"},
        {16, 8, 0, "zero length"},
        {16, 8, UINT64_MAX, "absurd length"},
        {8, 8, UINT64_MAX - 100, "base + length wraps"},
        {24, 2, KVN_XPORT_KEY_MAX + 1, "key length above the maximum"},
    };
    for (size_t i = 0; i < sizeof(sem) / sizeof(sem[0]); i++) {
        memcpy(d, orig, len);
        put_le(d + sem[i].at, sem[i].n, sem[i].v);
        desc_reseal(d, len);
        expect_unpack_fails(f, d, len, sem[i].what);
    }
    /* another backend's id, resealed */
    memcpy(d, orig, len);
    d[6] =
        (unsigned char)(kvn_xport_backend(f->x) == KVN_XPORT_BACKEND_OFI ? KVN_XPORT_BACKEND_UCX
                                                                         : KVN_XPORT_BACKEND_OFI);
    desc_reseal(d, len);
    expect_unpack_fails(f, d, len, "descriptor of another backend");
    /* key length claiming more bytes than were received */
    memcpy(d, orig, len);
    put_le(d + 24, 2, get_le(orig + 24, 2) + 1);
    desc_reseal(d, len);
    expect_unpack_fails(f, d, len, "key length past the end");

    /* NULL arguments. */
    struct kvn_xport_rmr *r = NULL;
    struct kvn_err err;
    assert_int_equal(kvn_xport_rmr_unpack(NULL, orig, len, &r, &err), -EINVAL);
    assert_int_equal(kvn_xport_rmr_unpack(f->peer[0], NULL, len, &r, &err), -EINVAL);
    assert_int_equal(kvn_xport_rmr_unpack(f->peer[0], orig, len, NULL, &err), -EINVAL);
    assert_null(r);

    /* The intact descriptor still works after all that. */
    assert_int_equal(kvn_xport_rmr_unpack(f->peer[0], orig, len, &r, &err), 0);
    assert_int_equal(kvn_xport_rmr_len(r), region);
    kvn_xport_rmr_free(r);
    xfer(f, 0, KVN_XPORT_READ, 0, 100, 1000, 1);
}

/* ---- 6. a peer killed mid-transfer --------------------------------------------- */

/*
 * SIGKILLs target k.  A target of ofi+shm killed this way cannot unlink its
 * shared-memory files (/dev/shm/<pid>:<n>:<m>, libfabric 1.17 names them by
 * pid), and a later process that gets the same pid then fails fi_enable with
 * -EBUSY; so the suite removes the files of the target it killed (reaped,
 * so nobody maps them any more).
 */
static int kill_target(struct fx *f, int k)
{
    int st = conf_child_kill(&f->kid[k]);
    if (strcmp(f->be->name, "ofi+shm") != 0 || f->kid[k].pid <= 0)
        return st;
    char prefix[32];
    int plen = snprintf(prefix, sizeof(prefix), "%d:", (int)f->kid[k].pid);
    DIR *dir = opendir("/dev/shm");
    if (!dir)
        return st;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL)
        if (strncmp(e->d_name, prefix, (size_t)plen) == 0)
            unlinkat(dirfd(dir), e->d_name, 0);
    closedir(dir);
    return st;
}

#define KILL_OPS 64
#define KILL_OPB (512 * 1024)

static void survivor_works(struct fx *f, int k);

static void test_peer_killed_mid_transfer(void **state)
{
    struct fx *f = *state;
    NEED_BACKEND(f);
    size_t regions[2] = {(size_t)KILL_OPS / 2 * KILL_OPB * 2, 4 * MiB};
    fx_start(f, 2, regions, (size_t)KILL_OPS * KILL_OPB, NULL);

    /* Both targets work. */
    conf_pattern_fill(f->buf, 4096, 1, 0);
    xfer(f, 0, KVN_XPORT_WRITE, 0, 0, 4096, 1);
    xfer(f, 1, KVN_XPORT_WRITE, 0, 0, 4096, 2);
    assert_int_equal(tgt_hash_fenced(f, 0, 0, 4096), conf_hash64(f->buf, 4096));
    assert_int_equal(tgt_hash_fenced(f, 1, 0, 4096), conf_hash64(f->buf, 4096));

    /* The victim stops progressing (so that its peer's ops stay in flight
     * where the backend needs the target), half WRITEs, half READs go out. */
    tgt_simple(f, 0, TGT_PAUSE);
    struct kvn_xport_sge sge[KILL_OPS];
    struct kvn_xport_op ops[KILL_OPS];
    for (uint32_t k = 0; k < KILL_OPS; k++) {
        sge[k] = (struct kvn_xport_sge){f->mr, (uint64_t)k * KILL_OPB, KILL_OPB};
        ops[k] = (struct kvn_xport_op){k % 2 ? KVN_XPORT_READ : KVN_XPORT_WRITE,
                                       &sge[k],
                                       1,
                                       f->rmr[0],
                                       (uint64_t)k * KILL_OPB,
                                       100 + k};
    }
    post_ok(f, 0, ops, KILL_OPS);
    /* No progress before the kill: backends that move bytes from the
     * initiator's poll (shm's CMA, rxm's socket writes) still hold most ops. */
    size_t done_before = f->n_cq;
    int64_t t_kill = conf_now_ms();
    assert_int_equal(kill_target(f, 0), 128 + 9);

    /* Every op completes exactly once, within the bound. */
    fx_gather(f, KILL_OPS, t_kill + CONF_DEATH_BOUND_MS);
    int64_t t_done = conf_now_ms();
    if (f->n_cq < KILL_OPS)
        fail_msg("%s: %zu of %d ops to the killed peer completed within %d ms "
                 "(%u still outstanding)",
                 f->be->uri, f->n_cq, KILL_OPS, CONF_DEATH_BOUND_MS, kvn_xport_outstanding(f->x));
    assert_int_equal(f->n_cq, KILL_OPS);
    unsigned char seen[KILL_OPS] = {0};
    size_t n_err = 0;
    const char *first_msg = "";
    for (size_t i = 0; i < f->n_cq; i++) {
        uint64_t k = f->cq[i].cookie - 100;
        assert_true(k < KILL_OPS);
        assert_int_equal(seen[k], 0);
        seen[k] = 1;
        if (f->cq[i].status < 0) {
            if (!n_err)
                first_msg = f->cq[i].msg;
            n_err++;
            assert_true(f->cq[i].msg[0] != '\0');
        }
    }
    print_message("[  INFO    ] %s: peer killed with %d ops posted (%zu done before the kill): "
                  "%zu ok, %zu errors within %lld ms (first: \"%s\")\n",
                  f->be->uri, KILL_OPS, done_before, KILL_OPS - n_err, n_err,
                  (long long)(t_done - t_kill), first_msg);
    assert_true(t_done - t_kill <= CONF_DEATH_BOUND_MS);
    assert_int_equal(kvn_xport_peer_outstanding(f->peer[0]), 0);
    f->n_cq = 0;

    survivor_works(f, 1);
    kvn_xport_disconnect(f->peer[0]);
    f->peer[0] = NULL;
}

static void survivor_works(struct fx *f, int k)
{
    struct kvn_err err;
    /* The domain keeps working with the third process. */
    uint64_t len = 1 * MiB + 7;
    conf_pattern_fill(f->buf, len, 55, 3);
    xfer(f, k, KVN_XPORT_WRITE, 0, 3, len, 1000);
    assert_int_equal(tgt_hash_fenced(f, k, 3, len), conf_hash64(f->buf, len));
    memset(f->buf, 0, len);
    xfer(f, k, KVN_XPORT_READ, 0, 3, len, 1001);
    assert_int_equal(conf_pattern_check(f->buf, len, 55, 3), -1);
    struct conf_note n = {CONF_NOTE_MAGIC, 1, 3, len};
    kvn_err_clear(&err);
    assert_int_equal(kvn_xport_notify(f->peer[k], &n, sizeof(n), 1002, &err), 0);
    struct kvn_xport_cqe c = fx_take(f, 1002, conf_now_ms() + CONF_OP_MS);
    assert_int_equal(c.status, 0);
    assert_int_equal(c.kind, KVN_XPORT_SEND);
    struct conf_recv_r r = tgt_next_recv(f, k);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.seq, 1);
    assert_int_equal(r.region_hash, conf_hash64(f->buf, len));
}

/*
 * PENDING (run with KVN_CONF_PENDING=1; not registered until the backends
 * pass it): a peer that dies while idle.  kvn_xport.h: ops to it complete
 * with an error within a bounded time (the post call included: a post that
 * blocks stalls every other peer of the event loop), and once an op of a
 * peer failed, later posts and notifies to it return -ENOTCONN.
 */
static void test_dead_peer_refused(void **state)
{
    struct fx *f = *state;
    NEED_BACKEND(f);
    size_t regions[2] = {4 * MiB, 4 * MiB};
    fx_start(f, 2, regions, 4 * MiB, NULL);
    conf_pattern_fill(f->buf, 4096, 1, 0);
    xfer(f, 0, KVN_XPORT_WRITE, 0, 0, 4096, 1);
    assert_int_equal(tgt_hash_fenced(f, 0, 0, 4096), conf_hash64(f->buf, 4096));
    assert_int_equal(kill_target(f, 0), 128 + 9);

    struct kvn_xport_sge sge[8];
    struct kvn_xport_op ops[8];
    for (uint32_t k = 0; k < 8; k++) {
        sge[k] = (struct kvn_xport_sge){f->mr, (uint64_t)k * 4096, 4096};
        ops[k] = (struct kvn_xport_op){k % 2 ? KVN_XPORT_READ : KVN_XPORT_WRITE,
                                       &sge[k],
                                       1,
                                       f->rmr[0],
                                       (uint64_t)k * 4096,
                                       300 + k};
    }
    struct kvn_err err;
    kvn_err_clear(&err);
    int64_t t0 = conf_now_ms();
    int rc = kvn_xport_post(f->peer[0], ops, 8, &err);
    int64_t t_post = conf_now_ms() - t0;
    if (rc == 0) {
        fx_gather(f, 8, t0 + CONF_DEATH_BOUND_MS);
        assert_int_equal(f->n_cq, 8);
        for (size_t i = 0; i < 8; i++)
            if (f->cq[i].status == 0)
                fail_msg("%s: op %llu to a dead peer completed successfully", f->be->uri,
                         (unsigned long long)f->cq[i].cookie);
        print_message("[  INFO    ] %s: 8 ops posted to a peer that died idle: post returned "
                      "after %lld ms, all failed after %lld ms (\"%s\")\n",
                      f->be->uri, (long long)t_post, (long long)(conf_now_ms() - t0), f->cq[0].msg);
        f->n_cq = 0;
    } else {
        assert_int_equal(rc, -ENOTCONN);
    }
    if (conf_now_ms() - t0 > CONF_DEATH_BOUND_MS)
        fail_msg("%s: ops to a dead peer took %lld ms to fail (post itself %lld ms), bound %d ms",
                 f->be->uri, (long long)(conf_now_ms() - t0), (long long)t_post,
                 CONF_DEATH_BOUND_MS);

    /* The peer is now known failed. */
    kvn_err_clear(&err);
    rc = kvn_xport_post(f->peer[0], ops, 1, &err);
    if (rc != -ENOTCONN)
        fail_msg("%s: post to a failed peer returned %s (%s), kvn_xport.h says -ENOTCONN",
                 f->be->uri, kvn_err_name(rc), err.msg);
    assert_true(err.msg[0] != '\0');
    struct conf_note n = {CONF_NOTE_MAGIC, 9, 0, 1};
    rc = kvn_xport_notify(f->peer[0], &n, sizeof(n), 9, &err);
    if (rc != -ENOTCONN)
        fail_msg("%s: notify to a failed peer returned %s (%s), kvn_xport.h says -ENOTCONN",
                 f->be->uri, kvn_err_name(rc), err.msg);
    assert_int_equal(kvn_xport_outstanding(f->x), 0);
    survivor_works(f, 1);
}

/* ---- 7. notifications after writes ---------------------------------------------- */

#define NOTE_ROUNDS 8

static void test_notify_after_write(void **state)
{
    struct fx *f = *state;
    NEED_BACKEND(f);
    size_t region = NOTE_ROUNDS * MiB;
    fx_start(f, 1, &region, NOTE_ROUNDS * MiB, NULL);
    struct kvn_err err;

    for (int mode = 0; mode < 2; mode++) {
        /* mode 0: the portable rule - notify once the WRITE completed.
         * mode 1: back to back, the WRITE still in flight. */
        int in_order = 0;
        for (uint64_t r = 0; r < NOTE_ROUNDS; r++) {
            uint64_t seq = (uint64_t)mode * 100 + r, off = r * MiB, len = MiB - r;
            conf_pattern_fill(f->buf + off, len, 600 + seq, off);
            struct kvn_xport_sge s = {f->mr, off, len};
            struct kvn_xport_op op = {KVN_XPORT_WRITE, &s, 1, f->rmr[0], off, 10 + seq};
            post_ok(f, 0, &op, 1);
            struct kvn_xport_cqe c;
            if (mode == 0) {
                c = fx_take(f, 10 + seq, conf_now_ms() + CONF_OP_MS);
                expect_ok_cqe(&c, KVN_XPORT_WRITE, len);
            }
            struct conf_note n = {CONF_NOTE_MAGIC, seq, off, len};
            kvn_err_clear(&err);
            int rc = kvn_xport_notify(f->peer[0], &n, sizeof(n), 500 + seq, &err);
            if (rc != 0)
                fail_msg("notify: %s", err.msg);
            struct conf_recv_r got = tgt_next_recv(f, 0);
            assert_int_equal(got.status, 0);
            assert_int_equal(got.len, sizeof(n));
            assert_int_equal(got.seq, seq);
            assert_int_equal(got.payload_hash, conf_hash64(&n, sizeof(n)));
            assert_int_equal(got.peer_known, 1);
            assert_int_equal(got.peer_id != 0, 1);
            int ok = got.region_hash == conf_hash64(f->buf + off, len);
            in_order += ok;
            if (mode == 0 && !ok)
                fail_msg("%s: notification %llu arrived before the bytes of a WRITE that had "
                         "completed",
                         f->be->uri, (unsigned long long)seq);
            if (mode == 1 && f->be->notify_ordered && !ok)
                fail_msg("%s: notification %llu overtook the preceding WRITE, but the backend "
                         "is documented as ordered",
                         f->be->uri, (unsigned long long)seq);
            c = fx_take(f, 500 + seq, conf_now_ms() + CONF_OP_MS);
            assert_int_equal(c.kind, KVN_XPORT_SEND);
            assert_int_equal(c.status, 0);
            if (mode == 1) {
                c = fx_take(f, 10 + seq, conf_now_ms() + CONF_OP_MS);
                expect_ok_cqe(&c, KVN_XPORT_WRITE, len);
            }
        }
        if (mode == 1)
            print_message("[  INFO    ] %s: notify right after an un-awaited WRITE: observed in "
                          "order %d/%d (documented %s)\n",
                          f->be->uri, in_order, NOTE_ROUNDS,
                          f->be->notify_ordered ? "ordered" : "not ordered");
    }
    assert_int_equal(kvn_xport_outstanding(f->x), 0);
}

/* Notifications the other way (target -> us) and their limits. */
static void test_notify_bytes_and_limits(void **state)
{
    struct fx *f = *state;
    NEED_BACKEND(f);
    size_t region = 4096;
    fx_start(f, 1, &region, 4096, NULL);
    static const size_t lens[] = {1, 100, KVN_XPORT_DEF_MSG};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        unsigned char msg[sizeof(struct conf_notify_req) + KVN_XPORT_DEF_MSG];
        struct conf_notify_req q = {77 + i};
        memcpy(msg, &q, sizeof(q));
        conf_pattern_fill(msg + sizeof(q), lens[i], 700 + i, 0);
        tgt_send(f, 0, TGT_NOTIFY, msg, sizeof(q) + lens[i]);
        struct conf_status st;
        fx_recv(f, 0, TGT_NOTIFY_R, &st, sizeof(st));
        if (st.status != 0)
            fail_msg("target's notify of %zu bytes: %s (%s)", lens[i], st.msg,
                     kvn_err_name(st.status));
        int64_t deadline = conf_now_ms() + CONF_OP_MS;
        while (f->n_rq == 0) {
            assert_true(conf_now_ms() <= deadline);
            if (fx_progress(f) == 0)
                kvn_xport_wait(f->x, 5, NULL);
        }
        struct stashed_recv *s = &f->rq[0];
        assert_int_equal(s->c.status, 0);
        assert_int_equal(s->c.kind, KVN_XPORT_RECV);
        assert_int_equal(s->c.len, lens[i]);
        assert_int_equal(conf_pattern_check(s->data, lens[i], 700 + i, 0), -1);
        assert_ptr_equal(s->c.peer, f->peer[0]);
        assert_int_equal(s->c.peer_id, kvn_xport_peer_id(f->peer[0]));
        f->n_rq = 0;
    }

    struct kvn_err err;
    unsigned char big[KVN_XPORT_DEF_MSG + 1] = {0};
    kvn_err_clear(&err);
    assert_int_equal(kvn_xport_notify(f->peer[0], big, 0, 1, &err), -EINVAL);
    assert_true(err.msg[0] != '\0');
    assert_int_equal(kvn_xport_notify(f->peer[0], big, sizeof(big), 1, &err), -EMSGSIZE);
    assert_true(err.msg[0] != '\0');
    assert_int_equal(kvn_xport_notify(f->peer[0], NULL, 4, 1, &err), -EINVAL);
    assert_int_equal(kvn_xport_notify(NULL, big, 4, 1, &err), -EINVAL);
    assert_int_equal(kvn_xport_outstanding(f->x), 0);
    /* the largest one goes through */
    assert_int_equal(kvn_xport_notify(f->peer[0], big, KVN_XPORT_DEF_MSG, 9, &err), 0);
    struct kvn_xport_cqe c = fx_take(f, 9, conf_now_ms() + CONF_OP_MS);
    assert_int_equal(c.status, 0);
    struct conf_recv_r r = tgt_next_recv(f, 0);
    assert_int_equal(r.len, KVN_XPORT_DEF_MSG);
    assert_int_equal(r.payload_hash, conf_hash64(big, KVN_XPORT_DEF_MSG));
}

/* ---- 8. bad input on a live domain ------------------------------------------------ */

static void test_bad_input(void **state)
{
    struct fx *f = *state;
    NEED_BACKEND(f);
    size_t region = 64 * 1024;
    fx_start(f, 1, &region, 64 * 1024, NULL);
    struct kvn_err err;

    /* open */
    struct kvn_xport *x2 = (struct kvn_xport *)(uintptr_t)0x1;
    assert_int_equal(kvn_xport_open(NULL, NULL, &x2, &err), -EINVAL);
    assert_int_equal(kvn_xport_open(f->be->uri, NULL, NULL, &err), -EINVAL);
    assert_true(kvn_xport_open("nosuch+thing", NULL, &x2, &err) < 0);
    assert_true(err.msg[0] != '\0');
    struct kvn_xport_attr a;
    kvn_xport_attr_init(&a);
    a.max_outstanding = KVN_XPORT_MAX_OUTSTANDING + 1;
    assert_int_equal(kvn_xport_open(f->be->uri, &a, &x2, &err), -EINVAL);
    kvn_xport_attr_init(&a);
    a.max_msg_size = KVN_XPORT_MAX_MSG + 1;
    assert_int_equal(kvn_xport_open(f->be->uri, &a, &x2, &err), -EINVAL);
    assert_ptr_equal(x2, (struct kvn_xport *)(uintptr_t)0x1);

    /* address */
    unsigned char blob[KVN_XPORT_ADDR_MAX];
    size_t need = 0, len = 1;
    assert_int_equal(kvn_xport_address(f->x, blob, &len, &err), -ENOSPC);
    need = len;
    assert_true(need > 1 && need <= KVN_XPORT_ADDR_MAX);
    assert_int_equal(kvn_xport_address(f->x, blob, &len, &err), 0);
    assert_int_equal(len, need);
    assert_int_equal(kvn_xport_address(NULL, blob, &len, &err), -EINVAL);
    assert_int_equal(kvn_xport_address(f->x, NULL, &len, &err), -EINVAL);

    /* connect: garbage, truncated and corrupted blobs of a target */
    struct kvn_xport_peer *pp = (struct kvn_xport_peer *)(uintptr_t)0x1;
    unsigned char junk[256];
    memset(junk, 0, sizeof(junk));
    assert_true(kvn_xport_connect(f->x, junk, sizeof(junk), &pp, &err) < 0);
    conf_pattern_fill(junk, sizeof(junk), 5, 0);
    assert_true(kvn_xport_connect(f->x, junk, sizeof(junk), &pp, &err) < 0);
    for (size_t l = 0; l < f->addr_len[0]; l += 1 + l / 8) {
        int rc = kvn_xport_connect(f->x, f->addr[0], l, &pp, &err);
        if (rc == 0)
            fail_msg("connect accepted an address blob truncated to %zu of %zu bytes", l,
                     f->addr_len[0]);
    }
    memcpy(blob, f->addr[0], f->addr_len[0]);
    blob[0] ^= 0xFF;
    assert_true(kvn_xport_connect(f->x, blob, f->addr_len[0], &pp, &err) < 0);
    assert_int_equal(kvn_xport_connect(f->x, NULL, 8, &pp, &err), -EINVAL);
    assert_int_equal(kvn_xport_connect(f->x, f->addr[0], f->addr_len[0], NULL, &err), -EINVAL);
    assert_ptr_equal(pp, (struct kvn_xport_peer *)(uintptr_t)0x1);

    /* registration */
    struct kvn_xport_mr *m = NULL;
    assert_int_equal(kvn_xport_mr_reg(f->x, NULL, 64, KVN_XPORT_ACCESS_ALL, &m, &err), -EINVAL);
    assert_int_equal(kvn_xport_mr_reg(f->x, f->buf, 0, KVN_XPORT_ACCESS_ALL, &m, &err), -EINVAL);
    assert_int_equal(kvn_xport_mr_reg(f->x, f->buf, 64, 0, &m, &err), -EINVAL);
    assert_int_equal(kvn_xport_mr_reg(f->x, f->buf, 64, 0x8, &m, &err), -EINVAL);
    assert_int_equal(kvn_xport_mr_reg(NULL, f->buf, 64, KVN_XPORT_ACCESS_ALL, &m, &err), -EINVAL);
    assert_null(m);
    unsigned char d[KVN_XPORT_DESC_MAX];
    size_t dl = 4;
    assert_int_equal(kvn_xport_mr_pack(f->mr, d, &dl, &err), -ENOSPC);
    assert_true(dl >= KVN_XPORT_DESC_HDR);
    assert_int_equal(kvn_xport_mr_pack(NULL, d, &dl, &err), -EINVAL);

    /* Deregistration is refused while an op uses the region.  A backend may
     * finish a small op inside kvn_xport_post (ucx+sm does): the region is
     * then no longer in use and deregistration may succeed at once; the
     * op's completion must still come, successful. */
    assert_int_equal(kvn_xport_mr_reg(f->x, f->buf + 4096, 4096, KVN_XPORT_ACCESS_ALL, &m, &err),
                     0);
    struct kvn_xport_sge s = {m, 0, 4096};
    struct kvn_xport_op op = {KVN_XPORT_WRITE, &s, 1, f->rmr[0], 0, 42};
    post_ok(f, 0, &op, 1);
    kvn_err_clear(&err);
    int rc = kvn_xport_mr_dereg(m, &err);
    if (rc == 0) {
        print_message("[  INFO    ] %s: mr_dereg right after post succeeded (op finished inside "
                      "post, its completion not yet polled)\n",
                      f->be->uri);
    } else {
        assert_int_equal(rc, -EBUSY);
        assert_true(err.msg[0] != '\0');
    }
    struct kvn_xport_cqe c = fx_take(f, 42, conf_now_ms() + CONF_OP_MS);
    expect_ok_cqe(&c, KVN_XPORT_WRITE, 4096);
    if (rc != 0)
        assert_int_equal(kvn_xport_mr_dereg(m, &err), 0);
    assert_int_equal(kvn_xport_mr_dereg(NULL, &err), -EINVAL);

    /* completion queue */
    struct kvn_xport_cqe cq[2];
    assert_int_equal(kvn_xport_poll(NULL, cq, 2), -EINVAL);
    assert_int_equal(kvn_xport_poll(f->x, NULL, 2), -EINVAL);
    assert_int_equal(kvn_xport_poll(f->x, cq, 0), -EINVAL);
    assert_true(kvn_xport_wait_fd(f->x) >= 0);
    assert_int_equal(kvn_xport_wait_fd(NULL), -EINVAL);
    assert_int_equal(kvn_xport_wait(NULL, 0, &err), -EINVAL);
    for (int i = 0; i < 10; i++)
        fx_progress(f);
    assert_int_equal(f->n_cq, 0);
    assert_int_equal(kvn_xport_wait(f->x, 0, &err), -ETIMEDOUT);
    assert_int_equal(kvn_xport_outstanding(f->x), 0);
    assert_int_equal(kvn_xport_outstanding(NULL), 0);
    assert_string_equal(kvn_xport_name(NULL), "");
}

/* ---- 10. an event loop driven by the wait fd ----------------------------------- */

/*
 * What node/ does: sleep in poll() on kvn_xport_wait_fd(), and when it fires
 * (or the loop's own tick comes, here every second) call kvn_xport_poll()
 * until it returns 0.  Ops and a notification from the target must all
 * complete that way, and the fd must actually fire (a loop that only ever
 * wakes on its tick would be a busy loop in disguise).
 */
static void test_wait_fd_drives_completions(void **state)
{
    struct fx *f = *state;
    NEED_BACKEND(f);
    size_t region = 4 * MiB;
    fx_start(f, 1, &region, 4 * MiB, NULL);
    int fd = kvn_xport_wait_fd(f->x);
    assert_true(fd >= 0);
    enum { N = 16, B = 256 * 1024 };
    struct kvn_xport_sge sge[N];
    struct kvn_xport_op ops[N];
    conf_pattern_fill(f->buf, (size_t)N / 2 * B, 901, 0);
    tgt_fill(f, 0, (uint64_t)N / 2 * B, (uint64_t)N / 2 * B, 902);
    for (uint32_t k = 0; k < N; k++) {
        sge[k] = (struct kvn_xport_sge){f->mr, (uint64_t)k * B, B};
        ops[k] = (struct kvn_xport_op){k < N / 2 ? KVN_XPORT_WRITE : KVN_XPORT_READ,
                                       &sge[k],
                                       1,
                                       f->rmr[0],
                                       (uint64_t)k * B,
                                       1 + k};
    }
    post_ok(f, 0, ops, N);
    unsigned char note[64];
    struct conf_notify_req q = {4242};
    memcpy(note, &q, sizeof(q));
    conf_pattern_fill(note + sizeof(q), sizeof(note) - sizeof(q), 903, 0);
    tgt_send(f, 0, TGT_NOTIFY, note, sizeof(note));

    int64_t deadline = conf_now_ms() + CONF_OP_MS;
    unsigned fired = 0;
    int got_recv = 0;
    while (f->n_cq < N || !got_recv) {
        while (fx_progress(f) > 0)
            ;
        for (size_t i = 0; i < f->n_rq; i++)
            got_recv |= f->rq[i].c.len == sizeof(note) - sizeof(q);
        if (f->n_cq >= N && got_recv)
            break;
        if (conf_now_ms() > deadline)
            fail_msg("%s: %zu of %d ops and %s the notification completed through the wait fd",
                     f->be->uri, f->n_cq, N, got_recv ? "" : "not");
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, 1000);
        assert_true(r >= 0 || errno == EINTR);
        fired += r > 0;
    }
    if (fired == 0)
        fail_msg("%s: the wait fd never became readable", f->be->uri);
    for (size_t i = 0; i < f->n_cq; i++) {
        uint64_t k = f->cq[i].cookie - 1;
        assert_true(k < N);
        expect_ok_cqe(&f->cq[i], k < N / 2 ? KVN_XPORT_WRITE : KVN_XPORT_READ, B);
    }
    f->n_cq = 0;
    struct conf_status st; /* the target's report of its notify comes first */
    fx_recv(f, 0, TGT_NOTIFY_R, &st, sizeof(st));
    assert_int_equal(st.status, 0);
    assert_int_equal(
        conf_pattern_check(f->buf + (size_t)N / 2 * B, (size_t)N / 2 * B, 902, (uint64_t)N / 2 * B),
        -1);
    assert_int_equal(tgt_hash_fenced(f, 0, 0, (uint64_t)N / 2 * B),
                     conf_pattern_hash((size_t)N / 2 * B, 901, 0));
    assert_int_equal(f->rq[0].c.kind, KVN_XPORT_RECV);
    assert_int_equal(conf_pattern_check(f->rq[0].data, sizeof(note) - sizeof(q), 903, 0), -1);
}

/* ---- 9. closing a domain with everything still live --------------------------- */

/*
 * kvn_xport_close(): outstanding ops are dropped without completions and every
 * peer, mr and rmr is released.  Closed with ops in flight, peers, mrs and
 * rmrs live; the target must not notice beyond losing its peer, and a new
 * domain in this process works with it right away.
 */
static void test_close_with_live_objects(void **state)
{
    struct fx *f = *state;
    NEED_BACKEND(f);
    size_t region = 4 * MiB;
    fx_start(f, 1, &region, 4 * MiB, NULL);
    struct kvn_err err;
    struct kvn_xport_mr *extra = NULL;
    assert_int_equal(kvn_xport_mr_reg(f->x, f->buf, 4096, KVN_XPORT_ACCESS_LOCAL, &extra, &err), 0);
    struct kvn_xport_sge sge[16];
    struct kvn_xport_op ops[16];
    for (uint32_t k = 0; k < 16; k++) {
        sge[k] = (struct kvn_xport_sge){f->mr, (uint64_t)k * 256 * 1024, 256 * 1024};
        ops[k] = (struct kvn_xport_op){k % 2 ? KVN_XPORT_READ : KVN_XPORT_WRITE,
                                       &sge[k],
                                       1,
                                       f->rmr[0],
                                       (uint64_t)k * 256 * 1024,
                                       1 + k};
    }
    post_ok(f, 0, ops, 16);
    struct conf_note n = {CONF_NOTE_MAGIC, 1, 0, 1};
    assert_int_equal(kvn_xport_notify(f->peer[0], &n, sizeof(n), 99, &err), 0);
    assert_int_equal(kvn_xport_outstanding(f->x), 17);
    kvn_xport_close(f->x);
    f->x = NULL;
    f->mr = NULL;
    for (int i = 0; i < CONF_MAX_KIDS; i++) {
        f->peer[i] = NULL;
        f->rmr[i] = NULL;
    }
    f->n_cq = 0;

    /* A fresh domain reaches the same target. */
    assert_int_equal(kvn_xport_open(f->be->uri, NULL, &f->x, &err), 0);
    assert_int_equal(kvn_xport_mr_reg(f->x, f->buf, f->buf_len, KVN_XPORT_ACCESS_ALL, &f->mr, &err),
                     0);
    assert_int_equal(kvn_xport_connect(f->x, f->addr[0], f->addr_len[0], &f->peer[0], &err), 0);
    assert_int_equal(kvn_xport_rmr_unpack(f->peer[0], f->desc[0], f->desc_len[0], &f->rmr[0], &err),
                     0);
    tgt_fill(f, 0, 0, 65536, 31);
    memset(f->buf, 0, 65536);
    xfer(f, 0, KVN_XPORT_READ, 0, 0, 65536, 500);
    assert_int_equal(conf_pattern_check(f->buf, 65536, 31, 0), -1);
}

/* ---- 10. batched write confirmation (ofi rxm) on every backend ------------------- */

/*
 * transport/ofi confirms rxm writes in batches: one part per 16 parts or per
 * 2 MiB asks for delivery-complete, the writes sent before it are held until
 * its ack, and a peer left with held writes and nothing in flight gets a
 * confirm (the newest held write's last byte again, delivery-complete).  The
 * contract is unchanged and backend-independent, so these run everywhere:
 * every cookie completes exactly once, a completed WRITE is at the target for
 * an observer outside the transport (tgt_hash, no notification), a window
 * that ends with held writes completes with no further post (idle confirm),
 * and a disconnect or a killed target ends every held write exactly once.
 */
#define BW_MAX 1024

struct bw_plan {
    uint32_t n;
    uint64_t seed, bg;
    uint64_t base, span; /* remote [base, base + span) holds the plan */
    uint64_t len[BW_MAX], ro[BW_MAX], lo[BW_MAX];
    int status[BW_MAX];
    unsigned char seen[BW_MAX];
    struct kvn_xport_sge sge[BW_MAX];
    struct kvn_xport_op ops[BW_MAX];
};

/* Lays out n writes of the given lengths from remote offset base with 1..3
 * byte gaps (untouched background), sources in reverse order in the local
 * buffer (a misrouted write shows), fills the sources with pattern seed at
 * their remote positions and the target span with pattern bg. */
static void bw_plan(struct fx *f, struct bw_plan *b, uint32_t n, const uint64_t *len, uint64_t base,
                    uint64_t seed, uint64_t cookie0)
{
    assert_true(n >= 1 && n <= BW_MAX);
    b->n = n;
    b->seed = seed;
    b->bg = seed ^ 0x5a5a5a5aull;
    b->base = base;
    uint64_t at = base + 1;
    for (uint32_t k = 0; k < n; k++) {
        b->len[k] = len[k];
        b->ro[k] = at;
        at += len[k] + 1 + k % 3;
    }
    b->span = at - base;
    assert_true(b->base + b->span <= kvn_xport_rmr_len(f->rmr[0]));
    assert_true(b->span <= f->buf_len);
    for (uint32_t k = 0; k < n; k++) {
        b->lo[k] = b->span - (b->ro[k] - base) - len[k]; /* mirrored */
        conf_pattern_fill(f->buf + b->lo[k], len[k], seed, b->ro[k]);
        b->sge[k] = (struct kvn_xport_sge){f->mr, b->lo[k], len[k]};
        b->ops[k] =
            (struct kvn_xport_op){KVN_XPORT_WRITE, &b->sge[k], 1, f->rmr[0], b->ro[k], cookie0 + k};
        b->seen[k] = 0;
        b->status[k] = 1; /* not completed */
    }
    tgt_fill(f, 0, base, b->span, b->bg);
}

/* Posts the plan's ops in calls of chunk ops each (the last may be shorter). */
static void bw_post(struct fx *f, struct bw_plan *b, uint32_t chunk)
{
    for (uint32_t at = 0; at < b->n; at += chunk)
        post_ok(f, 0, b->ops + at, b->n - at < chunk ? b->n - at : chunk);
}

/* Checks that write k of the plan is at the target, seen from outside the
 * transport (the target hashes its memory when asked over the channel). */
static void bw_check_at_target(struct fx *f, struct bw_plan *b, uint32_t k, const char *when)
{
    uint64_t got = tgt_hash(f, 0, b->ro[k], b->len[k]);
    if (got != conf_pattern_hash(b->len[k], b->seed, b->ro[k]))
        fail_msg("%s: WRITE %u (%llu B at +%llu) %s but the target does not hold its bytes "
                 "(first bad byte now: %lld)",
                 f->be->uri, k, (unsigned long long)b->len[k], (unsigned long long)b->ro[k], when,
                 (long long)tgt_check(f, 0, b->ro[k], b->len[k], b->seed));
}

/* Moves the stashed completions of the plan's cookies into b->status,
 * failing on a duplicate or a foreign cookie; with check_ok, a successful
 * WRITE is checked at the target at once.  Returns how many were taken. */
static uint32_t bw_take_stashed(struct fx *f, struct bw_plan *b, uint64_t cookie0, int check_ok)
{
    uint32_t taken = 0;
    while (f->n_cq > 0) {
        struct kvn_xport_cqe c = f->cq[--f->n_cq];
        uint64_t k = c.cookie - cookie0;
        if (c.cookie < cookie0 || k >= b->n)
            fail_msg("%s: completion of unknown cookie %llu", f->be->uri,
                     (unsigned long long)c.cookie);
        if (b->seen[k])
            fail_msg("%s: cookie %llu completed twice (statuses %s, %s)", f->be->uri,
                     (unsigned long long)c.cookie, kvn_err_name(b->status[k]),
                     kvn_err_name(c.status));
        b->seen[k] = 1;
        b->status[k] = c.status;
        taken++;
        if (c.status < 0) {
            assert_true(c.msg[0] != '\0');
            continue;
        }
        assert_int_equal(c.kind, KVN_XPORT_WRITE);
        assert_int_equal(c.len, b->len[k]);
        if (check_ok)
            bw_check_at_target(f, b, (uint32_t)k, "completed");
    }
    return taken;
}

/* Collects every op of the plan (nothing is posted meanwhile: held writes
 * must complete by themselves), each checked at the target as it completes;
 * then nothing more may come, and the whole span matches. */
static void bw_collect_ok(struct fx *f, struct bw_plan *b, uint64_t cookie0, int64_t deadline)
{
    uint32_t done = 0;
    while (done < b->n) {
        done += bw_take_stashed(f, b, cookie0, 1);
        if (done >= b->n)
            break;
        if (conf_now_ms() > deadline)
            fail_msg("%s: %u of %u WRITEs completed in time, none posted since "
                     "(%u outstanding): held writes never confirmed?",
                     f->be->uri, done, b->n, kvn_xport_outstanding(f->x));
        if (fx_progress(f) == 0)
            kvn_xport_wait(f->x, 5, NULL);
    }
    for (uint32_t k = 0; k < b->n; k++)
        if (b->status[k] != 0)
            fail_msg("%s: WRITE %u failed: %s", f->be->uri, k, kvn_err_name(b->status[k]));
    /* exactly once: nothing more turns up */
    for (int i = 0; i < 4; i++)
        fx_progress(f);
    assert_int_equal(f->n_cq, 0);
    assert_int_equal(kvn_xport_outstanding(f->x), 0);
}

/* The whole span: the writes' bytes, and the gaps still the background. */
static void bw_verify_span(struct fx *f, struct bw_plan *b, unsigned char *exp)
{
    conf_pattern_fill(exp, b->span, b->bg, b->base);
    for (uint32_t k = 0; k < b->n; k++)
        conf_pattern_fill(exp + (b->ro[k] - b->base), b->len[k], b->seed, b->ro[k]);
    if (tgt_hash(f, 0, b->base, b->span) != conf_hash64(exp, b->span)) {
        for (uint32_t k = 0; k < b->n; k++)
            bw_check_at_target(f, b, k, "completed");
        fail_msg("%s: a gap between the writes was overwritten", f->be->uri);
    }
}

static uint64_t bw_small_len(uint32_t k, uint64_t salt)
{
    return 1 + (k * 131u + salt * 17u + 7u) % 2049u; /* 1 .. 2049, odd spread */
}

static void test_batched_writes_many(void **state)
{
    struct fx *f = *state;
    NEED_BACKEND(f);
    size_t region = 4 * MiB;
    fx_start(f, 1, &region, 4 * MiB, NULL);
    struct bw_plan *b = fx_calloc(f, 1, sizeof(*b));
    uint64_t *len = fx_calloc(f, BW_MAX, sizeof(*len));
    unsigned char *exp = fx_calloc(f, 4 * MiB, 1);
    /* (n, ops per post call): one call, single-op calls, odd chunks, 64s */
    static const uint32_t plan[][2] = {{17, 17}, {33, 1}, {100, 7}, {1024, 64},
                                       {16, 16}, {1, 1},  {18, 5}};
    uint64_t cookie0 = 10000;
    for (size_t r = 0; r < sizeof(plan) / sizeof(plan[0]); r++) {
        uint32_t n = plan[r][0];
        for (uint32_t k = 0; k < n; k++)
            len[k] = bw_small_len(k, r);
        bw_plan(f, b, n, len, (r * 4099) % 8192, 600 + r, cookie0);
        bw_post(f, b, plan[r][1]);
        assert_int_equal(kvn_xport_outstanding(f->x), n);
        bw_collect_ok(f, b, cookie0, conf_now_ms() + CONF_OP_MS);
        bw_verify_span(f, b, exp);
        cookie0 += BW_MAX;
    }
}

static void test_batched_writes_large_mixed(void **state)
{
    struct fx *f = *state;
    NEED_BACKEND(f);
    size_t region = 16 * MiB;
    struct kvn_xport_attr a;
    big_op_attr(&a);
    fx_start(f, 1, &region, 16 * MiB, &a);
    struct bw_plan *b = fx_calloc(f, 1, sizeof(*b));
    unsigned char *exp = fx_calloc(f, 16 * MiB, 1);
    /* One batch: three writes above 2 MiB among 21 small ones. */
    uint64_t one[24];
    for (uint32_t k = 0; k < 24; k++)
        one[k] = bw_small_len(k, 3);
    one[1] = 2 * MiB + 1;
    one[9] = 3 * MiB + 7;
    one[22] = 2 * MiB + 4095;
    bw_plan(f, b, 24, one, 5, 700, 20000);
    bw_post(f, b, 24);
    bw_collect_ok(f, b, 20000, conf_now_ms() + CONF_OP_MS);
    bw_verify_span(f, b, exp);

    /* Across batches, posted without waiting: large | 17 small | large +
     * small | 5 small | large last (a window that ends on a large write). */
    uint64_t across[27];
    for (uint32_t k = 0; k < 27; k++)
        across[k] = bw_small_len(k, 5);
    across[0] = 2 * MiB + 3;
    across[18] = 4 * MiB + 5;
    across[26] = 2 * MiB + 1;
    bw_plan(f, b, 27, across, 3, 701, 30000);
    post_ok(f, 0, b->ops, 1);
    post_ok(f, 0, b->ops + 1, 17);
    post_ok(f, 0, b->ops + 18, 2);
    post_ok(f, 0, b->ops + 20, 5);
    post_ok(f, 0, b->ops + 25, 2);
    assert_int_equal(kvn_xport_outstanding(f->x), 27);
    bw_collect_ok(f, b, 30000, conf_now_ms() + CONF_OP_MS);
    bw_verify_span(f, b, exp);
}

/* One 1-byte WRITE to the last byte of target 0's region (unused by the
 * plans) and its completion: the connection is up (rxm connects on the first
 * op, which needs the target's progress) before the target is paused. */
static void bw_warm(struct fx *f, uint64_t cookie)
{
    xfer(f, 0, KVN_XPORT_WRITE, 0, kvn_xport_rmr_len(f->rmr[0]) - 1, 1, cookie);
}

/* Lets the paused target's initiator side run for a while (so writes get
 * sent and, on rxm, held), without posting; every WRITE reported meanwhile
 * must already be at the (paused) target.  Returns how many completed. */
static uint32_t bw_run_paused(struct fx *f, struct bw_plan *b, uint64_t cookie0)
{
    for (int i = 0; i < 40; i++)
        if (fx_progress(f) == 0)
            kvn_xport_wait(f->x, 5, NULL);
    return bw_take_stashed(f, b, cookie0, 1);
}

#define BW_HELD 40

/* After kvn_xport_disconnect(): every op of the plan completes exactly
 * once, with success or -ECANCELED, and the successful ones are at the
 * target.  Returns how many succeeded. */
static uint32_t bw_after_disconnect(struct fx *f, struct bw_plan *b, uint64_t cookie0,
                                    uint32_t before)
{
    fx_gather(f, b->n - before, conf_now_ms() + CONF_DEATH_BOUND_MS);
    uint32_t after = bw_take_stashed(f, b, cookie0, 0);
    if (before + after != b->n)
        fail_msg("%s: %u of %u WRITEs completed after a disconnect (%u outstanding)", f->be->uri,
                 before + after, b->n, kvn_xport_outstanding(f->x));
    assert_int_equal(kvn_xport_outstanding(f->x), 0);
    uint32_t n_ok = 0;
    for (uint32_t k = 0; k < b->n; k++) {
        if (b->status[k] != 0 && b->status[k] != -ECANCELED)
            fail_msg("%s: WRITE %u after a disconnect: %s, expected success or -ECANCELED",
                     f->be->uri, k, kvn_err_name(b->status[k]));
        n_ok += b->status[k] == 0;
    }
    for (int i = 0; i < 8; i++)
        fx_progress(f);
    assert_int_equal(f->n_cq, 0); /* never twice */
    return n_ok;
}

static void bw_verify_ok_ones(struct fx *f, struct bw_plan *b)
{
    for (uint32_t k = 0; k < b->n; k++)
        if (b->status[k] == 0)
            bw_check_at_target(f, b, k, "completed before the disconnect");
}

/* Connects peer 0 again (the old handle goes with its rmr). */
static void bw_reconnect(struct fx *f)
{
    struct kvn_err err;
    kvn_err_clear(&err);
    kvn_xport_rmr_free(f->rmr[0]); /* releases the disconnected handle */
    f->rmr[0] = NULL;
    f->peer[0] = NULL;
    int rc = kvn_xport_connect(f->x, f->addr[0], f->addr_len[0], &f->peer[0], &err);
    if (rc < 0)
        fail_msg("%s: reconnect: %s", f->be->uri, err.msg);
    rc = kvn_xport_rmr_unpack(f->peer[0], f->desc[0], f->desc_len[0], &f->rmr[0], &err);
    if (rc < 0)
        fail_msg("%s: rmr_unpack after reconnect: %s", f->be->uri, err.msg);
}

#define BW_ROUND_SPAN (128 * 1024) /* each round its own range: old writes may still land */

static void test_disconnect_with_held_writes(void **state)
{
    struct fx *f = *state;
    NEED_BACKEND(f);
    size_t region = 1 * MiB;
    fx_start(f, 1, &region, 1 * MiB, NULL);
    struct bw_plan *b = fx_calloc(f, 1, sizeof(*b));
    unsigned char *exp = fx_calloc(f, 1 * MiB, 1);
    uint64_t len[BW_HELD];
    for (uint32_t k = 0; k < BW_HELD; k++)
        len[k] = bw_small_len(k, 9);

    /* 1. Target paused: the writes are sent (rxm: held) but none can be
     * confirmed.  The target runs again before the disconnect (libfabric
     * 1.17 shm crashes a target whose initiator endpoint closes under
     * queued commands, see kvn_xport.h), but this side does not progress
     * in between: on rxm the writes stay held, their confirm unread. */
    bw_plan(f, b, BW_HELD, len, 0, 800, 40000);
    bw_warm(f, 39999);
    tgt_simple(f, 0, TGT_PAUSE);
    bw_post(f, b, BW_HELD);
    uint32_t before = bw_run_paused(f, b, 40000);
    tgt_send(f, 0, TGT_RESUME, NULL, 0);
    {
        /* its reply, read without progressing this domain */
        uint32_t type = 0;
        size_t rlen = 0;
        struct conf_status st;
        int rc = conf_chan_recv(f->kid[0].chan, CONF_REPLY_MS, &type, &st, sizeof(st), &rlen);
        if (rc != 0 || type != TGT_OK || rlen != sizeof(st) || st.status != 0)
            fail_msg("%s: TGT_RESUME: %s, type %u", f->be->uri, kvn_err_name(rc), type);
    }
    kvn_xport_disconnect(f->peer[0]);
    uint32_t n_ok = bw_after_disconnect(f, b, 40000, before);
    bw_verify_ok_ones(f, b);
    print_message("[  INFO    ] %s: disconnect with %d WRITEs to a paused target: %u done "
                  "before, %u ok and %u canceled in all\n",
                  f->be->uri, BW_HELD, before, n_ok, BW_HELD - n_ok);

    /* 2. Target running, disconnected as soon as the first 1 / 17 / 33
     * writes completed: on rxm the rest are held (sent, their confirm not
     * polled yet) or in flight. */
    static const uint32_t upto[] = {1, 17, 33, 1};
    for (size_t r = 0; r < sizeof(upto) / sizeof(upto[0]); r++) {
        uint64_t c0 = 41000 + r * 1000;
        bw_reconnect(f);
        bw_warm(f, c0 - 1);
        bw_plan(f, b, BW_HELD, len, (r + 1) * BW_ROUND_SPAN, 810 + r, c0);
        bw_post(f, b, r == 3 ? 1 : BW_HELD); /* last round: single-op posts */
        int64_t deadline = conf_now_ms() + CONF_OP_MS;
        before = 0;
        while (before < upto[r] && conf_now_ms() <= deadline) {
            if (fx_progress(f) == 0)
                kvn_xport_wait(f->x, 2, NULL);
            before += bw_take_stashed(f, b, c0, 0);
        }
        kvn_xport_disconnect(f->peer[0]);
        n_ok = bw_after_disconnect(f, b, c0, before);
        bw_verify_ok_ones(f, b);
        print_message("[  INFO    ] %s: disconnect once %u WRITEs completed: %u of %d done "
                      "before, %u ok and %u canceled in all\n",
                      f->be->uri, upto[r], before, BW_HELD, n_ok, BW_HELD - n_ok);
    }

    /* 3. Reconnect: the domain works with the same target. */
    bw_reconnect(f);
    bw_plan(f, b, BW_HELD, len, 7 * BW_ROUND_SPAN, 801, 50000);
    bw_post(f, b, BW_HELD);
    bw_collect_ok(f, b, 50000, conf_now_ms() + CONF_OP_MS);
    bw_verify_span(f, b, exp);
    assert_int_equal(tgt_hash_fenced(f, 0, b->base, b->span), conf_hash64(exp, b->span));
}

static void test_target_killed_with_held_writes(void **state)
{
    struct fx *f = *state;
    NEED_BACKEND(f);
    size_t regions[2] = {1 * MiB, 4 * MiB};
    fx_start(f, 2, regions, 2 * MiB, NULL);
    struct bw_plan *b = fx_calloc(f, 1, sizeof(*b));
    uint64_t len[BW_HELD + 10];
    for (uint32_t k = 0; k < BW_HELD + 10; k++)
        len[k] = bw_small_len(k, 11);
    bw_plan(f, b, BW_HELD + 10, len, 0, 900, 60000);
    bw_warm(f, 59999);
    tgt_simple(f, 0, TGT_PAUSE);
    post_ok(f, 0, b->ops, 25);
    post_ok(f, 0, b->ops + 25, BW_HELD + 10 - 25);
    uint32_t before = bw_run_paused(f, b, 60000);

    int64_t t_kill = conf_now_ms();
    assert_int_equal(kill_target(f, 0), 128 + 9);
    fx_gather(f, b->n - before, t_kill + CONF_DEATH_BOUND_MS);
    uint32_t after = bw_take_stashed(f, b, 60000, 0);
    int64_t t_done = conf_now_ms();
    if (before + after != b->n)
        fail_msg("%s: %u of %u WRITEs to a killed target completed within %d ms (%u outstanding)",
                 f->be->uri, before + after, b->n, CONF_DEATH_BOUND_MS,
                 kvn_xport_outstanding(f->x));
    assert_true(t_done - t_kill <= CONF_DEATH_BOUND_MS);
    assert_int_equal(kvn_xport_peer_outstanding(f->peer[0]), 0);
    uint32_t n_err = 0;
    for (uint32_t k = 0; k < b->n; k++)
        n_err += b->status[k] < 0;
    for (int i = 0; i < 8; i++)
        fx_progress(f);
    assert_int_equal(f->n_cq, 0); /* never twice */
    print_message("[  INFO    ] %s: target killed with %u WRITEs posted (%u done before): "
                  "%u ok, %u errors\n",
                  f->be->uri, b->n, before, b->n - n_err, n_err);

    survivor_works(f, 1);
    kvn_xport_disconnect(f->peer[0]);
    f->peer[0] = NULL;
}

/* ---- main ------------------------------------------------------------------- */

#define CONF_TEST(fn, be)                                                                          \
    {                                                                                              \
#fn, fn, fx_setup, fx_teardown, be                                                         \
    }

/*
 * Known failures, reported to the room that owns the backend: a (backend,
 * test) pair listed here runs only with KVN_CONF_PENDING=1, so that a test
 * registered with meson never fails for a known, reported reason.  The run
 * prints each one with its reason.  Delete the line once the backend passes.
 */
static const struct {
    const char *uri; /* "*" = every backend */
    const char *test;
    const char *why;
} conf_pending[] = {
    /* e.g. {"ucx+tcp", "test_close_with_live_objects", "target aborts in a UCX assertion"}, */
    {NULL, NULL, NULL}, /* none pending at the moment */
};

/* Matched against the URI asked for and the name of what it opened ("auto" -> "ucx"). */
static const char *pending_why(const struct conf_backend *be, const char *test)
{
    for (size_t i = 0; i < sizeof(conf_pending) / sizeof(conf_pending[0]); i++) {
        const char *u = conf_pending[i].uri;
        if (u && ((strcmp(u, "*") == 0 || strcmp(u, be->uri) == 0 || strcmp(u, be->name) == 0) &&
                  strcmp(conf_pending[i].test, test) == 0))
            return conf_pending[i].why;
    }
    return NULL;
}

static int run_backend(struct conf_backend *be)
{
    const struct CMUnitTest all[] = {
        CONF_TEST(test_bad_input, be),
        CONF_TEST(test_write_sizes, be),
        CONF_TEST(test_read_sizes, be),
        CONF_TEST(test_write_completion_is_delivery, be),
        CONF_TEST(test_sg_batches, be),
        CONF_TEST(test_outstanding_depths, be),
        CONF_TEST(test_out_of_bounds_refused, be),
        CONF_TEST(test_descriptor_rejected, be),
        CONF_TEST(test_notify_after_write, be),
        CONF_TEST(test_notify_bytes_and_limits, be),
        CONF_TEST(test_peer_killed_mid_transfer, be),
        CONF_TEST(test_wait_fd_drives_completions, be),
        CONF_TEST(test_close_with_live_objects, be),
        CONF_TEST(test_dead_peer_refused, be),
        CONF_TEST(test_batched_writes_many, be),
        CONF_TEST(test_batched_writes_large_mixed, be),
        CONF_TEST(test_disconnect_with_held_writes, be),
        CONF_TEST(test_target_killed_with_held_writes, be),
    };
    enum { N_ALL = sizeof(all) / sizeof(all[0]) };
    struct CMUnitTest run[N_ALL], pending[N_ALL];
    size_t n_run = 0, n_pending = 0;
    for (size_t i = 0; i < N_ALL; i++) {
        const char *why = pending_why(be, all[i].name);
        if (!why) {
            run[n_run++] = all[i];
            continue;
        }
        printf("# PENDING %s %s: %s\n", be->uri, all[i].name, why);
        pending[n_pending++] = all[i];
    }
    char name[128];
    snprintf(name, sizeof(name), "xport_conf[%s]", be->uri);
    int rc = _cmocka_run_group_tests(name, run, n_run, NULL, NULL);
    if (n_pending && getenv("KVN_CONF_PENDING")) {
        snprintf(name, sizeof(name), "xport_conf_pending[%s]", be->uri);
        rc += _cmocka_run_group_tests(name, pending, n_pending, NULL, NULL);
    }
    return rc;
}

int main(int argc, char **argv)
{
    struct conf_backend be[16];
    int n = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1) {
        for (int i = 1; i < argc && n < 16; i++, n++) {
            memset(&be[n], 0, sizeof(be[n]));
            snprintf(be[n].uri, sizeof(be[n].uri), "%s", argv[i]);
            be[n].notify_ordered = -1; /* unknown URI: from the backend it opens */
            for (size_t k = 0; k < sizeof(conf_backends) / sizeof(conf_backends[0]); k++)
                if (strcmp(argv[i], conf_backends[k].uri) == 0)
                    be[n].notify_ordered = conf_backends[k].notify_ordered;
        }
    } else {
        for (size_t k = 0; k < sizeof(conf_backends) / sizeof(conf_backends[0]); k++, n++) {
            memset(&be[n], 0, sizeof(be[n]));
            snprintf(be[n].uri, sizeof(be[n].uri), "%s", conf_backends[k].uri);
            be[n].notify_ordered = conf_backends[k].notify_ordered;
        }
    }
    /* KVN_CONF_FILTER=test_sg* runs only the matching tests (debugging). */
    if (getenv("KVN_CONF_FILTER"))
        cmocka_set_test_filter(getenv("KVN_CONF_FILTER"));
    int failed = 0, ran = 0;
    for (int i = 0; i < n; i++) {
        probe_backend(&be[i]);
        if (be[i].available == 0) {
            printf("# SKIP %s: %s\n", be[i].uri, be[i].why);
            continue;
        }
        ran++;
        if (be[i].available < 0) {
            printf("# FAIL %s: %s\n", be[i].uri, be[i].why);
            failed++;
            continue;
        }
        failed += run_backend(&be[i]) != 0;
    }
    if (ran == 0)
        return 77; /* every backend asked for is unavailable here: meson SKIP */
    return failed ? 1 : 0;
}
