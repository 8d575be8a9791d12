/*
 * fuzz_pump.c -- (b) the pump's state machine over a hostile transport.
 *
 *   peer (tlspump client) <-> T: socketpair <-> [tp_conn + tp_pump]
 *                                                 <-> G: socketpair <-> "child"
 *
 * The fuzz input is a program of (op, arg) pairs: the peer and the child
 * write and read pattern streams, close in either order, the pump steps;
 * and a fault tape that decides, call by call, what the pump's TLS socket
 * BIO does: a spurious WANT_READ/WANT_WRITE, a 1-byte or half-length
 * read/write, or (rarely) a fake EOF or reset.
 *
 * Invariants: each side receives a prefix of what the other sent, byte for
 * byte (no duplication, reordering or loss inside the stream); the pump's
 * counters match what was delivered; without a fake EOF/reset everything
 * arrives, both ends are clean and the pump finishes in bounded time.
 */
#include "fuzz_common.h"

static int tls_fd = -1;
static int faults_on;
static const uint8_t *tape;
static size_t tape_len, tape_pos;
static int fake_end; /* a fake EOF or reset was injected */

static int hook(int fd, int is_write, int len)
{
    if (fd != tls_fd || !faults_on || tape_pos >= tape_len)
        return len;
    unsigned v = tape[tape_pos++];
    switch (v % 8) {
    case 0:
    case 1:
        return -1; /* spurious would-block */
    case 2:
        return 1;
    case 3:
        return len > 1 ? len / 2 : len;
    case 4:
        if (v >= 0xF0) { /* rare: the transport dies */
            fake_end = 1;
            return 0;
        }
        return len;
    default:
        return len;
    }
}

typedef struct side {
    uint64_t sent, got;
    int closed, eof, err, shut_tried;
} side;

static void peer_read(tp_conn *peer, side *pe)
{
    static char in[65536];
    ssize_t r;
    while (!pe->eof && !pe->err &&
           (r = tp_conn_read(peer, in, sizeof in, NULL)) != TP_WANT_READ &&
           r != TP_WANT_WRITE) {
        if (r > 0) {
            FUZZ_ASSERT(fz_check(in, (size_t)r, pe->got, 0xB2),
                        "target->TLS stream broken at %llu",
                        (unsigned long long)pe->got);
            pe->got += (uint64_t)r;
        } else if (r == 0) {
            pe->eof = 1;
        } else {
            pe->err = 1;
        }
    }
}

