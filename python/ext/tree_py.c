/*
 * tree_py.c - CSBTree and SkipList: in-memory ordered maps of Python objects
 * (docs/api.md §9), exported by kohakuvault._kvault.
 *
 * Both containers order keys with Python's own comparisons: `a` sorts before
 * `b` when `a < b` is true, and two keys are the same key when neither sorts
 * before the other (so 1, 1.0 and True collide). Comparison errors (e.g. int
 * vs str) propagate as the TypeError Python raises; a float NaN key is refused
 * with TypeError because it has no place in a total order.
 *
 * Sections:
 *   1. shared helpers (ordering, deferred decrefs, the tree_kind contract)
 *   2. CSBTree: a B+-tree whose nodes hold up to `order` keys in contiguous
 *      arrays, with leaves chained left to right for ordered scans
 *   3. SkipList: a probabilistic skip list (W. Pugh, "Skip Lists: A
 *      Probabilistic Alternative to Balanced Trees", CACM 33(6), 1990;
 *      p = 1/4, at most 32 levels) guarded by a per-object mutex
 *   4. the Python surface both share: one set of methods and slots that
 *      reach each container through its tree_kind, and the two types
 *
 * The one idea to keep in mind: a Python comparison can run arbitrary Python
 * code, which may release the GIL (thread switch) or touch the very container
 * being modified. Every operation therefore does all of its comparisons
 * first, while the structure is unchanged, and only then relinks nodes with
 * no Python code in between; reference drops (which can run __del__) happen
 * after the structure is consistent again and the guard is released.
 *
 * Concurrency:
 *   - CSBTree is single-thread only (docs/api.md §9). A `busy` flag marks an
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
 *   - fork(): a child forked while another thread was inside an operation
 *     (running a comparison: the structure is consistent) can use the tree:
 *     the SkipList's lock is replaced in the child if held (forksafe.c), the
 *     CSBTree's guard is taken over (csb_enter).
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

/* Appends new references to (k, v). 0, or -1 with MemoryError. */
static int snap_push(snap_t *s, PyObject *k, PyObject *v)
{
    if (s->n == s->cap) {
        Py_ssize_t ncap = s->cap ? s->cap * 2 : 64;
        PyObject **p = PyMem_Realloc(s->kv, sizeof(PyObject *) * 2 * (size_t)ncap);
        if (p == NULL) {
            PyErr_NoMemory();
            return -1;
        }
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

/* For range scans: snap_push(k, v) if k < end. 1 pushed, 0 when k >= end
 * (the scan stops), -1 with an exception. */
static int snap_push_below(snap_t *s, PyObject *k, PyObject *v, PyObject *end)
{
    int r = tree_lt(k, end);
    if (r <= 0)
        return r;
    return snap_push(s, k, v) < 0 ? -1 : 1;
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

/*
 * What a container gives the shared Python surface (section 4): its
 * operations and messages. The keyed operations check the key and take the
 * container's guard themselves; the others run between enter() and leave().
 * Section 4 serves both types' methods and slots through this.
 */
enum tree_detach_mode {
    TREE_DETACH_CLEAR, /* clear(): stay usable; -1 with MemoryError if that fails */
    TREE_DETACH_GC,    /* tp_clear: stay usable when memory allows; never fails */
    TREE_DETACH_FINAL, /* tp_dealloc: release all storage; never fails */
};

typedef struct tree_kind {
    const char *name;              /* "CSBTree", for repr (subclasses too) */
    const char *missing;           /* KeyError message of t[k] and del t[k] */
    /* insert(k, v) as the container defines it: a new reference to the value
     * the key had (NULL without an exception when the key was new), or NULL
     * with an exception. */
    PyObject *(*insert)(PyObject *self, PyObject *key, PyObject *val);
    /* A new reference to the value, NULL without an exception when absent,
     * or NULL with an exception. */
    PyObject *(*get_ref)(PyObject *self, PyObject *key);
    /* 1 removed (*old a new reference to the value), 0 absent, -1 error. */
    int (*remove)(PyObject *self, PyObject *key, PyObject **old);
    int (*enter)(PyObject *self);  /* take the guard: 0, or -1 with RuntimeError */
    void (*leave)(PyObject *self);
    /* Under the guard: push every entry in key order (0, or -1 with MemoryError). */
    int (*snapshot)(PyObject *self, snap_t *s);
    /* Under the guard: push the entries with start <= key < end (0 or -1). */
    int (*snapshot_range)(PyObject *self, PyObject *start, PyObject *end, snap_t *s);
    /* Unlink every entry, parking references in `g`; see tree_detach_mode
     * for when it runs. 0, or -1 with an exception (TREE_DETACH_CLEAR only). */
    int (*detach)(PyObject *self, garbage_t *g, enum tree_detach_mode mode);
} tree_kind;

/* First member of both object structs. */
typedef struct {
    PyObject_HEAD
    const tree_kind *kind; /* set by tp_new right after tp_alloc; never NULL after */
    Py_ssize_t len;        /* entries stored (SkipList: written under its lock) */
} TreeObject;

static inline const tree_kind *tree_kind_of(PyObject *self)
{
    return ((TreeObject *)self)->kind;
}

enum { TREE_CSB, TREE_SKL, TREE_KINDS };

static const tree_kind tree_kinds[TREE_KINDS]; /* section 4 */

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
    TreeObject base;    /* base.len: number of keys stored */
    csb_node *root;     /* never NULL once constructed (an empty leaf at least) */
    int order;          /* maximum keys per node, >= 3 */
    int busy;           /* an operation is in progress (re-entrancy guard) */
    unsigned long busy_owner;  /* thread ident of that operation */
    unsigned long busy_gen;    /* kvpy_fork_generation when it began */
} CSBTreeObject;

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

/* Enter/leave the single-thread guard. In a forked child, an operation
 * another thread of the parent had in progress (it was running a Python
 * comparison, the tree is consistent) has no holder: the guard is taken
 * over rather than refusing every later call. */
static int csb_enter(CSBTreeObject *t)
{
    unsigned long me = PyThread_get_thread_ident();
    if (t->busy && (t->busy_gen == kvpy_fork_generation || t->busy_owner == me)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "CSBTree is being modified by another operation "
                        "(concurrent or re-entrant use is not supported)");
        return -1;
    }
    t->busy = 1;
    t->busy_owner = me;
    t->busy_gen = kvpy_fork_generation;
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
 * Descends to the leaf for `key` (p->node[p->depth]) and returns the
 * position of `key` there (csb_leaf_index), or -1 on a comparison error.
 */
static int csb_find(CSBTreeObject *t, PyObject *key, csb_path *p, int *found)
{
    if (csb_descend(t, key, p) < 0)
        return -1;
    return csb_leaf_index(p->node[p->depth], key, found);
}

/*
 * Looks `key` up. Returns 1 and a borrowed value in *val if found, 0 if not,
 * -1 on a comparison error. Caller holds the guard.
 */
static int csb_lookup(CSBTreeObject *t, PyObject *key, PyObject **val)
{
    csb_path p;
    int found;
    int i = csb_find(t, key, &p, &found);
    if (i < 0)
        return -1;
    if (found)
        *val = p.node[p.depth]->vals[i];
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
    int pos = csb_find(t, key, &p, &found);
    if (pos < 0)
        return -1;
    csb_node *leaf = p.node[p.depth];
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
    t->base.len++;

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
    int pos = csb_find(t, key, &p, &found);
    if (pos < 0)
        return -1;
    if (!found)
        return 0;
    csb_node *leaf = p.node[p.depth];
    garbage_add(g, leaf->keys[pos]);
    *old = leaf->vals[pos]; /* reference handed to the caller */
    memmove(&leaf->keys[pos], &leaf->keys[pos + 1], sizeof(PyObject *) * (size_t)(leaf->n - pos - 1));
    memmove(&leaf->vals[pos], &leaf->vals[pos + 1], sizeof(PyObject *) * (size_t)(leaf->n - pos - 1));
    leaf->n--;
    t->base.len--;
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

/* tree_kind.snapshot: all entries in key order. Caller holds the guard. */
static int csb_snapshot(PyObject *self, snap_t *s)
{
    for (csb_node *nd = csb_first_leaf((CSBTreeObject *)self); nd; nd = nd->next)
        for (int i = 0; i < nd->n; i++)
            if (snap_push(s, nd->keys[i], nd->vals[i]) < 0)
                return -1;
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
    t->base.kind = &tree_kinds[TREE_CSB];
    t->order = order;
    t->root = csb_node_new(order, 1);
    if (t->root == NULL) {
        Py_DECREF(t);
        return PyErr_NoMemory();
    }
    return (PyObject *)t;
}

static int CSBTree_traverse(PyObject *self, visitproc visit, void *arg)
{
    CSBTreeObject *t = (CSBTreeObject *)self;
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

/* tree_kind.detach: swap in an empty root (none for TREE_DETACH_FINAL, or
 * when TREE_DETACH_GC finds no memory for it) and park the old tree in `g`. */
static int csb_detach(PyObject *self, garbage_t *g, enum tree_detach_mode mode)
{
    CSBTreeObject *t = (CSBTreeObject *)self;
    if (t->root == NULL)
        return 0;
    csb_node *fresh = mode == TREE_DETACH_FINAL ? NULL : csb_node_new(t->order, 1);
    if (fresh == NULL && mode == TREE_DETACH_CLEAR) {
        PyErr_NoMemory();
        return -1;
    }
    csb_node *old = t->root;
    t->root = fresh;
    t->base.len = 0;
    csb_node_free(old, g);
    return 0;
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

/* tree_kind.enter / leave: the guard for calls without a key. */
static int csb_enter_any(PyObject *self) { return csb_begin((CSBTreeObject *)self, NULL); }
static void csb_leave_any(PyObject *self) { csb_leave((CSBTreeObject *)self); }

/* csb_put under the guard; dropped references are released after it. */
static int csb_put_guarded(CSBTreeObject *t, PyObject *key, PyObject *val, int replace, PyObject **old)
{
    garbage_t g;
    *old = NULL;
    if (csb_begin(t, key) < 0)
        return -1;
    garbage_init(&g);
    int rc = csb_put(t, key, val, replace, old, &g);
    csb_leave(t);
    garbage_release(&g);
    return rc;
}

PyDoc_STRVAR(CSBTree_insert_doc,
"insert(key, value) -> previous value or None\n\n"
"Store value under key, replacing any existing value (the originally stored\n"
"key object is kept). Returns the previous value, or None if the key was new.\n"
"Raises TypeError for keys that cannot be ordered against the stored keys.");

/* tree_kind.insert: replaces the value of an existing key. */
static PyObject *csb_insert(PyObject *self, PyObject *key, PyObject *val)
{
    PyObject *old;
    return csb_put_guarded((CSBTreeObject *)self, key, val, 1, &old) < 0 ? NULL : old;
}

PyDoc_STRVAR(CSBTree_get_doc,
"get(key) -> value or None\n\nThe value stored under key, or None if absent.");

/* tree_kind.get_ref. */
static PyObject *csb_get_ref(PyObject *self, PyObject *key)
{
    CSBTreeObject *t = (CSBTreeObject *)self;
    PyObject *val = NULL;
    if (csb_begin(t, key) < 0)
        return NULL;
    int r = csb_lookup(t, key, &val);
    if (r > 0)
        Py_INCREF(val);
    csb_leave(t);
    return r > 0 ? val : NULL;
}

PyDoc_STRVAR(CSBTree_get_default_doc,
"get_default(key, default) -> value\n\nThe value stored under key, or default if absent.");

static PyObject *CSBTree_get_default(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!tree_check_nargs("get_default", nargs, 2, 2))
        return NULL;
    return tree_value_or(csb_get_ref(self, args[0]), args[1]);
}

PyDoc_STRVAR(CSBTree_setdefault_doc,
"setdefault(key, value) -> value\n\n"
"The existing value for key if present; otherwise store value and return it.");

static PyObject *CSBTree_setdefault(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *old;
    if (!tree_check_nargs("setdefault", nargs, 2, 2))
        return NULL;
    if (csb_put_guarded((CSBTreeObject *)self, args[0], args[1], 0, &old) < 0)
        return NULL;
    return old ? old : Py_NewRef(args[1]);
}

PyDoc_STRVAR(CSBTree_remove_doc,
"remove(key) -> removed value or None\n\nRemove key; returns its value, or None if absent.");

/* tree_kind.remove. */
static int csb_remove_key(PyObject *self, PyObject *key, PyObject **old)
{
    CSBTreeObject *t = (CSBTreeObject *)self;
    garbage_t g;
    *old = NULL;
    if (csb_begin(t, key) < 0)
        return -1;
    garbage_init(&g);
    int r = csb_remove(t, key, old, &g);
    csb_leave(t);
    garbage_release(&g);
    return r;
}

PyDoc_STRVAR(CSBTree_update_doc,
"update(pairs) -> None\n\n"
"Insert every (key, value) pair of an iterable, replacing existing values.\n"
"Each item must be indexable with item[0] and item[1]; a dict is iterated by\n"
"its keys, so pass d.items().");

static PyObject *CSBTree_update(PyObject *self, PyObject *pairs)
{
    PyObject *it = PyObject_GetIter(pairs), *item;
    if (it == NULL)
        return NULL;
    for (Py_ssize_t n = 0; (item = PyIter_Next(it)) != NULL; n++) {
        PyObject *k = PySequence_GetItem(item, 0);
        PyObject *v = k ? PySequence_GetItem(item, 1) : NULL;
        PyObject *old = NULL;
        if (!v && (PyErr_ExceptionMatches(PyExc_IndexError) ||
                   PyErr_ExceptionMatches(PyExc_TypeError))) {
            /* dict.update's wording: say which item and what is expected */
            int short_item = PyErr_ExceptionMatches(PyExc_IndexError);
            PyErr_Clear();
            PyErr_Format(short_item ? PyExc_ValueError : PyExc_TypeError,
                         "CSBTree.update expects an iterable of (key, value) pairs; item #%zd "
                         "is %.200R (%s), not a pair (to insert a dict pass d.items())",
                         n, item, short_item ? "too short" : "not indexable");
        }
        Py_DECREF(item);
        int rc = v ? csb_put_guarded((CSBTreeObject *)self, k, v, 1, &old) : -1;
        Py_XDECREF(k);
        Py_XDECREF(v);
        Py_XDECREF(old);
        if (rc < 0) {
            Py_DECREF(it);
            return NULL;
        }
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(CSBTree_is_empty_doc, "is_empty() -> bool\n\nTrue when the tree holds no keys.");

PyDoc_STRVAR(CSBTree_clear_doc, "clear() -> None\n\nRemove every key.");

PyDoc_STRVAR(CSBTree_range_doc,
"range(start, end) -> list\n\n"
"(key, value) tuples with start <= key < end, in key order (half-open;\n"
"start >= end gives []).");

/* tree_kind.snapshot_range. Comparisons run Python code; the guard keeps the
 * structure fixed meanwhile. */
static int csb_snapshot_range(PyObject *self, PyObject *start, PyObject *end, snap_t *s)
{
    csb_path p;
    int found;
    int i = csb_find((CSBTreeObject *)self, start, &p, &found);
    if (i < 0)
        return -1;
    for (csb_node *nd = p.node[p.depth]; nd; nd = nd->next, i = 0) {
        for (; i < nd->n; i++) {
            int r = snap_push_below(s, nd->keys[i], nd->vals[i], end);
            if (r <= 0)
                return r;
        }
    }
    return 0;
}

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
    TreeObject base;           /* base.len: entries; written under `lock` */
    skl_node *head;            /* sentinel with SKL_MAX_LEVEL pointers; owned */
    int level;                 /* highest level in use, >= 1 */
    uint64_t rng;              /* xorshift64 state for node levels; under `lock` */
    kvpy_fork_node fork;       /* its lock serialises every operation (leaf lock);
                                  its holder; fork() safety (forksafe.c) */
} SkipListObject;

/*
 * Takes the list's lock. Waits with the GIL released when contended.
 * Returns 0, or -1 with RuntimeError if the calling thread already holds it
 * (a comparison re-entered the list).
 */
static int skl_lock(SkipListObject *s)
{
    if (s->fork.busy && s->fork.owner == PyThread_get_thread_ident()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "SkipList re-entered from inside one of its own operations "
                        "(e.g. from a key's comparison method)");
        return -1;
    }
    kvpy_fork_lock(&s->fork);
    return 0;
}

static void skl_unlock(SkipListObject *s)
{
    kvpy_fork_unlock(&s->fork);
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
    s->base.kind = &tree_kinds[TREE_SKL];
    s->head = PyMem_Calloc(1, sizeof(skl_node) + SKL_MAX_LEVEL * sizeof(skl_node *));
    if (s->head == NULL) {
        Py_DECREF(s);
        return PyErr_NoMemory();
    }
    /* in memory, nothing to re-home in a forked child; its comparisons are
     * Python code, which a fork waits for only briefly (the list is
     * consistent whenever they run) */
    s->fork.bounded_wait = 1;
    if (kvpy_fork_track(&s->fork, (PyObject *)s, NULL) < 0) {
        Py_DECREF(s);
        return NULL;
    }
    s->head->level = SKL_MAX_LEVEL;
    s->level = 1;
    s->rng = 0x9E3779B97F4A7C15ULL ^ (uint64_t)(uintptr_t)s;
    if (s->rng == 0)
        s->rng = 1;
    return (PyObject *)s;
}

static int SkipList_traverse(PyObject *self, visitproc visit, void *arg)
{
    SkipListObject *s = (SkipListObject *)self;
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
    s->base.len = 0;
    while (x) {
        skl_node *nx = x->fwd[0];
        garbage_add(g, x->key);
        garbage_add(g, x->val);
        PyMem_Free(x);
        x = nx;
    }
}

/* tree_kind.detach: unlink every node (the lock is held for
 * TREE_DETACH_CLEAR; otherwise the list is unreachable, no thread can be
 * inside an operation); TREE_DETACH_FINAL also frees the sentinel and lock. */
static int skl_detach(PyObject *self, garbage_t *g, enum tree_detach_mode mode)
{
    SkipListObject *s = (SkipListObject *)self;
    skl_detach_all(s, g);
    if (mode == TREE_DETACH_FINAL) {
        PyMem_Free(s->head);
        s->head = NULL;
        kvpy_fork_untrack(&s->fork);
    }
    return 0;
}

/* tree_kind.enter / leave. */
static int skl_enter(PyObject *self) { return skl_lock((SkipListObject *)self); }
static void skl_leave(PyObject *self) { skl_unlock((SkipListObject *)self); }

/*
 * tree_kind.insert: if the key exists, leave the stored value and return a
 * new reference to it; otherwise store and return NULL with no exception.
 * NULL with an exception on error.
 */
static PyObject *skl_insert(PyObject *self, PyObject *key, PyObject *val)
{
    SkipListObject *s = (SkipListObject *)self;
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
    s->base.len++;
out:
    skl_unlock(s);
    return ret;
}

/* tree_kind.get_ref. */
static PyObject *skl_get_ref(PyObject *self, PyObject *key)
{
    SkipListObject *s = (SkipListObject *)self;
    if (tree_check_key(key) < 0 || skl_lock(s) < 0)
        return NULL;
    skl_node *nd = skl_lookup(s, key);
    PyObject *v = nd ? nd->val : NULL;
    Py_XINCREF(v);
    skl_unlock(s);
    return v;
}

/* tree_kind.remove. */
static int skl_remove(PyObject *self, PyObject *key, PyObject **old)
{
    SkipListObject *s = (SkipListObject *)self;
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
        s->base.len--;
    }
    skl_unlock(s);
    if (nd) {
        *old = nd->val;   /* reference handed to the caller */
        Py_DECREF(nd->key); /* after unlock: may run a finalizer */
        PyMem_Free(nd);
    }
    return r;
}

PyDoc_STRVAR(SkipList_insert_doc,
"insert(key, value) -> existing value or None\n\n"
"If key is already present, leave its stored value unchanged and return it;\n"
"otherwise store value and return None. s[k] = v behaves the same (it does\n"
"not replace). Thread-safe.");

PyDoc_STRVAR(SkipList_get_doc,
"get(key) -> value or None\n\nThe value stored under key, or None. Thread-safe.");

PyDoc_STRVAR(SkipList_remove_doc,
"remove(key) -> removed value or None\n\nRemove key; returns its value or None. Thread-safe.");

PyDoc_STRVAR(SkipList_is_empty_doc, "is_empty() -> bool\n\nTrue when the list holds no keys.");

PyDoc_STRVAR(SkipList_clear_doc, "clear() -> None\n\nRemove every key. Thread-safe.");

/* tree_kind.snapshot. Under the lock. */
static int skl_snapshot(PyObject *self, snap_t *sn)
{
    for (skl_node *x = ((SkipListObject *)self)->head->fwd[0]; x; x = x->fwd[0])
        if (snap_push(sn, x->key, x->val) < 0)
            return -1;
    return 0;
}

PyDoc_STRVAR(SkipList_range_doc,
"range(start, end) -> list\n\n"
"(key, value) tuples with start <= key < end, in key order (half-open;\n"
"start >= end gives []). Thread-safe; one consistent snapshot.");

/* tree_kind.snapshot_range. Under the lock. */
static int skl_snapshot_range(PyObject *self, PyObject *start, PyObject *end, snap_t *sn)
{
    skl_node *update[SKL_MAX_LEVEL];
    if (skl_find((SkipListObject *)self, start, update) < 0)
        return -1;
    for (skl_node *x = update[0]->fwd[0]; x; x = x->fwd[0]) {
        int r = snap_push_below(sn, x->key, x->val, end);
        if (r <= 0)
            return r;
    }
    return 0;
}

PyDoc_STRVAR(SkipList_doc,
"SkipList()\n\n"
"In-memory ordered map of Python objects (a skip list, Pugh 1990). Keys are\n"
"ordered with Python's `<`. insert(k, v) and s[k] = v keep the existing value\n"
"when k is present (and return it); iteration yields (key, value) tuples from\n"
"a snapshot; keys()/values()/items()/range() return lists. s[k] raises\n"
"KeyError('Key not found'). Safe for concurrent use from several Python\n"
"threads: each operation runs under a per-list mutex, waited on with the GIL\n"
"released. Not picklable.");

/* ====================================================================== */
/* 4. The Python surface both containers share                             */
/* ====================================================================== */

static PyObject *tree_insert(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!tree_check_nargs("insert", nargs, 2, 2))
        return NULL;
    return tree_value_or(tree_kind_of(self)->insert(self, args[0], args[1]), Py_None);
}

static PyObject *tree_get(PyObject *self, PyObject *key)
{
    return tree_value_or(tree_kind_of(self)->get_ref(self, key), Py_None);
}

static PyObject *tree_remove(PyObject *self, PyObject *key)
{
    PyObject *old = NULL;
    int r = tree_kind_of(self)->remove(self, key, &old);
    return tree_removed_value(r, old);
}

static PyObject *tree_is_empty(PyObject *self, PyObject *unused)
{
    return PyBool_FromLong(((TreeObject *)self)->len == 0);
}

static PyObject *tree_clear(PyObject *self, PyObject *unused)
{
    const tree_kind *k = tree_kind_of(self);
    garbage_t g;
    garbage_init(&g);
    if (k->enter(self) < 0)
        return NULL;
    /* The parked references are released after leave(): a finalizer they
     * run may use the container, which is consistent (empty) by then. */
    int rc = k->detach(self, &g, TREE_DETACH_CLEAR);
    k->leave(self);
    garbage_release(&g);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* keys() / values() / items() / iter(): a list built from a snapshot. */
static PyObject *tree_list(PyObject *self, enum snap_kind kind)
{
    const tree_kind *k = tree_kind_of(self);
    snap_t s = {0};
    if (k->enter(self) < 0)
        return NULL;
    int rc = k->snapshot(self, &s);
    k->leave(self);
    return snap_finish(&s, rc, kind);
}

static PyObject *tree_keys(PyObject *self, PyObject *u) { return tree_list(self, SNAP_KEYS); }
static PyObject *tree_values(PyObject *self, PyObject *u) { return tree_list(self, SNAP_VALUES); }
static PyObject *tree_items(PyObject *self, PyObject *u) { return tree_list(self, SNAP_ITEMS); }

static PyObject *tree_range(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    const tree_kind *k = tree_kind_of(self);
    snap_t s = {0};
    if (!tree_check_nargs("range", nargs, 2, 2))
        return NULL;
    if (tree_check_key(args[0]) < 0 || tree_check_key(args[1]) < 0 || k->enter(self) < 0)
        return NULL;
    int rc = k->snapshot_range(self, args[0], args[1], &s);
    k->leave(self);
    return snap_finish(&s, rc, SNAP_ITEMS);
}

static PyObject *tree_reduce(PyObject *self, PyObject *unused)
{
    PyErr_Format(PyExc_TypeError, "cannot pickle '%s' object", Py_TYPE(self)->tp_name);
    return NULL;
}

static PyObject *tree_iter(PyObject *self) { return tree_iter_list(tree_list(self, SNAP_ITEMS)); }

static Py_ssize_t tree_len(PyObject *self) { return ((TreeObject *)self)->len; }

static int tree_contains(PyObject *self, PyObject *key)
{
    return tree_found(tree_kind_of(self)->get_ref(self, key));
}

static PyObject *tree_subscript(PyObject *self, PyObject *key)
{
    const tree_kind *k = tree_kind_of(self);
    return tree_value_or_keyerror(k->get_ref(self, key), k->missing);
}

static int tree_ass_subscript(PyObject *self, PyObject *key, PyObject *val)
{
    const tree_kind *k = tree_kind_of(self);
    if (val) {
        PyObject *r = k->insert(self, key, val);
        if (r == NULL)
            return PyErr_Occurred() ? -1 : 0;
        Py_DECREF(r);
        return 0;
    }
    PyObject *old = NULL;
    int r = k->remove(self, key, &old);
    return tree_del_result(r, old, k->missing);
}

static PyObject *tree_repr(PyObject *self)
{
    return PyUnicode_FromFormat("%s(len=%zd)", tree_kind_of(self)->name, ((TreeObject *)self)->len);
}

static int tree_tp_clear(PyObject *self)
{
    /* Only the GC calls this, when the container is unreachable. */
    garbage_t g;
    garbage_init(&g);
    tree_kind_of(self)->detach(self, &g, TREE_DETACH_GC);
    garbage_release(&g);
    return 0;
}

static void tree_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    garbage_t g;
    garbage_init(&g);
    tree_kind_of(self)->detach(self, &g, TREE_DETACH_FINAL);
    garbage_release(&g);
    Py_TYPE(self)->tp_free(self);
}

static PySequenceMethods tree_as_sequence = {
    .sq_contains = tree_contains,
};

static PyMappingMethods tree_as_mapping = {
    .mp_length = tree_len,
    .mp_subscript = tree_subscript,
    .mp_ass_subscript = tree_ass_subscript,
};

static const tree_kind tree_kinds[TREE_KINDS] = {
    [TREE_CSB] = {
        .name = "CSBTree", .missing = "Key not found in CSBTree",
        .insert = csb_insert, .get_ref = csb_get_ref, .remove = csb_remove_key,
        .enter = csb_enter_any, .leave = csb_leave_any,
        .snapshot = csb_snapshot, .snapshot_range = csb_snapshot_range, .detach = csb_detach,
    },
    [TREE_SKL] = {
        .name = "SkipList", .missing = "Key not found",
        .insert = skl_insert, .get_ref = skl_get_ref, .remove = skl_remove,
        .enter = skl_enter, .leave = skl_leave,
        .snapshot = skl_snapshot, .snapshot_range = skl_snapshot_range, .detach = skl_detach,
    },
};

PyDoc_STRVAR(tree_keys_doc, "keys() -> list\n\nAll keys in ascending order (a new list).");
PyDoc_STRVAR(tree_values_doc, "values() -> list\n\nAll values in key order (a new list).");
PyDoc_STRVAR(tree_items_doc, "items() -> list\n\nAll (key, value) tuples in key order (a new list).");
PyDoc_STRVAR(tree_reduce_doc, "Not picklable: raises TypeError.");

#define TREE_FASTCALL(f) ((PyCFunction)(void (*)(void))(f))

/* Every method of either type in table order: the implementation, its
 * flags, and per kind the docstring (NULL: that type has no such method). */
static const struct {
    const char *name;
    PyCFunction meth;
    int flags;
    const char *doc[TREE_KINDS];
} tree_method_rows[] = {
    {"insert", TREE_FASTCALL(tree_insert), METH_FASTCALL, {CSBTree_insert_doc, SkipList_insert_doc}},
    {"get", tree_get, METH_O, {CSBTree_get_doc, SkipList_get_doc}},
    {"get_default", TREE_FASTCALL(CSBTree_get_default), METH_FASTCALL, {CSBTree_get_default_doc, NULL}},
    {"setdefault", TREE_FASTCALL(CSBTree_setdefault), METH_FASTCALL, {CSBTree_setdefault_doc, NULL}},
    {"remove", tree_remove, METH_O, {CSBTree_remove_doc, SkipList_remove_doc}},
    {"update", CSBTree_update, METH_O, {CSBTree_update_doc, NULL}},
    {"is_empty", tree_is_empty, METH_NOARGS, {CSBTree_is_empty_doc, SkipList_is_empty_doc}},
    {"clear", tree_clear, METH_NOARGS, {CSBTree_clear_doc, SkipList_clear_doc}},
    {"keys", tree_keys, METH_NOARGS, {tree_keys_doc, tree_keys_doc}},
    {"values", tree_values, METH_NOARGS, {tree_values_doc, tree_values_doc}},
    {"items", tree_items, METH_NOARGS, {tree_items_doc, tree_items_doc}},
    {"range", TREE_FASTCALL(tree_range), METH_FASTCALL, {CSBTree_range_doc, SkipList_range_doc}},
    {"__reduce__", tree_reduce, METH_NOARGS, {tree_reduce_doc, tree_reduce_doc}},
};

#define TREE_METHOD_ROWS (sizeof tree_method_rows / sizeof tree_method_rows[0])

static PyMethodDef tree_methods[TREE_KINDS][TREE_METHOD_ROWS + 1]; /* NULL-terminated */
/* The slots that differ between the types; tree_type_fill adds the rest. */
static PyTypeObject tree_types[TREE_KINDS] = {
    [TREE_CSB] = {PyVarObject_HEAD_INIT(NULL, 0) .tp_name = "kohakuvault._kvault.CSBTree",
                  .tp_basicsize = sizeof(CSBTreeObject), .tp_doc = CSBTree_doc,
                  .tp_new = CSBTree_new, .tp_traverse = CSBTree_traverse},
    [TREE_SKL] = {PyVarObject_HEAD_INIT(NULL, 0) .tp_name = "kohakuvault._kvault.SkipList",
                  .tp_basicsize = sizeof(SkipListObject), .tp_doc = SkipList_doc,
                  .tp_new = SkipList_new, .tp_traverse = SkipList_traverse},
};

/* Fills the shared slots of tree_types[which] and its method table (from
 * tree_method_rows). Runs once, before PyType_Ready. */
static void tree_type_fill(int which)
{
    PyTypeObject *tp = &tree_types[which];
    PyMethodDef *m = tree_methods[which];
    for (size_t i = 0; i < TREE_METHOD_ROWS; i++)
        if (tree_method_rows[i].doc[which])
            *m++ = (PyMethodDef){tree_method_rows[i].name, tree_method_rows[i].meth,
                                 tree_method_rows[i].flags, tree_method_rows[i].doc[which]};
    tp->tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC;
    tp->tp_dealloc = tree_dealloc;
    tp->tp_clear = tree_tp_clear;
    tp->tp_repr = tree_repr;
    tp->tp_iter = tree_iter;
    tp->tp_methods = tree_methods[which];
    tp->tp_as_sequence = &tree_as_sequence;
    tp->tp_as_mapping = &tree_as_mapping;
}

/* ====================================================================== */
/* Registration                                                            */
/* ====================================================================== */

int kvpy_init_tree(PyObject *module)
{
    for (int which = 0; which < TREE_KINDS; which++) {
        if (!(tree_types[which].tp_flags & Py_TPFLAGS_READY))
            tree_type_fill(which);
        if (PyModule_AddType(module, &tree_types[which]) < 0)
            return -1;
    }
    return 0;
}
