"""Text corpora and token contexts: where text comes from, and how it becomes ``[n, context_len]``.

Four sources of documents (:func:`iter_documents`):

* ``python-docs``: English prose from the Python standard library's own documentation (pydoc
  topics and docstrings), built in and offline (:func:`python_docs_documents`).
* ``text``: local text files, split into documents at two or more consecutive blank lines.
* ``jsonl``: local JSON-lines files, one document per line, text in ``text_field``.
* ``hf``: a Hugging Face dataset, streamed; needs the hub, fails fast and clearly without it.

:func:`tokenize_documents` shuffles documents by seed, tokenises them in batches and packs them
into fixed-length contexts under one of three BOS conventions (``per_context`` as SAE-Lens,
``per_document`` as bartbussmann/matryoshka_sae, ``none``). :func:`save_tokens` and
:func:`load_tokens` keep the result as a zarr v3 group, written atomically.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import os
import re
import shutil
import socket
import sysconfig
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlparse

import numpy as np
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from saelab.config import CorpusConfig

#: Values of ``CorpusConfig.source``.
SOURCES = ("python-docs", "text", "jsonl", "hf")
#: Values of ``CorpusConfig.bos``.
BOS_MODES = ("per_context", "per_document", "none")
#: Format tag stored in every token store, checked on load.
TOKENS_FORMAT = "saelab-tokens-v1"
#: The Snakemake rule that writes token stores (named in "not found" errors).
TOKENIZE_RULE = "tokenize_corpus"


class CorpusError(ValueError):
    """A corpus that cannot be read or is too small, with what to change."""


class TokensNotFoundError(FileNotFoundError):
    """A token store that does not exist (yet): the rule ``tokenize_corpus`` makes it."""


# --------------------------------------------------------------------------------------------
# Built-in corpus: the Python standard library's documentation
# --------------------------------------------------------------------------------------------

#: Stdlib directories that hold tests, tools, generated tables or third-party code, not docs.
_SKIP_DIRS = frozenset(
    {
        "test",
        "tests",
        "idlelib",
        "lib2to3",
        "site-packages",
        "dist-packages",
        "__pycache__",
        "encodings",  # generated codec tables with one boilerplate docstring each
        "pydoc_data",  # read through its module (the topics), not as source
        "ensurepip",
        "lib-dynload",
    }
)
#: Shortest cleaned document kept (about 20 words: a two-sentence docstring).
MIN_DOC_CHARS = 100
#: Smallest share of a docstring's text that must be prose for the docstring to be kept.
MIN_PROSE_FRACTION = 0.6

_UNDERLINE = re.compile(r"^\s*([=\-~*^#+_.`'\"])\1{2,}\s*$")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_WORD = re.compile(r"^[(\"'*]?[A-Za-z][a-z]*(?:['-][a-z]+)*[)\"'*]?[,.;:!?]?[)\"']?$")
_CODE_SYMBOLS = frozenset("=()[]{}<>*/\\+#@'\"|&%^~`$;")
# A line that reads as Python code or a shell session rather than prose.
_CODE_LINE = re.compile(
    r"^\s*(?:>>>|\.\.\.(?:\s|$)|\$ |"
    r"(?:async\s+)?def\s+\w+\s*\(|class\s+\w+\s*[(:]|import\s+\w|from\s+[\w.]+\s+import\b|"
    r"return\b|raise\s+\w|yield\b|assert\s|del\s|pass\s*$|"
    r"(?:for|while|if|elif|with)\b.*:\s*(?:#.*)?$|(?:else|try|finally)\s*:|except\b.*:|@\w|"
    r"[\w.\[\]'\"]+\s*(?:[-+*/%|&^]|//|\*\*|<<|>>)?=[^=])"
)
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# Statement fields that can hold nested definitions (if/try/with/match bodies, class bodies...).
_BODY_FIELDS = ("body", "orelse", "finalbody", "handlers", "cases")


class _RawDoc(NamedTuple):
    """An uncleaned document and where it comes from (the sort key of the corpus order)."""

    path: str
    """Path relative to the stdlib root, with ``/`` separators."""
    line: int
    """Line of the definition (0 for a module docstring or a pydoc topic)."""
    col: int
    label: str
    """Topic name for pydoc topics, empty for docstrings."""
    text: str


def _symbol_share(text: str) -> float:
    chars = "".join(text.split())
    return sum(ch in _CODE_SYMBOLS for ch in chars) / max(1, len(chars))


def _is_code_paragraph(lines: list[str]) -> bool:
    """Whether a paragraph is a doctest, a code example or symbols rather than prose."""
    if any(line.lstrip().startswith(">>>") for line in lines):
        return True
    code_lines = sum(bool(_CODE_LINE.match(line)) or _symbol_share(line) > 0.25 for line in lines)
    if 2 * code_lines >= len(lines):
        return True
    words = " ".join(lines).split()
    plain = sum(bool(_WORD.match(word)) for word in words)
    return plain < 0.5 * len(words) or _symbol_share(" ".join(lines)) > 0.2


def _clean_docstring(text: str) -> tuple[str, float]:
    """Prose paragraphs of ``text``, whitespace-normalised, and the share of text they keep.

    Dedents, drops reST underlines and code/doctest paragraphs, and joins each paragraph's
    lines with single spaces; paragraphs stay separated by one blank line.
    """
    lines = [line for line in inspect.cleandoc(text).splitlines() if not _UNDERLINE.match(line)]
    kept: list[str] = []
    total = prose = 0
    for paragraph in _PARAGRAPH_BREAK.split("\n".join(lines)):
        par_lines = [line for line in paragraph.splitlines() if line.strip()]
        if not par_lines:
            continue
        size = sum(len(line.strip()) for line in par_lines)
        total += size
        if _is_code_paragraph(par_lines):
            continue
        prose += size
        joined = " ".join(" ".join(par_lines).split())
        # reST "text::" introduces a literal block, which was dropped above
        kept.append(joined[:-1] if joined.endswith("::") else joined)
    return "\n\n".join(kept), prose / max(1, total)


def _stdlib_files(root: Path) -> list[Path]:
    """Python files of the stdlib that document the library, sorted by relative path."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("config-")]
        files.extend(
            Path(dirpath, name)
            for name in filenames
            if name.endswith(".py") and not name.startswith("_sysconfigdata")
        )
    # sorted here so the corpus order never depends on the filesystem's listing order
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


