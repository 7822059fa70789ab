"""Activation sources: a callable tokens [B, T] -> {hook: [B, T, width]} that stops the forward
as early as the hooks allow (TransformerLens or Hugging Face transformers)."""

from __future__ import annotations

import numpy as np
import torch

from saelab.cache.checked import CacheError
from saelab.hooks import deepest_layer, parse_hook


class _StopForward(Exception):
    """Raised inside a forward hook once every requested activation is captured."""


class TLActivationSource:
    """Hook activations from a TransformerLens ``HookedTransformer`` (any architecture TL has)."""

    backend = "transformer_lens"

    def __init__(self, model, hooks: list[str]):
        for hook in hooks:
            if hook not in model.hook_dict:
                raise CacheError(
                    f"hook {hook!r} does not exist in this model; available sites of block 0: "
                    f"{sorted(h for h in model.hook_dict if h.startswith('blocks.0.'))}"
                )
        self.model = model
        self.hooks = list(hooks)
        self.stop_at_layer = deepest_layer(hooks) + 1

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}

        def save(activation, hook):
            captured[hook.name] = activation.flatten(2) if activation.ndim == 4 else activation

        self.model.run_with_hooks(
            tokens,
            fwd_hooks=[(name, save) for name in self.hooks],
            stop_at_layer=self.stop_at_layer,
            return_type=None,
        )
        return captured


# Where each TransformerLens site lives in a Hugging Face decoder layer, per model family:
# (submodule path inside the layer, "input" or "output" of that module).
_HF_SITES: dict[str, dict[str, tuple[str, str]]] = {
    # Gemma 2/3: sandwich norms; TL's hook_attn_out is after post_attention_layernorm.
    "gemma_sandwich": {
        "hook_resid_pre": ("", "input"),
        "hook_attn_out": ("post_attention_layernorm", "output"),
        "hook_resid_mid": ("pre_feedforward_layernorm", "input"),
        "hook_mlp_out": ("post_feedforward_layernorm", "output"),
        "hook_resid_post": ("", "output"),
        "attn.hook_z": ("self_attn.o_proj", "input"),
    },
    # Llama, Mistral, Qwen2, Gemma 1: pre-norm; post_attention_layernorm is the MLP's input norm.
    "llama": {
        "hook_resid_pre": ("", "input"),
        "hook_attn_out": ("self_attn", "output"),
        "hook_resid_mid": ("post_attention_layernorm", "input"),
        "hook_mlp_out": ("mlp", "output"),
        "hook_resid_post": ("", "output"),
        "attn.hook_z": ("self_attn.o_proj", "input"),
    },
    "gpt2": {
        "hook_resid_pre": ("", "input"),
        "hook_attn_out": ("attn", "output"),
        "hook_resid_mid": ("ln_2", "input"),
        "hook_mlp_out": ("mlp", "output"),
        "hook_resid_post": ("", "output"),
        "attn.hook_z": ("attn.c_proj", "input"),
    },
}
_HF_FAMILY = {
    "gemma2": "gemma_sandwich",
    "gemma3": "gemma_sandwich",
    "gemma3_text": "gemma_sandwich",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "gemma": "llama",
    "gpt2": "gpt2",
}


def hf_supports(hf_config, hooks: list[str]) -> bool:
    """Whether :class:`HFActivationSource` can capture every hook for this HF model type."""
    family = _HF_FAMILY.get(getattr(hf_config, "model_type", ""))
    return family is not None and all(parse_hook(h).site in _HF_SITES[family] for h in hooks)


def _hf_base_and_layers(hf_model):
    """The base model (no LM head) and its list of decoder layers."""
    base = getattr(hf_model, "model", None) or getattr(hf_model, "transformer", None) or hf_model
    layers = getattr(base, "layers", None) or getattr(base, "h", None)
    if layers is None:
        raise CacheError(f"cannot find the decoder layers of {type(hf_model).__name__}")
    return base, layers


def _first_tensor(value):
    return value[0] if isinstance(value, (tuple, list)) else value


