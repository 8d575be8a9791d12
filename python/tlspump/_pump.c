/*
 * _pump.c -- the forwarding part of the CPython binding: tlspump.spawn()
 * and Child (tp_child), Conn.forward() and Pump (tp_pump), ForwardStats.
 *
 * As everywhere in the binding: convert the arguments, call the core with
 * the GIL released, convert the result. The waiting (pump loop, child exit)
 * is the core's, with tp_py_interrupted running the signal handlers.
 */
#include "binding.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>

/* After forward() ends, how long to wait for a Child target to exit so
 * that the stats can carry its status (it normally exits at the EOF the
 * pump passed on, before the pump even ends). */
#define FORWARD_CHILD_GRACE_MS 1000

/* ---- ForwardStats ------------------------------------------------------ */

static PyTypeObject stats_type;

static PyStructSequence_Field stats_fields[] = {
    {"to_target", "plaintext bytes TLS -> target (delivered)"},
    {"to_tls", "plaintext bytes target -> TLS"},
    {"discarded", "TLS bytes dropped: the target stopped reading, or the "
                  "peer sent after our close"},
    {"tls_end", "how the TLS input ended: 'clean', 'truncated', 'reset', "
                "'timeout', 'error', 'aborted'"},
    {"target_end", "how the target's output ended (same names)"},
    {"tls_error", "error text of the TLS side, or None"},
    {"target_error", "error text of the target side, or None"},
    {"seconds", "duration of the forwarding"},
    {"returncode", "a Child target's exit status (negative: signal), or "
                   "None"},
    {NULL, NULL}};

static PyStructSequence_Desc stats_desc = {
    "tlspump.ForwardStats",
    "ForwardStats: what Conn.forward() / Pump moved and how each direction "
    "ended.",
    stats_fields, 9};

static PyObject *text_or_none(const char *s)
{
    if (!s || !*s)
        Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "replace");
}

/* status as from waitpid -> Python returncode (subprocess's convention;
 * -1 "unknown, SIGCHLD ignored" -> 0 as subprocess does). */
static PyObject *returncode_obj(int status)
{
    if (status == -1)
        return PyLong_FromLong(0);
    if (WIFEXITED(status))
        return PyLong_FromLong(WEXITSTATUS(status));
    if (WIFSIGNALED(status))
        return PyLong_FromLong(-WTERMSIG(status));
    return PyLong_FromLong(status);
}

static PyObject *stats_new(const tp_pump_stats *st, PyObject *returncode)
{
    PyObject *s = PyStructSequence_New(&stats_type);
    if (!s)
        return NULL;
    PyObject *v[9] = {PyLong_FromUnsignedLongLong(st->to_target),
                      PyLong_FromUnsignedLongLong(st->to_tls),
                      PyLong_FromUnsignedLongLong(st->discarded),
                      PyUnicode_FromString(tp_end_name(st->tls_end)),
                      PyUnicode_FromString(tp_end_name(st->target_end)),
                      text_or_none(st->tls_error),
                      text_or_none(st->target_error),
                      PyFloat_FromDouble(st->seconds),
                      Py_NewRef(returncode ? returncode : Py_None)};
    int ok = 1;
    for (int i = 0; i < 9; i++) {
        if (!v[i])
            ok = 0;
        PyStructSequence_SET_ITEM(s, i, v[i] ? v[i] : Py_NewRef(Py_None));
    }
    if (!ok) {
        Py_DECREF(s);
        return NULL;
    }
    return s;
}

/* ---- Child ------------------------------------------------------------- */

typedef struct tp_py_child {
    PyObject_HEAD tp_child *ch; /* NULL once closed */
    PyObject *argv0;            /* for repr */
    PyObject *returncode;
    pid_t pid;
    int busy; /* a call runs without the GIL, or a forward/Pump uses fd */
} tp_py_child;

static PyTypeObject child_type;

