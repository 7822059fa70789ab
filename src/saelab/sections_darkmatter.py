"""Typed, frozen view of the ``darkmatter`` section (see :mod:`saelab.sections`): one field per
key of ``config/schema.yaml``, documented by its ``description``; no defaults of its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from saelab.sections import Section


@dataclass(frozen=True, eq=False)
class DarkmatterNoise(Section):
    """The synthetic noise simulation (Fig 15, Table 1; saelab.darkmatter.noise)."""

    sae: str | None
    """SAE of the sweep (default: the narrowest at its largest k, as the original's 16k at L0 ~
    100)."""
    n_tokens: int
    """Window tokens used (the original: 50,000)."""
    ablate_percents: list[int]
    """Percent of latents (lowest mean activation first) ablated from the reconstruction."""
    line_settings: list[list[float]]
    """(sigma_act, sigma_rec) pairs drawn as lines against the ablated percent."""
    grid: list[float]
    """Noise levels of the (sigma_act, sigma_rec) grid of Table 1, at 0 % ablation."""
    units: str
    """activation_std: sigma times the mean per-dimension std of x' (comparable across models);
    absolute: as given (the original, in Gemma-2-9B units)."""
    seed: int
    """Seed of the noise."""


@dataclass(frozen=True, eq=False)
class DarkmatterPursuit(Section):
    """Inference-time gradient pursuit at each token's own L0 (saelab.darkmatter.pursuit; methods
    §5.6, Fig 10a)."""

    saes: str
    """Grid SAEs to run pursuit on: the widths at fixed_k (Fig 10a), plus the k values at
    fixed_width (sweeps; the original's generator), or every grid SAE."""
    n_tokens: int
    """First tokens of each SAE's analysis window (sae_info) to optimise; pursuit costs 2 d W flops
    per token and iteration (gemma-3-270m, W 8192, k 32: ~85 tokens/s on one core). The linear-
    error fit of the pursuit FVUs uses half of them, so keep n_tokens well above 2 d."""
    batch_size: int
    """Tokens optimised together."""
    seed: int
    """Seed of the train/test split of the pursuit reconstructions' linear-error fit."""


@dataclass(frozen=True, eq=False)
class DarkmatterDownstream(Section):
    """Downstream CE with x̂, x̂ + linear error and x̂ + nonlinear error spliced in
    (saelab.darkmatter.downstream; methods §5.5, Fig 9)."""

    n_contexts: int
    """Contexts of the analysis window spliced, the units of the bootstrap intervals (33 x 126
    window predictions >= 4,096; gemma-3-270m with logits at the counted positions runs ~210
    tokens/s from layer 6 on 2 CPU cores: n_contexts x 128 tokens x (1 clean + 3 per SAE)
    passes, blocks after the hook only, logits at the counted positions only)."""
    bootstrap_resamples: int
    """Resamples of the percentile bootstrap over contexts (saelab.stats)."""
    bootstrap_seed: int
    """Seed of those resamples."""
    batch_size: int
    """Contexts per model forward."""


@dataclass(frozen=True, eq=False)
class DarkmatterComponents(Section):
    """Predicting the SAE error from other components' SAE reconstructions
    (saelab.darkmatter.components; methods §5.7, Fig 10b)."""

    sae: str | None
    """Grid SAE whose error is predicted; null = the grid SAE at (fixed_width, fixed_k)."""
    predictors: dict[str, str]
    """Label -> hook of each other component ({layer}: the analysed SAE's layer; {prev_layer}: the
    one before). A TopK SAE of the analysed SAE's width and k is trained on each hook (rule
    darkmatter_component_saes); hooks the cache lacks, or equal to the analysed hook, are skipped
    with a log line. The analysed SAE's own reconstruction is always the predictor 'res'. The
    default suits a resid_post grid (the previous residual = resid_pre of the same block); the
    original used Gemma Scope's attention SAEs on hook_z."""
    n_tokens: int
    """Training tokens of each component SAE (one pass over the cache for all of them; fewer than
    the grid's, as they only serve as predictors)."""
    seed: int
    """Seed of the shuffled train/test halves."""


@dataclass(frozen=True, eq=False)
class DarkmatterTrainOnErrorLlm(Section):
    """The OpenAI-compatible endpoint of the llm scorer (e.g. a local vLLM server)."""

    base_url: str | None
    """e.g. http://localhost:8000/v1; null fails the rule when scorer is llm."""
    model: str
    """Model name sent to the endpoint."""
    api_key_env: str
    """Environment variable holding the API key (optional for local servers)."""
    timeout: float
    """Seconds per request."""
    context_tokens: int
    """Tokens of context shown before each example token."""


@dataclass(frozen=True, eq=False)
class DarkmatterTrainOnError(Section):
    """TopK SAEs trained on the linear and nonlinear parts of an SAE's error, latents scored by
    detection (saelab.darkmatter.train_on_error, .scoring; methods §5.8, Fig 8)."""

    NESTED: ClassVar[dict[str, type[Section]]] = {"llm": DarkmatterTrainOnErrorLlm}

    sae: str | None
    """Grid SAE whose error is decomposed; null = the grid SAE at (fixed_width, fixed_k)."""
    width: int | None
    """Latents of the SAEs trained on the error targets; null = 4 x d (the original: 16 x d)."""
    k: int
    """TopK k (the original's 32)."""
    n_tokens: int
    """Training tokens (cache train split) per SAE (gemma-3-270m, width 2560: ~35 s per SAE on a
    busy 2-core machine)."""
    batch_size: int
    """Tokens per optimiser step."""
    lr: float | None
    """Adam lr; null = 2e-4 / sqrt(width / 2^14) (the original's rule)."""
    seed: int
    """Seed of the trainer and of the SAEs' initialisation."""
    scorer: str
    """token_set: offline, explanation = a latent's top activating token ids, detection = set
    membership; llm: explain then detect with an OpenAI-compatible chat endpoint (llm.*)."""
    n_latents: int
    """Latents scored per SAE (seeded random choice among latents that fire enough)."""
    min_activations: int
    """A latent is scorable if it fires on at least this many scoring tokens."""
    n_quantiles: int
    """Activation quantile bins of the detection examples (Q1 = strongest)."""
    examples_per_quantile: int
    """Activating examples drawn per quantile for detection."""
    n_negatives: int
    """Non-activating examples per latent (the original's n_random 50)."""
    explanation_tokens: int
    """token_set: distinct token ids in a latent's explanation (its most frequent tokens among the
    top activations of the explanation half)."""
    llm: DarkmatterTrainOnErrorLlm
    """The OpenAI-compatible endpoint of the llm scorer (e.g. a local vLLM server)."""


@dataclass(frozen=True, eq=False)
class DarkmatterSection(Section):
    """The dark matter of SAEs (saelab.darkmatter)."""

    NESTED: ClassVar[dict[str, type[Section]]] = {
        "noise": DarkmatterNoise,
        "pursuit": DarkmatterPursuit,
        "downstream": DarkmatterDownstream,
        "components": DarkmatterComponents,
        "train_on_error": DarkmatterTrainOnError,
    }

    sweep: str
    """The `sweeps` family (width x k grid) the analyses read."""
    window: list[int]
    """Positions [start, stop) within each context that sae_info keeps (the original: [1, 1023) for
    the power laws, [200, 1023) elsewhere); stop is clipped to the context length; special tokens
    (BOS) are always dropped."""
    n_tokens: int
    """At most this many window tokens (whole contexts in cache order)."""
    split: str
    """Cache split the window is taken from: heldout = contexts the SAEs never trained on (the
    default), train or all."""
    batch_size: int
    """Tokens per SAE forward in sae_info."""
    seed: int
    """Seed of the shuffled train/test split of every regression (the original's was unseeded)."""
    train_fraction: float
    """Fraction of window tokens the least-squares maps are fitted on; R^2 is measured on the rest
    (the original: 150k / 150k)."""
    norm_intercept: bool
    """Append a ones column to x when predicting squared norms (regression.json's r2_norm, Fig 7);
    not the original, which fits none (see README). The error-vector fit W_vec never has an
    intercept."""
    breakdown_pursuit: bool
    """Fig 1 reads the gradient-pursuit FVUs (pursuit.json of rule darkmatter_pursuit) to draw the
    encoder-error area."""
    baselines_sweep: str | None
    """A `sweeps` family with one SAE per layer for the Fig 13 baselines (x = layer); null = the
    dark-matter sweep itself (x = SAE)."""
    baselines_loss: bool
    """Add the model-loss baseline to Fig 13 (rule darkmatter_token_loss runs the model with
    logits)."""
    baselines_loss_contexts: int
    """Contexts of the window whose per-token loss is computed for the Fig 13 loss baseline."""
    token_id_in_sample: bool
    """Fig 13's token-id baseline: false (default) = per-id means fitted on the training half, R² on
    the held-out half like every other baseline; true = per-id means over all tokens, scored on
    the same tokens (in-sample, as the original; the legend says so)."""
    probe_sae: str | None
    """SAE of Fig 14 (default: the widest at fixed_k)."""
    probe_running_window: int
    """Running-average window of Fig 14."""
    probe_limit: int
    """Latents shown in Fig 14 (highest mean activation first)."""
    trace_start: int
    """First window token of the Fig 4 / Fig 6 token trace (the original: flattened token 10,092)."""
    trace_len: int
    """Tokens in the token trace."""
    noise: DarkmatterNoise
    """The synthetic noise simulation (Fig 15, Table 1; saelab.darkmatter.noise)."""
    fixed_k: int | None
    """k of the width sweep (the original's L0 ~ 60) that pursuit, downstream CE and the
    components/train-on-error SAE use; null = the middle k of the grid (index (n-1)//2 of the
    sorted k values)."""
    fixed_width: int | None
    """Width of the k sweep (the original's 16k) and of the components/train-on-error SAE; null =
    the smallest width of the grid."""
    pursuit: DarkmatterPursuit
    """Inference-time gradient pursuit at each token's own L0 (saelab.darkmatter.pursuit; methods
    §5.6, Fig 10a)."""
    downstream: DarkmatterDownstream
    """Downstream CE with x̂, x̂ + linear error and x̂ + nonlinear error spliced in
    (saelab.darkmatter.downstream; methods §5.5, Fig 9)."""
    components: DarkmatterComponents
    """Predicting the SAE error from other components' SAE reconstructions
    (saelab.darkmatter.components; methods §5.7, Fig 10b)."""
    train_on_error: DarkmatterTrainOnError
    """TopK SAEs trained on the linear and nonlinear parts of an SAE's error, latents scored by
    detection (saelab.darkmatter.train_on_error, .scoring; methods §5.8, Fig 8)."""
