"""Tests moved from tests/test_cache.py. Its notes:

The zarr activation cache: contents, stopping early, resume after a real kill, the reader."""