static tp_child *child_check(tp_py_child *self)
{
    if (!self->ch) {
        PyErr_SetString(PyExc_ValueError, "the child was closed");
        return NULL;
    }
    if (self->busy) {
        tp_py_raise(TP_ERROR, TP_E_ARG,
                    "the child is in use by another call (forward, Pump, "
                    "wait in another thread)",
                    NULL, NULL, EBUSY);
        return NULL;
    }
    return self->ch;
}

/* A NULL-terminated array of the bytes objects in keep (a list). */
static const char **cstr_array(PyObject *keep)
{
    Py_ssize_t n = PyList_GET_SIZE(keep);
    const char **a = PyMem_Calloc((size_t)n + 1, sizeof *a);
    if (!a) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        a[i] = PyBytes_AS_STRING(PyList_GET_ITEM(keep, i));
    return a;
}

/* Appends os.fsencode(obj) to keep; refuses NUL bytes. */
static int append_fs(PyObject *keep, PyObject *obj, const char *what)
{
    PyObject *b = NULL;
    if (!PyUnicode_Check(obj) && !PyBytes_Check(obj) &&
        !PyObject_HasAttrString(obj, "__fspath__")) {
        PyErr_Format(PyExc_TypeError,
                     "%s must be str, bytes or os.PathLike, not %.100s", what,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (!PyUnicode_FSConverter(obj, &b))
        return -1; /* ValueError for an embedded NUL */
    int r = PyList_Append(keep, b);
    Py_DECREF(b);
    return r;
}

static PyObject *py_spawn(PyObject *mod, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"argv", "env", "cwd", "stderr", NULL};
    PyObject *argv, *env = Py_None, *cwd = Py_None, *err_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|$OOO:spawn", kwlist, &argv,
                                     &env, &cwd, &err_obj))
        return NULL;
    if (PyUnicode_Check(argv) || PyBytes_Check(argv) ||
        !PySequence_Check(argv)) {
        PyErr_Format(PyExc_TypeError,
                     "argv must be a list of strings, not %.100s",
                     Py_TYPE(argv)->tp_name);
        return NULL;
    }
    PyObject *r = NULL, *argv_keep = PyList_New(0), *env_keep = NULL,
             *cwd_b = NULL, *items = NULL;
    const char **cargv = NULL, **cenv = NULL;
    if (!argv_keep)
        return NULL;
    Py_ssize_t n = PySequence_Size(argv);
    if (n < 0)
        goto out;
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "argv must not be empty");
        goto out;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *a = PySequence_GetItem(argv, i);
        if (!a)
            goto out;
        int rc = append_fs(argv_keep, a, "argv items");
        Py_DECREF(a);
        if (rc < 0)
            goto out;
    }
    if (PyBytes_GET_SIZE(PyList_GET_ITEM(argv_keep, 0)) == 0) {
        PyErr_SetString(PyExc_ValueError, "argv[0] must not be empty");
        goto out;
    }
    if (env != Py_None) {
        if (!PyMapping_Check(env) || PySequence_Check(env)) {
            PyErr_Format(PyExc_TypeError,
                         "env must be a mapping or None, not %.100s",
                         Py_TYPE(env)->tp_name);
            goto out;
        }
        if (!(items = PyMapping_Items(env)) || !(env_keep = PyList_New(0)))
            goto out;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
            PyObject *kv = PyList_GET_ITEM(items, i), *k = NULL, *v = NULL;
            if (!PyTuple_Check(kv) || PyTuple_GET_SIZE(kv) != 2) {
                PyErr_SetString(PyExc_TypeError,
                                "env.items() must give (name, value) pairs");
                goto out;
            }
            if (!PyUnicode_FSConverter(PyTuple_GET_ITEM(kv, 0), &k))
                goto out;
            if (!PyUnicode_FSConverter(PyTuple_GET_ITEM(kv, 1), &v)) {
                Py_DECREF(k);
                goto out;
            }
            int bad = PyBytes_GET_SIZE(k) == 0 ||
                      memchr(PyBytes_AS_STRING(k), '=',
                             (size_t)PyBytes_GET_SIZE(k)) != NULL;
            PyObject *e =
                bad ? NULL
                    : PyBytes_FromFormat("%s=%s", PyBytes_AS_STRING(k),
                                         PyBytes_AS_STRING(v));
            Py_DECREF(k);
            Py_DECREF(v);
            if (bad)
                PyErr_SetString(PyExc_ValueError,
                                "illegal environment variable name");
            if (!e)
                goto out;
            int rc = PyList_Append(env_keep, e);
            Py_DECREF(e);
            if (rc < 0)
                goto out;
        }
        if (!(cenv = cstr_array(env_keep)))
            goto out;
    }
    if (cwd != Py_None && !PyUnicode_FSConverter(cwd, &cwd_b))
        goto out;
    int stderr_fd = -1;
    if (err_obj != Py_None && tp_py_fd_from_obj(err_obj, &stderr_fd) < 0)
        goto out;
    if (!(cargv = cstr_array(argv_keep)))
        goto out;

    char err[512] = "";
    tp_child *ch;
    int e = 0;
    tp_py_wait pw = {0};
    TP_PY_CALL(&pw, {
        ch = tp_spawn(cargv, cenv, cwd_b ? PyBytes_AS_STRING(cwd_b) : NULL,
                      stderr_fd, err, sizeof err);
        e = errno;
    });
    if (!ch) {
        /* OSError(errno, text) picks the subclass: FileNotFoundError,
         * PermissionError...; text names the program. */
        PyObject *exc =
            PyObject_CallFunction(PyExc_OSError, "is", e ? e : EINVAL, err);
        if (exc) {
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
        }
        goto out;
    }
    tp_py_child *self = PyObject_New(tp_py_child, &child_type);
    if (!self) {
        tp_child_free(ch);
        goto out;
    }
    self->ch = ch;
    self->pid = tp_child_pid(ch);
    self->busy = 0;
    self->returncode = Py_NewRef(Py_None);
    self->argv0 = PyUnicode_DecodeFSDefaultAndSize(
        PyBytes_AS_STRING(PyList_GET_ITEM(argv_keep, 0)),
        PyBytes_GET_SIZE(PyList_GET_ITEM(argv_keep, 0)));
    if (!self->argv0) {
        Py_DECREF(self);
        goto out;
    }
    r = (PyObject *)self;
