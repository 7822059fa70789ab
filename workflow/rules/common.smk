# Helpers shared by all rule files (the typed config, paths, targets, resources).
# Rules call these named functions instead of lambdas.
import re
import sys

sys.path.insert(
    0, os.path.join(workflow.basedir, "src")
)  # saelab, also when not pip-installed

from saelab.config import ConfigError, parse_config
from saelab.models import resolve_model

try:
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
    return [cache_path(name) for name in CFG.caches]
