"""Loading a prepared model as a ``HookedTransformer`` with unprocessed weights.

Every loader turns weight processing off (no LayerNorm folding, no centering), so hook
activations equal the HF model's hidden states and SAEs trained here match SAE-Lens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from saelab.models.hf_config import _tl_config_from_hf_dir
from saelab.models.layout import (
    HF_SUBDIR,
    MANIFEST_NAME,
    TINY_CFG_NAME,
    TINY_SUBDIR,
    TINY_WEIGHTS_NAME,
    TOKENIZER_SUBDIR,
    _quiet_tl,
    _require_manifest,
    _unprepared_error,
    read_manifest,
)
from saelab.models.prepare import _check_hf_dir
from saelab.models.resolve import KNOWN_MODELS, ModelError, ModelInfo
from saelab.models.tokenizer import load_tokenizer

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def _hf_weights_dir(info: ModelInfo, model_dir: Path) -> Path:
    """Where the HF-format weights of a gguf or hub model are."""
    if info.source == "tiny":
        raise ModelError(
            "the tiny model has no HF-format weights; load it with load_model (HookedTransformer)"
        )
    if info.source == "hub" and info.model_path is not None:
        return _check_hf_dir(info.model_path, "model_path")
    _require_manifest(info, model_dir)
    # Always model_dir/hf, not the manifest's absolute model_path: data/ may have been moved.
    path = model_dir / HF_SUBDIR
    if not (path / "config.json").is_file():
        raise _unprepared_error(info, model_dir, f"HF weights ({path})")
    return path


def _tokenizer_for(info: ModelInfo, model_dir: Path) -> PreTrainedTokenizerBase:
    """``model_dir/tokenizer``, or for a hub model with ``model_path`` its own tokenizer."""
    from transformers import AutoTokenizer

    if (model_dir / TOKENIZER_SUBDIR).is_dir():
        return load_tokenizer(model_dir)
    if info.source == "hub" and info.model_path is not None:
        return AutoTokenizer.from_pretrained(_check_hf_dir(info.model_path, "model_path"))
    raise _unprepared_error(info, model_dir, TOKENIZER_SUBDIR)


def load_hf_model(
    info: ModelInfo,
    model_dir: str | Path,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> PreTrainedModel:
    """The plain transformers causal LM of a gguf or hub model, in eval mode."""
    from transformers import AutoModelForCausalLM

    path = _hf_weights_dir(info, Path(model_dir))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    # transformers types .to's self as a generation mixin; the model is a PreTrainedModel.
    return model.to(device).eval()  # pyright: ignore[reportArgumentType]


def load_model(
    info: ModelInfo,
    model_dir: str | Path,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> HookedTransformer:
    """The model as a ``HookedTransformer`` with unprocessed weights, in eval mode."""
    model_dir = Path(model_dir)
    with _quiet_tl():
        if info.source == "gguf":
            model = _load_gguf_tl(info, model_dir, device, dtype)
        elif info.source == "hub":
            model = _load_hf_dir_tl(info, model_dir, device, dtype)
        elif info.source == "tiny":
            model = load_tiny_model(model_dir, device, dtype, info=info)
        else:
            raise ModelError(
                f"unknown model source {info.source!r}; allowed: 'gguf', 'hub', 'tiny'"
            )
    return model.eval()


def _load_gguf_tl(info: ModelInfo, model_dir: Path, device: str, dtype: torch.dtype):
    """gemma-3-270m: TL has its config built in, so from_pretrained with hf_model stays offline."""
    from transformer_lens import HookedTransformer

    hf_model = load_hf_model(info, model_dir, "cpu", dtype)
    return HookedTransformer.from_pretrained_no_processing(
        info.require_tl_name(),
        hf_model=hf_model,
        tokenizer=load_tokenizer(model_dir),
        device=device,
        dtype=dtype,
    )


def hooked_from_hf(
    hf_model: PreTrainedModel,
    hf_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    model_name: str,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> HookedTransformer:
    """Convert an HF model saved in ``hf_dir`` into a HookedTransformer without the hub.

    TransformerLens route "config from a local directory + its weight converter", with every
    weight processing step off.
    """
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_pretrained_state_dict

    hf_dir = Path(hf_dir)
    with _quiet_tl():
        cfg = _tl_config_from_hf_dir(hf_dir, model_name, device, dtype)
        state_dict = get_pretrained_state_dict(str(hf_dir), cfg, hf_model=hf_model, dtype=dtype)
        model = HookedTransformer(cfg, tokenizer, move_to_device=False)
        model.load_and_process_state_dict(
            state_dict,
            fold_ln=False,
            center_writing_weights=False,
            center_unembed=False,
            fold_value_biases=False,
            refactor_factored_attn_matrices=False,
        )
        model.move_model_modules_to_device()
    return model.eval()


def _load_hf_dir_tl(info: ModelInfo, model_dir: Path, device: str, dtype: torch.dtype):
    hf_dir = _hf_weights_dir(info, model_dir)
    tokenizer = _tokenizer_for(info, model_dir)
    hf_model = load_hf_model(info, model_dir, "cpu", dtype)
    model = hooked_from_hf(hf_model, hf_dir, tokenizer, info.model_id, device, dtype)
    del hf_model  # the TL model holds copies; free the HF ones
    return model


def load_tiny_model(
    model_dir: str | Path,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    info: ModelInfo | None = None,
) -> HookedTransformer:
    """Rebuild the tiny model from ``model_dir/tiny`` with ``model_dir/tokenizer`` attached."""
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    model_dir = Path(model_dir)
    info = info or ModelInfo("tiny", "tiny", None, None)
    tiny_dir = model_dir / TINY_SUBDIR
    for name in (TINY_CFG_NAME, TINY_WEIGHTS_NAME):
        if not (tiny_dir / name).is_file():
            raise _unprepared_error(info, model_dir, f"{TINY_SUBDIR}/{name}")
    if not (model_dir / TOKENIZER_SUBDIR).is_dir():
        raise _unprepared_error(info, model_dir, TOKENIZER_SUBDIR)
    cfg_dict = json.loads((tiny_dir / TINY_CFG_NAME).read_text())
    cfg = HookedTransformerConfig(**cfg_dict, init_weights=False, device=device, dtype=dtype)
    with _quiet_tl():
        # Parameters are created on cfg.device in cfg.dtype; load_state_dict copies into them.
        model = HookedTransformer(cfg, load_tokenizer(model_dir))
    weights = load_file(str(tiny_dir / TINY_WEIGHTS_NAME))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    buffers = {name for name, _ in model.named_buffers()}
    if unexpected or set(missing) - buffers:
        raise ModelError(
            f"{tiny_dir / TINY_WEIGHTS_NAME} does not match {TINY_CFG_NAME}: "
            f"missing {sorted(set(missing) - buffers)}, unexpected {sorted(unexpected)}"
        )
    return model.eval()


def prepared_model_info(model_dir: str | Path) -> ModelInfo:
    """The :class:`ModelInfo` of a prepared model directory, read from its manifest.

    ``model_path`` is the manifest's for a hub model whose weights stay in a local directory
    (no ``hf/`` here), else ``None``: the weights are under ``model_dir`` wherever it has moved.
    ``n_layers`` and ``n_ctx`` come from :data:`KNOWN_MODELS` or the tiny model's ``cfg.json``.
    """
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    if manifest is None:
        raise ModelError(
            f"{model_dir} is not a prepared model directory: no {MANIFEST_NAME}. It is made by "
            f"the 'prepare_model' rule (or 'train_tiny_lm' for the tiny model)."
        )
    missing = [key for key in ("model_id", "source", "tl_name") if key not in manifest]
    if missing:
        raise ModelError(f"{model_dir / MANIFEST_NAME} lacks {missing}; prepare it again")
    model_id, source, tl_name = manifest["model_id"], manifest["source"], manifest["tl_name"]
    if source not in ("gguf", "hub", "tiny"):
        raise ModelError(
            f"{model_dir / MANIFEST_NAME} names source {source!r}; allowed: 'gguf', 'hub', 'tiny'"
        )
    n_layers = n_ctx = model_path = None
    if source == "tiny":
        cfg_path = model_dir / TINY_SUBDIR / TINY_CFG_NAME
        if cfg_path.is_file():
            cfg = json.loads(cfg_path.read_text())
            n_layers, n_ctx = cfg.get("n_layers"), cfg.get("n_ctx")
    else:
        known = KNOWN_MODELS.get(model_id)
        if known is not None and (known.source, known.tl_name) == (source, tl_name):
            n_layers, n_ctx = known.n_layers, known.n_ctx
        if source == "hub" and not (model_dir / HF_SUBDIR).is_dir():
            model_path = manifest.get("model_path")
    return ModelInfo(model_id, source, tl_name, n_layers, n_ctx, model_path)


def load_prepared(
    model_dir: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> HookedTransformer:
    """The model of a prepared directory (name, source, weights from its manifest), as
    :func:`load_model`: a ``HookedTransformer`` with unprocessed weights, in eval mode."""
    return load_model(prepared_model_info(model_dir), model_dir, device=device, dtype=dtype)


#: Unembedding tensors of HF checkpoints, in the order they are looked for: ``[vocab, d]``
#: ``lm_head.weight``, or with tied embeddings the input embedding (gemma, GPT-2).
HF_UNEMBEDDING_NAMES = (
    "lm_head.weight",
    "model.embed_tokens.weight",
    "transformer.wte.weight",
    "wte.weight",
)


def load_unembedding(model_dir: str | Path) -> torch.Tensor:
    """W_U [d_model, vocab] of a prepared model, reading only that tensor from safetensors:
    the tiny model's ``unembed.W_U``, or an HF checkpoint's (``model_dir/hf``, or the
    ``model_path`` a hub model's manifest names) first of :data:`HF_UNEMBEDDING_NAMES`."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    info = prepared_model_info(model_dir)
    if info.source == "tiny":
        candidates = [(model_dir / TINY_SUBDIR / TINY_WEIGHTS_NAME, "unembed.W_U", False)]
    else:
        files = sorted(_hf_weights_dir(info, model_dir).glob("*.safetensors"))
        candidates = [(p, name, True) for name in HF_UNEMBEDDING_NAMES for p in files]
    for path, name, transpose in candidates:
        with safe_open(str(path), "pt") as handle:
            if name in handle.keys():
                weight = handle.get_tensor(name).float()
                return weight.T if transpose else weight
    raise ModelError(
        f"no unembedding in the weights of {model_dir} (looked for "
        f"{[name for _, name, _ in candidates][:4]} in {sorted({str(p) for p, _, _ in candidates})})"
    )
