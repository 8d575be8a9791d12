/* test_conn.c -- the connection core: handshake, drain, write buffer,
 * shutdown, errors; client and server in one process. */
#include "harness.h"

#include <openssl/ssl.h>

static tp_ctx *sctx, *cctx;

/* A handshaken pair with this file's contexts. */
static int pair(tp_conn **cl, tp_conn **sv, int fds[2])
{
    return h_pair(sctx, cctx, cl, sv, fds);
}

#define unpair h_unpair

TEST(handshake_and_info)
{
    tp_conn *cl, *sv;
    int fds[2];
    CHECK(pair(&cl, &sv, fds) == 0);
    CHECK(strcmp(tp_conn_version(cl), "TLSv1.3") == 0);
    CHECK(tp_conn_cipher(sv) != NULL);
    CHECK(strcmp(tp_conn_peer_fingerprint(cl), tp_ctx_fingerprint(sctx)) == 0);
    CHECK(strstr(tp_conn_peer_subject(cl), "CN=localhost") != NULL);
    CHECK(strcmp(tp_conn_verify_result(cl), "ok") == 0);
    CHECK(tp_conn_peer_cert_pem(sv) == NULL); /* no client cert */
    CHECK(tp_conn_events(cl) == 0);
    unpair(cl, sv, fds);
}

TEST(drain_returns_all_records_at_once)
{
    tp_conn *cl, *sv;
    int fds[2];
    CHECK(pair(&cl, &sv, fds) == 0);
    char chunk[16384];
    memset(chunk, 'a', sizeof chunk);
    for (int i = 0; i < 4; i++)
        CHECK(tp_conn_write(sv, chunk, sizeof chunk, NULL) == sizeof chunk);
    for (int i = 0; i < 100; i++)
        CHECK(tp_conn_write(sv, "b", 1, NULL) == 1);
    CHECK(tp_conn_write(sv, chunk, 5000, NULL) == 5000);
    CHECK(tp_conn_flush(sv, NULL) == TP_DONE);
    const char *data;
    ssize_t n = tp_conn_read_drain(cl, 0, &data, NULL);
    CHECK_MSG(n == 4 * 16384 + 100 + 5000, "n=%zd", n);
    CHECK(data[0] == 'a' && data[65536] == 'b');
    CHECK(tp_conn_read_drain(cl, 0, &data, NULL) == TP_WANT_READ);
    CHECK(tp_conn_events(cl) == POLLIN);
    /* A part of a record stays in OpenSSL: the next read gets it with no
     * new readiness. */
    CHECK(tp_conn_write(sv, chunk, sizeof chunk, NULL) == sizeof chunk);
    char buf[20000];
    CHECK(tp_conn_read(cl, buf, 1000, NULL) == 1000);
    CHECK(tp_conn_pending(cl));
    struct pollfd p = {fds[1], POLLIN, 0};
    CHECK(poll(&p, 1, 0) == 0);
    CHECK(tp_conn_read(cl, buf, sizeof buf, NULL) == 16384 - 1000);
    unpair(cl, sv, fds);
}

TEST(write_backpressure_and_flush)
{
    char err[256];
    tp_ctx_options o;
    tp_ctx_options_init(&o);
    o.write_buffer = 100000;
    o.cert = tp_ctx_cert_pem(sctx);
    tp_ctx *small = tp_ctx_new(TP_SERVER, &o, err, sizeof err);
    CHECK_MSG(small == NULL, "a cert without its key must fail");
    CHECK_MSG(strstr(err, "private key") != NULL, "%s", err);
    tp_ctx_options_init(&o);
    o.write_buffer = 100000;
    small = tp_ctx_new(TP_SERVER, &o, err, sizeof err);
    CHECK(small != NULL);
    tp_ctx_options_init(&o);
    o.ca = tp_ctx_cert_pem(small);
    tp_ctx *cl_ctx = tp_ctx_new(TP_CLIENT, &o, err, sizeof err);
    CHECK(cl_ctx);
    int fds[2];
    CHECK(h_socketpair(fds) == 0);
    tp_conn *sv = tp_conn_new(small, fds[0], NULL, err, sizeof err);
    tp_conn *cl = tp_conn_new(cl_ctx, fds[1], "127.0.0.1", err, sizeof err);
    tp_ctx_free(small); /* connections hold references */
    tp_ctx_free(cl_ctx);
    CHECK(h_handshake_both(cl, sv) == 0);
    static char big[1 << 20];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (char)(i * 7 + i / 251);
    size_t sent = 0;
    ssize_t n;
    while ((n = tp_conn_write(sv, big + sent, sizeof big - sent, NULL)) > 0)
        sent += (size_t)n;
    CHECK(n == 0);
    CHECK(sent < sizeof big);
    CHECK(tp_conn_buffered(sv) == 100000);
    CHECK(tp_conn_flush(sv, NULL) == TP_WANT_WRITE);
    CHECK(tp_conn_events(sv) == POLLOUT);
    /* Now the peer reads; everything arrives in order. */
    static char got[1 << 20];
    size_t have = 0;
    while (have < sizeof big) {
        if (sent < sizeof big) {
            n = tp_conn_write(sv, big + sent, sizeof big - sent, NULL);
            CHECK(n >= 0);
            sent += (size_t)n;
        } else {
            CHECK(tp_conn_flush(sv, NULL) != TP_ERROR);
        }
        n = tp_conn_read(cl, got + have, sizeof got - have, NULL);
        if (n > 0)
            have += (size_t)n;
        else
            CHECK(n == TP_WANT_READ);
    }
    CHECK(memcmp(big, got, sizeof big) == 0);
    tp_conn_free(cl);
    tp_conn_free(sv);
    close(fds[0]);
    close(fds[1]);
}

