/*
 * peer_table.c - cluster members and their liveness (see peer_table.h).
 *
 * A flat array indexed by peer id: clusters are small (tens of nodes), and the only scans
 * are the timer ones (tick, due), which run once per heartbeat interval, not per request.
 */
#include "node/cluster/peer_table.h"

#include <stdlib.h>
#include <string.h>

struct kvn_peers {
    struct kvn_peers_config cfg;
    struct kvn_peer_info *p;
    uint32_t n, n_up;
};

int kvn_peers_create(const struct kvn_peers_config *cfg, struct kvn_peers **out,
                     struct kvn_err *err)
{
    if (!out)
        return kvn_err_set(err, -EINVAL, "out is NULL");
    struct kvn_peers_config c = cfg ? *cfg : (struct kvn_peers_config){0};
    if (c.max_peers == 0)
        c.max_peers = KVN_PEERS_DEFAULT_MAX;
    if (c.heartbeat_ms == 0)
        c.heartbeat_ms = KVN_PEERS_DEFAULT_HB_MS;
    if (c.timeout_ms == 0)
        c.timeout_ms = KVN_PEERS_DEFAULT_TO_MS;
    if (c.max_peers > KVN_PEERS_LIMIT_MAX)
        return kvn_err_set(err, -EINVAL, "max_peers %u exceeds %u", c.max_peers,
                           KVN_PEERS_LIMIT_MAX);
    if (c.timeout_ms < c.heartbeat_ms)
        return kvn_err_set(err, -EINVAL,
                           "timeout_ms %llu is shorter than the heartbeat interval %llu",
                           (unsigned long long)c.timeout_ms, (unsigned long long)c.heartbeat_ms);
    struct kvn_peers *t = calloc(1, sizeof(*t));
    if (!t || !(t->p = calloc(c.max_peers, sizeof(*t->p)))) {
        free(t);
        return kvn_err_set(err, -ENOMEM, "no memory for %u peers", c.max_peers);
    }
    t->cfg = c;
    *out = t;
    return 0;
}

void kvn_peers_destroy(struct kvn_peers *t)
{
    if (!t)
        return;
    free(t->p);
    free(t);
}

static int lookup(const struct kvn_peers *t, const char *endpoint)
{
    for (uint32_t i = 0; i < t->n; i++)
        if (strcmp(t->p[i].endpoint, endpoint) == 0)
            return (int)i;
    return -1;
}

static int check_endpoint(const char *endpoint, struct kvn_err *err)
{
    if (!endpoint || !endpoint[0])
        return kvn_err_set(err, -EINVAL, "peer endpoint is NULL or empty");
    if (strlen(endpoint) >= KVN_PEERS_ENDPOINT_MAX)
        return kvn_err_set(err, -EINVAL, "peer endpoint is longer than %u bytes",
                           KVN_PEERS_ENDPOINT_MAX - 1);
    return 0;
}

int kvn_peers_add(struct kvn_peers *t, const char *endpoint, uint32_t *id, struct kvn_err *err)
{
    if (!t || !id)
        return kvn_err_set(err, -EINVAL, "table and id must not be NULL");
    int rc = check_endpoint(endpoint, err);
    if (rc < 0)
        return rc;
    int k = lookup(t, endpoint);
    if (k >= 0) {
        *id = (uint32_t)k;
        return kvn_err_set(err, -EEXIST, "peer %s is already peer %d", endpoint, k);
    }
    if (t->n >= t->cfg.max_peers)
        return kvn_err_set(err, -ENOSPC, "peer table full (%u peers)", t->cfg.max_peers);
    struct kvn_peer_info *p = &t->p[t->n];
    memset(p, 0, sizeof(*p));
    strcpy(p->endpoint, endpoint);
    p->state = KVN_PEER_KNOWN;
    p->next_ping_ms = 0;
    *id = t->n++;
    return 0;
}

int kvn_peers_find(const struct kvn_peers *t, const char *endpoint, uint32_t *id,
                   struct kvn_err *err)
{
    if (!t || !id)
        return kvn_err_set(err, -EINVAL, "table and id must not be NULL");
    int rc = check_endpoint(endpoint, err);
    if (rc < 0)
        return rc;
    int k = lookup(t, endpoint);
    if (k < 0)
        return kvn_err_set(err, -ENOENT, "no peer %s", endpoint);
    *id = (uint32_t)k;
    return 0;
}

