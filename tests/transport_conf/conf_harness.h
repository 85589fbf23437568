/*
 * conf_harness.h - the two-process machinery of the transport conformance suite.
 *
 * The suite checks a transport backend across real process boundaries: the
 * parent (the cmocka process) is the initiator, each forked child is a target
 * that owns a registered region and answers commands over a bootstrap channel.
 *
 *      parent (cmocka, initiator)                 child (target, no cmocka)
 *     +---------------------------+  socketpair  +---------------------------+
 *     | conf_child_spawn() ------------ fork ------> fn(chan_fd, arg)          |
 *     | conf_chan_send/recv <====== SEQPACKET ======> conf_chan_send/recv     |
 *     | kvn_xport_post(...)  ~~~~~~~~ transport ~~~~~~> registered region      |
 *     | conf_child_reap/kill()                        | alarm() + _exit()      |
 *     +---------------------------+              +---------------------------+
 *
 * This file knows nothing of the transport: it provides
 *   - children that always end: PR_SET_PDEATHSIG, an alarm() in the child,
 *     _exit() (never exit(), never return into cmocka), and a parent-side reap
 *     with a deadline that SIGKILLs a child that overstays, so no zombie and no
 *     orphan survives a test, even a failed one;
 *   - a message channel with deadlines: a socketpair(AF_UNIX, SOCK_SEQPACKET)
 *     created before fork, so message boundaries are kept and a dead peer reads
 *     as EOF (-EPIPE) rather than a hang;
 *   - deterministic, position-dependent patterns (byte at absolute position p
 *     of pattern s is a function of s and p only, so a misplaced byte is
 *     caught, not only a wrong one);
 *   - a fast 64-bit checksum (word at a time) used to compare a remote region
 *     with what the initiator expects without shipping the bytes back.
 *
 * Thread rules: none of this is thread-safe; the suite uses processes.
 * Every function returns 0 / a count, or a negative errno code.
 */
#ifndef CONF_HARNESS_H
#define CONF_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- checksums and patterns ------------------------------------------ */

/* 64-bit checksum of len bytes at p (any alignment; p may be NULL when len is 0). */
uint64_t conf_hash64(const void *p, size_t len);

/* Byte at absolute position pos of pattern seed. */
uint8_t conf_pattern_byte(uint64_t seed, uint64_t pos);

/* Writes the bytes of pattern seed for positions [pos, pos + len) into buf. */
void conf_pattern_fill(void *buf, size_t len, uint64_t seed, uint64_t pos);

/* Checks buf against pattern seed at positions [pos, pos + len): returns the
 * index of the first byte that differs, or -1 when all match. */
long long conf_pattern_check(const void *buf, size_t len, uint64_t seed, uint64_t pos);

/* conf_hash64 of the pattern bytes [pos, pos + len) without materialising them
 * in one buffer (uses a bounded scratch buffer). */
uint64_t conf_pattern_hash(size_t len, uint64_t seed, uint64_t pos);

/* ---- bootstrap channel ------------------------------------------------- */

#define CONF_CHAN_MAX 65536 /* largest payload of one message */

/* Creates the two ends of a channel (fds[0] parent side, fds[1] child side). */
int conf_chan_pair(int fds[2]);

/* Sends one message (type, payload of len <= CONF_CHAN_MAX). -EPIPE when the
 * other end is gone, -EMSGSIZE when len is too large. */
int conf_chan_send(int fd, uint32_t type, const void *buf, size_t len);

/*
 * Receives one message within timeout_ms (-1: no limit; the suite always
 * passes one). Fills *type and up to cap payload bytes, sets *len.
 * -ETIMEDOUT when nothing arrived in time, -EPIPE on EOF (the peer died or
 * closed), -EMSGSIZE when the payload exceeds cap, -EPROTO on a malformed
 * message.
 */
int conf_chan_recv(int fd, int timeout_ms, uint32_t *type, void *buf, size_t cap, size_t *len);

/* ---- children ---------------------------------------------------------- */

struct conf_child {
    pid_t pid;  /* 0 when none */
    int chan;   /* parent's end of the channel, -1 when none */
    int status; /* raw waitpid status once reaped */
    int reaped; /* 1 once waitpid collected it */
};

/* Initialiser of a struct conf_child that holds no child (reap is then a no-op). */
#define CONF_CHILD_INIT                                                                            \
    {                                                                                              \
        0, -1, 0, 0                                                                                \
    }

/*
 * Forks a child that runs fn(chan_fd, arg) and then _exit()s with its return
 * value (clamped to 0..255). In the child: SIGKILL on parent death, an alarm of
 * alarm_s seconds (default action: terminate), stdout flushed on exit.
 * fn must not return into cmocka: it runs in a copy of the process.
 */
int conf_child_spawn(struct conf_child *c, int (*fn)(int chan, void *arg), void *arg,
                     unsigned alarm_s);

/*
 * Waits up to timeout_ms for the child to end; SIGKILLs it when it overstays
 * and always reaps it. Returns the child's exit code (0..255), or 128 + signal
 * number when it was killed by a signal, or -ECHILD when there is no child.
 * Closes the channel. Idempotent.
 */
int conf_child_reap(struct conf_child *c, int timeout_ms);

/* SIGKILLs the child now and reaps it (returns as conf_child_reap). */
int conf_child_kill(struct conf_child *c);

/* Milliseconds on CLOCK_MONOTONIC: for deadlines only, never to measure. */
int64_t conf_now_ms(void);

#endif /* CONF_HARNESS_H */
