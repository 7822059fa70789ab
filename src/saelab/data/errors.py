"""Errors of the corpus and token-store stages."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


class CorpusError(ValueError):
    """A corpus that cannot be read or is too small, with what to change."""


class TokensNotFoundError(FileNotFoundError):
    """A token store that does not exist (yet): the rule ``tokenize_corpus`` makes it."""
