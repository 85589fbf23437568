/* config.c - kvnode's flags (see kvn_config.h). */
#include "node/kvn_config.h"

#include <ctype.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

enum {
    OPT_LISTEN = 256,
    OPT_TRANSPORT,
    OPT_HOST_POOL,
    OPT_PAGE_SIZE,
    OPT_PAGE_BYTES,
    OPT_WRITE_POLICY,
    OPT_EVENTS,
    OPT_REPLAY,
    OPT_TOPIC,
    OPT_REPLAY_TOPIC,
    OPT_EVENTS_FORMAT,
    OPT_BUFFER_STEPS,
    OPT_L1,
    OPT_ACK_DELAY,
    OPT_LOG_LEVEL,
    OPT_STORAGE,
    OPT_NUMA,
    OPT_NO_HUGEPAGES,
    OPT_DP_RANK,
    OPT_CLUSTER,
    OPT_PEER,
    OPT_HEARTBEAT,
    OPT_PEER_TIMEOUT,
    OPT_FETCH_HOLD,
    OPT_HELP,
};

static const struct option long_opts[] = {
    {"listen", required_argument, NULL, OPT_LISTEN},
    {"transport", required_argument, NULL, OPT_TRANSPORT},
    {"host-pool", required_argument, NULL, OPT_HOST_POOL},
    {"page-size", required_argument, NULL, OPT_PAGE_SIZE},
    {"page-bytes", required_argument, NULL, OPT_PAGE_BYTES},
    {"write-policy", required_argument, NULL, OPT_WRITE_POLICY},
    {"events", required_argument, NULL, OPT_EVENTS},
    {"replay", required_argument, NULL, OPT_REPLAY},
    {"topic", required_argument, NULL, OPT_TOPIC},
    {"replay-topic", no_argument, NULL, OPT_REPLAY_TOPIC},
    {"events-format", required_argument, NULL, OPT_EVENTS_FORMAT},
    {"buffer-steps", required_argument, NULL, OPT_BUFFER_STEPS},
    {"l1", required_argument, NULL, OPT_L1},
    {"inject-ack-delay", required_argument, NULL, OPT_ACK_DELAY},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"storage", required_argument, NULL, OPT_STORAGE},
    {"numa-node", required_argument, NULL, OPT_NUMA},
    {"no-hugepages", no_argument, NULL, OPT_NO_HUGEPAGES},
    {"dp-rank", required_argument, NULL, OPT_DP_RANK},
    {"cluster", no_argument, NULL, OPT_CLUSTER},
    {"peer", required_argument, NULL, OPT_PEER},
    {"heartbeat-ms", required_argument, NULL, OPT_HEARTBEAT},
    {"peer-timeout-ms", required_argument, NULL, OPT_PEER_TIMEOUT},
    {"inject-fetch-hold", required_argument, NULL, OPT_FETCH_HOLD},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

void kvn_config_defaults(struct kvn_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    strcpy(cfg->listen, "tcp://127.0.0.1:7100");
    strcpy(cfg->transport, "auto");
    cfg->host_pool = 1ull << 30;
    cfg->page_size = 16;
    cfg->page_bytes = 64 * 1024;
    cfg->write_policy = KVN_WRITE_THROUGH;
    strcpy(cfg->topic, "kv-events");
    cfg->events_format = KVN_NODE_EVFMT_ARRAY;
    cfg->buffer_steps = 10000;
    cfg->log_level = KVN_LOG_INFO;
    cfg->numa_node = -1;
    cfg->hugepages = true;
}

const char *kvn_config_write_policy_name(enum kvn_write_policy p)
{
    switch (p) {
    case KVN_WRITE_THROUGH:
        return "write_through";
    case KVN_WRITE_THROUGH_SELECTIVE:
        return "write_through_selective";
    case KVN_WRITE_BACK:
        return "write_back";
    }
    return "?";
}

