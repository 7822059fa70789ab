"""Static offline HTML pages for latents (standing in for the original's sae_vis notebook).

Each page shows a latent's top-activating contexts with tokens highlighted by activation, its
activation histogram (inline SVG), and the tokens its decoder direction promotes and suppresses
most (W_dec[i] · W_U, the direct logit effect). Pages need no network and no JavaScript.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from saelab.features import FeatureSummary, describe_latent, token_strings
from saelab.runtime import write_text_atomic


class LogitEffect(NamedTuple):
    top_ids: np.ndarray
    """[n_latents, n] token ids with the largest W_dec[i]·W_U, largest first."""
    top_values: np.ndarray
    bottom_ids: np.ndarray
    """[n_latents, n] token ids with the most negative effect, most negative first."""
    bottom_values: np.ndarray


def logit_effects(W_dec_rows: torch.Tensor, W_U: torch.Tensor, n: int = 10) -> LogitEffect:
    """Top and bottom ``n`` tokens of W_dec_rows [m, d] @ W_U [d, vocab]."""
    if W_dec_rows.shape[1] != W_U.shape[0]:
        raise ValueError(
            f"decoder rows are {W_dec_rows.shape[1]}-d but W_U is {tuple(W_U.shape)}: the SAE's "
            "output space is not the model's residual stream"
        )
    logits = W_dec_rows.float() @ W_U
    n = min(n, logits.shape[1])
    top = logits.topk(n, dim=1)
    bottom = (-logits).topk(n, dim=1)
    return LogitEffect(
        top.indices.numpy(), top.values.numpy(), bottom.indices.numpy(), -bottom.values.numpy()
    )


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.4em; }
.ctx { font-family: monospace; white-space: pre; line-height: 1.9; }
.tok { border-radius: 2px; padding: 1px 0; }
.peak { outline: 2px solid #c03000; }
table { border-collapse: collapse; } td, th { padding: 2px 8px; border-bottom: 1px solid #ddd; }
td.num { text-align: right; font-family: monospace; }
.logits { display: inline-block; vertical-align: top; margin-right: 3em; }
.pos { color: #1a5fb4; } .neg { color: #b01c1c; }
"""


def _show(token: str) -> str:
    return html.escape(token.replace("\n", "↵").replace("\t", "→"))


def histogram_svg(
    edges: np.ndarray, counts: np.ndarray, width: int = 480, height: int = 160
) -> str:
    """Bars of a histogram as inline SVG (axes labelled with the activation range)."""
    if counts.sum() == 0:
        return "<p>The latent never fired.</p>"
    pad, n = 30, len(counts)
    bar_w = (width - 2 * pad) / n
    top = counts.max()
    bars = []
    for i, count in enumerate(counts):
        h = (height - 2 * pad) * count / top
        x, y = pad + i * bar_w, height - pad - h
        bars.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" '
            f'fill="#e66a1f"><title>{edges[i]:.3g}–{edges[i + 1]:.3g}: {count}</title></rect>'
        )
    labels = (
        f'<text x="{pad}" y="{height - 8}" font-size="11">0</text>'
        f'<text x="{width - pad}" y="{height - 8}" font-size="11" text-anchor="end">'
        f"{edges[-1]:.3g}</text>"
        f'<text x="{pad}" y="{pad - 8}" font-size="11">max count {top}</text>'
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        f'stroke="#444"/>{"".join(bars)}{labels}</svg>'
    )


def _context_html(
    tokens: list[str], values: np.ndarray, ids: np.ndarray, peak: int, scale: float
) -> str:
    spans = []
    for j, (token, value, token_id) in enumerate(zip(tokens, values, ids, strict=True)):
        if token_id < 0:
            continue
        alpha = min(max(float(value) / scale, 0.0), 1.0) if scale > 0 else 0.0
        cls = "tok peak" if j == peak else "tok"
        spans.append(
            f'<span class="{cls}" style="background: rgba(230, 106, 31, {alpha:.2f})" '
            f'title="{float(value):.3f}">{_show(token)}</span>'
        )
    return "".join(spans)


def _page_link(latent: int) -> str:
    return f"latent_{latent}.html"


def _anchor_link(latent: int) -> str:
    return f"#latent-{latent}"


