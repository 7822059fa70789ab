"""What every SAE architecture shares: config, parameters, sparse codes, the decoder, the aux loss.

An SAE maps ``x`` [B, d_in] to sparse codes ``f`` [B, width] and decodes ``f @ W_dec + b_dec``
[B, d_out]. A transcoder is the same object with a different target (``d_out`` and
``target_hook_name`` set): it reads one hook and reconstructs another.

Codes stay sparse (:class:`SparseCodes`: the (row, latent, value) of every active entry) from
selection to decoding, so the decoder is an ``embedding_bag`` gather costing O(nnz·d) rather
than a dense O(B·width·d) matmul; this is what makes CPU training fast.
"""

from __future__ import annotations

import math
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saelab.metrics import fvu_element_global
from saelab.saes.config import SAEConfig
from saelab.saes.sparse import SparseCodes, SparsePreActs, sparse_decode, stable_sort

#: inference encode holds. Wider ones stream the encoder's columns in blocks of latents
#: (:meth:`SAE.infer_codes`): a width-1M SAE on 4096 tokens would otherwise hold 16 GB.
STREAM_ELEMENTS = 2**26


class EncodeOutput(NamedTuple):
    codes: SparseCodes
    pre_acts: Tensor | None
    """ReLU'd pre-activations [B, width] (the aux loss picks dead latents from these); None
    when an inference encode streamed them (see :data:`STREAM_ELEMENTS`)."""


class ForwardOutput(NamedTuple):
    """One training or evaluation step's outputs; losses are scalars."""

    output: Tensor
    """Reconstruction of the target [B, d_out], in the input's scale."""
    codes: SparseCodes
    loss: Tensor
    recon_loss: Tensor
    aux_loss: Tensor
    sparsity_loss: Tensor
    fvu: Tensor
    """Element-global FVU of this batch (a cheap progress number; see saelab.metrics)."""
    prefix_outputs: list[Tensor] | None = None
    """Matryoshka: reconstructions of every nested prefix, smallest first (in training mode
    only the full one: the loss needs the prefixes' errors, not the prefixes)."""


