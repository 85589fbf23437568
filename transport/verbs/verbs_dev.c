/*
 * verbs_dev.c - RDMA device enumeration: one entry per (device, port) with
 * its state, link layer and NUMA node.
 *
 * ibv_get_device_list() returns NULL with errno ENOSYS when the kernel has no
 * RDMA support at all (as on the CI machines) and an empty list when it has
 * support but no device: both mean "0 devices", not an error.
 */
#include "transport/verbs/verbs.h"

#include <infiniband/verbs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int read_numa_node(struct ibv_device *dev)
{
    char path[512];
    /* ibdev_path is /sys/class/infiniband_verbs/uverbsN's device: use the
     * class path by name, which is stable. */
    snprintf(path, sizeof(path), "/sys/class/infiniband/%s/device/numa_node",
             ibv_get_device_name(dev));
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int node = -1;
    if (fscanf(f, "%d", &node) != 1)
        node = -1;
    fclose(f);
    return node < 0 ? -1 : node;
}

static const char *state_name(enum ibv_port_state s)
{
    switch (s) {
    case IBV_PORT_NOP:
        return "NOP";
    case IBV_PORT_DOWN:
        return "DOWN";
    case IBV_PORT_INIT:
        return "INIT";
    case IBV_PORT_ARMED:
        return "ARMED";
    case IBV_PORT_ACTIVE:
        return "ACTIVE";
    case IBV_PORT_ACTIVE_DEFER:
        return "ACTIVE_DEFER";
    default:
        return "UNKNOWN";
    }
}

static const char *link_name(uint8_t ll)
{
    switch (ll) {
    case IBV_LINK_LAYER_INFINIBAND:
        return "InfiniBand";
    case IBV_LINK_LAYER_ETHERNET:
        return "Ethernet";
    default:
        return "Unspecified";
    }
}

int xport_verbs_list_devices(struct kvn_xport_devinfo *out, int max, struct kvn_err *err)
{
    if (max < 0)
        return kvn_err_set(err, -EINVAL, "list_devices: max %d < 0", max);
    if (max > 0 && !out)
        return kvn_err_set(err, -EINVAL, "list_devices: out is NULL with max %d", max);

    int ndev = 0, found = 0;
    struct ibv_device **list = ibv_get_device_list(&ndev);
    if (!list)
        return 0; /* no kernel RDMA support (ENOSYS) or nothing to list */
    for (int d = 0; d < ndev; d++) {
        struct ibv_context *ctx = ibv_open_device(list[d]);
        if (!ctx)
            continue; /* e.g. no permission on /dev/infiniband: skip, not fail */
        struct ibv_device_attr da;
        if (ibv_query_device(ctx, &da) == 0) {
            int numa = read_numa_node(list[d]);
            for (uint8_t p = 1; p <= da.phys_port_cnt; p++) {
                struct ibv_port_attr pa;
                if (ibv_query_port(ctx, p, &pa))
                    continue;
                if (found < max) {
                    struct kvn_xport_devinfo *di = &out[found];
                    memset(di, 0, sizeof(*di));
                    snprintf(di->name, sizeof(di->name), "%s", ibv_get_device_name(list[d]));
                    di->port = p;
                    di->active = pa.state == IBV_PORT_ACTIVE;
                    snprintf(di->state, sizeof(di->state), "%s", state_name(pa.state));
                    snprintf(di->link_layer, sizeof(di->link_layer), "%s",
                             link_name(pa.link_layer));
                    di->numa_node = numa;
                }
                found++;
            }
        }
        ibv_close_device(ctx);
    }
    ibv_free_device_list(list);
    return found;
}

int xport_verbs_first_active(char *spec, size_t cap, struct kvn_err *err)
{
    if (!spec || cap == 0)
        return kvn_err_set(err, -EINVAL, "first_active: NULL buffer");
    struct kvn_xport_devinfo di[16];
    int n = xport_verbs_list_devices(di, 16, err);
    if (n < 0)
        return n;
    for (int i = 0; i < n && i < 16; i++) {
        if (!di[i].active)
            continue;
        int w = snprintf(spec, cap, "%s:%u", di[i].name, di[i].port);
        if (w < 0 || (size_t)w >= cap)
            return kvn_err_set(err, -EINVAL, "first_active: buffer of %zu bytes too small", cap);
        return 1;
    }
    return 0;
}
