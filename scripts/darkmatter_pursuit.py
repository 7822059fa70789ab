"""Rule darkmatter_pursuit: gradient pursuit at each token's own L0 for one grid SAE."""

from saelab.darkmatter.info import load_sae_info
from saelab.darkmatter.pursuit import run_pursuit
from saelab.runtime import configure_torch, logged, write_json_atomic
from saelab.saes.io import load_sae

with logged(snakemake.log[0]) as log:
    configure_torch(snakemake.threads)
    opts = snakemake.params.pursuit
    sae = load_sae(snakemake.input.sae)
    info = load_sae_info(snakemake.input.info)
    log.info(
        "pursuit on %d tokens of %s", min(opts["n_tokens"], len(info.x)), snakemake.wildcards.sae
    )
    record = run_pursuit(sae, info, opts["n_tokens"], opts["batch_size"], opts["seed"])
    log.info(
        "FVU encoder %.4f, pursuit %.4f (L0 %.1f -> %.1f) in %.1f s",
        record["encoder_fvu"], record["pursuit_fvu"], record["l0_mean"],
        record["pursuit_l0_mean"], record["seconds"],
    )  # fmt: skip
    write_json_atomic(record, snakemake.output.pursuit)
