"""Co-occurrence counts: saelab's sparse AᵀA against the original's dense chunked matmul.

Both methods get the same binarised codes: N tokens (default 200,000), D latents (default
16,384), about k active latents per token (default 32).

  --codes sae          real codes: a trained SAE (``--sae``, e.g. the 16,384-latent SAEs of
                       ``benchmarks/config/cooccurrence_16k.yaml``) encodes the first N tokens of
                       a cache (``--cache``) as the ``cooccurrence`` rule does (eval encoding,
                       special tokens dropped, active = activation > ``--threshold``).
  --codes clustered    synthetic: power-law latent frequencies, latents co-occurring within
                       contexts (see ``synthetic_codes``).
  --codes independent  synthetic: every latent drawn independently; no structure.

The synthetic codes are far denser in pairs than real ones: at D = 4,096 and N = 65,536 they
make 69-87% of all D² pairs co-occur, the default run's real BatchTopK and Matryoshka codes
12% and 5%. They bound the worst case; the real codes are the benchmark's subject.

  sparse   saelab.cooccurrence.pair_counts: scipy CSR AᵀA from the sparse codes, O(N·k²),
           result stored as CSR
  dense    saelab.cooccurrence.dense_pair_counts, the original's method (seed 000
           ``2_get_cooc_mat_normal.py``): binarised float chunks of 1000 rows, C += chunkᵀ·chunk,
           O(N·D²) and a dense D×D accumulator

The dense method costs the same for every chunk (a 1000×D by D×1000 product), so it runs on the
first ``--dense-chunks`` chunks only and its time is extrapolated linearly to all N/1000 chunks
(``--dense-chunks 0`` runs them all: about an hour on 2 cores at the defaults). Its peak memory
(the D×D accumulator plus the product's D×D temporary) does not depend on the number of chunks.
On those chunks' tokens the two count matrices are compared entry by entry.

Peak memory is measured with tracemalloc (numpy and scipy allocate their arrays through it),
separately for each method. Goals: sparse ≥ 10× faster and ≥ 10× less memory.

    python benchmarks/cooccurrence_speed.py --codes sae \
        --sae results/gemma-3-270m/blocks.6.hook_resid_pre/matryoshka-16k \
        --cache data/cache/gemma-3-270m/main.zarr [--tokens 200000] [--dense-chunks 2]
    python benchmarks/cooccurrence_speed.py --codes clustered [--width 16384] [--k 32]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

import numpy as np

from saelab.cooccurrence import dense_pair_counts, pair_counts
from saelab.runtime import write_json_atomic

CHUNK = 1000


def _zipf(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / (np.arange(n) + 10.0) ** exponent
    return weights / weights.sum()


def synthetic_codes(n_tokens: int, width: int, k: int, kind: str = "clustered", seed: int = 0):
    """(rows, latents) with about k distinct latents per token.

    ``independent``: every latent drawn independently with p ∝ 1/(rank+10)^0.8; no structure,
    so pairs spread over the whole D×D matrix (the worst case for sparse storage).
    ``clustered``: each token has one of 512 "contexts", each with its own power-law over 1024
    latents, and draws 3/4 of its latents there and 1/4 from the global power law: latents
    co-occur within contexts, as real SAE latents do.
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(width)
    if kind == "independent":
        latents = perm[rng.choice(width, size=(n_tokens, k), p=_zipf(width, 0.8))]
    elif kind == "clustered":
        n_contexts, pool = 512, min(1024, width)
        k_local = (3 * k) // 4
        pools = np.stack([rng.choice(width, pool, replace=False) for _ in range(n_contexts)])
        context = rng.choice(n_contexts, size=n_tokens, p=_zipf(n_contexts, 1.0))
        local = pools[
            context[:, None], rng.choice(pool, size=(n_tokens, k_local), p=_zipf(pool, 1.0))
        ]
        shared = perm[rng.choice(width, size=(n_tokens, k - k_local), p=_zipf(width, 1.0))]
        latents = np.concatenate([local, shared], axis=1)
    else:
        raise ValueError(f"codes {kind!r}: use independent or clustered")
    rows = np.repeat(np.arange(n_tokens), k)
    keys = np.unique(rows * width + latents.reshape(-1))  # drop repeats within a token
    return keys // width, keys % width


