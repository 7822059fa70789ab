"""End-to-end tests (they run Snakemake) moved from tests/test_darkmatter_interventions.py.

Notes shared with the other tests moved from tests/test_darkmatter_interventions.py:
``tests/darkmatter/__init__.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.darkmatter.helpers_interventions import _free_port

torch.set_num_threads(1)


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
    from tests.conftest import MICRO, snakemake

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
