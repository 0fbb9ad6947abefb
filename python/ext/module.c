/*
 * module.c - creates kohakuvault._kvault and registers the types that each
 * python/ext file defines (see kvpy.h for the list and the init contract).
 */
#include "kvpy.h"

typedef int (*kvpy_init_fn)(PyObject *module);

/* Order matters only for readability of dir(_kvault). */
static const kvpy_init_fn kvpy_inits[] = {
    kvpy_init_errors,   /* first: the other types raise its classes */
    kvpy_init_fork,     /* the at-fork handlers every vault type relies on */
    kvpy_init_kv,
    kvpy_init_packer,
    kvpy_init_col,
    kvpy_init_text,
    kvpy_init_vector,
    kvpy_init_tree,
};

static int kvpy_exec(PyObject *module)
{
    for (size_t i = 0; i < sizeof kvpy_inits / sizeof kvpy_inits[0]; i++)
        if (kvpy_inits[i](module) < 0)
            return -1;
    return 0;
}

static PyModuleDef_Slot kvpy_slots[] = {
    {Py_mod_exec, kvpy_exec},
    {0, NULL},
};

static struct PyModuleDef kvpy_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kohakuvault._kvault",
    .m_doc = "Native core of kohakuvault: the C engine's stores, codecs and containers.",
    .m_size = 0,
    .m_slots = kvpy_slots,
};

PyMODINIT_FUNC PyInit__kvault(void)
{
    return PyModuleDef_Init(&kvpy_module);
}
