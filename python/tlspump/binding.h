/*
 * binding.h -- what the CPython binding's .c files share.
 *
 * All .c files in python/tlspump are compiled into the one extension
 * tlspump._tlspump together with the core. _tlspump.c defines what is
 * declared here and calls the other files' tp_py_init_*() from the module
 * init. The rule for every method: convert the arguments, call ONE core
 * function with the GIL released (TP_PY_CALL), convert the result
 * (tp_py_raise* for errors). No retry or select loop in the binding: waiting
 * is the core's job (tp_wait), signal handlers run from tp_py_interrupted.
 */
#ifndef TLSPUMP_BINDING_H
#define TLSPUMP_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "tlspump.h"

/* Python 3.8/3.9 lack these two. */
#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *Py_NewRef(PyObject *o)
{
    Py_INCREF(o);
    return o;
}
static inline int PyModule_AddObjectRef(PyObject *m, const char *name,
                                        PyObject *v)
{
    Py_INCREF(v);
    if (PyModule_AddObject(m, name, v) < 0) {
        Py_DECREF(v);
        return -1;
    }
    return 0;
}
#endif

/* Not exported from the extension: these are private to the .so. */
#define TP_PY_API __attribute__((visibility("hidden")))

/* Python values of the readiness constants: equal to selectors.EVENT_READ
 * and EVENT_WRITE, so sel.register(sock, conn.want) works. */
#define TP_PY_DONE 0
#define TP_PY_WANT_READ 1
#define TP_PY_WANT_WRITE 2

/* tlspump.Context: owns one reference to a tp_ctx. */
/* clang-format off */
typedef struct tp_py_context {
    PyObject_HEAD
    tp_ctx *ctx;
} tp_py_context;
/* clang-format on */

/*
 * tlspump.Conn. conn is NULL once closed. context keeps the Context alive;
 * sock is the object wrap() got a fileno() from (NULL for an int fd), kept
 * so the fd is not closed by the socket object's finaliser under us.
 * busy is set while a core call runs without the GIL: another thread (or a
 * signal handler run from tp_py_interrupted) must not use or free the
 * tp_conn meanwhile; tp_py_conn_check refuses then.
 */
/* clang-format off */
typedef struct tp_py_conn {
    PyObject_HEAD
    tp_conn *conn;
    PyObject *context;
    PyObject *sock;
    int busy;
} tp_py_conn;
/* clang-format on */

TP_PY_API extern PyTypeObject tp_py_context_type;
TP_PY_API extern PyTypeObject tp_py_conn_type;

/* The exception classes (new references owned by the module):
 *   Error(OSError)                     attributes reason, operation, kind
 *   TruncatedError(Error)              TP_E_TRUNCATED
 *   ResetError(Error, ConnectionResetError)  TP_E_RESET
 *   Timeout(Error, TimeoutError)       TP_TIMEOUT / TP_E_TIMEOUT
 *   ClosedError(Error)                 TP_E_CLOSED */
TP_PY_API extern PyObject *tp_py_Error;
TP_PY_API extern PyObject *tp_py_TruncatedError;
TP_PY_API extern PyObject *tp_py_ResetError;
TP_PY_API extern PyObject *tp_py_Timeout;
TP_PY_API extern PyObject *tp_py_ClosedError;

/* Maps tp_conn_events() bits (POLLIN|POLLOUT) to WANT_READ|WANT_WRITE. */
static inline int tp_py_want(short events)
{
    return ((events & POLLIN) ? TP_PY_WANT_READ : 0) |
           ((events & POLLOUT) ? TP_PY_WANT_WRITE : 0);
}

/*
 * A tp_wait plus what its interrupted callback needs. Fill it with
 * tp_py_wait_parse(), pass &pw.w to the core inside TP_PY_CALL.
 *   ts       the thread state saved while the GIL is released
 *   seconds  the timeout as given (for "<op> timed out after X s")
 */
