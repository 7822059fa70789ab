"""Run tracking (saelab.tracking): a group trained by the train_sae script with W&B offline
logs every train_log.jsonl record, read back from the run file; off by default."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest

from saelab.checks import load_config
from saelab.tracking import (
    TrackingError,
    log_evaluation,
    read_offline_history,
    read_offline_summary,
    tracker_for,
)
from saelab.train import TrainConfig
from tests.training.helpers import BATCH, SRC, _Named, make_cache

REPO = Path(__file__).resolve().parents[1]


def test_micro_training_logs_its_history_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run goes under logs/wandb of the working directory
    cache = make_cache(tmp_path / "cache.zarr")
    tracking = load_config(
        REPO / "tests" / "config" / "micro.yaml",
        overrides={"tracking": {"wandb": {"project": "saelab-test", "mode": "offline"}}},
    ).tracking
    snakemake = SimpleNamespace(
        input=_Named(cache=str(cache)),
        params=_Named(
            saes={
                "a": {"arch": "topk", "width": 32, "k": 2, "hook_name": SRC},
                "b": {
                    "arch": "batchtopk",
                    "width": 32,
                    "k": 2,
                    "hook_name": SRC,
                },
            },
            train={"n_tokens": 12 * BATCH, "batch_size": BATCH, "lr": 1e-3, "log_every": 4},
            group="g",
            tracking=tracking,
        ),
        output=_Named(a=str(tmp_path / "out" / "a"), b=str(tmp_path / "out" / "b")),
        config={"device": "cpu"},  # read at run time, not a rule param
        log=[str(tmp_path / "train.log")],
        threads=1,
    )
    runpy.run_path(str(REPO / "scripts" / "train_saes.py"), init_globals={"snakemake": snakemake})
    import wandb

    wandb.teardown()  # the W&B service writes the run file asynchronously: let it finish
    runs = list((tmp_path / "logs" / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    history = read_offline_history(runs[0])
    assert [row["_step"] for row in history] == [4, 8, 12]
    for name in ("a", "b"):
        logged = [json.loads(line) for line in (tmp_path / "out" / name / "train_log.jsonl")
                  .read_text().splitlines()]  # fmt: skip
        assert len(logged) == 3
        for row, record in zip(history, logged, strict=True):
            for key in ("loss", "l0", "fvu", "dead", "lr"):
                assert row[f"{name}/{key}"] == pytest.approx(record[key], rel=1e-12), key
    summary = read_offline_summary(runs[0])
    metrics = json.loads((tmp_path / "out" / "a" / "metrics.json").read_text())
    assert summary["a/heldout/fvu_element_global"] == pytest.approx(
        metrics["heldout"]["fvu_element_global"], rel=1e-12
    )


def test_an_evaluation_json_is_logged_as_a_run_summary(tmp_path, monkeypatch):
    import wandb

    monkeypatch.chdir(tmp_path)
    metrics = {"fvu": 0.25, "l0": {"mean": 31.5}, "ce_recovered": None, "name": "x"}
    log_evaluation({"wandb": {"project": "p", "mode": "offline"}}, "grp", "x", metrics)
    wandb.teardown()
    (run,) = (tmp_path / "logs" / "wandb" / "wandb").glob("offline-run-*")
    summary = read_offline_summary(run)
    assert summary["fvu"] == 0.25 and summary["l0/mean"] == 31.5 and summary["name"] == "x"


def test_tracking_is_off_by_default_and_checks_its_settings():
    cfg = load_config(REPO / "config" / "config.yaml")
    assert cfg.tracking == {}
    train = TrainConfig(n_tokens=8, batch_size=4)
    with tracker_for(cfg.tracking, "g", train, {}) as track:
        track.log("x", {"step": 1, "loss": 1.0})  # a no-op
    with pytest.raises(TrackingError, match="mode 'sometimes' is not allowed"):
        with tracker_for({"wandb": {"project": "p", "mode": "sometimes"}}, "g", train, {}):
            pass
