/* conf_harness.c - children, channel, patterns and checksums of the conformance suite. */
#include "conf_harness.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- checksums and patterns ------------------------------------------ */

#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL

static inline uint64_t rotl64(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

static inline uint64_t load64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static inline uint64_t hash_round(uint64_t acc, uint64_t w)
{
    acc += w * P2;
    acc = rotl64(acc, 31);
    return acc * P1;
}

/*
 * Four independent lanes (as xxHash64 does) so that the multiply chains
 * overlap: a 64 MiB region hashes in a few tens of milliseconds, which keeps
 * the 64 MiB cases cheap under ASan too. Not cryptographic; it only has to
 * make an accidental match of different bytes unlikely.
 */
uint64_t conf_hash64(const void *p, size_t len)
{
    const unsigned char *b = p;
    uint64_t v1 = P1 + P2, v2 = P2, v3 = 0, v4 = 0 - P1;
    size_t i = 0;

    for (; i + 32 <= len; i += 32) {
        v1 = hash_round(v1, load64(b + i));
        v2 = hash_round(v2, load64(b + i + 8));
        v3 = hash_round(v3, load64(b + i + 16));
        v4 = hash_round(v4, load64(b + i + 24));
    }
    uint64_t h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
    h ^= (uint64_t)len * P3;
    for (; i + 8 <= len; i += 8)
        h = rotl64(h ^ hash_round(0, load64(b + i)), 27) * P1 + P3;
    for (; i < len; i++)
        h = rotl64(h ^ (b[i] * P3), 11) * P1;
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

static inline uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

/* The 8 pattern bytes of word index w (positions 8w .. 8w+7), little-endian. */
static inline uint64_t pattern_word(uint64_t seed, uint64_t w)
{
    return splitmix64(seed * P3 ^ w);
}

uint8_t conf_pattern_byte(uint64_t seed, uint64_t pos)
{
    return (uint8_t)(pattern_word(seed, pos / 8) >> (8 * (pos % 8)));
}

void conf_pattern_fill(void *buf, size_t len, uint64_t seed, uint64_t pos)
{
    unsigned char *b = buf;
    size_t i = 0;

    while (i < len && (pos + i) % 8 != 0) {
        b[i] = conf_pattern_byte(seed, pos + i);
        i++;
    }
    for (; i + 8 <= len; i += 8) {
        uint64_t w = pattern_word(seed, (pos + i) / 8);
        unsigned char le[8];
        for (int k = 0; k < 8; k++)
            le[k] = (unsigned char)(w >> (8 * k));
        memcpy(b + i, le, 8);
    }
    for (; i < len; i++)
        b[i] = conf_pattern_byte(seed, pos + i);
}

long long conf_pattern_check(const void *buf, size_t len, uint64_t seed, uint64_t pos)
{
    const unsigned char *b = buf;
    unsigned char chunk[4096];

    for (size_t done = 0; done < len;) {
        size_t n = len - done < sizeof(chunk) ? len - done : sizeof(chunk);
        conf_pattern_fill(chunk, n, seed, pos + done);
        if (memcmp(chunk, b + done, n) != 0) {
            for (size_t k = 0; k < n; k++)
                if (chunk[k] != b[done + k])
                    return (long long)(done + k);
        }
        done += n;
    }
    return -1;
}

uint64_t conf_pattern_hash(size_t len, uint64_t seed, uint64_t pos)
{
    /* The checksum is not streaming, so materialise in one buffer; the suite
     * calls this for ranges it has memory for (at most the region size). */
    unsigned char *tmp = malloc(len ? len : 1);
    if (!tmp)
        return 0;
    conf_pattern_fill(tmp, len, seed, pos);
    uint64_t h = conf_hash64(tmp, len);
    free(tmp);
    return h;
}

/* ---- bootstrap channel ------------------------------------------------- */

struct chan_hdr {
    uint32_t magic;
    uint32_t type;
    uint32_t len;
};

#define CHAN_MAGIC 0x6B76636EU /* "kvcn" */

int conf_chan_pair(int fds[2])
{
    if (!fds)
        return -EINVAL;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) < 0)
        return -errno;
    return 0;
}

