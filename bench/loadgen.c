/*
 * loadgen.c -- the TLS load generator of bench/run.
 *
 * A plain OpenSSL client (no tlspump code, so it favours no contestant):
 * TLS 1.3 only, TLS_AES_128_GCM_SHA256 only, key exchange P-256 only
 * (socat 1.7 offers no other group), verifying the
 * bench CA and the name "localhost". Every server therefore negotiates the
 * same thing; the result line says what was negotiated so bench/run can
 * check it.
 *
 *   loadgen MODE --port P --ca CA.pem [options]
 *
 * MODE:
 *   upload     send --bytes N, then close_notify; read until the server's
 *              close; print what came back (--reply: the text of it)
 *   download   read until the server's close; byte count + sha256
 *   echo       send --bytes N and read the echo concurrently (poll);
 *              close_notify after the last byte, read until the server's
 *              close; sha256 both ways
 *   handshake  --count K connections, --parallel P threads, each a full
 *              handshake, a 64-byte echo, close_notify, wait for the
 *              server's close; --resume reuses the last session ticket;
 *              --seconds S stops starting new connections after S seconds
 *   latency    one connection, --count K round trips of 64 bytes (after
 *              --warmup W); percentiles of the round-trip time
 *   idle       open --count N connections (handshake + 64-byte echo each,
 *              from --parallel P threads), print "ready N", hold them until
 *              stdin ends or SIGTERM
 *
 * Output: one JSON object on stdout (in idle mode after the "ready" line).
 * Exit status 0 when the run was complete and correct, 1 otherwise (the
 * JSON still says what happened: "ok": false and "error").
 *
 * Build: cc -O2 -o loadgen loadgen.c -lssl -lcrypto -lpthread
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#define PATTERN_SIZE (1 << 20) /* random bytes cycled as payload */
#define CHUNK (64 * 1024)
#define SMALL 64

static struct {
    const char *mode;
    const char *host;
    int port;
    const char *ca;
    const char *servername;
    uint64_t bytes;
    long count;
    long warmup;
    int parallel;
    int resume;
    int timeout_s;
    double seconds; /* handshake: stop starting connections after this */
    int reply;
} opt = {
    .host = "127.0.0.1",
    .servername = "localhost",
    .count = 100,
    .warmup = 200,
    .parallel = 1,
    .timeout_s = 60,
};

static SSL_CTX *ctx;
static unsigned char *pattern;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- errors ------------------------------------------------------------ */

/* One error text per thread: the first failure wins, later ones are
 * consequences. */
typedef struct err {
    char text[512];
} err;

