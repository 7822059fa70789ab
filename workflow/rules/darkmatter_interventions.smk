# The dark matter of SAEs, interventions (issue 5, methods §5.5-5.8): gradient pursuit, downstream
# CE, predicting error from other components, training SAEs on the error. Reuses the helpers of
# darkmatter.smk (darkmatter_points, darkmatter_info_path, ...).


rule darkmatter_pursuit:
    """Gradient pursuit at each token's own L0 over the SAE's decoder (methods §5.6)."""
    input:
        info="data/analysis/darkmatter/{model}/{hook}/{sae}/info.zarr",
        sae=dmi_pursuit_sae_input,
    output:
        pursuit="data/analysis/darkmatter/{model}/{hook}/{sae}/pursuit.json",
    log:
        "logs/darkmatter_pursuit/{model}/{hook}/{sae}.log",
    benchmark:
        "logs/benchmarks/darkmatter_pursuit/{model}/{hook}/{sae}.tsv"
    conda:
        "../../envs/saelab.yaml"
    # Small matmuls with a sync per iteration: one thread per job, jobs in parallel.
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        pursuit=DM["pursuit"],
    script:
        "../../scripts/darkmatter_pursuit.py"


rule darkmatter_pursuit_breakdown:
    """Fig 10a's series: the width sweep's pursuit FVUs with their power-law fit, the k sweep's."""
    input:
        unpack(dmi_fig10a_input),
    output:
        json="data/analysis/darkmatter/{model}/interventions/pursuit_breakdown.json",
    log:
        "logs/darkmatter_pursuit_breakdown/{model}.log",
    conda:
        "../../envs/saelab.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        sweeps=dmi_fig10a_params,
    script:
        "../../scripts/darkmatter_pursuit_breakdown.py"


rule darkmatter_downstream_ce:
    """CE with x̂, x̂ + linear error, x̂ + nonlinear error spliced at the hook (methods §5.5)."""
    input:
        unpack(dmi_downstream_input),
    output:
        table="data/analysis/darkmatter/{model}/interventions/downstream_ce.json",
    log:
        "logs/darkmatter_downstream_ce/{model}.log",
    benchmark:
        "logs/benchmarks/darkmatter_downstream_ce/{model}.tsv"
    conda:
        "../../envs/saelab.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=gpu_request,
    params:
        downstream=dmi_downstream_params,
    script:
        "../../scripts/darkmatter_downstream_ce.py"


rule darkmatter_component_saes:
    """TopK SAEs of the analysed SAE's width and k on the other components' hooks (Fig 10b)."""
    input:
        cache=dmi_component_cache_input,
    output:
        saes=directory("data/analysis/darkmatter/{model}/interventions/component_saes"),
    log:
        "logs/darkmatter_component_saes/{model}.log",
    benchmark:
        "logs/benchmarks/darkmatter_component_saes/{model}.tsv"
    conda:
        "../../envs/saelab.yaml"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
        gpu=gpu_request,
    params:
        train=dmi_component_sae_params,
    script:
        "../../scripts/darkmatter_component_saes.py"


rule darkmatter_components:
    """Held-out R² of the error and its parts from other components' reconstructions (§5.7)."""
    input:
        unpack(dmi_components_input),
    output:
        table="data/analysis/darkmatter/{model}/interventions/components.json",
    log:
        "logs/darkmatter_components/{model}.log",
    benchmark:
        "logs/benchmarks/darkmatter_components/{model}.tsv"
    conda:
        "../../envs/saelab.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        components=dmi_components_params,
    script:
        "../../scripts/darkmatter_components.py"


rule darkmatter_train_on_error:
    """TopK SAEs trained on the linear and the nonlinear error of one SAE (methods §5.8)."""
    input:
        unpack(dmi_train_on_error_input),
    output:
        saes=directory("data/analysis/darkmatter/{model}/interventions/train_on_error"),
    log:
        "logs/darkmatter_train_on_error/{model}.log",
    benchmark:
        "logs/benchmarks/darkmatter_train_on_error/{model}.tsv"
    conda:
        "../../envs/saelab.yaml"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
        gpu=gpu_request,
    params:
        train=dmi_train_on_error_params,
    script:
        "../../scripts/darkmatter_train_on_error.py"


rule darkmatter_score_error_saes:
    """Detection scores of the error SAEs' latents by the named scorer (token_set or llm)."""
    input:
        unpack(dmi_score_input),
    output:
        scores="data/analysis/darkmatter/{model}/interventions/detection_{scorer}.json",
    log:
        "logs/darkmatter_score_error_saes/{model}_{scorer}.log",
    benchmark:
        "logs/benchmarks/darkmatter_score_error_saes/{model}_{scorer}.tsv"
    wildcard_constraints:
        scorer="token_set|llm",
    conda:
        "../../envs/saelab.yaml"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=120,
    params:
        scoring=dmi_score_params,
    script:
        "../../scripts/darkmatter_score_error_saes.py"
