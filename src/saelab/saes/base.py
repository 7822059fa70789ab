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
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Matryoshka / reconstruction loss variants found in the originals (see docs/methods.md).
LOSS_VARIANTS = ("bussmann", "official", "saelens")


@dataclass
class SAEConfig:
    """Everything needed to rebuild an SAE or transcoder (saved as part of ``cfg.json``)."""

    arch: str
    """Registered architecture: ``topk``, ``batchtopk``, ``matryoshka``, ``relu``, ``jumprelu``."""
    d_in: int
    """Width of the input hook's vectors (read from the cache, never assumed)."""
    width: int
    """Number of latents."""
    k: int = 32
    """Active latents per token (TopK), or on average per token (BatchTopK, Matryoshka)."""
    d_out: int | None = None
    """Width of the reconstruction target; ``None`` means ``d_in`` (an SAE, not a transcoder)."""
    hook_name: str = ""
    """Hook read as input, e.g. ``blocks.6.hook_resid_pre``."""
    target_hook_name: str | None = None
    """Transcoders: the hook reconstructed, e.g. ``blocks.6.hook_mlp_out``."""
    group_sizes: list[int] | None = None
    """Matryoshka: sizes of the nested groups, individual (not cumulative); they sum to width."""
    loss: str = "bussmann"
    """Loss variant (``bussmann``, ``official``, ``saelens``); see :mod:`saelab.saes.matryoshka`."""
    use_encoder_bias: bool | None = None
    """Add ``b_enc`` before the ReLU. ``None``: the variant's choice (bussmann: no)."""
    subtract_decoder_bias: bool | None = None
    """Encode ``x - b_dec``. ``None``: yes for SAEs, no for transcoders (b_dec lives in the
    target space)."""
    normalize_input: bool = False
    """Per-token standardisation (x - mean) / (std + 1e-5), undone on the output (SAE-Lens
    ``layer_norm``)."""
    l1_coeff: float = 0.0
    """L1 penalty on the codes (the standard ReLU SAE's sparsity; 0 for TopK-style SAEs)."""
    aux_k: int = 512
    """Dead latents used by the aux-k loss per token (capped at the number of dead latents)."""
    aux_penalty: float = 1 / 32
    """Weight of the aux-k loss."""
    dead_after_tokens: int = 20 * 4096
    """A latent that has not fired for this many training tokens is dead (Bart: 20 batches of
    4096; dictionary_learning: 10M)."""
    threshold_ema: float = 0.01
    """BatchTopK inference threshold: theta <- (1 - ema) theta + ema * min selected activation."""
    threshold_start_step: int = 0
    """Step from which the threshold is updated (dictionary_learning: 1000)."""
    b_dec_init: str = "zeros"
    """``zeros`` (Bart) or ``geometric_median`` of the first batch (dictionary_learning)."""
    seed: int = 0
    dtype: str = "float32"
    model_name: str = ""
    """Model the SAE was trained on (metadata for SAE-Lens)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form metadata kept in ``cfg.json`` (e.g. the training run's name)."""

    def __post_init__(self):
        if self.loss not in LOSS_VARIANTS:
            raise ValueError(f"loss {self.loss!r} is not allowed; use one of {LOSS_VARIANTS}")
        if self.k < 1 or self.k > self.width:
            raise ValueError(f"k = {self.k} must be in 1..width ({self.width})")
        if self.b_dec_init not in ("zeros", "geometric_median"):
            raise ValueError(
                f"b_dec_init {self.b_dec_init!r} is not allowed; use zeros or geometric_median"
            )
        if self.d_out is None:
            self.d_out = self.d_in

    @property
    def is_transcoder(self) -> bool:
        return self.target_hook_name is not None or self.d_out != self.d_in

    @property
    def encoder_bias(self) -> bool:
        if self.use_encoder_bias is not None:
            return self.use_encoder_bias
        return self.loss != "bussmann" or self.is_transcoder

    @property
    def decoder_bias_on_input(self) -> bool:
        if self.subtract_decoder_bias is not None:
            return self.subtract_decoder_bias
        return not self.is_transcoder

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown SAE config key(s) {unknown}; allowed: {sorted(names)}")
        return cls(**data)


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


class EncodeOutput(NamedTuple):
    codes: SparseCodes
    pre_acts: Tensor
    """ReLU'd pre-activations [B, width] (the aux loss picks dead latents from these)."""


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
    """Element-global FVU of this batch (a cheap progress number; see saelab.evaluate)."""
    prefix_outputs: list[Tensor] | None = None
    """Matryoshka: reconstructions of every nested prefix, smallest first."""


def sparse_decode(codes: SparseCodes, W_dec: Tensor) -> Tensor:
    """``codes.dense() @ W_dec`` as a gather: ``embedding_bag`` with per-entry weights."""
    counts = torch.bincount(codes.rows, minlength=codes.n_rows)
    offsets = torch.zeros(codes.n_rows, dtype=torch.long, device=codes.rows.device)
    offsets[1:] = torch.cumsum(counts, 0)[:-1]
    return F.embedding_bag(
        codes.latents, W_dec, offsets, mode="sum", per_sample_weights=codes.values
    )


