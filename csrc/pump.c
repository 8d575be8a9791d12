/*
 * pump.c -- tp_pump: forwards plaintext both ways between a tp_conn and a
 * target (one socket fd, or a read fd and a write fd).
 *
 * One pass does, in this order: flush the TLS write buffer, move target
 * output into the TLS write buffer (read() straight into the connection's
 * buffer: tp_conn_write_space/commit), move TLS input to the target through
 * the pump's own buffer. A step repeats passes until none makes progress,
 * so that every direction has reported what it waits for; only then does
 * the caller poll. Both buffers are bounded (the connection's write_buffer
 * limit, TP__PUMP_BUF here): a side that does not drain stops the other
 * side from being read (backpressure), memory never grows with the data.
 *
 * Ends:
 *   - TLS close_notify: the target's write side is shut down (SHUT_WR; a
 *     pipe handed over with tp_pump_set_close_target_write() is closed)
 *     once everything read is delivered; the target's output keeps
 *     flowing until its EOF; then everything is flushed and close_notify is
 *     sent.
 *   - target EOF first (a child that exits early): everything is flushed,
 *     close_notify is sent, the TLS socket is shut down for writing and the
 *     client's input is read and discarded for TP__PUMP_LINGER_MS or until
 *     its close_notify/EOF, because closing a socket with unread input makes
 *     the kernel send a RST that destroys the answer still in flight.
 *   - truncation, RST or a TLS error on the TLS side, an error on the
 *     target's side: the pump ends at once with that reason and shuts the
 *     target socket down both ways, so a child sees EOF on its stdin and
 *     EPIPE on its stdout. A RST is noticed even while the TLS input is
 *     held back by backpressure (the fd is polled for POLLERR).
 *   - the idle timeout: the same for the target; the client still gets a
 *     close_notify if it goes out within TP__PUMP_CLOSE_GRACE_MS.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* TLS -> target buffer: four full records. */
#define TP__PUMP_BUF ((size_t)64 * 1024)
/* Compact the buffer when less than a record of room is left at its end. */
#define TP__PUMP_RECORD ((size_t)16 * 1024)
/* After the command exits, how long its output may stay open (held by a
 * process it left behind) before it counts as complete. */
#define TP__PUMP_CHILD_GRACE_MS 1000
/* Reading and discarding the client's input after our close_notify. */
#define TP__PUMP_LINGER_MS 2000
/* Sending close_notify after the idle timeout. */
#define TP__PUMP_CLOSE_GRACE_MS 1000
/* One step yields after this many bytes or passes so that an event loop
 * with other work (and tp_pump_run's interrupt check) gets a turn. */
#define TP__PUMP_STEP_BYTES ((uint64_t)4 * 1024 * 1024)
#define TP__PUMP_STEP_PASSES 64

enum out_state {
    OUT_FORWARD, /* reading the target into TLS */
    OUT_CLOSING, /* target EOF: flushing, then close_notify */
    OUT_DONE     /* close_notify sent, or the direction failed */
};

struct tp_pump {
    tp_conn *c;
    int tls_fd;
    int rfd, wfd;
    int r_sock, w_sock;   /* is a socket: send()/shutdown() apply */
    int r_unix;           /* AF_UNIX: ECONNRESET on read is a plain EOF */
    int close_wfd;        /* the write end was handed over (pipes) */
    int read_after_close; /* target EOF first: keep forwarding TLS input */

    char *buf; /* TLS -> target: buf[bstart .. bend) */
    size_t bstart, bend;

    /* What each blocked operation of the last pass waits for. */
    short hs_wait, tls_rd_wait, tls_wr_wait, tgt_rd_wait, tgt_wr_wait;

    unsigned tls_in_open : 1;  /* reading TLS */
    unsigned tgt_in_open : 1;  /* reading the target */
    unsigned tgt_out_open : 1; /* writing to the target */
    unsigned tgt_out_shut : 1; /* its write side is shut (or closed) */
    unsigned discard : 1;      /* TLS input is read and dropped */
    unsigned more : 1;         /* the step yielded with work left */
    unsigned watch_tls : 1;    /* poll the idle TLS fd for errors only */
    unsigned done : 1;
    enum out_state out;

