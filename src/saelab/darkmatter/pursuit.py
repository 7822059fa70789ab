"""Inference-time optimisation: gradient pursuit at each token's own L0 (methods.md §5.6, Fig 10a).

The original's ``encoder_pursuit.py``, per token, with the SAE's decoder as the dictionary:

* signal s = x − b_dec, dictionary D = W_dec (one atom per row), weights w = 0;
* for t = 1 .. L0 (the token's L0 under the SAE's own encoder):

  1. r = s − w D;  g = r Dᵀ;
  2. add argmax_i g_i (the **signed** maximum, not the absolute one) to the support; the support
     is {w ≠ 0} ∪ {new};
  3. grad = g on the support (0 elsewhere); c = grad D;
  4. exact line search η = ⟨c, r⟩ / ⟨c, c⟩; w ← w + η grad; clamp w ≥ 0;

* each token keeps the w of its own L0-th iteration; the reconstruction is w D + b_dec.

Batched in torch: the weights live in per-token *slots* (the atoms picked so far, at most L0),
so each iteration costs one dense [B, d] × [d, W] product (the correlations g) plus O(B·L0·d)
for the support, instead of three dense products. An atom picked twice reuses its slot.
Tokens whose L0 is reached stop changing (their step is 0).
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm


class PursuitResult(NamedTuple):
    recon: Tensor
    """w D + b_dec [N, d] float32."""
    l0: Tensor
    """Non-zero weights per token after pursuit [N] int64 (≤ the target L0)."""


@torch.no_grad()
def _pursuit_batch(s: Tensor, D: Tensor, target_l0: Tensor) -> tuple[Tensor, Tensor]:
    """Residual r = s − w D and L0 of w after each token's ``target_l0`` iterations."""
    B, d = s.shape
    steps = int(target_l0.max()) if B else 0
    r = s.clone()
    if steps == 0:
        return r, torch.zeros(B, dtype=torch.long, device=s.device)
    idx = torch.zeros(B, steps, dtype=torch.long, device=s.device)
    val = torch.zeros(B, steps, dtype=s.dtype, device=s.device)
    valid = torch.zeros(B, steps, dtype=torch.bool, device=s.device)
    atoms = torch.zeros(B, steps, d, dtype=s.dtype, device=s.device)
    for t in range(steps):
        g = r @ D.T  # [B, W]
        new = g.argmax(dim=1)  # signed argmax, as the original
        seen = (idx[:, :t] == new[:, None]) & valid[:, :t]
        idx[:, t] = new
        valid[:, t] = ~seen.any(dim=1)
        atoms[:, t] = D[new]
        slots = t + 1
        support = valid[:, :slots] & ((val[:, :slots] != 0) | (idx[:, :slots] == new[:, None]))
        grad = g.gather(1, idx[:, :slots]) * support
        c = torch.einsum("bs,bsd->bd", grad, atoms[:, :slots])
        cc = (c * c).sum(dim=1)
        eta = torch.where(cc > 0, (c * r).sum(dim=1) / cc.clamp_min(1e-30), torch.zeros_like(cc))
        eta = torch.where(target_l0 > t, eta, torch.zeros_like(eta))  # done tokens keep their w
        val[:, :slots] = (val[:, :slots] + eta[:, None] * grad).clamp_min(0)
        r = s - torch.einsum("bs,bsd->bd", val[:, :slots], atoms[:, :slots])
    l0 = ((val != 0) & valid).sum(dim=1)
    return r, l0


