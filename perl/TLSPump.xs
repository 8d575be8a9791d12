/*
 * TLSPump.xs -- the Perl binding of the tlspump core (Net::TLSPump).
 *
 * The binding has no logic of its own: each method converts its arguments,
 * calls one core function and converts the result. Waiting happens in the
 * core (tp_wait); Perl signals are honoured through tp_wait.interrupted.
 */
#define PERL_NO_GET_CONTEXT
#include "EXTERN.h"
#include "perl.h"
#include "XSUB.h"

#include <limits.h>
#include <math.h>
#include <string.h>

#include "tlspump.h"

/* The binding's readiness constants (same numbers as the Python binding). */
#define PL_DONE 0
#define PL_WANT_READ 1
#define PL_WANT_WRITE 2

#define CTX_CLASS "Net::TLSPump::Context"
#define CONN_CLASS "Net::TLSPump::Conn"
#define CHILD_CLASS "Net::TLSPump::Child"
#define SERVER_CLASS "Net::TLSPump::Server"

/* After forward() ends, how long to wait for a Child target to exit so that
 * the stats carry its status (as the Python binding does). */
#define FORWARD_CHILD_GRACE_MS 1000

typedef struct pl_conn {
    tp_conn *c;
    SV *ctx; /* the Context object: it lives at least as long as we do */
    SV *io;  /* the wrapped handle's IO (or NULL for a bare fd): keeps it open */
} pl_conn;

typedef struct pl_server {
    tp_server *srv; /* NULL once closed */
    SV *ctx;        /* the Context object */
    AV *keep;       /* listening handles given as objects: kept open */
} pl_server;

typedef struct pl_child {
    tp_child *ch; /* NULL once closed */
    pid_t pid;
    int status; /* wait status once reaped, else -1 */
} pl_child;

/* Magic vtables used only as identity tags: an object is ours only if its
 * referent carries our magic, so a hand-blessed scalar cannot be
 * dereferenced as a pointer. */
static MGVTBL ctx_vtbl, conn_vtbl, child_vtbl, server_vtbl;

/* ---- objects ----------------------------------------------------------- */

static SV *new_object(pTHX_ void *ptr, const char *cls, MGVTBL *vtbl)
{
    SV *obj = newSV_type(SVt_PVMG);
    SV *rv;
    sv_magicext(obj, NULL, PERL_MAGIC_ext, vtbl, (const char *)ptr, 0);
    rv = newRV_noinc(obj);
    sv_bless(rv, gv_stashpv(cls, GV_ADD));
    return rv;
}

/* The magic of one of our objects, or NULL if arg is not one. */
static MAGIC *object_magic(pTHX_ SV *arg, MGVTBL *vtbl)
{
    if (!arg || !SvROK(arg) || !SvOBJECT(SvRV(arg)))
        return NULL;
    return mg_findext(SvRV(arg), PERL_MAGIC_ext, vtbl);
}

/* The pointer of one of our objects, or a croak naming the XSUB (its
 * alias, too) and the expected class. */
static void *object_arg(pTHX_ SV *arg, const char *cls, MGVTBL *vtbl, CV *cv)
{
    MAGIC *mg;
    SvGETMAGIC(arg);
    mg = SvROK(arg) && sv_derived_from(arg, cls) ? object_magic(aTHX_ arg, vtbl)
                                               : NULL;
    if (!mg || !mg->mg_ptr) {
        GV *gv = CvGV(cv);
        croak("%s::%s: Expected a %s object", HvNAME(GvSTASH(gv)), GvNAME(gv),
              cls);
    }
    return mg->mg_ptr;
}

static tp_ctx *ctx_arg(pTHX_ SV *arg, CV *cv)
{
    return (tp_ctx *)object_arg(aTHX_ arg, CTX_CLASS, &ctx_vtbl, cv);
}

static pl_conn *conn_arg(pTHX_ SV *arg, CV *cv)
{
    return (pl_conn *)object_arg(aTHX_ arg, CONN_CLASS, &conn_vtbl, cv);
}

static pl_child *child_arg(pTHX_ SV *arg, CV *cv)
{
    return (pl_child *)object_arg(aTHX_ arg, CHILD_CLASS, &child_vtbl, cv);
}

static pl_server *server_arg(pTHX_ SV *arg, CV *cv)
{
    return (pl_server *)object_arg(aTHX_ arg, SERVER_CLASS, &server_vtbl, cv);
}

/* ---- errors ------------------------------------------------------------ */

/* The one mapping from (return code, error kind) to an exception class. */
static const char *error_class(int rc, tp_errkind kind)
{
    if (rc == TP_TIMEOUT || kind == TP_E_TIMEOUT)
        return "Net::TLSPump::Timeout";
    switch (kind) {
    case TP_E_TRUNCATED:
        return "Net::TLSPump::TruncatedError";
    case TP_E_RESET:
        return "Net::TLSPump::ResetError";
    case TP_E_CLOSED:
        return "Net::TLSPump::ClosedError";
    default:
        return "Net::TLSPump::Error";
    }
}

static SV *str_or_undef(pTHX_ const char *s)
{
    return s ? newSVpv(s, 0) : newSV(0);
}

/*
 * Croaks with a Net::TLSPump::Error (or subclass) object; the fields are
 * those of the Python binding's exception (message = str(e)).
 */
static void throw_error(pTHX_ int rc, tp_errkind kind, const char *message,
                        const char *reason, const char *op, int err)
{
    HV *hv = newHV();
    SV *rv = sv_2mortal(newRV_noinc((SV *)hv));
    if (rc == TP_INTERRUPTED)
        kind = TP_E_INTERRUPTED;
    if (rc == TP_TIMEOUT && kind == TP_E_NONE)
        kind = TP_E_TIMEOUT;
    if (!message || !*message)
        message = reason && *reason ? reason : "unknown error";
    (void)hv_stores(hv, "message", newSVpv(message, 0));
    (void)hv_stores(hv, "reason", str_or_undef(aTHX_ reason));
    (void)hv_stores(hv, "operation", str_or_undef(aTHX_ op && *op ? op : NULL));
    (void)hv_stores(hv, "kind", newSVpv(tp_errkind_name(kind), 0));
    (void)hv_stores(hv, "errno", err ? newSViv(err) : newSV(0));
    sv_bless(rv, gv_stashpv(error_class(rc, kind), GV_ADD));
    croak_sv(rv);
}

