# Helpers of the dark-matter core rules (darkmatter.smk): config lookups, paths, params, targets.
# darkmatter_interventions.smk and common_darkmatter_interventions.smk reuse them.

DM = CFG.darkmatter


# ------------------------------------------------------------------ which SAEs
def darkmatter_points():
    """Sweep points (name, layer, width, k) of the dark-matter grid, or [] without a sweep."""
    return list(CFG.sweeps.get(DM.get("sweep", ""), []))


def darkmatter_sae_names():
    return [point.name for point in darkmatter_points()]


def darkmatter_curve_names():
    """The width curve: one SAE per width at the configured k (the original's L0 ≈ 60)."""
    from saelab.darkmatter.scaling import curve_points

    return [
        point.name for point in curve_points(darkmatter_points(), DM.get("fixed_k"))
    ]


def darkmatter_baseline_points():
    """SAEs of the Fig 13 baselines: the ``baselines_sweep`` family (one SAE per layer)."""
    sweep = DM.get("baselines_sweep")
    return list(CFG.sweeps.get(sweep, [])) if sweep else []


def darkmatter_probe_name():
    from saelab.darkmatter.scaling import pick_sae

    return pick_sae(
        darkmatter_points(), DM.get("probe_sae"), "widest", DM.get("fixed_k")
    )


def darkmatter_noise_name():
    from saelab.darkmatter.scaling import pick_sae

    return pick_sae(
        darkmatter_points(), DM.get("noise", {}).get("sae"), "narrowest_largest_k"
    )


# ------------------------------------------------------------------ paths
def darkmatter_dir(name):
    """data/analysis/darkmatter/{model}/{hook}/{sae}: every per-SAE output of this analysis."""
    return f"data/analysis/darkmatter/{MODEL_ID}/{CFG.saes[name].hook}/{name}"


def darkmatter_info_path(name):
    return f"{darkmatter_dir(name)}/info.zarr"


def darkmatter_regression_path(name):
    return f"{darkmatter_dir(name)}/regression.npz"


def darkmatter_regression_json_path(name):
    return f"{darkmatter_dir(name)}/regression.json"


def darkmatter_pursuit_path(name):
    """Written by the interventions' rule ``darkmatter_pursuit`` (key ``pursuit_fvu``)."""
    return f"{darkmatter_dir(name)}/pursuit.json"


def darkmatter_sweep_dir():
    return f"data/analysis/darkmatter/{MODEL_ID}/{DM.get('sweep', 'darkmatter')}"


def darkmatter_token_loss_path(cache):
    return f"data/analysis/darkmatter/{MODEL_ID}/token_loss/{cache}.npz"


# ------------------------------------------------------------------ inputs and params
def darkmatter_window_params(wildcards):
    return {key: DM[key] for key in ("window", "n_tokens", "split", "batch_size")}


def darkmatter_regression_params(wildcards):
    return {
        "seed": DM["seed"],
        "train_fraction": DM["train_fraction"],
        "norm_intercept": DM["norm_intercept"],
    }


def darkmatter_scaling_input(wildcards):
    names = darkmatter_sae_names()
    inputs = {f"reg_{name}": darkmatter_regression_json_path(name) for name in names}
    if DM.get("breakdown_pursuit"):
        for name in darkmatter_curve_names():
            inputs[f"pursuit_{name}"] = darkmatter_pursuit_path(name)
    return inputs


def darkmatter_scaling_params(wildcards):
    return {
        "curve_k": DM.get("fixed_k"),
        "points": [vars(point) for point in darkmatter_points()],
        "pursuit": bool(DM.get("breakdown_pursuit")),
    }


def darkmatter_curve_input(wildcards):
    """info.zarr and regression.npz of every width-curve SAE (widths ascending)."""
    inputs = {}
    for name in darkmatter_curve_names():
        inputs[f"info_{name}"] = darkmatter_info_path(name)
        inputs[f"reg_{name}"] = darkmatter_regression_path(name)
    return inputs


def darkmatter_all_input(wildcards):
    inputs = {}
    for name in darkmatter_sae_names():
        inputs[f"info_{name}"] = darkmatter_info_path(name)
        inputs[f"reg_{name}"] = darkmatter_regression_path(name)
    return inputs


def darkmatter_baselines_input(wildcards):
    """The Fig 13 SAEs: a ``baselines_sweep`` family's directories and caches (encoded inside the
    rule: one job, not one sae_info per layer), or else the grid's info groups, which sae_info
    writes anyway; with ``baselines_loss``, the per-token losses of their caches."""
    inputs = {}
    family = darkmatter_baseline_points()
    points = family or darkmatter_points()
    for point in points:
        if family:
            inputs[f"sae_{point.name}"] = sae_dir_by_name(point.name)
        else:
            inputs[f"info_{point.name}"] = darkmatter_info_path(point.name)
    caches = sorted({CFG.saes[point.name].cache for point in points})
    for cache in caches:
        if family:
            inputs[f"cache_{cache}"] = cache_path(cache)
        if DM.get("baselines_loss"):
            inputs[f"loss_{cache}"] = darkmatter_token_loss_path(cache)
    return inputs


def darkmatter_baselines_params(wildcards):
    points = darkmatter_baseline_points() or darkmatter_points()
    return {
        "points": [vars(point) for point in points],
        "caches": {point.name: CFG.saes[point.name].cache for point in points},
        "window": darkmatter_window_params(wildcards),
        "seed": DM["seed"],
        "train_fraction": DM["train_fraction"],
    }


def darkmatter_token_loss_params(wildcards):
    return {
        "window": darkmatter_window_params(wildcards),
        "max_contexts": DM["baselines_loss_contexts"],
        "model": model_params(wildcards),
    }


def darkmatter_probe_input(wildcards):
    name = darkmatter_probe_name()
    return {"info": darkmatter_info_path(name), "sae": sae_dir_by_name(name)}


def darkmatter_noise_input(wildcards):
    name = darkmatter_noise_name()
    return {"info": darkmatter_info_path(name), "sae": sae_dir_by_name(name)}


def darkmatter_common_params(wildcards):
    return {"seed": DM["seed"], "train_fraction": DM["train_fraction"]}


def darkmatter_norms_params(wildcards):
    return {
        **darkmatter_common_params(wildcards),
        "norm_intercept": DM["norm_intercept"],
    }
