/*
 * server.c -- tp_server: many TLS connections in one epoll loop.
 *
 * Each accepted connection is a session that moves through phases:
 *
 *   HANDSHAKE -> (CONNECTING, backend only) -> PUMPING -> CLOSING -> LINGER
 *             -> REAPING (command only: waiting for the child's exit)
 *
 * Nothing blocks the loop: every fd is non-blocking, the handshake, the
 * backend connect and close_notify are stepped on readiness, and the pump is
 * driven through its step API. Each session has at most one deadline at a
 * time (that of its phase), kept in one binary min-heap, so thousands of
 * silent clients cost a heap entry each and never delay anyone.
 *
 * Children are reaped by waitpid(pid) only (never wait(-1): the host may have
 * children of its own), on a pidfd in the epoll set, or by WNOHANG polling
 * where pidfds are unavailable.
 *
 * The core installs no signal handler in the host process. Stop requests
 * arrive through an eventfd (tp_server_stop() is async-signal-safe) or from
 * the tp_wait.interrupted callback. Only worker processes, which are ours
 * and never return into the host, handle SIGTERM themselves.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "internal.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define LISTEN_BACKLOG 4096
#define ACCEPT_BATCH 64      /* accepts per readiness event (fairness) */
#define ACCEPT_PAUSE_MS 250  /* after EMFILE/ENFILE/ENOBUFS */
#define CLOSE_MS 1000        /* to get our close_notify out */
#define LINGER_MS 1000       /* to read what the peer still sends */
#define CHILD_TERM_MS 1000   /* after EOF on stdin, before SIGTERM */
#define CHILD_KILL_MS 1000   /* after SIGTERM, before SIGKILL */
#define REAP_POLL_MS 20      /* WNOHANG polling without pidfds */
#define WORKER_EXTRA_MS 6000 /* workers' bound after the grace period */
#define MAX_EVENTS 256
#define MAX_WORKERS 256

/* ---- small helpers ------------------------------------------------------ */

enum watch_kind {
    W_LISTEN = 1,
    W_STOP,
    W_PARENT, /* worker: the pipe from the parent; EOF = stop */
    W_WORKER, /* parent: a worker's pidfd */
    W_TLS,
    W_TARGET,
    W_CHILD, /* a session's child's pidfd */
    W_EXIT,  /* the child's own pidfd, watched by its pump */
};

/* One fd in the epoll set. events is what is registered (0: not in the
 * set); the fd is removed rather than kept with no events, because
 * EPOLLHUP/EPOLLERR are reported regardless and would spin. */
typedef struct watch {
    int kind;
    int fd;
    uint32_t events;
    void *obj;
} watch;

enum phase {
    P_HANDSHAKE = 1,
    P_CONNECTING,
    P_PUMPING,
    P_CLOSING,
    P_LINGER,
    P_REAPING,
};

typedef struct session {
    struct session *prev, *next; /* all live sessions */
    struct session *dead_next;   /* freed after the current batch */
    struct session *rq_prev, *rq_next; /* run queue: a pump with work left */
    int rq_in;
    int phase;
    int dead;

    int fd; /* the accepted socket; -1 once closed */
    tp_conn *conn;
    tp_pump *pump;
    tp_child *child;
    int target_fd;   /* backend socket (ours) or the child's fd (the child's) */
    int backend_ai;  /* index of the backend address being tried */
    int pidfd;       /* our pidfd on the child, after the pump ended */
    int child_stage; /* 0 EOF sent, 1 SIGTERM sent, 2 SIGKILL sent */
    int64_t stage_at;

    watch w_tls, w_target, w_child, w_exit;

    int64_t start_ms;
    int64_t deadline; /* -1: none */
    int heap_idx;     /* -1: not in the heap */

    tp_pump_stats stats;
    int exit_status;            /* from waitpid; -1 unknown or no child */
    tp_end tls_end, target_end; /* when no pump ran */
    char peer[80];
    char version[16];
    char cipher[64];
    char *subject;
    char error[320];
} session;

typedef struct listener {
    int fd;
    int owned;       /* opened by us: closed on stop */
    int orig_flags;  /* fd:N: file status flags to restore */
    char *unix_path; /* unlinked on stop if still ours */
    dev_t dev;
    ino_t ino;
    char addr[160];
    watch w;
} listener;

typedef struct backend_addr {
    struct sockaddr_storage sa;
    socklen_t len;
} backend_addr;

struct tp_server {
    tp_ctx *ctx;
    char **command;
    char *backend;
    backend_addr *bk;
    int nbk;
    int max_conns, hs_ms, idle_ms, grace_ms, workers, log_fd, log_json;
    int log_is_socket;

    listener *ls;
    int nls;
    int listening; /* listeners are in the epoll set */
    int stop_fd;
    int ep;
    int ran;
    char error[512];

    /* loop state */
    session *all;
    session *dead;
    session *runq; /* stepped again right after this batch of events */
    int nsessions, nlive;
    session **heap;
    int heap_n, heap_cap;
    int paused_err;
    int64_t resume_at;
    int stopping, aborted, interrupted;
    int64_t grace_at;
    uint64_t stops;
    uint64_t served;
    watch w_stop;

    /* workers */
    int is_worker;
    int parent_fd; /* worker: read end of the parent's pipe */
    watch w_parent;
    int wpipe_w; /* parent: write end, closed to tell workers to stop */
    pid_t wpid[MAX_WORKERS];
    int wpidfd[MAX_WORKERS];
    watch wwatch[MAX_WORKERS];
    int nworkers; /* still running */
    int wpoll;    /* a worker without pidfd: poll with WNOHANG */
    int workers_killed;
};

static void set_err(tp_server *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_err(tp_server *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->error, sizeof s->error, fmt, ap);
    va_end(ap);
}

static void sess_err(session *x, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void sess_err(session *x, const char *fmt, ...)
{
    if (x->error[0])
        return; /* the first error is the cause */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->error, sizeof x->error, fmt, ap);
    va_end(ap);
}

static void close_keep_errno(int fd)
{
    int e = errno;
    close(fd);
    errno = e;
}

static char *xstrdup(const char *p)
{
    return p ? strdup(p) : NULL;
}

/* "1.2.3.4:5", "[::1]:5", "unix:/path", "unix:@abstract", "unix:" */
static void format_addr(const struct sockaddr *sa, socklen_t len, char *out,
                        size_t outlen)
{
    char host[INET6_ADDRSTRLEN];
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        snprintf(out, outlen, "%s:%u", host, ntohs(a->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        snprintf(out, outlen, "[%s]:%u", host, ntohs(a->sin6_port));
    } else if (sa->sa_family == AF_UNIX) {
        const struct sockaddr_un *a = (const struct sockaddr_un *)sa;
        size_t off = offsetof(struct sockaddr_un, sun_path);
        size_t n = len > off ? len - off : 0;
        if (n == 0)
            snprintf(out, outlen, "unix:");
        else if (a->sun_path[0] == '\0')
            snprintf(out, outlen, "unix:@%.*s", (int)(n - 1), a->sun_path + 1);
        else
            snprintf(out, outlen, "unix:%.*s", (int)strnlen(a->sun_path, n),
                     a->sun_path);
    } else {
        snprintf(out, outlen, "family %d", sa->sa_family);
    }
}

/*
 * Splits "HOST:PORT" / "[V6]:PORT" / ":PORT" into host (NULL for any) and
 * port. Returns 0 or -1 with the reason.
 */
static int split_hostport(const char *spec, char *host, size_t hostlen,
                          char *port, size_t portlen, char *why, size_t whylen)
{
    const char *colon;
    const char *h = spec;
    size_t hl;
    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (!close || close[1] != ':') {
            tp__errbuf(why, whylen, "expected [IPv6]:PORT");
            return -1;
        }
        h = spec + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(spec, ':');
        if (!colon) {
            tp__errbuf(why, whylen,
                       "expected HOST:PORT, [IPv6]:PORT, unix:PATH or fd:N");
            return -1;
        }
        if (memchr(spec, ':', (size_t)(colon - spec))) {
            tp__errbuf(why, whylen,
                       "an IPv6 address needs brackets: [ADDR]:PORT");
            return -1;
        }
        hl = (size_t)(colon - spec);
    }
    const char *p = colon + 1;
    if (!*p) {
        tp__errbuf(why, whylen, "missing port");
        return -1;
    }
    if (hl >= hostlen || strlen(p) >= portlen) {
        tp__errbuf(why, whylen, "address too long");
        return -1;
    }
    memcpy(host, h, hl);
    host[hl] = '\0';
    if (strcmp(host, "*") == 0)
        host[0] = '\0';
    strcpy(port, p);
    return 0;
}

