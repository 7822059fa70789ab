# Helpers of every rule file (the typed config, paths, params, targets, resources), one section
# per analysis, and the figure registry's functions.
# Rules call these named functions instead of lambdas.
import re
import sys

# saelab is importable here even when it is not pip-installed in Snakemake's environment.
sys.path.insert(0, os.path.join(workflow.basedir, "src"))

from saelab.checks import parse_config
from saelab.schema import ConfigError
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
    if CFG.budget.check_disk:
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
    if CFG.train_settings(runs[0])["source"] == "stream":
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


def first_letter_probe_path(cache, hook):
    """The first-letter probe of one hook of one cache, shared by the hook's SAEs."""
    return f"data/analysis/absorption/{MODEL_ID}/{cache}/{hook}/probe.npz"


def absorption_probe_input(wildcards):
    """The probe of the SAE's hook when evaluate_sae measures absorption (not for a transcoder,
    whose decoder is not in the probe's space)."""
    run = CFG.saes[wildcards.sae]
    if not CFG.evaluation["absorption"] or run.target_hook is not None:
        return {}
    return {"probe": first_letter_probe_path(run.cache, run.hook)}


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


# ================================================================== co-occurrence (cooccurrence.smk)
COOC = CFG.cooccurrence


# ------------------------------------------------------------------ which SAEs and thresholds
def cooccurrence_sae_names():
    return list(COOC["saes"])


def cooccurrence_tags():
    """File tags of the activation thresholds, as the original writes them (1.5 -> 1_5)."""
    from saelab.cooccurrence.counts import threshold_tag

    return [threshold_tag(t) for t in COOC["thresholds"]]


def cooccurrence_threshold(tag):
    from saelab.cooccurrence.counts import threshold_tag

    for value in COOC["thresholds"]:
        if threshold_tag(value) == tag:
            return float(value)
    raise WorkflowError(f"no cooccurrence threshold has the tag {tag!r}")


def representative_sae():
    """The SAE whose subgraph the PCA and the feature pages show (default: first Matryoshka)."""
    chosen = COOC["representative"]["sae"]
    if chosen:
        return chosen
    return next(n for n in cooccurrence_sae_names() if CFG.saes[n].arch == "matryoshka")


def representative_tag():
    from saelab.cooccurrence.counts import threshold_tag

    value = COOC["representative"]["threshold"]
    return threshold_tag(value) if value is not None else cooccurrence_tags()[0]


def group_sizes_of(name):
    """A Matryoshka SAE's own group sizes (individual, not cumulative); other SAEs get the first
    Matryoshka's ("pretend")."""
    from saelab.groups import resolve_group_sizes

    run = CFG.saes[name]
    if run.arch == "matryoshka":
        return resolve_group_sizes(run.options["group_sizes"], run.width)
    return group_sizes_of(
        next(n for n in cooccurrence_sae_names() if CFG.saes[n].arch == "matryoshka")
    )


# ------------------------------------------------------------------ paths
def cooccurrence_dir():
    return f"data/analysis/cooccurrence/{MODEL_ID}"


def feature_summary_path(name):
    """data/analysis/features/{model}/{hook}/{sae}.npz (see saelab.features)."""
    return f"data/analysis/features/{MODEL_ID}/{CFG.saes[name].hook}/{name}.npz"


def cooccurrence_sae_dir(name):
    """data/analysis/cooccurrence/{model}/{hook}/{sae}: the per-SAE outputs of this analysis."""
    return f"{cooccurrence_dir()}/{CFG.saes[name].hook}/{name}"


def cooc_counts_path(name, tag):
    return f"{cooccurrence_sae_dir(name)}/counts_tau{tag}.npz"


def cooc_node_info_path(name, tag):
    return f"{cooccurrence_sae_dir(name)}/node_info_tau{tag}.csv"


def cooc_edge_path(name, tag):
    return f"{cooccurrence_sae_dir(name)}/edge_threshold_tau{tag}.json"


