"""Fixtures shared by the tests of this folder (moved verbatim from tests/test_models.py)."""

from __future__ import annotations

import pytest

from saelab.models import (
    train_bpe_tokenizer,
    train_tiny_lm,
)
from tests.models.helpers import DOC_TEXTS, TINY, TINY_VOCAB, _contexts


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    """Tokenizer + tiny LM trained on the Python docs, laid out as data/models/tiny."""
    model_dir = tmp_path_factory.mktemp("models") / "tiny"
    tokenizer = train_bpe_tokenizer(DOC_TEXTS, TINY_VOCAB, model_dir / "tokenizer")
    tokens = _contexts(tokenizer, DOC_TEXTS, 64)
    special = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    result = train_tiny_lm(tokens, TINY, model_dir / "tiny", TINY_VOCAB, special_mask=special)
    return model_dir, tokens, special, result
