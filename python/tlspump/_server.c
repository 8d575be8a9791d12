/*
 * _server.c -- tlspump._tlspump._Server: the core's tp_server.
 *
 * The Python-level tlspump.Server (server.py) normalises the arguments
 * (addresses, sockets, log files) and adds the background thread; this type
 * only converts plain values and calls the core: _Server(...) is
 * tp_server_new, run() is tp_server_run with the GIL released, stop() is
 * tp_server_stop, close() is tp_server_free.
 */
#include "binding.h"

#include <limits.h>
#include <math.h>

typedef struct tp_py_server {
    PyObject_HEAD tp_server *srv;
    int running; /* run() is in progress (the GIL is released) */
} tp_py_server;

/* seconds (int/float, None -> 0) into ms; -1 with an exception. */
static int seconds_ms(PyObject *v, const char *name, int *out)
{
    if (v == Py_None) {
        *out = 0;
        return 0;
    }
    if (PyBool_Check(v) || !(PyLong_Check(v) || PyFloat_Check(v))) {
        PyErr_Format(PyExc_TypeError,
                     "%s must be a number of seconds or None, not %.100s", name,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    double s = PyFloat_AsDouble(v);
    if (s == -1.0 && PyErr_Occurred())
        return -1;
    if (isnan(s) || s < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be >= 0 or None", name);
        return -1;
    }
    double ms = ceil(s * 1000.0);
    *out = ms >= (double)INT_MAX ? INT_MAX : (int)ms;
    return 0;
}

/* A list/tuple of str (bytes allowed when fs) into a NULL-terminated array
 * pointing into the items (kept alive by *keep). */
static const char **str_array(PyObject *seq, const char *name, int fs,
                              PyObject **keep)
{
    *keep = NULL;
    if (!PyList_Check(seq) && !PyTuple_Check(seq)) {
        PyErr_Format(PyExc_TypeError,
                     "%s must be a list of strings, not %.100s", name,
                     Py_TYPE(seq)->tp_name);
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n == 0) {
        PyErr_Format(PyExc_ValueError, "%s must not be empty", name);
        return NULL;
    }
    PyObject *k = PyList_New(n);
    const char **a = PyMem_Calloc((size_t)n + 1, sizeof *a);
    if (!k || !a)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *b = NULL;
        if (fs) {
            if (!PyUnicode_Check(item) && !PyBytes_Check(item)) {
                PyErr_Format(PyExc_TypeError,
                             "%s items must be str or bytes, not %.100s", name,
                             Py_TYPE(item)->tp_name);
                goto fail;
            }
            if (!PyUnicode_FSConverter(item, &b))
                goto fail;
        } else {
            if (!PyUnicode_Check(item)) {
                PyErr_Format(PyExc_TypeError,
                             "%s items must be str, not %.100s", name,
                             Py_TYPE(item)->tp_name);
                goto fail;
            }
            b = PyUnicode_AsUTF8String(item);
            if (!b)
                goto fail;
        }
        PyList_SET_ITEM(k, i, b);
        if (strlen(PyBytes_AS_STRING(b)) != (size_t)PyBytes_GET_SIZE(b)) {
            PyErr_Format(PyExc_ValueError, "%s items must not contain NUL",
                         name);
            goto fail;
        }
        a[i] = PyBytes_AS_STRING(b);
    }
    *keep = k;
    return a;
fail:
    Py_XDECREF(k);
    PyMem_Free(a);
    return NULL;
}

static int server_init(PyObject *op, PyObject *args, PyObject *kw)
{
    tp_py_server *self = (tp_py_server *)op;
    static char *kwlist[] = {"listen",       "ctx",       "command",
                             "backend",      "max_conns", "handshake_timeout",
                             "idle_timeout", "grace",     "workers",
                             "log_fd",       "log_json",  NULL};
    PyObject *listen, *ctxobj, *command = Py_None, *backend = Py_None;
    PyObject *hs = NULL, *idle = Py_None, *grace = NULL;
    int max_conns = 1024, workers = 1, log_fd = 2, log_json = 0;
    if (self->srv) {
        PyErr_SetString(PyExc_RuntimeError, "_Server is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO!|$OOiOOOiip", kwlist,
                                     &listen, &tp_py_context_type, &ctxobj,
                                     &command, &backend, &max_conns, &hs, &idle,
                                     &grace, &workers, &log_fd, &log_json))
        return -1;
    tp_server_options o;
    tp_server_options_init(&o);
    if (hs && seconds_ms(hs, "handshake_timeout", &o.handshake_timeout_ms) < 0)
        return -1;
    if (seconds_ms(idle, "idle_timeout", &o.idle_timeout_ms) < 0)
        return -1;
    if (grace && seconds_ms(grace, "grace", &o.grace_ms) < 0)
        return -1;
    o.max_conns = max_conns;
    o.workers = workers;
    o.log_fd = log_fd;
    o.log_json = log_json;

    PyObject *keep_listen = NULL, *keep_cmd = NULL;
    const char **l = NULL, **cmd = NULL;
    int rc = -1;
    if (!(l = str_array(listen, "listen", 0, &keep_listen)))
        goto done;
    o.listen = l;
    if (command != Py_None) {
        if (!(cmd = str_array(command, "command", 1, &keep_cmd)))
            goto done;
        o.command = cmd;
    }
    if (backend != Py_None) {
        if (!PyUnicode_Check(backend)) {
            PyErr_Format(PyExc_TypeError, "backend must be a str, not %.100s",
                         Py_TYPE(backend)->tp_name);
            goto done;
        }
        if (!(o.backend = PyUnicode_AsUTF8(backend)))
            goto done;
    }
    char err[512];
    tp_ctx *ctx = ((tp_py_context *)ctxobj)->ctx;
    tp_server *srv;
    /* getaddrinfo() may block: without the GIL. */
    Py_BEGIN_ALLOW_THREADS srv = tp_server_new(ctx, &o, err, sizeof err);
    Py_END_ALLOW_THREADS if (!srv)
    {
        tp_py_raise(TP_ERROR, TP_E_ARG, err, err, "listen", 0);
        goto done;
    }
    self->srv = srv;
    rc = 0;
done:
    Py_XDECREF(keep_listen);
    Py_XDECREF(keep_cmd);
    PyMem_Free(l);
    PyMem_Free(cmd);
    return rc;
}

static tp_server *server_check(tp_py_server *self)
{
    if (!self->srv) {
        tp_py_raise(TP_ERROR, TP_E_CLOSED, "server is closed",
                    "server is closed", NULL, 0);
        return NULL;
    }
    return self->srv;
}

static PyObject *server_run(PyObject *op, PyObject *unused)
{
    tp_py_server *self = (tp_py_server *)op;
    tp_server *srv = server_check(self);
    if (!srv)
        return NULL;
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "the server is already running");
        return NULL;
    }
    tp_py_wait pw;
    if (tp_py_wait_parse(Py_None, &pw) < 0)
        return NULL;
    int rc;
    self->running = 1;
    TP_PY_CALL(&pw, rc = tp_server_run(srv, &pw.w));
    self->running = 0;
    if (rc == TP_DONE)
        Py_RETURN_NONE;
    if (rc == TP_INTERRUPTED && PyErr_Occurred())
        return NULL; /* the signal handler's exception, after the stop */
    if (rc == TP_INTERRUPTED)
        Py_RETURN_NONE;
    const char *e = tp_server_error(srv);
    return tp_py_raise(TP_ERROR, TP_E_SYS, e, e, "serve", 0);
}