void kvn_config_usage(FILE *f, const char *prog)
{
    fprintf(
        f,
        "usage: %s [flags]\n"
        "kvnode: RDMA KV cache node (control RPC over ZeroMQ, see node/kvn_rpc.h)\n"
        "\n"
        "  --listen tcp://HOST:PORT     control RPC ROUTER endpoint (default "
        "tcp://127.0.0.1:7100)\n"
        "  --transport URI              auto, ofi+tcp, ofi+shm, ofi+verbs, ucx+tcp, ucx+sm, ucx,\n"
        "                               verbs+DEVICE (default auto)\n"
        "  --host-pool SIZE             L2 host pool bytes, K/M/G suffix (default 1G)\n"
        "  --page-size TOKENS           tokens per page (default 16)\n"
        "  --page-bytes BYTES           KV bytes per page, K/M/G suffix (default 64K)\n"
        "  --write-policy P             write_through | write_through_selective | write_back\n"
        "                               (default write_through)\n"
        "  --events tcp://HOST:PORT     KV events PUB endpoint (default: off)\n"
        "  --replay tcp://HOST:PORT     KV events replay ROUTER endpoint (default: off)\n"
        "  --topic T                    events topic (default kv-events)\n"
        "  --replay-topic               replay replies carry the topic frame (vLLM >= 0.26)\n"
        "  --events-format F            array (SGLang) | map (vLLM) (default array)\n"
        "  --buffer-steps N             replay history in batches (default 10000)\n"
        "  --l1 SIZE                    allocate and register an L1 stand-in region of SIZE\n"
        "                               bytes (slots = SIZE / page-bytes), reached over a\n"
        "                               loopback connection of the transport (default: off)\n"
        "  --inject-ack-delay MS        hold every completion MS milliseconds before\n"
        "                               processing it (test aid for the split race; default 0)\n"
        "  --storage DIR                L3 tier: back up acknowledged fragments to files in DIR\n"
        "                               (default: off)\n"
        "  --numa-node N                bind the host pool to NUMA node N (default: none)\n"
        "  --no-hugepages               do not try MAP_HUGETLB for the host pool\n"
        "  --dp-rank N                  dp_rank field of event batches (default 0)\n"
        "  --cluster                    run the cluster layer (peers, replication, fetch, push)\n"
        "                               even without --peer (others may join this node)\n"
        "  --peer tcp://HOST:PORT       a peer's control endpoint (repeatable, up to 64;\n"
        "                               implies --cluster)\n"
        "  --heartbeat-ms MS            peer heartbeat period (default 200)\n"
        "  --peer-timeout-ms MS         a peer silent this long is dead (default 1500)\n"
        "  --inject-fetch-hold MS       hold a fetch MS between reading and unpinning (test aid)\n"
        "  --log-level L                error | warn | info | debug (default info)\n"
        "  --help                       this text\n"
        "\n"
        "SIGTERM/SIGINT: stop accepting requests, drain outstanding completions, flush events,\n"
        "exit 0. Exit code 2 on a usage error.\n",
        prog);
}

int kvn_config_parse_size(const char *s, uint64_t *out, struct kvn_err *err)
{
    if (!s || !out)
        return kvn_err_set(err, -EINVAL, "size is NULL");
    const char *p = s;
    if (!isdigit((unsigned char)*p))
        return kvn_err_set(err, -EINVAL, "size \"%s\" must start with a digit", s);
    uint64_t v = 0;
    while (isdigit((unsigned char)*p)) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return kvn_err_set(err, -EINVAL, "size \"%s\" overflows", s);
        v = v * 10 + d;
        p++;
    }
    unsigned shift = 0;
    switch (*p) {
    case '\0':
        break;
    case 'k':
    case 'K':
        shift = 10;
        p++;
        break;
    case 'm':
    case 'M':
        shift = 20;
        p++;
        break;
    case 'g':
    case 'G':
        shift = 30;
        p++;
        break;
    default:
        return kvn_err_set(err, -EINVAL, "size \"%s\": unknown suffix", s);
    }
    if (*p == 'i' || *p == 'I')
        p++;
    if (*p == 'b' || *p == 'B')
        p++;
    if (*p != '\0')
        return kvn_err_set(err, -EINVAL, "size \"%s\": junk after the suffix", s);
    if (shift && v > (UINT64_MAX >> shift))
        return kvn_err_set(err, -EINVAL, "size \"%s\" overflows", s);
    *out = v << shift;
    return 0;
}

static int parse_u32(const char *flag, const char *s, uint32_t min, uint32_t max, uint32_t *out,
                     struct kvn_err *err)
{
    char *end;
    errno = 0;
    if (!s || !isdigit((unsigned char)*s))
        return kvn_err_set(err, -EINVAL, "--%s needs a number", flag);
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return kvn_err_set(err, -EINVAL, "--%s %s: want an integer in [%u, %u]", flag, s, min, max);
    *out = (uint32_t)v;
    return 0;
}