/*
 * Croaks for a wait that ended early: TP_INTERRUPTED first runs the pending
 * Perl signal handlers (one may die, e.g. $SIG{ALRM}, and that exception
 * propagates); if none dies, the call croaks "interrupted". TP_TIMEOUT
 * croaks a Timeout naming op and the seconds of w. Returns for other rc.
 */
static void wait_fail(pTHX_ int rc, const char *op, const tp_wait *w)
{
    if (rc == TP_INTERRUPTED) {
        PERL_ASYNC_CHECK();
        throw_error(aTHX_ rc, TP_E_INTERRUPTED,
                    strEQ(op, "forward") ? "forward interrupted" : "interrupted",
                    NULL, op, EINTR);
    }
    if (rc == TP_TIMEOUT) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s timed out after %g s", op,
                 w ? w->timeout_ms / 1000.0 : 0.0);
        throw_error(aTHX_ rc, TP_E_TIMEOUT, msg, "timed out", op, ETIMEDOUT);
    }
}

/* Croaks for a failed connection call (TP_ERROR, TP_TIMEOUT or
 * TP_INTERRUPTED); w is the wait that was used (for the timeout text). */
static void conn_fail(pTHX_ tp_conn *c, int rc, const char *op,
                      const tp_wait *w)
{
    const char *operation;
    wait_fail(aTHX_ rc, op, w);
    operation = tp_conn_operation(c);
    throw_error(aTHX_ rc, tp_conn_errkind(c), tp_conn_error(c),
                tp_conn_reason(c), operation && *operation ? operation : op,
                tp_conn_errno(c));
}

/* The live core connection, or a ClosedError after close(). */
static tp_conn *live_conn(pTHX_ pl_conn *pc)
{
    if (!pc->c)
        throw_error(aTHX_ TP_ERROR, TP_E_CLOSED, "connection is closed",
                    "connection is closed", NULL, 0);
    return pc->c;
}

/* Maps DONE/WANT_* to the binding's constants; anything else croaks. */
static int step_result(pTHX_ tp_conn *c, int rc, const char *op,
                       const tp_wait *w)
{
    if (rc == TP_DONE)
        return PL_DONE;
    if (rc == TP_WANT_READ)
        return PL_WANT_READ;
    if (rc == TP_WANT_WRITE)
        return PL_WANT_WRITE;
    conn_fail(aTHX_ c, rc, op, w);
    return -1; /* not reached */
}

/* ---- arguments --------------------------------------------------------- */

/* tp_wait.interrupted: stop waiting when Perl has a signal to deliver; the
 * XSUB then dispatches it with PERL_ASYNC_CHECK() (see conn_fail). */
static int pl_interrupted(void *arg)
{
#ifdef PERL_IMPLICIT_CONTEXT
    dTHXa((PerlInterpreter *)arg);
#else
    (void)arg;
#endif
    return PL_sig_pending != 0;
}

static void *interp_arg(pTHX)
{
#ifdef PERL_IMPLICIT_CONTEXT
    return aTHX;
#else
    return NULL;
#endif
}

static void check_pairs(pTHX_ int n, const char *func)
{
    if (n % 2)
        croak("%s: options must be name => value pairs", func);
}

/* Seconds (fractional, >= 0) or undef (forever) -> milliseconds for
 * tp_wait.timeout_ms (0 non-blocking, -1 forever). */
static int seconds_arg(pTHX_ SV *v, const char *func, const char *name)
{
    NV s, ms;
    SvGETMAGIC(v);
    if (!SvOK(v))
        return -1;
    if (SvROK(v) || !looks_like_number(v))
        croak("%s: %s must be a number of seconds or undef", func, name);
    s = SvNV_nomg(v);
    if (Perl_isnan(s) || s < 0)
        croak("%s: %s must not be negative", func, name);
    if (s == 0)
        return 0;
    ms = ceil(s * 1000.0);
    return ms >= (NV)INT_MAX ? INT_MAX : (int)ms;
}

/* Parses "timeout => $s" pairs into w; an absent timeout is dflt_ms
 * (0: non-blocking, -1: forever). */
static void wait_arg(pTHX_ tp_wait *w, SV **args, int n, const char *func,
                     int dflt_ms)
{
    int i;
    check_pairs(aTHX_ n, func);
    w->timeout_ms = dflt_ms;
    w->interrupted = pl_interrupted;
    w->arg = interp_arg(aTHX);
    for (i = 0; i < n; i += 2) {
        const char *k = SvPV_nolen(args[i]);
        if (strEQ(k, "timeout"))
            w->timeout_ms = seconds_arg(aTHX_ args[i + 1], func, "timeout");
        else
            croak("%s: unknown option '%s'", func, k);
    }
}

/* A byte string argument (never a reference, never wide characters). */
static const char *bytes_arg(pTHX_ SV *v, STRLEN *len, const char *func,
                             const char *name)
{
    SvGETMAGIC(v);
    if (!SvOK(v))
        croak("%s: %s must be a byte string, not undef", func, name);
    if (SvROK(v) && !SvAMAGIC(v))
        croak("%s: %s must be a byte string, not a %s reference", func, name,
              sv_reftype(SvRV(v), 0));
    if (SvUTF8(v)) {
        SV *copy = sv_mortalcopy(v);
        if (!sv_utf8_downgrade(copy, TRUE))
            croak("%s: %s contains wide characters (encode it to bytes "
                  "first)",
                  func, name);
        return SvPV(copy, *len);
    }
    return SvPV_nomg(v, *len);
}

/* A string option that may be undef (-> NULL); never empty, never with a
 * NUL byte (a path or PEM text has none). */
static const char *str_opt(pTHX_ SV *v, size_t *len, const char *func,
                           const char *name)
{
    STRLEN l;
    const char *s;
    SvGETMAGIC(v);
    if (len)
        *len = 0;
    if (!SvOK(v))
        return NULL;
    s = bytes_arg(aTHX_ v, &l, func, name);
    if (l == 0)
        croak("%s: %s must not be empty", func, name);
    if (strlen(s) != l)
        croak("%s: %s must not contain NUL bytes", func, name);
    if (len)
        *len = l;
    return s;
}

