"""How often each token of a vocabulary occurs: the importance of a token-embedding row.

A token-embedding matrix ``E`` (vocab, d) is read by a lookup, the product of a one-hot input
with ``E``: its input channels are its rows, and ``E[x_t^2]`` is the frequency ``p_t`` of token
``t``. An error in row ``t`` moves the output only where ``t`` occurs.

The calibration text alone names a few hundred tokens; most of the vocabulary a user's text
will use is not in it. So ``p`` mixes the calibration counts with a *prior*: the word
frequencies of languages (the ``wordfreq`` package, extra ``cmf-container[plan]``), each word
tokenized by the model's own tokenizer and its frequency shared by its tokens. The default,
``en,world``, gives English 3/4 of the prior and 20 major languages the rest: with English alone,
every token English prose rarely uses (other languages' words) was starved, and on MiniLM
non-English UI messages fell to a mean cosine of 0.87 under ``small`` (worst sentence 0.13).
Every row also keeps a floor of importance (``ROW_FLOOR``), so a token no prior has seen still
gets a bounded step. The calibration counts get a
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
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import cache

PRIOR_WORDS = 100_000  # most frequent words of the language (96 % of English running text)
CONTEXT_FORMS = 256  # words tokenized together, as running text
DEFAULT_PRIOR = "en,world"  # --token-prior: English first, then the world's major languages
WORLD = (
    "de",
    "fr",
    "es",
    "pt",
    "it",
    "nl",
    "pl",
    "ru",
    "uk",
    "zh",
    "ja",
    "ko",
    "ar",
    "tr",
    "hi",
    "fa",
    "id",
    "vi",
    "sv",
    "cs",
)
MAIN_SHARE = 0.75  # of a several-language prior's mass, given to its first language
OTHER_WORDS = 20_000  # words of each other language (their frequent words cover most text)
ROW_FLOOR = 0.25  # least importance of a row, as a share of the mean (row_importance)
CALIBRATION_HALF = 20_000  # calibration tokens at which the counts weigh as much as the prior
CAPITALIZED_SHARE = 0.15  # of a word's frequency given to its capitalized form (sentence starts)
# Punctuation, which word lists leave out: rough rates per word of English prose (straight and
# typographic quotes alike, as published text uses both).
PUNCTUATION = {
    ",": 0.05,
    ".": 0.045,
    '"': 0.006,
    "\u201c": 0.004,
    "\u201d": 0.004,
    "'": 0.004,
    "\u2018": 0.002,
    "\u2019": 0.006,
    "-": 0.006,
    "\u2013": 0.001,
    "\u2014": 0.002,
    "?": 0.003,
    "!": 0.002,
    ":": 0.003,
    ";": 0.002,
    "(": 0.002,
    ")": 0.002,
    "/": 0.001,
    "...": 0.001,
    "\u2026": 0.0005,
    "%": 0.0005,
    "$": 0.0005,
    "&": 0.0003,
}
# Every other printable ASCII character, digits and the symbols of code, markup and numbers: few
# rows, so weighing them costs nothing, and text that is mostly symbols (code) keeps them fine.
PUNCTUATION.update(
    {
        c: (0.001 if c.isdigit() else 0.0002)
        for c in map(chr, range(33, 127))
        if c not in PUNCTUATION and not c.isalpha()
    }
)


@functools.lru_cache(maxsize=32)
def _words(lang: str, n: int = PRIOR_WORDS) -> tuple[tuple[str, ...], np.ndarray] | None:
    try:
        import wordfreq
    except ImportError:
        return None
    try:  # the list's own frequencies (word_frequency would re-tokenize: jieba, MeCab ...)
        table = wordfreq.get_frequency_dict(lang)
        words = [w for w in wordfreq.top_n_list(lang, n) if table.get(w, 0) > 0]
        freqs = np.array([table[w] for w in words], np.float64)
    except (LookupError, ValueError, ImportError, OSError):
        return None
    finally:
        _forget(wordfreq)
    if not words:
        return None
    return tuple(words), freqs


def _forget(wordfreq: Any) -> None:
    """Empty wordfreq's own caches: they keep every language's whole word list and dictionary
    for the life of the process (670 MB for the 21 languages of ``en,world``), where the prior
    needs only the words kept here."""
    for name in ("get_frequency_dict", "get_frequency_list", "top_n_list"):
        clear = getattr(getattr(wordfreq, name, None), "cache_clear", None)
        if clear is not None:
            clear()


def languages(spec: str) -> list[str]:
    """The languages of a ``--token-prior`` value: ``en``, ``en,de``, or ``en,world`` (English
    and ``WORLD``); the first is the main one."""
    out: list[str] = []
    for part in spec.split(","):
        for lang in WORLD if part.strip() == "world" else (part.strip(),):
            if lang and lang not in out:
                out.append(lang)
    return out


def word_prior(tokenizer: Any, vocab: int, lang: str | None = DEFAULT_PRIOR) -> np.ndarray | None:
    """``p`` (vocab,) summing to 1: the prior token frequencies of ``lang`` (one language, or
    several: see :func:`languages`; the first has ``MAIN_SHARE`` of the mass, the others share
    the rest, ``OTHER_WORDS`` words each) under ``tokenizer`` (a ``tokenizers.Tokenizer``), or
    None without ``wordfreq`` or a word list for the main language. A language with no word
    list is left out."""
    langs = languages(lang) if lang else []
    if not langs:
        return None
    key = _prior_key(tokenizer, vocab, langs)
    if key is not None:  # computed before for this tokenizer (cmf.cache): seconds saved
        got = cache.load_array("token-prior", key, lambda a: _is_prior(a, vocab))
        if got is not None:
            return got
    prior = _word_prior(tokenizer, vocab, langs)
    if key is not None and prior is not None:
        cache.save_array("token-prior", key, prior)
    return prior


def _prior_key(tokenizer: Any, vocab: int, langs: list[str]) -> str | None:
    """The cache key of a prior: the tokenizer, the languages, the word lists' version and every
    constant of the recipe; None for a tokenizer that cannot be serialized."""
    try:
        import wordfreq

        text = tokenizer.to_str()
    except Exception:  # no wordfreq (no prior anyway), or not a tokenizers.Tokenizer
        return None
    version = getattr(wordfreq, "__version__", "?")
    recipe = (PRIOR_WORDS, OTHER_WORDS, MAIN_SHARE, CAPITALIZED_SHARE, CONTEXT_FORMS)
    return cache.key_of("token-prior 1", text, vocab, langs, version, recipe, PUNCTUATION)


def _is_prior(a: np.ndarray, vocab: int) -> bool:
    return (
        a.dtype == np.float64
        and a.shape == (vocab,)
        and bool(np.isfinite(a).all())
        and bool((a >= 0).all())
        and abs(float(a.sum()) - 1.0) < 1e-6
    )


def _word_prior(tokenizer: Any, vocab: int, langs: list[str]) -> np.ndarray | None:
    """:func:`word_prior` computed (not cached)."""
    main = _one_prior(tokenizer, vocab, langs[0], PRIOR_WORDS)
    if main is None or len(langs) == 1:
        return main
    others = [
        q
        for q in (_one_prior(tokenizer, vocab, x, OTHER_WORDS) for x in langs[1:])
        if q is not None
    ]
    if not others:
        return main
    return MAIN_SHARE * main + (1 - MAIN_SHARE) * np.mean(others, axis=0)


def _one_prior(tokenizer: Any, vocab: int, lang: str, n: int) -> np.ndarray | None:
    """One language's token frequencies (its ``n`` most frequent words and ``PUNCTUATION``).
    Words are tokenized in running text (see :func:`_spread`), as the model sees them."""
    got = _words(lang, n)
    if got is None:
        return None
    words, freqs = got
    tok = _plain(tokenizer)
    p = np.zeros(vocab, np.float64)
    _spread(tok, list(words), freqs * (1 - CAPITALIZED_SHARE), p)
    _spread(tok, [w[:1].upper() + w[1:] for w in words], freqs * CAPITALIZED_SHARE, p)
    marks = list(PUNCTUATION)  # after a word, as they are written: "a," (the "a" not counted)
    _spread(
        tok,
        ["a" + m for m in marks],
        np.array([PUNCTUATION[m] for m in marks]) * freqs.sum(),
        p,
        skip=1,
    )
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


def _spread(
    tokenizer: Any, forms: Sequence[str], mass: np.ndarray, p: np.ndarray, skip: int = 0
) -> None:
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
        keep = (
            (offs[:, 1] > offs[:, 0]) & (form >= 0) & (last >= starts[np.maximum(form, 0)] + skip)
        )
        keep &= (ids >= 0) & (ids < vocab)
        ids, form = ids[keep], form[keep]
        per = np.bincount(form, minlength=len(chunk))  # tokens of each form
        np.add.at(p, ids, mass[i : i + len(chunk)][form] / per[form])


def token_frequencies(
    calibration_ids: Sequence[Sequence[int]], vocab: int, prior: np.ndarray | None
) -> np.ndarray | None:
    """``p`` (vocab,) summing to 1: ``prior`` mixed with the token counts of the calibration
    sequences (module docstring); None without a prior or without calibration tokens."""
    if prior is None or prior.shape != (vocab,):
        return None
    ids = np.concatenate(
        [np.asarray(s, np.int64).reshape(-1) for s in calibration_ids] or [np.zeros(0, np.int64)]
    )
    counts = np.bincount(ids[(ids >= 0) & (ids < vocab)], minlength=vocab).astype(np.float64)
    n = counts.sum()
    if n <= 0:
        return None
    share = n / (n + CALIBRATION_HALF)
    return (1 - share) * prior + share * counts / n


def row_importance(p: np.ndarray) -> np.ndarray:
    """The rows' importance (vocab,), mean 1: ``sqrt(p)`` (module docstring), at least
    ``ROW_FLOOR`` times the mean, so that a token the prior and the calibration never saw (a
    word of another language, an identifier) keeps a step at most ``ROW_FLOOR ** -0.5`` times
    an average row's: the prior shapes the steps, it never starves a row."""
    r = np.sqrt(np.asarray(p, np.float64))
    r = np.maximum(r / r.mean(), ROW_FLOOR)
    return r / r.mean()
