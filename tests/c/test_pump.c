/*
 * test_pump.c -- tp_pump between a server tp_conn and real children (cat,
 * wc -c, head -c, sh, yes), with the client tp_conn driven by hand in the
 * same poll loop (step API) or the pump in a thread (tp_pump_run).
 */
#include "harness.h"

#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>

static tp_ctx *sctx, *cctx;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The client's data: a pattern that depends on the offset, so an echo can
 * be checked byte by byte (and a shifted or lost chunk is caught). */
static inline unsigned char pat(uint64_t i)
{
    return (unsigned char)((i * 2654435761u) >> 13 ^ (i >> 16));
}

/* ---- the client, driven by hand ---------------------------------------- */

typedef struct client {
    tp_conn *c;
    int fd;
    uint64_t to_send;  /* bytes to send in all */
    uint64_t sent;     /* accepted by tp_conn_write */
    int notify_after;  /* close_notify once everything is sent */
    int stop_on_eof;   /* at the server's close_notify: stop, close_notify */
    int verify;        /* received bytes must be the pattern (echo) */
    uint64_t received; /* plaintext bytes read */
    uint64_t bad;      /* echo mismatches */
    char head[256];    /* the first bytes received */
    int eof;           /* 0, 1 clean close_notify, -1 error */
    tp_errkind err;    /* kind of that error */
    int want_shut;     /* we decided to send close_notify */
    int shut;          /* 1 sent, -1 failed */
} client;

static void client_init(client *cl, tp_conn *c, uint64_t to_send)
{
    memset(cl, 0, sizeof *cl);
    cl->c = c;
    cl->fd = tp_conn_fd(c);
    cl->to_send = to_send;
}

static void client_step(client *cl)
{
    static char buf[65536];
    if (!tp_conn_handshake_done(cl->c) && cl->eof == 0) {
        int r = tp_conn_handshake(cl->c, NULL);
        if (r == TP_ERROR) {
            cl->eof = -1;
            cl->err = tp_conn_errkind(cl->c);
        }
        if (r != TP_DONE)
            return;
    }
    if (!cl->want_shut && cl->eof == 0) {
        while (cl->sent < cl->to_send) {
            size_t len = sizeof buf;
            if (cl->to_send - cl->sent < len)
                len = (size_t)(cl->to_send - cl->sent);
            for (size_t i = 0; i < len; i++)
                buf[i] = (char)pat(cl->sent + i);
            ssize_t n = tp_conn_write(cl->c, buf, len, NULL);
            if (n < 0) {
                cl->eof = -1;
                cl->err = tp_conn_errkind(cl->c);
                break;
            }
            cl->sent += (uint64_t)n;
            if ((size_t)n < len)
                break;
        }
        if (cl->eof == 0 && tp_conn_buffered(cl->c) > 0)
            tp_conn_flush(cl->c, NULL);
        if (cl->sent == cl->to_send && cl->notify_after)
            cl->want_shut = 1;
    }
    while (cl->eof == 0) {
        ssize_t n = tp_conn_read(cl->c, buf, sizeof buf, NULL);
        if (n > 0) {
            size_t keep = sizeof cl->head - 1;
            if (cl->received < keep) {
                size_t k = keep - (size_t)cl->received;
                if (k > (size_t)n)
                    k = (size_t)n;
                memcpy(cl->head + cl->received, buf, k);
            }
            if (cl->verify)
                for (ssize_t i = 0; i < n; i++)
                    cl->bad += (unsigned char)buf[i] != pat(cl->received + i);
            cl->received += (uint64_t)n;
        } else if (n == 0) {
            cl->eof = 1;
        } else {
            if (n == TP_ERROR) {
                cl->eof = -1;
                cl->err = tp_conn_errkind(cl->c);
            }
            break;
        }
    }
    if (cl->eof == 1 && cl->stop_on_eof)
        cl->want_shut = 1;
    if (cl->want_shut && cl->shut == 0) {
        int r = tp_conn_shutdown(cl->c, NULL);
        if (r == TP_DONE)
            cl->shut = 1;
        else if (r == TP_ERROR)
            cl->shut = -1;
    }
}

static int client_done(const client *cl)
{
    return cl->eof != 0 && (!cl->want_shut || cl->shut != 0);
}

/*
 * Runs the pump (step API) and the client in one poll loop until both are
 * done or timeout_ms passes. Returns 0, or -1 on timeout. *stalls counts
 * polls that timed out although nothing asked for a timeout: a readiness
 * the step API failed to report.
 */
