"""The token store: tokenised contexts kept as a zarr v3 group, written atomically."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    pass


from saelab.data.contexts import TOKENS_FORMAT, TokenizedCorpus, corpus_fingerprint
from saelab.data.errors import CorpusError, TokensNotFoundError

#: The Snakemake rule that writes token stores (named in "not found" errors).
TOKENIZE_RULE = "tokenize_corpus"


#: Tokens per zarr chunk (rows are never split): 2^17 tokens, 512 KiB of int32.
_CHUNK_TOKENS = 1 << 17


class TokenStore(NamedTuple):
    """A loaded token store: the contexts and the attributes saved with them."""

    corpus: TokenizedCorpus
    attrs: dict[str, Any]
    """``format``, ``fingerprint``, ``context_len``, ``bos``, ``seed``, ``n_contexts``,
    ``n_tokens`` and whatever the writer added (tokenizer, model, corpus name...)."""


def save_tokens(corpus: TokenizedCorpus, path: str | os.PathLike, attrs: dict[str, Any]) -> None:
    """Write ``corpus`` as a zarr v3 group at ``path``, atomically.

    ``attrs`` must hold the ``bos`` and ``seed`` the corpus was made with (the fingerprint is
    checked against them, so a store never claims settings it was not made with), plus any
    JSON-serialisable extras. The group is written to ``path + ".tmp"`` and renamed when
    complete: an interrupted write never leaves a ``path`` (an older store there survives a
    failed write).
    """
    tokens, special_mask, fingerprint = corpus
    n_contexts, context_len = tokens.shape
    missing = [key for key in ("bos", "seed") if key not in attrs]
    if missing:
        raise ValueError(f"save_tokens: attrs must include {missing} (from the corpus config)")
    expected = corpus_fingerprint(tokens, context_len, attrs["bos"], attrs["seed"])
    if expected != fingerprint:
        raise ValueError(
            f"save_tokens: the corpus fingerprint does not match its tokens with "
            f"bos={attrs['bos']!r}, seed={attrs['seed']!r}: wrong attrs or modified tokens"
        )
    core = {
        "format": TOKENS_FORMAT,
        "fingerprint": fingerprint,
        "context_len": int(context_len),
        "n_contexts": int(n_contexts),
        "n_tokens": int(tokens.size),
    }
    full_attrs = {**attrs, **core}
    json.dumps(full_attrs)  # fail before writing anything when an extra is not JSON

    import zarr
    from zarr.codecs import ZstdCodec

    from saelab.cache import checksum_codecs

    path = Path(path)
    tmp = Path(f"{path}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed job
    try:
        group = zarr.open_group(str(tmp), mode="w")
        chunks = (max(1, min(n_contexts, _CHUNK_TOKENS // context_len)), context_len)
        # zarr's default zstd, then a crc32c of every stored chunk (load_tokens names a bad one).
        compressors = [ZstdCodec(level=0), *checksum_codecs()]
        group.create_array(
            "tokens",
            data=np.asarray(tokens, dtype=np.int32),
            chunks=chunks,
            compressors=compressors,
        )
        group.create_array(
            "special_mask",
            data=np.asarray(special_mask, bool),
            chunks=chunks,
            compressors=compressors,
        )
        group.attrs.update(full_attrs)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def load_tokens(path: str | os.PathLike, verify: bool = True) -> TokenStore:
    """Read a store written by :func:`save_tokens`; ``verify`` rechecks the fingerprint."""
    path = Path(path)
    if not path.exists():
        hint = ""
        if Path(f"{path}.tmp").exists():
            hint = f" ({path}.tmp exists: a {TOKENIZE_RULE} job was interrupted)"
        raise TokensNotFoundError(
            f"no token store at {str(path)!r}{hint}; it is made by the Snakemake rule "
            f"`{TOKENIZE_RULE}` (run snakemake with this path as the target)"
        )
    import zarr

    from saelab.cache import CheckedGroup, rebuild_command

    group = CheckedGroup(zarr.open_group(str(path), mode="r"), path, rebuild_command(path))
    attrs = dict(group.attrs)
    if attrs.get("format") != TOKENS_FORMAT or "tokens" not in group:
        raise CorpusError(f"{str(path)!r} is not a saelab token store (format {TOKENS_FORMAT})")
    tokens = np.asarray(group["tokens"][...], dtype=np.int32)
    special_mask = np.asarray(group["special_mask"][...], dtype=bool)
    corpus = TokenizedCorpus(tokens, special_mask, attrs["fingerprint"])
    if verify:
        actual = corpus_fingerprint(tokens, tokens.shape[1], attrs["bos"], attrs["seed"])
        if actual != attrs["fingerprint"]:
            raise CorpusError(
                f"token store {str(path)!r} is corrupt: its tokens do not match its fingerprint; "
                f"delete it and rerun `{TOKENIZE_RULE}`"
            )
    return TokenStore(corpus, attrs)
