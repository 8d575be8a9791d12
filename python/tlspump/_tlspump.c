/*
 * _tlspump.c -- the CPython binding: module, exceptions, Context, Conn.
 *
 * No logic lives here: each method converts its arguments, makes ONE core
 * call with the GIL released and converts the result (see binding.h).
 */
#include "binding.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <string.h>

PyObject *tp_py_Error;
PyObject *tp_py_TruncatedError;
PyObject *tp_py_ResetError;
PyObject *tp_py_Timeout;
PyObject *tp_py_ClosedError;

/* ---- helpers shared through binding.h ---------------------------------- */

/* Core strings are ASCII or UTF-8; never fail on a stray byte. */
static PyObject *str_or_none(const char *s)
{
    if (!s)
        Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "replace");
}

PyObject *tp_py_exc_class(int rc, tp_errkind kind)
{
    if (rc == TP_TIMEOUT || kind == TP_E_TIMEOUT)
        return tp_py_Timeout;
    switch (kind) {
    case TP_E_TRUNCATED:
        return tp_py_TruncatedError;
    case TP_E_RESET:
        return tp_py_ResetError;
    case TP_E_CLOSED:
        return tp_py_ClosedError;
    default:
        return tp_py_Error;
    }
}

static int set_attr_str(PyObject *exc, const char *name, const char *value)
{
    PyObject *v = str_or_none(value);
    if (!v)
        return -1;
    int r = PyObject_SetAttrString(exc, name, v);
    Py_DECREF(v);
    return r;
}

PyObject *tp_py_raise(int rc, tp_errkind kind, const char *text,
                      const char *reason, const char *operation, int err_no)
{
    if (rc == TP_INTERRUPTED || kind == TP_E_INTERRUPTED) {
        /* A signal handler raised (KeyboardInterrupt...): that is the
         * exception the caller must see. */
        if (PyErr_Occurred())
            return NULL;
        kind = TP_E_INTERRUPTED;
        if (!err_no)
            err_no = EINTR;
    }
    if (rc == TP_TIMEOUT && kind == TP_E_NONE)
        kind = TP_E_TIMEOUT;
    if (!text || !*text)
        text = reason && *reason ? reason : "unknown error";

    PyObject *cls = tp_py_exc_class(rc, kind);
    PyObject *msg = str_or_none(text);
    if (!msg)
        return NULL;
    /* One argument only, so str(e) is the text itself; errno is set as an
     * attribute (OSError(errno, text) would prefix "[Errno N]"). */
    PyObject *exc = PyObject_CallFunctionObjArgs(cls, msg, NULL);
    Py_DECREF(msg);
    if (!exc)
        return NULL;
    if (set_attr_str(exc, "reason", reason) < 0 ||
        set_attr_str(exc, "operation", operation) < 0 ||
        set_attr_str(exc, "kind", tp_errkind_name(kind)) < 0)
        goto fail;
    if (err_no) {
        PyObject *e = PyLong_FromLong(err_no);
        if (!e)
            goto fail;
        int r = PyObject_SetAttrString(exc, "errno", e);
        Py_DECREF(e);
        if (r < 0)
            goto fail;
    }
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
fail:
    Py_DECREF(exc);
    return NULL;
}

PyObject *tp_py_raise_conn(tp_conn *c, int rc, const char *op,
                           const tp_py_wait *pw)
{
    if (rc == TP_TIMEOUT) {
        char text[128];
        char *secs =
            PyOS_double_to_string(pw ? pw->seconds : 0.0, 'g', 6, 0, NULL);
        if (!secs)
            return NULL;
        PyOS_snprintf(text, sizeof text, "%s timed out after %s s", op, secs);
        PyMem_Free(secs);
        return tp_py_raise(rc, TP_E_TIMEOUT, text, "timed out", op, ETIMEDOUT);
    }
    if (rc == TP_INTERRUPTED)
        return tp_py_raise(rc, TP_E_INTERRUPTED, "interrupted", NULL, op, 0);
    const char *operation = tp_conn_operation(c);
    return tp_py_raise(
        rc, tp_conn_errkind(c), tp_conn_error(c), tp_conn_reason(c),
        operation && *operation ? operation : op, tp_conn_errno(c));
}

int tp_py_interrupted(void *arg)
{
    tp_py_wait *pw = arg;
    PyEval_RestoreThread(pw->ts);
    int r = PyErr_CheckSignals();
    pw->ts = PyEval_SaveThread();
    return r < 0;
}

