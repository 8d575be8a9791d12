/*
 * conn.c -- tp_conn: one TLS connection over a caller-owned non-blocking
 * socket: handshake steps, draining reads, a core-owned write buffer,
 * non-blocking close_notify, and exact readiness reporting.
 *
 * Every SSL_* call is preceded by ERR_clear_error() and followed at once by
 * SSL_get_error() (and the BIO's saved errno), so stale errors left on the
 * thread's queue by other code cannot be mistaken for ours.
 */
#include "internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* read_drain stops at this much (when OpenSSL holds nothing more) so one
 * call's memory stays bounded while the kernel still signals the rest. */
#define DRAIN_SOFT_MAX ((size_t)256 * 1024)
#define RECORD_MAX 16384

struct tp_conn {
    tp_ctx *ctx;
    SSL *ssl;
    int fd;
    int bio_errno; /* errno of the BIO's last failed send/recv */
    pid_t pid;     /* the process that may use it (see forked()) */
    unsigned long fork_gen; /* tp__fork_generation() when it was made */

    unsigned hs_done : 1;
    unsigned fatal : 1;         /* an error ended the connection */
    unsigned sent_shutdown : 1; /* our close_notify is out */
    unsigned shutting : 1;      /* SSL_shutdown called: no more writes */
    unsigned peer_closed : 1;   /* the peer's close_notify was read */

    /* Readiness each blocked operation waits for (POLLIN/POLLOUT). */
    short hs_events, rd_events, wr_events, sd_events;

    /* Plaintext accepted by write and not yet taken by SSL_write:
     * wbuf[woff .. woff+wlen). */
    char *wbuf;
    size_t wcap, woff, wlen, wlimit;

    char *rbuf; /* read_drain's buffer */
    size_t rcap;

    tp_errkind kind;
    int err_no;
    const char *op;
    char reason[256];
    char error[512];

    char *hostname;
    char *peer_pem, *peer_subject, *peer_issuer;
    char peer_fp[65];
    char alpn[256];
};

/* ---- errors ---------------------------------------------------------- */

static void set_error(tp_conn *c, const char *op, tp_errkind kind, int err_no,
                      const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void set_error(tp_conn *c, const char *op, tp_errkind kind, int err_no,
                      const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->reason, sizeof c->reason, fmt, ap);
    va_end(ap);
    c->op = op;
    c->kind = kind;
    c->err_no = err_no;
    if (err_no && kind == TP_E_SYS && strcmp(c->reason, strerror(err_no)))
        snprintf(c->error, sizeof c->error, "%s: %s (%s)", op, c->reason,
                 strerror(err_no));
    else
        snprintf(c->error, sizeof c->error, "%s: %s", op, c->reason);
}

/* Makes the error permanent: every later operation returns it. */
static int fail(tp_conn *c)
{
    c->fatal = 1;
    c->hs_events = c->rd_events = c->wr_events = c->sd_events = 0;
    return TP_ERROR;
}

static int fail_closed(tp_conn *c, const char *op)
{
    if (!c->fatal)
        set_error(c, op, TP_E_CLOSED, 0, "connection is closed");
    return TP_ERROR;
}

/* Translates a failed SSL call (ssl_err from SSL_get_error) into the
 * connection's error. Returns TP_ERROR. */
