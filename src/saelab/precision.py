"""Numeric precision: what the host can do natively, and which dtype a run uses.

``precision: auto | float32 | bfloat16`` (config key) decides the dtype of the language model's
forward (cache, CE, trajectories, token loss) and of the SAE step's encoder GEMM (weights and
Adam state stay float32 masters). ``auto`` takes bfloat16 only where the hardware computes it
natively:

* CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere and later);
* x86 CPUs: the ``amx_bf16`` or ``avx512_bf16`` flag in ``/proc/cpuinfo`` (oneDNN's bf16 GEMM
  kernels need one of them; without them torch emulates bf16 and a matmul runs tens to
  hundreds of times slower than in float32);
* ARM CPUs: the ``bf16`` feature flag (BFMMLA / BFDOT);

and float32 everywhere else, including hosts whose flags cannot be read (never assumed).
The decision and the capabilities it was made from are logged and written into every cache
manifest and training metrics file (:meth:`Precision.record`), so each number says which
precision produced it. Caches keep their configured on-disk dtype (float16 / float32).
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("saelab.precision")

#: Allowed values of the ``precision`` setting.
PRECISIONS = ("auto", "float32", "bfloat16")
#: CPU flags (``/proc/cpuinfo``) that mean native bf16 arithmetic.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
#: Flags reported with the capabilities (what the matmul kernels can use).
REPORTED_FLAGS = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "bf16", "i8mm",
)  # fmt: skip
CPUINFO = Path("/proc/cpuinfo")


class PrecisionError(ValueError):
    """A precision setting that is not allowed."""


@dataclass(frozen=True)
class HostCapabilities:
    """What the probe found (also the JSON recorded beside every result)."""

    device: str
    """``cpu`` or ``cuda`` (``mps`` is treated like a host without native bf16)."""
    cpu_model: str
    cpu_flags: tuple[str, ...]
    """The :data:`REPORTED_FLAGS` present; empty when ``/proc/cpuinfo`` is unreadable."""
    flags_known: bool
    """Whether the CPU flags could be read at all."""
    torch_cpu_capability: str
    """``torch.backends.cpu.get_cpu_capability()``: the vector ISA torch's kernels dispatch to."""
    cuda_device: str | None = None
    cuda_bf16: bool = False

    @property
    def native_bf16(self) -> bool:
        if self.device == "cuda":
            return self.cuda_bf16
        if self.device != "cpu":
            return False
        return any(flag in self.cpu_flags for flag in NATIVE_BF16_FLAGS)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "cpu_model": self.cpu_model,
            "cpu_flags": list(self.cpu_flags),
            "flags_known": self.flags_known,
            "torch_cpu_capability": self.torch_cpu_capability,
            "cuda_device": self.cuda_device,
            "cuda_bf16": self.cuda_bf16,
            "native_bf16": self.native_bf16,
            "torch_version": torch.__version__,
        }

    def summary(self) -> str:
        flags = ",".join(self.cpu_flags) if self.flags_known else "unreadable"
        gpu = f", cuda {self.cuda_device} (bf16 {self.cuda_bf16})" if self.cuda_device else ""
        return (
            f"{self.cpu_model}; flags {flags}; torch CPU capability "
            f"{self.torch_cpu_capability}{gpu}; native bf16 on "
            f"{self.device}: {'yes' if self.native_bf16 else 'no'}"
        )


def _read_cpuinfo(path: Path | None = None) -> tuple[str, set[str] | None]:
    """(model name, set of flags) of the first CPU (from :data:`CPUINFO` by default); flags
    None if unreadable."""
    try:
        text = (path or CPUINFO).read_text()
    except OSError:
        return platform.processor() or platform.machine(), None
    model, flags = platform.machine(), None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and model == platform.machine():
            model = value.strip()
        elif key in ("flags", "features") and flags is None:  # x86 "flags", ARM "Features"
            flags = set(value.split())
    return model, flags


@cache
def probe_host(device: str = "cpu") -> HostCapabilities:
    """Capabilities of this host for ``device`` (cached: the hardware does not change)."""
    model, flags = _read_cpuinfo()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old torch
        capability = "unknown"
    cuda_name, cuda_bf16 = None, False
    if device == "cuda" and torch.cuda.is_available():
        cuda_name = torch.cuda.get_device_name()
        cuda_bf16 = bool(torch.cuda.is_bf16_supported())
    return HostCapabilities(
        device=device,
        cpu_model=model,
        cpu_flags=tuple(f for f in REPORTED_FLAGS if flags and f in flags),
        flags_known=flags is not None,
        torch_cpu_capability=capability,
        cuda_device=cuda_name,
        cuda_bf16=cuda_bf16,
    )


@dataclass(frozen=True)
class Precision:
    """The precision a run uses, why, and on what host."""

    requested: str
    dtype_name: str
    """``float32`` or ``bfloat16``."""
    reason: str
    host: HostCapabilities

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype_name)

    @property
    def is_bf16(self) -> bool:
        return self.dtype_name == "bfloat16"

    def record(self) -> dict[str, Any]:
        """The JSON written into manifests and metrics files."""
        return {
            "requested": self.requested,
            "dtype": self.dtype_name,
            "reason": self.reason,
            "host": self.host.to_dict(),
        }

    def log(self, logger: logging.Logger | None = None) -> None:
        (logger or log).info(
            "precision %s (requested %s): %s; host: %s",
            self.dtype_name, self.requested, self.reason, self.host.summary(),
        )  # fmt: skip


def check_precision(requested: str) -> str:
    if requested not in PRECISIONS:
        raise PrecisionError(f"precision {requested!r} is not allowed; use one of {PRECISIONS}")
    return requested


def resolve_precision(
    requested: str = "auto", device: str = "cpu", host: HostCapabilities | None = None
) -> Precision:
    """The dtype for ``requested`` on ``device`` (``host`` defaults to :func:`probe_host`)."""
    check_precision(requested)
    device = str(device).split(":")[0]
    host = host if host is not None else probe_host(device)
    if requested == "float32":
        return Precision(requested, "float32", "float32 requested", host)
    if requested == "bfloat16":
        if host.native_bf16:
            reason = "bfloat16 requested; the host computes it natively"
        else:
            reason = "bfloat16 requested although the host has no native bf16 (slow)"
            log.warning("precision: %s; host: %s", reason, host.summary())
        return Precision(requested, "bfloat16", reason, host)
    if host.native_bf16:
        if device == "cuda":
            why = "CUDA device with bf16"
        else:
            native = [f for f in host.cpu_flags if f in NATIVE_BF16_FLAGS]
            why = f"CPU with native bf16 ({', '.join(native)})"
        return Precision(requested, "bfloat16", f"auto: {why}", host)
    if device == "cpu" and not host.flags_known:
        why = "the CPU flags could not be read, so native bf16 is not assumed"
    elif device == "cpu":
        why = "no amx_bf16 / avx512_bf16 / bf16 flag on this CPU"
    elif device == "cuda":
        why = "the CUDA device has no bf16"
    else:
        why = f"native bf16 is not probed on {device}"
    return Precision(requested, "float32", f"auto: {why}", host)


def model_precision(spec: dict[str, Any], device: str, logger: logging.Logger | None = None):
    """The language model forward's precision for a rule's ``model`` params (their
    ``precision`` key; ``auto`` when absent), logged with the host's capabilities."""
    precision = resolve_precision(spec.get("precision", "auto"), device)
    precision.log(logger)
    return precision