static int drive(tp_pump *p, client *cl, int timeout_ms, int *stalls)
{
    int64_t end = now_ms() + timeout_ms;
    *stalls = 0;
    for (;;) {
        int pdone = tp_pump_step(p);
        client_step(cl);
        if (pdone && client_done(cl))
            return 0;
        if (now_ms() > end)
            return -1;
        struct pollfd fds[4];
        int t = -1, n = 0;
        if (!pdone)
            n = tp_pump_wants(p, fds, 3, &t);
        short ev = client_done(cl) ? 0 : tp_conn_events(cl->c);
        if (ev) {
            fds[n].fd = cl->fd;
            fds[n].events = ev;
            fds[n].revents = 0;
            n++;
        }
        int slice = t >= 0 && t < 3000 ? t : 3000;
        int r = poll(fds, (nfds_t)n, slice);
        if (r == 0 && t < 0)
            (*stalls)++;
    }
}

/* Runs the pump and a sending client until the client has been unable to
 * send for 300 ms (every buffer on the way is full) or 10 s pass. */
static void fill_until_stalled(tp_pump *p, client *cl)
{
    int64_t end = now_ms() + 10000, last_change = now_ms();
    uint64_t last = 0;
    while (now_ms() < end && now_ms() - last_change < 300) {
        tp_pump_step(p);
        client_step(cl);
        if (cl->sent != last) {
            last = cl->sent;
            last_change = now_ms();
        }
        struct pollfd fds[4];
        int t, n = tp_pump_wants(p, fds, 3, &t);
        fds[n].fd = cl->fd;
        fds[n].events = tp_conn_events(cl->c);
        n++;
        poll(fds, (nfds_t)n, 50);
    }
}

/* A server and a client connection (not handshaken: the pump does the
 * server's handshake) over TCP or a socketpair. */
typedef struct session {
    int cfd, sfd;
    tp_conn *cl, *sv;
} session;

static int session_open(session *s, int tcp)
{
    char err[256];
    int fds[2];
    if (tcp) {
        if (h_tcp_pair(&s->cfd, &s->sfd) < 0)
            return -1;
    } else {
        if (h_socketpair(fds) < 0)
            return -1;
        s->cfd = fds[0];
        s->sfd = fds[1];
    }
    s->sv = tp_conn_new(sctx, s->sfd, NULL, err, sizeof err);
    s->cl = tp_conn_new(cctx, s->cfd, "localhost", err, sizeof err);
    if (!s->sv || !s->cl) {
        fprintf(stderr, "conn: %s\n", err);
        return -1;
    }
    return 0;
}

static void session_close(session *s)
{
    tp_conn_free(s->cl);
    tp_conn_free(s->sv);
    if (s->cfd >= 0)
        close(s->cfd);
    close(s->sfd);
}

/* `yes` complains on stderr when its output breaks: keep the log quiet. */
static tp_child *spawn_quiet(const char *prog)
{
    const char *argv[] = {prog, NULL};
    char err[256];
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    tp_child *ch = tp_spawn(argv, NULL, NULL, devnull, err, sizeof err);
    if (!ch)
        fprintf(stderr, "spawn: %s\n", err);
    close(devnull);
    return ch;
}

static tp_child *spawn_sh(const char *script)
{
    const char *argv[] = {"sh", "-c", script, NULL};
    char err[256];
    tp_child *ch = tp_spawn(argv, NULL, NULL, -1, err, sizeof err);
    if (!ch)
        fprintf(stderr, "spawn: %s\n", err);
    return ch;
}

static int child_exit(tp_child *ch, int timeout_ms)
{
    tp_wait w = {.timeout_ms = timeout_ms};
    int st;
    if (tp_child_wait(ch, &w, &st) != TP_DONE)
        return -1000;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
}

/* ---- tests ------------------------------------------------------------- */

