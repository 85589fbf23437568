/* kvnode - the KV cache node daemon (flags: kvnode --help). */
#include <stdio.h>

#include "node/daemon.h"
#include "node/kvn_config.h"

int main(int argc, char **argv)
{
    struct kvn_config cfg;
    struct kvn_err err;
    if (kvn_config_parse(&cfg, argc, argv, &err) < 0) {
        fprintf(stderr, "kvnode: %s\n", err.msg);
        kvn_config_usage(stderr, "kvnode");
        return 2;
    }
    if (cfg.help) {
        kvn_config_usage(stdout, "kvnode");
        return 0;
    }
    struct kvn_node *n;
    if (kvn_node_create(&cfg, &n, &err) < 0) {
        fprintf(stderr, "kvnode: %s (%s)\n", err.msg, kvn_err_name(err.code));
        return 1;
    }
    int rc = kvn_node_run(n, &err);
    if (rc < 0)
        fprintf(stderr, "kvnode: %s\n", err.msg);
    kvn_node_destroy(n);
    return rc < 0 ? 1 : 0;
}
