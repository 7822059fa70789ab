"""The dark matter of SAEs (core): info, regressions, scaling law, per-token, norms, noise."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from saelab.cache.reader import window_rows
from saelab.checks import load_config
from saelab.config import ConfigError
from saelab.darkmatter.info import (
    SAEInfo,
    SAEInfoError,
    WindowConfig,
    compute_sae_info,
    load_sae_info,
    write_sae_info,
)
from saelab.darkmatter.noise import NoiseConfig, correlation_table, simulate, table_csv
from saelab.darkmatter.norms import (
    baseline_r2,
    losses_for_rows,
    norm_prediction_r2,
    running_mean,
    token_mean_prediction,
)
from saelab.darkmatter.per_token import ErrorNorms, cross_width_predictability
from saelab.darkmatter.regression import (
    ErrorParts,
    fit_regression,
    load_regression,
    lstsq,
    r2_mean_over_dims,
    shuffled_split,
    write_regression,
)
from saelab.darkmatter.scaling import (
    ScalingError,
    breakdown,
    contour_grid,
    curve_points,
    fit_power_law,
    pick_sae,
    power_law,
    pursuit_power_law,
    scaling_series,
    scaling_summary,
)
from saelab.metrics import fvu_dim_centred_np

torch.set_num_threads(1)

FIGURES = [
    "fig01_scaling_breakdown.png",
    "fig02_power_law_fit.png",
    "fig03_error_r2_contours.png",
    "fig04_per_token_error_norms.png",
    "fig05_per_token_predictability.png",
    "fig06_per_token_linear_nonlinear.png",
    "fig07_norm_prediction_violin.png",
    "fig11_nonlinear_fvu_contour.png",
    "fig12_nonlinear_norm_extra_variance.png",
    "fig13_norm_prediction_baselines.png",
    "fig14_latents_vs_norm_probe.png",
    "fig15_noise_simulation.png",
    "table01_noise_correlations.csv",
]


def make_info(x: np.ndarray, error: np.ndarray, error_sq_norm=None, token_ids=None) -> SAEInfo:
    """A hand-built SAEInfo: x̂ = x − error, one active latent per token."""
    n, _ = x.shape
    x = x.astype(np.float32)
    error = error.astype(np.float32)
    sq = np.square(error).sum(1) if error_sq_norm is None else error_sq_norm
    return SAEInfo(
        x=x, x_hat=x - error, error=error, error_sq_norm=sq.astype(np.float32),
        x_sq_norm=np.square(x).sum(1), l0=np.ones(n, np.int32),
        latent_idx=np.zeros((n, 1), np.int32), latent_val=np.ones((n, 1), np.float32),
        rows=np.arange(n), token_ids=np.arange(n) % 7 if token_ids is None else token_ids,
        position=np.arange(n, dtype=np.int32) % 16 + 1, attrs={"sae": "toy", "width": 4, "k": 1},
    )  # fmt: skip


# ------------------------------------------------------------------ regression
def test_lstsq_recovers_a_planted_linear_map_with_and_without_intercept():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6))
    W = rng.normal(size=(6, 4))
    assert np.allclose(lstsq(X, X @ W), W, atol=1e-10)
    b = rng.normal(size=4)
    Wb = lstsq(X, X @ W + b, intercept=True)
    assert np.allclose(Wb[:-1], W, atol=1e-10) and np.allclose(Wb[-1], b, atol=1e-10)


def test_r2_is_near_one_for_a_planted_linear_error_and_near_zero_for_noise():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 8)) + 3.0  # a constant component, as in an LM's residual
    M = rng.normal(size=(8, 8)) * 0.3
    w = rng.normal(size=8)
    planted = make_info(x, x @ M + 1e-3 * rng.normal(size=x.shape), error_sq_norm=x @ w)
    reg = fit_regression(planted, seed=0)
    assert reg.metrics["r2_vector"] > 0.999 and reg.metrics["r2_norm"] > 0.999
    assert np.allclose(reg.W_vec, M, atol=1e-3)
    noise = make_info(x, rng.normal(size=x.shape))
    reg = fit_regression(noise, seed=0, norm_intercept=True)
    assert abs(reg.metrics["r2_vector"]) < 0.02 and abs(reg.metrics["r2_norm"]) < 0.02


def test_linear_plus_nonlinear_error_is_the_error_and_fvus_add_up():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 5))
    info = make_info(x, 0.5 * x + rng.normal(size=x.shape))
    reg = fit_regression(info, seed=3)
    error, lin, nonlin = ErrorParts.of_info(info, reg)
    assert error is info.error and np.allclose(lin + nonlin, info.error, atol=1e-5)
    # x W computed in float64 from the stored W_vec, the same from the npz's arrays or W_vec
    assert np.array_equal(
        lin, (info.x.astype(np.float64) @ reg.W_vec.astype(np.float64)).astype(np.float32)
    )
    assert np.array_equal(ErrorParts.of_info(info, {"W_vec": reg.W_vec}).linear, lin)
    assert np.array_equal(ErrorParts.of_info(info, reg.W_vec).nonlinear, nonlin)
    m = reg.metrics
    assert math.isclose(m["linear_error_fvu"] + m["nonlinear_error_fvu"], m["fvu"], rel_tol=1e-9)
    # FVU(x, x̂ + x W) is the nonlinear error's share of the variance
    assert math.isclose(
        m["nonlinear_error_fvu"], fvu_dim_centred_np(info.x, info.x_hat + lin), rel_tol=1e-6
    )
    assert 0 < m["nonlinear_error_fvu"] < m["fvu"]


def test_r2_mean_over_dims_and_the_split():
    Y = np.array([[1.0, 0.0], [2.0, 2.0], [3.0, 4.0]])
    pred = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    # column 0 perfect (R² 1); column 1: SSE 2, SST 8 -> 0.75
    assert math.isclose(r2_mean_over_dims(Y, pred), (1 + 0.75) / 2)
    split = shuffled_split(10, seed=5, train_fraction=0.5)
    assert sorted(np.concatenate(split)) == list(range(10)) and len(split.train_idx) == 5
    assert np.array_equal(split.train_idx, shuffled_split(10, seed=5).train_idx)
    with pytest.raises(ValueError, match="train_fraction"):
        shuffled_split(10, train_fraction=1.0)


def test_regression_files_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(100, 3))
    reg = fit_regression(make_info(x, x * 0.1), norm_intercept=True)
    write_regression(reg, tmp_path / "regression.npz", tmp_path / "regression.json")
    back = load_regression(tmp_path / "regression.npz")
    assert np.array_equal(back.W_vec, reg.W_vec) and back.metrics["r2_vector"] == pytest.approx(
        reg.metrics["r2_vector"]
    )
    assert {"r2_vector", "r2_norm", "fvu", "linear_error_fvu", "nonlinear_error_fvu"} <= set(
        json.loads((tmp_path / "regression.json").read_text())
    )
    assert not list(tmp_path.glob(".*tmp*"))


# ------------------------------------------------------------------ info
def test_window_rows_keep_positions_and_drop_special_tokens():
    ctx = 4
    special = np.zeros(12, bool)
    special[[0, 4, 8]] = True  # BOS of every context
    special[6] = True  # a mid-context special token
    assert window_rows(special, (4, 12), ctx, [0, 3], 100).tolist() == [5, 9, 10]
    assert window_rows(special, (0, 12), ctx, [1, 99], 4).tolist() == [1, 2, 3, 5]
    with pytest.raises(SAEInfoError, match="window"):
        WindowConfig(window=[3, 3])
    with pytest.raises(ValueError, match="no position"):
        window_rows(special, (0, 12), ctx, [5, 9])
    with pytest.raises(ValueError, match="holds no tokens"):
        window_rows(special, (4, 5), ctx, [0, 1])  # only a BOS


def _toy_cache(path, n_contexts=8, ctx=8, d=6, seed=0):
    from saelab.cache import build_cache

    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(50, d, generator=gen)

    def source(tokens):
        return {"blocks.0.hook_resid_pre": table[tokens % 50] + tokens[..., None].float() * 0.01}

    tokens = torch.randint(1, 50, (n_contexts, ctx), generator=gen).numpy()
    tokens[:, 0] = 0
    special = np.zeros_like(tokens, dtype=bool)
    special[:, 0] = True
    build_cache(source, tokens, special, ["blocks.0.hook_resid_pre"], path, dtype="float32",
                batch_contexts=4, progress=False)  # fmt: skip
    return tokens


def test_compute_sae_info_matches_the_sae_and_round_trips(tmp_path):
    from saelab.saes import SAEConfig, build_sae

    cache = tmp_path / "cache.zarr"
    tokens = _toy_cache(cache, n_contexts=40)
    sae = build_sae(
        SAEConfig(arch="topk", d_in=6, width=16, k=3, hook_name="blocks.0.hook_resid_pre")
    )
    cfg = WindowConfig(window=[2, 7], n_tokens=6, split="all")
    info = compute_sae_info(sae, cache, cfg, "toy")
    assert info.rows.tolist() == [2, 3, 4, 5, 6, 10]  # positions 2..6, then the next context
    assert info.position.tolist() == [2, 3, 4, 5, 6, 2]
    assert info.token_ids.tolist() == tokens.reshape(-1)[info.rows].tolist()
    with torch.no_grad():
        x_hat = sae.reconstruct(torch.from_numpy(info.x)).numpy()
    assert np.allclose(info.x_hat, x_hat, atol=1e-5)
    assert np.allclose(info.error, info.x - info.x_hat)
    assert np.allclose(info.error_sq_norm, np.square(info.error).sum(1), rtol=1e-5)
    assert info.l0.tolist() == [3] * 6 and info.latent_idx.shape == (6, 3)
    # the sparse latents rebuild the reconstruction
    dense = np.zeros((6, 16), np.float32)
    for t in range(6):
        dense[t, info.latent_idx[t]] = info.latent_val[t]
    W_dec, b_dec = sae.W_dec.detach().numpy(), sae.b_dec.detach().numpy()
    assert np.allclose(dense @ W_dec + b_dec, info.x_hat, atol=1e-5)
    assert np.all(np.diff(info.latent_val, axis=1) <= 0)  # descending within a token
    out = write_sae_info(info, tmp_path / "info.zarr")
    assert not (tmp_path / "info.zarr.partial").exists()
    back = load_sae_info(out)
    for name in ("x", "error", "latent_idx", "rows", "position"):
        assert np.array_equal(getattr(back, name), getattr(info, name))
    assert back.attrs["window"] == [2, 7] and back.attrs["k"] == 3
    heldout = compute_sae_info(sae, cache, WindowConfig(window=[1, 8]), "toy")
    assert heldout.rows.min() >= 38 * 8  # the held-out split: the last 5 % of contexts
    with pytest.raises(FileExistsError):
        write_sae_info(info, out)
    with pytest.raises(FileNotFoundError, match="rule `darkmatter_info`"):
        load_sae_info(tmp_path / "missing.zarr")


# ------------------------------------------------------------------ scaling
def test_power_law_fit_recovers_planted_parameters_with_covering_intervals():
    widths = 2.0 ** np.arange(10, 17)
    c, a, m = 0.05, 3.0, 0.4
    noise = np.random.default_rng(0).normal(size=len(widths)) * 1e-4
    fit = fit_power_law(widths, power_law(widths, c, a, m) + noise)
    assert fit.c == pytest.approx(c, abs=2e-3) and fit.m == pytest.approx(m, rel=0.05)
    assert fit.a == pytest.approx(a, rel=0.2)
    assert fit.c_ci[0] < c < fit.c_ci[1] and fit.m_ci[0] < m < fit.m_ci[1]
    exact = fit_power_law(widths[:3], power_law(widths[:3], c, a, m))  # 3 points: no CI
    assert exact(widths[:3]) == pytest.approx(power_law(widths[:3], c, a, m), rel=1e-6)
    assert math.isnan(exact.c_ci[0])
    with pytest.raises(ScalingError, match="at least 3"):
        fit_power_law(widths[:2], [0.3, 0.2])


def test_power_law_a_interval_is_the_delta_method_of_a_raw_unit_scipy_fit():
    """Reference: curve_fit in raw widths started at our optimum; its covariance of (a, m) is
    what the delta method carries over from the scaled fit, so log a's standard error must agree."""
    from scipy import stats
    from scipy.optimize import curve_fit

    widths = 2.0 ** np.arange(9, 15)
    y = power_law(widths, 0.06, 4.0, 0.45) + np.random.default_rng(3).normal(size=6) * 2e-3
    fit = fit_power_law(widths, y)
    params, cov = curve_fit(power_law, widths, y, p0=[fit.c, fit.a, fit.m], maxfev=20000)
    assert params == pytest.approx([fit.c, fit.a, fit.m], rel=1e-4)
    t = stats.t.ppf(0.975, len(widths) - 3)
    se_log_a = math.sqrt(cov[1, 1]) / params[1]  # delta method on log a, from the raw fit
    expected = (params[1] * math.exp(-t * se_log_a), params[1] * math.exp(t * se_log_a))
    assert fit.a_ci == pytest.approx(expected, rel=2e-3)
    half_m = t * math.sqrt(cov[2, 2])
    assert fit.m_ci == pytest.approx((params[2] - half_m, params[2] + half_m), rel=2e-3)
    assert "delta method" in fit.ci_method