/* Returns the fd of a handle (IO::Socket, glob, globref, IO ref) or of a
 * file descriptor number; *keep gets a new reference to the handle's IO
 * (NULL for a number) so the handle stays open while we use it. */
static int fd_arg(pTHX_ SV *v, SV **keep, const char *func)
{
    *keep = NULL;
    SvGETMAGIC(v);
    if (!SvOK(v))
        croak("%s: expected a socket handle or a file descriptor number, "
              "got undef",
              func);
    if (SvROK(v) || isGV_with_GP(v)) {
        SV *t = SvROK(v) ? SvRV(v) : v;
        IO *io = NULL;
        PerlIO *f;
        int fd;
        if (isGV_with_GP(t))
            io = GvIO((GV *)t);
        else if (SvTYPE(t) == SVt_PVIO)
            io = (IO *)t;
        else
            croak("%s: expected a socket handle or a file descriptor number, "
                  "got a %s reference",
                  func, sv_reftype(t, 0));
        f = io ? IoIFP(io) : NULL;
        if (!f && io)
            f = IoOFP(io);
        fd = f ? PerlIO_fileno(f) : -1;
        if (fd < 0)
            croak("%s: the handle is closed or not a file handle", func);
        *keep = SvREFCNT_inc_simple_NN((SV *)io);
        return fd;
    }
    if (looks_like_number(v)) {
        NV nv = SvNV_nomg(v);
        if (nv < 0 || nv > INT_MAX || nv != (NV)(int)nv)
            croak("%s: invalid file descriptor %" SVf, func, SVfARG(v));
        return (int)nv;
    }
    croak("%s: expected a socket handle or a file descriptor number, got "
          "the string '%.40s'",
          func, SvPV_nolen(v));
    return -1; /* not reached */
}

/* Fills the context options from name => value pairs; croaks naming every
 * unknown option. */
static void ctx_options(pTHX_ tp_ctx_options *o, tp_role role, SV **args,
                        int n, const char *func)
{
    SV *unknown = NULL;
    int nunknown = 0, i;
    check_pairs(aTHX_ n, func);
    for (i = 0; i < n; i += 2) {
        const char *k = SvPV_nolen(args[i]);
        SV *v = args[i + 1];
        if (strEQ(k, "cert")) {
            o->cert = str_opt(aTHX_ v, &o->cert_len, func, k);
        } else if (strEQ(k, "key")) {
            o->key = str_opt(aTHX_ v, &o->key_len, func, k);
        } else if (role == TP_CLIENT && strEQ(k, "ca")) {
            o->ca = str_opt(aTHX_ v, &o->ca_len, func, k);
        } else if (role == TP_CLIENT && strEQ(k, "ca_dir")) {
            o->ca_dir = str_opt(aTHX_ v, NULL, func, k);
        } else if (role == TP_CLIENT && strEQ(k, "verify")) {
            /* undef keeps the secure default: turning verification off
             * takes an explicit false value */
            if (SvOK(v))
                o->verify = SvTRUE(v) ? 1 : 0;
        } else if (role == TP_SERVER && strEQ(k, "client_ca")) {
            o->client_ca = str_opt(aTHX_ v, &o->client_ca_len, func, k);
        } else if (strEQ(k, "alpn")) {
            SV *joined;
            AV *av;
            SSize_t j;
            if (!SvOK(v))
                continue;
            if (!SvROK(v) || SvTYPE(SvRV(v)) != SVt_PVAV)
                croak("%s: alpn must be an array reference of protocol "
                      "names",
                      func);
            av = (AV *)SvRV(v);
            joined = sv_2mortal(newSVpvs(""));
            for (j = 0; j <= av_len(av); j++) {
                SV **e = av_fetch(av, j, 0);
                STRLEN l;
                const char *p;
                if (!e)
                    croak("%s: alpn protocol names must be defined", func);
                p = bytes_arg(aTHX_ * e, &l, func, "an alpn protocol name");
                if (l == 0 || l > 255 || memchr(p, ',', l) ||
                    strlen(p) != l)
                    croak("%s: invalid alpn protocol name '%.40s'", func, p);
                if (j)
                    sv_catpvs(joined, ",");
                sv_catpvn(joined, p, l);
            }
            if (!SvCUR(joined))
                croak("%s: alpn must not be empty (leave it out for no ALPN)", func);
            o->alpn = SvPV_nolen(joined);
        } else if (strEQ(k, "min_version")) {
            const char *s = SvOK(v) ? SvPV_nolen(v) : "";
            if (!SvOK(v))
                continue;
            if (strEQ(s, "TLSv1.2") || strEQ(s, "1.2"))
                o->min_version = TP_TLS1_2;
            else if (strEQ(s, "TLSv1.3") || strEQ(s, "1.3"))
                o->min_version = TP_TLS1_3;
            else
                croak("%s: min_version must be 'TLSv1.2' or 'TLSv1.3', not "
                      "'%.40s'",
                      func, s);
        } else if (strEQ(k, "write_buffer")) {
            NV nv;
            if (!SvOK(v))
                continue;
            nv = looks_like_number(v) && !SvROK(v) ? SvNV(v) : -1;
            if (nv < 1 || nv > (NV)SSize_t_MAX || nv != floor(nv))
                croak("%s: write_buffer must be a positive number of bytes",
                      func);
            o->write_buffer = (size_t)nv;
        } else {
            if (!unknown)
                unknown = sv_2mortal(newSVpvs(""));
            else
                sv_catpvs(unknown, ", ");
            sv_catpvf(unknown, "'%s'", k);
            nunknown++;
        }
    }
    if (unknown)
        croak("%s: unknown option%s %s", func, nunknown > 1 ? "s" : "",
              SvPV_nolen(unknown));
}

/* A byte string without NUL for a C string argument (may be empty). */
static const char *cstr_arg(pTHX_ SV *v, const char *func, const char *name)
{
    STRLEN l;
    const char *s = bytes_arg(aTHX_ v, &l, func, name);
    if (strlen(s) != l)
        croak("%s: %s must not contain NUL bytes", func, name);
    return s;
}