static void seterr(err *e, const char *fmt, ...)
{
    if (e->text[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->text, sizeof e->text, fmt, ap);
    va_end(ap);
    unsigned long code = ERR_peek_error();
    if (code) {
        size_t n = strlen(e->text);
        snprintf(e->text + n, sizeof e->text - n, " (%s)",
                 ERR_reason_error_string(code) ? ERR_reason_error_string(code)
                                               : "openssl error");
    }
    ERR_clear_error();
}

/* Describes an SSL_get_error() result with errno captured at the call. */
static void ssl_fail(err *e, const char *op, int sslerr, int saved_errno)
{
    switch (sslerr) {
    case SSL_ERROR_ZERO_RETURN:
        seterr(e, "%s: unexpected close_notify", op);
        break;
    case SSL_ERROR_SYSCALL:
        if (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK)
            seterr(e, "%s: timeout after %d s", op, opt.timeout_s);
        else if (saved_errno)
            seterr(e, "%s: %s", op, strerror(saved_errno));
        else
            seterr(e, "%s: EOF without close_notify", op);
        break;
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE: /* blocking socket: SO_RCVTIMEO/SNDTIMEO */
        seterr(e, "%s: no answer within %d s", op, opt.timeout_s);
        break;
    default:
        seterr(e, "%s: TLS error %d", op, sslerr);
    }
}

/* ---- JSON output ------------------------------------------------------- */

static void json_str(FILE *f, const char *k, const char *v)
{
    fprintf(f, "\"%s\": \"", k);
    for (const char *p = v ? v : ""; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputs("\", ", f);
}

/* ---- connections ------------------------------------------------------- */

typedef struct conn {
    int fd;
    SSL *ssl;
} conn;

/* Per-thread state: the latest session ticket, for --resume. */
typedef struct worker {
    SSL_SESSION *sess;
    long done, resumed, unclean;
    double *lat; /* per-connection seconds (handshake mode) */
    long nlat;
    err e;
    long count;
    pthread_t tid;
    int keep; /* idle: keep the connections open */
    conn *conns;
    char version[32], cipher[64], group[32];
} worker;

static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    worker *w = SSL_get_app_data(ssl);
    if (!w)
        return 0;
    if (w->sess)
        SSL_SESSION_free(w->sess);
    w->sess = sess;
    return 1; /* we keep the reference */
}

static void set_timeouts(int fd, int seconds)
{
    struct timeval tv = {.tv_sec = seconds};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static void conn_close(conn *c)
{
    if (c->ssl)
        SSL_free(c->ssl);
    if (c->fd >= 0)
        close(c->fd);
    c->ssl = NULL;
    c->fd = -1;
}

/* TCP connect + blocking handshake (socket timeouts bound every step). */
static int conn_open(conn *c, worker *w, err *e)
{
    c->fd = -1;
    c->ssl = NULL;
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)opt.port)};
    if (inet_pton(AF_INET, opt.host, &sa.sin_addr) != 1) {
        seterr(e, "bad host %s", opt.host);
        return -1;
    }
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        seterr(e, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    set_timeouts(c->fd, opt.timeout_s);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        seterr(e, "connect 127.0.0.1:%d: %s", opt.port, strerror(errno));
        conn_close(c);
        return -1;
    }
    c->ssl = SSL_new(ctx);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_app_data(c->ssl, w);
    SSL_set_tlsext_host_name(c->ssl, opt.servername);
    SSL_set1_host(c->ssl, opt.servername);
    if (opt.resume && w && w->sess)
        SSL_set_session(c->ssl, w->sess);
    ERR_clear_error();
    int r = SSL_connect(c->ssl);
    if (r != 1) {
        int se = SSL_get_error(c->ssl, r), en = errno;
        long vr = SSL_get_verify_result(c->ssl);
        if (vr != X509_V_OK)
            seterr(e, "handshake: verify: %s",
                   X509_verify_cert_error_string(vr));
        else
            ssl_fail(e, "handshake", se, en);
        conn_close(c);
        return -1;
    }
    if (w) {
        if (SSL_session_reused(c->ssl))
            w->resumed++;
        if (!w->version[0]) {
            snprintf(w->version, sizeof w->version, "%s",
                     SSL_get_version(c->ssl));
            snprintf(w->cipher, sizeof w->cipher, "%s",
                     SSL_CIPHER_get_name(SSL_get_current_cipher(c->ssl)));
            int nid = SSL_get_negotiated_group(c->ssl);
            const char *g = nid ? OBJ_nid2sn(nid) : NULL;
            snprintf(w->group, sizeof w->group, "%s", g ? g : "?");
        }
    }
    return 0;
}

static int write_all(conn *c, const void *buf, size_t len, err *e)
{
    size_t done;
    ERR_clear_error();
    int r = SSL_write_ex(c->ssl, buf, len, &done);
    if (r != 1 || done != len) {
        int se = SSL_get_error(c->ssl, r), en = errno;
        ssl_fail(e, "write", se, en);
        return -1;
    }
    return 0;
}

/* Reads exactly len bytes. */
static int read_exact(conn *c, void *buf, size_t len, err *e)
{
    size_t got = 0;
    while (got < len) {
        size_t n;
        ERR_clear_error();
        int r = SSL_read_ex(c->ssl, (char *)buf + got, len - got, &n);
        if (r != 1) {
            int se = SSL_get_error(c->ssl, r), en = errno;
            ssl_fail(e, "read", se, en);
            return -1;
        }
        got += n;
    }
    return 0;
}

/* An EOF without close_notify, or a reset: the server closed uncleanly
 * (OpenSSL 3 reports the bare EOF as SSL_R_UNEXPECTED_EOF_WHILE_READING). */
static int is_unclean_eof(int se, int en)
{
    int r = (se == SSL_ERROR_SYSCALL &&
             (en == 0 || en == ECONNRESET || en == EPIPE)) ||
            (se == SSL_ERROR_SSL && ERR_GET_REASON(ERR_peek_last_error()) ==
                                        SSL_R_UNEXPECTED_EOF_WHILE_READING);
    if (r)
        ERR_clear_error();
    return r;
}

