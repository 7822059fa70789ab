"""Streaming training (saelab.stream): the same weights as training on the cached activations
of the same tokens in the same order, bitwise-exact resume after real SIGKILLs at random points,
and a held-out slice that never enters training."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from saelab.cache import TLActivationSource, build_cache
from saelab.stream import ActivationStream, StreamError, training_contexts
from saelab.stream_providers import CacheProvider, ModelProvider
from saelab.train import TrainConfig, build_saes, default_checkpoint_dir, train_saes

HOOKS = ["blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out", "blocks.1.hook_resid_pre"]
N_CTX, CTX, BATCH_CONTEXTS = 160, 16, 8
SPECS = {
    "topk": {"arch": "topk", "width": 64, "k": 4, "hook_name": "blocks.1.hook_resid_pre"},
    "matryoshka": {"arch": "matryoshka", "width": 64, "k": 4, "group_sizes": [16, 48],
                   "hook_name": "blocks.1.hook_resid_pre", "b_dec_init": "geometric_median"},
    "transcoder": {"arch": "batchtopk", "width": 64, "k": 4, "hook_name": "blocks.0.hook_resid_mid",
                   "target_hook_name": "blocks.0.hook_mlp_out"},
}  # fmt: skip
CFG = {
    "n_tokens": 60 * 128, "batch_size": 128, "lr": 3e-3, "warmup_steps": 5, "decay_start": 0.5,
    "checkpoint_every": 4, "log_every": 3, "seed": 5, "source": "stream", "shuffle_contexts": 24,
}  # fmt: skip


def tiny_lm():
    """A random 2-layer TransformerLens model (seeded: a subprocess rebuilds the same one)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=CTX, d_vocab=60,
        act_fn="gelu", normalization_type="LN", seed=0,
    )  # fmt: skip
    return HookedTransformer(cfg).eval()


def corpus() -> tuple[np.ndarray, np.ndarray]:
    tokens = np.random.default_rng(0).integers(1, 60, size=(N_CTX, CTX)).astype(np.int32)
    tokens[:, 0] = 0
    special = tokens == 0  # position 0 plays BOS
    return tokens, special


def make_stream(provider, special, cfg: TrainConfig) -> ActivationStream:
    return ActivationStream(
        provider, special, HOOKS, cfg.batch_size, buffer_contexts=cfg.shuffle_contexts,
        batch_contexts=BATCH_CONTEXTS, seed=cfg.seed, heldout_fraction=cfg.heldout_fraction,
    )  # fmt: skip


def model_stream(cfg: TrainConfig) -> ActivationStream:
    tokens, special = corpus()
    return make_stream(ModelProvider(TLActivationSource(tiny_lm(), HOOKS), tokens), special, cfg)


def train_streamed(root: Path, on_checkpoint=None):
    cfg = TrainConfig(**CFG)
    stream = model_stream(cfg)
    saes = build_saes(SPECS, stream.probe_widths())
    out = {name: root / name for name in saes}
    return train_saes(stream, saes, cfg, out, progress=False, on_checkpoint=on_checkpoint)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    tokens, special = corpus()
    path = tmp_path_factory.mktemp("cache") / "tiny.zarr"
    build_cache(
        TLActivationSource(tiny_lm(), HOOKS), tokens, special, HOOKS, path, dtype="float32",
        batch_contexts=BATCH_CONTEXTS, progress=False,
    )  # fmt: skip
    return path


def assert_same_saes(a: Path, b: Path):
    for name in SPECS:
        for file in ("sae_weights.safetensors", "saelab_state.safetensors"):
            ours, theirs = load_file(a / name / file), load_file(b / name / file)
            assert ours.keys() == theirs.keys()
            for key in ours:
                assert torch.equal(ours[key], theirs[key]), f"{name}: {file}:{key} differs"


