"""Rule train_tiny_tokenizer: byte-level BPE on the tiny model's corpus."""

from saelab.data import read_documents
from saelab.models import train_bpe_tokenizer
from saelab.runtime import atomic_dir, logged

with logged(snakemake.log[0]) as log:
    with atomic_dir(snakemake.output.tokenizer) as tmp:
        tokenizer = train_bpe_tokenizer(
            read_documents(snakemake.input.corpus), snakemake.params.vocab_size, tmp
        )
    log.info("trained a BPE tokenizer of %d tokens", len(tokenizer))
