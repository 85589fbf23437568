/*
 * test_bench_xfer.c - kvbench write/read end to end: a server and a client
 * process (fork, each calling kvn_bench_xfer_main as kvbench would) on
 * 127.0.0.1, the server on a free port it picks itself (-p 0) and prints.
 * The client runs with --verify --json; its JSON lines are parsed and
 * checked.  Backends not built or not usable here are reported skipped.
 * Bad command lines are checked in-process (exit status 2).  --buffer runs
 * (distinct slots per operation) are checked like the others, and their JSON
 * must report the region in buffer_bytes.
 *
 * Every child is bounded: the harness kills it after CHILD_LIMIT_S.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"
#include "transport/kvn_xport.h"

#define CHILD_LIMIT_S 60
#define OUT_MAX       (256 * 1024)

struct child {
    pid_t pid;
    int out; /* read end of its stdout */
    char buf[OUT_MAX];
    size_t len;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* "64K" / "1M" / "4097" as bytes (the test's own sizes only). */
static uint64_t kb_value(const char *s)
{
    char *end;
    uint64_t v = strtoull(s, &end, 10);
    return *end == 'K' ? v << 10 : *end == 'M' ? v << 20 : v;
}

static void spawn(struct child *c, char **argv)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(stdout);
    fflush(stderr);
    c->pid = fork();
    assert_true(c->pid >= 0);
    if (c->pid == 0) {
        close(fds[0]);
        dup2(fds[1], STDOUT_FILENO);
        close(fds[1]);
        int argc = 0;
        while (argv[argc])
            argc++;
        alarm(CHILD_LIMIT_S); /* last resort: never outlive the test */
        int rc = kvn_bench_xfer_main(argc, argv);
        fflush(stdout);
        exit(rc); /* not _exit: LeakSanitizer checks the child under ASan */
    }
    close(fds[1]);
    c->out = fds[0];
    c->len = 0;
    c->buf[0] = '\0';
}

/* Reads the child's stdout until pred(buf) holds, EOF, or the deadline. */
static int read_until(struct child *c, const char *needle, uint64_t deadline)
{
    while (!needle || !strstr(c->buf, needle)) {
        uint64_t now = now_ms();
        if (now >= deadline)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = c->out, .events = POLLIN};
        int r = poll(&p, 1, (int)(deadline - now));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            continue;
        ssize_t n = read(c->out, c->buf + c->len, sizeof(c->buf) - 1 - c->len);
        if (n <= 0)
            return needle ? -EPIPE : 0;
        c->len += (size_t)n;
        c->buf[c->len] = '\0';
    }
    return 0;
}

