"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from pydoc_data.topics import topics

import pytest

from saelab.config import REPO_ROOT
from saelab.models import train_bpe_tokenizer

MICRO = REPO_ROOT / "tests" / "config" / "micro.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO_ROOT / "Snakefile")]


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the repository's Snakefile in ``workdir`` (offline), failing with its output tail."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), *args],
        capture_output=True, text=True, env=env, timeout=3600,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory) -> Path:
    """The whole default DAG (``rule all``) run once on the micro config; its working directory.

    Every analysis's end-to-end test reads its outputs from here, so the DAG runs once per session.
    """
    workdir = tmp_path_factory.mktemp("micro_run")
    snakemake(workdir, "--cores", "2", "--configfile", str(MICRO))
    return workdir


@pytest.fixture(scope="session")
def small_tokenizer_dir(tmp_path_factory) -> Path:
    """A 400-token byte-level BPE tokenizer (trained on Python's own docs), for the small
    random HF models of ``hf_models``."""
    out = tmp_path_factory.mktemp("tok400")
    train_bpe_tokenizer([topics[key] for key in sorted(topics)[:20]], 400, out)
    return out


@pytest.fixture(scope="module")
def tiny_model():
    """A random 2-layer TransformerLens model (d 32, vocab 60) for CE-splicing tests."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=16, d_vocab=60,
        act_fn="gelu", normalization_type="LN", seed=0,
    )  # fmt: skip
    return HookedTransformer(cfg).eval()
