"""Native precision: the host probe and the auto policy (mocked hosts), bf16 against fp32 for
the SAE step, training, the cache forward and the CE (within bf16's tolerance), determinism of
a bf16 run, and the lean training step against the straightforward computation.

This host may have no native bf16 (then torch emulates it and a bf16 matmul is slow), so every
bf16 computation here is tiny."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from saelab import precision as P
from saelab.precision import (
    HostCapabilities,
    PrecisionError,
    probe_host,
    resolve_precision,
)
from saelab.saes import SAEConfig, build_sae

AMD_EPYC = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx fma avx2 bmi2\n"
SAPPHIRE = (
    "model name\t: Intel(R) Xeon(R) Platinum 8481C\n"
    "flags\t\t: fpu avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile\n"
)
COOPER = "model name\t: Intel Xeon 8380H\nflags\t\t: avx2 fma avx512f avx512bw avx512_bf16\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU part\t: 0xd40\n"


@pytest.fixture
def fake_cpuinfo(tmp_path, monkeypatch):
    """Point the probe at a written /proc/cpuinfo (or a missing one) and forget its cache."""

    def write(text: str | None) -> HostCapabilities:
        path = tmp_path / "cpuinfo"
        if text is not None:
            path.write_text(text)
        monkeypatch.setattr(P, "CPUINFO", path)
        probe_host.cache_clear()
        return probe_host("cpu")

    yield write
    probe_host.cache_clear()


# ------------------------------------------------------------------ probe and policy


def test_auto_is_float32_on_a_cpu_without_native_bf16(fake_cpuinfo):
    host = fake_cpuinfo(AMD_EPYC)
    assert host.flags_known and not host.native_bf16
    assert host.cpu_model == "AMD EPYC" and "avx2" in host.cpu_flags
    decision = resolve_precision("auto", "cpu", host)
    assert decision.dtype is torch.float32
    assert "no amx_bf16 / avx512_bf16 / bf16 flag" in decision.reason


@pytest.mark.parametrize(
    ("cpuinfo", "flag"), [(SAPPHIRE, "amx_bf16"), (COOPER, "avx512_bf16"), (GRAVITON3, "bf16")]
)
def test_auto_is_bfloat16_on_cpus_with_native_bf16(fake_cpuinfo, cpuinfo, flag):
    host = fake_cpuinfo(cpuinfo)
    decision = resolve_precision("auto", "cpu", host)
    assert decision.dtype is torch.bfloat16 and flag in decision.reason
    record = decision.record()
    assert record["dtype"] == "bfloat16" and record["requested"] == "auto"
    assert record["host"]["native_bf16"] is True and flag in record["host"]["cpu_flags"]
    json.dumps(record)  # goes into manifests and metrics as is


def test_unreadable_flags_are_never_assumed_native(fake_cpuinfo):
    host = fake_cpuinfo(None)
    assert not host.flags_known and not host.native_bf16
    decision = resolve_precision("auto", "cpu", host)
    assert decision.dtype is torch.float32 and "could not be read" in decision.reason


def test_cuda_policy_follows_the_device_bf16_support():
    base = {"cpu_model": "x", "cpu_flags": (), "flags_known": True, "torch_cpu_capability": "AVX2"}
    ampere = HostCapabilities(device="cuda", cuda_device="A100", cuda_bf16=True, **base)
    turing = HostCapabilities(device="cuda", cuda_device="T4", cuda_bf16=False, **base)
    assert resolve_precision("auto", "cuda:0", ampere).dtype is torch.bfloat16
    assert resolve_precision("auto", "cuda", turing).dtype is torch.float32
    assert resolve_precision("auto", "mps", HostCapabilities(device="mps", **base)).dtype is (
        torch.float32
    )


def test_explicit_settings_win_over_the_host(fake_cpuinfo, caplog):
    epyc = fake_cpuinfo(AMD_EPYC)
    assert resolve_precision("float32", "cpu", epyc).dtype is torch.float32
    with caplog.at_level("WARNING", logger="saelab.precision"):
        forced = resolve_precision("bfloat16", "cpu", epyc)
    assert forced.dtype is torch.bfloat16 and "no native bf16" in caplog.text
    spr = fake_cpuinfo(SAPPHIRE)
    assert resolve_precision("float32", "cpu", spr).dtype is torch.float32


def test_bad_precision_is_a_clear_error_everywhere():
    from jsonschema import ValidationError, validate

    from saelab.schema import SCHEMA_PATH
    from saelab.train import TrainConfig, TrainError

    with pytest.raises(PrecisionError, match=r"precision 'fp16' is not allowed; use one of"):
        resolve_precision("fp16")
    with pytest.raises(TrainError, match="precision 'half'"):
        TrainConfig(n_tokens=10, batch_size=1, precision="half")
    schema = yaml.safe_load(Path(SCHEMA_PATH).read_text())["properties"]["precision"]
    validate("bfloat16", schema)
    with pytest.raises(ValidationError):
        validate("float16", schema)


def test_the_probe_reads_this_host():
    """The real probe agrees with a plain reading of /proc/cpuinfo (when there is one)."""
    probe_host.cache_clear()
    host = probe_host("cpu")
    assert host.torch_cpu_capability == torch.backends.cpu.get_cpu_capability()
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        assert not host.native_bf16
        return
    flags = set(re.search(r"^(?:flags|Features)\s*:(.*)$", cpuinfo.read_text(), re.M)[1].split())
    assert host.native_bf16 == bool(flags & {"amx_bf16", "avx512_bf16", "bf16"})
    assert host.summary()


# ------------------------------------------------------------------ the SAE step


def sparse_data(n: int, d: int, n_features: int = 96, active: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dictionary = F.normalize(torch.randn(n_features, d, generator=g), dim=1)
    chosen = torch.rand(n, n_features, generator=g).argsort(dim=1)[:, :active]
    codes = torch.zeros(n, n_features).scatter_(1, chosen, 0.5 + torch.rand(n, active, generator=g))
    return codes @ dictionary + 0.01 * torch.randn(n, d, generator=g)


def sae_pair(arch: str, **kw):
    cfg = {"arch": arch, "d_in": 32, "width": 128, "k": 4, "hook_name": "blocks.0.hook_resid_pre"}
    if arch == "matryoshka":
        cfg["group_sizes"] = [16, 48, 64]
    cfg.update(kw)
    fp32, bf16 = build_sae(SAEConfig(**cfg)), build_sae(SAEConfig(**cfg))
    bf16.compute_dtype = torch.bfloat16
    return fp32.train(), bf16.train()


def _active(codes) -> set[tuple[int, int]]:
    return set(zip(codes.rows.tolist(), codes.latents.tolist(), strict=True))


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka", "topk", "relu"])
def test_bf16_sae_step_agrees_with_fp32(arch):
    """Same weights, same batch: bf16's codes overlap fp32's, FVU and gradients agree to bf16's
    tolerance, and parameters, gradients and codes stay float32."""
    fp32, bf16 = sae_pair(arch, l1_coeff=1e-3 if arch == "relu" else 0.0)
    for sae in (fp32, bf16):  # a trained-looking start: data-aligned encoder
        with torch.no_grad():
            sae.W_enc.add_(0.5 * sae.W_dec.t())
    x = sparse_data(256, 32)
    out32, out16 = fp32(x), bf16(x)
    a32, a16 = _active(out32.codes), _active(out16.codes)
    assert len(a32 & a16) / len(a32 | a16) > 0.9
    assert not torch.equal(out16.output, out32.output)  # the bf16 GEMM really ran
    assert out16.codes.values.dtype is torch.float32 and out16.output.dtype is torch.float32
    assert abs(float(out16.fvu) - float(out32.fvu)) < 0.02 * float(out32.fvu) + 1e-4
    out32.loss.backward()
    out16.loss.backward()
    for (name, p32), p16 in zip(fp32.named_parameters(), bf16.parameters(), strict=True):
        assert p16.dtype is torch.float32, name
        if p32.grad is None:
            assert p16.grad is None, name
            continue
        assert p16.grad.dtype is torch.float32, name
        cosine = F.cosine_similarity(p32.grad.reshape(-1), p16.grad.reshape(-1), dim=0)
        assert cosine > 0.98, (name, float(cosine))


def test_bf16_gemm_is_what_autocast_computes():
    """The encoder's bf16 product equals torch.autocast's on the same inputs."""
    _, sae = sae_pair("batchtopk", use_encoder_bias=True)
    with torch.no_grad():
        sae.b_enc.normal_()
    x = sparse_data(64, 32)
    with torch.no_grad():
        got = sae._encoder_gemm(x, sae.b_enc)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want = torch.addmm(sae.b_enc, x, sae.W_enc)
    assert got.dtype is torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), atol=0.02, rtol=0.02)


def test_unclamped_pre_activations_select_and_aux_exactly_as_clamped():
    """The sparse path skips the ReLU pass: selection and the aux loss are unchanged."""
    sae = build_sae(
        SAEConfig(arch="batchtopk", d_in=32, width=128, k=4, dead_after_tokens=1)
    ).train()
    sae.tokens_since_fired[64:] = 10  # half the latents dead: the aux loss runs
    x = sparse_data(256, 32)
    codes, acts, attach = sae._encode_fast(x)
    assert (acts < 0).any()
    clamped = acts.clamp_min(0)
    from saelab.saes.batchtopk import batch_topk

    for a, b in ((batch_topk(acts, 4), batch_topk(clamped, 4)),):
        assert torch.equal(a.rows, b.rows) and torch.equal(a.latents, b.latents)
        assert torch.equal(a.values, b.values)
    residual = x - sae.decode(codes).detach()
    torch.testing.assert_close(
        sae.aux_loss(acts, residual, attach), sae.aux_loss(clamped, residual, attach)
    )


def test_lean_step_equals_the_straightforward_computation():
    """Sparse codes, sparse backward, fused Adam against dense autograd, a full-sort batch
    top-k and torch's for-loop Adam: same loss, gradients and updated weights."""
    from saelab.training.loop import make_adam

    cfg = SAEConfig(arch="batchtopk", d_in=32, width=128, k=4)
    sae = build_sae(cfg).train()
    ref = {name: p.detach().clone().requires_grad_() for name, p in sae.named_parameters()}
    x = sparse_data(256, 32)

    out = sae(x)
    out.loss.backward()
    pre = F.relu((x - ref["b_dec"]) @ ref["W_enc"])  # bussmann: no encoder bias
    values, index = pre.reshape(-1).topk(4 * 256)  # the whole matrix sorted
    dense = torch.zeros_like(pre).reshape(-1).index_put((index,), values).reshape(pre.shape)
    recon = dense @ ref["W_dec"] + ref["b_dec"]
    loss = (recon - x).pow(2).mean()
    loss.backward()
    torch.testing.assert_close(out.loss, loss)
    for name, p in sae.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, ref[name].grad, rtol=1e-4, atol=1e-6, msg=name)

    params = [p for p in sae.parameters() if p.requires_grad]
    make_adam(params, 1e-2, (0.9, 0.999)).step()
    ref_params = [ref[n] for n, p in sae.named_parameters() if p.requires_grad]
    torch.optim.Adam(ref_params, lr=1e-2, betas=(0.9, 0.999), foreach=False).step()
    for p, r in zip(params, ref_params, strict=True):
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ training


