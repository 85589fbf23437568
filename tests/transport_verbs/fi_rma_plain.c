/*
 * fi_rma_plain.c - the plain-libfabric reference for scripts/bench-xfer: the
 * smallest program that moves WRITEs between two processes with fi_write on
 * FI_EP_RDM, with no kvnode code in the path.  kvbench's ofi+tcp / ofi+shm
 * figures are compared against it in the same run (a machine this shared
 * makes absolute figures from another day meaningless).
 *
 *     fi_rma_plain PROVIDER SIZE ITERS WARMUP DEPTH [dc]
 *        e.g. fi_rma_plain "tcp;ofi_rxm" 1048576 1000 100 16
 *
 * "dc" posts with fi_writemsg(FI_DELIVERY_COMPLETE) (completion once the
 * bytes are visible at the target, what transport/ofi does) instead of
 * fi_write with the provider's default completion semantics.
 *
 * The process forks: the child is the target (registers SIZE bytes, keeps
 * reading its CQ so the provider progresses), the parent the initiator.  They
 * trade endpoint names and the MR key over a socketpair.  Prints one line:
 *     bytes iters gbps     (GB = 10^9 bytes, first measured post to last completion)
 * Exits 0 on success, 1 on a libfabric error, 2 on bad arguments.  Not a test.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

struct side {
    struct fi_info *info;
    struct fid_fabric *fabric;
    struct fid_domain *domain;
    struct fid_cq *cq;
    struct fid_av *av;
    struct fid_ep *ep;
    struct fid_mr *mr;
    void *buf;
    fi_addr_t peer;
};

struct wire {
    uint64_t key, addr;
    size_t namelen;
    char name[256];
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define CHECK(call)                                                                                \
    do {                                                                                           \
        int rc_ = (int)(call);                                                                     \
        if (rc_) {                                                                                 \
            fprintf(stderr, "fi_rma_plain: %s: %s\n", #call, fi_strerror(-rc_));                   \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

static int side_open(struct side *s, const char *prov, size_t size, int target)
{
    struct fi_info *hints = fi_allocinfo();
    if (!hints)
        return 1;
    hints->ep_attr->type = FI_EP_RDM;
    hints->caps = FI_RMA;
    hints->domain_attr->mr_mode =
        FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_ENDPOINT;
    hints->fabric_attr->prov_name = strdup(prov);
    int rc = fi_getinfo(FI_VERSION(1, 17), NULL, NULL, 0, hints, &s->info);
    fi_freeinfo(hints);
    CHECK(rc);
    CHECK(fi_fabric(s->info->fabric_attr, &s->fabric, NULL));
    CHECK(fi_domain(s->fabric, s->info, &s->domain, NULL));
    struct fi_cq_attr cqa = {.format = FI_CQ_FORMAT_CONTEXT, .size = 1024};
    CHECK(fi_cq_open(s->domain, &cqa, &s->cq, NULL));
    struct fi_av_attr ava = {.type = FI_AV_TABLE};
    CHECK(fi_av_open(s->domain, &ava, &s->av, NULL));
    CHECK(fi_endpoint(s->domain, s->info, &s->ep, NULL));
    CHECK(fi_ep_bind(s->ep, &s->cq->fid, FI_TRANSMIT | FI_RECV));
    CHECK(fi_ep_bind(s->ep, &s->av->fid, 0));
    CHECK(fi_enable(s->ep));
    if (posix_memalign(&s->buf, 4096, size))
        return 1;
    memset(s->buf, target ? 0 : 0x5a, size);
    uint64_t mode = s->info->domain_attr->mr_mode;
    CHECK(fi_mr_reg(s->domain, s->buf, size, target ? FI_REMOTE_WRITE : FI_WRITE, 0, target ? 7 : 8,
                    0, &s->mr, NULL));
    if (mode & FI_MR_ENDPOINT) {
        CHECK(fi_mr_bind(s->mr, &s->ep->fid, 0));
        CHECK(fi_mr_enable(s->mr));
    }
    return 0;
}

static int trade(int fd, struct side *s, struct wire *mine, struct wire *theirs)
{
    mine->namelen = sizeof(mine->name);
    CHECK(fi_getname(&s->ep->fid, mine->name, &mine->namelen));
    if (write(fd, mine, sizeof(*mine)) != (ssize_t)sizeof(*mine) ||
        read(fd, theirs, sizeof(*theirs)) != (ssize_t)sizeof(*theirs))
        return 1;
    if (fi_av_insert(s->av, theirs->name, 1, &s->peer, 0, NULL) != 1)
        return 1;
    return 0;
}

static int run_target(int fd, const char *prov, size_t size)
{
    struct side s;
    memset(&s, 0, sizeof(s));
    if (side_open(&s, prov, size, 1))
        return 1;
    struct wire mine, theirs;
    memset(&mine, 0, sizeof(mine));
    mine.key = fi_mr_key(s.mr);
    mine.addr = (s.info->domain_attr->mr_mode & FI_MR_VIRT_ADDR) ? (uintptr_t)s.buf : 0;
    if (trade(fd, &s, &mine, &theirs))
        return 1;
    /* Progress until the initiator says done (a byte on the socketpair). */
    for (;;) {
        struct fi_cq_entry e[16];
        for (int i = 0; i < 64; i++)
            fi_cq_read(s.cq, e, 16);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 0) > 0)
            break;
    }
    return 0;
}

