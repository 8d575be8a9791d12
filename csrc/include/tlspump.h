/*
 * tlspump.h -- the one public header of the tlspump core.
 *
 * tlspump does the three parts of TLS glue that are usually done wrong by
 * hand: a non-blocking handshake that says exactly which readiness to wait
 * for, a read that drains everything OpenSSL has decrypted, and a forwarding
 * loop between a TLS connection and plain file descriptors.
 *
 * Objects (all opaque, no OpenSSL type appears here):
 *   tp_ctx     configuration shared by many connections (wraps SSL_CTX)
 *   tp_conn    one TLS connection over a caller-owned socket fd
 *   tp_pump    a bidirectional forwarder between a tp_conn and plain fds
 *   tp_child   a command started with its stdin/stdout on a socketpair
 *   tp_server  a multi-connection event loop (accept, handshake, pump)
 *
 * Return conventions (the only ones; bindings map them mechanically):
 *   - constructors return a pointer, or NULL with the reason written to the
 *     caller's errbuf (always NUL-terminated, may be NULL);
 *   - I/O returns a count >= 0, TP_DONE (0), or one of the negative codes
 *     below; on TP_ERROR the text is in the object (tp_conn_error()).
 *   - every *_free(NULL) is a no-op.
 *
 * Ownership: the core never closes an fd it did not open. tp_conn_new()
 * sets O_NONBLOCK on the caller's socket and leaves closing it to the caller.
 *
 * Threads: distinct objects may be used from distinct threads; one object
 * must not be used by two threads at once. A tp_ctx may be shared (it is
 * reference counted and read-only after creation).
 *
 * Signals: the core never changes signal dispositions. Writes to sockets use
 * send(MSG_NOSIGNAL); writes to pipes block SIGPIPE in the calling thread
 * for the duration of the write only. Waits use poll(), never select(), so
 * fds above 1024 work.
 *
 * A non-blocking client, driven by poll():
 *
 *     tp_ctx_options o;
 *     tp_ctx_options_init(&o);
 *     o.ca = "ca.pem";
 *     char err[256];
 *     tp_ctx *ctx = tp_ctx_new(TP_CLIENT, &o, err, sizeof err);
 *     tp_conn *c = tp_conn_new(ctx, fd, "example.org", err, sizeof err);
 *     int r;
 *     while ((r = tp_conn_handshake(c, NULL)) == TP_WANT_READ ||
 *            r == TP_WANT_WRITE) {
 *         struct pollfd p = {fd, tp_conn_events(c), 0};
 *         poll(&p, 1, -1);
 *     }
 *     if (r == TP_ERROR) fprintf(stderr, "%s\n", tp_conn_error(c));
 *     tp_conn_write(c, "hello\n", 6, NULL);    // buffered, sent when possible
 *     char buf[65536];
 *     for (;;) {
 *         ssize_t n = tp_conn_read(c, buf, sizeof buf, NULL);
 *         if (n > 0) { fwrite(buf, 1, n, stdout); continue; }  // drained
 *         if (n == 0 || n == TP_ERROR) break;                   // EOF/error
 *         struct pollfd p = {fd, tp_conn_events(c), 0};        // WANT_*
 *         poll(&p, 1, -1);
 *     }
 *     tp_conn_shutdown(c, NULL);
 *     tp_conn_free(c);
 *     tp_ctx_free(ctx);
 *     close(fd);                                  // the caller's fd
 *
 * The same with a deadline, no loop of one's own:
 *
 *     tp_wait w = {.timeout_ms = 5000};
 *     if (tp_conn_handshake(c, &w) != TP_DONE) ...  // TP_TIMEOUT/TP_ERROR
 */
#ifndef TLSPUMP_H
#define TLSPUMP_H

#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TP_VERSION "0.1.0"

/* ---- return codes ------------------------------------------------------ */

#define TP_DONE 0
#define TP_ERROR (-1)
#define TP_WANT_READ (-2)   /* wait until the fd is readable (POLLIN) */
#define TP_WANT_WRITE (-3)  /* wait until the fd is writable (POLLOUT) */
#define TP_TIMEOUT (-4)     /* a tp_wait deadline passed; state is intact */
#define TP_INTERRUPTED (-5) /* tp_wait.interrupted returned nonzero */

