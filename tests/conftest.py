"""Fixtures shared by several test modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from pydoc_data.topics import topics
from types import SimpleNamespace

import pytest

from saelab.models import train_bpe_tokenizer
from saelab.schema import REPO_ROOT
from saelab.toy import HierarchyConfig, compare_architectures
from saelab.train import TrainConfig, build_saes, train_saes
from tests.training.helpers import (
    BATCH,
    DEAD_TOKENS,
    GROUP_STEPS,
    LOG_EVERY,
    group_specs,
    make_cache,
    widths_of,
)

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


#: Released SAEs the presets name: (release, ids).
PRESET_RELEASES = {
    "gpt2-small.yaml": [("gpt2-small-res-jb", ["blocks.8.hook_resid_pre"])],
    "gemma-2-9b-darkmatter.yaml": [("gemma-scope-9b-pt-res", [
        f"layer_20/width_{w}/average_l0_{l0}" for w, l0 in (
            ("16k", 58), ("32k", 57), ("65k", 55), ("131k", 62), ("262k", 50), ("524k", 48),
            ("1m", 57), ("16k", 11), ("16k", 20), ("16k", 36), ("16k", 68), ("16k", 138),
            ("16k", 310), ("16k", 408))])],
    "gemma-2-2b-trajectories.yaml": [("gemma-scope-2b-pt-res-canonical", [
        f"layer_{layer}/width_65k/canonical" for layer in range(26)])],
}  # fmt: skip


def placeholder_releases(root: Path, preset: str) -> Path:
    """Stand-ins for a preset's releases in ``root/data/releases`` (the real ones are GBs):
    a placeholder file in each release folder, so that SAE-Lens's config getter resolves the
    release offline. Gemma Scope's getter reads nothing (hook and width come from the id);
    for res-jb the stand-in is a cfg.json in the release's pre-6.0 layout with its published
    d_in, d_sae and hook. Returns the store."""
    from sae_lens.loading.pretrained_saes_directory import get_repo_id_and_folder_name

    store = root / "data" / "releases"
    for release, ids in PRESET_RELEASES.get(preset, []):
        for sae_id in ids:
            repo, folder = get_repo_id_and_folder_name(release, sae_id)
            path = store / repo / folder
            path.mkdir(parents=True, exist_ok=True)
            if release == "gpt2-small-res-jb":
                cfg = {"model_name": "gpt2-small", "hook_point": sae_id, "hook_point_layer": 8,
                       "d_in": 768, "d_sae": 24576, "dtype": "float32", "device": "cpu"}  # fmt: skip
                (path / "cfg.json").write_text(json.dumps(cfg))
            else:
                (path / "params.npz").write_bytes(b"placeholder")
    return store


@pytest.fixture
def in_preset_store(tmp_path, monkeypatch):
    """Run in a fresh directory holding stand-ins of every preset's releases, offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    for preset in PRESET_RELEASES:
        placeholder_releases(tmp_path, preset)
    return tmp_path


# The synthetic cache and the trained group of tests/test_train.py and tests/training/ (moved
# verbatim from tests/test_train.py; a module's own `cache` fixture takes precedence).
@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_cache(tmp_path_factory.mktemp("cache") / "synthetic.zarr")


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory):
    """The whole group trained in one pass; each SAE's training inputs recorded."""
    root = tmp_path_factory.mktemp("group")
    saes = build_saes(group_specs(), widths_of(cache))
    seen: dict[str, list[float]] = {name: [] for name in saes}
    for name, sae in saes.items():
        original = sae.forward

        def spy(x, target=None, _name=name, _original=original, _sae=sae):
            if _sae.training:
                seen[_name].append(float(x.double().sum()))
            return _original(x, target)

        sae.forward = spy
    cfg = TrainConfig(
        n_tokens=GROUP_STEPS * BATCH, batch_size=BATCH, lr=1e-2, log_every=LOG_EVERY,
        checkpoint_every=100, seed=3, dead_tokens=DEAD_TOKENS,
    )  # fmt: skip
    out_dirs = {name: root / name for name in saes}
    results = train_saes(cache, saes, cfg, out_dirs, progress=False)
    return SimpleNamespace(
        saes=saes, results=results, out_dirs=out_dirs, seen=seen, cfg=cfg, cache=cache
    )


# The toy comparison of tests/toy/test_compare.py and tests/plots/test_toy.py (moved from
# tests/test_toy.py; session scope so that the two modules share one ~40 s CPU run, as before).
@pytest.fixture(scope="session")
def comparison():
    """The default toy and training settings, three seeds of each architecture."""
    return compare_architectures(
        HierarchyConfig(), archs=["topk", "batchtopk", "matryoshka"], seeds=[0, 1, 2]
    )
