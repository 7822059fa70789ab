"""End-to-end tests (they run Snakemake) moved from tests/test_workflow.py.

The Snakemake workflow: lint, bad configs fail before any job, the SLURM profile asks for GPUs,
and the whole DAG runs end to end on the micro config."""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zarr

from saelab.cache import ActivationReader, cache_manifest
from saelab.schema import REPO_ROOT
from tests.conftest import MICRO, snakemake


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


class PlannedJob:
    """A job of a dry-run printout, as the SLURM plugin's functions read a job."""

    def __init__(self, rule: str, threads: int, resources: dict, wildcards: str = ""):
        self.name, self.threads, self.wildcards = rule, threads, wildcards
        self.resources = type("Resources", (dict,), {"__getattr__": dict.__getitem__})(resources)


def planned_jobs(dry_run_output: str) -> list[PlannedJob]:
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", dry_run_output):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        resources = re.search(r"resources: (.*)", block)
        if not (rule and resources):
            continue
        threads = re.search(r"threads: (\d+)", block)
        wildcards = re.search(r"wildcards: (.*)", block)
        values = dict(item.split("=", 1) for item in resources.group(1).split(", "))
        values = {k: int(v) if v.isdigit() else v for k, v in values.items()}
        jobs.append(PlannedJob(rule.group(1), int(threads.group(1)) if threads else 1, values,
                               wildcards.group(1) if wildcards else ""))  # fmt: skip
    return jobs


def test_slurm_profile_asks_gpu_rules_for_a_gpu(tmp_path):
    """GPU jobs go to the GPU partition with one GPU and the profile's CPUs per GPU; every other
    job to the CPU partition with cpus_per_task = its threads; device=cpu sends all to CPU. The
    partition, GPU and CPU arguments are the SLURM plugin's own, from the dry-run's jobs."""
    import logging

    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting

    profile = REPO_ROOT / "workflow" / "profiles" / "slurm"
    partitions = read_partition_file(profile / "partitions.yaml")
    logger = logging.getLogger("slurm-plugin")

    def placement(*args):
        # --cores 64: the dry-run shows each rule's own threads, as SLURM jobs get them.
        result = snakemake(tmp_path, "-n", "--cores", "64", "--profile", str(profile),
                           "--configfile", str(MICRO), *args)  # fmt: skip
        jobs = planned_jobs(result.stdout)
        assert len(jobs) > 50, result.stdout[-2000:]
        assert {job.threads for job in jobs} >= {1, 2, 4}
        return {
            job: (get_best_partition(partitions, job, logger), set_gres_string(job).strip(),
                  get_cpu_setting(job, bool(job.resources.get("gpu"))))
            for job in jobs
        }  # fmt: skip

    gpu_rules = set()
    for job, (partition, gres, cpus) in placement().items():
        if job.resources.get("gpu"):
            gpu_rules.add(job.name)
            assert (partition, gres, cpus) == ("gpu", "--gpus=1", "--cpus-per-gpu=4"), job.name
        else:
            assert (partition, gres) == ("cpu", ""), job.name
            assert cpus == f"--cpus-per-task={job.threads}", job.name
    for rule in ("train_tiny_lm", "cache_activations", "train_saes_resid", "evaluate_sae",
                 "ce_recovered", "darkmatter_downstream_ce", "trajectory_evolution"):  # fmt: skip
        assert rule in gpu_rules, rule
    for rule in ("build_corpus", "tokenize_corpus", "cooccurrence", "plot_training_curves"):
        assert rule not in gpu_rules, rule
    # The one-line no-GPU setting: every job on the CPU partition, none asks for a GPU.
    for job, (partition, gres, cpus) in placement("--config", "device=cpu").items():
        assert (partition, gres, cpus) == ("cpu", "", f"--cpus-per-task={job.threads}"), job.name


def test_set_resources_changes_one_rule_and_keeps_the_profile(tmp_path):
    profile = REPO_ROOT / "workflow" / "profiles" / "slurm"
    base = ("-n", "--profile", str(profile), "--configfile", str(MICRO))
    before = {(job.name, job.wildcards): job.resources
              for job in planned_jobs(snakemake(tmp_path, *base).stdout)}  # fmt: skip
    after = planned_jobs(
        snakemake(tmp_path, *base, "--set-resources", "train_tiny_lm:runtime=600").stdout
    )
    assert len(after) == len(before)
    for job in after:
        expected = {**before[job.name, job.wildcards]}
        if job.name == "train_tiny_lm":
            expected["runtime"] = 600
        assert job.resources == expected, job.name
        assert job.resources["slurm_account"] == "saelab", job.name


