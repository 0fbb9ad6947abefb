/*
 * forksafe.c - fork() safety of every native object that owns a lock and an
 * engine handle (KVault, TextVault, VectorKVault, ColumnVault, SkipList;
 * CSBTree's lock-free guard uses kvpy_fork_generation):
 * one live list, one set of os.register_at_fork handlers (declarations and
 * the per-object contract in kvpy.h; behaviour: docs/shared-mode.md,
 * "Failure behaviour").
 *
 * A child of fork() has one thread: a lock another thread of the parent
 * held at the fork would stay held forever, and a handle in the middle of
 * a call would be half changed. So the parent's forking thread takes the
 * lock of every live object before the fork (os.register_at_fork "before"),
 * waiting with the GIL released for calls in progress to finish, and both
 * processes release what it took after the fork.
 *
 * A call on an SQLite connection of this process is always waited for:
 * SQLite keeps per-process lock state of every file (shared by all
 * connections of the process), so a child forked while a connection of the
 * parent was inside a transaction would inherit locks its kernel does not
 * hold and its own connection would find the file busy for good. Such calls
 * end by themselves (a busy file: SQLite's busy timeout). A node with
 * `bounded_wait` (an attached KVault, whose call may wait for the very
 * process being forked: subprocess runs these hooks when it starts a
 * kvault-writer with a preexec_fn; a SkipList, whose comparisons are
 * arbitrary Python code) is waited for at most FORK_WAIT_US in all; a lock
 * still held then is replaced in the child (the old one is leaked: its
 * holder does not exist there). A lock the forking thread holds itself (a
 * fork from inside one of the object's calls, e.g. a put_file reader
 * starting a process) is left alone: both processes return into that call,
 * which releases it.
 *
 * The child leaves the parent's SQLite connections alone (a connection must
 * not be used across fork, https://sqlite.org/howtocorrupt.html section
 * 2.6; closing it could checkpoint or remove the WAL under the parent):
 * every node is marked `forked`, and the object's first call opens its own
 * handle (kvpy_fork_rehome) and leaks the inherited one; closing or
 * dropping an object that is still `forked` leaks its handle too.
 */
#include "kvpy.h"

#include <stdint.h>
#include <time.h>

#define FORK_WAIT_US 200000

unsigned long kvpy_fork_generation;

static kvpy_fork_node *g_live;        /* newest live node; GIL held */
static PyThread_type_lock g_forking;  /* one fork at a time holds the arrays below */
static kvpy_fork_node **g_fork_held;  /* every live node at the fork in progress */
static unsigned char *g_fork_locked;  /* g_fork_held[i]'s lock was taken */
static Py_ssize_t g_fork_n;

#define FORK_SELF 2   /* g_fork_locked: the forking thread holds the lock */

int kvpy_fork_track(kvpy_fork_node *n, PyObject *obj, int (*rehome)(PyObject *obj))
{
    n->lock = PyThread_allocate_lock();
    if (!n->lock) {
        PyErr_NoMemory();
        return -1;
    }
    n->obj = obj;
    n->rehome = rehome;
    n->prev = NULL;
    n->next = g_live;
    if (g_live)
        g_live->prev = n;
    g_live = n;
    return 0;
}

void kvpy_fork_untrack(kvpy_fork_node *n)
{
    kvpy_fork_node *prev = n->prev, *next = n->next;
    if (prev)
        prev->next = next;
    else if (g_live == n)
        g_live = next;
    if (next)
        next->prev = prev;
    n->prev = n->next = NULL;
    if (n->lock) {
        PyThread_free_lock(n->lock);
        n->lock = NULL;
    }
}

