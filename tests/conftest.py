"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path
from pydoc_data.topics import topics

import pytest

from saelab.models import train_bpe_tokenizer


@pytest.fixture(scope="session")
def small_tokenizer_dir(tmp_path_factory) -> Path:
    """A 400-token byte-level BPE tokenizer (trained on Python's own docs), for the small
    random HF models of ``hf_models``."""
    out = tmp_path_factory.mktemp("tok400")
    train_bpe_tokenizer([topics[key] for key in sorted(topics)[:20]], 400, out)
    return out