/* A unix: address into sa; 0 or -1 with the reason. */
static int unix_addr(const char *path, struct sockaddr_un *sa, socklen_t *len,
                     char *why, size_t whylen)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n == 0) {
        tp__errbuf(why, whylen, "empty path");
        return -1;
    }
    if (n >= sizeof sa->sun_path) {
        tp__errbuf(why, whylen, "path longer than %zu bytes",
                   sizeof sa->sun_path - 1);
        return -1;
    }
    memcpy(sa->sun_path, path, n);
    if (path[0] == '@') /* Linux abstract namespace */
        sa->sun_path[0] = '\0';
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n +
                       (path[0] == '@' ? 0 : 1));
    return 0;
}

/* ---- listeners ---------------------------------------------------------- */

static listener *add_listener(tp_server *s)
{
    listener *n = realloc(s->ls, (size_t)(s->nls + 1) * sizeof *n);
    if (!n)
        return NULL;
    s->ls = n;
    listener *l = &s->ls[s->nls++];
    memset(l, 0, sizeof *l);
    l->fd = -1;
    l->orig_flags = -1;
    return l;
}

static void listener_addr(listener *l)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(l->fd, (struct sockaddr *)&ss, &sl) == 0)
        format_addr((struct sockaddr *)&ss, sl, l->addr, sizeof l->addr);
    else
        snprintf(l->addr, sizeof l->addr, "fd:%d", l->fd);
}

static int listen_fd_spec(tp_server *s, const char *spec)
{
    char *end;
    errno = 0;
    long n = strtol(spec + 3, &end, 10);
    if (errno || *end || end == spec + 3 || n < 0 || n > INT_MAX) {
        set_err(s, "cannot listen on %s: bad file descriptor number", spec);
        return -1;
    }
    int fd = (int)n;
    int acc = 0;
    socklen_t al = sizeof acc;
    char why[TP__ERRLEN];
    if (tp__check_fd(fd, why, sizeof why) < 0) {
        set_err(s, "cannot listen on %s: %s", spec, why);
        return -1;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &al) < 0 || !acc) {
        set_err(s, "cannot listen on %s: not a listening socket", spec);
        return -1;
    }
    listener *l = add_listener(s);
    if (!l) {
        set_err(s, "out of memory");
        return -1;
    }
    l->fd = fd;
    l->owned = 0;
    /* A worker may lose the race for a connection: accept must not block.
     * The caller's flags are restored by tp_server_free(). */
    l->orig_flags = fcntl(fd, F_GETFL);
    if (!(l->orig_flags & O_NONBLOCK))
        fcntl(fd, F_SETFL, l->orig_flags | O_NONBLOCK);
    listener_addr(l);
    return 0;
}

static int listen_unix(tp_server *s, const char *spec)
{
    const char *path = spec + 5;
    struct sockaddr_un sa;
    socklen_t len;
    char why[128];
    if (unix_addr(path, &sa, &len, why, sizeof why) < 0) {
        set_err(s, "cannot listen on %s: %s", spec, why);
        return -1;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        set_err(s, "cannot listen on %s: %s", spec, strerror(errno));
        return -1;
    }
    int r = bind(fd, (struct sockaddr *)&sa, len);
    if (r < 0 && errno == EADDRINUSE && path[0] != '@') {
        /* A stale socket file from a dead server is replaced; a live one
         * (connect succeeds) or a non-socket is an error. */
        struct stat st;
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe >= 0 && lstat(path, &st) == 0 && S_ISSOCK(st.st_mode) &&
            connect(probe, (struct sockaddr *)&sa, len) < 0 &&
            errno == ECONNREFUSED) {
            unlink(path);
            r = bind(fd, (struct sockaddr *)&sa, len);
        } else {
            errno = EADDRINUSE;
        }
        if (probe >= 0)
            close_keep_errno(probe);
    }
    if (r < 0 || listen(fd, LISTEN_BACKLOG) < 0) {
        set_err(s, "cannot listen on %s: %s", spec, strerror(errno));
        close(fd);
        return -1;
    }
    listener *l = add_listener(s);
    if (!l) {
        close(fd);
        set_err(s, "out of memory");
        return -1;
    }
    l->fd = fd;
    l->owned = 1;
    if (path[0] != '@') {
        struct stat st;
        l->unix_path = strdup(path);
        if (stat(path, &st) == 0) {
            l->dev = st.st_dev;
            l->ino = st.st_ino;
        }
    }
    snprintf(l->addr, sizeof l->addr, "unix:%s", path);
    return 0;
}

static int listen_inet(tp_server *s, const char *spec)
{
    char host[256], port[64], why[128];
    if (split_hostport(spec, host, sizeof host, port, sizeof port, why,
                       sizeof why) < 0) {
        set_err(s, "cannot listen on %s: bad address: %s", spec, why);
        return -1;
    }
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    hints.ai_family = AF_UNSPEC;
    int g = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (g != 0) {
        set_err(s, "cannot listen on %s: %s", spec,
                g == EAI_SYSTEM ? strerror(errno) : gai_strerror(g));
        return -1;
    }
    int bound = 0, first_errno = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        int fd = socket(ai->ai_family,
                        SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            if (!first_errno)
                first_errno = errno;
            continue;
        }
        int one = 1;
        /* Restart while old connections sit in TIME_WAIT. Not
         * SO_REUSEPORT: a second server on the port must fail loudly. */
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (ai->ai_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 ||
            listen(fd, LISTEN_BACKLOG) < 0) {
            int e = errno;
            close(fd);
            /* "localhost" may name ::1 on a host without IPv6: skip an
             * address family the host cannot use when another bound. */
            if (e == EADDRNOTAVAIL || e == EAFNOSUPPORT) {
                if (!first_errno)
                    first_errno = e;
                continue;
            }
            freeaddrinfo(res);
            set_err(s, "cannot listen on %s: %s", spec, strerror(e));
            return -1;
        }
        listener *l = add_listener(s);
        if (!l) {
            close(fd);
            freeaddrinfo(res);
            set_err(s, "out of memory");
            return -1;
        }
        l->fd = fd;
        l->owned = 1;
        listener_addr(l);
        bound++;
    }
    freeaddrinfo(res);
    if (!bound) {
        set_err(s, "cannot listen on %s: %s", spec,
                first_errno ? strerror(first_errno) : "no usable address");
        return -1;
    }
    return 0;
}

static void close_listeners(tp_server *s, int parent)
{
    for (int i = 0; i < s->nls; i++) {
        listener *l = &s->ls[i];
        if (l->fd < 0)
            continue;
        if (l->w.events && s->ep >= 0)
            epoll_ctl(s->ep, EPOLL_CTL_DEL, l->fd, NULL);
        l->w.events = 0;
        if (l->owned) {
            close(l->fd);
            /* Only the process that bound it removes the socket file, and
             * only if it is still ours (not replaced by a new server). */
            struct stat st;
            if (parent && l->unix_path && stat(l->unix_path, &st) == 0 &&
                st.st_dev == l->dev && st.st_ino == l->ino)
                unlink(l->unix_path);
        } else if (parent && l->orig_flags >= 0) {
            fcntl(l->fd, F_SETFL, l->orig_flags);
        }
        l->fd = -1;
    }
    s->listening = 0;
}

/* ---- options, creation -------------------------------------------------- */

void tp_server_options_init(tp_server_options *o)
{
    memset(o, 0, sizeof *o);
    o->max_conns = 1024;
    o->handshake_timeout_ms = 10000;
    o->idle_timeout_ms = 0;
    o->grace_ms = 10000;
    o->workers = 1;
    o->log_fd = 2;
    o->log_json = 0;
}

static int resolve_backend(tp_server *s, const char *spec)
{
    if (strncmp(spec, "unix:", 5) == 0) {
        struct sockaddr_un sa;
        socklen_t len;
        char why[128];
        if (unix_addr(spec + 5, &sa, &len, why, sizeof why) < 0) {
            set_err(s, "bad backend address %s: %s", spec, why);
            return -1;
        }
        s->bk = calloc(1, sizeof *s->bk);
        if (!s->bk) {
            set_err(s, "out of memory");
            return -1;
        }
        memcpy(&s->bk[0].sa, &sa, len);
        s->bk[0].len = len;
        s->nbk = 1;
        return 0;
    }
    char host[256], port[64], why[128];
    if (split_hostport(spec, host, sizeof host, port, sizeof port, why,
                       sizeof why) < 0) {
        set_err(s, "bad backend address %s: %s", spec, why);
        return -1;
    }
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    /* Resolved once, here: getaddrinfo() blocks, the loop must not. */
    int g = getaddrinfo(host[0] ? host : "127.0.0.1", port, &hints, &res);
    if (g != 0) {
        set_err(s, "bad backend address %s: %s", spec,
                g == EAI_SYSTEM ? strerror(errno) : gai_strerror(g));
        return -1;
    }
    int n = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
        n++;
    s->bk = calloc((size_t)n, sizeof *s->bk);
    if (!s->bk) {
        freeaddrinfo(res);
        set_err(s, "out of memory");
        return -1;
    }
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if (ai->ai_addrlen > sizeof s->bk[0].sa)
            continue;
        memcpy(&s->bk[s->nbk].sa, ai->ai_addr, ai->ai_addrlen);
        s->bk[s->nbk++].len = ai->ai_addrlen;
    }
    freeaddrinfo(res);
    return 0;
}

