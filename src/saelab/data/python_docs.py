"""Built-in corpus: English prose from the Python standard library's documentation."""

from __future__ import annotations

import ast
import hashlib
import inspect
import os
import re
import sysconfig
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    pass


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
