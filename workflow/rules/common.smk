# Helpers shared by all rule files (the typed config, paths, targets, resources).
# Rules call these named functions instead of lambdas.
import re
import sys

# saelab is importable here even when it is not pip-installed in Snakemake's environment.
sys.path.insert(0, os.path.join(workflow.basedir, "src"))

from saelab.config import ConfigError, parse_config
from saelab.figures import FIGURES, figure as figure_row
from saelab.models import resolve_model

try:
    # Resolves released SAEs too: offline, a missing one stops here, before any job.
    CFG = parse_config(config)
    MODEL = resolve_model(CFG.model, tiny=CFG.tiny, model_path=CFG.model_path)
except ConfigError as err:
    raise WorkflowError(f"invalid config: {err}") from None

MODEL_ID = MODEL.model_id

# Budgets before any job: every cache's bytes and every training group's peak memory, and a stop
# when the caches still to be written do not fit under data/ (saelab.budget).
from saelab.budget import BudgetError, check_disk, describe, group_mem_mb, plan

if workflow.is_main_process:
    BUDGET = plan(CFG, MODEL, "data")
    print(describe(BUDGET), file=sys.stderr)
    if CFG.raw.get("budget", {}).get("check_disk", True):
        try:
            check_disk(BUDGET, "data")
        except BudgetError as err:
            raise WorkflowError(f"budget: {err}") from None


def one_of(names):
    """A wildcard regex matching exactly one of ``names``."""
    return "|".join(re.escape(name) for name in names)


# ------------------------------------------------------------------ paths
def model_dir_path():
    return f"data/models/{MODEL_ID}"


def tokenizer_input(wildcards):
    """The tokenizer of the configured model: trained here for tiny, else the prepared model."""
    if MODEL.source == "tiny":
        return "data/tokenizers/tiny"
    return model_dir_path()


def tokens_path(corpus):
    return f"data/tokens/{MODEL_ID}/{corpus}.zarr"


def cache_path(cache):
    return f"data/cache/{MODEL_ID}/{cache}.zarr"


def tiny_tokens_input(wildcards):
    return tokens_path(CFG.tiny.corpus)


def cache_tokens_input(wildcards):
    return tokens_path(CFG.caches[wildcards.cache].corpus)


# ------------------------------------------------------------------ params
def corpus_params(wildcards):
    return vars(CFG.corpora[wildcards.corpus])


def cache_params(wildcards):
    return vars(CFG.caches[wildcards.cache])


def model_params(wildcards):
    return {
        "name": CFG.model,
        "model_path": CFG.model_path,
        "precision": CFG.precision,
        "tiny": vars(CFG.tiny),
    }


# ------------------------------------------------------------------ resources
def gpu_request(wildcards):
    """One GPU for the kinds of rules that run a model or train, when the config's device is cuda.

    It is the only place that decides whether a job needs a GPU: rules of those kinds declare
    ``gpu=gpu_request``, and the SLURM profile maps ``gpu`` to the GPU partition. The device is
    not a param (scripts read it from the config at run time), so switching executors reruns
    nothing.
    """
    return 1 if CFG.device == "cuda" else 0


# ------------------------------------------------------------------ targets
def all_targets():
    """Every cache, every file of the figure registry that the config asks for
    (:func:`figure_targets`), the co-occurrence edge table and the summary."""
    edge_table = [f"{cooccurrence_dir()}/edge_thresholds.csv"] * bool(
        cooccurrence_sae_names()
    )
    return (
        [cache_path(name) for name in CFG.caches]
        + figure_targets()
        + edge_table
        + ["results/summary.md"]
    )


def sweep_runs(sweep):
    """The SAE runs of one ``sweeps`` family, in config order (name, layer, width, k in each point)."""
    if sweep not in CFG.sweeps:
        raise WorkflowError(
            f"no sweep {sweep!r}; the config defines: {sorted(CFG.sweeps)}"
        )
    return [CFG.saes[point.name] for point in CFG.sweeps[sweep]]


# ------------------------------------------------------------------ SAEs
def sae_dir(run):
    """results/{model}/{hook}/{sae}: an SAE in SAE-Lens format plus config and metrics."""
    return f"results/{MODEL_ID}/{run.hook}/{run.name}"


def sae_dir_by_name(name):
    return sae_dir(CFG.saes[name])


def train_rule_name(group):
    safe = re.sub(r"\W", "_", group)
    return f"train_saes_{safe}"


