"""Tests of saelab.trajectories: the attention decomposition against the model's own hooks
(tiny random GPT-2, Gemma-2 and Gemma-3 models loaded through saelab.models), the newcomer rule,
edges and backward trace on a hand-built evolution, the figures, the HTML in headless Chromium,
the config checks, and the micro DAG end to end."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_models import HF_CASES, perturb_norms, save_hf

from saelab.checks import load_config
from saelab.config import ConfigError
from saelab.features import FeatureSummary
from saelab.models import load_model, prepare_model, resolve_model
from saelab.plots.common import save_figure
from saelab.plots.trajectories import (
    HOVER_DATA_ID,
    NEWCOMER_DROPPED_COLOUR,
    arrivals_at_last_token,
    draw_graph,
    evolution_figure,
    graph_from_json,
    trajectory_graph_figure,
    trajectory_graph_html_figure,
    write_html_atomic,
)
from saelab.runtime import write_json_atomic
from saelab.saes import SAEConfig, build_sae
from saelab.trajectories import (
    DecompositionError,
    Newcomer,
    compute_evolution,
    find_newcomers,
    length_edges,
    load_evolution,
    node_newcomers,
    trace_backwards,
)
from saelab.trajectories.decompose import (
    LayerWeights,
    layer_activations,
    layer_hook_names,
    layer_weights,
    query_evolution,
    source_contributions,
)
from saelab.trajectories.describe import node_hover_texts
from saelab.trajectories.evolution import top_firing
from saelab.trajectories.graph import all_length_edges, trajectory_graph

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")


# ------------------------------------------------------------------ the decomposition


@pytest.fixture(scope="module", params=["gpt2", "gemma2", "gemma3"])
def hf_case(request, small_tokenizer_dir, tmp_path_factory):
    """A tiny random HF model loaded as a HookedTransformer through saelab.models."""
    case = request.param
    build, config_name = HF_CASES[case]
    torch.manual_seed(0)
    hf_model = build(400).eval()
    perturb_norms(hf_model)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # non-zero biases, so GPT-2's b_V and b_O must be accounted for
        for name, param in hf_model.named_parameters():
            if name.endswith("bias") and "ln" not in name:
                param.add_(0.5 * torch.randn(param.shape, generator=generator))
    tmp = tmp_path_factory.mktemp(f"traj-{case}")
    hf_dir = save_hf(hf_model, small_tokenizer_dir, tmp / "hf")
    info = resolve_model(config_name, model_path=str(hf_dir))
    model_dir = tmp / "models" / info.model_id
    prepare_model(info, model_dir)
    return case, load_model(info, model_dir)


PROMPT = "Max, Mark and Smith are in the dark room. Smith left. Mark gave flashlight to"


def _layer_caches(model):
    tokens = model.to_tokens(PROMPT)
    names = {n for layer in range(model.cfg.n_layers) for n in layer_hook_names(layer)}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return tokens, cache


def test_decomposition_reproduces_resid_mid(hf_case):
    case, model = hf_case
    if case == "gpt2":
        assert (
            model.blocks[0].attn.b_O.abs().max() > 0.1
            and model.blocks[0].attn.b_V.abs().max() > 0.1
        )
    else:  # the Gemma features the decomposition must handle
        assert model.cfg.n_key_value_heads < model.cfg.n_heads
        assert model.cfg.use_normalization_before_and_after
    tokens, cache = _layer_caches(model)
    n = tokens.shape[1]
    assert n > 10
    for layer in range(model.cfg.n_layers):
        acts = layer_activations(cache, layer)
        weights = layer_weights(model, layer)
        contributions = source_contributions(acts, weights)
        # causal: no contribution from later tokens
        assert contributions[2, 3:].abs().max() == 0
        for query in range(n):
            evolution = query_evolution(acts, weights, contributions, query)
            assert evolution.steps.shape == (query + 2, model.cfg.d_model)
            torch.testing.assert_close(evolution.steps[0], acts.resid_pre[query])
            torch.testing.assert_close(
                evolution.steps[-1], acts.resid_mid[query], atol=1e-4, rtol=1e-4
            )
            assert evolution.relative_error < 1e-5
        # The attention output really matters here (else the check would prove little).
        assert (acts.resid_mid - acts.resid_pre).norm() > 0.1 * acts.resid_mid.norm()


def test_decomposition_misses_without_bias_or_post_norm(hf_case):
    """Leaving out b_O (GPT-2) or the post-attention norm (Gemma) breaks the self-check."""
    case, model = hf_case
    _, cache = _layer_caches(model)
    acts = layer_activations(cache, 1)
    weights = layer_weights(model, 1)
    if case == "gpt2":
        wrong = weights._replace(b_O=torch.zeros_like(weights.b_O))
    else:
        wrong = LayerWeights(weights.W_O, weights.b_O, None)
    query = acts.resid_pre.shape[0] - 1
    error = query_evolution(acts, wrong, source_contributions(acts, wrong), query).relative_error
    assert error > 1e-2


def _random_saes(model, width=48, k=6):
    saes = {}
    for layer in range(model.cfg.n_layers):
        torch.manual_seed(layer)
        cfg = SAEConfig(arch="topk", d_in=model.cfg.d_model, width=width, k=k,
                        hook_name=f"blocks.{layer}.hook_resid_mid")  # fmt: skip
        saes[layer] = build_sae(cfg).eval()
    return saes


def test_compute_evolution_structure_and_logit_lens(hf_case, tmp_path):
    case, model = hf_case
    saes = _random_saes(model)
    evolution = compute_evolution(
        model, PROMPT, saes, top_k=5, prompt_name="p", logit_lens_lengths="all"
    )
    meta = evolution["metadata"]
    assert meta["post_attention_norm"] == (case != "gpt2")  # Gemma's ln1_post
    n = meta["max_prompt_length"]
    assert meta["lengths"] == list(range(2, n + 1))
    assert meta["max_relative_error"] < 1e-5
    tokens, cache = _layer_caches(model)
    for length in (2, n):
        for layer in range(model.cfg.n_layers):
            entry = evolution["data"][str(length)][str(layer)]
            assert len(entry["indices"]) == length + 1
            for indices, values in zip(entry["indices"], entry["values"], strict=True):
                assert len(indices) <= 5 and all(v > 0 for v in values)
                assert values == sorted(values, reverse=True)
            # the last step encodes the model's own resid_mid; step 0 its resid_pre
            for step, hook in ((-1, "hook_resid_mid"), (0, "hook_resid_pre")):
                x = cache[f"blocks.{layer}.{hook}"][0, length - 1][None]
                expected = top_firing(saes[layer].encode(x).codes.dense(), 5)[0]
                assert entry["indices"][step] == expected.indices
    # logit lens of the last layer at the last token = the model's own next-token prediction
    with torch.no_grad():
        probs = torch.softmax(model(tokens)[0], dim=-1)
    for length in (2, n):
        lens = evolution["logit_lens"][str(length)][str(model.cfg.n_layers - 1)]
        top = probs[length - 1].topk(5)
        assert lens["top_ids"] == top.indices.tolist()
        np.testing.assert_allclose(lens["top_probs"], top.values.numpy(), atol=1e-5)
    assert sorted(evolution["logit_lens"], key=int) == [str(length) for length in meta["lengths"]]
    # JSON round trip with its format check
    path = write_json_atomic(evolution, tmp_path / "evolution.json")
    assert load_evolution(path)["data"] == json.loads(json.dumps(evolution["data"]))
    assert not list(tmp_path.glob(".*tmp*"))


def test_compute_evolution_fails_loudly_beyond_tolerance(hf_case):
    _, model = hf_case
    with pytest.raises(DecompositionError, match="does not reproduce hook_resid_mid"):
        compute_evolution(model, PROMPT, _random_saes(model), tolerance=1e-12)


def test_top_firing_ranks_only_active_latents():
    codes = torch.tensor([[0.0, 2.0, 0.5, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    first, second = top_firing(codes, top_k=400)
    assert first.indices == [1, 4, 2] and first.values == [2.0, 2.0, 0.5]
    assert second.indices == []
    assert top_firing(codes, top_k=2)[0].indices == [1, 4]


def test_top_firing_equals_a_full_stable_sort_with_ties():
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 4, (50, 300), generator=generator).float() * torch.relu(
        torch.randn(50, 300, generator=generator).sign()
    )  # few distinct values: many ties at the k-th place
    for top_k in (1, 7, 40, 400):
        got = top_firing(codes, top_k)
        negated, order = torch.sort(-codes, dim=1, stable=True)
        for row, firing in enumerate(got):
            n = min(top_k, int((codes[row] > 0).sum()))
            assert firing.indices == order[row, :n].tolist()
            assert firing.values == (-negated[row, :n]).tolist()


# ------------------------------------------------------------------ newcomers, edges, trace


def test_find_newcomers_hand_example():
    steps = [[1, 2, 3], [1, 4, 2], [4, 1, 5, 2], [4, 5, 1, 6]]
    # 4 enters at step 1 (token 0), ends at rank 0; 5 at step 2 (token 1), rank 1;
    # 6 at step 3 (token 2), rank 3 > T; 3 is initial.
    assert find_newcomers(steps, T=2) == [Newcomer(4, 0, 1, 0), Newcomer(5, 1, 2, 1)]
    assert find_newcomers(steps, T=3)[-1] == Newcomer(6, 2, 3, 3)
    assert find_newcomers(steps, T=0) == [Newcomer(4, 0, 1, 0)]
    # a newcomer that drops out again is not kept, whatever T
    assert find_newcomers([[1], [1, 9], [1]], T=10) == []


def hand_evolution() -> dict:
    """Tokens <bos> A B C, layers 0-2, lengths 2-4 (see test_edges_and_trace_hand_example)."""
    quiet = {length: [[1, 2]] * (length + 1) for length in (2, 3, 4)}
    steps = {
        (4, 1): [[1, 2], [1, 2], [1, 7, 2], [1, 7, 2], [7, 1, 2]],
        (4, 2): [[1, 2], [1, 2], [11, 1, 2], [9, 11, 1, 2], [11, 9, 1, 8, 2]],
        (3, 1): [[1, 2], [5, 1, 2], [5, 1, 2], [5, 1, 2]],
        (2, 1): [[1, 2], [1, 2], [1, 6, 2]],
    }
    data = {
        str(length): {
            str(layer): {"indices": steps.get((length, layer), quiet[length])} for layer in range(3)
        }
        for length in (2, 3, 4)
    }
    lens = {
        str(length): {str(layer): {"top_tokens": ["x", "y"]} for layer in range(3)}
        for length in (2, 3, 4)
    }
    meta = {"prompt_name": "hand", "tokens": ["<bos>", "A", "B", "C"], "layers": [0, 1, 2],
            "lengths": [2, 3, 4], "max_prompt_length": 4}  # fmt: skip
    return {"metadata": meta, "data": data, "logit_lens": lens}


def test_edges_and_trace_hand_example():
    evolution = hand_evolution()
    T = 1
    # Length 4 (last token 3): layer 1 gets 7 from token 1 (rank 0); layer 2 gets 11 from
    # token 1 (rank 0) and 9 from token 2 (rank 1); 8 from token 3 ends at rank 3 > T.
    edges4 = length_edges(evolution, 4, T)
    assert [(e.source, e.target, e.trajectories, e.empty) for e in edges4] == [
        ((0, 0), (0, 1), (), True),
        ((1, 0), (3, 1), ((0, 7),), False),
        ((3, 0), (3, 1), (), True),
        ((0, 1), (0, 2), (), True),
        ((1, 1), (3, 2), ((0, 11),), False),
        ((2, 1), (3, 2), ((1, 9),), False),
        ((3, 1), (3, 2), (), True),
    ]
    # Length 2: 6 comes from the last token itself, so that edge replaces the empty vertical.
    assert [(e.source, e.target, e.trajectories) for e in length_edges(evolution, 2, T)] == [
        ((0, 0), (0, 1), ()),
        ((1, 0), (1, 1), ((1, 6),)),
        ((0, 1), (0, 2), ()),
        ((1, 1), (1, 2), ()),
    ]
    graph = trace_backwards(all_length_edges(evolution, T), full_length=4)
    expected = {
        # from the full prompt (BOS-source edges left out)
        ((1, 0), (3, 1)): (1, 0, False, 4),
        ((3, 0), (3, 1)): (0, None, True, 4),
        ((1, 1), (3, 2)): (1, 0, False, 4),
        ((2, 1), (3, 2)): (1, 1, False, 4),
        ((3, 1), (3, 2)): (0, None, True, 4),
        # (1, 1) traced into length 2, where token 1 is last
        ((1, 0), (1, 1)): (1, 1, False, 2),
        # (2, 1) traced into length 3: its BOS edge (0, 0) -> (2, 1) is left out
        ((2, 0), (2, 1)): (0, None, True, 3),
    }
    got = {
        (u, v): (d["num_trajectories"], d["best_final_position"], d["empty"], d["length"])
        for u, v, d in graph.edges(data=True)
    }
    assert got == expected
    assert node_newcomers(all_length_edges(evolution, T), (3, 2)) == [(11, 1, 0), (9, 2, 1)]
    # T = 0 drops 9 and 6: (2, 1) -> (3, 2) goes, and (1, 1) now comes only from an empty vertical
    strict = trace_backwards(all_length_edges(evolution, 0), full_length=4)
    assert ((2, 1), (3, 2)) not in strict.edges
    assert strict.edges[(1, 0), (1, 1)]["empty"]


# ------------------------------------------------------------------ figures and the HTML


def test_evolution_figure_colours_apart():
    steps = [[1, 2, 3], [1, 4, 2, 9], [4, 1, 5, 2, 9], [4, 5, 1, 6]]
    fig = evolution_figure(steps, ["<bos>", "A", "B"], layer=3)
    ax = fig.axes[0]
    colours = [tuple(line.get_color()) if not isinstance(line.get_color(), str) else line.get_color()
               for line in ax.lines]  # fmt: skip
    assert NEWCOMER_DROPPED_COLOUR in colours  # 9 comes and goes
    assert colours.count("lightblue") == 3  # 1 stays: 3 segments
    assert colours.count("silver") == 2  # 2 is initial but drops out at the last step
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # rank axis inverted
    assert next(t.get_text() for t in ax.get_xticklabels()) == "initial"
    with pytest.raises(ValueError, match="tokens"):
        evolution_figure(steps, ["<bos>"], layer=3)
    # top 2: steps [1,2] [1,4] [4,1] [4,5]: newcomers 4 and 5 both end in the top 2
    top2 = evolution_figure(steps, ["<bos>", "A", "B"], layer=3, top=2).axes[0]
    assert top2.get_ylim() == (1.5, -0.5)
    assert "newcomers: 2 (2 at the end)" in next(t.get_text() for t in top2.texts)


class _StubTokenizer:
    def decode(self, ids):
        return f"tok{ids[0]}"


def _summary(width: int, layer: int) -> FeatureSummary:
    """A hand-made feature summary: latent i fires on token id 100 * layer + i."""
    top_n, window = 2, 3
    context = np.full((width, top_n, window), -1, dtype=np.int64)
    context[:, :, 1] = 100 * layer + np.arange(width)[:, None]
    return FeatureSummary(
        firing_count=np.full(width, 5), n_tokens=1000,
        top_rows=np.tile(np.arange(top_n), (width, 1)), top_values=np.ones((width, top_n), np.float32),
        context_tokens=context, context_values=np.zeros((width, top_n, window), np.float32),
        hist_edges=np.zeros((width, 2), np.float32), hist_counts=np.zeros((width, 1), np.int64),
        meta={"before": 1, "after": 1},
    )  # fmt: skip


def test_static_graph_figure_draws_every_edge():
    traced = trajectory_graph(hand_evolution(), 1)
    fig = trajectory_graph_figure(traced.graph, ["<bos>", "A", "B", "C"], [0, 1, 2], 1,
                                  {layer: {"top_tokens": ["x", "y"]} for layer in range(3)},
                                  {2: [11, 9]})  # fmt: skip
    ax = fig.axes[0]
    assert len(ax.lines) == traced.graph.number_of_edges()
    texts = [t.get_text() for t in ax.texts]
    assert "new: 11, 9" in texts and "lens: x, y" in texts


def test_graph_png_is_drawn_from_the_graph_json_as_from_the_traced_graph(tmp_path):
    """Rule plot_trajectory_graph draws the PNG from the files rule trajectory_graph writes (graph
    JSON, evolution JSON): the same figure, byte for byte, as drawing the traced graph itself."""
    evolution = hand_evolution()
    traced = trajectory_graph(evolution, 1)
    write_json_atomic(traced.to_json(), tmp_path / "graph_T1.json", indent=None)
    graph = json.loads((tmp_path / "graph_T1.json").read_text())
    rebuilt = graph_from_json(graph)
    assert {(u, v): d for u, v, d in rebuilt.edges(data=True)} == {
        (u, v): {**d, "trajectories": [tuple(p) for p in d["trajectories"]]}
        for u, v, d in traced.graph.edges(data=True)
    }
    lens = {int(layer): e for layer, e in evolution["logit_lens"]["4"].items()}
    direct = trajectory_graph_figure(
        traced.graph, evolution["metadata"]["tokens"], [0, 1, 2], 1, lens,
        arrivals_at_last_token(traced.graph, 3), "hand: SAE trajectory graph, final rank <= 1",
    )  # fmt: skip
    save_figure(direct, tmp_path / "direct.png")
    save_figure(draw_graph(graph, evolution), tmp_path / "drawn.png")
    assert (tmp_path / "drawn.png").read_bytes() == (tmp_path / "direct.png").read_bytes()


def test_html_opens_in_headless_chromium_with_hover_data(tmp_path):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install chromium`")
    traced = trajectory_graph(hand_evolution(), 1)
    summaries = {layer: _summary(16, layer) for layer in range(3)}
    hover = node_hover_texts(traced, summaries, _StubTokenizer(), n_tokens=3)
    # node (3, 2): 11 from token 1 and 9 from token 2, with layer-2 descriptions (tok211, tok209)
    assert "#11 from T1 &#x27;A&#x27;" in hover[(3, 2)] or "#11 from T1 'A'" in hover[(3, 2)]
    assert "tok211" in hover[(3, 2)] and "tok209" in hover[(3, 2)]
    fig = trajectory_graph_html_figure(traced.graph, ["<bos>", "A", "B", "C"], [0, 1, 2], 1, hover)
    path = write_html_atomic(fig, tmp_path / "graph.html")
    result = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
         "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert 'class="main-svg"' in dom  # plotly drew the figure
    match = re.search(rf'<pre id="{HOVER_DATA_ID}" hidden="">(.*?)</pre>', dom, re.S)
    assert match, "the post-render script did not run"
    hover_data = match.group(1)
    for latent, token_id in ((11, 211), (9, 209), (7, 107), (6, 106)):
        assert f"#{latent} from" in hover_data and f"tok{token_id}" in hover_data


def test_neuronpedia_lookup_is_optional_and_keyless(monkeypatch):
    from saelab.trajectories import describe

    seen = {}

    class Reply:
        def __init__(self, payload):
            self.payload = payload

        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

        def read(self):
            return json.dumps(self.payload).encode()

    def fake_urlopen(request, timeout):
        seen["url"], seen["headers"] = request.full_url, dict(request.header_items())
        return Reply({"explanations": [{"description": "names of people"}], "pos_str": [" Max"]})

    monkeypatch.delenv("NEURONPEDIA_API_KEY", raising=False)
    monkeypatch.setattr(describe.urllib.request, "urlopen", fake_urlopen)
    out = describe.describe_from_neuronpedia([(3, 17)], "gemma-2-2b", "{layer}-gemmascope-res-65k")
    assert out == {(3, 17): "names of people · promotes ' Max'"}
    assert (
        seen["url"] == "https://www.neuronpedia.org/api/feature/gemma-2-2b/3-gemmascope-res-65k/17"
    )
    assert not any(key.lower() == "x-api-key" for key in seen["headers"])

    def offline(request, timeout):
        raise describe.urllib.error.URLError("no network")

    monkeypatch.setattr(describe.urllib.request, "urlopen", offline)
    with pytest.raises(describe.DescriptionError, match="needs internet"):
        describe.neuronpedia_description("gemma-2-2b", "3-gemmascope-res-65k", 17)


# ------------------------------------------------------------------ config checks


def _config(tmp_path, trajectories=None, sweeps=None, caches=None):
    override = {"trajectories": trajectories or {}}
    if sweeps is not None:
        override["sweeps"] = sweeps
    if caches is not None:
        override["caches"] = caches
    path = tmp_path / "override.yaml"
    path.write_text(json.dumps(override))
    return load_config(REPO / "tests" / "config" / "micro.yaml", path)


def test_config_is_checked_once_and_resolved_with_its_layers(tmp_path, monkeypatch):
    """check_trajectories runs once per config parse; the rule files read its result."""
    import saelab.trajectories.settings as settings

    calls = []
    check = settings.check_trajectories
    monkeypatch.setattr(
        settings, "check_trajectories", lambda *args: calls.append(args) or check(*args)
    )
    cfg = _config(tmp_path, {"prompts": [{"name": "a", "text": "hello"}], "layers": [0, 1]})
    assert len(calls) == 1
    choices = cfg.analyses["trajectories"]
    assert choices.layers == [0, 1] and choices.settings.prompt_names == ["a"]
    calls.clear()
    cfg = _config(tmp_path, {"prompts": []})
    assert not calls and cfg.analyses["trajectories"].layers == []


def test_config_checks(tmp_path):
    prompts = [{"name": "a", "text": "hello"}]
    cfg = _config(tmp_path, {"prompts": prompts})
    assert cfg.trajectories["T"] == [6, 20]  # micro's T survives, defaults filled
    with pytest.raises(ConfigError, match="not a sweeps family"):
        _config(tmp_path, {"prompts": prompts, "sweep": "nope"})
    with pytest.raises(ConfigError, match="names repeat"):
        _config(tmp_path, {"prompts": prompts * 2})
    with pytest.raises(ConfigError, match="needs SAEs at hook_resid_mid or hook_resid_post"):
        _config(tmp_path, {"prompts": prompts, "sweep": "darkmatter"})
    with pytest.raises(ConfigError, match="evolution_layers"):
        _config(tmp_path, {"prompts": prompts, "evolution_layers": [5]})
    with pytest.raises(ConfigError, match="distinct"):
        _config(tmp_path, {"prompts": prompts, "T": [3, 3]})
    # a resid_post family is allowed (the original's site); resid_pre is not
    cache = {
        "corpus": "python-docs",
        "layers": "all",
        "hooks": ["blocks.{layer}.hook_resid_post", "blocks.{layer}.hook_resid_pre"],
    }
    family = {"arch": "batchtopk", "cache": "post", "layer": "all", "width": 64, "k": 4}
    sweeps = {"post": {**family, "hook": "blocks.{layer}.hook_resid_post"},
              "pre": {**family, "hook": "blocks.{layer}.hook_resid_pre"}}  # fmt: skip
    cfg = _config(tmp_path, {"prompts": prompts, "sweep": "post"}, sweeps, {"post": cache})
    assert cfg.trajectories["sweep"] == "post"
    with pytest.raises(ConfigError, match="hook_resid_mid or hook_resid_post"):
        _config(tmp_path, {"prompts": prompts, "sweep": "pre"}, sweeps, {"post": cache})
    with pytest.raises(ConfigError, match="needs at least two"):
        _config(tmp_path, {"prompts": prompts, "layers": [1, 1]})


# ------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_micro_run_trajectories(micro_run):
    cfg = load_config(REPO / "tests" / "config" / "micro.yaml")
    prompts = [p["name"] for p in cfg.trajectories["prompts"]]
    assert prompts
    for prompt in prompts:
        evolution = load_evolution(
            micro_run / f"data/analysis/trajectories/tiny/{prompt}/evolution.json"
        )
        meta = evolution["metadata"]
        assert meta["max_relative_error"] < 1e-4
        assert meta["layers"] == [0, 1]
        n = meta["max_prompt_length"]
        assert len(meta["tokens"]) == n
        l0s = [
            l0
            for length in evolution["data"].values()
            for entry in length.values()
            for l0 in entry["l0"]
        ]
        assert 0 < np.mean(l0s) < 64  # trained BatchTopK SAEs (k = 8, width 128) fire sparsely
        for T in cfg.trajectories["T"]:
            for suffix in ("png", "html"):
                figure = micro_run / f"plots/trajectories/{prompt}/graph_T{T}.{suffix}"
                assert figure.stat().st_size > 5000
            graph = json.loads(
                (
                    micro_run / f"data/analysis/trajectories/tiny/{prompt}/graph_T{T}.json"
                ).read_text()
            )
            for edge in graph["edges"]:
                assert (
                    edge["to"][1] == edge["from"][1] + 1
                    and 0 < edge["from"][0] <= edge["to"][0] < n
                )
                assert all(t["final_position"] <= T for t in edge["trajectories"])
        assert (micro_run / f"plots/trajectories/{prompt}/evolution_L1.png").stat().st_size > 5000