/* What went wrong, for mapping errors to exception classes. */
typedef enum tp_errkind {
    TP_E_NONE = 0,
    TP_E_TLS,       /* protocol error, alert, verification failure */
    TP_E_TRUNCATED, /* peer's EOF without close_notify */
    TP_E_RESET,     /* connection reset by peer (RST, EPIPE) */
    TP_E_SYS,       /* other system call failure; see the errno */
    TP_E_CLOSED,    /* use of a connection after a fatal error or close */
    TP_E_ARG,       /* bad argument (bad fd, size, option) */
    TP_E_TIMEOUT,   /* a deadline passed (pump idle, handshake timeout) */
    TP_E_INTERRUPTED
} tp_errkind;

/*
 * How long a call may block. Pass NULL (or timeout_ms == 0) for
 * non-blocking behaviour: the call returns TP_WANT_READ/TP_WANT_WRITE at once
 * instead of waiting. With timeout_ms > 0 the call waits in poll() for at
 * most that many milliseconds in total and returns TP_TIMEOUT after that;
 * with timeout_ms < 0 it waits without limit.
 *
 * interrupted (optional) is called after poll() is interrupted by a signal
 * and at least every TP_INTERRUPT_CHECK_MS while waiting; if it returns
 * nonzero the call stops and returns TP_INTERRUPTED. Bindings use it to run
 * the interpreter's signal handlers (the GIL is taken inside the callback).
 */
typedef struct tp_wait {
    int timeout_ms;
    int (*interrupted)(void *arg);
    void *arg;
} tp_wait;

#define TP_INTERRUPT_CHECK_MS 100

/* ---- tp_ctx: configuration --------------------------------------------- */

typedef struct tp_ctx tp_ctx;

typedef enum tp_role { TP_SERVER = 1, TP_CLIENT = 2 } tp_role;

#define TP_TLS1_2 0x0303
#define TP_TLS1_3 0x0304

/*
 * Options for tp_ctx_new(). Call tp_ctx_options_init() first; it sets the
 * secure defaults (verify = 1, min_version = TP_TLS1_2).
 *
 * cert, key, ca, client_ca: each is EITHER a path to a PEM file OR PEM text
 * itself (anything that starts with "-----BEGIN", after white space, is PEM
 * text). Lengths of 0 mean NUL-terminated. A cert file may hold the key too
 * (key == NULL then reads the key from cert).
 */
typedef struct tp_ctx_options {
    const char *cert; /* server: NULL -> ephemeral self-signed P-256 cert */
    size_t cert_len;
    const char *key; /* NULL -> the key is in cert */
    size_t key_len;
    const char *ca; /* client: trust roots; NULL -> system trust store */
    size_t ca_len;
    const char *ca_dir; /* client: hashed CA directory (c_rehash), path */
    const char *client_ca; /* server: require client certs signed by it */
    size_t client_ca_len;
    const char *alpn;    /* comma-separated protocols "h2,http/1.1" */
    int verify;          /* client: 1 (default) verify chain + hostname;
                            0 = INSECURE, accept any certificate */
    int min_version;     /* TP_TLS1_2 (default) or TP_TLS1_3 */
    size_t write_buffer; /* per-connection plaintext buffer limit; 0 -> 1 MiB */
} tp_ctx_options;

void tp_ctx_options_init(tp_ctx_options *o);

/*
 * Creates a context. Returns NULL and writes the reason to errbuf: a path
 * that cannot be read (named), a key that does not match the certificate,
 * PEM that does not parse, an unknown ALPN syntax. The result is reference
 * counted: every tp_conn holds a reference, so the caller may tp_ctx_free()
 * at any time.
 */
tp_ctx *tp_ctx_new(tp_role role, const tp_ctx_options *o, char *errbuf,
                   size_t errlen);
void tp_ctx_free(tp_ctx *ctx);
tp_ctx *tp_ctx_ref(tp_ctx *ctx); /* +1 reference; returns ctx */
tp_role tp_ctx_role(const tp_ctx *ctx);

/* SHA-256 of the DER certificate as 64 lowercase hex digits; NULL for a
 * client context without a certificate. Owned by ctx. */