int tp_py_wait_parse(PyObject *timeout, tp_py_wait *pw)
{
    memset(pw, 0, sizeof *pw);
    if (!timeout)
        return 0; /* the default: non-blocking */
    if (timeout == Py_None) {
        pw->w.timeout_ms = -1;
        pw->seconds = -1;
    } else {
        if (PyBool_Check(timeout) ||
            !(PyLong_Check(timeout) || PyFloat_Check(timeout) ||
              PyIndex_Check(timeout))) {
            PyErr_Format(PyExc_TypeError,
                         "timeout must be a number of seconds or None, "
                         "not %.100s",
                         Py_TYPE(timeout)->tp_name);
            return -1;
        }
        double s = PyFloat_AsDouble(timeout);
        if (s == -1.0 && PyErr_Occurred())
            return -1;
        if (isnan(s) || s < 0) {
            PyErr_SetString(PyExc_ValueError,
                            "timeout must be >= 0 (0: do not wait) or None "
                            "(wait forever)");
            return -1;
        }
        if (s == 0)
            return 0;
        double ms = ceil(s * 1000.0); /* a tiny timeout still waits */
        if (isinf(s))
            pw->w.timeout_ms = -1;
        else
            pw->w.timeout_ms = ms >= (double)INT_MAX ? INT_MAX : (int)ms;
        pw->seconds = s;
    }
    pw->w.interrupted = tp_py_interrupted;
    pw->w.arg = pw;
    return 0;
}

tp_conn *tp_py_conn_check(PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, &tp_py_conn_type)) {
        PyErr_Format(PyExc_TypeError, "expected a tlspump.Conn, not %.100s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    tp_py_conn *self = (tp_py_conn *)obj;
    if (!self->conn) {
        tp_py_raise(TP_ERROR, TP_E_CLOSED, "connection is closed",
                    "connection is closed", NULL, 0);
        return NULL;
    }
    if (self->busy) {
        tp_py_raise(TP_ERROR, TP_E_ARG,
                    "connection is in use by another call (another thread "
                    "or a signal handler)",
                    NULL, NULL, EBUSY);
        return NULL;
    }
    return self->conn;
}

int tp_py_fd_from_obj(PyObject *obj, int *fd)
{
    PyObject *num;
    if (PyLong_Check(obj)) {
        if (PyBool_Check(obj)) {
            PyErr_SetString(PyExc_TypeError,
                            "expected a socket or a file descriptor, not bool");
            return -1;
        }
        num = obj;
        Py_INCREF(num);
    } else {
        PyObject *meth = PyObject_GetAttrString(obj, "fileno");
        if (!meth) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                return -1;
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "expected a socket (an object with fileno()) or a "
                         "file descriptor, not %.100s",
                         Py_TYPE(obj)->tp_name);
            return -1;
        }
        num = PyObject_CallObject(meth, NULL);
        Py_DECREF(meth);
        if (!num)
            return -1;
        if (!PyLong_Check(num) || PyBool_Check(num)) {
            PyErr_Format(PyExc_TypeError, "fileno() returned %.100s, not int",
                         Py_TYPE(num)->tp_name);
            Py_DECREF(num);
            return -1;
        }
    }
    int overflow;
    long v = PyLong_AsLongAndOverflow(num, &overflow);
    Py_DECREF(num);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow < 0 || v < 0) {
        PyErr_Format(PyExc_ValueError,
                     "file descriptor cannot be negative (a closed socket?)");
        return -1;
    }
    if (overflow > 0 || v > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "file descriptor is too large");
        return -1;
    }
    *fd = (int)v;
    return 0;
}

/* ---- Context ----------------------------------------------------------- */

/* Bytes objects that keep the option strings alive until tp_ctx_new. */
typedef struct keep {
    PyObject *obj[8];
    int n;
} keep;

static void keep_release(keep *k)
{
    for (int i = 0; i < k->n; i++)
        Py_DECREF(k->obj[i]);
    k->n = 0;
}

