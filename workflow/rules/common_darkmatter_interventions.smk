# Helpers of the dark-matter intervention (darkmatter_interventions.smk) rules: config lookups, paths, params, targets.
from saelab.darkmatter.settings import union

# ------------------------------------------------------------------ which SAEs
# Checked and resolved once, when the config was parsed (saelab.darkmatter.settings); None
# when the analysis is off, and then no function below is called.
DMC = CFG.analyses["darkmatter"]


def dmi_width_sweep():
    """Names of the width sweep at fixed_k (widths ascending): the original's L0 ~ 60 curve."""
    return DMC.width_sweep


def dmi_k_sweep():
    """Names of the k sweep at fixed_width (k ascending): the original's 16k SAEs at every L0."""
    return DMC.k_sweep


def dmi_union(*lists):
    return union(*lists)


def dmi_fixed_sae():
    """The grid SAE at (fixed_width, fixed_k): the components and train-on-error SAE."""
    return DMC.fixed_sae


def dmi_sae(section):
    return DMC.section_saes[section]


def dmi_pursuit_saes():
    return DMC.pursuit_saes


# ------------------------------------------------------------------ paths
def dmi_path(name):
    return f"data/analysis/darkmatter/{MODEL_ID}/interventions/{name}"


def dmi_figure(name):
    return f"plots/darkmatter/{name}"


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
    return DMC.component_hooks, DMC.skipped_components


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


def dmi_fig10a_input(wildcards):
    """pursuit.json of every pursuit SAE (the width sweep at least)."""
    return {
        name: darkmatter_pursuit_path(name)
        for name in dmi_union(dmi_width_sweep(), dmi_pursuit_saes())
    }


def dmi_fig10a_params(wildcards):
    return {"width_sweep": dmi_width_sweep(), "k_sweep": dmi_k_sweep()}


# ------------------------------------------------------------------ targets
DMI_FIGURES = {
    "fig08": "fig08_train_on_error.png",
    "fig09": "fig09_downstream_ce.png",
    "fig10a": "fig10a_pursuit_breakdown.png",
    "fig10b": "fig10b_components.png",
}


def darkmatter_intervention_targets():
    """Every figure of the intervention analyses that the config asks for."""
    if not darkmatter_points():
        return []
    return [dmi_figure(name) for name in DMI_FIGURES.values()]

# ------------------------------------------------------------------ analyses
