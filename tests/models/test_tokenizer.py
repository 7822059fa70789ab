"""Tests of ``saelab.models.tokenizer``, moved from tests/test_models.py.

Notes shared with the other tests moved from tests/test_models.py: ``tests/models/__init__.py``."""

from __future__ import annotations

from saelab.models import (
    load_tokenizer,
    train_bpe_tokenizer,
)
from tests.models.helpers import DOC_TEXTS

# --------------------------------------------------------------------------------------------
# Tiny model
# --------------------------------------------------------------------------------------------


def test_bpe_tokenizer_is_deterministic_and_lossless(tmp_path):
    first = train_bpe_tokenizer(DOC_TEXTS[:10], 320, tmp_path / "a" / "tokenizer")
    second = train_bpe_tokenizer(DOC_TEXTS[:10], 320, tmp_path / "b" / "tokenizer")
    assert first.get_vocab() == second.get_vocab()
    assert len(first) == 320
    assert (first.bos_token_id, first.eos_token_id, first.pad_token_id) == (0, 1, 2)
    text = "def f(x):\n    return x ** 2  # naïve ∑ — any bytes at all"
    ids = first.encode(text)
    assert ids == second.encode(text)
    assert first.decode(ids) == text  # byte-level: nothing is out of vocabulary
    assert 0 not in ids  # encode does not add BOS by itself
    reloaded = load_tokenizer(tmp_path / "a")  # reads model_dir/tokenizer
    assert reloaded.encode(text) == ids and reloaded.bos_token == "<|bos|>"