def latent_section(
    summary: FeatureSummary,
    latent: int,
    tokenizer,
    effect: LogitEffect,
    effect_row: int,
    *,
    title: str = "",
    neighbours: list[int] | None = None,
    description: str | None = None,
    link: Callable[[int], str] = _page_link,
) -> str:
    """The body of one latent's dashboard (heading to neighbour links) as an HTML fragment;
    ``link(i)`` is where a link to latent ``i`` points (its page, or an anchor on one page)."""
    before = int(summary.meta["before"])
    have = summary.top_rows[latent] >= 0
    scale = float(summary.top_values[latent, 0]) if have.any() else 0.0
    contexts = []
    for j in np.nonzero(have)[0]:
        ids = summary.context_tokens[latent, j]
        tokens = token_strings(tokenizer, ids)
        body = _context_html(tokens, summary.context_values[latent, j], ids, before, scale)
        value = summary.top_values[latent, j]
        contexts.append(f'<tr><td class="num">{value:.3f}</td><td class="ctx">{body}</td></tr>')
    contexts_html = (
        "<table><tr><th>activation</th><th>context</th></tr>" + "".join(contexts) + "</table>"
        if contexts
        else "<p>No activations in the tokens scanned.</p>"
    )

    def logit_list(ids, values, cls):
        items = "".join(
            f'<tr><td class="ctx">{_show(t)}</td><td class="num {cls}">{v:+.3f}</td></tr>'
            for t, v in zip(token_strings(tokenizer, ids), values, strict=True)
        )
        return f"<table>{items}</table>"

    links = ""
    if neighbours:
        links = (
            "<h2>Other latents of this subgraph</h2><p>"
            + " ".join(f'<a href="{link(n)}">{n}</a>' for n in neighbours if n != latent)
            + "</p>"
        )
    if description is None:
        description = describe_latent(summary, latent, tokenizer)
    description = html.escape(description)
    return f"""<h1 id="latent-{latent}">Latent {latent} {html.escape(title)}</h1>
<p>{description}</p>
<p>fires on {int(summary.firing_count[latent])} of {summary.n_tokens} tokens
(SAE {html.escape(str(summary.meta.get("sae", "")))}, hook {html.escape(summary.meta["hook"])})</p>
<h2>Top activations</h2>
{contexts_html}
<h2>Activation histogram (positive activations)</h2>
{histogram_svg(summary.hist_edges[latent], summary.hist_counts[latent])}
<h2>Direct logit effect of the decoder direction</h2>
<div class="logits"><b>promoted</b>{logit_list(effect.top_ids[effect_row], effect.top_values[effect_row], "pos")}</div>
<div class="logits"><b>suppressed</b>{logit_list(effect.bottom_ids[effect_row], effect.bottom_values[effect_row], "neg")}</div>
{links}
"""


def _html_document(title: str, body: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head><body>
{body}</body></html>
"""


def write_dashboards(
    summary: FeatureSummary,
    latents: list[int],
    tokenizer,
    W_dec: torch.Tensor,
    W_U: torch.Tensor,
    out_dir: str | os.PathLike,
    *,
    title: str = "",
    n_logits: int = 10,
    single_page: str | os.PathLike | None = None,
) -> list[Path]:
    """``latent_{i}.html`` for each latent and an ``index.html``, in ``out_dir`` (which should be
    a fresh temporary directory: see :func:`saelab.runtime.atomic_dir`).

    ``single_page``: also every latent on one self-contained page (the index at the top, links
    as in-page anchors), written atomically; this is the page ``snakemake --report`` embeds,
    since a pure HTML report cannot hold a folder of pages that link to each other.
    """
    out_dir = Path(out_dir)
    latents = [int(i) for i in latents]
    if not latents:
        raise ValueError("no latents to write pages for")
    effect = logit_effects(W_dec[torch.tensor(latents)].detach(), W_U, n_logits)
    pages = []
    index_rows = []
    sections = []
    for row, latent in enumerate(latents):
        page = out_dir / f"latent_{latent}.html"
        description = describe_latent(summary, latent, tokenizer)
        section = partial(latent_section, summary, latent, tokenizer, effect, row, title=title,
                          neighbours=latents, description=description)  # fmt: skip
        back = '<p><a href="{}">all latents</a></p>\n'
        page.write_text(
            _html_document(
                f"latent {latent}", section(link=_page_link) + back.format("index.html")
            ),
            encoding="utf-8",
        )
        if single_page is not None:
            sections.append(section(link=_anchor_link) + back.format("#top") + "<hr>\n")
        pages.append(page)
        index_rows.append((latent, html.escape(description)))

    def index(link: Callable[[int], str]) -> str:
        items = "".join(
            f'<li><a href="{link(latent)}">latent {latent}</a>: {description}</li>'
            for latent, description in index_rows
        )
        return f'<h1 id="top">{html.escape(title)}</h1>\n<ul>{items}</ul>\n'

    (out_dir / "index.html").write_text(_html_document(title, index(_page_link)), encoding="utf-8")
    if single_page is not None:
        write_text_atomic(
            _html_document(title, index(_anchor_link) + "<hr>\n" + "".join(sections)), single_page
        )
    return pages
