"""Tests of ``saelab.data.tokens``, moved from tests/test_data.py.

Notes shared with the other tests moved from tests/test_data.py: ``tests/data/__init__.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from saelab.data import (
    CorpusError,
    TokenizedCorpus,
    TokensNotFoundError,
    load_tokens,
    save_tokens,
    tokenize_documents,
)

# ------------------------------------------------------------------------------------------
# token store
# ------------------------------------------------------------------------------------------


@pytest.fixture
def small_corpus(words) -> TokenizedCorpus:
    texts = [" ".join("abcdefghij"[i % 7 :]) for i in range(40)]
    return tokenize_documents(texts, words, 16, 12, "per_context", 5, progress=False)


def test_save_load_roundtrip(small_corpus, tmp_path):
    path = tmp_path / "tokens.zarr"
    save_tokens(small_corpus, path, {"bos": "per_context", "seed": 5, "tokenizer": "words"})
    assert not Path(f"{path}.tmp").exists()
    store = load_tokens(path)
    assert np.array_equal(store.corpus.tokens, small_corpus.tokens)
    assert store.corpus.tokens.dtype == np.int32
    assert np.array_equal(store.corpus.special_mask, small_corpus.special_mask)
    assert store.corpus.fingerprint == small_corpus.fingerprint
    attrs = store.attrs
    assert attrs["tokenizer"] == "words" and attrs["bos"] == "per_context"
    assert (attrs["seed"], attrs["context_len"], attrs["n_contexts"]) == (5, 16, 12)
    assert attrs["n_tokens"] == 192 and attrs["fingerprint"] == small_corpus.fingerprint
    # overwriting an existing store works
    save_tokens(small_corpus, path, {"bos": "per_context", "seed": 5})
    assert "tokenizer" not in load_tokens(path).attrs


def test_save_refuses_wrong_settings(small_corpus, tmp_path):
    path = tmp_path / "tokens.zarr"
    with pytest.raises(ValueError, match="fingerprint"):
        save_tokens(small_corpus, path, {"bos": "per_context", "seed": 6})
    with pytest.raises(ValueError, match="seed"):
        save_tokens(small_corpus, path, {"bos": "per_context"})
    assert not path.exists()


def test_interrupted_save_leaves_no_store(small_corpus, tmp_path, monkeypatch):
    import zarr

    real = zarr.Group.create_array
    calls = []

    def failing(self, name, **kwargs):
        calls.append(name)
        if len(calls) == 2:  # tokens written, then the job dies
            raise KeyboardInterrupt
        return real(self, name, **kwargs)

    attrs = {"bos": "per_context", "seed": 5}
    path = tmp_path / "tokens.zarr"
    monkeypatch.setattr(zarr.Group, "create_array", failing)
    with pytest.raises(KeyboardInterrupt):
        save_tokens(small_corpus, path, attrs)
    assert calls == ["tokens", "special_mask"]
    assert not path.exists() and not Path(f"{path}.tmp").exists()

    # an older complete store survives a failed rewrite
    monkeypatch.setattr(zarr.Group, "create_array", real)
    save_tokens(small_corpus, path, {**attrs, "version": "old"})
    calls.clear()
    monkeypatch.setattr(zarr.Group, "create_array", failing)
    with pytest.raises(KeyboardInterrupt):
        save_tokens(small_corpus, path, {**attrs, "version": "new"})
    assert load_tokens(path).attrs["version"] == "old"


def test_load_missing_names_rule(tmp_path):
    path = tmp_path / "nothing.zarr"
    with pytest.raises(FileNotFoundError) as err:
        load_tokens(path)
    assert isinstance(err.value, TokensNotFoundError)
    assert str(path) in str(err.value) and "tokenize_corpus" in str(err.value)


def test_load_detects_corruption(small_corpus, tmp_path):
    import zarr

    path = tmp_path / "tokens.zarr"
    save_tokens(small_corpus, path, {"bos": "per_context", "seed": 5})
    zarr.open_group(str(path), mode="r+")["tokens"][0, 1] = 7
    with pytest.raises(CorpusError, match="corrupt"):
        load_tokens(path)
    assert load_tokens(path, verify=False).corpus.tokens[0, 1] == 7


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_token_chunk_names_array_chunk_and_command(small_corpus, tmp_path, damage):
    from saelab.cache import CorruptChunkError

    path = tmp_path / "tokens.zarr"
    save_tokens(small_corpus, path, {"bos": "per_context", "seed": 5})
    chunk = path / "special_mask" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[:-3]
    chunk.write_bytes(bytes(data))
    with pytest.raises(CorruptChunkError) as err:
        load_tokens(path)
    message = str(err.value)
    assert "chunk 0 of array 'special_mask'" in message and str(chunk) in message
    assert f"snakemake --cores all --force {path}" in message
