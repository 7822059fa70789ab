"""Tests of ``saelab.data.contexts``, moved from tests/test_data.py.

Notes shared with the other tests moved from tests/test_data.py: ``tests/data/__init__.py``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from saelab.data import (
    CorpusError,
    contexts,
    shuffle_documents,
    tokenize_documents,
)
from tests.data.helpers import SPECIALS, _wrap

BOS, EOS, PAD = 0, 1, 2


@pytest.fixture(scope="session")
def bpe_model(docs) -> Tokenizer:
    """A byte-level BPE (vocab 500) trained offline on a slice of the python-docs corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs[::4], trainer)
    return tok


@pytest.fixture(scope="session")
def bpe(bpe_model) -> PreTrainedTokenizerFast:
    tok = _wrap(bpe_model, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (BOS, EOS, PAD)
    return tok


def ids_of(text: str) -> list[int]:
    """Hand tokenisation for the `words` tokenizer."""
    return [3 + ord(w) - ord("a") for w in text.split()]


def encode(tok, texts: list[str]) -> list[list[int]]:
    return tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


@pytest.fixture
def no_shuffle(monkeypatch):
    """Keep documents in the given order, for hand-written expectations."""
    monkeypatch.setattr(contexts, "shuffle_documents", lambda docs, seed, buffer_size: iter(docs))


# ------------------------------------------------------------------------------------------
# tokenisation: hand-checked examples
# ------------------------------------------------------------------------------------------

THREE = ["a b c", "d e", "f g h i j"]


def test_per_document_hand_checked(words, no_shuffle):
    out = tokenize_documents(THREE, words, 4, 3, "per_document", 0, progress=False)
    a, b, c, d, e, f, g, h, i = ids_of("a b c d e f g h i")
    assert out.tokens.tolist() == [
        [BOS, a, b, c],
        [BOS, d, e, BOS],
        [f, g, h, i],
    ]  # the stream goes on with j, cut off
    assert out.tokens.dtype == np.int32
    assert out.special_mask.tolist() == [
        [True, False, False, False],
        [True, False, False, True],
        [False, False, False, False],
    ]


def test_per_context_hand_checked(words, no_shuffle):
    docs = [*THREE, "k", "m n"]
    out = tokenize_documents(docs, words, 4, 5, "per_context", 0, progress=False)
    a, b, c, d, e, f, g, h, i, j, k, m = ids_of("a b c d e f g h i j k m")
    assert out.tokens.tolist() == [
        [BOS, a, b, c],  # doc 1 fills the context exactly
        [BOS, d, e, BOS],  # doc 2 starts a context: no separator; doc 3's separator
        [BOS, f, g, h],  # doc 3 continues after the context's BOS
        [BOS, i, j, BOS],
        [BOS, k, BOS, m],  # separator mid-context, doc 5 straddles into the next
    ]


def test_none_hand_checked(words, no_shuffle):
    out = tokenize_documents(THREE, words, 5, 2, "none", 0, progress=False)
    a, b, c, d, e, f, g, h = ids_of("a b c d e f g h")
    assert out.tokens.tolist() == [[a, b, c, EOS, d], [e, EOS, f, g, h]]
    assert not (out.tokens == BOS).any()


def test_special_strings_in_text_are_plain_text(bpe):
    out = tokenize_documents(
        ["literal <|bos|> and <|eos|> in text " * 3], bpe, 8, 2, "none", 0, progress=False
    )
    assert not out.special_mask.any()


def test_no_bos_tokenizer(bpe_model):
    tok = _wrap(bpe_model, eos_token="<|eos|>")
    tok.name_or_path = "tiny-no-bos"
    assert tok.bos_token_id is None
    for mode in ("per_context", "per_document"):
        with pytest.raises(CorpusError) as err:
            tokenize_documents(["some text"], tok, 4, 1, mode, 0, progress=False)
        message = str(err.value)
        assert "tiny-no-bos" in message and "'none'" in message and mode in message
    out = tokenize_documents(["some text here, enough"], tok, 4, 1, "none", 0, progress=False)
    assert out.tokens.shape == (1, 4)


def test_unknown_bos_mode(words):
    with pytest.raises(CorpusError, match="per_document"):
        tokenize_documents(["a"], words, 4, 1, "always", 0, progress=False)


def test_not_enough_tokens_names_the_numbers(words, no_shuffle):
    with pytest.raises(CorpusError) as err:
        tokenize_documents(THREE, words, 4, 10, "per_document", 0, progress=False)
    message = str(err.value)
    # 3 documents = 13 tokens with BOS: 3 full contexts of 4 out of 10 (n_tokens 40)
    assert "3 documents" in message and "13 tokens" in message
    assert "3 of the 10 contexts" in message and "n_tokens = 40" in message
    assert "at most 12" in message


# ------------------------------------------------------------------------------------------
# tokenisation: invariants on the real corpus
# ------------------------------------------------------------------------------------------

L, N = 64, 300  # 19,200 tokens


def per_context_reference(
    doc_ids: list[list[int]], context_len: int
) -> tuple[list[int], list[int]]:
    """Token-by-token statement of the per_context rule: (stream, positions of separators)."""
    out: list[int] = []
    separators: list[int] = []
    for index, ids in enumerate(d for d in doc_ids if d):
        if index > 0 and len(out) % context_len != 0:
            separators.append(len(out))  # a document boundary inside a context
            out.append(BOS)
        for token in ids:
            if len(out) % context_len == 0:
                out.append(BOS)
            out.append(token)
    return out, separators


@pytest.fixture(scope="module")
def ordered(docs, bpe):
    """The python-docs documents in seed-0 order, and their token ids."""
    order = list(shuffle_documents(docs, 0))[:2000]
    return order, encode(bpe, order)


def test_per_context_invariants(docs, bpe, ordered):
    out = tokenize_documents(docs, bpe, L, N, "per_context", 0, progress=False)
    tokens = out.tokens
    assert tokens.shape == (N, L) and tokens.dtype == np.int32
    assert (tokens[:, 0] == BOS).all()
    expected, separators = per_context_reference(ordered[1], L)
    assert tokens.ravel().tolist() == expected[: N * L]
    # BOS count = one per context + one per document boundary inside a context
    boundaries = sum(position < N * L for position in separators)
    assert boundaries > 50  # short documents: many boundaries inside contexts
    assert (tokens == BOS).sum() == N + boundaries
    assert (tokens[:, 1] != BOS).all()  # never two BOS at a context start
    # apart from BOS, the contexts hold the documents' tokens in order, nothing else
    body = tokens[tokens != BOS].tolist()
    assert body == [t for ids in ordered[1] for t in ids][: len(body)]


def test_per_document_is_the_bos_stream(docs, bpe, ordered):
    out = tokenize_documents(docs, bpe, L, N, "per_document", 0, progress=False)
    stream = [t for ids in ordered[1] if ids for t in [BOS, *ids]]
    assert out.tokens.ravel().tolist() == stream[: N * L]
    assert (out.tokens[:, 0] != BOS).any()  # contexts straddle documents
    assert (out.tokens[:, 1:] == BOS).any()  # BOS mid-context


def test_per_document_truncation(docs, bpe, ordered):
    out = tokenize_documents(docs, bpe, L, N, "per_document", 0, max_doc_tokens=20, progress=False)
    stream = [t for ids in ordered[1] if ids for t in [BOS, *ids][:20]]
    assert out.tokens.ravel().tolist() == stream[: N * L]


def test_none_is_the_eos_stream(docs, bpe, ordered):
    out = tokenize_documents(docs, bpe, L, N, "none", 0, progress=False)
    stream = [t for ids in ordered[1] for t in [EOS, *ids]][1:]
    assert out.tokens.ravel().tolist() == stream[: N * L]
    assert not (out.tokens == BOS).any()


def test_special_mask_matches_ids(docs, bpe):
    for mode in ("per_context", "per_document", "none"):
        out = tokenize_documents(docs, bpe, L, N, mode, 0, progress=False)
        assert out.special_mask.shape == out.tokens.shape and out.special_mask.dtype == bool
        assert (out.special_mask == np.isin(out.tokens, [BOS, EOS, PAD])).all()
        assert out.special_mask.any()


def test_tokenizer_that_adds_bos_gives_the_same_contexts(docs, bpe, bpe_model):
    adds_bos = Tokenizer.from_str(bpe_model.to_str())
    adds_bos.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", special_tokens=[("<|bos|>", BOS)]
    )
    gemma_like = _wrap(adds_bos, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>")
    assert gemma_like("hi")["input_ids"][0] == BOS  # it does add BOS by default
    for mode in ("per_context", "per_document", "none"):
        a = tokenize_documents(docs, bpe, L, 50, mode, 0, progress=False)
        b = tokenize_documents(docs, gemma_like, L, 50, mode, 0, progress=False)
        assert np.array_equal(a.tokens, b.tokens) and a.fingerprint == b.fingerprint


def test_deterministic_and_seed_sensitive(docs, bpe):
    a = tokenize_documents(docs, bpe, L, 100, "per_context", 1, progress=False)
    b = tokenize_documents(list(docs), bpe, L, 100, "per_context", 1, progress=False)
    c = tokenize_documents(docs, bpe, L, 100, "per_context", 2, progress=False)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.special_mask, b.special_mask)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    assert not np.array_equal(a.tokens, c.tokens) and a.fingerprint != c.fingerprint
    # the fingerprint covers the packing settings, not only the bytes
    assert contexts.corpus_fingerprint(a.tokens, L, "per_document", 1) != a.fingerprint
    # a generator of the same documents (no more than the buffer) gives the same contexts
    d = tokenize_documents(iter(docs), bpe, L, 100, "per_context", 1, progress=False)
    assert np.array_equal(a.tokens, d.tokens)


def test_shuffle_is_a_permutation(docs):
    small = docs[:500]
    full = list(shuffle_documents(small, 3))
    assert sorted(full) == sorted(small) and full != small
    buffered = list(shuffle_documents(iter(small), 3, buffer_size=50))
    assert sorted(buffered) == sorted(small) and buffered != small
    assert buffered == list(shuffle_documents(iter(small), 3, buffer_size=50))


def test_stops_reading_once_full(words):
    consumed = itertools.count()

    def endless():
        for _ in consumed:
            yield "a b c d e f g"

    out = tokenize_documents(
        endless(), words, 8, 10, "per_context", 0, shuffle_buffer=16, batch_docs=8, progress=False
    )
    assert out.tokens.shape == (10, 8)
    # 10 contexts need ~11 documents; read-ahead is bounded by the buffer and one batch
    assert next(consumed) <= 16 + 8 + 12
