"""The Snakemake workflow: lint, bad configs fail before any job, the SLURM profile asks for GPUs,
and the whole DAG runs end to end on the micro config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import MICRO, snakemake

from saelab.cache import ActivationReader, cache_manifest
from saelab.config import REPO_ROOT


def jobs_by_rule(dry_run_output: str) -> dict[str, str]:
    """Map rule name -> the resources line of its job in a dry-run printout."""
    jobs = {}
    for block in re.split(r"\n(?=\S.*\n?rule \w+:|rule \w+:)", dry_run_output):
        rule = re.search(r"rule (\w+):", block)
        resources = re.search(r"resources: (.*)", block)
        if rule and resources:
            jobs[rule.group(1)] = resources.group(1)
    return jobs


def test_lint_is_clean(tmp_path):
    result = snakemake(tmp_path, "--lint")
    assert "Congratulations" in result.stdout + result.stderr


def test_default_dag_reaches_the_activation_cache(tmp_path):
    result = snakemake(tmp_path, "-n")
    for rule in ("prepare_model", "build_corpus", "tokenize_corpus", "cache_activations"):
        assert f"rule {rule}:" in result.stdout
    assert "data/cache/gemma-3-270m/main.zarr" in result.stdout


def test_cooccurrence_benchmark_overlay_trains_its_16k_saes_in_one_job(tmp_path):
    overlay = REPO_ROOT / "benchmarks" / "config" / "cooccurrence_16k.yaml"
    hook_dir = "results/gemma-3-270m/blocks.6.hook_resid_pre"
    result = snakemake(
        tmp_path, "-n", "--configfile", str(REPO_ROOT / "config" / "config.yaml"), str(overlay),
        "--", f"{hook_dir}/matryoshka-16k", f"{hook_dir}/batchtopk-16k",
    )  # fmt: skip
    assert result.stdout.count("rule train_saes_bench_16k:") == 1
    assert "rule train_saes_resid_pre:" not in result.stdout  # only what the benchmark needs


def test_slurm_profile_asks_gpu_rules_for_a_gpu(tmp_path):
    profile = REPO_ROOT / "workflow" / "profiles" / "slurm"
    result = snakemake(tmp_path, "-n", "--profile", str(profile))
    jobs = jobs_by_rule(result.stdout)
    assert "gpu=1" in jobs["cache_activations"]
    assert "slurm_partition=gpu" in jobs["cache_activations"]
    for cpu_rule in ("build_corpus", "tokenize_corpus", "prepare_model"):
        assert "gpu=1" not in jobs[cpu_rule], cpu_rule
    tiny = snakemake(tmp_path, "-n", "--profile", str(profile), "--configfile", str(MICRO))
    assert "gpu=1" in jobs_by_rule(tiny.stdout)["train_tiny_lm"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("model=gpt-17", "unknown model 'gpt-17'"),
        ("device=tpu", "'tpu' is not one of"),
        ("caches={'main': {'corpus': 'python-docs', 'hooks': ['blocks.99.hook_resid_pre']}}",
         "caches.main.hooks[0]: hook 'blocks.99.hook_resid_pre' names layer 99"),
    ],
)  # fmt: skip
def test_bad_config_fails_before_any_job(tmp_path, config, message):
    result = snakemake(tmp_path, "--cores", "1", "--config", config, check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "data").exists(), "no job may run on a bad config"


@pytest.mark.slow
def test_micro_dag_end_to_end(micro_run):
    """The whole DAG on the micro config: corpus, tokenizer, tiny LM, tokens, activation cache."""
    tmp_path = micro_run
    cache = tmp_path / "data" / "cache" / "tiny" / "main.zarr"
    manifest = cache_manifest(cache)
    assert manifest["model"] == "tiny" and manifest["backend"] == "transformer_lens"
    assert manifest["n_tokens"] == 32768 and manifest["context_len"] == 64
    assert len(manifest["corpus_fingerprint"]) == 64

    # The tiny LM learned: its held-out loss is clearly below the corpus's unigram entropy.
    metrics = json.loads((tmp_path / "data/models/tiny/tiny/metrics.json").read_text())
    assert metrics["final_val_loss"] < metrics["unigram_entropy"] - 0.5

    # Every job wrote a log and a benchmark record.
    for rule in ("build_corpus", "train_tiny_tokenizer", "train_tiny_lm", "tokenize_corpus",
                 "cache_activations"):  # fmt: skip
        assert list((tmp_path / "logs" / rule).rglob("*.log")), rule
        assert list((tmp_path / "logs" / "benchmarks" / rule).rglob("*.tsv")), rule

    # Cached activations are real: finite, not constant, and the residual stream grows.
    reader = ActivationReader(cache, ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"], 256)
    first, second = reader.read_all(max_rows=4096)
    assert np.isfinite(first.numpy()).all() and first.std() > 0
    assert second.norm(dim=1).mean() > first.norm(dim=1).mean()
    special = zarr.open_group(cache, mode="r")["special_mask"][:]
    assert special[::64].all(), "with bos: per_context every context starts with BOS"
    assert special.mean() < 0.2

    # SAEs: trained, SAE-Lens-loadable, evaluated; Matryoshka prefixes improve group by group.
    from sae_lens import SAE as SAELensSAE

    for name in ("batchtopk", "matryoshka", "relu"):
        sae_dir = tmp_path / "results/tiny/blocks.1.hook_resid_pre" / name
        SAELensSAE.load_from_disk(sae_dir)
        assert json.loads((sae_dir / "config.json").read_text())["completed"]
        evaluation = json.loads(
            (
                tmp_path / f"data/analysis/evaluation/tiny/blocks.1.hook_resid_pre/{name}.json"
            ).read_text()
        )
        assert 0 < evaluation["fvu"] < 0.9, (name, evaluation["fvu"])
        assert 0 <= evaluation["ce_recovered"]["ce_loss_score"] <= 1.05
    prefix = [
        row["dim_centred"]
        for row in evaluation_of(tmp_path, "matryoshka")["matryoshka"]["prefix_fvu"]
    ]
    # After 80 steps the last groups are barely trained, so only the ends are compared.
    assert prefix[-1] < prefix[0], prefix
    transcoder = evaluation_of(tmp_path, "matryoshka-transcoder", "blocks.1.hook_resid_mid")
    assert transcoder["fvu"] < 1
    for figure in ("training_curves", "l0_fvu_frontier", "matryoshka_prefix_fvu", "ce_recovered",
                   "toy_absorption"):  # fmt: skip
        assert (tmp_path / "plots/saes" / f"{figure}.png").stat().st_size > 10_000, figure

    # Nothing left to do, and asking for the cache again rebuilds nothing.
    again = snakemake(tmp_path, "--cores", "2", "--configfile", str(MICRO), "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_summary_of_the_micro_run_has_every_table_stamped(micro_run):
    """results/summary.md (rule summary, part of `all`): the commit and command, the SAE table
    with bootstrap intervals under both BOS conventions, the dark-matter fit with its intervals
    and Fig 9's bootstrap intervals, co-occurrence and trajectory tables."""
    text = (micro_run / "results" / "summary.md").read_text()
    assert re.search(r"commit: `[0-9a-f]{40}(-dirty)?`", text), text[:300]
    assert "command: `snakemake --cores all results/summary.md --configfile" in text
    assert "micro.yaml" in text
    for section in ("## SAEs", "## Dark matter", "## Co-occurrence", "## Trajectories"):
        assert section in text, section
    sae_rows = [r for r in text.split("## Dark matter")[0].splitlines() if r.startswith("| ")]
    for name in ("batchtopk", "matryoshka", "relu", "matryoshka-transcoder"):
        row = next(r for r in sae_rows if r.startswith(f"| {name} |"))
        # CE loss score, KL and the other convention's score each carry [low, high]
        assert len(re.findall(r"\[-?[\d.e+-]+, -?[\d.e+-]+\]", row)) == 3, row
    evaluation = evaluation_of(micro_run, "batchtopk")["ce_recovered"]
    low, high = evaluation["intervals"]["ce_loss_score"]
    assert f"{evaluation['ce_loss_score']:.3f} [{low:.3f}, {high:.3f}]" in text
    assert {evaluation["bos_convention"], evaluation["other_convention"]["bos_convention"]} == {
        "splice",
        "clean",
    }
    law = next(r for r in text.splitlines() if "power law FVU = c + a·W^(−m)" in r)
    assert "delta method" in law or "3 widths leave the 3-parameter fit no degrees" in law, law
    assert "Fig 9" in text and "percentile bootstrap over contexts" in text
    dark = text.split("## Dark matter")[1].split("## Co-occurrence")[0]
    for row in [r for r in dark.splitlines() if r.startswith("| ") and "quantity" not in r]:
        assert "[" in row or "no interval" in row, row


def evaluation_of(workdir: Path, name: str, hook: str = "blocks.1.hook_resid_pre") -> dict:
    path = workdir / "data/analysis/evaluation/tiny" / hook / f"{name}.json"
    return json.loads(path.read_text())


@pytest.mark.slow
def test_report_holds_every_figure_with_a_caption(micro_run):
    """`snakemake --report` on the micro run: every PNG and HTML under plots/ is in it."""
    import zipfile
    from collections import Counter

    snakemake(micro_run, "--configfile", str(MICRO), "--report", "report.zip")
    with zipfile.ZipFile(micro_run / "report.zip") as archive:
        names = archive.namelist()
    in_report = Counter(Path(n).name for n in names if "/data/raw/" in n)
    figures = Counter(
        p.name for p in (micro_run / "plots").rglob("*") if p.suffix in (".png", ".html")
    )
    assert figures, "the micro run drew no figures"
    missing = figures - in_report
    assert not missing, f"figures not in the report: {sorted(missing)}"
    captions = list((REPO_ROOT / "workflow" / "report").glob("*.rst"))
    assert len(captions) >= 30 and all(c.read_text().strip() for c in captions)