TEST(cat_echo_16mib_step_api)
{
    session s;
    CHECK(session_open(&s, 0) == 0);
    tp_child *ch = spawn_sh("exec cat");
    CHECK(ch);
    char err[256];
    tp_pump *p =
        tp_pump_new(s.sv, tp_child_fd(ch), tp_child_fd(ch), err, sizeof err);
    CHECK_MSG(p, "%s", err);
    client cl;
    client_init(&cl, s.cl, (uint64_t)16 << 20);
    cl.notify_after = 1;
    cl.verify = 1;
    int stalls;
    CHECK(drive(p, &cl, 50000, &stalls) == 0);
    const tp_pump_stats *st = tp_pump_stats_get(p);
    CHECK(stalls == 0);
    CHECK(cl.eof == 1);
    CHECK_MSG(cl.received == (uint64_t)16 << 20, "received %llu",
              (unsigned long long)cl.received);
    CHECK(cl.bad == 0);
    CHECK(st->to_target == (uint64_t)16 << 20);
    CHECK(st->to_tls == (uint64_t)16 << 20);
    CHECK(st->discarded == 0);
    CHECK_MSG(st->tls_end == TP_END_CLEAN, "%s", tp_end_name(st->tls_end));
    CHECK(st->target_end == TP_END_CLEAN);
    CHECK(st->tls_error[0] == '\0' && st->target_error[0] == '\0');
    CHECK(st->seconds > 0);
    CHECK(child_exit(ch, 5000) == 0);
    tp_pump_free(p);
    tp_child_free(ch);
    session_close(&s);
}

typedef struct runner {
    tp_pump *p;
    int rc;
    int interrupt_after_ms; /* > 0: interrupted() fires after that */
    int64_t start;
    int calls;
} runner;

static int runner_interrupted(void *arg)
{
    runner *r = arg;
    r->calls++;
    return r->interrupt_after_ms > 0 &&
           now_ms() - r->start >= r->interrupt_after_ms;
}

static void *run_thread(void *arg)
{
    runner *r = arg;
    tp_wait w = {
        .timeout_ms = 30000, .interrupted = runner_interrupted, .arg = r};
    r->start = now_ms();
    r->rc = tp_pump_run(r->p, &w);
    return NULL;
}

/* Drives the client alone (the pump runs in a thread). */
static int drive_client(client *cl, int timeout_ms, const int *stop)
{
    int64_t end = now_ms() + timeout_ms;
    for (;;) {
        client_step(cl);
        if (client_done(cl) || (stop && *stop))
            return 0;
        if (now_ms() > end)
            return -1;
        struct pollfd pfd = {cl->fd, tp_conn_events(cl->c), 0};
        poll(&pfd, 1, 100);
    }
}

TEST(wc_half_close_thread_run)
{
    session s;
    CHECK(session_open(&s, 1) == 0);
    tp_child *ch = spawn_sh("exec wc -c");
    CHECK(ch);
    char err[256];
    runner r = {0};
    r.p = tp_pump_new(s.sv, tp_child_fd(ch), tp_child_fd(ch), err, sizeof err);
    CHECK_MSG(r.p, "%s", err);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, run_thread, &r) == 0);
    client cl;
    client_init(&cl, s.cl, 3000000);
    cl.notify_after = 1;
    int dr = drive_client(&cl, 30000, NULL);
    pthread_join(th, NULL);
    CHECK(dr == 0);
    CHECK(r.rc == TP_DONE);
    const tp_pump_stats *st = tp_pump_stats_get(r.p);
    CHECK(cl.eof == 1);
    CHECK_MSG(atol(cl.head) == 3000000, "got '%s'", cl.head);
    CHECK(st->to_target == 3000000);
    CHECK(st->to_tls == cl.received);
    CHECK(st->tls_end == TP_END_CLEAN && st->target_end == TP_END_CLEAN);
    CHECK(child_exit(ch, 5000) == 0);
    tp_pump_free(r.p);
    tp_child_free(ch);
    session_close(&s);
}

TEST(head_exits_early_while_client_sends_10mb)
{
    session s;
    CHECK(session_open(&s, 1) == 0);
    tp_child *ch = spawn_sh("exec head -c 10");
    CHECK(ch);
    char err[256];
    tp_pump *p =
        tp_pump_new(s.sv, tp_child_fd(ch), tp_child_fd(ch), err, sizeof err);
    CHECK_MSG(p, "%s", err);
    client cl;
    client_init(&cl, s.cl, 10000000);
    cl.stop_on_eof = 1;
    int stalls;
    CHECK(drive(p, &cl, 30000, &stalls) == 0);
    const tp_pump_stats *st = tp_pump_stats_get(p);
    CHECK(stalls == 0);
    CHECK_MSG(cl.eof == 1, "client eof %d kind %s", cl.eof,
              tp_errkind_name(cl.err));
    CHECK(cl.received == 10);
    for (int i = 0; i < 10; i++)
        CHECK((unsigned char)cl.head[i] == pat((uint64_t)i));
    CHECK(cl.shut == 1);
    CHECK(st->to_tls == 10);
    CHECK_MSG(st->target_end == TP_END_CLEAN, "%s %s",
              tp_end_name(st->target_end), st->target_error);
    CHECK_MSG(st->tls_end == TP_END_CLEAN, "%s %s", tp_end_name(st->tls_end),
              st->tls_error);
    CHECK(st->to_target + st->discarded <= cl.sent);
    CHECK(child_exit(ch, 5000) == 0);
    tp_pump_free(p);
    tp_child_free(ch);
    session_close(&s);
}