/* A path (str, bytes from os.PathLike) as a NUL-terminated bytes object. */
static int path_arg(PyObject *v, const char *name, keep *k, const char **out)
{
    PyObject *b = NULL;
    if (!PyUnicode_Check(v) && !PyBytes_Check(v) &&
        !PyObject_HasAttrString(v, "__fspath__")) {
        PyErr_Format(PyExc_TypeError,
                     "%s must be a path (str or os.PathLike), not %.100s", name,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    if (!PyUnicode_FSConverter(v, &b))
        return -1;
    if (PyBytes_GET_SIZE(b) == 0) {
        Py_DECREF(b);
        PyErr_Format(PyExc_ValueError, "%s must not be empty", name);
        return -1;
    }
    k->obj[k->n++] = b;
    *out = PyBytes_AS_STRING(b);
    return 0;
}

/* cert/key/ca/client_ca: bytes are PEM text, str/os.PathLike a path. */
static int pem_arg(PyObject *v, const char *name, keep *k, const char **out,
                   size_t *len)
{
    if (v == Py_None)
        return 0;
    if (PyBytes_Check(v)) {
        if (PyBytes_GET_SIZE(v) == 0) {
            PyErr_Format(PyExc_ValueError, "%s must not be empty", name);
            return -1;
        }
        *out = PyBytes_AS_STRING(v); /* borrowed: args outlive the call */
        *len = (size_t)PyBytes_GET_SIZE(v);
        return 0;
    }
    if (!PyUnicode_Check(v) && !PyObject_HasAttrString(v, "__fspath__")) {
        PyErr_Format(PyExc_TypeError,
                     "%s must be a path (str or os.PathLike) or PEM bytes, "
                     "not %.100s",
                     name, Py_TYPE(v)->tp_name);
        return -1;
    }
    *len = 0;
    return path_arg(v, name, k, out);
}

static int alpn_arg(PyObject *v, keep *k, const char **out)
{
    if (v == Py_None)
        return 0;
    if (!PyList_Check(v) && !PyTuple_Check(v)) {
        PyErr_Format(PyExc_TypeError,
                     "alpn must be a list or tuple of str (e.g. [\"h2\", "
                     "\"http/1.1\"]), not %.100s",
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(v);
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "alpn must not be empty");
        return -1;
    }
    PyObject **items = PySequence_Fast_ITEMS(v);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyUnicode_Check(items[i])) {
            PyErr_Format(PyExc_TypeError, "alpn items must be str, not %.100s",
                         Py_TYPE(items[i])->tp_name);
            return -1;
        }
        Py_ssize_t len = PyUnicode_GET_LENGTH(items[i]);
        if (len == 0 || len > 255 ||
            PyUnicode_FindChar(items[i], ',', 0, len, 1) != -1) {
            PyErr_Format(PyExc_ValueError,
                         "bad alpn protocol %R (1 to 255 characters, no comma)",
                         items[i]);
            return -1;
        }
    }
    PyObject *sep = PyUnicode_FromString(",");
    if (!sep)
        return -1;
    PyObject *joined = PyUnicode_Join(sep, v);
    Py_DECREF(sep);
    if (!joined)
        return -1;
    PyObject *b = PyUnicode_AsUTF8String(joined);
    Py_DECREF(joined);
    if (!b)
        return -1;
    k->obj[k->n++] = b;
    *out = PyBytes_AS_STRING(b);
    return 0;
}

static int min_version_arg(PyObject *v, int *out)
{
    if (v == Py_None)
        return 0;
    if (!PyUnicode_Check(v)) {
        PyErr_Format(PyExc_TypeError,
                     "min_version must be \"TLSv1.2\", \"TLSv1.3\" or None, "
                     "not %.100s",
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    if (PyUnicode_CompareWithASCIIString(v, "TLSv1.2") == 0)
        *out = TP_TLS1_2;
    else if (PyUnicode_CompareWithASCIIString(v, "TLSv1.3") == 0)
        *out = TP_TLS1_3;
    else {
        PyErr_Format(PyExc_ValueError,
                     "min_version must be \"TLSv1.2\" or \"TLSv1.3\", not %R",
                     v);
        return -1;
    }
    return 0;
}

static int write_buffer_arg(PyObject *v, size_t *out)
{
    if (v == Py_None)
        return 0;
    if (!PyLong_Check(v) || PyBool_Check(v)) {
        PyErr_Format(PyExc_TypeError,
                     "write_buffer must be an int (bytes) or None, not %.100s",
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    int overflow;
    long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (n == -1 && PyErr_Occurred())
        return -1;
    if (overflow < 0 || (!overflow && n <= 0)) {
        PyErr_SetString(PyExc_ValueError, "write_buffer must be > 0");
        return -1;
    }
    if (overflow > 0 || (unsigned long long)n > (size_t)PY_SSIZE_T_MAX) {
        PyErr_SetString(PyExc_ValueError, "write_buffer is too large");
        return -1;
    }
    *out = (size_t)n;
    return 0;
}

static PyObject *context_new(tp_role role, const tp_ctx_options *o)
{
    char err[512] = "";
    tp_ctx *ctx;
    /* Reading files and generating a key may take a while. */
    PyThreadState *ts = PyEval_SaveThread();
    ctx = tp_ctx_new(role, o, err, sizeof err);
    PyEval_RestoreThread(ts);
    if (!ctx)
        return tp_py_raise(TP_ERROR, TP_E_ARG, err, err, "context", 0);
    tp_py_context *self = PyObject_New(tp_py_context, &tp_py_context_type);
    if (!self) {
        tp_ctx_free(ctx);
        return NULL;
    }
    self->ctx = ctx;
    return (PyObject *)self;
}

static PyObject *context_server(PyObject *cls, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"cert",        "key",          "client_ca", "alpn",
                             "min_version", "write_buffer", NULL};
    PyObject *cert = Py_None, *key = Py_None, *client_ca = Py_None;
    PyObject *alpn = Py_None, *minv = Py_None, *wbuf = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OO$OOOO:server", kwlist, &cert,
                                     &key, &client_ca, &alpn, &minv, &wbuf))
        return NULL;
    tp_ctx_options o;
    tp_ctx_options_init(&o);
    keep k = {.n = 0};
    PyObject *r = NULL;
    if (pem_arg(cert, "cert", &k, &o.cert, &o.cert_len) < 0 ||
        pem_arg(key, "key", &k, &o.key, &o.key_len) < 0 ||
        pem_arg(client_ca, "client_ca", &k, &o.client_ca, &o.client_ca_len) <
            0 ||
        alpn_arg(alpn, &k, &o.alpn) < 0 ||
        min_version_arg(minv, &o.min_version) < 0 ||
        write_buffer_arg(wbuf, &o.write_buffer) < 0)
        goto out;
    r = context_new(TP_SERVER, &o);
out:
    keep_release(&k);
    return r;
}

static PyObject *context_client(PyObject *cls, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"ca",          "verify",       "cert",
                             "key",         "ca_dir",       "alpn",
                             "min_version", "write_buffer", NULL};
    PyObject *ca = Py_None, *verify = Py_True, *cert = Py_None;
    PyObject *key = Py_None, *ca_dir = Py_None, *alpn = Py_None;
    PyObject *minv = Py_None, *wbuf = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OO$OOOOOO:client", kwlist, &ca,
                                     &verify, &cert, &key, &ca_dir, &alpn,
                                     &minv, &wbuf))
        return NULL;
    if (!PyBool_Check(verify)) {
        PyErr_Format(PyExc_TypeError,
                     "verify must be True or False, not %.100s",
                     Py_TYPE(verify)->tp_name);
        return NULL;
    }
    tp_ctx_options o;
    tp_ctx_options_init(&o);
    o.verify = verify == Py_True;
    keep k = {.n = 0};
    PyObject *r = NULL;
    if (pem_arg(ca, "ca", &k, &o.ca, &o.ca_len) < 0 ||
        pem_arg(cert, "cert", &k, &o.cert, &o.cert_len) < 0 ||
        pem_arg(key, "key", &k, &o.key, &o.key_len) < 0 ||
        (ca_dir != Py_None && path_arg(ca_dir, "ca_dir", &k, &o.ca_dir) < 0) ||
        alpn_arg(alpn, &k, &o.alpn) < 0 ||
        min_version_arg(minv, &o.min_version) < 0 ||
        write_buffer_arg(wbuf, &o.write_buffer) < 0)
        goto out;
    r = context_new(TP_CLIENT, &o);
