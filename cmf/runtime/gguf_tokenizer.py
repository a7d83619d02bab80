"""A ``tokenizers`` tokenizer from the ``tokenizer.ggml.*`` keys of a GGUF import.

Contract of :func:`tokenizer_from_gguf`: from the ``gguf.tokenizer.ggml.*`` metadata cmf keeps
(cmf.convert.gguf), the tokenizer transformers builds from the same GGUF
(``AutoTokenizer.from_pretrained(dir, gguf_file=...)``), giving the same ids:

- ``gpt2``: byte-level BPE over ``tokens`` (a token outside the byte alphabet is spelled in it)
  and ``merges``; the split regex named by ``tokenizer.ggml.pre`` where one is known, else
  GPT-2's; byte-level decoding;
- ``llama`` (SentencePiece): BPE with byte fallback over ``tokens``, merges from the file or,
  as usual for these files, from ``scores`` (each pair of tokens that joins into a token, the
  joined token's score first); ``▁`` for spaces, prepended to the first word;
- control tokens (type 3; for ``gpt2`` those spelled in the byte alphabet) and the bos, eos,
  unknown and padding tokens are special; user-defined tokens (type 4) are added as they are;
- BOS is added when ``tokenizer.ggml.add_bos_token`` says so (``llama`` files without the key:
  yes), EOS when ``add_eos_token`` does.

Anything else (another tokenizer model, malformed keys) is a CmfError.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from ..errors import CmfError, UnsupportedError
from ..extras import install_hint

P = "gguf.tokenizer.ggml."
CONTROL, USER_DEFINED = 3, 4
MAX_SPLIT_WORK = 1 << 28  # characters sliced deriving merges (real vocabularies: ~10^6)
_SPECIAL_IDS = ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id")

_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_UPPER, _LOWER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_CONTRACTION = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
_GPT4O = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTION}"
    rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTION}"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLITS = {  # tokenizer.ggml.pre -> split regex (others: GPT-2's byte-level regex)
    **dict.fromkeys(
        (
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
            "dbrx",
            "smaug-bpe",
        ),
        _LLAMA3,
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2),
    "qwen35": _QWEN35,
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O),
    "tekken": _TEKKEN,
}


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """GPT-2's printable spelling of each byte: printable Latin-1 bytes stand for themselves,
    the other 68 take the code points from 256 on, in byte order."""
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    spelled, extra = {b: chr(b) for b in kept}, 0
    for b in range(256):
        if b not in spelled:
            spelled[b] = chr(256 + extra)
            extra += 1
    return spelled


def _list(
    meta: Mapping[str, Any], key: str, kind: type | tuple, required: bool = True
) -> list | None:
    value = meta.get(P + key)
    if value is None and not required:
        return None
    if not isinstance(value, list) or any(
        not isinstance(v, kind) or isinstance(v, bool) for v in value
    ):
        raise CmfError(
            f"GGUF metadata: tokenizer.ggml.{key} must be a list of "
            f"{getattr(kind, '__name__', 'numbers')}"
        )
    return value


def _merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """SentencePiece BPE as merges: every split of a token into two tokens, ordered by the
    joined token's score (highest first), then longer left and right pieces first; ties keep
    token order, then the pieces' ids."""
    work = sum(len(t) ** 2 for t in tokens)  # every split of every token, each a slice
    if work > MAX_SPLIT_WORK:
        raise CmfError(
            f"GGUF metadata: tokens too long to derive merges from scores "
            f"({work} > {MAX_SPLIT_WORK} characters of splits)"
        )
    ids = {t: i for i, t in enumerate(tokens)}
    score = dict(zip(tokens, scores, strict=True))
    found = []
    for token, s in score.items():
        pairs = [
            (token[:k], token[k:])
            for k in range(1, len(token))
            if token[:k] in ids and token[k:] in ids
        ]
        pairs.sort(key=lambda p: (ids[p[0]], ids[p[1]]))
        found += [(s, left, right) for left, right in pairs]
    found.sort(key=lambda m: (m[0], len(m[1]), len(m[2])), reverse=True)
    return [(left, right) for _, left, right in found]


def _merges(meta: Mapping[str, Any]) -> list[tuple[str, str]] | None:
    merges = _list(meta, "merges", str, required=False)
    if merges is None:
        return None
    out = []
    for m in merges:
        pair = tuple(m.split(" "))
        if len(pair) != 2:
            raise CmfError(
                f"GGUF metadata: merge {m[:40]!r} is not two tokens separated by one space"
            )
        out.append(pair)
    return out