def test_power_law_intervals_cover_95_percent_in_a_monte_carlo_study():
    """400 noisy curves from a planted law (8 widths, the default sweep's range): each interval
    must hold the truth in about 95 % of fits (the earlier a-interval, m's uncertainty left
    out, held it in 29 % of these same fits; c 95 %, m 94.5 %, a now 94.5 %)."""
    widths = 2.0 ** np.arange(8, 16)
    c, a, m = 0.05, 3.0, 0.5
    rng = np.random.default_rng(0)
    hits = {"c": 0, "a": 0, "m": 0}
    n = 400
    for _ in range(n):
        y = power_law(widths, c, a, m) + rng.normal(size=len(widths)) * 2e-3
        fit = fit_power_law(widths, y)
        hits["c"] += fit.c_ci[0] <= c <= fit.c_ci[1]
        hits["a"] += fit.a_ci[0] <= a <= fit.a_ci[1]
        hits["m"] += fit.m_ci[0] <= m <= fit.m_ci[1]
    for key in ("c", "a", "m"):
        assert 0.90 <= hits[key] / n <= 0.99, (key, hits[key] / n)


def test_breakdown_areas_stack_up_to_the_fit():
    widths = [1024, 2048, 4096, 8192]
    fit = fit_power_law(widths, power_law(np.array(widths), 0.1, 2.0, 0.5))
    parts = breakdown(fit, widths, [0.06, 0.05, 0.05, 0.04], pursuit_fvus=[0.04, 0.035, 0.03, 0.03])
    total = parts.absent_features + parts.linear_error + parts.encoder_error + parts.nonlinear_error
    assert np.allclose(total, parts.fitted)
    assert parts.linear_error == pytest.approx(0.1 - 0.05, abs=1e-3)
    no_pursuit = breakdown(fit, widths, [0.05] * 4)
    assert no_pursuit.encoder_error is None
    assert np.allclose(no_pursuit.nonlinear_error, 0.05)


