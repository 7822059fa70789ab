"""Rule darkmatter_noise: the synthetic noise simulation (Fig 15) and Table 1 as CSV."""

from saelab.darkmatter.info import load_sae_info
from saelab.darkmatter.noise import NoiseConfig, correlation_table, simulate_sae, table_csv
from saelab.runtime import configure_torch, logged, write_json_atomic, write_text_atomic
from saelab.saes.io import load_sae

with logged(snakemake.log[0]) as log:
    configure_torch(snakemake.threads)
    cfg = NoiseConfig.from_section(snakemake.params.noise)
    info = load_sae_info(snakemake.input.info)
    sae = load_sae(snakemake.input.sae).eval()
    points = simulate_sae(sae, info, cfg)
    table = correlation_table(points, cfg.grid)
    log.info("Table 1:\n%s", table_csv(table))
    write_json_atomic(
        {"sae": info.attrs["sae"], "config": vars(cfg),
         "points": [{**p._asdict(), "linear_estimate": p.linear_estimate,
                     "nonlinear_estimate": p.nonlinear_estimate} for p in points],
         "table": table},
        snakemake.output.json,
    )  # fmt: skip
    write_text_atomic(table_csv(table), snakemake.output.table)