/* A NULL-terminated array of C strings from an array of strings; freed
 * with the current scope. */
static const char **argv_arg(pTHX_ SV *v, const char *func)
{
    AV *av;
    SSize_t n, i;
    const char **argv;
    SvGETMAGIC(v);
    if (!SvROK(v) || SvTYPE(SvRV(v)) != SVt_PVAV)
        croak("%s: the command must be an array reference [program, args...]",
              func);
    av = (AV *)SvRV(v);
    n = av_len(av) + 1;
    if (n == 0)
        croak("%s: the command must not be empty", func);
    Newx(argv, n + 1, const char *);
    SAVEFREEPV(argv);
    for (i = 0; i < n; i++) {
        SV **e = av_fetch(av, i, 0);
        if (!e)
            croak("%s: command arguments must be defined", func);
        argv[i] = cstr_arg(aTHX_ * e, func, "a command argument");
    }
    if (!*argv[0])
        croak("%s: the program name must not be empty", func);
    argv[n] = NULL;
    return argv;
}

/* "NAME=value" strings from a hash (the child's whole environment). */
static const char **env_arg(pTHX_ SV *v, const char *func)
{
    HV *hv;
    HE *he;
    I32 n, i = 0;
    const char **envp;
    SvGETMAGIC(v);
    if (!SvROK(v) || SvTYPE(SvRV(v)) != SVt_PVHV)
        croak("%s: env must be a hash reference", func);
    hv = (HV *)SvRV(v);
    n = hv_iterinit(hv);
    Newx(envp, n + 1, const char *);
    SAVEFREEPV(envp);
    while ((he = hv_iternext(hv)) && i < n) {
        SV *key = hv_iterkeysv(he);
        const char *k = cstr_arg(aTHX_ key, func, "an env name");
        const char *val = cstr_arg(aTHX_ hv_iterval(hv, he), func, "an env value");
        if (!*k || strchr(k, '='))
            croak("%s: invalid env name '%.40s'", func, k);
        envp[i++] = SvPV_nolen(sv_2mortal(newSVpvf("%s=%s", k, val)));
    }
    envp[i] = NULL;
    return envp;
}

/* A signal number from a number or a name ("TERM", "SIGTERM"). */
static int signal_arg(pTHX_ SV *v, const char *func)
{
    int sig = -1;
    SvGETMAGIC(v);
    if (SvOK(v) && !SvROK(v)) {
        if (looks_like_number(v)) {
            NV nv = SvNV_nomg(v);
            if (nv >= 0 && nv < 1024 && nv == floor(nv))
                sig = (int)nv;
        } else {
            const char *name = SvPV_nolen(v);
            if (strncmp(name, "SIG", 3) == 0)
                name += 3;
            sig = whichsig_pv(name);
        }
    }
    if (sig < 0)
        croak("%s: unknown signal '%" SVf "'", func, SVfARG(v));
    return sig;
}

static SV *end_name(pTHX_ tp_end e)
{
    return newSVpv(tp_end_name(e), 0);
}

static SV *stats_hash(pTHX_ const tp_pump_stats *st)
{
    HV *hv = newHV();
    (void)hv_stores(hv, "to_target", newSVuv((UV)st->to_target));
    (void)hv_stores(hv, "to_tls", newSVuv((UV)st->to_tls));
    (void)hv_stores(hv, "discarded", newSVuv((UV)st->discarded));
    (void)hv_stores(hv, "tls_end", end_name(aTHX_ st->tls_end));
    (void)hv_stores(hv, "target_end", end_name(aTHX_ st->target_end));
    (void)hv_stores(hv, "tls_error",
                    str_or_undef(aTHX_ st->tls_error[0] ? st->tls_error : NULL));
    (void)hv_stores(hv, "target_error",
                    str_or_undef(aTHX_ st->target_error[0] ? st->target_error : NULL));
    (void)hv_stores(hv, "seconds", newSVnv(st->seconds));
    return newRV_noinc((SV *)hv);
}

/* Listen addresses: a string, a listening handle (-> "fd:N", kept open in
 * keep) or an array reference of those. A NULL-terminated array freed with
 * the current scope. */
static const char **listen_arg(pTHX_ SV *v, AV *keep, const char *func)
{
    SV **items = &v;
    SSize_t n = 1, i;
    const char **out;
    SvGETMAGIC(v);
    if (SvROK(v) && SvTYPE(SvRV(v)) == SVt_PVAV && !SvOBJECT(SvRV(v))) {
        AV *av = (AV *)SvRV(v);
        n = av_len(av) + 1;
        items = AvARRAY(av);
        if (n == 0)
            croak("%s: listen must not be empty", func);
    }
    Newx(out, n + 1, const char *);
    SAVEFREEPV(out);
    for (i = 0; i < n; i++) {
        SV *a = items[i];
        if (!a || !SvOK(a))
            croak("%s: a listen address must be defined", func);
        if (SvROK(a) || isGV_with_GP(a)) {
            SV *io;
            int fd = fd_arg(aTHX_ a, &io, func);
            if (io)
                av_push(keep, io);
            out[i] = SvPV_nolen(sv_2mortal(newSVpvf("fd:%d", fd)));
        } else {
            out[i] = cstr_arg(aTHX_ a, func, "a listen address");
            if (!*out[i])
                croak("%s: a listen address must not be empty", func);
        }
    }
    out[n] = NULL;
    return out;
}

/* A count option: a positive integer. */
static int count_arg(pTHX_ SV *v, const char *func, const char *name)
{
    NV nv = (SvOK(v) && !SvROK(v) && looks_like_number(v)) ? SvNV(v) : -1;
    if (nv < 1 || nv > INT_MAX || nv != floor(nv))
        croak("%s: %s must be a positive integer", func, name);
    return (int)nv;
}

static void server_release(pTHX_ pl_server *ps)
{
    tp_server_free(ps->srv);
    ps->srv = NULL;
    SvREFCNT_dec((SV *)ps->keep);
    SvREFCNT_dec(ps->ctx);
    ps->keep = NULL;
    ps->ctx = NULL;
}

/* ---- connection -------------------------------------------------------- */