# ------------------------------------------------------------------ inputs and params
def feature_summary_params(wildcards):
    run = CFG.saes[wildcards.sae]
    if run.hook != wildcards.hook:
        raise WorkflowError(
            f"SAE {wildcards.sae!r} reads {run.hook!r}, not {wildcards.hook!r}: ask for "
            f"{feature_summary_path(wildcards.sae)}"
        )
    return dict(COOC["features"])


def cooccurrence_params(wildcards):
    keys = ("n_tokens", "split", "batch_size", "encoding", "method", "thresholds")
    return {key: COOC[key] for key in keys}


def cooccurrence_subgraph_params(wildcards):
    low, high = COOC["component_size"]
    return {
        "min_size": low,
        "max_size": high,
        "tolerance": COOC["bisection_tolerance"],
        "threshold": cooccurrence_threshold(wildcards.tau),
    }


def cooccurrence_summary_inputs(wildcards):
    inputs = {}
    for name in cooccurrence_sae_names():
        inputs[f"node_info_{name}"] = cooc_node_info_path(name, wildcards.tau)
        inputs[f"counts_{name}"] = cooc_counts_path(name, wildcards.tau)
    return inputs


def cooccurrence_summary_params(wildcards):
    return {
        "saes": cooccurrence_sae_names(),
        "group_sizes": {
            name: group_sizes_of(name) for name in cooccurrence_sae_names()
        },
        "threshold": cooccurrence_threshold(wildcards.tau),
    }


def cooccurrence_edge_inputs(wildcards):
    return [
        cooc_edge_path(n, t)
        for n in cooccurrence_sae_names()
        for t in cooccurrence_tags()
    ]


def cooccurrence_plot_inputs(wildcards):
    """The summary and every SAE's node_info table (in the summary's SAE order)."""
    return {
        "summary": f"{cooccurrence_dir()}/summary_tau{wildcards.tau}.json",
        "node_info": [
            cooc_node_info_path(name, wildcards.tau)
            for name in cooccurrence_sae_names()
        ],
    }


def cooccurrence_plot_params(wildcards):
    return {
        "threshold": cooccurrence_threshold(wildcards.tau),
        "component_size": list(COOC["component_size"]),
        "group_sizes": group_sizes_of(representative_sae()),
    }


def cooccurrence_by_index_inputs(wildcards):
    return {
        **cooccurrence_plot_inputs(wildcards),
        "by_index": f"{cooccurrence_dir()}/mean_cooccurrence_tau{wildcards.tau}.csv",
    }


def representative_inputs(wildcards):
    return {"node_info": cooc_node_info_path(representative_sae(), wildcards.tau)}


def representative_params(wildcards):
    return {**COOC["representative"], "sae": representative_sae()}


def representative_choice_input(wildcards):
    return f"{cooccurrence_dir()}/representative_tau{wildcards.tau}.json"


def representative_sae_input(wildcards):
    return sae_dir_by_name(representative_sae())


def representative_cache_input(wildcards):
    return cache_path(CFG.saes[representative_sae()].cache)


def representative_features_input(wildcards):
    return feature_summary_path(representative_sae())


def subgraph_pca_params(wildcards):
    return {
        **COOC["pca"],
        "sae": representative_sae(),
        "threshold": cooccurrence_threshold(wildcards.tau),
        "split": COOC["split"],
        "batch_size": COOC["batch_size"],
        "encoding": COOC["encoding"],
    }


def pca_subgraph_series_path(tau):
    return f"{cooccurrence_dir()}/pca_subgraph_tau{tau}.npz"


def pca_all_series_path(tau):
    return f"{cooccurrence_dir()}/pca_all_tau{tau}"


def dashboard_params(wildcards):
    return dict(COOC["dashboards"])


def representative_json(wildcards=None):
    return f"{cooccurrence_dir()}/representative_tau{representative_tag()}.json"


# ------------------------------------------------------------------ rules


# ================================================================== trajectories (trajectories.smk)
from saelab.trajectories.settings import evolution_plot_layers, sweep_layers

# Checked once, when the config was parsed (saelab.checks).
TRAJ = CFG.analyses["trajectories"].settings
TRAJ_LAYERS = CFG.analyses["trajectories"].layers