def test_streaming_and_cached_training_give_identical_weights(cache, tmp_path):
    cfg = TrainConfig(**CFG)
    _, special = corpus()
    cached = make_stream(CacheProvider(cache, HOOKS), special, cfg)
    saes = build_saes(SPECS, cached.probe_widths())
    from_cache = train_saes(cached, saes, cfg, {n: tmp_path / "cache" / n for n in saes},
                            progress=False)  # fmt: skip
    streamed = train_streamed(tmp_path / "stream")
    assert_same_saes(tmp_path / "cache", tmp_path / "stream")
    for name in SPECS:
        assert from_cache[name].metrics["heldout"] == streamed[name].metrics["heldout"]
        assert streamed[name].steps == 60
        config = json.loads((tmp_path / "stream" / name / "config.json").read_text())
        assert config["cache"] is None and config["stream"]["hooks"] == HOOKS
    # The training moved the SAEs (identical, not trivially untouched).
    fvu = streamed["topk"].metrics["heldout"]["fvu_element_global"]
    assert 0 < fvu < 0.9, fvu


def test_stream_batches_mix_contexts_and_resume_at_any_batch():
    cfg = TrainConfig(**{**CFG, "shuffle_contexts": 32})
    stream = model_stream(cfg)
    seen = [stream.next_with_rows() for _ in range(23)]
    # A batch draws its 128 tokens from many contexts, not a few consecutive ones.
    contexts = np.unique(seen[0][1] // CTX)
    assert len(contexts) >= 20, contexts
    position = json.loads(json.dumps(stream.position()))  # survives a JSON round trip
    ahead = [stream.next_with_rows() for _ in range(30)]
    again = model_stream(cfg)
    again.seek(**position)
    for (batch, rows), (batch2, rows2) in zip(ahead, [again.next_with_rows() for _ in range(30)],
                                              strict=True):  # fmt: skip
        assert np.array_equal(rows, rows2)
        for a, b in zip(batch, batch2, strict=True):
            assert torch.equal(a, b)
    # Rows of each batch are the model's activations of those tokens (spot check one row).
    tokens, _ = corpus()
    batch, rows = ahead[0]
    row = int(rows[0])
    _, cache = tiny_lm().run_with_cache(torch.from_numpy(tokens[row // CTX][None].astype(np.int64)))
    expected = cache["blocks.1.hook_resid_pre"][0, row % CTX]
    torch.testing.assert_close(batch[2][0], expected, rtol=1e-5, atol=1e-5)


def test_the_heldout_slice_never_enters_training():
    tokens, special = corpus()
    cfg = TrainConfig(**CFG)
    source = ModelProvider(TLActivationSource(tiny_lm(), HOOKS), tokens)
    requested: list[np.ndarray] = []

    def spy(contexts):
        requested.append(np.array(contexts))
        return source(contexts)

    excluded = (40, 56)  # e.g. a prefix cache's held-out split
    stream = ActivationStream(
        spy, special, HOOKS, cfg.batch_size, buffer_contexts=16, batch_contexts=BATCH_CONTEXTS,
        seed=1, heldout_fraction=0.1, exclude=[excluded],
    )  # fmt: skip
    heldout = set(stream.heldout_ids)
    assert heldout == set(range(144, 160))
    trained_rows = np.concatenate([stream.next_with_rows()[1] for _ in range(300)])  # > 2 epochs
    assert stream.epoch >= 2
    trained = set((trained_rows // CTX).tolist())
    assert not trained & heldout
    assert not trained & set(range(*excluded))
    assert trained == set(range(144)) - set(range(*excluded))  # every other context is used
    assert not (special.reshape(-1)[trained_rows]).any()  # BOS left out
    assert not set(np.concatenate(requested).tolist()) & heldout  # never even forwarded
    requested.clear()
    n_heldout = sum(len(b[0]) for b in stream.heldout_batches())
    assert set(np.concatenate(requested).tolist()) == heldout
    assert n_heldout == int((~special[144:]).sum())


def test_bad_stream_settings_fail_clearly():
    _, special = corpus()
    with pytest.raises(StreamError, match="shuffle_contexts = 4 contexts"):
        ActivationStream(lambda c: {}, special, HOOKS, 128, buffer_contexts=4)
    with pytest.raises(StreamError, match="no training contexts"):
        ActivationStream(lambda c: {}, special, HOOKS, 8, exclude=[(0, 200)])
    with pytest.raises(ValueError, match="source 'disk' is not allowed"):
        TrainConfig(**{**CFG, "source": "disk"})
    train, heldout = training_contexts(100, 0.05)
    assert len(train) == 95 and heldout == range(95, 100)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from tests.test_stream import train_streamed
    torch.set_num_threads(1)
    train_streamed(Path({root!r}), on_checkpoint=lambda step: print(step, flush=True))
    """
)


def test_killed_streaming_training_resumes_bitwise(tmp_path):
    """Two real SIGKILLs at random points (after a random checkpoint, plus a random delay, so
    mid-step or mid-checkpoint), then a run to the end: bitwise the uninterrupted weights."""
    killed = tmp_path / "killed"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).resolve().parents[1]), root=str(killed))
    rng = random.Random(int(os.environ.get("SAELAB_KILL_SEED", time.time_ns() % 2**31)))
    last = 0
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            wait_for = rng.randint(1, 3)
            for _ in range(wait_for):
                last = int(proc.stdout.readline().strip())
            time.sleep(rng.uniform(0, 0.3))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        for name in SPECS:
            assert default_checkpoint_dir(killed / name).is_dir()
    assert last < 60, "the run finished before it was killed: raise n_tokens"
    resumed = train_streamed(killed)
    train_streamed(tmp_path / "reference")
    assert_same_saes(killed, tmp_path / "reference")
    for name in SPECS:
        start = json.loads((killed / name / "config.json").read_text())["resumed_from_step"]
        assert start >= 4, start
        assert resumed[name].steps == 60
        log = (killed / name / "train_log.jsonl").read_text()
        assert log == (tmp_path / "reference" / name / "train_log.jsonl").read_text()


def test_train_script_streams_from_the_saved_model_and_tokens(small_tokenizer_dir, tmp_path):
    """The rule's script with ``source: stream`` (tokens store + prepared tiny model, as the DAG
    hands them) trains bitwise the weights of the in-process stream above."""
    import runpy
    from types import SimpleNamespace

    from saelab.data import TokenizedCorpus, corpus_fingerprint, save_tokens
    from saelab.models import resolve_model, write_manifest
    from saelab.models.tiny import _save_tiny
    from tests.training.helpers import _Named

    model_dir = tmp_path / "models" / "tiny"
    model_dir.mkdir(parents=True)
    _save_tiny(tiny_lm(), model_dir / "tiny", {})
    shutil.copytree(small_tokenizer_dir, model_dir / "tokenizer")
    write_manifest(resolve_model("tiny"), model_dir)  # last, as the train_tiny_lm rule does
    tokens, special = corpus()
    fingerprint = corpus_fingerprint(tokens, CTX, "per_context", 0)
    store = tmp_path / "tokens.zarr"
    save_tokens(TokenizedCorpus(tokens, special, fingerprint), store,
                {"bos": "per_context", "seed": 0, "corpus": "synthetic"})  # fmt: skip
    snakemake = SimpleNamespace(
        input=_Named(tokens=str(store), model_dir=str(model_dir)),
        params=_Named(
            saes=SPECS,
            train=CFG,
            group="g",
            tracking={},
            model={"name": "tiny", "model_path": None, "precision": "float32", "tiny": {}},
            cache={"batch_contexts": BATCH_CONTEXTS, "backend": "auto", "n_tokens": None},
        ),
        output=_Named({name: str(tmp_path / "script" / name) for name in SPECS}),
        config={"device": "cpu"},  # read at run time, not a rule param
        log=[str(tmp_path / "train.log")],
        threads=1,
    )
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_saes.py"
    runpy.run_path(str(script), init_globals={"snakemake": snakemake})
    train_streamed(tmp_path / "direct")
    assert_same_saes(tmp_path / "script", tmp_path / "direct")
    assert "a stream of" in (tmp_path / "train.log").read_text()


def test_a_bf16_forward_streams_float32_activations_close_to_fp32():
    """``precision: bfloat16`` runs the stream's forward in bf16; the pool and the SAEs get
    float32 activations that agree with the fp32 forward within bf16's precision."""
    tokens, _ = corpus()
    contexts = np.arange(4)
    fp32 = ModelProvider(TLActivationSource(tiny_lm(), HOOKS), tokens)(contexts)
    bf16 = ModelProvider(TLActivationSource(tiny_lm().to(torch.bfloat16), HOOKS), tokens)(contexts)
    for hook in HOOKS:
        assert bf16[hook].dtype == torch.float32
        scale = float(fp32[hook].abs().max())
        torch.testing.assert_close(bf16[hook], fp32[hook], rtol=0, atol=0.05 * scale)
