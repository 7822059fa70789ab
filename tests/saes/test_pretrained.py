"""Tests of ``saelab.saes.pretrained``, moved from tests/test_pretrained.py.

Notes shared with the other tests moved from tests/test_pretrained.py:
``tests/saes/__init__.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from saelab.ce import ce_recovered
from saelab.checks import load_config
from saelab.saes import SAEConfig, build_sae
from saelab.saes.io import load_sae, save_sae
from saelab.saes.pretrained import (
    INFO_DIR,
    ReleaseError,
    load_release,
    resolve_release,
    store_downloads,
    write_release_sae,
)
from saelab.schema import ConfigError
from tests.saes.helpers_pretrained import MICRO, REPO, add_release, sae_lens, saelens_sae


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


KINDS = ["standard", "standard_layer_norm", "topk", "topk_rescale", "jumprelu", "transcoder",
         "jumprelu_transcoder"]  # fmt: skip


# ------------------------------------------------------------------ issue 12, bug 1

SAVED = [
    ("topk", {}),
    ("batchtopk", {}),
    ("relu", {"loss": "official", "normalize_input": True}),
    ("matryoshka", {"group_sizes": [8, 24]}),
    ("batchtopk", {"d_out": 5, "target_hook_name": "blocks.0.hook_mlp_out"}),
]


@pytest.mark.parametrize(("arch", "kw"), SAVED)
def test_sae_lens_loader_keeps_hook_and_model_names(tmp_path, arch, kw):
    """SAE-Lens 6 read our cfg.json as pre-6.0 (no sae_lens_version) and lost the metadata."""
    cfg = SAEConfig(arch=arch, d_in=8, width=32, k=3, hook_name="blocks.1.hook_resid_pre",
                    model_name="tiny", **kw)  # fmt: skip
    save_sae(build_sae(cfg).eval(), tmp_path)
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    assert theirs.cfg.metadata.hook_name == "blocks.1.hook_resid_pre"
    assert theirs.cfg.metadata.model_name == "tiny"
    assert theirs.cfg.metadata.sae_lens_version == sae_lens.__version__
    if cfg.is_transcoder:
        assert theirs.cfg.metadata.hook_name_out == "blocks.0.hook_mlp_out"


def test_sae_lens_ce_evaluation_runs_on_a_saved_sae_and_agrees(tmp_path, tiny_model):
    """sae_lens.evals.get_recons_loss splices a saved saelab SAE into the model by its own
    metadata; its CE numbers equal saelab's ce_recovered on the same tokens (every position
    spliced, every prediction counted)."""
    from sae_lens.evals import get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    hook = "blocks.1.hook_resid_pre"
    cfg = SAEConfig(arch="topk", d_in=32, width=64, k=6, hook_name=hook, model_name="tiny",
                    b_dec_init="zeros")  # fmt: skip
    sae = build_sae(cfg).eval()
    with torch.no_grad():  # a usable SAE: decoder = encoder^T on the model's activations
        _, cache = tiny_model.run_with_cache(torch.randint(0, 60, (8, 16)), names_filter=hook)
        sae.b_dec.copy_(cache[hook].reshape(-1, 32).mean(0))
    save_sae(sae, tmp_path)
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    tokens = torch.randint(0, 60, (6, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        metrics = get_recons_loss(theirs, tiny_model, ActivationScaler(), tokens,
                                  compute_kl=True, compute_ce_loss=True)  # fmt: skip
    ours = ce_recovered(
        tiny_model, tokens, {"sae": load_sae(tmp_path)},
        special_mask=torch.zeros_like(tokens, dtype=torch.bool), exclude_special=False,
    )["sae"]  # fmt: skip
    clean = float(metrics["ce_loss_without_sae"].mean())
    spliced = float(metrics["ce_loss_with_sae"].mean())
    zero = float(metrics["ce_loss_with_ablation"].mean())
    assert spliced > clean + 1e-3  # the SAE changes the loss: the comparison is not vacuous
    assert ours.ce_clean == pytest.approx(clean, rel=1e-5)
    assert ours.ce_sae == pytest.approx(spliced, rel=1e-5)
    assert ours.ce_zero_ablation == pytest.approx(zero, rel=1e-5)
    assert ours.ce_loss_score == pytest.approx((zero - spliced) / (zero - clean), rel=1e-4)
    # KL: sae_lens averages every position, saelab the positions that predict a token
    kl = float(metrics["kl_div_with_sae"][:, :-1].mean())
    assert ours.kl_sae == pytest.approx(kl, rel=1e-4)


# ------------------------------------------------------------------ architectures


@pytest.mark.parametrize("kind", KINDS)
def test_release_codes_and_reconstructions_equal_sae_lens(tmp_path, kind):
    """Each release kind, loaded by sae_lens's from_pretrained from a local store: saelab's
    codes and reconstructions equal sae_lens's encode and decode on the same input, also
    after the release is written in saelab's format and read back with load_sae."""
    theirs = saelens_sae(kind, seed=KINDS.index(kind))
    add_release(tmp_path, "local/rel", "blocks.1.hook_resid_pre", theirs)
    info = resolve_release("local/rel", "blocks.1.hook_resid_pre", tmp_path)
    assert info.d_sae == 32 and info.hook == "blocks.1.hook_resid_pre"
    assert info.is_transcoder == ("transcoder" in kind)
    if info.is_transcoder:
        assert info.hook_out == "blocks.1.hook_mlp_out"
    ours = load_release(info, tmp_path)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1)) * 3 + 0.5
    with torch.no_grad():
        codes = theirs.encode(x)
        recon = theirs.decode(codes)
        assert (codes > 0).sum() > 0 and (codes == 0).sum() > 0  # sparse, not degenerate
        mine = ours.encode(x).codes.dense()
        torch.testing.assert_close(mine, codes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.reconstruct(x), recon, atol=1e-5, rtol=1e-5)
        written = write_release_sae(info, tmp_path, tmp_path / "out")
        again = load_sae(tmp_path / "out")
        assert again.cfg == written.cfg
        torch.testing.assert_close(again.reconstruct(x), recon, atol=1e-5, rtol=1e-5)
    source = json.loads((tmp_path / "out" / "config.json").read_text())
    assert source["pretrained"]["release"] == "local/rel"
    assert source["pretrained"]["sae_id"] == "blocks.1.hook_resid_pre"


