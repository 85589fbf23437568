/*
 * bench_xfer.c - kvbench write / kvbench read: RMA bandwidth and latency over
 * any kvn_xport backend, with perftest's conventions.
 *
 *     server:  kvbench write -t ucx+tcp [-p 18515]
 *     client:  kvbench write -t ucx+tcp [-p 18515] [-s 1M | -a] [-n N] [-w W] [-q Q] HOST
 *
 * The two processes meet over a plain TCP socket (the bootstrap), trade their
 * transport address blobs and packed memory descriptors, connect to each other
 * and then the client drives every transfer; the server only lends its buffer
 * and keeps progressing its domain (UCX over TCP emulates put/get with active
 * messages, so a target that stops progressing stalls the client).
 *
 *   client                               server
 *     | -- HELLO {op, region, name} ---->  |   allocate + register the region
 *     | <-- ADDR blob, MR descriptor ----  |
 *     | --- ADDR blob ------------------>  |   both connect to each other
 *     |  for each size:                    |
 *     | --- SIZE {bytes, seed, slots} --->  |   write: zero [0,bytes*slots)
 *     | <-- READY ----------------------   |   read:  fill pattern(seed) there
 *     |  ... WRITE/READ x (warmup+iters)   |   (polls its domain meanwhile)
 *     |  ~~~ notify(run number) ~~~~~~~~>  |   transport message, ordered after
 *     | --- DONE {verify, run number} -->  |   the writes: waits for it, then
 *     | <-- RESULT {ok, bad offset} -----  |   write+verify: check pattern
 *     | --- BYE ------------------------>  |
 *
 * --buffer SIZE: both sides register a region of SIZE bytes (HELLO carries it,
 * as it carries the largest -s), and operation i uses slot i mod (SIZE / bytes)
 * at offset slot * bytes on both the local and the remote side, so consecutive
 * operations touch distinct pages (a KV cache moves distinct pages through
 * DRAM; one re-used buffer stays in the CPU cache).  Default SIZE = bytes: one
 * slot, offset 0, as before.  The slots an operation touches ("used": at most
 * warmup + iters of them) hold one pattern over [0, bytes * used), so --verify
 * checks every slot.
 *
 * Every frame is {u32 magic, u16 type, u16 zero, u32 payload length} in network
 * byte order followed by the payload; an ERROR frame carries a text message.
 * Every socket wait is bounded (--timeout), so both sides end by themselves.
 *
 * Figures (GB = 10^9 bytes, us = 10^-6 s), over the measured iterations only:
 *   BW average  bytes * iters / (end of run - first measured post); the run
 *               ends when the end-of-run notification, ordered after the
 *               writes, has completed: the bytes are at the target (as
 *               ucx_perftest stops its clock after the receiver's ack)
 *   BW peak     best rate over any window of W consecutive completions,
 *               W = max(4 * depth, iters / 16, 16) capped to iters (perftest's
 *               burst peak, computed in O(n) instead of O(n^2)); over UCX a
 *               WRITE completes locally, so bursts can exceed the link
 *   MsgRate     iters / elapsed, in millions per second
 *   lat p50/p99 post-to-completion time of each operation: with -q > 1 this is
 *               the loaded latency; -q 1 gives the unloaded one
 *
 * "-t memcpy" measures a single-thread memcpy floor in the same table: no
 * server, the copy runs in this process between two buffers of the size.
 */
#include "bench/bench.h"
#include "transport/kvn_xport.h"
#include "util/kvn_err.h"
#include "util/kvn_mem.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define XB_DEFAULT_PORT    18515
#define XB_DEFAULT_SIZE    65536u
#define XB_DEFAULT_ITERS   1000u
#define XB_DEFAULT_WARMUP  100u
#define XB_DEFAULT_DEPTH   16u
#define XB_DEFAULT_TIMEOUT 60
#define XB_MAX_SIZE        (1ull << 30)
#define XB_MAX_ITERS       100000000u
#define XB_MAX_DEPTH       1024u
#define XB_SWEEP_MIN       2ull
#define XB_SWEEP_MAX       (8ull << 20)
#define XB_CQ_BATCH        64
#define XB_STALL_NS        (30ull * 1000000000ull)

#define XB_MAGIC       0x4b564258u /* "KVBX" */
#define XB_VERSION     3u          /* 3: SIZE carries the slot count (--buffer) */
#define XB_MAX_PAYLOAD 65536u

enum xb_frame {
    XB_HELLO = 1,
    XB_ADDR,
    XB_MR,
    XB_SIZE,
    XB_READY,
    XB_DONE,
    XB_RESULT,
    XB_BYE,
    XB_ERROR,
};

enum xb_op { XB_OP_WRITE = 1, XB_OP_READ = 2 };

struct xb_opts {
    enum xb_op op;
    const char *uri;
    const char *host;      /* NULL: server */
    const char *bind_host; /* bootstrap listen address and transport bind_host */
    int port;
    uint64_t size;
    uint64_t buffer; /* --buffer: region bytes; 0 = the size of each op (one slot) */
    bool sweep;
    uint32_t iters;
    uint32_t warmup;
    uint32_t depth;
    bool verify;
    bool json;
    int timeout_s;
};

struct xb_result {
    uint64_t bytes;
    uint64_t buffer_bytes; /* bytes * slots: the region the ops cycle through */
    uint32_t iters;
    double bw_peak_gbps;
    double bw_avg_gbps;
    double msg_rate_mpps;
    double lat_p50_us;
    double lat_p99_us;
    int verified; /* -1: not checked, 0: mismatch, 1: ok */
};

/*
 * Every domain's buffer comes from kvn_xport_mem_alloc(), the memory the
 * domain is best at, as the node's engines and pools use it: UCX-allocated on
 * UCX domains (over ucx+sm only that memory is put/get directly; caller
 * memory falls back to UCX 1.13's software RMA, ~50x slower), elsewhere 2 MiB
 * aligned memory backed by huge pages when the kernel gives them
 * (util/kvn_mem.h; over ofi+shm a huge-page source halved the time of a
 * CMA read, BENCHMARKS.md §4).  -t memcpy uses the same mappings.
 */

/* --- small helpers ------------------------------------------------------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static const char *op_name(enum xb_op op)
{
    return op == XB_OP_WRITE ? "write" : "read";
}

/* Slots of `bytes` in the --buffer region: buffer / bytes, at least 1 (one slot without
 * --buffer, and in a sweep for the sizes above the region). */
static uint64_t slot_count(const struct xb_opts *o, uint64_t bytes)
{
    uint64_t n = o->buffer / bytes;
    return n ? n : 1;
}

/* The slots a run touches: operation i uses slot i mod slots. */
static uint64_t slots_used(const struct xb_opts *o, uint64_t slots)
{
    uint64_t total = (uint64_t)o->warmup + o->iters;
    return slots < total ? slots : total;
}

