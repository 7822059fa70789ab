"""Helpers moved verbatim from tests/test_models.py, used by
tests/models/conftest.py
tests/models/test_load.py
tests/models/test_tiny.py
tests/models/test_tokenizer.py."""

from __future__ import annotations

from pydoc_data.topics import topics

import numpy as np

from saelab.config import TinyConfig

#: Python's own documentation: offline text that every Python install has.
DOC_TEXTS = [topics[key] for key in sorted(topics)]


def _contexts(tokenizer, texts: list[str], ctx: int) -> np.ndarray:
    """BOS + ctx-1 tokens per context, documents joined by EOS (a stand-in for saelab.data)."""
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer.encode(text))
        stream.append(tokenizer.eos_token_id)
    body = ctx - 1
    n = len(stream) // body
    rows = np.asarray(stream[: n * body], dtype=np.int64).reshape(n, body)
    return np.concatenate([np.full((n, 1), tokenizer.bos_token_id), rows], axis=1)


TINY_VOCAB = 512
TINY = TinyConfig(
    vocab_size=TINY_VOCAB, d_model=64, n_layers=1, n_heads=4, d_mlp=256, n_ctx=64,
    train_tokens=200_000, batch_size=16, lr=3e-3, seed=0, val_fraction=0.05,
)  # fmt: skip
