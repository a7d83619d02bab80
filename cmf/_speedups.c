/* Optional C kernels for the byteplanes, huffman, bitpack, quantize and ggml codecs
 * (spec/codecs/byteplanes.md, huffman.md, bitpack.md, quantize.md, ggml.md).
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
 * ggml_join(out, fields, table, nbytes): GGML blocks from their fields (spec/codecs/ggml.md,
 *     cmf.codecs.ggml_layout.join): each block (nbytes bytes of out) is zeroed, then for each
 *     int32 table row (field, itemsize, count, e0, e_step, b0, b_step, len, src_shift, mask,
 *     dst_shift) and i < len: out[b, b0 + i b_step] |= ((v >> src_shift) & mask) << dst_shift,
 *     v = item e0 + i e_step of the field's row b (count items of itemsize 1 or 2 bytes, u16
 *     little-endian). mask 0 marks a bit plane: byte i gets bit src_shift of values
 *     e0 + (8 i + j) e_step at bit j (j < 8, len a multiple of 8). Rows are checked against
 *     the buffers.
 *
 * nibbles(out, raw): bitpack's 4-bit codes, two per byte, low nibble first.
 *
 * nibble_halves(out, raw, at): GGML "halves" bytes from bitpacked 4-bit codes: for each block b
 *     (nbytes = out's row length, 16 raw bytes per block: codes 2k, 2k + 1 in the low and high
 *     half of raw byte k), out[b, at + j] = code j | code (j + 16) << 4 for j < 16 (Q4_0, Q4_1
 *     and IQ4_NL quants: spec/codecs/ggml.md); the block's other bytes are left as they are.
 *
 * dequantize(out, q, scale, extra, n, block, scheme, offset): quantize's decoding of rows of n
 *     codes in blocks along the row (spec/codecs/quantize.md), returning the largest code so the
 *     caller can reject one out of range (see dequantize below).
 *
 * halves_join(out, codes, qs_at, qh_at): the same 16 bytes at qs_at from a block's 32 codes given
 *     one per byte (codes (n, 32) u8, already checked to fit 4 or 5 bits): out[b, qs_at + j] =
 *     (code j & 15) | (code (j + 16) & 15) << 4; when qh_at >= 0 (Q5_0, Q5_1) bit j of the
 *     little-endian u32 at qh_at is bit 4 of code j. Other bytes are left as they are.
 *
 * gguf_strings(values, big_endian): the GGUF strings of the list of str `values` back to back
 *     (u64 UTF-8 length, then the UTF-8 bytes) as one bytes object; TypeError for an item that is
 *     not a str, UnicodeEncodeError for one UTF-8 cannot encode (a lone surrogate). Holds the GIL.
 *
 * Pure byte shuffling / table lookups / float32 arithmetic over caller-checked buffers; the GIL
 * is released (except by gguf_strings, which reads Python objects).
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

/* One loop per word size with the size a constant, so the compiler vectorizes it; a word is
 * stored whole (memcpy) where the host is little-endian, byte by byte otherwise. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define STORE_WORD(dst, w, k) memcpy((dst), &(w), (k))
#else
#define STORE_WORD(dst, w, k) \
    do { for (int b_ = 0; b_ < (k); b_++) (dst)[b_] = (uint8_t)((w) >> (8 * b_)); } while (0)
#endif

static void interleave4(uint8_t *dst, const uint8_t **p, Py_ssize_t n, int rotate) {
    const uint8_t *p0 = p[0], *p1 = p[1], *p2 = p[2], *p3 = p[3];
    if (rotate) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t w = (uint32_t)p0[i] | (uint32_t)p1[i] << 8 | (uint32_t)p2[i] << 16 | (uint32_t)p3[i] << 24;
            w = (w >> 1) | (w << 31);
            STORE_WORD(dst + 4 * i, w, 4);
        }
    } else {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t w = (uint32_t)p0[i] | (uint32_t)p1[i] << 8 | (uint32_t)p2[i] << 16 | (uint32_t)p3[i] << 24;
            STORE_WORD(dst + 4 * i, w, 4);
        }
    }
}

static void interleave2(uint8_t *dst, const uint8_t **p, Py_ssize_t n, int rotate) {
    const uint8_t *p0 = p[0], *p1 = p[1];
    if (rotate) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint16_t w = (uint16_t)(p0[i] | p1[i] << 8);
            w = (uint16_t)((w >> 1) | (w << 15));
            STORE_WORD(dst + 2 * i, w, 2);
        }
    } else {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint16_t w = (uint16_t)(p0[i] | p1[i] << 8);
            STORE_WORD(dst + 2 * i, w, 2);
        }
    }
}

static void interleave8(uint8_t *dst, const uint8_t **p, Py_ssize_t n, int rotate) {
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t w = 0;
        for (int j = 0; j < 8; j++) w |= (uint64_t)p[j][i] << (8 * j);
        if (rotate) w = (w >> 1) | (w << 63);
        STORE_WORD(dst + 8 * i, w, 8);
    }
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
    if (k == 4) interleave4(dst, p, n, rotate);
    else if (k == 2) interleave2(dst, p, n, rotate);
    else interleave8(dst, p, n, rotate);
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

#define MAXF 8
#define JOIN_COLS 11
#define JOIN_CHUNK 256 /* blocks joined at a time: their bytes stay in the L1/L2 cache */

