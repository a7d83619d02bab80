"""cmf.cache: derived arrays kept between runs, never trusted blindly."""

from __future__ import annotations

import numpy as np
import pytest

from cmf import cache
from cmf.plan import tokens


def test_where_and_off(monkeypatch, tmp_path):
    monkeypatch.setenv("CMF_CACHE_DIR", str(tmp_path))
    assert cache.cache_dir() == str(tmp_path)
    monkeypatch.setenv("CMF_CACHE_DIR", "off")
    assert cache.cache_dir() is None
    cache.save_array("k", "a", np.ones(3))  # off: nothing written, no error
    assert cache.load_array("k", "a", lambda a: True) is None
    monkeypatch.delenv("CMF_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == str(tmp_path / "xdg" / "cmf")


def test_round_trip_check_and_bad_entries(monkeypatch, tmp_path):
    monkeypatch.setenv("CMF_CACHE_DIR", str(tmp_path))
    key = cache.key_of("x", 1, (2, 3))
    assert key != cache.key_of("x", 1, (2, 4)) and len(key) == 64
    cache.save_array("kind", key, np.arange(5.0))
    np.testing.assert_array_equal(
        cache.load_array("kind", key, lambda a: a.size == 5), np.arange(5.0)
    )
    assert cache.load_array("kind", key, lambda a: a.size == 6) is None  # the check refuses it
    (tmp_path / "kind" / f"{key}.npy").write_bytes(b"\x93NUMPY garbage")  # corrupt: recomputed
    assert cache.load_array("kind", key, lambda a: True) is None
    pickled = tmp_path / "kind" / "p.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert cache.load_array("kind", "p", lambda a: True) is None  # never unpickled
    (tmp_path / "ro").write_text("a file where a directory should be")
    cache.save_array("ro", key, np.ones(2))  # cannot be written: skipped, no error


def test_the_token_prior_is_computed_once_per_tokenizer(monkeypatch, tmp_path):
    pytest.importorskip("tokenizers")
    pytest.importorskip("wordfreq")
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "the": 1, "cat": 2, "a": 3, ",": 4, ".": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    monkeypatch.setenv("CMF_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tokens, "_words", lambda lang, n=0: (("the", "cat"), np.array([3.0, 1.0])))
    first = tokens.word_prior(tok, 6, "en")
    assert first is not None and list((tmp_path / "token-prior").glob("*.npy"))

    def not_again(*a, **k):
        raise AssertionError("computed again")

    monkeypatch.setattr(tokens, "_word_prior", not_again)
    np.testing.assert_array_equal(tokens.word_prior(tok, 6, "en"), first)  # from the cache
    with pytest.raises(AssertionError, match="computed again"):
        tokens.word_prior(tok, 6, "en,de")  # another prior: another entry
