"""Tests of ``saelab.darkmatter.noise``, moved from tests/test_darkmatter.py.

Notes shared with the other tests moved from tests/test_darkmatter.py:
``tests/darkmatter/__init__.py``."""

from __future__ import annotations

import pytest
import torch

from saelab.darkmatter.noise import NoiseConfig, correlation_table, simulate, table_csv

torch.set_num_threads(1)


# ------------------------------------------------------------------ noise
def test_noise_simulation_separates_activation_and_reconstruction_noise():
    gen = torch.Generator().manual_seed(0)
    d, width, n = 16, 32, 2000
    W_dec = torch.randn(width, d, generator=gen)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    codes = torch.rand(n, width, generator=gen) * (torch.rand(n, width, generator=gen) < 0.1)
    b_dec = torch.zeros(d)
    x = codes @ W_dec
    cfg = NoiseConfig(ablate_percents=[0, 20], line_settings=[[0.0, 0.0]], grid=[0.0, 0.5, 1.0])
    points = simulate(x, codes, W_dec, b_dec, codes.mean(0), cfg)
    settings = [(p.ablate_percent, p.sigma_act, p.sigma_rec) for p in points]
    assert len(settings) == len(set(settings)) == 1 + 9  # (0, 0, 0) is on the line and the grid
    clean = next(p for p in points if (p.sigma_act, p.sigma_rec, p.ablate_percent) == (0, 0, 0))
    assert clean.fvu_recon == pytest.approx(0, abs=1e-10)
    ablated = next(p for p in points if p.ablate_percent == 20)
    assert ablated.fvu_recon > 0.01  # absent features: the ablated latents' share is lost
    table = correlation_table(points, cfg.grid)
    assert table["Activation Noise"]["Linear Error"] > 0.8
    assert table["SAE-Reconstruction Noise"]["Nonlinear Error"] > 0.8
    assert table_csv(table).splitlines()[0] == "noise,Linear Error,Nonlinear Error"
    with pytest.raises(ValueError, match="units"):
        NoiseConfig(units="furlongs")