static PyObject *server_stop(PyObject *op, PyObject *unused)
{
    tp_py_server *self = (tp_py_server *)op;
    /* Safe while run() is in progress in another thread: one write(2). */
    if (self->srv)
        tp_server_stop(self->srv);
    Py_RETURN_NONE;
}

static PyObject *server_close(PyObject *op, PyObject *unused)
{
    tp_py_server *self = (tp_py_server *)op;
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the server is running; stop() it and wait for run() "
                        "to return first");
        return NULL;
    }
    tp_server_free(self->srv);
    self->srv = NULL;
    Py_RETURN_NONE;
}

static PyObject *server_addresses(PyObject *op, void *closure)
{
    tp_server *srv = server_check((tp_py_server *)op);
    if (!srv)
        return NULL;
    int n = tp_server_address_count(srv);
    PyObject *t = PyTuple_New(n);
    for (int i = 0; t && i < n; i++) {
        PyObject *s = PyUnicode_DecodeFSDefault(tp_server_address(srv, i));
        if (!s) {
            Py_CLEAR(t);
            break;
        }
        PyTuple_SET_ITEM(t, i, s);
    }
    return t;
}

static PyObject *server_get_running(PyObject *op, void *closure)
{
    return PyBool_FromLong(((tp_py_server *)op)->running);
}

