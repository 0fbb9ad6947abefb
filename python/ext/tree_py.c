/*
 * tree_py.c - CSBTree and SkipList: in-memory ordered maps of Python objects
 * (API.md §9), exported by kohakuvault._kvault.
 *
 * Both containers order keys with Python's own comparisons: `a` sorts before
 * `b` when `a < b` is true, and two keys are the same key when neither sorts
 * before the other (so 1, 1.0 and True collide). Comparison errors (e.g. int
 * vs str) propagate as the TypeError Python raises; a float NaN key is refused
 * with TypeError because it has no place in a total order.
 *
 * Sections:
 *   1. shared helpers (ordering, deferred decrefs)
 *   2. CSBTree: a B+-tree whose nodes hold up to `order` keys in contiguous
 *      arrays, with leaves chained left to right for ordered scans
 *   3. SkipList: a probabilistic skip list (W. Pugh, "Skip Lists: A
 *      Probabilistic Alternative to Balanced Trees", CACM 33(6), 1990;
 *      p = 1/4, at most 32 levels) guarded by a per-object mutex
 *
 * The one idea to keep in mind: a Python comparison can run arbitrary Python
 * code, which may release the GIL (thread switch) or touch the very container
 * being modified. Every operation therefore does all of its comparisons
 * first, while the structure is unchanged, and only then relinks nodes with
 * no Python code in between; reference drops (which can run __del__) happen
 * after the structure is consistent again and the guard is released.
 *
 * Concurrency:
 *   - CSBTree is single-thread only (API.md §9). A `busy` flag marks an
 *     operation in progress; a re-entrant or concurrent call made while it is
 *     set raises RuntimeError instead of corrupting the tree.
 *   - SkipList tolerates concurrent use from several Python threads. Each
 *     list owns a PyThread lock taken around every operation; a thread that
 *     finds it taken waits with the GIL released, so the holder (which may
 *     need the GIL back to run a comparison) always makes progress. The lock
 *     is a leaf lock: nothing else is acquired while holding it except the GIL
 *     inside comparisons, and waiters never hold the GIL. A comparison that
 *     re-enters the same list from the holding thread gets RuntimeError
 *     rather than a self-deadlock. Iteration copies (key, value) references
 *     under the lock, so each iterator sees one consistent snapshot.
 */
#include "kvpy.h"

#include <math.h>
#include <pythread.h>
#include <stdint.h>
#include <string.h>

/* ====================================================================== */
/* 1. Shared helpers                                                       */
/* ====================================================================== */

/*
 * Refuse keys that cannot take part in a total order. Returns 0 if the key
 * is acceptable, -1 with TypeError set for a float NaN.
 */
static int tree_check_key(PyObject *key)
{
    if (PyFloat_Check(key) && isnan(PyFloat_AS_DOUBLE(key))) {
        PyErr_SetString(PyExc_TypeError,
                        "NaN cannot be used as an ordered-map key (it is unordered)");
        return -1;
    }
    return 0;
}

/* Exactly `want` positional arguments, else TypeError. Returns 1 if ok. */
static int tree_check_nargs(const char *name, Py_ssize_t nargs, Py_ssize_t want, Py_ssize_t unused)
{
    if (nargs == want)
        return 1;
    PyErr_Format(PyExc_TypeError, "%s() takes exactly %zd arguments (%zd given)", name, want, nargs);
    return 0;
}

/* `a < b` as 1/0, or -1 with a Python exception set. */
static inline int tree_lt(PyObject *a, PyObject *b)
{
    return PyObject_RichCompareBool(a, b, Py_LT);
}

/*
 * Deferred reference drops. Objects removed from a structure are parked here
 * and released by garbage_release() once the structure is consistent and its
 * guard is off, because Py_DECREF may run a finalizer that touches the
 * container. Capacity grows on demand; a failed growth drops the reference
 * immediately (safe, only less careful about finalizers).
 */
typedef struct {
    PyObject *inline_buf[16];
    PyObject **items; /* inline_buf or PyMem_Malloc'd; owned references */
    Py_ssize_t n, cap;
} garbage_t;

static void garbage_init(garbage_t *g)
{
    g->items = g->inline_buf;
    g->n = 0;
    g->cap = 16;
}

/* Steals the reference to `o` (NULL is ignored). */
static void garbage_add(garbage_t *g, PyObject *o)
{
    if (o == NULL)
        return;
    if (g->n == g->cap) {
        Py_ssize_t ncap = g->cap * 2;
        PyObject **p;
        if (g->items == g->inline_buf) {
            p = PyMem_Malloc(sizeof(PyObject *) * (size_t)ncap);
            if (p)
                memcpy(p, g->inline_buf, sizeof(PyObject *) * (size_t)g->n);
        } else {
            p = PyMem_Realloc(g->items, sizeof(PyObject *) * (size_t)ncap);
        }
        if (p == NULL) {
            Py_DECREF(o);
            return;
        }
        g->items = p;
        g->cap = ncap;
    }
    g->items[g->n++] = o;
}

/* Drops every parked reference; call with no guard held. */
static void garbage_release(garbage_t *g)
{
    for (Py_ssize_t i = 0; i < g->n; i++)
        Py_DECREF(g->items[i]);
    if (g->items != g->inline_buf)
        PyMem_Free(g->items);
    garbage_init(g);
}

/*
 * A snapshot of (key, value) references taken under a guard; turned into
 * Python objects after the guard is dropped (building tuples may trigger the
 * cyclic GC, which may run arbitrary finalizers).
 */
typedef struct {
    PyObject **kv; /* 2*n owned references: key0, val0, key1, val1, ... */
    Py_ssize_t n, cap;
} snap_t;

static int snap_push(snap_t *s, PyObject *k, PyObject *v)
{
    if (s->n == s->cap) {
        Py_ssize_t ncap = s->cap ? s->cap * 2 : 64;
        PyObject **p = PyMem_Realloc(s->kv, sizeof(PyObject *) * 2 * (size_t)ncap);
        if (p == NULL)
            return -1;
        s->kv = p;
        s->cap = ncap;
    }
    Py_INCREF(k);
    Py_INCREF(v);
    s->kv[2 * s->n] = k;
    s->kv[2 * s->n + 1] = v;
    s->n++;
    return 0;
}

static void snap_free(snap_t *s)
{
    for (Py_ssize_t i = 0; i < 2 * s->n; i++)
        Py_DECREF(s->kv[i]);
    PyMem_Free(s->kv);
    s->kv = NULL;
    s->n = s->cap = 0;
}

enum snap_kind { SNAP_ITEMS, SNAP_KEYS, SNAP_VALUES };

/* Builds a list from a snapshot and frees the snapshot. New reference. */
static PyObject *snap_to_list(snap_t *s, enum snap_kind kind)
{
    PyObject *list = PyList_New(s->n);
    if (list == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < s->n; i++) {
        PyObject *k = s->kv[2 * i], *v = s->kv[2 * i + 1], *o;
        if (kind == SNAP_KEYS) {
            o = k;
            Py_INCREF(o);
        } else if (kind == SNAP_VALUES) {
            o = v;
            Py_INCREF(o);
        } else {
            o = PyTuple_Pack(2, k, v);
            if (o == NULL) {
                Py_CLEAR(list);
                goto done;
            }
        }
        PyList_SET_ITEM(list, i, o);
    }
done:
    snap_free(s);
    return list;
}

/* snap_to_list(s, kind), or NULL after freeing `s` when rc < 0 (the error
 * is already set). */
