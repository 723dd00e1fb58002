/* The per-call entry points of the native library as a CPython module (_dropkit_cpu).
 *
 * Every dropout on the CPU calls dk_run (element-wise) or dk_bcast_draw_apply / dk_bcast_apply
 * (shared masks) once per forward and once per backward. Through ctypes each such call converts
 * its 14 to 21 arguments in Python, about 3 us; these METH_FASTCALL functions take the same
 * arguments as Python ints and floats (pointers as ints, None for NULL; the loop nest's arrays
 * as addresses) and convert them in C. Like ctypes, they release the GIL around the call. The
 * rest of the library is still reached through ctypes (dropkit/backends/cpu/_native.py). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "dk_common.h"

static int arg_ptr(PyObject *o, void **out) {
    if (o == Py_None) {
        *out = NULL;
        return 0;
    }
    *out = PyLong_AsVoidPtr(o);
    return (*out == NULL && PyErr_Occurred()) ? -1 : 0;
}

static int arg_u64(PyObject *o, uint64_t *out) {
    *out = (uint64_t)PyLong_AsUnsignedLongLong(o);
    return (*out == (uint64_t)-1 && PyErr_Occurred()) ? -1 : 0;
}

static int arg_int(PyObject *o, int *out) {
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < INT32_MIN || v > INT32_MAX) {
        PyErr_Format(PyExc_OverflowError, "%ld does not fit a C int", v);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int arg_double(PyObject *o, double *out) {
    *out = PyFloat_AsDouble(o);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static int want_args(const char *name, Py_ssize_t got, Py_ssize_t want) {
    if (got == want) return 0;
    PyErr_Format(PyExc_TypeError, "%s takes %zd arguments, got %zd", name, want, got);
    return -1;
}

/* run(isa, dtype, x, y, bits_in, bool_in, bits_out, bool_out, seed, offset, threshold, scale, n,
 * nthreads) -> dk_run's status. */
static PyObject *py_run(PyObject *self, PyObject *const *a, Py_ssize_t n) {
    (void)self;
    int isa, dtype, nthreads;
    void *p[6];
    uint64_t seed, offset, threshold, count;
    double scale;
    if (want_args("run", n, 14) || arg_int(a[0], &isa) || arg_int(a[1], &dtype)) return NULL;
    for (int k = 0; k < 6; k++)
        if (arg_ptr(a[2 + k], &p[k])) return NULL;
    if (arg_u64(a[8], &seed) || arg_u64(a[9], &offset) || arg_u64(a[10], &threshold) || arg_double(a[11], &scale) ||
        arg_u64(a[12], &count) || arg_int(a[13], &nthreads))
        return NULL;
    int code;
    Py_BEGIN_ALLOW_THREADS
    code = dk_run(isa, dtype, p[0], p[1], p[2], p[3], p[4], p[5], seed, offset, threshold, scale, count, nthreads);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(code);
}

/* The loop nest (nd, sizes, x strides, y strides, mask strides: four addresses of int64 arrays)
 * and the four op parameters, from a[first] on. */
static int nest_args(PyObject *const *a, Py_ssize_t first, int *nd, void **arrays, double *params) {
    if (arg_int(a[first], nd)) return -1;
    for (int k = 0; k < 4; k++)
        if (arg_ptr(a[first + 1 + k], &arrays[k])) return -1;
    for (int k = 0; k < 4; k++)
        if (arg_double(a[first + 5 + k], &params[k])) return -1;
    return 0;
}

/* bcast_apply(isa, op, dtype, x, y, bits, nbits, nd, sizes, xstr, ystr, mstr, scale, a, b, c,
 * nthreads) -> dk_bcast_apply's status. */
static PyObject *py_bcast_apply(PyObject *self, PyObject *const *a, Py_ssize_t n) {
    (void)self;
    int isa, op, dtype, nd, nthreads;
    void *x, *y, *bits, *arrays[4];
    uint64_t nbits;
    double params[4];
    if (want_args("bcast_apply", n, 17) || arg_int(a[0], &isa) || arg_int(a[1], &op) || arg_int(a[2], &dtype) ||
        arg_ptr(a[3], &x) || arg_ptr(a[4], &y) || arg_ptr(a[5], &bits) || arg_u64(a[6], &nbits) ||
        nest_args(a, 7, &nd, arrays, params) || arg_int(a[16], &nthreads))
        return NULL;
    int code;
    Py_BEGIN_ALLOW_THREADS
    code = dk_bcast_apply(isa, op, dtype, x, y, bits, nbits, nd, arrays[0], arrays[1], arrays[2], arrays[3],
                          params[0], params[1], params[2], params[3], nthreads);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(code);
}

/* bcast_draw_apply(isa, op, dtype, x, y, bits, bools, seed, offset, threshold, nbits, nd, sizes,
 * xstr, ystr, mstr, scale, a, b, c, nthreads) -> dk_bcast_draw_apply's status. */
static PyObject *py_bcast_draw_apply(PyObject *self, PyObject *const *a, Py_ssize_t n) {
    (void)self;
    int isa, op, dtype, nd, nthreads;
    void *x, *y, *bits, *bools, *arrays[4];
    uint64_t seed, offset, threshold, nbits;
    double params[4];
    if (want_args("bcast_draw_apply", n, 21) || arg_int(a[0], &isa) || arg_int(a[1], &op) ||
        arg_int(a[2], &dtype) || arg_ptr(a[3], &x) || arg_ptr(a[4], &y) || arg_ptr(a[5], &bits) ||
        arg_ptr(a[6], &bools) || arg_u64(a[7], &seed) || arg_u64(a[8], &offset) || arg_u64(a[9], &threshold) ||
        arg_u64(a[10], &nbits) || nest_args(a, 11, &nd, arrays, params) || arg_int(a[20], &nthreads))
        return NULL;
    int code;
    Py_BEGIN_ALLOW_THREADS
    code = dk_bcast_draw_apply(isa, op, dtype, x, y, bits, bools, seed, offset, threshold, nbits, nd, arrays[0],
                               arrays[1], arrays[2], arrays[3], params[0], params[1], params[2], params[3],
                               nthreads);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(code);
}

static PyMethodDef methods[] = {
    {"run", (PyCFunction)(void (*)(void))py_run, METH_FASTCALL, "dk_run with Python ints and floats."},
    {"bcast_apply", (PyCFunction)(void (*)(void))py_bcast_apply, METH_FASTCALL,
     "dk_bcast_apply with Python ints and floats."},
    {"bcast_draw_apply", (PyCFunction)(void (*)(void))py_bcast_draw_apply, METH_FASTCALL,
     "dk_bcast_draw_apply with Python ints and floats."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_dropkit_cpu",
                                    "dropkit's native CPU kernel: the per-call entry points.", -1, methods};

PyMODINIT_FUNC PyInit__dropkit_cpu(void) { return PyModule_Create(&module); }