def _module_docstrings(tree: ast.Module) -> Iterator[tuple[int, int, str]]:
    """(line, col, docstring) of the module and of every class and function inside it."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, _DOC_NODES):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield getattr(node, "lineno", 0), getattr(node, "col_offset", 0), doc
        for name in _BODY_FIELDS:
            stack.extend(getattr(node, name, None) or ())


def _raw_python_docs() -> list[_RawDoc]:
    """Pydoc topics and stdlib docstrings, uncleaned, sorted by (path, position)."""
    from pydoc_data.topics import topics

    raw = [_RawDoc("pydoc_data/topics.py", 0, 0, name, text) for name, text in topics.items()]
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in _stdlib_files(root):
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):  # e.g. a file for another Python version
            continue
        rel = path.relative_to(root).as_posix()
        raw.extend(_RawDoc(rel, line, col, "", doc) for line, col, doc in _module_docstrings(tree))
    raw.sort(key=lambda doc: (doc.path, doc.line, doc.col, doc.label))
    return raw


def _build_python_docs() -> tuple[str, ...]:
    docs: list[str] = []
    seen: set[bytes] = set()
    for raw in _raw_python_docs():
        text, prose_share = _clean_docstring(raw.text)
        if len(text) < MIN_DOC_CHARS or prose_share < MIN_PROSE_FRACTION:
            continue
        # exact dedup: inherited/copied docstrings repeat verbatim across modules
        digest = hashlib.sha256(text.encode()).digest()
        if digest not in seen:
            seen.add(digest)
            docs.append(text)
    return tuple(docs)


@lru_cache(maxsize=1)
def _python_docs_cached() -> tuple[str, ...]:
    return _build_python_docs()


def python_docs_documents(cache: bool = True) -> list[str]:
    """English prose from the running Python's standard-library documentation, offline.

    Documents are the ``pydoc_data`` topics (the language reference) and the module, class
    and function docstrings of the stdlib sources (parsed with :mod:`ast`, not imported;
    tests, idlelib, lib2to3, encodings and site-packages skipped). Each is dedented, stripped
    of doctest/code paragraphs and reST underlines, and whitespace-normalised within
    paragraphs (paragraph breaks kept). Documents shorter than :data:`MIN_DOC_CHARS` or less
    than :data:`MIN_PROSE_FRACTION` prose are dropped, exact duplicates removed (first kept).

    The order is sorted by (source path, position in the file), so it is the same on every run
    with the same Python; it differs between Python versions. ``cache`` reuses the result within
    the process (the harvest takes about 1-2 s).
    """
    return list(_python_docs_cached() if cache else _build_python_docs())


# --------------------------------------------------------------------------------------------
# Local and remote sources
# --------------------------------------------------------------------------------------------

# Two or more consecutive blank lines (whitespace-only lines count as blank).
_DOCUMENT_BREAK = re.compile(r"\n(?:[ \t]*\n){2,}")


def split_text_documents(text: str) -> list[str]:
    """Split a text file's contents into documents at two or more consecutive blank lines.

    A single blank line is a paragraph break inside a document, so ordinary prose files stay
    whole; a file without such breaks is one document. Documents are stripped; empty ones
    are dropped.
    """
    return [doc.strip() for doc in _DOCUMENT_BREAK.split(text) if doc.strip()]


def _check_files(paths: Sequence[str | os.PathLike], source: str) -> list[Path]:
    if not paths:
        raise CorpusError(f"source {source!r} needs at least one file in `paths`")
    files = [Path(path) for path in paths]
    for path in files:
        if not path.is_file():
            raise CorpusError(f"corpus file {str(path)!r} (source {source!r}) does not exist")
    return files


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(f"corpus file {str(path)!r} is not UTF-8 text: {err}") from err


def read_text_documents(path: str | os.PathLike) -> list[str]:
    """Documents of one UTF-8 text file (see :func:`split_text_documents`)."""
    (file,) = _check_files([path], "text")
    return split_text_documents(_read_text(file))


def iter_jsonl_documents(path: str | os.PathLike, text_field: str = "text") -> Iterator[str]:
    """The ``text_field`` of each JSON object in a JSON-lines file; blank lines are skipped."""
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{os.fspath(path)}, line {lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise CorpusError(f"{where}: not valid JSON ({err})") from err
            if not isinstance(record, dict):
                raise CorpusError(f"{where}: expected a JSON object, got {type(record).__name__}")
            if text_field not in record:
                raise CorpusError(
                    f"{where}: no field {text_field!r} (fields: {sorted(record)}); "
                    "set `text_field` to the field that holds the text"
                )
            text = record[text_field]
            if not isinstance(text, str):
                raise CorpusError(
                    f"{where}: field {text_field!r} holds {type(text).__name__}, not a string"
                )
            yield text


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _offline_error(dataset: str, reason: str) -> CorpusError:
    return CorpusError(
        f"hf dataset {dataset!r} cannot be reached offline ({reason}). Use `source: python-docs` "
        "(built in), or a local file with `source: text` or `source: jsonl` and `paths: [...]`."
    )


def _check_hub_reachable(dataset: str, timeout: float = 5.0) -> None:
    """Fail in seconds when the hub cannot be reached, instead of after ``datasets``' retries."""
    if _env_flag("HF_HUB_OFFLINE") or _env_flag("HF_DATASETS_OFFLINE"):
        raise _offline_error(dataset, "HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set")
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # a direct connection says nothing about a proxied one; let datasets try
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname or "", port), timeout=timeout).close()
    except OSError as err:
        raise _offline_error(
            dataset, f"no connection to {endpoint.hostname}:{port}: {err}"
        ) from err


