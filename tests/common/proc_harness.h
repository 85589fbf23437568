/*
 * proc_harness.h - the process side shared by the integration suites (tests/node, tests/cluster):
 * start real kvnode (and other) processes, on 127.0.0.1 or inside a network namespace the test
 * created, wait for them, talk to them through libkvnode, and always reap them.
 *
 * Every process started here (or handed to th_track()) is recorded; th_kill_all() (run from each
 * test's teardown, so also after a failed assertion) SIGKILLs and reaps what is still alive.
 * Waits are bounded by iteration counts, never measured.
 *
 * Test-only code: single-threaded callers, one process table per test executable.
 */
#ifndef TESTS_COMMON_PROC_HARNESS_H
#define TESTS_COMMON_PROC_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "node/kvnode_client.h"

#define TH_MAX_PROCS 64

struct th_env {
    const char *kvnode, *kvctl;
    const char *ipbin; /* iproute2's ip, for nodes inside a network namespace (NULL: "ip") */
    pid_t procs[TH_MAX_PROCS];
    int n_procs;
    char tmpdir[64];
};

extern struct th_env TH;

void th_sleep_ms(int ms);

/* Records p so that th_kill_all() reaps it (a full table drops it silently). */
void th_track(pid_t p);
void th_untrack(pid_t p);

/*
 * Starts argv (execvp) with stdout, and stderr unless err_path, redirected to out_path
 * (NULL: /dev/null); the child is tracked.  The pid, or -1.
 */
pid_t th_spawn(char *const argv[], const char *out_path, const char *err_path);

/* Waits up to ~ms for p; its exit status (128+sig if killed), or -1 after SIGKILL. */
int th_wait(pid_t p, int ms);

/* SIGKILLs and reaps every tracked process. */
void th_kill_all(void);

/* The whole file, malloc'd and NUL-terminated ("" when it cannot be read). */
char *th_slurp(const char *path);

/* TH.tmpdir/name into buf. */
void th_path(char *buf, size_t cap, const char *name);

/* mkdtemp(template) into TH.tmpdir and SIGPIPE ignored; 0 or -1. */
int th_tmpdir_make(const char *template_);

/* rm -rf TH.tmpdir; 0 or -1. */
int th_tmpdir_remove(void);

/*
 * The integration tests' command line: argv[1] = kvnode, argv[2] = kvctl (into TH), then the
 * caller's own.  With fewer than min_argc words, prints "usage: PROG usage" and returns -1 (the
 * test exits 2); else 0.
 */
int th_args(int argc, char **argv, int min_argc, const char *usage);

/* cmocka teardown fixture: th_kill_all(). */
int th_teardown(void **state);

/* A pseudo-random port base 20000 + k * stride, k < slots (different on every call). */
int th_port_base(unsigned slots, int stride);

/* ---- kvnode ---- */

struct th_node {
    pid_t pid;
    int port;
    char host[32], ns[32]; /* ns: network namespace ("" for none) */
    char ctl[64], pub[64], rep[64], log[160];
    struct kvn_client *c;
};

/* n zeroed, then control/events/replay endpoints on host (NULL: 127.0.0.1) at port, +1, +2. */
void th_node_addrs(struct th_node *n, const char *host, const char *ns, int port);

/* Why th_node_launch() failed, when the process exited before answering hello. */
enum {
    TH_EXITED = 1u << 0,      /* kvnode exited (its log was printed to stderr) */
    TH_EXIT_BUSY = 1u << 1,   /* ... saying a port was in use */
    TH_EXIT_NOTSUP = 1u << 2, /* ... saying the transport is not available here */
};

/*
 * Starts TH.kvnode for n (th_node_addrs first, n->log set) with --listen/--events/--replay,
 * --no-hugepages and extra (NULL-terminated), inside n->ns when set, and waits (bounded) until it
 * answers hello.  On success n->c is open with client timeout work_timeout_ms (0: keep the
 * 300 ms used for hello).  Returns 0 or -EIO; *why (may be NULL) gets TH_EXIT* bits (0 when the
 * process is still running or never started).
 */
int th_node_launch(struct th_node *n, const char *const extra[], int work_timeout_ms,
                   unsigned *why);

/* SIGTERM, bounded wait; the exit status (0 expected), -1 when not running. */
int th_node_stop(struct th_node *n);

/* SIGKILL (no goodbye) and reap. */
void th_node_kill9(struct th_node *n);

/* One stat of n (UINT64_MAX when unreadable). */
uint64_t th_stat(struct th_node *n, const char *key);

/* Waits (bounded: tries x 10 ms) until no copy job is pending or in flight. */
bool th_quiesce(struct th_node *n, int tries);

#endif /* TESTS_COMMON_PROC_HARNESS_H */