TEST(clean_close_and_half_close)
{
    tp_conn *cl, *sv;
    int fds[2];
    CHECK(pair(&cl, &sv, fds) == 0);
    CHECK(tp_conn_write(cl, "last", 4, NULL) == 4);
    CHECK(tp_conn_shutdown(cl, NULL) == TP_DONE);
    CHECK(tp_conn_write(cl, "x", 1, NULL) == TP_ERROR);
    CHECK(tp_conn_errkind(cl) == TP_E_CLOSED);
    char buf[100];
    tp_wait w = {.timeout_ms = 2000};
    CHECK(tp_conn_read(sv, buf, sizeof buf, &w) == 4);
    CHECK(tp_conn_read(sv, buf, sizeof buf, &w) == 0);
    CHECK(tp_conn_peer_closed(sv));
    /* The other direction still works after the peer's close_notify. */
    CHECK(tp_conn_write(sv, "answer", 6, &w) == 6);
    CHECK(tp_conn_shutdown(sv, &w) == TP_DONE);
    CHECK(tp_conn_read(cl, buf, sizeof buf, &w) == 6);
    CHECK(memcmp(buf, "answer", 6) == 0);
    CHECK(tp_conn_read(cl, buf, sizeof buf, &w) == 0);
    unpair(cl, sv, fds);
}

TEST(truncation_is_an_error_after_the_data)
{
    tp_conn *cl, *sv;
    int fds[2];
    CHECK(pair(&cl, &sv, fds) == 0);
    CHECK(tp_conn_write(sv, "partial", 7, NULL) == 7);
    shutdown(fds[0], SHUT_WR); /* FIN without close_notify */
    char buf[100];
    tp_wait w = {.timeout_ms = 2000};
    CHECK(tp_conn_read(cl, buf, sizeof buf, &w) == 7);
    CHECK(tp_conn_read(cl, buf, sizeof buf, &w) == TP_ERROR);
    CHECK(tp_conn_errkind(cl) == TP_E_TRUNCATED);
    CHECK_MSG(strstr(tp_conn_error(cl), "close_notify"), "%s",
              tp_conn_error(cl));
    unpair(cl, sv, fds);
}

