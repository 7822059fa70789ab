"""How a trained SAE represents the toy's hierarchy: absorption, parent recall, decoder
cosines (:func:`absorption_report`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from saelab.saes import SAE
from saelab.toy.hierarchy import ToyHierarchy


@dataclass
class AbsorptionResult:
    """How a trained SAE represents the toy's hierarchy (see :func:`absorption_report`)."""

    mean_absorption: float
    """Mean over (parent, child) pairs of the fraction of tokens where parent and child fire but
    the parent latent does not."""
    mean_parent_recall: float
    """1 - mean_absorption: how often the parent latent fires with its parent, per child."""
    mean_child_parent_cos: float
    """Mean over children of the cosine between the child latent's decoder row and the parent's
    true direction (about 0 without absorption; 1/sqrt(2) when the child latent is parent+child)."""
    min_parent_recall: float
    """Worst (parent, child) pair's parent-latent recall."""
    fvu: float
    """Fraction of variance unexplained on the evaluation tokens (eval mode)."""
    l0: float
    """Mean active latents per evaluation token."""
    dead_fraction: float
    """Fraction of latents that never fire on the evaluation tokens."""
    parents: pd.DataFrame
    """One row per parent: its matched latent, decoder cosine, firing F1/precision/recall."""
    pairs: pd.DataFrame
    """One row per (parent, child): tokens, absorption rate, parent-latent recall, the child's
    latent and its decoder's cosines with the child's and the parent's directions."""
    cosines: np.ndarray = field(repr=False)
    """Decoder-row cosines with the true directions [width, n_features]."""

    def summary(self) -> dict[str, float]:
        """The scalar results (one row of a comparison table)."""
        return {
            "absorption_rate": self.mean_absorption,
            "parent_recall": self.mean_parent_recall,
            "min_parent_recall": self.min_parent_recall,
            "child_parent_cos": self.mean_child_parent_cos,
            "fvu": self.fvu,
            "l0": self.l0,
            "dead_fraction": self.dead_fraction,
        }


def _f1_matrix(fires: Tensor, active: Tensor) -> Tensor:
    """F1 of every latent's firing [n, L] against every feature's [n, F] -> [L, F]."""
    fires_f, active_f = fires.float(), active.float()
    tp = fires_f.T @ active_f
    n_fire = fires_f.sum(0).unsqueeze(1)
    n_active = active_f.sum(0).unsqueeze(0)
    return 2 * tp / (n_fire + n_active).clamp_min(1)


@torch.no_grad()
def absorption_report(
    sae: SAE,
    toy: ToyHierarchy,
    n_eval: int = 16384,
    match: str = "cosine",
    seed: int = 12345,
) -> AbsorptionResult:
    """Measure feature absorption of ``sae`` on ``n_eval`` fresh toy tokens (in eval mode).

    Matching: each parent's latent is the one whose decoder row has the highest cosine with the
    parent's true direction (``match="cosine"``), or whose firing has the best F1 against the
    parent's (``"f1"``). Each child's latent is matched the same way among the latents that are
    not parent latents. A latent *fires* on a token when its code is non-zero (for BatchTopK and
    Matryoshka SAEs: above the inference threshold, since the SAE is put in eval mode).

    For every (parent, child) pair, on the tokens where both are active: the *absorption rate*
    is the fraction on which the parent latent does not fire, the *parent recall* its
    complement. ``child_latent_parent_cos``, the cosine of the child latent's decoder row with
    the parent's true direction, says how much of the parent the child latent has taken in
    (0 when it has not; 1/sqrt(2) for a decoder row of parent + child).

    Cosine matching finds a parent latent even when absorption left it silent, so a fully
    absorbed parent scores 1. F1 matching picks whichever latent co-fires best, which for a fully
    absorbed parent is one child's latent, so it scores 1 - P(that child).
    """
    if match not in ("cosine", "f1"):
        raise ValueError(f"match must be 'cosine' or 'f1', got {match!r}")
    sae.eval()
    batch = toy.sample(n_eval, generator=torch.Generator().manual_seed(seed))
    out = sae(batch.x)
    fires = out.codes.dense() != 0
    W_dec = sae.W_dec.detach()
    rows = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cosines = rows @ toy.directions.T  # [width, n_features]
    f1 = _f1_matrix(fires, batch.active)
    score = (cosines if match == "cosine" else f1).clone()
    parent_latents = score[:, toy.parents].argmax(dim=0)  # [P]
    score[parent_latents] = -math.inf  # a child's latent is never a parent latent
    child_latents = score[:, toy.children.reshape(-1)].argmax(dim=0).reshape(toy.children.shape)

    parent_rows, pair_rows = [], []
    for p in range(toy.cfg.n_parents):
        pf, pl = int(toy.parents[p]), int(parent_latents[p])
        parent_on, pfire = batch.active[:, pf], fires[:, pl]
        tp = int((parent_on & pfire).sum())
        parent_rows.append(
            {
                "parent": p,
                "feature": pf,
                "latent": pl,
                "decoder_cos": float(cosines[pl, pf]),
                "f1": float(f1[pl, pf]),
                "precision": tp / max(int(pfire.sum()), 1),
                "recall": tp / max(int(parent_on.sum()), 1),
                "n_tokens": int(parent_on.sum()),
            }
        )
        for j in range(toy.cfg.children_per_parent):
            cf, cl = int(toy.children[p, j]), int(child_latents[p, j])
            both = parent_on & batch.active[:, cf]
            n_both = int(both.sum())
            recall = float(pfire[both].float().mean()) if n_both else math.nan
            pair_rows.append(
                {
                    "parent": p,
                    "child": j,
                    "child_feature": cf,
                    "n_tokens": n_both,
                    "absorption_rate": 1 - recall,
                    "parent_recall": recall,
                    "parent_latent": pl,
                    "child_latent": cl,
                    "child_latent_child_cos": float(cosines[cl, cf]),
                    "child_latent_parent_cos": float(cosines[cl, pf]),
                    "child_recall": float(fires[both, cl].float().mean()) if n_both else math.nan,
                }
            )
    pairs = pd.DataFrame(pair_rows)
    return AbsorptionResult(
        # pandas-stubs type a column's mean/min as Series | Any; on a float column it is a scalar.
        mean_absorption=float(pairs["absorption_rate"].mean()),  # pyright: ignore[reportArgumentType]
        mean_parent_recall=float(pairs["parent_recall"].mean()),  # pyright: ignore[reportArgumentType]
        mean_child_parent_cos=float(pairs["child_latent_parent_cos"].mean()),  # pyright: ignore[reportArgumentType]
        min_parent_recall=float(pairs["parent_recall"].min()),  # pyright: ignore[reportArgumentType]
        fvu=float(out.fvu),
        l0=float(fires.sum(1).float().mean()),
        dead_fraction=float((~fires.any(0)).float().mean()),
        parents=pd.DataFrame(parent_rows),
        pairs=pairs,
        cosines=cosines.numpy(),
    )
