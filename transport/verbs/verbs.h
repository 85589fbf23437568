/*
 * verbs.h - internals of the rdma-core verbs backend, shared by its files and
 * its tests (not a public header: users go through transport/kvn_xport.h).
 *
 * The backend speaks RC queue pairs.  RC is point to point, while the public
 * API is connectionless in shape (one address blob per domain, connect() with
 * no help from the caller), so each domain also listens on a small TCP
 * "handshake" socket, as perftest does for its QP exchange:
 *
 *    A: connect(blob_B)                          B (inside its poll/connect)
 *       create QP a (RESET -> INIT)
 *       TCP connect to blob_B.hs_ip:hs_port ─────► accept
 *       REQ {qpn a, psn, lid, gid, mtu, id A} ───► create QP b, INIT -> RTR -> RTS
 *                                       ◄──────── ACK {qpn b, psn, lid, gid, mtu}
 *       QP a INIT -> RTR -> RTS                   (socket kept: EOF = peer gone)
 *
 * path MTU = min(active MTU of both ports); RoCE (Ethernet link layer) uses
 * the GID (global routing header) with the local GID index chosen at open:
 * the first RoCE v2 GID, else the first non-zero one.
 *
 * Wire formats (little endian, fixed sizes, validated strictly):
 *
 *   address blob (framed further by the common layer), 52 bytes
 *     0 u32 magic "KVVB"   4 u16 version (1)   6 u16 flags (0)
 *     8 u8 port  9 u8 link layer (1 IB, 2 Ethernet)  10 u8 mtu (enum ibv_mtu 1..5)
 *    11 u8 gid index  12 u16 lid  14 u16 handshake TCP port (!= 0)
 *    16 gid[16]   32 u8 handshake address family (4/6)  33 3 zero bytes
 *    36 handshake IP (4 or 16 bytes, rest zero)
 *
 *   handshake message, 48 bytes
 *     0 u32 magic "KVVH"   4 u16 version (1)   6 u16 type (1 REQ, 2 ACK, 3 NAK)
 *     8 u32 qpn (24 bit)  12 u32 psn (24 bit)  16 u64 sender's domain id
 *    24 u16 lid  26 u8 mtu  27 u8 link layer  28 i32 status (NAK: errno > 0)
 *    32 gid[16]
 */
#ifndef KVN_XPORT_VERBS_H
#define KVN_XPORT_VERBS_H

#include <stddef.h>
#include <stdint.h>

#include "transport/kvn_xport.h"
#include "util/kvn_err.h"

#define XPORT_VERBS_ADDR_MAGIC   0x4256564bu /* "KVVB" little endian */
#define XPORT_VERBS_HS_MAGIC     0x4856564bu /* "KVVH" */
#define XPORT_VERBS_WIRE_VERSION 1u
#define XPORT_VERBS_ADDR_LEN     52u
#define XPORT_VERBS_HS_LEN       48u

enum xport_verbs_hs_type {
    XPORT_VERBS_HS_REQ = 1,
    XPORT_VERBS_HS_ACK = 2,
    XPORT_VERBS_HS_NAK = 3,
};

/* A domain's endpoint as carried in its address blob. */
struct xport_verbs_addr {
    uint8_t port_num;   /* 1-based HCA port */
    uint8_t link_layer; /* 1 InfiniBand, 2 Ethernet (RoCE) */
    uint8_t mtu;        /* enum ibv_mtu of the port's active MTU, 1..5 */
    uint8_t gid_index;
    uint16_t lid;     /* != 0 on InfiniBand */
    uint16_t hs_port; /* handshake TCP port */
    uint8_t gid[16];
    uint8_t hs_family; /* 4 or 6 */
    uint8_t hs_ip[16]; /* IPv4 in the first 4 bytes when hs_family == 4 */
};

/* One side of the QP handshake. */
struct xport_verbs_hs {
    uint16_t type;   /* enum xport_verbs_hs_type */
    uint32_t qpn;    /* 24 bit, != 0 unless NAK */
    uint32_t psn;    /* 24 bit */
    uint64_t src_id; /* sender's domain id */
    uint16_t lid;
    uint8_t mtu;        /* 1..5 unless NAK */
    uint8_t link_layer; /* 1..2 unless NAK */
    int32_t status;     /* NAK: positive errno of the refusal */
    uint8_t gid[16];
};

/*
 * Encoders: buf holds *len bytes on input, gets the message; -ENOSPC (and
 * *len = needed) when too small, -EINVAL for NULL args or a struct that would
 * not decode (the encoders refuse what the decoders refuse).
 * Decoders: -EINVAL for NULL args, a wrong length or out-of-range fields,
 * -EPROTO for a wrong magic, version or non-zero reserved bytes.  *out is
 * written only on success.  Pure functions, thread-safe.
 */
int xport_verbs_addr_encode(const struct xport_verbs_addr *a, void *buf, size_t *len,
                            struct kvn_err *err);
int xport_verbs_addr_decode(const void *buf, size_t len, struct xport_verbs_addr *out,
                            struct kvn_err *err);
int xport_verbs_hs_encode(const struct xport_verbs_hs *m, void *buf, size_t *len,
                          struct kvn_err *err);
int xport_verbs_hs_decode(const void *buf, size_t len, struct xport_verbs_hs *out,
                          struct kvn_err *err);

/* Path MTU of a connection: the smaller of the two ports' (enum ibv_mtu). */
uint8_t xport_verbs_path_mtu(uint8_t local_mtu, uint8_t remote_mtu);

/*
 * "mlx5_0" or "mlx5_0:2" (device, optional 1-based port, default 1) ->
 * name/port.  -EINVAL with a message for an empty name, a name too long for
 * name_cap, or a port outside 1..255.
 */
int xport_verbs_parse_dev(const char *spec, char *name, size_t name_cap, uint8_t *port,
                          struct kvn_err *err);

/*
 * Device listing behind kvn_xport_list_devices(): one entry per port, from
 * ibv_get_device_list + ibv_query_port, NUMA node from sysfs.  Returns the
 * number of ports found (may exceed max; only max are written), 0 when the
 * machine has no RDMA device or no kernel RDMA support at all.  -EINVAL for
 * max < 0, or out == NULL with max > 0.
 */
int xport_verbs_list_devices(struct kvn_xport_devinfo *out, int max, struct kvn_err *err);

/*
 * For `auto`: writes "DEV:PORT" of the first ACTIVE port into spec and
 * returns 1; 0 when there is none; -EINVAL for bad args.
 */
int xport_verbs_first_active(char *spec, size_t cap, struct kvn_err *err);

#endif /* KVN_XPORT_VERBS_H */
