"""Paper-scale smoke test (issue 14, item 6): the ``gpt2-small`` preset's whole DAG on CPU at
its real widths and hooks, with token budgets cut by ``tests/config/gpt2-small-smoke.yaml``.

Offline stand-ins, built here in the test's directory:

* a GPT-2 of the real architecture (transformers' ``GPT2Config`` defaults: 12 layers, d 768,
  12 heads, 1024 positions), random weights, saved in HF format and reached through
  ``model_path``. Its vocabulary is the tokenizer's: a byte-level BPE trained on the whole
  python-docs corpus (the corpus the overlay switches to), which supports 20,237 tokens, not
  GPT-2's 50,257; a model with embedding rows no token can reach would only pad the
  unembedding, so the model is built to match (~101M parameters instead of 124M; every block
  is GPT-2 small's);
* the ``gpt2-small-res-jb`` release at ``blocks.8.hook_resid_pre``: a standard (ReLU) SAE-Lens
  SAE 768 x 24,576 with random tied weights, saved by SAE-Lens in the release's folder of
  ``data/releases``, so rule ``pretrained_sae`` and the co-occurrence comparison read real
  weights through SAE-Lens's own loader.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from saelab.checks import load_config
from saelab.schema import REPO_ROOT
from tests.conftest import SNAKEMAKE

DEFAULT = REPO_ROOT / "config" / "config.yaml"
PRESET = REPO_ROOT / "config" / "gpt2-small.yaml"
OVERLAY = REPO_ROOT / "tests" / "config" / "gpt2-small-smoke.yaml"
RES_JB = ("gpt2-small-res-jb", "blocks.8.hook_resid_pre")


def build_gpt2_small(out: Path) -> Path:
    """GPT-2 small's architecture with random weights and a python-docs BPE tokenizer, saved
    in HF format in ``out`` (the directory ``model_path`` names)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from saelab.data import python_docs_documents
    from saelab.models import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(python_docs_documents(), 50257, out)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    config.n_ctx = config.n_positions  # transformers 5 dropped n_ctx; TransformerLens reads it
    GPT2LMHeadModel(config).save_pretrained(out)
    return out


def build_res_jb(root: Path, l0: int = 32) -> Path:
    """The res-jb stand-in in ``root/data/releases``, saved by SAE-Lens (``save_model``)."""
    from sae_lens.loading.pretrained_saes_directory import get_repo_id_and_folder_name

    from tests.e2e.test_pretrained import sparse_release

    release, sae_id = RES_JB
    sae = sparse_release("standard", 24576, l0, sae_id, seed=8, d_in=768)
    sae.cfg.metadata.model_name = "gpt2-small"
    repo, folder = get_repo_id_and_folder_name(release, sae_id)
    path = root / "data" / "releases" / repo / folder
    sae.save_model(path)
    return path


def job_counts(text: str) -> Counter:
    """Jobs per rule of Snakemake's "Job stats" table (the first one in ``text``)."""
    table = text.split("Job stats:", 1)[1].split("total", 1)[0]
    rows = (re.match(r"^(\w+)\s+(\d+)$", line.strip()) for line in table.splitlines())
    return Counter({m[1]: int(m[2]) for m in rows if m})