class SAE(nn.Module):
    """Base class: parameters, normalisation, decoding, decoder-norm upkeep, aux loss.

    Subclasses implement :meth:`select` (which entries of the ReLU pre-activations stay active)
    and may override :meth:`reconstruction_loss`.
    """

    arch = "base"

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        generator = torch.Generator().manual_seed(cfg.seed)
        d_in, d_out, width = cfg.d_in, cfg.d_out, cfg.width
        W_enc = torch.empty(d_in, width)
        # kaiming-uniform as in nn.Linear / the originals, drawn from the SAE's own seed
        bound = 1 / math.sqrt(width)
        W_enc.uniform_(-bound, bound, generator=generator)
        if cfg.is_transcoder:
            # Transcoders cannot tie: the decoder lives in another space (seed 001).
            W_dec = torch.empty(width, d_out).uniform_(-bound, bound, generator=generator)
        else:
            W_dec = W_enc.T.clone()
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
        self.W_enc = nn.Parameter(W_enc)
        self.W_dec = nn.Parameter(W_dec)
        self.b_enc = nn.Parameter(torch.zeros(width), requires_grad=cfg.encoder_bias)
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        # Tokens since each latent last fired: the dead counter of the aux loss.
        self.register_buffer("tokens_since_fired", torch.zeros(width, dtype=torch.long))

    # ------------------------------------------------------------------ encode / decode
    def _normalize(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        if not self.cfg.normalize_input:
            return x, None, None
        mean = x.mean(dim=-1, keepdim=True)
        std = (x - mean).std(dim=-1, keepdim=True)
        return (x - mean) / (std + 1e-5), mean, std

    def pre_activations(self, x: Tensor) -> Tensor:
        """ReLU((x - b_dec) W_enc + b_enc), with the config's bias choices; x is normalised."""
        if self.cfg.decoder_bias_on_input:
            x = x - self.b_dec
        pre = x @ self.W_enc
        if self.cfg.encoder_bias:
            pre = pre + self.b_enc
        return F.relu(pre)

    def select(self, acts: Tensor) -> SparseCodes:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, x: Tensor) -> EncodeOutput:
        """Sparse codes of ``x`` [B, d_in] (normalised first if configured)."""
        x, _, _ = self._normalize(x)
        acts = self.pre_activations(x)
        return EncodeOutput(self.select(acts), acts)

    def decode(self, codes: SparseCodes) -> Tensor:
        """Reconstruction in the normalised space (undo with :meth:`denormalize`)."""
        return sparse_decode(codes, self.W_dec) + self.b_dec

    def reconstruct(self, x: Tensor) -> Tensor:
        """Encode and decode, in the scale of ``x``: the map spliced into a model."""
        xn, mean, std = self._normalize(x)
        out = self.decode(self.select(self.pre_activations(xn)))
        return out * (std + 1e-5) + mean if mean is not None else out

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
        if x.shape[-1] != self.cfg.d_in or target.shape[-1] != self.cfg.d_out:
            raise ValueError(
                f"expected input [B, {self.cfg.d_in}] and target [B, {self.cfg.d_out}], got "
                f"{tuple(x.shape)} and {tuple(target.shape)}"
            )
        xn, x_mean, x_std = self._normalize(x)
        if self.cfg.is_transcoder and self.cfg.normalize_input:
            target_n, t_mean, t_std = self._normalize(target)
        else:
            target_n, t_mean, t_std = (xn, x_mean, x_std) if target is x else (target, None, None)
        acts = self.pre_activations(xn)
        codes = self.select(acts)
        recon, prefix_outputs = self.reconstruction_loss(codes, target_n)
        output = prefix_outputs[-1] if prefix_outputs else self.decode(codes)
        aux = self.aux_loss(acts, target_n - output.detach()) if self.training else recon * 0
        sparsity = self.cfg.l1_coeff * codes.values.abs().sum() / codes.n_rows
        with torch.no_grad():
            fvu = (target_n - output).pow(2).mean() / target_n.var().clamp_min(1e-8)
            if self.training:
                self._update_dead_counter(codes)
        if t_mean is not None:
            output = output * (t_std + 1e-5) + t_mean
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

    def _update_dead_counter(self, codes: SparseCodes) -> None:
        fired = torch.zeros(self.cfg.width, dtype=torch.bool, device=codes.latents.device)
        fired[codes.latents] = True
        self.tokens_since_fired += codes.n_rows
        self.tokens_since_fired[fired] = 0

    def aux_loss(self, acts: Tensor, residual: Tensor) -> Tensor:
        """Aux-k: the top ``aux_k`` dead latents per token reconstruct the residual.

        ``bussmann``: penalty x MSE over all elements; ``official``/``saelens``: summed squared
        error normalised by the residual's variance (dictionary_learning's AuxK).
        """
        dead = self.dead_mask()
        n_dead = int(dead.sum())
        if n_dead == 0:
            return acts.new_zeros(())
        k_aux = min(self.cfg.aux_k, n_dead)
        masked = acts.masked_fill(~dead, 0.0)
        values, latents = masked.topk(k_aux, dim=-1, sorted=False)
        rows = torch.arange(acts.shape[0], device=acts.device).repeat_interleave(k_aux)
        codes = SparseCodes(
            rows, latents.reshape(-1), values.reshape(-1), acts.shape[0], acts.shape[1]
        )
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