static int ssl_failure(tp_conn *c, const char *op, int ssl_err)
{
    unsigned long e = ERR_peek_last_error();
    int reason = ERR_GET_REASON(e);
    int err_no = c->bio_errno;
    if (ssl_err == SSL_ERROR_SSL && reason == SSL_R_UNEXPECTED_EOF_WHILE_READING)
        ssl_err = SSL_ERROR_SYSCALL, err_no = 0;
    /* Once the peer's close_notify is in, OpenSSL reports any failed
     * write (EPIPE...) as SSL_ERROR_ZERO_RETURN: the BIO's errno says
     * what happened. */
    if (ssl_err == SSL_ERROR_ZERO_RETURN && !e && err_no)
        ssl_err = SSL_ERROR_SYSCALL;
    if (ssl_err == SSL_ERROR_ZERO_RETURN && !e) {
        set_error(c, op, TP_E_TLS, 0,
                  "the peer closed the connection (close_notify)");
        return fail(c);
    }
    if (ssl_err == SSL_ERROR_SYSCALL && !e) {
        if (err_no == ECONNRESET || err_no == EPIPE)
            set_error(c, op, TP_E_RESET, err_no, "connection reset by peer");
        else if (err_no == 0 || err_no == EAGAIN)
            set_error(c, op, TP_E_TRUNCATED, 0,
                      "unexpected EOF: the peer closed the connection "
                      "without close_notify (truncated)");
        else
            set_error(c, op, TP_E_SYS, err_no, "%s", strerror(err_no));
        return fail(c);
    }
    if (ssl_err == SSL_ERROR_SYSCALL && (err_no == ECONNRESET || err_no == EPIPE)) {
        set_error(c, op, TP_E_RESET, err_no, "connection reset by peer");
        return fail(c);
    }
    const char *text = e ? ERR_reason_error_string(e) : NULL;
    if (!text)
        text = ssl_err == SSL_ERROR_SYSCALL ? "system error" : "TLS error";
    if (reason == SSL_R_CERTIFICATE_VERIFY_FAILED) {
        long v = SSL_get_verify_result(c->ssl);
        if (v == X509_V_ERR_HOSTNAME_MISMATCH ||
            v == X509_V_ERR_IP_ADDRESS_MISMATCH)
            set_error(c, op, TP_E_TLS, 0, "%s: %s (server name '%s')", text,
                      X509_verify_cert_error_string(v),
                      c->hostname ? c->hostname : "");
        else
            set_error(c, op, TP_E_TLS, 0, "%s: %s", text,
                      X509_verify_cert_error_string(v));
    } else if (reason == SSL_R_WRONG_VERSION_NUMBER ||
               reason == SSL_R_PACKET_LENGTH_TOO_LONG ||
               reason == SSL_R_HTTP_REQUEST ||
               reason == SSL_R_HTTPS_PROXY_REQUEST) {
        set_error(c, op, TP_E_TLS, 0, "%s (the peer does not speak TLS)",
                  text);
    } else {
        set_error(c, op, TP_E_TLS, ssl_err == SSL_ERROR_SYSCALL ? err_no : 0,
                  "%s", text);
    }
    ERR_clear_error();
    return fail(c);
}

/* After a failed SSL call: TP_WANT_READ/TP_WANT_WRITE (and the readiness
 * stored in *events), or TP_ERROR. */
static int classify(tp_conn *c, const char *op, int ret, short *events)
{
    int ssl_err = SSL_get_error(c->ssl, ret);
    switch (ssl_err) {
    case SSL_ERROR_WANT_READ:
        *events = POLLIN;
        return TP_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        *events = POLLOUT;
        return TP_WANT_WRITE;
    default:
        *events = 0;
        return ssl_failure(c, op, ssl_err);
    }
}

/* ---- creation -------------------------------------------------------- */

static int is_ip_literal(const char *h)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

