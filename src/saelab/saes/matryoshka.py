"""Matryoshka BatchTopK SAE: nested prefixes of the dictionary each reconstruct the input.

Selection is BatchTopK, once over the whole dictionary. The latents form nested groups
(``group_sizes``, individual sizes summing to ``width``); prefix g reconstructs with the first
g groups: r_g = b_dec + Σ_{h≤g} f[G_h] W_dec[G_h]. The three losses found in the originals:

* ``bussmann`` (bartbussmann/matryoshka_sae, seeds 000 and 001; the default): the mean over
  G+1 terms, the bias-only reconstruction r_0 = b_dec included, of the element-mean MSE;
  b_enc unused; aux loss unnormalised.
* ``official`` (dictionary_learning's MatryoshkaBatchTopKTrainer, which the paper names):
  per-prefix squared error summed over dimensions and averaged over the batch, weighted by
  w_g = 1/G and then averaged over g again (so each prefix counts 1/G², as coded); b_enc used;
  aux loss normalised by the residual's variance; b_dec initialised at the geometric median.
* ``saelens`` (sae_lens MatryoshkaBatchTopKTrainingSAE): the plain sum over prefixes of the
  summed-over-dimensions squared error.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.groups import resolve_group_sizes
from saelab.saes.batchtopk import BatchTopKSAE
from saelab.saes.config import SAEConfig
from saelab.saes.sparse import SparseCodes, gather_decode, stable_sort


class MatryoshkaSAE(BatchTopKSAE):
    arch = "matryoshka"
    group_bounds: list[tuple[int, int]]
    """[lo, hi) latents of each group, smallest first."""

    def __init__(self, cfg: SAEConfig):
        if not cfg.group_sizes:
            raise ValueError("a matryoshka SAE needs group_sizes")
        cfg.group_sizes = resolve_group_sizes(cfg.group_sizes, cfg.width)
        super().__init__(cfg)
        bounds, start = [], 0
        for size in cfg.group_sizes:
            bounds.append((start, start + size))
            start += size
        self.group_bounds = bounds

    def _group_contributions(self, codes: SparseCodes) -> Tensor:
        """Each group's decoded contribution (no bias) [B, G, d_out], from one gather whose
        bags are (token, group) pairs."""
        n_groups = len(self.group_bounds)
        starts = torch.tensor([lo for lo, _ in self.group_bounds[1:]], device=codes.latents.device)
        groups = torch.bucketize(codes.latents, starts, right=True)
        bags = codes.rows * n_groups + groups
        if bags.numel() > 1 and not bool((bags[1:] >= bags[:-1]).all()):
            bags, order = stable_sort(bags)
            codes = SparseCodes(
                codes.rows[order], codes.latents[order], codes.values[order], codes.n_rows,
                codes.width,
            )  # fmt: skip
        out = gather_decode(codes.values, self.W_dec, bags, codes.latents, codes.n_rows * n_groups)
        return out.view(codes.n_rows, n_groups, -1)

    def prefix_contributions(self, codes: SparseCodes) -> list[Tensor]:
        """Each group's decoded contribution (no bias), smallest group first."""
        return list(self._group_contributions(codes).unbind(1))

    def reconstruction_loss(self, codes: SparseCodes, target: Tensor):
        """The variant's prefix loss, and every prefix's reconstruction, smallest first (in
        training mode only the full reconstruction: the loss needs the prefixes' errors, not
        the [B, G, d] prefixes themselves)."""
        contributions = self._group_contributions(codes)  # [B, G, d_out]
        n_rows, n_groups, d_out = contributions.shape
        # sse[0]: the bias-only reconstruction's; sse[g]: prefix g's (summed over B and d)
        sse, prefixes = _PrefixErrors.apply(contributions, target, self.b_dec, not self.training)
        variant = self.cfg.loss
        if variant == "bussmann":
            loss = sse.sum() / (n_rows * d_out) / (n_groups + 1)
        elif variant == "official":
            loss = (sse[1:] / n_rows * (1.0 / n_groups)).sum() / n_groups
        else:
            loss = sse[1:].sum() / n_rows
        return loss, list(prefixes.unbind(1))


