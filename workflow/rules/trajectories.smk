# SAE feature trajectories through attention (issue 6, methods §6): per prompt, the evolution
# data (per-source-token attention decomposition, SAE latents at each step, logit lens), then
# one trajectory graph (JSON + interactive HTML; plot rules draw its PNG) per final-rank filter T, and the rank evolution
# plot of the chosen layers. SAEs: the per-layer family `trajectories.sweep`, trained here or
# released (a `sweeps` family with `pretrained`, rule pretrained_sae).


rule trajectory_evolution:
    """Per prefix length and layer: the last token's attention output split by source token,
    checked against hook_resid_mid; SAE latents of resid_pre and of every cumulative step; logit
    lens. Every prompt in one job (the model loads once), one forward pass each, no logits.
    """
    input:
        unpack(trajectory_sae_inputs),
        model_dir=model_dir_path(),
    output:
        evolution=trajectory_evolution_outputs(),
    log:
        f"logs/trajectory_evolution/{MODEL_ID}.log",
    benchmark:
        f"logs/benchmarks/trajectory_evolution/{MODEL_ID}.tsv"
    conda:
        "../../envs/saelab.yaml"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=30,
        gpu=gpu_request,
    params:
        traj=trajectory_evolution_params,
        model=model_params,
    script:
        "../../scripts/trajectory_evolution.py"


rule trajectory_graph:
    """Newcomers (final rank <= T), edges per prompt length, the backward trace; for every T the
    graph as JSON (rule plot_trajectory_graph draws its PNG) and interactive HTML (hover: each
    newcomer latent with its description).
    One job per prompt: loading the 262k-token gemma tokenizer costs more than a graph.
    """
    input:
        unpack(trajectory_feature_inputs),
        evolution=trajectory_evolution_input,
        tokenizer=tokenizer_input,
    output:
        **trajectory_graph_outputs(),
    log:
        "logs/trajectory_graph/{prompt}.log",
    benchmark:
        "logs/benchmarks/trajectory_graph/{prompt}.tsv"
    wildcard_constraints:
        prompt=one_of(TRAJ.prompt_names) or "$^",
    conda:
        "../../envs/saelab.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        graph=trajectory_graph_params,
    script:
        "../../scripts/trajectory_graph.py"
