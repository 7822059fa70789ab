"""Tests of ``saelab.darkmatter.info``, moved from tests/test_darkmatter.py.

Notes shared with the other tests moved from tests/test_darkmatter.py:
``tests/darkmatter/__init__.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelab.cache.reader import window_rows
from saelab.darkmatter.info import (
    SAEInfoError,
    WindowConfig,
    compute_sae_info,
    load_sae_info,
    write_sae_info,
)

torch.set_num_threads(1)


# ------------------------------------------------------------------ info
def test_window_rows_keep_positions_and_drop_special_tokens():
    ctx = 4
    special = np.zeros(12, bool)
    special[[0, 4, 8]] = True  # BOS of every context
    special[6] = True  # a mid-context special token
    assert window_rows(special, (4, 12), ctx, [0, 3], 100).tolist() == [5, 9, 10]
    assert window_rows(special, (0, 12), ctx, [1, 99], 4).tolist() == [1, 2, 3, 5]
    with pytest.raises(SAEInfoError, match="window"):
        WindowConfig(window=[3, 3])
    with pytest.raises(ValueError, match="no position"):
        window_rows(special, (0, 12), ctx, [5, 9])
    with pytest.raises(ValueError, match="holds no tokens"):
        window_rows(special, (4, 5), ctx, [0, 1])  # only a BOS


def _toy_cache(path, n_contexts=8, ctx=8, d=6, seed=0):
    from saelab.cache import build_cache

    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(50, d, generator=gen)

    def source(tokens):
        return {"blocks.0.hook_resid_pre": table[tokens % 50] + tokens[..., None].float() * 0.01}

    tokens = torch.randint(1, 50, (n_contexts, ctx), generator=gen).numpy()
    tokens[:, 0] = 0
    special = np.zeros_like(tokens, dtype=bool)
    special[:, 0] = True
    build_cache(source, tokens, special, ["blocks.0.hook_resid_pre"], path, dtype="float32",
                batch_contexts=4, progress=False)  # fmt: skip
    return tokens


def test_compute_sae_info_matches_the_sae_and_round_trips(tmp_path):
    from saelab.saes import SAEConfig, build_sae

    cache = tmp_path / "cache.zarr"
    tokens = _toy_cache(cache, n_contexts=40)
    sae = build_sae(
        SAEConfig(arch="topk", d_in=6, width=16, k=3, hook_name="blocks.0.hook_resid_pre")
    )
    cfg = WindowConfig(window=[2, 7], n_tokens=6, split="all")
    info = compute_sae_info(sae, cache, cfg, "toy")
    assert info.rows.tolist() == [2, 3, 4, 5, 6, 10]  # positions 2..6, then the next context
    assert info.position.tolist() == [2, 3, 4, 5, 6, 2]
    assert info.token_ids.tolist() == tokens.reshape(-1)[info.rows].tolist()
    with torch.no_grad():
        x_hat = sae.reconstruct(torch.from_numpy(info.x)).numpy()
    assert np.allclose(info.x_hat, x_hat, atol=1e-5)
    assert np.allclose(info.error, info.x - info.x_hat)
    assert np.allclose(info.error_sq_norm, np.square(info.error).sum(1), rtol=1e-5)
    assert info.l0.tolist() == [3] * 6 and info.latent_idx.shape == (6, 3)
    # the sparse latents rebuild the reconstruction
    dense = np.zeros((6, 16), np.float32)
    for t in range(6):
        dense[t, info.latent_idx[t]] = info.latent_val[t]
    W_dec, b_dec = sae.W_dec.detach().numpy(), sae.b_dec.detach().numpy()
    assert np.allclose(dense @ W_dec + b_dec, info.x_hat, atol=1e-5)
    assert np.all(np.diff(info.latent_val, axis=1) <= 0)  # descending within a token
    out = write_sae_info(info, tmp_path / "info.zarr")
    assert not (tmp_path / "info.zarr.partial").exists()
    back = load_sae_info(out)
    for name in ("x", "error", "latent_idx", "rows", "position"):
        assert np.array_equal(getattr(back, name), getattr(info, name))
    assert back.attrs["window"] == [2, 7] and back.attrs["k"] == 3
    heldout = compute_sae_info(sae, cache, WindowConfig(window=[1, 8]), "toy")
    assert heldout.rows.min() >= 38 * 8  # the held-out split: the last 5 % of contexts
    with pytest.raises(FileExistsError):
        write_sae_info(info, out)
    with pytest.raises(FileNotFoundError, match="rule `darkmatter_info`"):
        load_sae_info(tmp_path / "missing.zarr")
