# The dark matter of SAEs (issue 5, methods §5): per-SAE info and regressions, the scaling law
# and breakdown, per-token analyses, norm prediction, the norm probe and the noise simulation.
# Figures 8, 9, 10a and 10b come from darkmatter_interventions.smk, which reuses these helpers.
# Helpers (paths, params, targets) live in common.smk, section "dark matter".


# ------------------------------------------------------------------ per-SAE rules
rule darkmatter_info:
    """x, x̂, error = x − x̂, squared norms, L0 and active latents over the analysis window."""
    input:
        sae=sae_input,
        cache=sae_cache_input,
    output:
        info=directory("data/analysis/darkmatter/{model}/{hook}/{sae}/info.zarr"),
    log:
        "logs/darkmatter_info/{model}/{hook}/{sae}.log",
    benchmark:
        "logs/benchmarks/darkmatter_info/{model}/{hook}/{sae}.tsv"
    conda:
        "../../envs/saelab.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=20,
        gpu=gpu_request,
    params:
        window=darkmatter_window_params,
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
        series=f"{darkmatter_sweep_dir()}/scaling_series.npz",
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
        token_id_in_sample=DM["token_id_in_sample"],
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
        shown=darkmatter_probe_plot_params,
    script:
        "../../scripts/darkmatter_probe.py"


rule darkmatter_noise:
    """The synthetic noise simulation (Fig 15) and its correlation table (Table 1)."""
    input:
        unpack(darkmatter_noise_input),
    output:
        json=f"{darkmatter_sweep_dir()}/noise.json",
        table=registry_output("darkmatter_table01"),
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
        noise=DM["noise"],
    script:
        "../../scripts/darkmatter_noise.py"
