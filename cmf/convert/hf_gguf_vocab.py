"""GGUF tokenizer keys (``tokenizer.ggml.*``) from a Hugging Face ``tokenizer.json``.

Contract of :func:`vocab_keys`: the ordered ``(key, GGUF type, value)`` list llama.cpp's converter
writes for the two tokenizer kinds Llama-family models use, or a CmfError saying why not:

- byte-level BPE (a ``ByteLevel`` pre-tokenizer, alone or after a ``Split`` whose regex is a known
  one): ``model`` ``gpt2``, ``pre`` naming the split (``gpt-2``, ``llama-bpe``, ``qwen2``,
  ``gpt-4o``), ``tokens``, ``token_type``, ``merges``;
- SentencePiece-style BPE (byte fallback, ``▁`` for spaces): ``model`` ``llama``, ``tokens``,
  ``scores`` (a token made by merge ``r`` scores ``-r``, other tokens ``-1e9``), ``token_type``
  (``<0xXX>`` tokens are bytes), ``merges``;
- token types: 3 for special added tokens, 4 for other added tokens, 2 for the unknown token, 5
  for ``[PADn]`` fillers up to the model's vocabulary size, 1 otherwise; then the special token
  ids, whether BOS/EOS are added (from the post-processor's template) and the chat template.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import CmfError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
MAX_TOKENS = 1 << 22  # GGUF array items a file may hold (cmf.convert.gguf_kv)


def _pre_name(pre: Any) -> str | None:
    """llama.cpp's name for a byte-level pre-tokenizer, None if not byte level."""
    from ..runtime.gguf_tokenizer import SPLITS

    if not isinstance(pre, dict):
        return None
    if pre.get("type") == "ByteLevel":
        return "gpt-2" if pre.get("use_regex", True) else None
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not (
        isinstance(steps, list)
        and len(steps) == 2
        and isinstance(steps[0], dict)
        and steps[0].get("type") == "Split"
        and isinstance(steps[1], dict)
        and steps[1].get("type") == "ByteLevel"
        and not steps[1].get("use_regex", True)
    ):
        return None
    pattern = steps[0].get("pattern")
    regex = pattern.get("Regex") if isinstance(pattern, dict) else None
    for name in ("llama-bpe", "qwen2", "gpt-4o", "tekken", "qwen35"):
        if SPLITS.get(name) == regex:
            return name
    raise CmfError(
        f"tokenizer.json: its split regex {str(regex)[:60]!r} is not one llama.cpp names"
    )


def _is_sentencepiece(tok: dict[str, Any]) -> bool:
    model, pre, norm = tok.get("model") or {}, tok.get("pre_tokenizer"), tok.get("normalizer")
    metaspace = isinstance(pre, dict) and pre.get("type") == "Metaspace"
    prepends = isinstance(norm, dict) and "▁" in json.dumps(norm, ensure_ascii=False)
    return bool(model.get("byte_fallback")) and (metaspace or prepends)


def _template_adds(tok: dict[str, Any]) -> tuple[bool, bool]:
    """Whether the post-processor adds a special token before / after a single sequence."""
    post = tok.get("post_processor")
    steps = post.get("processors", [post]) if isinstance(post, dict) else []
    for step in steps if isinstance(steps, list) else []:
        single = (
            step.get("single")
            if isinstance(step, dict) and step.get("type") == "TemplateProcessing"
            else None
        )
        if (
            isinstance(single, list)
            and single
            and isinstance(single[0], dict)
            and isinstance(single[-1], dict)
        ):
            return "SpecialToken" in single[0], "SpecialToken" in single[-1]
    return False, False


def _merges(model: dict[str, Any]) -> list[str]:
    out = []
    merges = model.get("merges") or []
    if not isinstance(merges, list):
        raise CmfError("tokenizer.json: merges is not a list")
    for m in merges:
        pair = m.split(" ") if isinstance(m, str) else m
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(p, str) and p for p in pair)
            and " " not in pair[0] + pair[1]
        ):
            raise CmfError(
                f"tokenizer.json: merge {str(m)[:40]!r} cannot be written as GGUF's 'a b'"
            )
        out.append(f"{pair[0]} {pair[1]}")
    return out


def _check_id(i: Any, what: str) -> None:
    if not isinstance(i, int) or isinstance(i, bool) or not -1 <= i < MAX_TOKENS:
        raise CmfError(
            f"tokenizer.json: token id {str(i)[:20]} of {str(what)[:40]!r} is not in "
            f"[0, {MAX_TOKENS})"
        )


