# Helpers of the dark-matter intervention (darkmatter_interventions.smk) rules: config lookups, paths, params, targets.


# ------------------------------------------------------------------ which SAEs
def dmi_width_sweep():
    """Names of the width sweep at fixed_k (widths ascending): the original's L0 ~ 60 curve."""
    return darkmatter_curve_names()


def dmi_fixed_width():
    points = darkmatter_points()
    width = DM.get("fixed_width")
    return width if width is not None else min(point.width for point in points)


def dmi_k_sweep():
    """Names of the k sweep at fixed_width (k ascending): the original's 16k SAEs at every L0."""
    width = dmi_fixed_width()
    chosen = sorted(
        (p for p in darkmatter_points() if p.width == width), key=lambda p: (p.k or 0)
    )
    if not chosen:
        raise WorkflowError(
            f"darkmatter.fixed_width: no SAE of the grid has width {width}; widths: "
            f"{sorted({p.width for p in darkmatter_points()})}"
        )
    return [p.name for p in chosen]


def dmi_union(*lists):
    return list(dict.fromkeys(name for names in lists for name in names))


def dmi_fixed_sae():
    """The grid SAE at (fixed_width, fixed_k): the components and train-on-error SAE."""
    names = [n for n in dmi_k_sweep() if n in dmi_width_sweep()]
    if not names:
        raise WorkflowError(
            "no grid SAE has both darkmatter.fixed_width and darkmatter.fixed_k"
        )
    return names[0]


def dmi_sae(section):
    name = DM[section].get("sae") or dmi_fixed_sae()
    if name not in darkmatter_sae_names():
        raise WorkflowError(
            f"darkmatter.{section}.sae: {name!r} is not in the grid; its SAEs: {darkmatter_sae_names()}"
        )
    return name


def dmi_pursuit_saes():
    choice = DM["pursuit"]["saes"]
    if choice == "width_sweep":
        return dmi_width_sweep()
    if choice == "sweeps":
        return dmi_union(dmi_width_sweep(), dmi_k_sweep())
    return darkmatter_sae_names()


# ------------------------------------------------------------------ paths
def dmi_path(name):
    return f"data/analysis/darkmatter/{MODEL_ID}/interventions/{name}"


def dmi_scorer():
    return DM["train_on_error"]["scorer"]


# ------------------------------------------------------------------ inputs and params
def dmi_pursuit_sae_input(wildcards):
    return sae_dir_by_name(wildcards.sae)


def dmi_downstream_input(wildcards):
    inputs = {
        "cache": cache_path(CFG.saes[dmi_fixed_sae()].cache),
        "model_dir": model_dir_path(),
    }
    for name in dmi_union(dmi_width_sweep(), dmi_k_sweep()):
        inputs[f"info_{name}"] = darkmatter_info_path(name)
        inputs[f"reg_{name}"] = darkmatter_regression_path(name)
    return inputs


def dmi_downstream_params(wildcards):
    return {
        **DM["downstream"],
        "width_sweep": dmi_width_sweep(),
        "k_sweep": dmi_k_sweep(),
        "model": model_params(wildcards),
    }


def dmi_component_hooks():
    """(label -> hook, label -> reason skipped) of the Fig 10b predictors."""
    from saelab.darkmatter.components import component_hooks

    run = CFG.saes[dmi_sae("components")]
    try:
        return component_hooks(
            DM["components"]["predictors"], run.hook, CFG.caches[run.cache].hooks
        )
    except ValueError as err:
        raise WorkflowError(f"darkmatter.components.predictors: {err}") from None


def dmi_component_sae_params(wildcards):
    """SAE kwargs (the analysed grid SAE's, on each predictor hook) and training settings."""
    run = CFG.saes[dmi_sae("components")]
    base = run.sae_config_kwargs(MODEL_ID)
    hooks, _ = dmi_component_hooks()
    specs = {
        label: {**base, "hook_name": hook, "extra": {"run": f"component-{label}"}}
        for label, hook in hooks.items()
    }
    train = {**CFG.train_settings(run), "n_tokens": DM["components"]["n_tokens"]}
    return {"saes": specs, "train": train}


def dmi_components_input(wildcards):
    name = dmi_sae("components")
    return {
        "info": darkmatter_info_path(name),
        "reg": darkmatter_regression_path(name),
        "cache": cache_path(CFG.saes[name].cache),
        "saes": dmi_path("component_saes"),
    }


def dmi_components_params(wildcards):
    hooks, skipped = dmi_component_hooks()
    return {"predictors": hooks, "skipped": skipped, "seed": DM["components"]["seed"]}


def dmi_component_cache_input(wildcards):
    return cache_path(CFG.saes[dmi_sae("components")].cache)


def dmi_train_on_error_input(wildcards):
    name = dmi_sae("train_on_error")
    return {
        "sae": sae_dir_by_name(name),
        "reg": darkmatter_regression_path(name),
        "cache": cache_path(CFG.saes[name].cache),
    }


def dmi_train_on_error_params(wildcards):
    keys = ("width", "k", "n_tokens", "batch_size", "lr", "seed")
    return {key: DM["train_on_error"][key] for key in keys}


def dmi_score_input(wildcards):
    name = dmi_sae("train_on_error")
    return {
        "saes": dmi_path("train_on_error"),
        "info": darkmatter_info_path(name),
        "reg": darkmatter_regression_path(name),
        "cache": cache_path(CFG.saes[name].cache),
        "model_dir": model_dir_path(),
    }


def dmi_score_params(wildcards):
    options = dict(DM["train_on_error"])
    return {**options, "scorer": wildcards.scorer}


def dmi_fig10a_names():
    """The pursuit SAEs of Fig 10a (the width sweep at least)."""
    return dmi_union(dmi_width_sweep(), dmi_pursuit_saes())


def dmi_fig10a_input(wildcards):
    """pursuit.json of every pursuit SAE, in the order of :func:`dmi_fig10a_names`."""
    return {"pursuit": [darkmatter_pursuit_path(name) for name in dmi_fig10a_names()]}


def dmi_fig10a_params(wildcards):
    return {
        "names": dmi_fig10a_names(),
        "width_sweep": dmi_width_sweep(),
        "k_sweep": dmi_k_sweep(),
    }

# ------------------------------------------------------------------ analyses