/* "4096", "64K", "64KiB", "1M", "1MB" (binary multiples, as perftest). */
static int parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!s || !*s || *s == '-')
        return -EINVAL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s)
        return -EINVAL;
    unsigned shift = 0;
    switch (*end) {
    case 'k':
    case 'K':
        shift = 10;
        end++;
        break;
    case 'm':
    case 'M':
        shift = 20;
        end++;
        break;
    case 'g':
    case 'G':
        shift = 30;
        end++;
        break;
    default:
        break;
    }
    if (shift && (!strcmp(end, "iB") || !strcmp(end, "B") || !strcmp(end, "ib")))
        end += strlen(end);
    if (*end)
        return -EINVAL;
    if (v > (UINT64_MAX >> shift))
        return -ERANGE;
    *out = (uint64_t)v << shift;
    return 0;
}

static int parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    errno = 0;
    if (!s || !*s || *s == '-')
        return -EINVAL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -EINVAL;
    *out = (uint32_t)v;
    return 0;
}

/* Deterministic bytes: word k of the pattern is splitmix64(seed + k). */
static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void pattern_fill(unsigned char *buf, uint64_t len, uint64_t seed)
{
    uint64_t k, words = len / 8;
    for (k = 0; k < words; k++) {
        uint64_t w = splitmix64(seed + k);
        memcpy(buf + k * 8, &w, 8);
    }
    if (len % 8) {
        uint64_t w = splitmix64(seed + words);
        memcpy(buf + words * 8, &w, len % 8);
    }
}

/* Returns the first mismatching offset, or len when every byte matches. */
static uint64_t pattern_check(const unsigned char *buf, uint64_t len, uint64_t seed)
{
    uint64_t k, words = len / 8;
    for (k = 0; k < words; k++) {
        uint64_t w = splitmix64(seed + k);
        if (memcmp(buf + k * 8, &w, 8)) {
            for (unsigned b = 0; b < 8; b++)
                if (buf[k * 8 + b] != ((unsigned char *)&w)[b])
                    return k * 8 + b;
        }
    }
    if (len % 8) {
        uint64_t w = splitmix64(seed + words);
        for (unsigned b = 0; b < len % 8; b++)
            if (buf[words * 8 + b] != ((unsigned char *)&w)[b])
                return words * 8 + b;
    }
    return len;
}

/* -t memcpy's buffers: the mappings kvn_xport_mem_alloc makes outside UCX. */
static void *buf_alloc(struct kvn_mem *m, uint64_t len)
{
    if (kvn_mem_map((size_t)(len ? len : 1), true, m, NULL) < 0)
        return NULL;
    kvn_mem_populate(m);
    return m->base;
}

static void put_u16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (24 - 8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (56 - 8 * i));
}

static uint16_t get_u16(const unsigned char *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t get_u32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint64_t get_u64(const unsigned char *p)
{
    return ((uint64_t)get_u32(p) << 32) | get_u32(p + 4);
}

/* --- the bootstrap socket -------------------------------------------------- */

/*
 * One side of the bootstrap connection. While waiting for the peer, the
 * waiting side keeps progressing its domain (x, when set): the peer may be
 * blocked on transport progress that only we can provide.
 */
struct xb_conn {
    int fd;
    struct kvn_xport *x;
    int timeout_ms; /* < 0: no deadline (the client's run; its death shows as EOF) */
    uint64_t mark;  /* server: the last end-of-run notification received */
};

/*
 * Polls the domain of the side that posts nothing itself (the server, or the
 * client between runs).  The only completions expected are the client's
 * end-of-run notifications (RECV, 8-byte run number, recorded in c->mark);
 * an op error here is the peer going away.
 */
static int progress_domain(struct xb_conn *c, struct kvn_err *err)
{
    struct kvn_xport_cqe cqe[XB_CQ_BATCH];
    if (!c->x)
        return 0;
    int n = kvn_xport_poll(c->x, cqe, XB_CQ_BATCH);
    if (n < 0)
        return kvn_err_set(err, n, "poll: %s", kvn_err_name(n));
    for (int i = 0; i < n; i++) {
        if (cqe[i].kind == KVN_XPORT_RECV) {
            if (cqe[i].status == 0 && cqe[i].len == 8)
                c->mark = get_u64(cqe[i].data);
            continue;
        }
        if (cqe[i].status < 0)
            return kvn_err_set(err, cqe[i].status, "unexpected completion error: %s", cqe[i].msg);
    }
    return n;
}

/* Waits until fd is readable (or writable), progressing the domain meanwhile. */
static int conn_wait(struct xb_conn *c, short events, struct kvn_err *err)
{
    uint64_t deadline =
        c->timeout_ms < 0 ? UINT64_MAX : now_ns() + (uint64_t)c->timeout_ms * 1000000ull;
    for (;;) {
        struct pollfd pfd = {.fd = c->fd, .events = events};
        int r = poll(&pfd, 1, c->x ? 0 : 100);
        if (r < 0 && errno != EINTR)
            return kvn_err_set(err, -errno, "bootstrap poll: %s", strerror(errno));
        if (r > 0)
            return 0;
        /* The socket is checked once per 64 progress calls: a poll() per
         * progress call cost the server ~20% of its CPU (perf, ofi+tcp). */
        for (int i = 0; c->x && i < 64; i++) {
            int rc = progress_domain(c, err);
            if (rc < 0)
                return rc;
        }
        if (now_ns() > deadline)
            return kvn_err_set(err, -ETIMEDOUT, "bootstrap: peer silent for %d ms", c->timeout_ms);
    }
}

static int conn_io(struct xb_conn *c, void *buf, size_t len, bool out, struct kvn_err *err)
{
    unsigned char *p = buf;
    while (len) {
        int rc = conn_wait(c, out ? POLLOUT : POLLIN, err);
        if (rc < 0)
            return rc;
        ssize_t n = out ? send(c->fd, p, len, MSG_NOSIGNAL) : recv(c->fd, p, len, 0);
        if (n == 0)
            return kvn_err_set(err, -ECONNRESET, "bootstrap: peer closed the connection");
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return kvn_err_set(err, -errno, "bootstrap %s: %s", out ? "send" : "recv",
                               strerror(errno));
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int frame_send(struct xb_conn *c, enum xb_frame type, const void *payload, uint32_t len,
                      struct kvn_err *err)
{
    unsigned char hdr[12];
    put_u32(hdr, XB_MAGIC);
    put_u16(hdr + 4, (uint16_t)type);
    put_u16(hdr + 6, 0);
    put_u32(hdr + 8, len);
    int rc = conn_io(c, hdr, sizeof(hdr), true, err);
    if (rc == 0 && len)
        rc = conn_io(c, (void *)payload, len, true, err);
    return rc;
}

/*
 * Receives one frame of the expected type into buf (capacity cap); *len gets
 * the payload length. An ERROR frame from the peer becomes -EPROTO with the
 * peer's message.
 */
static int frame_recv(struct xb_conn *c, enum xb_frame want, void *buf, uint32_t cap, uint32_t *len,
                      struct kvn_err *err)
{
    unsigned char hdr[12];
    int rc = conn_io(c, hdr, sizeof(hdr), false, err);
    if (rc < 0)
        return rc;
    uint32_t magic = get_u32(hdr), plen = get_u32(hdr + 8);
    uint16_t type = get_u16(hdr + 4);
    if (magic != XB_MAGIC)
        return kvn_err_set(err, -EPROTO, "bootstrap: bad magic 0x%08x (not a kvbench peer?)",
                           magic);
    if (plen > XB_MAX_PAYLOAD)
        return kvn_err_set(err, -EPROTO, "bootstrap: frame of %u bytes is too large", plen);
    if (type == XB_ERROR) {
        char msg[512];
        uint32_t take = plen < sizeof(msg) - 1 ? plen : (uint32_t)sizeof(msg) - 1;
        rc = conn_io(c, msg, take, false, err);
        if (rc < 0)
            return rc;
        msg[take] = '\0';
        return kvn_err_set(err, -EPROTO, "peer: %s", msg);
    }
    if (type != want)
        return kvn_err_set(err, -EPROTO, "bootstrap: got frame type %u, expected %u", type,
                           (unsigned)want);
    if (plen > cap)
        return kvn_err_set(err, -EPROTO, "bootstrap: frame type %u of %u bytes exceeds %u", type,
                           plen, cap);
    if (plen) {
        rc = conn_io(c, buf, plen, false, err);
        if (rc < 0)
            return rc;
    }
    *len = plen;
    return 0;
}

static void frame_send_error(struct xb_conn *c, const char *msg)
{
    struct kvn_err ignored;
    frame_send(c, XB_ERROR, msg, (uint32_t)strlen(msg), &ignored);
}

static int tcp_listen(const char *host, int port, int *out_fd, int *out_port, struct kvn_err *err)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *ai = NULL;
    char pstr[16];
    snprintf(pstr, sizeof(pstr), "%d", port);
    int rc = getaddrinfo(host, pstr, &hints, &ai);
    if (rc)
        return kvn_err_set(err, -EINVAL, "bootstrap address %s: %s", host ? host : "*",
                           gai_strerror(rc));
    int fd = -1, last = 0;
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            last = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 1) == 0)
            break;
        last = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0)
        return kvn_err_set(err, -last, "bootstrap listen on port %d: %s", port, strerror(last));
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    *out_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port);
    *out_fd = fd;
    return 0;
}

