"""Tests of ``saelab.train``; the training/ package's tests went to tests/training/.

Training: SAEs learn synthetic sparse data, groups share batches, schedules, outputs, exact
resume after a real SIGKILL, and divergence that stops without touching the last checkpoint."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from saelab.cache import ActivationReader
from saelab.saes import SAEConfig, build_sae
from saelab.saes.io import load_sae
from saelab.train import (
    TrainConfig,
    TrainError,
    build_saes,
    train_saes,
)
from tests.training.conftest import one_thread  # noqa: F401 (autouse: one torch thread here too)
from tests.training.helpers import (
    BATCH,
    D_SRC,
    D_TGT,
    DEAD_TOKENS,
    GROUP,
    GROUP_STEPS,
    LOG_EVERY,
    SRC,
    TGT,
    _Named,
    widths_of,
)


@pytest.mark.parametrize("name", sorted(GROUP))
def test_training_lowers_heldout_fvu(trained, name):
    heldout = trained.results[name].metrics["heldout"]
    assert heldout["tokens"] > 300
    assert heldout["fvu_element_global"] < 0.3, heldout
    assert heldout["fvu_dim_centred"] < 0.35, heldout
    first = json.loads((trained.out_dirs[name] / "train_log.jsonl").read_text().splitlines()[0])
    last = trained.results[name].metrics["train"]
    assert last["fvu"] < 0.5 * first["fvu"], "training FVU should fall a lot"
    if name != "relu":  # k-sparse: about k active per token (BatchTopK: on average)
        assert 2 <= heldout["l0"] <= 8, heldout


def test_transcoder_reconstructs_a_target_of_another_width(trained):
    sae = trained.saes["transcoder"]
    assert (sae.cfg.d_in, sae.cfg.d_out) == (D_SRC, D_TGT)
    cfg_json = json.loads((trained.out_dirs["transcoder"] / "cfg.json").read_text())
    assert cfg_json["d_in"] == D_SRC and cfg_json["d_out"] == D_TGT
    assert cfg_json["metadata"]["hook_name_out"] == TGT
    config = json.loads((trained.out_dirs["transcoder"] / "config.json").read_text())
    assert config["hooks"] == {"input": SRC, "target": TGT}
    assert sae.b_dec.shape == (D_TGT,)  # b_dec lives in the target space


@pytest.mark.parametrize("name", ["topk", "transcoder"])
def test_dead_fraction_is_never_fired_on_dead_tokens_held_out_first(trained, name):
    """``dead_fraction``: latents that fire (eval mode) on none of ``dead_tokens`` tokens, the
    held-out ones first, then the training split's first ones in cache order; recomputed here
    from the saved SAE and independent readers."""
    metrics = json.loads((trained.out_dirs[name] / "metrics.json").read_text())
    sae = load_sae(trained.out_dirs[name]).eval()
    heldout = ActivationReader(trained.cache, SRC, BATCH, split="heldout").read_all()
    train = ActivationReader(trained.cache, SRC, BATCH, split="train", shuffle=False).read_all()
    n_heldout = heldout.shape[0]
    assert n_heldout < DEAD_TOKENS
    tokens = torch.cat([heldout, train[: DEAD_TOKENS - n_heldout]])
    with torch.no_grad():
        fired = sae.encode(tokens).codes.latents.unique()
    want = 1 - fired.numel() / sae.cfg.width
    assert metrics["dead_tokens"] == DEAD_TOKENS and metrics["dead_tokens_heldout"] == n_heldout
    assert metrics["dead_fraction"] == pytest.approx(want)
    assert metrics["heldout"]["dead_fraction"] == metrics["dead_fraction"]
    assert f"none of {DEAD_TOKENS} tokens encoded in eval mode" in metrics["dead_definition"]
    # The training-time dead set is reported under its own name, with its window.
    assert 0 <= metrics["train_dead_fraction"] <= 1
    assert f"last {10 * BATCH} training tokens" in metrics["train_dead_definition"]


def test_dead_window_follows_a_short_run(cache, tmp_path):
    """With ``dead_window_fraction`` the dead window shrinks to that fraction of a run shorter
    than ``dead_after_tokens``, so AuxK engages; without it the run ends before any latent can
    be dead and the aux loss stays 0."""
    cfg = {"n_tokens": 40 * BATCH, "batch_size": BATCH, "lr": 1e-2, "log_every": 5,
           "checkpoint_every": 0, "seed": 0}  # fmt: skip
    assert TrainConfig(**cfg, dead_window_fraction=0.1).dead_window(81920) == 4 * BATCH
    assert TrainConfig(**cfg, dead_window_fraction=0.1).dead_window(BATCH) == BATCH
    assert TrainConfig(**cfg, dead_window_fraction=0.001).dead_window(81920) == BATCH
    assert TrainConfig(**cfg, dead_window_fraction=None).dead_window(81920) == 81920
    with pytest.raises(TrainError, match=r"dead_window_fraction 1\.5"):
        TrainConfig(**cfg, dead_window_fraction=1.5)
    spec = {"s": {"arch": "batchtopk", "width": 256, "k": 2, "hook_name": SRC,
                  "dead_after_tokens": 81920}}  # fmt: skip
    aux = {}
    for fraction in (None, 0.1):
        saes = build_saes(spec, widths_of(cache))
        out = tmp_path / str(fraction)
        train_saes(cache, saes, TrainConfig(**cfg, dead_window_fraction=fraction),
                   {"s": out / "s"}, progress=False)  # fmt: skip
        config = json.loads((out / "s" / "config.json").read_text())
        window = 81920 if fraction is None else 4 * BATCH
        assert config["sae"]["dead_after_tokens"] == window
        assert load_sae(out / "s").cfg.dead_after_tokens == window
        log = [
            json.loads(line) for line in (out / "s" / "train_log.jsonl").read_text().splitlines()
        ]
        aux[fraction] = [r["aux"] for r in log]
    assert all(a == 0 for a in aux[None])
    assert all(a > 0 for a in aux[0.1][1:]), aux[0.1]


def test_k_annealing_schedule_and_effect(cache, tmp_path):
    """k falls linearly from k_anneal_start x k to k over the first k_anneal_fraction of the
    steps (capped at the width), then stays k; training-mode L0 follows it."""
    cfg = TrainConfig(n_tokens=20 * BATCH, batch_size=BATCH, lr=1e-2, log_every=1,
                      checkpoint_every=0, k_anneal_fraction=0.5, k_anneal_start=4)  # fmt: skip
    assert [cfg.annealed_k(i, 2, 64) for i in range(12)] == [
        8, 7, 7, 6, 6, 5, 4, 4, 3, 3, None, None,
    ]  # fmt: skip
    assert cfg.annealed_k(0, 32, 64) == 64  # capped at the width
    assert TrainConfig(n_tokens=BATCH, batch_size=BATCH).annealed_k(0, 2, 64) is None
    with pytest.raises(TrainError, match=r"k_anneal_start 0\.5"):
        TrainConfig(n_tokens=BATCH, batch_size=BATCH, k_anneal_start=0.5)
    saes = build_saes({"b": {"arch": "batchtopk", "width": 64, "k": 2, "hook_name": SRC}},
                      widths_of(cache))  # fmt: skip
    train_saes(cache, saes, cfg, {"b": tmp_path / "b"}, progress=False)
    log = [
        json.loads(line) for line in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()
    ]
    l0 = [round(r["l0"], 6) for r in log]
    want = [cfg.annealed_k(i, 2, 64) or 2 for i in range(20)]
    assert l0 == want
    assert saes["b"].k_train is None


def test_train_log_lines(trained):
    lines = [json.loads(line) for line in
             (trained.out_dirs["batchtopk"] / "train_log.jsonl").read_text().splitlines()]  # fmt: skip
    assert [r["step"] for r in lines] == list(range(LOG_EVERY, GROUP_STEPS + 1, LOG_EVERY))
    for record in lines:
        assert {"step", "tokens", "lr", "loss", "recon", "aux", "l0", "fvu", "dead",
                "threshold"} <= set(record)  # fmt: skip
        assert record["tokens"] == record["step"] * BATCH
    assert lines[-1]["threshold"] > 0
    assert lines[-1]["l0"] == pytest.approx(4, abs=0.01)  # BatchTopK: k per token on average
    topk_log = (trained.out_dirs["topk"] / "train_log.jsonl").read_text()
    assert "threshold" not in topk_log


def test_mismatched_widths_and_bad_specs_fail_clearly(cache, tmp_path):
    wrong = build_sae(SAEConfig(arch="topk", d_in=16, width=32, k=2, hook_name=SRC))
    with pytest.raises(TrainError, match=rf"d_in = 16 but hook '{SRC}' is 32 wide"):
        train_saes(cache, {"w": wrong}, TrainConfig(n_tokens=BATCH, batch_size=BATCH),
                   {"w": tmp_path / "w"}, progress=False)  # fmt: skip
    with pytest.raises(TrainError, match="comes from the cache"):
        build_saes({"x": {"arch": "topk", "width": 8, "hook_name": SRC, "d_in": 32}}, {SRC: 32})
    with pytest.raises(TrainError, match="not in the cache"):
        build_saes({"x": {"arch": "topk", "width": 8, "hook_name": "blocks.9.hook_z"}}, {SRC: 32})
    topk_transcoder = build_saes(
        {"t": {"arch": "topk", "width": 32, "k": 2, "hook_name": SRC, "target_hook_name": TGT}},
        widths_of(cache),
    )
    with pytest.raises(TrainError, match="no SAE-Lens equivalent"):  # before any training
        train_saes(cache, topk_transcoder, TrainConfig(n_tokens=BATCH, batch_size=BATCH),
                   {"t": tmp_path / "t"}, progress=False)  # fmt: skip
    assert not (tmp_path / "w").exists() and not (tmp_path / "t").exists()


def test_train_script_builds_saes_from_the_cache_widths(cache, tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_saes.py"
    snakemake = SimpleNamespace(
        input=_Named(cache=str(cache)),
        params=_Named(
            saes={
                "sae": {
                    "arch": "topk",
                    "width": 32,
                    "k": 2,
                    "hook_name": SRC,
                    "target_hook_name": None,
                    "extra": {"run": "sae"},
                },
                "tc": {"arch": "relu", "width": 32, "hook_name": SRC, "target_hook_name": TGT},
            },
            train={"n_tokens": 4 * BATCH, "batch_size": BATCH, "lr": 1e-3, "betas": [0.9, 0.99]},
            group="g",
            tracking={},
        ),
        output=_Named(sae=str(tmp_path / "out" / "sae"), tc=str(tmp_path / "out" / "tc")),
        config={"device": "cpu"},  # read at run time, not a rule param
        log=[str(tmp_path / "train.log")],
        threads=1,
    )
    runpy.run_path(str(script), init_globals={"snakemake": snakemake})
    assert load_sae(tmp_path / "out" / "sae").cfg.d_in == D_SRC
    tc = load_sae(tmp_path / "out" / "tc")
    assert (tc.cfg.d_in, tc.cfg.d_out) == (D_SRC, D_TGT)
    assert tc.cfg.extra["name"] == "tc"
    config = json.loads((tmp_path / "out" / "sae" / "config.json").read_text())
    assert config["train"]["betas"] == [0.9, 0.99]
    assert "held-out FVU" in (tmp_path / "train.log").read_text()
