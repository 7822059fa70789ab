"""The zarr activation cache: contents, stopping early, resume after a real kill, the reader."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import zarr
from hf_models import HF_CASES, perturb_norms, save_hf
from transformer_lens import HookedTransformer, HookedTransformerConfig

from saelab.cache import (
    PROGRESS_FILE,
    ActivationReader,
    CacheError,
    TLActivationSource,
    build_cache,
    cache_manifest,
    open_cache,
)

HOOKS = [
    "blocks.0.hook_resid_pre",
    "blocks.0.hook_resid_mid",
    "blocks.1.hook_mlp_out",
    "blocks.1.attn.hook_z",
]
N_CONTEXTS, CTX, BATCH = 24, 16, 4


def tiny_tl_model(seed: int = 0) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=CTX, d_vocab=100,
        act_fn="gelu", normalization_type="LN", seed=seed,
    )  # fmt: skip
    return HookedTransformer(cfg).eval()


def token_contexts(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 100, size=(N_CONTEXTS, CTX)).astype(np.int32)
    tokens[:, 0] = 0  # BOS
    tokens[5, 7] = 0  # a document boundary mid-context
    return tokens, tokens == 0


@pytest.fixture(scope="module")
def model():
    return tiny_tl_model()


@pytest.fixture(scope="module")
def built(model, tmp_path_factory):
    tokens, special = token_contexts()
    path = tmp_path_factory.mktemp("cache") / "main.zarr"
    summary = build_cache(
        TLActivationSource(model, HOOKS), tokens, special, HOOKS, path,
        dtype="float32", batch_contexts=BATCH, manifest={"model": "toy"}, progress=False,
    )  # fmt: skip
    return path, summary, tokens, special


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


def test_tl_source_stops_after_the_deepest_hook(model):
    ran = []
    handle = model.blocks[2].register_forward_hook(lambda *_: ran.append(True))
    try:
        TLActivationSource(model, ["blocks.1.hook_resid_post"])(torch.zeros(1, 4, dtype=torch.long))
        assert not ran, "block 2 ran although the deepest hook is in block 1"
        TLActivationSource(model, ["blocks.2.hook_resid_post"])(torch.zeros(1, 4, dtype=torch.long))
        assert ran
    finally:
        handle.remove()


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
    from test_cache import tiny_tl_model, token_contexts, HOOKS, BATCH
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
    script = KILL_SCRIPT.format(tests=os.path.dirname(__file__), path=str(path), sleep=0.5)
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


# ------------------------------------------------------------------ reader


def test_reader_splits_cover_every_non_special_row_once(built):
    path, _, _, special = built
    keep = set(np.flatnonzero(~special.reshape(-1)))
    seen = {}
    for split in ("train", "heldout"):
        reader = ActivationReader(path, HOOKS[0], 10, split=split, drop_last=False, buffer_chunks=2)
        rows = np.concatenate([r for _, r in reader.batches(with_rows=True)])
        assert len(rows) == len(set(rows)), "a row was yielded twice in one epoch"
        seen[split] = set(rows)
    assert seen["train"].isdisjoint(seen["heldout"])
    assert seen["train"] | seen["heldout"] == keep
    heldout_contexts = {r // CTX for r in seen["heldout"]}
    assert heldout_contexts == {N_CONTEXTS - 1}  # 5% of 24 contexts rounds to one


def test_reader_batches_mix_sequences_and_match_the_arrays(built):
    path, *_ = built
    group = zarr.open_group(path, mode="r")
    reader = ActivationReader(path, [HOOKS[1], HOOKS[2]], 32, seed=3, buffer_chunks=4)
    (mid, mlp), rows = next(reader.batches(with_rows=True))
    assert mid.dtype == torch.float32 and mid.shape == (32, 32)
    np.testing.assert_array_equal(mid.numpy(), group[HOOKS[1]][:][rows])
    np.testing.assert_array_equal(mlp.numpy(), group[HOOKS[2]][:][rows])
    contexts = rows // CTX
    assert len(set(contexts)) >= 8, "a shuffled batch should draw from many sequences"
    # Same seed, same order; the next epoch reshuffles.
    again = ActivationReader(path, [HOOKS[1], HOOKS[2]], 32, seed=3, buffer_chunks=4)
    _, rows_again = next(again.batches(with_rows=True))
    np.testing.assert_array_equal(rows, rows_again)
    _, rows_epoch2 = next(again.batches(with_rows=True))
    assert not np.array_equal(rows, rows_epoch2)


def test_reader_memory_is_bounded_by_the_buffer(built, monkeypatch):
    path, *_ = built
    reader = ActivationReader(path, HOOKS[0], 8, buffer_chunks=2)
    reads = []
    original = reader._read_block

    def counting(start, stop):
        reads.append((start, stop))
        return original(start, stop)

    monkeypatch.setattr(reader, "_read_block", counting)
    batches = reader.batches()
    next(batches)
    assert len(reads) == 2, "the first batch should need only buffer_chunks chunks"
    assert all(stop - start <= BATCH * CTX for start, stop in reads)


def test_read_all_is_in_row_order(built):
    path, *_ = built
    group = zarr.open_group(path, mode="r")
    everything = ActivationReader(path, HOOKS[0], 8, split="all", exclude_special=False).read_all()
    np.testing.assert_array_equal(everything.numpy(), group[HOOKS[0]][:])


# ------------------------------------------------------------------ the two backends agree

ALL_SITES = [
    "blocks.1.hook_resid_pre",
    "blocks.1.hook_attn_out",
    "blocks.1.hook_resid_mid",
    "blocks.1.hook_mlp_out",
    "blocks.1.hook_resid_post",
    "blocks.1.attn.hook_z",
]


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_transformers_backend_matches_transformer_lens(
    case, small_tokenizer_dir, tmp_path, monkeypatch
):
    """The fast backend's hooks equal TransformerLens's on the same unprocessed weights."""
    from saelab.cache import HFActivationSource, activation_source
    from saelab.models import prepare_model, resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    build, name = HF_CASES[case]
    torch.manual_seed(0)
    hf_model = build(400).eval()
    perturb_norms(hf_model)
    info = resolve_model(
        name, model_path=str(save_hf(hf_model, small_tokenizer_dir, tmp_path / "hf"))
    )
    model_dir = tmp_path / "model"
    prepare_model(info, model_dir)

    fast = activation_source(info, model_dir, ALL_SITES, "cpu")
    slow = activation_source(info, model_dir, ALL_SITES, "cpu", backend="transformer_lens")
    assert isinstance(fast, HFActivationSource) and isinstance(slow, TLActivationSource)
    tokens = torch.randint(3, 400, (2, 24), generator=torch.Generator().manual_seed(1))
    got, want = fast(tokens), slow(tokens)
    for hook in ALL_SITES:
        assert want[hook].abs().max() > 1e-2, hook  # a real signal to compare
        torch.testing.assert_close(got[hook], want[hook], atol=1e-4, rtol=1e-4, msg=hook)


def test_transformers_backend_stops_after_the_deepest_hook(tmp_path):
    from saelab.cache import HFActivationSource

    hf_model = HF_CASES["gemma3"][0](400).eval()
    ran = []
    for index in (1, 2):  # attention ran = the block's computation started
        hf_model.model.layers[index].self_attn.register_forward_hook(
            lambda *_, index=index: ran.append(index)
        )
    tokens = torch.randint(3, 400, (1, 8))
    HFActivationSource(hf_model, ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"])(tokens)
    assert ran == [], "block 1 must not run when only its input is needed"
    HFActivationSource(hf_model, ["blocks.1.hook_mlp_out"])(tokens)
    assert ran == [1]


def test_float16_overflow_is_an_error_not_inf(tmp_path):
    tokens, special = token_contexts()

    def huge(batch):  # a residual stream beyond float16's range (65504)
        return {"blocks.0.hook_resid_pre": torch.full((*batch.shape, 8), 1e6)}

    path = tmp_path / "big.zarr"
    with pytest.raises(CacheError, match=r"non-finite activations.*float32"):
        build_cache(huge, tokens, special, ["blocks.0.hook_resid_pre"], path, progress=False)
    assert not path.exists()


# ---------------------------------------------------------------------------------------------
# Chunk checksums: a flipped or truncated chunk file is an error naming array, chunk and command
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def damaged_copy(built, tmp_path):
    """A fresh copy of the built cache, so damaging it leaves the module's cache intact."""
    import shutil

    path = tmp_path / "main.zarr"
    shutil.copytree(built[0], path)
    return path