tp_conn *tp_conn_new(tp_ctx *ctx, int fd, const char *server_hostname,
                     char *errbuf, size_t errlen)
{
    tp__errbuf(errbuf, errlen, "%s", "");
    if (!ctx) {
        tp__errbuf(errbuf, errlen, "no context");
        return NULL;
    }
    if (tp__check_fd(fd, errbuf, errlen) < 0)
        return NULL;
    if (!tp__is_socket(fd)) {
        tp__errbuf(errbuf, errlen, "file descriptor %d is not a socket", fd);
        return NULL;
    }
    if (tp__ctx_verifies(ctx) && (!server_hostname || !*server_hostname)) {
        tp__errbuf(errbuf, errlen,
                   "server_hostname is required to verify the server's "
                   "certificate (or create the client context with verify "
                   "off, which is insecure)");
        return NULL;
    }
    if (tp__set_nonblock(fd) < 0) {
        tp__errbuf(errbuf, errlen, "cannot make fd %d non-blocking: %s", fd,
                   strerror(errno));
        return NULL;
    }
    tp_conn *c = calloc(1, sizeof *c);
    if (!c) {
        tp__errbuf(errbuf, errlen, "out of memory");
        return NULL;
    }
    c->fd = fd;
    c->pid = getpid();
    c->fork_gen = tp__fork_generation();
    c->wlimit = tp__ctx_write_limit(ctx);
    ERR_clear_error();
    c->ssl = SSL_new(tp__ctx_ssl(ctx));
    BIO *bio = c->ssl ? tp__bio_new(fd, &c->bio_errno) : NULL;
    if (!bio) {
        tp__errbuf(errbuf, errlen, "cannot create the TLS connection: %s",
                   ERR_reason_error_string(ERR_peek_last_error())
                       ? ERR_reason_error_string(ERR_peek_last_error())
                       : "out of memory");
        SSL_free(c->ssl);
        free(c);
        ERR_clear_error();
        return NULL;
    }
    SSL_set_bio(c->ssl, bio, bio);
    c->ctx = tp_ctx_ref(ctx);
    if (tp_ctx_role(ctx) == TP_SERVER) {
        SSL_set_accept_state(c->ssl);
    } else {
        SSL_set_connect_state(c->ssl);
        if (server_hostname && *server_hostname) {
            c->hostname = strdup(server_hostname);
            int ok;
            if (is_ip_literal(server_hostname)) {
                /* RFC 6066: no IP addresses in SNI; check the IP SAN. */
                ok = !tp__ctx_verifies(ctx) ||
                     X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl),
                                                   server_hostname);
            } else {
                ok = SSL_set_tlsext_host_name(c->ssl, server_hostname) &&
                     (!tp__ctx_verifies(ctx) ||
                      SSL_set1_host(c->ssl, server_hostname));
            }
            if (!ok) {
                tp__errbuf(errbuf, errlen, "invalid server_hostname '%s'",
                           server_hostname);
                tp_conn_free(c);
                ERR_clear_error();
                return NULL;
            }
        }
    }
    return c;
}

void tp_conn_free(tp_conn *c)
{
    if (!c)
        return;
    SSL_free(c->ssl);
    tp_ctx_free(c->ctx);
    free(c->wbuf);
    free(c->rbuf);
    free(c->hostname);
    free(c->peer_pem);
    free(c->peer_subject);
    free(c->peer_issuer);
    free(c);
}

int tp_conn_fd(const tp_conn *c)
{
    return c->fd;
}

/* ---- blocking helper ------------------------------------------------- */

/*
 * Waits for the readiness an operation asked for (want is TP_WANT_*).
 * Returns TP_DONE to retry, or the code to return (the WANT itself when
 * not waiting, TP_TIMEOUT, TP_INTERRUPTED, TP_ERROR).
 */
static int await(tp_conn *c, const char *op, int want, const tp_wait *w,
                 int64_t deadline)
{
    if (deadline == 0)
        return want;
    struct pollfd p = {c->fd, want == TP_WANT_READ ? POLLIN : POLLOUT, 0};
    int r = tp__poll(&p, 1, w, deadline, -1);
    if (r > 0)
        return TP_DONE;
    if (r == TP_TIMEOUT) {
        set_error(c, op, TP_E_TIMEOUT, 0, "timed out after %d ms",
                  w->timeout_ms);
        return TP_TIMEOUT;
    }
    if (r == TP_INTERRUPTED) {
        set_error(c, op, TP_E_INTERRUPTED, 0, "interrupted");
        return TP_INTERRUPTED;
    }
    set_error(c, op, TP_E_SYS, errno, "poll failed");
    return TP_ERROR;
}

/*
 * A connection belongs to the process that made it: a forked child shares
 * the socket but not the TLS state, and its I/O would corrupt the parent's
 * stream (sequence numbers, keys). In the child every I/O call fails with
 * TP_E_CLOSED; tp_conn_free there only frees the child's copy.
 */
