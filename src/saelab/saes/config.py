"""An SAE's configuration: architecture, sizes, loss variant, initialisation, normalisation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from saelab.runtime import dataclass_from_dict

#: Matryoshka / reconstruction loss variants found in the originals (see docs/methods.md).
LOSS_VARIANTS = ("bussmann", "official", "saelens")
#: Encoder initialisations (see SAEConfig.encoder_init).
ENCODER_INITS = ("kaiming", "decoder_transpose")
#: Largest dense block of pre-activations (tokens x latents, fp32 elements: 256 MB) that an


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
    """Per-token standardisation (x - mean) / (std + 1e-5), undone as out * std + mean (SAE-Lens
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
    center_input: bool = False
    """Transcoders: the encoder reads ``x - c``, with ``c`` (buffer ``input_center``) the
    geometric median of the first training batch's inputs, folded into ``b_enc`` when training
    ends (b_enc <- b_enc - c W_enc, c <- 0), so the saved map is a plain transcoder. An SAE
    centres with ``b_dec`` instead. Gemma's residual stream carries a large constant offset;
    uncentred, it dominates every encoder column's gradient and switches most latents off."""
    encoder_init: str = "kaiming"
    """``kaiming`` (Bart): W_enc kaiming-uniform, W_dec its transpose with rows scaled to unit
    norm (so the encoder's columns stay ~1/sqrt(3 width) small); ``decoder_transpose``
    (dictionary_learning, SAE-Lens): unit-norm decoder rows and W_enc = W_dec^T exactly. A
    transcoder's decoder is drawn on its own either way (its own space); with
    ``decoder_transpose`` its encoder is W_dec^T when d_in = d_out, else unit-norm columns."""
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
        if self.encoder_init not in ENCODER_INITS:
            raise ValueError(
                f"encoder_init {self.encoder_init!r} is not allowed; use one of {ENCODER_INITS}"
            )
        if self.d_out is None:
            self.d_out = self.d_in
        if self.center_input and (self.decoder_bias_on_input or not self.encoder_bias):
            raise ValueError(
                "center_input needs an encoder bias to fold into and no decoder bias on the "
                "input (a transcoder's default); an SAE centres its input with b_dec"
            )
        if self.normalize_input and self.is_transcoder:
            # seed 001 standardised the target with its own statistics, which are unknown at
            # inference (it de-normalised with the source's instead, a bug); refuse it here.
            raise ValueError(
                "normalize_input is not allowed for transcoders: the target's per-token "
                "statistics are unknown at inference"
            )

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
        return dataclass_from_dict(cls, data, "SAE config")
