"""The SLURM profile on a real SLURM cluster: a one-node cluster on this machine
(workflow/profiles/slurm/local-cluster.sh, Debian's slurmctld, slurmd, munge, and slurmdbd on a
local MariaDB) runs a slice of the micro DAG through sbatch; its outputs equal a local run's.
Settings the cluster does not have stop the run before any sbatch, naming what to change."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import MICRO, snakemake
from test_workflow import jobs_by_rule

from saelab.cluster import ClusterSettingsError, check_slurm_settings, partition_file_names
from saelab.config import REPO_ROOT

PROFILE = REPO_ROOT / "workflow" / "profiles" / "slurm"
SCRIPT = PROFILE / "local-cluster.sh"
OVERLAY = REPO_ROOT / "tests" / "config" / "slurm_overlay.yaml"
TARGET = "results/tiny/blocks.1.hook_resid_pre/batchtopk"
CONFIGS = ("--configfile", str(MICRO), str(OVERLAY))
# A local filesystem: outputs are there at once, and SLURM answers in milliseconds.
FAST = ("--latency-wait", "5", "--slurm-init-seconds-before-status-checks", "2")


def test_check_names_the_setting_to_change():
    where = "workflow/profiles/slurm/partitions.yaml"
    check_slurm_settings({"cpu": where, "gpu": where}, {"saelab": "profile.yaml"},
                         known_partitions=["cpu", "gpu"], known_accounts=["root", "saelab"])  # fmt: skip
    with pytest.raises(ClusterSettingsError, match=r"partition 'gpux' .*partitions here: cpu, gpu.*"
                       r"change it in workflow/profiles/slurm/partitions.yaml"):  # fmt: skip
        check_slurm_settings({"gpux": where}, {}, known_partitions=["gpu", "cpu"],
                             known_accounts=None)  # fmt: skip
    with pytest.raises(ClusterSettingsError, match=r"account 'nope' is not an account of user "
                       r"'alice' \(theirs: saelab\); change slurm_account in profile.yaml"):  # fmt: skip
        check_slurm_settings({}, {"nope": "profile.yaml"}, known_partitions=None,
                             known_accounts=["saelab"], user="alice")  # fmt: skip
    # Without accounting (no slurmdbd) there is nothing to check an account against.
    check_slurm_settings({}, {"nope": "profile.yaml"}, known_partitions=None, known_accounts=None)


def test_partition_file_of_the_profile_names_cpu_and_gpu(tmp_path):
    assert partition_file_names(PROFILE / "partitions.yaml") == ["cpu", "gpu"]
    bad = tmp_path / "partitions.yaml"
    bad.write_text("cpu: {}\n")
    with pytest.raises(ClusterSettingsError, match="no 'partitions:' mapping"):
        partition_file_names(bad)


# ------------------------------------------------------------------ the real cluster
def free_port_base() -> int:
    """A base port with base, base+1 and base+2 free (slurmctld, slurmd, slurmdbd)."""
    for _ in range(50):
        base = random.randrange(20000, 40000)
        try:
            for port in range(base, base + 3):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no three free ports")


@contextmanager
def local_cluster(state: Path, accounting: bool = True):
    """Start the one-node cluster in ``state``; yield the environment that reaches it; stop it."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "SAELAB_SLURM_DIR": str(state),
        "SAELAB_SLURM_PORT": str(free_port_base()),
        "SAELAB_SLURM_DB_PORT": str(free_port_base()),
        "SLURM_CONF": str(state / "etc" / "slurm.conf"),
    }
    args = [str(SCRIPT), "start"] + ([] if accounting else ["--no-accounting"])
    started = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield env
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


