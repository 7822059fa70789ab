"""Helpers of data/conftest.py, data/test_contexts.py (moved verbatim from tests/test_data.py)."""

from __future__ import annotations

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>"]


def _wrap(tok: Tokenizer, **specials) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
