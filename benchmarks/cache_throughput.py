"""Activation-caching throughput: saelab's cache against the bounds and the alternatives.

One run, the same tokens for every method (the built-in python-docs corpus, tokenized with the
model's tokenizer into contexts of 128 tokens with BOS per context), gemma-3-270m on CPU:

  saelab-hf     saelab's ``build_cache`` with the transformers backend (``activation_source``
                with ``auto``), every default hook into a temp zarr (float16): writes included
  saelab-tl     the same with the ``transformer_lens`` backend
  saelab-nocrc  saelab-hf without the per-chunk crc32c checksums (``checksum=False``):
                saelab-hf / saelab-nocrc is the checksum's cost inside a real cache build
  saelab-fwd    attribution only: saelab's transformers activation source alone (its hooked,
                early-stopped forward), no writes; saelab-hf / saelab-fwd is the cost of writing
  hf-bare       plain transformers, the base model truncated to the first (deepest hook + 1)
                decoder layers, ``output_hidden_states=True``, no LM head, inference mode:
                the physical bound for caching (caching = this forward + writes)
  tl-rwc        TransformerLens ``run_with_cache(names_filter=hooks, stop_at_layer=...)``
  sae-lens      ``sae_lens.CacheActivationsRunner.run()`` for one hook, with our already-loaded
                HookedTransformer and our tokens (``override_dataset``), written to a temp dir
  hf-logits     reference only: a full HF forward with logits (all layers and the 262k-vocab
                unembedding), on fewer tokens

Each method is warmed up once (on one batch), then the methods are measured round-robin for
``--rounds`` rounds (in a new seeded random order each round, so no method always follows the
same neighbour) and the median tokens/s of each is reported. Only ratios within one run mean anything: other jobs on the machine change the
absolute speeds by 2-4x.

After the rounds, the checksum's cost is also measured on the storage alone (no model): the
activations of the measured tokens written to a zarr group with and without the crc32c codec
and read back (whole chunks, as ``ActivationReader`` reads them), ``--rounds`` alternating
rounds each; it prints the with/without ratio of write and read throughput. ``--checksum-only``
runs just that part (on random float16 activations of the default widths: no model needed).

    python benchmarks/cache_throughput.py [--model-dir data/models/gemma-3-270m]
        [--contexts 64] [--rounds 3] [--json out.json] [--checksum-only]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers/huggingface_hub are imported
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # SAE-Lens/datasets bars; progress is printed here

import argparse
import contextlib
import gc
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO / "data" / "models" / "gemma-3-270m"
DEFAULT_CONFIG = REPO / "config" / "config.yaml"
FALLBACK_HOOKS = [
    "blocks.6.hook_resid_pre",
    "blocks.6.hook_resid_mid",
    "blocks.6.hook_resid_post",
    "blocks.6.hook_mlp_out",
    "blocks.6.hook_attn_out",
    "blocks.6.attn.hook_z",
]

#: Goals on the ratios of median tokens/s: (numerator, denominator, minimum).
GOALS = {
    "saelab-hf / hf-bare": ("saelab-hf", "hf-bare", 1.0),
    "saelab-hf / sae-lens": ("saelab-hf", "sae-lens", 1.5),
    # SAE-Lens caches one hook per pass: per hook-token, saelab's tokens/s counts n_hooks times
    "per hook-token vs sae-lens": ("saelab-hf", "sae-lens", 5.0),
}
#: Goals whose first method's tokens/s is multiplied by the number of hooks cached.
PER_HOOK_GOALS = {"per hook-token vs sae-lens"}
#: Ratios reported without a goal.
INFO_RATIOS = {
    "saelab-hf / tl-rwc": ("saelab-hf", "tl-rwc"),
    "saelab-tl / saelab-hf": ("saelab-tl", "saelab-hf"),
    "saelab-hf / saelab-fwd": ("saelab-hf", "saelab-fwd"),
    "saelab-hf / saelab-nocrc": ("saelab-hf", "saelab-nocrc"),
    "saelab-fwd / hf-bare": ("saelab-fwd", "hf-bare"),
    "tl-rwc / hf-bare": ("tl-rwc", "hf-bare"),
    "hf-logits / hf-bare": ("hf-logits", "hf-bare"),
}

DESCRIPTIONS = {
    "saelab-hf": "saelab build_cache, transformers backend ({n_hooks} hooks, fp16 zarr)",
    "saelab-tl": "saelab build_cache, transformer_lens backend ({n_hooks} hooks, fp16 zarr)",
    "saelab-nocrc": "saelab-hf without the per-chunk crc32c checksums",
    "saelab-fwd": "saelab transformers source only (hooked forward, stops after block {last}), no writes",
    "hf-bare": "plain transformers, {n_layers} layers, output_hidden_states, no writes",
    "tl-rwc": "TransformerLens run_with_cache, stop_at_layer={n_layers}, no writes",
    "sae-lens": "SAE-Lens CacheActivationsRunner.run(), 1 hook ({sl_hook}), fp16",
    "hf-logits": "reference: full HF forward with logits (18 layers + unembed)",
}


def log(message: str) -> None:
    print(message, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=DEFAULT_MODEL_DIR,
        help="prepared gemma-3-270m directory (prepared here if missing)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help="pipeline config to read the default cache hooks from",
    )
    parser.add_argument(
        "--contexts",
        type=int,
        default=64,
        help="contexts of --context-len tokens per measurement (default 64)",
    )
    parser.add_argument("--context-len", type=int, default=128)
    parser.add_argument(
        "--batch-contexts",
        type=int,
        default=None,
        help="contexts per forward (default: the config's, 16)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="measurement rounds (default 3)")
    parser.add_argument(
        "--logits-contexts",
        type=int,
        default=8,
        help="contexts for the full-forward-with-logits reference (default 8)",
    )
    parser.add_argument(
        "--logits-batch",
        type=int,
        default=4,
        help="contexts per full forward (logits are 1 MiB per token; default 4)",
    )
    parser.add_argument("--sae-lens-hook", default="blocks.6.hook_resid_pre")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (2)")
    parser.add_argument("--system-malloc", action="store_true",
                   help="the C library's default heap instead of saelab's jobs' freed-memory reuse")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="corpus shuffle seed")
    parser.add_argument(
        "--tmp-dir",
        type=Path,
        default=None,
        help="where the temp caches go (default: the system temp dir)",
    )
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=list(DESCRIPTIONS), help="methods to leave out"
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "float32", "bfloat16"),
        help="dtype of every model's forward (saelab.precision; auto: this host's native choice)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results as JSON")
    parser.add_argument(
        "--checksum-only",
        action="store_true",
        help="only the storage-level with/without-crc32c write and read measurement",
    )
    args = parser.parse_args(argv)
    if args.contexts < 1 or args.rounds < 1:
        parser.error("--contexts and --rounds must be at least 1")
    return args


def read_cache_config(path: Path) -> tuple[list[str], str, int]:
    """(hooks, dtype, batch_contexts) of the config's first cache, or the built-in defaults."""
    try:
        import yaml

        config = yaml.safe_load(path.read_text())
        cache = next(iter(config["caches"].values()))
        return list(cache["hooks"]), cache.get("dtype", "float16"), cache.get("batch_contexts", 16)
    except Exception as err:  # no config, or a different layout: use the shipped defaults
        log(f"! could not read hooks from {path} ({type(err).__name__}: {err}); using defaults")
        return list(FALLBACK_HOOKS), "float16", 16


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