/* Frees the core connection (no I/O) and drops the references. */
static void conn_release(pTHX_ pl_conn *pc)
{
    SV *io = pc->io, *ctx = pc->ctx;
    tp_conn_free(pc->c);
    pc->c = NULL;
    pc->io = pc->ctx = NULL;
    SvREFCNT_dec(io);
    SvREFCNT_dec(ctx);
}

static SV *peer_cert_hash(pTHX_ tp_conn *c)
{
    HV *hv;
    const char *pem = tp_conn_peer_cert_pem(c);
    if (!pem)
        return newSV(0);
    hv = newHV();
    (void)hv_stores(hv, "pem", newSVpv(pem, 0));
    (void)hv_stores(hv, "subject", str_or_undef(aTHX_ tp_conn_peer_subject(c)));
    (void)hv_stores(hv, "issuer", str_or_undef(aTHX_ tp_conn_peer_issuer(c)));
    (void)hv_stores(hv, "fingerprint",
                    str_or_undef(aTHX_ tp_conn_peer_fingerprint(c)));
    return newRV_noinc((SV *)hv);
}

MODULE = Net::TLSPump		PACKAGE = Net::TLSPump

PROTOTYPES: DISABLE

BOOT:
{
    HV *stash = gv_stashpv("Net::TLSPump", GV_ADD);
    newCONSTSUB(stash, "DONE", newSViv(PL_DONE));
    newCONSTSUB(stash, "WANT_READ", newSViv(PL_WANT_READ));
    newCONSTSUB(stash, "WANT_WRITE", newSViv(PL_WANT_WRITE));
    newCONSTSUB(stash, "CORE_VERSION", newSVpvs(TP_VERSION));
}

SV *
spawn(command, ...)
        SV *command
    PREINIT:
        const char *func = "Net::TLSPump::spawn";
        const char **argv;
        const char **envp = NULL;
        const char *cwd = NULL;
        int stderr_fd = -1, i;
        SV *keep;
        tp_child *ch;
        pl_child *pc;
        char err[256];
    CODE:
        argv = argv_arg(aTHX_ command, func);
        check_pairs(aTHX_ items - 1, func);
        for (i = 1; i < items; i += 2) {
            const char *k = SvPV_nolen(ST(i));
            SV *v = ST(i + 1);
            if (strEQ(k, "env")) {
                if (SvOK(v))
                    envp = env_arg(aTHX_ v, func);
            } else if (strEQ(k, "cwd")) {
                cwd = str_opt(aTHX_ v, NULL, func, k);
            } else if (strEQ(k, "stderr")) {
                if (SvOK(v)) {
                    stderr_fd = fd_arg(aTHX_ v, &keep, func);
                    if (keep)
                        sv_2mortal(keep);
                }
            } else {
                croak("%s: unknown option '%s'", func, k);
            }
        }
        errno = 0;
        ch = tp_spawn(argv, envp, cwd, stderr_fd, err, sizeof err);
        if (!ch)
            throw_error(aTHX_ TP_ERROR, TP_E_SYS, err, err, "spawn", errno);
        Newxz(pc, 1, pl_child);
        pc->ch = ch;
        pc->pid = tp_child_pid(ch);
        pc->status = -1;
        RETVAL = new_object(aTHX_ pc, CHILD_CLASS, &child_vtbl);
    OUTPUT:
        RETVAL



MODULE = Net::TLSPump		PACKAGE = Net::TLSPump::Context

SV *
server(klass, ...)
        SV *klass
    ALIAS:
        client = 1
    PREINIT:
        tp_ctx_options o;
        char err[256];
        tp_ctx *ctx;
        tp_role role;
        const char *func;
    CODE:
        role = ix ? TP_CLIENT : TP_SERVER;
        func = ix ? "Net::TLSPump::Context->client" : "Net::TLSPump::Context->server";
        if (!SvOK(klass) || SvROK(klass) || !sv_derived_from(klass, CTX_CLASS))
            croak("%s: call it as a class method", func);
        tp_ctx_options_init(&o);
        ctx_options(aTHX_ &o, role, &ST(1), items - 1, func);
        ctx = tp_ctx_new(role, &o, err, sizeof err);
        if (!ctx)
            throw_error(aTHX_ TP_ERROR, TP_E_ARG, err, err, "context", 0);
        RETVAL = new_object(aTHX_ ctx, SvPV_nolen(klass), &ctx_vtbl);
    OUTPUT:
        RETVAL

SV *
fingerprint(self)
        SV *self
    ALIAS:
        cert_pem = 1
    PREINIT:
        tp_ctx *ctx;
    CODE:
        ctx = ctx_arg(aTHX_ self, cv);
        RETVAL = str_or_undef(aTHX_ ix ? tp_ctx_cert_pem(ctx) : tp_ctx_fingerprint(ctx));
    OUTPUT:
        RETVAL

bool
ephemeral(self)
        SV *self
    CODE:
        RETVAL = tp_ctx_is_ephemeral(ctx_arg(aTHX_ self, cv)) != 0;
    OUTPUT:
        RETVAL

const char *
role(self)
        SV *self
    CODE:
        RETVAL = tp_ctx_role(ctx_arg(aTHX_ self, cv)) == TP_SERVER
                     ? "server" : "client";
    OUTPUT:
        RETVAL

SV *
wrap(self, handle, ...)
        SV *self
        SV *handle
    PREINIT:
        const char *func = "Net::TLSPump::Context::wrap";
        const char *host = NULL;
        tp_ctx *ctx;
        tp_conn *c;
        pl_conn *pc;
        SV *keep;
        char err[256];
        int fd, i;
    CODE:
        ctx = ctx_arg(aTHX_ self, cv);
        check_pairs(aTHX_ items - 2, func);
        for (i = 2; i < items; i += 2) {
            const char *k = SvPV_nolen(ST(i));
            if (strEQ(k, "server_hostname"))
                host = str_opt(aTHX_ ST(i + 1), NULL, func, k);
            else
                croak("%s: unknown option '%s'", func, k);
        }
        fd = fd_arg(aTHX_ handle, &keep, func);
        c = tp_conn_new(ctx, fd, host, err, sizeof err);
        if (!c) {
            SvREFCNT_dec(keep);
            throw_error(aTHX_ TP_ERROR, TP_E_ARG, err, err, "wrap", 0);
        }
        Newxz(pc, 1, pl_conn);
        pc->c = c;
        pc->io = keep;
        pc->ctx = SvREFCNT_inc_simple_NN(SvRV(self));
        RETVAL = new_object(aTHX_ pc, CONN_CLASS, &conn_vtbl);
    OUTPUT:
        RETVAL

