"""Rule build_corpus: collect a corpus's documents into JSON lines."""

from saelab.config import CorpusConfig
from saelab.data import documents_for_budget, write_documents
from saelab.runtime import logged

with logged(snakemake.log[0]) as log:
    corpus = CorpusConfig(**snakemake.params.corpus)
    n_docs = write_documents(documents_for_budget(corpus), snakemake.output.corpus)
    log.info(
        "wrote %d documents of source %s to %s", n_docs, corpus.source, snakemake.output.corpus
    )
