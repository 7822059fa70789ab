"""Rule trajectory_evolution: the evolution data of every prompt (saelab.trajectories.evolution)."""

from saelab.models import configured_device, load_prepared
from saelab.precision import model_precision
from saelab.runtime import configure_torch, logged, write_json_atomic
from saelab.saes.io import load_sae
from saelab.trajectories import compute_evolution

with logged(snakemake.log[0]) as log:
    configure_torch(snakemake.threads)
    opts = snakemake.params.traj
    spec = snakemake.params.model
    device = configured_device(snakemake.config)
    layers = [int(layer) for layer in opts["layers"]]
    saes = {layer: load_sae(snakemake.input[f"sae_l{layer}"]) for layer in layers}
    names = {int(layer): name for layer, name in opts["sae_names"].items()}
    saes = {layer: sae.to(device).eval() for layer, sae in saes.items()}
    # float32 whatever the config's precision: every decomposition is checked against the
    # model's hook_resid_mid to check_tolerance (1e-4 relative), which bf16 cannot meet
    precision = model_precision({**spec, "precision": "float32"}, device, log)
    model = load_prepared(snakemake.input.model_dir, device=device, dtype=precision.dtype)
    if len(snakemake.output.evolution) != len(opts["prompts"]):
        raise ValueError("one evolution output per prompt expected")
    for prompt, out in zip(opts["prompts"], snakemake.output.evolution, strict=True):
        evolution = compute_evolution(
            model,
            prompt["text"],
            saes,
            top_k=opts["top_k"],
            tolerance=opts["check_tolerance"],
            logit_lens_top=opts["logit_lens_top"],
            logit_lens_lengths=opts["logit_lens_lengths"],
            sae_names=names,
            prompt_name=prompt["name"],
        )
        meta = evolution["metadata"]
        meta["precision"] = precision.record()
        log.info(
            "%s: %d tokens, %d layers, max relative error of the decomposition %.2e",
            prompt["name"], meta["max_prompt_length"], len(layers), meta["max_relative_error"],
        )  # fmt: skip
        write_json_atomic(evolution, out, indent=None)
