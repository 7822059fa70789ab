"""SAEs on disk in SAE-Lens format (``cfg.json`` + ``sae_weights.safetensors``), both ways.

``save_sae`` writes what ``sae_lens.SAE.load_from_disk`` loads, mapping each architecture to its
SAE-Lens equivalent (TopK -> ``topk``; BatchTopK and Matryoshka, whose inference rule is a
threshold, -> ``jumprelu`` with θ on every latent; ReLU -> ``standard``; transcoders ->
``transcoder`` / ``jumprelu_transcoder``), with the ``sae_lens_version`` and ``metadata``
(model, hook, output hook) that SAE-Lens 6 reads: without the version SAE-Lens takes the file
for a pre-6.0 config and drops the metadata. saelab's own config rides along under the
``saelab`` key, which SAE-Lens ignores, so ``load_sae`` restores the exact saelab object.

``load_sae`` also reads SAEs that SAE-Lens wrote, and :func:`sae_from_saelens` converts a
loaded ``sae_lens`` SAE (a pretrained release, see :mod:`saelab.saes.pretrained`): both go
through :func:`_from_saelens_parts`, which encodes and decodes exactly as SAE-Lens does.
Every analysis reads SAEs through ``load_sae`` and never knows where one came from.
"""

from __future__ import annotations

import json
import os
from functools import cache
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load_file, save_file

from saelab.saes import SAE, SAEConfig, build_sae

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
STATE_NAME = "saelab_state.safetensors"

_TO_SAELENS = {"topk": "topk", "batchtopk": "jumprelu", "matryoshka": "jumprelu",
               "relu": "standard", "jumprelu": "jumprelu"}  # fmt: skip
_TRANSCODER_TO_SAELENS = {"relu": "transcoder", "batchtopk": "jumprelu_transcoder",
                          "matryoshka": "jumprelu_transcoder", "jumprelu": "jumprelu_transcoder"}  # fmt: skip
_FROM_SAELENS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu",
                 "transcoder": "relu", "jumprelu_transcoder": "jumprelu"}  # fmt: skip
#: Weights saelab reads from an SAE-Lens state dict; any other key (W_skip of a skip
#: transcoder, a finetuning scaling factor, ...) changes the computation and is refused.
_SAELENS_WEIGHTS = {"W_enc", "W_dec", "b_enc", "b_dec", "threshold", "log_threshold"}
#: The oldest SAE-Lens whose cfg.json layout (``metadata``) saelab writes.
_MIN_SAELENS_VERSION = "6.0.0"


class SAELoadError(RuntimeError):
    """An SAE directory or release that cannot be loaded, with what to do about it."""


@cache
def saelens_version() -> str:
    """The installed SAE-Lens version (written into ``cfg.json``), without importing it."""
    try:
        return importlib_metadata.version("sae-lens")
    except importlib_metadata.PackageNotFoundError:
        return _MIN_SAELENS_VERSION


def _threshold_vector(sae: SAE) -> torch.Tensor | None:
    threshold = getattr(sae, "threshold", None)
    if threshold is None:
        return None
    threshold = threshold.detach().clamp_min(0).float()
    return threshold.expand(sae.cfg.width).clone() if threshold.ndim == 0 else threshold.clone()


def saelens_cfg(sae: SAE) -> dict[str, Any]:
    """The SAE-Lens ``cfg.json`` of ``sae`` (plus saelab's own config under ``saelab``).

    ``sae_lens_version`` is written at the top level and in ``metadata``: SAE-Lens 6's
    ``handle_config_defaulting`` treats a config without it as pre-6.0 and rebuilds
    ``metadata`` from top-level keys, losing the hook and model names.
    """
    cfg = sae.cfg
    table = _TRANSCODER_TO_SAELENS if cfg.is_transcoder else _TO_SAELENS
    if cfg.arch not in table:
        raise SAELoadError(
            f"a {cfg.arch} {'transcoder' if cfg.is_transcoder else 'SAE'} has no SAE-Lens "
            f"equivalent; SAE-Lens-loadable ones: {sorted(table)}"
        )
    version = saelens_version()
    out: dict[str, Any] = {
        "architecture": table[cfg.arch],
        "d_in": cfg.d_in,
        "d_sae": cfg.width,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": bool(cfg.decoder_bias_on_input),
        "normalize_activations": "layer_norm" if cfg.normalize_input else "none",
        "reshape_activations": "hook_z" if cfg.hook_name.endswith("hook_z") else "none",
        "sae_lens_version": version,
        "metadata": {
            "model_name": cfg.model_name,
            "hook_name": cfg.hook_name,
            "hook_name_out": cfg.target_hook_name,
            "hook_head_index": None,
            "sae_lens_version": version,
            "sae_lens_training_version": None,
            "trained_with": "saelab",
        },
        "saelab": {"config": cfg.to_dict()},
    }
    if cfg.arch == "topk":
        out["k"] = cfg.k
    if cfg.is_transcoder:
        out["d_out"] = cfg.d_out
    return out


