"""Sparse codes and the kernels that keep them sparse from selection to decoding.

Codes are (row, latent, value) triples (:class:`SparseCodes`); the decoder is an
``embedding_bag`` gather costing O(nnz·d) rather than a dense O(B·width·d) matmul, and the
encoder's backward touches only the selected pre-activations.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class SparseCodes(NamedTuple):
    """The active entries of a batch of codes: ``f[rows[i], latents[i]] = values[i]``."""

    rows: Tensor
    """Token index within the batch, sorted ascending (int64 [nnz])."""
    latents: Tensor
    """Latent index (int64 [nnz])."""
    values: Tensor
    """Activation, > 0 (float [nnz]); carries gradients."""
    n_rows: int
    width: int

    def dense(self) -> Tensor:
        out = self.values.new_zeros(self.n_rows, self.width)
        return out.index_put((self.rows, self.latents), self.values)

    def l0(self) -> Tensor:
        """Active latents per token [n_rows]."""
        return torch.bincount(self.rows, minlength=self.n_rows)

    @classmethod
    def from_dense(cls, dense: Tensor) -> SparseCodes:
        rows, latents = dense.nonzero(as_tuple=True)  # row-major, so rows are sorted
        return cls(rows, latents, dense[rows, latents], dense.shape[0], dense.shape[1])

    def select(self, mask: Tensor) -> SparseCodes:
        return SparseCodes(
            self.rows[mask], self.latents[mask], self.values[mask], self.n_rows, self.width
        )


def _bag_offsets(bags: Tensor, n_bags: int) -> Tensor:
    """Start of each bag in ``bags`` (sorted ascending), for ``embedding_bag``."""
    counts = torch.bincount(bags, minlength=n_bags)
    return torch.cumsum(counts, 0) - counts


def stable_sort(keys: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.sort(keys, stable=True)`` for non-negative integer keys, but fast on CPU.

    torch's parallel CPU sort of 131k int64 keys took 0.1-0.4 s on a busy 2-core machine;
    numpy's single-threaded radix sort of the same keys as uint16 takes under a millisecond.
    """
    if keys.numel() == 0:
        return keys, keys.clone()
    top = int(keys.max())
    if keys.device.type == "cpu" and top < 2**16:
        order = torch.from_numpy(np.argsort(keys.numpy().astype(np.uint16), kind="stable"))
        return keys[order], order
    if top < 2**31:
        values, order = torch.sort(keys.to(torch.int32), stable=True)
        return values.long(), order
    return torch.sort(keys, stable=True)


def _scatter_rows(table: Tensor, bags: Tensor, latents: Tensor, weights: Tensor, width: int):
    """``S^T @ table`` [width, d] for the sparse S with ``S[bags[i], latents[i]] = weights[i]``:
    a stable sort by latent, then one ``embedding_bag`` over ``table``'s rows."""
    latents_sorted, order = stable_sort(latents)
    return F.embedding_bag(
        bags[order],
        table,
        _bag_offsets(latents_sorted, width),
        mode="sum",
        per_sample_weights=weights[order],
    )


def _sampled_dots(a: Tensor, b: Tensor, bags: Tensor, latents: Tensor) -> Tensor:
    """``(a @ b.T)[bags[i], latents[i]]`` for every i (bags sorted): an SDDMM, O(nnz·d)."""
    if bags.numel() == 0:
        return a.new_zeros(0)
    crow = torch.cat([_bag_offsets(bags, a.shape[0]), bags.new_tensor([bags.numel()])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        pattern = torch.sparse_csr_tensor(
            crow, latents, a.new_zeros(bags.numel()), (a.shape[0], b.shape[0]),
            check_invariants=False,
        )  # fmt: skip
    return torch.sparse.sampled_addmm(pattern, a, b.t(), beta=0.0).values()


class _GatherDecode(torch.autograd.Function):
    """``out[g] = sum_{i: bags[i] = g} values[i] * W[latents[i]]`` with sparse gradients.

    Forward is one ``embedding_bag``; backward computes d(values) as sampled dot products and
    d(W) as a scatter of the output gradient's rows, both O(nnz·d), never a dense [B, width].
    """

    @staticmethod
    def forward(ctx, values, W, bags, latents, n_bags):
        out = F.embedding_bag(
            latents, W, _bag_offsets(bags, n_bags), mode="sum", per_sample_weights=values
        )
        ctx.save_for_backward(values, W, bags, latents)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # pyright: ignore[reportIncompatibleMethodOverride]
        values, W, bags, latents = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_values = grad_W = None
        if ctx.needs_input_grad[0]:
            grad_values = _sampled_dots(grad_out, W, bags, latents)
        if ctx.needs_input_grad[1]:
            grad_W = _scatter_rows(grad_out, bags, latents, values, W.shape[0])
        return grad_values, grad_W, None, None, None


def gather_decode(values: Tensor, W: Tensor, bags: Tensor, latents: Tensor, n_bags: int):
    """Sum of ``values[i] * W[latents[i]]`` per bag (``bags`` sorted ascending) [n_bags, d]."""
    if values.numel() * 8 > n_bags * W.shape[0]:
        # Dense enough (e.g. a ReLU SAE) that a matmul is cheaper than gathers.
        dense = values.new_zeros(n_bags, W.shape[0]).index_put((bags, latents), values)
        return dense @ W
    return _GatherDecode.apply(values, W, bags, latents, n_bags)


def sparse_decode(codes: SparseCodes, W_dec: Tensor) -> Tensor:
    """``codes.dense() @ W_dec`` as a gather: ``embedding_bag`` with per-entry weights."""
    return gather_decode(codes.values, W_dec, codes.rows, codes.latents, codes.n_rows)


class SparsePreActs(torch.autograd.Function):
    """Selected pre-activations ``(x - b_dec) @ W_enc[:, l] + b_enc[l]`` at (row, l), already
    computed densely without autograd, given their gradients sparsely.

    Backward costs O(nnz·d) instead of the two dense [B, width] x [.] matmuls autograd would
    run through the full pre-activation matrix (whose gradient is zero off the selection).
    """

    @staticmethod
    def forward(ctx, values, x, b_dec, W_enc, b_enc, rows, latents):
        x_cent = x - b_dec if b_dec is not None else x
        ctx.save_for_backward(x_cent, W_enc, rows, latents)
        ctx.has_b_dec, ctx.has_b_enc = b_dec is not None, b_enc is not None
        return values.clone()

    @staticmethod
    def backward(ctx, grad):  # pyright: ignore[reportIncompatibleMethodOverride]
        x_cent, W_enc, rows, latents = ctx.saved_tensors
        need_x, need_b_dec, need_W, need_b_enc = ctx.needs_input_grad[1:5]
        width = W_enc.shape[1]
        grad_x = grad_b_dec = grad_W = grad_b_enc = None
        if need_W:
            grad_W = _scatter_rows(x_cent, rows, latents, grad, width).t().contiguous()
        col_sum = None
        if need_b_enc or (need_b_dec and not need_x):
            col_sum = torch.zeros(width, dtype=grad.dtype, device=grad.device)
            col_sum.index_add_(0, latents, grad)
        if need_b_enc:
            grad_b_enc = col_sum
        if need_x:
            grad_x = gather_decode(grad, W_enc.t().contiguous(), rows, latents, x_cent.shape[0])
            if need_b_dec:
                grad_b_dec = -grad_x.sum(0)
        elif need_b_dec:
            grad_b_dec = -(W_enc @ col_sum)
        return None, grad_x, grad_b_dec, grad_W, grad_b_enc, None, None