typedef struct tp_py_wait {
    tp_wait w;
    PyThreadState *ts;
    double seconds;
} tp_py_wait;

/*
 * Converts a Python timeout into pw: 0 -> non-blocking (no callback),
 * a positive int/float -> seconds, None -> wait forever; negative or NaN ->
 * ValueError, other types (bool included) -> TypeError. When the call may
 * block, installs tp_py_interrupted. Returns 0, or -1 with an exception set.
 */
TP_PY_API int tp_py_wait_parse(PyObject *timeout, tp_py_wait *pw);

/*
 * tp_wait.interrupted for calls made inside TP_PY_CALL: takes the GIL with
 * the saved thread state, runs the signal handlers (PyErr_CheckSignals),
 * releases the GIL again and returns nonzero when a handler raised; the
 * core then returns TP_INTERRUPTED and tp_py_raise* leaves that exception.
 */
TP_PY_API int tp_py_interrupted(void *arg);

/* Runs stmt (one core call) with the GIL released, the saved thread state
 * in pw->ts for tp_py_interrupted. Use instead of Py_BEGIN_ALLOW_THREADS. */
#define TP_PY_CALL(pw, stmt)                                                   \
    do {                                                                       \
        (pw)->ts = PyEval_SaveThread();                                        \
        stmt;                                                                  \
        PyEval_RestoreThread((pw)->ts);                                        \
        (pw)->ts = NULL;                                                       \
    } while (0)

/* TP_PY_CALL on a Conn: marks it busy meanwhile (see tp_py_conn). Get
 * the tp_conn with tp_py_conn_check() first. */
#define TP_PY_CONN_CALL(self, pw, stmt)                                        \
    do {                                                                       \
        ((tp_py_conn *)(self))->busy = 1;                                      \
        TP_PY_CALL(pw, stmt);                                                  \
        ((tp_py_conn *)(self))->busy = 0;                                      \
    } while (0)

/*
 * The one mapping from a core result to a Python exception. rc is the
 * return code (TP_ERROR, TP_TIMEOUT, TP_INTERRUPTED), kind the errkind;
 * text becomes str(e), reason/operation the attributes (NULL -> None),
 * err_no the errno attribute when nonzero. TP_INTERRUPTED (or
 * TP_E_INTERRUPTED) leaves the exception a signal handler raised if one is
 * pending. Always returns NULL, for `return tp_py_raise(...)`.
 */
TP_PY_API PyObject *tp_py_raise(int rc, tp_errkind kind, const char *text,
                                const char *reason, const char *operation,
                                int err_no);

/* The class tp_py_raise uses for (rc, kind) (a borrowed reference). */
TP_PY_API PyObject *tp_py_exc_class(int rc, tp_errkind kind);

/*
 * tp_py_raise for a failed call on a tp_conn: TP_ERROR takes the text,
 * reason, operation, kind and errno from c; TP_TIMEOUT raises
 * Timeout("<op> timed out after X s") with X from pw (may be NULL).
 */
TP_PY_API PyObject *tp_py_raise_conn(tp_conn *c, int rc, const char *op,
                                     const tp_py_wait *pw);

/*
 * The tp_conn of a tlspump.Conn, or NULL with TypeError (not a Conn),
 * ClosedError ("connection is closed") or Error (busy in another thread).
 */
TP_PY_API tp_conn *tp_py_conn_check(PyObject *obj);

/*
 * An fd from an int (not bool) or an object with fileno(). Negative ->
 * ValueError, other types -> TypeError. Returns 0, or -1 with an exception.
 */
TP_PY_API int tp_py_fd_from_obj(PyObject *obj, int *fd);

/* Module init hooks of the other binding files: add their types and
 * functions to m; 0 or -1 with an exception set. */
TP_PY_API int tp_py_init_pump(PyObject *m);
TP_PY_API int tp_py_init_server(PyObject *m);

#endif