def _train(cache, root: Path, precision: str):
    from saelab.train import TrainConfig, build_saes, train_saes
    from tests.training.helpers import BATCH, SRC, widths_of

    specs = {
        "btk": {"arch": "batchtopk", "k": 4, "width": 64, "hook_name": SRC},
        "mat": {"arch": "matryoshka", "k": 4, "width": 64, "group_sizes": [8, 24, 32],
                "hook_name": SRC},
    }  # fmt: skip
    saes = build_saes(specs, widths_of(cache))
    cfg = TrainConfig(
        n_tokens=60 * BATCH, batch_size=BATCH, lr=1e-2, log_every=20, checkpoint_every=0,
        seed=1, precision=precision,
    )  # fmt: skip
    out = {name: root / name for name in saes}
    return train_saes(cache, saes, cfg, out, progress=False), out


@pytest.fixture(scope="module")
def train_cache(tmp_path_factory):
    from tests.training.helpers import make_cache

    torch.set_num_threads(1)
    return make_cache(tmp_path_factory.mktemp("cache") / "synthetic.zarr")


def test_bf16_training_matches_fp32_and_is_recorded_and_deterministic(train_cache, tmp_path):
    r32, out32 = _train(train_cache, tmp_path / "fp32", "float32")
    r16, out16 = _train(train_cache, tmp_path / "bf16", "bfloat16")
    _, out_again = _train(train_cache, tmp_path / "bf16b", "bfloat16")
    for name in r32:
        fvu32, fvu16 = (
            r32[name].metrics["heldout"]["fvu_element_global"],
            r16[name].metrics["heldout"]["fvu_element_global"],
        )
        assert fvu16 < 0.5 and abs(fvu16 - fvu32) < 0.1 * fvu32 + 0.01, (name, fvu32, fvu16)
        l0_32, l0_16 = r32[name].metrics["heldout"]["l0"], r16[name].metrics["heldout"]["l0"]
        assert abs(l0_16 - l0_32) < 0.25 * l0_32
        for out, dtype in ((out32, "float32"), (out16, "bfloat16")):
            metrics = json.loads((out[name] / "metrics.json").read_text())
            config = json.loads((out[name] / "config.json").read_text())
            assert metrics["precision"]["dtype"] == config["precision"]["dtype"] == dtype
            assert metrics["precision"]["host"]["cpu_model"]
        weights = load_file(out16[name] / "sae_weights.safetensors")
        assert all(w.dtype is torch.float32 for w in weights.values())
        repeat = load_file(out_again[name] / "sae_weights.safetensors")
        for key, value in weights.items():  # a bf16 run is as deterministic as an fp32 one
            assert torch.equal(value, repeat[key]), (name, key)