static int run_initiator(int fd, const char *prov, size_t size, uint32_t iters, uint32_t warm,
                         uint32_t depth, int dc)
{
    struct side s;
    memset(&s, 0, sizeof(s));
    if (side_open(&s, prov, size, 0))
        return 1;
    struct wire mine, theirs;
    memset(&mine, 0, sizeof(mine));
    if (trade(fd, &s, &mine, &theirs))
        return 1;
    void *desc = fi_mr_desc(s.mr);
    uint32_t total = iters + warm, posted = 0, done = 0, inflight = 0;
    uint64_t t0 = 0, t1 = 0;
    while (done < total) {
        while (inflight < depth && posted < total) {
            if (posted == warm)
                t0 = now_ns();
            struct iovec iov = {.iov_base = s.buf, .iov_len = size};
            struct fi_rma_iov rma = {.addr = theirs.addr, .len = size, .key = theirs.key};
            struct fi_msg_rma msg = {.msg_iov = &iov,
                                     .desc = &desc,
                                     .iov_count = 1,
                                     .addr = s.peer,
                                     .rma_iov = &rma,
                                     .rma_iov_count = 1};
            ssize_t rc =
                dc ? fi_writemsg(s.ep, &msg, FI_COMPLETION | FI_DELIVERY_COMPLETE)
                   : fi_write(s.ep, s.buf, size, desc, s.peer, theirs.addr, theirs.key, NULL);
            if (rc == -FI_EAGAIN)
                break;
            if (rc) {
                fprintf(stderr, "fi_rma_plain: fi_write: %s\n", fi_strerror((int)-rc));
                return 1;
            }
            posted++;
            inflight++;
        }
        struct fi_cq_entry e[16];
        ssize_t n = fi_cq_read(s.cq, e, 16);
        if (n > 0) {
            done += (uint32_t)n;
            inflight -= (uint32_t)n;
        } else if (n != -FI_EAGAIN) {
            struct fi_cq_err_entry ee;
            memset(&ee, 0, sizeof(ee));
            fi_cq_readerr(s.cq, &ee, 0);
            fprintf(stderr, "fi_rma_plain: cq error: %s\n", fi_strerror(ee.err));
            return 1;
        }
    }
    t1 = now_ns();
    char bye = 1;
    if (write(fd, &bye, 1) != 1)
        return 1;
    printf("%zu %u %.3f\n", size, iters, (double)size * iters / (double)(t1 - t0));
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 6 && !(argc == 7 && !strcmp(argv[6], "dc"))) {
        fprintf(stderr, "usage: fi_rma_plain PROVIDER SIZE ITERS WARMUP DEPTH [dc]\n");
        return 2;
    }
    size_t size = strtoull(argv[2], NULL, 10);
    uint32_t iters = (uint32_t)strtoul(argv[3], NULL, 10);
    uint32_t warm = (uint32_t)strtoul(argv[4], NULL, 10);
    uint32_t depth = (uint32_t)strtoul(argv[5], NULL, 10);
    if (!size || !iters || !depth || depth > 1024) {
        fprintf(stderr, "fi_rma_plain: SIZE, ITERS, DEPTH must be > 0 (DEPTH <= 1024)\n");
        return 2;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
        return 1;
    alarm(120);
    pid_t pid = fork();
    if (pid < 0)
        return 1;
    if (pid == 0) {
        close(sv[0]);
        _exit(run_target(sv[1], argv[1], size));
    }
    close(sv[1]);
    int rc = run_initiator(sv[0], argv[1], size, iters, warm, depth, argc == 7);
    if (rc)
        kill(pid, SIGKILL);
    int st = 0;
    waitpid(pid, &st, 0);
    return rc ? rc : (WIFEXITED(st) ? WEXITSTATUS(st) : 1);
}
