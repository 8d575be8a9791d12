/*
 * internal.h -- helpers shared by the core's .c files (prefix tp__).
 * Not installed, not used by the bindings.
 */
#ifndef TLSPUMP_INTERNAL_H
#define TLSPUMP_INTERNAL_H

#include "tlspump.h"

#include <stdarg.h>
#include <stdint.h>

#define TP__ERRLEN 256

/* snprintf into errbuf (if non-NULL); always NUL-terminates. */
void tp__errbuf(char *errbuf, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Monotonic clock in milliseconds. */
int64_t tp__now_ms(void);

/* Absolute deadline for a tp_wait: -1 for none (wait forever), 0 for
 * "do not wait", else now + timeout. */
int64_t tp__deadline(const tp_wait *w);

/*
 * The one place the core blocks: poll(fds, n) until an fd is ready or the
 * deadline passes, calling w->interrupted on EINTR and every
 * TP_INTERRUPT_CHECK_MS. extra_timeout_ms (>= 0) caps one wait (for a
 * caller's own deadline, e.g. the pump's idle timeout); -1 means none.
 * Returns > 0 (ready), 0 (the wait returned because of extra_timeout_ms),
 * TP_TIMEOUT, TP_INTERRUPTED, or TP_ERROR with errno set.
 */
int tp__poll(struct pollfd *fds, int n, const tp_wait *w, int64_t deadline,
             int extra_timeout_ms);

/* Counts the fork()s of this process into children: a value read in the
 * parent differs in a child. Cheap (no system call), for hot paths. */
unsigned long tp__fork_generation(void);

/* Checks that fd is open: 0, or -1 with the reason in errbuf. */
int tp__check_fd(int fd, char *errbuf, size_t errlen);
/* Sets O_NONBLOCK: 0 or -1 (errno). */
int tp__set_nonblock(int fd);

/*
 * Writes to a socket or pipe without ever raising SIGPIPE: send() with
 * MSG_NOSIGNAL on sockets; for other fds SIGPIPE is blocked in this thread
 * around write() and a resulting pending SIGPIPE is consumed.
 * Returns like write(2).
 */
ssize_t tp__write_nosig(int fd, const void *buf, size_t len, int is_socket);
/* 1 if fd is a socket. */
int tp__is_socket(int fd);

/* Copies at most dstlen-1 bytes of src (may be NULL -> ""). */
void tp__strlcpy(char *dst, const char *src, size_t dstlen);

/* How a pump direction ended, for a connection error of kind k (pump.c;
 * the server uses it for sessions that end before their pump). */
tp_end tp__end_of_errkind(tp_errkind k);

/* The child's pidfd (readable once it exits), or -1 without pidfds. */
int tp__child_pidfd(const tp_child *ch);
/* 1 once the child has exited (it is not reaped here: tp_child_wait still
 * gets its status), 0 while it runs. */
int tp__child_exited(const tp_child *ch);

/* ---- used between ctx.c, cert.c, conn.c, bio.c ---- */
typedef struct bio_st BIO;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct x509_st X509;
typedef struct evp_pkey_st EVP_PKEY;

/* A socket BIO for fd that never raises SIGPIPE; errno of failed calls is
 * stored in *last_errno. */
BIO *tp__bio_new(int fd, int *last_errno);
/* The SSL_CTX of a context (borrowed). */
SSL_CTX *tp__ctx_ssl(const tp_ctx *ctx);
/* Per-connection plaintext buffer limit. */
size_t tp__ctx_write_limit(const tp_ctx *ctx);
int tp__ctx_verifies(const tp_ctx *ctx);
/* Generates the ephemeral self-signed P-256 certificate. 0 or -1. */
int tp__ephemeral_cert(X509 **cert, EVP_PKEY **key, char *errbuf,
                       size_t errlen);
/* SHA-256 of x's DER as lowercase hex into out[65]. */
int tp__cert_fingerprint(X509 *x, char out[65]);
/* x as PEM text, malloc'd. */
char *tp__cert_pem(X509 *x);

#endif