static PyObject *snap_finish(snap_t *s, int rc, enum snap_kind kind)
{
    if (rc < 0) {
        snap_free(s);
        return NULL;
    }
    return snap_to_list(s, kind);
}

/* iter(t): an iterator over a freshly built items list (NULL passes through). */
static PyObject *tree_iter_list(PyObject *list)
{
    if (list == NULL)
        return NULL;
    PyObject *it = PyObject_GetIter(list);
    Py_DECREF(list);
    return it;
}

/*
 * Both containers' lookup helpers (csb_get_ref, skl_get_ref) return a new
 * reference to the value, NULL with no exception when the key is absent, or
 * NULL with an exception. These turn that into each protocol's answer.
 */

/* get(k) / get_default(k, d): the value, or a new reference to `dflt`. */
static PyObject *tree_value_or(PyObject *v, PyObject *dflt)
{
    if (v == NULL && !PyErr_Occurred())
        return Py_NewRef(dflt);
    return v;
}

/* k in t: 1, 0, or -1 with the exception. */
static int tree_found(PyObject *v)
{
    if (v) {
        Py_DECREF(v);
        return 1;
    }
    return PyErr_Occurred() ? -1 : 0;
}

/* t[k]: the value, or KeyError(msg) when absent. */
static PyObject *tree_value_or_keyerror(PyObject *v, const char *msg)
{
    if (v == NULL && !PyErr_Occurred())
        PyErr_SetString(PyExc_KeyError, msg);
    return v;
}

/*
 * Both remove helpers (csb_remove_key, skl_remove) return 1 with *old a new
 * reference to the removed value, 0 when the key was absent, -1 on error.
 */

/* remove(k): the removed value, or None. */
static PyObject *tree_removed_value(int r, PyObject *old)
{
    if (r < 0)
        return NULL;
    if (r == 0)
        Py_RETURN_NONE;
    return old;
}

/* del t[k]: 0, or -1 with KeyError(msg) when absent (or the error). */
static int tree_del_result(int r, PyObject *old, const char *msg)
{
    if (r < 0)
        return -1;
    if (r == 0) {
        PyErr_SetString(PyExc_KeyError, msg);
        return -1;
    }
    Py_DECREF(old);
    return 0;
}

/* ====================================================================== */
/* 2. CSBTree                                                              */
/* ====================================================================== */

#define CSB_MAX_HEIGHT 64 /* order >= 3 keeps fan-out >= 2: height <= 64 */

typedef struct csb_node {
    int leaf;               /* 1 for a leaf, 0 for an internal node */
    int n;                  /* keys in use */
    PyObject **keys;        /* order+1 slots (one spare for the split); owned */
    PyObject **vals;        /* leaf: order+1 values, owned; internal: NULL */
    struct csb_node **kids; /* internal: order+2 children; leaf: NULL */
    struct csb_node *next;  /* leaf: right neighbour in key order, or NULL */
} csb_node;

typedef struct {
    PyObject_HEAD
    csb_node *root;     /* never NULL once constructed (an empty leaf at least) */
    int order;          /* maximum keys per node, >= 3 */
    Py_ssize_t len;     /* number of keys stored */
    int busy;           /* an operation is in progress (re-entrancy guard) */
} CSBTreeObject;

static PyTypeObject CSBTree_Type;

static csb_node *csb_node_new(int order, int leaf)
{
    csb_node *nd = PyMem_Calloc(1, sizeof *nd);
    if (nd == NULL)
        return NULL;
    nd->leaf = leaf;
    nd->keys = PyMem_Calloc((size_t)order + 1, sizeof(PyObject *));
    if (leaf)
        nd->vals = PyMem_Calloc((size_t)order + 1, sizeof(PyObject *));
    else
        nd->kids = PyMem_Calloc((size_t)order + 2, sizeof(csb_node *));
    if (nd->keys == NULL || (leaf ? nd->vals == NULL : nd->kids == NULL)) {
        PyMem_Free(nd->keys);
        PyMem_Free(nd->vals);
        PyMem_Free(nd->kids);
        PyMem_Free(nd);
        return NULL;
    }
    return nd;
}

/* Frees a subtree; its references are parked in `g`. */
static void csb_node_free(csb_node *nd, garbage_t *g)
{
    if (nd == NULL)
        return;
    for (int i = 0; i < nd->n; i++) {
        garbage_add(g, nd->keys[i]);
        if (nd->leaf)
            garbage_add(g, nd->vals[i]);
    }
    if (!nd->leaf)
        for (int i = 0; i <= nd->n; i++)
            csb_node_free(nd->kids[i], g);
    PyMem_Free(nd->keys);
    PyMem_Free(nd->vals);
    PyMem_Free(nd->kids);
    PyMem_Free(nd);
}

/* Enter/leave the single-thread guard. */
static int csb_enter(CSBTreeObject *t)
{
    if (t->busy) {
        PyErr_SetString(PyExc_RuntimeError,
                        "CSBTree is being modified by another operation "
                        "(concurrent or re-entrant use is not supported)");
        return -1;
    }
    t->busy = 1;
    return 0;
}

static inline void csb_leave(CSBTreeObject *t) { t->busy = 0; }

/*
 * Child slot to follow in internal node `nd` for `key`: the number of
 * separators s with !(key < s), i.e. the first i with key < keys[i].
 * Returns the index, or -1 with an exception set.
 */
static int csb_child_index(csb_node *nd, PyObject *key)
{
    int lo = 0, hi = nd->n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        int r = tree_lt(key, nd->keys[mid]);
        if (r < 0)
            return -1;
        if (r)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/*
 * Position of `key` in leaf `nd`: the first i with !(keys[i] < key).
 * *found is set when keys[i] is the same key. Returns i or -1 on error.
 */
static int csb_leaf_index(csb_node *nd, PyObject *key, int *found)
{
    int lo = 0, hi = nd->n;
    *found = 0;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        int r = tree_lt(nd->keys[mid], key);
        if (r < 0)
            return -1;
        if (r)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < nd->n) {
        int r = tree_lt(key, nd->keys[lo]);
        if (r < 0)
            return -1;
        *found = !r;
    }
    return lo;
}

/* Root-to-leaf path of a descent: node[d] and the child slot taken there. */
typedef struct {
    csb_node *node[CSB_MAX_HEIGHT + 1];
    int slot[CSB_MAX_HEIGHT + 1];
    int depth; /* index of the leaf in node[] */
} csb_path;

/* Descends to the leaf for `key`, recording the path. 0, or -1 on error. */
static int csb_descend(CSBTreeObject *t, PyObject *key, csb_path *p)
{
    csb_node *nd = t->root;
    int d = 0;
    while (!nd->leaf) {
        int i = csb_child_index(nd, key);
        if (i < 0)
            return -1;
        p->node[d] = nd;
        p->slot[d] = i;
        nd = nd->kids[i];
        d++;
    }
    p->node[d] = nd;
    p->slot[d] = -1;
    p->depth = d;
    return 0;
}

/*
 * Looks `key` up. Returns 1 and a borrowed value in *val if found, 0 if not,
 * -1 on a comparison error. Caller holds the guard.
 */
static int csb_lookup(CSBTreeObject *t, PyObject *key, PyObject **val)
{
    csb_path p;
    int found;
    if (csb_descend(t, key, &p) < 0)
        return -1;
    csb_node *leaf = p.node[p.depth];
    int i = csb_leaf_index(leaf, key, &found);
    if (i < 0)
        return -1;
    if (found)
        *val = leaf->vals[i];
    return found;
}