TEST(not_tls_peer_is_named)
{
    char err[256];
    int fds[2];
    CHECK(h_socketpair(fds) == 0);
    tp_conn *sv = tp_conn_new(sctx, fds[0], NULL, err, sizeof err);
    const char req[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK(write(fds[1], req, sizeof req - 1) == sizeof req - 1);
    tp_wait w = {.timeout_ms = 2000};
    CHECK(tp_conn_handshake(sv, &w) == TP_ERROR);
    CHECK_MSG(strstr(tp_conn_error(sv), "http request"), "%s",
              tp_conn_error(sv));
    CHECK(tp_conn_errkind(sv) == TP_E_TLS);
    tp_conn_free(sv);
    close(fds[0]);
    close(fds[1]);
}

TEST(verification_failures_are_explained)
{
    char err[256];
    tp_ctx_options o;
    tp_ctx_options_init(&o);
    tp_ctx *untrusting = tp_ctx_new(TP_CLIENT, &o, err, sizeof err);
    CHECK(untrusting);
    int fds[2];
    CHECK(h_socketpair(fds) == 0);
    tp_conn *sv = tp_conn_new(sctx, fds[0], NULL, err, sizeof err);
    tp_conn *cl = tp_conn_new(untrusting, fds[1], "localhost", err, sizeof err);
    CHECK(h_handshake_both(cl, sv) == TP_ERROR);
    CHECK_MSG(strstr(tp_conn_error(cl),
                     "certificate verify failed: self-signed certificate"),
              "%s", tp_conn_error(cl));
    unpair(cl, sv, fds);
    CHECK(h_socketpair(fds) == 0);
    sv = tp_conn_new(sctx, fds[0], NULL, err, sizeof err);
    cl = tp_conn_new(cctx, fds[1], "example.org", err, sizeof err);
    CHECK(h_handshake_both(cl, sv) == TP_ERROR);
    CHECK_MSG(strstr(tp_conn_error(cl), "hostname mismatch") &&
                  strstr(tp_conn_error(cl), "example.org"),
              "%s", tp_conn_error(cl));
    unpair(cl, sv, fds);
    CHECK(h_socketpair(fds) == 0);
    CHECK(tp_conn_new(untrusting, fds[0], NULL, err, sizeof err) == NULL);
    CHECK_MSG(strstr(err, "server_hostname"), "%s", err);
    close(fds[0]);
    close(fds[1]);
    tp_ctx_free(untrusting);
}

TEST(bad_arguments)
{
    char err[256];
    CHECK(tp_conn_new(sctx, -1, NULL, err, sizeof err) == NULL);
    CHECK(tp_conn_new(sctx, 1000, NULL, err, sizeof err) == NULL);
    CHECK_MSG(strstr(err, "not open"), "%s", err);
    int p[2];
    CHECK(pipe(p) == 0);
    CHECK(tp_conn_new(sctx, p[0], NULL, err, sizeof err) == NULL);
    CHECK_MSG(strstr(err, "not a socket"), "%s", err);
    close(p[0]);
    close(p[1]);
    tp_ctx_options o;
    tp_ctx_options_init(&o);
    o.cert = "/nonexistent/cert.pem";
    CHECK(tp_ctx_new(TP_SERVER, &o, err, sizeof err) == NULL);
    CHECK_MSG(strstr(err, "/nonexistent/cert.pem") &&
                  strstr(err, "No such file"),
              "%s", err);
    tp_ctx_options_init(&o);
    o.alpn = "h2,,x";
    CHECK(tp_ctx_new(TP_SERVER, &o, err, sizeof err) == NULL);
    tp_conn_free(NULL);
    tp_ctx_free(NULL);
}

TEST(alpn_negotiated)
{
    char err[256];
    tp_ctx_options o;
    tp_ctx_options_init(&o);
    o.alpn = "h2,http/1.1";
    tp_ctx *s = tp_ctx_new(TP_SERVER, &o, err, sizeof err);
    tp_ctx_options_init(&o);
    o.alpn = "http/1.1";
    o.verify = 0;
    tp_ctx *c = tp_ctx_new(TP_CLIENT, &o, err, sizeof err);
    CHECK(s && c);
    int fds[2];
    CHECK(h_socketpair(fds) == 0);
    tp_conn *sv = tp_conn_new(s, fds[0], NULL, err, sizeof err);
    tp_conn *cl = tp_conn_new(c, fds[1], NULL, err, sizeof err);
    CHECK(h_handshake_both(cl, sv) == 0);
    CHECK(strcmp(tp_conn_alpn(cl), "http/1.1") == 0);
    CHECK(strcmp(tp_conn_alpn(sv), "http/1.1") == 0);
    unpair(cl, sv, fds);
    tp_ctx_free(s);
    tp_ctx_free(c);
}

TEST(timeout_on_silent_peer)
{
    int fds[2];
    char err[256];
    CHECK(h_socketpair(fds) == 0);
    tp_conn *cl = tp_conn_new(cctx, fds[1], "localhost", err, sizeof err);
    tp_wait w = {.timeout_ms = 200};
    CHECK(tp_conn_handshake(cl, &w) == TP_TIMEOUT);
    CHECK(tp_conn_errkind(cl) == TP_E_TIMEOUT);
    tp_conn_free(cl);
    close(fds[0]);
    close(fds[1]);
}

TEST(reset_is_distinct)
{
    int cfd, sfd;
    char err[256];
    CHECK(h_tcp_pair(&cfd, &sfd) == 0);
    tp_conn *sv = tp_conn_new(sctx, sfd, NULL, err, sizeof err);
    tp_conn *cl = tp_conn_new(cctx, cfd, "localhost", err, sizeof err);
    CHECK(h_handshake_both(cl, sv) == 0);
    char buf[64];
    CHECK(tp_conn_read(sv, buf, sizeof buf, NULL) == TP_WANT_READ);
    struct linger lg = {1, 0};
    setsockopt(cfd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    tp_conn_free(cl);
    close(cfd); /* RST */
    tp_wait w = {.timeout_ms = 2000};
    CHECK(tp_conn_read(sv, buf, sizeof buf, &w) == TP_ERROR);
    CHECK_MSG(tp_conn_errkind(sv) == TP_E_RESET, "%s", tp_conn_error(sv));
    tp_conn_free(sv);
    close(sfd);
}

int main(void)
{
    signal(SIGPIPE, SIG_DFL); /* the core must never need SIGPIPE ignored */
    h_contexts(&sctx, &cctx);
    RUN(handshake_and_info);
    RUN(drain_returns_all_records_at_once);
    RUN(write_backpressure_and_flush);
    RUN(clean_close_and_half_close);
    RUN(truncation_is_an_error_after_the_data);
    RUN(not_tls_peer_is_named);
    RUN(verification_failures_are_explained);
    RUN(bad_arguments);
    RUN(alpn_negotiated);
    RUN(timeout_on_silent_peer);
    RUN(reset_is_distinct);
    tp_ctx_free(sctx);
    tp_ctx_free(cctx);
    return DONE_TESTS();
}
