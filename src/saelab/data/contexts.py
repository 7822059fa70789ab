"""Tokenisation of documents into fixed-length contexts under a BOS convention."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from tqdm.auto import tqdm

if TYPE_CHECKING:
    pass


from saelab.data.errors import CorpusError

#: Values of ``CorpusConfig.bos``.
BOS_MODES = ("per_context", "per_document", "none")
#: Format tag stored in every token store, checked on load (and part of the fingerprint).
TOKENS_FORMAT = "saelab-tokens-v1"


class TokenizedCorpus(NamedTuple):
    """Fixed-length token contexts of a corpus."""

    tokens: np.ndarray
    """int32 ``[n_contexts, context_len]``."""
    special_mask: np.ndarray
    """bool, same shape: True where the token is one of the tokenizer's special tokens."""
    fingerprint: str
    """sha256 hex of the tokens, ``context_len``, ``bos`` and ``seed``."""


def corpus_fingerprint(tokens: np.ndarray, context_len: int, bos: str, seed: int) -> str:
    """sha256 hex over the token bytes (little-endian int32) and the packing settings."""
    digest = hashlib.sha256(
        f"{TOKENS_FORMAT}|shape={tuple(tokens.shape)}|context_len={context_len}"
        f"|bos={bos}|seed={seed}".encode()
    )
    digest.update(np.ascontiguousarray(tokens, dtype="<i4").tobytes())
    return digest.hexdigest()


def shuffle_documents(docs: Iterable[str], seed: int, buffer_size: int = 10_000) -> Iterator[str]:
    """Documents in a seeded random order.

    A sequence (list, tuple) is fully permuted. Any other iterable (e.g. a streamed hf
    dataset) goes through a shuffle buffer of ``buffer_size`` documents, so at most that many
    are read ahead of what is used; an iterable with no more than ``buffer_size`` documents
    comes out in the same order as the same documents given as a list.
    """
    rng = np.random.default_rng(seed)
    if isinstance(docs, Sequence) and not isinstance(docs, str):
        listed: Sequence[str] = docs
        for index in rng.permutation(len(listed)):
            yield listed[int(index)]
        return
    buffer: list[str] = []
    for doc in docs:
        if len(buffer) < buffer_size:
            buffer.append(doc)
            continue
        slot = int(rng.integers(buffer_size))
        yield buffer[slot]
        buffer[slot] = doc
    for index in rng.permutation(len(buffer)):
        yield buffer[index]


class _Packer:
    """Fills ``[n_contexts, context_len]`` row by row from a stream of document pieces."""

    def __init__(self, n_contexts: int, context_len: int, row_bos: int | None):
        self.tokens = np.empty((n_contexts, context_len), dtype=np.int32)
        self.row_bos = row_bos
        self.row = self.col = 0

    @property
    def full(self) -> bool:
        return self.row == self.tokens.shape[0]

    def add(self, ids: np.ndarray, separator: int | None = None) -> None:
        """Append ``ids`` (preceded by ``separator``), continuing into following rows."""
        width = self.tokens.shape[1]
        # with a BOS opening every row, a separator at a row start would only double it
        if separator is not None and not (self.row_bos is not None and self.col == 0):
            ids = np.concatenate([np.array([separator], dtype=np.int32), ids])
        pos = 0
        while pos < len(ids) and not self.full:
            if self.col == 0 and self.row_bos is not None:
                self.tokens[self.row, 0] = self.row_bos
                self.col = 1
            take = min(width - self.col, len(ids) - pos)
            self.tokens[self.row, self.col : self.col + take] = ids[pos : pos + take]
            pos += take
            self.col += take
            if self.col == width:
                self.row += 1
                self.col = 0

    @property
    def n_filled(self) -> int:
        return self.row * self.tokens.shape[1] + self.col


