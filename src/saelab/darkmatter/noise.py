"""The synthetic noise simulation (Fig 15, Table 1; ``synthetic_simulation.py``, methods.md §5.9).

Synthetic activations are SAE reconstructions, x' = SAE(x), so a perfect dictionary exists.
Then (1) the p % of latents with the lowest mean activation over all tokens are ablated from
the reconstruction (absent features), (2) Gaussian noise of std σ_act is added to x' (activation
noise) and of std σ_rec to the reconstruction (reconstruction noise), and (3) the error
x' + ε_act − recon is regressed on x' + ε_act (no intercept, all tokens, as the original).
"FVU" is the element-global FVU (one global scalar mean, like the original's
``calculate_r_squared_torch``, but over the unbiased variance: :func:`saelab.metrics.
fvu_element_global`) of the reconstruction and of the reconstruction + linear error prediction;
the linear map is :func:`saelab.darkmatter.regression.lstsq`'s.

The claim: activation noise shows up as *linear* error, reconstruction noise as *nonlinear*
error. Table 1 correlates, over a 5×5 grid of (σ_act, σ_rec) at 0 % ablation, the noise levels
with the estimated linear error (FVU_recon − FVU_recon+lin) and nonlinear error (FVU_recon+lin).
The original's table code used a variable only set in dead plotting code and failed; here the
estimates are computed explicitly.

Units: the original's σ are absolute (Gemma-2-9B layer 20). ``units="activation_std"`` (the
default here) multiplies them by the mean per-dimension standard deviation of x', so the
simulation means the same in any model; ``units="absolute"`` uses them as given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from saelab.darkmatter.regression import lstsq
from saelab.metrics import fvu_element_global
from saelab.runtime import dataclass_from_section
from saelab.schema import section_defaults

#: Defaults of NoiseConfig: the schema's ``darkmatter.noise`` section, their one place.
_DEFAULTS = section_defaults("darkmatter", "noise")


@dataclass
class NoiseConfig:
    """Settings of the simulation."""

    sae: str | None = _DEFAULTS["sae"]
    """SAE of the sweep to use (default: the narrowest at its largest k, as the original's 16k
    SAE at L0 ≈ 100)."""
    n_tokens: int = _DEFAULTS["n_tokens"]
    """Tokens of the window used (the original: the first 50,000)."""
    ablate_percents: list[int] = field(
        default_factory=lambda: section_defaults("darkmatter", "noise")["ablate_percents"]
    )
    """Percent of latents (lowest mean activation first) ablated."""
    line_settings: list[list[float]] = field(
        default_factory=lambda: section_defaults("darkmatter", "noise")["line_settings"]
    )
    """(σ_act, σ_rec) pairs drawn as lines against the ablated percent."""
    grid: list[float] = field(
        default_factory=lambda: section_defaults("darkmatter", "noise")["grid"]
    )
    """Noise levels of the (σ_act, σ_rec) grid of Table 1 (at 0 % ablation)."""
    units: str = _DEFAULTS["units"]
    """``activation_std`` (σ × mean per-dimension std of x') or ``absolute`` (the original)."""
    seed: int = _DEFAULTS["seed"]

    @classmethod
    def from_section(cls, noise: Mapping[str, Any]) -> NoiseConfig:
        """From the ``darkmatter.noise`` config section (its keys are this class's fields)."""
        return dataclass_from_section(cls, noise)

    def __post_init__(self):
        if self.units not in ("activation_std", "absolute"):
            raise ValueError(
                f"noise.units {self.units!r} is not allowed; use activation_std or absolute"
            )
        if any(not 0 <= p < 100 for p in self.ablate_percents):
            raise ValueError(f"noise.ablate_percents {self.ablate_percents} must lie in [0, 100)")
        if any(len(s) != 2 for s in self.line_settings):
            raise ValueError(
                f"noise.line_settings {self.line_settings} must be [σ_act, σ_rec] pairs"
            )


class SimulationPoint(NamedTuple):
    ablate_percent: float
    sigma_act: float
    sigma_rec: float
    fvu_recon: float
    fvu_recon_plus_linear: float

    @property
    def linear_estimate(self) -> float:
        return self.fvu_recon - self.fvu_recon_plus_linear

    @property
    def nonlinear_estimate(self) -> float:
        return self.fvu_recon_plus_linear


@torch.no_grad()
def simulate(
    x_synthetic: torch.Tensor, codes_dense: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor,
    mean_activation: torch.Tensor, cfg: NoiseConfig,
) -> list[SimulationPoint]:  # fmt: skip
    """Every (ablation, σ_act, σ_rec) point: the line settings at every ablated percent, the
    grid at 0 %. ``codes_dense`` [N, width] are the SAE's codes of ``x_synthetic``;
    ``mean_activation`` [width] orders latents for ablation (lowest first)."""
    generator = torch.Generator().manual_seed(cfg.seed)
    scale = float(x_synthetic.std(0).mean()) if cfg.units == "activation_std" else 1.0
    order = torch.argsort(mean_activation, stable=True)
    width = codes_dense.shape[1]
    # A setting both on a line and in the grid (e.g. 0 %, σ 0, σ 0) is simulated once, so
    # Fig 15 and Table 1 read the same point.
    line_jobs = [(p, a, r) for p in cfg.ablate_percents for a, r in cfg.line_settings]
    grid_jobs = [(0, a, r) for a in cfg.grid for r in cfg.grid]
    jobs = list(dict.fromkeys((float(p), float(a), float(r)) for p, a, r in line_jobs + grid_jobs))
    recon_by_p: dict[float, torch.Tensor] = {}
    out = []
    for p, sigma_act, sigma_rec in jobs:
        if p not in recon_by_p:
            mask = torch.ones(width)
            mask[order[: int(width * p / 100)]] = 0
            recon_by_p[p] = (codes_dense * mask) @ W_dec + b_dec
        noise_act = torch.randn(x_synthetic.shape, generator=generator) * sigma_act * scale
        noise_rec = torch.randn(x_synthetic.shape, generator=generator) * sigma_rec * scale
        x_noised = x_synthetic + noise_act
        recon = recon_by_p[p] + noise_rec
        error = x_noised - recon
        W = torch.from_numpy(lstsq(x_noised.numpy(), error.numpy()))
        linear_sum = recon.double() + x_noised.double() @ W
        target = x_noised.double()
        out.append(
            SimulationPoint(
                float(p),
                float(sigma_act),
                float(sigma_rec),
                float(fvu_element_global(target, recon.double())),
                float(fvu_element_global(target, linear_sum)),
            )
        )
    return out


def correlation_table(
    points: list[SimulationPoint], grid: list[float]
) -> dict[str, dict[str, float]]:
    """Table 1: Pearson correlations, over the grid at 0 % ablation, of the activation and
    reconstruction noise levels with the estimated linear and nonlinear error."""
    grid_set = set(grid)
    seen = {
        (point.sigma_act, point.sigma_rec): point
        for point in points
        if point.ablate_percent == 0 and point.sigma_act in grid_set and point.sigma_rec in grid_set
    }
    cells = [seen[(a, r)] for a in grid for r in grid]
    act = np.array([c.sigma_act for c in cells])
    rec = np.array([c.sigma_rec for c in cells])
    lin = np.array([c.linear_estimate for c in cells])
    nonlin = np.array([c.nonlinear_estimate for c in cells])

    def corr(a, b) -> float:
        return float(np.corrcoef(a, b)[0, 1])

    return {
        "Activation Noise": {"Linear Error": corr(act, lin), "Nonlinear Error": corr(act, nonlin)},
        "SAE-Reconstruction Noise": {
            "Linear Error": corr(rec, lin),
            "Nonlinear Error": corr(rec, nonlin),
        },
    }


def table_csv(table: dict[str, dict[str, Any]]) -> str:
    columns = ["Linear Error", "Nonlinear Error"]
    lines = ["noise," + ",".join(columns)]
    for row, values in table.items():
        lines.append(row + "," + ",".join(f"{values[c]:.4f}" for c in columns))
    return "\n".join(lines) + "\n"


@torch.no_grad()
def simulate_sae(sae, info, cfg: NoiseConfig) -> list[SimulationPoint]:
    """:func:`simulate` with x' = SAE(x) of the first ``cfg.n_tokens`` window tokens of
    ``info`` (an :class:`~saelab.darkmatter.info.SAEInfo` of ``sae``); latents are ablated in
    the order of their mean activation over all window tokens (the original's
    ``average_feature_values_overall``)."""
    if sae.cfg.normalize_input:
        raise ValueError(
            f"{info.attrs.get('sae')}: the simulation needs an SAE without input normalisation "
            "(its reconstruction must be codes @ W_dec + b_dec)"
        )
    sae.eval()
    width = sae.cfg.width
    idx = info.latent_idx.reshape(-1)
    keep = idx >= 0
    sums = np.bincount(idx[keep], weights=info.latent_val.reshape(-1)[keep], minlength=width)
    mean_activation = torch.from_numpy(sums / len(info.latent_idx)).float()
    x_synthetic = torch.from_numpy(np.ascontiguousarray(info.x_hat[: cfg.n_tokens])).float()
    codes = sae.encode(x_synthetic).codes.dense().float()
    return simulate(
        x_synthetic, codes, sae.W_dec.detach().float(), sae.b_dec.detach().float(),
        mean_activation, cfg,
    )  # fmt: skip