TEST(child_writes_64k_and_exits)
{
    session s;
    CHECK(session_open(&s, 0) == 0);
    tp_child *ch = spawn_sh("head -c 65536 /dev/zero; exit 0");
    CHECK(ch);
    /* Let it exit first: its output waits in the socket buffer. */
    CHECK(child_exit(ch, 5000) == 0);
    char err[256];
    tp_pump *p =
        tp_pump_new(s.sv, tp_child_fd(ch), tp_child_fd(ch), err, sizeof err);
    CHECK_MSG(p, "%s", err);
    client cl;
    client_init(&cl, s.cl, 0);
    cl.stop_on_eof = 1;
    int stalls;
    CHECK(drive(p, &cl, 10000, &stalls) == 0);
    const tp_pump_stats *st = tp_pump_stats_get(p);
    CHECK(stalls == 0);
    CHECK(cl.eof == 1);
    CHECK(cl.received == 65536);
    CHECK(st->to_tls == 65536);
    CHECK(st->tls_end == TP_END_CLEAN && st->target_end == TP_END_CLEAN);
    tp_pump_free(p);
    tp_child_free(ch);
    session_close(&s);
}

TEST(client_truncates_child_sees_eof)
{
    session s;
    CHECK(session_open(&s, 1) == 0);
    tp_child *ch = spawn_sh("exec cat");
    CHECK(ch);
    char err[256];
    tp_pump *p =
        tp_pump_new(s.sv, tp_child_fd(ch), tp_child_fd(ch), err, sizeof err);
    CHECK_MSG(p, "%s", err);
    client cl;
    client_init(&cl, s.cl, 100000);
    cl.verify = 1;
    /* Until the echo is back: the pump runs. */
    int64_t end = now_ms() + 10000;
    while (cl.received < 100000 && now_ms() < end) {
        tp_pump_step(p);
        client_step(&cl);
        struct pollfd fds[4];
        int t, n = tp_pump_wants(p, fds, 3, &t);
        fds[n].fd = cl.fd;
        fds[n].events = tp_conn_events(cl.c) | POLLIN;
        n++;
        poll(fds, (nfds_t)n, 100);
    }
    CHECK(cl.received == 100000 && cl.bad == 0);
    close(s.cfd); /* no close_notify: a FIN only */
    s.cfd = -1;
    end = now_ms() + 10000;
    while (!tp_pump_step(p) && now_ms() < end) {
        struct pollfd fds[3];
        int t, n = tp_pump_wants(p, fds, 3, &t);
        poll(fds, (nfds_t)n, t >= 0 && t < 1000 ? t : 1000);
    }
    CHECK(tp_pump_done(p));
    const tp_pump_stats *st = tp_pump_stats_get(p);
    CHECK_MSG(st->tls_end == TP_END_TRUNCATED, "%s", tp_end_name(st->tls_end));
    CHECK(strstr(st->tls_error, "close_notify") != NULL);
    CHECK(st->target_end == TP_END_ABORTED);
    CHECK(child_exit(ch, 5000) == 0); /* cat saw EOF and exited */
    tp_pump_free(p);
    tp_child_free(ch);
    session_close(&s);
}