def _chunk_path(cache, name, index):
    return (
        cache / name / "c" / str(index) / "0"
        if name.startswith("blocks")
        else (cache / name / "c" / str(index))
    )


def test_every_cache_array_carries_a_crc32c(built):
    from zarr.codecs import Crc32cCodec

    group = zarr.open_group(built[0], mode="r")
    for name in [*HOOKS, "tokens", "special_mask"]:
        assert any(isinstance(c, Crc32cCodec) for c in group[name].metadata.codecs), name
    assert cache_manifest(built[0])["checksum"] == "crc32c"


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_chunk_names_array_chunk_and_rebuild_command(damaged_copy, damage):
    from saelab.cache import CorruptChunkError

    hook, index = HOOKS[1], 2  # rows 128..191 with 4 contexts of 16 per chunk
    chunk = _chunk_path(damaged_copy, hook, index)
    data = bytearray(chunk.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x40  # one bit of one float32 in the middle of the chunk
    else:
        data = data[: len(data) // 2]
    chunk.write_bytes(bytes(data))

    reader = ActivationReader(damaged_copy, hook, 32, split="all", shuffle=False)
    with pytest.raises(CorruptChunkError) as info:
        reader.read_all()
    message = str(info.value)
    assert f"chunk {index} of array {hook!r}" in message
    assert "rows 128..191" in message and str(chunk) in message
    assert f"snakemake --cores all --force {damaged_copy}" in message
    assert "reshape" not in message.split("(")[0]
    # Reads that do not touch the bad chunk still work; a read that does fails the same way.
    group = open_cache(damaged_copy)
    np.testing.assert_array_equal(group[hook][:128], zarr.open_group(damaged_copy)[hook][:128])
    with pytest.raises(CorruptChunkError, match=f"chunk {index} of array"):
        group[hook][150:160]
    with pytest.raises(CorruptChunkError, match=f"chunk {index} of array"):
        open_cache(damaged_copy).verify()


def test_a_damaged_token_chunk_in_the_cache_is_named_too(damaged_copy):
    from saelab.cache import CorruptChunkError

    chunk = _chunk_path(damaged_copy, "tokens", 1)
    data = bytearray(chunk.read_bytes())
    data[0] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(CorruptChunkError, match="chunk 1 of array 'tokens'"):
        open_cache(damaged_copy)["tokens"][np.array([70, 3])]


def test_without_checksum_a_flipped_chunk_is_read_silently(model, tmp_path):
    """Why the codec is there: the same damage without it returns wrong numbers."""
    tokens, special = token_contexts()
    path = tmp_path / "plain.zarr"
    build_cache(
        TLActivationSource(model, HOOKS[:1]), tokens, special, HOOKS[:1], path,
        dtype="float32", batch_contexts=BATCH, progress=False, checksum=False,
    )  # fmt: skip
    before = open_cache(path)[HOOKS[0]][:]
    chunk = _chunk_path(path, HOOKS[0], 0)
    data = bytearray(chunk.read_bytes())
    data[3] ^= 0x7F  # the exponent byte of the first float32
    chunk.write_bytes(bytes(data))
    after = open_cache(path)[HOOKS[0]][:]
    assert not np.array_equal(before, after, equal_nan=True)
