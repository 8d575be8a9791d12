/* Filled in by the server part of the binding. */
#include "binding.h"

int tp_py_init_server(PyObject *m)
{
    (void)m;
    return 0;
}
