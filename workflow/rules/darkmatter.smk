# The dark matter of SAEs (issue 5, methods §5): per-SAE info and regressions, the scaling law
# and breakdown, per-token analyses, norm prediction, the norm probe and the noise simulation.
# Figures 8, 9, 10a and 10b come from darkmatter_interventions.smk, which reuses the helpers here.

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
    """SAE directories and caches of the Fig 13 SAEs (encoded inside the rule: one job, not
    one sae_info per layer) and, with ``baselines_loss``, the per-token losses of their caches.
    """
    inputs = {}
    points = darkmatter_baseline_points() or darkmatter_points()
    for point in points:
        inputs[f"sae_{point.name}"] = sae_dir_by_name(point.name)
    caches = sorted({CFG.saes[point.name].cache for point in points})
    for cache in caches:
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
        "device": CFG.device,
        "seed": DM["seed"],
        "train_fraction": DM["train_fraction"],
    }


def darkmatter_token_loss_params(wildcards):
    return {
        "window": darkmatter_window_params(wildcards),
        "max_contexts": DM["baselines_loss_contexts"],
        "model": model_params(wildcards),
    }


def darkmatter_token_loss_hook(wildcards):
    return CFG.caches[wildcards.cache].hooks[0]


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


# ------------------------------------------------------------------ targets
#: figure id -> (file name, caption, analysis output it draws)
DARKMATTER_FIGURES = {
    "fig01": "fig01_scaling_breakdown.png",
    "fig02": "fig02_power_law_fit.png",
    "fig03": "fig03_error_r2_contours.png",
    "fig04": "fig04_per_token_error_norms.png",
    "fig05": "fig05_per_token_predictability.png",
    "fig06": "fig06_per_token_linear_nonlinear.png",
    "fig07": "fig07_norm_prediction_violin.png",
    "fig11": "fig11_nonlinear_fvu_contour.png",
    "fig12": "fig12_nonlinear_norm_extra_variance.png",
    "fig13": "fig13_norm_prediction_baselines.png",
    "fig14": "fig14_latents_vs_norm_probe.png",
    "fig15": "fig15_noise_simulation.png",
}


def darkmatter_figure(fig):
    return f"plots/darkmatter/{DARKMATTER_FIGURES[fig]}"


def darkmatter_targets():
    """Every figure of this analysis that the config asks for."""
    if not darkmatter_points():
        return []
    return [darkmatter_figure(fig) for fig in DARKMATTER_FIGURES] + [
        "plots/darkmatter/table01_noise_correlations.csv"
    ]


# ------------------------------------------------------------------ per-SAE rules
rule sae_info:
    """x, x̂, error = x − x̂, squared norms, L0 and active latents over the analysis window."""
    input:
        sae=sae_input,
        cache=sae_cache_input,
    output:
        info=directory("data/analysis/darkmatter/{model}/{hook}/{sae}/info.zarr"),
    log:
        "logs/sae_info/{model}/{hook}/{sae}.log",
    benchmark:
        "logs/benchmarks/sae_info/{model}/{hook}/{sae}.tsv"
    conda:
        "../../envs/saelab.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=20,
        gpu=gpu_request,
    params:
        window=darkmatter_window_params,
        device=CFG.device,
    script:
        "../../scripts/darkmatter_info.py"


rule darkmatter_regression:
    """No-intercept least squares of x → error and x → ‖error‖², R² on the held-out half."""
    input:
        info="data/analysis/darkmatter/{model}/{hook}/{sae}/info.zarr",
    output:
        npz="data/analysis/darkmatter/{model}/{hook}/{sae}/regression.npz",
        json="data/analysis/darkmatter/{model}/{hook}/{sae}/regression.json",
    log:
        "logs/darkmatter_regression/{model}/{hook}/{sae}.log",
    benchmark:
        "logs/benchmarks/darkmatter_regression/{model}/{hook}/{sae}.tsv"
    conda:
        "../../envs/saelab.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=20,
    params:
        regression=darkmatter_regression_params,
    script:
        "../../scripts/darkmatter_regression.py"