def _is_connection_error(err: BaseException) -> bool:
    name = type(err).__name__
    return isinstance(err, (ConnectionError, TimeoutError)) or any(
        key in name for key in ("Connect", "Offline", "Timeout", "LocalEntryNotFound")
    )


def iter_hf_documents(
    dataset: str, dataset_config: str | None, split: str, text_field: str = "text"
) -> Iterator[str]:
    """Stream ``text_field`` from a Hugging Face dataset; :class:`CorpusError` when offline.

    Reachability is checked before this returns (a local dataset directory skips the check);
    documents are read lazily, so only as many are downloaded as are consumed.
    """
    if not Path(dataset).exists():
        _check_hub_reachable(dataset)
    try:
        import datasets

        stream = datasets.load_dataset(dataset, dataset_config, split=split, streaming=True)
    except Exception as err:
        if _is_connection_error(err):
            raise _offline_error(dataset, f"{type(err).__name__}: {err}") from err
        raise
    return _hf_texts(stream, dataset, text_field)


def _hf_texts(stream: Iterable[dict], dataset: str, text_field: str) -> Iterator[str]:
    try:
        for index, row in enumerate(stream):
            if text_field not in row:
                raise CorpusError(
                    f"hf dataset {dataset!r}, row {index}: no field {text_field!r} "
                    f"(fields: {sorted(row)}); set `text_field`"
                )
            yield row[text_field]
    except CorpusError:
        raise
    except Exception as err:
        if _is_connection_error(err):
            raise _offline_error(dataset, f"{type(err).__name__}: {err}") from err
        raise


