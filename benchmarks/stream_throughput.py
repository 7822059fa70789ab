"""Streaming training throughput against caching then training, back to back, in one run.

Both paths train the same group of SAEs (a BatchTopK and a Matryoshka SAE on one hook, the
default config's pair) for the same number of tokens from the same model and corpus:

  cached     ``build_cache`` over the corpus (train and held-out contexts, float16 zarr in a temp
             directory), then ``train_saes`` on that cache (its held-out evaluation included)
  stream     ``train_saes`` on an ``ActivationStream`` (``source: stream``): the same forward,
             run as the shuffle buffer needs it, its held-out evaluation included

tokens/s = trained tokens / wall seconds of the whole path. Goal: stream / cached >= 0.9. The
model is a GPT-2 of the real gpt2-small architecture (d 768, 12 heads) with random weights,
cut after ``--layer`` (the forward stops after the hooked block), on random token ids: speed does
not depend on the weights. Paths alternate order over ``--rounds`` rounds; the median is judged.
Only the ratio within one run means anything (other jobs on the machine change absolute speeds).

    python benchmarks/stream_throughput.py [--tokens 65536] [--width 4096] [--layer 4]
        [--rounds 1] [--json out.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from saelab.cache import HFActivationSource, build_cache  # noqa: E402
from saelab.runtime import (  # noqa: E402
    configure_torch,
    heap_summary,
    write_json_atomic,
)
from saelab.stream import ActivationStream  # noqa: E402
from saelab.stream_providers import ModelProvider  # noqa: E402
from saelab.train import TrainConfig, build_saes, train_saes  # noqa: E402

CTX = 128
GOAL = 0.9


def gpt2(layers: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=layers, n_embd=768, n_head=12, n_ctx=1024, n_positions=1024)
    torch.manual_seed(0)
    return GPT2LMHeadModel(config).eval()


def specs(hook: str, width: int) -> dict[str, dict]:
    groups = [width // 16, width // 16, width // 8, width // 4, width // 2]
    return {
        "batchtopk": {"arch": "batchtopk", "width": width, "k": 32, "hook_name": hook},
        "matryoshka": {"arch": "matryoshka", "width": width, "k": 32, "hook_name": hook,
                       "group_sizes": groups},
    }  # fmt: skip


def run_cached(source, tokens, special, hook, cfg, width, root: Path) -> float:
    t0 = time.perf_counter()
    cache = root / "cache.zarr"
    build_cache(source, tokens, special, [hook], cache, dtype="float16", batch_contexts=16,
                progress=False)  # fmt: skip
    saes = build_saes(specs(hook, width), {hook: 768})
    train_saes(cache, saes, cfg, {n: root / "cached" / n for n in saes}, progress=False)
    return time.perf_counter() - t0


def run_stream(source, tokens, special, hook, cfg, width, root: Path) -> float:
    t0 = time.perf_counter()
    stream = ActivationStream(
        ModelProvider(source, tokens), special, [hook], cfg.batch_size,
        buffer_contexts=cfg.shuffle_contexts, batch_contexts=16, seed=cfg.seed,
        heldout_fraction=cfg.heldout_fraction,
    )  # fmt: skip
    saes = build_saes(specs(hook, width), {hook: 768})
    train_saes(stream, saes, cfg, {n: root / "stream" / n for n in saes}, progress=False)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=65536, help="training tokens per SAE")
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--layer", type=int, default=4, help="hooked block (resid_post)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--system-malloc", action="store_true",
                   help="the C library's default heap instead of saelab's jobs' freed-memory reuse")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print(heap_summary(configure_torch(args.threads, reuse_memory=not args.system_malloc)))

    hook = f"blocks.{args.layer}.hook_resid_post"
    model = gpt2(args.layer + 1)
    source = HFActivationSource(model, [hook])
    cfg = TrainConfig(n_tokens=args.tokens, batch_size=args.batch, lr=3e-4, checkpoint_every=0,
                      log_every=10, source="stream", shuffle_contexts=64)  # fmt: skip
    # Enough contexts for the training tokens after the 5 % held-out slice (BOS excluded).
    n_contexts = int(np.ceil(args.tokens / (CTX - 1) / 0.95)) + 16
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, model.config.vocab_size, size=(n_contexts, CTX)).astype(np.int32)
    tokens[:, 0] = model.config.bos_token_id
    special = tokens == model.config.bos_token_id
    print(f"gpt2-small architecture (random weights) cut after block {args.layer}, {hook}; "
          f"{n_contexts} contexts of {CTX}; 2 SAEs of width {args.width}, {args.tokens} tokens; "
          f"{args.threads} threads")  # fmt: skip

    times: dict[str, list[float]] = {"cached": [], "stream": []}
    runners = {"cached": run_cached, "stream": run_stream}
    for round_ in range(args.rounds):
        order = ["cached", "stream"] if round_ % 2 == 0 else ["stream", "cached"]
        for name in order:
            with tempfile.TemporaryDirectory() as tmp:
                seconds = runners[name](source, tokens, special, hook, cfg, args.width, Path(tmp))
            times[name].append(seconds)
            print(f"round {round_ + 1} {name:7s} {seconds:7.1f} s  "
                  f"{args.tokens / seconds:8.0f} tokens/s")  # fmt: skip
    speed = {name: args.tokens / statistics.median(t) for name, t in times.items()}
    ratio = speed["stream"] / speed["cached"]
    verdict = "PASS" if ratio >= GOAL else "FAIL"
    print(f"\nstream {speed['stream']:.0f} tokens/s, forward-then-cached {speed['cached']:.0f} "
          f"tokens/s: ratio {ratio:.2f} (goal >= {GOAL}) {verdict}")  # fmt: skip
    if args.json:
        write_json_atomic(
            {"args": {k: str(v) for k, v in vars(args).items()}, "seconds": times,
             "tokens_per_s": speed, "ratio": ratio, "goal": GOAL, "pass": ratio >= GOAL,
             "machine": platform.platform(), "torch": torch.__version__},
            args.json,
        )  # fmt: skip
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