@dataclass
class Method:
    name: str
    run: Callable[[bool], int]
    """run(warmup) -> tokens processed; the whole call is timed."""
    cleanup: Callable[[], None] = lambda: None
    """Called after each timed call, untimed (e.g. delete the temp cache)."""
    samples: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    tokens: int = 0
    error: str | None = None


def batches(tokens: np.ndarray, size: int) -> Iterator[torch.Tensor]:
    for first in range(0, tokens.shape[0], size):
        yield torch.from_numpy(tokens[first : first + size].astype(np.int64))


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def make_saelab(
    name, source, tokens, special, hooks, dtype, batch_contexts, tmp: Path, checksum: bool = True
) -> Method:
    from saelab.cache import build_cache

    counter = iter(range(10**9))
    state: dict[str, Path] = {}

    def run(warmup: bool) -> int:
        toks = tokens[:batch_contexts] if warmup else tokens
        mask = special[:batch_contexts] if warmup else special
        out = tmp / f"{name}-{next(counter)}.zarr"
        state["out"] = out
        build_cache(
            source,
            toks,
            mask,
            hooks,
            out,
            dtype=dtype,
            batch_contexts=batch_contexts,
            device="cpu",
            progress=False,
            checksum=checksum,
        )
        return toks.size

    def cleanup() -> None:
        if "out" in state:
            shutil.rmtree(state.pop("out"), ignore_errors=True)

    return Method(name, run, cleanup)


