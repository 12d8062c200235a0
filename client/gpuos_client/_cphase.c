/*
 * gpuos_client._cphase: the hint hot path in C.
 *
 * Why C: a phase enter+exit in the best pure Python costs ~0.9-1.1 us on the
 * development machine (a context-variable get/set pair, two tuples, a dict
 * insert/pop, a list append, the clock), which is 1 % of a 100 us step of a
 * GIL-bound program before anything is sent.  The same steps through the C API
 * cost a few hundred nanoseconds.  Everything that is not the hot path (the
 * sender, packing, ZeroMQ, device timing, validation of a name seen for the
 * first time) stays in Python; this module only calls back into it on the
 * slow paths.  _phase_py.py is the pure-Python twin with the same behaviour,
 * used when this extension is not built (or GPUOS_HINT_PURE=1).
 *
 * State lives in one Core object per process (the Python Runtime owns it and
 * installs it with set_core()).  Events are plain tuples appended to
 * core.buf, a list the sender swaps out with take().
 *
 * Edge counters: at a phase edge the thread's CPU clock, its getrusage(RUSAGE_THREAD) and the
 * process CPU clock are read, at most once per ru_min_ns per thread; an edge
 * that falls inside that window carries nil, and the daemon uses the last
 * reading it got from that thread, so it knows the exact bound (thread CPU at
 * the edge lies in [reading, reading + (t_edge - t_read)]).  Sending nil rather
 * than the reading again keeps the sender's packing cost down.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define KIND_BEGIN 1
#define KIND_END 2

typedef struct {
    PyObject_HEAD
    PyObject *buf;        /* list of event tuples */
    PyObject *open;       /* dict span_id -> begin event */
    PyObject *current;    /* contextvars.ContextVar holding the frame */
    PyObject *root;       /* the default (empty) frame */
    PyObject *on_slow;    /* callable(ev): buffer at its wake mark (wake the sender / drop) */
    PyObject *on_drop;    /* callable(reason: str) */
    PyObject *on_device;  /* callable(begin: bool, span_id: int) */
    PyObject *check_name; /* callable(name) -> name, raises ValueError */
    PyObject *check_attrs;/* callable(dict) -> dict | None, raises ValueError */
    PyObject *names;      /* dict: names already validated */
    unsigned long long next_id;
    Py_ssize_t wake_at;
    long max_depth;
    long long ru_min_ns;
    int disabled;
    int rusage;
    int device_ok;
} Core;

static Core *g_core = NULL;          /* the installed core (owned) */
static PyObject *s_ok, *s_error, *s_too_deep, *s_device;
static volatile long long g_fork_gen = 0;

/* Per-thread caches, invalidated in a forked child by the generation. */
static __thread long t_tid = 0;
static __thread long long t_tid_gen = -1;
static __thread PyObject *t_ru = NULL;   /* last reading (owned; one per live thread) */
static __thread long long t_ru_ns = 0;
static __thread long long t_ru_gen = -1;

static void after_fork_child(void) { g_fork_gen++; }

static inline long long mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline long get_tid(void) {
    if (t_tid_gen != g_fork_gen) {
        t_tid = (long)syscall(SYS_gettid);
        t_tid_gen = g_fork_gen;
    }
    return t_tid;
}

/* A new reading of this thread's counters at t (borrowed, owned by the thread cache), or
   Py_None when the thread's last reading is younger than ru_min_ns: the edge then carries
   nil and the daemon uses the last reading it got from this thread (the bound is the gap). */
static PyObject *edge_rusage(Core *c, long long t) {
    if (!c->rusage) return Py_None;
    if (t_ru_gen != g_fork_gen) {
        t_ru = NULL; /* the parent's reading: not ours (leaked in the child on purpose) */
        t_ru_gen = g_fork_gen;
    }
    if (t_ru != NULL && t - t_ru_ns < c->ru_min_ns) return Py_None;
    struct rusage r;
    struct timespec th, p;
    /* The thread's CPU from its own clock (exact: the scheduler's runtime sum); getrusage's
       utime+stime is tick samples scaled to it, off by 2-4 % on a 1 ms spin.  getrusage still
       gives the context switches and faults. */
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &th) != 0 || getrusage(RUSAGE_THREAD, &r) != 0 ||
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &p) != 0)
        return Py_None;
    long long tcpu = (long long)th.tv_sec * 1000000000LL + th.tv_nsec;
    long long pcpu = (long long)p.tv_sec * 1000000000LL + p.tv_nsec;
    PyObject *tup = Py_BuildValue("(LLLllll)", t, tcpu, pcpu, r.ru_nvcsw, r.ru_nivcsw, r.ru_minflt, r.ru_majflt);
    if (tup == NULL) {
        PyErr_Clear();
        return Py_None;
    }
    Py_XSETREF(t_ru, tup);
    t_ru_ns = t;
    return tup;
}

