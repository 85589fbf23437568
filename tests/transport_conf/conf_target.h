/*
 * conf_target.h - the target process of the transport conformance suite.
 *
 * A forked child (conf_child_spawn(&c, conf_target_main, &cfg, alarm_s)) opens
 * its own domain on cfg->uri, registers one region of cfg->region_len bytes
 * (all access rights), and then serves the parent over the bootstrap channel:
 *
 *   child                                          parent
 *   open, mr_reg, address, mr_pack
 *   TGT_HELLO {status, addr blob, descriptor} ──►  connect(addr), rmr_unpack(desc)
 *                                            ◄──  TGT_PEER_ADDR {parent's blob}
 *   connect(parent blob)
 *   TGT_OK ──────────────────────────────────────►
 *   loop: progress the domain (kvn_xport_poll) and answer commands:
 *     TGT_FILL {off,len,seed}   pattern into the region        -> TGT_OK
 *     TGT_HASH {off,len}        conf_hash64 of the region      -> TGT_HASH_R
 *     TGT_CHECK {off,len,seed}  first mismatch vs pattern      -> TGT_CHECK_R
 *     TGT_NOTIFY {cookie,bytes} notify the parent, wait SEND   -> TGT_NOTIFY_R
 *     TGT_PAUSE / TGT_RESUME    stop / restart progressing the domain -> TGT_OK
 *     TGT_EXIT                  close everything, _exit(0)
 *   and, unprompted, one TGT_RECV per notification received: the region's
 *   checksum over the range the notification names (struct conf_note), taken
 *   the moment the RECV completion is polled - this is how the suite checks
 *   that a notification arrives after the writes it follows.
 *
 * Every reply that can fail carries a status and the kvn_err message, so the
 * parent's assertion can print the child's reason.
 */
#ifndef CONF_TARGET_H
#define CONF_TARGET_H

#include <stddef.h>
#include <stdint.h>

#include "transport/kvn_xport.h"

enum conf_tgt_msg {
    TGT_HELLO = 1,
    TGT_PEER_ADDR,
    TGT_OK,
    TGT_ERR,
    TGT_FILL,
    TGT_HASH,
    TGT_HASH_R,
    TGT_CHECK,
    TGT_CHECK_R,
    TGT_NOTIFY,
    TGT_NOTIFY_R,
    TGT_PAUSE,
    TGT_RESUME,
    TGT_RECV,
    TGT_EXIT,
};

struct conf_target_cfg {
    const char *uri;
    size_t region_len;
    uint32_t op_timeout_ms; /* 0: the transport's default */
};

/* TGT_HELLO payload: this header, then addr_len + desc_len bytes. */
struct conf_hello {
    int32_t status;
    uint32_t addr_len;
    uint32_t desc_len;
    uint32_t pad;
    char msg[KVN_ERR_MSG_MAX];
};

/* TGT_ERR / TGT_OK / TGT_NOTIFY_R payload. */
struct conf_status {
    int32_t status;
    uint32_t pad;
    char msg[KVN_ERR_MSG_MAX];
};

/* TGT_FILL, TGT_HASH, TGT_CHECK request. */
struct conf_range {
    uint64_t off, len, seed;
};

/* TGT_HASH_R / TGT_CHECK_R reply. */
struct conf_range_r {
    uint64_t hash;    /* TGT_HASH_R */
    int64_t mismatch; /* TGT_CHECK_R: first bad index or -1 */
};

/* The payload of a notification the parent sends: which range to checksum. */
#define CONF_NOTE_MAGIC 0x65746f6e666e6f63ULL /* "confnote" */
struct conf_note {
    uint64_t magic;
    uint64_t seq;
    uint64_t off, len;
};

/* TGT_RECV payload. */
struct conf_recv_r {
    int32_t status;       /* of the RECV cqe */
    uint32_t len;         /* payload bytes received */
    uint64_t seq;         /* from the note, or ~0 when the payload is not a note */
    uint64_t region_hash; /* checksum of [off, off+len) at RECV time */
    uint64_t payload_hash;
    uint64_t peer_id;   /* cqe.peer_id */
    int32_t peer_known; /* cqe.peer != NULL */
    uint32_t pad;
};

/* TGT_NOTIFY request header (the payload bytes follow). */
struct conf_notify_req {
    uint64_t cookie;
};

/* The child's entry point; arg is a struct conf_target_cfg *. */
int conf_target_main(int chan, void *arg);

#endif /* CONF_TARGET_H */
