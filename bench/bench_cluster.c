/*
 * bench_cluster.c - kvbench cluster: a
 * Mooncake trace replayed across N real kvnode processes, with local caches only and with
 * cross-node sharing.
 *
 *   kvbench cluster --trace FILE --nodes N --capacity TOKENS_PER_NODE [--json]
 *
 *   request r ──► node r mod N:  match (local L1+L2 hit)
 *                                [shared] fetch: the best remote CPU_PINNED prefix, RDMA READ
 *                                insert the whole pages (write-through: L1 -> L2, real copies)
 *
 * Each mode starts fresh nodes (host pool = capacity tokens, pages of --page-size tokens,
 * a small L1 stand-in), replays the same requests, and stops them.  The report: hit rate
 * (local only vs shared; shared = local hits + fetched pages), the exact hit rate of one
 * unlimited cache over the same requests (the ceiling), bytes fetched across nodes, fetch
 * bandwidth (bytes / time inside fetch), fetch latency p50/p99, replication lag p50/p99
 * (publisher timestamp -> applied in a peer's global index), events published and applied.
 *
 * --disagg (the demo's flow): node 0 is a prefill node, nodes 1..N-1 decode nodes.  Request r:
 * prefill match, fetch from the cluster, load back, insert (write-through), push the request's
 * pages to decode node 1 + r mod (N-1), which loads them into its L1.  --verify first runs an
 * integrity phase: pattern-filled L1 pages pushed, fetched and loaded back on other nodes
 * must keep their FNV-1a checksums byte for byte.
 *
 * Timing is measured by the nodes (fetch "us") and by this process (wall time per mode).
 */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"
#include "bench/trace.h"
#include "node/kvnode_client.h"

#define MAX_NODES 8

struct opts {
    const char *trace, *kvnode, *transport, *mode, *log_dir;
    uint32_t nodes, page_size, requests;
    uint64_t capacity, page_bytes;
    bool json, disagg, verify, quiet;
};

struct node {
    pid_t pid;
    char ctl[64], pub[64], rep[64];
    struct kvn_client *c;
};

struct result {
    const char *mode;
    uint64_t requests, total_tokens, local_hit_tokens, remote_hit_tokens;
    uint64_t fetches, fetched_pages, fetched_bytes, fetch_us;
    uint64_t pushes, pushed_bytes, push_us, loaded_pages;
    uint64_t fetch_p50_us, fetch_p99_us, lag_p50_us, lag_p99_us, lag_samples;
    uint64_t events_published, events_applied, errors;
    uint64_t verified_pages, verify_mismatch;
    uint64_t skipped_pushes; /* the prefill did not hold every page in L1 */
    double wall_s;
    uint64_t *lat; /* per-fetch "us", for p50/p99 */
    size_t n_lat, cap_lat;
};

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void lat_add(struct result *r, uint64_t us)
{
    if (r->n_lat == r->cap_lat) {
        size_t cap = r->cap_lat ? 2 * r->cap_lat : 1024;
        uint64_t *p = realloc(r->lat, cap * sizeof(uint64_t));
        if (!p)
            return;
        r->lat = p;
        r->cap_lat = cap;
    }
    r->lat[r->n_lat++] = us;
}

static void lat_finish(struct result *r)
{
    if (!r->n_lat)
        return;
    qsort(r->lat, r->n_lat, sizeof(uint64_t), cmp_u64);
    r->fetch_p50_us = r->lat[(r->n_lat - 1) / 2];
    r->fetch_p99_us = r->lat[(r->n_lat - 1) * 99 / 100];
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kvbench cluster --trace FILE --nodes N --capacity TOKENS_PER_NODE [options]\n"
            "  --trace FILE        Mooncake-format JSON lines (hash_ids of 512-token blocks)\n"
            "  --nodes N           kvnode processes to start, 2..%d (default 3)\n"
            "  --capacity TOKENS   host pool per node, in tokens (K/M suffix ok)\n"
            "  --requests K        replay the first K requests (default: all)\n"
            "  --mode M            local | shared | both (default both)\n"
            "  --disagg            node 0 prefills and pushes to decode nodes 1..N-1\n"
            "  --verify            integrity phase first (push/fetch/load back checksums)\n"
            "  --page-size T       tokens per page (default 512)\n"
            "  --page-bytes B      KV bytes per page (default 16K)\n"
            "  --transport URI     kvnode transport (default auto)\n"
            "  --kvnode PATH       kvnode binary (default: beside kvbench, ../node/kvnode)\n"
            "  --log-dir DIR       keep the nodes' logs there (default: discarded)\n"
            "  --json              one JSON object on stdout\n",
            MAX_NODES);
}