/* Append ev (steals nothing) or hand it to the slow path. 0 ok, -1 error set. */
static inline int push(Core *c, PyObject *ev) {
    if (PyList_GET_SIZE(c->buf) < c->wake_at) return PyList_Append(c->buf, ev);
    PyObject *r = PyObject_CallOneArg(c->on_slow, ev);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

/* ------------------------------------------------------------------ Core */

static int Core_traverse(Core *self, visitproc visit, void *arg) {
    Py_VISIT(self->buf);
    Py_VISIT(self->open);
    Py_VISIT(self->current);
    Py_VISIT(self->root);
    Py_VISIT(self->on_slow);
    Py_VISIT(self->on_drop);
    Py_VISIT(self->on_device);
    Py_VISIT(self->check_name);
    Py_VISIT(self->check_attrs);
    Py_VISIT(self->names);
    return 0;
}

static int Core_clear(Core *self) {
    Py_CLEAR(self->buf);
    Py_CLEAR(self->open);
    Py_CLEAR(self->current);
    Py_CLEAR(self->root);
    Py_CLEAR(self->on_slow);
    Py_CLEAR(self->on_drop);
    Py_CLEAR(self->on_device);
    Py_CLEAR(self->check_name);
    Py_CLEAR(self->check_attrs);
    Py_CLEAR(self->names);
    return 0;
}

static void Core_dealloc(Core *self) {
    PyObject_GC_UnTrack(self);
    Core_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Core_init(Core *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"current", "root", "on_slow", "on_drop", "on_device", "check_name",
                             "check_attrs", "max_depth", "ru_min_ns", "rusage", "disabled", NULL};
    PyObject *current, *root, *on_slow, *on_drop, *on_device, *check_name, *check_attrs;
    long max_depth = 64;
    long long ru_min_ns = 20000;
    int rusage = 1, disabled = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O!OOOOO|lLpp", kwlist, &PyContextVar_Type, &current,
                                     &PyTuple_Type, &root, &on_slow, &on_drop, &on_device, &check_name,
                                     &check_attrs, &max_depth, &ru_min_ns, &rusage, &disabled))
        return -1;
    Py_XSETREF(self->buf, PyList_New(0));
    Py_XSETREF(self->open, PyDict_New());
    Py_XSETREF(self->names, PyDict_New());
    if (!self->buf || !self->open || !self->names) return -1;
    Py_INCREF(current);
    Py_XSETREF(self->current, current);
    Py_INCREF(root);
    Py_XSETREF(self->root, root);
    Py_INCREF(on_slow);
    Py_XSETREF(self->on_slow, on_slow);
    Py_INCREF(on_drop);
    Py_XSETREF(self->on_drop, on_drop);
    Py_INCREF(on_device);
    Py_XSETREF(self->on_device, on_device);
    Py_INCREF(check_name);
    Py_XSETREF(self->check_name, check_name);
    Py_INCREF(check_attrs);
    Py_XSETREF(self->check_attrs, check_attrs);
    self->next_id = 0;
    self->wake_at = 0; /* the first event wakes (and starts) the sender */
    self->max_depth = max_depth;
    self->ru_min_ns = ru_min_ns;
    self->rusage = rusage;
    self->disabled = disabled;
    self->device_ok = 1;
    return 0;
}

static PyObject *Core_take(Core *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL) return NULL;
    PyObject *old = self->buf;
    self->buf = fresh;
    return old; /* the reference the core held */
}

static PyObject *Core_new_id(Core *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromUnsignedLongLong(++self->next_id);
}

static PyObject *Core_rusage_now(Core *self, PyObject *Py_UNUSED(ignored)) {
    t_ru = NULL; /* force a fresh reading (the old one stays referenced by the events that carry it) */
    PyObject *r = edge_rusage(self, mono_ns());
    Py_INCREF(r);
    return r;
}