void
DESTROY(self)
        SV *self
    PREINIT:
        MAGIC *mg;
    CODE:
        mg = object_magic(aTHX_ self, &ctx_vtbl);
        if (mg && mg->mg_ptr) {
            tp_ctx_free((tp_ctx *)mg->mg_ptr);
            mg->mg_ptr = NULL;
        }


MODULE = Net::TLSPump		PACKAGE = Net::TLSPump::Conn

int
handshake(self, ...)
        pl_conn *self
    ALIAS:
        flush = 1
        shutdown = 2
        wait = 3
    PREINIT:
        static const char *const ops[] = {"handshake", "flush", "shutdown", "wait"};
        static const char *const funcs[] = {
            "Net::TLSPump::Conn::handshake", "Net::TLSPump::Conn::flush",
            "Net::TLSPump::Conn::shutdown", "Net::TLSPump::Conn::wait"};
        tp_wait w;
        tp_conn *c;
        int rc = TP_ERROR;
    CODE:
        wait_arg(aTHX_ &w, &ST(1), items - 1, funcs[ix], ix == 3 ? -1 : 0);
        c = live_conn(aTHX_ self);
        switch (ix) {
        case 0: rc = tp_conn_handshake(c, &w); break;
        case 1: rc = tp_conn_flush(c, &w); break;
        case 2: rc = tp_conn_shutdown(c, &w); break;
        case 3: rc = tp_conn_wait(c, &w); break;
        }
        RETVAL = step_result(aTHX_ c, rc, ops[ix & 3], &w);
    OUTPUT:
        RETVAL

SV *
read(self, ...)
        pl_conn *self
    PREINIT:
        const char *func = "Net::TLSPump::Conn::read";
        const char *data = NULL;
        size_t max = 0;
        int first = 1;
        tp_wait w;
        tp_conn *c;
        ssize_t n;
    CODE:
        if (items % 2 == 0) {
            /* read($max, name => value...): $max is optional */
            SV *m = ST(1);
            first = 2;
            SvGETMAGIC(m);
            if (SvOK(m)) {
                NV nv = (!SvROK(m) && looks_like_number(m)) ? SvNV_nomg(m) : -1;
                if (nv < 1 || nv != floor(nv))
                    croak("%s: max must be a positive number of bytes (or undef)", func);
                max = nv > (NV)SSize_t_MAX ? (size_t)SSize_t_MAX : (size_t)nv;
            }
        }
        wait_arg(aTHX_ &w, &ST(first), items - first, func, 0);
        c = live_conn(aTHX_ self);
        n = tp_conn_read_drain(c, max, &data, &w);
        if (n >= 0)
            RETVAL = newSVpvn(n ? data : "", (STRLEN)n);
        else if (n == TP_WANT_READ || n == TP_WANT_WRITE)
            RETVAL = newSV(0);
        else
            conn_fail(aTHX_ c, (int)n, "read", &w);
    OUTPUT:
        RETVAL

IV
write(self, data, ...)
        pl_conn *self
        SV *data
    PREINIT:
        const char *func = "Net::TLSPump::Conn::write";
        const char *p;
        STRLEN len;
        tp_wait w;
        tp_conn *c;
        ssize_t n;
    CODE:
        p = bytes_arg(aTHX_ data, &len, func, "data");
        wait_arg(aTHX_ &w, &ST(2), items - 2, func, 0);
        c = live_conn(aTHX_ self);
        n = tp_conn_write(c, p, len, &w);
        if (n == TP_WANT_READ || n == TP_WANT_WRITE)
            n = 0; /* nothing accepted yet; see want */
        else if (n < 0)
            conn_fail(aTHX_ c, (int)n, "write", &w);
        RETVAL = (IV)n;
    OUTPUT:
        RETVAL

int
want(self)
        pl_conn *self
    ALIAS:
        fileno = 1
        pending = 2
        handshake_done = 3
        peer_closed = 4
    PREINIT:
        tp_conn *c;
    CODE:
        c = live_conn(aTHX_ self);
        switch (ix) {
        case 0: {
            short ev = tp_conn_events(c);
            RETVAL = ((ev & POLLIN) ? PL_WANT_READ : 0) |
                     ((ev & POLLOUT) ? PL_WANT_WRITE : 0);
            break;
        }
        case 1: RETVAL = tp_conn_fd(c); break;
        case 2: RETVAL = tp_conn_pending(c) != 0; break;
        case 3: RETVAL = tp_conn_handshake_done(c) != 0; break;
        default: RETVAL = tp_conn_peer_closed(c) != 0; break;
        }
    OUTPUT:
        RETVAL

UV
buffered(self)
        pl_conn *self
    CODE:
        RETVAL = (UV)tp_conn_buffered(live_conn(aTHX_ self));
    OUTPUT:
        RETVAL

SV *
version(self)
        pl_conn *self
    ALIAS:
        cipher = 1
        alpn = 2
        verify_result = 3
        server_name = 4
    PREINIT:
        tp_conn *c;
        const char *s = NULL;
    CODE:
        c = live_conn(aTHX_ self);
        switch (ix) {
        case 0: s = tp_conn_version(c); break;
        case 1: s = tp_conn_cipher(c); break;
        case 2: s = tp_conn_alpn(c); break;
        case 3: s = tp_conn_verify_result(c); break;
        case 4: s = tp_conn_server_name(c); break;
        }
        RETVAL = str_or_undef(aTHX_ s);
    OUTPUT:
        RETVAL

SV *
peer_cert(self)
        pl_conn *self
    CODE:
        RETVAL = peer_cert_hash(aTHX_ live_conn(aTHX_ self));
    OUTPUT:
        RETVAL

void
close(self)
        pl_conn *self
    CODE:
        conn_release(aTHX_ self);