out:
    PyMem_Free(cargv);
    PyMem_Free(cenv);
    Py_XDECREF(items);
    Py_XDECREF(env_keep);
    Py_XDECREF(cwd_b);
    Py_DECREF(argv_keep);
    return r;
}

static void child_release(tp_py_child *self)
{
    tp_child *ch = self->ch;
    self->ch = NULL;
    if (!ch)
        return;
    /* May wait up to ~1 s for a child that ignores EOF (then SIGTERM,
     * SIGKILL): without the GIL. */
    tp_py_wait pw = {0};
    TP_PY_CALL(&pw, tp_child_free(ch));
}

static void child_dealloc(PyObject *op)
{
    tp_py_child *self = (tp_py_child *)op;
    child_release(self);
    Py_XDECREF(self->argv0);
    Py_XDECREF(self->returncode);
    Py_TYPE(op)->tp_free(op);
}

static PyObject *child_wait(PyObject *op, PyObject *args, PyObject *kw)
{
    tp_py_child *self = (tp_py_child *)op;
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:wait", kwlist, &timeout))
        return NULL;
    if (self->returncode != Py_None)
        return Py_NewRef(self->returncode);
    tp_py_wait pw;
    if (tp_py_wait_parse(timeout, &pw) < 0)
        return NULL;
    tp_child *ch = child_check(self);
    if (!ch)
        return NULL;
    int rc, status = 0;
    self->busy = 1;
    TP_PY_CALL(&pw, rc = tp_child_wait(ch, &pw.w, &status));
    self->busy = 0;
    if (rc == TP_DONE) {
        PyObject *code = returncode_obj(status);
        if (!code)
            return NULL;
        Py_SETREF(self->returncode, code);
        return Py_NewRef(code);
    }
    if (rc == TP_TIMEOUT) {
        PyObject *r =
            PyUnicode_FromFormat("wait: process %d did not exit within %R s",
                                 (int)self->pid, timeout);
        if (!r)
            return NULL;
        const char *text = PyUnicode_AsUTF8(r);
        if (text)
            tp_py_raise(TP_TIMEOUT, TP_E_TIMEOUT, text, "timed out", "wait",
                        ETIMEDOUT);
        Py_DECREF(r);
        return NULL;
    }
    if (rc == TP_INTERRUPTED)
        return tp_py_raise(rc, TP_E_INTERRUPTED, "interrupted", NULL, "wait",
                           0);
    errno = errno ? errno : ECHILD;
    return PyErr_SetFromErrno(PyExc_OSError);
}

