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
    PyObject *on_top;     /* callable(attrs) -> attrs: a top-level phase while OpenTelemetry is loaded */
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
static PyObject *s_ok, *s_error, *s_too_deep, *s_device, *s_otel_trace;
static PyObject *g_decorate = NULL; /* callable(phase, fn) -> wrapper (api._decorate) */
static volatile long long g_fork_gen = 0;

/* Per-thread caches, invalidated in a forked child by the generation. */
static __thread long t_tid = 0;
static __thread PyObject *t_tid_obj = NULL; /* the tid as an int object (owned, one per thread) */
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
        t_tid_obj = NULL; /* the parent's object: not ours (leaked in the child on purpose) */
        t_tid_gen = g_fork_gen;
    }
    return t_tid;
}

/* New reference to this thread's tid as an int (cached: no allocation per edge). */
static inline PyObject *get_tid_obj(void) {
    long tid = get_tid();
    if (t_tid_obj == NULL) {
        t_tid_obj = PyLong_FromLong(tid);
        if (t_tid_obj == NULL) return NULL;
    }
    Py_INCREF(t_tid_obj);
    return t_tid_obj;
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
    Py_VISIT(self->on_top);
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
    Py_CLEAR(self->on_top);
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
                             "check_attrs", "max_depth", "ru_min_ns", "rusage", "disabled", "on_top", NULL};
    PyObject *current, *root, *on_slow, *on_drop, *on_device, *check_name, *check_attrs, *on_top = Py_None;
    long max_depth = 64;
    long long ru_min_ns = 20000;
    int rusage = 1, disabled = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O!OOOOO|lLppO", kwlist, &PyContextVar_Type, &current,
                                     &PyTuple_Type, &root, &on_slow, &on_drop, &on_device, &check_name,
                                     &check_attrs, &max_depth, &ru_min_ns, &rusage, &disabled, &on_top))
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
    Py_INCREF(on_top);
    Py_XSETREF(self->on_top, on_top);
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

/* (events, a copy of the open-phase registry, CLOCK_MONOTONIC now), taken together: no other
   thread runs in between, so a heartbeat built from the copy and stamped with that time matches
   the point in the stream where it is placed (after these events).  Otherwise a phase beginning
   or ending in between would look lost to the daemon. */
static PyObject *Core_take_with_open(Core *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *opened = PyDict_Copy(self->open);
    if (opened == NULL) return NULL;
    PyObject *events = Core_take(self, NULL);
    if (events == NULL) {
        Py_DECREF(opened);
        return NULL;
    }
    PyObject *t = PyLong_FromLongLong(mono_ns()); /* the snapshot's time: the heartbeat's */
    PyObject *r = t ? PyTuple_Pack(3, events, opened, t) : NULL;
    Py_XDECREF(t);
    Py_DECREF(events);
    Py_DECREF(opened);
    return r;
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
    {"take_with_open", (PyCFunction)Core_take_with_open, METH_NOARGS, "(take(), a copy of open, now), atomically."},
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

/* ----------------------------------------------------------------- Stack */

/* The innermost open phase of one context, held in the core's ContextVar.
 *
 * Why not the frame itself in the ContextVar: ContextVar.set() costs ~190 ns (a new HAMT and a
 * Token), twice per phase - half of a phase's cost.  Instead each context (a thread's, an
 * asyncio task's, a copy_context()) gets one mutable Stack, set once, whose top frame is
 * replaced in place.  The Stack remembers the context it belongs to; a context that finds
 * another context's Stack (a task inherits its creator's) makes its own, starting from that
 * Stack's top - so tasks and threads stay isolated as with plain context variables.  (The one
 * difference: a task inherits its creator's innermost phase as of the task's first phase
 * rather than as of the task's creation.) */
typedef struct {
    PyObject_HEAD
    void *owner;   /* the context this stack belongs to: identity only, never dereferenced */
    PyObject *top; /* the frame: (span_id, depth, scoped class, parent frame, tid) */
} Stack;

static void Stack_dealloc(Stack *self) {
    Py_CLEAR(self->top);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject StackType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gpuos_client._cphase.Stack",
    .tp_basicsize = sizeof(Stack),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One context's phase stack (see _cphase.c).",
    .tp_dealloc = (destructor)Stack_dealloc,
};

/* Borrowed: this context's stack (made on first use in a context); NULL with an error set. */
static Stack *current_stack(Core *c) {
    PyObject *val = NULL;
    if (PyContextVar_Get(c->current, NULL, &val) < 0) return NULL; /* also makes the thread's context */
    void *ctx = (void *)PyThreadState_Get()->context;
    if (val != NULL && Py_TYPE(val) == &StackType && ((Stack *)val)->owner == ctx) {
        Py_DECREF(val); /* the context keeps it alive */
        return (Stack *)val;
    }
    Stack *st = PyObject_New(Stack, &StackType);
    if (st == NULL) {
        Py_XDECREF(val);
        return NULL;
    }
    st->owner = ctx;
    st->top = (val != NULL && Py_TYPE(val) == &StackType) ? ((Stack *)val)->top : c->root;
    Py_INCREF(st->top);
    Py_XDECREF(val);
    PyObject *token = PyContextVar_Set(c->current, (PyObject *)st);
    Py_DECREF(st);
    if (token == NULL) return NULL;
    Py_DECREF(token);
    return st;
}

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

/* phase(name, /, *, device=False, **attrs) without an args tuple or a kwargs dict. */
static PyObject *Phase_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "phase() takes exactly one positional argument (the name)");
        return NULL;
    }
    if (g_core == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "gpuos_client core not installed");
        return NULL;
    }
    PyObject *name = checked_name(args[0]);
    if (name == NULL) return NULL;
    int device = 0;
    PyObject *attrs = NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i), *val = args[nargs + i];
        if (key == s_device || PyUnicode_Compare(key, s_device) == 0) {
            device = PyObject_IsTrue(val);
            if (device < 0) goto fail;
            continue;
        }
        if (g_core->disabled) continue; /* disabled: a phase costs what a no-op costs */
        if (attrs == NULL && (attrs = PyDict_New()) == NULL) goto fail;
        if (PyDict_SetItem(attrs, key, val) < 0) goto fail;
    }
    if (attrs != NULL) {
        PyObject *ok = PyObject_CallOneArg(g_core->check_attrs, attrs);
        Py_SETREF(attrs, ok);
        if (attrs == NULL) goto fail;
    } else {
        attrs = Py_None;
        Py_INCREF(attrs);
    }
    Phase *self = (Phase *)((PyTypeObject *)type)->tp_alloc((PyTypeObject *)type, 0);
    if (self == NULL) goto fail;
    self->name = name;
    self->attrs = attrs;
    self->device = device;
    return (PyObject *)self;