int conf_chan_send(int fd, uint32_t type, const void *buf, size_t len)
{
    if (fd < 0 || (len && !buf))
        return -EINVAL;
    if (len > CONF_CHAN_MAX)
        return -EMSGSIZE;
    struct chan_hdr h = {CHAN_MAGIC, type, (uint32_t)len};
    struct iovec iov[2] = {{&h, sizeof(h)}, {(void *)buf, len}};
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = len ? 2 : 1};
    ssize_t n;
    do {
        n = sendmsg(fd, &m, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == ECONNRESET ? -EPIPE : -errno;
    if ((size_t)n != sizeof(h) + len)
        return -EIO;
    return 0;
}

int conf_chan_recv(int fd, int timeout_ms, uint32_t *type, void *buf, size_t cap, size_t *len)
{
    if (fd < 0 || !type || !len || (cap && !buf))
        return -EINVAL;
    int64_t deadline = timeout_ms < 0 ? -1 : conf_now_ms() + timeout_ms;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    for (;;) {
        int wait = -1;
        if (deadline >= 0) {
            int64_t left = deadline - conf_now_ms();
            wait = left > 0 ? (int)left : 0;
        }
        int r = poll(&pfd, 1, wait);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            return -ETIMEDOUT;
        break;
    }

    unsigned char scratch[sizeof(struct chan_hdr) + CONF_CHAN_MAX];
    struct iovec iov = {scratch, sizeof(scratch)};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n;
    do {
        n = recvmsg(fd, &m, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == ECONNRESET ? -EPIPE : -errno;
    if (n == 0)
        return -EPIPE;
    struct chan_hdr h;
    if ((size_t)n < sizeof(h) || (m.msg_flags & MSG_TRUNC))
        return -EPROTO;
    memcpy(&h, scratch, sizeof(h));
    if (h.magic != CHAN_MAGIC || h.len != (size_t)n - sizeof(h))
        return -EPROTO;
    if (h.len > cap)
        return -EMSGSIZE;
    if (h.len)
        memcpy(buf, scratch + sizeof(h), h.len);
    *type = h.type;
    *len = h.len;
    return 0;
}

/* ---- children ---------------------------------------------------------- */

int64_t conf_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int conf_child_spawn(struct conf_child *c, int (*fn)(int chan, void *arg), void *arg,
                     unsigned alarm_s)
{
    if (!c || !fn || alarm_s == 0)
        return -EINVAL;
    int fds[2];
    int r = conf_chan_pair(fds);
    if (r < 0)
        return r;
    pid_t parent = getpid();
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        r = -errno;
        close(fds[0]);
        close(fds[1]);
        return r;
    }
    if (pid == 0) {
        /* The child: never returns, never runs cmocka code. */
        close(fds[0]);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127); /* the parent died before prctl took effect */
        /* The child is a copy of the cmocka process: cmocka's handlers for
         * fatal signals would longjmp into the copy of the test runner and go
         * on running tests in the child.  A crash must end the child. */
        static const int fatal[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS};
        for (size_t i = 0; i < sizeof(fatal) / sizeof(fatal[0]); i++)
            signal(fatal[i], SIG_DFL);
        signal(SIGALRM, SIG_DFL);
        signal(SIGPIPE, SIG_IGN);
        alarm(alarm_s);
        int rc = fn(fds[1], arg);
        fflush(stdout);
        fflush(stderr);
        _exit(rc < 0 ? 1 : rc > 255 ? 255 : rc);
    }
    close(fds[1]);
    c->pid = pid;
    c->chan = fds[0];
    c->status = 0;
    c->reaped = 0;
    return 0;
}

static int decode_status(int st)
{
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return 255;
}

int conf_child_reap(struct conf_child *c, int timeout_ms)
{
    if (!c)
        return -EINVAL;
    if (c->chan >= 0) {
        close(c->chan);
        c->chan = -1;
    }
    if (c->reaped)
        return decode_status(c->status);
    if (c->pid <= 0)
        return -ECHILD;
    int64_t deadline = conf_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        int st;
        pid_t r = waitpid(c->pid, &st, WNOHANG);
        if (r == c->pid) {
            c->status = st;
            c->reaped = 1;
            return decode_status(st);
        }
        if (r < 0 && errno != EINTR)
            return -errno;
        if (conf_now_ms() >= deadline)
            break;
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(c->pid, SIGKILL);
    int st;
    pid_t r;
    do {
        r = waitpid(c->pid, &st, 0);
    } while (r < 0 && errno == EINTR);
    if (r != c->pid)
        return -errno;
    c->status = st;
    c->reaped = 1;
    return decode_status(st);
}

int conf_child_kill(struct conf_child *c)
{
    if (!c)
        return -EINVAL;
    if (!c->reaped && c->pid > 0)
        kill(c->pid, SIGKILL);
    return conf_child_reap(c, 0);
}
