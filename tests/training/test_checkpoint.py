"""Tests of ``saelab.training.checkpoint``, moved from tests/test_train.py.

Notes shared with the other tests moved from tests/test_train.py: ``tests/test_train.py``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saelab.train import (
    TrainConfig,
    TrainingDivergedError,
    build_saes,
    default_checkpoint_dir,
    train_saes,
)
from tests.training.helpers import BATCH, RESUME_CFG, RESUME_SPECS, SRC, widths_of

KILL_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from tests.training.helpers import RESUME_SPECS, RESUME_CFG, widths_of
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
    script = KILL_SCRIPT.format(
        tests=str(Path(__file__).resolve().parents[2]), cache=str(cache), root=str(killed)
    )
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