class HFActivationSource:
    """Hook activations from a plain ``transformers`` model, named by TransformerLens hooks.

    This is the fast path: transformers' fused attention runs faster on CPU than TL's einsums,
    and the forward stops (by an exception from a hook) right after the deepest site needed,
    so neither later layers nor the unembedding are computed. Values equal TL's hooks on the
    same unprocessed weights (checked in the tests).
    """

    backend = "transformers"

    def __init__(self, hf_model, hooks: list[str]):
        model_type = getattr(hf_model.config, "model_type", "")
        if not hf_supports(hf_model.config, hooks):
            raise CacheError(
                f"the transformers backend cannot capture {hooks} for model type {model_type!r}; "
                "use the transformer_lens backend"
            )
        self.hf_model = hf_model
        self.hooks = list(hooks)
        self.base, self.layers = _hf_base_and_layers(hf_model)
        self.sites = _HF_SITES[_HF_FAMILY[model_type]]
        last = deepest_layer(hooks)
        # Stop before the last layer runs if it only contributes its input.
        last_sites = {parse_hook(h).site for h in hooks if parse_hook(h).layer == last}
        self._stop_before_last = last_sites == {"hook_resid_pre"}
        self._last = last

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}

        def capture_input(name):
            def hook(module, args, kwargs):
                # Decoder layers get hidden states as a keyword in recent transformers.
                captured[name] = args[0] if args else kwargs["hidden_states"]

            return hook

        def capture_output(name):
            def hook(module, args, kwargs, output):
                captured[name] = _first_tensor(output)

            return hook

        def stop(*_):
            raise _StopForward

        handles = []
        try:
            for hook_name in self.hooks:
                site = parse_hook(hook_name)
                path, where = self.sites[site.site]
                module = self.layers[site.layer]
                module = module.get_submodule(path) if path else module
                if where == "input":
                    handle = module.register_forward_pre_hook(
                        capture_input(hook_name), with_kwargs=True
                    )
                else:
                    handle = module.register_forward_hook(
                        capture_output(hook_name), with_kwargs=True
                    )
                handles.append(handle)
            last = self.layers[self._last]
            # Registered last, so it runs after the captures on the same module.
            if self._stop_before_last:
                handles.append(last.register_forward_pre_hook(stop))
            else:
                handles.append(last.register_forward_hook(stop))
            try:
                self.base(input_ids=tokens, use_cache=False)
            except _StopForward:
                pass
        finally:
            for handle in handles:
                handle.remove()
        return captured


def probe_widths(source, tokens: np.ndarray, device: str = "cpu") -> dict[str, int]:
    """Width of every hook, from a forward on the first few tokens of the first context."""
    probe = torch.from_numpy(tokens[:1, : min(4, tokens.shape[1])].astype(np.int64)).to(device)
    return {hook: int(value[0, 0].numel()) for hook, value in source(probe).items()}


def activation_source(
    info,
    model_dir,
    hooks: list[str],
    device: str,
    backend: str = "auto",
    dtype: torch.dtype = torch.float32,
):
    """The fastest source that can capture ``hooks`` for this model, its forward in ``dtype``
    (saelab.precision; the cache's on-disk dtype is separate).

    ``auto`` uses transformers when the model has HF weights and its family is mapped (gemma,
    llama-like, gpt2), else TransformerLens; ``transformers`` / ``transformer_lens`` force one.
    """
    from saelab.models import load_hf_model, load_model

    if backend not in ("auto", "transformers", "transformer_lens"):
        raise CacheError(
            f"backend {backend!r} is not allowed; use auto, transformers or transformer_lens"
        )
    if backend != "transformer_lens" and info.source != "tiny":
        hf_model = load_hf_model(info, model_dir, device=device, dtype=dtype)
        if backend == "transformers" or hf_supports(hf_model.config, hooks):
            return HFActivationSource(hf_model.eval(), hooks)
        del hf_model
    if backend == "transformers":
        raise CacheError(
            f"the transformers backend cannot run the {info.source} model {info.model_id}"
        )
    return TLActivationSource(load_model(info, model_dir, device=device, dtype=dtype).eval(), hooks)