static PyObject *child_kill(PyObject *op, PyObject *args, PyObject *kw)
{
    tp_py_child *self = (tp_py_child *)op;
    static char *kwlist[] = {"sig", NULL};
    int sig = SIGTERM;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|i:kill", kwlist, &sig))
        return NULL;
    if (!self->ch)
        Py_RETURN_NONE; /* closed: reaped, nothing to signal */
    /* Allowed while busy: killing a child during forward() is how a
     * caller stops it. The pid is ours until reaped. */
    if (tp_child_kill(self->ch, sig) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *child_close(PyObject *op, PyObject *unused)
{
    tp_py_child *self = (tp_py_child *)op;
    if (!self->ch)
        Py_RETURN_NONE;
    if (!child_check(self))
        return NULL;
    child_release(self);
    Py_RETURN_NONE;
}

static PyObject *child_fileno(PyObject *op, PyObject *unused)
{
    tp_py_child *self = (tp_py_child *)op;
    if (!self->ch) {
        PyErr_SetString(PyExc_ValueError, "the child was closed");
        return NULL;
    }
    return PyLong_FromLong(tp_child_fd(self->ch));
}

static PyObject *child_enter(PyObject *op, PyObject *unused)
{
    return Py_NewRef(op);
}

static PyObject *child_exit(PyObject *op, PyObject *args)
{
    PyObject *r = child_close(op, NULL);
    if (!r)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static PyObject *child_get_pid(PyObject *op, void *closure)
{
    return PyLong_FromLong(((tp_py_child *)op)->pid);
}

static PyObject *child_get_fd(PyObject *op, void *closure)
{
    tp_py_child *self = (tp_py_child *)op;
    return PyLong_FromLong(self->ch ? tp_child_fd(self->ch) : -1);
}

static PyObject *child_get_returncode(PyObject *op, void *closure)
{
    return Py_NewRef(((tp_py_child *)op)->returncode);
}

static PyObject *child_repr(PyObject *op)
{
    tp_py_child *self = (tp_py_child *)op;
    if (self->returncode != Py_None)
        return PyUnicode_FromFormat("<tlspump.Child %R pid=%d returncode=%R>",
                                    self->argv0, (int)self->pid,
                                    self->returncode);
    return PyUnicode_FromFormat("<tlspump.Child %R pid=%d%s>", self->argv0,
                                (int)self->pid, self->ch ? "" : " closed");
}

static PyMethodDef child_methods[] = {
    {"wait", (PyCFunction)(void (*)(void))child_wait,
     METH_VARARGS | METH_KEYWORDS,
     "wait(timeout=None)\n--\n\nWaits for the exit and returns the "
     "returncode (negative: killed by\nthat signal). Raises tlspump.Timeout "
     "when timeout seconds pass (0: do\nnot wait)."},
    {"kill", (PyCFunction)(void (*)(void))child_kill,
     METH_VARARGS | METH_KEYWORDS,
     "kill(sig=signal.SIGTERM)\n--\n\nSends sig (no-op once reaped)."},
    {"close", child_close, METH_NOARGS,
     "close()\n--\n\nCloses the socket (the child sees EOF), waits a moment, "
     "then SIGTERM,\nSIGKILL; the child is reaped: no zombie."},
    {"fileno", child_fileno, METH_NOARGS,
     "fileno()\n--\n\nOur end of the child's stdin/stdout socketpair."},
    {"__enter__", child_enter, METH_NOARGS, NULL},
    {"__exit__", child_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef child_getset[] = {
    {"pid", child_get_pid, NULL, "the process id", NULL},
    {"fd", child_get_fd, NULL, "fileno(); -1 once closed", NULL},
    {"returncode", child_get_returncode, NULL, "None until wait() saw the exit",
     NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject child_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tlspump.Child",
    .tp_basicsize = sizeof(tp_py_child),
    .tp_dealloc = child_dealloc,
    .tp_repr = child_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A command started by tlspump.spawn() with stdin and stdout on "
              "a socketpair.",
    .tp_methods = child_methods,
    .tp_getset = child_getset,
};

/* ---- targets ----------------------------------------------------------- */

/* target: Child, socket/int fd, or (read_fd, write_fd). *child gets the
 * Child (borrowed) or NULL. */
static int target_fds(PyObject *target, int *rfd, int *wfd, tp_py_child **child)
{
    *child = NULL;
    if (PyObject_TypeCheck(target, &child_type)) {
        tp_py_child *c = (tp_py_child *)target;
        if (!child_check(c))
            return -1;
        *rfd = *wfd = tp_child_fd(c->ch);
        *child = c;
        return 0;
    }
    if (PyTuple_Check(target)) {
        if (PyTuple_GET_SIZE(target) != 2) {
            PyErr_SetString(PyExc_ValueError,
                            "a target tuple must be (read_fd, write_fd)");
            return -1;
        }
        if (tp_py_fd_from_obj(PyTuple_GET_ITEM(target, 0), rfd) < 0 ||
            tp_py_fd_from_obj(PyTuple_GET_ITEM(target, 1), wfd) < 0)
            return -1;
        return 0;
    }
    if (tp_py_fd_from_obj(target, rfd) < 0) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "target must be a tlspump.Child, a socket, a file "
                         "descriptor or a (read_fd, write_fd) tuple, not "
                         "%.100s",
                         Py_TYPE(target)->tp_name);
        }
        return -1;
    }
    *wfd = *rfd;
    return 0;
}

static int idle_ms_arg(PyObject *v, int *ms)
{
    *ms = 0;
    if (v == Py_None)
        return 0;
    if (PyBool_Check(v) || !(PyLong_Check(v) || PyFloat_Check(v))) {
        PyErr_Format(PyExc_TypeError,
                     "idle_timeout must be a number of seconds or None, not "
                     "%.100s",
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    double s = PyFloat_AsDouble(v);
    if (s == -1.0 && PyErr_Occurred())
        return -1;
    if (isnan(s) || s <= 0) {
        PyErr_SetString(PyExc_ValueError, "idle_timeout must be > 0 or None");
        return -1;
    }
    double ms_d = ceil(s * 1000.0);
    *ms = ms_d >= (double)INT_MAX ? INT_MAX : (int)ms_d;
    return 0;
}

/* tp_pump_new + options; NULL with an exception. */
static tp_pump *pump_create(tp_conn *c, int rfd, int wfd, int idle_ms,
                            int close_write, tp_py_child *child)
{
    char err[512] = "";
    tp_pump *p = tp_pump_new(c, rfd, wfd, err, sizeof err);
    if (!p) {
        tp_py_raise(TP_ERROR, TP_E_ARG, err, err, "forward",
                    strstr(err, "not open") ? EBADF : 0);
        return NULL;
    }
    tp_pump_set_idle_timeout(p, idle_ms);
    tp_pump_set_close_target_write(p, close_write);
    if (child)
        tp_pump_watch_child(p, child->ch);
    return p;
}

/* ---- Conn.forward ------------------------------------------------------ */

/* Runs without the GIL: the pump to its end, then a short wait for a Child
 * target's exit so the stats can carry its status. */
static int run_forward(tp_pump *p, tp_py_wait *pw, tp_child *ch, int *crc,
                       int *status)
{
    int rc = tp_pump_run(p, &pw->w);
    if (rc == TP_DONE && ch) {
        tp_wait grace = pw->w;
        grace.timeout_ms = FORWARD_CHILD_GRACE_MS;
        *crc = tp_child_wait(ch, &grace, status);
    }
    return rc;
}

static PyObject *conn_forward(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"target", "idle_timeout", "close_target_write",
                             NULL};
    PyObject *target, *idle = Py_None;
    int close_write = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|$Op:forward", kwlist, &target,
                                     &idle, &close_write))
        return NULL;
    int idle_ms, rfd, wfd;
    tp_py_child *child;
    if (idle_ms_arg(idle, &idle_ms) < 0 ||
        target_fds(target, &rfd, &wfd, &child) < 0)
        return NULL;
    tp_conn *c = tp_py_conn_check(self);
    if (!c)
        return NULL;
    tp_pump *p = pump_create(c, rfd, wfd, idle_ms, close_write, child);
    if (!p)
        return NULL;
    tp_py_wait pw;
    if (tp_py_wait_parse(Py_None, &pw) < 0) { /* until done; signals */
        tp_pump_free(p);
        return NULL;
    }
    Py_XINCREF(child);
    if (child)
        child->busy = 1;
    int rc, crc = TP_TIMEOUT, status = 0;
    TP_PY_CONN_CALL(
        self, &pw,
        rc = run_forward(p, &pw, child ? child->ch : NULL, &crc, &status));
    if (child)
        child->busy = 0;
    PyObject *r = NULL;
    if (rc == TP_DONE) {
        if (crc == TP_DONE) {
            PyObject *code = returncode_obj(status);
            if (code)
                Py_SETREF(child->returncode, code);
        }
        if (!PyErr_Occurred())
            r = stats_new(tp_pump_stats_get(p),
                          child ? child->returncode : NULL);
    } else {
        tp_py_raise(rc, TP_E_INTERRUPTED, "forward interrupted", NULL,
                    "forward", 0);
    }
    tp_pump_free(p);
    Py_XDECREF(child);
    return r;
}

static PyMethodDef conn_forward_def = {
    "forward", (PyCFunction)(void (*)(void))conn_forward,
    METH_VARARGS | METH_KEYWORDS,
    "forward(target, *, idle_timeout=None, close_target_write=False)\n--\n\n"
    "Forwards plaintext both ways between this connection and target (a\n"
    "tlspump.Child, a socket, a file descriptor, or a (read_fd, write_fd)\n"
    "tuple) until both directions have ended; returns ForwardStats. Blocks\n"
    "without the GIL; signal handlers run (Ctrl-C interrupts it).\n"
    "idle_timeout: seconds without a byte either way end it.\n"
    "close_target_write: the write fd (e.g. a pipe) is handed over and\n"
    "closed to pass on the peer's EOF; a socket is shut down instead.\n"
    "The target fds are made non-blocking and are not closed."};

/* ---- Pump -------------------------------------------------------------- */

typedef struct tp_py_pump {
    PyObject_HEAD tp_pump *p;
    PyObject *conn;   /* the Conn, marked busy while the pump owns it */
    PyObject *target; /* kept alive (a Child, a socket) */
    tp_py_child *child;
    int stepping;
} tp_py_pump;

static PyTypeObject pump_type;

/* Gives the connection (and a Child) back; frees the core pump. */
static void pump_release(tp_py_pump *self)
{
    if (self->p) {
        tp_pump_free(self->p);
        self->p = NULL;
        if (self->conn)
            ((tp_py_conn *)self->conn)->busy = 0;
        if (self->child)
            self->child->busy = 0;
    }
    Py_CLEAR(self->conn);
    Py_CLEAR(self->target);
    self->child = NULL; /* borrowed from target */
}

static PyObject *pump_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"conn", "target", "idle_timeout",
                             "close_target_write", NULL};
    PyObject *connobj, *target, *idle = Py_None;
    int close_write = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|$Op:Pump", kwlist, &connobj,
                                     &target, &idle, &close_write))
        return NULL;
    int idle_ms, rfd, wfd;
    tp_py_child *child;
    if (idle_ms_arg(idle, &idle_ms) < 0 ||
        target_fds(target, &rfd, &wfd, &child) < 0)
        return NULL;
    tp_conn *c = tp_py_conn_check(connobj);
    if (!c)
        return NULL;
    tp_py_pump *self = (tp_py_pump *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->p = pump_create(c, rfd, wfd, idle_ms, close_write, child);
    if (!self->p) {
        Py_DECREF(self);
        return NULL;
    }
    /* The Conn (and Child) belong to the pump until close(): other calls
     * on them would race with step(); Conn.close() would free it. */
    self->conn = Py_NewRef(connobj);
    ((tp_py_conn *)connobj)->busy = 1;
    self->target = Py_NewRef(target);
    self->child = child;
    if (child)
        child->busy = 1;
    return (PyObject *)self;
}

