# Models: convert or fetch the configured model once; train the tiny model and its tokenizer.


rule prepare_model:
    """Dequantize the offline gemma GGUF, or fetch / point at a hub model, into data/models/."""
    output:
        model_dir=directory("data/models/{model}"),
    log:
        "logs/prepare_model/{model}.log",
    benchmark:
        "logs/benchmarks/prepare_model/{model}.tsv"
    conda:
        "../../envs/saelab.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        model=model_params,
    script:
        "../../scripts/prepare_model.py"


rule train_tiny_tokenizer:
    """Byte-level BPE for the tiny model, trained on its corpus."""
    input:
        corpus=f"data/corpus/{CFG.tiny.corpus}.jsonl",
    output:
        tokenizer=directory("data/tokenizers/tiny"),
    log:
        "logs/train_tiny_tokenizer/tiny.log",
    benchmark:
        "logs/benchmarks/train_tiny_tokenizer/tiny.tsv"
    conda:
        "../../envs/saelab.yaml"
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        vocab_size=CFG.tiny.vocab_size,
    script:
        "../../scripts/train_tiny_tokenizer.py"


rule train_tiny_lm:
    """A small GPT-2-style HookedTransformer trained on the tokenized corpus."""
    input:
        tokens=tiny_tokens_input,
        tokenizer="data/tokenizers/tiny",
    output:
        model_dir=directory("data/models/tiny"),
    log:
        "logs/train_tiny_lm/tiny.log",
    benchmark:
        "logs/benchmarks/train_tiny_lm/tiny.tsv"
    conda:
        "../../envs/saelab.yaml"
    threads: 4
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=gpu_request,
    params:
        model=model_params,
    script:
        "../../scripts/train_tiny_lm.py"


ruleorder: train_tiny_lm > prepare_model
