/*
 * kvctl - command-line client of a kvnode (one RPC per invocation).
 *
 *   kvctl -c tcp://127.0.0.1:7100 insert 1,2,3,4 --slots 0,1
 *   kvctl -c tcp://127.0.0.1:7100 match 1,2,5,6 --json
 *   kvctl -c tcp://127.0.0.1:7100 stats --json
 *
 * Exit 0 on success; 1 with the node's message on stderr when the node
 * refused; 2 on a usage error.
 */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "node/kvnode_client.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: kvctl -c ENDPOINT [--json] [--timeout MS] OP [ARGS]\n"
               "lists are comma-separated (1,2,3,4); see node/kvn_rpc.h for the semantics\n"
               "  hello\n"
               "  insert TOKENS [--slots SLOTS]      one L1 slot per page (none: the node picks)\n"
               "  match TOKENS\n"
               "  lock TOKENS [--lease MS]           prints the lock handle\n"
               "  unlock HANDLE\n"
               "  backup TOKENS\n"
               "  load_back TOKENS [--slots SLOTS]   one L1 slot per L2 page loaded back\n"
               "  evict --tier l1|l2 --pages N\n"
               "  stats\n"
               "  reset\n"
               "  register_l1 --desc HEX --addr HEX --page-bytes N --n-slots N\n"
               "  l1_fill --slots SLOTS --seed N      test aid (kvnode --l1)\n"
               "  l1_checksum --slots SLOTS           test aid (kvnode --l1)\n"
               "cluster (kvnode --cluster / --peer):\n"
               "  fetch TOKENS [--lease MS]           read the best peer's prefix into L2\n"
               "  push TOKENS --to ENDPOINT [--slots SLOTS]  write pages into another node\n"
               "  pin TOKENS [--lease MS] | unpin HANDLE | reserve TOKENS [--lease MS]\n"
               "  push_done HANDLE [--slots SLOTS] | abort HANDLE\n"
               "options:\n"
               "  -c, --connect ENDPOINT   the node's control endpoint (required)\n"
               "  --json                   print the reply as one JSON object\n"
               "  --timeout MS             reply timeout (default 5000)\n");
}

/* Parses "1,2,-3" into a malloc'd array; "" is an empty list. */
static int parse_list(const char *s, bool is_signed, void **out, uint32_t *n)
{
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    int64_t *tmp = calloc(cap, sizeof(int64_t));
    if (!tmp)
        return -ENOMEM;
    uint32_t k = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        if (!isdigit((unsigned char)*p) && !(is_signed && *p == '-'))
            goto bad;
        long long v = strtoll(p, &end, 10);
        if (errno || end == p ||
            (is_signed ? (v < INT32_MIN || v > INT32_MAX) : (v < 0 || v > UINT32_MAX)))
            goto bad;
        tmp[k++] = v;
        p = end;
        if (*p == ',') {
            p++;
            if (!*p)
                goto bad;
        } else if (*p) {
            goto bad;
        }
    }
    void *arr = calloc(k ? k : 1, 4);
    if (!arr) {
        free(tmp);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < k; i++) {
        if (is_signed)
            ((int32_t *)arr)[i] = (int32_t)tmp[i];
        else
            ((uint32_t *)arr)[i] = (uint32_t)tmp[i];
    }
    free(tmp);
    *out = arr;
    *n = k;
    return 0;
bad:
    free(tmp);
    return -EINVAL;
}

static int parse_hex(const char *s, uint8_t **out, uint32_t *n)
{
    size_t len = strlen(s);
    if (len == 0 || len % 2 || len / 2 > KVN_RPC_MAX_BLOB)
        return -EINVAL;
    uint8_t *b = malloc(len / 2);
    if (!b)
        return -ENOMEM;
    for (size_t i = 0; i < len / 2; i++) {
        unsigned v;
        if (!isxdigit((unsigned char)s[2 * i]) || !isxdigit((unsigned char)s[2 * i + 1]) ||
            sscanf(s + 2 * i, "%2x", &v) != 1) {
            free(b);
            return -EINVAL;
        }
        b[i] = (uint8_t)v;
    }
    *out = b;
    *n = (uint32_t)(len / 2);
    return 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!s || !isdigit((unsigned char)*s))
        return -EINVAL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -EINVAL;
    *out = v;
    return 0;
}

static void print_human(const struct kvn_client_reply *r)
{
    char *js = kvn_client_reply_json(r, false);
    cJSON *j = js ? cJSON_Parse(js) : NULL;
    free(js);
    if (!j) {
        printf("ok\n");
        return;
    }
    int printed = 0;
    for (cJSON *it = j->child; it; it = it->next) {
        if (!strcmp(it->string, "v") || !strcmp(it->string, "id") || !strcmp(it->string, "ok"))
            continue;
        char *v = cJSON_PrintUnformatted(it);
        printf("%s: %s\n", it->string, v ? v : "?");
        free(v);
        printed++;
    }
    if (!printed)
        printf("ok\n");
    cJSON_Delete(j);
}