static int pump_traverse(PyObject *op, visitproc visit, void *arg)
{
    tp_py_pump *self = (tp_py_pump *)op;
    Py_VISIT(self->conn);
    Py_VISIT(self->target);
    return 0;
}

static int pump_clear(PyObject *op)
{
    pump_release((tp_py_pump *)op);
    return 0;
}

static void pump_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    pump_release((tp_py_pump *)op);
    Py_TYPE(op)->tp_free(op);
}

static tp_pump *pump_check(tp_py_pump *self)
{
    if (!self->p) {
        PyErr_SetString(PyExc_ValueError, "the pump was closed");
        return NULL;
    }
    if (self->stepping) {
        tp_py_raise(TP_ERROR, TP_E_ARG,
                    "the pump is being stepped in another thread", NULL, NULL,
                    EBUSY);
        return NULL;
    }
    return self->p;
}

static PyObject *pump_step(PyObject *op, PyObject *unused)
{
    tp_py_pump *self = (tp_py_pump *)op;
    tp_pump *p = pump_check(self);
    if (!p)
        return NULL;
    int done;
    tp_py_wait pw = {0};
    self->stepping = 1;
    TP_PY_CALL(&pw, done = tp_pump_step(p));
    self->stepping = 0;
    return PyBool_FromLong(done);
}