void
DESTROY(self)
        SV *self
    PREINIT:
        MAGIC *mg;
    CODE:
        mg = object_magic(aTHX_ self, &conn_vtbl);
        if (mg && mg->mg_ptr) {
            pl_conn *pc = (pl_conn *)mg->mg_ptr;
            mg->mg_ptr = NULL;
            conn_release(aTHX_ pc);
            Safefree(pc);
        }

SV *
forward(self, target, ...)
        pl_conn *self
        SV *target
    PREINIT:
        const char *func = "Net::TLSPump::Conn::forward";
        pl_child *child = NULL;
        SV *keep;
        int rfd, wfd, i, idle_ms = 0, close_write = 0, rc;
        tp_conn *c;
        tp_pump *p;
        tp_pump_stats st;
        tp_wait w;
        char err[256];
    CODE:
        check_pairs(aTHX_ items - 2, func);
        for (i = 2; i < items; i += 2) {
            const char *k = SvPV_nolen(ST(i));
            if (strEQ(k, "idle_timeout")) {
                idle_ms = SvOK(ST(i + 1)) ? seconds_arg(aTHX_ ST(i + 1), func, k) : 0;
            } else if (strEQ(k, "close_target_write")) {
                close_write = SvTRUE(ST(i + 1)) ? 1 : 0;
            } else {
                croak("%s: unknown option '%s'", func, k);
            }
        }
        if (SvROK(target) && sv_derived_from(target, CHILD_CLASS)) {
            child = child_arg(aTHX_ target, cv);
            if (!child->ch)
                croak("%s: the child was closed", func);
            rfd = wfd = tp_child_fd(child->ch);
        } else if (SvROK(target) && SvTYPE(SvRV(target)) == SVt_PVAV && !SvOBJECT(SvRV(target))) {
            /* [$read_fh, $write_fh]: two fds (pipes) */
            AV *av = (AV *)SvRV(target);
            SV **r = av_fetch(av, 0, 0), **wr = av_fetch(av, 1, 0);
            if (av_len(av) != 1 || !r || !wr)
                croak("%s: a target array must be [read handle, write handle]", func);
            rfd = fd_arg(aTHX_ *r, &keep, func);
            if (keep)
                sv_2mortal(keep);
            wfd = fd_arg(aTHX_ *wr, &keep, func);
            if (keep)
                sv_2mortal(keep);
        } else {
            rfd = wfd = fd_arg(aTHX_ target, &keep, func);
            if (keep)
                sv_2mortal(keep); /* the handle stays open during the call */
        }
        c = live_conn(aTHX_ self);
        p = tp_pump_new(c, rfd, wfd, err, sizeof err);
        if (!p)
            throw_error(aTHX_ TP_ERROR, TP_E_ARG, err, err, "forward", 0);
        tp_pump_set_idle_timeout(p, idle_ms);
        tp_pump_set_close_target_write(p, close_write);
        if (child)
            tp_pump_watch_child(p, child->ch);
        w.timeout_ms = -1;
        w.interrupted = pl_interrupted;
        w.arg = interp_arg(aTHX);
        rc = tp_pump_run(p, &w);
        st = *tp_pump_stats_get(p);
        tp_pump_free(p);
        wait_fail(aTHX_ rc, "forward", &w);
        RETVAL = sv_2mortal(stats_hash(aTHX_ &st));
        if (child) {
            /* The child normally exits at the EOF the pump passed on:
             * a short wait lets the stats carry its status. */
            int status = -1;
            w.timeout_ms = FORWARD_CHILD_GRACE_MS;
            rc = tp_child_wait(child->ch, &w, &status);
            if (rc == TP_INTERRUPTED)
                PERL_ASYNC_CHECK(); /* a dying handler wins; else no status */
            if (rc == TP_DONE)
                child->status = status;
            (void)hv_stores((HV *)SvRV(RETVAL), "exit_status",
                            child->status != -1 ? newSViv(child->status) : newSV(0));
        }
        SvREFCNT_inc_simple_void_NN(RETVAL);
    OUTPUT:
        RETVAL


MODULE = Net::TLSPump		PACKAGE = Net::TLSPump::Child

int
pid(self)
        pl_child *self
    CODE:
        RETVAL = (int)self->pid;
    OUTPUT:
        RETVAL

int
fileno(self)
        pl_child *self
    CODE:
        if (!self->ch)
            croak("Net::TLSPump::Child::fileno: the child was closed");
        RETVAL = tp_child_fd(self->ch);
    OUTPUT:
        RETVAL

SV *
wait(self, ...)
        pl_child *self
    PREINIT:
        tp_wait w;
        int status = -1, rc;
    CODE:
        wait_arg(aTHX_ &w, &ST(1), items - 1, "Net::TLSPump::Child::wait", -1);
        if (self->status == -1) {
            if (!self->ch)
                croak("Net::TLSPump::Child::wait: the child was closed");
            rc = tp_child_wait(self->ch, &w, &status);
            if (rc == TP_TIMEOUT) {
                char msg[128];
                snprintf(msg, sizeof msg, "wait: process %d did not exit within %g s",
                         (int)self->pid, w.timeout_ms / 1000.0);
                throw_error(aTHX_ rc, TP_E_TIMEOUT, msg, "timed out", "wait", ETIMEDOUT);
            }
            if (rc != TP_DONE) {
                wait_fail(aTHX_ rc, "wait", &w);
                throw_error(aTHX_ rc, TP_E_SYS, "wait: failed", NULL, "wait", errno);
            }
            self->status = status;
        }
        RETVAL = self->status == -1 ? newSV(0) : newSViv(self->status);
    OUTPUT:
        RETVAL

int
kill(self, sig = NULL)
        pl_child *self
        SV *sig
    PREINIT:
        int signo;
    CODE:
        signo = sig ? signal_arg(aTHX_ sig, "Net::TLSPump::Child::kill") : SIGTERM;
        RETVAL = 0; /* closed (reaped): nothing to signal */
        if (self->ch) {
            if (tp_child_kill(self->ch, signo) != 0) {
                int e = errno;
                char msg[160];
                snprintf(msg, sizeof msg, "kill: %s", strerror(e));
                throw_error(aTHX_ TP_ERROR, TP_E_SYS, msg, strerror(e), "kill", e);
            }
            RETVAL = 1;
        }
    OUTPUT:
        RETVAL