/* Bootstrap sockets: no Nagle, and keepalives so that a peer host that
 * vanishes without a FIN is noticed within ~25 s. */
static void tune_socket(int fd)
{
    int one = 1, idle = 10, intvl = 5, cnt = 3;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
}

static int tcp_accept(int lfd, int timeout_ms, int *out, struct kvn_err *err)
{
    struct pollfd pfd = {.fd = lfd, .events = POLLIN};
    int r;
    do {
        r = poll(&pfd, 1, timeout_ms);
    } while (r < 0 && errno == EINTR);
    if (r == 0)
        return kvn_err_set(err, -ETIMEDOUT, "no client connected within %d s", timeout_ms / 1000);
    if (r < 0)
        return kvn_err_set(err, -errno, "bootstrap accept: %s", strerror(errno));
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        return kvn_err_set(err, -errno, "bootstrap accept: %s", strerror(errno));
    tune_socket(fd);
    *out = fd;
    return 0;
}

/* Connects to host:port, retrying refused connections until the deadline (the
 * server may still be starting). */
static int tcp_connect(const char *host, int port, int timeout_ms, int *out, struct kvn_err *err)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    char pstr[16];
    snprintf(pstr, sizeof(pstr), "%d", port);
    int rc = getaddrinfo(host, pstr, &hints, &ai);
    if (rc)
        return kvn_err_set(err, -EINVAL, "server %s: %s", host, gai_strerror(rc));
    uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000ull;
    int last = ECONNREFUSED;
    for (;;) {
        for (struct addrinfo *a = ai; a; a = a->ai_next) {
            int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, 0);
            if (fd < 0) {
                last = errno;
                continue;
            }
            if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
                tune_socket(fd);
                freeaddrinfo(ai);
                *out = fd;
                return 0;
            }
            last = errno;
            close(fd);
        }
        if (now_ns() > deadline || (last != ECONNREFUSED && last != EINTR))
            break;
        struct timespec ts = {0, 100 * 1000000};
        nanosleep(&ts, NULL);
    }
    freeaddrinfo(ai);
    return kvn_err_set(err, -last, "connect to %s:%d: %s", host, port, strerror(last));
}

/* --- the shared session state -------------------------------------------- */

struct xb_session {
    struct xb_opts *o;
    struct kvn_xport *x;
    struct kvn_xport_peer *peer;
    struct kvn_xport_mr *mr;
    struct kvn_xport_rmr *rmr; /* client: the server's buffer */
    unsigned char *buf;
    uint64_t buf_len;
    struct xb_conn conn;
    uint64_t runs; /* client: sizes run so far (the end-of-run number) */
};

static void session_close(struct xb_session *s)
{
    if (s->rmr)
        kvn_xport_rmr_free(s->rmr);
    if (s->peer)
        kvn_xport_disconnect(s->peer);
    if (s->mr)
        kvn_xport_mr_dereg(s->mr, NULL);
    if (s->buf)
        (void)kvn_xport_mem_free(s->x, s->buf, (size_t)s->buf_len, NULL);
    if (s->x)
        kvn_xport_close(s->x);
    if (s->conn.fd >= 0)
        close(s->conn.fd);
    memset(s, 0, sizeof(*s));
    s->conn.fd = -1;
}

static int session_open(struct xb_session *s, uint64_t buf_len, struct kvn_err *err)
{
    struct kvn_xport_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.max_outstanding = s->o->depth > 64 ? s->o->depth : 64;
    attr.bind_host = s->o->bind_host;
    int rc = kvn_xport_open(s->o->uri, &attr, &s->x, err);
    if (rc < 0)
        return rc;
    s->buf_len = buf_len;
    void *p = NULL;
    rc = kvn_xport_mem_alloc(s->x, (size_t)buf_len, &p, err);
    if (rc < 0)
        return rc;
    s->buf = p;
    memset(s->buf, 0, buf_len); /* fault the pages in before timing (UCX maps lazily) */
    return kvn_xport_mr_reg(s->x, s->buf, buf_len,
                            KVN_XPORT_ACCESS_LOCAL | KVN_XPORT_ACCESS_REMOTE_READ |
                                KVN_XPORT_ACCESS_REMOTE_WRITE,
                            &s->mr, err);
}

static int send_blobs(struct xb_session *s, bool with_mr, struct kvn_err *err)
{
    unsigned char blob[XB_MAX_PAYLOAD];
    size_t len = sizeof(blob);
    int rc = kvn_xport_address(s->x, blob, &len, err);
    if (rc < 0)
        return rc;
    rc = frame_send(&s->conn, XB_ADDR, blob, (uint32_t)len, err);
    if (rc < 0 || !with_mr)
        return rc;
    len = sizeof(blob);
    rc = kvn_xport_mr_pack(s->mr, blob, &len, err);
    if (rc < 0)
        return rc;
    return frame_send(&s->conn, XB_MR, blob, (uint32_t)len, err);
}