/*
 * Reads until the server's close. Returns 1 for a clean close_notify, 0 for
 * an EOF without it (or a reset), -1 for another error. Bytes read on the
 * way are counted in *extra and the first ones kept in reply.
 */
static int read_to_close(conn *c, uint64_t *extra, char *reply, size_t replylen,
                         err *e)
{
    char buf[16384];
    size_t kept = 0;
    for (;;) {
        size_t n;
        ERR_clear_error();
        int r = SSL_read_ex(c->ssl, buf, sizeof buf, &n);
        if (r == 1) {
            if (extra)
                *extra += n;
            if (reply && kept + 1 < replylen) {
                size_t k = n < replylen - 1 - kept ? n : replylen - 1 - kept;
                memcpy(reply + kept, buf, k);
                kept += k;
                reply[kept] = 0;
            }
            continue;
        }
        int se = SSL_get_error(c->ssl, r), en = errno;
        if (se == SSL_ERROR_ZERO_RETURN)
            return 1;
        if (is_unclean_eof(se, en))
            return 0;
        ssl_fail(e, "read until close", se, en);
        return -1;
    }
}

/* Sends close_notify (ours); failures here only matter for the log. */
static void send_close_notify(conn *c)
{
    ERR_clear_error();
    SSL_shutdown(c->ssl);
    ERR_clear_error();
}

/* ---- sha256 ------------------------------------------------------------ */

typedef struct sha {
    EVP_MD_CTX *md;
    char hex[65];
} sha;

static void sha_init(sha *s)
{
    s->md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(s->md, EVP_sha256(), NULL);
}

static void sha_update(sha *s, const void *p, size_t n)
{
    EVP_DigestUpdate(s->md, p, n);
}

static const char *sha_final(sha *s)
{
    unsigned char d[32];
    unsigned int n = 0;
    EVP_DigestFinal_ex(s->md, d, &n);
    EVP_MD_CTX_free(s->md);
    for (unsigned i = 0; i < 32; i++)
        sprintf(s->hex + 2 * i, "%02x", d[i]);
    return s->hex;
}

/* ---- result line -------------------------------------------------------- */

typedef struct result {
    int ok;
    const char *error;
    uint64_t sent, recv;
    const char *sha_sent, *sha_recv;
    double seconds;
    int clean_close; /* -1: not applicable */
    const char *reply;
    long count, resumed, unclean;
    double p50, p90, p99, p999, max, mean; /* microseconds */
    int has_lat;
    const worker *w;
} result;

static void emit(const result *r)
{
    FILE *f = stdout;
    fputc('{', f);
    json_str(f, "mode", opt.mode);
    fprintf(f, "\"ok\": %s, ", r->ok ? "true" : "false");
    if (r->error && r->error[0])
        json_str(f, "error", r->error);
    if (r->w) {
        json_str(f, "version", r->w->version);
        json_str(f, "cipher", r->w->cipher);
        json_str(f, "group", r->w->group);
    }
    fprintf(f, "\"bytes_sent\": %" PRIu64 ", \"bytes_recv\": %" PRIu64 ", ",
            r->sent, r->recv);
    if (r->sha_sent)
        json_str(f, "sha_sent", r->sha_sent);
    if (r->sha_recv)
        json_str(f, "sha_recv", r->sha_recv);
    if (r->reply)
        json_str(f, "reply", r->reply);
    if (r->clean_close >= 0)
        fprintf(f, "\"clean_close\": %s, ", r->clean_close ? "true" : "false");
    if (r->count)
        fprintf(f,
                "\"count\": %ld, \"resumed\": %ld, \"unclean_closes\": %ld, ",
                r->count, r->resumed, r->unclean);
    if (r->has_lat)
        fprintf(f,
                "\"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, "
                "\"p999_us\": %.1f, \"max_us\": %.1f, \"mean_us\": %.1f, ",
                r->p50, r->p90, r->p99, r->p999, r->max, r->mean);
    fprintf(f, "\"seconds\": %.6f}\n", r->seconds);
    fflush(f);
}

/* ---- modes ------------------------------------------------------------- */

