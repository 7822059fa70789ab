"""Tests of ``saelab.data.sources``, moved from tests/test_data.py.

Notes shared with the other tests moved from tests/test_data.py: ``tests/data/__init__.py``."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from saelab.config import CorpusConfig
from saelab.data import (
    CorpusError,
    iter_documents,
    read_documents,
    split_text_documents,
    write_documents,
)

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
