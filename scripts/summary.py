"""Rule summary: results/summary.md, the README's results tables from this run's outputs."""

import json
import os
from pathlib import Path

from saelab.models import configured_device
from saelab.precision import probe_host
from saelab.runtime import logged, write_text_atomic
from saelab.summary import (
    cooccurrence_section,
    darkmatter_section,
    git_commit,
    render_summary,
    sae_section,
    trajectories_section,
)


def read(key):
    return json.loads(Path(snakemake.input[key]).read_text())


def by_prefix(prefix):
    keys = [k for k in snakemake.input.keys() if k.startswith(prefix)]
    return {k[len(prefix) :]: read(k) for k in keys}


with logged(snakemake.log[0]) as log:
    keys = set(snakemake.input.keys())
    dark = {k: read(f"dm_{k}") if f"dm_{k}" in keys else None
            for k in ("scaling", "downstream", "baselines", "noise", "norms")}  # fmt: skip
    sections = [
        sae_section(by_prefix("eval_")),
        darkmatter_section(**dark),
        cooccurrence_section(by_prefix("cooc_")),
        trajectories_section(by_prefix("traj_")),
    ]
    commit = git_commit(snakemake.params.repo)
    machine = f"{os.cpu_count()} cores, {probe_host(configured_device(snakemake.config)).summary()}"
    text = render_summary(sections, commit=commit, command=snakemake.params.command,
                          model=snakemake.params.model, machine=machine)  # fmt: skip
    write_text_atomic(text, snakemake.output.summary)
    log.info(
        "wrote %s (%d sections, commit %s)",
        snakemake.output.summary,
        sum(map(bool, sections)),
        commit,
    )
