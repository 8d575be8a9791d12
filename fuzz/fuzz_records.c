/*
 * fuzz_records.c -- (a) the record path after a real handshake. A tlspump
 * client and server talk through a man in the middle that the fuzz input
 * drives: it forwards, cuts, flips bits in, and injects bytes into the
 * client's record stream, while the client writes and the server reads.
 *
 * Invariants: every byte the server delivers is the client's byte at that
 * stream offset (nothing forged, dropped, duplicated or reordered: the
 * pattern is position dependent); a clean EOF only after the client's
 * close_notify; after the stream ends (FIN) the server reaches EOF or an
 * error in a bounded number of steps; an untouched stream delivers all.
 *
 * Input: pairs (op, arg); see the switch below.
 */
#include "fuzz_common.h"

#define RAW_MAX (256 * 1024)

typedef struct st {
    tp_conn *cl, *sv;
    int c[2], s[2];    /* c[0] client, c[1] mitm; s[0] mitm, s[1] server */
    char raw[RAW_MAX]; /* client -> server bytes held by the mitm */
    size_t raw_len;
    uint64_t sent, got;     /* client plaintext accepted, server delivered */
    uint64_t b_sent, b_got; /* server -> client */
    int corrupted, fin, cl_closed, sv_eof, sv_err;
    int early_fin; /* FIN by the input: the stream may be cut short */
    int shut_tried;
} st;

static st S;

static void collect(st *s)
{
    while (s->raw_len < RAW_MAX) {
        ssize_t n = recv(s->c[1], s->raw + s->raw_len, RAW_MAX - s->raw_len, 0);
        if (n <= 0)
            break;
        s->raw_len += (size_t)n;
    }
}

static void forward(st *s, size_t max)
{
    if (s->fin)
        return;
    if (max > s->raw_len)
        max = s->raw_len;
    ssize_t n = max ? send(s->s[0], s->raw, max, MSG_NOSIGNAL) : 0;
    if (n > 0) {
        memmove(s->raw, s->raw + n, s->raw_len - (size_t)n);
        s->raw_len -= (size_t)n;
    }
}

static void server_read(st *s, unsigned arg)
{
    if (s->sv_eof || s->sv_err)
        return;
    static char buf[70000];
    ssize_t r;
    const char *d = buf;
    if (arg & 1) {
        r = tp_conn_read_drain(s->sv, arg & 2 ? (arg >> 2) + 1 : 0, &d, NULL);
    } else {
        size_t len = arg ? (size_t)arg * 64 + 1 : sizeof buf;
        r = tp_conn_read(s->sv, buf, len, NULL);
    }
    if (r > 0) {
        FUZZ_ASSERT(s->got + (uint64_t)r <= s->sent,
                    "server delivered %llu bytes, the client sent %llu",
                    (unsigned long long)(s->got + r),
                    (unsigned long long)s->sent);
        FUZZ_ASSERT(fz_check(d, (size_t)r, s->got, 0xA5),
                    "forged/reordered plaintext at offset %llu",
                    (unsigned long long)s->got);
        s->got += (uint64_t)r;
    } else if (r == 0) {
        FUZZ_ASSERT(s->cl_closed,
                    "clean EOF without the client's close_notify");
        s->sv_eof = 1;
    } else if (r == TP_ERROR) {
        FUZZ_ASSERT(tp_conn_errkind(s->sv) != TP_E_NONE, "no error kind");
        s->sv_err = 1;
    }
}