static int parse_count(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s)
        return -1;
    if (*end == 'K' || *end == 'k')
        v *= 1000, end++;
    else if (*end == 'M' || *end == 'm')
        v *= 1000000, end++;
    if (*end)
        return -1;
    *out = v;
    return 0;
}

static int parse_bytes(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s)
        return -1;
    if (*end == 'K' || *end == 'k')
        v <<= 10, end++;
    else if (*end == 'M' || *end == 'm')
        v <<= 20, end++;
    if (*end)
        return -1;
    *out = v;
    return 0;
}

/* ---- nodes ------------------------------------------------------------------------------ */

static void nodes_kill(struct node *nd, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        if (nd[i].c)
            kvn_client_close(nd[i].c);
        nd[i].c = NULL;
        if (nd[i].pid > 0) {
            kill(nd[i].pid, SIGKILL);
            waitpid(nd[i].pid, NULL, 0);
        }
        nd[i].pid = 0;
    }
}

/* SIGTERM each, bounded wait, SIGKILL what does not stop. Returns 0 when all exited 0. */
static int nodes_stop(struct node *nd, uint32_t n)
{
    int bad = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (nd[i].c)
            kvn_client_close(nd[i].c);
        nd[i].c = NULL;
        if (nd[i].pid > 0)
            kill(nd[i].pid, SIGTERM);
    }
    for (uint32_t i = 0; i < n; i++) {
        if (nd[i].pid <= 0)
            continue;
        int st = -1;
        for (int k = 0; k < 3000; k++) {
            if (waitpid(nd[i].pid, &st, WNOHANG) == nd[i].pid)
                break;
            st = -1;
            sleep_ms(10);
        }
        if (st == -1) {
            kill(nd[i].pid, SIGKILL);
            waitpid(nd[i].pid, NULL, 0);
            bad = 1;
        } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            bad = 1;
        }
        nd[i].pid = 0;
    }
    return bad ? -1 : 0;
}

static uint64_t stat_u64(struct node *n, const char *key)
{
    struct kvn_client_reply *r;
    struct kvn_err e;
    uint64_t v = 0;
    if (kvn_client_stats(n->c, &r, &e) < 0)
        return 0;
    kvn_client_reply_u64(r, key, &v);
    kvn_client_reply_free(r);
    return v;
}

