/*
 * harness.h -- tiny test harness for the core's C tests: client and server
 * in one process over a non-blocking socketpair (or loopback TCP).
 * Each test_*.c defines its tests with TEST(name) and lists them in main()
 * with RUN(name). Output ends with "N passed, N failed".
 */
#ifndef TP_HARNESS_H
#define TP_HARNESS_H

#include "tlspump.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int h_failed_checks;
static int h_passed, h_failed;

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "  %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                    \
            h_failed_checks++;                                                 \
            return;                                                            \
        }                                                                      \
    } while (0)

#define CHECK_MSG(cond, ...)                                                   \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "  %s:%d: CHECK failed: %s: ", __FILE__,           \
                    __LINE__, #cond);                                          \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
            h_failed_checks++;                                                 \
            return;                                                            \
        }                                                                      \
    } while (0)

#define TEST(name) static void name(void)
#define RUN(name)                                                              \
    do {                                                                       \
        int before = h_failed_checks;                                          \
        alarm(60); /* a hung test is a failed test */                          \
        name();                                                                \
        alarm(0);                                                              \
        if (h_failed_checks == before) {                                       \
            h_passed++;                                                        \
            printf("ok - %s\n", #name);                                        \
        } else {                                                               \
            h_failed++;                                                        \
            printf("not ok - %s\n", #name);                                    \
        }                                                                      \
        fflush(stdout);                                                        \
    } while (0)
#define DONE_TESTS()                                                           \
    (printf("%d passed, %d failed\n", h_passed, h_failed), h_failed ? 1 : 0)

/* A non-blocking socketpair; returns 0. */
static inline int h_socketpair(int sv[2])
{
    return socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
                      sv);
}

/* A connected loopback TCP pair (client fd, server fd). */
static inline int h_tcp_pair(int *cfd, int *sfd)
{
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 ||
        listen(l, 1) < 0 || getsockname(l, (struct sockaddr *)&a, &al) < 0)
        return -1;
    *cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(*cfd, (struct sockaddr *)&a, sizeof a) < 0)
        return -1;
    *sfd = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    close(l);
    return *sfd < 0 ? -1 : 0;
}

/* Server context with the ephemeral certificate and a client context that
 * trusts it. */
static inline void h_contexts(tp_ctx **server, tp_ctx **client)
{
    char err[256];
    tp_ctx_options o;
    tp_ctx_options_init(&o);
    *server = tp_ctx_new(TP_SERVER, &o, err, sizeof err);
    if (!*server) {
        fprintf(stderr, "server ctx: %s\n", err);
        abort();
    }
    tp_ctx_options_init(&o);
    o.ca = tp_ctx_cert_pem(*server);
    *client = tp_ctx_new(TP_CLIENT, &o, err, sizeof err);
    if (!*client) {
        fprintf(stderr, "client ctx: %s\n", err);
        abort();
    }
}

/* Drives both handshakes to completion in one thread. Returns 0 on success;
 * otherwise the first TP_ERROR side's code. Bounded by 10 s. */
static inline int h_handshake_both(tp_conn *a, tp_conn *b)
{
    int ra = TP_WANT_READ, rb = TP_WANT_READ;
    for (int i = 0; i < 100000; i++) {
        if (ra != TP_DONE)
            ra = tp_conn_handshake(a, NULL);
        if (rb != TP_DONE)
            rb = tp_conn_handshake(b, NULL);
        if (ra == TP_ERROR || rb == TP_ERROR)
            return TP_ERROR;
        if (ra == TP_DONE && rb == TP_DONE)
            return 0;
        struct pollfd p[2] = {{tp_conn_fd(a), tp_conn_events(a), 0},
                              {tp_conn_fd(b), tp_conn_events(b), 0}};
        if (poll(p, 2, 10000) <= 0)
            return TP_ERROR;
    }
    return TP_ERROR;
}

/* A handshaken pair over a socketpair (fds[0] the server's) with the given
 * contexts; 0 on success. */
static inline int h_pair(tp_ctx *server, tp_ctx *client, tp_conn **cl,
                         tp_conn **sv, int fds[2])
{
    char err[256];
    *cl = *sv = NULL;
    if (h_socketpair(fds) < 0)
        return -1;
    *sv = tp_conn_new(server, fds[0], NULL, err, sizeof err);
    *cl = tp_conn_new(client, fds[1], "localhost", err, sizeof err);
    if (!*sv || !*cl) {
        fprintf(stderr, "conn: %s\n", err);
        return -1;
    }
    return h_handshake_both(*cl, *sv);
}

static inline void h_unpair(tp_conn *cl, tp_conn *sv, int fds[2])
{
    tp_conn_free(cl);
    tp_conn_free(sv);
    close(fds[0]);
    close(fds[1]);
}

#endif
