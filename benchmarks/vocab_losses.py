"""Next-token CE and KL over gemma-3's 262k vocabulary: saelab's block-wise losses against the
whole-logits path, in the same run.

    python benchmarks/vocab_losses.py [--model-dir data/models/gemma-3-270m] [--contexts 4]

Real residuals: ``--contexts`` contexts of the built-in corpus run through gemma-3-270m once
(clean) and once with block 6's residual zero-ablated (a large KL, as CE recovered's
ablations). Both passes' final-block rows (``--contexts`` x 127 predictions) are then reduced

* by :func:`saelab.models.splice.unembed_losses` (vocabulary-major blocks, online logsumexp,
  KL against the kept clean distribution), and
* by the whole-logits path saelab used before: one [N, vocab] float32 matmul per pass
  (``final_logits``), ``F.cross_entropy`` and ``F.kl_div`` over the whole logits,

and each against float64 (``F.cross_entropy`` / ``F.kl_div`` of float64 logits). Prints seconds
(median of ``--rounds``), the ratio, and the largest and mean errors against float64.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from saelab.models.splice import (  # noqa: E402
    FromLayer,
    final_logits,
    flat,
    replace_hook,
    unembed_losses,
)
from saelab.precision import probe_host  # noqa: E402
from saelab.runtime import configure_torch, heap_summary  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, default=REPO / "data" / "models" / "gemma-3-270m")
    p.add_argument("--contexts", type=int, default=4)
    p.add_argument("--context-len", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--system-malloc", action="store_true",
                   help="the C library's default heap instead of saelab's jobs' freed-memory reuse")  # fmt: skip
    args = p.parse_args(argv)
    print(heap_summary(configure_torch(args.threads, reuse_memory=not args.system_malloc)))
    print(f"host: {probe_host('cpu').summary()}; {args.threads} threads")
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    from saelab.data import python_docs_documents, tokenize_documents
    from saelab.models import load_model, load_tokenizer, read_manifest, resolve_model

    info = resolve_model("gemma-3-270m")
    if read_manifest(args.model_dir) is None:
        raise SystemExit(f"{args.model_dir} holds no prepared model: run `make run` first")
    corpus = tokenize_documents(
        python_docs_documents(), load_tokenizer(args.model_dir), context_len=args.context_len,
        n_contexts=args.contexts, bos="per_context", seed=1, progress=False,
    )  # fmt: skip
    tokens = torch.from_numpy(corpus.tokens.astype(np.int64))
    model = load_model(info, args.model_dir, dtype=torch.float32)
    targets = tokens[:, 1:].reshape(-1)
    with torch.no_grad():
        passes = FromLayer(model, tokens, 6)
        zero = replace_hook(lambda act: torch.zeros_like(act), torch.ones_like(tokens, dtype=bool))
        rows = {
            "clean": flat(passes.final([])[:, :-1]),
            "zero": flat(passes.final([("blocks.6.hook_resid_pre", zero)])[:, :-1]),
        }

    def blockwise():
        clean, reference = unembed_losses(model, rows["clean"], targets, keep_reference=True)
        patched, _ = unembed_losses(model, rows["zero"], targets, reference=reference)
        return clean.ce, patched.ce, patched.kl

    def whole_logits(dtype=torch.float32):
        clean = final_logits(model, rows["clean"], direct=True).to(dtype)
        patched = final_logits(model, rows["zero"], direct=True).to(dtype)
        lp = F.log_softmax(patched, -1)
        kl = F.kl_div(lp, F.log_softmax(clean, -1), log_target=True, reduction="none").sum(-1)
        ce_clean = F.cross_entropy(clean, targets, reduction="none")
        return ce_clean, -lp.gather(-1, targets[:, None])[:, 0], kl

    with torch.no_grad():
        truth = [t.double() for t in whole_logits(torch.float64)]
        seconds: dict[str, list[float]] = {"saelab blockwise": [], "whole logits": []}
        results = {}
        for r in range(args.rounds + 1):  # round 0 warms up
            for name, fn in (("saelab blockwise", blockwise), ("whole logits", whole_logits)):
                t0 = time.perf_counter()
                results[name] = fn()
                if r:
                    seconds[name].append(time.perf_counter() - t0)
    n = len(targets)
    print(
        f"{n} predictions, 2 passes (clean, zero-ablated block 6), vocabulary {model.cfg.d_vocab}"
    )
    print(f"{'method':18s} {'s':>7s}   error vs float64 (max / mean): CE clean, CE patched, KL")
    for name, got in results.items():
        errors = [(g.double() - t).abs() for g, t in zip(got, truth, strict=True)]
        text = ", ".join(f"{float(e.max()):.1e} / {float(e.mean()):.1e}" for e in errors)
        print(f"{name:18s} {statistics.median(seconds[name]):7.2f}   {text}")
    ratio = statistics.median(seconds["whole logits"]) / statistics.median(
        seconds["saelab blockwise"]
    )
    print(f"saelab blockwise / whole logits speed: {ratio:.2f}x")
    print(f"mean KL (float64) {float(truth[2].mean()):.4f} nats")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
