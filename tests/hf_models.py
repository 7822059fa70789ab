"""Small random-weight Hugging Face models in the hub format, for offline tests of the
loaders and the caching backends (GPT-2 and two Gemma generations)."""

from __future__ import annotations

from pathlib import Path

import torch


def perturb_norms(model: torch.nn.Module) -> None:
    """Random norm gains, so that weight conventions (e.g. Gemma's 1 + w) are exercised."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or ".ln_" in name:
                param.add_(0.3 * torch.randn(param.shape, generator=generator))


def save_hf(model, tokenizer_dir: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


def build_gpt2(vocab_size: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    # transformers 5's GPT2Config needs n_ctx, which TransformerLens reads.
    config = GPT2Config(
        n_layer=2, n_embd=64, n_head=4, n_ctx=64, n_positions=64, vocab_size=vocab_size,
        bos_token_id=0, eos_token_id=1, initializer_range=0.2,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def build_gemma2(vocab_size: int):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    # Small softcaps, a short sliding window and query_pre_attn_scalar != head_dim make each
    # Gemma-2 feature change the logits, so a wrong mapping would fail the comparison.
    config = Gemma2Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
        sliding_window=8, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        query_pre_attn_scalar=256, attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
        initializer_range=0.2, bos_token_id=0, eos_token_id=1, pad_token_id=2,
    )  # fmt: skip
    return Gemma2ForCausalLM(config)


def build_gemma3(vocab_size: int):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    # Gemma-3 text (the gemma-3-270m architecture): QK norm, one KV head, and distinct
    # local/global RoPE bases, all small enough to matter within 40 tokens.
    config = Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
        sliding_window=8, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        query_pre_attn_scalar=64, initializer_range=0.2, bos_token_id=0, eos_token_id=1,
        pad_token_id=2,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1000.0},
        },
    )  # fmt: skip
    return Gemma3ForCausalLM(config)


# The config name picks the TL family only loosely: the shapes and Gemma flags come from the
# local config.json (TL 3.9 builds Gemma configs only from official names, so saelab maps each
# Gemma generation to a template and overwrites the sizes). "google/gemma-3-270m" is used for
# Gemma-3 because the short name "gemma-3-270m" means the offline GGUF model.
HF_CASES = {
    "gpt2": (build_gpt2, "gpt2"),
    "gemma2": (build_gemma2, "google/gemma-2-2b"),
    "gemma3": (build_gemma3, "google/gemma-3-270m"),
}