tp_server *tp_server_new(tp_ctx *ctx, const tp_server_options *o, char *errbuf,
                         size_t errlen)
{
    tp__errbuf(errbuf, errlen, "%s", "");
    tp_server_options defaults;
    if (!o) {
        tp_server_options_init(&defaults);
        o = &defaults;
    }
    if (!ctx || tp_ctx_role(ctx) != TP_SERVER) {
        tp__errbuf(errbuf, errlen, "a server context is required");
        return NULL;
    }
    int has_cmd = o->command && o->command[0] && o->command[0][0];
    if (has_cmd == !!(o->backend && *o->backend)) {
        tp__errbuf(errbuf, errlen,
                   has_cmd ? "give either a command or a backend, not both"
                           : "a command or a backend is required");
        return NULL;
    }
    if (o->max_conns < 1 || o->handshake_timeout_ms < 0 ||
        o->idle_timeout_ms < 0 || o->grace_ms < 0) {
        tp__errbuf(errbuf, errlen, "max_conns must be >= 1 and timeouts >= 0");
        return NULL;
    }
    if (o->workers < 1 || o->workers > MAX_WORKERS) {
        tp__errbuf(errbuf, errlen, "workers must be between 1 and %d",
                   MAX_WORKERS);
        return NULL;
    }
    if (o->log_fd >= 0 && tp__check_fd(o->log_fd, NULL, 0) < 0) {
        tp__errbuf(errbuf, errlen, "log fd %d is not open", o->log_fd);
        return NULL;
    }

    tp_server *s = calloc(1, sizeof *s);
    if (!s) {
        tp__errbuf(errbuf, errlen, "out of memory");
        return NULL;
    }
    s->ep = -1;
    s->stop_fd = -1;
    s->parent_fd = -1;
    s->wpipe_w = -1;
    s->max_conns = o->max_conns;
    s->hs_ms = o->handshake_timeout_ms;
    s->idle_ms = o->idle_timeout_ms;
    s->grace_ms = o->grace_ms;
    s->workers = o->workers;
    s->log_fd = o->log_fd;
    s->log_json = o->log_json;
    s->log_is_socket = o->log_fd >= 0 && tp__is_socket(o->log_fd);
    s->ctx = tp_ctx_ref(ctx);

    if (has_cmd) {
        int n = 0;
        while (o->command[n])
            n++;
        s->command = calloc((size_t)n + 1, sizeof *s->command);
        if (!s->command)
            goto oom;
        for (int i = 0; i < n; i++)
            if (!(s->command[i] = strdup(o->command[i])))
                goto oom;
    } else {
        if (!(s->backend = strdup(o->backend)))
            goto oom;
        if (resolve_backend(s, o->backend) < 0)
            goto fail;
    }

    static const char *const default_listen[] = {"127.0.0.1:8443", NULL};
    const char *const *L =
        o->listen && o->listen[0] ? o->listen : default_listen;
    for (int i = 0; L[i]; i++) {
        const char *spec = L[i];
        int r;
        if (strncmp(spec, "unix:", 5) == 0)
            r = listen_unix(s, spec);
        else if (strncmp(spec, "fd:", 3) == 0)
            r = listen_fd_spec(s, spec);
        else
            r = listen_inet(s, spec);
        if (r < 0)
            goto fail;
    }

    s->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->stop_fd < 0) {
        set_err(s, "eventfd: %s", strerror(errno));
        goto fail;
    }
    return s;

oom:
    set_err(s, "out of memory");
fail:
    tp__errbuf(errbuf, errlen, "%s", s->error);
    tp_server_free(s);
    return NULL;
}

int tp_server_address_count(const tp_server *s)
{
    return s ? s->nls : 0;
}

const char *tp_server_address(const tp_server *s, int i)
{
    if (!s || i < 0 || i >= s->nls)
        return NULL;
    return s->ls[i].addr;
}

const char *tp_server_error(const tp_server *s)
{
    return s ? s->error : "";
}

void tp_server_stop(tp_server *s)
{
    /* Only write(2): callable from a signal handler or another thread. */
    if (!s || s->stop_fd < 0)
        return;
    uint64_t one = 1;
    int e = errno;
    ssize_t r = write(s->stop_fd, &one, sizeof one);
    (void)r;
    errno = e;
}

/* ---- logging ------------------------------------------------------------ */

typedef struct lbuf {
    char b[4096];
    size_t n;
} lbuf;

static void lb_add(lbuf *l, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void lb_add(lbuf *l, const char *fmt, ...)
{
    if (l->n >= sizeof l->b - 1)
        return;
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(l->b + l->n, sizeof l->b - l->n, fmt, ap);
    va_end(ap);
    if (r > 0)
        l->n +=
            (size_t)r < sizeof l->b - l->n ? (size_t)r : sizeof l->b - l->n - 1;
}

/* A quoted string with JSON escapes (", \, control characters): valid in
 * a JSON line and unambiguous in a text line. */
static void lb_str(lbuf *l, const char *v)
{
    lb_add(l, "\"");
    for (const unsigned char *p = (const unsigned char *)(v ? v : ""); *p;
         p++) {
        if (*p == '"' || *p == '\\')
            lb_add(l, "\\%c", *p);
        else if (*p == '\n')
            lb_add(l, "\\n");
        else if (*p < 0x20 || *p == 0x7f)
            lb_add(l, "\\u%04x", *p);
        else
            lb_add(l, "%c", *p);
    }
    lb_add(l, "\"");
}

static void lb_time(lbuf *l)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    char t[32];
    strftime(t, sizeof t, "%Y-%m-%dT%H:%M:%S", &tm);
    if (l->b[0] == '{' && l->n == 1)
        lb_add(l, "\"time\":\"%s.%03ldZ\",\"pid\":%ld", t, ts.tv_nsec / 1000000,
               (long)getpid());
    else
        lb_add(l, "%s.%03ldZ tlspump[%ld]: ", t, ts.tv_nsec / 1000000,
               (long)getpid());
}

static void lb_begin(tp_server *s, lbuf *l)
{
    l->n = 0;
    l->b[0] = '\0';
    if (s->log_json)
        lb_add(l, "{");
    lb_time(l);
}

static void lb_emit(tp_server *s, lbuf *l)
{
    if (s->log_json)
        lb_add(l, "}");
    if (l->n >= sizeof l->b - 1)
        l->n = sizeof l->b - 2;
    l->b[l->n++] = '\n';
    /* One write per line: lines from workers sharing the fd do not mix. */
    size_t off = 0;
    while (off < l->n) {
        ssize_t r = tp__write_nosig(s->log_fd, l->b + off, l->n - off,
                                    s->log_is_socket);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break; /* a broken log must not stop the server */
        off += (size_t)r;
    }
}

/* A free-form event ("stopped", "accept failed ..."). */
static void log_event(tp_server *s, const char *event, const char *text)
{
    if (s->log_fd < 0)
        return;
    lbuf l;
    lb_begin(s, &l);
    if (s->log_json) {
        lb_add(&l, ",\"event\":");
        lb_str(&l, event);
        if (text) {
            lb_add(&l, ",\"message\":");
            lb_str(&l, text);
        }
    } else {
        lb_add(&l, "%s%s%s", event, text ? ": " : "", text ? text : "");
    }
    lb_emit(s, &l);
}

