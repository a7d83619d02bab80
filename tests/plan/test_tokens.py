"""Token frequencies for the token-embedding rows (cmf.plan.tokens), with a small word list in
place of wordfreq's (the real one: tests/plan/test_tokens.py::test_wordfreq_prior, skipped
without it)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cmf.plan import tokens


class FakeTokenizer:
    """Word-level over whitespace: each known word one id, unknown words split into characters
    (ids 100+), with character offsets as ``tokenizers`` gives them."""

    vocab = {"the": 1, "cat": 2, "sat": 3, "zebra": 4}

    class _Enc:
        def __init__(self, ids, offsets):
            self.ids, self.offsets = ids, offsets

    def encode_batch(self, texts, add_special_tokens=True):
        out = []
        for t in texts:
            ids, offsets = [], []
            for m in re.finditer(r"\S+", t):
                w = m.group().lower()
                if w in self.vocab:
                    ids.append(self.vocab[w])
                    offsets.append((m.start(), m.end()))
                else:
                    for j, c in enumerate(w):
                        ids.append(100 + ord(c) % 20)
                        offsets.append((m.start() + j, m.start() + j + 1))
            out.append(self._Enc(ids, offsets))
        return out


@pytest.fixture
def words(monkeypatch):
    table = (("the", "cat", "sat", "xy"), np.array([0.6, 0.2, 0.1, 0.1]))
    monkeypatch.setattr(tokens, "_words", lambda lang, n=0: table if lang == "en" else None)


def test_word_prior_shares_each_words_frequency_among_its_tokens(words, monkeypatch):
    monkeypatch.setattr(tokens, "PUNCTUATION", {})
    p = tokens.word_prior(FakeTokenizer(), 128, "en")
    assert p.sum() == pytest.approx(1.0)
    assert p[1] == pytest.approx(0.6) and p[2] == pytest.approx(0.2) and p[4] == 0.0
    x, y = 100 + ord("x") % 20, 100 + ord("y") % 20
    assert p[x] == pytest.approx(0.05) and p[y] == pytest.approx(
        0.05
    )  # "xy": two tokens, half each


def test_punctuation_gets_its_rate_per_word(words, monkeypatch):
    monkeypatch.setattr(tokens, "PUNCTUATION", {"!": 0.25})  # one mark per four words
    p = tokens.word_prior(FakeTokenizer(), 128, "en")
    bang = 100 + ord("!") % 20
    assert p[bang] == pytest.approx(0.2) and p[1] == pytest.approx(0.6 / 1.25)


def test_several_languages_share_the_prior(monkeypatch):
    monkeypatch.setattr(tokens, "PUNCTUATION", {})
    tables = {
        "en": (("the", "cat"), np.array([0.5, 0.5])),
        "de": (("sat",), np.array([1.0])),
        "fr": (("zebra",), np.array([1.0])),
    }
    monkeypatch.setattr(tokens, "_words", lambda lang, n=0: tables.get(lang))
    p = tokens.word_prior(FakeTokenizer(), 128, "en,de,fr,xx")  # xx: no word list, left out
    assert p.sum() == pytest.approx(1.0)
    assert p[1] == pytest.approx(0.375) and p[2] == pytest.approx(0.375)  # the main language: 3/4
    assert p[3] == pytest.approx(0.125) and p[4] == pytest.approx(0.125)  # the others share 1/4
    assert (
        tokens.languages("en,world")[:3] == ["en", "de", "fr"]
        and len(tokens.languages("en,world")) == 21
    )
    assert tokens.word_prior(FakeTokenizer(), 128, "xx,de") is None  # the main language has none


def test_no_prior_without_a_word_list_or_a_language(words):
    assert tokens.word_prior(FakeTokenizer(), 128, "xx") is None
    assert tokens.word_prior(FakeTokenizer(), 128, None) is None
    assert tokens.token_frequencies([[1, 2]], 128, None) is None


def test_calibration_counts_weigh_by_how_many_tokens_there_are():
    prior = np.zeros(8)
    prior[1] = 1.0
    few = tokens.token_frequencies([[2, 2, 3]], 8, prior)  # 3 tokens: the prior dominates
    assert few.sum() == pytest.approx(1.0) and few[1] > 0.99 and few[2] > few[3] > 0
    many = tokens.token_frequencies([[2] * 60_000], 8, prior)  # 3x CALIBRATION_HALF: the counts do
    assert many[2] == pytest.approx(0.75) and many[1] == pytest.approx(0.25)
    assert tokens.token_frequencies([[]], 8, prior) is None
    assert (
        tokens.token_frequencies([[50, -1]], 8, prior) is None
    )  # ids outside the vocabulary: ignored
    assert tokens.token_frequencies([[1]], 9, prior) is None  # a prior of another vocabulary


def test_row_importance_is_the_square_root_with_mean_one():
    r = tokens.row_importance(np.array([0.64, 0.16, 0.16, 0.04]))
    assert r.mean() == pytest.approx(1.0)
    assert r[0] / r[3] == pytest.approx(4.0)


def test_row_importance_never_starves_a_row():
    p = np.zeros(1000)
    p[:10] = 0.1  # ten frequent tokens; 990 the prior never saw
    r = tokens.row_importance(p)
    assert r.mean() == pytest.approx(1.0)
    assert r[999] > 0 and r[999] == r[10:].max() == r.min()  # a floor, not zero
    # sqrt(p) / mean is 100 for the frequent rows, 0 -> ROW_FLOOR for the others
    assert r[0] / r[999] == pytest.approx(100 / tokens.ROW_FLOOR)


def test_wordfreq_prior_on_a_real_tokenizer():
    pytest.importorskip("wordfreq")
    tok = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    vocab = {"[UNK]": 0, "the": 1, "of": 2, "zebra": 3, "quixotic": 4}
    t = tok.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    p = tokens.word_prior(t, 5, "en")
    assert p[1] > p[2] > p[3] > p[4] > 0  # "the" most frequent, "quixotic" rare
    assert p[0] > 0.5  # every other word is unknown here


def test_words_are_tokenized_in_running_text():
    """A SentencePiece tokenizer that prepends its word marker in the normalizer ("legacy", as
    Llama 2's): " the" alone would give a lone marker; in running text each word is "▁word"."""
    tok = pytest.importorskip("tokenizers")
    from tokenizers import models, normalizers

    vocab = {"<unk>": 0, "\u2581": 1, "\u2581the": 2, "\u2581cat": 3, "\u2581\u2581": 4}
    t = tok.Tokenizer(
        models.WordPiece(
            vocab, unk_token="<unk>", continuing_subword_prefix="", max_input_chars_per_word=100
        )
    )
    t.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    p = np.zeros(5)
    tokens._spread(t, ["the", "cat", "the"], np.array([0.5, 0.3, 0.2]), p)
    assert p[2] == pytest.approx(0.7) and p[3] == pytest.approx(0.3) and p[1] == 0 and p[4] == 0
