"""Tests of ``saelab.cooccurrence.dashboards``, moved from tests/test_cooccurrence.py.

Notes shared with the other tests moved from tests/test_cooccurrence.py:
``tests/cooccurrence/__init__.py``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from saelab.cooccurrence.dashboards import logit_effects, write_dashboards
from saelab.features import collect_feature_summary
from tests.cooccurrence.helpers import identity_sae

# ------------------------------------------------------------------ feature pages


def find_chromium() -> str:
    """The Debian chromium binary; a missing browser is a failure, not a skip."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    pytest.fail("no headless browser found: run `apt-get install chromium` (Debian chromium)")


class FakeTokenizer:
    def decode(self, ids):
        return f"<t{int(ids[0])}>" if int(ids[0]) % 2 else f" w{int(ids[0])}"


def test_logit_effects_by_hand():
    W_U = torch.tensor([[1.0, -1.0, 0.0], [0.0, 2.0, -3.0]])  # d = 2, vocab = 3
    effect = logit_effects(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), W_U, n=2)
    assert effect.top_ids.tolist() == [[0, 2], [1, 0]]
    assert effect.bottom_ids.tolist() == [[1, 2], [2, 0]]
    assert effect.bottom_values[1, 0] == -3.0
    with pytest.raises(ValueError, match="residual"):
        logit_effects(torch.ones(1, 3), W_U)


def write_test_pages(cache, out: Path, single_page: Path | None = None) -> list[Path]:
    """Pages of latents 0 and 1 of the identity SAE on ``cache``, in the fresh folder ``out``."""
    sae = identity_sae()
    summary = collect_feature_summary(sae, cache, 1000, top_n=3, before=2, after=1,
                                      progress=False)  # fmt: skip
    W_U = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    out.mkdir()
    return write_dashboards(summary, [0, 1], FakeTokenizer(), sae.W_dec, W_U, out, title="S 7",
                            single_page=single_page)  # fmt: skip


def test_feature_pages_also_come_as_one_page_for_the_report(cache, tmp_path):
    single = tmp_path / "one.html"
    pages = write_test_pages(cache, tmp_path / "pages", single)
    text = single.read_text()
    assert text.count("<!DOCTYPE html>") == 1 and text.count("Top activations") == 2
    assert '<h1 id="latent-0">' in text and '<h1 id="latent-1">' in text
    # links stay inside the page: the index and the neighbour links point at anchors
    assert 'href="#latent-1"' in text and 'href="#latent-0"' in text
    assert "latent_1.html" not in text and "index.html" not in text
    # each latent's section is the body of its own page, only the links differ
    own = pages[0].read_text()
    section = own[own.index('<h1 id="latent-0">') : own.index("<h2>Other latents")]
    assert section in text
    assert 'href="latent_1.html"' in own and 'href="index.html"' in own


def test_feature_pages_render_in_headless_chromium(cache, tmp_path):
    out = tmp_path / "pages"
    pages = write_test_pages(cache, out)
    text = pages[0].read_text()
    # latent 0's top activation is 3.0 on row 9 (token 9), drawn with full highlight
    assert 'title="3.000"' in text and "&lt;t9&gt;" in text and "rgba(230, 106, 31, 1.00)" in text
    assert "<svg" in text and "promoted" in text and 'href="latent_1.html"' in text
    assert (out / "index.html").is_file()

    shot = tmp_path / "shot.png"
    browser = find_chromium()
    run = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--screenshot={shot}", "--window-size=900,700", pages[0].as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.is_file(), f"chromium made no screenshot: {run.stderr[-2000:]}"
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[0] > 100 and image.shape[1] > 100
    non_white = (image < 240).any(axis=2)
    assert non_white.mean() > 0.005  # text, bars and highlights were drawn
    orange = (image[..., 0] > 200) & (image[..., 1] < 150) & (image[..., 2] < 100)
    assert orange.sum() > 20  # the histogram bars / highlights
