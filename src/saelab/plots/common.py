"""Shared figure helpers."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib import ticker
from matplotlib.figure import Figure

#: Fonts tried in order for text that shows model tokens (any script): DejaVu, then Noto's core
#: scripts (Debian ``fonts-noto-core``), Droid Sans Fallback (CJK, kana; ``fonts-droid-fallback``)
#: and WenQuanYi Micro Hei (Hangul; ``fonts-wqy-microhei``): ``make fonts`` installs them.
#: Missing ones are skipped.
TOKEN_FONTS = (
    "DejaVu Sans", "Noto Sans", "Droid Sans Fallback", "WenQuanYi Micro Hei", "Noto Sans Arabic",
    "Noto Sans Hebrew",
    "Noto Sans Devanagari", "Noto Sans Bengali", "Noto Sans Tamil", "Noto Sans Telugu",
    "Noto Sans Kannada", "Noto Sans Malayalam", "Noto Sans Gujarati", "Noto Sans Gurmukhi",
    "Noto Sans Oriya", "Noto Sans Sinhala", "Noto Sans Thai", "Noto Sans Lao", "Noto Sans Khmer",
    "Noto Sans Myanmar", "Noto Sans Georgian", "Noto Sans Armenian", "Noto Sans Ethiopic",
    "Noto Sans Syriac", "Noto Sans Thaana", "Noto Sans Tibetan", "Noto Sans Mongolian",
    "Noto Sans Math", "Noto Sans Symbols", "Noto Sans Symbols2",
)  # fmt: skip


@functools.cache
def token_font_families() -> tuple[str, ...]:
    """The installed fonts of :data:`TOKEN_FONTS`, in order. Fonts installed after matplotlib
    built its font cache are registered first (the cache does not see new system fonts)."""
    from matplotlib import font_manager

    def known() -> set[str]:
        return {entry.name for entry in font_manager.fontManager.ttflist}

    if not set(TOKEN_FONTS) <= known():
        for path in sorted(font_manager.findSystemFonts()):
            with contextlib.suppress(Exception):  # a file FreeType cannot read is skipped
                font_manager.fontManager.addfont(path)
    have = known()
    return tuple(name for name in TOKEN_FONTS if name in have)


@functools.cache
def _token_charset() -> frozenset[int]:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    chars: set[int] = set()
    for name in token_font_families():
        path = font_manager.findfont(font_manager.FontProperties(family=name),
                                     fallback_to_default=False)  # fmt: skip
        chars.update(FT2Font(path).get_charmap())
    return frozenset(chars)


def displayable(text: str) -> str:
    """``text`` with every character that no installed :data:`TOKEN_FONTS` font can draw (and
    every control or format character) written as a ``\\u`` escape (``\\U0001f600`` for an emoji), so a figure never shows a missing-glyph
    box; everything a font covers is kept as is."""
    charset = _token_charset()
    out = []
    for char in text:
        code = ord(char)
        if char == " " or (code in charset and unicodedata.category(char)[0] != "C"):
            out.append(char)
        else:
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return "".join(out)


@contextlib.contextmanager
def token_fonts() -> Iterator[None]:
    """Figures made inside draw their text with the :data:`TOKEN_FONTS` fallback list (each
    text keeps the fonts it was created with, so saving may happen outside)."""
    with plt.rc_context({"font.family": list(token_font_families())}):
        yield


def uses_token_fonts(func: Callable[..., Figure]) -> Callable[..., Figure]:
    """Decorator: the figure function runs inside :func:`token_fonts`."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs) -> Figure:
        with token_fonts():
            return func(*args, **kwargs)

    return wrapper


