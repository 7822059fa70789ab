"""Tests of ``saelab.cooccurrence.summary``, moved from tests/test_cooccurrence.py.

Notes shared with the other tests moved from tests/test_cooccurrence.py:
``tests/cooccurrence/__init__.py``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from saelab.cooccurrence import (
    pair_counts,
)
from saelab.cooccurrence.counts import (
    CooccurrenceCounts,
)
from saelab.cooccurrence.summary import (
    choose_subgraph,
    group_index,
    group_statistics,
    subgraphs_in_size_range,
)

# ------------------------------------------------------------------ summary statistics


def hand_node_info() -> pd.DataFrame:
    """A = {0, 1, 5} (the giant), B = {2, 6}, C = {3, 7}, D = {4}."""
    labels = np.array([0, 0, 1, 2, 3, 0, 1, 2])
    sizes = np.bincount(labels)[labels]
    return pd.DataFrame({
        "node_id": np.arange(8), "sae_name": "x", "activity_threshold": 0.0,
        "subgraph_id": labels, "subgraph_size": sizes, "feature_activations": np.arange(8) + 1,
    })  # fmt: skip


def test_group_statistics_by_hand():
    assert group_index(8, [2, 2, 4]).tolist() == [0, 0, 1, 1, 2, 2, 2, 2]
    assert group_index(8, [2, 4, 8]).tolist() == [0, 0, 1, 1, 2, 2, 2, 2]  # cumulative form
    stats = group_statistics(hand_node_info(), [2, 2, 4])
    assert stats.giant_id == 0 and stats.giant_size == 3
    assert stats.per_group["n_subgraphs"].tolist() == [0, 2, 2]
    assert stats.per_group["subgraphs_per_latent"].tolist() == [0.0, 1.0, 0.5]
    assert [b.tolist() for b in stats.box_sizes] == [[], [2, 2], [2, 2]]
    assert stats.correlations["node_id_vs_subgraph_size"]["n"] == 8
    with pytest.raises(ValueError, match="group sizes"):
        group_statistics(hand_node_info(), [3, 3])


def test_summarise_sae_means_by_latent_and_group():
    from saelab.cooccurrence.summary import summarise_sae

    # tokens 0 and 1 fire latents 0 and 1 together; tokens 2..7 fire latents 2..7 alone
    rows = np.array([0, 0, 1, 1, 2, 3, 4, 5, 6, 7])
    latents = np.array([0, 1, 0, 1, 2, 3, 4, 5, 6, 7])
    counts = CooccurrenceCounts(
        pair_counts(rows, latents, 8, 8), np.bincount(latents, minlength=8), 8, 0.0,
        {"arch": "batchtopk", "l0_mean": 1.25},
    )  # fmt: skip
    result = summarise_sae("x", hand_node_info(), counts, [2, 2, 4])
    # N_01 = C_01 / max(n_0, n_1) = 2 / 2; each row mean is over the 7 other latents
    assert result.mean_by_latent == pytest.approx([1 / 7, 1 / 7, 0, 0, 0, 0, 0, 0])
    assert result.groups["mean_cooccurrence"].tolist() == pytest.approx([1 / 7, 0, 0])
    assert (result.groups["sae_name"] == "x").all()
    record = result.record
    assert record["pretend_groups"] and record["mean_cooccurrence"] == pytest.approx(1 / 28)
    assert (record["giant_subgraph_size"], record["n_non_singleton_subgraphs"]) == (3, 3)
    assert record["box_sizes"] == [[], [2, 2], [2, 2]]


def test_choose_subgraph():
    info = hand_node_info()
    # non-giant subgraphs of size 2..3: B (firing 3 + 7) and C (4 + 8): C fires more
    assert choose_subgraph(info, "auto", (2, 3)) == 2
    assert choose_subgraph(info, 1) == 1
    assert choose_subgraph(info, "auto", (10, 20)) == 1  # none in range: the largest, first id
    with pytest.raises(ValueError, match="does not exist"):
        choose_subgraph(info, 9)
    # every latent alone (a threshold above every activation): the error names the threshold
    # and the key that chooses it
    alone = info.assign(subgraph_id=np.arange(8), subgraph_size=1, activity_threshold=10.0,
                        feature_activations=[0, 0, 0, 0, 0, 0, 3, 0])  # fmt: skip
    with pytest.raises(ValueError, match=r"singleton at activation threshold 10.0 \(1 of 8 latents "
                       r"fire\).*cooccurrence.representative.threshold"):  # fmt: skip
        choose_subgraph(alone, "auto", (2, 3))


def test_subgraphs_in_size_range_by_hand():
    # subgraph 0: latents {3, 1} (size 2); 1: {0} (size 1); 2: {4, 2, 5} (size 3)
    node_info = pd.DataFrame({
        "node_id": [0, 1, 2, 3, 4, 5], "subgraph_id": [1, 0, 2, 0, 2, 2],
        "subgraph_size": [1, 2, 3, 2, 3, 3], "feature_activations": [5, 1, 1, 1, 1, 1],
    })  # fmt: skip
    chosen = subgraphs_in_size_range(node_info, (2, 3))
    assert list(chosen) == [0, 2]
    assert chosen[0].tolist() == [1, 3] and chosen[2].tolist() == [2, 4, 5]
    assert subgraphs_in_size_range(node_info, (4, 9)) == {}
