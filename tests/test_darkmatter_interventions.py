"""Dark-matter interventions (methods §5.5-5.8): gradient pursuit, downstream CE, predicting the
error from other components, training on the error and detection scoring, each on a small
problem whose answer is known; plus the end-to-end outputs of the micro DAG."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from saelab.darkmatter.components import component_hooks, predictability_table
from saelab.darkmatter.downstream import (
    DownstreamContexts,
    downstream_record,
    percent_recovered,
    r2_percent,
    reconstruction_percentages,
    splice_variants,
    spliced_ce,
)
from saelab.darkmatter.pursuit import _pursuit_batch, gradient_pursuit, pursuit_metrics
from saelab.darkmatter.regression import ErrorParts
from saelab.darkmatter.scoring import (
    LLMScorer,
    ScorerUnavailableError,
    TokenSetScorer,
    choose_latents,
    detection_examples,
    explanation_mask,
    make_scorer,
    parse_binary_list,
    score_activations,
    score_latents,
)
from saelab.darkmatter.train_on_error import (
    ErrorSAEConfig,
    dense_activations,
    train_error_sae,
)
from saelab.plots.darkmatter_interventions import (
    plot_components,
    plot_downstream_ce,
    plot_pursuit_breakdown,
    plot_train_on_error,
)
from saelab.training.loop import batch_fvu

torch.set_num_threads(1)

# ------------------------------------------------------------------------------------ pursuit


def reference_pursuit(x, D, b, target_l0):
    """The method text of §5.6 literally, one token at a time, dense weights, float64."""
    out = []
    for n in range(len(x)):
        s = x[n] - b
        w = torch.zeros(D.shape[0], dtype=torch.float64)
        for _ in range(int(target_l0[n])):
            r = s - w @ D
            g = D @ r
            support = w != 0
            support[int(g.argmax())] = True
            grad = torch.where(support, g, torch.zeros_like(g))
            c = grad @ D
            eta = (c @ r) / (c @ c) if (c @ c) > 0 else 0.0
            w = (w + eta * grad).clamp_min(0)
        out.append(w @ D + b)
    return torch.stack(out)


def test_pursuit_recovers_exactly_sparse_signal_from_orthogonal_dictionary():
    gen = torch.Generator().manual_seed(0)
    d, n, k = 16, 32, 4
    D = torch.linalg.qr(torch.randn(d, d, generator=gen))[0].T  # orthonormal rows
    weights = torch.zeros(n, d)
    for i in range(n):
        support = torch.randperm(d, generator=gen)[:k]
        weights[i, support] = torch.rand(k, generator=gen) + 0.5
    b_dec = torch.randn(d, generator=gen)
    x = weights @ D + b_dec
    result = gradient_pursuit(x, D, b_dec, torch.full((n,), k), batch_size=8, progress=False)
    assert torch.allclose(result.recon, x, atol=1e-5)
    assert (result.l0 == k).all()
    # one iteration fewer cannot be exact: the smallest weight is missing
    short = gradient_pursuit(x, D, b_dec, torch.full((n,), k - 1), progress=False)
    missing = (short.recon - x).norm(dim=1)
    smallest = weights.masked_fill(weights == 0, float("inf")).min(dim=1).values
    assert torch.allclose(missing, smallest, atol=1e-5)


def test_batched_pursuit_matches_the_literal_method_per_token():
    gen = torch.Generator().manual_seed(1)
    D = torch.randn(40, 10, generator=gen, dtype=torch.float64)
    D = D / D.norm(dim=1, keepdim=True)
    x = torch.randn(30, 10, generator=gen, dtype=torch.float64)
    b = 0.1 * torch.randn(10, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 9, (30,), generator=gen)
    r, l0 = _pursuit_batch(x - b, D, target)
    expected = reference_pursuit(x, D, b, target)
    assert torch.allclose(x - r, expected, atol=1e-10)
    assert (l0 <= target).all()
    zero = target == 0
    assert torch.allclose((x - r)[zero], b.expand(int(zero.sum()), -1))


def test_pursuit_rejects_bad_shapes():
    with pytest.raises(ValueError, match="share d"):
        gradient_pursuit(torch.zeros(3, 4), torch.zeros(5, 6), torch.zeros(6), torch.ones(3))
    with pytest.raises(ValueError, match="target_l0 has 2 entries for 3 tokens"):
        gradient_pursuit(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(4), torch.ones(2))
    with pytest.raises(ValueError, match="b_dec"):
        gradient_pursuit(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(3), torch.ones(3))


def test_pursuit_metrics_compare_like_with_like():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    perfect = pursuit_metrics(x, x * 0.5, x.copy())
    assert perfect["pursuit_fvu"] == pytest.approx(0.0, abs=1e-6)
    # x̂ = x/2: FVU = Σ(x/2)² / SST; its error x/2 is exactly linear in x, so adding it is exact
    sst = np.square(x - x.mean(0)).sum()
    assert perfect["encoder_fvu"] == pytest.approx(np.square(x / 2).sum() / sst, rel=1e-5)
    assert perfect["encoder_nonlinear_error_fvu"] == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------------ downstream


def test_percentages_by_hand():
    assert percent_recovered(4.0, 3.5, 3.0) == pytest.approx(50.0)
    assert percent_recovered(4.0, 4.5, 3.0) == pytest.approx(-50.0)
    assert np.isnan(percent_recovered(3.0, 3.0, 3.0))
    assert r2_percent(0.6, 0.9) == pytest.approx(75.0)


def test_reconstruction_percentages_of_an_exactly_linear_error():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 8, generator=gen)
    A = torch.randn(8, 8, generator=gen) * 0.3
    x_hat = x @ A
    W = torch.eye(8) - A  # x W = x − x̂ exactly
    parts = ErrorParts.of(x, x_hat, W)
    variants = splice_variants(x_hat, parts)
    assert torch.allclose(variants["sae_linear"], x, atol=1e-5)
    assert torch.allclose(variants["sae_nonlinear"], x_hat, atol=1e-5)
    out = reconstruction_percentages(x, variants, parts)
    assert out["r2_sae_linear"] == pytest.approx(1.0, abs=1e-5)
    assert out["r2_percent_linear"] == pytest.approx(100.0, abs=1e-3)
    assert out["r2_percent_nonlinear"] == pytest.approx(0.0, abs=1e-3)
    assert out["norm_percent_linear"] == pytest.approx(100.0, abs=1e-3)
    assert out["norm_percent_nonlinear"] == pytest.approx(0.0, abs=1e-3)


def _contexts(model, hook, tokens, window):
    _, cache = model.run_with_cache(tokens, names_filter=[hook])
    acts = cache[hook].reshape(*tokens.shape, -1)
    loss_mask = window[:, :-1].clone()
    index = np.arange(int(window.sum()))
    return DownstreamContexts(tokens, acts, window, loss_mask, index), acts[window]


@pytest.mark.parametrize(
    "hook", ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.1.hook_mlp_out"]
)
def test_spliced_ce_matches_the_models_own_loss(tiny_model, hook):
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 60, (3, 16), generator=gen)
    window = torch.zeros(3, 16, dtype=torch.bool)
    window[:, 4:12] = True
    contexts, x = _contexts(tiny_model, hook, tokens, window)
    with torch.no_grad():
        per_token = tiny_model(tokens, return_type="loss", loss_per_token=True)
    expected = float(per_token[window[:, :-1]].mean())
    ce = spliced_ce(tiny_model, contexts, hook, {"same": x, "zero": torch.zeros_like(x)}, 2)
    assert ce["clean"] == pytest.approx(expected, rel=1e-5)
    assert ce["same"] == pytest.approx(expected, rel=1e-5)
    assert abs(ce["zero"] - expected) > 1e-3  # the splice reaches the loss


def test_downstream_record_with_an_exactly_linear_error(tiny_model):
    """x̂ = x/2 and W = I/2: x̂ + x W = x recovers 100 % of the CE, x̂ + nonlinear = x̂ none."""
    hook, ctx, n_ctx = "blocks.1.hook_resid_pre", 16, 3
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randint(1, 60, (n_ctx, ctx), generator=gen)
    _, cache = tiny_model.run_with_cache(tokens, names_filter=[hook])
    acts = cache[hook].reshape(n_ctx * ctx, -1).numpy()
    special = np.zeros(n_ctx * ctx, dtype=bool)
    special[ctx + 9] = True  # a special target: its prediction (position 8) must not count
    group = {"tokens": tokens.reshape(-1).numpy(), "special_mask": special, hook: acts}
    rows = np.array(
        [c * ctx + p for c in range(n_ctx) for p in range(2, 14) if c * ctx + p != ctx + 9]
    )
    x = acts[rows]
    info = SimpleNamespace(
        x=x, x_hat=x / 2, rows=rows, position=rows % ctx,
        attrs={"context_len": ctx, "hook": hook, "sae": "half", "width": 4, "k": 1},
    )  # fmt: skip
    regression = SimpleNamespace(W_vec=np.eye(x.shape[1], dtype=np.float32) / 2)
    clean_ce = {}
    record = downstream_record(tiny_model, info, regression, group, 2, 1, clean_ce)
    assert record["n_contexts"] == 2 and record["n_spliced"] == 12 + 11
    assert record["n_predictions"] == 12 + 10  # position 8 of context 1 predicts a special token
    assert record["ce_sae_linear"] == pytest.approx(record["ce_clean"], rel=1e-5)
    assert record["linear_percent"] == pytest.approx(100.0, abs=1e-3)
    assert record["ce_sae_nonlinear"] == pytest.approx(record["ce_sae"], rel=1e-5)
    assert record["nonlinear_percent"] == pytest.approx(0.0, abs=1e-3)
    assert record["norm_percent_linear"] == pytest.approx(100.0, abs=1e-3)
    again = downstream_record(tiny_model, info, regression, group, 2, 1, clean_ce)
    assert len(clean_ce) == 1 and again["ce_clean"] == record["ce_clean"]


def test_downstream_intervals_are_scipy_paired_percentile_bootstrap(tiny_model):
    """Reference: per-context CE from TransformerLens's own loss with x̂ = 0.6 x and
    x̂ + 0.2 x spliced at the window, and scipy.stats.bootstrap (paired, percentile, same seed)
    of the linear percentage recovered."""
    from scipy import stats

    hook, ctx, n_ctx = "blocks.1.hook_resid_pre", 16, 6
    tokens = torch.randint(1, 60, (n_ctx, ctx), generator=torch.Generator().manual_seed(5))
    _, cache = tiny_model.run_with_cache(tokens, names_filter=[hook])
    acts = cache[hook].reshape(n_ctx * ctx, -1).numpy()
    group = {"tokens": tokens.reshape(-1).numpy(), "special_mask": np.zeros(n_ctx * ctx, bool),
             hook: acts}  # fmt: skip
    rows = np.array([c * ctx + p for c in range(n_ctx) for p in range(1, 15)])
    x = acts[rows]
    info = SimpleNamespace(
        x=x, x_hat=0.6 * x, rows=rows, position=rows % ctx,
        attrs={"context_len": ctx, "hook": hook, "sae": "s", "width": 4, "k": 1},
    )  # fmt: skip
    regression = SimpleNamespace(W_vec=np.eye(x.shape[1], dtype=np.float32) * 0.2)
    record = downstream_record(tiny_model, info, regression, group, n_ctx, 2, n_resamples=500)
    window = torch.zeros(n_ctx, ctx, dtype=torch.bool)
    window[:, 1:15] = True

    def per_context(scale):
        def scaled(value, hook):
            return torch.where(window[..., None], value * scale, value)

        with torch.no_grad():
            loss = tiny_model.run_with_hooks(
                tokens, return_type="loss", loss_per_token=True, fwd_hooks=[(hook, scaled)]
            )
        return (loss * window[:, :-1]).sum(dim=1).double().numpy()

    clean, sae, linear = per_context(1.0), per_context(0.6), per_context(0.8)
    n = window[:, :-1].sum(dim=1).double().numpy()
    assert record["ce_sae"] == pytest.approx(sae.sum() / n.sum(), rel=1e-5)

    def percent(c, s, v, axis=-1):
        c, s, v = c.sum(axis), s.sum(axis), v.sum(axis)
        return (s - v) / (s - c) * 100

    reference = stats.bootstrap(
        (clean, sae, linear), percent, paired=True, vectorized=True, method="percentile",
        n_resamples=500, rng=np.random.default_rng(0),
    ).confidence_interval  # fmt: skip
    assert record["intervals"]["linear_percent"] == pytest.approx(list(reference), rel=1e-3)
    low, high = record["intervals"]["linear_percent"]
    assert low <= record["linear_percent"] <= high and low < high
    assert record["intervals"]["_method"]["n_contexts"] == n_ctx


# ------------------------------------------------------------------------------------ components


def test_component_hooks_from_templates():
    cached = ["blocks.3.hook_resid_pre", "blocks.4.hook_resid_pre", "blocks.4.hook_mlp_out"]
    templates = {
        "prev_res": "blocks.{prev_layer}.hook_resid_pre",
        "same": "blocks.{layer}.hook_resid_pre",
        "mlp": "blocks.{layer}.hook_mlp_out",
        "att": "blocks.{layer}.hook_attn_out",
    }
    usable, skipped = component_hooks(templates, "blocks.4.hook_resid_pre", cached)
    assert usable == {"prev_res": "blocks.3.hook_resid_pre", "mlp": "blocks.4.hook_mlp_out"}
    assert "analysed hook" in skipped["same"] and "not in the cache" in skipped["att"]
    with pytest.raises(ValueError, match="reserved"):
        component_hooks({"res": "x"}, "blocks.4.hook_resid_pre", cached)
    with pytest.raises(ValueError, match="may hold only"):
        component_hooks({"bad": "blocks.{block}.hook_z"}, "blocks.4.hook_resid_pre", cached)


def test_predictability_from_a_linear_source_and_from_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 5))
    x_hat = 0.5 * x + 0.05 * rng.normal(size=x.shape)
    W = 0.5 * np.eye(5)
    targets = ErrorParts.of(x, x_hat, W)._asdict()
    assert np.allclose(targets["linear"] + targets["nonlinear"], targets["error"])
    source = x @ rng.normal(size=(5, 5))  # an invertible map of x: predicts x W exactly
    table = predictability_table(
        targets, {"source": source, "noise": rng.normal(size=(2000, 7))}, seed=0
    )
    assert table["linear"]["source"] == pytest.approx(1.0, abs=1e-9)
    assert table["error"]["source"] > 0.95
    assert table["nonlinear"]["source"] < 0.05  # the nonlinear part is the noise in x̂
    assert table["linear"]["noise"] < 0.02
    with pytest.raises(ValueError, match="share their rows"):
        predictability_table(targets, {"short": source[:10]})


# ------------------------------------------------------------------------------------ train on error


def test_error_parts_and_batch_fvu():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    x_hat = torch.tensor([[1.0, 1.0], [2.0, 4.0]])
    W = torch.tensor([[0.0, 0.0], [0.0, 0.5]])
    parts = ErrorParts.of(x, x_hat, W)
    assert torch.equal(parts.error, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert torch.allclose(parts.linear, torch.tensor([[0.0, 1.0], [0.0, 2.0]]))
    assert torch.allclose(parts.nonlinear, torch.tensor([[0.0, 0.0], [1.0, -2.0]]))
    target = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    # Σ error² = 2, Σ about the batch mean (1, 1) = 4
    assert float(batch_fvu(target, torch.tensor([[0.0, 1.0], [2.0, 1.0]]))) == pytest.approx(0.5)


def test_train_error_sae_learns_a_sparse_target():
    gen = torch.Generator().manual_seed(0)
    atoms = torch.randn(32, 16, generator=gen)
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    codes = torch.zeros(4096, 32)
    for row in range(4096):
        codes[row, torch.randperm(32, generator=gen)[:2]] = torch.rand(2, generator=gen) + 1
    data = codes @ atoms
    cfg = ErrorSAEConfig(width=64, k=4, n_tokens=4096 * 12, batch_size=512, lr=3e-3, seed=0)
    sae, fvus = train_error_sae(data, cfg, progress=False)
    assert fvus[-1] < 0.35 < fvus[0]
    norms = sae.W_dec.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)
    acts = dense_activations(sae, data[:100])
    assert acts.shape == (100, 64) and ((acts > 0).sum(1) <= 4).all()


# ------------------------------------------------------------------------------------ scoring


def _token_latent_data():
    """Latent 0 fires exactly on token 7 (strength growing with position); latent 1 at random."""
    rng = np.random.default_rng(0)
    token_ids = rng.integers(0, 20, size=4000)
    acts = np.zeros((4000, 2), dtype=np.float32)
    on = token_ids == 7
    acts[on, 0] = np.linspace(1, 2, on.sum())
    random_on = rng.random(4000) < 0.05
    acts[random_on, 1] = rng.random(random_on.sum()) + 0.1
    explain_mask = np.arange(4000) < 2000
    return token_ids, acts, explain_mask


def test_token_set_scorer_detects_a_token_latent_perfectly():
    token_ids, acts, explain_mask = _token_latent_data()
    rng = np.random.default_rng(0)
    examples = [detection_examples(acts, lat, explain_mask, rng, 5, 4, 30) for lat in (0, 1)]
    ex0 = examples[0]
    assert all(explain_mask[ex0.explain]) and not explain_mask[ex0.negatives].any()
    # Q1 holds the strongest activations
    assert acts[ex0.quantiles[0], 0].min() > acts[ex0.quantiles[-1], 0].max()
    scorer = TokenSetScorer(token_ids, explanation_tokens=1)
    assert scorer.explain(ex0) == [7]
    result = score_latents(scorer, examples[:1], 5)
    assert result["bins"] == ["Not", "Q1", "Q2", "Q3", "Q4", "Q5"]
    assert result["accuracy"] == [1.0] * 6
    assert result["total"] == [30, 4, 4, 4, 4, 4]
    noisy = score_latents(TokenSetScorer(token_ids, 1), examples[1:], 5)
    assert np.mean(noisy["accuracy"][1:]) < 0.5  # a random latent is not a token detector


def test_choose_latents_needs_activations_in_both_halves():
    _, acts, explain_mask = _token_latent_data()
    acts[:, 1][~explain_mask] = 0
    assert choose_latents(acts, explain_mask, 5, 10, seed=0).tolist() == [0]


def test_explanation_mask_splits_by_context_in_order_of_appearance():
    rows = np.array([260, 261, 5, 6, 130, 131, 7, 400])  # contexts of 128: 2, 2, 0, 0, 1, 1, 0, 3
    mask = explanation_mask(rows, 128)
    # four contexts in order of appearance 2, 0, 1, 3: the first two explain
    assert mask.tolist() == [True, True, True, True, False, False, True, False]


def test_score_activations_scores_only_latents_active_in_both_halves():
    token_ids, acts, explain_mask = _token_latent_data()
    acts[:, 1][~explain_mask] = 0
    result = score_activations(
        TokenSetScorer(token_ids, 1), acts, explain_mask, n_latents=5, min_activations=10,
        n_quantiles=5, examples_per_quantile=4, n_negatives=30, seed=0,
    )  # fmt: skip
    assert [entry["latent"] for entry in result["latents"]] == [0]
    assert result["accuracy"] == [1.0] * 6


def test_parse_binary_list():
    assert parse_binary_list("Sure: [1, 0, 1]", 3).tolist() == [True, False, True]
    assert parse_binary_list("no list", 2).tolist() == [False, False]
    assert parse_binary_list("[1,1]", 3).tolist() == [True, True, False]


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_llm_scorer_fails_clearly_without_an_endpoint():
    with pytest.raises(ScorerUnavailableError, match="base_url"):
        make_scorer("llm", np.zeros(3), render=str, base_url=None)
    url = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(ScorerUnavailableError, match="no OpenAI-compatible endpoint reachable"):
        make_scorer("llm", np.zeros(3), render=str, base_url=url, timeout=2)
    with pytest.raises(ValueError, match="unknown scorer"):
        make_scorer("oracle", np.zeros(3))


class _FakeOpenAI(BaseHTTPRequestHandler):
    """/v1/models and /v1/chat/completions: explains 'seven', detects tokens rendered as 7."""

    def log_message(self, *args):
        pass

    def _reply(self, payload):
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._reply({"data": [{"id": "fake"}]})

    def do_POST(self):
        prompt = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = prompt["messages"][0]["content"]
        if "numbered snippet" in text:
            lines = [ln for ln in text.splitlines() if ln[:1].isdigit() and ". " in ln]
            answer = json.dumps([1 if ln.endswith("<<7>>") else 0 for ln in lines])
        else:
            answer = "the token seven"
        self._reply({"choices": [{"message": {"content": answer}}]})


def test_llm_scorer_explains_and_detects_through_an_openai_compatible_endpoint():
    server = HTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        token_ids, acts, explain_mask = _token_latent_data()
        scorer = make_scorer(
            "llm", token_ids, render=lambda i: f"ctx <<{token_ids[i]}>>",
            base_url=f"http://127.0.0.1:{server.server_port}/v1", model="fake", timeout=5,
        )  # fmt: skip
        assert isinstance(scorer, LLMScorer)
        rng = np.random.default_rng(0)
        examples = [detection_examples(acts, 0, explain_mask, rng, 5, 4, 30)]
        result = score_latents(scorer, examples, 5)
    finally:
        server.shutdown()
    assert result["scorer"] == "llm"
    assert result["latents"][0]["explanation"] == "the token seven"
    assert result["accuracy"] == [1.0] * 6


# ------------------------------------------------------------------------------------ figures


def test_figures_draw_from_synthetic_tables():
    scores = {
        "scorer": "token_set",
        "targets": {
            name: {"bins": ["Not", "Q1", "Q2"], "accuracy": [0.9, 0.8, 0.5],
                   "ci95": [0.05, 0.1, 0.1], "n_latents": 3}
            for name in ("linear", "nonlinear")
        },
    }  # fmt: skip
    fig = plot_train_on_error(scores)
    assert "token_set" in fig.axes[0].get_title() and len(fig.axes[0].lines) >= 2
    rec = {"width": 64, "k": 4, "linear_percent": 80.0, "nonlinear_percent": 30.0,
           "r2_percent_linear": 70.0, "r2_percent_nonlinear": 20.0, "norm_percent_linear": 75.0,
           "norm_percent_nonlinear": 25.0, "n_predictions": 100}  # fmt: skip
    table = {
        "width_sweep": ["a", "b"],
        "k_sweep": ["a"],
        "saes": {"a": rec, "b": {**rec, "width": 128}},
    }
    assert len(plot_downstream_ce(table).axes) == 2
    pursuit = [
        {"width": w, "k": 4, "n_tokens": 10, "l0_mean": 4.0, "encoder_fvu": f + 0.1,
         "pursuit_fvu": f, "encoder_nonlinear_error_fvu": 0.1, "pursuit_nonlinear_error_fvu": 0.12}
        for w, f in ((64, 0.5), (128, 0.4), (256, 0.33))
    ]  # fmt: skip
    from saelab.darkmatter.scaling import fit_power_law, pursuit_breakdown

    fit = fit_power_law([r["width"] for r in pursuit], [r["pursuit_fvu"] for r in pursuit])
    breakdown = json.loads(json.dumps(pursuit_breakdown(pursuit, pursuit[:2]), default=list))
    # the fit's curve on the figure's grid, by the power law's own formula
    grid = np.asarray(breakdown["grid"])
    assert np.allclose(breakdown["fit_curve"], fit.c + fit.a * grid**-fit.m)
    assert grid[0] == min(r["width"] for r in pursuit)
    assert grid[-1] == pytest.approx(10 * max(r["width"] for r in pursuit))
    assert [r["width"] for r in breakdown["width_records"]] == sorted(r["width"] for r in pursuit)
    assert pursuit_breakdown(pursuit, pursuit[:1])["k_records"] is None
    fig = plot_pursuit_breakdown(breakdown)
    assert len(fig.axes) == 2
    assert any("fit" in text.get_text() for text in fig.axes[0].get_legend().get_texts())
    comp = {
        "sae": "s",
        "r2": {"nonlinear": {"res": 0.1, "mlp": 0.05}, "error": {"res": 0.4, "mlp": 0.3}},
    }
    assert len(plot_components(comp).axes) == 2


# ------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_micro_run_interventions(micro_run):
    root = Path(micro_run)
    for name in ("fig08_train_on_error", "fig09_downstream_ce", "fig10a_pursuit_breakdown",
                 "fig10b_components"):  # fmt: skip
        assert (root / "plots" / "darkmatter" / f"{name}.png").stat().st_size > 10_000
    pursuits = sorted(root.glob("data/analysis/darkmatter/*/*/*/pursuit.json"))
    assert len(pursuits) >= 3
    for path in pursuits:
        record = json.loads(path.read_text())
        assert 0 < record["pursuit_fvu"] <= record["encoder_fvu"], path
        assert record["pursuit_l0_mean"] <= record["l0_mean"] + 1e-9
    analysis = next(root.glob("data/analysis/darkmatter/*/interventions"))
    table = json.loads((analysis / "downstream_ce.json").read_text())
    assert len(table["width_sweep"]) >= 2 and len(table["k_sweep"]) >= 2
    for record in table["saes"].values():
        assert record["ce_sae"] > record["ce_clean"]
        assert 0 <= record["linear_percent"] <= 100
        assert 0 < record["norm_percent_linear"] < 100
    components = json.loads((analysis / "components.json").read_text())
    assert set(components["r2"]) == {"nonlinear", "error", "linear"}
    assert set(components["r2"]["error"]) == {"res", "prev_res", "mlp", "att"}
    assert all(v <= 1 for row in components["r2"].values() for v in row.values())
    scores = json.loads((analysis / "detection_token_set.json").read_text())
    assert scores["scorer"] == "token_set"
    for result in scores["targets"].values():
        assert result["n_latents"] > 5 and result["accuracy"][0] > 0.5  # "Not" is mostly right


@pytest.mark.slow
def test_llm_scorer_rule_fails_clearly_on_an_unreachable_endpoint(micro_run, tmp_path):
    from conftest import MICRO, snakemake

    overlay = tmp_path / "llm.yaml"
    url = f"http://127.0.0.1:{_free_port()}/v1"
    overlay.write_text(
        yaml.safe_dump({"darkmatter": {"train_on_error": {"llm": {"base_url": url}}}})
    )
    target = next(Path(micro_run).glob("data/analysis/darkmatter/*/interventions"))
    target = (target / "detection_llm.json").relative_to(micro_run)
    result = snakemake(
        micro_run, str(target), "--cores", "1", "--configfile", str(MICRO), str(overlay),
        "--rerun-triggers", "mtime", check=False,
    )  # fmt: skip
    assert result.returncode != 0
    log = next(Path(micro_run).glob("logs/darkmatter_score_error_saes/*_llm.log")).read_text()
    assert "no OpenAI-compatible endpoint reachable" in log and url in log
    assert not (Path(micro_run) / target).exists()