out:
    keep_release(&k);
    return r;
}

static PyObject *context_wrap(PyObject *op, PyObject *args, PyObject *kw)
{
    tp_py_context *self = (tp_py_context *)op;
    static char *kwlist[] = {"", "server_hostname", NULL};
    PyObject *sock, *hostname = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:wrap", kwlist, &sock,
                                     &hostname))
        return NULL;
    int fd;
    if (tp_py_fd_from_obj(sock, &fd) < 0)
        return NULL;
    PyObject *hostbytes = NULL;
    const char *host = NULL;
    if (hostname != Py_None) {
        if (!PyUnicode_Check(hostname)) {
            PyErr_Format(PyExc_TypeError,
                         "server_hostname must be str or None, not %.100s",
                         Py_TYPE(hostname)->tp_name);
            return NULL;
        }
        /* Like the ssl module: IDNA for non-ASCII names. */
        hostbytes = PyUnicode_IS_ASCII(hostname)
                        ? PyUnicode_AsASCIIString(hostname)
                        : PyUnicode_AsEncodedString(hostname, "idna", "strict");
        if (!hostbytes)
            return NULL;
        host = PyBytes_AS_STRING(hostbytes);
        if (strlen(host) != (size_t)PyBytes_GET_SIZE(hostbytes) || !*host) {
            Py_DECREF(hostbytes);
            PyErr_SetString(PyExc_ValueError,
                            "server_hostname must be a non-empty name "
                            "without NUL characters");
            return NULL;
        }
    }
    tp_py_conn *conn = PyObject_GC_New(tp_py_conn, &tp_py_conn_type);
    if (!conn) {
        Py_XDECREF(hostbytes);
        return NULL;
    }
    conn->conn = NULL;
    conn->busy = 0;
    conn->context = Py_NewRef(op);
    conn->sock = PyLong_Check(sock) ? NULL : Py_NewRef(sock);
    PyObject_GC_Track(conn);

    char err[512] = "";
    conn->conn = tp_conn_new(self->ctx, fd, host, err, sizeof err);
    Py_XDECREF(hostbytes);
    if (!conn->conn) {
        Py_DECREF(conn);
        return tp_py_raise(TP_ERROR, TP_E_ARG, err, err, "wrap", 0);
    }
    return (PyObject *)conn;
}

static void context_dealloc(PyObject *op)
{
    tp_py_context *self = (tp_py_context *)op;
    tp_ctx_free(self->ctx); /* connections hold their own references */
    Py_TYPE(op)->tp_free(op);
}

static PyObject *context_fingerprint(PyObject *op, void *closure)
{
    return str_or_none(tp_ctx_fingerprint(((tp_py_context *)op)->ctx));
}

static PyObject *context_cert_pem(PyObject *op, void *closure)
{
    return str_or_none(tp_ctx_cert_pem(((tp_py_context *)op)->ctx));
}

static PyObject *context_ephemeral(PyObject *op, void *closure)
{
    return PyBool_FromLong(tp_ctx_is_ephemeral(((tp_py_context *)op)->ctx));
}

