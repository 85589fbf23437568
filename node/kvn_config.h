/*
 * kvn_config.h - kvnode's command line: flags, embedded defaults, sizes.
 *
 * Every flag of the daemon lives in one table in config.c, which also writes
 * the --help text, so the two cannot disagree. The defaults make a laptop
 * node: control RPC on tcp://127.0.0.1:7100, transport "auto", a 1 GiB host
 * pool, 16-token pages of 64 KiB, write_through, no events socket, no L1
 * stand-in, no storage.
 *
 *   kvnode [--listen tcp://HOST:PORT] [--transport URI] [--host-pool SIZE] ...
 *
 * Sizes accept a K, M or G suffix (powers of 1024): "1G", "512K", "4096".
 *
 * Thread rules: reentrant; no global state (getopt's state is reset per call,
 * so call kvn_config_parse from one thread at a time).
 */
#ifndef KVN_CONFIG_H
#define KVN_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "cache/radix.h" /* enum kvn_write_policy */
#include "util/kvn_err.h"

enum kvn_node_evfmt { KVN_NODE_EVFMT_ARRAY = 0, KVN_NODE_EVFMT_MAP = 1 };

enum kvn_log_level { KVN_LOG_ERROR = 0, KVN_LOG_WARN, KVN_LOG_INFO, KVN_LOG_DEBUG };

#define KVN_CONFIG_STR_MAX   256
#define KVN_CONFIG_MAX_PEERS 64

struct kvn_config {
    char listen[KVN_CONFIG_STR_MAX];    /* control ROUTER endpoint */
    char transport[KVN_CONFIG_STR_MAX]; /* transport URI ("auto", "ofi+tcp", ...) */
    uint64_t host_pool;                 /* bytes of L2 */
    uint32_t page_size;                 /* tokens per page */
    uint64_t page_bytes;                /* KV bytes per page */
    enum kvn_write_policy write_policy;
    char events[KVN_CONFIG_STR_MAX]; /* PUB endpoint, "" = off */
    char replay[KVN_CONFIG_STR_MAX]; /* replay ROUTER endpoint, "" = off */
    char topic[KVN_CONFIG_STR_MAX];
    bool replay_topic; /* add the topic frame to replay replies */
    enum kvn_node_evfmt events_format;
    uint32_t buffer_steps; /* replay history, in batches */
    uint64_t l1;           /* bytes of the L1 stand-in, 0 = none */
    uint32_t inject_ack_delay_ms;
    enum kvn_log_level log_level;
    char storage[KVN_CONFIG_STR_MAX]; /* L3 directory, "" = off */
    int numa_node;                    /* -1 = no binding */
    bool hugepages;                   /* try MAP_HUGETLB first */
    int dp_rank;
    /* cluster (issue 5, node/cluster): on with --cluster or any --peer */
    bool cluster;
    char peers[KVN_CONFIG_MAX_PEERS][KVN_CONFIG_STR_MAX];
    uint32_t n_peers;
    uint32_t heartbeat_ms;    /* 0 = the cluster's default */
    uint32_t peer_timeout_ms; /* 0 = the cluster's default */
    uint32_t fetch_hold_ms;   /* test aid: hold a fetch between reading and unpinning */
    bool help;                /* --help was given */
};

/* Fills cfg with the embedded defaults. */
void kvn_config_defaults(struct kvn_config *cfg);

/*
 * Parses "123", "64K", "1M", "2G" (case-insensitive suffix, powers of 1024)
 * into *out. Errors: -EINVAL (NULL, empty, junk, overflow). *out is
 * unchanged on error.
 */
int kvn_config_parse_size(const char *s, uint64_t *out, struct kvn_err *err);

/*
 * Parses argv into cfg (starting from the defaults) and validates the
 * result (page_bytes >= 1, the pool holds >= 1 page, endpoints fit, ...).
 * --help sets cfg->help and returns 0. Errors: -EINVAL with the flag named
 * in err; the caller prints usage and exits 2.
 */
int kvn_config_parse(struct kvn_config *cfg, int argc, char **argv, struct kvn_err *err);

/* Writes the --help text (every flag, its default) to f. */
void kvn_config_usage(FILE *f, const char *prog);

/* "write_through", ... */
const char *kvn_config_write_policy_name(enum kvn_write_policy p);

#endif /* KVN_CONFIG_H */
