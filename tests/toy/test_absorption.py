"""Tests of ``saelab.toy.absorption``, moved from tests/test_toy.py.

Notes shared with the other tests moved from tests/test_toy.py: ``tests/toy/__init__.py``."""

from __future__ import annotations

import math

import pytest
import torch

from saelab.saes import SAEConfig, build_sae
from saelab.toy import (
    HierarchyConfig,
    ToyHierarchy,
    absorption_report,
)


# ------------------------------------------------------------------------------ the metric
def _hand_built(toy: ToyHierarchy, fold: str):
    """A JumpReLU "SAE" with one latent per true feature, threshold 0.3 (every feature's
    magnitude is at least 0.45), so each latent fires exactly when its encoder direction's
    feature does.

    fold ``none``: decoder = encoder = the ground truth. ``all``: every child latent's decoder
    is parent + child and the parent latent never fires. ``first``: only each parent's first
    child is folded, and the parent latent's encoder (parent - first child) keeps it silent on
    exactly those tokens.
    """
    cfg = toy.cfg
    sae = build_sae(SAEConfig(arch="jumprelu", d_in=cfg.d_model, width=cfg.n_features, k=1))
    D = toy.directions
    W_enc, W_dec = D.T.clone(), D.clone()
    for p in range(cfg.n_parents if fold != "none" else 0):
        folded = toy.children[p] if fold == "all" else toy.children[p, :1]
        for c in folded.tolist():
            W_dec[c] = (D[p] + D[c]) / math.sqrt(2)
        W_enc[:, p] = 0.0 if fold == "all" else D[p] - D[toy.children[p, 0]]
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.W_dec.copy_(W_dec)
        sae.threshold.fill_(0.3)
    return sae


def test_absorption_metric_on_the_ground_truth_is_zero():
    toy = ToyHierarchy(HierarchyConfig())
    report = absorption_report(_hand_built(toy, "none"), toy, n_eval=8192)
    assert report.mean_absorption == 0.0 and report.min_parent_recall == 1.0
    assert abs(report.mean_child_parent_cos) < 1e-5
    assert report.fvu < 1e-8 and report.dead_fraction == 0.0
    assert report.l0 == pytest.approx(toy.cfg.expected_l0(), rel=0.05)
    assert report.parents["latent"].tolist() == toy.parents.tolist()
    assert report.pairs["child_latent"].tolist() == toy.children.reshape(-1).tolist()
    assert (report.pairs["child_recall"] == 1.0).all()
    assert (report.parents[["precision", "recall", "f1"]] == 1.0).all().all()
    f1 = absorption_report(_hand_built(toy, "none"), toy, n_eval=8192, match="f1")
    assert f1.mean_absorption == 0.0


def test_absorption_metric_on_a_fully_absorbed_sae_is_one():
    toy = ToyHierarchy(HierarchyConfig())
    sae = _hand_built(toy, "all")
    report = absorption_report(sae, toy, n_eval=8192)
    assert report.mean_absorption == 1.0 and report.mean_parent_recall == 0.0
    assert report.mean_child_parent_cos == pytest.approx(1 / math.sqrt(2), abs=1e-5)
    assert (report.parents["decoder_cos"] > 0.999).all()  # found the silent parent latents
    assert (report.pairs["child_recall"] == 1.0).all()
    # F1 matching takes one child's latent as the parent's: 1 - 1/C of the pairs absorbed
    by_f1 = absorption_report(sae, toy, n_eval=8192, match="f1")
    assert by_f1.mean_absorption == pytest.approx(1 - 1 / toy.cfg.children_per_parent)


def test_absorption_metric_per_child():
    toy = ToyHierarchy(HierarchyConfig())
    report = absorption_report(_hand_built(toy, "first"), toy, n_eval=8192)
    pairs = report.pairs.set_index(["parent", "child"])
    first = pairs.xs(0, level="child")
    rest = pairs.drop(index=0, level="child")
    assert (first["absorption_rate"] == 1.0).all() and (rest["absorption_rate"] == 0.0).all()
    assert report.mean_absorption == pytest.approx(1 / toy.cfg.children_per_parent)
    assert first["child_latent_parent_cos"].to_numpy() == pytest.approx(1 / math.sqrt(2), abs=1e-5)
    assert rest["child_latent_parent_cos"].abs().max() < 1e-5
    assert (pairs["n_tokens"] > 0).all()