static int forked(tp_conn *c, const char *op)
{
    /* Not getpid() here: a system call on every I/O step. */
    if (c->fork_gen == tp__fork_generation())
        return 0;
    if (!c->fatal) {
        set_error(c, op, TP_E_CLOSED, 0,
                  "the connection cannot be used in a forked child (it "
                  "belongs to process %d)",
                  (int)c->pid);
        fail(c);
    }
    return 1;
}

/* ---- handshake ------------------------------------------------------- */

static int handshake_step(tp_conn *c)
{
    if (c->hs_done)
        return TP_DONE;
    if (c->fatal || forked(c, "handshake"))
        return TP_ERROR;
    ERR_clear_error();
    c->bio_errno = 0;
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        const unsigned char *p = NULL;
        unsigned len = 0;
        SSL_get0_alpn_selected(c->ssl, &p, &len);
        if (p && len) {
            memcpy(c->alpn, p, len);
            c->alpn[len] = '\0';
        }
        c->hs_done = 1;
        c->hs_events = 0;
        return TP_DONE;
    }
    return classify(c, "handshake", r, &c->hs_events);
}

int tp_conn_handshake(tp_conn *c, const tp_wait *w)
{
    int64_t deadline = tp__deadline(w);
    for (;;) {
        int r = handshake_step(c);
        if (r != TP_WANT_READ && r != TP_WANT_WRITE)
            return r;
        if ((r = await(c, "handshake", r, w, deadline)) != TP_DONE)
            return r;
    }
}

/* ---- write buffer ---------------------------------------------------- */

/* Sends buffered plaintext until empty or the socket would block. */
static int flush_step(tp_conn *c)
{
    if (c->fatal || forked(c, "write"))
        return TP_ERROR;
    if (!c->hs_done) {
        int r = handshake_step(c);
        if (r != TP_DONE)
            return r;
    }
    while (c->wlen > 0) {
        size_t n = 0;
        ERR_clear_error();
        c->bio_errno = 0;
        /* Partial-write mode: returns after each record; the length only
         * grows between retries, as OpenSSL requires. */
        int ok = SSL_write_ex(c->ssl, c->wbuf + c->woff, c->wlen, &n);
        if (!ok)
            return classify(c, "write", 0, &c->wr_events);
        c->woff += n;
        c->wlen -= n;
    }
    c->woff = 0;
    c->wr_events = 0;
    return TP_DONE;
}

/* Makes room for at least min(want, limit - wlen) bytes at the tail. */
static size_t reserve(tp_conn *c, size_t want)
{
    size_t room_total = c->wlimit - c->wlen;
    if (want > room_total)
        want = room_total;
    if (want == 0)
        return 0;
    if (c->woff + c->wlen + want <= c->wcap)
        return c->wcap - c->woff - c->wlen;
    if (c->woff > 0) {
        /* SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER allows this mid-retry. */
        memmove(c->wbuf, c->wbuf + c->woff, c->wlen);
        c->woff = 0;
        if (c->wlen + want <= c->wcap)
            return c->wcap - c->wlen;
    }
    size_t cap = c->wcap ? c->wcap : 65536;
    while (cap < c->wlen + want)
        cap *= 2;
    if (cap > c->wlimit)
        cap = c->wlimit;
    if (cap > c->wcap) {
        char *nb = realloc(c->wbuf, cap);
        if (!nb)
            return c->wcap - c->woff - c->wlen;
        c->wbuf = nb;
        c->wcap = cap;
    }
    return c->wcap - c->woff - c->wlen;
}

char *tp_conn_write_space(tp_conn *c, size_t *room)
{
    *room = 0;
    if (c->fatal || c->sent_shutdown || c->shutting)
        return NULL;
    *room = reserve(c, RECORD_MAX * 4);
    return *room ? c->wbuf + c->woff + c->wlen : NULL;
}

int tp_conn_write_commit(tp_conn *c, size_t n)
{
    if (n > c->wcap - c->woff - c->wlen) {
        set_error(c, "write", TP_E_ARG, 0, "commit beyond the reserved space");
        return TP_ERROR;
    }
    c->wlen += n;
    return TP_DONE;
}