static int mode_upload(void)
{
    worker w = {0};
    conn c;
    result res = {.clean_close = -1, .w = &w};
    char reply[256] = "";
    double t0 = now();
    if (conn_open(&c, &w, &w.e) == 0) {
        uint64_t left = opt.bytes;
        size_t off = 0;
        while (left > 0) {
            size_t n = left < CHUNK ? (size_t)left : CHUNK;
            if (write_all(&c, pattern + off, n, &w.e) < 0)
                break;
            off = (off + n) % PATTERN_SIZE;
            left -= n;
            res.sent += n;
        }
        if (left == 0) {
            send_close_notify(&c);
            int cl = read_to_close(&c, &res.recv, reply, sizeof reply, &w.e);
            if (cl >= 0)
                res.clean_close = cl;
        }
        conn_close(&c);
    }
    res.seconds = now() - t0;
    res.ok = !w.e.text[0] && res.sent == opt.bytes;
    res.error = w.e.text;
    if (opt.reply)
        res.reply = reply;
    emit(&res);
    return res.ok ? 0 : 1;
}

static int mode_download(void)
{
    worker w = {0};
    conn c;
    result res = {.clean_close = -1, .w = &w};
    sha s;
    sha_init(&s);
    double t0 = now();
    if (conn_open(&c, &w, &w.e) == 0) {
        static char buf[65536];
        for (;;) {
            size_t n;
            ERR_clear_error();
            int r = SSL_read_ex(c.ssl, buf, sizeof buf, &n);
            if (r == 1) {
                sha_update(&s, buf, n);
                res.recv += n;
                continue;
            }
            int se = SSL_get_error(c.ssl, r), en = errno;
            if (se == SSL_ERROR_ZERO_RETURN) {
                res.clean_close = 1;
            } else if (is_unclean_eof(se, en)) {
                res.clean_close = 0;
            } else {
                ssl_fail(&w.e, "read", se, en);
            }
            break;
        }
        send_close_notify(&c);
        conn_close(&c);
    }
    res.seconds = now() - t0;
    res.sha_recv = sha_final(&s);
    res.ok = !w.e.text[0];
    res.error = w.e.text;
    emit(&res);
    return res.ok ? 0 : 1;
}

