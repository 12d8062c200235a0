/*
 * gpuos_client._cproto: the daemon's per-event validation of the common events, in C.
 *
 * Why C: after span finalisation went columnar, the daemon's per-event Python
 * (check_event + check_fields + check_ru + check_attrs: ~25 attribute loads,
 * isinstance calls and range checks per phase edge) was a third of its ingest
 * time.  The same checks through the C API cost tens of nanoseconds.
 *
 * The contract that keeps it safe: check_events() is a *conservative* twin of
 * protocol.check_event + protocol.check_fields.  For each event it answers
 * either "valid phase_begin / phase_end / mark" (the kind) or 255, "ask the
 * Python checker".  It answers a kind only for events the Python checker
 * accepts; everything else (every other kind, any doubt, any bad field) goes
 * to Python, which raises the same ProtocolError with the same reason and
 * detail as without this module.  So rejection reasons, counts and messages
 * are those of protocol.py by construction; tests/test_cproto.py checks the
 * subset property on hypothesis-generated and hostile events.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define ASK 255
#define K_BEGIN 1
#define K_END 2
#define K_MARK 3

typedef struct {
    Py_ssize_t name, attrs, key, value;
} Lim;

/* An exact int in 0..2^63-1 (protocol._int and check_ru). */
static int u63(PyObject *o, long long *out) {
    if (!PyLong_CheckExact(o)) return 0;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || v < 0) {
        if (v == -1 && PyErr_Occurred()) PyErr_Clear();
        return 0;
    }
    *out = v;
    return 1;
}

/* protocol.check_name: an exact str, non-empty, at most lim->name code points. */
static int name_ok(PyObject *o, const Lim *lim) {
    if (!PyUnicode_CheckExact(o)) return 0;
    Py_ssize_t n = PyUnicode_GET_LENGTH(o);
    return n > 0 && n <= lim->name;
}

/* protocol.check_attrs, for a plain dict (any other Mapping: ask Python). */
static int attrs_ok(PyObject *o, const Lim *lim) {
    if (o == Py_None) return 1;
    if (!PyDict_CheckExact(o) || PyDict_GET_SIZE(o) > lim->attrs) return 0;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(o, &pos, &k, &v)) {
        if (!PyUnicode_CheckExact(k)) return 0;
        Py_ssize_t kn = PyUnicode_GET_LENGTH(k);
        if (kn == 0 || kn > lim->key) return 0;
        if (PyUnicode_CheckExact(v)) {
            if (PyUnicode_GET_LENGTH(v) > lim->value) return 0;
        } else if (PyBytes_CheckExact(v)) {
            if (PyBytes_GET_SIZE(v) > lim->value) return 0;
        } else if (PyLong_CheckExact(v)) {
            int overflow = 0;
            long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
            if (overflow) return 0; /* outside int64 */
            if (x == -1 && PyErr_Occurred()) {
                PyErr_Clear();
                return 0;
            }
        } else if (!(v == Py_None || PyBool_Check(v) || PyFloat_CheckExact(v))) {
            return 0; /* subclasses and everything else: Python decides */
        }
    }
    return 1;
}

/* protocol.check_ru: nil, or a list/tuple of >= 7 items whose first 7 are u63, ru[0] <= t. */
static int ru_ok(PyObject *o, long long t) {
    if (o == Py_None) return 1;
    PyObject **items;
    Py_ssize_t n;
    if (PyList_CheckExact(o)) {
        n = PyList_GET_SIZE(o);
        items = ((PyListObject *)o)->ob_item;
    } else if (PyTuple_CheckExact(o)) {
        n = PyTuple_GET_SIZE(o);
        items = ((PyTupleObject *)o)->ob_item;
    } else {
        return 0;
    }
    if (n < 7) return 0;
    long long v;
    for (int i = 0; i < 7; i++)
        if (!u63(items[i], &v) || (i == 0 && v > t)) return 0;
    return 1;
}

static int status_ok(PyObject *o) {
    if (!PyUnicode_CheckExact(o)) return 0;
    return PyUnicode_CompareWithASCIIString(o, "ok") == 0 || PyUnicode_CompareWithASCIIString(o, "error") == 0;
}

/* One event: its kind when plainly valid, else ASK. */
static unsigned char check_one(PyObject *ev, const Lim *lim) {
    PyObject **it;
    Py_ssize_t n;
    if (PyList_CheckExact(ev)) {
        n = PyList_GET_SIZE(ev);
        it = ((PyListObject *)ev)->ob_item;
    } else if (PyTuple_CheckExact(ev)) {
        n = PyTuple_GET_SIZE(ev);
        it = ((PyTupleObject *)ev)->ob_item;
    } else {
        return ASK;
    }
    if (n < 3) return ASK;
    long long kind, t, tid, id;
    if (!u63(it[0], &kind) || !u63(it[1], &t) || !u63(it[2], &tid)) return ASK;
    switch (kind) {
    case K_BEGIN: /* [1, t, tid, span_id, parent_id, name, cls|nil, attrs|nil, ru|nil] */
        if (n < 8 || !u63(it[3], &id) || !u63(it[4], &id) || !name_ok(it[5], lim)) return ASK;
        if (it[6] != Py_None && !name_ok(it[6], lim)) return ASK;
        if (!attrs_ok(it[7], lim) || (n > 8 && !ru_ok(it[8], t))) return ASK;
        return K_BEGIN;
    case K_END: /* [2, t, tid, span_id, status, attrs|nil, ru|nil] */
        if (n < 6 || !u63(it[3], &id) || !status_ok(it[4]) || !attrs_ok(it[5], lim)) return ASK;
        if (n > 6 && !ru_ok(it[6], t)) return ASK;
        return K_END;
    case K_MARK: /* [3, t, tid, name, attrs|nil] */
        if (n < 5 || !name_ok(it[3], lim) || !attrs_ok(it[4], lim)) return ASK;
        return K_MARK;
    default:
        return ASK;
    }
}

PyDoc_STRVAR(check_events_doc,
             "check_events(events, max_name_len, max_attrs, max_attr_key_len, max_attr_value_len) -> bytes\n\n"
             "One byte per event: 1/2/3 for a phase_begin/phase_end/mark the Python checker accepts,\n"
             "255 for 'ask protocol.check_event/check_fields' (other kinds, and anything doubtful).");

static PyObject *check_events(PyObject *self, PyObject *args) {
    PyObject *events;
    Lim lim;
    if (!PyArg_ParseTuple(args, "O!nnnn", &PyList_Type, &events, &lim.name, &lim.attrs, &lim.key, &lim.value))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(events);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL) return NULL;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) p[i] = check_one(PyList_GET_ITEM(events, i), &lim);
    return out;
}

static PyMethodDef methods[] = {
    {"check_events", check_events, METH_VARARGS, check_events_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_cproto",
                                       "Conservative C twin of the protocol's per-event checks.", -1, methods};

PyMODINIT_FUNC PyInit__cproto(void) { return PyModule_Create(&moduledef); }