ssize_t tp_conn_write(tp_conn *c, const void *buf, size_t len,
                      const tp_wait *w)
{
    if (c->fatal)
        return TP_ERROR;
    if (c->sent_shutdown || c->shutting)
        return fail_closed(c, "write");
    if (len > SSIZE_MAX)
        len = SSIZE_MAX;
    int64_t deadline = tp__deadline(w);
    size_t accepted = 0;
    for (;;) {
        while (accepted < len) {
            size_t room = reserve(c, len - accepted);
            if (room == 0)
                break;
            if (room > len - accepted)
                room = len - accepted;
            memcpy(c->wbuf + c->woff + c->wlen, (const char *)buf + accepted,
                   room);
            c->wlen += room;
            accepted += room;
        }
        int r = flush_step(c);
        if (r == TP_ERROR)
            return TP_ERROR;
        if (accepted == len)
            return (ssize_t)accepted;
        if (r == TP_DONE)
            continue; /* the buffer drained: take more */
        if (deadline == 0)
            return (ssize_t)accepted;
        if ((r = await(c, "write", r, w, deadline)) != TP_DONE)
            return r;
    }
}

int tp_conn_flush(tp_conn *c, const tp_wait *w)
{
    int64_t deadline = tp__deadline(w);
    for (;;) {
        int r = flush_step(c);
        if (r != TP_WANT_READ && r != TP_WANT_WRITE)
            return r;
        if ((r = await(c, "flush", r, w, deadline)) != TP_DONE)
            return r;
    }
}

size_t tp_conn_buffered(const tp_conn *c)
{
    return c->wlen;
}

void tp_conn_release_buffers(tp_conn *c)
{
    if (c->wlen == 0) {
        free(c->wbuf);
        c->wbuf = NULL;
        c->wcap = c->woff = 0;
    }
    free(c->rbuf);
    c->rbuf = NULL;
    c->rcap = 0;
}

/* ---- read ------------------------------------------------------------ */

/*
 * Reads into buf[0..len) until it is full or OpenSSL would block, and, when
 * soft_max is set, stops once that much is read and OpenSSL holds nothing
 * more. Returns the count, 0 at clean EOF, TP_WANT_*, TP_ERROR; bytes read
 * before an EOF or error are returned first.
 */
static ssize_t read_step(tp_conn *c, char *buf, size_t len, size_t soft_max)
{
    if (c->fatal || forked(c, "read"))
        return TP_ERROR;
    if (c->peer_closed)
        return 0;
    if (!c->hs_done) {
        int r = handshake_step(c);
        if (r != TP_DONE)
            return r;
    }
    size_t got = 0;
    while (got < len) {
        size_t n = 0;
        ERR_clear_error();
        c->bio_errno = 0;
        if (SSL_read_ex(c->ssl, buf + got, len - got, &n)) {
            got += n;
            if (soft_max && got >= soft_max && !SSL_has_pending(c->ssl))
                break;
            continue;
        }
        int ssl_err = SSL_get_error(c->ssl, 0);
        if (ssl_err == SSL_ERROR_ZERO_RETURN) {
            c->peer_closed = 1;
            c->rd_events = 0;
            break;
        }
        short ev = 0;
        int r = classify(c, "read", 0, &ev);
        if (r == TP_ERROR) {
            if (got > 0)
                break; /* deliver what came first; fatal is remembered */
            return TP_ERROR;
        }
        c->rd_events = ev;
        return got > 0 ? (ssize_t)got : r;
    }
    c->rd_events = 0;
    return (ssize_t)got;
}

ssize_t tp_conn_read(tp_conn *c, void *buf, size_t len, const tp_wait *w)
{
    if (len == 0) {
        set_error(c, "read", TP_E_ARG, 0, "read size must be > 0");
        return TP_ERROR;
    }
    if (len > SSIZE_MAX)
        len = SSIZE_MAX;
    int64_t deadline = tp__deadline(w);
    for (;;) {
        ssize_t r = read_step(c, buf, len, 0);
        if (r != TP_WANT_READ && r != TP_WANT_WRITE)
            return r;
        if ((r = await(c, "read", (int)r, w, deadline)) != TP_DONE)
            return r;
    }
}

