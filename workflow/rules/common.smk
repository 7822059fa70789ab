# Helpers shared by all rule files (the typed config, paths, targets, resources).
# Rules call these named functions instead of lambdas.
import re
import sys

# saelab is importable here even when it is not pip-installed in Snakemake's environment.
sys.path.insert(0, os.path.join(workflow.basedir, "src"))

from saelab.config import ConfigError, parse_config
from saelab.models import resolve_model

try:
    # Resolves released SAEs too: offline, a missing one stops here, before any job.
    CFG = parse_config(config)
    MODEL = resolve_model(CFG.model, tiny=CFG.tiny, model_path=CFG.model_path)
except ConfigError as err:
    raise WorkflowError(f"invalid config: {err}") from None

MODEL_ID = MODEL.model_id


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
        "device": CFG.device,
        "tiny": vars(CFG.tiny),
    }


# ------------------------------------------------------------------ resources
def gpu_request(wildcards):
    """One GPU for rules that run a model or train, when the config asks for CUDA.

    Profiles may also set it (the SLURM profile does, per rule). Snakemake does not set
    CUDA_VISIBLE_DEVICES: scripts pick their device from the config.
    """
    return 1 if CFG.device == "cuda" else 0


# ------------------------------------------------------------------ targets
def all_targets():
    """Every cache and every figure the config asks for; each analysis adds its own targets
    through a function defined in its rule file."""
    return (
        [cache_path(name) for name in CFG.caches]
        + sae_figures()
        + cooccurrence_targets()
        + darkmatter_targets()
        + darkmatter_intervention_targets()
        + trajectory_targets()
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
        "train": train,
    }


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


def sae_figures():
    if not CFG.named_saes:
        return []
    curves = ["plots/saes/training_curves.png"] if trained_named_saes() else []
    return curves + [
        "plots/saes/l0_fvu_frontier.png",
        "plots/saes/matryoshka_prefix_fvu.png",
        "plots/saes/ce_recovered.png",
        "plots/saes/toy_absorption.png",
    ]


# ------------------------------------------------------------------ analyses
# Each analysis keeps its helpers in its own common_<analysis>.smk (rule files hold only rules).
include: "common_cooccurrence.smk"
include: "common_trajectories.smk"
include: "common_darkmatter.smk"
include: "common_darkmatter_interventions.smk"