/*
 * Inserts (key, val) into the tree, or, when the key exists and `replace` is
 * set, swaps the value. On an existing key *old receives a new reference to
 * the previous value (NULL if the key was new). No comparison happens after
 * the first structural change. Returns 0, or -1 with an exception set and
 * the tree unchanged. Caller holds the guard; dropped references go to `g`.
 */
static int csb_put(CSBTreeObject *t, PyObject *key, PyObject *val, int replace,
                   PyObject **old, garbage_t *g)
{
    csb_path p;
    int found, order = t->order;
    *old = NULL;
    if (csb_descend(t, key, &p) < 0)
        return -1;
    csb_node *leaf = p.node[p.depth];
    int pos = csb_leaf_index(leaf, key, &found);
    if (pos < 0)
        return -1;
    if (found) {
        Py_INCREF(leaf->vals[pos]);
        *old = leaf->vals[pos];
        if (replace) {
            Py_INCREF(val);
            garbage_add(g, leaf->vals[pos]);
            leaf->vals[pos] = val;
        }
        return 0;
    }

    /* Pre-allocate every node a split chain could need, so that the
     * structural phase below cannot fail half-way. */
    csb_node *spare[CSB_MAX_HEIGHT + 2];
    int nspare = 0, need = 0;
    for (int d = p.depth; d >= 0; d--) {
        if (p.node[d]->n < order)
            break;
        need++;
    }
    if (need == p.depth + 1)
        need++; /* a new root */
    for (int i = 0; i < need; i++) {
        /* node kind is fixed below; allocate both arrays generously */
        csb_node *nd = PyMem_Calloc(1, sizeof *nd);
        PyObject **keys = PyMem_Calloc((size_t)order + 1, sizeof(PyObject *));
        void *arr = PyMem_Calloc((size_t)order + 2, sizeof(void *));
        if (!nd || !keys || !arr) {
            PyMem_Free(nd);
            PyMem_Free(keys);
            PyMem_Free(arr);
            while (nspare > 0) {
                csb_node *s = spare[--nspare];
                PyMem_Free(s->keys);
                PyMem_Free(s->vals);
                PyMem_Free(s);
            }
            PyErr_NoMemory();
            return -1;
        }
        nd->keys = keys;
        nd->vals = arr; /* re-pointed to kids for internal nodes */
        spare[nspare++] = nd;
    }

    /* Structural phase: no Python code from here on. */
    Py_INCREF(key);
    Py_INCREF(val);
    memmove(&leaf->keys[pos + 1], &leaf->keys[pos], sizeof(PyObject *) * (size_t)(leaf->n - pos));
    memmove(&leaf->vals[pos + 1], &leaf->vals[pos], sizeof(PyObject *) * (size_t)(leaf->n - pos));
    leaf->keys[pos] = key;
    leaf->vals[pos] = val;
    leaf->n++;
    t->len++;

    csb_node *nd = leaf, *right = NULL;
    PyObject *sep = NULL; /* owned reference pushed up to the parent */
    int d = p.depth;
    while (nd->n > order) {
        right = spare[--nspare];
        right->leaf = nd->leaf;
        if (nd->leaf) {
            int keep = (nd->n + 1) / 2;
            right->n = nd->n - keep;
            memcpy(right->keys, &nd->keys[keep], sizeof(PyObject *) * (size_t)right->n);
            memcpy(right->vals, &nd->vals[keep], sizeof(PyObject *) * (size_t)right->n);
            nd->n = keep;
            right->next = nd->next;
            nd->next = right;
            sep = right->keys[0];
            Py_INCREF(sep);
        } else {
            right->kids = (csb_node **)right->vals;
            right->vals = NULL;
            int mid = nd->n / 2;
            sep = nd->keys[mid]; /* moves up; reference transferred */
            right->n = nd->n - mid - 1;
            memcpy(right->keys, &nd->keys[mid + 1], sizeof(PyObject *) * (size_t)right->n);
            memcpy(right->kids, &nd->kids[mid + 1], sizeof(csb_node *) * (size_t)(right->n + 1));
            nd->n = mid;
        }
        if (d == 0) {
            csb_node *root = spare[--nspare];
            root->leaf = 0;
            root->kids = (csb_node **)root->vals;
            root->vals = NULL;
            root->n = 1;
            root->keys[0] = sep;
            root->kids[0] = nd;
            root->kids[1] = right;
            t->root = root;
            break;
        }
        d--;
        csb_node *parent = p.node[d];
        int s = p.slot[d];
        memmove(&parent->keys[s + 1], &parent->keys[s], sizeof(PyObject *) * (size_t)(parent->n - s));
        memmove(&parent->kids[s + 2], &parent->kids[s + 1], sizeof(csb_node *) * (size_t)(parent->n - s));
        parent->keys[s] = sep;
        parent->kids[s + 1] = right;
        parent->n++;
        nd = parent;
    }
    /* Unused spares (a split chain shorter than planned cannot happen, but
     * stay safe). */
    while (nspare > 0) {
        csb_node *s = spare[--nspare];
        PyMem_Free(s->keys);
        PyMem_Free(s->vals);
        PyMem_Free(s);
    }
    return 0;
}

/*
 * Fixes an underfull node at path depth d (d > 0) by borrowing from or
 * merging with a sibling, walking up while parents become underfull.
 * Purely structural; removed separators go to `g`.
 */