static inline uint64_t load64(const uint8_t *p) { uint64_t x; memcpy(&x, p, 8); return x; }
static inline void store64(uint8_t *p, uint64_t x) { memcpy(p, &x, 8); }

/* One table row over blocks [b0, b1): see the top of the file. */
static void join_row(uint8_t *out, Py_ssize_t nbytes, const uint8_t *src, const int32_t *w,
                     Py_ssize_t b0, Py_ssize_t b1) {
    const int32_t isz = w[1], count = w[2], e0 = w[3], es = w[4], by = w[5], bs = w[6], len = w[7];
    const unsigned ss = (unsigned)w[8], ds = (unsigned)w[10];
    const unsigned mask = (unsigned)w[9];
    if (isz == 1 && mask != 0 && es == 1 && bs == 1) {
        /* 8 bytes at a time as one u64: a u8 value's shifted, masked bits stay in its own
         * byte (ss + width <= 8 and ds + width <= 8), whatever the host's byte order */
        const uint64_t m = (uint64_t)mask * 0x0101010101010101ull;
        const int32_t words = len / 8;
        for (Py_ssize_t b = b0; b < b1; b++) {
            uint8_t *o = out + b * nbytes + by;
            const uint8_t *v = src + b * count + e0;
            for (int32_t i = 0; i < words; i++)
                store64(o + 8 * i, load64(o + 8 * i) | (((load64(v + 8 * i) >> ss) & m) << ds));
            for (int32_t i = 8 * words; i < len; i++) o[i] |= (uint8_t)(((v[i] >> ss) & mask) << ds);
        }
        return;
    }
    if (isz == 1 && mask == 0 && es == 1) {  /* a bit plane of u8 values, 8 values per byte */
        for (Py_ssize_t b = b0; b < b1; b++) {
            uint8_t *o = out + b * nbytes + by;
            const uint8_t *v = src + b * count + e0;
            for (int32_t i = 0; i < len / 8; i++) {
                uint64_t x = 0;  /* lane j = value 8 i + j, on any host */
                for (int j = 0; j < 8; j++) x |= (uint64_t)v[8 * i + j] << (8 * j);
                x = (x >> ss) & 0x0101010101010101ull;
                o[i * bs] |= (uint8_t)((x * 0x0102040810204080ull) >> 56);  /* bit j = lane j */
            }
        }
        return;
    }
    for (Py_ssize_t b = b0; b < b1; b++) {
        uint8_t *o = out + b * nbytes + by;
        if (isz == 1) {
            const uint8_t *v = src + b * count + e0;
            if (mask == 0) {  /* a bit plane: bit ss of 8 values per byte */
                for (int32_t i = 0; i < len / 8; i++) {
                    unsigned byte = 0;
                    for (int j = 0; j < 8; j++) byte |= ((unsigned)(v[(8 * i + j) * es] >> ss) & 1u) << j;
                    o[i * bs] |= (uint8_t)byte;
                }
            } else {
                for (int32_t i = 0; i < len; i++) o[i * bs] |= (uint8_t)(((v[i * es] >> ss) & mask) << ds);
            }
        } else {  /* u16 items, little-endian */
            const uint8_t *v = src + 2 * (b * count + e0);
            if (mask == 0) {
                for (int32_t i = 0; i < len / 8; i++) {
                    unsigned byte = 0;
                    for (int j = 0; j < 8; j++) {
                        Py_ssize_t at = 2 * (Py_ssize_t)(8 * i + j) * es;
                        byte |= ((((unsigned)v[at] | (unsigned)v[at + 1] << 8) >> ss) & 1u) << j;
                    }
                    o[i * bs] |= (uint8_t)byte;
                }
            } else {
                for (int32_t i = 0; i < len; i++) {
                    unsigned x = (unsigned)v[2 * i * es] | (unsigned)v[2 * i * es + 1] << 8;
                    o[i * bs] |= (uint8_t)(((x >> ss) & mask) << ds);
                }
            }
        }
    }
}