def trajectory_sae_names():
    """layer -> name of the layer's SAE in the sweep (trained or released)."""
    names = sweep_layers(CFG, TRAJ.sweep)
    return {layer: names[layer] for layer in TRAJ_LAYERS}


def trajectory_sae_inputs(wildcards):
    return {
        f"sae_l{layer}": sae_dir_by_name(name)
        for layer, name in trajectory_sae_names().items()
    }


def trajectory_feature_inputs(wildcards):
    """The feature summaries (rule feature_summary) of the per-layer SAEs, for the hover."""
    return {
        f"features_l{layer}": feature_summary_path(name)
        for layer, name in trajectory_sae_names().items()
    }


def trajectory_evolution_params(wildcards):
    return {
        "prompts": [vars(prompt) for prompt in TRAJ.prompts],
        "layers": TRAJ_LAYERS,
        "sae_names": trajectory_sae_names(),
        "top_k": TRAJ.top_k,
        "check_tolerance": TRAJ.check_tolerance,
        "logit_lens_top": TRAJ.logit_lens_top,
        "logit_lens_lengths": TRAJ.logit_lens_lengths,
    }


def trajectory_graph_path(prompt, T):
    return f"data/analysis/trajectories/{MODEL_ID}/{prompt}/graph_T{T}.json"


def trajectory_graph_outputs():
    """Per T: the traced graph (JSON; rule plot_trajectory_graph draws its PNG) and its
    interactive HTML (a report item)."""
    outputs = {}
    for T in TRAJ.T:
        outputs[f"graph_T{T}"] = trajectory_graph_path("{prompt}", T)
        outputs[f"html_T{T}"] = registry_output("trajectory_graph_html", T=T)
    return outputs


def trajectory_graph_params(wildcards):
    return {
        "T": list(TRAJ.T),
        "description_tokens": TRAJ.description_tokens,
        "neuronpedia": TRAJ.neuronpedia,
    }


def trajectory_evolution_path(prompt):
    return f"data/analysis/trajectories/{MODEL_ID}/{prompt}/evolution.json"


def trajectory_evolution_outputs():
    """One evolution file per prompt, all from one job: loading gemma-3 costs more than the
    whole analysis of a prompt."""
    return [trajectory_evolution_path(prompt) for prompt in TRAJ.prompt_names]


def trajectory_evolution_input(wildcards):
    return trajectory_evolution_path(wildcards.prompt)


# ================================================================== dark matter (darkmatter.smk; darkmatter_interventions.smk reuses them)
DM = CFG.darkmatter


# ------------------------------------------------------------------ which SAEs
def darkmatter_points():
    """Sweep points (name, layer, width, k) of the dark-matter grid, or [] without a sweep."""
    return list(CFG.sweeps.get(DM["sweep"], []))


def darkmatter_sae_names():
    return [point.name for point in darkmatter_points()]


def darkmatter_curve_names():
    """The width curve: one SAE per width at the configured k (the original's L0 ≈ 60)."""
    from saelab.darkmatter.scaling import curve_points

    return [point.name for point in curve_points(darkmatter_points(), DM["fixed_k"])]


def darkmatter_baseline_points():
    """SAEs of the Fig 13 baselines: the ``baselines_sweep`` family (one SAE per layer)."""
    sweep = DM["baselines_sweep"]
    return list(CFG.sweeps.get(sweep, [])) if sweep else []


def darkmatter_probe_name():
    from saelab.darkmatter.scaling import pick_sae

    return pick_sae(darkmatter_points(), DM["probe_sae"], "widest", DM["fixed_k"])


def darkmatter_noise_name():
    from saelab.darkmatter.scaling import pick_sae

    return pick_sae(darkmatter_points(), DM["noise"]["sae"], "narrowest_largest_k")


# ------------------------------------------------------------------ paths
def darkmatter_dir(name):
    """data/analysis/darkmatter/{model}/{hook}/{sae}: every per-SAE output of this analysis."""
    return f"data/analysis/darkmatter/{MODEL_ID}/{CFG.saes[name].hook}/{name}"