static void csb_rebalance(CSBTreeObject *t, csb_path *p, int d, garbage_t *g)
{
    int min = t->order / 2;
    while (d > 0) {
        csb_node *nd = p->node[d];
        if (nd->n >= min)
            return;
        csb_node *parent = p->node[d - 1];
        int s = p->slot[d - 1];
        csb_node *left = s > 0 ? parent->kids[s - 1] : NULL;
        csb_node *right = s < parent->n ? parent->kids[s + 1] : NULL;

        if (left && left->n > min) { /* borrow the left sibling's last entry */
            memmove(&nd->keys[1], &nd->keys[0], sizeof(PyObject *) * (size_t)nd->n);
            if (nd->leaf) {
                memmove(&nd->vals[1], &nd->vals[0], sizeof(PyObject *) * (size_t)nd->n);
                nd->keys[0] = left->keys[left->n - 1];
                nd->vals[0] = left->vals[left->n - 1];
                left->n--;
                nd->n++;
                garbage_add(g, parent->keys[s - 1]);
                parent->keys[s - 1] = nd->keys[0];
                Py_INCREF(nd->keys[0]);
            } else {
                memmove(&nd->kids[1], &nd->kids[0], sizeof(csb_node *) * (size_t)(nd->n + 1));
                nd->keys[0] = parent->keys[s - 1];
                nd->kids[0] = left->kids[left->n];
                parent->keys[s - 1] = left->keys[left->n - 1];
                left->n--;
                nd->n++;
            }
            return;
        }
        if (right && right->n > min) { /* borrow the right sibling's first entry */
            if (nd->leaf) {
                nd->keys[nd->n] = right->keys[0];
                nd->vals[nd->n] = right->vals[0];
                nd->n++;
                right->n--;
                memmove(&right->keys[0], &right->keys[1], sizeof(PyObject *) * (size_t)right->n);
                memmove(&right->vals[0], &right->vals[1], sizeof(PyObject *) * (size_t)right->n);
                garbage_add(g, parent->keys[s]);
                parent->keys[s] = right->keys[0];
                Py_INCREF(right->keys[0]);
            } else {
                nd->keys[nd->n] = parent->keys[s];
                nd->kids[nd->n + 1] = right->kids[0];
                nd->n++;
                parent->keys[s] = right->keys[0];
                right->n--;
                memmove(&right->keys[0], &right->keys[1], sizeof(PyObject *) * (size_t)right->n);
                memmove(&right->kids[0], &right->kids[1], sizeof(csb_node *) * (size_t)(right->n + 1));
            }
            return;
        }
        /* Merge with a sibling: always fold the right node of the pair into
         * the left one, then drop separator `sep_i` and child `sep_i + 1`. */
        csb_node *a, *b;
        int sep_i;
        if (left) {
            a = left;
            b = nd;
            sep_i = s - 1;
        } else {
            a = nd;
            b = right;
            sep_i = s;
        }
        if (b == NULL) /* only child of the root: nothing to merge with */
            return;
        if (a->leaf) {
            memcpy(&a->keys[a->n], b->keys, sizeof(PyObject *) * (size_t)b->n);
            memcpy(&a->vals[a->n], b->vals, sizeof(PyObject *) * (size_t)b->n);
            a->n += b->n;
            a->next = b->next;
            garbage_add(g, parent->keys[sep_i]);
        } else {
            a->keys[a->n] = parent->keys[sep_i]; /* separator moves down */
            memcpy(&a->keys[a->n + 1], b->keys, sizeof(PyObject *) * (size_t)b->n);
            memcpy(&a->kids[a->n + 1], b->kids, sizeof(csb_node *) * (size_t)(b->n + 1));
            a->n += b->n + 1;
        }
        b->n = 0; /* references moved to `a` */
        PyMem_Free(b->keys);
        PyMem_Free(b->vals);
        PyMem_Free(b->kids);
        PyMem_Free(b);
        memmove(&parent->keys[sep_i], &parent->keys[sep_i + 1],
                sizeof(PyObject *) * (size_t)(parent->n - sep_i - 1));
        memmove(&parent->kids[sep_i + 1], &parent->kids[sep_i + 2],
                sizeof(csb_node *) * (size_t)(parent->n - sep_i - 1));
        parent->n--;
        d--;
    }
    /* d == 0: the root may now be an internal node with a single child. */
    csb_node *root = t->root;
    if (!root->leaf && root->n == 0) {
        t->root = root->kids[0];
        PyMem_Free(root->keys);
        PyMem_Free(root->kids);
        PyMem_Free(root);
    }
}

/*
 * Removes `key`. Returns 1 with a new reference to the removed value in
 * *old, 0 if absent, -1 on a comparison error (tree unchanged).
 */
static int csb_remove(CSBTreeObject *t, PyObject *key, PyObject **old, garbage_t *g)
{
    csb_path p;
    int found;
    *old = NULL;
    if (csb_descend(t, key, &p) < 0)
        return -1;
    csb_node *leaf = p.node[p.depth];
    int pos = csb_leaf_index(leaf, key, &found);
    if (pos < 0)
        return -1;
    if (!found)
        return 0;
    garbage_add(g, leaf->keys[pos]);
    *old = leaf->vals[pos]; /* reference handed to the caller */
    memmove(&leaf->keys[pos], &leaf->keys[pos + 1], sizeof(PyObject *) * (size_t)(leaf->n - pos - 1));
    memmove(&leaf->vals[pos], &leaf->vals[pos + 1], sizeof(PyObject *) * (size_t)(leaf->n - pos - 1));
    leaf->n--;
    t->len--;
    csb_rebalance(t, &p, p.depth, g);
    return 1;
}

/* Leftmost leaf. */
static csb_node *csb_first_leaf(CSBTreeObject *t)
{
    csb_node *nd = t->root;
    while (!nd->leaf)
        nd = nd->kids[0];
    return nd;
}

/* Snapshot of all entries in key order. Caller holds the guard. */
static int csb_snapshot(CSBTreeObject *t, snap_t *s)
{
    for (csb_node *nd = csb_first_leaf(t); nd; nd = nd->next)
        for (int i = 0; i < nd->n; i++)
            if (snap_push(s, nd->keys[i], nd->vals[i]) < 0) {
                PyErr_NoMemory();
                return -1;
            }
    return 0;
}

/* ---- CSBTree Python methods ------------------------------------------- */

static PyObject *CSBTree_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"order", NULL};
    int order = 63;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|i:CSBTree", kwlist, &order))
        return NULL;
    if (order < 3) {
        PyErr_Format(PyExc_ValueError, "CSBTree order must be at least 3, got %d", order);
        return NULL;
    }
    if (order > (1 << 20)) {
        PyErr_Format(PyExc_ValueError, "CSBTree order must be at most %d, got %d", 1 << 20, order);
        return NULL;
    }
    CSBTreeObject *t = (CSBTreeObject *)type->tp_alloc(type, 0);
    if (t == NULL)
        return NULL;
    t->order = order;
    t->root = csb_node_new(order, 1);
    if (t->root == NULL) {
        Py_DECREF(t);
        return PyErr_NoMemory();
    }
    return (PyObject *)t;
}

static int CSBTree_traverse(CSBTreeObject *t, visitproc visit, void *arg)
{
    /* Depth-first walk with an explicit stack (bounded by the height):
     * separators of internal nodes and keys/values of leaves. */
    csb_node *todo[CSB_MAX_HEIGHT + 2];
    int idx[CSB_MAX_HEIGHT + 2];
    int top = 0;
    if (t->root == NULL)
        return 0;
    todo[0] = t->root;
    idx[0] = 0;
    while (top >= 0) {
        csb_node *nd = todo[top];
        if (idx[top] == 0) {
            for (int i = 0; i < nd->n; i++) {
                Py_VISIT(nd->keys[i]);
                if (nd->leaf)
                    Py_VISIT(nd->vals[i]);
            }
        }
        if (nd->leaf || idx[top] > nd->n) {
            top--;
            continue;
        }
        csb_node *child = nd->kids[idx[top]++];
        top++;
        todo[top] = child;
        idx[top] = 0;
    }
    return 0;
}

static int CSBTree_tp_clear(CSBTreeObject *t)
{
    if (t->root == NULL)
        return 0;
    garbage_t g;
    garbage_init(&g);
    csb_node *old = t->root;
    t->root = csb_node_new(t->order, 1); /* may be NULL under OOM: handled */
    t->len = 0;
    csb_node_free(old, &g);
    garbage_release(&g);
    return 0;
}

static void CSBTree_dealloc(CSBTreeObject *t)
{
    PyObject_GC_UnTrack(t);
    garbage_t g;
    garbage_init(&g);
    csb_node *old = t->root;
    t->root = NULL;
    csb_node_free(old, &g);
    garbage_release(&g);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

/* Common front of every keyed CSBTree call: key check + guard. */
static int csb_begin(CSBTreeObject *t, PyObject *key)
{
    if (key && tree_check_key(key) < 0)
        return -1;
    if (t->root == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "CSBTree is not initialised");
        return -1;
    }
    return csb_enter(t);
}

PyDoc_STRVAR(CSBTree_insert_doc,
"insert(key, value) -> previous value or None\n\n"
"Store value under key, replacing any existing value (the originally stored\n"
"key object is kept). Returns the previous value, or None if the key was new.\n"
"Raises TypeError for keys that cannot be ordered against the stored keys.");

