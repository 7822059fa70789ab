"""The SLURM profile's partitions and account, checked against the cluster before any job is
submitted, so that a wrong one stops the run with the setting to change (sbatch's own message
names neither the profile nor the key)."""

from __future__ import annotations

import getpass
import subprocess
from collections.abc import Mapping
from pathlib import Path

import yaml

PROFILE = "workflow/profiles/slurm/profile.yaml"


class ClusterSettingsError(ValueError):
    """A partition or account of the SLURM profile that the cluster does not have."""


def _query(args: list[str]) -> list[str] | None:
    """Lines of a SLURM command's output, or None where the command is missing or fails."""
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in out.splitlines() if line.strip()]


def cluster_partitions() -> list[str] | None:
    """The cluster's partition names (``sinfo``), or None if sinfo does not answer."""
    return _query(["sinfo", "-h", "-o", "%R"])


def user_accounts(user: str | None = None) -> list[str] | None:
    """The SLURM accounts of ``user`` (``sacctmgr``), or None without accounting (no slurmdbd)."""
    user = user or getpass.getuser()
    lines = _query(["sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", "format=account"])
    return None if lines is None else sorted(set(lines))


def partition_file_names(path: str | Path) -> list[str]:
    """Partition names of a plugin partition file (``--slurm-partition-config``)."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    parts = data.get("partitions") if isinstance(data, dict) else None
    if not isinstance(parts, dict) or not parts:
        raise ClusterSettingsError(f"{path}: no 'partitions:' mapping of partition names")
    return [str(name) for name in parts]


def check_slurm_settings(
    partitions: Mapping[str, str],
    accounts: Mapping[str, str],
    *,
    known_partitions: list[str] | None,
    known_accounts: list[str] | None,
    user: str | None = None,
) -> None:
    """Raise ClusterSettingsError naming the setting to change for the first partition or
    account the cluster does not have. ``partitions`` and ``accounts`` map each value to where it
    is set; a ``known_*`` of None (no sinfo, no accounting) skips that check."""
    user = user or getpass.getuser()
    if known_partitions is not None:
        for name, where in partitions.items():
            if name not in known_partitions:
                raise ClusterSettingsError(
                    f"SLURM partition {name!r} does not exist on this cluster (partitions here: "
                    f"{', '.join(sorted(known_partitions))}); change it in {where}"
                )
    if known_accounts is not None:
        lowered = {account.lower() for account in known_accounts}
        for name, where in accounts.items():
            if name.lower() not in lowered:
                raise ClusterSettingsError(
                    f"SLURM account {name!r} is not an account of user {user!r} (theirs: "
                    f"{', '.join(known_accounts) or 'none'}); change slurm_account in {where}"
                )