def run(workdir: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    """Snakemake with the repository's Snakefile in ``workdir``, reaching the local cluster."""
    return subprocess.run(
        [*_SNAKEMAKE, "--directory", str(workdir), *args],
        capture_output=True, text=True, env=env, timeout=1800,
    )  # fmt: skip


_SNAKEMAKE = [shutil.which("python") or "python", "-m", "snakemake", "-s",
              str(REPO_ROOT / "Snakefile")]  # fmt: skip


def output_hashes(workdir: Path) -> dict[str, str]:
    """sha256 of every file under data/ and results/ (what the jobs produced)."""
    hashes = {}
    for top in ("data", "results"):
        for path in sorted((workdir / top).rglob("*")):
            if path.is_file():
                hashes[str(path.relative_to(workdir))] = hashlib.sha256(
                    path.read_bytes()
                ).hexdigest()
    return hashes


def sacct_jobs(env: dict) -> list[dict]:
    out = subprocess.run(
        ["sacct", "-X", "-a", "--parsable2", "--noheader", "--starttime", "2000-01-01",
         "--format=JobIdRaw,JobName,State,Partition,Account,AllocCPUS,Comment"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip
    keys = ("id", "name", "state", "partition", "account", "cpus", "comment")
    return [dict(zip(keys, line.split("|"), strict=True)) for line in out.splitlines() if line]


def profile_copy(tmp_path: Path, name: str, old: str, new: str, file: str) -> Path:
    copy = tmp_path / name
    shutil.copytree(PROFILE, copy)
    text = (copy / file).read_text()
    assert old in text
    (copy / file).write_text(text.replace(old, new))
    return copy


def require_root():
    if os.geteuid() != 0:
        pytest.fail("the local SLURM cluster needs root (Debian's packages; daemons run as root)")


@pytest.mark.slow
def test_micro_dag_through_sbatch_equals_a_local_run(tmp_path):
    require_root()
    local, remote = tmp_path / "local", tmp_path / "slurm"
    snakemake(local, "--cores", "2", *CONFIGS, "--", TARGET)
    with local_cluster(tmp_path / "cluster") as env:
        # A wrong partition or account stops the run before any sbatch, naming the setting.
        for name, old, new, file, expected in (
            ("bad_partition", "  cpu: {}", "  cpux: {}", "partitions.yaml",
             "SLURM partition 'cpux' does not exist on this cluster"),
            ("bad_account", 'slurm_account: "saelab"', 'slurm_account: "nope"', "profile.yaml",
             "SLURM account 'nope' is not an account of user"),
        ):  # fmt: skip
            profile = profile_copy(tmp_path, name, old, new, file)
            bad = run(tmp_path / name, env, "--profile", str(profile), "--config", "device=cpu",
                      *CONFIGS, *FAST, "--", TARGET)  # fmt: skip
            output = bad.stdout + bad.stderr
            assert bad.returncode != 0 and expected in output, output[-3000:]
            assert str(profile / file) in output, output[-3000:]
        assert sacct_jobs(env) == [], "a bad setting must stop the run before any sbatch"

        start = time.monotonic()
        result = run(remote, env, "--profile", str(PROFILE), "--config", "device=cpu",
                     *CONFIGS, *FAST, "--", TARGET)  # fmt: skip
        assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
        print(f"slurm run: {time.monotonic() - start:.0f} s")

        # Every job went through sbatch: one COMPLETED SLURM job per planned job, on the CPU
        # partition under the profile's account, with its rule's threads as CPUs.
        jobs = sacct_jobs(env)
        planned = snakemake(local, "-n", "--forceall", *CONFIGS, "--", TARGET).stdout
        n_planned = int(next(line.split()[1] for line in planned.splitlines()
                             if line.startswith("total")))  # fmt: skip
        assert len(jobs) == n_planned, jobs
        assert {job["state"] for job in jobs} == {"COMPLETED"}, jobs
        assert {job["partition"] for job in jobs} == {"cpu"}
        assert {job["account"] for job in jobs} == {"saelab"}
        threads = {"cache_activations": "4", "train_tiny_lm": "4", "train_saes_resid": "2",
                   "build_corpus": "1"}  # fmt: skip
        rules = {job["comment"].removeprefix("rule_").split("_wildcards_")[0]: job for job in jobs}
        assert rules.keys() == set(jobs_by_rule(planned)), rules.keys()
        for rule, cpus in threads.items():
            assert rules[rule]["cpus"] == cpus, rules[rule]
        # SLURM's own logs and every rule's log and benchmark are where the README says.
        assert list((remote / ".snakemake" / "slurm_logs").rglob("*.log"))
        for rule in ("build_corpus", "train_tiny_lm", "cache_activations", "train_saes"):
            assert list((remote / "logs" / rule).rglob("*.log")), rule
            assert list((remote / "logs" / "benchmarks" / rule).rglob("*.tsv")), rule

        # Outputs equal the local run's, byte for byte.
        ours, theirs = output_hashes(remote), output_hashes(local)
        assert ours.keys() == theirs.keys()
        differ = [path for path in ours if ours[path] != theirs[path]]
        assert not differ, differ

        # Nothing to do again, through the profile or locally (switching executors reruns nothing).
        again = run(remote, env, "--profile", str(PROFILE), "-n", *CONFIGS, "--", TARGET)
        assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]
        back = snakemake(remote, "-n", "--cores", "2", *CONFIGS, "--", TARGET)
        assert "Nothing to be done" in back.stdout + back.stderr
        assert len(sacct_jobs(env)) == n_planned


@pytest.mark.slow
def test_status_without_accounting_uses_squeue(tmp_path):
    """No slurmdbd: sacct does not answer, the profile's squeue status does."""
    require_root()
    workdir = tmp_path / "run"
    target = "data/tokenizers/tiny"
    with local_cluster(tmp_path / "cluster", accounting=False) as env:
        broken = subprocess.run(["sacct", "-X"], env=env, capture_output=True, text=True)
        assert broken.returncode != 0 or not broken.stdout.strip()
        start = time.monotonic()
        result = run(workdir, env, "--profile", str(PROFILE), "--config", "device=cpu", *CONFIGS,
                     *FAST, "--slurm-status-command", "squeue", "--", target)  # fmt: skip
        elapsed = time.monotonic() - start
        assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
        assert (workdir / target / "tokenizer.json").exists() or any((workdir / target).iterdir())
        assert list((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
        # The job takes seconds; the squeue status sees it finish at once (not after minutes).
        assert elapsed < 120, elapsed