    tp_child *child;          /* the command behind the target, if known */
    int64_t child_deadline;   /* it exited: its output ends by then */

    int idle_ms;
    int64_t t0, last_activity, linger_deadline;
    uint64_t progress; /* anything moved or changed state */
    uint64_t moved;    /* bytes, for the step budget */
    tp_pump_stats st;
};

const char *tp_end_name(tp_end e)
{
    static const char *const names[] = {
        "none", "clean", "truncated", "reset", "timeout", "error", "aborted"};
    return (unsigned)e < sizeof names / sizeof names[0] ? names[e] : "unknown";
}

static int is_unix_socket(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    return getsockname(fd, (struct sockaddr *)&ss, &len) == 0 &&
           ss.ss_family == AF_UNIX;
}

tp_pump *tp_pump_new(tp_conn *c, int target_rfd, int target_wfd, char *errbuf,
                     size_t errlen)
{
    char why[TP__ERRLEN];
    if (!c) {
        tp__errbuf(errbuf, errlen, "pump: no connection");
        return NULL;
    }
    if (tp__check_fd(target_rfd, why, sizeof why) < 0 ||
        tp__check_fd(target_wfd, why, sizeof why) < 0) {
        tp__errbuf(errbuf, errlen, "pump: target %s", why);
        return NULL;
    }
    if (tp_conn_closed(c)) {
        tp__errbuf(errbuf, errlen,
                   "pump: the TLS connection is closed for writing");
        return NULL;
    }
    if (tp__set_nonblock(target_rfd) < 0 || tp__set_nonblock(target_wfd) < 0) {
        tp__errbuf(errbuf, errlen,
                   "pump: cannot make the target non-blocking: %s",
                   strerror(errno));
        return NULL;
    }
    tp_pump *p = calloc(1, sizeof *p);
    if (!p) {
        tp__errbuf(errbuf, errlen, "pump: out of memory");
        return NULL;
    }
    p->c = c;
    p->tls_fd = tp_conn_fd(c);
    p->rfd = target_rfd;
    p->wfd = target_wfd;
    p->r_sock = tp__is_socket(target_rfd);
    p->w_sock = tp__is_socket(target_wfd);
    p->r_unix = p->r_sock && is_unix_socket(target_rfd);
    p->tls_in_open = p->tgt_in_open = p->tgt_out_open = 1;
    p->out = OUT_FORWARD;
    p->t0 = p->last_activity = tp__now_ms();
    return p;
}

void tp_pump_free(tp_pump *p)
{
    if (!p)
        return;
    if (p->close_wfd && p->wfd >= 0)
        close(p->wfd);
    free(p->buf);
    free(p);
}

void tp_pump_set_idle_timeout(tp_pump *p, int ms)
{
    p->idle_ms = ms > 0 ? ms : 0;
    p->last_activity = tp__now_ms();
}

void tp_pump_set_close_target_write(tp_pump *p, int yes)
{
    /* Only meaningful for a separate write fd: a shared socket is shut
     * down, never closed. */
    p->close_wfd = yes && p->wfd != p->rfd;
}

void tp_pump_watch_child(tp_pump *p, tp_child *ch)
{
    p->child = ch;
}

void tp_pump_set_read_after_close(tp_pump *p, int yes)
{
    p->read_after_close = yes != 0;
}

int tp_pump_target_write_done(const tp_pump *p)
{
    return p->tgt_out_shut;
}

int tp_pump_done(const tp_pump *p)
{
    return p->done;
}

const tp_pump_stats *tp_pump_stats_get(const tp_pump *p)
{
    /* seconds is final once done; meanwhile it is brought up to date. */
    if (!p->done)
        ((tp_pump *)p)->st.seconds = (tp__now_ms() - p->t0) / 1000.0;
    return &p->st;
}

/* ---- ends ------------------------------------------------------------ */

