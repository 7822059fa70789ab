# results/summary.md: the README's results tables from this run's outputs (saelab.summary).


rule summary:
    """The README's results tables (SAEs, dark matter, co-occurrence, trajectories), each number
    with its interval or the reason it has none, stamped with the git commit and the command.
    """
    input:
        unpack(summary_inputs),
    output:
        summary="results/summary.md",
    log:
        "logs/summary/summary.log",
    benchmark:
        "logs/benchmarks/summary/summary.tsv"
    conda:
        "../../envs/saelab.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        command=summary_command(),
        model=MODEL_ID,
        repo=workflow.basedir,
    script:
        "../../scripts/summary.py"
