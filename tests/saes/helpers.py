"""Helpers moved verbatim from tests/test_saes.py, used by
tests/saes/test_base.py
tests/saes/test_batchtopk.py
tests/saes/test_config.py
tests/saes/test_io.py
tests/saes/test_jumprelu.py
tests/saes/test_relu.py
tests/saes/test_sparse.py
tests/saes/test_topk.py
tests/test_groups.py."""

from __future__ import annotations

import torch

from saelab.saes import (
    SAEConfig,
    SparseCodes,
    build_sae,
)

GROUPS = [4, 4, 8, 16]  # individual sizes of a width-32 Matryoshka SAE


def make(arch: str, d_in: int = 8, width: int = 32, k: int = 3, **kw) -> SAEConfig:
    if arch == "matryoshka" and "group_sizes" not in kw:
        kw["group_sizes"] = list(GROUPS) if width == 32 else [width // 2, width - width // 2]
    return SAEConfig(arch=arch, d_in=d_in, width=width, k=k, **kw)


def entries(codes: SparseCodes) -> dict[tuple[int, int], float]:
    return {
        (int(r), int(latent)): float(v)
        for r, latent, v in zip(codes.rows, codes.latents, codes.values.detach(), strict=True)
    }


def brute_batch_topk(acts: torch.Tensor, k: int) -> dict[tuple[int, int], float]:
    """The k·B largest entries of the flattened matrix, positive ones only (dense reference)."""
    n_rows, width = acts.shape
    flat = acts.reshape(-1).double()
    order = torch.argsort(flat, descending=True)[: k * n_rows]
    return {
        (int(i) // width, int(i) % width): float(acts.reshape(-1)[i]) for i in order if flat[i] > 0
    }


def randomize(sae, seed: int = 0, scale: float = 0.3) -> None:
    """Non-zero biases (and thresholds), so every bias convention shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(sae.b_dec.shape, generator=g) * scale)
        sae.b_enc.copy_(torch.randn(sae.b_enc.shape, generator=g) * scale)
        if sae.cfg.arch == "jumprelu":
            sae.threshold.copy_(torch.rand(sae.threshold.shape, generator=g) * 0.3)


# ---------------------------------------------------------------------- SAE-Lens round trip


def trained(cfg: SAEConfig, steps: int = 3, seed: int = 0):
    """An SAE after a few real steps: moved weights and biases, a non-zero threshold."""
    sae = build_sae(cfg).train()
    randomize(sae, seed)
    opt = torch.optim.Adam([p for p in sae.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(64, cfg.d_in, generator=g)
        y = torch.randn(64, cfg.d_out, generator=g) if cfg.is_transcoder else None
        sae(x, y).loss.backward()
        sae.remove_parallel_decoder_grad()
        opt.step()
        opt.zero_grad()
        sae.normalize_decoder()
    return sae.eval()