static void log_start(tp_server *s)
{
    if (s->log_fd < 0)
        return;
    const char *fp =
        tp_ctx_is_ephemeral(s->ctx) ? tp_ctx_fingerprint(s->ctx) : NULL;
    lbuf l;
    lb_begin(s, &l);
    if (s->log_json) {
        lb_add(&l, ",\"event\":\"listening\",\"addresses\":[");
        for (int i = 0; i < s->nls; i++) {
            if (i)
                lb_add(&l, ",");
            lb_str(&l, s->ls[i].addr);
        }
        lb_add(&l, "]");
        if (fp)
            lb_add(&l, ",\"fingerprint\":\"sha256:%s\"", fp);
        lb_add(&l, ",\"workers\":%d", s->workers);
    } else {
        lb_add(&l, "listening on ");
        for (int i = 0; i < s->nls; i++)
            lb_add(&l, "%s%s", i ? ", " : "", s->ls[i].addr);
        if (fp)
            lb_add(&l, ", fingerprint sha256:%s", fp);
        if (s->workers > 1)
            lb_add(&l, ", %d workers", s->workers);
    }
    lb_emit(s, &l);
}

static const char *end_name(tp_end e)
{
    return e == TP_END_NONE ? "none" : tp_end_name(e);
}

static void log_session(tp_server *s, session *x)
{
    if (s->log_fd < 0)
        return;
    const tp_pump_stats *st = &x->stats;
    double secs = (double)(tp__now_ms() - x->start_ms) / 1000.0;
    char err[700];
    if (x->error[0])
        tp__strlcpy(err, x->error, sizeof err);
    else if (st->tls_error[0] && st->target_error[0])
        snprintf(err, sizeof err, "tls: %s; target: %s", st->tls_error,
                 st->target_error);
    else if (st->tls_error[0])
        snprintf(err, sizeof err, "tls: %s", st->tls_error);
    else if (st->target_error[0])
        snprintf(err, sizeof err, "target: %s", st->target_error);
    else
        err[0] = '\0';
    int have_exit = x->exit_status != -1 && WIFEXITED(x->exit_status);
    int have_sig = x->exit_status != -1 && WIFSIGNALED(x->exit_status);

    lbuf l;
    lb_begin(s, &l);
    if (s->log_json) {
        lb_add(&l, ",\"event\":\"end\",\"peer\":");
        lb_str(&l, x->peer);
        lb_add(&l, ",\"version\":");
        if (x->version[0])
            lb_str(&l, x->version);
        else
            lb_add(&l, "null");
        lb_add(&l, ",\"cipher\":");
        if (x->cipher[0])
            lb_str(&l, x->cipher);
        else
            lb_add(&l, "null");
        lb_add(&l,
               ",\"bytes_in\":%llu,\"bytes_out\":%llu,\"seconds\":%.3f,"
               "\"tls_end\":\"%s\",\"target_end\":\"%s\"",
               (unsigned long long)st->to_target,
               (unsigned long long)st->to_tls, secs, end_name(st->tls_end),
               end_name(st->target_end));
        if (have_exit)
            lb_add(&l, ",\"exit\":%d", WEXITSTATUS(x->exit_status));
        else if (have_sig)
            lb_add(&l, ",\"signal\":%d", WTERMSIG(x->exit_status));
        if (x->subject) {
            lb_add(&l, ",\"subject\":");
            lb_str(&l, x->subject);
        }
        if (err[0]) {
            lb_add(&l, ",\"error\":");
            lb_str(&l, err);
        }
    } else {
        lb_add(&l,
               "%s %s %s in=%llu out=%llu time=%.3fs tls_end=%s "
               "target_end=%s",
               x->peer, x->version[0] ? x->version : "-",
               x->cipher[0] ? x->cipher : "-",
               (unsigned long long)st->to_target,
               (unsigned long long)st->to_tls, secs, end_name(st->tls_end),
               end_name(st->target_end));
        if (have_exit)
            lb_add(&l, " exit=%d", WEXITSTATUS(x->exit_status));
        else if (have_sig)
            lb_add(&l, " signal=%d", WTERMSIG(x->exit_status));
        if (x->subject) {
            lb_add(&l, " subject=");
            lb_str(&l, x->subject);
        }
        if (err[0]) {
            lb_add(&l, " error=");
            lb_str(&l, err);
        }
    }
    lb_emit(s, &l);
}

/* ---- epoll watches, timers ---------------------------------------------- */

static uint32_t to_epoll(short ev)
{
    return ((ev & POLLIN) ? EPOLLIN : 0) | ((ev & POLLOUT) ? EPOLLOUT : 0);
}

/* Registers w for ev (0: removes it). Changes the set only on a change. */
static void watch_set(tp_server *s, watch *w, uint32_t ev)
{
    if (w->fd < 0 || ev == w->events)
        return;
    struct epoll_event e = {.events = ev, .data.ptr = w};
    int op = !w->events ? EPOLL_CTL_ADD : !ev ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
    if (epoll_ctl(s->ep, op, w->fd, &e) < 0 && op == EPOLL_CTL_MOD &&
        errno == ENOENT)
        epoll_ctl(s->ep, EPOLL_CTL_ADD, w->fd, &e);
    w->events = ev;
}

static void watch_init(watch *w, int kind, int fd, void *obj)
{
    w->kind = kind;
    w->fd = fd;
    w->events = 0;
    w->obj = obj;
}

static void watch_close(tp_server *s, watch *w)
{
    watch_set(s, w, 0);
    w->fd = -1;
}

static void heap_swap(tp_server *s, int i, int j)
{
    session *t = s->heap[i];
    s->heap[i] = s->heap[j];
    s->heap[j] = t;
    s->heap[i]->heap_idx = i;
    s->heap[j]->heap_idx = j;
}

static void heap_up(tp_server *s, int i)
{
    while (i > 0) {
        int p = (i - 1) / 2;
        if (s->heap[p]->deadline <= s->heap[i]->deadline)
            break;
        heap_swap(s, i, p);
        i = p;
    }
}

static void heap_down(tp_server *s, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < s->heap_n && s->heap[l]->deadline < s->heap[m]->deadline)
            m = l;
        if (r < s->heap_n && s->heap[r]->deadline < s->heap[m]->deadline)
            m = r;
        if (m == i)
            break;
        heap_swap(s, i, m);
        i = m;
    }
}

static void timer_clear(tp_server *s, session *x)
{
    int i = x->heap_idx;
    x->deadline = -1;
    if (i < 0)
        return;
    x->heap_idx = -1;
    s->heap_n--;
    if (i == s->heap_n)
        return;
    s->heap[i] = s->heap[s->heap_n];
    s->heap[i]->heap_idx = i;
    heap_up(s, i);
    heap_down(s, s->heap[i]->heap_idx);
}

/* Sets x's one deadline (absolute ms; < 0 removes it). */
static void timer_set(tp_server *s, session *x, int64_t at)
{
    if (at < 0) {
        timer_clear(s, x);
        return;
    }
    if (x->heap_idx < 0) {
        if (s->heap_n == s->heap_cap) {
            int cap = s->heap_cap ? s->heap_cap * 2 : 64;
            session **h = realloc(s->heap, (size_t)cap * sizeof *h);
            if (!h)
                return; /* no timer; the session still ends by I/O */
            s->heap = h;
            s->heap_cap = cap;
        }
        x->deadline = at;
        x->heap_idx = s->heap_n;
        s->heap[s->heap_n++] = x;
        heap_up(s, x->heap_idx);
        return;
    }
    int64_t old = x->deadline;
    x->deadline = at;
    if (at < old)
        heap_up(s, x->heap_idx);
    else if (at > old)
        heap_down(s, x->heap_idx);
}

/* ---- accepting ---------------------------------------------------------- */

static void listeners_arm(tp_server *s, int on)
{
    if (on == s->listening)
        return;
    for (int i = 0; i < s->nls; i++) {
        listener *l = &s->ls[i];
        if (l->fd < 0)
            continue;
        /* EPOLLEXCLUSIVE: with workers sharing the socket, one process is
         * woken per connection instead of all of them. */
        watch_set(s, &l->w,
                  on ? (EPOLLIN | (s->workers > 1 ? EPOLLEXCLUSIVE : 0)) : 0);
    }
    s->listening = on;
}

/* Accepting resumes when a connection ends (an fd and a slot are free) or
 * after the pause that an accept error began. */
static void maybe_resume_accept(tp_server *s)
{
    if (s->stopping || s->listening || s->nlive >= s->max_conns)
        return;
    s->paused_err = 0;
    listeners_arm(s, 1);
}

static void hs_step(tp_server *s, session *x);
static void runq_del(tp_server *s, session *x);
static void tls_close(tp_server *s, session *x);
static void set_ends(session *x, tp_end tls, tp_end target);

