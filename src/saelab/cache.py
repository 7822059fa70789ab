"""The zarr activation cache: one forward pass writes every requested hook; readers need no model.

Layout of one cache (a zarr v3 group, ``data/cache/{model}/{cache}.zarr``)::

    {hook name}      float16/32 [n_tokens, width]   one row per token, row = context * ctx + pos
    tokens           int32      [n_tokens]
    special_mask     bool       [n_tokens]          True on BOS/EOS/PAD
    attrs["saelab"]  the manifest (model, hooks, widths, dtype, context length, corpus
                     fingerprint, seed, saelab version, ...)

Arrays are chunked along token rows, one chunk per forward batch, and every chunk ends in a
crc32c checksum (zarr v3's ``crc32c`` codec): a chunk whose bytes were flipped or cut short is
never read as numbers, :class:`CheckedArray` turns it into a :class:`CorruptChunkError` naming
the array, the chunk and the command that rebuilds the cache. The cache is built in
``{path}.partial`` with its progress in ``progress.json`` (replaced atomically after each batch),
so a killed job resumes from its last complete batch, and is renamed to ``{path}`` only when
complete: a path that exists is a complete cache.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import zarr
from tqdm.auto import tqdm
from zarr.codecs import Crc32cCodec

from saelab.hooks import deepest_layer, parse_hook

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
    return any(isinstance(codec, Crc32cCodec) for codec in array.metadata.codecs)


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

    def __getitem__(self, selection):
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

    def __getitem__(self, name: str):
        item = self._group[name]
        if isinstance(item, zarr.Array):
            return CheckedArray(item, self._store, name, self._rebuild)
        return item

    def verify(self, names: list[str] | None = None) -> None:
        """Read every chunk of ``names`` (every array by default); raise on the first bad one."""
        for name in names if names is not None else [n for n, _ in self._group.arrays()]:
            bad = self[name].find_bad_chunk()
            if bad is not None:
                raise bad


# ---------------------------------------------------------------------------------------------
# Activation sources: a callable tokens [B, T] -> {hook: [B, T, width]} that stops the forward
# as early as the hooks allow.
# ---------------------------------------------------------------------------------------------


class _StopForward(Exception):
    """Raised inside a forward hook once every requested activation is captured."""


class TLActivationSource:
    """Hook activations from a TransformerLens ``HookedTransformer`` (any architecture TL has)."""

    backend = "transformer_lens"

    def __init__(self, model, hooks: list[str]):
        for hook in hooks:
            if hook not in model.hook_dict:
                raise CacheError(
                    f"hook {hook!r} does not exist in this model; available sites of block 0: "
                    f"{sorted(h for h in model.hook_dict if h.startswith('blocks.0.'))}"
                )
        self.model = model
        self.hooks = list(hooks)
        self.stop_at_layer = deepest_layer(hooks) + 1

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}

        def save(activation, hook):
            captured[hook.name] = activation.flatten(2) if activation.ndim == 4 else activation

        self.model.run_with_hooks(
            tokens,
            fwd_hooks=[(name, save) for name in self.hooks],
            stop_at_layer=self.stop_at_layer,
            return_type=None,
        )
        return captured


# Where each TransformerLens site lives in a Hugging Face decoder layer, per model family:
# (submodule path inside the layer, "input" or "output" of that module).
_HF_SITES: dict[str, dict[str, tuple[str, str]]] = {
    # Gemma 2/3: sandwich norms; TL's hook_attn_out is after post_attention_layernorm.
    "gemma_sandwich": {
        "hook_resid_pre": ("", "input"),
        "hook_attn_out": ("post_attention_layernorm", "output"),
        "hook_resid_mid": ("pre_feedforward_layernorm", "input"),
        "hook_mlp_out": ("post_feedforward_layernorm", "output"),
        "hook_resid_post": ("", "output"),
        "attn.hook_z": ("self_attn.o_proj", "input"),
    },
    # Llama, Mistral, Qwen2, Gemma 1: pre-norm; post_attention_layernorm is the MLP's input norm.
    "llama": {
        "hook_resid_pre": ("", "input"),
        "hook_attn_out": ("self_attn", "output"),
        "hook_resid_mid": ("post_attention_layernorm", "input"),
        "hook_mlp_out": ("mlp", "output"),
        "hook_resid_post": ("", "output"),
        "attn.hook_z": ("self_attn.o_proj", "input"),
    },
    "gpt2": {
        "hook_resid_pre": ("", "input"),
        "hook_attn_out": ("attn", "output"),
        "hook_resid_mid": ("ln_2", "input"),
        "hook_mlp_out": ("mlp", "output"),
        "hook_resid_post": ("", "output"),
        "attn.hook_z": ("attn.c_proj", "input"),
    },
}
_HF_FAMILY = {
    "gemma2": "gemma_sandwich",
    "gemma3": "gemma_sandwich",
    "gemma3_text": "gemma_sandwich",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "gemma": "llama",
    "gpt2": "gpt2",
}


def hf_supports(hf_config, hooks: list[str]) -> bool:
    """Whether :class:`HFActivationSource` can capture every hook for this HF model type."""
    family = _HF_FAMILY.get(getattr(hf_config, "model_type", ""))
    return family is not None and all(parse_hook(h).site in _HF_SITES[family] for h in hooks)


def _hf_base_and_layers(hf_model):
    """The base model (no LM head) and its list of decoder layers."""
    base = getattr(hf_model, "model", None) or getattr(hf_model, "transformer", None) or hf_model
    layers = getattr(base, "layers", None) or getattr(base, "h", None)
    if layers is None:
        raise CacheError(f"cannot find the decoder layers of {type(hf_model).__name__}")
    return base, layers


def _first_tensor(value):
    return value[0] if isinstance(value, (tuple, list)) else value


class HFActivationSource:
    """Hook activations from a plain ``transformers`` model, named by TransformerLens hooks.

    This is the fast path: transformers' fused attention runs faster on CPU than TL's einsums,
    and the forward stops (by an exception from a hook) right after the deepest site needed,
    so neither later layers nor the unembedding are computed. Values equal TL's hooks on the
    same unprocessed weights (checked in the tests).
    """

    backend = "transformers"

    def __init__(self, hf_model, hooks: list[str]):
        model_type = getattr(hf_model.config, "model_type", "")
        if not hf_supports(hf_model.config, hooks):
            raise CacheError(
                f"the transformers backend cannot capture {hooks} for model type {model_type!r}; "
                "use the transformer_lens backend"
            )
        self.hf_model = hf_model
        self.hooks = list(hooks)
        self.base, self.layers = _hf_base_and_layers(hf_model)
        self.sites = _HF_SITES[_HF_FAMILY[model_type]]
        last = deepest_layer(hooks)
        # Stop before the last layer runs if it only contributes its input.
        last_sites = {parse_hook(h).site for h in hooks if parse_hook(h).layer == last}
        self._stop_before_last = last_sites == {"hook_resid_pre"}
        self._last = last

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}

        def capture_input(name):
            def hook(module, args, kwargs):
                # Decoder layers get hidden states as a keyword in recent transformers.
                captured[name] = args[0] if args else kwargs["hidden_states"]

            return hook

        def capture_output(name):
            def hook(module, args, kwargs, output):
                captured[name] = _first_tensor(output)

            return hook

        def stop(*_):
            raise _StopForward

        handles = []
        try:
            for hook_name in self.hooks:
                site = parse_hook(hook_name)
                path, where = self.sites[site.site]
                module = self.layers[site.layer]
                module = module.get_submodule(path) if path else module
                if where == "input":
                    handle = module.register_forward_pre_hook(
                        capture_input(hook_name), with_kwargs=True
                    )
                else:
                    handle = module.register_forward_hook(
                        capture_output(hook_name), with_kwargs=True
                    )
                handles.append(handle)
            last = self.layers[self._last]
            # Registered last, so it runs after the captures on the same module.
            if self._stop_before_last:
                handles.append(last.register_forward_pre_hook(stop))
            else:
                handles.append(last.register_forward_hook(stop))
            try:
                self.base(input_ids=tokens, use_cache=False)
            except _StopForward:
                pass
        finally:
            for handle in handles:
                handle.remove()
        return captured


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


class CacheSummary(NamedTuple):
    """What :func:`build_cache` did."""

    path: Path
    n_tokens: int
    resumed_from_context: int
    seconds: float
    tokens_per_s: float


@dataclass
class _Layout:
    n_contexts: int
    context_len: int
    batch_contexts: int

    @property
    def n_tokens(self) -> int:
        return self.n_contexts * self.context_len

    @property
    def chunk_rows(self) -> int:
        return self.batch_contexts * self.context_len


def _atomic_write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _read_progress(partial: Path) -> dict[str, Any] | None:
    try:
        with open(partial / PROGRESS_FILE) as handle:
            return json.load(handle)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _resume_point(partial: Path, identity: dict[str, Any]) -> int:
    """Contexts already written in ``partial`` for the same job, or 0 (and a clean slate)."""
    progress = _read_progress(partial)
    if progress is not None and progress.get("identity") == identity:
        try:
            zarr.open_group(partial, mode="r")
            return int(progress["contexts_done"])
        except Exception:  # unreadable metadata: start over
            pass
    if partial.exists():
        shutil.rmtree(partial)
    return 0


def build_cache(
    source: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    tokens: np.ndarray,
    special_mask: np.ndarray,
    hooks: list[str],
    out_path: str | Path,
    *,
    dtype: str = "float16",
    batch_contexts: int = 16,
    manifest: dict[str, Any] | None = None,
    device: str = "cpu",
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
    checksum: bool = True,
) -> CacheSummary:
    """Run ``source`` over ``tokens`` [n_contexts, ctx] and write every hook into one zarr group.

    Each hook's width is read from a probe forward on one short context, never assumed.
    ``manifest`` is stored in the group's attributes beside saelab's own fields.
    A job killed mid-way and run again with the same arguments continues from the last complete
    batch and produces bitwise-identical arrays. ``on_batch(contexts_done)`` is called after each
    committed batch (tests use it to kill a run at a known point). ``checksum=False`` leaves out
    the per-chunk crc32c (only the benchmark does, to measure its cost).
    """
    out_path = Path(out_path)
    if out_path.exists():
        raise CacheError(f"{out_path} already exists; delete it to rebuild the cache")
    if tokens.ndim != 2 or tokens.shape != special_mask.shape:
        raise CacheError(
            f"tokens must be [n_contexts, context_len] with a mask of the same shape; got "
            f"{tokens.shape} and {special_mask.shape}"
        )
    if dtype not in ("float16", "float32"):
        raise CacheError(f"dtype {dtype!r} is not allowed; use float16 or float32")
    layout = _Layout(tokens.shape[0], tokens.shape[1], batch_contexts)
    widths = probe_widths(source, tokens, device)
    partial = out_path.with_name(out_path.name + ".partial")
    identity = {
        "hooks": list(hooks),
        "widths": {h: int(widths[h]) for h in hooks},
        "dtype": dtype,
        "batch_contexts": batch_contexts,
        "shape": list(tokens.shape),
        "tokens_sha": _sha256(tokens),
        "manifest": manifest or {},
        "checksum": bool(checksum),
    }
    start_context = _resume_point(partial, identity)
    if start_context == 0:
        _create_group(partial, hooks, widths, layout, dtype, tokens, special_mask, checksum)
        _atomic_write_json(partial / PROGRESS_FILE, {"identity": identity, "contexts_done": 0})
    group = zarr.open_group(partial, mode="r+")
    arrays = {hook: group[hook] for hook in hooks}

    t0 = time.perf_counter()
    bar = tqdm(
        total=layout.n_tokens,
        initial=start_context * layout.context_len,
        unit="tok",
        unit_scale=True,
        desc=f"cache {out_path.name}",
        disable=not progress,
        mininterval=1.0,
    )
    torch_dtype = getattr(torch, dtype)

    def commit(rows: slice, stored: dict[str, np.ndarray], first: int, last: int) -> None:
        # Arrays first, then the progress file: a kill in between re-runs this batch on resume.
        for hook, values in stored.items():
            arrays[hook][rows] = values
        _atomic_write_json(partial / PROGRESS_FILE, {"identity": identity, "contexts_done": last})
        bar.update((last - first) * layout.context_len)
        if on_batch is not None:
            on_batch(last)

    # One writer thread, FIFO: batch i is written while the model runs batch i + 1, which hides
    # the zarr write (10-18% of the time on CPU). At most one batch waits in memory.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-writer") as writer:
        pending = None
        for first in range(start_context, layout.n_contexts, batch_contexts):
            last = min(first + batch_contexts, layout.n_contexts)
            batch = torch.from_numpy(tokens[first:last].astype(np.int64)).to(device)
            acts = source(batch)
            rows = slice(first * layout.context_len, last * layout.context_len)
            stored = {}
            for hook in hooks:
                if hook not in acts:
                    raise CacheError(f"the activation source returned no {hook!r}")
                value = acts[hook].reshape(batch.numel(), -1)
                if value.shape[1] != widths[hook]:
                    raise CacheError(
                        f"{hook}: activations are {value.shape[1]} wide, expected {widths[hook]}"
                    )
                # torch's float16 cast is ~10x faster than numpy's astype, and bit-identical.
                cast = value.to("cpu", torch_dtype)
                if not torch.isfinite(cast).all():
                    raise CacheError(
                        f"{hook}: non-finite activations in contexts {first}..{last - 1} after "
                        f"the cast to {dtype} (float16 overflows above 65504); use dtype: float32"
                    )
                stored[hook] = cast.numpy()
            if pending is not None:
                pending.result()  # re-raises a failed write here, before more work is queued
            pending = writer.submit(commit, rows, stored, first, last)
        if pending is not None:
            pending.result()
    bar.close()
    seconds = time.perf_counter() - t0
    done_tokens = (layout.n_contexts - start_context) * layout.context_len

    group.attrs[MANIFEST_KEY] = {
        **_manifest(hooks, widths, layout, dtype, manifest),
        "checksum": "crc32c" if checksum else None,
    }
    os.remove(partial / PROGRESS_FILE)
    os.replace(partial, out_path)
    return CacheSummary(
        out_path, layout.n_tokens, start_context, seconds, done_tokens / max(seconds, 1e-9)
    )


def probe_widths(source, tokens: np.ndarray, device: str = "cpu") -> dict[str, int]:
    """Width of every hook, from a forward on the first few tokens of the first context."""
    probe = torch.from_numpy(tokens[:1, : min(4, tokens.shape[1])].astype(np.int64)).to(device)
    return {hook: int(value[0, 0].numel()) for hook, value in source(probe).items()}


def activation_source(
    info,
    model_dir,
    hooks: list[str],
    device: str,
    backend: str = "auto",
    dtype: torch.dtype = torch.float32,
):
    """The fastest source that can capture ``hooks`` for this model, its forward in ``dtype``
    (saelab.precision; the cache's on-disk dtype is separate).

    ``auto`` uses transformers when the model has HF weights and its family is mapped (gemma,
    llama-like, gpt2), else TransformerLens; ``transformers`` / ``transformer_lens`` force one.
    """
    from saelab.models import load_hf_model, load_model

    if backend not in ("auto", "transformers", "transformer_lens"):
        raise CacheError(
            f"backend {backend!r} is not allowed; use auto, transformers or transformer_lens"
        )
    if backend != "transformer_lens" and info.source != "tiny":
        hf_model = load_hf_model(info, model_dir, device=device, dtype=dtype)
        if backend == "transformers" or hf_supports(hf_model.config, hooks):
            return HFActivationSource(hf_model.eval(), hooks)
        del hf_model
    if backend == "transformers":
        raise CacheError(
            f"the transformers backend cannot run the {info.source} model {info.model_id}"
        )
    return TLActivationSource(load_model(info, model_dir, device=device, dtype=dtype).eval(), hooks)


def _sha256(array: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _create_group(partial, hooks, widths, layout: _Layout, dtype, tokens, special_mask, checksum):
    group = zarr.open_group(partial, mode="w", zarr_format=3)
    rows = layout.chunk_rows
    for hook in hooks:
        # Uncompressed: zstd saves ~8% on activations and costs 3x in write and read speed.
        # The crc32c appends 4 bytes per chunk (benchmarks/cache_throughput.py measures it).
        group.create_array(
            hook,
            shape=(layout.n_tokens, int(widths[hook])),
            chunks=(rows, int(widths[hook])),
            dtype=dtype,
            compressors=checksum_codecs() if checksum else None,
            fill_value=0,
        )
    extra = {"compressors": checksum_codecs()} if checksum else {}
    group.create_array("tokens", data=tokens.reshape(-1).astype(np.int32), chunks=(rows,), **extra)
    group.create_array(
        "special_mask", data=special_mask.reshape(-1).astype(bool), chunks=(rows,), **extra
    )


def _manifest(hooks, widths, layout: _Layout, dtype, extra) -> dict[str, Any]:
    from saelab import __version__

    return {
        **(extra or {}),
        "hooks": list(hooks),
        "widths": {h: int(widths[h]) for h in hooks},
        "dtype": dtype,
        "context_len": layout.context_len,
        "n_contexts": layout.n_contexts,
        "n_tokens": layout.n_tokens,
        "chunk_rows": layout.chunk_rows,
        "saelab_version": __version__,
        "torch_version": torch.__version__,
        "completed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def open_cache(path: str | Path) -> CheckedGroup:
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


def cache_manifest(path: str | Path) -> dict[str, Any]:
    return dict(open_cache(path).attrs[MANIFEST_KEY])


def heldout_split(n_contexts: int, heldout_fraction: float) -> int:
    """Training contexts of ``n_contexts``: the last ``max(1, round(n * heldout_fraction))``
    are held out (the cache's reader and the streaming source split alike)."""
    n_heldout = max(1, round(n_contexts * heldout_fraction))
    if n_heldout >= n_contexts:
        raise CacheError(f"only {n_contexts} contexts: too few to hold out any")
    return n_contexts - n_heldout


class ActivationReader:
    """Shuffled batches of cached activations with bounded memory, without the model or corpus.

    Rows are split by context: the last ``heldout_fraction`` of contexts form the ``heldout``
    split, the rest ``train``. Shuffling mixes ``buffer_chunks`` randomly chosen chunks (each
    holding many sequences) and permutes their rows, so a batch draws tokens from many
    sequences while at most ``buffer_chunks`` chunks are in memory. Several hooks (e.g. a
    transcoder's source and target) are read with the same row permutation.
    """

    def __init__(
        self,
        path: str | Path,
        hooks: str | list[str],
        batch_size: int,
        *,
        split: str = "train",
        heldout_fraction: float = 0.05,
        shuffle: bool = True,
        seed: int = 0,
        buffer_chunks: int = 8,
        exclude_special: bool = True,
        drop_last: bool = True,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
    ):
        self.group = open_cache(path)
        self.manifest = dict(self.group.attrs[MANIFEST_KEY])
        self.single = isinstance(hooks, str)
        self.hooks = [hooks] if self.single else list(hooks)
        for hook in self.hooks:
            if hook not in self.manifest["hooks"]:
                raise CacheError(
                    f"hook {hook!r} is not in the cache {path}; it holds {self.manifest['hooks']}"
                )
        if split not in ("train", "heldout", "all"):
            raise ValueError(f"split {split!r} is not allowed; use 'train', 'heldout' or 'all'")
        if not 0 < heldout_fraction < 1:
            raise ValueError(f"heldout_fraction {heldout_fraction} must be in (0, 1)")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.buffer_chunks = buffer_chunks
        self.exclude_special = exclude_special
        self.drop_last = drop_last
        self.dtype = dtype
        self.device = device
        self.epoch = 0

        ctx = self.manifest["context_len"]
        n_ctx = self.manifest["n_contexts"]
        n_train = heldout_split(n_ctx, heldout_fraction)
        bounds = {"train": (0, n_train), "heldout": (n_train, n_ctx)}
        bounds["all"] = (0, n_ctx)
        first, last = bounds[split]
        self.row_range = (first * ctx, last * ctx)
        chunk = self.manifest["chunk_rows"]
        starts = range(self.row_range[0] - self.row_range[0] % chunk, self.row_range[1], chunk)
        self._blocks = [
            (max(s, self.row_range[0]), min(s + chunk, self.row_range[1])) for s in starts
        ]
        self._special = self.group["special_mask"]

    @property
    def widths(self) -> dict[str, int]:
        return {h: int(self.manifest["widths"][h]) for h in self.hooks}

    @property
    def n_rows(self) -> int:
        """Rows in this split (before excluding special tokens)."""
        return self.row_range[1] - self.row_range[0]

    def _read_block(self, start: int, stop: int) -> tuple[list[np.ndarray], np.ndarray]:
        rows = np.arange(start, stop)
        if self.exclude_special:
            keep = ~self._special[start:stop]
            rows = rows[keep]
            values = [self.group[h][start:stop][keep] for h in self.hooks]
        else:
            values = [self.group[h][start:stop] for h in self.hooks]
        return values, rows

    def _to_torch(self, values: list[np.ndarray]):
        tensors = [torch.from_numpy(v).to(self.device, self.dtype) for v in values]
        return tensors[0] if self.single else tuple(tensors)

    def batches(self, with_rows: bool = False) -> Iterator:
        """One pass over the split. Yields a tensor (one hook) or a tuple (several hooks);
        with ``with_rows`` also the global row indices (``row // context_len`` is the context)."""
        # Each call is a new epoch with its own permutation, even if the last was not finished.
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = rng.permutation(len(self._blocks)) if self.shuffle else range(len(self._blocks))
        order = list(order)
        carry: list[np.ndarray] | None = None
        carry_rows = np.empty(0, dtype=np.int64)
        for group_start in range(0, len(order), self.buffer_chunks):
            parts = [
                self._read_block(*self._blocks[i])
                for i in order[group_start : group_start + self.buffer_chunks]
            ]
            values = [np.concatenate([p[0][j] for p in parts]) for j in range(len(self.hooks))]
            rows = np.concatenate([p[1] for p in parts])
            if carry is not None:
                values = [np.concatenate([c, v]) for c, v in zip(carry, values, strict=True)]
                rows = np.concatenate([carry_rows, rows])
            if self.shuffle:
                perm = rng.permutation(len(rows))
                values = [v[perm] for v in values]
                rows = rows[perm]
            n_full = len(rows) // self.batch_size * self.batch_size
            for b in range(0, n_full, self.batch_size):
                batch = self._to_torch([v[b : b + self.batch_size] for v in values])
                yield (batch, rows[b : b + self.batch_size]) if with_rows else batch
            carry = [v[n_full:] for v in values]
            carry_rows = rows[n_full:]
        if carry is not None and len(carry_rows) and not self.drop_last:
            batch = self._to_torch(carry)
            yield (batch, carry_rows) if with_rows else batch

    def __iter__(self) -> Iterator:
        return self.batches()

    def forever(self) -> Iterator:
        """Endless batches, reshuffled every epoch."""
        while True:
            yield from self.batches()

    def read_all(self, max_rows: int | None = None):
        """The split's rows in order (special tokens excluded if configured), as float tensors."""
        values: list[list[np.ndarray]] = [[] for _ in self.hooks]
        total = 0
        for start, stop in self._blocks:
            block, rows = self._read_block(start, stop)
            for j, v in enumerate(block):
                values[j].append(v)
            total += len(rows)
            if max_rows is not None and total >= max_rows:
                break
        joined = [np.concatenate(v)[:max_rows] for v in values]
        return self._to_torch(joined)
