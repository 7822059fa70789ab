"""Budgets stated when the DAG is built, before any job runs: the bytes each cache (and each
tokenized corpus) will write, each training group's peak memory, and a stop when the caches
still to be written do not fit the free space under ``data/``.

The figures are computed from the config and the model's shape alone (nothing is loaded):
a cache holds ``contexts x context_len x sum of its hooks' widths x dtype bytes`` plus 5 bytes
per token (ids and the special-token mask); a tokenized corpus 5 bytes per token. A training
group's peak memory is an estimate: every SAE's parameters with their gradients and two Adam
moments (fp32), the largest SAE step's activations, the batch buffer (the cache reader's chunks
or the stream's shuffle pool, each with its permuted copy) and, for ``source: stream``, the
model's weights and one forward's activations.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from saelab.hooks import hook_width

GB = 1e9

#: (d_model, d_mlp, n_heads, d_head, parameters) of the models saelab names, by model id.
MODEL_SHAPES: dict[str, tuple[int, int, int, int, int]] = {
    "gpt2-small": (768, 3072, 12, 64, 124_439_808),
    "gemma-3-270m": (640, 2048, 4, 256, 268_098_176),
    "gemma-2-2b": (2304, 9216, 8, 256, 2_614_341_888),
    "gemma-2-9b": (3584, 14336, 16, 256, 9_241_705_984),
    "pythia-70m": (512, 2048, 8, 64, 70_426_624),
}


class BudgetError(RuntimeError):
    """The caches to be written do not fit the free space, with what to change."""


@dataclass
class ModelShape:
    d_model: int
    d_mlp: int
    n_heads: int
    d_head: int
    n_params: int


def model_shape(info, tiny=None) -> ModelShape | None:
    """The shape of ``info``'s model without loading it: saelab's table, the tiny config, or
    the ``config.json`` of a ``model_path``; ``None`` when none of them knows it."""
    if info.source == "tiny" and tiny is not None:
        d, layers = tiny.d_model, tiny.n_layers
        params = (
            tiny.vocab_size * d * 2 + tiny.n_ctx * d + layers * (4 * d * d + 2 * d * tiny.d_mlp)
        )
        return ModelShape(d, tiny.d_mlp, tiny.n_heads, d // tiny.n_heads, params)
    if info.model_id in MODEL_SHAPES:
        return ModelShape(*MODEL_SHAPES[info.model_id])
    config = Path(info.model_path or "", "config.json")
    if info.model_path and config.is_file():
        hf = json.loads(config.read_text())
        d = hf.get("hidden_size") or hf.get("n_embd")
        heads = hf.get("num_attention_heads") or hf.get("n_head")
        mlp = hf.get("intermediate_size") or hf.get("n_inner") or 4 * d
        layers = hf.get("num_hidden_layers") or hf.get("n_layer")
        vocab = hf.get("vocab_size", 0)
        params = vocab * d + layers * (4 * d * d + 3 * d * mlp)
        return ModelShape(d, mlp, heads, hf.get("head_dim") or d // heads, params)
    return None


def _widths(hooks: list[str], shape: ModelShape) -> dict[str, int]:
    cfg = SimpleNamespace(
        d_model=shape.d_model, d_mlp=shape.d_mlp, n_heads=shape.n_heads, d_head=shape.d_head
    )
    return {hook: hook_width(hook, cfg) for hook in hooks}


def cache_contexts(cfg, name: str) -> tuple[int, int]:
    """(contexts, context length) of cache ``name``: its ``n_tokens`` cut of its corpus."""
    cache = cfg.caches[name]
    corpus = cfg.corpora[cache.corpus]
    n_tokens = corpus.n_tokens if cache.n_tokens is None else min(cache.n_tokens, corpus.n_tokens)
    return n_tokens // corpus.context_len, corpus.context_len


def cache_bytes(cfg, name: str, shape: ModelShape) -> int:
    n_contexts, ctx = cache_contexts(cfg, name)
    cache = cfg.caches[name]
    per_value = 2 if cache.dtype == "float16" else 4
    width = sum(_widths(cache.hooks, shape).values())
    return n_contexts * ctx * (width * per_value + 5)


def group_memory(cfg, runs, shape: ModelShape, precision: str = "float32") -> dict[str, int]:
    """Estimated peak bytes of one training group, by part (see the module docstring)."""
    train = cfg.train_settings(runs[0])
    cache = cfg.caches[runs[0].cache]
    ctx = cfg.corpora[cache.corpus].context_len
    batch = int(train.get("batch_size", 4096))
    hooks = list(dict.fromkeys(h for r in runs for h in (r.hook, r.target_hook) if h))
    widths = _widths(hooks, shape)
    parts = {"saes": 0, "step": 0}
    for run in runs:
        d_in = widths[run.hook]
        d_out = widths[run.target_hook or run.hook]
        params = d_in * run.width + run.width * d_out + run.width + d_out
        parts["saes"] += 4 * 4 * params  # weights, gradients, Adam's two moments
        parts["step"] = max(parts["step"], 4 * 4 * batch * run.width)
    row_bytes = 4 * sum(widths.values())
    if train.get("source", "cache") == "stream":
        pool = max(int(train.get("shuffle_contexts", 64)) * ctx, 2 * batch) + batch
        parts["buffer"] = 2 * pool * row_bytes
        parts["model"] = shape.n_params * (2 if precision == "bfloat16" else 4)
        tokens = cache.batch_contexts * ctx
        parts["forward"] = 4 * tokens * (shape.d_mlp + 6 * shape.d_model) + (
            4 * cache.batch_contexts * shape.n_heads * ctx * ctx
        )
    else:
        parts["buffer"] = (
            2 * int(train.get("buffer_chunks", 8)) * cache.batch_contexts * ctx * row_bytes
        )
    return parts


def free_bytes(path: str | Path) -> int:
    """Free bytes on the filesystem that holds ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass
class Budget:
    lines: list[str]
    to_write: int
    free: int
    caches: dict[str, int]


def plan(cfg, info, data_dir: str | Path = "data", model_id: str | None = None) -> Budget:
    """Every cache's and tokenized corpus' bytes, every training group's peak memory, and the
    bytes still to be written under ``data_dir`` (complete stores count 0, partial ones the
    rest)."""
    shape = model_shape(info, cfg.tiny)
    model_id = model_id or info.model_id
    data_dir = Path(data_dir)
    precision = cfg.raw.get("precision", "auto")
    if shape is None:
        return Budget(
            [f"budget: the shape of {info.model_id} is unknown without loading it; not checked"],
            0, free_bytes(data_dir), {},
        )  # fmt: skip
    lines, to_write, sizes = [], 0, {}
    streamed = {
        runs[0].cache
        for runs in cfg.sae_groups().values()
        if cfg.train_settings(runs[0]).get("source", "cache") == "stream"
    }
    if info.source == "hub" and not info.model_path:  # downloaded into data/models
        size = shape.n_params * 4
        todo = 0 if (data_dir / "models" / model_id).exists() else size
        to_write += todo
        lines.append(
            f"model {model_id}: ~{size / GB:.3g} GB (fp32)" + ("" if todo else " (written)")
        )
    corpora = {cache.corpus for cache in cfg.caches.values()}
    for corpus in sorted(corpora):
        size = cfg.corpora[corpus].n_tokens // cfg.corpora[corpus].context_len
        size *= cfg.corpora[corpus].context_len * 5
        path = data_dir / "tokens" / model_id / f"{corpus}.zarr"
        todo = 0 if path.exists() else size
        to_write += todo
        lines.append(f"tokens {corpus}: {size / GB:.3g} GB" + ("" if todo else " (written)"))
    for name in cfg.caches:
        size = sizes[name] = cache_bytes(cfg, name, shape)
        path = data_dir / "cache" / model_id / f"{name}.zarr"
        partial = path.with_name(path.name + ".partial")
        todo = 0 if path.exists() else size - (_dir_bytes(partial) if partial.exists() else 0)
        to_write += max(todo, 0)
        n_contexts, ctx = cache_contexts(cfg, name)
        note = " (written)" if not todo else ""
        note += "; SAEs of this cache train from a stream" if name in streamed else ""
        lines.append(
            f"cache {name}: {size / GB:.3g} GB ({n_contexts * ctx:,} tokens x "
            f"{len(cfg.caches[name].hooks)} hooks, {cfg.caches[name].dtype}){note}"
        )
    for group, runs in cfg.sae_groups().items():
        parts = group_memory(cfg, runs, shape, "bfloat16" if precision == "bfloat16" else "float32")
        total = sum(parts.values())
        detail = ", ".join(f"{k} {v / GB:.3g}" for k, v in parts.items())
        source = cfg.train_settings(runs[0]).get("source", "cache")
        lines.append(
            f"train {group} ({len(runs)} SAEs, {source}): peak memory ~{total / GB:.3g} GB "
            f"({detail} GB)"
        )
    free = free_bytes(data_dir)
    lines.append(f"to write under {data_dir}/: {to_write / GB:.3g} GB; free: {free / GB:.3g} GB")
    return Budget(lines, to_write, free, sizes)


def check_disk(budget: Budget, data_dir: str | Path = "data") -> None:
    """Raise :class:`BudgetError` when the bytes still to write exceed the free space."""
    if budget.to_write <= budget.free:
        return
    largest = max(budget.caches, key=lambda name: budget.caches[name]) if budget.caches else None
    hint = (
        f" The largest is caches.{largest} ({budget.caches[largest] / GB:.3g} GB): lower "
        f"caches.{largest}.n_tokens (or its hooks, or dtype: float16), or set training.source: "
        f"stream so the SAEs train straight from the model and the cache only needs the tokens "
        f"the evaluations and analyses read."
        if largest
        else ""
    )
    raise BudgetError(
        f"the caches and corpora still to be written need {budget.to_write / GB:.3g} GB "
        f"({budget.to_write:,} bytes) but {Path(data_dir).absolute()} has {budget.free / GB:.3g} "
        f"GB free.{hint} (budget.check_disk: false skips this check.)"
    )


def group_mem_mb(cfg, runs, info, floor: int = 8000) -> int:
    """The training rule's ``mem_mb``: 1.5 x the estimated peak, at least ``floor``."""
    shape = model_shape(info, cfg.tiny)
    if shape is None:
        return floor
    precision = "bfloat16" if cfg.raw.get("precision") == "bfloat16" else "float32"
    peak = sum(group_memory(cfg, runs, shape, precision).values())
    return max(floor, int(1.5 * peak / 1e6))


def describe(budget: Budget) -> str:
    return "\n".join(f"saelab budget: {line}" for line in budget.lines)