static void session_new(tp_server *s, int fd, struct sockaddr *sa, socklen_t sl)
{
    session *x = calloc(1, sizeof *x);
    if (!x) {
        close(fd);
        return;
    }
    x->fd = fd;
    x->target_fd = -1;
    x->pidfd = -1;
    x->exit_status = -1;
    x->heap_idx = -1;
    x->deadline = -1;
    x->start_ms = tp__now_ms();
    x->phase = P_HANDSHAKE;
    format_addr(sa, sl, x->peer, sizeof x->peer);
    watch_init(&x->w_tls, W_TLS, fd, x);
    watch_init(&x->w_target, W_TARGET, -1, x);
    watch_init(&x->w_child, W_CHILD, -1, x);
    watch_init(&x->w_exit, W_EXIT, -1, x);
    if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    x->next = s->all;
    if (s->all)
        s->all->prev = x;
    s->all = x;
    s->nsessions++;
    s->nlive++;

    char err[TP__ERRLEN];
    x->conn = tp_conn_new(s->ctx, fd, NULL, err, sizeof err);
    if (!x->conn) {
        sess_err(x, "%s", err);
        set_ends(x, TP_END_ERROR, TP_END_NONE);
        tls_close(s, x);
        return;
    }
    if (s->hs_ms > 0)
        timer_set(s, x, x->start_ms + s->hs_ms);
    /* The ClientHello may already be here. */
    hs_step(s, x);
}

static void on_accept(tp_server *s, listener *l)
{
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        if (s->nlive >= s->max_conns) {
            listeners_arm(s, 0); /* resumed when a connection ends */
            return;
        }
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &sl,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            session_new(s, fd, (struct sockaddr *)&ss, sl);
            continue;
        }
        switch (errno) {
        case EINTR:
        case ECONNABORTED:
        case EPROTO:
        case EPERM:
            continue;
        case EAGAIN:
            return;
        default: {
            /* EMFILE, ENFILE, ENOBUFS, ENOMEM, ...: the connection stays
             * in the backlog and the socket stays readable; stop watching
             * it for a while instead of spinning. */
            char text[400];
            snprintf(text, sizeof text,
                     "accept on %s failed: %s; pausing %d ms (%d open "
                     "connections)",
                     l->addr, strerror(errno), ACCEPT_PAUSE_MS, s->nlive);
            if (!s->paused_err)
                log_event(s, "warning", text);
            s->paused_err = 1;
            s->resume_at = tp__now_ms() + ACCEPT_PAUSE_MS;
            listeners_arm(s, 0);
            return;
        }
        }
    }
}

/* ---- session phases ----------------------------------------------------- */

static void session_end(tp_server *s, session *x)
{
    if (x->dead)
        return;
    x->dead = 1;
    timer_clear(s, x);
    runq_del(s, x);
    log_session(s, x);
    if (x->prev)
        x->prev->next = x->next;
    else
        s->all = x->next;
    if (x->next)
        x->next->prev = x->prev;
    s->nsessions--;
    s->served++;
    x->dead_next = s->dead;
    s->dead = x;
}

static void free_dead(tp_server *s)
{
    while (s->dead) {
        session *x = s->dead;
        s->dead = x->dead_next;
        free(x->subject);
        free(x);
    }
}

/* Records how the directions ended when no pump reports it. */
static void set_ends(session *x, tp_end tls, tp_end target)
{
    if (x->stats.tls_end == TP_END_NONE)
        x->stats.tls_end = tls;
    if (x->stats.target_end == TP_END_NONE)
        x->stats.target_end = target;
}

static void child_reaped(tp_server *s, session *x, int status)
{
    x->exit_status = status;
    tp_child_free(x->child); /* reaped: frees without waiting */
    x->child = NULL;
    x->target_fd = -1;
    if (x->pidfd >= 0) {
        watch_close(s, &x->w_child);
        close(x->pidfd);
        x->pidfd = -1;
    }
}

/* Non-blocking reap attempt: 1 when the child is gone. */
static int child_try_reap(tp_server *s, session *x)
{
    if (!x->child)
        return 1;
    int status = -1;
    if (tp_child_wait(x->child, NULL, &status) != TP_DONE)
        return 0;
    child_reaped(s, x, status);
    return 1;
}

/* The pump is over: the child gets EOF on stdin (and EPIPE on stdout), and
 * its exit is watched on a pidfd of our own. */
static void target_release(tp_server *s, session *x)
{
    watch_close(s, &x->w_target);
    if (x->child) {
        shutdown(x->target_fd, SHUT_RDWR);
        if (child_try_reap(s, x))
            return;
        if (x->pidfd < 0) {
#ifdef SYS_pidfd_open
            /* The pid is still ours: not reaped yet, a zombie at worst. */
            x->pidfd = (int)syscall(SYS_pidfd_open, tp_child_pid(x->child), 0);
#endif
            if (x->pidfd >= 0) {
                watch_init(&x->w_child, W_CHILD, x->pidfd, x);
                watch_set(s, &x->w_child, EPOLLIN);
            }
        }
    } else if (x->target_fd >= 0) {
        close(x->target_fd);
        x->target_fd = -1;
    }
}

static void reap_timer(tp_server *s, session *x)
{
    int64_t at = x->stage_at;
    if (x->pidfd < 0) {
        int64_t poll_at = tp__now_ms() + REAP_POLL_MS;
        if (poll_at < at)
            at = poll_at;
    }
    timer_set(s, x, at);
}

/* The TLS side is over: free the connection, close the socket. */
static void tls_close(tp_server *s, session *x)
{
    if (x->fd >= 0) {
        watch_close(s, &x->w_tls);
        tp_conn_free(x->conn);
        x->conn = NULL;
        close(x->fd);
        x->fd = -1;
        s->nlive--;
        maybe_resume_accept(s);
    }
    if (x->child && !child_try_reap(s, x)) {
        x->phase = P_REAPING;
        x->child_stage = 0;
        x->stage_at = tp__now_ms() + CHILD_TERM_MS;
        reap_timer(s, x);
        return;
    }
    session_end(s, x);
}

static void linger_step(tp_server *s, session *x)
{
    char buf[16384];
    /* Bounded per step; the deadline bounds the phase. */
    for (int i = 0; i < 4; i++) {
        ssize_t r = recv(x->fd, buf, sizeof buf, MSG_DONTWAIT);
        if (r > 0 || (r < 0 && errno == EINTR))
            continue;
        if (r < 0 && errno == EAGAIN)
            break;
        tls_close(s, x); /* EOF or error */
        return;
    }
    watch_set(s, &x->w_tls, EPOLLIN);
}

/*
 * After our close_notify: if the peer has not closed, half-close TCP and read
 * (and discard) what it still sends for a moment, so that closing with
 * unread data does not turn into an RST that could destroy our last bytes
 * and the close_notify before the peer reads them.
 */
static void begin_linger(tp_server *s, session *x)
{
    if (x->fd < 0 || (x->conn && tp_conn_peer_closed(x->conn))) {
        tls_close(s, x);
        return;
    }
    x->phase = P_LINGER;
    shutdown(x->fd, SHUT_WR);
    timer_set(s, x, tp__now_ms() + LINGER_MS);
    linger_step(s, x);
}

static void closing_step(tp_server *s, session *x)
{
    if (!x->conn || !tp_conn_handshake_done(x->conn)) {
        tls_close(s, x);
        return;
    }
    int r = tp_conn_shutdown(x->conn, NULL);
    if (r == TP_WANT_READ || r == TP_WANT_WRITE) {
        watch_set(s, &x->w_tls, to_epoll(tp_conn_events(x->conn)));
        return;
    }
    if (r == TP_DONE)
        begin_linger(s, x);
    else
        tls_close(s, x);
}

/* Sends close_notify (bounded by CLOSE_MS), then lingers and closes. */
static void begin_closing(tp_server *s, session *x)
{
    x->phase = P_CLOSING;
    timer_set(s, x, tp__now_ms() + CLOSE_MS);
    closing_step(s, x);
}

/* The pump has sent close_notify and lingered when the session ended
 * cleanly, and deliberately sent none after a failure (a partial answer must
 * not look complete): the TLS side only has to be closed. */
/* Frees the pump and unwatches what only it watched (before the child, and
 * so its pidfd, can go). */
static void pump_release(tp_server *s, session *x)
{
    x->stats = *tp_pump_stats_get(x->pump);
    watch_close(s, &x->w_exit);
    tp_pump_free(x->pump);
    x->pump = NULL;
}

static void pump_finished(tp_server *s, session *x)
{
    pump_release(s, x);
    target_release(s, x);
    tls_close(s, x);
}

/* A pump that yielded with work left (its step budget ran out) is stepped
 * again after the current batch of events, without sleeping: a timer would
 * stall bulk transfers by a clock tick every few MiB. */
static void runq_add(tp_server *s, session *x)
{
    if (x->rq_in)
        return;
    x->rq_in = 1;
    x->rq_prev = NULL;
    x->rq_next = s->runq;
    if (s->runq)
        s->runq->rq_prev = x;
    s->runq = x;
}

