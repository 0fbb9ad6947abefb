/*
 * errors_py.c - the one table that turns a kv_status into a Python
 * exception, and the native exception classes it raises.
 *
 * The native layer raises builtin kinds (API contract: RuntimeError for
 * storage failures, ValueError for bad input, OSError for I/O), so that code
 * matching on them keeps working. Two outcomes get classes of their own,
 * both subclasses of RuntimeError, so that the Python package branches on
 * the class instead of the message text:
 *
 *   _kvault.KeyNotFoundError   KV_NOTFOUND    the engine's text, else "Key not found"
 *   _kvault.BusyError          KV_BUSY        SQLite's text ("database is locked")
 *
 * kohakuvault.errors.map_exception turns them into NotFound / DatabaseBusy,
 * and KVault's retry loop retries exactly BusyError.
 */
#include "kvpy.h"

#include <errno.h>

PyObject *kvpy_KeyNotFoundError;
PyObject *kvpy_BusyError;

/* Python exception type per status. NULL entries are handled in
 * kvpy_raise_status: KV_OK (not an error), KV_CALLBACK (the callback's own
 * exception is already set), KV_NOMEM (PyErr_NoMemory). */
static PyObject **const status_type[KV_STATUS_COUNT] = {
    [KV_NOTFOUND] = &kvpy_KeyNotFoundError,
    [KV_BUSY] = &kvpy_BusyError,
    [KV_INVALID] = &PyExc_ValueError,
    [KV_IO] = &PyExc_RuntimeError,         /* SQLite I/O errors: RuntimeError
                                              (docs/api.md §2.3); with an errno: OSError */
    [KV_CORRUPT] = &PyExc_RuntimeError,
    [KV_SQLITE] = &PyExc_RuntimeError,
    [KV_CLOSED] = &PyExc_RuntimeError,     /* bindings check "closed" themselves */
    [KV_UNSUPPORTED] = &PyExc_RuntimeError,
    [KV_SHORT] = &PyExc_RuntimeError,
    [KV_CALLBACK] = &PyExc_RuntimeError,
    [KV_NOTCACHED] = &PyExc_RuntimeError,  /* never reaches Python on purpose */
};

PyObject *kvpy_raise_status(kv_status st, const char *detail, int os_errno)
{
    if (st == KV_CALLBACK && PyErr_Occurred())
        return NULL;                       /* the callback's exception stands */
    if (st == KV_NOMEM)
        return PyErr_NoMemory();
    if (st == KV_IO && os_errno) {
        errno = os_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (!detail || !detail[0])
        detail = kv_strerror(st);
    PyObject *type = ((unsigned)st < KV_STATUS_COUNT && status_type[st]) ? *status_type[st]
                                                                         : PyExc_RuntimeError;
    PyErr_SetString(type, detail);
    return NULL;
}

int kvpy_init_errors(PyObject *module)
{
    kvpy_KeyNotFoundError = PyErr_NewExceptionWithDoc(
        "kohakuvault._kvault.KeyNotFoundError",
        "A key (or row) does not exist (status KV_NOTFOUND). Subclass of RuntimeError; "
        "its text contains 'Key not found'.",
        PyExc_RuntimeError, NULL);
    if (!kvpy_KeyNotFoundError)
        return -1;
    kvpy_BusyError = PyErr_NewExceptionWithDoc(
        "kohakuvault._kvault.BusyError",
        "SQLite stayed busy or locked past the busy timeout (status KV_BUSY). Subclass of "
        "RuntimeError; its text is SQLite's ('database is locked').",
        PyExc_RuntimeError, NULL);
    if (!kvpy_BusyError)
        return -1;
    if (PyModule_AddObjectRef(module, "KeyNotFoundError", kvpy_KeyNotFoundError) < 0 ||
        PyModule_AddObjectRef(module, "BusyError", kvpy_BusyError) < 0)
        return -1;
    return 0;
}