# ------------------------------------------------------------------ the language model forward


def _tl_pair(model):
    """The same TransformerLens model with bf16 weights (the forward in bf16)."""
    from transformer_lens import HookedTransformer

    cfg = model.cfg.to_dict()
    cfg["dtype"] = torch.bfloat16
    bf16 = HookedTransformer(type(model.cfg).from_dict(cfg)).eval()
    bf16.load_state_dict(model.state_dict())
    assert next(bf16.parameters()).dtype is torch.bfloat16
    return bf16


def test_bf16_cache_activations_agree_with_fp32(small_tokenizer_dir, tmp_path, monkeypatch):
    """The transformers cache backend loaded in bf16 (what precision: bfloat16 runs) writes
    float16 values within bf16's tolerance of the fp32 forward's."""
    from saelab.cache import activation_source, build_cache, open_cache
    from saelab.models import prepare_model, resolve_model
    from tests.hf_models import HF_CASES, perturb_norms, save_hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    hf_model = HF_CASES["gemma3"][0](400).eval()
    perturb_norms(hf_model)
    info = resolve_model("google/gemma-3-270m", model_path=str(save_hf(hf_model, small_tokenizer_dir, tmp_path / "hf")))  # fmt: skip
    model_dir = tmp_path / "model"
    prepare_model(info, model_dir)
    hooks = ["blocks.0.hook_resid_mid", "blocks.1.hook_resid_post", "blocks.1.attn.hook_z"]
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 400, size=(4, 16)).astype(np.int32)
    special = np.zeros(tokens.shape, dtype=bool)
    stores = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        source = activation_source(info, model_dir, hooks, "cpu", dtype=dtype)
        assert next(source.hf_model.parameters()).dtype is dtype
        precision = resolve_precision(name.replace("fp", "float").replace("bf", "bfloat"))
        stores[name] = build_cache(
            source, tokens, special, hooks, tmp_path / f"{name}.zarr", dtype="float16",
            batch_contexts=2, manifest={"precision": precision.record()}, progress=False,
        ).path  # fmt: skip
    g32, g16 = open_cache(stores["fp32"]), open_cache(stores["bf16"])
    assert g16.attrs["saelab"]["precision"]["dtype"] == "bfloat16"
    for hook in hooks:
        a32 = torch.from_numpy(np.asarray(g32[hook][:])).float()
        a16 = torch.from_numpy(np.asarray(g16[hook][:])).float()
        assert g16[hook].dtype == np.float16
        rel = (a16 - a32).norm(dim=1) / a32.norm(dim=1).clamp_min(1e-6)
        assert float(rel.max()) < 0.05, hook  # bf16 keeps 8 bits: ~0.4 % per op
        assert float(rel.max()) > 0, hook  # the bf16 forward really ran