static PyObject *server_get_closed(PyObject *op, void *closure)
{
    return PyBool_FromLong(((tp_py_server *)op)->srv == NULL);
}

static void server_dealloc(PyObject *op)
{
    tp_py_server *self = (tp_py_server *)op;
    /* run() holds a reference to self: never running here. */
    tp_server_free(self->srv);
    Py_TYPE(op)->tp_free(op);
}

static PyMethodDef server_methods[] = {
    {"run", server_run, METH_NOARGS,
     "run()\n--\n\nRuns the loop (GIL released) until stop(), then stops "
     "gracefully. A signal handler's exception (KeyboardInterrupt) starts "
     "the graceful stop and is raised after it."},
    {"stop", server_stop, METH_NOARGS,
     "stop()\n--\n\nAsks the loop to stop gracefully (thread- and "
     "signal-handler-safe); a second call ends the grace period at once."},
    {"close", server_close, METH_NOARGS,
     "close()\n--\n\nCloses the listening sockets and frees the server."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef server_getset[] = {
    {"addresses", server_addresses, NULL,
     "The bound addresses as strings (\"127.0.0.1:8443\", \"unix:/p\").", NULL},
    {"running", server_get_running, NULL, "run() is in progress.", NULL},
    {"closed", server_get_closed, NULL, "close() was called.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject tp_py_server_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tlspump._tlspump._Server",
    .tp_basicsize = sizeof(tp_py_server),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "_Server(listen, ctx, *, command=None, backend=None, "
              "max_conns=1024, handshake_timeout=10, idle_timeout=None, "
              "grace=10, workers=1, log_fd=2, log_json=False)\n--\n\n"
              "The core's multi-connection server; use tlspump.Server.",
    .tp_new = PyType_GenericNew,
    .tp_init = server_init,
    .tp_dealloc = server_dealloc,
    .tp_methods = server_methods,
    .tp_getset = server_getset,
};

/*
 * _forward_client(conn, rfd, wfd) -> dict: the pump of `tlspump connect`:
 * like Conn.forward((rfd, wfd)) but, as a client, it keeps forwarding the
 * server's answer after the input (stdin) ended and our close_notify went
 * out (tp_pump_set_read_after_close), until the server's close_notify.
 */
static PyObject *forward_client(PyObject *mod, PyObject *args)
{
    PyObject *connobj;
    int rfd, wfd;
    if (!PyArg_ParseTuple(args, "Oii:_forward_client", &connobj, &rfd, &wfd))
        return NULL;
    tp_conn *c = tp_py_conn_check(connobj);
    if (!c)
        return NULL;
    char err[256];
    tp_pump *p = tp_pump_new(c, rfd, wfd, err, sizeof err);
    if (!p)
        return tp_py_raise(TP_ERROR, TP_E_ARG, err, err, "forward", 0);
    tp_pump_set_read_after_close(p, 1);
    tp_py_wait pw;
    if (tp_py_wait_parse(Py_None, &pw) < 0) {
        tp_pump_free(p);
        return NULL;
    }
    int rc;
    TP_PY_CONN_CALL(connobj, &pw, rc = tp_pump_run(p, &pw.w));
    tp_pump_stats st = *tp_pump_stats_get(p);
    tp_pump_free(p);
    if (rc == TP_INTERRUPTED && PyErr_Occurred())
        return NULL;
    return Py_BuildValue(
        "{s:K,s:K,s:s,s:s,s:s,s:s,s:d}", "to_target",
        (unsigned long long)st.to_target, "to_tls",
        (unsigned long long)st.to_tls, "tls_end", tp_end_name(st.tls_end),
        "target_end", tp_end_name(st.target_end), "tls_error", st.tls_error,
        "target_error", st.target_error, "seconds", st.seconds);
}

static PyMethodDef module_functions[] = {
    {"_forward_client", forward_client, METH_VARARGS,
     "_forward_client(conn, rfd, wfd)\n--\n\nThe pump of `tlspump "
     "connect` (private)."},
    {NULL, NULL, 0, NULL},
};

int tp_py_init_server(PyObject *m)
{
    if (PyType_Ready(&tp_py_server_type) < 0)
        return -1;
    if (PyModule_AddFunctions(m, module_functions) < 0)
        return -1;
    return PyModule_AddObjectRef(m, "_Server", (PyObject *)&tp_py_server_type);
}
