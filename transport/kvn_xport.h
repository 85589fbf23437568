/* API-FROZEN */
/*
 * kvn_xport.h - one RMA API over libfabric, UCX and rdma-core verbs.
 *
 * The transport moves bytes between registered memory regions of processes
 * and reports completions carrying the caller's cookies.  It knows nothing of
 * caches.  Objects, all opaque:
 *
 *     kvn_xport (domain, one per URI)      owns ONE completion queue
 *       ├── kvn_xport_mr    local registration  ──pack──►  descriptor bytes
 *       └── kvn_xport_peer  a connected remote  ◄──unpack── (shipped by you)
 *             └── kvn_xport_rmr  remote registration, usable only with
 *                                the peer it was unpacked for
 *
 *   A: open("ofi+tcp")          B: open("ofi+tcp")
 *      address(blob_a) ───────────► connect(blob_a) -> peer_a
 *      connect(blob_b) ◄─────────── address(blob_b)
 *      mr_reg + mr_pack(desc) ────► rmr_unpack(peer_a, desc) -> rmr
 *                                   post(peer_a, {WRITE, local sge, rmr, off})
 *      poll() -> RECV  ◄─────────── notify(peer_a, "done")  poll() -> WRITE, SEND
 *
 * The exchange of address blobs and descriptors is the caller's business
 * (TCP bootstrap, ZeroMQ RPC...).  Both sides normally connect to each other.
 *
 * URIs (kvn_xport_open):
 *   ofi+tcp      libfabric tcp;ofi_rxm, FI_EP_RDM
 *   ofi+shm      libfabric shm (same host; CMA needs ptrace permission)
 *   ofi+verbs    libfabric verbs;ofi_rxm
 *   ucx          UCX's own choice of transports (shm for same-host peers,
 *                then rdma/tcp); ucx+tcp, ucx+sm restrict UCX_TLS
 *   verbs+DEV    rdma-core RC QPs on device DEV (e.g. verbs+mlx5_0)
 *   auto         the rule, decided at open time (the peer is unknown then):
 *                1. verbs+DEV for the first device with an ACTIVE port,
 *                   when the verbs backend is built;
 *                2. else `ucx` when the UCX backend is built (UCX then picks
 *                   shared memory per peer on the same host, TCP otherwise);
 *                3. else ofi+tcp.
 *                kvn_xport_name() reports what was opened.
 *
 * Operations: kvn_xport_post() takes a batch of one-sided WRITE / READ ops,
 * each with a local scatter-gather list (up to KVN_XPORT_MAX_SGE entries) and
 * one contiguous remote range.  The whole batch is validated first (bounds
 * against both registrations, access rights, outstanding limit) and nothing
 * is posted if one op is bad.  Once accepted, every op completes EXACTLY ONCE
 * on the domain's completion queue, with status 0 or a negative errno:
 *   -ETIMEDOUT  not completed within attr.op_timeout_ms (enforced by the
 *               common layer; the peer is then marked failed, see below),
 *   -ECANCELED  kvn_xport_disconnect() was called (kvn_xport_close()
 *               drops outstanding ops without completions),
 *   -EIO/-ECONNRESET/...  errors reported by the backend (msg has its text).
 * A backend that splits an op (iov limits) still completes it once.
 *
 * Peer failure: the first op of a peer that times out (or fails with a
 * connection error: -ECONNRESET, -ENOTCONN, -EPIPE, -ECONNREFUSED,
 * -EHOSTUNREACH), or that the backend finds gone (ofi+shm: its process
 * exited; checked every 100 ms while ops are in flight), marks the peer
 * failed: its other outstanding ops complete with an error and later
 * posts/notifies to it return -ENOTCONN.  Other peers are not affected.
 * Disconnect it and connect again to retry.
 *
 * Progress: every process must keep calling kvn_xport_poll() (or wait)
 * while it is the TARGET of transfers too: libfabric tcp/shm and UCX over
 * TCP use manual progress, and a WRITE/READ completes (delivery complete)
 * only once the target's transport has handled it.
 *
 * Ordering: completions are unordered.  A notification is NOT guaranteed to
 * be delivered after a preceding WRITE to the same peer unless the backend
 * documents it (see kvn_xport_notify); portable code waits for the WRITE
 * completions, then notifies.
 *
 * Memory: remote descriptors address a registration either by virtual
 * address or by offset (decided by the backend, e.g. libfabric mr_mode);
 * users always pass offsets relative to the registration start.
 *
 * Thread rules: a domain and every object created from it are used by one
 * thread at a time (the caller serialises); distinct domains are
 * independent.  No global mutable state.  No call blocks except
 * kvn_xport_wait(); posting never waits (work the provider refuses for now
 * is parked and retried by poll).  One bounded exception: on ofi+shm,
 * disconnect/close of a healthy peer with ops in flight first lets the
 * provider drain them (at most min(op_timeout_ms, 2 s)), because
 * libfabric 1.17 shm crashes a peer whose initiator vanishes mid-command.
 *
 * Errors: functions return 0 (or a count) on success, a negative errno code
 * on failure and fill struct kvn_err when non-NULL.  A refused call changes
 * nothing.  NULL handles are refused with -EINVAL (void functions ignore
 * NULL).
 */
