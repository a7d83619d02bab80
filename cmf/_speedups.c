/* Optional C kernels for the byteplanes and huffman codecs (spec/codecs/byteplanes.md,
 * spec/codecs/huffman.md).
 *
 * interleave(out, planes, rotate): out[i] = word built from byte i of each plane, rotated
 *     right by one bit when rotate (undoing the encoder's left rotation).
 * split(src, planes, rotate): the inverse: plane j gets byte j of each (rotated) word.
 *
 * huffman_chunks(stream, starts, steps, last, sym_tab, len_tab, longest, out, ends): decode
 *     `steps` symbols of every chunk c from bit starts[c] of the MSB-first `stream` by looking
 *     up the next `longest` bits in sym_tab/len_tab (2**longest entries); bits past the end
 *     read as zero. out[c * steps + s] = symbol s of chunk c; ends[c] = bit after the last
 *     symbol (for the last chunk: after `last` symbols). The caller checks ends (spec rules).
 *
 * Pure byte shuffling / table lookups over caller-checked buffers; the GIL is released.
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

static PyObject *huffman_chunks(PyObject *self, PyObject *args) {
    PyObject *o_stream, *o_starts, *o_sym, *o_len, *o_out, *o_ends;
    Py_ssize_t steps, last;
    int longest;
    if (!PyArg_ParseTuple(args, "OOnnOOiOO", &o_stream, &o_starts, &steps, &last, &o_sym, &o_len,
                          &longest, &o_out, &o_ends)) return NULL;
    Py_buffer st, sa, sy, ln, out, en;
    int got = 0;
    if (PyObject_GetBuffer(o_stream, &st, PyBUF_C_CONTIGUOUS) < 0) goto fail;
    got = 1;
    if (PyObject_GetBuffer(o_starts, &sa, PyBUF_C_CONTIGUOUS) < 0) goto fail;
    got = 2;
    if (PyObject_GetBuffer(o_sym, &sy, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) goto fail;
    got = 3;
    if (PyObject_GetBuffer(o_len, &ln, PyBUF_C_CONTIGUOUS) < 0) goto fail;
    got = 4;
    if (PyObject_GetBuffer(o_out, &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) goto fail;
    got = 5;
    if (PyObject_GetBuffer(o_ends, &en, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) goto fail;
    got = 6;
    Py_ssize_t n_chunks = sa.len / 8, isz = sy.itemsize, table = (Py_ssize_t)1 << longest;
    if (longest < 1 || longest > 16 || (isz != 1 && isz != 2) || sa.len % 8 || en.len != sa.len
        || sy.len != table * isz || ln.len != table || out.len != n_chunks * steps * isz
        || steps < 0 || last < 0 || last > steps || n_chunks < 1) {
        PyErr_SetString(PyExc_ValueError, "huffman_chunks: inconsistent buffers");
        goto fail;
    }
    {
        const uint8_t *src = (const uint8_t *)st.buf, *lens = (const uint8_t *)ln.buf;
        const int64_t *starts = (const int64_t *)sa.buf;
        int64_t *ends = (int64_t *)en.buf;
        Py_ssize_t size = st.len;
        int down = 64 - longest;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t c = 0; c < n_chunks; c++) {
            uint64_t pos = (uint64_t)starts[c];
            Py_ssize_t count = c == n_chunks - 1 ? last : steps;
            for (Py_ssize_t s = 0; s < count; s++) {
                uint64_t byte = pos >> 3, w = 0;
                if (byte + 8 <= (uint64_t)size) {
                    const uint8_t *b = src + byte;
                    w = ((uint64_t)b[0] << 56) | ((uint64_t)b[1] << 48) | ((uint64_t)b[2] << 40) |
                        ((uint64_t)b[3] << 32) | ((uint64_t)b[4] << 24) | ((uint64_t)b[5] << 16) |
                        ((uint64_t)b[6] << 8) | (uint64_t)b[7];
                } else {
                    for (int i = 0; i < 8; i++)
                        w = (w << 8) | (byte + i < (uint64_t)size ? src[byte + i] : 0);
                }
                uint64_t peek = (w << (pos & 7)) >> down;
                if (isz == 1) ((uint8_t *)out.buf)[c * steps + s] = ((const uint8_t *)sy.buf)[peek];
                else ((uint16_t *)out.buf)[c * steps + s] = ((const uint16_t *)sy.buf)[peek];
                pos += lens[peek];
            }
            ends[c] = (int64_t)pos;
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&en); PyBuffer_Release(&out); PyBuffer_Release(&ln);
    PyBuffer_Release(&sy); PyBuffer_Release(&sa); PyBuffer_Release(&st);
    Py_RETURN_NONE;
fail:
    if (got >= 6) PyBuffer_Release(&en);
    if (got >= 5) PyBuffer_Release(&out);
    if (got >= 4) PyBuffer_Release(&ln);
    if (got >= 3) PyBuffer_Release(&sy);
    if (got >= 2) PyBuffer_Release(&sa);
    if (got >= 1) PyBuffer_Release(&st);
    return NULL;
}

static PyMethodDef methods[] = {
    {"interleave", interleave, METH_VARARGS, "interleave(out, planes, rotate): planes -> words"},
    {"split", split, METH_VARARGS, "split(src, planes, rotate): words -> planes"},
    {"huffman_chunks", huffman_chunks, METH_VARARGS, "decode every huffman chunk (see top)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_speedups", "byteplanes and huffman kernels", -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