static PyObject *context_role(PyObject *op, void *closure)
{
    tp_role r = tp_ctx_role(((tp_py_context *)op)->ctx);
    return PyUnicode_FromString(r == TP_SERVER ? "server" : "client");
}

static PyObject *context_repr(PyObject *op)
{
    tp_ctx *ctx = ((tp_py_context *)op)->ctx;
    const char *fp = tp_ctx_fingerprint(ctx);
    return PyUnicode_FromFormat("<tlspump.Context %s%s%s%.16s>",
                                tp_ctx_role(ctx) == TP_SERVER ? "server"
                                                              : "client",
                                tp_ctx_is_ephemeral(ctx) ? " ephemeral" : "",
                                fp ? " sha256:" : "", fp ? fp : "");
}

static PyMethodDef context_methods[] = {
    {"server", (PyCFunction)(void (*)(void))context_server,
     METH_CLASS | METH_VARARGS | METH_KEYWORDS,
     "server(cert=None, key=None, *, client_ca=None, alpn=None, "
     "min_version=None, write_buffer=None)\n--\n\n"
     "A server context. cert=None: an ephemeral self-signed certificate.\n"
     "cert/key/client_ca: a path (str, os.PathLike) or PEM text (bytes)."},
    {"client", (PyCFunction)(void (*)(void))context_client,
     METH_CLASS | METH_VARARGS | METH_KEYWORDS,
     "client(ca=None, verify=True, *, cert=None, key=None, ca_dir=None, "
     "alpn=None, min_version=None, write_buffer=None)\n--\n\n"
     "A client context. ca=None: the system trust store. verify=False is\n"
     "INSECURE: any certificate is accepted."},
    {"wrap", (PyCFunction)(void (*)(void))context_wrap,
     METH_VARARGS | METH_KEYWORDS,
     "wrap(sock_or_fd, /, server_hostname=None)\n--\n\n"
     "A Conn over a connected socket (object with fileno() or an fd).\n"
     "Sets O_NONBLOCK; never closes the fd."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef context_getset[] = {
    {"fingerprint", context_fingerprint, NULL,
     "SHA-256 of the certificate (hex), or None", NULL},
    {"cert_pem", context_cert_pem, NULL, "the certificate in PEM, or None",
     NULL},
    {"ephemeral", context_ephemeral, NULL,
     "True if the certificate was generated", NULL},
    {"role", context_role, NULL, "\"server\" or \"client\"", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

/* clang-format off */
PyTypeObject tp_py_context_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tlspump.Context",
    .tp_basicsize = sizeof(tp_py_context),
    .tp_dealloc = context_dealloc,
    .tp_repr = context_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "TLS configuration: create with Context.server() or "
              "Context.client().",
    .tp_methods = context_methods,
    .tp_getset = context_getset,
};
/* clang-format on */

/* ---- Conn -------------------------------------------------------------- */

/* Maps a handshake/flush/shutdown status to DONE/WANT_*. */
static PyObject *status_result(tp_conn *c, int rc, const char *op,
                               const tp_py_wait *pw)
{
    switch (rc) {
    case TP_DONE:
        return PyLong_FromLong(TP_PY_DONE);
    case TP_WANT_READ:
        return PyLong_FromLong(TP_PY_WANT_READ);
    case TP_WANT_WRITE:
        return PyLong_FromLong(TP_PY_WANT_WRITE);
    default:
        return tp_py_raise_conn(c, rc, op, pw);
    }
}

/* The common shape of handshake/flush/shutdown(timeout=0). */
static PyObject *conn_status_call(PyObject *self, PyObject *args, PyObject *kw,
                                  const char *fmt,
                                  int (*fn)(tp_conn *, const tp_wait *),
                                  const char *op)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout = NULL;
    tp_py_wait pw;
    if (!PyArg_ParseTupleAndKeywords(args, kw, fmt, kwlist, &timeout) ||
        tp_py_wait_parse(timeout, &pw) < 0)
        return NULL;
    tp_conn *c = tp_py_conn_check(self);
    if (!c)
        return NULL;
    int rc;
    TP_PY_CONN_CALL(self, &pw, rc = fn(c, &pw.w));
    return status_result(c, rc, op, &pw);
}

static PyObject *conn_handshake(PyObject *self, PyObject *args, PyObject *kw)
{
    return conn_status_call(self, args, kw, "|O:handshake", tp_conn_handshake,
                            "handshake");
}

static PyObject *conn_flush(PyObject *self, PyObject *args, PyObject *kw)
{
    return conn_status_call(self, args, kw, "|O:flush", tp_conn_flush, "flush");
}

static PyObject *conn_shutdown(PyObject *self, PyObject *args, PyObject *kw)
{
    return conn_status_call(self, args, kw, "|O:shutdown", tp_conn_shutdown,
                            "shutdown");
}

static PyObject *conn_read(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"n", "timeout", NULL};
    PyObject *nobj = Py_None, *timeout = NULL;
    tp_py_wait pw;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OO:read", kwlist, &nobj,
                                     &timeout))
        return NULL;
    size_t max = 0; /* None: everything available */
    if (nobj != Py_None) {
        if (!PyLong_Check(nobj) || PyBool_Check(nobj)) {
            PyErr_Format(PyExc_TypeError,
                         "n must be an int or None, not %.100s",
                         Py_TYPE(nobj)->tp_name);
            return NULL;
        }
        int overflow;
        long long n = PyLong_AsLongLongAndOverflow(nobj, &overflow);
        if (n == -1 && PyErr_Occurred())
            return NULL;
        if (overflow)
            n = overflow < 0 ? -1 : LLONG_MAX;
        if (n <= 0) {
            PyErr_SetString(PyExc_ValueError, "n must be > 0 (or None)");
            return NULL;
        }
        max = (unsigned long long)n > SIZE_MAX ? SIZE_MAX : (size_t)n;
    }
    if (tp_py_wait_parse(timeout, &pw) < 0)
        return NULL;
    tp_conn *c = tp_py_conn_check(self);
    if (!c)
        return NULL;
    const char *data = NULL;
    ssize_t r;
    TP_PY_CONN_CALL(self, &pw, r = tp_conn_read_drain(c, max, &data, &pw.w));
    if (r >= 0)
        return PyBytes_FromStringAndSize(r ? data : "", (Py_ssize_t)r);
    if (r == TP_WANT_READ || r == TP_WANT_WRITE)
        Py_RETURN_NONE;
    return tp_py_raise_conn(c, (int)r, "read", &pw);
}