TEST(client_reset_while_child_runs_yes)
{
    session s;
    CHECK(session_open(&s, 1) == 0);
    char err[256];
    tp_child *ch = spawn_quiet("yes");
    CHECK(ch);
    runner r = {0};
    r.p = tp_pump_new(s.sv, tp_child_fd(ch), tp_child_fd(ch), err, sizeof err);
    CHECK_MSG(r.p, "%s", err);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, run_thread, &r) == 0);
    client cl;
    client_init(&cl, s.cl, 0);
    int64_t end = now_ms() + 10000;
    while (cl.received < 1000000 && cl.eof == 0 && now_ms() < end) {
        client_step(&cl);
        struct pollfd pfd = {cl.fd, POLLIN, 0};
        poll(&pfd, 1, 100);
    }
    int got = cl.received >= 1000000;
    /* RST: close with SO_LINGER 0 (and unread data in the buffer). */
    struct linger lg = {1, 0};
    setsockopt(s.cfd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(s.cfd);
    s.cfd = -1;
    pthread_join(th, NULL);
    CHECK(got);
    CHECK(r.rc == TP_DONE);
    const tp_pump_stats *st = tp_pump_stats_get(r.p);
    CHECK_MSG(st->tls_end == TP_END_RESET, "%s: %s", tp_end_name(st->tls_end),
              st->tls_error);
    /* The target was shut down both ways: yes gets EPIPE (or SIGPIPE)
     * and exits. */
    CHECK(child_exit(ch, 5000) != -1000);
    tp_pump_free(r.p);
    tp_child_free(ch);
    session_close(&s);
}

TEST(idle_timeout)
{
    session s;
    CHECK(session_open(&s, 0) == 0);
    tp_child *ch = spawn_sh("exec cat");
    CHECK(ch);
    char err[256];
    tp_pump *p =
        tp_pump_new(s.sv, tp_child_fd(ch), tp_child_fd(ch), err, sizeof err);
    CHECK_MSG(p, "%s", err);
    tp_pump_set_idle_timeout(p, 300);
    client cl;
    client_init(&cl, s.cl, 5); /* 5 bytes, then silence */
    int64_t t0 = now_ms();
    int stalls;
    CHECK(drive(p, &cl, 10000, &stalls) == 0);
    int64_t dt = now_ms() - t0;
    const tp_pump_stats *st = tp_pump_stats_get(p);
    CHECK(stalls == 0);
    CHECK(st->tls_end == TP_END_TIMEOUT && st->target_end == TP_END_TIMEOUT);
    CHECK_MSG(dt >= 250 && dt < 5000, "dt %lld", (long long)dt);
    CHECK(cl.received == 5);
    CHECK(cl.eof == 1); /* the client got a clean close_notify */
    CHECK(child_exit(ch, 5000) == 0);
    tp_pump_free(p);
    tp_child_free(ch);
    session_close(&s);
}

TEST(run_timeout_resumes_and_interrupt_aborts)
{
    session s;
    CHECK(session_open(&s, 0) == 0);
    CHECK(h_handshake_both(s.cl, s.sv) == 0);
    tp_child *ch = spawn_sh("exec cat");
    CHECK(ch);
    char err[256];
    tp_pump *p =
        tp_pump_new(s.sv, tp_child_fd(ch), tp_child_fd(ch), err, sizeof err);
    CHECK_MSG(p, "%s", err);
    CHECK(tp_pump_run(p, NULL) == TP_TIMEOUT); /* non-blocking: one step */
    tp_wait w = {.timeout_ms = 150};
    int64_t t0 = now_ms();
    CHECK(tp_pump_run(p, &w) == TP_TIMEOUT);
    CHECK(now_ms() - t0 >= 140);
    CHECK(!tp_pump_done(p));
    /* Still alive: an echo goes through. */
    CHECK(tp_conn_write(s.cl, "ping", 4, NULL) == 4);
    char buf[8];
    tp_wait w2 = {.timeout_ms = 100};
    for (int i = 0; i < 20 && tp_conn_read(s.cl, buf, 4, NULL) != 4; i++)
        tp_pump_run(p, &w2);
    CHECK(tp_pump_stats_get(p)->to_tls == 4);
    runner r = {.p = p, .interrupt_after_ms = 200};
    r.start = now_ms();
    tp_wait wi = {
        .timeout_ms = -1, .interrupted = runner_interrupted, .arg = &r};
    CHECK(tp_pump_run(p, &wi) == TP_INTERRUPTED);
    CHECK(tp_pump_done(p));
    const tp_pump_stats *st = tp_pump_stats_get(p);
    CHECK(st->tls_end == TP_END_ABORTED && st->target_end == TP_END_ABORTED);
    CHECK(tp_pump_run(p, &wi) == TP_DONE);
    tp_pump_free(p);
    tp_child_free(ch);
    session_close(&s);
}

