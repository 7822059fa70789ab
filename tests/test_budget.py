"""Tests of ``saelab.budget``; the Snakemake dry run went to tests/e2e/test_budget.py.

Budgets stated when the DAG is built (saelab.budget): cache bytes against a cache written to
disk, a stop with the number, the free space, the key to change and the streaming way out, both
with a mocked free-space figure and from a real `snakemake -n`."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest
import torch

from saelab import budget
from saelab.budget import BudgetError, cache_bytes, check_disk, model_shape, plan
from saelab.cache import build_cache
from saelab.checks import load_config
from saelab.models import resolve_model
from tests.conftest import MICRO


@pytest.fixture(scope="module")
def micro():
    return load_config(MICRO)


def test_cache_bytes_match_a_cache_written_to_disk(micro, tmp_path):
    info = resolve_model("tiny", tiny=micro.tiny)
    shape = model_shape(info, micro.tiny)
    cache = micro.caches["main"]
    ctx = micro.corpora[cache.corpus].context_len
    n_contexts = cache.n_tokens // ctx
    # By hand: 512 contexts x 64 tokens x (4 d_model hooks + hook_z of n_heads x d_head) x 4 B
    # + ids and mask (5 B per token).
    widths = {h: 64 for h in cache.hooks}  # micro: d_model 64, 4 heads of 16
    assert shape.d_model == 64 and shape.n_heads * shape.d_head == 64
    expected = n_contexts * ctx * (sum(widths.values()) * 4 + 5)
    assert cache_bytes(micro, "main", shape) == expected

    def source(tokens):
        return {h: torch.ones(*tokens.shape, w) for h, w in widths.items()}

    tokens = np.ones((n_contexts, ctx), dtype=np.int32)
    path = tmp_path / "main.zarr"
    build_cache(source, tokens, tokens == 0, cache.hooks, path, dtype=cache.dtype,
                batch_contexts=cache.batch_contexts, progress=False)  # fmt: skip
    on_disk = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert abs(on_disk - expected) / expected < 0.05, (on_disk, expected)


def test_a_cache_larger_than_the_free_space_stops_with_what_to_change(micro, monkeypatch, tmp_path):
    info = resolve_model("tiny", tiny=micro.tiny)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(budget.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10**6, 10**6))
    planned = plan(micro, info, tmp_path / "data")
    assert planned.free == 10**6
    assert planned.to_write > 10**6
    text = "\n".join(planned.lines)
    assert "cache main: 0.0421 GB (32,768 tokens x 5 hooks, float32)" in text
    assert "peak memory" in text
    with pytest.raises(BudgetError) as err:
        check_disk(planned, tmp_path / "data")
    message = str(err.value)
    assert f"{planned.to_write:,} bytes" in message
    assert "0.001 GB free" in message
    assert "caches.main.n_tokens" in message  # the largest cache of the micro config
    assert "training.source: stream" in message
    monkeypatch.setattr(budget.shutil, "disk_usage", lambda p: usage(10**12, 0, 10**12))
    check_disk(plan(micro, info, tmp_path / "data"), tmp_path / "data")  # fits: no error


def test_complete_caches_are_not_counted_again(micro, tmp_path):
    info = resolve_model("tiny", tiny=micro.tiny)
    before = plan(micro, info, tmp_path / "data").to_write
    (tmp_path / "data" / "cache" / "tiny" / "main.zarr").mkdir(parents=True)
    after = plan(micro, info, tmp_path / "data").to_write
    assert before - after == micro_cache_bytes(micro, info)


def micro_cache_bytes(micro, info):
    return cache_bytes(micro, "main", model_shape(info, micro.tiny))
