"""End-to-end tests (they run Snakemake) moved from tests/test_presets.py.

The paper presets are the originals' full recipes (methods.md §1.2, §2, §3.4): loaded the way
Snakemake loads them (merged over the offline default), every SAE's effective training and SAE
settings equal the original's, nothing short-run is inherited, and groups whose cache would not
fit a disk budget stream from the model."""

from __future__ import annotations

import pytest

from saelab.budget import GB, model_shape
from saelab.checks import load_config
from saelab.models import resolve_model
from saelab.schema import REPO_ROOT
from saelab.train import TrainConfig

DEFAULT = REPO_ROOT / "config" / "config.yaml"

# bartbussmann/matryoshka_sae (§1.2): Adam (0.9, 0.99), lr 3e-4, batch 4096, no schedule, clip
# 1e5, b_dec zeros, theta EMA 0.01 from 0 at every step, input_unit_norm False (main.py and seed
# 000), aux 1/32 over top 512 dead latents, dead after 20 batches.
BART_TRAIN = {"batch_size": 4096, "lr": 3e-4, "betas": (0.9, 0.99), "warmup_steps": 0,
              "decay_start": None, "clip_grad_norm": 1e5}  # fmt: skip
BART_SAE = {"threshold_ema": 0.01, "threshold_start_step": 0, "b_dec_init": "zeros",
            "normalize_input": False, "aux_k": 512, "aux_penalty": 1 / 32,
            "dead_after_tokens": 20 * 4096, "l1_coeff": 0.0}  # fmt: skip

ORIGINALS = {
    "gpt2-small.yaml": {
        # Seed 000's wide script: layer 8 resid_pre, 1e8 tokens, checkpoint every 5000 steps.
        "matryoshka": (
            {**BART_TRAIN, "n_tokens": 10**8, "checkpoint_every": 5000},
            {**BART_SAE, "arch": "matryoshka", "width": 24576, "k": 32, "loss": "bussmann",
             "group_sizes": [768, 768, 1536, 3072, 6144, 12288]},
        ),
        "batchtopk": (
            {**BART_TRAIN, "n_tokens": 10**8, "checkpoint_every": 5000},
            {**BART_SAE, "arch": "batchtopk", "width": 24576, "k": 32},
        ),
        # Seed 001's train_gpt2_simple.py: 1e7 tokens, batch 1024, lr 3e-4, D 12288, k 64,
        # input_unit_norm True (get_default_cfg), dead after 20 batches of 1024, checkpoint 500.
        # input_unit_norm is the one departure: it standardises the target with statistics a
        # transcoder cannot know at inference, and saelab refuses it (SAEConfig); raw inputs.
        "matryoshka-transcoder": (
            {**BART_TRAIN, "n_tokens": 10**7, "batch_size": 1024, "checkpoint_every": 500},
            {**BART_SAE, "arch": "matryoshka", "width": 12288, "k": 64, "loss": "bussmann",
             "group_sizes": [768, 1536, 3072, 6912], "normalize_input": False,
             "dead_after_tokens": 20 * 1024},
        ),
    },
    "gemma-2-2b.yaml": {
        # Bart's main.py: layer 8 resid_pre, 5e8 tokens, D 36,864 Matryoshka and BatchTopK, k 32.
        "matryoshka": (
            {**BART_TRAIN, "n_tokens": 5 * 10**8},
            {**BART_SAE, "arch": "matryoshka", "width": 36864, "k": 32, "loss": "bussmann",
             "group_sizes": [2304, 2304, 4608, 9216, 18432]},
        ),
        "batchtopk": (
            {**BART_TRAIN, "n_tokens": 5 * 10**8},
            {**BART_SAE, "arch": "batchtopk", "width": 36864, "k": 32},
        ),
        # Seed 001's train_gemma_layer8_transcoder.py: 1e7 tokens, batch 512, lr 2e-4, k 96.
        "matryoshka-transcoder": (
            {**BART_TRAIN, "n_tokens": 10**7, "batch_size": 512, "lr": 2e-4,
             "checkpoint_every": 1000},
            {**BART_SAE, "arch": "matryoshka", "width": 36864, "k": 96, "loss": "bussmann",
             "group_sizes": [1152, 2304, 4608, 9216, 19584], "normalize_input": False,
             "dead_after_tokens": 20 * 512},
        ),
    },
}  # fmt: skip
PRESETS = sorted(ORIGINALS)