TEST(interrupt_while_data_flows)
{
    /* yes never lets the pump wait: the interrupt check must still run. */
    session s;
    CHECK(session_open(&s, 0) == 0);
    char err[256];
    tp_child *ch = spawn_quiet("yes");
    CHECK(ch);
    runner r = {.interrupt_after_ms = 300};
    r.p = tp_pump_new(s.sv, tp_child_fd(ch), tp_child_fd(ch), err, sizeof err);
    CHECK_MSG(r.p, "%s", err);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, run_thread, &r) == 0);
    client cl;
    client_init(&cl, s.cl, 0);
    /* Read until the pump stops sending (interrupted) plus a little. */
    int64_t end = now_ms() + 10000;
    while (now_ms() < end) {
        client_step(&cl);
        if (r.rc == TP_INTERRUPTED || cl.eof)
            break;
        struct pollfd pfd = {cl.fd, POLLIN, 0};
        poll(&pfd, 1, 50);
    }
    pthread_join(th, NULL);
    CHECK(r.rc == TP_INTERRUPTED);
    CHECK(cl.received > 0);
    CHECK(tp_pump_stats_get(r.p)->tls_end == TP_END_ABORTED);
    tp_pump_free(r.p);
    tp_child_free(ch); /* closes: yes gets EPIPE, reaped */
    session_close(&s);
}

TEST(backpressure_bounded)
{
    /* The child never reads: the client can only fill the buffers on the
     * way (socket buffers, the pump's 64 KiB, the conn's 1 MiB), then it
     * must be stopped. */
    session s;
    CHECK(session_open(&s, 0) == 0);
    tp_child *ch = spawn_sh("exec sleep 30");
    CHECK(ch);
    char err[256];
    tp_pump *p =
        tp_pump_new(s.sv, tp_child_fd(ch), tp_child_fd(ch), err, sizeof err);
    CHECK_MSG(p, "%s", err);
    client cl;
    client_init(&cl, s.cl, (uint64_t)256 << 20);
    fill_until_stalled(p, &cl);
    CHECK(!tp_pump_done(p));
    CHECK_MSG(cl.sent < (uint64_t)32 << 20, "sent %llu",
              (unsigned long long)cl.sent);
    CHECK(tp_pump_stats_get(p)->to_target < (uint64_t)8 << 20);
    tp_pump_free(p);
    tp_child_free(ch);
    session_close(&s);
}

static int never_interrupted(void *arg)
{
    (*(int *)arg)++;
    return 0;
}

TEST(idle_timeout_in_run_with_interrupt_checks)
{
    /* tp_pump_run with an interrupted callback: the idle deadline must
     * still be seen although every wait is cut into check periods. */
    session s;
    CHECK(session_open(&s, 0) == 0);
    CHECK(h_handshake_both(s.cl, s.sv) == 0);
    tp_child *ch = spawn_sh("exec cat");
    CHECK(ch);
    char err[256];
    tp_pump *p =
        tp_pump_new(s.sv, tp_child_fd(ch), tp_child_fd(ch), err, sizeof err);
    CHECK_MSG(p, "%s", err);
    tp_pump_set_idle_timeout(p, 350);
    int calls = 0;
    tp_wait w = {
        .timeout_ms = 5000, .interrupted = never_interrupted, .arg = &calls};
    int64_t t0 = now_ms();
    CHECK(tp_pump_run(p, &w) == TP_DONE);
    int64_t dt = now_ms() - t0;
    CHECK_MSG(dt >= 300 && dt < 3000, "dt %lld", (long long)dt);
    CHECK(calls >= 2);
    CHECK(tp_pump_stats_get(p)->tls_end == TP_END_TIMEOUT);
    CHECK(child_exit(ch, 5000) == 0);
    tp_pump_free(p);
    tp_child_free(ch);
    session_close(&s);
}

