# Text and tokens: the corpus as JSON lines, then fixed-length token contexts per model.


rule build_corpus:
    """Collect the documents of a corpus (built-in Python docs, local files, or a hub dataset)."""
    output:
        corpus="data/corpus/{corpus}.jsonl",
    log:
        "logs/build_corpus/{corpus}.log",
    benchmark:
        "logs/benchmarks/build_corpus/{corpus}.tsv"
    conda:
        "../../envs/saelab.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        corpus=corpus_params,
    script:
        "../../scripts/build_corpus.py"


rule tokenize_corpus:
    """Tokenize a corpus with the model's tokenizer into contexts, with the special-token mask."""
    input:
        corpus="data/corpus/{corpus}.jsonl",
        tokenizer=tokenizer_input,
    output:
        tokens=directory("data/tokens/{model}/{corpus}.zarr"),
    log:
        "logs/tokenize_corpus/{model}/{corpus}.log",
    benchmark:
        "logs/benchmarks/tokenize_corpus/{model}/{corpus}.tsv"
    conda:
        "../../envs/saelab.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        corpus=corpus_params,
    script:
        "../../scripts/tokenize_corpus.py"