const char *tp_ctx_fingerprint(const tp_ctx *ctx);
/* 1 if the certificate is the generated ephemeral one. */
int tp_ctx_is_ephemeral(const tp_ctx *ctx);
/* The certificate in PEM (for clients to trust the ephemeral one). */
const char *tp_ctx_cert_pem(const tp_ctx *ctx);

/* ---- tp_conn: one TLS connection --------------------------------------- */

typedef struct tp_conn tp_conn;

/*
 * Wraps a connected socket fd. Sets O_NONBLOCK on it; never closes it.
 * server_hostname (clients): sent as SNI and checked against the
 * certificate (an IP literal is checked against IP SANs); required when the
 * context verifies. Fails (NULL, reason in errbuf) for a closed fd, an fd
 * that is not a socket, or a verifying client without server_hostname.
 */
tp_conn *tp_conn_new(tp_ctx *ctx, int fd, const char *server_hostname,
                     char *errbuf, size_t errlen);
/* Frees the connection (no I/O; send close_notify first with
 * tp_conn_shutdown). Does not close the fd. */
void tp_conn_free(tp_conn *c);

int tp_conn_fd(const tp_conn *c);

/* One handshake step: TP_DONE, TP_WANT_READ, TP_WANT_WRITE, TP_ERROR (or
 * TP_TIMEOUT/TP_INTERRUPTED with a wait). DONE again once complete. */
int tp_conn_handshake(tp_conn *c, const tp_wait *w);

/*
 * Reads up to len bytes, draining: keeps reading records until buf is full
 * or neither the socket nor OpenSSL holds more, so one readiness event yields
 * everything that has arrived. Returns the count (> 0), 0 at the peer's
 * close_notify (clean EOF), TP_WANT_READ/TP_WANT_WRITE when nothing is
 * available, TP_ERROR. An EOF without close_notify is TP_ERROR with kind
 * TP_E_TRUNCATED, never 0. Bytes that arrived before an error are returned
 * first; the error is returned by the next call. With a wait, blocks until at
 * least one byte (or EOF, error, timeout) and then drains. Runs the handshake
 * first if it is not done. len must be > 0 (len == 0 is TP_ERROR, TP_E_ARG:
 * a 0 return means EOF and nothing else).
 */
ssize_t tp_conn_read(tp_conn *c, void *buf, size_t len, const tp_wait *w);

/*
 * Like tp_conn_read, but drains into a buffer owned by the connection:
 * reads up to max bytes (max == 0: no caller limit) and stops early only at a
 * point where OpenSSL holds no further decrypted or partial record, so a
 * caller that then waits for readability cannot stall. *data points to the
 * bytes until the next call on c. Same returns as tp_conn_read.
 */
ssize_t tp_conn_read_drain(tp_conn *c, size_t max, const char **data,
                           const tp_wait *w);

/*
 * Copies up to len bytes into the connection's plaintext buffer (bounded by
 * tp_ctx_options.write_buffer) and sends what the socket takes now. Returns
 * the count accepted: len, or less only when the buffer is full (then
 * tp_conn_events() says what flushing waits for); TP_ERROR. With a wait,
 * blocks until all len bytes are accepted (TP_TIMEOUT may lose no bytes: the
 * accepted part stays buffered; tp_conn_buffered() tells how much).
 * The caller may reuse buf at once: no "bad write retry" exists.
 */
ssize_t tp_conn_write(tp_conn *c, const void *buf, size_t len,
                      const tp_wait *w);

/* Zero-copy variant for the pump: room in the write buffer (may be 0).
 * Write at most *room bytes to the returned pointer, then commit them. */
char *tp_conn_write_space(tp_conn *c, size_t *room);
int tp_conn_write_commit(tp_conn *c, size_t n);

/* Sends buffered plaintext: TP_DONE when the buffer is empty, WANT_*,
 * TP_ERROR (or TP_TIMEOUT/TP_INTERRUPTED with a wait). */
int tp_conn_flush(tp_conn *c, const tp_wait *w);

/* Bytes accepted by tp_conn_write and not yet handed to the socket. */
size_t tp_conn_buffered(const tp_conn *c);

/* Frees the connection's plaintext buffers while they hold nothing (the
 * write buffer if empty; read_drain's buffer, invalidating its last *data),
 * for connections that go idle: thousands of idle connections then cost
 * little more than OpenSSL's state. They are allocated again when needed. */