class _PrefixErrors(torch.autograd.Function):
    """Prefix reconstructions ``r_g = b_dec + C[:, 0] + ... + C[:, g-1]`` [B, G, d] of the
    group contributions ``C`` [B, G, d], and ``sse[g] = sum over tokens and dims of
    (target - r_g)^2`` for g = 0 (bias only) .. G. With ``all_prefixes=False`` only the full
    reconstruction r_G is returned ([B, 1, d]): no [B, G, d] prefix tensor is written.

    One running residual e_g = target - r_g [B, d] forward; backward walks it back from the
    last group (e_{g-1} = e_g + C_g), accumulating -2 * sum_{g' >= g} grad[g'] * e_g' for
    group g, instead of autograd through [B, G, d] cumsum / difference / square temporaries.
    """

    @staticmethod
    def forward(ctx, contributions, target, b_dec, all_prefixes=True):
        ctx.set_materialize_grads(False)
        n_groups = contributions.shape[1]
        e = target - b_dec
        sse = [torch.dot(e.reshape(-1), e.reshape(-1))]
        prefixes = torch.empty_like(contributions) if all_prefixes else None
        for g in range(n_groups):
            e.sub_(contributions[:, g])
            sse.append(torch.dot(e.reshape(-1), e.reshape(-1)))
            if prefixes is not None:
                torch.sub(target, e, out=prefixes[:, g])
        if prefixes is None:
            prefixes = (target - e)[:, None]
        ctx.all_prefixes = all_prefixes
        ctx.save_for_backward(contributions, e)
        return torch.stack(sse), prefixes

    @staticmethod
    def backward(ctx, grad_sse, grad_prefixes):  # pyright: ignore[reportIncompatibleMethodOverride]
        contributions, e = ctx.saved_tensors
        n_groups = contributions.shape[1]
        need_target, need_b_dec = ctx.needs_input_grad[1:3]
        # the full prefix only: its gradient enters at the last group and flows down unchanged
        grad_full = None
        if grad_prefixes is not None and not ctx.all_prefixes:
            grad_full, grad_prefixes = grad_prefixes, None
        # grad_c[:, g] = -(d loss / d e_g' summed over g' > g); built from the last group down,
        # each from the next: one fused op per group
        grad_c = torch.empty_like(contributions)
        weights: list[float] = []
        if grad_sse is not None:
            weights = (2 * grad_sse).tolist()
            e = e.clone()  # e_G, walked back to e_g
            torch.mul(e, -weights[n_groups], out=grad_c[:, -1])
        else:
            grad_c[:, -1].zero_()
        if grad_prefixes is not None:  # r_g = target - e_g: d loss / d e_g gets -grad_prefixes
            grad_c[:, -1].add_(grad_prefixes[:, -1])
        elif grad_full is not None:
            grad_c[:, -1].add_(grad_full[:, 0])
        for g in reversed(range(n_groups - 1)):
            if grad_sse is not None:
                e.add_(contributions[:, g + 1])  # e_{g+1}
                torch.add(grad_c[:, g + 1], e, alpha=-weights[g + 1], out=grad_c[:, g])
            else:
                grad_c[:, g].copy_(grad_c[:, g + 1])
            if grad_prefixes is not None:
                grad_c[:, g].add_(grad_prefixes[:, g])
        grad_e0 = -grad_c[:, 0]  # d loss / d e_0 (through every later e_g)
        if grad_sse is not None:
            e.add_(contributions[:, 0])  # e_0
            grad_e0.add_(e, alpha=weights[0])  # the bias-only term
        grad_b_dec = -grad_e0.sum(0) if need_b_dec else None
        grad_target = None
        if need_target:  # e_g depends on the target, r_g = b_dec + C[:, :g].sum(1) does not
            grad_target = grad_e0
            for given in (grad_prefixes, grad_full):
                if given is not None:
                    grad_target = grad_target + given.sum(1)
        return grad_c, grad_target, grad_b_dec, None