static void finish(tp_pump *p)
{
    p->done = 1;
    p->st.seconds = (tp__now_ms() - p->t0) / 1000.0;
    p->hs_wait = p->tls_rd_wait = p->tls_wr_wait = 0;
    p->tgt_rd_wait = p->tgt_wr_wait = 0;
}

/* Passes the end of the TLS input on to the target. */
static void shut_target_write(tp_pump *p)
{
    if (p->tgt_out_shut)
        return;
    if (p->w_sock)
        shutdown(p->wfd, SHUT_WR);
    else if (p->close_wfd) {
        close(p->wfd);
        p->wfd = -1;
    }
    p->tgt_out_shut = 1;
    p->tgt_out_open = 0;
    p->progress++;
}

/* Ends the pump because one side failed: best-effort delivery of what is
 * buffered for the target, then the target is told both ways (EOF on its
 * input, EPIPE on its output) so a child does not hang. */
static void abort_both(tp_pump *p, tp_end tls_end, tp_end target_end)
{
    if (p->tgt_out_open && p->bend > p->bstart) {
        ssize_t n = tp__write_nosig(p->wfd, p->buf + p->bstart,
                                    p->bend - p->bstart, p->w_sock);
        if (n > 0) {
            p->st.to_target += (uint64_t)n;
            p->bstart += (size_t)n;
        }
    }
    p->st.discarded += p->bend - p->bstart;
    p->bstart = p->bend = 0;
    if (p->st.tls_end == TP_END_NONE)
        p->st.tls_end = tls_end;
    if (p->st.target_end == TP_END_NONE)
        p->st.target_end = target_end;
    p->tls_in_open = p->tgt_in_open = 0;
    p->out = OUT_DONE;
    shut_target_write(p);
    if (p->r_sock)
        shutdown(p->rfd, SHUT_RD);
    finish(p);
}

tp_end tp__end_of_errkind(tp_errkind k)
{
    switch (k) {
    case TP_E_TRUNCATED:
        return TP_END_TRUNCATED;
    case TP_E_RESET:
        return TP_END_RESET;
    case TP_E_TIMEOUT:
        return TP_END_TIMEOUT;
    default:
        return TP_END_ERROR;
    }
}

/* A TP_ERROR from the connection, reading or writing: the TLS side is dead
 * (OpenSSL marks the connection failed), so both directions end. */
static void tls_failed(tp_pump *p)
{
    tp__strlcpy(p->st.tls_error,
                tp_conn_errkind(p->c) != TP_E_NONE
                    ? tp_conn_error(p->c)
                    : "pump: the connection refuses writes",
                sizeof p->st.tls_error);
    abort_both(p, tp__end_of_errkind(tp_conn_errkind(p->c)), TP_END_ABORTED);
}

static void target_failed(tp_pump *p, tp_end end, const char *op, int e)
{
    snprintf(p->st.target_error, sizeof p->st.target_error, "%s: %s", op,
             strerror(e));
    /* No close_notify: the client must not take a failed backend's partial
     * answer for a complete one. What is buffered is still offered. */
    p->st.target_end = end;
    tp_conn_flush(p->c, NULL);
    abort_both(p, TP_END_ABORTED, end);
}

static short want_events(int r)
{
    return r == TP_WANT_READ ? POLLIN : r == TP_WANT_WRITE ? POLLOUT : 0;
}

/* Our close_notify is out. If the client is still sending, linger. */
static void close_sent(tp_pump *p)
{
    p->out = OUT_DONE;
    p->progress++;
    if (!p->tls_in_open)
        return;
    shutdown(p->tls_fd, SHUT_WR);
    /* A client: its input ended, the peer's answer is still wanted. */
    if (p->read_after_close)
        return;
    p->discard = 1;
    p->linger_deadline = tp__now_ms() + TP__PUMP_LINGER_MS;
    /* The target's output is over; its input is not wanted any more. */
    p->st.discarded += p->bend - p->bstart;
    p->bstart = p->bend = 0;
    shut_target_write(p);
}

/* ---- one pass -------------------------------------------------------- */

static void moved(tp_pump *p, size_t n)
{
    p->progress++;
    p->moved += n;
    p->last_activity = tp__now_ms();
}