def _tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def _check_packing_args(tokenizer, context_len: int, n_contexts: int, bos: str) -> None:
    if bos not in BOS_MODES:
        raise CorpusError(f"bos: {bos!r} is not a BOS mode; allowed: {list(BOS_MODES)}")
    if bos != "none" and getattr(tokenizer, "bos_token_id", None) is None:
        raise CorpusError(
            f"tokenizer {_tokenizer_name(tokenizer)!r} has no BOS token, so bos={bos!r} is "
            f"impossible; allowed bos values for it: ['none'] (all modes: {list(BOS_MODES)})"
        )
    if n_contexts < 1:
        raise CorpusError(f"n_contexts must be at least 1, got {n_contexts}")
    min_len = 2 if bos == "per_context" else 1
    if context_len < min_len:
        raise CorpusError(f"context_len must be at least {min_len} for bos={bos!r}")


def _batched(items: Iterator[str], size: int) -> Iterator[list[str]]:
    while batch := list(islice(items, size)):
        yield batch


def tokenize_documents(
    docs: Iterable[str],
    tokenizer,
    context_len: int,
    n_contexts: int,
    bos: str,
    seed: int,
    *,
    max_doc_tokens: int | None = None,
    shuffle_buffer: int = 10_000,
    batch_docs: int = 64,
    progress: bool = True,
) -> TokenizedCorpus:
    """Shuffle ``docs`` by ``seed``, tokenise them and pack them into ``n_contexts`` contexts.

    BOS conventions (``bos``):

    * ``per_context`` (SAE-Lens pretokenising): every context starts with BOS and a BOS
      separates documents; a document that does not fit continues in the next context after
      its BOS. A separator that would fall at the start of a context is not repeated.
    * ``per_document`` (bartbussmann/matryoshka_sae): BOS + document, for each document, all
      in one stream cut into blocks, so contexts straddle documents and BOS appears anywhere.
    * ``none``: documents joined by the tokenizer's EOS (when it has one), no BOS.

    Text is tokenised without the tokenizer's own special tokens (``add_special_tokens=False``)
    and with special-token strings in the text treated as plain text, so special ids appear
    exactly where they are inserted here, whichever tokenizer it is. Empty documents are
    skipped. ``max_doc_tokens`` truncates each document (with its BOS in ``per_document``
    mode) as bartbussmann truncates to the model's context; ``None`` keeps documents whole.

    Sequences are fully shuffled; iterators through a buffer (see :func:`shuffle_documents`),
    and only as many documents are read as the contexts need. Raises :class:`CorpusError`
    when the documents run out first.
    """
    _check_packing_args(tokenizer, context_len, n_contexts, bos)
    bos_id = tokenizer.bos_token_id
    eos_id = getattr(tokenizer, "eos_token_id", None)
    packer = _Packer(n_contexts, context_len, row_bos=bos_id if bos == "per_context" else None)
    stream = shuffle_documents(docs, seed, shuffle_buffer)
    n_docs = 0
    with tqdm(total=n_contexts, unit="ctx", desc="tokenize", disable=not progress) as bar:
        for batch in _batched(stream, batch_docs):
            encoded = tokenizer(
                batch,
                add_special_tokens=False,
                split_special_tokens=True,
                return_attention_mask=False,
                verbose=False,  # long documents are expected: no "longer than max length"
            )["input_ids"]
            for ids in encoded:
                if not ids:
                    continue
                ids = np.asarray(ids, dtype=np.int32)
                separator = None
                if bos == "per_document":
                    ids = np.concatenate([np.array([bos_id], dtype=np.int32), ids])
                elif n_docs > 0:
                    separator = bos_id if bos == "per_context" else eos_id
                if max_doc_tokens is not None:
                    ids = ids[:max_doc_tokens]
                rows_before = packer.row
                packer.add(ids, separator)
                n_docs += 1
                bar.update(packer.row - rows_before)
                if packer.full:
                    break
            if packer.full:
                break
    if not packer.full:
        raise CorpusError(
            f"the corpus ran out after {n_docs} documents: {packer.n_filled} tokens fill "
            f"{packer.row} of the {n_contexts} contexts of {context_len} tokens requested "
            f"(n_tokens = {n_contexts * context_len}); lower n_tokens to at most "
            f"{packer.row * context_len}, or add documents"
        )
    tokens = packer.tokens
    special_ids = np.array(sorted(tokenizer.all_special_ids), dtype=np.int64)
    return TokenizedCorpus(
        tokens=tokens,
        special_mask=np.isin(tokens, special_ids),
        fingerprint=corpus_fingerprint(tokens, context_len, bos, seed),
    )