def test_default_profile_applies_to_local_runs(tmp_path):
    """profiles/default/ beside the Snakefile is in force without --profile: its printshellcmds
    prints each job's command in a dry-run; --workflow-profile none turns it off."""
    with_default = snakemake(tmp_path, "-n", "--configfile", str(MICRO))
    assert "workflow specific profile" in with_default.stderr
    assert "Shell command:" in with_default.stdout
    without = snakemake(tmp_path, "-n", "--configfile", str(MICRO), "--workflow-profile", "none")
    assert "Shell command:" not in without.stdout


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
        assert 0 < evaluation["fvu_dim_centred"] < 0.9, (name, evaluation["fvu_dim_centred"])
        assert 0 <= evaluation["ce_recovered"]["ce_loss_score"] <= 1.05
    prefix = [
        row["fvu_dim_centred"]
        for row in evaluation_of(tmp_path, "matryoshka")["matryoshka"]["prefix_fvu"]
    ]
    # After 80 steps the last groups are barely trained, so only the ends are compared.
    assert prefix[-1] < prefix[0], prefix
    transcoder = evaluation_of(tmp_path, "matryoshka-transcoder", "blocks.1.hook_resid_mid")
    assert transcoder["fvu_dim_centred"] < 1
    for figure in ("training_curves", "l0_fvu_frontier", "matryoshka_prefix_fvu", "ce_recovered",
                   "toy_absorption"):  # fmt: skip
        assert (tmp_path / "plots/saes" / f"{figure}.png").stat().st_size > 10_000, figure

    # Nothing left to do, and asking for the cache again rebuilds nothing.
    again = snakemake(tmp_path, "--cores", "2", "--configfile", str(MICRO), "-n")
    assert "Nothing to be done" in again.stdout + again.stderr

    # Switching the finished run to the SLURM profile (device=cuda, GPU partitions) plans nothing:
    # where a job runs is not part of what its outputs depend on.
    slurm = snakemake(tmp_path, "-n", "--profile", str(REPO_ROOT / "workflow/profiles/slurm"),
                      "--configfile", str(MICRO))  # fmt: skip
    assert "Nothing to be done" in slurm.stdout + slurm.stderr, slurm.stdout[-3000:]


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
    assert re.search(r"^- machine: \d+ cores, .*native bf16 on cpu: (yes|no)$", text, re.M)
    dark = text.split("## Dark matter")[1].split("## Co-occurrence")[0]
    for row in [r for r in dark.splitlines() if r.startswith("| ") and "quantity" not in r]:
        assert "[" in row or "no interval" in row, row


@pytest.mark.slow
def test_readme_tables_refresh_from_the_micro_run(micro_run, tmp_path):
    """The one command that refreshes the README (`python -m saelab.readme_results`), on a copy
    of the README and the micro run's summary: every block now holds that run's tables."""
    import subprocess
    import sys

    from saelab.readme_results import BLOCK

    readme = tmp_path / "README.md"
    readme.write_text((REPO_ROOT / "README.md").read_text())
    summary = micro_run / "results" / "summary.md"
    subprocess.run([sys.executable, "-m", "saelab.readme_results", str(readme), str(summary)],
                   check=True)  # fmt: skip
    blocks = {m["name"]: m["body"] for m in BLOCK.finditer(readme.read_text())}
    summary_text = summary.read_text()
    commit = re.search(r"commit: `([^`]+)`", summary_text)[1]
    for name, body in blocks.items():
        assert f"commit `{commit}`" in body.splitlines()[0], name
        table = next(line for line in body.splitlines() if line.startswith("| "))
        assert table in summary_text.split(f"## {name}\n", 1)[1], name
    assert "| matryoshka-transcoder | matryoshka |" in blocks["SAEs"]


def evaluation_of(workdir: Path, name: str, hook: str = "blocks.1.hook_resid_pre") -> dict:
    path = workdir / "data/analysis/evaluation/tiny" / hook / f"{name}.json"
    return json.loads(path.read_text())


def figures_of(workdir: Path) -> Counter:
    """Every PNG and HTML under plots/ by file name; the feature pages' folder counts as its
    one-page form (plots/cooccurrence/dashboards.html), which is what the report embeds."""
    pages = workdir / "plots" / "cooccurrence" / "dashboards"
    return Counter(
        p.name
        for p in (workdir / "plots").rglob("*")
        if p.suffix in (".png", ".html") and pages not in p.parents
    )