static PyObject *pump_wants(PyObject *op, PyObject *unused)
{
    tp_py_pump *self = (tp_py_pump *)op;
    tp_pump *p = pump_check(self);
    if (!p)
        return NULL;
    struct pollfd fds[4];
    int t;
    int n = tp_pump_wants(p, fds, 4, &t);
    PyObject *l = PyList_New(0);
    for (int i = 0; l && i < n; i++) {
        /* An fd watched for errors only (events 0) cannot be registered
         * with selectors or asyncio: left out. */
        int ev = tp_py_want(fds[i].events);
        if (!ev)
            continue;
        PyObject *item = Py_BuildValue("(ii)", fds[i].fd, ev);
        if (!item || PyList_Append(l, item) < 0)
            Py_CLEAR(l);
        Py_XDECREF(item);
    }
    return l;
}

static PyObject *pump_get_timeout(PyObject *op, void *closure)
{
    tp_py_pump *self = (tp_py_pump *)op;
    tp_pump *p = pump_check(self);
    if (!p)
        return NULL;
    struct pollfd fds[4];
    int t;
    tp_pump_wants(p, fds, 4, &t);
    if (t < 0)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(t / 1000.0);
}

static PyObject *pump_get_done(PyObject *op, void *closure)
{
    tp_py_pump *self = (tp_py_pump *)op;
    if (!self->p)
        Py_RETURN_TRUE;
    return PyBool_FromLong(tp_pump_done(self->p));
}