static int nodes_start(const struct opts *o, struct node *nd, uint64_t pool_pages,
                       uint32_t l1_slots, bool cluster)
{
    char pool[32], l1[32], ps[16], pb[32];
    snprintf(pool, sizeof(pool), "%" PRIu64, pool_pages * o->page_bytes);
    snprintf(l1, sizeof(l1), "%" PRIu64, (uint64_t)l1_slots * o->page_bytes);
    snprintf(ps, sizeof(ps), "%u", o->page_size);
    snprintf(pb, sizeof(pb), "%" PRIu64, o->page_bytes);
    for (int attempt = 0; attempt < 5; attempt++) {
        unsigned x = (unsigned)getpid() * 2654435761u ^ (unsigned)now_us();
        int base = 20000 + (int)(x % 2500u) * 5; /* below the ephemeral ports (32768+) */
        memset(nd, 0, sizeof(*nd) * o->nodes);
        bool busy = false;
        for (uint32_t i = 0; i < o->nodes; i++) {
            int p = base + 10 * (int)i;
            snprintf(nd[i].ctl, sizeof(nd[i].ctl), "tcp://127.0.0.1:%d", p);
            snprintf(nd[i].pub, sizeof(nd[i].pub), "tcp://127.0.0.1:%d", p + 1);
            snprintf(nd[i].rep, sizeof(nd[i].rep), "tcp://127.0.0.1:%d", p + 2);
        }
        for (uint32_t i = 0; i < o->nodes; i++) {
            char *argv[64];
            int k = 0;
            argv[k++] = (char *)o->kvnode;
            argv[k++] = "--listen";
            argv[k++] = nd[i].ctl;
            argv[k++] = "--events";
            argv[k++] = nd[i].pub;
            argv[k++] = "--replay";
            argv[k++] = nd[i].rep;
            argv[k++] = "--transport";
            argv[k++] = (char *)o->transport;
            argv[k++] = "--host-pool";
            argv[k++] = pool;
            argv[k++] = "--page-size";
            argv[k++] = ps;
            argv[k++] = "--page-bytes";
            argv[k++] = pb;
            argv[k++] = "--l1";
            argv[k++] = l1;
            argv[k++] = "--no-hugepages";
            argv[k++] = "--log-level";
            argv[k++] = "warn";
            if (cluster) {
                argv[k++] = "--cluster";
                for (uint32_t j = 0; j < i; j++) {
                    argv[k++] = "--peer";
                    argv[k++] = nd[j].ctl;
                }
            }
            argv[k] = NULL;
            char logp[256];
            if (o->log_dir)
                snprintf(logp, sizeof(logp), "%s/kvnode-%u%s.log", o->log_dir, i,
                         cluster ? "" : "-local");
            pid_t p = fork();
            if (p == 0) {
                FILE *lf = o->log_dir ? freopen(logp, "w", stderr) : NULL;
                if (!lf)
                    freopen("/dev/null", "w", stderr);
                freopen("/dev/null", "w", stdout);
                execv(argv[0], argv);
                _exit(127);
            }
            if (p < 0) {
                nodes_kill(nd, o->nodes);
                return -1;
            }
            nd[i].pid = p;
            struct kvn_err e;
            bool up = false;
            for (int t = 0; t < 200 && !up; t++) {
                if (kvn_client_open(nd[i].ctl, 300, &nd[i].c, &e) < 0)
                    break;
                struct kvn_client_reply *r;
                if (kvn_client_hello(nd[i].c, &r, &e) == 0) {
                    kvn_client_reply_free(r);
                    up = true;
                }
                kvn_client_close(nd[i].c);
                nd[i].c = NULL;
                int st;
                if (!up && waitpid(p, &st, WNOHANG) == p) {
                    nd[i].pid = 0;
                    busy = true; /* most likely a port in use: try other ports */
                    break;
                }
            }
            if (!up || kvn_client_open(nd[i].ctl, 30000, &nd[i].c, &e) < 0) {
                nodes_kill(nd, o->nodes);
                if (busy)
                    break;
                fprintf(stderr, "kvbench cluster: kvnode %s did not come up\n", nd[i].ctl);
                return -1;
            }
        }
        if (busy)
            continue;
        if (cluster)
            for (uint32_t i = 0; i < o->nodes; i++) {
                int t = 0;
                while (stat_u64(&nd[i], "cluster_peers_up") != o->nodes - 1 && t++ < 500)
                    sleep_ms(20);
                if (t >= 500) {
                    fprintf(stderr, "kvbench cluster: node %u sees only %" PRIu64 " peers\n", i,
                            stat_u64(&nd[i], "cluster_peers_up"));
                    nodes_kill(nd, o->nodes);
                    return -1;
                }
            }
        return 0;
    }
    fprintf(stderr, "kvbench cluster: no free ports for %u nodes\n", o->nodes);
    return -1;
}

/* ---- one RPC helpers ---------------------------------------------------------------------- */

static int call(struct node *n, const struct kvn_client_req *q, struct kvn_client_reply **r,
                struct result *res, const char *what)
{
    struct kvn_err e;
    int rc = kvn_client_call(n->c, q, r, &e);
    if (rc < 0) {
        res->errors++;
        if (res->errors <= 5)
            fprintf(stderr, "kvbench cluster: %s at %s: %s\n", what, n->ctl, e.msg);
    }
    return rc;
}

static uint64_t rget(const struct kvn_client_reply *r, const char *k)
{
    uint64_t v = 0;
    kvn_client_reply_u64(r, k, &v);
    return v;
}

static bool wait_idle(struct node *n)
{
    for (int i = 0; i < 3000; i++) {
        if (stat_u64(n, "pending_jobs") == 0 && stat_u64(n, "jobs_active") == 0)
            return true;
        sleep_ms(2);
    }
    return false;
}

/* ---- the integrity phase (--verify) --------------------------------------------------------- */

static int sums(struct node *n, const uint32_t *slots, uint32_t k, uint64_t *out)
{
    struct kvn_client_req q = {.op = KVN_RPC_L1_CHECKSUM, .slots = slots, .n_slots = k};
    struct kvn_client_reply *r = NULL;
    struct kvn_err e;
    size_t got = 0;
    int rc = kvn_client_call(n->c, &q, &r, &e);
    if (rc == 0)
        rc = kvn_client_reply_u64_array(r, "sums", out, k, &got);
    kvn_client_reply_free(r);
    return rc == 0 && got == k ? 0 : -1;
}

/*
 * Pattern pages on node 0's L1 -> insert (write-through) -> push to node 1 -> load back there
 * -> checksums equal; then node 2 fetches them (from node 0 or 1) -> load back -> equal.
 */