TEST(reset_noticed_while_backpressured)
{
    /* The child never reads; the client fills every buffer, then resets.
     * The pump, which is not reading the TLS side, must still end at once
     * (not after draining megabytes at the child's pace). */
    session s;
    CHECK(session_open(&s, 1) == 0);
    tp_child *ch = spawn_sh("exec sleep 30");
    CHECK(ch);
    char err[256];
    tp_pump *p =
        tp_pump_new(s.sv, tp_child_fd(ch), tp_child_fd(ch), err, sizeof err);
    CHECK_MSG(p, "%s", err);
    client cl;
    client_init(&cl, s.cl, (uint64_t)64 << 20);
    fill_until_stalled(p, &cl);
    CHECK(!tp_pump_done(p));
    struct linger lg = {1, 0};
    setsockopt(s.cfd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(s.cfd);
    s.cfd = -1;
    int64_t t0 = now_ms();
    tp_wait w = {.timeout_ms = 5000};
    CHECK(tp_pump_run(p, &w) == TP_DONE);
    CHECK(now_ms() - t0 < 2000);
    const tp_pump_stats *st = tp_pump_stats_get(p);
    CHECK_MSG(st->tls_end == TP_END_RESET, "%s %s", tp_end_name(st->tls_end),
              st->tls_error);
    tp_pump_free(p);
    tp_child_free(ch);
    session_close(&s);
}

TEST(pipes_target_handed_over)
{
    /* wc -c on two pipes: the pump closes the write pipe it was handed to
     * pass on the client's close_notify. */
    session s;
    CHECK(session_open(&s, 0) == 0);
    int in[2], out[2];
    CHECK(pipe2(in, O_CLOEXEC) == 0 && pipe2(out, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    char *argv[] = {"wc", "-c", NULL};
    extern char **environ;
    pid_t pid;
    CHECK(posix_spawnp(&pid, "wc", &fa, NULL, argv, environ) == 0);
    posix_spawn_file_actions_destroy(&fa);
    close(in[0]);
    close(out[1]);
    char err[256];
    tp_pump *p = tp_pump_new(s.sv, out[0], in[1], err, sizeof err);
    CHECK_MSG(p, "%s", err);
    tp_pump_set_close_target_write(p, 1);
    client cl;
    client_init(&cl, s.cl, 200000);
    cl.notify_after = 1;
    int stalls;
    int dr = drive(p, &cl, 10000, &stalls);
    const tp_pump_stats *pst = tp_pump_stats_get(p);
    CHECK_MSG(tp_pump_target_write_done(p),
              "dr %d eof %d tls %s target %s %s %s", dr, cl.eof,
              tp_end_name(pst->tls_end), tp_end_name(pst->target_end),
              pst->tls_error, pst->target_error);
    tp_pump_free(p); /* in[1] is the pump's: closed already */
    close(out[0]);
    int st;
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECK(dr == 0 && stalls == 0);
    CHECK_MSG(atol(cl.head) == 200000, "'%s'", cl.head);
    CHECK(cl.eof == 1);
    CHECK(fcntl(in[1], F_GETFD) < 0 && errno == EBADF);
    session_close(&s);
}

TEST(bad_arguments)
{
    session s;
    CHECK(session_open(&s, 0) == 0);
    char err[256] = "";
    CHECK(tp_pump_new(s.sv, 999, 999, err, sizeof err) == NULL);
    CHECK_MSG(strstr(err, "999") && strstr(err, "not open"), "%s", err);
    CHECK(tp_pump_new(NULL, 0, 0, err, sizeof err) == NULL);
    CHECK(h_handshake_both(s.cl, s.sv) == 0);
    CHECK(tp_conn_shutdown(s.sv, NULL) == TP_DONE);
    int sv[2];
    CHECK(h_socketpair(sv) == 0);
    CHECK(tp_pump_new(s.sv, sv[0], sv[0], err, sizeof err) == NULL);
    CHECK_MSG(strstr(err, "closed"), "%s", err);
    close(sv[0]);
    close(sv[1]);
    tp_pump_free(NULL);
    CHECK(strcmp(tp_end_name(TP_END_TRUNCATED), "truncated") == 0);
    session_close(&s);
}

int main(void)
{
    h_contexts(&sctx, &cctx);
    RUN(cat_echo_16mib_step_api);
    RUN(wc_half_close_thread_run);
    RUN(head_exits_early_while_client_sends_10mb);
    RUN(child_writes_64k_and_exits);
    RUN(client_truncates_child_sees_eof);
    RUN(client_reset_while_child_runs_yes);
    RUN(idle_timeout);
    RUN(run_timeout_resumes_and_interrupt_aborts);
    RUN(interrupt_while_data_flows);
    RUN(backpressure_bounded);
    RUN(idle_timeout_in_run_with_interrupt_checks);
    RUN(reset_noticed_while_backpressured);
    RUN(pipes_target_handed_over);
    RUN(bad_arguments);
    tp_ctx_free(sctx);
    tp_ctx_free(cctx);
    return DONE_TESTS();
}