/* Drains into the connection's buffer, growing it a record at a time. */
static ssize_t drain_step(tp_conn *c, size_t max, const char **data)
{
    size_t limit = max ? max : DRAIN_SOFT_MAX;
    size_t got = 0;
    for (;;) {
        /* Past the soft limit only to empty OpenSSL's pending record. */
        size_t want = got < limit ? limit - got : RECORD_MAX;
        if (max && want > max - got)
            want = max - got;
        if (want > 4 * RECORD_MAX)
            want = 4 * RECORD_MAX;
        if (got + want > c->rcap) {
            size_t cap = c->rcap ? c->rcap : 4 * RECORD_MAX;
            while (cap < got + want)
                cap *= 2;
            char *nb = realloc(c->rbuf, cap);
            if (!nb) {
                if (got)
                    break;
                set_error(c, "read", TP_E_SYS, ENOMEM, "out of memory");
                return TP_ERROR;
            }
            c->rbuf = nb;
            c->rcap = cap;
        }
        ssize_t r = read_step(c, c->rbuf + got, want, 0);
        if (r <= 0) {
            if (got > 0)
                break;
            return r;
        }
        got += (size_t)r;
        if ((size_t)r < want)
            break; /* read_step stopped: would block, EOF or error */
        if (max && got >= max)
            break;
        if (got >= limit && !SSL_has_pending(c->ssl))
            break;
    }
    *data = c->rbuf;
    return (ssize_t)got;
}

ssize_t tp_conn_read_drain(tp_conn *c, size_t max, const char **data,
                           const tp_wait *w)
{
    *data = NULL;
    int64_t deadline = tp__deadline(w);
    for (;;) {
        ssize_t r = drain_step(c, max, data);
        if (r != TP_WANT_READ && r != TP_WANT_WRITE)
            return r;
        if ((r = await(c, "read", (int)r, w, deadline)) != TP_DONE)
            return r;
    }
}

/* ---- shutdown -------------------------------------------------------- */

static int shutdown_step(tp_conn *c)
{
    if (c->sent_shutdown)
        return TP_DONE;
    if (c->fatal || forked(c, "shutdown"))
        return TP_ERROR;
    /* flush_step completes a pending handshake first ("write, then
     * shutdown" clients). */
    int r = flush_step(c);
    if (r != TP_DONE)
        return r;
    ERR_clear_error();
    c->bio_errno = 0;
    /* From the first SSL_shutdown on, OpenSSL refuses SSL_write even while
     * the close_notify itself waits for the socket ("protocol is
     * shutdown", fatal): refuse writes before they reach it. */
    c->shutting = 1;
    /* 0: our close_notify is sent, the peer's not yet read; 1: both. */
    int s = SSL_shutdown(c->ssl);
    if (s >= 0) {
        c->sent_shutdown = 1;
        c->sd_events = 0;
        return TP_DONE;
    }
    return classify(c, "shutdown", s, &c->sd_events);
}

int tp_conn_shutdown(tp_conn *c, const tp_wait *w)
{
    int64_t deadline = tp__deadline(w);
    for (;;) {
        int r = shutdown_step(c);
        if (r != TP_WANT_READ && r != TP_WANT_WRITE)
            return r;
        if ((r = await(c, "shutdown", r, w, deadline)) != TP_DONE)
            return r;
    }
}

/* ---- state ----------------------------------------------------------- */

int tp_conn_peer_closed(const tp_conn *c)
{
    return c->peer_closed;
}

int tp_conn_closed(const tp_conn *c)
{
    return c->sent_shutdown;
}

int tp_conn_handshake_done(const tp_conn *c)
{
    return c->hs_done;
}

int tp_conn_pending(const tp_conn *c)
{
    return SSL_has_pending(c->ssl);
}

