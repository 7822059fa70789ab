# Helpers of summary.smk: what results/summary.md reads and the command that makes it.
from pathlib import Path


def summary_inputs(wildcards):
    """Every output the summary reads that the config makes: named-SAE evaluations, the
    dark-matter JSONs, co-occurrence summaries and trajectory evolutions."""
    inputs = {f"eval_{name}": sae_metrics_path(name) for name in CFG.named_saes}
    if darkmatter_points():
        base = darkmatter_sweep_dir()
        for key in ("scaling", "norms", "baselines", "noise"):
            inputs[f"dm_{key}"] = f"{base}/{key}.json"
        inputs["dm_downstream"] = dmi_path("downstream_ce.json")
    if cooccurrence_sae_names():
        for tag in cooccurrence_tags():
            inputs[f"cooc_{tag}"] = f"{cooccurrence_dir()}/summary_tau{tag}.json"
    for prompt in TRAJ.prompt_names:
        inputs[f"traj_{prompt}"] = trajectory_evolution_path(prompt)
    return inputs


def summary_command():
    """The command that makes this summary: the same config files as this run, named relative
    to the repository when they are in it (so the page does not depend on the working
    directory)."""
    extra = getattr(workflow, "overwrite_configfiles", None) or []
    repo = Path(workflow.basedir).resolve()
    names = []
    for configfile in extra:
        path = Path(configfile).resolve()
        names.append(
            str(path.relative_to(repo)) if path.is_relative_to(repo) else str(path)
        )
    files = "".join(f" --configfile {name}" for name in names)
    return f"snakemake --cores all results/summary.md{files}"