static int mode_echo(void)
{
    worker w = {0};
    conn c;
    result res = {.clean_close = -1, .w = &w};
    sha ss, sr;
    sha_init(&ss);
    sha_init(&sr);
    double t0 = now();
    if (conn_open(&c, &w, &w.e) == 0) {
        fcntl(c.fd, F_SETFL, fcntl(c.fd, F_GETFL) | O_NONBLOCK);
        SSL_set_mode(c.ssl, SSL_MODE_ENABLE_PARTIAL_WRITE |
                                SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        static char buf[65536];
        int shut = 0, done = 0;
        while (!done && !w.e.text[0]) {
            int progress = 0, want_out = 0;
            /* Write side: the same (pointer, length) on a retry, as
             * OpenSSL requires, because both derive from res.sent. */
            if (res.sent < opt.bytes) {
                size_t off = res.sent % PATTERN_SIZE;
                size_t n = CHUNK;
                if (n > opt.bytes - res.sent)
                    n = (size_t)(opt.bytes - res.sent);
                if (n > PATTERN_SIZE - off)
                    n = PATTERN_SIZE - off;
                size_t wrote;
                ERR_clear_error();
                int r = SSL_write_ex(c.ssl, pattern + off, n, &wrote);
                if (r == 1) {
                    sha_update(&ss, pattern + off, wrote);
                    res.sent += wrote;
                    progress = 1;
                } else {
                    int se = SSL_get_error(c.ssl, r), en = errno;
                    if (se == SSL_ERROR_WANT_WRITE)
                        want_out = 1;
                    else if (se != SSL_ERROR_WANT_READ)
                        ssl_fail(&w.e, "write", se, en);
                }
            } else if (!shut) {
                ERR_clear_error();
                int r = SSL_shutdown(c.ssl);
                if (r >= 0) {
                    shut = 1;
                    progress = 1;
                } else {
                    int se = SSL_get_error(c.ssl, r), en = errno;
                    if (se == SSL_ERROR_WANT_WRITE)
                        want_out = 1;
                    else if (se != SSL_ERROR_WANT_READ)
                        ssl_fail(&w.e, "close_notify", se, en);
                }
            }
            /* Read side: drain what is there (bounded, to keep writing). */
            for (int i = 0; i < 64 && !done; i++) {
                size_t n;
                ERR_clear_error();
                int r = SSL_read_ex(c.ssl, buf, sizeof buf, &n);
                if (r == 1) {
                    sha_update(&sr, buf, n);
                    res.recv += n;
                    progress = 1;
                    continue;
                }
                int se = SSL_get_error(c.ssl, r), en = errno;
                if (se == SSL_ERROR_WANT_READ)
                    break;
                if (se == SSL_ERROR_WANT_WRITE) {
                    want_out = 1;
                    break;
                }
                if (se == SSL_ERROR_ZERO_RETURN) {
                    res.clean_close = 1;
                } else if (is_unclean_eof(se, en)) {
                    res.clean_close = 0;
                } else {
                    ssl_fail(&w.e, "read", se, en);
                }
                done = 1;
            }
            if (!progress && !done && !w.e.text[0]) {
                struct pollfd p = {c.fd, POLLIN | (want_out ? POLLOUT : 0), 0};
                int pr = poll(&p, 1, opt.timeout_s * 1000);
                if (pr == 0)
                    seterr(&w.e,
                           "echo: no progress for %d s (sent %" PRIu64
                           ", received %" PRIu64 ")",
                           opt.timeout_s, res.sent, res.recv);
                else if (pr < 0 && errno != EINTR)
                    seterr(&w.e, "poll: %s", strerror(errno));
            }
        }
        conn_close(&c);
    }
    res.seconds = now() - t0;
    res.sha_sent = sha_final(&ss);
    res.sha_recv = sha_final(&sr);
    res.ok = !w.e.text[0] && res.sent == opt.bytes && res.recv == opt.bytes &&
             strcmp(res.sha_sent, res.sha_recv) == 0;
    if (!w.e.text[0] && !res.ok) {
        ERR_clear_error();
        seterr(&w.e, "echo mismatch: sent %" PRIu64 ", received %" PRIu64,
               res.sent, res.recv);
    }
    res.error = w.e.text;
    emit(&res);
    return res.ok ? 0 : 1;
}

/* One short session: handshake, 64-byte echo, close both ways. */
static int small_session(worker *w, conn *c, int keep)
{
    unsigned char msg[SMALL], back[SMALL];
    if (conn_open(c, w, &w->e) < 0)
        return -1;
    memcpy(msg, pattern + (w->done * SMALL) % (PATTERN_SIZE - SMALL), SMALL);
    if (write_all(c, msg, SMALL, &w->e) < 0 ||
        read_exact(c, back, SMALL, &w->e) < 0) {
        conn_close(c);
        return -1;
    }
    if (memcmp(msg, back, SMALL) != 0) {
        seterr(&w->e, "64-byte echo came back different");
        conn_close(c);
        return -1;
    }
    if (!keep) {
        send_close_notify(c);
        uint64_t extra = 0;
        int cl = read_to_close(c, &extra, NULL, 0, &w->e);
        if (cl == 0)
            w->unclean++;
        if (cl < 0 || extra) {
            if (extra)
                seterr(&w->e, "%" PRIu64 " unexpected bytes before close",
                       extra);
            conn_close(c);
            return -1;
        }
        conn_close(c);
    }
    w->done++;
    return 0;
}

static double t_start;

static void *handshake_worker(void *arg)
{
    worker *w = arg;
    for (long i = 0; i < w->count && !w->e.text[0]; i++) {
        if (opt.seconds > 0 && now() - t_start > opt.seconds)
            break;
        conn tmp, *c = w->keep ? &w->conns[i] : &tmp;
        double t = now();
        if (small_session(w, c, w->keep) < 0)
            break;
        if (w->lat)
            w->lat[w->nlat++] = now() - t;
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(const double *v, long n, double p)
{
    if (n <= 0)
        return 0;
    long i = (long)(p * (n - 1) + 0.5);
    return v[i];
}

static void fill_lat(result *res, double *v, long n)
{
    qsort(v, n, sizeof *v, cmp_double);
    double sum = 0;
    for (long i = 0; i < n; i++)
        sum += v[i];
    res->has_lat = n > 0;
    res->p50 = pct(v, n, 0.50) * 1e6;
    res->p90 = pct(v, n, 0.90) * 1e6;
    res->p99 = pct(v, n, 0.99) * 1e6;
    res->p999 = pct(v, n, 0.999) * 1e6;
    res->max = n ? v[n - 1] * 1e6 : 0;
    res->mean = n ? sum / n * 1e6 : 0;
}

static int mode_handshake(void)
{
    int P = opt.parallel < 1 ? 1 : opt.parallel;
    worker *ws = calloc(P, sizeof *ws);
    double *all = calloc(opt.count + 1, sizeof *all);
    long nall = 0;
    double t0 = t_start = now();
    for (int i = 0; i < P; i++) {
        ws[i].count = opt.count / P + (i < opt.count % P);
        ws[i].lat = calloc(ws[i].count + 1, sizeof(double));
        pthread_create(&ws[i].tid, NULL, handshake_worker, &ws[i]);
    }
    result res = {.clean_close = -1, .w = &ws[0]};
    const char *error = "";
    for (int i = 0; i < P; i++) {
        pthread_join(ws[i].tid, NULL);
        res.count += ws[i].done;
        res.resumed += ws[i].resumed;
        res.unclean += ws[i].unclean;
        memcpy(all + nall, ws[i].lat, ws[i].nlat * sizeof(double));
        nall += ws[i].nlat;
        if (ws[i].e.text[0] && !error[0])
            error = ws[i].e.text;
    }
    res.seconds = now() - t0;
    fill_lat(&res, all, nall);
    /* With --seconds the count done is the result (at least one). */
    res.ok =
        !error[0] && (opt.seconds > 0 ? res.count > 0 : res.count == opt.count);
    res.error = error;
    res.sent = res.recv = (uint64_t)res.count * SMALL;
    emit(&res);
    return res.ok ? 0 : 1;
}

static int mode_latency(void)
{
    worker w = {0};
    conn c;
    result res = {.clean_close = -1, .w = &w};
    double *v = calloc(opt.count + 1, sizeof *v);
    long n = 0;
    double t0 = now();
    if (conn_open(&c, &w, &w.e) == 0) {
        unsigned char msg[SMALL], back[SMALL];
        for (long i = 0; i < opt.warmup + opt.count; i++) {
            memcpy(msg, pattern + (i * SMALL) % (PATTERN_SIZE - SMALL), SMALL);
            double t = now();
            if (write_all(&c, msg, SMALL, &w.e) < 0 ||
                read_exact(&c, back, SMALL, &w.e) < 0)
                break;
            double dt = now() - t;
            if (memcmp(msg, back, SMALL) != 0) {
                seterr(&w.e, "round trip %ld came back different", i);
                break;
            }
            res.sent += SMALL;
            res.recv += SMALL;
            if (i >= opt.warmup)
                v[n++] = dt;
        }
        if (!w.e.text[0]) {
            send_close_notify(&c);
            uint64_t extra = 0;
            int cl = read_to_close(&c, &extra, NULL, 0, &w.e);
            if (cl >= 0)
                res.clean_close = cl;
        }
        conn_close(&c);
    }
    res.seconds = now() - t0;
    res.count = n;
    fill_lat(&res, v, n);
    res.ok = !w.e.text[0] && n == opt.count;
    res.error = w.e.text;
    emit(&res);
    return res.ok ? 0 : 1;
}

static volatile sig_atomic_t stop_idle;
static void on_term(int sig)
{
    (void)sig;
    stop_idle = 1;
}

static int mode_idle(void)
{
    /* One fd per connection: raise the soft limit to the hard one. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    /* Opened by --parallel threads, so that a server's per-connection
     * delay (Nagle, fork) does not add up over thousands of connections. */
    int P = opt.parallel < 1 ? 1 : opt.parallel;
    worker *ws = calloc(P, sizeof *ws);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS); /* our own memory */
    double t0 = t_start = now();
    for (int i = 0; i < P; i++) {
        ws[i].count = opt.count / P + (i < opt.count % P);
        ws[i].keep = 1;
        ws[i].conns = calloc(ws[i].count + 1, sizeof(conn));
        pthread_create(&ws[i].tid, NULL, handshake_worker, &ws[i]);
    }
    long n = 0;
    err e = {{0}};
    for (int i = 0; i < P; i++) {
        pthread_join(ws[i].tid, NULL);
        n += ws[i].done;
        if (ws[i].e.text[0] && !e.text[0])
            e = ws[i].e;
    }
    result res = {.clean_close = -1, .w = &ws[0]};
    res.seconds = now() - t0;
    res.count = n;
    printf("ready %ld\n", n);
    fflush(stdout);
    if (n == opt.count) {
        struct sigaction sa = {.sa_handler = on_term};
        sigaction(SIGTERM, &sa, NULL);
        char b[256];
        /* Hold until bench/run closes our stdin (or sends SIGTERM). */
        while (!stop_idle && read(0, b, sizeof b) > 0)
            ;
    }
    for (int i = 0; i < P; i++)
        for (long j = 0; j < ws[i].done; j++) {
            send_close_notify(&ws[i].conns[j]);
            conn_close(&ws[i].conns[j]);
        }
    res.ok = !e.text[0] && n == opt.count;
    if (!res.ok && !e.text[0])
        seterr(&e, "only %ld of %ld connections", n, opt.count);
    res.error = e.text;
    emit(&res);
    return res.ok ? 0 : 1;
}

/* ---- main -------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen upload|download|echo|handshake|latency|idle "
            "--port P --ca CA.pem\n"
            "       [--host 127.0.0.1] [--servername localhost] [--bytes N]\n"
            "       [--count K] [--warmup W] [--parallel P] [--resume]\n"
            "       [--seconds S] [--timeout S] [--reply]\n");
    exit(2);
}

static uint64_t parse_size(const char *s)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    switch (*end) {
    case 'k':
    case 'K':
        v <<= 10;
        break;
    case 'm':
    case 'M':
        v <<= 20;
        break;
    case 'g':
    case 'G':
        v <<= 30;
        break;
    case 0:
        break;
    default:
        usage();
    }
    return v;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    opt.mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--resume")) {
            opt.resume = 1;
            continue;
        }
        if (!strcmp(a, "--reply")) {
            opt.reply = 1;
            continue;
        }
        if (!v)
            usage();
        i++;
        if (!strcmp(a, "--port"))
            opt.port = atoi(v);
        else if (!strcmp(a, "--host"))
            opt.host = v;
        else if (!strcmp(a, "--ca"))
            opt.ca = v;
        else if (!strcmp(a, "--servername"))
            opt.servername = v;
        else if (!strcmp(a, "--bytes"))
            opt.bytes = parse_size(v);
        else if (!strcmp(a, "--count"))
            opt.count = atol(v);
        else if (!strcmp(a, "--warmup"))
            opt.warmup = atol(v);
        else if (!strcmp(a, "--parallel"))
            opt.parallel = atoi(v);
        else if (!strcmp(a, "--seconds"))
            opt.seconds = atof(v);
        else if (!strcmp(a, "--timeout"))
            opt.timeout_s = atoi(v);
        else
            usage();
    }
    if (!opt.port || !opt.ca)
        usage();
    signal(SIGPIPE, SIG_IGN); /* a server that goes away is an error line */

    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    if (SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256") != 1 ||
        SSL_CTX_set1_groups_list(ctx, "P-256") != 1 ||
        SSL_CTX_load_verify_locations(ctx, opt.ca, NULL) != 1) {
        fprintf(stderr, "loadgen: cannot set up TLS (CA %s)\n", opt.ca);
        ERR_print_errors_fp(stderr);
        return 2;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    /* Tickets are caught by the callback, per thread, for --resume. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT |
                                            SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, new_session_cb);

    pattern = malloc(PATTERN_SIZE);
    RAND_bytes(pattern, PATTERN_SIZE);

    if (!strcmp(opt.mode, "upload"))
        return mode_upload();
    if (!strcmp(opt.mode, "download"))
        return mode_download();
    if (!strcmp(opt.mode, "echo"))
        return mode_echo();
    if (!strcmp(opt.mode, "handshake"))
        return mode_handshake();
    if (!strcmp(opt.mode, "latency"))
        return mode_latency();
    if (!strcmp(opt.mode, "idle"))
        return mode_idle();
    usage();
    return 2;
}