@torch.no_grad()
def gradient_pursuit(
    x: Tensor,
    W_dec: Tensor,
    b_dec: Tensor,
    target_l0: Tensor,
    batch_size: int = 256,
    progress: bool = True,
) -> PursuitResult:
    """Gradient pursuit of ``x`` [N, d] over the atoms ``W_dec`` [W, d] (rows), with ``b_dec``
    [d] subtracted first, running ``target_l0[n]`` iterations for token n."""
    if x.ndim != 2 or W_dec.ndim != 2 or x.shape[1] != W_dec.shape[1]:
        raise ValueError(
            f"x [N, d] and W_dec [W, d] must share d; got {tuple(x.shape)} and {tuple(W_dec.shape)}"
        )
    if b_dec.shape != (x.shape[1],):
        raise ValueError(f"b_dec must be [{x.shape[1]}], got {tuple(b_dec.shape)}")
    target_l0 = torch.as_tensor(target_l0, dtype=torch.long, device=x.device).reshape(-1)
    if len(target_l0) != len(x):
        raise ValueError(f"target_l0 has {len(target_l0)} entries for {len(x)} tokens")
    if len(target_l0) and int(target_l0.min()) < 0:
        raise ValueError("target L0s must be non-negative")
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} must be positive")
    x = x.float()
    D = W_dec.float().to(x.device)
    b = b_dec.float().to(x.device)
    recon = torch.empty_like(x)
    l0 = torch.empty(len(x), dtype=torch.long, device=x.device)
    starts = range(0, len(x), batch_size)
    for lo in tqdm(starts, desc="pursuit", disable=not progress, mininterval=1.0):
        s = x[lo : lo + batch_size] - b
        r, l0[lo : lo + batch_size] = _pursuit_batch(s, D, target_l0[lo : lo + batch_size])
        recon[lo : lo + batch_size] = x[lo : lo + batch_size] - r  # = w D + b_dec
    return PursuitResult(recon, l0)


def pursuit_metrics(
    x: np.ndarray,
    x_hat: np.ndarray,
    x_gp: np.ndarray,
    seed: int = 0,
) -> dict[str, float]:
    """FVUs of the encoder's and the pursuit's reconstructions on the same tokens, each alone and
    after adding its own linear error prediction (x → x − recon, no intercept, fitted on a seeded
    half and applied to all tokens, as §5.3 does for the SAE: ``*_nonlinear_error_fvu``; the
    ``*_test`` keys score the held-out half only). With few tokens per dimension the fit
    overfits its half, so compare the encoder and pursuit values with each other, never with
    the core regression's (fitted on the whole window)."""
    from saelab.darkmatter.regression import lstsq, shuffled_split
    from saelab.metrics import fvu_dim_centred_np

    split = shuffled_split(len(x), seed)
    out: dict[str, float] = {}
    for name, recon in (("encoder", x_hat), ("pursuit", x_gp)):
        error = x.astype(np.float64) - recon
        W = lstsq(x[split.train_idx], error[split.train_idx])
        with_linear = (recon + x.astype(np.float64) @ W).astype(np.float32)
        out[f"{name}_fvu"] = fvu_dim_centred_np(x, recon)
        out[f"{name}_nonlinear_error_fvu"] = fvu_dim_centred_np(x, with_linear)
        out[f"{name}_nonlinear_error_fvu_test"] = fvu_dim_centred_np(
            x[split.test_idx], with_linear[split.test_idx]
        )
    return out


def run_pursuit(sae, info, n_tokens: int, batch_size: int = 256, seed: int = 0) -> dict[str, Any]:
    """Pursuit on the first ``n_tokens`` of an SAE's analysis window (``saelab.darkmatter.info``),
    at each token's L0 under the SAE; returns the ``pursuit.json`` record."""
    if sae.cfg.normalize_input:
        raise ValueError(
            "gradient pursuit needs an SAE without normalize_input: its atoms must live in the "
            "scale of x"
        )
    n = min(n_tokens, len(info.x))
    x = np.ascontiguousarray(info.x[:n], dtype=np.float32)
    l0 = torch.from_numpy(np.asarray(info.l0[:n], dtype=np.int64))
    t0 = time.perf_counter()
    result = gradient_pursuit(
        torch.from_numpy(x), sae.W_dec.detach(), sae.b_dec.detach(), l0, batch_size
    )
    seconds = time.perf_counter() - t0
    x_gp = result.recon.cpu().numpy()
    record: dict[str, Any] = {
        "sae": info.attrs.get("sae"),
        "width": int(sae.cfg.width),
        "k": int(sae.cfg.k),
        "n_tokens": n,
        "l0_mean": float(l0.float().mean()),
        "pursuit_l0_mean": float(result.l0.float().mean()),
        "seed": seed,
        "seconds": seconds,
    }
    record.update(pursuit_metrics(x, np.asarray(info.x_hat[:n], dtype=np.float32), x_gp, seed))
    return record
