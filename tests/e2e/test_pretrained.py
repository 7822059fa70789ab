"""End-to-end tests (they run Snakemake) moved from tests/test_pretrained.py.

Notes shared with the other tests moved from tests/test_pretrained.py:
``tests/saes/__init__.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.saes.helpers_pretrained import MICRO, REPO, add_release, sae_lens, saelens_sae


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ------------------------------------------------------------------ the micro DAG on releases

MICRO_OVERLAY = REPO / "tests" / "config" / "micro-pretrained.yaml"


def sparse_release(kind: str, d_sae: int, l0: int, hook: str, seed: int, d_in: int = 64):
    """A sae_lens SAE that behaves like a release on the tiny model: tied unit-norm random
    directions; ``topk`` (OpenAI v5 style, k = ``l0``, raw inputs as pursuit needs) or
    ``standard`` on layer-normed inputs (pre-activations ~N(0, 1) along unit directions) with
    an encoder bias giving about ``l0`` active latents."""
    from scipy.stats import norm

    sae = saelens_sae(kind, d_in=d_in, d_sae=d_sae, hook=hook, seed=seed)
    if kind == "topk":
        sae.cfg.k = l0
        sae.activation_fn = type(sae.activation_fn)(l0)
        sae.cfg.normalize_activations = "none"
    else:
        sae.cfg.normalize_activations = "layer_norm"
    sae._setup_activation_normalization()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        directions = torch.randn(d_sae, d_in, generator=g)
        directions /= directions.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(directions)
        sae.W_enc.copy_(directions.T)
        sae.b_dec.zero_()
        sae.b_enc.fill_(0.0 if kind == "topk" else -float(norm.isf(l0 / d_sae)))
    return sae


def build_micro_releases(workdir: Path) -> None:
    """The local releases tests/config/micro-pretrained.yaml names, in workdir/data/releases."""
    store = workdir / "data" / "releases"
    hook = "blocks.1.hook_resid_pre"
    add_release(store, "local/tiny-res-jb", hook, sparse_release("standard", 256, 12, hook, 0))
    for i, (width, l0) in enumerate([(64, 4), (64, 8), (128, 4), (128, 8), (256, 8)]):
        sae = sparse_release("topk", width, l0, hook, 10 + i)
        add_release(store, "local/tiny-scope", f"layer_1/width_{width}/average_l0_{l0}", sae)
    for layer in (0, 1):
        mid = f"blocks.{layer}.hook_resid_mid"
        sae = sparse_release("topk", 128, 8, mid, 20 + layer)
        add_release(store, "local/tiny-scope-mid", f"layer_{layer}/width_128/canonical", sae)


def test_micro_dag_without_a_release_stops_before_any_job(tmp_path):
    from tests.conftest import snakemake

    result = snakemake(tmp_path, "-n", "--configfile", str(MICRO), str(MICRO_OVERLAY), check=False)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "invalid config: saes.resjb.pretrained: pretrained SAE 'local/tiny-res-jb'" in out
    assert "hf download local/tiny-res-jb --include 'blocks.1.hook_resid_pre/*'" in out
    assert not (tmp_path / "logs").exists()


def test_micro_dag_plans_releases_instead_of_training(tmp_path):
    from tests.conftest import snakemake

    build_micro_releases(tmp_path)
    plan = snakemake(tmp_path, "-n", "--configfile", str(MICRO), str(MICRO_OVERLAY)).stdout
    assert "pretrained_sae" in plan
    # the released families replace the trained ones: nothing trains them
    assert "train_saes_dm_release" not in plan and "train_saes_mid_release" not in plan
    assert "train_saes_darkmatter" not in plan and "train_saes_layers" not in plan
    assert "train_saes_resid" in plan  # the Matryoshka SAE the comparator is compared with


@pytest.mark.slow
def test_micro_dag_with_releases_in_every_analysis(tmp_path):
    """The micro DAG with released SAEs in evaluation, co-occurrence, dark matter, trajectories
    and feature pages: every analysis reads them through load_sae like trained ones."""
    from tests.conftest import snakemake

    build_micro_releases(tmp_path)
    snakemake(tmp_path, "--cores", "2", "--configfile", str(MICRO), str(MICRO_OVERLAY))
    check_release_outputs(tmp_path)


def check_release_outputs(workdir: Path) -> None:
    """What the micro DAG on releases must have produced in ``workdir``."""
    tmp_path = workdir
    resjb = tmp_path / "results/tiny/blocks.1.hook_resid_pre/resjb"
    source = json.loads((resjb / "config.json").read_text())
    assert source["pretrained"] == {**source["pretrained"], "release": "local/tiny-res-jb",
                                    "sae_id": "blocks.1.hook_resid_pre"}  # fmt: skip
    assert sae_lens.SAE.load_from_disk(resjb).cfg.metadata.hook_name == "blocks.1.hook_resid_pre"
    assert (tmp_path / "logs/pretrained_sae/tiny/blocks.1.hook_resid_pre/resjb.log").is_file()
    metrics = json.loads(
        (tmp_path / "data/analysis/evaluation/tiny/blocks.1.hook_resid_pre/resjb.json").read_text()
    )
    assert metrics
    text = json.dumps(metrics)
    assert "ce_loss_score" in text
    # co-occurrence: the release gets pretend groups
    summary = json.loads(
        (tmp_path / "data/analysis/cooccurrence/tiny/summary_tau0_0.json").read_text()
    )["saes"]
    assert summary["resjb"]["pretend_groups"] and not summary["matryoshka"]["pretend_groups"]
    assert summary["resjb"]["group_sizes"] == summary["matryoshka"]["group_sizes"]
    # dark matter on the release grid, trajectories on the per-layer releases
    assert (tmp_path / "plots/darkmatter").is_dir() and any(
        (tmp_path / "plots/darkmatter").iterdir()
    )
    for layer in (0, 1):
        assert (
            tmp_path / f"results/tiny/blocks.{layer}.hook_resid_mid/mid-release-l{layer}"
        ).is_dir()
    assert list((tmp_path / "plots/trajectories").rglob("graph_T6.png"))
