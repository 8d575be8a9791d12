/*
 * fuzz_handshake.c -- (a) the server handshake and record path: the fuzz
 * input is everything a client sends to a tlspump server over a socketpair
 * (written into one end, then FIN). The server runs handshake steps and
 * draining reads until an error or EOF. It must never crash, hang, leak,
 * deliver plaintext that no authenticated record carried, or report a clean
 * EOF without a handshake.
 *
 * Input layout: byte 0 selects how the server reads (read vs read_drain,
 * small or large buffers: different paths through conn.c); the rest is the
 * client's byte stream.
 */
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fz_contexts();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 150000) /* fits a socketpair's buffer */
        return -1;
    unsigned mode = data[0];
    data++, size--;
    int fds[2];
    FUZZ_ASSERT(fz_socketpair(fds) == 0, "socketpair");
    char err[256];
    tp_conn *sv = tp_conn_new(fz_sctx, fds[0], NULL, err, sizeof err);
    FUZZ_ASSERT(sv, "%s", err);
    size_t off = 0;
    while (off < size) {
        ssize_t n = send(fds[1], data + off, size - off, MSG_NOSIGNAL);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    if (mode & 1)
        shutdown(fds[1], SHUT_WR);
    static char buf[70000];
    size_t len = (mode & 2) ? 1 + (mode >> 4) : sizeof buf;
    int hs = TP_WANT_READ, ended = 0;
    for (int step = 0; step < 64 && !ended; step++) {
        ssize_t r;
        if (mode & 4) {
            const char *d;
            r = tp_conn_read_drain(sv, (mode & 2) ? len : 0, &d, NULL);
        } else if (mode & 8) {
            hs = tp_conn_handshake(sv, NULL);
            r = hs == TP_DONE ? tp_conn_read(sv, buf, len, NULL) : hs;
        } else {
            r = tp_conn_read(sv, buf, len, NULL); /* runs the handshake */
        }
        if (r > 0) {
            /* Plaintext only after a completed handshake: the client's
             * bytes would have to carry authenticated records, impossible
             * without the server's random keys. */
            FUZZ_ASSERT(tp_conn_handshake_done(sv), "data before handshake");
            continue;
        }
        if (r == 0) {
            FUZZ_ASSERT(tp_conn_handshake_done(sv) && tp_conn_peer_closed(sv),
                        "clean EOF without close_notify");
            ended = 1;
            break;
        }
        if (r == TP_ERROR) {
            FUZZ_ASSERT(tp_conn_error(sv)[0] != '\0', "error without text");
            FUZZ_ASSERT(tp_conn_errkind(sv) != TP_E_NONE, "error kind none");
            FUZZ_ASSERT(tp_conn_events(sv) == 0, "events after an error");
            ended = 1;
            break;
        }
        FUZZ_ASSERT(r == TP_WANT_READ || r == TP_WANT_WRITE, "r=%zd", r);
        FUZZ_ASSERT(tp_conn_events(sv) != 0, "WANT without events");
        if (!(mode & 1))
            break; /* no FIN: the next step would only wait */
        /* With FIN sent, nothing can block: a WANT_READ must come with
         * a readable socket (at worst the EOF), and the peer's buffer has
         * room for any reply a client's bytes can elicit. */
        FUZZ_ASSERT(r == TP_WANT_READ, "WANT_WRITE towards an empty peer");
        struct pollfd p = {fds[0], POLLIN, 0};
        FUZZ_ASSERT(poll(&p, 1, 0) == 1, "WANT_READ but not readable at EOF");
    }
    /* A finite input after FIN ends in an error (it cannot be a valid
     * session): no step may wait forever. */
    FUZZ_ASSERT(!(mode & 1) || ended, "no end after 64 steps at EOF");
    /* The accessors must be safe in any state. */
    tp_conn_version(sv);
    tp_conn_cipher(sv);
    tp_conn_alpn(sv);
    tp_conn_server_name(sv);
    tp_conn_verify_result(sv);
    tp_conn_peer_cert_pem(sv);
    tp_conn_peer_subject(sv);
    tp_conn_reason(sv);
    tp_conn_operation(sv);
    tp_conn_free(sv);
    close(fds[0]);
    close(fds[1]);
    return 0;
}