def test_bf16_ce_and_token_loss_agree_with_fp32(tiny_model):
    from saelab.ce import ce_recovered
    from saelab.models.splice import token_losses

    bf16 = _tl_pair(tiny_model)
    tokens = torch.randint(0, 60, (4, 16), generator=torch.Generator().manual_seed(0))
    l32, l16 = token_losses(tiny_model, tokens), token_losses(bf16, tokens)
    assert l16.dtype == np.float32
    np.testing.assert_allclose(l16[:, :-1], l32[:, :-1], rtol=0.03, atol=0.03)
    assert np.isnan(l16[:, -1]).all()
    sae = build_sae(
        SAEConfig(arch="topk", d_in=32, width=64, k=8, hook_name="blocks.1.hook_resid_pre")
    ).eval()
    c32 = ce_recovered(tiny_model, tokens, {"s": sae}, batch_size=2)["s"]
    c16 = ce_recovered(bf16, tokens, {"s": sae}, batch_size=2)["s"]
    for field in ("ce_clean", "ce_sae", "ce_zero_ablation", "ce_mean_ablation"):
        assert abs(getattr(c16, field) - getattr(c32, field)) < 0.02 * getattr(c32, field), field


def test_prefix_errors_without_prefixes_equal_the_naive_formula():
    """Training's Matryoshka loss (prefixes not materialised, only the full reconstruction):
    SSEs, output and gradients equal autograd of the plain cumulative-sum formula."""
    from saelab.saes.matryoshka import _PrefixErrors

    g = torch.Generator().manual_seed(0)
    contributions = torch.randn(5, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    b_dec = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)
    weights = torch.randn(4, dtype=torch.float64, generator=g)
    probe = torch.randn(5, 4, dtype=torch.float64, generator=g)
    inputs = (contributions, target, b_dec)
    for use_full in (False, True):
        sse, full = _PrefixErrors.apply(*inputs, False)
        assert full.shape == (5, 1, 4)
        loss = (sse * weights).sum() + ((full[:, 0] * probe).sum() if use_full else 0)
        got = torch.autograd.grad(loss, inputs, materialize_grads=True)
        prefixes = contributions.cumsum(1) + b_dec
        sse_ref = torch.cat(
            [(target - b_dec).pow(2).sum()[None], (prefixes - target[:, None]).pow(2).sum((0, 2))]
        )
        torch.testing.assert_close(sse, sse_ref)
        torch.testing.assert_close(full[:, 0], prefixes[:, -1])
        ref = (sse_ref * weights).sum() + ((prefixes[:, -1] * probe).sum() if use_full else 0)
        want = torch.autograd.grad(ref, inputs, materialize_grads=True)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b)


def test_matryoshka_training_step_is_unchanged_by_the_lean_prefixes():
    """A training-mode step (one full reconstruction) gives the loss and gradients that the
    eval-mode path (every prefix materialised) gives for the same codes."""
    torch.manual_seed(0)
    cfg = SAEConfig(arch="matryoshka", d_in=32, width=128, k=4, group_sizes=[16, 48, 64])
    sae = build_sae(cfg).train()
    x = sparse_data(256, 32)
    codes, _, _ = sae._encode_fast(x)
    lean_loss, lean_prefixes = sae.reconstruction_loss(codes, x)
    assert len(lean_prefixes) == 1
    params = (sae.W_dec, sae.b_dec, sae.W_enc)
    grads = torch.autograd.grad(lean_loss, params, retain_graph=True)
    sae.eval()  # the same codes (and graph), every prefix materialised
    full_loss, prefixes = sae.reconstruction_loss(codes, x)
    assert len(prefixes) == 3
    torch.testing.assert_close(lean_loss, full_loss)
    torch.testing.assert_close(lean_prefixes[-1], prefixes[-1])
    want = torch.autograd.grad(full_loss, params)
    for a, b in zip(grads, want, strict=True):
        torch.testing.assert_close(a, b)
