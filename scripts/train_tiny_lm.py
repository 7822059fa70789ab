"""Rule train_tiny_lm: train the tiny GPT-2-style model on the tokenized corpus."""

import shutil

from saelab.config import TinyConfig
from saelab.data import load_tokens
from saelab.models import (
    configured_device,
    load_tokenizer,
    resolve_model,
    train_tiny_lm,
    write_manifest,
)
from saelab.runtime import atomic_dir, configure_torch, logged

with logged(snakemake.log[0]) as log:
    configure_torch(snakemake.threads)
    spec = snakemake.params.model
    tiny = TinyConfig(**spec["tiny"])
    tokens, _ = load_tokens(snakemake.input.tokens)
    tokenizer = load_tokenizer(snakemake.input.tokenizer)
    with atomic_dir(snakemake.output.model_dir) as tmp:
        result = train_tiny_lm(
            tokens.tokens,
            tiny,
            tmp / "tiny",
            vocab_size=len(tokenizer),
            special_mask=tokenizer.all_special_ids,
            device=configured_device(snakemake.config),
        )
        shutil.copytree(snakemake.input.tokenizer, tmp / "tokenizer")
        write_manifest(resolve_model("tiny", tiny=tiny), tmp)
    log.info(
        "tiny LM: val loss %.3f nats vs unigram entropy %.3f nats",
        result.final_val_loss,
        result.unigram_entropy,
    )