def tokenizer_from_gguf(meta: Mapping[str, Any]) -> Any:
    """The ``tokenizers.Tokenizer`` of a GGUF import's metadata (see the module docstring)."""
    try:
        from tokenizers import (
            AddedToken,
            Regex,
            Tokenizer,
            decoders,
            models,
            pre_tokenizers,
            processors,
        )
    except ImportError:
        raise CmfError(
            f"running text models needs the tokenizers package: {install_hint('run')}"
        ) from None
    kind = meta.get(P + "model")
    if kind not in ("gpt2", "llama"):
        raise UnsupportedError(
            f"GGUF tokenizer {kind!r} is not supported (gpt2 byte-level BPE "
            "and llama SentencePiece are)"
        )
    tokens = _list(meta, "tokens", str)
    types = _list(meta, "token_type", int, required=False) or []
    merges = _merges(meta)
    try:
        if kind == "gpt2":
            alphabet = set(byte_alphabet().values())
            spell = byte_alphabet()
            vocab = {
                t if set(t) <= alphabet else "".join(spell[b] for b in t.encode("utf-8")): i
                for i, t in enumerate(tokens)
            }
            if merges is None:
                raise CmfError("GGUF metadata: a gpt2 tokenizer without tokenizer.ggml.merges")
            _check_merges(merges, vocab)
            tk = Tokenizer(
                models.BPE(
                    vocab=vocab,
                    merges=merges,
                    dropout=None,
                    continuing_subword_prefix="",
                    end_of_word_suffix="",
                    fuse_unk=False,
                )
            )
            pre = meta.get(P + "pre")
            split = SPLITS.get(pre) if isinstance(pre, str) else None
            tk.pre_tokenizer = (
                pre_tokenizers.ByteLevel(add_prefix_space=False)
                if split is None
                else pre_tokenizers.Sequence(
                    [
                        pre_tokenizers.Split(Regex(split), behavior="isolated"),
                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                    ]
                )
            )
            tk.decoder = decoders.ByteLevel()
        else:
            if merges is None:
                scores = _list(meta, "scores", (int, float))
                if len(scores) != len(tokens):
                    raise CmfError(f"GGUF metadata: {len(scores)} scores for {len(tokens)} tokens")
                merges = _merges_from_scores(tokens, scores)
            vocab = {t: i for i, t in enumerate(tokens)}
            _check_merges(merges, vocab)
            tk = Tokenizer(
                models.BPE(
                    vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, dropout=None
                )
            )
            tk.pre_tokenizer = pre_tokenizers.Metaspace(
                replacement="▁", prepend_scheme="first", split=False
            )
            tk.decoder = decoders.Sequence(
                [
                    decoders.Replace("▁", " "),
                    decoders.ByteFallback(),
                    decoders.Fuse(),
                    decoders.Strip(content=" ", left=1, right=0),
                ]
            )
        _add_tokens(tk, meta, kind, tokens, types, AddedToken)
        tk.post_processor = _post_processor(meta, kind, tokens, processors)
    except CmfError:
        raise
    except (
        BaseException
    ) as exc:  # bare Exceptions for bad vocabularies; a Rust panic is a BaseException
        if isinstance(exc, Exception) or type(exc).__name__ == "PanicException":
            raise CmfError(
                f"GGUF tokenizer cannot be built ({type(exc).__name__}: {exc})"
            ) from None
        raise
    return tk


def _check_merges(merges: list[tuple[str, str]], vocab: dict[str, int]) -> None:
    """Each merge joins two tokens into a token (tokenizers panics on a merged token it lacks)."""
    for left, right in merges:
        if left not in vocab or right not in vocab or left + right not in vocab:
            raise CmfError(
                f"GGUF metadata: merge {left[:20]!r} + {right[:20]!r} names a token "
                "the vocabulary lacks"
            )


def _token(meta: Mapping[str, Any], key: str, tokens: list[str]) -> tuple[str, int] | None:
    i = meta.get(P + key)
    if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(tokens):
        return tokens[i], i
    return None


def _add_tokens(
    tk: Any, meta: Mapping[str, Any], kind: str, tokens: list[str], types: list[int], added: Any
) -> None:
    alphabet = set(byte_alphabet().values()) if kind == "gpt2" else None
    special = [
        t
        for t, ty in zip(tokens, types, strict=False)
        if ty == CONTROL and (alphabet is None or set(t) <= alphabet)
    ]
    special += [
        found[0] for key in _SPECIAL_IDS if (found := _token(meta, key, tokens)) is not None
    ]
    if special:
        tk.add_special_tokens(
            [added(t, normalized=False, special=True) for t in dict.fromkeys(special)]
        )
    user = [t for t, ty in zip(tokens, types, strict=False) if ty == USER_DEFINED]
    if user:
        tk.add_tokens([added(t, normalized=False, special=False) for t in user])


def _post_processor(meta: Mapping[str, Any], kind: str, tokens: list[str], processors: Any) -> Any:
    add_bos = meta.get(P + "add_bos_token", kind == "llama") is True
    add_eos = meta.get(P + "add_eos_token", False) is True
    bos = _token(meta, "bos_token_id", tokens) if add_bos else None
    eos = _token(meta, "eos_token_id", tokens) if add_eos else None
    head = [bos[0]] if bos else []
    tail = [eos[0]] if eos else []
    single = [*head, "$A:0", *tail]
    pair = [*head, "$A:0", *tail, *[f"{t}:1" for t in head], "$B:1", *[f"{t}:1" for t in tail]]
    return processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[s for s in (bos, eos) if s]
    )


class LazyTokenizer:
    """:func:`tokenizer_from_gguf` built on first use, so a GGUF import whose tokenizer keys
    cannot be built still runs from token ids; its CmfError comes when text is tokenized."""

    def __init__(self, meta: Mapping[str, Any]) -> None:
        self._meta, self._tk = meta, None

    def __getattr__(self, name: str) -> Any:
        if self._tk is None:
            self._tk = tokenizer_from_gguf(self._meta)
        return getattr(self._tk, name)
