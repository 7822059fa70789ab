"""Tests of saelab.models: offline loading, the hub-offline error, the tiny LM.

HF models here are small random-weight ones built with transformers, so the TransformerLens
conversion is checked against the HF forward pass without the hub. The gemma-3-270m test
(``-m slow``) dequantizes the packaged GGUF, about a minute, unless ``SAELAB_MODELS_DIR``
already holds a prepared ``gemma-3-270m``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pytest
import torch
from hf_models import HF_CASES, perturb_norms, save_hf

from saelab.config import TinyConfig
from saelab.models import (
    MANIFEST_NAME,
    ModelError,
    configured_device,
    default_device,
    evaluate_loss,
    load_hf_model,
    load_model,
    load_prepared,
    load_tokenizer,
    prepare_model,
    prepared_model_info,
    read_manifest,
    resolve_model,
    tiny_model_config,
    train_bpe_tokenizer,
    train_tiny_lm,
    write_manifest,
)

#: Python's own documentation: offline text that every Python install has.
DOC_TEXTS = [topics[key] for key in sorted(topics)]


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_hub_model_from_local_dir_matches_hf(case, small_tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    build, config_name = HF_CASES[case]
    torch.manual_seed(0)
    hf_model = build(400).eval()
    perturb_norms(hf_model)
    hf_dir = save_hf(hf_model, small_tokenizer_dir, tmp_path / "hf-src")
    info = resolve_model(config_name, model_path=str(hf_dir))
    model_dir = tmp_path / "models" / info.model_id

    manifest_path = prepare_model(info, model_dir)
    manifest = read_manifest(model_dir)
    assert manifest_path == model_dir / MANIFEST_NAME
    assert manifest["model_path"] == str(hf_dir.resolve())
    assert manifest["source"] == "hub" and manifest["model_id"] == info.model_id
    assert not (model_dir / "hf").exists()  # local weights are referenced, not copied

    model = load_model(info, model_dir)
    tokens = torch.randint(3, 400, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = hf_model(tokens).logits
        logits, cache = model.run_with_cache(tokens)
    assert logits.shape == expected.shape
    assert expected.abs().max() > 0.5  # logits far from zero, so the comparison means something
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    for hook in ("blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.1.mlp.hook_post"):
        assert hook in cache
    # Unprocessed weights: the residual stream equals HF's hidden states (gpt2 has no
    # embedding scale; Gemma's sqrt(d_model) scale is folded into TL's W_E).
    with torch.no_grad():
        hidden = hf_model(tokens, output_hidden_states=True).hidden_states
    torch.testing.assert_close(cache["blocks.1.hook_resid_pre"], hidden[1], atol=1e-4, rtol=1e-4)
    # The plain HF loader (the fast caching backend) gives the same model back.
    reloaded = load_hf_model(info, model_dir)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, expected, atol=1e-5, rtol=1e-5)
    assert model.tokenizer is not None
    # The prepared directory alone (its manifest) gives the same model info and model.
    prepared = prepared_model_info(model_dir)
    assert replace(prepared, model_path=None) == replace(info, model_path=None)
    assert Path(prepared.model_path) == hf_dir.resolve()
    with torch.no_grad():
        torch.testing.assert_close(load_prepared(model_dir)(tokens), logits, atol=0, rtol=0)


def test_hub_name_offline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_dir = tmp_path / "gpt2-small"
    with pytest.raises(ModelError) as excinfo:
        prepare_model(resolve_model("gpt2"), model_dir)
    message = str(excinfo.value)
    assert "model_path" in message
    assert "hf download gpt2" in message
    assert "gemma-3-270m" in message and "tiny" in message
    assert read_manifest(model_dir) is None
    assert not model_dir.exists() or not any(model_dir.iterdir())


def test_model_path_must_be_an_hf_directory(tmp_path):
    with pytest.raises(ModelError, match="not a directory"):
        prepare_model(resolve_model("gpt2", model_path=str(tmp_path / "nope")), tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"config\.json"):
        prepare_model(resolve_model("gpt2", model_path=str(tmp_path / "empty")), tmp_path / "m")


def test_unknown_model_lists_allowed_names():
    with pytest.raises(ModelError) as excinfo:
        resolve_model("no-such-model-xyz")
    message = str(excinfo.value)
    for name in ("tiny", "gemma-3-270m", "gpt2", "OFFICIAL_MODEL_NAMES"):
        assert name in message


def test_unprepared_model_dir_names_path_and_rule(tmp_path):
    missing = tmp_path / "models" / "gemma-3-270m"
    with pytest.raises(ModelError) as excinfo:
        load_model(resolve_model("gemma-3-270m"), missing)
    assert str(missing) in str(excinfo.value) and "prepare_model" in str(excinfo.value)
    with pytest.raises(ModelError) as excinfo:
        load_model(resolve_model("tiny"), tmp_path / "models" / "tiny")
    assert "train_tiny_lm" in str(excinfo.value)
    with pytest.raises(ModelError):
        load_hf_model(resolve_model("tiny"), tmp_path / "models" / "tiny")
    with pytest.raises(ModelError, match="train_tiny_lm"):
        prepare_model(resolve_model("tiny"), tmp_path / "models" / "tiny")


def test_default_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert default_device() == expected
    assert default_device("auto") == expected
    assert default_device("cpu") == "cpu"
    with pytest.raises(ModelError) as excinfo:
        default_device("gpu")
    assert "'auto'" in str(excinfo.value) and "'cpu'" in str(excinfo.value)


def test_configured_device_reads_the_run_config():
    """Scripts take the device from the config when they run (it is not a rule param)."""
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert configured_device({"device": "cpu", "model": "tiny"}) == "cpu"
    assert configured_device({}) == expected  # the schema's default, auto
    with pytest.raises(ModelError, match="unknown device 'tpu'"):
        configured_device({"device": "tpu"})


# --------------------------------------------------------------------------------------------
# Tiny model
# --------------------------------------------------------------------------------------------


def test_bpe_tokenizer_is_deterministic_and_lossless(tmp_path):
    first = train_bpe_tokenizer(DOC_TEXTS[:10], 320, tmp_path / "a" / "tokenizer")
    second = train_bpe_tokenizer(DOC_TEXTS[:10], 320, tmp_path / "b" / "tokenizer")
    assert first.get_vocab() == second.get_vocab()
    assert len(first) == 320
    assert (first.bos_token_id, first.eos_token_id, first.pad_token_id) == (0, 1, 2)
    text = "def f(x):\n    return x ** 2  # naïve ∑ — any bytes at all"
    ids = first.encode(text)
    assert ids == second.encode(text)
    assert first.decode(ids) == text  # byte-level: nothing is out of vocabulary
    assert 0 not in ids  # encode does not add BOS by itself
    reloaded = load_tokenizer(tmp_path / "a")  # reads model_dir/tokenizer
    assert reloaded.encode(text) == ids and reloaded.bos_token == "<|bos|>"


def _contexts(tokenizer, texts: list[str], ctx: int) -> np.ndarray:
    """BOS + ctx-1 tokens per context, documents joined by EOS (a stand-in for saelab.data)."""
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer.encode(text))
        stream.append(tokenizer.eos_token_id)
    body = ctx - 1
    n = len(stream) // body
    rows = np.asarray(stream[: n * body], dtype=np.int64).reshape(n, body)
    return np.concatenate([np.full((n, 1), tokenizer.bos_token_id), rows], axis=1)


TINY_VOCAB = 512
TINY = TinyConfig(
    vocab_size=TINY_VOCAB, d_model=64, n_layers=1, n_heads=4, d_mlp=256, n_ctx=64,
    train_tokens=200_000, batch_size=16, lr=3e-3, seed=0, val_fraction=0.05,
)  # fmt: skip


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    """Tokenizer + tiny LM trained on the Python docs, laid out as data/models/tiny."""
    model_dir = tmp_path_factory.mktemp("models") / "tiny"
    tokenizer = train_bpe_tokenizer(DOC_TEXTS, TINY_VOCAB, model_dir / "tokenizer")
    tokens = _contexts(tokenizer, DOC_TEXTS, 64)
    special = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    result = train_tiny_lm(tokens, TINY, model_dir / "tiny", TINY_VOCAB, special_mask=special)
    return model_dir, tokens, special, result


def test_tiny_lm_learns(trained_tiny):
    model_dir, tokens, _, result = trained_tiny
    metrics = json.loads((model_dir / "tiny" / "metrics.json").read_text())
    # Untrained: near-uniform predictions, loss close to ln(vocab).
    assert abs(metrics["initial_val_loss"] - math.log(TINY_VOCAB)) < 0.15
    # A context-free model reaches the unigram entropy; the trained one must do clearly better.
    assert 3.0 < result.unigram_entropy < math.log(TINY_VOCAB)
    assert result.final_val_loss < result.unigram_entropy - 0.5
    assert result.steps == math.ceil(TINY.train_tokens / (TINY.batch_size * 64))
    assert result.tokens_seen == result.steps * TINY.batch_size * 64
    assert result.tokens_per_s > 0
    assert metrics["final_val_loss"] == pytest.approx(result.final_val_loss)
    assert metrics["val_curve"][-1]["val_loss"] == pytest.approx(result.final_val_loss)
    assert len(metrics["val_curve"]) >= 3
    assert metrics["n_val_contexts"] == round(len(tokens) * TINY.val_fraction)


def test_tiny_save_load_roundtrip(trained_tiny):
    model_dir, tokens, special, result = trained_tiny
    model = load_model(resolve_model("tiny", tiny=TINY), model_dir)
    assert model.cfg.d_model == 64 and model.cfg.n_layers == 1 and model.cfg.d_vocab == TINY_VOCAB
    assert model.cfg.normalization_type == "LN" and model.cfg.act_fn == "gelu_new"
    # The reloaded weights reproduce the validation loss measured at the end of training.
    n_val = round(len(tokens) * TINY.val_fraction)
    special_vocab = torch.zeros(TINY_VOCAB, dtype=torch.bool)
    special_vocab[special] = True
    val_loss = evaluate_loss(model, torch.from_numpy(tokens[-n_val:]), special_vocab)
    assert val_loss == pytest.approx(result.final_val_loss, abs=1e-5)
    # A second load gives identical logits, and the tokenizer is attached.
    again = load_model(resolve_model("tiny"), model_dir)
    batch = torch.from_numpy(tokens[:2])
    with torch.no_grad():
        torch.testing.assert_close(model(batch), again(batch), atol=0, rtol=0)
    assert model.tokenizer is not None
    assert model.to_tokens("import os")[0, 0].item() == model.tokenizer.bos_token_id == 0
    _, cache = model.run_with_cache(batch, names_filter="blocks.0.hook_resid_post")
    assert cache["blocks.0.hook_resid_post"].shape == (2, 64, 64)


def test_load_prepared_reads_the_manifest(trained_tiny, tmp_path):
    """A prepared directory names its model: load_prepared needs no config, and gives the model
    that load_model gives from the config's name; an unprepared directory is refused."""
    model_dir, tokens, _, _ = trained_tiny
    write_manifest(resolve_model("tiny", tiny=TINY), model_dir)
    info = prepared_model_info(model_dir)
    assert info == resolve_model("tiny", tiny=TINY)  # n_layers, n_ctx from tiny/cfg.json
    batch = torch.from_numpy(tokens[:2])
    expected = load_model(resolve_model("tiny", tiny=TINY), model_dir)
    with torch.no_grad():
        torch.testing.assert_close(load_prepared(model_dir)(batch), expected(batch), atol=0, rtol=0)
    with pytest.raises(ModelError, match=r"not a prepared model directory.*manifest\.json"):
        prepared_model_info(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text('{"model_id": "x", "source": "ftp", "tl_name": null}')
    with pytest.raises(ModelError, match=r"source 'ftp'.*allowed"):
        prepared_model_info(tmp_path)


def test_tiny_training_is_deterministic(tmp_path):
    """Two runs give the same bytes with two threads too (without deterministic kernels the
    multi-threaded backward drifted by ~1e-6 within 30 steps)."""
    from safetensors.torch import load_file

    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 1024, size=(400, 64))
    quick = TinyConfig(
        vocab_size=1024, d_model=64, n_layers=2, n_heads=4, d_mlp=256, n_ctx=64,
        train_tokens=32 * 64 * 30, batch_size=32, seed=3,
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first = train_tiny_lm(tokens, quick, tmp_path / "a", 1024)
        second = train_tiny_lm(tokens, quick, tmp_path / "b", 1024)
    finally:
        torch.set_num_threads(threads)
    assert not torch.are_deterministic_algorithms_enabled()  # restored after training
    assert first.final_val_loss == second.final_val_loss
    weights_a = load_file(str(tmp_path / "a" / "model.safetensors"))
    weights_b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    # Nothing half-written is left beside the outputs.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    assert tiny_model_config(quick, 1024).d_head == 16


# --------------------------------------------------------------------------------------------
# gemma-3-270m from the PyPI GGUF (slow)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory) -> Path:
    """A prepared gemma-3-270m: reused from $SAELAB_MODELS_DIR when there, else made here."""
    shared = os.environ.get("SAELAB_MODELS_DIR")
    if shared and read_manifest(Path(shared) / "gemma-3-270m") is not None:
        return Path(shared) / "gemma-3-270m"
    model_dir = tmp_path_factory.mktemp("models") / "gemma-3-270m"
    prepare_model(resolve_model("gemma-3-270m"), model_dir)
    return model_dir


@pytest.mark.slow
def test_gemma_270m_hf_and_tl_agree(gemma_dir):
    info = resolve_model("gemma-3-270m")
    manifest = read_manifest(gemma_dir)
    assert manifest["source"] == "gguf" and len(manifest["gguf_sha256"]) == 64
    hf_config = json.loads((gemma_dir / "hf" / "config.json").read_text())
    assert "quantization_config" not in hf_config

    tokenizer = load_tokenizer(gemma_dir)
    hf_model = load_hf_model(info, gemma_dir)
    model = load_model(info, gemma_dir)
    assert model.cfg.n_layers == info.n_layers == 18 and model.cfg.d_model == 640

    prompt = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        hf_ids = hf_model.generate(prompt, max_new_tokens=8, do_sample=False)
        tl_ids = prompt
        for _ in range(8):  # greedy decoding on the HookedTransformer, no KV cache
            next_id = model(tl_ids)[:, -1].argmax(-1, keepdim=True)
            tl_ids = torch.cat([tl_ids, next_id], dim=1)
        assert tl_ids.tolist() == hf_ids.tolist()

        hf_logits = hf_model(hf_ids).logits[:, -1]
        tl_logits, cache = model.run_with_cache(hf_ids, names_filter="blocks.6.hook_resid_pre")
    torch.testing.assert_close(tl_logits[:, -1], hf_logits, atol=1e-3, rtol=1e-4)
    assert cache["blocks.6.hook_resid_pre"].shape == (1, hf_ids.shape[1], 640)
