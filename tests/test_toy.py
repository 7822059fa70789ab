"""The toy feature hierarchy: generator invariants, the absorption metric on hand-built SAEs with
known behaviour, the flat-vs-Matryoshka result over seeds, the figure and the Snakemake script."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from scipy.stats import mannwhitneyu

from saelab.plots.toy import plot_toy_absorption
from saelab.saes import SAEConfig, build_sae
from saelab.toy import (
    ArchSpec,
    HierarchyConfig,
    ToyHierarchy,
    absorption_report,
    compare_architectures,
    compare_from_params,
    default_group_sizes,
    split_params,
)

REPO = Path(__file__).resolve().parents[1]


def _within(observed: float, p: float, n: int, sigmas: float = 5.0) -> bool:
    """``observed`` is a Bernoulli(p) rate over n draws, within ``sigmas`` binomial SEs."""
    return abs(observed - p) <= sigmas * math.sqrt(p * (1 - p) / n)


# ------------------------------------------------------------------------------ ground truth
def test_generator_hierarchy_and_rates():
    cfg = HierarchyConfig(child_weights=[4, 2, 1, 1], parent_prob=0.3, extra_prob=0.1, seed=3)
    toy = ToyHierarchy(cfg)
    n = 200_000
    batch = toy.sample(n, generator=torch.Generator().manual_seed(0))
    active = batch.active
    assert active.shape == (n, cfg.n_features) and active.dtype == torch.bool
    for p in range(cfg.n_parents):
        parent_on = active[:, toy.parents[p]]
        n_children_on = active[:, toy.children[p]].sum(1)
        # exactly one child whenever the parent fires, and never a child without it
        assert torch.equal(n_children_on, parent_on.long())
        assert _within(parent_on.float().mean().item(), cfg.parent_prob, n)
        n_parent = int(parent_on.sum())
        for j, prob in enumerate(cfg.child_probs):
            rate = active[parent_on, toy.children[p, j]].float().mean().item()
            assert _within(rate, prob, n_parent), (p, j, rate, prob)
    for e in toy.extras:
        assert _within(active[:, e].float().mean().item(), cfg.extra_prob, n)
    # children of different parents and the extras are independent of a given parent
    both = (active[:, 0] & active[:, 1]).float().mean().item()
    assert _within(both, cfg.parent_prob**2, n)
    assert int(toy.parent_of[toy.children[2, 1]]) == 2 and int(toy.parent_of[0]) == -1


def test_generator_values_and_directions():
    cfg = HierarchyConfig(magnitude_noise=0.2, seed=1)
    toy = ToyHierarchy(cfg)
    batch = toy.sample(20_000)
    assert torch.allclose(toy.directions @ toy.directions.T, torch.eye(cfg.n_features), atol=1e-5)
    assert torch.allclose(batch.x, batch.values @ toy.directions, atol=1e-6)
    assert torch.all(batch.values[~batch.active] == 0)
    mean = toy.mean_magnitudes.expand_as(batch.values)[batch.active]
    ratio = batch.values[batch.active] / mean
    assert ratio.min() >= 1 - cfg.magnitude_noise and ratio.max() <= 1 + cfg.magnitude_noise
    assert toy.mean_magnitudes[toy.extras[0]] == cfg.extra_magnitude
    # seeded sampling is reproducible; the toy's own stream advances
    again = toy.sample(100, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again.x, toy.sample(100, generator=torch.Generator().manual_seed(5)).x)
    assert not torch.equal(toy.sample(100).x, toy.sample(100).x)
    # random (non-orthogonal) directions: unit norm, overlapping
    rand = ToyHierarchy(HierarchyConfig(orthogonal=False, d_model=16, seed=1))
    assert torch.allclose(rand.directions.norm(dim=1), torch.ones(rand.n_features), atol=1e-5)
    off_diag = (rand.directions @ rand.directions.T).fill_diagonal_(0)
    assert off_diag.abs().max() > 0.1
    assert len(toy.feature_names()) == cfg.n_features and toy.feature_names()[4] == "p0c0"


def test_config_validation():
    with pytest.raises(ValueError, match="d_model >= n_features"):
        HierarchyConfig(d_model=8)
    with pytest.raises(ValueError, match="child_weights"):
        HierarchyConfig(child_weights=[1, 2])
    with pytest.raises(ValueError, match="parent_prob"):
        HierarchyConfig(parent_prob=1.5)
    assert default_group_sizes(HierarchyConfig(), 28) == [4, 24]
    assert HierarchyConfig().expected_l0() == pytest.approx(3.0)


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


# ------------------------------------------------------------------------------ the result
@pytest.fixture(scope="module")
def comparison():
    """The default toy and training settings, three seeds of each architecture."""
    return compare_architectures(
        HierarchyConfig(), archs=["topk", "batchtopk", "matryoshka"], seeds=[0, 1, 2]
    )


def test_flat_saes_absorb_and_matryoshka_does_not(comparison):
    runs = comparison.runs
    print("\n" + runs.round(3).to_string())
    flat = runs[runs["arch"].isin(["topk", "batchtopk"])]
    matryoshka = runs[runs["arch"] == "matryoshka"]
    assert len(flat) == 6 and len(matryoshka) == 3
    # Observed over seeds 0-9: absorption topk 0.70-0.76, batchtopk 0.44-0.69, matryoshka 0.00
    # (0.06 on seed 2: one of its 16 pairs absorbed); child-parent cosine topk 0.54-0.60,
    # batchtopk 0.31-0.45, matryoshka -0.00-0.08.
    assert (flat["absorption_rate"] > 0.3).all()
    assert flat["absorption_rate"].mean() > 0.5
    assert (matryoshka["absorption_rate"] < 0.15).all()
    assert matryoshka["absorption_rate"].mean() < 0.1
    # Every seed separates: the least-absorbing flat run absorbs far more than any Matryoshka one
    # (which makes the one-sided rank test as significant as 6 vs 3 runs allow, p = 1/84).
    assert flat["absorption_rate"].min() - matryoshka["absorption_rate"].max() > 0.25
    test = mannwhitneyu(
        flat["absorption_rate"], matryoshka["absorption_rate"], alternative="greater"
    )
    assert test.pvalue < 0.05
    # Matryoshka's parent latents fire with (nearly) every child; the flat child latents carry
    # the parent direction, Matryoshka's do not.
    assert (matryoshka["parent_recall"] > 0.85).all()
    assert (flat["child_parent_cos"] > 0.15).all()
    assert (matryoshka["child_parent_cos"] < 0.15).all()
    assert flat["child_parent_cos"].mean() - matryoshka["child_parent_cos"].mean() > 0.25
    # All reconstruct what they keep (k = 2 cannot afford the low-magnitude extras).
    assert (runs["fvu"] < 0.2).all()


def test_comparison_tables(comparison):
    pairs = comparison.pairs
    assert set(pairs["arch"]) == {"topk", "batchtopk", "matryoshka"}
    assert len(pairs) == 9 * 16
    by_arch = comparison.by_arch()
    assert list(by_arch.index) == ["topk", "batchtopk", "matryoshka"]
    assert (by_arch["count"] == 3).all()
    report = comparison.reports[("matryoshka", 0)]
    assert report.cosines.shape == (28, 28)


def test_plot_toy_absorption(comparison):
    fig = plot_toy_absorption(comparison)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 4  # absorption, child-parent cosine, recall heatmap, colour bar
    runs_only = plot_toy_absorption({"runs": comparison.runs.to_dict("records")})
    assert len(runs_only.axes) == 2
    with pytest.raises(ValueError, match="runs"):
        plot_toy_absorption({"runs": pd.DataFrame()})


# ------------------------------------------------------------------------------ plumbing
def test_arch_specs_and_params():
    spec = ArchSpec.parse("matryoshka:bussmann")
    assert (spec.name, spec.arch, spec.loss) == ("matryoshka:bussmann", "matryoshka", "bussmann")
    spec = ArchSpec.parse({"name": "m8", "arch": "matryoshka", "group_sizes": [8, 20], "aux_k": 4})
    assert spec.loss is None and spec.group_sizes == [8, 20] and spec.sae_kwargs == {"aux_k": 4}
    with pytest.raises(ValueError, match="shared training settings"):
        ArchSpec.parse({"arch": "topk", "k": 4})
    toy_cfg, run = split_params({"n_parents": 3, "d_model": 40, "seeds": [1], "steps": 10})
    assert toy_cfg.n_parents == 3 and run == {"seeds": [1], "steps": 10}
    with pytest.raises(ValueError, match="unknown toy setting"):
        split_params({"n_parent": 3})
    with pytest.raises(ValueError, match="unique"):
        compare_architectures(archs=["topk", "topk"], seeds=[0], steps=1)


def test_script_writes_the_table_and_the_runs_plot_toy_absorption_draws(tmp_path):
    params = {
        "n_parents": 2,
        "children_per_parent": 3,
        "n_extra": 2,
        "d_model": 16,
        "archs": ["batchtopk", "matryoshka"],
        "seeds": [0, 1],
        "steps": 20,
        "batch_size": 256,
        "n_eval": 1024,
    }
    out = tmp_path / "toy"
    snakemake = SimpleNamespace(
        params=SimpleNamespace(toy=params),
        output=SimpleNamespace(
            table=str(out / "absorption.csv"), results=str(out / "absorption.json")
        ),
        log=[str(tmp_path / "logs" / "toy.log")],
        threads=1,
    )
    runpy.run_path(str(REPO / "scripts" / "toy_absorption.py"), {"snakemake": snakemake})
    table = pd.read_csv(out / "absorption.csv")
    assert list(table["arch"]) == ["batchtopk"] * 2 + ["matryoshka"] * 2
    assert {"seed", "absorption_rate", "parent_recall", "child_parent_cos", "fvu"} <= set(table)
    assert table["absorption_rate"].between(0, 1).all()
    # no tmp files
    assert sorted(p.name for p in out.iterdir()) == ["absorption.csv", "absorption.json"]
    # rule plot_toy_absorption: the registry row's drawing function on the JSON draws, byte for
    # byte, the figure of the comparison itself (the old rule drew that one)
    from saelab.figures import figure, resolve_draw
    from saelab.plots.common import save_figure

    results = json.loads((out / "absorption.json").read_text())
    assert len(results["runs"]) == 4 and results["pairs"]
    save_figure(resolve_draw(figure("toy_absorption"))(results=results), out / "drawn.png")
    save_figure(plot_toy_absorption(compare_from_params(params)), out / "direct.png")
    assert (out / "drawn.png").read_bytes() == (out / "direct.png").read_bytes()
    assert "absorption rate" in Path(snakemake.log[0]).read_text()
