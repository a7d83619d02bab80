"""The field tables of every GGML block type the ``ggml`` codec holds (spec/codecs/ggml.md).

Each entry splits a block into fields whose values are one quantity each (a scale, one
element's code, one grid index, ...), so that each field's values have a small alphabet of
their own; the element codes are in element order. Byte offsets below are within the block.
"""

from __future__ import annotations

import numpy as np

from .ggml_layout import (
    QK_K,
    Field,
    Layout,
    bit_planes,
    bits_at,
    crumbs,
    f16,
    halves,
    layout,
    nibble_chunks,
    run,
    u,
    u8s,
)

_e8 = np.arange(8)
_e16 = np.arange(16)
_e32 = np.arange(32)


def _legacy() -> list[Layout]:
    q5_0_high = bits_at(2 + _e32 // 8, _e32 % 8, 1)  # qh u32 at byte 2: bit e
    q5_1_high = bits_at(4 + _e32 // 8, _e32 % 8, 1)
    return [
        layout("Q4_0", 32, 18, [f16("d", 0), u("q", 4, halves(2, 16))]),
        layout("Q4_1", 32, 20, [f16("d", 0), f16("m", 2), u("q", 4, halves(4, 16))]),
        layout("Q5_0", 32, 22, [f16("d", 0), u("q", 5, halves(6, 16), q5_0_high)]),
        layout("Q5_1", 32, 24, [f16("d", 0), f16("m", 2), u("q", 5, halves(8, 16), q5_1_high)]),
        layout("Q8_0", 32, 34, [f16("d", 0), u8s("q", 2, 32)]),
        layout("IQ4_NL", 32, 18, [f16("d", 0), u("q", 4, halves(2, 16))]),
        layout("MXFP4", 32, 17, [u8s("e", 0, 1), u("q", 4, halves(1, 16))]),
        layout("NVFP4", 64, 36, [u8s("d", 0, 4), u("q", 4, nibble_chunks(4, 8, 64))]),
    ]


def _k_scales(at: int) -> tuple:
    """Q4_K/Q5_K's 12 bytes of eight 6-bit scales and eight 6-bit mins, at byte ``at``."""
    k = np.arange(8)
    lo = k < 4
    # k < 4: 6 bits of byte k (scales) / k + 4 (mins); k >= 4: a nibble of byte k + 4, then
    # bits 6..7 of byte k - 4 (scales) / k (mins)
    sc = (
        run(np.where(lo, 8 * (at + k), 8 * (at + k + 4)), np.where(lo, 6, 4)),
        run(8 * (at + np.where(lo, 0, k - 4)) + 6, np.where(lo, 0, 2)),
    )
    mn = (
        run(np.where(lo, 8 * (at + k + 4), 8 * (at + k + 4) + 4), np.where(lo, 6, 4)),
        run(8 * (at + np.where(lo, 0, k)) + 6, np.where(lo, 0, 2)),
    )
    return sc, mn


def _k_quants() -> list[Layout]:
    k16 = np.arange(16)
    sc4, mn4 = _k_scales(4)
    q3_scale = (bits_at(96 + k16 % 8, 4 * (k16 // 8), 4), bits_at(104 + k16 % 4, 2 * (k16 // 4), 2))
    return [
        layout(
            "Q2_K",
            QK_K,
            84,
            [
                u("sc", 4, bits_at(k16, 0, 4)),
                u("m", 4, bits_at(k16, 4, 4)),
                u("q", 2, crumbs(16, 32, QK_K)),
                f16("d", 80),
                f16("dmin", 82),
            ],
        ),
        layout(
            "Q3_K",
            QK_K,
            110,
            [
                u("q", 3, crumbs(32, 32, QK_K), bit_planes(0, 32, QK_K)),
                u("sc", 6, *q3_scale),
                f16("d", 108),
            ],
        ),
        layout(
            "Q4_K",
            QK_K,
            144,
            [
                f16("d", 0),
                f16("dmin", 2),
                u("sc", 6, *sc4),
                u("m", 6, *mn4),
                u("q", 4, nibble_chunks(16, 32, QK_K)),
            ],
        ),
        layout(
            "Q5_K",
            QK_K,
            176,
            [
                f16("d", 0),
                f16("dmin", 2),
                u("sc", 6, *sc4),
                u("m", 6, *mn4),
                u("q", 5, nibble_chunks(48, 32, QK_K), bit_planes(16, 32, QK_K)),
            ],
        ),
        layout(
            "Q6_K",
            QK_K,
            210,
            [
                u("q", 6, nibble_chunks(0, 64, QK_K), crumbs(128, 32, QK_K)),
                u8s("sc", 192, 16),
                f16("d", 208),
            ],
        ),
        layout("TQ1_0", QK_K, 54, [u8s("q", 0, 52), f16("d", 52)]),
        layout("TQ2_0", QK_K, 66, [u("q", 2, crumbs(0, 32, QK_K)), f16("d", 64)]),
        layout(
            "IQ4_XS",
            QK_K,
            136,
            [
                f16("d", 0),
                u("sc", 6, bits_at(4 + _e8 // 2, 4 * (_e8 % 2), 4), run(16 + 2 * _e8, 2)),
                u("q", 4, nibble_chunks(8, 16, QK_K)),
            ],
        ),
    ]


def _i_quants() -> list[Layout]:
    g8 = np.arange(8)
    l32, m32, l64 = _e32, _e32, np.arange(64)
    aux_xxs = 8 * (2 + 8 * (l32 // 4) + 4) + 7 * (
        l32 % 4
    )  # IQ2_XXS: signs in the u32 of group l // 4
    aux3 = 8 * (66 + 4 * (m32 // 4)) + 7 * (m32 % 4)  # IQ3_XXS: signs in the u32 of group m // 4
    return [
        layout(
            "IQ2_XXS",
            QK_K,
            66,
            [
                f16("d", 0),
                u("grid", 8, bits_at(2 + 8 * (l32 // 4) + l32 % 4, 0, 8)),
                u("sign", 7, run(aux_xxs, 7)),
                u("sc", 4, run(8 * (2 + 8 * g8 + 4) + 28, 4)),
            ],
        ),
        layout(
            "IQ2_XS",
            QK_K,
            74,
            [
                f16("d", 0),
                u("grid", 9, run(8 * (2 + 2 * l32), 9)),
                u("sign", 7, run(8 * (2 + 2 * l32) + 9, 7)),
                u("sc", 4, bits_at(66 + _e16 // 2, 4 * (_e16 % 2), 4)),
            ],
        ),
        layout(
            "IQ2_S",
            QK_K,
            82,
            [
                f16("d", 0),
                u("grid", 10, bits_at(2 + l32, 0, 8), bits_at(66 + l32 // 4, 2 * (l32 % 4), 2)),
                u8s("sign", 34, 32),
                u("sc", 4, bits_at(74 + _e16 // 2, 4 * (_e16 % 2), 4)),
            ],
        ),
        layout(
            "IQ3_XXS",
            QK_K,
            98,
            [
                f16("d", 0),
                u8s("grid", 2, 64),
                u("sign", 7, run(aux3, 7)),
                u("sc", 4, run(8 * (66 + 4 * g8) + 28, 4)),
            ],
        ),
        layout(
            "IQ3_S",
            QK_K,
            110,
            [
                f16("d", 0),
                u("grid", 9, bits_at(2 + l64, 0, 8), bits_at(66 + l64 // 8, l64 % 8, 1)),
                u8s("sign", 74, 32),
                u("sc", 4, bits_at(106 + g8 // 2, 4 * (g8 % 2), 4)),
            ],
        ),
        layout(
            "IQ1_S",
            QK_K,
            50,
            [
                f16("d", 0),
                u(
                    "grid",
                    11,
                    bits_at(2 + l32, 0, 8),
                    run(8 * (34 + 2 * (l32 // 4)) + 3 * (l32 % 4), 3),
                ),
                u("sc", 3, run(8 * (34 + 2 * g8) + 12, 3)),
                u("delta", 1, run(8 * (34 + 2 * g8) + 15, 1)),
            ],
        ),
        layout(
            "IQ1_M",
            QK_K,
            56,
            [
                u("grid", 11, bits_at(l32, 0, 8), bits_at(32 + l32 // 2, 4 * (l32 % 2), 3)),
                u("delta", 1, bits_at(32 + l32 // 2, 4 * (l32 % 2) + 3, 1)),
                u("sc", 3, run(8 * (48 + 2 * (_e16 // 4)) + 3 * (_e16 % 4), 3)),
                # d: binary16 whose nibble w is bits 12..15 of the u16 at byte 48 + 2 w
                Field("d", 1, 16, "f16", tuple(run([8 * (48 + 2 * w) + 12], 4) for w in range(4))),
            ],
        ),
    ]


LAYOUTS: dict[str, Layout] = {t.name: t for t in _legacy() + _k_quants() + _i_quants()}