static int recv_addr_and_connect(struct xb_session *s, struct kvn_err *err)
{
    unsigned char blob[XB_MAX_PAYLOAD];
    uint32_t len;
    int rc = frame_recv(&s->conn, XB_ADDR, blob, sizeof(blob), &len, err);
    if (rc < 0)
        return rc;
    return kvn_xport_connect(s->x, blob, len, &s->peer, err);
}

/* --- server ---------------------------------------------------------------- */

static int server_size(struct xb_session *s, const unsigned char *p, uint32_t len, uint64_t *bytes,
                       uint64_t *seed, struct kvn_err *err)
{
    if (len != 24)
        return kvn_err_set(err, -EPROTO, "SIZE frame of %u bytes, expected 24", len);
    *bytes = get_u64(p);
    *seed = get_u64(p + 8);
    uint64_t slots = get_u64(p + 16);
    if (*bytes == 0 || *bytes > s->buf_len)
        return kvn_err_set(err, -EPROTO, "size %" PRIu64 " outside the %" PRIu64 "-byte buffer",
                           *bytes, s->buf_len);
    if (slots == 0 || slots > s->buf_len / *bytes)
        return kvn_err_set(err, -EPROTO,
                           "%" PRIu64 " slots of %" PRIu64 " bytes exceed the %" PRIu64
                           "-byte buffer",
                           slots, *bytes, s->buf_len);
    *bytes *= slots; /* from here on: the used part of the region */
    if (s->o->op == XB_OP_WRITE)
        memset(s->buf, 0, *bytes);
    else
        pattern_fill(s->buf, *bytes, *seed);
    return 0;
}

/*
 * Waits (progressing) for the client's end-of-run notification number run:
 * kvn_xport_notify orders it after the run's WRITEs on every backend that
 * completes writes before delivery (UCX flushes first; ofi uses delivery
 * completion; verbs RC is in order), so once it is here every byte has
 * landed and the buffer may be checked, reused or unregistered.  Without
 * this barrier a server could unmap its buffer while UCX-over-TCP puts were
 * still arriving (seen: ucp_put_handler abort on a BYE right after the run).
 */
static int server_barrier(struct xb_session *s, uint64_t run, struct kvn_err *err)
{
    uint64_t deadline = now_ns() + (uint64_t)s->conn.timeout_ms * 1000000ull;
    while (s->conn.mark < run) {
        int rc = progress_domain(&s->conn, err);
        if (rc < 0)
            return rc;
        if (now_ns() > deadline)
            return kvn_err_set(err, -ETIMEDOUT,
                               "no end-of-run notification from the client "
                               "within %d ms",
                               s->conn.timeout_ms);
    }
    return 0;
}

static int run_server(struct xb_opts *o, struct kvn_err *err)
{
    struct xb_session s;
    memset(&s, 0, sizeof(s));
    s.o = o;
    s.conn.fd = -1;
    s.conn.timeout_ms = o->timeout_s * 1000;

    int lfd = -1, port = 0;
    /* "-b any" means every interface, for the transport as for the bootstrap. */
    const char *lhost = o->bind_host && strcmp(o->bind_host, "any") ? o->bind_host : NULL;
    int rc = tcp_listen(lhost, o->port, &lfd, &port, err);
    if (rc < 0)
        return rc;
    printf("kvbench %s server: transport %s, listening on %s:%d\n", op_name(o->op), o->uri,
           lhost ? lhost : "*", port);
    fflush(stdout);

    rc = tcp_accept(lfd, o->timeout_s * 1000, &s.conn.fd, err);
    close(lfd);
    if (rc < 0)
        return rc;

    unsigned char hello[128];
    uint32_t len;
    rc = frame_recv(&s.conn, XB_HELLO, hello, sizeof(hello) - 1, &len, err);
    if (rc < 0)
        goto out;
    if (len < 16) {
        rc = kvn_err_set(err, -EPROTO, "HELLO of %u bytes is truncated", len);
        goto refuse;
    }
    hello[len] = '\0';
    uint32_t ver = get_u32(hello), op = get_u32(hello + 4);
    uint64_t max = get_u64(hello + 8);
    if (ver != XB_VERSION) {
        rc = kvn_err_set(err, -EPROTO, "client speaks bootstrap version %u, we speak %u", ver,
                         XB_VERSION);
        goto refuse;
    }
    if (op != (uint32_t)o->op) {
        rc = kvn_err_set(err, -EPROTO, "client runs '%s', this server runs '%s'",
                         op == XB_OP_WRITE  ? "write"
                         : op == XB_OP_READ ? "read"
                                            : "?",
                         op_name(o->op));
        goto refuse;
    }
    if (max == 0 || max > XB_MAX_SIZE) {
        rc = kvn_err_set(err, -EPROTO, "client asks for %" PRIu64 " bytes (limit %llu)", max,
                         (unsigned long long)XB_MAX_SIZE);
        goto refuse;
    }
    rc = session_open(&s, max, err);
    if (rc < 0)
        goto refuse;
    const char *cname = (const char *)hello + 16;
    if (strcmp(cname, kvn_xport_name(s.x))) {
        rc = kvn_err_set(err, -EPROTO, "client uses transport '%s', this server '%s'", cname,
                         kvn_xport_name(s.x));
        goto refuse;
    }
    s.conn.x = s.x;
    rc = send_blobs(&s, true, err);
    if (rc < 0)
        goto out;
    rc = recv_addr_and_connect(&s, err);
    if (rc < 0)
        goto refuse;

    /* Serve sizes until BYE, progressing the domain between frames. */
    for (;;) {
        unsigned char hdr[12], pay[64];
        rc = conn_io(&s.conn, hdr, sizeof(hdr), false, err);
        if (rc < 0)
            goto out;
        uint32_t plen = get_u32(hdr + 8);
        uint16_t type = get_u16(hdr + 4);
        if (get_u32(hdr) != XB_MAGIC || plen > sizeof(pay)) {
            rc = kvn_err_set(err, -EPROTO, "bootstrap: malformed frame from the client");
            goto refuse;
        }
        if (plen && (rc = conn_io(&s.conn, pay, plen, false, err)) < 0)
            goto out;
        if (type == XB_BYE)
            break;
        if (type != XB_SIZE) {
            rc = kvn_err_set(err, -EPROTO, "bootstrap: unexpected frame type %u", type);
            goto refuse;
        }
        uint64_t bytes = 0, seed = 0; /* bytes: of all used slots */
        rc = server_size(&s, pay, plen, &bytes, &seed, err);
        if (rc < 0)
            goto refuse;
        if ((rc = frame_send(&s.conn, XB_READY, NULL, 0, err)) < 0)
            goto out;
        /* A run lasts as long as it lasts (-n, -s): no --timeout here.  A
         * client that dies closes the socket (or stops answering keepalives),
         * and a live one is bounded by its own stall detection. */
        int saved = s.conn.timeout_ms;
        s.conn.timeout_ms = -1;
        rc = frame_recv(&s.conn, XB_DONE, pay, sizeof(pay), &plen, err);
        s.conn.timeout_ms = saved;
        if (rc < 0)
            goto out;
        if (plen != 9) {
            rc = kvn_err_set(err, -EPROTO, "DONE of %u bytes, expected 9", plen);
            goto refuse;
        }
        if ((rc = server_barrier(&s, get_u64(pay + 1), err)) < 0)
            goto refuse;
        unsigned char res[16];
        uint64_t bad = bytes;
        if (pay[0] && o->op == XB_OP_WRITE)
            bad = pattern_check(s.buf, bytes, seed);
        put_u64(res, bad == bytes ? 1 : 0);
        put_u64(res + 8, bad);
        if ((rc = frame_send(&s.conn, XB_RESULT, res, sizeof(res), err)) < 0)
            goto out;
    }
    rc = 0;
    goto out;
refuse:
    frame_send_error(&s.conn, err ? err->msg : "refused");
out:
    session_close(&s);
    return rc;
}

