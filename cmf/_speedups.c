/* Optional C kernels for the byteplanes codec (spec/codecs/byteplanes.md).
 *
 * interleave(out, planes, rotate): out[i] = word built from byte i of each plane, rotated
 *     right by one bit when rotate (undoing the encoder's left rotation).
 * split(src, planes, rotate): the inverse: plane j gets byte j of each (rotated) word.
 *
 * Pure byte shuffling over caller-checked buffers; the GIL is released while it runs.
 * Byte order: words are little-endian on disk; this code builds them with shifts, so it is
 * independent of the host's byte order.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAXK 8

static int get_planes(PyObject *seq, Py_buffer *views, Py_ssize_t *k, int writable) {
    PyObject *fast = PySequence_Fast(seq, "planes must be a sequence");
    if (!fast) return -1;
    *k = PySequence_Fast_GET_SIZE(fast);
    if (*k != 2 && *k != 4 && *k != 8) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "need 2, 4 or 8 planes");
        return -1;
    }
    for (Py_ssize_t j = 0; j < *k; j++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, j), &views[j],
                               writable ? (PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) : PyBUF_C_CONTIGUOUS) < 0) {
            for (Py_ssize_t i = 0; i < j; i++) PyBuffer_Release(&views[i]);
            Py_DECREF(fast);
            return -1;
        }
    }
    Py_DECREF(fast);
    return 0;
}

static void release(Py_buffer *views, Py_ssize_t k) {
    for (Py_ssize_t j = 0; j < k; j++) PyBuffer_Release(&views[j]);
}

static PyObject *interleave(PyObject *self, PyObject *args) {
    PyObject *out_obj, *planes_obj;
    int rotate;
    if (!PyArg_ParseTuple(args, "OOp", &out_obj, &planes_obj, &rotate)) return NULL;
    Py_buffer out, pl[MAXK];
    Py_ssize_t k;
    if (PyObject_GetBuffer(out_obj, &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (get_planes(planes_obj, pl, &k, 0) < 0) { PyBuffer_Release(&out); return NULL; }
    Py_ssize_t n = pl[0].len;
    for (Py_ssize_t j = 0; j < k; j++) {
        if (pl[j].len != n) {
            release(pl, k); PyBuffer_Release(&out);
            PyErr_SetString(PyExc_ValueError, "planes differ in length");
            return NULL;
        }
    }
    if (out.len != n * k) {
        release(pl, k); PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "output size is not planes * length");
        return NULL;
    }
    uint8_t *dst = (uint8_t *)out.buf;
    const uint8_t *p[MAXK];
    for (Py_ssize_t j = 0; j < k; j++) p[j] = (const uint8_t *)pl[j].buf;
    Py_BEGIN_ALLOW_THREADS
    if (!rotate) {
        for (Py_ssize_t i = 0; i < n; i++)
            for (Py_ssize_t j = 0; j < k; j++) dst[i * k + j] = p[j][i];
    } else if (k == 4) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t w = (uint32_t)p[0][i] | (uint32_t)p[1][i] << 8 | (uint32_t)p[2][i] << 16 | (uint32_t)p[3][i] << 24;
            w = (w >> 1) | (w << 31);
            dst[4 * i] = (uint8_t)w; dst[4 * i + 1] = (uint8_t)(w >> 8);
            dst[4 * i + 2] = (uint8_t)(w >> 16); dst[4 * i + 3] = (uint8_t)(w >> 24);
        }
    } else if (k == 2) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint16_t w = (uint16_t)(p[0][i] | p[1][i] << 8);
            w = (uint16_t)((w >> 1) | (w << 15));
            dst[2 * i] = (uint8_t)w; dst[2 * i + 1] = (uint8_t)(w >> 8);
        }
    } else {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint64_t w = 0;
            for (Py_ssize_t j = 0; j < 8; j++) w |= (uint64_t)p[j][i] << (8 * j);
            w = (w >> 1) | (w << 63);
            for (Py_ssize_t j = 0; j < 8; j++) dst[8 * i + j] = (uint8_t)(w >> (8 * j));
        }
    }
    Py_END_ALLOW_THREADS
    release(pl, k);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static PyObject *split(PyObject *self, PyObject *args) {
    PyObject *src_obj, *planes_obj;
    int rotate;
    if (!PyArg_ParseTuple(args, "OOp", &src_obj, &planes_obj, &rotate)) return NULL;
    Py_buffer src, pl[MAXK];
    Py_ssize_t k;
    if (PyObject_GetBuffer(src_obj, &src, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (get_planes(planes_obj, pl, &k, 1) < 0) { PyBuffer_Release(&src); return NULL; }
    Py_ssize_t n = pl[0].len;
    for (Py_ssize_t j = 0; j < k; j++) {
        if (pl[j].len != n) {
            release(pl, k); PyBuffer_Release(&src);
            PyErr_SetString(PyExc_ValueError, "planes differ in length");
            return NULL;
        }
    }
    if (src.len != n * k) {
        release(pl, k); PyBuffer_Release(&src);
        PyErr_SetString(PyExc_ValueError, "input size is not planes * length");
        return NULL;
    }
    const uint8_t *s = (const uint8_t *)src.buf;
    uint8_t *p[MAXK];
    for (Py_ssize_t j = 0; j < k; j++) p[j] = (uint8_t *)pl[j].buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t w = 0;
        for (Py_ssize_t j = 0; j < k; j++) w |= (uint64_t)s[i * k + j] << (8 * j);
        if (rotate) {
            unsigned bits = (unsigned)(8 * k);
            w = ((w << 1) | (w >> (bits - 1)));
            if (bits < 64) w &= (((uint64_t)1 << bits) - 1);
        }
        for (Py_ssize_t j = 0; j < k; j++) p[j][i] = (uint8_t)(w >> (8 * j));
    }
    Py_END_ALLOW_THREADS
    release(pl, k);
    PyBuffer_Release(&src);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"interleave", interleave, METH_VARARGS, "interleave(out, planes, rotate): planes -> words"},
    {"split", split, METH_VARARGS, "split(src, planes, rotate): words -> planes"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_speedups", "byteplanes kernels", -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