def group_train_params(runs):
    """SAEConfig kwargs (widths come from the cache) and TrainConfig kwargs of a group."""
    train = CFG.train_settings(runs[0])
    return {
        "saes": {run.name: run.sae_config_kwargs(MODEL_ID) for run in runs},
        "train": {**train, "precision": CFG.precision},
    }


def train_inputs(runs):
    """A group's inputs: its cache, or (``source: stream``) the tokens and the model."""
    if CFG.train_settings(runs[0]).get("source", "cache") == "stream":
        return {
            "tokens": tokens_path(CFG.caches[runs[0].cache].corpus),
            "model_dir": model_dir_path(),
        }
    return {"cache": cache_path(runs[0].cache)}


def train_mem_mb(runs):
    """A training group's memory request: 1.5 x its estimated peak, at least 8 GB."""
    return group_mem_mb(CFG, runs, MODEL)


def sae_group_param(wildcards):
    return CFG.saes[wildcards.sae].group_name


def sae_input(wildcards):
    return sae_dir_by_name(wildcards.sae)


def sae_cache_input(wildcards):
    return cache_path(CFG.saes[wildcards.sae].cache)


def eval_params(wildcards):
    return dict(CFG.evaluation)


def ce_scores_path(cache):
    """CE recovered and KL of every named SAE of one cache (one job, one model load)."""
    return f"data/analysis/evaluation/{MODEL_ID}/ce_recovered/{cache}.json"


def sae_ce_scores_input(wildcards):
    return ce_scores_path(CFG.saes[wildcards.sae].cache)


def ce_sae_names(wildcards):
    """Named SAEs (not sweep families) trained on the cache of this CE job."""
    return [
        name for name, run in CFG.named_saes.items() if run.cache == wildcards.cache
    ]


def ce_sae_inputs(wildcards):
    return [sae_dir_by_name(name) for name in ce_sae_names(wildcards)]


def sae_metrics_path(name):
    return f"data/analysis/evaluation/{MODEL_ID}/{CFG.saes[name].hook}/{name}.json"


def all_sae_evaluations(wildcards):
    """Evaluations of the named SAEs (sweep families are evaluated by their own analyses)."""
    return {name: sae_metrics_path(name) for name in CFG.named_saes}


def frontier_grid_inputs(wildcards):
    """regression.json (FVU and L0) of every dark-matter grid SAE, for the frontier figure."""
    return [darkmatter_regression_json_path(name) for name in darkmatter_sae_names()]


def frontier_grid_params():
    """Coordinates of the grid SAEs, in the order of :func:`frontier_grid_inputs`."""
    return [
        {"name": p.name, "width": p.width, "k": p.k, "hook": CFG.saes[p.name].hook,
         "arch": CFG.saes[p.name].arch}
        for p in darkmatter_points()
    ]  # fmt: skip


def trained_named_saes():
    """Named SAEs that are trained here (released ones have no training log)."""
    return [name for name, run in CFG.named_saes.items() if not run.is_pretrained]


def all_sae_dirs(wildcards):
    return {name: sae_dir_by_name(name) for name in trained_named_saes()}


def pretrained_params(wildcards):
    """The release a pretrained SAE comes from (saelab.saes.pretrained.ReleaseInfo fields)."""
    return CFG.saes[wildcards.sae].pretrained["info"]


def pretrained_mem_mb(wildcards):
    """SAE-Lens's loader holds the release's weights twice (npz or safetensors, then the SAE),
    saelab's copy once more: 3 x (W_enc + W_dec) in fp32, plus 1 GB."""
    info = CFG.saes[wildcards.sae].pretrained["info"]
    weights = info["d_sae"] * (info["d_in"] + info["d_out"]) * 4
    return 1000 + 3 * weights // 2**20


# ------------------------------------------------------------------ analyses
# Each analysis keeps its helpers in its own common_<analysis>.smk (rule files hold only rules).
include: "common_cooccurrence.smk"
include: "common_trajectories.smk"
include: "common_darkmatter.smk"
include: "common_darkmatter_interventions.smk"
include: "common_summary.smk"


# ------------------------------------------------------------------ figures
# The figure registry (saelab.figures) is the one table of figures: plots.smk makes a rule per
# drawn row, analysis rules write their rows' files through registry_output, and rule all asks
# for every row's files through figure_targets. A row names the functions below.
#: Wildcard patterns of the registry's file names.
FIGURE_WILDCARDS = {
    "tau": one_of(cooccurrence_tags()),
    "prompt": one_of(TRAJ.prompt_names) or "$^",
    "layer": r"\d+",
}