def test_curve_and_sae_choice_and_summary():
    points = [
        {"name": f"w{w}-k{k}", "width": w, "k": k} for w in (64, 128, 256) for k in (4, 8, 16)
    ]
    assert [p["name"] for p in curve_points(points)] == ["w64-k8", "w128-k8", "w256-k8"]
    assert [p["width"] for p in curve_points(points, 16)] == [64, 128, 256]
    with pytest.raises(ScalingError, match="no SAE"):
        curve_points(points, 5)
    assert pick_sae(points, None, "widest") == "w256-k8"
    assert pick_sae(points, None, "narrowest_largest_k") == "w64-k16"
    with pytest.raises(ScalingError, match="not in"):
        pick_sae(points, "nope", "widest")
    rows = [{**p, "l0_mean": p["k"], "fvu": 2 / p["width"] ** 0.3 / p["k"] ** 0.2,
             "nonlinear_error_fvu": 0.05, "r2_vector": 0.5, "r2_norm": 0.6} for p in points]  # fmt: skip
    summary = scaling_summary(rows, None)
    assert summary["fvu_falls_with_width"] and summary["curve_k"] == 8
    grid = contour_grid([r["width"] for r in rows], [r["l0_mean"] for r in rows],
                        [r["fvu"] for r in rows], n=20)  # fmt: skip
    assert grid.values.shape == (20, 20) and np.nanmax(grid.values) <= max(r["fvu"] for r in rows)


