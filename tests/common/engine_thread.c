/*
 * engine_thread.c - see engine_thread.h.
 */
#include "engine_thread.h"

static void *engine_main(void *arg)
{
    struct th_engine *g = arg;
    struct kvn_xport_cqe c[8];
    while (!atomic_load(&g->stop)) {
        struct kvn_err e;
        kvn_xport_wait(g->x, 10, &e);
        kvn_xport_poll(g->x, c, 8);
    }
    if (g->close_on_stop)
        kvn_xport_close(g->x);
    return NULL;
}

int th_engine_start(struct th_engine *g, struct kvn_xport *x, bool close_on_stop)
{
    g->x = x;
    g->close_on_stop = close_on_stop;
    atomic_store(&g->stop, 0);
    return pthread_create(&g->th, NULL, engine_main, g);
}

void th_engine_stop(struct th_engine *g)
{
    atomic_store(&g->stop, 1);
    pthread_join(g->th, NULL);
}
