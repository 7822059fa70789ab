"""Text corpora and token contexts: where text comes from, and how it becomes ``[n, context_len]``.

Four sources of documents (:func:`iter_documents`):

* ``python-docs``: English prose from the Python standard library's own documentation (pydoc
  topics and docstrings), built in and offline (:func:`python_docs_documents`).
* ``text``: local text files, split into documents at two or more consecutive blank lines.
* ``jsonl``: local JSON-lines files, one document per line, text in ``text_field``.
* ``hf``: a Hugging Face dataset, streamed; needs the hub, fails fast and clearly without it.

:func:`tokenize_documents` shuffles documents by seed, tokenises them in batches and packs them
into fixed-length contexts under one of three BOS conventions (``per_context`` as SAE-Lens,
``per_document`` as bartbussmann/matryoshka_sae, ``none``). :func:`save_tokens` and
:func:`load_tokens` keep the result as a zarr v3 group, written atomically.

Modules: :mod:`~saelab.data.python_docs` (the built-in corpus), :mod:`~saelab.data.sources`
(documents and the corpus file), :mod:`~saelab.data.contexts` (tokenisation and packing),
:mod:`~saelab.data.tokens` (the token store). The public names are re-exported here.
"""

from saelab.data.contexts import (
    BOS_MODES,
    TOKENS_FORMAT,
    TokenizedCorpus,
    corpus_fingerprint,
    shuffle_documents,
    tokenize_documents,
)
from saelab.data.errors import (
    CorpusError,
    TokensNotFoundError,
)
from saelab.data.python_docs import (
    MIN_DOC_CHARS,
    MIN_PROSE_FRACTION,
    python_docs_documents,
)
from saelab.data.sources import (
    CHARS_PER_TOKEN_BUDGET,
    SOURCES,
    documents_for_budget,
    iter_documents,
    iter_hf_documents,
    iter_jsonl_documents,
    read_documents,
    read_text_documents,
    split_text_documents,
    write_documents,
)
from saelab.data.tokens import (
    TOKENIZE_RULE,
    TokenStore,
    load_tokens,
    save_tokens,
)

__all__ = [
    "BOS_MODES",
    "CHARS_PER_TOKEN_BUDGET",
    "MIN_DOC_CHARS",
    "MIN_PROSE_FRACTION",
    "SOURCES",
    "TOKENIZE_RULE",
    "TOKENS_FORMAT",
    "CorpusError",
    "TokenStore",
    "TokenizedCorpus",
    "TokensNotFoundError",
    "corpus_fingerprint",
    "documents_for_budget",
    "iter_documents",
    "iter_hf_documents",
    "iter_jsonl_documents",
    "load_tokens",
    "python_docs_documents",
    "read_documents",
    "read_text_documents",
    "save_tokens",
    "shuffle_documents",
    "split_text_documents",
    "tokenize_documents",
    "write_documents",
]
