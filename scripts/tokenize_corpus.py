"""Rule tokenize_corpus: documents -> fixed-length token contexts with a special-token mask."""

import sys

from saelab.config import CorpusConfig
from saelab.data import read_documents, save_tokens, tokenize_documents
from saelab.models import load_tokenizer
from saelab.runtime import logged

with logged(snakemake.log[0]) as log:
    corpus = CorpusConfig(**snakemake.params.corpus)
    tokenizer = load_tokenizer(snakemake.input.tokenizer)
    tokenized = tokenize_documents(
        read_documents(snakemake.input.corpus),
        tokenizer,
        context_len=corpus.context_len,
        n_contexts=corpus.n_tokens // corpus.context_len,
        bos=corpus.bos,
        seed=corpus.seed,
    )
    save_tokens(
        tokenized,
        snakemake.output.tokens,
        attrs={
            "corpus": snakemake.wildcards.corpus,
            "model": snakemake.wildcards.model,
            "source": corpus.source,
            "bos": corpus.bos,
            "seed": corpus.seed,
            "bos_token_id": tokenizer.bos_token_id,
            "python_version": sys.version.split()[0],  # the python-docs corpus depends on it
        },
    )
    log.info("tokenized %s contexts of %d tokens", tokenized.tokens.shape[0], corpus.context_len)