def make_source_only(source, tokens, batch_contexts) -> Method:
    def run(warmup: bool) -> int:
        toks = tokens[:batch_contexts] if warmup else tokens
        for batch in batches(toks, batch_contexts):
            source(batch)
        return toks.size

    return Method("saelab-fwd", run)


def load_bare_hf(
    model_dir: Path, n_layers: int, attn_implementation: str | None, dtype=torch.float32
):
    """The HF base model (no LM head) with only its first ``n_layers`` decoder layers."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    from saelab.models import read_manifest

    manifest = read_manifest(model_dir) or {}
    hf_dir = Path(manifest.get("model_path") or model_dir / "hf")
    config = AutoConfig.from_pretrained(hf_dir)
    config.num_hidden_layers = n_layers
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types[:n_layers])
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the skipped layers' weights are "unexpected": expected
    try:
        model = AutoModel.from_pretrained(hf_dir, config=config, dtype=dtype, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.eval()


def make_hf_bare(bare, tokens, batch_contexts) -> Method:
    @torch.inference_mode()
    def run(warmup: bool) -> int:
        toks = tokens[:batch_contexts] if warmup else tokens
        for batch in batches(toks, batch_contexts):
            bare(input_ids=batch, output_hidden_states=True, use_cache=False)
        return toks.size

    return Method("hf-bare", run)


def make_tl_rwc(tl_model, tokens, hooks, stop_at_layer, batch_contexts) -> Method:
    @torch.inference_mode()
    def run(warmup: bool) -> int:
        toks = tokens[:batch_contexts] if warmup else tokens
        for batch in batches(toks, batch_contexts):
            _, cache = tl_model.run_with_cache(
                batch, names_filter=hooks, stop_at_layer=stop_at_layer
            )
            del cache
        return toks.size

    return Method("tl-rwc", run)


def make_hf_logits(hf_model, tokens, n_contexts, batch) -> Method:
    @torch.inference_mode()
    def run(warmup: bool) -> int:
        toks = tokens[: (batch if warmup else n_contexts)]
        for chunk in batches(toks, batch):
            out = hf_model(input_ids=chunk, use_cache=False)
            assert out.logits.shape[-1] == hf_model.config.vocab_size
            del out
        return toks.size

    return Method("hf-logits", run)


def make_sae_lens(tl_model, tokens, hook, d_in, batch_contexts, tmp: Path) -> Method:
    """SAE-Lens's own caching, offline: our HookedTransformer in place of its hub loader."""
    import sae_lens.cache_activations_runner as car
    from datasets import Dataset
    from sae_lens import CacheActivationsRunner, CacheActivationsRunnerConfig

    counter = iter(range(10**9))
    state: dict[str, Any] = {}
    bytes_per_token = d_in * 2  # float16

    def build(toks: np.ndarray):
        n_tokens = int(toks.size)
        out = tmp / f"sae-lens-{next(counter)}"
        cfg = CacheActivationsRunnerConfig(
            dataset_path="saelab/python-docs",  # unused: override_dataset is given
            model_name="google/gemma-3-270m",  # unused: load_model is replaced below
            model_class_name="HookedTransformer",
            hook_name=hook,
            d_in=d_in,
            context_size=toks.shape[1],
            model_batch_size=batch_contexts,
            training_tokens=n_tokens,
            # One buffer holding exactly our tokens (half a token of slack against rounding).
            buffer_size_gb=(n_tokens * bytes_per_token + bytes_per_token // 2) / 1e9,
            new_cached_activations_path=str(out),
            dtype="float16",
            device="cpu",
            prepend_bos=False,  # every context already starts with BOS
            shuffle=False,  # saelab does not shuffle at caching time either
            streaming=False,
        )
        covered = cfg.n_buffers * cfg.n_batches_in_buffer * cfg.n_tokens_in_batch
        if covered != n_tokens:
            raise RuntimeError(f"SAE-Lens sizing covers {covered} tokens, not {n_tokens}")
        dataset = Dataset.from_dict({"tokens": toks.astype(np.int64).tolist()})
        with patched(car, "load_model", lambda **_: tl_model), warnings.catch_warnings():
            # "fewer samples than training tokens": it compares rows to tokens.
            warnings.simplefilter("ignore")
            runner = CacheActivationsRunner(cfg, override_dataset=dataset)
        return runner, out

    def run(warmup: bool) -> int:
        toks = tokens[:batch_contexts] if warmup else tokens
        runner, out = state.pop("next") if not warmup and "next" in state else build(toks)
        state["out"] = out
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its torch.tensor(tensor) copy-construct warning
            result = runner.run()
        state["result"] = result
        return toks.size

    def cleanup() -> None:
        state.pop("result", None)
        if "out" in state:
            shutil.rmtree(state.pop("out"), ignore_errors=True)
        # Build the next runner here, untimed: only run() is measured.
        state["next"] = build(tokens)

    method = Method("sae-lens", run, cleanup)
    method.state = state  # type: ignore[attr-defined]
    return method


def checksum_cost(
    arrays: dict[str, np.ndarray], chunk_rows: int, rounds: int, tmp: Path
) -> dict[str, Any]:
    """Write and read throughput (MB/s) of the same arrays with and without the crc32c codec.

    Each round writes every array chunk by chunk into a fresh zarr v3 group (as ``build_cache``
    does, one chunk per batch), then reads it back chunk by chunk through ``open``; the two
    variants alternate, starting with a different one each round. The reads are checked to
    return the written bytes."""
    import zarr

    from saelab.cache import checksum_codecs

    n_bytes = sum(a.nbytes for a in arrays.values())
    times: dict[str, dict[str, list[float]]] = {
        v: {"write": [], "read": []} for v in ("crc32c", "none")
    }
    for r in range(rounds):
        variants = ["crc32c", "none"] if r % 2 == 0 else ["none", "crc32c"]
        for variant in variants:
            path = tmp / f"checksum-{variant}-{r}.zarr"
            compressors = checksum_codecs() if variant == "crc32c" else None
            t = time.perf_counter()
            group = zarr.open_group(path, mode="w", zarr_format=3)
            for name, values in arrays.items():
                array = group.create_array(
                    name,
                    shape=values.shape,
                    chunks=(chunk_rows, values.shape[1]),
                    dtype=values.dtype,
                    compressors=compressors,
                    fill_value=0,
                )
                for first in range(0, values.shape[0], chunk_rows):
                    array[first : first + chunk_rows] = values[first : first + chunk_rows]
            times[variant]["write"].append(time.perf_counter() - t)
            t = time.perf_counter()
            group = zarr.open_group(path, mode="r")
            for name, values in arrays.items():
                array = group[name]
                for first in range(0, values.shape[0], chunk_rows):
                    block = array[first : first + chunk_rows]
                    if not np.array_equal(block, values[first : first + chunk_rows]):
                        raise RuntimeError(f"{variant}: {name} read back other values")
            times[variant]["read"].append(time.perf_counter() - t)
            shutil.rmtree(path, ignore_errors=True)
    out: dict[str, Any] = {"bytes": n_bytes, "rounds": rounds}
    for op in ("write", "read"):
        with_crc = n_bytes / median(times["crc32c"][op]) / 1e6
        without = n_bytes / median(times["none"][op]) / 1e6
        out[op] = {
            "crc32c_MB_s": with_crc,
            "none_MB_s": without,
            "ratio": with_crc / without,
            "seconds": times,
        }
    log("")
    log(f"checksum cost on the storage alone ({n_bytes / 1e6:.0f} MB, {rounds} rounds, medians):")
    log(f"  {'':<6} {'crc32c MB/s':>12} {'none MB/s':>10} {'with / without':>15}")
    for op in ("write", "read"):
        o = out[op]
        log(f"  {op:<6} {o['crc32c_MB_s']:>12.0f} {o['none_MB_s']:>10.0f} {o['ratio']:>15.3f}")
    return out


def synthetic_activations(n_tokens: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float16 activations of the default cache's widths (gemma-3-270m layer 6)."""
    widths = {h: (1024 if h.endswith("hook_z") else 640) for h in FALLBACK_HOOKS}
    rng = np.random.default_rng(seed)
    return {
        h: rng.standard_normal((n_tokens, w), dtype=np.float32).astype(np.float16)
        for h, w in widths.items()
    }


# ---------------------------------------------------------------------------------------------
# Checks that the methods compute the same thing on the same tokens
# ---------------------------------------------------------------------------------------------


@torch.inference_mode()
def consistency_checks(hf_source, tl_source, bare, tokens, hooks, n_layers) -> dict[str, float]:
    """Max |difference| of each method's activations against saelab's transformers source."""
    batch = torch.from_numpy(tokens[:2].astype(np.int64))
    ours = hf_source(batch)
    checks = {}
    hidden = bare(input_ids=batch, output_hidden_states=True, use_cache=False).hidden_states
    resid_pre = f"blocks.{n_layers - 1}.hook_resid_pre"
    if resid_pre in ours:
        checks[f"hf-bare hidden_states[{n_layers - 1}] vs {resid_pre}"] = float(
            (hidden[n_layers - 1] - ours[resid_pre]).abs().max()
        )
    theirs = tl_source(batch)
    for hook in hooks:
        scale = float(ours[hook].abs().max())
        checks[f"TL vs HF {hook} (rel. to max {scale:.3g})"] = float(
            (theirs[hook] - ours[hook]).abs().max()
        ) / max(scale, 1e-12)
    return checks


def check_sae_lens_output(result, tokens: np.ndarray, hook: str, hf_source) -> dict[str, float]:
    """SAE-Lens cached exactly our tokens, and the same activations (up to fp16 and TL vs HF)."""
    result = result.with_format("numpy")
    token_ids = np.asarray(result["token_ids"])
    if token_ids.shape != tokens.shape or not np.array_equal(token_ids, tokens):
        raise RuntimeError("SAE-Lens cached other tokens than ours")
    with torch.inference_mode():
        ours = hf_source(torch.from_numpy(tokens[:2].astype(np.int64)))[hook].numpy()
    acts = np.asarray(result[hook][:2], dtype=np.float32)
    return {f"SAE-Lens vs HF {hook} (rel.)": float(np.abs(acts - ours).max() / np.abs(ours).max())}


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio_summary(
    methods: dict[str, Method], a: str, b: str, scale: float = 1.0
) -> dict[str, Any] | None:
    ma, mb = methods.get(a), methods.get(b)
    if ma is None or mb is None or not ma.samples or not mb.samples:
        return None
    per_round = [scale * x / y for x, y in zip(ma.samples, mb.samples, strict=False)]
    return {
        "ratio": scale * median(ma.samples) / median(mb.samples),
        "best_ratio": scale * max(ma.samples) / max(mb.samples),
        "per_round": per_round,
        "min": min(per_round),
        "max": max(per_round),
    }


def report(methods: dict[str, Method], fmt: dict[str, Any]) -> dict[str, Any]:
    bare = median(methods["hf-bare"].samples) if "hf-bare" in methods else float("nan")
    log("")
    log(
        f"{'method':<11} {'tok/s':>7} {'min':>7} {'max':>7} {'vs bare':>8}  tokens  what "
        "(tok/s: median over rounds)"
    )
    log("-" * 120)
    for method in methods.values():
        what = DESCRIPTIONS[method.name].format(**fmt)
        if method.error or not method.samples:
            log(f"{method.name:<11} {'-':>7} {'-':>7} {'-':>7} {'-':>8}  {'-':>6}  {what}")
            log(f"{'':<11} not measured: {method.error}")
            continue
        med = median(method.samples)
        log(
            f"{method.name:<11} {med:>7.0f} {min(method.samples):>7.0f} "
            f"{max(method.samples):>7.0f} {med / bare:>8.2f}  {method.tokens:>6}  {what}"
        )
    log("")
    log(f"{'ratio':<26} {'median':>7} {'best':>7}   {'rounds':<14} goal")
    log(f"{'':<26} {'':>7} {'':>7}   (min .. max)")
    results: dict[str, Any] = {"goals": {}, "ratios": {}}

    def line(label: str, summary: dict[str, Any], tail: str = "") -> None:
        spread = f"{summary['min']:.2f} .. {summary['max']:.2f}"
        log(
            f"  {label:<24} {summary['ratio']:>7.2f} {summary['best_ratio']:>7.2f}   "
            f"{spread:<14} {tail}".rstrip()
        )

    for label, (a, b, goal) in GOALS.items():
        scale = fmt["n_hooks"] if label in PER_HOOK_GOALS else 1.0
        summary = ratio_summary(methods, a, b, scale)
        if summary is None:
            log(f"  {label:<24} {'n/a':>7} {'n/a':>7}   {'':<14} >= {goal:.1f}  NOT MEASURED")
            results["goals"][label] = {"goal": goal, "status": "NOT MEASURED"}
            continue
        status = "PASS" if summary["ratio"] >= goal else "FAIL"
        noisy = summary["min"] < goal <= summary["max"]
        line(
            label,
            summary,
            f">= {goal:.1f}  {status}" + ("  (rounds straddle the goal)" if noisy else ""),
        )
        results["goals"][label] = {**summary, "goal": goal, "status": status, "noisy": noisy}
    for label, (a, b) in INFO_RATIOS.items():
        summary = ratio_summary(methods, a, b)
        if summary is not None:
            line(label, summary)
            results["ratios"][label] = summary
    log(
        "PASS/FAIL is judged on the medians. 'best' compares each method's fastest round: other "
        "jobs only ever slow a run down, so on a busy machine it is the less biased estimate."
    )
    return results


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("transformers", "transformer-lens", "sae-lens", "datasets", "zarr", "saelab"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    from saelab.runtime import configure_torch, heap_summary

    print(heap_summary(configure_torch(args.threads, reuse_memory=not args.system_malloc)))
    if args.checksum_only:
        tmp = Path(tempfile.mkdtemp(prefix="saelab-bench-", dir=args.tmp_dir))
        try:
            chunk_rows = 16 * args.context_len
            result = checksum_cost(
                synthetic_activations(args.contexts * args.context_len),
                chunk_rows,
                args.rounds,
                tmp,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"checksum": result}, indent=2) + "\n")
        return 0
    torch.manual_seed(0)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")

    from saelab.cache import activation_source
    from saelab.data import python_docs_documents, tokenize_documents
    from saelab.hooks import deepest_layer
    from saelab.models import load_tokenizer, prepare_model, read_manifest, resolve_model
    from saelab.precision import probe_host, resolve_precision

    hooks, dtype, config_batch = read_cache_config(args.config)
    batch_contexts = args.batch_contexts or config_batch
    n_layers = deepest_layer(hooks) + 1  # blocks 0..deepest run
    load = os.getloadavg()
    log(
        f"cache throughput benchmark: {args.contexts} contexts x {args.context_len} tokens, "
        f"batch {batch_contexts}, {args.rounds} rounds, torch threads {torch.get_num_threads()}, "
        f"load average {load[0]:.2f}"
    )
    log(f"hooks ({len(hooks)}, {dtype}): {', '.join(hooks)}")
    precision = resolve_precision(args.precision, "cpu")
    log(f"host: {probe_host('cpu').summary()}")
    log(f"forward precision: {precision.dtype_name} ({precision.reason}); every model below")
    if load[0] > (os.cpu_count() or 1) - args.threads + 0.5:
        log(
            f"! the machine is busy (load {load[0]:.1f} on {os.cpu_count()} cores): absolute "
            "speeds will be low and noisy; ops-heavy paths (TransformerLens) suffer most"
        )

    info = resolve_model("gemma-3-270m")
    model_dir = args.model_dir
    if read_manifest(model_dir) is None:
        log(f"preparing {info.model_id} into {model_dir} (about a minute) ...")
        t = time.perf_counter()
        prepare_model(info, model_dir)
        log(f"  prepared in {time.perf_counter() - t:.0f} s")

    t = time.perf_counter()
    tokenizer = load_tokenizer(model_dir)
    corpus = tokenize_documents(
        python_docs_documents(),
        tokenizer,
        context_len=args.context_len,
        n_contexts=max(args.contexts, args.logits_contexts),
        bos="per_context",
        seed=args.seed,
        progress=False,
    )
    tokens = corpus.tokens[: args.contexts]
    special = corpus.special_mask[: args.contexts]
    assert (tokens[:, 0] == tokenizer.bos_token_id).all(), "every context must start with BOS"
    log(
        f"tokens: python-docs, {tokens.shape[0]} x {tokens.shape[1]} "
        f"(fingerprint {corpus.fingerprint[:12]}) in {time.perf_counter() - t:.1f} s"
    )

    t = time.perf_counter()
    hf_source = activation_source(info, model_dir, hooks, "cpu", "auto", precision.dtype)
    if hf_source.backend != "transformers":
        log(f"! activation_source(auto) chose {hf_source.backend}, not transformers")
    tl_source = activation_source(
        info, model_dir, hooks, "cpu", "transformer_lens", precision.dtype
    )
    tl_model = tl_source.model
    attn_impl = getattr(getattr(hf_source, "hf_model", None), "config", None)
    attn_impl = getattr(attn_impl, "_attn_implementation", None)
    bare = load_bare_hf(model_dir, n_layers, attn_impl, precision.dtype)
    log(
        f"models loaded in {time.perf_counter() - t:.0f} s (HF attention: {attn_impl}; "
        f"bare model: {len(bare.layers)} decoder layers)"
    )

    checks = consistency_checks(hf_source, tl_source, bare, tokens, hooks, n_layers)
    for label, value in checks.items():
        log(f"  check {label}: max |diff| {value:.2e}")

    fmt = {
        "n_hooks": len(hooks),
        "n_layers": n_layers,
        "last": n_layers - 1,
        "sl_hook": args.sae_lens_hook,
    }
    tmp = Path(tempfile.mkdtemp(prefix="saelab-bench-", dir=args.tmp_dir))
    methods: dict[str, Method] = {}
    try:
        candidates: list[tuple[str, Callable[[], Method]]] = [
            (
                "saelab-hf",
                lambda: make_saelab(
                    "saelab-hf", hf_source, tokens, special, hooks, dtype, batch_contexts, tmp
                ),
            ),
            (
                "saelab-nocrc",
                lambda: make_saelab(
                    "saelab-nocrc",
                    hf_source,
                    tokens,
                    special,
                    hooks,
                    dtype,
                    batch_contexts,
                    tmp,
                    checksum=False,
                ),
            ),
            (
                "saelab-tl",
                lambda: make_saelab(
                    "saelab-tl", tl_source, tokens, special, hooks, dtype, batch_contexts, tmp
                ),
            ),
            ("saelab-fwd", lambda: make_source_only(hf_source, tokens, batch_contexts)),
            ("hf-bare", lambda: make_hf_bare(bare, tokens, batch_contexts)),
            ("tl-rwc", lambda: make_tl_rwc(tl_model, tokens, hooks, n_layers, batch_contexts)),
            (
                "sae-lens",
                lambda: make_sae_lens(
                    tl_model, tokens, args.sae_lens_hook, tl_model.cfg.d_model, batch_contexts, tmp
                ),
            ),
            (
                "hf-logits",
                lambda: make_hf_logits(
                    hf_source.hf_model, corpus.tokens, args.logits_contexts, args.logits_batch
                ),
            ),
        ]
        for name, make in candidates:
            if name in args.skip:
                continue
            try:
                methods[name] = make()
            except Exception as err:
                error = f"{type(err).__name__}: {err}"
                log(f"! cannot set up {name}: {error}")
                methods[name] = Method(name, lambda _warmup: 0, error=error)

        log("")
        log("warm-up (one batch each):")
        for method in list(methods.values()):
            if method.error:
                continue
            t = time.perf_counter()
            try:
                n = method.run(True)
                if method.name == "sae-lens":
                    sl_checks = check_sae_lens_output(
                        method.state["result"],
                        tokens[:batch_contexts],  # type: ignore[attr-defined]
                        args.sae_lens_hook,
                        hf_source,
                    )
                    for label, value in sl_checks.items():
                        log(f"  check {label}: max |diff| {value:.2e}")
                method.cleanup()
            except Exception as err:
                method.error = f"{type(err).__name__}: {err}"
                log(f"  {method.name:<10} FAILED: {method.error}")
                continue
            log(f"  {method.name:<10} {n:>6} tok  {time.perf_counter() - t:6.1f} s")

        active = [m for m in methods.values() if not m.error]
        rng = np.random.default_rng(args.seed)
        for r in range(args.rounds):
            log(f"round {r + 1}/{args.rounds} (load average {os.getloadavg()[0]:.2f}):")
            order = [active[i] for i in rng.permutation(len(active))]
            for method in order:
                gc.collect()
                t = time.perf_counter()
                try:
                    n = method.run(False)
                except Exception as err:
                    method.error = f"{type(err).__name__}: {err}"
                    log(f"  {method.name:<10} FAILED: {method.error}")
                    active.remove(method)
                    continue
                seconds = time.perf_counter() - t
                method.cleanup()
                method.tokens = n
                method.seconds.append(seconds)
                method.samples.append(n / seconds)
                log(f"  {method.name:<10} {n:>6} tok  {seconds:6.1f} s  {n / seconds:8.0f} tok/s")
        with torch.inference_mode():
            captured = [hf_source(b) for b in batches(tokens, batch_contexts)]
        activations = {
            h: torch.cat([c[h].reshape(-1, c[h].shape[-1]) for c in captured])
            .to(getattr(torch, dtype))
            .numpy()
            for h in hooks
        }
        del captured
        checksum = checksum_cost(
            activations, batch_contexts * args.context_len, max(args.rounds, 3), tmp
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    results = report(methods, fmt)
    results["checksum"] = checksum
    runtime = time.perf_counter() - t_start
    log("")
    log(
        f"total runtime {runtime:.0f} s; load average now {os.getloadavg()[0]:.2f} "
        "(absolute speeds vary with other jobs: compare ratios only)"
    )

    if args.json:
        payload = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "hooks": hooks,
            "dtype": dtype,
            "precision": precision.record(),
            "batch_contexts": batch_contexts,
            "tokens_shape": list(tokens.shape),
            "corpus_fingerprint": corpus.fingerprint,
            "threads": torch.get_num_threads(),
            "versions": versions(),
            "checks": checks,
            "methods": {
                m.name: {
                    "description": DESCRIPTIONS[m.name].format(**fmt),
                    "tokens": m.tokens,
                    "tokens_per_s": m.samples,
                    "seconds": m.seconds,
                    "median_tokens_per_s": median(m.samples) if m.samples else None,
                    "error": m.error,
                }
                for m in methods.values()
            },
            **results,
            "runtime_s": runtime,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
