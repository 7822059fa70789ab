"""Tests of saelab.data: corpora, tokenisation into contexts, and the token store."""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from saelab.config import CorpusConfig
from saelab.data import (
    CorpusError,
    TokenizedCorpus,
    TokensNotFoundError,
    contexts,
    iter_documents,
    load_tokens,
    python_docs,
    python_docs_documents,
    read_documents,
    save_tokens,
    shuffle_documents,
    split_text_documents,
    tokenize_documents,
    write_documents,
)

SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>"]
BOS, EOS, PAD = 0, 1, 2


# ------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def docs() -> list[str]:
    return python_docs_documents()


def _wrap(tok: Tokenizer, **specials) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


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


@pytest.fixture(scope="session")
def words() -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose ids can be written by hand: a=3, b=4, ..., z=28."""
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    vocab |= {chr(ord("a") + i): 3 + i for i in range(26)}
    vocab["<unk>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return _wrap(
        tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>", unk_token="<unk>"
    )


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
# python-docs corpus
# ------------------------------------------------------------------------------------------


def test_python_docs_is_large_deduplicated_prose(docs):
    total = sum(map(len, docs))
    assert len(docs) > 1000
    assert total > 1_000_000
    assert all(len(doc) >= python_docs.MIN_DOC_CHARS for doc in docs)
    assert len(set(docs)) == len(docs)
    # mostly English words: at least 90% of documents have >= 15 words, >= 70% plain words
    plain = re.compile(r"^[(\"'*]?[A-Za-z]+[)\"'*]?[,.;:!?]?[)\"']?$")
    prose = 0
    for doc in docs:
        tokens = doc.split()
        if len(tokens) >= 15 and sum(bool(plain.match(t)) for t in tokens) >= 0.7 * len(tokens):
            prose += 1
    assert prose >= 0.9 * len(docs)
    # no doctest paragraphs, no reST underlines, whitespace normalised inside paragraphs
    for doc in docs:
        for paragraph in doc.split("\n\n"):
            assert paragraph and "\n" not in paragraph
            assert paragraph == " ".join(paragraph.split())
            assert not paragraph.startswith((">>>", "... ")), paragraph[:80]
            assert not re.fullmatch(r"([=\-~*^])\1{2,}", paragraph)
    assert sum(">>>" in doc for doc in docs) <= 0.01 * len(docs)
    # both kinds of source are there: language-reference topics and docstrings
    assert any("expression" in doc and "evaluat" in doc for doc in docs)
    assert any(doc.startswith("Return") for doc in docs)


def test_python_docs_deterministic_and_independent_of_listing_order(docs, monkeypatch):
    real_walk = os.walk

    def reversed_walk(top, *args, **kwargs):
        for dirpath, dirnames, filenames in real_walk(top, *args, **kwargs):
            dirnames.reverse()  # in place, so the pruning in data still applies
            yield dirpath, dirnames, filenames[::-1]

    monkeypatch.setattr(python_docs.os, "walk", reversed_walk)
    again = python_docs_documents(cache=False)
    assert again == docs


def test_clean_drops_code_and_keeps_paragraphs():
    text = """Summary line of the function.

        More explanation that wraps
        over    two lines.

        >>> f(1)
        2

            x = compute(y)
            return x + 1
        """
    cleaned, share = python_docs._clean_docstring(text)
    assert cleaned == (
        "Summary line of the function.\n\nMore explanation that wraps over two lines."
    )
    assert 0 < share < 1


# ------------------------------------------------------------------------------------------
# sources and corpus files
# ------------------------------------------------------------------------------------------


def test_text_source_splits_on_two_blank_lines(tmp_path):
    first = tmp_path / "a.txt"
    first.write_text("one para\n\nsame doc\n\n\nsecond doc\n \n\t\n\n  third doc  \n")
    second = tmp_path / "b.txt"
    second.write_text("whole file\nno breaks\n\nat all")
    corpus = CorpusConfig(source="text", paths=[str(first), str(second)])
    assert list(iter_documents(corpus)) == [
        "one para\n\nsame doc",
        "second doc",
        "third doc",
        "whole file\nno breaks\n\nat all",
    ]
    assert split_text_documents("\n\n\n") == []


def test_missing_local_file_is_named(tmp_path):
    missing = tmp_path / "nope.jsonl"
    for source in ("text", "jsonl"):
        with pytest.raises(CorpusError, match=re.escape(str(missing))):
            iter_documents(CorpusConfig(source=source, paths=[str(missing)]))


def test_jsonl_source_and_missing_field(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"body": "first"}\n\n{"body": "sec\\nond", "x": 1}\n')
    corpus = CorpusConfig(source="jsonl", paths=[str(good)], text_field="body")
    assert list(iter_documents(corpus)) == ["first", "sec\nond"]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    docs = iter_documents(CorpusConfig(source="jsonl", paths=[str(bad)]))
    with pytest.raises(CorpusError) as err:
        list(docs)
    message = str(err.value)
    assert str(bad) in message and "line 2" in message and "'text'" in message
    assert "txt" in message  # the fields it does have


def test_unknown_source():
    with pytest.raises(CorpusError, match="allowed"):
        iter_documents(CorpusConfig(source="web"))


def test_hf_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    corpus = CorpusConfig(source="hf", dataset="Skylion007/openwebtext")
    start = time.monotonic()
    with pytest.raises(CorpusError) as err:
        iter_documents(corpus)
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "Skylion007/openwebtext" in message and "offline" in message
    assert "python-docs" in message and "jsonl" in message


def test_hf_unreachable_hub_fails_fast(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # RFC 2606: never resolves
    start = time.monotonic()
    with pytest.raises(CorpusError, match="cannot be reached offline"):
        iter_documents(CorpusConfig(source="hf", dataset="some/dataset"))
    assert time.monotonic() - start < 15


def test_documents_roundtrip(tmp_path):
    docs = ["plain", 'quotes " and \\ slashes', "new\nlines\n\n", "ünïcode ✓", ""]
    path = tmp_path / "sub" / "corpus.jsonl"
    assert write_documents(docs, path) == len(docs)
    assert read_documents(path) == docs
    assert all(json.loads(line).keys() == {"text"} for line in path.read_text().splitlines())
    assert not Path(f"{path}.tmp").exists()


def test_write_documents_is_atomic(tmp_path):
    path = tmp_path / "corpus.jsonl"

    def docs():
        yield "first"
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_documents(docs(), path)
    assert not path.exists() and list(tmp_path.iterdir()) == []


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


# ------------------------------------------------------------------------------------------
# token store
# ------------------------------------------------------------------------------------------


@pytest.fixture
def small_corpus(words) -> TokenizedCorpus:
    texts = [" ".join("abcdefghij"[i % 7 :]) for i in range(40)]
    return tokenize_documents(texts, words, 16, 12, "per_context", 5, progress=False)


def test_save_load_roundtrip(small_corpus, tmp_path):
    path = tmp_path / "tokens.zarr"
    save_tokens(small_corpus, path, {"bos": "per_context", "seed": 5, "tokenizer": "words"})
    assert not Path(f"{path}.tmp").exists()
    store = load_tokens(path)
    assert np.array_equal(store.corpus.tokens, small_corpus.tokens)
    assert store.corpus.tokens.dtype == np.int32
    assert np.array_equal(store.corpus.special_mask, small_corpus.special_mask)
    assert store.corpus.fingerprint == small_corpus.fingerprint
    attrs = store.attrs
    assert attrs["tokenizer"] == "words" and attrs["bos"] == "per_context"
    assert (attrs["seed"], attrs["context_len"], attrs["n_contexts"]) == (5, 16, 12)
    assert attrs["n_tokens"] == 192 and attrs["fingerprint"] == small_corpus.fingerprint
    # overwriting an existing store works
    save_tokens(small_corpus, path, {"bos": "per_context", "seed": 5})
    assert "tokenizer" not in load_tokens(path).attrs


def test_save_refuses_wrong_settings(small_corpus, tmp_path):
    path = tmp_path / "tokens.zarr"
    with pytest.raises(ValueError, match="fingerprint"):
        save_tokens(small_corpus, path, {"bos": "per_context", "seed": 6})
    with pytest.raises(ValueError, match="seed"):
        save_tokens(small_corpus, path, {"bos": "per_context"})
    assert not path.exists()


def test_interrupted_save_leaves_no_store(small_corpus, tmp_path, monkeypatch):
    import zarr

    real = zarr.Group.create_array
    calls = []

    def failing(self, name, **kwargs):
        calls.append(name)
        if len(calls) == 2:  # tokens written, then the job dies
            raise KeyboardInterrupt
        return real(self, name, **kwargs)

    attrs = {"bos": "per_context", "seed": 5}
    path = tmp_path / "tokens.zarr"
    monkeypatch.setattr(zarr.Group, "create_array", failing)
    with pytest.raises(KeyboardInterrupt):
        save_tokens(small_corpus, path, attrs)
    assert calls == ["tokens", "special_mask"]
    assert not path.exists() and not Path(f"{path}.tmp").exists()

    # an older complete store survives a failed rewrite
    monkeypatch.setattr(zarr.Group, "create_array", real)
    save_tokens(small_corpus, path, {**attrs, "version": "old"})
    calls.clear()
    monkeypatch.setattr(zarr.Group, "create_array", failing)
    with pytest.raises(KeyboardInterrupt):
        save_tokens(small_corpus, path, {**attrs, "version": "new"})
    assert load_tokens(path).attrs["version"] == "old"


def test_load_missing_names_rule(tmp_path):
    path = tmp_path / "nothing.zarr"
    with pytest.raises(FileNotFoundError) as err:
        load_tokens(path)
    assert isinstance(err.value, TokensNotFoundError)
    assert str(path) in str(err.value) and "tokenize_corpus" in str(err.value)


def test_load_detects_corruption(small_corpus, tmp_path):
    import zarr

    path = tmp_path / "tokens.zarr"
    save_tokens(small_corpus, path, {"bos": "per_context", "seed": 5})
    zarr.open_group(str(path), mode="r+")["tokens"][0, 1] = 7
    with pytest.raises(CorpusError, match="corrupt"):
        load_tokens(path)
    assert load_tokens(path, verify=False).corpus.tokens[0, 1] == 7


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_token_chunk_names_array_chunk_and_command(small_corpus, tmp_path, damage):
    from saelab.cache import CorruptChunkError

    path = tmp_path / "tokens.zarr"
    save_tokens(small_corpus, path, {"bos": "per_context", "seed": 5})
    chunk = path / "special_mask" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[:-3]
    chunk.write_bytes(bytes(data))
    with pytest.raises(CorruptChunkError) as err:
        load_tokens(path)
    message = str(err.value)
    assert "chunk 0 of array 'special_mask'" in message and str(chunk) in message
    assert f"snakemake --cores all --force {path}" in message