def save_sae(sae: SAE, out_dir: str | os.PathLike) -> Path:
    """Write ``sae`` to ``out_dir`` (created if needed) in SAE-Lens format."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = saelens_cfg(sae)
    weights = {
        "W_enc": sae.W_enc.detach(),
        "W_dec": sae.W_dec.detach(),
        # An unused b_enc is all zeros, so SAE-Lens (which always adds it) computes the same.
        "b_enc": sae.b_enc.detach() if sae.cfg.encoder_bias else torch.zeros_like(sae.b_enc),
        "b_dec": sae.b_dec.detach(),
    }
    threshold = _threshold_vector(sae)
    if threshold is not None:
        weights["threshold"] = threshold
    save_file({k: v.contiguous().cpu().float() for k, v in weights.items()}, out_dir / WEIGHTS_NAME)
    state = {name: buf.detach().cpu() for name, buf in sae.named_buffers()}
    save_file({k: v.contiguous() for k, v in state.items()}, out_dir / STATE_NAME)
    (out_dir / CFG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
    return out_dir


def _config_from_saelens(raw: dict[str, Any], where: str, extra: dict[str, Any]) -> SAEConfig:
    """saelab's config of an SAE-Lens config dict (6.x layout, or pre-6.0 top-level keys)."""
    architecture = raw.get("architecture", "standard")
    arch = _FROM_SAELENS.get(architecture)
    if arch is None:
        raise SAELoadError(
            f"{where}: SAE-Lens architecture {architecture!r} is not supported; "
            f"supported: {sorted(_FROM_SAELENS)}"
        )
    norm = raw.get("normalize_activations") or "none"
    if norm not in ("none", "layer_norm"):
        raise SAELoadError(
            f"{where}: normalize_activations {norm!r} is not supported; saelab computes 'none' "
            "and 'layer_norm' (SAE-Lens folds 'expected_average_only_in' into the weights "
            "when the release lists its norm scaling factor)"
        )
    if raw.get("reshape_activations", "none") not in ("none", "hook_z"):
        raise SAELoadError(
            f"{where}: reshape_activations {raw['reshape_activations']!r} is not supported"
        )
    metadata = raw.get("metadata") or {}
    if metadata.get("hook_head_index") is not None or raw.get("hook_head_index") is not None:
        raise SAELoadError(f"{where}: SAEs of a single attention head are not supported")
    d_sae = int(raw["d_sae"])
    transcoder = architecture in ("transcoder", "jumprelu_transcoder")
    d_in = int(raw["d_in"])
    if transcoder and not (metadata.get("hook_name_out") or raw.get("hook_name_out")):
        raise SAELoadError(f"{where}: a {architecture} names no output hook (hook_name_out)")
    try:
        return _saelab_config(raw, metadata, arch, d_in, d_sae, transcoder, norm, extra)
    except ValueError as err:
        raise SAELoadError(f"{where}: {err}") from err


def _saelab_config(raw, metadata, arch, d_in, d_sae, transcoder, norm, extra) -> SAEConfig:
    return SAEConfig(
        arch=arch,
        d_in=d_in,
        width=d_sae,
        k=int(raw.get("k") or min(32, d_sae)),
        d_out=int(raw.get("d_out") or d_in),
        hook_name=metadata.get("hook_name") or raw.get("hook_name") or "",
        target_hook_name=(metadata.get("hook_name_out") or raw.get("hook_name_out"))
        if transcoder
        else None,
        use_encoder_bias=True,
        subtract_decoder_bias=bool(raw.get("apply_b_dec_to_input", False)),
        normalize_input=norm == "layer_norm",
        model_name=metadata.get("model_name") or raw.get("model_name") or "",
        extra=extra,
    )


