"""Tests of ``saelab.cache.checked``, moved from tests/test_cache.py.

Notes shared with the other tests moved from tests/test_cache.py: ``tests/cache/__init__.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from saelab.cache import (
    ActivationReader,
    CacheError,
    TLActivationSource,
    build_cache,
    cache_manifest,
    open_cache,
)
from tests.cache.helpers import BATCH, HOOKS, token_contexts


def test_float16_overflow_is_an_error_not_inf(tmp_path):
    tokens, special = token_contexts()

    def huge(batch):  # a residual stream beyond float16's range (65504)
        return {"blocks.0.hook_resid_pre": torch.full((*batch.shape, 8), 1e6)}

    path = tmp_path / "big.zarr"
    with pytest.raises(CacheError, match=r"non-finite activations.*float32"):
        build_cache(huge, tokens, special, ["blocks.0.hook_resid_pre"], path, progress=False)
    assert not path.exists()


# ---------------------------------------------------------------------------------------------
# Chunk checksums: a flipped or truncated chunk file is an error naming array, chunk and command
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def damaged_copy(built, tmp_path):
    """A fresh copy of the built cache, so damaging it leaves the module's cache intact."""
    import shutil

    path = tmp_path / "main.zarr"
    shutil.copytree(built[0], path)
    return path


def _chunk_path(cache, name, index):
    return (
        cache / name / "c" / str(index) / "0"
        if name.startswith("blocks")
        else (cache / name / "c" / str(index))
    )


def test_every_cache_array_carries_a_crc32c(built):
    from zarr.codecs import Crc32cCodec

    group = zarr.open_group(built[0], mode="r")
    for name in [*HOOKS, "tokens", "special_mask"]:
        assert any(isinstance(c, Crc32cCodec) for c in group[name].metadata.codecs), name
    assert cache_manifest(built[0])["checksum"] == "crc32c"


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_chunk_names_array_chunk_and_rebuild_command(damaged_copy, damage):
    from saelab.cache import CorruptChunkError

    hook, index = HOOKS[1], 2  # rows 128..191 with 4 contexts of 16 per chunk
    chunk = _chunk_path(damaged_copy, hook, index)
    data = bytearray(chunk.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x40  # one bit of one float32 in the middle of the chunk
    else:
        data = data[: len(data) // 2]
    chunk.write_bytes(bytes(data))

    reader = ActivationReader(damaged_copy, hook, 32, split="all", shuffle=False)
    with pytest.raises(CorruptChunkError) as info:
        reader.read_all()
    message = str(info.value)
    assert f"chunk {index} of array {hook!r}" in message
    assert "rows 128..191" in message and str(chunk) in message
    assert f"snakemake --cores all --force {damaged_copy}" in message
    assert "reshape" not in message.split("(")[0]
    # Reads that do not touch the bad chunk still work; a read that does fails the same way.
    group = open_cache(damaged_copy)
    np.testing.assert_array_equal(group[hook][:128], zarr.open_group(damaged_copy)[hook][:128])
    with pytest.raises(CorruptChunkError, match=f"chunk {index} of array"):
        group[hook][150:160]
    with pytest.raises(CorruptChunkError, match=f"chunk {index} of array"):
        open_cache(damaged_copy).verify()


def test_a_damaged_token_chunk_in_the_cache_is_named_too(damaged_copy):
    from saelab.cache import CorruptChunkError

    chunk = _chunk_path(damaged_copy, "tokens", 1)
    data = bytearray(chunk.read_bytes())
    data[0] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(CorruptChunkError, match="chunk 1 of array 'tokens'"):
        open_cache(damaged_copy)["tokens"][np.array([70, 3])]


def test_without_checksum_a_flipped_chunk_is_read_silently(model, tmp_path):
    """Why the codec is there: the same damage without it returns wrong numbers."""
    tokens, special = token_contexts()
    path = tmp_path / "plain.zarr"
    build_cache(
        TLActivationSource(model, HOOKS[:1]), tokens, special, HOOKS[:1], path,
        dtype="float32", batch_contexts=BATCH, progress=False, checksum=False,
    )  # fmt: skip
    before = open_cache(path)[HOOKS[0]][:]
    chunk = _chunk_path(path, HOOKS[0], 0)
    data = bytearray(chunk.read_bytes())
    data[3] ^= 0x7F  # the exponent byte of the first float32
    chunk.write_bytes(bytes(data))
    after = open_cache(path)[HOOKS[0]][:]
    assert not np.array_equal(before, after, equal_nan=True)
