"""The LM-heavy rules in bfloat16 against float32: speed and agreement, on this host, in one run.

gemma-3-270m (TransformerLens, as the rules load it with ``load_model(..., dtype=...)``) runs the
work of each LM-heavy rule on the same held-out python-docs contexts in both dtypes:

  token-loss      ``saelab.models.splice.token_losses``: a forward with the 262k-vocab logits
                  and a float32 log-softmax (rule darkmatter_token_loss; the clean pass of
                  ce_recovered and darkmatter_downstream_ce is the same forward)
  ce-recovered    ``saelab.ce.ce_recovered`` of one BatchTopK SAE at ``--hook`` (clean,
                  zero- and mean-ablation and spliced passes: rule ce_recovered)
  traj-forward    ``run_with_cache`` through every layer on one context (the forward of rule
                  trajectory_evolution, which itself stays float32: see the README)
  matmul          ``--matmul-n``³ in each dtype: the host's own peak

The host's capabilities and what ``precision: auto`` picks on it are printed first. Each method
is warmed up once, then measured ``--rounds`` times round-robin; the median is reported with
the bf16 / fp32 speed-up and the largest difference of the results (CE in nats, CE score).
Only ratios within one run mean anything: other jobs on the machine change absolute speeds.

    python benchmarks/lm_precision.py [--model-dir data/models/gemma-3-270m] [--contexts 2]
        [--context-len 64] [--rounds 2] [--json out.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from saelab.ce import ce_recovered  # noqa: E402
from saelab.models.splice import token_losses  # noqa: E402
from saelab.precision import probe_host, resolve_precision  # noqa: E402
from saelab.runtime import configure_torch, heap_summary  # noqa: E402
from saelab.saes import SAEConfig, build_sae  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, default=REPO / "data" / "models" / "gemma-3-270m")
    p.add_argument("--hook", default="blocks.6.hook_resid_pre")
    p.add_argument("--contexts", type=int, default=2)
    p.add_argument("--context-len", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--system-malloc", action="store_true",
                   help="the C library's default heap instead of saelab's jobs' freed-memory reuse")  # fmt: skip
    p.add_argument("--matmul-n", type=int, default=1024)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    print(heap_summary(configure_torch(args.threads, reuse_memory=not args.system_malloc)))
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")

    from saelab.data import python_docs_documents, tokenize_documents
    from saelab.models import (
        load_model,
        load_tokenizer,
        prepare_model,
        read_manifest,
        resolve_model,
    )

    host = probe_host("cpu")
    auto = resolve_precision("auto", "cpu", host)
    print(f"host: {host.summary()}; {args.threads} threads")
    print(f"precision: auto picks {auto.dtype_name} here ({auto.reason})")
    info = resolve_model("gemma-3-270m")
    if read_manifest(args.model_dir) is None:
        print(f"preparing {info.model_id} into {args.model_dir} (about a minute) ...")
        prepare_model(info, args.model_dir)
    tokenizer = load_tokenizer(args.model_dir)
    corpus = tokenize_documents(
        python_docs_documents(), tokenizer, context_len=args.context_len,
        n_contexts=args.contexts, bos="per_context", seed=1, progress=False,
    )  # fmt: skip
    tokens = torch.from_numpy(corpus.tokens.astype(np.int64))
    n_tokens = tokens.numel()
    models = {name: load_model(info, args.model_dir, dtype=dtype) for name, dtype in DTYPES.items()}
    d_model = models["float32"].cfg.d_model
    sae = build_sae(
        SAEConfig(arch="batchtopk", d_in=d_model, width=4096, k=32, hook_name=args.hook)
    ).eval()
    with torch.no_grad():  # a usable SAE without training: threshold at a typical value
        sae.threshold.fill_(0.5)
    n_layers = models["float32"].cfg.n_layers

    def run(method: str, name: str):
        model = models[name]
        if method == "token-loss":
            return token_losses(model, tokens, batch_size=args.contexts)
        if method == "ce-recovered":
            return ce_recovered(model, tokens, {"sae": sae}, batch_size=args.contexts)["sae"]
        if method == "traj-forward":
            with torch.no_grad():
                model.run_with_cache(
                    tokens[:1], names_filter=lambda h: h.endswith("hook_resid_mid"),
                    stop_at_layer=n_layers,
                )  # fmt: skip
            return None
        a = torch.randn(args.matmul_n, args.matmul_n).to(DTYPES[name])
        return a @ a

    methods = ["token-loss", "ce-recovered", "traj-forward", "matmul"]
    tokens_of = {"token-loss": n_tokens, "ce-recovered": n_tokens,
                 "traj-forward": tokens.shape[1], "matmul": 0}  # fmt: skip
    times: dict[tuple[str, str], list[float]] = {}
    results: dict[tuple[str, str], object] = {}
    print(f"{n_tokens} tokens ({args.contexts} x {args.context_len}); warm-up ...")
    for method in methods:
        for name in DTYPES:
            seconds, results[method, name] = timed(lambda m=method, n=name: run(m, n))
            print(f"  warm-up {method:<13} {name:<9} {seconds:7.2f} s", flush=True)
    for r in range(args.rounds):
        order = [(m, n) for m in methods for n in DTYPES]
        order = order[r % len(order) :] + order[: r % len(order)]
        for method, name in order:
            seconds, _ = timed(lambda m=method, n=name: run(m, n))
            times.setdefault((method, name), []).append(seconds)
        print(f"round {r + 1}/{args.rounds} done (load {os.getloadavg()[0]:.1f})", flush=True)

    print()
    print(f"{'method':<14}{'fp32 s':>9}{'bf16 s':>9}{'bf16/fp32 speed':>17}  agreement")
    rows = {}
    for method in methods:
        t32 = statistics.median(times[method, "float32"])
        t16 = statistics.median(times[method, "bfloat16"])
        agree = ""
        if method == "token-loss":
            a, b = results[method, "float32"], results[method, "bfloat16"]
            diff = float(np.nanmax(np.abs(a - b)))
            mean = abs(float(np.nanmean(a)) - float(np.nanmean(b)))
            agree = f"max |ΔCE| per token {diff:.3f} nats, |Δ mean CE| {mean:.4f}"
        elif method == "ce-recovered":
            a, b = results[method, "float32"], results[method, "bfloat16"]
            agree = (
                f"CE clean {a.ce_clean:.4f} vs {b.ce_clean:.4f}; score {a.ce_loss_score:.4f} vs "
                f"{b.ce_loss_score:.4f}"
            )
        elif method == "matmul":
            flops = 2 * args.matmul_n**3
            agree = f"{flops / t32 / 1e9:.1f} vs {flops / t16 / 1e9:.1f} GFLOP/s"
        rows[method] = {"float32_s": t32, "bfloat16_s": t16, "speedup": t32 / t16,
                        "tokens": tokens_of[method], "agreement": agree}  # fmt: skip
        print(f"{method:<14}{t32:>9.2f}{t16:>9.2f}{t32 / t16:>16.2f}x  {agree}")
    print(
        f"\nauto on this host: {auto.dtype_name}. Load average at the end "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (shared machine: numbers are noisy)."
    )
    if args.json:
        args.json.write_text(json.dumps({
            "host": host.to_dict(), "auto": auto.record(), "tokens": n_tokens,
            "contexts": args.contexts, "context_len": args.context_len, "rows": rows,
            "load_average": os.getloadavg()[0],
        }, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
