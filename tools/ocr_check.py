"""How a packed OCR model reads real-looking text: rapidocr's PP-OCR detector and recognizer
(the ONNX files the `rapidocr` wheel ships) against their cmf files, on text rendered with PIL.

    pip download --no-deps rapidocr -d /tmp/w
    unzip /tmp/w/rapidocr-*.whl 'rapidocr/models/*' -d /tmp/w
    cmf pack /tmp/w/rapidocr/models/PP-OCRv6_rec_small.onnx -o rec-small.cmf --preset small
    python tools/ocr_check.py rec /tmp/w/rapidocr/models/PP-OCRv6_rec_small.onnx rec-small.cmf ...
    python tools/ocr_check.py det /tmp/w/rapidocr/models/PP-OCRv6_det_small.onnx det-small.cmf

``rec``: ``--lines`` text lines (the held-out sentences of ``tools/data``, cut to 12-40
characters, DejaVu fonts of several sizes, dark on light or light on dark, a little noise),
preprocessed as rapidocr does (height 48, width by aspect ratio, ``(x / 255 - 0.5) / 0.5``);
per file: the share of lines whose greedy CTC reading (argmax per position, repeats merged,
blanks dropped) equals the original model's, the share of positions whose argmax agrees, and
the original's own character accuracy against the rendered text (a sanity check). ``det``:
``--pages`` pages of several lines at 320 x 320 (ImageNet mean/std); per file the IoU of the
text masks (probability > 0.3) with the original's and the cosine of the probability maps.
``--save-inputs inputs.npz`` writes the preprocessed inputs as one named set (batch axis = the
samples) for ``cmf pack --calibrate``: rec lines are padded to one width for that.
Deterministic for ``--seed``; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FONTS = "/usr/share/fonts/truetype/dejavu"


def _fonts() -> list[str]:
    if not os.path.isdir(FONTS):
        sys.exit(f"ocr_check: needs the DejaVu fonts in {FONTS}")
    return sorted(
        os.path.join(FONTS, f) for f in os.listdir(FONTS) if f.endswith(".ttf") and "Math" not in f
    )


def _texts(rng: np.random.Generator, n: int) -> list[str]:
    lines = [
        s.strip()
        for s in (HERE / "data" / "heldout_sentences.txt").read_text("utf-8").splitlines()
        if s.strip()
    ]
    out = []
    for _ in range(n):
        s = lines[int(rng.integers(len(lines)))]
        k = int(rng.integers(12, 41))
        start = int(rng.integers(0, max(1, len(s) - k)))
        out.append(s[start : start + k].strip() or s[:k])
    return out


def _render(text: str, rng: np.random.Generator, fonts: list[str]) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(fonts[int(rng.integers(len(fonts)))], int(rng.integers(22, 44)))
    x0, y0, x1, y1 = font.getbbox(text)
    pad = int(rng.integers(3, 10))
    bg, fg = int(rng.integers(190, 256)), int(rng.integers(0, 70))
    if rng.random() < 0.2:
        bg, fg = fg, bg
    img = Image.new("L", (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad), bg)
    ImageDraw.Draw(img).text((pad - x0, pad - y0), text, fill=fg, font=font)
    a = np.asarray(img, np.float32) + rng.normal(0, 4, (img.height, img.width))
    return np.clip(a, 0, 255)


def _rec_input(gray: np.ndarray, height: int = 48) -> np.ndarray:
    from PIL import Image

    h, w = gray.shape
    width = max(8, int(np.ceil(height * w / h)))
    img = np.asarray(
        Image.fromarray(gray.astype(np.uint8)).resize((width, height), Image.BILINEAR), np.float32
    )
    x = (img / 255.0 - 0.5) / 0.5
    return np.repeat(x[None, None], 3, axis=1)  # [1, 3, 48, W]


def _ctc(probs: np.ndarray) -> list[int]:
    ids = probs.argmax(-1)
    keep = [int(c) for i, c in enumerate(ids) if c != 0 and (i == 0 or c != ids[i - 1])]
    return keep


def _runner(path: str):
    from cmf.runtime import load_runner

    return load_runner(path)


def rec(args: argparse.Namespace) -> dict:
    import onnx

    rng = np.random.default_rng(args.seed)
    fonts = _fonts()
    texts = _texts(rng, args.lines)
    inputs = [_rec_input(_render(t, rng, fonts)) for t in texts]
    meta = {
        p.key: p.value for p in onnx.load(args.original, load_external_data=False).metadata_props
    }
    chars = ["<blank>"] + meta.get("character", "").splitlines() + [" "]
    orig = _runner(args.original)
    name = orig.output_names[0]
    ref = [orig.run({"x": x})[name][0] for x in inputs]
    del orig
    read = ["".join(chars[c] if c < len(chars) else "?" for c in _ctc(p)) for p in ref]
    acc = float(np.mean([_char_accuracy(r, t) for r, t in zip(read, texts, strict=True)]))
    report = {
        "lines": len(texts),
        "original_char_accuracy": round(acc, 4),
        "examples": list(zip(texts, read, strict=True))[:3],
        "files": {},
    }
    for path in args.compressed:
        r = _runner(path)
        got = [r.run({"x": x})[name][0] for x in inputs]
        exact = np.mean([_ctc(a) == _ctc(b) for a, b in zip(ref, got, strict=True)])
        pos = np.mean(
            np.concatenate([a.argmax(-1) == b.argmax(-1) for a, b in zip(ref, got, strict=True)])
        )
        cos = np.mean([_cos(a, b) for a, b in zip(ref, got, strict=True)])
        report["files"][path] = {
            "exact_lines": round(float(exact), 4),
            "position_argmax_agreement": round(float(pos), 5),
            "cosine_mean": round(float(cos), 6),
        }
    if args.save_inputs:
        width = max(x.shape[-1] for x in inputs)
        batch = np.stack(
            [
                np.pad(
                    x[0], ((0, 0), (0, 0), (0, width - x.shape[-1])), constant_values=x[0, 0, 0, -1]
                )
                for x in inputs
            ]
        )
        np.savez(args.save_inputs, x=batch.astype(np.float32))
    return report


def _char_accuracy(read: str, truth: str) -> float:
    """1 - edit distance / len(truth)."""
    d = list(range(len(truth) + 1))
    for i, a in enumerate(read, 1):
        prev, d[0] = d[0], i
        for j, b in enumerate(truth, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (a != b))
    return max(0.0, 1 - d[len(truth)] / max(len(truth), 1))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return (
        float(x @ y / np.sqrt((x @ x) * (y @ y)))
        if x.any() and y.any()
        else float(np.array_equal(x, y))
    )


def det(args: argparse.Namespace) -> dict:
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(args.seed)
    fonts = _fonts()
    pages = []
    for _ in range(args.pages):
        img = Image.new("RGB", (320, 320), tuple(int(v) for v in rng.integers(180, 256, 3)))
        draw = ImageDraw.Draw(img)
        y = int(rng.integers(5, 30))
        for t in _texts(rng, 8):
            font = ImageFont.truetype(
                fonts[int(rng.integers(len(fonts)))], int(rng.integers(14, 30))
            )
            draw.text(
                (int(rng.integers(5, 60)), y),
                t[:24],
                fill=tuple(int(v) for v in rng.integers(0, 80, 3)),
                font=font,
            )
            y += int(font.size * rng.uniform(1.4, 2.2))
            if y > 300:
                break
        x = np.asarray(img, np.float32) / 255.0
        x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
        pages.append(x.transpose(2, 0, 1)[None].astype(np.float32))
    orig = _runner(args.original)
    name = orig.output_names[0]
    ref = [orig.run({"x": x})[name] for x in pages]
    del orig
    report = {
        "pages": len(pages),
        "text_pixels": round(float(np.mean([(p > 0.3).mean() for p in ref])), 4),
        "files": {},
    }
    for path in args.compressed:
        r = _runner(path)
        got = [r.run({"x": x})[name] for x in pages]
        iou = [
            ((a > 0.3) & (b > 0.3)).sum() / max(((a > 0.3) | (b > 0.3)).sum(), 1)
            for a, b in zip(ref, got, strict=True)
        ]
        report["files"][path] = {
            "mask_iou": round(float(np.mean(iou)), 5),
            "mask_iou_min": round(float(np.min(iou)), 5),
            "cosine_mean": round(
                float(np.mean([_cos(a, b) for a, b in zip(ref, got, strict=True)])), 6
            ),
        }
    if args.save_inputs:
        np.savez(args.save_inputs, x=np.concatenate(pages))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["rec", "det"])
    p.add_argument("original", help="the original .onnx")
    p.add_argument("compressed", nargs="*", help=".cmf files of the same model")
    p.add_argument("--lines", type=int, default=200)
    p.add_argument("--pages", type=int, default=16)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--save-inputs", help="write the preprocessed inputs as an .npz for --calibrate")
    args = p.parse_args(argv)
    print(json.dumps((rec if args.kind == "rec" else det)(args), indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