def darkmatter_info_path(name):
    return f"{darkmatter_dir(name)}/info.zarr"


def darkmatter_regression_path(name):
    return f"{darkmatter_dir(name)}/regression.npz"


def darkmatter_regression_json_path(name):
    return f"{darkmatter_dir(name)}/regression.json"


def darkmatter_pursuit_path(name):
    """Written by the interventions' rule ``darkmatter_pursuit`` (key ``pursuit_fvu``)."""
    return f"{darkmatter_dir(name)}/pursuit.json"


def darkmatter_sweep_dir():
    return f"data/analysis/darkmatter/{MODEL_ID}/{DM['sweep']}"


def darkmatter_token_loss_path(cache):
    return f"data/analysis/darkmatter/{MODEL_ID}/token_loss/{cache}.npz"


# ------------------------------------------------------------------ inputs and params
def darkmatter_window_params(wildcards):
    return vars(WindowConfig.from_section(DM))


def darkmatter_regression_params(wildcards):
    return {
        "seed": DM["seed"],
        "train_fraction": DM["train_fraction"],
        "norm_intercept": DM["norm_intercept"],
    }


def darkmatter_scaling_input(wildcards):
    names = darkmatter_sae_names()
    inputs = {f"reg_{name}": darkmatter_regression_json_path(name) for name in names}
    if DM["breakdown_pursuit"]:
        for name in darkmatter_curve_names():
            inputs[f"pursuit_{name}"] = darkmatter_pursuit_path(name)
    return inputs


def darkmatter_scaling_params(wildcards):
    return {
        "curve_k": DM["fixed_k"],
        "points": [vars(point) for point in darkmatter_points()],
        "pursuit": bool(DM["breakdown_pursuit"]),
    }


def darkmatter_curve_input(wildcards):
    """info.zarr and regression.npz of every width-curve SAE (widths ascending)."""
    inputs = {}
    for name in darkmatter_curve_names():
        inputs[f"info_{name}"] = darkmatter_info_path(name)
        inputs[f"reg_{name}"] = darkmatter_regression_path(name)
    return inputs


def darkmatter_all_input(wildcards):
    inputs = {}
    for name in darkmatter_sae_names():
        inputs[f"info_{name}"] = darkmatter_info_path(name)
        inputs[f"reg_{name}"] = darkmatter_regression_path(name)
    return inputs


def darkmatter_baselines_input(wildcards):
    """The Fig 13 SAEs: a ``baselines_sweep`` family's directories and caches (encoded inside the
    rule: one job, not one darkmatter_info per layer), or else the grid's info groups, which
    darkmatter_info writes anyway; with ``baselines_loss``, the per-token losses of their caches.
    """
    inputs = {}
    family = darkmatter_baseline_points()
    points = family or darkmatter_points()
    for point in points:
        if family:
            inputs[f"sae_{point.name}"] = sae_dir_by_name(point.name)
        else:
            inputs[f"info_{point.name}"] = darkmatter_info_path(point.name)
    caches = sorted({CFG.saes[point.name].cache for point in points})
    for cache in caches:
        if family:
            inputs[f"cache_{cache}"] = cache_path(cache)
        if DM["baselines_loss"]:
            inputs[f"loss_{cache}"] = darkmatter_token_loss_path(cache)
    return inputs


def darkmatter_baselines_params(wildcards):
    points = darkmatter_baseline_points() or darkmatter_points()
    return {
        "points": [vars(point) for point in points],
        "caches": {point.name: CFG.saes[point.name].cache for point in points},
        "window": darkmatter_window_params(wildcards),
        "seed": DM["seed"],
        "train_fraction": DM["train_fraction"],
    }


def darkmatter_token_loss_params(wildcards):
    return {
        "window": darkmatter_window_params(wildcards),
        "max_contexts": DM["baselines_loss_contexts"],
        "model": model_params(wildcards),
    }


