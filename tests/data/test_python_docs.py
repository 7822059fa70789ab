"""Tests of ``saelab.data.python_docs``, moved from tests/test_data.py.

Notes shared with the other tests moved from tests/test_data.py: ``tests/data/__init__.py``."""

from __future__ import annotations

import os
import re

from saelab.data import (
    python_docs,
    python_docs_documents,
)

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