static int verify_phase(const struct opts *o, struct node *nd, uint32_t l1_slots,
                        struct result *res)
{
    enum { VP = 8 };
    uint32_t ps = o->page_size;
    int32_t *toks = malloc(sizeof(int32_t) * VP * ps);
    if (!toks)
        return -1;
    for (uint32_t i = 0; i < VP * ps; i++)
        toks[i] = (int32_t)(2000000000u - i * 7u);
    uint32_t src[VP], dst[VP];
    for (uint32_t i = 0; i < VP; i++) {
        src[i] = i;
        dst[i] = l1_slots - 1 - i;
    }
    struct kvn_client_reply *r = NULL;
    uint64_t want[VP], got[VP];
    int rc = -1;
    struct kvn_client_req q = {.op = KVN_RPC_L1_FILL, .slots = src, .n_slots = VP, .seed = 31337};
    if (call(&nd[0], &q, &r, res, "l1_fill") < 0)
        goto out;
    kvn_client_reply_free(r);
    q = (struct kvn_client_req){
        .op = KVN_RPC_INSERT, .tokens = toks, .n_tokens = VP * ps, .slots = src, .n_slots = VP};
    if (call(&nd[0], &q, &r, res, "insert") < 0)
        goto out;
    kvn_client_reply_free(r);
    if (!wait_idle(&nd[0]) || sums(&nd[0], src, VP, want) < 0)
        goto out;
    /* push node 0 (L1 slots) -> node 1, load back on node 1 */
    q = (struct kvn_client_req){.op = KVN_RPC_PUSH,
                                .to = nd[1].ctl,
                                .tokens = toks,
                                .n_tokens = VP * ps,
                                .slots = src,
                                .n_slots = VP};
    if (call(&nd[0], &q, &r, res, "push") < 0)
        goto out;
    kvn_client_reply_free(r);
    q = (struct kvn_client_req){
        .op = KVN_RPC_LOAD_BACK, .tokens = toks, .n_tokens = VP * ps, .slots = dst, .n_slots = VP};
    if (call(&nd[1], &q, &r, res, "load_back") < 0)
        goto out;
    kvn_client_reply_free(r);
    if (!wait_idle(&nd[1]) || sums(&nd[1], dst, VP, got) < 0)
        goto out;
    for (uint32_t i = 0; i < VP; i++)
        res->verify_mismatch += want[i] != got[i];
    res->verified_pages += VP;
    /* fetch on the last node (needs the replicated CPU_PINNED events first) */
    struct node *f = &nd[o->nodes - 1];
    for (int t = 0; t < 250; t++) {
        q = (struct kvn_client_req){.op = KVN_RPC_MATCH, .tokens = toks, .n_tokens = VP * ps};
        if (call(f, &q, &r, res, "match") < 0)
            goto out;
        uint64_t rp = rget(r, "remote_pages");
        kvn_client_reply_free(r);
        if (rp == VP)
            break;
        sleep_ms(20);
    }
    q = (struct kvn_client_req){.op = KVN_RPC_FETCH, .tokens = toks, .n_tokens = VP * ps};
    if (call(f, &q, &r, res, "fetch") < 0)
        goto out;
    uint64_t fetched = rget(r, "fetched_pages");
    kvn_client_reply_free(r);
    if (fetched != VP) {
        fprintf(stderr, "kvbench cluster: verify fetch moved %" PRIu64 " of %d pages\n", fetched,
                VP);
        res->verify_mismatch++;
        goto out;
    }
    q = (struct kvn_client_req){
        .op = KVN_RPC_LOAD_BACK, .tokens = toks, .n_tokens = VP * ps, .slots = dst, .n_slots = VP};
    if (call(f, &q, &r, res, "load_back") < 0)
        goto out;
    kvn_client_reply_free(r);
    if (!wait_idle(f) || sums(f, dst, VP, got) < 0)
        goto out;
    for (uint32_t i = 0; i < VP; i++)
        res->verify_mismatch += want[i] != got[i];
    res->verified_pages += VP;
    /* start the replay from empty caches */
    for (uint32_t i = 0; i < o->nodes; i++) {
        q = (struct kvn_client_req){.op = KVN_RPC_RESET};
        if (call(&nd[i], &q, &r, res, "reset") < 0)
            goto out;
        kvn_client_reply_free(r);
    }
    rc = res->verify_mismatch ? -1 : 0;
out:
    free(toks);
    return rc;
}

/* ---- the replay ------------------------------------------------------------------------------ */