void
close(self)
        pl_child *self
    CODE:
        /* EOF on its stdin, a short grace, SIGTERM, SIGKILL: reaped. */
        tp_child_free(self->ch);
        self->ch = NULL;

void
DESTROY(self)
        SV *self
    PREINIT:
        MAGIC *mg;
    CODE:
        mg = object_magic(aTHX_ self, &child_vtbl);
        if (mg && mg->mg_ptr) {
            pl_child *pc = (pl_child *)mg->mg_ptr;
            mg->mg_ptr = NULL;
            tp_child_free(pc->ch);
            Safefree(pc);
        }


MODULE = Net::TLSPump		PACKAGE = Net::TLSPump::Server

SV *
_new(klass, ...)
        SV *klass
    PREINIT:
        const char *func = "Net::TLSPump::Server->new";
        tp_server_options o;
        SV *ctx_sv = NULL, *keep_io;
        AV *keep;
        tp_ctx *ctx;
        tp_server *srv;
        pl_server *ps;
        char err[512];
        int i;
    CODE:
        if (!SvOK(klass) || SvROK(klass) || !sv_derived_from(klass, SERVER_CLASS))
            croak("%s: call it as a class method", func);
        check_pairs(aTHX_ items - 1, func);
        tp_server_options_init(&o);
        keep = (AV *)sv_2mortal((SV *)newAV());
        for (i = 1; i < items; i += 2) {
            const char *k = SvPV_nolen(ST(i));
            SV *v = ST(i + 1);
            if (strEQ(k, "listen")) {
                o.listen = listen_arg(aTHX_ v, keep, func);
            } else if (strEQ(k, "ctx")) {
                ctx_sv = v;
            } else if (strEQ(k, "command")) {
                if (SvOK(v))
                    o.command = argv_arg(aTHX_ v, func);
            } else if (strEQ(k, "backend")) {
                o.backend = str_opt(aTHX_ v, NULL, func, k);
            } else if (strEQ(k, "max_conns")) {
                o.max_conns = count_arg(aTHX_ v, func, k);
            } else if (strEQ(k, "workers")) {
                o.workers = count_arg(aTHX_ v, func, k);
            } else if (strEQ(k, "handshake_timeout")) {
                o.handshake_timeout_ms = SvOK(v) ? seconds_arg(aTHX_ v, func, k) : 0;
            } else if (strEQ(k, "idle_timeout")) {
                o.idle_timeout_ms = SvOK(v) ? seconds_arg(aTHX_ v, func, k) : 0;
            } else if (strEQ(k, "grace")) {
                o.grace_ms = SvOK(v) ? seconds_arg(aTHX_ v, func, k) : 0;
            } else if (strEQ(k, "log")) {
                /* a handle or fd; undef: no log */
                o.log_fd = SvOK(v) ? fd_arg(aTHX_ v, &keep_io, func) : -1;
                if (SvOK(v) && keep_io)
                    av_push(keep, keep_io);
            } else if (strEQ(k, "log_json")) {
                o.log_json = SvTRUE(v) ? 1 : 0;
            } else {
                croak("%s: unknown option '%s'", func, k);
            }
        }
        if (!ctx_sv)
            croak("%s: ctx => a Net::TLSPump::Context is required", func);
        ctx = ctx_arg(aTHX_ ctx_sv, cv);
        srv = tp_server_new(ctx, &o, err, sizeof err);
        if (!srv)
            throw_error(aTHX_ TP_ERROR, TP_E_ARG, err, err, "listen", 0);
        Newxz(ps, 1, pl_server);
        ps->srv = srv;
        ps->ctx = SvREFCNT_inc_simple_NN(SvRV(ctx_sv));
        ps->keep = (AV *)SvREFCNT_inc_simple_NN((SV *)keep);
        RETVAL = new_object(aTHX_ ps, SvPV_nolen(klass), &server_vtbl);
    OUTPUT:
        RETVAL

void
run(self)
        pl_server *self
    PREINIT:
        tp_wait w;
        int rc;
    CODE:
        if (!self->srv)
            throw_error(aTHX_ TP_ERROR, TP_E_CLOSED, "server is closed",
                        "server is closed", NULL, 0);
        /* A Perl signal with a handler starts the graceful stop; the
         * handler runs once the server has stopped. */
        w.timeout_ms = -1;
        w.interrupted = pl_interrupted;
        w.arg = interp_arg(aTHX);
        rc = tp_server_run(self->srv, &w);
        if (rc == TP_INTERRUPTED)
            PERL_ASYNC_CHECK();
        else if (rc != TP_DONE)
            throw_error(aTHX_ rc, TP_E_SYS, tp_server_error(self->srv),
                        tp_server_error(self->srv), "serve", 0);

SV *
context(self)
        pl_server *self
    CODE:
        RETVAL = self->ctx ? newRV_inc(self->ctx) : newSV(0);
    OUTPUT:
        RETVAL

void
stop(self)
        pl_server *self
    CODE:
        if (self->srv)
            tp_server_stop(self->srv);

SV *
addresses(self)
        pl_server *self
    PREINIT:
        AV *av;
        int i, n;
    CODE:
        if (!self->srv)
            throw_error(aTHX_ TP_ERROR, TP_E_CLOSED, "server is closed",
                        "server is closed", NULL, 0);
        av = newAV();
        n = tp_server_address_count(self->srv);
        for (i = 0; i < n; i++)
            av_push(av, newSVpv(tp_server_address(self->srv, i), 0));
        RETVAL = newRV_noinc((SV *)av);
    OUTPUT:
        RETVAL

void
close(self)
        pl_server *self
    CODE:
        server_release(aTHX_ self);

void
DESTROY(self)
        SV *self
    PREINIT:
        MAGIC *mg;
    CODE:
        mg = object_magic(aTHX_ self, &server_vtbl);
        if (mg && mg->mg_ptr) {
            pl_server *ps = (pl_server *)mg->mg_ptr;
            mg->mg_ptr = NULL;
            server_release(aTHX_ ps);
            Safefree(ps);
        }