class SAE(nn.Module):
    """Base class: parameters, normalisation, decoding, decoder-norm upkeep, aux loss.

    Subclasses implement :meth:`select` (which entries of the ReLU pre-activations stay active)
    and may override :meth:`reconstruction_loss`.
    """

    arch = "base"
    #: Train through :class:`SparsePreActs` (sparse encoder gradients). Off for the ReLU SAE,
    #: whose codes are dense enough that autograd's dense matmuls are cheaper.
    sparse_backward = True
    #: dtype of the encoder GEMM (saelab.precision): bfloat16 casts x and W_enc for the product
    #: only, as autocast does; parameters, gradients and Adam state stay in their own dtype
    #: (float32 masters), and the selected codes' values are float32. Set per instance.
    compute_dtype: torch.dtype = torch.float32
    # Buffers (registered in __init__), declared for type checkers.
    tokens_since_fired: Tensor
    input_center: Tensor

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        generator = torch.Generator().manual_seed(cfg.seed)
        d_in, d_out, width = cfg.d_in, cast(int, cfg.d_out), cfg.width  # set by SAEConfig
        W_enc = torch.empty(d_in, width)
        # kaiming-uniform as in nn.Linear / the originals, drawn from the SAE's own seed
        bound = 1 / math.sqrt(width)
        W_enc.uniform_(-bound, bound, generator=generator)
        if cfg.is_transcoder:
            # Transcoders cannot tie: the decoder lives in another space (seed 001).
            W_dec = torch.empty(width, d_out).uniform_(-bound, bound, generator=generator)
        else:
            # contiguous: a clone of the transposed view would keep its column-major strides,
            # and every decoder-row gather would then stride through memory
            W_dec = W_enc.T.contiguous()
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
        if cfg.encoder_init == "decoder_transpose":
            if d_in == d_out:
                W_enc = W_dec.T.clone()
            else:
                W_enc = W_enc / W_enc.norm(dim=0, keepdim=True).clamp_min(1e-8)
        self.W_enc = nn.Parameter(W_enc)
        self.W_dec = nn.Parameter(W_dec)
        self.b_enc = nn.Parameter(torch.zeros(width), requires_grad=cfg.encoder_bias)
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        # Tokens since each latent last fired: the dead counter of the aux loss.
        self.register_buffer("tokens_since_fired", torch.zeros(width, dtype=torch.long))
        if cfg.center_input:
            self.register_buffer("input_center", torch.zeros(d_in))
        #: k of training-mode selection while the trainer anneals it (None: cfg.k).
        self.k_train: int | None = None

    @property
    def active_k(self) -> int:
        """k of this selection: the annealed ``k_train`` in training mode, else ``cfg.k``."""
        if self.training and self.k_train is not None:
            return self.k_train
        return self.cfg.k

    # ------------------------------------------------------------------ encode / decode
    def _normalize(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        if not self.cfg.normalize_input:
            return x, None, None
        mean = x.mean(dim=-1, keepdim=True)
        std = (x - mean).std(dim=-1, keepdim=True)
        return (x - mean) / (std + 1e-5), mean, std

    def _encoder_gemm(self, x: Tensor, b_enc: Tensor | None) -> Tensor:
        """``x @ W_enc (+ b_enc)`` in :attr:`compute_dtype` (the result stays in it)."""
        dtype = self.compute_dtype
        if dtype == x.dtype == self.W_enc.dtype:
            return torch.addmm(b_enc, x, self.W_enc) if b_enc is not None else x @ self.W_enc
        pre = x.to(dtype) @ self.W_enc.to(dtype)
        return pre.add_(b_enc.to(dtype)) if b_enc is not None else pre

    def pre_activations(self, x: Tensor) -> Tensor:
        """ReLU((x - b_dec) W_enc + b_enc), with the config's bias choices; x is normalised.
        Float32 whatever :attr:`compute_dtype` the GEMM ran in."""
        offset = self._input_offset()
        if offset is not None:
            x = x - offset
        if self.compute_dtype == x.dtype == self.W_enc.dtype:
            pre = x @ self.W_enc
            if self.cfg.encoder_bias:
                pre = pre + self.b_enc
            return F.relu(pre)
        pre = x.to(self.compute_dtype) @ self.W_enc.to(self.compute_dtype)
        pre = pre.to(self.W_enc.dtype)
        if self.cfg.encoder_bias:
            pre = pre + self.b_enc
        return F.relu(pre)

    def _input_offset(self) -> Tensor | None:
        """What the encoder subtracts from its (normalised) input: b_dec, the input centre, or
        nothing."""
        if self.cfg.decoder_bias_on_input:
            return self.b_dec
        if self.cfg.center_input:
            return self.input_center
        return None

    @torch.no_grad()
    def fold_input_center(self) -> None:
        """b_enc <- b_enc - c W_enc and c <- 0: the same map without the input centre."""
        if self.cfg.center_input:
            self.b_enc -= self.input_center @ self.W_enc
            self.input_center.zero_()

    def select(self, acts: Tensor) -> SparseCodes:  # pragma: no cover - abstract
        raise NotImplementedError

    def select_block(self, acts: Tensor, lo: int) -> SparseCodes:
        """Inference codes of latents ``lo .. lo + acts.shape[1]`` from their ReLU'd
        pre-activations (latent indices relative to ``lo``), for rules that decide each entry
        on its own (ReLU, thresholds); TopK overrides :meth:`infer_codes` instead."""
        return self.select(acts)

    def streams(self, n_rows: int) -> bool:
        """Whether an inference encode of ``n_rows`` tokens streams blocks of latents."""
        return not self.training and n_rows * self.cfg.width > STREAM_ELEMENTS

    def _pre_activation_blocks(self, xn: Tensor):
        """(first latent, ReLU'd pre-activations of a block of latents) of the normalised
        ``xn``, block by block, each at most ``STREAM_ELEMENTS`` entries."""
        x = xn - self.b_dec if self.cfg.decoder_bias_on_input else xn
        block = max(1, STREAM_ELEMENTS // max(xn.shape[0], 1))
        for lo in range(0, self.cfg.width, block):
            hi = min(self.cfg.width, lo + block)
            pre = x @ self.W_enc[:, lo:hi]
            if self.cfg.encoder_bias:
                pre += self.b_enc[lo:hi]
            yield lo, pre.clamp_min_(0)

    @torch.no_grad()
    def infer_codes(self, xn: Tensor) -> SparseCodes:
        """Inference codes of the normalised ``xn``: ``select(pre_activations(xn))``, computed
        block of latents by block when the dense pre-activations would exceed
        ``STREAM_ELEMENTS`` (same codes, bounded memory)."""
        if not self.streams(xn.shape[0]):
            return self.select(self.pre_activations(xn))
        parts = []
        for lo, acts in self._pre_activation_blocks(xn):
            part = self.select_block(acts, lo)
            parts.append(part._replace(latents=part.latents + lo))
        rows = torch.cat([part.rows for part in parts])
        rows, order = stable_sort(rows)  # row-major; latents ascend within a row
        latents = torch.cat([part.latents for part in parts])[order]
        values = torch.cat([part.values for part in parts])[order]
        return SparseCodes(rows, latents, values, xn.shape[0], self.cfg.width)

    def encode(self, x: Tensor) -> EncodeOutput:
        """Sparse codes of ``x`` [B, d_in] (normalised first if configured); in eval mode on a
        wide SAE the pre-activations are streamed and ``pre_acts`` is None."""
        x, _, _ = self._normalize(x)
        if self.streams(x.shape[0]):
            return EncodeOutput(self.infer_codes(x), None)
        acts = self.pre_activations(x)
        return EncodeOutput(self.select(acts), acts)

    def _encode_fast(self, xn: Tensor):
        """Codes of the normalised ``xn`` whose values carry gradients, the pre-activations
        (no gradient on the sparse path) and how to attach gradients to other codes drawn
        from them (the aux loss's); ``attach`` is None on the dense path.

        On the sparse path the pre-activations are returned *without* the ReLU: every
        selection keeps positive entries only (``select``, the aux loss's ``values > 0``), so
        the clamp would be a pass over B x width values that changes no result. They are in
        :attr:`compute_dtype`; the codes' values are always in the parameters' dtype.
        """
        if not self.sparse_backward:
            acts = self.pre_activations(xn)
            return self.select(acts), acts, None
        b_dec = self._input_offset()
        b_enc = self.b_enc if self.cfg.encoder_bias else None
        with torch.no_grad():
            x_cent = xn - b_dec if b_dec is not None else xn
            acts = self._encoder_gemm(x_cent, b_enc)
        dtype = self.W_enc.dtype

        def attach(codes: SparseCodes) -> SparseCodes:
            values = codes.values.to(dtype)
            if torch.is_grad_enabled():
                values = SparsePreActs.apply(
                    values, xn, b_dec, self.W_enc, b_enc, codes.rows, codes.latents
                )
            return codes._replace(values=values)

        return attach(self.select(acts)), acts, attach

    def decode(self, codes: SparseCodes) -> Tensor:
        """Reconstruction in the normalised space (undo with :meth:`denormalize`)."""
        return sparse_decode(codes, self.W_dec) + self.b_dec

    def reconstruct(self, x: Tensor) -> Tensor:
        """Encode and decode, in the scale of ``x``: the map spliced into a model."""
        if x.ndim != 2 or x.shape[-1] != self.cfg.d_in:
            raise ValueError(f"expected input [B, {self.cfg.d_in}], got {tuple(x.shape)}")
        xn, mean, std = self._normalize(x)
        if self.streams(x.shape[0]) and not torch.is_grad_enabled():
            codes = self.infer_codes(xn)
        else:
            codes = self._encode_fast(xn)[0]
        out = self.decode(codes)
        return out * std + mean if mean is not None and std is not None else out

    # ------------------------------------------------------------------ losses
    def forward(self, x: Tensor, target: Tensor | None = None) -> ForwardOutput:
        """Training/eval step: codes, reconstruction of ``target`` (``x`` for an SAE), losses.

        Losses are computed in the normalised space when ``normalize_input`` is set (as Bart's
        code does); ``output`` is returned in the original scale.
        """
        if target is None:
            if self.cfg.is_transcoder:
                raise ValueError("a transcoder needs the target activations")
            target = x
        if (
            x.ndim != 2
            or target.shape != (x.shape[0], self.cfg.d_out)
            or x.shape[-1] != self.cfg.d_in
        ):
            raise ValueError(
                f"expected input [B, {self.cfg.d_in}] and target [B, {self.cfg.d_out}], got "
                f"{tuple(x.shape)} and {tuple(target.shape)}"
            )
        xn, x_mean, x_std = self._normalize(x)
        if target is x or not self.cfg.normalize_input:
            target_n, t_mean, t_std = (xn, x_mean, x_std) if target is x else (target, None, None)
        else:
            # A separate target (a transcoder's, or an SAE's passed explicitly) is
            # standardised with its own statistics.
            target_n, t_mean, t_std = self._normalize(target)
        codes, acts, attach = self._encode_fast(xn)
        recon, prefix_outputs = self.reconstruction_loss(codes, target_n)
        output = prefix_outputs[-1] if prefix_outputs else self.decode(codes)
        if self.training:
            # The references' order (dictionary_learning's MatryoshkaBatchTopKTrainer.loss,
            # bartbussmann's sae.py): count this batch's firings first, then pick the dead set,
            # so a dead latent that fires now is out of the aux loss and one that reaches the
            # limit now is in it.
            self._update_dead_counter(codes)
            aux = self.aux_loss(acts, target_n - output.detach(), attach)
        else:
            aux = recon * 0
        sparsity = self.cfg.l1_coeff * codes.values.abs().sum() / codes.n_rows
        with torch.no_grad():
            fvu = fvu_element_global(target_n, output, floor=1e-8)
        if t_mean is not None and t_std is not None:
            output = output * t_std + t_mean
        return ForwardOutput(
            output, codes, recon + aux + sparsity, recon, aux, sparsity, fvu, prefix_outputs
        )

    def reconstruction_loss(self, codes: SparseCodes, target: Tensor):
        """Loss of the full reconstruction; returns (loss, prefix outputs or None).

        ``bussmann``: mean over all elements; ``official``/``saelens``: squared error summed
        over dimensions, mean over the batch.
        """
        output = self.decode(codes)
        return self._squared_error(output, target), [output]

    def _squared_error(self, output: Tensor, target: Tensor) -> Tensor:
        if self.cfg.loss == "bussmann":
            return (output - target).pow(2).mean()
        return (output - target).pow(2).sum(dim=-1).mean()

    def dead_mask(self) -> Tensor:
        return self.tokens_since_fired >= self.cfg.dead_after_tokens

    @torch.no_grad()
    def _update_dead_counter(self, codes: SparseCodes) -> None:
        fired = torch.zeros(self.cfg.width, dtype=torch.bool, device=codes.latents.device)
        fired[codes.latents] = True
        self.tokens_since_fired += codes.n_rows
        self.tokens_since_fired[fired] = 0

    def aux_loss(self, acts: Tensor, residual: Tensor, attach=None) -> Tensor:
        """Aux-k: the top ``aux_k`` dead latents per token reconstruct the residual.

        ``acts`` are the ReLU'd pre-activations [B, width]; ``attach`` (from the sparse
        training path) gives the chosen entries their gradients when ``acts`` has none.
        ``bussmann``: penalty x MSE over all elements; ``official``/``saelens``: summed squared
        error normalised by the residual's variance (dictionary_learning's AuxK).
        """
        dead = self.dead_mask()
        n_dead = int(dead.sum())
        if n_dead == 0:
            return acts.new_zeros(())
        k_aux = min(self.cfg.aux_k, n_dead)
        dead_latents = dead.nonzero().squeeze(1)
        # Only the dead columns: a [B, n_dead] top-k, not a masked copy of all of acts.
        values, picked = acts.index_select(1, dead_latents).topk(k_aux, dim=-1, sorted=False)
        latents = dead_latents[picked.reshape(-1)]
        rows = torch.arange(acts.shape[0], device=acts.device).repeat_interleave(k_aux)
        codes = SparseCodes(rows, latents, values.reshape(-1), acts.shape[0], acts.shape[1])
        codes = codes.select(codes.values > 0)  # a ReLU'd zero passes no gradient
        if attach is not None:
            codes = attach(codes)
        aux_out = sparse_decode(codes, self.W_dec)
        if not aux_out.abs().sum() > 0:
            return acts.new_zeros(())
        if self.cfg.loss == "bussmann":
            return self.cfg.aux_penalty * (aux_out - residual).pow(2).mean()
        err = (aux_out - residual).pow(2).sum(dim=-1).mean()
        variance = (residual - residual.mean(dim=0)).pow(2).sum(dim=-1).mean()
        return self.cfg.aux_penalty * torch.nan_to_num(err / variance)

    # ------------------------------------------------------------------ decoder norm
    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Drop the gradient component along each (unit) decoder row: rows stay on the sphere."""
        if self.W_dec.grad is None:
            return
        rows = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
        parallel = (self.W_dec.grad * rows).sum(dim=1, keepdim=True)
        self.W_dec.grad -= parallel * rows

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    # ------------------------------------------------------------------ misc
    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def extra_repr(self) -> str:
        c = self.cfg
        return f"arch={c.arch}, d_in={c.d_in}, width={c.width}, k={c.k}, d_out={c.d_out}"
