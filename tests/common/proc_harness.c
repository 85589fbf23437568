/*
 * proc_harness.c - see proc_harness.h.
 */
#include "proc_harness.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct th_env TH;

void th_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

void th_track(pid_t p)
{
    if (TH.n_procs < TH_MAX_PROCS)
        TH.procs[TH.n_procs++] = p;
}

void th_untrack(pid_t p)
{
    for (int i = 0; i < TH.n_procs; i++)
        if (TH.procs[i] == p) {
            TH.procs[i] = TH.procs[--TH.n_procs];
            return;
        }
}

pid_t th_spawn(char *const argv[], const char *out_path, const char *err_path)
{
    pid_t p = fork();
    if (p == 0) {
        int fd = open(out_path ? out_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int efd = err_path ? open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644) : fd;
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(efd >= 0 ? efd : fd, 2);
        }
        execvp(argv[0], argv);
        _exit(127);
    }
    if (p > 0)
        th_track(p);
    return p;
}

int th_wait(pid_t p, int ms)
{
    int st;
    for (int i = 0; i <= ms / 10; i++) {
        pid_t r = waitpid(p, &st, WNOHANG);
        if (r == p) {
            th_untrack(p);
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        if (r < 0) {
            th_untrack(p);
            return -1;
        }
        th_sleep_ms(10);
    }
    kill(p, SIGKILL);
    waitpid(p, &st, 0);
    th_untrack(p);
    return -1;
}

void th_kill_all(void)
{
    for (int i = 0; i < TH.n_procs; i++) {
        kill(TH.procs[i], SIGKILL);
        waitpid(TH.procs[i], NULL, 0);
    }
    TH.n_procs = 0;
}

char *th_slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return strdup("");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = calloc(1, (size_t)(n > 0 ? n : 0) + 1);
    if (b && n > 0 && fread(b, 1, (size_t)n, f) != (size_t)n)
        b[0] = '\0';
    fclose(f);
    return b;
}

void th_path(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", TH.tmpdir, name);
}

int th_tmpdir_make(const char *template_)
{
    snprintf(TH.tmpdir, sizeof(TH.tmpdir), "%s", template_);
    if (!mkdtemp(TH.tmpdir))
        return -1;
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

int th_tmpdir_remove(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", TH.tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

int th_args(int argc, char **argv, int min_argc, const char *usage)
{
    if (argc < min_argc) {
        fprintf(stderr, "usage: %s %s\n", argv[0], usage);
        return -1;
    }
    TH.kvnode = argv[1];
    TH.kvctl = argv[2];
    return 0;
}

int th_teardown(void **state)
{
    (void)state;
    th_kill_all();
    return 0;
}

int th_port_base(unsigned slots, int stride)
{
    static unsigned salt;
    unsigned x = (unsigned)getpid() * 2654435761u ^ (unsigned)time(NULL) ^ (salt += 7919);
    return 20000 + (int)(x % slots) * stride;
}

void th_node_addrs(struct th_node *n, const char *host, const char *ns, int port)
{
    memset(n, 0, sizeof(*n));
    snprintf(n->host, sizeof(n->host), "%s", host ? host : "127.0.0.1");
    snprintf(n->ns, sizeof(n->ns), "%s", ns ? ns : "");
    n->port = port;
    snprintf(n->ctl, sizeof(n->ctl), "tcp://%s:%d", n->host, n->port);
    snprintf(n->pub, sizeof(n->pub), "tcp://%s:%d", n->host, n->port + 1);
    snprintf(n->rep, sizeof(n->rep), "tcp://%s:%d", n->host, n->port + 2);
}

/* n's process exited before hello: reap, report its log, classify. */
static unsigned node_exited(struct th_node *n)
{
    th_untrack(n->pid);
    n->pid = 0;
    kvn_client_close(n->c);
    n->c = NULL;
    char *log = th_slurp(n->log);
    unsigned why = TH_EXITED;
    if (strstr(log, "in use"))
        why |= TH_EXIT_BUSY;
    if (strstr(log, "not built in") || strstr(log, "ENOTSUP") || strstr(log, "ENODEV") ||
        strstr(log, "EPERM"))
        why |= TH_EXIT_NOTSUP;
    fprintf(stderr, "kvnode exited: %s\n", log);
    free(log);
    return why;
}

int th_node_launch(struct th_node *n, const char *const extra[], int work_timeout_ms, unsigned *why)
{
    if (why)
        *why = 0;
    char *argv[64];
    int k = 0;
    if (n->ns[0]) {
        argv[k++] = (char *)(TH.ipbin ? TH.ipbin : "ip");
        argv[k++] = "netns";
        argv[k++] = "exec";
        argv[k++] = n->ns;
    }
    argv[k++] = (char *)TH.kvnode;
    argv[k++] = "--listen";
    argv[k++] = n->ctl;
    argv[k++] = "--events";
    argv[k++] = n->pub;
    argv[k++] = "--replay";
    argv[k++] = n->rep;
    argv[k++] = "--no-hugepages";
    for (int i = 0; extra && extra[i] && k < 62; i++)
        argv[k++] = (char *)extra[i];
    argv[k] = NULL;
    n->pid = th_spawn(argv, n->log, NULL);
    if (n->pid < 0)
        return -EIO;
    struct kvn_err e;
    if (kvn_client_open(n->ctl, 300, &n->c, &e) < 0)
        return -EIO;
    for (int i = 0; i < 100; i++) {
        struct kvn_client_reply *r;
        if (kvn_client_hello(n->c, &r, &e) == 0) {
            kvn_client_reply_free(r);
            if (work_timeout_ms <= 0)
                return 0;
            kvn_client_close(n->c);
            return kvn_client_open(n->ctl, work_timeout_ms, &n->c, &e) < 0 ? -EIO : 0;
        }
        int st;
        if (waitpid(n->pid, &st, WNOHANG) == n->pid) {
            unsigned w = node_exited(n);
            if (why)
                *why = w;
            return -EIO;
        }
        /* the client timed out once: reconnect so the next hello is fresh */
        kvn_client_close(n->c);
        if (kvn_client_open(n->ctl, 300, &n->c, &e) < 0)
            return -EIO;
    }
    return -EIO;
}

int th_node_stop(struct th_node *n)
{
    if (n->c) {
        kvn_client_close(n->c);
        n->c = NULL;
    }
    if (n->pid <= 0)
        return -1;
    kill(n->pid, SIGTERM);
    int st = th_wait(n->pid, 40000);
    n->pid = 0;
    return st;
}

void th_node_kill9(struct th_node *n)
{
    if (n->c) {
        kvn_client_close(n->c);
        n->c = NULL;
    }
    if (n->pid > 0) {
        kill(n->pid, SIGKILL);
        th_wait(n->pid, 5000);
    }
    n->pid = 0;
}

uint64_t th_stat(struct th_node *n, const char *key)
{
    struct kvn_client_reply *r;
    struct kvn_err e;
    if (kvn_client_stats(n->c, &r, &e) < 0)
        return UINT64_MAX;
    uint64_t v = UINT64_MAX;
    kvn_client_reply_u64(r, key, &v);
    kvn_client_reply_free(r);
    return v;
}

bool th_quiesce(struct th_node *n, int tries)
{
    for (int i = 0; i < tries; i++) {
        if (th_stat(n, "pending_jobs") == 0 && th_stat(n, "jobs_active") == 0)
            return true;
        th_sleep_ms(10);
    }
    return false;
}