/* 1: flush the TLS write buffer. Returns -1 if the pump ended. */
static int pass_flush(tp_pump *p)
{
    if (p->out == OUT_DONE)
        return 0;
    size_t before = tp_conn_buffered(p->c);
    if (before == 0)
        return 0;
    int r = tp_conn_flush(p->c, NULL);
    size_t after = tp_conn_buffered(p->c);
    if (after < before)
        moved(p, before - after);
    if (r == TP_ERROR) {
        tls_failed(p);
        return -1;
    }
    p->tls_wr_wait = want_events(r);
    return 0;
}

/* 2: target -> TLS. */
static int pass_to_tls(tp_pump *p)
{
    if (p->tgt_in_open) {
        size_t room = 0;
        char *space = tp_conn_write_space(p->c, &room);
        if (space && room > 0) {
            ssize_t n = read(p->rfd, space, room);
            if (n > 0) {
                tp_conn_write_commit(p->c, (size_t)n);
                p->st.to_tls += (uint64_t)n;
                moved(p, (size_t)n);
            } else if (n == 0 || (errno == ECONNRESET && p->r_unix)) {
                /* EOF. On a socketpair ECONNRESET only says the child
                 * exited without reading all its input: its output is
                 * complete. */
                p->st.target_end = TP_END_CLEAN;
                p->tgt_in_open = 0;
                p->out = OUT_CLOSING;
                p->progress++;
            } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
                p->tgt_rd_wait = POLLIN;
            } else if (errno == EINTR) {
                p->progress++;
            } else {
                int e = errno;
                target_failed(p, e == ECONNRESET ? TP_END_RESET : TP_END_ERROR,
                              "read", e);
                return -1;
            }
        } else if (!p->tls_wr_wait) {
            /* No room although the flush did not block: the connection
             * refuses writes (it failed or was closed under us). */
            tls_failed(p);
            return -1;
        }
    }
    if (p->out == OUT_CLOSING) {
        int r = tp_conn_shutdown(p->c, NULL); /* flushes first */
        if (r == TP_DONE) {
            close_sent(p);
        } else if (r == TP_ERROR) {
            tls_failed(p);
            return -1;
        } else {
            p->tls_wr_wait = want_events(r);
        }
    }
    return 0;
}

/* 3: TLS -> target. */
static int pass_to_target(tp_pump *p)
{
    if (p->bend > p->bstart && p->tgt_out_open) {
        ssize_t n = tp__write_nosig(p->wfd, p->buf + p->bstart,
                                    p->bend - p->bstart, p->w_sock);
        if (n > 0) {
            p->bstart += (size_t)n;
            p->st.to_target += (uint64_t)n;
            moved(p, (size_t)n);
            if (p->bstart == p->bend)
                p->bstart = p->bend = 0;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            p->tgt_wr_wait = POLLOUT;
        } else if (n < 0 && errno == EINTR) {
            p->progress++;
        } else {
            /* EPIPE, ECONNRESET: the target stopped reading (a child
             * that exited early). Its output may still come: keep that
             * direction, drop what was meant for it. */
            int e = n < 0 ? errno : EPIPE;
            if (e != EPIPE && e != ECONNRESET && !p->st.target_error[0])
                snprintf(p->st.target_error, sizeof p->st.target_error,
                         "write: %s", strerror(e));
            p->tgt_out_open = 0;
            p->discard = 1;
            p->st.discarded += p->bend - p->bstart;
            p->bstart = p->bend = 0;
            p->progress++;
        }
    }
    if (p->tls_in_open) {
        if (p->discard) {
            p->bstart = p->bend = 0;
        } else if (p->bstart > 0 && TP__PUMP_BUF - p->bend < TP__PUMP_RECORD) {
            memmove(p->buf, p->buf + p->bstart, p->bend - p->bstart);
            p->bend -= p->bstart;
            p->bstart = 0;
        }
        /* Allocated on demand and freed when a step ends empty, so an
         * idle session holds no buffer. */
        if (!p->buf && !(p->buf = malloc(TP__PUMP_BUF))) {
            tp__strlcpy(p->st.tls_error, "pump: out of memory",
                        sizeof p->st.tls_error);
            abort_both(p, TP_END_ERROR, TP_END_ABORTED);
            return -1;
        }
        size_t room = TP__PUMP_BUF - p->bend;
        if (room > 0) {
            ssize_t n = tp_conn_read(p->c, p->buf + p->bend, room, NULL);
            if (n > 0) {
                if (p->discard)
                    p->st.discarded += (uint64_t)n;
                else
                    p->bend += (size_t)n;
                moved(p, (size_t)n);
            } else if (n == 0) {
                p->st.tls_end = TP_END_CLEAN;
                p->tls_in_open = 0;
                p->progress++;
            } else if (n == TP_ERROR) {
                if (p->out == OUT_DONE && p->discard &&
                    p->st.target_end == TP_END_CLEAN) {
                    /* Lingering after a complete answer: a client that
                     * closes without close_notify (or resets) only ends
                     * the linger. The reason is still recorded. */
                    p->st.tls_end = tp__end_of_errkind(tp_conn_errkind(p->c));
                    tp__strlcpy(p->st.tls_error, tp_conn_error(p->c),
                                sizeof p->st.tls_error);
                    p->tls_in_open = 0;
                    p->progress++;
                } else {
                    tls_failed(p);
                    return -1;
                }
            } else {
                p->tls_rd_wait = want_events((int)n);
            }
        }
    }
    /* Pass the half-close on once all TLS input is delivered. */
    if (!p->tls_in_open && !p->tgt_out_shut &&
        (p->bend == p->bstart || !p->tgt_out_open))
        shut_target_write(p);
    return 0;
}