def darkmatter_probe_input(wildcards):
    name = darkmatter_probe_name()
    return {"info": darkmatter_info_path(name), "sae": sae_dir_by_name(name)}


def darkmatter_noise_input(wildcards):
    name = darkmatter_noise_name()
    return {"info": darkmatter_info_path(name), "sae": sae_dir_by_name(name)}


def darkmatter_common_params(wildcards):
    return {"seed": DM["seed"], "train_fraction": DM["train_fraction"]}


def darkmatter_norms_params(wildcards):
    return {
        **darkmatter_common_params(wildcards),
        "norm_intercept": DM["norm_intercept"],
    }


# ================================================================== dark-matter interventions (darkmatter_interventions.smk)

from saelab.darkmatter.info import WindowConfig
from saelab.darkmatter.settings import union

# ------------------------------------------------------------------ which SAEs
# Checked and resolved once, when the config was parsed (saelab.darkmatter.settings); None
# when the analysis is off, and then no function below is called.
DMC = CFG.analyses["darkmatter"]


def dmi_width_sweep():
    """Names of the width sweep at fixed_k (widths ascending): the original's L0 ~ 60 curve."""
    return DMC.width_sweep


def dmi_k_sweep():
    """Names of the k sweep at fixed_width (k ascending): the original's 16k SAEs at every L0."""
    return DMC.k_sweep


def dmi_union(*lists):
    return union(*lists)


def dmi_fixed_sae():
    """The grid SAE at (fixed_width, fixed_k): the components and train-on-error SAE."""
    return DMC.fixed_sae


def dmi_sae(section):
    return DMC.section_saes[section]


def dmi_pursuit_saes():
    return DMC.pursuit_saes


# ------------------------------------------------------------------ paths
def dmi_path(name):
    return f"data/analysis/darkmatter/{MODEL_ID}/interventions/{name}"


def dmi_scorer():
    return DM["train_on_error"]["scorer"]


# ------------------------------------------------------------------ inputs and params
def dmi_pursuit_sae_input(wildcards):
    return sae_dir_by_name(wildcards.sae)


def dmi_downstream_input(wildcards):
    inputs = {
        "cache": cache_path(CFG.saes[dmi_fixed_sae()].cache),
        "model_dir": model_dir_path(),
    }
    for name in dmi_union(dmi_width_sweep(), dmi_k_sweep()):
        inputs[f"info_{name}"] = darkmatter_info_path(name)
        inputs[f"reg_{name}"] = darkmatter_regression_path(name)
    return inputs


def dmi_downstream_params(wildcards):
    return {
        **DM["downstream"],
        "width_sweep": dmi_width_sweep(),
        "k_sweep": dmi_k_sweep(),
        "model": model_params(wildcards),
    }


def dmi_component_hooks():
    """(label -> hook, label -> reason skipped) of the Fig 10b predictors."""
    return DMC.component_hooks, DMC.skipped_components


def dmi_component_sae_params(wildcards):
    """SAE kwargs (the analysed grid SAE's, on each predictor hook) and training settings."""
    run = CFG.saes[dmi_sae("components")]
    base = run.sae_config_kwargs(MODEL_ID)
    hooks, _ = dmi_component_hooks()
    specs = {
        label: {**base, "hook_name": hook, "extra": {"run": f"component-{label}"}}
        for label, hook in hooks.items()
    }
    train = {**CFG.train_settings(run), "n_tokens": DM["components"]["n_tokens"]}
    return {"saes": specs, "train": train}


def dmi_components_input(wildcards):
    name = dmi_sae("components")
    return {
        "info": darkmatter_info_path(name),
        "reg": darkmatter_regression_path(name),
        "cache": cache_path(CFG.saes[name].cache),
        "saes": dmi_path("component_saes"),
    }


def dmi_components_params(wildcards):
    hooks, skipped = dmi_component_hooks()
    return {"predictors": hooks, "skipped": skipped, "seed": DM["components"]["seed"]}


def dmi_component_cache_input(wildcards):
    return cache_path(CFG.saes[dmi_sae("components")].cache)