enum {
    O_JSON = 256,
    O_TIMEOUT,
    O_SLOTS,
    O_LEASE,
    O_TIER,
    O_PAGES,
    O_SEED,
    O_DESC,
    O_ADDR,
    O_PAGE_BYTES,
    O_N_SLOTS,
    O_TO,
    O_HELP
};

struct cli {
    const char *endpoint;
    bool json, help;
    uint64_t timeout;
    struct kvn_client_req q;
    void *slots, *tokens;
    uint8_t *desc, *addr;
    bool have_slots, have_tier, have_pages, have_seed, have_blobs, have_pb, have_ns;
};

static int bad(const char *flag, const char *arg, const char *want)
{
    fprintf(stderr, "kvctl: %s %s: want %s\n", flag, arg, want);
    return -EINVAL;
}

static int apply_opt(struct cli *c, int opt, const char *arg)
{
    struct kvn_client_req *q = &c->q;
    switch (opt) {
    case 'c':
        c->endpoint = arg;
        return 0;
    case O_JSON:
        c->json = true;
        return 0;
    case O_TIMEOUT:
        if (parse_u64(arg, &c->timeout) < 0 || c->timeout == 0 || c->timeout > 600000)
            return bad("--timeout", arg, "1..600000 ms");
        return 0;
    case O_SLOTS:
        free(c->slots);
        c->slots = NULL;
        if (parse_list(arg, false, &c->slots, &q->n_slots) < 0)
            return bad("--slots", arg, "a comma-separated list of uint32");
        q->slots = c->slots;
        c->have_slots = true;
        return 0;
    case O_LEASE:
        if (parse_u64(arg, &q->lease_ms) < 0 || q->lease_ms == 0)
            return bad("--lease", arg, "milliseconds >= 1");
        return 0;
    case O_TIER:
        if (!strcmp(arg, "l1"))
            q->tier = KVN_RPC_TIER_L1;
        else if (!strcmp(arg, "l2"))
            q->tier = KVN_RPC_TIER_L2;
        else
            return bad("--tier", arg, "l1 or l2");
        c->have_tier = true;
        return 0;
    case O_PAGES:
        if (parse_u64(arg, &q->pages) < 0)
            return bad("--pages", arg, "a page count");
        c->have_pages = true;
        return 0;
    case O_SEED:
        if (parse_u64(arg, &q->seed) < 0)
            return bad("--seed", arg, "an unsigned integer");
        c->have_seed = true;
        return 0;
    case O_DESC:
        free(c->desc);
        c->desc = NULL;
        if (parse_hex(arg, &c->desc, &q->desc_len) < 0)
            return bad("--desc", arg, "hex bytes");
        q->desc = c->desc;
        return 0;
    case O_ADDR:
        free(c->addr);
        c->addr = NULL;
        if (parse_hex(arg, &c->addr, &q->addr_len) < 0)
            return bad("--addr", arg, "hex bytes");
        q->addr = c->addr;
        return 0;
    case O_PAGE_BYTES:
        if (parse_u64(arg, &q->page_bytes) < 0)
            return bad("--page-bytes", arg, "bytes");
        c->have_pb = true;
        return 0;
    case O_N_SLOTS:
        if (parse_u64(arg, &q->l1_slots) < 0)
            return bad("--n-slots", arg, "a count");
        c->have_ns = true;
        return 0;
    case 'h':
    case O_TO:
        q->to = arg;
        return 0;
    case O_HELP:
        c->help = true;
        return 0;
    }
    return -EINVAL;
}