void tp_conn_release_buffers(tp_conn *c);

/*
 * Completes the handshake if needed, flushes the buffer, then sends
 * close_notify: TP_DONE once it is out,
 * WANT_*, TP_ERROR. Reading may continue until the peer's close_notify
 * (half-close); writing after it is TP_ERROR (TP_E_CLOSED). Does not
 * shut down or close the socket.
 */
int tp_conn_shutdown(tp_conn *c, const tp_wait *w);

/* 1 once the peer's close_notify has been read. */
int tp_conn_peer_closed(const tp_conn *c);
/* 1 once our close_notify has been sent. */
int tp_conn_closed(const tp_conn *c);
/* 1 once the handshake is complete. */
int tp_conn_handshake_done(const tp_conn *c);
/* 1 if OpenSSL holds decrypted or partially read data (SSL_has_pending). */
int tp_conn_pending(const tp_conn *c);

/*
 * The readiness to wait for next, as poll() events (POLLIN|POLLOUT, or 0
 * when nothing waits): the union of what the last blocked operation in each
 * direction needs (handshake, read, flush of buffered data, shutdown). A read
 * may need POLLOUT and a write POLLIN (TLS 1.3 KeyUpdate, tickets).
 */
short tp_conn_events(const tp_conn *c);

/* Blocks in poll() until tp_conn_events() is ready: TP_DONE, TP_TIMEOUT,
 * TP_INTERRUPTED, TP_ERROR. Immediate TP_DONE when nothing waits. */
int tp_conn_wait(tp_conn *c, const tp_wait *w);

/* Error of the last failed call: full text "op: reason (errno text)". */
const char *tp_conn_error(const tp_conn *c);
/* OpenSSL's reason alone, e.g. "certificate verify failed: self-signed
 * certificate", "wrong version number", "http request". */
const char *tp_conn_reason(const tp_conn *c);
/* The operation that failed: "handshake", "read", "write", "shutdown". */
const char *tp_conn_operation(const tp_conn *c);
tp_errkind tp_conn_errkind(const tp_conn *c);
int tp_conn_errno(const tp_conn *c);

/* After the handshake (NULL before or when absent); owned by c. */
const char *tp_conn_version(const tp_conn *c); /* "TLSv1.3" */
const char *tp_conn_cipher(const tp_conn *c);  /* "TLS_AES_256_GCM_SHA384" */
const char *tp_conn_alpn(const tp_conn *c);    /* "h2" or NULL */
const char *tp_conn_peer_cert_pem(tp_conn *c);
const char *tp_conn_peer_subject(tp_conn *c); /* RFC 2253 one line */
const char *tp_conn_peer_issuer(tp_conn *c);
const char *tp_conn_peer_fingerprint(tp_conn *c); /* sha256 hex */
/* Verification result text: "ok", or why it failed (also when verify = 0,
 * and after a handshake that failed); NULL before the handshake ends. */
const char *tp_conn_verify_result(const tp_conn *c);
const char *tp_conn_server_name(const tp_conn *c); /* SNI (server side) */

/* Error text for a return code or errkind, for bindings and logs. */
const char *tp_errkind_name(tp_errkind k); /* "truncated", "reset", ... */

/* ---- tp_pump: forwarding loop ------------------------------------------ */

/*
 * A forwarder between a tp_conn and a target: decrypted TLS input is written
 * to the target, the target's output is encrypted to the TLS peer. Memory
 * is bounded (the connection's write buffer and 64 KiB): a side that does
 * not drain stops the other one from being read.
 *
 * Half-close: the peer's close_notify shuts the target's write side down
 * (SHUT_WR) once everything is delivered, while the target's output keeps
 * flowing until its EOF; then everything is flushed and close_notify is
 * sent. If the target's output ends first (a child that exits early), the
 * answer is flushed, close_notify sent, the TLS socket shut down for
 * writing (SHUT_WR), and the peer's input read and discarded for up to 2 s
 * (or until its close_notify/EOF) so that the kernel does not reset the
 * connection and destroy the answer in flight. A target that stops reading
 * (EPIPE) only ends that direction: the rest of the TLS input is discarded
 * (counted in stats.discarded).
 *
 * Failures (TLS truncation, reset, alert; a target read error; the idle
 * timeout) end the pump at once; the target socket is then shut down both
 * ways, so a child sees EOF on stdin and EPIPE on stdout. After a target
 * failure no close_notify is sent: the peer must not take a partial answer
 * for a complete one.
 */