static void server_to_client(st *s, unsigned n)
{
    static char buf[4096];
    if (!s->sv_err && !tp_conn_closed(s->sv)) {
        fz_fill(buf, n, s->b_sent, 0x5A);
        ssize_t w = tp_conn_write(s->sv, buf, n, NULL);
        if (w > 0)
            s->b_sent += (uint64_t)w;
    }
    /* the mitm passes this direction on untouched */
    char tmp[65536];
    ssize_t k;
    while ((k = recv(s->s[0], tmp, sizeof tmp, 0)) > 0)
        if (send(s->c[1], tmp, (size_t)k, MSG_NOSIGNAL) != k)
            break;
    static char in[65536];
    ssize_t r;
    while ((r = tp_conn_read(s->cl, in, sizeof in, NULL)) > 0) {
        FUZZ_ASSERT(s->b_got + (uint64_t)r <= s->b_sent, "client got more");
        FUZZ_ASSERT(fz_check(in, (size_t)r, s->b_got, 0x5A),
                    "server->client stream corrupted");
        s->b_got += (uint64_t)r;
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fz_contexts();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return -1;
    st *s = &S;
    memset(s, 0, offsetof(st, raw));
    s->raw_len = 0;
    s->sent = s->got = s->b_sent = s->b_got = 0;
    s->corrupted = s->fin = s->cl_closed = s->sv_eof = s->sv_err = 0;
    s->early_fin = s->shut_tried = 0;
    FUZZ_ASSERT(fz_socketpair(s->c) == 0 && fz_socketpair(s->s) == 0, "sp");
    char err[256];
    s->cl = tp_conn_new(fz_cctx, s->c[0], "localhost", err, sizeof err);
    s->sv = tp_conn_new(fz_sctx, s->s[1], NULL, err, sizeof err);
    FUZZ_ASSERT(s->cl && s->sv, "%s", err);
    /* The handshake through the mitm, untouched. */
    int rc = TP_WANT_READ, rs = TP_WANT_READ;
    for (int i = 0; i < 100 && (rc != TP_DONE || rs != TP_DONE); i++) {
        if (rc != TP_DONE)
            rc = tp_conn_handshake(s->cl, NULL);
        if (rs != TP_DONE)
            rs = tp_conn_handshake(s->sv, NULL);
        FUZZ_ASSERT(rc != TP_ERROR && rs != TP_ERROR, "handshake: %s / %s",
                    tp_conn_error(s->cl), tp_conn_error(s->sv));
        collect(s);
        forward(s, s->raw_len);
        char tmp[65536];
        ssize_t k;
        while ((k = recv(s->s[0], tmp, sizeof tmp, 0)) > 0)
            send(s->c[1], tmp, (size_t)k, MSG_NOSIGNAL);
    }
    FUZZ_ASSERT(rc == TP_DONE && rs == TP_DONE, "handshake did not finish");

    fz_in in = {data, size, 0};
    static char buf[2048];
    while (fz_more(&in)) {
        unsigned op = fz_u8(&in) % 9, arg = fz_u8(&in);
        switch (op) {
        case 0: { /* the client writes */
            size_t n = (size_t)arg * 7 + 1;
            fz_fill(buf, n, s->sent, 0xA5);
            if (!s->cl_closed) {
                ssize_t w = tp_conn_write(s->cl, buf, n, NULL);
                /* only the server's alert about a damaged stream can
                 * end the client */
                FUZZ_ASSERT(w >= 0 || s->corrupted || s->early_fin ||
                                (s->shut_tried &&
                                 tp_conn_errkind(s->cl) == TP_E_CLOSED),
                            "client write: %s", tp_conn_error(s->cl));
                if (w > 0)
                    s->sent += (uint64_t)w;
            }
            collect(s);
            break;
        }
        case 1: /* forward (all, or a piece) */
            tp_conn_flush(s->cl, NULL);
            collect(s);
            forward(s, arg & 1 ? (size_t)(arg >> 1) + 1 : s->raw_len);
            break;
        case 2:
            server_read(s, arg);
            break;
        case 3: { /* inject arg bytes of the input into the stream */
            size_t n = arg % 64;
            if (!s->fin && n && in.off + n <= in.n) {
                forward(s, s->raw_len); /* keep the order: injected after */
                if (send(s->s[0], in.p + in.off, n, MSG_NOSIGNAL) > 0)
                    s->corrupted = 1;
            }
            in.off += n;
            break;
        }
        case 4: /* cut: drop bytes from the held stream */
            if (s->raw_len) {
                size_t n = arg % (s->raw_len + 1);
                if (n) {
                    memmove(s->raw, s->raw + n, s->raw_len - n);
                    s->raw_len -= n;
                    s->corrupted = 1;
                }
            }
            break;
        case 5: /* flip a bit in the held stream */
            if (s->raw_len) {
                s->raw[(arg * 31u) % s->raw_len] ^= (char)(1u << (arg & 7));
                s->corrupted = 1;
            }
            break;
        case 6: /* the client's close_notify */
            if (!s->cl_closed) {
                s->shut_tried = 1; /* writes are refused from now on */
                if (tp_conn_shutdown(s->cl, NULL) == TP_DONE)
                    s->cl_closed = 1;
            }
            collect(s);
            break;
        case 7: /* FIN: nothing more reaches the server */
            if (!s->fin) {
                shutdown(s->s[0], SHUT_WR);
                s->fin = s->early_fin = 1;
            }
            break;
        case 8:
            server_to_client(s, arg * 8 + 1);
            break;
        }
    }

    /* The end: whatever is held goes through, then FIN; the server must
     * come to EOF or an error without waiting. */
    int intact = !s->corrupted && !s->early_fin;
    for (int i = 0; i < 2000 && !s->sv_eof && !s->sv_err; i++) {
        if (!s->fin) {
            tp_conn_flush(s->cl, NULL);
            /* a close_notify that waited for the socket goes out */
            if (s->shut_tried && !s->cl_closed &&
                tp_conn_shutdown(s->cl, NULL) == TP_DONE)
                s->cl_closed = 1;
            collect(s);
            forward(s, s->raw_len);
            if (tp_conn_buffered(s->cl) == 0 && s->raw_len == 0 &&
                (!s->shut_tried || s->cl_closed)) {
                char t;
                if (recv(s->c[1], &t, 1, MSG_PEEK) <= 0) {
                    shutdown(s->s[0], SHUT_WR);
                    s->fin = 1;
                }
            }
        }
        server_read(s, 0);
    }
    FUZZ_ASSERT(s->sv_eof || s->sv_err, "the server never ended after FIN");
    if (intact) {
        /* Nothing touched the stream: everything arrived. */
        FUZZ_ASSERT(s->got == s->sent, "lost data: sent %llu got %llu",
                    (unsigned long long)s->sent, (unsigned long long)s->got);
        FUZZ_ASSERT(s->sv_eof == s->cl_closed, "end %d vs close_notify %d (%s)",
                    s->sv_eof, s->cl_closed, tp_conn_error(s->sv));
        if (s->sv_err)
            FUZZ_ASSERT(tp_conn_errkind(s->sv) == TP_E_TRUNCATED,
                        "untouched stream ended with: %s",
                        tp_conn_error(s->sv));
    }
    tp_conn_free(s->cl);
    tp_conn_free(s->sv);
    close(s->c[0]);
    close(s->c[1]);
    close(s->s[0]);
    close(s->s[1]);
    return 0;
}
