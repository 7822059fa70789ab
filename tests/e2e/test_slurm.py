"""End-to-end tests (they run Snakemake) moved from tests/test_slurm.py.

The SLURM profile on a real SLURM cluster: a one-node cluster on this machine
(workflow/profiles/slurm/local-cluster.sh, Debian's slurmctld, slurmd, munge, and slurmdbd on a
local MariaDB) runs a slice of the micro DAG through sbatch; its outputs equal a local run's.
Settings the cluster does not have stop the run before any sbatch, naming what to change."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from saelab.cluster import ClusterSettingsError, check_slurm_settings, partition_file_names
from saelab.schema import REPO_ROOT
from tests.conftest import MICRO, snakemake
from tests.e2e.test_workflow import planned_jobs

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
        # The virtual environment first (as after `. .venv/bin/activate`): sbatch exports this
        # environment and each job step runs `python -m snakemake` from PATH.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
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


_SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO_ROOT / "Snakefile")]


# Keys of JSON records that say when and how fast a job ran, not what it computed.
# ``completed`` stamps when a cache or an SAE was finished; ``cache_fingerprint`` hashes the
# cache manifest with that stamp in it, on purpose (a checkpoint never resumes on a rebuilt cache).
RUN_KEYS = re.compile(
    r"created|time|seconds|per_s\b|elapsed|duration|hostname|completed|cache_fingerprint"
)


def without_run_keys(value):
    if isinstance(value, dict):
        return {k: without_run_keys(v) for k, v in value.items() if not RUN_KEYS.search(k)}
    if isinstance(value, list):
        return [without_run_keys(v) for v in value]
    return value


def output_hashes(workdir: Path) -> dict[str, str]:
    """sha256 of every file under data/ and results/ (what the jobs produced); JSON records
    are hashed without the keys that say when and how fast the job ran (RUN_KEYS)."""
    hashes = {}
    for top in ("data", "results"):
        for path in sorted((workdir / top).rglob("*")):
            if not path.is_file():
                continue
            data = path.read_bytes()
            if path.suffix in (".json", ".jsonl"):
                lines = [data] if path.suffix == ".json" else data.splitlines()
                records = [json.loads(line) for line in lines if line.strip()]
                data = json.dumps(without_run_keys(records), sort_keys=True).encode()
            hashes[str(path.relative_to(workdir))] = hashlib.sha256(data).hexdigest()
    return hashes


def assert_same_outputs(local: Path, remote: Path) -> None:
    """Hash-equal outputs: the same files, the same bytes (JSON records without RUN_KEYS).
    Both runs give torch two threads per job (inside a SLURM job Snakemake caps threads at the
    CPUs it sees, 2 here), and the tiny LM trains with deterministic kernels."""
    ours, theirs = output_hashes(remote), output_hashes(local)
    assert ours.keys() == theirs.keys(), set(ours) ^ set(theirs)
    assert len(ours) > 20, len(ours)
    differ = sorted(path for path in ours if ours[path] != theirs[path])
    assert not differ, f"{len(differ)} of {len(ours)} outputs differ: {differ[:20]}"


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
    # --cores 2: inside a SLURM job Snakemake caps threads at the CPUs it sees, 2 here, whatever
    # SLURM allocated, and float sums depend on the thread count.
    snakemake(local, "--cores", "2", *CONFIGS, "--", TARGET)
    # The finished local run needs nothing under the profile (device=cuda there: GPU jobs).
    switched = snakemake(local, "-n", "--profile", str(PROFILE), *CONFIGS, "--", TARGET)
    assert "Nothing to be done" in switched.stdout + switched.stderr, switched.stdout[-3000:]
    with local_cluster(tmp_path / "cluster") as env:
        # A wrong partition or account stops the run before any sbatch, naming the setting.
        for name, old, new, file, expected in (
            ("bad_partition", "  cpu: {}", "  cpux: {}", "partitions.yaml",
             "SLURM partition 'cpux' does not exist on this cluster (partitions here: cpu, gpu); "
             "change it in {profile}/partitions.yaml"),
            ("bad_account", 'slurm_account: "saelab"', 'slurm_account: "nope"', "profile.yaml",
             "SLURM account 'nope' is not an account of user 'root' (theirs: root, saelab); "
             "change slurm_account in workflow/profiles/slurm/profile.yaml"),
        ):  # fmt: skip
            profile = profile_copy(tmp_path, name, old, new, file)
            bad = run(tmp_path / name, env, "--profile", str(profile), "--config", "device=cpu",
                      *CONFIGS, *FAST, "--", TARGET)  # fmt: skip
            output = bad.stdout + bad.stderr
            assert bad.returncode != 0, output[-3000:]
            assert expected.format(profile=profile) in output, output[-3000:]
        assert sacct_jobs(env) == [], "a bad setting must stop the run before any sbatch"

        start = time.monotonic()
        args = ("--profile", str(PROFILE), "--config", "device=cpu", *CONFIGS, *FAST)
        # (--cores 64: the dry-run then shows each rule's threads, as SLURM jobs get them)
        planned = planned_jobs(run(remote, env, *args, "-n", "--cores", "64", "--", TARGET).stdout)
        result = run(remote, env, *args, "--", TARGET)
        assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
        print(f"slurm run: {time.monotonic() - start:.0f} s")

        # Every job went through sbatch: one COMPLETED SLURM job per planned job, on the CPU
        # partition under the profile's account, with its rule's threads as CPUs.
        jobs = sacct_jobs(env)
        assert len(planned) == 6 and len(jobs) == len(planned), jobs
        assert {job["state"] for job in jobs} == {"COMPLETED"}, jobs
        assert {job["partition"] for job in jobs} == {"cpu"}
        assert {job["account"] for job in jobs} == {"saelab"}
        cpus = {job["comment"].removeprefix("rule_").split("_wildcards_")[0]: int(job["cpus"])
                for job in jobs}  # fmt: skip
        assert cpus == {job.name: job.threads for job in planned}, cpus
        assert max(cpus.values()) == 4 and min(cpus.values()) == 1
        # SLURM's own logs and every rule's log and benchmark are where the README says.
        assert list((remote / ".snakemake" / "slurm_logs").rglob("*.log"))
        for rule in ("build_corpus", "train_tiny_lm", "cache_activations", "train_saes"):
            assert list((remote / "logs" / rule).rglob("*.log")), rule
            assert list((remote / "logs" / "benchmarks" / rule).rglob("*.tsv")), rule

        assert_same_outputs(local, remote)

        # Nothing to do again, through the profile or locally (switching executors reruns nothing).
        again = run(remote, env, "--profile", str(PROFILE), "-n", *CONFIGS, "--", TARGET)
        assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]
        back = snakemake(remote, "-n", "--cores", "2", *CONFIGS, "--", TARGET)
        assert "Nothing to be done" in back.stdout + back.stderr
        assert len(sacct_jobs(env)) == len(planned)


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
        assert (workdir / target / "tokenizer.json").exists()
        assert len(list((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))) == 2
        # The squeue status sees each job finish soon after it does (with the sacct status the
        # plugin would keep waiting: 17 minutes for a 9 s job): the run takes little more than
        # its two jobs plus three Snakemake start-ups (the run's and the two job steps').
        work = sum(float(path.read_text().splitlines()[1].split()[0])
                   for path in (workdir / "logs" / "benchmarks").rglob("*.tsv"))  # fmt: skip
        print(f"squeue run: {elapsed:.0f} s, jobs {work:.0f} s")
        assert elapsed < work + 300, (elapsed, work)