# ------------------------------------------------------------------ per-token, norms
def test_cross_width_predictability_on_planted_norms():
    rng = np.random.default_rng(5)
    base = rng.gamma(2.0, size=3000)
    nonlinear = rng.gamma(2.0, size=3000)
    # wider SAE's norm: the narrower one's, plus its nonlinear part, plus a little noise
    total = np.stack([base + nonlinear, 0.5 * base + nonlinear + 0.01 * rng.normal(size=3000)])
    norms = ErrorNorms(total, np.zeros_like(total), np.stack([nonlinear, nonlinear]))
    cross = cross_width_predictability(norms, seed=0)
    assert np.isnan(cross.r2_basic[1, 0]) and np.isnan(cross.r2_basic[0, 0])
    assert 0.3 < cross.r2_basic[0, 1] < 0.99
    assert cross.r2_with_nonlinear[0, 1] > 0.999 and cross.extra_percent[0, 1] > 99


def test_norm_prediction_and_baselines_on_a_planted_problem():
    rng = np.random.default_rng(6)
    token_ids = rng.integers(0, 5, size=2000)
    x = rng.normal(size=(2000, 4)) + 10
    error = rng.normal(size=(2000, 4)) * 0.1
    y = x @ np.array([1.0, -1.0, 0.5, 0.0]) + 0.01 * rng.normal(size=2000)
    info = make_info(x, error, error_sq_norm=y, token_ids=token_ids)
    split = shuffled_split(2000, seed=0)
    reg = fit_regression(info)
    r2 = norm_prediction_r2(info, reg, split)
    assert r2["sae_error"] > 0.99  # the planted linear norm
    loss = np.where(np.arange(2000) < 1000, rng.normal(size=2000), np.nan)
    base = baseline_r2(info, split, loss)
    assert base["x_affine"] > 0.99 and abs(base["l0"]) < 1e-9 + 0.01
    assert abs(base["model_loss"]) < 0.05 and base["token_id"] < 0.05
    assert token_mean_prediction(np.array([0, 0, 1, 2]), np.array([1.0, 3.0, 5.0, 7.0]),
                                 np.array([0, 1, 2])).tolist() == [2.0, 2.0, 5.0, 3.0]  # fmt: skip