def iter_documents(corpus: CorpusConfig) -> Iterator[str]:
    """Documents of a corpus config, in source order (shuffling is tokenisation's job).

    Problems that can be seen up front (unknown source, missing files, hub unreachable)
    raise :class:`CorpusError` when this is called, not at the first document.
    """
    source = corpus.source
    if source == "python-docs":
        return iter(python_docs_documents())
    if source == "text":
        files = _check_files(corpus.paths, source)
        return (doc for path in files for doc in split_text_documents(_read_text(path)))
    if source == "jsonl":
        files = _check_files(corpus.paths, source)
        return (doc for path in files for doc in iter_jsonl_documents(path, corpus.text_field))
    if source == "hf":
        if not corpus.dataset:
            raise CorpusError("source 'hf' needs `dataset` (e.g. Skylion007/openwebtext)")
        return iter_hf_documents(
            corpus.dataset, corpus.dataset_config, corpus.split, corpus.text_field
        )
    raise CorpusError(f"unknown corpus source {source!r}; allowed: {list(SOURCES)}")


#: Characters collected per requested token from a streamed source: English BPE averages about
#: 4 characters a token, so this leaves room for the tokenizer and the document shuffle.
CHARS_PER_TOKEN_BUDGET = 8


def documents_for_budget(corpus: CorpusConfig) -> Iterator[str]:
    """The documents a corpus needs for its token budget.

    Finite local sources are taken whole; a streamed hub dataset is cut once it has yielded
    ``CHARS_PER_TOKEN_BUDGET * n_tokens`` characters, so the corpus file stays bounded.
    """
    docs = iter_documents(corpus)
    if corpus.source != "hf":
        return docs
    return _take_chars(docs, CHARS_PER_TOKEN_BUDGET * corpus.n_tokens)


def _take_chars(docs: Iterator[str], max_chars: int) -> Iterator[str]:
    total = 0
    for doc in docs:
        yield doc
        total += len(doc)
        if total >= max_chars:
            return


# --------------------------------------------------------------------------------------------
# Corpus files (the materialised documents)
# --------------------------------------------------------------------------------------------


def write_documents(docs: Iterable[str], path: str | os.PathLike) -> int:
    """Write documents as JSON lines ``{"text": ...}``, atomically; return how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            for doc in docs:
                handle.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count


def read_documents(path: str | os.PathLike) -> list[str]:
    """Documents written by :func:`write_documents`."""
    (file,) = _check_files([path], "jsonl")
    return list(iter_jsonl_documents(file, "text"))


# --------------------------------------------------------------------------------------------
# Tokenisation into contexts
# --------------------------------------------------------------------------------------------


class TokenizedCorpus(NamedTuple):
    """Fixed-length token contexts of a corpus."""

    tokens: np.ndarray
    """int32 ``[n_contexts, context_len]``."""
    special_mask: np.ndarray
    """bool, same shape: True where the token is one of the tokenizer's special tokens."""
    fingerprint: str
    """sha256 hex of the tokens, ``context_len``, ``bos`` and ``seed``."""


