# saelab: one DAG from text to every paper figure.
#   snakemake --cores all                      everything the config asks for
#   snakemake plots/<analysis>/<figure>.png    one figure and only what it needs
#   snakemake --profile workflow/profiles/slurm   the same DAG on a SLURM cluster
import os
import re

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config/config.yaml")


validate(config, os.path.join(workflow.basedir, "config/schema.yaml"))


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    model=re.escape(MODEL_ID),
    corpus=one_of(CFG.corpora),
    cache=one_of(CFG.caches),
    hook=r"blocks\.\d+\.[\w.]+",
    sae=r"[\w-]+",


include: "workflow/rules/models.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/cache.smk"
include: "workflow/rules/saes.smk"
include: "workflow/rules/cooccurrence.smk"
include: "workflow/rules/darkmatter.smk"
include: "workflow/rules/darkmatter_interventions.smk"
include: "workflow/rules/trajectories.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/cluster.smk"


rule all:
    default_target: True
    input:
        all_targets(),