static PyObject *CSBTree_insert_impl(CSBTreeObject *t, PyObject *key, PyObject *val)
{
    PyObject *old = NULL;
    garbage_t g;
    if (csb_begin(t, key) < 0)
        return NULL;
    garbage_init(&g);
    int rc = csb_put(t, key, val, 1, &old, &g);
    csb_leave(t);
    garbage_release(&g);
    if (rc < 0)
        return NULL;
    if (old == NULL)
        Py_RETURN_NONE;
    return old;
}

static PyObject *CSBTree_insert(CSBTreeObject *t, PyObject *const *args, Py_ssize_t nargs)
{
    if (!tree_check_nargs("insert", nargs, 2, 2))
        return NULL;
    return CSBTree_insert_impl(t, args[0], args[1]);
}

PyDoc_STRVAR(CSBTree_get_doc,
"get(key) -> value or None\n\nThe value stored under key, or None if absent.");

/* Returns a new reference to the value, NULL with no exception if absent,
 * NULL with an exception on error. */
static PyObject *csb_get_ref(CSBTreeObject *t, PyObject *key)
{
    PyObject *val = NULL;
    if (csb_begin(t, key) < 0)
        return NULL;
    int r = csb_lookup(t, key, &val);
    if (r > 0)
        Py_INCREF(val);
    csb_leave(t);
    return r > 0 ? val : NULL;
}

static PyObject *CSBTree_get(CSBTreeObject *t, PyObject *key)
{
    return tree_value_or(csb_get_ref(t, key), Py_None);
}

PyDoc_STRVAR(CSBTree_get_default_doc,
"get_default(key, default) -> value\n\nThe value stored under key, or default if absent.");

static PyObject *CSBTree_get_default(CSBTreeObject *t, PyObject *const *args, Py_ssize_t nargs)
{
    if (!tree_check_nargs("get_default", nargs, 2, 2))
        return NULL;
    return tree_value_or(csb_get_ref(t, args[0]), args[1]);
}

PyDoc_STRVAR(CSBTree_setdefault_doc,
"setdefault(key, value) -> value\n\n"
"The existing value for key if present; otherwise store value and return it.");

static PyObject *CSBTree_setdefault(CSBTreeObject *t, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *old = NULL;
    garbage_t g;
    if (!tree_check_nargs("setdefault", nargs, 2, 2))
        return NULL;
    if (csb_begin(t, args[0]) < 0)
        return NULL;
    garbage_init(&g);
    int rc = csb_put(t, args[0], args[1], 0, &old, &g);
    csb_leave(t);
    garbage_release(&g);
    if (rc < 0)
        return NULL;
    if (old)
        return old;
    Py_INCREF(args[1]);
    return args[1];
}

PyDoc_STRVAR(CSBTree_remove_doc,
"remove(key) -> removed value or None\n\nRemove key; returns its value, or None if absent.");

/* 1 removed (*old new ref), 0 absent, -1 error. */
static int csb_remove_key(CSBTreeObject *t, PyObject *key, PyObject **old)
{
    garbage_t g;
    if (csb_begin(t, key) < 0)
        return -1;
    garbage_init(&g);
    int r = csb_remove(t, key, old, &g);
    csb_leave(t);
    garbage_release(&g);
    return r;
}

static PyObject *CSBTree_remove(CSBTreeObject *t, PyObject *key)
{
    PyObject *old = NULL;
    int r = csb_remove_key(t, key, &old);
    return tree_removed_value(r, old);
}

PyDoc_STRVAR(CSBTree_update_doc,
"update(pairs) -> None\n\n"
"Insert every (key, value) pair of an iterable, replacing existing values.\n"
"Each item must be indexable with item[0] and item[1]; a dict is iterated by\n"
"its keys, so pass d.items().");

