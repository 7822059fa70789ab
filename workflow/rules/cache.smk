# Activations: one forward pass per batch writes every configured hook into one zarr group.


rule cache_activations:
    """Cache the configured hooks of the model on a tokenized corpus (resumable)."""
    input:
        tokens=cache_tokens_input,
        model_dir=model_dir_path(),
    output:
        cache=directory("data/cache/{model}/{cache}.zarr"),
    log:
        "logs/cache_activations/{model}/{cache}.log",
    benchmark:
        "logs/benchmarks/cache_activations/{model}/{cache}.tsv"
    conda:
        "../../envs/saelab.yaml"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=gpu_request,
    params:
        cache=cache_params,
        model=model_params,
    script:
        "../../scripts/cache_activations.py"
