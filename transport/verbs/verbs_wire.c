/*
 * verbs_wire.c - the verbs backend's wire formats: the address blob and the
 * QP handshake message (layouts in verbs.h), plus the device spec parser.
 * Pure code: no device needed, which is what lets them be tested everywhere.
 */
#include "transport/verbs/verbs.h"

#include <stdlib.h>
#include <string.h>

static void put16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint16_t get16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t get64(const unsigned char *p)
{
    return (uint64_t)get32(p) | ((uint64_t)get32(p + 4) << 32);
}

static int mtu_ok(uint8_t mtu)
{
    return mtu >= 1 && mtu <= 5; /* IBV_MTU_256 .. IBV_MTU_4096 */
}

static int addr_check(const struct xport_verbs_addr *a, struct kvn_err *err)
{
    if (a->port_num == 0)
        return kvn_err_set(err, -EINVAL, "verbs address: port 0 (ports are 1-based)");
    if (a->link_layer != 1 && a->link_layer != 2)
        return kvn_err_set(err, -EINVAL,
                           "verbs address: link layer %u is neither "
                           "InfiniBand (1) nor Ethernet (2)",
                           a->link_layer);
    if (!mtu_ok(a->mtu))
        return kvn_err_set(err, -EINVAL, "verbs address: mtu code %u outside 1..5", a->mtu);
    if (a->link_layer == 1 && a->lid == 0)
        return kvn_err_set(err, -EINVAL, "verbs address: InfiniBand port without a LID");
    if (a->hs_port == 0)
        return kvn_err_set(err, -EINVAL, "verbs address: handshake port 0");
    if (a->hs_family != 4 && a->hs_family != 6)
        return kvn_err_set(err, -EINVAL, "verbs address: address family %u is not 4 or 6",
                           a->hs_family);
    if (a->hs_family == 4)
        for (int i = 4; i < 16; i++)
            if (a->hs_ip[i])
                return kvn_err_set(err, -EINVAL, "verbs address: IPv4 with stray bytes");
    return 0;
}

int xport_verbs_addr_encode(const struct xport_verbs_addr *a, void *buf, size_t *len,
                            struct kvn_err *err)
{
    if (!a || !buf || !len)
        return kvn_err_set(err, -EINVAL, "verbs address encode: NULL argument");
    int rc = addr_check(a, err);
    if (rc < 0)
        return rc;
    if (*len < XPORT_VERBS_ADDR_LEN) {
        *len = XPORT_VERBS_ADDR_LEN;
        return kvn_err_set(err, -ENOSPC, "verbs address needs %u bytes", XPORT_VERBS_ADDR_LEN);
    }
    unsigned char *p = buf;
    memset(p, 0, XPORT_VERBS_ADDR_LEN);
    put32(p, XPORT_VERBS_ADDR_MAGIC);
    put16(p + 4, XPORT_VERBS_WIRE_VERSION);
    p[8] = a->port_num;
    p[9] = a->link_layer;
    p[10] = a->mtu;
    p[11] = a->gid_index;
    put16(p + 12, a->lid);
    put16(p + 14, a->hs_port);
    memcpy(p + 16, a->gid, 16);
    p[32] = a->hs_family;
    memcpy(p + 36, a->hs_ip, 16);
    *len = XPORT_VERBS_ADDR_LEN;
    return 0;
}

int xport_verbs_addr_decode(const void *buf, size_t len, struct xport_verbs_addr *out,
                            struct kvn_err *err)
{
    if (!buf || !out)
        return kvn_err_set(err, -EINVAL, "verbs address decode: NULL argument");
    if (len != XPORT_VERBS_ADDR_LEN)
        return kvn_err_set(err, -EINVAL, "verbs address of %zu bytes, expected %u", len,
                           XPORT_VERBS_ADDR_LEN);
    const unsigned char *p = buf;
    if (get32(p) != XPORT_VERBS_ADDR_MAGIC)
        return kvn_err_set(err, -EPROTO, "verbs address: bad magic 0x%08x", get32(p));
    if (get16(p + 4) != XPORT_VERBS_WIRE_VERSION)
        return kvn_err_set(err, -EPROTO, "verbs address: version %u, this build speaks %u",
                           get16(p + 4), XPORT_VERBS_WIRE_VERSION);
    if (get16(p + 6) || p[33] || p[34] || p[35])
        return kvn_err_set(err, -EPROTO, "verbs address: reserved bytes are not zero");
    struct xport_verbs_addr a;
    memset(&a, 0, sizeof(a));
    a.port_num = p[8];
    a.link_layer = p[9];
    a.mtu = p[10];
    a.gid_index = p[11];
    a.lid = get16(p + 12);
    a.hs_port = get16(p + 14);
    memcpy(a.gid, p + 16, 16);
    a.hs_family = p[32];
    memcpy(a.hs_ip, p + 36, 16);
    int rc = addr_check(&a, err);
    if (rc < 0)
        return rc;
    *out = a;
    return 0;
}