/* --- client ---------------------------------------------------------------- */

struct xb_run {
    uint64_t *post_ns; /* by cookie */
    uint64_t *lat_ns;  /* measured ops, by cookie - warmup */
    uint64_t *done_ns; /* measured completions, in completion order */
    struct kvn_xport_op *ops;
    struct kvn_xport_sge *sges;
};

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double percentile_us(uint64_t *sorted, uint32_t n, double p)
{
    uint64_t idx = (uint64_t)(p * (double)(n - 1) + 0.5);
    return (double)sorted[idx] / 1000.0;
}

/* Turns raw timestamps into figures; sorts lat_ns in place. */
static void compute_figures(struct xb_run *r, const struct xb_opts *o, uint64_t bytes, uint64_t t0,
                            uint64_t t_end, struct xb_result *res)
{
    uint32_t n = o->iters;
    double elapsed = (double)(t_end > t0 ? t_end - t0 : 1);
    res->bytes = bytes;
    res->iters = n;
    res->bw_avg_gbps = (double)bytes * n / elapsed;
    res->msg_rate_mpps = (double)n * 1000.0 / elapsed;

    uint32_t w = 4 * o->depth;
    if (w < n / 16)
        w = n / 16;
    if (w < 16)
        w = 16;
    if (w > n)
        w = n;
    double peak = res->bw_avg_gbps;
    for (uint32_t j = 0; j + w <= n; j++) {
        uint64_t start = j == 0 ? t0 : r->done_ns[j - 1];
        uint64_t span = r->done_ns[j + w - 1] - start;
        if (span == 0)
            continue; /* completions reaped in the same poll: no time information */
        double bw = (double)bytes * w / (double)span;
        if (bw > peak)
            peak = bw;
    }
    res->bw_peak_gbps = peak;

    qsort(r->lat_ns, n, sizeof(uint64_t), cmp_u64);
    res->lat_p50_us = percentile_us(r->lat_ns, n, 0.50);
    res->lat_p99_us = percentile_us(r->lat_ns, n, 0.99);
}

static void progress_show(const struct xb_opts *o, uint64_t bytes, uint32_t done, uint32_t total,
                          uint64_t *next_ns, uint64_t now)
{
    if (now < *next_ns)
        return;
    *next_ns = now + 500000000ull;
    fprintf(stderr, "\r  %s %" PRIu64 " B: %u/%u   ", op_name(o->op), bytes, done, total);
}

static int run_transfers(struct xb_session *s, struct xb_run *r, uint64_t bytes, uint64_t slots,
                         struct xb_result *res, struct kvn_err *err)
{
    const struct xb_opts *o = s->o;
    uint32_t total = o->warmup + o->iters, posted = 0, completed = 0, measured = 0;
    uint32_t inflight = 0;
    struct kvn_xport_cqe cqe[XB_CQ_BATCH];
    bool show = isatty(STDERR_FILENO);
    uint64_t next_show = now_ns() + 1000000000ull, last_progress = now_ns();
    uint64_t slot = 0; /* of the next op to post: (cookie) mod slots */

    for (uint32_t i = 0; i < o->depth; i++) {
        r->sges[i].mr = s->mr;
        r->sges[i].offset = 0;
        r->sges[i].len = bytes;
        r->ops[i].kind = o->op == XB_OP_WRITE ? KVN_XPORT_WRITE : KVN_XPORT_READ;
        r->ops[i].local = &r->sges[i];
        r->ops[i].n_local = 1;
        r->ops[i].remote = s->rmr;
        r->ops[i].remote_offset = 0;
    }
    while (completed < total) {
        uint32_t avail = o->depth - inflight;
        if (avail > total - posted)
            avail = total - posted;
        if (avail) {
            uint64_t sl = slot;
            for (uint32_t i = 0; i < avail; i++) {
                r->ops[i].cookie = posted + i;
                r->sges[i].offset = sl * bytes;
                r->ops[i].remote_offset = sl * bytes;
                if (++sl == slots)
                    sl = 0;
            }
            uint64_t t = now_ns();
            int rc = kvn_xport_post(s->peer, r->ops, avail, err);
            if (rc == -EAGAIN) {
                avail = 0; /* the domain is full: reap first */
            } else if (rc < 0) {
                return rc;
            } else {
                slot = sl;
                for (uint32_t i = 0; i < avail; i++)
                    r->post_ns[posted + i] = t;
                posted += avail;
                inflight += avail;
            }
        }
        int n = kvn_xport_poll(s->x, cqe, XB_CQ_BATCH);
        if (n < 0)
            return kvn_err_set(err, n, "poll: %s", kvn_err_name(n));
        uint64_t t = now_ns();
        for (int i = 0; i < n; i++) {
            if (cqe[i].kind == KVN_XPORT_RECV || cqe[i].kind == KVN_XPORT_SEND)
                continue;
            if (cqe[i].status < 0)
                return kvn_err_set(err, cqe[i].status, "%s of %" PRIu64 " B failed: %s",
                                   op_name(o->op), bytes, cqe[i].msg);
            uint64_t id = cqe[i].cookie;
            if (id >= posted)
                return kvn_err_set(err, -EPROTO, "completion for unknown cookie %" PRIu64, id);
            if (id >= o->warmup) {
                r->lat_ns[id - o->warmup] = t - r->post_ns[id];
                r->done_ns[measured++] = t;
            }
            completed++;
            inflight--;
        }
        if (n > 0)
            last_progress = t;
        else if (t - last_progress > XB_STALL_NS)
            return kvn_err_set(err, -ETIMEDOUT, "no completion for 30 s (%u of %u done)", completed,
                               total);
        if (show)
            progress_show(o, bytes, completed, total, &next_show, t);
    }
    if (show && next_show > 0)
        fprintf(stderr, "\r%60s\r", "");
    return 0;
}

/*
 * After a run: one notification carrying the run number, and its SEND
 * completion awaited.  The server waits for it before checking or releasing
 * its buffer (see server_barrier).  Not part of the measured time.
 */