def corpus_fingerprint(tokens: np.ndarray, context_len: int, bos: str, seed: int) -> str:
    """sha256 hex over the token bytes (little-endian int32) and the packing settings."""
    digest = hashlib.sha256(
        f"{TOKENS_FORMAT}|shape={tuple(tokens.shape)}|context_len={context_len}"
        f"|bos={bos}|seed={seed}".encode()
    )
    digest.update(np.ascontiguousarray(tokens, dtype="<i4").tobytes())
    return digest.hexdigest()


def shuffle_documents(docs: Iterable[str], seed: int, buffer_size: int = 10_000) -> Iterator[str]:
    """Documents in a seeded random order.

    A sequence (list, tuple) is fully permuted. Any other iterable (e.g. a streamed hf
    dataset) goes through a shuffle buffer of ``buffer_size`` documents, so at most that many
    are read ahead of what is used; an iterable with no more than ``buffer_size`` documents
    comes out in the same order as the same documents given as a list.
    """
    rng = np.random.default_rng(seed)
    if isinstance(docs, Sequence) and not isinstance(docs, str):
        for index in rng.permutation(len(docs)):
            yield docs[index]
        return
    buffer: list[str] = []
    for doc in docs:
        if len(buffer) < buffer_size:
            buffer.append(doc)
            continue
        slot = int(rng.integers(buffer_size))
        yield buffer[slot]
        buffer[slot] = doc
    for index in rng.permutation(len(buffer)):
        yield buffer[index]


class _Packer:
    """Fills ``[n_contexts, context_len]`` row by row from a stream of document pieces."""

    def __init__(self, n_contexts: int, context_len: int, row_bos: int | None):
        self.tokens = np.empty((n_contexts, context_len), dtype=np.int32)
        self.row_bos = row_bos
        self.row = self.col = 0

    @property
    def full(self) -> bool:
        return self.row == self.tokens.shape[0]

    def add(self, ids: np.ndarray, separator: int | None = None) -> None:
        """Append ``ids`` (preceded by ``separator``), continuing into following rows."""
        width = self.tokens.shape[1]
        # with a BOS opening every row, a separator at a row start would only double it
        if separator is not None and not (self.row_bos is not None and self.col == 0):
            ids = np.concatenate([np.array([separator], dtype=np.int32), ids])
        pos = 0
        while pos < len(ids) and not self.full:
            if self.col == 0 and self.row_bos is not None:
                self.tokens[self.row, 0] = self.row_bos
                self.col = 1
            take = min(width - self.col, len(ids) - pos)
            self.tokens[self.row, self.col : self.col + take] = ids[pos : pos + take]
            pos += take
            self.col += take
            if self.col == width:
                self.row += 1
                self.col = 0

    @property
    def n_filled(self) -> int:
        return self.row * self.tokens.shape[1] + self.col


def _tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def _check_packing_args(tokenizer, context_len: int, n_contexts: int, bos: str) -> None:
    if bos not in BOS_MODES:
        raise CorpusError(f"bos: {bos!r} is not a BOS mode; allowed: {list(BOS_MODES)}")
    if bos != "none" and getattr(tokenizer, "bos_token_id", None) is None:
        raise CorpusError(
            f"tokenizer {_tokenizer_name(tokenizer)!r} has no BOS token, so bos={bos!r} is "
            f"impossible; allowed bos values for it: ['none'] (all modes: {list(BOS_MODES)})"
        )
    if n_contexts < 1:
        raise CorpusError(f"n_contexts must be at least 1, got {n_contexts}")
    min_len = 2 if bos == "per_context" else 1
    if context_len < min_len:
        raise CorpusError(f"context_len must be at least {min_len} for bos={bos!r}")


def _batched(items: Iterator[str], size: int) -> Iterator[list[str]]:
    while batch := list(islice(items, size)):
        yield batch


