"""Rules plot_<id>: draw one figure of the registry (saelab.figures) from its analysis outputs.

Each input is read by its kind (JSON -> dict, JSON lines -> list of dicts, npz -> dict of arrays,
CSV -> DataFrame, a folder -> its path; a list of inputs -> a list), then the row's drawing
function is called with the inputs and ``params.options`` as keywords.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from saelab.figures import figure, resolve_draw
from saelab.plots.common import save_figure
from saelab.runtime import logged


def load(path):
    if isinstance(path, list):
        return [load(p) for p in path]
    path = Path(path)
    if path.is_dir():
        return str(path)
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if path.suffix == ".npz":
        with np.load(path) as data:
            return dict(data)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    raise ValueError(f"{path}: no reader for {path.suffix!r} (json, jsonl, npz, csv or a folder)")


with logged(snakemake.log[0]):
    row = figure(snakemake.params.figure)
    data = {name: load(value) for name, value in snakemake.input.items()}
    fig = resolve_draw(row)(**data, **snakemake.params.options)
    save_figure(fig, snakemake.output.figure)