static int client_barrier(struct xb_session *s, uint64_t run, struct kvn_err *err)
{
    unsigned char msg[8];
    put_u64(msg, run);
    int rc = kvn_xport_notify(s->peer, msg, sizeof(msg), UINT64_MAX, err);
    if (rc < 0)
        return rc;
    uint64_t deadline = now_ns() + XB_STALL_NS;
    for (;;) {
        struct kvn_xport_cqe cqe[XB_CQ_BATCH];
        int n = kvn_xport_poll(s->x, cqe, XB_CQ_BATCH);
        if (n < 0)
            return kvn_err_set(err, n, "poll: %s", kvn_err_name(n));
        for (int i = 0; i < n; i++) {
            if (cqe[i].kind != KVN_XPORT_SEND || cqe[i].cookie != UINT64_MAX)
                continue;
            if (cqe[i].status < 0)
                return kvn_err_set(err, cqe[i].status, "end-of-run notification failed: %s",
                                   cqe[i].msg);
            return 0;
        }
        if (now_ns() > deadline)
            return kvn_err_set(err, -ETIMEDOUT, "end-of-run notification not sent in 30 s");
    }
}

static int client_size(struct xb_session *s, struct xb_run *r, uint64_t bytes, uint64_t seed,
                       struct xb_result *res, struct kvn_err *err)
{
    const struct xb_opts *o = s->o;
    unsigned char pay[24];
    uint32_t len;
    uint64_t slots = slot_count(o, bytes), used = slots_used(o, slots);

    res->buffer_bytes = bytes * slots;
    if (o->op == XB_OP_WRITE)
        pattern_fill(s->buf, bytes * used, seed);
    else
        memset(s->buf, 0, bytes * used);
    put_u64(pay, bytes);
    put_u64(pay + 8, seed);
    put_u64(pay + 16, used);
    int rc = frame_send(&s->conn, XB_SIZE, pay, 24, err);
    if (rc == 0)
        rc = frame_recv(&s->conn, XB_READY, pay, sizeof(pay), &len, err);
    if (rc == 0)
        rc = run_transfers(s, r, bytes, slots, res, err);
    if (rc == 0)
        rc = client_barrier(s, ++s->runs, err);
    if (rc < 0)
        return rc;
    /* The run ends when its bytes are at the target: the barrier's completion
     * (as ucx_perftest, whose put_bw clock stops after the receiver's ack and
     * a flush).  Over backends whose WRITE completion is local (UCX) the last
     * op completion alone would overstate the bandwidth. */
    uint64_t t_end = now_ns();
    compute_figures(r, o, bytes, r->post_ns[o->warmup], t_end, res);
    unsigned char done[9];
    done[0] = o->verify;
    put_u64(done + 1, s->runs);
    rc = frame_send(&s->conn, XB_DONE, done, sizeof(done), err);
    if (rc == 0)
        rc = frame_recv(&s->conn, XB_RESULT, pay, sizeof(pay), &len, err);
    if (rc < 0)
        return rc;
    if (len != 16)
        return kvn_err_set(err, -EPROTO, "RESULT of %u bytes, expected 16", len);
    res->verified = -1;
    if (o->verify) {
        uint64_t all = bytes * used;
        uint64_t bad = o->op == XB_OP_WRITE ? get_u64(pay + 8) : pattern_check(s->buf, all, seed);
        res->verified = bad == all;
        if (!res->verified)
            return kvn_err_set(err, -EIO,
                               "verify: %" PRIu64 "-byte %s differs at offset %" PRIu64
                               " (slot %" PRIu64 " of %" PRIu64 ")",
                               bytes, op_name(o->op), bad, bad / bytes, used);
    }
    return 0;
}

static void print_header(const struct xb_opts *o, const char *name)
{
    if (o->json)
        return;
    printf("---------------------------------------------------------------------------------------"
           "\n");
    printf(" kvbench %s  transport %s  depth %u  warmup %u\n", op_name(o->op), name, o->depth,
           o->warmup);
    printf("---------------------------------------------------------------------------------------"
           "\n");
    printf(" #bytes     #iterations    BW peak[GB/s]    BW average[GB/s]   MsgRate[Mpps]"
           "    lat p50[us]    lat p99[us]\n");
}

static int print_result(const struct xb_opts *o, const char *name, const struct xb_result *r)
{
    if (!o->json) {
        printf(" %-10" PRIu64 " %-14u %-16.3f %-18.3f %-16.6f %-14.2f %-14.2f%s\n", r->bytes,
               r->iters, r->bw_peak_gbps, r->bw_avg_gbps, r->msg_rate_mpps, r->lat_p50_us,
               r->lat_p99_us, r->verified == 1 ? "  verified" : "");
        fflush(stdout);
        return 0;
    }
    cJSON *j = cJSON_CreateObject();
    if (!j)
        return -ENOMEM;
    cJSON_AddStringToObject(j, "test", op_name(o->op));
    cJSON_AddStringToObject(j, "transport", name);
    cJSON_AddNumberToObject(j, "bytes", (double)r->bytes);
    cJSON_AddNumberToObject(j, "buffer_bytes", (double)r->buffer_bytes);
    cJSON_AddNumberToObject(j, "iterations", r->iters);
    cJSON_AddNumberToObject(j, "warmup", o->warmup);
    cJSON_AddNumberToObject(j, "depth", o->depth);
    cJSON_AddNumberToObject(j, "bw_peak_gbps", r->bw_peak_gbps);
    cJSON_AddNumberToObject(j, "bw_avg_gbps", r->bw_avg_gbps);
    cJSON_AddNumberToObject(j, "msg_rate_mpps", r->msg_rate_mpps);
    cJSON_AddNumberToObject(j, "lat_p50_us", r->lat_p50_us);
    cJSON_AddNumberToObject(j, "lat_p99_us", r->lat_p99_us);
    if (r->verified >= 0)
        cJSON_AddBoolToObject(j, "verified", r->verified == 1);
    else
        cJSON_AddNullToObject(j, "verified");
    char *txt = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!txt)
        return -ENOMEM;
    printf("%s\n", txt);
    fflush(stdout);
    free(txt);
    return 0;
}

static void run_free(struct xb_run *r)
{
    free(r->post_ns);
    free(r->lat_ns);
    free(r->done_ns);
    free(r->ops);
    free(r->sges);
}

static int run_alloc(struct xb_run *r, const struct xb_opts *o, struct kvn_err *err)
{
    uint64_t total = (uint64_t)o->warmup + o->iters;
    r->post_ns = calloc(total, sizeof(uint64_t));
    r->lat_ns = calloc(o->iters, sizeof(uint64_t));
    r->done_ns = calloc(o->iters, sizeof(uint64_t));
    r->ops = calloc(o->depth, sizeof(*r->ops));
    r->sges = calloc(o->depth, sizeof(*r->sges));
    if (!r->post_ns || !r->lat_ns || !r->done_ns || !r->ops || !r->sges)
        return kvn_err_set(err, -ENOMEM, "cannot allocate timestamps for %" PRIu64 " iterations",
                           total);
    return 0;
}

static uint64_t max_size(const struct xb_opts *o)
{
    return o->sweep ? XB_SWEEP_MAX : o->size;
}

/* Bytes each side allocates and registers: the --buffer region, or the largest size. */
static uint64_t region_size(const struct xb_opts *o)
{
    return o->buffer > max_size(o) ? o->buffer : max_size(o);
}

