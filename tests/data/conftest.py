"""Fixtures shared by the tests of this folder (moved verbatim from tests/test_data.py)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from saelab.data import (
    python_docs_documents,
)
from tests.data.helpers import SPECIALS, _wrap

# ------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def docs() -> list[str]:
    return python_docs_documents()


@pytest.fixture(scope="session")
def words() -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose ids can be written by hand: a=3, b=4, ..., z=28."""
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    vocab |= {chr(ord("a") + i): 3 + i for i in range(26)}
    vocab["<unk>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return _wrap(
        tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>", unk_token="<unk>"
    )