static PyMethodDef Core_methods[] = {
    {"take", (PyCFunction)Core_take, METH_NOARGS, "Swap the event list for an empty one; return the old one."},
    {"new_id", (PyCFunction)Core_new_id, METH_NOARGS, "Allocate a span id."},
    {"rusage_now", (PyCFunction)Core_rusage_now, METH_NOARGS, "This thread's edge reading now (or None)."},
    {NULL, NULL, 0, NULL},
};

#include <structmember.h>
static PyMemberDef Core_members[] = {
    {"buf", T_OBJECT, offsetof(Core, buf), READONLY, "buffered events"},
    {"open", T_OBJECT, offsetof(Core, open), READONLY, "span_id -> begin event of open phases"},
    {"names", T_OBJECT, offsetof(Core, names), READONLY, "validated names"},
    {"wake_at", T_PYSSIZET, offsetof(Core, wake_at), 0, "len(buf) at which a push takes the slow path"},
    {"next_id", T_ULONGLONG, offsetof(Core, next_id), 0, "last span id handed out"},
    {"disabled", T_INT, offsetof(Core, disabled), 0, "1: every hint is a no-op"},
    {"rusage", T_INT, offsetof(Core, rusage), 0, "1: read counters at phase edges"},
    {"device_ok", T_INT, offsetof(Core, device_ok), 0, "0: device timing unusable, skip it"},
    {"ru_min_ns", T_LONGLONG, offsetof(Core, ru_min_ns), 0, "min ns between two readings per thread"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gpuos_client._cphase.Core",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The per-process hot-path state (event list, open phases, counters).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Core_init,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_traverse = (traverseproc)Core_traverse,
    .tp_clear = (inquiry)Core_clear,
    .tp_methods = Core_methods,
    .tp_members = Core_members,
};

/* ----------------------------------------------------------------- Phase */

typedef struct {
    PyObject_HEAD
    PyObject *name;
    PyObject *attrs; /* dict or None */
    int device;
} Phase;

static int Phase_traverse(Phase *self, visitproc visit, void *arg) {
    Py_VISIT(self->name);
    Py_VISIT(self->attrs);
    return 0;
}

static int Phase_clear(Phase *self) {
    Py_CLEAR(self->name);
    Py_CLEAR(self->attrs);
    return 0;
}

static void Phase_dealloc(Phase *self) {
    PyObject_GC_UnTrack(self);
    Phase_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *checked_name(PyObject *name) {
    Core *c = g_core;
    if (c != NULL && PyUnicode_CheckExact(name)) {
        PyObject *hit = PyDict_GetItemWithError(c->names, name);
        if (hit != NULL) {
            Py_INCREF(hit);
            return hit;
        }
        if (PyErr_Occurred()) return NULL;
    }
    if (c == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "gpuos_client core not installed");
        return NULL;
    }
    PyObject *ok = PyObject_CallOneArg(c->check_name, name);
    if (ok == NULL) return NULL;
    if (PyUnicode_CheckExact(ok) && PyDict_GET_SIZE(c->names) < 65536 && PyDict_SetItem(c->names, ok, ok) < 0) {
        Py_DECREF(ok);
        return NULL;
    }
    return ok;
}

static int Phase_init(Phase *self, PyObject *args, PyObject *kw) {
    if (PyTuple_GET_SIZE(args) != 1) {
        PyErr_SetString(PyExc_TypeError, "phase() takes exactly one positional argument (the name)");
        return -1;
    }
    PyObject *name = checked_name(PyTuple_GET_ITEM(args, 0));
    if (name == NULL) return -1;
    Py_XSETREF(self->name, name);
    int device = 0;
    PyObject *attrs = NULL;
    if (kw != NULL && PyDict_GET_SIZE(kw) > 0) {
        PyObject *dev = PyDict_GetItemWithError(kw, s_device); /* borrowed */
        if (dev == NULL && PyErr_Occurred()) return -1;
        if (dev != NULL) {
            device = PyObject_IsTrue(dev);
            if (device < 0) return -1;
            if (PyDict_GET_SIZE(kw) > 1) {
                attrs = PyDict_Copy(kw);
                if (attrs == NULL || PyDict_DelItem(attrs, s_device) < 0) {
                    Py_XDECREF(attrs);
                    return -1;
                }
            }
        } else {
            attrs = kw;
            Py_INCREF(attrs);
        }
    }
    if (attrs != NULL && g_core->disabled) { /* disabled: a phase costs what a no-op costs */
        Py_CLEAR(attrs);
    }
    if (attrs != NULL) {
        PyObject *ok = PyObject_CallOneArg(g_core->check_attrs, attrs);
        Py_DECREF(attrs);
        if (ok == NULL) return -1;
        Py_XSETREF(self->attrs, ok);
    } else {
        Py_INCREF(Py_None);
        Py_XSETREF(self->attrs, Py_None);
    }
    self->device = device;
    return 0;
}

static PyObject *Phase_enter(Phase *self, PyObject *Py_UNUSED(ignored)) {
    Core *c = g_core;
    Py_INCREF(self);
    if (c == NULL || c->disabled) return (PyObject *)self;
    PyObject *cur = NULL, *ev = NULL, *frame = NULL, *sid = NULL, *tid = NULL, *depth = NULL;
    if (PyContextVar_Get(c->current, c->root, &cur) < 0 || cur == NULL) goto error;
    long d = PyLong_AsLong(PyTuple_GET_ITEM(cur, 1));
    if (d >= c->max_depth) {
        Py_DECREF(cur);
        PyObject *r = PyObject_CallOneArg(c->on_drop, s_too_deep);
        if (r == NULL) goto error_noclean;
        Py_DECREF(r);
        return (PyObject *)self;
    }
    long long t = mono_ns();
    sid = PyLong_FromUnsignedLongLong(++c->next_id);
    tid = PyLong_FromLong(get_tid());
    depth = PyLong_FromLong(d + 1);
    if (!sid || !tid || !depth) goto error;
    PyObject *cls = PyTuple_GET_ITEM(cur, 2);
    ev = Py_BuildValue("(iLOOOOOOO)", KIND_BEGIN, t, tid, sid, PyTuple_GET_ITEM(cur, 0), self->name, cls,
                       self->attrs, edge_rusage(c, t));
    if (ev == NULL) goto error;
    if (PyDict_SetItem(c->open, sid, ev) < 0 || push(c, ev) < 0) goto error;
    frame = PyTuple_Pack(5, sid, depth, cls, cur, tid);
    if (frame == NULL) goto error;
    PyObject *token = PyContextVar_Set(c->current, frame);
    if (token == NULL) goto error;
    Py_DECREF(token);
    if (self->device && c->device_ok) {
        PyObject *r = PyObject_CallFunctionObjArgs(c->on_device, Py_True, sid, NULL);
        if (r == NULL) goto error;
        Py_DECREF(r);
    }
    Py_DECREF(frame);
    Py_DECREF(ev);
    Py_DECREF(cur);
    Py_DECREF(sid);
    Py_DECREF(tid);
    Py_DECREF(depth);
    return (PyObject *)self;
error:
    Py_XDECREF(frame);
    Py_XDECREF(ev);
    Py_XDECREF(cur);
    Py_XDECREF(sid);
    Py_XDECREF(tid);
    Py_XDECREF(depth);
error_noclean:
    /* Never raise into the program: count it and go on. */
    PyErr_Clear();
    return (PyObject *)self;
}

static PyObject *Phase_exit(Phase *self, PyObject *const *args, Py_ssize_t nargs) {
    Core *c = g_core;
    if (c == NULL) Py_RETURN_NONE;
    PyObject *cur = NULL;
    if (PyContextVar_Get(c->current, c->root, &cur) < 0 || cur == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *sid = PyTuple_GET_ITEM(cur, 0);
    int overflow = 0;
    if (PyLong_AsLongLongAndOverflow(sid, &overflow) == 0 && !overflow) { /* disabled, too deep, or another context */
        PyErr_Clear();
        Py_DECREF(cur);
        Py_RETURN_NONE;
    }
    PyObject *token = PyContextVar_Set(c->current, PyTuple_GET_ITEM(cur, 3));
    if (token == NULL) goto done;
    Py_DECREF(token);
    PyObject *begin = PyDict_GetItemWithError(c->open, sid);
    if (begin == NULL) goto done; /* opened before a fork, in the parent: the parent reports it */
    if (PyDict_DelItem(c->open, sid) < 0) goto done;
    long long t = mono_ns();
    int failed = nargs > 0 && args[0] != Py_None;
    PyObject *ev = Py_BuildValue("(iLOOOOO)", KIND_END, t, PyTuple_GET_ITEM(cur, 4), sid, failed ? s_error : s_ok,
                                 Py_None, edge_rusage(c, t));
    if (ev == NULL) goto done;
    int rc = push(c, ev);
    Py_DECREF(ev);
    if (rc < 0) goto done;
    if (self->device && c->device_ok) {
        PyObject *r = PyObject_CallFunctionObjArgs(c->on_device, Py_False, sid, NULL);
        Py_XDECREF(r);
    }
done:
    PyErr_Clear();
    Py_DECREF(cur);
    Py_RETURN_NONE;
}

static PyObject *Phase_get_name(Phase *self, void *closure) {
    Py_INCREF(self->name);
    return self->name;
}
static PyObject *Phase_get_attrs(Phase *self, void *closure) {
    Py_INCREF(self->attrs);
    return self->attrs;
}
static PyObject *Phase_get_device(Phase *self, void *closure) { return PyBool_FromLong(self->device); }

static PyGetSetDef Phase_getset[] = {
    {"name", (getter)Phase_get_name, NULL, "the phase name", NULL},
    {"attrs", (getter)Phase_get_attrs, NULL, "validated attrs (or None)", NULL},
    {"device", (getter)Phase_get_device, NULL, "record device-side timing", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Phase_methods[] = {
    {"__enter__", (PyCFunction)Phase_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))Phase_exit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PhaseType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gpuos_client._cphase.Phase",
    .tp_basicsize = sizeof(Phase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The C base of gpuos_client.phase.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Phase_init,
    .tp_dealloc = (destructor)Phase_dealloc,
    .tp_traverse = (traverseproc)Phase_traverse,
    .tp_clear = (inquiry)Phase_clear,
    .tp_methods = Phase_methods,
    .tp_getset = Phase_getset,
};

/* ---------------------------------------------------------------- module */

static PyObject *set_core(PyObject *mod, PyObject *core) {
    if (core != Py_None && !PyObject_TypeCheck(core, &CoreType)) {
        PyErr_SetString(PyExc_TypeError, "set_core() takes a Core or None");
        return NULL;
    }
    Core *old = g_core;
    if (core == Py_None) {
        g_core = NULL;
    } else {
        Py_INCREF(core);
        g_core = (Core *)core;
    }
    /* The old core is kept alive (leaked) on purpose: after fork() the parent's
       sender may still be described by it, and a Phase in flight may use it. */
    (void)old;
    Py_RETURN_NONE;
}

static PyObject *monotonic_ns_py(PyObject *mod, PyObject *Py_UNUSED(ignored)) { return PyLong_FromLongLong(mono_ns()); }

static PyObject *tid_py(PyObject *mod, PyObject *Py_UNUSED(ignored)) { return PyLong_FromLong(get_tid()); }

static PyMethodDef module_methods[] = {
    {"set_core", set_core, METH_O, "Install the process's Core (None: none)."},
    {"monotonic_ns", monotonic_ns_py, METH_NOARGS, "CLOCK_MONOTONIC in ns."},
    {"tid", tid_py, METH_NOARGS, "This thread's kernel tid (cached per thread, reset at fork)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_cphase", "The gpuos_client hot path in C.", -1,
                                       module_methods};

PyMODINIT_FUNC PyInit__cphase(void) {
    if (PyType_Ready(&CoreType) < 0 || PyType_Ready(&PhaseType) < 0) return NULL;
    s_ok = PyUnicode_InternFromString("ok");
    s_error = PyUnicode_InternFromString("error");
    s_too_deep = PyUnicode_InternFromString("too_deep");
    s_device = PyUnicode_InternFromString("device");
    if (!s_ok || !s_error || !s_too_deep || !s_device) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL) return NULL;
    Py_INCREF(&CoreType);
    Py_INCREF(&PhaseType);
    if (PyModule_AddObject(m, "Core", (PyObject *)&CoreType) < 0 ||
        PyModule_AddObject(m, "Phase", (PyObject *)&PhaseType) < 0)
        return NULL;
    pthread_atfork(NULL, NULL, after_fork_child);
    return m;
}