void kvpy_fork_lock(kvpy_fork_node *n)
{
    if (!PyThread_acquire_lock(n->lock, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(n->lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
    n->busy = 1;
    n->owner = PyThread_get_thread_ident();
}

void kvpy_fork_unlock(kvpy_fork_node *n)
{
    n->busy = 0;
    n->owner = 0;
    PyThread_release_lock(n->lock);
}

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Take node n's lock for the fork: 1 taken, 0 not (bounded wait ran out).
 * *deadline is the end of the bounded waits of this fork (0: not started). */
static int fork_take(kvpy_fork_node *n, uint64_t *deadline)
{
    int got = PyThread_acquire_lock(n->lock, NOWAIT_LOCK);
    if (got)
        return 1;
    if (!n->bounded_wait) {
        Py_BEGIN_ALLOW_THREADS
        got = PyThread_acquire_lock(n->lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
        return got;
    }
    uint64_t now = mono_us();
    if (!*deadline)
        *deadline = now + FORK_WAIT_US;
    if (now >= *deadline)
        return 0;
    Py_BEGIN_ALLOW_THREADS
    got = PyThread_acquire_lock_timed(n->lock, (PY_TIMEOUT_T)(*deadline - now), 0) ==
          PY_LOCK_ACQUIRED;
    Py_END_ALLOW_THREADS
    return got;
}

/* Hold (reference, then lock) the nodes in front of `seen` on the live list:
 * those made since the previous pass (new nodes go to the front; `seen` is
 * held, so still on the list). 1 when there were some, 0 when none, -1 when
 * out of memory (the fork goes ahead with what is held). */
static int fork_hold_new(kvpy_fork_node *seen, uint64_t *deadline)
{
    Py_ssize_t n = 0, first = g_fork_n;
    for (kvpy_fork_node *o = g_live; o && o != seen; o = o->next)
        n++;
    if (!n)
        return 0;
    kvpy_fork_node **held = PyMem_Realloc(g_fork_held, (size_t)(first + n) * sizeof *held);
    if (held)
        g_fork_held = held;
    unsigned char *locked = held ? PyMem_Realloc(g_fork_locked, (size_t)(first + n)) : NULL;
    if (!locked)
        return -1;
    g_fork_locked = locked;
    for (kvpy_fork_node *o = g_live; o && o != seen; o = o->next) {
        Py_INCREF(o->obj);   /* alive (and on the list) until after the fork */
        g_fork_locked[g_fork_n] = 0;
        g_fork_held[g_fork_n++] = o;
    }
    unsigned long me = PyThread_get_thread_ident();
    for (Py_ssize_t i = first; i < g_fork_n; i++) {
        kvpy_fork_node *o = g_fork_held[i];
        if (o->busy && o->owner == me) {
            /* forked from inside a call of this object: the child returns
             * into that call, which keeps holding the lock there too */
            g_fork_locked[i] = FORK_SELF;
            continue;
        }
        g_fork_locked[i] = (unsigned char)fork_take(o, deadline);
    }
    return 1;
}

static PyObject *fork_before(PyObject *unused, PyObject *noargs)
{
    /* two threads forking at once: the second waits for the first's after
     * hook (fork_release) */
    if (!PyThread_acquire_lock(g_forking, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(g_forking, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
    g_fork_held = NULL;
    g_fork_locked = NULL;
    g_fork_n = 0;
    /* taking a lock may wait with the GIL released, while other threads
     * make objects and call them: hold those too, until none is new */
    uint64_t deadline = 0;
    kvpy_fork_node *seen = NULL;
    for (;;) {
        kvpy_fork_node *head = g_live;   /* the GIL is held until a lock waits */
        if (fork_hold_new(seen, &deadline) != 1)
            break;
        seen = head;
    }
    Py_RETURN_NONE;
}

/* Release what fork_before took; in the child, mark the nodes forked and
 * give those whose lock another thread held a new one. */
static void fork_release(int child)
{
    for (Py_ssize_t i = 0; i < g_fork_n; i++) {
        kvpy_fork_node *o = g_fork_held[i];
        if (child)
            o->forked = 1;
        if (g_fork_locked[i] == FORK_SELF) {
            /* held by the forking thread's own call: it releases it */
        } else if (g_fork_locked[i]) {
            PyThread_release_lock(o->lock);
        } else if (child) {
            PyThread_type_lock fresh = PyThread_allocate_lock();
            if (fresh)
                o->lock = fresh;
            o->busy = 0;
            o->owner = 0;
        }
    }
    /* the references last: a drop may deallocate (untrack) a node */
    kvpy_fork_node **held = g_fork_held;
    Py_ssize_t n = g_fork_n;
    PyMem_Free(g_fork_locked);
    g_fork_held = NULL;
    g_fork_locked = NULL;
    g_fork_n = 0;
    PyThread_release_lock(g_forking);
    for (Py_ssize_t i = 0; i < n; i++)
        Py_DECREF(held[i]->obj);
    PyMem_Free(held);
}

static PyObject *fork_after_parent(PyObject *unused, PyObject *noargs)
{
    fork_release(0);
    Py_RETURN_NONE;
}

static PyObject *fork_after_child(PyObject *unused, PyObject *noargs)
{
    kvpy_fork_generation++;
    fork_release(1);
    Py_RETURN_NONE;
}

static PyMethodDef fork_hooks[] = {
    {"_fork_before", fork_before, METH_NOARGS, NULL},
    {"_fork_after_parent", fork_after_parent, METH_NOARGS, NULL},
    {"_fork_after_child", fork_after_child, METH_NOARGS, NULL},
};

/* os.register_at_fork(before=..., after_in_parent=..., after_in_child=...) */
int kvpy_init_fork(PyObject *module)
{
    if (g_forking)
        return 0;   /* the module initialised again (a subinterpreter): one set of hooks */
    if (!(g_forking = PyThread_allocate_lock())) {
        PyErr_NoMemory();
        return -1;
    }
    PyObject *os = PyImport_ImportModule("os"), *reg = NULL, *args = NULL, *kw = NULL, *r = NULL;
    PyObject *fns[3] = {NULL, NULL, NULL};
    static const char *names[3] = {"before", "after_in_parent", "after_in_child"};
    int rc = -1;
    if (!os || !(reg = PyObject_GetAttrString(os, "register_at_fork")) ||
        !(args = PyTuple_New(0)) || !(kw = PyDict_New()))
        goto out;
    for (int i = 0; i < 3; i++)
        if (!(fns[i] = PyCFunction_New(&fork_hooks[i], NULL)) ||
            PyDict_SetItemString(kw, names[i], fns[i]) < 0)
            goto out;
    r = PyObject_Call(reg, args, kw);
    rc = r ? 0 : -1;
out:
    for (int i = 0; i < 3; i++)
        Py_XDECREF(fns[i]);
    Py_XDECREF(r);
    Py_XDECREF(kw);
    Py_XDECREF(args);
    Py_XDECREF(reg);
    Py_XDECREF(os);
    return rc;
}