short tp_conn_events(const tp_conn *c)
{
    if (c->fatal)
        return 0;
    if (!c->hs_done)
        return c->hs_events;
    return c->rd_events | c->wr_events | c->sd_events;
}

int tp_conn_wait(tp_conn *c, const tp_wait *w)
{
    short ev = tp_conn_events(c);
    if (ev == 0)
        return TP_DONE;
    struct pollfd p = {c->fd, ev, 0};
    int r = tp__poll(&p, 1, w, tp__deadline(w), -1);
    if (r > 0)
        return TP_DONE;
    if (r == TP_TIMEOUT) {
        set_error(c, "wait", TP_E_TIMEOUT, 0, "timed out");
        return r;
    }
    if (r == TP_INTERRUPTED)
        return r;
    set_error(c, "wait", TP_E_SYS, errno, "poll failed");
    return TP_ERROR;
}

const char *tp_conn_error(const tp_conn *c)
{
    return c->error;
}

const char *tp_conn_reason(const tp_conn *c)
{
    return c->reason;
}

const char *tp_conn_operation(const tp_conn *c)
{
    return c->op ? c->op : "";
}

tp_errkind tp_conn_errkind(const tp_conn *c)
{
    return c->kind;
}

int tp_conn_errno(const tp_conn *c)
{
    return c->err_no;
}

/* ---- information ----------------------------------------------------- */

const char *tp_conn_version(const tp_conn *c)
{
    return c->hs_done ? SSL_get_version(c->ssl) : NULL;
}

const char *tp_conn_cipher(const tp_conn *c)
{
    return c->hs_done ? SSL_get_cipher_name(c->ssl) : NULL;
}

const char *tp_conn_alpn(const tp_conn *c)
{
    return c->alpn[0] ? c->alpn : NULL;
}

static char *name_oneline(X509_NAME *n)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *out = NULL;
    if (b && X509_NAME_print_ex(b, n, 0, XN_FLAG_RFC2253) >= 0) {
        char *p;
        long len = BIO_get_mem_data(b, &p);
        out = malloc((size_t)len + 1);
        if (out) {
            memcpy(out, p, (size_t)len);
            out[len] = '\0';
        }
    }
    BIO_free(b);
    return out;
}

/* Caches the peer certificate's texts on first use. */
static X509 *peer_cert(tp_conn *c)
{
    if (!c->hs_done)
        return NULL;
    X509 *x = SSL_get0_peer_certificate(c->ssl);
    if (x && !c->peer_pem) {
        c->peer_pem = tp__cert_pem(x);
        c->peer_subject = name_oneline(X509_get_subject_name(x));
        c->peer_issuer = name_oneline(X509_get_issuer_name(x));
        tp__cert_fingerprint(x, c->peer_fp);
    }
    return x;
}

const char *tp_conn_peer_cert_pem(tp_conn *c)
{
    return peer_cert(c) ? c->peer_pem : NULL;
}

const char *tp_conn_peer_subject(tp_conn *c)
{
    return peer_cert(c) ? c->peer_subject : NULL;
}

const char *tp_conn_peer_issuer(tp_conn *c)
{
    return peer_cert(c) ? c->peer_issuer : NULL;
}

const char *tp_conn_peer_fingerprint(tp_conn *c)
{
    return peer_cert(c) ? c->peer_fp : NULL;
}

const char *tp_conn_verify_result(const tp_conn *c)
{
    /* After a failed handshake too: that is when the reason matters. */
    if (!c->hs_done && !c->fatal)
        return NULL;
    return X509_verify_cert_error_string(SSL_get_verify_result(c->ssl));
}

const char *tp_conn_server_name(const tp_conn *c)
{
    return SSL_get_servername(c->ssl, TLSEXT_NAMETYPE_host_name);
}

const char *tp_errkind_name(tp_errkind k)
{
    static const char *const names[] = {
        "none",   "tls", "truncated", "reset",      "system",
        "closed", "arg", "timeout",   "interrupted"};
    return (unsigned)k < sizeof names / sizeof names[0] ? names[k]
                                                        : "unknown";
}