static int copy_str(const char *flag, const char *s, char *dst, struct kvn_err *err)
{
    size_t n = strlen(s);
    if (n >= KVN_CONFIG_STR_MAX)
        return kvn_err_set(err, -EINVAL, "--%s: value longer than %d bytes", flag,
                           KVN_CONFIG_STR_MAX - 1);
    memcpy(dst, s, n + 1);
    return 0;
}

static int check_endpoint(const char *flag, const char *ep, struct kvn_err *err)
{
    if (ep[0] == '\0')
        return 0;
    if (strncmp(ep, "tcp://", 6) && strncmp(ep, "ipc://", 6) && strncmp(ep, "inproc://", 9))
        return kvn_err_set(err, -EINVAL, "--%s %s: want tcp://HOST:PORT", flag, ep);
    return 0;
}

static int set_size(const char *flag, const char *s, uint64_t *dst, struct kvn_err *err)
{
    struct kvn_err e;
    if (kvn_config_parse_size(s, dst, &e) < 0)
        return kvn_err_set(err, -EINVAL, "--%s: %s", flag, e.msg);
    return 0;
}

static int apply(struct kvn_config *c, int opt, const char *arg, struct kvn_err *err)
{
    uint32_t u;
    int rc = 0;
    switch (opt) {
    case OPT_LISTEN:
        return copy_str("listen", arg, c->listen, err);
    case OPT_TRANSPORT:
        return copy_str("transport", arg, c->transport, err);
    case OPT_HOST_POOL:
        return set_size("host-pool", arg, &c->host_pool, err);
    case OPT_PAGE_SIZE:
        return parse_u32("page-size", arg, 1, 1u << 20, &c->page_size, err);
    case OPT_PAGE_BYTES:
        return set_size("page-bytes", arg, &c->page_bytes, err);
    case OPT_WRITE_POLICY:
        if (!strcmp(arg, "write_through"))
            c->write_policy = KVN_WRITE_THROUGH;
        else if (!strcmp(arg, "write_through_selective"))
            c->write_policy = KVN_WRITE_THROUGH_SELECTIVE;
        else if (!strcmp(arg, "write_back"))
            c->write_policy = KVN_WRITE_BACK;
        else
            return kvn_err_set(err, -EINVAL,
                               "--write-policy %s: want write_through, "
                               "write_through_selective or write_back",
                               arg);
        return 0;
    case OPT_EVENTS:
        return copy_str("events", arg, c->events, err);
    case OPT_REPLAY:
        return copy_str("replay", arg, c->replay, err);
    case OPT_TOPIC:
        return copy_str("topic", arg, c->topic, err);
    case OPT_REPLAY_TOPIC:
        c->replay_topic = true;
        return 0;
    case OPT_EVENTS_FORMAT:
        if (!strcmp(arg, "array"))
            c->events_format = KVN_NODE_EVFMT_ARRAY;
        else if (!strcmp(arg, "map"))
            c->events_format = KVN_NODE_EVFMT_MAP;
        else
            return kvn_err_set(err, -EINVAL, "--events-format %s: want array or map", arg);
        return 0;
    case OPT_BUFFER_STEPS:
        return parse_u32("buffer-steps", arg, 1, 10000000, &c->buffer_steps, err);
    case OPT_L1:
        return set_size("l1", arg, &c->l1, err);
    case OPT_ACK_DELAY:
        return parse_u32("inject-ack-delay", arg, 0, 600000, &c->inject_ack_delay_ms, err);
    case OPT_LOG_LEVEL:
        if (!strcmp(arg, "error"))
            c->log_level = KVN_LOG_ERROR;
        else if (!strcmp(arg, "warn"))
            c->log_level = KVN_LOG_WARN;
        else if (!strcmp(arg, "info"))
            c->log_level = KVN_LOG_INFO;
        else if (!strcmp(arg, "debug"))
            c->log_level = KVN_LOG_DEBUG;
        else
            return kvn_err_set(err, -EINVAL, "--log-level %s: want error, warn, info or debug",
                               arg);
        return 0;
    case OPT_STORAGE:
        return copy_str("storage", arg, c->storage, err);
    case OPT_NUMA:
        rc = parse_u32("numa-node", arg, 0, 1023, &u, err);
        if (rc == 0)
            c->numa_node = (int)u;
        return rc;
    case OPT_NO_HUGEPAGES:
        c->hugepages = false;
        return 0;
    case OPT_DP_RANK:
        rc = parse_u32("dp-rank", arg, 0, 1u << 20, &u, err);
        if (rc == 0)
            c->dp_rank = (int)u;
        return rc;
    case OPT_CLUSTER:
        c->cluster = true;
        return 0;
    case OPT_PEER:
        if (c->n_peers >= KVN_CONFIG_MAX_PEERS)
            return kvn_err_set(err, -EINVAL, "--peer: more than %d peers", KVN_CONFIG_MAX_PEERS);
        rc = copy_str("peer", arg, c->peers[c->n_peers], err);
        if (rc == 0)
            rc = check_endpoint("peer", c->peers[c->n_peers], err);
        if (rc == 0) {
            c->n_peers++;
            c->cluster = true;
        }
        return rc;
    case OPT_HEARTBEAT:
        return parse_u32("heartbeat-ms", arg, 1, 600000, &c->heartbeat_ms, err);
    case OPT_PEER_TIMEOUT:
        return parse_u32("peer-timeout-ms", arg, 1, 3600000, &c->peer_timeout_ms, err);
    case OPT_FETCH_HOLD:
        return parse_u32("inject-fetch-hold", arg, 0, 600000, &c->fetch_hold_ms, err);
    case OPT_HELP:
        c->help = true;
        return 0;
    }
    return kvn_err_set(err, -EINVAL, "unknown flag");
}