def test_token_id_baseline_is_held_out_by_default_and_in_sample_only_when_asked():
    """Pure-noise norms over 500 ids of ~4 tokens each: per-id means fitted on the same tokens
    'explain' a quarter of the variance (in-sample, the original), nothing on held-out tokens.
    The figure's legend names which one it drew."""
    from saelab.plots.darkmatter import plot_baselines

    rng = np.random.default_rng(3)
    token_ids = rng.integers(0, 500, size=2000)
    x = rng.normal(size=(2000, 4))
    y = rng.normal(size=2000) ** 2
    info = make_info(x, rng.normal(size=(2000, 4)), error_sq_norm=y, token_ids=token_ids)
    split = shuffled_split(2000, seed=0)
    held = baseline_r2(info, split)["token_id"]
    in_sample = baseline_r2(info, split, token_id_in_sample=True)["token_id"]
    test = split.test_idx
    by_hand = token_mean_prediction(token_ids, y, split.train_idx)[test]
    expected = 1 - np.sum((y[test] - by_hand) ** 2) / np.sum((y[test] - y[test].mean()) ** 2)
    assert held == pytest.approx(expected, rel=1e-6) and held < 0.02  # float32 norms
    assert in_sample > 0.2
    saes = [{"name": "a", "layer": 0, "r2": {"x_affine": 0.5, "token_id": held}},
            {"name": "b", "layer": 1, "r2": {"x_affine": 0.6, "token_id": held}}]  # fmt: skip
    for flag, text in ((False, "held out"), (True, "IN-SAMPLE")):
        fig = plot_baselines({"saes": saes, "token_id_in_sample": flag})
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert any("token id" in label and text in label for label in labels), labels


def test_losses_for_rows_and_running_mean():
    got = losses_for_rows(np.array([10, 11, 12]), np.array([1.0, 2.0, 3.0]), np.array([12, 5, 10]))
    assert got[0] == 3.0 and math.isnan(got[1]) and got[2] == 1.0
    assert np.allclose(running_mean(np.arange(5.0), 3), [1, 1, 2, 3, 3])


# ------------------------------------------------------------------ noise
def test_noise_simulation_separates_activation_and_reconstruction_noise():
    gen = torch.Generator().manual_seed(0)
    d, width, n = 16, 32, 2000
    W_dec = torch.randn(width, d, generator=gen)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    codes = torch.rand(n, width, generator=gen) * (torch.rand(n, width, generator=gen) < 0.1)
    b_dec = torch.zeros(d)
    x = codes @ W_dec
    cfg = NoiseConfig(ablate_percents=[0, 20], line_settings=[[0.0, 0.0]], grid=[0.0, 0.5, 1.0])
    points = simulate(x, codes, W_dec, b_dec, codes.mean(0), cfg)
    settings = [(p.ablate_percent, p.sigma_act, p.sigma_rec) for p in points]
    assert len(settings) == len(set(settings)) == 1 + 9  # (0, 0, 0) is on the line and the grid
    clean = next(p for p in points if (p.sigma_act, p.sigma_rec, p.ablate_percent) == (0, 0, 0))
    assert clean.fvu_recon == pytest.approx(0, abs=1e-10)
    ablated = next(p for p in points if p.ablate_percent == 20)
    assert ablated.fvu_recon > 0.01  # absent features: the ablated latents' share is lost
    table = correlation_table(points, cfg.grid)
    assert table["Activation Noise"]["Linear Error"] > 0.8
    assert table["SAE-Reconstruction Noise"]["Nonlinear Error"] > 0.8
    assert table_csv(table).splitlines()[0] == "noise,Linear Error,Nonlinear Error"
    with pytest.raises(ValueError, match="units"):
        NoiseConfig(units="furlongs")