@pytest.mark.slow
def test_report_holds_every_figure_with_a_caption(micro_run):
    """The README's `snakemake --report report.html` (one self-contained file) and its .zip form
    on the micro run: every PNG and HTML under plots/ is in each, with a caption."""
    import zipfile

    captions = list((REPO_ROOT / "workflow" / "report").glob("*.rst"))
    assert len(captions) >= 30 and all(c.read_text().strip() for c in captions)
    figures = figures_of(micro_run)
    assert figures, "the micro run drew no figures"
    assert figures["dashboards.html"] == 1
    try:
        snakemake(micro_run, "--configfile", str(MICRO), "--report", "report.html")
        html = (micro_run / "report.html").read_text()
        # the results table of the report: {"plots/...": {"name": ..., "data_uri": "data:..."}}
        line = re.search(r"^\s*var results = (\{.*\});\s*$", html, re.M)
        assert line, "no results table in report.html"
        results = json.loads(line.group(1))
        in_html = Counter(Path(path).name for path in results)
        missing = figures - in_html
        assert not missing, f"figures not in report.html: {sorted(missing)}"
        for path, result in results.items():
            assert result["data_uri"].startswith("data:"), path  # embedded, not a link
            assert result["caption"].strip(), path
        page = results["plots/cooccurrence/dashboards.html"]
        assert "Top activations" in base64.b64decode(page["data_uri"].split(",", 1)[1]).decode()

        snakemake(micro_run, "--configfile", str(MICRO), "--report", "report.zip")
        with zipfile.ZipFile(micro_run / "report.zip") as archive:
            names = archive.namelist()
        in_zip = Counter(Path(n).name for n in names if "/data/raw/" in n)
        missing = figures - in_zip
        assert not missing, f"figures not in report.zip: {sorted(missing)}"
    finally:  # the determinism test compares micro_run's outputs with a fresh run's
        for name in ("report.html", "report.zip"):
            (micro_run / name).unlink(missing_ok=True)


#: Files whose bytes may differ between two identical runs: Snakemake's own state, every log
#: and benchmark record (wall times), and the report (it is stamped with its date).
NOT_COMPARED = (".snakemake", "logs", "report.html", "report.zip")
#: Fields that hold wall-clock timings (JSON keys, CSV columns, also nested, e.g. in a zarr
#: group's zarr.json): durations, speeds and the completion time stamped into the cache
#: manifest and each SAE's config.json. Dropped before hashing.
#: ``cache_fingerprint`` (each SAE's config.json) hashes the cache manifest with that time in it,
#: on purpose: checkpoints of an earlier build of a cache must not resume on a rebuilt one.
TIMING_FIELDS = {"seconds", "train_seconds", "tokens_per_s", "completed", "cache_fingerprint"}


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMING_FIELDS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def output_digest(path: Path) -> str:
    """sha256 of a file's bytes; of a JSON or CSV file, of its content without timing fields."""
    import csv
    import hashlib
    import io

    data = path.read_bytes()
    if path.suffix == ".json":
        text = json.loads(data)
        if _without_timings(text) != text:
            data = json.dumps(_without_timings(text), sort_keys=True).encode()
    elif path.suffix == ".csv":
        rows = list(csv.reader(io.StringIO(data.decode())))
        if rows and TIMING_FIELDS & set(rows[0]):
            keep = [i for i, column in enumerate(rows[0]) if column not in TIMING_FIELDS]
            data = json.dumps([[row[i] for i in keep] for row in rows]).encode()
    return hashlib.sha256(data).hexdigest()


def output_digests(workdir: Path) -> dict[str, str]:
    """:func:`output_digest` of every file a run left in ``workdir`` (see NOT_COMPARED)."""
    return {
        str(path.relative_to(workdir)): output_digest(path)
        for path in sorted(workdir.rglob("*"))
        if path.is_file() and path.relative_to(workdir).parts[0] not in NOT_COMPARED
    }


@pytest.mark.slow
def test_two_runs_from_scratch_give_identical_outputs(micro_run, tmp_path):
    """The micro DAG again in a fresh, empty directory (corpus, tokenizer, tiny LM and all):
    caches, SAE weights, metrics, tables and the bytes of every figure equal the session's run
    (timings and logs aside)."""
    again = tmp_path / "again"
    again.mkdir()
    snakemake(again, "--cores", "2", "--configfile", str(MICRO))
    first, second = output_digests(micro_run), output_digests(again)
    assert len(first) > 200, len(first)
    assert sorted(set(first) ^ set(second)) == [], "the two runs wrote different files"
    differ = sorted(path for path in first if first[path] != second[path])
    assert not differ, f"{len(differ)} of {len(first)} outputs differ: {differ[:40]}"