def finished_jobs(text: str) -> Counter:
    """Jobs per rule that Snakemake reports finished in a run's output."""
    return Counter(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", text))


def run_snakemake(workdir: Path, *args: str) -> str:
    """The repository's Snakefile, niced (the test runs beside others), output as text."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(["nice", "-n", "15", *SNAKEMAKE, "--directory", str(workdir), *args],
                            capture_output=True, text=True, env=env, timeout=3600)  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, f"snakemake failed:\n{out[-6000:]}"
    return out


def train_rule(group: str) -> str:
    return "train_saes_" + re.sub(r"\W", "_", group)


@pytest.mark.slow
@pytest.mark.paperscale
def test_gpt2_small_preset_dag_at_real_width(tmp_path, monkeypatch):
    """Every rule the gpt2-small preset schedules runs once, at the preset's widths and hooks,
    on a GPT-2 of the real architecture, with the res-jb release's real-width stand-in."""
    model_dir = build_gpt2_small(tmp_path / "gpt2")
    work = tmp_path / "run"
    release = build_res_jb(work)
    model = f"model_path={model_dir}"

    # The preset's own DAG (no overlay), planned only: its full token budgets (whose 19 GB of
    # caches the test's disk need not hold, since nothing is written).
    no_disk_check = tmp_path / "no-disk-check.yaml"
    no_disk_check.write_text("budget: {check_disk: false}\n")
    plan = run_snakemake(work, "-n", "--configfile", str(PRESET), str(no_disk_check),
                         "--config", model)  # fmt: skip
    planned = job_counts(plan)
    assert "pretrained_sae" in planned and "cooccurrence" in planned, planned

    out = run_snakemake(work, "--cores", "2", "--configfile", str(PRESET), str(OVERLAY),
                        "--config", model)  # fmt: skip
    ran = finished_jobs(out)

    monkeypatch.chdir(work)  # the release store resolves relative to the working directory
    preset = load_config(DEFAULT, PRESET)
    smoke = load_config(DEFAULT, PRESET, OVERLAY)
    # Same SAEs; the overlay only splits two sweeps' training groups (memory), so the training
    # rules differ by name: each group of each config trains once.
    assert {r.name for rs in preset.sae_groups().values() for r in rs} == {
        r.name for rs in smoke.sae_groups().values() for r in rs}  # fmt: skip
    for cfg, counts in ((preset, planned), (smoke, ran)):
        trains = {rule: n for rule, n in counts.items() if rule.startswith("train_saes_")}
        assert trains == {train_rule(group): 1 for group in cfg.sae_groups()}
    other = Counter({k: v for k, v in planned.items() if not k.startswith("train_saes_")})
    assert Counter({k: v for k, v in ran.items() if not k.startswith("train_saes_")}) == other
    # And nothing is left to do.
    assert "Nothing to be done" in run_snakemake(
        work, "-n", "--configfile", str(PRESET), str(OVERLAY), "--config", model)  # fmt: skip

    check_outputs(work, preset, smoke.cooccurrence["n_tokens"], release)


def check_outputs(work: Path, preset, cooc_tokens: int, release_dir: Path) -> None:
    """The preset's widths and hooks in every SAE; the res-jb stand-in's own codes (SAE-Lens's
    encoder on the cached activations) in the co-occurrence counts; every figure written."""
    import numpy as np
    import torch
    from sae_lens import SAE as SaeLensSAE

    from saelab.cache import open_cache
    from saelab.cooccurrence.counts import load_counts

    results = work / "results" / "gpt2-small"
    for name, run in preset.saes.items():
        raw = json.loads((results / run.hook / name / "cfg.json").read_text())
        assert raw["d_in"] == 768, name
        assert raw["metadata"]["hook_name"] == run.hook, name
        if run.is_pretrained:
            assert raw["d_sae"] == 24576 and name == "res-jb"
            continue
        assert raw["d_sae"] == run.width, name
        assert raw["metadata"]["hook_name_out"] == run.target_hook, name
        saved = raw["saelab"]["config"]
        for key in ("k", "group_sizes"):
            if key in run.options:
                assert saved[key] == run.options[key], (name, key)
    assert len(preset.saes) == 4 + 1 + 20 + 12  # 4 named, res-jb, the grid, 12 layers
    assert {run.hook for name, run in preset.saes.items() if name.startswith("layers")} == {
        f"blocks.{layer}.hook_resid_mid" for layer in range(12)}  # fmt: skip

    # Co-occurrence at tau 0 of the stand-in: its firing counts are SAE-Lens's own encoding of
    # the first n non-special tokens of the main cache (split all, cache order).
    cooc = work / "data" / "analysis" / "cooccurrence" / "gpt2-small"
    counts = load_counts(cooc / RES_JB[1] / "res-jb" / "counts_tau0_0.npz")
    n = counts.n_tokens
    assert n == cooc_tokens
    cache = open_cache(work / "data" / "cache" / "gpt2-small" / "main.zarr")
    keep = ~np.asarray(cache["special_mask"][:])
    x = np.asarray(cache[RES_JB[1]][:])[keep][:n]
    release = SaeLensSAE.load_from_disk(release_dir)
    with torch.no_grad():
        fired = (release.encode(torch.from_numpy(x).float()) > 0).sum(0).numpy()
    assert counts.firing_count.shape == (24576,)
    # the same codes up to float rounding at the ReLU's edge
    assert np.abs(counts.firing_count - fired).sum() <= 1e-3 * fired.sum()
    assert fired.sum() > 0
    summary = json.loads((cooc / "summary_tau0_0.json").read_text())["saes"]
    assert summary["res-jb"]["pretend_groups"] and not summary["matryoshka"]["pretend_groups"]
    assert summary["res-jb"]["group_sizes"] == summary["matryoshka"]["group_sizes"]

    evaluation = work / "data" / "analysis" / "evaluation" / "gpt2-small"
    for name in ("batchtopk", "matryoshka", "relu", "res-jb"):
        assert json.loads((evaluation / RES_JB[1] / f"{name}.json").read_text()), name
    for analysis in ("saes", "cooccurrence", "darkmatter", "trajectories"):
        figures = [p for p in (work / "plots" / analysis).rglob("*") if p.suffix == ".png"]
        assert figures and all(p.stat().st_size > 1000 for p in figures), analysis
    assert len(list((work / "plots" / "darkmatter").glob("fig*.png"))) >= 15
    assert (work / "results" / "summary.md").stat().st_size > 0


def test_sweep_group_template_splits_a_family_without_changing_its_saes():
    """The overlay's memory split: a ``group`` template over the sweep's axes gives one group
    per value; names, widths, ks and hooks are those of the one-group family."""
    from saelab.sweeps import expand_sweep

    spec = {"arch": "topk", "hook": "blocks.8.hook_resid_pre", "width": [3072, 49152],
            "k": [16, 128]}  # fmt: skip
    whole, _ = expand_sweep("darkmatter", spec, 12)
    split, _ = expand_sweep("darkmatter", {**spec, "group": "darkmatter-k{k}"}, 12)
    assert {run["group"] for run in whole.values()} == {"darkmatter"}
    assert {name: run["group"] for name, run in split.items()} == {
        "darkmatter-w3072-k16": "darkmatter-k16",
        "darkmatter-w3072-k128": "darkmatter-k128",
        "darkmatter-w49152-k16": "darkmatter-k16",
        "darkmatter-w49152-k128": "darkmatter-k128",
    }
    for name, run in split.items():
        assert {**run, "group": "darkmatter"} == whole[name]


def test_error_bars_of_an_interval_not_holding_its_point_are_zero():
    """The smoke run's fig09 crashed: with 2 contexts the percentile bootstrap's lower bound was
    the point plus 5e-13, and matplotlib refuses a negative yerr."""
    from saelab.plots.common import interval_yerr

    rows = [{"p": -41.22494561415822, "intervals": {"p": [-41.22494561415774, 4.9]}},
            {"p": 1.0, "intervals": {"p": [0.5, 3.0]}}]  # fmt: skip
    low, high = interval_yerr(rows, "p", "p")
    assert low == [0.0, 0.5] and high == pytest.approx([46.12494561415822, 2.0])