fail:
    Py_DECREF(name);
    Py_XDECREF(attrs);
    return NULL;
}

/* Used as a decorator: api._decorate builds the wrapper (sync or async). */
static PyObject *Phase_call(Phase *self, PyObject *args, PyObject *kw) {
    if (g_decorate == NULL || PyTuple_GET_SIZE(args) != 1 || (kw != NULL && PyDict_GET_SIZE(kw))) {
        PyErr_SetString(PyExc_TypeError, "a phase decorates exactly one function");
        return NULL;
    }
    return PyObject_CallFunctionObjArgs(g_decorate, (PyObject *)self, PyTuple_GET_ITEM(args, 0), NULL);
}

static PyObject *Phase_repr(Phase *self) {
    return PyUnicode_FromFormat("phase(%R, attrs=%R, device=%s)", self->name, self->attrs,
                                self->device ? "True" : "False");
}

static PyObject *Phase_enter(Phase *self, PyObject *Py_UNUSED(ignored)) {
    Core *c = g_core;
    Py_INCREF(self);
    if (c == NULL || c->disabled) return (PyObject *)self;
    PyObject *cur = NULL, *ev = NULL, *frame = NULL, *sid = NULL, *tid = NULL, *depth = NULL;
    Stack *st = current_stack(c);
    if (st == NULL) goto error;
    cur = st->top;
    Py_INCREF(cur);
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
    tid = get_tid_obj();
    depth = PyLong_FromLong(d + 1);
    if (!sid || !tid || !depth) goto error;
    PyObject *cls = PyTuple_GET_ITEM(cur, 2);
    PyObject *attrs = self->attrs;
    Py_INCREF(attrs);
    if (d == 0 && c->on_top != Py_None) {
        /* A top-level phase joins the caller's OpenTelemetry trace, if the program loaded it. */
        PyObject *otel = PyDict_GetItemWithError(PyImport_GetModuleDict(), s_otel_trace);
        if (otel != NULL) {
            PyObject *joined = PyObject_CallOneArg(c->on_top, attrs);
            if (joined != NULL) Py_SETREF(attrs, joined);
        }
        PyErr_Clear();
    }
    ev = Py_BuildValue("(iLOOOOOOO)", KIND_BEGIN, t, tid, sid, PyTuple_GET_ITEM(cur, 0), self->name, cls, attrs,
                       edge_rusage(c, t));
    Py_DECREF(attrs);
    if (ev == NULL) goto error;
    if (PyDict_SetItem(c->open, sid, ev) < 0 || push(c, ev) < 0) goto error;
    frame = PyTuple_Pack(5, sid, depth, cls, cur, tid);
    if (frame == NULL) goto error;
    Py_INCREF(frame);
    Py_SETREF(st->top, frame);
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
    Stack *st = current_stack(c);
    if (st == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *cur = st->top;
    Py_INCREF(cur);
    PyObject *sid = PyTuple_GET_ITEM(cur, 0);
    int overflow = 0;
    if (PyLong_AsLongLongAndOverflow(sid, &overflow) == 0 && !overflow) { /* disabled, too deep, or another context */
        PyErr_Clear();
        Py_DECREF(cur);
        Py_RETURN_NONE;
    }
    PyObject *parent = PyTuple_GET_ITEM(cur, 3);
    Py_INCREF(parent);
    Py_SETREF(st->top, parent);
    PyObject *begin = PyDict_GetItemWithError(c->open, sid);
    if (begin == NULL) goto done; /* opened before a fork, in the parent: the parent reports it */
    if (PyDict_DelItem(c->open, sid) < 0) goto done;
    if (self->device && c->device_ok) {
        /* The end event before the end hint: push() may hand the GIL to the sender, and an event
         * recorded after that wait would stretch the device interval. */
        PyObject *r = PyObject_CallFunctionObjArgs(c->on_device, Py_False, sid, NULL);
        Py_XDECREF(r);
        PyErr_Clear();
    }
    long long t = mono_ns();
    int failed = nargs > 0 && args[0] != Py_None;
    PyObject *ev = Py_BuildValue("(iLOOOOO)", KIND_END, t, PyTuple_GET_ITEM(cur, 4), sid, failed ? s_error : s_ok,
                                 Py_None, edge_rusage(c, t));
    if (ev == NULL) goto done;
    int rc = push(c, ev);
    Py_DECREF(ev);
    if (rc < 0) goto done;
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

PyDoc_STRVAR(Phase_doc,
"phase(name, /, *, device=False, **attrs)\n--\n\n"
"A named phase of the program: a context manager, and a decorator.\n\n"
"``with phase(\"prefill\", batch=8): ...`` sends phase_begin/phase_end hints with the thread id\n"
"and CLOCK_MONOTONIC timestamps.  Phases nest per thread and per asyncio task (contextvars).\n"
"``device=True`` also records CUDA events at the edges (torch.cuda.Event when torch is loaded,\n"
"else CuPy), so the daemon learns when the GPU ran the phase.  The object can be re-entered\n"
"and used from several threads at once.  Misuse (an empty or over-long name, bad attrs)\n"
"raises ValueError here; nothing at run time ever raises.");

static PyTypeObject PhaseType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gpuos_client.phase",
    .tp_basicsize = sizeof(Phase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = Phase_doc,
    .tp_vectorcall = Phase_vectorcall,
    .tp_call = (ternaryfunc)Phase_call,
    .tp_repr = (reprfunc)Phase_repr,
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

static PyObject *frame_py(PyObject *mod, PyObject *Py_UNUSED(ignored)) {
    if (g_core == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "gpuos_client core not installed");
        return NULL;
    }
    Stack *st = current_stack(g_core);
    if (st == NULL) return NULL;
    Py_INCREF(st->top);
    return st->top;
}

static PyObject *set_frame_py(PyObject *mod, PyObject *frame) {
    if (g_core == NULL || !PyTuple_CheckExact(frame) || PyTuple_GET_SIZE(frame) != 5) {
        PyErr_SetString(PyExc_TypeError, "set_frame() takes a 5-tuple frame (with a core installed)");
        return NULL;
    }
    Stack *st = current_stack(g_core);
    if (st == NULL) return NULL;
    Py_INCREF(frame);
    Py_SETREF(st->top, frame);
    Py_RETURN_NONE;
}

static PyObject *set_decorator(PyObject *mod, PyObject *fn) {
    Py_INCREF(fn);
    Py_XSETREF(g_decorate, fn);
    Py_RETURN_NONE;
}

static PyObject *monotonic_ns_py(PyObject *mod, PyObject *Py_UNUSED(ignored)) { return PyLong_FromLongLong(mono_ns()); }

static PyObject *tid_py(PyObject *mod, PyObject *Py_UNUSED(ignored)) { return PyLong_FromLong(get_tid()); }

static PyMethodDef module_methods[] = {
    {"set_core", set_core, METH_O, "Install the process's Core (None: none)."},
    {"set_decorator", set_decorator, METH_O, "The callable(phase, fn) that builds a decorated function."},
    {"frame", frame_py, METH_NOARGS, "This context's innermost frame (span_id, depth, class, parent, tid)."},
    {"set_frame", set_frame_py, METH_O, "Replace this context's innermost frame (workload_class scopes)."},
    {"monotonic_ns", monotonic_ns_py, METH_NOARGS, "CLOCK_MONOTONIC in ns."},
    {"tid", tid_py, METH_NOARGS, "This thread's kernel tid (cached per thread, reset at fork)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_cphase", "The gpuos_client hot path in C.", -1,
                                       module_methods};

PyMODINIT_FUNC PyInit__cphase(void) {
    if (PyType_Ready(&CoreType) < 0 || PyType_Ready(&PhaseType) < 0 || PyType_Ready(&StackType) < 0) return NULL;
    s_ok = PyUnicode_InternFromString("ok");
    s_error = PyUnicode_InternFromString("error");
    s_too_deep = PyUnicode_InternFromString("too_deep");
    s_device = PyUnicode_InternFromString("device");
    s_otel_trace = PyUnicode_InternFromString("opentelemetry.trace");
    if (!s_ok || !s_error || !s_too_deep || !s_device || !s_otel_trace) return NULL;
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