#: savefig metadata per format that leaves out the matplotlib version and creation dates.
STABLE_METADATA = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
    "svg": {"Creator": None, "Date": None},
}


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> None:
    """Save atomically: a killed job leaves no half-written image that looks complete. No
    ``Software`` (or date) metadata is written, so the same figure gives the same bytes."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
    fig.savefig(tmp, dpi=dpi, metadata=STABLE_METADATA.get(target.suffix.lower().lstrip(".")))
    plt.close(fig)
    os.replace(tmp, target)


def _plain(value: float) -> str:
    """A tick value as short plain text: 30, 0.05, 2500, 1e+06 (no ×10ⁿ run-ons)."""
    return f"{value:g}"


def log_ticks(lo: float, hi: float, max_ticks: int = 6) -> np.ndarray:
    """Readable tick positions for a log axis over [lo, hi], at most ``max_ticks`` of them.

    Over a decade or more: powers of ten, plus 2× and 5× while they fit. Within one decade
    (where matplotlib labels every minor tick and the labels run together): a few round values
    of a linear scale.
    """
    if not (0 < lo < hi) or not np.isfinite([lo, hi]).all():
        raise ValueError(f"a log axis needs 0 < lo < hi, got [{lo}, {hi}]")
    first, last = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))

    def inside(subs) -> np.ndarray:
        ticks = np.array([m * 10.0**e for e in range(first, last + 1) for m in subs])
        return ticks[(ticks >= lo * (1 - 1e-9)) & (ticks <= hi * (1 + 1e-9))]

    one_two_five, decades = inside((1, 2, 5)), inside((1,))
    if 3 <= len(one_two_five) <= max_ticks:
        return one_two_five
    if 2 <= len(decades) <= max_ticks:
        return decades
    if len(decades) > max_ticks:  # many decades: every n-th power of ten
        return decades[:: int(np.ceil(len(decades) / max_ticks))]
    locator = ticker.MaxNLocator(nbins=max_ticks - 1, steps=[1, 2, 2.5, 5, 10])
    # matplotlib's stubs say Sequence[float]; tick_values returns an ndarray
    ticks = cast(np.ndarray, locator.tick_values(lo, hi))
    return ticks[(ticks >= lo * (1 - 1e-9)) & (ticks <= hi * (1 + 1e-9)) & (ticks > 0)]


def readable_log_axis(ax, which: str = "x", max_ticks: int = 6) -> None:
    """Put :func:`log_ticks` on a log axis of ``ax`` (``"x"`` or ``"y"``) with plain labels and
    no labelled minor ticks. Call it after the data and limits are set."""
    if which not in ("x", "y"):
        raise ValueError(f"which must be 'x' or 'y', got {which!r}")
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
    # FixedLocator takes any array (np.asarray inside); its stub says Sequence[float]
    _fixed_plain_ticks(axis, log_ticks(lo, hi, max_ticks))


def _fixed_plain_ticks(axis, locs: np.ndarray) -> None:
    """Major ticks at ``locs`` with plain labels (:func:`_plain`), minor ticks unlabelled."""
    axis.set_major_locator(ticker.FixedLocator(locs))  # pyright: ignore[reportArgumentType]
    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: _plain(value)))
    axis.set_minor_formatter(ticker.NullFormatter())


def ticks_at_values(ax, which: str, values, max_ticks: int = 6) -> None:
    """Label a log axis at the data's own values (e.g. SAE widths 256 … 4096, which
    :func:`log_ticks`' 1-2-5 ticks would leave unlabelled at both ends), when there are at most
    ``max_ticks`` distinct ones; else :func:`readable_log_axis`."""
    distinct = np.unique(np.asarray(values, dtype=float))
    if not 2 <= len(distinct) <= max_ticks:
        readable_log_axis(ax, which, max_ticks)
        return
    _fixed_plain_ticks(ax.xaxis if which == "x" else ax.yaxis, distinct)


def write_plotly_html(
    fig,
    path: str | os.PathLike,
    include_plotlyjs: bool | str = True,
    post_script: str | None = None,
) -> Path:
    """A plotly figure as a full HTML page, atomically. ``include_plotlyjs=True`` inlines
    plotly.js (the page opens offline on its own); ``"directory"`` writes one ``plotly.min.js``
    beside the pages and links it. The plot's element id comes from the file name (plotly's
    default is a random UUID), so the same figure gives the same bytes."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
    div_id = "plot-" + hashlib.sha256(target.name.encode()).hexdigest()[:16]
    fig.write_html(tmp, include_plotlyjs=include_plotlyjs, full_html=True, post_script=post_script,
                   div_id=div_id)  # fmt: skip
    os.replace(tmp, target)
    return target


def interval_yerr(rows, key: str, metric: str):
    """Asymmetric error bars [2, n] (``yerr`` of bar/errorbar) from each row's
    ``intervals[metric]`` ([low, high] around ``row[key]``), or None if any row lacks one.
    A percentile bootstrap interval need not contain the point (with 2 contexts its bound is
    the point up to rounding): a bar from the point to a bound beyond it is drawn as 0."""
    found = [(row.get("intervals") or {}).get(metric) for row in rows]
    spans = [span for span in found if span is not None]
    if len(spans) != len(found):
        return None
    return [[max(row[key] - lo, 0.0) for row, (lo, _) in zip(rows, spans, strict=True)],
            [max(hi - row[key], 0.0) for row, (_, hi) in zip(rows, spans, strict=True)]]  # fmt: skip