# ------------------------------------------------------------------ config
def test_config_checks_name_the_key(tmp_path):
    from saelab.config import REPO_ROOT

    micro = REPO_ROOT / "tests" / "config" / "micro.yaml"
    with pytest.raises(ConfigError, match=r"darkmatter\.sweep"):
        load_config(micro, overrides={"darkmatter": {"sweep": "nope"}})
    with pytest.raises(ConfigError, match="probe_sae"):
        load_config(micro, overrides={"darkmatter": {"probe_sae": "nope"}})
    with pytest.raises(ConfigError, match="baselines_sweep"):
        load_config(micro, overrides={"darkmatter": {"baselines_sweep": "nope"}})
    with pytest.raises(ConfigError, match="3 widths"):
        load_config(micro, overrides={"sweeps": {"darkmatter": {"width": [64, 128]}}})
    with pytest.raises(ConfigError):
        load_config(micro, overrides={"darkmatter": {"window": [5, 2]}})


def test_darkmatter_choices_are_resolved_when_the_config_is_parsed(tmp_path):
    """The SAEs every dark-matter analysis reads, by hand from micro's 3 x 2 grid (fixed_k 8,
    fixed_width 64), and the checks that moved out of the rule files, each naming its key."""
    from saelab.config import REPO_ROOT

    micro = REPO_ROOT / "tests" / "config" / "micro.yaml"
    choices = load_config(micro).analyses["darkmatter"]
    assert choices.width_sweep == [f"darkmatter-w{w}-k8" for w in (64, 128, 256)]
    assert choices.fixed_width == 64
    assert choices.k_sweep == ["darkmatter-w64-k4", "darkmatter-w64-k8"]
    assert choices.fixed_sae == "darkmatter-w64-k8"
    assert choices.section_saes == dict.fromkeys(
        ("components", "train_on_error"), "darkmatter-w64-k8"
    )
    assert choices.pursuit_saes == [*choices.width_sweep, "darkmatter-w64-k4"]
    assert choices.probe_sae == "darkmatter-w256-k8"  # the widest at fixed_k
    assert choices.noise_sae == "darkmatter-w64-k8"  # the narrowest at its largest k
    assert set(choices.component_hooks) | set(choices.skipped_components) == {
        "prev_res",
        "mlp",
        "att",
    }
    width_only = load_config(micro, overrides={"darkmatter": {"pursuit": {"saes": "width_sweep"}}})
    assert width_only.analyses["darkmatter"].pursuit_saes == choices.width_sweep
    import yaml

    from saelab.config import load_yaml

    raw = load_yaml(micro)
    del raw["sweeps"]["darkmatter"]  # the default sweep name, undefined: the analysis is off
    raw["darkmatter"] = {"baselines_sweep": None}
    (tmp_path / "off.yaml").write_text(yaml.safe_dump(raw))
    assert load_config(tmp_path / "off.yaml").analyses["darkmatter"] is None
    with pytest.raises(
        ConfigError,
        match=r"darkmatter\.fixed_width: no SAE of the grid has width 100; widths: \[64, 128, 256\]",
    ):
        load_config(micro, overrides={"darkmatter": {"fixed_width": 100}})
    with pytest.raises(
        ConfigError, match=r"darkmatter\.components\.sae: 'nope' is not in the grid"
    ):
        load_config(micro, overrides={"darkmatter": {"components": {"sae": "nope"}}})
    with pytest.raises(
        ConfigError, match=r"darkmatter\.train_on_error\.sae: 'nope' is not in the grid"
    ):
        load_config(micro, overrides={"darkmatter": {"train_on_error": {"sae": "nope"}}})
    with pytest.raises(
        ConfigError, match=r"darkmatter\.components\.predictors: .*'res' is reserved"
    ):
        load_config(micro, overrides={"darkmatter": {"components": {"predictors": {"res": "x"}}}})


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_micro_run_darkmatter(micro_run):
    plots = micro_run / "plots" / "darkmatter"
    for name in FIGURES:
        assert (
            (plots / name).stat().st_size > 1000
            if name.endswith(".png")
            else (plots / name).exists()
        )
    analysis = next((micro_run / "data" / "analysis" / "darkmatter").glob("*/darkmatter"))
    scaling = json.loads((analysis / "scaling.json").read_text())
    assert scaling["fvu_falls_with_width"], scaling["curve_fvu"]
    assert all(b < a for a, b in zip(scaling["curve_fvu"], scaling["curve_fvu"][1:], strict=False))
    for row in scaling["saes"]:
        assert 0 < row["r2_norm"] < 1, row
        assert 0 < row["nonlinear_error_fvu"] < row["fvu"] < 1, row
    with open(plots / "table01_noise_correlations.csv") as handle:
        table = {row["noise"]: row for row in csv.DictReader(handle)}
    assert float(table["Activation Noise"]["Linear Error"]) > 0
    info = load_sae_info(
        next(micro_run.glob("data/analysis/darkmatter/*/*/darkmatter-*/info.zarr"))
    )
    assert info.position.min() >= 1 and len(info.x) > 100