def effective(cfg, name):
    """What the rule hands the trainer: the group's TrainConfig (from its first run, as
    group_train_params) and the SAE's config keywords (schema defaults filled in)."""
    run = cfg.saes[name]
    group = cfg.sae_groups()[run.group_name]
    train = TrainConfig.from_dict(cfg.train_settings(group[0])).to_dict()
    return train, {"arch": run.arch, "width": run.width, **run.options}


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_settings_are_the_originals(preset, in_preset_store):
    cfg = load_config(DEFAULT, REPO_ROOT / "config" / preset)
    assert cfg.raw["precision"] == "auto"
    for name, (train_expected, sae_expected) in ORIGINALS[preset].items():
        train, sae = effective(cfg, name)
        for key, value in train_expected.items():
            assert train[key] == pytest.approx(value), f"{preset} {name}: training.{key}"
        for key, value in sae_expected.items():
            assert sae[key] == value, f"{preset} {name}: {key}"


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_inherit_no_short_run_setting(preset, in_preset_store):
    """The offline default's short-run values (theta EMA 0.1, checkpoints every 40 steps, 1e5
    training tokens for the grid, gemma-tuned ReLU) appear in no trained SAE but the ReLU
    stand-in, whose L1 the preset states itself."""
    default = load_config(DEFAULT)
    cfg = load_config(DEFAULT, REPO_ROOT / "config" / preset)
    for name, run in cfg.saes.items():
        if run.is_pretrained:
            continue  # released (res-jb): nothing is trained
        train, sae = effective(cfg, name)
        assert train["n_tokens"] >= 10**7, (name, train["n_tokens"])
        assert train["checkpoint_every"] >= 500, name
        assert train["checkpoint_every"] != default.training["checkpoint_every"], name
        assert sae["threshold_ema"] == 0.01, name
        assert sae["b_dec_init"] == "zeros", name  # Bart's; the default's is geometric_median
    preset_text = (REPO_ROOT / "config" / preset).read_text()
    assert "l1_coeff: 0.0015" in preset_text  # stated, not inherited


@pytest.mark.parametrize("preset", PRESETS)
def test_groups_whose_cache_would_not_fit_stream(preset, in_preset_store):
    """Caching a group's training tokens (every hook of the group, in the cache's dtype) would
    take more than 50 GB for every group of the paper presets: they all stream."""
    cfg = load_config(DEFAULT, REPO_ROOT / "config" / preset)
    shape = model_shape(resolve_model(cfg.model, tiny=cfg.tiny), cfg.tiny)
    for group, runs in cfg.sae_groups().items():
        train = cfg.train_settings(runs[0])
        hooks = {h for r in runs for h in (r.hook, r.target_hook) if h}
        per_value = 2 if cfg.caches[runs[0].cache].dtype == "float16" else 4
        needed = train["n_tokens"] * len(hooks) * shape.d_model * per_value
        assert needed > 50 * GB, (group, needed)
        assert train["source"] == "stream", group
        corpus = cfg.corpora[cfg.caches[runs[0].cache].corpus]
        assert corpus.n_tokens * 0.95 >= train["n_tokens"], f"{group}: the corpus is too short"


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_saes_are_valid_sae_configs(preset, in_preset_store):
    """Every trained SAE of a preset is one SAEConfig accepts (the gpt2-small smoke test found
    both transcoders asking for normalize_input, which SAEConfig refuses, at training time)."""
    from saelab.budget import _widths
    from saelab.saes import SAEConfig

    cfg = load_config(DEFAULT, REPO_ROOT / "config" / preset)
    shape = model_shape(resolve_model(cfg.model, tiny=cfg.tiny), cfg.tiny)
    for runs in cfg.sae_groups().values():
        for run in runs:
            widths = _widths([h for h in (run.hook, run.target_hook) if h], shape)
            kwargs = run.sae_config_kwargs(cfg.model)
            target = run.target_hook
            SAEConfig(**kwargs, d_in=widths[run.hook], d_out=widths[target] if target else None)
