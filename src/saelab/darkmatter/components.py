"""Predicting the SAE error from other components' SAE reconstructions (methods.md §5.7, Fig 10b).

The original's ``simple_circuits.py``: for one SAE on the residual stream, three targets over
its analysis window,

* ``error`` = x − x̂,
* ``linear`` = x W (the linear error, W from the core regression),
* ``nonlinear`` = error − x W,

are each predicted, by a no-intercept least-squares fit on a seeded shuffled half and R² (mean
over output dimensions) on the other half, from the **SAE reconstruction** of

* ``res``: the same residual (the analysed SAE's own x̂),
* ``prev_res``: the previous residual,
* ``mlp``: the block's MLP output,
* ``att``: the block's attention output,

each read at the same tokens from the cache and reconstructed by that component's SAE.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

#: Targets, in plotting order (the original's panels: Nonlinear Error, SAE Error, Linear Error).
TARGETS = ("nonlinear", "error", "linear")


def component_hooks(
    templates: Mapping[str, str], analysed_hook: str, cached_hooks: list[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """(label → hook of each usable predictor, label → why a predictor is skipped).

    Templates may hold ``{layer}`` (the analysed hook's layer) and ``{prev_layer}``. A hook the
    cache lacks, or the analysed hook itself (its SAE is ``res``), is skipped.
    """
    from saelab.hooks import parse_hook

    if "res" in templates:
        raise ValueError("the predictor label 'res' is reserved for the analysed SAE itself")
    layer = parse_hook(analysed_hook).layer
    usable, skipped = {}, {}
    for label, template in templates.items():
        try:
            hook = template.format(layer=layer, prev_layer=layer - 1)
        except (KeyError, IndexError) as err:
            raise ValueError(
                f"predictor {label!r}: template {template!r} may hold only {{layer}} and "
                f"{{prev_layer}} ({err})"
            ) from None
        if hook == analysed_hook:
            skipped[label] = f"{hook} is the analysed hook"
        elif hook not in cached_hooks:
            skipped[label] = f"{hook} is not in the cache (it holds {cached_hooks})"
        else:
            usable[label] = hook
    return usable, skipped


@torch.no_grad()
def reconstruct_rows(sae, cache_group, rows: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """The SAE reconstruction of its hook's cached activations at cache ``rows`` [N, d_hook]."""
    hook = sae.cfg.hook_name
    if hook not in cache_group:
        raise KeyError(f"the cache does not hold {hook!r}, the hook of the predictor SAE")
    rows = np.asarray(rows, dtype=np.int64)
    span = np.asarray(cache_group[hook][int(rows.min()) : int(rows.max()) + 1], dtype=np.float32)
    acts = span[rows - rows.min()]
    sae.eval()
    out = np.empty((len(rows), sae.cfg.d_out), dtype=np.float32)
    for lo in range(0, len(rows), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(acts[lo : lo + batch_size]))
        out[lo : lo + batch_size] = sae.reconstruct(batch.to(sae.device)).float().cpu().numpy()
    return out


def predictability_table(
    targets: Mapping[str, np.ndarray], predictors: Mapping[str, np.ndarray], seed: int = 0
) -> dict[str, dict[str, float]]:
    """Held-out R² of each target from each predictor: ``{target: {predictor: r2}}``."""
    from saelab.darkmatter.regression import heldout_r2, shuffled_split

    n = {len(v) for v in (*targets.values(), *predictors.values())}
    if len(n) != 1:
        raise ValueError(f"targets and predictors must share their rows; got lengths {sorted(n)}")
    split = shuffled_split(n.pop(), seed)
    return {
        target: {
            name: heldout_r2(np.asarray(X, dtype=np.float64), Y, split).r2
            for name, X in predictors.items()
        }
        for target, Y in targets.items()
    }


def components_record(
    info, regression, predictor_saes: Mapping[str, Any], cache_group, seed: int = 0
) -> dict[str, Any]:
    """The Fig 10b table for one SAE: ``res`` is its own x̂, the others come from
    ``predictor_saes`` (label → SAE) applied to the cache at the info's rows."""
    if "res" in predictor_saes:
        raise ValueError("the predictor label 'res' is reserved for the analysed SAE itself")
    from saelab.darkmatter.regression import ErrorParts

    # the targets in float64: their R² tables are exact to the last digit
    f64 = (np.asarray(a, dtype=np.float64) for a in (info.x, info.x_hat, regression.W_vec))
    targets = ErrorParts.of(*f64)._asdict()
    predictors = {"res": np.asarray(info.x_hat, dtype=np.float32)}
    hooks = {"res": info.attrs["hook"]}
    for label, sae in predictor_saes.items():
        predictors[label] = reconstruct_rows(sae, cache_group, info.rows)
        hooks[label] = sae.cfg.hook_name
    return {
        "sae": info.attrs.get("sae"),
        "hook": info.attrs["hook"],
        "n_tokens": len(info.x),
        "seed": seed,
        "predictor_hooks": hooks,
        "r2": predictability_table({t: targets[t] for t in TARGETS}, predictors, seed),
    }
