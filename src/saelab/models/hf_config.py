"""A TransformerLens config for a local HF-format model directory, read offline."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from saelab.models.resolve import ModelError

if TYPE_CHECKING:
    from transformer_lens import HookedTransformerConfig


#: TL official model whose (name-built) config supplies the architecture flags of each Gemma
#: generation; sizes are then overwritten from the local config.json. TL 3.9 derives Gemma
#: configs only from official names, never from an HF config, so a local Gemma directory
#: (say a fine-tune, or a small test model) needs this mapping.
_GEMMA_TEMPLATES: dict[str, str] = {
    "GemmaForCausalLM": "google/gemma-2b",
    "Gemma2ForCausalLM": "google/gemma-2-2b",
    "Gemma3ForCausalLM": "google/gemma-3-270m",
}


def _rope_thetas(hf_config) -> tuple[float, float | None]:
    """(global, local) RoPE bases of an HF config, refusing RoPE scalings TL would ignore."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    per_type = params if "full_attention" in params else {"full_attention": params}
    for kind, sub in per_type.items():
        rope_type = (sub or {}).get("rope_type", "default")
        if rope_type != "default":
            raise ModelError(
                f"RoPE type {rope_type!r} ({kind}) of this local Gemma model is not supported"
            )
    full = per_type.get("full_attention") or {}
    sliding = per_type.get("sliding_attention") or {}
    global_theta = full.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    local_theta = sliding.get("rope_theta", getattr(hf_config, "rope_local_base_freq", None))
    return float(global_theta), (None if local_theta is None else float(local_theta))


def _gemma_cfg_dict(hf_config, architecture: str) -> dict[str, Any]:
    """HookedTransformerConfig fields of a local Gemma-family model."""
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    template = convert_hf_model_config(_GEMMA_TEMPLATES[architecture])  # name-based: no hub
    global_theta, local_theta = _rope_thetas(hf_config)
    head_dim = hf_config.head_dim
    cfg = {
        **template,
        "d_model": hf_config.hidden_size,
        "d_head": head_dim,
        "n_heads": hf_config.num_attention_heads,
        "n_key_value_heads": hf_config.num_key_value_heads,
        "d_mlp": hf_config.intermediate_size,
        "n_layers": hf_config.num_hidden_layers,
        # The template's n_ctx is TL's memory-safe cap (the mask is n_ctx x n_ctx).
        "n_ctx": min(hf_config.max_position_embeddings, template["n_ctx"]),
        "eps": hf_config.rms_norm_eps,
        "d_vocab": hf_config.vocab_size,
        "act_fn": getattr(hf_config, "hidden_activation", None) or hf_config.hidden_act,
        "rotary_base": global_theta,
        "rotary_dim": head_dim,
        "original_architecture": architecture,
    }
    if architecture == "GemmaForCausalLM":
        return cfg
    # HF scales scores by query_pre_attn_scalar**-0.5, TL divides them by attn_scale.
    cfg["attn_scale"] = math.sqrt(hf_config.query_pre_attn_scalar)
    cfg["use_attn_scale"] = True
    cfg["window_size"] = hf_config.sliding_window
    cfg["use_local_attn"] = True
    cfg["attn_types"] = [
        "local" if kind == "sliding_attention" else "global" for kind in hf_config.layer_types
    ]
    cfg["attn_scores_soft_cap"] = hf_config.attn_logit_softcapping or -1.0
    cfg["output_logits_soft_cap"] = hf_config.final_logit_softcapping or -1.0
    if architecture == "Gemma3ForCausalLM":
        cfg["rotary_base_local"] = local_theta
    return cfg


def _tl_config_from_hf_dir(
    hf_dir: Path, model_name: str, device: str, dtype: torch.dtype
) -> HookedTransformerConfig:
    """A HookedTransformerConfig for the HF model in ``hf_dir``, read offline."""
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(hf_dir)
    if not hf_config.architectures:
        raise ModelError(f"{hf_dir / 'config.json'} names no 'architectures'; cannot convert it")
    architecture = hf_config.architectures[0]
    if architecture in _GEMMA_TEMPLATES:
        cfg_dict = _gemma_cfg_dict(hf_config, architecture)
        cfg_dict.update(
            model_name=model_name,
            init_weights=False,
            device=device,
            n_devices=1,
            dtype=dtype,
            from_checkpoint=False,
            tokenizer_name=None,
        )
        cfg_dict.setdefault("default_prepend_bos", True)
        return HookedTransformerConfig.from_dict(cfg_dict)
    # Other architectures: TL converts config.json itself. It picks llama/gemma branches by
    # substrings of the *path*, so give it a copy in a neutral directory; and a
    # transformers-5 GPT2Config may lack n_ctx, which TL's GPT-2 branch reads.
    raw = json.loads((hf_dir / "config.json").read_text())
    if raw.get("model_type") == "gpt2" and "n_ctx" not in raw:
        raw["n_ctx"] = raw.get("n_positions", 1024)
    with tempfile.TemporaryDirectory() as tmp:
        neutral = Path(tmp) / "model"
        neutral.mkdir()
        (neutral / "config.json").write_text(json.dumps(raw))
        try:
            cfg = get_pretrained_model_config(
                str(neutral), fold_ln=False, device=device, dtype=dtype
            )
        except NotImplementedError as err:
            raise ModelError(
                f"TransformerLens cannot build architecture {architecture!r} from {hf_dir}: {err}"
            ) from err
    cfg.model_name = model_name
    cfg.tokenizer_name = None
    return cfg
