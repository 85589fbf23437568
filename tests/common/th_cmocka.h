/*
 * th_cmocka.h - cmocka helpers shared by the test suites.
 */
#ifndef TESTS_COMMON_TH_CMOCKA_H
#define TESTS_COMMON_TH_CMOCKA_H

/*
 * One test body run once per transport: registers fn as the test named "<fn>_<suffix>" with
 * the transport string (e.g. "ofi+tcp") as its initial state, so fn reads it from *state.
 * Replaces one wrapper function per transport; the reported test names stay the same.
 */
#define TH_TRANSPORT_TEST(fn, suffix, transport, setup, teardown)                                  \
    {                                                                                              \
        .name = #fn "_" #suffix, .test_func = fn, .setup_func = setup, .teardown_func = teardown,  \
        .initial_state = (void *)(transport)                                                       \
    }

/* The transport a TH_TRANSPORT_TEST body runs with. */
#define TH_TRANSPORT(state) ((const char *)*(state))

#endif /* TESTS_COMMON_TH_CMOCKA_H */