/* What each op needs on the command line. */
static int check_args(struct cli *c, const char *op_name, const char *pos)
{
    struct kvn_client_req *q = &c->q;
    bool want_tokens = false, want_slots = false, want_handle = false;
    switch (q->op) {
    case KVN_RPC_INSERT:
    case KVN_RPC_LOAD_BACK:
        want_tokens = true;
        break; /* no --slots: auto */
    case KVN_RPC_MATCH:
    case KVN_RPC_LOCK:
    case KVN_RPC_BACKUP:
        want_tokens = true;
        break;
    case KVN_RPC_UNLOCK:
    case KVN_RPC_UNPIN:
    case KVN_RPC_ABORT:
    case KVN_RPC_PUSH_DONE: /* [--slots]: only these pages landed */
        want_handle = true;
        break;
    case KVN_RPC_PIN:
    case KVN_RPC_RESERVE:
    case KVN_RPC_FETCH:
        want_tokens = true; /* [--lease MS] */
        break;
    case KVN_RPC_PUSH:
        want_tokens = true; /* [--slots]: from L1, else from this node's L2 */
        if (!q->to) {
            fprintf(stderr, "kvctl: push needs --to ENDPOINT\n");
            return -EINVAL;
        }
        break;
    case KVN_RPC_PEER_HELLO:
        fprintf(stderr, "kvctl: peer_hello is node-to-node only\n");
        return -EINVAL;
    case KVN_RPC_L1_FILL:
        want_slots = true;
        if (!c->have_seed) {
            fprintf(stderr, "kvctl: l1_fill needs --seed N\n");
            return -EINVAL;
        }
        break;
    case KVN_RPC_L1_CHECKSUM:
        want_slots = true;
        break;
    case KVN_RPC_EVICT:
        if (!c->have_tier || !c->have_pages) {
            fprintf(stderr, "kvctl: evict needs --tier l1|l2 and --pages N\n");
            return -EINVAL;
        }
        break;
    case KVN_RPC_REGISTER_L1:
        if (!q->desc || !q->addr || !c->have_pb || !c->have_ns) {
            fprintf(stderr, "kvctl: register_l1 needs --desc, --addr, --page-bytes, --n-slots\n");
            return -EINVAL;
        }
        break;
    default:
        break;
    }
    if (want_tokens) {
        if (!pos) {
            fprintf(stderr, "kvctl: %s needs a token list (1,2,3,4)\n", op_name);
            return -EINVAL;
        }
        if (parse_list(pos, true, &c->tokens, &q->n_tokens) < 0)
            return bad(op_name, pos, "a comma-separated list of int32 tokens");
        q->tokens = c->tokens;
    } else if (want_handle) {
        if (!pos || parse_u64(pos, &q->handle) < 0)
            return bad(op_name, pos ? pos : "(nothing)", "a lock handle");
    } else if (pos) {
        fprintf(stderr, "kvctl: %s takes no positional argument (got %s)\n", op_name, pos);
        return -EINVAL;
    }
    if (want_slots && !c->have_slots) {
        fprintf(stderr, "kvctl: %s needs --slots S,S,...\n", op_name);
        return -EINVAL;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"connect", required_argument, NULL, 'c'},
                                         {"json", no_argument, NULL, O_JSON},
                                         {"timeout", required_argument, NULL, O_TIMEOUT},
                                         {"slots", required_argument, NULL, O_SLOTS},
                                         {"lease", required_argument, NULL, O_LEASE},
                                         {"tier", required_argument, NULL, O_TIER},
                                         {"pages", required_argument, NULL, O_PAGES},
                                         {"seed", required_argument, NULL, O_SEED},
                                         {"desc", required_argument, NULL, O_DESC},
                                         {"addr", required_argument, NULL, O_ADDR},
                                         {"page-bytes", required_argument, NULL, O_PAGE_BYTES},
                                         {"n-slots", required_argument, NULL, O_N_SLOTS},
                                         {"to", required_argument, NULL, O_TO},
                                         {"help", no_argument, NULL, O_HELP},
                                         {NULL, 0, NULL, 0}};
    struct cli c = {.timeout = 5000};
    int rc = 2, opt;
    opterr = 0;
    /* GNU getopt permutes: options may come before or after OP and its list.
     * A token list starting with '-' needs "--" before it. */
    while ((opt = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        if (opt == '?' || opt == ':') {
            fprintf(stderr, "kvctl: unknown option or missing value: %s\n", argv[optind - 1]);
            usage(stderr);
            goto out;
        }
        if (apply_opt(&c, opt, optarg) < 0)
            goto out;
    }
    if (c.help) {
        usage(stdout);
        rc = 0;
        goto out;
    }
    if (optind >= argc) {
        fprintf(stderr, "kvctl: missing OP\n");
        usage(stderr);
        goto out;
    }
    const char *op_name = argv[optind++];
    const char *pos = optind < argc ? argv[optind++] : NULL;
    if (optind < argc) {
        fprintf(stderr, "kvctl: unexpected argument %s\n", argv[optind]);
        goto out;
    }
    if (!c.endpoint) {
        fprintf(stderr, "kvctl: -c ENDPOINT is required\n");
        goto out;
    }
    char opbuf[32];
    snprintf(opbuf, sizeof(opbuf), "%s", op_name);
    for (char *p = opbuf; *p; p++)
        if (*p == '-')
            *p = '_'; /* load-back == load_back */
    if (kvn_rpc_op_from_name(opbuf, strlen(opbuf), &c.q.op) < 0) {
        fprintf(stderr, "kvctl: unknown op %s\n", op_name);
        usage(stderr);
        goto out;
    }
    if (check_args(&c, op_name, pos) < 0)
        goto out;

    struct kvn_client *cl;
    struct kvn_err err;
    if (kvn_client_open(c.endpoint, (int)c.timeout, &cl, &err) < 0) {
        fprintf(stderr, "kvctl: %s\n", err.msg);
        rc = 1;
        goto out;
    }
    struct kvn_client_reply *r = NULL;
    int e = kvn_client_call(cl, &c.q, &r, &err);
    if (e < 0) {
        fprintf(stderr, "kvctl: %s: %s (%s)\n", op_name, err.msg, kvn_err_name(e));
        rc = 1;
    } else {
        if (c.json) {
            char *js = kvn_client_reply_json(r, false);
            printf("%s\n", js ? js : "{}");
            free(js);
        } else {
            print_human(r);
        }
        rc = 0;
    }
    kvn_client_reply_free(r);
    kvn_client_close(cl);
out:
    free(c.slots);
    free(c.tokens);
    free(c.desc);
    free(c.addr);
    return rc;
}