static int hs_check(const struct xport_verbs_hs *m, struct kvn_err *err)
{
    if (m->type < XPORT_VERBS_HS_REQ || m->type > XPORT_VERBS_HS_NAK)
        return kvn_err_set(err, -EINVAL, "verbs handshake: unknown type %u", m->type);
    if (m->qpn > 0xffffffu || m->psn > 0xffffffu)
        return kvn_err_set(err, -EINVAL, "verbs handshake: qpn/psn wider than 24 bits");
    if (m->type == XPORT_VERBS_HS_NAK) {
        if (m->status <= 0)
            return kvn_err_set(err, -EINVAL, "verbs handshake: NAK without a reason");
        return 0;
    }
    if (m->qpn == 0)
        return kvn_err_set(err, -EINVAL, "verbs handshake: qpn 0");
    if (!mtu_ok(m->mtu))
        return kvn_err_set(err, -EINVAL, "verbs handshake: mtu code %u outside 1..5", m->mtu);
    if (m->link_layer != 1 && m->link_layer != 2)
        return kvn_err_set(err, -EINVAL, "verbs handshake: link layer %u", m->link_layer);
    if (m->status != 0)
        return kvn_err_set(err, -EINVAL, "verbs handshake: status %d on a REQ/ACK", (int)m->status);
    return 0;
}

int xport_verbs_hs_encode(const struct xport_verbs_hs *m, void *buf, size_t *len,
                          struct kvn_err *err)
{
    if (!m || !buf || !len)
        return kvn_err_set(err, -EINVAL, "verbs handshake encode: NULL argument");
    int rc = hs_check(m, err);
    if (rc < 0)
        return rc;
    if (*len < XPORT_VERBS_HS_LEN) {
        *len = XPORT_VERBS_HS_LEN;
        return kvn_err_set(err, -ENOSPC, "verbs handshake needs %u bytes", XPORT_VERBS_HS_LEN);
    }
    unsigned char *p = buf;
    memset(p, 0, XPORT_VERBS_HS_LEN);
    put32(p, XPORT_VERBS_HS_MAGIC);
    put16(p + 4, XPORT_VERBS_WIRE_VERSION);
    put16(p + 6, m->type);
    put32(p + 8, m->qpn);
    put32(p + 12, m->psn);
    put64(p + 16, m->src_id);
    put16(p + 24, m->lid);
    p[26] = m->mtu;
    p[27] = m->link_layer;
    put32(p + 28, (uint32_t)m->status);
    memcpy(p + 32, m->gid, 16);
    *len = XPORT_VERBS_HS_LEN;
    return 0;
}

int xport_verbs_hs_decode(const void *buf, size_t len, struct xport_verbs_hs *out,
                          struct kvn_err *err)
{
    if (!buf || !out)
        return kvn_err_set(err, -EINVAL, "verbs handshake decode: NULL argument");
    if (len != XPORT_VERBS_HS_LEN)
        return kvn_err_set(err, -EINVAL, "verbs handshake of %zu bytes, expected %u", len,
                           XPORT_VERBS_HS_LEN);
    const unsigned char *p = buf;
    if (get32(p) != XPORT_VERBS_HS_MAGIC)
        return kvn_err_set(err, -EPROTO, "verbs handshake: bad magic 0x%08x", get32(p));
    if (get16(p + 4) != XPORT_VERBS_WIRE_VERSION)
        return kvn_err_set(err, -EPROTO, "verbs handshake: version %u, this build speaks %u",
                           get16(p + 4), XPORT_VERBS_WIRE_VERSION);
    struct xport_verbs_hs m;
    memset(&m, 0, sizeof(m));
    m.type = get16(p + 6);
    m.qpn = get32(p + 8);
    m.psn = get32(p + 12);
    m.src_id = get64(p + 16);
    m.lid = get16(p + 24);
    m.mtu = p[26];
    m.link_layer = p[27];
    m.status = (int32_t)get32(p + 28);
    memcpy(m.gid, p + 32, 16);
    int rc = hs_check(&m, err);
    if (rc < 0)
        return rc;
    *out = m;
    return 0;
}

uint8_t xport_verbs_path_mtu(uint8_t local_mtu, uint8_t remote_mtu)
{
    return local_mtu < remote_mtu ? local_mtu : remote_mtu;
}

int xport_verbs_parse_dev(const char *spec, char *name, size_t name_cap, uint8_t *port,
                          struct kvn_err *err)
{
    if (!spec || !name || !port || name_cap == 0)
        return kvn_err_set(err, -EINVAL, "verbs device spec: NULL argument");
    const char *colon = strchr(spec, ':');
    size_t n = colon ? (size_t)(colon - spec) : strlen(spec);
    if (n == 0)
        return kvn_err_set(err, -EINVAL,
                           "verbs URI needs a device: verbs+DEVICE[:PORT], "
                           "e.g. verbs+mlx5_0");
    if (n >= name_cap)
        return kvn_err_set(err, -EINVAL, "verbs device name '%.*s' is too long", (int)n, spec);
    unsigned long p = 1;
    if (colon) {
        char *end;
        if (colon[1] < '0' || colon[1] > '9')
            return kvn_err_set(err, -EINVAL, "verbs port '%s' is not a number", colon + 1);
        p = strtoul(colon + 1, &end, 10);
        if (*end || p < 1 || p > 255)
            return kvn_err_set(err, -EINVAL, "verbs port '%s' is not in 1..255", colon + 1);
    }
    memcpy(name, spec, n);
    name[n] = '\0';
    *port = (uint8_t)p;
    return 0;
}
