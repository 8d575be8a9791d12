/* Filled in by the pump part of the binding. */
#include "binding.h"

int tp_py_init_pump(PyObject *m)
{
    (void)m;
    return 0;
}
