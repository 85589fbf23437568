/*
 * engine_thread.h - an engine of a test's own: a transport domain progressed by a thread, as a
 * separate engine process would progress it (tests/node: the daemon's register-L1 path and the
 * copy engine's dead-engine case).
 */
#ifndef TESTS_COMMON_ENGINE_THREAD_H
#define TESTS_COMMON_ENGINE_THREAD_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "transport/kvn_xport.h"

struct th_engine {
    struct kvn_xport *x;
    bool close_on_stop; /* the thread closes x as it ends: the engine dies with it */
    atomic_int stop;
    pthread_t th;
};

/* Starts the thread waiting on and polling x; 0 or a pthread_create error (nothing started). */
int th_engine_start(struct th_engine *g, struct kvn_xport *x, bool close_on_stop);

/* Stops and joins the thread (x is closed by then when close_on_stop). */
void th_engine_stop(struct th_engine *g);

#endif /* TESTS_COMMON_ENGINE_THREAD_H */