def tokenize_documents(
    docs: Iterable[str],
    tokenizer,
    context_len: int,
    n_contexts: int,
    bos: str,
    seed: int,
    *,
    max_doc_tokens: int | None = None,
    shuffle_buffer: int = 10_000,
    batch_docs: int = 64,
    progress: bool = True,
) -> TokenizedCorpus:
    """Shuffle ``docs`` by ``seed``, tokenise them and pack them into ``n_contexts`` contexts.

    BOS conventions (``bos``):

    * ``per_context`` (SAE-Lens pretokenising): every context starts with BOS and a BOS
      separates documents; a document that does not fit continues in the next context after
      its BOS. A separator that would fall at the start of a context is not repeated.
    * ``per_document`` (bartbussmann/matryoshka_sae): BOS + document, for each document, all
      in one stream cut into blocks, so contexts straddle documents and BOS appears anywhere.
    * ``none``: documents joined by the tokenizer's EOS (when it has one), no BOS.

    Text is tokenised without the tokenizer's own special tokens (``add_special_tokens=False``)
    and with special-token strings in the text treated as plain text, so special ids appear
    exactly where they are inserted here, whichever tokenizer it is. Empty documents are
    skipped. ``max_doc_tokens`` truncates each document (with its BOS in ``per_document``
    mode) as bartbussmann truncates to the model's context; ``None`` keeps documents whole.

    Sequences are fully shuffled; iterators through a buffer (see :func:`shuffle_documents`),
    and only as many documents are read as the contexts need. Raises :class:`CorpusError`
    when the documents run out first.
    """
    _check_packing_args(tokenizer, context_len, n_contexts, bos)
    bos_id = tokenizer.bos_token_id
    eos_id = getattr(tokenizer, "eos_token_id", None)
    packer = _Packer(n_contexts, context_len, row_bos=bos_id if bos == "per_context" else None)
    stream = shuffle_documents(docs, seed, shuffle_buffer)
    n_docs = 0
    with tqdm(total=n_contexts, unit="ctx", desc="tokenize", disable=not progress) as bar:
        for batch in _batched(stream, batch_docs):
            encoded = tokenizer(
                batch,
                add_special_tokens=False,
                split_special_tokens=True,
                return_attention_mask=False,
                verbose=False,  # long documents are expected: no "longer than max length"
            )["input_ids"]
            for ids in encoded:
                if not ids:
                    continue
                ids = np.asarray(ids, dtype=np.int32)
                separator = None
                if bos == "per_document":
                    ids = np.concatenate([np.array([bos_id], dtype=np.int32), ids])
                elif n_docs > 0:
                    separator = bos_id if bos == "per_context" else eos_id
                if max_doc_tokens is not None:
                    ids = ids[:max_doc_tokens]
                rows_before = packer.row
                packer.add(ids, separator)
                n_docs += 1
                bar.update(packer.row - rows_before)
                if packer.full:
                    break
            if packer.full:
                break
    if not packer.full:
        raise CorpusError(
            f"the corpus ran out after {n_docs} documents: {packer.n_filled} tokens fill "
            f"{packer.row} of the {n_contexts} contexts of {context_len} tokens requested "
            f"(n_tokens = {n_contexts * context_len}); lower n_tokens to at most "
            f"{packer.row * context_len}, or add documents"
        )
    tokens = packer.tokens
    special_ids = np.array(sorted(tokenizer.all_special_ids), dtype=np.int64)
    return TokenizedCorpus(
        tokens=tokens,
        special_mask=np.isin(tokens, special_ids),
        fingerprint=corpus_fingerprint(tokens, context_len, bos, seed),
    )


# --------------------------------------------------------------------------------------------
# Token store (zarr v3)
# --------------------------------------------------------------------------------------------

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
        codecs = {"compressors": [ZstdCodec(level=0), *checksum_codecs()]}
        group.create_array(
            "tokens", data=np.asarray(tokens, dtype=np.int32), chunks=chunks, **codecs
        )
        group.create_array(
            "special_mask", data=np.asarray(special_mask, bool), chunks=chunks, **codecs
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
