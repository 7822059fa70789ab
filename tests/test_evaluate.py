"""Tests of ``saelab.evaluate``; CE, seed001 and absorption tests are in their own files.

saelab.evaluate: sparsity, prefix FVU, CE recovered, seed-001
metrics and first-letter absorption, each on a small example whose answer is known."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from saelab.cache import TLActivationSource, build_cache
from saelab.ce import ce_recovered
from saelab.checks import load_config
from saelab.codes import encode_reconstruct, reconstruct_batches
from saelab.evaluate import (
    evaluate_sae,
    heldout_contexts,
    heldout_reader,
    write_metrics,
)
from saelab.saes import SAEConfig, build_sae
from saelab.saes.io import save_sae
from saelab.schema import REPO_ROOT
from saelab.sparsity import dead_per_group
from tests.evaluate_helpers import identity_relu_sae, set_weights

DEFAULT_CONFIG = REPO_ROOT / "config" / "config.yaml"

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ sparsity


def matryoshka_exact(d=4, group_sizes=(1, 1, 2)):
    """Matryoshka SAE with identity encoder/decoder: latent i reconstructs coordinate i."""
    cfg = SAEConfig(arch="matryoshka", d_in=d, width=d, k=1, group_sizes=list(group_sizes))
    return set_weights(build_sae(cfg), torch.eye(d), torch.eye(d))


def test_prefix_fvu_falls_with_every_group():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(64, 4, generator=gen) + 0.1  # positive: every latent fires, exactly
    sae = matryoshka_exact()
    out = evaluate_sae(sae, [x[:20], x[20:]], seed001=False)
    prefix = [p["fvu_dim_centred"] for p in out["matryoshka"]["prefix_fvu"]]
    assert len(prefix) == 3 and prefix[0] > prefix[1] > prefix[2]
    assert prefix[2] == pytest.approx(0.0, abs=1e-10)
    # prefix 1 reconstructs dim 0 only: the error on dims 1..3 is x itself
    sst = (x.double() - x.double().mean(0)).pow(2).sum()
    assert prefix[0] == pytest.approx(float(x[:, 1:].double().pow(2).sum() / sst), rel=1e-5)
    assert [p["n_latents"] for p in out["matryoshka"]["prefix_fvu"]] == [1, 2, 4]
    assert out["fvu_dim_centred"] == pytest.approx(0.0, abs=1e-10) and out["l0"]["mean"] == 4
    assert out["matryoshka"]["dead_per_group"] == [0, 0, 0]


@pytest.mark.parametrize("normalize", [False, True])
def test_encode_reconstruct_is_what_reconstruct_splices(normalize):
    cfg = SAEConfig(arch="matryoshka", d_in=8, width=32, k=4, group_sizes=[8, 8, 16])
    cfg.normalize_input = normalize
    sae = build_sae(cfg).eval()
    x = torch.randn(50, 8)
    rec = encode_reconstruct(sae, x, prefixes=True)
    torch.testing.assert_close(rec.output, sae.reconstruct(x))
    torch.testing.assert_close(rec.prefix_outputs[-1], rec.output, atol=1e-5, rtol=1e-5)


def test_reconstruct_batches_reads_no_further_than_n_rows():
    """The stream truncates to the first n rows, stops without reading the next batch, and each
    batch's reconstruction is encode_reconstruct's of that batch (prefixes included)."""
    cfg = SAEConfig(arch="matryoshka", d_in=8, width=32, k=4, group_sizes=[8, 8, 16])
    sae = build_sae(cfg).eval()
    x = torch.randn(30, 8, dtype=torch.float64)
    read = []

    def batches():
        for lo in range(0, 30, 10):
            read.append(lo)
            yield x[lo : lo + 10]

    out = list(reconstruct_batches(sae, batches(), n_rows=14, prefixes=True))
    assert read == [0, 10] and [len(b.x) for b in out] == [10, 4]
    assert out[1].x.dtype == torch.float32 and torch.equal(out[1].y, out[1].x)
    ref = encode_reconstruct(sae, x[10:14].float(), prefixes=True)
    assert torch.equal(out[1].rec.output, ref.output)
    assert all(map(torch.equal, out[1].rec.prefix_outputs, ref.prefix_outputs))
    tc = build_sae(SAEConfig(arch="topk", d_in=8, width=32, k=4, d_out=6, target_hook_name="b"))
    with pytest.raises(ValueError, match="transcoder needs"):
        next(reconstruct_batches(tc, [x.float()]))


def test_dead_alive_and_l0_counts():
    # latents 0..2 read +x, 3..5 read -x; x2 is always > 0, so latent 5 never fires
    sae = identity_relu_sae(3, "blocks.0.hook_resid_pre")
    x = torch.tensor(
        [[1.0, -1.0, 2.0], [-1.0, -1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 2.0, 3.0]]
    )  # positives per latent: +x0: 2, +x1: 2, +x2: 4, -x0: 1, -x1: 2, -x2: 0
    out = evaluate_sae(sae, [x], seed001=False)
    assert out["latent_frequencies"] == [0.5, 0.5, 1.0, 0.25, 0.5, 0.0]
    assert out["n_dead"] == 1 and out["dead_fraction"] == pytest.approx(1 / 6)
    assert out["alive_fraction"] == pytest.approx(5 / 6)
    # L0 per token: 3, 3, 3, 2 (x0 = 0 fires neither latent)
    assert out["l0"]["histogram"] == [0, 0, 1, 3] and out["l0"]["mean"] == 2.75
    assert out["fvu_dim_centred"] == pytest.approx(0.0, abs=1e-12)
    assert dead_per_group(torch.tensor([0, 3, 0, 0, 1, 2]), [(0, 2), (2, 6)]) == [1, 2]


def test_n_tokens_limit_and_transcoder_batches():
    cfg = SAEConfig(
        arch="topk", d_in=4, width=8, k=2, d_out=3, hook_name="blocks.0.hook_resid_mid",
        target_hook_name="blocks.0.hook_mlp_out",
    )  # fmt: skip
    sae = build_sae(cfg).eval()
    with torch.no_grad():
        sae.W_enc.abs_()  # positive inputs and encoder: all pre-activations > 0, so L0 = k
    gen = torch.Generator().manual_seed(0)
    pairs = [(torch.rand(10, 4, generator=gen) + 0.1, torch.randn(10, 3, generator=gen))] * 3
    out = evaluate_sae(sae, pairs, n_tokens=25, seed001=False)
    assert out["n_tokens"] == 25 and out["l0"]["mean"] == 2
    with pytest.raises(ValueError, match="needs \\(source, target\\)"):
        evaluate_sae(sae, [torch.randn(10, 4)])


def test_evaluate_sae_reports_seed001_and_all_fvus():
    sae = matryoshka_exact()
    x = torch.rand(30, 4) + 0.1
    out = evaluate_sae(sae, [x])
    assert {"fvu_element_global", "fvu_dim_centred", "fvu_mean_r2"} <= set(out)
    assert "fvu" not in out and "fvu_all" not in out  # every value names its definition
    assert out["seed001"]["splitting_score"] == 1.0  # all 4 latents fire on every token
    assert out["seed001"]["absorption_score"] == 0.0 and out["seed001"]["dead_per_group"] == [0] * 3
    assert len(out["seed001"]["hierarchy"]) == 3


# ------------------------------------------------------------------------------------ cache + script


@pytest.fixture(scope="module")
def cached(tiny_model, tmp_path_factory):
    hooks = ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out"]
    gen = np.random.default_rng(0)
    tokens = gen.integers(1, 60, size=(40, 16)).astype(np.int32)
    tokens[:, 0] = 0
    path = tmp_path_factory.mktemp("cache") / "main.zarr"
    build_cache(
        TLActivationSource(tiny_model, hooks), tokens, tokens == 0, hooks, path,
        dtype="float32", batch_contexts=8, manifest={"model": "toy"}, progress=False,
    )  # fmt: skip
    return path, tokens


def test_cache_backed_evaluation_end_to_end(tiny_model, cached):
    path, tokens = cached
    sae = identity_relu_sae(32, "blocks.1.hook_resid_pre")
    out = evaluate_sae(sae, heldout_reader(sae, path, batch_size=7))
    assert out["n_tokens"] == 2 * 15  # 2 held-out contexts (5% of 40), BOS excluded
    assert out["fvu_dim_centred"] == pytest.approx(0.0, abs=1e-10)
    ctx, special = heldout_contexts(path, sae.cfg.hook_name, n_contexts=8, context_len=10)
    np.testing.assert_array_equal(ctx.numpy(), tokens[38:, :10])
    assert special[:, 0].all() and not special[:, 1:].any()
    ce = ce_recovered(tiny_model, ctx, {"id": sae}, special_mask=special)["id"]
    assert ce.ce_loss_score == pytest.approx(1.0, abs=1e-3)
    cfg = SAEConfig(
        arch="topk", d_in=32, width=64, k=4, hook_name="blocks.1.hook_resid_mid",
        target_hook_name="blocks.1.hook_mlp_out",
    )  # fmt: skip
    transcoder = build_sae(cfg)
    assert evaluate_sae(transcoder, heldout_reader(transcoder, path))["n_tokens"] == 30


def test_write_metrics_is_strict_json(tmp_path):
    path = write_metrics(
        {"a": float("nan"), "b": torch.tensor([1.5]), "c": (1, 2)}, tmp_path / "m.json"
    )
    assert json.loads(path.read_text()) == {"a": None, "b": [1.5], "c": [1, 2]}


def test_script_writes_metrics(tiny_model, cached, tmp_path):
    from saelab.models import train_bpe_tokenizer

    path, _ = cached
    sae_dir = save_sae(identity_relu_sae(32, "blocks.1.hook_resid_pre"), tmp_path / "sae")
    model_dir = tmp_path / "model"
    train_bpe_tokenizer(["the cat sat on the mat"] * 20, 300, model_dir / "tokenizer")
    out = tmp_path / "eval" / "id.json"
    ce_path = tmp_path / "eval" / "ce.json"
    params = SimpleNamespace(
        # the schema's defaults, as the Snakefile passes them
        eval={**load_config(DEFAULT_CONFIG).evaluation, "n_tokens": 100, "ce_contexts": 0},
        model={"name": "tiny", "model_path": None, "precision": "float32", "tiny": {}},
        saes=["id"],
        group="id",
        tracking={},
    )
    # Rule ce_recovered with ce_contexts 0 writes an empty table (and loads no model).
    ce_job = SimpleNamespace(
        input=SimpleNamespace(saes=[str(sae_dir)], cache=str(path), model_dir=str(model_dir)),
        output=SimpleNamespace(scores=str(ce_path)),
        params=params,
        config={"device": "cpu"},  # read at run time, not a rule param
        log=[str(tmp_path / "ce.log")],
        threads=1,
    )
    runpy.run_path(str(REPO / "scripts" / "ce_recovered.py"), init_globals={"snakemake": ce_job})
    assert json.loads(ce_path.read_text())["saes"] == {}
    # Rule first_letter_probe: the hook's probe, which evaluate_sae reads.
    probe_path = tmp_path / "absorption" / "probe.npz"
    probe_job = SimpleNamespace(
        input=SimpleNamespace(cache=str(path), model_dir=str(model_dir)),
        output=SimpleNamespace(probe=str(probe_path)),
        params=SimpleNamespace(split="all"),
        log=[str(tmp_path / "probe.log")],
        threads=1,
        wildcards=SimpleNamespace(hook="blocks.1.hook_resid_pre"),
    )
    runpy.run_path(
        str(REPO / "scripts" / "first_letter_probe.py"), init_globals={"snakemake": probe_job}
    )
    snakemake = SimpleNamespace(
        input=SimpleNamespace(
            sae=str(sae_dir), cache=str(path), ce=str(ce_path), probe=str(probe_path)
        ),
        output=SimpleNamespace(metrics=str(out)),
        params=params,
        config={"device": "cpu"},
        log=[str(tmp_path / "eval.log")],
        threads=1,
        wildcards=SimpleNamespace(sae="id"),
    )
    runpy.run_path(str(REPO / "scripts" / "evaluate_sae.py"), init_globals={"snakemake": snakemake})
    metrics = json.loads(out.read_text())
    assert metrics["sae"] == "id" and metrics["fvu_dim_centred"] == pytest.approx(0.0, abs=1e-10)
    assert metrics["ce_recovered"] is None
    assert metrics["first_letter_absorption"]["reason"]  # random token ids: too few words
