/*
 * fuzz_common.h -- what the libFuzzer targets share: contexts made once,
 * socketpairs, the stream pattern, and a reader over the fuzz input.
 * Built by fuzz/run with clang -fsanitize=fuzzer,address,undefined and the
 * core compiled with -DTP_FAULT_INJECTION (for tp__fault_hook).
 */
#ifndef TP_FUZZ_COMMON_H
#define TP_FUZZ_COMMON_H

#include "tlspump.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* bio.c's test-only hook (TP_FAULT_INJECTION builds). */
extern int (*tp__fault_hook)(int fd, int is_write, int len);

#define FUZZ_ASSERT(cond, ...)                                                 \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "FUZZ ASSERTION FAILED %s:%d: %s: ", __FILE__,     \
                    __LINE__, #cond);                                          \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
            abort();                                                           \
        }                                                                      \
    } while (0)

static tp_ctx *fz_sctx, *fz_cctx;

/* Server context (one ephemeral certificate for the whole run) and a
 * client context that trusts it. */
static void fz_contexts(void)
{
    if (fz_sctx)
        return;
    signal(SIGPIPE, SIG_DFL); /* the core must never raise it */
    char err[256];
    tp_ctx_options o;
    tp_ctx_options_init(&o);
    o.alpn = "h2,http/1.1";
    fz_sctx = tp_ctx_new(TP_SERVER, &o, err, sizeof err);
    FUZZ_ASSERT(fz_sctx, "%s", err);
    tp_ctx_options_init(&o);
    o.ca = tp_ctx_cert_pem(fz_sctx);
    fz_cctx = tp_ctx_new(TP_CLIENT, &o, err, sizeof err);
    FUZZ_ASSERT(fz_cctx, "%s", err);
}

static int fz_socketpair(int sv[2])
{
    return socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
                      sv);
}

static int64_t fz_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The byte at stream offset i (position dependent: a duplicated,
 * reordered or lost byte changes what follows). */
static inline unsigned char fz_pat(uint64_t i, unsigned seed)
{
    return (unsigned char)((i * 131u) ^ (i >> 9) ^ (i >> 17) ^ seed);
}

static inline void fz_fill(char *buf, size_t n, uint64_t off, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = (char)fz_pat(off + i, seed);
}

static inline int fz_check(const char *buf, size_t n, uint64_t off,
                           unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)buf[i] != fz_pat(off + i, seed))
            return 0;
    return 1;
}

/* Consumes the fuzz input. Past its end every read is 0. */
typedef struct fz_in {
    const uint8_t *p;
    size_t n, off;
} fz_in;

static inline unsigned fz_u8(fz_in *in)
{
    return in->off < in->n ? in->p[in->off++] : 0;
}

static inline unsigned fz_u16(fz_in *in)
{
    unsigned a = fz_u8(in);
    return a | fz_u8(in) << 8;
}

static inline int fz_more(const fz_in *in)
{
    return in->off < in->n;
}

/* Drives both handshakes in this thread (faults off). 0 or -1. */
static int fz_handshake_both(tp_conn *a, tp_conn *b)
{
    int ra = TP_WANT_READ, rb = TP_WANT_READ;
    for (int i = 0; i < 1000; i++) {
        if (ra != TP_DONE)
            ra = tp_conn_handshake(a, NULL);
        if (rb != TP_DONE)
            rb = tp_conn_handshake(b, NULL);
        if (ra == TP_ERROR || rb == TP_ERROR)
            return -1;
        if (ra == TP_DONE && rb == TP_DONE)
            return 0;
        struct pollfd p[2] = {{tp_conn_fd(a), tp_conn_events(a), 0},
                              {tp_conn_fd(b), tp_conn_events(b), 0}};
        if (poll(p, 2, 5000) <= 0)
            return -1;
    }
    return -1;
}

#endif