static PyObject *conn_write(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"data", "timeout", NULL};
    PyObject *data, *timeout = NULL;
    tp_py_wait pw;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:write", kwlist, &data,
                                     &timeout))
        return NULL;
    if (PyUnicode_Check(data)) {
        PyErr_SetString(PyExc_TypeError,
                        "write() needs a bytes-like object, not str (encode "
                        "it first)");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *res = NULL;
    if (tp_py_wait_parse(timeout, &pw) < 0)
        goto out;
    tp_conn *c = tp_py_conn_check(self);
    if (!c)
        goto out;
    ssize_t r;
    /* The buffer stays exported (locked) while the GIL is released. */
    TP_PY_CONN_CALL(self, &pw,
                    r = tp_conn_write(c, view.buf, (size_t)view.len, &pw.w));
    if (r >= 0)
        res = PyLong_FromSsize_t(r);
    else if (r == TP_WANT_READ || r == TP_WANT_WRITE)
        res = PyLong_FromLong(0); /* nothing accepted yet; see want */
    else
        tp_py_raise_conn(c, (int)r, "write", &pw);
out:
    PyBuffer_Release(&view);
    return res;
}

static PyObject *conn_wait(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout = Py_None; /* wait() blocks by default */
    tp_py_wait pw;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:wait", kwlist, &timeout) ||
        tp_py_wait_parse(timeout, &pw) < 0)
        return NULL;
    tp_conn *c = tp_py_conn_check(self);
    if (!c)
        return NULL;
    int rc;
    TP_PY_CONN_CALL(self, &pw, rc = tp_conn_wait(c, &pw.w));
    if (rc == TP_DONE)
        Py_RETURN_NONE;
    return tp_py_raise_conn(c, rc, "wait", &pw);
}

static PyObject *conn_close(PyObject *op, PyObject *unused)
{
    tp_py_conn *self = (tp_py_conn *)op;
    if (!self->conn)
        Py_RETURN_NONE;
    if (!tp_py_conn_check(op)) /* busy */
        return NULL;
    tp_conn *c = self->conn;
    self->conn = NULL;
    tp_conn_free(c); /* no I/O; the fd stays open (it is the caller's) */
    Py_CLEAR(self->sock);
    Py_RETURN_NONE;
}

static PyObject *conn_fileno(PyObject *self, PyObject *unused)
{
    tp_conn *c = tp_py_conn_check(self);
    return c ? PyLong_FromLong(tp_conn_fd(c)) : NULL;
}

static PyObject *conn_enter(PyObject *self, PyObject *unused)
{
    if (!tp_py_conn_check(self))
        return NULL;
    return Py_NewRef(self);
}