def dmi_train_on_error_input(wildcards):
    name = dmi_sae("train_on_error")
    return {
        "sae": sae_dir_by_name(name),
        "reg": darkmatter_regression_path(name),
        "cache": cache_path(CFG.saes[name].cache),
    }


def dmi_train_on_error_params(wildcards):
    keys = ("width", "k", "n_tokens", "batch_size", "lr", "seed")
    return {key: DM["train_on_error"][key] for key in keys}


def dmi_score_input(wildcards):
    name = dmi_sae("train_on_error")
    return {
        "saes": dmi_path("train_on_error"),
        "info": darkmatter_info_path(name),
        "reg": darkmatter_regression_path(name),
        "cache": cache_path(CFG.saes[name].cache),
        "model_dir": model_dir_path(),
    }


def dmi_score_params(wildcards):
    options = dict(DM["train_on_error"])
    return {**options, "scorer": wildcards.scorer}


def dmi_fig10a_names():
    """The pursuit SAEs of Fig 10a (the width sweep at least)."""
    return dmi_union(dmi_width_sweep(), dmi_pursuit_saes())


def dmi_fig10a_input(wildcards):
    """pursuit.json of every pursuit SAE, in the order of :func:`dmi_fig10a_names`."""
    return {"pursuit": [darkmatter_pursuit_path(name) for name in dmi_fig10a_names()]}


def dmi_fig10a_params(wildcards):
    return {
        "names": dmi_fig10a_names(),
        "width_sweep": dmi_width_sweep(),
        "k_sweep": dmi_k_sweep(),
    }


# ================================================================== summary (summary.smk): what results/summary.md reads and the command that makes it
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


# ------------------------------------------------------------------ figures
# The figure registry (saelab.figures) is the one table of figures: plots.smk makes a rule per
# drawn row, analysis rules write their rows' files through registry_output (HTML documents and
# tables only: figures are drawn by plot rules from the series the analyses write), and rule
# all asks for every row's files through figure_targets. A row names the functions below.
# Rule and script names correspond one to one (rule x runs scripts/x.py), except that every
# generated rule plot_<id> runs the one scripts/plot.py.
#: Wildcard patterns of the registry's file names.
FIGURE_WILDCARDS = {
    "tau": one_of(cooccurrence_tags()),
    "prompt": one_of(TRAJ.prompt_names) or "$^",
    "layer": r"\d+",
    "T": r"\d+",
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
    """The latents Fig 14 shows and its running-mean window (rule darkmatter_probe)."""
    return {"window": DM["probe_running_window"], "limit": DM["probe_limit"]}


def darkmatter_noise_json_input(wildcards):
    return {"noise": f"{darkmatter_sweep_dir()}/noise.json"}


def dmi_detection_input(wildcards):
    return {"scores": dmi_path(f"detection_{dmi_scorer()}.json")}


def dmi_downstream_ce_input(wildcards):
    return {"table": dmi_path("downstream_ce.json")}


def dmi_pursuit_breakdown_input(wildcards):
    return {"breakdown": dmi_path("pursuit_breakdown.json")}


def dmi_components_table_input(wildcards):
    return {"table": dmi_path("components.json")}


def toy_absorption_input(wildcards):
    return {"results": "data/analysis/toy/absorption.json"}


def pca_subgraph_input(wildcards):
    return {"series": pca_subgraph_series_path(wildcards.tau)}


def pca_all_input(wildcards):
    return {"folder": pca_all_series_path(wildcards.tau)}


def pca_plot_params(wildcards):
    return {
        "sae": representative_sae(),
        "threshold": cooccurrence_threshold(wildcards.tau),
    }


def trajectory_graph_plot_input(wildcards):
    return {
        "graph": trajectory_graph_path(wildcards.prompt, wildcards.T),
        "evolution": trajectory_evolution_input(wildcards),
    }


def trajectory_evolution_plot_input(wildcards):
    return {"evolution": trajectory_evolution_input(wildcards)}


def trajectory_evolution_plot_params(wildcards):
    return {"layer": int(wildcards.layer), "top": TRAJ.evolution_plot_top}
