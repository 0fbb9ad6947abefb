/*
 * packer_py.h - the DataPacker binding's C helpers, shared with col_py.c.
 *
 * All functions need the GIL. Packed bytes follow docs/api.md §5.3; errors are
 * raised as the builtin exceptions of docs/api.md §2.2 (TypeError for a wrong
 * value type, ValueError for size/shape/encoding problems) and reported by
 * a -1 / NULL return.
 */
#ifndef KVPY_PACKER_PY_H
#define KVPY_PACKER_PY_H

#include "kvpy.h"
#include "kvault/codec.h"
#include "kvault/packer.h"

/** Parse `dtype` into *pk; on failure raise ValueError("Invalid dtype: ...")
 *  and return -1. */
int kvpy_packer_parse(const char *dtype, kv_packer *pk);

/** Append the packed form of `value` to `out`. Returns 0, or -1 with an
 *  exception set (out->len is restored). */
int kvpy_pack_one(const kv_packer *pk, PyObject *value, kv_buf *out);

/** Pack every item of `values` (a list, tuple, or for fixed-shape vectors
 *  also an ndarray) back to back into `out`; when `lens` is non-NULL it
 *  receives a PyMem_Malloc'd array of each item's byte length (caller
 *  PyMem_Free's it). *n receives the item count. Fixed-shape vectors take
 *  a stacked fast path. Returns 0 or -1 with an exception. */
int kvpy_pack_many(const kv_packer *pk, PyObject *values, kv_buf *out, size_t **lens, size_t *n);

/** Decode one element from data[0..len) (fixed kinds use the first
 *  elem_size bytes; variable kinds the whole range). New reference, or
 *  NULL with ValueError ("Not enough data ...", malformed input). */
PyObject *kvpy_unpack_one(const kv_packer *pk, const uint8_t *data, size_t len);

#endif /* KVPY_PACKER_PY_H */