static int replay(const struct opts *o, const struct kvn_trace *t, size_t n_reqs, bool shared,
                  struct result *res)
{
    uint32_t ps = o->page_size;
    uint64_t pool_pages = (o->capacity + ps - 1) / ps;
    /* L1 must fit a whole request next to pages whose write-through is still pending (not
     * evictable yet): four requests' worth, the host pool being the capacity tier */
    uint32_t l1_slots = 4 * (t->max_input_length / ps + 1) + 64;
    struct node nd[MAX_NODES];
    if (nodes_start(o, nd, pool_pages, l1_slots, shared) < 0)
        return -1;
    int32_t *toks = malloc(sizeof(int32_t) * (t->max_input_length + 1));
    if (!toks) {
        nodes_kill(nd, o->nodes);
        return -1;
    }
    int rc = 0;
    if (o->verify && shared && verify_phase(o, nd, l1_slots, res) < 0) {
        fprintf(stderr, "kvbench cluster: integrity phase FAILED (%" PRIu64 " mismatching pages)\n",
                res->verify_mismatch);
        rc = -1;
    }
    uint64_t t0 = now_us();
    for (size_t i = 0; i < n_reqs && rc == 0; i++) {
        const struct kvn_trace_req *rq = &t->reqs[i];
        uint32_t pages = rq->input_length / ps;
        res->requests++;
        res->total_tokens += rq->input_length;
        if (pages == 0)
            continue;
        kvn_trace_tokens(rq, toks, pages * ps, NULL);
        uint32_t nt = pages * ps;
        struct node *n = o->disagg ? &nd[0] : &nd[i % o->nodes];
        struct kvn_client_reply *r = NULL;
        struct kvn_client_req q = {.op = KVN_RPC_MATCH, .tokens = toks, .n_tokens = nt};
        if (call(n, &q, &r, res, "match") < 0)
            continue;
        uint64_t local = rget(r, "matched_tokens");
        uint64_t fetchable = 0;
        if (kvn_client_reply_u64(r, "fetchable", &fetchable) < 0)
            fetchable = rget(r, "remote_fetchable_pages");
        kvn_client_reply_free(r);
        res->local_hit_tokens += local;
        if (shared && fetchable) {
            q = (struct kvn_client_req){.op = KVN_RPC_FETCH, .tokens = toks, .n_tokens = nt};
            if (call(n, &q, &r, res, "fetch") == 0) {
                uint64_t fp = rget(r, "fetched_pages");
                res->fetches += fp > 0;
                res->fetched_pages += fp;
                res->fetched_bytes += rget(r, "bytes");
                res->fetch_us += rget(r, "us");
                if (fp)
                    lat_add(res, rget(r, "us"));
                res->remote_hit_tokens += fp * ps;
                kvn_client_reply_free(r);
            }
        }
        if (o->disagg && shared) {
            /* the prefill engine loads the host part of its hit into L1 */
            q = (struct kvn_client_req){.op = KVN_RPC_LOAD_BACK, .tokens = toks, .n_tokens = nt};
            if (call(n, &q, &r, res, "load_back") == 0) {
                uint64_t lp = rget(r, "pages");
                res->loaded_pages += lp;
                kvn_client_reply_free(r);
                if (lp)
                    wait_idle(n); /* the engine waits for its pages before computing on */
            }
        }
        q = (struct kvn_client_req){.op = KVN_RPC_INSERT, .tokens = toks, .n_tokens = nt};
        if (call(n, &q, &r, res, "insert") < 0)
            continue;
        kvn_client_reply_free(r);
        if (o->disagg && shared) {
            /* push the request's pages from the prefill L1 to its decode node */
            q = (struct kvn_client_req){.op = KVN_RPC_MATCH, .tokens = toks, .n_tokens = nt};
            if (call(n, &q, &r, res, "match") < 0)
                continue;
            uint64_t slots[1024];
            size_t ns = 0;
            kvn_client_reply_u64_array(r, "slots", slots, 1024, &ns);
            kvn_client_reply_free(r);
            if (ns < pages || ns > 1024) {
                res->skipped_pushes++; /* not all in L1 */
                continue;
            }
            uint32_t s32[1024];
            for (size_t k = 0; k < pages; k++)
                s32[k] = (uint32_t)slots[k];
            struct node *d = &nd[1 + i % (o->nodes - 1)];
            q = (struct kvn_client_req){.op = KVN_RPC_PUSH,
                                        .to = d->ctl,
                                        .tokens = toks,
                                        .n_tokens = nt,
                                        .slots = s32,
                                        .n_slots = pages};
            if (call(n, &q, &r, res, "push") == 0) {
                res->pushes++;
                res->pushed_bytes += rget(r, "bytes");
                res->push_us += rget(r, "us");
                kvn_client_reply_free(r);
            }
            q = (struct kvn_client_req){.op = KVN_RPC_LOAD_BACK, .tokens = toks, .n_tokens = nt};
            if (call(d, &q, &r, res, "load_back") == 0) {
                res->loaded_pages += rget(r, "pages");
                kvn_client_reply_free(r);
            }
        }
        if (!o->quiet && !o->json && (i + 1) % 1000 == 0)
            fprintf(stderr, "  %s: %zu/%zu requests\n", res->mode, i + 1, n_reqs);
    }
    for (uint32_t i = 0; i < o->nodes; i++)
        wait_idle(&nd[i]);
    res->wall_s = (double)(now_us() - t0) / 1e6;
    sleep_ms(300); /* last batches reach the peers */
    for (uint32_t i = 0; i < o->nodes; i++) {
        res->events_published += stat_u64(&nd[i], "events_published");
        res->events_applied += stat_u64(&nd[i], "cluster_events_applied");
        uint64_t v;
        if ((v = stat_u64(&nd[i], "cluster_lag_p50_us")) > res->lag_p50_us)
            res->lag_p50_us = v;
        if ((v = stat_u64(&nd[i], "cluster_lag_p99_us")) > res->lag_p99_us)
            res->lag_p99_us = v;
        res->lag_samples += stat_u64(&nd[i], "cluster_lag_samples");
        if (stat_u64(&nd[i], "cluster_pins_active") || stat_u64(&nd[i], "cluster_sub_malformed"))
            res->errors++;
    }
    lat_finish(res);
    free(toks);
    if (nodes_stop(nd, o->nodes) < 0) {
        fprintf(stderr, "kvbench cluster: a node did not stop cleanly\n");
        rc = -1;
    }
    return rc;
}

