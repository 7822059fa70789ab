"""The zarr activation cache: one forward pass writes every requested hook; readers need no model.

Layout of one cache (a zarr v3 group, ``data/cache/{model}/{cache}.zarr``)::

    {hook name}      float16/32 [n_tokens, width]   one row per token, row = context * ctx + pos
    tokens           int32      [n_tokens]
    special_mask     bool       [n_tokens]          True on BOS/EOS/PAD
    attrs["saelab"]  the manifest (model, hooks, widths, dtype, context length, corpus
                     fingerprint, seed, saelab version, ...)

Arrays are chunked along token rows, one chunk per forward batch, and every chunk ends in a
crc32c checksum (zarr v3's ``crc32c`` codec): a chunk whose bytes were flipped or cut short is
never read as numbers, :class:`CheckedArray` turns it into a :class:`CorruptChunkError` naming
the array, the chunk and the command that rebuilds the cache. The cache is built in
``{path}.partial`` with its progress in ``progress.json`` (replaced atomically after each batch),
so a killed job resumes from its last complete batch, and is renamed to ``{path}`` only when
complete: a path that exists is a complete cache.

The package's modules: :mod:`~saelab.cache.checked` (checksummed arrays, opening a cache),
:mod:`~saelab.cache.sources` (activation sources), :mod:`~saelab.cache.build` (writing) and
:mod:`~saelab.cache.reader` (splits, contexts, windows and batches).
"""

from saelab.cache.build import CacheSummary, build_cache
from saelab.cache.checked import (
    MANIFEST_KEY,
    PROGRESS_FILE,
    CacheError,
    CheckedArray,
    CheckedGroup,
    CorruptChunkError,
    cache_manifest,
    checksum_codecs,
    has_checksum,
    open_cache,
    rebuild_command,
)
from saelab.cache.reader import (
    ActivationReader,
    context_rows,
    heldout_split,
    rows_of_contexts,
    split_rows,
)
from saelab.cache.sources import (
    HFActivationSource,
    TLActivationSource,
    activation_source,
    hf_supports,
    probe_widths,
)

__all__ = [
    "MANIFEST_KEY",
    "PROGRESS_FILE",
    "ActivationReader",
    "CacheError",
    "CacheSummary",
    "CheckedArray",
    "CheckedGroup",
    "CorruptChunkError",
    "HFActivationSource",
    "TLActivationSource",
    "activation_source",
    "build_cache",
    "cache_manifest",
    "checksum_codecs",
    "context_rows",
    "has_checksum",
    "heldout_split",
    "hf_supports",
    "open_cache",
    "probe_widths",
    "rebuild_command",
    "rows_of_contexts",
    "split_rows",
]
