# Every drawn figure of the registry (saelab.figures): one rule plot_<id> per row, all running
# scripts/plot.py, which reads the row's inputs and calls its drawing function with them and
# the row's options. The rows' input and option functions live in common.smk.

for _row in FIGURES:
    if not _row.draw:
        continue

    rule:
        name:
            f"plot_{_row.id}"
        input:
            unpack(globals()[_row.inputs]),
        output:
            figure=registry_output(_row.id),
        log:
            figure_log(_row),
        wildcard_constraints:
            **figure_wildcard_constraints(_row),
        conda:
            "../../envs/saelab.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        params:
            figure=_row.id,
            options=globals()[_row.params] if _row.params else {},
        script:
            "../../scripts/plot.py"