def test_every_figure_draws_from_small_inputs(tmp_path):
    from saelab.darkmatter.per_token import error_norms
    from saelab.plots import darkmatter as plots
    from saelab.plots import darkmatter_tokens as tokens

    points = [{"name": f"w{w}-k{k}", "width": w, "k": k} for w in (64, 128, 256) for k in (4, 8)]
    rows = [{**p, "l0_mean": p["k"], "fvu": 1 / p["width"] ** 0.3, "nonlinear_error_fvu": 0.05,
             "r2_vector": 0.5, "r2_norm": 0.6} for p in points]  # fmt: skip
    summary = json.loads(json.dumps(scaling_summary(rows, None, {
        r["name"]: {"pursuit_fvu": 0.04} for r in rows
    }), default=float).replace("NaN", "null"))  # fmt: skip
    series = scaling_series(summary)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    infos = [make_info(x, rng.normal(size=x.shape) * s) for s in (1.0, 0.8, 0.6)]
    norms = error_norms(infos, [fit_regression(i) for i in infos])
    cross = cross_width_predictability(norms)
    per_token = {"widths": np.array([64, 128, 256]), **norms._asdict(), **cross._asdict()}
    norm_r2 = {"r2": {"a": dict.fromkeys(["x", "sae", "sae_plus_nonlinear", "sae_error",
                                          "linear_error", "nonlinear_error"], 0.9)}}  # fmt: skip
    baselines = {"saes": [{"name": "l0", "layer": 0, "r2": {"x_affine": 0.9, "l0": 0.1}},
                          {"name": "l1", "layer": 1, "r2": {"x_affine": 0.8, "l0": 0.2}}]}  # fmt: skip
    probe = {"sae": "toy", "probe_r2": 0.9, "correlation": 0.5,
             "probe_dot": rng.normal(size=50), "mean_active": np.linspace(5, 1, 50)}  # fmt: skip
    probe |= {"running_mean": running_mean(probe["probe_dot"][:40], 10), "running_window": 10}
    cfg = NoiseConfig(ablate_percents=[0, 10], grid=[0.0, 1.0])
    x_t = torch.from_numpy(x).float()
    points_noise = simulate(x_t, torch.rand(300, 6), torch.randn(6, 4), torch.zeros(4),
                            torch.rand(6), cfg)  # fmt: skip
    noise = {"sae": "toy", "config": vars(cfg), "points": [p._asdict() | {
        "linear_estimate": p.linear_estimate, "nonlinear_estimate": p.nonlinear_estimate}
        for p in points_noise]}  # fmt: skip
    figures = [
        plots.plot_scaling_breakdown(summary, series), plots.plot_power_law_fit(summary, series),
        plots.plot_error_r2_contours(summary, series),
        plots.plot_nonlinear_fvu_contour(summary, series),
        tokens.plot_token_trace(per_token, 0, 50), tokens.plot_cross_width(per_token),
        tokens.plot_linear_nonlinear_trace(per_token), tokens.plot_nonlinear_extra(per_token),
        plots.plot_norm_violin(norm_r2), plots.plot_baselines(baselines),
        plots.plot_probe(probe), plots.plot_noise(noise),
    ]  # fmt: skip
    from saelab.plots.common import save_figure

    for i, fig in enumerate(figures):
        save_figure(fig, tmp_path / f"{i}.png", dpi=30)
        assert (tmp_path / f"{i}.png").stat().st_size > 500