def _on_weights(
    cfg: SAEConfig,
    weights: dict[str, torch.Tensor],
    where: str,
    state: dict[str, torch.Tensor] | None = None,
) -> SAE:
    """The SAE of ``cfg`` holding ``weights`` (W_enc, W_dec, b_enc, b_dec, and θ for a
    threshold SAE) and the buffers in ``state`` (zeros for the others), without copies.

    The SAE is built on the meta device, so no initial weights are drawn: a width-1M Gemma
    Scope SAE (3,584 × 1,048,576) takes its 30 GB of fp32 weights once, not three times more
    for the random init, its transpose and its normalised decoder.
    """
    with torch.device("meta"):
        sae = build_sae(cfg)
    state = dict(state or {})
    if "threshold" not in state and "threshold" in weights and hasattr(sae, "threshold"):
        state["threshold"] = weights["threshold"].reshape(cast(torch.Tensor, sae.threshold).shape)
    tensors: dict[str, torch.Tensor] = {}
    params = dict(sae.named_parameters())
    for name, value in sae.state_dict(keep_vars=True).items():
        given = weights.get(name) if name in params else state.get(name)
        if given is None:
            if name in params:
                raise SAELoadError(f"{where}: the weights have no {name}")
            if name == "threshold":
                raise SAELoadError(f"{where}: a threshold (JumpReLU) SAE needs its threshold")
            given = torch.zeros(value.shape, dtype=value.dtype)
        if given.shape != value.shape:
            raise SAELoadError(
                f"{where}: {name} has shape {tuple(given.shape)}, expected {tuple(value.shape)} "
                "from its config"
            )
        tensors[name] = given.to(value.dtype)
    sae.load_state_dict(tensors, assign=True)
    return sae


def _from_saelens_parts(
    raw: dict[str, Any], weights: dict[str, torch.Tensor], where: str, extra: dict[str, Any]
) -> SAE:
    """The saelab SAE that computes what SAE-Lens computes from config ``raw`` and ``weights``.

    SAE-Lens encodes ``act((norm(x) - b_dec·apply_b_dec_to_input) W_enc + b_enc)`` (ReLU,
    top-k of the pre-activations, or ReLU where the pre-activation exceeds θ) and decodes
    ``f W_dec + b_dec``, undoing ``layer_norm`` for SAEs; saelab's architectures compute the
    same with these bias and normalisation choices. ``rescale_acts_by_decoder_norm`` (TopK)
    is folded into the weights, as SAE-Lens's ``fold_W_dec_norm`` does.
    """
    unknown = sorted(set(weights) - _SAELENS_WEIGHTS)
    if unknown:
        raise SAELoadError(
            f"{where}: weights {unknown} are not supported (saelab reads {sorted(_SAELENS_WEIGHTS)})"
        )
    cfg = _config_from_saelens(raw, where, extra)
    weights = dict(weights)
    if "log_threshold" in weights:  # older JumpReLU checkpoints, as SAE-Lens converts them
        weights["threshold"] = torch.exp(weights.pop("log_threshold"))
    sae = _on_weights(cfg, weights, where)
    with torch.no_grad():
        if raw.get("rescale_acts_by_decoder_norm"):
            # SAE-Lens multiplies the pre-activations by the decoder row norms before the
            # top-k and divides the codes by them before decoding; folding the norms into the
            # weights (as SAE-Lens's fold_W_dec_norm does) computes the same outputs.
            norms = sae.W_dec.norm(dim=1).clamp_min(1e-8)
            sae.W_enc.mul_(norms)
            sae.b_enc.mul_(norms)
            sae.W_dec.div_(norms[:, None])
    return sae.eval()


def sae_from_saelens(sae_lens_sae, extra: dict[str, Any] | None = None) -> SAE:
    """A loaded ``sae_lens`` SAE (e.g. ``SAE.from_pretrained``) as the saelab SAE computing the
    same codes and reconstructions; ``extra`` is kept in its config (e.g. the release)."""
    raw = sae_lens_sae.cfg.to_dict()
    weights = {
        name: value.detach().float().cpu() for name, value in sae_lens_sae.state_dict().items()
    }
    if raw.get("rescale_acts_by_decoder_norm"):  # folded in place later: not into their SAE
        weights = {name: value.clone() for name, value in weights.items()}
    where = f"SAE-Lens {type(sae_lens_sae).__name__}"
    return _from_saelens_parts(raw, weights, where, {"source": "sae_lens", **(extra or {})})


def load_sae(path: str | os.PathLike, device: str = "cpu") -> SAE:
    """Load an SAE saved by :func:`save_sae` or by SAE-Lens, in eval mode."""
    path = Path(path)
    if not (path / CFG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise SAELoadError(
            f"no SAE at {path}: expected {CFG_NAME} and {WEIGHTS_NAME} (the rules `train_sae` "
            "and `pretrained_sae` write them)"
        )
    raw = json.loads((path / CFG_NAME).read_text())
    if "saelab" not in raw:
        _config_from_saelens(raw, str(path), {})  # an unsupported SAE fails before its weights
    weights = load_file(path / WEIGHTS_NAME)
    if "saelab" not in raw:
        return _from_saelens_parts(raw, weights, str(path), {"source": "sae_lens"}).to(device)
    state = load_file(path / STATE_NAME) if (path / STATE_NAME).is_file() else {}
    cfg = SAEConfig.from_dict(raw["saelab"]["config"])
    return _on_weights(cfg, weights, str(path), state).to(device).eval()
