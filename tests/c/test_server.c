/*
 * test_server.c -- tp_server at the core level: the loop runs in a thread,
 * clients are tp_conn clients in the test's thread.
 */
#include "harness.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/un.h>
#include <sys/wait.h>

static tp_ctx *sctx, *cctx;

typedef struct runner {
    tp_server *srv;
    pthread_t th;
    int rc;
} runner;

static void *run_thread(void *arg)
{
    runner *r = arg;
    r->rc = tp_server_run(r->srv, NULL);
    return NULL;
}

static void start(runner *r, tp_server *srv)
{
    r->srv = srv;
    r->rc = 99;
    pthread_create(&r->th, NULL, run_thread, r);
}

static int stop(runner *r)
{
    tp_server_stop(r->srv);
    pthread_join(r->th, NULL);
    tp_server_free(r->srv);
    return r->rc;
}

/* Connects to "127.0.0.1:PORT" or "unix:PATH"; -1 on failure. */
static int dial(const char *addr)
{
    if (strncmp(addr, "unix:", 5) == 0) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", addr + 5);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            close(fd);
            return -1;
        }
        return fd;
    }
    const char *colon = strrchr(addr, ':');
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_port = htons((uint16_t)atoi(colon + 1));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Sends msg, close_notify, and reads the answer until the server's
 * close_notify. Returns the answer's length (into out) or -1. */
static ssize_t exchange(const char *addr, const char *msg, char *out,
                        size_t outlen)
{
    int fd = dial(addr);
    if (fd < 0)
        return -1;
    char err[256];
    tp_conn *c = tp_conn_new(cctx, fd, "localhost", err, sizeof err);
    tp_wait w = {.timeout_ms = 10000};
    ssize_t total = -1;
    if (c && tp_conn_handshake(c, &w) == TP_DONE &&
        tp_conn_write(c, msg, strlen(msg), &w) == (ssize_t)strlen(msg) &&
        tp_conn_shutdown(c, &w) == TP_DONE) {
        total = 0;
        for (;;) {
            ssize_t n =
                tp_conn_read(c, out + total, outlen - (size_t)total, &w);
            if (n > 0) {
                total += n;
                continue;
            }
            if (n != 0)
                total = -1;
            break;
        }
    }
    tp_conn_free(c);
    close(fd);
    return total;
}

static tp_server *new_server(const char *const *listen, const char *const *cmd,
                             int log_fd, char *err)
{
    tp_server_options o;
    tp_server_options_init(&o);
    o.listen = listen;
    o.command = cmd;
    o.log_fd = log_fd;
    o.grace_ms = 2000;
    return tp_server_new(sctx, &o, err, 256);
}

static const char *const cat_cmd[] = {"cat", NULL};

TEST(cat_echo_port0)
{
    const char *const listen[] = {"127.0.0.1:0", NULL};
    int lp[2];
    CHECK(pipe2(lp, O_CLOEXEC) == 0);
    char err[256];
    tp_server *srv = new_server(listen, cat_cmd, lp[1], err);
    CHECK_MSG(srv, "%s", err);
    CHECK(tp_server_address_count(srv) == 1);
    const char *addr = tp_server_address(srv, 0);
    CHECK_MSG(strncmp(addr, "127.0.0.1:", 10) == 0 && atoi(addr + 10) > 0, "%s",
              addr);
    runner r;
    start(&r, srv);
    char out[64];
    for (int i = 0; i < 3; i++) {
        ssize_t n = exchange(addr, "hello server", out, sizeof out);
        CHECK_MSG(n == 12 && memcmp(out, "hello server", 12) == 0, "n=%zd", n);
    }
    CHECK(stop(&r) == TP_DONE);
    close(lp[1]);
    char log[8192];
    ssize_t n = 0, k;
    while ((k = read(lp[0], log + n, sizeof log - 1 - (size_t)n)) > 0)
        n += k;
    close(lp[0]);
    log[n] = '\0';
    CHECK_MSG(strstr(log, "listening on 127.0.0.1:") &&
                  strstr(log, "fingerprint sha256:"),
              "%s", log);
    CHECK_MSG(strstr(log, "in=12 out=12") && strstr(log, "exit=0") &&
                  strstr(log, "tls_end=clean target_end=clean"),
              "%s", log);
    CHECK_MSG(strstr(log, "stopped: 3 connections"), "%s", log);
    /* all children were reaped by the server */
    CHECK(waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD);
}

TEST(unix_listener)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/tp-test-%d.sock", (int)getpid());
    char spec[80];
    snprintf(spec, sizeof spec, "unix:%s", path);
    const char *const listen[] = {spec, NULL};
    char err[256];
    tp_server *srv = new_server(listen, cat_cmd, -1, err);
    CHECK_MSG(srv, "%s", err);
    CHECK(strcmp(tp_server_address(srv, 0), spec) == 0);
    runner r;
    start(&r, srv);
    char out[64];
    ssize_t n = exchange(spec, "over unix", out, sizeof out);
    CHECK(stop(&r) == TP_DONE);
    CHECK_MSG(n == 9 && memcmp(out, "over unix", 9) == 0, "n=%zd", n);
    CHECK(access(path, F_OK) < 0); /* removed on stop */
}

