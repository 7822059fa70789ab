"""Tests of ``saelab.cache.build``, moved from tests/test_cache.py.

Notes shared with the other tests moved from tests/test_cache.py: ``tests/cache/__init__.py``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from saelab.cache import (
    PROGRESS_FILE,
    ActivationReader,
    CacheError,
    TLActivationSource,
    build_cache,
    cache_manifest,
    open_cache,
)
from tests.cache.helpers import BATCH, CTX, HOOKS, N_CONTEXTS, tiny_tl_model, token_contexts


def test_cache_holds_the_model_activations(model, built):
    path, summary, tokens, special = built
    assert summary.n_tokens == N_CONTEXTS * CTX
    group = zarr.open_group(path, mode="r")
    _, cache = model.run_with_cache(torch.from_numpy(tokens.astype(np.int64)))
    for hook in HOOKS:
        expected = cache[hook].reshape(N_CONTEXTS * CTX, -1).numpy()
        np.testing.assert_allclose(group[hook][:], expected, rtol=1e-5, atol=1e-6)
    # row = context * ctx + position, for the token ids as well
    np.testing.assert_array_equal(group["tokens"][:], tokens.reshape(-1))
    np.testing.assert_array_equal(group["special_mask"][:], special.reshape(-1))
    assert group["blocks.1.attn.hook_z"].shape == (N_CONTEXTS * CTX, 4 * 8)


def test_cache_is_chunked_along_rows_and_has_a_manifest(built):
    path, *_ = built
    group = open_cache(path)
    assert group["blocks.0.hook_resid_pre"].chunks == (BATCH * CTX, 32)
    manifest = cache_manifest(path)
    assert manifest["model"] == "toy"
    assert manifest["hooks"] == HOOKS
    assert manifest["widths"]["blocks.1.attn.hook_z"] == 32
    assert manifest["context_len"] == CTX and manifest["n_tokens"] == N_CONTEXTS * CTX
    assert manifest["dtype"] == "float32" and "saelab_version" in manifest
    assert not (path / PROGRESS_FILE).exists()
    assert not path.with_name(path.name + ".partial").exists()


def test_bad_inputs_fail_clearly_and_keep_what_exists(model, built, tmp_path):
    path, *_ = built
    tokens, special = token_contexts()
    source = TLActivationSource(model, HOOKS[:1])
    before = open_cache(path)[HOOKS[0]][:]
    with pytest.raises(CacheError, match="already exists"):
        build_cache(source, tokens, special, HOOKS[:1], path, progress=False)
    np.testing.assert_array_equal(open_cache(path)[HOOKS[0]][:], before)
    with pytest.raises(CacheError, match="same shape"):
        build_cache(source, tokens, special[:, :3], HOOKS[:1], tmp_path / "x.zarr", progress=False)
    with pytest.raises(CacheError, match="does not exist in this model"):
        TLActivationSource(model, ["blocks.0.hook_nonsense"])
    with pytest.raises(CacheError, match="cache_activations"):
        open_cache(tmp_path / "missing.zarr")
    with pytest.raises(CacheError, match="not in the cache"):
        ActivationReader(path, "blocks.2.hook_resid_post", 8)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time, numpy as np, torch
    sys.path.insert(0, {tests!r})
    from tests.cache.helpers import tiny_tl_model, token_contexts, HOOKS, BATCH
    from saelab.cache import TLActivationSource, build_cache
    torch.set_num_threads(1)
    tokens, special = token_contexts()
    def slow(done):
        print(done, flush=True)
        time.sleep({sleep})
    build_cache(TLActivationSource(tiny_tl_model(), HOOKS), tokens, special, HOOKS, {path!r},
                dtype="float32", batch_contexts=BATCH, progress=False, on_batch=slow)
    """
)


def test_killed_cache_resumes_to_bitwise_identical_arrays(built, tmp_path):
    reference, *_ = built
    path = tmp_path / "resumed.zarr"
    script = KILL_SCRIPT.format(
        tests=str(Path(__file__).resolve().parents[2]), path=str(path), sleep=0.5
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    # Wait until two batches are committed, then kill the process hard.
    committed = [proc.stdout.readline() for _ in range(2)]
    assert committed[-1].strip() == str(2 * BATCH)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = path.with_name(path.name + ".partial")
    assert not path.exists(), "a killed job must leave nothing that looks complete"
    done = json.loads((partial / PROGRESS_FILE).read_text())["contexts_done"]
    assert 2 * BATCH <= done < N_CONTEXTS

    resumed_from = []
    torch.set_num_threads(1)
    tokens, special = token_contexts()
    summary = build_cache(
        TLActivationSource(tiny_tl_model(), HOOKS), tokens, special, HOOKS, path,
        dtype="float32", batch_contexts=BATCH, progress=False,
        on_batch=resumed_from.append,
    )  # fmt: skip
    assert summary.resumed_from_context == done
    assert resumed_from[0] == done + BATCH  # the first batch run again is the one after
    ref, out = zarr.open_group(reference, mode="r"), zarr.open_group(path, mode="r")
    for name in [*HOOKS, "tokens", "special_mask"]:
        assert np.array_equal(ref[name][:], out[name][:]), name


def test_resume_discards_a_partial_of_another_job(model, tmp_path):
    tokens, special = token_contexts()
    path = tmp_path / "c.zarr"
    partial = path.with_name(path.name + ".partial")
    partial.mkdir()
    (partial / PROGRESS_FILE).write_text(
        json.dumps({"identity": {"hooks": ["x"]}, "contexts_done": 8})
    )
    summary = build_cache(
        TLActivationSource(model, HOOKS[:1]), tokens, special, HOOKS[:1], path, progress=False
    )
    assert summary.resumed_from_context == 0 and path.exists()