typedef struct tp_pump tp_pump;
typedef struct tp_child tp_child; /* see tp_spawn() */

/* How one direction ended. */
typedef enum tp_end {
    TP_END_NONE = 0,  /* still running */
    TP_END_CLEAN,     /* close_notify (TLS) or EOF (target; on a socketpair
                         also the ECONNRESET of a child that exited without
                         reading all its input: its output is complete) */
    TP_END_TRUNCATED, /* TLS EOF without close_notify */
    TP_END_RESET,     /* RST */
    TP_END_TIMEOUT,   /* idle timeout */
    TP_END_ERROR,     /* other error; text in the stats */
    TP_END_ABORTED    /* cut off: the caller stopped the pump (interrupt,
                         server stop), the other direction failed, or the
                         peer kept sending past the linger time */
} tp_end;

const char *tp_end_name(tp_end e); /* "clean", "truncated", ... */

typedef struct tp_pump_stats {
    uint64_t to_target;     /* plaintext bytes TLS -> target (delivered) */
    uint64_t to_tls;        /* plaintext bytes target -> TLS */
    uint64_t discarded;     /* TLS plaintext dropped: the target stopped
                               reading, or the peer sent after our close */
    tp_end tls_end;         /* how the TLS side's input ended */
    tp_end target_end;      /* how the target side's input ended */
    char tls_error[256];    /* text when the TLS side failed (either way) */
    char target_error[256]; /* text when the target failed */
    double seconds;         /* from tp_pump_new to the end */
} tp_pump_stats;

/*
 * Creates a forwarder between c (handshake done or not: it is completed
 * first) and target_rfd/target_wfd, which may be the same socket (a
 * socketpair end, a TCP backend) or two fds (pipes). Sets O_NONBLOCK on the
 * target fds and never closes them: the half-close is passed on with
 * shutdown(SHUT_WR) on a socket; a pipe's write end cannot be shut down, so
 * either hand it over with tp_pump_set_close_target_write() or watch
 * tp_pump_target_write_done() and close it yourself (step API). Fails for a
 * closed fd or a connection whose close_notify was already sent.
 */
tp_pump *tp_pump_new(tp_conn *c, int target_rfd, int target_wfd,
                     char *errbuf, size_t errlen);
/* Frees the pump (no I/O); the connection and the fds stay the caller's. */
void tp_pump_free(tp_pump *p);
/* No bytes either way for ms milliseconds (counted from the end of the
 * handshake, or from now if it is done) ends the pump (0: never): the
 * target is shut down both ways, the peer gets what is buffered and a
 * close_notify if that goes out within a second. Ends TP_END_TIMEOUT. */
void tp_pump_set_idle_timeout(tp_pump *p, int ms);
/* yes = 1: target_wfd (if distinct from target_rfd) belongs to the pump,
 * which closes it to pass on the half-close (or in tp_pump_free). */
void tp_pump_set_close_target_write(tp_pump *p, int yes);
/* yes = 1 (a client joining, e.g., stdin/stdout to a server): when the
 * target's output ends first, close_notify is sent and the peer's input is
 * still forwarded to the target until the peer's close_notify, instead of
 * being read and discarded for the linger time (the default, right for a
 * server whose child has answered and exited). */
void tp_pump_set_read_after_close(tp_pump *p, int yes);
/*
 * The target is ch's socketpair: once the command has exited, its output
 * counts as complete after a grace of 1 s even if a process it left behind
 * (`sleep 60 &`) still holds the socketpair open, so the session ends. ch
 * must outlive the pump; it is not reaped by the pump.
 */
void tp_pump_watch_child(tp_pump *p, tp_child *ch);
/* 1 once nothing more will be written to the target (the half-close is
 * due: shut down or closed if the pump could). */
int tp_pump_target_write_done(const tp_pump *p);

/*
 * Step API for callers with their own event loop: does all work possible now
 * without blocking (a step yields after a few MiB so that other work gets a
 * turn). Returns 1 when the pump has finished, 0 otherwise.
 */