static PyObject *conn_exit(PyObject *self, PyObject *args)
{
    PyObject *r = conn_close(self, NULL);
    if (!r)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

/* Property getters: closed -> ClosedError like every method. */
#define CONN_GET(name, expr)                                                   \
    static PyObject *conn_get_##name(PyObject *self, void *closure)            \
    {                                                                          \
        tp_conn *c = tp_py_conn_check(self);                                   \
        if (!c)                                                                \
            return NULL;                                                       \
        return expr;                                                           \
    }

CONN_GET(want, PyLong_FromLong(tp_py_want(tp_conn_events(c))))
CONN_GET(version, str_or_none(tp_conn_version(c)))
CONN_GET(cipher, str_or_none(tp_conn_cipher(c)))
CONN_GET(alpn, str_or_none(tp_conn_alpn(c)))
CONN_GET(verify_result, str_or_none(tp_conn_verify_result(c)))
CONN_GET(server_name, str_or_none(tp_conn_server_name(c)))
CONN_GET(buffered, PyLong_FromSize_t(tp_conn_buffered(c)))
CONN_GET(pending, PyBool_FromLong(tp_conn_pending(c)))
CONN_GET(handshake_done, PyBool_FromLong(tp_conn_handshake_done(c)))
CONN_GET(peer_closed, PyBool_FromLong(tp_conn_peer_closed(c)))

static PyObject *conn_get_peer_cert(PyObject *self, void *closure)
{
    tp_conn *c = tp_py_conn_check(self);
    if (!c)
        return NULL;
    const char *pem = tp_conn_peer_cert_pem(c);
    if (!pem)
        Py_RETURN_NONE;
    PyObject *d = PyDict_New();
    if (!d)
        return NULL;
    struct {
        const char *key, *value;
    } f[] = {{"pem", pem},
             {"subject", tp_conn_peer_subject(c)},
             {"issuer", tp_conn_peer_issuer(c)},
             {"fingerprint", tp_conn_peer_fingerprint(c)}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        PyObject *v = str_or_none(f[i].value);
        if (!v || PyDict_SetItemString(d, f[i].key, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}

static PyObject *conn_repr(PyObject *op)
{
    tp_py_conn *self = (tp_py_conn *)op;
    if (!self->conn)
        return PyUnicode_FromString("<tlspump.Conn closed>");
    if (self->busy)
        return PyUnicode_FromString("<tlspump.Conn busy>");
    const char *v = tp_conn_version(self->conn);
    return PyUnicode_FromFormat("<tlspump.Conn fd=%d %s>",
                                tp_conn_fd(self->conn),
                                v ? v : "handshake pending");
}

static int conn_traverse(PyObject *op, visitproc visit, void *arg)
{
    tp_py_conn *self = (tp_py_conn *)op;
    Py_VISIT(self->context);
    Py_VISIT(self->sock);
    return 0;
}

static int conn_clear(PyObject *op)
{
    tp_py_conn *self = (tp_py_conn *)op;
    Py_CLEAR(self->context);
    Py_CLEAR(self->sock);
    return 0;
}

static void conn_dealloc(PyObject *op)
{
    tp_py_conn *self = (tp_py_conn *)op;
    PyObject_GC_UnTrack(op);
    tp_conn_free(self->conn); /* frees before the socket object may close */
    self->conn = NULL;
    conn_clear(op);
    Py_TYPE(op)->tp_free(op);
}

#define TIMEOUT_DOC                                                            \
    "timeout: 0 (default) does not wait; seconds; None waits forever."

static PyMethodDef conn_methods[] = {
    {"handshake", (PyCFunction)(void (*)(void))conn_handshake,
     METH_VARARGS | METH_KEYWORDS,
     "handshake(timeout=0)\n--\n\nOne handshake step: DONE, WANT_READ or "
     "WANT_WRITE.\n" TIMEOUT_DOC},
    {"read", (PyCFunction)(void (*)(void))conn_read,
     METH_VARARGS | METH_KEYWORDS,
     "read(n=None, timeout=0)\n--\n\nAll decrypted data available (at most "
     "n bytes): bytes,\nb\"\" at the peer's close_notify, None if it would "
     "block.\n" TIMEOUT_DOC},
    {"write", (PyCFunction)(void (*)(void))conn_write,
     METH_VARARGS | METH_KEYWORDS,
     "write(data, timeout=0)\n--\n\nBuffers data and sends what it can; "
     "returns the count accepted.\n" TIMEOUT_DOC},
    {"flush", (PyCFunction)(void (*)(void))conn_flush,
     METH_VARARGS | METH_KEYWORDS,
     "flush(timeout=0)\n--\n\nSends buffered data: DONE, WANT_READ or "
     "WANT_WRITE.\n" TIMEOUT_DOC},
    {"shutdown", (PyCFunction)(void (*)(void))conn_shutdown,
     METH_VARARGS | METH_KEYWORDS,
     "shutdown(timeout=0)\n--\n\nFlushes, then sends close_notify: DONE, "
     "WANT_READ or WANT_WRITE.\n" TIMEOUT_DOC},
    {"wait", (PyCFunction)(void (*)(void))conn_wait,
     METH_VARARGS | METH_KEYWORDS,
     "wait(timeout=None)\n--\n\nWaits until the fd is ready for `want`."},
    {"close", conn_close, METH_NOARGS,
     "close()\n--\n\nFrees the TLS state (no I/O). Does not close the fd."},
    {"fileno", conn_fileno, METH_NOARGS, "fileno()\n--\n\nThe socket's fd."},
    {"__enter__", conn_enter, METH_NOARGS, NULL},
    {"__exit__", conn_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef conn_getset[] = {
    {"want", conn_get_want, NULL,
     "WANT_READ|WANT_WRITE to wait for next, 0 when nothing waits", NULL},
    {"version", conn_get_version, NULL, "\"TLSv1.3\" etc., or None", NULL},
    {"cipher", conn_get_cipher, NULL, "the cipher suite, or None", NULL},
    {"alpn", conn_get_alpn, NULL, "the negotiated ALPN protocol, or None",
     NULL},
    {"peer_cert", conn_get_peer_cert, NULL,
     "None or a dict: pem, subject, issuer, fingerprint", NULL},
    {"verify_result", conn_get_verify_result, NULL,
     "\"ok\" or why verification failed", NULL},
    {"server_name", conn_get_server_name, NULL, "the SNI name received", NULL},
    {"buffered", conn_get_buffered, NULL, "bytes written but not yet sent",
     NULL},
    {"pending", conn_get_pending, NULL, "True if OpenSSL holds read data",
     NULL},
    {"handshake_done", conn_get_handshake_done, NULL, NULL, NULL},
    {"peer_closed", conn_get_peer_closed, NULL,
     "True once the peer's close_notify was read", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

/* clang-format off */
PyTypeObject tp_py_conn_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tlspump.Conn",
    .tp_basicsize = sizeof(tp_py_conn),
    .tp_dealloc = conn_dealloc,
    .tp_repr = conn_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A TLS connection over a caller-owned socket: create with "
              "Context.wrap().",
    .tp_traverse = conn_traverse,
    .tp_clear = conn_clear,
    .tp_methods = conn_methods,
    .tp_getset = conn_getset,
};
/* clang-format on */

/* ---- module ------------------------------------------------------------ */

static PyObject *new_exc(PyObject *m, const char *name, const char *doc,
                         PyObject *bases, PyObject *dict)
{
    char full[64];
    PyOS_snprintf(full, sizeof full, "tlspump.%s", name);
    PyObject *e = PyErr_NewExceptionWithDoc(full, doc, bases, dict);
    if (!e)
        return NULL;
    if (PyModule_AddObjectRef(m, name, e) < 0) {
        Py_DECREF(e);
        return NULL;
    }
    return e; /* the global keeps this reference */
}

static int init_exceptions(PyObject *m)
{
    PyObject *dict = Py_BuildValue("{sOsOsO}", "reason", Py_None, "operation",
                                   Py_None, "kind", Py_None);
    if (!dict)
        return -1;
    tp_py_Error = new_exc(m, "Error",
                          "A TLS or I/O error. str(e) is the full text; "
                          "reason (OpenSSL's\nreason), operation and kind "
                          "tell the parts.",
                          PyExc_OSError, dict);
    Py_DECREF(dict);
    if (!tp_py_Error)
        return -1;
    tp_py_TruncatedError =
        new_exc(m, "TruncatedError",
                "The peer closed the connection without close_notify.",
                tp_py_Error, NULL);
    if (!tp_py_TruncatedError)
        return -1;
    PyObject *b = PyTuple_Pack(2, tp_py_Error, PyExc_ConnectionResetError);
    if (!b)
        return -1;
    tp_py_ResetError = new_exc(
        m, "ResetError", "The connection was reset by the peer.", b, NULL);
    Py_DECREF(b);
    if (!tp_py_ResetError)
        return -1;
    b = PyTuple_Pack(2, tp_py_Error, PyExc_TimeoutError);
    if (!b)
        return -1;
    tp_py_Timeout = new_exc(m, "Timeout", "A timeout passed.", b, NULL);
    Py_DECREF(b);
    if (!tp_py_Timeout)
        return -1;
    tp_py_ClosedError = new_exc(
        m, "ClosedError", "Use of a connection after close() or a fatal error.",
        tp_py_Error, NULL);
    return tp_py_ClosedError ? 0 : -1;
}

static struct PyModuleDef tlspump_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tlspump._tlspump",
    .m_doc = "The C core of tlspump: TLS handshake, draining reads and "
             "forwarding on OpenSSL.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__tlspump(void)
{
    if (PyType_Ready(&tp_py_context_type) < 0 ||
        PyType_Ready(&tp_py_conn_type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&tlspump_module);
    if (!m)
        return NULL;
    if (PyModule_AddIntConstant(m, "DONE", TP_PY_DONE) < 0 ||
        PyModule_AddIntConstant(m, "WANT_READ", TP_PY_WANT_READ) < 0 ||
        PyModule_AddIntConstant(m, "WANT_WRITE", TP_PY_WANT_WRITE) < 0 ||
        PyModule_AddStringConstant(m, "__version__", TP_VERSION) < 0 ||
        PyModule_AddObjectRef(m, "Context", (PyObject *)&tp_py_context_type) <
            0 ||
        PyModule_AddObjectRef(m, "Conn", (PyObject *)&tp_py_conn_type) < 0 ||
        init_exceptions(m) < 0 || tp_py_init_pump(m) < 0 ||
        tp_py_init_server(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