static cJSON *result_json(const struct result *r, double ceiling)
{
    cJSON *j = cJSON_CreateObject();
    double tot = r->total_tokens ? (double)r->total_tokens : 1;
    cJSON_AddStringToObject(j, "mode", r->mode);
    cJSON_AddNumberToObject(j, "requests", (double)r->requests);
    cJSON_AddNumberToObject(j, "input_tokens", (double)r->total_tokens);
    cJSON_AddNumberToObject(j, "local_hit_tokens", (double)r->local_hit_tokens);
    cJSON_AddNumberToObject(j, "remote_hit_tokens", (double)r->remote_hit_tokens);
    cJSON_AddNumberToObject(j, "local_hit_rate", (double)r->local_hit_tokens / tot);
    cJSON_AddNumberToObject(j, "remote_hit_rate", (double)r->remote_hit_tokens / tot);
    cJSON_AddNumberToObject(j, "hit_rate",
                            (double)(r->local_hit_tokens + r->remote_hit_tokens) / tot);
    cJSON_AddNumberToObject(j, "unlimited_hit_rate", ceiling);
    cJSON_AddNumberToObject(j, "fetches", (double)r->fetches);
    cJSON_AddNumberToObject(j, "fetched_pages", (double)r->fetched_pages);
    cJSON_AddNumberToObject(j, "fetched_bytes", (double)r->fetched_bytes);
    cJSON_AddNumberToObject(j, "fetch_gbps",
                            r->fetch_us ? (double)r->fetched_bytes / (double)r->fetch_us / 1e3 : 0);
    cJSON_AddNumberToObject(j, "fetch_p50_us", (double)r->fetch_p50_us);
    cJSON_AddNumberToObject(j, "fetch_p99_us", (double)r->fetch_p99_us);
    cJSON_AddNumberToObject(j, "pushes", (double)r->pushes);
    cJSON_AddNumberToObject(j, "pushed_bytes", (double)r->pushed_bytes);
    cJSON_AddNumberToObject(j, "skipped_pushes", (double)r->skipped_pushes);
    cJSON_AddNumberToObject(j, "push_gbps",
                            r->push_us ? (double)r->pushed_bytes / (double)r->push_us / 1e3 : 0);
    cJSON_AddNumberToObject(j, "loaded_back_pages", (double)r->loaded_pages);
    cJSON_AddNumberToObject(j, "replication_lag_p50_us", (double)r->lag_p50_us);
    cJSON_AddNumberToObject(j, "replication_lag_p99_us", (double)r->lag_p99_us);
    cJSON_AddNumberToObject(j, "replication_lag_samples", (double)r->lag_samples);
    cJSON_AddNumberToObject(j, "events_published", (double)r->events_published);
    cJSON_AddNumberToObject(j, "events_applied", (double)r->events_applied);
    cJSON_AddNumberToObject(j, "verified_pages", (double)r->verified_pages);
    cJSON_AddNumberToObject(j, "verify_mismatch", (double)r->verify_mismatch);
    cJSON_AddNumberToObject(j, "errors", (double)r->errors);
    cJSON_AddNumberToObject(j, "wall_s", r->wall_s);
    return j;
}