static PyObject *ggml_join(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_fields, *o_table;
    Py_ssize_t nbytes;
    if (!PyArg_ParseTuple(args, "OOOn", &o_out, &o_fields, &o_table, &nbytes)) return NULL;
    Py_buffer out, tab, fv[MAXF];
    Py_ssize_t nf = 0;
    int got_tab = 0;
    if (PyObject_GetBuffer(o_out, &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    PyObject *fast = PySequence_Fast(o_fields, "fields must be a sequence");
    if (!fast) goto fail;
    if (PySequence_Fast_GET_SIZE(fast) > MAXF) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "ggml_join: too many fields");
        goto fail;
    }
    for (; nf < PySequence_Fast_GET_SIZE(fast); nf++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, nf), &fv[nf], PyBUF_C_CONTIGUOUS) < 0) {
            Py_DECREF(fast);
            goto fail;
        }
    }
    Py_DECREF(fast);
    if (PyObject_GetBuffer(o_table, &tab, PyBUF_C_CONTIGUOUS) < 0) goto fail;
    got_tab = 1;
    if (nbytes < 1 || out.len % nbytes || tab.len % (JOIN_COLS * 4)) {
        PyErr_SetString(PyExc_ValueError, "ggml_join: inconsistent buffers");
        goto fail;
    }
    {
        Py_ssize_t n = out.len / nbytes, rows = tab.len / (JOIN_COLS * 4);
        const int32_t *t = (const int32_t *)tab.buf;
        for (Py_ssize_t r = 0; r < rows; r++) {  /* every position read or written in range */
            const int32_t *w = t + r * JOIN_COLS;
            int32_t f = w[0], isz = w[1], count = w[2], e0 = w[3], es = w[4], by = w[5], bs = w[6];
            int32_t len = w[7], plane = w[9] == 0, writes = plane ? len / 8 : len;
            if (f < 0 || f >= nf || (isz != 1 && isz != 2) || count < 1 || len < 1 || e0 < 0
                || es < 1 || e0 + (int64_t)(len - 1) * es >= count || by < 0 || bs < 1
                || by + (int64_t)(writes - 1) * bs >= nbytes || w[8] < 0 || w[8] > 15
                || w[9] < 0 || w[9] > 255 || w[10] < 0 || w[10] > 7 || (plane && (len % 8 || w[10]))
                || fv[f].len != n * (Py_ssize_t)count * isz) {
                PyErr_SetString(PyExc_ValueError, "ggml_join: a table row does not fit the buffers");
                goto fail;
            }
        }
        uint8_t *dst = (uint8_t *)out.buf;
        const uint8_t *src[MAXF];
        for (Py_ssize_t j = 0; j < nf; j++) src[j] = (const uint8_t *)fv[j].buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t b0 = 0; b0 < n; b0 += JOIN_CHUNK) {
            Py_ssize_t b1 = b0 + JOIN_CHUNK < n ? b0 + JOIN_CHUNK : n;
            memset(dst + b0 * nbytes, 0, (size_t)((b1 - b0) * nbytes));
            for (Py_ssize_t r = 0; r < rows; r++) {
                const int32_t *w = t + r * JOIN_COLS;
                join_row(dst, nbytes, src[w[0]], w, b0, b1);
            }
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&tab);
    for (Py_ssize_t j = 0; j < nf; j++) PyBuffer_Release(&fv[j]);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
