/* gpuos_client._cbusy: walk a completed CUPTI activity buffer in C, without the GIL.
 *
 * Why: the tracer (cupti.py) used to walk each buffer in Python - one ctypes call to
 * cuptiActivityGetNextRecord per record (a CDLL call: the GIL released and taken back every
 * time) and three ctypes objects to read the kind, start and end.  On the H200 that cost a
 * launch-bound program 9.7 us per kernel with busy time on (x2.0 a step;
 * benchmarks/results/h200/round4/device_cost/launch_overhead_device_busy.json), most of it GIL
 * traffic against the launching thread.  Here the whole buffer is walked with the GIL released
 * once, and the (start, end) pairs are handed back as one list.
 *
 * parse(next_record, buffer, valid, taken_mask, start_offset, end_offset, max_ns, kinds)
 *   next_record   address of cuptiActivityGetNextRecord (ctypes.cast(fn, c_void_p).value)
 *   buffer, valid the buffer CUPTI completed and its valid size in bytes
 *   taken_mask    bit k set: records of kind k carry uint64 start/end at the offsets (k < 64)
 *   start_offset, end_offset   where those two fields lie in a taken record
 *   max_ns        a record longer than this, empty, inverted or starting at 0 is bad
 *   kinds         dict kind -> count, updated for every record seen (taken or not)
 *   (every argument comes from cupti.py: "K" wraps rather than range-checks, nothing else calls this)
 * -> (pairs: list[tuple[int, int]], bad: int, error: int, start_max: int)
 *   error: 0 when the walk ended at CUPTI_ERROR_MAX_LIMIT_REACHED (the buffer's end), else the
 *   result code that stopped it (-1: out of memory; -2: more records than the buffer can hold).
 *
 * The pure-Python walk in cupti.py (CuptiTracer._parse_py) does the same and is what runs where
 * this extension is not built, with GPUOS_HINT_PURE=1, or on a libcupti stand-in that is not a C
 * function; tests/test_device_busy.py runs both on the same buffers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define CUPTI_SUCCESS 0
#define CUPTI_ERROR_MAX_LIMIT_REACHED 12
#define KIND_SLOTS 256 /* kinds counted in place; CUPTI's are < 100, 255 and above share the last
                          slot (cupti.KIND_OTHER, the Python walk does the same) */

typedef int (*next_record_fn)(uint8_t *buffer, size_t valid, void **record);

static PyObject *parse(PyObject *self, PyObject *args) {
    unsigned long long fn_addr, buf_addr, valid, mask, start_off, end_off, max_ns;
    PyObject *kinds;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKKKKKKO!", &fn_addr, &buf_addr, &valid, &mask, &start_off, &end_off, &max_ns,
                          &PyDict_Type, &kinds))
        return NULL;
    if (fn_addr == 0 || buf_addr == 0) {
        PyErr_SetString(PyExc_ValueError, "parse: null function or buffer");
        return NULL;
    }
    next_record_fn next = (next_record_fn)(uintptr_t)fn_addr;
    uint8_t *buf = (uint8_t *)(uintptr_t)buf_addr;
    size_t cap = 256, n = 0;
    uint64_t *pairs = PyMem_RawMalloc(cap * 2 * sizeof(uint64_t));
    if (pairs == NULL)
        return PyErr_NoMemory();
    uint64_t counts[KIND_SLOTS];
    memset(counts, 0, sizeof counts);
    uint64_t bad = 0, start_max = 0;
    int error = 0;

    Py_BEGIN_ALLOW_THREADS
    /* CUPTI's cursor is the record pointer itself: NULL asks for the first record, a record for
     * the one after it.  (Reset inside the loop it returns the first record for ever: the first
     * version of this walk did, and hung the H200 runs, benchmarks/results/h200/round4/busy-walk-hung.log.) */
    void *rec = NULL;
    /* Records are at least 8 bytes apart (ACTIVITY_RECORD_ALIGNMENT): more than valid / 8 of them
     * means the walk is going round (a libcupti that does not advance), and it stops, counted. */
    unsigned long long seen = 0, most = valid / 8 + 1;
    for (;;) {
        if (++seen > most) {
            error = -2;
            break;
        }
        int rc = next(buf, (size_t)valid, &rec);
        if (rc != CUPTI_SUCCESS) {
            if (rc != CUPTI_ERROR_MAX_LIMIT_REACHED)
                error = rc;
            break;
        }
        uint32_t kind;
        memcpy(&kind, rec, sizeof kind);
        counts[kind < KIND_SLOTS ? kind : KIND_SLOTS - 1]++;
        if (kind >= 64 || !((mask >> kind) & 1))
            continue;
        uint64_t s, e;
        memcpy(&s, (uint8_t *)rec + start_off, sizeof s);
        memcpy(&e, (uint8_t *)rec + end_off, sizeof e);
        if (s == 0 || e <= s || e - s > max_ns) {
            bad++;
            continue;
        }
        if (n == cap) {
            uint64_t *more = PyMem_RawRealloc(pairs, cap * 4 * sizeof(uint64_t));
            if (more == NULL) {
                error = -1;
                break;
            }
            pairs = more;
            cap *= 2;
        }
        pairs[2 * n] = s;
        pairs[2 * n + 1] = e;
        n++;
        if (s > start_max)
            start_max = s;
    }
    Py_END_ALLOW_THREADS

    PyObject *list = PyList_New((Py_ssize_t)n);
    if (list == NULL)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        PyObject *t = PyTuple_New(2);
        if (t == NULL)
            goto fail_list;
        PyList_SET_ITEM(list, (Py_ssize_t)i, t); /* the list owns it from here, even half-built */
        for (int j = 0; j < 2; j++) {
            PyObject *v = PyLong_FromUnsignedLongLong((unsigned long long)pairs[2 * i + j]);
            if (v == NULL)
                goto fail_list;
            PyTuple_SET_ITEM(t, j, v);
        }
    }
    for (int k = 0; k < KIND_SLOTS; k++) {
        if (counts[k] == 0)
            continue;
        PyObject *key = PyLong_FromLong(k);
        if (key == NULL)
            goto fail_list;
        PyObject *old = PyDict_GetItemWithError(kinds, key); /* borrowed */
        long long have = 0;
        if (old != NULL) {
            have = PyLong_AsLongLong(old);
            if (have == -1 && PyErr_Occurred()) {
                Py_DECREF(key);
                goto fail_list;
            }
        } else if (PyErr_Occurred()) {
            Py_DECREF(key);
            goto fail_list;
        }
        PyObject *val = PyLong_FromLongLong(have + (long long)counts[k]);
        int rc = val == NULL ? -1 : PyDict_SetItem(kinds, key, val);
        Py_DECREF(key);
        Py_XDECREF(val);
        if (rc < 0)
            goto fail_list;
    }
    PyMem_RawFree(pairs);
    return Py_BuildValue("(NKiK)", list, (unsigned long long)bad, error, (unsigned long long)start_max);

fail_list:
    Py_DECREF(list);
fail:
    PyMem_RawFree(pairs);
    return NULL;
}

static PyMethodDef methods[] = {
    {"parse", parse, METH_VARARGS, "Walk a completed CUPTI activity buffer (see the module's comment)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cbusy", "CUPTI activity buffers walked in C, without the GIL.", -1, methods,
};

PyMODINIT_FUNC PyInit__cbusy(void) { return PyModule_Create(&module); }