int tp_pump_step(tp_pump *p);
/*
 * Fills up to max (4 suffice) pollfd entries with the fds and events the
 * pump waits for and returns their count; *timeout_ms gets the time until
 * the pump must be stepped even without events: the idle or linger
 * deadline, 0 when the last step yielded with work left, -1 for none. After
 * poll() (any revents, or the timeout) call tp_pump_step(). An entry may
 * have events 0: the TLS fd while its input is held back, watched only for
 * the POLLERR of a reset (a caller that cannot wait for that may skip it).
 */
int tp_pump_wants(tp_pump *p, struct pollfd *fds, int max, int *timeout_ms);
/*
 * step + poll until done: TP_DONE (see the stats for how it ended),
 * TP_TIMEOUT when w's deadline passed (resumable: call again),
 * TP_INTERRUPTED when w->interrupted returned nonzero (checked at least every
 * TP_INTERRUPT_CHECK_MS even while data flows; the pump is then finished,
 * open ends TP_END_ABORTED, no further I/O done). As everywhere, w == NULL
 * does not block: one step, then TP_DONE or TP_TIMEOUT; pass
 * {.timeout_ms = -1} to run to the end.
 */
int tp_pump_run(tp_pump *p, const tp_wait *w);
int tp_pump_done(const tp_pump *p);
const tp_pump_stats *tp_pump_stats_get(const tp_pump *p);

/* ---- tp_child: spawned command ----------------------------------------- */


/*
 * Starts argv[0] (searched in PATH) with stdin and stdout on one end of a
 * socketpair; the other end is tp_child_fd() (close-on-exec, blocking until
 * a pump sets O_NONBLOCK). envp == NULL inherits the environment; cwd ==
 * NULL keeps it; stderr_fd < 0 inherits stderr. All other fds are closed in
 * the child (close-on-exec, and closefrom(3) where glibc >= 2.34 has it).
 * The child starts with an empty signal mask and SIGPIPE, SIGXFSZ, SIGCHLD,
 * SIGINT, SIGTERM, SIGQUIT, SIGALRM, SIGUSR1/2 at their defaults (a host
 * that ignores SIGPIPE must not pass that on to `yes`). Uses posix_spawnp
 * (vfork-cheap). Returns NULL with the reason and errno (e.g. "spawn ./nope:
 * No such file or directory", ENOENT) when the program cannot be started;
 * no zombie is left.
 */
tp_child *tp_spawn(const char *const argv[], const char *const envp[],
                   const char *cwd, int stderr_fd, char *errbuf,
                   size_t errlen);
int tp_child_fd(const tp_child *ch);
pid_t tp_child_pid(const tp_child *ch);
/* Waits up to w for the child to exit (a pidfd in poll(); without pidfds,
 * waitpid(WNOHANG) every 10 ms); w == NULL only checks. TP_DONE and *status
 * set (as from waitpid; -1 if the status could not be had because SIGCHLD
 * is ignored or the host reaped it), TP_TIMEOUT, TP_INTERRUPTED. Reaps with
 * waitpid(pid) only, never wait(-1): the host's other children are left
 * alone. Once reaped, returns the same status again. */
int tp_child_wait(tp_child *ch, const tp_wait *w, int *status);
/* Sends sig: 0, or -1 with errno. A no-op (0) once reaped, since the pid
 * may then belong to another process. */
int tp_child_kill(tp_child *ch, int sig);
/* Closes the socketpair end (the child sees EOF); reaps the child if it
 * exits within 100 ms, otherwise sends SIGTERM, waits up to 1 s more, then
 * SIGKILL, and reaps, so no zombie is left. Blocks for at most ~1.1 s. */
void tp_child_free(tp_child *ch);

/* ---- tp_server: many connections in one event loop --------------------- */