TEST(address_errors)
{
    int cfd, sfd;
    /* a port in use */
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    CHECK(bind(l, (struct sockaddr *)&a, sizeof a) == 0 && listen(l, 1) == 0);
    CHECK(getsockname(l, (struct sockaddr *)&a, &al) == 0);
    char spec[64];
    snprintf(spec, sizeof spec, "127.0.0.1:%u", ntohs(a.sin_port));
    const char *const in_use[] = {spec, NULL};
    char err[256];
    CHECK(!new_server(in_use, cat_cmd, -1, err));
    char want[128];
    snprintf(want, sizeof want, "cannot listen on %s: Address already in use",
             spec);
    CHECK_MSG(strcmp(err, want) == 0, "%s", err);

    /* fd:N of that listening socket works and is not closed by us */
    char fdspec[32];
    snprintf(fdspec, sizeof fdspec, "fd:%d", l);
    const char *const by_fd[] = {fdspec, NULL};
    tp_server *srv = new_server(by_fd, cat_cmd, -1, err);
    CHECK_MSG(srv, "%s", err);
    CHECK_MSG(strcmp(tp_server_address(srv, 0), spec) == 0, "%s",
              tp_server_address(srv, 0));
    runner r;
    start(&r, srv);
    char out[16];
    ssize_t n = exchange(spec, "fd", out, sizeof out);
    CHECK(stop(&r) == TP_DONE);
    CHECK(n == 2);
    CHECK(fcntl(l, F_GETFL) >= 0 && !(fcntl(l, F_GETFL) & O_NONBLOCK));
    close(l);

    const char *const bad[] = {"nonsense", NULL};
    CHECK(!new_server(bad, cat_cmd, -1, err));
    CHECK_MSG(strstr(err, "cannot listen on nonsense: bad address"), "%s", err);
    const char *const badport[] = {"127.0.0.1:notaport", NULL};
    CHECK(!new_server(badport, cat_cmd, -1, err));
    CHECK_MSG(strstr(err, "cannot listen on 127.0.0.1:notaport: "), "%s", err);
    const char *const notlistening[] = {"fd:0", NULL};
    (void)cfd;
    (void)sfd;
    CHECK(!new_server(notlistening, cat_cmd, -1, err));
    CHECK_MSG(strstr(err, "fd:0"), "%s", err);

    tp_server_options o;
    tp_server_options_init(&o);
    CHECK(!tp_server_new(sctx, &o, err, sizeof err));
    CHECK_MSG(strstr(err, "a command or a backend is required"), "%s", err);
    CHECK(!tp_server_new(cctx, &o, err, sizeof err));
}

TEST(silent_client_times_out)
{
    const char *const listen[] = {"127.0.0.1:0", NULL};
    tp_server_options o;
    tp_server_options_init(&o);
    o.listen = listen;
    o.command = cat_cmd;
    o.handshake_timeout_ms = 300;
    o.log_fd = -1;
    char err[256];
    tp_server *srv = tp_server_new(sctx, &o, err, sizeof err);
    CHECK_MSG(srv, "%s", err);
    runner r;
    start(&r, srv);
    int fd = dial(tp_server_address(srv, 0));
    CHECK(fd >= 0);
    /* a real client is served meanwhile */
    char out[16];
    CHECK(exchange(tp_server_address(srv, 0), "x", out, sizeof out) == 1);
    struct pollfd p = {fd, POLLIN, 0};
    CHECK(poll(&p, 1, 5000) == 1); /* closed by the server: EOF */
    char b;
    CHECK(read(fd, &b, 1) == 0);
    close(fd);
    CHECK(stop(&r) == TP_DONE);
}

TEST(stop_before_run)
{
    const char *const listen[] = {"127.0.0.1:0", NULL};
    char err[256];
    tp_server *srv = new_server(listen, cat_cmd, -1, err);
    CHECK_MSG(srv, "%s", err);
    tp_server_stop(srv);
    CHECK(tp_server_run(srv, NULL) == TP_DONE);
    CHECK(tp_server_run(srv, NULL) == TP_ERROR); /* once only */
    tp_server_free(srv);
}

int main(void)
{
    signal(SIGPIPE, SIG_DFL); /* the core must never raise it */
    h_contexts(&sctx, &cctx);
    RUN(cat_echo_port0);
    RUN(unix_listener);
    RUN(address_errors);
    RUN(silent_client_times_out);
    RUN(stop_before_run);
    tp_ctx_free(sctx);
    tp_ctx_free(cctx);
    return DONE_TESTS();
}
