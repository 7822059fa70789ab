"""Tests of ``saelab.models.load``, moved from tests/test_models.py.

Notes shared with the other tests moved from tests/test_models.py: ``tests/models/__init__.py``."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from saelab.models import (
    MANIFEST_NAME,
    ModelError,
    evaluate_loss,
    load_hf_model,
    load_model,
    load_prepared,
    load_tokenizer,
    load_unembedding,
    prepare_model,
    prepared_model_info,
    read_manifest,
    resolve_model,
    write_manifest,
)
from tests.hf_models import HF_CASES, perturb_norms, save_hf
from tests.models.helpers import TINY, TINY_VOCAB


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
    # The unembedding alone (the feature pages' logit effects) is TransformerLens's W_U: gpt2's
    # tied transformer.wte, gemma's tied embed_tokens, read from model_path's safetensors.
    torch.testing.assert_close(load_unembedding(model_dir), model.W_U, atol=1e-6, rtol=0)


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
    assert torch.equal(load_unembedding(model_dir), expected.W_U)
    with pytest.raises(ModelError, match=r"not a prepared model directory.*manifest\.json"):
        prepared_model_info(tmp_path)
    with pytest.raises(ModelError, match=r"not a prepared model directory"):
        load_unembedding(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text('{"model_id": "x", "source": "ftp", "tl_name": null}')
    with pytest.raises(ModelError, match=r"source 'ftp'.*allowed"):
        prepared_model_info(tmp_path)


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


def test_gguf_is_parsed_once_while_preparing(tmp_path):
    """transformers makes a GGUFReader for the tokenizer, the config and the weights; preparing
    parses the file once (~14 s per parse for gemma-3's vocabulary) and restores gguf after."""
    import gguf
    import numpy as np

    from saelab.models.prepare import _gguf_parsed_once

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("w", np.arange(6, dtype=np.float32).reshape(2, 3))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    original = gguf.GGUFReader
    with _gguf_parsed_once():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first  # the same parse, by str or Path
        np.testing.assert_array_equal(first.tensors[0].data, np.arange(6).reshape(2, 3))
    assert gguf.GGUFReader is original
    assert gguf.GGUFReader(path) is not first
    with pytest.raises(RuntimeError), _gguf_parsed_once():
        raise RuntimeError("a failed conversion")
    assert gguf.GGUFReader is original
