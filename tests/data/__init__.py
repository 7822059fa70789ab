"""Tests moved from tests/test_data.py. Its notes:

Tests of saelab.data: corpora, tokenisation into contexts, and the token store."""