def registry_output(figure_id, **fill):
    """A registry row's file as an output (wildcards in ``fill`` filled in), a report item with
    the row's caption; a folder when the name has no suffix."""
    row = figure_row(figure_id)
    path = row.file
    for key, value in fill.items():
        path = path.replace(f"{{{key}}}", str(value))
    if "." not in os.path.basename(row.file):
        path = directory(path)
    if row.caption is None:
        return path
    return report(
        path,
        caption=f"../report/{row.caption}",
        category=row.category,
        subcategory=row.subcategory,
        patterns=list(row.patterns or []),
    )


def figure_wildcard_constraints(row):
    return {name: FIGURE_WILDCARDS[name] for name in re.findall(r"{(\w+)}", row.file)}


def figure_log(row):
    """logs/plot_<id>/<wildcards>.log (plot.log without wildcards)."""
    names = re.findall(r"{(\w+)}", row.file)
    return f"logs/plot_{row.id}/{'_'.join(f'{{{n}}}' for n in names) or 'plot'}.log"


def figure_targets():
    """Every registry file the config asks for (each row's ``targets`` gives its wildcards)."""
    return [
        row.file.format(**values)
        for row in FIGURES
        for values in globals()[row.targets]()
    ]


def once_if(condition):
    """One target without wildcards when ``condition`` holds, else none."""
    return [{}] if condition else []


def sae_figure_targets():
    return once_if(CFG.named_saes)


def training_curve_targets():
    return once_if(CFG.named_saes and trained_named_saes())


def cooccurrence_tau_targets():
    return [{"tau": tag} for tag in cooccurrence_tags()] * bool(
        cooccurrence_sae_names()
    )


def representative_targets():
    return [{"tau": representative_tag()}] * bool(cooccurrence_sae_names())


def pca_all_targets():
    return representative_targets() * bool(COOC["pca"]["all_in_size_range"])


def dashboard_targets():
    return once_if(cooccurrence_sae_names())


def darkmatter_figure_targets():
    return once_if(darkmatter_points())


def trajectory_graph_targets():
    return [{"prompt": p, "T": T} for p in TRAJ.prompt_names for T in TRAJ.T]


def trajectory_evolution_targets():
    layers = evolution_plot_layers(TRAJ, TRAJ_LAYERS)
    return [
        {"prompt": p, "layer": layer} for p in TRAJ.prompt_names for layer in layers
    ]


# Inputs (analysis outputs, by the drawing function's argument names) and options of the rows.
def training_curve_input(wildcards):
    return {"saes": list(all_sae_dirs(wildcards).values())}


def sae_evaluations_input(wildcards):
    return {"evaluations": list(all_sae_evaluations(wildcards).values())}


def frontier_inputs(wildcards):
    return {**sae_evaluations_input(wildcards), "grid": frontier_grid_inputs(wildcards)}


def fvu_params(wildcards):
    return {"fvu": CFG.evaluation["fvu"]}


def frontier_params(wildcards):
    return {**fvu_params(wildcards), "grid_points": frontier_grid_params()}


def darkmatter_scaling_series_input(wildcards):
    sweep = darkmatter_sweep_dir()
    return {"summary": f"{sweep}/scaling.json", "series": f"{sweep}/scaling_series.npz"}


def darkmatter_per_token_input(wildcards):
    return {"data": f"{darkmatter_sweep_dir()}/per_token.npz"}


def darkmatter_trace_params(wildcards):
    return {"start": DM["trace_start"], "length": DM["trace_len"]}


def darkmatter_norms_input(wildcards):
    return {"norms": f"{darkmatter_sweep_dir()}/norms.json"}


def darkmatter_baselines_json_input(wildcards):
    return {"baselines": f"{darkmatter_sweep_dir()}/baselines.json"}


def darkmatter_probe_npz_input(wildcards):
    return {"probe": f"{darkmatter_sweep_dir()}/probe.npz"}


def darkmatter_probe_plot_params(wildcards):
    return {"window": DM["probe_running_window"], "limit": DM["probe_limit"]}


def darkmatter_noise_json_input(wildcards):
    return {"noise": f"{darkmatter_sweep_dir()}/noise.json"}


def dmi_detection_input(wildcards):
    return {"scores": dmi_path(f"detection_{dmi_scorer()}.json")}


def dmi_downstream_ce_input(wildcards):
    return {"table": dmi_path("downstream_ce.json")}


def dmi_components_table_input(wildcards):
    return {"table": dmi_path("components.json")}


def trajectory_evolution_plot_input(wildcards):
    return {"evolution": trajectory_evolution_input(wildcards)}


def trajectory_evolution_plot_params(wildcards):
    return {"layer": int(wildcards.layer), "top": TRAJ.evolution_plot_top}