/*
 * One epoll loop serving many TLS connections. Per connection: accept,
 * non-blocking handshake (bounded by handshake_timeout_ms), then either a
 * child per connection (tp_spawn of command, its stdin/stdout on a
 * socketpair; environment plus TLSPUMP_PEER, TLSPUMP_VERSION,
 * TLSPUMP_CIPHER, TLSPUMP_ALPN, TLSPUMP_SNI and, with a client certificate,
 * TLSPUMP_CLIENT_SUBJECT and TLSPUMP_CLIENT_FINGERPRINT) or a non-blocking
 * connect to backend, then a tp_pump driven through its step API. Nothing
 * blocks the loop. Children are reaped by pid (never wait(-1)).
 *
 * Logging (log_fd): a start line "listening on ADDR[, ADDR], fingerprint
 * sha256:HEX" (the fingerprint for an ephemeral certificate only), one line
 * per connection end, a "stopped" line; each line is prefixed with the UTC
 * time and "tlspump[PID]:". The connection line:
 *   PEER VERSION CIPHER in=N out=N time=S tls_end=R target_end=R
 *   [exit=N|signal=N] [subject="..."] [error="..."]
 * in = bytes from the client, out = bytes to it, R = tp_end_name() or
 * "none". With log_json each line is one JSON object with "time", "pid",
 * "event" ("listening", "end", "stopped", "warning") and the same fields
 * (bytes_in, bytes_out, seconds, ...). Payload and key material are never
 * logged.
 */
typedef struct tp_server tp_server;

typedef struct tp_server_options {
    const char *const *listen; /* NULL-terminated: "HOST:PORT", "[::1]:PORT",
                                  ":PORT" (all interfaces), "unix:/path",
                                  "unix:@abstract", "fd:N" (a listening
                                  socket of the caller: set non-blocking
                                  while the server lives, never closed);
                                  default 127.0.0.1:8443. Port 0 binds an
                                  ephemeral port (see tp_server_address). */
    const char *const *command;      /* argv per connection, or NULL */
    const char *backend;             /* "HOST:PORT" or "unix:PATH", or NULL;
                                        resolved once by tp_server_new */
    int max_conns;                   /* per process; default 1024. At the
                                        limit no more are accepted (they wait
                                        in the backlog) until one ends */
    int handshake_timeout_ms;        /* default 10000 (also bounds the
                                        backend connect); 0: none */
    int idle_timeout_ms;             /* 0: none */
    int grace_ms;                    /* on stop; default 10000 */
    int workers;                     /* processes; default 1. workers > 1
                                        forks workers - 1 processes in
                                        tp_server_run that share the
                                        listening sockets and never return
                                        (they _exit) */
    int log_fd;                      /* default 2; -1: no log */
    int log_json;                    /* 0 text, 1 JSON lines */
} tp_server_options;

void tp_server_options_init(tp_server_options *o);
/*
 * Binds the listening sockets and validates the options. NULL with the
 * reason in errbuf: "cannot listen on 127.0.0.1:8443: Address already in
 * use", "cannot listen on x: bad address: ...", "a command or a backend is
 * required", a client context, ...
 */
tp_server *tp_server_new(tp_ctx *ctx, const tp_server_options *o,
                         char *errbuf, size_t errlen);
/*
 * Runs the loop until a stop, then stops gracefully: the listening sockets
 * are closed, running sessions get up to grace_ms to finish, the rest are
 * then closed with close_notify, all children are reaped (SIGTERM, then
 * SIGKILL for a child that ignores its EOF), workers are stopped and reaped.
 *
 * The core installs no signal handler: a host that wants SIGTERM/SIGINT to
 * stop the server calls tp_server_stop() from its handler, or passes w with
 * an interrupted callback (w->timeout_ms is not used): when it returns
 * nonzero a graceful stop begins and run returns TP_INTERRUPTED after it.
 * Workers stop when the parent stops (or dies), and on SIGTERM.
 * Returns TP_DONE, TP_INTERRUPTED, or TP_ERROR (tp_server_error()). Runs
 * once per server.
 */
int tp_server_run(tp_server *s, const tp_wait *w);
/* Async-signal- and thread-safe (one write(2) to an eventfd): asks the loop
 * to stop gracefully; a second call ends the grace period at once. May be
 * called before tp_server_run (which then returns at once). */
void tp_server_stop(tp_server *s);
/* The bound addresses, "127.0.0.1:8443", "[::1]:8443", "unix:/path";
 * index < count. */
int tp_server_address_count(const tp_server *s);
const char *tp_server_address(const tp_server *s, int i);
const char *tp_server_error(const tp_server *s);
/* Closes what is left (never the caller's fd:N sockets) and frees. Not
 * while tp_server_run runs in another thread. */
void tp_server_free(tp_server *s);

#ifdef __cplusplus
}
#endif
#endif