def test_unsupported_release_kind_is_named(tmp_path):
    from sae_lens import GatedSAE, GatedSAEConfig

    gated = GatedSAE(GatedSAEConfig(d_in=8, d_sae=16))
    add_release(tmp_path, "local/gated", "x", gated)
    with pytest.raises(ReleaseError, match="'gated'"):
        resolve_release("local/gated", "x", tmp_path)


# ------------------------------------------------------------------ offline and the store


def test_offline_missing_release_names_the_fetch_command_and_the_destination(tmp_path):
    with pytest.raises(ReleaseError) as err:
        resolve_release("gpt2-small-res-jb", "blocks.8.hook_resid_pre", tmp_path / "store")
    message = str(err.value)
    assert "'gpt2-small-res-jb' / 'blocks.8.hook_resid_pre'" in message
    assert (
        "hf download jbloom/GPT2-Small-SAEs-Reformatted --include 'blocks.8.hook_resid_pre/*'"
        in message
    )
    assert str(tmp_path / "store" / "jbloom/GPT2-Small-SAEs-Reformatted") in message
    assert "HF_HUB_OFFLINE" in message


def test_unknown_release_or_id_is_named(tmp_path):
    with pytest.raises(ReleaseError, match="not in SAE-Lens"):
        resolve_release("no-such-release", "x", tmp_path)
    with pytest.raises(ReleaseError, match="has no SAE 'layer_20/width_16k/average_l0_999'"):
        resolve_release("gemma-scope-9b-pt-res", "layer_20/width_16k/average_l0_999", tmp_path)


