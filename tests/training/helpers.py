"""Helpers moved verbatim from tests/test_train.py, used by
tests/conftest.py
tests/test_precision.py
tests/test_stream.py
tests/test_tracking.py
tests/test_train.py
tests/training/test_checkpoint.py
tests/training/test_group.py
tests/training/test_loop.py
tests/training/test_outputs.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from saelab.cache import build_cache, cache_manifest

SRC, TGT = "blocks.0.hook_resid_pre", "blocks.0.hook_mlp_out"
D_SRC, D_TGT, N_FEATURES, K_TRUE = 32, 24, 48, 3
N_CONTEXTS, CTX = 256, 32
BATCH = 256


# ------------------------------------------------------------------ a synthetic cache


def synthetic_tables(n_rows: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every token is a sparse combination (3 of 48 features, magnitudes in [0.5, 1.5]) of a
    random unit-norm dictionary; the target hook uses the same codes with another dictionary
    of another width (so a transcoder can learn it), plus an offset and a little noise."""
    g = torch.Generator().manual_seed(seed)
    d_src = torch.nn.functional.normalize(torch.randn(N_FEATURES, D_SRC, generator=g), dim=1)
    d_tgt = torch.nn.functional.normalize(torch.randn(N_FEATURES, D_TGT, generator=g), dim=1)
    chosen = torch.rand(n_rows, N_FEATURES, generator=g).argsort(dim=1)[:, :K_TRUE]
    codes = torch.zeros(n_rows, N_FEATURES)
    codes.scatter_(1, chosen, 0.5 + torch.rand(n_rows, K_TRUE, generator=g))
    src = codes @ d_src + 0.01 * torch.randn(n_rows, D_SRC, generator=g)
    tgt = codes @ d_tgt + 0.01 * torch.randn(n_rows, D_TGT, generator=g) - 0.2
    return {SRC: src, TGT: tgt}


class TableSource:
    """An activation source whose "tokens" are row ids into precomputed activations."""

    def __init__(self, tables: dict[str, torch.Tensor]):
        self.tables = tables

    def __call__(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {hook: table[tokens.long()] for hook, table in self.tables.items()}


def make_cache(path: Path) -> Path:
    tables = synthetic_tables(N_CONTEXTS * CTX)
    tokens = np.arange(N_CONTEXTS * CTX, dtype=np.int32).reshape(N_CONTEXTS, CTX)
    special = np.zeros(tokens.shape, dtype=bool)
    special[:, 0] = True  # position 0 plays BOS: excluded from training
    build_cache(
        TableSource(tables), tokens, special, [SRC, TGT], path, dtype="float32",
        batch_contexts=16, progress=False,
    )  # fmt: skip
    return path


def widths_of(cache: Path) -> dict[str, int]:
    return cache_manifest(cache)["widths"]


# ------------------------------------------------------------------ one group, six SAEs

GROUP = {
    "topk": {"arch": "topk", "k": 4},
    "batchtopk": {"arch": "batchtopk", "k": 4},
    "matryoshka_bussmann": {"arch": "matryoshka", "k": 4, "group_sizes": [8, 24, 32]},
    "matryoshka_official": {
        "arch": "matryoshka", "k": 4, "group_sizes": [8, 24, 32], "loss": "official",
        "b_dec_init": "geometric_median",
    },
    "relu": {"arch": "relu", "l1_coeff": 1e-3},
    "transcoder": {"arch": "batchtopk", "k": 4, "target_hook_name": TGT},
    "transcoder_centred": {"arch": "batchtopk", "k": 4, "target_hook_name": TGT,
                           "center_input": True, "encoder_init": "decoder_transpose"},
}  # fmt: skip
GROUP_STEPS, LOG_EVERY = 300, 50
DEAD_TOKENS = 1000  # more than the ~400 held-out tokens: the count is topped up from training


def group_specs() -> dict[str, dict]:
    common = {"width": 64, "hook_name": SRC, "dead_after_tokens": 10 * BATCH}
    return {name: {**common, **spec} for name, spec in GROUP.items()}


# ------------------------------------------------------------------ resume after SIGKILL

RESUME_SPECS = {
    "topk": {"arch": "topk", "width": 48, "k": 3, "hook_name": SRC,
             "dead_after_tokens": 4 * BATCH},
    "matryoshka": {"arch": "matryoshka", "width": 48, "k": 3, "hook_name": SRC,
                   "group_sizes": [16, 32], "loss": "official",
                   "b_dec_init": "geometric_median", "dead_after_tokens": 4 * BATCH},
}  # fmt: skip
RESUME_CFG = {
    "n_tokens": 80 * BATCH, "batch_size": BATCH, "lr": 3e-3, "warmup_steps": 10,
    "decay_start": 0.5, "checkpoint_every": 10, "log_every": 7, "seed": 11, "buffer_chunks": 3,
}  # fmt: skip


# ------------------------------------------------------------------ the Snakemake script


class _Named(dict):
    """Enough of Snakemake's Namedlist: attribute access and ``items()``."""

    __getattr__ = dict.__getitem__