static void result_print(const struct result *r, double ceiling)
{
    double tot = r->total_tokens ? (double)r->total_tokens : 1;
    printf("[%s] %" PRIu64 " requests, %" PRIu64 " input tokens, %.1f s\n", r->mode, r->requests,
           r->total_tokens, r->wall_s);
    printf("  hit rate            %.4f  (local %.4f + remote %.4f; one unlimited cache: %.4f)\n",
           (double)(r->local_hit_tokens + r->remote_hit_tokens) / tot,
           (double)r->local_hit_tokens / tot, (double)r->remote_hit_tokens / tot, ceiling);
    if (r->fetched_bytes || r->fetches)
        printf("  fetched             %" PRIu64 " pages, %.1f MB in %" PRIu64
               " fetches, %.3f GB/s inside fetch, latency p50 %" PRIu64 " us p99 %" PRIu64 " us\n",
               r->fetched_pages, (double)r->fetched_bytes / 1e6, r->fetches,
               r->fetch_us ? (double)r->fetched_bytes / (double)r->fetch_us / 1e3 : 0,
               r->fetch_p50_us, r->fetch_p99_us);
    if (r->pushes)
        printf("  pushed              %" PRIu64
               " requests, %.1f MB, %.3f GB/s inside push; %" PRIu64 " pages loaded back\n",
               r->pushes, (double)r->pushed_bytes / 1e6,
               r->push_us ? (double)r->pushed_bytes / (double)r->push_us / 1e3 : 0,
               r->loaded_pages);
    printf("  events              %" PRIu64 " published, %" PRIu64
           " applied by peers; replication lag p50 %" PRIu64 " us p99 %" PRIu64 " us (%" PRIu64
           " batches)\n",
           r->events_published, r->events_applied, r->lag_p50_us, r->lag_p99_us, r->lag_samples);
    if (r->verified_pages)
        printf("  integrity           %" PRIu64 " pages pushed/fetched and loaded back, %" PRIu64
               " mismatches\n",
               r->verified_pages, r->verify_mismatch);
    if (r->errors)
        printf("  errors              %" PRIu64 "\n", r->errors);
}

static char *default_kvnode(void)
{
    static char path[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 32);
    if (n <= 0)
        return NULL;
    path[n] = 0;
    char *slash = strrchr(path, '/');
    if (!slash)
        return NULL;
    strcpy(slash, "/../node/kvnode");
    return path;
}

