# Co-occurrence of Matryoshka latents (issue 4, methods §2): counts -> subgraphs -> per-group
# summary, PCA of a representative subgraph and its feature pages. Also the per-latent feature
# summaries (rule feature_summary), which the trajectory analysis reads too.


rule feature_summary:
    """Firing counts, top activations with contexts and histograms of every latent of one SAE."""
    input:
        sae=sae_input,
        cache=sae_cache_input,
    output:
        summary="data/analysis/features/{model}/{hook}/{sae}.npz",
    log:
        "logs/feature_summary/{model}/{hook}/{sae}.log",
    benchmark:
        "logs/benchmarks/feature_summary/{model}/{hook}/{sae}.tsv"
    wildcard_constraints:
        sae=one_of(CFG.saes),
        hook=one_of({run.hook for run in CFG.saes.values()}),
    conda:
        "../../envs/saelab.yaml"
    # One thread: 1-2 s of encoding after ~3 s of starting Python, so two jobs side by side
    # finish sooner than one job on two threads.
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        features=feature_summary_params,
    script:
        "../../scripts/feature_summary.py"


rule cooccurrence:
    """Firing and pair counts (sparse, CSR) of one SAE at every activation threshold."""
    input:
        sae=sae_input,
        cache=sae_cache_input,
    output:
        counts=expand(
            "data/analysis/cooccurrence/{{model}}/{{hook}}/{{sae}}/counts_tau{tau}.npz",
            tau=cooccurrence_tags(),
        ),
    log:
        "logs/cooccurrence/{model}/{hook}/{sae}.log",
    benchmark:
        "logs/benchmarks/cooccurrence/{model}/{hook}/{sae}.tsv"
    wildcard_constraints:
        sae=one_of(CFG.saes),
    conda:
        "../../envs/saelab.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cooc=cooccurrence_params,
    script:
        "../../scripts/cooccurrence.py"


rule cooccurrence_subgraphs:
    """Edge threshold by bisection, connected subgraphs, node_info table, thresholded matrix."""
    input:
        counts="data/analysis/cooccurrence/{model}/{hook}/{sae}/counts_tau{tau}.npz",
    output:
        node_info="data/analysis/cooccurrence/{model}/{hook}/{sae}/node_info_tau{tau}.csv",
        matrix="data/analysis/cooccurrence/{model}/{hook}/{sae}/thresholded_tau{tau}.npz",
        edge="data/analysis/cooccurrence/{model}/{hook}/{sae}/edge_threshold_tau{tau}.json",
    log:
        "logs/cooccurrence_subgraphs/{model}/{hook}/{sae}_tau{tau}.log",
    benchmark:
        "logs/benchmarks/cooccurrence_subgraphs/{model}/{hook}/{sae}_tau{tau}.tsv"
    wildcard_constraints:
        sae=one_of(CFG.saes),
        tau=one_of(cooccurrence_tags()),
    conda:
        "../../envs/saelab.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        graph=cooccurrence_subgraph_params,
    script:
        "../../scripts/cooccurrence_subgraphs.py"


rule cooccurrence_edge_table:
    """The original's edge_thresholds.csv: one row per SAE and activation threshold."""
    input:
        cooccurrence_edge_inputs,
    output:
        table="data/analysis/cooccurrence/{model}/edge_thresholds.csv",
    log:
        "logs/cooccurrence_edge_table/{model}.log",
    conda:
        "../../envs/saelab.yaml"
    script:
        "../../scripts/cooccurrence_edge_table.py"


rule cooccurrence_summary:
    """Per-group statistics and correlations, mean co-occurrence by latent index."""
    input:
        unpack(cooccurrence_summary_inputs),
    output:
        summary="data/analysis/cooccurrence/{model}/summary_tau{tau}.json",
        groups="data/analysis/cooccurrence/{model}/group_stats_tau{tau}.csv",
        by_index="data/analysis/cooccurrence/{model}/mean_cooccurrence_tau{tau}.csv",
    log:
        "logs/cooccurrence_summary/{model}/tau{tau}.log",
    benchmark:
        "logs/benchmarks/cooccurrence_summary/{model}/tau{tau}.tsv"
    wildcard_constraints:
        tau=one_of(cooccurrence_tags()),
    conda:
        "../../envs/saelab.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        summary=cooccurrence_summary_params,
    script:
        "../../scripts/cooccurrence_summary.py"


rule representative_subgraph:
    """Which subgraph the PCA and the feature pages show (a config id, or chosen by rule)."""
    input:
        unpack(representative_inputs),
    output:
        choice="data/analysis/cooccurrence/{model}/representative_tau{tau}.json",
    log:
        "logs/representative_subgraph/{model}/tau{tau}.log",
    wildcard_constraints:
        tau=one_of(cooccurrence_tags()),
    conda:
        "../../envs/saelab.yaml"
    params:
        representative=representative_params,
    script:
        "../../scripts/representative_subgraph.py"


rule subgraph_pca:
    """PCA of the representative subgraph's partial reconstructions: the series its figures
    show (rules plot_pca_subgraph, plot_pca_subgraph_html draw the PNG and the plotly HTML).
    """
    input:
        choice=representative_choice_input,
        sae=representative_sae_input,
        cache=representative_cache_input,
        tokenizer=tokenizer_input,
    output:
        series=pca_subgraph_series_path("{tau}"),
    log:
        "logs/subgraph_pca/tau{tau}.log",
    benchmark:
        "logs/benchmarks/subgraph_pca/tau{tau}.tsv"
    wildcard_constraints:
        tau=one_of(cooccurrence_tags()),
    conda:
        "../../envs/saelab.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        pca=subgraph_pca_params,
    script:
        "../../scripts/subgraph_pca.py"


rule subgraph_pca_all:
    """PCA of every subgraph whose size lies in pca.all_in_size_range: a folder of series, one
    per subgraph (rule plot_pca_all draws them)."""
    input:
        unpack(representative_inputs),
        sae=representative_sae_input,
        cache=representative_cache_input,
        tokenizer=tokenizer_input,
    output:
        folder=directory(pca_all_series_path("{tau}")),
    log:
        "logs/subgraph_pca_all/tau{tau}.log",
    benchmark:
        "logs/benchmarks/subgraph_pca_all/tau{tau}.tsv"
    wildcard_constraints:
        tau=one_of(cooccurrence_tags()),
    conda:
        "../../envs/saelab.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        pca=subgraph_pca_params,
    script:
        "../../scripts/subgraph_pca_all.py"


rule feature_dashboards:
    """Static offline HTML pages for the latents of the representative subgraph."""
    input:
        choice=representative_json,
        features=representative_features_input,
        sae=representative_sae_input,
        model_dir=model_dir_path(),
        tokenizer=tokenizer_input,
    output:
        pages=registry_output("dashboard_pages"),
        # the report embeds the one-page form: a pure HTML report cannot hold a folder
        page=registry_output("dashboards"),
    log:
        "logs/feature_dashboards/dashboards.log",
    conda:
        "../../envs/saelab.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        dashboards=dashboard_params,
    script:
        "../../scripts/feature_dashboards.py"