static int validate(const struct kvn_config *c, struct kvn_err *err)
{
    int rc;
    if ((rc = check_endpoint("listen", c->listen, err)) < 0 ||
        (rc = check_endpoint("events", c->events, err)) < 0 ||
        (rc = check_endpoint("replay", c->replay, err)) < 0)
        return rc;
    if (c->listen[0] == '\0')
        return kvn_err_set(err, -EINVAL, "--listen must not be empty");
    if (c->page_bytes == 0 || c->page_bytes > (1ull << 30))
        return kvn_err_set(err, -EINVAL, "--page-bytes %" PRIu64 ": want 1..1G", c->page_bytes);
    if (c->host_pool < c->page_bytes)
        return kvn_err_set(err, -EINVAL,
                           "--host-pool %" PRIu64 " holds no page of %" PRIu64 " bytes",
                           c->host_pool, c->page_bytes);
    if (c->host_pool / c->page_bytes > UINT32_MAX)
        return kvn_err_set(err, -EINVAL, "--host-pool: more than 2^32 pages");
    if (c->l1 && c->l1 < c->page_bytes)
        return kvn_err_set(err, -EINVAL, "--l1 %" PRIu64 " holds no page of %" PRIu64 " bytes",
                           c->l1, c->page_bytes);
    if (c->l1 / c->page_bytes > UINT32_MAX)
        return kvn_err_set(err, -EINVAL, "--l1: more than 2^32 slots");
    if (c->replay[0] && !c->events[0])
        return kvn_err_set(err, -EINVAL, "--replay needs --events");
    return 0;
}

int kvn_config_parse(struct kvn_config *cfg, int argc, char **argv, struct kvn_err *err)
{
    if (!cfg || argc < 0 || (argc > 0 && !argv))
        return kvn_err_set(err, -EINVAL, "bad arguments");
    struct kvn_config c;
    kvn_config_defaults(&c);
    optind = 0; /* full re-initialisation of getopt (glibc) */
    opterr = 0;
    for (;;) {
        int idx = 0;
        int opt = getopt_long(argc, argv, "", long_opts, &idx);
        if (opt == -1)
            break;
        if (opt == '?' || opt == ':') {
            const char *bad = (optind > 0 && optind <= argc) ? argv[optind - 1] : "?";
            return kvn_err_set(err, -EINVAL, "unknown flag or missing value: %s", bad);
        }
        int rc = apply(&c, opt, optarg, err);
        if (rc < 0)
            return rc;
    }
    if (optind < argc)
        return kvn_err_set(err, -EINVAL, "unexpected argument: %s", argv[optind]);
    if (!c.help) {
        int rc = validate(&c, err);
        if (rc < 0)
            return rc;
    }
    *cfg = c;
    return 0;
}