static PyObject *pump_get_stats(PyObject *op, void *closure)
{
    tp_py_pump *self = (tp_py_pump *)op;
    tp_pump *p = pump_check(self);
    if (!p)
        return NULL;
    return stats_new(tp_pump_stats_get(p), NULL);
}

static PyObject *pump_close(PyObject *op, PyObject *unused)
{
    tp_py_pump *self = (tp_py_pump *)op;
    if (self->p && !pump_check(self))
        return NULL;
    pump_release(self);
    Py_RETURN_NONE;
}

static PyObject *pump_enter(PyObject *op, PyObject *unused)
{
    return Py_NewRef(op);
}

static PyObject *pump_exit(PyObject *op, PyObject *args)
{
    PyObject *r = pump_close(op, NULL);
    if (!r)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static PyMethodDef pump_methods[] = {
    {"step", pump_step, METH_NOARGS,
     "step()\n--\n\nDoes all the work possible now without blocking; True "
     "once finished."},
    {"wants", pump_wants, METH_NOARGS,
     "wants()\n--\n\n[(fd, events)] to wait for before the next step(); "
     "events is\nWANT_READ|WANT_WRITE (selectors.EVENT_READ|EVENT_WRITE). "
     "Also step()\nafter `timeout` seconds even without events."},
    {"close", pump_close, METH_NOARGS,
     "close()\n--\n\nFrees the pump and gives the Conn (and Child) back. "
     "No I/O."},
    {"__enter__", pump_enter, METH_NOARGS, NULL},
    {"__exit__", pump_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef pump_getset[] = {
    {"timeout", pump_get_timeout, NULL,
     "seconds until step() is due without events (idle/linger deadline, 0 "
     "when\nwork is left), or None",
     NULL},
    {"done", pump_get_done, NULL, "True once both directions ended", NULL},
    {"stats", pump_get_stats, NULL, "ForwardStats so far", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject pump_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tlspump.Pump",
    .tp_basicsize = sizeof(tp_py_pump),
    .tp_dealloc = pump_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Pump(conn, target, *, idle_timeout=None, "
              "close_target_write=False)\n--\n\n"
              "Conn.forward() for callers with their own event loop: "
              "step(), wants(),\ntimeout, done, stats. The Conn (and a Child "
              "target) belong to the pump\nuntil close().",
    .tp_traverse = pump_traverse,
    .tp_clear = pump_clear,
    .tp_methods = pump_methods,
    .tp_getset = pump_getset,
    .tp_new = pump_new,
};

/* ---- module ------------------------------------------------------------ */

static PyMethodDef module_functions[] = {
    {"spawn", (PyCFunction)(void (*)(void))py_spawn,
     METH_VARARGS | METH_KEYWORDS,
     "spawn(argv, *, env=None, cwd=None, stderr=None)\n--\n\n"
     "Starts argv (argv[0] searched in PATH) with stdin and stdout on a\n"
     "socketpair; returns a Child. env: a mapping (None: inherit); stderr:\n"
     "a file descriptor or object with fileno() (None: inherit). All other\n"
     "fds are closed in the child; signal dispositions are reset. A\n"
     "program that cannot be started raises OSError (FileNotFoundError...)."},
    {NULL, NULL, 0, NULL}};

int tp_py_init_pump(PyObject *m)
{
    if (!stats_type.tp_name &&
        PyStructSequence_InitType2(&stats_type, &stats_desc) < 0)
        return -1;
    if (PyType_Ready(&child_type) < 0 || PyType_Ready(&pump_type) < 0)
        return -1;
    /* Conn.forward: a method of the Conn type defined in _tlspump.c. */
    PyObject *descr = PyDescr_NewMethod(&tp_py_conn_type, &conn_forward_def);
    if (!descr)
        return -1;
    int r = PyDict_SetItemString(tp_py_conn_type.tp_dict, "forward", descr);
    Py_DECREF(descr);
    if (r < 0)
        return -1;
    PyType_Modified(&tp_py_conn_type);
    if (PyModule_AddFunctions(m, module_functions) < 0 ||
        PyModule_AddObjectRef(m, "Child", (PyObject *)&child_type) < 0 ||
        PyModule_AddObjectRef(m, "Pump", (PyObject *)&pump_type) < 0 ||
        PyModule_AddObjectRef(m, "ForwardStats", (PyObject *)&stats_type) < 0)
        return -1;
    return 0;
}