# ------------------------------------------------------------------ analyses over the sweep
rule darkmatter_scaling:
    """FVU against width, the power-law fit with CIs, the breakdown areas and the contour table."""
    input:
        unpack(darkmatter_scaling_input),
    output:
        json=f"{darkmatter_sweep_dir()}/scaling.json",
    log:
        "logs/darkmatter_scaling/scaling.log",
    benchmark:
        "logs/benchmarks/darkmatter_scaling/scaling.tsv"
    conda:
        "../../envs/saelab.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        scaling=darkmatter_scaling_params,
    script:
        "../../scripts/darkmatter_scaling.py"


rule darkmatter_per_token:
    """Per-token error norms across widths and their cross-width predictability."""
    input:
        unpack(darkmatter_curve_input),
    output:
        npz=f"{darkmatter_sweep_dir()}/per_token.npz",
    log:
        "logs/darkmatter_per_token/per_token.log",
    benchmark:
        "logs/benchmarks/darkmatter_per_token/per_token.tsv"
    conda:
        "../../envs/saelab.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        names=darkmatter_curve_names(),
        common=darkmatter_common_params,
    script:
        "../../scripts/darkmatter_per_token.py"


rule darkmatter_norms:
    """Held-out R² of predicting six squared norms from x, for every SAE of the sweep (Fig 7)."""
    input:
        unpack(darkmatter_all_input),
    output:
        json=f"{darkmatter_sweep_dir()}/norms.json",
    log:
        "logs/darkmatter_norms/norms.log",
    benchmark:
        "logs/benchmarks/darkmatter_norms/norms.tsv"
    conda:
        "../../envs/saelab.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        names=darkmatter_sae_names(),
        common=darkmatter_norms_params,
    script:
        "../../scripts/darkmatter_norms.py"


rule darkmatter_token_loss:
    """Per-token model loss over the analysis window of one cache (a Fig 13 baseline)."""
    input:
        cache="data/cache/{model}/{cache}.zarr",
        model_dir=model_dir_path(),
    output:
        npz="data/analysis/darkmatter/{model}/token_loss/{cache}.npz",
    log:
        "logs/darkmatter_token_loss/{model}/{cache}.log",
    benchmark:
        "logs/benchmarks/darkmatter_token_loss/{model}/{cache}.tsv"
    conda:
        "../../envs/saelab.yaml"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=30,
        gpu=gpu_request,
    params:
        loss=darkmatter_token_loss_params,
    script:
        "../../scripts/darkmatter_token_loss.py"


rule darkmatter_baselines:
    """R² of the squared error norm from x and from baselines (token id, loss, L0, ‖x‖)."""
    input:
        unpack(darkmatter_baselines_input),
    output:
        json=f"{darkmatter_sweep_dir()}/baselines.json",
    log:
        "logs/darkmatter_baselines/baselines.log",
    benchmark:
        "logs/benchmarks/darkmatter_baselines/baselines.tsv"
    conda:
        "../../envs/saelab.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        baselines=darkmatter_baselines_params,
        token_id_in_sample=DM.get("token_id_in_sample", True),
    script:
        "../../scripts/darkmatter_baselines.py"


rule darkmatter_probe:
    """The norm probe a* on x̂ − b_dec against each latent's mean activation (Fig 14)."""
    input:
        unpack(darkmatter_probe_input),
    output:
        npz=f"{darkmatter_sweep_dir()}/probe.npz",
    log:
        "logs/darkmatter_probe/probe.log",
    benchmark:
        "logs/benchmarks/darkmatter_probe/probe.tsv"
    conda:
        "../../envs/saelab.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
    params:
        common=darkmatter_common_params,
    script:
        "../../scripts/darkmatter_probe.py"


rule darkmatter_noise:
    """The synthetic noise simulation (Fig 15) and its correlation table (Table 1)."""
    input:
        unpack(darkmatter_noise_input),
    output:
        json=f"{darkmatter_sweep_dir()}/noise.json",
        table=report(
            "plots/darkmatter/table01_noise_correlations.csv",
            caption="../report/darkmatter_table01.rst",
            category="Dark matter",
        ),
    log:
        "logs/darkmatter_noise/noise.log",
    benchmark:
        "logs/benchmarks/darkmatter_noise/noise.tsv"
    conda:
        "../../envs/saelab.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
    params:
        noise=DM.get("noise", {}),
    script:
        "../../scripts/darkmatter_noise.py"