def vocab_keys(
    tokenizer_json: bytes,
    config: dict[str, Any],
    tokenizer_config: dict[str, Any],
    chat_template: str | None,
) -> list[tuple[str, str, Any]]:
    """``tokenizer.ggml.*`` key/values of ``tokenizer_json`` (see the module docstring)."""
    try:
        tok = json.loads(tokenizer_json)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CmfError(f"tokenizer.json is not JSON ({exc})") from None
    model = tok.get("model") if isinstance(tok, dict) else None
    if (
        not isinstance(model, dict)
        or model.get("type") != "BPE"
        or not isinstance(model.get("vocab"), dict)
    ):
        kind = model.get("type") if isinstance(model, dict) else None
        raise CmfError(
            f"tokenizer.json: a {kind} tokenizer cannot be written as GGUF "
            "(BPE, byte-level or SentencePiece-style, can)"
        )
    spm = _is_sentencepiece(tok)
    pre = None if spm else _pre_name(tok.get("pre_tokenizer"))
    if not spm and pre is None:
        raise CmfError(
            "tokenizer.json: neither byte-level BPE nor SentencePiece-style BPE "
            "(its pre-tokenizer is not ByteLevel or Metaspace)"
        )
    by_id: dict[int, tuple[str, int]] = {}
    for text, i in model["vocab"].items():
        _check_id(i, text)
        by_id[i] = (
            text,
            BYTE
            if spm and len(text) == 6 and text.startswith("<0x") and text.endswith(">")
            else NORMAL,
        )
    added_tokens = tok.get("added_tokens") or []
    for added in added_tokens if isinstance(added_tokens, list) else [None]:
        if not (isinstance(added, dict) and isinstance(added.get("content"), str)):
            raise CmfError("tokenizer.json: an added token is not {id, content}")
        _check_id(added.get("id"), added["content"])
        by_id[added["id"]] = (
            added["content"],
            CONTROL if added.get("special") is True else USER_DEFINED,
        )
    unk = model.get("unk_token")
    vocab_size = config.get("vocab_size")
    vocab_size = (
        vocab_size if isinstance(vocab_size, int) and not isinstance(vocab_size, bool) else 0
    )
    _check_id(vocab_size - 1, "config.json vocab_size")
    size = max(vocab_size, max(by_id) + 1 if by_id else 0)
    tokens, types = [], []
    for i in range(size):
        text, kind = by_id.get(i, (f"[PAD{i}]", UNUSED))
        tokens.append(text)
        types.append(UNKNOWN if text == unk else kind)
    merges = _merges(model)
    keys: list[tuple[str, str, Any]] = [
        ("tokenizer.ggml.model", "STRING", "llama" if spm else "gpt2")
    ]
    if not spm:
        keys.append(("tokenizer.ggml.pre", "STRING", pre))
    keys.append(("tokenizer.ggml.tokens", "ARRAY/STRING", tokens))
    if spm:
        rank = {
            a + b: -float(r)
            for r, (a, b) in reversed(list(enumerate(m.split(" ") for m in merges)))
        }
        keys.append(("tokenizer.ggml.scores", "ARRAY/FLOAT32", [rank.get(t, -1e9) for t in tokens]))
    keys.append(("tokenizer.ggml.token_type", "ARRAY/INT32", types))
    keys.append(("tokenizer.ggml.merges", "ARRAY/STRING", merges))
    ids = {t: i for i, t in enumerate(tokens)}
    for key, name in (
        ("bos_token_id", "bos_token"),
        ("eos_token_id", "eos_token"),
        ("unknown_token_id", "unk_token"),
        ("padding_token_id", "pad_token"),
    ):
        value = config.get(key.replace("unknown", "unk").replace("padding", "pad"))
        named = tokenizer_config.get(name)
        named = named.get("content") if isinstance(named, dict) else named
        if isinstance(named, str) and named in ids:
            value = ids[named]
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(tokens):
            keys.append((f"tokenizer.ggml.{key}", "UINT32", value))
    bos, eos = _template_adds(tok)
    keys += [
        ("tokenizer.ggml.add_bos_token", "BOOL", bos),
        ("tokenizer.ggml.add_eos_token", "BOOL", eos),
    ]
    template = tokenizer_config.get("chat_template", chat_template)
    if isinstance(template, str):
        keys.append(("tokenizer.chat_template", "STRING", template))
    return keys