static void child_read(int g, side *ch)
{
    static char in[65536];
    for (;;) {
        ssize_t r = recv(g, in, sizeof in, 0);
        if (r > 0) {
            FUZZ_ASSERT(fz_check(in, (size_t)r, ch->got, 0xA1),
                        "TLS->target stream broken at %llu",
                        (unsigned long long)ch->got);
            ch->got += (uint64_t)r;
            continue;
        }
        if (r == 0)
            ch->eof = 1;
        else if (errno != EAGAIN)
            ch->err = 1;
        return;
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fz_contexts();
    tp__fault_hook = hook;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 4096)
        return -1;
    int T[2], G[2];
    FUZZ_ASSERT(fz_socketpair(T) == 0 && fz_socketpair(G) == 0, "sp");
    char err[256];
    tp_conn *sv = tp_conn_new(fz_sctx, T[0], NULL, err, sizeof err);
    tp_conn *peer = tp_conn_new(fz_cctx, T[1], "localhost", err, sizeof err);
    FUZZ_ASSERT(sv && peer, "%s", err);
    tls_fd = T[0];
    faults_on = 0;
    fake_end = 0;
    tape = NULL;
    tape_len = tape_pos = 0;
    fz_in in = {data, size, 0};
    unsigned flags = fz_u8(&in);
    /* bit 0: the handshake runs inside the pump, under faults */
    if (!(flags & 1))
        FUZZ_ASSERT(fz_handshake_both(peer, sv) == 0, "handshake");
    tp_pump *p = tp_pump_new(sv, G[0], G[0], err, sizeof err);
    FUZZ_ASSERT(p, "%s", err);
    if (flags & 2)
        tp_pump_set_read_after_close(p, 1);
    faults_on = 1;

    side pe = {0}, ch = {0};
    static char buf[16384];
    /* The child closed its output before all TLS input was delivered: by
     * design the pump then discards the rest of the input (a child whose
     * output ended does not want more), unless read_after_close. */
    int child_shut_early = 0;
    while (fz_more(&in)) {
        unsigned op = fz_u8(&in) % 8, arg = fz_u8(&in);
        switch (op) {
        case 0: /* the peer sends */
            if (!pe.closed && !pe.err) {
                size_t n = (size_t)arg * 37 + 1;
                fz_fill(buf, n, pe.sent, 0xA1);
                ssize_t w = tp_conn_write(peer, buf, n, NULL);
                if (w > 0)
                    pe.sent += (uint64_t)w;
                else if (w == TP_ERROR &&
                         !(pe.shut_tried &&
                           tp_conn_errkind(peer) == TP_E_CLOSED))
                    pe.err = 1; /* (closed: its close_notify is pending) */
            }
            break;
        case 1: /* the child writes its output */
            if (!ch.closed) {
                size_t n = (size_t)arg * 37 + 1;
                fz_fill(buf, n, ch.sent, 0xB2);
                ssize_t w = send(G[1], buf, n, MSG_NOSIGNAL);
                if (w > 0)
                    ch.sent += (uint64_t)w;
            }
            break;
        case 2:
            for (unsigned i = 0; i <= arg % 4; i++)
                if (tp_pump_step(p))
                    break;
            break;
        case 3:
            if (tp_conn_buffered(peer))
                tp_conn_flush(peer, NULL);
            peer_read(peer, &pe);
            break;
        case 4:
            child_read(G[1], &ch);
            break;
        case 5: /* the peer's close_notify */
            if (!pe.closed) {
                pe.shut_tried = 1;
                if (tp_conn_shutdown(peer, NULL) == TP_DONE)
                    pe.closed = 1;
            }
            break;
        case 6: /* the child closes its output */
            if (!ch.closed) {
                shutdown(G[1], SHUT_WR);
                ch.closed = 1;
                child_shut_early = 1;
            }
            break;
        case 7: { /* a new fault tape */
            size_t n = arg % 64;
            if (in.off + n > in.n)
                n = in.n - in.off;
            tape = in.p + in.off;
            tape_len = n;
            tape_pos = 0;
            in.off += n;
            break;
        }
        }
    }

    /* The end: faults off (a fake EOF stays what it did), the peer and
     * then the child close, everything drains. */
    faults_on = 0;
    int64_t end = fz_now_ms() + 8000;
    for (int i = 0; i < 1000000 && fz_now_ms() < end; i++) {
        int done = tp_pump_step(p);
        if (!pe.closed && !pe.err && tp_conn_buffered(peer) == 0 &&
            tp_conn_shutdown(peer, NULL) == TP_DONE)
            pe.closed = 1;
        if (tp_conn_buffered(peer))
            tp_conn_flush(peer, NULL);
        peer_read(peer, &pe);
        child_read(G[1], &ch);
        if (ch.eof && !ch.closed) {
            shutdown(G[1], SHUT_WR);
            ch.closed = 1;
        }
        if (done && (pe.eof || pe.err || fake_end ||
                     tp_pump_stats_get(p)->tls_end != TP_END_CLEAN))
            break;
        struct pollfd fds[5];
        int t = -1;
        int n = tp_pump_wants(p, fds, 3, &t);
        /* the peer waits for what it needs; past its EOF only for
         * writing (a readable EOF would spin this loop) */
        short pev = tp_conn_events(peer);
        if (!pe.eof && !pe.err)
            pev |= POLLIN;
        fds[n++] = (struct pollfd){T[1], pev, 0};
        if (!ch.eof)
            fds[n++] = (struct pollfd){G[1], POLLIN, 0};
        poll(fds, (nfds_t)n, t < 0 || t > 50 ? 50 : t);
    }
    const tp_pump_stats *st = tp_pump_stats_get(p);
    if (getenv("FUZZ_PUMP_DEBUG"))
        fprintf(stderr,
                "pump: done %d tls_end %s target_end %s (%s|%s) to_target %llu "
                "to_tls %llu discarded %llu %.3f s; peer sent %llu got %llu "
                "closed %d eof %d err %d; child sent %llu got %llu eof %d; "
                "fake_end %d early %d; peer error: %s\n",
                tp_pump_done(p), tp_end_name(st->tls_end),
                tp_end_name(st->target_end), st->tls_error, st->target_error,
                (unsigned long long)st->to_target,
                (unsigned long long)st->to_tls,
                (unsigned long long)st->discarded, st->seconds,
                (unsigned long long)pe.sent, (unsigned long long)pe.got,
                pe.closed, pe.eof, pe.err, (unsigned long long)ch.sent,
                (unsigned long long)ch.got, ch.eof, fake_end, child_shut_early,
                tp_conn_error(peer));
    FUZZ_ASSERT(tp_pump_done(p),
                "the pump did not finish (tls_end %s, "
                "target_end %s, fake_end %d)",
                tp_end_name(st->tls_end), tp_end_name(st->target_end),
                fake_end);
    /* Counters agree with what arrived. */
    FUZZ_ASSERT(st->to_target == ch.got, "to_target %llu, child got %llu",
                (unsigned long long)st->to_target, (unsigned long long)ch.got);
    FUZZ_ASSERT(ch.got + st->discarded <= pe.sent,
                "child got %llu + discarded %llu > peer sent %llu",
                (unsigned long long)ch.got, (unsigned long long)st->discarded,
                (unsigned long long)pe.sent);
    FUZZ_ASSERT(pe.got <= st->to_tls && st->to_tls <= ch.sent,
                "peer got %llu, to_tls %llu, child sent %llu",
                (unsigned long long)pe.got, (unsigned long long)st->to_tls,
                (unsigned long long)ch.sent);
    if (!fake_end && !pe.err) {
        /* A reliable end: all of it, both ways, clean. */
        FUZZ_ASSERT(
            st->tls_end == TP_END_CLEAN && st->target_end == TP_END_CLEAN,
            "ends %s/%s: %s %s", tp_end_name(st->tls_end),
            tp_end_name(st->target_end), st->tls_error, st->target_error);
        FUZZ_ASSERT(pe.got == ch.sent && pe.eof, "peer got %llu of %llu",
                    (unsigned long long)pe.got, (unsigned long long)ch.sent);
        FUZZ_ASSERT(ch.got + st->discarded == pe.sent,
                    "child got %llu + discarded %llu != peer sent %llu",
                    (unsigned long long)ch.got,
                    (unsigned long long)st->discarded,
                    (unsigned long long)pe.sent);
        if (!child_shut_early || (flags & 2))
            FUZZ_ASSERT(st->discarded == 0 && ch.eof,
                        "discarded %llu without a reason",
                        (unsigned long long)st->discarded);
    }
    tp_pump_free(p);
    tp_conn_free(sv);
    tp_conn_free(peer);
    close(T[0]);
    close(T[1]);
    close(G[0]);
    close(G[1]);
    return 0;
}
