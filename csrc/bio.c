/*
 * bio.c -- a minimal socket BIO: send(MSG_NOSIGNAL) so a write to a peer
 * that went away never raises SIGPIPE, and the errno of the last failed
 * call kept for the connection's error text.
 *
 * Built with -DTP_FAULT_INJECTION, the environment variable TLSPUMP_FAULT
 * (a comma list of "short", "want", "delay") makes the BIO hostile: reads
 * move 1 byte at a time and writes at most half of what they are given
 * ("short"; not 1 byte: on AF_UNIX every send is a buffer of its own, and
 * 1-byte sends would shrink the socket's capacity to a few hundred bytes
 * and deadlock any peer that does not read at once), about every other
 * call fails with a spurious would-block ("want"; pseudo-random, never more
 * than twice in a row: a strict alternation can livelock a caller whose own
 * calls alternate in step with it), and every 32nd write is held back
 * 1 ms ("delay"), so the peer sees records arrive in pieces over time. The
 * fuzzers drive the same faults from their input through tp__fault_hook.
 * Normal builds compile none of that.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>

typedef struct tp__bio_state {
    int fd;
    int *last_errno; /* where the owner wants errno of a failed call */
#ifdef TP_FAULT_INJECTION
    int fault_short, fault_want, fault_delay;
    unsigned rng, spurious_run, writes;
#endif
} tp__bio_state;


static int would_block(int e)
{
    return e == EAGAIN || e == EWOULDBLOCK || e == EINTR || e == EINPROGRESS;
}

#ifdef TP_FAULT_INJECTION
/*
 * Test-only: when set (by a fuzzer), decides every call instead of the
 * environment: returns -1 for a spurious would-block, 0 for a fake EOF
 * (reads) or reset (writes), else the most bytes this call may move.
 */
int (*tp__fault_hook)(int fd, int is_write, int len);

/* Returns 1 if this call must fail with a spurious would-block. */
static int fault_spurious(tp__bio_state *st)
{
    if (!st->fault_want)
        return 0;
    st->rng = st->rng * 1103515245u + 12345u;
    if (st->spurious_run < 2 && (st->rng >> 16) & 1) {
        st->spurious_run++;
        return 1;
    }
    st->spurious_run = 0;
    return 0;
}
#define FAULT_RLEN(st, len) ((st)->fault_short && (len) > 1 ? 1 : (len))
#define FAULT_WLEN(st, len) ((st)->fault_short && (len) > 1 ? (len) / 2 : (len))

static void fault_delay(tp__bio_state *st)
{
    if (st->fault_delay && (st->writes++ & 31) == 31) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
}
#else
#define fault_spurious(st) 0
#define FAULT_RLEN(st, len) (len)
#define FAULT_WLEN(st, len) (len)
#define fault_delay(st) ((void)0)
#endif

static int bio_write(BIO *b, const char *buf, int len)
{
    tp__bio_state *st = BIO_get_data(b);
    BIO_clear_retry_flags(b);
#ifdef TP_FAULT_INJECTION
    if (tp__fault_hook) {
        int h = tp__fault_hook(st->fd, 1, len);
        if (h < 0) {
            BIO_set_retry_write(b);
            return -1;
        }
        if (h == 0) {
            *st->last_errno = ECONNRESET;
            return -1;
        }
        if (h < len)
            len = h;
    }
#endif
    if (fault_spurious(st)) {
        BIO_set_retry_write(b);
        return -1;
    }
    fault_delay(st);
    ssize_t r = send(st->fd, buf, (size_t)FAULT_WLEN(st, len), MSG_NOSIGNAL);
    if (r < 0) {
        *st->last_errno = errno;
        if (would_block(errno))
            BIO_set_retry_write(b);
        return -1;
    }
    return (int)r;
}

static int bio_read(BIO *b, char *buf, int len)
{
    tp__bio_state *st = BIO_get_data(b);
    BIO_clear_retry_flags(b);
#ifdef TP_FAULT_INJECTION
    if (tp__fault_hook) {
        int h = tp__fault_hook(st->fd, 0, len);
        if (h < 0) {
            BIO_set_retry_read(b);
            return -1;
        }
        if (h == 0) {
            *st->last_errno = 0;
            return 0;
        }
        if (h < len)
            len = h;
    }
#endif
    if (fault_spurious(st)) {
        BIO_set_retry_read(b);
        return -1;
    }
    ssize_t r = recv(st->fd, buf, (size_t)FAULT_RLEN(st, len), 0);
    if (r < 0) {
        *st->last_errno = errno;
        if (would_block(errno))
            BIO_set_retry_read(b);
        return -1;
    }
    if (r == 0)
        *st->last_errno = 0; /* a plain EOF */
    return (int)r;
}

static int bio_puts(BIO *b, const char *s)
{
    return bio_write(b, s, (int)strlen(s));
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    switch (cmd) {
    case BIO_CTRL_FLUSH:
    case BIO_CTRL_DUP:
        return 1;
    case BIO_C_GET_FD: {
        tp__bio_state *st = BIO_get_data(b);
        if (ptr)
            *(int *)ptr = st->fd;
        return st->fd;
    }
    default:
        return 0;
    }
}

static int bio_destroy(BIO *b)
{
    free(BIO_get_data(b));
    BIO_set_data(b, NULL);
    return 1;
}

static BIO_METHOD *method(void)
{
    /* Created once; BIO_METHODs are never freed by design (as OpenSSL's own). */
    static BIO_METHOD *volatile m;
    if (m)
        return m;
    BIO_METHOD *nm = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK |
                                      BIO_TYPE_DESCRIPTOR,
                                  "tlspump socket");
    if (!nm)
        return NULL;
    BIO_meth_set_write(nm, bio_write);
    BIO_meth_set_read(nm, bio_read);
    BIO_meth_set_puts(nm, bio_puts);
    BIO_meth_set_ctrl(nm, bio_ctrl);
    BIO_meth_set_destroy(nm, bio_destroy);
    if (!__sync_bool_compare_and_swap(&m, NULL, nm))
        BIO_meth_free(nm);
    return m;
}

BIO *tp__bio_new(int fd, int *last_errno)
{
    BIO_METHOD *m = method();
    if (!m)
        return NULL;
    tp__bio_state *st = calloc(1, sizeof *st);
    BIO *b = st ? BIO_new(m) : NULL;
    if (!b) {
        free(st);
        return NULL;
    }
    st->fd = fd;
    st->last_errno = last_errno;
#ifdef TP_FAULT_INJECTION
    const char *f = getenv("TLSPUMP_FAULT");
    st->fault_short = f && strstr(f, "short") != NULL;
    st->fault_want = f && strstr(f, "want") != NULL;
    st->fault_delay = f && strstr(f, "delay") != NULL;
    st->rng = 0x9e3779b9u ^ (unsigned)fd; /* reproducible runs */
#endif
    BIO_set_data(b, st);
    BIO_set_init(b, 1);
    return b;
}
