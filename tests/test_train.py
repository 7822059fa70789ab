"""Training: SAEs learn synthetic sparse data, groups share batches, schedules, outputs, exact
resume after a real SIGKILL, and divergence that stops without touching the last checkpoint."""

from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from saelab.cache import ActivationReader, build_cache, cache_manifest
from saelab.saes import SAEConfig, build_sae
from saelab.saes.io import load_sae
from saelab.train import (
    TrainConfig,
    TrainError,
    TrainingDivergedError,
    build_saes,
    default_checkpoint_dir,
    train_saes,
)
from saelab.training.loop import default_lr, geometric_median, lr_factor

SRC, TGT = "blocks.0.hook_resid_pre", "blocks.0.hook_mlp_out"
D_SRC, D_TGT, N_FEATURES, K_TRUE = 32, 24, 48, 3
N_CONTEXTS, CTX = 256, 32
BATCH = 256


# ------------------------------------------------------------------ a synthetic cache


def synthetic_tables(n_rows: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every token is a sparse combination (3 of 48 features, magnitudes in [0.5, 1.5]) of a
    random unit-norm dictionary; the target hook uses the same codes with another dictionary
    of another width (so a transcoder can learn it), plus an offset and a little noise."""
    g = torch.Generator().manual_seed(seed)
    d_src = torch.nn.functional.normalize(torch.randn(N_FEATURES, D_SRC, generator=g), dim=1)
    d_tgt = torch.nn.functional.normalize(torch.randn(N_FEATURES, D_TGT, generator=g), dim=1)
    chosen = torch.rand(n_rows, N_FEATURES, generator=g).argsort(dim=1)[:, :K_TRUE]
    codes = torch.zeros(n_rows, N_FEATURES)
    codes.scatter_(1, chosen, 0.5 + torch.rand(n_rows, K_TRUE, generator=g))
    src = codes @ d_src + 0.01 * torch.randn(n_rows, D_SRC, generator=g)
    tgt = codes @ d_tgt + 0.01 * torch.randn(n_rows, D_TGT, generator=g) - 0.2
    return {SRC: src, TGT: tgt}


class TableSource:
    """An activation source whose "tokens" are row ids into precomputed activations."""

    def __init__(self, tables: dict[str, torch.Tensor]):
        self.tables = tables

    def __call__(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {hook: table[tokens.long()] for hook, table in self.tables.items()}


def make_cache(path: Path) -> Path:
    tables = synthetic_tables(N_CONTEXTS * CTX)
    tokens = np.arange(N_CONTEXTS * CTX, dtype=np.int32).reshape(N_CONTEXTS, CTX)
    special = np.zeros(tokens.shape, dtype=bool)
    special[:, 0] = True  # position 0 plays BOS: excluded from training
    build_cache(
        TableSource(tables), tokens, special, [SRC, TGT], path, dtype="float32",
        batch_contexts=16, progress=False,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_cache(tmp_path_factory.mktemp("cache") / "synthetic.zarr")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny SAEs: one thread is faster (and exact resume needs a fixed thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def widths_of(cache: Path) -> dict[str, int]:
    return cache_manifest(cache)["widths"]


# ------------------------------------------------------------------ one group, six SAEs

GROUP = {
    "topk": {"arch": "topk", "k": 4},
    "batchtopk": {"arch": "batchtopk", "k": 4},
    "matryoshka_bussmann": {"arch": "matryoshka", "k": 4, "group_sizes": [8, 24, 32]},
    "matryoshka_official": {
        "arch": "matryoshka", "k": 4, "group_sizes": [8, 24, 32], "loss": "official",
        "b_dec_init": "geometric_median",
    },
    "relu": {"arch": "relu", "l1_coeff": 1e-3},
    "transcoder": {"arch": "batchtopk", "k": 4, "target_hook_name": TGT},
    "transcoder_centred": {"arch": "batchtopk", "k": 4, "target_hook_name": TGT,
                           "center_input": True, "encoder_init": "decoder_transpose"},
}  # fmt: skip
GROUP_STEPS, LOG_EVERY = 300, 50
DEAD_TOKENS = 1000  # more than the ~400 held-out tokens: the count is topped up from training


def group_specs() -> dict[str, dict]:
    common = {"width": 64, "hook_name": SRC, "dead_after_tokens": 10 * BATCH}
    return {name: {**common, **spec} for name, spec in GROUP.items()}


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


def test_group_saes_see_the_same_batches_in_reader_order(trained):
    reference = trained.seen["topk"]
    assert len(reference) == GROUP_STEPS
    for name, sums in trained.seen.items():
        assert sums == reference, f"{name} saw other batches"
    # The batches are the reader's, epoch after epoch, with the training seed.
    reader = ActivationReader(trained.cache, [SRC, TGT], BATCH, seed=trained.cfg.seed)
    expected = []
    while len(expected) < GROUP_STEPS:
        expected += [float(src.double().sum()) for src, _ in reader.batches()]
    assert reference == pytest.approx(expected[:GROUP_STEPS], rel=1e-12)


def test_transcoder_reconstructs_a_target_of_another_width(trained):
    sae = trained.saes["transcoder"]
    assert (sae.cfg.d_in, sae.cfg.d_out) == (D_SRC, D_TGT)
    cfg_json = json.loads((trained.out_dirs["transcoder"] / "cfg.json").read_text())
    assert cfg_json["d_in"] == D_SRC and cfg_json["d_out"] == D_TGT
    assert cfg_json["metadata"]["hook_name_out"] == TGT
    config = json.loads((trained.out_dirs["transcoder"] / "config.json").read_text())
    assert config["hooks"] == {"input": SRC, "target": TGT}
    assert sae.b_dec.shape == (D_TGT,)  # b_dec lives in the target space


def test_outputs_are_complete_and_metrics_recompute_from_the_saved_sae(trained):
    sae_lens = pytest.importorskip("sae_lens")
    name = "topk"
    out = trained.out_dirs[name]
    for file in ("cfg.json", "sae_weights.safetensors", "saelab_state.safetensors",
                 "config.json", "metrics.json", "train_log.jsonl"):  # fmt: skip
        assert (out / file).is_file(), file
    assert not default_checkpoint_dir(out).exists(), "checkpoints are removed after success"
    assert not out.with_name(out.name + ".tmp").exists()

    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == GROUP_STEPS and config["tokens"] == GROUP_STEPS * BATCH
    assert config["train"]["lr"] == 1e-2 and config["train"]["n_tokens"] == GROUP_STEPS * BATCH
    assert config["sae"]["arch"] == "topk" and config["sae"]["d_in"] == D_SRC
    assert config["cache"] == str(trained.cache) and len(config["cache_fingerprint"]) == 16
    assert config["completed"][:4].isdigit() and config["resumed_from_step"] == 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(trained.results[name].metrics))
    assert 0 <= metrics["dead_fraction"] <= 1 and 0 < metrics["heldout"]["alive_fraction"] <= 1
    result = trained.results[name]
    assert result.steps == GROUP_STEPS and result.tokens_per_s > 0

    # The held-out numbers recompute from what was saved, with the definitions stated.
    sae = load_sae(out)
    heldout = ActivationReader(trained.cache, SRC, BATCH, split="heldout").read_all()
    with torch.no_grad():
        recon = sae(heldout).output.double()
    x = heldout.double()
    sse = (recon - x).pow(2).sum()
    fvu = (sse / x.numel()) / x.var()  # seed 001's compute_fvu: MSE / unbiased variance
    fvu_centered = sse / (x - x.mean(dim=0)).pow(2).sum()
    assert metrics["heldout"]["tokens"] == x.shape[0]
    assert metrics["heldout"]["fvu_element_global"] == pytest.approx(fvu.item(), rel=1e-5)
    assert metrics["heldout"]["fvu_dim_centred"] == pytest.approx(fvu_centered.item(), rel=1e-5)
    assert fvu_centered > fvu  # per-dimension means explain more: the denominator is smaller

    # SAE-Lens loads it and computes the same map.
    theirs = sae_lens.SAE.load_from_disk(out)
    with torch.no_grad():
        torch.testing.assert_close(theirs(heldout), sae.reconstruct(heldout), atol=1e-5, rtol=1e-5)
    # Decoder rows are normalised after every step, so the saved ones are unit norm.
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-5, rtol=0)


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


def test_centred_transcoder_is_saved_folded(trained):
    """The input centre (the source's geometric median) trains the encoder on centred inputs
    and is folded into b_enc at the end: the saved transcoder has c = 0 and the same map."""
    out = trained.out_dirs["transcoder_centred"]
    sae = load_sae(out)
    assert sae.cfg.center_input and not sae.input_center.any()
    x = ActivationReader(trained.cache, SRC, BATCH, split="heldout").read_all()
    with torch.no_grad():
        torch.testing.assert_close(
            sae.reconstruct(x), trained.saes["transcoder_centred"].eval().reconstruct(x)
        )


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


# ------------------------------------------------------------------ small pieces


def test_lr_schedule_values():
    # dictionary_learning's schedule: warmup index/warmup, then 1, then linear decay to 0
    assert lr_factor(0, 100, 10, 0.8) == 0.0
    assert lr_factor(5, 100, 10, 0.8) == 0.5
    assert lr_factor(10, 100, 10, 0.8) == 1.0
    assert lr_factor(79, 100, 10, 0.8) == 1.0
    assert lr_factor(80, 100, 10, 0.8) == 1.0
    assert lr_factor(90, 100, 10, 0.8) == 0.5
    assert lr_factor(99, 100, 10, 0.8) == pytest.approx(0.05)
    assert lr_factor(0, 100, 0, None) == 1.0 and lr_factor(99, 100, 0, None) == 1.0
    assert default_lr(2**14) == pytest.approx(2e-4) and default_lr(2**16) == pytest.approx(1e-4)
    with pytest.raises(TrainError, match="warmup"):
        TrainConfig(n_tokens=100 * BATCH, batch_size=BATCH, warmup_steps=50, decay_start=0.3)
    with pytest.raises(TrainError, match="unknown train config"):
        TrainConfig.from_dict({"n_tokens": 10, "learning_rate": 1})


def test_the_schedule_is_what_training_uses(cache, tmp_path):
    saes = build_saes({"s": {"arch": "topk", "width": 32, "k": 2, "hook_name": SRC}},
                      widths_of(cache))  # fmt: skip
    cfg = TrainConfig(
        n_tokens=20 * BATCH, batch_size=BATCH, lr=None, warmup_steps=4, decay_start=0.5,
        log_every=1, checkpoint_every=0,
    )  # fmt: skip
    train_saes(cache, saes, cfg, {"s": tmp_path / "s"}, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "s" / "train_log.jsonl").read_text().splitlines()]
    base = default_lr(32)
    lrs = {r["step"]: r["lr"] for r in lines}
    # step n is the n-th update, made with lr_factor(n - 1)
    assert lrs[1] == 0.0 and lrs[3] == pytest.approx(0.5 * base)
    assert lrs[5] == pytest.approx(base) and lrs[10] == pytest.approx(base)
    assert lrs[16] == pytest.approx(0.5 * base) and lrs[20] == pytest.approx(0.1 * base)
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["train"]["lr"] == pytest.approx(base) and config["train"]["lr_given"] is None


def test_geometric_median_of_a_hand_built_example():
    # A convex quadrilateral: the median is where the diagonals cross, not the mean.
    quad = torch.tensor([[0.0, 0.0], [10.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    median = geometric_median(quad)
    torch.testing.assert_close(median, torch.tensor([10 / 11, 10 / 11], dtype=torch.float64),
                               atol=1e-4, rtol=0)  # fmt: skip
    assert (median - quad.double().mean(0)).norm() > 1.5
    # Robust to an outlier: one far point barely moves it, while the mean moves a lot.
    cluster = torch.randn(99, 3, generator=torch.Generator().manual_seed(0)) * 0.1
    with_outlier = torch.cat([cluster, torch.tensor([[1000.0, 1000.0, 1000.0]])])
    assert geometric_median(with_outlier).norm() < 0.1
    assert with_outlier.mean(0).norm() > 15
    # It minimises the summed distance: small moves do not lower it.
    pts = torch.randn(50, 4, generator=torch.Generator().manual_seed(1)).double()
    m = geometric_median(pts)
    cost = (pts - m).norm(dim=1).sum()
    for direction in torch.eye(4, dtype=torch.float64):
        for sign in (1, -1):
            assert (pts - (m + sign * 1e-3 * direction)).norm(dim=1).sum() >= cost - 1e-9


def test_b_dec_starts_at_the_geometric_median_of_the_first_batch(cache, tmp_path):
    spec = {"arch": "batchtopk", "width": 32, "k": 2, "hook_name": SRC,
            "b_dec_init": "geometric_median"}  # fmt: skip
    saes = build_saes({"s": spec}, widths_of(cache))
    # one update, at lr 0 (the first step of a warmup): b_dec is exactly its initial value
    cfg = TrainConfig(n_tokens=BATCH, batch_size=BATCH, warmup_steps=1, seed=5)
    train_saes(cache, saes, cfg, {"s": tmp_path / "s"}, progress=False)
    first = next(ActivationReader(cache, [SRC], BATCH, seed=5).batches())[0]
    expected = geometric_median(first).float()
    torch.testing.assert_close(load_sae(tmp_path / "s").b_dec, expected, atol=1e-6, rtol=0)
    assert (expected - first.mean(0)).norm() > 1e-3


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


# ------------------------------------------------------------------ resume after SIGKILL

RESUME_SPECS = {
    "topk": {"arch": "topk", "width": 48, "k": 3, "hook_name": SRC,
             "dead_after_tokens": 4 * BATCH},
    "matryoshka": {"arch": "matryoshka", "width": 48, "k": 3, "hook_name": SRC,
                   "group_sizes": [16, 32], "loss": "official",
                   "b_dec_init": "geometric_median", "dead_after_tokens": 4 * BATCH},
}  # fmt: skip
RESUME_CFG = {
    "n_tokens": 80 * BATCH, "batch_size": BATCH, "lr": 3e-3, "warmup_steps": 10,
    "decay_start": 0.5, "checkpoint_every": 10, "log_every": 7, "seed": 11, "buffer_chunks": 3,
}  # fmt: skip

KILL_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_train import RESUME_SPECS, RESUME_CFG, widths_of
    from saelab.train import TrainConfig, build_saes, train_saes
    torch.set_num_threads(1)
    cache = Path({cache!r})
    saes = build_saes(RESUME_SPECS, widths_of(cache))
    def report(step):
        print(step, flush=True)
    train_saes(cache, saes, TrainConfig(**RESUME_CFG),
               {{name: Path({root!r}) / name for name in saes}}, progress=False,
               on_checkpoint=report)
    """
)


def _run_resume_group(cache: Path, root: Path):
    saes = build_saes(RESUME_SPECS, widths_of(cache))
    return train_saes(
        cache, saes, TrainConfig(**RESUME_CFG), {n: root / n for n in saes}, progress=False
    )


def test_killed_training_resumes_to_identical_weights(cache, tmp_path):
    killed = tmp_path / "killed"
    script = KILL_SCRIPT.format(tests=os.path.dirname(__file__), cache=str(cache), root=str(killed))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        # Kill as soon as the second checkpoint is reported: the run is then somewhere past
        # step 20 (mid-step, or writing the next checkpoint).
        reported = [proc.stdout.readline().strip() for _ in range(2)]
        assert reported == ["10", "20"], reported
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    for name in RESUME_SPECS:
        assert not (killed / name).exists(), "a killed run must leave no output"
        assert default_checkpoint_dir(killed / name).is_dir()

    resumed = _run_resume_group(cache, killed)
    reference = _run_resume_group(cache, tmp_path / "reference")
    for name in RESUME_SPECS:
        start = json.loads((killed / name / "config.json").read_text())["resumed_from_step"]
        assert 20 <= start < 80, start
        assert resumed[name].steps == 80
        for file in ("sae_weights.safetensors", "saelab_state.safetensors"):
            ours = load_file(killed / name / file)
            theirs = load_file(tmp_path / "reference" / name / file)
            assert ours.keys() == theirs.keys()
            for key in ours:
                assert torch.equal(ours[key], theirs[key]), f"{name}: {file}:{key} differs"
        # The log, rebuilt across the kill, is the uninterrupted run's log.
        log_resumed = (killed / name / "train_log.jsonl").read_text()
        assert log_resumed == (tmp_path / "reference" / name / "train_log.jsonl").read_text()
        assert resumed[name].metrics["heldout"] == reference[name].metrics["heldout"]


# ------------------------------------------------------------------ divergence


def _poison_at(sae, step: int):
    """Make the loss of the ``step``-th training forward NaN."""
    original, calls = sae.forward, []

    def forward(x, target=None):
        out = original(x, target)
        if sae.training:
            calls.append(1)
            if len(calls) == step:
                out = out._replace(loss=out.loss * float("nan"))
        return out

    sae.forward = forward


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(cache, tmp_path):
    specs = {"a": {"arch": "topk", "width": 32, "k": 2, "hook_name": SRC},
             "b": {"arch": "batchtopk", "width": 32, "k": 2, "hook_name": SRC}}  # fmt: skip
    cfg = TrainConfig(n_tokens=30 * BATCH, batch_size=BATCH, lr=1e-3, checkpoint_every=5,
                      log_every=50)  # fmt: skip
    out_dirs = {name: tmp_path / name for name in specs}
    saes = build_saes(specs, widths_of(cache))
    _poison_at(saes["b"], 13)
    with pytest.raises(TrainingDivergedError, match=r"'b': non-finite loss at step 13 \(loss=nan"):
        train_saes(cache, saes, cfg, out_dirs, progress=False)
    for name in specs:
        ckpt = default_checkpoint_dir(out_dirs[name])
        assert sorted(p.name for p in ckpt.iterdir() if p.suffix == ".pt") == [
            "step_0000000010.pt"
        ], "the checkpoint before the NaN survives, and nothing after it was written"
        payload = torch.load(ckpt / "step_0000000010.pt", weights_only=False)
        assert payload["step"] == 10
        assert all(
            torch.isfinite(v).all() for v in payload["sae"].values() if v.is_floating_point()
        )
        assert not out_dirs[name].exists()

    # Run again without the fault: it resumes from that checkpoint and finishes.
    results = train_saes(cache, build_saes(specs, widths_of(cache)), cfg, out_dirs, progress=False)
    config = json.loads((out_dirs["a"] / "config.json").read_text())
    assert config["resumed_from_step"] == 10 and results["a"].steps == 30


def test_divergence_from_a_huge_lr_is_caught(cache, tmp_path):
    saes = build_saes({"s": {"arch": "topk", "width": 32, "k": 2, "hook_name": SRC}},
                      widths_of(cache))  # fmt: skip
    cfg = TrainConfig(n_tokens=10 * BATCH, batch_size=BATCH, lr=1e30, clip_grad_norm=1e30,
                      log_every=100, checkpoint_every=0)  # fmt: skip
    with pytest.raises(TrainingDivergedError, match="'s': non-finite"):
        train_saes(cache, saes, cfg, {"s": tmp_path / "s"}, progress=False)
    assert not (tmp_path / "s").exists()
    assert not list(default_checkpoint_dir(tmp_path / "s").glob("*.pt"))


def test_a_checkpoint_of_another_config_is_not_resumed(cache, tmp_path):
    spec = {"s": {"arch": "topk", "width": 32, "k": 2, "hook_name": SRC}}
    cfg = TrainConfig(n_tokens=12 * BATCH, batch_size=BATCH, lr=1e-3, checkpoint_every=5)
    saes = build_saes(spec, widths_of(cache))
    _poison_at(saes["s"], 8)
    with pytest.raises(TrainingDivergedError):
        train_saes(cache, saes, cfg, {"s": tmp_path / "s"}, progress=False)
    other = TrainConfig(n_tokens=12 * BATCH, batch_size=BATCH, lr=2e-3, checkpoint_every=5)
    train_saes(cache, build_saes(spec, widths_of(cache)), other, {"s": tmp_path / "s"},
               progress=False)  # fmt: skip
    assert json.loads((tmp_path / "s" / "config.json").read_text())["resumed_from_step"] == 0


# ------------------------------------------------------------------ the Snakemake script


class _Named(dict):
    """Enough of Snakemake's Namedlist: attribute access and ``items()``."""

    __getattr__ = dict.__getitem__


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