#ifndef KVN_XPORT_H
#define KVN_XPORT_H

#include <stddef.h>
#include <stdint.h>

#include "util/kvn_err.h"

#ifdef __cplusplus
extern "C" {
#endif

struct kvn_xport;
struct kvn_xport_peer;
struct kvn_xport_mr;
struct kvn_xport_rmr;

/* Limits. */
#define KVN_XPORT_MAX_SGE         1024u  /* local SG entries per op */
#define KVN_XPORT_MAX_OUTSTANDING 65536u /* upper bound of attr.max_outstanding */
#define KVN_XPORT_MAX_MSG         65536u /* upper bound of attr.max_msg_size */
#define KVN_XPORT_ADDR_MAX        4096u  /* address blob bytes, at most */
#define KVN_XPORT_KEY_MAX         2048u  /* backend key bytes in a descriptor */
#define KVN_XPORT_DESC_HDR        40u    /* descriptor header bytes */
#define KVN_XPORT_DESC_MAX        (KVN_XPORT_DESC_HDR + KVN_XPORT_KEY_MAX)
#define KVN_XPORT_NAME_MAX        64u /* kvn_xport_name() length incl. NUL */
#define KVN_XPORT_CQE_MSG         96u

/* Defaults applied by kvn_xport_attr_init() and for zero fields. */
#define KVN_XPORT_DEF_OUTSTANDING 1024u
#define KVN_XPORT_DEF_MSG         4096u
#define KVN_XPORT_DEF_TIMEOUT_MS  5000u

/* Access rights of a registration (kvn_xport_mr_reg). */
#define KVN_XPORT_ACCESS_LOCAL        0x1u /* used in local SG lists */
#define KVN_XPORT_ACCESS_REMOTE_READ  0x2u /* peers may READ it */
#define KVN_XPORT_ACCESS_REMOTE_WRITE 0x4u /* peers may WRITE it */
#define KVN_XPORT_ACCESS_ALL          0x7u

/* Backend ids, as written in descriptors and address blobs. */
enum kvn_xport_backend {
    KVN_XPORT_BACKEND_OFI = 1,
    KVN_XPORT_BACKEND_UCX = 2,
    KVN_XPORT_BACKEND_VERBS = 3,
};

enum kvn_xport_op_kind {
    KVN_XPORT_WRITE = 1, /* local SG list -> remote range */
    KVN_XPORT_READ = 2,  /* remote range -> local SG list */
    KVN_XPORT_SEND = 3,  /* completion of kvn_xport_notify (sender side) */
    KVN_XPORT_RECV = 4,  /* a notification arrived (receiver side) */
};

struct kvn_xport_attr {
    uint32_t max_outstanding; /* ops + notifies in flight; 0 = 1024 */
    uint32_t max_msg_size;    /* notification payload bytes; 0 = 4096.
                                 Peers must agree: a notification larger
                                 than the receiver's limit is dropped
                                 there. */
    uint32_t op_timeout_ms;   /* 0 = 5000; an op not completed by then
                                 completes with -ETIMEDOUT */
    const char *bind_host;    /* TCP-based backends: IP/host to listen on;
                                 NULL = "127.0.0.1"; "any" = all interfaces */
    uint16_t port;            /* 0 = ephemeral */
    unsigned flags;           /* KVN_XPORT_F_*; 0 = none (added later:
                                 zero it, e.g. with kvn_xport_attr_init) */
};

/*
 * The caller busy-polls and does not sleep on the wait fd while transfers
 * run (benchmarks, a dedicated transfer thread): backends skip their
 * completion wait objects, which saves a wakeup signal per completion.
 * kvn_xport_wait_fd() still works but ticks every millisecond.
 */
#define KVN_XPORT_F_BUSY_POLL 0x1u

/* Fills *attr with the defaults above (bind_host NULL, port 0). */
void kvn_xport_attr_init(struct kvn_xport_attr *attr);

/*
 * Opens a domain.  attr may be NULL (defaults).  On success *out owns the
 * domain; release it with kvn_xport_close().
 * Errors: -EINVAL bad URI / attr, -ENOTSUP backend not built in,
 *         -ENODEV provider/device unavailable, -ENOMEM, backend errors.
 */
int kvn_xport_open(const char *uri, const struct kvn_xport_attr *attr, struct kvn_xport **out,
                   struct kvn_err *err);

/*
 * Closes the domain: outstanding ops are dropped WITHOUT completions, and
 * every peer, mr and rmr of the domain is released (handles become invalid).
 * NULL is ignored.
 */
void kvn_xport_close(struct kvn_xport *x);

/* Canonical URI of the opened domain ("ofi+tcp", "ucx+sm"...); "" for NULL. */
const char *kvn_xport_name(const struct kvn_xport *x);

/* Backend id of the domain, or -EINVAL for NULL. */
int kvn_xport_backend(const struct kvn_xport *x);

/*
 * Writes this domain's address blob to buf.  *len is the capacity on input,
 * the blob length on output.  -ENOSPC (with *len set to the size needed)
 * when buf is too small.  The blob is at most KVN_XPORT_ADDR_MAX bytes.
 */
int kvn_xport_address(struct kvn_xport *x, void *buf, size_t *len, struct kvn_err *err);

/*
 * Connects to a peer from its address blob (validated strictly: -EPROTO on
 * bad magic/version/checksum, -EINVAL on a blob of another backend or a
 * truncated one).  Connecting to the same blob twice gives two peers.
 * Connecting to one's own blob is allowed (loopback).  The peer handle is
 * owned by the caller until kvn_xport_disconnect() or kvn_xport_close().
 */
int kvn_xport_connect(struct kvn_xport *x, const void *blob, size_t len,
                      struct kvn_xport_peer **out, struct kvn_err *err);

/*
 * Disconnects: the peer's outstanding ops complete with -ECANCELED (on the
 * next polls; their cqes carry peer == NULL), later notifications from it
 * carry peer == NULL.  p must not be used afterwards, except that while
 * rmrs unpacked for it are alive the handle stays valid and calls taking
 * it (post, notify, rmr_unpack) fail with -ENOTCONN; it goes away with the
 * last kvn_xport_rmr_free().  NULL and a second call are ignored while the
 * handle is valid.
 */
void kvn_xport_disconnect(struct kvn_xport_peer *p);

/* The remote domain's 64-bit id (as carried in cqe.peer_id); 0 for NULL. */
uint64_t kvn_xport_peer_id(const struct kvn_xport_peer *p);

/* Ops currently outstanding to this peer (0 for NULL). */
uint32_t kvn_xport_peer_outstanding(const struct kvn_xport_peer *p);

/*
 * Registers [addr, addr+len) with the given access (any combination of
 * KVN_XPORT_ACCESS_*, non-zero).  len > 0.
 * Errors: -EINVAL, -ENOMEM, -EPERM/-EFAULT/backend errors.
 */
int kvn_xport_mr_reg(struct kvn_xport *x, void *addr, size_t len, unsigned access,
                     struct kvn_xport_mr **out, struct kvn_err *err);

/*
 * Deregisters.  -EBUSY (and nothing changes) while an outstanding op uses
 * the region.  -EINVAL for NULL.
 */
int kvn_xport_mr_dereg(struct kvn_xport_mr *mr, struct kvn_err *err);

/* Registration facts (0/NULL for NULL). */
void *kvn_xport_mr_addr(const struct kvn_xport_mr *mr);
size_t kvn_xport_mr_len(const struct kvn_xport_mr *mr);

/*
 * Serialises the remote descriptor of mr into buf (*len: capacity in, bytes
 * written out; -ENOSPC with *len = needed when too small).  Layout (little
 * endian), at most KVN_XPORT_DESC_MAX bytes:
 *
 *   0  u32 magic "KVNR" (0x524e564b)   4  u16 version (1)
 *   6  u8  backend id                   7  u8  flags (bit0 offset mode,
 *                                              bit1 REMOTE_READ, bit2 REMOTE_WRITE)
 *   8  u64 base address (0 in offset mode)
 *  16  u64 length                      24  u16 key length  26 u16 zero
 *  28  u32 checksum (FNV-1a over the whole descriptor with this field zero)
 *  32  u64 domain id of the owner      40  key bytes (backend specific)
 */
int kvn_xport_mr_pack(const struct kvn_xport_mr *mr, void *buf, size_t *len, struct kvn_err *err);

/*
 * Parses a descriptor received from peer p.  Strict: -EINVAL for NULL args
 * or a truncated buffer, -EPROTO for wrong magic/version/checksum, -EINVAL
 * for a descriptor of another backend, zero/absurd lengths or key length,
 * a base+length that wraps.  The rmr is usable only with p; free it with
 * kvn_xport_rmr_free().
 */
int kvn_xport_rmr_unpack(struct kvn_xport_peer *p, const void *buf, size_t len,
                         struct kvn_xport_rmr **out, struct kvn_err *err);

/* Frees an rmr (deferred until ops using it completed).  NULL is ignored. */
void kvn_xport_rmr_free(struct kvn_xport_rmr *r);

/* Registered length of the remote region (0 for NULL). */
size_t kvn_xport_rmr_len(const struct kvn_xport_rmr *r);

struct kvn_xport_sge {
    struct kvn_xport_mr *mr;
    uint64_t offset; /* from the start of mr */
    uint64_t len;    /* > 0 */
};

struct kvn_xport_op {
    enum kvn_xport_op_kind kind; /* KVN_XPORT_WRITE or KVN_XPORT_READ */
    const struct kvn_xport_sge *local;
    uint32_t n_local; /* 1..KVN_XPORT_MAX_SGE */
    struct kvn_xport_rmr *remote;
    uint64_t remote_offset; /* from the start of the remote region */
    uint64_t cookie;        /* returned in the completion */
};

/*
 * Posts n (>= 1) ops to peer p.  All ops are validated before any is
 * posted:
 *   -EINVAL  NULL/invalid args, kind, n_local, zero lengths, an mr or rmr of
 *            another domain/peer, n above max_outstanding (such a batch can
 *            never be posted: split it);
 *   -ERANGE  a local SG entry outside its mr, a remote range outside the rmr
 *            (message names the op index and the bounds);
 *   -EACCES  WRITE to an rmr without REMOTE_WRITE, READ without REMOTE_READ;
 *   -EMSGSIZE total length above the backend's limit;
 *   -EAGAIN  n more ops would exceed max_outstanding now (poll, then retry);
 *   -ENOTCONN the peer was disconnected or failed.
 * On 0 every op completes exactly once on the completion queue.  The sge
 * arrays need not outlive the call; the memory must stay registered.
 */
int kvn_xport_post(struct kvn_xport_peer *p, const struct kvn_xport_op *ops, uint32_t n,
                   struct kvn_err *err);

/*
 * Sends a notification of len bytes (1..attr.max_msg_size; copied, buf may
 * be reused at return).  Counts as one outstanding op; the sender gets a
 * SEND completion with cookie, the receiver a RECV completion with the
 * bytes.  Ordering with respect to earlier WRITEs to the same peer:
 *   ofi+tcp: tcp;ofi_rxm reports FI_ORDER_SAW on its endpoints, so a
 *            notify is processed after earlier WRITEs to the same peer
 *            (observed, not relied upon by our tests); portable code still
 *            waits for the write completions (which are delivery-complete:
 *            the bytes are at the target);
 *   ofi+shm: not ordered (shm offers only FI_ORDER_SAS) - wait for the
 *            write completions first;
 *   ucx: see transport/ucx; verbs: RC, in order after earlier WRITEs.
 * Errors: -EINVAL, -EMSGSIZE, -EAGAIN (outstanding limit), -ENOTCONN.
 */
int kvn_xport_notify(struct kvn_xport_peer *p, const void *buf, size_t len, uint64_t cookie,
                     struct kvn_err *err);

struct kvn_xport_cqe {
    uint64_t cookie; /* as posted (0 for RECV) */
    int status;      /* 0 or -errno */
    enum kvn_xport_op_kind kind;
    struct kvn_xport_peer *peer; /* op's peer; RECV: sender if connected
                                    (NULL otherwise or once disconnected) */
    uint64_t peer_id;            /* remote domain id (RECV: the sender's) */
    const void *data;            /* RECV payload, valid until the next
                                    kvn_xport_poll/wait/close */
    uint32_t len;                /* RECV payload bytes; ops: bytes moved */
    char msg[KVN_XPORT_CQE_MSG]; /* error text when status < 0 */
};

/*
 * Progresses the backend, enforces timeouts and returns up to max (>= 1)
 * completions: count >= 0, or a negative errno (-EINVAL for bad args).
 * Poll returning 0 also re-arms the wait fd.
 */
int kvn_xport_poll(struct kvn_xport *x, struct kvn_xport_cqe *out, int max);

/*
 * kvn_xport_poll() for a caller that busy-polls and will poll again at
 * once: the same progress, timeouts and completions, but an empty poll does
 * not re-arm the wait fd, which costs system calls (eventfd and timerfd
 * reads, the backend's arm: UCX's ucp_worker_arm) on every empty poll of a
 * spinning loop.  Before sleeping on the wait fd, call kvn_xport_poll()
 * until it returns 0 (that empty poll re-arms).  Same errors as
 * kvn_xport_poll().
 */
int kvn_xport_poll_busy(struct kvn_xport *x, struct kvn_xport_cqe *out, int max);

/*
 * An fd (epoll-based) that becomes readable when kvn_xport_poll() may return
 * something, including an op timeout coming due.  Contract: after it fires,
 * call kvn_xport_poll() until it returns 0, then sleep on the fd again.
 * Level-triggered spurious wakeups are possible.  Backends whose progress
 * needs the caller (UCX over TCP) still require poll to be called regularly
 * while ops are outstanding; the fd then also wakes periodically.  A
 * backend without a waitable object (libfabric shm) makes the fd tick every
 * millisecond, so a poll()-based loop still notices completions and
 * incoming notifications.
 * Owned by the domain: do not close it.  -EINVAL for NULL.
 */
int kvn_xport_wait_fd(struct kvn_xport *x);

/*
 * Blocks until at least one completion is ready (then returns 0 and the
 * caller polls) or timeout_ms elapses (-ETIMEDOUT).  timeout_ms < 0 waits
 * forever, 0 only checks.
 */
int kvn_xport_wait(struct kvn_xport *x, int timeout_ms, struct kvn_err *err);

/* Ops and notifies posted and not yet completed to the caller (0 for NULL). */
uint32_t kvn_xport_outstanding(const struct kvn_xport *x);

/* RDMA devices as seen in /sys/class/infiniband (one entry per port). */
struct kvn_xport_devinfo {
    char name[64];       /* e.g. "mlx5_0" */
    uint32_t port;       /* 1-based */
    int active;          /* port state is ACTIVE */
    char state[32];      /* "ACTIVE", "DOWN", ... */
    char link_layer[32]; /* "InfiniBand", "Ethernet" */
    int numa_node;       /* -1 when unknown */
};

/*
 * Lists RDMA device ports into out[0..max).  Returns the number of ports
 * found (may exceed max; only max are written), 0 when there is none.
 * out may be NULL when max == 0.  -EINVAL for max < 0.
 */
int kvn_xport_list_devices(struct kvn_xport_devinfo *out, int max, struct kvn_err *err);

/*
 * Memory best suited for registration with a domain (transport/xport_mem.c).
 *
 *   ucx, ucx+sm, ucx+tcp  ucp_mem_map(UCP_MEM_MAP_ALLOCATE) in the domain's
 *                         UCX context (kvn_xport_ucx_mem_alloc): over
 *                         shared memory only such memory is put/get
 *                         directly (one copy); caller memory falls back to
 *                         UCX 1.13's software RMA (see transport/ucx).
 *   ofi+*, verbs+*        anonymous private mmap, populated: MAP_HUGETLB
 *                         when the kernel has 2 MiB huge pages to give,
 *                         else regular pages with MADV_HUGEPAGE as a hint.
 *
 * Either way the memory is page aligned and zero-filled, and is registered
 * as usual with kvn_xport_mr_reg() (any sub-range).  Use it for the large,
 * long-lived regions that are the source or target of bulk RMA (a host KV
 * pool, an engine's L1, benchmark buffers).
 *
 * kvn_xport_mem_alloc: len > 0 (and below 2^62).  *out is set only on
 * success.  Errors: -EINVAL (NULL args, len 0 or absurd), -ENOMEM, backend
 * errors.
 *
 * kvn_xport_mem_free: p and len exactly as allocated on the same domain.
 * Errors: -EINVAL (NULL args, len 0, p/len not an allocation of x: checked
 * against a record the allocation keeps, so a wrong pointer is refused, not
 * unmapped), -EBUSY (an mr of x still lies in the memory: deregister it
 * first).  A refused call changes nothing.
 *
 * Lifetime: free every allocation BEFORE kvn_xport_close(x).  (UCX domains
 * release leftovers at close, other backends cannot: their leftovers stay
 * mapped until the process exits.)
 *
 * Thread rules as for the domain (one caller thread at a time).
 */
int kvn_xport_mem_alloc(struct kvn_xport *x, size_t len, void **out, struct kvn_err *err);
int kvn_xport_mem_free(struct kvn_xport *x, void *p, size_t len, struct kvn_err *err);

#ifdef __cplusplus
}
#endif

#endif /* KVN_XPORT_H */