int kvn_peers_heard(struct kvn_peers *t, uint32_t id, uint64_t node_id, uint64_t incarnation,
                    uint64_t now_ms, enum kvn_peer_change *change, struct kvn_err *err)
{
    if (!t || !change)
        return kvn_err_set(err, -EINVAL, "table and change must not be NULL");
    if (id >= t->n)
        return kvn_err_set(err, -EINVAL, "no peer with id %u (%u peers)", id, t->n);
    if (node_id == 0)
        return kvn_err_set(err, -EINVAL, "node_id 0 is not a valid node id");
    struct kvn_peer_info *p = &t->p[id];
    if (node_id == t->cfg.self_node_id)
        return kvn_err_set(err, -ELOOP, "peer %s is this node itself (node id %016llx)",
                           p->endpoint, (unsigned long long)node_id);
    for (uint32_t i = 0; i < t->n; i++)
        if (i != id && t->p[i].state == KVN_PEER_UP && t->p[i].node_id == node_id)
            return kvn_err_set(err, -EADDRINUSE, "node %016llx answers at %s and at %s (peer %u)",
                               (unsigned long long)node_id, p->endpoint, t->p[i].endpoint, i);
    if (p->state != KVN_PEER_UP) {
        *change = KVN_PEER_JOINED;
        p->state = KVN_PEER_UP;
        p->joins++;
        t->n_up++;
    } else if (p->node_id != node_id || p->incarnation != incarnation) {
        *change = KVN_PEER_RESTARTED;
        p->restarts++;
    } else {
        *change = KVN_PEER_REFRESHED;
    }
    p->node_id = node_id;
    p->incarnation = incarnation;
    p->last_heard_ms = now_ms;
    return 0;
}

int kvn_peers_tick(struct kvn_peers *t, uint64_t now_ms, uint32_t *died, uint32_t cap)
{
    if (!t || (cap && !died))
        return -EINVAL;
    int n = 0;
    for (uint32_t i = 0; i < t->n; i++) {
        struct kvn_peer_info *p = &t->p[i];
        if (p->state != KVN_PEER_UP || now_ms < p->last_heard_ms + t->cfg.timeout_ms)
            continue;
        p->state = KVN_PEER_DOWN;
        p->deaths++;
        t->n_up--;
        if ((uint32_t)n < cap)
            died[n] = i;
        n++;
    }
    return n;
}

int kvn_peers_due(struct kvn_peers *t, uint64_t now_ms, uint32_t *due, uint32_t cap)
{
    if (!t || (cap && !due))
        return -EINVAL;
    uint32_t n = 0;
    for (uint32_t i = 0; i < t->n && n < cap; i++) {
        struct kvn_peer_info *p = &t->p[i];
        if (p->next_ping_ms > now_ms)
            continue;
        p->next_ping_ms = now_ms + t->cfg.heartbeat_ms;
        due[n++] = i;
    }
    return (int)n;
}

uint64_t kvn_peers_next_deadline(const struct kvn_peers *t)
{
    uint64_t d = UINT64_MAX;
    if (!t)
        return d;
    for (uint32_t i = 0; i < t->n; i++) {
        const struct kvn_peer_info *p = &t->p[i];
        if (p->next_ping_ms < d)
            d = p->next_ping_ms;
        if (p->state == KVN_PEER_UP && p->last_heard_ms + t->cfg.timeout_ms < d)
            d = p->last_heard_ms + t->cfg.timeout_ms;
    }
    return d;
}

int kvn_peers_get(const struct kvn_peers *t, uint32_t id, struct kvn_peer_info *out,
                  struct kvn_err *err)
{
    if (!t || !out)
        return kvn_err_set(err, -EINVAL, "table and out must not be NULL");
    if (id >= t->n)
        return kvn_err_set(err, -EINVAL, "no peer with id %u (%u peers)", id, t->n);
    *out = t->p[id];
    return 0;
}

uint32_t kvn_peers_count(const struct kvn_peers *t)
{
    return t ? t->n : 0;
}

uint32_t kvn_peers_up(const struct kvn_peers *t)
{
    return t ? t->n_up : 0;
}

const char *kvn_peer_state_name(enum kvn_peer_state s)
{
    switch (s) {
    case KVN_PEER_KNOWN:
        return "known";
    case KVN_PEER_UP:
        return "up";
    case KVN_PEER_DOWN:
        return "down";
    }
    return "?";
}