def sae_codes(sae_dir: str, cache: str, n_tokens: int, threshold: float):
    """(rows, latents, n_tokens, width) of an SAE's active latents on a cache's first tokens."""
    from saelab.cooccurrence.collect import collect_activity
    from saelab.saes.io import load_sae

    sae = load_sae(sae_dir)
    activity = collect_activity(sae, cache, n_tokens)
    active = activity.values > threshold
    return activity.rows[active], activity.latents[active], activity.n_tokens, activity.width


def measure(fn):
    """(result, seconds, peak bytes allocated during fn)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--width", type=int, default=16_384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--codes", choices=["sae", "clustered", "independent"], default="sae")
    parser.add_argument("--sae", help="--codes sae: a trained SAE's directory")
    parser.add_argument("--cache", help="--codes sae: the activation cache it reads")
    parser.add_argument("--threshold", type=float, default=0.0,
                        help="--codes sae: active means activation > threshold")  # fmt: skip
    parser.add_argument("--dense-chunks", type=int, default=2,
                        help="chunks of 1000 tokens the dense method runs (0: all)")  # fmt: skip
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    if args.codes == "sae":
        if not (args.sae and args.cache):
            parser.error("--codes sae needs --sae DIR and --cache ZARR")
        rows, latents, n, d = sae_codes(args.sae, args.cache, args.tokens, args.threshold)
        label = f"{os.path.basename(os.path.normpath(args.sae))} codes"
    else:
        rows, latents = synthetic_codes(args.tokens, args.width, args.k, args.codes)
        n, d = args.tokens, args.width
        label = f"{args.codes} codes"
    firing = np.bincount(latents, minlength=d)
    print(f"{label}: N = {n}, D = {d}, {np.count_nonzero(firing)} latents fire, "
          f"mean L0 = {len(rows) / n:.1f}, "
          f"pair products N·k² = {np.bincount(rows, minlength=n).astype(float).__pow__(2).sum():.3g}")  # fmt: skip

    sparse, sparse_s, sparse_peak = measure(lambda: pair_counts(rows, latents, n, d))
    print(f"sparse: {sparse_s:.2f} s, peak {sparse_peak / 2**20:.0f} MiB, "
          f"{sparse.nnz} stored pairs ({sparse.nnz / d**2:.2%} of D²)")  # fmt: skip

    total_chunks = -(-n // CHUNK)
    chunks = total_chunks if args.dense_chunks <= 0 else min(args.dense_chunks, total_chunks)
    sub_n = min(chunks * CHUNK, n)
    keep = rows < sub_n
    dense, dense_part_s, dense_peak = measure(
        lambda: dense_pair_counts(rows[keep], latents[keep], sub_n, d, chunk_rows=CHUNK)
    )
    dense_s = dense_part_s * total_chunks / chunks
    print(f"dense: {dense_part_s:.2f} s for {chunks} of {total_chunks} chunks -> "
          f"{dense_s:.1f} s for all{' (extrapolated)' if chunks < total_chunks else ''}, "
          f"peak {dense_peak / 2**20:.0f} MiB")  # fmt: skip

    check = pair_counts(rows[keep], latents[keep], sub_n, d)
    coo = check.tocoo()
    identical = bool(
        np.array_equal(dense[coo.row, coo.col], coo.data) and dense.sum() == coo.data.sum()
    )
    del dense
    print(f"identical counts on the first {sub_n} tokens: {identical}")

    speedup = dense_s / sparse_s
    memory_ratio = dense_peak / sparse_peak
    print(f"speed-up {speedup:.1f}x ({'PASS' if speedup >= 10 else 'FAIL'} >= 10x), "
          f"memory {memory_ratio:.1f}x less ({'PASS' if memory_ratio >= 10 else 'FAIL'} >= 10x)")  # fmt: skip
    if args.json:
        write_json_atomic({
                "codes": label, "tokens": n, "width": d, "k": args.k,
                "firing_latents": int(np.count_nonzero(firing)), "mean_l0": len(rows) / n,
                "sparse_seconds": sparse_s, "sparse_peak_bytes": sparse_peak,
                "sparse_nnz": int(sparse.nnz), "dense_seconds": dense_s,
                "dense_seconds_measured": dense_part_s, "dense_chunks_run": chunks,
                "dense_chunks_total": total_chunks, "dense_peak_bytes": dense_peak,
                "identical": identical, "speedup": speedup, "memory_ratio": memory_ratio,
            }, args.json, indent=1)  # fmt: skip
    if not identical:
        raise SystemExit("the two methods disagree")


if __name__ == "__main__":
    main()
