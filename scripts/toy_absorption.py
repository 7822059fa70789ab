"""Rule toy_absorption: absorption of flat vs Matryoshka SAEs on the toy feature hierarchy.

``params.toy``: HierarchyConfig fields plus archs, seeds and training settings
(see :func:`saelab.toy.split_params`). Writes the per-arch, per-seed table (CSV, 6 digits) and
the runs and (parent, child) pairs at full precision (JSON), which rule plot_toy_absorption draws.
Runs train one after another on one thread each (the toy's tensors are tiny: more threads only
slow them down), so the rule needs one thread.
"""

from saelab.runtime import logged, write_json_atomic, write_text_atomic

with logged(snakemake.log[0]) as log:
    from saelab.toy import compare_from_params

    params = dict(snakemake.params.toy)
    log.info("toy absorption experiment: %s", params)
    result = compare_from_params(params)

    table = result.runs.to_csv(index=False, float_format="%.6g")
    write_text_atomic(table, snakemake.output.table)
    records = {key: getattr(result, key).to_dict("records") for key in ("runs", "pairs")}
    write_json_atomic(records, snakemake.output.results)

    for arch, row in result.by_arch().iterrows():
        log.info(
            "%s: absorption rate %.3f (min %.3f, max %.3f, %d seeds)",
            arch, row["mean"], row["min"], row["max"], row["count"],
        )  # fmt: skip