/* Collects the rest of the output and the exit status (killing on timeout). */
static int finish(struct child *c, uint64_t deadline)
{
    int rc = read_until(c, NULL, deadline);
    close(c->out);
    int st = 0;
    if (rc == -ETIMEDOUT) {
        kill(c->pid, SIGKILL);
        waitpid(c->pid, &st, 0);
        return -1;
    }
    for (;;) {
        pid_t w = waitpid(c->pid, &st, WNOHANG);
        if (w == c->pid)
            break;
        if (now_ms() >= deadline) {
            kill(c->pid, SIGKILL);
            waitpid(c->pid, &st, 0);
            return -1;
        }
        struct timespec ts = {0, 10 * 1000000};
        nanosleep(&ts, NULL);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Can this process open uri at all?  (Checked in a child: no library state
 * is left in the test process.) */
static int usable(const char *uri, char *why, size_t cap)
{
    int fds[2];
    if (pipe(fds))
        return 0;
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        struct kvn_xport *x = NULL;
        struct kvn_err err;
        int rc = kvn_xport_open(uri, NULL, &x, &err);
        if (rc < 0) {
            ssize_t w = write(fds[1], err.msg, strlen(err.msg));
            (void)w;
            _exit(1);
        }
        kvn_xport_close(x);
        _exit(0);
    }
    close(fds[1]);
    ssize_t n = read(fds[0], why, cap - 1);
    why[n > 0 ? n : 0] = '\0';
    close(fds[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

struct pair_result {
    int server_rc, client_rc;
    struct child server, client;
};

/* Runs "kvbench OP -t URI" server + client with extra client args. */
static void run_pair(const char *op, const char *uri, const char *server_op, char **extra,
                     struct pair_result *r)
{
    char *sargv[] = {(char *)server_op, "-t",        (char *)uri, "-p", "0", "-b",
                     "127.0.0.1",       "--timeout", "30",        NULL};
    uint64_t deadline = now_ms() + CHILD_LIMIT_S * 1000;
    spawn(&r->server, sargv);
    int rc = read_until(&r->server, "listening on 127.0.0.1:", deadline);
    assert_int_equal(rc, 0);
    char *line = strstr(r->server.buf, "listening on 127.0.0.1:");
    int port = atoi(line + strlen("listening on 127.0.0.1:"));
    assert_true(port > 0 && port < 65536);
    char pstr[16];
    snprintf(pstr, sizeof(pstr), "%d", port);

    char *cargv[40] = {(char *)op, "-t",        (char *)uri, "-p", pstr,
                       "-b",       "127.0.0.1", "--timeout", "30"};
    int n = 9;
    for (int i = 0; extra[i] && n < 38; i++)
        cargv[n++] = extra[i];
    cargv[n++] = "127.0.0.1";
    cargv[n] = NULL;
    spawn(&r->client, cargv);
    r->client_rc = finish(&r->client, deadline);
    r->server_rc = finish(&r->server, deadline);
}

/* Parses every JSON line of out; checks each and returns how many.  buffer: the
 * --buffer given (0: none), so buffer_bytes must be slots * bytes with slots =
 * buffer / bytes, at least 1. */
static int check_json_buf(const char *out, const char *op, uint64_t first_bytes, uint32_t iters,
                          uint64_t buffer, uint64_t *last_bytes)
{
    int count = 0;
    uint64_t expect = first_bytes;
    const char *p = out;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        if (len && p[0] == '{') {
            char *line = strndup(p, len);
            cJSON *j = cJSON_Parse(line);
            free(line);
            assert_non_null(j);
            cJSON *b = cJSON_GetObjectItem(j, "bytes");
            cJSON *it = cJSON_GetObjectItem(j, "iterations");
            cJSON *pk = cJSON_GetObjectItem(j, "bw_peak_gbps");
            cJSON *avg = cJSON_GetObjectItem(j, "bw_avg_gbps");
            cJSON *mr = cJSON_GetObjectItem(j, "msg_rate_mpps");
            cJSON *p50 = cJSON_GetObjectItem(j, "lat_p50_us");
            cJSON *p99 = cJSON_GetObjectItem(j, "lat_p99_us");
            cJSON *ver = cJSON_GetObjectItem(j, "verified");
            cJSON *test = cJSON_GetObjectItem(j, "test");
            cJSON *bb = cJSON_GetObjectItem(j, "buffer_bytes");
            assert_true(cJSON_IsNumber(bb));
            uint64_t slots = buffer / expect ? buffer / expect : 1;
            assert_true((uint64_t)bb->valuedouble == slots * expect);
            assert_true(cJSON_IsNumber(b) && cJSON_IsNumber(it) && cJSON_IsNumber(pk) &&
                        cJSON_IsNumber(avg) && cJSON_IsNumber(mr) && cJSON_IsNumber(p50) &&
                        cJSON_IsNumber(p99));
            assert_true(cJSON_IsString(test));
            assert_string_equal(test->valuestring, op);
            assert_true((uint64_t)b->valuedouble == expect);
            assert_int_equal((int)it->valuedouble, (int)iters);
            assert_true(avg->valuedouble > 0);
            assert_true(pk->valuedouble >= avg->valuedouble);
            assert_true(mr->valuedouble > 0);
            /* rate and bandwidth describe the same run: bw = rate * bytes */
            double bw_from_rate = mr->valuedouble * 1e6 * (double)expect / 1e9;
            assert_true(bw_from_rate > avg->valuedouble * 0.999 &&
                        bw_from_rate < avg->valuedouble * 1.001);
            assert_true(p50->valuedouble > 0 && p50->valuedouble <= p99->valuedouble);
            assert_true(cJSON_IsTrue(ver));
            cJSON_Delete(j);
            *last_bytes = expect;
            expect *= 2;
            count++;
        }
        p += len + (nl ? 1 : 0);
    }
    return count;
}

static int check_json(const char *out, const char *op, uint64_t first_bytes, uint32_t iters,
                      uint64_t *last_bytes)
{
    return check_json_buf(out, op, first_bytes, iters, 0, last_bytes);
}

/* size and buffer in bytes or with a K suffix; buffer NULL: no --buffer. */
static void pair_case_buf(const char *uri, const char *op, const char *size, const char *buffer,
                          uint32_t iters)
{
    char why[256];
    if (!usable(uri, why, sizeof(why))) {
        print_message("skipped: %s not usable here: %s\n", uri, why);
        skip();
        return;
    }
    char istr[16];
    snprintf(istr, sizeof(istr), "%u", iters);
    char *extra[] = {"-s", (char *)size, "-n",     istr,       "-w",           "5", "-q",
                     "8",  "--verify",   "--json", "--buffer", (char *)buffer, NULL};
    if (!buffer)
        extra[10] = NULL;
    static struct pair_result r;
    memset(&r, 0, sizeof(r));
    run_pair(op, uri, op, extra, &r);
    if (r.client_rc != 0 || r.server_rc != 0)
        print_message("client rc %d out:\n%s\nserver rc %d out:\n%s\n", r.client_rc, r.client.buf,
                      r.server_rc, r.server.buf);
    assert_int_equal(r.client_rc, 0);
    assert_int_equal(r.server_rc, 0);
    uint64_t bytes = kb_value(size), last = 0;
    assert_int_equal(
        check_json_buf(r.client.buf, op, bytes, iters, buffer ? kb_value(buffer) : 0, &last), 1);
}

static void pair_case(const char *uri, const char *op, const char *size, uint32_t iters)
{
    pair_case_buf(uri, op, size, NULL, iters);
}

/* --buffer 1M with 64 KiB ops: 16 slots, each checked by --verify (55 ops: all 16 used). */
static void test_ofi_tcp_buffer_write(void **s)
{
    (void)s;
    pair_case_buf("ofi+tcp", "write", "64K", "1M", 50);
}

static void test_ofi_tcp_buffer_read(void **s)
{
    (void)s;
    pair_case_buf("ofi+tcp", "read", "64K", "1M", 50);
}

static void test_ucx_tcp_buffer_write(void **s)
{
    (void)s;
    pair_case_buf("ucx+tcp", "write", "64K", "1M", 50);
}

static void test_ucx_tcp_buffer_read(void **s)
{
    (void)s;
    pair_case_buf("ucx+tcp", "read", "64K", "1M", 50);
}

/* A region that is not a multiple of the size, fewer ops than slots: only the
 * slots used are checked, and buffer_bytes is the whole slots' span. */
static void test_ofi_tcp_buffer_odd(void **s)
{
    (void)s;
    pair_case_buf("ofi+tcp", "read", "4097", "300000", 20);
}

static void test_ofi_tcp_write(void **s)
{
    (void)s;
    pair_case("ofi+tcp", "write", "65537", 50);
}

static void test_ofi_tcp_read(void **s)
{
    (void)s;
    pair_case("ofi+tcp", "read", "4096", 50);
}

static void test_ucx_tcp_write(void **s)
{
    (void)s;
    pair_case("ucx+tcp", "write", "65537", 50);
}

static void test_ucx_tcp_read(void **s)
{
    (void)s;
    pair_case("ucx+tcp", "read", "4096", 50);
}

static void test_ofi_shm_write(void **s)
{
    (void)s;
    pair_case("ofi+shm", "write", "4097", 20);
}

static void test_ucx_sm_read(void **s)
{
    (void)s;
    pair_case("ucx+sm", "read", "4097", 20);
}

/*
 * One side is SIGKILLed mid-run: the other must notice and exit 1 by itself
 * (the client through failed completions or the dead bootstrap socket, the
 * server through the bootstrap socket), well before the harness deadline.
 */
static void kill_case(const char *uri, int kill_server)
{
    char why[256];
    if (!usable(uri, why, sizeof(why))) {
        print_message("skipped: %s not usable here: %s\n", uri, why);
        skip();
        return;
    }
    char *sargv[] = {"write", "-t",        (char *)uri, "-p", "0",
                     "-b",    "127.0.0.1", "--timeout", "30", NULL};
    static struct child srv, cli;
    uint64_t deadline = now_ms() + CHILD_LIMIT_S * 1000;
    spawn(&srv, sargv);
    assert_int_equal(read_until(&srv, "listening on 127.0.0.1:", deadline), 0);
    char pstr[16];
    snprintf(pstr, sizeof(pstr), "%d",
             atoi(strstr(srv.buf, "listening on 127.0.0.1:") + strlen("listening on 127.0.0.1:")));
    /* Enough work to still be running when the kill comes; --timeout 5 bounds
     * the case where a loaded machine delays the client past the kill (its
     * connect is then refused until the timeout: still exit 1). */
    char *cargv[] = {"write",     "-t",        (char *)uri, "-p",        pstr,  "-b",
                     "127.0.0.1", "--timeout", "5",         "-s",        "64K", "-n",
                     "100000000", "-q",        "4",         "127.0.0.1", NULL};
    spawn(&cli, cargv);
    struct timespec ts = {1, 0};
    nanosleep(&ts, NULL);
    struct child *victim = kill_server ? &srv : &cli, *other = kill_server ? &cli : &srv;
    kill(victim->pid, SIGKILL);
    int rc = finish(other, deadline);
    finish(victim, deadline);
    print_message("%s survivor exited %d\n", kill_server ? "client" : "server", rc);
    assert_int_equal(rc, 1);
}

static void test_server_killed(void **s)
{
    (void)s;
    kill_case("ofi+tcp", 1);
}

static void test_client_killed(void **s)
{
    (void)s;
    kill_case("ofi+tcp", 0);
}

static void test_server_killed_ucx(void **s)
{
    (void)s;
    kill_case("ucx+tcp", 1);
}

/* -a: 23 sizes, 2 B .. 8 MiB, each verified. */
static void test_sweep_ofi_tcp(void **s)
{
    (void)s;
    char why[256];
    if (!usable("ofi+tcp", why, sizeof(why))) {
        print_message("skipped: ofi+tcp not usable here: %s\n", why);
        skip();
        return;
    }
    char *extra[] = {"-a", "-n", "3", "-w", "1", "-q", "2", "--verify", "--json", NULL};
    static struct pair_result r;
    memset(&r, 0, sizeof(r));
    run_pair("write", "ofi+tcp", "write", extra, &r);
    if (r.client_rc != 0)
        print_message("client out:\n%s\n", r.client.buf);
    assert_int_equal(r.client_rc, 0);
    assert_int_equal(r.server_rc, 0);
    uint64_t last = 0;
    assert_int_equal(check_json(r.client.buf, "write", 2, 3, &last), 23);
    assert_true(last == 8ull << 20);
}

/* A client running 'read' against a 'write' server: both refuse, exit 1. */
static void test_op_mismatch(void **s)
{
    (void)s;
    char why[256];
    if (!usable("ofi+tcp", why, sizeof(why))) {
        print_message("skipped: ofi+tcp not usable here: %s\n", why);
        skip();
        return;
    }
    char *extra[] = {"-s", "64", "-n", "2", NULL};
    static struct pair_result r;
    memset(&r, 0, sizeof(r));
    run_pair("read", "ofi+tcp", "write", extra, &r);
    assert_int_equal(r.client_rc, 1);
    assert_int_equal(r.server_rc, 1);
}

/* No server: the client gives up after --timeout, exit 1. */
static void test_no_server(void **s)
{
    (void)s;
    /* A port nobody listens on: bind one, learn it, close it. */
    char *argv[] = {"write", "-t", "ofi+tcp", "-p",        "1", "--timeout",
                    "1",     "-s", "8",       "127.0.0.1", NULL};
    struct child c;
    spawn(&c, argv);
    assert_int_equal(finish(&c, now_ms() + 30000), 1);
}

/* The human table: header and one row per size. */
static void test_table_and_memcpy(void **s)
{
    (void)s;
    char *argv[] = {"write", "-t", "memcpy", "-s", "1K", "-n", "20", "-w", "2", "--verify", NULL};
    static struct child c;
    spawn(&c, argv);
    assert_int_equal(finish(&c, now_ms() + 30000), 0);
    assert_non_null(strstr(c.buf, "#bytes"));
    assert_non_null(strstr(c.buf, "#iterations"));
    assert_non_null(strstr(c.buf, "BW peak[GB/s]"));
    assert_non_null(strstr(c.buf, "BW average[GB/s]"));
    assert_non_null(strstr(c.buf, "MsgRate[Mpps]"));
    assert_non_null(strstr(c.buf, "lat p50[us]"));
    assert_non_null(strstr(c.buf, "lat p99[us]"));
    assert_non_null(strstr(c.buf, "\n 1024 "));

    char *jargv[] = {"read", "-t", "memcpy",   "-a",     "-n", "4",
                     "-w",   "0",  "--verify", "--json", NULL};
    spawn(&c, jargv);
    assert_int_equal(finish(&c, now_ms() + 30000), 0);
    uint64_t last = 0;
    assert_int_equal(check_json(c.buf, "read", 2, 4, &last), 23);

    /* -a with --buffer: the region per size (64 KiB / size slots, at least 1) */
    char *bargv[] = {"read", "-t",       "memcpy", "-a",       "-n",  "4", "-w",
                     "0",    "--verify", "--json", "--buffer", "64K", NULL};
    spawn(&c, bargv);
    assert_int_equal(finish(&c, now_ms() + 30000), 0);
    assert_int_equal(check_json_buf(c.buf, "read", 2, 4, 65536, &last), 23);
}

static int run_main(char **argv)
{
    int argc = 0;
    while (argv[argc])
        argc++;
    return kvn_bench_xfer_main(argc, argv);
}

static void test_bad_args(void **s)
{
    (void)s;
    char *cases[][8] = {
        {"write", "-s", "0", NULL},
        {"write", "-s", "abc", NULL},
        {"write", "-s", "2G", NULL},
        {"write", "-s", "-5", NULL},
        {"write", "-q", "0", NULL},
        {"write", "-q", "5000", NULL},
        {"write", "-n", "0", NULL},
        {"write", "-w", "x", NULL},
        {"write", "-p", "70000", NULL},
        {"write", "-p", "0", "127.0.0.1", NULL},
        {"write", "-a", "-s", "4K", NULL},
        {"write", "--bogus", NULL},
        {"write", "-t", NULL},
        {"write", "-t", "", NULL},
        {"write", "-t", "memcpy", "127.0.0.1", NULL},
        {"write", "h1", "h2", NULL},
        {"write", "--timeout", "0", NULL},
        {"write", "--buffer", "1Q", NULL},
        {"write", "--buffer", "0", NULL},
        {"write", "--buffer", "2G", NULL},
        {"write", "--buffer", "-1M", NULL},
        {"write", "--buffer", NULL},
        {"write", "-s", "64K", "--buffer", "32K", NULL},
        {"write", "--buffer", "32K", NULL}, /* smaller than the default -s 64K */
        {"copy", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rc = run_main(cases[i]);
        if (rc != 2)
            print_message("case %zu (%s %s) returned %d\n", i, cases[i][0],
                          cases[i][1] ? cases[i][1] : "", rc);
        assert_int_equal(rc, 2);
    }
    assert_int_equal(kvn_bench_xfer_main(0, NULL), 2);
    char *help[] = {"read", "--help", NULL};
    assert_int_equal(run_main(help), 0);
}

/* Runs argv in-process with stderr captured into msg; returns the exit status. */
static int run_main_stderr(char **argv, char *msg, size_t cap)
{
    FILE *tmp = tmpfile();
    assert_non_null(tmp);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    dup2(fileno(tmp), STDERR_FILENO);
    int rc = run_main(argv);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    rewind(tmp);
    size_t n = fread(msg, 1, cap - 1, tmp);
    msg[n] = '\0';
    fclose(tmp);
    return rc;
}

/* --buffer below -s, or with a bad suffix: usage error (2) that says why. */
static void test_buffer_refused(void **s)
{
    (void)s;
    char msg[1024];
    char *small[] = {"read", "-t", "ofi+tcp", "-s", "64K", "--buffer", "32K", "127.0.0.1", NULL};
    assert_int_equal(run_main_stderr(small, msg, sizeof(msg)), 2);
    assert_non_null(strstr(msg, "--buffer 32K (32768 bytes) is smaller than the size of one "
                                "operation (-s, 65536 bytes)"));
    char *suffix[] = {"read", "-s", "64K", "--buffer", "1MX", "127.0.0.1", NULL};
    assert_int_equal(run_main_stderr(suffix, msg, sizeof(msg)), 2);
    assert_non_null(strstr(msg, "buffer '1MX' is not in 1..1G"));
    char *novalue[] = {"read", "-s", "64K", "--buffer", NULL};
    assert_int_equal(run_main_stderr(novalue, msg, sizeof(msg)), 2);
    assert_non_null(strstr(msg, "option --buffer needs a value"));
}

/* A transport that cannot open is a runtime failure (1), not a usage error. */
static void test_bad_transport(void **s)
{
    (void)s;
    char *argv[] = {"write",     "-t", "verbs+kvn_absent_dev9", "-s", "8", "--timeout", "1",
                    "127.0.0.1", NULL};
    struct child c;
    spawn(&c, argv);
    int rc = finish(&c, now_ms() + 30000);
    assert_int_equal(rc, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_args),
        cmocka_unit_test(test_table_and_memcpy),
        cmocka_unit_test(test_no_server),
        cmocka_unit_test(test_bad_transport),
        cmocka_unit_test(test_ofi_tcp_write),
        cmocka_unit_test(test_ofi_tcp_read),
        cmocka_unit_test(test_ucx_tcp_write),
        cmocka_unit_test(test_ucx_tcp_read),
        cmocka_unit_test(test_ofi_shm_write),
        cmocka_unit_test(test_ucx_sm_read),
        cmocka_unit_test(test_sweep_ofi_tcp),
        cmocka_unit_test(test_server_killed),
        cmocka_unit_test(test_client_killed),
        cmocka_unit_test(test_server_killed_ucx),
        cmocka_unit_test(test_op_mismatch),
        cmocka_unit_test(test_buffer_refused),
        cmocka_unit_test(test_ofi_tcp_buffer_write),
        cmocka_unit_test(test_ofi_tcp_buffer_read),
        cmocka_unit_test(test_ucx_tcp_buffer_write),
        cmocka_unit_test(test_ucx_tcp_buffer_read),
        cmocka_unit_test(test_ofi_tcp_buffer_odd),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