static PyObject *CSBTree_update(CSBTreeObject *t, PyObject *pairs)
{
    PyObject *it = PyObject_GetIter(pairs), *item;
    if (it == NULL)
        return NULL;
    while ((item = PyIter_Next(it)) != NULL) {
        PyObject *k = PySequence_GetItem(item, 0);
        PyObject *v = k ? PySequence_GetItem(item, 1) : NULL;
        Py_DECREF(item);
        PyObject *r = v ? CSBTree_insert_impl(t, k, v) : NULL;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (r == NULL) {
            Py_DECREF(it);
            return NULL;
        }
        Py_DECREF(r);
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(CSBTree_is_empty_doc, "is_empty() -> bool\n\nTrue when the tree holds no keys.");

static PyObject *CSBTree_is_empty(CSBTreeObject *t, PyObject *unused)
{
    return PyBool_FromLong(t->len == 0);
}

PyDoc_STRVAR(CSBTree_clear_doc, "clear() -> None\n\nRemove every key.");

static PyObject *CSBTree_clear(CSBTreeObject *t, PyObject *unused)
{
    if (csb_begin(t, NULL) < 0)
        return NULL;
    /* csb_clear_all drops references only after the new root is in place;
     * the guard stays on so finalizers re-entering the tree get an error. */
    garbage_t g;
    garbage_init(&g);
    csb_node *fresh = csb_node_new(t->order, 1);
    if (fresh == NULL) {
        csb_leave(t);
        return PyErr_NoMemory();
    }
    csb_node *old = t->root;
    t->root = fresh;
    t->len = 0;
    csb_node_free(old, &g);
    csb_leave(t);
    garbage_release(&g);
    Py_RETURN_NONE;
}

static PyObject *csb_list(CSBTreeObject *t, enum snap_kind kind)
{
    snap_t s = {0};
    if (csb_begin(t, NULL) < 0)
        return NULL;
    int rc = csb_snapshot(t, &s);
    csb_leave(t);
    return snap_finish(&s, rc, kind);
}

PyDoc_STRVAR(CSBTree_keys_doc, "keys() -> list\n\nAll keys in ascending order (a new list).");
PyDoc_STRVAR(CSBTree_values_doc, "values() -> list\n\nAll values in key order (a new list).");
PyDoc_STRVAR(CSBTree_items_doc, "items() -> list\n\nAll (key, value) tuples in key order (a new list).");

static PyObject *CSBTree_keys(CSBTreeObject *t, PyObject *u) { return csb_list(t, SNAP_KEYS); }
static PyObject *CSBTree_values(CSBTreeObject *t, PyObject *u) { return csb_list(t, SNAP_VALUES); }
static PyObject *CSBTree_items(CSBTreeObject *t, PyObject *u) { return csb_list(t, SNAP_ITEMS); }

PyDoc_STRVAR(CSBTree_range_doc,
"range(start, end) -> list\n\n"
"(key, value) tuples with start <= key < end, in key order (half-open;\n"
"start >= end gives []).");

static PyObject *CSBTree_range(CSBTreeObject *t, PyObject *const *args, Py_ssize_t nargs)
{
    if (!tree_check_nargs("range", nargs, 2, 2))
        return NULL;
    PyObject *start = args[0], *end = args[1];
    if (tree_check_key(end) < 0 || csb_begin(t, start) < 0)
        return NULL;
    snap_t s = {0};
    csb_path p;
    int found, rc = -1;
    if (csb_descend(t, start, &p) < 0)
        goto out;
    csb_node *nd = p.node[p.depth];
    int i = csb_leaf_index(nd, start, &found);
    if (i < 0)
        goto out;
    /* Collect while key < end. Comparisons run Python code; the guard keeps
     * the structure fixed meanwhile. */
    for (; nd; nd = nd->next, i = 0) {
        for (; i < nd->n; i++) {
            int r = tree_lt(nd->keys[i], end);
            if (r < 0)
                goto out;
            if (!r) {
                rc = 0;
                goto out;
            }
            if (snap_push(&s, nd->keys[i], nd->vals[i]) < 0) {
                PyErr_NoMemory();
                goto out;
            }
        }
    }
    rc = 0;
out:
    csb_leave(t);
    return snap_finish(&s, rc, SNAP_ITEMS);
}

static PyObject *CSBTree_iter(CSBTreeObject *t) { return tree_iter_list(csb_list(t, SNAP_ITEMS)); }

static Py_ssize_t CSBTree_len(CSBTreeObject *t) { return t->len; }

static int CSBTree_contains(CSBTreeObject *t, PyObject *key) { return tree_found(csb_get_ref(t, key)); }

static PyObject *CSBTree_subscript(CSBTreeObject *t, PyObject *key)
{
    return tree_value_or_keyerror(csb_get_ref(t, key), "Key not found in CSBTree");
}

static int CSBTree_ass_subscript(CSBTreeObject *t, PyObject *key, PyObject *val)
{
    if (val) {
        PyObject *r = CSBTree_insert_impl(t, key, val);
        Py_XDECREF(r);
        return r ? 0 : -1;
    }
    PyObject *old = NULL;
    int r = csb_remove_key(t, key, &old);
    return tree_del_result(r, old, "Key not found in CSBTree");
}

static PyObject *CSBTree_repr(CSBTreeObject *t)
{
    return PyUnicode_FromFormat("CSBTree(len=%zd)", t->len);
}

static PyObject *tree_reduce(PyObject *self, PyObject *unused)
{
    PyErr_Format(PyExc_TypeError, "cannot pickle '%s' object", Py_TYPE(self)->tp_name);
    return NULL;
}

static PyMethodDef CSBTree_methods[] = {
    {"insert", (PyCFunction)(void (*)(void))CSBTree_insert, METH_FASTCALL, CSBTree_insert_doc},
    {"get", (PyCFunction)CSBTree_get, METH_O, CSBTree_get_doc},
    {"get_default", (PyCFunction)(void (*)(void))CSBTree_get_default, METH_FASTCALL, CSBTree_get_default_doc},
    {"setdefault", (PyCFunction)(void (*)(void))CSBTree_setdefault, METH_FASTCALL, CSBTree_setdefault_doc},
    {"remove", (PyCFunction)CSBTree_remove, METH_O, CSBTree_remove_doc},
    {"update", (PyCFunction)CSBTree_update, METH_O, CSBTree_update_doc},
    {"is_empty", (PyCFunction)CSBTree_is_empty, METH_NOARGS, CSBTree_is_empty_doc},
    {"clear", (PyCFunction)CSBTree_clear, METH_NOARGS, CSBTree_clear_doc},
    {"keys", (PyCFunction)CSBTree_keys, METH_NOARGS, CSBTree_keys_doc},
    {"values", (PyCFunction)CSBTree_values, METH_NOARGS, CSBTree_values_doc},
    {"items", (PyCFunction)CSBTree_items, METH_NOARGS, CSBTree_items_doc},
    {"range", (PyCFunction)(void (*)(void))CSBTree_range, METH_FASTCALL, CSBTree_range_doc},
    {"__reduce__", tree_reduce, METH_NOARGS, "Not picklable: raises TypeError."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods CSBTree_as_sequence = {
    .sq_contains = (objobjproc)CSBTree_contains,
};

static PyMappingMethods CSBTree_as_mapping = {
    .mp_length = (lenfunc)CSBTree_len,
    .mp_subscript = (binaryfunc)CSBTree_subscript,
    .mp_ass_subscript = (objobjargproc)CSBTree_ass_subscript,
};

PyDoc_STRVAR(CSBTree_doc,
"CSBTree(order=63)\n\n"
"In-memory ordered map of Python objects (a B+-tree with up to `order` keys\n"
"per node, leaves chained in key order). Keys are ordered with Python's `<`;\n"
"two keys neither of which is < the other are the same key. insert and\n"
"t[k] = v replace the value; iteration yields (key, value) tuples from a\n"
"snapshot; keys()/values()/items()/range() return lists. Missing keys:\n"
"t[k] and del t[k] raise KeyError, get() returns None. order < 3 raises\n"
"ValueError. Single-thread use only: concurrent or re-entrant calls raise\n"
"RuntimeError instead of corrupting the tree. Not picklable.");

static PyTypeObject CSBTree_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kohakuvault._kvault.CSBTree",
    .tp_basicsize = sizeof(CSBTreeObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = CSBTree_doc,
    .tp_new = CSBTree_new,
    .tp_dealloc = (destructor)CSBTree_dealloc,
    .tp_traverse = (traverseproc)CSBTree_traverse,
    .tp_clear = (inquiry)CSBTree_tp_clear,
    .tp_repr = (reprfunc)CSBTree_repr,
    .tp_iter = (getiterfunc)CSBTree_iter,
    .tp_methods = CSBTree_methods,
    .tp_as_sequence = &CSBTree_as_sequence,
    .tp_as_mapping = &CSBTree_as_mapping,
};

/* ====================================================================== */
/* 3. SkipList                                                             */
/* ====================================================================== */

#define SKL_MAX_LEVEL 32

typedef struct skl_node {
    PyObject *key;           /* owned; NULL only in the head sentinel */
    PyObject *val;           /* owned; NULL only in the head sentinel */
    int level;               /* number of forward pointers */
    struct skl_node *fwd[];  /* fwd[i]: next node at level i */
} skl_node;

typedef struct {
    PyObject_HEAD
    skl_node *head;            /* sentinel with SKL_MAX_LEVEL pointers; owned */
    int level;                 /* highest level in use, >= 1 */
    Py_ssize_t len;            /* entries; written under `lock` */
    uint64_t rng;              /* xorshift64 state for node levels; under `lock` */
    PyThread_type_lock lock;   /* serialises every operation (leaf lock) */
    unsigned long owner;       /* thread ident of the holder, 0 if free; GIL-protected */
} SkipListObject;

static PyTypeObject SkipList_Type;

/*
 * Takes the list's lock. Waits with the GIL released when contended.
 * Returns 0, or -1 with RuntimeError if the calling thread already holds it
 * (a comparison re-entered the list).
 */
static int skl_lock(SkipListObject *s)
{
    unsigned long me = PyThread_get_thread_ident();
    if (s->owner == me) {
        PyErr_SetString(PyExc_RuntimeError,
                        "SkipList re-entered from inside one of its own operations "
                        "(e.g. from a key's comparison method)");
        return -1;
    }
    if (!PyThread_acquire_lock(s->lock, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(s->lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
    s->owner = me;
    return 0;
}

static void skl_unlock(SkipListObject *s)
{
    s->owner = 0;
    PyThread_release_lock(s->lock);
}

/* Level of a new node: geometric with p = 1/4 (Pugh 1990). Under the lock. */
static int skl_random_level(SkipListObject *s)
{
    int lvl = 1;
    uint64_t x = s->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    s->rng = x;
    while (lvl < SKL_MAX_LEVEL && (x & 3) == 0) {
        lvl++;
        x >>= 2;
    }
    return lvl;
}

/*
 * Finds the predecessors of `key` at every level (update[i]) and returns
 * 1 if the node after update[0] holds the same key, 0 if not, -1 on a
 * comparison error. Under the lock; runs Python comparisons only.
 */
static int skl_find(SkipListObject *s, PyObject *key, skl_node **update)
{
    skl_node *x = s->head;
    for (int i = s->level - 1; i >= 0; i--) {
        for (;;) {
            skl_node *nx = x->fwd[i];
            if (nx == NULL)
                break;
            int r = tree_lt(nx->key, key);
            if (r < 0)
                return -1;
            if (!r)
                break;
            x = nx;
        }
        if (update)
            update[i] = x;
    }
    skl_node *cand = x->fwd[0];
    if (cand == NULL)
        return 0;
    int r = tree_lt(key, cand->key);
    if (r < 0)
        return -1;
    return !r;
}

/* The node holding `key`, or NULL (check PyErr_Occurred). Under the lock. */
static skl_node *skl_lookup(SkipListObject *s, PyObject *key)
{
    skl_node *update[SKL_MAX_LEVEL];
    int r = skl_find(s, key, update);
    return r > 0 ? update[0]->fwd[0] : NULL;
}

static PyObject *SkipList_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, ":SkipList", kwlist))
        return NULL;
    SkipListObject *s = (SkipListObject *)type->tp_alloc(type, 0);
    if (s == NULL)
        return NULL;
    s->head = PyMem_Calloc(1, sizeof(skl_node) + SKL_MAX_LEVEL * sizeof(skl_node *));
    s->lock = PyThread_allocate_lock();
    if (s->head == NULL || s->lock == NULL) {
        Py_DECREF(s);
        return PyErr_NoMemory();
    }
    s->head->level = SKL_MAX_LEVEL;
    s->level = 1;
    s->rng = 0x9E3779B97F4A7C15ULL ^ (uint64_t)(uintptr_t)s;
    if (s->rng == 0)
        s->rng = 1;
    return (PyObject *)s;
}

static int SkipList_traverse(SkipListObject *s, visitproc visit, void *arg)
{
    /* Called with the GIL held; structural changes never run Python code,
     * so the chain is consistent whenever the GC can observe it. */
    if (s->head == NULL)
        return 0;
    for (skl_node *x = s->head->fwd[0]; x; x = x->fwd[0]) {
        Py_VISIT(x->key);
        Py_VISIT(x->val);
    }
    return 0;
}

/* Unlinks every node; references go to `g`. Caller holds the lock (or is the
 * sole owner during dealloc). */
static void skl_detach_all(SkipListObject *s, garbage_t *g)
{
    skl_node *x = s->head ? s->head->fwd[0] : NULL;
    if (s->head)
        memset(s->head->fwd, 0, SKL_MAX_LEVEL * sizeof(skl_node *));
    s->level = 1;
    s->len = 0;
    while (x) {
        skl_node *nx = x->fwd[0];
        garbage_add(g, x->key);
        garbage_add(g, x->val);
        PyMem_Free(x);
        x = nx;
    }
}

static int SkipList_tp_clear(SkipListObject *s)
{
    /* Only the GC calls this, when the list is unreachable: no other thread
     * can be inside an operation. */
    garbage_t g;
    garbage_init(&g);
    skl_detach_all(s, &g);
    garbage_release(&g);
    return 0;
}

static void SkipList_dealloc(SkipListObject *s)
{
    PyObject_GC_UnTrack(s);
    garbage_t g;
    garbage_init(&g);
    skl_detach_all(s, &g);
    PyMem_Free(s->head);
    s->head = NULL;
    if (s->lock)
        PyThread_free_lock(s->lock);
    s->lock = NULL;
    garbage_release(&g);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

/*
 * insert semantics: if the key exists, leave the stored value and return a
 * new reference to it; otherwise store and return NULL with no exception.
 * NULL with an exception on error.
 */
static PyObject *skl_insert(SkipListObject *s, PyObject *key, PyObject *val)
{
    skl_node *update[SKL_MAX_LEVEL];
    PyObject *ret = NULL;
    if (tree_check_key(key) < 0 || skl_lock(s) < 0)
        return NULL;
    int r = skl_find(s, key, update);
    if (r < 0)
        goto out;
    if (r > 0) {
        ret = update[0]->fwd[0]->val;
        Py_INCREF(ret);
        goto out;
    }
    int lvl = skl_random_level(s);
    skl_node *nd = PyMem_Malloc(sizeof(skl_node) + (size_t)lvl * sizeof(skl_node *));
    if (nd == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    if (lvl > s->level) {
        for (int i = s->level; i < lvl; i++)
            update[i] = s->head;
        s->level = lvl;
    }
    Py_INCREF(key);
    Py_INCREF(val);
    nd->key = key;
    nd->val = val;
    nd->level = lvl;
    for (int i = 0; i < lvl; i++) {
        nd->fwd[i] = update[i]->fwd[i];
        update[i]->fwd[i] = nd;
    }
    s->len++;
out:
    skl_unlock(s);
    return ret;
}

PyDoc_STRVAR(SkipList_insert_doc,
"insert(key, value) -> existing value or None\n\n"
"If key is already present, leave its stored value unchanged and return it;\n"
"otherwise store value and return None. s[k] = v behaves the same (it does\n"
"not replace). Thread-safe.");

static PyObject *SkipList_insert(SkipListObject *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (!tree_check_nargs("insert", nargs, 2, 2))
        return NULL;
    return tree_value_or(skl_insert(s, args[0], args[1]), Py_None);
}

/* New reference to the value, NULL (no exception) if absent, NULL+exc. */
static PyObject *skl_get_ref(SkipListObject *s, PyObject *key)
{
    if (tree_check_key(key) < 0 || skl_lock(s) < 0)
        return NULL;
    skl_node *nd = skl_lookup(s, key);
    PyObject *v = nd ? nd->val : NULL;
    Py_XINCREF(v);
    skl_unlock(s);
    return v;
}

PyDoc_STRVAR(SkipList_get_doc,
"get(key) -> value or None\n\nThe value stored under key, or None. Thread-safe.");

static PyObject *SkipList_get(SkipListObject *s, PyObject *key)
{
    return tree_value_or(skl_get_ref(s, key), Py_None);
}

/* 1 removed (*old new ref), 0 absent, -1 error. */
static int skl_remove(SkipListObject *s, PyObject *key, PyObject **old)
{
    skl_node *update[SKL_MAX_LEVEL];
    *old = NULL;
    if (tree_check_key(key) < 0 || skl_lock(s) < 0)
        return -1;
    int r = skl_find(s, key, update);
    skl_node *nd = NULL;
    if (r > 0) {
        nd = update[0]->fwd[0];
        for (int i = 0; i < nd->level; i++)
            if (update[i]->fwd[i] == nd)
                update[i]->fwd[i] = nd->fwd[i];
        while (s->level > 1 && s->head->fwd[s->level - 1] == NULL)
            s->level--;
        s->len--;
    }
    skl_unlock(s);
    if (nd) {
        *old = nd->val;   /* reference handed to the caller */
        Py_DECREF(nd->key); /* after unlock: may run a finalizer */
        PyMem_Free(nd);
    }
    return r;
}

PyDoc_STRVAR(SkipList_remove_doc,
"remove(key) -> removed value or None\n\nRemove key; returns its value or None. Thread-safe.");

static PyObject *SkipList_remove(SkipListObject *s, PyObject *key)
{
    PyObject *old = NULL;
    int r = skl_remove(s, key, &old);
    return tree_removed_value(r, old);
}

PyDoc_STRVAR(SkipList_is_empty_doc, "is_empty() -> bool\n\nTrue when the list holds no keys.");

static PyObject *SkipList_is_empty(SkipListObject *s, PyObject *u)
{
    return PyBool_FromLong(s->len == 0);
}

PyDoc_STRVAR(SkipList_clear_doc, "clear() -> None\n\nRemove every key. Thread-safe.");

static PyObject *SkipList_clear(SkipListObject *s, PyObject *u)
{
    garbage_t g;
    garbage_init(&g);
    if (skl_lock(s) < 0)
        return NULL;
    skl_detach_all(s, &g);
    skl_unlock(s);
    garbage_release(&g);
    Py_RETURN_NONE;
}

static PyObject *skl_list(SkipListObject *s, enum snap_kind kind)
{
    snap_t sn = {0};
    int rc = 0;
    if (skl_lock(s) < 0)
        return NULL;
    for (skl_node *x = s->head->fwd[0]; x; x = x->fwd[0])
        if (snap_push(&sn, x->key, x->val) < 0) {
            rc = -1;
            break;
        }
    skl_unlock(s);
    if (rc < 0)
        PyErr_NoMemory();
    return snap_finish(&sn, rc, kind);
}

PyDoc_STRVAR(SkipList_keys_doc, "keys() -> list\n\nAll keys in ascending order (a new list).");
PyDoc_STRVAR(SkipList_values_doc, "values() -> list\n\nAll values in key order (a new list).");
PyDoc_STRVAR(SkipList_items_doc, "items() -> list\n\nAll (key, value) tuples in key order (a new list).");

static PyObject *SkipList_keys(SkipListObject *s, PyObject *u) { return skl_list(s, SNAP_KEYS); }
static PyObject *SkipList_values(SkipListObject *s, PyObject *u) { return skl_list(s, SNAP_VALUES); }
static PyObject *SkipList_items(SkipListObject *s, PyObject *u) { return skl_list(s, SNAP_ITEMS); }

PyDoc_STRVAR(SkipList_range_doc,
"range(start, end) -> list\n\n"
"(key, value) tuples with start <= key < end, in key order (half-open;\n"
"start >= end gives []). Thread-safe; one consistent snapshot.");

static PyObject *SkipList_range(SkipListObject *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (!tree_check_nargs("range", nargs, 2, 2))
        return NULL;
    PyObject *start = args[0], *end = args[1];
    if (tree_check_key(start) < 0 || tree_check_key(end) < 0 || skl_lock(s) < 0)
        return NULL;
    snap_t sn = {0};
    skl_node *update[SKL_MAX_LEVEL];
    int rc = skl_find(s, start, update);
    if (rc >= 0) {
        rc = 0;
        for (skl_node *x = update[0]->fwd[0]; x; x = x->fwd[0]) {
            int r = tree_lt(x->key, end);
            if (r <= 0) {
                rc = r;
                break;
            }
            if (snap_push(&sn, x->key, x->val) < 0) {
                PyErr_NoMemory();
                rc = -1;
                break;
            }
        }
    }
    skl_unlock(s);
    return snap_finish(&sn, rc, SNAP_ITEMS);
}

static PyObject *SkipList_iter(SkipListObject *s) { return tree_iter_list(skl_list(s, SNAP_ITEMS)); }

static Py_ssize_t SkipList_len(SkipListObject *s) { return s->len; }

static int SkipList_contains(SkipListObject *s, PyObject *key) { return tree_found(skl_get_ref(s, key)); }

static PyObject *SkipList_subscript(SkipListObject *s, PyObject *key)
{
    return tree_value_or_keyerror(skl_get_ref(s, key), "Key not found");
}

static int SkipList_ass_subscript(SkipListObject *s, PyObject *key, PyObject *val)
{
    if (val) {
        PyObject *r = skl_insert(s, key, val);
        if (r == NULL)
            return PyErr_Occurred() ? -1 : 0;
        Py_DECREF(r);
        return 0;
    }
    PyObject *old = NULL;
    int r = skl_remove(s, key, &old);
    return tree_del_result(r, old, "Key not found");
}

static PyObject *SkipList_repr(SkipListObject *s)
{
    return PyUnicode_FromFormat("SkipList(len=%zd)", s->len);
}

static PyMethodDef SkipList_methods[] = {
    {"insert", (PyCFunction)(void (*)(void))SkipList_insert, METH_FASTCALL, SkipList_insert_doc},
    {"get", (PyCFunction)SkipList_get, METH_O, SkipList_get_doc},
    {"remove", (PyCFunction)SkipList_remove, METH_O, SkipList_remove_doc},
    {"is_empty", (PyCFunction)SkipList_is_empty, METH_NOARGS, SkipList_is_empty_doc},
    {"clear", (PyCFunction)SkipList_clear, METH_NOARGS, SkipList_clear_doc},
    {"keys", (PyCFunction)SkipList_keys, METH_NOARGS, SkipList_keys_doc},
    {"values", (PyCFunction)SkipList_values, METH_NOARGS, SkipList_values_doc},
    {"items", (PyCFunction)SkipList_items, METH_NOARGS, SkipList_items_doc},
    {"range", (PyCFunction)(void (*)(void))SkipList_range, METH_FASTCALL, SkipList_range_doc},
    {"__reduce__", tree_reduce, METH_NOARGS, "Not picklable: raises TypeError."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods SkipList_as_sequence = {
    .sq_contains = (objobjproc)SkipList_contains,
};

static PyMappingMethods SkipList_as_mapping = {
    .mp_length = (lenfunc)SkipList_len,
    .mp_subscript = (binaryfunc)SkipList_subscript,
    .mp_ass_subscript = (objobjargproc)SkipList_ass_subscript,
};

PyDoc_STRVAR(SkipList_doc,
"SkipList()\n\n"
"In-memory ordered map of Python objects (a skip list, Pugh 1990). Keys are\n"
"ordered with Python's `<`. insert(k, v) and s[k] = v keep the existing value\n"
"when k is present (and return it); iteration yields (key, value) tuples from\n"
"a snapshot; keys()/values()/items()/range() return lists. s[k] raises\n"
"KeyError('Key not found'). Safe for concurrent use from several Python\n"
"threads: each operation runs under a per-list mutex, waited on with the GIL\n"
"released. Not picklable.");

static PyTypeObject SkipList_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kohakuvault._kvault.SkipList",
    .tp_basicsize = sizeof(SkipListObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = SkipList_doc,
    .tp_new = SkipList_new,
    .tp_dealloc = (destructor)SkipList_dealloc,
    .tp_traverse = (traverseproc)SkipList_traverse,
    .tp_clear = (inquiry)SkipList_tp_clear,
    .tp_repr = (reprfunc)SkipList_repr,
    .tp_iter = (getiterfunc)SkipList_iter,
    .tp_methods = SkipList_methods,
    .tp_as_sequence = &SkipList_as_sequence,
    .tp_as_mapping = &SkipList_as_mapping,
};

/* ====================================================================== */
/* Registration                                                            */
/* ====================================================================== */

int kvpy_init_tree(PyObject *module)
{
    if (PyType_Ready(&CSBTree_Type) < 0 || PyType_Ready(&SkipList_Type) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "CSBTree", (PyObject *)&CSBTree_Type) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "SkipList", (PyObject *)&SkipList_Type) < 0)
        return -1;
    return 0;
}
