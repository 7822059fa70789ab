"""End-to-end tests (they run Snakemake) moved from tests/test_budget.py.

Notes shared with the other tests moved from tests/test_budget.py: ``tests/test_budget.py``."""

from __future__ import annotations

import shutil

from tests.conftest import MICRO, snakemake


def test_the_dag_stops_before_any_job_when_a_cache_cannot_fit(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    # The layers cache (2 layers x 64 x 4 B per token) alone: twice the free space.
    tokens = int(free // (2 * 64 * 4) * 2)
    overlay = tmp_path / "huge.yaml"
    overlay.write_text(
        f"corpora:\n  python-docs:\n    n_tokens: {tokens}\ncaches:\n  layers:\n    n_tokens: null\n"
    )
    result = snakemake(tmp_path, "-n", "--configfile", str(MICRO), str(overlay), check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-2000:]
    assert "saelab budget: cache layers:" in out
    assert "caches.layers.n_tokens" in out
    assert "budget: the caches and corpora still to be written need" in out
    assert "training.source: stream" in out
    assert not (tmp_path / "data").exists()