static void runq_del(tp_server *s, session *x)
{
    if (!x->rq_in)
        return;
    x->rq_in = 0;
    if (x->rq_prev)
        x->rq_prev->rq_next = x->rq_next;
    else
        s->runq = x->rq_next;
    if (x->rq_next)
        x->rq_next->rq_prev = x->rq_prev;
}

static void pump_rearm(tp_server *s, session *x)
{
    struct pollfd pf[4];
    int to = -1;
    int n = tp_pump_wants(x->pump, pf, 4, &to);
    uint32_t tls = 0, target = 0, exited = 0;
    for (int i = 0; i < n; i++) {
        if (pf[i].fd == x->fd) {
            tls |= to_epoll(pf[i].events);
        } else if (pf[i].fd == x->target_fd) {
            target |= to_epoll(pf[i].events);
        } else { /* the child's pidfd (tp_pump_watch_child) */
            if (x->w_exit.fd != pf[i].fd) {
                watch_close(s, &x->w_exit);
                watch_init(&x->w_exit, W_EXIT, pf[i].fd, x);
            }
            exited = EPOLLIN;
        }
    }
    watch_set(s, &x->w_tls, tls);
    watch_set(s, &x->w_target, target);
    watch_set(s, &x->w_exit, exited);
    runq_del(s, x);
    if (to == 0) {
        timer_clear(s, x);
        runq_add(s, x);
    } else if (to > 0)
        timer_set(s, x, tp__now_ms() + to);
    else if (!tls && !target)
        timer_set(s, x, tp__now_ms() + 100); /* never stall silently */
    else
        timer_clear(s, x);
}

static void pump_step(tp_server *s, session *x)
{
    if (tp_pump_step(x->pump))
        pump_finished(s, x);
    else
        pump_rearm(s, x);
}

static void start_pump(tp_server *s, session *x)
{
    char err[TP__ERRLEN];
    x->pump = tp_pump_new(x->conn, x->target_fd, x->target_fd, err, sizeof err);
    if (!x->pump) {
        sess_err(x, "pump: %s", err);
        set_ends(x, TP_END_ERROR, TP_END_ERROR);
        target_release(s, x);
        begin_closing(s, x);
        return;
    }
    if (s->idle_ms > 0)
        tp_pump_set_idle_timeout(x->pump, s->idle_ms);
    if (x->child)
        tp_pump_watch_child(x->pump, x->child);
    x->phase = P_PUMPING;
    if (x->w_target.fd != x->target_fd) /* a backend's is registered */
        watch_init(&x->w_target, W_TARGET, x->target_fd, x);
    timer_clear(s, x);
    /* OpenSSL may already hold application data that came with the
     * handshake; no readiness event would announce it. */
    pump_step(s, x);
}

/* Environment of a child: the host's, plus what it may want to know about
 * the connection (like stunnel's and ucspi-tls's variables). */
static char **child_env(session *x, char **block)
{
    size_t n = 0;
    for (char **e = environ; e && *e; e++)
        n++;
    char **env = malloc((n + 8) * sizeof *env);
    size_t cap = 2048 + (x->subject ? strlen(x->subject) : 0);
    char *b = malloc(cap);
    if (!env || !b) {
        free(env);
        free(b);
        return NULL;
    }
    size_t k = 0, off = 0;
    for (char **e = environ; e && *e; e++)
        if (strncmp(*e, "TLSPUMP_", 8) != 0)
            env[k++] = *e;
    const char *alpn = tp_conn_alpn(x->conn);
    const char *sni = tp_conn_server_name(x->conn);
    const char *fp = x->subject ? tp_conn_peer_fingerprint(x->conn) : NULL;
    const char *names[] = {"TLSPUMP_PEER",
                           "TLSPUMP_VERSION",
                           "TLSPUMP_CIPHER",
                           "TLSPUMP_ALPN",
                           "TLSPUMP_SNI",
                           "TLSPUMP_CLIENT_SUBJECT",
                           "TLSPUMP_CLIENT_FINGERPRINT"};
    const char *vals[] = {x->peer, x->version, x->cipher, alpn,
                          sni,     x->subject, fp};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (!vals[i] || !vals[i][0])
            continue;
        int r = snprintf(b + off, cap - off, "%s=%s", names[i], vals[i]);
        if (r < 0 || (size_t)r >= cap - off)
            break;
        env[k++] = b + off;
        off += (size_t)r + 1;
    }
    env[k] = NULL;
    *block = b;
    return env;
}

static void backend_connect(tp_server *s, session *x);

