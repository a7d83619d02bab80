"""How often each token of a vocabulary occurs: the importance of a token-embedding row.

A token-embedding matrix ``E`` (vocab, d) is read by a lookup, the product of a one-hot input
with ``E``: its input channels are its rows, and ``E[x_t^2]`` is the frequency ``p_t`` of token
``t``. An error in row ``t`` moves the output only where ``t`` occurs.

The calibration text alone names a few hundred tokens; most of the vocabulary a user's text
will use is not in it. So ``p`` mixes the calibration counts with a *prior*: the word
frequencies of a language (the ``wordfreq`` package, extra ``cmf-container[plan]``), each word tokenized by
the model's own tokenizer and its frequency shared by its tokens. The calibration counts get a
share ``n / (n + CALIBRATION_HALF)`` for ``n`` calibration tokens: a few sentences barely move
the prior (and the error measured on them stays an honest estimate), a large user corpus
dominates it. Without a prior (``wordfreq`` missing, or ``lang`` None) the rows get no weights,
uniform importance as for any tensor.

The rows' *importance* is ``sqrt(p_t)``, not ``p_t``: ``p`` only estimates the user's text, and
on MiniLM's held-out sentences (everyday English and Python documentation, none used here) the
square root left 50-60 % less output error than uniform steps at equal bits, ``p_t`` itself
40-55 % and the cube root 50-56 %. The planner's per-row steps ``~ 1/sqrt(importance)`` are
stored as ``partition`` classes (cmf.plan.candidates).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

PRIOR_WORDS = 100_000  # most frequent words of the language (96 % of English running text)
CONTEXT_FORMS = 256  # words tokenized together, as running text
CALIBRATION_HALF = 20_000  # calibration tokens at which the counts weigh as much as the prior
CAPITALIZED_SHARE = 0.15  # of a word's frequency given to its capitalized form (sentence starts)
# Punctuation, which word lists leave out: rough rates per word of English prose (straight and
# typographic quotes alike, as published text uses both).
PUNCTUATION = {",": 0.05, ".": 0.045, '"': 0.006, "\u201c": 0.004, "\u201d": 0.004, "'": 0.004,
               "\u2018": 0.002, "\u2019": 0.006, "-": 0.006, "\u2013": 0.001, "\u2014": 0.002,
               "?": 0.003, "!": 0.002, ":": 0.003, ";": 0.002, "(": 0.002, ")": 0.002,
               "/": 0.001, "...": 0.001, "\u2026": 0.0005, "%": 0.0005, "$": 0.0005, "&": 0.0003}
# Every other printable ASCII character, digits and the symbols of code, markup and numbers: few
# rows, so weighing them costs nothing, and text that is mostly symbols (code) keeps them fine.
PUNCTUATION.update({c: (0.001 if c.isdigit() else 0.0002) for c in map(chr, range(33, 127))
                    if c not in PUNCTUATION and not c.isalpha()})


@functools.lru_cache(maxsize=4)
def _words(lang: str) -> tuple[tuple[str, ...], np.ndarray] | None:
    try:
        import wordfreq
    except ImportError:
        return None
    try:
        words = wordfreq.top_n_list(lang, PRIOR_WORDS)
    except (LookupError, ValueError):
        return None
    freqs = np.array([wordfreq.word_frequency(w, lang) for w in words], np.float64)
    return tuple(words), freqs


def word_prior(tokenizer: Any, vocab: int, lang: str | None = "en") -> np.ndarray | None:
    """``p`` (vocab,) summing to 1: the prior token frequencies of ``lang`` (its words, and
    ``PUNCTUATION``) under ``tokenizer`` (a ``tokenizers.Tokenizer``), or None without
    ``wordfreq`` or a word list for ``lang``. Words are tokenized in running text (see
    :func:`_spread`), as the model sees them."""
    got = _words(lang) if lang else None
    if got is None:
        return None
    words, freqs = got
    tok = _plain(tokenizer)
    p = np.zeros(vocab, np.float64)
    _spread(tok, list(words), freqs * (1 - CAPITALIZED_SHARE), p)
    _spread(tok, [w[:1].upper() + w[1:] for w in words], freqs * CAPITALIZED_SHARE, p)
    marks = list(PUNCTUATION)  # after a word, as they are written: "a," (the "a" not counted)
    _spread(tok, ["a" + m for m in marks], np.array([PUNCTUATION[m] for m in marks]) * freqs.sum(), p, skip=1)
    total = p.sum()
    return p / total if total > 0 else None


def _plain(tokenizer: Any) -> Any:
    """A copy of ``tokenizer`` without padding or truncation (the caller's is left alone)."""
    if not (hasattr(tokenizer, "to_str") and hasattr(type(tokenizer), "from_str")):
        return tokenizer  # not a tokenizers.Tokenizer: used as it is
    tok = type(tokenizer).from_str(tokenizer.to_str())
    tok.no_padding()
    tok.no_truncation()
    return tok


def _spread(tokenizer: Any, forms: Sequence[str], mass: np.ndarray, p: np.ndarray, skip: int = 0) -> None:
    """Add ``mass[i]`` to ``p``, shared equally by the tokens of ``forms[i]``. The forms are
    tokenized ``CONTEXT_FORMS`` at a time joined by spaces, so each is tokenized as in running
    text (a word-initial marker or space prefix included, whatever the tokenizer's convention);
    a token belongs to the form its last character falls in, after the form's first ``skip``
    characters (context, not counted). Ids outside ``p`` are dropped."""
    vocab = p.size
    for i in range(0, len(forms), CONTEXT_FORMS):
        chunk = forms[i : i + CONTEXT_FORMS]
        starts = np.cumsum([0] + [len(f) + 1 for f in chunk[:-1]])  # (n,) each form's offset
        enc = tokenizer.encode_batch([" ".join(chunk)], add_special_tokens=False)[0]
        if not enc.ids:
            continue
        ids = np.asarray(enc.ids, np.int64)
        offs = np.asarray(enc.offsets, np.int64).reshape(-1, 2)
        last = offs[:, 1] - 1  # the token's last character
        form = np.searchsorted(starts, last, side="right") - 1
        keep = (offs[:, 1] > offs[:, 0]) & (form >= 0) & (last >= starts[np.maximum(form, 0)] + skip)
        keep &= (ids >= 0) & (ids < vocab)
        ids, form = ids[keep], form[keep]
        per = np.bincount(form, minlength=len(chunk))  # tokens of each form
        np.add.at(p, ids, mass[i : i + len(chunk)][form] / per[form])


def token_frequencies(calibration_ids: Sequence[Sequence[int]], vocab: int,
                      prior: np.ndarray | None) -> np.ndarray | None:
    """``p`` (vocab,) summing to 1: ``prior`` mixed with the token counts of the calibration
    sequences (module docstring); None without a prior or without calibration tokens."""
    if prior is None or prior.shape != (vocab,):
        return None
    ids = np.concatenate([np.asarray(s, np.int64).reshape(-1) for s in calibration_ids] or [np.zeros(0, np.int64)])
    counts = np.bincount(ids[(ids >= 0) & (ids < vocab)], minlength=vocab).astype(np.float64)
    n = counts.sum()
    if n <= 0:
        return None
    share = n / (n + CALIBRATION_HALF)
    return (1 - share) * prior + share * counts / n


def row_importance(p: np.ndarray) -> np.ndarray:
    """The rows' importance (vocab,), mean 1: ``sqrt(p)`` (module docstring)."""
    r = np.sqrt(np.asarray(p, np.float64))
    return r / r.mean()
