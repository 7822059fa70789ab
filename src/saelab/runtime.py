"""Small helpers for running a pipeline stage: logging to a file, atomic outputs (folders, text,
strict JSON, npz)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def logged(log_path: str | os.PathLike | None) -> Iterator[logging.Logger]:
    """Send stdout, stderr (tqdm bars) and ``logging`` to ``log_path`` for the duration.

    An exception is written to the log with its traceback and re-raised, so a failed job's
    log says why it failed.
    """
    logger = logging.getLogger("saelab")
    if log_path is None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        yield logger
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", buffering=1) as handle:
        handler = logging.StreamHandler(handle)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
            try:
                yield logger
            except BaseException:
                traceback.print_exc(file=handle)
                raise
            finally:
                root.removeHandler(handler)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``final`` only if the block succeeds.

    A killed or failed job leaves no ``final``, so nothing half-written looks complete.
    """
    final = Path(final)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        # Snakemake may pre-create an output's parent; an empty leftover is safe to replace.
        if final.is_dir() and not any(final.iterdir()):
            final.rmdir()
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"{final} already exists; delete it to rebuild")
    os.replace(tmp, final)


def configure_torch(threads: int | None, *, reuse_memory: bool = True) -> bool:
    """Set a job up for torch: its thread allowance for the intra-op pool and (``reuse_memory``)
    a heap that keeps freed blocks for the next step (:func:`reuse_freed_memory`). Returns
    whether the heap keeps them."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    return reuse_freed_memory() if reuse_memory else False


def heap_summary(reused: bool) -> str:
    """One line for a log or benchmark: which heap behaviour the process runs with."""
    if reused:
        return (
            "heap: freed memory kept for reuse (saelab's jobs; saelab.runtime.reuse_freed_memory)"
        )
    return "heap: the C library's default (large blocks mapped and unmapped on every use)"


#: mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory in the heap, so that the next tensor of the same size reuses
    pages already mapped: True if it applied (False off glibc).

    Why: glibc serves blocks above 32 MiB with a fresh ``mmap`` and unmaps them on ``free``, so
    every large temporary (an SAE step's [B, F] pre-activations and [B, G, d] gradients, a
    [block, vocab] logits buffer) page-faults its memory in again, 4 KiB at a time, each page
    zeroed by the kernel. On 2 CPU cores that was half of Matryoshka's loss and backward time
    (``benchmarks/train_throughput.py``). The price: the heap does not shrink back after a peak,
    which a batch job does not need."""
    import ctypes
    import platform

    if platform.system() != "Linux":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    no_mmap = mallopt(_M_MMAP_MAX, 0)
    no_trim = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    return bool(no_mmap and no_trim)


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to a temporary sibling, then rename it: no half-written file survives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def to_jsonable(value: Any) -> Any:
    """Plain JSON types: arrays, tensors and numpy scalars to lists and numbers, NamedTuples to
    dicts, paths to strings, NaN and inf to None."""
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return to_jsonable(value._asdict())  # pyright: ignore[reportAttributeAccessIssue]
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return to_jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json_atomic(
    data: Any, path: str | os.PathLike, *, indent: int | None = 2, sort_keys: bool = False
) -> Path:
    """Strict JSON of :func:`to_jsonable` ``data``, written atomically (:func:`write_text_atomic`).
    ``indent=None`` writes compact JSON, for files of many numbers."""
    separators = (",", ":") if indent is None else None
    text = json.dumps(
        to_jsonable(data), indent=indent, separators=separators, sort_keys=sort_keys,
        allow_nan=False,
    )  # fmt: skip
    return write_text_atomic(text + "\n", path)


def load_npz(path: str | os.PathLike, required: tuple[str, ...], what: str, rule: str) -> dict:
    """Every array of an ``.npz`` that rule ``rule`` writes; a missing file, or one without the
    ``required`` arrays, fails with an error naming ``what`` it should be and the rule."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path} (the Snakemake rule `{rule}` makes it)")
    with np.load(path, allow_pickle=False) as data:
        missing = [name for name in required if name not in data]
        if missing:
            raise ValueError(f"{path} is not a {what} file: it lacks {missing}")
        return {name: data[name] for name in data.files}


#: Zip member timestamp of :func:`savez_atomic` (the zip format's earliest date): numpy stamps
#: each array with the current time, so two identical saves would differ in their bytes.
NPZ_DATE_TIME = (1980, 1, 1, 0, 0, 0)


def savez_atomic(path: str | os.PathLike, arrays: dict) -> Path:
    """What ``np.savez_compressed`` writes (``{name}.npy`` members, deflated), with a fixed
    member timestamp so equal arrays give equal bytes; to a temporary sibling, then renamed."""
    import zipfile

    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with (
            os.fdopen(fd, "wb") as handle,
            zipfile.ZipFile(handle, mode="w", compression=zipfile.ZIP_DEFLATED) as archive,
        ):
            for name, value in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=NPZ_DATE_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(info, mode="w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def dataclass_from_section(cls, section: Mapping[str, Any]):
    """``cls`` built from the keys of a config section (a typed section of :mod:`saelab.sections`
    or its validated dict) named as its fields; other keys of the section are left out."""
    from dataclasses import fields

    return cls(**{f.name: section[f.name] for f in fields(cls)})


def dataclass_from_dict(
    cls, data: Mapping[str, Any], what: str, error: type[Exception] = ValueError
):
    """``cls(**data)``, refusing keys ``cls`` has no field for; the error names them and the
    allowed ones."""
    from dataclasses import fields

    allowed = sorted(f.name for f in fields(cls))
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise error(f"unknown {what} key(s) {unknown}; allowed: {allowed}")
    return cls(**data)
