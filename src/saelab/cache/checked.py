"""Checksummed cache arrays and opening a complete cache (see :mod:`saelab.cache`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

PROGRESS_FILE = "progress.json"
MANIFEST_KEY = "saelab"


class CacheError(RuntimeError):
    """A cache that is missing, incomplete, or does not hold what was asked for."""


class CorruptChunkError(CacheError):
    """A stored chunk whose checksum does not match its bytes (flipped or truncated)."""


# ---------------------------------------------------------------------------------------------
# Checksummed chunks
# ---------------------------------------------------------------------------------------------


def checksum_codecs() -> list[Crc32cCodec]:
    """The bytes-to-bytes codecs after any compressor: a crc32c of every chunk's stored bytes."""
    return [Crc32cCodec()]


def has_checksum(array: zarr.Array) -> bool:
    """Whether every chunk of ``array`` carries a crc32c (caches from saelab < 0.x do not)."""
    metadata = array.metadata
    # Only zarr v3 arrays have codecs (a crc32c is a v3 codec); saelab writes v3 only.
    return metadata.zarr_format == 3 and any(
        isinstance(codec, Crc32cCodec) for codec in metadata.codecs
    )


def rebuild_command(store: str | Path) -> str:
    """The command that rebuilds a store written by a Snakemake rule (cache or token store)."""
    return f"snakemake --cores all --force {store}"


def _chunk_rows_of(array: zarr.Array, selection) -> list[int]:
    """Indices (along rows) of the chunks a read of ``selection`` touches, or every chunk."""
    n_chunks = -(-array.shape[0] // array.chunks[0])
    first = selection[0] if isinstance(selection, tuple) and selection else selection
    rows = array.chunks[0]
    if isinstance(first, slice):
        start, stop, _ = first.indices(array.shape[0])
        return list(range(start // rows, min(n_chunks, -(-stop // rows))))
    if isinstance(first, (int, np.integer)):
        return [int(first) % array.shape[0] // rows]
    if isinstance(first, np.ndarray) and first.dtype.kind in "iu" and first.size:
        return sorted({int(i) for i in np.unique(first % array.shape[0] // rows)})
    return list(range(n_chunks))


def _chunk_file(store: Path, name: str, array: zarr.Array, index: int) -> Path:
    """Where chunk ``index`` (along rows) of ``store/name`` lives with zarr v3's default keys."""
    rest = ["0"] * (len(array.shape) - 1)
    return (
        store / name / "c" / str(index) / Path(*rest) if rest else store / name / "c" / str(index)
    )


class CheckedArray:
    """A read-only view of a zarr array whose reads name the bad chunk instead of failing
    with a checksum or reshape error deep inside zarr (or, without a checksum, returning junk).

    Everything but item access is delegated to the array (``shape``, ``dtype``, ``chunks``...).
    """

    def __init__(self, array: zarr.Array, store: str | Path, name: str, rebuild: str):
        self._array = array
        self._store = Path(store)
        self._name = name
        self._rebuild = rebuild

    def __getattr__(self, attr):
        return getattr(self._array, attr)

    def __len__(self) -> int:
        return self._array.shape[0]

    def __getitem__(self, selection) -> Any:
        """What zarr returns for ``selection``: an ndarray (a numpy scalar for an integer)."""
        try:
            return self._array[selection]
        except Exception as err:
            bad = self.find_bad_chunk(_chunk_rows_of(self._array, selection))
            if bad is None:
                raise
            raise bad from err

    def find_bad_chunk(self, indices=None) -> CorruptChunkError | None:
        """The error for the first unreadable chunk among ``indices`` (all chunks by default)."""
        array = self._array
        rows = array.chunks[0]
        if indices is None:
            indices = range(-(-array.shape[0] // rows))
        for index in indices:
            try:
                array.blocks[index]
            except Exception as err:
                path = _chunk_file(self._store, self._name, array, index)
                size = path.stat().st_size if path.exists() else None
                what = "does not match its crc32c checksum" if has_checksum(array) else "is bad"
                detail = f"{size} bytes on disk" if size is not None else "file missing"
                last = min(array.shape[0], (index + 1) * rows) - 1
                return CorruptChunkError(
                    f"{self._store}: chunk {index} of array {self._name!r} (rows "
                    f"{index * rows}..{last}, file {path}, {detail}) {what}: its bytes were "
                    f"changed or cut short ({type(err).__name__}: {err}). Rebuild the store: "
                    f"{self._rebuild}"
                )
        return None


class CheckedGroup:
    """A zarr group whose arrays are :class:`CheckedArray`; attributes and membership as zarr's."""

    def __init__(self, group: zarr.Group, store: str | Path, rebuild: str):
        self._group = group
        self._store = Path(store)
        self._rebuild = rebuild

    def __getattr__(self, attr):
        return getattr(self._group, attr)

    def __contains__(self, name) -> bool:
        return name in self._group

    def __getitem__(self, name: str) -> CheckedArray:
        item = self._group[name]
        if not isinstance(item, zarr.Array):
            raise CacheError(
                f"{self._store}: {name!r} is a group, not an array; caches and token stores hold "
                f"arrays only. Rebuild the store: {self._rebuild}"
            )
        return CheckedArray(item, self._store, name, self._rebuild)

    def verify(self, names: list[str] | None = None) -> None:
        """Read every chunk of ``names`` (every array by default); raise on the first bad one."""
        for name in names if names is not None else [n for n, _ in self._group.arrays()]:
            bad = self[name].find_bad_chunk()
            if bad is not None:
                raise bad


def open_cache(path: str | os.PathLike) -> CheckedGroup:
    """Open a complete cache read-only, with a clear error if it is missing or unfinished.

    Its arrays are :class:`CheckedArray`: a chunk that fails its checksum raises a
    :class:`CorruptChunkError` naming the array, the chunk and the command that rebuilds it."""
    path = Path(path)
    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        hint = (
            f" (an unfinished {partial.name} exists: rerun the rule `cache_activations` to resume)"
            if partial.exists()
            else " (the Snakemake rule `cache_activations` makes it)"
        )
        raise CacheError(f"no activation cache at {path}{hint}")
    group = zarr.open_group(path, mode="r")
    if MANIFEST_KEY not in group.attrs:
        raise CacheError(f"{path} has no saelab manifest: it is not a complete saelab cache")
    return CheckedGroup(group, path, rebuild_command(path))


def cache_manifest(path: str | os.PathLike) -> dict[str, Any]:
    return dict(open_cache(path).attrs[MANIFEST_KEY])