static void connect_done(tp_server *s, session *x)
{
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (getsockopt(x->target_fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
        soerr = errno;
    if (soerr == 0) {
        start_pump(s, x);
        return;
    }
    char a[160];
    format_addr((struct sockaddr *)&s->bk[x->backend_ai].sa,
                s->bk[x->backend_ai].len, a, sizeof a);
    watch_close(s, &x->w_target);
    close(x->target_fd);
    x->target_fd = -1;
    if (x->backend_ai + 1 < s->nbk) {
        x->backend_ai++;
        backend_connect(s, x);
        return;
    }
    sess_err(x, "backend %s: %s", a, strerror(soerr));
    set_ends(x, TP_END_ABORTED, TP_END_ERROR);
    begin_closing(s, x);
}

static void backend_connect(tp_server *s, session *x)
{
    backend_addr *b = &s->bk[x->backend_ai];
    int fd =
        socket(b->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        sess_err(x, "backend socket: %s", strerror(errno));
        set_ends(x, TP_END_ABORTED, TP_END_ERROR);
        begin_closing(s, x);
        return;
    }
    if (b->sa.ss_family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    x->target_fd = fd;
    watch_init(&x->w_target, W_TARGET, fd, x);
    int r = connect(fd, (struct sockaddr *)&b->sa, b->len);
    if (r == 0 || errno != EINPROGRESS) {
        /* done (or failed) at once: SO_ERROR tells which */
        if (r < 0) {
            int e = errno;
            /* SO_ERROR is not set for an immediate failure */
            char a[160];
            format_addr((struct sockaddr *)&b->sa, b->len, a, sizeof a);
            close(fd);
            x->target_fd = -1;
            x->w_target.fd = -1;
            if (x->backend_ai + 1 < s->nbk) {
                x->backend_ai++;
                backend_connect(s, x);
                return;
            }
            sess_err(x, "backend %s: %s", a, strerror(e));
            set_ends(x, TP_END_ABORTED, TP_END_ERROR);
            begin_closing(s, x);
            return;
        }
        start_pump(s, x);
        return;
    }
    x->phase = P_CONNECTING;
    watch_set(s, &x->w_tls, 0);
    watch_set(s, &x->w_target, EPOLLOUT);
    if (s->hs_ms > 0)
        timer_set(s, x, tp__now_ms() + s->hs_ms);
    else
        timer_clear(s, x);
}

static void start_target(tp_server *s, session *x)
{
    tp__strlcpy(x->version, tp_conn_version(x->conn), sizeof x->version);
    tp__strlcpy(x->cipher, tp_conn_cipher(x->conn), sizeof x->cipher);
    x->subject = xstrdup(tp_conn_peer_subject(x->conn));
    timer_clear(s, x);
    if (s->backend) {
        backend_connect(s, x);
        return;
    }
    char *block = NULL;
    char **env = child_env(x, &block);
    char err[TP__ERRLEN];
    x->child = tp_spawn((const char *const *)s->command,
                        (const char *const *)env, NULL, -1, err, sizeof err);
    free(env);
    free(block);
    if (!x->child) {
        sess_err(x, "%s", err);
        set_ends(x, TP_END_ABORTED, TP_END_ERROR);
        begin_closing(s, x);
        return;
    }
    x->target_fd = tp_child_fd(x->child);
    start_pump(s, x);
}

static void hs_step(tp_server *s, session *x)
{
    int r = tp_conn_handshake(x->conn, NULL);
    if (r == TP_DONE) {
        start_target(s, x);
    } else if (r == TP_WANT_READ || r == TP_WANT_WRITE) {
        watch_set(s, &x->w_tls, to_epoll(tp_conn_events(x->conn)));
    } else {
        tp_errkind k = tp_conn_errkind(x->conn);
        sess_err(x, "%s", tp_conn_error(x->conn));
        set_ends(x, tp__end_of_errkind(k), TP_END_NONE);
        /* After a TLS failure OpenSSL has sent an alert ("certificate
         * required", "protocol version"): linger so that the client reads
         * it instead of a reset caused by its unread data. */
        if (k == TP_E_TLS)
            begin_linger(s, x);
        else
            tls_close(s, x);
    }
}

/* Stops a running session now (server stop after the grace period). */
static void session_abort(tp_server *s, session *x, const char *why)
{
    switch (x->phase) {
    case P_HANDSHAKE:
        sess_err(x, "%s", why);
        set_ends(x, TP_END_ABORTED, TP_END_NONE);
        tls_close(s, x);
        break;
    case P_CONNECTING:
        sess_err(x, "%s", why);
        set_ends(x, TP_END_ABORTED, TP_END_ABORTED);
        target_release(s, x);
        begin_closing(s, x);
        break;
    case P_PUMPING:
        pump_release(s, x);
        sess_err(x, "%s", why);
        set_ends(x, TP_END_ABORTED, TP_END_ABORTED);
        target_release(s, x);
        begin_closing(s, x);
        break;
    default:
        break; /* already ending, within its own bound */
    }
}

static void on_timeout(tp_server *s, session *x)
{
    int64_t now = tp__now_ms();
    switch (x->phase) {
    case P_HANDSHAKE:
        sess_err(x, "handshake: timed out after %d ms", s->hs_ms);
        set_ends(x, TP_END_TIMEOUT, TP_END_NONE);
        tls_close(s, x);
        break;
    case P_CONNECTING:
        sess_err(x, "backend connect: timed out after %d ms", s->hs_ms);
        set_ends(x, TP_END_ABORTED, TP_END_TIMEOUT);
        target_release(s, x);
        begin_closing(s, x);
        break;
    case P_PUMPING:
        /* The pump's own deadline (idle timeout): it ends itself. */
        pump_step(s, x);
        break;
    case P_CLOSING:
    case P_LINGER:
        tls_close(s, x);
        break;
    case P_REAPING:
        if (child_try_reap(s, x)) {
            session_end(s, x);
            return;
        }
        if (now < x->stage_at) {
            reap_timer(s, x);
            return;
        }
        if (x->child_stage == 0) {
            tp_child_kill(x->child, SIGTERM);
            x->child_stage = 1;
            x->stage_at = now + CHILD_KILL_MS;
            reap_timer(s, x);
        } else if (x->child_stage == 1) {
            tp_child_kill(x->child, SIGKILL);
            x->child_stage = 2;
            x->stage_at = now + CHILD_KILL_MS;
            reap_timer(s, x);
        } else {
            /* SIGKILLed a second ago: tp_child_free waits the rest. */
            tp_child_free(x->child);
            x->child = NULL;
            session_end(s, x);
        }
        break;
    }
}

static void session_step(tp_server *s, session *x, watch *w, uint32_t ev)
{
    if (x->dead)
        return;
    if (w->kind == W_CHILD) {
        if (child_try_reap(s, x) && x->phase == P_REAPING)
            session_end(s, x);
        return;
    }
    switch (x->phase) {
    case P_HANDSHAKE:
        hs_step(s, x);
        break;
    case P_CONNECTING:
        if (w->kind == W_TARGET)
            connect_done(s, x);
        break;
    case P_PUMPING:
        pump_step(s, x);
        break;
    case P_CLOSING:
        closing_step(s, x);
        break;
    case P_LINGER:
        if (x->fd >= 0)
            linger_step(s, x);
        else
            tls_close(s, x);
        break;
    default:
        break;
    }
}

/* ---- stop, workers ------------------------------------------------------ */

static void abort_all(tp_server *s)
{
    s->aborted = 1;
    /* session_abort may end (unlink) x itself, never another session */
    session *next;
    for (session *x = s->all; x; x = next) {
        next = x->next;
        session_abort(s, x, "server stopped");
    }
}

static void begin_stop(tp_server *s)
{
    int64_t now = tp__now_ms();
    if (!s->stopping) {
        s->stopping = 1;
        s->grace_at = now + s->grace_ms;
        close_listeners(s, !s->is_worker);
        if (s->wpipe_w >= 0) {
            close(s->wpipe_w); /* EOF: the workers stop gracefully too */
            s->wpipe_w = -1;
        }
    }
    if ((s->stops >= 2 || s->grace_ms == 0) && !s->aborted) {
        /* A second stop request: no more grace. */
        for (int i = 0; i < s->workers - 1 && !s->is_worker; i++)
            if (s->wpidfd[i] != -2 && s->wpid[i] > 0)
                kill(s->wpid[i], SIGTERM);
        abort_all(s);
    }
}

static void on_stop_fd(tp_server *s)
{
    uint64_t n = 0;
    if (read(s->stop_fd, &n, sizeof n) == sizeof n && n > 0) {
        s->stops += n;
        begin_stop(s);
    }
}

/* Worker processes: the only place the core handles a signal, because the
 * process is ours alone. */
static tp_server *worker_self;

static void worker_on_term(int sig)
{
    (void)sig;
    tp_server_stop(worker_self);
}

static void worker_reaped(tp_server *s, int i, int status)
{
    if (s->wpidfd[i] >= 0) {
        watch_close(s, &s->wwatch[i]);
        close(s->wpidfd[i]);
    }
    s->wpidfd[i] = -2; /* reaped */
    s->nworkers--;
    if (!s->stopping || (status != 0 && !s->workers_killed)) {
        char t[128];
        if (WIFSIGNALED(status))
            snprintf(t, sizeof t, "worker %ld killed by signal %d",
                     (long)s->wpid[i], WTERMSIG(status));
        else
            snprintf(t, sizeof t, "worker %ld exited with status %d",
                     (long)s->wpid[i], WEXITSTATUS(status));
        log_event(s, "warning", t);
    }
}

static void workers_poll(tp_server *s)
{
    for (int i = 0; i < s->workers - 1; i++) {
        if (s->wpidfd[i] == -2 || s->wpid[i] <= 0)
            continue;
        int st;
        pid_t r = waitpid(s->wpid[i], &st, WNOHANG);
        if (r == s->wpid[i])
            worker_reaped(s, i, st);
        else if (r < 0 && errno == ECHILD)
            worker_reaped(s, i, 0);
    }
}

/* Closes every fd a worker does not need: the host's sockets and files must
 * not be held open by a process that outlives nothing of the host. */
static void worker_close_fds(tp_server *s)
{
    int keep[8 + 64];
    int nk = 0;
    keep[nk++] = 0;
    keep[nk++] = 1;
    keep[nk++] = 2;
    if (s->log_fd > 2)
        keep[nk++] = s->log_fd;
    if (s->parent_fd >= 0)
        keep[nk++] = s->parent_fd;
    for (int i = 0; i < s->nls && nk < (int)(sizeof keep / sizeof *keep); i++)
        keep[nk++] = s->ls[i].fd;
    /* sort (tiny) */
    for (int i = 1; i < nk; i++)
        for (int j = i; j > 0 && keep[j - 1] > keep[j]; j--) {
            int t = keep[j];
            keep[j] = keep[j - 1];
            keep[j - 1] = t;
        }
    struct rlimit rl;
    unsigned max = 65536;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        max = (unsigned)rl.rlim_cur;
    unsigned lo = 0;
    for (int i = 0; i <= nk; i++) {
        unsigned hi = i < nk ? (unsigned)keep[i] : max;
        if (hi > lo) {
#ifdef SYS_close_range
            if (syscall(SYS_close_range, lo, i < nk ? hi - 1 : ~0U, 0) == 0) {
                lo = hi + 1;
                continue;
            }
#endif
            for (unsigned fd = lo; fd < hi; fd++)
                close((int)fd);
        }
        lo = hi + 1;
    }
}

static int run_loop(tp_server *s, const tp_wait *w);

/* Forks the extra workers; returns in the parent only. */
static int start_workers(tp_server *s)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        set_err(s, "pipe: %s", strerror(errno));
        return -1;
    }
    for (int i = 0; i < s->workers - 1; i++) {
        s->wpid[i] = 0;
        s->wpidfd[i] = -1;
    }
    for (int i = 0; i < s->workers - 1; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            set_err(s, "fork: %s", strerror(errno));
            close(p[0]);
            s->wpipe_w = p[1];
            return -1;
        }
        if (pid == 0) {
            /* A worker: never returns into the host. */
            s->is_worker = 1;
            s->nworkers = 0;
            s->parent_fd = p[0];
            close(p[1]);
            for (int j = 0; j < i; j++)
                if (s->wpidfd[j] >= 0)
                    close(s->wpidfd[j]);
            s->workers_killed = 0;
            worker_close_fds(s);
            /* a stop fd of its own: the parent's is shared after fork */
            s->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
            worker_self = s;
            struct sigaction sa;
            memset(&sa, 0, sizeof sa);
            sa.sa_handler = worker_on_term;
            sigemptyset(&sa.sa_mask);
            sa.sa_flags = SA_RESTART;
            sigaction(SIGTERM, &sa, NULL);
            /* Ctrl-C reaches the whole process group; the parent
             * forwards the stop. */
            signal(SIGINT, SIG_IGN);
            sigset_t set;
            sigemptyset(&set);
            sigaddset(&set, SIGTERM);
            pthread_sigmask(SIG_UNBLOCK, &set, NULL);
            int r = s->stop_fd < 0 ? TP_ERROR : run_loop(s, NULL);
            _exit(r == TP_ERROR ? 1 : 0);
        }
        s->wpid[i] = pid;
#ifdef SYS_pidfd_open
        s->wpidfd[i] = (int)syscall(SYS_pidfd_open, pid, 0);
#endif
        if (s->wpidfd[i] < 0)
            s->wpoll = 1;
        s->nworkers++;
    }
    close(p[0]);
    s->wpipe_w = p[1];
    return 0;
}