static void pass(tp_pump *p)
{
    p->hs_wait = p->tls_rd_wait = p->tls_wr_wait = 0;
    p->tgt_rd_wait = p->tgt_wr_wait = 0;
    if (!tp_conn_handshake_done(p->c)) {
        int r = tp_conn_handshake(p->c, NULL);
        if (r == TP_DONE) {
            p->progress++;
            p->last_activity = tp__now_ms(); /* idle counts from here */
        } else if (r == TP_ERROR) {
            tls_failed(p);
        } else {
            p->hs_wait = want_events(r);
        }
        return;
    }
    if (pass_flush(p) < 0 || pass_to_tls(p) < 0 || pass_to_target(p) < 0)
        return;
    if (p->out == OUT_DONE && !p->tls_in_open && p->tgt_out_shut)
        finish(p);
}

/* ---- step / wants / run ---------------------------------------------- */

static int nothing_to_wait_for(const tp_pump *p)
{
    return !(p->hs_wait | p->tls_rd_wait | p->tls_wr_wait | p->tgt_rd_wait |
             p->tgt_wr_wait) &&
           !p->idle_ms && !p->linger_deadline;
}

/* The idle timeout: both directions end; the target is told both ways at
 * once, the client gets what is buffered and a close_notify if that can go
 * out within TP__PUMP_CLOSE_GRACE_MS (it may not be reading). */
static void idle_close(tp_pump *p)
{
    p->idle_ms = 0;
    if (p->st.tls_end == TP_END_NONE)
        p->st.tls_end = TP_END_TIMEOUT;
    if (p->st.target_end == TP_END_NONE)
        p->st.target_end = TP_END_TIMEOUT;
    p->tls_in_open = p->tgt_in_open = 0;
    p->st.discarded += p->bend - p->bstart;
    p->bstart = p->bend = 0;
    shut_target_write(p);
    if (p->r_sock)
        shutdown(p->rfd, SHUT_RD);
    if (p->out != OUT_DONE && tp_conn_handshake_done(p->c)) {
        p->out = OUT_CLOSING;
        p->linger_deadline = tp__now_ms() + TP__PUMP_CLOSE_GRACE_MS;
        tp_pump_step(p);
    } else {
        finish(p);
    }
}