static int run_client(struct xb_opts *o, struct kvn_err *err)
{
    struct xb_session s;
    struct xb_run r;
    memset(&s, 0, sizeof(s));
    memset(&r, 0, sizeof(r));
    s.o = o;
    s.conn.fd = -1;
    s.conn.timeout_ms = o->timeout_s * 1000;

    int rc = run_alloc(&r, o, err);
    if (rc < 0)
        goto out;
    /* Open the transport first: a bad URI fails before anything else. */
    rc = session_open(&s, region_size(o), err);
    if (rc < 0)
        goto out;
    rc = tcp_connect(o->host, o->port, o->timeout_s * 1000, &s.conn.fd, err);
    if (rc < 0)
        goto out;
    unsigned char hello[128];
    const char *name = kvn_xport_name(s.x);
    size_t nlen = strlen(name);
    if (nlen > sizeof(hello) - 17)
        nlen = sizeof(hello) - 17;
    put_u32(hello, XB_VERSION);
    put_u32(hello + 4, (uint32_t)o->op);
    put_u64(hello + 8, region_size(o));
    memcpy(hello + 16, name, nlen);
    rc = frame_send(&s.conn, XB_HELLO, hello, (uint32_t)(16 + nlen), err);
    if (rc < 0)
        goto out;
    s.conn.x = s.x;

    unsigned char blob[XB_MAX_PAYLOAD];
    uint32_t len;
    rc = frame_recv(&s.conn, XB_ADDR, blob, sizeof(blob), &len, err);
    if (rc < 0)
        goto out;
    rc = kvn_xport_connect(s.x, blob, len, &s.peer, err);
    if (rc < 0)
        goto refuse;
    rc = frame_recv(&s.conn, XB_MR, blob, sizeof(blob), &len, err);
    if (rc < 0)
        goto out;
    rc = kvn_xport_rmr_unpack(s.peer, blob, len, &s.rmr, err);
    if (rc < 0)
        goto refuse;
    if (kvn_xport_rmr_len(s.rmr) < region_size(o)) {
        rc = kvn_err_set(err, -EPROTO, "server registered %zu bytes, need %" PRIu64,
                         kvn_xport_rmr_len(s.rmr), region_size(o));
        goto refuse;
    }
    rc = send_blobs(&s, false, err);
    if (rc < 0)
        goto out;

    print_header(o, name);
    uint64_t lo = o->sweep ? XB_SWEEP_MIN : o->size, hi = max_size(o), seed = (uint64_t)getpid();
    for (uint64_t bytes = lo; bytes <= hi; bytes *= 2) {
        struct xb_result res;
        memset(&res, 0, sizeof(res));
        rc = client_size(&s, &r, bytes, seed + bytes, &res, err);
        if (rc < 0) {
            if (rc != -EIO)
                goto refuse;
            print_result(o, name, &res);
            goto out;
        }
        if (print_result(o, name, &res) < 0) {
            rc = kvn_err_set(err, -ENOMEM, "out of memory formatting JSON");
            goto refuse;
        }
        if (!o->sweep)
            break;
    }
    rc = frame_send(&s.conn, XB_BYE, NULL, 0, err);
    goto out;
refuse:
    frame_send_error(&s.conn, err ? err->msg : "client failed");
out:
    session_close(&s);
    run_free(&r);
    return rc;
}

/* -t memcpy: the single-thread copy floor, same table, no server. */
static int run_memcpy(struct xb_opts *o, struct kvn_err *err)
{
    struct xb_run r;
    memset(&r, 0, sizeof(r));
    uint64_t hi = max_size(o), region = region_size(o);
    struct kvn_mem ma, mb;
    unsigned char *a = buf_alloc(&ma, region), *b = buf_alloc(&mb, region);
    int rc = run_alloc(&r, o, err);
    if (rc == 0 && (!a || !b))
        rc = kvn_err_set(err, -ENOMEM, "cannot allocate two %" PRIu64 "-byte buffers", region);
    if (rc < 0)
        goto out;
    o->depth = 1;
    print_header(o, "memcpy");
    for (uint64_t bytes = o->sweep ? XB_SWEEP_MIN : o->size; bytes <= hi; bytes *= 2) {
        unsigned char *src = o->op == XB_OP_WRITE ? a : b, *dst = o->op == XB_OP_WRITE ? b : a;
        uint64_t slots = slot_count(o, bytes), used = slots_used(o, slots), off = 0;
        pattern_fill(src, bytes * used, bytes);
        uint32_t total = o->warmup + o->iters;
        uint64_t t = now_ns();
        for (uint32_t i = 0; i < total; i++) {
            r.post_ns[i] = t;
            memcpy(dst + off, src + off, bytes);
            __asm__ __volatile__("" : : "r"(dst) : "memory"); /* keep every copy */
            off = off + bytes == bytes * slots ? 0 : off + bytes;
            t = now_ns();
            if (i >= o->warmup) {
                r.lat_ns[i - o->warmup] = t - r.post_ns[i];
                r.done_ns[i - o->warmup] = t;
            }
        }
        struct xb_result res;
        memset(&res, 0, sizeof(res));
        compute_figures(&r, o, bytes, r.post_ns[o->warmup], r.done_ns[o->iters - 1], &res);
        res.buffer_bytes = bytes * slots;
        res.verified = -1;
        if (o->verify) {
            res.verified = pattern_check(dst, bytes * used, bytes) == bytes * used;
            if (!res.verified) {
                rc = kvn_err_set(err, -EIO, "memcpy verify failed");
                goto out;
            }
        }
        print_result(o, "memcpy", &res);
        if (!o->sweep)
            break;
    }
out:
    kvn_mem_unmap(&ma);
    kvn_mem_unmap(&mb);
    run_free(&r);
    return rc;
}

/* --- command line ----------------------------------------------------------- */

static void usage(FILE *f, const char *cmd)
{
    fprintf(f,
            "usage: kvbench %s -t URI [options]            (server)\n"
            "       kvbench %s -t URI [options] HOST       (client)\n"
            "  -t, --transport URI  ofi+tcp, ofi+shm, ofi+verbs, ucx+tcp, ucx+sm, ucx,\n"
            "                       verbs+DEVICE, auto; or memcpy (local copy floor, no server)\n"
            "  -p, --port PORT      bootstrap TCP port (default %d; 0 = any free, server only)\n"
            "  -b, --bind HOST      transport bind host (and the server's bootstrap address);\n"
            "                       default 127.0.0.1 for the transport; 'any' = all interfaces\n"
            "  -s, --size SIZE      bytes per operation, K/M/G suffixes (default %u)\n"
            "  -a, --all            sweep sizes 2 B .. 8 MiB in powers of two\n"
            "      --buffer SIZE    both sides register SIZE bytes (K/M/G, >= -s, max 1G) and\n"
            "                       op i uses slot i mod (SIZE / size) at offset slot * size\n"
            "                       locally and remotely: distinct pages, not one cached\n"
            "                       buffer (default: the size, one slot; with -a per size)\n"
            "  -n, --iters N        measured iterations per size (default %u)\n"
            "  -w, --warmup N       unmeasured iterations first (default %u)\n"
            "  -q, --depth Q        operations in flight (default %u, max %u)\n"
            "      --verify         check the transferred bytes after each size\n"
            "      --json           one JSON object per size instead of the table\n"
            "      --timeout SEC    bootstrap waits give up after SEC s (default %d)\n"
            "  -h, --help           this text\n",
            cmd, cmd, XB_DEFAULT_PORT, XB_DEFAULT_SIZE, XB_DEFAULT_ITERS, XB_DEFAULT_WARMUP,
            XB_DEFAULT_DEPTH, XB_MAX_DEPTH, XB_DEFAULT_TIMEOUT);
}

