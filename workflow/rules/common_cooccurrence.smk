# Helpers of the co-occurrence (cooccurrence.smk) rules: config lookups, paths, params, targets.

COOC = CFG.cooccurrence


# ------------------------------------------------------------------ which SAEs and thresholds
def cooccurrence_sae_names():
    return list(COOC.get("saes", []))


def cooccurrence_tags():
    """File tags of the activation thresholds, as the original writes them (1.5 -> 1_5)."""
    from saelab.cooccurrence.counts import threshold_tag

    return [threshold_tag(t) for t in COOC.get("thresholds", [0.0])]


def cooccurrence_threshold(tag):
    from saelab.cooccurrence.counts import threshold_tag

    for value in COOC.get("thresholds", [0.0]):
        if threshold_tag(value) == tag:
            return float(value)
    raise WorkflowError(f"no cooccurrence threshold has the tag {tag!r}")


def representative_sae():
    """The SAE whose subgraph the PCA and the feature pages show (default: first Matryoshka)."""
    chosen = COOC.get("representative", {}).get("sae")
    if chosen:
        return chosen
    return next(n for n in cooccurrence_sae_names() if CFG.saes[n].arch == "matryoshka")


def representative_tag():
    from saelab.cooccurrence.counts import threshold_tag

    value = COOC.get("representative", {}).get("threshold")
    return threshold_tag(value) if value is not None else cooccurrence_tags()[0]


def group_sizes_of(name):
    """A Matryoshka SAE's own group sizes (individual, not cumulative); other SAEs get the first
    Matryoshka's ("pretend")."""
    from saelab.groups import resolve_group_sizes

    run = CFG.saes[name]
    if run.arch == "matryoshka":
        return resolve_group_sizes(run.options["group_sizes"], run.width)
    return group_sizes_of(
        next(n for n in cooccurrence_sae_names() if CFG.saes[n].arch == "matryoshka")
    )


# ------------------------------------------------------------------ paths
def cooccurrence_dir():
    return f"data/analysis/cooccurrence/{MODEL_ID}"


def feature_summary_path(name):
    """data/analysis/features/{model}/{hook}/{sae}.npz (see saelab.features)."""
    return f"data/analysis/features/{MODEL_ID}/{CFG.saes[name].hook}/{name}.npz"


def cooccurrence_sae_dir(name):
    """data/analysis/cooccurrence/{model}/{hook}/{sae}: the per-SAE outputs of this analysis."""
    return f"{cooccurrence_dir()}/{CFG.saes[name].hook}/{name}"


def cooc_counts_path(name, tag):
    return f"{cooccurrence_sae_dir(name)}/counts_tau{tag}.npz"


def cooc_node_info_path(name, tag):
    return f"{cooccurrence_sae_dir(name)}/node_info_tau{tag}.csv"


def cooc_edge_path(name, tag):
    return f"{cooccurrence_sae_dir(name)}/edge_threshold_tau{tag}.json"


# ------------------------------------------------------------------ inputs and params
def feature_summary_params(wildcards):
    run = CFG.saes[wildcards.sae]
    if run.hook != wildcards.hook:
        raise WorkflowError(
            f"SAE {wildcards.sae!r} reads {run.hook!r}, not {wildcards.hook!r}: ask for "
            f"{feature_summary_path(wildcards.sae)}"
        )
    return dict(COOC.get("features", {}))


def cooccurrence_params(wildcards):
    keys = ("n_tokens", "split", "batch_size", "encoding", "method", "thresholds")
    return {key: COOC[key] for key in keys}


def cooccurrence_subgraph_params(wildcards):
    low, high = COOC["component_size"]
    return {
        "min_size": low,
        "max_size": high,
        "tolerance": COOC["bisection_tolerance"],
        "threshold": cooccurrence_threshold(wildcards.tau),
    }


def cooccurrence_summary_inputs(wildcards):
    inputs = {}
    for name in cooccurrence_sae_names():
        inputs[f"node_info_{name}"] = cooc_node_info_path(name, wildcards.tau)
        inputs[f"counts_{name}"] = cooc_counts_path(name, wildcards.tau)
    return inputs


def cooccurrence_summary_params(wildcards):
    return {
        "saes": cooccurrence_sae_names(),
        "group_sizes": {
            name: group_sizes_of(name) for name in cooccurrence_sae_names()
        },
        "threshold": cooccurrence_threshold(wildcards.tau),
    }


def cooccurrence_edge_inputs(wildcards):
    return [
        cooc_edge_path(n, t)
        for n in cooccurrence_sae_names()
        for t in cooccurrence_tags()
    ]


def cooccurrence_plot_inputs(wildcards):
    """The summary and every SAE's node_info table (in the summary's SAE order)."""
    return {
        "summary": f"{cooccurrence_dir()}/summary_tau{wildcards.tau}.json",
        "node_info": [
            cooc_node_info_path(name, wildcards.tau)
            for name in cooccurrence_sae_names()
        ],
    }


def cooccurrence_plot_params(wildcards):
    return {
        "threshold": cooccurrence_threshold(wildcards.tau),
        "component_size": list(COOC["component_size"]),
        "group_sizes": group_sizes_of(representative_sae()),
    }


def cooccurrence_by_index_inputs(wildcards):
    return {
        **cooccurrence_plot_inputs(wildcards),
        "by_index": f"{cooccurrence_dir()}/mean_cooccurrence_tau{wildcards.tau}.csv",
    }


def representative_inputs(wildcards):
    return {"node_info": cooc_node_info_path(representative_sae(), wildcards.tau)}


def representative_params(wildcards):
    return {**COOC.get("representative", {}), "sae": representative_sae()}


def representative_choice_input(wildcards):
    return f"{cooccurrence_dir()}/representative_tau{wildcards.tau}.json"


def representative_sae_input(wildcards):
    return sae_dir_by_name(representative_sae())


def representative_cache_input(wildcards):
    return cache_path(CFG.saes[representative_sae()].cache)


def representative_features_input(wildcards):
    return feature_summary_path(representative_sae())


def subgraph_pca_params(wildcards):
    return {
        **COOC.get("pca", {}),
        "sae": representative_sae(),
        "threshold": cooccurrence_threshold(wildcards.tau),
        "split": COOC["split"],
        "batch_size": COOC["batch_size"],
        "encoding": COOC["encoding"],
    }


def dashboard_params(wildcards):
    return dict(COOC.get("dashboards", {}))


def representative_json(wildcards=None):
    return f"{cooccurrence_dir()}/representative_tau{representative_tag()}.json"

# ------------------------------------------------------------------ rules