# ------------------------------------------------------------------ figures
# One rule per figure (plot_darkmatter_fig01, ...): its own target, caption and log. The loops
# are per script because Snakemake resolves a rule's `script:` path after the loop has moved on.
DARKMATTER_PLOT_OPTIONS = {
    "probe_running_window": DM.get("probe_running_window", 100),
    "probe_limit": DM.get("probe_limit", 10000),
    "trace_start": DM.get("trace_start", 0),
    "trace_len": DM.get("trace_len", 100),
}

for _fig in ["fig01", "fig02", "fig03", "fig11"]:

    rule:
        name:
            f"plot_darkmatter_{_fig}"
        input:
            data=f"{darkmatter_sweep_dir()}/scaling.json",
        output:
            figure=report(
                darkmatter_figure(_fig),
                caption=f"../report/darkmatter_{_fig}.rst",
                category="Dark matter",
            ),
        log:
            f"logs/plot_darkmatter/{_fig}.log",
        conda:
            "../../envs/saelab.yaml"
        params:
            figure=_fig,
            options=DARKMATTER_PLOT_OPTIONS,
        script:
            "../../scripts/plot_darkmatter_scaling.py"


for _fig in ["fig04", "fig05", "fig06", "fig12"]:

    rule:
        name:
            f"plot_darkmatter_{_fig}"
        input:
            data=f"{darkmatter_sweep_dir()}/per_token.npz",
        output:
            figure=report(
                darkmatter_figure(_fig),
                caption=f"../report/darkmatter_{_fig}.rst",
                category="Dark matter",
            ),
        log:
            f"logs/plot_darkmatter/{_fig}.log",
        conda:
            "../../envs/saelab.yaml"
        params:
            figure=_fig,
            options=DARKMATTER_PLOT_OPTIONS,
        script:
            "../../scripts/plot_darkmatter_per_token.py"


for _fig in ["fig07"]:

    rule:
        name:
            f"plot_darkmatter_{_fig}"
        input:
            data=f"{darkmatter_sweep_dir()}/norms.json",
        output:
            figure=report(
                darkmatter_figure(_fig),
                caption=f"../report/darkmatter_{_fig}.rst",
                category="Dark matter",
            ),
        log:
            f"logs/plot_darkmatter/{_fig}.log",
        conda:
            "../../envs/saelab.yaml"
        params:
            figure=_fig,
            options=DARKMATTER_PLOT_OPTIONS,
        script:
            "../../scripts/plot_darkmatter_norms.py"


for _fig in ["fig13"]:

    rule:
        name:
            f"plot_darkmatter_{_fig}"
        input:
            data=f"{darkmatter_sweep_dir()}/baselines.json",
        output:
            figure=report(
                darkmatter_figure(_fig),
                caption=f"../report/darkmatter_{_fig}.rst",
                category="Dark matter",
            ),
        log:
            f"logs/plot_darkmatter/{_fig}.log",
        conda:
            "../../envs/saelab.yaml"
        params:
            figure=_fig,
            options=DARKMATTER_PLOT_OPTIONS,
        script:
            "../../scripts/plot_darkmatter_norms.py"


for _fig in ["fig14"]:

    rule:
        name:
            f"plot_darkmatter_{_fig}"
        input:
            data=f"{darkmatter_sweep_dir()}/probe.npz",
        output:
            figure=report(
                darkmatter_figure(_fig),
                caption=f"../report/darkmatter_{_fig}.rst",
                category="Dark matter",
            ),
        log:
            f"logs/plot_darkmatter/{_fig}.log",
        conda:
            "../../envs/saelab.yaml"
        params:
            figure=_fig,
            options=DARKMATTER_PLOT_OPTIONS,
        script:
            "../../scripts/plot_darkmatter_probe.py"


for _fig in ["fig15"]:

    rule:
        name:
            f"plot_darkmatter_{_fig}"
        input:
            data=f"{darkmatter_sweep_dir()}/noise.json",
        output:
            figure=report(
                darkmatter_figure(_fig),
                caption=f"../report/darkmatter_{_fig}.rst",
                category="Dark matter",
            ),
        log:
            f"logs/plot_darkmatter/{_fig}.log",
        conda:
            "../../envs/saelab.yaml"
        params:
            figure=_fig,
            options=DARKMATTER_PLOT_OPTIONS,
        script:
            "../../scripts/plot_darkmatter_noise.py"