fail:
    if (got_tab) PyBuffer_Release(&tab);
    for (Py_ssize_t j = 0; j < nf; j++) PyBuffer_Release(&fv[j]);
    PyBuffer_Release(&out);
    return NULL;
}

/* nibbles(out, raw): 4-bit codes, low nibble first: out[2i] = raw[i] & 15, out[2i+1] = raw[i] >> 4
 * (spec/codecs/bitpack.md with bits 4); out holds exactly twice raw's bytes. */
static PyObject *nibbles(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_raw;
    if (!PyArg_ParseTuple(args, "OO", &o_out, &o_raw)) return NULL;
    Py_buffer out, raw;
    if (PyObject_GetBuffer(o_out, &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (PyObject_GetBuffer(o_raw, &raw, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&out);
        return NULL;
    }
    if (out.len != 2 * raw.len) {
        PyBuffer_Release(&raw);
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "nibbles: out must hold twice the input's bytes");
        return NULL;
    }
    uint8_t *dst = (uint8_t *)out.buf;
    const uint8_t *src = (const uint8_t *)raw.buf;
    Py_ssize_t n = raw.len;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        dst[2 * i] = src[i] & 15;
        dst[2 * i + 1] = src[i] >> 4;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&raw);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

/* dequantize(out, q, scale, extra, n, block, scheme, offset) -> the largest code seen.
 * out: float32 rows of n; q: the codes (u8 or u16 by item size, same count); scale and extra:
 * float32 values, one per block of each row (blocks of `block` elements, the last one shorter);
 * scheme 0: x = s * (u - offset), 1: x = s * (u - z) (extra = zero points as float32),
 * 2: x = s * u + m (extra = min). float32 with one rounding per operation in this order
 * (spec/codecs/quantize.md; built with -ffp-contract=off, so never fused). */
#define DEQ_LOOP(T)                                                                           \
    for (Py_ssize_t r = 0; r < rows; r++) {                                                   \
        const T *qr = (const T *)q.buf + r * n;                                               \
        float *xr = (float *)out.buf + r * n;                                                 \
        for (Py_ssize_t b = 0; b < nb; b++) {                                                 \
            Py_ssize_t a = b * block, e = a + block < n ? a + block : n;                      \
            float sc = sv[r * nb + b], ex = ev ? ev[r * nb + b] : (float)offset;              \
            unsigned m = 0;                                                                   \
            if (scheme == 2) {                                                                \
                for (Py_ssize_t i = a; i < e; i++) {                                          \
                    unsigned u = qr[i]; m = u > m ? u : m;                                    \
                    float t = sc * (float)u;                                                  \
                    xr[i] = t + ex;                                                           \
                }                                                                             \
            } else {                                                                          \
                for (Py_ssize_t i = a; i < e; i++) {                                          \
                    unsigned u = qr[i]; m = u > m ? u : m;                                    \
                    xr[i] = ((float)u - ex) * sc;                                             \
                }                                                                             \
            }                                                                                 \
            top = m > top ? m : top;                                                          \
        }                                                                                     \
    }

static PyObject *dequantize(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_q, *o_scale, *o_extra;
    Py_ssize_t n, block;
    int scheme, offset;
    if (!PyArg_ParseTuple(args, "OOOOnnii", &o_out, &o_q, &o_scale, &o_extra, &n, &block,
                          &scheme, &offset)) return NULL;
    Py_buffer out, q, sc, ex;
    int got = 0, has_extra = o_extra != Py_None;
    if (PyObject_GetBuffer(o_out, &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) goto fail;
    got = 1;
    if (PyObject_GetBuffer(o_q, &q, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) goto fail;
    got = 2;
    if (PyObject_GetBuffer(o_scale, &sc, PyBUF_C_CONTIGUOUS) < 0) goto fail;
    got = 3;
    if (has_extra && PyObject_GetBuffer(o_extra, &ex, PyBUF_C_CONTIGUOUS) < 0) goto fail;
    got = 4;
    Py_ssize_t rows = n > 0 ? out.len / 4 / n : 0;
    Py_ssize_t nb = block > 0 && n > 0 ? (n + block - 1) / block : 0;
    if (n < 1 || block < 1 || scheme < 0 || scheme > 2 || (q.itemsize != 1 && q.itemsize != 2)
        || out.len != rows * n * 4 || q.len != rows * n * q.itemsize || sc.len != rows * nb * 4
        || has_extra != (scheme != 0) || (has_extra && ex.len != sc.len)) {
        PyErr_SetString(PyExc_ValueError, "dequantize: inconsistent buffers");
        goto fail;
    }
    unsigned top = 0;
    {
        const float *sv = (const float *)sc.buf, *ev = has_extra ? (const float *)ex.buf : NULL;
        Py_BEGIN_ALLOW_THREADS
        if (q.itemsize == 1) {
            DEQ_LOOP(uint8_t)
        } else {
            DEQ_LOOP(uint16_t)
        }
        Py_END_ALLOW_THREADS
    }
    if (has_extra) PyBuffer_Release(&ex);
    PyBuffer_Release(&sc);
    PyBuffer_Release(&q);
    PyBuffer_Release(&out);
    return PyLong_FromUnsignedLong(top);
fail:
    if (got >= 4 && has_extra) PyBuffer_Release(&ex);
    if (got >= 3) PyBuffer_Release(&sc);
    if (got >= 2) PyBuffer_Release(&q);
    if (got >= 1) PyBuffer_Release(&out);
    return NULL;
}

/* The writable C-contiguous block buffer `out` (its rows of *nbytes bytes: *n blocks when it is
 * 2-d; *nbytes = 0 otherwise, for the caller's shape check to refuse) and the C-contiguous input
 * `in`. 0 with both held, or -1 with a Python error set and neither held. */
static int block_buffers(PyObject *o_out, Py_buffer *out, PyObject *o_in, Py_buffer *in,
                         Py_ssize_t *nbytes, Py_ssize_t *n) {
    if (PyObject_GetBuffer(o_out, out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_ND) < 0)
        return -1;
    if (PyObject_GetBuffer(o_in, in, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(out);
        return -1;
    }
    *nbytes = out->ndim == 2 ? out->shape[1] : 0;
    *n = *nbytes > 0 ? out->len / *nbytes : 0;
    return 0;
}

static PyObject *nibble_halves(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_raw;
    Py_ssize_t at;
    if (!PyArg_ParseTuple(args, "OOn", &o_out, &o_raw, &at)) return NULL;
    Py_buffer out, raw;
    Py_ssize_t nbytes, n;
    if (block_buffers(o_out, &out, o_raw, &raw, &nbytes, &n) < 0) return NULL;
    if (out.ndim != 2 || out.itemsize != 1 || at < 0 || nbytes < 16 || at > nbytes - 16
        || raw.len != n * 16) {
        PyBuffer_Release(&raw);
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError,
                        "nibble_halves: out must be (n, nbytes) u8 with 16 bytes at `at`, raw n * 16 bytes");
        return NULL;
    }
    uint8_t *o = (uint8_t *)out.buf + at;
    const uint8_t *r = (const uint8_t *)raw.buf;
    const uint16_t probe = 1;
    const int little = *(const uint8_t *)&probe == 1;
    Py_BEGIN_ALLOW_THREADS
    if (little) {
        /* byte m of L, H = raw byte m, 8 + m; even / odd out bytes 2m, 2m + 1 built in the byte
         * lanes of e / d, then interleaved by spreading each half's bytes to every other lane */
        const uint64_t lo4 = 0x0F0F0F0F0F0F0F0Full;
        for (Py_ssize_t b = 0; b < n; b++, o += nbytes, r += 16) {
            uint64_t L = load64(r), H = load64(r + 8);
            uint64_t e = (L & lo4) | ((H & lo4) << 4), d = ((L >> 4) & lo4) | (H & ~lo4);
            uint64_t e0 = e & 0xFFFFFFFFull, e1 = e >> 32, d0 = d & 0xFFFFFFFFull, d1 = d >> 32;
#define SPREAD(x) (x = (x | (x << 16)) & 0x0000FFFF0000FFFFull, x = (x | (x << 8)) & 0x00FF00FF00FF00FFull)
            SPREAD(e0); SPREAD(e1); SPREAD(d0); SPREAD(d1);
#undef SPREAD
            store64(o, e0 | (d0 << 8));
            store64(o + 8, e1 | (d1 << 8));
        }
    } else {
        for (Py_ssize_t b = 0; b < n; b++, o += nbytes, r += 16) {
            for (int m = 0; m < 8; m++) {  /* codes 2m, 2m + 1 in r[m]; 2m + 16, 2m + 17 in r[8 + m] */
                o[2 * m] = (uint8_t)((r[m] & 0x0F) | (r[8 + m] << 4));
                o[2 * m + 1] = (uint8_t)((r[m] >> 4) | (r[8 + m] & 0xF0));
            }
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&raw);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static PyObject *halves_join(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_codes;
    Py_ssize_t qs, qh;
    if (!PyArg_ParseTuple(args, "OOnn", &o_out, &o_codes, &qs, &qh)) return NULL;
    Py_buffer out, codes;
    Py_ssize_t nbytes, n;
    if (block_buffers(o_out, &out, o_codes, &codes, &nbytes, &n) < 0) return NULL;
    if (out.ndim != 2 || out.itemsize != 1 || nbytes < 16 || qs < 0 || qs > nbytes - 16
        || qh < -1 || (qh >= 0 && (nbytes < 4 || qh > nbytes - 4)) || codes.len != n * 32) {
        PyBuffer_Release(&codes);
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError,
                        "halves_join: out must be (n, nbytes) u8 holding 16 bytes at qs (4 at qh), codes n * 32 bytes");
        return NULL;
    }
    uint8_t *o = (uint8_t *)out.buf;
    const uint8_t *c = (const uint8_t *)codes.buf;
    const uint16_t probe = 1;
    const int little = *(const uint8_t *)&probe == 1;
    Py_BEGIN_ALLOW_THREADS
    const uint64_t lo4 = 0x0F0F0F0F0F0F0F0Full, bit0 = 0x0101010101010101ull;
    for (Py_ssize_t b = 0; b < n; b++, o += nbytes, c += 32) {
        if (little) {  /* lane j of word k = code 8k + j */
            uint64_t c0 = load64(c), c1 = load64(c + 8), c2 = load64(c + 16), c3 = load64(c + 24);
            store64(o + qs, (c0 & lo4) | ((c2 & lo4) << 4));
            store64(o + qs + 8, (c1 & lo4) | ((c3 & lo4) << 4));
            if (qh >= 0) {
                o[qh] = (uint8_t)((((c0 >> 4) & bit0) * 0x0102040810204080ull) >> 56);
                o[qh + 1] = (uint8_t)((((c1 >> 4) & bit0) * 0x0102040810204080ull) >> 56);
                o[qh + 2] = (uint8_t)((((c2 >> 4) & bit0) * 0x0102040810204080ull) >> 56);
                o[qh + 3] = (uint8_t)((((c3 >> 4) & bit0) * 0x0102040810204080ull) >> 56);
            }
        } else {
            for (int j = 0; j < 16; j++) o[qs + j] = (uint8_t)((c[j] & 15) | (c[j + 16] & 15) << 4);
            if (qh >= 0)
                for (int k = 0; k < 4; k++) {
                    unsigned byte = 0;
                    for (int j = 0; j < 8; j++) byte |= ((unsigned)(c[8 * k + j] >> 4) & 1u) << j;
                    o[qh + k] = (uint8_t)byte;
                }
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&codes);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static PyObject *gguf_strings(PyObject *self, PyObject *args) {
    PyObject *list;
    int big;
    if (!PyArg_ParseTuple(args, "O!p", &PyList_Type, &list, &big)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(list), total = 0, len;
    for (Py_ssize_t i = 0; i < n; i++) {  /* sizes (UTF-8 kept in each str: no second encode) */
        PyObject *item = PyList_GET_ITEM(list, i);
        if (!PyUnicode_Check(item)) {
            PyErr_Format(PyExc_TypeError, "gguf_strings: item %zd is not a str", i);
            return NULL;
        }
        if (!PyUnicode_AsUTF8AndSize(item, &len)) return NULL;
        if (len > PY_SSIZE_T_MAX - 8 - total) {
            PyErr_SetString(PyExc_OverflowError, "gguf_strings: too many bytes");
            return NULL;
        }
        total += 8 + len;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (!out) return NULL;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    Py_ssize_t at = 0;
    /* nothing above ran Python code, so the list is as it was; every write is still bounded */
    for (Py_ssize_t i = 0; i < n && i < PyList_GET_SIZE(list); i++) {
        const char *s = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(list, i), &len);
        if (!s || len > total - at - 8) {
            Py_DECREF(out);
            if (s) PyErr_SetString(PyExc_RuntimeError, "gguf_strings: the list changed");
            return NULL;
        }
        uint64_t v = (uint64_t)len;
        for (int b = 0; b < 8; b++) o[at + b] = (uint8_t)(v >> (8 * (big ? 7 - b : b)));
        memcpy(o + at + 8, s, (size_t)len);
        at += 8 + len;
    }
    if (at != total) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "gguf_strings: the list changed");
        return NULL;
    }
    return out;
}

static PyMethodDef methods[] = {
    {"interleave", interleave, METH_VARARGS, "interleave(out, planes, rotate): planes -> words"},
    {"split", split, METH_VARARGS, "split(src, planes, rotate): words -> planes"},
    {"huffman_chunks", huffman_chunks, METH_VARARGS, "decode every huffman chunk (see top)"},
    {"nibbles", nibbles, METH_VARARGS, "nibbles(out, raw): 4-bit codes, low nibble first"},
    {"dequantize", dequantize, METH_VARARGS, "dequantize(out, q, scale, extra, n, block, scheme, offset): codes -> f32 (see dequantize)"},
    {"ggml_join", ggml_join, METH_VARARGS, "ggml_join(out, fields, table, nbytes): blocks from fields (see top)"},
    {"nibble_halves", nibble_halves, METH_VARARGS, "nibble_halves(out, raw, at): GGML halves bytes from bitpacked 4-bit codes (see top)"},
    {"halves_join", halves_join, METH_VARARGS, "halves_join(out, codes, qs_at, qh_at): GGML halves (+ qh plane) bytes from u8 codes (see top)"},
    {"gguf_strings", gguf_strings, METH_VARARGS, "gguf_strings(values, big_endian): GGUF strings back to back (see top)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_speedups", "byteplanes, huffman, bitpack, quantize and ggml kernels", -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
