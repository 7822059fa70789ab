"""Where documents come from (local text, JSON lines, the hub) and the corpus file."""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    from saelab.config import CorpusConfig


from saelab.data.errors import CorpusError
from saelab.data.python_docs import python_docs_documents

#: Values of ``CorpusConfig.source``.
SOURCES = ("python-docs", "text", "jsonl", "hf")


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