/* ---- the loop ----------------------------------------------------------- */

static int run_loop(tp_server *s, const tp_wait *w)
{
    s->ep = epoll_create1(EPOLL_CLOEXEC);
    if (s->ep < 0) {
        set_err(s, "epoll_create1: %s", strerror(errno));
        return TP_ERROR;
    }
    watch_init(&s->w_stop, W_STOP, s->stop_fd, s);
    watch_set(s, &s->w_stop, EPOLLIN);
    if (s->parent_fd >= 0) {
        watch_init(&s->w_parent, W_PARENT, s->parent_fd, s);
        watch_set(s, &s->w_parent, EPOLLIN);
    }
    for (int i = 0; i < s->workers - 1 && !s->is_worker; i++)
        if (s->wpidfd[i] >= 0) {
            watch_init(&s->wwatch[i], W_WORKER, s->wpidfd[i], s);
            watch_set(s, &s->wwatch[i], EPOLLIN);
        }
    for (int i = 0; i < s->nls; i++)
        watch_init(&s->ls[i].w, W_LISTEN, s->ls[i].fd, &s->ls[i]);
    listeners_arm(s, 1);

    int check_intr = w && w->interrupted;
    int64_t last_check = tp__now_ms();
    struct epoll_event evs[MAX_EVENTS];
    int rc = TP_DONE;

    for (;;) {
        int64_t now = tp__now_ms();
        if (s->stopping && !s->aborted && now >= s->grace_at)
            abort_all(s);
        if (s->stopping && s->nworkers > 0 && !s->workers_killed &&
            now >= s->grace_at + WORKER_EXTRA_MS) {
            for (int i = 0; i < s->workers - 1; i++)
                if (s->wpidfd[i] != -2)
                    kill(s->wpid[i], SIGKILL);
            s->workers_killed = 1;
        }
        if (s->paused_err && now >= s->resume_at)
            maybe_resume_accept(s);
        while (s->heap_n > 0 && s->heap[0]->deadline <= now) {
            session *x = s->heap[0];
            timer_clear(s, x);
            on_timeout(s, x);
        }
        free_dead(s);
        if (s->nworkers > 0 && (s->stopping || s->wpoll))
            workers_poll(s); /* hosts without pidfds poll */
        if (s->stopping && s->nsessions == 0 && s->nworkers == 0)
            break;

        /* How long to sleep: the nearest deadline of any kind. */
        int64_t next = -1;
#define NEAREST(t)                                                             \
    do {                                                                       \
        int64_t t_ = (t);                                                      \
        if (next < 0 || t_ < next)                                             \
            next = t_;                                                         \
    } while (0)
        if (s->heap_n > 0)
            NEAREST(s->heap[0]->deadline);
        if (s->paused_err)
            NEAREST(s->resume_at);
        if (s->stopping && !s->aborted)
            NEAREST(s->grace_at);
        if (s->nworkers > 0 && (s->stopping || s->wpoll))
            NEAREST(now + (s->stopping ? 50 : 1000));
        if (check_intr)
            NEAREST(last_check + TP_INTERRUPT_CHECK_MS);
#undef NEAREST
        int timeout = -1;
        if (next >= 0)
            timeout = next <= now ? 0 : (int)(next - now);
        if (s->runq)
            timeout = 0;

        int n = epoll_wait(s->ep, evs, MAX_EVENTS, timeout);
        if (n < 0 && errno != EINTR) {
            set_err(s, "epoll_wait: %s", strerror(errno));
            rc = TP_ERROR;
            abort_all(s);
            begin_stop(s);
            n = 0;
        }
        if (check_intr &&
            (n < 0 || tp__now_ms() - last_check >= TP_INTERRUPT_CHECK_MS)) {
            last_check = tp__now_ms();
            if (w->interrupted(w->arg)) {
                /* Once only: the binding's exception is now pending. */
                check_intr = 0;
                s->interrupted = 1;
                begin_stop(s);
            }
        }
        for (int i = 0; i < n; i++) {
            watch *wt = evs[i].data.ptr;
            uint32_t ev = evs[i].events;
            switch (wt->kind) {
            case W_LISTEN:
                if (!s->stopping && wt->events)
                    on_accept(s, wt->obj);
                break;
            case W_STOP:
                on_stop_fd(s);
                break;
            case W_PARENT:
                /* EOF (or anything): the parent stops or died. */
                watch_close(s, &s->w_parent);
                begin_stop(s);
                break;
            case W_WORKER:
                workers_poll(s);
                break;
            default:
                if (wt->events)
                    session_step(s, wt->obj, wt, ev);
                break;
            }
        }
        /* Pumps with work left; one that yields again is queued anew for
         * the next round, after the next batch of events. */
        session *q = s->runq;
        s->runq = NULL;
        for (session *next_x; q; q = next_x) {
            next_x = q->rq_next;
            q->rq_in = 0;
            if (!q->dead && q->phase == P_PUMPING && q->pump)
                pump_step(s, q);
        }
        free_dead(s);
    }
    if (s->interrupted && rc == TP_DONE)
        rc = TP_INTERRUPTED;
    return rc;
}

int tp_server_run(tp_server *s, const tp_wait *w)
{
    if (!s)
        return TP_ERROR;
    if (s->ran) {
        set_err(s, "the server has already run");
        return TP_ERROR;
    }
    s->ran = 1;
    log_start(s);
    if (s->workers > 1 && start_workers(s) < 0) {
        /* The workers started so far stop on the pipe's EOF. */
        log_event(s, "error", s->error);
        tp_server_stop(s);
    }
    int rc = run_loop(s, w);
    close_listeners(s, 1);
    if (s->log_fd >= 0) {
        char t[96];
        snprintf(t, sizeof t, "%llu connections",
                 (unsigned long long)s->served);
        log_event(s, "stopped", t);
    }
    if (s->error[0] && rc != TP_INTERRUPTED)
        rc = TP_ERROR;
    return rc;
}

void tp_server_free(tp_server *s)
{
    if (!s)
        return;
    close_listeners(s, !s->is_worker);
    /* Sessions are all gone after a run; only a failed run leaves any. */
    while (s->all) {
        session *x = s->all;
        s->all = x->next;
        if (x->pump)
            tp_pump_free(x->pump);
        if (x->conn)
            tp_conn_free(x->conn);
        if (x->fd >= 0)
            close(x->fd);
        if (x->child)
            tp_child_free(x->child);
        else if (x->target_fd >= 0)
            close(x->target_fd);
        if (x->pidfd >= 0)
            close(x->pidfd);
        free(x->subject);
        free(x);
    }
    free_dead(s);
    if (s->wpipe_w >= 0)
        close(s->wpipe_w);
    for (int i = 0; i < s->workers - 1 && s->ran && !s->is_worker; i++) {
        if (s->wpidfd[i] == -2 || s->wpid[i] <= 0)
            continue;
        kill(s->wpid[i], SIGKILL);
        while (waitpid(s->wpid[i], NULL, 0) < 0 && errno == EINTR)
            ;
        if (s->wpidfd[i] >= 0)
            close(s->wpidfd[i]);
    }
    if (s->ep >= 0)
        close(s->ep);
    if (s->stop_fd >= 0)
        close(s->stop_fd);
    if (s->parent_fd >= 0)
        close(s->parent_fd);
    if (s->command)
        for (char **p = s->command; *p; p++)
            free(*p);
    free(s->command);
    free(s->backend);
    free(s->bk);
    for (int i = 0; i < s->nls; i++)
        free(s->ls[i].unix_path);
    free(s->ls);
    free(s->heap);
    tp_ctx_free(s->ctx);
    free(s);
}