def test_resolution_is_cached_so_jobs_do_not_import_sae_lens(tmp_path):
    add_release(tmp_path, "local/rel", "blocks.1.hook_resid_pre", saelens_sae("topk"))
    info = resolve_release("local/rel", "blocks.1.hook_resid_pre", tmp_path)
    cached = tmp_path / INFO_DIR / "local/rel" / "blocks.1.hook_resid_pre" / "info.json"
    assert json.loads(cached.read_text())["k"] == 4 == info.k
    # the copy goes away: offline, the cached metadata alone is not enough
    for path in sorted((tmp_path / "local").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    with pytest.raises(ReleaseError, match="hf download local/rel"):
        resolve_release("local/rel", "blocks.1.hook_resid_pre", tmp_path)


# ------------------------------------------------------------------ config


def _micro_with(tmp_path, overlay: dict):
    path = tmp_path / "overlay.yaml"
    path.write_text(json.dumps(overlay))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        return load_config(MICRO, path)
    finally:
        os.chdir(cwd)


def _tiny_store(tmp_path: Path) -> None:
    store = tmp_path / "data" / "releases"
    add_release(store, "local/tiny-res", "blocks.1.hook_resid_pre",
                saelens_sae("standard", d_in=64, d_sae=256))  # fmt: skip
    for layer in (0, 1):
        add_release(store, "local/tiny-mid", f"layer_{layer}/width_128",
                    saelens_sae("jumprelu", d_in=64, d_sae=128,
                                hook=f"blocks.{layer}.hook_resid_mid"))  # fmt: skip
    for width in (64, 128):
        for l0 in (4, 8):
            add_release(store, "local/tiny-grid", f"w{width}/l0_{l0}",
                        saelens_sae("jumprelu", d_in=64, d_sae=width))  # fmt: skip


def test_config_takes_hook_width_and_arch_from_the_release(tmp_path):
    _tiny_store(tmp_path)
    cfg = _micro_with(tmp_path, {
        "saes": {"resjb": {"pretrained": {"release": "local/tiny-res",
                                          "sae_id": "blocks.1.hook_resid_pre"}}},
        "sweeps": {"grid": {"pretrained": {"release": "local/tiny-grid",
                                           "sae_id": "w{width}/l0_{l0}",
                                           "points": [{"width": w, "l0": k}
                                                      for w in (64, 128) for k in (4, 8)]}},
                   "mid": {"cache": "layers", "layer": "all",
                           "pretrained": {"release": "local/tiny-mid",
                                          "sae_id": "layer_{layer}/width_128"}}},
    })  # fmt: skip
    run = cfg.saes["resjb"]
    assert (run.arch, run.hook, run.width, run.is_pretrained) == (
        "relu", "blocks.1.hook_resid_pre", 256, True)  # fmt: skip
    assert "resjb" in cfg.named_saes and "resjb" not in {
        r.name for runs in cfg.sae_groups().values() for r in runs}  # fmt: skip
    grid = cfg.sweeps["grid"]
    assert [(p.name, p.width, p.k, p.layer) for p in grid] == [
        ("grid-w64-l0_4", 64, 4, 1), ("grid-w64-l0_8", 64, 8, 1),
        ("grid-w128-l0_4", 128, 4, 1), ("grid-w128-l0_8", 128, 8, 1)]  # fmt: skip
    assert cfg.saes["grid-w128-l0_8"].pretrained["sae_id"] == "w128/l0_8"
    mid = cfg.sweeps["mid"]
    assert [(p.name, p.layer, p.width) for p in mid] == [("mid-l0", 0, 128), ("mid-l1", 1, 128)]
    assert cfg.saes["mid-l1"].hook == "blocks.1.hook_resid_mid"


def test_config_restating_a_release_inconsistently_names_both_values(tmp_path):
    _tiny_store(tmp_path)
    release = {"release": "local/tiny-res", "sae_id": "blocks.1.hook_resid_pre"}
    with pytest.raises(ConfigError, match=r"saes.r.width: the config says 512 but .* has 256"):
        _micro_with(tmp_path, {"saes": {"r": {"pretrained": release, "width": 512}}})
    with pytest.raises(
        ConfigError, match=r"saes.r.hook: the config says 'blocks.0.hook_resid_pre'"
    ):
        _micro_with(tmp_path, {"saes": {"r": {"pretrained": release,
                                              "hook": "blocks.0.hook_resid_pre"}}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"takes no training recipe; remove \['l1_coeff'\]"):
        _micro_with(tmp_path, {"saes": {"r": {"pretrained": release, "l1_coeff": 0.1}}})
    # restating consistently is fine
    cfg = _micro_with(tmp_path, {"saes": {"r": {"pretrained": release, "width": 256,
                                                "arch": "relu"}}})  # fmt: skip
    assert cfg.saes["r"].width == 256


def test_config_with_a_missing_release_stops_offline_naming_what_to_do(tmp_path):
    with pytest.raises(ConfigError) as err:
        _micro_with(tmp_path, {"saes": {"r": {"pretrained": {
            "release": "local/absent", "sae_id": "blocks.1.hook_resid_pre"}}}})  # fmt: skip
    message = str(err.value)
    assert message.startswith("saes.r.pretrained: pretrained SAE 'local/absent'")
    assert "hf download local/absent --include 'blocks.1.hook_resid_pre/*'" in message


# ------------------------------------------------------------------ presets

CONFIG = REPO / "config"


def test_preset_gemma_2_9b_darkmatter_is_the_papers_gemma_scope_grid(in_preset_store):
    cfg = load_config(CONFIG / "config.yaml", CONFIG / "gemma-2-9b-darkmatter.yaml")
    assert cfg.model == "google/gemma-2-9b"
    assert cfg.darkmatter["sweep"] == "gemmascope"
    assert cfg.darkmatter["window"] == [1, 1023] and cfg.darkmatter["n_tokens"] == 300 * 1022
    assert cfg.corpora["pile"].context_len == 1024 and cfg.corpora["pile"].n_tokens == 300 * 1024
    assert cfg.corpora["pile"].dataset == "monology/pile-uncopyrighted"
    points = cfg.sweeps["gemmascope"]
    runs = [cfg.saes[p.name] for p in points]
    assert {run.hook for run in runs} == {"blocks.20.hook_resid_post"}
    assert {run.arch for run in runs} == {"jumprelu"} and {run.cache for run in runs} == {"pile"}
    assert {run.pretrained["release"] for run in runs} == {"gemma-scope-9b-pt-res"}
    assert {run.pretrained["info"]["d_in"] for run in runs} == {3584}
    curve = sorted((p.width, int(cfg.saes[p.name].pretrained["sae_id"].rsplit("_", 1)[1]))
                   for p in points if p.k == 60)  # fmt: skip
    assert curve == [(2**14, 58), (2**15, 57), (2**16, 55), (2**17, 62), (2**18, 50),
                     (2**19, 48), (2**20, 57)]  # fmt: skip
    assert sorted(p.k for p in points if p.width == 2**14) == [11, 20, 36, 60, 68, 138, 310, 408]
    assert cfg.saes["gemmascope-w1m-l0_57"].width == 1_048_576
    assert "blocks.20.hook_resid_post" in cfg.caches["pile"].hooks
    assert not cfg.cooccurrence["saes"] and not cfg.trajectories["prompts"]


def test_preset_gpt2_small_compares_with_res_jb(in_preset_store):
    cfg = load_config(CONFIG / "config.yaml", CONFIG / "gpt2-small.yaml")
    assert cfg.cooccurrence["saes"] == ["matryoshka", "res-jb"]
    run = cfg.saes["res-jb"]
    assert run.pretrained["release"] == "gpt2-small-res-jb"
    assert run.pretrained["sae_id"] == "blocks.8.hook_resid_pre"
    assert (run.hook, run.width, run.arch) == ("blocks.8.hook_resid_pre", 24576, "relu")
    assert run.width == cfg.saes["matryoshka"].width
    assert "res-jb" not in {r.name for runs in cfg.sae_groups().values() for r in runs}


def test_preset_gemma_2_2b_trajectories_uses_released_per_layer_saes(in_preset_store):
    cfg = load_config(CONFIG / "config.yaml", CONFIG / "gemma-2-2b-trajectories.yaml")
    assert cfg.trajectories["sweep"] == "scope"
    points = cfg.sweeps["scope"]
    assert [p.layer for p in points] == list(range(26))
    for p in points:
        run = cfg.saes[p.name]
        assert run.hook == f"blocks.{p.layer}.hook_resid_post" and run.width == 65536
        assert run.pretrained["release"] == "gemma-scope-2b-pt-res-canonical"
        assert run.pretrained["sae_id"] == f"layer_{p.layer}/width_65k/canonical"
    assert cfg.caches["post"].hooks == [f"blocks.{layer}.hook_resid_post" for layer in range(26)]


@pytest.fixture
def gemma_scope_like_release(monkeypatch):
    """A release entry that SAE-Lens converts with its Gemma Scope loader (``gemma_2``): the
    directory entry is added for the test (the registered Gemma Scope ids are 16k+ wide; this
    one is 4k on Gemma-2-2B's 2,304 dimensions, 75 MB)."""
    from sae_lens.loading.pretrained_saes_directory import (
        PretrainedSAELookup,
        get_pretrained_saes_directory,
    )

    directory = get_pretrained_saes_directory()
    name, sae_id = "test-gemma-scope-2b-pt-res", "layer_1/width_4k/average_l0_20"
    directory[name] = PretrainedSAELookup(
        release=name, repo_id="local/gemma-scope-2b-pt-res", model="gemma-2-2b",
        conversion_func="gemma_2", saes_map={sae_id: sae_id}, expected_var_explained={},
        expected_l0={}, neuronpedia_id={}, norm_scaling_factor={}, config_overrides=None,
    )  # fmt: skip
    yield name, sae_id
    del directory[name]


def test_gemma_scope_npz_layout_through_sae_lens_gemma_2_loader(tmp_path, gemma_scope_like_release):
    """Gemma Scope's own layout (params.npz with W_enc, W_dec, b_enc, b_dec, threshold), read
    by SAE-Lens's gemma_2 loader from the store: hook and width as SAE-Lens derives them, codes
    and reconstructions equal to SAE-Lens's JumpReLU."""
    import numpy as np

    release, sae_id = gemma_scope_like_release
    d_in, width = 2304, 4096
    rng = np.random.default_rng(0)
    w_dec = rng.standard_normal((width, d_in)).astype(np.float32)
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    params = {
        "W_enc": np.ascontiguousarray(w_dec.T) * 0.5,
        "W_dec": w_dec,
        "b_enc": rng.standard_normal(width).astype(np.float32) * 0.1,
        "b_dec": rng.standard_normal(d_in).astype(np.float32) * 0.1,
        "threshold": rng.uniform(1.0, 3.0, width).astype(np.float32),
    }
    folder = tmp_path / "local/gemma-scope-2b-pt-res" / sae_id
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **params)
    info = resolve_release(release, sae_id, tmp_path)
    assert (info.architecture, info.hook, info.d_in, info.d_sae) == (
        "jumprelu", "blocks.1.hook_resid_post", d_in, width)  # fmt: skip
    ours = load_release(info, tmp_path)
    with store_downloads(tmp_path):
        theirs = sae_lens.SAE.from_pretrained(release, sae_id)
    x = torch.randn(32, d_in, generator=torch.Generator().manual_seed(2)) * 3
    with torch.no_grad():
        codes = theirs.encode(x)
        assert 0 < int((codes > 0).sum()) < codes.numel() // 4
        torch.testing.assert_close(ours.encode(x).codes.dense(), codes, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(ours.reconstruct(x), theirs.decode(codes), atol=1e-4, rtol=1e-5)


def test_release_family_restating_hook_templates_and_widths_is_checked(tmp_path):
    _tiny_store(tmp_path)
    family = {"cache": "layers", "layer": "all", "hook": "blocks.{layer}.hook_resid_mid",
              "pretrained": {"release": "local/tiny-mid", "sae_id": "layer_{layer}/width_128"}}  # fmt: skip
    cfg = _micro_with(tmp_path, {"sweeps": {"mid": family}})
    assert [cfg.saes[p.name].hook for p in cfg.sweeps["mid"]] == [
        "blocks.0.hook_resid_mid", "blocks.1.hook_resid_mid"]  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"saes.mid-l0.hook: the config says 'blocks.0.hook_resid_post'"
    ):
        _micro_with(
            tmp_path, {"sweeps": {"mid": {**family, "hook": "blocks.{layer}.hook_resid_post"}}}
        )
    grid = {"pretrained": {"release": "local/tiny-grid", "sae_id": "w{width}/l0_{k}"},
            "width": [64, 128], "k": [4, 8]}  # fmt: skip
    cfg = _micro_with(tmp_path, {"sweeps": {"grid": grid}})
    assert sorted((p.width, p.k) for p in cfg.sweeps["grid"]) == [
        (64, 4),
        (64, 8),
        (128, 4),
        (128, 8),
    ]
    wrong = {"pretrained": {"release": "local/tiny-grid", "sae_id": "w64/l0_{k}"},
             "width": 128, "k": [4, 8]}  # fmt: skip
    with pytest.raises(ConfigError, match=r"width: the config says 128 but .* has 64"):
        _micro_with(tmp_path, {"sweeps": {"grid": wrong}})