def test_scaling_series_are_the_power_law_and_the_breakdown_on_the_figure_grid():
    """The series the scaling figures draw, against the hand formulas: the fit c + a W^-m on a
    log grid up to 10x the widest SAE, the mean nonlinear FVU as the linear level, and contours
    that pass through the SAEs' own values (linear interpolation is exact at its nodes)."""
    rows = [{"name": f"w{w}-k{k}", "width": w, "k": k, "l0_mean": k, "fvu": 0.2 * w ** -0.3 + 0.05,
             "nonlinear_error_fvu": 0.01 * k, "r2_vector": 0.5, "r2_norm": w / 1000}
            for w in (64, 128, 256, 512) for k in (4, 8)]  # fmt: skip
    summary = json.loads(json.dumps(scaling_summary(rows, 8), default=float).replace("NaN", "null"))
    series = scaling_series(summary)
    fit = summary["power_law"]
    grid = np.exp(np.linspace(np.log(64), np.log(5120), 200))
    assert np.allclose(series["grid"], grid)
    assert np.allclose(series["fitted"], fit["c"] + fit["a"] * grid ** -fit["m"])
    assert float(series["linear_level"]) == pytest.approx(0.08)
    assert float(series["linear_error"]) == pytest.approx(fit["c"] - 0.08)
    assert "pursuit" not in series
    values = series["contour_r2_norm_values"]
    assert values.shape == (100, 100)
    # corners of the grid are SAEs (64, 4) and (512, 8): their own values
    assert values[0, 0] == pytest.approx(0.064) and values[-1, -1] == pytest.approx(0.512)
    few = scaling_series({**summary, "saes": summary["saes"][:2]})
    assert not any(key.startswith("contour_") for key in few)


def test_encoder_error_area_comes_from_pursuit_paired_with_its_own_encoder_fit():
    """Pursuit's nonlinear FVU is measured on its own tokens and fit; the encoder-error area is
    its improvement over the encoder on that same basis, never a level from another fit."""
    rows = [{"name": f"w{w}", "width": w, "k": 8, "l0_mean": 8, "fvu": 0.3 * w ** -0.3 + 0.05,
             "nonlinear_error_fvu": nl, "r2_vector": 0.5, "r2_norm": 0.9}
            for w, nl in ((64, 0.05), (128, 0.04), (256, 0.03), (512, 0.04))]  # fmt: skip
    pursuit = {r["name"]: {"encoder_nonlinear_error_fvu": 0.09, "pursuit_nonlinear_error_fvu": 0.07,
                           "pursuit_fvu": 0.5} for r in rows}  # fmt: skip
    summary = scaling_summary(rows, None, pursuit)
    # level (mean nonlinear FVU 0.04) minus the paired improvement 0.02, at every width.
    assert np.allclose(summary["curve_pursuit_fvu"], 0.02)
    widest = summary["breakdown_at_widest"]
    assert widest["encoder_error"] == pytest.approx(0.02)
    assert widest["nonlinear_error"] == pytest.approx(0.02)


def test_pursuit_power_law_fits_the_width_sweep_or_gives_none(caplog):
    widths = [512, 1024, 2048, 4096]
    records = [{"width": w, "pursuit_fvu": 0.05 + 3.0 * w**-0.7} for w in widths]
    fit = pursuit_power_law(records)
    assert fit.m == pytest.approx(0.7, rel=0.05) and fit.c == pytest.approx(0.05, abs=0.01)
    with caplog.at_level("WARNING"):
        assert pursuit_power_law(records[:2]) is None
    assert "no power-law fit" in caplog.text


def test_power_law_on_a_flat_curve_gives_an_unbounded_a_interval_not_an_overflow():
    """FVU that hardly moves with width (one training step at paper widths did this) leaves a
    unidentified: the delta-method bound of log a is astronomically wide and its exp must be
    inf, not an OverflowError that stops the scaling rule."""
    widths = np.array([3072.0, 6144.0, 12288.0, 24576.0, 49152.0])
    fvus = np.array([0.9990, 0.9991, 0.9989, 0.9990, 0.9991])
    fit = fit_power_law(widths, fvus)
    assert np.isfinite(fit.c)
    lo, hi = fit.a_ci
    assert hi == np.inf or np.isnan(hi) or hi > 1e300, fit
