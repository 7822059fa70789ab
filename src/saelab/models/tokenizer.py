"""Tokenizers: the one saved in a prepared model directory, and the tiny model's byte-level BPE."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from saelab.models.layout import TOKENIZER_SUBDIR
from saelab.models.resolve import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

#: Special tokens of the tiny model's tokenizer, in id order (they get ids 0, 1, 2).
BOS_TOKEN, EOS_TOKEN, PAD_TOKEN = "<|bos|>", "<|eos|>", "<|pad|>"


def load_tokenizer(model_dir: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``model_dir/tokenizer``, or in ``model_dir`` itself."""
    from transformers import AutoTokenizer

    path = Path(model_dir) / TOKENIZER_SUBDIR
    if not path.is_dir() and (Path(model_dir) / "tokenizer_config.json").is_file():
        path = Path(model_dir)  # a bare tokenizer directory, e.g. data/tokenizers/tiny
    if not path.is_dir():
        raise ModelError(
            f"no tokenizer at {path}; it is made by the 'prepare_model' rule "
            "(or 'train_tiny_lm' for the tiny model)"
        )
    return AutoTokenizer.from_pretrained(path)


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, out_dir: str | Path
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and save it to ``out_dir``.

    GPT-2-style: every byte is in the alphabet, so no text is out of vocabulary. The special
    tokens ``<|bos|>``, ``<|eos|>``, ``<|pad|>`` get ids 0, 1, 2. BOS is not added by
    ``encode`` (the corpus code decides where BOS goes). Deterministic for the same texts.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(specials) + len(alphabet) + 1:
        raise ValueError(
            f"vocab_size {vocab_size} is too small for byte-level BPE: it needs at least "
            f"{len(specials) + len(alphabet) + 1} (3 special tokens + 256 bytes + 1 merge)"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=1 << 30,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(out_dir)
    return wrapped