int kvn_bench_cluster_main(int argc, char **argv)
{
    struct opts o = {
        .transport = "auto", .mode = "both", .nodes = 3, .page_size = 512, .page_bytes = 16384};
    static const struct option lo[] = {{"trace", required_argument, NULL, 't'},
                                       {"nodes", required_argument, NULL, 'n'},
                                       {"capacity", required_argument, NULL, 'c'},
                                       {"requests", required_argument, NULL, 'r'},
                                       {"mode", required_argument, NULL, 'm'},
                                       {"disagg", no_argument, NULL, 'd'},
                                       {"verify", no_argument, NULL, 'v'},
                                       {"page-size", required_argument, NULL, 'p'},
                                       {"page-bytes", required_argument, NULL, 'b'},
                                       {"transport", required_argument, NULL, 'x'},
                                       {"kvnode", required_argument, NULL, 'k'},
                                       {"json", no_argument, NULL, 'j'},
                                       {"log-dir", required_argument, NULL, 'l'},
                                       {"quiet", no_argument, NULL, 'q'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
    int opt;
    uint64_t v;
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (opt) {
        case 't':
            o.trace = optarg;
            break;
        case 'n':
            if (parse_count(optarg, &v) < 0 || v < 2 || v > MAX_NODES)
                goto bad;
            o.nodes = (uint32_t)v;
            break;
        case 'c':
            if (parse_count(optarg, &o.capacity) < 0 || o.capacity == 0)
                goto bad;
            break;
        case 'r':
            if (parse_count(optarg, &v) < 0 || v > UINT32_MAX)
                goto bad;
            o.requests = (uint32_t)v;
            break;
        case 'm':
            if (strcmp(optarg, "local") && strcmp(optarg, "shared") && strcmp(optarg, "both"))
                goto bad;
            o.mode = optarg;
            break;
        case 'd':
            o.disagg = true;
            break;
        case 'v':
            o.verify = true;
            break;
        case 'p':
            if (parse_count(optarg, &v) < 0 || v == 0 || v > 4096)
                goto bad;
            o.page_size = (uint32_t)v;
            break;
        case 'b':
            if (parse_bytes(optarg, &o.page_bytes) < 0 || o.page_bytes == 0 ||
                o.page_bytes > (1u << 24))
                goto bad;
            break;
        case 'x':
            o.transport = optarg;
            break;
        case 'k':
            o.kvnode = optarg;
            break;
        case 'j':
            o.json = true;
            break;
        case 'l':
            o.log_dir = optarg;
            break;
        case 'q':
            o.quiet = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            goto bad;
        }
    }
    if (!o.trace || !o.capacity || optind < argc)
        goto bad;
    if (!o.kvnode)
        o.kvnode = default_kvnode();
    if (!o.kvnode || access(o.kvnode, X_OK) != 0) {
        fprintf(stderr, "kvbench cluster: no kvnode binary (give --kvnode PATH)\n");
        return 2;
    }
    if (o.capacity / o.page_size == 0) {
        fprintf(stderr, "kvbench cluster: --capacity holds no page of %u tokens\n", o.page_size);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct kvn_trace t;
    struct kvn_err e;
    if (kvn_trace_load(&t, o.trace, o.requests, &e) < 0) {
        fprintf(stderr, "kvbench cluster: %s: %s\n", o.trace, e.msg);
        return 1;
    }
    size_t n_reqs = t.n_reqs;
    uint64_t hit = 0, tot = 0;
    double ceiling = 0;
    if (kvn_trace_exact_hits(&t, n_reqs, KVN_TRACE_HIT_FULL_BLOCKS, &hit, &tot, NULL) == 0 && tot)
        ceiling = (double)hit / (double)tot;
    struct result res[2];
    memset(res, 0, sizeof(res));
    res[0].mode = "local";
    res[1].mode = "shared";
    bool do_local = strcmp(o.mode, "shared") != 0, do_shared = strcmp(o.mode, "local") != 0;
    int rc = 0;
    if (do_local && replay(&o, &t, n_reqs, false, &res[0]) < 0)
        rc = 1;
    if (rc == 0 && do_shared && replay(&o, &t, n_reqs, true, &res[1]) < 0)
        rc = 1;
    if (o.json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "trace", o.trace);
        cJSON_AddNumberToObject(j, "nodes", o.nodes);
        cJSON_AddNumberToObject(j, "capacity_tokens_per_node", (double)o.capacity);
        cJSON_AddNumberToObject(j, "page_size", o.page_size);
        cJSON_AddNumberToObject(j, "page_bytes", (double)o.page_bytes);
        cJSON_AddStringToObject(j, "transport", o.transport);
        cJSON_AddBoolToObject(j, "disagg", o.disagg);
        if (do_local)
            cJSON_AddItemToObject(j, "local", result_json(&res[0], ceiling));
        if (do_shared)
            cJSON_AddItemToObject(j, "shared", result_json(&res[1], ceiling));
        if (do_local && do_shared && res[0].local_hit_tokens)
            cJSON_AddNumberToObject(j, "shared_over_local",
                                    (double)(res[1].local_hit_tokens + res[1].remote_hit_tokens) /
                                        (double)res[0].local_hit_tokens);
        cJSON_AddBoolToObject(j, "ok", rc == 0);
        char *s = cJSON_PrintUnformatted(j);
        printf("%s\n", s ? s : "{}");
        free(s);
        cJSON_Delete(j);
    } else {
        printf("kvbench cluster: %s, %zu requests, %u nodes x %" PRIu64
               " tokens, pages of %u tokens / %" PRIu64 " bytes, transport %s%s\n",
               o.trace, n_reqs, o.nodes, o.capacity, o.page_size, o.page_bytes, o.transport,
               o.disagg ? ", prefill node 0 -> decode nodes" : "");
        if (do_local)
            result_print(&res[0], ceiling);
        if (do_shared)
            result_print(&res[1], ceiling);
        if (do_local && do_shared && res[0].local_hit_tokens)
            printf("  shared / local hit rate: %.2fx\n",
                   (double)(res[1].local_hit_tokens + res[1].remote_hit_tokens) /
                       (double)res[0].local_hit_tokens);
    }
    for (int i = 0; i < 2; i++)
        if (res[i].errors || res[i].verify_mismatch)
            rc = 1;
    free(res[0].lat);
    free(res[1].lat);
    kvn_trace_free(&t);
    return rc;
bad:
    usage(stderr);
    return 2;
}