/*
 * The TLS side is idle (its input held back because the target does not
 * drain, or only the target's answer is awaited): a client that resets the
 * connection meanwhile would go unnoticed until the buffered data is
 * consumed, possibly for minutes. So the fd is polled with no events, which
 * still reports POLLERR; a pending reset ends the pump now. Returns 0 if it
 * did. A plain POLLHUP (both directions shut, data still queued) is not
 * watched: poll() would report it at once, every time.
 */
static int watch_tls(tp_pump *p)
{
    struct pollfd q = {p->tls_fd, 0, 0};
    p->watch_tls = 0;
    if (poll(&q, 1, 0) < 0)
        return 1;
    if (q.revents & POLLERR) {
        int e = 0;
        socklen_t len = sizeof e;
        if (getsockopt(p->tls_fd, SOL_SOCKET, SO_ERROR, &e, &len) == 0 && e) {
            snprintf(p->st.tls_error, sizeof p->st.tls_error,
                     "pump: %s (while the TLS input was held back)",
                     e == ECONNRESET || e == EPIPE ? "connection reset by peer"
                                                   : strerror(e));
            abort_both(
                p, e == ECONNRESET || e == EPIPE ? TP_END_RESET : TP_END_ERROR,
                TP_END_ABORTED);
            return 0;
        }
    }
    p->watch_tls = !(q.revents & (POLLHUP | POLLERR | POLLNVAL));
    return 1;
}

/*
 * A command that exits while a process it left behind (`sleep 60 &`) still
 * holds its stdout open would keep the session open as long as that
 * process lives. Once the command has exited, what it wrote is already in
 * the socket buffer: after a short grace the target's output is complete.
 */
static void check_child(tp_pump *p)
{
    if (!p->child || !p->tgt_in_open)
        return;
    int64_t now = tp__now_ms();
    if (!p->child_deadline) {
        if (!tp__child_exited(p->child))
            return;
        p->child_deadline = now + TP__PUMP_CHILD_GRACE_MS;
        p->progress++;
    }
    if (now < p->child_deadline)
        return;
    p->st.target_end = TP_END_CLEAN;
    tp__strlcpy(p->st.target_error,
                "the command exited; a process it left behind still held "
                "its output open",
                sizeof p->st.target_error);
    p->tgt_in_open = 0;
    p->out = OUT_CLOSING;
    p->progress++;
}

int tp_pump_step(tp_pump *p)
{
    if (p->done)
        return 1;
    check_child(p);
    p->more = 0;
    p->moved = 0;
    for (int passes = 0; !p->done; passes++) {
        uint64_t before = p->progress;
        pass(p);
        if (p->done || p->progress == before)
            break;
        if (passes + 1 >= TP__PUMP_STEP_PASSES ||
            p->moved >= TP__PUMP_STEP_BYTES) {
            p->more = 1;
            break;
        }
    }
    if (p->done)
        return 1;
    int64_t now = tp__now_ms();
    if (p->linger_deadline && now >= p->linger_deadline) {
        /* The client kept sending after our close_notify, or our
         * close_notify after the idle timeout could not go out. */
        if (p->st.tls_end == TP_END_NONE)
            p->st.tls_end = TP_END_ABORTED;
        p->tls_in_open = 0;
        shut_target_write(p);
        finish(p);
        return 1;
    }
    if (p->idle_ms && now - p->last_activity >= p->idle_ms) {
        idle_close(p);
        return p->done;
    }
    if (!(p->hs_wait | p->tls_rd_wait | p->tls_wr_wait) && !watch_tls(p))
        return 1;
    if (!p->more && p->bstart == p->bend) {
        /* About to wait with nothing buffered: give the memory back. */
        free(p->buf);
        p->buf = NULL;
        p->bstart = p->bend = 0;
        tp_conn_release_buffers(p->c);
    }
    if (!p->more && nothing_to_wait_for(p)) {
        /* Cannot happen; ending beats hanging in poll() for ever. */
        tp__strlcpy(p->st.tls_error, "pump: nothing to wait for",
                    sizeof p->st.tls_error);
        abort_both(p, TP_END_ERROR, TP_END_ERROR);
        return 1;
    }
    return 0;
}

