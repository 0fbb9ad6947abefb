/*
 * kvpy.h - shared declarations of the kohakuvault._kvault extension.
 *
 * The extension is split by concern: module.c creates the module and calls
 * one init function per file (kv_py.c: _KVault; packer_py.c: DataPacker;
 * col_py.c: _ColumnVault; ...). Each init function adds its types to the
 * module and returns 0, or sets a Python exception and returns -1.
 * Python -> engine only: these files call kv_* from engine/include/kvault,
 * never SQLite directly.
 */
#ifndef KVPY_H
#define KVPY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

int kvpy_init_kv(PyObject *module);
int kvpy_init_packer(PyObject *module);
int kvpy_init_col(PyObject *module);

#endif /* KVPY_H */