/* Returns 0, 1 (help printed) or -EINVAL with the reason in err. */
static int parse_args(int argc, char **argv, struct xb_opts *o, struct kvn_err *err)
{
    enum { OPT_VERIFY = 256, OPT_JSON, OPT_TIMEOUT, OPT_BUFFER };
    static const struct option longopts[] = {
        {"transport", required_argument, NULL, 't'},
        {"port", required_argument, NULL, 'p'},
        {"bind", required_argument, NULL, 'b'},
        {"size", required_argument, NULL, 's'},
        {"all", no_argument, NULL, 'a'},
        {"iters", required_argument, NULL, 'n'},
        {"warmup", required_argument, NULL, 'w'},
        {"depth", required_argument, NULL, 'q'},
        {"verify", no_argument, NULL, OPT_VERIFY},
        {"json", no_argument, NULL, OPT_JSON},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"buffer", required_argument, NULL, OPT_BUFFER},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool have_size = false;
    const char *buffer_arg = NULL;
    uint32_t v;

    if (argc < 1 || !argv || !argv[0])
        return kvn_err_set(err, -EINVAL, "no subcommand");
    if (!strcmp(argv[0], "write"))
        o->op = XB_OP_WRITE;
    else if (!strcmp(argv[0], "read"))
        o->op = XB_OP_READ;
    else
        return kvn_err_set(err, -EINVAL, "subcommand '%s' is neither write nor read", argv[0]);
    o->uri = "auto";
    o->port = XB_DEFAULT_PORT;
    o->size = XB_DEFAULT_SIZE;
    o->iters = XB_DEFAULT_ITERS;
    o->warmup = XB_DEFAULT_WARMUP;
    o->depth = XB_DEFAULT_DEPTH;
    o->timeout_s = XB_DEFAULT_TIMEOUT;

    optind = 0; /* GNU: full reset, the entry point may run more than once */
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "+t:p:b:s:an:w:q:h", longopts, NULL)) != -1) {
        switch (c) {
        case 't':
            o->uri = optarg;
            break;
        case 'b':
            o->bind_host = optarg;
            break;
        case 'p':
            if (parse_u32(optarg, 0, 65535, &v) < 0)
                return kvn_err_set(err, -EINVAL, "port '%s' is not in 0..65535", optarg);
            o->port = (int)v;
            break;
        case 's':
            if (parse_size(optarg, &o->size) < 0 || o->size == 0 || o->size > XB_MAX_SIZE)
                return kvn_err_set(err, -EINVAL, "size '%s' is not in 1..1G", optarg);
            have_size = true;
            break;
        case 'a':
            o->sweep = true;
            break;
        case 'n':
            if (parse_u32(optarg, 1, XB_MAX_ITERS, &o->iters) < 0)
                return kvn_err_set(err, -EINVAL, "iterations '%s' not in 1..%u", optarg,
                                   XB_MAX_ITERS);
            break;
        case 'w':
            if (parse_u32(optarg, 0, XB_MAX_ITERS, &o->warmup) < 0)
                return kvn_err_set(err, -EINVAL, "warmup '%s' not in 0..%u", optarg, XB_MAX_ITERS);
            break;
        case 'q':
            if (parse_u32(optarg, 1, XB_MAX_DEPTH, &o->depth) < 0)
                return kvn_err_set(err, -EINVAL, "depth '%s' not in 1..%u", optarg, XB_MAX_DEPTH);
            break;
        case OPT_VERIFY:
            o->verify = true;
            break;
        case OPT_JSON:
            o->json = true;
            break;
        case OPT_BUFFER:
            if (parse_size(optarg, &o->buffer) < 0 || o->buffer == 0 || o->buffer > XB_MAX_SIZE)
                return kvn_err_set(err, -EINVAL, "buffer '%s' is not in 1..1G", optarg);
            buffer_arg = optarg;
            break;
        case OPT_TIMEOUT:
            if (parse_u32(optarg, 1, 86400, &v) < 0)
                return kvn_err_set(err, -EINVAL, "timeout '%s' not in 1..86400 s", optarg);
            o->timeout_s = (int)v;
            break;
        case 'h':
            return 1;
        case '?':
        default:
            if (optopt && strchr("tpbsnwq", optopt))
                return kvn_err_set(err, -EINVAL, "option -%c needs a value", optopt);
            if (optopt == OPT_BUFFER || optopt == OPT_TIMEOUT)
                return kvn_err_set(err, -EINVAL, "option --%s needs a value",
                                   optopt == OPT_BUFFER ? "buffer" : "timeout");
            return kvn_err_set(err, -EINVAL, "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        o->host = argv[optind++];
    if (optind < argc)
        return kvn_err_set(err, -EINVAL, "unexpected argument '%s'", argv[optind]);
    if (have_size && o->sweep)
        return kvn_err_set(err, -EINVAL, "-s and -a exclude each other");
    if (buffer_arg && !o->sweep && o->buffer < o->size)
        return kvn_err_set(err, -EINVAL,
                           "--buffer %s (%" PRIu64 " bytes) is smaller than the size of one "
                           "operation (-s, %" PRIu64 " bytes)",
                           buffer_arg, o->buffer, o->size);
    if (!*o->uri)
        return kvn_err_set(err, -EINVAL, "empty transport URI");
    bool local = !strcmp(o->uri, "memcpy");
    if (local && o->host)
        return kvn_err_set(err, -EINVAL, "-t memcpy runs locally: no HOST");
    if (o->port == 0 && o->host)
        return kvn_err_set(err, -EINVAL, "a client needs the server's port, not 0");
    if (o->host && !*o->host)
        return kvn_err_set(err, -EINVAL, "empty HOST");
    return 0;
}

int kvn_bench_xfer_main(int argc, char **argv)
{
    struct xb_opts o;
    struct kvn_err err;
    const char *cmd = argc >= 1 && argv && argv[0] ? argv[0] : "write";

    memset(&o, 0, sizeof(o));
    kvn_err_clear(&err);
    int rc = parse_args(argc, argv, &o, &err);
    if (rc == 1) {
        usage(stdout, cmd);
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr,
                "kvbench %s: %s\nusage: kvbench %s -t URI [options] [HOST]  "
                "(kvbench %s --help lists the options)\n",
                cmd, err.msg, cmd, cmd);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (!strcmp(o.uri, "memcpy"))
        rc = run_memcpy(&o, &err);
    else if (o.host)
        rc = run_client(&o, &err);
    else
        rc = run_server(&o, &err);
    if (rc < 0) {
        fprintf(stderr, "kvbench %s: %s (%s)\n", cmd, err.msg, kvn_err_name(rc));
        return 1;
    }
    return 0;
}