static int add_fd(struct pollfd *fds, int n, int max, int fd, short ev)
{
    if (!ev || fd < 0)
        return n;
    for (int i = 0; i < n; i++) {
        if (fds[i].fd == fd) {
            fds[i].events |= ev;
            return n;
        }
    }
    if (n >= max)
        return n;
    fds[n].fd = fd;
    fds[n].events = ev;
    fds[n].revents = 0;
    return n + 1;
}

int tp_pump_wants(tp_pump *p, struct pollfd *fds, int max, int *timeout_ms)
{
    int n = 0;
    int64_t t = -1;
    if (!p->done) {
        short tls_ev = p->hs_wait | p->tls_rd_wait | p->tls_wr_wait;
        if (tls_ev)
            n = add_fd(fds, n, max, p->tls_fd, tls_ev);
        else if (p->watch_tls && n < max)
            fds[n++] = (struct pollfd){p->tls_fd, 0, 0}; /* errors only */
        n = add_fd(fds, n, max, p->rfd, p->tgt_rd_wait);
        n = add_fd(fds, n, max, p->wfd, p->tgt_wr_wait);
        int64_t now = tp__now_ms();
        int watching_child = p->child && p->tgt_in_open;
        if (watching_child && !p->child_deadline &&
            tp__child_pidfd(p->child) >= 0)
            n = add_fd(fds, n, max, tp__child_pidfd(p->child), POLLIN);
        if (p->idle_ms)
            t = p->last_activity + p->idle_ms - now;
        if (watching_child) {
            /* Its exit deadline (0 once passed), or (without a pidfd) a
             * look now and then. */
            int64_t d = p->child_deadline
                            ? (p->child_deadline > now ? p->child_deadline - now
                                                       : 0)
                        : tp__child_pidfd(p->child) < 0 ? 250
                                                          : -1;
            if (d >= 0 && (t < 0 || d < t))
                t = d;
        }
        if (p->linger_deadline) {
            int64_t d = p->linger_deadline - now;
            if (t < 0 || d < t)
                t = d;
        }
        if (p->more || (t < 0 && (p->idle_ms || p->linger_deadline)))
            t = 0; /* more work now, or a deadline already passed */
    } else {
        t = 0;
    }
    if (timeout_ms)
        *timeout_ms = t > (int64_t)1 << 30 ? 1 << 30 : (int)t;
    return n;
}

static void abort_interrupted(tp_pump *p)
{
    if (p->st.tls_end == TP_END_NONE)
        p->st.tls_end = TP_END_ABORTED;
    if (p->st.target_end == TP_END_NONE)
        p->st.target_end = TP_END_ABORTED;
    finish(p);
}

int tp_pump_run(tp_pump *p, const tp_wait *w)
{
    int64_t deadline = tp__deadline(w);
    int check = w && w->interrupted;
    int64_t next_check = tp__now_ms() + TP_INTERRUPT_CHECK_MS;
    for (;;) {
        if (tp_pump_step(p))
            return TP_DONE;
        struct pollfd fds[4];
        int timeout;
        int n = tp_pump_wants(p, fds, 4, &timeout);
        int64_t now = tp__now_ms();
        if (check && now >= next_check) {
            /* A pump that never waits would never see a signal in
             * tp__poll(); ask regularly. */
            next_check = now + TP_INTERRUPT_CHECK_MS;
            if (w->interrupted(w->arg)) {
                abort_interrupted(p);
                return TP_INTERRUPTED;
            }
        }
        if (deadline > 0 && now >= deadline)
            return TP_TIMEOUT;
        int r = tp__poll(fds, n, w, deadline, timeout);
        if (r == TP_TIMEOUT)
            return TP_TIMEOUT; /* resumable: nothing was lost */
        if (r == TP_INTERRUPTED) {
            abort_interrupted(p);
            return TP_INTERRUPTED;
        }
        if (r == TP_ERROR) {
            snprintf(p->st.tls_error, sizeof p->st.tls_error, "poll: %s",
                     strerror(errno));
            abort_both(p, TP_END_ERROR, TP_END_ERROR);
            return TP_DONE;
        }
    }
}
